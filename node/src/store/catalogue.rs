//! The local catalogue (就医地三项目录: drugs, services, materials) in the store.

use chrono::NaiveDate;
use rusqlite::{Connection, OptionalExtension, Row, params};
use rust_decimal::Decimal;
use yidi_common::types::{CatalogueClass, ItemCategory};

use super::{Upsert, column_enum};
use crate::Result;

/// A catalogue item as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogueRec {
    pub code: String,
    pub name: String,
    pub category: ItemCategory,
    pub class: CatalogueClass,
    pub first_selfpay_ratio: Decimal,
    pub price_cap_fen: Option<i64>,
    pub unit: String,
    pub valid_from: NaiveDate,
    pub valid_to: Option<NaiveDate>,
    /// May be billed at 0.00.
    pub free_of_charge: bool,
}

const COLUMNS: &str = "code, name, category, class, first_selfpay_ratio, price_cap_fen, unit, valid_from, valid_to, free_of_charge";

fn from_row(r: &Row<'_>) -> rusqlite::Result<CatalogueRec> {
    let ratio: String = r.get(4)?;
    Ok(CatalogueRec {
        code: r.get(0)?,
        name: r.get(1)?,
        category: column_enum(r, 2, ItemCategory::parse)?,
        class: column_enum(r, 3, CatalogueClass::parse)?,
        first_selfpay_ratio: ratio.parse().map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(4, rusqlite::types::Type::Text, Box::new(e))
        })?,
        price_cap_fen: r.get(5)?,
        unit: r.get(6)?,
        valid_from: r.get(7)?,
        valid_to: r.get(8)?,
        free_of_charge: r.get(9)?,
    })
}

/// The item with this code.
pub fn get(conn: &Connection, code: &str) -> Result<Option<CatalogueRec>> {
    Ok(conn
        .prepare_cached(&format!("SELECT {COLUMNS} FROM catalogue WHERE code = ?1"))?
        .query_row([code], from_row)
        .optional()?)
}

/// Inserts or replaces an item, reporting what changed.
pub fn upsert(conn: &Connection, rec: &CatalogueRec) -> Result<Upsert> {
    let outcome = match get(conn, &rec.code)? {
        None => Upsert::Inserted,
        Some(existing) if existing == *rec => return Ok(Upsert::Unchanged),
        Some(_) => Upsert::Updated,
    };
    conn.prepare_cached(&format!(
        "INSERT OR REPLACE INTO catalogue ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
    ))?
    .execute(params![
        rec.code,
        rec.name,
        rec.category.as_str(),
        rec.class.as_str(),
        rec.first_selfpay_ratio.to_string(),
        rec.price_cap_fen,
        rec.unit,
        rec.valid_from,
        rec.valid_to,
        rec.free_of_charge
    ])?;
    Ok(outcome)
}

/// One page of items in code order after `after`, and the total matching.
pub fn list(
    conn: &Connection,
    class: Option<CatalogueClass>,
    after: &str,
    limit: u32,
) -> Result<(Vec<CatalogueRec>, u64)> {
    let c = class.map(CatalogueClass::as_str);
    let rows = conn
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM catalogue WHERE (?1 IS NULL OR class = ?1) AND code > ?2 ORDER BY code LIMIT ?3"
        ))?
        .query_map(params![c, after, limit], from_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let total = conn
        .prepare_cached("SELECT COUNT(*) FROM catalogue WHERE (?1 IS NULL OR class = ?1)")?
        .query_row([c], |r| r.get(0))?;
    Ok((rows, total))
}
