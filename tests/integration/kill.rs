//! Crash safety with real processes: a treatment node (Ningbo 330200) and a home node
//! (Hangzhou 330100) run as `yidi node` child processes while hospital clients settle
//! cross-region visits; each node in turn is killed with SIGKILL mid-load and restarted.
//! Clients repeat a failed call with the same request id until it has a definite answer,
//! as a hospital system must. At the end every acknowledged settlement is present at
//! both nodes, each person's accumulators at home equal the sum of their acknowledged
//! claims, and both ledgers hold exactly the acknowledged claims: nothing lost, nothing
//! counted twice.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use rust_decimal::Decimal;
use tonic::Code;
use yidi_common::{
    money,
    proto::{self, FilingType as Ft, InsuranceType as It, PersonType as Pt, VisitKind as Vk},
};
use yidi_tests::{
    fixtures::{
        Desk, accumulators, fee_line as line, filing, id_number, inst, institution, period_digest,
        person, publish_policies, standard_items,
    },
    harness::TestNode,
    process::{NodeProcess, free_port},
};

const HZ: &str = "330100";
const NB: &str = "330200";

/// An acknowledged settlement.
#[derive(Debug, Clone)]
struct Ack {
    id_number: String,
    settlement_id: String,
    period: String,
    hifp: Decimal,
    fund: Decimal,
}

fn m(s: &str) -> Decimal {
    money::parse(s, "amount", money::Sign::Any).expect("amount")
}

/// Codes after which the call may or may not have taken effect: repeat it.
fn in_doubt(code: Code) -> bool {
    // RESOURCE_EXHAUSTED: refused at the node's door with nothing done (admission);
    // repeated like the rest, as an integrator does.
    matches!(
        code,
        Code::ResourceExhausted
            | Code::Unavailable
            | Code::Aborted
            | Code::DeadlineExceeded
            | Code::Unknown
            | Code::Cancelled
    )
}

/// Repeats `call` (same request id inside) until it answers with anything but an
/// in-doubt code; gives up after a minute.
async fn until_definite<T, F, Fut>(what: &str, mut call: F) -> Result<T, tonic::Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match call().await {
            Err(s) if in_doubt(s.code()) => {
                assert!(
                    Instant::now() < deadline,
                    "{what} still in doubt after a minute: {s:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => return other,
        }
    }
}

/// Ningbo's hospital desk on a fresh connection: the previous one may lead to a killed
/// process, and a node that is down is UNAVAILABLE like any failed call.
async fn desk(nb: &TestNode) -> Result<Desk, tonic::Status> {
    let client = proto::hospital_service_client::HospitalServiceClient::connect(nb.url())
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    Ok(Desk {
        client,
        inst: inst::NB_H3.to_owned(),
    })
}

/// One hospital client: visits of its persons, opened, billed and settled one after
/// another until `stop`.
async fn client(
    (n, clients): (usize, usize),
    nb: Arc<TestNode>,
    persons: Arc<Vec<String>>,
    stop: Arc<AtomicBool>,
    acks: Arc<Mutex<Vec<Ack>>>,
) {
    let mut i = 0usize;
    while !stop.load(Ordering::SeqCst) {
        i += 1;
        let id = persons[(n + i * clients) % persons.len()].clone();
        let rid = format!("c{n}-v{i}");
        let visit = until_definite("OpenVisit", || async {
            let mut desk = desk(&nb).await?;
            desk.open(
                &format!("{rid}-open"),
                &id,
                HZ,
                Vk::Outpatient,
                "2026-03-10T09:00:00+08:00",
            )
            .await
        })
        .await;
        let Ok(visit) = visit else {
            // Refused (e.g. the home node down at admission): a definite answer.
            continue;
        };
        let fees = until_definite("UploadFees", || async {
            let mut desk = desk(&nb).await?;
            desk.fees(
                &format!("{rid}-fees"),
                &visit.visit_id,
                vec![line("1", "NB-A", "1", "1500.00", "1500.00")],
            )
            .await
        })
        .await;
        assert!(fees.is_ok(), "fees of {rid}: {fees:?}");
        let settled = until_definite("Settle", || async {
            let mut desk = desk(&nb).await?;
            desk.settle(&format!("{rid}-settle"), &visit.visit_id, false)
                .await
        })
        .await;
        match settled {
            // The home node was down and Hangzhou's policy refuses offline settlement:
            // the patient pays in full, nothing is committed anywhere.
            Ok(s) if s.state == "refused" => {
                assert_eq!(s.split.expect("split").fund_pay_sumamt, "0.00");
            }
            Ok(s) => {
                assert_eq!(s.state, "settled", "{s:?}");
                let split = s.split.expect("split");
                acks.lock().unwrap().push(Ack {
                    id_number: id.clone(),
                    settlement_id: s.settlement_id,
                    period: s.period,
                    hifp: m(&split.hifp_pay),
                    fund: m(&split.fund_pay_sumamt),
                });
            }
            Err(s) => panic!("{rid}: {s:?}"),
        }
    }
}

#[test]
fn sigkill_of_either_node_mid_load_loses_and_duplicates_nothing() {
    kill_mid_load(6, 12, 300, None);
}

/// The same with enough clients that Ningbo's claims travel to Hangzhou in batches
/// (CommitClaims): each node is killed while batches are in flight, and Ningbo's
/// metrics show that batches were sent.
#[test]
fn sigkill_mid_batch_loses_and_duplicates_nothing() {
    kill_mid_load(16, 24, 400, Some(free_port()));
}

/// CommitClaims calls Ningbo made to Hangzhou since it (re)started.
fn batches_sent(rt: &tokio::runtime::Runtime, metrics: std::net::SocketAddr) -> u64 {
    let text = rt
        .block_on(yidi_node::metrics::scrape(metrics))
        .expect("scrape Ningbo's metrics");
    let series =
        format!("yidi_peer_calls_total{{region=\"{NB}\",peer=\"{HZ}\",method=\"CommitClaims\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series}in\n{text}"))
}

/// `clients` hospital clients settle for `people` persons (ID sequence numbers from
/// `seq`) while Ningbo, Hangzhou and Ningbo again are killed; with `nb_metrics`, Ningbo
/// serves metrics there and at least one batch must have been sent.
fn kill_mid_load(clients: usize, people: u16, seq: u16, nb_metrics: Option<u16>) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let peers_dir = tempfile::tempdir().expect("temp dir");
    let metrics = nb_metrics.map(|p| std::net::SocketAddr::from(([127, 0, 0, 1], p)));
    let mut procs = NodeProcess::federation_with(&[HZ, NB], peers_dir.path(), |r| match metrics {
        Some(m) if r == NB => vec!["--metrics-listen".to_owned(), m.to_string()],
        _ => Vec::new(),
    });
    let hz = Arc::new(TestNode::remote(procs[0].addr(), HZ, procs[0].data_dir()));
    let nb = Arc::new(TestNode::remote(procs[1].addr(), NB, procs[1].data_dir()));

    let persons: Vec<String> = rt.block_on(async {
        publish_policies(&hz).await;
        publish_policies(&nb).await;
        institution(
            &nb,
            inst::NB_H3,
            proto::InstitutionKind::Hospital,
            proto::HospitalLevel::HospitalLevel3,
        )
        .await;
        standard_items(&nb, "NB").await;
        let mut ids = Vec::new();
        for n in 0..people {
            let id = person(
                &hz,
                &id_number(HZ, "1970-01-01", seq + n),
                It::Employee,
                Pt::InService,
                "0.00",
                false,
            )
            .await;
            filing(&hz, &id, Ft::LongTermResident, NB, &[], "2026-01-01").await;
            ids.push(id);
        }
        ids
    });
    let persons = Arc::new(persons);
    let stop = Arc::new(AtomicBool::new(false));
    let acks = Arc::new(Mutex::new(Vec::new()));
    let tasks: Vec<_> = (0..clients)
        .map(|n| {
            rt.spawn(client(
                (n, clients),
                Arc::clone(&nb),
                Arc::clone(&persons),
                Arc::clone(&stop),
                Arc::clone(&acks),
            ))
        })
        .collect();
    let acked = || acks.lock().unwrap().len();
    let mut clients = tasks;
    let mut wait_for = |more: usize| {
        let target = acked() + more;
        let deadline = Instant::now() + Duration::from_secs(60);
        while acked() < target {
            // A client that stopped has panicked: surface its message, not a timeout.
            if let Some(i) = clients
                .iter()
                .position(tokio::task::JoinHandle::is_finished)
            {
                let c = clients.swap_remove(i);
                if let Err(e) = rt.block_on(c)
                    && e.is_panic()
                {
                    std::panic::resume_unwind(e.into_panic());
                }
                panic!("a client stopped before the end");
            }
            assert!(Instant::now() < deadline, "no progress: {} acks", acked());
            std::thread::sleep(Duration::from_millis(10));
        }
    };

    // Kill the treatment node mid-load, then the home node, then the treatment node
    // again; the load goes on throughout.
    let started = Instant::now();
    let mut batches = 0;
    for victim in [1, 0, 1] {
        wait_for(15);
        if let (Some(m), 1) = (metrics, victim) {
            batches += batches_sent(&rt, m);
        }
        eprintln!(
            "{:?}: {} acknowledged; SIGKILL {}",
            started.elapsed(),
            acked(),
            [HZ, NB][victim]
        );
        procs[victim].kill();
        std::thread::sleep(Duration::from_millis(300));
        procs[victim].restart();
    }
    wait_for(15);
    if let Some(m) = metrics {
        batches += batches_sent(&rt, m);
        eprintln!("{batches} batches of claims sent");
        assert!(batches > 0, "no claims were sent in a batch");
    }
    eprintln!("{:?}: {} acknowledged; stop", started.elapsed(), acked());
    stop.store(true, Ordering::SeqCst);
    rt.block_on(async {
        for c in clients {
            c.await.expect("client task");
        }
    });
    let acks = acks.lock().unwrap().clone();
    assert!(acks.len() >= 60, "{} acknowledged", acks.len());
    rt.block_on(async {
        // Every acknowledged settlement, at both nodes, with its amount.
        let mut desk = Desk::at(&nb, inst::NB_H3).await;
        let mut peer = hz.peer().await;
        for a in &acks {
            let s = desk
                .get(&a.settlement_id)
                .await
                .expect("settlement at Ningbo");
            assert_eq!(s.state, "settled", "{a:?}");
            assert_eq!(m(&s.split.unwrap().fund_pay_sumamt), a.fund, "{a:?}");
            let c = peer
                .claim_status(proto::ClaimStatusRequest {
                    claim_id: a.settlement_id.clone(),
                })
                .await
                .expect("claim at Hangzhou")
                .into_inner();
            assert_eq!(c.state, "committed", "{a:?}");
        }
        // Each person's accumulators moved by exactly their acknowledged claims.
        let mut per_person: HashMap<&str, (Decimal, u64)> = HashMap::new();
        for a in &acks {
            let e = per_person.entry(a.id_number.as_str()).or_default();
            e.0 += a.hifp;
            e.1 += 1;
        }
        // A CommitClaim that outlived its caller's deadline may land after the treatment
        // node began to give up on it; the abandonment then finds it committed and the
        // claim is finished and acknowledged on the repeat. Should a claim ever be
        // reversed instead, it must be one never acknowledged, with its reversal, and
        // its pair must net to zero. Find any.
        let acked: HashSet<&str> = acks.iter().map(|a| a.settlement_id.as_str()).collect();
        let mut periods: Vec<&str> = acks.iter().map(|a| a.period.as_str()).collect();
        periods.sort_unstable();
        periods.dedup();
        let mut in_ledger = HashSet::new();
        for period in &periods {
            let d = period_digest(&hz, period, NB, "payable").await;
            in_ledger.extend(d.claim_ids);
        }
        let (mut late, mut late_ids, mut reversals) =
            (HashMap::<String, u64>::new(), HashSet::new(), HashSet::new());
        for id in in_ledger.iter().filter(|id| !acked.contains(id.as_str())) {
            let c = peer
                .claim_status(proto::ClaimStatusRequest {
                    claim_id: id.clone(),
                })
                .await
                .expect("claim status")
                .into_inner();
            if c.state == "reversed" {
                let s = desk.get(id).await.expect("late claim's intent at Ningbo");
                assert_eq!(s.state, "failed", "a late claim was never acknowledged: {s:?}");
                *late.entry(s.id_number).or_default() += 1;
                late_ids.insert(id.clone());
                reversals.insert(c.reversal_id);
            }
        }
        for id in in_ledger.iter().filter(|id| !acked.contains(id.as_str())) {
            assert!(
                late_ids.contains(id) || reversals.contains(id),
                "{id} is in Hangzhou's ledger but was neither acknowledged nor a reversed late commit"
            );
        }
        let late_total: u64 = late.values().sum();
        if late_total > 0 {
            eprintln!("{late_total} late commits were reversed by their abandonment");
        }

        // Each person's accumulators moved by exactly their acknowledged claims (a late
        // commit and its reversal add two versions and nothing else).
        for id in persons.iter() {
            let acc = accumulators(&hz, id, NB, inst::NB_H3).await;
            let (sum, n) = per_person.get(id.as_str()).copied().unwrap_or_default();
            let extra = 2 * late.get(id).copied().unwrap_or_default();
            assert_eq!(
                (m(&acc.pool_paid), acc.version),
                (sum, n + extra),
                "person {id}"
            );
        }
        // Both ledgers hold exactly the acknowledged claims (and any late pair): none
        // extra, none twice.
        let mut by_period: HashMap<&str, (u64, Decimal)> = HashMap::new();
        for a in &acks {
            let e = by_period.entry(a.period.as_str()).or_default();
            e.0 += 1;
            e.1 += a.fund;
        }
        let mut counted = 0;
        for (period, (count, sum)) in by_period {
            let payable = period_digest(&hz, period, NB, "payable").await;
            let receivable = period_digest(&nb, period, HZ, "receivable").await;
            for d in [&payable, &receivable] {
                assert_eq!(m(&d.sum), sum, "{period}: {d:?}");
                assert!(d.count >= count, "{period}: {d:?}");
            }
            counted += payable.count - count;
            assert_eq!(payable.count, receivable.count, "{period}");
            assert_eq!(payable.digest, receivable.digest);
        }
        assert_eq!(counted, 2 * late_total, "ledger records beyond the acknowledged");
    });
}
