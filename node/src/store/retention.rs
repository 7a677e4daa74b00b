//! Retention of request records (idempotency): a request's stored answer is kept for
//! the node's idempotency window (`request_retention_days`) and then removed, a bounded
//! chunk per writer job, so that the records of years of settlements do not fill the
//! disk. What the window must cover: a hospital system retries within minutes or hours
//! (a lost answer, a restart), and 冲正 (NHSA 2601) of a settlement by its message id
//! finds the settlement by the request id it carries, which the settlement record keeps
//! for good; so does the visit's state, which refuses a second settlement of a settled
//! visit whatever request id it comes with. A Settle repeated after the window is
//! answered from the settlement record it created (`settle.rs`), never settled again.

use chrono::{DateTime, Utc};
use rusqlite::{Connection, params};
use yidi_common::period;

use crate::Result;

/// Days a request's answer is kept by default: a week, a multiple of any retry a
/// hospital system makes, and of a weekend without its operators.
pub const DEFAULT_REQUEST_RETENTION_DAYS: u32 = 7;

/// Longest window the configuration accepts (ten years).
pub const MAX_REQUEST_RETENTION_DAYS: u32 = 3_650;

/// Request records one writer job removes at most: small enough that the job stays
/// within the writer's budget (a few milliseconds), so that settlements queued behind
/// it do not wait.
pub const PURGE_STEP: u32 = 1_000;

/// How often the node looks for expired request records.
pub const PURGE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

/// The creation time before which a request record has expired at `now`.
#[must_use]
pub fn cutoff(now: DateTime<Utc>, days: u32) -> String {
    period::format_ts(now - chrono::Duration::days(i64::from(days)))
}

/// One writer job of the purge: removes the expired records among the `limit` oldest
/// (in the order they were written; `created_at` is RFC 3339 in UTC+8, so its text
/// order is its time order). Returns how many it removed; fewer than `limit` means the
/// oldest records left are within the window (or none are left), and the purge rests
/// until its next round.
pub fn purge_requests_step(conn: &Connection, cutoff: &str, limit: u32) -> Result<u64> {
    let removed = conn
        .prepare_cached(
            "DELETE FROM requests WHERE rowid IN \
             (SELECT rowid FROM requests ORDER BY rowid LIMIT ?2) AND created_at < ?1",
        )?
        .execute(params![cutoff, limit])?;
    Ok(removed as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::idempotency::{self, RequestKey};
    use yidi_common::proto;

    fn store_at(conn: &Connection, id: &str, at: &str) {
        let key = RequestKey::new("inst:H1", id, "Settle", "h".into()).unwrap();
        idempotency::store(conn, &key, &proto::Settlement::default()).unwrap();
        conn.execute(
            "UPDATE requests SET created_at = ?2 WHERE request_id = ?1",
            [id, at],
        )
        .unwrap();
    }

    fn ids(conn: &Connection) -> Vec<String> {
        conn.prepare("SELECT request_id FROM requests ORDER BY rowid")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    }

    /// Only records older than the window go, at most `limit` per step; a record
    /// within the window is still replayed; a step that finds nothing expired
    /// removes nothing.
    #[test]
    fn purge_removes_only_expired_records_in_bounded_steps() {
        let mut conn = Connection::open_in_memory().unwrap();
        crate::store::migrations::migrate(&mut conn, crate::store::migrations::Schema::Node)
            .unwrap();
        let now = period::parse_ts("2026-12-07T12:00:00.000+08:00", "t").unwrap();
        for i in 0..5 {
            store_at(
                &conn,
                &format!("old-{i}"),
                &format!("2026-11-2{i}T08:00:00.000+08:00"),
            );
        }
        store_at(&conn, "edge", "2026-11-30T12:00:00.001+08:00");
        store_at(&conn, "new", "2026-12-07T11:59:00.000+08:00");
        let cut = cutoff(now, 7);
        assert_eq!(cut, "2026-11-30T12:00:00.000+08:00");
        assert_eq!(purge_requests_step(&conn, &cut, 3).unwrap(), 3);
        assert_eq!(ids(&conn), ["old-3", "old-4", "edge", "new"]);
        assert_eq!(purge_requests_step(&conn, &cut, 3).unwrap(), 2);
        assert_eq!(purge_requests_step(&conn, &cut, 3).unwrap(), 0);
        assert_eq!(ids(&conn), ["edge", "new"]);
        let key = RequestKey::new("inst:H1", "edge", "Settle", "h".into()).unwrap();
        assert_eq!(
            idempotency::replay::<proto::Settlement>(&conn, &key).unwrap(),
            Some(proto::Settlement::default()),
            "a record within the window still answers"
        );
    }
}
