//! The coordinator's persistent round state: rounds, the reports and disputes they
//! collected, confirmations, transfers and clear marks. Only regions, ids, counts, sums
//! and digests.

use prost::Message;
use rusqlite::{Connection, OptionalExtension, params};
use yidi_common::{proto, round_state::RoundState};

use crate::{Error, Result};

/// A round row.
#[derive(Debug, Clone)]
pub struct RoundRow {
    pub round_id: String,
    pub period: String,
    pub state: RoundState,
    pub statement: Option<proto::Statement>,
    pub note: String,
    pub updated_at: String,
    /// Opened with `allow_empty`: settles even when no participant has a record.
    pub allow_empty: bool,
}

/// A stored state; the CHECK constraint keeps any other value out.
fn state_of(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<RoundState> {
    let s: String = r.get(i)?;
    RoundState::parse(&s).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e))
    })
}

fn decode<M: Message + Default>(b: &[u8], what: &str) -> Result<M> {
    M::decode(b).map_err(|e| Error::Internal(format!("stored {what} unreadable: {e}")))
}

/// A round by id.
pub fn round(conn: &Connection, id: &str) -> Result<Option<RoundRow>> {
    let raw = conn
        .prepare_cached("SELECT round_id, period, state, statement, note, updated_at, allow_empty FROM rounds WHERE round_id = ?1")?
        .query_row([id], |r| {
            let statement: Option<Vec<u8>> = r.get(3)?;
            Ok((
                RoundRow { round_id: r.get(0)?, period: r.get(1)?, state: state_of(r, 2)?, statement: None, note: r.get(4)?, updated_at: r.get(5)?, allow_empty: r.get(6)? },
                statement,
            ))
        })
        .optional()?;
    raw.map(|(mut row, statement)| {
        row.statement = statement.map(|b| decode(&b, "statement")).transpose()?;
        Ok(row)
    })
    .transpose()
}

/// A round without its statement (`statement` is `None`): most steps only need the
/// state, and a province-wide statement is megabytes to decode.
pub fn round_head(conn: &Connection, id: &str) -> Result<Option<RoundRow>> {
    Ok(conn
        .prepare_cached(
            "SELECT round_id, period, state, note, updated_at, allow_empty FROM rounds WHERE round_id = ?1",
        )?
        .query_row([id], |r| {
            Ok(RoundRow {
                round_id: r.get(0)?,
                period: r.get(1)?,
                state: state_of(r, 2)?,
                statement: None,
                note: r.get(3)?,
                updated_at: r.get(4)?,
                allow_empty: r.get(5)?,
            })
        })
        .optional()?)
}

/// A statement's payment instructions and nothing else, with the Statement's field
/// number: the `instructions` column holds this encoding, and a whole encoded Statement
/// decodes as it too (prost skips undeclared fields without allocating) — the fallback
/// for rounds issued before that column existed.
#[derive(Clone, PartialEq, prost::Message)]
struct StatementInstructions {
    #[prost(message, repeated, tag = "4")]
    instructions: Vec<proto::PaymentInstruction>,
}

/// The issued statement's payment instructions (empty before it is issued), without
/// reading the statement's gross matrix.
pub fn instructions(conn: &Connection, id: &str) -> Result<Vec<proto::PaymentInstruction>> {
    let blob: Option<Vec<u8>> = conn
        .prepare_cached("SELECT COALESCE(instructions, statement) FROM rounds WHERE round_id = ?1")?
        .query_row([id], |r| r.get(0))
        .optional()?
        .flatten();
    Ok(blob
        .map(|b| decode::<StatementInstructions>(&b, "statement"))
        .transpose()?
        .map(|s| s.instructions)
        .unwrap_or_default())
}

/// Every round id, oldest first.
pub fn round_ids(conn: &Connection) -> Result<Vec<String>> {
    Ok(conn
        .prepare_cached("SELECT round_id FROM rounds ORDER BY created_at, round_id")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?)
}

/// Inserts a new round.
pub fn insert_round(
    conn: &Connection,
    id: &str,
    period: &str,
    allow_empty: bool,
    note: &str,
    now: &str,
) -> Result<()> {
    conn.prepare_cached("INSERT INTO rounds (round_id, period, state, allow_empty, note, created_at, updated_at) VALUES (?1, ?2, ?6, ?3, ?4, ?5, ?5)")?
        .execute(params![id, period, allow_empty, note, now, RoundState::Open.as_str()])?;
    Ok(())
}

/// Sets a round's state and note; FAILED_PRECONDITION when the round may not move
/// there from where it is (`RoundState::can_become`), NOT_FOUND when there is no such
/// round.
pub fn set_state(
    conn: &Connection,
    id: &str,
    state: RoundState,
    note: &str,
    now: &str,
) -> Result<()> {
    let current = round_head(conn, id)?
        .ok_or_else(|| Error::NotFound(format!("no round {}", yidi_common::error::quoted(id))))?
        .state;
    current.check_move(state, id)?;
    conn.prepare_cached(
        "UPDATE rounds SET state = ?2, note = ?3, updated_at = ?4 WHERE round_id = ?1",
    )?
    .execute(params![id, state.as_str(), note, now])?;
    Ok(())
}

/// Stores the issued statement, and its instructions on their own.
pub fn set_statement(conn: &Connection, id: &str, s: &proto::Statement) -> Result<()> {
    let instructions = StatementInstructions {
        instructions: s.instructions.clone(),
    };
    conn.prepare_cached("UPDATE rounds SET statement = ?2, instructions = ?3 WHERE round_id = ?1")?
        .execute(params![id, s.encode_to_vec(), instructions.encode_to_vec()])?;
    Ok(())
}

/// Stores a participant's report.
pub fn put_report(conn: &Connection, id: &str, r: &proto::ReportPositionsResponse) -> Result<()> {
    conn.prepare_cached(
        "INSERT OR REPLACE INTO round_reports (round_id, region, report) VALUES (?1, ?2, ?3)",
    )?
    .execute(params![id, r.region, r.encode_to_vec()])?;
    Ok(())
}

/// The regions whose reports a round has collected, without decoding the reports.
pub fn reported(conn: &Connection, id: &str) -> Result<Vec<String>> {
    regions(
        conn,
        "SELECT region FROM round_reports WHERE round_id = ?1 ORDER BY region",
        id,
    )
}

/// The reports collected for a round.
pub fn reports(conn: &Connection, id: &str) -> Result<Vec<proto::ReportPositionsResponse>> {
    let blobs: Vec<Vec<u8>> = conn
        .prepare_cached("SELECT report FROM round_reports WHERE round_id = ?1 ORDER BY region")?
        .query_map([id], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    blobs.iter().map(|b| decode(b, "report")).collect()
}

/// Each participant's latest report: the round it reported in and when that round last
/// moved, by region (the latest round by creation).
pub fn last_reports(
    conn: &Connection,
) -> Result<std::collections::HashMap<String, (String, String)>> {
    let rows: Vec<(String, String, String)> = conn
        .prepare_cached(
            "SELECT p.region, r.round_id, r.updated_at FROM round_reports p \
             JOIN rounds r USING (round_id) ORDER BY r.created_at, r.round_id",
        )?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<rusqlite::Result<_>>()?;
    // Later rounds overwrite earlier ones.
    Ok(rows
        .into_iter()
        .map(|(region, round, at)| (region, (round, at)))
        .collect())
}

/// Forgets reports and disputes (a dispute resolution re-collects).
pub fn clear_collection(conn: &Connection, id: &str) -> Result<()> {
    conn.prepare_cached("DELETE FROM round_reports WHERE round_id = ?1")?
        .execute([id])?;
    conn.prepare_cached("DELETE FROM round_disputes WHERE round_id = ?1")?
        .execute([id])?;
    Ok(())
}

/// Stores a dispute.
pub fn put_dispute(conn: &Connection, id: &str, d: &proto::Dispute) -> Result<()> {
    conn.prepare_cached("INSERT OR REPLACE INTO round_disputes (round_id, creditor, debtor, dispute) VALUES (?1, ?2, ?3, ?4)")?
        .execute(params![id, d.creditor, d.debtor, d.encode_to_vec()])?;
    Ok(())
}

/// A round's disputes.
pub fn disputes(conn: &Connection, id: &str) -> Result<Vec<proto::Dispute>> {
    let blobs: Vec<Vec<u8>> = conn
        .prepare_cached(
            "SELECT dispute FROM round_disputes WHERE round_id = ?1 ORDER BY creditor, debtor",
        )?
        .query_map([id], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    blobs.iter().map(|b| decode(b, "dispute")).collect()
}

fn regions(conn: &Connection, sql: &str, id: &str) -> Result<Vec<String>> {
    Ok(conn
        .prepare_cached(sql)?
        .query_map([id], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?)
}

/// Regions that confirmed the round's statement.
pub fn confirmed(conn: &Connection, id: &str) -> Result<Vec<String>> {
    regions(
        conn,
        "SELECT region FROM round_confirmations WHERE round_id = ?1 ORDER BY region",
        id,
    )
}

/// Records a confirmation.
pub fn put_confirmation(
    conn: &Connection,
    id: &str,
    region: &str,
    by: &str,
    now: &str,
) -> Result<()> {
    conn.prepare_cached("INSERT OR IGNORE INTO round_confirmations (round_id, region, confirmed_by, at) VALUES (?1, ?2, ?3, ?4)")?
        .execute(params![id, region, by, now])?;
    Ok(())
}

/// Regions that marked the round cleared.
pub fn cleared(conn: &Connection, id: &str) -> Result<Vec<String>> {
    regions(
        conn,
        "SELECT region FROM round_cleared WHERE round_id = ?1 ORDER BY region",
        id,
    )
}

/// Records a clear mark.
pub fn put_cleared(conn: &Connection, id: &str, region: &str, now: &str) -> Result<()> {
    conn.prepare_cached(
        "INSERT OR IGNORE INTO round_cleared (round_id, region, at) VALUES (?1, ?2, ?3)",
    )?
    .execute(params![id, region, now])?;
    Ok(())
}

/// A recorded transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    pub from: String,
    pub to: String,
    pub amount_fen: i64,
    pub reference: String,
}

/// The transfers recorded for a round.
pub fn transfers(conn: &Connection, id: &str) -> Result<Vec<Transfer>> {
    Ok(conn
        .prepare_cached("SELECT from_region, to_region, amount_fen, reference FROM round_transfers WHERE round_id = ?1 ORDER BY from_region, to_region")?
        .query_map([id], |r| Ok(Transfer { from: r.get(0)?, to: r.get(1)?, amount_fen: r.get(2)?, reference: r.get(3)? }))?
        .collect::<rusqlite::Result<_>>()?)
}

/// Who recorded or corrected a transfer, and under which request.
#[derive(Debug, Clone)]
pub struct Change<'a> {
    pub operator: &'a str,
    pub request_id: &'a str,
    pub reason: &'a str,
    pub at: &'a str,
}

/// Records a transfer, and its first version.
pub fn put_transfer(conn: &Connection, id: &str, t: &Transfer, by: &Change<'_>) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO round_transfers (round_id, from_region, to_region, amount_fen, reference, recorded_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![id, t.from, t.to, t.amount_fen, t.reference, by.at])?;
    put_version(conn, id, t, 1, by)
}

fn put_version(
    conn: &Connection,
    id: &str,
    t: &Transfer,
    version: u32,
    by: &Change<'_>,
) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO round_transfer_versions (round_id, from_region, to_region, version, amount_fen, reference, reason, operator, request_id, at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?
    .execute(params![id, t.from, t.to, version, t.amount_fen, t.reference, by.reason, by.operator, by.request_id, by.at])?;
    Ok(())
}

/// Replaces a recorded transfer's reference, keeping the old one as an earlier version.
/// NOT_FOUND when the round has no such transfer.
pub fn correct_transfer(
    conn: &Connection,
    id: &str,
    from: &str,
    to: &str,
    reference: &str,
    by: &Change<'_>,
) -> Result<Transfer> {
    let current = transfers(conn, id)?
        .into_iter()
        .find(|t| t.from == from && t.to == to)
        .ok_or_else(|| {
            Error::NotFound(format!(
                "round {id} has no recorded transfer {from} → {to}; record it with RecordTransfer first"
            ))
        })?;
    let last: u32 = conn
        .prepare_cached("SELECT COALESCE(MAX(version), 0) FROM round_transfer_versions WHERE round_id = ?1 AND from_region = ?2 AND to_region = ?3")?
        .query_row(params![id, from, to], |r| r.get(0))?;
    let corrected = Transfer {
        reference: reference.to_owned(),
        ..current
    };
    conn.prepare_cached(
        "UPDATE round_transfers SET reference = ?4 WHERE round_id = ?1 AND from_region = ?2 AND to_region = ?3",
    )?
    .execute(params![id, from, to, reference])?;
    put_version(conn, id, &corrected, last + 1, by)?;
    Ok(corrected)
}

/// One stored version of a transfer's record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferVersion {
    pub from: String,
    pub to: String,
    pub version: u32,
    pub amount_fen: i64,
    pub reference: String,
    pub reason: String,
    pub operator: String,
    pub request_id: String,
    pub at: String,
}

/// Every version of every transfer of a round, by (from, to, version).
pub fn transfer_versions(conn: &Connection, id: &str) -> Result<Vec<TransferVersion>> {
    Ok(conn
        .prepare_cached(
            "SELECT from_region, to_region, version, amount_fen, reference, reason, operator, request_id, at \
             FROM round_transfer_versions WHERE round_id = ?1 ORDER BY from_region, to_region, version",
        )?
        .query_map([id], |r| {
            Ok(TransferVersion {
                from: r.get(0)?,
                to: r.get(1)?,
                version: r.get(2)?,
                amount_fen: r.get(3)?,
                reference: r.get(4)?,
                reason: r.get(5)?,
                operator: r.get(6)?,
                request_id: r.get(7)?,
                at: r.get(8)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?)
}

#[cfg(test)]
mod tests {
    use rusqlite::Connection;
    use yidi_common::round_state::RoundState;

    use crate::store::Store;

    /// The store refuses a move the round's state machine does not list, and keeps the
    /// round as it was.
    #[test]
    fn a_settled_round_cannot_move_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Opening the store creates and migrates it; the test then works on the file.
        let _store = Store::open_coordinator(dir.path(), 1, "330000").expect("store");
        let conn = Connection::open(dir.path().join("coordinator.db")).expect("open");
        conn.execute(
            "INSERT INTO rounds (round_id, period, state, note, created_at, updated_at) \
             VALUES ('2026-05-r1', '2026-05', 'SETTLED', 'every transfer recorded', 't0', 't1')",
            [],
        )
        .expect("a settled round");
        let e = super::set_state(&conn, "2026-05-r1", RoundState::Collecting, "", "t")
            .expect_err("SETTLED is final");
        assert_eq!(
            e.to_string(),
            "round 2026-05-r1 is SETTLED; it cannot become COLLECTING"
        );
        let (state, note): (String, String) = conn
            .query_row(
                "SELECT state, note FROM rounds WHERE round_id = '2026-05-r1'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .expect("kept");
        assert_eq!(
            (state.as_str(), note.as_str()),
            ("SETTLED", "every transfer recorded")
        );
    }
}
