//! `yidi admin archive …`: archives of closed and cleared periods (docs/admin.md
//! "Archives"). `export` has the node write a period's archive and copies it into a
//! local directory (the file and its manifest, fsynced and verified there); `verify`
//! checks a file against its manifest offline; `purge` removes the archived rows from the
//! node's live store once the local copy verifies; `restore` sends a file back and has
//! the node put its rows back; `list` shows every archive of the node.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;
use clap::Subcommand;
use serde_json::json;
use tonic::{Code, Status};
use yidi_common::proto;
use yidi_node::store::archive::{self as sa, Manifest};

use super::admin::{Client, Globals};

#[derive(Debug, Subcommand)]
pub enum ArchiveCommand {
    /// Have the node archive a period (ended at least 90 days ago, fully cleared at every
    /// scope) and copy the file and its manifest into --out, fsynced and verified.
    Export {
        /// The period, YYYY-MM.
        #[arg(long)]
        period: String,
        /// Directory the file `<region>-<period>.sqlite` and its manifest `.json` go to.
        #[arg(long)]
        out: PathBuf,
    },
    /// Check an archive file against the manifest next to it (`X.sqlite` → `X.json`):
    /// its SHA-256, size, and every table's rows and money sums. Needs no node.
    Verify {
        /// The archive file.
        #[arg(long)]
        file: PathBuf,
    },
    /// Delete a period's archived rows from the node's live store, after verifying your
    /// copy (--file) and checking that the node's own copy has the same digest.
    /// Interrupted, run it again: it resumes.
    Purge {
        /// Your verified copy of the archive (from `export`).
        #[arg(long)]
        file: PathBuf,
        /// Stop after about this many rows (the purge stays resumable); 0: to the end.
        #[arg(long, default_value_t = 0)]
        max_rows: u64,
    },
    /// Send an archive file to the node and put its rows back (refused for a file of
    /// another region or one that does not match its manifest). Repeating it is harmless.
    Restore {
        /// The archive file; its manifest must lie next to it.
        #[arg(long)]
        file: PathBuf,
    },
    /// The node's archives: state, rows purged, rows still live.
    List {
        /// Only this period.
        #[arg(long)]
        period: Option<String>,
    },
}

/// Runs the subcommands that need no node (`verify`); `None` for the others.
#[must_use]
pub fn offline(cmd: &ArchiveCommand, json: bool) -> Option<i32> {
    let ArchiveCommand::Verify { file } = cmd else {
        return None;
    };
    Some(match verify_local(file) {
        Ok(m) => {
            if json {
                println!("{}", m.to_json());
            } else {
                println!(
                    "ok: {} holds {} rows of period {} of {} (sha256 {})",
                    file.display(),
                    m.rows(),
                    m.period,
                    m.region,
                    m.sha256
                );
                print_tables(&m);
            }
            0
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    })
}

fn print_tables(m: &Manifest) {
    for t in &m.tables {
        let sums = t
            .sums
            .iter()
            .map(|(c, s)| format!("{c}={s}"))
            .collect::<Vec<_>>()
            .join(" ");
        println!("  {:<12} {:>10} rows  {sums}", t.table, t.rows);
    }
}

/// Reads the manifest next to `file` and verifies the file against it.
fn verify_local(file: &Path) -> anyhow::Result<Manifest> {
    let mpath = sa::manifest_path(file);
    let text = std::fs::read_to_string(&mpath)
        .with_context(|| format!("the manifest {} next to the file", mpath.display()))?;
    let m = Manifest::from_json(&text, "manifest")?;
    Ok(sa::verify(file, &m)?)
}

fn status_json(s: &proto::ArchiveStatus) -> serde_json::Value {
    json!({
        "period": s.period,
        "state": s.state,
        "rows_done": s.rows_done,
        "live_rows": s.live_rows,
        "store_bytes": s.pages * s.page_size,
        "free_bytes": s.free_pages * s.page_size,
        "manifest": serde_json::from_str::<serde_json::Value>(&s.manifest).unwrap_or(serde_json::Value::Null),
    })
}

fn print_status(g: &Globals, s: &proto::ArchiveStatus, extra: serde_json::Value) {
    if g.json {
        let mut v = status_json(s);
        if let (Some(o), serde_json::Value::Object(e)) = (v.as_object_mut(), extra) {
            o.extend(e);
        }
        println!("{v}");
    } else {
        println!(
            "period {}: {} (rows done {}, rows of the period still live {}); live store {} bytes, {} of them free pages reused by the next writes",
            s.period,
            s.state,
            s.rows_done,
            s.live_rows,
            s.pages * s.page_size,
            s.free_pages * s.page_size
        );
        if let serde_json::Value::Object(e) = extra {
            for (k, v) in e {
                println!("  {k}: {v}");
            }
        }
    }
}

/// Runs an archive subcommand against the node.
pub async fn run(client: &mut Client, g: &Globals, cmd: ArchiveCommand) -> anyhow::Result<i32> {
    match cmd {
        ArchiveCommand::Verify { .. } => unreachable!("run offline"),
        ArchiveCommand::Export { period, out } => {
            let s = client
                .export_archive(proto::ArchivePeriodRequest {
                    period: period.clone(),
                    ..Default::default()
                })
                .await?
                .into_inner();
            let m = Manifest::from_json(&s.manifest, "manifest")?;
            std::fs::create_dir_all(&out).with_context(|| format!("--out {}", out.display()))?;
            let file = out.join(&m.file);
            let part = file.with_extension("sqlite.part");
            {
                let mut f =
                    std::fs::File::create(&part).with_context(|| format!("{}", part.display()))?;
                let mut offset = 0u64;
                loop {
                    let c = client
                        .read_archive(proto::ArchiveChunkRequest {
                            period: period.clone(),
                            offset,
                        })
                        .await?
                        .into_inner();
                    f.write_all(&c.data)?;
                    offset += c.data.len() as u64;
                    if c.data.is_empty() || offset >= c.total {
                        break;
                    }
                }
                f.sync_all()?;
            }
            std::fs::rename(&part, &file)?;
            let mpath = sa::manifest_path(&file);
            let mut mf = std::fs::File::create(&mpath)?;
            mf.write_all(m.to_json().as_bytes())?;
            mf.sync_all()?;
            if let Ok(d) = std::fs::File::open(&out) {
                let _ = d.sync_all();
            }
            let checked = sa::verify(&file, &m)?;
            print_status(
                g,
                &s,
                json!({"file": file.display().to_string(), "sha256": checked.sha256, "rows": checked.rows()}),
            );
            if !g.json {
                print_tables(&checked);
            }
            Ok(0)
        }
        ArchiveCommand::Purge { file, max_rows } => {
            let m = verify_local(&file)?;
            // A purge of millions of rows may outlast the call's deadline: the node stops
            // where it was (its cursor is in the store), and the call is simply repeated.
            let mut last = None;
            for _ in 0..1_000 {
                match client
                    .purge_archive(proto::ArchivePeriodRequest {
                        period: m.period.clone(),
                        sha256: m.sha256.clone(),
                        max_rows,
                    })
                    .await
                {
                    Ok(s) => {
                        last = Some(s.into_inner());
                        break;
                    }
                    Err(e) if matches!(e.code(), Code::DeadlineExceeded | Code::Cancelled) => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            let s = last.ok_or_else(|| {
                Status::deadline_exceeded("the purge did not finish; run it again to resume")
            })?;
            print_status(g, &s, json!({}));
            Ok(0)
        }
        ArchiveCommand::Restore { file } => {
            let m = verify_local(&file)?;
            let bytes = std::fs::read(&file)?;
            let mut offset = 0usize;
            loop {
                let end = (offset + yidi_node::limits::ARCHIVE_CHUNK).min(bytes.len());
                client
                    .write_archive(proto::ArchiveChunk {
                        period: m.period.clone(),
                        offset: offset as u64,
                        data: bytes[offset..end].to_vec(),
                        total: bytes.len() as u64,
                    })
                    .await?;
                offset = end;
                if offset >= bytes.len() {
                    break;
                }
            }
            let s = client
                .restore_archive(proto::RestoreArchiveRequest {
                    manifest: m.to_json(),
                })
                .await?
                .into_inner();
            print_status(g, &s, json!({}));
            Ok(0)
        }
        ArchiveCommand::List { period } => {
            let l = client
                .list_archives(proto::ArchivePeriodRequest {
                    period: period.unwrap_or_default(),
                    ..Default::default()
                })
                .await?
                .into_inner();
            if g.json {
                println!(
                    "{}",
                    serde_json::Value::from(l.archives.iter().map(status_json).collect::<Vec<_>>())
                );
            } else {
                for s in &l.archives {
                    print_status(g, s, json!({}));
                }
            }
            Ok(0)
        }
    }
}
