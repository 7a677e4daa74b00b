//! The newcomer's path: the README's `yidi demo`, run as the real binary on free
//! loopback ports in a temporary directory, must end with a confirmed clearing statement
//! whose net positions sum to zero and a ledger at every node that matches it — and a
//! second run over the same directory must reuse it. Also: a node's Prometheus metrics
//! over HTTP count a settlement, its latency and the peer call it made.

use std::{
    collections::BTreeMap,
    io::Read,
    net::TcpListener,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use rust_decimal::Decimal;
use yidi_common::{
    money,
    proto::{
        self, FilingType as Ft, HospitalLevel as Hl, InstitutionKind as Ik, InsuranceType as It,
        PersonType as Pt,
    },
};
use yidi_tests::{
    fixtures::{filing, id_number, institution, item, peer_calls, person, publish_policies},
    harness::Federation,
    process::yidi_bin,
};

const REGIONS: [&str; 3] = ["330100", "330200", "330300"];

/// A base port with `n` consecutive free ports on 127.0.0.1 (checked by binding them),
/// none within `avoid` (blocks as (base, length)). Blocks are drawn from 20000–32599,
/// below Linux's ephemeral range (32768 up), so neither other tests' listeners on port
/// 0 nor their outgoing connections can take a port between the check and the demo's
/// own bind.
fn free_block(n: u16, avoid: &[(u16, u16)]) -> u16 {
    let mut seed = u64::from(std::process::id()).wrapping_mul(7919)
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::from(d.subsec_nanos()));
    for _ in 0..500 {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        let base = 20_000 + u16::try_from((seed >> 33) % u64::from(12_600 - n)).unwrap_or(0);
        if avoid.iter().any(|&(a, len)| base < a + len && a < base + n) {
            continue;
        }
        let held: Vec<_> = (0..n)
            .map_while(|k| TcpListener::bind(("127.0.0.1", base + k)).ok())
            .collect();
        if held.len() == usize::from(n) {
            return base;
        }
    }
    panic!("no block of {n} free loopback ports");
}

/// The ports `yidi demo` takes from its base port: the nodes at +0…+3, the consoles
/// at +80…+83 and the NHSA gateways at +91…+93.
const DEMO_PORTS: u16 = 94;

/// Runs the demo to completion (killing it after `limit`), returning exit code and
/// stdout; stderr is appended to the panic message on failure.
fn run_demo(args: &[String], limit: Duration) -> (Option<i32>, String, String) {
    let mut child = Command::new(yidi_bin())
        .arg("demo")
        .args(args)
        .env("RUST_LOG", "warn")
        // English unless a test asks (`--lang`): the locale would decide otherwise.
        .env_remove("YIDI_LANG")
        .env_remove("LC_ALL")
        .env("LANG", "C.UTF-8")
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn yidi demo");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + limit;
    let code = loop {
        if let Some(status) = child.try_wait().expect("wait for demo") {
            break status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (
        code,
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    )
}

fn m(s: &str) -> Decimal {
    money::parse(s, "amount", money::Sign::Any).unwrap()
}

/// The `CHECK ledger R net=X statement=Y ok` lines: region → (ledger net, statement net).
fn ledger_checks(stdout: &str) -> BTreeMap<String, (Decimal, Decimal)> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("CHECK ledger "))
        .map(|l| {
            assert!(l.ends_with(" ok"), "failed check: {l}");
            let mut parts = l.split_whitespace();
            let region = parts.next().unwrap().to_owned();
            let net = parts.next().unwrap().strip_prefix("net=").unwrap();
            let st = parts.next().unwrap().strip_prefix("statement=").unwrap();
            (region, (m(net), m(st)))
        })
        .collect()
}

#[test]
fn demo_once_clears_a_confirmed_statement_matching_every_ledger_and_reruns() {
    let dir = tempfile::tempdir().unwrap();
    let base = free_block(DEMO_PORTS, &[]);
    let metrics = free_block(4, &[(base, DEMO_PORTS)]);
    let args: Vec<String> = [
        "--once",
        "--reset",
        "--data-dir",
        dir.path().join("demo").to_str().unwrap(),
        "--base-port",
        &base.to_string(),
        "--metrics-base-port",
        &metrics.to_string(),
        "--persons",
        "300",
        "--settlements",
        "120",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();

    let (code, stdout, stderr) = run_demo(&args, Duration::from_secs(240));
    assert_eq!(
        code,
        Some(0),
        "yidi demo failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let ctx = || format!("\nstdout:\n{stdout}\nstderr:\n{stderr}");

    // A confirmed, settled round: every node confirmed, every transfer recorded.
    let round = stdout
        .lines()
        .find(|l| l.starts_with("CHECK round "))
        .unwrap_or_else(|| panic!("no round check{}", ctx()));
    assert!(
        round.contains("SETTLED confirmed=3/3")
            && round.contains("cleared=3/3")
            && round.ends_with(" ok"),
        "{round}"
    );
    assert!(stdout.contains("Σ net = 0.00"), "{}", ctx());
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("CHECK statement ") && l.ends_with("Σ net = 0.00 ok"))
    );

    // Every node's ledger equals its statement net, and the nets sum to zero.
    let checks = ledger_checks(&stdout);
    assert_eq!(
        checks.keys().map(String::as_str).collect::<Vec<_>>(),
        REGIONS.to_vec(),
        "{}",
        ctx()
    );
    for (region, (ledger, statement)) in &checks {
        assert_eq!(ledger, statement, "ledger of {region}");
    }
    assert_eq!(
        checks.values().map(|(l, _)| *l).sum::<Decimal>(),
        Decimal::ZERO
    );
    assert!(
        checks.values().any(|(l, _)| *l != Decimal::ZERO),
        "a round with nothing to clear proves little{}",
        ctx()
    );
    // The statement's net table agrees with the checks.
    for (region, (ledger, _)) in &checks {
        let row = stdout
            .lines()
            .find(|l| {
                l.starts_with(&format!("│ {region} "))
                    && (l.contains("creditor") || l.contains("debtor") || l.contains("even"))
            })
            .unwrap_or_else(|| panic!("no net row for {region}{}", ctx()));
        assert!(row.contains(&money::format(*ledger)), "{row}");
    }
    // The mix the issue asks for happened, and the metrics saw every settle call.
    for needle in [
        "inpatient",
        "pharmacy",
        "chronic",
        "emergency",
        "cancelled by the institution",
        "冲正",
        "unfiled (temporary)",
        "all checks passed",
    ] {
        assert!(stdout.contains(needle), "missing {needle:?}{}", ctx());
    }
    for r in REGIONS {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(&format!("CHECK metrics {r} ")) && l.ends_with(" ok")),
            "metrics of {r}{}",
            ctx()
        );
    }
    assert!(!stdout.contains("FAILED"), "{}", ctx());

    // A second run reuses the directory: nothing loaded twice, new visits cleared in a
    // second early round of this month (never a round for a month not yet begun), books
    // still matching.
    let rerun: Vec<String> = args.iter().filter(|a| *a != "--reset").cloned().collect();
    let (code, stdout2, stderr2) = run_demo(&rerun, Duration::from_secs(240));
    assert_eq!(
        code,
        Some(0),
        "re-run failed\nstdout:\n{stdout2}\nstderr:\n{stderr2}"
    );
    assert!(stdout2.contains("(run 2,"), "{stdout2}");
    let month = yidi_common::period::Period::of(chrono::Utc::now()).to_string();
    assert!(
        stdout2.contains(&format!(
            "{month} was cleared early by an earlier run; this round clears the "
        )) && stdout2.contains(&format!(
            "clearing: opening another early round for {month} ("
        )),
        "{stdout2}"
    );
    assert!(
        stdout2.contains(&format!("round {month}-r2: SETTLED"))
            && !stdout2.contains("clock is moved on")
            && !stdout2.contains(&format!(
                "round for {}",
                yidi_common::period::Period::of(chrono::Utc::now()).next()
            )),
        "{stdout2}"
    );
    let persons = |out: &str| {
        out.lines()
            .find(|l| l.contains("persons enrolled at the node"))
            .map(str::to_owned)
    };
    assert_eq!(
        persons(&stdout),
        persons(&stdout2),
        "a re-run enrols nobody twice"
    );
    let checks2 = ledger_checks(&stdout2);
    assert_eq!(checks2.len(), 3, "{stdout2}");
    assert!(stdout2.contains("(over 2 rounds)"), "{stdout2}");
    assert!(stdout2.contains("all checks passed"), "{stdout2}");

    // The statement by record kind adds up to the gross amounts (a CHECK of its own),
    // and shows the audit deduction of the first run's round.
    let by_kind = |out: &str| {
        out.lines()
            .find(|l| l.starts_with("CHECK statement ") && l.contains(" by kind: "))
            .map(str::to_owned)
            .unwrap_or_default()
    };
    assert!(
        by_kind(&stdout).contains("claims ")
            && by_kind(&stdout).contains("audit_deductions -")
            && by_kind(&stdout).contains("reserves ")
            && by_kind(&stdout).ends_with(" ok"),
        "{stdout}"
    );
    assert!(by_kind(&stdout2).ends_with(" ok"), "{stdout2}");
    assert!(
        stdout.contains("by record kind, amount (records):") && stdout.contains("audit deductions"),
        "{stdout}"
    );

    // In Chinese for agency staff (a third run: another early round of this month);
    // the CHECK lines stay as they are for scripts.
    let mut zh = rerun.clone();
    zh.extend(["--lang".to_owned(), "zh".to_owned()]);
    let (code, stdout3, stderr3) = run_demo(&zh, Duration::from_secs(240));
    assert_eq!(code, Some(0), "stdout:\n{stdout3}\nstderr:\n{stderr3}");
    for needle in [
        "各节点台账",
        "清算结算单",
        "按记录类型，金额（笔数）：",
        "结算费用",
        "轧差净额：",
        "经省级清算账户 330000 的划款指令",
        "就诊类型",
        "住院",
        "异地（未备案）",
    ] {
        assert!(stdout3.contains(needle), "missing {needle:?}\n{stdout3}");
    }
    for english in [
        "ledgers (台账) of the nodes",
        "gross positions:",
        "visit kind",
    ] {
        assert!(!stdout3.contains(english), "{english:?}\n{stdout3}");
    }
    assert!(
        stdout3.contains(&format!("round {month}-r3: SETTLED"))
            && stdout3.contains("all checks passed"),
        "{stdout3}"
    );
}

#[test]
fn demo_refuses_to_wipe_a_directory_it_did_not_create() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("precious.txt"), "keep me").unwrap();
    let base = free_block(DEMO_PORTS, &[]);
    let (code, _, stderr) = run_demo(
        &[
            "--once".into(),
            "--reset".into(),
            "--no-metrics".into(),
            "--data-dir".into(),
            dir.path().to_str().unwrap().into(),
            "--base-port".into(),
            base.to_string(),
        ],
        Duration::from_secs(60),
    );
    assert_ne!(code, Some(0));
    assert!(
        stderr.contains("was not created by `yidi demo`"),
        "{stderr}"
    );
    assert!(dir.path().join("precious.txt").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_settlements_latency_and_peer_calls() {
    const HZ: &str = "330100";
    const NB: &str = "330200";
    let dir = tempfile::tempdir().unwrap();
    let prebound = yidi_node::prebound::Prebound::default();
    let metrics_addr = prebound.loopback();
    let fed = Federation::start_with(dir.path(), &[HZ, NB], |r, c| {
        if r == NB {
            c.metrics_listen = Some(metrics_addr);
            c.prebound = prebound.clone();
        }
    })
    .await;
    for n in &fed.nodes {
        publish_policies(n).await;
    }
    let nb = fed.node(NB);
    institution(nb, "H33020001", Ik::Hospital, Hl::HospitalLevel3).await;
    item(nb, "NB-A", proto::CatalogueClass::A, "0", "").await;
    let id = person(
        fed.node(HZ),
        &id_number(HZ, "1950-04-02", 11),
        It::Employee,
        Pt::Retired,
        "0.00",
        false,
    )
    .await;
    filing(
        fed.node(HZ),
        &id,
        Ft::ResettledRetiree,
        NB,
        &[],
        "2026-01-01",
    )
    .await;

    let mut h = nb.hospital().await;
    let v = h
        .open_visit(proto::OpenVisitRequest {
            request_id: "m-open".into(),
            institution_code: "H33020001".into(),
            id_number: id.clone(),
            home_region: HZ.into(),
            visit_kind: proto::VisitKind::Outpatient as i32,
            external_visit_no: "M-1".into(),
            admitted_at: String::new(),
            diagnosis_code: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    h.upload_fees(proto::UploadFeesRequest {
        request_id: "m-fees".into(),
        institution_code: "H33020001".into(),
        visit_id: v.visit_id.clone(),
        lines: vec![proto::FeeLine {
            line_no: "1".into(),
            item_code: "NB-A".into(),
            quantity: "1".into(),
            unit_price: "3000.00".into(),
            amount: "3000.00".into(),
            service_date: String::new(),
        }],
    })
    .await
    .unwrap();
    let req = proto::SettleRequest {
        request_id: "m-settle".into(),
        institution_code: "H33020001".into(),
        visit_id: v.visit_id.clone(),
        use_account: false,
    };
    h.pre_settle(req.clone()).await.unwrap();
    let s = h.settle(req).await.unwrap().into_inner();
    assert_eq!(s.state, "settled");
    let missing = h
        .settle(proto::SettleRequest {
            request_id: "m-missing".into(),
            institution_code: "H33020001".into(),
            visit_id: "330200-V-99999999".into(),
            use_account: false,
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);

    let body = yidi_node::metrics::scrape(metrics_addr).await.unwrap();
    for line in [
        r#"yidi_settlements_total{region="330200",op="settle",kind="outpatient",outcome="settled",code="ok"} 1"#,
        r#"yidi_settlements_total{region="330200",op="pre_settle",kind="outpatient",outcome="presettled",code="ok"} 1"#,
        r#"yidi_settlements_total{region="330200",op="settle",kind="unknown",outcome="error",code="not_found"} 1"#,
        r#"yidi_settle_duration_seconds_count{region="330200",op="settle"} 2"#,
        r#"yidi_outbox_depth{region="330200"} 0"#,
    ] {
        assert!(body.contains(line), "missing {line}\n{body}");
    }
    // Hangzhou was asked for eligibility when the visit was opened and at the
    // PreSettle; the settlement priced with the PreSettle's answer and committed the
    // claim there.
    assert_eq!(peer_calls(&body, HZ, "CheckEligibility", None), 2, "{body}");
    assert_eq!(peer_calls(&body, HZ, "CommitClaim", None), 1, "{body}");
    // The error series exist from the start (at 0) and none moved.
    assert!(
        body.contains("yidi_peer_call_errors_total{")
            && body
                .lines()
                .filter(|l| l.starts_with("yidi_peer_call_errors_total{"))
                .all(|l| l.ends_with(" 0")),
        "{body}"
    );
}

/// `yidi demo --national --once`: two provinces and the national level; exits 0 with
/// every CHECK line ok — Σ net = 0 at both levels, each province's cities summing to its
/// national net, every node's ledger equal to its rows of both statements.
#[test]
fn national_demo_once_clears_both_levels_and_every_check_holds() {
    let dir = tempfile::tempdir().unwrap();
    let base = free_block(7, &[]);
    let args: Vec<String> = [
        "--national",
        "--once",
        "--data-dir",
        dir.path().join("demo").to_str().unwrap(),
        "--base-port",
        &base.to_string(),
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let (code, stdout, stderr) = run_demo(&args, Duration::from_secs(240));
    assert_eq!(
        code,
        Some(0),
        "yidi demo --national failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    // No node has a peers file: every one found all four cities in the directory.
    assert!(
        stdout.contains("every node found all four cities in the federation directory"),
        "{stdout}"
    );
    let national = dir.path().join("demo").join("national");
    for city in ["330100", "330200", "320100", "320500"] {
        assert!(!national.join(city).join("peers.toml").exists());
        assert!(national.join(city).join("directory-cache.json").exists());
    }
    assert!(!national.join("peers.toml").exists());
    let checks: Vec<&str> = stdout.lines().filter(|l| l.starts_with("CHECK ")).collect();
    // 2 per provincial round, 2 for the national round, per province 1 + 2 per city.
    assert_eq!(checks.len(), 4 + 2 + 2 * 5, "{stdout}");
    assert!(checks.iter().all(|l| l.ends_with(" ok")), "{stdout}");
    for expected in [
        "CHECK national round ",
        "CHECK 330000 cities' cross-province nets sum to its national net ",
        "CHECK 320000 cities' cross-province nets sum to its national net ",
        "CHECK ledger 320500 cross-province net=",
    ] {
        assert!(
            checks.iter().any(|l| l.starts_with(expected)),
            "{expected}\n{stdout}"
        );
    }
    // The two provinces' national nets cancel out to the fen.
    let net = |province: &str| {
        let line = checks
            .iter()
            .find(|l| l.starts_with(&format!("CHECK {province} cities'")))
            .unwrap();
        let at = line.find("national net ").unwrap() + "national net ".len();
        m(line[at..].split_whitespace().next().unwrap())
    };
    assert_eq!(net("330000") + net("320000"), Decimal::ZERO, "{stdout}");
}
