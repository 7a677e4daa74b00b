//! `yidi bench-clearing --national`: two-level clearing at national scale. The cities
//! (default 333) are spread over 31 provinces; the claims (default 10 million) over
//! every ordered pair of cities, so most of them cross a province boundary, as the
//! generator of the provincial benchmark makes them. Every city is a simulated
//! ClearingParticipant answering by the round's scope: its pairs within its province to
//! its provincial coordinator's round, the rest to the national round (which reaches it
//! through its provincial coordinator). 31 real provincial coordinators and the real
//! national coordinator (`coordinator::serve`, SQLite stores in a temporary directory)
//! run first every province's round, all at once, each to SETTLED and cleared, then the
//! national round over the provinces to SETTLED and cleared everywhere. Measured: the
//! wall time of each level and of both, and the process's resident memory.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use tokio::{net::TcpListener, sync::oneshot};
use tonic::{
    Request, Response, Status,
    transport::{Channel, Server, server::TcpIncoming},
};
use yidi_common::{
    money,
    period::Period,
    proto::{
        self,
        clearing_participant_server::{ClearingParticipant, ClearingParticipantServer},
        coordinator_service_client::CoordinatorServiceClient,
    },
    region::{NATIONAL, RegionCode},
};
use yidi_node::coordinator::{self, CoordinatorConfig};

use super::{
    ClearingBenchArgs, Marks, PairAgg, Shape, generate, memory_kib, mib, ms, temp_dir, thousands,
};

/// The 31 provinces of the mainland (GB/T 2260).
const PROVINCES: [&str; 31] = [
    "11", "12", "13", "14", "15", "21", "22", "23", "31", "32", "33", "34", "35", "36", "37", "41",
    "42", "43", "44", "45", "46", "50", "51", "52", "53", "54", "61", "62", "63", "64", "65",
];

/// `n` cities over the 31 provinces, as evenly as they go (the first provinces one
/// more); each city's province index beside it.
fn cities(n: usize) -> anyhow::Result<(Vec<String>, Vec<usize>)> {
    if n < PROVINCES.len() * 2 {
        bail!(
            "--participants must be at least {} with --national (two cities per province)",
            PROVINCES.len() * 2
        );
    }
    let (per, extra) = (n / PROVINCES.len(), n % PROVINCES.len());
    let mut regions = Vec::with_capacity(n);
    let mut province = Vec::with_capacity(n);
    for (p, code) in PROVINCES.iter().enumerate() {
        let k = per + usize::from(p < extra);
        if k > 99 {
            bail!("at most 99 cities per province");
        }
        for c in 1..=k {
            let r = format!("{code}{c:02}00");
            RegionCode::parse_city(&r, "participant")?;
            regions.push(r);
            province.push(p);
        }
    }
    Ok((regions, province))
}

/// A simulated city's two frozen ledgers: within its province and across.
struct Scoped {
    report: proto::ReportPositionsResponse,
    receivable_fen: i64,
    payable_fen: i64,
    records: u64,
}

struct SimCity {
    region: String,
    province: Scoped,
    national: Scoped,
    marks: Arc<Marks>,
}

impl SimCity {
    fn scoped(&self, round_id: &str) -> &Scoped {
        // National rounds are numbered `…-n1` (coordinator service), provincial `…-r1`.
        if round_id.contains("-n") {
            &self.national
        } else {
            &self.province
        }
    }

    fn verify(&self, s: &proto::Statement) -> Vec<String> {
        let sc = self.scoped(&s.round_id);
        super::verify_totals(&self.region, s, sc.receivable_fen, sc.payable_fen)
    }
}

#[tonic::async_trait]
impl ClearingParticipant for SimCity {
    async fn report_positions(
        &self,
        req: Request<proto::ReportPositionsRequest>,
    ) -> Result<Response<proto::ReportPositionsResponse>, Status> {
        let req = req.into_inner();
        let out = if req.scope == "national" {
            self.national.report.clone()
        } else {
            self.province.report.clone()
        };
        self.marks.reports.fetch_add(1, Ordering::SeqCst);
        Ok(Response::new(out))
    }

    async fn list_claim_ids(
        &self,
        _req: Request<proto::ListClaimIdsRequest>,
    ) -> Result<Response<proto::ListClaimIdsResponse>, Status> {
        Err(super::simulated("no drill-down"))
    }

    async fn exclude_claims(
        &self,
        _req: Request<proto::ExcludeClaimsRequest>,
    ) -> Result<Response<proto::ExcludeClaimsResponse>, Status> {
        Err(super::simulated("nothing to exclude"))
    }

    async fn verify_statement(
        &self,
        req: Request<proto::StatementRequest>,
    ) -> Result<Response<proto::VerifyStatementResponse>, Status> {
        let s = req.into_inner().statement.unwrap_or_default();
        Ok(Response::new(super::verification(self.verify(&s))))
    }

    async fn confirm_statement(
        &self,
        req: Request<proto::StatementRequest>,
    ) -> Result<Response<proto::ConfirmStatementResponse>, Status> {
        let s = req.into_inner().statement.unwrap_or_default();
        let diffs = self.verify(&s);
        self.marks.confirms.fetch_add(1, Ordering::SeqCst);
        Ok(Response::new(super::confirmation(&diffs)))
    }

    async fn mark_cleared(
        &self,
        req: Request<proto::MarkClearedRequest>,
    ) -> Result<Response<proto::MarkClearedResponse>, Status> {
        self.marks.cleared.fetch_add(1, Ordering::SeqCst);
        Ok(Response::new(proto::MarkClearedResponse {
            cleared: true,
            records: self.scoped(&req.into_inner().round_id).records,
        }))
    }

    async fn release_round(
        &self,
        _req: Request<proto::ReleaseRoundRequest>,
    ) -> Result<Response<proto::ReleaseRoundResponse>, Status> {
        Ok(Response::new(proto::ReleaseRoundResponse { released: 0 }))
    }
}

/// City `t`'s two reports from the pair aggregates.
fn city(
    shape: &Shape,
    province: &[usize],
    agg: &[PairAgg],
    t: usize,
    marks: &Arc<Marks>,
) -> SimCity {
    let zero = PairAgg::default();
    let mut scoped = [
        (Vec::new(), 0i64, 0i64, 0u64),
        (Vec::new(), 0i64, 0i64, 0u64),
    ];
    let mut others: Vec<usize> = (0..shape.n()).filter(|&o| o != t).collect();
    others.sort_by(|a, b| shape.regions[*a].cmp(&shape.regions[*b]));
    for o in others {
        let Some((position, r, p)) = super::position(shape, agg, &zero, t, o) else {
            continue;
        };
        let s = &mut scoped[usize::from(province[o] != province[t])];
        s.1 += r.sum_fen;
        s.2 += p.sum_fen;
        s.3 += r.count + p.count;
        s.0.push(position);
    }
    let region = shape.regions[t].clone();
    let [within, across] = scoped;
    let make = |(positions, recv, pay, records): (Vec<proto::Position>, i64, i64, u64)| Scoped {
        report: proto::ReportPositionsResponse {
            region: region.clone(),
            period: String::new(),
            positions,
            reserves: Vec::new(),
        },
        receivable_fen: recv,
        payable_fen: pay,
        records,
    };
    SimCity {
        province: make(within),
        national: make(across),
        region: region.clone(),
        marks: Arc::clone(marks),
    }
}

fn participants_text(entries: &[(String, SocketAddr)]) -> String {
    let mut text = String::from("# Simulated participants of yidi bench-clearing --national.\n");
    for (r, a) in entries {
        text.push_str(&format!(
            "[[peer]]\nregion = \"{r}\"\nname = \"sim {r}\"\naddress = \"http://{a}\"\n\n"
        ));
    }
    text
}

type Client = CoordinatorServiceClient<Channel>;

/// Runs one round at `c` to SETTLED and cleared everywhere: RunRound, every transfer.
async fn clear(c: &mut Client, period: &str, tag: &str) -> anyhow::Result<proto::Statement> {
    let rr = |id: &str| proto::RoundRequest {
        request_id: String::new(),
        round_id: id.to_owned(),
    };
    let id = c
        .open_round(proto::OpenRoundRequest {
            request_id: format!("bench-open-{tag}"),
            period: period.to_owned(),
            early: true,
            allow_empty: true,
        })
        .await?
        .into_inner()
        .round_id;
    let r = c.run_round(rr(&id)).await?.into_inner();
    if r.state != coordinator::RoundState::Confirmed {
        bail!(
            "{tag}: round {id} stopped at {} ({}); missing {:?}",
            r.state,
            r.note,
            r.missing
        );
    }
    let st = c.get_statement(rr(&id)).await?.into_inner();
    let mut last = r;
    for (i, ins) in st.instructions.iter().enumerate() {
        last = c
            .record_transfer(proto::RecordTransferRequest {
                request_id: format!("bench-{tag}-t{i}"),
                round_id: id.clone(),
                from_region: ins.from_region.clone(),
                to_region: ins.to_region.clone(),
                amount: ins.amount.clone(),
                reference: format!("BENCH-{tag}-{i:05}"),
            })
            .await?
            .into_inner();
    }
    if last.state != coordinator::RoundState::Settled || !last.missing.is_empty() {
        bail!(
            "{tag}: round {id} ended {} with {:?} not cleared: {}",
            last.state,
            last.missing,
            last.note
        );
    }
    Ok(st)
}

fn fen(s: &str) -> i64 {
    money::parse(s, "amount", money::Sign::Any).map_or(i64::MIN, money::to_fen)
}

/// Runs `yidi bench-clearing --national`.
pub(super) fn run(args: &ClearingBenchArgs) -> anyhow::Result<()> {
    let n = usize::try_from(args.participants)?;
    let (regions, province) = cities(n)?;
    let shape = Shape { regions, k: n - 1 };
    let threads = args.threads.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    println!(
        "national clearing benchmark: {} provinces, {n} cities, {} claims over {} city pairs, seed {}",
        PROVINCES.len(),
        thousands(args.claims),
        thousands(shape.pairs() as u64),
        args.seed
    );
    let t = Instant::now();
    let agg = generate(&shape, args.claims, args.seed, threads);
    println!(
        "  generated {} ledger records in {} on {threads} threads",
        thousands(agg.iter().map(|a| a.count).sum()),
        ms(t.elapsed())
    );
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(rounds(args, &shape, &province, &agg))
}

async fn serve_coordinator(
    region: RegionCode,
    dir: std::path::PathBuf,
    participants: std::path::PathBuf,
    stops: &mut Vec<oneshot::Sender<()>>,
    tasks: &mut tokio::task::JoinSet<yidi_node::Result<()>>,
) -> anyhow::Result<(SocketAddr, Client)> {
    let mut config = CoordinatorConfig::new(region, dir, participants);
    config.run_interval = Duration::from_secs(3600);
    config.call_timeout = Duration::from_secs(60);
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = oneshot::channel::<()>();
    stops.push(stop);
    tasks.spawn(coordinator::serve(
        listener,
        async {
            let _ = stopped.await;
        },
        config,
    ));
    let channel = Channel::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(true)
        .connect()
        .await
        .with_context(|| format!("cannot reach the benchmark's coordinator {region}"))?;
    Ok((
        addr,
        CoordinatorServiceClient::new(channel).max_decoding_message_size(256 << 20),
    ))
}

async fn rounds(
    args: &ClearingBenchArgs,
    shape: &Shape,
    province: &[usize],
    agg: &[PairAgg],
) -> anyhow::Result<()> {
    let marks = Arc::new(Marks {
        epoch: Instant::now(),
        last_report: Default::default(),
        first_confirm: Default::default(),
        last_confirm: Default::default(),
        last_cleared: Default::default(),
        reports: Default::default(),
        confirms: Default::default(),
        cleared: Default::default(),
    });
    let dir = temp_dir()?;

    // The cities, each a gRPC server; the expected nets of both levels.
    let mut addrs = Vec::with_capacity(shape.n());
    let mut stops = Vec::new();
    let mut servers = tokio::task::JoinSet::new();
    let mut within_net: BTreeMap<String, i64> = BTreeMap::new();
    let mut across_net: BTreeMap<String, i64> = BTreeMap::new();
    let mut province_net = vec![0i64; PROVINCES.len()];
    for t in 0..shape.n() {
        let sim = city(shape, province, agg, t, &marks);
        within_net.insert(
            sim.region.clone(),
            sim.province.receivable_fen - sim.province.payable_fen,
        );
        let across = sim.national.receivable_fen - sim.national.payable_fen;
        across_net.insert(sim.region.clone(), across);
        province_net[province[t]] += across;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        addrs.push(listener.local_addr()?);
        let (stop, stopped) = oneshot::channel::<()>();
        stops.push(stop);
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
    let (hwm_before, rss_before) = memory_kib();

    // 31 provincial coordinators and the national one.
    let mut coord_stops = Vec::new();
    let mut coords = tokio::task::JoinSet::new();
    let mut provinces = Vec::new();
    for (p, code) in PROVINCES.iter().enumerate() {
        let entries: Vec<(String, SocketAddr)> = (0..shape.n())
            .filter(|t| province[*t] == p)
            .map(|t| (shape.regions[t].clone(), addrs[t]))
            .collect();
        let file = dir.join(format!("participants-{code}0000.toml"));
        std::fs::write(&file, participants_text(&entries))?;
        let region = RegionCode::parse(&format!("{code}0000"), "province")?;
        let (addr, client) = serve_coordinator(
            region,
            dir.join(format!("{code}0000")),
            file,
            &mut coord_stops,
            &mut coords,
        )
        .await?;
        provinces.push((region.to_string(), addr, client));
    }
    let national_file = dir.join("participants-national.toml");
    let entries: Vec<(String, SocketAddr)> =
        provinces.iter().map(|(r, a, _)| (r.clone(), *a)).collect();
    std::fs::write(&national_file, participants_text(&entries))?;
    let (_, mut national) = serve_coordinator(
        NATIONAL,
        dir.join("000000"),
        national_file,
        &mut coord_stops,
        &mut coords,
    )
    .await?;

    let period = Period::of(chrono::Utc::now()).to_string();
    // Level 1: every province's round, all at once.
    let start = Instant::now();
    let mut level1 = tokio::task::JoinSet::new();
    for (region, _, client) in &provinces {
        let (mut c, region, period) = (client.clone(), region.clone(), period.clone());
        level1.spawn(async move {
            let st = clear(&mut c, &period, &region).await;
            (region, st)
        });
    }
    let mut provincial = Vec::new();
    while let Some(r) = level1.join_next().await {
        let (region, st) = r?;
        provincial.push((region, st?));
    }
    let level1_time = start.elapsed();
    // Level 2: the national round over the provinces.
    let t2 = Instant::now();
    let ns = clear(&mut national, &period, "national").await?;
    let level2_time = t2.elapsed();
    let total = start.elapsed();
    let (hwm_after, rss_after) = memory_kib();

    // Correctness, to the fen: every provincial net, every province's national net,
    // Σ net = 0 at both levels, and each province's statement of the national round.
    let mut wrong = Vec::new();
    for (region, st) in &provincial {
        let mut sum = 0;
        for n in &st.nets {
            sum += fen(&n.net);
            if within_net.get(&n.region) != Some(&fen(&n.net)) {
                wrong.push(format!("{region}: {} net {}", n.region, n.net));
            }
        }
        if sum != 0 {
            wrong.push(format!("{region}: Σ net = {sum} fen"));
        }
    }
    let mut sum = 0;
    for (p, code) in PROVINCES.iter().enumerate() {
        let region = format!("{code}0000");
        let got = ns
            .nets
            .iter()
            .find(|x| x.region == region)
            .map_or(i64::MIN, |x| fen(&x.net));
        sum += got;
        if got != province_net[p] {
            wrong.push(format!(
                "national: {region} net {got} fen, expected {}",
                province_net[p]
            ));
        }
    }
    if sum != 0 {
        wrong.push(format!("national: Σ net = {sum} fen"));
    }
    for (region, _, client) in &provinces {
        let ps = client
            .clone()
            .get_statement(proto::RoundRequest {
                request_id: String::new(),
                round_id: ns.round_id.clone(),
            })
            .await?
            .into_inner();
        for n in ps.nets.iter().filter(|n| n.region != NATIONAL.as_str()) {
            if across_net.get(&n.region) != Some(&fen(&n.net)) {
                wrong.push(format!(
                    "{region} national-round statement: {} net {}",
                    n.region, n.net
                ));
            }
        }
    }

    for s in coord_stops {
        let _ = s.send(());
    }
    while let Some(r) = coords.join_next().await {
        r.context("coordinator task")?.context("coordinator")?;
    }
    for s in stops {
        let _ = s.send(());
    }
    while servers.join_next().await.is_some() {}

    let cross: u64 = (0..shape.n())
        .flat_map(|t| (0..shape.k).map(move |j| (t, j)))
        .filter(|(t, j)| province[*t] != province[(t + 1 + j) % shape.n()])
        .map(|(t, j)| agg[t * shape.k + j].count)
        .sum();
    let p = |label: &str, d: Duration| println!("    {label:<44}{:>10}", ms(d));
    println!("  wall time ({period}):");
    p("level 1: 31 provincial rounds (in parallel)", level1_time);
    p("level 2: the national round", level2_time);
    p("total, two levels", total);
    println!(
        "  records: {} across provinces, {} within; national statement {} instructions instead of {} bilateral",
        thousands(cross),
        thousands(agg.iter().map(|a| a.count).sum::<u64>() - cross),
        ns.netted_transfers,
        ns.bilateral_transfers
    );
    println!(
        "  cities: {} reports, {} confirmations, {} marked cleared",
        marks.reports.load(Ordering::SeqCst),
        marks.confirms.load(Ordering::SeqCst),
        marks.cleared.load(Ordering::SeqCst)
    );
    println!(
        "  memory: peak RSS {} (+{} during the rounds), RSS now {} (was {})",
        mib(hwm_after),
        mib(hwm_after.saturating_sub(hwm_before)),
        mib(rss_after),
        mib(rss_before)
    );
    if args.keep {
        println!("  stores kept in {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    if !wrong.is_empty() {
        bail!(
            "{} figures differ from the generated claims: {}",
            wrong.len(),
            wrong.join("; ")
        );
    }
    println!(
        "  checks: Σ net = 0.00 at both levels; every net equals the generated claims' to the fen ok"
    );
    Ok(())
}
