//! Prometheus metrics of a node and of the coordinator, served as text (OpenMetrics
//! exposition, which Prometheus scrapes natively) on their own HTTP port, off unless
//! `metrics_listen` is set — an agency's monitoring usually lives on a separate network
//! from the hospitals' gRPC traffic, so the two never share a port.
//!
//! Each node has its own registry (several nodes share one process in the demo and in
//! tests, and must not mix their counts); every series carries the node's `region`.
//! Counters are bumped where the work happens — the thin HospitalService wrapper for
//! settle and pre-settle, the peer channel for calls to other nodes — while values that
//! live in the store (outbox depth, clearing rounds) are read fresh on every scrape, so
//! they can never drift from what `yidi admin outbox` shows.

use std::{
    borrow::Cow,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering as AtomicOrdering},
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use clap::Args;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use tokio::net::TcpListener;
use tonic::{Code, Status, codegen::Service, transport::Channel};
use yidi_common::{proto, region::RegionCode, types::VisitKind};

use crate::{
    Error, Result,
    store::{JobKind, Store, WriterTotals, outbox},
};

/// The content type of the exposition (OpenMetrics text; Prometheus asks for it).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Latency buckets in seconds: an unloaded local settle costs little server time plus an
/// fsync; a cross-region one two round trips and two fsyncs; the design's p99 target is
/// 25 ms, so the buckets are densest around it.
const LATENCY_BUCKETS: [f64; 14] = [
    0.000_5, 0.001, 0.002, 0.003, 0.005, 0.007_5, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0,
];

/// Flags of a process that serves metrics without a config-file key for them (the
/// coordinator).
#[derive(Debug, Clone, Args)]
pub struct MetricsArgs {
    /// Serve Prometheus metrics over HTTP on this address (e.g. 127.0.0.1:9100),
    /// path /metrics. Off when unset.
    #[arg(long, env = "YIDI_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
}

/// Which HospitalService call a settlement metric is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Settle,
    PreSettle,
}

impl Op {
    fn as_str(self) -> &'static str {
        match self {
            Op::Settle => "settle",
            Op::PreSettle => "pre_settle",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SettleLabels {
    op: &'static str,
    kind: &'static str,
    /// settled | provisional | refused | presettled | error
    outcome: String,
    /// "ok", or the gRPC code of the error in snake case.
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabels {
    op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabels {
    peer: String,
    method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerErrorLabels {
    peer: String,
    method: String,
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetLabels {
    target: String,
}

/// The kind of a store writer job (`store::JobKind`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    kind: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// The snake-case name of a gRPC code, as a label value.
#[must_use]
pub fn code_label(code: Code) -> &'static str {
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown",
        Code::InvalidArgument => "invalid_argument",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::NotFound => "not_found",
        Code::AlreadyExists => "already_exists",
        Code::PermissionDenied => "permission_denied",
        Code::ResourceExhausted => "resource_exhausted",
        Code::FailedPrecondition => "failed_precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out_of_range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data_loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

pub(crate) fn region_labels(
    region: &str,
) -> impl Iterator<Item = (Cow<'static, str>, Cow<'static, str>)> {
    std::iter::once((Cow::Borrowed("region"), Cow::Owned(region.to_owned())))
}

/// Calls to peer nodes: counted per peer and method, errors also per code. Cheap to
/// clone (the families are shared).
#[derive(Clone, Default)]
pub struct PeerCalls {
    calls: Family<PeerLabels, Counter>,
    errors: Family<PeerErrorLabels, Counter>,
}

/// PeerService's methods, as the peer channel labels them (checked against
/// proto/yidi/v1/peer.proto by a test).
pub const PEER_METHODS: [&str; 9] = [
    "GetPolicy",
    "LookupPerson",
    "CheckEligibility",
    "CommitClaim",
    "CommitClaims",
    "ReverseClaim",
    "ClaimStatus",
    "PeriodDigest",
    "PushAdjustment",
];

/// The codes a peer that is not reached in time fails with: the ones an alert watches.
const PEER_UNREACHED_CODES: [Code; 2] = [Code::Unavailable, Code::DeadlineExceeded];

impl PeerCalls {
    /// Creates the series of `peer` at 0 — every method's calls, and its errors with
    /// the codes of an unreached peer — so that a rate or an alert on them has a series
    /// before the first call rather than none.
    pub fn precreate(&self, peer: &str) {
        for method in PEER_METHODS {
            let labels = PeerLabels {
                peer: peer.to_owned(),
                method: method.to_owned(),
            };
            let _ = self.calls.get_or_create(&labels);
            for code in PEER_UNREACHED_CODES {
                let _ = self.errors.get_or_create(&PeerErrorLabels {
                    peer: labels.peer.clone(),
                    method: labels.method.clone(),
                    code: code_label(code),
                });
            }
        }
    }

    /// Counts one finished call; `code` is `Ok` for a success.
    pub fn observe(&self, peer: &str, method: &str, code: Code) {
        let labels = PeerLabels {
            peer: peer.to_owned(),
            method: method.to_owned(),
        };
        self.calls.get_or_create(&labels).inc();
        if code != Code::Ok {
            self.errors
                .get_or_create(&PeerErrorLabels {
                    peer: labels.peer,
                    method: labels.method,
                    code: code_label(code),
                })
                .inc();
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerOnlyLabels {
    peer: String,
}

/// Peer nodes' clocks as seen on their calls to this node.
#[derive(Clone, Default)]
pub struct PeerClocks {
    skew: Family<PeerOnlyLabels, Gauge>,
    refused: Family<PeerOnlyLabels, Counter>,
}

impl PeerClocks {
    /// Records a peer's clock `skew_ms` ahead of this node's (negative: behind), and
    /// whether its call was refused for it.
    pub fn observe(&self, peer: &str, skew_ms: i64, refused: bool) {
        let labels = PeerOnlyLabels {
            peer: peer.to_owned(),
        };
        self.skew.get_or_create(&labels).set(skew_ms);
        if refused {
            self.refused.get_or_create(&labels).inc();
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProvinceLabels {
    province: String,
}

/// The federation directory as this node follows it (crate::directory).
#[derive(Clone, Default)]
pub struct DirectoryCounters {
    refused: Family<ReasonLabels, Counter>,
    versions: Family<ProvinceLabels, Gauge>,
    fetch_errors: Counter,
}

/// The reasons a directory document is refused (`directory::Refusal::label`).
const DIRECTORY_REFUSALS: [&str; 7] = [
    "unsigned",
    "certificate",
    "signer",
    "signature",
    "invalid",
    "older",
    "conflict",
];

impl DirectoryCounters {
    /// Counts a refused document.
    pub fn refused(&self, reason: &'static str) {
        self.refused.get_or_create(&ReasonLabels { reason }).inc();
    }

    /// Records the version in force of a province's document.
    pub fn version(&self, province: &str, version: u64) {
        self.versions
            .get_or_create(&ProvinceLabels {
                province: province.to_owned(),
            })
            .set(i64::try_from(version).unwrap_or(i64::MAX));
    }

    /// Counts a fetch that reached no answer.
    pub fn fetch_failed(&self) {
        self.fetch_errors.inc();
    }

    fn register(&self, registry: &mut Registry) {
        for reason in DIRECTORY_REFUSALS {
            let _ = self.refused.get_or_create(&ReasonLabels { reason });
        }
        registry.register(
            "yidi_directory_refused",
            "Federation directory documents refused (older, unsigned, forged signature or certificate, signed by another province's coordinator, invalid), by reason; the document in force was kept",
            self.refused.clone(),
        );
        registry.register(
            "yidi_directory_version",
            "Version of each province's directory document in force at this node",
            self.versions.clone(),
        );
        registry.register(
            "yidi_directory_fetch_errors",
            "Directory refreshes that got no answer from a source (the cached directory stays in force)",
            self.fetch_errors.clone(),
        );
    }
}

/// Admission at the node's door (`crate::admission`), per operation (settle,
/// pre_settle). Cheap to clone (the families are shared).
#[derive(Clone)]
pub struct AdmissionMetrics {
    admitted: Family<OpLabels, Counter>,
    shed: Family<OpLabels, Counter>,
    queue_wait: HistogramFamily<OpLabels>,
    in_flight: Family<OpLabels, Gauge>,
    limit: Family<OpLabels, Gauge>,
}

impl Default for AdmissionMetrics {
    fn default() -> Self {
        Self {
            admitted: Family::default(),
            shed: Family::default(),
            queue_wait: Family::new_with_constructor(latency_histogram),
            in_flight: Family::default(),
            limit: Family::default(),
        }
    }
}

impl AdmissionMetrics {
    fn labels(op: Op) -> OpLabels {
        OpLabels { op: op.as_str() }
    }

    /// A call let in after waiting `wait` at the door; `in_flight` now inside.
    pub fn admitted(&self, op: Op, wait: Duration, in_flight: usize) {
        self.admitted.get_or_create(&Self::labels(op)).inc();
        self.queue_wait
            .get_or_create(&Self::labels(op))
            .observe(wait.as_secs_f64());
        self.in_flight(op, in_flight);
    }

    /// A call refused at the door.
    pub fn shed(&self, op: Op) {
        self.shed.get_or_create(&Self::labels(op)).inc();
    }

    /// Calls inside now.
    pub fn in_flight(&self, op: Op, n: usize) {
        self.in_flight
            .get_or_create(&Self::labels(op))
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// The adaptive limit now.
    pub fn limit(&self, op: Op, n: usize) {
        self.limit
            .get_or_create(&Self::labels(op))
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    fn register(&self, registry: &mut Registry) {
        for op in [Op::Settle, Op::PreSettle] {
            let l = Self::labels(op);
            let _ = self.admitted.get_or_create(&l);
            let _ = self.shed.get_or_create(&l);
            let _ = self.queue_wait.get_or_create(&l);
            let _ = self.in_flight.get_or_create(&l);
        }
        registry.register(
            "yidi_admission_admitted",
            "Settle and PreSettle calls let in at the node's door (admission_* settings), by op",
            self.admitted.clone(),
        );
        registry.register(
            "yidi_admission_shed",
            "Settle and PreSettle calls refused at the door with RESOURCE_EXHAUSTED (node at capacity; nothing was done), by op",
            self.shed.clone(),
        );
        registry.register(
            "yidi_admission_queue_wait_seconds",
            "Time a call let in waited at the door for a slot (0 for most)",
            self.queue_wait.clone(),
        );
        registry.register(
            "yidi_admission_in_flight",
            "Calls inside (let in and not yet answered), by op",
            self.in_flight.clone(),
        );
        registry.register(
            "yidi_admission_limit",
            "The adaptive limit of calls inside at once, by op (between admission_min_in_flight and admission_max_in_flight; absent when admission is off)",
            self.limit.clone(),
        );
    }
}

/// A node's metrics.
pub struct NodeMetrics {
    registry: Registry,
    directory: DirectoryCounters,
    peer_clocks: PeerClocks,
    settlements: Family<SettleLabels, Counter>,
    latency: HistogramFamily<OpLabels>,
    peer_calls: PeerCalls,
    outbox_depth: Gauge,
    outbox_oldest_age: Gauge,
    outbox_parked: Gauge,
    outbox_by_target: Family<TargetLabels, Gauge>,
    scrape_errors: Counter,
    store: StoreCounters,
    requests_purged: Counter,
    admission: AdmissionMetrics,
}

/// The store writer's totals as counters, brought up to date at each scrape.
#[derive(Default)]
struct StoreCounters {
    transactions: Counter,
    requests: Counter,
    run_seconds: Counter<f64, AtomicU64>,
    commit_seconds: Counter<f64, AtomicU64>,
    queue_depth: Gauge,
    rejected: Counter,
    longest: Gauge<f64, AtomicU64>,
    longest_commit: Gauge<f64, AtomicU64>,
    jobs: Family<JobLabels, Counter>,
    job_seconds: Family<JobLabels, Counter<f64, AtomicU64>>,
    longest_job: Family<JobLabels, Gauge<f64, AtomicU64>>,
    slow_jobs: Family<JobLabels, Counter>,
    job_rows: Family<JobLabels, Gauge>,
    /// The totals at the last scrape (counters only go up by what happened since).
    seen: std::sync::Mutex<WriterTotals>,
}

impl StoreCounters {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "yidi_store_transactions",
            "Transactions the store's single writer began (group commit: one fsync each; a failed commit, or one SQLite rolled back, counts too)",
            self.transactions.clone(),
        );
        registry.register(
            "yidi_store_requests",
            "Write requests run in them; requests per transaction shows how well concurrent requests share a commit",
            self.requests.clone(),
        );
        registry.register(
            "yidi_store_run_seconds",
            "Time the writer spent running the requests",
            self.run_seconds.clone(),
        );
        registry.register(
            "yidi_store_commit_seconds",
            "Time the writer spent committing (writing the log and waiting for the disk's fsync)",
            self.commit_seconds.clone(),
        );
        registry.register(
            "yidi_store_write_queue_depth",
            "Write requests waiting for the store's writer at the scrape; near write_queue_capacity the node is about to refuse writes",
            self.queue_depth.clone(),
        );
        registry.register(
            "yidi_store_writes_rejected",
            "Write requests refused with RESOURCE_EXHAUSTED because the writer's queue stayed full for write_queue_wait_ms (nothing written)",
            self.rejected.clone(),
        );
        registry.register(
            "yidi_store_longest_transaction_seconds",
            "The longest transaction of the store's writer since the node started, from its first request to its commit: how long writes waited behind one (a clearing step or a purge included)",
            self.longest.clone(),
        );
        registry.register(
            "yidi_store_longest_commit_seconds",
            "The longest COMMIT of the store's writer since the node started (the log written and synced; an automatic checkpoint included when one ran in it): a slow disk, not a slow job",
            self.longest_commit.clone(),
        );
        registry.register(
            "yidi_store_jobs",
            "Writer jobs run, by kind (settle, claim_commit, outbox, freeze_step, clear_step, clearing, purge, audit, admin, other)",
            self.jobs.clone(),
        );
        registry.register(
            "yidi_store_job_seconds",
            "Time the writer spent running jobs of each kind (their commits not included)",
            self.job_seconds.clone(),
        );
        registry.register(
            "yidi_store_longest_job_seconds",
            "The longest run of one writer job of each kind since the node started: what that kind made every write behind it wait",
            self.longest_job.clone(),
        );
        registry.register(
            "yidi_store_slow_jobs",
            "Writer jobs of each kind that ran longer than 50 ms (alarm when it grows)",
            self.slow_jobs.clone(),
        );
        registry.register(
            "yidi_store_largest_job_rows",
            "The most rows one writer job of each kind inserted, updated or deleted since the node started",
            self.job_rows.clone(),
        );
    }

    fn update(&self, now: WriterTotals) {
        let Ok(mut seen) = self.seen.lock() else {
            return;
        };
        self.transactions
            .inc_by(now.transactions.saturating_sub(seen.transactions));
        self.requests.inc_by(now.jobs.saturating_sub(seen.jobs));
        self.run_seconds
            .inc_by(now.run.saturating_sub(seen.run).as_secs_f64());
        self.commit_seconds
            .inc_by(now.commit.saturating_sub(seen.commit).as_secs_f64());
        self.queue_depth
            .set(i64::try_from(now.queued).unwrap_or(i64::MAX));
        self.rejected
            .inc_by(now.rejected.saturating_sub(seen.rejected));
        self.longest.set(now.longest.as_secs_f64());
        self.longest_commit.set(now.longest_commit.as_secs_f64());
        for kind in JobKind::ALL {
            let (k, was) = (now.kind(kind), seen.kind(kind));
            if k.jobs == 0 {
                continue;
            }
            let l = JobLabels {
                kind: kind.as_str(),
            };
            self.jobs
                .get_or_create(&l)
                .inc_by(k.jobs.saturating_sub(was.jobs));
            self.job_seconds
                .get_or_create(&l)
                .inc_by(k.run.saturating_sub(was.run).as_secs_f64());
            self.longest_job
                .get_or_create(&l)
                .set(k.longest.as_secs_f64());
            self.slow_jobs
                .get_or_create(&l)
                .inc_by(k.slow.saturating_sub(was.slow));
            self.job_rows
                .get_or_create(&l)
                .set(i64::try_from(k.most_rows).unwrap_or(i64::MAX));
        }
        *seen = now;
    }
}

impl NodeMetrics {
    /// A fresh registry for the node of `region`.
    #[must_use]
    pub fn new(region: &str) -> Self {
        let mut registry = Registry::with_labels(region_labels(region));
        let settlements = Family::<SettleLabels, Counter>::default();
        registry.register(
            "yidi_settlements",
            "HospitalService Settle and PreSettle answers by visit kind, outcome (settled, provisional, refused, presettled, error) and gRPC code",
            settlements.clone(),
        );
        let latency: HistogramFamily<OpLabels> = Family::new_with_constructor(latency_histogram);
        registry.register(
            "yidi_settle_duration_seconds",
            "Server-side latency of HospitalService Settle and PreSettle, from request to answer",
            latency.clone(),
        );
        let peer_calls = PeerCalls::default();
        registry.register(
            "yidi_peer_calls",
            "Calls this node made to peer nodes, by peer region and method",
            peer_calls.calls.clone(),
        );
        registry.register(
            "yidi_peer_call_errors",
            "Calls to peer nodes that failed, by peer region, method and gRPC code (unavailable and deadline_exceeded: the peer was not reached in time)",
            peer_calls.errors.clone(),
        );
        let peer_clocks = PeerClocks::default();
        registry.register(
            "yidi_peer_clock_skew_milliseconds",
            "How far the clock of a peer node was ahead of this node's (negative: behind) on its latest call here",
            peer_clocks.skew.clone(),
        );
        registry.register(
            "yidi_peer_clock_refusals",
            "Calls of a peer node refused because its clock was further from this node's than max_clock_skew_seconds",
            peer_clocks.refused.clone(),
        );
        let outbox_depth = Gauge::default();
        registry.register(
            "yidi_outbox_depth",
            "Pushes to home nodes waiting in the durable outbox (provisional claims, reversals, adjustments)",
            outbox_depth.clone(),
        );
        let outbox_oldest_age = Gauge::default();
        registry.register(
            "yidi_outbox_oldest_age_seconds",
            "Age of the oldest outbox item; 0 when the outbox is empty",
            outbox_oldest_age.clone(),
        );
        let outbox_parked = Gauge::default();
        registry.register(
            "yidi_outbox_parked",
            "Outbox items parked because their home node refused them as about a record of a period it archived (restore that period at the home node; docs/admin.md)",
            outbox_parked.clone(),
        );
        let outbox_by_target = Family::<TargetLabels, Gauge>::default();
        registry.register(
            "yidi_outbox_target_depth",
            "Outbox items per home region they wait for",
            outbox_by_target.clone(),
        );
        let scrape_errors = Counter::default();
        registry.register(
            "yidi_metrics_scrape_errors",
            "Scrapes that could not read the store (the store-derived gauges then keep their previous values)",
            scrape_errors.clone(),
        );
        let store = StoreCounters::default();
        store.register(&mut registry);
        let requests_purged = Counter::default();
        registry.register(
            "yidi_store_request_records_purged",
            "Request records (stored answers for repeated requests) removed after the idempotency window, request_retention_days",
            requests_purged.clone(),
        );
        let directory = DirectoryCounters::default();
        directory.register(&mut registry);
        let admission = AdmissionMetrics::default();
        admission.register(&mut registry);
        register_process(&mut registry);
        // Every documented series from the start, at 0: the successful answers of each
        // visit kind (a failure's code is open-ended and appears when it happens).
        for kind in VisitKind::ALL {
            for (op, outcome) in [
                (Op::Settle, "settled"),
                (Op::Settle, "provisional"),
                (Op::Settle, "refused"),
                (Op::PreSettle, "presettled"),
            ] {
                let _ = settlements.get_or_create(&SettleLabels {
                    op: op.as_str(),
                    kind: kind.as_str(),
                    outcome: outcome.to_owned(),
                    code: "ok",
                });
            }
        }
        for op in [Op::Settle, Op::PreSettle] {
            let _ = latency.get_or_create(&OpLabels { op: op.as_str() });
        }
        Self {
            registry,
            directory,
            peer_clocks,
            settlements,
            latency,
            peer_calls,
            outbox_depth,
            outbox_oldest_age,
            outbox_parked,
            outbox_by_target,
            scrape_errors,
            store,
            requests_purged,
            admission,
        }
    }

    /// The admission counters, for the node's gates.
    #[must_use]
    pub fn admission(&self) -> AdmissionMetrics {
        self.admission.clone()
    }

    /// Counts request records removed after the idempotency window.
    pub fn requests_purged(&self, n: u64) {
        self.requests_purged.inc_by(n);
    }

    /// Peer nodes' clocks, for the PeerService's clock check.
    #[must_use]
    pub fn peer_clocks(&self) -> &PeerClocks {
        &self.peer_clocks
    }

    /// The federation directory's counters.
    #[must_use]
    pub fn directory(&self) -> DirectoryCounters {
        self.directory.clone()
    }

    /// The peer-call counters, for the peer directory's channels.
    #[must_use]
    pub fn peer_calls(&self) -> PeerCalls {
        self.peer_calls.clone()
    }

    /// Records one Settle or PreSettle answer and its latency.
    pub fn settlement(
        &self,
        op: Op,
        answer: &std::result::Result<tonic::Response<proto::Settlement>, Status>,
        elapsed: Duration,
    ) {
        let labels = match answer {
            Ok(s) => {
                let s = s.get_ref();
                SettleLabels {
                    op: op.as_str(),
                    kind: VisitKind::from_proto(s.visit_kind, "visit_kind")
                        .map_or("unknown", VisitKind::as_str),
                    outcome: s.state.clone(),
                    code: "ok",
                }
            }
            // The visit kind of a failed request is not known without a store read,
            // which a metric must not add to the hot path.
            Err(status) => SettleLabels {
                op: op.as_str(),
                kind: "unknown",
                outcome: "error".to_owned(),
                code: code_label(status.code()),
            },
        };
        self.settlements.get_or_create(&labels).inc();
        self.latency
            .get_or_create(&OpLabels { op: op.as_str() })
            .observe(elapsed.as_secs_f64());
    }

    /// Refreshes the store-derived gauges and encodes everything.
    pub async fn render(&self, store: &Store) -> String {
        self.store.update(store.writer_totals());
        match store.read(outbox::stats).await {
            Ok(stats) => {
                self.outbox_depth
                    .set(i64::try_from(stats.depth).unwrap_or(i64::MAX));
                self.outbox_oldest_age
                    .set(stats.oldest.as_deref().map_or(0, age_seconds));
                self.outbox_parked
                    .set(i64::try_from(stats.parked).unwrap_or(i64::MAX));
                self.outbox_by_target.clear();
                for t in stats.targets {
                    self.outbox_by_target
                        .get_or_create(&TargetLabels { target: t.region })
                        .set(i64::try_from(t.depth).unwrap_or(i64::MAX));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "metrics: outbox stats unreadable");
                self.scrape_errors.inc();
            }
        }
        self.encode()
    }

    /// Encodes the registry as it is (no store reads): for tests and for callers that
    /// hold no node state.
    #[must_use]
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

// ------------------------------------------------------------------ process

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
    /// The git commit, when the build was given one (`YIDI_GIT_COMMIT` at build time).
    commit: &'static str,
}

/// `yidi_build_info` and the standard `process_*` families, in a registry.
pub(crate) fn register_process(registry: &mut Registry) {
    let build = Family::<BuildLabels, Gauge>::default();
    build
        .get_or_create(&BuildLabels {
            version: env!("CARGO_PKG_VERSION"),
            commit: option_env!("YIDI_GIT_COMMIT").unwrap_or("unknown"),
        })
        .set(1);
    registry.register(
        "yidi_build_info",
        "The running build: version and git commit (value 1)",
        build,
    );
    registry.register_collector(Box::new(ProcessCollector));
}

/// The process's CPU, memory, file descriptors, threads and start time, read from
/// /proc at each scrape (prometheus-client has no process collector). Off Linux it
/// reports nothing.
#[derive(Debug)]
struct ProcessCollector;

/// The kernel reports times in /proc in USER_HZ ticks, which is 100 on every Linux ABI.
const USER_HZ: f64 = 100.0;

/// What /proc says about this process.
#[derive(Debug, Default, PartialEq)]
struct ProcessStats {
    cpu_seconds: f64,
    resident_bytes: i64,
    virtual_bytes: i64,
    threads: i64,
    start_time_seconds: f64,
    open_fds: i64,
    max_fds: Option<i64>,
}

impl ProcessStats {
    /// Reads /proc/self; None where there is no /proc.
    fn read() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let boot = std::fs::read_to_string("/proc/stat").ok()?;
        let mut s = Self::parse(&stat, &status, &boot)?;
        s.open_fds = std::fs::read_dir("/proc/self/fd")
            .map_or(0, |d| i64::try_from(d.count()).unwrap_or(i64::MAX));
        s.max_fds = std::fs::read_to_string("/proc/self/limits")
            .ok()
            .and_then(|l| Self::parse_max_fds(&l));
        Some(s)
    }

    /// Parses /proc/self/stat (utime, stime, num_threads, starttime), /proc/self/status
    /// (VmRSS, VmSize) and /proc/stat (btime).
    fn parse(stat: &str, status: &str, proc_stat: &str) -> Option<Self> {
        // The command name is in parentheses and may hold spaces: fields follow the
        // last ')'; they start with field 3 (state).
        let rest = &stat[stat.rfind(')')? + 1..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        let field = |n: usize| f.get(n - 3).and_then(|v| v.parse::<u64>().ok());
        let ticks = |t: u64| {
            #[allow(clippy::cast_precision_loss, clippy::float_arithmetic)]
            let s = t as f64 / USER_HZ;
            s
        };
        let kb = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<i64>().ok())
                .map_or(0, |k| k.saturating_mul(1024))
        };
        let btime = proc_stat
            .lines()
            .find_map(|l| l.strip_prefix("btime "))
            .and_then(|v| v.trim().parse::<u64>().ok())?;
        #[allow(clippy::cast_precision_loss, clippy::float_arithmetic)]
        let start_time_seconds = btime as f64 + ticks(field(22)?);
        #[allow(clippy::float_arithmetic)]
        let cpu_seconds = ticks(field(14)?) + ticks(field(15)?);
        Some(Self {
            cpu_seconds,
            resident_bytes: kb("VmRSS:"),
            virtual_bytes: kb("VmSize:"),
            threads: i64::try_from(field(20)?).unwrap_or(i64::MAX),
            start_time_seconds,
            open_fds: 0,
            max_fds: None,
        })
    }

    /// The soft limit of "Max open files" in /proc/self/limits.
    fn parse_max_fds(limits: &str) -> Option<i64> {
        let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
        line["Max open files".len()..]
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }
}

impl prometheus_client::collector::Collector for ProcessCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> std::result::Result<(), std::fmt::Error> {
        use prometheus_client::{
            encoding::EncodeMetric,
            metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
        };
        let Some(s) = ProcessStats::read() else {
            return Ok(());
        };
        let cpu = ConstCounter::new(s.cpu_seconds);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            None,
            MetricType::Counter,
        )?)?;
        let gauges = [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                s.resident_bytes,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                s.virtual_bytes,
            ),
            (
                "process_open_fds",
                "Number of open file descriptors",
                s.open_fds,
            ),
            (
                "process_threads",
                "Number of OS threads in the process",
                s.threads,
            ),
        ];
        for (name, help, value) in gauges {
            ConstGauge::new(value).encode(encoder.encode_descriptor(
                name,
                help,
                None,
                MetricType::Gauge,
            )?)?;
        }
        if let Some(max) = s.max_fds {
            ConstGauge::new(max).encode(encoder.encode_descriptor(
                "process_max_fds",
                "Maximum number of open file descriptors",
                None,
                MetricType::Gauge,
            )?)?;
        }
        ConstGauge::new(s.start_time_seconds).encode(encoder.encode_descriptor(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds",
            None,
            MetricType::Gauge,
        )?)?;
        Ok(())
    }
}

/// Seconds since an RFC 3339 timestamp (0 if unparsable or in the future).
pub(crate) fn age_seconds(ts: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(ts)
        .map(|t| (chrono::Utc::now() - t.with_timezone(&chrono::Utc)).num_seconds())
        .unwrap_or(0)
        .max(0)
}

// ------------------------------------------------------------------ peer channel

/// A peer's channel that counts every call and its outcome. Errors are read without
/// touching the body: tonic answers a failed unary call with a trailers-only response
/// (grpc-status in the headers), and an unreachable peer fails the call itself.
#[derive(Clone)]
pub struct ObservedChannel {
    inner: Channel,
    peer: RegionCode,
    calls: Option<PeerCalls>,
    /// Stamped with [`crate::clock::clock_ms`] whenever the peer answers.
    answered: Arc<AtomicU64>,
    /// Sent as [`crate::clock::CLOCK_HEADER`] on every call, when set.
    clock: Option<crate::clock::Clock>,
}

impl ObservedChannel {
    /// Wraps `inner`; with `calls` None it counts nothing.
    #[must_use]
    pub fn new(
        inner: Channel,
        peer: RegionCode,
        calls: Option<PeerCalls>,
        answered: Arc<AtomicU64>,
    ) -> Self {
        Self {
            inner,
            peer,
            calls,
            answered,
            clock: None,
        }
    }

    /// Sends `clock`'s reading on every call (the peer refuses a caller whose clock is
    /// too far from its own).
    #[must_use]
    pub fn with_clock(mut self, clock: Option<crate::clock::Clock>) -> Self {
        self.clock = clock;
        self
    }
}

type ChannelError = <Channel as Service<http::Request<tonic::body::Body>>>::Error;

/// The gRPC code a transport failure amounts to (as tonic would map it, except that a
/// passed deadline is named as such rather than "cancelled").
fn transport_code(e: &(dyn std::error::Error + 'static)) -> Code {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.is::<tonic::TimeoutExpired>() {
            return Code::DeadlineExceeded;
        }
        if let Some(s) = err.downcast_ref::<Status>() {
            return s.code();
        }
        cur = err.source();
    }
    Code::Unavailable
}

impl Service<http::Request<tonic::body::Body>> for ObservedChannel {
    type Response = http::Response<tonic::body::Body>;
    type Error = ChannelError;
    type Future =
        Pin<Box<dyn Future<Output = std::result::Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<std::result::Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<tonic::body::Body>) -> Self::Future {
        if let Some(clock) = &self.clock
            && let Ok(v) = http::HeaderValue::from_str(&clock.now_ms().to_string())
        {
            req.headers_mut().insert(crate::clock::CLOCK_HEADER, v);
        }
        let answered = Arc::clone(&self.answered);
        let Some(calls) = self.calls.clone() else {
            let fut = self.inner.call(req);
            return Box::pin(async move {
                let out = fut.await;
                if out.is_ok() {
                    answered.store(crate::clock::clock_ms(), AtomicOrdering::Relaxed);
                }
                out
            });
        };
        // "/yidi.v1.PeerService/CommitClaim" → "CommitClaim"
        let method = req
            .uri()
            .path()
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_owned();
        let peer = self.peer;
        let fut = self.inner.call(req);
        Box::pin(async move {
            let out = fut.await;
            if out.is_ok() {
                answered.store(crate::clock::clock_ms(), AtomicOrdering::Relaxed);
            }
            let code = match &out {
                Ok(resp) => resp
                    .headers()
                    .get("grpc-status")
                    .map_or(Code::Ok, |v| Code::from_bytes(v.as_bytes())),
                Err(e) => transport_code(e),
            };
            calls.observe(peer.as_str(), &method, code);
            if let Ok(resp) = &out
                && resp.headers().contains_key(crate::clock::CLOCK_REFUSED)
            {
                // The alarm on this side too: the peer's metrics count the refusal, and
                // this node's clock may be the one that is off.
                tracing::error!(%peer, %method, "a peer node refused this node's call: the two clocks are further apart than max_clock_skew_seconds");
            }
            out
        })
    }
}

// ------------------------------------------------------------------ HTTP

/// Produces the exposition text on each scrape.
pub type Render = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = String> + Send>> + Send + Sync>;

async fn handle(
    req: Request<Incoming>,
    render: Render,
) -> std::result::Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let reply = |status: StatusCode, ctype: &'static str, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static(ctype),
        );
        r
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Ok(reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "GET /metrics\n".into(),
        ));
    }
    Ok(match req.uri().path() {
        "/metrics" => reply(StatusCode::OK, CONTENT_TYPE, render().await),
        "/" => reply(
            StatusCode::OK,
            "text/plain; charset=utf-8",
            "yidi metrics: GET /metrics\n".into(),
        ),
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found; metrics are at /metrics\n".into(),
        ),
    })
}

/// Serves `GET /metrics` on `listener` until `shutdown`; open scrape connections are
/// dropped at shutdown rather than waited for (a scraper retries on its next interval).
pub async fn serve(
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
    render: Render,
) {
    // The address itself as the field's value (omitted if unknown), not `Some(…)`.
    let addr = listener.local_addr().ok();
    tracing::info!(
        addr = addr.map(tracing::field::display),
        "metrics serving on /metrics"
    );
    let mut conns = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    let render = Arc::clone(&render);
                    conns.spawn(async move {
                        let svc = service_fn(move |req| handle(req, Arc::clone(&render)));
                        if let Err(e) = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), svc)
                            .await
                        {
                            tracing::debug!(error = %e, "metrics connection ended with an error");
                        }
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "metrics listener accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    conns.abort_all();
    while conns.join_next().await.is_some() {}
}

/// Serves a node's metrics, the store-derived ones read from `store` on each scrape.
pub async fn serve_node(
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
    metrics: Arc<NodeMetrics>,
    store: Store,
) {
    let render: Render = Arc::new(move || {
        let (m, store) = (Arc::clone(&metrics), store.clone());
        Box::pin(async move { m.render(&store).await })
    });
    serve(listener, shutdown, render).await;
}

/// Binds a metrics address, naming it in the error.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Unavailable(format!("cannot listen for metrics on {addr}: {e}")))
}

/// A minimal scrape over plain HTTP/1.0 (for the demo's self-check and tests): the
/// body of `GET /metrics` at `addr`.
pub async fn scrape(addr: SocketAddr) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fail = |e: std::io::Error| Error::Unavailable(format!("metrics at {addr}: {e}"));
    let mut s = tokio::net::TcpStream::connect(addr).await.map_err(fail)?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: yidi\r\n\r\n")
        .await
        .map_err(fail)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.map_err(fail)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| Error::Unavailable(format!("metrics at {addr}: malformed answer")))?;
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        return Err(Error::Unavailable(format!(
            "metrics at {addr}: {}",
            head.lines().next().unwrap_or_default()
        )));
    }
    Ok(body.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settlement(kind: proto::VisitKind, state: &str) -> tonic::Response<proto::Settlement> {
        tonic::Response::new(proto::Settlement {
            visit_kind: kind as i32,
            state: state.into(),
            ..Default::default()
        })
    }

    #[test]
    fn settlements_are_counted_by_kind_outcome_and_code() {
        let m = NodeMetrics::new("330100");
        let ms = Duration::from_millis(3);
        m.settlement(
            Op::Settle,
            &Ok(settlement(proto::VisitKind::Inpatient, "settled")),
            ms,
        );
        m.settlement(
            Op::Settle,
            &Ok(settlement(proto::VisitKind::Inpatient, "settled")),
            ms,
        );
        m.settlement(
            Op::PreSettle,
            &Ok(settlement(proto::VisitKind::Pharmacy, "presettled")),
            ms,
        );
        m.settlement(
            Op::Settle,
            &Err(Status::failed_precondition("no direct settlement")),
            ms,
        );
        let text = m.encode();
        assert!(
            text.contains(
                r#"yidi_settlements_total{region="330100",op="settle",kind="inpatient",outcome="settled",code="ok"} 2"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"yidi_settlements_total{region="330100",op="pre_settle",kind="pharmacy",outcome="presettled",code="ok"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"yidi_settlements_total{region="330100",op="settle",kind="unknown",outcome="error",code="failed_precondition"} 1"#),
            "{text}"
        );
        // 3 ms falls into the 3 ms bucket (upper bounds are inclusive).
        assert!(
            text.contains(
                r#"yidi_settle_duration_seconds_bucket{region="330100",le="0.003",op="settle"} 3"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"yidi_settle_duration_seconds_count{region="330100",op="settle"} 3"#)
        );
        assert!(text.ends_with("# EOF\n"));
    }

    /// The writer's totals are exported as counters that move by what happened between
    /// scrapes: transactions, requests (their ratio is the group size), run and commit
    /// time.
    #[test]
    fn store_writer_totals_become_counters() {
        let m = NodeMetrics::new("330200");
        let ms = Duration::from_millis;
        m.store.update(WriterTotals {
            transactions: 3,
            jobs: 10,
            run: ms(2),
            commit: ms(5),
            queued: 7,
            rejected: 2,
            longest: ms(4),
            ..WriterTotals::default()
        });
        m.store.update(WriterTotals {
            transactions: 5,
            jobs: 16,
            run: ms(3),
            commit: ms(9),
            queued: 4,
            rejected: 3,
            longest: ms(6),
            longest_commit: ms(5),
            kinds: {
                let mut k = [crate::store::KindReading::default(); JobKind::ALL.len()];
                k[1] = crate::store::KindReading {
                    jobs: 4,
                    run: ms(70),
                    longest: ms(60),
                    slow: 1,
                    most_rows: 32,
                };
                k
            },
        });
        let text = m.encode();
        for line in [
            r#"yidi_store_transactions_total{region="330200"} 5"#,
            r#"yidi_store_requests_total{region="330200"} 16"#,
            r#"yidi_store_run_seconds_total{region="330200"} 0.003"#,
            r#"yidi_store_commit_seconds_total{region="330200"} 0.009"#,
            r#"yidi_store_write_queue_depth{region="330200"} 4"#,
            r#"yidi_store_writes_rejected_total{region="330200"} 3"#,
            r#"yidi_store_longest_transaction_seconds{region="330200"} 0.006"#,
            r#"yidi_store_longest_commit_seconds{region="330200"} 0.005"#,
            r#"yidi_store_jobs_total{region="330200",kind="claim_commit"} 4"#,
            r#"yidi_store_job_seconds_total{region="330200",kind="claim_commit"} 0.07"#,
            r#"yidi_store_longest_job_seconds{region="330200",kind="claim_commit"} 0.06"#,
            r#"yidi_store_slow_jobs_total{region="330200",kind="claim_commit"} 1"#,
            r#"yidi_store_largest_job_rows{region="330200",kind="claim_commit"} 32"#,
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }

    #[test]
    fn peer_errors_by_peer_method_and_code() {
        let m = NodeMetrics::new("330200");
        let calls = m.peer_calls();
        calls.observe("330100", "CommitClaim", Code::Ok);
        calls.observe("330100", "CommitClaim", Code::Unavailable);
        calls.observe("330300", "CheckEligibility", Code::DeadlineExceeded);
        let text = m.encode();
        assert!(text.contains(
            r#"yidi_peer_calls_total{region="330200",peer="330100",method="CommitClaim"} 2"#
        ));
        assert!(text.contains(r#"yidi_peer_call_errors_total{region="330200",peer="330100",method="CommitClaim",code="unavailable"} 1"#));
        assert!(text.contains(r#"yidi_peer_call_errors_total{region="330200",peer="330300",method="CheckEligibility",code="deadline_exceeded"} 1"#));
    }

    #[test]
    fn peer_methods_are_those_of_the_proto() {
        let proto = include_str!("../../proto/yidi/v1/peer.proto");
        let rpcs: Vec<&str> = proto
            .lines()
            .filter_map(|l| l.trim().strip_prefix("rpc "))
            .filter_map(|l| l.split('(').next())
            .collect();
        assert_eq!(rpcs, PEER_METHODS);
    }

    #[test]
    fn documented_series_exist_at_zero_before_any_traffic() {
        let m = NodeMetrics::new("330100");
        m.peer_calls().precreate("330200");
        let text = m.encode();
        for line in [
            r#"yidi_settlements_total{region="330100",op="settle",kind="inpatient",outcome="settled",code="ok"} 0"#,
            r#"yidi_settlements_total{region="330100",op="settle",kind="outpatient",outcome="provisional",code="ok"} 0"#,
            r#"yidi_settlements_total{region="330100",op="pre_settle",kind="pharmacy",outcome="presettled",code="ok"} 0"#,
            r#"yidi_settle_duration_seconds_count{region="330100",op="settle"} 0"#,
            r#"yidi_peer_calls_total{region="330100",peer="330200",method="CommitClaim"} 0"#,
            r#"yidi_peer_call_errors_total{region="330100",peer="330200",method="CheckEligibility",code="unavailable"} 0"#,
            r#"yidi_peer_call_errors_total{region="330100",peer="330200",method="CommitClaim",code="deadline_exceeded"} 0"#,
            r#"yidi_metrics_scrape_errors_total{region="330100"} 0"#,
            r#"yidi_store_transactions_total{region="330100"} 0"#,
            r#"yidi_directory_refused_total{region="330100",reason="older"} 0"#,
            r#"yidi_directory_refused_total{region="330100",reason="signature"} 0"#,
            r#"yidi_directory_fetch_errors_total{region="330100"} 0"#,
            &format!(
                r#"yidi_build_info{{region="330100",version="{}","#,
                env!("CARGO_PKG_VERSION")
            ),
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }

    #[test]
    fn process_stats_from_proc() {
        let stat = "4242 (yidi node) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 \
                    7 0 123400 1000000 300 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1";
        let status = "Name:\tyidi\nVmSize:\t  204800 kB\nVmRSS:\t   10240 kB\nThreads:\t7\n";
        let proc_stat = "cpu  1 2 3\nbtime 1700000000\nprocesses 1\n";
        let s = ProcessStats::parse(stat, status, proc_stat).expect("parses");
        assert_eq!(s.cpu_seconds, 3.0);
        assert_eq!(s.threads, 7);
        assert_eq!(s.resident_bytes, 10_240 * 1024);
        assert_eq!(s.virtual_bytes, 204_800 * 1024);
        assert_eq!(s.start_time_seconds, 1_700_001_234.0);
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 524288               files\n";
        assert_eq!(ProcessStats::parse_max_fds(limits), Some(1024));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn process_families_and_build_info_are_exposed() {
        let text = NodeMetrics::new("330100").encode();
        for family in [
            "# TYPE process_cpu_seconds counter",
            "process_cpu_seconds_total{region=\"330100\"} ",
            "process_resident_memory_bytes{region=\"330100\"} ",
            "process_virtual_memory_bytes{region=\"330100\"} ",
            "process_open_fds{region=\"330100\"} ",
            "process_max_fds{region=\"330100\"} ",
            "process_start_time_seconds{region=\"330100\"} ",
            "process_threads{region=\"330100\"} ",
            "# TYPE yidi_build_info gauge",
        ] {
            assert!(text.contains(family), "{family} missing from\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn transport_failures_are_classified() {
        let timeout: Box<dyn std::error::Error + Send + Sync> = Box::new(tonic::TimeoutExpired(()));
        assert_eq!(transport_code(&*timeout), Code::DeadlineExceeded);
        let io = std::io::Error::other("connection refused");
        assert_eq!(transport_code(&io), Code::Unavailable);
    }

    #[tokio::test]
    async fn http_exposition() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let m = Arc::new(NodeMetrics::new("330300"));
        m.settlement(
            Op::Settle,
            &Ok(settlement(proto::VisitKind::Outpatient, "settled")),
            Duration::from_millis(1),
        );
        let m2 = Arc::clone(&m);
        let render: Render = Arc::new(move || {
            let m = Arc::clone(&m2);
            Box::pin(async move { m.encode() })
        });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(
            listener,
            async {
                let _ = stopped.await;
            },
            render,
        ));
        let body = scrape(addr).await.unwrap();
        assert!(body.contains(r#"yidi_settlements_total{region="330300",op="settle",kind="outpatient",outcome="settled",code="ok"} 1"#), "{body}");
        let _ = stop.send(());
        server.await.unwrap();
    }
}
