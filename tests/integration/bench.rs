//! The project's benchmark, `yidi bench`, run as the real binary on a small federation
//! of in-process nodes: every acknowledged settlement must verify at both nodes, the
//! JSON report must hold the figures the performance report quotes (floor, unloaded
//! ratio, ceilings (bare calls and writes), pre-settle phases, settle throughput, CPU
//! per operation by thread group, node-to-node calls per settlement), and they must agree
//! with the run's own counts.

use serde_json::Value;
use yidi_tests::process::yidi_command;

fn number(v: &Value, path: &[&str]) -> f64 {
    let mut at = v;
    for key in path {
        at = &at[*key];
    }
    at.as_f64()
        .unwrap_or_else(|| panic!("{} is not a number in {v:#}", path.join(".")))
}

#[test]
fn a_small_settle_only_run_verifies_and_reports_its_figures() {
    let dir = tempfile::tempdir().expect("temp dir");
    let json = dir.path().join("bench.json");
    let out = yidi_command()
        .args([
            "bench",
            "--persons",
            "200",
            "--settle-only",
            "--count",
            "48",
            "--concurrency",
            "6",
            "--presettle-seconds",
            "1",
            "--presettle-visits",
            "12",
            "--ceiling-seconds",
            "1",
            "--unloaded",
            "5",
            "--verify-persons",
            "12",
            "--node-threads",
            "1",
            "--client-threads",
            "1",
            "--data-dir",
        ])
        .arg(dir.path().join("stores"))
        .arg("--json")
        .arg(&json)
        .env("RUST_LOG", "error")
        .output()
        .expect("run yidi bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "yidi bench failed\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("verification"), "{stdout}");
    assert!(stdout.trim_end().ends_with("OK"), "{stdout}");

    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("bench JSON written"))
            .expect("bench JSON parses");

    // Every acknowledgement found at both nodes; the sampled persons' accumulators exact.
    let v = &report["verification"];
    assert_eq!(v["ok"], Value::Bool(true), "{v:#}");
    assert_eq!(v["acknowledged"], 48, "{v:#}");
    assert_eq!(v["present_at_treatment"], 48, "{v:#}");
    assert_eq!(v["committed_at_home"], 48, "{v:#}");
    assert_eq!(v["persons_checked"], v["persons_delta_ok"], "{v:#}");
    assert_eq!(v["persons_store_checked"], v["persons_store_ok"], "{v:#}");
    assert_eq!(v["problems"], Value::Array(vec![]), "{v:#}");

    // The load: exactly the asked count, no errors, rates consistent with the counts.
    let load = &report["load"];
    assert_eq!(load["settled"], 48, "{load:#}");
    assert_eq!(load["settle_errors"], 0, "{load:#}");
    assert_eq!(load["settle"]["count"], 48, "{load:#}");
    let kinds = load["settled_by_kind"]
        .as_object()
        .expect("settled_by_kind");
    assert_eq!(
        kinds.values().filter_map(Value::as_u64).sum::<u64>(),
        48,
        "{load:#}"
    );
    let (secs, rate) = (
        number(load, &["seconds"]),
        number(load, &["settled_per_second"]),
    );
    assert!((rate * secs - 48.0).abs() < 0.5, "{load:#}");
    // Only whole 5-s windows count towards the lowest sustained rate: a run of a few
    // tenths of a second has none, and none may end after the run did.
    let windows = load["windows_per_second"].as_array().expect("windows");
    assert!(
        windows.len() as f64 <= (secs / 5.0).floor(),
        "{} windows in {secs} s: {load:#}",
        windows.len()
    );

    // Node-to-node calls per settlement, from the nodes' own counters: every
    // cross-region settlement committed its claim at the home node at least once (more
    // when the home node refused a stale price), alone in a CommitClaim or together
    // with others bound for the same home node in a CommitClaims, with no call failing
    // but refused single commits (a refusal inside a batch is an outcome, not a failure).
    let cross = number(load, &["settle_cross_region", "count"]);
    assert!(cross > 0.0, "{load:#}");
    let calls = |m: &str| load["peer_calls_per_settlement"][m].as_f64().unwrap_or(0.0) * 48.0;
    let (singles, batches) = (calls("CommitClaim"), calls("CommitClaims"));
    let refused = number(load, &["failed_peer_calls_per_settlement", "CommitClaim"]) * 48.0;
    if batches == 0.0 {
        assert!(
            (singles - refused - cross).abs() < 0.01,
            "{singles} commits, {refused} refused, {cross} cross-region: {load:#}"
        );
    } else {
        // The rest of the cross-region settlements were committed inside batches.
        assert!(
            singles - refused <= cross + 0.01,
            "{singles} single commits, {batches} batches, {refused} refused, {cross} cross-region: {load:#}"
        );
    }
    let failed: f64 = load["failed_peer_calls_per_settlement"]
        .as_object()
        .expect("failed peer calls")
        .iter()
        .filter(|(m, _)| *m != "CommitClaim")
        .filter_map(|(_, v)| v.as_f64())
        .sum();
    assert_eq!(failed, 0.0, "{load:#}");

    // The nodes' group commits, from their store counters: a transaction runs at least
    // one request, and a durable commit takes time.
    assert!(
        number(load, &["store_requests_per_transaction"]) >= 1.0,
        "{load:#}"
    );
    assert!(number(load, &["store_ms_per_commit"]) > 0.0, "{load:#}");

    // CPU per settlement, and by thread group summing to it.
    let cpu = number(load, &["cpu_ms_per_settlement"]);
    assert!(cpu > 0.0, "{load:#}");
    let groups = load["cpu_ms_per_settlement_by_threads"]
        .as_object()
        .expect("CPU by thread group");
    for g in [
        "writers",
        "node runtimes and read pools",
        "load generator",
        "other",
    ] {
        assert!(groups.contains_key(g), "no {g} in {groups:?}");
    }
    let sum: f64 = groups.values().filter_map(Value::as_f64).sum();
    assert!((sum - cpu).abs() < 1e-6, "{sum} vs {cpu}: {groups:?}");

    // Floor and unloaded ratio measured in the same run.
    let floor = number(&report["floor"], &["two_rtt_two_commits_ms"]);
    assert!(floor > 0.0, "{:#}", report["floor"]);
    let unloaded = &report["unloaded"];
    assert_eq!(unloaded["settle"]["count"], 5, "{unloaded:#}");
    let ratio = number(unloaded, &["ratio_to_floor"]);
    let p50 = number(unloaded, &["settle", "p50_ms"]);
    assert!((ratio - p50 / floor).abs() < 0.01, "{unloaded:#}");

    // The ceilings: bare calls and bare writes without errors, their rates consistent
    // with their counts, writes grouped into transactions, and the least CPU of a
    // cross-region settlement (2 calls, 3 writes) with the rate it allows.
    let c = &report["ceilings"];
    let mut cpu_of = Vec::new();
    for phase in ["bare_calls", "bare_writes"] {
        let p = &c[phase];
        let rate = number(p, &["per_second"]);
        assert!(rate > 0.0, "{p:#}");
        assert_eq!(p["errors"], serde_json::json!({}), "{p:#}");
        let (n, secs) = (number(p, &["latency", "count"]), number(p, &["seconds"]));
        assert!((rate * secs - n).abs() < 0.5, "{p:#}");
        cpu_of.push(number(p, &["cpu_ms_per_op"]));
    }
    assert!(
        number(&c["bare_writes"], &["requests_per_transaction"]) >= 1.0,
        "{c:#}"
    );
    let least = number(c, &["cross_region_settle_min_cpu_ms"]);
    assert!(
        (least - (2.0 * cpu_of[0] + 3.0 * cpu_of[1])).abs() < 1e-9,
        "{c:#}"
    );
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let most = number(c, &["cross_region_settle_max_per_second"]);
    assert!((most - cores as f64 * 1e3 / least).abs() < 1e-6, "{c:#}");

    // Both pre-settle phases ran without errors, each also reported as its share of the
    // bare call rate.
    let bare_rate = number(&c["bare_calls"], &["per_second"]);
    for phase in ["local", "cross_region"] {
        let p = &report["presettle"][phase];
        let rate = number(p, &["per_second"]);
        assert!(rate > 0.0, "{p:#}");
        assert_eq!(p["errors"], serde_json::json!({}), "{p:#}");
        assert!(p["cpu_ms_per_op_by_threads"].is_object(), "{p:#}");
        let share = number(p, &["share_of_bare_call_rate"]);
        assert!((share - rate / bare_rate).abs() < 1e-9, "{p:#}");
    }
}

/// `--via nhsa`: the same number of cross-region settlements through gRPC and through
/// the nodes' NHSA gateways, every one settled, both CPU figures and their ratio in the
/// report.
#[test]
fn via_nhsa_settles_through_the_gateway_beside_grpc_and_reports_the_cpu_ratio() {
    let dir = tempfile::tempdir().expect("temp dir");
    let json = dir.path().join("bench.json");
    let out = yidi_command()
        .args([
            "bench",
            "--persons",
            "200",
            "--count",
            "24",
            "--concurrency",
            "4",
            "--presettle-seconds",
            "0",
            "--ceiling-seconds",
            "0",
            "--unloaded",
            "0",
            "--verify-persons",
            "8",
            "--node-threads",
            "1",
            "--client-threads",
            "1",
            "--via",
            "nhsa",
            "--data-dir",
        ])
        .arg(dir.path().join("stores"))
        .arg("--json")
        .arg(&json)
        .env("RUST_LOG", "error")
        .output()
        .expect("run yidi bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "yidi bench failed\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("NHSA / gRPC CPU per settlement:"),
        "{stdout}"
    );
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("bench JSON written"))
            .expect("bench JSON parses");
    let via = &report["via_nhsa"];
    for t in ["grpc", "nhsa"] {
        assert_eq!(via[t]["settled"], 24, "{via:#}");
        assert_eq!(via[t]["failed"], 0, "{via:#}");
        assert!(number(via, &[t, "cpu_ms_per_settlement"]) > 0.0, "{via:#}");
    }
    let ratio = number(via, &["ratio"]);
    let expected = number(via, &["nhsa", "cpu_ms_per_settlement"])
        / number(via, &["grpc", "cpu_ms_per_settlement"]);
    assert!((ratio - expected).abs() < 1e-9, "{via:#}");
}
