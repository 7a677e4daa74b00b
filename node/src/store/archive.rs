//! Archives of closed and cleared periods (`yidi admin archive`, docs/admin.md): the
//! SQL half. An archive is one SQLite file per period holding every row of the period
//! that leaves the live store, in the live tables' own schema, with its manifest (row
//! counts and money sums per table) inside; a JSON copy of the manifest with the file's
//! SHA-256 sits next to it. The domain half (what may be archived when, files on disk,
//! the writer jobs) is `clearing/archive.rs`.
//!
//! What a period's archive holds: the ledger entries of the period; the claims committed
//! here in it (home side); the settlements and reversal records of it (treatment side),
//! with the audit deductions on them; the visits those settlements refer to, with their
//! fee lines (deleted by the purge only once no live settlement refers to them). The
//! audit log stays (append-only by design), and
//! so do accumulators (a person's year-to-date totals do not change), clearing rounds,
//! persons, filings and request records (which have their own retention).

use std::{
    collections::BTreeMap,
    io::Read as _,
    path::{Path, PathBuf},
};

use rusqlite::{Connection, OpenFlags, OptionalExtension, params, types::Value};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::{Error, Result};

/// The manifest's `format`: a reader of the file checks it first.
pub const FORMAT: &str = "yidi-archive/1";

/// Rows one writer job of a purge or a restore touches at most: each job stays well
/// within the writer's budget, so settlements queued behind it do not wait.
pub const STEP_ROWS: usize = 1_000;

/// A table an archive holds: its key (the order of purge and restore, and their
/// cursor) and its money columns (integer fen), summed in the manifest.
#[derive(Debug, Clone, Copy)]
pub struct Table {
    pub name: &'static str,
    pub key: &'static [&'static str],
    pub money: &'static [&'static str],
}

/// The tables in the order a restore inserts them (parents before the rows that refer
/// to them); a purge deletes in the reverse order.
pub const TABLES: &[Table] = &[
    Table {
        name: "visits",
        key: &["visit_id"],
        money: &[],
    },
    Table {
        name: "fee_lines",
        key: &["visit_id", "line_no"],
        money: &["amount_fen"],
    },
    Table {
        name: "settlements",
        key: &["settlement_id"],
        money: &["medfee_fen", "fund_fen", "acct_fen", "cash_fen"],
    },
    Table {
        name: "deductions",
        key: &["deduction_id"],
        money: &["amount_fen"],
    },
    Table {
        name: "claims",
        key: &["claim_id"],
        money: &["fund_fen", "acct_fen"],
    },
    Table {
        name: "ledger",
        key: &["entry_id", "side"],
        money: &["amount_fen"],
    },
];

/// The rows of one table in the period that leave the live store (`?1` is the period):
/// the same selection at export and in the eligibility count.
fn selection(table: &str) -> &'static str {
    match table {
        "ledger" => "SELECT * FROM main.ledger WHERE period = ?1",
        "claims" => "SELECT * FROM main.claims WHERE period = ?1",
        "settlements" => "SELECT * FROM main.settlements WHERE period = ?1",
        "deductions" => {
            "SELECT * FROM main.deductions WHERE settlement_id IN \
             (SELECT settlement_id FROM main.settlements WHERE period = ?1)"
        }
        // Every visit a settlement of the period refers to, with its fee lines: an
        // archive is restored on its own, whatever was purged since (a visit settled in
        // one month and cancelled or settled again in the next is in both months'
        // archives). A copy only: the purge deletes a visit, and its lines, only once
        // no live settlement refers to it and it is done with (see `purge_condition`).
        "visits" => {
            "SELECT * FROM main.visits WHERE visit_id IN \
             (SELECT visit_id FROM main.settlements WHERE period = ?1)"
        }
        "fee_lines" => {
            "SELECT * FROM main.fee_lines WHERE visit_id IN \
             (SELECT visit_id FROM main.settlements WHERE period = ?1)"
        }
        _ => unreachable!("not an archived table: {table}"),
    }
}

/// The ids `<region>-S-<seq>` an archive holds of one region: the lowest and highest
/// seq, and exactly which seqs between them (`members`, a bitmap: bit `seq - seq_min`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdRange {
    pub region: String,
    pub seq_min: i64,
    pub seq_max: i64,
    /// None for a range wider than [`MAX_MEMBER_BITS`] (a node's seqs are dense, so
    /// only ids far apart make one): every id inside it then counts as archived.
    pub members: Option<Vec<u8>>,
}

/// The widest range whose members are recorded (a bitmap of 32 MiB).
pub const MAX_MEMBER_BITS: i64 = 1 << 28;

impl IdRange {
    /// The range of `seqs` (ascending, at least one).
    fn of(region: String, seqs: &[i64]) -> Self {
        let (lo, hi) = (seqs[0], seqs[seqs.len() - 1]);
        let members = (hi - lo < MAX_MEMBER_BITS).then(|| {
            let len = usize::try_from(hi - lo).unwrap_or(0) / 8 + 1;
            let mut members = vec![0u8; len];
            for s in seqs {
                let bit = usize::try_from(s - lo).unwrap_or(0);
                members[bit / 8] |= 1 << (bit % 8);
            }
            members
        });
        if members.is_none() {
            tracing::warn!(%region, lo, hi, "archived ids too far apart to record each: the whole range counts as archived");
        }
        Self {
            region,
            seq_min: lo,
            seq_max: hi,
            members,
        }
    }
}

/// Whether bit `seq - seq_min` is set in `members`; a range recorded without them (an
/// archive written before they were) holds every id in it.
fn member(seq_min: i64, members: Option<&[u8]>, seq: i64) -> bool {
    let Some(m) = members else {
        return true;
    };
    usize::try_from(seq - seq_min)
        .ok()
        .and_then(|bit| m.get(bit / 8).map(|b| b & (1 << (bit % 8)) != 0))
        .unwrap_or(false)
}

/// An id `<region>-S-<seq>` split in its region and seq.
fn parse_id(id: &str) -> Option<(&str, i64)> {
    id.split_once("-S-")
        .and_then(|(r, s)| s.parse::<i64>().ok().map(|s| (r, s)))
}

/// A step's rows read from an archive: the table's index in [`TABLES`], the columns
/// and the rows' values.
pub type StepRows = (usize, Vec<String>, Vec<Vec<Value>>);

/// One table's line of the manifest: its rows and the sums of its money columns (yuan).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableSummary {
    pub table: String,
    pub rows: u64,
    pub sums: BTreeMap<String, String>,
}

/// What an archive holds. Inside the file (`archive_manifest`) without `sha256`,
/// `file` and `bytes`; next to it (`<region>-<period>.json`) with them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub region: String,
    pub period: String,
    pub schema_version: u32,
    pub created_at: String,
    pub tables: Vec<TableSummary>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub file: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub bytes: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sha256: String,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Manifest {
    /// Rows of all tables.
    #[must_use]
    pub fn rows(&self) -> u64 {
        self.tables.iter().map(|t| t.rows).sum()
    }

    /// The manifest as stored inside the file (no digest of the file itself).
    #[must_use]
    pub fn inner(&self) -> Self {
        Self {
            file: String::new(),
            bytes: 0,
            sha256: String::new(),
            ..self.clone()
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a manifest serializes")
    }

    pub fn from_json(s: &str, what: &str) -> Result<Self> {
        let m: Self = serde_json::from_str(s)
            .map_err(|e| Error::invalid(what, format!("not an archive manifest: {e}")))?;
        if m.format != FORMAT {
            return Err(Error::invalid(
                what,
                format!("format {:?}, expected {FORMAT:?}", m.format),
            ));
        }
        Ok(m)
    }
}

/// The archive file's name for a region's period, and its manifest's.
#[must_use]
pub fn file_names(region: &str, period: &str) -> (String, String) {
    (
        format!("{region}-{period}.sqlite"),
        format!("{region}-{period}.json"),
    )
}

/// The manifest next to an archive file: `X.sqlite` → `X.json`.
#[must_use]
pub fn manifest_path(file: &Path) -> PathBuf {
    file.with_extension("json")
}

/// The SHA-256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<(String, u64)> {
    let mut f = std::fs::File::open(path)
        .map_err(|e| Error::invalid("file", format!("{}: {e}", path.display())))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut n = 0u64;
    loop {
        let k = f
            .read(&mut buf)
            .map_err(|e| Error::Internal(format!("{}: {e}", path.display())))?;
        if k == 0 {
            break;
        }
        n += k as u64;
        h.update(&buf[..k]);
    }
    Ok((hex::encode(h.finalize()), n))
}

/// The state of a period's archive (CHECK constraint of `archived_periods`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveState {
    /// Being written: the period's rows are frozen (no cancel, 冲正 or deduction).
    Exporting,
    /// Written and verified at the node; every row still live.
    Exported,
    /// Rows being deleted from the live store, a bounded step at a time.
    Purging,
    /// Every archived row is gone from the live store.
    Purged,
    /// Rows being put back from a file.
    Restoring,
    /// Put back: the period is live again (and may be archived again).
    Restored,
}

impl ArchiveState {
    pub const ALL: [Self; 6] = [
        Self::Exporting,
        Self::Exported,
        Self::Purging,
        Self::Purged,
        Self::Restoring,
        Self::Restored,
    ];

    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Exporting => "exporting",
            Self::Exported => "exported",
            Self::Purging => "purging",
            Self::Purged => "purged",
            Self::Restoring => "restoring",
            Self::Restored => "restored",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|x| x.as_str() == s)
            .ok_or_else(|| Error::Internal(format!("unknown archive state {s:?}")))
    }
}

/// A period's archive record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchivedPeriod {
    pub period: String,
    pub state: ArchiveState,
    pub digest: String,
    pub manifest: String,
    pub step_table: String,
    pub step_after: String,
    pub rows_done: u64,
}

pub fn get(conn: &Connection, period: &str) -> Result<Option<ArchivedPeriod>> {
    let row = conn
        .prepare_cached(
            "SELECT period, state, digest, manifest, step_table, step_after, rows_done \
             FROM archived_periods WHERE period = ?1",
        )?
        .query_row([period], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
            ))
        })
        .optional()?;
    row.map(
        |(period, state, digest, manifest, step_table, step_after, rows_done)| {
            Ok(ArchivedPeriod {
                period,
                state: ArchiveState::parse(&state)?,
                digest,
                manifest,
                step_table,
                step_after,
                rows_done,
            })
        },
    )
    .transpose()
}

/// Every archived period, oldest first.
pub fn list(conn: &Connection) -> Result<Vec<ArchivedPeriod>> {
    let periods: Vec<String> = conn
        .prepare_cached("SELECT period FROM archived_periods ORDER BY period")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let mut out = Vec::with_capacity(periods.len());
    for p in periods {
        out.extend(get(conn, &p)?);
    }
    Ok(out)
}

/// Sets a period's state (and clears the step cursor when `reset_cursor`).
pub fn set_state(
    conn: &Connection,
    period: &str,
    state: ArchiveState,
    now: &str,
    reset_cursor: bool,
) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO archived_periods (period, state, updated_at) VALUES (?1, ?2, ?3) \
         ON CONFLICT (period) DO UPDATE SET state = ?2, updated_at = ?3, \
         step_table = CASE WHEN ?4 THEN '' ELSE step_table END, \
         step_after = CASE WHEN ?4 THEN '' ELSE step_after END, \
         rows_done = CASE WHEN ?4 THEN 0 ELSE rows_done END",
    )?
    .execute(params![period, state.as_str(), now, reset_cursor])?;
    Ok(())
}

/// Ends a purge or a restore: `from` → `to`, only if the period is still in `from` (a
/// restore started after a purge's last step, or the other way round, must not be
/// overwritten by the one that finishes first).
pub fn finish_state(
    conn: &Connection,
    period: &str,
    from: ArchiveState,
    to: ArchiveState,
    now: &str,
) -> Result<()> {
    let changed = conn
        .prepare_cached(
            "UPDATE archived_periods SET state = ?3, updated_at = ?4 \
             WHERE period = ?1 AND state = ?2",
        )?
        .execute(params![period, from.as_str(), to.as_str(), now])?;
    if changed == 1 {
        return Ok(());
    }
    let now_in: Option<String> = conn
        .query_row(
            "SELECT state FROM archived_periods WHERE period = ?1",
            [period],
            |r| r.get(0),
        )
        .optional()?;
    Err(Error::FailedPrecondition(format!(
        "the archive of {period} went from {} to {} meanwhile (another purge or restore); \
         nothing more was changed — see `yidi admin archive list` and run the command again",
        from.as_str(),
        now_in.as_deref().unwrap_or("no record")
    )))
}

/// Records a written archive: its digest, manifest and id ranges; state `exported`.
pub fn record_exported(
    conn: &Connection,
    period: &str,
    digest: &str,
    manifest: &str,
    ranges: &[IdRange],
    now: &str,
) -> Result<()> {
    set_state(conn, period, ArchiveState::Exported, now, true)?;
    conn.prepare_cached(
        "UPDATE archived_periods SET digest = ?2, manifest = ?3 WHERE period = ?1",
    )?
    .execute(params![period, digest, manifest])?;
    conn.prepare_cached("DELETE FROM archived_ranges WHERE period = ?1")?
        .execute([period])?;
    for r in ranges {
        conn.prepare_cached(
            "INSERT INTO archived_ranges (period, region, seq_min, seq_max, members) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )?
        .execute(params![period, r.region, r.seq_min, r.seq_max, r.members])?;
    }
    Ok(())
}

/// The archive state of a period whose rows are frozen or gone (anything but
/// `restored`), if any: a cancel, 冲正, reversal or deduction of a row of it is refused.
pub fn frozen(conn: &Connection, period: &str) -> Result<Option<ArchiveState>> {
    Ok(get(conn, period)?
        .map(|a| a.state)
        .filter(|s| *s != ArchiveState::Restored))
}

/// For an id `<region>-S-<seq>` (a settlement's, or the claim it committed) not in the
/// live store: the archived period whose archive holds it, if any. Only an id the
/// archive holds counts: one merely inside the range of an archive's ids (a claim the
/// home node never stored, delivered late) is not archived.
pub fn period_of_id(conn: &Connection, id: &str) -> Result<Option<String>> {
    let Some((region, seq)) = parse_id(id) else {
        return Ok(None);
    };
    let candidates: Vec<(String, i64, Option<Vec<u8>>)> = conn
        .prepare_cached(
            "SELECT r.period, r.seq_min, r.members FROM archived_ranges AS r \
             JOIN archived_periods AS p USING (period) \
             WHERE r.region = ?1 AND ?2 BETWEEN r.seq_min AND r.seq_max AND p.state <> 'restored' \
             ORDER BY r.period",
        )?
        .query_map(params![region, seq], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    Ok(candidates
        .into_iter()
        .find(|(_, lo, m)| member(*lo, m.as_deref(), seq))
        .map(|(p, _, _)| p))
}

/// Whether the archive of `period` holds the record of id `id`: true while the archive
/// is being written (its ids are not recorded yet, so every record of the period is
/// frozen), and for an id that is not `<region>-S-<seq>`.
fn holds(conn: &Connection, period: &str, id: &str) -> Result<bool> {
    let Some((region, seq)) = parse_id(id) else {
        return Ok(true);
    };
    if get(conn, period)?.is_some_and(|a| a.state == ArchiveState::Exporting) {
        return Ok(true);
    }
    let range: Option<(i64, i64, Option<Vec<u8>>)> = conn
        .prepare_cached(
            "SELECT seq_min, seq_max, members FROM archived_ranges WHERE period = ?1 AND region = ?2",
        )?
        .query_row(params![period, region], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .optional()?;
    Ok(range.is_some_and(|(lo, hi, m)| (lo..=hi).contains(&seq) && member(lo, m.as_deref(), seq)))
}

/// The refusal of a call about `what` (e.g. "settlement"), of id `id`, of a period
/// frozen or removed by an archive that holds it, naming the archive and how to bring
/// it back; `None` when the period is not archived, or its archive does not hold the
/// record (one that reached this node after the export: a late claim).
pub fn refusal(conn: &Connection, period: &str, id: &str, what: &str) -> Result<Option<Error>> {
    let Some(state) = frozen(conn, period)? else {
        return Ok(None);
    };
    if !holds(conn, period, id)? {
        return Ok(None);
    }
    let region = crate::store::meta_get(conn, "region")?.unwrap_or_else(|| "<region>".into());
    Ok(Some(Error::Archived {
        period: period.to_owned(),
        message: format!(
            "{what} {id} belongs to period {period}, archived at this node (archive {}); \
             a record of an archived period is no longer cancelled, reversed or deducted; \
             to change it, restore the period first (yidi admin archive restore --file {region}-{period}.sqlite)",
            state.as_str()
        ),
    }))
}

/// For `what` with id `id` not found in the live store: the refusal naming the archive
/// that holds it (FAILED_PRECONDITION, or NOT_FOUND for a read when `read`), if any.
pub fn missing(conn: &Connection, id: &str, what: &str, read: bool) -> Result<Option<Error>> {
    let Some(period) = period_of_id(conn, id)? else {
        return Ok(None);
    };
    let region = crate::store::meta_get(conn, "region")?.unwrap_or_else(|| "<region>".into());
    let message = format!(
        "{what} {id} belongs to period {period}, archived and removed from this node's live store; \
         restore it to read or change it (yidi admin archive restore --file {region}-{period}.sqlite)"
    );
    Ok(Some(if read {
        Error::NotFound(message)
    } else {
        Error::Archived { period, message }
    }))
}

/// Why a period cannot be archived yet, if it cannot: its ledger entries not all
/// cleared (frozen in a live round, excluded as disputed, in no round), settlements
/// still in doubt, queued or disputed, or audit deductions on its settlements booked in
/// a period not yet cleared. Each lookup goes through an index.
pub fn not_archivable(conn: &Connection, period: &str) -> Result<Option<String>> {
    let mut why = Vec::new();
    let uncleared: Vec<(Option<String>, Option<String>, u64)> = conn
        .prepare_cached(
            "SELECT round_id, excluded_round, COUNT(*) FROM ledger \
             WHERE cleared_round IS NULL AND period = ?1 GROUP BY round_id, excluded_round",
        )?
        .query_map([period], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<rusqlite::Result<_>>()?;
    for (round, excluded, n) in uncleared {
        why.push(match (round, excluded) {
            (Some(r), _) => {
                let state: Option<String> = conn
                    .prepare_cached("SELECT state FROM clearing_rounds WHERE round_id = ?1")?
                    .query_row([&r], |x| x.get(0))
                    .optional()?;
                format!(
                    "{n} ledger entries frozen in clearing round {r} (state {}), not yet cleared",
                    state.unwrap_or_else(|| "unknown".into())
                )
            }
            (None, Some(x)) => format!(
                "{n} ledger entries excluded from clearing round {x} (disputed), not yet cleared"
            ),
            (None, None) => format!("{n} ledger entries in no clearing round yet"),
        });
    }
    let open: Vec<(String, u64)> = conn
        .prepare_cached(
            "SELECT state, COUNT(*) FROM settlements \
             WHERE state IN ('pending', 'provisional', 'disputed') AND period = ?1 GROUP BY state",
        )?
        .query_map([period], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    for (state, n) in open {
        why.push(format!("{n} settlements still {state}"));
    }
    let later: Vec<String> = conn
        .prepare_cached(
            "SELECT DISTINCT d.period FROM deductions AS d JOIN settlements AS s \
             USING (settlement_id) WHERE s.period = ?1 AND d.period > ?1",
        )?
        .query_map([period], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for q in later {
        let n: u64 = conn
            .prepare_cached(
                "SELECT COUNT(*) FROM ledger WHERE cleared_round IS NULL AND period = ?1",
            )?
            .query_row([&q], |r| r.get(0))?;
        if n > 0 {
            why.push(format!(
                "audit deductions on its settlements are booked in period {q}, not yet cleared"
            ));
        }
    }
    Ok((!why.is_empty()).then(|| why.join("; ")))
}

/// The live table's CREATE statement, for the same table in the archive.
fn create_sql(conn: &Connection, table: &str) -> Result<String> {
    let sql: String = conn.query_row(
        "SELECT sql FROM main.sqlite_schema WHERE type = 'table' AND name = ?1",
        [table],
        |r| r.get(0),
    )?;
    // The name may be quoted (a table rebuilt and renamed by a migration): the column
    // list starts at the first parenthesis either way.
    let rest = sql
        .find('(')
        .filter(|_| sql.starts_with("CREATE TABLE"))
        .map(|i| &sql[i..])
        .ok_or_else(|| Error::Internal(format!("unexpected schema of {table}: {sql}")))?;
    Ok(format!("CREATE TABLE a.{table} {rest}"))
}

/// Counts and sums of every archived table in schema `db` (`main` or `a`).
fn summarize(conn: &Connection, db: &str) -> Result<Vec<TableSummary>> {
    let mut out = Vec::with_capacity(TABLES.len());
    for t in TABLES {
        let mut cols = vec!["COUNT(*)".to_owned()];
        cols.extend(t.money.iter().map(|c| format!("COALESCE(SUM({c}), 0)")));
        let sql = format!("SELECT {} FROM {db}.{}", cols.join(", "), t.name);
        let vals: Vec<i64> = conn.query_row(&sql, [], |r| {
            (0..cols.len()).map(|i| r.get::<_, i64>(i)).collect()
        })?;
        let sums = t
            .money
            .iter()
            .zip(&vals[1..])
            .map(|(c, fen)| ((*c).to_owned(), Decimal::new(*fen, 2).to_string()))
            .collect();
        out.push(TableSummary {
            table: t.name.to_owned(),
            rows: u64::try_from(vals[0]).unwrap_or(0),
            sums,
        });
    }
    Ok(out)
}

/// Writes the archive of `period` from the store at `db` into `out` (replaced if
/// present): in one read transaction of the live store (no write to it, the writer is
/// not held), the file fsynced. Returns its manifest (with the file's digest) and the
/// ranges of `<region>-S-<seq>` ids it holds per region.
pub fn build(
    db: &Path,
    out: &Path,
    region: &str,
    period: &str,
    now: &str,
) -> Result<(Manifest, Vec<IdRange>)> {
    let _ = std::fs::remove_file(out);
    // CREATE: an attached database opens with the main one's flags, and the archive
    // file is new. The live store itself is only read.
    let conn = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(30))?;
    // The archive holds the period's rows without the tables they refer to (the
    // institutions, the visits of other periods): its references are not enforced.
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    let schema_version: u32 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    conn.execute(
        "ATTACH DATABASE ?1 AS a",
        [out.to_str()
            .ok_or_else(|| Error::invalid("out", "not UTF-8"))?],
    )?;
    conn.execute_batch("PRAGMA a.journal_mode = DELETE; PRAGMA a.synchronous = FULL;")?;
    conn.execute_batch("BEGIN")?;
    let built = (|| -> Result<(Manifest, Vec<IdRange>)> {
        conn.execute_batch("CREATE TABLE a.archive_manifest (json TEXT NOT NULL) STRICT;")?;
        for t in TABLES {
            conn.execute_batch(&create_sql(&conn, t.name)?)?;
            conn.execute(
                &format!("INSERT INTO a.{} {}", t.name, selection(t.name)),
                [period],
            )?;
        }
        let manifest = Manifest {
            format: FORMAT.into(),
            region: region.into(),
            period: period.into(),
            schema_version,
            created_at: now.into(),
            tables: summarize(&conn, "a")?,
            file: String::new(),
            bytes: 0,
            sha256: String::new(),
        };
        conn.execute(
            "INSERT INTO a.archive_manifest (json) VALUES (?1)",
            [manifest.to_json()],
        )?;
        let ids: Vec<(String, i64)> = conn
            .prepare(
                "SELECT substr(id, 1, instr(id, '-S-') - 1) AS r, \
                 CAST(substr(id, instr(id, '-S-') + 3) AS INTEGER) AS s \
                 FROM (SELECT settlement_id AS id FROM a.settlements \
                       UNION SELECT claim_id FROM a.claims \
                       UNION SELECT claim_id FROM a.ledger) \
                 WHERE instr(id, '-S-') > 0 ORDER BY r, s",
            )?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        let mut ranges = Vec::new();
        for chunk in ids.chunk_by(|a, b| a.0 == b.0) {
            let seqs: Vec<i64> = chunk.iter().map(|(_, s)| *s).collect();
            ranges.push(IdRange::of(chunk[0].0.clone(), &seqs));
        }
        Ok((manifest, ranges))
    })();
    match built {
        Ok(b) => {
            conn.execute_batch("COMMIT")?;
            conn.execute_batch("DETACH DATABASE a")?;
            drop(conn);
            std::fs::File::open(out)
                .and_then(|f| f.sync_all())
                .map_err(|e| Error::Internal(format!("fsync {}: {e}", out.display())))?;
            if let Some(dir) = out.parent() {
                let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
            }
            let (sha256, bytes) = sha256_file(out)?;
            let (manifest, ranges) = b;
            Ok((
                Manifest {
                    file: out
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    bytes,
                    sha256,
                    ..manifest
                },
                ranges,
            ))
        }
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            drop(conn);
            let _ = std::fs::remove_file(out);
            Err(e)
        }
    }
}

/// Opens an archive file read-only.
pub fn open_file(path: &Path) -> Result<Connection> {
    let uri = format!(
        "file:{}?immutable=1",
        path.to_str()
            .ok_or_else(|| Error::invalid("file", "not UTF-8"))?
    );
    Connection::open_with_flags(
        uri,
        OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| Error::invalid("file", format!("{}: not an archive: {e}", path.display())))
}

/// Checks an archive file: its SHA-256 (and size) against `expected` (the manifest next
/// to it, or the one the node recorded), the manifest inside it against `expected`,
/// and its rows against the counts and sums of the manifest. Refused (FAILED_PRECONDITION)
/// naming every difference. Returns the manifest, with the file's digest.
pub fn verify(path: &Path, expected: &Manifest) -> Result<Manifest> {
    let (sha256, bytes) = sha256_file(path)?;
    let mut diffs = Vec::new();
    if sha256 != expected.sha256 {
        diffs.push(format!(
            "SHA-256 of the file is {sha256}, the manifest says {}",
            expected.sha256
        ));
    }
    if bytes != expected.bytes {
        diffs.push(format!(
            "the file has {bytes} bytes, the manifest says {}",
            expected.bytes
        ));
    }
    let inside = (|| -> Result<(Manifest, Vec<TableSummary>)> {
        let conn = open_file(path)?;
        let json: String = conn
            .query_row("SELECT json FROM archive_manifest", [], |r| r.get(0))
            .map_err(|e| Error::FailedPrecondition(format!("no manifest inside: {e}")))?;
        let m = Manifest::from_json(&json, "archive_manifest")?;
        let rows = summarize(&conn, "main")?;
        Ok((m, rows))
    })();
    match inside {
        Err(e) => diffs.push(format!("the file cannot be read as an archive: {e}")),
        Ok((inner, rows)) => {
            if inner != expected.inner() {
                for (what, a, b) in [
                    ("region", &inner.region, &expected.region),
                    ("period", &inner.period, &expected.period),
                    ("created_at", &inner.created_at, &expected.created_at),
                ] {
                    if a != b {
                        diffs.push(format!(
                            "{what} is {a} inside the file, {b} in the manifest"
                        ));
                    }
                }
                if inner.schema_version != expected.schema_version {
                    diffs.push(format!(
                        "schema_version is {} inside the file, {} in the manifest",
                        inner.schema_version, expected.schema_version
                    ));
                }
                if inner.tables != expected.tables {
                    diffs.push("the manifest inside the file differs in its tables".into());
                }
            }
            for (got, want) in rows.iter().zip(&expected.tables) {
                if got.rows != want.rows {
                    diffs.push(format!(
                        "{} has {} rows, the manifest says {}",
                        got.table, got.rows, want.rows
                    ));
                }
                for (col, sum) in &got.sums {
                    let said = want.sums.get(col).map_or("nothing", String::as_str);
                    if sum != said {
                        diffs.push(format!(
                            "{}.{col} sums to {sum}, the manifest says {said}",
                            got.table
                        ));
                    }
                }
            }
            if expected.tables.len() != rows.len() {
                diffs.push(format!(
                    "the manifest lists {} tables, an archive has {}",
                    expected.tables.len(),
                    rows.len()
                ));
            }
        }
    }
    if diffs.is_empty() {
        Ok(Manifest {
            sha256,
            bytes,
            ..expected.clone()
        })
    } else {
        Err(Error::FailedPrecondition(format!(
            "archive {} does not match its manifest: {}",
            path.display(),
            diffs.join("; ")
        )))
    }
}

/// How the live store at `db` differs from the rows of the archive `file`: every row
/// of the archive the live store has under the same key must have the same money
/// columns; with `complete` (after a restore), the live store must have every row of
/// it, so that the counts and money sums of those rows equal the `manifest`'s. Each
/// difference named (at most a few rows per table); empty when none. Reads the live
/// store only, on a connection of its own (the writer is not held).
pub fn compare(db: &Path, file: &Path, manifest: &Manifest, complete: bool) -> Result<Vec<String>> {
    let conn = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(30))?;
    conn.execute(
        "ATTACH DATABASE ?1 AS a",
        [file
            .to_str()
            .ok_or_else(|| Error::invalid("file", "not UTF-8"))?],
    )?;
    conn.execute_batch("BEGIN")?;
    let mut diffs = Vec::new();
    let compared = (|| -> Result<()> {
        for t in TABLES {
            let on = t
                .key
                .iter()
                .map(|k| format!("l.{k} = x.{k}"))
                .collect::<Vec<_>>()
                .join(" AND ");
            let key = t
                .key
                .iter()
                .map(|k| format!("x.{k}"))
                .collect::<Vec<_>>()
                .join(" || ' ' || ");
            if !t.money.is_empty() {
                let differ = t
                    .money
                    .iter()
                    .map(|m| format!("l.{m} IS NOT x.{m}"))
                    .collect::<Vec<_>>()
                    .join(" OR ");
                let cols = t
                    .money
                    .iter()
                    .map(|m| format!("x.{m}, l.{m}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                let rows: Vec<Vec<Value>> = conn
                    .prepare(&format!(
                        "SELECT {key}, {cols} FROM a.{name} AS x JOIN main.{name} AS l ON {on} \
                         WHERE {differ} LIMIT 3",
                        name = t.name
                    ))?
                    .query_map([], |r| {
                        (0..=t.money.len() * 2)
                            .map(|i| r.get::<_, Value>(i))
                            .collect()
                    })?
                    .collect::<rusqlite::Result<_>>()?;
                for row in rows {
                    let id = match &row[0] {
                        Value::Text(s) => s.clone(),
                        v => format!("{v:?}"),
                    };
                    for (i, m) in t.money.iter().enumerate() {
                        let (archived, live) = (&row[1 + 2 * i], &row[2 + 2 * i]);
                        if archived != live {
                            diffs.push(format!(
                                "{} {id}: {m} is {} in the live store, {} in the archive",
                                t.name,
                                yuan(live),
                                yuan(archived)
                            ));
                        }
                    }
                }
            }
            if !complete {
                continue;
            }
            let mut cols = vec![format!("COUNT(l.{})", t.key[0])];
            cols.extend(t.money.iter().map(|m| format!("COALESCE(SUM(l.{m}), 0)")));
            let vals: Vec<i64> = conn.query_row(
                &format!(
                    "SELECT {} FROM a.{name} AS x JOIN main.{name} AS l ON {on}",
                    cols.join(", "),
                    name = t.name
                ),
                [],
                |r| (0..cols.len()).map(|i| r.get::<_, i64>(i)).collect(),
            )?;
            let want = manifest.tables.iter().find(|w| w.table == t.name);
            let rows = u64::try_from(vals[0]).unwrap_or(0);
            let said = want.map_or(0, |w| w.rows);
            if rows != said {
                diffs.push(format!(
                    "the live store has {rows} of the {said} rows of {} the manifest lists",
                    t.name
                ));
            }
            for (m, fen) in t.money.iter().zip(&vals[1..]) {
                let sum = Decimal::new(*fen, 2).to_string();
                let said = want
                    .and_then(|w| w.sums.get(*m))
                    .map_or("nothing", String::as_str);
                if sum != said {
                    diffs.push(format!(
                        "{}.{m} of those rows sums to {sum} in the live store, the manifest says {said}",
                        t.name
                    ));
                }
            }
        }
        Ok(())
    })();
    let _ = conn.execute_batch("COMMIT");
    let _ = conn.execute_batch("DETACH DATABASE a");
    compared?;
    Ok(diffs)
}

/// An integer fen amount read back, in yuan.
fn yuan(v: &Value) -> String {
    match v {
        Value::Integer(fen) => Decimal::new(*fen, 2).to_string(),
        Value::Null => "nothing".into(),
        other => format!("{other:?}"),
    }
}

/// Where a purge or a restore is: the table index in [`TABLES`] and the last key done.
#[derive(Debug, Clone, PartialEq)]
pub struct Cursor {
    pub table: usize,
    pub after: Option<Vec<Value>>,
}

fn value_to_json(v: &Value) -> serde_json::Value {
    match v {
        Value::Integer(i) => serde_json::Value::from(*i),
        Value::Text(s) => serde_json::Value::from(s.clone()),
        _ => serde_json::Value::Null,
    }
}

fn json_to_value(v: &serde_json::Value) -> Value {
    match v {
        serde_json::Value::Number(n) => n.as_i64().map_or(Value::Null, Value::Integer),
        serde_json::Value::String(s) => Value::Text(s.clone()),
        _ => Value::Null,
    }
}

/// The order a purge (`purge`: children first) or a restore (parents first) walks
/// [`TABLES`] in, as indexes into it.
#[must_use]
pub fn walk(purge: bool) -> Vec<usize> {
    let mut order: Vec<usize> = (0..TABLES.len()).collect();
    if purge {
        order.reverse();
    }
    order
}

impl Cursor {
    /// The cursor as recorded in `archived_periods` (`step_table`, `step_after`); the
    /// walk's first table when none is.
    #[must_use]
    pub fn from_record(a: &ArchivedPeriod, purge: bool) -> Self {
        let table = TABLES
            .iter()
            .position(|t| t.name == a.step_table)
            .unwrap_or(walk(purge)[0]);
        let after = serde_json::from_str::<Vec<serde_json::Value>>(&a.step_after)
            .ok()
            .map(|v| v.iter().map(json_to_value).collect());
        Self { table, after }
    }

    fn record(&self) -> (String, String) {
        let name = TABLES.get(self.table).map_or("", |t| t.name).to_owned();
        let after = self.after.as_ref().map_or(String::new(), |k| {
            serde_json::Value::from(k.iter().map(value_to_json).collect::<Vec<_>>()).to_string()
        });
        (name, after)
    }
}

/// The next at most [`STEP_ROWS`] rows of the archive after the cursor, in key order,
/// walking the tables as a purge (`key_only`: each row's key) or a restore (all
/// columns) does: the table's index in [`TABLES`], the columns and the rows.
/// `None` when every table is done.
pub fn next_rows(
    archive: &Connection,
    cursor: &Cursor,
    key_only: bool,
) -> Result<Option<StepRows>> {
    let order = walk(key_only);
    let mut cursor = cursor.clone();
    let mut pos = order.iter().position(|i| *i == cursor.table).unwrap_or(0);
    while let Some(t) = order.get(pos).map(|i| &TABLES[*i]) {
        let cols: Vec<String> = if key_only {
            t.key.iter().map(|s| (*s).to_owned()).collect()
        } else {
            archive
                .prepare(&format!("SELECT name FROM pragma_table_info('{}')", t.name))?
                .query_map([], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?
        };
        let key = t.key.join(", ");
        let (cond, args): (String, Vec<Value>) = match &cursor.after {
            None => (String::new(), Vec::new()),
            Some(k) => {
                let marks = (1..=k.len()).map(|i| format!("?{i}")).collect::<Vec<_>>();
                (format!("WHERE ({key}) > ({})", marks.join(", ")), k.clone())
            }
        };
        let sql = format!(
            "SELECT {} FROM {} {cond} ORDER BY {key} LIMIT {STEP_ROWS}",
            cols.join(", "),
            t.name
        );
        let rows: Vec<Vec<Value>> = archive
            .prepare(&sql)?
            .query_map(rusqlite::params_from_iter(args), |r| {
                (0..cols.len()).map(|i| r.get::<_, Value>(i)).collect()
            })?
            .collect::<rusqlite::Result<_>>()?;
        if !rows.is_empty() {
            return Ok(Some((cursor.table, cols, rows)));
        }
        pos += 1;
        cursor = Cursor {
            table: order.get(pos).copied().unwrap_or(TABLES.len()),
            after: None,
        };
    }
    Ok(None)
}

/// The key of a row read by [`next_rows`] (its first `key.len()` values when read by
/// key, else found by column name).
pub fn key_of(table: &Table, cols: &[String], row: &[Value]) -> Vec<Value> {
    table
        .key
        .iter()
        .map(|k| {
            cols.iter()
                .position(|c| c == k)
                .map_or(Value::Null, |i| row[i].clone())
        })
        .collect()
}

/// One writer job of a purge: deletes the rows (by key) of a table from the live store
/// and moves the cursor past them, in the same transaction, so that a purge killed at
/// any moment resumes at the first row not yet deleted. Returns the rows deleted.
pub fn purge_step(
    conn: &Connection,
    period: &str,
    table: usize,
    keys: &[Vec<Value>],
    now: &str,
) -> Result<u64> {
    expect_state(conn, period, ArchiveState::Purging)?;
    let t = &TABLES[table];
    let cond = t
        .key
        .iter()
        .enumerate()
        .map(|(i, k)| format!("{k} = ?{}", i + 1))
        .collect::<Vec<_>>()
        .join(" AND ");
    let mut stmt = conn.prepare_cached(&format!(
        "DELETE FROM {} WHERE {cond}{}",
        t.name,
        purge_condition(t.name)
    ))?;
    let mut n = 0u64;
    for k in keys {
        n += stmt.execute(rusqlite::params_from_iter(k.iter()))? as u64;
    }
    let cursor = Cursor {
        table,
        after: keys.last().cloned(),
    };
    advance(conn, period, &cursor, n, now)?;
    Ok(n)
}

/// One writer job of a restore: inserts the rows of a table the live store does not
/// have (a row already there is left as it is: a restore repeated, or resumed, changes
/// nothing twice), with the columns the archive and the live table share.
pub fn restore_step(
    conn: &Connection,
    period: &str,
    table: usize,
    cols: &[String],
    rows: &[Vec<Value>],
    now: &str,
) -> Result<u64> {
    expect_state(conn, period, ArchiveState::Restoring)?;
    let t = &TABLES[table];
    let live: Vec<String> = conn
        .prepare_cached(&format!("SELECT name FROM pragma_table_info('{}')", t.name))?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let shared: Vec<usize> = (0..cols.len())
        .filter(|i| live.contains(&cols[*i]))
        .collect();
    let names = shared
        .iter()
        .map(|i| cols[*i].as_str())
        .collect::<Vec<_>>()
        .join(", ");
    let marks = (1..=shared.len())
        .map(|i| format!("?{i}"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut stmt = conn.prepare_cached(&format!(
        "INSERT OR IGNORE INTO {} ({names}) VALUES ({marks})",
        t.name
    ))?;
    let mut n = 0u64;
    for row in rows {
        n += stmt.execute(rusqlite::params_from_iter(shared.iter().map(|i| &row[*i])))? as u64;
    }
    let cursor = Cursor {
        table,
        after: rows.last().map(|r| key_of(t, cols, r)),
    };
    advance(conn, period, &cursor, n, now)?;
    Ok(n)
}

/// What else a row must be for a purge to delete it (`?1` is its visit id): a visit
/// and its fee lines go only when the visit is done with (settled, or cancelled) and no
/// live settlement refers to it any more — one open for settling again, or settled
/// again in a later month, stays with that month.
fn purge_condition(table: &str) -> &'static str {
    match table {
        "visits" => {
            " AND state IN ('settled', 'cancelled') \
             AND NOT EXISTS (SELECT 1 FROM settlements WHERE visit_id = ?1)"
        }
        "fee_lines" => {
            " AND EXISTS (SELECT 1 FROM visits WHERE visit_id = ?1 AND state IN ('settled', 'cancelled')) \
             AND NOT EXISTS (SELECT 1 FROM settlements WHERE visit_id = ?1)"
        }
        _ => "",
    }
}

/// A step of a purge or a restore runs only while the period is in that state: a
/// restore begun meanwhile stops a purge, and the other way round.
fn expect_state(conn: &Connection, period: &str, want: ArchiveState) -> Result<()> {
    match get(conn, period)?.map(|a| a.state) {
        Some(s) if s == want => Ok(()),
        other => Err(Error::FailedPrecondition(format!(
            "the archive of {period} is now {}; the {} stopped",
            other.map_or("gone", ArchiveState::as_str),
            if want == ArchiveState::Purging {
                "purge"
            } else {
                "restore"
            }
        ))),
    }
}

fn advance(conn: &Connection, period: &str, cursor: &Cursor, n: u64, now: &str) -> Result<()> {
    let (table, after) = cursor.record();
    conn.prepare_cached(
        "UPDATE archived_periods SET step_table = ?2, step_after = ?3, \
         rows_done = rows_done + ?4, updated_at = ?5 WHERE period = ?1",
    )?
    .execute(params![period, table, after, n, now])?;
    Ok(())
}

/// Rows of the period still in the live store, per archived table.
pub fn live_rows(conn: &Connection, period: &str) -> Result<Vec<(String, u64)>> {
    let mut out = Vec::new();
    for t in TABLES {
        let n: u64 = conn.query_row(
            &format!("SELECT COUNT(*) FROM ({})", selection(t.name)),
            [period],
            |r| r.get(0),
        )?;
        out.push((t.name.to_owned(), n));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_purge_finishing_after_a_restore_began_does_not_overwrite_it() {
        let mut conn = Connection::open_in_memory().unwrap();
        crate::store::migrations::migrate(&mut conn, crate::store::migrations::Schema::Node)
            .unwrap();
        let t = "2027-03-01T00:00:00Z";
        set_state(&conn, "2026-10", ArchiveState::Purging, t, true).unwrap();
        // A restore begins before the purge's last step has recorded its end.
        set_state(&conn, "2026-10", ArchiveState::Restoring, t, true).unwrap();
        let e = finish_state(
            &conn,
            "2026-10",
            ArchiveState::Purging,
            ArchiveState::Purged,
            t,
        )
        .expect_err("the purge no longer owns the period");
        assert!(
            e.to_string()
                .contains("went from purging to restoring meanwhile"),
            "{e}"
        );
        let state: String = conn
            .query_row(
                "SELECT state FROM archived_periods WHERE period = '2026-10'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(state, "restoring");
        finish_state(
            &conn,
            "2026-10",
            ArchiveState::Restoring,
            ArchiveState::Restored,
            t,
        )
        .unwrap();
    }

    #[test]
    fn states_match_the_check_constraint() {
        let mut conn = Connection::open_in_memory().unwrap();
        crate::store::migrations::migrate(&mut conn, crate::store::migrations::Schema::Node)
            .unwrap();
        for s in ArchiveState::ALL {
            set_state(&conn, "2026-01", s, "now", true).unwrap();
            assert_eq!(get(&conn, "2026-01").unwrap().unwrap().state, s);
        }
        let bad = conn.execute(
            "UPDATE archived_periods SET state = 'gone' WHERE period = '2026-01'",
            [],
        );
        assert!(bad.is_err(), "the CHECK refuses an unknown state");
    }

    /// A node store on disk (WAL, as a node's) with `n` cleared ledger entries of
    /// `period` toward 330200, `n / 2` of them claims of ids 330200-S-….
    fn fill(conn: &Connection, period: &str, n: usize, from: usize) {
        conn.execute_batch("BEGIN").unwrap();
        for i in from..from + n {
            let id = format!("330200-S-{i:010}");
            crate::store::ledger::record(
                conn,
                &crate::store::ledger::Entry {
                    entry_id: &id,
                    side: crate::store::ledger::Side::Receivable,
                    counterparty: "330200",
                    period,
                    kind: "claim",
                    claim_id: &id,
                    amount_fen: 12_345,
                },
                "2026-01-15T00:00:00.000+08:00",
            )
            .unwrap();
        }
        conn.execute(
            "UPDATE ledger SET cleared_round = 'r-' || period WHERE period = ?1",
            [period],
        )
        .unwrap();
        conn.execute_batch("COMMIT").unwrap();
    }

    fn pages(conn: &Connection) -> (u64, u64) {
        (
            conn.pragma_query_value(None, "page_count", |r| r.get(0))
                .unwrap(),
            conn.pragma_query_value(None, "freelist_count", |r| r.get(0))
                .unwrap(),
        )
    }

    /// Export, verify, a tampered copy refused, a purge in steps of at most
    /// [`STEP_ROWS`] rows resumed from its recorded cursor, and the pages it frees
    /// reused by the next period's rows: the file does not grow.
    #[test]
    fn a_period_is_archived_purged_in_steps_and_its_pages_reused() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("node.db");
        let mut conn = Connection::open(&db).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        crate::store::migrations::migrate(&mut conn, crate::store::migrations::Schema::Node)
            .unwrap();
        let n = 20_000;
        fill(&conn, "2026-01", n, 0);
        conn.execute(
            "UPDATE ledger SET cleared_round = NULL WHERE entry_id = '330200-S-0000000007'",
            [],
        )
        .unwrap();
        assert_eq!(
            not_archivable(&conn, "2026-01").unwrap().as_deref(),
            Some("1 ledger entries in no clearing round yet")
        );
        conn.execute(
            "UPDATE ledger SET cleared_round = 'r' WHERE cleared_round IS NULL",
            [],
        )
        .unwrap();
        assert_eq!(not_archivable(&conn, "2026-01").unwrap(), None);

        let file = dir.path().join("330100-2026-01.sqlite");
        let (m, ranges) = build(&db, &file, "330100", "2026-01", "now").unwrap();
        assert_eq!(m.rows(), n as u64);
        assert_eq!(m.tables[5].sums["amount_fen"], "2469000.00");
        assert_eq!(ranges.len(), 1);
        assert_eq!(
            (
                ranges[0].region.as_str(),
                ranges[0].seq_min,
                ranges[0].seq_max
            ),
            ("330200", 0, n as i64 - 1)
        );
        assert_eq!(verify(&file, &m).unwrap(), m);

        let bad = dir.path().join("bad.sqlite");
        std::fs::copy(&file, &bad).unwrap();
        Connection::open(&bad)
            .unwrap()
            .execute(
                "DELETE FROM ledger WHERE entry_id = '330200-S-0000000001'",
                [],
            )
            .unwrap();
        let e = verify(&bad, &m).unwrap_err().to_string();
        assert!(
            e.contains("SHA-256 of the file is")
                && e.contains("ledger has 19999 rows, the manifest says 20000")
                && e.contains("ledger.amount_fen sums to 2468876.55, the manifest says 2469000.00"),
            "{e}"
        );

        set_state(&conn, "2026-01", ArchiveState::Exporting, "now", true).unwrap();
        record_exported(&conn, "2026-01", &m.sha256, &m.to_json(), &ranges, "now").unwrap();
        set_state(&conn, "2026-01", ArchiveState::Purging, "now", false).unwrap();
        let before = pages(&conn);
        let archive = open_file(&file).unwrap();
        let (mut steps, mut slowest) = (0, std::time::Duration::ZERO);
        loop {
            // Resumed from the store's record every step, as after a restart.
            let cursor = Cursor::from_record(&get(&conn, "2026-01").unwrap().unwrap(), true);
            let Some((table, _, keys)) = next_rows(&archive, &cursor, true).unwrap() else {
                break;
            };
            assert!(keys.len() <= STEP_ROWS);
            let t = std::time::Instant::now();
            conn.execute_batch("BEGIN").unwrap();
            purge_step(&conn, "2026-01", table, &keys, "now").unwrap();
            conn.execute_batch("COMMIT").unwrap();
            slowest = slowest.max(t.elapsed());
            steps += 1;
        }
        assert_eq!(steps, n / STEP_ROWS);
        assert_eq!(get(&conn, "2026-01").unwrap().unwrap().rows_done, n as u64);
        assert_eq!(
            live_rows(&conn, "2026-01").unwrap()[5],
            ("ledger".to_owned(), 0)
        );
        assert_eq!(
            period_of_id(&conn, "330200-S-0000000042")
                .unwrap()
                .as_deref(),
            Some("2026-01")
        );
        let purged = pages(&conn);
        fill(&conn, "2026-02", n, n);
        let after = pages(&conn);
        eprintln!(
            "{n} entries: {} pages before the purge, {} free after it; \
             {} pages after as many entries of the next period ({} free); slowest step {slowest:?}",
            before.0, purged.1, after.0, after.1
        );
        assert!(purged.1 > 0, "the purge freed pages");
        assert!(
            after.0 <= before.0 + before.0 / 20,
            "the next period reused the freed pages: {before:?} → {after:?}"
        );
    }

    #[test]
    fn ids_in_an_archived_range_name_their_period() {
        let mut conn = Connection::open_in_memory().unwrap();
        crate::store::migrations::migrate(&mut conn, crate::store::migrations::Schema::Node)
            .unwrap();
        set_state(&conn, "2026-01", ArchiveState::Exporting, "now", true).unwrap();
        // The archive holds 5, 7 and 9 of 330200's ids: 6 and 8 are in its range but
        // were never stored here (a claim delivered late, say).
        record_exported(
            &conn,
            "2026-01",
            "d",
            "{}",
            &[IdRange::of("330200".into(), &[5, 7, 9])],
            "now",
        )
        .unwrap();
        assert_eq!(
            period_of_id(&conn, "330200-S-0000000007")
                .unwrap()
                .as_deref(),
            Some("2026-01")
        );
        assert_eq!(period_of_id(&conn, "330200-S-0000000006").unwrap(), None);
        assert_eq!(period_of_id(&conn, "330200-S-0000000008").unwrap(), None);
        assert!(holds(&conn, "2026-01", "330200-S-0000000009").unwrap());
        assert!(!holds(&conn, "2026-01", "330200-S-0000000008").unwrap());
        assert_eq!(period_of_id(&conn, "330200-S-0000000010").unwrap(), None);
        // A range recorded without its members (before they were, or too wide) holds
        // every id in it.
        assert!(
            IdRange::of("330200".into(), &[0, MAX_MEMBER_BITS])
                .members
                .is_none()
        );
        conn.execute("UPDATE archived_ranges SET members = NULL", [])
            .unwrap();
        assert_eq!(
            period_of_id(&conn, "330200-S-0000000008")
                .unwrap()
                .as_deref(),
            Some("2026-01")
        );
        assert_eq!(period_of_id(&conn, "330100-S-0000000007").unwrap(), None);
        set_state(&conn, "2026-01", ArchiveState::Restored, "now", true).unwrap();
        assert_eq!(period_of_id(&conn, "330200-S-0000000007").unwrap(), None);
    }
}
