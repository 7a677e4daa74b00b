//! Request records (idempotency) kept for the idempotency window and then purged
//! (`yidi_node::store::retention`, issue #25 item 5): within the window a repeated
//! Settle replays its original answer; after it the repeat is refused with
//! ALREADY_EXISTS naming the settlement and is never settled twice (both nodes'
//! amounts exact to the fen); 冲正 by the original request id still reverses it.

use rusqlite::Connection;
use tonic::Code;
use yidi_common::period;
use yidi_node::store::retention::{PURGE_STEP, cutoff, purge_requests_step};
use yidi_tests::fixtures::{
    Desk, acc_tuple, account_balance, accumulators, billed_visit, filed_employee, inst,
    settled_2000_at_hz_rates, three_cities,
};

const HZ: &str = "330100";
const NB: &str = "330200";

/// Purges Ningbo's stopped store with `cut` as the window's start, to the end; returns
/// how many records went.
fn purge(root: &std::path::Path, cut: &str) -> u64 {
    let conn = Connection::open(root.join(NB).join("node.db")).unwrap();
    let mut total = 0;
    loop {
        let n = purge_requests_step(&conn, cut, PURGE_STEP).unwrap();
        total += n;
        if n < u64::from(PURGE_STEP) {
            return total;
        }
    }
}

fn requests_of(root: &std::path::Path, id: &str) -> u64 {
    let conn = Connection::open(root.join(NB).join("node.db")).unwrap();
    conn.query_row(
        "SELECT COUNT(*) FROM requests WHERE request_id = ?1",
        [id],
        |r| r.get(0),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settle_repeated_after_the_window_is_refused_and_never_settles_twice() {
    let dir = tempfile::tempdir().unwrap();
    let mut fed = three_cities(dir.path(), |_, _| {}).await;
    let id = filed_employee(fed.node(HZ), "1980-01-01", 41, "1000.00", NB).await;
    let mut desk = Desk::at(fed.node(NB), inst::NB_H3).await;
    let v = billed_visit(&mut desk, "r", &id, HZ, "2000.00").await;
    let settled = desk.settle("settle-r1", &v.visit_id, true).await.unwrap();
    settled_2000_at_hz_rates(&settled);
    let acc = accumulators(fed.node(HZ), &id, NB, inst::NB_H3).await;
    let balance = account_balance(fed.node(HZ), &id).await;
    assert_eq!(balance, "0.00");

    // The purge with the default window: every record here is younger; nothing goes,
    // and the repeat replays the original answer.
    fed.stop(NB).await;
    assert_eq!(purge(dir.path(), &cutoff(chrono::Utc::now(), 7)), 0);
    assert_eq!(requests_of(dir.path(), "settle-r1"), 1);
    fed.restart(NB, |_| {}).await;
    let mut desk = Desk::at(fed.node(NB), inst::NB_H3).await;
    assert_eq!(
        desk.settle("settle-r1", &v.visit_id, true).await.unwrap(),
        settled
    );

    // The window passed: the records go, the Settle's among them.
    fed.stop(NB).await;
    let later = period::format_ts(chrono::Utc::now() + chrono::Duration::seconds(1));
    assert!(purge(dir.path(), &later) >= 3, "open, fees and settle");
    assert_eq!(requests_of(dir.path(), "settle-r1"), 0);
    fed.restart(NB, |_| {}).await;
    let mut desk = Desk::at(fed.node(NB), inst::NB_H3).await;

    let e = desk
        .settle("settle-r1", &v.visit_id, true)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
    assert_eq!(
        e.message(),
        format!(
            "request_id \"settle-r1\" already took effect on {}: settlement {} (now settled); its \
             stored answer has passed this node's idempotency window and was removed, so the \
             request is not run again — read the settlement with GetSettlement, or settle anew \
             with a new request id",
            settled.settled_at, settled.settlement_id
        )
    );
    // Nothing changed at either node: one settlement, the same amounts to the fen.
    assert_eq!(desk.get(&settled.settlement_id).await.unwrap(), settled);
    assert_eq!(desk.list().await, vec![settled.clone()]);
    assert_eq!(
        acc_tuple(&accumulators(fed.node(HZ), &id, NB, inst::NB_H3).await),
        acc_tuple(&acc)
    );
    assert_eq!(account_balance(fed.node(HZ), &id).await, "0.00");
    // A new request id for the same visit is refused by the visit's state.
    let again = desk
        .settle("settle-r2", &v.visit_id, true)
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition, "{again:?}");
    assert_eq!(desk.list().await.len(), 1);

    // 冲正 by the original request id still finds the settlement: reversed, the
    // account and the pooled fund paid back at the home node.
    let r = desk.reverse("rev-r1", "settle-r1").await.unwrap();
    assert_eq!(r.outcome, "reversed", "{r:?}");
    let reversal = r.reversal.unwrap();
    assert_eq!(reversal.reverses, settled.settlement_id);
    assert_eq!(reversal.split.unwrap().fund_pay_sumamt, "-700.00");
}
