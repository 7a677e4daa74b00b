//! Cross-region settlement end to end on three in-process nodes (Hangzhou 330100,
//! Ningbo 330200, Wenzhou 330300): exact amounts at both nodes, idempotency, cancel.

use std::time::{Duration, Instant};

use tonic::Code;
use yidi_common::proto::{
    self, CatalogueClass as Cc, FilingType as Ft, HospitalLevel as Hl, InstitutionKind as Ik,
    InsuranceType as It, PersonType as Pt,
};
use yidi_tests::{
    fixtures::{filing, id_number, institution, item, person, publish_policies},
    harness::{Federation, TestNode},
};

const HZ: &str = "330100";
const NB: &str = "330200";
const WZ: &str = "330300";

async fn federation(root: &std::path::Path) -> Federation {
    let fed = Federation::start(root, &[HZ, NB, WZ]).await;
    for n in &fed.nodes {
        publish_policies(n).await;
    }
    let nb = fed.node(NB);
    institution(nb, "H33020001", Ik::Hospital, Hl::HospitalLevel3).await;
    institution(nb, "P33020001", Ik::Pharmacy, Hl::Ungraded).await;
    item(nb, "NB-A", Cc::A, "0", "").await;
    item(nb, "NB-B", Cc::B, "0.10", "").await;
    item(nb, "NB-C", Cc::C, "0", "").await;
    item(nb, "NB-CAP", Cc::A, "0", "12.00").await;
    fed
}

fn line(no: &str, code: &str, qty: &str, price: &str, amount: &str) -> proto::FeeLine {
    proto::FeeLine {
        line_no: no.into(),
        item_code: code.into(),
        quantity: qty.into(),
        unit_price: price.into(),
        amount: amount.into(),
        service_date: String::new(),
    }
}

async fn admit(
    nb: &TestNode,
    rid: &str,
    id: &str,
    kind: proto::VisitKind,
    inst: &str,
) -> proto::Visit {
    nb.hospital()
        .await
        .open_visit(proto::OpenVisitRequest {
            request_id: rid.into(),
            institution_code: inst.into(),
            id_number: id.into(),
            home_region: HZ.into(),
            visit_kind: kind as i32,
            external_visit_no: format!("EXT-{rid}"),
            admitted_at: "2026-03-10T09:00:00+08:00".into(),
            diagnosis_code: "I21.9".into(),
        })
        .await
        .expect("open visit")
        .into_inner()
}

async fn wait_outbox_empty(node: &TestNode) {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut admin = node.admin().await;
    loop {
        let s = admin
            .get_outbox(proto::GetOutboxRequest { list: 10 })
            .await
            .unwrap()
            .into_inner();
        if s.depth == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "outbox not drained: {s:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn balance(node: &TestNode, id: &str) -> String {
    node.admin()
        .await
        .get_person(proto::GetPersonRequest {
            id_number: id.into(),
            card_no: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .fields
        .unwrap()
        .account_balance
}

async fn digest(
    node: &TestNode,
    period: &str,
    counterparty: &str,
    side: &str,
) -> proto::PeriodDigestResponse {
    node.peer()
        .await
        .period_digest(proto::PeriodDigestRequest {
            period: period.into(),
            include_ids: true,
            counterparty: counterparty.into(),
            side: side.into(),
        })
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inpatient_cross_region_settle_and_cancel() {
    let dir = tempfile::tempdir().unwrap();
    let fed = federation(dir.path()).await;
    let (hz, nb) = (fed.node(HZ), fed.node(NB));
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

    // Identify by card: routed to the card's issuing region.
    let mut h = nb.hospital().await;
    let who = h
        .identify(proto::IdentifyRequest {
            institution_code: "H33020001".into(),
            card_no: format!("C{}", &id[6..]),
            card_region: HZ.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            who.id_number.as_str(),
            who.home_region.as_str(),
            who.eligible
        ),
        (id.as_str(), HZ, true)
    );
    assert_eq!(who.filing_type, Ft::ResettledRetiree as i32);
    // And by ID number alone: asked of every peer by hash.
    let who2 = h
        .identify(proto::IdentifyRequest {
            institution_code: "H33020001".into(),
            id_number: id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(who2.home_region, HZ);

    let v = admit(nb, "adm-1", &id, proto::VisitKind::Inpatient, "H33020001").await;
    let up = h
        .upload_fees(proto::UploadFeesRequest {
            request_id: "fees-1".into(),
            institution_code: "H33020001".into(),
            visit_id: v.visit_id.clone(),
            lines: vec![
                line("1", "NB-A", "1", "10000.00", "10000.00"),
                line("2", "NB-B", "4", "500.00", "2000.00"),
                line("3", "NB-C", "2", "250.00", "500.00"),
            ],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(up.total, "12500.00");
    assert_eq!(up.lines[1].class, Cc::B as i32);
    assert_eq!(up.lines[1].first_selfpay_ratio, "0.10");

    let settle = proto::SettleRequest {
        request_id: "settle-1".into(),
        institution_code: "H33020001".into(),
        visit_id: v.visit_id.clone(),
        use_account: true,
    };
    // Inpatient care settles at discharge.
    let early = h.settle(settle.clone()).await.unwrap_err();
    assert_eq!(early.code(), Code::FailedPrecondition, "{early:?}");
    h.close_visit(proto::CloseVisitRequest {
        request_id: "dis-1".into(),
        institution_code: "H33020001".into(),
        visit_id: v.visit_id.clone(),
        discharged_at: "2026-03-20T10:00:00+08:00".into(),
    })
    .await
    .unwrap();

    let pre = h.pre_settle(settle.clone()).await.unwrap().into_inner();
    let s = h.settle(settle.clone()).await.unwrap().into_inner();
    let split = s.split.clone().unwrap();
    assert_eq!(
        pre.split.unwrap().fund_pay_sumamt,
        split.fund_pay_sumamt,
        "pre-settle predicts the settlement"
    );
    // 12500 = 500 (class C) + 200 (10% first self-pay of class B) + 11800 in scope.
    // Deductible 800 (level 3, first admission); pooled 88% (retiree, level 3, resettled:
    // no cut) × (11800 − 800) = 9680.00. Personal 2820.00: account 1000.00, cash 1820.00.
    assert_eq!(s.state, "settled");
    assert_eq!(
        (
            split.medfee_sumamt.as_str(),
            split.fulamt_ownpay_amt.as_str(),
            split.preselfpay_amt.as_str(),
            split.inscp_scp_amt.as_str()
        ),
        ("12500.00", "500.00", "200.00", "11800.00")
    );
    assert_eq!(
        (
            split.act_pay_dedc.as_str(),
            split.hifp_pay.as_str(),
            split.fund_pay_sumamt.as_str()
        ),
        ("800.00", "9680.00", "9680.00")
    );
    assert_eq!(
        (
            split.psn_part_amt.as_str(),
            split.acct_pay.as_str(),
            split.psn_cash_pay.as_str()
        ),
        ("2820.00", "1000.00", "1820.00")
    );

    // Home node: account debited, accumulators applied.
    assert_eq!(balance(hz, &id).await, "0.00");
    let elig = hz
        .peer()
        .await
        .check_eligibility(proto::CheckEligibilityRequest {
            settle_date: String::new(),
            id_number: id.clone(),
            institution_code: "H33020001".into(),
            level: Hl::HospitalLevel3 as i32,
            visit_kind: proto::VisitKind::Inpatient as i32,
            visit_date: "2026-04-01".into(),
            treatment_region: NB.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let acc = elig.accumulators.unwrap();
    assert_eq!(
        (
            acc.pool_paid.as_str(),
            acc.inscope_total.as_str(),
            acc.admissions,
            acc.version
        ),
        ("9680.00", "11800.00", 1, 1)
    );

    // Same request again: the original answer. Same id, other payload: refused.
    assert_eq!(h.settle(settle.clone()).await.unwrap().into_inner(), s);
    let mut other = settle.clone();
    other.use_account = false;
    assert_eq!(
        h.settle(other).await.unwrap_err().code(),
        Code::AlreadyExists
    );
    // A second settlement of the same visit under a new id: refused.
    let mut again = settle.clone();
    again.request_id = "settle-2".into();
    assert_eq!(
        h.settle(again).await.unwrap_err().code(),
        Code::FailedPrecondition
    );

    // Both ledgers agree: Ningbo is owed 9680.00 by Hangzhou.
    let period = s.period.clone();
    let recv = digest(nb, &period, HZ, "receivable").await;
    let pay = digest(hz, &period, NB, "payable").await;
    assert_eq!((recv.count, recv.sum.as_str()), (1, "9680.00"));
    assert_eq!(
        (recv.count, &recv.sum, &recv.digest, &recv.claim_ids),
        (pay.count, &pay.sum, &pay.digest, &pay.claim_ids)
    );

    // Cancel: a reversal record; the home node gets it through the outbox.
    let c = h
        .cancel_settlement(proto::CancelSettlementRequest {
            request_id: "cancel-1".into(),
            institution_code: "H33020001".into(),
            settlement_id: s.settlement_id.clone(),
            reason: "wrong ward".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (c.state.as_str(), c.reverses.as_str()),
        ("reversal", s.settlement_id.as_str())
    );
    assert_eq!(c.split.unwrap().fund_pay_sumamt, "-9680.00");
    wait_outbox_empty(nb).await;
    assert_eq!(balance(hz, &id).await, "1000.00");
    let recv = digest(nb, &period, HZ, "receivable").await;
    let pay = digest(hz, &period, NB, "payable").await;
    assert_eq!((recv.count, recv.sum.as_str()), (2, "0.00"));
    assert_eq!((recv.sum, recv.digest), (pay.sum, pay.digest));
}
