//! The provincial coordinator: nothing but multilateral net clearing. It holds no person
//! index and no personal data — only the participants' addresses and, per round, the
//! counts, sums and digests they report. Rounds are persisted in its own SQLite store
//! and driven both by the operator (CoordinatorService) and by a background loop that
//! retries whatever waits on an unreachable participant.

pub mod desk;
mod fanout;
pub mod metrics;
pub mod national;
mod national_statement;
mod reconcile;
mod round;
mod service;
mod statement;
pub mod store;

use std::{future::Future, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use clap::Args;
use serde::Deserialize;
use tokio::{
    net::TcpListener,
    sync::{Mutex, oneshot},
};
use tonic::transport::Server;
use yidi_common::{
    proto::{
        clearing_participant_server::ClearingParticipantServer,
        coordinator_service_server::CoordinatorServiceServer,
        directory_service_server::DirectoryServiceServer,
    },
    region::RegionCode,
};

pub use service::CoordinatorSvc;
pub use yidi_common::round_state::RoundState;

use crate::{Error, Result, peers::PeerDirectory, store::Store};

/// Flags of `yidi coordinator`; each falls back to its environment variable, then the
/// config file.
#[derive(Debug, Clone, Args)]
pub struct CoordinatorArgs {
    /// Coordinator config file (TOML); see deploy/coordinator.example.toml.
    #[arg(long, env = "YIDI_COORDINATOR_CONFIG")]
    pub config: Option<PathBuf>,
    /// The province's 6-digit code, e.g. 330000; also the clearing account's name.
    /// 000000 makes this the national coordinator, whose participants file lists the
    /// provinces' coordinators (docs/national.md).
    #[arg(long, env = "YIDI_COORDINATOR_REGION")]
    pub region: Option<String>,
    /// Address to serve CoordinatorService on, e.g. 127.0.0.1:7100.
    #[arg(long, env = "YIDI_COORDINATOR_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Directory of the coordinator's SQLite store.
    #[arg(long, env = "YIDI_COORDINATOR_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Participants file: the nodes of the province (same format as a node's peers file).
    #[arg(long, env = "YIDI_PARTICIPANTS_FILE")]
    pub participants_file: Option<PathBuf>,
    /// The federation directory file (TOML) this coordinator publishes: its province's
    /// cities (`[[city]]`) and where the national level is (`[national]`); see
    /// docs/national.md. Re-read on change. Off when unset.
    #[arg(long, env = "YIDI_COORDINATOR_DIRECTORY_FILE")]
    pub directory_file: Option<PathBuf>,
    /// Seconds between fetches of the other provinces' directories from the national
    /// level (default 60).
    #[arg(long, env = "YIDI_COORDINATOR_DIRECTORY_REFRESH_SECONDS")]
    pub directory_refresh_seconds: Option<u64>,
    /// Seconds between background attempts to advance unfinished rounds.
    #[arg(long, env = "YIDI_RUN_INTERVAL_SECONDS")]
    pub run_interval_seconds: Option<u64>,
    /// Deadline of every call to a participant, in milliseconds.
    #[arg(long, env = "YIDI_CALL_TIMEOUT_MS")]
    pub call_timeout_ms: Option<u64>,
    /// Seconds to drain in-flight requests on SIGINT/SIGTERM.
    #[arg(long, env = "YIDI_DRAIN_SECONDS")]
    pub drain_seconds: Option<u64>,
    /// Log format: "text" (default) or "json".
    #[arg(long, env = "YIDI_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// The coordinator's certificate (PEM, from `yidi certs coordinator`); with
    /// --tls-key and --tls-ca every connection is mutual TLS.
    #[arg(long, env = "YIDI_COORDINATOR_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// The coordinator's private key (PEM).
    #[arg(long, env = "YIDI_COORDINATOR_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// The federation CA certificate (PEM).
    #[arg(long, env = "YIDI_COORDINATOR_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Revocation list: certificate serials (hex), one per line; re-read on change.
    #[arg(long, env = "YIDI_COORDINATOR_REVOKED_FILE")]
    pub revoked_file: Option<PathBuf>,
    /// Serve plain text without TLS: loopback addresses only, for development.
    #[arg(long, env = "YIDI_COORDINATOR_INSECURE")]
    pub insecure: bool,
    /// Serve the clearing desk's web console (HTTPS, docs/console.md) on this address,
    /// e.g. 127.0.0.1:7180; needs mutual TLS. Off unless set.
    #[arg(long, env = "YIDI_COORDINATOR_CONSOLE_LISTEN")]
    pub console_listen: Option<SocketAddr>,
    /// Check the configuration and the files it names (certificates, key, CA,
    /// participants file), print a summary and exit: 0 when it would start, 1 with the
    /// reason otherwise. Starts nothing and opens no store.
    #[arg(long)]
    pub check_config: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    region: Option<String>,
    listen: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    participants_file: Option<PathBuf>,
    directory_file: Option<PathBuf>,
    directory_refresh_seconds: Option<u64>,
    run_interval_seconds: Option<u64>,
    call_timeout_ms: Option<u64>,
    drain_seconds: Option<u64>,
    log_format: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_ca: Option<PathBuf>,
    revoked_file: Option<PathBuf>,
    insecure: Option<bool>,
    metrics_listen: Option<SocketAddr>,
    console_listen: Option<SocketAddr>,
}

/// The coordinator's clock. It decides which periods are over, current or in the
/// future; tests (and a drill on a copy of the store) set a fixed instant.
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>);

impl Clock {
    /// The system clock.
    #[must_use]
    pub fn system() -> Self {
        Self(Arc::new(Utc::now))
    }

    /// Always `t`.
    #[must_use]
    pub fn fixed(t: DateTime<Utc>) -> Self {
        Self(Arc::new(move || t))
    }

    /// Now, by this clock.
    #[must_use]
    pub fn now(&self) -> DateTime<Utc> {
        (self.0)()
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Clock({})", self.now())
    }
}

/// The coordinator's resolved configuration.
#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    pub region: RegionCode,
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub participants_file: PathBuf,
    /// The federation directory file it publishes (crate::directory); None: none.
    pub directory_file: Option<PathBuf>,
    /// How often the other provinces' directories are fetched from the national level.
    pub directory_refresh: Duration,
    pub run_interval: Duration,
    pub call_timeout: Duration,
    pub drain: Duration,
    pub log_json: bool,
    /// Transport: mutual TLS files, or insecure loopback.
    pub security: crate::tls::SecurityConfig,
    /// Which period is current (the system clock but in tests).
    pub clock: Clock,
    /// Where to serve Prometheus metrics (the config file's `metrics_listen`; the
    /// `--metrics-listen` flag overrides it); None: not served.
    pub metrics_listen: Option<SocketAddr>,
    /// Where to serve the clearing desk's console (crate::console); None: not served.
    pub console_listen: Option<SocketAddr>,
    /// Listeners bound by an in-process caller for `console_listen` or
    /// `metrics_listen` (crate::prebound); empty from the config file.
    pub prebound: crate::prebound::Prebound,
}

impl CoordinatorConfig {
    /// A config for tests and embedded use.
    #[must_use]
    pub fn new(region: RegionCode, data_dir: PathBuf, participants_file: PathBuf) -> Self {
        Self {
            region,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir,
            participants_file,
            directory_file: None,
            directory_refresh: Duration::from_secs(60),
            run_interval: Duration::from_secs(3),
            call_timeout: Duration::from_secs(5),
            drain: Duration::from_secs(10),
            log_json: false,
            security: crate::tls::SecurityConfig::insecure_loopback(),
            clock: Clock::system(),
            metrics_listen: None,
            console_listen: None,
            prebound: crate::prebound::Prebound::default(),
        }
    }

    /// Resolves flags, environment and the config file.
    pub fn resolve(args: &CoordinatorArgs) -> Result<Self> {
        let file: FileConfig =
            crate::config::read_file(args.config.as_deref(), crate::config::Daemon::Coordinator)?;
        let region =
            args.region.clone().or(file.region).ok_or_else(|| {
                Error::invalid("region", "missing: the province code, e.g. 330000")
            })?;
        let region = RegionCode::parse(&region, "region")?;
        if !region.is_province() && !region.is_national() {
            return Err(Error::invalid(
                "region",
                format!(
                    "{region} is not a province code like 330000 (or 000000, the national coordinator)"
                ),
            ));
        }
        let log_format = args
            .log_format
            .clone()
            .or(file.log_format)
            .unwrap_or_else(|| "text".to_owned());
        let config = Self {
            listen: args
                .listen
                .or(file.listen)
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 7100))),
            data_dir: args
                .data_dir
                .clone()
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from(format!("yidi-data/{region}"))),
            participants_file: args
                .participants_file
                .clone()
                .or(file.participants_file)
                .ok_or_else(|| {
                    Error::invalid(
                        "participants_file",
                        "missing: the list of the province's nodes",
                    )
                })?,
            directory_file: args.directory_file.clone().or(file.directory_file),
            directory_refresh: Duration::from_secs(
                args.directory_refresh_seconds
                    .or(file.directory_refresh_seconds)
                    .unwrap_or(60)
                    .clamp(1, 86_400),
            ),
            run_interval: Duration::from_secs(
                args.run_interval_seconds
                    .or(file.run_interval_seconds)
                    .unwrap_or(3)
                    .max(1),
            ),
            call_timeout: Duration::from_millis(
                args.call_timeout_ms
                    .or(file.call_timeout_ms)
                    .unwrap_or(5000)
                    .clamp(50, 120_000),
            ),
            drain: Duration::from_secs(args.drain_seconds.or(file.drain_seconds).unwrap_or(10)),
            log_json: log_format == "json",
            security: crate::tls::SecurityConfig {
                tls_cert: args.tls_cert.clone().or(file.tls_cert),
                tls_key: args.tls_key.clone().or(file.tls_key),
                tls_ca: args.tls_ca.clone().or(file.tls_ca),
                revoked_file: args.revoked_file.clone().or(file.revoked_file),
                insecure: args.insecure || file.insecure.unwrap_or(false),
            },
            clock: Clock::system(),
            metrics_listen: file.metrics_listen,
            console_listen: args.console_listen.or(file.console_listen),
            prebound: crate::prebound::Prebound::default(),
            region,
        };
        // Refuse plain text off loopback (and TLS without its files) before anything starts.
        if config.security.transport(config.listen)?.is_none() && config.console_listen.is_some() {
            return Err(crate::console::needs_tls());
        }
        Ok(config)
    }

    /// `yidi coordinator --check-config`: loads the TLS material (the certificate must
    /// name this province's coordinator) and the participants file, as at start,
    /// without binding a port or opening the store. Returns the summary to print. Needs
    /// a Tokio runtime (the participants' channels are built, lazily, as at start).
    pub fn check(&self) -> Result<String> {
        let transport = crate::config::check_transport(
            &self.security,
            self.listen,
            &crate::identity::Identity::Coordinator {
                province: self.region,
            },
        )?;
        let participants = PeerDirectory::load(
            self.region,
            Some(&self.participants_file),
            self.call_timeout,
        )?;
        let regions: Vec<String> = participants
            .all()
            .iter()
            .map(|p| p.region.to_string())
            .collect();
        let directory = match &self.directory_file {
            None => "none".to_owned(),
            Some(path) => {
                let own = (!self.region.is_national()).then_some(self.region);
                let file = crate::directory::DirectoryFile::read(path, own)?;
                format!(
                    "{} ({} cities{})",
                    path.display(),
                    file.city.len(),
                    file.national
                        .as_ref()
                        .map_or_else(String::new, |n| format!(", national level {}", n.address))
                )
            }
        };
        Ok([
            format!("coordinator config OK: {}", self.region),
            format!("  listen             {}", self.listen),
            format!(
                "  data_dir           {}",
                crate::config::describe_dir(&self.data_dir, "coordinator.db")
            ),
            format!("  transport          {transport}"),
            format!(
                "  participants_file  {} ({} participants: {})",
                self.participants_file.display(),
                regions.len(),
                regions.join(", ")
            ),
            format!("  directory_file     {directory}"),
            format!(
                "  metrics            {}",
                self.metrics_listen
                    .map_or_else(|| "off".to_owned(), |a| format!("http://{a}/metrics"))
            ),
        ]
        .join("\n"))
    }
}

/// What the coordinator's services share.
pub struct CoordState {
    pub region: RegionCode,
    pub store: Store,
    pub participants: Arc<PeerDirectory>,
    /// Which period is current.
    pub clock: Clock,
    /// One round step at a time: the background loop and the operator never interleave.
    advancing: Mutex<()>,
}

impl CoordState {
    /// The participating regions, sorted.
    #[must_use]
    pub fn participant_regions(&self) -> Vec<String> {
        self.participants
            .all()
            .into_iter()
            .map(|p| p.region.to_string())
            .collect()
    }
}

/// Runs the coordinator on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
    config: CoordinatorConfig,
) -> Result<()> {
    let listen = listener
        .local_addr()
        .map_err(|e| Error::Unavailable(format!("listener: {e}")))?;
    let tls = crate::tls::start(
        &config.security,
        listen,
        crate::identity::Identity::Coordinator {
            province: config.region,
        },
        "coordinator",
    )
    .await?;
    // Bound before anything is served so that a taken port fails the start.
    let console_listener = match (config.console_listen, &tls) {
        (None, _) => None,
        (Some(addr), Some(_)) => Some(config.prebound.take_or(addr, crate::console::bind).await?),
        (Some(_), None) => return Err(crate::console::needs_tls()),
    };
    let (dir, region) = (config.data_dir.clone(), config.region.to_string());
    let store = tokio::task::spawn_blocking(move || Store::open_coordinator(&dir, 2, &region))
        .await
        .map_err(|e| Error::Internal(format!("store open task failed: {e}")))??;
    let participants = {
        let (region, path, timeout) = (
            config.region,
            config.participants_file.clone(),
            config.call_timeout,
        );
        let peer_tls = tls.clone();
        tokio::task::spawn_blocking(move || {
            PeerDirectory::load_secure(region, Some(&path), timeout, peer_tls)
        })
        .await
        .map_err(|e| Error::Internal(format!("participants task failed: {e}")))??
    };
    let directory = match &config.directory_file {
        None => None,
        Some(path) => Some(start_directory(&config, path.clone(), tls.clone()).await?),
    };
    let state = Arc::new(CoordState {
        region: config.region,
        store,
        participants: Arc::new(participants),
        clock: config.clock.clone(),
        advancing: Mutex::new(()),
    });

    let (stop_bg, bg) = tokio::sync::watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    {
        let mut rx = bg.clone();
        tasks.spawn(
            Arc::clone(&state.participants).watch(Duration::from_secs(2), async move {
                let _ = rx.wait_for(|s| *s).await;
            }),
        );
    }
    if let Some(t) = &tls {
        // Certificate, CA and revocation list: re-read on change or SIGHUP.
        let mut rx = bg.clone();
        tasks.spawn(Arc::clone(t).watch(crate::tls::RELOAD_CHECK, async move {
            let _ = rx.wait_for(|s| *s).await;
        }));
    }
    if let Some((publisher, follower)) = &directory {
        let mut rx = bg.clone();
        tasks.spawn(crate::directory::keep_current(
            Arc::clone(publisher),
            Arc::clone(follower),
            Duration::from_secs(2).min(config.directory_refresh),
            config.directory_refresh,
            async move {
                let _ = rx.wait_for(|s| *s).await;
            },
        ));
    }
    if let (Some(l), Some(t)) = (console_listener, &tls) {
        let mut rx = bg.clone();
        tasks.spawn(crate::console::serve(
            l,
            async move {
                let _ = rx.wait_for(|s| *s).await;
            },
            desk::console(Arc::clone(&state), Arc::clone(t)),
        ));
    }
    {
        let st = Arc::clone(&state);
        let mut rx = bg.clone();
        let interval = config.run_interval;
        tasks.spawn(async move {
            loop {
                service::advance_unfinished(&st).await;
                tokio::select! {
                    _ = rx.wait_for(|s| *s) => return,
                    () = tokio::time::sleep(interval) => {}
                }
            }
        });
    }

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<CoordinatorServiceServer<service::CoordinatorSvc>>()
        .await;
    let directory_svc = directory.as_ref().map(|(_, follower)| {
        DirectoryServiceServer::new(crate::directory::DirectorySvc::new(Arc::clone(follower)))
    });
    if directory_svc.is_some() {
        health
            .set_serving::<DirectoryServiceServer<crate::directory::DirectorySvc>>()
            .await;
    }
    let mut served_names = vec![yidi_common::proto::coordinator_service_server::SERVICE_NAME];
    if directory_svc.is_some() {
        served_names.push(yidi_common::proto::directory_service_server::SERVICE_NAME);
    }
    let (reflection, reflection_v1alpha) = crate::serving::reflection(&served_names)?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Unavailable(format!("listener: {e}")))?;
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let router = Server::builder()
        // Only the province's operators and its registered nodes (crate::auth).
        .layer(crate::auth::AuthLayer::new(
            crate::auth::Server::Coordinator {
                province: config.region,
                participants: Arc::clone(&state.participants),
            },
            tls.clone(),
            crate::auth::RateLimit::default(),
        ))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .add_service(CoordinatorServiceServer::new(service::CoordinatorSvc::new(
            Arc::clone(&state),
        )))
        // A province is the national coordinator's participant (national.rs); the
        // national coordinator itself is nobody's.
        .add_optional_service((!config.region.is_national()).then(|| {
            ClearingParticipantServer::new(national::ProvinceParticipant::new(Arc::clone(&state)))
                .max_decoding_message_size(crate::serving::MAX_MESSAGE_BYTES)
        }))
        .add_optional_service(directory_svc);
    let server = crate::tls::serve_router(router, listener, tls.clone(), async {
        let _ = stop_rx.await;
    });
    tracing::info!(region = %config.region, %addr, participants = state.participant_regions().len(), "coordinator serving");
    let served =
        crate::serving::serve_until(server, stop_tx, shutdown, config.drain, &stop_bg).await;
    while tasks.join_next().await.is_some() {}
    // As a node's: the log copied into coordinator.db before the process ends.
    if !state.store.close(Duration::from_secs(5)).await {
        tracing::warn!("store closed without a complete checkpoint; the next start checks it");
    }
    served?;
    tracing::info!("coordinator stopped");
    Ok(())
}

/// The coordinator's directory: its cache read, its file published (a broken file
/// fails the start), its sources set from the file.
async fn start_directory(
    config: &CoordinatorConfig,
    path: PathBuf,
    tls: Option<Arc<crate::tls::TlsState>>,
) -> Result<(
    Arc<crate::directory::Publisher>,
    Arc<crate::directory::Follower>,
)> {
    // The national coordinator (000000) has no province of its own: its file lists the
    // provinces, whose documents it fetches and relays (docs/national.md).
    let own = (!config.region.is_national()).then_some(config.region);
    let follower = Arc::new(crate::directory::Follower::new(
        Vec::new(),
        Some(config.data_dir.join(crate::directory::CACHE_FILE)),
        tls.clone(),
        config.call_timeout,
        None,
        own.map(|r| r.to_string()),
    ));
    let publisher = Arc::new(crate::directory::Publisher::new(
        own,
        path,
        &config.data_dir,
        tls,
        Arc::clone(&follower),
    ));
    {
        let (f, p) = (Arc::clone(&follower), Arc::clone(&publisher));
        tokio::task::spawn_blocking(move || {
            f.load_cache();
            p.reload()
        })
        .await
        .map_err(|e| Error::Internal(format!("directory task failed: {e}")))??;
    }
    follower.persist().await;
    Ok((publisher, follower))
}

/// Binds the configured address and serves until SIGINT or SIGTERM.
pub async fn run(config: CoordinatorConfig) -> Result<()> {
    let listener = crate::serving::bind(config.listen).await?;
    serve(listener, crate::serving::shutdown_signal(), config).await
}

/// Runs the coordinator (until SIGINT/SIGTERM) and, when `metrics_listen` is set, its
/// metrics beside it; the metrics stop with the coordinator.
pub async fn run_with_metrics(
    config: CoordinatorConfig,
    metrics_listen: Option<SocketAddr>,
) -> Result<()> {
    let Some(addr) = metrics_listen else {
        return run(config).await;
    };
    let listener = config.prebound.take_or(addr, crate::metrics::bind).await?;
    let metrics = Arc::new(metrics::CoordinatorMetrics::new(
        config.region.as_str(),
        &config.data_dir,
    ));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(metrics::serve_metrics(
        listener,
        async {
            let _ = stopped.await;
        },
        metrics,
    ));
    let out = run(config).await;
    let _ = stop.send(());
    let _ = task.await;
    out
}
