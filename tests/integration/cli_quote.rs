//! `yidi quote` through the real binary: a split, a refusal by the policy and bad input
//! each have their exit code, and with `--json` each is one JSON document on stdout. The
//! catalogue rules of a line (class B states its first self-pay ratio, A and C have
//! none) and region codes are checked before the engine runs.

use serde_json::Value;
use yidi_tests::process::{Run, workspace_root, yidi};

/// A visit of a Hangzhou employee at a Ningbo level-3 hospital (`home`, `treatment`),
/// unfiled unless `filed`, with one line of each class; `b_ratio` / `a_ratio` are the
/// lines' `first_selfpay_ratio` entries (`None`: left out).
fn visit(
    kind: &str,
    home: &str,
    treatment: &str,
    filed: bool,
    a_ratio: Option<&str>,
    b_ratio: Option<&str>,
) -> String {
    let ratio = |r: Option<&str>| {
        r.map_or(String::new(), |r| {
            format!("first_selfpay_ratio = \"{r}\"\n")
        })
    };
    let filing = if filed {
        format!(
            "[filing]\nfiling_type = \"resettled_retiree\"\ntreatment_region = \"{treatment}\"\nvalid_from = \"2026-01-01\"\n\n"
        )
    } else {
        String::new()
    };
    format!(
        "visit_kind = \"{kind}\"\nlevel = \"level3\"\ninstitution_code = \"H1\"\nvisit_date = \"2026-03-14\"\n\
         treatment_region = \"{treatment}\"\nhome_region = \"{home}\"\n\n{filing}\
         [[lines]]\nline_no = \"1\"\nclass = \"a\"\n{}quantity = \"1\"\nunit_price = \"1000.00\"\namount = \"1000.00\"\n\n\
         [[lines]]\nline_no = \"2\"\nclass = \"b\"\n{}quantity = \"1\"\nunit_price = \"500.00\"\namount = \"500.00\"\n\n\
         [[lines]]\nline_no = \"3\"\nclass = \"c\"\nquantity = \"1\"\nunit_price = \"100.00\"\namount = \"100.00\"\n",
        ratio(a_ratio),
        ratio(b_ratio),
    )
}

fn quote(dir: &std::path::Path, policy: &str, visit: &str, json: bool) -> Run {
    let path = dir.join("visit.toml");
    std::fs::write(&path, visit).expect("write visit");
    let policy = workspace_root().join("deploy/policies").join(policy);
    let person = workspace_root().join("deploy/examples/quote/person.toml");
    let mut args = vec![
        "quote",
        "--policy",
        policy.to_str().unwrap(),
        "--person",
        person.to_str().unwrap(),
        "--visit",
        path.to_str().unwrap(),
    ];
    if json {
        args.push("--json");
    }
    yidi(&args)
}

fn doc(run: &Run) -> Value {
    serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("yidi {:?} printed no JSON ({e}):\n{}", run.args, run.stdout))
}

#[test]
fn quote_refuses_bad_lines_and_regions_and_tells_refusals_apart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let hz = "330100-employee.toml";

    // A split: exit 0. The class-B line's 10 % is its own first self-pay share.
    let ok = quote(
        dir.path(),
        hz,
        &visit("inpatient", "330100", "330200", true, None, Some("0.10")),
        true,
    )
    .expect_code(0);
    let split = doc(&ok);
    assert_eq!(split["outcome"], "split");
    assert_eq!(split["split"]["medfee_sumamt"], "1600.00");
    assert_eq!(split["split"]["preselfpay_amt"], "50.00");
    assert_eq!(split["split"]["fulamt_ownpay_amt"], "100.00");
    // An explicit 0 is a statement, and A/C lines may say 0.
    let zero = quote(
        dir.path(),
        hz,
        &visit("inpatient", "330100", "330200", true, Some("0"), Some("0")),
        true,
    )
    .expect_code(0);
    assert_eq!(doc(&zero)["split"]["preselfpay_amt"], "0.00");

    // Bad input: exit 2, the field named, a JSON document with --json, no split.
    for (v, field, needle) in [
        (
            visit("inpatient", "330100", "330200", true, None, None),
            "lines[1].first_selfpay_ratio",
            "required for a class B (乙类) item",
        ),
        (
            visit(
                "inpatient",
                "330100",
                "330200",
                true,
                Some("0.10"),
                Some("0.10"),
            ),
            "lines[0].first_selfpay_ratio",
            "only class B items have a first self-pay ratio; class A must have none or 0, got 0.10",
        ),
        (
            visit("inpatient", "330100", "3302", false, None, Some("0.10")),
            "visit.treatment_region",
            "region code must be 6 digits, got \"3302\"",
        ),
        (
            visit("inpatient", "3301", "330200", true, None, Some("0.10")),
            "visit.home_region",
            "region code must be 6 digits",
        ),
        (
            visit("inpatient", "330100", "330000", false, None, Some("0.10")),
            "visit.treatment_region",
            "is not a city (pooling region) code",
        ),
    ] {
        let run = quote(dir.path(), hz, &v, true).expect_code(2);
        let d = doc(&run);
        assert_eq!(
            (d["outcome"].as_str(), d["field"].as_str()),
            (Some("bad_input"), Some(field)),
            "{d}"
        );
        assert!(d["reason"].as_str().unwrap().contains(needle), "{d}");
        assert!(d.get("split").is_none());
        assert!(
            run.stderr.contains(&format!("invalid {field}: ")),
            "{}",
            run.stderr
        );
        // Without --json: the same exit code, nothing on stdout.
        let plain = quote(dir.path(), hz, &v, false).expect_code(2);
        assert!(plain.stdout.is_empty(), "{}", plain.stdout);
    }

    // Refused by the policy: Ningbo's employees are not settled directly for unfiled
    // outpatient care. Exit 3 and a JSON document naming the policy.
    let nb = "330200-employee.toml";
    let refused = quote(
        dir.path(),
        nb,
        &visit("outpatient", "330200", "330100", false, None, Some("0.10")),
        true,
    )
    .expect_code(3);
    let d = doc(&refused);
    assert_eq!(
        (
            d["outcome"].as_str(),
            d["refused_by"].as_str(),
            d["policy"]["region"].as_str()
        ),
        (Some("refused"), Some("policy"), Some("330200"))
    );
    assert!(
        d["reason"]
            .as_str()
            .unwrap()
            .starts_with("no direct settlement: policy 330200 employee"),
        "{d}"
    );
    assert!(
        refused
            .stderr
            .starts_with("refused by the policy: no direct settlement"),
        "{}",
        refused.stderr
    );
    let plain = quote(
        dir.path(),
        nb,
        &visit("outpatient", "330200", "330100", false, None, Some("0.10")),
        false,
    )
    .expect_code(3);
    assert!(plain.stdout.is_empty(), "{}", plain.stdout);

    // An unreadable file is bad input too.
    let missing = yidi(&[
        "quote",
        "--policy",
        "/nonexistent/policy.toml",
        "--person",
        "x",
        "--visit",
        "y",
        "--json",
    ])
    .expect_code(2);
    assert_eq!(doc(&missing)["file"], "/nonexistent/policy.toml");
}

/// `--lang zh` (or `YIDI_LANG=zh`, or a `zh_…` locale) prints the tables and the refusal
/// line for Chinese agency staff; `--lang en` prints the codes as before; JSON keeps the
/// codes whatever the language.
#[test]
fn quote_speaks_chinese_on_request_and_keeps_codes_in_json() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("visit.toml");
    // Unfiled (临时外出) inpatient care of a Hangzhou employee in Ningbo.
    std::fs::write(
        &path,
        visit("inpatient", "330100", "330200", false, None, Some("0.10")),
    )
    .unwrap();
    let policy = workspace_root().join("deploy/policies/330100-employee.toml");
    let person = workspace_root().join("deploy/examples/quote/person.toml");
    let base = [
        "quote",
        "--policy",
        policy.to_str().unwrap(),
        "--person",
        person.to_str().unwrap(),
        "--visit",
        path.to_str().unwrap(),
    ];
    let with = |extra: &[&str]| {
        let mut a = base.to_vec();
        a.extend_from_slice(extra);
        yidi(&a).expect_code(0)
    };
    let en = with(&["--lang", "en"]);
    let zh = with(&["--lang", "zh"]);
    let row = |out: &str, field: &str| {
        out.lines()
            .find(|l| l.contains(&format!(" {field} ")))
            .map(str::to_owned)
            .unwrap_or_default()
    };
    // The split's NHSA names and Chinese labels in both; the rest in the chosen language.
    for out in [&en.stdout, &zh.stdout] {
        assert!(row(out, "hifp_pay").contains("统筹基金支出"), "{out}");
    }
    assert!(
        row(&en.stdout, "applied_filing_type").contains(" temporary "),
        "{}",
        en.stdout
    );
    assert!(
        row(&zh.stdout, "applied_filing_type").contains(" 临时外出 "),
        "{}",
        zh.stdout
    );
    for needle in [
        "字段",
        "金额",
        "甲类",
        "丙类（目录外全自费）",
        "统筹基金",
        "累计项",
        "职工",
    ] {
        assert!(zh.stdout.contains(needle), "{needle}: {}", zh.stdout);
    }
    for needle in ["│ field", "C_OUT_OF_SCOPE", "│ hifp ", "accumulator"] {
        assert!(en.stdout.contains(needle), "{needle}: {}", en.stdout);
        assert!(!zh.stdout.contains(needle), "{needle}: {}", zh.stdout);
    }
    assert!(
        en.stdout.starts_with("policy 330100 employee \""),
        "{}",
        en.stdout
    );
    assert!(
        zh.stdout.starts_with("待遇政策 330100 职工 \""),
        "{}",
        zh.stdout
    );
    // The environment decides without the flag: YIDI_LANG, then the locale.
    let mut cmd = yidi_process_command(&base);
    let by_env = cmd
        .env("YIDI_LANG", "zh")
        .env("LANG", "C")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&by_env.stdout).contains("临时外出"));
    let mut cmd = yidi_process_command(&base);
    let by_locale = cmd
        .env_remove("YIDI_LANG")
        .env_remove("LC_ALL")
        .env("LANG", "zh_CN.UTF-8")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&by_locale.stdout).contains("临时外出"));
    // JSON keeps the codes.
    let json = with(&["--lang", "zh", "--json"]);
    let d = doc(&json);
    assert_eq!(d["split"]["applied_filing_type"], "temporary");
    assert_eq!(d["funds"][0]["fund"], "hifp");

    // A refusal by the policy: the line on stderr in Chinese, the engine's reason kept.
    let refusal = visit("outpatient", "330200", "330100", false, None, Some("0.10"));
    std::fs::write(&path, refusal).unwrap();
    let nb = workspace_root().join("deploy/policies/330200-employee.toml");
    let mut a = base.to_vec();
    a[2] = nb.to_str().unwrap();
    a.extend_from_slice(&["--lang", "zh"]);
    let refused = yidi(&a).expect_code(3);
    assert!(
        refused
            .stderr
            .starts_with("政策不予直接结算（refused by the policy）：no direct settlement"),
        "{}",
        refused.stderr
    );
}

fn yidi_process_command(args: &[&str]) -> std::process::Command {
    let mut cmd = yidi_tests::process::yidi_command();
    cmd.args(args);
    cmd
}
