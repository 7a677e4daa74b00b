//! Copies the write-ahead log into the database file from a thread and a connection of
//! its own, instead of inside the writer's commits. SQLite's automatic checkpoint runs
//! in the COMMIT that pushes the log past its threshold: that commit then writes
//! thousands of pages into the database file and syncs it, and every request of the
//! group — and every one queued behind it — waits for the disk. A PASSIVE checkpoint
//! from another connection takes no lock the writer needs, so the writer goes on
//! committing meanwhile; the log restarts from its beginning at the writer's next
//! transaction after a complete checkpoint, as it did after an automatic one.

use std::{
    path::{Path, PathBuf},
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

/// The running checkpointer; [`Checkpointer::stop`] ends it and closes its connection.
pub struct Checkpointer {
    stop: Sender<()>,
    thread: thread::JoinHandle<()>,
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
        let wal = wal_of(&db);
        let (stop, stopped) = bounded::<()>(0);
        let thread = thread::Builder::new()
            .name("yidi-store-checkpoint".into())
            .spawn(move || {
                loop {
                    select! {
                        recv(stopped) -> _ => break,
                        recv(after(POLL)) -> _ => {}
                    }
                    if std::fs::metadata(&wal).is_ok_and(|m| m.len() > THRESHOLD_BYTES)
                        && let Err(e) =
                            own.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                    {
                        tracing::warn!(error = %e, "store log checkpoint failed; retried");
                    }
                }
                drop(own);
            });
        match thread {
            Ok(thread) => Some(Self { stop, thread }),
            Err(e) => {
                tracing::warn!(error = %e, "store checkpointer not started; the writer checkpoints");
                let _ = conn.pragma_update(None, "wal_autocheckpoint", 1000);
                None
            }
        }
    }

    /// Ends the thread and closes its connection (before the writer's closing
    /// checkpoint, which must be the last connection's).
    pub fn stop(self) {
        drop(self.stop);
        let _ = self.thread.join();
    }
}

fn wal_of(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push("-wal");
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
}
