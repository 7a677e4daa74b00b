//! Node configuration: a TOML file (`yidi node --config FILE`), each setting overridable
//! by a command-line flag or a `YIDI_*` environment variable, resolved once into a typed
//! [`NodeConfig`] that the library's `serve` takes. Tests build `NodeConfig` directly.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use clap::Args;
use serde::Deserialize;
use yidi_common::region::RegionCode;

use crate::{Error, Result};

/// Flags of `yidi node`. Every flag falls back to its environment variable, then to the
/// config file, then to the default.
#[derive(Debug, Clone, Args)]
pub struct NodeArgs {
    /// Node config file (TOML); see deploy/node.example.toml for every setting.
    #[arg(long, env = "YIDI_CONFIG")]
    pub config: Option<PathBuf>,
    /// This agency's 6-digit city region code, e.g. 330100.
    #[arg(long, env = "YIDI_REGION")]
    pub region: Option<String>,
    /// Human-readable name of the agency, e.g. "Hangzhou".
    #[arg(long, env = "YIDI_NAME")]
    pub name: Option<String>,
    /// Address to serve gRPC on, e.g. 127.0.0.1:7101.
    #[arg(long, env = "YIDI_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Directory holding the SQLite store (created if missing).
    #[arg(long, env = "YIDI_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Peer directory file (TOML: region code → address, name); reloaded on change.
    #[arg(long, env = "YIDI_PEERS_FILE")]
    pub peers_file: Option<PathBuf>,
    /// The provincial coordinator's address, e.g. http://127.0.0.1:7100.
    #[arg(long, env = "YIDI_COORDINATOR")]
    pub coordinator: Option<String>,
    /// Where to fetch the federation directory (region → node address, identity,
    /// province) from: the provincial coordinator's address (several, comma-separated,
    /// are tried in turn). Used beside the peers file (which wins for a region in both);
    /// cached in the data directory. Off when unset.
    #[arg(long, env = "YIDI_DIRECTORY", value_delimiter = ',')]
    pub directory: Vec<String>,
    /// Seconds between refreshes of the federation directory (default 60).
    #[arg(long, env = "YIDI_DIRECTORY_REFRESH_SECONDS")]
    pub directory_refresh_seconds: Option<u64>,
    /// Seconds to let in-flight requests finish on SIGINT/SIGTERM before exiting.
    #[arg(long, env = "YIDI_DRAIN_SECONDS")]
    pub drain_seconds: Option<u64>,
    /// Number of read-only SQLite connections.
    #[arg(long, env = "YIDI_READ_CONNECTIONS")]
    pub read_connections: Option<usize>,
    /// Log format: "text" (default) or "json".
    #[arg(long, env = "YIDI_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Deadline of every call to a peer node, in milliseconds.
    #[arg(long, env = "YIDI_PEER_TIMEOUT_MS")]
    pub peer_timeout_ms: Option<u64>,
    /// Confirm clearing statements automatically when they match this node's ledger
    /// (true by default); false leaves confirmation to the operator.
    #[arg(long, env = "YIDI_CLEARING_AUTO_CONFIRM")]
    pub clearing_auto_confirm: Option<bool>,
    /// This node's certificate (PEM, from `yidi certs node`); with --tls-key and
    /// --tls-ca every connection is mutual TLS.
    #[arg(long, env = "YIDI_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// This node's private key (PEM).
    #[arg(long, env = "YIDI_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// The federation CA certificate (PEM): callers and peers must chain to it.
    #[arg(long, env = "YIDI_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Revocation list: certificate serials (hex), one per line; re-read on change.
    #[arg(long, env = "YIDI_REVOKED_FILE")]
    pub revoked_file: Option<PathBuf>,
    /// Serve plain text without TLS: loopback addresses only, for development.
    #[arg(long, env = "YIDI_INSECURE")]
    pub insecure: bool,
    /// Sustained HospitalService requests per second per institution (0: unlimited).
    #[arg(long, env = "YIDI_HOSPITAL_RATE_PER_SECOND")]
    pub hospital_rate_per_second: Option<u32>,
    /// Burst of HospitalService requests per institution above the sustained rate.
    #[arg(long, env = "YIDI_HOSPITAL_BURST")]
    pub hospital_burst: Option<u32>,
    /// Serve Prometheus metrics over HTTP on this address (e.g. 127.0.0.1:9101), path
    /// /metrics. Off when unset.
    #[arg(long, env = "YIDI_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Serve the agency's web console (HTTPS, docs/console.md) on this address, e.g.
    /// 127.0.0.1:7181; needs mutual TLS. Off when unset.
    #[arg(long, env = "YIDI_CONSOLE_LISTEN")]
    pub console_listen: Option<SocketAddr>,
    /// How much of the store to verify at start: "auto" (default: file checks always,
    /// `PRAGMA quick_check` after an unclean stop of a store up to 256 MiB), "quick"
    /// (quick_check at every start; reads the whole store) or "off" (file checks only).
    #[arg(long, env = "YIDI_CHECK_STORE", value_enum)]
    pub check_store: Option<crate::store::CheckStore>,
    /// How far ahead of this node's clock a date in a request, or a peer node's clock,
    /// may be, in seconds (default 300); peers further off either way are refused.
    #[arg(long, env = "YIDI_MAX_CLOCK_SKEW_SECONDS")]
    pub max_clock_skew_seconds: Option<u64>,
    /// Serve the NHSA-compatible HTTP/JSON gateway for HIS on this address (e.g.
    /// 0.0.0.0:7180), HTTPS with the node's certificates (docs/nhsa-gateway.md). Off
    /// when unset.
    #[arg(long, env = "YIDI_NHSA_LISTEN")]
    pub nhsa_listen: Option<SocketAddr>,
    /// Require the provincial gateway's x-tif-* signature on NHSA requests, from this
    /// paasid (with --nhsa-tif-secret-file).
    #[arg(long, env = "YIDI_NHSA_TIF_PAASID", requires = "nhsa_tif_secret_file")]
    pub nhsa_tif_paasid: Option<String>,
    /// File holding the secret of --nhsa-tif-paasid (one line).
    #[arg(long, env = "YIDI_NHSA_TIF_SECRET_FILE", requires = "nhsa_tif_paasid")]
    pub nhsa_tif_secret_file: Option<PathBuf>,
    /// Check the configuration and the files it names (certificates, key, CA, peers
    /// file), print a summary and exit: 0 when it would start, 1 with the reason
    /// otherwise. Starts nothing and opens no store.
    #[arg(long)]
    pub check_config: bool,
}

/// The config file's shape; every key optional so flags can fill the rest.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    region: Option<String>,
    name: Option<String>,
    listen: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    peers_file: Option<PathBuf>,
    coordinator: Option<String>,
    directory: Option<Vec<String>>,
    directory_refresh_seconds: Option<u64>,
    drain_seconds: Option<u64>,
    read_connections: Option<usize>,
    log_format: Option<String>,
    peer_timeout_ms: Option<u64>,
    clearing_auto_confirm: Option<bool>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_ca: Option<PathBuf>,
    revoked_file: Option<PathBuf>,
    insecure: Option<bool>,
    hospital_rate_per_second: Option<u32>,
    hospital_burst: Option<u32>,
    metrics_listen: Option<SocketAddr>,
    console_listen: Option<SocketAddr>,
    check_store: Option<crate::store::CheckStore>,
    max_clock_skew_seconds: Option<u64>,
    nhsa_listen: Option<SocketAddr>,
    nhsa_tif_paasid: Option<String>,
    nhsa_tif_secret_file: Option<PathBuf>,
    write_queue_capacity: Option<usize>,
    write_queue_wait_ms: Option<u64>,
    clearing_step_entries: Option<u32>,
    clearing_step_millis: Option<u64>,
    request_retention_days: Option<u32>,
    admission_max_in_flight: Option<usize>,
    admission_min_in_flight: Option<usize>,
    admission_target_ms: Option<u64>,
    admission_queue_ms: Option<u64>,
}

/// The x-tif-* keys from a paasid and the file holding its secret (both or neither).
fn nhsa_tif(
    paasid: Option<String>,
    secret_file: Option<PathBuf>,
) -> Result<Option<crate::nhsa::TifKeys>> {
    match (paasid, secret_file) {
        (None, None) => Ok(None),
        (Some(paasid), Some(path)) => {
            let secret = std::fs::read_to_string(&path).map_err(|e| {
                Error::invalid(
                    "nhsa_tif_secret_file",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            let secret = secret.trim().to_owned();
            if secret.is_empty() || paasid.trim().is_empty() {
                return Err(Error::invalid(
                    "nhsa_tif_secret_file",
                    "the paasid and the secret must not be empty",
                ));
            }
            Ok(Some(crate::nhsa::TifKeys {
                paasid: paasid.trim().to_owned(),
                secret,
            }))
        }
        _ => Err(Error::invalid(
            "nhsa_tif_paasid",
            "set both nhsa_tif_paasid and nhsa_tif_secret_file, or neither",
        )),
    }
}

/// A node's resolved configuration.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub region: RegionCode,
    pub name: String,
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub peers_file: Option<PathBuf>,
    pub coordinator: Option<String>,
    /// The federation directory's sources (the provincial coordinator's address);
    /// empty: the peers file alone.
    pub directory: Vec<String>,
    /// How often the federation directory is refreshed.
    pub directory_refresh: Duration,
    pub drain: Duration,
    pub read_connections: usize,
    pub log_json: bool,
    /// Deadline of every call to a peer.
    pub peer_timeout: Duration,
    /// Confirm matching clearing statements without the operator.
    pub clearing_auto_confirm: bool,
    /// The bounds of one writer job of a clearing round's freeze or clearing
    /// (`clearing_step_entries`, `clearing_step_millis`).
    pub clearing_step: crate::store::clearing::StepLimit,
    /// Transport: mutual TLS files, or insecure loopback.
    pub security: crate::tls::SecurityConfig,
    /// Per-institution HospitalService rate limit (TLS only: it keys on certificates).
    pub hospital_rate: crate::auth::RateLimit,
    /// Where to serve Prometheus metrics; None: not served.
    pub metrics_listen: Option<SocketAddr>,
    /// Where to serve the agency's console (crate::console); None: not served.
    pub console_listen: Option<SocketAddr>,
    /// How much of the store is verified before serving.
    pub check_store: crate::store::CheckStore,
    /// How far ahead of this node's clock request dates and peers' clocks may be.
    pub max_clock_skew: Duration,
    /// Where to serve the NHSA gateway; None: not served.
    pub nhsa_listen: Option<SocketAddr>,
    /// The x-tif-* signature keys NHSA requests must carry; None: not checked.
    pub nhsa_tif: Option<crate::nhsa::TifKeys>,
    /// Write requests that may wait for the store's writer (`write_queue_capacity`).
    pub write_queue_capacity: usize,
    /// How long a write waits for room in a full queue before it is refused with
    /// RESOURCE_EXHAUSTED (`write_queue_wait_ms`).
    pub write_queue_wait: Duration,
    /// Days a request's stored answer is kept for a repeat of the request
    /// (`request_retention_days`; `store::retention`).
    pub request_retention_days: u32,
    /// Admission of new Settle and PreSettle calls (`admission_*`; `crate::admission`).
    pub admission: crate::admission::AdmissionConfig,
    /// Fault injection (tests only).
    pub hooks: crate::context::TestHooks,
    /// Listeners bound by an in-process caller for `nhsa_listen`, `metrics_listen` or
    /// `console_listen` (crate::prebound); empty from the config file.
    pub prebound: crate::prebound::Prebound,
}

impl NodeConfig {
    /// A config for tests and embedded use: loopback, defaults everywhere.
    #[must_use]
    pub fn new(region: RegionCode, name: &str, data_dir: PathBuf) -> Self {
        Self {
            region,
            name: name.to_owned(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir,
            peers_file: None,
            coordinator: None,
            directory: Vec::new(),
            directory_refresh: Duration::from_secs(60),
            drain: Duration::from_secs(10),
            read_connections: 4,
            log_json: false,
            peer_timeout: Duration::from_secs(3),
            clearing_auto_confirm: true,
            clearing_step: crate::store::clearing::StepLimit::SERVING,
            security: crate::tls::SecurityConfig::insecure_loopback(),
            hospital_rate: crate::auth::RateLimit::default(),
            metrics_listen: None,
            console_listen: None,
            check_store: crate::store::CheckStore::Auto,
            max_clock_skew: crate::clock::DEFAULT_MAX_SKEW,
            nhsa_listen: None,
            nhsa_tif: None,
            write_queue_capacity: crate::store::DEFAULT_QUEUE_CAPACITY,
            write_queue_wait: crate::store::DEFAULT_FULL_WAIT,
            request_retention_days: crate::store::retention::DEFAULT_REQUEST_RETENTION_DAYS,
            // Off for tests and embedded nodes; a daemon's default is on (`resolve`).
            admission: crate::admission::AdmissionConfig::off(),
            hooks: crate::context::TestHooks::default(),
            prebound: crate::prebound::Prebound::default(),
        }
    }

    /// Resolves flags, environment and the config file into a config.
    pub fn resolve(args: &NodeArgs) -> Result<Self> {
        let file: FileConfig = read_file(args.config.as_deref(), Daemon::Node)?;
        let admission = admission(&file)?;
        let region = args.region.clone().or(file.region).ok_or_else(|| {
            Error::invalid(
                "region",
                "missing: set --region, YIDI_REGION or `region` in the config file",
            )
        })?;
        let region = RegionCode::parse_city(&region, "region")?;
        let log_format = args
            .log_format
            .clone()
            .or(file.log_format)
            .unwrap_or_else(|| "text".to_owned());
        if log_format != "text" && log_format != "json" {
            return Err(Error::invalid(
                "log_format",
                format!("expected \"text\" or \"json\", got {log_format:?}"),
            ));
        }
        let read_connections = args.read_connections.or(file.read_connections).unwrap_or(4);
        if !(1..=64).contains(&read_connections) {
            return Err(Error::invalid(
                "read_connections",
                "must be between 1 and 64",
            ));
        }
        let config = Self {
            name: args
                .name
                .clone()
                .or(file.name)
                .unwrap_or_else(|| region.to_string()),
            listen: args
                .listen
                .or(file.listen)
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 7101))),
            data_dir: args
                .data_dir
                .clone()
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from(format!("yidi-data/{region}"))),
            peers_file: args.peers_file.clone().or(file.peers_file),
            coordinator: args.coordinator.clone().or(file.coordinator),
            directory: if args.directory.is_empty() {
                file.directory.unwrap_or_default()
            } else {
                args.directory.clone()
            },
            directory_refresh: Duration::from_secs(
                args.directory_refresh_seconds
                    .or(file.directory_refresh_seconds)
                    .unwrap_or(60)
                    .clamp(1, 86_400),
            ),
            drain: Duration::from_secs(args.drain_seconds.or(file.drain_seconds).unwrap_or(10)),
            read_connections,
            log_json: log_format == "json",
            peer_timeout: Duration::from_millis(
                args.peer_timeout_ms
                    .or(file.peer_timeout_ms)
                    .unwrap_or(3000)
                    .clamp(50, 60_000),
            ),
            clearing_auto_confirm: args
                .clearing_auto_confirm
                .or(file.clearing_auto_confirm)
                .unwrap_or(true),
            clearing_step: {
                use crate::store::clearing::{STEP_ENTRIES, STEP_MILLIS, StepLimit};
                StepLimit::new(
                    file.clearing_step_entries
                        .unwrap_or(STEP_ENTRIES)
                        .clamp(1, 100_000),
                    file.clearing_step_millis
                        .unwrap_or(STEP_MILLIS)
                        .clamp(1, 1_000),
                )
            },
            security: crate::tls::SecurityConfig {
                tls_cert: args.tls_cert.clone().or(file.tls_cert),
                tls_key: args.tls_key.clone().or(file.tls_key),
                tls_ca: args.tls_ca.clone().or(file.tls_ca),
                revoked_file: args.revoked_file.clone().or(file.revoked_file),
                insecure: args.insecure || file.insecure.unwrap_or(false),
            },
            hospital_rate: {
                let d = crate::auth::RateLimit::default();
                crate::auth::RateLimit {
                    per_second: args
                        .hospital_rate_per_second
                        .or(file.hospital_rate_per_second)
                        .unwrap_or(d.per_second),
                    burst: args
                        .hospital_burst
                        .or(file.hospital_burst)
                        .unwrap_or(d.burst)
                        .max(1),
                }
            },
            metrics_listen: args.metrics_listen.or(file.metrics_listen),
            console_listen: args.console_listen.or(file.console_listen),
            check_store: args.check_store.or(file.check_store).unwrap_or_default(),
            max_clock_skew: args
                .max_clock_skew_seconds
                .or(file.max_clock_skew_seconds)
                .map_or(crate::clock::DEFAULT_MAX_SKEW, |s| {
                    Duration::from_secs(s.clamp(1, 86_400))
                }),
            nhsa_listen: args.nhsa_listen.or(file.nhsa_listen),
            nhsa_tif: nhsa_tif(
                args.nhsa_tif_paasid.clone().or(file.nhsa_tif_paasid),
                args.nhsa_tif_secret_file
                    .clone()
                    .or(file.nhsa_tif_secret_file),
            )?,
            write_queue_capacity: file
                .write_queue_capacity
                .unwrap_or(crate::store::DEFAULT_QUEUE_CAPACITY)
                .clamp(1, 1_000_000),
            write_queue_wait: file
                .write_queue_wait_ms
                .map_or(crate::store::DEFAULT_FULL_WAIT, |ms| {
                    Duration::from_millis(ms.min(60_000))
                }),
            request_retention_days: file
                .request_retention_days
                .unwrap_or(crate::store::retention::DEFAULT_REQUEST_RETENTION_DAYS)
                .clamp(1, crate::store::retention::MAX_REQUEST_RETENTION_DAYS),
            admission,
            hooks: crate::context::TestHooks::default(),
            prebound: crate::prebound::Prebound::default(),
            region,
        };
        for (i, a) in config.directory.iter().enumerate() {
            crate::directory::check_address(&format!("directory[{i}]"), a)?;
        }
        // Refuse plain text off loopback (and TLS without its files) before anything starts.
        if config.security.transport(config.listen)?.is_none() && config.console_listen.is_some() {
            return Err(crate::console::needs_tls());
        }
        if let Some(nhsa) = config.nhsa_listen {
            config.security.transport(nhsa)?;
        }
        Ok(config)
    }

    /// `yidi node --check-config`: loads what the node would load at start — its TLS
    /// material (the certificate must name this node and be valid now, the key must
    /// match it) and its peers file — without binding a port or opening the store.
    /// Returns the summary to print. Needs a Tokio runtime (the peers' channels are
    /// built, lazily, as at start).
    pub fn check(&self) -> Result<String> {
        let mut out = vec![
            format!("node config OK: {} ({})", self.region, self.name),
            format!("  listen          {}", self.listen),
            format!(
                "  data_dir        {}",
                describe_dir(&self.data_dir, "node.db")
            ),
            format!(
                "  transport       {}",
                check_transport(
                    &self.security,
                    self.listen,
                    &crate::identity::Identity::Node {
                        region: self.region
                    }
                )?
            ),
        ];
        let peers = crate::peers::PeerDirectory::load(
            self.region,
            self.peers_file.as_deref(),
            self.peer_timeout,
        )?;
        let regions: Vec<String> = peers.all().iter().map(|p| p.region.to_string()).collect();
        out.push(match &self.peers_file {
            Some(p) => format!(
                "  peers_file      {} ({} peers: {})",
                p.display(),
                regions.len(),
                regions.join(", ")
            ),
            None => "  peers_file      none (no other city is reachable)".to_owned(),
        });
        out.push(format!(
            "  directory       {}",
            if self.directory.is_empty() {
                "none (the peers file alone)".to_owned()
            } else {
                format!(
                    "{} (refreshed every {} s, cached in {})",
                    self.directory.join(", "),
                    self.directory_refresh.as_secs(),
                    self.data_dir.join(crate::directory::CACHE_FILE).display()
                )
            }
        ));
        out.push(format!(
            "  coordinator     {}",
            self.coordinator.as_deref().unwrap_or("none")
        ));
        out.push(format!(
            "  metrics         {}",
            self.metrics_listen
                .map_or_else(|| "off".to_owned(), |a| format!("http://{a}/metrics"))
        ));
        out.push(format!(
            "  nhsa gateway    {}",
            self.nhsa_listen.map_or_else(
                || "off".to_owned(),
                |a| {
                    let scheme = if self.security.insecure {
                        "http"
                    } else {
                        "https"
                    };
                    let tif = self.nhsa_tif.as_ref().map_or_else(String::new, |k| {
                        format!(" (x-tif signature of paasid {} required)", k.paasid)
                    });
                    format!("{scheme}://{a}{}{tif}", crate::nhsa::PATH)
                }
            )
        ));
        out.push(format!(
            "  log format      {}",
            if self.log_json { "json" } else { "text" }
        ));
        Ok(out.join("\n"))
    }
}

/// The admission settings of a config file, defaults for what it leaves out.
fn admission(file: &FileConfig) -> Result<crate::admission::AdmissionConfig> {
    use crate::admission as a;
    let max = file
        .admission_max_in_flight
        .unwrap_or(a::DEFAULT_MAX_IN_FLIGHT);
    let min = file
        .admission_min_in_flight
        .unwrap_or(a::DEFAULT_MIN_IN_FLIGHT.min(max.max(1)));
    if max > 100_000 {
        return Err(Error::invalid(
            "admission_max_in_flight",
            format!("{max} is more than 100000; 0 turns admission off"),
        ));
    }
    if max > 0 && !(1..=max).contains(&min) {
        return Err(Error::invalid(
            "admission_min_in_flight",
            format!("{min} must be between 1 and admission_max_in_flight ({max})"),
        ));
    }
    Ok(a::AdmissionConfig {
        max_in_flight: max,
        min_in_flight: min,
        target: file.admission_target_ms.map_or(a::DEFAULT_TARGET, |ms| {
            Duration::from_millis(ms.clamp(1, 10_000))
        }),
        queue_wait: file.admission_queue_ms.map_or(a::DEFAULT_QUEUE_WAIT, |ms| {
            Duration::from_millis(ms.min(10_000))
        }),
    })
}

/// Which daemon a config file is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Daemon {
    Node,
    Coordinator,
}

/// Keys only a node's config has, and keys only a coordinator's has: a file that fails
/// to parse for one daemon but carries the other's keys was given to the wrong command.
const NODE_ONLY_KEYS: [&str; 19] = [
    "name",
    "directory",
    "directory_refresh_seconds",
    "peers_file",
    "coordinator",
    "read_connections",
    "peer_timeout_ms",
    "clearing_auto_confirm",
    "hospital_rate_per_second",
    "hospital_burst",
    "write_queue_capacity",
    "write_queue_wait_ms",
    "clearing_step_entries",
    "clearing_step_millis",
    "request_retention_days",
    "admission_max_in_flight",
    "admission_min_in_flight",
    "admission_target_ms",
    "admission_queue_ms",
];
const COORDINATOR_ONLY_KEYS: [&str; 4] = [
    "participants_file",
    "directory_file",
    "run_interval_seconds",
    "call_timeout_ms",
];

/// A daemon's config file (`this`'s keys), or all defaults without one. A file of the
/// other daemon is refused with an error naming the command that takes it.
pub(crate) fn read_file<T: serde::de::DeserializeOwned + Default>(
    path: Option<&Path>,
    this: Daemon,
) -> Result<T> {
    let Some(path) = path else {
        return Ok(T::default());
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::invalid("config", format!("cannot read {}: {e}", path.display())))?;
    toml::from_str::<T>(&text).map_err(|e| {
        wrong_daemon(&text, path, this)
            .unwrap_or_else(|| Error::invalid("config", format!("{}: {e}", path.display())))
    })
}

/// The error for a config file of the other daemon (`None` when it is not one), naming
/// the command that takes it.
pub(crate) fn wrong_daemon(text: &str, path: &Path, this: Daemon) -> Option<Error> {
    let table = toml::from_str::<toml::Table>(text).ok()?;
    let (keys, other, command) = match this {
        Daemon::Node => (&COORDINATOR_ONLY_KEYS[..], "a coordinator", "coordinator"),
        Daemon::Coordinator => (&NODE_ONLY_KEYS[..], "a node", "node"),
    };
    let key = keys.iter().find(|k| table.contains_key(**k))?;
    Some(Error::invalid(
        "config",
        format!(
            "{} is {other} config (it sets `{key}`); start it with `yidi {command} --config {}`",
            path.display(),
            path.display()
        ),
    ))
}

/// The data directory and whether it holds a store yet.
pub(crate) fn describe_dir(dir: &Path, db: &str) -> String {
    if dir.join(db).is_file() {
        format!("{} (holds {db})", dir.display())
    } else if dir.is_dir() {
        format!("{} (no {db} yet: created at first start)", dir.display())
    } else {
        format!("{} (missing: created at first start)", dir.display())
    }
}

/// Loads and checks the TLS material a server would start with; the summary line.
pub(crate) fn check_transport(
    security: &crate::tls::SecurityConfig,
    listen: SocketAddr,
    me: &crate::identity::Identity,
) -> Result<String> {
    match security.transport(listen)? {
        None => Ok("PLAIN TEXT (--insecure, loopback only)".to_owned()),
        Some(files) => {
            let m = files.load(me)?;
            Ok(format!(
                "mutual TLS as {} (serial {}, valid until {}), CA {}, {} revoked serials",
                m.own.identity,
                m.own.serial,
                chrono::DateTime::from_timestamp(m.own.not_after, 0)
                    .map_or_else(|| m.own.not_after.to_string(), |t| t.to_rfc3339()),
                files.ca.display(),
                m.revoked.len()
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::store::clearing::StepLimit;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        node: NodeArgs,
    }

    fn resolved(file: &str) -> NodeConfig {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(
            &path,
            format!("region = \"330100\"\ninsecure = true\n{file}"),
        )
        .unwrap();
        let cli = Cli::try_parse_from(["yidi", "--config", path.to_str().unwrap()]).unwrap();
        NodeConfig::resolve(&cli.node).unwrap()
    }

    /// A clearing step's bounds come from the config file, within their ranges, and
    /// default to the serving bounds.
    #[test]
    fn clearing_step_bounds_come_from_the_config_file() {
        assert_eq!(resolved("").clearing_step, StepLimit::SERVING);
        assert_eq!(
            resolved("clearing_step_entries = 50\nclearing_step_millis = 5\n").clearing_step,
            StepLimit::new(50, 5)
        );
        assert_eq!(
            resolved("clearing_step_entries = 0\nclearing_step_millis = 0\n").clearing_step,
            StepLimit::new(1, 1),
            "at least one entry and a millisecond: never unbounded in time"
        );
        assert_eq!(
            resolved("clearing_step_entries = 9000000\nclearing_step_millis = 60000\n")
                .clearing_step,
            StepLimit::new(100_000, 1_000)
        );
    }
}
