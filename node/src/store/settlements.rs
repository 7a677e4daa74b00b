//! Settlements at the treatment node: the intent recorded before the home node is
//! asked, its outcome, and reversal records. A settled record is never edited except
//! for its state; corrections are new records.

use rusqlite::{Connection, OptionalExtension, params};
use yidi_common::proto;

use super::states::SettlementState;
use crate::Result;

/// A settlement (or reversal) record.
#[derive(Debug, Clone)]
pub struct SettlementRec {
    pub settlement_id: String,
    pub visit_id: String,
    pub institution_code: String,
    pub id_number: String,
    pub home_region: String,
    pub visit_kind: String,
    pub state: SettlementState,
    pub reverses: Option<String>,
    pub request_scope: String,
    pub request_id: String,
    pub payload_hash: String,
    pub split: proto::Split,
    pub medfee_fen: i64,
    pub fund_fen: i64,
    pub acct_fen: i64,
    pub cash_fen: i64,
    pub policy_version: u32,
    pub acc_version: u64,
    pub settled_at: String,
    pub settle_date: String,
    pub period: String,
    pub note: String,
}

const COLUMNS: &str = "settlement_id, visit_id, institution_code, id_number, home_region, visit_kind, state, reverses, \
                       request_scope, request_id, payload_hash, split, medfee_fen, fund_fen, acct_fen, cash_fen, \
                       policy_version, acc_version, settled_at, settle_date, period, note";

fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SettlementRec> {
    let split: Vec<u8> = r.get(11)?;
    Ok(SettlementRec {
        settlement_id: r.get(0)?,
        visit_id: r.get(1)?,
        institution_code: r.get(2)?,
        id_number: r.get(3)?,
        home_region: r.get(4)?,
        visit_kind: r.get(5)?,
        state: r.get(6)?,
        reverses: r.get(7)?,
        request_scope: r.get(8)?,
        request_id: r.get(9)?,
        payload_hash: r.get(10)?,
        split: super::split_codec::decode(&split).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(11, rusqlite::types::Type::Blob, Box::new(e))
        })?,
        medfee_fen: r.get(12)?,
        fund_fen: r.get(13)?,
        acct_fen: r.get(14)?,
        cash_fen: r.get(15)?,
        policy_version: r.get(16)?,
        acc_version: r.get::<_, i64>(17)?.try_into().unwrap_or_default(),
        settled_at: r.get(18)?,
        settle_date: r.get(19)?,
        period: r.get(20)?,
        note: r.get(21)?,
    })
}

/// Records a settlement or reversal with sequence number `seq`.
pub fn insert(conn: &Connection, seq: i64, s: &SettlementRec) -> Result<()> {
    conn.prepare_cached(&format!(
        "INSERT INTO settlements (seq, {COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, \
         ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23)"
    ))?
    .execute(params![
        seq,
        s.settlement_id,
        s.visit_id,
        s.institution_code,
        s.id_number,
        s.home_region,
        s.visit_kind,
        s.state,
        s.reverses,
        s.request_scope,
        s.request_id,
        s.payload_hash,
        super::split_codec::encode(&s.split),
        s.medfee_fen,
        s.fund_fen,
        s.acct_fen,
        s.cash_fen,
        s.policy_version,
        i64::try_from(s.acc_version).unwrap_or(i64::MAX),
        s.settled_at,
        s.settle_date,
        s.period,
        s.note
    ])?;
    Ok(())
}

/// The record with this id.
pub fn get(conn: &Connection, id: &str) -> Result<Option<SettlementRec>> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM settlements WHERE settlement_id = ?1"
        ))?
        .query_row([id], from_row)
        .optional()?)
}

/// The state of the record with this id: a look-up that reads neither its split nor
/// the rest of its row.
pub fn state_of(conn: &Connection, id: &str) -> Result<Option<SettlementState>> {
    Ok(conn
        .prepare_cached("SELECT state FROM settlements WHERE settlement_id = ?1")?
        .query_row([id], |r| r.get(0))
        .optional()?)
}

/// The record created by request `request_id` of `scope`, if any.
pub fn by_request(
    conn: &Connection,
    scope: &str,
    request_id: &str,
) -> Result<Option<SettlementRec>> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM settlements WHERE request_scope = ?1 AND request_id = ?2 ORDER BY seq DESC LIMIT 1"
        ))?
        .query_row(params![scope, request_id], from_row)
        .optional()?)
}

/// The live (not failed) settlement of a visit, if any.
pub fn live_for_visit(conn: &Connection, visit_id: &str) -> Result<Option<SettlementRec>> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM settlements WHERE visit_id = ?1 AND reverses IS NULL AND state NOT IN (?2) \
             ORDER BY seq DESC LIMIT 1"
        ))?
        .query_row(params![visit_id, SettlementState::Failed], from_row)
        .optional()?)
}

/// The reversal record of a settlement, if any.
pub fn reversal_of(conn: &Connection, settlement_id: &str) -> Result<Option<SettlementRec>> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM settlements WHERE reverses = ?1"
        ))?
        .query_row([settlement_id], from_row)
        .optional()?)
}

/// Replaces state, split and amounts of a record (intent → outcome; provisional → final).
pub fn update_outcome(conn: &Connection, s: &SettlementRec) -> Result<()> {
    conn.prepare_cached(
        "UPDATE settlements SET state = ?2, split = ?3, medfee_fen = ?4, fund_fen = ?5, acct_fen = ?6, cash_fen = ?7, \
         policy_version = ?8, acc_version = ?9, note = ?10 WHERE settlement_id = ?1",
    )?
    .execute(params![
        s.settlement_id,
        s.state,
        super::split_codec::encode(&s.split),
        s.medfee_fen,
        s.fund_fen,
        s.acct_fen,
        s.cash_fen,
        s.policy_version,
        i64::try_from(s.acc_version).unwrap_or(i64::MAX),
        s.note
    ])?;
    Ok(())
}

/// Sets only the state.
pub fn set_state(conn: &Connection, id: &str, state: SettlementState) -> Result<()> {
    conn.prepare_cached("UPDATE settlements SET state = ?2 WHERE settlement_id = ?1")?
        .execute(params![id, state])?;
    Ok(())
}

/// Marks an intent failed, unless it is no longer pending (resolved meanwhile): returns
/// whether it was.
pub fn fail_pending(conn: &Connection, id: &str) -> Result<bool> {
    Ok(conn
        .prepare_cached(
            "UPDATE settlements SET state = ?2 WHERE settlement_id = ?1 AND state = ?3",
        )?
        .execute(params![
            id,
            SettlementState::Failed,
            SettlementState::Pending
        ])?
        == 1)
}

/// Every `pending` intent, in order (for recovery): through the partial index of that
/// state (schema 19), which the query names literally to use it.
pub fn pending(conn: &Connection) -> Result<Vec<SettlementRec>> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM settlements WHERE state = 'pending' ORDER BY seq"
        ))?
        .query_map([], from_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?)
}

/// The states of the records that count for reconciliation and for what an institution
/// is paid.
const COUNTED: [SettlementState; 4] = [
    SettlementState::Settled,
    SettlementState::Provisional,
    SettlementState::Cancelled,
    SettlementState::Reversal,
];

/// Records of an institution settled between two UTC+8 dates (inclusive), in order,
/// that count for reconciliation (settled, provisional, cancelled and their reversals).
pub fn for_institution(
    conn: &Connection,
    institution: &str,
    from: &str,
    to: &str,
    after: &str,
    limit: u32,
) -> Result<Vec<SettlementRec>> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM settlements WHERE institution_code = ?1 AND settle_date BETWEEN ?2 AND ?3 \
             AND state IN (?6, ?7, ?8, ?9) AND settlement_id > ?4 ORDER BY settlement_id LIMIT ?5"
        ))?
        .query_map(
            params![
                institution, from, to, after, limit, COUNTED[0], COUNTED[1], COUNTED[2], COUNTED[3]
            ],
            from_row,
        )?
        .collect::<rusqlite::Result<Vec<_>>>()?)
}

/// Sum of the fund share of provisional settlements toward a home region (exposure).
pub fn provisional_exposure_fen(conn: &Connection, home_region: &str) -> Result<i64> {
    Ok(conn
        .prepare_cached("SELECT COALESCE(SUM(fund_fen), 0) FROM settlements WHERE home_region = ?1 AND state = 'provisional'")?
        .query_row(params![home_region], |r| r.get(0))?)
}

/// Fund share of provisional settlements per home region.
pub fn provisional_exposure_by_region(conn: &Connection) -> Result<Vec<(String, i64)>> {
    Ok(conn
        .prepare_cached(
            "SELECT home_region, SUM(fund_fen) FROM settlements WHERE state = 'provisional' GROUP BY home_region ORDER BY home_region",
        )?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<Vec<_>>>()?)
}

/// An institution's settlement and reversal records of a clearing period that count for
/// what it is paid.
pub fn for_institution_period(
    conn: &Connection,
    institution: &str,
    period: &str,
) -> Result<Vec<SettlementRec>> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM settlements WHERE institution_code = ?1 AND period = ?2 \
             AND state IN (?3, ?4, ?5, ?6) ORDER BY seq"
        ))?
        .query_map(
            params![
                institution,
                period,
                COUNTED[0],
                COUNTED[1],
                COUNTED[2],
                COUNTED[3]
            ],
            from_row,
        )?
        .collect::<rusqlite::Result<Vec<_>>>()?)
}
