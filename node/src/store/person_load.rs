//! The first load of a node's person register (`yidi load-persons`): millions of
//! persons written into an empty register in one transaction, sorted in memory and
//! indexed by SQLite's sorting `CREATE INDEX` instead of row by row.
//!
//! Why a separate path from ImportPersons: the register's keys (ID number, card, the
//! SHA-256 look-up hash) are random, so a row-by-row insert into a large register
//! touches a different page of every B-tree for every row, and each touched page is
//! written out again at every commit; at ten million persons that caps the online
//! import at a few ten thousand rows per second whatever the CPU. Rows inserted in ID
//! order fill the table's pages one after another, and `CREATE INDEX` sorts its keys
//! first and writes each index page once. That needs the register to itself: the node
//! stopped (the data directory lock, [`super::lock`]) and no person in it yet (changes
//! to a populated register go through the online import, which keeps the node serving).
//!
//! The rows wait in memory in a compact encoding ([`Rows`], about 100 bytes a person:
//! a gigabyte for ten million) rather than in a staging table, because sorting whole
//! rows through SQLite's external sorter cost more than everything else together
//! (measured in docs/performance.md). Repeated ID numbers and cards are found there too,
//! so that the rows reaching SQLite are exactly the ones loaded.
//!
//! The load is one transaction in rollback-journal mode: a new store's pages are
//! written once (in WAL mode they would be written to the log and then copied back),
//! and an interrupted load leaves a hot journal that the next open rolls back — all
//! persons or none. The caller switches the store back to WAL afterwards
//! ([`restore_wal`]); the node also does so on every start.

use std::{collections::hash_map::RandomState, hash::BuildHasher};

use chrono::{Datelike, NaiveDate};
use rusqlite::{Connection, TransactionBehavior, params};
use yidi_common::{
    idnum,
    types::{InsuranceType, PersonStatus, PersonType},
};

use super::persons::PersonRec;
use crate::{Error, Result};

/// A row the load refused after reading: a second row for a person or a card.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub line: u64,
    pub field: &'static str,
    pub reason: String,
}

/// What a load wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Loaded {
    pub inserted: u64,
    pub rejected: Vec<Rejected>,
}

/// Where a load is after the file has been read; these steps take a while on a large
/// file and report nothing in between.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Sorting the rows by ID number and finding repeats.
    Sorting { rows: u64 },
    /// Writing the persons into the register in ID number order.
    Writing { rows: u64 },
    /// Building one index: its name, and what it is by.
    Indexing {
        index: &'static str,
        by: &'static str,
    },
    /// Writing the new register to disk.
    Committing,
}

/// The secondary indexes of `persons` with the very text of their migrations, so that
/// a loaded store has the schema a migrated one has (asserted in the tests). They are
/// dropped for the load and built again from the loaded rows.
const SECONDARY_INDEXES: [(&str, &str, &str); 3] = [
    (
        "persons_by_lookup_hash",
        "lookup hash",
        "CREATE UNIQUE INDEX persons_by_lookup_hash ON persons (lookup_hash)",
    ),
    (
        "persons_by_type",
        "insurance type and status",
        "CREATE INDEX persons_by_type ON persons (insurance_type, status)",
    ),
    (
        "persons_by_card",
        "card",
        "CREATE UNIQUE INDEX persons_by_card ON persons (card_no)",
    ),
];

/// Valid rows of the file in a compact encoding, filled by one reading thread each and
/// handed to [`load`] together.
#[derive(Debug, Default)]
pub struct Rows {
    /// Encoded rows (see [`Rows::push`]) in blocks of [`BLOCK`] bytes: a block is never
    /// reallocated, so the memory held is the rows' size, not up to twice it as a
    /// doubling vector's would be.
    blocks: Vec<Vec<u8>>,
    entries: Vec<Entry>,
    /// One row's encoding before it is copied into a block.
    scratch: Vec<u8>,
}

/// Size of an arena block (bits of the offset in [`Entry::at`]).
const BLOCK_BITS: u32 = 22;
const BLOCK: usize = 1 << BLOCK_BITS;

/// One row: its sort key, its line, and where its encoding starts.
#[derive(Debug, Clone, Copy)]
struct Entry {
    /// The ID number as a number that sorts like the text (17 digits, then the check
    /// character with `X` as 10).
    key: u64,
    line: u64,
    /// Part (which [`Rows`]) in the top 16 bits, then the block, then the offset in the
    /// block ([`BLOCK_BITS`]).
    at: u64,
}

const PART_SHIFT: u32 = 48;

fn id_key(id: &str) -> u64 {
    let b = id.as_bytes();
    let digits = b
        .iter()
        .take(17)
        .fold(0u64, |k, d| k * 10 + u64::from(d.wrapping_sub(b'0')));
    digits * 11
        + match b.get(17) {
            Some(b'X') => 10,
            Some(d) => u64::from(d.wrapping_sub(b'0')),
            None => 0,
        }
}

fn position<T: PartialEq>(all: &[T], v: &T) -> u8 {
    all.iter()
        .position(|x| x == v)
        .and_then(|i| u8::try_from(i).ok())
        .unwrap_or(u8::MAX)
}

impl Rows {
    /// Rows held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no row is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Adds a validated row. Encoding: ID number (18 bytes), look-up digest (32),
    /// name (u16 length + bytes), card (u8 length + bytes, 0 = none), the three enums as
    /// positions in their `ALL`, civil servant (1), balance in fen (8), enrolment date
    /// as days from the common era (4).
    pub fn push(&mut self, line: u64, rec: &PersonRec) {
        let a = &mut self.scratch;
        a.clear();
        a.extend_from_slice(rec.id_number.as_bytes());
        a.extend_from_slice(&idnum::lookup_digest(&rec.id_number));
        let name = rec.name.as_bytes();
        a.extend_from_slice(&(name.len() as u16).to_le_bytes());
        a.extend_from_slice(name);
        let card = rec.card_no.as_deref().unwrap_or_default().as_bytes();
        a.push(card.len() as u8);
        a.extend_from_slice(card);
        a.push(position(InsuranceType::ALL, &rec.insurance_type));
        a.push(position(PersonType::ALL, &rec.person_type));
        a.push(position(PersonStatus::ALL, &rec.status));
        a.push(u8::from(rec.civil_servant));
        a.extend_from_slice(&rec.account_fen.to_le_bytes());
        a.extend_from_slice(&rec.enrolled_since.num_days_from_ce().to_le_bytes());
        let fits = self
            .blocks
            .last()
            .is_some_and(|b| b.len() + a.len() <= BLOCK);
        if !fits {
            self.blocks.push(Vec::with_capacity(BLOCK));
        }
        let block_index = self.blocks.len() - 1;
        let block = &mut self.blocks[block_index];
        let at = ((block_index as u64) << BLOCK_BITS) | block.len() as u64;
        block.extend_from_slice(a);
        self.entries.push(Entry {
            key: id_key(&rec.id_number),
            line,
            at,
        });
    }
}

/// The date as chrono writes it into SQLite (`YYYY-MM-DD`), without chrono's format
/// parser for the years of four digits (it showed in the profile of a load).
fn date_text(d: NaiveDate, out: &mut String) {
    out.clear();
    let y = d.year();
    if (0..=9999).contains(&y) {
        let y = y.unsigned_abs();
        for n in [y / 1000, y / 100, y / 10, y] {
            out.push(char::from(b'0' + (n % 10) as u8));
        }
        for (sep, n) in [('-', d.month()), ('-', d.day())] {
            out.push(sep);
            out.push(char::from(b'0' + (n / 10) as u8));
            out.push(char::from(b'0' + (n % 10) as u8));
        }
    } else {
        out.push_str(&d.to_string());
    }
}

/// A decoded row, borrowing from its arena.
struct Row<'a> {
    id_number: &'a str,
    digest: &'a [u8],
    name: &'a str,
    card_no: Option<&'a str>,
    insurance_type: InsuranceType,
    person_type: PersonType,
    status: PersonStatus,
    civil_servant: bool,
    account_fen: i64,
    enrolled_since: NaiveDate,
}

/// Cuts `n` bytes off the front of `b`.
fn take<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8]> {
    if b.len() < n {
        return Err(Error::Internal(
            "a loaded row's encoding is cut short".into(),
        ));
    }
    let (head, tail) = b.split_at(n);
    *b = tail;
    Ok(head)
}

fn text(b: &[u8]) -> Result<&str> {
    std::str::from_utf8(b).map_err(|e| Error::Internal(format!("a loaded row is not UTF-8: {e}")))
}

fn nth<T: Copy>(all: &[T], i: u8) -> Result<T> {
    all.get(usize::from(i))
        .copied()
        .ok_or_else(|| Error::Internal(format!("a loaded row has enum position {i}")))
}

/// The variable-length front of an encoded row, as raw bytes: ID number, digest, name
/// and card (empty: none); `b` is left at the fixed-size rest.
struct Front<'a> {
    id_number: &'a [u8],
    digest: &'a [u8],
    name: &'a [u8],
    card: &'a [u8],
}

fn front<'a>(b: &mut &'a [u8]) -> Result<Front<'a>> {
    let id_number = take(b, 18)?;
    let digest = take(b, 32)?;
    let len = take(b, 2)?;
    let name = take(b, usize::from(u16::from_le_bytes([len[0], len[1]])))?;
    let card_len = take(b, 1)?[0];
    let card = take(b, usize::from(card_len))?;
    Ok(Front {
        id_number,
        digest,
        name,
        card,
    })
}

fn decode(mut b: &[u8]) -> Result<Row<'_>> {
    let b = &mut b;
    let f = front(b)?;
    let card = text(f.card)?;
    let kinds = take(b, 4)?;
    let mut fen = [0u8; 8];
    fen.copy_from_slice(take(b, 8)?);
    let mut days = [0u8; 4];
    days.copy_from_slice(take(b, 4)?);
    Ok(Row {
        id_number: text(f.id_number)?,
        digest: f.digest,
        name: text(f.name)?,
        card_no: (!card.is_empty()).then_some(card),
        insurance_type: nth(InsuranceType::ALL, kinds[0])?,
        person_type: nth(PersonType::ALL, kinds[1])?,
        status: nth(PersonStatus::ALL, kinds[2])?,
        civil_servant: kinds[3] != 0,
        account_fen: i64::from_le_bytes(fen),
        enrolled_since: NaiveDate::from_num_days_from_ce_opt(i32::from_le_bytes(days))
            .ok_or_else(|| Error::Internal("a loaded row has an impossible date".into()))?,
    })
}

fn encoded<'a>(parts: &'a [Rows], e: &Entry) -> &'a [u8] {
    let part = &parts[(e.at >> PART_SHIFT) as usize];
    let block = ((e.at & ((1 << PART_SHIFT) - 1)) >> BLOCK_BITS) as usize;
    let offset = (e.at & ((1 << BLOCK_BITS) - 1)) as usize;
    &part.blocks[block][offset..]
}

fn row_of<'a>(parts: &'a [Rows], e: &Entry) -> Result<Row<'a>> {
    decode(encoded(parts, e))
}

/// Only the card of a row (the repeat check reads every row's card).
fn card_of<'a>(parts: &'a [Rows], e: &Entry) -> Result<Option<&'a str>> {
    let card = text(front(&mut encoded(parts, e))?.card)?;
    Ok((!card.is_empty()).then_some(card))
}

/// Page cache while the rows are written (negative: KiB): 256 MiB, so that fewer dirty
/// pages are spilled to the file in the middle of the write.
const WRITE_CACHE_KIB: i64 = -262_144;

/// Page cache while the indexes are built: SQLite's sorter sizes its in-memory runs by
/// it, and larger runs sort slower (measured: docs/performance.md, "Figures that used
/// to live in code comments").
const SORT_CACHE_KIB: i64 = -65_536;

/// Sets the connection up for a load: rollback journal (the caller holds the data
/// directory lock, so no other connection has the store open), the write's page cache,
/// and helper threads for SQLite's sorter (`CREATE INDEX`).
fn prepare(conn: &Connection) -> Result<()> {
    let mode: String = conn.query_row("PRAGMA journal_mode=DELETE", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("delete") {
        return Err(Error::FailedPrecondition(format!(
            "the store stayed in {mode} journal mode; is another process using it?"
        )));
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.pragma_update(None, "cache_size", WRITE_CACHE_KIB)?;
    conn.pragma_update(None, "threads", 2)?;
    conn.pragma_update(None, "temp_store", "FILE")?;
    Ok(())
}

/// Switches the store back to WAL mode after a load (or a failed one).
pub fn restore_wal(conn: &Connection) -> Result<()> {
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    if mode.eq_ignore_ascii_case("wal") {
        Ok(())
    } else {
        Err(Error::Internal(format!(
            "the store refused to return to WAL mode ({mode})"
        )))
    }
}

/// FAILED_PRECONDITION unless the register is empty; checked before the file is read
/// (to fail at once) and again inside the load's transaction.
pub fn ensure_empty(conn: &Connection) -> Result<()> {
    let existing: u64 = conn.query_row("SELECT COUNT(*) FROM persons", [], |r| r.get(0))?;
    if existing > 0 {
        return Err(Error::FailedPrecondition(format!(
            "the store already has {existing} persons; load-persons fills an empty register \
             (a new node's first load). Import changes into the running node with \
             `yidi admin person import FILE`"
        )));
    }
    Ok(())
}

/// Loads the rows read (one [`Rows`] per reading thread) into the empty register and
/// commits. Rows repeating a person or a card are refused as [`resolve_repeats`] says:
/// a register has one row per person. `now` is the creation time written on every
/// person.
pub fn load(
    conn: &mut Connection,
    now: &str,
    mut parts: Vec<Rows>,
    progress: &mut dyn FnMut(Phase),
) -> Result<Loaded> {
    prepare(conn)?;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Exclusive)?;
    ensure_empty(&tx)?;
    let total: usize = parts.iter().map(Rows::len).sum();
    progress(Phase::Sorting { rows: total as u64 });
    let mut entries = sorted_entries(&mut parts);
    let mut rejected = resolve_repeats(&parts, &mut entries)?;

    for (name, _, _) in SECONDARY_INDEXES {
        tx.execute_batch(&format!("DROP INDEX {name}"))?;
    }
    progress(Phase::Writing {
        rows: entries.len() as u64,
    });
    {
        let mut insert = tx.prepare(
            "INSERT INTO persons (id_number, lookup_hash, name, card_no, insurance_type, person_type, \
             civil_servant, status, account_fen, enrolled_since, created_at, updated_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?11)",
        )?;
        let mut date = String::with_capacity(10);
        for e in &entries {
            let r = row_of(&parts, e)?;
            date_text(r.enrolled_since, &mut date);
            insert.execute(params![
                r.id_number,
                r.digest,
                r.name,
                r.card_no,
                r.insurance_type.as_str(),
                r.person_type.as_str(),
                r.civil_servant,
                r.status.as_str(),
                r.account_fen,
                date,
                now,
            ])?;
        }
    }
    drop(parts);
    tx.pragma_update(None, "cache_size", SORT_CACHE_KIB)?;
    for (index, by, ddl) in SECONDARY_INDEXES {
        progress(Phase::Indexing { index, by });
        tx.execute_batch(ddl)?;
    }
    progress(Phase::Committing);
    tx.commit()?;
    rejected.sort_by_key(|r| r.line);
    Ok(Loaded {
        inserted: entries.len() as u64,
        rejected,
    })
}

/// All parts' entries tagged with their part and sorted by ID number, then line: each
/// part sorted on its own thread, then the two runs merged.
fn sorted_entries(parts: &mut [Rows]) -> Vec<Entry> {
    let mut runs: Vec<Vec<Entry>> = parts
        .iter_mut()
        .enumerate()
        .map(|(i, part)| {
            let tag = (i as u64) << PART_SHIFT;
            let mut run = std::mem::take(&mut part.entries);
            for e in &mut run {
                e.at |= tag;
            }
            run
        })
        .collect();
    std::thread::scope(|scope| {
        for run in &mut runs {
            scope.spawn(move || run.sort_unstable_by_key(|e| (e.key, e.line)));
        }
    });
    let mut merged = runs.pop().unwrap_or_default();
    while let Some(run) = runs.pop() {
        merged = merge(run, merged);
    }
    merged
}

/// Merges two runs sorted by (key, line) into one.
fn merge(a: Vec<Entry>, b: Vec<Entry>) -> Vec<Entry> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut a, mut b) = (a.into_iter().peekable(), b.into_iter().peekable());
    loop {
        let next = match (a.peek(), b.peek()) {
            (Some(x), Some(y)) if (x.key, x.line) <= (y.key, y.line) => a.next(),
            (Some(_), Some(_)) | (None, Some(_)) => b.next(),
            (Some(_), None) => a.next(),
            (None, None) => return out,
        };
        out.extend(next);
    }
}

/// Decides which rows load when rows repeat an ID number or a card, as a reader going
/// down the file one row at a time would: a row loads unless its person already has a
/// loaded row on an earlier line, or its card belongs to a loaded row on an earlier line.
/// Drops the others from `entries` (sorted by key, then line) and says why.
///
/// Only rows sharing an ID number or a card (by hash) with another row are "contested";
/// the rest load as they are. Among the contested, each person's candidate is its
/// earliest row not yet refused for its card; among the candidates each card stays with
/// the earliest line, and a candidate that loses its card is refused for good (its card
/// can only end with an even earlier line). Refusing a candidate makes the person's next
/// row the candidate, which may claim a card in turn, so this repeats until no card is
/// lost — a few rounds over the contested rows only.
fn resolve_repeats(parts: &[Rows], entries: &mut Vec<Entry>) -> Result<Vec<Rejected>> {
    let hasher = RandomState::new();
    let mut cards: Vec<(u64, u32)> = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        if let Some(card) = card_of(parts, e)? {
            let i = u32::try_from(i)
                .map_err(|_| Error::FailedPrecondition("more than 4 billion rows".into()))?;
            cards.push((hasher.hash_one(card), i));
        }
    }
    cards.sort_unstable();
    let mut contested = vec![false; entries.len()];
    for group in cards.chunk_by(|a, b| a.0 == b.0).filter(|g| g.len() > 1) {
        for &(_, i) in group {
            contested[i as usize] = true;
        }
    }
    drop(cards);
    // The card and its hash of a contested row (few: recomputed rather than kept for all).
    let card_hash = |i: usize| -> Result<Option<(u64, &str)>> {
        Ok(card_of(parts, &entries[i])?.map(|c| (hasher.hash_one(c), c)))
    };
    let mut start = 0;
    for group in entries.chunk_by(|a, b| a.key == b.key) {
        if group.len() > 1 {
            contested[start..start + group.len()].fill(true);
        }
        start += group.len();
    }
    let contested: Vec<usize> = (0..entries.len()).filter(|&i| contested[i]).collect();
    if contested.is_empty() {
        return Ok(Vec::new());
    }

    let mut refused_for_card = vec![false; entries.len()];
    let candidates = loop {
        let candidates: Vec<usize> = {
            let mut picked: Vec<usize> = Vec::new();
            for &i in &contested {
                let new_person = picked
                    .last()
                    .is_none_or(|&p| entries[p].key != entries[i].key);
                if !refused_for_card[i] && new_person {
                    picked.push(i);
                }
            }
            picked
        };
        let mut by_card: Vec<(u64, u64, usize)> = Vec::new();
        for &i in &candidates {
            if let Some((h, _)) = card_hash(i)? {
                by_card.push((h, entries[i].line, i));
            }
        }
        by_card.sort_unstable();
        let mut lost = false;
        for group in by_card.chunk_by(|a, b| a.0 == b.0).filter(|g| g.len() > 1) {
            let mut held: Vec<&str> = Vec::new();
            for &(_, _, i) in group {
                let card = card_of(parts, &entries[i])?.unwrap_or_default();
                if held.contains(&card) {
                    refused_for_card[i] = true;
                    lost = true;
                } else {
                    held.push(card);
                }
            }
        }
        if !lost {
            break candidates;
        }
    };

    // Why each other contested row is refused, naming the line that loaded.
    let mut holders: Vec<(u64, &str, u64)> = Vec::new();
    for &i in &candidates {
        if let Some((h, card)) = card_hash(i)? {
            holders.push((h, card, entries[i].line));
        }
    }
    holders.sort_unstable();
    let mut loads = vec![true; entries.len()];
    let mut rejected = Vec::new();
    let mut person: Option<usize> = None;
    for &i in &contested {
        let e = entries[i];
        let candidate = candidates.binary_search(&i).is_ok();
        if person.is_none_or(|p| entries[p].key != e.key) {
            person = None;
        }
        if candidate {
            person = Some(i);
            continue;
        }
        loads[i] = false;
        if refused_for_card[i] {
            let (h, card) = card_hash(i)?.unwrap_or_default();
            // Sorted: the earliest holder of the card is found by bisection (a file with
            // many taken cards must not make this quadratic).
            let at = holders.partition_point(|&(hh, c, _)| (hh, c) < (h, card));
            let first = holders
                .get(at)
                .filter(|&&(hh, c, _)| hh == h && c == card)
                .map(|&(_, _, line)| line)
                .ok_or_else(|| Error::Internal(format!("no loaded row holds card {card}")))?;
            rejected.push(Rejected {
                line: e.line,
                field: "card_no",
                reason: format!("{card} already belongs to the person on line {first}"),
            });
        } else {
            let first = person.map(|p| entries[p].line).ok_or_else(|| {
                Error::Internal("a repeated row without the row that loaded".into())
            })?;
            rejected.push(Rejected {
                line: e.line,
                field: "id_number",
                reason: format!(
                    "{} is already on line {first}; the file must have one row per person",
                    row_of(parts, &e)?.id_number
                ),
            });
        }
    }
    let mut i = 0;
    entries.retain(|_| {
        i += 1;
        loads[i - 1]
    });
    Ok(rejected)
}

#[cfg(test)]
mod tests {
    use chrono::NaiveDate;
    use yidi_common::{
        idnum,
        types::{InsuranceType, PersonStatus, PersonType},
    };

    use super::*;
    use crate::store::{Store, persons};

    const NOW: &str = "2026-11-30T08:00:00+08:00";

    fn id(year: i32, seq: u16) -> String {
        idnum::make(
            "330106",
            NaiveDate::from_ymd_opt(year, 3, 4).expect("date"),
            seq,
        )
    }

    fn rec(id_number: &str, name: &str, card: Option<&str>) -> PersonRec {
        PersonRec {
            id_number: id_number.to_owned(),
            name: name.to_owned(),
            card_no: card.map(str::to_owned),
            insurance_type: InsuranceType::Resident,
            person_type: PersonType::ResidentAdult,
            civil_servant: false,
            status: PersonStatus::Active,
            account_fen: 12_345,
            enrolled_since: NaiveDate::from_ymd_opt(2024, 1, 1).expect("date"),
        }
    }

    /// The refusal of a row whose card a row on line `by` holds.
    fn card_taken(line: u64, card: &str, by: u64) -> Rejected {
        Rejected {
            line,
            field: "card_no",
            reason: format!("{card} already belongs to the person on line {by}"),
        }
    }

    /// The refusal of a row repeating the person of line `first`.
    fn repeated(line: u64, id_number: &str, first: u64) -> Rejected {
        Rejected {
            line,
            field: "id_number",
            reason: format!(
                "{id_number} is already on line {first}; the file must have one row per person"
            ),
        }
    }

    /// The ID numbers in the register, in order.
    fn stored_ids(conn: &Connection) -> Vec<String> {
        conn.prepare("SELECT id_number FROM persons ORDER BY id_number")
            .expect("prepare")
            .query_map([], |r| r.get(0))
            .expect("query")
            .collect::<rusqlite::Result<_>>()
            .expect("rows")
    }

    fn schema(conn: &Connection) -> Vec<(String, String, Option<String>)> {
        conn.prepare("SELECT type, name, sql FROM sqlite_master ORDER BY name")
            .expect("prepare")
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .expect("query")
            .collect::<rusqlite::Result<_>>()
            .expect("rows")
    }

    /// Loads `parts` (each a reading thread's rows: line and person).
    fn run(conn: &mut Connection, parts: &[&[(u64, &PersonRec)]]) -> (Result<Loaded>, Vec<Phase>) {
        let parts = parts
            .iter()
            .map(|rows| {
                let mut part = Rows::default();
                for (line, rec) in *rows {
                    part.push(*line, rec);
                }
                part
            })
            .collect();
        let mut phases = Vec::new();
        let outcome = load(conn, NOW, parts, &mut |p| phases.push(p));
        restore_wal(conn).expect("back to WAL");
        (outcome, phases)
    }

    #[test]
    fn a_load_fills_the_register_with_the_schema_of_a_migrated_store() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fresh_dir = tempfile::tempdir().expect("tempdir");
        let mut conn = Store::open_connection(dir.path(), "330100").expect("open");
        // Out of ID order, read by two threads, one person without a card, one with an
        // X check character and every field away from its default.
        let (a, b, c) = (id(1990, 1), id(1950, 2), id(1970, 3));
        let x = (0..1000)
            .map(|seq| id(1985, seq))
            .find(|n| n.ends_with('X'))
            .expect("an ID number ending in X");
        let ra = rec(&a, "甲", Some("A00000001"));
        let rb = rec(&b, "乙", None);
        let rc = rec(&c, "丙", Some("A00000003"));
        let rx = PersonRec {
            insurance_type: InsuranceType::Employee,
            person_type: PersonType::Retired,
            civil_servant: true,
            status: PersonStatus::Suspended,
            account_fen: 0,
            enrolled_since: NaiveDate::from_ymd_opt(1999, 12, 31).expect("date"),
            ..rec(&x, "Ünïcode·名字", Some("X12345678901234567Z"))
        };
        let (loaded, phases) = run(&mut conn, &[&[(2, &ra), (3, &rb)], &[(4, &rc), (5, &rx)]]);
        assert_eq!(
            loaded.expect("load"),
            Loaded {
                inserted: 4,
                rejected: Vec::new()
            }
        );
        assert_eq!(
            phases,
            [
                Phase::Sorting { rows: 4 },
                Phase::Writing { rows: 4 },
                Phase::Indexing {
                    index: "persons_by_lookup_hash",
                    by: "lookup hash"
                },
                Phase::Indexing {
                    index: "persons_by_type",
                    by: "insurance type and status"
                },
                Phase::Indexing {
                    index: "persons_by_card",
                    by: "card"
                },
                Phase::Committing
            ]
        );
        for r in [&ra, &rb, &rc, &rx] {
            let stored = persons::get(&conn, &r.id_number)
                .expect("get")
                .expect("loaded");
            assert_eq!(&stored.rec, r);
            assert_eq!(
                (stored.created_at.as_str(), stored.updated_at.as_str()),
                (NOW, NOW)
            );
            let by_hash = persons::get_by_lookup_hash(&conn, &idnum::lookup_hash(&r.id_number))
                .expect("get")
                .expect("by hash");
            assert_eq!(&by_hash.rec, r);
        }
        let by_card = persons::get_by_card(&conn, "X12345678901234567Z")
            .expect("get")
            .expect("by card");
        assert_eq!(by_card.rec, rx);
        let order = stored_ids(&conn);
        let mut want = vec![a.clone(), b.clone(), c.clone(), x.clone()];
        want.sort();
        assert_eq!(order, want);

        let migrated = Store::open_connection(fresh_dir.path(), "330100").expect("open fresh");
        assert_eq!(schema(&conn), schema(&migrated));
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .expect("mode");
        assert_eq!(mode, "wal");
        let check: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .expect("check");
        assert_eq!(check, "ok");
    }

    #[test]
    fn dates_are_written_as_chrono_writes_them() {
        let mut out = String::new();
        for (y, m, d) in [
            (2024, 1, 1),
            (1999, 12, 31),
            (905, 7, 4),
            (10_000, 2, 29),
            (-3, 5, 6),
        ] {
            if let Some(date) = NaiveDate::from_ymd_opt(y, m, d) {
                date_text(date, &mut out);
                assert_eq!(out, date.format("%F").to_string());
            }
        }
    }

    #[test]
    fn ids_sort_like_their_text() {
        let mut ids: Vec<String> = (0..400)
            .map(|i| id(1900 + (i * 37 % 120), (i * 7 % 1000) as u16))
            .collect();
        ids.push("11010519491231002X".to_owned());
        ids.push("110105194912310029".to_owned());
        let mut by_text = ids.clone();
        by_text.sort();
        ids.sort_by_key(|i| id_key(i));
        assert_eq!(ids, by_text);
    }

    #[test]
    fn a_repeated_person_or_card_is_refused_and_the_earlier_line_loaded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut conn = Store::open_connection(dir.path(), "330100").expect("open");
        // `late` sorts before `early` by ID number: the card still goes to the earlier
        // line of the file, not to the smaller ID number. The repeats come from
        // different reading threads.
        let (early, other, late, last) = (id(1980, 1), id(1985, 2), id(1950, 3), id(1999, 4));
        let first = rec(&early, "先", Some("C00000001"));
        let again = rec(&early, "重", None);
        let takes_card = rec(&late, "后", Some("C00000001"));
        let (ro, rl) = (rec(&other, "他", None), rec(&last, "末", Some("C00000006")));
        let (loaded, _) = run(
            &mut conn,
            &[
                &[(5, &takes_card), (2, &first)],
                &[(3, &ro), (4, &again), (6, &rl)],
            ],
        );
        assert_eq!(
            loaded.expect("load"),
            Loaded {
                inserted: 3,
                rejected: vec![repeated(4, &early, 2), card_taken(5, "C00000001", 2)],
            }
        );
        let kept = persons::get(&conn, &early).expect("get").expect("early");
        assert_eq!(kept.rec, first);
        assert!(persons::get(&conn, &late).expect("get").is_none());
        let by_card = persons::get_by_card(&conn, "C00000001")
            .expect("get")
            .expect("card");
        assert_eq!(by_card.rec.id_number, early);
        let count: u64 = conn
            .query_row("SELECT COUNT(*) FROM persons", [], |r| r.get(0))
            .expect("count");
        assert_eq!(count, 3);
    }

    #[test]
    fn a_person_whose_first_row_loses_its_card_loads_from_the_next_row() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut conn = Store::open_connection(dir.path(), "330100").expect("open");
        // Row by row: line 2 takes card C; line 3 (B) is refused for C; line 4 is then
        // B's first loadable row and takes D; line 5 (E) is refused for D, so E loads
        // from line 6; line 7 repeats B.
        let (a, b, e) = (id(1970, 1), id(1960, 2), id(1950, 3));
        let l2 = rec(&a, "甲", Some("C00000001"));
        let l3 = rec(&b, "乙", Some("C00000001"));
        let l4 = rec(&b, "乙二", Some("D00000001"));
        let l5 = rec(&e, "戊", Some("D00000001"));
        let l6 = rec(&e, "戊二", None);
        let l7 = rec(&b, "乙三", None);
        let (loaded, _) = run(
            &mut conn,
            &[
                &[(2, &l2), (5, &l5), (7, &l7)],
                &[(3, &l3), (4, &l4), (6, &l6)],
            ],
        );
        assert_eq!(
            loaded.expect("load"),
            Loaded {
                inserted: 3,
                rejected: vec![
                    card_taken(3, "C00000001", 2),
                    card_taken(5, "D00000001", 4),
                    repeated(7, &b, 4),
                ],
            }
        );
        for want in [&l2, &l4, &l6] {
            let got = persons::get(&conn, &want.id_number)
                .expect("get")
                .expect("loaded");
            assert_eq!(&got.rec, want);
        }
    }

    #[test]
    fn a_register_that_has_persons_is_refused_and_left_as_it_was() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut conn = Store::open_connection(dir.path(), "330100").expect("open");
        let present = rec(&id(1960, 1), "在", Some("D00000001"));
        persons::insert(&conn, &present, NOW).expect("insert");
        assert!(ensure_empty(&conn).is_err());
        let newcomer = rec(&id(1961, 2), "新", None);
        let (loaded, phases) = run(&mut conn, &[&[(2, &newcomer)]]);
        let err = loaded.expect_err("refused");
        assert!(
            matches!(&err, Error::FailedPrecondition(m) if m.contains("already has 1 persons")),
            "{err:?}"
        );
        assert!(phases.is_empty());
        assert_eq!(stored_ids(&conn), [present.id_number.as_str()]);
    }
}
