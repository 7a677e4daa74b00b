//! The node's side of clearing rounds: freezing the ledger records a round clears,
//! positions over the frozen set, excluding disputed records, marking them cleared.

use super::ledger::{Position, Side, record_bytes};
use crate::Result;
use rusqlite::{Connection, OptionalExtension, params};

/// A round as this node knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoundRec {
    pub round_id: String,
    pub period: String,
    pub state: String,
    pub statement_digest: String,
    pub confirmed_by: String,
    pub operator_digest: String,
}

/// The round, if this node has seen it.
pub fn get(conn: &Connection, round_id: &str) -> Result<Option<RoundRec>> {
    Ok(conn
        .prepare_cached(
            "SELECT round_id, period, state, statement_digest, confirmed_by, operator_digest FROM clearing_rounds WHERE round_id = ?1",
        )?
        .query_row([round_id], |r| {
            Ok(RoundRec {
                round_id: r.get(0)?,
                period: r.get(1)?,
                state: r.get(2)?,
                statement_digest: r.get(3)?,
                confirmed_by: r.get(4)?,
                operator_digest: r.get(5)?,
            })
        })
        .optional()?)
}

/// Every round this node has seen, newest first.
pub fn list(conn: &Connection) -> Result<Vec<(RoundRec, u64)>> {
    let ids: Vec<String> = conn
        .prepare_cached("SELECT round_id FROM clearing_rounds ORDER BY frozen_at DESC")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some(r) = get(conn, &id)? {
            let n = records_of(conn, &id)?;
            out.push((r, n));
        }
    }
    Ok(out)
}

fn records_of(conn: &Connection, round_id: &str) -> Result<u64> {
    Ok(conn
        // Two counts, each through its index (an entry is frozen in a round or cleared
        // by it, never both: clearing moves it from the one to the other); an OR would
        // not use the partial index by round and scan the ledger.
        .prepare_cached(
            "SELECT (SELECT COUNT(*) FROM ledger WHERE round_id = ?1) \
             + (SELECT COUNT(*) FROM ledger WHERE cleared_round = ?1)",
        )?
        .query_row([round_id], |r| r.get(0))?)
}

/// Freezes, on the first report of a round, every uncleared record of `period` or
/// earlier that is not frozen elsewhere or excluded from this round. A live round left
/// over from an abort the node never heard of is released first: the coordinator runs
/// one round at a time.
pub fn freeze(conn: &Connection, round_id: &str, period: &str, now: &str) -> Result<()> {
    if get(conn, round_id)?.is_some() {
        return Ok(());
    }
    let stale: Vec<String> = conn
        .prepare_cached(
            "SELECT round_id FROM clearing_rounds WHERE state IN ('frozen', 'confirmed')",
        )?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for r in stale {
        release(conn, &r)?;
    }
    conn.prepare_cached(
        "UPDATE ledger SET round_id = ?1 WHERE round_id IS NULL AND cleared_round IS NULL AND period <= ?2 \
         AND (excluded_round IS NULL OR excluded_round <> ?1)",
    )?
    .execute(params![round_id, period])?;
    conn.prepare_cached("INSERT INTO clearing_rounds (round_id, period, state, frozen_at) VALUES (?1, ?2, 'frozen', ?3)")?
        .execute(params![round_id, period, now])?;
    Ok(())
}

/// Unfreezes a round's records (abort); returns how many.
pub fn release(conn: &Connection, round_id: &str) -> Result<u64> {
    let n = conn
        .prepare_cached("UPDATE ledger SET round_id = NULL WHERE round_id = ?1")?
        .execute([round_id])?;
    conn.prepare_cached("UPDATE ledger SET excluded_round = NULL WHERE excluded_round = ?1")?
        .execute([round_id])?;
    conn.prepare_cached(
        "UPDATE clearing_rounds SET state = 'released' WHERE round_id = ?1 AND state <> 'cleared'",
    )?
    .execute([round_id])?;
    Ok(n as u64)
}

/// Counterparties with frozen records in a round.
pub fn counterparties(conn: &Connection, round_id: &str) -> Result<Vec<String>> {
    Ok(conn
        .prepare_cached(
            "SELECT DISTINCT counterparty FROM ledger WHERE round_id = ?1 ORDER BY counterparty",
        )?
        .query_map([round_id], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?)
}

/// One frozen record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frozen {
    pub entry_id: String,
    pub claim_id: String,
    pub kind: String,
    pub amount_fen: i64,
    pub period: String,
}

/// The frozen records of one side toward one counterparty, by id.
pub fn frozen(
    conn: &Connection,
    round_id: &str,
    counterparty: &str,
    side: Side,
) -> Result<Vec<Frozen>> {
    frozen_page(conn, round_id, counterparty, side, "", u32::MAX)
}

/// One page of [`frozen`]: records with an entry id after `after`, at most `limit`.
pub fn frozen_page(
    conn: &Connection,
    round_id: &str,
    counterparty: &str,
    side: Side,
    after: &str,
    limit: u32,
) -> Result<Vec<Frozen>> {
    Ok(conn
        .prepare_cached(
            "SELECT entry_id, claim_id, kind, amount_fen, period FROM ledger WHERE round_id = ?1 AND counterparty = ?2 AND side = ?3 \
             AND entry_id > ?4 ORDER BY entry_id LIMIT ?5",
        )?
        .query_map(params![round_id, counterparty, side.as_str(), after, limit], |r| {
            Ok(Frozen { entry_id: r.get(0)?, claim_id: r.get(1)?, kind: r.get(2)?, amount_fen: r.get(3)?, period: r.get(4)? })
        })?
        .collect::<rusqlite::Result<_>>()?)
}

/// Count, sum and digest of the frozen records of one side toward one counterparty.
pub fn position(
    conn: &Connection,
    round_id: &str,
    counterparty: &str,
    side: Side,
) -> Result<Position> {
    let mut p = Position::default();
    for f in frozen(conn, round_id, counterparty, side)? {
        p.count += 1;
        p.sum_fen += f.amount_fen;
        p.digest.add(&record_bytes(
            &f.entry_id,
            &f.kind,
            &f.claim_id,
            f.amount_fen,
        ));
    }
    Ok(p)
}

/// Σ receivable and Σ payable of the round's frozen records.
pub fn totals(conn: &Connection, round_id: &str) -> Result<(i64, i64)> {
    Ok(conn
        .prepare_cached(
            "SELECT COALESCE(SUM(CASE WHEN side = 'receivable' THEN amount_fen END), 0), \
             COALESCE(SUM(CASE WHEN side = 'payable' THEN amount_fen END), 0) FROM ledger WHERE round_id = ?1",
        )?
        .query_row([round_id], |r| Ok((r.get(0)?, r.get(1)?)))?)
}

/// Takes records out of the round; they stay uncleared for the next one.
pub fn exclude(
    conn: &Connection,
    round_id: &str,
    counterparty: &str,
    side: Side,
    entry_ids: &[String],
) -> Result<u64> {
    let mut n = 0;
    for id in entry_ids {
        n += conn
            .prepare_cached(
                "UPDATE ledger SET round_id = NULL, excluded_round = ?1 WHERE round_id = ?1 AND counterparty = ?2 AND side = ?3 AND entry_id = ?4",
            )?
            .execute(params![round_id, counterparty, side.as_str(), id])?;
    }
    Ok(n as u64)
}

/// Records a confirmation of the statement with `digest`.
pub fn confirm(conn: &Connection, round_id: &str, digest: &str, by: &str) -> Result<()> {
    conn.prepare_cached("UPDATE clearing_rounds SET state = 'confirmed', statement_digest = ?2, confirmed_by = ?3 WHERE round_id = ?1")?
        .execute(params![round_id, digest, by])?;
    Ok(())
}

/// The operator's confirmation of a statement digest (used on the next confirmation).
pub fn operator_confirm(conn: &Connection, round_id: &str, digest: &str) -> Result<()> {
    conn.prepare_cached("UPDATE clearing_rounds SET operator_digest = ?2 WHERE round_id = ?1")?
        .execute(params![round_id, digest])?;
    Ok(())
}

/// Marks the round's records cleared; returns how many.
pub fn mark_cleared(conn: &Connection, round_id: &str, now: &str) -> Result<u64> {
    let n = conn
        .prepare_cached(
            "UPDATE ledger SET cleared_round = ?1, round_id = NULL WHERE round_id = ?1",
        )?
        .execute([round_id])?;
    conn.prepare_cached(
        "UPDATE clearing_rounds SET state = 'cleared', cleared_at = ?2 WHERE round_id = ?1",
    )?
    .execute(params![round_id, now])?;
    Ok(n as u64)
}
