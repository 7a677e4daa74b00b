//! Insured persons (参保人员) in the store.

use chrono::NaiveDate;
use rusqlite::{Connection, OptionalExtension, Row, params};
use yidi_common::types::{InsuranceType, PersonStatus, PersonType};

use super::{Upsert, column_enum};
use crate::{Error, Result};

/// A person's enrolment as stored; validated before it gets here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersonRec {
    pub id_number: String,
    pub name: String,
    pub card_no: Option<String>,
    pub insurance_type: InsuranceType,
    pub person_type: PersonType,
    pub civil_servant: bool,
    pub status: PersonStatus,
    pub account_fen: i64,
    pub enrolled_since: NaiveDate,
}

/// A stored person with its timestamps.
#[derive(Debug, Clone)]
pub struct StoredPerson {
    pub rec: PersonRec,
    pub created_at: String,
    pub updated_at: String,
}

const COLUMNS: &str = "id_number, name, card_no, insurance_type, person_type, civil_servant, status, account_fen, \
                       enrolled_since, created_at, updated_at";

fn from_row(r: &Row<'_>) -> rusqlite::Result<StoredPerson> {
    let text = |i: usize| -> rusqlite::Result<String> { r.get(i) };
    Ok(StoredPerson {
        rec: PersonRec {
            id_number: text(0)?,
            name: text(1)?,
            card_no: r.get(2)?,
            insurance_type: column_enum(r, 3, InsuranceType::parse)?,
            person_type: column_enum(r, 4, PersonType::parse)?,
            civil_servant: r.get(5)?,
            status: column_enum(r, 6, PersonStatus::parse)?,
            account_fen: r.get(7)?,
            enrolled_since: r.get(8)?,
        },
        created_at: text(9)?,
        updated_at: text(10)?,
    })
}

/// The person with this ID number.
pub fn get(conn: &Connection, id_number: &str) -> Result<Option<StoredPerson>> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM persons WHERE id_number = ?1"
        ))?
        .query_row([id_number], from_row)
        .optional()?)
}

/// The person holding this card.
pub fn get_by_card(conn: &Connection, card_no: &str) -> Result<Option<StoredPerson>> {
    Ok(conn
        .prepare_cached(&format!("SELECT {COLUMNS} FROM persons WHERE card_no = ?1"))?
        .query_row([card_no], from_row)
        .optional()?)
}

fn check_card_free(conn: &Connection, rec: &PersonRec) -> Result<()> {
    if let Some(card) = &rec.card_no
        && let Some(holder) = get_by_card(conn, card)?
        && holder.rec.id_number != rec.id_number
    {
        return Err(Error::AlreadyExists(format!(
            "card_no {card} already belongs to another person"
        )));
    }
    Ok(())
}

/// Inserts a new person; ALREADY_EXISTS if the ID number or card is taken.
pub fn insert(conn: &Connection, rec: &PersonRec, now: &str) -> Result<()> {
    if get(conn, &rec.id_number)?.is_some() {
        return Err(Error::AlreadyExists(format!(
            "person {} is already enrolled; use UpdatePerson to change the enrolment",
            rec.id_number
        )));
    }
    check_card_free(conn, rec)?;
    insert_row(conn, rec, now)?;
    Ok(())
}

/// The INSERT of a person (with its look-up digest), checks left to the caller.
fn insert_row(conn: &Connection, rec: &PersonRec, now: &str) -> rusqlite::Result<usize> {
    conn.prepare_cached(&format!(
        "INSERT INTO persons (lookup_hash, {COLUMNS}) VALUES (?11, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?10)"
    ))?
    .execute(params![
        rec.id_number,
        rec.name,
        rec.card_no,
        rec.insurance_type.as_str(),
        rec.person_type.as_str(),
        rec.civil_servant,
        rec.status.as_str(),
        rec.account_fen,
        rec.enrolled_since,
        now,
        &yidi_common::idnum::lookup_digest(&rec.id_number)[..]
    ])
}

/// The person whose ID number hashes to `hash` (federated look-up by hash: 64 hex
/// characters; anything else finds no one).
pub fn get_by_lookup_hash(conn: &Connection, hash: &str) -> Result<Option<StoredPerson>> {
    let Ok(digest) = hex::decode(hash) else {
        return Ok(None);
    };
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM persons WHERE lookup_hash = ?1"
        ))?
        .query_row([digest], from_row)
        .optional()?)
}

/// Moves a person's personal account by `delta_fen` (negative: paid from it). Only the
/// balance and the time change: a statement naming the other columns would rewrite the
/// person's entries in the card and type indexes too — two more randomly placed pages
/// in every claim's commit. The table's check refuses a negative balance. False if the
/// person is not in the register.
pub fn move_account(conn: &Connection, id_number: &str, delta_fen: i64, now: &str) -> Result<bool> {
    let n = conn
        .prepare_cached(
            "UPDATE persons SET account_fen = account_fen + ?2, updated_at = ?3 WHERE id_number = ?1",
        )?
        .execute(params![id_number, delta_fen, now])?;
    Ok(n > 0)
}

/// Replaces the mutable fields of an existing person; NOT_FOUND if unknown.
pub fn update(conn: &Connection, rec: &PersonRec, now: &str) -> Result<()> {
    check_card_free(conn, rec)?;
    let n = conn
        .prepare_cached(
            "UPDATE persons SET name = ?2, card_no = ?3, insurance_type = ?4, person_type = ?5, civil_servant = ?6, \
             status = ?7, account_fen = ?8, enrolled_since = ?9, updated_at = ?10 WHERE id_number = ?1",
        )?
        .execute(params![
            rec.id_number,
            rec.name,
            rec.card_no,
            rec.insurance_type.as_str(),
            rec.person_type.as_str(),
            rec.civil_servant,
            rec.status.as_str(),
            rec.account_fen,
            rec.enrolled_since,
            now
        ])?;
    if n == 0 {
        return Err(Error::NotFound(format!(
            "no person with id_number {} is enrolled here",
            rec.id_number
        )));
    }
    Ok(())
}

/// Inserts, updates or leaves alone, for idempotent bulk import.
pub fn upsert(conn: &Connection, rec: &PersonRec, now: &str) -> Result<Upsert> {
    match get(conn, &rec.id_number)? {
        None => insert(conn, rec, now).map(|()| Upsert::Inserted),
        Some(existing) if existing.rec == *rec => Ok(Upsert::Unchanged),
        Some(_) => update(conn, rec, now).map(|()| Upsert::Updated),
    }
}

/// What [`import`] did with one row: an upsert, or the card number belongs to someone
/// else (a row error; nothing changed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Imported {
    Done(Upsert),
    CardTaken,
}

/// Bulk-import upsert: one look-up by ID number, then at most one INSERT or UPDATE. The
/// card's uniqueness is left to its UNIQUE index (a violation is reported as
/// [`Imported::CardTaken`]) instead of being looked up first, so a row costs one read
/// and one write — the import of millions of persons is bound by this.
pub fn import(conn: &Connection, rec: &PersonRec, now: &str) -> Result<Imported> {
    let written = match get(conn, &rec.id_number)? {
        Some(existing) if existing.rec == *rec => return Ok(Imported::Done(Upsert::Unchanged)),
        Some(_) => conn
            .prepare_cached(
                "UPDATE persons SET name = ?2, card_no = ?3, insurance_type = ?4, person_type = ?5, civil_servant = ?6, \
                 status = ?7, account_fen = ?8, enrolled_since = ?9, updated_at = ?10 WHERE id_number = ?1",
            )?
            .execute(params![
                rec.id_number,
                rec.name,
                rec.card_no,
                rec.insurance_type.as_str(),
                rec.person_type.as_str(),
                rec.civil_servant,
                rec.status.as_str(),
                rec.account_fen,
                rec.enrolled_since,
                now
            ])
            .map(|_| Upsert::Updated),
        None => insert_row(conn, rec, now).map(|_| Upsert::Inserted),
    };
    match written {
        Ok(u) => Ok(Imported::Done(u)),
        Err(rusqlite::Error::SqliteFailure(e, Some(msg)))
            if e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                && msg.contains("persons.card_no") =>
        {
            Ok(Imported::CardTaken)
        }
        Err(e) => Err(e.into()),
    }
}

/// Filters of a person listing.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub insurance_type: Option<InsuranceType>,
    pub status: Option<PersonStatus>,
}

/// One page of persons ordered by ID number after `after`, and the total matching.
pub fn list(
    conn: &Connection,
    filter: &ListFilter,
    after: &str,
    limit: u32,
) -> Result<(Vec<StoredPerson>, u64)> {
    let it = filter.insurance_type.map(InsuranceType::as_str);
    let st = filter.status.map(PersonStatus::as_str);
    let cond = "(?1 IS NULL OR insurance_type = ?1) AND (?2 IS NULL OR status = ?2)";
    let rows = conn
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM persons WHERE {cond} AND id_number > ?3 ORDER BY id_number LIMIT ?4"
        ))?
        .query_map(params![it, st, after, limit], from_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let total: u64 = conn
        .prepare_cached(&format!("SELECT COUNT(*) FROM persons WHERE {cond}"))?
        .query_row(params![it, st], |r| r.get(0))?;
    Ok((rows, total))
}
