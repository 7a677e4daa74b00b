//! Security end to end on in-process nodes serving mutual TLS: who may connect (the
//! federation CA, unexpired, unrevoked certificates), who may call what (identities
//! from certificates, never from payloads), plain text only on loopback, certificate
//! reload without downtime, request size and rate limits, the audit log — and a full
//! cross-region settlement and a clearing round over mTLS. Every refusal asserts its
//! status code and that nothing changed.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use chrono::{Days, Utc};
use tonic::{Code, transport::ClientTlsConfig};
use yidi_cli::certs::Validity;
use yidi_common::proto::{
    self, InsuranceType as It, PersonType as Pt, admin_service_client::AdminServiceClient,
    coordinator_service_client::CoordinatorServiceClient,
    hospital_service_client::HospitalServiceClient, peer_service_client::PeerServiceClient,
};
use yidi_node::{config::NodeConfig, identity::Role};
use yidi_tests::{
    fixtures::{
        Desk, fee_line, id_number, inst, institution as register, person, publish_policies,
        standard_items,
    },
    harness::{Federation, TestCoordinator, TestNode},
    pki::{self, Pki, channel, coordinator, institution, node, operator},
};

const HZ: &str = "330100";
const NB: &str = "330200";
const WZ: &str = "330300";

fn admin(n: &TestNode, tls: ClientTlsConfig) -> AdminServiceClient<tonic::transport::Channel> {
    AdminServiceClient::new(channel(n, tls))
}

fn hospital(
    n: &TestNode,
    tls: ClientTlsConfig,
) -> HospitalServiceClient<tonic::transport::Channel> {
    HospitalServiceClient::new(channel(n, tls))
}

fn peer(n: &TestNode, tls: ClientTlsConfig) -> PeerServiceClient<tonic::transport::Channel> {
    PeerServiceClient::new(channel(n, tls))
}

/// One TLS node of Hangzhou with its CA.
async fn hz_node(root: &std::path::Path, adjust: impl FnOnce(&mut NodeConfig)) -> (Pki, TestNode) {
    let pki = Pki::new(&root.join("pki"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let (security, _) = pki.server_security(&node(HZ));
    let mut n = TestNode::start_on(listener, HZ, root.join(HZ), |c| {
        c.security = security;
        adjust(c);
    })
    .await;
    n.client_tls = Some(pki.client(&operator(HZ, Role::Admin)));
    (pki, n)
}

fn create_person_req(rid: &str, id: &str) -> proto::CreatePersonRequest {
    proto::CreatePersonRequest {
        request_id: rid.into(),
        id_number: id.into(),
        fields: Some(proto::PersonFields {
            name: "测试".into(),
            card_no: format!("C{}", &id[6..]),
            insurance_type: It::Employee as i32,
            person_type: Pt::InService as i32,
            civil_servant: false,
            status: proto::PersonStatus::Active as i32,
            account_balance: "100.00".into(),
            enrolled_since: "2020-01-01".into(),
        }),
    }
}

async fn person_count(n: &TestNode) -> u64 {
    n.admin()
        .await
        .get_node_info(proto::GetNodeInfoRequest {})
        .await
        .expect("node info as the node's own admin operator")
        .into_inner()
        .persons
}

/// The call failed before reaching any service: the TLS handshake refused it (with
/// TLS 1.3 the server checks the client's certificate after the client considers the
/// handshake done, so the client may see the connection closed: CANCELLED).
#[track_caller]
fn assert_handshake_refused(status: &tonic::Status) {
    assert!(
        matches!(
            status.code(),
            Code::Unavailable | Code::Unknown | Code::Cancelled
        ),
        "expected a refused connection, got {status:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_of_another_ca_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (pki, hz) = hz_node(dir.path(), |_| {}).await;
    let rogue = Pki::new(&dir.path().join("rogue"));
    let id = id_number(HZ, "1980-01-01", 1);
    // An operator certificate naming the right region, from the wrong CA, by a client
    // that trusts the federation CA (so it is the node that refuses).
    let forged = rogue.issue(&operator(HZ, Role::Admin));
    let tls = yidi_node::tls::ClientArgs::files(&pki.ca.join("ca.crt"), &forged.cert, &forged.key)
        .config()
        .expect("files")
        .expect("tls");
    let mut c = admin(&hz, tls);
    let err = c
        .create_person(create_person_req("rogue-1", &id))
        .await
        .expect_err("a certificate of another CA");
    assert_handshake_refused(&err);
    // Plain text against a TLS node: no handshake at all.
    let mut plain = AdminServiceClient::new(
        yidi_node::tls::endpoint(&hz.url(), None)
            .expect("endpoint")
            .connect_lazy(),
    );
    let err = plain
        .create_person(create_person_req("plain-1", &id))
        .await
        .expect_err("plain text against mTLS");
    // The client reads the server's TLS alert as a broken HTTP/2 frame.
    assert!(
        matches!(
            err.code(),
            Code::Unavailable | Code::Unknown | Code::Cancelled | Code::Internal
        ),
        "{err:?}"
    );
    assert_eq!(person_count(&hz).await, 0, "nothing changed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_certificate_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (pki, hz) = hz_node(dir.path(), |_| {}).await;
    let today = Utc::now().date_naive();
    let expired = pki.issue_with(
        &operator(HZ, Role::Admin),
        Validity {
            not_before: today - Days::new(30),
            not_after: today - Days::new(2),
        },
    );
    let id = id_number(HZ, "1980-01-01", 2);
    let err = admin(&hz, expired.client())
        .create_person(create_person_req("expired-1", &id))
        .await
        .expect_err("expired certificate");
    assert_handshake_refused(&err);
    assert_eq!(person_count(&hz).await, 0, "nothing changed");
}

/// Calls `f` until it fails with `code` or `within` passes (the node re-reads its
/// revocation list within seconds; the test asks rather than sleeping a guess).
async fn until_refused<F, Fut>(within: Duration, code: Code, mut f: F) -> tonic::Status
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), tonic::Status>>,
{
    let deadline = Instant::now() + within;
    loop {
        match f().await {
            Err(s) if s.code() == code => return s,
            other => assert!(
                Instant::now() < deadline,
                "not refused with {code:?} within {within:?}: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_serial_is_refused_even_on_an_open_connection() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (pki, hz) = hz_node(dir.path(), |_| {}).await;
    let op = pki.issue(&operator(HZ, Role::Admin));
    let mut c = admin(&hz, op.client());
    c.get_node_info(proto::GetNodeInfoRequest {})
        .await
        .expect("valid before revocation");
    pki.revoke(&op.serial);
    let status = until_refused(Duration::from_secs(15), Code::Unauthenticated, || {
        let mut c = c.clone();
        async move {
            c.get_node_info(proto::GetNodeInfoRequest {})
                .await
                .map(|_| ())
        }
    })
    .await;
    assert!(
        status.message().contains("certificate revoked"),
        "{status:?}"
    );
    let id = id_number(HZ, "1980-01-01", 3);
    let err = c
        .create_person(create_person_req("revoked-1", &id))
        .await
        .expect_err("revoked");
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    // A new connection with the same certificate: the same answer.
    let err = admin(&hz, op.client())
        .create_person(create_person_req("revoked-2", &id))
        .await
        .expect_err("revoked, new connection");
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert_eq!(person_count(&hz).await, 0, "nothing changed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_act_only_at_their_own_node_and_in_their_role() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (pki, hz) = hz_node(dir.path(), |_| {}).await;
    let id = id_number(HZ, "1980-01-01", 4);
    for (who, what) in [
        (operator(NB, Role::Admin), "another city's operator"),
        (
            operator("330000", Role::Clearing),
            "the province's operator",
        ),
        (operator(HZ, Role::Clearing), "the clearing role"),
        (node(NB), "a node"),
        (institution(HZ, inst::HZ_H3), "a hospital"),
    ] {
        let err = admin(&hz, pki.client(&who))
            .create_person(create_person_req(&format!("op-{what}"), &id))
            .await
            .expect_err(what);
        assert_eq!(err.code(), Code::PermissionDenied, "{what}: {err:?}");
    }
    // The clearing role reads the ledger at its own node.
    admin(&hz, pki.client(&operator(HZ, Role::Clearing)))
        .get_ledger(proto::GetLedgerRequest {
            period: "2026-03".into(),
        })
        .await
        .expect("clearing role reads the ledger");
    assert_eq!(person_count(&hz).await, 0, "nothing changed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_text_is_refused_off_loopback_and_without_asking() {
    // serve: an insecure node on a non-loopback address refuses to start.
    let dir = tempfile::tempdir().expect("tempdir");
    let any = tokio::net::TcpListener::bind("0.0.0.0:0")
        .await
        .expect("bind");
    let region = yidi_common::region::RegionCode::parse_city(HZ, "r").expect("region");
    let config = NodeConfig::new(region, "hz", dir.path().join("any"));
    assert!(config.security.insecure);
    let err = yidi_node::server::serve(any, async {}, config)
        .await
        .expect_err("plain text on 0.0.0.0");
    assert!(err.to_string().contains("loopback"), "{err}");
    assert!(
        !dir.path().join("any").exists(),
        "refused before the store was created"
    );

    // The real binary: the same rule from flags, and TLS is the default.
    let data = dir.path().join("cli").display().to_string();
    let run = yidi_tests::process::yidi(&[
        "node",
        "--region",
        HZ,
        "--listen",
        "0.0.0.0:0",
        "--insecure",
        "--data-dir",
        &data,
    ]);
    assert_ne!(run.code, Some(0), "{run:?}");
    assert!(run.stderr.contains("loopback"), "{run:?}");
    let run = yidi_tests::process::yidi(&[
        "node",
        "--region",
        HZ,
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        &data,
    ]);
    assert_ne!(run.code, Some(0), "{run:?}");
    assert!(run.stderr.contains("tls_cert"), "{run:?}");
    assert!(!dir.path().join("cli").exists(), "nothing was created");

    // The coordinator follows the same rule.
    let participants = dir.path().join("peers.toml");
    std::fs::write(&participants, "").expect("participants");
    let mut cc = yidi_node::coordinator::CoordinatorConfig::new(
        yidi_common::region::RegionCode::parse("330000", "r").expect("province"),
        dir.path().join("coord"),
        participants,
    );
    cc.listen = "0.0.0.0:0".parse().expect("addr");
    let any = tokio::net::TcpListener::bind("0.0.0.0:0")
        .await
        .expect("bind");
    let err = yidi_node::coordinator::serve(any, async {}, cc)
        .await
        .expect_err("coordinator plain text on 0.0.0.0");
    assert!(err.to_string().contains("loopback"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_certificate_for_the_wrong_region_does_not_start_a_node() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(&dir.path().join("pki"));
    let (security, _) = pki.server_security(&node(NB));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let region = yidi_common::region::RegionCode::parse_city(HZ, "r").expect("region");
    let mut config = NodeConfig::new(region, "hz", dir.path().join(HZ));
    config.security = security;
    let err = yidi_node::server::serve(listener, async {}, config)
        .await
        .expect_err("Ningbo's certificate on Hangzhou's node");
    assert!(err.to_string().contains("urn:yidi:node:330200"), "{err}");
}

/// Three TLS cities with the settlement fixtures, a Hangzhou insured person filed for
/// Ningbo; returns the federation and the person's ID number.
async fn tls_cities(root: &std::path::Path, pki: &Pki) -> (Federation, String) {
    use proto::{HospitalLevel as Hl, InstitutionKind as Ik};
    // The settlement tests' three cities (fixtures::three_cities), over mTLS.
    let fed = pki::federation(root, pki, &[HZ, NB, WZ], |_, _| {}).await;
    for n in &fed.nodes {
        publish_policies(n).await;
    }
    let (hz, nb, wz) = (fed.node(HZ), fed.node(NB), fed.node(WZ));
    register(hz, inst::HZ_H3, Ik::Hospital, Hl::HospitalLevel3).await;
    register(nb, inst::NB_H3, Ik::Hospital, Hl::HospitalLevel3).await;
    register(nb, inst::NB_H1, Ik::Hospital, Hl::HospitalLevel1).await;
    register(wz, inst::WZ_H2, Ik::Hospital, Hl::HospitalLevel2).await;
    standard_items(hz, "HZ").await;
    standard_items(nb, "NB").await;
    standard_items(wz, "WZ").await;
    let id = person(
        fed.node(HZ),
        &id_number(HZ, "1960-05-05", 7),
        It::Employee,
        Pt::Retired,
        "500.00",
        false,
    )
    .await;
    yidi_tests::fixtures::filing(
        fed.node(HZ),
        &id,
        proto::FilingType::ResettledRetiree,
        NB,
        &[],
        "2026-01-01",
    )
    .await;
    (fed, id)
}

async fn desk(n: &TestNode, pki: &Pki, code: &str) -> Desk {
    Desk {
        client: hospital(n, pki.client(&institution(n.region.as_str(), code))),
        inst: code.to_owned(),
    }
}

async fn audit(n: &TestNode, filter: proto::ListAuditRequest) -> Vec<proto::AuditEntry> {
    n.admin()
        .await
        .list_audit(filter)
        .await
        .expect("list audit")
        .into_inner()
        .entries
}

/// Polls the audit log until `pred` holds (reads are logged without delaying the
/// answer).
async fn wait_audit(
    n: &TestNode,
    filter: proto::ListAuditRequest,
    pred: impl Fn(&[proto::AuditEntry]) -> bool,
) -> Vec<proto::AuditEntry> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = audit(n, filter.clone()).await;
        if pred(&got) {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "audit log never matched: {got:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Opens, charges and discharges an inpatient visit at Ningbo's level-3 hospital.
async fn discharged_visit(d: &mut Desk, rid: &str, id: &str) -> proto::Visit {
    let v = d
        .open(
            &format!("{rid}-open"),
            id,
            HZ,
            proto::VisitKind::Inpatient,
            "2026-03-10T09:00:00+08:00",
        )
        .await
        .expect("open visit");
    d.fees(
        &format!("{rid}-fees"),
        &v.visit_id,
        vec![
            fee_line("1", "NB-A", "1", "3000.00", "3000.00"),
            fee_line("2", "NB-B", "2", "500.00", "1000.00"),
        ],
    )
    .await
    .expect("fees");
    d.discharge(&format!("{rid}-out"), &v.visit_id)
        .await
        .expect("discharge")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_region_settlement_over_mutual_tls_is_audited_at_home() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(&dir.path().join("pki"));
    let (fed, id) = tls_cities(dir.path(), &pki).await;
    let (hz, nb) = (fed.node(HZ), fed.node(NB));
    let mut d = desk(nb, &pki, inst::NB_H3).await;
    let who = d
        .client
        .identify(proto::IdentifyRequest {
            institution_code: inst::NB_H3.into(),
            id_number: id.clone(),
            visit_kind: proto::VisitKind::Inpatient as i32,
            ..Default::default()
        })
        .await
        .expect("identify over mTLS (Ningbo asks Hangzhou)")
        .into_inner();
    assert!(who.eligible, "{who:?}");
    let v = discharged_visit(&mut d, "tls", &id).await;
    let s = d
        .settle("tls-settle", &v.visit_id, false)
        .await
        .expect("settle over mTLS");
    assert_eq!(s.state, "settled", "{s:?}");

    // Hangzhou's audit log names Ningbo (from its certificate) for the eligibility
    // reads and the commit, with the person and the claim.
    let nb_serial = pki.serial_of(&node(NB));
    let entries = wait_audit(
        hz,
        proto::ListAuditRequest {
            person: id.clone(),
            ..Default::default()
        },
        |e| {
            e.iter().any(|x| x.action == "CommitClaim")
                && e.iter().any(|x| x.action == "CheckEligibility")
        },
    )
    .await;
    for e in &entries {
        assert_eq!(e.peer_region, NB, "{e:?}");
        assert_eq!(e.peer_serial, nb_serial, "{e:?}");
        assert_eq!(e.id_number, id, "{e:?}");
        assert_eq!(e.outcome, "ok", "{e:?}");
    }
    let commit = entries
        .iter()
        .find(|e| e.action == "CommitClaim")
        .expect("commit entry");
    assert!(commit.reference.starts_with(NB), "{commit:?}");
    assert_eq!(commit.institution_code, inst::NB_H3);
    // Filters: by peer, by action, by the lookup hash, by time.
    let hash = yidi_common::idnum::lookup_hash(&id);
    let by_hash = audit(
        hz,
        proto::ListAuditRequest {
            person: hash,
            action: "CommitClaim".into(),
            peer_region: NB.into(),
            from: "2020-01-01".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(by_hash.len(), 1, "{by_hash:?}");
    let none = audit(
        hz,
        proto::ListAuditRequest {
            peer_region: WZ.into(),
            ..Default::default()
        },
    )
    .await;
    assert!(none.is_empty(), "{none:?}");
    let future = audit(
        hz,
        proto::ListAuditRequest {
            from: "2099-01-01".into(),
            ..Default::default()
        },
    )
    .await;
    assert!(future.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hospitals_act_only_as_themselves_and_only_at_their_node() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(&dir.path().join("pki"));
    let (fed, id) = tls_cities(dir.path(), &pki).await;
    let (hz, nb) = (fed.node(HZ), fed.node(NB));
    let mut own = desk(nb, &pki, inst::NB_H3).await;
    let v = discharged_visit(&mut own, "x", &id).await;

    // Ningbo's level-1 hospital, settling the level-3 hospital's visit as NB_H3.
    let mut impostor = desk(nb, &pki, inst::NB_H1).await;
    impostor.inst = inst::NB_H3.into();
    let err = impostor
        .settle("y-settle", &v.visit_id, false)
        .await
        .expect_err("settle as another institution");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let err = impostor
        .open(
            "y-open",
            &id,
            HZ,
            proto::VisitKind::Outpatient,
            "2026-03-11T09:00:00+08:00",
        )
        .await
        .expect_err("open a visit as another institution");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    // A Ningbo hospital at Hangzhou's node.
    let mut abroad = desk(hz, &pki, inst::NB_H3).await;
    let err = abroad
        .open(
            "z-open",
            &id,
            HZ,
            proto::VisitKind::Outpatient,
            "2026-03-11T09:00:00+08:00",
        )
        .await
        .expect_err("a hospital at another city's node");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    // A hospital calling PeerService (as if it were a node) at its own node.
    let err = peer(nb, pki.client(&institution(NB, inst::NB_H3)))
        .lookup_person(proto::LookupPersonRequest {
            card_no: String::new(),
            id_number_hash: yidi_common::idnum::lookup_hash(&id),
        })
        .await
        .expect_err("a hospital calling PeerService");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    // ... and at the person's home node.
    let err = peer(hz, pki.client(&institution(NB, inst::NB_H3)))
        .check_eligibility(proto::CheckEligibilityRequest {
            settle_date: String::new(),
            id_number: id.clone(),
            institution_code: inst::NB_H3.into(),
            level: proto::HospitalLevel::HospitalLevel3 as i32,
            visit_kind: proto::VisitKind::Inpatient as i32,
            visit_date: "2026-03-10".into(),
            treatment_region: NB.into(),
        })
        .await
        .expect_err("a hospital calling PeerService at the home node");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");

    // Nothing changed: the visit is unsettled, no institution has a settlement, no claim
    // reached Hangzhou.
    assert!(own.list().await.is_empty(), "no settlement of NB_H3");
    let mut h1 = desk(nb, &pki, inst::NB_H1).await;
    assert!(h1.list().await.is_empty(), "no settlement of NB_H1");
    let commits = audit(
        hz,
        proto::ListAuditRequest {
            action: "CommitClaim".into(),
            ..Default::default()
        },
    )
    .await;
    assert!(commits.is_empty(), "{commits:?}");
    // The visit still settles for its own institution.
    let s = own
        .settle("x-settle", &v.visit_id, false)
        .await
        .expect("own settle");
    assert_eq!(s.state, "settled");
}

fn commit_req(id: &str, treatment: &str, claim: &str) -> proto::CommitClaimRequest {
    proto::CommitClaimRequest {
        request_id: format!("forged-{claim}"),
        claim_id: claim.into(),
        treatment_region: treatment.into(),
        id_number: id.into(),
        settled_at: "2026-03-20T10:00:00+08:00".into(),
        provisional: true,
        visit: Some(proto::ClaimVisit {
            institution_code: inst::WZ_H2.into(),
            level: proto::HospitalLevel::HospitalLevel2 as i32,
            visit_kind: proto::VisitKind::Outpatient as i32,
            visit_date: "2026-03-20".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_commits_and_reverses_claims_only_as_itself() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(&dir.path().join("pki"));
    let (fed, id) = tls_cities(dir.path(), &pki).await;
    let hz = fed.node(HZ);
    let as_nb = pki.client(&node(NB));
    let before = acc_version(hz, &pki, &id).await;

    // Ningbo's certificate, claiming to be Wenzhou.
    let forged = commit_req(&id, WZ, "330300-FORGED-1");
    let err = peer(hz, as_nb.clone())
        .commit_claim(forged)
        .await
        .expect_err("commit as another treatment region");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let err = peer(hz, as_nb.clone())
        .reverse_claim(proto::ReverseClaimRequest {
            request_id: "forged-rev".into(),
            claim_id: "330300-FORGED-1".into(),
            treatment_region: WZ.into(),
            reversal_id: "330300-FORGED-R1".into(),
            reversed_at: "2026-03-21T10:00:00+08:00".into(),
            ..Default::default()
        })
        .await
        .expect_err("reverse as another treatment region");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let err = peer(hz, as_nb.clone())
        .period_digest(proto::PeriodDigestRequest {
            period: "2026-03".into(),
            include_ids: true,
            counterparty: WZ.into(),
            side: "payable".into(),
        })
        .await
        .expect_err("read another region's ledger position");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let err = peer(hz, as_nb.clone())
        .claim_status(proto::ClaimStatusRequest {
            claim_id: "330300-ANY".into(),
        })
        .await
        .expect_err("status of another region's claim");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    // A node calling itself, and the coordinator calling PeerService: refused too.
    for who in [node(HZ), coordinator("330000"), operator(HZ, Role::Admin)] {
        let err = peer(hz, pki.client(&who))
            .commit_claim(commit_req(&id, HZ, "330100-SELF-1"))
            .await
            .expect_err("not a peer");
        assert_eq!(err.code(), Code::PermissionDenied, "{who}: {err:?}");
    }

    // Nothing changed: no claim exists under the forged id (asked as Wenzhou itself),
    // the accumulators did not move, and the refusals are in the audit log.
    let status = peer(hz, pki.client(&node(WZ)))
        .claim_status(proto::ClaimStatusRequest {
            claim_id: "330300-FORGED-1".into(),
        })
        .await
        .expect("status as Wenzhou")
        .into_inner();
    assert_eq!(status.state, "unknown", "{status:?}");
    assert_eq!(acc_version(hz, &pki, &id).await, before);
    for action in ["CommitClaim", "ReverseClaim"] {
        let refused = wait_audit(
            hz,
            proto::ListAuditRequest {
                peer_region: NB.into(),
                action: action.into(),
                ..Default::default()
            },
            |e| !e.is_empty(),
        )
        .await;
        assert!(
            refused.iter().all(|e| e.outcome == "PERMISSION_DENIED"
                && (action == "ReverseClaim" || e.id_number == id)),
            "{refused:#?}"
        );
    }
}

/// The person's accumulator version at home, read as Ningbo would.
async fn acc_version(home: &TestNode, pki: &Pki, id: &str) -> u64 {
    peer(home, pki.client(&node(NB)))
        .check_eligibility(proto::CheckEligibilityRequest {
            settle_date: String::new(),
            id_number: id.into(),
            institution_code: inst::NB_H3.into(),
            level: proto::HospitalLevel::HospitalLevel3 as i32,
            visit_kind: proto::VisitKind::Inpatient as i32,
            visit_date: "2026-03-10".into(),
            treatment_region: NB.into(),
        })
        .await
        .expect("eligibility as Ningbo")
        .into_inner()
        .accumulators
        .expect("accumulators")
        .version
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_request_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(&dir.path().join("pki"));
    let (fed, id) = tls_cities(dir.path(), &pki).await;
    let nb = fed.node(NB);
    let mut d = desk(nb, &pki, inst::NB_H3).await;
    let v = d
        .open(
            "big-open",
            &id,
            HZ,
            proto::VisitKind::Inpatient,
            "2026-03-10T09:00:00+08:00",
        )
        .await
        .expect("open");
    // ~5 MiB of fee lines, above the 4 MiB a hospital may send.
    let lines: Vec<proto::FeeLine> = (0..40_000)
        .map(|i| {
            let mut l = fee_line(&i.to_string(), "NB-A", "1", "1.00", "1.00");
            l.service_date = "x".repeat(100);
            l
        })
        .collect();
    let err = d
        .fees("big-fees", &v.visit_id, lines)
        .await
        .expect_err("oversized");
    assert!(
        matches!(err.code(), Code::OutOfRange | Code::ResourceExhausted),
        "{err:?}"
    );
    // Nothing changed: the visit has no fee lines; a normal upload still works.
    let r = d
        .fees(
            "small-fees",
            &v.visit_id,
            vec![fee_line("1", "NB-A", "1", "1.00", "1.00")],
        )
        .await
        .expect("a normal upload");
    assert_eq!(r.lines.len(), 1, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_hospital_is_rate_limited_on_its_own() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (pki, hz) = hz_node(dir.path(), |c| {
        c.hospital_rate = yidi_node::auth::RateLimit {
            per_second: 1,
            burst: 3,
        };
    })
    .await;
    let list = |code: &str| proto::ListSettlementsRequest {
        institution_code: code.into(),
        from_date: "2026-01-01".into(),
        to_date: "2026-12-31".into(),
        page: None,
    };
    let mut a = hospital(&hz, pki.client(&institution(HZ, "HA")));
    let mut results = Vec::new();
    for _ in 0..6 {
        results.push(a.list_settlements(list("HA")).await.map(|_| ()));
    }
    let limited = results
        .iter()
        .filter(|r| matches!(r, Err(s) if s.code() == Code::ResourceExhausted))
        .count();
    assert!(limited >= 2, "{results:?}");
    let msg = results
        .iter()
        .filter_map(|r| r.as_ref().err())
        .find(|s| s.code() == Code::ResourceExhausted)
        .map(|s| s.message().to_owned())
        .unwrap_or_default();
    assert!(msg.contains("rate limit"), "{msg}");
    // Another hospital is not held up by the first one's bucket.
    let mut b = hospital(&hz, pki.client(&institution(HZ, "HB")));
    // (Neither is registered at the node: past the limit, the node says so.)
    let r = b.list_settlements(list("HB")).await;
    assert!(
        !matches!(&r, Err(s) if s.code() == Code::ResourceExhausted),
        "HB has its own bucket: {r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_reload_while_requests_keep_flowing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(&dir.path().join("pki"));
    let (fed, id) = tls_cities(dir.path(), &pki).await;
    let (hz, nb) = (fed.node(HZ), fed.node(NB));
    let nb_old = pki.serial_of(&node(NB));
    let probe = pki.issue(&operator(NB, Role::Admin));
    let serving = || async {
        yidi_node::tls::probe(
            nb.addr,
            "node-330200.yidi",
            &probe.ca,
            &probe.cert,
            &probe.key,
        )
        .await
        .expect("probe")
        .serial
    };
    assert_eq!(serving().await, nb_old);

    // Requests on a loop, over one open connection and over fresh ones, while Ningbo's
    // certificate is replaced on disk.
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let mut loops = Vec::new();
    for fresh in [false, true] {
        let (stop, ok) = (Arc::clone(&stop), Arc::clone(&ok));
        let tls = pki.client(&operator(NB, Role::Admin));
        let url = nb.url();
        loops.push(tokio::spawn(async move {
            let ep = yidi_node::tls::endpoint(&url, Some(tls)).expect("endpoint");
            let mut c = AdminServiceClient::new(ep.connect_lazy());
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) && n < 10_000 {
                if fresh {
                    c = AdminServiceClient::new(ep.connect_lazy());
                }
                c.get_node_info(proto::GetNodeInfoRequest {})
                    .await
                    .expect("every request during the reload succeeds");
                ok.fetch_add(1, Ordering::Relaxed);
                n += 1;
            }
        }));
    }
    let new = pki.issue(&node(NB));
    assert_ne!(new.serial, nb_old);
    let deadline = Instant::now() + Duration::from_secs(15);
    while serving().await != new.serial {
        assert!(Instant::now() < deadline, "new certificate not served");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Keep the loops going a moment on the new certificate, then stop them.
    let seen = ok.load(Ordering::Relaxed);
    let until = Instant::now() + Duration::from_secs(5);
    while ok.load(Ordering::Relaxed) < seen + 20 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for l in loops {
        l.await.expect("request loop");
    }
    assert!(
        ok.load(Ordering::Relaxed) > seen,
        "requests flowed after the reload"
    );

    // Ningbo now calls Hangzhou with its new certificate too (its peer channels were
    // rebuilt): Hangzhou's audit log names the new serial.
    let mut d = desk(nb, &pki, inst::NB_H3).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        d.client
            .identify(proto::IdentifyRequest {
                institution_code: inst::NB_H3.into(),
                id_number: id.clone(),
                visit_kind: proto::VisitKind::Inpatient as i32,
                ..Default::default()
            })
            .await
            .expect("identify after the reload");
        let e = audit(
            hz,
            proto::ListAuditRequest {
                peer_region: NB.into(),
                page: Some(proto::PageRequest {
                    page_size: 1,
                    page_token: String::new(),
                }),
                ..Default::default()
            },
        )
        .await;
        if e.first().is_some_and(|e| e.peer_serial == new.serial) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Ningbo still calls with its old certificate: {e:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_coordinator_clears_over_mutual_tls_for_its_operators_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(&dir.path().join("pki"));
    let (fed, id) = tls_cities(dir.path(), &pki).await;
    let nb = fed.node(NB);
    let mut d = desk(nb, &pki, inst::NB_H3).await;
    let v = discharged_visit(&mut d, "c", &id).await;
    d.settle("c-settle", &v.visit_id, false)
        .await
        .expect("settle");

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let (security, _) = pki.server_security(&coordinator("330000"));
    let mut coord = TestCoordinator::start_with(
        listener,
        dir.path().join("coord"),
        fed.peers_file.clone(),
        |c| c.security = security,
    )
    .await;
    let client = |who| {
        CoordinatorServiceClient::new(
            yidi_node::tls::endpoint(&format!("http://{}", coord.addr), Some(pki.client(&who)))
                .expect("endpoint")
                .connect_lazy(),
        )
    };
    // The current period, which holds the claim just settled (a period without a record
    // would end ABORTED as empty).
    let open = proto::OpenRoundRequest {
        request_id: "open-1".into(),
        period: yidi_common::period::Period::of(chrono::Utc::now()).to_string(),
        early: true,
        allow_empty: false,
    };
    // Not the province's clearing operator: refused, no round opened.
    for who in [
        operator(HZ, Role::Admin),
        operator("330000", Role::Admin),
        node(NB),
        institution(NB, inst::NB_H3),
    ] {
        let err = client(who.clone())
            .open_round(open.clone())
            .await
            .expect_err("not a clearing operator");
        assert_eq!(err.code(), Code::PermissionDenied, "{who}: {err:?}");
    }
    let rounds = client(node(NB))
        .list_rounds(proto::ListRoundsRequest::default())
        .await
        .expect("a registered node reads rounds")
        .into_inner();
    assert!(rounds.rounds.is_empty(), "{rounds:?}");
    let err = client(node("330400"))
        .list_rounds(proto::ListRoundsRequest::default())
        .await
        .expect_err("not a participant");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");

    // The clearing operator runs the round: the coordinator calls every node's
    // ClearingParticipant with its own certificate.
    coord.client_tls = Some(pki.client(&operator("330000", Role::Clearing)));
    let mut c = coord.client().await;
    let round = c.open_round(open).await.expect("open round").into_inner();
    let round = c
        .run_round(proto::RoundRequest {
            request_id: "run-1".into(),
            round_id: round.round_id.clone(),
        })
        .await
        .expect("run round over mTLS")
        .into_inner();
    assert!(
        matches!(
            round.state.as_str(),
            "STATEMENT_ISSUED" | "CONFIRMED" | "SETTLED"
        ),
        "{round:?}"
    );
    let statement = c
        .get_statement(proto::RoundRequest {
            request_id: String::new(),
            round_id: round.round_id.clone(),
        })
        .await
        .expect("statement")
        .into_inner();
    assert!(
        statement.nets.iter().any(|n| n.region == NB),
        "{statement:?}"
    );
    // A node's ClearingParticipant refuses anyone but the coordinator.
    let err = yidi_common::proto::clearing_participant_client::ClearingParticipantClient::new(
        channel(nb, pki.client(&node(HZ))),
    )
    .mark_cleared(proto::MarkClearedRequest {
        request_id: "forged-mark".into(),
        round_id: round.round_id.clone(),
        period: "2026-03".into(),
    })
    .await
    .expect_err("a node posing as the coordinator");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    coord.stop().await;
}
