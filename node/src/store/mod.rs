//! The node's embedded SQLite store. One writer thread owns the only write connection
//! and runs requests sent over a channel, grouping whatever is queued into one
//! transaction so that one fsync serves many requests (group commit); reads run on a
//! small pool of read-only connections on blocking threads. Nothing here ever touches
//! SQLite from an async runtime worker.

pub mod accumulators;
pub mod archive;
pub mod audit;
pub mod catalogue;
mod checkpointer;
pub mod claims;
pub mod clearing;
pub mod filings;
pub mod footprint;
pub mod funds;
pub mod institutions;
pub mod integrity;
pub mod ledger;
pub mod lock;
mod migrations;
pub mod nhsa_files;
pub mod outbox;
pub mod overview;
pub mod person_load;
pub mod persons;
pub mod policies;
pub mod retention;
pub mod sequences;
pub mod settlements;
pub mod split_codec;
pub mod states;
pub mod visits;
mod writer;

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use rusqlite::{Connection, OpenFlags};
use tokio::sync::Semaphore;

pub use integrity::CheckStore;
pub use migrations::SCHEMA_VERSION;
pub use writer::{
    BACKGROUND_MAX_WAIT, DEFAULT_FULL_WAIT, DEFAULT_QUEUE_CAPACITY, JobKind, KindReading, SLOW_JOB,
    WriteQueue, Writer, WriterTotals, in_part,
};

use crate::{Error, Result};

/// File name of the node's database inside its data directory.
pub const DB_FILE: &str = "node.db";

/// What an upsert did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upsert {
    Inserted,
    Updated,
    Unchanged,
}

/// Maps a stored enum name back, reporting a corrupt value as a conversion failure.
pub(crate) fn column_enum<T>(
    r: &rusqlite::Row<'_>,
    i: usize,
    parse: impl FnOnce(&str, &str) -> yidi_common::Result<T>,
) -> rusqlite::Result<T> {
    let s: String = r.get(i)?;
    parse(&s, "column").map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e))
    })
}

/// A value of the store's `meta` table.
pub fn meta_get(conn: &Connection, key: &str) -> Result<Option<String>> {
    use rusqlite::OptionalExtension;
    Ok(conn
        .prepare_cached("SELECT value FROM meta WHERE key = ?1")?
        .query_row([key], |r| r.get(0))
        .optional()?)
}

/// Sets a value of the store's `meta` table.
pub fn meta_set(conn: &Connection, key: &str, value: &str) -> Result<()> {
    conn.prepare_cached("INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value")?
        .execute([key, value])?;
    Ok(())
}

/// Runs `f` inside one deferred (read) transaction of a reader connection and ends it
/// whatever `f` returned; `false` beside the result when the transaction could not be
/// ended — a reader left inside a transaction would pin an old snapshot for every later
/// read and keep the log from being checkpointed, so the caller retires it.
fn read_transaction<R>(
    conn: &Connection,
    f: impl FnOnce(&Connection) -> Result<R>,
) -> (Result<R>, bool) {
    let run = |sql: &str| {
        conn.prepare_cached(sql)
            .and_then(|mut s| s.execute([]))
            .map(drop)
    };
    if let Err(e) = run("BEGIN") {
        return (Err(e.into()), conn.is_autocommit());
    }
    let out = f(conn);
    if !conn.is_autocommit() && run("COMMIT").is_err() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    (out, conn.is_autocommit())
}

/// What `yidi check-store` found in a store that passed.
#[derive(Debug, Clone)]
pub struct CheckReport {
    pub path: PathBuf,
    /// The database and its log.
    pub bytes: u64,
    pub schema_version: u32,
    pub region: String,
    /// The last run had not stopped cleanly (its log was applied by the check).
    pub unclean: bool,
}

/// Handle to the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    writer: Writer,
    readers: Arc<ReadPool>,
    path: PathBuf,
}

struct ReadPool {
    conns: Mutex<Vec<Connection>>,
    /// One permit per connection, so a reader waits asynchronously rather than on a lock.
    permits: Arc<Semaphore>,
    /// Connections not retired (idle or in use): what a close waits for.
    live: std::sync::atomic::AtomicU32,
    /// Keeps the writer running until the read connections above are closed (fields
    /// drop in order): the writer's connection must be the last one, so that its
    /// closing checkpoint, not a reader's, is what empties the log.
    writer: Writer,
}

/// Applies the pragmas every connection needs. `synchronous=FULL` because what the
/// writer commits is acknowledged to hospitals and peers and must survive power loss.
fn configure(conn: &Connection, reader: bool) -> rusqlite::Result<()> {
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    // The writer reads through a memory map instead of a read() per page (SQLite caps
    // the size at its compile-time maximum; the mapping costs address space, not
    // memory). A reader does not: in WAL mode it drops its map — an munmap and page
    // faults for every page afterwards — each time it finds that the writer committed,
    // which under load is at almost every read; its few pages per read cost less as
    // read() calls from the kernel's page cache (measured: `docs/performance.md`).
    conn.pragma_update(None, "mmap_size", if reader { 0 } else { 4_i64 << 30 })?;
    if reader {
        // 32 MiB (default 2 MiB): the upper levels of a large store's indexes.
        conn.pragma_update(None, "cache_size", -32_768)?;
    } else {
        size_writer_cache(conn)?;
        // A large transaction (a schema migration over millions of persons) grows the
        // write-ahead log to gigabytes; without a limit SQLite keeps the file at that
        // size for good and reuses it. With one, the log is cut back to 64 MiB when it
        // restarts.
        conn.pragma_update(None, "journal_size_limit", 64_i64 << 20)?;
    }
    conn.set_prepared_statement_cache_capacity(128);
    Ok(())
}

/// Sizes the writer's page cache for the store's size: 32 MiB (SQLite's default is
/// 2 MiB) so that the hot index pages of a large store survive between transactions,
/// but only 4 MiB while the database is smaller than 1 GiB. The reason is a quirk of
/// SQLite's page cache: when balancing a B-tree swaps two pages' numbers it parks one
/// under the number of the page at the 1 GiB mark, and at the next commit the cache
/// drops every page above the database's end — which, while the database ends below
/// that mark, means walking the cache's whole hash table, at every commit that
/// followed such a swap. With 32 MiB that walk took a noticeable share of the writer's
/// time, and the small cache cut the CPU per settlement (measured: `docs/performance.md`);
/// above 1 GiB the mark lies inside the database and nothing is walked. The writer
/// re-applies this as the store grows (its upkeep, `Writer::start`).
fn size_writer_cache(conn: &Connection) -> rusqlite::Result<()> {
    let pages: i64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
    let page_size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    conn.pragma_update(
        None,
        "cache_size",
        -writer_cache_kib(pages.saturating_mul(page_size)),
    )
}

/// The writer's page cache in KiB for a database of `bytes` (see `size_writer_cache`).
fn writer_cache_kib(bytes: i64) -> i64 {
    if bytes < 1 << 30 { 4_096 } else { 32_768 }
}

/// Opens (creating if needed) the store `file` of `dir` in WAL mode, configured as the
/// writer, checked (`integrity`: the markers, the header, the schema version, and as
/// `check` decides the pages), migrated, and checked to belong to `region` (recorded on
/// first open). With `running` (a node's or the coordinator's store, which keeps the
/// running marker), the marker is written before SQLite opens the file: a start that
/// dies while migrating leaves the stop unclean.
fn open_migrated(
    dir: &Path,
    file: &str,
    region: &str,
    schema: migrations::Schema,
    check: CheckStore,
    running: bool,
) -> Result<(Connection, integrity::Preflight)> {
    std::fs::create_dir_all(dir).map_err(|e| {
        Error::Unavailable(format!(
            "cannot create data directory {}: {e}",
            dir.display()
        ))
    })?;
    let pre = integrity::preflight(dir, file)?;
    // After an unclean stop the last run's marker stays as it is (it says what the
    // checks below must do) until they have passed.
    let fresh = running && !pre.unclean;
    if fresh {
        integrity::mark_opening(&pre.files)?;
    }
    let out = open_preflighted(&pre, dir, region, schema, check, running);
    // Refused after a clean stop: the connection is closed, and if SQLite removed the
    // log (having applied it) the file holds everything, so the stop stays clean.
    if out.is_err() && fresh && !pre.files.wal.exists() {
        let _ = integrity::mark_stopped(&pre.files.running);
    }
    out.map(|conn| (conn, pre))
}

/// [`open_migrated`] once the files have passed their preflight.
fn open_preflighted(
    pre: &integrity::Preflight,
    dir: &Path,
    region: &str,
    schema: migrations::Schema,
    check: CheckStore,
    running: bool,
) -> Result<Connection> {
    let path = &pre.files.db;
    // SQLite's own complaints about the file before any migration touches it (a
    // header that is not a database, a log that cannot be applied) are damage too.
    let damaged = |e: rusqlite::Error| {
        Error::FailedPrecondition(format!(
            "store {} is damaged: SQLite cannot open it ({e}). The node will not serve from \
             it. Restore the store from a `yidi backup` copy (docs/operator.md, \
             \"Restoring a store\")",
            path.display()
        ))
    };
    let mut conn = Connection::open(path)?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .map_err(damaged)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(Error::Internal(format!(
            "store {} refused WAL mode ({mode})",
            path.display()
        )));
    }
    integrity::check_schema(&conn, pre, migrations::latest(schema))?;
    configure(&conn, false)?;
    integrity::check_contents(&conn, pre, check)?;
    if running && pre.unclean {
        // The last run's marker is settled (removed once its checks passed): this
        // run's, before the migrations write.
        integrity::mark_opening(&pre.files)?;
    }
    migrations::migrate(&mut conn, schema)?;
    // A data directory belongs to one region for life: starting Ningbo on Hangzhou's
    // store would silently mix two agencies' books.
    match meta_get(&conn, "region")? {
        Some(r) if r != region => {
            return Err(Error::FailedPrecondition(format!(
                "data directory {} belongs to region {r}, not {region}",
                dir.display()
            )));
        }
        Some(_) => {}
        None => meta_set(&conn, "region", region)?,
    }
    integrity::check_identity(&conn, pre, region)?;
    Ok(conn)
}

impl Store {
    /// Opens (creating if needed) a node's store in `dir`, runs pending migrations and
    /// starts the writer thread. Blocking: call from `spawn_blocking` or before the runtime.
    pub fn open(dir: &Path, read_connections: usize, region: &str) -> Result<Self> {
        Self::open_checked(dir, read_connections, region, CheckStore::Auto)
    }

    /// [`Store::open`] with how much of the store to verify first (`check_store`).
    pub fn open_checked(
        dir: &Path,
        read_connections: usize,
        region: &str,
        check: CheckStore,
    ) -> Result<Self> {
        Self::open_node(dir, read_connections, region, check, WriteQueue::default())
    }

    /// [`Store::open_checked`] with the writer's queue bounds (`write_queue_*`).
    pub fn open_node(
        dir: &Path,
        read_connections: usize,
        region: &str,
        check: CheckStore,
        queue: WriteQueue,
    ) -> Result<Self> {
        Self::open_schema(
            dir,
            DB_FILE,
            read_connections,
            region,
            migrations::Schema::Node,
            check,
            queue,
        )
    }

    /// Opens the coordinator's store (`coordinator.db`) in `dir`.
    pub fn open_coordinator(dir: &Path, read_connections: usize, region: &str) -> Result<Self> {
        Self::open_schema(
            dir,
            "coordinator.db",
            read_connections,
            region,
            migrations::Schema::Coordinator,
            CheckStore::Auto,
            WriteQueue::default(),
        )
    }

    /// Opens a node's store in `dir` for `yidi load-persons`: the one connection,
    /// migrated and checked like the node's writer, and no writer thread. The caller
    /// holds the data directory lock.
    pub fn open_connection(dir: &Path, region: &str) -> Result<Connection> {
        open_migrated(
            dir,
            DB_FILE,
            region,
            migrations::Schema::Node,
            CheckStore::Auto,
            false,
        )
        .map(|(conn, _)| conn)
    }

    fn open_schema(
        dir: &Path,
        file: &str,
        read_connections: usize,
        region: &str,
        schema: migrations::Schema,
        check: CheckStore,
        queue: WriteQueue,
    ) -> Result<Self> {
        let (conn, pre) = open_migrated(dir, file, region, schema, check, true)?;
        let path = pre.files.db.clone();
        // From here until a complete checkpoint at close the log may hold what the
        // database file does not (the log exists: WAL mode was set above). The marker
        // written while opening becomes the running one.
        integrity::mark_running(&pre.files)?;
        let running = pre.files.running.clone();
        let files = pre.files.clone();
        let closing: writer::Closing = Box::new(move |conn, damaged| {
            match integrity::checkpoint_truncate(conn) {
                // The marker stays, saying so: the next start checks every page.
                Ok(true) if damaged => {
                    if let Err(e) = integrity::mark_damaged(&files) {
                        tracing::warn!(error = %e, "cannot record the store's damage in its running marker");
                    }
                    false
                }
                Ok(true) => match integrity::mark_stopped(&running) {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::warn!(error = %e, "store checkpointed but its running marker stays");
                        false
                    }
                },
                Ok(false) => {
                    tracing::warn!(
                        "store log not checkpointed completely at close (a reader was still busy); the next start treats the stop as unclean"
                    );
                    false
                }
                Err(e) => {
                    tracing::warn!(error = %e, "store log checkpoint at close failed");
                    false
                }
            }
        });
        // Each writer job runs in a savepoint, so SQLite copies every page a job is first
        // to touch into the savepoint's journal; by default that journal moves to a
        // temporary file past 64 KiB, and a group's jobs then cost a pwrite per page — a
        // noticeable share of the writer's time under load; kept in memory, the writers
        // use less CPU per settlement (measured: `docs/performance.md`). Set only once the
        // migrations are done: it also keeps sorts in memory, and a migration's index
        // build over millions of persons must be able to sort through temporary files.
        // The serving writer's jobs sort small sets.
        conn.pragma_update(None, "temp_store", "MEMORY")?;
        let mut readers = Vec::with_capacity(read_connections);
        for _ in 0..read_connections.max(1) {
            let r = Connection::open_with_flags(
                &path,
                OpenFlags::SQLITE_OPEN_READ_ONLY
                    | OpenFlags::SQLITE_OPEN_NO_MUTEX
                    | OpenFlags::SQLITE_OPEN_URI,
            )?;
            configure(&r, true)?;
            readers.push(r);
        }
        let permits = Arc::new(Semaphore::new(readers.len()));
        let live = std::sync::atomic::AtomicU32::new(u32::try_from(readers.len()).unwrap_or(0));
        let writer = Writer::start(conn, size_writer_cache, queue, closing)?;
        Ok(Self {
            writer: writer.clone(),
            readers: Arc::new(ReadPool {
                conns: Mutex::new(readers),
                permits,
                live,
                writer,
            }),
            path,
        })
    }

    /// Runs `f` inside the writer's current transaction (its own savepoint: if `f` fails
    /// only its changes roll back). Resolves after the transaction is durably committed.
    pub async fn write<R, F>(&self, f: F) -> Result<R>
    where
        F: FnOnce(&Connection) -> Result<R> + Send + 'static,
        R: Send + 'static,
    {
        self.writer.run(f).await
    }

    /// [`Self::write`] of a job of `kind` (the writer's metrics are kept per kind).
    pub async fn write_as<R, F>(&self, kind: JobKind, f: F) -> Result<R>
    where
        F: FnOnce(&Connection) -> Result<R> + Send + 'static,
        R: Send + 'static,
    {
        self.writer.run_as(kind, f).await
    }

    /// [`Self::write`] in the writer's background lane (see [`Writer::submit_background`]):
    /// one step of a long task, run alone in its transaction when no request is queued.
    pub async fn write_background<R, F>(&self, kind: JobKind, f: F) -> Result<R>
    where
        F: FnOnce(&Connection) -> Result<R> + Send + 'static,
        R: Send + 'static,
    {
        self.writer.submit_background(kind, f).await
    }

    /// [`Self::submit`] of a job of `kind`.
    pub fn submit_as<R, F>(
        &self,
        kind: JobKind,
        f: F,
    ) -> impl std::future::Future<Output = Result<R>> + Send + 'static
    where
        F: FnOnce(&Connection) -> Result<R> + Send + 'static,
        R: Send + 'static,
    {
        self.writer.submit_as(kind, f)
    }

    /// Queues `f` for the writer at once and returns a future of its durable outcome
    /// (see [`Writer::submit`]).
    pub fn submit<R, F>(
        &self,
        f: F,
    ) -> impl std::future::Future<Output = Result<R>> + Send + 'static
    where
        F: FnOnce(&Connection) -> Result<R> + Send + 'static,
        R: Send + 'static,
    {
        self.writer.submit(f)
    }

    /// [`Self::submit`] past the write queue's bound (the writer's `submit_unbounded`):
    /// for the audit entries of answered reads.
    pub fn submit_unbounded<R, F>(
        &self,
        f: F,
    ) -> impl std::future::Future<Output = Result<R>> + Send + 'static
    where
        F: FnOnce(&Connection) -> Result<R> + Send + 'static,
        R: Send + 'static,
    {
        self.writer.submit_unbounded(f)
    }

    /// Runs `f` on a read-only connection on a blocking thread, in one read transaction:
    /// everything `f` reads is of the same moment, and the transaction's locks are taken
    /// once rather than per statement.
    pub async fn read<R, F>(&self, f: F) -> Result<R>
    where
        F: FnOnce(&Connection) -> Result<R> + Send + 'static,
        R: Send + 'static,
    {
        let pool = Arc::clone(&self.readers);
        let permit = Arc::clone(&pool.permits)
            .acquire_owned()
            .await
            .map_err(|_| Error::Unavailable("store is closed".into()))?;
        tokio::task::spawn_blocking(move || {
            let conn = pool
                .conns
                .lock()
                .map_err(|_| Error::Internal("read pool poisoned".into()))?
                .pop();
            let conn =
                conn.ok_or_else(|| Error::Internal("read pool empty despite a permit".into()))?;
            let (out, reusable) = read_transaction(&conn, f);
            if reusable {
                if let Ok(mut conns) = pool.conns.lock() {
                    conns.push(conn);
                }
            } else {
                // Retired with its permit, so that permits still match connections.
                tracing::error!("a read connection could not end its transaction; retired");
                pool.live.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                permit.forget();
            }
            if let Err(e) = &out {
                pool.writer.note_error(e);
            }
            out
        })
        .await
        .map_err(|e| Error::Internal(format!("read task failed: {e}")))?
    }

    /// What the store's writer has done since it started (transactions, requests, time
    /// running them and committing), for the metrics.
    #[must_use]
    pub fn writer_totals(&self) -> WriterTotals {
        self.writer.totals()
    }

    /// Closes the store for a clean stop: the read connections first (once their
    /// current reads end, for at most `wait`), then the writer, which commits what is
    /// running, refuses what is queued, copies the whole log into the database file and
    /// removes the running marker. Afterwards every request fails with UNAVAILABLE.
    /// Returns whether the stop was clean (false: the next start checks the store as
    /// after a crash).
    pub async fn close(&self, wait: std::time::Duration) -> bool {
        let total = self.readers.live.load(std::sync::atomic::Ordering::Relaxed);
        // Every permit, so no read is running; they are forgotten so none runs again.
        let all = tokio::time::timeout(wait, self.readers.permits.acquire_many(total)).await;
        match all {
            Ok(Ok(permits)) => permits.forget(),
            _ => tracing::warn!("store close: reads still running; closing without them"),
        }
        self.readers.permits.close();
        let conns = self
            .readers
            .conns
            .lock()
            .map(|mut c| std::mem::take(&mut *c))
            .unwrap_or_default();
        // Closing a connection is SQLite work: not on a runtime worker.
        let _ = tokio::task::spawn_blocking(move || drop(conns)).await;
        self.writer.close().await
    }

    /// `yidi check-store`: every check of a start and `PRAGMA quick_check`, on the
    /// stopped node's (or coordinator's) store in `dir`, holding the directory's lock.
    /// After an unclean stop it also applies the log, as a start would. Nothing is
    /// migrated.
    pub fn check_offline(dir: &Path) -> Result<CheckReport> {
        if !dir.is_dir() {
            return Err(Error::NotFound(format!(
                "data directory {} does not exist",
                dir.display()
            )));
        }
        let coordinator = ["coordinator.db", "coordinator.id"]
            .iter()
            .any(|f| dir.join(f).exists());
        let (file, schema) = if coordinator {
            ("coordinator.db", migrations::Schema::Coordinator)
        } else {
            (DB_FILE, migrations::Schema::Node)
        };
        let _lock = lock::lock_dir(dir)?;
        let pre = integrity::preflight(dir, file)?;
        if !pre.files.db.exists() {
            return Err(Error::NotFound(format!(
                "{} holds no yidi store (node.db or coordinator.db)",
                dir.display()
            )));
        }
        let conn = Connection::open_with_flags(
            &pre.files.db,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let version: u32 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(|e| {
                Error::FailedPrecondition(format!(
                    "store {} is damaged: SQLite cannot open it ({e}). Restore the store \
                     from a `yidi backup` copy (docs/operator.md, \"Restoring a store\")",
                    pre.files.db.display()
                ))
            })?;
        integrity::check_schema(&conn, &pre, migrations::latest(schema))?;
        integrity::check_contents(&conn, &pre, CheckStore::Quick)?;
        let region = meta_get(&conn, "region")?.unwrap_or_default();
        integrity::check_identity(&conn, &pre, &region)?;
        Ok(CheckReport {
            path: pre.files.db.clone(),
            bytes: pre.bytes,
            schema_version: version,
            region,
            unclean: pre.unclean,
        })
    }

    /// Path of the database file.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::OptionalExtension;

    /// The writer's cache is small below the 1 GiB mark (where a large one costs a walk
    /// of the whole cache at commits) and large above it.
    #[test]
    fn writer_cache_follows_the_store_size() {
        assert_eq!(writer_cache_kib(0), 4_096);
        assert_eq!(writer_cache_kib((1 << 30) - 4_096), 4_096);
        assert_eq!(writer_cache_kib(1 << 30), 32_768);
        assert_eq!(writer_cache_kib(10 << 30), 32_768);
    }

    /// A new store's writer runs with the small cache, readers with the large one.
    #[tokio::test]
    async fn a_new_store_has_the_small_writer_cache() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1, "330100").unwrap();
        let pragma = |c: &Connection| -> Result<i64> {
            Ok(c.query_row("PRAGMA cache_size", [], |r| r.get(0))?)
        };
        assert_eq!(store.write(pragma).await.unwrap(), -4_096);
        assert_eq!(store.read(pragma).await.unwrap(), -32_768);
    }

    #[tokio::test]
    async fn only_the_serving_writer_keeps_temporary_data_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let temp_store = |c: &Connection| -> Result<i64> {
            Ok(c.query_row("PRAGMA temp_store", [], |r| r.get(0))?)
        };
        {
            let store = Store::open(dir.path(), 1, "330100").unwrap();
            // 2 = MEMORY: savepoint journals of grouped jobs never go to a file.
            assert_eq!(store.write(temp_store).await.unwrap(), 2);
            assert_eq!(store.read(temp_store).await.unwrap(), 0);
        }
        // `yidi load-persons` builds indexes over millions of rows: its sorts must be
        // able to spill to temporary files (0 = the compile-time default, files).
        let conn = Store::open_connection(dir.path(), "330100").unwrap();
        assert_eq!(temp_store(&conn).unwrap(), 0);
    }

    /// A store with `rows` rows in a table of its own (several pages).
    async fn filled_store(dir: &Path, rows: i64) -> Store {
        let store = Store::open(dir, 1, "330100").unwrap();
        store
            .write(move |c| {
                c.execute_batch("CREATE TABLE filler (i INTEGER PRIMARY KEY, v BLOB NOT NULL)")?;
                for i in 0..rows {
                    c.execute("INSERT INTO filler (i, v) VALUES (?1, zeroblob(400))", [i])?;
                }
                Ok(())
            })
            .await
            .unwrap();
        store
    }

    /// [`filled_store`], closed cleanly: only its files are left.
    async fn closed_store(dir: &Path, rows: i64) {
        let store = filled_store(dir, rows).await;
        assert!(store.close(std::time::Duration::from_secs(5)).await);
    }

    fn filler_rows(dir: &Path) -> i64 {
        let c = Connection::open(dir.join(DB_FILE)).unwrap();
        c.query_row("SELECT COUNT(*) FROM filler", [], |r| r.get(0))
            .unwrap()
    }

    /// A filled store, closed cleanly, with one page three quarters in overwritten by
    /// garbage, then opened without a page check (the damage is found only when met).
    async fn opened_with_garbage_page(dir: &Path) -> (Store, integrity::StoreFiles) {
        let files = integrity::StoreFiles::new(dir, DB_FILE);
        closed_store(dir, 3000).await;
        let mut bytes = std::fs::read(&files.db).unwrap();
        let at = bytes.len() * 3 / 4 / 4096 * 4096;
        bytes[at..at + 4096].fill(0xA5);
        std::fs::write(&files.db, &bytes).unwrap();
        let store = Store::open_checked(dir, 1, "330100", CheckStore::Off).unwrap();
        (store, files)
    }

    /// The refusal of opening `dir`, with `check`.
    fn refusal(dir: &Path, check: CheckStore) -> String {
        match Store::open_checked(dir, 1, "330100", check) {
            Ok(_) => panic!("the store in {} was opened", dir.display()),
            Err(Error::FailedPrecondition(m)) => m,
            Err(e) => panic!("not FAILED_PRECONDITION: {e:?}"),
        }
    }

    /// A clean close copies the whole log into node.db and removes it and the running
    /// marker: the database file alone holds every committed row.
    #[tokio::test]
    async fn a_clean_close_leaves_everything_in_the_database_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = filled_store(dir.path(), 300).await;
        let files = integrity::StoreFiles::new(dir.path(), DB_FILE);
        assert!(files.running.exists() && files.wal.exists() && files.id.exists());
        assert!(
            std::fs::metadata(&files.wal).unwrap().len() > 32,
            "rows in the log"
        );
        assert!(store.close(std::time::Duration::from_secs(5)).await);
        assert!(!files.wal.exists(), "log removed");
        assert!(!files.running.exists(), "running marker removed");
        let refused = store.write(|_| Ok(())).await;
        assert!(
            matches!(&refused, Err(Error::Unavailable(_))),
            "{refused:?}"
        );
        let read = store.read(|_| Ok(())).await;
        assert!(
            matches!(&read, Err(Error::Unavailable(m)) if m.contains("closed")),
            "{read:?}"
        );
        drop(store);
        // node.db copied alone elsewhere is the whole store.
        let copy = tempfile::tempdir().unwrap();
        std::fs::copy(&files.db, copy.path().join(DB_FILE)).unwrap();
        assert_eq!(filler_rows(copy.path()), 300);
        drop(Store::open(dir.path(), 1, "330100").unwrap());
    }

    /// A store dropped without close (an error path at start) still checkpoints and
    /// removes its marker: the next start is not treated as after a crash.
    #[tokio::test]
    async fn a_dropped_store_closes_like_a_closed_one() {
        let dir = tempfile::tempdir().unwrap();
        let files = integrity::StoreFiles::new(dir.path(), DB_FILE);
        drop(filled_store(dir.path(), 10).await);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while files.running.exists() || files.wal.exists() {
            assert!(std::time::Instant::now() < deadline, "never closed");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert_eq!(filler_rows(dir.path()), 10);
    }

    /// A truncated node.db is refused before anything reads it, naming the file, what
    /// is wrong and the repair; the file is left as it was.
    #[tokio::test]
    async fn a_truncated_store_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        closed_store(dir.path(), 300).await;
        let db = dir.path().join(DB_FILE);
        let len = std::fs::metadata(&db).unwrap().len();
        let f = std::fs::OpenOptions::new().write(true).open(&db).unwrap();
        // Whole pages cut off: the header's page count gives it away.
        f.set_len(len - 8 * 4096).unwrap();
        let m = refusal(dir.path(), CheckStore::Off);
        assert!(
            m.contains(&format!("store {} is damaged", db.display())),
            "{m}"
        );
        assert!(
            m.contains("(truncated)") && m.contains("yidi backup"),
            "{m}"
        );
        // Cut anywhere: not a whole number of pages.
        f.set_len(len / 2 + 100).unwrap();
        let m = refusal(dir.path(), CheckStore::Off);
        assert!(m.contains("not a whole number of 4096-byte pages"), "{m}");
        assert_eq!(std::fs::metadata(&db).unwrap().len(), len / 2 + 100);
        // Shorter than a header.
        f.set_len(40).unwrap();
        assert!(refusal(dir.path(), CheckStore::Off).contains("shorter than a SQLite header"));
    }

    /// Where the identity marker says a store was, a missing, empty (0 bytes) or
    /// schema-less node.db is refused instead of starting as an empty store; deleting
    /// the marker is the deliberate way to start afresh.
    #[tokio::test]
    async fn an_emptied_store_is_refused_where_there_were_data() {
        let dir = tempfile::tempdir().unwrap();
        closed_store(dir.path(), 10).await;
        let db = dir.path().join(DB_FILE);
        let marker = dir.path().join("node.id");
        std::fs::write(&db, b"").unwrap();
        let m = refusal(dir.path(), CheckStore::Auto);
        assert!(
            m.contains(&format!("store {} is empty (0 bytes)", db.display())),
            "{m}"
        );
        assert!(
            m.contains(&marker.display().to_string()) && m.contains("yidi backup"),
            "{m}"
        );
        assert_eq!(std::fs::metadata(&db).unwrap().len(), 0, "left as it was");
        std::fs::remove_file(&db).unwrap();
        assert!(refusal(dir.path(), CheckStore::Auto).contains("is missing"));
        assert!(!db.exists(), "no empty store created");
        // An empty SQLite database in its place.
        Connection::open(&db)
            .unwrap()
            .execute_batch("CREATE TABLE x (y); DROP TABLE x;")
            .unwrap();
        assert!(refusal(dir.path(), CheckStore::Auto).contains("holds no yidi schema"));
        std::fs::remove_file(&db).unwrap();
        std::fs::remove_file(&marker).unwrap();
        drop(Store::open(dir.path(), 1, "330100").expect("a new store once the marker is gone"));
    }

    /// Another store's node.db put in this directory is refused.
    #[tokio::test]
    async fn another_stores_file_is_refused() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        for d in [&a, &b] {
            closed_store(d.path(), 1).await;
        }
        std::fs::copy(b.path().join(DB_FILE), a.path().join(DB_FILE)).unwrap();
        let m = refusal(a.path(), CheckStore::Auto);
        assert!(
            m.contains("is not the store this data directory was created with"),
            "{m}"
        );
    }

    /// A store of a later schema than this binary knows is refused before migrating.
    #[tokio::test]
    async fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        closed_store(dir.path(), 1).await;
        Connection::open(dir.path().join(DB_FILE))
            .unwrap()
            .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        let m = refusal(dir.path(), CheckStore::Auto);
        assert!(
            m.contains(&format!("schema version {}", SCHEMA_VERSION + 1)),
            "{m}"
        );
    }

    /// After an unclean stop (the running marker left behind) of a store in WAL mode, a
    /// missing log is refused: it may have held acknowledged transactions. The log put
    /// back, the store opens, applies it and is whole.
    #[tokio::test]
    async fn a_log_missing_after_an_unclean_stop_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let files = integrity::StoreFiles::new(dir.path(), DB_FILE);
        closed_store(dir.path(), 5).await;
        // What a kill leaves: the marker, and the log beside the database.
        integrity::mark_running(&files).unwrap();
        let m = refusal(dir.path(), CheckStore::Auto);
        assert!(
            m.contains(&format!(
                "its write-ahead log {} is missing",
                files.wal.display()
            )),
            "{m}"
        );
        assert!(m.contains("yidi backup") && m.contains(&files.running.display().to_string()));
        // A log present (even empty): opens, and the marker of the crashed run goes.
        std::fs::write(&files.wal, b"").unwrap();
        let s = Store::open(dir.path(), 1, "330100").unwrap();
        assert!(s.close(std::time::Duration::from_secs(5)).await);
        assert_eq!(filler_rows(dir.path()), 5);
        // A restored backup (rollback-journal mode) needs no log.
        integrity::mark_running(&files).unwrap();
        Connection::open(&files.db)
            .unwrap()
            .query_row("PRAGMA journal_mode=DELETE", [], |r| r.get::<_, String>(0))
            .unwrap();
        drop(Store::open(dir.path(), 1, "330100").expect("a restored copy opens"));
    }

    /// The running marker is written before SQLite opens the store (before WAL mode and
    /// the migrations): a start that died right after it is an unclean stop — not
    /// refused for a log SQLite had not created yet — and a start refused after a clean
    /// stop leaves the stop clean.
    #[tokio::test]
    async fn a_start_that_died_while_opening_is_unclean_but_not_refused() {
        let dir = tempfile::tempdir().unwrap();
        let files = integrity::StoreFiles::new(dir.path(), DB_FILE);
        closed_store(dir.path(), 5).await;
        match Store::open(dir.path(), 1, "330200") {
            Err(Error::FailedPrecondition(m)) => {
                assert!(m.contains("belongs to region 330100"), "{m}")
            }
            other => panic!("{:?}", other.err()),
        }
        assert!(
            !files.running.exists() && !files.wal.exists(),
            "still a clean stop"
        );
        // What a start killed before SQLite opened the file leaves: its marker only.
        integrity::mark_opening(&files).unwrap();
        let pre = integrity::preflight(dir.path(), DB_FILE).unwrap();
        assert!(pre.unclean && !pre.log_applied);
        let s = Store::open(dir.path(), 1, "330100").expect("not refused for the log");
        let marker = std::fs::read_to_string(&files.running).unwrap();
        assert!(
            marker.contains("pid = ") && !marker.contains("opening"),
            "{marker}"
        );
        assert!(s.close(std::time::Duration::from_secs(5)).await);
        assert!(!files.running.exists());
        assert_eq!(filler_rows(dir.path()), 5);
    }

    /// Garbage pages in the middle of the file: `quick` finds them at every start,
    /// `auto` after an unclean stop (the store being small), `off` never.
    #[tokio::test]
    async fn garbage_pages_are_refused_when_the_pages_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let files = integrity::StoreFiles::new(dir.path(), DB_FILE);
        closed_store(dir.path(), 3000).await;
        let len = std::fs::metadata(&files.db).unwrap().len();
        let mut bytes = std::fs::read(&files.db).unwrap();
        // In the filler table's pages (most of the file), not the schema's.
        let mid = usize::try_from(len * 3 / 4 / 4096 * 4096).unwrap();
        for (i, b) in bytes[mid..mid + 3 * 4096].iter_mut().enumerate() {
            *b = u8::try_from(i * 7 % 251).unwrap();
        }
        std::fs::write(&files.db, &bytes).unwrap();
        let m = refusal(dir.path(), CheckStore::Quick);
        assert!(
            m.contains(&format!(
                "store {} is damaged: quick_check",
                files.db.display()
            )),
            "{m}"
        );
        assert!(m.contains("yidi backup"), "{m}");
        integrity::mark_running(&files).unwrap();
        std::fs::write(&files.wal, b"").unwrap();
        assert!(refusal(dir.path(), CheckStore::Auto).contains("quick_check"));
        // Refused again on a retry: the marker stays until the store passes.
        assert!(refusal(dir.path(), CheckStore::Auto).contains("quick_check"));
        assert_eq!(std::fs::read(&files.db).unwrap(), bytes, "left as it was");
        std::fs::remove_file(&files.running).unwrap();
        // Without a page check SQLite opens it: the reason for `check_store`.
        drop(
            Store::open_checked(dir.path(), 1, "330100", CheckStore::Off).expect("opens unchecked"),
        );
        let check = Store::check_offline(dir.path()).expect_err("check-store finds it too");
        assert!(check.to_string().contains("quick_check"), "{check}");
    }

    /// Garbage pages a start did not check: the first request that meets them fails,
    /// and from then on the store takes no write at all (nothing written), even one
    /// that touches only healthy pages; the stop leaves the marker saying so, and the
    /// next start checks every page and refuses the store.
    #[tokio::test]
    async fn a_store_found_damaged_while_serving_takes_no_more_writes() {
        let dir = tempfile::tempdir().unwrap();
        let (store, files) = opened_with_garbage_page(dir.path()).await;
        let healthy = |c: &Connection| meta_set(c, "probe", "1");
        let sum = |c: &Connection| -> Result<i64> {
            Ok(c.query_row("SELECT SUM(length(v)) FROM filler", [], |r| r.get(0))?)
        };
        // A read meets the damage first.
        let read = store.read(sum).await;
        assert!(
            matches!(&read, Err(Error::Internal(m)) if m.contains("malformed")),
            "{read:?}"
        );
        let refused = store.write(healthy).await;
        assert!(
            matches!(&refused, Err(Error::Unavailable(m)) if m.contains("store is damaged") && m.contains("yidi backup")),
            "{refused:?}"
        );
        assert!(!store.close(std::time::Duration::from_secs(5)).await);
        drop(store);
        let marker = std::fs::read_to_string(&files.running).unwrap();
        assert!(marker.contains("damaged = true"), "{marker}");
        let probe: Option<String> = Connection::open(&files.db)
            .unwrap()
            .query_row("SELECT value FROM meta WHERE key = 'probe'", [], |r| {
                r.get(0)
            })
            .optional()
            .unwrap();
        assert_eq!(probe, None, "nothing written after the damage was seen");
        assert!(refusal(dir.path(), CheckStore::Auto).contains("quick_check"));
    }

    /// A write that meets the damage itself stops the writes after it too.
    #[tokio::test]
    async fn a_write_that_meets_damage_stops_the_writes_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _files) = opened_with_garbage_page(dir.path()).await;
        let touch = store
            .write(|c| Ok(c.execute("UPDATE filler SET v = zeroblob(10)", [])?))
            .await;
        assert!(
            matches!(&touch, Err(Error::Internal(m)) if m.contains("malformed")),
            "{touch:?}"
        );
        let next = store.write(|c| meta_set(c, "probe", "1")).await;
        assert!(
            matches!(&next, Err(Error::Unavailable(m)) if m.contains("damaged")),
            "{next:?}"
        );
    }
}
