//! The batched peer hop (issue #23): claims bound for one home node travel in one
//! CommitClaims and are applied in one writer job there, each claim still exactly once,
//! cap-safe and answered on its own. The claims are priced here with the same engine
//! and the home node's own policy and accumulators, as a treatment node prices them.

use std::net::SocketAddr;

use tonic::Code;
use yidi_common::{
    engine::{self, Accumulators, FilingCtx, Line, PersonCtx, VisitCtx},
    money,
    policy::Policy,
    proto::{self, HospitalLevel as Hl, VisitKind as Vk},
    types::{HospitalLevel, InsuranceType, PersonType, VisitKind},
};
use yidi_tests::{
    fixtures::{acc_tuple, accumulators, filed_employee, inst, period_digest, three_cities},
    harness::{Federation, TestNode},
    process::free_port,
};

const HZ: &str = "330100";
const NB: &str = "330200";
const VISIT_DATE: &str = "2026-03-10";

/// Three cities with a metrics listener at Hangzhou, the home node of these claims.
async fn cities(root: &std::path::Path) -> (Federation, SocketAddr) {
    let prebound = yidi_node::prebound::Prebound::default();
    let metrics = prebound.loopback();
    let fed = three_cities(root, move |r, c| {
        if r == HZ {
            c.metrics_listen = Some(metrics);
            c.prebound = prebound.clone();
        }
    })
    .await;
    (fed, metrics)
}

/// Jobs Hangzhou's writer has run so far, once what was queued before has run: the
/// audit entries of the reads answered before are queued ahead of a write awaited here.
async fn writer_jobs(hz: &TestNode, metrics: SocketAddr) -> u64 {
    hz.admin()
        .await
        .upsert_catalogue_item(proto::UpsertCatalogueItemRequest {
            request_id: format!("flush-{}", free_port()),
            item: Some(proto::CatalogueItem {
                code: "HZ-FLUSH".into(),
                name: "flush".into(),
                category: proto::ItemCategory::Drug as i32,
                class: proto::CatalogueClass::A as i32,
                first_selfpay_ratio: "0".into(),
                price_cap: String::new(),
                unit: "unit".into(),
                valid_from: "2024-01-01".into(),
                valid_to: String::new(),
                free_of_charge: false,
            }),
        })
        .await
        .expect("a write to flush the queue");
    let text = yidi_node::metrics::scrape(metrics).await.expect("scrape");
    let prefix = format!("yidi_store_requests_total{{region=\"{HZ}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no store requests series:\n{text}"))
}

/// What Ningbo knows of a Hangzhou person before pricing: the home policy, the filing
/// and the accumulators, from the home node's own answers.
struct Home {
    policy: Policy,
    policy_version: u32,
    filing: Option<FilingCtx>,
    acc: Accumulators,
}

async fn home_of(hz: &TestNode, id: &str) -> Home {
    let mut peer = hz.peer().await;
    let elig = peer
        .check_eligibility(proto::CheckEligibilityRequest {
            id_number: id.into(),
            institution_code: inst::NB_H3.into(),
            level: Hl::HospitalLevel3 as i32,
            visit_kind: Vk::Outpatient as i32,
            visit_date: VISIT_DATE.into(),
            treatment_region: NB.into(),
            settle_date: String::new(),
        })
        .await
        .expect("eligibility")
        .into_inner();
    assert!(elig.eligible, "{elig:?}");
    let pv = peer
        .get_policy(proto::PeerGetPolicyRequest {
            insurance_type: proto::InsuranceType::Employee as i32,
            on_date: String::new(),
            version: elig.policy_version,
        })
        .await
        .expect("policy")
        .into_inner();
    Home {
        policy: Policy::from_json(&pv.policy_json).expect("policy json"),
        policy_version: elig.policy_version,
        filing: FilingCtx::from_proto(elig.filing.as_ref().expect("filing")).expect("filing"),
        acc: Accumulators::from_proto(elig.accumulators.as_ref().expect("acc")).expect("acc"),
    }
}

fn claim_visit(n: u32, amount: &str) -> proto::ClaimVisit {
    proto::ClaimVisit {
        visit_id: format!("{NB}-V-7{n:07}"),
        institution_code: inst::NB_H3.into(),
        level: Hl::HospitalLevel3 as i32,
        visit_kind: Vk::Outpatient as i32,
        visit_date: VISIT_DATE.into(),
        lines: vec![proto::ClassifiedLine {
            line: Some(yidi_tests::fixtures::fee_line(
                "1", "NB-A", "1", amount, amount,
            )),
            class: proto::CatalogueClass::A as i32,
            first_selfpay_ratio: "0.00".into(),
            price_cap: String::new(),
            item_name: "A".into(),
        }],
        use_account: false,
    }
}

/// Claim `n` of a bill of `amount` for `id`, priced on `acc` as Ningbo would price it;
/// with the accumulators it leaves.
fn priced(
    n: u32,
    id: &str,
    amount: &str,
    home: &Home,
    acc: &Accumulators,
) -> (proto::CommitClaimRequest, Accumulators) {
    let visit = claim_visit(n, amount);
    let lines: Vec<Line> = visit
        .lines
        .iter()
        .map(|l| Line::from_proto(l).expect("line"))
        .collect();
    let ctx = VisitCtx {
        visit_kind: VisitKind::Outpatient,
        level: HospitalLevel::Level3,
        institution_code: inst::NB_H3.into(),
        visit_date: VISIT_DATE.parse().unwrap(),
        treatment_region: NB.into(),
        home_region: HZ.into(),
        filing: home.filing.clone(),
        use_account: false,
    };
    let person = PersonCtx {
        insurance_type: InsuranceType::Employee,
        person_type: PersonType::InService,
        civil_servant: false,
        account_balance: money::from_fen(0),
    };
    let q = engine::quote(&home.policy, &person, acc, &ctx, &lines).expect("quote");
    let claim = format!("{NB}-S-7{n:09}");
    (
        proto::CommitClaimRequest {
            request_id: claim.clone(),
            claim_id: claim,
            treatment_region: NB.into(),
            id_number: id.into(),
            visit: Some(visit),
            split: Some(q.to_proto_split()),
            accumulator_version: acc.version,
            policy_version: home.policy_version,
            settled_at: yidi_common::period::now_rfc3339(),
            provisional: false,
        },
        q.accumulators,
    )
}

async fn commit_claims(
    hz: &TestNode,
    claims: Vec<proto::CommitClaimRequest>,
) -> Vec<proto::CommitClaimOutcome> {
    hz.peer()
        .await
        .commit_claims(proto::CommitClaimsRequest { claims })
        .await
        .expect("CommitClaims")
        .into_inner()
        .outcomes
}

fn committed(o: &proto::CommitClaimOutcome) -> &proto::CommitClaimResponse {
    assert_eq!((o.code, o.message.as_str()), (0, ""), "{o:?}");
    o.committed.as_ref().expect("committed")
}

fn pool(o: &proto::CommitClaimOutcome) -> &str {
    committed(o)
        .split
        .as_ref()
        .expect("split")
        .hifp_pay
        .as_str()
}

async fn status(hz: &TestNode, claim: &str) -> String {
    hz.peer()
        .await
        .claim_status(proto::ClaimStatusRequest {
            claim_id: claim.into(),
        })
        .await
        .expect("status")
        .into_inner()
        .state
}

/// Two claims of one person in one batch, the second priced on what the first leaves:
/// the second meets the annual cap of 400,000.00 to the fen, in one writer job. A
/// third claim priced on the accumulators before both is refused in its own batch
/// (compare-and-set), alone: the other claim of that batch, and a claim refused for its
/// id, change nothing for the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_claims_of_one_person_in_one_batch_meet_the_cap_to_the_fen() {
    let dir = tempfile::tempdir().unwrap();
    let (fed, metrics) = cities(dir.path()).await;
    let hz = fed.node(HZ);
    let id = filed_employee(hz, "1975-05-05", 81, "0.00", NB).await;
    let other = filed_employee(hz, "1976-06-06", 82, "0.00", NB).await;
    let home = home_of(hz, &id).await;
    let (a, after_a) = priced(1, &id, "500000.00", &home, &home.acc);
    let (b, _) = priced(2, &id, "100000.00", &home, &after_a);
    // Priced on the accumulators before A and B: stale once they are committed.
    let (stale, _) = priced(3, &id, "100.00", &home, &home.acc);

    let jobs = writer_jobs(hz, metrics).await;
    let out = commit_claims(hz, vec![a.clone(), b.clone()]).await;
    assert_eq!(
        writer_jobs(hz, metrics).await - jobs,
        2,
        "the batch in one job, and the flushing write"
    );
    assert_eq!(out.len(), 2);
    // A: deductible 1,000.00, then 70% of 499,000.00; B: what is left under the cap.
    assert_eq!(pool(&out[0]), "349300.00");
    assert_eq!(pool(&out[1]), "50700.00");
    // 大病保险 on the personal in-scope share above 20,000.00: A's 150,700.00 gives
    // 60% of 80,000.00 + 70% of 50,700.00; B's, up to 200,000.00, 70% of 49,300.00.
    let hifmi = |o: &proto::CommitClaimOutcome| committed(o).split.clone().unwrap().hifmi_pay;
    assert_eq!(
        (hifmi(&out[0]), hifmi(&out[1])),
        ("83490.00".into(), "34510.00".into())
    );
    assert_eq!(
        committed(&out[1]).split.as_ref().unwrap().medfee_sumamt,
        "100000.00"
    );
    let acc = accumulators(hz, &id, NB, inst::NB_H3).await;
    assert_eq!(
        (
            acc.pool_paid.as_str(),
            acc.outpatient_deductible_paid.as_str(),
            acc.version
        ),
        ("400000.00", "1000.00", 2)
    );

    // One batch: the stale claim, another person's claim, a claim under an id Ningbo
    // did not issue. Only the other person's is committed.
    let other_home = home_of(hz, &other).await;
    let (fine, _) = priced(4, &other, "2000.00", &other_home, &other_home.acc);
    let mut foreign = priced(5, &other, "300.00", &other_home, &other_home.acc).0;
    foreign.claim_id = format!("{HZ}-S-7000000005");
    let out = commit_claims(hz, vec![stale.clone(), fine.clone(), foreign]).await;
    assert_eq!(out.len(), 3);
    assert_eq!(out[0].code, Code::Aborted as i32, "{:?}", out[0]);
    assert!(
        out[0]
            .message
            .contains("accumulators changed since eligibility (version 2 now, 0 used)"),
        "{}",
        out[0].message
    );
    assert!(!out[0].not_committed && out[0].committed.is_none());
    assert_eq!(pool(&out[1]), "700.00");
    assert_eq!(out[2].code, Code::InvalidArgument as i32, "{:?}", out[2]);
    assert!(
        out[2].message.contains("claim_id")
            && out[2].message.contains("must be an id issued by 330200"),
        "{}",
        out[2].message
    );
    // The refused claims left nothing: the first person's accumulators as they were,
    // no claim under either id; the other person's claim committed once.
    let acc = accumulators(hz, &id, NB, inst::NB_H3).await;
    assert_eq!(
        acc_tuple(&acc),
        (
            "400000.00",
            "400000.00",
            "0.00",
            "118000.00",
            "1000.00",
            0,
            "600000.00",
            2
        )
    );
    assert_eq!(status(hz, &stale.claim_id).await, "unknown");
    assert_eq!(status(hz, &format!("{HZ}-S-7000000005")).await, "unknown");
    assert_eq!(status(hz, &fine.claim_id).await, "committed");
    let acc = accumulators(hz, &other, NB, inst::NB_H3).await;
    assert_eq!((acc.pool_paid.as_str(), acc.version), ("700.00", 1));
    let period = committed(&out[1]).period.clone();
    let ledger = period_digest(hz, &period, NB, "payable").await;
    // The fund's part of the three committed claims: pool and 大病保险.
    assert_eq!((ledger.count, ledger.sum.as_str()), (3, "518700.00"));
}

/// A batch sent again, a claim of it sent alone, and a batch holding one claim twice:
/// every claim is committed once and answered the same each time; the request id of a
/// batched claim reused for another payload is refused on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_claims_are_exactly_once_under_retries() {
    let dir = tempfile::tempdir().unwrap();
    let (fed, _) = cities(dir.path()).await;
    let hz = fed.node(HZ);
    let id = filed_employee(hz, "1977-07-07", 83, "0.00", NB).await;
    let home = home_of(hz, &id).await;
    let (a, after_a) = priced(11, &id, "3000.00", &home, &home.acc);
    let (b, _) = priced(12, &id, "1000.00", &home, &after_a);

    let first = commit_claims(hz, vec![a.clone(), b.clone()]).await;
    assert_eq!((pool(&first[0]), pool(&first[1])), ("1400.00", "700.00"));
    let again = commit_claims(hz, vec![a.clone(), b.clone()]).await;
    assert_eq!(again, first, "the repeat replays the answers");
    let alone = hz
        .peer()
        .await
        .commit_claim(b.clone())
        .await
        .expect("CommitClaim of a batched claim")
        .into_inner();
    assert_eq!(&alone, committed(&first[1]));
    let twice = commit_claims(hz, vec![a.clone(), a.clone()]).await;
    assert_eq!((&twice[0], &twice[1]), (&first[0], &first[0]));
    let mut changed = b.clone();
    changed.visit = Some(claim_visit(12, "999.00"));
    let out = commit_claims(hz, vec![changed, a.clone()]).await;
    assert_eq!(out[0].code, Code::AlreadyExists as i32, "{:?}", out[0]);
    assert!(
        out[0]
            .message
            .contains("already used by an earlier CommitClaim request with a different payload"),
        "{}",
        out[0].message
    );
    assert_eq!(&out[1], &first[0]);

    let acc = accumulators(hz, &id, NB, inst::NB_H3).await;
    assert_eq!(
        (
            acc.pool_paid.as_str(),
            acc.inscope_total.as_str(),
            acc.version
        ),
        ("2100.00", "4000.00", 2)
    );
    let period = committed(&first[0]).period.clone();
    let ledger = period_digest(hz, &period, NB, "payable").await;
    assert_eq!((ledger.count, ledger.sum.as_str()), (2, "2100.00"));
}

/// Through a treatment node's peer directory: claims handed over together leave in one
/// CommitClaims (one writer job at the home node), in the order given — four claims of
/// one person, each priced on the one before, all commit.
#[tokio::test]
async fn claims_handed_over_together_leave_in_one_call_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (fed, metrics) = cities(dir.path()).await;
    let hz = fed.node(HZ);
    let id = filed_employee(hz, "1978-08-08", 84, "0.00", NB).await;
    let home = home_of(hz, &id).await;
    let mut claims = Vec::new();
    let mut acc = home.acc.clone();
    for (n, amount) in [
        (21, "1500.00"),
        (22, "500.00"),
        (23, "1000.00"),
        (24, "2000.00"),
    ] {
        let (c, next) = priced(n, &id, amount, &home, &acc);
        claims.push(c);
        acc = next;
    }
    let peers_file = dir.path().join("nb-peers.toml");
    yidi_tests::harness::write_peers(&peers_file, &[(HZ.to_owned(), hz.addr)]);
    let directory = yidi_node::peers::PeerDirectory::load(
        yidi_common::region::RegionCode::parse_city(NB, "region").unwrap(),
        Some(&peers_file),
        std::time::Duration::from_secs(5),
    )
    .unwrap();
    let peer = directory.get(HZ).unwrap();

    let jobs = writer_jobs(hz, metrics).await;
    // One task polls all four hand-overs before any sender runs (this runtime has one
    // thread): the first sender finds all four waiting.
    let [c1, c2, c3, c4] = <[_; 4]>::try_from(claims).unwrap();
    let (r1, r2, r3, r4) = tokio::join!(
        peer.commit_claim(c1),
        peer.commit_claim(c2),
        peer.commit_claim(c3),
        peer.commit_claim(c4)
    );
    let answers = [r1, r2, r3, r4];
    assert_eq!(
        writer_jobs(hz, metrics).await - jobs,
        2,
        "the claims in one job, and the flushing write"
    );
    let pools: Vec<&str> = answers
        .iter()
        .map(|a| {
            a.as_ref()
                .expect("committed")
                .split
                .as_ref()
                .unwrap()
                .hifp_pay
                .as_str()
        })
        .collect();
    // 1,000.00 deductible out of the first bill, then 70% of everything after it.
    assert_eq!(pools, ["350.00", "350.00", "700.00", "1400.00"]);
    let acc = accumulators(hz, &id, NB, inst::NB_H3).await;
    assert_eq!((acc.pool_paid.as_str(), acc.version), ("2800.00", 4));
}
