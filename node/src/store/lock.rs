//! The data directory lock: one process at a time runs a node (or loads persons) on a
//! data directory. SQLite's own locks let two processes share a store, which is right
//! for `yidi backup` reading beside a running node but wrong for two nodes (two writer
//! threads, two outboxes pushing the same claims) or for `yidi load-persons`, which
//! switches the store out of WAL mode under everyone.
//!
//! An advisory lock (`flock`) on `DATA_DIR/yidi.lock`, held for the life of the
//! process's use of the directory; the kernel releases it when the process ends, so a
//! crashed node never leaves a stale lock behind.

use std::{
    fs::{File, OpenOptions, TryLockError},
    path::Path,
};

use crate::{Error, Result};

/// File name of the lock inside the data directory.
pub const LOCK_FILE: &str = "yidi.lock";

/// Held while the directory is in use; dropping it releases the lock.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

/// Takes the data directory's lock (creating the directory if needed), or fails with
/// FAILED_PRECONDITION naming what to do when another process holds it.
pub fn lock_dir(dir: &Path) -> Result<DirLock> {
    std::fs::create_dir_all(dir).map_err(|e| {
        Error::Unavailable(format!(
            "cannot create data directory {}: {e}",
            dir.display()
        ))
    })?;
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::Unavailable(format!("cannot open {}: {e}", path.display())))?;
    match file.try_lock() {
        Ok(()) => Ok(DirLock { _file: file }),
        Err(TryLockError::WouldBlock) => Err(Error::FailedPrecondition(format!(
            "data directory {} is in use by another yidi process (a running node, or \
             load-persons); stop it first",
            dir.display()
        ))),
        Err(TryLockError::Error(e)) => Err(Error::Unavailable(format!(
            "cannot lock {}: {e}",
            path.display()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_directory_is_refused_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = lock_dir(dir.path()).expect("first lock");
        let err = lock_dir(dir.path()).expect_err("second lock while the first is held");
        assert!(
            matches!(&err, Error::FailedPrecondition(m) if m.contains("in use by another yidi process")),
            "{err:?}"
        );
        drop(first);
        lock_dir(dir.path()).expect("lock after the first was released");
    }
}
