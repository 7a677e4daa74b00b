//! The clearing CLI end to end: the real `yidi` binary drives `yidi clearing …` against
//! an in-process coordinator and `yidi admin` (deductions, reserves, hospital statement,
//! ledger, confirming a statement, the node's rounds) against three in-process nodes.
//! Claims are settled through the hospital API first; every amount asserted on comes
//! from `--json` output and is checked to the fen. Also: a transfer that matches no
//! instruction is refused (exit 1, INVALID_ARGUMENT), a confirmed round cannot be
//! aborted, and a node without automatic confirmation is confirmed by its operator.

use std::{path::Path, time::Duration};

use rust_decimal::Decimal;
use serde_json::Value;
use yidi_common::{
    money,
    proto::{
        self, CatalogueClass as Cc, FilingType as Ft, HospitalLevel as Hl, InstitutionKind as Ik,
        InsuranceType as It, PersonType as Pt,
    },
};
use yidi_tests::{
    fixtures::{
        filing, id_number, institution, item, person, publish_policies, wait_outbox_drained,
    },
    harness::{Federation, TestCoordinator, mid_period},
    process::{Run, yidi},
};

const HZ: &str = "330100";
const NB: &str = "330200";
const WZ: &str = "330300";

fn m(s: &str) -> Decimal {
    money::parse(s, "amount", money::Sign::Any).unwrap_or_else(|e| panic!("{s:?}: {e}"))
}

/// Runs the real binary off the runtime's worker threads: the nodes and the coordinator
/// it talks to are served by this very process.
async fn run(args: Vec<String>) -> Run {
    tokio::task::spawn_blocking(move || {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        yidi(&refs)
    })
    .await
    .expect("yidi task")
}

fn argv(prefix: &[&str], line: &[&str]) -> Vec<String> {
    prefix.iter().chain(line).map(|s| (*s).to_owned()).collect()
}

#[track_caller]
fn parse(run: Run) -> Value {
    let run = run.expect_code(0);
    serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("yidi {:?} printed no JSON ({e}):\n{}", run.args, run.stdout))
}

/// `yidi clearing --coordinator URL ARGS… --json`.
async fn clearing(url: &str, line: &[&str]) -> Value {
    let mut args = argv(&["clearing", "--coordinator", url], line);
    args.push("--json".into());
    parse(run(args).await)
}

/// `yidi admin --node URL ARGS… --json`.
async fn admin(url: &str, line: &[&str]) -> Value {
    let mut args = argv(&["admin", "--node", url], line);
    args.push("--json".into());
    parse(run(args).await)
}

/// Every node has a level-3 hospital `H<region>` and one class-A drug.
async fn prepare(fed: &Federation) {
    for n in &fed.nodes {
        publish_policies(n).await;
        institution(
            n,
            &format!("H{}", n.region),
            Ik::Hospital,
            Hl::HospitalLevel3,
        )
        .await;
        item(n, "DRUG-A", Cc::A, "0", "").await;
    }
}

/// A retired employee of `home`, resettled in `treatment`, is admitted there and
/// settles a bill of `amount` in class-A drugs; returns the settlement.
async fn inpatient(
    fed: &Federation,
    home: &str,
    treatment: &str,
    seq: u16,
    amount: &str,
) -> proto::Settlement {
    let id = person(
        fed.node(home),
        &id_number(home, "1948-06-01", seq),
        It::Employee,
        Pt::Retired,
        "0.00",
        false,
    )
    .await;
    filing(
        fed.node(home),
        &id,
        Ft::ResettledRetiree,
        treatment,
        &[],
        "2026-01-01",
    )
    .await;
    let inst = format!("H{treatment}");
    let mut h = fed.node(treatment).hospital().await;
    let rid = |s: &str| format!("{s}-{home}-{treatment}-{seq}");
    let v = h
        .open_visit(proto::OpenVisitRequest {
            request_id: rid("open"),
            institution_code: inst.clone(),
            id_number: id,
            home_region: home.into(),
            visit_kind: proto::VisitKind::Inpatient as i32,
            external_visit_no: rid("ext"),
            admitted_at: String::new(),
            diagnosis_code: String::new(),
        })
        .await
        .expect("open visit")
        .into_inner();
    h.upload_fees(proto::UploadFeesRequest {
        request_id: rid("fees"),
        institution_code: inst.clone(),
        visit_id: v.visit_id.clone(),
        lines: vec![proto::FeeLine {
            line_no: "1".into(),
            item_code: "DRUG-A".into(),
            quantity: "1".into(),
            unit_price: amount.into(),
            amount: amount.into(),
            service_date: String::new(),
        }],
    })
    .await
    .expect("upload fees");
    h.close_visit(proto::CloseVisitRequest {
        request_id: rid("close"),
        institution_code: inst.clone(),
        visit_id: v.visit_id.clone(),
        discharged_at: String::new(),
    })
    .await
    .expect("close visit");
    h.settle(proto::SettleRequest {
        request_id: rid("settle"),
        institution_code: inst,
        visit_id: v.visit_id,
        use_account: false,
    })
    .await
    .expect("settle")
    .into_inner()
}

fn fund(s: &proto::Settlement) -> Decimal {
    m(&s.split.as_ref().expect("split").fund_pay_sumamt)
}

fn net_of(statement: &Value, region: &str) -> Decimal {
    statement["nets"]
        .as_array()
        .expect("nets")
        .iter()
        .find(|n| n["region"] == region)
        .map_or(Decimal::ZERO, |n| m(n["net"].as_str().expect("net")))
}

async fn drain(fed: &Federation) {
    for n in &fed.nodes {
        wait_outbox_drained(n, Duration::from_secs(15)).await;
    }
}

/// Records every instruction of the statement with `yidi clearing record-transfer`;
/// returns the round as the last call printed it.
async fn pay_all(url: &str, round: &str, statement: &Value) -> Value {
    let mut last = Value::Null;
    for (i, ins) in statement["instructions"]
        .as_array()
        .expect("instructions")
        .iter()
        .enumerate()
    {
        let reference = format!("BANK-{round}-{i}");
        last = clearing(
            url,
            &[
                "record-transfer",
                round,
                "--from",
                ins["from_region"].as_str().expect("from"),
                "--to",
                ins["to_region"].as_str().expect("to"),
                "--amount",
                ins["amount"].as_str().expect("amount"),
                "--reference",
                &reference,
            ],
        )
        .await;
    }
    last
}

fn csv_rows(path: &Path) -> Vec<csv::StringRecord> {
    csv::Reader::from_path(path)
        .expect("statement csv")
        .records()
        .collect::<Result<_, _>>()
        .expect("csv rows")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clearing_and_funds_commands_through_the_real_binary() {
    let dir = tempfile::tempdir().unwrap();
    let mut fed = Federation::start(dir.path(), &[HZ, NB, WZ]).await;
    prepare(&fed).await;
    let (hz, nb) = (fed.node(HZ).url(), fed.node(NB).url());

    // Claims: Hangzhou's and Wenzhou's retirees treated in Ningbo, Ningbo's in Hangzhou.
    let hz_at_nb = inpatient(&fed, HZ, NB, 1, "10000.00").await;
    let wz_at_nb = inpatient(&fed, WZ, NB, 2, "6000.00").await;
    let nb_at_hz = inpatient(&fed, NB, HZ, 3, "3000.00").await;
    // 10000 in scope − 800 deductible (Hangzhou, level 3) = 9200 × 88% (retiree).
    assert_eq!(fund(&hz_at_nb), m("8096.00"));
    let period = hz_at_nb.period.clone();

    // Ningbo's audit deducts 96.00 from the Hangzhou claim.
    let d = admin(
        &nb,
        &[
            "deduction",
            "record",
            &hz_at_nb.settlement_id,
            "--amount",
            "96.00",
            "--reason",
            "duplicate lab test",
        ],
    )
    .await;
    assert_eq!(
        (&d["amount"], &d["home_region"], &d["institution_code"]),
        (
            &Value::from("96.00"),
            &Value::from(HZ),
            &Value::from("H330200")
        )
    );
    let list = admin(
        &nb,
        &[
            "deduction",
            "list",
            "--settlement-id",
            &hz_at_nb.settlement_id,
        ],
    )
    .await;
    assert_eq!(list["deductions"].as_array().map(Vec::len), Some(1));
    assert_eq!(list["deductions"][0]["reason"], "duplicate lab test");

    // Hangzhou tops up its reserve in Ningbo: 5000.00, alarm below 6000.00.
    let r = admin(
        &hz,
        &[
            "reserve",
            "record",
            "--counterparty",
            NB,
            "--kind",
            "topup",
            "--amount",
            "5000.00",
            "--alarm-threshold",
            "6000.00",
            "--note",
            "2026",
        ],
    )
    .await;
    assert_eq!(
        (&r["kind"], &r["balance"], &r["alarm"]),
        (
            &Value::from("reserve_topup"),
            &Value::from("5000.00"),
            &Value::from(true)
        )
    );
    drain(&fed).await;
    let reserves = admin(&nb, &["reserve", "list"]).await;
    assert_eq!(reserves["reserves"][0]["home_region"], HZ);
    assert_eq!(reserves["reserves"][0]["balance"], "5000.00");

    // What Ningbo pays its hospital: fund share minus the deduction.
    let nb_fund = fund(&hz_at_nb) + fund(&wz_at_nb);
    let hs = admin(&nb, &["statement", "H330200", "--period", &period]).await;
    assert_eq!(m(hs["fund_pay_sumamt"].as_str().unwrap()), nb_fund);
    assert_eq!(hs["deductions"], "96.00");
    assert_eq!(m(hs["payable"].as_str().unwrap()), nb_fund - m("96.00"));
    assert_eq!(hs["records"], 2);

    // Ningbo's ledger toward Hangzhou: the claim, less the deduction, plus the top-up.
    let hz_owes_nb = fund(&hz_at_nb) - m("96.00") + m("5000.00");
    let ledger = admin(&nb, &["ledger", "--period", &period]).await;
    let toward_hz = ledger["positions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["counterparty"] == HZ)
        .expect("a position toward Hangzhou")
        .clone();
    assert_eq!(m(toward_hz["receivable_sum"].as_str().unwrap()), hz_owes_nb);
    assert_eq!(toward_hz["receivable_count"], 3);
    assert_eq!(
        m(toward_hz["payable_sum"].as_str().unwrap()),
        fund(&nb_at_hz)
    );
    let nb_net = hz_owes_nb + fund(&wz_at_nb) - fund(&nb_at_hz);
    assert_eq!(m(ledger["net"].as_str().unwrap()), nb_net);

    // The round, through `yidi clearing`.
    let coord =
        TestCoordinator::start(dir.path().join("coordinator"), fed.peers_file.clone()).await;
    let url = format!("http://{}", coord.addr);
    let opened = clearing(&url, &["open", &period, "--early"]).await;
    let round = opened["round_id"].as_str().unwrap().to_owned();
    assert_eq!(round, format!("{period}-r1"));
    assert_eq!(opened["state"], "OPEN");
    let ran = clearing(&url, &["run", &round]).await;
    assert_eq!(ran["state"], "CONFIRMED", "{ran}");
    assert_eq!(ran["confirmed"], serde_json::json!([HZ, NB, WZ]));
    let disputes = clearing(&url, &["disputes", &round]).await;
    assert_eq!(disputes["disputes"], serde_json::json!([]));

    let csv_path = dir.path().join("statement.csv");
    let st = parse(
        run(argv(
            &["clearing", "--coordinator", &url],
            &[
                "statement",
                &round,
                "--json",
                "--csv",
                csv_path.to_str().unwrap(),
            ],
        ))
        .await,
    );
    assert_eq!(net_of(&st, NB), nb_net);
    assert_eq!(net_of(&st, HZ), fund(&nb_at_hz) - hz_owes_nb);
    assert_eq!(net_of(&st, WZ), -fund(&wz_at_nb));
    assert_eq!(
        (&st["sum_net"], &st["digest_verified"]),
        (&Value::from("0.00"), &Value::from(true))
    );
    assert_eq!(st["paid_in"], st["paid_out"]);
    assert_eq!(st["clearing_account"], "330000");
    // By record kind, to the fen: the three claims, Ningbo's deduction (a negative
    // record), Hangzhou's reserve top-up; Σ of the kinds is Σ of the gross amounts, and
    // each pair's kinds add up to its own amount and count.
    let kind = |k: &str| {
        (
            st["by_kind"][k]["count"].as_u64(),
            m(st["by_kind"][k]["sum"].as_str().unwrap_or("0")),
        )
    };
    assert_eq!(
        kind("claims"),
        (Some(3), fund(&hz_at_nb) + fund(&wz_at_nb) + fund(&nb_at_hz))
    );
    assert_eq!(kind("audit_deductions"), (Some(1), m("-96.00")));
    assert_eq!(kind("reserves"), (Some(1), m("5000.00")));
    assert!(st["by_kind"].get("cancellations").is_none(), "{st}");
    let gross = st["gross"].as_array().unwrap();
    let gross_sum: Decimal = gross.iter().map(|g| m(g["amount"].as_str().unwrap())).sum();
    assert_eq!(
        m("-96.00") + m("5000.00") + fund(&hz_at_nb) + fund(&wz_at_nb) + fund(&nb_at_hz),
        gross_sum
    );
    for g in gross {
        let kinds = g["kinds"].as_array().unwrap();
        let sum: Decimal = kinds.iter().map(|k| m(k["sum"].as_str().unwrap())).sum();
        let count: u64 = kinds.iter().map(|k| k["count"].as_u64().unwrap()).sum();
        assert_eq!(
            (sum, count),
            (
                m(g["amount"].as_str().unwrap()),
                g["count"].as_u64().unwrap()
            ),
            "{g}"
        );
    }
    // Two pairs owe each other something (Hangzhou↔Ningbo both ways, Wenzhou→Ningbo):
    // three gross entries, two bilateral transfers, three instructions with netting.
    assert_eq!(st["gross"].as_array().map(Vec::len), Some(3));
    assert_eq!(
        (&st["bilateral_transfers"], &st["netted_transfers"]),
        (&Value::from(2), &Value::from(3))
    );
    let hz_nb = st["gross"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["debtor"] == HZ && g["creditor"] == NB)
        .expect("Hangzhou owes Ningbo");
    assert_eq!(
        (m(hz_nb["amount"].as_str().unwrap()), &hz_nb["count"]),
        (hz_owes_nb, &Value::from(3))
    );
    assert!(
        st["reserves"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["home_region"] == HZ && r["balance"] == "5000.00" && r["alarm"] == true)
    );
    let rows = csv_rows(&csv_path);
    assert_eq!(rows.len(), 3 + 3 + 3, "nets + instructions + gross");
    assert!(rows.iter().any(|r| {
        &r[1] == "net"
            && &r[2] == NB
            && m(&r[6]) == nb_net
            && m(&r[4]) == hz_owes_nb + fund(&wz_at_nb)
    }));
    assert!(
        rows.iter()
            .any(|r| &r[1] == "gross" && &r[2] == WZ && &r[3] == NB && &r[8] == "1")
    );

    // The table form carries the same checks for a reader.
    let table = run(argv(
        &["clearing", "--coordinator", &url],
        &["statement", &round],
    ))
    .await
    .expect_code(0);
    for needle in [
        "Σ net = 0.00 ✓",
        "3 transfers with netting instead of 2 bilateral",
        "owes ↓ / to →",
        "ALARM",
        "verified against the statement's content",
        "by record kind (claims, cancellations, audit deductions, reserves)",
        "-96.00 (1)",
        "5000.00 (1)",
    ] {
        assert!(
            table.stdout.contains(needle),
            "{needle:?} in:\n{}",
            table.stdout
        );
    }
    // In Chinese on request (--lang zh); the amounts are the same.
    let zh = run(argv(
        &["clearing", "--coordinator", &url],
        &["statement", &round, "--lang", "zh"],
    ))
    .await
    .expect_code(0);
    for needle in [
        "清算轮次结算单",
        "轧差净额",
        "划款指令",
        "审核扣款",
        "结算费用",
        "预付金（储备金）",
        "-96.00 (1)",
        "5000.00 (1)",
        "已按结算单内容核验",
    ] {
        assert!(zh.stdout.contains(needle), "{needle:?} in:\n{}", zh.stdout);
    }
    assert!(!zh.stdout.contains("audit deductions"), "{}", zh.stdout);

    // A transfer that matches no instruction is refused and changes nothing.
    let bad = run(argv(
        &["clearing", "--coordinator", &url],
        &[
            "record-transfer",
            &round,
            "--from",
            HZ,
            "--to",
            "330000",
            "--amount",
            "1.00",
            "--reference",
            "X",
        ],
    ))
    .await
    .expect_code(1);
    assert!(
        bad.stderr.contains("error: INVALID_ARGUMENT: ")
            && bad.stderr.contains("no payment instruction"),
        "{}",
        bad.stderr
    );
    let status = clearing(&url, &["status", &round]).await;
    assert_eq!(
        (
            &status["state"],
            &status["transfers_recorded"],
            &status["transfers_expected"]
        ),
        (&Value::from("CONFIRMED"), &Value::from(0), &Value::from(3))
    );
    // Confirmed: too late to abort.
    let abort = run(argv(
        &["clearing", "--coordinator", &url],
        &["abort", &round],
    ))
    .await
    .expect_code(1);
    assert!(
        abort.stderr.contains("error: FAILED_PRECONDITION: "),
        "{}",
        abort.stderr
    );

    let settled = pay_all(&url, &round, &st).await;
    assert_eq!(settled["state"], "SETTLED", "{settled}");
    assert_eq!(settled["cleared"], serde_json::json!([HZ, NB, WZ]));

    // A recorded transfer reads back with its history; recording it again with another
    // reference is refused with advice that works (a fresh request id does not: the
    // transfer is recorded once), and the correction keeps the old reference.
    let first = &st["instructions"][0];
    let (from, to, amount) = (
        first["from_region"].as_str().unwrap(),
        first["to_region"].as_str().unwrap(),
        first["amount"].as_str().unwrap(),
    );
    let recorded = clearing(&url, &["transfers", &round]).await;
    assert_eq!(recorded["transfers"].as_array().map(Vec::len), Some(3));
    // Listed in (from, to) order.
    let at = recorded["transfers"]
        .as_array()
        .unwrap()
        .iter()
        .position(|t| t["from_region"] == from && t["to_region"] == to)
        .expect("the first instruction's transfer");
    let t0 = &recorded["transfers"][at];
    assert_eq!(
        (&t0["from_region"], &t0["to_region"], &t0["amount"]),
        (&Value::from(from), &Value::from(to), &Value::from(amount))
    );
    assert_eq!(t0["reference"], format!("BANK-{round}-0"));
    assert_eq!(t0["history"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        t0["history"][0]["request_id"],
        format!("xfer:{round}:{from}:{to}")
    );
    for extra in [&[][..], &["--request-id", "xfer-fresh-id"][..]] {
        let mut line = vec![
            "record-transfer",
            &round,
            "--from",
            from,
            "--to",
            to,
            "--amount",
            amount,
            "--reference",
            "BANK-FIXED",
        ];
        line.extend_from_slice(extra);
        let again = run(argv(&["clearing", "--coordinator", &url], &line))
            .await
            .expect_code(1);
        assert!(
            again.stderr.contains("error: ALREADY_EXISTS: ")
                && again.stderr.contains("is already recorded")
                && again
                    .stderr
                    .contains(&format!("yidi clearing correct-transfer {round}"))
                && !again.stderr.contains("new request id"),
            "{}",
            again.stderr
        );
    }
    assert_eq!(clearing(&url, &["transfers", &round]).await, recorded);
    let corrected = clearing(
        &url,
        &[
            "correct-transfer",
            &round,
            "--from",
            from,
            "--to",
            to,
            "--reference",
            "BANK-FIXED",
            "--reason",
            "typo in the bank reference",
        ],
    )
    .await;
    let c0 = &corrected["transfers"][0];
    assert_eq!(
        (&c0["reference"], &c0["amount"]),
        (&Value::from("BANK-FIXED"), &Value::from(amount))
    );
    let history = c0["history"].as_array().unwrap();
    assert_eq!(
        history
            .iter()
            .map(|v| (
                v["version"].as_u64().unwrap(),
                v["reference"].as_str().unwrap(),
                v["reason"].as_str().unwrap()
            ))
            .collect::<Vec<_>>(),
        [
            (1, format!("BANK-{round}-0").as_str(), ""),
            (2, "BANK-FIXED", "typo in the bank reference")
        ]
    );
    assert!(
        history
            .iter()
            .all(|v| v["operator"] == "loopback (insecure mode)"
                && !v["at"].as_str().unwrap().is_empty()),
        "{corrected}"
    );
    let listed = clearing(&url, &["transfers", &round]).await;
    for i in 0..3 {
        let want = if i == at {
            c0
        } else {
            &recorded["transfers"][i]
        };
        assert_eq!(listed["transfers"][i], *want, "transfer {i}");
    }
    let table = run(argv(
        &["clearing", "--coordinator", &url],
        &["transfers", &round],
    ))
    .await
    .expect_code(0);
    assert!(
        table.stdout.contains("2 (current)") && table.stdout.contains("typo in the bank reference"),
        "{}",
        table.stdout
    );
    let rounds = admin(&nb, &["clearing", "list"]).await;
    assert_eq!(
        (
            &rounds["rounds"][0]["state"],
            &rounds["rounds"][0]["statement_digest"]
        ),
        (&Value::from("cleared"), &st["digest"])
    );
    let ledger = admin(&nb, &["ledger", "--period", &period]).await;
    assert!(
        ledger["positions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["cleared"].as_u64()
                == Some(
                    p["receivable_count"].as_u64().unwrap() + p["payable_count"].as_u64().unwrap()
                )),
        "{ledger}"
    );

    // A late claim of the cleared period goes into the next round, where Ningbo's
    // operator confirms by hand.
    let late = inpatient(&fed, HZ, NB, 4, "2000.00").await;
    assert_eq!(late.period, period);
    fed.stop(NB).await;
    fed.restart(NB, |c| c.clearing_auto_confirm = false).await;
    let nb = fed.node(NB).url();
    let next = yidi_common::period::Period::parse(&period, "p")
        .unwrap()
        .next()
        .to_string();
    // An earlier month than the one cleared is never opened again.
    let p = yidi_common::period::Period::parse(&period, "p").unwrap();
    let before = if p.month() == 1 {
        format!("{}-12", p.year() - 1)
    } else {
        format!("{}-{:02}", p.year(), p.month() - 1)
    };
    let again = run(argv(
        &["clearing", "--coordinator", &url],
        &["open", &before],
    ))
    .await
    .expect_code(1);
    assert!(
        again
            .stderr
            .contains(&format!("period {period} is already cleared")),
        "{}",
        again.stderr
    );
    // The next period is in the future until it begins: refused, early or not.
    let too_soon = run(argv(
        &["clearing", "--coordinator", &url],
        &["open", &next, "--early"],
    ))
    .await
    .expect_code(1);
    assert!(
        too_soon.stderr.contains("error: FAILED_PRECONDITION: ")
            && too_soon
                .stderr
                .contains(&format!("period {next} is in the future")),
        "{}",
        too_soon.stderr
    );
    // A month on: the coordinator's clock in the next period.
    let coord = coord.restart_in(fed.peers_file.clone(), &next).await;
    let url = format!("http://{}", coord.addr);
    let round2 = clearing(&url, &["open", &next, "--early"]).await["round_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let waiting = clearing(&url, &["run", &round2]).await;
    assert_eq!(
        (&waiting["state"], &waiting["missing"]),
        (&Value::from("STATEMENT_ISSUED"), &serde_json::json!([NB])),
        "{waiting}"
    );
    let st2 = clearing(&url, &["statement", &round2]).await;
    assert_eq!(net_of(&st2, NB), fund(&late));
    assert_eq!(net_of(&st2, HZ), -fund(&late));
    let digest = st2["digest"].as_str().unwrap();
    let confirmed = admin(
        &nb,
        &[
            "clearing", "confirm", &round2, "--digest", digest, "--note", "checked",
        ],
    )
    .await;
    assert_eq!(confirmed["round_id"], Value::from(round2.clone()));
    let ran = clearing(&url, &["run", &round2]).await;
    assert_eq!(ran["state"], "CONFIRMED", "{ran}");
    assert_eq!(pay_all(&url, &round2, &st2).await["state"], "SETTLED");
    let all = clearing(&url, &["status"]).await;
    let states: Vec<&str> = all["rounds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["SETTLED", "SETTLED"]);
    coord.stop().await;

    // A period without a record, at a coordinator of its own: aborted with a note that
    // names the flag; with --allow-empty (announced on stderr) it settles with no
    // transfers.
    let coord = TestCoordinator::start_at(
        dir.path().join("coordinator-empty"),
        fed.peers_file.clone(),
        mid_period(&next),
    )
    .await;
    let url = format!("http://{}", coord.addr);
    let empty = clearing(&url, &["open", "2026-01"]).await;
    let ran = clearing(&url, &["run", empty["round_id"].as_str().unwrap()]).await;
    assert_eq!(ran["state"], "ABORTED", "{ran}");
    assert!(
        ran["note"]
            .as_str()
            .unwrap()
            .contains("yidi clearing open 2026-01 --allow-empty"),
        "{ran}"
    );
    let opened = run(argv(
        &["clearing", "--coordinator", &url],
        &["open", "2026-01", "--allow-empty", "--json"],
    ))
    .await
    .expect_code(0);
    assert!(
        opened.stderr.contains(
            "allow-empty: if no node has a record of 2026-01, the round settles with no transfers"
        ),
        "{}",
        opened.stderr
    );
    let opened: Value = serde_json::from_str(&opened.stdout).unwrap();
    assert_eq!(opened["allow_empty"], true);
    let empty_round = opened["round_id"].as_str().unwrap().to_owned();
    let waiting = clearing(&url, &["run", &empty_round]).await;
    // Ningbo confirms by hand, an empty statement too.
    assert_eq!(waiting["state"], "STATEMENT_ISSUED", "{waiting}");
    let st3 = clearing(&url, &["statement", &empty_round]).await;
    assert_eq!(st3["instructions"], serde_json::json!([]));
    admin(
        &nb,
        &[
            "clearing",
            "confirm",
            &empty_round,
            "--digest",
            st3["digest"].as_str().unwrap(),
            "--note",
            "empty",
        ],
    )
    .await;
    let ran = clearing(&url, &["run", &empty_round]).await;
    assert_eq!(
        (&ran["state"], &ran["transfers_expected"], &ran["note"]),
        (
            &Value::from("SETTLED"),
            &Value::from(0),
            &Value::from("empty period settled with no transfers (opened with allow_empty)")
        ),
        "{ran}"
    );
    coord.stop().await;
}
