//! `yidi load-persons` end to end with the real binary: refused while the node runs on
//! the directory, loads the Hangzhou sample register plus rows that must be refused
//! (a repeated person, a card already taken, a bad checksum, a short line) with the
//! report an operator reads, refuses a second load, and the node started afterwards
//! serves the loaded persons by ID number and by card, and takes online imports on top.

use std::{collections::HashMap, io::Write as _, path::Path};

use chrono::NaiveDate;
use serde_json::Value;
use yidi_common::idnum;
use yidi_tests::process::{NodeProcess, Run, workspace_root, yidi};

fn load(data_dir: &Path, file: &Path, extra: &[&str]) -> Run {
    let mut args = vec![
        "load-persons",
        "--region",
        "330100",
        "--data-dir",
        data_dir.to_str().expect("UTF-8 path"),
        file.to_str().expect("UTF-8 path"),
    ];
    args.extend_from_slice(extra);
    yidi(&args)
}

#[track_caller]
fn json(run: Run, code: i32) -> Value {
    let run = run.expect_code(code);
    serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("yidi {:?} printed no JSON ({e}):\n{}", run.args, run.stdout))
}

#[test]
fn load_persons_fills_a_new_register_and_the_node_serves_it() {
    let sample = workspace_root().join("deploy/sample/330100/persons.csv");
    let sample_rows: Vec<HashMap<String, String>> = csv::Reader::from_path(&sample)
        .expect("sample")
        .deserialize()
        .collect::<Result<_, _>>()
        .expect("sample rows");
    let n = sample_rows.len() as u64;
    let first = &sample_rows[0];
    let carded = sample_rows
        .iter()
        .find(|p| !p["card_no"].is_empty())
        .expect("a sample person with a card");

    // The sample register (lines 2..=n+1), then four rows the load must refuse.
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("persons.csv");
    let mut text = std::fs::read_to_string(&sample).expect("read sample");
    if !text.ends_with('\n') {
        text.push('\n');
    }
    let fresh = idnum::make(
        "330106",
        NaiveDate::from_ymd_opt(1990, 1, 2).expect("date"),
        7,
    );
    let mut bad_checksum = fresh.clone();
    bad_checksum.pop();
    bad_checksum.push(if fresh.ends_with('0') { '1' } else { '0' });
    let card_line = sample_rows
        .iter()
        .position(|p| p["card_no"] == carded["card_no"])
        .expect("carded row") as u64
        + 2;
    let extra = [
        // line n+2: the first person again, renamed
        format!(
            "{},改名,,employee,in_service,false,active,1.00,2020-01-01",
            first["id_number"]
        ),
        // line n+3: a new person with someone's card
        format!(
            "{fresh},新人,{},resident,resident_adult,false,active,0.00,2024-03-01",
            carded["card_no"]
        ),
        // line n+4: a mistyped ID number
        format!("{bad_checksum},错号,,resident,resident_adult,false,active,0.00,2024-03-01"),
        // line n+5: a line cut short
        "330106199001020077,半行".to_owned(),
        // line n+6: a valid new person, loaded
        format!(
            "{},王新,Z00000001,resident,resident_minor,false,active,12.34,2025-06-30",
            idnum::make(
                "330106",
                NaiveDate::from_ymd_opt(2015, 5, 6).expect("date"),
                8
            )
        ),
    ];
    for line in &extra {
        text.push_str(line);
        text.push('\n');
    }
    std::fs::File::create(&file)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .expect("write file");

    // While the node runs on the directory, the load is refused and changes nothing.
    let mut node = NodeProcess::start("330100");
    let data_dir = node.data_dir();
    let busy = load(&data_dir, &file, &["--json"]).expect_code(1);
    assert!(
        busy.stderr.contains("in use by another yidi process"),
        "{}",
        busy.stderr
    );
    node.kill();

    let errors_file = dir.path().join("rejected.csv");
    let report = json(
        load(
            &data_dir,
            &file,
            &["--json", "--errors", errors_file.to_str().expect("path")],
        ),
        2,
    );
    assert_eq!(report["rows"], n + 5, "{report}");
    assert_eq!(report["inserted"], n + 1, "{report}");
    assert_eq!(
        (&report["updated"], &report["unchanged"]),
        (&Value::from(0), &Value::from(0))
    );
    assert_eq!(report["rejected"], 4, "{report}");
    let mut steps: Vec<&str> = report["phases_ms"]
        .as_object()
        .expect("phases_ms")
        .keys()
        .map(String::as_str)
        .collect();
    steps.sort_unstable();
    let mut want = vec![
        "commit",
        "persons_by_card",
        "persons_by_lookup_hash",
        "persons_by_type",
        "read",
        "sort",
        "write",
    ];
    want.sort_unstable();
    assert_eq!(steps, want, "{report}");
    let rejected: Vec<(u64, &str, &str)> = report["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .map(|e| {
            (
                e["row"].as_u64().expect("row"),
                e["field"].as_str().expect("field"),
                e["reason"].as_str().expect("reason"),
            )
        })
        .collect();
    let repeated = format!(
        "{} is already on line 2; the file must have one row per person",
        first["id_number"]
    );
    let taken = format!(
        "{} already belongs to the person on line {card_line}",
        carded["card_no"]
    );
    assert_eq!(rejected[0], (n + 2, "id_number", repeated.as_str()));
    assert_eq!(rejected[1], (n + 3, "card_no", taken.as_str()));
    let wrong_digit = format!(
        "ID number check digit is wrong (expected {})",
        fresh.chars().last().expect("check character")
    );
    assert_eq!(rejected[2], (n + 4, "id_number", wrong_digit.as_str()));
    assert_eq!(
        rejected[3],
        (n + 5, "", "expected 9 fields like the header, got 2")
    );
    let written = std::fs::read_to_string(&errors_file).expect("errors file");
    assert_eq!(written.lines().count(), 5, "{written}");

    // A second load would overwrite nothing: it is refused.
    let again = load(&data_dir, &file, &[]).expect_code(1);
    assert!(
        again
            .stderr
            .contains(&format!("the store already has {} persons", n + 1)),
        "{}",
        again.stderr
    );

    // The node serves what was loaded, exactly as the file had it.
    node.restart();
    let info = json(node.admin(&["info", "--json"]), 0);
    assert_eq!(info["persons"], n + 1);
    let got = json(
        node.admin(&["person", "get", &first["id_number"], "--json"]),
        0,
    );
    for field in [
        "name",
        "card_no",
        "insurance_type",
        "person_type",
        "status",
        "account_balance",
        "enrolled_since",
    ] {
        assert_eq!(got[field], first[field].as_str(), "{field}");
    }
    let by_card = json(
        node.admin(&["person", "get", "--card-no", &carded["card_no"], "--json"]),
        0,
    );
    assert_eq!(by_card["id_number"], carded["id_number"].as_str());
    let minor = json(
        node.admin(&["person", "get", "--card-no", "Z00000001", "--json"]),
        0,
    );
    assert_eq!(
        (
            &minor["name"],
            &minor["account_balance"],
            &minor["enrolled_since"]
        ),
        (
            &Value::from("王新"),
            &Value::from("12.34"),
            &Value::from("2025-06-30")
        )
    );

    // The online import works on top of a loaded register: the sample is unchanged,
    // and a changed row is an update.
    let recheck = json(
        node.admin(&["person", "import", sample.to_str().expect("path"), "--json"]),
        0,
    );
    assert_eq!(
        ["inserted", "updated", "unchanged", "rejected"].map(|k| recheck[k].as_u64()),
        [Some(0), Some(0), Some(n), Some(0)],
        "{recheck}"
    );
}
