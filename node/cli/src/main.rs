//! The `yidi` binary: parses the command line into typed arguments and hands them to the
//! library. No logic lives here.

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

// mimalloc rather than glibc's malloc: under load a node allocates and frees many small
// buffers across threads (gRPC frames, rows, protobuf messages), where glibc spent a
// large share of the CPU in its arenas (docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "yidi",
    version,
    about = "yidi: federated cross-region medical insurance settlement"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a city agency's node daemon.
    Node(yidi_node::config::NodeArgs),
    /// Run the provincial clearing coordinator.
    Coordinator {
        #[command(flatten)]
        args: yidi_node::coordinator::CoordinatorArgs,
        #[command(flatten)]
        metrics: yidi_node::metrics::MetricsArgs,
    },
    /// Administer a node: persons, filings, policies, catalogue, institutions.
    Admin(yidi_cli::cli::admin::AdminArgs),
    /// Act as a hospital's or pharmacy's system at its local node: identify, visits,
    /// fees, pre-settle, settle, cancel, 冲正, reconcile.
    Hospital(yidi_cli::cli::hospital::HospitalArgs),
    /// Drive the coordinator's clearing rounds: open, run, status, disputes, resolve,
    /// statement (tables, --json, --csv), record-transfer, abort.
    Clearing(yidi_cli::cli::clearing::ClearingArgs),
    /// The federation directory: add a city or a province to a coordinator's directory
    /// file, show what a coordinator serves (verified) — docs/national.md.
    Directory(yidi_cli::directory::DirectoryArgs),
    /// The federation's certificates: create the CA, issue node, hospital, coordinator
    /// and operator certificates, revoke, show.
    Certs(yidi_cli::certs::CertsArgs),
    /// Copy a running node's or coordinator's SQLite store to a file (online backup).
    Backup(yidi_cli::backup::BackupArgs),
    /// Check a stopped node's or coordinator's store: its files, header, schema and
    /// every page (PRAGMA quick_check); exits non-zero naming the damage and the repair.
    CheckStore(yidi_cli::backup::CheckStoreArgs),
    /// Load a new node's person register from the agency's CSV file, straight into the
    /// stopped node's store (its first load; changes go through `admin person import`).
    LoadPersons(yidi_cli::cli::load::LoadArgs),
    /// Start the Zhejiang demo federation on loopback (three city nodes and the
    /// coordinator), load and generate data, drive settlements, run a clearing round.
    Demo(yidi_cli::demo::DemoArgs),
    /// Run the benefit engine offline on files and print the split. Exit codes: 0 the
    /// split, 3 refused by the policy, 2 bad input, 1 internal error (docs/quote.md).
    Quote(yidi_cli::quote::QuoteArgs),
    /// Benchmark the benefit engine on one core.
    BenchEngine(yidi_cli::quote::EngineBenchArgs),
    /// Benchmark a clearing round at the coordinator: simulated participants (default
    /// 333) and claims (default 10 million), driven to SETTLED.
    BenchClearing(yidi_cli::bench_clearing::ClearingBenchArgs),
    /// Load-test the settlement hot path: a three-node federation (in-process, or the
    /// running nodes given with --node) driven through the real HospitalService; prints
    /// throughput, latency percentiles, errors, the floor ratio, and verifies both nodes.
    Bench(Box<yidi_cli::bench::BenchArgs>),
    /// Benchmark the person store: import of millions of persons, node start time and
    /// look-up latency.
    BenchPersons(yidi_cli::bench::persons::PersonsBenchArgs),
    /// Print the shell completion script for SHELL (bash, zsh, fish, elvish,
    /// powershell), e.g. `yidi completions bash > /etc/bash_completion.d/yidi`.
    Completions {
        /// The shell to complete in.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), e.g. `yidi man > /usr/share/man/man1/yidi.1`;
    /// with --dir, write yidi.1 and one page per subcommand (yidi-node.1, …) there.
    Man {
        /// Directory to write every page to, instead of printing yidi.1.
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
    },
}

/// Errors end the process with their message and cause chain on one line — never a
/// backtrace, which `RUST_BACKTRACE` in an operator's environment would otherwise add
/// to a plain "cannot read certificate" — and exit code 1.
fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Node(args) => {
            let config = yidi_node::config::NodeConfig::resolve(&args)?;
            if args.check_config {
                let rt = tokio::runtime::Runtime::new()?;
                println!("{}", rt.block_on(async { config.check() })?);
                return Ok(());
            }
            yidi_node::serving::init_tracing(config.log_json);
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(yidi_node::server::run(config))?;
        }
        Command::Coordinator { args, metrics } => {
            let mut config = yidi_node::coordinator::CoordinatorConfig::resolve(&args)?;
            config.metrics_listen = metrics.metrics_listen.or(config.metrics_listen);
            if args.check_config {
                let rt = tokio::runtime::Runtime::new()?;
                println!("{}", rt.block_on(async { config.check() })?);
                return Ok(());
            }
            yidi_node::serving::init_tracing(config.log_json);
            let rt = tokio::runtime::Runtime::new()?;
            let listen = config.metrics_listen;
            rt.block_on(yidi_node::coordinator::run_with_metrics(config, listen))?;
        }
        Command::Admin(args) => {
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(yidi_cli::cli::admin::run(args))?;
        }
        Command::Hospital(args) => {
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(yidi_cli::cli::hospital::run(args))?;
        }
        Command::Clearing(args) => {
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(yidi_cli::cli::clearing::run(args))?;
        }
        Command::Directory(args) => {
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(yidi_cli::directory::run(args))?;
        }
        Command::Certs(args) => yidi_cli::certs::run(args)?,
        Command::Backup(args) => yidi_cli::backup::run(&args)?,
        Command::CheckStore(args) => yidi_cli::backup::check_store(&args)?,
        Command::LoadPersons(args) => {
            let code = yidi_cli::cli::load::run(&args)?;
            if code != 0 {
                std::process::exit(code);
            }
        }
        Command::Demo(args) => yidi_cli::demo::main(&args)?,
        Command::Quote(args) => {
            let code = yidi_cli::quote::run(&args);
            if code != 0 {
                std::process::exit(code);
            }
        }
        Command::BenchEngine(args) => yidi_cli::quote::run_engine_bench(&args)?,
        Command::BenchClearing(args) => yidi_cli::bench_clearing::run(&args)?,
        Command::Bench(args) => yidi_cli::bench::run(*args)?,
        Command::BenchPersons(args) => yidi_cli::bench::persons::run(&args)?,
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "yidi", &mut std::io::stdout());
        }
        Command::Man { dir } => {
            let cmd = Cli::command();
            match dir {
                Some(dir) => {
                    std::fs::create_dir_all(&dir)
                        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
                    clap_mangen::generate_to(cmd, &dir).map_err(|e| {
                        anyhow::anyhow!("cannot write the pages to {}: {e}", dir.display())
                    })?;
                }
                None => clap_mangen::Man::new(cmd).render(&mut std::io::stdout())?,
            }
        }
    }
    Ok(())
}
