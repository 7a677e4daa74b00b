//! `yidi backup`: an online backup of a node's (or the coordinator's) SQLite store while
//! it runs, through SQLite's backup API; and `yidi check-store`, the offline check of a
//! stopped node's store (`yidi_node::store::integrity`).
//!
//! The store is in WAL mode, so a reader never blocks the writer: the whole database is
//! copied in ONE backup step, i.e. inside one read transaction, which yields a consistent
//! snapshot of the last commit before the step began however busy the node is. (A
//! page-by-page backup would restart every time the node commits in between, and might
//! never finish on a busy node.) The copy is written to a temporary file beside the
//! destination, checked (`PRAGMA quick_check`, schema version, region), synced, and only
//! then renamed into place, so a crash never leaves a half-written backup under the
//! final name.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use clap::Args;
use rusqlite::{Connection, OpenFlags, backup::Backup};

/// Flags of `yidi backup`.
#[derive(Debug, Clone, Args)]
pub struct BackupArgs {
    /// The data directory of the running (or stopped) node or coordinator: the one with
    /// node.db or coordinator.db in it.
    #[arg(long, env = "YIDI_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Where to write the backup (a single SQLite file, e.g.
    /// /var/backups/yidi/330100-2026-11-23.db).
    #[arg(long)]
    pub to: PathBuf,
    /// Replace the destination file if it exists.
    #[arg(long)]
    pub force: bool,
}

/// Flags of `yidi check-store`.
#[derive(Debug, Clone, Args)]
pub struct CheckStoreArgs {
    /// The data directory of the stopped node or coordinator.
    #[arg(long, env = "YIDI_DATA_DIR")]
    pub data_dir: PathBuf,
}

/// `yidi check-store`: the checks of a node's start and `PRAGMA quick_check` (every
/// page) on a stopped node's store; exits non-zero, naming the file and the repair,
/// when the store is damaged.
pub fn check_store(args: &CheckStoreArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let r = yidi_node::store::Store::check_offline(&args.data_dir)?;
    println!(
        "store {} ok: region {}, schema version {}, {} bytes, quick_check passed in {:.1?}{}",
        r.path.display(),
        if r.region.is_empty() { "?" } else { &r.region },
        r.schema_version,
        r.bytes,
        started.elapsed(),
        if r.unclean {
            " (the last run had not stopped cleanly; its log is now applied)"
        } else {
            ""
        }
    );
    Ok(())
}

/// What a finished backup contains.
#[derive(Debug, Clone)]
pub struct BackupReport {
    pub source: PathBuf,
    pub destination: PathBuf,
    pub bytes: u64,
    pub schema_version: u32,
    pub region: String,
    pub elapsed: Duration,
}

/// The store file in a data directory: node.db, else coordinator.db.
pub fn store_file(data_dir: &Path) -> anyhow::Result<PathBuf> {
    for name in ["node.db", "coordinator.db"] {
        let p = data_dir.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!(
        "{} holds no yidi store (node.db or coordinator.db)",
        data_dir.display()
    )
}

/// Copies the store of `data_dir` to `to`; see the module docs for why it is consistent.
pub fn backup(data_dir: &Path, to: &Path, force: bool) -> anyhow::Result<BackupReport> {
    let started = Instant::now();
    let source = store_file(data_dir)?;
    if to.exists() && !force {
        bail!("{} exists; pass --force to replace it", to.display());
    }
    let dir = to
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let file_name = to
        .file_name()
        .context("--to must name a file")?
        .to_string_lossy()
        .into_owned();
    let tmp = dir.join(format!(".{file_name}.partial-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);

    let result = (|| -> anyhow::Result<(u32, String)> {
        // Read-only: a backup must never be able to change the live store.
        let src = Connection::open_with_flags(
            &source,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .with_context(|| format!("opening {}", source.display()))?;
        src.busy_timeout(Duration::from_secs(10))?;
        let mut dst =
            Connection::open(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        {
            let b = Backup::new(&src, &mut dst)?;
            // -1: every page in one step (one read transaction, one snapshot). A busy
            // or locked answer only happens while the writer checkpoints; retry briefly.
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                match b.step(-1)? {
                    rusqlite::backup::StepResult::Done => break,
                    rusqlite::backup::StepResult::More => {}
                    rusqlite::backup::StepResult::Busy | rusqlite::backup::StepResult::Locked => {
                        if Instant::now() > deadline {
                            bail!("the store stayed locked for 60 s; try again");
                        }
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    other => bail!("unexpected backup step result {other:?}"),
                }
            }
        }
        // The copy is a standalone file: no WAL beside it to lose.
        let _: String = dst.query_row("PRAGMA journal_mode=DELETE", [], |r| r.get(0))?;
        let check: String = dst.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
        if check != "ok" {
            bail!("the copy failed its integrity check: {check}");
        }
        let version: u32 = dst.pragma_query_value(None, "user_version", |r| r.get(0))?;
        let region: String = dst
            .query_row("SELECT value FROM meta WHERE key = 'region'", [], |r| {
                r.get(0)
            })
            .unwrap_or_default();
        dst.close().map_err(|(_, e)| e)?;
        Ok((version, region))
    })();
    let (schema_version, region) = match result {
        Ok(v) => v,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    // Durable before it gets its final name.
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("syncing {}", tmp.display()))?;
    std::fs::rename(&tmp, to).with_context(|| format!("renaming to {}", to.display()))?;
    #[cfg(unix)]
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    let bytes = std::fs::metadata(to).map(|m| m.len()).unwrap_or(0);
    Ok(BackupReport {
        source,
        destination: to.to_path_buf(),
        bytes,
        schema_version,
        region,
        elapsed: started.elapsed(),
    })
}

/// `yidi backup`.
pub fn run(args: &BackupArgs) -> anyhow::Result<()> {
    let r = backup(&args.data_dir, &args.to, args.force)?;
    println!(
        "backed up {} (region {}, schema version {}) to {}: {} bytes in {:.1?}",
        r.source.display(),
        if r.region.is_empty() { "?" } else { &r.region },
        r.schema_version,
        r.destination.display(),
        r.bytes,
        r.elapsed
    );
    println!(
        "restore: stop the process, move {} and its -wal/-shm files away, copy the backup to {}, start it again",
        r.source.display(),
        r.source.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_a_live_wal_store_consistently() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("node.db");
        let live = Connection::open(&db).unwrap();
        let _: String = live
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .unwrap();
        live.execute_batch(
            "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
             INSERT INTO meta VALUES ('region', '330100');
             CREATE TABLE t (x INTEGER);
             PRAGMA user_version = 7;",
        )
        .unwrap();
        for i in 0..1000 {
            live.execute("INSERT INTO t VALUES (?1)", [i]).unwrap();
        }
        // Still open, with the recent commits only in the WAL: the backup must see them.
        let to = dir.path().join("out").join("backup.db");
        let r = backup(dir.path(), &to, false).unwrap();
        assert_eq!((r.schema_version, r.region.as_str()), (7, "330100"));
        let copy = Connection::open(&to).unwrap();
        let n: i64 = copy
            .query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1000);
        drop(copy);
        // No overwrite without --force; with it, replaced.
        assert!(backup(dir.path(), &to, false).is_err());
        live.execute("INSERT INTO t VALUES (1000)", []).unwrap();
        backup(dir.path(), &to, true).unwrap();
        let n: i64 = Connection::open(&to)
            .unwrap()
            .query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1001);
        assert!(backup(&dir.path().join("nothing"), &to, true).is_err());
    }
}
