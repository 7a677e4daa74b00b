//! `yidi bench`: the load generator of the settlement hot path. By default it starts a
//! three-node federation (Hangzhou 330100, Ningbo 330200, Wenzhou 330300) on loopback
//! inside this process — each node on its own runtime and its own SQLite store with
//! `synchronous=FULL`, exactly as the daemon serves — or it drives running nodes given
//! with `--node`. It loads generated data through the real AdminService (policies,
//! institutions, catalogue, persons, filings), then drives the real HospitalService over
//! gRPC: every visit is a full sequence open → upload fees → (discharge) → (pre-settle) →
//! settle, with the Settle call timed apart from the preparatory calls.
//!
//! One run measures, in order: the floor (a bare gRPC round trip to a node and a bare
//! durable SQLite commit on the same disk), the unloaded settle latency (one client) as a
//! ratio to two round trips plus two commits, the ceilings (bare gRPC calls and bare
//! writes through a store writer from the same clients, with their CPU: what a
//! settlement's two calls and three writes cost before any work of its own),
//! pre-settle throughput (also as a share of the bare call rate), and the loaded settle
//! throughput with latency percentiles and errors by status code. At the end it
//! checks that every acknowledged settlement exists at its treatment node
//! (HospitalService.GetSettlement) and as a committed claim at its home node
//! (PeerService.ClaimStatus), and that the home node's accumulators of a sample of
//! persons moved by exactly the sum of their acknowledged claims (and, when the stores
//! are local, equal the sum of the committed claims in the home store).
//!
//! `yidi bench-persons` (in [`persons`]) measures the person store at ten million rows.

// Rates, shares and latency ratios of a benchmark; money never passes through floats.
#![allow(clippy::float_arithmetic)]

pub mod freeze;
pub mod nhsa;
pub mod persons;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::SocketAddr,
    path::{Path, PathBuf},
    str::FromStr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use chrono::NaiveDate;
use clap::Args;
use futures::{StreamExt, stream};
use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng, rngs::SmallRng};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tonic::{
    Code, Status,
    transport::{Channel, Endpoint},
};
use yidi_common::{
    idnum,
    money::{self, Sign},
    period,
    policy::Policy,
    proto::{
        self, admin_service_client::AdminServiceClient,
        hospital_service_client::HospitalServiceClient, peer_service_client::PeerServiceClient,
    },
    region::RegionCode,
};

use yidi_node::config::NodeConfig;

/// The cities of the in-process federation.
pub const CITIES: [(&str, &str); 3] = [
    ("330100", "Hangzhou"),
    ("330200", "Ningbo"),
    ("330300", "Wenzhou"),
];

/// The deployed demo policies, compiled in so that the bench runs from any directory.
const POLICIES: [(&str, &str, &str); 6] = [
    (
        "330100",
        "employee",
        include_str!("../../../deploy/policies/330100-employee.toml"),
    ),
    (
        "330100",
        "resident",
        include_str!("../../../deploy/policies/330100-resident.toml"),
    ),
    (
        "330200",
        "employee",
        include_str!("../../../deploy/policies/330200-employee.toml"),
    ),
    (
        "330200",
        "resident",
        include_str!("../../../deploy/policies/330200-resident.toml"),
    ),
    (
        "330300",
        "employee",
        include_str!("../../../deploy/policies/330300-employee.toml"),
    ),
    (
        "330300",
        "resident",
        include_str!("../../../deploy/policies/330300-resident.toml"),
    ),
];

/// Rows per ImportPersons call during setup.
const IMPORT_BATCH: usize = 5_000;
/// Latency histograms record microseconds up to a minute.
const MAX_MICROS: u64 = 60_000_000;

/// Flags of `yidi bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// A running node to drive, e.g. http://127.0.0.1:7101 (repeat once per node of the
    /// federation; each node's region is asked with GetNodeInfo). Without --node the
    /// bench starts three nodes (330100, 330200, 330300) on loopback in this process.
    #[arg(long = "node", value_name = "URL")]
    pub nodes: Vec<String>,
    /// With --node: load the benchmark's data into the running nodes first. Loading is
    /// idempotent (deterministic request ids), so repeating it costs little. In-process
    /// nodes are always loaded.
    #[arg(long)]
    pub setup: bool,
    /// Directory of the in-process nodes' stores (one subdirectory per region) and of
    /// the floor's SQLite commit. Default: a temporary directory, removed at the end.
    /// A reused directory keeps its data (and loads faster).
    #[arg(long, env = "YIDI_BENCH_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Insured persons per city.
    #[arg(long, default_value_t = 10_000)]
    pub persons: u32,
    /// Share of persons with an approved long-term-residence filing for the next city;
    /// cross-region visits are made by filed persons (see --cross-region).
    #[arg(long, default_value_t = 0.5)]
    pub filing_share: f64,
    /// Visit mix as kind=weight pairs; kinds: outpatient, pharmacy, inpatient.
    #[arg(long, default_value = "outpatient=60,pharmacy=20,inpatient=20")]
    pub mix: Mix,
    /// Share of visits by a person insured in another city (cross-region settlement: a
    /// person with a filing for the city after their home city); the rest settle
    /// locally.
    #[arg(long, default_value_t = 0.8)]
    pub cross_region: f64,
    /// Share of visits that pre-settle before settling, as a desk shows the split first.
    #[arg(long, default_value_t = 0.5)]
    pub presettle_share: f64,
    /// Concurrent clients of the load and pre-settle phases; each runs one call at a
    /// time.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Seconds of the load phase (unless --count is given).
    #[arg(long, default_value_t = 60)]
    pub duration: u64,
    /// Run exactly this many visits in the load phase instead of a fixed duration.
    #[arg(long)]
    pub count: Option<u64>,
    /// Prepare every visit of the load phase first (needs --count) and then time only
    /// the Settle calls: the settle throughput without the preparatory traffic.
    #[arg(long)]
    pub settle_only: bool,
    /// Number of "hot" persons (the first K of each city) receiving --hot-share of the
    /// visits, so that concurrent claims contend for the same accumulators; 0: none.
    #[arg(long, default_value_t = 0)]
    pub hot_persons: u32,
    /// Share of visits that go to the hot persons.
    #[arg(long, default_value_t = 0.1)]
    pub hot_share: f64,
    /// Cross-region settlements of the unloaded phase (one client, one at a time; only
    /// the Settle call is timed); 0 skips the phase.
    #[arg(long, default_value_t = 200)]
    pub unloaded: u32,
    /// Seconds of each pre-settle phase (concurrent PreSettle calls on prepared
    /// visits, same-city and cross-region); 0 skips them.
    #[arg(long, default_value_t = 10)]
    pub presettle_seconds: u64,
    /// Seconds of each ceiling phase (bare gRPC calls, and bare writes through a store
    /// writer, from --concurrency clients: what a settlement's calls and writes cost on
    /// this machine before any of its own work); 0 skips them.
    #[arg(long, default_value_t = 5)]
    pub ceiling_seconds: u64,
    /// Visits prepared for the pre-settle phase.
    #[arg(long, default_value_t = 2_000)]
    pub presettle_visits: u32,
    /// HTTP/2 connections the load generator opens to each node (each hospital system
    /// has its own); clients are spread over them.
    #[arg(long, default_value_t = 8)]
    pub connections: usize,
    /// Runtime worker threads of each in-process node. Default: one per core, as the
    /// daemon.
    #[arg(long)]
    pub node_threads: Option<usize>,
    /// Runtime worker threads of the load generator.
    #[arg(long, default_value_t = 2)]
    pub client_threads: usize,
    /// Persons whose accumulators are checked against their claims at the end (the hot
    /// persons first, then a random sample).
    #[arg(long, default_value_t = 200)]
    pub verify_persons: usize,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Seed of the workload's random choices (the data itself is always the same).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// `nhsa`: at the end, also settle through each node's NHSA gateway beside gRPC
    /// (--count each, default 1000) and print the CPU per settlement of both and their
    /// ratio (in-process nodes only).
    #[arg(long, value_enum, default_value = "grpc")]
    pub via: nhsa::Via,
    /// The in-process nodes' NHSA gateways (set by the bench).
    #[arg(skip)]
    pub nhsa_gateways: Vec<(String, SocketAddr)>,
    /// Write this many matching ledger entries of last month into Hangzhou's and
    /// Ningbo's stores before they start, and clear that month in a round (an
    /// in-process coordinator) during the load phase; prints the Settle percentiles
    /// before, during and after the round and each node's longest writer transaction
    /// (in-process nodes only; see `bench::freeze`). 0: no round.
    #[arg(long, default_value_t = 0)]
    pub freeze_entries: u64,
    /// Seconds into the load phase at which the round of --freeze-entries is opened.
    #[arg(long, default_value_t = 10)]
    pub freeze_after: u64,
    /// Start the in-process nodes without admission at their door (every Settle goes
    /// in, as before it existed); by default they run a daemon's admission settings
    /// and the load clients retry a refused Settle after its hint, with jitter.
    #[arg(long)]
    pub no_admission: bool,
    /// The month seeded by --freeze-entries (set by the bench).
    #[arg(skip)]
    pub freeze_period: Option<String>,
}

/// Visit kinds of the workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Outpatient,
    Pharmacy,
    Inpatient,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Outpatient => "outpatient",
            Kind::Pharmacy => "pharmacy",
            Kind::Inpatient => "inpatient",
        }
    }

    fn proto(self) -> proto::VisitKind {
        match self {
            Kind::Outpatient => proto::VisitKind::Outpatient,
            Kind::Pharmacy => proto::VisitKind::Pharmacy,
            Kind::Inpatient => proto::VisitKind::Inpatient,
        }
    }
}

/// The visit mix: weights per kind.
#[derive(Debug, Clone)]
pub struct Mix(Vec<(Kind, u32)>);

impl FromStr for Mix {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut out = Vec::new();
        for part in s.split(',').filter(|p| !p.trim().is_empty()) {
            let (k, w) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?}: expected kind=weight"))?;
            let kind = match k.trim() {
                "outpatient" => Kind::Outpatient,
                "pharmacy" => Kind::Pharmacy,
                "inpatient" => Kind::Inpatient,
                other => {
                    return Err(format!(
                        "unknown visit kind {other:?} (outpatient, pharmacy, inpatient)"
                    ));
                }
            };
            let w: u32 = w
                .trim()
                .parse()
                .map_err(|e| format!("weight of {k}: {e}"))?;
            out.push((kind, w));
        }
        if out.iter().map(|(_, w)| w).sum::<u32>() == 0 {
            return Err("the mix needs at least one positive weight".into());
        }
        Ok(Mix(out))
    }
}

impl Mix {
    fn pick(&self, rng: &mut SmallRng) -> Kind {
        let total: u32 = self.0.iter().map(|(_, w)| w).sum();
        let mut x = rng.random_range(0..total);
        for (k, w) in &self.0 {
            if x < *w {
                return *k;
            }
            x -= w;
        }
        Kind::Outpatient
    }
}

// ------------------------------------------------------------------ generated data

/// A cheap integer mix (splitmix64) so that every person's attributes follow from its
/// index alone: the same flags generate the same data on every run and every machine.
#[must_use]
pub fn mix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// The ID number of person `i` of `region`: district `<city>81`, a birth date from
/// 1940 on (one per thousand persons) and a sequence number.
#[must_use]
pub fn person_id(region: &str, i: u32) -> String {
    let birth = NaiveDate::from_ymd_opt(1940, 1, 1).unwrap_or_default()
        + chrono::Duration::days(i64::from(i / 1000));
    let seq = u16::try_from(i % 1000).unwrap_or_default();
    idnum::make(&format!("{}81", &region[..4]), birth, seq)
}

/// The card number of a person: unique within its region.
#[must_use]
pub fn card_of(id_number: &str) -> String {
    format!("B{}", &id_number[6..17])
}

fn person_hash(region: &str, i: u32) -> u64 {
    mix64(u64::from(i) ^ (u64::from(region.as_bytes()[3]) << 40))
}

/// Whether person `i` of `region` has employee insurance (seven in ten do).
fn is_employee(region: &str, i: u32) -> bool {
    person_hash(region, i) % 10 < 7
}

/// The import row of person `i` of `region`.
#[must_use]
pub fn person_row(region: &str, i: u32) -> proto::PersonRow {
    let id = person_id(region, i);
    let h = person_hash(region, i);
    let employee = is_employee(region, i);
    let (it, pt) = if employee {
        (
            "employee",
            if (h >> 8).is_multiple_of(4) {
                "retired"
            } else {
                "in_service"
            },
        )
    } else {
        (
            "resident",
            ["resident_adult", "resident_minor", "resident_elderly"][((h >> 8) % 3) as usize],
        )
    };
    let balance_fen = if employee {
        20_000 + (h >> 24) % 480_000
    } else {
        0
    };
    proto::PersonRow {
        row: u64::from(i) + 1,
        card_no: card_of(&id),
        name: format!("压测{}", i % 10_000),
        insurance_type: it.into(),
        person_type: pt.into(),
        civil_servant: (employee && (h >> 16).is_multiple_of(20)).to_string(),
        status: "active".into(),
        account_balance: yuan(i64::try_from(balance_fen).unwrap_or_default()),
        enrolled_since: "2015-01-01".into(),
        id_number: id,
    }
}

/// Whether person `i` of the city at `city` has a filing for the next city.
fn has_filing(city: usize, i: u32, share: f64) -> bool {
    let h = mix64(u64::from(i).wrapping_mul(31) ^ (city as u64) ^ 0x5EED);
    ((h % 1_000_000) as f64) < share * 1_000_000.0
}

/// Fen as a yuan string with two decimals.
#[must_use]
pub fn yuan(fen: i64) -> String {
    let sign = if fen < 0 { "-" } else { "" };
    let f = fen.unsigned_abs();
    format!("{sign}{}.{:02}", f / 100, f % 100)
}

fn fen(s: &str, field: &str) -> anyhow::Result<i64> {
    Ok(money::to_fen(money::parse(s, field, Sign::Any)?))
}

/// Institution codes of a city: level-3 hospital, level-1 hospital, pharmacy.
fn institutions(region: &str) -> [(String, proto::InstitutionKind, proto::HospitalLevel); 3] {
    [
        (
            format!("BH{region}3"),
            proto::InstitutionKind::Hospital,
            proto::HospitalLevel::HospitalLevel3,
        ),
        (
            format!("BH{region}1"),
            proto::InstitutionKind::Hospital,
            proto::HospitalLevel::HospitalLevel1,
        ),
        (
            format!("BP{region}"),
            proto::InstitutionKind::Pharmacy,
            proto::HospitalLevel::Ungraded,
        ),
    ]
}

/// The bench's catalogue (the same codes in every city): code, class, first self-pay
/// ratio, price cap.
const ITEMS: [(&str, &str, &str, &str); 10] = [
    ("BA01", "A", "0", ""),
    ("BA02", "A", "0", ""),
    ("BA03", "A", "0", ""),
    ("BA04", "A", "0", ""),
    ("BB01", "B", "0.10", ""),
    ("BB02", "B", "0.05", ""),
    ("BB03", "B", "0.20", ""),
    ("BC01", "C", "0", ""),
    ("BC02", "C", "0", ""),
    ("BCAP", "A", "0", "12.00"),
];

/// Fee lines of a visit of `kind`: amounts are quantity × price exactly.
fn fee_lines(kind: Kind, rng: &mut SmallRng) -> Vec<proto::FeeLine> {
    let (n, lo, hi) = match kind {
        Kind::Outpatient => (rng.random_range(3..=6), 500, 30_000),
        Kind::Pharmacy => (rng.random_range(1..=4), 1_000, 20_000),
        Kind::Inpatient => (rng.random_range(15..=25), 5_000, 300_000),
    };
    (0..n)
        .map(|i| {
            let (code, _, _, cap) = ITEMS[rng.random_range(0..ITEMS.len())];
            let price: i64 = if cap.is_empty() {
                rng.random_range(lo..=hi)
            } else {
                rng.random_range(1_000..=2_000)
            };
            let qty: i64 = rng.random_range(1..=4);
            proto::FeeLine {
                line_no: (i + 1).to_string(),
                item_code: code.into(),
                quantity: qty.to_string(),
                unit_price: yuan(price),
                amount: yuan(price * qty),
                service_date: String::new(),
            }
        })
        .collect()
}

// ------------------------------------------------------------------ nodes

/// A node the bench talks to.
struct Target {
    region: String,
    url: String,
    /// Connections of the load generator.
    channels: Vec<Channel>,
    /// The node's SQLite file, when it runs in this process (read-only checks).
    db: Option<PathBuf>,
}

impl Target {
    fn channel(&self, n: usize) -> Channel {
        self.channels[n % self.channels.len()].clone()
    }

    fn hospital(&self, n: usize) -> HospitalServiceClient<Channel> {
        HospitalServiceClient::new(self.channel(n)).max_decoding_message_size(16 << 20)
    }

    fn admin(&self) -> AdminServiceClient<Channel> {
        AdminServiceClient::new(self.channel(0))
            .max_decoding_message_size(16 << 20)
            .max_encoding_message_size(16 << 20)
    }

    fn peer(&self, n: usize) -> PeerServiceClient<Channel> {
        PeerServiceClient::new(self.channel(n))
    }
}

/// A node served in this process on its own runtime thread (as its own daemon would
/// be), stopped through its shutdown future.
struct LocalNode {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl LocalNode {
    fn start(
        config: NodeConfig,
        listener: std::net::TcpListener,
        threads: usize,
    ) -> anyhow::Result<Self> {
        let (stop, stopped) = oneshot::channel::<()>();
        let name = format!("node-{}", config.region);
        let thread = std::thread::Builder::new().name(name.clone()).spawn(
            move || -> anyhow::Result<()> {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(threads)
                    .thread_name(name)
                    .enable_all()
                    .build()?;
                rt.block_on(async move {
                    listener.set_nonblocking(true)?;
                    let listener = tokio::net::TcpListener::from_std(listener)?;
                    yidi_node::server::serve(
                        listener,
                        async {
                            let _ = stopped.await;
                        },
                        config,
                    )
                    .await?;
                    Ok(())
                })
            },
        )?;
        Ok(Self {
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    fn stop(mut self) -> anyhow::Result<()> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        match self.thread.take().map(std::thread::JoinHandle::join) {
            Some(Ok(r)) => r,
            Some(Err(_)) => bail!("a node thread panicked"),
            None => Ok(()),
        }
    }
}

/// The in-process nodes, their addresses by region and their metrics addresses.
type Federation = (
    Vec<LocalNode>,
    Vec<(String, SocketAddr)>,
    Vec<SocketAddr>,
    Vec<(String, SocketAddr)>,
);

/// Starts the three cities in `root`: listeners first, so the shared peers file names
/// every address before any node starts.
fn start_federation(root: &Path, threads: usize, admission: bool) -> anyhow::Result<Federation> {
    let mut listeners = Vec::new();
    let mut text = String::new();
    for (region, name) in CITIES {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        let addr = l.local_addr()?;
        text.push_str(&format!(
            "[[peer]]\nregion = \"{region}\"\nname = \"{name}\"\naddress = \"http://{addr}\"\n\n"
        ));
        listeners.push((region, name, l, addr));
    }
    std::fs::create_dir_all(root)?;
    let peers_file = root.join("peers.toml");
    std::fs::write(&peers_file, text)?;
    let mut nodes = Vec::new();
    let mut addrs = Vec::new();
    let mut metrics = Vec::new();
    let mut gateways = Vec::new();
    for (region, name, l, addr) in listeners {
        let mut config = NodeConfig::new(
            RegionCode::parse_city(region, "region")?,
            name,
            root.join(region),
        );
        config.listen = addr;
        config.peers_file = Some(peers_file.clone());
        config.drain = Duration::from_secs(5);
        if admission {
            config.admission = yidi_node::admission::AdmissionConfig::default();
        }
        // Metrics on a free loopback port: the bench reads the peer-call counters.
        let m = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        config.metrics_listen = Some(m);
        // The NHSA gateway, for `--via nhsa`.
        let g = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        config.nhsa_listen = Some(g);
        nodes.push(LocalNode::start(config, l, threads)?);
        addrs.push((region.to_owned(), addr));
        metrics.push(m);
        gateways.push((region.to_owned(), g));
    }
    Ok((nodes, addrs, metrics, gateways))
}

/// The metrics exposition of every in-process node (one that does not answer is left
/// out), read once for all the figures taken from it.
async fn scrape_nodes(metrics: &[SocketAddr]) -> Vec<String> {
    let mut out = Vec::with_capacity(metrics.len());
    for &addr in metrics {
        if let Ok(text) = yidi_node::metrics::scrape(addr).await {
            out.push(text);
        }
    }
    out
}

/// Calls from node to node by method, summed over the nodes' metrics: (calls, failed).
fn peer_calls(scraped: &[String]) -> BTreeMap<String, (u64, u64)> {
    let mut out: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for text in scraped {
        for l in text.lines() {
            let failed = if l.starts_with("yidi_peer_calls_total{") {
                false
            } else if l.starts_with("yidi_peer_call_errors_total{") {
                true
            } else {
                continue;
            };
            let method = l
                .split_once("method=\"")
                .and_then(|(_, r)| r.split_once('"'));
            let n = l.rsplit(' ').next().and_then(|v| v.parse::<u64>().ok());
            // Series created at 0 for methods never called are not worth a row.
            if let (Some((method, _)), Some(n @ 1..)) = (method, n) {
                let e = out.entry(method.to_owned()).or_default();
                if failed { e.1 += n } else { e.0 += n }
            }
        }
    }
    out
}

/// The store writers' totals summed over the nodes' metrics: (transactions, requests,
/// seconds committing).
fn store_totals(scraped: &[String]) -> (f64, f64, f64) {
    let mut out = (0.0, 0.0, 0.0);
    for text in scraped {
        for l in text.lines() {
            let n = l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok());
            let Some(n) = n else { continue };
            if l.starts_with("yidi_store_transactions_total{") {
                out.0 += n;
            } else if l.starts_with("yidi_store_requests_total{") {
                out.1 += n;
            } else if l.starts_with("yidi_store_commit_seconds_total{") {
                out.2 += n;
            }
        }
    }
    out
}

/// The peer calls made between two readings of [`peer_calls`], per settlement:
/// `(method, calls, failed)`.
fn peer_calls_per(
    before: &BTreeMap<String, (u64, u64)>,
    after: &BTreeMap<String, (u64, u64)>,
    settled: usize,
) -> Vec<(String, f64, f64)> {
    if settled == 0 {
        return Vec::new();
    }
    after
        .iter()
        .filter_map(|(m, &(c, e))| {
            let (c0, e0) = before.get(m).copied().unwrap_or_default();
            let per = |a: u64, b: u64| a.saturating_sub(b) as f64 / settled as f64;
            (c > c0).then(|| (m.clone(), per(c, c0), per(e, e0)))
        })
        .collect()
}

async fn connect(url: &str, n: usize) -> anyhow::Result<Vec<Channel>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n.max(1) {
        let ch = Endpoint::from_shared(url.to_owned())?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .connect()
            .await
            .with_context(|| format!("connect to {url}"))?;
        out.push(ch);
    }
    Ok(out)
}

// ------------------------------------------------------------------ setup

/// Loads the bench's data into every node through the AdminService.
async fn setup(targets: &[Target], args: &BenchArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    for (c, t) in targets.iter().enumerate() {
        let mut admin = t.admin();
        // Policies: the deployed demo policies, unless the node already has its own.
        let have = admin
            .list_policies(proto::ListPoliciesRequest::default())
            .await?
            .into_inner()
            .policies;
        if have.is_empty() {
            let mine: Vec<_> = POLICIES.iter().filter(|(r, _, _)| *r == t.region).collect();
            if mine.is_empty() {
                bail!(
                    "node {} (region {}) has no policy and the bench has none for it; publish its policies first",
                    t.url,
                    t.region
                );
            }
            for (_, kind, toml) in mine {
                let json = Policy::from_toml(toml)?.to_canonical_json();
                admin
                    .publish_policy(proto::PublishPolicyRequest {
                        request_id: format!("bench-policy-{kind}"),
                        policy_json: json,
                        ..Default::default()
                    })
                    .await?;
            }
        }
        for (code, kind, level) in institutions(&t.region) {
            admin
                .upsert_institution(proto::UpsertInstitutionRequest {
                    request_id: format!("bench-inst-{code}"),
                    institution: Some(proto::Institution {
                        code: code.clone(),
                        name: format!("压测机构 {code}"),
                        kind: kind as i32,
                        level: level as i32,
                        agreement_status: proto::AgreementStatus::Active as i32,
                        agreement_from: "2024-01-01".into(),
                        agreement_to: String::new(),
                    }),
                })
                .await?;
        }
        let rows = ITEMS
            .iter()
            .enumerate()
            .map(|(i, (code, class, ratio, cap))| proto::CatalogueRow {
                row: i as u64 + 1,
                code: (*code).into(),
                name: format!("压测项目 {code}"),
                category: "drug".into(),
                class: (*class).into(),
                first_selfpay_ratio: (*ratio).into(),
                price_cap: (*cap).into(),
                unit: "unit".into(),
                valid_from: "2024-01-01".into(),
                valid_to: String::new(),
                free_of_charge: String::new(),
            })
            .collect();
        let r = admin
            .import_catalogue(proto::ImportCatalogueRequest {
                request_id: "bench-catalogue-1".into(),
                rows,
            })
            .await?
            .into_inner();
        if !r.errors.is_empty() {
            bail!(
                "catalogue import at {} refused rows: {:?}",
                t.region,
                r.errors
            );
        }
        import_persons(t, c, args.persons).await?;
        eprintln!(
            "setup: {} — {} persons loaded ({:.1} s)",
            t.region,
            args.persons,
            started.elapsed().as_secs_f64()
        );
    }
    // Filings: each city's filed persons live in the next city.
    for (c, t) in targets.iter().enumerate() {
        let next = &targets[(c + 1) % targets.len()].region;
        if next == &t.region {
            continue;
        }
        let filed: Vec<u32> = (0..args.persons)
            .filter(|i| has_filing(c, *i, args.filing_share))
            .collect();
        let n = filed.len();
        let errors = AtomicU64::new(0);
        stream::iter(filed)
            .for_each_concurrent(32, |i| {
                let mut admin = t.admin();
                let id = person_id(&t.region, i);
                let errors = &errors;
                async move {
                    let applied = admin
                        .apply_filing(proto::ApplyFilingRequest {
                            request_id: format!("bench-filing-{i}"),
                            id_number: id,
                            filing_type: proto::FilingType::LongTermResident as i32,
                            treatment_region: next.clone(),
                            institutions: Vec::new(),
                            valid_from: "2026-01-01".into(),
                            valid_to: String::new(),
                            note: String::new(),
                        })
                        .await;
                    let ok = match applied {
                        Ok(f) => {
                            let f = f.into_inner();
                            f.status == proto::FilingStatus::Approved as i32
                                || admin
                                    .approve_filing(proto::ReviewFilingRequest {
                                        request_id: format!("bench-approve-{i}"),
                                        filing_id: f.filing_id,
                                        note: String::new(),
                                    })
                                    .await
                                    .is_ok()
                        }
                        Err(_) => false,
                    };
                    if !ok {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
            .await;
        let errors = errors.load(Ordering::Relaxed);
        if errors > 0 {
            bail!("{errors} of {n} filings at {} failed", t.region);
        }
        eprintln!(
            "setup: {} — {n} filings for {next} ({:.1} s)",
            t.region,
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

async fn import_persons(t: &Target, city: usize, persons: u32) -> anyhow::Result<()> {
    let batches: Vec<(usize, std::ops::Range<u32>)> = (0..persons)
        .step_by(IMPORT_BATCH)
        .enumerate()
        .map(|(b, from)| (b, from..(from + IMPORT_BATCH as u32).min(persons)))
        .collect();
    let results: Vec<anyhow::Result<()>> = stream::iter(batches)
        .map(|(b, range)| {
            let mut admin = t.admin();
            let region = t.region.clone();
            async move {
                let rows = range.map(|i| person_row(&region, i)).collect();
                let r = admin
                    .import_persons(proto::ImportPersonsRequest {
                        request_id: format!("bench-persons-{city}-{IMPORT_BATCH}-{b}"),
                        rows,
                    })
                    .await?
                    .into_inner();
                if !r.errors.is_empty() {
                    bail!("person import refused rows: {:?}", &r.errors[..1]);
                }
                Ok(())
            }
        })
        .buffer_unordered(2)
        .collect()
        .await;
    results.into_iter().collect()
}

// ------------------------------------------------------------------ statistics

fn histogram() -> Histogram<u64> {
    Histogram::new_with_max(MAX_MICROS, 3).unwrap_or_else(|_| {
        Histogram::new(3).unwrap_or_else(|_| unreachable!("3 significant digits are valid"))
    })
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// Latency summary in milliseconds.
fn summary(h: &Histogram<u64>) -> Value {
    json!({
        "count": h.len(),
        "mean_ms": h.mean() / 1000.0,
        "p50_ms": ms(h.value_at_quantile(0.50)),
        "p90_ms": ms(h.value_at_quantile(0.90)),
        "p99_ms": ms(h.value_at_quantile(0.99)),
        "p999_ms": ms(h.value_at_quantile(0.999)),
        "max_ms": ms(h.max()),
    })
}

fn line(name: &str, h: &Histogram<u64>) -> String {
    if h.is_empty() {
        return format!("  {name:<22} (none)");
    }
    format!(
        "  {name:<22} n={:<8} p50 {:>7.2}  p90 {:>7.2}  p99 {:>7.2}  p99.9 {:>7.2}  max {:>8.2} ms",
        h.len(),
        ms(h.value_at_quantile(0.50)),
        ms(h.value_at_quantile(0.90)),
        ms(h.value_at_quantile(0.99)),
        ms(h.value_at_quantile(0.999)),
        ms(h.max()),
    )
}

/// Per-call latencies and errors of one client, merged at the end.
#[derive(Default)]
struct Stats {
    calls: BTreeMap<&'static str, Histogram<u64>>,
    /// Calls refused at the node's door (RESOURCE_EXHAUSTED with a retry hint) and
    /// retried after it.
    shed: BTreeMap<&'static str, u64>,
    errors: BTreeMap<(&'static str, String), u64>,
    first_errors: Vec<String>,
}

impl Stats {
    fn record(&mut self, call: &'static str, took: Duration) {
        let _ = self
            .calls
            .entry(call)
            .or_insert_with(histogram)
            .record(micros(took).clamp(1, MAX_MICROS));
    }

    fn error(&mut self, call: &'static str, s: &Status) {
        *self
            .errors
            .entry((call, format!("{:?}", s.code())))
            .or_default() += 1;
        if self.first_errors.len() < 5 {
            self.first_errors
                .push(format!("{call}: {:?} {}", s.code(), s.message()));
        }
    }

    fn merge(&mut self, other: Stats) {
        for (k, n) in other.shed {
            *self.shed.entry(k).or_default() += n;
        }
        for (k, h) in other.calls {
            let _ = self.calls.entry(k).or_insert_with(histogram).add(&h);
        }
        for (k, n) in other.errors {
            *self.errors.entry(k).or_default() += n;
        }
        for e in other.first_errors {
            if self.first_errors.len() < 10 {
                self.first_errors.push(e);
            }
        }
    }

    fn get(&self, call: &str) -> Histogram<u64> {
        self.calls.get(call).cloned().unwrap_or_else(histogram)
    }

    fn errors_json(&self) -> Value {
        let mut m = serde_json::Map::new();
        for ((call, code), n) in &self.errors {
            m.insert(format!("{call}:{code}"), json!(n));
        }
        Value::Object(m)
    }

    fn error_count(&self, call: &str) -> u64 {
        self.errors
            .iter()
            .filter(|((c, _), _)| *c == call)
            .map(|(_, n)| n)
            .sum()
    }
}

// ------------------------------------------------------------------ the workload

/// An acknowledged settlement, checked at the end.
#[derive(Debug, Clone)]
struct Ack {
    treatment: usize,
    home: usize,
    person: u32,
    institution: String,
    settlement_id: String,
    hifp_fen: i64,
    fund_fen: i64,
    kind: Kind,
}

/// Shared, read-only context of the clients.
struct Ctx {
    targets: Vec<Target>,
    args: BenchArgs,
    run: String,
    /// Persons whose Settle ended without a known outcome (their accumulators may have
    /// moved without an acknowledgement): excluded from the delta check.
    in_doubt: Mutex<HashSet<(usize, u32)>>,
    /// Per home city, the hot persons that have a filing (the first `--hot-persons`
    /// filed persons): the cross-region share of the hot traffic.
    hot_filed: Vec<Vec<u32>>,
    /// The load phase's Settle calls with their time (with --freeze-entries).
    timeline: freeze::Timeline,
}

/// A visit ready to settle.
#[derive(Debug, Clone)]
struct Prepared {
    treatment: usize,
    home: usize,
    person: u32,
    institution: String,
    visit_id: String,
    kind: Kind,
    /// The uploaded lines' total (NHSA medfee_sumamt).
    total_fen: i64,
}

impl Ctx {
    /// Chooses who is treated where for what. A cross-region patient is one with a
    /// filing for the treatment city (the next city after home): the deployed policies
    /// settle temporary care directly only for some kinds of visit, and a filed patient
    /// is who a node sees most.
    fn choose(&self, rng: &mut SmallRng, cross: Option<bool>) -> (usize, usize, u32, Kind) {
        let n = self.targets.len();
        let kind = self.args.mix.pick(rng);
        let cross = cross
            .unwrap_or_else(|| rng.random_bool(self.args.cross_region.clamp(0.0, 1.0)))
            && n > 1;
        let home = rng.random_range(0..n);
        let treatment = if cross { (home + 1) % n } else { home };
        let filed_only = cross && self.args.filing_share > 0.0;
        let hot = rng.random_bool(self.args.hot_share.clamp(0.0, 1.0));
        let person = match (hot, filed_only) {
            (true, true) if !self.hot_filed[home].is_empty() => {
                self.hot_filed[home][rng.random_range(0..self.hot_filed[home].len())]
            }
            (true, false) if self.args.hot_persons > 0 => {
                rng.random_range(0..self.args.hot_persons.min(self.args.persons).max(1))
            }
            _ => loop {
                let p = rng.random_range(0..self.args.persons.max(1));
                if !filed_only || has_filing(home, p, self.args.filing_share) {
                    break p;
                }
            },
        };
        // The resident policies do not cover pharmacy purchases: a resident goes to a
        // hospital instead.
        let kind = if kind == Kind::Pharmacy && !is_employee(&self.targets[home].region, person) {
            Kind::Outpatient
        } else {
            kind
        };
        (treatment, home, person, kind)
    }

    /// Where the visit happens: a pharmacy, or a hospital the person's policy covers
    /// for the visit (the deployed resident policies pay outpatient care at level-1
    /// hospitals only).
    fn institution(
        &self,
        treatment: usize,
        home: usize,
        person: u32,
        kind: Kind,
        rng: &mut SmallRng,
    ) -> String {
        let [h3, h1, p] = institutions(&self.targets[treatment].region);
        match kind {
            Kind::Pharmacy => p.0,
            Kind::Outpatient if !is_employee(&self.targets[home].region, person) => h1.0,
            _ if rng.random_bool(0.5) => h1.0,
            _ => h3.0,
        }
    }

    /// Open, upload fees and (inpatient) discharge: the preparatory calls.
    async fn prepare(
        &self,
        rng: &mut SmallRng,
        stats: &mut Stats,
        conn: usize,
        rid: &str,
        choice: (usize, usize, u32, Kind),
    ) -> Option<Prepared> {
        let (treatment, home, person, kind) = choice;
        let t = &self.targets[treatment];
        let institution = self.institution(treatment, home, person, kind, rng);
        let mut h = t.hospital(conn);
        let started = Instant::now();
        let visit = match h
            .open_visit(proto::OpenVisitRequest {
                request_id: format!("{rid}-o"),
                institution_code: institution.clone(),
                id_number: person_id(&self.targets[home].region, person),
                home_region: self.targets[home].region.clone(),
                visit_kind: kind.proto() as i32,
                external_visit_no: rid.to_owned(),
                admitted_at: String::new(),
                diagnosis_code: "J06.9".into(),
            })
            .await
        {
            Ok(v) => v.into_inner(),
            Err(s) => {
                stats.error("OpenVisit", &s);
                return None;
            }
        };
        stats.record("OpenVisit", started.elapsed());
        let started = Instant::now();
        let lines = fee_lines(kind, rng);
        let total_fen = lines
            .iter()
            .map(|l| fen(&l.amount, "amount").unwrap_or(0))
            .sum();
        if let Err(s) = h
            .upload_fees(proto::UploadFeesRequest {
                request_id: format!("{rid}-f"),
                institution_code: institution.clone(),
                visit_id: visit.visit_id.clone(),
                lines,
            })
            .await
        {
            stats.error("UploadFees", &s);
            return None;
        }
        stats.record("UploadFees", started.elapsed());
        if kind == Kind::Inpatient {
            let started = Instant::now();
            if let Err(s) = h
                .close_visit(proto::CloseVisitRequest {
                    request_id: format!("{rid}-c"),
                    institution_code: institution.clone(),
                    visit_id: visit.visit_id.clone(),
                    discharged_at: String::new(),
                })
                .await
            {
                stats.error("CloseVisit", &s);
                return None;
            }
            stats.record("CloseVisit", started.elapsed());
        }
        Some(Prepared {
            treatment,
            home,
            person,
            institution,
            visit_id: visit.visit_id,
            kind,
            total_fen,
        })
    }

    /// Settles a prepared visit; the Settle call is timed under `settle_call`.
    async fn settle(
        &self,
        stats: &mut Stats,
        conn: usize,
        rid: &str,
        p: &Prepared,
        presettle: bool,
    ) -> Option<Ack> {
        let mut h = self.targets[p.treatment].hospital(conn);
        let req = proto::SettleRequest {
            request_id: format!("{rid}-s"),
            institution_code: p.institution.clone(),
            visit_id: p.visit_id.clone(),
            use_account: p.person.is_multiple_of(2),
        };
        if presettle {
            let started = Instant::now();
            match h.pre_settle(req.clone()).await {
                Ok(_) => stats.record("PreSettle", started.elapsed()),
                Err(s) => stats.error("PreSettle", &s),
            }
        }
        let call = if p.treatment == p.home {
            "Settle(local)"
        } else {
            "Settle(cross-region)"
        };
        let (with_retries, shed_name) = if p.treatment == p.home {
            ("Settle(local) incl. retries", "Settle(local)")
        } else {
            ("Settle(cross-region) incl. retries", "Settle(cross-region)")
        };
        // A call refused at the node's door is repeated after the node's hint, with
        // jitter (half to one and a half times it) so that refused clients do not come
        // back together; the last call's time is the admitted call's latency, the time
        // from the first the end-to-end one.
        let first = Instant::now();
        let mut refused = 0u64;
        let (answer, started) = loop {
            let started = Instant::now();
            let answer = h.settle(req.clone()).await;
            let hint = answer.as_ref().err().and_then(retry_hint);
            match hint {
                Some(ms) if refused < MAX_SHED_RETRIES => {
                    refused += 1;
                    *stats.shed.entry(shed_name).or_default() += 1;
                    let jitter = 50 + mix64(first.elapsed().as_nanos() as u64 ^ refused) % 101;
                    tokio::time::sleep(Duration::from_micros(ms * 10 * jitter)).await;
                }
                _ => break (answer, started),
            }
        };
        match answer {
            Ok(s) => {
                stats.record(call, started.elapsed());
                stats.record(with_retries, first.elapsed());
                if self.args.freeze_period.is_some() {
                    self.timeline.record(micros(started.elapsed()));
                }
                let s = s.into_inner();
                let split = s.split.unwrap_or_default();
                if s.state != "settled" {
                    stats.error(call, &Status::unknown(format!("state {}", s.state)));
                    return None;
                }
                Some(Ack {
                    treatment: p.treatment,
                    home: p.home,
                    person: p.person,
                    institution: p.institution.clone(),
                    settlement_id: s.settlement_id,
                    hifp_fen: fen(&split.hifp_pay, "hifp_pay").unwrap_or(i64::MIN),
                    fund_fen: fen(&split.fund_pay_sumamt, "fund_pay_sumamt").unwrap_or(i64::MIN),
                    kind: p.kind,
                })
            }
            Err(s) => {
                stats.error(call, &s);
                // Refusals leave nothing behind; anything else may have committed.
                if !matches!(
                    s.code(),
                    Code::InvalidArgument
                        | Code::FailedPrecondition
                        | Code::NotFound
                        | Code::PermissionDenied
                        | Code::AlreadyExists
                ) && let Ok(mut d) = self.in_doubt.lock()
                {
                    d.insert((p.home, p.person));
                }
                None
            }
        }
    }
}

/// Refusals at the door a load client retries before it counts the call as failed.
const MAX_SHED_RETRIES: u64 = 1_000;

/// The retry hint of a refusal at the node's door (`retry-after-ms`), in ms.
fn retry_hint(s: &Status) -> Option<u64> {
    (s.code() == Code::ResourceExhausted)
        .then(|| s.metadata().get(yidi_node::admission::RETRY_AFTER_MS))
        .flatten()
        .and_then(|v| v.to_str().ok()?.parse().ok())
}

/// The outcome of one client of a phase.
struct Client {
    stats: Stats,
    acks: Vec<Ack>,
}

/// Settles a stream of visits with `--concurrency` clients until the deadline or the
/// count; `prepared` (settle-only) replaces the preparatory calls.
async fn load_phase(
    ctx: &Arc<Ctx>,
    prepared: Option<Arc<Vec<Prepared>>>,
) -> (Stats, Vec<Ack>, Duration, Vec<f64>) {
    let args = &ctx.args;
    let stop = Arc::new(AtomicBool::new(false));
    let started_visits = Arc::new(AtomicU64::new(0));
    let settled = Arc::new(AtomicU64::new(0));
    let next = Arc::new(AtomicUsize::new(0));
    let count = match &prepared {
        Some(p) => Some(p.len() as u64),
        None => args.count,
    };
    let began = Instant::now();
    let mut handles = Vec::new();
    for w in 0..args.concurrency.max(1) {
        let (ctx, stop, started_visits, settled, next, prepared) = (
            Arc::clone(ctx),
            Arc::clone(&stop),
            Arc::clone(&started_visits),
            Arc::clone(&settled),
            Arc::clone(&next),
            prepared.clone(),
        );
        handles.push(tokio::spawn(async move {
            let mut rng = SmallRng::seed_from_u64(ctx.args.seed ^ mix64(w as u64 + 1));
            let mut client = Client {
                stats: Stats::default(),
                acks: Vec::new(),
            };
            loop {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let n = started_visits.fetch_add(1, Ordering::Relaxed);
                if count.is_some_and(|c| n >= c) {
                    break;
                }
                let rid = format!("b{}-{w}-{n}", ctx.run);
                let p = match &prepared {
                    Some(all) => {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        match all.get(i) {
                            Some(p) => p.clone(),
                            None => break,
                        }
                    }
                    None => {
                        let choice = ctx.choose(&mut rng, None);
                        match ctx
                            .prepare(&mut rng, &mut client.stats, w, &rid, choice)
                            .await
                        {
                            Some(p) => p,
                            None => continue,
                        }
                    }
                };
                let presettle =
                    prepared.is_none() && rng.random_bool(ctx.args.presettle_share.clamp(0.0, 1.0));
                if let Some(ack) = ctx.settle(&mut client.stats, w, &rid, &p, presettle).await {
                    settled.fetch_add(1, Ordering::Relaxed);
                    client.acks.push(ack);
                }
            }
            client
        }));
    }
    // Progress, and the settle rate of every 5-second window (is it sustained?). The task
    // is stopped as soon as the clients are done: a --count run ends mid-window, and that
    // partial window must not count as a slow one.
    let windows = Arc::new(Mutex::new(Vec::new()));
    let progress = {
        let (stop, settled, windows) = (
            Arc::clone(&stop),
            Arc::clone(&settled),
            Arc::clone(&windows),
        );
        let deadline = count
            .is_none()
            .then(|| began + Duration::from_secs(args.duration));
        tokio::spawn(async move {
            let mut last = (Instant::now(), 0u64);
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            tick.tick().await;
            loop {
                let sleep_until =
                    deadline.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
                tokio::select! {
                    _ = tick.tick() => {
                        let now = (Instant::now(), settled.load(Ordering::Relaxed));
                        let rate = (now.1 - last.1) as f64 / (now.0 - last.0).as_secs_f64();
                        if let Ok(mut w) = windows.lock() {
                            w.push(rate);
                        }
                        eprintln!(
                            "  {:>5.0} s  {:>9} settled  {:>8.0}/s",
                            began.elapsed().as_secs_f64(),
                            now.1,
                            rate
                        );
                        last = now;
                    }
                    () = tokio::time::sleep_until(sleep_until.into()) => {
                        stop.store(true, Ordering::Relaxed);
                        return;
                    }
                }
            }
        })
    };
    let mut stats = Stats::default();
    let mut acks = Vec::new();
    for h in handles {
        if let Ok(c) = h.await {
            stats.merge(c.stats);
            acks.extend(c.acks);
        }
    }
    let elapsed = began.elapsed();
    stop.store(true, Ordering::Relaxed);
    progress.abort();
    let windows = windows.lock().map(|w| w.clone()).unwrap_or_default();
    (stats, acks, elapsed, windows)
}

/// CPU time this process has used (user + system, in seconds): the whole process, and
/// by thread group ([`thread_group`]), from `/proc/self/stat` and `/proc/self/task/*/stat`
/// in clock ticks of 1/100 s (Linux's USER_HZ). With the nodes in this process it is the
/// whole federation's and the load generator's CPU: divided by the operations it is the
/// cost of one, a figure that moves far less than throughput when the host's other
/// tenants come and go; by group it says which side a change made cheaper.
#[derive(Debug)]
struct CpuSample {
    total: f64,
    groups: BTreeMap<&'static str, f64>,
}

/// The thread groups of an in-process run, in the order they are printed: the nodes'
/// store writers, the nodes' runtime and read-pool threads, the load generator's runtime,
/// and the rest. Threads that ended during a phase (idle read-pool threads retire) count
/// in the process total only, so "other" is the total less the named groups.
const THREAD_GROUPS: [&str; 4] = [
    "writers",
    "node runtimes and read pools",
    "load generator",
    "other",
];

/// A thread's group in [`THREAD_GROUPS`], by its name (Linux keeps 15 bytes of it).
fn thread_group(comm: &str) -> &'static str {
    let i = if comm.starts_with("yidi-store-writ") {
        0
    } else if comm.starts_with("node-") {
        1
    } else if comm.starts_with("bench-client") {
        2
    } else {
        3
    };
    THREAD_GROUPS[i]
}

/// The command name and user + system seconds of one `/proc/…/stat` line.
fn stat_cpu(stat: &str) -> Option<(&str, f64)> {
    // The command name sits in parentheses and may hold spaces.
    let (open, close) = (stat.find('(')?, stat.rfind(')')?);
    let comm = &stat[open + 1..close];
    let mut fields = stat.get(close + 2..)?.split_ascii_whitespace().skip(11);
    let utime: f64 = fields.next()?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    Some((comm, (utime + stime) / 100.0))
}

/// The process's [`CpuSample`] now; `None` where there is no `/proc`.
fn cpu_sample() -> Option<CpuSample> {
    let (_, total) = stat_cpu(&std::fs::read_to_string("/proc/self/stat").ok()?)?;
    let mut groups = BTreeMap::new();
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue; // ended between the listing and the read
        };
        if let Some((comm, secs)) = stat_cpu(&stat) {
            *groups.entry(thread_group(comm)).or_insert(0.0) += secs;
        }
    }
    Some(CpuSample { total, groups })
}

/// CPU per operation between two [`cpu_sample`]s, in milliseconds: the total and by
/// thread group (what threads that ended in between used counts as "other").
#[derive(Debug)]
struct CpuPerOp {
    total_ms: f64,
    /// In the order of [`THREAD_GROUPS`].
    groups_ms: Vec<(&'static str, f64)>,
}

impl CpuPerOp {
    fn between(before: Option<CpuSample>, ops: usize) -> Option<Self> {
        let (before, after) = (before?, cpu_sample()?);
        if ops == 0 {
            return None;
        }
        let per = |secs: f64| secs.max(0.0) * 1000.0 / ops as f64;
        let used = |s: &CpuSample, g| s.groups.get(g).copied().unwrap_or(0.0);
        let total = after.total - before.total;
        let mut named = 0.0;
        let mut groups_ms = Vec::new();
        for g in THREAD_GROUPS {
            let secs = if g == "other" {
                total - named
            } else {
                (used(&after, g) - used(&before, g)).max(0.0)
            };
            named += secs;
            groups_ms.push((g, per(secs)));
        }
        // The process total and the threads are read a moment apart, in clock ticks:
        // when the named groups come out a tick above the total, "other" is 0 and the
        // total their sum, so that the groups always add up to it.
        Some(Self {
            total_ms: groups_ms.iter().map(|(_, ms)| ms).sum(),
            groups_ms,
        })
    }

    /// One line, e.g. `1.980 ms (writers 0.950, node runtimes and read pools 0.800, …)`.
    fn text(&self) -> String {
        let groups: Vec<String> = self
            .groups_ms
            .iter()
            .map(|(g, ms)| format!("{g} {ms:.3}"))
            .collect();
        format!("{:.3} ms ({})", self.total_ms, groups.join(", "))
    }

    fn groups_json(&self) -> serde_json::Value {
        self.groups_ms
            .iter()
            .map(|&(g, ms)| (g.to_owned(), json!(ms)))
            .collect::<serde_json::Map<_, _>>()
            .into()
    }
}

/// Runs `call` from every client, one call at a time, for `seconds`; the elapsed
/// seconds and the clients' statistics. `call` gets the client's number and a random
/// draw, and names the call it made with its outcome.
async fn timed_clients<F, Fut>(ctx: &Arc<Ctx>, seconds: u64, salt: u64, call: F) -> (f64, Stats)
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = (&'static str, Result<(), Status>)> + Send,
{
    let call = Arc::new(call);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let began = Instant::now();
    let mut handles = Vec::new();
    for w in 0..ctx.args.concurrency.max(1) {
        let call = Arc::clone(&call);
        let mut rng = SmallRng::seed_from_u64(ctx.args.seed ^ mix64(w as u64 + salt));
        handles.push(tokio::spawn(async move {
            let mut stats = Stats::default();
            while Instant::now() < deadline {
                let started = Instant::now();
                match call(w, rng.random()).await {
                    (name, Ok(())) => stats.record(name, started.elapsed()),
                    (name, Err(s)) => stats.error(name, &s),
                }
            }
            stats
        }));
    }
    let mut stats = Stats::default();
    for h in handles {
        if let Ok(s) = h.await {
            stats.merge(s);
        }
    }
    (began.elapsed().as_secs_f64(), stats)
}

/// Pre-settles random visits of `visits` from every client for the configured seconds.
async fn presettle_phase(ctx: &Arc<Ctx>, visits: Vec<Prepared>) -> (f64, Stats) {
    let (visits, c) = (Arc::new(visits), Arc::clone(ctx));
    timed_clients(ctx, ctx.args.presettle_seconds, 99, move |w, draw| {
        let p = &visits[(draw % visits.len() as u64) as usize];
        let mut h = c.targets[p.treatment].hospital(w);
        let req = proto::SettleRequest {
            request_id: "presettle".into(),
            institution_code: p.institution.clone(),
            visit_id: p.visit_id.clone(),
            use_account: true,
        };
        async move { ("PreSettle", h.pre_settle(req).await.map(drop)) }
    })
    .await
}

/// Bare gRPC calls (health Check: no store, no engine) from every client over the
/// load's connections to random nodes for `--ceiling-seconds`. A PreSettle is one such
/// call plus its own work, so their rate is the most pre-settles this machine's cores
/// could serve with this gRPC stack.
async fn bare_call_phase(ctx: &Arc<Ctx>) -> (f64, Stats) {
    let c = Arc::clone(ctx);
    timed_clients(ctx, ctx.args.ceiling_seconds, 4242, move |w, draw| {
        let t = &c.targets[(draw % c.targets.len() as u64) as usize];
        let mut h = tonic_health::pb::health_client::HealthClient::new(t.channel(w));
        async move {
            let req = tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            };
            ("bare call", h.check(req).await.map(drop))
        }
    })
    .await
}

/// A store opened in `dir` exactly as a node opens its own (same settings, group
/// commit, `synchronous=FULL`), with a table for the bare writes.
async fn ceiling_store(dir: &Path) -> anyhow::Result<yidi_node::store::Store> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let store = {
        let dir = dir.to_path_buf();
        tokio::task::spawn_blocking(move || yidi_node::store::Store::open(&dir, 1, "330100"))
            .await??
    };
    store
        .write(|conn| {
            conn.execute_batch(
                "CREATE TABLE bench_ceiling (id INTEGER PRIMARY KEY, v TEXT NOT NULL)",
            )?;
            Ok(())
        })
        .await?;
    Ok(store)
}

/// Bare writes from every client for `--ceiling-seconds`: a one-row insert each,
/// through `store`'s writer (its own savepoint per write, group commit). A
/// settlement's writes are such writes plus their own work. The store lies in the
/// bench's data directory: with `--node`, on the nodes' disk only if they share it.
async fn bare_write_phase(ctx: &Arc<Ctx>, store: &yidi_node::store::Store) -> (f64, Stats) {
    let s = store.clone();
    timed_clients(ctx, ctx.args.ceiling_seconds, 4343, move |w, draw| {
        let s = s.clone();
        async move {
            let write = s.write(move |conn| {
                conn.prepare_cached("INSERT INTO bench_ceiling (v) VALUES (?1)")?
                    .execute([format!("client {w} draw {draw}")])?;
                Ok(())
            });
            ("bare write", write.await.map_err(Status::from))
        }
    })
    .await
}

/// The least CPU a cross-region settlement can take, from a bare call's and a bare
/// write's (hospital → treatment node and treatment → home node: two calls, when the
/// home node's eligibility answer is reused, else three; the intent, the claim at the
/// home node and the outcome: three writes), in ms, and the most settlements per second
/// the machine's cores could then carry. Like every CPU figure of an in-process run, a
/// call's includes the load generator's side of it.
fn least_cross_region_settle(call_ms: f64, write_ms: f64) -> Option<(f64, f64)> {
    let ms = 2.0 * call_ms + 3.0 * write_ms;
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    (ms > 0.0).then(|| (ms, cores as f64 * 1e3 / ms))
}

/// The ceiling phases: bare calls, then bare writes (see [`bare_call_phase`] and
/// [`bare_write_phase`]), each with its CPU per operation; printed, and returned as
/// JSON beside the bare call rate (none when no call succeeded).
async fn ceilings(
    ctx: &Arc<Ctx>,
    dir: &Path,
    in_process: bool,
) -> anyhow::Result<(Option<f64>, Value)> {
    let per_op = |cpu, n: u64| {
        in_process
            .then(|| CpuPerOp::between(cpu, n as usize))
            .flatten()
    };
    let cpu = cpu_sample();
    let (call_secs, call_stats) = bare_call_phase(ctx).await;
    let calls = call_stats.get("bare call");
    let call_cpu = per_op(cpu, calls.len());
    let store = ceiling_store(dir).await?;
    let before = store.writer_totals();
    let cpu = cpu_sample();
    let (write_secs, write_stats) = bare_write_phase(ctx, &store).await;
    let writes = write_stats.get("bare write");
    // Sampled while the store's writer thread still runs, so that its CPU counts as a
    // writer's.
    let write_cpu = per_op(cpu, writes.len());
    let after = store.writer_totals();
    drop(store);
    let _ = std::fs::remove_dir_all(dir);
    let (call_rate, write_rate) = (
        calls.len() as f64 / call_secs,
        writes.len() as f64 / write_secs,
    );
    let per_tx = (after.jobs - before.jobs) as f64
        / (after.transactions - before.transactions).max(1) as f64;
    println!(
        "ceilings ({} clients; bare gRPC calls, health Check, over the load's connections; bare one-row writes through a store writer)",
        ctx.args.concurrency
    );
    println!("{}", line("bare call", &calls));
    println!("{}", line("bare write", &writes));
    println!(
        "  {call_rate:.0} calls/s, {write_rate:.0} writes/s ({per_tx:.1} per transaction); errors: calls {:?}, writes {:?}",
        call_stats.errors, write_stats.errors
    );
    if let (Some(c), Some(w)) = (&call_cpu, &write_cpu) {
        println!("  CPU per call: {}", c.text());
        println!("  CPU per write: {}", w.text());
    }
    let settle = call_cpu
        .as_ref()
        .zip(write_cpu.as_ref())
        .and_then(|(c, w)| least_cross_region_settle(c.total_ms, w.total_ms));
    if let Some((ms, rate)) = settle {
        println!(
            "  a cross-region settlement (2 calls, 3 writes) takes at least {ms:.3} ms of CPU: at most {rate:.0}/s on these cores"
        );
    }
    let phase = |secs: f64,
                 rate: f64,
                 h: &Histogram<u64>,
                 stats: &Stats,
                 cpu: &Option<CpuPerOp>| {
        json!({"per_second": rate, "seconds": secs, "latency": summary(h), "errors": stats.errors_json(),
            "cpu_ms_per_op": cpu.as_ref().map(|c| c.total_ms),
            "cpu_ms_per_op_by_threads": cpu.as_ref().map(CpuPerOp::groups_json)})
    };
    let mut w = phase(write_secs, write_rate, &writes, &write_stats, &write_cpu);
    w["requests_per_transaction"] = json!(per_tx);
    let json = json!({
        "bare_calls": phase(call_secs, call_rate, &calls, &call_stats, &call_cpu),
        "bare_writes": w,
        "cross_region_settle_min_cpu_ms": settle.map(|s| s.0),
        "cross_region_settle_max_per_second": settle.map(|s| s.1),
    });
    Ok(((call_rate > 0.0).then_some(call_rate), json))
}

/// Prepares `n` visits with `--concurrency` clients (cross-region only when asked).
async fn prepare_many(
    ctx: &Arc<Ctx>,
    n: u64,
    cross: Option<bool>,
    tag: &str,
) -> (Vec<Prepared>, Stats) {
    let out = Mutex::new((Vec::new(), Stats::default()));
    let next = AtomicU64::new(0);
    let workers = ctx.args.concurrency.max(1);
    stream::iter(0..workers)
        .for_each_concurrent(workers, |w| {
            let (ctx, out, next) = (Arc::clone(ctx), &out, &next);
            async move {
                let mut rng = SmallRng::seed_from_u64(ctx.args.seed ^ mix64(w as u64 + 7777));
                let mut stats = Stats::default();
                let mut mine = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    let rid = format!("{tag}{}-{i}", ctx.run);
                    let choice = ctx.choose(&mut rng, cross);
                    if let Some(p) = ctx.prepare(&mut rng, &mut stats, w, &rid, choice).await {
                        mine.push(p);
                    }
                }
                if let Ok(mut o) = out.lock() {
                    o.0.extend(mine);
                    o.1.merge(stats);
                }
            }
        })
        .await;
    out.into_inner().unwrap_or_default()
}

// ------------------------------------------------------------------ floor

/// A bare gRPC round trip (health Check) to `t`, one at a time.
async fn floor_rtt(t: &Target) -> anyhow::Result<Histogram<u64>> {
    let mut client = tonic_health::pb::health_client::HealthClient::new(t.channel(0));
    let mut h = histogram();
    for i in 0..2_200 {
        let started = Instant::now();
        client
            .check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await?;
        if i >= 200 {
            let _ = h.record(micros(started.elapsed()).clamp(1, MAX_MICROS));
        }
    }
    Ok(h)
}

/// A bare durable SQLite commit on the same disk: a one-row insert per transaction in a
/// WAL database with `synchronous=FULL`, the node's own settings. Measured twice: while
/// the WAL file grows (every fsync also writes the file's new size, as on a fresh
/// store) and in the steady state of a running node, where the WAL file has reached its
/// size and is overwritten from its start after each checkpoint. The steady state is
/// the floor (the smaller, stricter one).
fn floor_commit(dir: &Path) -> anyhow::Result<(Histogram<u64>, Histogram<u64>)> {
    let path = dir.join("floor-commit.db");
    let remove = || {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(dir.join(format!("floor-commit.db{suffix}")));
        }
    };
    remove();
    let conn = rusqlite::Connection::open(&path)?;
    let _: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)")?;
    let commits = |n: usize| -> anyhow::Result<Histogram<u64>> {
        let mut h = histogram();
        for i in 0..n + 30 {
            let started = Instant::now();
            conn.execute("INSERT INTO t (v) VALUES (?1)", [format!("row {i}")])?;
            if i >= 30 {
                let _ = h.record(micros(started.elapsed()).clamp(1, MAX_MICROS));
            }
        }
        Ok(h)
    };
    let growing = commits(300)?;
    // Grow the WAL to 8 MiB in one transaction, then restart it: later commits
    // overwrite its start and no longer change the file's size.
    conn.execute_batch("BEGIN")?;
    for _ in 0..2_000 {
        conn.execute("INSERT INTO t (v) VALUES (?1)", [" ".repeat(4_000)])?;
    }
    conn.execute_batch("COMMIT")?;
    let _: (i64, i64, i64) = conn.query_row("PRAGMA wal_checkpoint(RESTART)", [], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
    })?;
    let steady = commits(300)?;
    drop(conn);
    remove();
    Ok((steady, growing))
}

// ------------------------------------------------------------------ verification

#[derive(Debug, Default)]
struct Verified {
    acks: u64,
    at_treatment: u64,
    at_home: u64,
    problems: Vec<String>,
    persons_checked: u64,
    persons_delta_ok: u64,
    persons_store_ok: u64,
    persons_store_checked: u64,
}

/// The accumulators of a person at its home node (PeerService.CheckEligibility, as a
/// treatment node sees them).
async fn accumulators(ctx: &Ctx, home: usize, person: u32) -> Result<proto::Accumulators, Status> {
    let n = ctx.targets.len();
    let treatment = (home + 1) % n;
    let t = &ctx.targets[treatment];
    let r = ctx.targets[home]
        .peer(person as usize)
        .check_eligibility(proto::CheckEligibilityRequest {
            settle_date: String::new(),
            id_number: person_id(&ctx.targets[home].region, person),
            institution_code: institutions(&t.region)[0].0.clone(),
            level: proto::HospitalLevel::HospitalLevel3 as i32,
            visit_kind: proto::VisitKind::Outpatient as i32,
            visit_date: period::today().to_string(),
            treatment_region: t.region.clone(),
        })
        .await?
        .into_inner();
    Ok(r.accumulators.unwrap_or_default())
}

/// The persons whose accumulators are checked: hot persons first, then a sample.
fn sample_persons(ctx: &Ctx) -> Vec<(usize, u32)> {
    let mut rng = SmallRng::seed_from_u64(ctx.args.seed ^ 0xACC);
    let mut out = Vec::new();
    let want = ctx.args.verify_persons;
    let hot = ctx.args.hot_persons.min(ctx.args.persons);
    let mut seen = HashSet::new();
    for (h, filed) in ctx.hot_filed.iter().enumerate() {
        for &p in filed.iter().chain(&(0..hot).collect::<Vec<_>>()) {
            if out.len() < want / 2 && seen.insert((h, p)) {
                out.push((h, p));
            }
        }
    }
    let mut tries = 0;
    while out.len() < want && tries < want * 20 {
        tries += 1;
        let x = (
            rng.random_range(0..ctx.targets.len()),
            rng.random_range(0..ctx.args.persons.max(1)),
        );
        if seen.insert(x) {
            out.push(x);
        }
    }
    out
}

/// Checks every acknowledged settlement at both nodes and the sample's accumulators.
async fn verify(
    ctx: &Ctx,
    acks: &[Ack],
    before: &HashMap<(usize, u32), proto::Accumulators>,
) -> Verified {
    let v = Mutex::new(Verified {
        acks: acks.len() as u64,
        ..Default::default()
    });
    stream::iter(acks.iter().enumerate())
        .for_each_concurrent(64, |(i, a)| {
            let v = &v;
            async move {
                let t = &ctx.targets[a.treatment];
                let h = &ctx.targets[a.home];
                let here = t
                    .hospital(i)
                    .get_settlement(proto::GetSettlementRequest {
                        institution_code: a.institution.clone(),
                        settlement_id: a.settlement_id.clone(),
                    })
                    .await;
                let there = h
                    .peer(i)
                    .claim_status(proto::ClaimStatusRequest {
                        claim_id: a.settlement_id.clone(),
                    })
                    .await;
                let mut v = v.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                match here {
                    Ok(s) => {
                        let s = s.into_inner();
                        let fund = s
                            .split
                            .as_ref()
                            .and_then(|x| fen(&x.fund_pay_sumamt, "fund").ok());
                        if s.state == "settled" && fund == Some(a.fund_fen) {
                            v.at_treatment += 1;
                        } else if v.problems.len() < 20 {
                            v.problems.push(format!(
                                "{} at {}: state {} fund {:?}, acknowledged {}",
                                a.settlement_id, t.region, s.state, fund, a.fund_fen
                            ));
                        }
                    }
                    Err(e) if v.problems.len() < 20 => v.problems.push(format!(
                        "{} missing at treatment node {}: {e:?}",
                        a.settlement_id, t.region
                    )),
                    Err(_) => {}
                }
                match there {
                    Ok(c) if c.get_ref().state == "committed" => v.at_home += 1,
                    Ok(c) if v.problems.len() < 20 => v.problems.push(format!(
                        "claim {} at home node {} is {:?}",
                        a.settlement_id,
                        h.region,
                        c.get_ref().state
                    )),
                    Err(e) if v.problems.len() < 20 => v.problems.push(format!(
                        "claim {} unreadable at home node {}: {e:?}",
                        a.settlement_id, h.region
                    )),
                    _ => {}
                }
            }
        })
        .await;
    let mut v = v.into_inner().unwrap_or_default();
    // Accumulators: moved by exactly the acknowledged claims (both modes), and equal to
    // the sum of the committed claims in the home store (in-process stores).
    let mut acked: HashMap<(usize, u32), i64> = HashMap::new();
    for a in acks {
        *acked.entry((a.home, a.person)).or_default() += a.hifp_fen;
    }
    let in_doubt = ctx.in_doubt.lock().map(|d| d.clone()).unwrap_or_default();
    let year = chrono::Datelike::year(&period::today());
    for (&(home, person), was) in before {
        let now = match accumulators(ctx, home, person).await {
            Ok(a) => a,
            Err(e) => {
                v.problems
                    .push(format!("accumulators of {person}@{home}: {e:?}"));
                continue;
            }
        };
        v.persons_checked += 1;
        let moved = fen(&now.pool_paid, "pool_paid").unwrap_or(i64::MIN)
            - fen(&was.pool_paid, "pool_paid").unwrap_or(i64::MIN);
        let expected = acked.get(&(home, person)).copied().unwrap_or(0);
        if in_doubt.contains(&(home, person)) || moved == expected {
            v.persons_delta_ok += 1;
        } else if v.problems.len() < 40 {
            v.problems.push(format!(
                "person {} of {}: pool_paid moved by {} but acknowledged claims sum to {}",
                person_id(&ctx.targets[home].region, person),
                ctx.targets[home].region,
                yuan(moved),
                yuan(expected)
            ));
        }
        if let Some(db) = &ctx.targets[home].db {
            match store_claims(db, &person_id(&ctx.targets[home].region, person), year) {
                Ok((sum, n)) => {
                    v.persons_store_checked += 1;
                    if Some(sum) == fen(&now.pool_paid, "pool_paid").ok() && n == now.version {
                        v.persons_store_ok += 1;
                    } else if v.problems.len() < 40 {
                        v.problems.push(format!(
                            "person {person}@{}: accumulators pool_paid {} v{}, committed claims sum {} in {n} claims",
                            ctx.targets[home].region,
                            now.pool_paid,
                            now.version,
                            yuan(sum)
                        ));
                    }
                }
                Err(e) => v.problems.push(format!("home store read: {e:#}")),
            }
        }
    }
    v
}

/// Σ hifp_pay and the number of a person's committed claims of `year` in a home store
/// (read-only).
fn store_claims(db: &Path, id_number: &str, year: i32) -> anyhow::Result<(i64, u64)> {
    let conn = rusqlite::Connection::open_with_flags(
        db,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    let mut stmt = conn.prepare(
        "SELECT split FROM claims WHERE id_number = ?1 AND acc_year = ?2 AND state = 'committed'",
    )?;
    let mut rows = stmt.query(rusqlite::params![id_number, year])?;
    let (mut sum, mut n) = (0i64, 0u64);
    while let Some(r) = rows.next()? {
        let blob: Vec<u8> = r.get(0)?;
        let split = yidi_node::store::split_codec::decode(&blob)?;
        sum += fen(&split.hifp_pay, "hifp_pay")?;
        n += 1;
    }
    Ok((sum, n))
}

// ------------------------------------------------------------------ the run

/// `yidi bench`.
pub fn run(mut args: BenchArgs) -> anyhow::Result<()> {
    if args.settle_only && args.count.is_none() {
        bail!("--settle-only prepares every visit first: give --count N");
    }
    if !args.nodes.is_empty() && args.nodes.len() < 2 && args.cross_region > 0.0 {
        bail!("cross-region traffic needs at least two nodes (repeat --node)");
    }
    // In-process nodes log like daemons, but at `warn` unless RUST_LOG says otherwise:
    // a line per request on stderr would measure the terminal, not the node.
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    let temp = tempfile::Builder::new().prefix("yidi-bench-").tempdir()?;
    let root = args
        .data_dir
        .clone()
        .unwrap_or_else(|| temp.path().to_path_buf());
    std::fs::create_dir_all(&root)?;
    let cores = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
    let mut local = Vec::new();
    let mut urls = Vec::new();
    let mut metrics = Vec::new();
    if args.freeze_entries > 0 {
        if !args.nodes.is_empty() {
            bail!("--freeze-entries writes into the stores of in-process nodes: leave out --node");
        }
        args.freeze_period = Some(freeze::seed(&root, args.freeze_entries)?);
    }
    if args.nodes.is_empty() {
        let (nodes, addrs, m, gateways) = start_federation(
            &root,
            args.node_threads.unwrap_or(cores),
            !args.no_admission,
        )?;
        args.nhsa_gateways = gateways;
        local = nodes;
        metrics = m;
        for (region, addr) in addrs {
            urls.push((
                format!("http://{addr}"),
                Some(root.join(&region).join(yidi_node::store::DB_FILE)),
            ));
        }
    } else {
        urls.extend(args.nodes.iter().map(|u| (u.clone(), None)));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.client_threads.max(1))
        .thread_name("bench-client")
        .enable_all()
        .build()?;
    let outcome = rt.block_on(drive(args.clone(), urls, &metrics, &root));
    drop(rt);
    for n in local {
        if let Err(e) = n.stop() {
            eprintln!("stopping a node: {e:#}");
        }
    }
    drop(temp);
    outcome
}

/// Runs the phases against the nodes at `urls`; `metrics` are the in-process nodes'
/// metrics addresses (empty when driving running daemons).
async fn drive(
    args: BenchArgs,
    urls: Vec<(String, Option<PathBuf>)>,
    metrics: &[SocketAddr],
    root: &Path,
) -> anyhow::Result<()> {
    let in_process = !metrics.is_empty();
    let mut targets = Vec::new();
    for (url, db) in urls {
        let channels = connect(&url, args.connections).await?;
        let info = AdminServiceClient::new(channels[0].clone())
            .get_node_info(proto::GetNodeInfoRequest::default())
            .await
            .with_context(|| format!("GetNodeInfo at {url}"))?
            .into_inner();
        targets.push(Target {
            region: info.region,
            url,
            channels,
            db,
        });
    }
    targets.sort_by(|a, b| a.region.cmp(&b.region));
    let n_targets = targets.len();
    if in_process || args.setup {
        setup(&targets, &args).await?;
    }
    let ctx = Arc::new(Ctx {
        targets,
        args: args.clone(),
        run: format!(
            "{:x}",
            mix64(args.seed ^ u64::from(std::process::id())) & 0xFF_FFFF
        ) + &format!("{:x}", chrono::Utc::now().timestamp() & 0xFFFFF),
        in_doubt: Mutex::new(HashSet::new()),
        hot_filed: (0..n_targets)
            .map(|c| {
                (0..args.persons)
                    .filter(|i| has_filing(c, *i, args.filing_share))
                    .take(args.hot_persons as usize)
                    .collect()
            })
            .collect(),
        timeline: freeze::Timeline::new(),
    });
    let mut report = serde_json::Map::new();
    report.insert(
        "machine".into(),
        json!({
            "cores": std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
            "load_average": std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
        }),
    );
    report.insert(
        "config".into(),
        json!({
            "nodes": ctx.targets.iter().map(|t| json!({"region": t.region, "url": t.url})).collect::<Vec<_>>(),
            "in_process": in_process,
            "persons_per_city": args.persons,
            "mix": format!("{:?}", args.mix.0),
            "cross_region": args.cross_region,
            "presettle_share": args.presettle_share,
            "concurrency": args.concurrency,
            "duration_s": args.duration,
            "count": args.count,
            "settle_only": args.settle_only,
            "hot_persons": args.hot_persons,
            "hot_share": args.hot_share,
            "connections": args.connections,
        }),
    );

    // The floor: a bare round trip and a bare durable commit.
    let rtt = floor_rtt(&ctx.targets[0]).await?;
    let (commit, growing) = {
        let dir = root.to_path_buf();
        tokio::task::spawn_blocking(move || floor_commit(&dir)).await??
    };
    let floor_us = 2 * rtt.value_at_quantile(0.5) + 2 * commit.value_at_quantile(0.5);
    println!("floor");
    println!("{}", line("gRPC round trip", &rtt));
    println!("{}", line("durable commit", &commit));
    println!("{}", line("  (WAL still growing)", &growing));
    println!(
        "  2 round trips + 2 commits = {:.2} ms (p50s)",
        ms(floor_us)
    );
    report.insert(
        "floor".into(),
        json!({"rtt": summary(&rtt), "commit": summary(&commit), "commit_growing_wal": summary(&growing), "two_rtt_two_commits_ms": ms(floor_us)}),
    );

    // Unloaded: one client, cross-region settles one at a time.
    if args.unloaded > 0 && ctx.targets.len() > 1 {
        let mut rng = SmallRng::seed_from_u64(args.seed ^ 0x1);
        let mut stats = Stats::default();
        for i in 0..args.unloaded {
            let rid = format!("u{}-{i}", ctx.run);
            let (t, h, p, _) = ctx.choose(&mut rng, Some(true));
            if let Some(prep) = ctx
                .prepare(&mut rng, &mut stats, 0, &rid, (t, h, p, Kind::Outpatient))
                .await
            {
                let _ = ctx.settle(&mut stats, 0, &rid, &prep, false).await;
            }
        }
        let s = stats.get("Settle(cross-region)");
        let ratio = s.value_at_quantile(0.5) as f64 / floor_us.max(1) as f64;
        println!("unloaded (one client, cross-region outpatient)");
        println!("{}", line("Settle", &s));
        println!("  ratio p50 / (2 RTT + 2 commits) = {ratio:.2} (target ≤ 3)");
        report.insert(
            "unloaded".into(),
            json!({"settle": summary(&s), "ratio_to_floor": ratio, "errors": stats.errors_json()}),
        );
    }

    // What the machine's cores carry of bare calls and writes, before any work of ours.
    let bare_call_rate = if args.ceiling_seconds > 0 {
        let (rate, json) = ceilings(&ctx, &root.join("ceiling-store"), in_process).await?;
        report.insert("ceilings".into(), json);
        rate
    } else {
        None
    };

    // Pre-settle throughput on prepared visits: same-city visits (the target's case: a
    // local pre-settle with the policy cached) and cross-region ones (the home node's
    // eligibility answer cached for a short while), each on its own.
    if args.presettle_seconds > 0 {
        let mut phases = serde_json::Map::new();
        for (label, cross, key) in [
            ("same-city", false, "local"),
            ("cross-region", true, "cross_region"),
        ] {
            let (visits, _) =
                prepare_many(&ctx, u64::from(args.presettle_visits), Some(cross), "p").await;
            if visits.is_empty() {
                bail!("no {label} visit could be prepared for the pre-settle phase");
            }
            let n = visits.len();
            let cpu = cpu_sample();
            let (secs, stats) = presettle_phase(&ctx, visits).await;
            let ps = stats.get("PreSettle");
            let rate = ps.len() as f64 / secs;
            let cpu_ms = in_process
                .then(|| CpuPerOp::between(cpu, ps.len() as usize))
                .flatten();
            println!(
                "pre-settle, {label} ({n} visits; {} clients, {secs:.1} s)",
                args.concurrency
            );
            println!("{}", line("PreSettle", &ps));
            let share = bare_call_rate.map(|r| rate / r);
            let notes: Vec<String> = share
                .map(|s| format!("{:.0} % of the bare call rate", 100.0 * s))
                .into_iter()
                .chain((!cross).then(|| "target ≥ 20,000".to_owned()))
                .collect();
            let notes = if notes.is_empty() {
                String::new()
            } else {
                format!(" ({})", notes.join("; "))
            };
            println!(
                "  {rate:.0} pre-settles/s{notes}; errors {:?}",
                stats.errors
            );
            if let Some(cpu) = &cpu_ms {
                println!("  CPU per pre-settle: {}", cpu.text());
            }
            phases.insert(
                key.into(),
                json!({"per_second": rate, "share_of_bare_call_rate": share, "latency": summary(&ps), "errors": stats.errors_json(), "seconds": secs, "visits": n,
                    "cpu_ms_per_op": cpu_ms.as_ref().map(|c| c.total_ms),
                    "cpu_ms_per_op_by_threads": cpu_ms.as_ref().map(CpuPerOp::groups_json)}),
            );
        }
        report.insert("presettle".into(), serde_json::Value::Object(phases));
    }

    // The accumulators of the verification sample before the load.
    let sample = sample_persons(&ctx);
    let mut before = HashMap::new();
    for &(h, p) in &sample {
        if let Ok(a) = accumulators(&ctx, h, p).await {
            before.insert((h, p), a);
        }
    }

    // The load.
    let prepared = if args.settle_only {
        let n = args.count.unwrap_or(0);
        eprintln!("preparing {n} visits …");
        let started = Instant::now();
        let (p, s) = prepare_many(&ctx, n, None, "s").await;
        eprintln!(
            "prepared {} visits in {:.1} s ({} errors)",
            p.len(),
            started.elapsed().as_secs_f64(),
            s.errors.values().sum::<u64>()
        );
        Some(Arc::new(p))
    } else {
        None
    };
    eprintln!(
        "load: {} clients, {} …",
        args.concurrency,
        args.count
            .map_or_else(|| format!("{} s", args.duration), |c| format!("{c} visits"))
    );
    let scraped = scrape_nodes(metrics).await;
    let (calls_before, store_before) = (peer_calls(&scraped), store_totals(&scraped));
    let each_before: Vec<_> = scraped
        .iter()
        .map(|t| store_totals(std::slice::from_ref(t)))
        .collect();
    let round = match &args.freeze_period {
        Some(period) => {
            let coordinator = freeze::coordinator(root, root.join("peers.toml")).await?;
            let (ctx2, root2, period) = (Arc::clone(&ctx), root.to_path_buf(), period.clone());
            let after = Duration::from_secs(args.freeze_after);
            let task = tokio::spawn(async move {
                freeze::run_round(coordinator.addr, root2, period, &ctx2.timeline, after).await
            });
            Some((coordinator, task))
        }
        None => None,
    };
    let cpu = cpu_sample();
    let (stats, acks, elapsed, windows) = load_phase(&ctx, prepared).await;
    if let Some((coordinator, task)) = round {
        let end = ctx.timeline.elapsed();
        let times = task.await??;
        let longest = freeze::longest_transactions(&scrape_nodes(metrics).await);
        report.insert(
            "freeze".into(),
            freeze::report(&ctx.timeline, &times, end, args.freeze_entries, &longest),
        );
        drop(coordinator);
    }
    let cpu_ms = in_process
        .then(|| CpuPerOp::between(cpu, acks.len()))
        .flatten();
    let scraped = scrape_nodes(metrics).await;
    let calls = peer_calls_per(&calls_before, &peer_calls(&scraped), acks.len());
    // The nodes' group commits during the phase: requests per transaction and the time
    // a commit took (writing the log and the disk's fsync).
    let store_after = store_totals(&scraped);
    // Each node's writer: transactions (one fsync each) and jobs during the phase, per
    // settlement it treated and per claim it committed as home node.
    let writers: Vec<Value> = scraped
        .iter()
        .zip(&each_before)
        .enumerate()
        .map(|(i, (t, b))| {
            let a = store_totals(std::slice::from_ref(t));
            let treated = acks.iter().filter(|k| k.treatment == i).count();
            let cross_treated = acks
                .iter()
                .filter(|k| k.treatment == i && k.home != i)
                .count();
            let homed = acks
                .iter()
                .filter(|k| k.home == i && k.treatment != i)
                .count();
            json!({
                "region": ctx.targets.get(i).map(|t| t.region.clone()),
                "transactions": a.0 - b.0,
                "jobs": a.1 - b.1,
                "commit_seconds": a.2 - b.2,
                "settled_here": treated,
                "cross_region_settled_here": cross_treated,
                "claims_committed_here_as_home": homed,
            })
        })
        .collect();
    let commits = store_after.0 - store_before.0;
    let group_commit = (commits > 0.0).then(|| {
        (
            (store_after.1 - store_before.1) / commits,
            1e3 * (store_after.2 - store_before.2) / commits,
        )
    });
    let secs = elapsed.as_secs_f64();
    let cross = stats.get("Settle(cross-region)");
    let local = stats.get("Settle(local)");
    let mut all = cross.clone();
    let _ = all.add(&local);
    let mut all_e2e = stats.get("Settle(cross-region) incl. retries");
    let _ = all_e2e.add(stats.get("Settle(local) incl. retries"));
    let shed: u64 = stats.shed.values().sum();
    let shed_share = shed as f64 / (shed + all.len()).max(1) as f64;
    let rate = acks.len() as f64 / secs;
    let cross_rate = cross.len() as f64 / secs;
    let sustained = windows.iter().copied().fold(f64::INFINITY, f64::min);
    println!(
        "load ({} clients, {secs:.1} s{})",
        args.concurrency,
        if args.settle_only {
            ", visits prepared beforehand: Settle calls only"
        } else {
            ", full visit sequences"
        }
    );
    for (name, h) in &stats.calls {
        println!("{}", line(name, h));
    }
    println!("{}", line("Settle (all)", &all));
    println!("{}", line("Settle incl. retries", &all_e2e));
    println!(
        "  refused at the door and retried: {shed} ({:.1} % of Settle calls, {:.3} per settlement); admitted calls' latency is `Settle (all)`, end to end with the retries `Settle incl. retries`",
        100.0 * shed_share,
        shed as f64 / acks.len().max(1) as f64
    );
    println!(
        "  settled {} ({rate:.0}/s; cross-region {cross_rate:.0}/s); lowest 5-s window {:.0}/s",
        acks.len(),
        if sustained.is_finite() {
            sustained
        } else {
            rate
        }
    );
    let mut by_kind: BTreeMap<&str, u64> = BTreeMap::new();
    for a in &acks {
        *by_kind.entry(a.kind.name()).or_default() += 1;
    }
    println!("  settled by kind: {by_kind:?}");
    if let Some(cpu) = &cpu_ms {
        println!("  CPU per settlement: {}", cpu.text());
    }
    if !calls.is_empty() {
        let text: Vec<String> = calls
            .iter()
            .map(|(m, c, e)| {
                if *e > 0.0 {
                    format!("{m} {c:.3} (failed {e:.3})")
                } else {
                    format!("{m} {c:.3}")
                }
            })
            .collect();
        println!("  node-to-node calls per settlement: {}", text.join(", "));
    }
    if let Some((per, ms)) = group_commit {
        println!("  store writers: {per:.1} requests per transaction, {ms:.2} ms per commit");
        let n = acks.len().max(1) as f64;
        println!(
            "  per settlement, all nodes: {:.3} writer transactions (fsyncs), {:.3} writer jobs",
            commits / n,
            (store_after.1 - store_before.1) / n
        );
        for w in &writers {
            println!(
                "    {}: {} transactions, {} jobs; {} settled here ({} cross-region), {} claims committed here as home",
                w["region"].as_str().unwrap_or("?"),
                w["transactions"],
                w["jobs"],
                w["settled_here"],
                w["cross_region_settled_here"],
                w["claims_committed_here_as_home"]
            );
        }
    }
    if stats.errors.is_empty() {
        println!("  errors: none");
    } else {
        println!("  errors by call and status code:");
        for ((call, code), n) in &stats.errors {
            println!("    {call:<22} {code:<20} {n}");
        }
        for e in &stats.first_errors {
            println!("    e.g. {e}");
        }
    }
    report.insert(
        "load".into(),
        json!({
            "seconds": secs,
            "settled": acks.len(),
            "settled_per_second": rate,
            "settled_by_kind": by_kind,
            "cross_region_per_second": cross_rate,
            "lowest_5s_window_per_second": if sustained.is_finite() { sustained } else { rate },
            "windows_per_second": windows,
            "settle": summary(&all),
            "settle_incl_retries": summary(&all_e2e),
            "shed": shed,
            "shed_share_of_calls": shed_share,
            "settle_cross_region": summary(&cross),
            "settle_local": summary(&local),
            "calls": stats.calls.iter().map(|(k, h)| ((*k).to_owned(), summary(h))).collect::<serde_json::Map<_, _>>(),
            "errors": stats.errors_json(),
            "settle_errors": stats.error_count("Settle(cross-region)") + stats.error_count("Settle(local)"),
            "peer_calls_per_settlement": calls.iter().map(|(m, c, _)| (m.clone(), json!(c))).collect::<serde_json::Map<_, _>>(),
            "failed_peer_calls_per_settlement": calls.iter().map(|(m, _, e)| (m.clone(), json!(e))).collect::<serde_json::Map<_, _>>(),
            "store_requests_per_transaction": group_commit.map(|g| g.0),
            "store_ms_per_commit": group_commit.map(|g| g.1),
            "store_writers": writers,
            "cpu_ms_per_settlement": cpu_ms.as_ref().map(|c| c.total_ms),
            "cpu_ms_per_settlement_by_threads": cpu_ms.as_ref().map(CpuPerOp::groups_json),
        }),
    );

    // Every acknowledgement at both nodes; the sample's accumulators.
    eprintln!("verifying {} acknowledged settlements …", acks.len());
    let v = verify(&ctx, &acks, &before).await;
    let ok = v.at_treatment == v.acks
        && v.at_home == v.acks
        && v.persons_delta_ok == v.persons_checked
        && v.persons_store_ok == v.persons_store_checked;
    println!("verification");
    println!(
        "  acknowledged settlements {}: present at the treatment node {}, committed at the home node {}",
        v.acks, v.at_treatment, v.at_home
    );
    println!(
        "  accumulators of {} persons moved by exactly their acknowledged claims: {}",
        v.persons_checked, v.persons_delta_ok
    );
    if v.persons_store_checked > 0 {
        println!(
            "  accumulators equal the sum of committed claims in the home store: {} of {}",
            v.persons_store_ok, v.persons_store_checked
        );
    }
    for p in &v.problems {
        println!("  PROBLEM {p}");
    }
    println!("  {}", if ok { "OK" } else { "FAILED" });
    report.insert(
        "verification".into(),
        json!({
            "ok": ok,
            "acknowledged": v.acks,
            "present_at_treatment": v.at_treatment,
            "committed_at_home": v.at_home,
            "persons_checked": v.persons_checked,
            "persons_delta_ok": v.persons_delta_ok,
            "persons_store_checked": v.persons_store_checked,
            "persons_store_ok": v.persons_store_ok,
            "problems": v.problems,
        }),
    );
    if args.via == nhsa::Via::Nhsa {
        report.insert("via_nhsa".into(), nhsa::compare(&ctx).await?);
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&Value::Object(report))?)
            .with_context(|| format!("write {}", path.display()))?;
    }
    if !ok {
        bail!("verification failed");
    }
    Ok(())
}
