//! Concurrency on three in-process nodes: one Hangzhou person settled at the same moment
//! in Ningbo and Wenzhou against one cap (the home node's compare-and-set keeps the
//! total within it), and the same request sent several times at once (one effect, one
//! answer).

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use tokio::task::JoinSet;
use tonic::Code;
use yidi_common::{
    money::{self, Money},
    proto::{self, FilingType as Ft, InsuranceType as It, PersonType as Pt, VisitKind as Vk},
};
use yidi_node::eligibility_cache::HOME_ANSWERED_WITHIN;
use yidi_tests::{
    fixtures::{
        Desk, VISIT_OPENED as ADMITTED, acc_tuple, accumulators, assert_split, fee_line as line,
        filed_employee, filing, id_number, inst, peer_calls, period_digest, person, three_cities,
    },
    harness::TestNode,
};

const HZ: &str = "330100";
const NB: &str = "330200";
const WZ: &str = "330300";
/// Chronic visits per treatment city.
const PER_CITY: usize = 12;

fn dec(s: &str) -> Money {
    money::parse(s, "amount", money::Sign::Any).unwrap_or_else(|e| panic!("{s:?}: {e}"))
}

/// Opens `PER_CITY` chronic visits of 5000.00 (one class-A line) at `desk`'s institution.
async fn chronic_visits(desk: &Desk, id: &str, item: &str) -> Vec<String> {
    let mut set = JoinSet::new();
    for i in 0..PER_CITY {
        let mut d = Desk {
            client: desk.client.clone(),
            inst: desk.inst.clone(),
        };
        let (id, item) = (id.to_owned(), item.to_owned());
        set.spawn(async move {
            let v = d
                .open(&format!("ov-{i}"), &id, HZ, Vk::Chronic, ADMITTED)
                .await
                .unwrap();
            d.fees(
                &format!("fees-{i}"),
                &v.visit_id,
                vec![line("1", &item, "1", "5000.00", "5000.00")],
            )
            .await
            .unwrap();
            v.visit_id
        });
    }
    set.join_all().await
}

/// The home node's status of a claim, asked as a peer would.
async fn claim_at_home(
    peer: &mut proto::peer_service_client::PeerServiceClient<tonic::transport::Channel>,
    claim_id: &str,
) -> proto::ClaimStatusResponse {
    peer.claim_status(proto::ClaimStatusRequest {
        claim_id: claim_id.to_owned(),
    })
    .await
    .unwrap()
    .into_inner()
}

/// Settles a visit, repeating the same request while the node reports a concurrent
/// change (ABORTED: the home node's compare-and-set lost and the retries ran out).
async fn settle_until_done(mut d: Desk, rid: String, visit: String) -> proto::Settlement {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        match d.settle(&rid, &visit, false).await {
            Ok(s) => return s,
            Err(e) if e.code() == Code::Aborted && Instant::now() < until => {
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            Err(e) => panic!("{rid}: {e:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_person_settled_at_once_in_two_cities_never_exceeds_the_chronic_cap() {
    let dir = tempfile::tempdir().unwrap();
    let fed = three_cities(dir.path(), |_, _| {}).await;
    let (hz, nb, wz) = (fed.node(HZ), fed.node(NB), fed.node(WZ));
    let id = person(
        hz,
        &id_number(HZ, "1958-12-12", 60),
        It::Employee,
        Pt::InService,
        "0.00",
        false,
    )
    .await;
    filing(hz, &id, Ft::LongTermResident, NB, &[], "2026-01-01").await;
    filing(hz, &id, Ft::LongTermResident, WZ, &[], "2026-01-01").await;
    let nb_desk = Desk::at(nb, inst::NB_H3).await;
    let wz_desk = Desk::at(wz, inst::WZ_H2).await;
    let nb_visits = chronic_visits(&nb_desk, &id, "NB-A").await;
    let wz_visits = chronic_visits(&wz_desk, &id, "WZ-A").await;

    // Hangzhou chronic care: no deductible; 85% at level 3 (Ningbo), 88% at level 2
    // (Wenzhou); chronic cap 30000.00. Alone, each 5000.00 visit would get 4250.00 or
    // 4400.00 from the pooled fund: 12 × 4250.00 + 12 × 4400.00 = 103800.00, far above
    // the cap. All 24 go at once.
    let mut set = JoinSet::new();
    for (desk, visits, city) in [(&nb_desk, &nb_visits, NB), (&wz_desk, &wz_visits, WZ)] {
        for (i, v) in visits.iter().enumerate() {
            let d = Desk {
                client: desk.client.clone(),
                inst: desk.inst.clone(),
            };
            let (rid, v) = (format!("settle-{i}"), v.clone());
            set.spawn(async move { (city, settle_until_done(d, rid, v).await) });
        }
    }
    let answers = set.join_all().await;
    assert_eq!(answers.len(), 2 * PER_CITY);

    // Every answer is a settlement whose split adds up: funds = pooled + serious illness,
    // personal = 5000.00 − funds; the pooled share is the visit's own ratio, what the cap
    // left, or nothing.
    let (mut hifp, mut hifmi) = (Money::ZERO, Money::ZERO);
    let mut fund_by_city = [Money::ZERO, Money::ZERO];
    let mut ids_by_city = [BTreeSet::new(), BTreeSet::new()];
    for (city, s) in &answers {
        assert_eq!(s.state, "settled", "{s:?}");
        let sp = s.split.as_ref().unwrap();
        let (p, m, f) = (
            dec(&sp.hifp_pay),
            dec(&sp.hifmi_pay),
            dec(&sp.fund_pay_sumamt),
        );
        assert_eq!(p + m, f, "{sp:?}");
        assert_eq!(dec(&sp.psn_part_amt), dec("5000.00") - f, "{sp:?}");
        let full = if *city == NB { "4250.00" } else { "4400.00" };
        assert!(p <= dec(full), "{sp:?}");
        hifp += p;
        hifmi += m;
        let c = usize::from(*city == WZ);
        fund_by_city[c] += f;
        ids_by_city[c].insert(s.settlement_id.clone());
    }
    // The cap holds exactly: 30000.00 from the pooled fund. The year's in-scope personal
    // share is 24 × 5000.00 − 30000.00 = 90000.00, of which the part above 20000.00 is in
    // the 60% serious-illness tier: 60% × 70000.00 = 42000.00 (every share is a multiple
    // of 50.00, so no claim rounds), whatever the order of the claims.
    assert_eq!(hifp, dec("30000.00"));
    assert_eq!(hifmi, dec("42000.00"));
    let acc = accumulators(hz, &id, NB, inst::NB_H3).await;
    assert_eq!(
        acc_tuple(&acc),
        (
            "30000.00",
            "0.00",
            "30000.00",
            "42000.00",
            "0.00",
            0,
            "120000.00",
            24
        )
    );

    // Both ledgers of each pair hold exactly the acknowledged claims, with their fund
    // shares; together 30000.00 + 42000.00 = 72000.00.
    let period = answers[0].1.period.clone();
    for (node, c) in [(nb, 0), (wz, 1)] {
        let recv = period_digest(node, &period, HZ, "receivable").await;
        let pay = period_digest(hz, &period, node.region.as_str(), "payable").await;
        assert_eq!(
            (recv.count, &recv.sum, &recv.digest),
            (pay.count, &pay.sum, &pay.digest)
        );
        assert_eq!(
            (recv.count, dec(&recv.sum)),
            (PER_CITY as u64, fund_by_city[c])
        );
        let ids: BTreeSet<String> = recv.claim_ids.iter().cloned().collect();
        assert_eq!(ids, ids_by_city[c]);
        let ids: BTreeSet<String> = pay.claim_ids.iter().cloned().collect();
        assert_eq!(ids, ids_by_city[c]);
    }
    assert_eq!(fund_by_city[0] + fund_by_city[1], dec("72000.00"));

    // Each acknowledged settlement is present at both nodes with the same split.
    let mut hz_peer = hz.peer().await;
    for (city, s) in &answers {
        let node: &TestNode = if *city == NB { nb } else { wz };
        let inst = if *city == NB {
            inst::NB_H3
        } else {
            inst::WZ_H2
        };
        let mut d = Desk::at(node, inst).await;
        assert_eq!(&d.get(&s.settlement_id).await.unwrap(), s);
        let st = claim_at_home(&mut hz_peer, &s.settlement_id).await;
        assert_eq!(st.state, "committed");
        assert_eq!(st.claim.unwrap().split.as_ref(), s.split.as_ref());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_request_sent_several_times_at_once_takes_effect_once() {
    let dir = tempfile::tempdir().unwrap();
    let fed = three_cities(dir.path(), |_, _| {}).await;
    let (hz, nb) = (fed.node(HZ), fed.node(NB));
    let id = filed_employee(hz, "1981-03-03", 61, "1000.00", NB).await;
    let desk = Desk::at(nb, inst::NB_H3).await;
    let copies = |n: usize| {
        (0..n)
            .map(|_| Desk {
                client: desk.client.clone(),
                inst: desk.inst.clone(),
            })
            .collect::<Vec<_>>()
    };

    // OpenVisit ×4 at once: one visit.
    let mut set = JoinSet::new();
    for mut d in copies(4) {
        let id = id.clone();
        set.spawn(async move { d.open("ov-1", &id, HZ, Vk::Outpatient, ADMITTED).await });
    }
    let opened: Vec<proto::Visit> = set
        .join_all()
        .await
        .into_iter()
        .map(|r| r.expect("open visit"))
        .collect();
    assert!(opened.iter().all(|v| *v == opened[0]), "{opened:?}");
    let visit = opened[0].visit_id.clone();

    // UploadFees ×4 at once: one set of lines.
    let mut set = JoinSet::new();
    for mut d in copies(4) {
        let visit = visit.clone();
        set.spawn(async move {
            d.fees(
                "fees-1",
                &visit,
                vec![line("1", "NB-A", "1", "2000.00", "2000.00")],
            )
            .await
        });
    }
    for r in set.join_all().await {
        let up = r.expect("upload fees");
        assert_eq!((up.lines.len(), up.total.as_str()), (1, "2000.00"));
    }

    // Settle ×4 at once: one settlement. A copy that finds the first still in flight may
    // be told to retry (ABORTED / UNAVAILABLE), never anything else; retried, it gets the
    // one answer. 2000.00: deductible 1000.00, pooled 70% = 700.00, account 1000.00.
    let mut set = JoinSet::new();
    for mut d in copies(4) {
        let visit = visit.clone();
        set.spawn(async move {
            let until = Instant::now() + Duration::from_secs(20);
            loop {
                match d.settle("settle-1", &visit, true).await {
                    Ok(s) => return s,
                    Err(e)
                        if matches!(e.code(), Code::Aborted | Code::Unavailable)
                            && Instant::now() < until =>
                    {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err(e) => panic!("a concurrent duplicate got {e:?}"),
                }
            }
        });
    }
    let answers = set.join_all().await;
    assert!(answers.iter().all(|s| *s == answers[0]), "{answers:?}");
    let s = &answers[0];
    assert_eq!(
        (
            s.state.as_str(),
            s.split.as_ref().unwrap().fund_pay_sumamt.as_str(),
            s.split.as_ref().unwrap().acct_pay.as_str()
        ),
        ("settled", "700.00", "1000.00")
    );
    let mut d = copies(1).pop().unwrap();
    let records = d.list().await;
    assert_eq!(records.len(), 1, "{records:#?}");
    let acc = accumulators(hz, &id, NB, inst::NB_H3).await;
    assert_eq!(
        acc_tuple(&acc),
        (
            "700.00", "700.00", "0.00", "0.00", "1000.00", 0, "2000.00", 1
        )
    );
    let recv = period_digest(nb, &s.period, HZ, "receivable").await;
    let pay = period_digest(hz, &s.period, NB, "payable").await;
    assert_eq!((recv.count, recv.sum.as_str()), (1, "700.00"));
    assert_eq!((recv.digest, recv.claim_ids), (pay.digest, pay.claim_ids));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_provisional_settlements_stay_within_the_exposure_limit() {
    let dir = tempfile::tempdir().unwrap();
    let mut fed = three_cities(dir.path(), |_, _| {}).await;
    let id = person(
        fed.node(WZ),
        &id_number(WZ, "1964-04-04", 62),
        It::Employee,
        Pt::InService,
        "0.00",
        false,
    )
    .await;
    filing(
        fed.node(WZ),
        &id,
        Ft::LongTermResident,
        NB,
        &[],
        "2026-01-01",
    )
    .await;
    let desk = Desk::at(fed.node(NB), inst::NB_H3).await;
    // Four admissions of 135000.00 at Ningbo's level-3 hospital, prepared while Wenzhou
    // answers. From the eligibility kept at admission (no admission yet this year) each
    // settles to: deductible 700.00, pooled 82% × 134300.00 = 110126.00.
    let mut visits = Vec::new();
    for i in 0..4 {
        let mut d = Desk {
            client: desk.client.clone(),
            inst: desk.inst.clone(),
        };
        let v = d
            .open(&format!("adm-{i}"), &id, WZ, Vk::Inpatient, ADMITTED)
            .await
            .unwrap();
        d.fees(
            &format!("fees-{i}"),
            &v.visit_id,
            vec![line("1", "NB-A", "1", "135000.00", "135000.00")],
        )
        .await
        .unwrap();
        d.discharge(&format!("dis-{i}"), &v.visit_id).await.unwrap();
        let pre = d.pre_settle(&v.visit_id, false).await.unwrap();
        assert_eq!(pre.split.unwrap().fund_pay_sumamt, "110126.00");
        visits.push(v.visit_id);
    }
    fed.stop(WZ).await;

    // All four at once while Wenzhou is down. Its exposure limit is 300000.00: two
    // (220252.00) fit, a third (330378.00) does not — whatever the interleaving.
    let mut set = JoinSet::new();
    for (i, v) in visits.iter().enumerate() {
        let mut d = Desk {
            client: desk.client.clone(),
            inst: desk.inst.clone(),
        };
        let v = v.clone();
        set.spawn(async move { d.settle(&format!("settle-{i}"), &v, false).await.unwrap() });
    }
    let answers = set.join_all().await;
    let mut states: Vec<&str> = answers.iter().map(|s| s.state.as_str()).collect();
    states.sort_unstable();
    assert_eq!(
        states,
        ["provisional", "provisional", "refused", "refused"],
        "{answers:#?}"
    );
    let ob = yidi_tests::fixtures::outbox(fed.node(NB)).await;
    assert_eq!(
        (ob.depth, ob.exposure[0].amount.as_str()),
        (2, "220252.00"),
        "{ob:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settle_prices_with_an_answer_it_has_and_reprices_when_another_city_settled_since() {
    let dir = tempfile::tempdir().unwrap();
    let prebound = yidi_node::prebound::Prebound::default();
    let metrics = prebound.loopback();
    let fed = three_cities(dir.path(), |r, c| {
        if r == NB {
            c.metrics_listen = Some(metrics);
            c.prebound = prebound.clone();
        }
    })
    .await;
    let (hz, nb, wz) = (fed.node(HZ), fed.node(NB), fed.node(WZ));
    let id = person(
        hz,
        &id_number(HZ, "1961-06-06", 61),
        It::Employee,
        Pt::InService,
        "0.00",
        false,
    )
    .await;
    filing(hz, &id, Ft::LongTermResident, NB, &[], "2026-01-01").await;
    filing(hz, &id, Ft::LongTermResident, WZ, &[], "2026-01-01").await;
    let mut nb_desk = Desk::at(nb, inst::NB_H3).await;
    let mut wz_desk = Desk::at(wz, inst::WZ_H2).await;
    // Opening a visit asks the home node for eligibility (kept with the visit).
    let chronic = async |d: &mut Desk, tag: &str, item: &str, amount: &str| {
        let v = d
            .open(&format!("ov-{tag}"), &id, HZ, Vk::Chronic, ADMITTED)
            .await
            .unwrap();
        d.fees(
            &format!("fees-{tag}"),
            &v.visit_id,
            vec![line("1", item, "1", amount, amount)],
        )
        .await
        .unwrap();
        v.visit_id
    };
    // Ningbo's calls to Hangzhou: eligibility, commits, commits refused as stale.
    let calls = async || {
        let body = yidi_node::metrics::scrape(metrics).await.unwrap();
        (
            peer_calls(&body, HZ, "CheckEligibility", None),
            peer_calls(&body, HZ, "CommitClaim", None),
            peer_calls(&body, HZ, "CommitClaim", Some("aborted")),
        )
    };
    // A 5000.00 claim at Ningbo once the pooled cap is used up: the serious-illness
    // fund pays `hifmi` (nothing while the year's personal share stays within its
    // threshold of 20000.00), the patient `psn` = 5000.00 − `hifmi`.
    let after_the_cap = |s: &proto::Settlement, hifmi: &str, psn: &str| {
        assert_eq!(s.state, "settled");
        assert_split(
            s.split.as_ref().unwrap(),
            &[
                ("medfee_sumamt", "5000.00"),
                ("inscp_scp_amt", "5000.00"),
                ("hifmi_pay", hifmi),
                ("fund_pay_sumamt", hifmi),
                ("psn_part_amt", psn),
                ("psn_cash_pay", psn),
            ],
        );
    };

    // Hangzhou chronic care: no deductible, 85% at Ningbo's level 3, 88% at Wenzhou's
    // level 2, pooled cap 30000.00. A 5000.00 visit opened, pre-settled and settled at
    // Ningbo: 4250.00 from the fund. The Settle priced with the PreSettle's answer.
    let v1 = chronic(&mut nb_desk, "nb-1", "NB-A", "5000.00").await;
    let pre = nb_desk.pre_settle(&v1, false).await.unwrap();
    let s1 = nb_desk.settle("settle-nb-1", &v1, false).await.unwrap();
    assert_eq!(s1.split, pre.split);
    assert_eq!(s1.split.as_ref().unwrap().fund_pay_sumamt, "4250.00");
    assert_eq!(calls().await, (2, 1, 0));

    // Two more Ningbo visits, the first pre-settled at 4250.00 — then Wenzhou settles
    // 30000.00 for the same person: 88% would be 26400.00, the cap leaves 25750.00.
    let v2 = chronic(&mut nb_desk, "nb-2", "NB-A", "5000.00").await;
    let pre = nb_desk.pre_settle(&v2, false).await.unwrap();
    assert_eq!(pre.split.unwrap().fund_pay_sumamt, "4250.00");
    let v3 = chronic(&mut nb_desk, "nb-3", "NB-A", "5000.00").await;
    let w1 = chronic(&mut wz_desk, "wz-1", "WZ-A", "30000.00").await;
    let sw = wz_desk.settle("settle-wz-1", &w1, false).await.unwrap();
    assert_eq!(sw.split.as_ref().unwrap().hifp_pay, "25750.00");
    assert_eq!(calls().await, (5, 1, 0));

    // Ningbo settles the pre-settled visit with the PreSettle's answer; Hangzhou
    // refuses it (the accumulators moved), Ningbo asks afresh and settles what the cap
    // leaves: nothing from the fund.
    let s2 = nb_desk.settle("settle-nb-2", &v2, false).await.unwrap();
    after_the_cap(&s2, "0.00", "5000.00");
    assert_eq!(calls().await, (6, 3, 1));
    // The third visit's opening answer predates a claim Ningbo itself committed since:
    // known to be stale, it is not tried — Ningbo asks afresh.
    let s3 = nb_desk.settle("settle-nb-3", &v3, false).await.unwrap();
    after_the_cap(&s3, "0.00", "5000.00");
    assert_eq!(calls().await, (7, 4, 1));

    // The year's personal share is 750.00 + 4250.00 + 2 × 5000.00 = 15000.00. A fourth
    // Ningbo visit is opened; then Wenzhou settles 3000.00 (nothing from the fund: the
    // share, 18000.00 now, is still below the serious-illness threshold of 20000.00).
    // Priced from the opening's answer the visit's 5000.00 would stay within the
    // threshold; Hangzhou refuses that price, and the fresh one pays 60% of the
    // 3000.00 above it.
    let v4 = chronic(&mut nb_desk, "nb-4", "NB-A", "5000.00").await;
    let w2 = chronic(&mut wz_desk, "wz-2", "WZ-A", "3000.00").await;
    let sw = wz_desk.settle("settle-wz-2", &w2, false).await.unwrap();
    assert_eq!(sw.split.as_ref().unwrap().fund_pay_sumamt, "0.00");
    let s4 = nb_desk.settle("settle-nb-4", &v4, false).await.unwrap();
    after_the_cap(&s4, "1800.00", "3200.00");
    assert_eq!(calls().await, (9, 6, 2));

    // A visit opened now settles from its opening's answer, which is current: no
    // eligibility call at settlement. All of it is above the threshold: 60% × 5000.00.
    let v5 = chronic(&mut nb_desk, "nb-5", "NB-A", "5000.00").await;
    let s5 = nb_desk.settle("settle-nb-5", &v5, false).await.unwrap();
    after_the_cap(&s5, "3000.00", "2000.00");
    assert_eq!(calls().await, (10, 7, 2));

    // A home node that has not answered Ningbo for a while is asked first (had it hung,
    // a failed eligibility call would let the offline rule settle rather than leave a
    // CommitClaim in doubt): the opening's answer is not used.
    let v6 = chronic(&mut nb_desk, "nb-6", "NB-A", "5000.00").await;
    tokio::time::sleep(HOME_ANSWERED_WITHIN + Duration::from_millis(300)).await;
    let s6 = nb_desk.settle("settle-nb-6", &v6, false).await.unwrap();
    after_the_cap(&s6, "3000.00", "2000.00");
    assert_eq!(calls().await, (12, 8, 2));

    let acc = accumulators(hz, &id, NB, inst::NB_H3).await;
    assert_eq!(
        (
            acc.pool_paid.as_str(),
            acc.serious_illness_paid.as_str(),
            acc.version
        ),
        ("30000.00", "7800.00", 8)
    );
    let mut hz_peer = hz.peer().await;
    for s in [&s1, &s2, &s3, &s4, &s5, &s6] {
        let st = claim_at_home(&mut hz_peer, &s.settlement_id).await;
        assert_eq!(st.state, "committed");
        assert_eq!(st.claim.unwrap().split.as_ref(), s.split.as_ref());
    }
}
