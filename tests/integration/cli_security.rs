//! `yidi certs` and the clients' TLS flags end to end with the real binary: make a CA,
//! issue certificates, start `yidi node` with them, act as its operator over mutual TLS,
//! be refused as another city's operator and without a certificate, revoke a serial and
//! be refused with it, read the audit log.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use yidi_tests::process::{Run, free_port, yidi, yidi_bin, yidi_command};

/// `yidi ARGS…` with the TLS client variables of an operator set.
fn as_party(dir: &Path, stem: &str, args: &[&str]) -> Run {
    let out = yidi_command()
        .env("YIDI_CA", dir.join("ca/ca.crt"))
        .env("YIDI_CERT", dir.join(format!("parties/{stem}.crt")))
        .env("YIDI_KEY", dir.join(format!("parties/{stem}.key")))
        .args(args)
        .output()
        .expect("run yidi");
    Run::from_output(args, out)
}

/// The serial `yidi certs` printed.
fn serial(run: &Run) -> String {
    run.stdout
        .lines()
        .find_map(|l| l.strip_prefix("serial:"))
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|| panic!("no serial printed: {run:?}"))
}

struct Node(Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn certs_issue_serve_refuse_revoke_and_audit() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let d = |p: &str| dir.join(p).display().to_string();

    let ca = yidi(&["certs", "ca", "--out", &d("ca")]);
    assert_eq!(ca.code, Some(0), "{ca:?}");
    let again = yidi(&["certs", "ca", "--out", &d("ca")]);
    assert_ne!(again.code, Some(0), "the CA is never replaced: {again:?}");

    let (ca_dir, out_dir) = (d("ca"), d("parties"));
    let issue = |args: &[&str]| {
        let mut full = vec!["certs"];
        full.extend_from_slice(args);
        full.extend_from_slice(&["--ca", &ca_dir, "--out", &out_dir, "--days", "30"]);
        let run = yidi(&full);
        assert_eq!(run.code, Some(0), "{run:?}");
        run
    };
    issue(&["node", "--region", "330100", "--san", "hz.example"]);
    let op = issue(&["operator", "--region", "330100", "--role", "admin"]);
    issue(&["operator", "--region", "330200", "--role", "admin"]);
    issue(&[
        "hospital",
        "--region",
        "330100",
        "--institution",
        "H33010001",
    ]);
    let bad = yidi(&[
        "certs",
        "operator",
        "--region",
        "330100",
        "--role",
        "root",
        "--ca",
        &d("ca"),
        "--out",
        &d("parties"),
    ]);
    assert_ne!(bad.code, Some(0), "{bad:?}");

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for f in [
            "ca/ca.key",
            "parties/node-330100.key",
            "parties/operator-330100-admin.key",
        ] {
            let mode = std::fs::metadata(dir.join(f))
                .expect("key")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
        let mode = std::fs::metadata(dir.join("parties"))
            .expect("dir")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
    }
    let show = yidi(&["certs", "show", &d("parties/node-330100.crt")]);
    assert!(show.stdout.contains("urn:yidi:node:330100"), "{show:?}");

    // The node, with mutual TLS from flags.
    let port = free_port();
    let log = std::fs::File::create(dir.join("node.log")).expect("log");
    let child = Command::new(yidi_bin())
        .args(["node", "--region", "330100", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--tls-cert")
        .arg(dir.join("parties/node-330100.crt"))
        .arg("--tls-key")
        .arg(dir.join("parties/node-330100.key"))
        .arg("--tls-ca")
        .arg(dir.join("ca/ca.crt"))
        .arg("--revoked-file")
        .arg(dir.join("ca/revoked.txt"))
        .env_remove("YIDI_CONFIG")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("spawn yidi node");
    let _node = Node(child);
    let url = format!("https://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let info = as_party(
            dir,
            "operator-330100-admin",
            &["admin", "--node", &url, "info"],
        );
        if info.code == Some(0) {
            assert!(info.stdout.contains("330100"), "{info:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node did not answer: {info:?}\n{}",
            std::fs::read_to_string(dir.join("node.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Another city's operator, and a hospital, at this node's AdminService.
    for stem in ["operator-330200-admin", "institution-330100-H33010001"] {
        let r = as_party(dir, stem, &["admin", "--node", &url, "info"]);
        assert_eq!(r.code, Some(1), "{r:?}");
        assert!(r.stderr.contains("PERMISSION_DENIED"), "{stem}: {r:?}");
    }
    // No certificate at all.
    let r = yidi(&["admin", "--node", &url, "info"]);
    assert_eq!(r.code, Some(1), "{r:?}");

    // The audit log is empty and readable as JSON.
    let audit = as_party(
        dir,
        "operator-330100-admin",
        &["admin", "--node", &url, "--json", "audit"],
    );
    assert_eq!(audit.code, Some(0), "{audit:?}");
    let v: serde_json::Value = serde_json::from_str(&audit.stdout).expect("json");
    assert_eq!(v["entries"].as_array().map(Vec::len), Some(0), "{v}");

    // Revoke the operator: the node re-reads the list within seconds.
    let rev = yidi(&[
        "certs",
        "revoke",
        "--ca",
        &d("ca"),
        &serial(&op),
        "--reason",
        "test",
    ]);
    assert_eq!(rev.code, Some(0), "{rev:?}");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = as_party(
            dir,
            "operator-330100-admin",
            &["admin", "--node", &url, "info"],
        );
        if r.code == Some(1) && r.stderr.contains("UNAUTHENTICATED") {
            assert!(r.stderr.contains("certificate revoked"), "{r:?}");
            break;
        }
        assert!(Instant::now() < deadline, "revocation not applied: {r:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}
