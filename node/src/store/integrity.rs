//! Checks that a store is whole before a node serves from it, and the two marker files
//! that make those checks possible. SQLite opens a truncated, emptied or swapped
//! database file without complaint and only fails (or, worse, succeeds) on the pages a
//! request happens to touch; a node must instead refuse to start, naming the file and
//! the repair.
//!
//! Beside `node.db` (or `coordinator.db`) in the data directory:
//! - `node.id` — written once, when the store is created (or first opened by a yidi
//!   that writes it): the region and a store id that is also kept inside the database.
//!   A missing or empty database, or another store's, where this file says there was
//!   one is refused instead of silently starting empty.
//! - `node.running` — written (and synced) once the node has opened its store, removed
//!   only after a complete `wal_checkpoint(TRUNCATE)` at shutdown. Present at a start,
//!   it means the last run did not stop cleanly, so the write-ahead log (`node.db-wal`)
//!   may hold acknowledged transactions that are not in `node.db` yet; a missing log is
//!   then refused.
//!
//! A damaged page met while serving stops the writer (`super::writer`) and is recorded
//! in the running marker at the stop, so that the next start checks every page.
//!
//! What runs at each start costs a few file reads, whatever the store's size: the
//! markers, the database header (page size and page count against the file's size), the
//! schema version and the region. `PRAGMA quick_check` reads every page, so it runs
//! only when asked (`check_store = "quick"`, `yidi check-store`) or after an unclean
//! stop of a store small enough to check within the start-time budget
//! ([`AUTO_QUICK_CHECK_LIMIT`]).

use std::{
    fs::File,
    io::{Read, Write},
    path::{Path, PathBuf},
};

use rusqlite::Connection;
use serde::Deserialize;

use crate::{Error, Result};

/// The largest store (database and log) that `check_store = "auto"` reads in full
/// after an unclean stop; larger ones get the header checks only, so that a node with
/// millions of persons still starts within its budget.
pub const AUTO_QUICK_CHECK_LIMIT: u64 = 256 << 20;

/// What the repair is, in every refusal.
const REPAIR: &str = "Restore the store from a `yidi backup` copy (docs/operator.md, \
                      \"Restoring a store\")";

/// How much of the store is verified when it is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckStore {
    /// The header checks always; `PRAGMA quick_check` after an unclean stop when the
    /// store is at most 256 MiB.
    #[default]
    Auto,
    /// The header checks and `PRAGMA quick_check` at every start (reads every page).
    Quick,
    /// The header checks only.
    Off,
}

/// The marker files of a store in its data directory.
#[derive(Debug, Clone)]
pub struct StoreFiles {
    pub db: PathBuf,
    pub wal: PathBuf,
    pub id: PathBuf,
    pub running: PathBuf,
}

impl StoreFiles {
    /// The files of store `file` (e.g. `node.db`) in `dir`.
    #[must_use]
    pub fn new(dir: &Path, file: &str) -> Self {
        let stem = file.strip_suffix(".db").unwrap_or(file);
        Self {
            db: dir.join(file),
            wal: dir.join(format!("{file}-wal")),
            id: dir.join(format!("{stem}.id")),
            running: dir.join(format!("{stem}.running")),
        }
    }
}

/// The contents of the identity marker.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct IdMarker {
    pub region: String,
    pub store_id: String,
    pub created_at: String,
}

/// What the checks before opening found, for the checks after it.
#[derive(Debug)]
pub struct Preflight {
    pub files: StoreFiles,
    /// The identity marker, if the directory has one.
    pub marker: Option<IdMarker>,
    /// The last run did not stop cleanly (the running marker is present).
    pub unclean: bool,
    /// A start after that unclean stop already applied the log to the database file
    /// (and then refused the store): a missing log is no loss any more.
    pub log_applied: bool,
    /// The last run found the store damaged while serving.
    pub damaged_seen: bool,
    /// Bytes of the database and its log, to bound `quick_check` in auto mode.
    pub bytes: u64,
}

fn damaged(db: &Path, what: &str) -> Error {
    Error::FailedPrecondition(format!(
        "store {} is damaged: {what}. The node will not serve from it. {REPAIR}.",
        db.display()
    ))
}

/// Reads the identity marker; a marker that cannot be read is refused rather than
/// ignored, since ignoring it would disable the check it exists for.
fn read_marker(path: &Path) -> Result<Option<IdMarker>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(Error::Unavailable(format!(
                "cannot read {}: {e}",
                path.display()
            )));
        }
    };
    toml::from_str(&text).map(Some).map_err(|e| {
        Error::FailedPrecondition(format!(
            "store marker {} is unreadable ({e}); it records which store belongs in this \
             directory. Restore it from a backup of the directory, or delete it to accept \
             the store that is there as this directory's",
            path.display()
        ))
    })
}

/// Writes `text` to `path` durably: a temporary file, synced, renamed, directory synced.
fn write_durably(path: &Path, text: &str) -> Result<()> {
    let io =
        |e: std::io::Error| Error::Unavailable(format!("cannot write {}: {e}", path.display()));
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).map_err(io)?;
    f.write_all(text.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io)?;
    sync_dir(path);
    Ok(())
}

/// Syncs the directory holding `path`, so that a created, renamed or removed entry
/// survives a power loss. Best effort: not every file system can sync a directory.
fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent()
        && let Ok(d) = File::open(dir)
    {
        let _ = d.sync_all();
    }
}

/// Writes the identity marker for a store of `region` with id `store_id`.
pub fn write_marker(path: &Path, region: &str, store_id: &str) -> Result<()> {
    let text = format!(
        "# Written when this data directory's store was created. yidi refuses to start\n\
         # when the store file is missing, empty or another store's; do not delete this\n\
         # file unless you mean to start a new store here (docs/operator.md).\n\
         region = {region:?}\nstore_id = {store_id:?}\ncreated_at = {:?}\n",
        chrono::Utc::now().to_rfc3339()
    );
    write_durably(path, &text)
}

/// Records that the store is in use: until [`mark_stopped`], its log may hold
/// transactions not yet in the database file.
pub fn mark_running(files: &StoreFiles) -> Result<()> {
    write_durably(
        &files.running,
        &format!(
            "# The node using this store has not stopped cleanly (yet): see docs/operator.md.\n\
             pid = {}\nstarted_at = {:?}\n",
            std::process::id(),
            chrono::Utc::now().to_rfc3339()
        ),
    )
}

/// Records, before SQLite opens the store (before WAL mode is set or anything is
/// written: a migration, the region), that a node is opening it. A start that dies in
/// that window leaves this marker, so the next start treats the stop as unclean (checks
/// the log and the pages); until the log exists it may be missing without loss, which
/// [`OPENING`] tells [`preflight`]. Replaced by [`mark_running`] once the store is open.
pub fn mark_opening(files: &StoreFiles) -> Result<()> {
    write_durably(
        &files.running,
        &format!(
            "# A node was opening this store and has not stopped cleanly (yet): see docs/operator.md.\n\
             {OPENING}\npid = {}\nstarted_at = {:?}\n",
            std::process::id(),
            chrono::Utc::now().to_rfc3339()
        ),
    )
}

/// The running marker's line saying the store was being opened (see [`mark_opening`]).
const OPENING: &str = "opening = true";

/// The running marker's line saying the log of the unclean stop was applied.
const LOG_APPLIED: &str = "log_applied = true";

/// The running marker's line saying a node found the store damaged while serving.
const DAMAGED: &str = "damaged = true";

/// Records, in the running marker of an unclean stop, that its log is now in the
/// database file, while the marker stays (so that the page check runs again at the
/// next start) until the store passes its checks.
fn mark_log_applied(files: &StoreFiles) -> Result<()> {
    write_durably(
        &files.running,
        &format!(
            "# The node using this store did not stop cleanly; its log has since been applied.\n\
             {LOG_APPLIED}\n"
        ),
    )
}

/// Records at a stop that the node found the store damaged while serving (its log
/// applied): the next start runs `quick_check` whatever the store's size.
pub fn mark_damaged(files: &StoreFiles) -> Result<()> {
    write_durably(
        &files.running,
        &format!(
            "# The node using this store found it damaged; every page is checked at the next start.\n\
             {LOG_APPLIED}\n{DAMAGED}\n"
        ),
    )
}

/// Records that the store's log was checkpointed completely: the database file alone
/// holds everything.
pub fn mark_stopped(running: &Path) -> Result<()> {
    match std::fs::remove_file(running) {
        Ok(()) => {
            sync_dir(running);
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::Unavailable(format!(
            "cannot remove {}: {e}",
            running.display()
        ))),
    }
}

/// The fields of a SQLite database header that the size check needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    page_size: u64,
    /// The in-header page count, when SQLite marks it valid.
    pages: Option<u64>,
    /// The file was last written in WAL mode.
    wal_mode: bool,
}

fn parse_header(h: &[u8; 100]) -> std::result::Result<Header, &'static str> {
    if &h[..16] != b"SQLite format 3\0" {
        return Err("its first bytes are not a SQLite header");
    }
    let raw = u64::from(u16::from_be_bytes([h[16], h[17]]));
    let page_size = if raw == 1 { 65_536 } else { raw };
    if !(512..=65_536).contains(&page_size) || !page_size.is_power_of_two() {
        return Err("its header gives an impossible page size");
    }
    let be32 = |at: usize| u32::from_be_bytes([h[at], h[at + 1], h[at + 2], h[at + 3]]);
    // The page count is trustworthy only when "version-valid-for" equals the change
    // counter (SQLite's own rule; older writers left the count stale).
    let pages = (be32(92) == be32(24) && be32(28) > 0).then(|| u64::from(be32(28)));
    Ok(Header {
        page_size,
        pages,
        wal_mode: h[18] == 2 && h[19] == 2,
    })
}

/// Whether the log holds any frame (a log of only its 32-byte header, or none, holds
/// no transaction).
fn wal_has_frames(wal: &Path) -> bool {
    std::fs::metadata(wal).is_ok_and(|m| m.len() > 32)
}

/// The checks before SQLite opens the file: the markers against the database file, the
/// header against the file's size, and the log after an unclean stop.
pub fn preflight(dir: &Path, file: &str) -> Result<Preflight> {
    let files = StoreFiles::new(dir, file);
    let marker = read_marker(&files.id)?;
    let len = match std::fs::metadata(&files.db) {
        Ok(m) => Some(m.len()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            return Err(Error::Unavailable(format!(
                "cannot read {}: {e}",
                files.db.display()
            )));
        }
    };
    if let Some(m) = &marker
        && matches!(len, None | Some(0))
    {
        return Err(Error::FailedPrecondition(format!(
            "store {} is {}, but {} records store {} of region {} created {}: its data \
             are gone and the node will not start an empty store in their place. {REPAIR}; \
             to start a new, empty store here on purpose, delete {}",
            files.db.display(),
            if len.is_none() {
                "missing"
            } else {
                "empty (0 bytes)"
            },
            files.id.display(),
            m.store_id,
            m.region,
            m.created_at,
            files.id.display()
        )));
    }
    // The log's presence before the running marker's: a closing store removes its
    // marker before SQLite deletes the log, so this order never sees a log deleted
    // by a clean close beside a marker still present.
    let wal_present = files.wal.exists();
    let running = std::fs::read_to_string(&files.running).ok();
    let unclean = running.is_some();
    let log_applied = running.as_ref().is_some_and(|t| t.contains(LOG_APPLIED));
    let damaged_seen = running.as_ref().is_some_and(|t| t.contains(DAMAGED));
    let opening = running.as_ref().is_some_and(|t| t.contains(OPENING));
    if let Some(len) = len.filter(|l| *l > 0) {
        let mut h = [0_u8; 100];
        if len < 100 {
            return Err(damaged(
                &files.db,
                &format!("it is {len} bytes long, shorter than a SQLite header"),
            ));
        }
        File::open(&files.db)
            .and_then(|mut f| f.read_exact(&mut h))
            .map_err(|e| Error::Unavailable(format!("cannot read {}: {e}", files.db.display())))?;
        let header = parse_header(&h).map_err(|what| damaged(&files.db, what))?;
        if len % header.page_size != 0 {
            return Err(damaged(
                &files.db,
                &format!(
                    "it is {len} bytes long, not a whole number of {}-byte pages (truncated)",
                    header.page_size
                ),
            ));
        }
        // With frames in the log the file may legitimately be shorter than its header
        // says (a checkpoint cut short); SQLite checks that case when it checkpoints.
        if let Some(pages) = header.pages
            && len < pages * header.page_size
            && !wal_has_frames(&files.wal)
        {
            return Err(damaged(
                &files.db,
                &format!(
                    "its header counts {pages} pages ({} bytes) but the file has {len} bytes \
                     (truncated)",
                    pages * header.page_size
                ),
            ));
        }
        // A file last written in WAL mode by a node that did not stop cleanly has its
        // log beside it for as long as the node ran: SQLite deletes the log only when
        // the last connection closes after a complete checkpoint. (A restored backup is
        // in rollback-journal mode and needs none.) That close may also be another
        // program's (sqlite3) after the crash, which lost nothing; it cannot be told
        // apart from a deleted log, so both are refused and the message says so.
        // A start that died while opening the store may have died before SQLite
        // created the log: no log is then no loss.
        if unclean && !log_applied && !opening && header.wal_mode && !wal_present {
            return Err(Error::FailedPrecondition(format!(
                "store {} was in use when its node last stopped without a clean shutdown \
                 ({} is present), and its write-ahead log {} is missing: transactions \
                 acknowledged since the last checkpoint were only in that file. Put the \
                 -wal file back beside the store (never delete a stopped node's -wal or \
                 -shm files), or {}. To start anyway, accepting the loss of whatever the \
                 log held, delete {} (nothing was lost if another program, e.g. sqlite3, \
                 opened and closed the store since: SQLite then applies the log and \
                 removes it itself)",
                files.db.display(),
                files.running.display(),
                files.wal.display(),
                REPAIR.replacen('R', "r", 1),
                files.running.display()
            )));
        }
    }
    let bytes = len.unwrap_or(0) + std::fs::metadata(&files.wal).map_or(0, |m| m.len());
    Ok(Preflight {
        files,
        marker,
        unclean,
        log_applied,
        damaged_seen,
        bytes,
    })
}

/// The checks once SQLite has the file open, before any migration: a schema this
/// binary does not know, or an empty database where the marker says there was a store.
pub fn check_schema(conn: &Connection, pre: &Preflight, known: u32) -> Result<()> {
    let version: u32 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version > known {
        return Err(Error::FailedPrecondition(format!(
            "store {} has schema version {version}, newer than this yidi knows ({known}): \
             it was written by a later release. Run that release (or later), or {}",
            pre.files.db.display(),
            REPAIR.replacen('R', "r", 1)
        )));
    }
    if version == 0
        && let Some(m) = &pre.marker
    {
        return Err(Error::FailedPrecondition(format!(
            "store {} holds no yidi schema, but {} records store {} of region {}: the \
             store's data are gone. {REPAIR}; to start a new, empty store here on purpose, \
             delete {}",
            pre.files.db.display(),
            pre.files.id.display(),
            m.store_id,
            m.region,
            pre.files.id.display()
        )));
    }
    Ok(())
}

/// The store id kept in the database (created on first use) against the marker's;
/// writes the marker when the directory has none yet.
pub fn check_identity(conn: &Connection, pre: &Preflight, region: &str) -> Result<()> {
    let id = match super::meta_get(conn, "store_id")? {
        Some(id) => id,
        None if pre.marker.is_some() => String::new(),
        None => {
            let id = uuid::Uuid::new_v4().to_string();
            super::meta_set(conn, "store_id", &id)?;
            id
        }
    };
    match &pre.marker {
        Some(m) if m.store_id != id || m.region != region => {
            Err(Error::FailedPrecondition(format!(
                "store {} is not the store this data directory was created with: {} \
                 records store {} of region {}, the file holds {} of region {region}. Put \
                 the right file back or {}; if this file is meant to replace the old \
                 store, delete {}",
                pre.files.db.display(),
                pre.files.id.display(),
                m.store_id,
                m.region,
                if id.is_empty() { "no store id" } else { &id },
                REPAIR.replacen('R', "r", 1),
                pre.files.id.display()
            )))
        }
        Some(_) => Ok(()),
        None => write_marker(&pre.files.id, region, &id),
    }
}

/// Copies the whole log into the database file and empties it; true when complete
/// (false when a reader kept part of it in use).
pub fn checkpoint_truncate(conn: &Connection) -> rusqlite::Result<bool> {
    let (busy, log, done): (i64, i64, i64) =
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?;
    Ok(busy == 0 && log == done)
}

/// The checks that read the store after an unclean stop or when asked: the log
/// checkpointed (SQLite refuses a database file much shorter than the log needs), then
/// `PRAGMA quick_check` as `mode` decides. Once both passed the running marker of the
/// last run is obsolete (everything is in the database file) and is removed; a store
/// refused keeps it, so that the next start checks it again.
pub fn check_contents(conn: &Connection, pre: &Preflight, mode: CheckStore) -> Result<()> {
    let db = &pre.files.db;
    let mut applied = pre.log_applied;
    if pre.unclean && !applied {
        match checkpoint_truncate(conn) {
            Ok(true) => {
                mark_log_applied(&pre.files)?;
                applied = true;
            }
            Ok(false) => {
                tracing::warn!(store = %db.display(), "the log of the last run could not be checkpointed completely at start")
            }
            Err(e) => return Err(damaged(db, &format!("its log cannot be applied ({e})"))),
        }
    }
    let quick = match mode {
        CheckStore::Quick => true,
        CheckStore::Off => false,
        CheckStore::Auto => {
            pre.damaged_seen || (pre.unclean && pre.bytes <= AUTO_QUICK_CHECK_LIMIT)
        }
    };
    if quick {
        let started = std::time::Instant::now();
        quick_check(conn).map_err(|what| damaged(db, &what))?;
        tracing::info!(store = %db.display(), bytes = pre.bytes, elapsed_ms = started.elapsed().as_millis() as u64, "store passed quick_check");
    } else if pre.unclean {
        tracing::warn!(store = %db.display(), bytes = pre.bytes, "the last run did not stop cleanly and the store is too large for a check at start; run `yidi check-store` when convenient");
    }
    if pre.unclean && applied {
        mark_stopped(&pre.files.running)?;
    }
    Ok(())
}

/// `PRAGMA quick_check`: every page read and every b-tree's structure checked.
pub fn quick_check(conn: &Connection) -> std::result::Result<(), String> {
    let rows: rusqlite::Result<Vec<String>> = conn
        .prepare("PRAGMA quick_check(20)")
        .and_then(|mut st| st.query_map([], |r| r.get(0))?.collect());
    match rows {
        Ok(r) if r.len() == 1 && r[0] == "ok" => Ok(()),
        Ok(r) => Err(format!("quick_check found: {}", r.join("; "))),
        Err(e) => Err(format!("quick_check failed: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(page_size: u16, counter: u32, pages: u32, valid_for: u32, wal: bool) -> [u8; 100] {
        let mut h = [0_u8; 100];
        h[..16].copy_from_slice(b"SQLite format 3\0");
        h[16..18].copy_from_slice(&page_size.to_be_bytes());
        h[18] = if wal { 2 } else { 1 };
        h[19] = h[18];
        h[24..28].copy_from_slice(&counter.to_be_bytes());
        h[28..32].copy_from_slice(&pages.to_be_bytes());
        h[92..96].copy_from_slice(&valid_for.to_be_bytes());
        h
    }

    #[test]
    fn the_header_gives_page_size_count_and_mode() {
        assert_eq!(
            parse_header(&header(4096, 7, 12, 7, true)),
            Ok(Header {
                page_size: 4096,
                pages: Some(12),
                wal_mode: true
            })
        );
        // A stale count (another writer's change counter) is not trusted.
        assert_eq!(
            parse_header(&header(4096, 8, 12, 7, false)).unwrap().pages,
            None
        );
        // 1 stands for 65536.
        assert_eq!(
            parse_header(&header(1, 1, 1, 1, false)).unwrap().page_size,
            65_536
        );
        assert!(parse_header(&header(1000, 1, 1, 1, false)).is_err());
        let mut bad = header(4096, 1, 1, 1, false);
        bad[0] = b'X';
        assert!(parse_header(&bad).is_err());
    }

    #[test]
    fn marker_names_follow_the_store_file() {
        let f = StoreFiles::new(Path::new("/d"), "coordinator.db");
        assert_eq!(f.id, Path::new("/d/coordinator.id"));
        assert_eq!(f.running, Path::new("/d/coordinator.running"));
        assert_eq!(f.wal, Path::new("/d/coordinator.db-wal"));
    }
}
