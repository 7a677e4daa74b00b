//! Reserves (储备金) between a home and a treatment region, and audit deductions
//! (审核扣款) on settlements treated here.

use rusqlite::{Connection, OptionalExtension, params};

use crate::{Error, Result};

/// A reserve balance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reserve {
    pub home_region: String,
    pub treatment_region: String,
    pub balance_fen: i64,
    pub alarm_fen: i64,
}

impl Reserve {
    /// Below its alarm threshold.
    #[must_use]
    pub fn alarm(&self) -> bool {
        self.alarm_fen > 0 && self.balance_fen < self.alarm_fen
    }
}

/// The reserve of `home` at `treatment` (zero if none yet).
pub fn reserve(conn: &Connection, home: &str, treatment: &str) -> Result<Reserve> {
    Ok(conn
        .prepare_cached(
            "SELECT balance_fen, alarm_fen FROM reserves WHERE home_region = ?1 AND treatment_region = ?2",
        )?
        .query_row(params![home, treatment], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?
        .map_or_else(
            || Reserve { home_region: home.into(), treatment_region: treatment.into(), balance_fen: 0, alarm_fen: 0 },
            |(balance_fen, alarm_fen)| Reserve { home_region: home.into(), treatment_region: treatment.into(), balance_fen, alarm_fen },
        ))
}

/// Moves a reserve balance by `delta_fen` (top-up +, use −), optionally setting its
/// alarm threshold. A use never takes the balance below zero.
pub fn move_reserve(
    conn: &Connection,
    home: &str,
    treatment: &str,
    delta_fen: i64,
    alarm_fen: Option<i64>,
) -> Result<Reserve> {
    let mut r = reserve(conn, home, treatment)?;
    if r.balance_fen + delta_fen < 0 {
        return Err(Error::FailedPrecondition(format!(
            "the reserve of {home} at {treatment} holds {}; it cannot pay {}",
            yidi_common::money::format(yidi_common::money::from_fen(r.balance_fen)),
            yidi_common::money::format(yidi_common::money::from_fen(-delta_fen))
        )));
    }
    r.balance_fen += delta_fen;
    if let Some(a) = alarm_fen {
        r.alarm_fen = a;
    }
    conn.prepare_cached(
        "INSERT INTO reserves (home_region, treatment_region, balance_fen, alarm_fen) VALUES (?1, ?2, ?3, ?4) \
         ON CONFLICT (home_region, treatment_region) DO UPDATE SET balance_fen = excluded.balance_fen, alarm_fen = excluded.alarm_fen",
    )?
    .execute(params![home, treatment, r.balance_fen, r.alarm_fen])?;
    Ok(r)
}

/// Every reserve this node knows.
pub fn reserves(conn: &Connection) -> Result<Vec<Reserve>> {
    Ok(conn
        .prepare_cached("SELECT home_region, treatment_region, balance_fen, alarm_fen FROM reserves ORDER BY home_region, treatment_region")?
        .query_map([], |r| Ok(Reserve { home_region: r.get(0)?, treatment_region: r.get(1)?, balance_fen: r.get(2)?, alarm_fen: r.get(3)? }))?
        .collect::<rusqlite::Result<_>>()?)
}

/// An audit deduction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeductionRec {
    pub deduction_id: String,
    pub settlement_id: String,
    pub institution_code: String,
    pub home_region: String,
    pub amount_fen: i64,
    pub reason: String,
    pub created_at: String,
    pub period: String,
}

/// Records a deduction.
pub fn insert_deduction(conn: &Connection, d: &DeductionRec) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO deductions (deduction_id, settlement_id, institution_code, home_region, amount_fen, reason, created_at, period) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![d.deduction_id, d.settlement_id, d.institution_code, d.home_region, d.amount_fen, d.reason, d.created_at, d.period])?;
    Ok(())
}

/// Σ of deductions already made on a settlement.
pub fn deducted_fen(conn: &Connection, settlement_id: &str) -> Result<i64> {
    Ok(conn
        .prepare_cached(
            "SELECT COALESCE(SUM(amount_fen), 0) FROM deductions WHERE settlement_id = ?1",
        )?
        .query_row([settlement_id], |r| r.get(0))?)
}

/// Deductions matching the optional filters, oldest first.
pub fn deductions(
    conn: &Connection,
    settlement: Option<&str>,
    institution: Option<&str>,
    period: Option<&str>,
) -> Result<Vec<DeductionRec>> {
    Ok(conn
        .prepare_cached(
            "SELECT deduction_id, settlement_id, institution_code, home_region, amount_fen, reason, created_at, period FROM deductions \
             WHERE (?1 IS NULL OR settlement_id = ?1) AND (?2 IS NULL OR institution_code = ?2) AND (?3 IS NULL OR period = ?3) \
             ORDER BY created_at, deduction_id",
        )?
        .query_map(params![settlement, institution, period], |r| {
            Ok(DeductionRec {
                deduction_id: r.get(0)?,
                settlement_id: r.get(1)?,
                institution_code: r.get(2)?,
                home_region: r.get(3)?,
                amount_fen: r.get(4)?,
                reason: r.get(5)?,
                created_at: r.get(6)?,
                period: r.get(7)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?)
}
