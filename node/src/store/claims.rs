//! Claims at the home node: what treatment regions (and this region's own institutions)
//! settled for this region's insured persons, with the accumulator change each made.

use rusqlite::{Connection, OptionalExtension, params};
use yidi_common::proto;

use super::{accumulators::Delta, states::ClaimState};
use crate::{Error, Result};

/// A committed claim.
#[derive(Debug, Clone)]
pub struct ClaimRec {
    pub claim_id: String,
    pub treatment_region: String,
    pub id_number: String,
    pub institution_code: String,
    pub visit_kind: String,
    pub settled_at: String,
    pub period: String,
    pub policy_version: u32,
    pub provisional: bool,
    pub split: proto::Split,
    pub fund_fen: i64,
    pub acct_fen: i64,
    pub acc_year: i32,
    pub acc_delta: Delta,
    pub state: ClaimState,
    pub reversal_id: Option<String>,
    pub reversed_at: Option<String>,
}

const COLUMNS: &str = "claim_id, treatment_region, id_number, institution_code, visit_kind, settled_at, period, \
                       policy_version, provisional, split, fund_fen, acct_fen, acc_year, acc_delta, state, reversal_id, \
                       reversed_at";

fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ClaimRec> {
    let conv = |i: usize, e: String| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Blob, e.into())
    };
    let split: Vec<u8> = r.get(9)?;
    let delta: String = r.get(13)?;
    Ok(ClaimRec {
        claim_id: r.get(0)?,
        treatment_region: r.get(1)?,
        id_number: r.get(2)?,
        institution_code: r.get(3)?,
        visit_kind: r.get(4)?,
        settled_at: r.get(5)?,
        period: r.get(6)?,
        policy_version: r.get(7)?,
        provisional: r.get(8)?,
        split: super::split_codec::decode(&split).map_err(|e| conv(9, e.to_string()))?,
        fund_fen: r.get(10)?,
        acct_fen: r.get(11)?,
        acc_year: r.get(12)?,
        acc_delta: serde_json::from_str(&delta).map_err(|e| conv(13, e.to_string()))?,
        state: r.get(14)?,
        reversal_id: r.get(15)?,
        reversed_at: r.get(16)?,
    })
}

/// The claim with this id.
pub fn get(conn: &Connection, claim_id: &str) -> Result<Option<ClaimRec>> {
    Ok(conn
        .prepare_cached(&format!("SELECT {COLUMNS} FROM claims WHERE claim_id = ?1"))?
        .query_row([claim_id], from_row)
        .optional()?)
}

/// Records a new claim.
pub fn insert(conn: &Connection, c: &ClaimRec) -> Result<()> {
    let delta = serde_json::to_string(&c.acc_delta).map_err(|e| Error::Internal(e.to_string()))?;
    conn.prepare_cached(&format!(
        "INSERT INTO claims ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)"
    ))?
    .execute(params![
        c.claim_id,
        c.treatment_region,
        c.id_number,
        c.institution_code,
        c.visit_kind,
        c.settled_at,
        c.period,
        c.policy_version,
        c.provisional,
        super::split_codec::encode(&c.split),
        c.fund_fen,
        c.acct_fen,
        c.acc_year,
        delta,
        c.state,
        c.reversal_id,
        c.reversed_at
    ])?;
    Ok(())
}

/// Marks a claim reversed by `reversal_id`.
pub fn mark_reversed(conn: &Connection, claim_id: &str, reversal_id: &str, at: &str) -> Result<()> {
    conn.prepare_cached(
        "UPDATE claims SET state = ?4, reversal_id = ?2, reversed_at = ?3 WHERE claim_id = ?1",
    )?
    .execute(params![claim_id, reversal_id, at, ClaimState::Reversed])?;
    Ok(())
}

/// True when the treatment region gave up on this claim id.
pub fn is_tombstoned(conn: &Connection, claim_id: &str) -> Result<bool> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM claim_tombstones WHERE claim_id = ?1")?
        .query_row([claim_id], |_| Ok(()))
        .optional()?
        .is_some())
}

/// Records that a claim id must never be committed.
pub fn tombstone(conn: &Connection, claim_id: &str, now: &str) -> Result<()> {
    conn.prepare_cached(
        "INSERT OR IGNORE INTO claim_tombstones (claim_id, created_at) VALUES (?1, ?2)",
    )?
    .execute(params![claim_id, now])?;
    Ok(())
}

/// Sum of the fund share and count of a person's committed claims in a year (for the
/// invariant "accumulators equal the sum of their claims").
pub fn person_totals(conn: &Connection, id_number: &str, year: i32) -> Result<(u64, i64)> {
    Ok(conn
        .prepare_cached(
            "SELECT COUNT(*), COALESCE(SUM(fund_fen), 0) FROM claims WHERE id_number = ?1 AND acc_year = ?2 AND state = ?3",
        )?
        .query_row(params![id_number, year, ClaimState::Committed], |r| Ok((r.get(0)?, r.get(1)?)))?)
}
