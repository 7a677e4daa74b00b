//! The global flags the command-line clients share (node/cli/src/cli/flags.rs), with the
//! real `yidi` binary: `yidi admin`, `yidi hospital` and `yidi clearing` each take
//! `--json`, `--request-id`, `--timeout` and the TLS files the same way — before or after
//! the subcommand, with the same answer — and refuse a bad value the same way. Only the
//! deadline's default and bound differ by client (admin: from 1 s, also
//! YIDI_ADMIN_TIMEOUT; hospital: at most 600 s; clearing: at most 3600 s).

use std::process::Command;

use serde_json::Value;
use yidi_common::proto::{HospitalLevel as Hl, InstitutionKind as Ik};
use yidi_tests::{
    fixtures::institution,
    harness::{Federation, TestCoordinator},
    process::{Run, yidi_command},
};

const HZ: &str = "330100";
const INST: &str = "H33010001";

/// `yidi` with no TLS files, deadline or server address in the environment; `env` adds
/// the variables a case sets itself.
fn cli(args: &[String], env: &[(&str, &str)]) -> Run {
    let mut cmd: Command = yidi_command();
    for var in [
        "YIDI_CA",
        "YIDI_CERT",
        "YIDI_KEY",
        "YIDI_TLS_SERVER_NAME",
        "YIDI_ADMIN_TIMEOUT",
        "YIDI_INSTITUTION",
        "YIDI_COORDINATOR",
    ] {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied());
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    // The servers run on this test's runtime: the blocking wait must not hold a worker.
    tokio::task::block_in_place(|| {
        Run::from_output(&refs, cmd.args(&refs).output().expect("run yidi"))
    })
}

/// One client: the command and its server flag, and a read-only call that answers
/// without any data.
struct Client {
    name: &'static str,
    prefix: Vec<String>,
    call: Vec<String>,
}

impl Client {
    fn all(node: &str, coordinator: &str) -> [Client; 3] {
        let s = |v: &[&str]| v.iter().map(|a| (*a).to_owned()).collect::<Vec<_>>();
        [
            Client {
                name: "admin",
                prefix: s(&["admin", "--node", node]),
                call: s(&["outbox"]),
            },
            Client {
                name: "hospital",
                prefix: s(&["hospital", "--node", node, "--institution", INST]),
                call: s(&["list", "--from", "2026-01-01"]),
            },
            Client {
                name: "clearing",
                prefix: s(&["clearing", "--coordinator", coordinator]),
                call: s(&["status"]),
            },
        ]
    }

    /// `yidi <client> FLAGS… <call>`: the shared flags before the subcommand.
    fn before(&self, flags: &[&str]) -> Vec<String> {
        let mut v = self.prefix.clone();
        v.extend(flags.iter().map(|f| (*f).to_owned()));
        v.extend(self.call.iter().cloned());
        v
    }

    /// `yidi <client> <call> FLAGS…`: the shared flags after the subcommand.
    fn after(&self, flags: &[&str]) -> Vec<String> {
        let mut v = self.prefix.clone();
        v.extend(self.call.iter().cloned());
        v.extend(flags.iter().map(|f| (*f).to_owned()));
        v
    }
}

#[track_caller]
fn json(run: &Run) -> Value {
    assert_eq!(run.code, Some(0), "{run:?}");
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("no JSON ({e}): {run:?}"))
}

/// A usage error: exit 2, clap's message naming the flag and the refused value.
#[track_caller]
fn usage_error(run: &Run, needle: &str) {
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(run.stderr.contains(needle), "expected {needle:?}: {run:?}");
    assert!(run.stdout.is_empty(), "{run:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_client_takes_the_shared_flags_before_or_after_its_subcommand() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fed = Federation::start(dir.path(), &[HZ]).await;
    let node = fed.node(HZ);
    institution(node, INST, Ik::Hospital, Hl::HospitalLevel3).await;
    let coordinator =
        TestCoordinator::start(dir.path().join("coordinator"), fed.peers_file.clone()).await;
    let coordinator_url = format!("http://{}", coordinator.addr);

    for client in Client::all(&node.url(), &coordinator_url) {
        let flags = ["--json", "--timeout", "7", "--request-id", "flags-1"];
        let before = cli(&client.before(&flags), &[]);
        let after = cli(&client.after(&flags), &[]);
        assert_eq!(json(&before), json(&after), "{}", client.name);
        assert!(
            before.stderr.is_empty() && after.stderr.is_empty(),
            "{}: {before:?} {after:?}",
            client.name
        );

        // Without --json the same call prints text, not JSON.
        let text = cli(&client.after(&["--timeout", "7"]), &[]);
        assert_eq!(text.code, Some(0), "{text:?}");
        assert!(
            serde_json::from_str::<Value>(&text.stdout).is_err(),
            "{}: {text:?}",
            client.name
        );
    }

    // The deadline's bound is each client's own: a value one client refuses, another
    // accepts and answers with.
    let [admin, hospital, clearing] = Client::all(&node.url(), &coordinator_url);
    json(&cli(&admin.after(&["--json", "--timeout", "3601"]), &[]));
    json(&cli(&clearing.after(&["--json", "--timeout", "3600"]), &[]));
    json(&cli(&clearing.after(&["--json", "--timeout", "601"]), &[]));
    json(&cli(&hospital.after(&["--json", "--timeout", "600"]), &[]));
    usage_error(
        &cli(&hospital.after(&["--json", "--timeout", "601"]), &[]),
        "invalid value '601' for '--timeout <TIMEOUT>': 601 is not in 1..=600",
    );
    usage_error(
        &cli(&clearing.after(&["--json", "--timeout", "3601"]), &[]),
        "invalid value '3601' for '--timeout <TIMEOUT>': 3601 is not in 1..=3600",
    );
    // YIDI_ADMIN_TIMEOUT is the admin client's alone.
    usage_error(
        &cli(&admin.after(&["--json"]), &[("YIDI_ADMIN_TIMEOUT", "0")]),
        "invalid value '0' for '--timeout <TIMEOUT>'",
    );
    json(&cli(
        &hospital.after(&["--json"]),
        &[("YIDI_ADMIN_TIMEOUT", "0")],
    ));
    coordinator.stop().await;
}

#[test]
fn every_client_refuses_a_bad_shared_flag_the_same_way() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = dir.path().join("ca.crt");
    std::fs::write(&ca, "not read: the flags are refused first").expect("write");
    let ca = ca.display().to_string();
    // Nothing listens there: every refusal below comes before any connection.
    let nowhere = "http://127.0.0.1:9";
    let run = |args: Vec<String>, env: &[(&str, &str)]| {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut cmd = yidi_command();
        for var in ["YIDI_CA", "YIDI_CERT", "YIDI_KEY", "YIDI_ADMIN_TIMEOUT"] {
            cmd.env_remove(var);
        }
        cmd.envs(env.iter().copied());
        Run::from_output(&refs, cmd.args(&refs).output().expect("run yidi"))
    };
    for client in Client::all(nowhere, nowhere) {
        for args in [
            client.before(&["--timeout", "0"]),
            client.after(&["--timeout", "0"]),
        ] {
            usage_error(
                &run(args, &[]),
                "invalid value '0' for '--timeout <TIMEOUT>': 0 is not in 1..",
            );
        }
        // A CA without a certificate and key, as a flag on either side of the
        // subcommand or from the environment: the same refusal from every client.
        for (args, env) in [
            (client.before(&["--ca", &ca]), vec![]),
            (client.after(&["--ca", &ca]), vec![]),
            (client.after(&[]), vec![("YIDI_CA", ca.as_str())]),
            (client.after(&["--cert", &ca]), vec![]),
        ] {
            let r = run(args, &env);
            assert_eq!(r.code, Some(1), "{}: {r:?}", client.name);
            assert!(
                r.stderr.contains(
                    "mutual TLS needs all three of --ca, --cert and --key (or YIDI_CA, YIDI_CERT, YIDI_KEY)"
                ),
                "{}: {r:?}",
                client.name
            );
            assert!(r.stdout.is_empty(), "{}: {r:?}", client.name);
        }
        usage_error(
            &run(client.after(&["--json=yes"]), &[]),
            "unexpected value 'yes' for '--json' found",
        );
    }
}
