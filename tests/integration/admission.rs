//! Admission at a node's door: with its one Settle slot taken (the call waits on the
//! home node, whose writer is held), a new Settle is refused with RESOURCE_EXHAUSTED,
//! a message that says when to retry and the same hint in `retry-after-ms`, and leaves
//! nothing behind — the same request id later settles once, to the fen. What the door
//! never refuses goes through meanwhile: a repeat of a recorded request, a cancel, a
//! 冲正, and another node's CommitClaim to this node as home node.

use std::{sync::atomic::Ordering, time::Duration};

use tonic::Code;
use yidi_common::proto;
use yidi_node::{admission::AdmissionConfig, context::TestHooks};
use yidi_tests::{
    fixtures::{
        Desk, VISIT_OPENED, acc_tuple, account_balance, accumulators, billed_visit, fee_line,
        filed_employee, inst, settled_2000_at_hz_rates, three_cities,
    },
    harness::{Federation, TestNode},
    process::free_port,
};

/// The value of `name`'s series for `op` in a node's metrics text.
fn series(text: &str, name: &str, op: &str) -> Option<u64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| l.contains(&format!("op=\"{op}\"")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.trim().parse().ok())
}

/// Ningbo admits one Settle at a time and lets none wait; Hangzhou's writer can be
/// held (its hooks returned).
async fn one_slot_at_ningbo(
    root: &std::path::Path,
) -> (Federation, TestHooks, std::net::SocketAddr) {
    let hooks = TestHooks::default();
    let installed = hooks.clone();
    let metrics = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let fed = three_cities(root, move |r, c| match r {
        "330200" => {
            c.admission = AdmissionConfig {
                max_in_flight: 1,
                min_in_flight: 1,
                target: Duration::from_millis(10),
                queue_wait: Duration::ZERO,
            };
            c.metrics_listen = Some(metrics);
            // The held call waits on Hangzhou's writer for as long as the test needs.
            c.peer_timeout = Duration::from_secs(60);
        }
        "330100" => c.hooks = installed.clone(),
        _ => {}
    })
    .await;
    (fed, hooks, metrics)
}

/// Holds Hangzhou's writer and starts a Settle at Ningbo of `visit` (a Hangzhou
/// patient's): its CommitClaim waits there, holding Ningbo's one slot. Returns once
/// Ningbo's metrics show the slot taken.
async fn take_the_slot(
    nb: &TestNode,
    hooks: &TestHooks,
    metrics: std::net::SocketAddr,
    rid: &'static str,
    visit: String,
) -> tokio::task::JoinHandle<Result<proto::Settlement, tonic::Status>> {
    hooks.hold_store_writer.store(true, Ordering::SeqCst);
    let remote = TestNode::remote(nb.addr, "330200", nb.data_dir.clone());
    let held = tokio::spawn(async move {
        let mut desk = Desk::at(&remote, inst::NB_H3).await;
        desk.settle(rid, &visit, true).await
    });
    let until = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let text = yidi_node::metrics::scrape(metrics).await.expect("scrape");
        if series(&text, "yidi_admission_in_flight", "settle") == Some(1) {
            break;
        }
        assert!(
            std::time::Instant::now() < until,
            "slot never taken:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    held
}

/// The retry hint of a refusal: its metadata, which its message must state.
fn hint(refused: &tonic::Status) -> u64 {
    let ms: u64 = refused
        .metadata()
        .get("retry-after-ms")
        .expect("retry-after-ms metadata")
        .to_str()
        .expect("ascii")
        .parse()
        .expect("a number of milliseconds");
    assert!(
        refused
            .message()
            .ends_with(&format!("retry after {ms} ms with the same request_id")),
        "{refused:?}"
    );
    ms
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settle_at_a_full_door_is_refused_unchanged_then_settles_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (fed, hooks, metrics) = one_slot_at_ningbo(dir.path()).await;
    let (hz, nb) = (fed.node("330100"), fed.node("330200"));
    let held_id = filed_employee(hz, "1980-01-01", 1, "1000.00", "330200").await;
    let id = filed_employee(hz, "1981-01-01", 2, "1000.00", "330200").await;
    let mut desk = Desk::at(nb, inst::NB_H3).await;
    let held_visit = billed_visit(&mut desk, "h", &held_id, "330100", "2000.00").await;
    let v = billed_visit(&mut desk, "q", &id, "330100", "2000.00").await;
    let acc_before = accumulators(hz, &id, "330200", inst::NB_H3).await;

    let held = take_the_slot(nb, &hooks, metrics, "settle-held", held_visit.visit_id).await;
    let refused = desk
        .settle("settle-q", &v.visit_id, true)
        .await
        .expect_err("refused at the full door");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    // No call has finished here yet: the hint is the shortest one.
    assert_eq!(
        refused.message(),
        "node at capacity: 1 Settle calls in progress (limit 1) and 0 waiting; nothing was done — retry after 5 ms with the same request_id"
    );
    assert_eq!(hint(&refused), 5);
    // A PreSettle has a door of its own: not refused by the Settle calls' crowd.
    desk.pre_settle(&v.visit_id, true)
        .await
        .expect("pre-settle passes its own door");
    let text = yidi_node::metrics::scrape(metrics).await.expect("scrape");
    assert_eq!(
        series(&text, "yidi_admission_shed_total", "settle"),
        Some(1),
        "{text}"
    );
    assert_eq!(
        series(&text, "yidi_admission_admitted_total", "settle"),
        Some(1),
        "{text}"
    );

    // Nothing recorded for the refused call, here or at the home node.
    assert!(
        desk.list().await.iter().all(|s| s.visit_id != v.visit_id),
        "a refused settle recorded nothing"
    );
    hooks.hold_store_writer.store(false, Ordering::SeqCst);
    let held = held
        .await
        .expect("task")
        .expect("the held settle completes");
    assert_eq!(held.state, "settled");
    assert_eq!(
        acc_tuple(&accumulators(hz, &id, "330200", inst::NB_H3).await),
        acc_tuple(&acc_before)
    );
    assert_eq!(account_balance(hz, &id).await, "1000.00");

    // The same request id now settles, once, to the fen.
    let settled = desk
        .settle("settle-q", &v.visit_id, true)
        .await
        .expect("settles once the door has room");
    settled_2000_at_hz_rates(&settled);
    let again = desk
        .settle("settle-q", &v.visit_id, true)
        .await
        .expect("repeat");
    assert_eq!(again.settlement_id, settled.settlement_id);
    assert_eq!(
        desk.list()
            .await
            .iter()
            .filter(|s| s.visit_id == v.visit_id)
            .count(),
        1
    );
    assert_eq!(account_balance(hz, &id).await, "0.00");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeats_cancels_reversals_and_peer_commits_pass_a_full_door() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (fed, hooks, metrics) = one_slot_at_ningbo(dir.path()).await;
    let (hz, nb, wz) = (fed.node("330100"), fed.node("330200"), fed.node("330300"));
    let mut desk = Desk::at(nb, inst::NB_H3).await;
    // Settled before the door fills: a Hangzhou patient's (repeated later) and a
    // Wenzhou patient's (cancelled later: its reversal goes to Wenzhou, not held).
    let hz_id = filed_employee(hz, "1980-01-01", 1, "1000.00", "330200").await;
    let v = billed_visit(&mut desk, "r", &hz_id, "330100", "2000.00").await;
    let first = desk
        .settle("settle-r", &v.visit_id, true)
        .await
        .expect("settle");
    settled_2000_at_hz_rates(&first);
    let wz_id = filed_employee(wz, "1982-01-01", 3, "500.00", "330200").await;
    let w = billed_visit(&mut desk, "w", &wz_id, "330300", "300.00").await;
    let to_cancel = desk
        .settle("settle-w", &w.visit_id, false)
        .await
        .expect("settle");
    assert_eq!(to_cancel.state, "settled");
    // A Ningbo patient treated in Wenzhou: Wenzhou commits the claim here.
    let nb_id = filed_employee(nb, "1983-01-01", 4, "800.00", "330300").await;
    let mut wz_desk = Desk::at(wz, inst::WZ_H2).await;
    let away = wz_desk
        .open(
            "ov-a",
            &nb_id,
            "330200",
            proto::VisitKind::Outpatient,
            VISIT_OPENED,
        )
        .await
        .expect("open at Wenzhou");
    wz_desk
        .fees(
            "fees-a",
            &away.visit_id,
            vec![fee_line("1", "WZ-A", "1", "400.00", "400.00")],
        )
        .await
        .expect("fees at Wenzhou");
    // The call that takes the slot, and a new one the door refuses.
    let held_id = filed_employee(hz, "1984-01-01", 5, "1000.00", "330200").await;
    let held_visit = billed_visit(&mut desk, "h", &held_id, "330100", "2000.00").await;
    let new_id = filed_employee(hz, "1985-01-01", 6, "1000.00", "330200").await;
    let n = billed_visit(&mut desk, "n", &new_id, "330100", "2000.00").await;

    let held = take_the_slot(nb, &hooks, metrics, "settle-held", held_visit.visit_id).await;
    let refused = desk
        .settle("settle-n", &n.visit_id, true)
        .await
        .expect_err("a new settle is refused");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused
            .message()
            .starts_with("node at capacity: 1 Settle calls in progress (limit 1) and 0 waiting; nothing was done — retry after "),
        "{refused:?}"
    );
    hint(&refused);

    // A repeat of a recorded request: its stored answer, not a refusal.
    let again = desk
        .settle("settle-r", &v.visit_id, true)
        .await
        .expect("a recorded request's repeat passes");
    assert_eq!(again.settlement_id, first.settlement_id);
    // A cancel (a reversal at the home node) and a 冲正 of a request never received.
    let cancelled = desk
        .cancel("cancel-w", &to_cancel.settlement_id, "wrong patient")
        .await
        .expect("a cancel passes");
    assert_eq!(cancelled.state, "reversal");
    desk.reverse("rev-x", "never-sent")
        .await
        .expect("a 冲正 passes");
    // Another node's CommitClaim to this node as home node.
    let committed = wz_desk
        .settle("settle-a", &away.visit_id, true)
        .await
        .expect("Wenzhou's claim is committed here");
    assert_eq!(committed.state, "settled");
    let text = yidi_node::metrics::scrape(metrics).await.expect("scrape");
    assert_eq!(
        series(&text, "yidi_admission_shed_total", "settle"),
        Some(1),
        "{text}"
    );

    hooks.hold_store_writer.store(false, Ordering::SeqCst);
    let held = held
        .await
        .expect("task")
        .expect("the held settle completes");
    assert_eq!(held.state, "settled");
    assert!(
        desk.list().await.iter().all(|s| s.visit_id != n.visit_id),
        "the refused settle recorded nothing"
    );
    assert_eq!(account_balance(hz, &new_id).await, "1000.00");
}
