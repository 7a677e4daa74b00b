//! Benefit policy versions (待遇政策) in the store. Versions are immutable once
//! published; the one in force on a date is the latest `effective_from <= date`, ties
//! going to the higher version.

use chrono::NaiveDate;
use rusqlite::{Connection, OptionalExtension, Row, params};
use yidi_common::types::InsuranceType;

use super::column_enum;
use crate::Result;

/// A published version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyRec {
    pub insurance_type: InsuranceType,
    pub version: u32,
    pub effective_from: NaiveDate,
    pub policy_json: String,
    pub digest: String,
    pub published_at: String,
    pub note: String,
}

const COLUMNS: &str =
    "insurance_type, version, effective_from, policy_json, digest, published_at, note";

fn from_row(r: &Row<'_>) -> rusqlite::Result<PolicyRec> {
    Ok(PolicyRec {
        insurance_type: column_enum(r, 0, InsuranceType::parse)?,
        version: r.get(1)?,
        effective_from: r.get(2)?,
        policy_json: r.get(3)?,
        digest: r.get(4)?,
        published_at: r.get(5)?,
        note: r.get(6)?,
    })
}

/// Publishes the next version for the insurance type and returns it.
pub fn publish(conn: &Connection, mut rec: PolicyRec) -> Result<PolicyRec> {
    rec.version = conn
        .prepare_cached(
            "SELECT COALESCE(MAX(version), 0) + 1 FROM policies WHERE insurance_type = ?1",
        )?
        .query_row([rec.insurance_type.as_str()], |r| r.get(0))?;
    conn.prepare_cached(&format!(
        "INSERT INTO policies ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
    ))?
    .execute(params![
        rec.insurance_type.as_str(),
        rec.version,
        rec.effective_from,
        rec.policy_json,
        rec.digest,
        rec.published_at,
        rec.note
    ])?;
    Ok(rec)
}

/// The version in force on `date`.
pub fn in_force(
    conn: &Connection,
    it: InsuranceType,
    date: NaiveDate,
) -> Result<Option<PolicyRec>> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM policies WHERE insurance_type = ?1 AND effective_from <= ?2 \
             ORDER BY effective_from DESC, version DESC LIMIT 1"
        ))?
        .query_row(params![it.as_str(), date], from_row)
        .optional()?)
}

/// The number of the version in force on `date`, without its text: the hot path finds
/// the parsed policy in the cache by it and reads the JSON (kilobytes, on overflow
/// pages) only the first time.
pub fn version_in_force(
    conn: &Connection,
    it: InsuranceType,
    date: NaiveDate,
) -> Result<Option<u32>> {
    Ok(conn
        .prepare_cached(
            "SELECT version FROM policies WHERE insurance_type = ?1 AND effective_from <= ?2 \
             ORDER BY effective_from DESC, version DESC LIMIT 1",
        )?
        .query_row(params![it.as_str(), date], |r| r.get(0))
        .optional()?)
}

/// A specific version.
pub fn get(conn: &Connection, it: InsuranceType, version: u32) -> Result<Option<PolicyRec>> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM policies WHERE insurance_type = ?1 AND version = ?2"
        ))?
        .query_row(params![it.as_str(), version], from_row)
        .optional()?)
}

/// All versions, optionally of one insurance type.
pub fn list(conn: &Connection, it: Option<InsuranceType>) -> Result<Vec<PolicyRec>> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM policies WHERE (?1 IS NULL OR insurance_type = ?1) ORDER BY insurance_type, version"
        ))?
        .query_map([it.map(InsuranceType::as_str)], from_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?)
}

/// Keeps a home region's policy version fetched from its node (idempotent: versions are
/// immutable).
pub fn keep_peer_policy(
    conn: &Connection,
    region: &str,
    it: InsuranceType,
    version: u32,
    policy_json: &str,
    fetched_at: &str,
) -> Result<()> {
    conn.prepare_cached(
        "INSERT OR IGNORE INTO peer_policies (region, insurance_type, version, policy_json, fetched_at) \
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![region, it.as_str(), version, policy_json, fetched_at])?;
    Ok(())
}

/// Every kept peer policy version: (region, insurance type, version, JSON).
pub fn peer_policies(conn: &Connection) -> Result<Vec<(String, InsuranceType, u32, String)>> {
    Ok(conn
        .prepare_cached(
            "SELECT region, insurance_type, version, policy_json FROM peer_policies \
             ORDER BY region, insurance_type, version",
        )?
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                column_enum(r, 1, InsuranceType::parse)?,
                r.get(2)?,
                r.get(3)?,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?)
}
