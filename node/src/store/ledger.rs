//! The ledger (台账) of cross-region money: one record per claim, reversal or adjustment
//! per counterparty and clearing period, on both sides of every pair.

use rusqlite::{Connection, OptionalExtension, params};
use yidi_common::digest::SetDigest;

use crate::Result;

/// Which way money is owed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Owed to this region, as treatment region.
    Receivable,
    /// Owed by this region, as home region.
    Payable,
}

impl Side {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Receivable => "receivable",
            Side::Payable => "payable",
        }
    }
}

/// One ledger record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry<'a> {
    pub entry_id: &'a str,
    pub side: Side,
    pub counterparty: &'a str,
    pub period: &'a str,
    /// claim | reversal | adjustment
    pub kind: &'a str,
    pub claim_id: &'a str,
    pub amount_fen: i64,
}

/// The canonical bytes of a record for the pair digest: both sides hash the same thing.
#[must_use]
pub fn record_bytes(entry_id: &str, kind: &str, claim_id: &str, amount_fen: i64) -> Vec<u8> {
    format!("{entry_id}|{kind}|{claim_id}|{amount_fen}").into_bytes()
}

/// Records an entry; recording the same entry twice is a no-op (deliveries repeat).
pub fn record(conn: &Connection, e: &Entry<'_>, now: &str) -> Result<()> {
    conn.prepare_cached(
        "INSERT OR IGNORE INTO ledger (entry_id, side, counterparty, period, kind, claim_id, amount_fen, created_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![e.entry_id, e.side.as_str(), e.counterparty, e.period, e.kind, e.claim_id, e.amount_fen, now])?;
    Ok(())
}

/// Rows an agreed round holds: a confirmed round's, and a cleared round's whose entries
/// [`super::clearing::tidy_step`] has not yet marked (they keep `cleared_round` NULL
/// and the round's `round_id` until then). Never changed or taken back.
const NOT_AGREED: &str = "cleared_round IS NULL AND (round_id IS NULL OR round_id NOT IN \
     (SELECT round_id FROM clearing_rounds WHERE state IN ('confirmed', 'cleared')))";

/// Changes [`record_confirmed`] and [`withdraw`] made to existing entries, in this
/// process, bumped inside their writer jobs. A confirmation of a round's statement
/// verified from a read compares it before and after, as it does the exclusions: an
/// entry of the frozen set corrected or taken back in between makes it verify again in
/// its writer job. Shared by every store of the process: a change at another node's
/// store only costs a needless verification.
static CHANGES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// See [`CHANGES`].
#[must_use]
pub fn changes() -> u64 {
    CHANGES.load(std::sync::atomic::Ordering::SeqCst)
}

fn changed() {
    CHANGES.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
}

/// Records the counterparty's answer for an entry this node wrote before the
/// counterparty acknowledged it (a provisional claim, a cancellation): the entry is
/// written if missing, and its amount and period set to the acknowledged ones while
/// no round has cleared it. Before the answer the two sides differ and a round shows
/// the entry as disputed, so no round clears one side's figure alone; an entry a round
/// has confirmed or cleared was therefore agreed and is never changed. Returns whether
/// an existing entry was corrected.
pub fn record_confirmed(conn: &Connection, e: &Entry<'_>, now: &str) -> Result<bool> {
    let old: Option<(i64, String)> = conn
        .prepare_cached(&format!(
            "SELECT amount_fen, period FROM ledger WHERE entry_id = ?1 AND side = ?2 AND {NOT_AGREED}"
        ))?
        .query_row(params![e.entry_id, e.side.as_str()], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?;
    match old {
        Some((amount, period)) if amount == e.amount_fen && period == e.period => Ok(false),
        Some(_) => {
            conn.prepare_cached(&format!(
                "UPDATE ledger SET amount_fen = ?3, period = ?4 WHERE entry_id = ?1 AND side = ?2 AND {NOT_AGREED}"
            ))?
            .execute(params![e.entry_id, e.side.as_str(), e.amount_fen, e.period])?;
            changed();
            Ok(true)
        }
        None => record(conn, e, now).map(|()| false),
    }
}

/// Takes back an entry this node wrote that the counterparty will never have (the
/// home node refused the provisional claim, or never had the claim a cancellation
/// reverses), unless a round has confirmed or cleared it. Returns whether it was taken
/// back.
pub fn withdraw(conn: &Connection, entry_id: &str, side: Side) -> Result<bool> {
    let gone = conn
        .prepare_cached(&format!(
            "DELETE FROM ledger WHERE entry_id = ?1 AND side = ?2 AND {NOT_AGREED}"
        ))?
        .execute(params![entry_id, side.as_str()])?
        > 0;
    if gone {
        changed();
    }
    Ok(gone)
}

/// Count, sum and order-independent digest of one side toward one counterparty in one
/// period.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Position {
    pub count: u64,
    pub sum_fen: i64,
    pub digest: SetDigest,
    /// Count and sum in fen by ledger kind (claim, reversal, deduction, reserve_…); Σ
    /// equals `count` and `sum_fen`. Filled for a round's frozen records.
    pub kinds: std::collections::BTreeMap<String, (u64, i64)>,
}

/// The position of `side` toward `counterparty` in `period`.
pub fn position(
    conn: &Connection,
    side: Side,
    counterparty: &str,
    period: &str,
) -> Result<Position> {
    let mut stmt = conn.prepare_cached(
        "SELECT entry_id, kind, claim_id, amount_fen FROM ledger WHERE counterparty = ?1 AND period = ?2 AND side = ?3",
    )?;
    let mut rows = stmt.query(params![counterparty, period, side.as_str()])?;
    let mut p = Position::default();
    while let Some(r) = rows.next()? {
        let (id, kind, claim, amount): (String, String, String, i64) =
            (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?);
        p.count += 1;
        p.sum_fen += amount;
        p.digest.add(&record_bytes(&id, &kind, &claim, amount));
    }
    Ok(p)
}

/// Ids of the records of `side` toward `counterparty` in `period`, sorted.
pub fn entry_ids(
    conn: &Connection,
    side: Side,
    counterparty: &str,
    period: &str,
) -> Result<Vec<String>> {
    Ok(conn
        .prepare_cached("SELECT entry_id FROM ledger WHERE counterparty = ?1 AND period = ?2 AND side = ?3 ORDER BY entry_id")?
        .query_map(params![counterparty, period, side.as_str()], |r| r.get(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?)
}

/// Counterparties with records in a period.
pub fn counterparties(conn: &Connection, period: &str) -> Result<Vec<String>> {
    Ok(conn
        .prepare_cached(
            "SELECT DISTINCT counterparty FROM ledger WHERE period = ?1 ORDER BY counterparty",
        )?
        .query_map([period], |r| r.get(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?)
}

/// Records toward a counterparty in a period that a settled round has cleared: marked
/// so, or still held by a round marked cleared (`clearing::tidy_step` not yet done).
pub fn cleared_count(conn: &Connection, counterparty: &str, period: &str) -> Result<u64> {
    Ok(conn
        .prepare_cached(
            "SELECT COUNT(*) FROM ledger WHERE counterparty = ?1 AND period = ?2 AND (cleared_round IS NOT NULL \
             OR round_id IN (SELECT round_id FROM clearing_rounds WHERE state = 'cleared'))",
        )?
        .query_row(params![counterparty, period], |r| r.get(0))?)
}
