//! Read-only summaries for the agency's console (crate::console::agency): settlements
//! per day, refusals by reason, recent settlements and one settlement's trace through
//! the node's tables. Amounts stay in fen; nothing here writes.

use rusqlite::{Connection, params};
use yidi_common::proto;

use crate::Result;

/// Settlements of one UTC+8 day: count and fund share (reversals subtract).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Day {
    pub date: String,
    pub count: u64,
    pub fund_fen: i64,
}

/// The last `days` days that had a settlement or a reversal, oldest first.
pub fn settlements_by_day(conn: &Connection, days: u32) -> Result<Vec<Day>> {
    let mut stmt = conn.prepare_cached(
        "SELECT settle_date, \
                SUM(CASE WHEN reverses IS NULL THEN 1 ELSE 0 END), \
                SUM(fund_fen) \
         FROM settlements WHERE state IN ('settled', 'provisional', 'reversed') \
         GROUP BY settle_date ORDER BY settle_date DESC LIMIT ?1",
    )?;
    let mut out = stmt
        .query_map(params![days], |r| {
            Ok(Day {
                date: r.get(0)?,
                count: r.get::<_, i64>(1).map(|n| u64::try_from(n).unwrap_or(0))?,
                fund_fen: r.get(2)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    out.reverse();
    Ok(out)
}

/// Refused settlements (the patient paid in full) by their reason, most frequent first.
pub fn refusals_by_reason(conn: &Connection) -> Result<Vec<(String, u64)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT note, COUNT(*) FROM settlements WHERE state = 'refused' \
         GROUP BY note ORDER BY COUNT(*) DESC, note",
    )?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                u64::try_from(r.get::<_, i64>(1)?).unwrap_or(0),
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// A settlement row as the console lists it (no person named).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub settlement_id: String,
    pub institution_code: String,
    pub home_region: String,
    pub visit_kind: String,
    pub state: String,
    pub reverses: Option<String>,
    pub medfee_fen: i64,
    pub fund_fen: i64,
    pub settled_at: String,
    pub period: String,
    pub policy_version: i64,
    pub acc_version: i64,
    pub note: String,
}

const ROW: &str = "settlement_id, institution_code, home_region, visit_kind, state, reverses, \
                   medfee_fen, fund_fen, settled_at, period, policy_version, acc_version, note";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    Ok(Row {
        settlement_id: r.get(0)?,
        institution_code: r.get(1)?,
        home_region: r.get(2)?,
        visit_kind: r.get(3)?,
        state: r.get(4)?,
        reverses: r.get(5)?,
        medfee_fen: r.get(6)?,
        fund_fen: r.get(7)?,
        settled_at: r.get(8)?,
        period: r.get(9)?,
        policy_version: r.get(10)?,
        acc_version: r.get(11)?,
        note: r.get(12)?,
    })
}

/// The newest `limit` settlements, optionally of one institution.
pub fn recent(conn: &Connection, institution: &str, limit: u32) -> Result<Vec<Row>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {ROW} FROM settlements WHERE (?1 = '' OR institution_code = ?1) \
         ORDER BY seq DESC LIMIT ?2"
    ))?;
    let rows = stmt
        .query_map(params![institution, limit], row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// One settlement's way through the node: the record and its split, its reversals,
/// its push to the home node if still queued, and its ledger entries.
#[derive(Debug, Clone)]
pub struct Trace {
    pub row: Row,
    pub split: Option<proto::Split>,
    pub reversals: Vec<Row>,
    /// (kind, target region, created, attempts, last error) of a queued push.
    pub outbox: Vec<(String, String, String, i64, String)>,
    /// (entry id, side, counterparty, period, kind, amount fen, created).
    pub ledger: Vec<(String, String, String, String, String, i64, String)>,
}

/// The trace of `settlement_id`, if there is such a settlement.
pub fn trace(conn: &Connection, settlement_id: &str) -> Result<Option<Trace>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {ROW}, split FROM settlements WHERE settlement_id = ?1"
    ))?;
    let found = stmt
        .query_map(params![settlement_id], |r| {
            Ok((row(r)?, r.get::<_, Vec<u8>>(13)?))
        })?
        .next()
        .transpose()?;
    let Some((row, split)) = found else {
        return Ok(None);
    };
    let reversals = conn
        .prepare_cached(&format!(
            "SELECT {ROW} FROM settlements WHERE reverses = ?1 ORDER BY seq"
        ))?
        .query_map(params![settlement_id], self::row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let outbox = conn
        .prepare_cached(
            "SELECT kind, target_region, created_at, attempts, last_error FROM outbox \
             WHERE ref_id = ?1 OR ref_id IN (SELECT settlement_id FROM settlements WHERE reverses = ?1)",
        )?
        .query_map(params![settlement_id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let ledger = conn
        .prepare_cached(
            "SELECT entry_id, side, counterparty, period, kind, amount_fen, created_at FROM ledger \
             WHERE claim_id = ?1 ORDER BY created_at",
        )?
        .query_map(params![settlement_id], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(Some(Trace {
        split: super::split_codec::decode(&split).ok(),
        row,
        reversals,
        outbox,
        ledger,
    }))
}
