//! Archiving closed and cleared periods (`yidi admin archive`, docs/admin.md): so that
//! a node's live store stays bounded over years, a period fully cleared at every scope
//! and older than [`MIN_AGE_DAYS`] is written to a file of its own (export), the file
//! checked, its rows deleted from the live store in bounded writer jobs (purge), and
//! put back from the file when needed (restore). The SQL and the file format are
//! `store/archive.rs`.
//!
//! The node keeps its copy of each archive under `<data_dir>/archive/`: a purge deletes
//! only rows of a file the node itself wrote, fsynced and verified, and that the
//! operator's copy matches (the digest the purge is given). From the export on, a
//! period's rows are frozen: a cancel, 冲正, claim reversal or deduction of one of them
//! is refused naming the archive, until the period is restored.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use yidi_common::period::{self, Period};

use crate::{
    Error, Result,
    context::NodeState,
    store::archive::{self as sa, ArchiveState, Cursor, Manifest},
};

/// Days after the end of a period before it may be archived: within them a hospital
/// cancels or reverses (冲正) a settlement and the agency records audit deductions as on
/// any live period; clearing rounds, late claims and their adjustments of the next
/// period are done. After the archive, all of those are refused for the period.
pub const MIN_AGE_DAYS: i64 = 90;

/// Bytes of an archive file one ReadArchive or WriteArchive call carries at most.
pub const CHUNK_BYTES: usize = crate::limits::ARCHIVE_CHUNK;

/// Where the node keeps its archives.
#[must_use]
pub fn dir(st: &NodeState) -> PathBuf {
    st.store
        .path()
        .parent()
        .map_or_else(|| PathBuf::from("archive"), |d| d.join("archive"))
}

fn paths(st: &NodeState, period: &str) -> (PathBuf, PathBuf) {
    let (f, m) = sa::file_names(st.region.as_str(), period);
    let d = dir(st);
    (d.join(f), d.join(m))
}

fn incoming(st: &NodeState, period: &str) -> PathBuf {
    let (f, _) = sa::file_names(st.region.as_str(), period);
    dir(st).join(format!("incoming-{f}"))
}

/// The period of a request, checked: well-formed, ended, and older than the minimum
/// age at `now`.
pub fn check_age(period: &str, now: DateTime<Utc>) -> Result<Period> {
    let p = Period::parse(period, "period")?;
    let current = Period::of(now);
    if p >= current {
        return Err(Error::FailedPrecondition(format!(
            "period {p} is {} (today is in {current}); only a period ended at least {MIN_AGE_DAYS} days ago and fully cleared may be archived",
            if p == current {
                "the current period"
            } else {
                "in the future"
            }
        )));
    }
    let end = period::parse_ts(&format!("{}-01T00:00:00+08:00", p.next()), "period")?;
    let from = end + chrono::Duration::days(MIN_AGE_DAYS);
    if now < from {
        return Err(Error::FailedPrecondition(format!(
            "period {p} ended less than {MIN_AGE_DAYS} days ago: cancellations, 冲正 and audit deductions of it are still accepted; it may be archived from {}",
            from.with_timezone(&period::cst()).date_naive()
        )));
    }
    Ok(p)
}

/// What a period's archive is at: the answer of every archive call.
#[derive(Debug, Clone)]
pub struct Status {
    pub period: String,
    pub state: ArchiveState,
    pub manifest: Option<Manifest>,
    /// Rows the purge deleted (or the restore inserted) so far.
    pub rows_done: u64,
    /// Rows of the period still in the live store.
    pub live_rows: u64,
    /// The live store's pages and free pages (reused by the next inserts).
    pub pages: u64,
    pub free_pages: u64,
    pub page_size: u64,
}

async fn status(st: &NodeState, period: &str) -> Result<Status> {
    let p = period.to_owned();
    st.store
        .read(move |conn| {
            let rec = sa::get(conn, &p)?.ok_or_else(|| {
                Error::NotFound(format!(
                    "period {p} has no archive at this node; export it first (yidi admin archive export --period {p})"
                ))
            })?;
            let manifest = (!rec.manifest.is_empty())
                .then(|| Manifest::from_json(&rec.manifest, "manifest"))
                .transpose()?;
            let live_rows = sa::live_rows(conn, &p)?.iter().map(|(_, n)| n).sum();
            let pages = conn.pragma_query_value(None, "page_count", |r| r.get(0))?;
            let free_pages = conn.pragma_query_value(None, "freelist_count", |r| r.get(0))?;
            let page_size = conn.pragma_query_value(None, "page_size", |r| r.get(0))?;
            Ok(Status {
                period: p,
                state: rec.state,
                manifest,
                rows_done: rec.rows_done,
                live_rows,
                pages,
                free_pages,
                page_size,
            })
        })
        .await
}

/// The archive of a period, as it is now.
pub async fn show(st: &NodeState, period: &str) -> Result<Status> {
    Period::parse(period, "period")?;
    status(st, period).await
}

/// Every archived period.
pub async fn list(st: &NodeState) -> Result<Vec<Status>> {
    let periods: Vec<String> = st
        .store
        .read(|conn| Ok(sa::list(conn)?.into_iter().map(|a| a.period).collect()))
        .await?;
    let mut out = Vec::with_capacity(periods.len());
    for p in periods {
        out.push(status(st, &p).await?);
    }
    Ok(out)
}

/// Export: refuses a period that is not old enough or not fully cleared (nothing
/// changes then); else freezes the period's rows, writes the archive file from one
/// snapshot, fsyncs and verifies it, and records it (`exported`). Repeated, it answers
/// the archive already written; a period restored is archived afresh.
pub async fn export(st: &NodeState, period: &str) -> Result<Status> {
    let now = st.clock.now();
    let p = check_age(period, now)?.to_string();
    let at = period::format_ts(now);
    let (p2, at2) = (p.clone(), at.clone());
    let fresh = st
        .store
        .write(move |conn| {
            match sa::get(conn, &p2)?.map(|a| a.state) {
                Some(ArchiveState::Exported | ArchiveState::Purging | ArchiveState::Purged) => {
                    return Ok(false);
                }
                Some(ArchiveState::Restoring) => {
                    return Err(Error::FailedPrecondition(format!(
                        "period {p2} is being restored; finish the restore first (yidi admin archive restore --file …)"
                    )));
                }
                Some(ArchiveState::Exporting) => return Ok(true),
                Some(ArchiveState::Restored) | None => {}
            }
            if let Some(why) = sa::not_archivable(conn, &p2)? {
                return Err(Error::FailedPrecondition(format!(
                    "period {p2} is not fully cleared: {why}; clear it (docs/clearing.md) before archiving"
                )));
            }
            sa::set_state(conn, &p2, ArchiveState::Exporting, &at2, true)?;
            Ok(true)
        })
        .await?;
    if fresh {
        let (file, manifest_file) = paths(st, &p);
        let db = st.store.path().to_owned();
        let (region, p3, at3) = (st.region.to_string(), p.clone(), at.clone());
        let (manifest, ranges) = tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(file.parent().unwrap_or(Path::new(".")))
                .map_err(|e| Error::Internal(format!("archive directory: {e}")))?;
            let (manifest, ranges) = sa::build(&db, &file, &region, &p3, &at3)?;
            sa::verify(&file, &manifest)?;
            write_synced(&manifest_file, manifest.to_json().as_bytes())?;
            Ok::<_, Error>((manifest, ranges))
        })
        .await
        .map_err(|e| Error::Internal(format!("export task: {e}")))??;
        let (p4, json) = (p.clone(), manifest.to_json());
        st.store
            .write(move |conn| {
                sa::record_exported(conn, &p4, &manifest.sha256, &json, &ranges, &at)
            })
            .await?;
        tracing::info!(period = %p, "archive exported");
    }
    status(st, &p).await
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write as _;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)
        .map_err(|e| Error::Internal(format!("{}: {e}", tmp.display())))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| Error::Internal(format!("{}: {e}", path.display())))?;
    if let Some(d) = path.parent() {
        let _ = std::fs::File::open(d).and_then(|d| d.sync_all());
    }
    Ok(())
}

/// A piece of the node's archive file of a period (from `offset`, at most
/// [`CHUNK_BYTES`]) and the file's size.
pub async fn read_chunk(st: &NodeState, period: &str, offset: u64) -> Result<(Vec<u8>, u64)> {
    use std::io::{Read as _, Seek as _};
    Period::parse(period, "period")?;
    let rec = status(st, period).await?;
    if rec.manifest.is_none() {
        return Err(Error::FailedPrecondition(format!(
            "the archive of {period} is {}; it has no file to read",
            rec.state.as_str()
        )));
    }
    let (file, _) = paths(st, period);
    tokio::task::spawn_blocking(move || {
        let mut f = std::fs::File::open(&file)
            .map_err(|e| Error::FailedPrecondition(format!("{}: {e}", file.display())))?;
        let total = f
            .metadata()
            .map_err(|e| Error::Internal(e.to_string()))?
            .len();
        if offset > total {
            return Err(Error::invalid(
                "offset",
                format!("{offset} is past the end of the file ({total} bytes)"),
            ));
        }
        f.seek(std::io::SeekFrom::Start(offset))
            .map_err(|e| Error::Internal(e.to_string()))?;
        let mut buf = Vec::with_capacity(CHUNK_BYTES);
        f.take(CHUNK_BYTES as u64)
            .read_to_end(&mut buf)
            .map_err(|e| Error::Internal(e.to_string()))?;
        Ok((buf, total))
    })
    .await
    .map_err(|e| Error::Internal(format!("read task: {e}")))?
}

/// Purge: deletes the period's archived rows from the live store, only after the node's
/// archive file verifies against the digest the operator's copy has (`digest`), in
/// writer jobs of at most [`sa::STEP_ROWS`] rows, each moving a cursor recorded with
/// its deletions: interrupted at any point, a purge repeated resumes there. With
/// `max_rows` (> 0) it stops, still `purging`, once that many rows are deleted.
/// Accumulators are not touched.
pub async fn purge(st: &NodeState, period: &str, digest: &str, max_rows: u64) -> Result<Status> {
    Period::parse(period, "period")?;
    let p = period.to_owned();
    let rec = st
        .store
        .read({
            let p = p.clone();
            move |conn| sa::get(conn, &p)
        })
        .await?
        .ok_or_else(|| {
            Error::FailedPrecondition(format!(
                "period {p} was not exported; export it first (yidi admin archive export --period {p})"
            ))
        })?;
    match rec.state {
        ArchiveState::Exported | ArchiveState::Purging => {}
        ArchiveState::Purged => return status(st, &p).await,
        other => {
            return Err(Error::FailedPrecondition(format!(
                "the archive of {p} is {}; only an exported archive is purged (export it again first)",
                other.as_str()
            )));
        }
    }
    if digest != rec.digest {
        return Err(Error::FailedPrecondition(format!(
            "digest {digest:?} is not that of the node's archive of {p} ({}); verify your copy (yidi admin archive verify) and give its manifest's sha256",
            rec.digest
        )));
    }
    let manifest = Manifest::from_json(&rec.manifest, "manifest")?;
    let (file, _) = paths(st, &p);
    let (f2, m2) = (file.clone(), manifest.clone());
    tokio::task::spawn_blocking(move || sa::verify(&f2, &m2))
        .await
        .map_err(|e| Error::Internal(format!("verify task: {e}")))??;
    let now = period::format_ts(st.clock.now());
    {
        let (p, now) = (p.clone(), now.clone());
        st.store
            .write(move |conn| sa::set_state(conn, &p, ArchiveState::Purging, &now, false))
            .await?;
    }
    let mut cursor = Cursor::from_record(&rec, true);
    let mut done = 0u64;
    loop {
        if max_rows > 0 && done >= max_rows {
            return status(st, &p).await;
        }
        let (f, c) = (file.clone(), cursor.clone());
        let next = tokio::task::spawn_blocking(move || {
            let conn = sa::open_file(&f)?;
            sa::next_rows(&conn, &c, true)
        })
        .await
        .map_err(|e| Error::Internal(format!("purge task: {e}")))??;
        let Some((table, _cols, keys)) = next else {
            break;
        };
        cursor = Cursor {
            table,
            after: keys.last().cloned(),
        };
        let (p, now) = (p.clone(), period::format_ts(st.clock.now()));
        done += keys.len() as u64;
        st.store
            .write(move |conn| sa::purge_step(conn, &p, table, &keys, &now))
            .await?;
    }
    {
        let (p, now) = (p.clone(), period::format_ts(st.clock.now()));
        st.store
            .write(move |conn| {
                sa::finish_state(conn, &p, ArchiveState::Purging, ArchiveState::Purged, &now)
            })
            .await?;
    }
    tracing::info!(period = %p, "archive purged");
    status(st, &p).await
}

/// Receives a piece of an archive file for a restore, at `offset` (0 starts afresh).
pub async fn write_chunk(st: &NodeState, period: &str, offset: u64, data: Vec<u8>) -> Result<u64> {
    use std::io::{Seek as _, Write as _};
    Period::parse(period, "period")?;
    if data.len() > CHUNK_BYTES {
        return Err(Error::invalid(
            "data",
            format!("{} bytes, at most {CHUNK_BYTES} per call", data.len()),
        ));
    }
    let path = incoming(st, period);
    tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(path.parent().unwrap_or(Path::new(".")))
            .map_err(|e| Error::Internal(format!("archive directory: {e}")))?;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(offset == 0)
            .open(&path)
            .map_err(|e| Error::Internal(format!("{}: {e}", path.display())))?;
        let len = f
            .metadata()
            .map_err(|e| Error::Internal(e.to_string()))?
            .len();
        if offset != len {
            return Err(Error::invalid(
                "offset",
                format!("{offset}, but the node has received {len} bytes of the file"),
            ));
        }
        f.seek(std::io::SeekFrom::Start(offset))
            .and_then(|_| f.write_all(&data))
            .and_then(|()| f.sync_all())
            .map_err(|e| Error::Internal(format!("{}: {e}", path.display())))?;
        Ok(offset + data.len() as u64)
    })
    .await
    .map_err(|e| Error::Internal(format!("write task: {e}")))?
}

/// Restore: checks the file received (WriteArchive) against `manifest` (the JSON next to
/// the operator's file): its digest, its region (this node's) and its rows; then puts
/// back every row the live store does not have, in writer jobs of at most
/// [`sa::STEP_ROWS`] rows (repeated or resumed, it inserts nothing twice). The period is
/// live again afterwards.
pub async fn restore(st: &NodeState, manifest: &str) -> Result<Status> {
    let manifest = Manifest::from_json(manifest, "manifest")?;
    let p = Period::parse(&manifest.period, "manifest.period")?.to_string();
    if manifest.region != st.region.as_str() {
        return Err(Error::FailedPrecondition(format!(
            "the archive is of region {}, this node is {}; restore it at its own node",
            manifest.region, st.region
        )));
    }
    let file = incoming(st, &p);
    let (f2, m2) = (file.clone(), manifest.clone());
    let checked = tokio::task::spawn_blocking(move || {
        if !f2.exists() {
            return Err(Error::FailedPrecondition(format!(
                "the node has not received the file of {}; send it first (WriteArchive)",
                m2.period
            )));
        }
        let inner: String = sa::open_file(&f2)?
            .query_row("SELECT json FROM archive_manifest", [], |r| r.get(0))
            .map_err(|e| Error::FailedPrecondition(format!("not an archive: {e}")))?;
        let inner = Manifest::from_json(&inner, "archive_manifest")?;
        if inner.region != m2.region {
            return Err(Error::FailedPrecondition(format!(
                "the file inside is of region {}, its manifest says {}",
                inner.region, m2.region
            )));
        }
        sa::verify(&f2, &m2)
    })
    .await
    .map_err(|e| Error::Internal(format!("verify task: {e}")))?;
    let checked = match checked {
        Ok(m) => m,
        Err(e) => {
            let _ = std::fs::remove_file(&file);
            return Err(e);
        }
    };
    // A row the live store has under a key of the archive is left as it is (a restore
    // repeated or resumed changes nothing twice): it must be the archive's row, or the
    // restore would bring back a period that is not the one archived.
    let conflicts = compare(st, &file, &checked, false).await?;
    if !conflicts.is_empty() {
        let _ = std::fs::remove_file(&file);
        return Err(Error::FailedPrecondition(format!(
            "the live store holds records of the archive of {p} with other amounts: {}; \
             nothing was restored — find out how they changed since the archive was written \
             (yidi admin ledger --period {p}) before restoring it",
            conflicts.join("; ")
        )));
    }
    let now = period::format_ts(st.clock.now());
    let rec = {
        let (p, now) = (p.clone(), now.clone());
        let digest = checked.sha256.clone();
        st.store
            .write(move |conn| {
                let rec = sa::get(conn, &p)?;
                // Rows out of the live store come back only from the archive they left
                // for: another file of the period (an earlier export, say) could bring
                // back a settlement as it was before a later cancel.
                if let Some(a) = &rec
                    && matches!(
                        a.state,
                        ArchiveState::Purging | ArchiveState::Purged | ArchiveState::Restoring
                    )
                    && a.digest != digest
                {
                    return Err(Error::FailedPrecondition(format!(
                        "this file (sha256 {digest}) is not the archive of {p} this node purged \
                         (sha256 {}); restore that file",
                        a.digest
                    )));
                }
                let resume = matches!(&rec, Some(a) if a.state == ArchiveState::Restoring && a.digest == digest);
                if !resume {
                    sa::set_state(conn, &p, ArchiveState::Restoring, &now, true)?;
                    conn.execute(
                        "UPDATE archived_periods SET digest = ?2 WHERE period = ?1",
                        rusqlite::params![p, digest],
                    )?;
                }
                sa::get(conn, &p)?.ok_or_else(|| Error::Internal("archive record gone".into()))
            })
            .await?
    };
    let mut cursor = Cursor::from_record(&rec, false);
    loop {
        let (f, c) = (file.clone(), cursor.clone());
        let next = tokio::task::spawn_blocking(move || {
            let conn = sa::open_file(&f)?;
            sa::next_rows(&conn, &c, false)
        })
        .await
        .map_err(|e| Error::Internal(format!("restore task: {e}")))??;
        let Some((table, cols, rows)) = next else {
            break;
        };
        cursor = Cursor {
            table,
            after: rows
                .last()
                .map(|r| sa::key_of(&sa::TABLES[table], &cols, r)),
        };
        let (p, now) = (p.clone(), period::format_ts(st.clock.now()));
        st.store
            .write(move |conn| sa::restore_step(conn, &p, table, &cols, &rows, &now))
            .await?;
    }
    // What the live store now holds of the archive: every row, its counts and money
    // sums those of the manifest; else the period stays `restoring` (frozen).
    let diffs = compare(st, &file, &checked, true).await?;
    if !diffs.is_empty() {
        tracing::error!(period = %p, diffs = %diffs.join("; "), "restore does not match its archive");
        return Err(Error::FailedPrecondition(format!(
            "after the restore of {p}, the live store does not match the archive's manifest: {}; \
             the period stays restoring (its records frozen) — run the restore again; if this \
             persists, the live store was changed meanwhile",
            diffs.join("; ")
        )));
    }
    {
        let (p, now) = (p.clone(), period::format_ts(st.clock.now()));
        st.store
            .write(move |conn| {
                sa::finish_state(
                    conn,
                    &p,
                    ArchiveState::Restoring,
                    ArchiveState::Restored,
                    &now,
                )?;
                conn.execute("DELETE FROM archived_ranges WHERE period = ?1", [&p])?;
                Ok(())
            })
            .await?;
    }
    let _ = std::fs::remove_file(&file);
    tracing::info!(period = %p, "archive restored");
    status(st, &p).await
}

/// [`sa::compare`] of the live store with the archive `file`, off the runtime.
async fn compare(
    st: &NodeState,
    file: &Path,
    manifest: &Manifest,
    complete: bool,
) -> Result<Vec<String>> {
    let (db, f, m) = (
        st.store.path().to_owned(),
        file.to_owned(),
        manifest.clone(),
    );
    tokio::task::spawn_blocking(move || sa::compare(&db, &f, &m, complete))
        .await
        .map_err(|e| Error::Internal(format!("compare task: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        period::parse_ts(s, "t").unwrap()
    }

    #[test]
    fn only_periods_past_the_minimum_age_may_be_archived() {
        let now = at("2026-12-07T12:00:00+08:00");
        for (p, needle) in [
            ("2026-12", "the current period"),
            ("2027-01", "in the future"),
            ("2026-10", "less than 90 days"),
        ] {
            let e = check_age(p, now).unwrap_err();
            assert!(
                matches!(&e, Error::FailedPrecondition(m) if m.contains(needle)),
                "{p}: {e:?}"
            );
        }
        // 2026-08 ended on 2026-09-01 (UTC+8); 90 days later is 2026-11-30.
        assert_eq!(check_age("2026-08", now).unwrap().to_string(), "2026-08");
        let e = check_age("2026-13", now).unwrap_err();
        assert!(
            matches!(&e, Error::Invalid { field, .. } if field == "period"),
            "{e:?}"
        );
    }
}
