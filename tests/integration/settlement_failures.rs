//! Settlement when things go wrong, on three in-process nodes (Hangzhou 330100, Ningbo
//! 330200, Wenzhou 330300): the home node down under both offline rules (Hangzhou
//! refuses; Wenzhou settles provisionally under an exposure limit), also when it falls
//! silent after refusing a stale price, and its recovery through the outbox; a crash
//! between the home commit and the local commit, resolved by recovery, by a repeated
//! request or by 冲正; and bad input, each refused with its status code and nothing
//! changed. Amounts are worked out by hand from `deploy/policies`.

use std::{
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use tonic::Code;
use yidi_common::proto::{
    self, AgreementStatus as As, FilingType as Ft, HospitalLevel as Hl, InstitutionKind as Ik,
    InsuranceType as It, PersonType as Pt, VisitKind as Vk,
};
use yidi_node::context::TestHooks;
use yidi_tests::{
    fixtures::{
        Desk, VISIT_OPENED as ADMITTED, acc_tuple, account_balance, accumulators, assert_split,
        billed_visit, fee_line as line, filed_employee, filing, filing_until, id_number, inst,
        institution_with_agreement, outbox, peer_calls, period_digest, person,
        settled_2000_at_hz_rates, three_cities, three_cities_hooked_at, wait_outbox_drained,
    },
    harness::TestNode,
};

const HZ: &str = "330100";
const NB: &str = "330200";
const WZ: &str = "330300";

/// (count, sum) of both ledgers of a pair, asserting they agree (count, sum, digest, ids).
async fn ledgers(treatment: &TestNode, home: &TestNode, period: &str) -> (u64, String) {
    let recv = period_digest(treatment, period, home.region.as_str(), "receivable").await;
    let pay = period_digest(home, period, treatment.region.as_str(), "payable").await;
    assert_eq!(
        (recv.count, &recv.sum, &recv.digest, &recv.claim_ids),
        (pay.count, &pay.sum, &pay.digest, &pay.claim_ids),
        "receivable of {} and payable of {} differ",
        treatment.region,
        home.region
    );
    (recv.count, recv.sum)
}

/// A 2000.00 bill refused under Hangzhou's offline rule: the patient pays all of it.
fn refused_2000_paid_in_full(s: &proto::Settlement) {
    assert_eq!(s.state, "refused", "{s:?}");
    assert!(s.note.contains("refuses offline settlement"), "{}", s.note);
    assert_split(
        s.split.as_ref().unwrap(),
        &[
            ("medfee_sumamt", "2000.00"),
            ("fulamt_ownpay_amt", "2000.00"),
            ("inscp_scp_amt", "0.00"),
            ("fund_pay_sumamt", "0.00"),
            ("psn_part_amt", "2000.00"),
            ("acct_pay", "0.00"),
            ("psn_cash_pay", "2000.00"),
        ],
    );
}

/// The current clearing period ("YYYY-MM", China Standard Time).
fn this_period() -> String {
    (chrono::Utc::now() + chrono::Duration::hours(8))
        .format("%Y-%m")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn home_down_and_policy_refuses_offline_settlement() {
    let dir = tempfile::tempdir().unwrap();
    let mut fed = three_cities(dir.path(), |_, _| {}).await;
    let id = filed_employee(fed.node(HZ), "1980-01-01", 40, "1000.00", NB).await;
    let mut desk = Desk::at(fed.node(NB), inst::NB_H3).await;
    // Opened while Hangzhou answers (eligibility kept with the visit), and pre-settled
    // (Hangzhou's policy cached): 2000.00, deductible 1000.00, pooled 70% = 700.00.
    let v = desk
        .open("ov-1", &id, HZ, Vk::Outpatient, ADMITTED)
        .await
        .unwrap();
    desk.fees(
        "fees-1",
        &v.visit_id,
        vec![line("1", "NB-A", "1", "2000.00", "2000.00")],
    )
    .await
    .unwrap();
    let pre = desk.pre_settle(&v.visit_id, true).await.unwrap();
    assert_eq!(pre.split.unwrap().fund_pay_sumamt, "700.00");
    // A second visit opened while Hangzhou is down has no eligibility to go on.
    fed.stop(HZ).await;
    let nb = fed.node(NB);
    let blind = desk
        .open("ov-2", &id, HZ, Vk::Outpatient, ADMITTED)
        .await
        .unwrap();
    desk.fees(
        "fees-2",
        &blind.visit_id,
        vec![line("1", "NB-A", "1", "100.00", "100.00")],
    )
    .await
    .unwrap();
    let e = desk
        .settle("settle-2", &blind.visit_id, true)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");

    // Hangzhou refuses offline settlement: the patient pays the whole 2000.00.
    let s = desk.settle("settle-1", &v.visit_id, true).await.unwrap();
    refused_2000_paid_in_full(&s);
    assert_eq!(desk.settle("settle-1", &v.visit_id, true).await.unwrap(), s);
    assert_eq!(desk.get(&s.settlement_id).await.unwrap(), s);
    // Nothing to push to Hangzhou, nothing provisional.
    let ob = outbox(nb).await;
    assert_eq!((ob.depth, ob.exposure.len()), (0, 0), "{ob:?}");

    // Hangzhou back: nothing reached it, and nothing is owed.
    fed.restart(HZ, |_| {}).await;
    let (hz, nb) = (fed.node(HZ), fed.node(NB));
    assert_eq!(outbox(nb).await.depth, 0);
    assert_eq!(account_balance(hz, &id).await, "1000.00");
    let acc = accumulators(hz, &id, NB, inst::NB_H3).await;
    assert_eq!(
        acc_tuple(&acc),
        ("0.00", "0.00", "0.00", "0.00", "0.00", 0, "0.00", 0)
    );
    assert_eq!(ledgers(nb, hz, &s.period).await, (0, "0.00".into()));
    // The refused record stays refused; the request keeps its answer.
    assert_eq!(desk.get(&s.settlement_id).await.unwrap().state, "refused");
    assert_eq!(desk.settle("settle-1", &v.visit_id, true).await.unwrap(), s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn home_down_provisional_under_exposure_limit_then_outbox_confirms() {
    let dir = tempfile::tempdir().unwrap();
    let mut fed = three_cities(dir.path(), |_, _| {}).await;
    let id = filed_employee(fed.node(WZ), "1966-05-05", 41, "0.00", NB).await;
    let mut desk = Desk::at(fed.node(NB), inst::NB_H3).await;
    // Three admissions at Ningbo's level-3 hospital, each 135000.00 in scope, opened,
    // billed, discharged and pre-settled while Wenzhou answers. Wenzhou at level 3:
    // first-admission deductible 700.00, 82%: pooled 82% × 134300.00 = 110126.00; the
    // personal share 24874.00 stays below the serious-illness threshold 25000.00.
    let mut visits = Vec::new();
    for i in 1..=3 {
        let v = desk
            .open(&format!("adm-{i}"), &id, WZ, Vk::Inpatient, ADMITTED)
            .await
            .unwrap();
        desk.fees(
            &format!("fees-{i}"),
            &v.visit_id,
            vec![line("1", "NB-A", "1", "135000.00", "135000.00")],
        )
        .await
        .unwrap();
        desk.discharge(&format!("dis-{i}"), &v.visit_id)
            .await
            .unwrap();
        let pre = desk.pre_settle(&v.visit_id, false).await.unwrap();
        assert_eq!(pre.split.unwrap().fund_pay_sumamt, "110126.00");
        visits.push(v);
    }
    fed.stop(WZ).await;
    let nb = fed.node(NB);

    // Wenzhou settles provisionally from its cached policy and the eligibility kept at
    // admission, up to an exposure of 300000.00.
    let s1 = desk
        .settle("settle-1", &visits[0].visit_id, false)
        .await
        .unwrap();
    assert_eq!(s1.state, "provisional");
    assert!(s1.note.contains("provisionally"), "{}", s1.note);
    assert_split(
        s1.split.as_ref().unwrap(),
        &[
            ("medfee_sumamt", "135000.00"),
            ("inscp_scp_amt", "135000.00"),
            ("act_pay_dedc", "700.00"),
            ("pool_ratio", "0.82"),
            ("hifp_pay", "110126.00"),
            ("fund_pay_sumamt", "110126.00"),
            ("psn_part_amt", "24874.00"),
            ("psn_cash_pay", "24874.00"),
        ],
    );
    let ob = outbox(nb).await;
    assert_eq!(ob.depth, 1, "{ob:?}");
    assert!(!ob.oldest.is_empty());
    assert_eq!(
        (
            ob.targets[0].region.as_str(),
            ob.targets[0].depth,
            ob.items[0].kind.as_str(),
            ob.items[0].ref_id.as_str()
        ),
        (WZ, 1, "commit", s1.settlement_id.as_str())
    );
    assert_eq!(
        (
            ob.exposure[0].region.as_str(),
            ob.exposure[0].amount.as_str()
        ),
        (WZ, "110126.00")
    );
    // Same snapshot (admissions 0), same split: exposure 220252.00 ≤ 300000.00.
    let s2 = desk
        .settle("settle-2", &visits[1].visit_id, false)
        .await
        .unwrap();
    assert_eq!(
        (
            s2.state.as_str(),
            s2.split.as_ref().unwrap().fund_pay_sumamt.as_str()
        ),
        ("provisional", "110126.00")
    );
    let ob = outbox(nb).await;
    assert_eq!(
        (ob.depth, ob.exposure[0].amount.as_str()),
        (2, "220252.00"),
        "{ob:?}"
    );
    // The third would take it to 330378.00 > 300000.00: refused, the patient pays all.
    let s3 = desk
        .settle("settle-3", &visits[2].visit_id, false)
        .await
        .unwrap();
    assert_eq!(s3.state, "refused");
    assert!(s3.note.contains("exposure"), "{}", s3.note);
    assert_split(
        s3.split.as_ref().unwrap(),
        &[
            ("medfee_sumamt", "135000.00"),
            ("fulamt_ownpay_amt", "135000.00"),
            ("fund_pay_sumamt", "0.00"),
            ("psn_part_amt", "135000.00"),
            ("psn_cash_pay", "135000.00"),
        ],
    );
    assert_eq!(outbox(nb).await.depth, 2);

    // Wenzhou back: the outbox delivers in order; Wenzhou re-runs its engine on its own
    // accumulators. Claim 1 as computed. Claim 2 is now a second admission: deductible
    // 350.00, pooled 82% × 134650.00 = 110413.00; personal share this year 24874.00 +
    // (135000.00 − 110413.00) = 49461.00, of which 49461.00 − 25000.00 = 24461.00 in the
    // 60% tier: serious illness 14676.60; funds 125089.60 (the provisional 110126.00 is
    // corrected by 14963.60).
    fed.restart(WZ, |_| {}).await;
    let (nb, wz) = (fed.node(NB), fed.node(WZ));
    wait_outbox_drained(nb, Duration::from_secs(30)).await;
    let f1 = desk.get(&s1.settlement_id).await.unwrap();
    assert_eq!(
        (
            f1.state.as_str(),
            f1.split.as_ref().unwrap().fund_pay_sumamt.as_str(),
            f1.note.as_str()
        ),
        ("settled", "110126.00", s1.note.as_str())
    );
    let f2 = desk.get(&s2.settlement_id).await.unwrap();
    assert_eq!(f2.state, "settled");
    assert_split(
        f2.split.as_ref().unwrap(),
        &[
            ("medfee_sumamt", "135000.00"),
            ("inscp_scp_amt", "135000.00"),
            ("act_pay_dedc", "350.00"),
            ("pool_ratio", "0.82"),
            ("hifp_pay", "110413.00"),
            ("hifmi_pay", "14676.60"),
            ("fund_pay_sumamt", "125089.60"),
            ("psn_part_amt", "9910.40"),
            ("psn_cash_pay", "9910.40"),
        ],
    );
    assert!(
        f2.note
            .contains("110126.00 corrected by the home node to 125089.60"),
        "{}",
        f2.note
    );
    assert_eq!(desk.get(&s3.settlement_id).await.unwrap().state, "refused");
    let ob = outbox(nb).await;
    assert_eq!((ob.depth, ob.exposure.len()), (0, 0), "{ob:?}");
    // Home: both claims, nothing of the refused one.
    let acc = accumulators(wz, &id, NB, inst::NB_H3).await;
    assert_eq!(
        acc_tuple(&acc),
        (
            "220539.00",
            "0.00",
            "0.00",
            "14676.60",
            "0.00",
            2,
            "270000.00",
            2
        )
    );
    // 110126.00 + 125089.60 = 235215.60 on both sides.
    assert_eq!(ledgers(nb, wz, &s1.period).await, (2, "235215.60".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provisional_settlement_cancelled_while_home_is_down() {
    let dir = tempfile::tempdir().unwrap();
    let mut fed = three_cities(dir.path(), |_, _| {}).await;
    let id = filed_employee(fed.node(WZ), "1967-06-06", 42, "500.00", NB).await;
    let mut desk = Desk::at(fed.node(NB), inst::NB_H3).await;
    // Wenzhou outpatient at level 3: deductible 800.00, 65% × 1000.00 = 650.00; personal
    // 1150.00: account 500.00, cash 650.00.
    let v = billed_visit(&mut desk, "1", &id, WZ, "1800.00").await;
    desk.pre_settle(&v.visit_id, true).await.unwrap();
    fed.stop(WZ).await;
    // Ningbo restarts while Wenzhou is down: the Wenzhou policy it fetched for the
    // pre-settle was kept in its store, so it can still settle provisionally.
    fed.stop(NB).await;
    fed.restart(NB, |_| {}).await;
    let mut desk = Desk::at(fed.node(NB), inst::NB_H3).await;
    let s = desk.settle("settle-1", &v.visit_id, true).await.unwrap();
    assert_eq!(s.state, "provisional");
    assert_split(
        s.split.as_ref().unwrap(),
        &[
            ("medfee_sumamt", "1800.00"),
            ("inscp_scp_amt", "1800.00"),
            ("act_pay_dedc", "800.00"),
            ("pool_ratio", "0.65"),
            ("hifp_pay", "650.00"),
            ("fund_pay_sumamt", "650.00"),
            ("psn_part_amt", "1150.00"),
            ("acct_pay", "500.00"),
            ("psn_cash_pay", "650.00"),
        ],
    );
    // Let the commit fail three times (its next attempt is then 2 s away) before
    // cancelling, so that the reversal queued behind it is due before it is: delivery
    // must still keep their order.
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let ob = outbox(fed.node(NB)).await;
        if ob.items.first().is_some_and(|i| i.attempts >= 3) {
            break;
        }
        assert!(Instant::now() < until, "commit never attempted: {ob:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let c = desk.cancel("cancel-1", &s.settlement_id, "").await.unwrap();
    assert_eq!(c.state, "reversal");
    assert_eq!(outbox(fed.node(NB)).await.depth, 2);

    fed.restart(WZ, |_| {}).await;
    let (nb, wz) = (fed.node(NB), fed.node(WZ));
    wait_outbox_drained(nb, Duration::from_secs(30)).await;
    // The claim reached Wenzhou and was reversed there: the account is whole again,
    // the accumulators are back to zero (two versions later), the ledgers net to zero.
    assert_eq!(desk.get(&s.settlement_id).await.unwrap().state, "cancelled");
    assert_eq!(account_balance(wz, &id).await, "500.00");
    let acc = accumulators(wz, &id, NB, inst::NB_H3).await;
    assert_eq!(
        acc_tuple(&acc),
        ("0.00", "0.00", "0.00", "0.00", "0.00", 0, "0.00", 2)
    );
    assert_eq!(ledgers(nb, wz, &s.period).await, (2, "0.00".into()));
    // The visit can be settled again, now online.
    let again = desk.settle("settle-2", &v.visit_id, true).await.unwrap();
    assert_eq!(
        (
            again.state.as_str(),
            again.split.as_ref().unwrap().fund_pay_sumamt.as_str()
        ),
        ("settled", "650.00")
    );
}

/// A provisional settlement cancelled while its home node is down, its visit settled
/// again (refused: the exposure limit is reached), then the home node back: confirming
/// the cancelled claim leaves it cancelled and leaves the visit settled under its new
/// settlement — its fees stay frozen and it cannot be settled a third time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirming_a_cancelled_claim_leaves_the_resettled_visit_settled() {
    let dir = tempfile::tempdir().unwrap();
    let mut fed = three_cities(dir.path(), |_, _| {}).await;
    let id = filed_employee(fed.node(WZ), "1966-05-05", 41, "0.00", NB).await;
    let mut desk = Desk::at(fed.node(NB), inst::NB_H3).await;
    // Three admissions of 135000.00, each 110126.00 from Wenzhou's fund (worked out in
    // home_down_provisional_under_exposure_limit_then_outbox_confirms).
    let mut visits = Vec::new();
    for i in 1..=3 {
        let v = desk
            .open(&format!("adm-{i}"), &id, WZ, Vk::Inpatient, ADMITTED)
            .await
            .unwrap();
        desk.fees(
            &format!("fees-{i}"),
            &v.visit_id,
            vec![line("1", "NB-A", "1", "135000.00", "135000.00")],
        )
        .await
        .unwrap();
        desk.discharge(&format!("dis-{i}"), &v.visit_id)
            .await
            .unwrap();
        desk.pre_settle(&v.visit_id, false).await.unwrap();
        visits.push(v);
    }
    fed.stop(WZ).await;
    let a = &visits[0].visit_id;
    let s1 = desk.settle("settle-a1", a, false).await.unwrap();
    assert_eq!(s1.state, "provisional");
    let c = desk
        .cancel("cancel-a1", &s1.settlement_id, "")
        .await
        .unwrap();
    assert_eq!(c.state, "reversal");
    // 2 × 110126.00 provisional toward Wenzhou; a third would exceed 300000.00.
    for (i, v) in visits[1..].iter().enumerate() {
        let s = desk
            .settle(&format!("settle-{i}"), &v.visit_id, false)
            .await
            .unwrap();
        assert_eq!(s.state, "provisional");
    }
    let s2 = desk.settle("settle-a2", a, false).await.unwrap();
    assert_eq!(s2.state, "refused", "{}", s2.note);

    fed.restart(WZ, |_| {}).await;
    wait_outbox_drained(fed.node(NB), Duration::from_secs(30)).await;
    assert_eq!(
        desk.get(&s1.settlement_id).await.unwrap().state,
        "cancelled"
    );
    assert_eq!(desk.get(&s2.settlement_id).await.unwrap().state, "refused");
    let e = desk
        .fees("fees-a2", a, vec![line("2", "NB-A", "1", "10.00", "10.00")])
        .await
        .expect_err("the visit is settled (refused) again");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(
        e.message().contains("is settled; cancel the settlement"),
        "{}",
        e.message()
    );
    let e = desk
        .settle("settle-a3", a, false)
        .await
        .expect_err("settled once already");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(
        e.message().contains("is already settled"),
        "{}",
        e.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_home_commit_is_recovered_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let (mut fed, hooks) = three_cities_hooked_at(dir.path(), NB).await;
    let crash = hooks.crash_after_home_commit;
    let mut desk = Desk::at(fed.node(NB), inst::NB_H3).await;
    let mut ids = Vec::new();
    let mut visits = Vec::new();
    for (i, seq) in [(1, 43), (2, 44), (3, 45)] {
        let id = filed_employee(fed.node(HZ), "1979-09-09", seq, "1000.00", NB).await;
        let v = billed_visit(&mut desk, &i.to_string(), &id, HZ, "2000.00").await;
        ids.push(id);
        visits.push(v);
    }
    let expect = settled_2000_at_hz_rates;

    // 1. The hospital repeats the request: the node asks Hangzhou and finishes.
    crash.store(true, Ordering::SeqCst);
    let e = desk
        .settle("settle-1", &visits[0].visit_id, true)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    // Hangzhou committed; Ningbo has not recorded anything yet.
    let acc = accumulators(fed.node(HZ), &ids[0], NB, inst::NB_H3).await;
    assert_eq!((acc.version, acc.pool_paid.as_str()), (1, "700.00"));
    assert_eq!(desk.list().await.len(), 0);
    crash.store(false, Ordering::SeqCst);
    let s1 = desk
        .settle("settle-1", &visits[0].visit_id, true)
        .await
        .unwrap();
    expect(&s1);
    // The intent held only a placeholder while Hangzhou was asked; the policy version
    // comes from Hangzhou's claim status.
    assert_eq!(s1.policy_version, 1, "{s1:?}");
    assert_eq!(
        desk.settle("settle-1", &visits[0].visit_id, true)
            .await
            .unwrap(),
        s1
    );

    // 2. The hospital gives up on the request with 冲正: the node learns it was
    // committed, then reverses it.
    crash.store(true, Ordering::SeqCst);
    let e = desk
        .settle("settle-2", &visits[1].visit_id, true)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    crash.store(false, Ordering::SeqCst);
    let r = desk.reverse("rev-2", "settle-2").await.unwrap();
    assert_eq!(r.outcome, "reversed");
    let reversal = r.reversal.unwrap();
    assert_eq!(reversal.split.as_ref().unwrap().fund_pay_sumamt, "-700.00");
    wait_outbox_drained(fed.node(NB), Duration::from_secs(10)).await;
    assert_eq!(account_balance(fed.node(HZ), &ids[1]).await, "1000.00");
    let acc = accumulators(fed.node(HZ), &ids[1], NB, inst::NB_H3).await;
    assert_eq!(
        acc_tuple(&acc),
        ("0.00", "0.00", "0.00", "0.00", "0.00", 0, "0.00", 2)
    );

    // 3. The node itself goes down in between and recovers on restart.
    crash.store(true, Ordering::SeqCst);
    let e = desk
        .settle("settle-3", &visits[2].visit_id, true)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    fed.stop(NB).await;
    fed.restart(NB, |_| {}).await;
    let mut desk = Desk::at(fed.node(NB), inst::NB_H3).await;
    // Recovery at start-up asks Hangzhou and records the settlement, before the
    // hospital asks again.
    let until = Instant::now() + Duration::from_secs(10);
    let recovered = loop {
        let found = desk
            .list()
            .await
            .into_iter()
            .find(|s| s.visit_id == visits[2].visit_id);
        if let Some(s) = found {
            break s;
        }
        assert!(Instant::now() < until, "in-doubt claim not recovered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    expect(&recovered);
    let s3 = desk
        .settle("settle-3", &visits[2].visit_id, true)
        .await
        .unwrap();
    assert_eq!(s3, recovered);

    // Exactly once everywhere: per person one claim at home (the reversed one two
    // versions), and both ledgers: 700.00 + 700.00 − 700.00 + 700.00 = 1400.00 in four
    // entries.
    let (hz, nb) = (fed.node(HZ), fed.node(NB));
    for (id, version) in [(&ids[0], 1), (&ids[2], 1)] {
        let acc = accumulators(hz, id, NB, inst::NB_H3).await;
        assert_eq!(
            acc_tuple(&acc),
            (
                "700.00", "700.00", "0.00", "0.00", "1000.00", 0, "2000.00", version
            )
        );
        assert_eq!(account_balance(hz, id).await, "0.00");
    }
    assert_eq!(ledgers(nb, hz, &s3.period).await, (4, "1400.00".into()));
    let records = desk.list().await;
    assert_eq!(
        records.len(),
        4,
        "settle-1, settle-2 (cancelled), its reversal, settle-3"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_with_its_code_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let fed = three_cities(dir.path(), |_, _| {}).await;
    let (hz, nb, wz) = (fed.node(HZ), fed.node(NB), fed.node(WZ));
    institution_with_agreement(
        wz,
        "H33030009",
        Ik::Hospital,
        Hl::HospitalLevel2,
        As::Suspended,
        "2024-01-01",
        "",
    )
    .await;
    institution_with_agreement(
        wz,
        "H33030008",
        Ik::Hospital,
        Hl::HospitalLevel2,
        As::Active,
        "2024-01-01",
        "2025-12-31",
    )
    .await;
    // A Ningbo employee: Ningbo settles unfiled care directly for inpatient and
    // emergency care only. An expired filing for Wenzhou counts as none.
    let nb_person = person(
        nb,
        &id_number(NB, "1977-07-07", 50),
        It::Employee,
        Pt::InService,
        "1000.00",
        false,
    )
    .await;
    filing_until(
        nb,
        &nb_person,
        Ft::LongTermResident,
        WZ,
        &[],
        "2025-01-01",
        "2026-02-28",
    )
    .await;
    let hz_person = person(
        hz,
        &id_number(HZ, "1978-08-08", 51),
        It::Employee,
        Pt::InService,
        "1000.00",
        false,
    )
    .await;
    let mut desk = Desk::at(wz, inst::WZ_H2).await;
    let first = desk
        .open("ov-0", &hz_person, HZ, Vk::Outpatient, ADMITTED)
        .await
        .unwrap();
    let seq = |v: &proto::Visit| -> u64 { v.visit_id.rsplit('-').next().unwrap().parse().unwrap() };

    // Institutions: unknown → PERMISSION_DENIED; suspended or expired agreement →
    // FAILED_PRECONDITION.
    let mut unknown = Desk::at(wz, "H33039999").await;
    let e = unknown
        .open("ov-x", &hz_person, HZ, Vk::Outpatient, ADMITTED)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let e = unknown
        .client
        .identify(proto::IdentifyRequest {
            institution_code: "H33039999".into(),
            id_number: hz_person.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    // The visit's other calls check the institution first too (before the visit, which
    // is another institution's): its own error, and nothing changes.
    let fee_and_discharge = |d: &mut Desk| {
        let mut client = d.client.clone();
        let inst = d.inst.clone();
        let visit_id = first.visit_id.clone();
        async move {
            let fees = client
                .upload_fees(proto::UploadFeesRequest {
                    request_id: "fx".into(),
                    institution_code: inst.clone(),
                    visit_id: visit_id.clone(),
                    lines: vec![line("1", "WZ-A", "1", "100.00", "100.00")],
                })
                .await
                .unwrap_err();
            let undo = client
                .undo_fees(proto::UndoFeesRequest {
                    request_id: "ux".into(),
                    institution_code: inst.clone(),
                    visit_id: visit_id.clone(),
                    line_nos: vec!["1".into()],
                })
                .await
                .unwrap_err();
            let close = client
                .close_visit(proto::CloseVisitRequest {
                    request_id: "cx".into(),
                    institution_code: inst,
                    visit_id,
                    discharged_at: String::new(),
                })
                .await
                .unwrap_err();
            [fees, undo, close]
        }
    };
    for e in fee_and_discharge(&mut unknown).await {
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
        assert!(e.message().contains("H33039999"), "{e:?}");
    }
    for code in ["H33030009", "H33030008"] {
        let mut d = Desk::at(wz, code).await;
        let e = d
            .open("ov-x", &hz_person, HZ, Vk::Outpatient, ADMITTED)
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{code}: {e:?}");
        assert!(e.message().contains(code), "{e:?}");
        let e = d.settle("s-x", &first.visit_id, false).await.unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{code}: {e:?}");
        for e in fee_and_discharge(&mut d).await {
            assert_eq!(e.code(), Code::FailedPrecondition, "{code}: {e:?}");
            assert!(e.message().contains(code), "{e:?}");
        }
    }
    // Nothing of the refused calls reached the visit: its line 1 is free for other
    // values, and it is still open.
    let fees = desk
        .fees(
            "f-0",
            &first.visit_id,
            vec![line("1", "WZ-A", "2", "100.00", "200.00")],
        )
        .await
        .unwrap();
    assert_eq!((fees.lines.len(), fees.total.as_str()), (1, "200.00"));
    assert_eq!(
        desk.discharge("d-0", &first.visit_id).await.unwrap().state,
        "closed"
    );

    // Unknown person → NOT_FOUND (from the home node, and when identifying).
    let stranger = id_number(HZ, "1999-09-09", 52);
    let e = desk
        .open("ov-x", &stranger, HZ, Vk::Outpatient, ADMITTED)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let e = desk
        .client
        .identify(proto::IdentifyRequest {
            institution_code: inst::WZ_H2.into(),
            id_number: stranger.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    // None of the refused requests created a visit: the next one takes the next number,
    // and a refused request id is free for a good request.
    let v = desk
        .open("ov-x", &nb_person, NB, Vk::Outpatient, ADMITTED)
        .await
        .unwrap();
    assert_eq!(seq(&v), seq(&first) + 1);

    // Fee lines: unknown item, negative quantity, amount ≠ quantity × price — each
    // INVALID_ARGUMENT naming the line's field; no line of the upload is kept.
    for (lines, field) in [
        (
            vec![
                line("1", "WZ-A", "1", "100.00", "100.00"),
                line("2", "WZ-NOPE", "1", "5.00", "5.00"),
            ],
            "lines[1].item_code",
        ),
        (
            vec![line("1", "WZ-A", "-1", "100.00", "-100.00")],
            "lines[0].quantity",
        ),
        (
            vec![line("1", "WZ-A", "2", "10.00", "25.00")],
            "lines[0].amount",
        ),
        (
            vec![line("1", "WZ-A", "0", "10.00", "0.00")],
            "lines[0].quantity",
        ),
        (
            vec![line("1", "WZ-A", "1", "-10.00", "-10.00")],
            "lines[0].unit_price",
        ),
        (
            vec![
                line("1", "WZ-A", "1", "10.00", "10.00"),
                line("1", "WZ-A", "1", "20.00", "20.00"),
            ],
            "lines[1].line_no",
        ),
    ] {
        let e = desk.fees("fees-x", &v.visit_id, lines).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{field}: {e:?}");
        assert!(e.message().contains(field), "{field}: {e:?}");
        let e = desk.pre_settle(&v.visit_id, false).await.unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "no fee lines: {e:?}");
    }
    // Another institution's visit: not theirs to bill.
    let mut other = Desk::at(wz, inst::WZ_P).await;
    let e = other
        .fees(
            "fees-x",
            &v.visit_id,
            vec![line("1", "WZ-A", "1", "1000.00", "1000.00")],
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let up = desk
        .fees(
            "fees-x",
            &v.visit_id,
            vec![line("1", "WZ-A", "1", "1000.00", "1000.00")],
        )
        .await
        .unwrap();
    assert_eq!((up.lines.len(), up.total.as_str()), (1, "1000.00"));

    // Unfiled (expired filing) outpatient care of a Ningbo employee: no direct
    // settlement → FAILED_PRECONDITION, at identification already and on settling.
    let who = desk
        .client
        .identify(proto::IdentifyRequest {
            institution_code: inst::WZ_H2.into(),
            id_number: nb_person.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!who.eligible);
    assert!(
        who.ineligible_reason.contains("no direct settlement"),
        "{who:?}"
    );
    let e = desk.pre_settle(&v.visit_id, false).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    let e = desk
        .settle("settle-x", &v.visit_id, false)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("no direct settlement"), "{e:?}");
    // Nothing recorded, nothing at home, nothing queued or owed.
    assert_eq!(desk.list().await.len(), 0);
    assert_eq!(outbox(wz).await.depth, 0);
    let acc = accumulators(nb, &nb_person, WZ, inst::WZ_H2).await;
    assert_eq!(acc.version, 0);
    assert_eq!(account_balance(nb, &nb_person).await, "1000.00");
    let period = this_period();
    assert_eq!(ledgers(wz, nb, &period).await, (0, "0.00".into()));

    // The same person admitted as an inpatient: settled directly as unfiled, 88% −
    // 15 pp = 73% at level 2; deductible 600.00; 10600.00 → pooled 73% × 10000.00 =
    // 7300.00; personal 3300.00 in cash.
    let adm = desk
        .open("adm-1", &nb_person, NB, Vk::Inpatient, ADMITTED)
        .await
        .unwrap();
    desk.fees(
        "fees-adm",
        &adm.visit_id,
        vec![line("1", "WZ-A", "1", "10600.00", "10600.00")],
    )
    .await
    .unwrap();
    desk.discharge("dis-1", &adm.visit_id).await.unwrap();
    let s = desk
        .settle("settle-adm", &adm.visit_id, false)
        .await
        .unwrap();
    let split = s.split.clone().unwrap();
    assert_eq!(split.applied_filing_type, Ft::Temporary as i32);
    assert_split(
        &split,
        &[
            ("medfee_sumamt", "10600.00"),
            ("inscp_scp_amt", "10600.00"),
            ("act_pay_dedc", "600.00"),
            ("pool_ratio", "0.73"),
            ("hifp_pay", "7300.00"),
            ("fund_pay_sumamt", "7300.00"),
            ("psn_part_amt", "3300.00"),
            ("psn_cash_pay", "3300.00"),
        ],
    );
    // The refused request id "settle-x" left nothing behind: it is free.
    let e = desk
        .settle("settle-x", &v.visit_id, false)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert_eq!(desk.list().await.len(), 1);
    assert_eq!(ledgers(wz, nb, &s.period).await, (1, "7300.00".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn home_down_never_settles_a_person_the_home_node_found_ineligible() {
    let dir = tempfile::tempdir().unwrap();
    let mut fed = three_cities(dir.path(), |_, _| {}).await;
    let wz = fed.node(WZ);
    let ok = person(
        wz,
        &id_number(WZ, "1971-01-01", 53),
        It::Employee,
        Pt::InService,
        "0.00",
        false,
    )
    .await;
    let arrears = person(
        wz,
        &id_number(WZ, "1971-01-01", 54),
        It::Employee,
        Pt::InService,
        "0.00",
        false,
    )
    .await;
    for id in [&ok, &arrears] {
        filing(wz, id, Ft::LongTermResident, NB, &[], "2026-01-01").await;
    }
    // Contributions in arrears: enrolment suspended.
    let mut admin = wz.admin().await;
    let mut fields = admin
        .get_person(proto::GetPersonRequest {
            id_number: arrears.clone(),
            card_no: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .fields
        .unwrap();
    fields.status = proto::PersonStatus::Suspended as i32;
    admin
        .update_person(proto::UpdatePersonRequest {
            request_id: "suspend-1".into(),
            id_number: arrears.clone(),
            fields: Some(fields),
        })
        .await
        .unwrap();
    let mut desk = Desk::at(fed.node(NB), inst::NB_H3).await;
    // Wenzhou's policy is cached at Ningbo through another person's pre-settlement.
    let v = desk
        .open("ov-ok", &ok, WZ, Vk::Outpatient, ADMITTED)
        .await
        .unwrap();
    desk.fees(
        "fees-ok",
        &v.visit_id,
        vec![line("1", "NB-A", "1", "1800.00", "1800.00")],
    )
    .await
    .unwrap();
    desk.pre_settle(&v.visit_id, false).await.unwrap();
    // The suspended person: registered, but Wenzhou says no direct settlement.
    let v = desk
        .open("ov-arrears", &arrears, WZ, Vk::Outpatient, ADMITTED)
        .await
        .unwrap();
    desk.fees(
        "fees-arrears",
        &v.visit_id,
        vec![line("1", "NB-A", "1", "1800.00", "1800.00")],
    )
    .await
    .unwrap();
    let online = desk.pre_settle(&v.visit_id, false).await.unwrap_err();
    assert_eq!(online.code(), Code::FailedPrecondition, "{online:?}");

    // With Wenzhou down the answer is the same: nothing settled, nothing queued.
    fed.stop(WZ).await;
    let e = desk
        .settle("settle-arrears", &v.visit_id, false)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("no direct settlement"), "{e:?}");
    assert_eq!(desk.list().await.len(), 0);
    let ob = outbox(fed.node(NB)).await;
    assert_eq!((ob.depth, ob.exposure.len()), (0, 0), "{ob:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoning_a_claim_that_was_committed_after_all_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let fed = three_cities(dir.path(), |_, _| {}).await;
    let (nb, wz) = (fed.node(NB), fed.node(WZ));
    let id = filed_employee(wz, "1968-07-07", 43, "0.00", NB).await;
    let mut desk = Desk::at(nb, inst::NB_H3).await;
    let v = billed_visit(&mut desk, "1", &id, WZ, "1800.00").await;
    let s = desk.settle("settle-1", &v.visit_id, false).await.unwrap();
    assert_eq!(s.state, "settled");
    let before = accumulators(wz, &id, NB, inst::NB_H3).await;

    // The treatment node gives up on a claim the home node committed after all (a late
    // delivery): the home node leaves it committed and says so.
    let abandon = |claim: &str| proto::ReverseClaimRequest {
        request_id: format!("abandon-{claim}"),
        claim_id: claim.into(),
        reversal_id: format!("abandon-{claim}"),
        reason: "treatment node gave up on an in-doubt claim".into(),
        reversed_at: yidi_common::period::now_rfc3339(),
        treatment_region: NB.into(),
        abandon_only: true,
    };
    let mut peer = wz.peer().await;
    let r = peer
        .reverse_claim(abandon(&s.settlement_id))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.state, "committed");
    assert_eq!(accumulators(wz, &id, NB, inst::NB_H3).await, before);
    let st = peer
        .claim_status(proto::ClaimStatusRequest {
            claim_id: s.settlement_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(st.state, "committed");

    // An unknown claim is tombstoned: it can never be committed later.
    let r = peer
        .reverse_claim(abandon("330200-S-9999999999"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.state, "abandoned");
    let st = peer
        .claim_status(proto::ClaimStatusRequest {
            claim_id: "330200-S-9999999999".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(st.state, "abandoned");
}

/// A hospital whose Settle call is dropped (its deadline passed) while the home node is
/// still answering eligibility leaves an intent behind that nothing holds: a repeat of
/// the same request resolves it and settles, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settle_dropped_during_eligibility_is_settled_by_its_repeat() {
    let dir = tempfile::tempdir().unwrap();
    let (fed, hooks) = three_cities_hooked_at(dir.path(), HZ).await;
    let delay = hooks.eligibility_delay_ms;
    let mut desk = Desk::at(fed.node(NB), inst::NB_H3).await;
    let id = filed_employee(fed.node(HZ), "1979-09-09", 61, "1000.00", NB).await;
    // Hangzhou answers eligibility after 1.5 s. The visit is opened all the same (past
    // Ningbo's peer timeout of 0.8 s) but keeps no answer of the home node, so the
    // Settle has to ask; the hospital gives up after 0.3 s.
    delay.store(1500, Ordering::SeqCst);
    let v = billed_visit(&mut desk, "d", &id, HZ, "2000.00").await;
    let mut req = tonic::Request::new(desk.settle_req("settle-d", &v.visit_id, true));
    req.set_timeout(Duration::from_millis(300));
    let e = desk.client.settle(req).await.unwrap_err();
    assert!(
        matches!(e.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{e:?}"
    );
    delay.store(0, Ordering::SeqCst);

    // The same request again until it has a definite answer.
    let deadline = Instant::now() + Duration::from_secs(10);
    let s = loop {
        match desk.settle("settle-d", &v.visit_id, true).await {
            Ok(s) => break s,
            Err(e) if matches!(e.code(), Code::Aborted | Code::Unavailable) => {
                assert!(Instant::now() < deadline, "still not settled: {e:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{e:?}"),
        }
    };
    settled_2000_at_hz_rates(&s);
    // Committed once at home.
    let acc = accumulators(fed.node(HZ), &id, NB, inst::NB_H3).await;
    assert_eq!((acc.version, acc.pool_paid.as_str()), (1, "700.00"));
    assert_eq!(desk.list().await.len(), 1);
}

/// A Settle whose caller has gone (its deadline passed) before its job reached Ningbo's
/// busy store records nothing: no pending intent is left to block the visit until
/// recovery, and the hospital's next request settles it at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settle_whose_caller_left_while_it_queued_records_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let fed = three_cities(dir.path(), |_, _| {}).await;
    let (hz, nb) = (fed.node(HZ), fed.node(NB));
    let mut desk = Desk::at(nb, inst::NB_H3).await;
    let id = filed_employee(hz, "1984-04-04", 64, "1000.00", NB).await;
    let v = billed_visit(&mut desk, "q", &id, HZ, "2000.00").await;
    // Keep Ningbo's single writer busy: six imports of 10,000 persons.
    let mut imports = Vec::new();
    for batch in 0..6_u32 {
        let mut admin = nb.admin().await;
        let rows = (0..10_000_u32)
            .map(|n| {
                let k = batch * 10_000 + n;
                let birth = chrono::NaiveDate::from_ymd_opt(1950, 1, 1).unwrap()
                    + chrono::Days::new(u64::from(k / 1000));
                proto::PersonRow {
                    row: u64::from(n) + 2,
                    id_number: yidi_common::idnum::make("330203", birth, (k % 1000) as u16),
                    name: format!("P{k}"),
                    card_no: String::new(),
                    insurance_type: "resident".into(),
                    person_type: "resident_adult".into(),
                    civil_servant: String::new(),
                    status: "active".into(),
                    account_balance: "0".into(),
                    enrolled_since: "2021-07-01".into(),
                }
            })
            .collect();
        imports.push(tokio::spawn(async move {
            admin
                .import_persons(proto::ImportPersonsRequest {
                    request_id: format!("busy-{batch}"),
                    rows,
                })
                .await
                .map(|r| r.into_inner().inserted)
        }));
    }
    // The writer is busy once a repeat of the visit's fee upload (answered by the
    // writer, changing nothing) gets no answer within 20 ms.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut probe = tonic::Request::new(proto::UploadFeesRequest {
            request_id: "fees-q".into(),
            institution_code: inst::NB_H3.into(),
            visit_id: v.visit_id.clone(),
            lines: vec![line("1", "NB-A", "1", "2000.00", "2000.00")],
        });
        probe.set_timeout(Duration::from_millis(20));
        match desk.client.upload_fees(probe).await {
            Ok(_) => {
                assert!(Instant::now() < deadline, "Ningbo's writer never got busy");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(e) if matches!(e.code(), Code::DeadlineExceeded | Code::Cancelled) => break,
            Err(e) => panic!("{e:?}"),
        }
    }
    let mut req = tonic::Request::new(desk.settle_req("settle-q", &v.visit_id, true));
    req.set_timeout(Duration::from_millis(100));
    let e = desk.client.settle(req).await.unwrap_err();
    assert!(
        matches!(e.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{e:?}"
    );
    for import in imports {
        assert_eq!(import.await.unwrap().unwrap(), 10_000);
    }
    // Under another request id (a desk that gave up on the first): settled at once —
    // a pending intent of the first would refuse it (FAILED_PRECONDITION).
    let s = desk.settle("settle-q2", &v.visit_id, true).await.unwrap();
    settled_2000_at_hz_rates(&s);
    assert_eq!(desk.list().await.len(), 1);
    let acc = accumulators(hz, &id, NB, inst::NB_H3).await;
    assert_eq!((acc.version, acc.pool_paid.as_str()), (1, "700.00"));
}

/// A Settle whose first price (from the visit's opening answer) Hangzhou refuses as
/// stale — the patient was treated in Wenzhou since — and which then cannot get a fresh
/// answer (Hangzhou stops answering in time) leaves nothing in doubt: Hangzhou rolled
/// back the refused commit, so the offline rule decides at once (Hangzhou refuses offline
/// settlement: the patient pays in full), and Hangzhou holds nothing of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_home_node_silent_after_refusing_a_stale_price_leaves_nothing_in_doubt() {
    let dir = tempfile::tempdir().unwrap();
    let hooks = TestHooks::default();
    let delay = Arc::clone(&hooks.eligibility_delay_ms);
    let prebound = yidi_node::prebound::Prebound::default();
    let metrics = prebound.loopback();
    let fed = three_cities(dir.path(), move |r, c| match r {
        HZ => c.hooks = hooks.clone(),
        NB => {
            c.metrics_listen = Some(metrics);
            c.prebound = prebound.clone();
        }
        _ => {}
    })
    .await;
    let (hz, nb, wz) = (fed.node(HZ), fed.node(NB), fed.node(WZ));
    let id = filed_employee(hz, "1983-03-03", 63, "1000.00", NB).await;
    filing(hz, &id, Ft::LongTermResident, WZ, &[], "2026-01-01").await;
    let mut desk = Desk::at(nb, inst::NB_H3).await;
    let v = billed_visit(&mut desk, "n", &id, HZ, "2000.00").await;
    let mut wz_desk = Desk::at(wz, inst::WZ_H2).await;
    let w = wz_desk
        .open("ov-w", &id, HZ, Vk::Outpatient, ADMITTED)
        .await
        .unwrap();
    wz_desk
        .fees(
            "fees-w",
            &w.visit_id,
            vec![line("1", "WZ-A", "1", "300.00", "300.00")],
        )
        .await
        .unwrap();
    let sw = wz_desk
        .settle("settle-w", &w.visit_id, false)
        .await
        .unwrap();
    assert_eq!(sw.state, "settled");

    // Hangzhou now answers eligibility only after Ningbo's peer timeout (0.8 s).
    delay.store(1500, Ordering::SeqCst);
    let s = desk.settle("settle-n", &v.visit_id, true).await.unwrap();
    refused_2000_paid_in_full(&s);
    // The path: the opening's answer priced and committed (refused as stale), the fresh
    // eligibility call timed out.
    let body = yidi_node::metrics::scrape(metrics).await.unwrap();
    let calls = |m: &str, code: Option<&str>| peer_calls(&body, HZ, m, code);
    assert_eq!(
        (
            calls("CommitClaim", None),
            calls("CommitClaim", Some("aborted")),
            calls("CheckEligibility", None),
            calls("CheckEligibility", Some("deadline_exceeded")),
        ),
        (1, 1, 2, 1),
        "{body}"
    );
    delay.store(0, Ordering::SeqCst);
    // The answer stands on repeat; Hangzhou holds only Wenzhou's claim, and nothing of
    // Ningbo's is owed.
    assert_eq!(desk.settle("settle-n", &v.visit_id, true).await.unwrap(), s);
    let acc = accumulators(hz, &id, NB, inst::NB_H3).await;
    assert_eq!(acc.version, 1, "{acc:?}");
    assert_eq!(account_balance(hz, &id).await, "1000.00");
    assert_eq!(ledgers(nb, hz, &s.period).await, (0, "0.00".into()));
    assert_eq!(outbox(nb).await.depth, 0);
}
