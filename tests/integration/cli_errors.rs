//! A new user's first errors, with the real `yidi` binary: a client without
//! certificates against a TLS node, an unreadable certificate file, a config file given
//! to the wrong daemon, `--check-config`, and no backtrace in any of them even with
//! `RUST_BACKTRACE` set. Also the completion script and the manual page.

use std::path::Path;

use yidi_node::identity::Role;
use yidi_tests::{
    harness::TestCoordinator,
    pki::{self, Pki},
    process::{Run, workspace_root, yidi_command},
};

/// `yidi ARGS…` with `RUST_BACKTRACE=1`, as an operator's shell may have it. The nodes
/// serve on the test's runtime, so the blocking wait must not hold up a worker.
fn cli(args: &[&str]) -> Run {
    tokio::task::block_in_place(|| {
        let out = yidi_command()
            .env("RUST_BACKTRACE", "1")
            .env_remove("YIDI_CA")
            .env_remove("YIDI_CERT")
            .env_remove("YIDI_KEY")
            .env_remove("YIDI_CONFIG")
            .env_remove("YIDI_COORDINATOR_CONFIG")
            .args(args)
            .output()
            .expect("run yidi");
        Run::from_output(args, out)
    })
}

#[track_caller]
fn no_backtrace(run: &Run) {
    assert!(
        !run.stderr.contains("backtrace") && !run.stderr.contains("Backtrace"),
        "a backtrace in a user-facing error: {run:?}"
    );
}

/// A plaintext client refused by a TLS server (`server`: "the node at URL"): exit 1,
/// UNAVAILABLE naming the server and the flags that fix it, no backtrace.
#[track_caller]
fn told_tls_is_required(run: &Run, server: &str) {
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(
        run.stderr.contains(&format!(
            "UNAVAILABLE: {server} requires TLS: pass --ca, --cert and --key"
        )),
        "{run:?}"
    );
    no_backtrace(run);
}

/// The certificate, key and CA files of `party`, as `--cert`, `--key` and `--ca` take them.
fn files_of(party: &pki::Party) -> (String, String, String) {
    (
        party.cert.display().to_string(),
        party.key.display().to_string(),
        party.ca.display().to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_without_certificates_is_told_the_node_requires_tls() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ca = Pki::new(&tmp.path().join("pki"));
    let fed = pki::federation(tmp.path(), &ca, &["330100"], |_, _| {}).await;
    let url = fed.node("330100").url();

    for args in [
        vec!["admin", "--node", &url, "info"],
        vec![
            "hospital",
            "--node",
            &url,
            "--institution",
            "H33010001",
            "identify",
            "--id-number",
            "330102199001011234",
        ],
    ] {
        let run = cli(&args);
        told_tls_is_required(&run, &format!("the node at {url}"));
        assert!(!run.stderr.contains("CANCELLED"), "{run:?}");
        assert!(!run.stderr.contains("h2 protocol error"), "{run:?}");
    }

    // With an operator's certificate the same command works (the probe is not in the
    // way of a TLS client).
    let op = ca.issue(&pki::operator("330100", Role::Admin));
    let (c, k, a) = files_of(&op);
    let ok = cli(&[
        "admin", "--node", &url, "--ca", &a, "--cert", &c, "--key", &k, "info",
    ]);
    assert_eq!(ok.code, Some(0), "{ok:?}");
    assert!(ok.stdout.contains("330100"), "{ok:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clearing_without_certificates_is_told_the_coordinator_requires_tls() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ca = Pki::new(&tmp.path().join("pki"));
    let peers = tmp.path().join("peers.toml");
    std::fs::write(&peers, "").expect("peers file");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let (security, _) = ca.server_security(&pki::coordinator("330000"));
    let coord = TestCoordinator::start_with(listener, tmp.path().join("coord"), peers, |c| {
        c.security = security;
    })
    .await;
    let url = format!("http://{}", coord.addr);
    let run = cli(&["clearing", "--coordinator", &url, "status"]);
    told_tls_is_required(&run, &format!("the coordinator at {url}"));

    let op = ca.issue(&pki::operator("330000", Role::Clearing));
    let (c, k, a) = files_of(&op);
    let ok = cli(&[
        "clearing",
        "--coordinator",
        &url,
        "--ca",
        &a,
        "--cert",
        &c,
        "--key",
        &k,
        "status",
    ]);
    assert_eq!(ok.code, Some(0), "{ok:?}");
    coord.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_certificate_is_named_not_the_url() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let missing = tmp.path().join("no-such/operator.crt");
    let key = tmp.path().join("no-such/operator.key");
    let ca = tmp.path().join("ca.crt");
    std::fs::write(&ca, "not read before the certificate fails").expect("write");
    let (m, k, c) = (
        missing.display().to_string(),
        key.display().to_string(),
        ca.display().to_string(),
    );
    let run = cli(&[
        "admin",
        "--node",
        "http://127.0.0.1:7101",
        "--ca",
        &c,
        "--cert",
        &m,
        "--key",
        &k,
        "info",
    ]);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(
        run.stderr
            .contains(&format!("error: cannot read certificate {m} (--cert): ")),
        "{run:?}"
    );
    assert!(!run.stderr.contains("not a valid URL"), "{run:?}");
    no_backtrace(&run);

    let clearing = cli(&[
        "clearing",
        "--coordinator",
        "http://127.0.0.1:7100",
        "--ca",
        &c,
        "--cert",
        &m,
        "--key",
        &k,
        "status",
    ]);
    assert_ne!(clearing.code, Some(0), "{clearing:?}");
    assert!(
        clearing
            .stderr
            .contains(&format!("cannot read certificate {m} (--cert)")),
        "{clearing:?}"
    );
    assert!(!clearing.stderr.contains("not a valid URL"), "{clearing:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_of_the_other_daemon_is_named_as_such() {
    let root = workspace_root();
    let coord = root.join("deploy/local/coordinator.toml");
    let node = root.join("deploy/local/node-330100.toml");
    let (c, n) = (coord.display().to_string(), node.display().to_string());

    let run = cli(&["node", "--config", &c, "--check-config"]);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(
        run.stderr.contains(&format!(
            "{c} is a coordinator config (it sets `participants_file`); start it with `yidi coordinator --config {c}`"
        )),
        "{run:?}"
    );
    no_backtrace(&run);

    let run = cli(&["coordinator", "--config", &n, "--check-config"]);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(
        run.stderr.contains(&format!(
            "{n} is a node config (it sets `name`); start it with `yidi node --config {n}`"
        )),
        "{run:?}"
    );
    no_backtrace(&run);
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write config");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_loads_the_files_and_starts_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let ca = Pki::new(&dir.join("pki"));
    let me = ca.issue(&pki::node("330100"));
    let other = ca.issue(&pki::node("330200"));
    let peers = dir.join("peers.toml");
    write(
        &peers,
        "[[peer]]\nregion = \"330200\"\naddress = \"127.0.0.1:7102\"\n",
    );
    let data = dir.join("data");
    let config = |cert: &Path, key: &Path| {
        format!(
            "region = \"330100\"\nname = \"Hangzhou\"\nlisten = \"127.0.0.1:7101\"\n\
             data_dir = {:?}\npeers_file = {:?}\ntls_cert = {:?}\ntls_key = {:?}\n\
             tls_ca = {:?}\nmetrics_listen = \"127.0.0.1:9101\"\n",
            data.display().to_string(),
            peers.display().to_string(),
            cert.display().to_string(),
            key.display().to_string(),
            me.ca.display().to_string()
        )
    };
    let good = dir.join("node.toml");
    write(&good, &config(&me.cert, &me.key));
    let g = good.display().to_string();
    let run = cli(&["node", "--config", &g, "--check-config"]).expect_code(0);
    assert!(
        run.stdout.starts_with("node config OK: 330100 (Hangzhou)"),
        "{run:?}"
    );
    assert!(
        run.stdout.contains(&format!(
            "mutual TLS as urn:yidi:node:330100 (serial {}",
            me.serial
        )),
        "{run:?}"
    );
    assert!(run.stdout.contains("(1 peers: 330200)"), "{run:?}");
    assert!(
        run.stdout.contains("http://127.0.0.1:9101/metrics"),
        "{run:?}"
    );
    assert!(run.stdout.contains("nhsa gateway    off"), "{run:?}");
    assert!(!data.exists(), "--check-config created the data directory");

    // The NHSA gateway with the provincial signature: named with its URL and paasid.
    let secret = dir.join("tif.secret");
    write(&secret, "s3cret\n");
    let s = secret.display().to_string();
    let run = cli(&[
        "node",
        "--config",
        &g,
        "--nhsa-listen",
        "127.0.0.1:7180",
        "--nhsa-tif-paasid",
        "his01",
        "--nhsa-tif-secret-file",
        &s,
        "--check-config",
    ])
    .expect_code(0);
    assert!(
        run.stdout.contains(
            "nhsa gateway    https://127.0.0.1:7180/fsi/api/rsfComIfsService/callService (x-tif signature of paasid his01 required)"
        ),
        "{run:?}"
    );
    assert!(
        !run.stdout.contains("s3cret"),
        "the secret is never printed: {run:?}"
    );
    // A paasid without its secret: refused, naming the keys.
    let half = dir.join("half.toml");
    write(
        &half,
        &format!("{}nhsa_tif_paasid = \"his01\"\n", config(&me.cert, &me.key)),
    );
    let run = cli(&[
        "node",
        "--config",
        &half.display().to_string(),
        "--check-config",
    ]);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(
        run.stderr
            .contains("set both nhsa_tif_paasid and nhsa_tif_secret_file, or neither"),
        "{run:?}"
    );
    no_backtrace(&run);

    // Another city's certificate: refused, naming why, and still nothing created.
    let wrong = dir.join("wrong.toml");
    write(&wrong, &config(&other.cert, &other.key));
    let run = cli(&[
        "node",
        "--config",
        &wrong.display().to_string(),
        "--check-config",
    ]);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.stderr.contains("330200"), "{run:?}");
    assert!(run.stdout.is_empty(), "{run:?}");
    no_backtrace(&run);

    // A certificate file that is not there: named.
    let gone = dir.join("gone.crt");
    let missing = dir.join("missing.toml");
    write(&missing, &config(&gone, &me.key));
    let run = cli(&[
        "node",
        "--config",
        &missing.display().to_string(),
        "--check-config",
    ]);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(
        run.stderr.contains(&format!(
            "error: invalid tls_cert: cannot read certificate {}: ",
            gone.display()
        )),
        "{run:?}"
    );
    assert!(!data.exists());

    // The coordinator's check, with its metrics address from the file.
    let co = ca.issue(&pki::coordinator("330000"));
    let coord = dir.join("coordinator.toml");
    write(
        &coord,
        &format!(
            "region = \"330000\"\nlisten = \"127.0.0.1:7100\"\ndata_dir = {:?}\n\
             participants_file = {:?}\ntls_cert = {:?}\ntls_key = {:?}\ntls_ca = {:?}\n\
             metrics_listen = \"127.0.0.1:9100\"\n",
            data.display().to_string(),
            peers.display().to_string(),
            co.cert.display().to_string(),
            co.key.display().to_string(),
            co.ca.display().to_string()
        ),
    );
    let run = cli(&[
        "coordinator",
        "--config",
        &coord.display().to_string(),
        "--check-config",
    ])
    .expect_code(0);
    assert!(
        run.stdout.starts_with("coordinator config OK: 330000"),
        "{run:?}"
    );
    assert!(
        run.stdout
            .contains("mutual TLS as urn:yidi:coordinator:330000"),
        "{run:?}"
    );
    assert!(run.stdout.contains("(1 participants: 330200)"), "{run:?}");
    assert!(
        run.stdout.contains("http://127.0.0.1:9100/metrics"),
        "{run:?}"
    );
    assert!(!data.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_and_manual_page() {
    let bash = cli(&["completions", "bash"]).expect_code(0);
    assert!(bash.stdout.contains("_yidi()"), "{bash:?}");
    assert!(bash.stdout.contains("check-config"), "{bash:?}");
    let zsh = cli(&["completions", "zsh"]).expect_code(0);
    assert!(zsh.stdout.starts_with("#compdef yidi"), "{zsh:?}");
    let bad = cli(&["completions", "tcsh"]);
    assert_eq!(bad.code, Some(2), "{bad:?}");

    let man = cli(&["man"]).expect_code(0);
    assert!(man.stdout.starts_with(".ie \\n(.g .ds Aq"), "{man:?}");
    assert!(man.stdout.contains(".TH yidi 1"), "{man:?}");
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("man1");
    cli(&["man", "--dir", &out.display().to_string()]).expect_code(0);
    for page in [
        "yidi.1",
        "yidi-node.1",
        "yidi-coordinator.1",
        "yidi-admin.1",
    ] {
        let text = std::fs::read_to_string(out.join(page)).expect("page written");
        assert!(text.contains(".TH"), "{page}: {text}");
    }
}
