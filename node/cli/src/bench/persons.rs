//! `yidi bench-persons`: the person store at scale. Starts a real `yidi node` process
//! (this binary) on loopback over its own data directory, imports generated persons —
//! through ImportPersons in large pipelined batches, or by writing a CSV file and running
//! the operator's own `yidi admin person import` on it, or `yidi load-persons` into the
//! store before the node starts — and measures the import rate;
//! then stops the node (SIGTERM), starts it again and measures the time until it answers
//! a person look-up, and the latency of random look-ups by ID number and by card.
//!
//! A child process rather than an in-process node, because "starts in ≤ 2 s" is about
//! the daemon as an operator runs it: process start, store open, migrations, serving.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use futures::{StreamExt, stream};
use indicatif::{ProgressBar, ProgressStyle};
use rand::{Rng, SeedableRng, rngs::SmallRng};
use serde_json::json;
use tonic::transport::{Channel, Endpoint};
use yidi_common::proto::{self, admin_service_client::AdminServiceClient};

use super::{card_of, histogram, line, micros, person_id, person_row, summary};

/// The region of the measured node.
const REGION: &str = "330100";

/// How persons reach the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Via {
    /// Generated rows sent with ImportPersons, `--inflight` batches at a time.
    Rpc,
    /// A CSV file written first, then imported by `yidi admin person import`.
    Csv,
    /// A CSV file written first, then loaded by `yidi load-persons` into the store
    /// before the node starts (a new node's first load).
    Load,
}

/// Flags of `yidi bench-persons`.
#[derive(Debug, Clone, Args)]
pub struct PersonsBenchArgs {
    /// Persons to import.
    #[arg(long, default_value_t = 10_000_000)]
    pub persons: u32,
    /// Directory of the node's store (and of the CSV file with --via csv). Default: a
    /// temporary directory, removed at the end. An existing store is reused: its
    /// persons are then counted as unchanged, which measures a re-import.
    #[arg(long, env = "YIDI_BENCH_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// How the persons are imported.
    #[arg(long, value_enum, default_value_t = Via::Rpc)]
    pub via: Via,
    /// Rows per ImportPersons call (the node accepts at most 10,000).
    #[arg(long, default_value_t = 10_000)]
    pub batch: u32,
    /// ImportPersons calls in flight at once with --via rpc: the node's writer commits
    /// the batches queued together in one transaction (one fsync, one pass over the
    /// random-keyed look-up-hash index), so more in flight imports faster.
    #[arg(long, default_value_t = 8)]
    pub inflight: usize,
    /// Random look-ups after the restart (half by ID number, half by card).
    #[arg(long, default_value_t = 20_000)]
    pub lookups: u32,
    /// Skip the import (the data directory already holds the persons): measure start
    /// and look-ups only.
    #[arg(long)]
    pub skip_import: bool,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// A `yidi node` child process.
struct NodeProcess {
    child: Child,
    url: String,
}

impl NodeProcess {
    fn start(dir: &Path) -> anyhow::Result<Self> {
        // A free port: bind, note, release; the node binds it again at once.
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("node.log"))?;
        let child = Command::new(std::env::current_exe()?)
            .args(["node", "--region", REGION, "--insecure", "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(dir.join(REGION))
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("start yidi node")?;
        Ok(Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
        })
    }

    /// Waits until the node answers a look-up of `id_number` (found or not: the store
    /// is open and the service is serving).
    async fn ready(&mut self, id_number: &str) -> anyhow::Result<AdminServiceClient<Channel>> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("the node exited during start ({status}); see node.log");
            }
            if let Ok(ch) = Endpoint::from_shared(self.url.clone())?
                .tcp_nodelay(true)
                .connect()
                .await
            {
                let mut admin = AdminServiceClient::new(ch);
                match admin
                    .get_person(proto::GetPersonRequest {
                        id_number: id_number.to_owned(),
                        card_no: String::new(),
                    })
                    .await
                {
                    Ok(_) => return Ok(admin),
                    Err(s) if s.code() == tonic::Code::NotFound => return Ok(admin),
                    Err(_) => {}
                }
            }
            if Instant::now() > deadline {
                bail!("the node did not answer within 120 s");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// SIGTERM (graceful: the daemon drains and closes its store), then waits.
    fn stop(mut self) -> anyhow::Result<()> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                self.child.kill()?;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

fn progress(n: u64) -> ProgressBar {
    let bar = ProgressBar::new(n);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} {wide_bar} {human_pos}/{human_len} persons  {per_sec}  eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

/// Imports generated persons with pipelined ImportPersons calls.
async fn import_rpc(url: &str, args: &PersonsBenchArgs) -> anyhow::Result<u64> {
    let ch = Endpoint::from_shared(url.to_owned())?
        .tcp_nodelay(true)
        .connect()
        .await?;
    let admin = AdminServiceClient::new(ch)
        .max_encoding_message_size(64 << 20)
        .max_decoding_message_size(64 << 20);
    let batch = args.batch.clamp(1, 10_000);
    let bar = progress(u64::from(args.persons));
    let batches = (0..args.persons).step_by(batch as usize).enumerate();
    let mut results = stream::iter(batches)
        .map(|(b, from)| {
            let mut admin = admin.clone();
            let to = from.saturating_add(batch).min(args.persons);
            async move {
                // Generating on a blocking thread keeps the runtime free for the calls.
                let rows = tokio::task::spawn_blocking(move || {
                    (from..to)
                        .map(|i| person_row(REGION, i))
                        .collect::<Vec<_>>()
                })
                .await?;
                let r = admin
                    .import_persons(proto::ImportPersonsRequest {
                        request_id: format!("bench-persons-{batch}-{b}"),
                        rows,
                    })
                    .await?
                    .into_inner();
                if let Some(e) = r.errors.first() {
                    bail!("row {} refused: {} {}", e.row, e.field, e.reason);
                }
                anyhow::Ok(u64::from(to - from))
            }
        })
        .buffered(args.inflight.max(1));
    let mut done = 0;
    while let Some(r) = results.next().await {
        let n = r?;
        done += n;
        bar.inc(n);
    }
    bar.finish();
    Ok(done)
}

/// Writes the generated persons as a CSV file in the columns of `admin person import`.
fn write_csv(path: &Path, persons: u32) -> anyhow::Result<()> {
    use std::io::Write;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    writeln!(
        w,
        "id_number,name,card_no,insurance_type,person_type,civil_servant,status,account_balance,enrolled_since"
    )?;
    let bar = progress(u64::from(persons));
    for i in 0..persons {
        let r = person_row(REGION, i);
        writeln!(
            w,
            "{},{},{},{},{},{},{},{},{}",
            r.id_number,
            r.name,
            r.card_no,
            r.insurance_type,
            r.person_type,
            r.civil_servant,
            r.status,
            r.account_balance,
            r.enrolled_since
        )?;
        if i % 100_000 == 0 {
            bar.set_position(u64::from(i));
        }
    }
    bar.finish();
    w.flush()?;
    Ok(())
}

/// Starts the node and waits until it answers.
async fn started_node(dir: &Path, probe: &str) -> anyhow::Result<NodeProcess> {
    let mut node = NodeProcess::start(dir)?;
    node.ready(probe).await?;
    Ok(node)
}

/// Writes the generated persons to `DIR/persons.csv`, timing it apart from the import.
async fn csv_file(
    dir: &Path,
    persons: u32,
    report: &mut serde_json::Map<String, serde_json::Value>,
) -> anyhow::Result<PathBuf> {
    let csv = dir.join("persons.csv");
    eprintln!("writing {} …", csv.display());
    let started = Instant::now();
    let path = csv.clone();
    tokio::task::spawn_blocking(move || write_csv(&path, persons)).await??;
    let written = started.elapsed().as_secs_f64();
    report.insert("csv_write_seconds".into(), json!(written));
    eprintln!("written in {written:.1} s");
    Ok(csv)
}

/// Runs one of this binary's commands with its report discarded; fails unless it
/// exits 0 (every row accepted).
fn run_quietly(mut command: Command, what: &str) -> anyhow::Result<()> {
    let status = command.stdout(Stdio::null()).status()?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

/// `yidi bench-persons`.
pub fn run(args: &PersonsBenchArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let temp = tempfile::Builder::new()
        .prefix("yidi-bench-persons-")
        .tempdir()?;
    let dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| temp.path().to_path_buf());
    std::fs::create_dir_all(&dir)?;
    let outcome = rt.block_on(measure(args, &dir));
    drop(temp);
    outcome
}

async fn measure(args: &PersonsBenchArgs, dir: &Path) -> anyhow::Result<()> {
    let mut report = serde_json::Map::new();
    report.insert(
        "load_average".into(),
        json!(
            std::fs::read_to_string("/proc/loadavg")
                .unwrap_or_default()
                .trim()
        ),
    );
    report.insert("persons".into(), json!(args.persons));
    let probe = person_id(REGION, 0);

    if !args.skip_import {
        let (secs, rows) = match args.via {
            Via::Rpc => {
                let node = started_node(dir, &probe).await?;
                eprintln!(
                    "importing {} persons with ImportPersons ({} per call, {} in flight) …",
                    args.persons, args.batch, args.inflight
                );
                let started = Instant::now();
                let rows = import_rpc(&node.url, args).await?;
                let secs = started.elapsed().as_secs_f64();
                node.stop()?;
                (secs, rows)
            }
            Via::Csv => {
                let csv = csv_file(dir, args.persons, &mut report).await?;
                let node = started_node(dir, &probe).await?;
                eprintln!("importing with `yidi admin person import` …");
                let started = Instant::now();
                let mut import = Command::new(std::env::current_exe()?);
                import
                    .args(["admin", "--node", &node.url, "person", "import"])
                    .arg(&csv)
                    .arg("--batch-size")
                    .arg(args.batch.to_string());
                run_quietly(import, "yidi admin person import")?;
                let secs = started.elapsed().as_secs_f64();
                node.stop()?;
                (secs, u64::from(args.persons))
            }
            Via::Load => {
                let csv = csv_file(dir, args.persons, &mut report).await?;
                eprintln!("loading with `yidi load-persons` …");
                let started = Instant::now();
                let mut load = Command::new(std::env::current_exe()?);
                load.args(["load-persons", "--region", REGION, "--data-dir"])
                    .arg(dir.join(REGION))
                    .arg(&csv);
                run_quietly(load, "yidi load-persons")?;
                (started.elapsed().as_secs_f64(), u64::from(args.persons))
            }
        };
        let rate = rows as f64 / secs;
        println!(
            "import: {rows} persons in {secs:.1} s = {rate:.0} rows/s (target ≥ 100,000) via {:?}",
            args.via
        );
        report.insert(
            "import".into(),
            json!({"via": format!("{:?}", args.via), "rows": rows, "seconds": secs, "rows_per_second": rate, "batch": args.batch, "inflight": args.inflight}),
        );
    }

    let db = dir.join(REGION).join(yidi_node::store::DB_FILE);
    let size = std::fs::metadata(&db).map(|m| m.len()).unwrap_or(0);
    println!("store: {} ({:.2} GB)", db.display(), size as f64 / 1e9);
    report.insert("store_bytes".into(), json!(size));

    // Start time: process start until the first person look-up is answered.
    let started = Instant::now();
    let mut node = NodeProcess::start(dir)?;
    let mut admin = node.ready(&probe).await?;
    let start_secs = started.elapsed().as_secs_f64();
    println!("start: {start_secs:.3} s until the first person look-up is answered (target ≤ 2 s)");
    report.insert("start_seconds".into(), json!(start_secs));

    // Look-ups of random persons, one at a time.
    let mut rng = SmallRng::seed_from_u64(42);
    let (mut by_id, mut by_card) = (histogram(), histogram());
    let mut missing = 0u64;
    for n in 0..args.lookups {
        let id = person_id(REGION, rng.random_range(0..args.persons.max(1)));
        let req = if n % 2 == 0 {
            proto::GetPersonRequest {
                id_number: id,
                card_no: String::new(),
            }
        } else {
            proto::GetPersonRequest {
                id_number: String::new(),
                card_no: card_of(&id),
            }
        };
        let t = Instant::now();
        let found = admin.get_person(req).await;
        let us = micros(t.elapsed()).clamp(1, super::MAX_MICROS);
        if found.is_err() {
            missing += 1;
        }
        let h = if n % 2 == 0 { &mut by_id } else { &mut by_card };
        let _ = h.record(us);
    }
    let mut all = by_id.clone();
    let _ = all.add(&by_card);
    println!("look-ups (GetPerson over gRPC, one client, random persons):");
    println!("{}", line("by ID number", &by_id));
    println!("{}", line("by card", &by_card));
    println!("{}", line("all", &all));
    if missing > 0 {
        println!("  {missing} look-ups failed (persons missing?)");
    }
    report.insert(
        "lookups".into(),
        json!({"by_id": summary(&by_id), "by_card": summary(&by_card), "all": summary(&all), "failed": missing}),
    );
    node.stop()?;
    if let Some(path) = &args.json {
        std::fs::write(
            path,
            serde_json::to_string_pretty(&serde_json::Value::Object(report))?,
        )?;
    }
    if missing > 0 {
        bail!("{missing} look-ups failed");
    }
    Ok(())
}
