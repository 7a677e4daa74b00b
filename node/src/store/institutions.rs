//! Designated institutions (定点医疗机构 / 定点零售药店) in the store.

use chrono::NaiveDate;
use rusqlite::{Connection, OptionalExtension, Row, params};
use yidi_common::types::{AgreementStatus, HospitalLevel, InstitutionKind};

use super::{Upsert, column_enum};
use crate::Result;

/// An institution as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstitutionRec {
    pub code: String,
    pub name: String,
    pub kind: InstitutionKind,
    pub level: HospitalLevel,
    pub agreement_status: AgreementStatus,
    pub agreement_from: NaiveDate,
    pub agreement_to: Option<NaiveDate>,
}

const COLUMNS: &str = "code, name, kind, level, agreement_status, agreement_from, agreement_to";

fn from_row(r: &Row<'_>) -> rusqlite::Result<InstitutionRec> {
    Ok(InstitutionRec {
        code: r.get(0)?,
        name: r.get(1)?,
        kind: column_enum(r, 2, InstitutionKind::parse)?,
        level: column_enum(r, 3, HospitalLevel::parse)?,
        agreement_status: column_enum(r, 4, AgreementStatus::parse)?,
        agreement_from: r.get(5)?,
        agreement_to: r.get(6)?,
    })
}

/// The institution with this code.
pub fn get(conn: &Connection, code: &str) -> Result<Option<InstitutionRec>> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM institutions WHERE code = ?1"
        ))?
        .query_row([code], from_row)
        .optional()?)
}

/// Inserts or replaces an institution, reporting what changed.
pub fn upsert(conn: &Connection, rec: &InstitutionRec) -> Result<Upsert> {
    let outcome = match get(conn, &rec.code)? {
        None => Upsert::Inserted,
        Some(existing) if existing == *rec => return Ok(Upsert::Unchanged),
        Some(_) => Upsert::Updated,
    };
    conn.prepare_cached(&format!(
        "INSERT OR REPLACE INTO institutions ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
    ))?
    .execute(params![
        rec.code,
        rec.name,
        rec.kind.as_str(),
        rec.level.as_str(),
        rec.agreement_status.as_str(),
        rec.agreement_from,
        rec.agreement_to
    ])?;
    Ok(outcome)
}

/// One page of institutions in code order after `after`.
pub fn list(conn: &Connection, after: &str, limit: u32) -> Result<Vec<InstitutionRec>> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM institutions WHERE code > ?1 ORDER BY code LIMIT ?2"
        ))?
        .query_map(params![after, limit], from_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?)
}
