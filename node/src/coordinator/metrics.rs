//! The coordinator's Prometheus metrics: clearing rounds by state, read from its own
//! store on each scrape, served by the same HTTP exposition as a node's
//! ([`crate::metrics::serve`]).

use std::{
    future::Future,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use tokio::net::TcpListener;

use crate::{
    Error, Result,
    metrics::{Render, age_seconds, region_labels, register_process, serve},
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RoundLabels {
    round: String,
    period: String,
    state: String,
}

/// The coordinator's metrics: clearing rounds by state, read from its store on every
/// scrape through a read-only connection of its own (the coordinator's services are
/// untouched by monitoring).
pub struct CoordinatorMetrics {
    registry: Registry,
    db: PathBuf,
    rounds: Family<StateLabels, Gauge>,
    latest: Family<RoundLabels, Gauge>,
    latest_age: Gauge,
    scrape_errors: Counter,
}

impl CoordinatorMetrics {
    /// Metrics of the coordinator whose store lives in `data_dir`.
    #[must_use]
    pub fn new(region: &str, data_dir: &Path) -> Self {
        let mut registry = Registry::with_labels(region_labels(region));
        let rounds = Family::<StateLabels, Gauge>::default();
        registry.register(
            "yidi_clearing_rounds",
            "Clearing rounds by state",
            rounds.clone(),
        );
        let latest = Family::<RoundLabels, Gauge>::default();
        registry.register(
            "yidi_clearing_latest_round",
            "The most recent clearing round (value 1), its period and state",
            latest.clone(),
        );
        let latest_age = Gauge::default();
        registry.register(
            "yidi_clearing_latest_round_unchanged_seconds",
            "Seconds since the most recent round last changed state; a round that is not SETTLED or ABORTED and does not move is waiting on a participant or the operator",
            latest_age.clone(),
        );
        let scrape_errors = Counter::default();
        registry.register(
            "yidi_metrics_scrape_errors",
            "Scrapes that could not read the coordinator's store",
            scrape_errors.clone(),
        );
        register_process(&mut registry);
        Self {
            registry,
            db: data_dir.join("coordinator.db"),
            rounds,
            latest,
            latest_age,
            scrape_errors,
        }
    }

    fn read_rounds(db: &Path) -> Result<Vec<super::store::RoundRow>> {
        let conn = rusqlite::Connection::open_with_flags(
            db,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(Duration::from_secs(2))?;
        let mut rows = Vec::new();
        for id in super::store::round_ids(&conn)? {
            if let Some(r) = super::store::round(&conn, &id)? {
                rows.push(r);
            }
        }
        Ok(rows)
    }

    /// Reads the rounds and encodes everything.
    pub async fn render(&self) -> String {
        let db = self.db.clone();
        let rows = tokio::task::spawn_blocking(move || Self::read_rounds(&db))
            .await
            .map_err(|e| Error::Internal(format!("metrics task failed: {e}")))
            .and_then(|r| r);
        match rows {
            Ok(rows) => {
                self.rounds.clear();
                // Every state, so that a state with no round still shows as 0.
                for &s in yidi_common::round_state::RoundState::ALL {
                    let n = rows.iter().filter(|r| r.state == s).count();
                    self.rounds
                        .get_or_create(&StateLabels {
                            state: s.to_string(),
                        })
                        .set(i64::try_from(n).unwrap_or(i64::MAX));
                }
                self.latest.clear();
                if let Some(r) = rows.last() {
                    self.latest
                        .get_or_create(&RoundLabels {
                            round: r.round_id.clone(),
                            period: r.period.clone(),
                            state: r.state.to_string(),
                        })
                        .set(1);
                    self.latest_age.set(age_seconds(&r.updated_at));
                } else {
                    self.latest_age.set(0);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "metrics: clearing rounds unreadable");
                self.scrape_errors.inc();
            }
        }
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// Serves the coordinator's metrics.
pub async fn serve_metrics(
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
    metrics: Arc<CoordinatorMetrics>,
) {
    let render: Render = Arc::new(move || {
        let m = Arc::clone(&metrics);
        Box::pin(async move { m.render().await })
    });
    serve(listener, shutdown, render).await;
}
