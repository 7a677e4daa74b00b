//! `deploy/local/run.sh` end to end with the test's `yidi` binary: it makes the
//! certificates, starts the coordinator and the three city nodes of deploy/local on
//! their fixed ports (7100-7103, metrics 9100-9103; no other test uses them), loads the
//! sample data, and a second run changes nothing; `run.sh stop` stops everything. In
//! between, the runnable blocks of README.md and the docs run on it as written
//! (doc_run.rs: README's data loop, docs/integrator.md's hospital walk-through with the
//! amounts it shows, docs/clearing.md's round, docs/security.md's certificate issued,
//! used and revoked).
//! The working directory is a temporary one holding a link to the repository's
//! deploy/, so yidi-data/ is written there and not in the checkout.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use serde_json::Value;
use yidi_tests::process::{Run, workspace_root, yidi_bin, yidi_command};

const REGIONS: [&str; 3] = ["330100", "330200", "330300"];

fn script() -> PathBuf {
    workspace_root().join("deploy/local/run.sh")
}

fn run_script(root: &Path, args: &[&str]) -> Run {
    let mut cmd = Command::new("bash");
    // Only the script's own variables: a YIDI_* of the environment running the tests
    // (YIDI_NODE, YIDI_COORDINATOR…) would change what the nodes or the CLI do.
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("YIDI") {
            cmd.env_remove(&name);
        }
    }
    let out = cmd
        .arg(script())
        .args(args)
        .env("YIDI", yidi_bin())
        .env("YIDI_LOCAL_ROOT", root)
        .current_dir(root)
        .stdin(Stdio::null())
        .output()
        .expect("run bash deploy/local/run.sh");
    Run::from_output(args, out)
}

/// Stops the federation when the test ends, also when it panics.
struct Stop<'a>(&'a Path);

impl Drop for Stop<'_> {
    fn drop(&mut self) {
        let _ = run_script(self.0, &["stop"]);
    }
}

/// `yidi admin --json` at a region's node as its operator.
fn admin_json(root: &Path, region: &str, args: &[&str]) -> Value {
    let port = 7100 + region[3..4].parse::<u16>().expect("city digit");
    let certs = root.join("yidi-data/certs");
    let out = yidi_command()
        .current_dir(root)
        .arg("admin")
        .arg("--node")
        .arg(format!("https://127.0.0.1:{port}"))
        .arg("--ca")
        .arg(certs.join("ca/ca.crt"))
        .arg("--cert")
        .arg(certs.join(format!("operators/operator-{region}-admin.crt")))
        .arg("--key")
        .arg(certs.join(format!("operators/operator-{region}-admin.key")))
        .args(args)
        .arg("--json")
        .output()
        .expect("run yidi admin");
    let run = Run::from_output(args, out).expect_code(0);
    serde_json::from_str(&run.stdout).expect("JSON answer")
}

fn policy_versions(root: &Path, region: &str) -> Vec<(String, u64)> {
    admin_json(root, region, &["policy", "list"])["policies"]
        .as_array()
        .expect("policies")
        .iter()
        .map(|p| {
            (
                p["insurance_type"].as_str().unwrap_or_default().to_owned(),
                p["version"].as_u64().unwrap_or_default(),
            )
        })
        .collect()
}

#[test]
fn run_sh_starts_loads_reruns_unchanged_and_stops() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let root = tmp.path();
    std::os::unix::fs::symlink(workspace_root().join("deploy"), root.join("deploy"))
        .expect("link deploy/");
    let _stop = Stop(root);

    let first = run_script(root, &[]).expect_code(0);
    for r in REGIONS {
        let institutions = std::fs::read_to_string(
            workspace_root().join(format!("deploy/sample/{r}/institutions.csv")),
        )
        .expect("institutions.csv")
        .lines()
        .count()
            - 1;
        for line in [
            format!("{r} persons:      320 inserted, 0 updated, 0 unchanged, 0 rejected"),
            format!("{r} catalogue:    92 inserted, 0 updated, 0 unchanged, 0 rejected"),
            format!(
                "{r} institutions: {institutions} inserted, 0 updated, 0 unchanged, 0 rejected"
            ),
            format!("{r} policies:     employee published version 1; resident published version 1"),
        ] {
            assert!(
                first.stdout.lines().any(|l| l == line),
                "no line {line:?} in:\n{}",
                first.stdout
            );
        }
    }
    assert!(first.stdout.lines().count() < 40, "{}", first.stdout);
    for region in ["330000", "330100", "330200", "330300"] {
        let log = std::fs::read_to_string(root.join(format!("yidi-data/local/logs/{region}.log")))
            .expect("server log");
        assert!(log.contains("metrics serving"), "{region}:\n{log}");
    }

    // The docs' runnable blocks, as a reader of a fresh clone would type them.
    crate::doc_run::link_release_binary(root);
    let aside = tempfile::tempdir().expect("temp dir");
    let ran = crate::doc_run::run_docs(root, aside.path());
    assert!(ran.iter().all(|(_, n)| *n > 0), "{ran:?}");

    // Again: the servers are left running, and nothing is written.
    let second = run_script(root, &[]).expect_code(0);
    for name in ["330000", "330100", "330200", "330300"] {
        assert!(
            second
                .stdout
                .contains(&format!("{name} already running (pid ")),
            "{}",
            second.stdout
        );
    }
    for r in REGIONS {
        for line in [
            format!("{r} persons:      0 inserted, 0 updated, 0 unchanged, 0 rejected"),
            format!("{r} catalogue:    0 inserted, 0 updated, 0 unchanged, 0 rejected"),
            format!(
                "{r} policies:     employee unchanged, version 1; resident unchanged, version 1"
            ),
        ] {
            assert!(
                second.stdout.lines().any(|l| l.starts_with(&line)),
                "no line {line:?} in:\n{}",
                second.stdout
            );
        }
        assert!(
            second
                .stdout
                .lines()
                .any(|l| l.starts_with(&format!("{r} institutions: 0 inserted, 0 updated, "))),
            "{}",
            second.stdout
        );
        assert_eq!(
            policy_versions(root, r),
            vec![("employee".to_owned(), 1), ("resident".to_owned(), 1)]
        );
        assert_eq!(
            admin_json(root, r, &["info"])["persons"].as_u64(),
            Some(320)
        );
    }

    let stopped = run_script(root, &["stop"]).expect_code(0);
    for name in ["330000", "330100", "330200", "330300"] {
        assert!(
            stopped.stdout.contains(&format!("stopped {name} (pid ")),
            "{}",
            stopped.stdout
        );
        assert!(!root.join(format!("yidi-data/local/{name}.pid")).exists());
    }
    let again = run_script(root, &["stop"]).expect_code(0);
    assert!(
        again.stdout.starts_with("nothing was running"),
        "{}",
        again.stdout
    );
}

/// Without YIDI and without a release build the script says what to build and starts
/// nothing.
#[test]
fn run_sh_without_a_binary_says_to_build_it() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let mut cmd = Command::new("bash");
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("YIDI") {
            cmd.env_remove(&name);
        }
    }
    let out = cmd
        .arg(script())
        .env("YIDI_LOCAL_ROOT", tmp.path())
        .stdin(Stdio::null())
        .output()
        .expect("run bash");
    let run = Run::from_output(&[], out).expect_code(2);
    assert!(
        run.stderr
            .contains("target/release/yidi not found: run `cargo build --release` first"),
        "{}",
        run.stderr
    );
    assert!(!tmp.path().join("yidi-data").exists());
}
