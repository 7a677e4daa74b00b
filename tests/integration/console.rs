//! The web console in a real browser: headless Chromium driven over WebDriver
//! (chromedriver, started by the test on a free port) against a federation like
//! `yidi demo` — three cities serving mutual TLS with claims between them and a
//! record only one side has, and the coordinator serving the clearing desk.
//!
//! The clearing desk: refused without a link, with an expired link and with a used
//! one; signed in with a link that `yidi clearing console-login` prints; a round opened,
//! run to DISPUTED, the disputed claim found by its id, the dispute resolved, every
//! transfer recorded with its bank reference, the round SETTLED with Σ net = 0.00 on
//! the page; a form without its CSRF token refused. The agency's console: its main
//! page and a settlement's drill-down.
//!
//! Screenshots (PNG) of every page go to `target/tmp/console-screenshots/`. Without
//! chromedriver the tests print why and pass — unless CI is set, where they fail.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use fantoccini::{Client, ClientBuilder, Locator};
use yidi_common::proto::{HospitalLevel as Hl, InstitutionKind as Ik};
use yidi_node::identity::Role;
use yidi_tests::{
    fixtures::{
        Desk, billed_visit, filed_employee, inst, institution, publish_policies, standard_items,
    },
    harness::{Federation, TestCoordinator},
    pki::{self, Pki},
    process::{free_port, yidi_bin},
};

const HZ: &str = "330100";
const NB: &str = "330200";
const WZ: &str = "330300";

/// Where the screenshots go.
fn shots_dir() -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    std::fs::create_dir_all(&d).expect("screenshot dir");
    d
}

/// chromedriver, stopped when dropped.
struct Driver {
    child: Child,
    port: u16,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts chromedriver, or says why not: `None` when it is not installed and CI is not
/// set (the caller skips); a panic when CI is set.
fn chromedriver() -> Option<Driver> {
    let found = Command::new("chromedriver")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
        assert!(
            !ci,
            "CI is set but chromedriver is not installed (apt-get install chromium chromium-driver; .ci/run does it)"
        );
        eprintln!(
            "SKIPPED: chromedriver is not installed; install the Debian packages chromium and chromium-driver to run the console's browser tests"
        );
        return None;
    }
    let port = free_port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    Some(Driver { child, port })
}

/// A headless Chromium session. The federation's CA is a test CA the browser does not
/// know, so certificate errors are ignored; the browser presents no client
/// certificate and signs in with links.
async fn browser(driver: &Driver) -> Client {
    let mut caps = serde_json::Map::new();
    let mut opts = serde_json::json!({
        "args": [
            "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--ignore-certificate-errors", "--window-size=1280,1700", "--lang=en-US"
        ]
    });
    if Path::new("/usr/bin/chromium").exists() {
        opts["binary"] = "/usr/bin/chromium".into();
    }
    caps.insert("goog:chromeOptions".into(), opts);
    caps.insert("acceptInsecureCerts".into(), true.into());
    let url = format!("http://127.0.0.1:{}", driver.port);
    // chromedriver answers once it listens: poll its port rather than sleep a guess.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps.clone())
            .connect(&url)
            .await
        {
            Ok(c) => return c,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("chromedriver at {url} gave no session: {e}"),
        }
    }
}

async fn shot(c: &Client, name: &str) {
    let png = c.screenshot().await.expect("screenshot");
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    std::fs::write(shots_dir().join(format!("{name}.png")), png).expect("write screenshot");
}

/// The text of the element `css`. A page in progress reloads itself, which can make
/// an element found a moment ago stale: then it is looked up again.
async fn text(c: &Client, css: &str) -> String {
    let mut tries = 0;
    loop {
        tries += 1;
        match c.find(Locator::Css(css)).await {
            Ok(e) => match e.text().await {
                Ok(t) => return t,
                Err(_) if tries < 5 => {}
                Err(e) => panic!("{css}: {e}"),
            },
            Err(_) if tries < 3 => tokio::time::sleep(Duration::from_millis(200)).await,
            Err(e) => panic!("{css}: {e}\n{}", c.source().await.unwrap_or_default()),
        }
    }
}

/// Fills `field` of the form `form` (CSS), ticks its confirmation and submits it.
async fn submit(c: &Client, form: &str, fields: &[(&str, &str)]) {
    let f = c.find(Locator::Css(form)).await.expect(form);
    for (name, value) in fields {
        let input = f
            .find(Locator::Css(&format!("input[name={name}]")))
            .await
            .expect(name);
        input.send_keys(value).await.expect("type");
    }
    if let Ok(b) = f.find(Locator::Css("input[name=confirm]")).await {
        b.click().await.expect("confirm");
    }
    let page = c.find(Locator::Css("html")).await.expect("page");
    f.find(Locator::Css("button[type=submit]"))
        .await
        .expect("submit button")
        .click()
        .await
        .expect("submit");
    left(&page).await;
}

/// Waits until the browser has left the page `page` is the root of (a click on a
/// button returns before the next page is there).
async fn left(page: &fantoccini::elements::Element) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while page.tag_name().await.is_ok() {
        assert!(Instant::now() < deadline, "the form led nowhere");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reloads the round's page until its state is `want` (the page reloads itself too).
async fn wait_state(c: &Client, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = text(c, "#round-state").await;
        if now == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "round stuck in {now}, want {want}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        c.refresh().await.expect("reload");
    }
}

/// Clicks the round's "run" form and returns the flash message.
async fn run_round(c: &Client) -> String {
    submit(c, "#run-round", &[]).await;
    text(c, "#flash").await
}

/// The demo-like federation: three cities with mutual TLS, each with its hospitals and
/// catalogue; a Hangzhou and a Wenzhou employee treated in Ningbo, a Ningbo employee in
/// Hangzhou.
/// Ningbo's console serves on `nb_console`, a listener held in `prebound`.
async fn federation(
    root: &Path,
    pki: &Pki,
    nb_console: u16,
    prebound: &yidi_node::prebound::Prebound,
) -> Federation {
    let mut fed = pki::federation(root, pki, &[HZ, NB, WZ], |r, c| {
        if r == NB {
            c.console_listen = Some(([127, 0, 0, 1], nb_console).into());
            c.prebound = prebound.clone();
        }
    })
    .await;
    let (hz_h, nb_h, nb_h1, wz_h) = (inst::HZ_H3, inst::NB_H3, inst::NB_H1, inst::WZ_H2);
    for n in &fed.nodes {
        publish_policies(n).await;
    }
    institution(fed.node(HZ), hz_h, Ik::Hospital, Hl::HospitalLevel3).await;
    institution(fed.node(NB), nb_h, Ik::Hospital, Hl::HospitalLevel3).await;
    institution(fed.node(NB), nb_h1, Ik::Hospital, Hl::HospitalLevel1).await;
    institution(fed.node(WZ), wz_h, Ik::Hospital, Hl::HospitalLevel2).await;
    standard_items(fed.node(HZ), "HZ").await;
    standard_items(fed.node(NB), "NB").await;
    standard_items(fed.node(WZ), "WZ").await;
    let hz_p = filed_employee(fed.node(HZ), "1980-01-01", 1, "1000.00", NB).await;
    let wz_p = filed_employee(fed.node(WZ), "1981-02-02", 2, "0.00", NB).await;
    // Hospital calls present the hospital's certificate.
    let nb = fed
        .nodes
        .iter()
        .position(|n| n.region.as_str() == NB)
        .expect("NB");
    let admin_tls = fed.nodes[nb].client_tls.clone();
    fed.nodes[nb].client_tls = Some(pki.client(&pki::institution(NB, nb_h)));
    let mut desk = Desk::at(fed.node(NB), nb_h).await;
    fed.nodes[nb].client_tls = admin_tls;
    for (tag, id, home, amount) in [("c1", &hz_p, HZ, "2000.00"), ("c2", &wz_p, WZ, "800.00")] {
        let v = billed_visit(&mut desk, tag, id, home, amount).await;
        desk.settle(&format!("settle-{tag}"), &v.visit_id, false)
            .await
            .expect("settle");
    }
    yidi_tests::fixtures::wait_outbox_drained(fed.node(NB), Duration::from_secs(20)).await;
    fed
}

/// A record Ningbo has as receivable from Hangzhou and Hangzhou has not: the round's
/// dispute.
fn seed_dispute(node_dir: &Path, period: &str) {
    let db = rusqlite::Connection::open(node_dir.join("node.db")).expect("node.db");
    db.busy_timeout(Duration::from_secs(5))
        .expect("busy timeout");
    db.execute(
        "INSERT INTO ledger (entry_id, side, counterparty, period, kind, claim_id, amount_fen, created_at) \
         VALUES ('330200-S-SEEDED', 'receivable', ?1, ?2, 'claim', '330200-S-SEEDED', 4321, '2026-05-03T00:00:00+08:00')",
        [HZ, period],
    )
    .expect("seed the dispute");
}

/// `yidi <tool> console-login` (`clearing` for the coordinator's console, `admin` for
/// a node's) for the operator `op`.
fn login_link(tool: &str, op: &pki::Party, console: &str, valid_for: &str) -> String {
    let out = Command::new(yidi_bin())
        .args([
            tool,
            "console-login",
            "--console-url",
            console,
            "--valid-for",
            valid_for,
        ])
        .arg("--cert")
        .arg(&op.cert)
        .arg("--key")
        .arg(&op.key)
        .output()
        .expect("run yidi clearing console-login");
    assert!(
        out.status.success(),
        "console-login failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let link = String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_owned();
    assert!(
        link.starts_with(&format!("{console}/login?t=v1.")),
        "{link}"
    );
    link
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clearing_desk_in_a_browser() {
    let Some(driver) = chromedriver() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(&dir.path().join("pki"));
    // Both consoles' listeners are held from here until their daemons serve on them.
    let prebound = yidi_node::prebound::Prebound::default();
    let nb_console = prebound.loopback().port();
    let fed = federation(dir.path(), &pki, nb_console, &prebound).await;
    let period = yidi_common::period::Period::of(chrono::Utc::now()).to_string();
    seed_dispute(&fed.node(NB).data_dir, &period);

    let console_port = prebound.loopback().port();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let coord = TestCoordinator::start_with(
        listener,
        dir.path().join("coordinator"),
        fed.peers_file.clone(),
        |c| {
            c.security = pki.server_security(&pki::coordinator("330000")).0;
            c.console_listen = Some(([127, 0, 0, 1], console_port).into());
            c.prebound = prebound.clone();
        },
    )
    .await;
    let console = format!("https://127.0.0.1:{console_port}");
    let op = pki.issue(&pki::operator("330000", Role::Clearing));
    let c = browser(&driver).await;

    // No link: the sign-in page, nothing else. The console may take a moment to bind.
    let deadline = Instant::now() + Duration::from_secs(20);
    while c.goto(&format!("{console}/")).await.is_err()
        || c.title().await.unwrap_or_default().is_empty()
    {
        assert!(Instant::now() < deadline, "console never answered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(text(&c, "#title").await, "Sign in");
    assert!(c.find(Locator::Css("#rounds")).await.is_err());
    shot(&c, "desk-sign-in").await;

    // An expired link (signed with the operator's key, but minutes ago).
    let expired = yidi_node::console::login::sign(
        &std::fs::read(&op.cert).expect("cert"),
        &std::fs::read(&op.key).expect("key"),
        &pki::coordinator("330000"),
        chrono::Utc::now().timestamp() - 600,
        300,
    )
    .expect("sign");
    c.goto(&format!("{console}/login?t={expired}"))
        .await
        .expect("goto");
    assert_eq!(text(&c, "#title").await, "Refused");
    let why = text(&c, "p.error").await;
    assert!(why.contains("expired"), "{why}");
    shot(&c, "desk-expired-link").await;
    c.goto(&format!("{console}/")).await.expect("goto");
    assert_eq!(
        text(&c, "#title").await,
        "Sign in",
        "an expired link opened no session"
    );

    // A good link signs in once.
    let link = login_link("clearing", &op, &console, "120");
    c.goto(&link).await.expect("goto link");
    c.goto(&format!("{console}/")).await.expect("goto");
    assert_eq!(text(&c, "#title").await, "Rounds");
    let who = text(&c, "header .who").await;
    assert!(who.contains("urn:yidi:operator:330000:clearing"), "{who}");

    // Open the round (the current period, early).
    submit(&c, "#open-round", &[("period", &period)]).await;
    let flash = text(&c, "#flash").await;
    // The early box was not ticked by `submit`: the coordinator refuses the current
    // period without it, and the page says so.
    assert!(
        flash.contains("FailedPrecondition") && flash.contains("not over yet"),
        "{flash}"
    );
    c.find(Locator::Css("#open-round input[name=early]"))
        .await
        .expect("early box")
        .click()
        .await
        .expect("tick early");
    submit(&c, "#open-round", &[("period", &period)]).await;
    let flash = text(&c, "#flash").await;
    let round_id = format!("{period}-r1");
    assert!(
        flash.contains(&format!("round {round_id} opened")),
        "{flash}"
    );
    shot(&c, "desk-round-opened").await;

    // Run it: the seeded record makes it DISPUTED.
    run_round(&c).await;
    wait_state(&c, "DISPUTED").await;
    let disputes = text(&c, "#disputes").await;
    assert!(
        disputes.contains("330200-S-SEEDED") && disputes.contains("43.21"),
        "{disputes}"
    );
    shot(&c, "desk-disputed").await;

    // Drill down by claim id.
    let page = c.find(Locator::Css("html")).await.expect("page");
    c.find(Locator::Css("a.claim"))
        .await
        .expect("claim link")
        .click()
        .await
        .expect("click");
    left(&page).await;
    assert_eq!(text(&c, "#claim-id").await, "330200-S-SEEDED");
    let found = text(&c, "#claim-result").await;
    assert!(
        found.contains("Only at the creditor") && found.contains(NB) && found.contains(HZ),
        "{found}"
    );
    shot(&c, "desk-claim-drill-down").await;

    // A form whose CSRF token was tampered with is refused and changes nothing.
    c.goto(&format!("{console}/rounds/{round_id}"))
        .await
        .expect("goto");
    let page = c.find(Locator::Css("html")).await.expect("page");
    c.execute(
        "document.querySelector('#resolve input[name=csrf]').value = 'forged';\
         document.querySelector('#resolve input[name=confirm]').checked = true;\
         document.querySelector('#resolve').submit();",
        vec![],
    )
    .await
    .expect("forge");
    left(&page).await;
    assert_eq!(text(&c, "#title").await, "Refused");
    assert!(text(&c, "p.error").await.contains("CSRF"));
    c.goto(&format!("{console}/rounds/{round_id}"))
        .await
        .expect("goto");
    assert_eq!(text(&c, "#round-state").await, "DISPUTED");

    // Resolve: the seeded record is carried to the next period; the round collects again.
    submit(&c, "#resolve", &[]).await;
    let flash = text(&c, "#flash").await;
    assert!(flash.contains("carried to the next period"), "{flash}");
    for _ in 0..5 {
        if text(&c, "#round-state").await == "CONFIRMED" {
            break;
        }
        run_round(&c).await;
    }
    wait_state(&c, "CONFIRMED").await;
    shot(&c, "desk-statement").await;

    // The statement: net positions as a chart, Σ net = 0.00.
    assert_eq!(text(&c, "#sum-net").await, "0.00");
    let chart = c.find(Locator::Css("svg#net-chart")).await.expect("chart");
    assert_eq!(
        chart
            .find_all(Locator::Css("rect"))
            .await
            .expect("bars")
            .len(),
        3
    );
    let nets = text(&c, "#nets").await;
    // Ningbo is owed both claims' fund shares; nothing of the seeded record remains.
    assert!(nets.contains(NB), "{nets}");

    // Record every instruction's transfer with its bank reference.
    let n = c
        .find_all(Locator::Css("#instructions form.record"))
        .await
        .expect("record forms")
        .len();
    assert!(n >= 2, "{n} instructions");
    // The first form sent twice (a double click, a lost answer): one transfer, and the
    // second answer is the first one's outcome, not "already recorded".
    let urls = c
        .execute(
            "const f = document.querySelector('#instructions form.record');\
             f.querySelector('input[name=reference]').value = arguments[0];\
             f.querySelector('input[name=confirm]').checked = true;\
             const send = () => fetch(f.action, {method: 'POST', body: new URLSearchParams(new FormData(f))});\
             return (async () => { const a = await send(); const b = await send(); return [a.url, b.url, a.status, b.status]; })();",
            vec!["BANK-REF-TWICE".into()],
        )
        .await
        .expect("send a form twice");
    let urls = urls.as_array().expect("answers").clone();
    assert_eq!(urls[0], urls[1], "{urls:?}");
    assert_eq!((urls[2].as_u64(), urls[3].as_u64()), (Some(200), Some(200)));
    c.goto(urls[0].as_str().expect("url")).await.expect("goto");
    let flash = text(&c, "#flash").await;
    assert!(
        flash.contains("recorded with reference BANK-REF-TWICE"),
        "{flash}"
    );
    assert_eq!(
        text(&c, "#transfers")
            .await
            .matches("BANK-REF-TWICE")
            .count(),
        2
    ); // reference and history v1
    for i in 1..n {
        let reference = format!("BANK-REF-{i}");
        submit(
            &c,
            "#instructions form.record",
            &[("reference", &reference)],
        )
        .await;
        let flash = text(&c, "#flash").await;
        assert!(
            flash.contains(&format!("recorded with reference {reference}")),
            "{flash}"
        );
        assert!(text(&c, "#transfers").await.contains(&reference));
    }
    wait_state(&c, "SETTLED").await;
    assert_eq!(text(&c, "#sum-net").await, "0.00");
    shot(&c, "desk-settled").await;

    // Correct a reference: the history keeps the old one.
    submit(
        &c,
        "#transfers form.correct",
        &[
            ("reference", "BANK-REF-FIXED"),
            ("reason", "typo in the bank slip"),
        ],
    )
    .await;
    let flash = text(&c, "#flash").await;
    assert!(flash.contains("BANK-REF-FIXED"), "{flash}");
    let transfers = text(&c, "#transfers").await;
    assert!(transfers.contains("typo in the bank slip"), "{transfers}");

    // The rounds list and the participants.
    c.goto(&format!("{console}/")).await.expect("goto");
    assert!(text(&c, "#rounds").await.contains("SETTLED"));
    shot(&c, "desk-rounds").await;
    c.goto(&format!("{console}/participants"))
        .await
        .expect("goto");
    let parts = text(&c, "#participants").await;
    assert_eq!(parts.matches("Reachable").count(), 4, "{parts}"); // header + 3
    // Every participant's last report is the round just settled.
    assert_eq!(parts.matches(round_id.as_str()).count(), 3, "{parts}");
    shot(&c, "desk-participants").await;
    c.goto(&format!("{console}/?lang=zh")).await.expect("goto");
    assert_eq!(text(&c, "#title").await, "清算轮次");
    shot(&c, "desk-rounds-zh").await;
    c.goto(&format!("{console}/?lang=en")).await.expect("goto");

    // The link is spent: a fresh browser cannot reuse it.
    c.close().await.expect("close");
    let c = browser(&driver).await;
    c.goto(&link).await.expect("goto link again");
    assert_eq!(text(&c, "#title").await, "Refused");
    assert!(text(&c, "p.error").await.contains("already used"));
    shot(&c, "desk-used-link").await;

    // The agency's console at Ningbo, with a link of Ningbo's admin operator; a link
    // of the province's operator is not for it.
    let nb = format!("https://127.0.0.1:{nb_console}");
    let nb_op = pki.issue(&pki::operator(NB, Role::Admin));
    c.goto(&login_link("admin", &nb_op, &nb, "60"))
        .await
        .expect("goto link");
    c.goto(&format!("{nb}/")).await.expect("goto");
    assert_eq!(text(&c, "#title").await, "Overview");
    let days = text(&c, "#days").await;
    assert!(days.contains("700.00"), "{days}"); // the two claims' fund share
    c.find(Locator::Css("svg#settlements-chart"))
        .await
        .expect("chart");
    let peers = text(&c, "#peers").await;
    assert!(peers.contains(HZ) && peers.contains(WZ), "{peers}");
    assert_eq!(text(&c, "#outbox-depth").await, "0");
    shot(&c, "agency-overview").await;

    c.goto(&format!("{nb}/settlements")).await.expect("goto");
    shot(&c, "agency-settlements").await;
    let page = c.find(Locator::Css("html")).await.expect("page");
    let link = c
        .find(Locator::Css("#settlements a.settlement"))
        .await
        .expect("a settlement");
    let id = link.text().await.expect("id");
    link.click().await.expect("click");
    left(&page).await;
    assert_eq!(text(&c, "#title").await, format!("Settlement {id}"));
    let split = text(&c, "#split").await;
    assert!(split.contains("fund_pay_sumamt"), "{split}");
    let trace = text(&c, "#trace").await;
    assert!(
        trace.contains("ledger claim") && trace.contains("receivable"),
        "{trace}"
    );
    shot(&c, "agency-settlement").await;

    c.goto(&format!("{nb}/hospitals")).await.expect("goto");
    let hs = text(&c, "#hospital-statements").await;
    assert!(hs.contains(inst::NB_H3), "{hs}");
    shot(&c, "agency-hospitals").await;
    c.goto(&format!("{nb}/audit?peer_region={HZ}"))
        .await
        .expect("goto");
    assert!(c.find(Locator::Css("#audit")).await.is_ok());
    shot(&c, "agency-audit").await;
    c.goto(&format!("{nb}/login?t={}", link_for_desk(&op)))
        .await
        .expect("goto");
    let why = text(&c, "p.error").await;
    assert!(why.contains("not this console"), "{why}");

    c.close().await.expect("close");
    coord.stop().await;
}

/// A link for the clearing desk, signed now by the province's operator.
fn link_for_desk(op: &pki::Party) -> String {
    yidi_node::console::login::sign(
        &std::fs::read(&op.cert).expect("cert"),
        &std::fs::read(&op.key).expect("key"),
        &pki::coordinator("330000"),
        chrono::Utc::now().timestamp(),
        60,
    )
    .expect("sign")
}

/// Without TLS there is no operator to sign in: `console_listen` with `--insecure` is
/// refused at start, naming the setting, before anything is opened.
#[test]
fn a_console_without_tls_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("node");
    let out = Command::new(yidi_bin())
        .args([
            "node",
            "--region",
            "330100",
            "--insecure",
            "--console-listen",
            "127.0.0.1:1",
        ])
        .arg("--data-dir")
        .arg(&data)
        .output()
        .expect("run yidi node");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("invalid console_listen: the console needs mutual TLS"),
        "{err}"
    );
    assert!(!data.exists(), "no store was created");
}
