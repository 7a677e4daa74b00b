//! Bad input and bad clocks cannot move money (issues #18 and #25), on the three
//! in-process cities of the settlement tests: dates in the future are refused at the
//! counter, in the admin API and at the home node; a node whose clock is off is refused
//! by its peers; a cancellation reaches the ledger at once, so that no clearing round
//! pays a cancelled claim; a fee line of nothing is refused unless the catalogue marks
//! the item free of charge; an in-doubt claim whose home node is down is settled under
//! the offline rule; and a home node that cannot store says so.

use std::sync::{Arc, atomic::Ordering};

use tonic::Code;
use yidi_common::proto::{self, HospitalLevel as Hl, VisitKind as Vk};
use yidi_node::context::TestHooks;
use yidi_tests::{
    fixtures::{
        Desk, VISIT_OPENED as ADMITTED, acc_tuple, account_balance, accumulators, billed_visit,
        fee_line as line, filed_employee, id_number, inst, outbox, period_digest, three_cities,
        three_cities_hooked_at, wait_outbox_drained,
    },
    harness::{TestCoordinator, TestNode},
};

const HZ: &str = "330100";
const NB: &str = "330200";
const WZ: &str = "330300";

/// Asserts the code of an error and that its message holds every part.
#[track_caller]
fn refused(e: &tonic::Status, code: Code, parts: &[&str]) {
    assert_eq!(e.code(), code, "{e:?}");
    for p in parts {
        assert!(e.message().contains(p), "{p:?} not in {:?}", e.message());
    }
}

/// An import that inserted `inserted` rows and refused exactly one: row `row`, for
/// `field`.
#[track_caller]
fn one_row_refused(imported: &proto::ImportResult, inserted: u64, row: u64, field: &str) {
    assert_eq!(
        (imported.inserted, imported.errors.len()),
        (inserted, 1),
        "{imported:?}"
    );
    assert_eq!(
        (imported.errors[0].row, imported.errors[0].field.as_str()),
        (row, field)
    );
}

/// A Hangzhou person's accumulators untouched: version 0, nothing paid.
async fn untouched(hz: &TestNode, id: &str) {
    let acc = accumulators(hz, id, NB, inst::NB_H3).await;
    assert_eq!(
        acc_tuple(&acc),
        ("0.00", "0.00", "0.00", "0.00", "0.00", 0, "0.00", 0)
    );
}

/// A CommitClaim as Ningbo would send it for a one-line bill of 100.00.
fn commit_req(
    claim: &str,
    id: &str,
    visit_date: &str,
    settled_at: &str,
) -> proto::CommitClaimRequest {
    proto::CommitClaimRequest {
        request_id: claim.into(),
        claim_id: claim.into(),
        treatment_region: NB.into(),
        id_number: id.into(),
        visit: Some(proto::ClaimVisit {
            visit_id: format!("{NB}-V-99999999"),
            institution_code: inst::NB_H3.into(),
            level: Hl::HospitalLevel3 as i32,
            visit_kind: Vk::Outpatient as i32,
            visit_date: visit_date.into(),
            lines: vec![proto::ClassifiedLine {
                line: Some(line("1", "NB-A", "1", "100.00", "100.00")),
                class: proto::CatalogueClass::A as i32,
                first_selfpay_ratio: "0.00".into(),
                price_cap: String::new(),
                item_name: "A".into(),
            }],
            use_account: false,
        }),
        split: None,
        accumulator_version: 0,
        policy_version: 1,
        settled_at: settled_at.into(),
        provisional: true,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dates_in_the_future_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let fed = three_cities(dir.path(), |_, _| {}).await;
    let (hz, nb) = (fed.node(HZ), fed.node(NB));
    let id = filed_employee(hz, "1981-01-01", 70, "1000.00", NB).await;
    let mut desk = Desk::at(nb, inst::NB_H3).await;

    // Admission in 2099, and an hour from now (beyond the 300 s bound).
    let soon = (chrono::Utc::now() + chrono::Duration::hours(1))
        .with_timezone(&yidi_common::period::cst())
        .to_rfc3339();
    for (rid, at) in [
        ("ov-2099", "2099-01-01T09:00:00+08:00"),
        ("ov-soon", soon.as_str()),
    ] {
        let e = desk
            .open(rid, &id, HZ, Vk::Inpatient, at)
            .await
            .unwrap_err();
        refused(&e, Code::InvalidArgument, &["admitted_at", "in the future"]);
    }
    // Nothing was opened: the first visit gets the first number.
    let v = desk
        .open("ov-1", &id, HZ, Vk::Inpatient, ADMITTED)
        .await
        .unwrap();
    assert_eq!(v.visit_id, format!("{NB}-V-00000001"));

    // A fee line served in 2099: refused, the visit has no lines.
    let mut future = line("1", "NB-A", "1", "100.00", "100.00");
    future.service_date = "2099-01-01".into();
    let e = desk
        .fees("fees-2099", &v.visit_id, vec![future])
        .await
        .unwrap_err();
    refused(
        &e,
        Code::InvalidArgument,
        &["lines[0].service_date", "2099-01-01", "in the future"],
    );
    let e = desk.pre_settle(&v.visit_id, false).await.unwrap_err();
    refused(&e, Code::FailedPrecondition, &["no fee lines"]);

    // Discharge in 2099: refused, the visit stays open (and cannot be settled).
    let e = desk
        .client
        .close_visit(proto::CloseVisitRequest {
            request_id: "dis-2099".into(),
            institution_code: desk.inst.clone(),
            visit_id: v.visit_id.clone(),
            discharged_at: "2099-01-02T10:00:00+08:00".into(),
        })
        .await
        .unwrap_err();
    refused(
        &e,
        Code::InvalidArgument,
        &["discharged_at", "in the future"],
    );
    desk.fees(
        "fees-1",
        &v.visit_id,
        vec![line("1", "NB-A", "1", "100.00", "100.00")],
    )
    .await
    .unwrap();
    let e = desk
        .settle("settle-1", &v.visit_id, false)
        .await
        .unwrap_err();
    refused(&e, Code::FailedPrecondition, &["must be discharged"]);
    let closed = desk.discharge("dis-1", &v.visit_id).await.unwrap();
    assert_eq!(closed.closed_at, "2026-03-20T10:00:00.000+08:00");

    // The home node, asked directly: a claim settled in 2099, or for care in 2099
    // (beyond its clock plus the skew), is refused and no claim or accumulator of 2099 exists.
    let mut peer = hz.peer().await;
    let e = peer
        .commit_claim(commit_req(
            &format!("{NB}-S-9000000001"),
            &id,
            "2026-03-10",
            "2099-01-01T09:00:00+08:00",
        ))
        .await
        .unwrap_err();
    refused(&e, Code::InvalidArgument, &["settled_at", "in the future"]);
    let e = peer
        .commit_claim(commit_req(
            &format!("{NB}-S-9000000002"),
            &id,
            "2099-01-01",
            &yidi_common::period::now_rfc3339(),
        ))
        .await
        .unwrap_err();
    refused(
        &e,
        Code::InvalidArgument,
        &["visit.visit_date", "2099-01-01"],
    );
    for n in 1..=2 {
        let st = peer
            .claim_status(proto::ClaimStatusRequest {
                claim_id: format!("{NB}-S-900000000{n}"),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(st.state, "unknown");
    }
    let e2099 = peer
        .check_eligibility(proto::CheckEligibilityRequest {
            settle_date: String::new(),
            id_number: id.clone(),
            institution_code: inst::NB_H3.into(),
            level: Hl::HospitalLevel3 as i32,
            visit_kind: Vk::Outpatient as i32,
            visit_date: "2099-01-01".into(),
            treatment_region: NB.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(e2099.accumulators.unwrap().version, 0);
    untouched(hz, &id).await;
    assert_eq!(account_balance(hz, &id).await, "1000.00");

    // The admin API and the CSV import: an enrolment or a filing starting in 2099.
    let mut admin = hz.admin().await;
    let newcomer = id_number(HZ, "1990-02-02", 71);
    let fields = proto::PersonFields {
        name: "未来".into(),
        card_no: String::new(),
        insurance_type: proto::InsuranceType::Employee as i32,
        person_type: proto::PersonType::InService as i32,
        civil_servant: false,
        status: proto::PersonStatus::Active as i32,
        account_balance: "0.00".into(),
        enrolled_since: "2099-01-01".into(),
    };
    let e = admin
        .create_person(proto::CreatePersonRequest {
            request_id: "p-2099".into(),
            id_number: newcomer.clone(),
            fields: Some(fields),
        })
        .await
        .unwrap_err();
    refused(
        &e,
        Code::InvalidArgument,
        &["enrolled_since", "2099-01-01", "in the future"],
    );
    let imported = admin
        .import_persons(proto::ImportPersonsRequest {
            request_id: "import-2099".into(),
            rows: vec![proto::PersonRow {
                row: 2,
                id_number: newcomer.clone(),
                name: "未来".into(),
                card_no: String::new(),
                insurance_type: "employee".into(),
                person_type: "in_service".into(),
                civil_servant: String::new(),
                status: String::new(),
                account_balance: "0.00".into(),
                enrolled_since: "2099-01-01".into(),
            }],
        })
        .await
        .unwrap()
        .into_inner();
    one_row_refused(&imported, 0, 2, "enrolled_since");
    let e = admin
        .get_person(proto::GetPersonRequest {
            id_number: newcomer,
            card_no: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let e = admin
        .apply_filing(proto::ApplyFilingRequest {
            request_id: "f-2099".into(),
            id_number: id.clone(),
            filing_type: proto::FilingType::Referral as i32,
            treatment_region: WZ.into(),
            institutions: Vec::new(),
            valid_from: "2099-01-01".into(),
            valid_to: String::new(),
            note: String::new(),
        })
        .await
        .unwrap_err();
    refused(
        &e,
        Code::InvalidArgument,
        &["valid_from", "2099-01-01", "in the future"],
    );
    let filings = admin
        .list_filings(proto::ListFilingsRequest {
            id_number: id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .filings;
    assert_eq!(filings.len(), 1, "only the filing for Ningbo: {filings:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_clock_is_off_is_refused_by_its_peers() {
    let dir = tempfile::tempdir().unwrap();
    let hooks = TestHooks::default();
    let offset = Arc::clone(&hooks.clock_offset_ms);
    let prebound = yidi_node::prebound::Prebound::default();
    let (metrics, nb_metrics) = (prebound.loopback(), prebound.loopback());
    let fed = three_cities(dir.path(), move |r, c| match r {
        NB => {
            c.hooks = hooks.clone();
            c.metrics_listen = Some(nb_metrics);
            c.prebound = prebound.clone();
        }
        HZ => {
            c.metrics_listen = Some(metrics);
            c.prebound = prebound.clone();
        }
        _ => {}
    })
    .await;
    let (hz, nb) = (fed.node(HZ), fed.node(NB));
    let id = filed_employee(hz, "1982-02-02", 72, "1000.00", NB).await;
    let mut desk = Desk::at(nb, inst::NB_H3).await;
    let v = billed_visit(&mut desk, "1", &id, HZ, "2000.00").await;
    desk.pre_settle(&v.visit_id, true).await.unwrap();

    // Ningbo's clock runs 40 days ahead: Hangzhou refuses its calls, and nothing is
    // settled on either side.
    offset.store(40 * 86_400_000, Ordering::SeqCst);
    let e = desk
        .settle("settle-1", &v.visit_id, true)
        .await
        .unwrap_err();
    // UNAVAILABLE, not FAILED_PRECONDITION: no hospital can act on it, and the same
    // request passes once the agency has fixed the clock.
    refused(
        &e,
        Code::Unavailable,
        &[
            "home region 330100",
            "clock of the calling node",
            "ahead of",
            "refused beyond 300 s",
            "the agency must fix the clock",
            "retry later",
        ],
    );
    untouched(hz, &id).await;
    assert_eq!(account_balance(hz, &id).await, "1000.00");
    assert!(desk.list().await.is_empty());
    let body = yidi_node::metrics::scrape(metrics).await.unwrap();
    let refusals: u64 = body
        .lines()
        .filter(|l| {
            l.starts_with("yidi_peer_clock_refusals_total{") && l.contains(r#"peer="loopback""#)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!(refusals >= 1, "{body}");
    assert!(
        body.lines()
            .any(|l| l.starts_with("yidi_peer_clock_skew_milliseconds{")
                && l.rsplit(' ')
                    .next()
                    .and_then(|v| v.parse::<i64>().ok())
                    .is_some_and(|s| s > 3_400_000_000)),
        "{body}"
    );

    // Ningbo counts the refusal among its failed calls to Hangzhou.
    let nb_body = yidi_node::metrics::scrape(nb_metrics).await.unwrap();
    let failed = ["CheckEligibility", "CommitClaim"]
        .iter()
        .map(|m| yidi_tests::fixtures::peer_calls(&nb_body, HZ, m, Some("failed_precondition")))
        .sum::<u64>();
    assert!(failed >= 1, "{nb_body}");

    // The clock corrected, the same visit settles, dated today.
    offset.store(0, Ordering::SeqCst);
    let s = desk.settle("settle-2", &v.visit_id, true).await.unwrap();
    assert_eq!(s.state, "settled");
    assert_eq!(s.split.unwrap().fund_pay_sumamt, "700.00");
    assert_eq!(
        s.period,
        yidi_common::period::Period::of(chrono::Utc::now()).to_string()
    );
}

/// An outpatient visit at Wenzhou's level-2 hospital of `id` (insured in Ningbo),
/// billed one line of `amount` of WZ-A and pre-settled (Ningbo's policy cached).
async fn wz_visit(desk: &mut Desk, tag: &str, id: &str, amount: &str) -> proto::Visit {
    let v = desk
        .open(&format!("ov-{tag}"), id, NB, Vk::Outpatient, ADMITTED)
        .await
        .unwrap();
    desk.fees(
        &format!("fees-{tag}"),
        &v.visit_id,
        vec![line("1", "WZ-A", "1", amount, amount)],
    )
    .await
    .unwrap();
    desk.pre_settle(&v.visit_id, false).await.unwrap();
    v
}

fn fen(s: &str) -> i64 {
    let d = yidi_common::money::parse(s, "amount", yidi_common::money::Sign::Any).unwrap();
    yidi_common::money::to_fen(d)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_round_pays_a_claim_cancelled_while_its_home_is_unreachable() {
    let dir = tempfile::tempdir().unwrap();
    let mut fed = three_cities(dir.path(), |_, _| {}).await;
    let id = filed_employee(fed.node(NB), "1984-04-04", 73, "0.00", WZ).await;
    let mut desk = Desk::at(fed.node(WZ), inst::WZ_H2).await;
    let v1 = wz_visit(&mut desk, "1", &id, "3000.00").await;
    let v2 = wz_visit(&mut desk, "2", &id, "1500.00").await;
    let s1 = desk.settle("settle-1", &v1.visit_id, false).await.unwrap();
    assert_eq!(s1.state, "settled");
    let period = s1.period.clone();

    // Ningbo goes away: a provisional claim, and the settled one is cancelled.
    fed.stop(NB).await;
    let s2 = desk.settle("settle-2", &v2.visit_id, false).await.unwrap();
    assert_eq!(s2.state, "provisional");
    let c1 = desk
        .cancel("cancel-1", &s1.settlement_id, "")
        .await
        .unwrap();
    assert_eq!(c1.state, "reversal");
    let (f1, f2) = (
        fen(&s1.split.as_ref().unwrap().fund_pay_sumamt),
        fen(&s2.split.as_ref().unwrap().fund_pay_sumamt),
    );
    assert!(f1 > 0 && f2 > 0, "{s1:?} {s2:?}");
    assert_eq!(
        fen(&c1.split.as_ref().unwrap().fund_pay_sumamt),
        -f1,
        "{c1:?}"
    );
    // Both are in Wenzhou's ledger at once, written with their outbox items: the
    // claim, its reversal and the provisional claim.
    let wz = fed.node(WZ);
    let recv = period_digest(wz, &period, NB, "receivable").await;
    let mut ids = vec![
        s1.settlement_id.clone(),
        s2.settlement_id.clone(),
        c1.settlement_id.clone(),
    ];
    ids.sort();
    assert_eq!((recv.count, fen(&recv.sum), &recv.claim_ids), (3, f2, &ids));

    // Ningbo comes back while Wenzhou's outbox waits out its backoff (the next attempt
    // at least 8 s away): a round run now must not pay the cancelled claim.
    let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let ob = outbox(wz).await;
        if ob.items.first().is_some_and(|i| i.attempts >= 4) {
            assert_eq!(ob.depth, 2, "{ob:?}");
            break;
        }
        assert!(std::time::Instant::now() < until, "never attempted: {ob:?}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    fed.restart(NB, |_| {}).await;
    let coord =
        TestCoordinator::start(dir.path().join("coordinator"), fed.peers_file.clone()).await;
    let mut c = coord.client().await;
    let round = c
        .open_round(proto::OpenRoundRequest {
            request_id: "open-1".into(),
            period: period.clone(),
            early: true,
            allow_empty: false,
        })
        .await
        .unwrap()
        .into_inner();
    let rr = proto::RoundRequest {
        request_id: String::new(),
        round_id: round.round_id.clone(),
    };
    let r = c.run_round(rr.clone()).await.unwrap().into_inner();
    assert_eq!(r.state, "DISPUTED", "{r:?}");
    let disputes = c.list_disputes(rr).await.unwrap().into_inner().disputes;
    assert_eq!(disputes.len(), 1, "{disputes:?}");
    let d = &disputes[0];
    let mut only = vec![s2.settlement_id.clone(), c1.settlement_id.clone()];
    only.sort();
    let mut got = d.only_at_creditor.clone();
    got.sort();
    assert_eq!(
        (
            d.creditor.as_str(),
            d.debtor.as_str(),
            got,
            d.only_at_debtor.len()
        ),
        (WZ, NB, only, 0)
    );
    assert_eq!((fen(&d.creditor_sum), fen(&d.debtor_sum)), (f2, f1));

    // Once delivered, both ledgers hold the same three records.
    let (nb, wz) = (fed.node(NB), fed.node(WZ));
    wait_outbox_drained(wz, std::time::Duration::from_secs(30)).await;
    let recv = period_digest(wz, &period, NB, "receivable").await;
    let pay = period_digest(nb, &period, WZ, "payable").await;
    assert_eq!(
        (recv.count, &recv.sum, &recv.digest, &recv.claim_ids),
        (pay.count, &pay.sum, &pay.digest, &pay.claim_ids)
    );
    // The provisional claim as Ningbo computed it on its own accumulators (which then
    // still held the first claim): Wenzhou's entry carries Ningbo's amount.
    let confirmed = desk.get(&s2.settlement_id).await.unwrap();
    assert_eq!(confirmed.state, "settled");
    let f2_home = fen(&confirmed.split.as_ref().unwrap().fund_pay_sumamt);
    assert_eq!((recv.count, fen(&recv.sum)), (3, f2_home));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fee_line_of_nothing_needs_an_item_free_of_charge() {
    let dir = tempfile::tempdir().unwrap();
    let fed = three_cities(dir.path(), |_, _| {}).await;
    let (hz, nb) = (fed.node(HZ), fed.node(NB));
    let id = filed_employee(hz, "1985-05-05", 74, "0.00", NB).await;
    let mut desk = Desk::at(nb, inst::NB_H3).await;
    let v = desk
        .open("ov-1", &id, HZ, Vk::Outpatient, ADMITTED)
        .await
        .unwrap();
    // 0.00 of a charged item, also as a quantity too small to cost a fen: refused,
    // and nothing of the upload is kept.
    for (i, (qty, price)) in [("1", "0.00"), ("0.001", "1.00")].into_iter().enumerate() {
        let e = desk
            .fees(
                &format!("fees-zero-{i}"),
                &v.visit_id,
                vec![
                    line("1", "NB-A", "1", "100.00", "100.00"),
                    line("2", "NB-A", qty, price, "0.00"),
                ],
            )
            .await
            .unwrap_err();
        refused(
            &e,
            Code::InvalidArgument,
            &["lines[1].amount", "0.00 for NB-A", "free of charge"],
        );
    }
    let e = desk.pre_settle(&v.visit_id, false).await.unwrap_err();
    refused(&e, Code::FailedPrecondition, &["no fee lines"]);

    // An item the catalogue marks free of charge may be billed at 0.00.
    let mut admin = nb.admin().await;
    let free = admin
        .upsert_catalogue_item(proto::UpsertCatalogueItemRequest {
            request_id: "item-free".into(),
            item: Some(proto::CatalogueItem {
                code: "NB-FREE".into(),
                name: "免费健康宣教".into(),
                category: proto::ItemCategory::Service as i32,
                class: proto::CatalogueClass::A as i32,
                first_selfpay_ratio: "0".into(),
                price_cap: String::new(),
                unit: "次".into(),
                valid_from: "2024-01-01".into(),
                valid_to: String::new(),
                free_of_charge: true,
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(free.free_of_charge);
    let fees = desk
        .fees(
            "fees-1",
            &v.visit_id,
            vec![
                line("1", "NB-A", "1", "100.00", "100.00"),
                line("2", "NB-FREE", "1", "0.00", "0.00"),
            ],
        )
        .await
        .unwrap();
    assert_eq!((fees.lines.len(), fees.total.as_str()), (2, "100.00"));
    let pre = desk.pre_settle(&v.visit_id, false).await.unwrap();
    assert_eq!(pre.split.unwrap().medfee_sumamt, "100.00");

    // The CSV column: optional, a boolean; anything else is the row's error.
    let imported = admin
        .import_catalogue(proto::ImportCatalogueRequest {
            request_id: "ci-free".into(),
            rows: vec![
                proto::CatalogueRow {
                    row: 2,
                    code: "NB-FREE2".into(),
                    name: "免费测血压".into(),
                    category: "service".into(),
                    class: "A".into(),
                    valid_from: "2024-01-01".into(),
                    free_of_charge: "true".into(),
                    ..Default::default()
                },
                proto::CatalogueRow {
                    row: 3,
                    code: "NB-FREE3".into(),
                    name: "x".into(),
                    category: "service".into(),
                    class: "A".into(),
                    valid_from: "2024-01-01".into(),
                    free_of_charge: "maybe".into(),
                    ..Default::default()
                },
            ],
        })
        .await
        .unwrap()
        .into_inner();
    one_row_refused(&imported, 1, 3, "free_of_charge");
    let got = admin
        .get_catalogue_item(proto::GetCatalogueItemRequest {
            code: "NB-FREE2".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(got.free_of_charge);
    let plain = admin
        .get_catalogue_item(proto::GetCatalogueItemRequest {
            code: "NB-A".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!plain.free_of_charge);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_doubt_claim_whose_home_is_down_follows_the_offline_rule() {
    let dir = tempfile::tempdir().unwrap();
    let (mut fed, hooks) = three_cities_hooked_at(dir.path(), WZ).await;
    let crash = hooks.crash_after_home_commit;
    // Ningbo settles provisionally when it cannot be reached.
    let id = filed_employee(fed.node(NB), "1986-06-06", 75, "0.00", WZ).await;
    let mut desk = Desk::at(fed.node(WZ), inst::WZ_H2).await;
    let v = wz_visit(&mut desk, "1", &id, "2000.00").await;
    let pre = desk.pre_settle(&v.visit_id, false).await.unwrap();

    // Ningbo commits the claim, Wenzhou crashes before recording it, and Ningbo goes
    // away before Wenzhou is back.
    crash.store(true, Ordering::SeqCst);
    let e = desk
        .settle("settle-1", &v.visit_id, false)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    crash.store(false, Ordering::SeqCst);
    fed.stop(NB).await;
    fed.stop(WZ).await;
    fed.restart(WZ, |_| {}).await;
    let mut desk = Desk::at(fed.node(WZ), inst::WZ_H2).await;

    // The repeated request is answered under Ningbo's offline rule: provisional, the
    // split the pre-settle showed, under the intent's own claim id. Wenzhou's start-up
    // recovery may be resolving the same intent at that moment: the desk is then told
    // ABORTED (still in progress) and repeats, as the integrator guide says.
    let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let s = loop {
        match desk.settle("settle-1", &v.visit_id, false).await {
            Err(e) if e.code() == Code::Aborted && std::time::Instant::now() < until => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            r => break r.unwrap(),
        }
    };
    assert_eq!(s.state, "provisional", "{s:?}");
    assert!(s.note.contains("in doubt"), "{}", s.note);
    assert_eq!(
        yidi_tests::fixtures::split_amounts(s.split.as_ref().unwrap()),
        yidi_tests::fixtures::split_amounts(pre.split.as_ref().unwrap())
    );
    assert_eq!(
        desk.settle("settle-1", &v.visit_id, false).await.unwrap(),
        s
    );
    let ob = outbox(fed.node(WZ)).await;
    assert_eq!(
        (
            ob.depth,
            ob.items[0].kind.as_str(),
            ob.items[0].ref_id.as_str()
        ),
        (1, "commit", s.settlement_id.as_str())
    );

    // Ningbo back: its committed claim is the one confirmed; exactly one claim at home.
    fed.restart(NB, |_| {}).await;
    let (nb, wz) = (fed.node(NB), fed.node(WZ));
    wait_outbox_drained(wz, std::time::Duration::from_secs(30)).await;
    let done = desk.get(&s.settlement_id).await.unwrap();
    assert_eq!(done.state, "settled");
    assert_eq!(
        yidi_tests::fixtures::split_amounts(done.split.as_ref().unwrap()),
        yidi_tests::fixtures::split_amounts(pre.split.as_ref().unwrap())
    );
    let acc = accumulators(nb, &id, WZ, inst::WZ_H2).await;
    assert_eq!(acc.version, 1, "{acc:?}");
    let recv = period_digest(wz, &s.period, NB, "receivable").await;
    let pay = period_digest(nb, &s.period, WZ, "payable").await;
    assert_eq!(
        (recv.count, &recv.sum, &recv.digest, &recv.claim_ids),
        (pay.count, &pay.sum, &pay.digest, &pay.claim_ids)
    );
    assert_eq!(
        (recv.count, recv.sum.as_str()),
        (1, pre.split.as_ref().unwrap().fund_pay_sumamt.as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_doubt_claim_whose_abandonment_went_unanswered_stays_pending() {
    let dir = tempfile::tempdir().unwrap();
    let (fed, hooks) = three_cities_hooked_at(dir.path(), NB).await;
    let unanswered = hooks.home_commit_unanswered;
    let lost = hooks.abandon_answer_lost;
    // Ningbo settles provisionally when it cannot be reached.
    let (nb, wz) = (fed.node(NB), fed.node(WZ));
    let id = filed_employee(nb, "1985-05-05", 74, "0.00", WZ).await;
    let mut desk = Desk::at(wz, inst::WZ_H2).await;
    let v = wz_visit(&mut desk, "1", &id, "2000.00").await;
    let pre = desk.pre_settle(&v.visit_id, false).await.unwrap();

    // The commit goes unanswered; Ningbo has no such claim, so Wenzhou abandons it, and
    // the abandonment's answer is lost though Ningbo recorded it. Not settled offline
    // under that claim id (Ningbo would refuse to commit it for good): still in doubt.
    unanswered.store(true, Ordering::SeqCst);
    lost.store(true, Ordering::SeqCst);
    let e = desk
        .settle("settle-1", &v.visit_id, false)
        .await
        .unwrap_err();
    refused(
        &e,
        Code::Unavailable,
        &[
            "the home node did not answer the abandonment",
            "same request_id",
        ],
    );
    assert!(desk.list().await.is_empty());
    assert_eq!(outbox(wz).await.depth, 0);
    assert_eq!(accumulators(nb, &id, WZ, inst::WZ_H2).await.version, 0);
    // The repeat reads Ningbo's status: the claim was abandoned there (a provisional
    // settlement under its id could never have been committed), so nothing was settled.
    let e = desk
        .settle("settle-1", &v.visit_id, false)
        .await
        .unwrap_err();
    refused(&e, Code::Aborted, &["not settled", "settle afresh"]);
    assert!(desk.list().await.is_empty());
    assert_eq!(outbox(wz).await.depth, 0);
    // Ningbo answers again: the next repeat settles afresh.
    unanswered.store(false, Ordering::SeqCst);
    lost.store(false, Ordering::SeqCst);
    let s = desk.settle("settle-1", &v.visit_id, false).await.unwrap();
    assert_eq!(s.state, "settled", "{s:?}");
    assert_eq!(
        yidi_tests::fixtures::split_amounts(s.split.as_ref().unwrap()),
        yidi_tests::fixtures::split_amounts(pre.split.as_ref().unwrap())
    );
    assert_eq!(accumulators(nb, &id, WZ, inst::WZ_H2).await.version, 1);
    assert_eq!(outbox(wz).await.depth, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_doubt_claim_under_a_refusing_home_policy_is_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let (mut fed, hooks) = three_cities_hooked_at(dir.path(), NB).await;
    let crash = hooks.crash_after_home_commit;
    // Hangzhou refuses offline settlement.
    let id = filed_employee(fed.node(HZ), "1987-07-07", 76, "1000.00", NB).await;
    let mut desk = Desk::at(fed.node(NB), inst::NB_H3).await;
    let v = billed_visit(&mut desk, "1", &id, HZ, "2000.00").await;
    desk.pre_settle(&v.visit_id, true).await.unwrap();
    crash.store(true, Ordering::SeqCst);
    let e = desk
        .settle("settle-1", &v.visit_id, true)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    crash.store(false, Ordering::SeqCst);
    fed.stop(HZ).await;
    // Not "still in progress": the home node cannot be asked, and the patient cannot
    // be told to pay in full for a claim the home node may have committed.
    let e = desk
        .settle("settle-1", &v.visit_id, true)
        .await
        .unwrap_err();
    refused(
        &e,
        Code::Unavailable,
        &[
            "refuses offline settlement",
            "cannot be known until it answers",
            "same request_id",
        ],
    );
    assert!(desk.list().await.is_empty());
    assert_eq!(outbox(fed.node(NB)).await.depth, 0);
    // Hangzhou back: the repeat finishes the committed claim.
    fed.restart(HZ, |_| {}).await;
    let s = desk.settle("settle-1", &v.visit_id, true).await.unwrap();
    yidi_tests::fixtures::settled_2000_at_hz_rates(&s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_home_node_that_cannot_store_says_so_and_nothing_is_settled() {
    let dir = tempfile::tempdir().unwrap();
    let (fed, hooks) = three_cities_hooked_at(dir.path(), HZ).await;
    let full = hooks.home_store_full;
    let (hz, nb) = (fed.node(HZ), fed.node(NB));
    let id = filed_employee(hz, "1988-08-08", 77, "1000.00", NB).await;
    let mut desk = Desk::at(nb, inst::NB_H3).await;
    let v = billed_visit(&mut desk, "1", &id, HZ, "2000.00").await;
    full.store(true, Ordering::SeqCst);
    // Asked twice: each time the cause, never "still in progress".
    for _ in 0..2 {
        let e = desk
            .settle("settle-1", &v.visit_id, true)
            .await
            .unwrap_err();
        refused(
            &e,
            Code::Unavailable,
            &[
                "home node 330100 cannot store claims now",
                "database or disk is full",
                "the settlement was not made",
            ],
        );
    }
    assert!(desk.list().await.is_empty());
    untouched(hz, &id).await;
    assert_eq!(account_balance(hz, &id).await, "1000.00");
    assert_eq!(outbox(nb).await.depth, 0);
    // Room made: the same request settles.
    full.store(false, Ordering::SeqCst);
    let s = desk.settle("settle-1", &v.visit_id, true).await.unwrap();
    yidi_tests::fixtures::settled_2000_at_hz_rates(&s);
}
