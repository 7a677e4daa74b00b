//! `yidi bench --freeze-entries N`: settle latency while a clearing round freezes and
//! clears a period of N ledger entries at two nodes (issue #25, item 6: no writer job
//! may hold the writer more than ~50 ms, whatever the size of the period).
//!
//! Before the in-process nodes start, N matching entries of the previous month are
//! written straight into Hangzhou's store (receivable from Ningbo) and Ningbo's
//! (payable to Hangzhou), so that the round reconciles; a coordinator is started in
//! this process; during the load phase, after `--freeze-after` seconds, a round of that
//! month is opened, run, paid and cleared through the real CoordinatorService, and the
//! bench waits until both nodes have marked every entry cleared. The Settle calls of
//! the load phase are kept with their time, and their percentiles printed for before,
//! during and after the round, beside each node's longest writer transaction.

// Rates and shares of a benchmark; money never passes through floats.
#![allow(clippy::float_arithmetic)]

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Mutex,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tonic::transport::Channel;
use yidi_common::{
    proto::{self, coordinator_service_client::CoordinatorServiceClient},
    region::RegionCode,
};

/// The regions whose stores get the entries: Hangzhou is owed by Ningbo.
const CREDITOR: &str = "330100";
const DEBTOR: &str = "330200";

/// Settle calls of the load phase with the moment each ended.
pub struct Timeline {
    t0: Instant,
    calls: Mutex<Vec<(Duration, u64)>>,
}

impl Timeline {
    #[must_use]
    pub fn new() -> Self {
        Self {
            t0: Instant::now(),
            calls: Mutex::new(Vec::new()),
        }
    }

    /// One Settle call that took `micros` and ended now.
    pub fn record(&self, micros: u64) {
        let at = self.t0.elapsed();
        if let Ok(mut c) = self.calls.lock() {
            c.push((at, micros));
        }
    }

    /// Time since the timeline began.
    #[must_use]
    pub fn elapsed(&self) -> Duration {
        self.t0.elapsed()
    }

    fn between(&self, from: Duration, to: Duration) -> Histogram<u64> {
        let mut h = super::histogram();
        if let Ok(c) = self.calls.lock() {
            for &(at, us) in c.iter() {
                if at >= from && at < to {
                    let _ = h.record(us.clamp(1, super::MAX_MICROS));
                }
            }
        }
        h
    }
}

impl Default for Timeline {
    fn default() -> Self {
        Self::new()
    }
}

/// The month before the current one: past, so a round may clear it.
fn last_month() -> String {
    use chrono::Datelike;
    let today = chrono::Utc::now()
        .with_timezone(&yidi_common::period::cst())
        .date_naive();
    let first = today.with_day(1).unwrap_or(today);
    (first - chrono::Duration::days(1))
        .format("%Y-%m")
        .to_string()
}

/// Writes `n` matching entries of last month into the creditor's and the debtor's
/// stores under `root` (the nodes are not running yet), 1.00 to 9.99 yuan each.
pub fn seed(root: &Path, n: u64) -> anyhow::Result<String> {
    let period = last_month();
    for (region, side, counterparty) in [
        (CREDITOR, "receivable", DEBTOR),
        (DEBTOR, "payable", CREDITOR),
    ] {
        let dir = root.join(region);
        std::fs::create_dir_all(&dir)?;
        let started = Instant::now();
        let conn = yidi_node::store::Store::open_connection(&dir, region)
            .with_context(|| format!("opening the store of {region} to seed its ledger"))?;
        let already: u64 = conn.query_row(
            "SELECT COUNT(*) FROM ledger WHERE period = ?1 AND entry_id LIKE 'FRZ-%'",
            [&period],
            |r| r.get(0),
        )?;
        if already < n {
            conn.execute_batch("BEGIN")?;
            conn.execute(
                "WITH RECURSIVE i(x) AS (SELECT ?1 UNION ALL SELECT x + 1 FROM i WHERE x + 1 < ?2) \
                 INSERT OR IGNORE INTO ledger (entry_id, side, counterparty, period, kind, claim_id, amount_fen, created_at) \
                 SELECT printf('FRZ-%010d', x), ?3, ?4, ?5, 'claim', printf('FRZ-%010d', x), 100 + x % 900, ?6 FROM i",
                rusqlite::params![
                    already,
                    n,
                    side,
                    counterparty,
                    period,
                    format!("{period}-15T12:00:00.000+08:00")
                ],
            )?;
            conn.execute_batch("COMMIT")?;
            conn.pragma_update(None, "wal_checkpoint", "TRUNCATE")?;
        }
        eprintln!(
            "  {region}: {n} ledger entries of {period} ({side}) in {:.1?}",
            started.elapsed()
        );
    }
    Ok(period)
}

/// An in-process coordinator over the nodes of `peers_file`; stopped when dropped.
pub struct Coordinator {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// Starts the coordinator (330000) with the bench's nodes as participants.
pub async fn coordinator(root: &Path, peers_file: PathBuf) -> anyhow::Result<Coordinator> {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    let mut c = yidi_node::coordinator::CoordinatorConfig::new(
        RegionCode::parse("330000", "region")?,
        root.join("coordinator"),
        peers_file,
    );
    c.listen = addr;
    // The bench drives the round; the background loop would only race it.
    c.run_interval = Duration::from_secs(3600);
    c.call_timeout = Duration::from_secs(30);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(yidi_node::coordinator::serve(
        l,
        async {
            let _ = stopped.await;
        },
        c,
    ));
    Ok(Coordinator {
        addr,
        stop: Some(stop),
    })
}

/// When the round's steps happened, from the timeline's start.
#[derive(Debug, Clone, Default)]
pub struct RoundTimes {
    pub opened: Duration,
    pub confirmed: Duration,
    pub settled: Duration,
    /// Both nodes' entries all marked cleared.
    pub tidied: Duration,
    pub round_id: String,
}

fn rr(id: &str) -> proto::RoundRequest {
    proto::RoundRequest {
        request_id: String::new(),
        round_id: id.into(),
    }
}

/// Entries a round still holds in a node's store (not yet marked cleared).
fn held(db: &Path, round: &str) -> anyhow::Result<u64> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    Ok(conn.query_row(
        "SELECT COUNT(*) FROM ledger WHERE round_id = ?1",
        [round],
        |r| r.get(0),
    )?)
}

/// Opens, runs, pays and clears a round of `period` after `after`; returns when both
/// nodes hold none of its entries any more.
pub async fn run_round(
    coordinator: SocketAddr,
    root: PathBuf,
    period: String,
    timeline: &Timeline,
    after: Duration,
) -> anyhow::Result<RoundTimes> {
    tokio::time::sleep(after).await;
    let channel = Channel::from_shared(format!("http://{coordinator}"))?
        .connect()
        .await?;
    let mut c = CoordinatorServiceClient::new(channel);
    let mut t = RoundTimes {
        opened: timeline.t0.elapsed(),
        ..RoundTimes::default()
    };
    let round = c
        .open_round(proto::OpenRoundRequest {
            request_id: format!("bench-freeze-{period}"),
            period: period.clone(),
            early: false,
            allow_empty: false,
        })
        .await?
        .into_inner();
    t.round_id = round.round_id.clone();
    let poll = Duration::from_millis(100);
    loop {
        let r = c.run_round(rr(&round.round_id)).await?.into_inner();
        match r.state.as_str() {
            "CONFIRMED" => break,
            "DISPUTED" | "ABORTED" => bail!("round {} is {}: {}", r.round_id, r.state, r.note),
            _ => tokio::time::sleep(poll).await,
        }
    }
    t.confirmed = timeline.t0.elapsed();
    let st = c.get_statement(rr(&round.round_id)).await?.into_inner();
    for (i, ins) in st.instructions.iter().enumerate() {
        c.record_transfer(proto::RecordTransferRequest {
            request_id: format!("{}-t{i}", round.round_id),
            round_id: round.round_id.clone(),
            from_region: ins.from_region.clone(),
            to_region: ins.to_region.clone(),
            amount: ins.amount.clone(),
            reference: format!("BENCH-{}-{i}", round.round_id),
        })
        .await?;
    }
    loop {
        let r = c.run_round(rr(&round.round_id)).await?.into_inner();
        if r.state == "SETTLED" {
            break;
        }
        tokio::time::sleep(poll).await;
    }
    t.settled = timeline.t0.elapsed();
    for region in [CREDITOR, DEBTOR] {
        let db = root.join(region).join(yidi_node::store::DB_FILE);
        loop {
            let (db2, id) = (db.clone(), round.round_id.clone());
            if tokio::task::spawn_blocking(move || held(&db2, &id)).await?? == 0 {
                break;
            }
            tokio::time::sleep(poll).await;
        }
    }
    t.tidied = timeline.t0.elapsed();
    Ok(t)
}

/// One node's writer, from its metrics: its longest transaction and commit, and per
/// kind of job the longest run and the most rows one job wrote.
#[derive(Debug, Clone, Default)]
pub struct NodeWriter {
    pub region: String,
    pub longest_transaction: f64,
    pub longest_commit: f64,
    /// (kind, longest run in seconds, most rows)
    pub kinds: Vec<(String, f64, u64)>,
}

/// The value of a metric line, and its labels' text.
fn sample<'a>(line: &'a str, name: &str) -> Option<(&'a str, f64)> {
    let rest = line.strip_prefix(name)?.strip_prefix('{')?;
    let (labels, value) = rest.rsplit_once("} ")?;
    Some((labels, value.trim().parse().ok()?))
}

fn label<'a>(labels: &'a str, name: &str) -> &'a str {
    labels
        .split_once(&format!("{name}=\""))
        .and_then(|(_, r)| r.split_once('"'))
        .map_or("?", |(v, _)| v)
}

/// Each in-process node's writer figures, from its metrics.
pub fn longest_transactions(scraped: &[String]) -> Vec<NodeWriter> {
    let mut out = Vec::new();
    for text in scraped {
        let mut node = NodeWriter::default();
        for l in text.lines() {
            if let Some((labels, v)) = sample(l, "yidi_store_longest_transaction_seconds") {
                node.region = label(labels, "region").to_owned();
                node.longest_transaction = v;
            } else if let Some((_, v)) = sample(l, "yidi_store_longest_commit_seconds") {
                node.longest_commit = v;
            } else if let Some((labels, v)) = sample(l, "yidi_store_longest_job_seconds") {
                node.kinds.push((label(labels, "kind").to_owned(), v, 0));
            } else if let Some((labels, v)) = sample(l, "yidi_store_largest_job_rows") {
                let kind = label(labels, "kind");
                if let Some(k) = node.kinds.iter_mut().find(|k| k.0 == kind) {
                    k.2 = v as u64;
                } else {
                    node.kinds.push((kind.to_owned(), 0.0, v as u64));
                }
            }
        }
        if !node.region.is_empty() {
            out.push(node);
        }
    }
    out
}

/// Prints the settle percentiles before, during and after the round, and each node's
/// longest writer transaction; returns them as JSON.
pub fn report(
    timeline: &Timeline,
    t: &RoundTimes,
    end: Duration,
    entries: u64,
    longest: &[NodeWriter],
) -> Value {
    println!(
        "clearing round {} of {entries} entries at two nodes during the load: confirmed after {:.1} s, \
         settled after {:.1} s, every entry marked cleared after {:.1} s",
        t.round_id,
        (t.confirmed - t.opened).as_secs_f64(),
        (t.settled - t.opened).as_secs_f64(),
        (t.tidied - t.opened).as_secs_f64()
    );
    let mut windows = serde_json::Map::new();
    for (name, from, to) in [
        ("before", Duration::ZERO, t.opened),
        ("freeze (open → confirmed)", t.opened, t.confirmed),
        ("clear (paid → all marked)", t.confirmed, t.tidied),
        ("after", t.tidied, end),
    ] {
        let h = timeline.between(from, to);
        println!("{}", super::line(&format!("Settle, {name}"), &h));
        windows.insert(name.into(), super::summary(&h));
    }
    for n in longest {
        println!(
            "  node {}: longest writer transaction {:.1} ms, longest commit {:.1} ms",
            n.region,
            n.longest_transaction * 1e3,
            n.longest_commit * 1e3
        );
        let mut kinds = n.kinds.clone();
        kinds.sort_by(|a, b| b.1.total_cmp(&a.1));
        let per_kind: Vec<String> = kinds
            .iter()
            .map(|(k, s, rows)| format!("{k} {:.1} ms ({rows} rows)", s * 1e3))
            .collect();
        println!("    longest job by kind: {}", per_kind.join(", "));
    }
    json!({
        "entries": entries,
        "round": t.round_id,
        "seconds": {
            "freeze": (t.confirmed - t.opened).as_secs_f64(),
            "settled": (t.settled - t.opened).as_secs_f64(),
            "tidied": (t.tidied - t.opened).as_secs_f64(),
        },
        "settle": windows,
        "longest_transaction_ms": longest.iter().map(|n| json!({
            "region": n.region,
            "ms": n.longest_transaction * 1e3,
            "commit_ms": n.longest_commit * 1e3,
            "jobs": n.kinds.iter().map(|(k, s, rows)| json!({"kind": k, "longest_ms": s * 1e3, "most_rows": rows})).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}
