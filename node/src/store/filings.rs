//! Cross-region filings (异地就医备案) in the store.

use chrono::NaiveDate;
use rusqlite::{Connection, OptionalExtension, Row, params};
use yidi_common::types::{FilingStatus, FilingType};

use super::column_enum;
use crate::{Error, Result};

/// A filing as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilingRec {
    pub filing_id: String,
    pub id_number: String,
    pub filing_type: FilingType,
    pub treatment_region: String,
    pub institutions: Vec<String>,
    pub valid_from: NaiveDate,
    pub valid_to: Option<NaiveDate>,
    pub status: FilingStatus,
    pub note: String,
    pub applied_at: String,
    pub decided_at: Option<String>,
}

const COLUMNS: &str = "filing_id, id_number, filing_type, treatment_region, institutions, valid_from, valid_to, status, \
                       note, applied_at, decided_at";

fn from_row(r: &Row<'_>) -> rusqlite::Result<FilingRec> {
    let institutions: String = r.get(4)?;
    Ok(FilingRec {
        filing_id: r.get(0)?,
        id_number: r.get(1)?,
        filing_type: column_enum(r, 2, FilingType::parse)?,
        treatment_region: r.get(3)?,
        institutions: institutions
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        valid_from: r.get(5)?,
        valid_to: r.get(6)?,
        status: column_enum(r, 7, FilingStatus::parse)?,
        note: r.get(8)?,
        applied_at: r.get(9)?,
        decided_at: r.get(10)?,
    })
}

/// Records a new application and assigns its id `<region>-F-<sequence>`.
pub fn insert_new(conn: &Connection, region: &str, mut rec: FilingRec) -> Result<FilingRec> {
    let seq: i64 = conn
        .prepare_cached("SELECT COALESCE(MAX(seq), 0) + 1 FROM filings")?
        .query_row([], |r| r.get(0))?;
    rec.filing_id = format!("{region}-F-{seq:06}");
    conn.prepare_cached(&format!(
        "INSERT INTO filings (seq, {COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"
    ))?
    .execute(params![
        seq,
        rec.filing_id,
        rec.id_number,
        rec.filing_type.as_str(),
        rec.treatment_region,
        rec.institutions.join(","),
        rec.valid_from,
        rec.valid_to,
        rec.status.as_str(),
        rec.note,
        rec.applied_at,
        rec.decided_at
    ])?;
    Ok(rec)
}

/// The filing with this id.
pub fn get(conn: &Connection, filing_id: &str) -> Result<Option<FilingRec>> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM filings WHERE filing_id = ?1"
        ))?
        .query_row([filing_id], from_row)
        .optional()?)
}

/// Moves a filing from one of `from` to `to`; FAILED_PRECONDITION otherwise.
pub fn transition(
    conn: &Connection,
    filing_id: &str,
    from: FilingStatus,
    to: FilingStatus,
    note: &str,
    now: &str,
) -> Result<FilingRec> {
    let current =
        get(conn, filing_id)?.ok_or_else(|| Error::NotFound(format!("no filing {filing_id}")))?;
    if current.status != from {
        return Err(Error::FailedPrecondition(format!(
            "filing {filing_id} is {}, only a {} filing can become {}",
            current.status, from, to
        )));
    }
    conn.prepare_cached(
        "UPDATE filings SET status = ?2, note = ?3, decided_at = ?4 WHERE filing_id = ?1",
    )?
    .execute(params![filing_id, to.as_str(), note, now])?;
    get(conn, filing_id)?.ok_or_else(|| Error::Internal(format!("filing {filing_id} vanished")))
}

/// Filters of a filing listing.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub id_number: Option<String>,
    pub status: Option<FilingStatus>,
    pub treatment_region: Option<String>,
}

/// A person's approved filings for care in `treatment`. Every eligibility check and
/// every claim asks this, so it goes through the `(id_number, status)` index: the
/// optional filters of [`list`] (`?1 IS NULL OR …`) make SQLite scan every filing.
pub fn approved_for(conn: &Connection, id_number: &str, treatment: &str) -> Result<Vec<FilingRec>> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM filings WHERE id_number = ?1 AND status = ?2 AND treatment_region = ?3 \
             ORDER BY filing_id"
        ))?
        .query_map(
            params![id_number, FilingStatus::Approved.as_str(), treatment],
            from_row,
        )?
        .collect::<rusqlite::Result<Vec<_>>>()?)
}

/// One page of filings in id order after `after`.
pub fn list(
    conn: &Connection,
    filter: &ListFilter,
    after: &str,
    limit: u32,
) -> Result<Vec<FilingRec>> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM filings WHERE (?1 IS NULL OR id_number = ?1) AND (?2 IS NULL OR status = ?2) \
             AND (?3 IS NULL OR treatment_region = ?3) AND filing_id > ?4 ORDER BY filing_id LIMIT ?5"
        ))?
        .query_map(
            params![filter.id_number, filter.status.map(FilingStatus::as_str), filter.treatment_region, after, limit],
            from_row,
        )?
        .collect::<rusqlite::Result<Vec<_>>>()?)
}
