//! Real `yidi` processes for multi-process tests: find (and build) the binary, start a
//! node on a free loopback port in a temporary directory, wait until it answers (by
//! asking it, never by sleeping a fixed time), run CLI commands and capture their
//! output, and kill the node when the test ends — also when it panics.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

use tempfile::TempDir;
use yidi_common::proto::{GetNodeInfoRequest, admin_service_client::AdminServiceClient};

/// The workspace root (the tests crate lives one level below it).
#[must_use]
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// The `yidi` binary of the profile this test was built with, rebuilt once per test
/// process so that a test never runs a stale binary. `CARGO_BIN_EXE_*` only exists in
/// the package that owns the binary, so the path is derived from the test executable:
/// `target/<profile>/deps/<test>` → `target/<profile>/yidi`.
pub fn yidi_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().expect("test executable path");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("test executable lives in target/<profile>/deps")
            .to_path_buf();
        let target_dir = profile_dir
            .parent()
            .expect("target dir above the profile dir");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let mut cmd = Command::new(cargo);
        // The variables `cargo test` sets for this test process are not the outer
        // build's: some build scripts (ring's) re-run when one of them differs, and
        // half the dependency tree would be rebuilt on every run.
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy().into_owned();
            if name.starts_with("CARGO_PKG_")
                || name.starts_with("CARGO_BIN_EXE_")
                || [
                    "CARGO_MANIFEST_DIR",
                    "CARGO_MANIFEST_PATH",
                    "CARGO_CRATE_NAME",
                    "CARGO_PRIMARY_PACKAGE",
                    "CARGO_TARGET_TMPDIR",
                    "OUT_DIR",
                ]
                .contains(&name.as_str())
            {
                cmd.env_remove(&name);
            }
        }
        cmd.current_dir(workspace_root())
            .args([
                "build",
                "--quiet",
                "-p",
                "yidi-cli",
                "--bin",
                "yidi",
                "--target-dir",
            ])
            .arg(target_dir);
        match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") | None => {}
            Some("release") => {
                cmd.arg("--release");
            }
            Some(other) => {
                cmd.args(["--profile", other]);
            }
        }
        let status = cmd.status().expect("run cargo build for the yidi binary");
        let bin = profile_dir.join(format!("yidi{}", std::env::consts::EXE_SUFFIX));
        assert!(
            status.success(),
            "cargo build -p yidi-cli --bin yidi failed"
        );
        assert!(
            bin.exists(),
            "built yidi binary not found at {}",
            bin.display()
        );
        bin
    })
}

/// A port on 127.0.0.1 that was free a moment ago. A process started with `--listen`
/// needs a number up front; the window in which another process could take it is tiny.
#[must_use]
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    listener.local_addr().expect("local addr").port()
}

/// Whether a process's log says its listen address was taken (another process bound
/// the port after [`free_port`] released it).
fn address_taken(log: &str) -> bool {
    log.to_ascii_lowercase().contains("address already in use")
}

/// A `yidi node` process with its own data directory.
pub struct NodeProcess {
    child: Child,
    region: String,
    port: u16,
    /// Further `yidi node` arguments, kept for restarts.
    extra: Vec<String>,
    /// `http://127.0.0.1:PORT`, for `--node`.
    pub url: String,
    /// Holds the data directory and the node's log until the guard is dropped.
    pub dir: TempDir,
}

/// Starts `yidi node` with its log appended to `<dir>/node.log`.
fn spawn_node(region: &str, port: u16, dir: &Path, extra: &[String]) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("node.log"))
        .expect("node log");
    Command::new(yidi_bin())
        // Plain text on loopback: these tests are about the CLI, not the transport.
        .args([
            "node",
            "--insecure",
            "--region",
            region,
            "--name",
            &format!("test-{region}"),
        ])
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(extra)
        .env_remove("YIDI_CONFIG")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log handle"))
        .stderr(log)
        .spawn()
        .expect("spawn yidi node")
}

impl NodeProcess {
    /// Starts `yidi node --region REGION` on a free port and waits until it answers
    /// GetNodeInfo.
    ///
    /// The port was free a moment before the process binds it; if another process took
    /// it in between, the node is started again on another free port.
    pub fn start(region: &str) -> Self {
        const ATTEMPTS: usize = 5;
        for _ in 1..ATTEMPTS {
            let mut node = Self::spawn(region, free_port(), Vec::new());
            match node.wait_answering(Duration::from_secs(30)) {
                Ok(()) => return node,
                Err(_) if address_taken(&node.log()) => {}
                Err(code) => panic!(
                    "yidi node exited before answering ({code:?}):\n{}",
                    node.log()
                ),
            }
        }
        Self::start_with(region, free_port(), Vec::new())
    }

    /// Starts `yidi node --region REGION --listen 127.0.0.1:PORT EXTRA…` and waits until
    /// it answers.
    pub fn start_with(region: &str, port: u16, extra: Vec<String>) -> Self {
        let mut node = Self::spawn(region, port, extra);
        node.wait_ready(Duration::from_secs(30));
        node
    }

    /// Starts the process without waiting for it.
    fn spawn(region: &str, port: u16, extra: Vec<String>) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let child = spawn_node(region, port, dir.path(), &extra);
        Self {
            child,
            region: region.to_owned(),
            port,
            extra,
            url: format!("http://127.0.0.1:{port}"),
            dir,
        }
    }

    /// One node per region that know each other through a shared peer directory file
    /// (kept in `peers_dir`).
    pub fn federation(regions: &[&str], peers_dir: &Path) -> Vec<Self> {
        Self::federation_with(regions, peers_dir, |_| Vec::new())
    }

    /// [`Self::federation`] with more arguments for some nodes (`extra(region)`).
    pub fn federation_with(
        regions: &[&str],
        peers_dir: &Path,
        extra: impl Fn(&str) -> Vec<String>,
    ) -> Vec<Self> {
        let ports: Vec<u16> = regions.iter().map(|_| free_port()).collect();
        let peers = peers_dir.join("peers.toml");
        let addrs: Vec<(String, std::net::SocketAddr)> = regions
            .iter()
            .zip(&ports)
            .map(|(r, p)| ((*r).to_owned(), ([127, 0, 0, 1], *p).into()))
            .collect();
        crate::harness::write_peers(&peers, &addrs);
        regions
            .iter()
            .zip(ports)
            .map(|(r, port)| {
                let mut args = vec![
                    "--peers-file".to_owned(),
                    peers.display().to_string(),
                    "--peer-timeout-ms".to_owned(),
                    "3000".to_owned(),
                ];
                args.extend(extra(r));
                Self::start_with(r, port, args)
            })
            .collect()
    }

    /// The node's data directory (its SQLite store).
    #[must_use]
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The node's loopback address.
    #[must_use]
    pub fn addr(&self) -> std::net::SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    /// Kills the node with SIGKILL (no graceful shutdown) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the node again on the same port and data directory (after [`Self::kill`])
    /// and waits until it answers.
    pub fn restart(&mut self) {
        self.kill();
        self.child = spawn_node(&self.region, self.port, self.dir.path(), &self.extra);
        self.wait_ready(Duration::from_secs(30));
    }

    /// Stops the node with SIGTERM (a clean stop) and waits until it has exited.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM failed");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for the node") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "yidi node did not stop within 30 s of SIGTERM:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the node again (after [`Self::kill`] or [`Self::terminate`]) with
    /// `more` arguments for this start only. `Err` when it exits instead of answering:
    /// its exit code and what it logged in this start.
    pub fn try_restart(&mut self, more: &[&str]) -> Result<(), (Option<i32>, String)> {
        self.kill();
        let logged = self.log().len();
        let mut extra = self.extra.clone();
        extra.extend(more.iter().map(|a| (*a).to_owned()));
        self.child = spawn_node(&self.region, self.port, self.dir.path(), &extra);
        self.wait_answering(Duration::from_secs(30))
            .map_err(|code| (code, self.log()[logged..].to_owned()))
    }

    fn wait_ready(&mut self, within: Duration) {
        if let Err(code) = self.wait_answering(within) {
            panic!(
                "yidi node exited before answering ({code:?}):\n{}",
                self.log()
            );
        }
    }

    /// Waits until the node answers; `Err` with its exit code if it exits first.
    fn wait_answering(&mut self, within: Duration) -> Result<(), Option<i32>> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(status.code());
            }
            let url = self.url.clone();
            let answered = rt.block_on(async move {
                let mut client = AdminServiceClient::connect(url).await.ok()?;
                client.get_node_info(GetNodeInfoRequest {}).await.ok()
            });
            if answered.is_some() {
                return Ok(());
            }
            assert!(
                Instant::now() < deadline,
                "yidi node did not answer within {within:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// What the node has logged so far.
    #[must_use]
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("node.log")).unwrap_or_default()
    }

    /// Runs `yidi admin --node <this node> ARGS…`.
    pub fn admin(&self, args: &[&str]) -> Run {
        let mut full = vec!["admin", "--node", self.url.as_str()];
        full.extend_from_slice(args);
        yidi(&full)
    }

    /// `yidi admin --node <this node> ARGS…` as a command to spawn, for a client that
    /// must run while the test does something to the node.
    #[must_use]
    pub fn admin_command(&self, args: &[&str]) -> Command {
        let mut cmd = yidi_command();
        cmd.args(["admin", "--node", self.url.as_str()]).args(args);
        cmd
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- yidi node log ----\n{}", self.log());
        }
    }
}

/// A finished CLI invocation.
#[derive(Debug)]
pub struct Run {
    pub args: Vec<String>,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Captures a finished process's output.
    #[must_use]
    pub fn from_output(args: &[&str], out: Output) -> Self {
        Self {
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Asserts exit code `code` and returns self for further checks.
    #[track_caller]
    pub fn expect_code(self, code: i32) -> Self {
        assert_eq!(
            self.code,
            Some(code),
            "yidi {:?}\nstdout:\n{}\nstderr:\n{}",
            self.args,
            self.stdout,
            self.stderr
        );
        self
    }
}

/// Runs `yidi ARGS…` to completion, with no stdin and `YIDI_NODE` unset so only the
/// explicit flags count.
pub fn yidi(args: &[&str]) -> Run {
    let out = yidi_command().args(args).output().expect("run yidi");
    Run::from_output(args, out)
}

/// The `yidi` binary with no stdin, `YIDI_NODE` unset and English text output (the
/// tests' locale must not pick `--lang`; a test sets `--lang` or the variables itself).
#[must_use]
pub fn yidi_command() -> Command {
    let mut cmd = Command::new(yidi_bin());
    cmd.env_remove("YIDI_NODE")
        .env_remove("YIDI_LANG")
        .env_remove("LC_ALL")
        .env("LANG", "C.UTF-8")
        .stdin(Stdio::null());
    cmd
}

/// A `yidi coordinator` process (plain text on loopback) with its own data directory:
/// a province's (`330000`) or the national one (`000000`, whose participants file lists
/// the provinces' coordinators).
pub struct CoordinatorProcess {
    child: Child,
    region: String,
    port: u16,
    participants: PathBuf,
    /// `http://127.0.0.1:PORT`, for `--coordinator`.
    pub url: String,
    /// Holds the data directory and the coordinator's log until the guard is dropped.
    pub dir: TempDir,
}

fn spawn_coordinator(region: &str, port: u16, dir: &Path, participants: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("coordinator.log"))
        .expect("coordinator log");
    Command::new(yidi_bin())
        .args(["coordinator", "--insecure", "--region", region])
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--participants-file")
        .arg(participants)
        // The background loop retries what waits on an unreachable participant.
        .args(["--run-interval-seconds", "1", "--call-timeout-ms", "2000"])
        .env_remove("YIDI_COORDINATOR_CONFIG")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log handle"))
        .stderr(log)
        .spawn()
        .expect("spawn yidi coordinator")
}

impl CoordinatorProcess {
    /// Starts `yidi coordinator --region REGION` on `port` over `participants` and waits
    /// until it answers ListRounds.
    pub fn start(region: &str, port: u16, participants: &Path) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let child = spawn_coordinator(region, port, dir.path(), participants);
        let mut c = Self {
            child,
            region: region.to_owned(),
            port,
            participants: participants.to_path_buf(),
            url: format!("http://127.0.0.1:{port}"),
            dir,
        };
        c.wait_ready(Duration::from_secs(30));
        c
    }

    /// Kills the coordinator with SIGKILL and starts it again on the same port and
    /// store, waiting until it answers.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child =
            spawn_coordinator(&self.region, self.port, self.dir.path(), &self.participants);
        self.wait_ready(Duration::from_secs(30));
    }

    fn wait_ready(&mut self, within: Duration) {
        use yidi_common::proto::{
            ListRoundsRequest, coordinator_service_client::CoordinatorServiceClient,
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "yidi coordinator exited before answering ({:?}):\n{}",
                    status.code(),
                    self.log()
                );
            }
            let url = self.url.clone();
            let answered = rt.block_on(async move {
                let mut client = CoordinatorServiceClient::connect(url).await.ok()?;
                client.list_rounds(ListRoundsRequest {}).await.ok()
            });
            if answered.is_some() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "yidi coordinator did not answer within {within:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// What the coordinator has logged so far.
    #[must_use]
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("coordinator.log")).unwrap_or_default()
    }
}

impl Drop for CoordinatorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "---- yidi coordinator {} log ----\n{}",
                self.region,
                self.log()
            );
        }
    }
}
