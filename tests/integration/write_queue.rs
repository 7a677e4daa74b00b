//! Back-pressure of a node's store writer: a Settle that meets a full write queue is
//! refused with RESOURCE_EXHAUSTED after the short wait, nothing is recorded at either
//! node, the node counts the refusal, and the same request settles once (and only once)
//! when the writer has caught up.

use std::time::Duration;

use tonic::Code;
use yidi_common::proto;
use yidi_node::context::TestHooks;
use yidi_tests::{
    fixtures::{
        Desk, acc_tuple, account_balance, accumulators, billed_visit, filed_employee, inst,
        settled_2000_at_hz_rates, three_cities,
    },
    harness::{HeldWriter, TestNode},
};

/// The value of an unlabelled-but-region series in a node's metrics text.
fn series(text: &str, name: &str, region: &str) -> Option<u64> {
    let prefix = format!("{name}{{region=\"{region}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
}

/// A write the held writer does not run: it holds the writer or waits in its queue.
async fn filler(node: &TestNode, n: u32) -> Result<(), tonic::Status> {
    node.admin()
        .await
        .upsert_catalogue_item(proto::UpsertCatalogueItemRequest {
            request_id: format!("filler-{n}"),
            item: Some(proto::CatalogueItem {
                code: format!("NB-FILL-{n}"),
                name: format!("filler {n}"),
                category: proto::ItemCategory::Drug as i32,
                class: proto::CatalogueClass::A as i32,
                first_selfpay_ratio: "0".into(),
                price_cap: String::new(),
                unit: "unit".into(),
                valid_from: "2024-01-01".into(),
                valid_to: String::new(),
                free_of_charge: false,
            }),
        })
        .await
        .map(drop)
}

/// Three cities where `region`'s writer queue holds one request and a full queue waits
/// 100 ms, with test hooks and a metrics listener there.
async fn tiny_queue_at(
    root: &std::path::Path,
    region: &'static str,
) -> (
    yidi_tests::harness::Federation,
    TestHooks,
    std::net::SocketAddr,
) {
    let hooks = TestHooks::default();
    let installed = hooks.clone();
    let prebound = yidi_node::prebound::Prebound::default();
    let metrics = prebound.loopback();
    let fed = three_cities(root, move |r, c| {
        if r == region {
            c.hooks = installed.clone();
            c.write_queue_capacity = 1;
            c.write_queue_wait = Duration::from_millis(100);
            c.metrics_listen = Some(metrics);
            c.prebound = prebound.clone();
        }
    })
    .await;
    (fed, hooks, metrics)
}

/// Holds `node`'s writer and fills its queue with two fillers (one held, one queued),
/// returning when the writer holds a request and its metrics show the queue full: only
/// then is every later write refused (a depth of 1 alone can be a request sent but not
/// yet taken, and the next write would take the place behind it and wait forever).
async fn hold_and_fill(
    node: &TestNode,
    region: &'static str,
    hooks: &TestHooks,
    metrics: std::net::SocketAddr,
) -> (
    HeldWriter,
    [tokio::task::JoinHandle<Result<(), tonic::Status>>; 2],
) {
    let held = HeldWriter::hold(hooks);
    let fills = [1, 2].map(|n| {
        let remote = TestNode::remote(node.addr, region, node.data_dir.clone());
        tokio::spawn(async move { filler(&remote, n).await })
    });
    let until = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        // Holding first, then the depth: once the writer holds a request it takes no
        // other, so a full queue seen after that stays full (seen before, the request
        // counted could be the one the writer was about to take).
        let holding = held.holding();
        let text = yidi_node::metrics::scrape(metrics).await.expect("scrape");
        if holding && series(&text, "yidi_store_write_queue_depth", region) == Some(1) {
            break;
        }
        assert!(
            std::time::Instant::now() < until,
            "queue never filled:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (held, fills)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settle_meeting_a_full_write_queue_is_refused_unchanged_then_settles_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (fed, hooks, metrics) = tiny_queue_at(dir.path(), "330200").await;
    let (hz, nb) = (fed.node("330100"), fed.node("330200"));
    let id = filed_employee(hz, "1980-01-01", 1, "1000.00", "330200").await;
    let mut desk = Desk::at(nb, inst::NB_H3).await;
    let v = billed_visit(&mut desk, "q", &id, "330100", "2000.00").await;
    let acc_before = accumulators(hz, &id, "330200", inst::NB_H3).await;

    // Hold the writer: the first filler is taken and waits, the second fills the queue.
    let (held, [fill_1, fill_2]) = hold_and_fill(nb, "330200", &hooks, metrics).await;

    let refused = desk
        .settle("settle-q", &v.visit_id, true)
        .await
        .expect_err("refused while the queue is full");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert_eq!(
        refused.message(),
        "node overloaded: its store's write queue stayed full (capacity 1) for 100 ms; nothing was written — retry after a short pause with the same request_id"
    );
    let text = yidi_node::metrics::scrape(metrics).await.expect("scrape");
    assert_eq!(
        series(&text, "yidi_store_writes_rejected_total", "330200"),
        Some(1),
        "{text}"
    );

    // Nothing changed: no settlement here, the home node's accumulators and account as
    // they were.
    drop(held);
    fill_1
        .await
        .expect("filler task")
        .expect("the held write runs once released");
    fill_2
        .await
        .expect("filler task")
        .expect("the queued write runs once released");
    assert!(
        desk.list().await.is_empty(),
        "a refused settle recorded nothing"
    );
    assert_eq!(
        acc_tuple(&accumulators(hz, &id, "330200", inst::NB_H3).await),
        acc_tuple(&acc_before)
    );
    assert_eq!(account_balance(hz, &id).await, "1000.00");

    // The same request id now settles, once: its repeat gets the same answer.
    let settled = desk
        .settle("settle-q", &v.visit_id, true)
        .await
        .expect("settles once the writer caught up");
    settled_2000_at_hz_rates(&settled);
    let again = desk
        .settle("settle-q", &v.visit_id, true)
        .await
        .expect("repeat");
    assert_eq!(again.settlement_id, settled.settlement_id);
    assert_eq!(desk.list().await.len(), 1);
    assert_eq!(account_balance(hz, &id).await, "0.00");
}

/// A home node whose write queue is full refuses CommitClaim as not committed: the
/// treatment node knows nothing is in doubt, settles nothing offline (the home node is
/// up), tells the hospital to retry, and the retry settles once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_home_node_with_a_full_write_queue_makes_no_claim_provisional() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (fed, hooks, metrics) = tiny_queue_at(dir.path(), "330100").await;
    let (hz, nb) = (fed.node("330100"), fed.node("330200"));
    let id = filed_employee(hz, "1980-01-01", 1, "1000.00", "330200").await;
    let mut desk = Desk::at(nb, inst::NB_H3).await;
    let v = billed_visit(&mut desk, "q", &id, "330100", "2000.00").await;
    let acc_before = accumulators(hz, &id, "330200", inst::NB_H3).await;

    // Hold the home node's writer and fill its queue.
    let (held, [fill_1, fill_2]) = hold_and_fill(hz, "330100", &hooks, metrics).await;

    let refused = desk
        .settle("settle-h", &v.visit_id, true)
        .await
        .expect_err("refused while the home node is overloaded");
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert_eq!(
        refused.message(),
        "home node 330100 is overloaded (node overloaded: its store's write queue stayed full (capacity 1) for 100 ms; nothing was written — retry after a short pause with the same request_id); nothing was committed; the settlement was not made — retry later"
    );
    // Nothing provisional, nothing settled: the home node was up and committed nothing.
    for s in desk.list().await {
        assert!(
            !matches!(s.state.as_str(), "provisional" | "settled"),
            "{s:?}"
        );
    }

    drop(held);
    // The fillers only keep the queue full; either may itself have been refused (the
    // home node's own audit entries of the set-up's reads share its writer).
    let _ = fill_1.await.expect("filler task");
    let _ = fill_2.await.expect("filler task");
    assert_eq!(
        acc_tuple(&accumulators(hz, &id, "330200", inst::NB_H3).await),
        acc_tuple(&acc_before)
    );
    assert_eq!(account_balance(hz, &id).await, "1000.00");

    // The hospital retries (a new request id: the refused one is answered as failed)
    // and the claim settles once at the home node's rates.
    let settled = desk
        .settle("settle-h2", &v.visit_id, true)
        .await
        .expect("settles once the home node caught up");
    settled_2000_at_hz_rates(&settled);
    assert_eq!(account_balance(hz, &id).await, "0.00");
}
