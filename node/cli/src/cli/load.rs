//! `yidi load-persons`: a new node's first load of its person register from the
//! agency's CSV file, straight into the stopped node's store.
//!
//! Same file format, same per-row validation and the same report (progress bar,
//! rejected rows, `--errors`, `--json`, exit codes 0/2/1) as `yidi admin person
//! import`, which stays the way to bring changes into a running node. What differs is
//! the path to disk (see [`yidi_node::store::person_load`]): rows are staged, written in ID
//! order and indexed by sorting, in one transaction — millions of rows per minute
//! where the online import, maintaining randomly keyed indexes row by row under
//! commits, slows down as the register grows.
//!
//! Three threads read the file: one cuts it into lines (CSV parsing), two check each
//! row (ID checksums, dates, amounts) and encode it with its SHA-256 look-up hash —
//! most of the CPU of a load — into their own [`Rows`]. Then the store sorts, writes
//! and indexes ([`person_load::load`]).

use std::{
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use clap::Args;
use yidi_common::{period, proto::RowError, region::RegionCode};

use super::import::{Columns, Line, PERSON_COLUMNS, Report, next_line, open_csv};
use yidi_node::{
    records::{person_from_row, row_error},
    store::{
        Store, lock,
        person_load::{self, Phase, Rows},
    },
};

/// Flags of `yidi load-persons`.
#[derive(Debug, Clone, Args)]
pub struct LoadArgs {
    /// CSV file with a header line, columns as for `yidi admin person import`
    /// (docs/admin.md); one row per person.
    pub file: PathBuf,
    /// The node's data directory. The node must be stopped.
    #[arg(long, env = "YIDI_DATA_DIR")]
    pub data_dir: PathBuf,
    /// The node's region (6-digit city code); a new data directory is created for it,
    /// an existing one must belong to it.
    #[arg(long, env = "YIDI_REGION")]
    pub region: String,
    /// Also write rejected rows to this CSV file (columns: row, field, reason).
    #[arg(long)]
    pub errors: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Lines handed from the parsing thread to a checking one at a time.
const CHUNK: usize = 4096;

/// Threads checking rows.
const CHECKERS: usize = 2;

/// Runs the load; returns the exit code (0 every row loaded, 2 some rejected).
pub fn run(args: &LoadArgs) -> anyhow::Result<i32> {
    let region = RegionCode::parse_city(&args.region, "region")
        .map_err(|e| anyhow::anyhow!("--region: {e}"))?;
    let _lock = lock::lock_dir(&args.data_dir)?;
    // A store with persons is refused before anything is changed or read (opening it
    // for the load would first bring its schema up to date, which can take minutes).
    // The load checks again inside its transaction.
    let existing = args.data_dir.join(yidi_node::store::DB_FILE);
    if existing.exists() {
        // Read-only: a read-write connection's close would apply and remove the log of
        // a node that did not stop cleanly, before the store's checks have looked at it.
        person_load::ensure_empty(&rusqlite::Connection::open_with_flags(
            &existing,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?)?;
    }
    let mut conn = Store::open_connection(&args.data_dir, region.as_str())?;
    let outcome = load(&mut conn, args);
    // Back to WAL whether or not the load went through (a failed one has been rolled
    // back): the store is then as the node expects it.
    let restored = person_load::restore_wal(&conn);
    let code = outcome?;
    restored?;
    Ok(code)
}

/// Ends the running step — its time added to `phases`, to the last entry if that is
/// the same step reported again — and starts `next`.
fn next_step(
    phases: &mut Vec<(&'static str, Duration)>,
    current: &mut (&'static str, Instant),
    next: &'static str,
) {
    let now = Instant::now();
    let took = now.duration_since(current.1);
    match phases.last_mut() {
        Some((name, d)) if *name == current.0 => *d += took,
        _ => phases.push((current.0, took)),
    }
    *current = (next, now);
}

fn load(conn: &mut rusqlite::Connection, args: &LoadArgs) -> anyhow::Result<i32> {
    let mut reader = open_csv(&args.file)?;
    let header = reader
        .headers()
        .context("cannot read the CSV header")?
        .clone();
    let cols = Columns::from_header(&header, PERSON_COLUMNS, &args.file)?;
    let mut report = Report::new("persons", &args.file, args.json);
    let (parts, lines, errors) = read(reader, &cols, &report)?;
    report.read(lines, errors, report.bar.length().unwrap_or(0));
    let bar = report.bar.clone();
    let now = period::now_rfc3339();
    // Each step's duration, for the report: an operator plans the next load's window.
    // Reading runs from the report's start until the load's first step.
    let mut phases = Vec::new();
    let mut current = ("read", report.started());
    let loaded = person_load::load(conn, &now, parts, &mut |phase| {
        let (step, message) = match phase {
            Phase::Sorting { rows } => ("sort", format!("sorting {rows} persons by ID number")),
            Phase::Writing { rows } => ("write", format!("writing {rows} persons")),
            Phase::Indexing { index, by } => (index, format!("indexing by {by}")),
            Phase::Committing => ("commit", "writing the register to disk".to_owned()),
        };
        next_step(&mut phases, &mut current, step);
        bar.set_message(message);
    })?;
    next_step(&mut phases, &mut current, "");
    report.phases = phases;
    report.result.inserted = loaded.inserted;
    report
        .result
        .errors
        .extend(loaded.rejected.into_iter().map(|r| RowError {
            row: r.line,
            field: r.field.to_owned(),
            reason: r.reason,
        }));
    report.finish(args.json, args.errors.as_deref())
}

/// Reads the whole file: the valid rows (one [`Rows`] per checking thread), the number
/// of lines read and the rows refused. The progress bar follows the bytes read.
fn read(
    mut reader: csv::Reader<std::fs::File>,
    cols: &Columns,
    report: &Report,
) -> anyhow::Result<(Vec<Rows>, u64, Vec<RowError>)> {
    let (tx, rx) = mpsc::sync_channel::<Vec<Line>>(2 * CHECKERS);
    let rx = Arc::new(Mutex::new(rx));
    let byte = AtomicU64::new(0);
    std::thread::scope(|scope| {
        let parsing = scope.spawn(|| -> anyhow::Result<(u64, Vec<RowError>)> {
            let (mut lines, mut errors) = (0u64, Vec::new());
            let mut chunk = Vec::with_capacity(CHUNK);
            while let Some(line) = next_line(&mut reader, &mut errors)? {
                lines += 1;
                chunk.push(line);
                if chunk.len() == CHUNK {
                    byte.store(reader.position().byte(), Ordering::Relaxed);
                    if tx
                        .send(std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK)))
                        .is_err()
                    {
                        break;
                    }
                }
            }
            let _ = tx.send(chunk);
            drop(tx);
            Ok((lines, errors))
        });
        let checking: Vec<_> = (0..CHECKERS)
            .map(|_| {
                let rx = Arc::clone(&rx);
                scope.spawn(move || check(&rx, cols))
            })
            .collect();
        // Only the checking threads hold the receiver: should they all stop, the
        // parsing thread's next send fails and it stops too, instead of waiting forever.
        drop(rx);
        while !(parsing.is_finished() && checking.iter().all(|c| c.is_finished())) {
            report.bar.set_position(byte.load(Ordering::Relaxed));
            std::thread::sleep(Duration::from_millis(100));
        }
        let (lines, mut errors) = parsing
            .join()
            .map_err(|_| anyhow::anyhow!("the thread reading the file panicked"))??;
        let mut parts = Vec::with_capacity(CHECKERS);
        for c in checking {
            let (rows, refused) = c
                .join()
                .map_err(|_| anyhow::anyhow!("a thread checking rows panicked"))?;
            parts.push(rows);
            errors.extend(refused);
        }
        Ok((parts, lines, errors))
    })
}

/// Checks the lines of the chunks it takes until the parsing thread is done.
fn check(rx: &Mutex<mpsc::Receiver<Vec<Line>>>, cols: &Columns) -> (Rows, Vec<RowError>) {
    let (mut rows, mut errors) = (Rows::default(), Vec::new());
    // Offline, with no node running: the system clock and the default bound.
    let clock = yidi_node::clock::Clock::default();
    loop {
        // The lock is held only to take a chunk, not while checking it.
        let next = rx.lock().map(|r| r.recv());
        let Ok(Ok(chunk)) = next else {
            return (rows, errors);
        };
        for line in chunk {
            match cols.check_width(&line) {
                Some(e) => errors.push(e),
                None => match person_from_row(&cols.person_row(&line), &clock) {
                    Ok(rec) => rows.push(line.line, &rec),
                    Err(e) => errors.push(row_error(line.line, e)),
                },
            }
        }
    }
}
