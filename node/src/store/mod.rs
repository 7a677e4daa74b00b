//! The node's embedded SQLite store. One writer thread owns the only write connection
//! and runs requests sent over a channel, grouping whatever is queued into one
//! transaction so that one fsync serves many requests (group commit); reads run on a
//! small pool of read-only connections on blocking threads. Nothing here ever touches
//! SQLite from an async runtime worker.

pub mod accumulators;
pub mod audit;
pub mod catalogue;
pub mod claims;
pub mod clearing;
pub mod filings;
pub mod funds;
pub mod institutions;
pub mod ledger;
pub mod lock;
mod migrations;
pub mod outbox;
pub mod person_load;
pub mod persons;
pub mod policies;
pub mod sequences;
pub mod settlements;
pub mod visits;
mod writer;

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use rusqlite::{Connection, OpenFlags};
use tokio::sync::Semaphore;

pub use migrations::SCHEMA_VERSION;
pub use writer::{Writer, WriterTotals};

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
/// followed such a swap. With 32 MiB that walk took ~10 % of the writer's time and the
/// small cache cut the CPU per settlement by ~15 % (measured: `docs/performance.md`);
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

/// Opens (creating if needed) the store at `path` in WAL mode, configured as the writer,
/// migrated, and checked to belong to `region` (recorded on first open).
fn open_migrated(
    path: &Path,
    dir: &Path,
    region: &str,
    schema: migrations::Schema,
) -> Result<Connection> {
    std::fs::create_dir_all(dir).map_err(|e| {
        Error::Unavailable(format!(
            "cannot create data directory {}: {e}",
            dir.display()
        ))
    })?;
    let mut conn = Connection::open(path)?;
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(Error::Internal(format!(
            "store {} refused WAL mode ({mode})",
            path.display()
        )));
    }
    configure(&conn, false)?;
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
    Ok(conn)
}

impl Store {
    /// Opens (creating if needed) a node's store in `dir`, runs pending migrations and
    /// starts the writer thread. Blocking: call from `spawn_blocking` or before the runtime.
    pub fn open(dir: &Path, read_connections: usize, region: &str) -> Result<Self> {
        Self::open_schema(
            dir,
            DB_FILE,
            read_connections,
            region,
            migrations::Schema::Node,
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
        )
    }

    /// Opens a node's store in `dir` for `yidi load-persons`: the one connection,
    /// migrated and checked like the node's writer, and no writer thread. The caller
    /// holds the data directory lock.
    pub fn open_connection(dir: &Path, region: &str) -> Result<Connection> {
        open_migrated(&dir.join(DB_FILE), dir, region, migrations::Schema::Node)
    }

    fn open_schema(
        dir: &Path,
        file: &str,
        read_connections: usize,
        region: &str,
        schema: migrations::Schema,
    ) -> Result<Self> {
        let path = dir.join(file);
        let conn = open_migrated(&path, dir, region, schema)?;
        // Each writer job runs in a savepoint, so SQLite copies every page a job is first
        // to touch into the savepoint's journal; by default that journal moves to a
        // temporary file past 64 KiB, and a group's jobs then cost a pwrite per page —
        // ~10 % of the writer's time under load; kept in memory, the writers used ~15 %
        // less CPU per settlement (measured: `docs/performance.md`). Set only once the
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
        Ok(Self {
            writer: Writer::start(conn, size_writer_cache)?,
            readers: Arc::new(ReadPool {
                conns: Mutex::new(readers),
                permits,
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
                permit.forget();
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

    /// Path of the database file.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
