//! The hospital's CLI end to end: in-process Hangzhou (330100) and Ningbo (330200)
//! nodes, and the real `yidi hospital` binary as a separate process driving a Ningbo
//! hospital through a cross-region inpatient visit — identify, admit, upload fees from a
//! CSV file, discharge, pre-settle, settle with exact amounts, repeat, cancel, 冲正 in
//! both of its meanings, list and reconcile — then the home node going away (a refused
//! settlement, and a settlement whose outcome cannot be known, with the hint to repeat
//! or reverse it). Assertions are on `--json` output, exit codes, and the
//! `error: <CODE>: <message>` line of refused calls.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use serde_json::Value;
use yidi_common::proto::{
    CatalogueClass as Cc, FilingType as Ft, HospitalLevel as Hl, InstitutionKind as Ik,
    InsuranceType as It, PersonType as Pt,
};
use yidi_tests::{
    fixtures::{filing, id_number, institution, item, person, publish_policies},
    harness::Federation,
    process::{Run, yidi},
};

const HZ: &str = "330100";
const NB: &str = "330200";
const INST: &str = "H33020001";

/// Runs `yidi ARGS…`. The nodes serve on this test's runtime, so the blocking wait for
/// the process must not hold up one of its workers.
fn cli(args: &[&str]) -> Run {
    tokio::task::block_in_place(|| yidi(args))
}

/// Runs `yidi hospital --node NODE --institution H33020001 ARGS…`.
fn hospital(node: &str, args: &[&str]) -> Run {
    let mut full = vec!["hospital", "--node", node, "--institution", INST];
    full.extend_from_slice(args);
    cli(&full)
}

/// Runs `open-visit` for a patient of Hangzhou: visit kind, the hospital's own visit
/// number, then any further flags.
fn open_visit(node: &str, id: &str, kind: &str, ext: &str, more: &[&str]) -> Run {
    let args = [
        "open-visit",
        "--id-number",
        id,
        "--home-region",
        HZ,
        "--kind",
        kind,
        "--external-visit-no",
        ext,
    ];
    hospital(node, &[&args[..], more].concat())
}

#[track_caller]
fn json(run: Run) -> Value {
    let run = run.expect_code(0);
    serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("yidi {:?} printed no JSON ({e}):\n{}", run.args, run.stdout))
}

/// Asserts a refused call: exit 1 and `error: CODE: …` naming `needle` on stderr.
#[track_caller]
fn refused(run: Run, code: &str, needle: &str) -> Run {
    let run = run.expect_code(1);
    let line = run
        .stderr
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_default();
    assert!(
        line.starts_with(&format!("error: {code}: ")) && line.contains(needle),
        "yidi {:?}: expected error: {code}: … mentioning {needle:?}, got:\n{}",
        run.args,
        run.stderr
    );
    run
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write test file");
    p.to_str().expect("UTF-8 path").to_owned()
}

/// The split amounts of a settlement's JSON, in the order given.
fn amounts<const N: usize>(s: &Value, names: [&str; N]) -> [String; N] {
    names.map(|n| s["split"][n].as_str().unwrap_or("<missing>").to_owned())
}

fn wait_outbox_empty(node: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let v = json(cli(&["admin", "--node", node, "outbox", "--json"]));
        for key in ["depth", "oldest", "targets", "exposure", "items"] {
            assert!(v.get(key).is_some(), "outbox JSON without {key}: {v}");
        }
        if v["depth"] == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "outbox not drained: {v}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hospital_cli_drives_a_cross_region_inpatient_visit() {
    let dir = tempfile::tempdir().unwrap();
    let mut fed = Federation::start(dir.path(), &[HZ, NB]).await;
    for n in &fed.nodes {
        publish_policies(n).await;
    }
    let (hz, nb) = (fed.node(HZ), fed.node(NB));
    institution(nb, INST, Ik::Hospital, Hl::HospitalLevel3).await;
    item(nb, "NB-A", Cc::A, "0", "").await;
    item(nb, "NB-B", Cc::B, "0.10", "").await;
    item(nb, "NB-C", Cc::C, "0", "").await;
    let id = person(
        hz,
        &id_number(HZ, "1950-04-02", 11),
        It::Employee,
        Pt::Retired,
        "1000.00",
        false,
    )
    .await;
    filing(hz, &id, Ft::ResettledRetiree, NB, &[], "2026-01-01").await;
    let card = format!("C{}", &id[6..]);
    let url = nb.url();
    let node = url.as_str();
    let files = dir.path();

    // 1101: by card, routed to the issuing region; by ID number, asked of every peer.
    let who = json(hospital(
        node,
        &[
            "identify",
            "--card-no",
            &card,
            "--card-region",
            HZ,
            "--json",
        ],
    ));
    assert_eq!(who["id_number"], id.as_str());
    assert_eq!(who["home_region"], HZ);
    assert_eq!(who["eligible"], true);
    assert_eq!(who["filing_type"], "resettled_retiree");
    assert_eq!(who["person_type"], "retired");
    assert_eq!(who["account_balance"], "1000.00");
    assert_eq!(who["accumulators"]["version"], 0);
    let who = json(hospital(
        node,
        &[
            "identify",
            "--id-number",
            &id,
            "--visit-kind",
            "住院",
            "--json",
        ],
    ));
    assert_eq!(who["home_region"], HZ);

    // 2401: admission. The request id is announced on stderr before the call.
    let run = open_visit(
        node,
        &id,
        "inpatient",
        "ZY-0001",
        &[
            "--admitted-at",
            "2026-03-10T09:00:00+08:00",
            "--diagnosis",
            "I21.9",
            "--request-id",
            "adm-1",
            "--json",
        ],
    );
    assert!(run.stderr.contains("request_id: adm-1"), "{}", run.stderr);
    let visit = json(run);
    assert_eq!(
        (visit["state"].as_str(), visit["visit_kind"].as_str()),
        (Some("open"), Some("inpatient"))
    );
    let v = visit["visit_id"].as_str().unwrap().to_owned();
    assert!(v.starts_with("330200-V-"), "{v}");

    // 2301: fees from a CSV; empty amounts are computed by the client.
    let fees = write(
        files,
        "fees.csv",
        "line_no,item_code,quantity,unit_price,amount,service_date\n\
         1,NB-A,1,10000.00,,2026-03-10\n\
         2,NB-B,4,500.00,2000.00,2026-03-11\n\
         3,NB-C,2,250.00,,\n",
    );
    let up = json(hospital(node, &["upload-fees", &v, &fees, "--json"]));
    assert_eq!(up["total"], "12500.00");
    assert_eq!(up["lines"][0]["amount"], "10000.00");
    assert_eq!(up["lines"][1]["class"], "B");
    assert_eq!(up["lines"][1]["first_selfpay_ratio"], "0.10");
    assert_eq!(up["lines"][2]["class"], "C");

    // Bad input: the node names the line and field; the client names file, line and
    // column for what it checks itself; nothing is changed.
    let bad = write(
        files,
        "bad.csv",
        "line_no,item_code,quantity,unit_price,amount\n4,NB-A,2,10.00,25.00\n",
    );
    refused(
        hospital(node, &["upload-fees", &v, &bad]),
        "INVALID_ARGUMENT",
        "lines[0].amount",
    );
    let neg = write(
        files,
        "neg.csv",
        "line_no,item_code,quantity,unit_price\n4,NB-A,-1,10.00\n",
    );
    let run = refused(
        hospital(node, &["upload-fees", &v, &neg]),
        "INVALID_ARGUMENT",
        "quantity (neg.csv line 2)",
    );
    assert!(
        !run.stderr.contains("request_id:"),
        "nothing was sent: {}",
        run.stderr
    );
    // Undo of a line that does not exist: refused, and the three lines stay.
    refused(
        hospital(node, &["undo-fees", &v, "9"]),
        "INVALID_ARGUMENT",
        "line_nos[0]",
    );
    // Inpatient care settles at discharge.
    refused(
        hospital(node, &["settle", &v, "--use-account"]),
        "FAILED_PRECONDITION",
        "discharged",
    );

    // 2402: discharge.
    let closed = json(hospital(
        node,
        &[
            "close-visit",
            &v,
            "--discharged-at",
            "2026-03-20T10:00:00+08:00",
            "--json",
        ],
    ));
    assert_eq!(closed["state"], "closed");

    // 2303: a dry run predicts the settlement.
    let pre = json(hospital(
        node,
        &["pre-settle", &v, "--use-account", "--json"],
    ));
    assert_eq!(pre["state"], "presettled");
    assert_eq!(pre["split"]["fund_pay_sumamt"], "9680.00");

    // 2304: 12500 = 500 (class C) + 200 (10% first self-pay of class B) + 11800 in
    // scope; deductible 800; pooled 88% × (11800 − 800) = 9680.00; personal 2820.00 =
    // account 1000.00 + cash 1820.00.
    let settle_args = [
        "settle",
        v.as_str(),
        "--use-account",
        "--request-id",
        "settle-1",
        "--json",
    ];
    let run = hospital(node, &settle_args);
    assert!(
        run.stderr.contains("request_id: settle-1"),
        "{}",
        run.stderr
    );
    let first_stdout = run.stdout.clone();
    let s = json(run);
    assert_eq!(s["state"], "settled");
    assert_eq!(s["visit_kind"], "inpatient");
    assert_eq!(
        amounts(
            &s,
            [
                "medfee_sumamt",
                "fulamt_ownpay_amt",
                "overlmt_selfpay",
                "preselfpay_amt",
                "inscp_scp_amt"
            ]
        ),
        ["12500.00", "500.00", "0.00", "200.00", "11800.00"]
    );
    assert_eq!(
        amounts(&s, ["act_pay_dedc", "hifp_pay", "fund_pay_sumamt"]),
        ["800.00", "9680.00", "9680.00"]
    );
    assert_eq!(
        amounts(&s, ["psn_part_amt", "acct_pay", "psn_cash_pay"]),
        ["2820.00", "1000.00", "1820.00"]
    );
    assert_eq!(s["split"]["applied_filing_type"], "resettled_retiree");
    assert_eq!(s["split"]["funds"][0]["fund"], "hifp");
    assert_eq!(s["split"]["lines"][1]["preselfpay_amt"], "200.00");
    assert!(!s["split"]["trace"].as_array().unwrap().is_empty());
    let sid = s["settlement_id"].as_str().unwrap().to_owned();
    // Lists and reconciliations run from the settlement date (CST) on, so that a test
    // crossing midnight still finds everything.
    let day = s["settled_at"].as_str().unwrap()[..10].to_owned();
    let range = ["--from", day.as_str(), "--to", "2100-12-31"];
    assert!(sid.starts_with("330200-S-"), "{sid}");

    // The same request again: the original answer, to the byte. Same id, other
    // content: refused, nothing changed. The table form shows the NHSA split.
    assert_eq!(
        hospital(node, &settle_args).expect_code(0).stdout,
        first_stdout
    );
    refused(
        hospital(node, &["settle", &v, "--request-id", "settle-1"]),
        "ALREADY_EXISTS",
        "settle-1",
    );
    let table = hospital(
        node,
        &["settle", &v, "--use-account", "--request-id", "settle-1"],
    )
    .expect_code(0)
    .stdout;
    for needle in [
        "统筹基金支付",
        "个人账户支付",
        "9680.00",
        "1820.00",
        "B_FIRST_SELFPAY",
        "trace:",
    ] {
        assert!(table.contains(needle), "no {needle:?} in:\n{table}");
    }

    let got = json(hospital(node, &["get", &sid, "--json"]));
    assert_eq!(
        (got["settlement_id"].as_str(), got["state"].as_str()),
        (Some(sid.as_str()), Some("settled"))
    );
    // The split in Chinese on request; the amounts as in JSON.
    let zh = hospital(node, &["get", &sid, "--lang", "zh"])
        .expect_code(0)
        .stdout;
    let en = hospital(node, &["get", &sid, "--lang", "en"])
        .expect_code(0)
        .stdout;
    let hifp = got["split"]["hifp_pay"].as_str().unwrap();
    assert!(
        zh.contains("结算分割（国家医保 setlinfo），统筹支付比例")
            && zh.contains("字段")
            && zh.contains("金额")
            && zh
                .lines()
                .any(|l| l.contains("hifp_pay") && l.contains(hifp)),
        "{zh}"
    );
    assert!(
        en.contains("split (NHSA setlinfo), pool ratio") && !en.contains("结算分割"),
        "{en}"
    );
    let listed = json(hospital(node, &[&["list", "--json"][..], &range].concat()));
    assert_eq!(listed["settlements"].as_array().unwrap().len(), 1);

    // 3201: totals agree; a wrong fund total exits 3.
    let totals = [
        "reconcile-totals",
        "--count",
        "1",
        "--medfee",
        "12500.00",
        "--fund",
        "9680.00",
        "--acct",
        "1000.00",
        "--json",
        range[0],
        range[1],
        range[2],
        range[3],
    ];
    let t = json(hospital(node, &totals));
    assert_eq!(t["matches"], true);
    assert_eq!(
        (t["count"].as_u64(), t["fund_pay_sumamt"].as_str()),
        (Some(1), Some("9680.00"))
    );
    let mut off = totals;
    off[6] = "9000.00";
    let run = hospital(node, &off).expect_code(3);
    assert!(run.stdout.contains("\"matches\": false"), "{}", run.stdout);

    // 3202: one amount differs, one settlement the node never made.
    let detail = write(
        files,
        "detail.csv",
        &format!(
            "settlement_id,medfee_sumamt,fund_pay_sumamt\n{sid},12500.00,9000.00\n330200-S-9999999999,10.00,5.00\n"
        ),
    );
    let run = hospital(
        node,
        &[&["reconcile-detail", &detail, "--json"][..], &range].concat(),
    )
    .expect_code(3);
    let d: Value = serde_json::from_str(&run.stdout).unwrap();
    let kinds: Vec<_> = d["differences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            (
                x["settlement_id"].as_str().unwrap(),
                x["kind"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            (sid.as_str(), "amount_differs"),
            ("330200-S-9999999999", "missing_at_node")
        ]
    );

    // 2305: cancel with a reversing record, delivered to the home node by the outbox.
    let c = json(hospital(
        node,
        &[
            "cancel",
            &sid,
            "--reason",
            "wrong ward",
            "--request-id",
            "cancel-1",
            "--json",
        ],
    ));
    assert_eq!(
        (c["state"].as_str(), c["reverses"].as_str()),
        (Some("reversal"), Some(sid.as_str()))
    );
    assert_eq!(c["split"]["fund_pay_sumamt"], "-9680.00");
    wait_outbox_empty(node);

    // 2601 on a request that never arrived: barred from taking effect later.
    let r = json(hospital(node, &["reverse", "lost-1", "--json"]));
    assert_eq!(
        (r["outcome"].as_str(), &r["reversal"]),
        (Some("not_found"), &Value::Null)
    );
    refused(
        hospital(
            node,
            &["settle", &v, "--use-account", "--request-id", "lost-1"],
        ),
        "ALREADY_EXISTS",
        "冲正",
    );
    // 2601 on a settlement whose answer the hospital never saw: reversed.
    let s2 = json(hospital(
        node,
        &[
            "settle",
            &v,
            "--use-account",
            "--request-id",
            "settle-2",
            "--json",
        ],
    ));
    assert_eq!(s2["state"], "settled");
    let r = json(hospital(node, &["reverse", "settle-2", "--json"]));
    assert_eq!(r["outcome"], "reversed");
    assert_eq!(r["reversal"]["reverses"], s2["settlement_id"]);
    let again = json(hospital(node, &["reverse", "settle-2", "--json"]));
    assert_eq!(again["outcome"], "already_reversed");
    wait_outbox_empty(node);

    // Two settlements and their two reversals net to zero.
    let listed = json(hospital(node, &[&["list", "--json"][..], &range].concat()));
    let states: Vec<_> = listed["settlements"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["state"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(states, ["cancelled", "reversal", "cancelled", "reversal"]);
    let t = json(hospital(
        node,
        &[
            "reconcile-totals",
            "--count",
            "4",
            "--medfee",
            "0",
            "--fund",
            "0",
            "--acct",
            "0",
            "--json",
            range[0],
            range[1],
            range[2],
            range[3],
        ],
    ));
    assert_eq!(t["matches"], true, "{t}");

    // Command-line mistakes exit 2 and name the flag; a foreign institution is refused.
    let run = cli(&["hospital", "--node", node, "--institution", "", "get", &sid]).expect_code(2);
    assert!(run.stderr.contains("--institution"), "{}", run.stderr);
    let run = open_visit(node, &id, "spa", "X", &[]).expect_code(2);
    assert!(run.stderr.contains("--kind"), "{}", run.stderr);
    refused(
        cli(&[
            "hospital",
            "--node",
            node,
            "--institution",
            "H99999999",
            "get",
            &sid,
        ]),
        "PERMISSION_DENIED",
        "H99999999",
    );

    // The home node goes away. A visit opened while it answered settles under its
    // policy's offline rule (Hangzhou refuses: the patient pays in full).
    let opd = json(open_visit(node, &id, "outpatient", "MZ-0002", &["--json"]));
    let v2 = opd["visit_id"].as_str().unwrap().to_owned();
    let fees2 = write(
        files,
        "fees2.json",
        r#"[{"line_no": "1", "item_code": "NB-A", "quantity": "2", "unit_price": "60.00"},
            {"line_no": "2", "item_code": "NB-B", "quantity": 1, "unit_price": "80.00", "amount": "80.00"}]"#,
    );
    let up = json(hospital(node, &["upload-fees", &v2, &fees2, "--json"]));
    assert_eq!(up["total"], "200.00");
    fed.stop(HZ).await;
    let offline = json(hospital(node, &["settle", &v2, "--json"]));
    assert_eq!(offline["state"], "refused", "{offline}");
    assert_eq!(
        amounts(
            &offline,
            ["medfee_sumamt", "fund_pay_sumamt", "psn_cash_pay"]
        ),
        ["200.00", "0.00", "200.00"]
    );
    assert!(
        offline["note"].as_str().unwrap().contains("refuses"),
        "{offline}"
    );

    // A visit opened while the home node was away has no home data: nothing can be
    // settled, and the CLI says how to learn the outcome or undo it.
    let v3 = json(open_visit(node, &id, "outpatient", "MZ-0003", &["--json"]))["visit_id"]
        .as_str()
        .unwrap()
        .to_owned();
    json(hospital(node, &["upload-fees", &v3, &fees2, "--json"]));
    let run = refused(
        hospital(node, &["settle", &v3, "--request-id", "settle-3"]),
        "UNAVAILABLE",
        "330100",
    );
    assert!(
        run.stderr.contains("--request-id settle-3")
            && run.stderr.contains("yidi hospital reverse settle-3"),
        "{}",
        run.stderr
    );

    // An unreachable node: nothing was sent, so no request id is announced.
    let run = refused(
        cli(&[
            "hospital",
            "--node",
            "http://127.0.0.1:1",
            "--institution",
            INST,
            "settle",
            &v3,
        ]),
        "UNAVAILABLE",
        "cannot reach the node",
    );
    assert!(!run.stderr.contains("request_id:"), "{}", run.stderr);
}

/// `reopen-visit`, `cancel-visit` and `update-visit` (NHSA 2405, 2202 / 2404, 2203 /
/// 2403): each answer, each refusal with its exit code and message, a repeat by request
/// id, and the visit left as it was by a refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hospital_cli_reopens_cancels_and_updates_a_visit() {
    let dir = tempfile::tempdir().unwrap();
    let fed = Federation::start(dir.path(), &[HZ, NB]).await;
    for n in &fed.nodes {
        publish_policies(n).await;
    }
    let (hz, nb) = (fed.node(HZ), fed.node(NB));
    institution(nb, INST, Ik::Hospital, Hl::HospitalLevel3).await;
    item(nb, "NB-A", Cc::A, "0", "").await;
    let id = person(
        hz,
        &id_number(HZ, "1950-04-02", 12),
        It::Employee,
        Pt::Retired,
        "1000.00",
        false,
    )
    .await;
    filing(hz, &id, Ft::ResettledRetiree, NB, &[], "2026-01-01").await;
    let url = nb.url();
    let node = url.as_str();
    let visit = json(open_visit(
        node,
        &id,
        "inpatient",
        "ZY-0100",
        &[
            "--admitted-at",
            "2026-03-10T09:00:00+08:00",
            "--diagnosis",
            "I21.9",
            "--json",
        ],
    ));
    let v = visit["visit_id"].as_str().unwrap().to_owned();
    // 2403: a new diagnosis and visit number; the text answer shows both.
    let run = hospital(
        node,
        &[
            "update-visit",
            &v,
            "--diagnosis",
            "I25.1",
            "--external-visit-no",
            "ZY-0101",
            "--request-id",
            "upd-1",
        ],
    )
    .expect_code(0);
    assert!(run.stderr.contains("request_id: upd-1"), "{}", run.stderr);
    let rows: Vec<&str> = run.stdout.lines().collect();
    for (field, value) in [
        ("visit_id", v.as_str()),
        ("state", "open"),
        ("external_visit_no", "ZY-0101"),
        ("diagnosis_code", "I25.1"),
        ("id_number", id.as_str()),
        ("visit_kind", "inpatient"),
    ] {
        assert!(
            rows.iter().any(|r| {
                let cells: Vec<&str> = r.trim_matches('│').split('┆').map(str::trim).collect();
                cells == [field, value]
            }),
            "a row {field} = {value}:\n{}",
            run.stdout
        );
    }
    // The same request id with the same change: the same answer; with another: refused.
    let again = json(hospital(
        node,
        &[
            "update-visit",
            &v,
            "--diagnosis",
            "I25.1",
            "--external-visit-no",
            "ZY-0101",
            "--request-id",
            "upd-1",
            "--json",
        ],
    ));
    assert_eq!(
        (
            again["diagnosis_code"].as_str(),
            again["external_visit_no"].as_str()
        ),
        (Some("I25.1"), Some("ZY-0101"))
    );
    refused(
        hospital(
            node,
            &[
                "update-visit",
                &v,
                "--diagnosis",
                "I10",
                "--request-id",
                "upd-1",
            ],
        ),
        "ALREADY_EXISTS",
        "request_id \"upd-1\" was already used",
    );
    // Neither flag: a command-line error (exit 2) before anything is sent.
    let run = hospital(node, &["update-visit", &v]).expect_code(2);
    assert!(run.stderr.contains("--diagnosis"), "{}", run.stderr);
    // Both empty: the node's refusal, nothing changed.
    refused(
        hospital(node, &["update-visit", &v, "--diagnosis", ""]),
        "INVALID_ARGUMENT",
        "invalid diagnosis_code: nothing to change",
    );
    let now = json(hospital(
        node,
        &["update-visit", &v, "--diagnosis", "I25.1", "--json"],
    ));
    assert_eq!(
        (
            now["diagnosis_code"].as_str(),
            now["external_visit_no"].as_str()
        ),
        (Some("I25.1"), Some("ZY-0101"))
    );

    // 2405 of an open visit: refused; after discharge, the visit is open again.
    refused(
        hospital(node, &["reopen-visit", &v]),
        "FAILED_PRECONDITION",
        &format!("visit {v} is open; only a closed (discharged) visit can be reopened"),
    );
    json(hospital(
        node,
        &[
            "close-visit",
            &v,
            "--discharged-at",
            "2026-03-20T10:00:00+08:00",
            "--json",
        ],
    ));
    let reopened = json(hospital(node, &["reopen-visit", &v, "--json"]));
    assert_eq!(
        (reopened["state"].as_str(), reopened["closed_at"].as_str()),
        (Some("open"), Some(""))
    );

    // 2404 while a settlement stands: refused, naming it; the visit stays settled.
    let fees = write(
        dir.path(),
        "fees.csv",
        "line_no,item_code,quantity,unit_price\n1,NB-A,1,1000.00\n",
    );
    hospital(node, &["upload-fees", &v, &fees]).expect_code(0);
    json(hospital(
        node,
        &[
            "close-visit",
            &v,
            "--discharged-at",
            "2026-03-20T10:00:00+08:00",
            "--json",
        ],
    ));
    let s = json(hospital(node, &["settle", &v, "--json"]));
    let sid = s["settlement_id"].as_str().unwrap().to_owned();
    refused(
        hospital(node, &["cancel-visit", &v]),
        "FAILED_PRECONDITION",
        &format!(
            "visit {v} has settlement {sid} (settled); cancel it (CancelSettlement) before cancelling the visit"
        ),
    );
    refused(
        hospital(node, &["update-visit", &v, "--diagnosis", "I10"]),
        "FAILED_PRECONDITION",
        &format!("visit {v} is settled; cancel its settlement"),
    );
    assert_eq!(
        json(hospital(node, &["get", &sid, "--json"]))["state"],
        "settled"
    );

    // Cancel the settlement, then the admission: cancelled for good.
    json(hospital(node, &["cancel", &sid, "--json"]));
    let cancel = [
        "cancel-visit",
        v.as_str(),
        "--reason",
        "registered twice",
        "--request-id",
        "cv-1",
        "--json",
    ];
    let cancelled = json(hospital(node, &cancel));
    assert_eq!(cancelled["state"], "cancelled");
    assert_eq!(
        json(hospital(node, &cancel)),
        cancelled,
        "a repeat answers alike"
    );
    refused(
        hospital(node, &["cancel-visit", &v]),
        "FAILED_PRECONDITION",
        &format!("visit {v} is already cancelled"),
    );
    refused(
        hospital(node, &["reopen-visit", &v]),
        "FAILED_PRECONDITION",
        &format!("visit {v} is cancelled; only a closed (discharged) visit can be reopened"),
    );
    refused(
        hospital(node, &["update-visit", &v, "--external-visit-no", "ZY-9"]),
        "FAILED_PRECONDITION",
        &format!("visit {v} is cancelled; it can no longer be changed"),
    );
    refused(
        hospital(node, &["reopen-visit", "330200-V-99999999"]),
        "NOT_FOUND",
        "330200-V-99999999",
    );
}
