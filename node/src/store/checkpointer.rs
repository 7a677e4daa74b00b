//! Copies the write-ahead log into the database file from a thread and a connection of
//! its own, instead of inside the writer's commits. SQLite's automatic checkpoint runs
//! in the COMMIT that pushes the log past its threshold: that commit then writes
//! thousands of pages into the database file and syncs it, and every request of the
//! group — and every one queued behind it — waits for the disk. A PASSIVE checkpoint
//! from another connection takes no lock the writer needs, so the writer goes on
//! committing meanwhile; the log restarts from its beginning at the writer's next
//! transaction after a complete checkpoint, as it did after an automatic one.
//!
//! It checkpoints when the log has grown by [`THRESHOLD_BYTES`] since its last
//! checkpoint, counted in frames from the log's index (the `-shm` file), not when the
//! log file is larger than that: the file keeps its size after a checkpoint (up to the
//! store's `journal_size_limit`), and a checkpoint that could not copy every frame (a
//! reader still on an older snapshot) leaves it growing — a size rule would then
//! checkpoint at every look.

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    thread,
    time::Duration,
};

use crossbeam_channel::{Sender, after, bounded, select};
use rusqlite::Connection;

/// Log size from which the checkpointer copies it: SQLite's own threshold for its
/// automatic checkpoint (1,000 pages of 4 KiB).
const THRESHOLD_BYTES: u64 = 4 << 20;

/// How often the checkpointer looks at the log's size.
const POLL: Duration = Duration::from_millis(50);

/// Bytes of one log frame besides its page: the frame header.
const FRAME_HEADER: u64 = 24;

/// The running checkpointer; [`Checkpointer::stop`] ends it and closes its connection.
pub struct Checkpointer {
    stop: Sender<()>,
    thread: thread::JoinHandle<()>,
    /// Checkpoints run so far.
    runs: Arc<AtomicU64>,
}

/// Whether the log has grown by the threshold since the last checkpoint: `last` is the
/// log's last frame when that checkpoint ran (none yet: since the log's start), `now`
/// its last frame now. A log that restarted since (its last frame lower than before)
/// has grown by all its frames.
#[must_use]
pub fn due(last: Option<u32>, now: u32, frame_bytes: u64) -> bool {
    let grown = match last {
        Some(l) if now >= l => now - l,
        _ => now,
    };
    u64::from(grown) * frame_bytes >= THRESHOLD_BYTES
}

/// The last valid frame of the log (`mxFrame`), read from the header of the log's
/// index, the `-shm` file (sqlite.org/walformat.html, "The WAL-Index Header": two
/// copies of 48 bytes, the frame at offset 16, in the machine's byte order). None when
/// there is no index or the two copies differ (the writer was updating it): the next
/// look reads it again.
#[must_use]
pub fn last_frame(shm: &Path) -> Option<u32> {
    use std::io::Read as _;
    let mut head = [0u8; 96];
    std::fs::File::open(shm)
        .and_then(|mut f| f.read_exact(&mut head))
        .ok()?;
    (head[..48] == head[48..]).then(|| u32::from_ne_bytes([head[16], head[17], head[18], head[19]]))
}

impl Checkpointer {
    /// Starts one for the database `conn` is open on and turns off the automatic
    /// checkpoint of `conn` (the writer's). None for a database without a file (in
    /// memory), whose writer keeps the automatic checkpoint.
    pub fn start(conn: &Connection) -> Option<Self> {
        let db = PathBuf::from(conn.path().filter(|p| !p.is_empty())?);
        let own = Connection::open(&db)
            .and_then(|c| {
                c.pragma_update(None, "synchronous", "FULL")?;
                Ok(c)
            })
            .map_err(|e| tracing::warn!(error = %e, "store checkpointer not started; the writer checkpoints"))
            .ok()?;
        if let Err(e) = conn.pragma_update(None, "wal_autocheckpoint", 0) {
            tracing::warn!(error = %e, "store checkpointer not started; the writer checkpoints");
            return None;
        }
        let shm = shm_of(&db);
        let frame_bytes = own
            .pragma_query_value(None, "page_size", |r| r.get::<_, u64>(0))
            .unwrap_or(4096)
            + FRAME_HEADER;
        let runs = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&runs);
        let (stop, stopped) = bounded::<()>(0);
        let thread = thread::Builder::new()
            .name("yidi-store-checkpoint".into())
            .spawn(move || {
                let mut last: Option<u32> = None;
                loop {
                    select! {
                        recv(stopped) -> _ => break,
                        recv(after(POLL)) -> _ => {}
                    }
                    let Some(now) = last_frame(&shm) else {
                        continue;
                    };
                    if !due(last, now, frame_bytes) {
                        continue;
                    }
                    counted.fetch_add(1, Ordering::Relaxed);
                    // The log's last frame as this checkpoint saw it (whether or not it
                    // could copy them all): the next one waits for as much again.
                    match own.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                        r.get::<_, i64>(1)
                    }) {
                        Ok(frames) => last = Some(u32::try_from(frames).unwrap_or(now)),
                        Err(e) => {
                            last = Some(now);
                            tracing::warn!(error = %e, "store log checkpoint failed; retried when the log has grown");
                        }
                    }
                }
                drop(own);
            });
        match thread {
            Ok(thread) => Some(Self { stop, thread, runs }),
            Err(e) => {
                tracing::warn!(error = %e, "store checkpointer not started; the writer checkpoints");
                let _ = conn.pragma_update(None, "wal_autocheckpoint", 1000);
                None
            }
        }
    }

    /// Checkpoints run so far.
    #[cfg(test)]
    #[must_use]
    pub fn runs(&self) -> u64 {
        self.runs.load(Ordering::Relaxed)
    }

    /// Ends the thread and closes its connection (before the writer's closing
    /// checkpoint, which must be the last connection's).
    pub fn stop(self) {
        drop(self.stop);
        let _ = self.thread.join();
        tracing::debug!(
            checkpoints = self.runs.load(Ordering::Relaxed),
            "store checkpointer stopped"
        );
    }
}

#[cfg(test)]
fn wal_of(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push("-wal");
    PathBuf::from(name)
}

fn shm_of(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push("-shm");
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With the checkpointer running, the writer's connection never checkpoints by
    /// itself, yet a log grown past the threshold is copied into the database (its
    /// frames all backfilled) without the writer doing anything.
    #[test]
    fn the_log_is_checkpointed_off_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("c.db");
        let conn = Connection::open(&db).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.execute_batch("CREATE TABLE t (v BLOB)").unwrap();
        let c = Checkpointer::start(&conn).expect("started");
        let auto: i64 = conn
            .query_row("PRAGMA wal_autocheckpoint", [], |r| r.get(0))
            .unwrap();
        assert_eq!(auto, 0);
        for _ in 0..40 {
            conn.execute("INSERT INTO t (v) VALUES (zeroblob(200000))", [])
                .unwrap();
        }
        assert!(std::fs::metadata(wal_of(&db)).unwrap().len() > THRESHOLD_BYTES);
        // The pages reach the database file only through a checkpoint, and this
        // connection runs none: the checkpointer's next look copies them.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::fs::metadata(&db).unwrap().len() < THRESHOLD_BYTES {
            assert!(std::time::Instant::now() < deadline, "never checkpointed");
            thread::sleep(POLL);
        }
        c.stop();
    }

    #[test]
    fn a_checkpoint_is_due_on_growth_since_the_last_one() {
        let frame = 4096 + FRAME_HEADER;
        let threshold = u32::try_from(THRESHOLD_BYTES.div_ceil(frame)).unwrap();
        assert!(!due(None, threshold - 1, frame));
        assert!(due(None, threshold, frame));
        // A checkpoint ran at frame 5000 but could not copy them all (a reader): the
        // log is still long, yet nothing is due until it has grown by the threshold.
        assert!(!due(Some(5000), 5000, frame));
        assert!(!due(Some(5000), 5000 + threshold - 1, frame));
        assert!(due(Some(5000), 5000 + threshold, frame));
        // Restarted since (complete checkpoint): counted from its start.
        assert!(!due(Some(5000), 10, frame));
        assert!(due(Some(5000), threshold, frame));
    }

    /// A reader on an old snapshot keeps a checkpoint from copying the log: the log
    /// stays over the threshold, and the checkpointer does not run again at every look
    /// (it did, while it went by the log file's size), only once the log has grown by
    /// the threshold again.
    #[test]
    fn a_checkpoint_held_back_by_a_reader_is_not_repeated_at_every_look() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("c.db");
        let conn = Connection::open(&db).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.execute_batch("CREATE TABLE t (v BLOB); INSERT INTO t (v) VALUES (1)")
            .unwrap();
        let reader = Connection::open(&db).unwrap();
        reader.execute_batch("BEGIN").unwrap();
        let _: i64 = reader
            .query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))
            .unwrap();
        let c = Checkpointer::start(&conn).expect("started");
        let fill = |n: usize| {
            for _ in 0..n {
                conn.execute("INSERT INTO t (v) VALUES (zeroblob(200000))", [])
                    .unwrap();
            }
        };
        // Between one and two thresholds of frames: one checkpoint is due, whenever
        // during the inserts it runs.
        fill(25);
        let frames = last_frame(&shm_of(&db)).unwrap();
        assert!((1100..2000).contains(&frames), "{frames}");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while c.runs() == 0 {
            assert!(std::time::Instant::now() < deadline, "never checkpointed");
            thread::sleep(POLL);
        }
        // Twenty looks with the log still over the threshold, none of it copied.
        thread::sleep(POLL * 20);
        assert_eq!(c.runs(), 1, "checkpointed again without the log growing");
        assert!(std::fs::metadata(wal_of(&db)).unwrap().len() > THRESHOLD_BYTES);
        // The reader gone and the log grown by the threshold again: the next one runs
        // and copies everything.
        reader.execute_batch("COMMIT").unwrap();
        fill(25);
        while c.runs() < 2 {
            assert!(
                std::time::Instant::now() < deadline,
                "never checkpointed again"
            );
            thread::sleep(POLL);
        }
        // This one could copy the pages into the database file (no connection here
        // checkpoints by itself).
        while std::fs::metadata(&db).unwrap().len() < THRESHOLD_BYTES {
            assert!(std::time::Instant::now() < deadline, "nothing copied");
            thread::sleep(POLL);
        }
        c.stop();
    }
}
