//! `yidi demo`: the whole system in one command. Starts the Zhejiang federation on
//! loopback inside this process — the city nodes of Hangzhou (330100), Ningbo (330200)
//! and Wenzhou (330300) and the provincial coordinator (330000), each with its own
//! SQLite store — through the same `serve` functions the daemons use; loads the sample
//! data and generates thousands of persons and filings through the real AdminService;
//! drives a stream of settlements through the real HospitalService over gRPC; runs a
//! clearing round; prints what happened as tables with machine-checkable `CHECK` lines;
//! and keeps the federation running for exploration with the `yidi` CLI until Ctrl-C.
//!
//! Re-running reuses the data directory: every admin request has a deterministic
//! request id, so what is already loaded is answered from the nodes' idempotency records
//! and nothing is written twice; each run then settles new visits (its request ids carry
//! the run number) and clears them in a new round.
//!
//! Transport: plain text on loopback only (the nodes log it loudly). Every address the
//! demo serves or dials is built by [`url`] and [`channel`], and every node's
//! configuration by [`node_config`]: that is where certificates plug in once mTLS exists.

mod console;
mod data;
mod drive;
mod national;
mod pki;
mod report;

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use chrono::NaiveDate;
use clap::Args;
use futures::{StreamExt, stream};
use indicatif::{ProgressBar, ProgressStyle};
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};
use tonic::transport::Channel;
use yidi_common::{
    period,
    proto::{
        self, admin_service_client::AdminServiceClient,
        coordinator_service_client::CoordinatorServiceClient,
        hospital_service_client::HospitalServiceClient,
    },
    region::RegionCode,
};

use data::{CITIES, CityData, LoadCounts, PROVINCE, Person};
use yidi_node::{
    config::NodeConfig,
    coordinator::CoordinatorConfig,
    identity::{Identity, Role},
    tls::ClientArgs,
};

/// Flags of `yidi demo`.
#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Directory of the demo's stores (one subdirectory per node and one for the
    /// coordinator), its peers file and its run counter.
    #[arg(long, default_value = "yidi-data/demo")]
    pub data_dir: PathBuf,
    /// Wipe the data directory first and start from empty stores (only a directory the
    /// demo created is ever wiped).
    #[arg(long)]
    pub reset: bool,
    /// Exit after the clearing round and its checks instead of keeping the federation
    /// running until Ctrl-C.
    #[arg(long)]
    pub once: bool,
    /// Language of the tables: en or zh (default: env YIDI_LANG, else zh when LC_ALL or
    /// LANG starts with zh). The `CHECK … ok` lines stay in English for scripts.
    #[arg(long, value_enum)]
    pub lang: Option<crate::i18n::Lang>,
    /// The coordinator's port on 127.0.0.1; the city nodes take the next three
    /// (Hangzhou, Ningbo, Wenzhou).
    #[arg(long, default_value_t = 7100)]
    pub base_port: u16,
    /// First Prometheus metrics port (coordinator; the nodes take the next three).
    /// Default: base port + 100.
    #[arg(long)]
    pub metrics_base_port: Option<u16>,
    /// Serve no Prometheus metrics.
    #[arg(long)]
    pub no_metrics: bool,
    /// The port before the cities' NHSA gateways (HIS over HTTPS + JSON): Hangzhou,
    /// Ningbo and Wenzhou take the next three. Default: base port + 90.
    #[arg(long)]
    pub nhsa_base_port: Option<u16>,
    /// First web console port (the clearing desk; the nodes' consoles take the next
    /// three). Default: base port + 80.
    #[arg(long)]
    pub console_base_port: Option<u16>,
    /// Serve no web consoles.
    #[arg(long)]
    pub no_console: bool,
    /// Persons generated per city, beside the sample persons of deploy/sample.
    #[arg(long, default_value_t = 3000)]
    pub persons: u32,
    /// Visits to drive through the hospital API.
    #[arg(long, default_value_t = 600)]
    pub settlements: u32,
    /// Visits in flight at once (hospital counters working in parallel).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub concurrency: u32,
    /// Seed of the generated persons and visits: the same seed generates the same data.
    #[arg(long, default_value_t = 2026)]
    pub seed: u64,
    /// Two provinces and the national level instead (docs/national.md): Zhejiang
    /// (Hangzhou, Ningbo) and Jiangsu (Nanjing, Suzhou), a coordinator each and the
    /// national coordinator on the base port (the provinces' on the next two, the nodes
    /// after them); cross-province visits, the provincial rounds, then the national round,
    /// each statement and its CHECK lines. Stores under <data-dir>/national, wiped at
    /// every run.
    #[arg(long)]
    pub national: bool,
}

/// `yidi demo`: builds its runtime and runs.
pub fn main(args: &DemoArgs) -> anyhow::Result<()> {
    // Quiet by default so that the tables read well; RUST_LOG overrides.
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if args.national {
        return rt.block_on(national::run(args.clone()));
    }
    rt.block_on(run(args.clone()))
}

// ------------------------------------------------------------------ transport

/// The URL of a party of the demo: mutual TLS, as in production.
fn url(addr: SocketAddr) -> String {
    format!("https://{addr}")
}

/// A client channel to a party of the demo, as the party `tls` names.
fn channel(addr: SocketAddr, tls: &ClientArgs) -> anyhow::Result<Channel> {
    Ok(tls
        .endpoint(&url(addr))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .tcp_nodelay(true)
        .connect_lazy())
}

fn region(code: &str) -> anyhow::Result<RegionCode> {
    Ok(RegionCode::parse(code, "region")?)
}

/// The configuration of one city node of the demo.
fn node_config(layout: &Layout, pki: &pki::Pki, i: usize) -> anyhow::Result<NodeConfig> {
    let city = CITIES[i];
    let region = RegionCode::parse_city(city.region, "region")?;
    let mut c = NodeConfig::new(region, city.name, layout.dir.join(city.region));
    c.security = pki.server(&Identity::Node { region })?;
    c.listen = layout.nodes[i];
    c.peers_file = Some(layout.peers_file());
    c.coordinator = Some(url(layout.coordinator));
    c.drain = Duration::from_secs(5);
    c.metrics_listen = layout.node_metrics.map(|m| m[i]);
    c.nhsa_listen = Some(layout.nhsa[i]);
    c.console_listen = layout.consoles.map(|(_, n)| n[i]);
    Ok(c)
}

// ------------------------------------------------------------------ layout

/// Where everything of one demo lives.
struct Layout {
    dir: PathBuf,
    coordinator: SocketAddr,
    nodes: [SocketAddr; 3],
    coordinator_metrics: Option<SocketAddr>,
    node_metrics: Option<[SocketAddr; 3]>,
    /// The cities' NHSA gateways.
    nhsa: [SocketAddr; 3],
    /// The web consoles: the coordinator's and the nodes'.
    consoles: Option<(SocketAddr, [SocketAddr; 3])>,
}

/// Marks a directory as the demo's, so that `--reset` never wipes anything else.
const MARKER: &str = ".yidi-demo";

impl Layout {
    fn peers_file(&self) -> PathBuf {
        self.dir.join("peers.toml")
    }

    /// Wipes (with `reset`) and prepares the directory; returns this run's number.
    fn prepare(&self, reset: bool) -> anyhow::Result<u32> {
        let marker = self.dir.join(MARKER);
        if self.dir.exists() {
            let empty = std::fs::read_dir(&self.dir)?.next().is_none();
            if !empty && !marker.exists() {
                bail!(
                    "{} exists and was not created by `yidi demo` (no {MARKER} file); \
                     choose another --data-dir",
                    self.dir.display()
                );
            }
            if reset && !empty {
                std::fs::remove_dir_all(&self.dir)
                    .with_context(|| format!("wiping {}", self.dir.display()))?;
            }
        }
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        std::fs::write(
            &marker,
            "This directory belongs to `yidi demo`; `yidi demo --reset` wipes it.\n",
        )?;
        let runs = self.dir.join("demo-runs");
        let run = std::fs::read_to_string(&runs)
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            .unwrap_or(0)
            + 1;
        std::fs::write(&runs, format!("{run}\n"))?;
        let mut peers =
            String::from("# Written by `yidi demo` at every start: the demo federation's nodes.\n");
        for (c, a) in CITIES.iter().zip(self.nodes) {
            peers.push_str(&format!(
                "\n[[peer]]\nregion = \"{}\"\nname = \"{}\"\naddress = \"{}\"\n",
                c.region,
                c.name,
                url(a)
            ));
        }
        std::fs::write(self.peers_file(), peers)?;
        Ok(run)
    }
}

async fn bind(port: u16, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(("127.0.0.1", port))
        .await
        .with_context(|| {
            format!(
                "cannot listen on 127.0.0.1:{port} for {what}: is another demo or node running? \
             (choose other ports with --base-port / --metrics-base-port)"
            )
        })
}

// ------------------------------------------------------------------ running federation

/// The running parties and how to stop them.
struct Federation {
    stop: watch::Sender<bool>,
    tasks: Vec<(String, JoinHandle<yidi_node::Result<()>>)>,
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

impl Federation {
    /// Stops every party gracefully and waits for them.
    async fn shutdown(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        let mut failures = Vec::new();
        for (name, handle) in self.tasks {
            match tokio::time::timeout(Duration::from_secs(20), handle).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => failures.push(format!("{name}: {e}")),
                Ok(Err(e)) => failures.push(format!("{name}: task failed: {e}")),
                Err(_) => failures.push(format!("{name}: did not stop within 20 s")),
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            bail!("shutdown: {}", failures.join("; "))
        }
    }

    /// Fails if a party has already exited (it could not open its store, say).
    async fn check_alive(&mut self) -> anyhow::Result<()> {
        for (name, handle) in &mut self.tasks {
            if handle.is_finished() {
                let out = handle.await;
                bail!("{name} stopped unexpectedly: {out:?}");
            }
        }
        Ok(())
    }
}

async fn start(
    layout: &Layout,
    pki: &pki::Pki,
    listeners: Listeners,
) -> anyhow::Result<Federation> {
    let (stop, rx) = watch::channel(false);
    let mut tasks = Vec::new();
    for (i, l) in listeners.nodes.into_iter().enumerate() {
        let cfg = node_config(layout, pki, i)?;
        tasks.push((
            format!("node {} {}", CITIES[i].region, CITIES[i].name),
            tokio::spawn(yidi_node::server::serve(l, stopped(rx.clone()), cfg)),
        ));
    }
    let province = RegionCode::parse(PROVINCE, "region")?;
    let coord_dir = layout.dir.join(PROVINCE);
    let mut cc = CoordinatorConfig::new(province, coord_dir.clone(), layout.peers_file());
    cc.listen = layout.coordinator;
    cc.security = pki.server(&Identity::Coordinator { province })?;
    cc.drain = Duration::from_secs(5);
    cc.run_interval = Duration::from_secs(2);
    cc.console_listen = layout.consoles.map(|(c, _)| c);
    tasks.push((
        format!("coordinator {PROVINCE}"),
        tokio::spawn(yidi_node::coordinator::serve(
            listeners.coordinator,
            stopped(rx.clone()),
            cc,
        )),
    ));
    if let Some(l) = listeners.coordinator_metrics {
        let m = Arc::new(yidi_node::coordinator::metrics::CoordinatorMetrics::new(
            PROVINCE, &coord_dir,
        ));
        let stop = stopped(rx.clone());
        tasks.push((
            "coordinator metrics".into(),
            tokio::spawn(async move {
                yidi_node::coordinator::metrics::serve_metrics(l, stop, m).await;
                Ok(())
            }),
        ));
    }
    Ok(Federation { stop, tasks })
}

struct Listeners {
    coordinator: TcpListener,
    nodes: Vec<TcpListener>,
    coordinator_metrics: Option<TcpListener>,
}

/// A city node as the demo's clients see it.
pub(crate) struct Node {
    pub(crate) index: usize,
    pub(crate) addr: SocketAddr,
    pub(crate) metrics: Option<SocketAddr>,
    pub(crate) admin: AdminServiceClient<Channel>,
    /// Each institution's own connection, with its own certificate (a node serves an
    /// institution only under that institution's identity).
    hospitals: std::sync::Mutex<HashMap<String, HospitalServiceClient<Channel>>>,
    pki: Arc<pki::Pki>,
}

impl Node {
    pub(crate) fn region(&self) -> &'static str {
        CITIES[self.index].region
    }

    /// This node's ledger positions of one clearing period.
    pub(crate) async fn ledger(
        &self,
        period: impl std::fmt::Display,
    ) -> anyhow::Result<yidi_common::proto::GetLedgerResponse> {
        Ok(self
            .admin
            .clone()
            .get_ledger(yidi_common::proto::GetLedgerRequest {
                period: period.to_string(),
            })
            .await?
            .into_inner())
    }

    /// The HospitalService as institution `code` of this city calls it.
    pub(crate) fn hospital(&self, code: &str) -> anyhow::Result<HospitalServiceClient<Channel>> {
        let mut m = self
            .hospitals
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(h) = m.get(code) {
            return Ok(h.clone());
        }
        let id = Identity::Institution {
            region: region(self.region())?,
            code: code.to_owned(),
        };
        let h = HospitalServiceClient::new(channel(self.addr, &self.pki.client(&id)?)?);
        m.insert(code.to_owned(), h.clone());
        Ok(h)
    }
}

/// Everything the steps of a run share.
pub(crate) struct Ctx {
    pub(crate) run: u32,
    /// Language of the tables (`--lang`).
    pub(crate) lang: crate::i18n::Lang,
    pub(crate) today: NaiveDate,
    pub(crate) cities: Vec<CityData>,
    pub(crate) nodes: Vec<Node>,
    pub(crate) coordinator: CoordinatorServiceClient<Channel>,
    pub(crate) pki: Arc<pki::Pki>,
}

async fn connect(
    layout: &Layout,
    pki: &Arc<pki::Pki>,
    fed: &mut Federation,
) -> anyhow::Result<(Vec<Node>, CoordinatorServiceClient<Channel>)> {
    let mut nodes = Vec::new();
    for (i, addr) in layout.nodes.iter().enumerate() {
        let operator = Identity::Operator {
            region: region(CITIES[i].region)?,
            role: Role::Admin,
        };
        let ch = channel(*addr, &pki.client(&operator)?)?;
        let mut admin = AdminServiceClient::new(ch)
            .max_decoding_message_size(yidi_node::serving::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(yidi_node::serving::MAX_MESSAGE_BYTES);
        // Ready when it answers (its store is open and migrated), never after a sleep.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            fed.check_alive().await?;
            match admin.get_node_info(proto::GetNodeInfoRequest {}).await {
                Ok(_) => break,
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!(error = %e, "node not ready yet");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => bail!("node {} did not answer: {e}", CITIES[i].region),
            }
        }
        nodes.push(Node {
            index: i,
            addr: *addr,
            metrics: layout.node_metrics.map(|m| m[i]),
            admin,
            hospitals: std::sync::Mutex::new(HashMap::new()),
            pki: Arc::clone(pki),
        });
    }
    // The provincial operator runs the rounds: the coordinator's clearing role.
    let operator = Identity::Operator {
        region: region(PROVINCE)?,
        role: Role::Clearing,
    };
    let coordinator =
        CoordinatorServiceClient::new(channel(layout.coordinator, &pki.client(&operator)?)?);
    Ok((nodes, coordinator))
}

// ------------------------------------------------------------------ the run

async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    if args.base_port > u16::MAX - 3 || args.base_port == 0 {
        bail!("--base-port must leave room for four ports (1..=65532)");
    }
    let metrics_base = if args.no_metrics {
        None
    } else {
        let m = args
            .metrics_base_port
            .unwrap_or_else(|| args.base_port.saturating_add(100));
        if m > u16::MAX - 3 || m == 0 {
            bail!("--metrics-base-port must leave room for four ports (1..=65532)");
        }
        Some(m)
    };
    // Listeners first: a busy port fails before anything is touched, and the peers file
    // can name every address before any node starts.
    let coordinator = bind(args.base_port, "the coordinator").await?;
    let mut nodes = Vec::new();
    for (i, c) in CITIES.iter().enumerate() {
        nodes.push(bind(args.base_port + 1 + i as u16, &format!("node {}", c.region)).await?);
    }
    let coordinator_metrics = match metrics_base {
        Some(m) => Some(bind(m, "the coordinator's metrics").await?),
        None => None,
    };
    // The nodes bind their metrics ports themselves; a port taken in between shows up
    // as a node that stopped.
    for i in 0..CITIES.len() {
        if let Some(m) = metrics_base {
            drop(bind(m + 1 + i as u16, "a node's metrics").await?);
        }
    }
    let nhsa_base = args
        .nhsa_base_port
        .unwrap_or_else(|| args.base_port.saturating_add(90));
    if nhsa_base > u16::MAX - 3 || nhsa_base == 0 {
        bail!("--nhsa-base-port must leave room for three ports (1..=65532)");
    }
    // The nodes bind their gateways themselves, as their metrics.
    for i in 1..=CITIES.len() as u16 {
        drop(bind(nhsa_base + i, "a node's NHSA gateway").await?);
    }
    let console_base = if args.no_console {
        None
    } else {
        let c = args
            .console_base_port
            .unwrap_or_else(|| args.base_port.saturating_add(80));
        if c > u16::MAX - 3 || c == 0 {
            bail!("--console-base-port must leave room for four ports (1..=65532)");
        }
        for k in 0..4 {
            drop(bind(c + k, "a web console").await?);
        }
        Some(c)
    };
    let addr = |l: &TcpListener| l.local_addr();
    let layout = Layout {
        dir: args.data_dir.clone(),
        coordinator: addr(&coordinator)?,
        nodes: [addr(&nodes[0])?, addr(&nodes[1])?, addr(&nodes[2])?],
        coordinator_metrics: coordinator_metrics.as_ref().map(addr).transpose()?,
        node_metrics: metrics_base
            .map(|m| [1u16, 2, 3].map(|k| SocketAddr::from(([127, 0, 0, 1], m + k)))),
        nhsa: [1u16, 2, 3].map(|k| SocketAddr::from(([127, 0, 0, 1], nhsa_base + k))),
        consoles: console_base.map(console::addresses),
    };
    let run_no = layout.prepare(args.reset)?;

    println!(
        "yidi demo — the Zhejiang federation on loopback (run {run_no}, data in {})",
        layout.dir.display()
    );
    let pki = Arc::new(pki::Pki::open(&layout.dir)?);
    println!(
        "mutual TLS between every party, certificates in {}\n",
        layout.dir.join("certs").display()
    );
    let mut fed = start(
        &layout,
        &pki,
        Listeners {
            coordinator,
            nodes,
            coordinator_metrics,
        },
    )
    .await?;
    let (nodes, coordinator) = match connect(&layout, &pki, &mut fed).await {
        Ok(c) => c,
        Err(e) => {
            let _ = fed.shutdown().await;
            return Err(e);
        }
    };
    report::print_parties(&layout, &nodes);
    println!(
        "NHSA gateway for an HIS (HTTPS + JSON, the institution's certificate; docs/nhsa-gateway.md):"
    );
    for (c, a) in CITIES.iter().zip(layout.nhsa) {
        println!("  {:<8} https://{a}{}", c.name, yidi_node::nhsa::PATH);
    }
    println!();

    let today = period::today();
    let cities = CITIES
        .iter()
        .map(|c| data::load_city(*c, today))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut ctx = Ctx {
        run: run_no,
        lang: crate::i18n::Lang::resolve(args.lang),
        today,
        cities,
        nodes,
        coordinator,
        pki,
    };

    let outcome = tokio::select! {
        r = steps(&mut ctx, &args, started) => r,
        () = yidi_node::serving::shutdown_signal() => {
            eprintln!("\ninterrupted; stopping the federation");
            Err(anyhow::anyhow!("interrupted"))
        }
    };
    let outcome = match outcome {
        Ok(()) if !args.once => {
            report::print_explore(&layout, &ctx);
            console::print_links(&layout, &ctx.pki);
            yidi_node::serving::shutdown_signal().await;
            eprintln!("\nstopping the federation (draining in-flight requests)…");
            Ok(())
        }
        other => other,
    };
    let stopped = fed.shutdown().await;
    outcome?;
    stopped?;
    if !args.once {
        eprintln!(
            "stopped; the data stays in {} (re-run to reuse it, --reset to start over)",
            layout.dir.display()
        );
    }
    Ok(())
}

/// Loading, settling, clearing and checking.
async fn steps(ctx: &mut Ctx, args: &DemoArgs, started: Instant) -> anyhow::Result<()> {
    let t = Instant::now();
    let persons = load(ctx, args).await?;
    println!("loaded in {:.1} s\n", t.elapsed().as_secs_f64());

    let t = Instant::now();
    let (done, settle_calls) = settle(ctx, args, &persons).await?;
    let settle_secs = t.elapsed().as_secs_f64();

    report::print_examples(&done, ctx.lang);
    let extras = report::adjustments(ctx, &done).await?;
    report::wait_outboxes(ctx).await?;
    let t = Instant::now();
    let cleared = report::clear(ctx).await?;
    let clear_secs = t.elapsed().as_secs_f64();
    let failures = report::print_clearing(ctx, &cleared, &extras).await?;
    let failures = failures + report::check_metrics(ctx, settle_calls).await;
    println!(
        "\ntimings: settlements {settle_secs:.1} s, clearing {clear_secs:.1} s, whole run {:.1} s",
        started.elapsed().as_secs_f64()
    );
    if failures > 0 {
        bail!("{failures} check(s) failed; see the CHECK lines above");
    }
    println!("all checks passed");
    Ok(())
}

/// Loads sample data and generated persons and filings into every node.
async fn load(ctx: &Ctx, args: &DemoArgs) -> anyhow::Result<Vec<Person>> {
    let mut taken: HashSet<String> = ctx
        .cities
        .iter()
        .flat_map(|c| c.sample_persons.iter().map(|p| p.id_number.clone()))
        .collect();
    let mut all = Vec::new();
    let mut counts = Vec::new();
    for (i, c) in ctx.cities.iter().enumerate() {
        let generated = data::generate_persons(
            args.seed,
            i,
            args.persons,
            &ctx.cities,
            ctx.today,
            &mut taken,
        );
        let mut lc = LoadCounts {
            persons_generated: generated.len() as u64,
            persons_sample: c.sample_persons.len() as u64,
            ..LoadCounts::default()
        };
        let sample: Vec<Person> = c
            .sample_persons
            .iter()
            .filter_map(|r| data::sample_person(i, r))
            .collect();
        lc.count(&sample);
        lc.count(&generated);
        counts.push(lc);
        all.extend(sample);
        all.extend(generated);
    }

    // The three cities load in parallel, each in a fixed order.
    let jobs = ctx.nodes.iter().map(|n| {
        let city = &ctx.cities[n.index];
        let persons: Vec<&Person> = all.iter().filter(|p| p.home == n.index).collect();
        load_city(n, city, persons, args, ctx.today)
    });
    let infos = futures::future::try_join_all(jobs).await?;
    report::print_loaded(ctx, &counts, &infos);
    Ok(all)
}

/// What loading one city produced (for the table).
pub(crate) struct Loaded {
    pub(crate) info: proto::NodeInfo,
    pub(crate) filings: u64,
    pub(crate) policies: Vec<String>,
}

fn short_digest(text: &str) -> String {
    yidi_common::digest::sha256_hex(text.as_bytes())[..16].to_owned()
}

fn import_check(what: &str, r: &proto::ImportResult) -> anyhow::Result<()> {
    if let Some(e) = r.errors.first() {
        bail!(
            "{what}: {} rows rejected, e.g. row {} {}: {}",
            r.errors.len(),
            e.row,
            e.field,
            e.reason
        );
    }
    Ok(())
}

async fn load_city(
    n: &Node,
    city: &CityData,
    persons: Vec<&Person>,
    args: &DemoArgs,
    today: NaiveDate,
) -> anyhow::Result<Loaded> {
    let region = city.city.region;
    let mut admin = n.admin.clone();

    // Policies: the request id is the document's digest, so an edited policy file
    // publishes a new version and an unchanged one publishes nothing.
    let mut policies = Vec::new();
    for (kind, policy) in [
        ("employee", &city.employee_policy),
        ("resident", &city.resident_policy),
    ] {
        let v = admin
            .publish_policy(proto::PublishPolicyRequest {
                request_id: format!("demo-policy-{region}-{kind}-{}", &policy.digest()[..16]),
                policy_json: policy.to_canonical_json(),
                note: "yidi demo".into(),
                ..Default::default()
            })
            .await
            .with_context(|| format!("{region}: publishing the {kind} policy"))?
            .into_inner();
        policies.push(format!("{kind} v{}", v.version));
    }

    let cat_text: String = city
        .catalogue_rows
        .iter()
        .map(|r| format!("{r:?}"))
        .collect();
    let r = admin
        .import_catalogue(proto::ImportCatalogueRequest {
            request_id: format!("demo-catalogue-{region}-{}", short_digest(&cat_text)),
            rows: city.catalogue_rows.clone(),
        })
        .await
        .with_context(|| format!("{region}: importing the catalogue"))?
        .into_inner();
    import_check(&format!("{region} catalogue"), &r)?;

    for inst in &city.institutions {
        admin
            .upsert_institution(proto::UpsertInstitutionRequest {
                request_id: format!(
                    "demo-inst-{}-{}",
                    inst.code,
                    &short_digest(&format!("{:?}", inst.proto))[..8]
                ),
                institution: Some(inst.proto.clone()),
            })
            .await
            .with_context(|| format!("{region}: registering institution {}", inst.code))?;
    }

    let sample_text: String = city
        .sample_persons
        .iter()
        .map(|r| format!("{r:?}"))
        .collect();
    let r = admin
        .import_persons(proto::ImportPersonsRequest {
            request_id: format!(
                "demo-sample-persons-{region}-{}",
                short_digest(&sample_text)
            ),
            rows: city.sample_persons.clone(),
        })
        .await
        .with_context(|| format!("{region}: importing the sample persons"))?
        .into_inner();
    import_check(&format!("{region} sample persons"), &r)?;

    let generated: Vec<&Person> = persons
        .iter()
        .copied()
        .filter(|p| p.card_no.starts_with("ZJ"))
        .collect();
    for (b, chunk) in generated.chunks(1000).enumerate() {
        let rows = chunk
            .iter()
            .enumerate()
            .map(|(k, p)| p.row((b * 1000 + k) as u64 + 2))
            .collect();
        let r = admin
            .import_persons(proto::ImportPersonsRequest {
                request_id: format!(
                    "demo-gen-{}-{}-{}-{region}-b{b}",
                    args.seed,
                    chrono::Datelike::year(&today),
                    args.persons
                ),
                rows,
            })
            .await
            .with_context(|| format!("{region}: importing generated persons"))?
            .into_inner();
        import_check(&format!("{region} generated persons"), &r)?;
    }

    // Filings: applied at the home node and approved by its reviewer.
    let filings: Vec<&Person> = persons
        .iter()
        .copied()
        .filter(|p| p.filing.is_some())
        .collect();
    let n_filings = filings.len() as u64;
    let results = stream::iter(filings)
        .map(|p| {
            let mut admin = admin.clone();
            async move {
                let Some(f) = &p.filing else { return Ok(()) };
                let treatment = CITIES[f.treatment].region;
                let filed = admin
                    .apply_filing(proto::ApplyFilingRequest {
                        request_id: format!(
                            "demo-filing-{}-{treatment}-{}-{}",
                            p.id_number,
                            f.filing_type.to_proto(),
                            f.valid_from
                        ),
                        id_number: p.id_number.clone(),
                        filing_type: f.filing_type.to_proto(),
                        treatment_region: treatment.to_owned(),
                        institutions: f.institutions.clone(),
                        valid_from: f.valid_from.to_string(),
                        valid_to: f.valid_to.map(|d| d.to_string()).unwrap_or_default(),
                        note: f.note.to_owned(),
                    })
                    .await
                    .with_context(|| format!("filing for {}", p.id_number))?
                    .into_inner();
                admin
                    .approve_filing(proto::ReviewFilingRequest {
                        request_id: format!("demo-approve-{}", filed.filing_id),
                        filing_id: filed.filing_id.clone(),
                        note: "材料齐全，同意备案".into(),
                    })
                    .await
                    .with_context(|| format!("approving {}", filed.filing_id))?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    for r in results {
        r.with_context(|| format!("{region}: filings"))?;
    }
    let info = admin
        .get_node_info(proto::GetNodeInfoRequest {})
        .await?
        .into_inner();
    Ok(Loaded {
        info,
        filings: n_filings,
        policies,
    })
}

/// Drives the planned visits with bounded concurrency; returns the settled ones.
async fn settle(
    ctx: &Ctx,
    args: &DemoArgs,
    persons: &[Person],
) -> anyhow::Result<(Vec<drive::Done>, [u64; 3])> {
    let pools = data::Pools::new(persons, CITIES.len());
    let plan = data::plan(
        args.seed,
        ctx.run,
        args.settlements,
        &ctx.cities,
        &pools,
        ctx.today,
    );
    // Each institution's certificate and connection before the clock starts: issuing is
    // key generation and file writes, blocking work that does not belong in the stream.
    tokio::task::block_in_place(|| {
        plan.iter()
            .try_for_each(|sc| ctx.nodes[sc.treatment].hospital(&sc.institution).map(drop))
    })?;
    let total = plan.len() as u64;
    println!(
        "driving {total} visits through HospitalService ({} at a time): identify → open visit → upload fees → (discharge) → pre-settle → settle",
        args.concurrency
    );
    let pb = ProgressBar::new(total);
    pb.set_style(
        ProgressStyle::with_template("  {bar:32.cyan/blue} {pos:>4}/{len} {elapsed:>4} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let tally = drive::Tally::default();
    let t = Instant::now();
    let outcomes: Vec<drive::Outcome> = stream::iter(plan)
        .map(|sc| {
            let h = ctx.nodes[sc.treatment].hospital(&sc.institution);
            let (tally, pb) = (&tally, &pb);
            async move {
                let o = match h {
                    Ok(h) => drive::visit(h, tally, ctx.run, sc.clone(), ctx.today).await,
                    Err(e) => drive::Outcome::Failed {
                        stage: "connect",
                        code: tonic::Code::Internal,
                        message: format!("{e:#}"),
                    },
                };
                pb.set_message(tally.record(&sc, &o));
                pb.inc(1);
                o
            }
        })
        .buffer_unordered(args.concurrency as usize)
        .collect()
        .await;
    pb.finish_and_clear();
    let secs = t.elapsed().as_secs_f64();
    let counts = tally.counts();
    report::print_settlements(&counts, total, secs, ctx.lang);
    let calls = tally
        .settle_calls
        .each_ref()
        .map(|c| c.load(std::sync::atomic::Ordering::Relaxed));
    let done = outcomes
        .into_iter()
        .filter_map(|o| match o {
            drive::Outcome::Settled(d) => Some(*d),
            _ => None,
        })
        .collect();
    Ok((done, calls))
}
