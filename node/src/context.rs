//! The node context: the state every part of a running node shares (its store, peers,
//! caches, clock, metrics and test hooks). It sits below the transports (service/) and
//! the domain (settlement/, funds) so that both take it from here and neither imports
//! the other's layer to get it.

use std::sync::{Arc, atomic::AtomicBool};

use tokio::sync::Notify;
use yidi_common::region::RegionCode;

use crate::{
    clock::Clock, eligibility_cache::EligibilityCache, metrics::NodeMetrics, peers::PeerDirectory,
    policy_cache::PolicyCache, store::Store,
};

/// Fault injection for tests of crash recovery; all off in production.
#[derive(Debug, Clone, Default)]
pub struct TestHooks {
    /// After the home node commits a claim, fail before the local commit, as a crash
    /// at that instant would.
    pub crash_after_home_commit: Arc<AtomicBool>,
    /// Milliseconds this node, as a home node, waits before answering CheckEligibility
    /// (0: none), as a slow home node would.
    pub eligibility_delay_ms: Arc<std::sync::atomic::AtomicU64>,
    /// Milliseconds added to this node's wall clock (see [`crate::clock::Clock`]), as a
    /// host whose clock is off would have.
    pub clock_offset_ms: Arc<std::sync::atomic::AtomicI64>,
    /// As a home node, CommitClaim's write fails as it would on a full disk.
    pub home_store_full: Arc<AtomicBool>,
    /// GetSettlement fails with a real store error (a query of a table that does not
    /// exist), so tests see what a caller is told of an internal error.
    pub store_error_on_get_settlement: Arc<AtomicBool>,
    /// As a home node, CommitClaim does nothing and answers UNAVAILABLE, as a call
    /// lost on its way would look to the treatment node (in doubt).
    pub home_commit_unanswered: Arc<AtomicBool>,
    /// As a home node, an abandonment (ReverseClaim `abandon_only`) is recorded and its
    /// answer lost (UNAVAILABLE).
    pub abandon_answer_lost: Arc<AtomicBool>,
    /// The store's writer runs nothing while set: the next write it takes waits, later
    /// ones queue up to `write_queue_capacity` and are then refused, as behind a
    /// writer stuck on a slow disk.
    pub hold_store_writer: Arc<AtomicBool>,
    /// Set while the held writer holds a request it took (see `hold_store_writer`).
    pub store_writer_holding: Arc<AtomicBool>,
}

/// What every service of a node needs.
pub struct NodeState {
    pub region: RegionCode,
    pub name: String,
    pub store: Store,
    pub started_at: String,
    pub peers: Arc<PeerDirectory>,
    pub policies: Arc<PolicyCache>,
    /// Wakes the outbox worker when something was queued.
    pub outbox_wake: Notify,
    pub hooks: TestHooks,
    /// The node's wall clock and how far ahead of it dates and peers' clocks may be.
    pub clock: Clock,
    /// Prometheus counters of this node (served only when `metrics_listen` is set, but
    /// always counted: counting is a few atomic increments).
    pub metrics: Arc<NodeMetrics>,
    /// Home nodes' eligibility answers got by PreSettle, reused by a repeated PreSettle
    /// and by the Settle that follows, and the accumulator versions this node's claims
    /// left (see `crate::eligibility_cache`).
    pub eligibility_cache: EligibilityCache,
    /// Settle calls still running, by intent (see [`InFlight`]).
    pub settling: Arc<InFlight>,
    /// The door new Settle and PreSettle calls pass (see `crate::admission`).
    pub admission: crate::admission::Admission,
}

/// Shared handle.
pub type State = Arc<NodeState>;

/// Page size for list calls: default 100, at most 1000.
#[must_use]
pub fn page_size(requested: u32) -> u32 {
    match requested {
        0 => 100,
        n => n.min(1000),
    }
}

/// The intents someone in this process is working on: a Settle call whose CommitClaim
/// may be on the way, or a resolver asking the home node about it. Only one may act on an
/// intent at a time — a repeat of the request (or recovery) must not abandon an intent
/// at the home node while its CommitClaim is in flight, and two resolvers must not race
/// (one finishing it as committed while the other abandons it). Any other pending
/// intent — from before a restart, or left in doubt by a call that has returned — is
/// resolved at once.
#[derive(Default)]
pub struct InFlight(std::sync::Mutex<std::collections::HashSet<String>>);

impl InFlight {
    /// Claims the intent: `false` when someone else holds it.
    pub(crate) fn claim(&self, settlement_id: &str) -> bool {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(settlement_id.to_owned())
    }

    fn release(&self, settlement_id: &str) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(settlement_id);
    }

    /// Claims the intent for the life of the guard, unless someone else holds it.
    pub(crate) fn try_enter(self: &Arc<Self>, settlement_id: &str) -> Option<InFlightGuard> {
        self.claim(settlement_id).then(|| InFlightGuard {
            set: Arc::clone(self),
            settlement_id: settlement_id.to_owned(),
        })
    }
}

/// Releases its intent in [`InFlight`] when the call ends (however it ends).
pub(crate) struct InFlightGuard {
    set: Arc<InFlight>,
    settlement_id: String,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.set.release(&self.settlement_id);
    }
}
