//! `yidi bench-clearing`: a whole clearing round at provincial scale, measured at the
//! coordinator. N simulated participants (default 333) each serve the real
//! ClearingParticipant gRPC interface on 127.0.0.1:0 inside this process; C claims
//! (default 10 million) are generated up front and spread over every ordered pair of
//! participants, and each pair is pre-aggregated into the count, sum and order-
//! independent digest a node's frozen ledger would report (the same canonical record
//! bytes as the node's ledger). The participants therefore answer at once: the figures
//! are the coordinator's — collection, reconciliation, netting, the statement,
//! confirmations, transfers and clear marks — not SQLite's at 333 nodes.
//!
//! A real coordinator (`coordinator::serve`, its own SQLite store in a temporary
//! directory, a participants file naming the simulated nodes) runs one round, opened
//! early for the current period, to SETTLED: RunRound, then RecordTransfer for every
//! payment instruction. Phase boundaries are taken where the participants observe them
//! (the last report answered, the first confirmation asked), so no coordinator code is
//! instrumented for the benchmark.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use clap::Args;
use tokio::{net::TcpListener, sync::oneshot};
use tonic::{
    Request, Response, Status,
    transport::{Channel, Server, server::TcpIncoming},
};
use yidi_common::{
    digest::SetDigest,
    money,
    period::Period,
    proto::{
        self,
        clearing_participant_server::{ClearingParticipant, ClearingParticipantServer},
        coordinator_service_client::CoordinatorServiceClient,
    },
    region::RegionCode,
};

use yidi_node::{
    coordinator::{self, CoordinatorConfig},
    store::ledger::record_bytes,
};

mod national;

/// Flags of `yidi bench-clearing`.
#[derive(Debug, Clone, Args)]
pub struct ClearingBenchArgs {
    /// Simulated participants (city nodes), each a ClearingParticipant gRPC server of its
    /// own; at most 594 (distinct city codes of six provinces).
    #[arg(long, default_value_t = 333, value_parser = clap::value_parser!(u64).range(2..=594))]
    pub participants: u64,
    /// Claims in the cleared period, spread uniformly at random over the pairs; every
    /// 50th record is a reversal of the one before it.
    #[arg(long, default_value_t = 10_000_000)]
    pub claims: u64,
    /// Counterparties each participant has claims with, as treatment region (and as
    /// home region). Default: every other participant, the densest and hardest case.
    #[arg(long)]
    pub counterparties: Option<u64>,
    /// Seed of the claim generator (same seed, same claims and amounts).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Threads generating claims (default: every core; generation is not timed as
    /// coordinator work).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Keep the coordinator's data directory (its SQLite store) and print its path.
    #[arg(long)]
    pub keep: bool,
    /// Two-level clearing instead (docs/national.md): the participants are cities of 31
    /// provinces, each province's coordinator runs its round (in parallel), then the
    /// national coordinator runs the national round over the provinces.
    #[arg(long)]
    pub national: bool,
}

/// The coordinator's region: the provincial clearing account.
const PROVINCE: &str = "330000";

/// Provinces whose city codes the simulated participants use (99 cities each).
const PROVINCE_PREFIXES: [&str; 6] = ["33", "34", "35", "36", "37", "41"];

/// What one ordered pair (treatment region owed by home region) adds up to.
#[derive(Debug, Clone, Copy, Default)]
struct PairAgg {
    count: u64,
    sum_fen: i64,
    digest: SetDigest,
}

impl PairAgg {
    fn merge(&mut self, o: &PairAgg) {
        self.count += o.count;
        self.sum_fen += o.sum_fen;
        self.digest.merge(&o.digest);
    }
}

/// The shape of the simulated province.
#[derive(Debug, Clone)]
struct Shape {
    regions: Vec<String>,
    /// Counterparties per participant.
    k: usize,
}

impl Shape {
    fn n(&self) -> usize {
        self.regions.len()
    }

    /// The home region of treatment `t`'s `j`-th pair (the inverse of [`Shape::slot`]).
    #[cfg(test)]
    fn home(&self, t: usize, j: usize) -> usize {
        (t + 1 + j) % self.n()
    }

    /// The `j` under which `h` is `t`'s counterparty, if it is one.
    fn slot(&self, t: usize, h: usize) -> Option<usize> {
        let j = (h + self.n() - t - 1) % self.n();
        (j < self.k).then_some(j)
    }

    fn pairs(&self) -> usize {
        self.n() * self.k
    }
}

fn regions(n: usize) -> anyhow::Result<Vec<String>> {
    let out: Vec<String> = PROVINCE_PREFIXES
        .iter()
        .flat_map(|p| (1..=99).map(move |c| format!("{p}{c:02}00")))
        .take(n)
        .collect();
    if out.len() < n {
        bail!("at most {} participants can be simulated", out.len());
    }
    for r in &out {
        RegionCode::parse_city(r, "participant")?;
    }
    Ok(out)
}

/// The splitmix64 finaliser: claim `i`'s pair and amount are a pure function of the seed
/// and `i` (a counter-based generator, no dependency), so the same seed yields the same
/// claims whatever the number of threads.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A uniform draw below `n` from 64 random bits (multiply-shift: no division, no bias
/// worth the name at these sizes).
fn below(bits: u64, n: u64) -> u64 {
    u64::try_from((u128::from(bits) * u128::from(n)) >> 64).unwrap_or(0)
}

/// Claim `i`: its pair index and its fund share in fen (1.00 to 8000.00 yuan).
fn claim(seed: u64, pairs: usize, i: u64) -> (usize, i64) {
    let base = mix(seed).wrapping_add(i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let p = usize::try_from(below(mix(base), pairs as u64)).unwrap_or(0);
    let fen = 100 + i64::try_from(below(mix(base ^ 0x5555_5555_5555_5555), 799_901)).unwrap_or(0);
    (p, fen)
}

/// Generates `claims` records over the pairs of `shape` on `threads` threads and
/// returns the per-pair aggregates, indexed `t * k + j`. Every 50th record reverses the
/// claim before it (its own negative record, as a cancellation is on a node's ledger).
fn generate(shape: &Shape, claims: u64, seed: u64, threads: usize) -> Vec<PairAgg> {
    let pairs = shape.pairs();
    let threads = threads.max(1) as u64;
    let per = claims.div_ceil(threads);
    let id = |p: usize, i: u64| format!("{}-S-{i:010}", shape.regions[p / shape.k]);
    let parts: Vec<Vec<PairAgg>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|w| {
                s.spawn(move || {
                    let mut agg = vec![PairAgg::default(); pairs];
                    for i in (w * per).min(claims)..((w + 1) * per).min(claims) {
                        let a;
                        if i % 50 == 49 {
                            let (p, fen) = claim(seed, pairs, i - 1);
                            let claim_id = id(p, i - 1);
                            a = &mut agg[p];
                            a.sum_fen -= fen;
                            a.digest.add(&record_bytes(
                                &format!("{claim_id}-R"),
                                "reversal",
                                &claim_id,
                                -fen,
                            ));
                        } else {
                            let (p, fen) = claim(seed, pairs, i);
                            let claim_id = id(p, i);
                            a = &mut agg[p];
                            a.sum_fen += fen;
                            a.digest
                                .add(&record_bytes(&claim_id, "claim", &claim_id, fen));
                        }
                        a.count += 1;
                    }
                    agg
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    });
    let mut out = vec![PairAgg::default(); pairs];
    for part in &parts {
        for (o, a) in out.iter_mut().zip(part) {
            o.merge(a);
        }
    }
    out
}

/// When the participants saw the round's steps, in ns since the benchmark's epoch.
struct Marks {
    epoch: Instant,
    last_report: AtomicU64,
    first_confirm: AtomicU64,
    last_confirm: AtomicU64,
    last_cleared: AtomicU64,
    reports: AtomicU64,
    confirms: AtomicU64,
    cleared: AtomicU64,
}

impl Marks {
    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn at(&self, ns: &AtomicU64) -> Instant {
        self.epoch + Duration::from_nanos(ns.load(Ordering::SeqCst))
    }
}

/// One simulated node: its frozen ledger is the pre-aggregated positions.
struct SimParticipant {
    region: String,
    report: proto::ReportPositionsResponse,
    receivable_fen: i64,
    payable_fen: i64,
    records: u64,
    marks: Arc<Marks>,
}

impl SimParticipant {
    /// The real node's checks (`clearing::verify`), against the aggregates.
    fn verify(&self, s: &proto::Statement) -> Vec<String> {
        verify_totals(&self.region, s, self.receivable_fen, self.payable_fen)
    }
}

/// The real node's checks (`clearing::verify`) of `s` against a simulated ledger's
/// totals: the differences, none when it agrees.
fn verify_totals(
    region: &str,
    s: &proto::Statement,
    receivable_fen: i64,
    payable_fen: i64,
) -> Vec<String> {
    RegionCode::parse(region, "region")
        .map_err(yidi_node::Error::from)
        .and_then(|own| {
            yidi_node::clearing::verify::against_ledger(own, s, receivable_fen, payable_fen)
        })
        .unwrap_or_else(|e| vec![e.to_string()])
}

/// A simulated participant's answer to VerifyStatement.
fn verification(differences: Vec<String>) -> proto::VerifyStatementResponse {
    proto::VerifyStatementResponse {
        matches: differences.is_empty(),
        differences,
    }
}

/// A simulated participant's answer to ConfirmStatement: confirmed when nothing differs.
fn confirmation(diffs: &[String]) -> proto::ConfirmStatementResponse {
    proto::ConfirmStatementResponse {
        confirmed: diffs.is_empty(),
        confirmed_by: if diffs.is_empty() {
            "auto".to_owned()
        } else {
            format!("does not match: {}", diffs.join("; "))
        },
    }
}

/// Participant `t`'s position against `o` from the pair aggregates, with what `t` is owed
/// by `o` (t treated o's insured) and what it owes `o`; None when nothing is between them.
fn position<'a>(
    shape: &Shape,
    agg: &'a [PairAgg],
    zero: &'a PairAgg,
    t: usize,
    o: usize,
) -> Option<(proto::Position, &'a PairAgg, &'a PairAgg)> {
    let f = |fen: i64| money::format(money::from_fen(fen));
    let r = shape.slot(t, o).map_or(zero, |j| &agg[t * shape.k + j]);
    let p = shape.slot(o, t).map_or(zero, |j| &agg[o * shape.k + j]);
    if r.count == 0 && p.count == 0 {
        return None;
    }
    let position = proto::Position {
        counterparty: shape.regions[o].clone(),
        receivable_count: r.count,
        receivable_sum: f(r.sum_fen),
        receivable_digest: r.digest.to_hex(),
        payable_count: p.count,
        payable_sum: f(p.sum_fen),
        payable_digest: p.digest.to_hex(),
        ..Default::default()
    };
    Some((position, r, p))
}

fn simulated(what: &str) -> Status {
    Status::failed_precondition(format!(
        "{what}: the benchmark's simulated participants agree by construction"
    ))
}

#[tonic::async_trait]
impl ClearingParticipant for SimParticipant {
    async fn report_positions(
        &self,
        _req: Request<proto::ReportPositionsRequest>,
    ) -> Result<Response<proto::ReportPositionsResponse>, Status> {
        let out = self.report.clone();
        self.marks
            .last_report
            .fetch_max(self.marks.now(), Ordering::SeqCst);
        self.marks.reports.fetch_add(1, Ordering::SeqCst);
        Ok(Response::new(out))
    }

    async fn list_claim_ids(
        &self,
        _req: Request<proto::ListClaimIdsRequest>,
    ) -> Result<Response<proto::ListClaimIdsResponse>, Status> {
        Err(simulated("no drill-down"))
    }

    async fn exclude_claims(
        &self,
        _req: Request<proto::ExcludeClaimsRequest>,
    ) -> Result<Response<proto::ExcludeClaimsResponse>, Status> {
        Err(simulated("nothing to exclude"))
    }

    async fn verify_statement(
        &self,
        req: Request<proto::StatementRequest>,
    ) -> Result<Response<proto::VerifyStatementResponse>, Status> {
        let s = req.into_inner().statement.unwrap_or_default();
        Ok(Response::new(verification(self.verify(&s))))
    }

    async fn confirm_statement(
        &self,
        req: Request<proto::StatementRequest>,
    ) -> Result<Response<proto::ConfirmStatementResponse>, Status> {
        self.marks
            .first_confirm
            .fetch_min(self.marks.now(), Ordering::SeqCst);
        let s = req.into_inner().statement.unwrap_or_default();
        let diffs = self.verify(&s);
        self.marks
            .last_confirm
            .fetch_max(self.marks.now(), Ordering::SeqCst);
        self.marks.confirms.fetch_add(1, Ordering::SeqCst);
        Ok(Response::new(confirmation(&diffs)))
    }

    async fn mark_cleared(
        &self,
        _req: Request<proto::MarkClearedRequest>,
    ) -> Result<Response<proto::MarkClearedResponse>, Status> {
        self.marks
            .last_cleared
            .fetch_max(self.marks.now(), Ordering::SeqCst);
        self.marks.cleared.fetch_add(1, Ordering::SeqCst);
        Ok(Response::new(proto::MarkClearedResponse {
            cleared: true,
            records: self.records,
        }))
    }

    async fn release_round(
        &self,
        _req: Request<proto::ReleaseRoundRequest>,
    ) -> Result<Response<proto::ReleaseRoundResponse>, Status> {
        Ok(Response::new(proto::ReleaseRoundResponse { released: 0 }))
    }
}

/// Builds participant `t`'s report from the pair aggregates.
fn participant(shape: &Shape, agg: &[PairAgg], t: usize, marks: &Arc<Marks>) -> SimParticipant {
    let zero = PairAgg::default();
    let mut positions = Vec::new();
    let (mut recv, mut pay, mut records) = (0i64, 0i64, 0u64);
    let mut others: Vec<usize> = (0..shape.n()).filter(|&o| o != t).collect();
    others.sort_by(|a, b| shape.regions[*a].cmp(&shape.regions[*b]));
    for o in others {
        let Some((position, r, p)) = position(shape, agg, &zero, t, o) else {
            continue;
        };
        recv += r.sum_fen;
        pay += p.sum_fen;
        records += r.count + p.count;
        positions.push(position);
    }
    SimParticipant {
        region: shape.regions[t].clone(),
        report: proto::ReportPositionsResponse {
            region: shape.regions[t].clone(),
            period: String::new(),
            positions,
            reserves: Vec::new(),
        },
        receivable_fen: recv,
        payable_fen: pay,
        records,
        marks: Arc::clone(marks),
    }
}

/// Peak and current resident set of this process, in KiB, from /proc/self/status.
fn memory_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

fn ms(d: Duration) -> String {
    let ms = d.as_millis();
    format!("{}.{:03} s", ms / 1000, ms % 1000)
}

fn mib(kib: u64) -> String {
    if kib < 1024 {
        return format!("{kib} KiB");
    }
    format!("{}.{} MiB", kib / 1024, (kib % 1024) * 10 / 1024)
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A temporary directory of our own (the node crate has no tempfile dependency).
fn temp_dir() -> anyhow::Result<PathBuf> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let dir = std::env::temp_dir().join(format!(
        "yidi-bench-clearing-{}-{nanos}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

fn write_participants(path: &Path, shape: &Shape, addrs: &[SocketAddr]) -> anyhow::Result<()> {
    let mut text = String::from("# Simulated participants of yidi bench-clearing.\n");
    for (r, a) in shape.regions.iter().zip(addrs) {
        text.push_str(&format!(
            "[[peer]]\nregion = \"{r}\"\nname = \"sim {r}\"\naddress = \"http://{a}\"\n\n"
        ));
    }
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// Size of what the coordinator stored: (reports, their bytes, statement bytes).
fn stored_sizes(db: &Path) -> anyhow::Result<(u64, u64, u64)> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let (n, bytes): (u64, u64) = conn.query_row(
        "SELECT COUNT(*), COALESCE(SUM(LENGTH(report)), 0) FROM round_reports",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let statement: u64 = conn.query_row(
        "SELECT COALESCE(SUM(LENGTH(statement)), 0) FROM rounds",
        [],
        |r| r.get(0),
    )?;
    Ok((n, bytes, statement))
}

/// Runs `yidi bench-clearing`.
pub fn run(args: &ClearingBenchArgs) -> anyhow::Result<()> {
    if args.national {
        return national::run(args);
    }
    let n = usize::try_from(args.participants)?;
    let k = match args.counterparties {
        Some(k) if k == 0 || k >= args.participants => {
            bail!("--counterparties must be between 1 and {}", n - 1)
        }
        Some(k) => usize::try_from(k)?,
        None => n - 1,
    };
    let shape = Shape {
        regions: regions(n)?,
        k,
    };
    let threads = args.threads.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    println!(
        "clearing benchmark: {n} participants, {} claims over {} pairs ({k} counterparties each), seed {}",
        thousands(args.claims),
        thousands(shape.pairs() as u64),
        args.seed
    );
    let t = Instant::now();
    let agg = generate(&shape, args.claims, args.seed, threads);
    let generation = t.elapsed();
    let records: u64 = agg.iter().map(|a| a.count).sum();
    println!(
        "  generated {} ledger records (claims and reversals) in {} on {threads} threads",
        thousands(records),
        ms(generation)
    );
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(round(args, &shape, &agg))
}

async fn round(args: &ClearingBenchArgs, shape: &Shape, agg: &[PairAgg]) -> anyhow::Result<()> {
    let marks = Arc::new(Marks {
        epoch: Instant::now(),
        last_report: AtomicU64::new(0),
        first_confirm: AtomicU64::new(u64::MAX),
        last_confirm: AtomicU64::new(0),
        last_cleared: AtomicU64::new(0),
        reports: AtomicU64::new(0),
        confirms: AtomicU64::new(0),
        cleared: AtomicU64::new(0),
    });
    let dir = temp_dir()?;

    // The participants: one gRPC server each, on its own loopback port.
    let mut expected_net = Vec::with_capacity(shape.n());
    let mut addrs = Vec::with_capacity(shape.n());
    let mut stops = Vec::with_capacity(shape.n());
    let mut servers = tokio::task::JoinSet::new();
    for t in 0..shape.n() {
        let sim = participant(shape, agg, t, &marks);
        expected_net.push((sim.region.clone(), sim.receivable_fen - sim.payable_fen));
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        addrs.push(listener.local_addr()?);
        let (stop, stopped) = oneshot::channel::<()>();
        stops.push(stop);
        // A province-wide statement is several MiB: the default 4 MiB limit would refuse it.
        let svc = ClearingParticipantServer::new(sim).max_decoding_message_size(256 << 20);
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        servers.spawn(
            Server::builder()
                .add_service(svc)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                }),
        );
    }
    let participants_file = dir.join("participants.toml");
    write_participants(&participants_file, shape, &addrs)?;
    let (hwm_before, rss_before) = memory_kib();

    // The coordinator, as `yidi coordinator` runs it.
    let province = RegionCode::parse(PROVINCE, "region")?;
    let data_dir = dir.join("coordinator");
    let mut config = CoordinatorConfig::new(province, data_dir.clone(), participants_file);
    // Only the benchmark drives the round; the background loop must not interleave.
    config.run_interval = Duration::from_secs(3600);
    config.call_timeout = Duration::from_secs(60);
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let (stop_coord, coord_stopped) = oneshot::channel::<()>();
    let coord = tokio::spawn(coordinator::serve(
        listener,
        async {
            let _ = coord_stopped.await;
        },
        config,
    ));
    let channel = Channel::from_shared(url)?
        .tcp_nodelay(true)
        .connect()
        .await
        .context("cannot reach the benchmark's coordinator")?;
    let mut c = CoordinatorServiceClient::new(channel).max_decoding_message_size(256 << 20);
    let rr = |id: &str| proto::RoundRequest {
        request_id: String::new(),
        round_id: id.to_owned(),
    };

    let period = Period::of(chrono::Utc::now()).to_string();
    let start = Instant::now();
    let opened = c
        .open_round(proto::OpenRoundRequest {
            request_id: "bench-open".into(),
            period: period.clone(),
            early: true,
            allow_empty: false,
        })
        .await?
        .into_inner();
    let id = opened.round_id;
    let r = c.run_round(rr(&id)).await?.into_inner();
    let confirmed_at = Instant::now();
    if r.state != coordinator::RoundState::Confirmed {
        bail!(
            "the round stopped at {} ({}); missing: {:?}",
            r.state,
            r.note,
            r.missing
        );
    }
    let t = Instant::now();
    let st = c.get_statement(rr(&id)).await?.into_inner();
    let fetch = t.elapsed();
    let transfers_from = Instant::now();
    let mut last = r;
    for (i, ins) in st.instructions.iter().enumerate() {
        last = c
            .record_transfer(proto::RecordTransferRequest {
                request_id: format!("bench-t{i}"),
                round_id: id.clone(),
                from_region: ins.from_region.clone(),
                to_region: ins.to_region.clone(),
                amount: ins.amount.clone(),
                reference: format!("BENCH-{i:05}"),
            })
            .await?
            .into_inner();
    }
    let settled_at = Instant::now();
    let (hwm_after, rss_after) = memory_kib();
    if last.state != coordinator::RoundState::Settled || !last.missing.is_empty() {
        bail!(
            "the round ended {} with {:?} not cleared: {}",
            last.state,
            last.missing,
            last.note
        );
    }

    // Phases as the participants saw them.
    let collected = marks.at(&marks.last_report);
    let first_confirm = marks.at(&marks.first_confirm);
    let collect = collected.saturating_duration_since(start);
    let reconcile = first_confirm.saturating_duration_since(collected);
    let confirm = confirmed_at.saturating_duration_since(first_confirm);
    let transfers = settled_at.saturating_duration_since(transfers_from);
    let total = collect + reconcile + confirm + transfers;

    // Correctness: Σ net = 0 and every net is what the generated claims say.
    let mut sum = 0i64;
    let mut wrong = Vec::new();
    for (region, net) in &expected_net {
        let got = st
            .nets
            .iter()
            .find(|x| &x.region == region)
            .and_then(|x| money::parse(&x.net, "net", money::Sign::Any).ok())
            .map_or(i64::MIN, money::to_fen);
        sum += if got == i64::MIN { 0 } else { got };
        if got != *net {
            wrong.push(region.clone());
        }
    }

    let _ = stop_coord.send(());
    coord
        .await
        .context("coordinator task")?
        .context("coordinator")?;
    for s in stops {
        let _ = s.send(());
    }
    while servers.join_next().await.is_some() {}
    let (reports, report_bytes, statement_bytes) = stored_sizes(&data_dir.join("coordinator.db"))?;

    let p = |label: &str, d: Duration| println!("    {label:<34}{:>10}", ms(d));
    println!("  coordinator wall time, round {id} ({period}):");
    p("collect positions", collect);
    p("reconcile + net + issue statement", reconcile);
    p("confirmations", confirm);
    p("transfers + mark cleared", transfers);
    p("total", total);
    println!(
        "    (operator's GetStatement of {} gross entries: {})",
        thousands(st.gross.len() as u64),
        ms(fetch)
    );
    println!(
        "  pairs reconciled: {}; payment instructions: {} with netting instead of {} bilateral",
        thousands(st.gross.len() as u64),
        st.netted_transfers,
        st.bilateral_transfers
    );
    println!(
        "  participants: {} reported, {} confirmed, {} marked cleared",
        marks.reports.load(Ordering::SeqCst),
        marks.confirms.load(Ordering::SeqCst),
        marks.cleared.load(Ordering::SeqCst)
    );
    println!(
        "  Σ net = {} {}; nets equal the generated claims: {}",
        money::format(money::from_fen(sum)),
        if sum == 0 { "✓" } else { "✗" },
        if wrong.is_empty() {
            "yes".to_owned()
        } else {
            format!("NO ({} regions differ)", wrong.len())
        }
    );
    println!(
        "  memory: peak RSS {} → {} (+{}), RSS {} → {} — the process also holds the {} simulated participants",
        mib(hwm_before),
        mib(hwm_after),
        mib(hwm_after.saturating_sub(hwm_before)),
        mib(rss_before),
        mib(rss_after),
        shape.n()
    );
    println!(
        "  coordinator store: {reports} reports of {} in all, statement {}",
        mib(report_bytes / 1024),
        mib(statement_bytes / 1024)
    );
    if args.keep {
        println!("  kept {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    if sum != 0 || !wrong.is_empty() {
        bail!("the statement does not match the generated claims");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_invert_homes() {
        let shape = Shape {
            regions: regions(7).unwrap(),
            k: 3,
        };
        for t in 0..7 {
            for j in 0..3 {
                assert_eq!(shape.slot(t, shape.home(t, j)), Some(j));
            }
        }
        assert_eq!(shape.slot(0, 0), None);
    }

    #[test]
    fn generation_is_deterministic_whatever_the_threads() {
        let shape = Shape {
            regions: regions(5).unwrap(),
            k: 4,
        };
        let a = generate(&shape, 10_000, 7, 1);
        let b = generate(&shape, 10_000, 7, 3);
        assert_eq!(a.iter().map(|x| x.count).sum::<u64>(), 10_000);
        assert!(
            a.iter()
                .zip(&b)
                .all(|(x, y)| (x.count, x.sum_fen, x.digest) == (y.count, y.sum_fen, y.digest))
        );
        let c = generate(&shape, 10_000, 8, 1);
        assert!(a.iter().zip(&c).any(|(x, y)| x.digest != y.digest));
    }

    #[test]
    fn participants_see_both_sides_of_each_pair() {
        let shape = Shape {
            regions: regions(4).unwrap(),
            k: 3,
        };
        let agg = generate(&shape, 1_000, 1, 1);
        let marks = Arc::new(Marks {
            epoch: Instant::now(),
            last_report: AtomicU64::new(0),
            first_confirm: AtomicU64::new(u64::MAX),
            last_confirm: AtomicU64::new(0),
            last_cleared: AtomicU64::new(0),
            reports: AtomicU64::new(0),
            confirms: AtomicU64::new(0),
            cleared: AtomicU64::new(0),
        });
        let sims: Vec<_> = (0..4)
            .map(|t| participant(&shape, &agg, t, &marks))
            .collect();
        assert_eq!(
            sims.iter()
                .map(|s| s.receivable_fen - s.payable_fen)
                .sum::<i64>(),
            0
        );
        // A's receivable from B is B's payable to A, digest included.
        let a = &sims[0].report.positions[0];
        let b = sims
            .iter()
            .find(|s| s.region == a.counterparty)
            .unwrap()
            .report
            .positions
            .iter()
            .find(|p| p.counterparty == sims[0].region)
            .unwrap();
        assert_eq!(
            (a.receivable_count, &a.receivable_digest),
            (b.payable_count, &b.payable_digest)
        );
    }
}
