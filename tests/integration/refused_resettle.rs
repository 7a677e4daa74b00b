//! A visit whose settlement was `refused` (home node down, its policy refuses offline
//! settlement) is settled again the way the refusal message says: `Settle` is refused
//! with FAILED_PRECONDITION naming CancelSettlement (not 冲正) and changes nothing;
//! after the cancel the visit settles at the home node's rates (issue #21).

use tonic::Code;
use yidi_tests::fixtures::{
    Desk, account_balance, billed_visit, filed_employee, inst, three_cities,
};

const HZ: &str = "330100";
const NB: &str = "330200";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_settlement_is_cancelled_then_settled_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut fed = three_cities(dir.path(), |_, _| {}).await;
    let id = filed_employee(fed.node(HZ), "1980-01-01", 40, "1000.00", NB).await;
    let mut desk = Desk::at(fed.node(NB), inst::NB_H3).await;
    let v = billed_visit(&mut desk, "1", &id, HZ, "2000.00").await;
    // Pre-settled while Hangzhou answers, so that its policy is cached for the
    // offline decision.
    desk.pre_settle(&v.visit_id, true).await.unwrap();
    fed.stop(HZ).await;
    let refused = desk.settle("settle-1", &v.visit_id, true).await.unwrap();
    assert_eq!(refused.state, "refused", "{refused:?}");
    fed.restart(HZ, |_| {}).await;
    let mut desk = Desk::at(fed.node(NB), inst::NB_H3).await;

    // Settling again is refused and says what works: cancel, not 冲正.
    let e = desk
        .settle("settle-2", &v.visit_id, true)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert_eq!(
        e.message(),
        format!(
            "visit {} is already settled; cancel its settlement (CancelSettlement: yidi hospital \
             cancel SETTLEMENT_ID; a refused one too) before settling it again",
            v.visit_id
        )
    );
    assert_eq!(desk.get(&refused.settlement_id).await.unwrap(), refused);
    // (a refused record is not listed, only fetched: docs/integrator.md)
    assert_eq!(desk.list().await, vec![]);
    assert_eq!(account_balance(fed.node(HZ), &id).await, "1000.00");

    // The cancel the message names works, and then the visit settles at Hangzhou's
    // rates: 2000.00, deductible 1000.00, pooled 70% of 1000.00 = 700.00.
    let reversal = desk
        .cancel("cancel-1", &refused.settlement_id, "home node back")
        .await
        .unwrap();
    assert_eq!(reversal.reverses, refused.settlement_id);
    assert_eq!(
        desk.get(&refused.settlement_id).await.unwrap().state,
        "cancelled"
    );
    let s = desk.settle("settle-3", &v.visit_id, true).await.unwrap();
    assert_eq!(s.state, "settled", "{s:?}");
    let split = s.split.unwrap();
    assert_eq!(
        (split.medfee_sumamt.as_str(), split.fund_pay_sumamt.as_str()),
        ("2000.00", "700.00")
    );
}
