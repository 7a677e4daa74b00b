//! The durable outbox: pushes to home nodes (provisional claims, reversals) that are
//! acknowledged locally first and delivered later, with exponential backoff, until the
//! home node answers.

use rusqlite::{Connection, params};

use super::states::OutboxKind;
use crate::Result;

/// One queued push.
#[derive(Debug, Clone)]
pub struct Item {
    pub id: i64,
    pub kind: OutboxKind,
    pub target_region: String,
    pub ref_id: String,
    pub payload: Vec<u8>,
    pub created_at: String,
    pub attempts: u32,
    pub last_error: String,
}

/// Queues a push for immediate delivery; the same `ref_id` is queued once.
pub fn enqueue(
    conn: &Connection,
    kind: OutboxKind,
    target: &str,
    ref_id: &str,
    payload: &[u8],
    now: &str,
    now_ms: i64,
) -> Result<()> {
    conn.prepare_cached(
        "INSERT OR IGNORE INTO outbox (kind, target_region, ref_id, payload, created_at, next_attempt_ms) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![kind, target, ref_id, payload, now, now_ms])?;
    Ok(())
}

/// Items due at `now_ms`, oldest first.
pub fn due(conn: &Connection, now_ms: i64, limit: u32) -> Result<Vec<Item>> {
    Ok(conn
        .prepare_cached(
            "SELECT id, kind, target_region, ref_id, payload, created_at, attempts, last_error FROM outbox \
             WHERE next_attempt_ms <= ?1 ORDER BY id LIMIT ?2",
        )?
        .query_map(params![now_ms, limit], |r| {
            Ok(Item {
                id: r.get(0)?,
                kind: r.get(1)?,
                target_region: r.get(2)?,
                ref_id: r.get(3)?,
                payload: r.get(4)?,
                created_at: r.get(5)?,
                attempts: r.get(6)?,
                last_error: r.get(7)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?)
}

/// Per target region, the id of the oldest item not yet due at `now_ms`: the items
/// queued after it wait for it, so that each region's pushes go out in order.
pub fn first_waiting(
    conn: &Connection,
    now_ms: i64,
) -> Result<std::collections::HashMap<String, i64>> {
    Ok(conn
        .prepare_cached(
            "SELECT target_region, MIN(id) FROM outbox WHERE next_attempt_ms > ?1 AND parked = 0 \
             GROUP BY target_region",
        )?
        .query_map([now_ms], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?)
}

/// Removes a delivered item.
pub fn remove(conn: &Connection, id: i64) -> Result<()> {
    conn.prepare_cached("DELETE FROM outbox WHERE id = ?1")?
        .execute([id])?;
    Ok(())
}

/// Records a failed attempt and when to try next.
pub fn retry_later(conn: &Connection, id: i64, next_ms: i64, error: &str) -> Result<()> {
    conn.prepare_cached("UPDATE outbox SET attempts = attempts + 1, next_attempt_ms = ?2, last_error = ?3, parked = 0 WHERE id = ?1")?
        .execute(params![id, next_ms, error])?;
    Ok(())
}

/// Parks an item the home node refused because it concerns a record the home node has
/// archived: kept (never dropped), looked at again at `next_ms`, and no longer holding
/// up the items queued behind it toward the same region (see [`first_waiting`]).
pub fn park(conn: &Connection, id: i64, next_ms: i64, error: &str) -> Result<()> {
    conn.prepare_cached("UPDATE outbox SET attempts = attempts + 1, next_attempt_ms = ?2, last_error = ?3, parked = 1 WHERE id = ?1")?
        .execute(params![id, next_ms, error])?;
    Ok(())
}

/// Queue depth toward one home region.
#[derive(Debug, Clone)]
pub struct TargetStats {
    pub region: String,
    pub depth: u64,
    pub oldest: String,
}

/// Depth and age of the whole outbox and per target.
#[derive(Debug, Clone)]
pub struct Stats {
    pub depth: u64,
    /// Items parked because their home node archived the record they concern.
    pub parked: u64,
    pub oldest: Option<String>,
    pub targets: Vec<TargetStats>,
}

/// Depth, oldest item's creation time, and per-target depth.
pub fn stats(conn: &Connection) -> Result<Stats> {
    let (depth, oldest, parked): (u64, Option<String>, u64) = conn
        .prepare_cached("SELECT COUNT(*), MIN(created_at), COALESCE(SUM(parked), 0) FROM outbox")?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    let targets = conn
        .prepare_cached("SELECT target_region, COUNT(*), MIN(created_at) FROM outbox GROUP BY target_region ORDER BY target_region")?
        .query_map([], |r| Ok(TargetStats { region: r.get(0)?, depth: r.get(1)?, oldest: r.get(2)? }))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(Stats {
        depth,
        parked,
        oldest,
        targets,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An item parked for a record its home node archived is kept and counted, but the
    /// items queued after it toward the same region no longer wait for it.
    #[test]
    fn a_parked_item_does_not_hold_up_the_items_behind_it() {
        let mut conn = Connection::open_in_memory().unwrap();
        crate::store::migrations::migrate(&mut conn, crate::store::migrations::Schema::Node)
            .unwrap();
        enqueue(&conn, OutboxKind::Reverse, "330100", "r1", b"x", "t", 0).unwrap();
        enqueue(&conn, OutboxKind::Reverse, "330100", "r2", b"y", "t", 0).unwrap();
        let first = due(&conn, 10, 10).unwrap()[0].id;
        // Backing off, it holds up the next one (per-region order).
        retry_later(&conn, first, 1_000, "unreachable").unwrap();
        assert_eq!(
            first_waiting(&conn, 10).unwrap().get("330100"),
            Some(&first)
        );
        park(&conn, first, 1_000, "archived").unwrap();
        assert!(first_waiting(&conn, 10).unwrap().is_empty());
        let due_now: Vec<String> = due(&conn, 10, 10)
            .unwrap()
            .into_iter()
            .map(|i| i.ref_id)
            .collect();
        assert_eq!(due_now, ["r2"]);
        let s = stats(&conn).unwrap();
        assert_eq!((s.depth, s.parked), (2, 1));
        // Looked at again and found unreachable this time: back in order.
        retry_later(&conn, first, 1_000, "unreachable").unwrap();
        assert_eq!(
            first_waiting(&conn, 10).unwrap().get("330100"),
            Some(&first)
        );
        assert_eq!(stats(&conn).unwrap().parked, 0);
    }
}
