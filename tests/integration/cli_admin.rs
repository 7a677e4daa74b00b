//! The operator's CLI end to end: the real `yidi` binary starts a node as a separate
//! process, and `yidi admin …` imports the Hangzhou sample data, re-imports it, and
//! drives every admin call, asserting on `--json` output, exit codes and the
//! `error: <CODE>: <message>` line of refused calls. Also checks that the sample data
//! under deploy/sample is valid on its own.

use std::{collections::HashSet, path::PathBuf};

use chrono::{Datelike, NaiveDate};
use serde_json::Value;
use std::{io::Write as _, time::Duration};
use yidi_common::idnum::IdNumber;
use yidi_tests::process::{NodeProcess, Run, workspace_root, yidi};

fn sample(city: &str, file: &str) -> PathBuf {
    workspace_root().join("deploy/sample").join(city).join(file)
}

fn path_str(p: &std::path::Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// The data rows of a sample file, as header → value maps.
fn rows(path: &std::path::Path) -> Vec<std::collections::HashMap<String, String>> {
    csv::Reader::from_path(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .deserialize()
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[track_caller]
fn json(run: Run) -> Value {
    let run = run.expect_code(0);
    serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("yidi {:?} printed no JSON ({e}):\n{}", run.args, run.stdout))
}

/// Asserts a refused call: exit 1 and `error: CODE: …` naming `needle` on stderr.
#[track_caller]
fn refused(run: Run, code: &str, needle: &str) {
    let run = run.expect_code(1);
    let prefix = format!("error: {code}: ");
    assert!(
        run.stderr.starts_with(&prefix) && run.stderr.contains(needle),
        "yidi {:?}: expected {prefix}… mentioning {needle:?}, got:\n{}",
        run.args,
        run.stderr
    );
}

/// inserted / updated / unchanged / rejected of an import summary.
fn counts(v: &Value) -> [u64; 4] {
    ["inserted", "updated", "unchanged", "rejected"].map(|k| v[k].as_u64().unwrap_or(u64::MAX))
}

/// Runs `yidi admin` on a whitespace-separated command line (no value in these tests
/// contains a space) and parses its `--json` answer.
fn admin_json(node: &NodeProcess, line: &str) -> Value {
    json(admin(node, &format!("{line} --json")))
}

fn admin(node: &NodeProcess, line: &str) -> Run {
    node.admin(&line.split_whitespace().collect::<Vec<_>>())
}

fn len(v: &Value) -> Option<usize> {
    v.as_array().map(Vec::len)
}

fn import(node: &NodeProcess, what: &str, file: &std::path::Path, extra: &[&str]) -> Value {
    let mut args = vec![what, "import", path_str(file), "--json"];
    args.extend_from_slice(extra);
    json(node.admin(&args))
}

#[test]
fn sample_data_is_valid() {
    let mut ids = HashSet::new();
    let mut codes = HashSet::new();
    for city in ["330100", "330200", "330300"] {
        let persons = rows(&sample(city, "persons.csv"));
        assert!(
            persons.len() >= 200,
            "{city}: only {} persons",
            persons.len()
        );
        let mut kinds = HashSet::new();
        for p in &persons {
            let id = IdNumber::parse(&p["id_number"], "id_number")
                .unwrap_or_else(|e| panic!("{city}: {e}"));
            assert!(
                ids.insert(id.as_str().to_owned()),
                "{city}: duplicate ID {}",
                id.as_str()
            );
            let age = 2026 - id.birth_date().year();
            let ptype = p["person_type"].as_str();
            match ptype {
                "resident_minor" => assert!(age <= 18, "{city}: minor aged {age}: {p:?}"),
                "resident_elderly" => assert!(age >= 60, "{city}: elderly aged {age}: {p:?}"),
                "retired" => assert!(age >= 50, "{city}: retiree aged {age}: {p:?}"),
                _ => {}
            }
            let enrolled = NaiveDate::parse_from_str(&p["enrolled_since"], "%Y-%m-%d")
                .expect("enrolled_since");
            assert!(
                enrolled >= id.birth_date(),
                "{city}: enrolled before birth: {p:?}"
            );
            kinds.insert((
                p["insurance_type"].clone(),
                ptype.to_owned(),
                p["status"].clone(),
            ));
        }
        for ptype in [
            "in_service",
            "retired",
            "resident_adult",
            "resident_minor",
            "resident_elderly",
        ] {
            assert!(
                kinds.iter().any(|k| k.1 == ptype),
                "{city}: no {ptype} person"
            );
        }
        assert!(
            kinds.iter().any(|k| k.2 == "suspended"),
            "{city}: no suspended person"
        );
        let catalogue = rows(&sample(city, "catalogue.csv"));
        for item in &catalogue {
            assert!(
                codes.insert(item["code"].clone()),
                "duplicate catalogue code {}",
                item["code"]
            );
        }
        for class in ["A", "B", "C"] {
            assert!(
                catalogue.iter().any(|i| i["class"] == class),
                "{city}: no class {class} item"
            );
        }
        let institutions = rows(&sample(city, "institutions.csv"));
        for level in ["level1", "level2", "level3", "ungraded"] {
            assert!(
                institutions.iter().any(|i| i["level"] == level),
                "{city}: no {level} institution"
            );
        }
        assert!(
            institutions
                .iter()
                .any(|i| i["agreement_status"] == "suspended"),
            "{city}: none suspended"
        );
    }
}

#[test]
fn admin_cli_end_to_end() {
    let node = NodeProcess::start("330100");
    let info = admin_json(&node, "info");
    assert_eq!(
        (info["region"].as_str(), info["persons"].as_u64()),
        (Some("330100"), Some(0))
    );

    // ---- imports, then re-imports that change nothing
    let persons_csv = sample("330100", "persons.csv");
    let catalogue_csv = sample("330100", "catalogue.csv");
    let institutions_csv = sample("330100", "institutions.csv");
    let persons = rows(&persons_csv);
    let catalogue = rows(&catalogue_csv);
    let institutions = rows(&institutions_csv);
    let (np, nc, ni) = (
        persons.len() as u64,
        catalogue.len() as u64,
        institutions.len() as u64,
    );

    let first = import(&node, "person", &persons_csv, &["--batch-size", "100"]);
    assert_eq!(counts(&first), [np, 0, 0, 0], "{first}");
    assert_eq!(first["requests"], np.div_ceil(100));
    assert_eq!(
        counts(&import(&node, "catalogue", &catalogue_csv, &[])),
        [nc, 0, 0, 0]
    );
    assert_eq!(
        counts(&import(&node, "institution", &institutions_csv, &[])),
        [ni, 0, 0, 0]
    );
    let info = admin_json(&node, "info");
    let stored =
        |info: &Value| ["persons", "catalogue_items", "institutions"].map(|k| info[k].as_u64());
    assert_eq!(stored(&info), [Some(np), Some(nc), Some(ni)]);

    // Re-running the same command sends the same batch ids: the node replays its
    // original answers, marked as such, and writes nothing.
    let replay = import(&node, "person", &persons_csv, &["--batch-size", "100"]);
    assert_eq!(counts(&replay), [0, 0, 0, 0], "{replay}");
    assert_eq!(replay["already_imported"], np);
    // A new import of the same rows (a new request id prefix) finds every row unchanged.
    let recheck = import(
        &node,
        "person",
        &persons_csv,
        &["--request-id", "recheck-p"],
    );
    assert_eq!(counts(&recheck), [0, 0, np, 0]);
    let recheck = import(
        &node,
        "catalogue",
        &catalogue_csv,
        &["--request-id", "recheck-c"],
    );
    assert_eq!(counts(&recheck), [0, 0, nc, 0]);
    // Institutions are compared row by row, so a plain re-run already reports them.
    assert_eq!(
        counts(&import(&node, "institution", &institutions_csv, &[])),
        [0, 0, ni, 0]
    );
    assert_eq!(stored(&admin_json(&node, "info")), stored(&info));

    // ---- persons
    let p0 = &persons[0];
    let id0 = p0["id_number"].as_str();
    let got = admin_json(&node, &format!("person get {id0}"));
    for field in [
        "name",
        "insurance_type",
        "person_type",
        "status",
        "account_balance",
        "enrolled_since",
    ] {
        assert_eq!(got[field], p0[field].as_str(), "{field}");
    }
    let carded = persons
        .iter()
        .find(|p| !p["card_no"].is_empty())
        .expect("a person with a card");
    let by_card = admin_json(
        &node,
        &format!("person get --card-no {}", carded["card_no"]),
    );
    assert_eq!(by_card["id_number"], carded["id_number"].as_str());

    let page = admin_json(&node, "person list --limit 5");
    assert_eq!(
        (len(&page["persons"]), page["total"].as_u64()),
        (Some(5), Some(np))
    );
    let token = page["next_page_token"].as_str().expect("token");
    assert!(!token.is_empty());
    let next = admin_json(
        &node,
        &format!("person list --limit 5 --page-token {token}"),
    );
    assert_ne!(
        next["persons"][0]["id_number"],
        page["persons"][0]["id_number"]
    );
    assert_eq!(
        len(&admin_json(&node, "person list --all")["persons"]),
        Some(persons.len())
    );
    let residents = admin_json(&node, "person list --all --insurance-type resident");
    let want = persons
        .iter()
        .filter(|p| p["insurance_type"] == "resident")
        .count();
    assert_eq!(len(&residents["persons"]), Some(want));

    let updated = admin_json(&node, &format!("person update {id0} --status suspended"));
    assert_eq!(updated["status"], "suspended");
    assert_eq!(
        updated["name"],
        p0["name"].as_str(),
        "update keeps the fields it was not given"
    );

    let birth = NaiveDate::from_ymd_opt(1990, 3, 15).expect("date");
    let new_id = yidi_common::idnum::make("330106", birth, 41);
    let create = format!(
        "person create {new_id} --name 测试用户 --insurance-type employee --person-type in_service \
         --account-balance 88.50 --request-id cli-create-1"
    );
    let created = admin_json(&node, &create);
    assert_eq!(
        (created["sex"].as_str(), created["account_balance"].as_str()),
        (Some("M"), Some("88.50"))
    );
    // The same request id and payload is answered again, not refused as a duplicate.
    assert_eq!(
        admin_json(&node, &create)["created_at"],
        created["created_at"]
    );

    // ---- filings
    let applicant = persons
        .iter()
        .find(|p| p["status"] == "active" && p["person_type"] == "retired" && p["id_number"] != id0)
        .expect("an active retiree");
    let applied = admin_json(
        &node,
        &format!(
            "filing apply {} --type resettled_retiree --treatment-region 330200 \
             --institution H33020001 --institution H33020003 --valid-from 2026-01-01 \
             --note 随子女定居宁波",
            applicant["id_number"]
        ),
    );
    assert_eq!(applied["status"], "applied");
    assert_eq!(
        applied["institutions"],
        serde_json::json!(["H33020001", "H33020003"])
    );
    let filing_id = applied["filing_id"].as_str().expect("filing id");
    let approved = admin_json(
        &node,
        &format!("filing approve {filing_id} --note 材料齐全"),
    );
    assert_eq!(approved["status"], "approved");
    assert_eq!(
        admin_json(&node, &format!("filing get {filing_id}"))["status"],
        "approved"
    );
    let listed = admin_json(
        &node,
        &format!("filing list --id-number {}", applicant["id_number"]),
    );
    assert_eq!(listed["filings"][0]["filing_id"], filing_id);
    refused(
        admin(&node, &format!("filing reject {filing_id}")),
        "FAILED_PRECONDITION",
        "",
    );
    assert_eq!(
        admin_json(&node, &format!("filing revoke {filing_id}"))["status"],
        "revoked"
    );
    let referral = |from: &str, to: &str| {
        format!(
            "filing apply {new_id} --type referral --treatment-region 330300 --valid-from {from} --valid-to {to}"
        )
    };
    let applied = admin_json(&node, &referral("2026-11-01", "2026-12-31"));
    let rejected = admin_json(
        &node,
        &format!(
            "filing reject {}",
            applied["filing_id"].as_str().unwrap_or_default()
        ),
    );
    assert_eq!(rejected["status"], "rejected");

    // ---- policies
    let policy_file = workspace_root().join("deploy/policies/330100-employee.toml");
    let published = json(node.admin(&[
        "policy",
        "publish",
        path_str(&policy_file),
        "--insurance-type",
        "employee",
        "--effective-from",
        "2026-01-01",
        "--json",
    ]));
    assert_eq!(
        (
            published["version"].as_u64(),
            published["policy"]["region"].as_str()
        ),
        (Some(1), Some("330100"))
    );
    assert_eq!(len(&admin_json(&node, "policy list")["policies"]), Some(1));
    let in_force = admin_json(
        &node,
        "policy get --insurance-type employee --on 2026-06-01",
    );
    assert_eq!(in_force["digest"], published["digest"]);
    assert_eq!(
        admin_json(&node, "policy get --insurance-type employee --version 1")["version"],
        1
    );
    refused(
        admin(
            &node,
            "policy get --insurance-type employee --on 2025-06-01",
        ),
        "NOT_FOUND",
        "",
    );

    // ---- catalogue and institutions
    let item = &catalogue[0];
    let code = item["code"].as_str();
    let got = admin_json(&node, &format!("catalogue get {code}"));
    assert_eq!(
        (&got["name"], &got["class"]),
        (
            &Value::from(item["name"].as_str()),
            &Value::from(item["class"].as_str())
        )
    );
    let class_b = admin_json(&node, "catalogue list --class B --all");
    assert_eq!(
        len(&class_b["items"]),
        Some(catalogue.iter().filter(|i| i["class"] == "B").count())
    );
    let capped = admin_json(&node, &format!("catalogue upsert {code} --price-cap 99.90"));
    assert_eq!(
        (capped["price_cap"].as_str(), &capped["name"]),
        (Some("99.90"), &Value::from(item["name"].as_str()))
    );
    let fresh = admin_json(
        &node,
        "catalogue upsert HZ-TEST-1 --name 测试耗材 --category material --class 乙 --first-selfpay-ratio 0.15 --unit 个",
    );
    assert_eq!(
        (
            fresh["class"].as_str(),
            fresh["first_selfpay_ratio"].as_str()
        ),
        (Some("B"), Some("0.15"))
    );

    let inst = &institutions[0];
    let got = admin_json(&node, &format!("institution get {}", inst["code"]));
    assert_eq!(
        (&got["name"], &got["level"]),
        (
            &Value::from(inst["name"].as_str()),
            &Value::from(inst["level"].as_str())
        )
    );
    let suspended = admin_json(
        &node,
        &format!(
            "institution upsert {} --agreement-status suspended",
            inst["code"]
        ),
    );
    assert_eq!(suspended["agreement_status"], "suspended");
    assert_eq!(
        len(&admin_json(&node, "institution list --all")["institutions"]),
        Some(institutions.len())
    );

    // ---- funds and clearing: nothing settled yet, so the figures are zero and the
    // lists empty; a reserve top-up is recorded and listed
    let statement = admin_json(
        &node,
        &format!("statement {} --period 2026-11", inst["code"]),
    );
    assert_eq!(
        (statement["records"].as_u64(), statement["payable"].as_str()),
        (Some(0), Some("0.00"))
    );
    let ledger = admin_json(&node, "ledger --period 2026-11");
    assert_eq!(
        (ledger["period"].as_str(), len(&ledger["positions"])),
        (Some("2026-11"), Some(0))
    );
    assert_eq!(
        len(&admin_json(&node, "deduction list")["deductions"]),
        Some(0)
    );
    assert_eq!(len(&admin_json(&node, "clearing list")["rounds"]), Some(0));
    let topup = admin_json(
        &node,
        "reserve record --counterparty 330200 --kind topup --amount 50000.00",
    );
    assert_eq!(
        (
            topup["treatment_region"].as_str(),
            topup["balance"].as_str()
        ),
        (Some("330200"), Some("50000.00"))
    );
    let reserves = admin_json(&node, "reserve list");
    assert_eq!(reserves["reserves"][0]["balance"], "50000.00");
    refused(
        admin(
            &node,
            "deduction record 330100-S-404 --amount 10.00 --reason x",
        ),
        "NOT_FOUND",
        "",
    );

    // ---- tables (the default output) name what they show
    let table = admin(&node, &format!("person get {id0}")).expect_code(0);
    assert!(
        table.stdout.contains(&p0["name"]) && table.stdout.contains("account_balance"),
        "{}",
        table.stdout
    );

    // ---- bad input: refused with the precise code, the field named, nothing written
    let mut bad_id = p0["id_number"].clone();
    let last = bad_id.pop().expect("id");
    bad_id.push(if last == '0' { '1' } else { '0' });
    let bad_create = format!(
        "person create {bad_id} --name 错号 --insurance-type employee --person-type in_service"
    );
    refused(admin(&node, &bad_create), "INVALID_ARGUMENT", "id_number");
    let bad_balance = format!("person update {new_id} --account-balance 1.234");
    refused(
        admin(&node, &bad_balance),
        "INVALID_ARGUMENT",
        "account_balance",
    );
    let reused = format!(
        "person create {new_id} --name 另一人 --insurance-type resident --person-type resident_adult --request-id cli-create-1"
    );
    refused(admin(&node, &reused), "ALREADY_EXISTS", "request_id");
    let unknown = yidi_common::idnum::make(
        "330106",
        NaiveDate::from_ymd_opt(1970, 1, 1).expect("date"),
        1,
    );
    refused(
        admin(&node, &format!("person get {unknown}")),
        "NOT_FOUND",
        "",
    );
    refused(
        admin(&node, &referral("2026-12-01", "2026-11-01")),
        "INVALID_ARGUMENT",
        "valid_to",
    );
    let flag = admin(&node, "person list --status paused").expect_code(2);
    assert!(
        flag.stderr.contains("--status") && flag.stderr.contains("suspended"),
        "{}",
        flag.stderr
    );
    assert_eq!(admin_json(&node, "info")["persons"], np + 1);

    // An import with bad rows finishes, reports each by line and field, exits 2.
    let dir = tempfile::tempdir().expect("temp dir");
    let bad_csv = dir.path().join("bad.csv");
    let ok_id = yidi_common::idnum::make(
        "330302",
        NaiveDate::from_ymd_opt(1985, 7, 1).expect("date"),
        22,
    );
    std::fs::write(
        &bad_csv,
        format!(
            "id_number,name,insurance_type,person_type,status,account_balance,enrolled_since\n\
             {ok_id},好人,employee,in_service,active,10.00,2020-01-01\n\
             {bad_id},错号,employee,in_service,active,10.00,2020-01-01\n\
             {ok_id}X,多列,employee\n"
        ),
    )
    .expect("write bad csv");
    let errors_csv = dir.path().join("errors.csv");
    let run = node
        .admin(&[
            "person",
            "import",
            path_str(&bad_csv),
            "--json",
            "--errors",
            path_str(&errors_csv),
        ])
        .expect_code(2);
    let report: Value = serde_json::from_str(&run.stdout).expect("import report JSON");
    assert_eq!(counts(&report), [1, 0, 0, 2], "{report}");
    assert_eq!(
        (
            report["errors"][0]["row"].as_u64(),
            report["errors"][0]["field"].as_str()
        ),
        (Some(3), Some("id_number"))
    );
    assert_eq!(report["errors"][1]["row"], 4);
    let written = std::fs::read_to_string(&errors_csv).expect("errors file");
    assert!(
        written.starts_with("row,field,reason\n3,id_number,"),
        "{written}"
    );

    // ---- an unreachable node is UNAVAILABLE, not a hang or a panic
    let port = yidi_tests::process::free_port();
    let unreachable = yidi(&[
        "admin",
        "--node",
        &format!("http://127.0.0.1:{port}"),
        "info",
    ]);
    refused(unreachable, "UNAVAILABLE", "cannot reach");
}

/// A node killed with SIGKILL in the middle of an import: the CLI stops (after its
/// retries) saying how to resume, nothing committed is lost, and re-running the same
/// command completes the import with the summary of an uninterrupted run.
#[test]
fn killed_node_mid_import_then_rerun_completes_it() {
    let mut node = NodeProcess::start("330100");
    let rows: u64 = 40_000;
    let file = node.dir.path().join("many.csv");
    let mut w = std::io::BufWriter::new(std::fs::File::create(&file).expect("csv"));
    writeln!(
        w,
        "id_number,name,insurance_type,person_type,account_balance"
    )
    .expect("write");
    let first_day = NaiveDate::from_ymd_opt(1950, 1, 1).expect("date");
    for i in 0..rows {
        let birth = first_day + chrono::Days::new(i / 1000);
        let id = yidi_common::idnum::make("330106", birth, u16::try_from(i % 1000).expect("seq"));
        writeln!(w, "{id},参保人{i},resident,resident_adult,0").expect("write");
    }
    w.into_inner().expect("flush").sync_all().expect("sync");
    let file = path_str(&file).to_owned();
    let args = [
        "person",
        "import",
        file.as_str(),
        "--batch-size",
        "200",
        "--json",
    ];

    let mut import = node
        .admin_command(&args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn import");
    // Kill the node once some batches are in, while the import still runs.
    loop {
        if let Some(status) = import.try_wait().expect("poll import") {
            panic!(
                "the import finished ({status}) before the node could be killed; make the file larger"
            );
        }
        if admin_json(&node, "info")["persons"].as_u64().unwrap_or(0) > 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    node.kill();
    let out = import.wait_with_output().expect("import exits");
    let failed = Run::from_output(&args, out).expect_code(1);
    assert!(
        failed.stderr.contains("UNAVAILABLE") && failed.stderr.contains("re-run the same command"),
        "{}",
        failed.stderr
    );

    node.restart();
    let committed = admin_json(&node, "info")["persons"]
        .as_u64()
        .expect("persons");
    assert!(
        committed > 0 && committed < rows,
        "{committed} of {rows} committed before the kill"
    );
    // The re-run replays the batches committed before the kill (same batch ids) and
    // inserts the rest: every row exactly once.
    let resumed = json(node.admin(&args));
    assert_eq!(counts(&resumed), [rows - committed, 0, 0, 0], "{resumed}");
    assert_eq!(resumed["already_imported"], committed, "{resumed}");
    assert_eq!(admin_json(&node, "info")["persons"], rows);
}

/// An import that finishes with rejected rows: exit 2 and the JSON report.
fn import_rejecting(
    node: &NodeProcess,
    what: &str,
    file: &std::path::Path,
    extra: &[&str],
) -> Value {
    let mut args = vec![what, "import", path_str(file), "--json"];
    args.extend_from_slice(extra);
    let run = node.admin(&args).expect_code(2);
    serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("yidi {:?} printed no JSON ({e}):\n{}", run.args, run.stdout))
}

fn errors_of(report: &Value) -> Vec<(u64, String, String)> {
    report["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .map(|e| {
            (
                e["row"].as_u64().unwrap(),
                e["field"].as_str().unwrap().to_owned(),
                e["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// A person, catalogue item or institution twice in one file: the later line is a row
/// error naming both lines (even when batches split the two), the first line is what
/// is stored, and importing the unchanged file again updates nothing.
#[test]
fn a_key_repeated_in_a_csv_file_is_refused_naming_both_lines() {
    let node = NodeProcess::start("330100");
    let dir = tempfile::tempdir().expect("temp dir");
    let born = NaiveDate::from_ymd_opt(1970, 3, 1).expect("date");
    let (a, b) = (
        yidi_common::idnum::make("330106", born, 31),
        yidi_common::idnum::make("330106", born, 32),
    );
    let persons_csv = dir.path().join("persons.csv");
    std::fs::write(
        &persons_csv,
        format!(
            "id_number,name,insurance_type,person_type,status,account_balance,enrolled_since\n\
             {a},甲,employee,in_service,active,10.00,2020-01-01\n\
             {b},乙,employee,in_service,active,0,2020-01-01\n\
             {a},丙,employee,retired,active,99.00,2020-01-01\n"
        ),
    )
    .expect("write persons");
    let dup_a = vec![(
        4,
        "id_number".to_owned(),
        format!(
            "{a} is already on line 2; the file must have one row per person (this line was not imported)"
        ),
    )];
    // One row per batch: the repeat is in another request than its first line.
    let first = import_rejecting(&node, "person", &persons_csv, &["--batch-size", "1"]);
    assert_eq!(counts(&first), [2, 0, 0, 1], "{first}");
    assert_eq!(errors_of(&first), dup_a);
    let stored = admin_json(&node, &format!("person get {a}"));
    assert_eq!(
        (&stored["name"], &stored["account_balance"]),
        (&Value::from("甲"), &Value::from("10.00")),
        "{stored}"
    );
    // The unchanged file again, as new requests (another batch size) and as the very
    // same ones: 0 updated either way, the same row error.
    let again = import_rejecting(&node, "person", &persons_csv, &["--batch-size", "2"]);
    assert_eq!(counts(&again), [0, 0, 2, 1], "{again}");
    assert_eq!(errors_of(&again), dup_a);
    let replay = import_rejecting(&node, "person", &persons_csv, &["--batch-size", "1"]);
    assert_eq!(counts(&replay), [0, 0, 0, 1], "{replay}");
    assert_eq!(replay["already_imported"], 2);

    let catalogue_csv = dir.path().join("catalogue.csv");
    std::fs::write(
        &catalogue_csv,
        "code,name,category,class,first_selfpay_ratio,price_cap,unit,valid_from,valid_to\n\
         T-01,阿莫西林胶囊,drug,A,0,12.60,盒,2024-01-01,\n\
         T-02,头孢呋辛酯片,drug,B,0.10,31.30,盒,2024-01-01,\n\
         T-01,阿莫西林胶囊,drug,A,0,15.00,盒,2024-01-01,\n",
    )
    .expect("write catalogue");
    let dup_item = vec![(
        4,
        "code".to_owned(),
        "T-01 is already on line 2; the file must have one row per catalogue item (this line was not imported)".to_owned(),
    )];
    let first = import_rejecting(&node, "catalogue", &catalogue_csv, &[]);
    assert_eq!(counts(&first), [2, 0, 0, 1], "{first}");
    assert_eq!(errors_of(&first), dup_item);
    assert_eq!(
        admin_json(&node, "catalogue get T-01")["price_cap"],
        "12.60"
    );
    let again = import_rejecting(
        &node,
        "catalogue",
        &catalogue_csv,
        &["--request-id", "cat-again"],
    );
    assert_eq!(counts(&again), [0, 0, 2, 1], "{again}");
    assert_eq!(errors_of(&again), dup_item);

    let institutions_csv = dir.path().join("institutions.csv");
    std::fs::write(
        &institutions_csv,
        "code,name,kind,level,agreement_status,agreement_from,agreement_to\n\
         HX1,第一医院,hospital,level3,active,2024-07-01,\n\
         HX1,第一医院,hospital,level2,active,2024-07-01,\n\
         HX2,第二医院,hospital,level2,active,2024-07-01,\n",
    )
    .expect("write institutions");
    let dup_inst = vec![(
        3,
        "code".to_owned(),
        "HX1 is already on line 2; the file must have one row per institution (this line was not imported)".to_owned(),
    )];
    let first = import_rejecting(&node, "institution", &institutions_csv, &[]);
    assert_eq!(counts(&first), [2, 0, 0, 1], "{first}");
    assert_eq!(errors_of(&first), dup_inst);
    assert_eq!(admin_json(&node, "institution get HX1")["level"], "level3");
    let again = import_rejecting(&node, "institution", &institutions_csv, &[]);
    assert_eq!(counts(&again), [0, 0, 2, 1], "{again}");
    assert_eq!(errors_of(&again), dup_inst);
}

/// `policy publish` prints one line; publishing the same file again says "unchanged"
/// and keeps version 1; a changed file becomes version 2.
#[test]
fn policy_publish_twice_is_unchanged() {
    let node = NodeProcess::start("330100");
    let policy_file = workspace_root().join("deploy/policies/330100-employee.toml");
    let publish = |file: &std::path::Path| {
        node.admin(&["policy", "publish", path_str(file)])
            .expect_code(0)
            .stdout
    };
    let first = publish(&policy_file);
    assert!(
        first.starts_with("published version 1: 330100 employee policy effective from 2026-01-01")
            && first.lines().count() == 1,
        "{first}"
    );
    let again = publish(&policy_file);
    assert!(
        again.starts_with("unchanged, version 1: ") && again.lines().count() == 1,
        "{again}"
    );
    let as_json = admin_json(&node, &format!("policy publish {}", path_str(&policy_file)));
    assert_eq!(
        (as_json["version"].as_u64(), as_json["unchanged"].as_bool()),
        (Some(1), Some(true))
    );
    assert_eq!(len(&admin_json(&node, "policy list")["policies"]), Some(1));

    let dir = tempfile::tempdir().expect("temp dir");
    let changed = dir.path().join("330100-employee.toml");
    let text = std::fs::read_to_string(&policy_file).expect("policy file");
    std::fs::write(&changed, text.replace("name = \"", "name = \"changed ")).expect("write policy");
    let second = publish(&changed);
    assert!(second.starts_with("published version 2: "), "{second}");
    assert_eq!(len(&admin_json(&node, "policy list")["policies"]), Some(2));
}
