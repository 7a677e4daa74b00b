//! Visits and their fee lines at the treatment node.

use rusqlite::{Connection, OptionalExtension, params};

use super::states::VisitState;
use crate::Result;

/// A visit (registration or admission) at one of this region's institutions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VisitRec {
    pub visit_id: String,
    pub institution_code: String,
    pub id_number: String,
    pub home_region: String,
    pub visit_kind: String,
    pub level: String,
    pub external_visit_no: String,
    pub diagnosis_code: String,
    pub state: VisitState,
    pub opened_at: String,
    pub visit_date: String,
    pub closed_at: Option<String>,
    /// Encoded `EligibilityResponse` from the home node when the visit was opened.
    pub home_snapshot: Vec<u8>,
}

const COLUMNS: &str = "visit_id, institution_code, id_number, home_region, visit_kind, level, external_visit_no, \
                       diagnosis_code, state, opened_at, visit_date, closed_at, home_snapshot";

fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<VisitRec> {
    Ok(VisitRec {
        visit_id: r.get(0)?,
        institution_code: r.get(1)?,
        id_number: r.get(2)?,
        home_region: r.get(3)?,
        visit_kind: r.get(4)?,
        level: r.get(5)?,
        external_visit_no: r.get(6)?,
        diagnosis_code: r.get(7)?,
        state: r.get(8)?,
        opened_at: r.get(9)?,
        visit_date: r.get(10)?,
        closed_at: r.get(11)?,
        home_snapshot: r.get(12)?,
    })
}

/// Records a new visit with a fresh sequence number.
pub fn insert(conn: &Connection, seq: i64, v: &VisitRec) -> Result<()> {
    conn.prepare_cached(&format!("INSERT INTO visits (seq, {COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)"))?
        .execute(params![
            seq,
            v.visit_id,
            v.institution_code,
            v.id_number,
            v.home_region,
            v.visit_kind,
            v.level,
            v.external_visit_no,
            v.diagnosis_code,
            v.state,
            v.opened_at,
            v.visit_date,
            v.closed_at,
            v.home_snapshot
        ])?;
    Ok(())
}

/// The visit with this id.
pub fn get(conn: &Connection, visit_id: &str) -> Result<Option<VisitRec>> {
    Ok(conn
        .prepare_cached(&format!("SELECT {COLUMNS} FROM visits WHERE visit_id = ?1"))?
        .query_row([visit_id], from_row)
        .optional()?)
}

/// Sets a visit's state (and closing time when given).
pub fn set_state(
    conn: &Connection,
    visit_id: &str,
    state: VisitState,
    closed_at: Option<&str>,
) -> Result<()> {
    conn.prepare_cached(
        "UPDATE visits SET state = ?2, closed_at = COALESCE(?3, closed_at) WHERE visit_id = ?1",
    )?
    .execute(params![visit_id, state, closed_at])?;
    Ok(())
}

/// Opens a closed visit again (its discharge undone): open, with no closing time.
pub fn reopen(conn: &Connection, visit_id: &str) -> Result<()> {
    conn.prepare_cached("UPDATE visits SET state = ?2, closed_at = NULL WHERE visit_id = ?1")?
        .execute(params![visit_id, VisitState::Open])?;
    Ok(())
}

/// Records a visit's main diagnosis and the institution's visit number.
pub fn set_info(
    conn: &Connection,
    visit_id: &str,
    diagnosis_code: &str,
    external_visit_no: &str,
) -> Result<()> {
    conn.prepare_cached(
        "UPDATE visits SET diagnosis_code = ?2, external_visit_no = ?3 WHERE visit_id = ?1",
    )?
    .execute(params![visit_id, diagnosis_code, external_visit_no])?;
    Ok(())
}

/// A classified fee line as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineRec {
    pub line_no: String,
    pub item_code: String,
    pub item_name: String,
    pub class: String,
    pub first_selfpay_ratio: String,
    pub price_cap_fen: Option<i64>,
    pub quantity: String,
    pub unit_price_fen: i64,
    pub amount_fen: i64,
    pub service_date: String,
}

/// The visit's lines in upload order of line number.
pub fn lines(conn: &Connection, visit_id: &str) -> Result<Vec<LineRec>> {
    Ok(conn
        .prepare_cached(
            "SELECT line_no, item_code, item_name, class, first_selfpay_ratio, price_cap_fen, quantity, unit_price_fen, \
             amount_fen, service_date FROM fee_lines WHERE visit_id = ?1 ORDER BY line_no",
        )?
        .query_map([visit_id], |r| {
            Ok(LineRec {
                line_no: r.get(0)?,
                item_code: r.get(1)?,
                item_name: r.get(2)?,
                class: r.get(3)?,
                first_selfpay_ratio: r.get(4)?,
                price_cap_fen: r.get(5)?,
                quantity: r.get(6)?,
                unit_price_fen: r.get(7)?,
                amount_fen: r.get(8)?,
                service_date: r.get(9)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?)
}

/// Adds a line; the caller has checked that its number is new.
pub fn insert_line(conn: &Connection, visit_id: &str, l: &LineRec) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO fee_lines (visit_id, line_no, item_code, item_name, class, first_selfpay_ratio, price_cap_fen, \
         quantity, unit_price_fen, amount_fen, service_date) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )?
    .execute(params![
        visit_id,
        l.line_no,
        l.item_code,
        l.item_name,
        l.class,
        l.first_selfpay_ratio,
        l.price_cap_fen,
        l.quantity,
        l.unit_price_fen,
        l.amount_fen,
        l.service_date
    ])?;
    Ok(())
}

/// Removes lines (all when `line_nos` is empty); returns how many went.
pub fn delete_lines(conn: &Connection, visit_id: &str, line_nos: &[String]) -> Result<usize> {
    if line_nos.is_empty() {
        return Ok(conn
            .prepare_cached("DELETE FROM fee_lines WHERE visit_id = ?1")?
            .execute([visit_id])?);
    }
    let mut n = 0;
    for no in line_nos {
        n += conn
            .prepare_cached("DELETE FROM fee_lines WHERE visit_id = ?1 AND line_no = ?2")?
            .execute(params![visit_id, no])?;
    }
    Ok(n)
}
