//! The NHSA gateway's own guarantees beside the transactions of `nhsa`: the declared
//! total checked by the settlement itself, x-tif replay protection, and a graceful
//! stop. Same world and HIS client as `nhsa` (real HTTPS, mutual TLS).

use serde_json::{Value, json};
use yidi_tests::fixtures::inst;

use super::nhsa::{
    HZ, His, amt, cst_now_minus_hours, feedetail, list_all, outpatient_visit, refused, world,
    world_with,
};

/// 2201 and 2204 (the 68.00 bill) for `id`; the visit's mdtrt_id.
async fn billed_visit(his: &mut His, id: &str, visit_no: &str) -> String {
    let visit = outpatient_visit(his, id, visit_no).await;
    his.ok("2204", HZ, json!({"feedetail": feedetail(&visit, id)}))
        .await;
    visit
}

fn settle_input(id: &str, visit: &str, total: Value) -> Value {
    json!({"data": {"psn_no": id, "mdtrt_cert_type": "02", "mdtrt_cert_no": id, "med_type": "11",
        "medfee_sumamt": total, "psn_setlway": "01", "mdtrt_id": visit, "acct_used_flag": "0",
        "insutype": "310"}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_total_other_than_the_settled_bill_is_refused_by_the_settlement() {
    let dir = tempfile::tempdir().expect("tempdir");
    let w = world(dir.path()).await;
    let id = w.ids.0.clone();
    let mut his = w.his(inst::NB_H3);
    let desk = w.desk(inst::NB_H3).await;
    let visit = billed_visit(&mut his, &id, "MZ0100").await;

    // The HIS quoted 68.00, then a fourth line (7.50) was uploaded: a 2207 still
    // declaring 68 is refused by the Settle's own reading of the bill (75.50).
    let (_, pre) = his
        .ok("2206", HZ, settle_input(&id, &visit, json!(68)))
        .await;
    assert_eq!(amt(&pre["setlinfo"]["medfee_sumamt"]), "68.00");
    let t = cst_now_minus_hours(1);
    his.ok(
        "2204",
        HZ,
        json!({"feedetail": [{"feedetl_sn": "F4", "mdtrt_id": visit, "psn_no": id,
            "fee_ocur_time": t, "med_list_codg": "NB-A", "det_item_fee_sumamt": 7.5, "cnt": 1,
            "pric": 7.5}]}),
    )
    .await;
    let msgid = his.msgid();
    let v = his
        .call("2207", &msgid, HZ, settle_input(&id, &visit, json!(68)))
        .await;
    let msg = refused(&v, "input.data.medfee_sumamt");
    assert_eq!(
        msg,
        format!(
            "医疗费总额（input.data.medfee_sumamt）与上传费用明细总额不一致，未做任何结算；input.data.medfee_sumamt: 68 differs from the total 75.50 of the fee lines uploaded for visit {visit}; nothing was settled"
        )
    );
    let listed = desk
        .client
        .clone()
        .list_settlements(list_all())
        .await
        .expect("list")
        .into_inner()
        .settlements;
    assert!(
        listed.iter().all(|s| s.visit_id != visit),
        "nothing settled: {listed:?}"
    );

    // The same msgid declaring another total is another request: the refusal recorded
    // nothing, so it settles — the bill it declares.
    let v = his
        .call("2207", &msgid, HZ, settle_input(&id, &visit, json!(75.50)))
        .await;
    assert_eq!(v["infcode"], json!(0), "{v}");
    assert_eq!(amt(&v["output"]["setlinfo"]["medfee_sumamt"]), "75.50");
    // And the settled request's msgid with the old total again: a different request,
    // refused, nothing changes.
    let again = his
        .call("2207", &msgid, HZ, settle_input(&id, &visit, json!(68)))
        .await;
    refused(&again, "msgid");
    let listed = desk
        .client
        .clone()
        .list_settlements(list_all())
        .await
        .expect("list")
        .into_inner()
        .settlements;
    let mine: Vec<_> = listed.iter().filter(|s| s.visit_id == visit).collect();
    assert_eq!(mine.len(), 1, "{mine:?}");
    assert_eq!(
        mine[0].split.as_ref().expect("split").medfee_sumamt,
        "75.50"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_x_tif_nonce_is_refused_and_changes_nothing() {
    let keys = yidi_node::nhsa::TifKeys {
        paasid: "his01".into(),
        secret: "the-province-s-secret".into(),
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let configured = keys.clone();
    let w = world_with(dir.path(), move |c| c.nhsa_tif = Some(configured.clone())).await;
    let id = w.ids.0.clone();
    let mut his = w.his(inst::NB_H3);
    his.tif = Some(keys);
    let mut desk = w.desk(inst::NB_H3).await;
    let visit = billed_visit(&mut his, &id, "MZ0200").await;

    // 2207, signed: settled.
    let (_, out) = his
        .ok("2207", HZ, settle_input(&id, &visit, json!(68)))
        .await;
    let setl_id = out["setlinfo"]["setl_id"]
        .as_str()
        .expect("setl_id")
        .to_owned();
    let captured = his.signed.lock().expect("signed").clone();
    let nonce = captured
        .iter()
        .find(|(k, _)| k == "x-tif-nonce")
        .expect("nonce")
        .1
        .clone();
    let replayed = format!(
        "字段（x-tif-nonce）已在 300 秒内使用过（重放的请求），未做任何处理；x-tif-nonce \"{nonce}\" was already used within the last 300 s (a replayed request); nothing was done — sign every request with a fresh nonce"
    );

    // A 2208 cancelling it under the captured headers (the signature covers no body):
    // refused, the settlement stays settled.
    let msgid = his.msgid();
    let cancel = his.envelope(
        "2208",
        &msgid,
        HZ,
        json!({"data": {"setl_id": setl_id, "mdtrt_id": visit, "psn_no": id}}),
    );
    let (status, v) = his
        .post_with(
            yidi_node::nhsa::PATH,
            serde_json::to_vec(&cancel).expect("json"),
            &captured,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(refused(&v, "x-tif-nonce"), replayed);
    let got = desk
        .client
        .get_settlement(yidi_common::proto::GetSettlementRequest {
            institution_code: inst::NB_H3.into(),
            settlement_id: setl_id.clone(),
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(got.state, "settled", "the replay changed nothing");

    // The same cancellation with a fresh signature is carried out: only the nonce was
    // refused.
    let (status, v) = his
        .post_raw(
            yidi_node::nhsa::PATH,
            serde_json::to_vec(&cancel).expect("json"),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(v["infcode"], json!(0), "{v}");
    // And its headers replayed with its own body: refused too.
    let fresh = his.signed.lock().expect("signed").clone();
    let (_, v) = his
        .post_with(
            yidi_node::nhsa::PATH,
            serde_json::to_vec(&cancel).expect("json"),
            &fresh,
        )
        .await;
    refused(&v, "x-tif-nonce");
}

/// Ningbo's store write queue depth, from its metrics.
async fn write_queue_depth(metrics: std::net::SocketAddr) -> Option<u64> {
    let text = yidi_node::metrics::scrape(metrics).await.expect("scrape");
    text.lines()
        .find(|l| l.starts_with("yidi_store_write_queue_depth{"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_shutdown_the_gateway_answers_what_is_in_flight_then_refuses_connections() {
    use std::time::Duration;
    let hooks = yidi_node::context::TestHooks::default();
    let installed = hooks.clone();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut w = world_with(dir.path(), move |c| c.hooks = installed.clone()).await;
    let (a, b) = w.ids.clone();
    let mut his = w.his(inst::NB_H3);
    let visits = [
        (a.clone(), billed_visit(&mut his, &a, "MZ0301").await),
        (b.clone(), billed_visit(&mut his, &b, "MZ0302").await),
    ];

    // Hold Ningbo's writer; two 2207s go out: one is taken by the writer and waits, the
    // other queues behind it. Both are in flight inside the node.
    let held = yidi_tests::harness::HeldWriter::hold(&hooks);
    let his = std::sync::Arc::new(his);
    let in_flight: Vec<_> = visits
        .iter()
        .enumerate()
        .map(|(i, (id, visit))| {
            let his = std::sync::Arc::clone(&his);
            let body = his.envelope(
                "2207",
                &format!("SHUTDOWN{i}"),
                HZ,
                settle_input(id, visit, json!(68)),
            );
            tokio::spawn(async move {
                his.post_raw(
                    yidi_node::nhsa::PATH,
                    serde_json::to_vec(&body).expect("json"),
                )
                .await
            })
        })
        .collect();
    let until = std::time::Instant::now() + Duration::from_secs(10);
    // Holding first, then the depth (see `write_queue::hold_and_fill`).
    while !(held.holding() && write_queue_depth(w.metrics).await == Some(1)) {
        assert!(
            std::time::Instant::now() < until,
            "the settles never queued"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Ningbo is told to stop: its gateway stops accepting (connections are refused)
    // while the two requests are still held.
    let nb = w
        .fed
        .nodes
        .iter()
        .position(|n| n.region.as_str() == super::nhsa::NB)
        .expect("Ningbo");
    w.fed.nodes[nb].signal_stop();
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(w.gateway).await.is_ok() {
        assert!(
            std::time::Instant::now() < until,
            "the gateway still accepts connections after the stop"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        in_flight.iter().all(|t| !t.is_finished()),
        "both requests are still held"
    );

    // Released: each gets its full answer before the node exits.
    drop(held);
    for (t, (_, visit)) in in_flight.into_iter().zip(&visits) {
        let (status, v) = t.await.expect("in-flight request");
        assert_eq!(status, 200);
        assert_eq!(v["infcode"], json!(0), "{v}");
        assert_eq!(v["output"]["setlinfo"]["mdtrt_id"], json!(visit));
        assert_eq!(amt(&v["output"]["setlinfo"]["medfee_sumamt"]), "68.00");
        assert!(v["output"]["setlinfo"]["setl_id"].is_string(), "{v}");
    }
    w.fed.nodes.remove(nb).stop().await;
}
