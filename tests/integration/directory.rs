//! The federation directory (docs/national.md) end to end, with mutual TLS and signed
//! documents: two provinces, each coordinator publishing its cities, a national relay
//! between them, and nodes that have no peers file at all. A Zhejiang patient is
//! treated in Jiangsu through the directory; a city added to a province's directory file
//! is picked up by the other province's nodes without a restart; a node restarted while
//! its coordinator is down routes from its cache; and older, unsigned and forged
//! documents are refused with the one in force kept (and counted in the metrics).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use tokio::net::TcpListener;
use yidi_common::proto::{
    self, FilingType as Ft, HospitalLevel as Hl, InstitutionKind as Ik, InsuranceType as It,
    PersonType as Pt, SignedDirectory, VisitKind as Vk,
};
use yidi_node::{
    directory::{
        self, Book, CityLine, DirectoryFile, Document, Entry, Follower, NationalLine, Offered,
        ProvinceLine, Publisher, Refusal, Verifier,
    },
    identity::{Identity, Role},
};
use yidi_tests::{
    fixtures::{
        Desk, VISIT_OPENED as ADMITTED, account_balance, fee_line as line, filing, id_number,
        institution, person, publish_policies, standard_items,
    },
    harness::{TestCoordinator, TestNode, write_peers},
    pki::{self, Pki},
};

const HZ: &str = "330100";
const NB: &str = "330200";
const NJ: &str = "320100";
/// Nanjing's level-3 hospital.
const NJ_H3: &str = "H32010001";
/// The national coordinator's code: the provinces' `[national]` lines name no TLS name,
/// so they verify the relay under the default, `coordinator-000000.yidi`.
const NATIONAL: &str = "000000";

fn url(addr: std::net::SocketAddr) -> String {
    format!("https://{addr}")
}

async fn listener() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").await.expect("bind")
}

fn city(region: &str, name: &str, address: &str) -> CityLine {
    CityLine {
        region: region.into(),
        name: name.into(),
        address: address.into(),
        province: None,
        identity: None,
        nhsa: None,
        console: None,
    }
}

fn province_file(coordinator: &str, national: &str, cities: Vec<CityLine>) -> String {
    DirectoryFile {
        coordinator: Some(coordinator.into()),
        national: Some(NationalLine {
            address: national.into(),
            server_name: None,
        }),
        city: cities,
        province: Vec::new(),
    }
    .to_toml()
}

/// Rewrites a file with a modification time later than any before it, whatever the
/// file system's time resolution: a reload is not missed.
fn rewrite(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(std::time::SystemTime::now() + Duration::from_secs(5))
        .unwrap();
}

/// The versions (and cities) a party has cached, read from its cache file.
fn cached(data_dir: &Path) -> BTreeMap<String, (u64, Vec<String>)> {
    let Ok(text) = std::fs::read_to_string(data_dir.join(directory::CACHE_FILE)) else {
        return BTreeMap::new();
    };
    let v: serde_json::Value = serde_json::from_str(&text).expect("cache is JSON");
    let mut out = BTreeMap::new();
    for d in v["directories"].as_array().expect("directories") {
        use base64::Engine;
        let doc = base64::engine::general_purpose::STANDARD
            .decode(d["document"].as_str().unwrap())
            .unwrap();
        let doc: Document = serde_json::from_slice(&doc).unwrap();
        out.insert(
            doc.province.clone(),
            (
                doc.version,
                doc.entries.iter().map(|e| e.region.clone()).collect(),
            ),
        );
    }
    out
}

/// Waits (polling the cache file the background refresh writes) until `pred` holds.
async fn until_cached(
    data_dir: &Path,
    what: &str,
    pred: impl Fn(&BTreeMap<String, (u64, Vec<String>)>) -> bool,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let c = cached(data_dir);
        if pred(&c) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not in {}'s directory cache within 30 s; it holds {c:?}",
            data_dir.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The national relay: the DirectoryService with no province of its own, following
/// every province's coordinator ([[province]] lines).
struct National {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl National {
    async fn start(pki: &Pki, l: TcpListener, file: PathBuf, data_dir: PathBuf) -> Self {
        std::fs::create_dir_all(&data_dir).unwrap();
        let addr = l.local_addr().unwrap();
        let (security, _) = pki.server_security(&pki::coordinator(NATIONAL));
        let tls = yidi_node::tls::start(
            &security,
            addr,
            pki::coordinator(NATIONAL),
            "national directory",
        )
        .await
        .expect("national TLS");
        let follower = Arc::new(Follower::new(
            Vec::new(),
            Some(data_dir.join(directory::CACHE_FILE)),
            tls.clone(),
            Duration::from_secs(2),
            None,
            None,
        ));
        let publisher = Arc::new(Publisher::new(
            None,
            file,
            &data_dir,
            tls.clone(),
            Arc::clone(&follower),
        ));
        publisher.reload().expect("national directory file");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (bg_stop, bg) = tokio::sync::watch::channel(false);
        let router = tonic::transport::Server::builder().add_service(
            proto::directory_service_server::DirectoryServiceServer::new(
                directory::DirectorySvc::new(Arc::clone(&follower)),
            ),
        );
        let serve = yidi_node::tls::serve_router(router, l, tls, async move {
            let _ = stopped.await;
            let _ = bg_stop.send(true);
        });
        let keep = directory::keep_current(
            publisher,
            follower,
            Duration::from_millis(100),
            Duration::from_millis(200),
            async move {
                let mut bg = bg;
                let _ = bg.wait_for(|s| *s).await;
            },
        );
        let task = tokio::spawn(async move {
            let (served, ()) = tokio::join!(serve, keep);
            served.expect("national relay served");
        });
        Self {
            stop: Some(stop),
            task,
        }
    }

    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = self.task.await;
    }
}

async fn coordinator(
    pki: &Pki,
    l: TcpListener,
    province: &str,
    root: &Path,
    file: &Path,
) -> TestCoordinator {
    let participants = root.join(format!("participants-{province}.toml"));
    write_peers(&participants, &[]);
    let (security, _) = pki.server_security(&pki::coordinator(province));
    let region = yidi_common::region::RegionCode::parse(province, "province").unwrap();
    let file = file.to_path_buf();
    TestCoordinator::start_with(l, root.join(province), participants, move |c| {
        c.region = region;
        c.security = security;
        c.directory_file = Some(file);
        c.directory_refresh = Duration::from_millis(200);
    })
    .await
}

/// A node following `coordinator`'s directory, with no peers file; its helper
/// clients present its admin operator's certificate.
async fn node(
    pki: &Pki,
    l: TcpListener,
    region: &str,
    data_dir: PathBuf,
    coordinator: &str,
) -> TestNode {
    let (security, _) = pki.server_security(&pki::node(region));
    let coordinator = coordinator.to_owned();
    let mut n = TestNode::start_on(l, region, data_dir, move |c| {
        c.security = security;
        c.peers_file = None;
        c.directory = vec![coordinator];
        c.directory_refresh = Duration::from_millis(200);
    })
    .await;
    n.client_tls = Some(pki.client(&pki::operator(region, Role::Admin)));
    n
}

/// A hospital desk at `node`, presenting the institution's own certificate.
fn desk(pki: &Pki, node: &TestNode, inst: &str) -> Desk {
    let ch = pki::channel(
        node,
        pki.client(&pki::institution(node.region.as_str(), inst)),
    );
    Desk {
        client: proto::hospital_service_client::HospitalServiceClient::new(ch),
        inst: inst.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zhejiang_patient_settles_in_jiangsu_through_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let pki = Pki::new(&root.join("pki"));
    let (hz_l, nb_l, nj_l) = (listener().await, listener().await, listener().await);
    let (zj_l, js_l, nat_l) = (listener().await, listener().await, listener().await);
    let (hz_url, nb_url, nj_url) = (
        url(hz_l.local_addr().unwrap()),
        url(nb_l.local_addr().unwrap()),
        url(nj_l.local_addr().unwrap()),
    );
    let (zj_url, js_url, nat_url) = (
        url(zj_l.local_addr().unwrap()),
        url(js_l.local_addr().unwrap()),
        url(nat_l.local_addr().unwrap()),
    );

    // Each province's file lists only its own cities; the national level's only the
    // provinces. No node has a peers file.
    let zj_file = root.join("directory-330000.toml");
    let js_file = root.join("directory-320000.toml");
    let nat_file = root.join("directory-national.toml");
    rewrite(
        &zj_file,
        &province_file(&zj_url, &nat_url, vec![city(HZ, "Hangzhou", &hz_url)]),
    );
    rewrite(
        &js_file,
        &province_file(&js_url, &nat_url, vec![city(NJ, "Nanjing", &nj_url)]),
    );
    rewrite(
        &nat_file,
        &DirectoryFile {
            province: vec![
                ProvinceLine {
                    province: "330000".into(),
                    name: "Zhejiang".into(),
                    coordinator: zj_url.clone(),
                },
                ProvinceLine {
                    province: "320000".into(),
                    name: "Jiangsu".into(),
                    coordinator: js_url.clone(),
                },
            ],
            ..DirectoryFile::default()
        }
        .to_toml(),
    );
    let national = National::start(&pki, nat_l, nat_file, root.join("national")).await;
    let zj = coordinator(&pki, zj_l, "330000", root, &zj_file).await;
    let js = coordinator(&pki, js_l, "320000", root, &js_file).await;
    let hz = node(&pki, hz_l, HZ, root.join(HZ), &zj_url).await;
    let nj = node(&pki, nj_l, NJ, root.join(NJ), &js_url).await;

    // Nanjing learns Hangzhou from its own coordinator, which relays Zhejiang's
    // document from the national level (and the other way round).
    until_cached(&nj.data_dir, "Zhejiang at Nanjing", |c| {
        c.get("330000").is_some_and(|(_, e)| e == &[HZ])
    })
    .await;
    until_cached(&hz.data_dir, "Jiangsu at Hangzhou", |c| {
        c.get("320000").is_some_and(|(_, e)| e == &[NJ])
    })
    .await;
    let zj_version = cached(&nj.data_dir)["330000"].0;

    // Any node of the country may read a coordinator's directory; a hospital may not.
    let ask = |id: Identity| {
        let ch = yidi_node::tls::endpoint(&zj_url, Some(pki.client(&id)))
            .unwrap()
            .connect_lazy();
        async move {
            proto::directory_service_client::DirectoryServiceClient::new(ch)
                .get_directory(proto::GetDirectoryRequest::default())
                .await
        }
    };
    let served = ask(pki::node(NJ)).await.unwrap().into_inner();
    assert_eq!(
        served
            .current
            .iter()
            .map(|p| (p.province.as_str(), p.version))
            .collect::<Vec<_>>(),
        [
            ("320000", cached(&nj.data_dir)["320000"].0),
            ("330000", zj_version)
        ]
    );
    // The operator's view, every document verified against the CA by the CLI.
    let op = pki.issue(&pki::operator("330000", Role::Clearing));
    let args: Vec<String> = [
        "directory",
        "show",
        "--from",
        zj_url.as_str(),
        "--ca",
        &op.ca.display().to_string(),
        "--cert",
        &op.cert.display().to_string(),
        "--key",
        &op.key.display().to_string(),
        "--tls-server-name",
        "coordinator-330000.yidi",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let shown = tokio::task::spawn_blocking(move || {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        yidi_tests::process::yidi(&a)
    })
    .await
    .unwrap()
    .expect_code(0);
    for line in [
        format!("province 330000  version {zj_version}  "),
        format!("  {HZ}  Hangzhou     {hz_url}"),
        format!("  {NJ}  Nanjing      {nj_url}"),
    ] {
        assert!(
            shown.stdout.contains(&line),
            "{line:?} not in\n{}",
            shown.stdout
        );
    }
    assert!(!shown.stdout.contains("REFUSED"), "{}", shown.stdout);
    let denied = ask(pki::institution(HZ, "H33010001")).await.unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    assert_eq!(
        denied.message(),
        "DirectoryService is for the federation's nodes, coordinators and operators; the caller is an institution"
    );

    publish_policies(&hz).await;
    institution(&nj, NJ_H3, Ik::Hospital, Hl::HospitalLevel3).await;
    standard_items(&nj, "NJ").await;
    let id = person(
        &hz,
        &id_number(HZ, "1980-05-06", 1),
        It::Employee,
        Pt::InService,
        "1000.00",
        false,
    )
    .await;
    filing(&hz, &id, Ft::LongTermResident, NJ, &[], "2026-01-01").await;

    // The Hangzhou outpatient visit of settlement_flows, in Nanjing: 850.00 = class C
    // 50.00 + class-B first self-pay 10% × 200.00 = 20.00 + in scope 780.00, all of it
    // to Hangzhou's annual deductible of 1000.00; the account pays the 850.00.
    let mut d = desk(&pki, &nj, NJ_H3);
    let v = d
        .open("x-ov-1", &id, HZ, Vk::Outpatient, ADMITTED)
        .await
        .unwrap();
    d.fees(
        "x-fees-1",
        &v.visit_id,
        vec![
            line("1", "NJ-A", "1", "600.00", "600.00"),
            line("2", "NJ-B", "2", "100.00", "200.00"),
            line("3", "NJ-C", "1", "50.00", "50.00"),
        ],
    )
    .await
    .unwrap();
    let s = d.settle("x-settle-1", &v.visit_id, true).await.unwrap();
    let split = s.split.clone().unwrap();
    assert_eq!(
        (
            s.state.as_str(),
            s.home_region.as_str(),
            s.treatment_region.as_str(),
            split.medfee_sumamt.as_str(),
            split.act_pay_dedc.as_str(),
            split.fund_pay_sumamt.as_str(),
            split.acct_pay.as_str(),
            split.psn_cash_pay.as_str(),
        ),
        (
            "settled", HZ, NJ, "850.00", "780.00", "0.00", "850.00", "0.00"
        )
    );
    assert_eq!(account_balance(&hz, &id).await, "150.00");
    // Exactly once: the same request again is answered from the record, nothing moves.
    let again = d.settle("x-settle-1", &v.visit_id, true).await.unwrap();
    assert_eq!(again.settlement_id, s.settlement_id);
    assert_eq!(account_balance(&hz, &id).await, "150.00");

    // Ningbo joins Zhejiang: one line in Zhejiang's directory file, no restart of
    // anyone. Jiangsu's node sees it through the national level.
    let nb = node(&pki, nb_l, NB, root.join(NB), &zj_url).await;
    rewrite(
        &zj_file,
        &province_file(
            &zj_url,
            &nat_url,
            vec![city(HZ, "Hangzhou", &hz_url), city(NB, "Ningbo", &nb_url)],
        ),
    );
    until_cached(&nj.data_dir, "Ningbo at Nanjing", |c| {
        c.get("330000")
            .is_some_and(|(v, e)| *v > zj_version && e == &[HZ, NB])
    })
    .await;
    publish_policies(&nb).await;
    let nb_id = person(
        &nb,
        &id_number(NB, "1970-03-04", 7),
        It::Employee,
        Pt::Retired,
        "0.00",
        false,
    )
    .await;
    filing(&nb, &nb_id, Ft::ResettledRetiree, NJ, &[], "2026-01-01").await;
    // Opening the visit asks Ningbo for the person's eligibility: routed by the
    // directory entry that arrived without a restart.
    let v_nb = d
        .open("x-ov-nb", &nb_id, NB, Vk::Outpatient, ADMITTED)
        .await
        .unwrap();
    assert_eq!(v_nb.home_region, NB);

    // Jiangsu's coordinator goes down and Nanjing restarts: it routes from its cache.
    js.stop().await;
    let nj_dir = nj.stop().await;
    let nj_l = TcpListener::bind(nj_url.trim_start_matches("https://"))
        .await
        .expect("rebind Nanjing's address");
    let nj = node(&pki, nj_l, NJ, nj_dir, &js_url).await;
    let mut d = desk(&pki, &nj, NJ_H3);
    let v2 = d
        .open("x-ov-2", &id, HZ, Vk::Outpatient, ADMITTED)
        .await
        .unwrap();
    d.fees(
        "x-fees-2",
        &v2.visit_id,
        vec![line("1", "NJ-C", "1", "40.00", "40.00")],
    )
    .await
    .unwrap();
    // Class C only: self-paid; the account's 150.00 pays 40.00 of it.
    let s2 = d.settle("x-settle-2", &v2.visit_id, true).await.unwrap();
    assert_eq!(
        (s2.state.as_str(), s2.split.unwrap().acct_pay.as_str()),
        ("settled", "40.00")
    );
    assert_eq!(account_balance(&hz, &id).await, "110.00");

    drop(nb);
    zj.stop().await;
    national.stop().await;
}

// ------------------------------------------------------------------ refusals

fn doc(province: &str, version: u64, entries: Vec<Entry>) -> Document {
    Document {
        province: province.into(),
        version,
        issued_at: "2026-03-01T00:00:00+08:00".into(),
        coordinator: String::new(),
        entries,
    }
}

fn hz_entry(address: &str) -> Entry {
    Entry::for_city(
        yidi_common::region::RegionCode::parse_city(HZ, "r").unwrap(),
        "Hangzhou",
        address,
    )
}

fn signed_by(pki: &Pki, id: &Identity, d: &Document) -> SignedDirectory {
    let p = pki.issue(id);
    directory::sign(
        d,
        &std::fs::read(&p.cert).unwrap(),
        &std::fs::read(&p.key).unwrap(),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn older_unsigned_and_forged_directories_are_refused_and_the_one_in_force_kept() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"));
    let verifier = Verifier::from_files(&pki.ca.join("ca.crt"), None).unwrap();
    let zj = pki::coordinator("330000");
    let good = doc("330000", 5, vec![hz_entry("https://10.0.0.1:7101")]);
    let mut book = Book::default();
    assert_eq!(
        book.offer(signed_by(&pki, &zj, &good), &verifier),
        Ok(Offered::Accepted {
            province: "330000".into(),
            version: 5
        })
    );
    let in_force = || {
        let mut b = Book::default();
        b.offer(signed_by(&pki, &zj, &good), &verifier).unwrap();
        b
    };
    let hijack = doc("330000", 6, vec![hz_entry("https://203.0.113.9:7101")]);

    // An older version, properly signed.
    let older = signed_by(&pki, &zj, &doc("330000", 4, vec![]));
    assert_eq!(
        book.offer(older, &verifier),
        Err(Refusal::Older {
            province: "330000".into(),
            offered: 4,
            held: 5
        })
    );
    // Unsigned.
    let mut unsigned = signed_by(&pki, &zj, &hijack);
    unsigned.signature.clear();
    assert_eq!(
        book.offer(unsigned, &verifier),
        Err(Refusal::Unsigned("330000".into()))
    );
    // The document changed after signing (Hangzhou sent elsewhere).
    let mut tampered = signed_by(&pki, &zj, &good);
    let text = String::from_utf8(tampered.document.clone()).unwrap();
    tampered.document = text
        .replace("10.0.0.1", "203.0.113.9")
        .replace("\"version\":5", "\"version\":6")
        .into_bytes();
    tampered.version = 6;
    assert_eq!(
        book.offer(tampered.clone(), &verifier),
        Err(Refusal::Signature("330000".into()))
    );
    // Signed by another province's coordinator, or by a node.
    for signer in [pki::coordinator("320000"), pki::node(HZ)] {
        let r = book.offer(signed_by(&pki, &signer, &hijack), &verifier);
        assert_eq!(
            r,
            Err(Refusal::Signer {
                province: "330000".into(),
                signer: signer.urn()
            })
        );
    }
    // Signed by Zhejiang's coordinator under an unrelated CA.
    let rogue = Pki::new(&dir.path().join("rogue"));
    let r = book.offer(signed_by(&rogue, &zj, &hijack), &verifier);
    assert!(
        matches!(&r, Err(Refusal::Certificate { province, .. }) if province == "330000"),
        "{r:?}"
    );
    // Zhejiang's coordinator listing a Jiangsu city, or a city under another's identity.
    let nj = Entry::for_city(
        yidi_common::region::RegionCode::parse_city(NJ, "r").unwrap(),
        "Nanjing",
        "https://10.0.0.2:7101",
    );
    let r = book.offer(signed_by(&pki, &zj, &doc("330000", 6, vec![nj])), &verifier);
    assert!(
        matches!(&r, Err(Refusal::Invalid { reason, .. }) if reason.contains("320100 is not a city of 330000")),
        "{r:?}"
    );
    let mut wrong_id = hz_entry("https://10.0.0.1:7101");
    wrong_id.identity = "urn:yidi:node:330200".into();
    let r = book.offer(
        signed_by(&pki, &zj, &doc("330000", 6, vec![wrong_id])),
        &verifier,
    );
    assert!(
        matches!(&r, Err(Refusal::Invalid { reason, .. }) if reason.contains("is not the identity of the node of 330100")),
        "{r:?}"
    );
    // The same version with other content.
    let r = book.offer(
        signed_by(
            &pki,
            &zj,
            &doc("330000", 5, vec![hz_entry("https://203.0.113.9:7101")]),
        ),
        &verifier,
    );
    assert_eq!(
        r,
        Err(Refusal::Conflict {
            province: "330000".into(),
            version: 5
        })
    );
    // After all of it, version 5 with Hangzhou at its real address is in force.
    assert_eq!(book.held()["330000"].doc, in_force().held()["330000"].doc);

    // A node's follower: its cache holds version 5; a tampered cache entry and an older
    // document later offered are refused, counted, and the cache keeps version 5.
    let node_dir = dir.path().join("node");
    std::fs::create_dir_all(&node_dir).unwrap();
    let (security, _) = pki.server_security(&pki::node(NJ));
    let tls = yidi_node::tls::start(
        &security,
        "127.0.0.1:7101".parse().unwrap(),
        pki::node(NJ),
        "node",
    )
    .await
    .unwrap();
    let metrics = yidi_node::metrics::NodeMetrics::new(NJ);
    let follower = |tls| {
        Follower::new(
            Vec::new(),
            Some(node_dir.join(directory::CACHE_FILE)),
            tls,
            Duration::from_secs(1),
            Some(metrics.directory()),
            None,
        )
    };
    // The cache as a follower writes it: version 5, and a tampered version 6 (a hand
    // edit of the file).
    let cache = node_dir.join(directory::CACHE_FILE);
    let entry = |s: &SignedDirectory| {
        serde_json::json!({
            "province": s.province,
            "version": s.version,
            "document": b64(&s.document),
            "signature": b64(&s.signature),
            "certificate": b64(&s.certificate),
        })
    };
    std::fs::write(
        &cache,
        serde_json::json!({
            "directories": [entry(&signed_by(&pki, &zj, &good)), entry(&tampered)]
        })
        .to_string(),
    )
    .unwrap();
    let before = std::fs::read_to_string(&cache).unwrap();
    let f = follower(tls.clone());
    // Both entries are Zhejiang's: the first (version 5) is accepted, the tampered
    // version 6 refused on its signature.
    assert_eq!(f.load_cache(), 1);
    assert_eq!(f.versions(), BTreeMap::from([("330000".to_owned(), 5)]));
    let older = signed_by(&pki, &zj, &doc("330000", 4, vec![]));
    assert_eq!(f.offer_all(vec![older], "a rolled-back source"), 0);
    assert_eq!(f.versions(), BTreeMap::from([("330000".to_owned(), 5)]));
    assert_eq!(
        f.book().entries(None)[0].address,
        "https://10.0.0.1:7101",
        "Hangzhou stays at its real address"
    );
    assert_eq!(std::fs::read_to_string(&cache).unwrap(), before);
    let text = metrics.encode();
    for (reason, n) in [("signature", 1), ("older", 1)] {
        let line =
            format!(r#"yidi_directory_refused_total{{region="{NJ}",reason="{reason}"}} {n}"#);
        assert!(text.contains(&line), "{line} missing in\n{text}");
    }
    assert!(
        text.contains(&format!(
            r#"yidi_directory_version{{region="{NJ}",province="330000"}} 5"#
        )),
        "{text}"
    );
}

fn b64(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}

#[test]
fn a_city_is_added_with_one_command_and_a_wrong_one_changes_nothing() {
    use yidi_tests::process::yidi;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("directory.toml");
    let f = file.display().to_string();
    std::fs::write(
        &file,
        "# Zhejiang's directory\n[[city]]\nregion = \"330100\"\nname = \"Hangzhou\"\naddress = \"https://10.0.0.1:7101\"\n",
    )
    .unwrap();
    let add = |region: &str, name: &str| {
        yidi(&[
            "directory",
            "add-region",
            "--file",
            &f,
            "--region",
            region,
            "--name",
            name,
            "--address",
            "https://10.0.0.4:7101",
        ])
    };
    let ok = add("330400", "Jiaxing").expect_code(0);
    assert_eq!(
        ok.stdout.trim(),
        format!("330400 Jiaxing added to {f}; the coordinator publishes it within 2 s")
    );
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.starts_with("# Zhejiang's directory\n"), "{text}");
    let parsed = DirectoryFile::parse(
        &text,
        &file,
        yidi_common::region::RegionCode::parse("330000", "p").ok(),
    )
    .unwrap();
    assert_eq!(
        parsed
            .city
            .iter()
            .map(|c| (c.region.as_str(), c.name.as_str()))
            .collect::<Vec<_>>(),
        [("330100", "Hangzhou"), ("330400", "Jiaxing")]
    );
    // A Jiangsu city in Zhejiang's file, a city twice, a code that is no city: refused
    // with the field named, the file unchanged.
    for (region, message) in [
        (
            "320100",
            "error: invalid directory_file city[2].region: 320100 is not a city of 330000: a coordinator lists only its own province's cities",
        ),
        (
            "330400",
            "error: invalid directory_file city[2].region: 330400 is listed twice",
        ),
        (
            "330000",
            "error: invalid region: \"330000\" is not a city (pooling region) code like \"330100\"",
        ),
    ] {
        let r = add(region, "X").expect_code(1);
        assert_eq!(r.stderr.trim(), message);
        assert_eq!(std::fs::read_to_string(&file).unwrap(), text);
    }

    // A province joins: one line at the national level.
    let national = dir.path().join("national.toml");
    let n = national.display().to_string();
    let join = |province: &str| {
        yidi(&[
            "directory",
            "add-province",
            "--file",
            &n,
            "--province",
            province,
            "--name",
            "Jiangsu",
            "--coordinator",
            "https://10.0.1.1:7100",
        ])
    };
    join("320000").expect_code(0);
    let parsed = DirectoryFile::read(&national, None).unwrap();
    assert_eq!(
        parsed
            .province
            .iter()
            .map(|p| (p.province.as_str(), p.coordinator.as_str()))
            .collect::<Vec<_>>(),
        [("320000", "https://10.0.1.1:7100")]
    );
    let before = std::fs::read_to_string(&national).unwrap();
    let r = join("320000").expect_code(1);
    assert_eq!(
        r.stderr.trim(),
        "error: invalid directory_file province[1].province: 320000 is listed twice"
    );
    let r = join("320100").expect_code(1);
    assert_eq!(
        r.stderr.trim(),
        "error: invalid province: 320100 is not a province code like 320000"
    );
    assert_eq!(std::fs::read_to_string(&national).unwrap(), before);
}
