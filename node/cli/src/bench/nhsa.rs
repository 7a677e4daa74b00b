//! `yidi bench --via nhsa`: what settling through the NHSA gateway costs beside gRPC.
//! The same kind of cross-region visits are prepared over gRPC, then half are settled
//! with HospitalService.Settle and half with NHSA 2207 envelopes posted to each
//! treatment node's gateway (HTTP/1.1, one kept-alive connection per client and node),
//! from the same number of clients; the process CPU of each half is divided by its
//! settlements.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use anyhow::bail;
use bytes::Bytes;
use futures::{StreamExt, stream};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use serde_json::{Value, json};

use super::{CpuPerOp, Ctx, Prepared, Stats, cpu_sample, person_id, prepare_many, yuan};

/// Which transports the bench settles through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Via {
    /// gRPC only.
    #[default]
    Grpc,
    /// gRPC and, in one more phase, the NHSA gateway beside it.
    Nhsa,
}

/// One transport's half: settlements made and CPU per settlement.
struct Half {
    ok: usize,
    failed: usize,
    cpu: Option<CpuPerOp>,
}

/// Settles `visits` from `--concurrency` clients with `settle` (client number, visit
/// number, visit → settled?), sampling the process CPU around it.
async fn run_half<F, Fut>(ctx: &Arc<Ctx>, visits: &[Prepared], settle: F) -> Half
where
    F: Fn(usize, usize, Prepared) -> Fut + Sync,
    Fut: Future<Output = bool>,
{
    let next = AtomicUsize::new(0);
    let ok = AtomicUsize::new(0);
    let failed = AtomicUsize::new(0);
    let workers = ctx.args.concurrency.max(1);
    let before = cpu_sample();
    stream::iter(0..workers)
        .for_each_concurrent(workers, |w| {
            let (next, ok, failed, settle) = (&next, &ok, &failed, &settle);
            async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(p) = visits.get(i) else { break };
                    if settle(w, i, p.clone()).await {
                        ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
        .await;
    let ok = ok.into_inner();
    Half {
        ok,
        failed: failed.into_inner(),
        cpu: CpuPerOp::between(before, ok),
    }
}

/// Posts one 2207 envelope on a kept-alive connection; settled (infcode 0)?
async fn post(conn: &mut SendRequest<Full<Bytes>>, body: Vec<u8>) -> anyhow::Result<bool> {
    conn.ready().await?;
    let req = hyper::Request::post(yidi_node::nhsa::PATH)
        .header("host", "yidi")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))?;
    let resp = conn.send_request(req).await?;
    let bytes = resp.into_body().collect().await?.to_bytes();
    let v: Value = serde_json::from_slice(&bytes)?;
    Ok(v["infcode"] == json!(0))
}

async fn connect(addr: SocketAddr) -> anyhow::Result<SendRequest<Full<Bytes>>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let (send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    Ok(send)
}

/// The phase: prints both halves and the ratio; the JSON of the result.
pub(super) async fn compare(ctx: &Arc<Ctx>) -> anyhow::Result<Value> {
    let gateways: HashMap<String, SocketAddr> = ctx.args.nhsa_gateways.iter().cloned().collect();
    if gateways.is_empty() {
        bail!("--via nhsa needs the in-process nodes (their gateways); it cannot drive --node");
    }
    let per_half = ctx.args.count.unwrap_or(1_000).max(1);
    println!(
        "\nsettle via gRPC and via the NHSA gateway ({per_half} cross-region settlements each):"
    );
    let (visits, _prep) = prepare_many(ctx, 2 * per_half, Some(true), "nx").await;
    let (grpc_visits, nhsa_visits) = visits.split_at(visits.len() / 2);

    let grpc = run_half(ctx, grpc_visits, |w, i, p| {
        let ctx = Arc::clone(ctx);
        async move {
            let mut stats = Stats::default();
            let rid = format!("ng{}-{i}", ctx.run);
            ctx.settle(&mut stats, w, &rid, &p, false).await.is_some()
        }
    })
    .await;

    // One connection per client and treatment node, opened before the clock starts.
    let mut conns = Vec::new();
    for _ in 0..ctx.args.concurrency.max(1) {
        let mut mine = HashMap::new();
        for t in &ctx.targets {
            if let Some(addr) = gateways.get(&t.region) {
                mine.insert(
                    t.region.clone(),
                    tokio::sync::Mutex::new(connect(*addr).await?),
                );
            }
        }
        conns.push(mine);
    }
    let conns = &conns;
    let nhsa = run_half(ctx, nhsa_visits, |w, i, p| {
        let ctx = Arc::clone(ctx);
        async move {
            let treatment = &ctx.targets[p.treatment].region;
            let home = &ctx.targets[p.home].region;
            let Some(conn) = conns[w].get(treatment) else { return false };
            let msgid = format!("nx{}-{i}", ctx.run);
            let body = json!({
                "infno": "2207", "msgid": msgid, "mdtrtarea_admvs": treatment, "insuplc_admdvs": home,
                "recer_sys_code": "YBXT", "infver": "V1.0", "opter_type": "1", "opter": "bench",
                "opter_name": "bench", "inf_time": "", "fixmedins_code": p.institution,
                "fixmedins_name": "", "sign_no": "",
                "input": {"data": {
                    "psn_no": person_id(home, p.person), "mdtrt_cert_type": "02",
                    "med_type": if p.kind == super::Kind::Inpatient { "21" } else { "11" },
                    "medfee_sumamt": yidi_node::nhsa::envelope::number(&yuan(p.total_fen)),
                    "psn_setlway": "01", "mdtrt_id": p.visit_id,
                    "acct_used_flag": if p.person.is_multiple_of(2) { "1" } else { "0" },
                    "insutype": "310",
                }},
            });
            let mut c = conn.lock().await;
            post(&mut c, body.to_string().into_bytes()).await.unwrap_or(false)
        }
    })
    .await;

    let show = |name: &str, h: &Half| {
        let cpu = h
            .cpu
            .as_ref()
            .map_or_else(|| "n/a (no /proc)".to_owned(), CpuPerOp::text);
        println!(
            "  {name:<16} {} settled, {} failed; CPU per settlement {cpu}",
            h.ok, h.failed
        );
    };
    show("gRPC", &grpc);
    show("NHSA gateway", &nhsa);
    let ratio = match (&grpc.cpu, &nhsa.cpu) {
        (Some(g), Some(n)) if g.total_ms > 0.0 => Some(n.total_ms / g.total_ms),
        _ => None,
    };
    if let Some(r) = ratio {
        println!(
            "  NHSA / gRPC CPU per settlement: {r:.3} ({:+.1} %; target at most +25 %)",
            (r - 1.0) * 100.0
        );
    }
    Ok(json!({
        "grpc": {"settled": grpc.ok, "failed": grpc.failed, "cpu_ms_per_settlement": grpc.cpu.as_ref().map(|c| c.total_ms)},
        "nhsa": {"settled": nhsa.ok, "failed": nhsa.failed, "cpu_ms_per_settlement": nhsa.cpu.as_ref().map(|c| c.total_ms)},
        "ratio": ratio,
    }))
}
