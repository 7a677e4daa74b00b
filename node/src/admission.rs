//! Admission at the node's door: how many new Settle (and PreSettle) calls run at once,
//! and how long one may wait for its turn. Both transports reach it the same way — the
//! gRPC HospitalService and the NHSA gateway call `settlement::treatment::settle_declared`
//! and `pre_settle_declared`, which pass through a [`Gate`] before anything else.
//!
//! Why: without it every call goes in, and under more load than the node carries the
//! wait moves inside — into the writer's queue and the claims gathered for a home node —
//! where it grows with the number of callers and every call pays it. With it, at most
//! `limit` calls are inside; a few more may wait at the door, but only while the wait
//! that can be expected stays under `queue_wait`; the rest are refused at once
//! (RESOURCE_EXHAUSTED, with when to retry), before anything was read or written for them.
//!
//! The limit adapts to the service time measured of the calls let in (the time from
//! admission to answer), per window of [`WINDOW`]. It starts at the minimum, where few
//! calls are inside and the service time is the node's own cost (the floor, learnt
//! from such windows only). When the service time exceeds both the target and twice
//! the floor — calls queue behind each other inside — the limit shrinks by a fifth;
//! when the limit held calls back and the service time is under the target (or under
//! one and a half times the floor), it grows by a tenth. A slow disk or a slow home
//! node alone (every call slow, none queued) raises the floor, not the refusals.
//!
//! What never passes a gate, and why: a home node's CommitClaim(s) from other nodes
//! (the treatment node has already recorded its intent and the patient waits on the
//! answer: refusing it turns a settlement in progress into one in doubt), cancels and
//! 冲正 (they undo work already done, and an overloaded node is when a hospital needs
//! them most), and a repeat of a Settle whose request is already recorded here (its
//! answer is stored, or its intent is being finished: refusing would leave the hospital
//! not knowing an outcome that exists). The last is checked only on the way to a
//! refusal, so an admitted call pays nothing for it.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use tokio::sync::oneshot;

use crate::metrics::{AdmissionMetrics, Op};

/// How often the limit is reconsidered (at the first completion after it elapsed).
pub const WINDOW: Duration = Duration::from_millis(100);

/// Fewest completions in a window for it to move the limit: one slow call is no trend.
const MIN_WINDOW_CALLS: u64 = 4;

/// The shortest retry hint given: a refused caller that comes back sooner finds the
/// same crowd.
const MIN_RETRY_AFTER: Duration = Duration::from_millis(5);

/// The longest retry hint given.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(2);

/// The gRPC metadata key (and the NHSA gateway's header) carrying the retry hint, in
/// milliseconds.
pub const RETRY_AFTER_MS: &str = "retry-after-ms";

/// Admission settings, the same for Settle and PreSettle (each has its own gate).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdmissionConfig {
    /// Most calls of one kind inside at once; 0: admission off (every call goes in).
    pub max_in_flight: usize,
    /// Fewest calls the limit ever lets in at once (at least 1), and where it starts.
    pub min_in_flight: usize,
    /// The service time (admission to answer) the limit aims for.
    pub target: Duration,
    /// The longest a call may be expected to wait at the door; a call that would wait
    /// longer is refused at once. 0: no call waits.
    pub queue_wait: Duration,
}

/// Default of [`AdmissionConfig::max_in_flight`].
pub const DEFAULT_MAX_IN_FLIGHT: usize = 64;
/// Default of [`AdmissionConfig::min_in_flight`]: enough calls to fill a group commit.
pub const DEFAULT_MIN_IN_FLIGHT: usize = 8;
/// Default of [`AdmissionConfig::target`]: a service time whose tail stays within the
/// design's p99 of 25 ms.
pub const DEFAULT_TARGET: Duration = Duration::from_millis(10);
/// Default of [`AdmissionConfig::queue_wait`].
pub const DEFAULT_QUEUE_WAIT: Duration = Duration::from_millis(5);

impl Default for AdmissionConfig {
    /// A daemon's defaults: admission on.
    fn default() -> Self {
        Self {
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            min_in_flight: DEFAULT_MIN_IN_FLIGHT,
            target: DEFAULT_TARGET,
            queue_wait: DEFAULT_QUEUE_WAIT,
        }
    }
}

impl AdmissionConfig {
    /// Admission off: every call goes in (tests and embedded nodes unless they ask).
    #[must_use]
    pub fn off() -> Self {
        Self {
            max_in_flight: 0,
            ..Self::default()
        }
    }

    /// Whether calls are gated at all.
    #[must_use]
    pub fn enabled(&self) -> bool {
        self.max_in_flight > 0
    }
}

/// A call refused at the door: nothing was done for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub message: String,
    /// When a retry has a fair chance.
    pub retry_after: Duration,
}

/// The gates of a node: one per kind of call.
pub struct Admission {
    pub settle: Arc<Gate>,
    pub pre_settle: Arc<Gate>,
}

impl Admission {
    #[must_use]
    pub fn new(config: &AdmissionConfig, metrics: &AdmissionMetrics) -> Self {
        Self {
            settle: Arc::new(Gate::new(Op::Settle, config.clone(), metrics.clone())),
            pre_settle: Arc::new(Gate::new(Op::PreSettle, config.clone(), metrics.clone())),
        }
    }
}

/// One kind of call's door.
pub struct Gate {
    op: Op,
    config: AdmissionConfig,
    metrics: AdmissionMetrics,
    inner: Mutex<Inner>,
}

struct Inner {
    in_flight: usize,
    limit: usize,
    /// Calls waiting for a slot, oldest first; a sender whose receiver is gone (its
    /// call ended or gave up) is skipped. The slot travels as a [`Permit`], so a call
    /// dropped after the hand-over (its client gone) still gives its slot back.
    waiting: VecDeque<oneshot::Sender<Permit>>,
    /// Smoothed service time, microseconds (for the expected wait and the hint).
    service_us: u64,
    /// The service time with few calls inside (windows whose peak was at most the
    /// minimum), microseconds: down at once, up slowly.
    floor_us: u64,
    window_started: Instant,
    window_calls: u64,
    window_sum_us: u64,
    /// Whether the limit held a call back in this window.
    window_binding: bool,
    /// The most calls inside at once in this window.
    window_peak: usize,
}

/// A slot inside; given back (and its service time measured) when dropped.
pub struct Permit {
    gate: Option<(Arc<Gate>, Instant)>,
}

impl Permit {
    /// A call that passes without a slot (admission off, or a repeat of a recorded
    /// request).
    #[must_use]
    pub fn unmetered() -> Self {
        Self { gate: None }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some((gate, admitted)) = self.gate.take() {
            gate.leave(admitted.elapsed());
        }
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl Gate {
    fn new(op: Op, mut config: AdmissionConfig, metrics: AdmissionMetrics) -> Self {
        config.min_in_flight = config.min_in_flight.clamp(1, config.max_in_flight.max(1));
        let limit = config.min_in_flight;
        if config.enabled() {
            metrics.limit(op, limit);
        }
        Self {
            op,
            config,
            metrics,
            inner: Mutex::new(Inner {
                in_flight: 0,
                limit,
                waiting: VecDeque::new(),
                service_us: 0,
                floor_us: 0,
                window_started: Instant::now(),
                window_calls: 0,
                window_sum_us: 0,
                window_binding: false,
                window_peak: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The current limit (for tests and the operator's metrics).
    #[must_use]
    pub fn limit(&self) -> usize {
        self.lock().limit
    }

    /// Lets the call in (at once, or after a short wait at the door), or refuses it
    /// (counted by [`Gate::shed`] once the refusal stands).
    pub async fn enter(self: &Arc<Self>) -> Result<Permit, Refusal> {
        if !self.config.enabled() {
            return Ok(Permit::unmetered());
        }
        let arrived = Instant::now();
        let mut rx = {
            let mut g = self.lock();
            g.waiting.retain(|w| !w.is_closed());
            if g.in_flight < g.limit && g.waiting.is_empty() {
                g.in_flight += 1;
                let n = g.in_flight;
                g.window_peak = g.window_peak.max(n);
                drop(g);
                return Ok(self.admitted(arrived, n));
            }
            g.window_binding = true;
            let expected = expected_wait(&g, g.waiting.len());
            if self.config.queue_wait.is_zero()
                || expected > self.config.queue_wait
                || g.waiting.len() >= g.limit
            {
                return Err(self.refusal(&g, expected));
            }
            let (tx, rx) = oneshot::channel();
            g.waiting.push_back(tx);
            rx
        };
        // The expected wait was under `queue_wait`; one that runs to twice that is
        // given up (the calls inside are slower than they were measured).
        let waited = tokio::time::timeout(2 * self.config.queue_wait, &mut rx).await;
        if let Ok(Ok(permit)) = waited {
            let n = self.lock().in_flight;
            self.metrics.admitted(self.op, arrived.elapsed(), n);
            return Ok(permit);
        }
        // A slot may have been handed over just as the wait ran out: closing first
        // makes the hand-over and this check exclusive.
        rx.close();
        if let Ok(permit) = rx.try_recv() {
            let n = self.lock().in_flight;
            self.metrics.admitted(self.op, arrived.elapsed(), n);
            return Ok(permit);
        }
        let mut g = self.lock();
        // This call's own place is closed now: not counted among those waiting.
        g.waiting.retain(|w| !w.is_closed());
        Err(self.refusal(&g, expected_wait(&g, g.waiting.len())))
    }

    /// Counts a call refused at the door: the caller decides, as a refusal of the gate
    /// may still let a call through (a repeat of a recorded request).
    pub fn shed(&self) {
        self.metrics.shed(self.op);
    }

    fn admitted(self: &Arc<Self>, arrived: Instant, in_flight: usize) -> Permit {
        self.metrics.admitted(self.op, arrived.elapsed(), in_flight);
        Permit {
            gate: Some((Arc::clone(self), Instant::now())),
        }
    }

    fn refusal(&self, g: &Inner, expected: Duration) -> Refusal {
        let service = Duration::from_micros(g.service_us);
        let retry_after = expected
            .max(service)
            .clamp(MIN_RETRY_AFTER, MAX_RETRY_AFTER);
        // Whole milliseconds, rounded up: never a hint shorter than meant.
        let ms = retry_after.as_micros().div_ceil(1000);
        let call = match self.op {
            Op::Settle => "Settle",
            Op::PreSettle => "PreSettle",
        };
        Refusal {
            message: format!(
                "node at capacity: {} {call} calls in progress (limit {}) and {} waiting; nothing was done — retry after {ms} ms with the same request_id",
                g.in_flight,
                g.limit,
                g.waiting.len()
            ),
            retry_after: Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX)),
        }
    }

    /// A call let in has ended after `service`: its slot goes to the oldest waiting
    /// call, and the limit is reconsidered once per window.
    fn leave(self: &Arc<Self>, service: Duration) {
        let mut g = self.lock();
        g.in_flight = g.in_flight.saturating_sub(1);
        let s = micros(service);
        g.service_us = if g.service_us == 0 {
            s
        } else {
            g.service_us - g.service_us / 8 + s / 8
        };
        g.window_calls += 1;
        g.window_sum_us = g.window_sum_us.saturating_add(s);
        if g.window_started.elapsed() >= WINDOW && g.window_calls >= MIN_WINDOW_CALLS {
            self.adapt(&mut g);
        }
        while g.in_flight < g.limit {
            let Some(next) = g.waiting.pop_front() else {
                break;
            };
            let permit = Permit {
                gate: Some((Arc::clone(self), Instant::now())),
            };
            match next.send(permit) {
                // Counted before the lock is let go: a receiver dropped at once gives
                // the slot back through the permit's drop, which waits for this lock.
                Ok(()) => {
                    g.in_flight += 1;
                    g.window_peak = g.window_peak.max(g.in_flight);
                }
                // Its caller gave up: the permit never counted, so it must not give back.
                Err(mut unsent) => unsent.gate = None,
            }
        }
        self.metrics.in_flight(self.op, g.in_flight);
    }

    fn adapt(&self, g: &mut Inner) {
        let mean = g.window_sum_us / g.window_calls.max(1);
        if g.window_peak <= self.config.min_in_flight {
            g.floor_us = if g.floor_us == 0 || mean < g.floor_us {
                mean
            } else {
                g.floor_us + (mean - g.floor_us) / 16
            };
        }
        let target = micros(self.config.target);
        let floor = if g.floor_us == 0 { mean } else { g.floor_us };
        let queued_inside = mean > target.max(2 * floor);
        let limit = if queued_inside {
            (g.limit - g.limit / 5).max(self.config.min_in_flight)
        } else if g.window_binding && mean < target.max(floor + floor / 2) {
            (g.limit + (g.limit / 10).max(1)).min(self.config.max_in_flight)
        } else {
            g.limit
        };
        if limit != g.limit {
            g.limit = limit;
            self.metrics.limit(self.op, limit);
        }
        g.window_started = Instant::now();
        g.window_calls = 0;
        g.window_sum_us = 0;
        g.window_binding = false;
        g.window_peak = g.in_flight;
    }
}

/// How long the call behind `ahead` waiting ones may expect to wait: each slot frees
/// about once per service time.
fn expected_wait(g: &Inner, ahead: usize) -> Duration {
    let slots = u64::try_from(g.limit.max(1)).unwrap_or(u64::MAX);
    let n = u64::try_from(ahead + 1).unwrap_or(u64::MAX);
    Duration::from_micros(g.service_us.saturating_mul(n) / slots)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(max: usize, min: usize, queue_ms: u64) -> Arc<Gate> {
        Arc::new(Gate::new(
            Op::Settle,
            AdmissionConfig {
                max_in_flight: max,
                min_in_flight: min,
                target: Duration::from_millis(10),
                queue_wait: Duration::from_millis(queue_ms),
            },
            AdmissionMetrics::default(),
        ))
    }

    #[tokio::test]
    async fn a_full_gate_without_a_queue_refuses_at_once_and_a_freed_slot_admits() {
        let g = gate(2, 2, 0);
        let a = g.enter().await.expect("first");
        let _b = g.enter().await.expect("second");
        let refused = g.enter().await.err().expect("third refused");
        assert_eq!(
            refused.message,
            "node at capacity: 2 Settle calls in progress (limit 2) and 0 waiting; nothing was done — retry after 5 ms with the same request_id"
        );
        assert_eq!(refused.retry_after, Duration::from_millis(5));
        drop(a);
        let _c = g.enter().await.expect("a freed slot admits");
    }

    /// A waiting call handed the slot but dropped before it ran (its client went away)
    /// gives the slot back: cancels must not shrink the door for good.
    #[tokio::test]
    async fn a_slot_handed_to_a_call_that_is_gone_comes_back() {
        let g = gate(1, 1, 50);
        let a = g.enter().await.expect("first");
        let mut waiting = Box::pin(g.enter());
        assert!(
            tokio::time::timeout(Duration::from_millis(1), &mut waiting)
                .await
                .is_err(),
            "the second call waits at the door"
        );
        assert_eq!(g.lock().waiting.len(), 1);
        drop(a); // the slot is handed to the waiting call...
        assert_eq!(g.lock().in_flight, 1);
        drop(waiting); // ...which is dropped before it runs again
        assert_eq!(g.lock().in_flight, 0, "the slot came back");
        let _b = g.enter().await.expect("a new call gets in at once");
    }

    #[tokio::test]
    async fn a_waiting_call_gets_the_slot_handed_over() {
        let g = gate(1, 1, 50);
        let a = g.enter().await.expect("first");
        let g2 = Arc::clone(&g);
        let waiter = tokio::spawn(async move { g2.enter().await.map(drop) });
        // Let the waiter queue, then free the slot.
        while g.lock().waiting.is_empty() {
            tokio::task::yield_now().await;
        }
        drop(a);
        waiter.await.expect("task").expect("admitted on hand-over");
        assert_eq!(g.lock().in_flight, 0);
    }

    #[tokio::test]
    async fn off_admits_everything() {
        let g = gate(0, 8, 5);
        let permits: Vec<_> = futures::future::join_all((0..100).map(|_| g.enter()))
            .await
            .into_iter()
            .collect::<Result<_, _>>()
            .expect("all admitted");
        assert_eq!(permits.len(), 100);
    }

    #[test]
    fn the_limit_shrinks_when_calls_queue_inside_and_grows_when_held_back() {
        let g = gate(64, 8, 5);
        let mut inner = g.lock();
        let window = |inner: &mut Inner, mean_us: u64, peak: usize, binding: bool| {
            inner.window_calls = 10;
            inner.window_sum_us = 10 * mean_us;
            inner.window_peak = peak;
            inner.window_binding = binding;
        };
        // At the minimum, 4 ms a call: the floor; held back and fast, so it grows.
        assert_eq!(inner.limit, 8);
        window(&mut inner, 4_000, 8, true);
        g.adapt(&mut inner);
        assert_eq!((inner.floor_us, inner.limit), (4_000, 9));
        for _ in 0..30 {
            window(&mut inner, 6_000, 60, true);
            g.adapt(&mut inner);
        }
        assert_eq!(
            inner.limit, 64,
            "grows to the maximum while under the target"
        );
        // 30 ms a call with many inside: queued inside, shrinks by a fifth; the floor
        // stays (learnt with few inside only).
        window(&mut inner, 30_000, 64, true);
        g.adapt(&mut inner);
        assert_eq!((inner.floor_us, inner.limit), (4_000, 52));
        // At the target: neither.
        window(&mut inner, 10_000, 52, true);
        g.adapt(&mut inner);
        assert_eq!(inner.limit, 52);
        // Never under the minimum.
        for _ in 0..50 {
            window(&mut inner, 1_000_000, 60, true);
            g.adapt(&mut inner);
        }
        assert_eq!(inner.limit, 8);
    }

    #[test]
    fn a_slow_node_with_few_calls_inside_raises_the_floor_not_the_refusals() {
        let g = gate(64, 8, 5);
        let mut inner = g.lock();
        // 40 ms a call with at most 8 inside: the node's own cost, above the target.
        for _ in 0..100 {
            inner.window_calls = 10;
            inner.window_sum_us = 400_000;
            inner.window_peak = 8;
            inner.window_binding = true;
            g.adapt(&mut inner);
        }
        assert_eq!(inner.floor_us, 40_000);
        assert!(
            inner.limit > 8,
            "grows while not slower than 1.5× its floor"
        );
    }
}
