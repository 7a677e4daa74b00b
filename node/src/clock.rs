//! The node's wall clock and the bound on how far ahead of it a date may lie. Dates a
//! hospital or an operator sends (an admission, a service date, an enrolment) and the
//! clocks of peer nodes are all judged against it: a date later than the clock plus
//! `max_skew` would book money into a period or year that has not begun (a fresh
//! deductible and cap, a clearing round that never sees it).
//!
//! Tests shift one node's clock through [`crate::context::TestHooks::clock_offset_ms`],
//! as a node under libfaketime would be, without touching the others in the process.

use std::{
    sync::{
        Arc, OnceLock,
        atomic::{AtomicI64, Ordering},
    },
    time::{Duration, Instant},
};

use chrono::{DateTime, NaiveDate, Utc};
use yidi_common::period;

use crate::{Error, Result};

/// Default of `max_clock_skew_seconds`: a host kept by NTP is within a second; five
/// minutes leaves room for a hospital system's drifting clock without letting a date
/// reach into another day by more than that.
pub const DEFAULT_MAX_SKEW: Duration = Duration::from_secs(300);

/// Request metadata carrying the caller's wall clock (milliseconds since the epoch) on
/// every call between nodes.
pub const CLOCK_HEADER: &str = "yidi-clock-ms";

/// Metadata on a refusal for the caller's clock, so that the caller's outbox waits and
/// retries instead of taking the refusal as one of the claim itself.
pub const CLOCK_REFUSED: &str = "yidi-clock-refused";

/// A node's clock; cheap to clone.
#[derive(Debug, Clone)]
pub struct Clock {
    /// Added to the system clock (tests only; 0 in production).
    offset_ms: Arc<AtomicI64>,
    max_skew: Duration,
}

impl Default for Clock {
    fn default() -> Self {
        Self::new(Arc::default(), DEFAULT_MAX_SKEW)
    }
}

impl Clock {
    /// The system clock shifted by `offset_ms`, accepting dates up to `max_skew` ahead.
    #[must_use]
    pub fn new(offset_ms: Arc<AtomicI64>, max_skew: Duration) -> Self {
        Self {
            offset_ms,
            max_skew,
        }
    }

    /// Now.
    #[must_use]
    pub fn now(&self) -> DateTime<Utc> {
        Utc::now() + chrono::Duration::milliseconds(self.offset_ms.load(Ordering::Relaxed))
    }

    /// Milliseconds since the epoch, as sent in [`CLOCK_HEADER`].
    #[must_use]
    pub fn now_ms(&self) -> i64 {
        self.now().timestamp_millis()
    }

    /// Today in UTC+8.
    #[must_use]
    pub fn today(&self) -> NaiveDate {
        self.now().with_timezone(&period::cst()).date_naive()
    }

    /// How far ahead of this clock a date or a peer's clock may be.
    #[must_use]
    pub fn max_skew(&self) -> Duration {
        self.max_skew
    }

    /// The latest moment a request may name.
    #[must_use]
    pub fn latest(&self) -> DateTime<Utc> {
        self.now() + chrono::Duration::from_std(self.max_skew).unwrap_or_default()
    }

    /// The latest day (UTC+8) a request may name.
    #[must_use]
    pub fn latest_day(&self) -> NaiveDate {
        self.latest().with_timezone(&period::cst()).date_naive()
    }

    /// Refuses a timestamp later than [`Clock::latest`], naming `field`.
    pub fn not_future(&self, t: DateTime<Utc>, field: &str) -> Result<()> {
        if t > self.latest() {
            return Err(Error::invalid(
                field,
                format!(
                    "{} is in the future (this node's clock reads {}; at most {} s ahead is accepted)",
                    period::format_ts(t),
                    period::format_ts(self.now()),
                    self.max_skew.as_secs()
                ),
            ));
        }
        Ok(())
    }

    /// Refuses a date later than [`Clock::latest_day`], naming `field`.
    pub fn not_future_day(&self, d: NaiveDate, field: &str) -> Result<()> {
        if d > self.latest_day() {
            return Err(Error::invalid(
                field,
                format!(
                    "{d} is in the future (today is {} at this node)",
                    self.today()
                ),
            ));
        }
        Ok(())
    }

    /// How far `peer_ms` (a peer's clock) is ahead of this clock (negative: behind), in
    /// milliseconds, and whether that is beyond the bound.
    #[must_use]
    pub fn skew_of(&self, peer_ms: i64) -> (i64, bool) {
        let skew = peer_ms.saturating_sub(self.now_ms());
        let bound = i64::try_from(self.max_skew.as_millis()).unwrap_or(i64::MAX);
        (skew, skew.unsigned_abs() > bound.unsigned_abs())
    }
}

/// Milliseconds on a monotonic clock that starts at this process's first reading (so
/// that 0 can mean "never"); what [`crate::peers::Peer::answered_within`] compares.
#[must_use]
pub fn clock_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let since = START.get_or_init(Instant::now).elapsed().as_millis();
    u64::try_from(since).unwrap_or(u64::MAX).saturating_add(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_beyond_the_skew_are_refused_and_name_the_field() {
        let offset = Arc::new(AtomicI64::new(0));
        let c = Clock::new(Arc::clone(&offset), Duration::from_secs(300));
        assert!(
            c.not_future(c.now() + chrono::Duration::seconds(290), "t")
                .is_ok()
        );
        let e = c
            .not_future(c.now() + chrono::Duration::seconds(320), "admitted_at")
            .unwrap_err();
        assert!(
            matches!(&e, Error::Invalid { field, reason } if field == "admitted_at" && reason.contains("in the future")),
            "{e:?}"
        );
        assert!(c.not_future_day(c.today(), "d").is_ok());
        let far = NaiveDate::from_ymd_opt(2099, 1, 1).unwrap();
        assert!(c.not_future_day(far, "service_date").is_err());
        // A shifted clock moves both what is "now" and what counts as the future.
        offset.store(40 * 86_400_000, Ordering::Relaxed);
        assert!(
            c.not_future(Utc::now() + chrono::Duration::days(39), "t")
                .is_ok()
        );
        let (skew, beyond) = c.skew_of(Utc::now().timestamp_millis());
        assert!(skew < -39 * 86_400_000 && beyond, "{skew}");
        let (skew, beyond) = c.skew_of(c.now_ms() + 1000);
        assert!((0..=2000).contains(&skew) && !beyond, "{skew}");
    }
}
