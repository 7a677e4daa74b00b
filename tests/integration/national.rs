//! Two-level clearing across provinces with real `yidi` processes (docs/national.md):
//! Zhejiang (Hangzhou 330100, Ningbo 330200) and Jiangsu (Nanjing 320100, Suzhou 320500)
//! nodes that list each other in one hand-kept peers file, a coordinator per province and
//! the national coordinator (000000) whose participants are the two provinces'
//! coordinators. Cross-province claims settle over the same PeerService path; the
//! provincial round clears only a province's own pairs; the national round clears
//! province against province through the provincial coordinators, waits while a node is
//! down and completes when it is back; every statement agrees to the fen.

use std::time::{Duration, Instant};

use serde_json::Value;
use yidi_common::proto::{
    self, FilingType as Ft, InsuranceType as It, PersonType as Pt,
    coordinator_service_client::CoordinatorServiceClient,
};
use yidi_tests::{
    fixtures::{
        Desk, VISIT_OPENED, fee_line, filing, id_number, inst, institution, person,
        publish_policies, standard_items,
    },
    harness::{TestNode, write_peers},
    process::{CoordinatorProcess, NodeProcess, free_port, yidi},
};

const HZ: &str = "330100";
const NB: &str = "330200";
const NJ: &str = "320100";
const SZ: &str = "320500";
/// Nanjing's level-3 hospital.
const NJ_H3: &str = "H32010001";

fn clearing_json(url: &str, args: &[&str]) -> Value {
    let mut full = vec!["clearing", "--coordinator", url, "--json"];
    full.extend_from_slice(args);
    let run = yidi(&full).expect_code(0);
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {}", run.stdout))
}

async fn coordinator(url: &str) -> CoordinatorServiceClient<tonic::transport::Channel> {
    CoordinatorServiceClient::connect(url.to_owned())
        .await
        .expect("connect coordinator")
}

fn nets(s: &proto::Statement) -> Vec<(String, String, String, String)> {
    s.nets
        .iter()
        .map(|n| {
            (
                n.region.clone(),
                n.receivable.clone(),
                n.payable.clone(),
                n.net.clone(),
            )
        })
        .collect()
}

fn pays(s: &proto::Statement) -> Vec<(String, String, String)> {
    s.instructions
        .iter()
        .map(|i| (i.from_region.clone(), i.to_region.clone(), i.amount.clone()))
        .collect()
}

fn row(r: &str, recv: &str, pay: &str, net: &str) -> (String, String, String, String) {
    (r.into(), recv.into(), pay.into(), net.into())
}

fn pay(from: &str, to: &str, amount: &str) -> (String, String, String) {
    (from.into(), to.into(), amount.into())
}

/// A filed in-service employee of `home` (account 0.00, so the fund share is simple).
async fn patient(home: &TestNode, seq: u16, treatment: &str) -> String {
    let id = person(
        home,
        &id_number(home.region.as_str(), "1975-05-05", seq),
        It::Employee,
        Pt::InService,
        "0.00",
        false,
    )
    .await;
    filing(
        home,
        &id,
        Ft::LongTermResident,
        treatment,
        &[],
        "2026-01-01",
    )
    .await;
    id
}

/// One outpatient bill of `amount` (item `code`) settled at `desk`; returns the
/// settlement and the Settle request id.
async fn settle(
    desk: &mut Desk,
    tag: &str,
    id: &str,
    home: &str,
    code: &str,
    amount: &str,
) -> proto::Settlement {
    let v = desk
        .open(
            &format!("ov-{tag}"),
            id,
            home,
            proto::VisitKind::Outpatient,
            VISIT_OPENED,
        )
        .await
        .unwrap();
    desk.fees(
        &format!("fees-{tag}"),
        &v.visit_id,
        vec![fee_line("1", code, "1", amount, amount)],
    )
    .await
    .unwrap();
    desk.settle(&format!("settle-{tag}"), &v.visit_id, false)
        .await
        .unwrap()
}

/// Runs a round at `url` until `done` holds for it (the coordinator's background loop
/// and `yidi clearing run` both advance it), within 60 s.
fn run_until(url: &str, round: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = clearing_json(url, &["run", round]);
        if done(&r) {
            return r;
        }
        assert!(Instant::now() < deadline, "round {round} never {what}: {r}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn two_provinces_clear_in_two_levels_and_agree_to_the_fen() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    // One hand-kept peers file: every node lists every other, across the boundary.
    let files = tempfile::tempdir().expect("temp dir");
    let mut nodes = NodeProcess::federation(&[HZ, NB, NJ, SZ], files.path());
    let remote = |i: usize, r: &str| TestNode::remote(nodes[i].addr(), r, nodes[i].data_dir());
    let (hz, nb, nj, sz) = (remote(0, HZ), remote(1, NB), remote(2, NJ), remote(3, SZ));

    // Participants: each province its nodes; the national level the provinces.
    let zj_port = free_port();
    let js_port = free_port();
    let nat_port = free_port();
    let zj_file = files.path().join("zhejiang.toml");
    let js_file = files.path().join("jiangsu.toml");
    let nat_file = files.path().join("national.toml");
    write_peers(&zj_file, &[(HZ.into(), hz.addr), (NB.into(), nb.addr)]);
    write_peers(&js_file, &[(NJ.into(), nj.addr), (SZ.into(), sz.addr)]);
    write_peers(
        &nat_file,
        &[
            ("330000".into(), ([127, 0, 0, 1], zj_port).into()),
            ("320000".into(), ([127, 0, 0, 1], js_port).into()),
        ],
    );
    let mut zj = CoordinatorProcess::start("330000", zj_port, &zj_file);
    let js = CoordinatorProcess::start("320000", js_port, &js_file);
    let mut nat = CoordinatorProcess::start("000000", nat_port, &nat_file);

    let (period, cancelled_id) = rt.block_on(async {
        use proto::{HospitalLevel as Hl, InstitutionKind as Ik};
        for n in [&hz, &nb, &nj, &sz] {
            publish_policies(n).await;
        }
        institution(&nb, inst::NB_H3, Ik::Hospital, Hl::HospitalLevel3).await;
        institution(&nj, NJ_H3, Ik::Hospital, Hl::HospitalLevel3).await;
        standard_items(&nb, "NB").await;
        standard_items(&nj, "NJ").await;

        // Cross-province: a Hangzhou employee in Nanjing (Hangzhou's policy: annual
        // deductible 1000.00, 70% at level 3 → 700.00 of 2000.00).
        let hz_in_nj = patient(&hz, 1, NJ).await;
        let mut nj_desk = Desk::at(&nj, NJ_H3).await;
        let a = settle(&mut nj_desk, "hz-nj", &hz_in_nj, HZ, "NJ-A", "2000.00").await;
        assert_eq!(a.state, "settled", "{a:?}");
        assert!(a.cross_province);
        assert_eq!(a.split.as_ref().unwrap().fund_pay_sumamt, "700.00");
        // Another, 1500.00 → 350.00, then reversed by 冲正 (ReverseRequest).
        let hz_cancel = patient(&hz, 2, NJ).await;
        let b = settle(&mut nj_desk, "hz-nj-2", &hz_cancel, HZ, "NJ-A", "1500.00").await;
        assert_eq!(b.split.as_ref().unwrap().fund_pay_sumamt, "350.00");
        let rev = nj_desk
            .reverse("rev-hz-nj-2", "settle-hz-nj-2")
            .await
            .unwrap();
        assert_eq!(rev.outcome, "reversed", "{rev:?}");
        // A Suzhou employee in Ningbo (Suzhou's policy: deductible 600.00, 60% at
        // level 3 → (3000.00 − 600.00) × 60% = 1440.00).
        let sz_in_nb = patient(&sz, 3, NB).await;
        let mut nb_desk = Desk::at(&nb, inst::NB_H3).await;
        let c = settle(&mut nb_desk, "sz-nb", &sz_in_nb, SZ, "NB-A", "3000.00").await;
        assert_eq!(c.state, "settled", "{c:?}");
        assert!(c.cross_province);
        assert_eq!(c.split.as_ref().unwrap().fund_pay_sumamt, "1440.00");
        // Within Zhejiang: a Hangzhou employee in Ningbo, 2000.00 → 700.00.
        let hz_in_nb = patient(&hz, 4, NB).await;
        let d = settle(&mut nb_desk, "hz-nb", &hz_in_nb, HZ, "NB-A", "2000.00").await;
        assert!(!d.cross_province);
        assert_eq!(d.split.as_ref().unwrap().fund_pay_sumamt, "700.00");
        for n in [&hz, &nb, &nj, &sz] {
            yidi_tests::fixtures::wait_outbox_drained(n, Duration::from_secs(30)).await;
        }
        (a.period.clone(), b.settlement_id.clone())
    });

    // The province boundary in the ledger: Nanjing's positions toward Hangzhou are
    // cross-province (claim, claim, reversal: 700.00).
    let ledger = nodes[2]
        .admin(&["--json", "ledger", "--period", &period])
        .expect_code(0);
    let ledger: Value = serde_json::from_str(&ledger.stdout).unwrap();
    assert_eq!(
        ledger["positions"],
        serde_json::json!([{
            "counterparty": HZ, "receivable_count": 3, "receivable_sum": "700.00",
            "payable_count": 0, "payable_sum": "0.00", "net": "700.00", "cleared": 0,
            "cross_province": true,
        }]),
        "cancelled {cancelled_id}"
    );

    // Zhejiang's provincial round: only its own pair (Hangzhou owes Ningbo 700.00).
    let opened = clearing_json(&zj.url, &["open", &period, "--early"]);
    let zr = opened["round_id"].as_str().unwrap().to_owned();
    assert_eq!(zr, format!("{period}-r1"));
    run_until(&zj.url, &zr, "confirmed", |r| r["state"] == "CONFIRMED");
    let zs = rt.block_on(async {
        coordinator(&zj.url)
            .await
            .get_statement(proto::RoundRequest {
                round_id: zr.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
    });
    assert_eq!(
        nets(&zs),
        vec![
            row(HZ, "0.00", "700.00", "-700.00"),
            row(NB, "700.00", "0.00", "700.00"),
        ]
    );

    // A record only Nanjing has (a delivery that reached one side), written straight
    // into its store: the national round must find it by drilling down the levels.
    {
        let db = rusqlite::Connection::open(nodes[2].data_dir().join("node.db")).unwrap();
        db.busy_timeout(Duration::from_secs(5)).unwrap();
        db.execute(
            "INSERT INTO ledger (entry_id, side, counterparty, period, kind, claim_id, amount_fen, created_at) \
             VALUES ('320100-S-INJECTED', 'receivable', ?1, ?2, 'claim', '320100-S-INJECTED', 12345, '2026-12-01T00:00:00+08:00')",
            [HZ, period.as_str()],
        )
        .unwrap();
    }

    // The national round, with Suzhou down: it waits, naming Jiangsu and Suzhou.
    nodes[3].kill();
    let opened = clearing_json(&nat.url, &["open", &period, "--early"]);
    let nr = opened["round_id"].as_str().unwrap().to_owned();
    assert_eq!(nr, format!("{period}-n1"));
    let waiting = clearing_json(&nat.url, &["run", &nr]);
    assert_eq!(waiting["state"], "COLLECTING", "{waiting}");
    assert_eq!(waiting["missing"], serde_json::json!(["320000"]));
    let note = waiting["note"].as_str().unwrap();
    assert!(note.contains("320000") && note.contains("320500"), "{note}");

    // Zhejiang's coordinator (which has its cities' reports) and the national one
    // crash (kill -9) and restart: both resume from their stores.
    zj.restart();
    nat.restart();
    let still = clearing_json(&nat.url, &["status", &nr]);
    assert_eq!(still["state"], "COLLECTING", "{still}");

    // Suzhou is back: the pair Jiangsu/Zhejiang disagrees; the drill-down goes through
    // the provinces to Nanjing's record, by entry id only.
    nodes[3].restart();
    run_until(&nat.url, &nr, "disputed", |r| r["state"] == "DISPUTED");
    let disputes = clearing_json(&nat.url, &["disputes", &nr]);
    assert_eq!(
        disputes["disputes"],
        serde_json::json!([{
            "creditor": "320000", "debtor": "330000",
            "creditor_sum": "823.45", "debtor_sum": "700.00",
            "only_at_creditor": ["320100-S-INJECTED"], "only_at_debtor": [],
            "amount_differs": [],
        }])
    );
    // Resolved: Nanjing takes the record out of the round; the round goes on to every
    // confirmation without it.
    clearing_json(&nat.url, &["resolve", &nr]);
    let confirmed = run_until(&nat.url, &nr, "confirmed", |r| r["state"] == "CONFIRMED");
    assert_eq!(
        confirmed["confirmed"],
        serde_json::json!(["320000", "330000"])
    );

    let (ns, zp, jp) = rt.block_on(async {
        let get = |url: String, id: String| async move {
            coordinator(&url)
                .await
                .get_statement(proto::RoundRequest {
                    round_id: id,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
        };
        (
            get(nat.url.clone(), nr.clone()).await,
            get(zj.url.clone(), nr.clone()).await,
            get(js.url.clone(), nr.clone()).await,
        )
    });
    // National: Zhejiang is owed 1440.00 by Jiangsu and owes it 700.00 (the reversed
    // claim nets to nothing): net 740.00 through the national clearing account.
    assert_eq!(ns.clearing_account, "000000");
    assert_eq!(
        nets(&ns),
        vec![
            row("320000", "700.00", "1440.00", "-740.00"),
            row("330000", "1440.00", "700.00", "740.00"),
        ]
    );
    assert_eq!(
        pays(&ns),
        vec![
            pay("320000", "000000", "740.00"),
            pay("000000", "330000", "740.00")
        ]
    );
    // Zhejiang's provincial statement of the national round: per city, through the
    // provincial account, summing to the province's national net (+740.00).
    assert_eq!(zp.clearing_account, "330000");
    assert_eq!(
        nets(&zp),
        vec![
            row("000000", "700.00", "1440.00", "-740.00"),
            row(HZ, "0.00", "700.00", "-700.00"),
            row(NB, "1440.00", "0.00", "1440.00"),
        ]
    );
    assert_eq!(
        pays(&zp),
        vec![
            pay("000000", "330000", "740.00"),
            pay(HZ, "330000", "700.00"),
            pay("330000", NB, "1440.00"),
        ]
    );
    // The gross rows name the counterparty province: the boundary on the statement.
    let gross: Vec<(String, String, String, u64)> = zp
        .gross
        .iter()
        .map(|g| {
            (
                g.debtor.clone(),
                g.creditor.clone(),
                g.amount.clone(),
                g.count,
            )
        })
        .collect();
    assert_eq!(
        gross,
        vec![
            (HZ.into(), "320000".into(), "700.00".into(), 3),
            ("320000".into(), NB.into(), "1440.00".into(), 1),
        ]
    );
    assert_eq!(
        nets(&jp),
        vec![
            row("000000", "1440.00", "700.00", "740.00"),
            row(NJ, "700.00", "0.00", "700.00"),
            row(SZ, "0.00", "1440.00", "-1440.00"),
        ]
    );
    assert_eq!(
        pays(&jp),
        vec![
            pay(SZ, "320000", "1440.00"),
            pay("320000", "000000", "740.00"),
            pay("320000", NJ, "700.00"),
        ]
    );

    // Transfers recorded; Ningbo down while the round is marked cleared: SETTLED waits
    // on Zhejiang, then completes once Ningbo is back.
    nodes[1].kill();
    for (from, to) in [("320000", "000000"), ("000000", "330000")] {
        clearing_json(
            &nat.url,
            &[
                "record-transfer",
                &nr,
                "--from",
                from,
                "--to",
                to,
                "--amount",
                "740.00",
                "--reference",
                &format!("BANK-{from}-{to}"),
            ],
        );
    }
    let settled = clearing_json(&nat.url, &["run", &nr]);
    assert_eq!(settled["state"], "SETTLED", "{settled}");
    assert_eq!(settled["missing"], serde_json::json!(["330000"]));
    nodes[1].restart();
    let cleared = run_until(&nat.url, &nr, "cleared everywhere", |r| {
        r["missing"] == serde_json::json!([])
    });
    assert_eq!(cleared["cleared"], serde_json::json!(["320000", "330000"]));

    // Every node has the national round cleared; Hangzhou's provincial round is apart.
    for (i, region, records) in [(0, HZ, 3), (1, NB, 1), (2, NJ, 3), (3, SZ, 1)] {
        let rounds = nodes[i]
            .admin(&["--json", "clearing", "list"])
            .expect_code(0);
        let rounds: Value = serde_json::from_str(&rounds.stdout).unwrap();
        let national = rounds["rounds"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["round_id"] == nr.as_str())
            .unwrap_or_else(|| panic!("{region}: {rounds}"));
        assert_eq!(national["state"], "cleared", "{region}: {national}");
        assert_eq!(national["records"], records, "{region}: {national}");
    }
    drop((zj, js, nat));
}

/// The province's ClearingParticipant refuses bad input with the field named and
/// changes nothing: a counterparty that is not a province, an unknown side, a round the
/// province has not collected, a period that differs from the round's.
#[tokio::test]
async fn a_province_refuses_bad_national_calls_and_changes_nothing() {
    use yidi_common::proto::clearing_participant_client::ClearingParticipantClient;
    let dir = tempfile::tempdir().unwrap();
    let participants = dir.path().join("participants.toml");
    // One node that never answers: the province cannot collect from it.
    write_peers(
        &participants,
        &[(HZ.into(), ([127, 0, 0, 1], free_port()).into())],
    );
    let coord =
        yidi_tests::harness::TestCoordinator::start(dir.path().join("zj"), participants).await;
    let mut c = ClearingParticipantClient::connect(format!("http://{}", coord.addr))
        .await
        .unwrap();
    let list = |counterparty: &str, side: &str| proto::ListClaimIdsRequest {
        round_id: "2026-12-n1".into(),
        counterparty: counterparty.into(),
        side: side.into(),
        after: String::new(),
        limit: 0,
    };
    let e = c
        .list_claim_ids(list("320100", "receivable"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        e.message(),
        "invalid counterparty: 320100 is not a province code like 320000: a province's counterparties are provinces"
    );
    let e = c.list_claim_ids(list("320000", "owed")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(
        e.message()
            .starts_with("invalid side: expected receivable or payable"),
        "{}",
        e.message()
    );
    let e = c
        .list_claim_ids(list("320000", "payable"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    assert_eq!(
        e.message(),
        "national round 2026-12-n1 has not collected positions at this province"
    );
    let e = c
        .confirm_statement(proto::StatementRequest {
            request_id: "c1".into(),
            statement: Some(proto::Statement {
                round_id: "2026-12-n1".into(),
                period: "2026-12".into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);

    // A report while its node is down: UNAVAILABLE naming the city; the round is
    // recorded as collecting, and a report of another period is refused.
    let report = |period: &str| proto::ReportPositionsRequest {
        round_id: "2026-12-n1".into(),
        period: period.into(),
        scope: String::new(),
    };
    let e = c.report_positions(report("2026-12")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable);
    assert!(
        e.message().starts_with("waiting for 330100 ("),
        "{}",
        e.message()
    );
    let e = c.report_positions(report("2026-11")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        e.message(),
        "invalid period: national round 2026-12-n1 is for 2026-12"
    );
    let e = c
        .confirm_statement(proto::StatementRequest {
            request_id: "c2".into(),
            statement: Some(proto::Statement {
                round_id: "2026-12-n1".into(),
                period: "2026-12".into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    assert!(
        e.message().contains("is still collecting here"),
        "{}",
        e.message()
    );
    coord.stop().await;
    let db = rusqlite::Connection::open(dir.path().join("zj").join("coordinator.db")).unwrap();
    let rows: Vec<(String, String)> = db
        .prepare("SELECT round_id, state FROM national_rounds")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(rows, vec![("2026-12-n1".into(), "collecting".into())]);
    let reports: i64 = db
        .query_row("SELECT COUNT(*) FROM national_reports", [], |r| r.get(0))
        .unwrap();
    assert_eq!(reports, 0);
}
