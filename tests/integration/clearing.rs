//! Clearing end to end: three in-process nodes and the coordinator. A full round with
//! exact amounts (claims in both directions, an audit deduction, a reserve top-up), an
//! injected mismatch → dispute → resolution carrying it to the next round, a node down
//! during collection, the coordinator restarted mid-round with an operator confirmation,
//! late claims landing in the next round, and no personal data at the coordinator; a
//! round aborted before confirmation, its records released (at a node that was down, by
//! the next round) and cleared by the next round to the fen.

use std::time::Duration;

use rust_decimal::Decimal;
use tonic::{Code, transport::Channel};
use yidi_common::{
    money,
    proto::{
        self, CatalogueClass as Cc, FilingType as Ft, HospitalLevel as Hl, InstitutionKind as Ik,
        InsuranceType as It, PersonType as Pt,
        clearing_participant_client::ClearingParticipantClient,
        coordinator_service_client::CoordinatorServiceClient,
    },
};
use yidi_tests::{
    fixtures::{filing, id_number, institution, item, person, publish_policies},
    harness::{Federation, TestCoordinator, mid_period},
};

const HZ: &str = "330100";
const NB: &str = "330200";
const WZ: &str = "330300";

fn m(s: &str) -> Decimal {
    money::parse(s, "amount", money::Sign::Any).unwrap()
}

/// Every node has a level-3 hospital `H<region>` and the same three catalogue items.
async fn prepare(fed: &Federation) {
    for n in &fed.nodes {
        publish_policies(n).await;
        institution(
            n,
            &format!("H{}", n.region),
            Ik::Hospital,
            Hl::HospitalLevel3,
        )
        .await;
        item(n, "DRUG-A", Cc::A, "0", "").await;
        item(n, "DRUG-B", Cc::B, "0.10", "").await;
        item(n, "SELF-C", Cc::C, "0", "").await;
    }
}

/// A retired employee of `home`, resettled in `treatment`, is admitted and discharged
/// there and settles a bill; returns the settlement.
async fn inpatient(
    fed: &Federation,
    home: &str,
    treatment: &str,
    seq: u16,
    amount_a: &str,
) -> proto::Settlement {
    let id = person(
        fed.node(home),
        &id_number(home, "1948-06-01", seq),
        It::Employee,
        Pt::Retired,
        "0.00",
        false,
    )
    .await;
    filing(
        fed.node(home),
        &id,
        Ft::ResettledRetiree,
        treatment,
        &[],
        "2026-01-01",
    )
    .await;
    let t = fed.node(treatment);
    let inst = format!("H{treatment}");
    let mut h = t.hospital().await;
    let rid = |s: &str| format!("{s}-{home}-{treatment}-{seq}");
    let v = h
        .open_visit(proto::OpenVisitRequest {
            request_id: rid("open"),
            institution_code: inst.clone(),
            id_number: id.clone(),
            home_region: home.into(),
            visit_kind: proto::VisitKind::Inpatient as i32,
            external_visit_no: rid("ext"),
            admitted_at: "2026-05-02T08:00:00+08:00".into(),
            diagnosis_code: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    h.upload_fees(proto::UploadFeesRequest {
        request_id: rid("fees"),
        institution_code: inst.clone(),
        visit_id: v.visit_id.clone(),
        lines: vec![proto::FeeLine {
            line_no: "1".into(),
            item_code: "DRUG-A".into(),
            quantity: "1".into(),
            unit_price: amount_a.into(),
            amount: amount_a.into(),
            service_date: String::new(),
        }],
    })
    .await
    .unwrap();
    h.close_visit(proto::CloseVisitRequest {
        request_id: rid("close"),
        institution_code: inst.clone(),
        visit_id: v.visit_id.clone(),
        discharged_at: String::new(),
    })
    .await
    .unwrap();
    h.settle(proto::SettleRequest {
        request_id: rid("settle"),
        institution_code: inst,
        visit_id: v.visit_id,
        use_account: false,
    })
    .await
    .unwrap()
    .into_inner()
}

fn fund(s: &proto::Settlement) -> Decimal {
    m(&s.split.as_ref().unwrap().fund_pay_sumamt)
}

async fn wait_outboxes(fed: &Federation) {
    for n in &fed.nodes {
        let mut admin = n.admin().await;
        for _ in 0..300 {
            if admin
                .get_outbox(proto::GetOutboxRequest { list: 0 })
                .await
                .unwrap()
                .into_inner()
                .depth
                == 0
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn rr(id: &str) -> proto::RoundRequest {
    proto::RoundRequest {
        request_id: String::new(),
        round_id: id.into(),
    }
}

async fn open(c: &mut CoordinatorServiceClient<Channel>, rid: &str, period: &str) -> proto::Round {
    c.open_round(proto::OpenRoundRequest {
        request_id: rid.into(),
        period: period.into(),
        early: true,
        allow_empty: false,
    })
    .await
    .unwrap()
    .into_inner()
}

async fn pay_all(c: &mut CoordinatorServiceClient<Channel>, round: &str) -> proto::Round {
    let st = c.get_statement(rr(round)).await.unwrap().into_inner();
    let mut last = None;
    for (i, ins) in st.instructions.iter().enumerate() {
        last = Some(
            c.record_transfer(proto::RecordTransferRequest {
                request_id: format!("{round}-t{i}"),
                round_id: round.into(),
                from_region: ins.from_region.clone(),
                to_region: ins.to_region.clone(),
                amount: ins.amount.clone(),
                reference: format!("BANK-{round}-{i}"),
            })
            .await
            .unwrap()
            .into_inner(),
        );
    }
    last.unwrap_or_default()
}

/// Writes a ledger record straight into a node's store, as a delivery that has reached
/// only one side would leave it.
fn inject(node_dir: &std::path::Path, side: &str, counterparty: &str, period: &str) {
    let db = rusqlite::Connection::open(node_dir.join("node.db")).unwrap();
    db.busy_timeout(Duration::from_secs(5)).unwrap();
    db.execute(
        "INSERT INTO ledger (entry_id, side, counterparty, period, kind, claim_id, amount_fen, created_at) \
         VALUES ('330200-S-INJECTED', ?1, ?2, ?3, 'claim', '330200-S-INJECTED', 12345, '2026-05-03T00:00:00+08:00')",
        [side, counterparty, period],
    )
    .unwrap();
}

/// A round as a node's store has it: its state there and the records it holds.
async fn round_at(fed: &Federation, region: &str, round_id: &str) -> Option<(String, u64)> {
    fed.node(region)
        .admin()
        .await
        .list_clearing_rounds(proto::ListClearingRoundsRequest {})
        .await
        .unwrap()
        .into_inner()
        .rounds
        .into_iter()
        .find(|r| r.round_id == round_id)
        .map(|r| (r.state, r.records))
}

fn net_of(st: &proto::Statement, region: &str) -> Decimal {
    st.nets
        .iter()
        .find(|n| n.region == region)
        .map(|n| m(&n.net))
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_round_dispute_late_claims_and_privacy() {
    let dir = tempfile::tempdir().unwrap();
    let mut fed = Federation::start(dir.path(), &[HZ, NB, WZ]).await;
    prepare(&fed).await;

    // Claims: Hangzhou's and Wenzhou's retirees treated in Ningbo, Ningbo's in Hangzhou.
    let hz_at_nb = inpatient(&fed, HZ, NB, 1, "10000.00").await;
    let wz_at_nb = inpatient(&fed, WZ, NB, 2, "6000.00").await;
    let nb_at_hz = inpatient(&fed, NB, HZ, 3, "3000.00").await;
    // 10000 in scope − 800 deductible (Hangzhou level 3, first admission) = 9200 × 88% (retiree).
    assert_eq!(hz_at_nb.split.as_ref().unwrap().fund_pay_sumamt, "8096.00");
    let period = hz_at_nb.period.clone();

    // Ningbo's audit deducts 96.00 from the Hangzhou claim; Hangzhou tops up its reserve
    // in Ningbo by 5000.00 (paid through this round), alarm below 6000.00.
    let nb = fed.node(NB);
    let d = nb
        .admin()
        .await
        .record_deduction(proto::RecordDeductionRequest {
            request_id: "ded-1".into(),
            settlement_id: hz_at_nb.settlement_id.clone(),
            amount: "96.00".into(),
            reason: "duplicate lab test".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((d.amount.as_str(), d.home_region.as_str()), ("96.00", HZ));
    let over = nb
        .admin()
        .await
        .record_deduction(proto::RecordDeductionRequest {
            request_id: "ded-2".into(),
            settlement_id: hz_at_nb.settlement_id.clone(),
            amount: "8000.01".into(),
            reason: "x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(over.code(), Code::InvalidArgument);
    let r = fed
        .node(HZ)
        .admin()
        .await
        .record_reserve(proto::RecordReserveRequest {
            request_id: "res-1".into(),
            counterparty: NB.into(),
            kind: "topup".into(),
            amount: "5000.00".into(),
            alarm_threshold: "6000.00".into(),
            note: "2026 reserve".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.balance.as_str(), r.alarm), ("5000.00", true));
    wait_outboxes(&fed).await;

    // The hospital statement: fund share minus deductions.
    let hs = nb
        .admin()
        .await
        .hospital_statement(proto::HospitalStatementRequest {
            institution_code: "H330200".into(),
            period: period.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let nb_fund = fund(&hz_at_nb) + fund(&wz_at_nb);
    assert_eq!(m(&hs.fund_pay_sumamt), nb_fund);
    assert_eq!(
        (hs.deductions.as_str(), m(&hs.payable)),
        ("96.00", nb_fund - m("96.00"))
    );

    // Inject a mismatch: a record Ningbo has and Hangzhou has not received yet.
    inject(&dir.path().join(NB), "receivable", HZ, &period);

    // Wenzhou is down when the round starts: collection waits and names it.
    fed.stop(WZ).await;
    let coord =
        TestCoordinator::start(dir.path().join("coordinator"), fed.peers_file.clone()).await;
    let mut c = coord.client().await;
    let round = open(&mut c, "open-1", &period).await;
    let r = c.run_round(rr(&round.round_id)).await.unwrap().into_inner();
    assert_eq!(
        (r.state.as_str(), r.missing.as_slice()),
        ("COLLECTING", [WZ.to_owned()].as_slice())
    );
    assert_eq!(
        c.open_round(proto::OpenRoundRequest {
            request_id: "open-2".into(),
            period: period.clone(),
            early: true,
            allow_empty: false,
        })
        .await
        .unwrap_err()
        .code(),
        Code::FailedPrecondition
    );
    fed.restart(WZ, |_| {}).await;

    // The mismatch: disputed, drilled down to the one record, resolved by carrying it.
    let r = c.run_round(rr(&round.round_id)).await.unwrap().into_inner();
    assert_eq!(r.state, "DISPUTED", "{r:?}");
    let disputes = c
        .list_disputes(rr(&round.round_id))
        .await
        .unwrap()
        .into_inner()
        .disputes;
    assert_eq!(disputes.len(), 1);
    assert_eq!(
        (disputes[0].creditor.as_str(), disputes[0].debtor.as_str()),
        (NB, HZ)
    );
    assert_eq!(
        disputes[0].only_at_creditor,
        vec!["330200-S-INJECTED".to_owned()]
    );
    assert!(disputes[0].only_at_debtor.is_empty());

    // The drill-down pages through a node's frozen records: one record per page gives
    // the same records, in order, as one default page.
    let mut cp = ClearingParticipantClient::new(fed.node(NB).channel().await);
    let req = |after: &str, limit: u32| proto::ListClaimIdsRequest {
        round_id: round.round_id.clone(),
        counterparty: HZ.into(),
        side: "receivable".into(),
        after: after.into(),
        limit,
    };
    let whole = cp.list_claim_ids(req("", 0)).await.unwrap().into_inner();
    assert!(whole.next_after.is_empty());
    assert!(whole.claims.len() >= 2, "{whole:?}");
    assert!(
        whole
            .claims
            .iter()
            .any(|c| c.entry_id == "330200-S-INJECTED")
    );
    let (mut paged, mut after) = (Vec::new(), String::new());
    loop {
        let page = cp
            .list_claim_ids(req(&after, 1))
            .await
            .unwrap()
            .into_inner();
        assert!(page.claims.len() <= 1);
        paged.extend(page.claims);
        if page.next_after.is_empty() {
            break;
        }
        after = page.next_after;
    }
    assert_eq!(paged, whole.claims);
    let too_many = cp.list_claim_ids(req("", 50_001)).await.unwrap_err();
    assert_eq!(too_many.code(), Code::InvalidArgument, "{too_many:?}");

    let r = c
        .resolve_disputes(rr(&round.round_id))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.state, "CONFIRMED", "{r:?}");

    // The statement, to the fen: Ningbo is owed (Hangzhou's claim − deduction + reserve
    // top-up) by Hangzhou and Wenzhou's claim by Wenzhou; it owes Hangzhou its own claim.
    let st = c
        .get_statement(rr(&round.round_id))
        .await
        .unwrap()
        .into_inner();
    let hz_owes_nb = fund(&hz_at_nb) - m("96.00") + m("5000.00");
    assert_eq!(
        net_of(&st, NB),
        hz_owes_nb + fund(&wz_at_nb) - fund(&nb_at_hz)
    );
    assert_eq!(net_of(&st, HZ), fund(&nb_at_hz) - hz_owes_nb);
    assert_eq!(net_of(&st, WZ), -fund(&wz_at_nb));
    assert_eq!(
        st.nets.iter().map(|n| m(&n.net)).sum::<Decimal>(),
        Decimal::ZERO
    );
    assert_eq!(
        (st.bilateral_transfers, st.netted_transfers),
        (2, st.instructions.len() as u32)
    );
    assert_eq!(st.clearing_account, "330000");
    assert!(st.reserves.iter().any(|r| r.home_region == HZ
        && r.treatment_region == NB
        && r.balance == "5000.00"
        && r.alarm));
    let paid_in: Decimal = st
        .instructions
        .iter()
        .filter(|i| i.to_region == "330000")
        .map(|i| m(&i.amount))
        .sum();
    let paid_out: Decimal = st
        .instructions
        .iter()
        .filter(|i| i.from_region == "330000")
        .map(|i| m(&i.amount))
        .sum();
    assert_eq!(paid_in, paid_out);

    // A transfer that is not an instruction is refused; recording them all settles.
    let bad = c
        .record_transfer(proto::RecordTransferRequest {
            request_id: "bad".into(),
            round_id: round.round_id.clone(),
            from_region: HZ.into(),
            to_region: "330000".into(),
            amount: "1.00".into(),
            reference: "X".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    let r = pay_all(&mut c, &round.round_id).await;
    assert_eq!(r.state, "SETTLED");
    assert_eq!(r.cleared, vec![HZ.to_owned(), NB.to_owned(), WZ.to_owned()]);

    // Every node's ledger matches the statement; only the injected record is uncleared.
    for n in &fed.nodes {
        let l = n
            .admin()
            .await
            .get_ledger(proto::GetLedgerRequest {
                period: period.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        let injected = if n.region.as_str() == NB {
            m("123.45")
        } else {
            Decimal::ZERO
        };
        assert_eq!(
            m(&l.net) - injected,
            net_of(&st, n.region.as_str()),
            "ledger of {}",
            n.region
        );
        let rounds = n
            .admin()
            .await
            .list_clearing_rounds(proto::ListClearingRoundsRequest {})
            .await
            .unwrap()
            .into_inner()
            .rounds;
        assert_eq!(
            (
                rounds[0].state.as_str(),
                rounds[0].statement_digest.as_str()
            ),
            ("cleared", st.digest.as_str())
        );
    }

    // The carried record reaches Hangzhou after the round: both sides now have it.
    inject(&dir.path().join(HZ), "payable", NB, &period);

    // A late claim of the cleared period goes into the next round, with the carried record.
    let late = inpatient(&fed, HZ, NB, 4, "2000.00").await;
    assert_eq!(late.period, period);
    let next = yidi_common::period::Period::parse(&period, "p")
        .unwrap()
        .next()
        .to_string();
    // The month before the cleared one is never opened again.
    let p = yidi_common::period::Period::parse(&period, "p").unwrap();
    let before = if p.month() == 1 {
        format!("{}-12", p.year() - 1)
    } else {
        format!("{}-{:02}", p.year(), p.month() - 1)
    };
    let e = c
        .open_round(open_req("open-3", &before, false, false))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(
        e.message()
            .contains(&format!("period {period} is already cleared")),
        "{e:?}"
    );

    // The next period cannot be opened before it begins, early or not.
    let future = c
        .open_round(proto::OpenRoundRequest {
            request_id: "open-next-too-soon".into(),
            period: next.clone(),
            early: true,
            allow_empty: false,
        })
        .await
        .unwrap_err();
    assert_eq!(future.code(), Code::FailedPrecondition, "{future:?}");
    assert!(
        future
            .message()
            .contains(&format!("period {next} is in the future"))
            && future
                .message()
                .contains(&format!("current period is {period}")),
        "{future:?}"
    );

    // A month on (the coordinator's clock in the next period), the coordinator restarts
    // mid-round; Ningbo's operator confirms by hand.
    let coord = coord.restart_in(fed.peers_file.clone(), &next).await;
    let mut c = coord.client().await;
    fed.stop(NB).await;
    fed.restart(NB, |c| c.clearing_auto_confirm = false).await;
    let round2 = open(&mut c, "open-4", &next).await;
    let r = c
        .run_round(rr(&round2.round_id))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (r.state.as_str(), r.missing.as_slice()),
        ("STATEMENT_ISSUED", [NB.to_owned()].as_slice()),
        "{r:?}"
    );
    let st2 = c
        .get_statement(rr(&round2.round_id))
        .await
        .unwrap()
        .into_inner();
    // Carried and late: Hangzhou owes Ningbo the injected 123.45 and the late claim.
    assert_eq!(net_of(&st2, NB), fund(&late) + m("123.45"));
    coord.stop().await;
    let coord =
        TestCoordinator::start(dir.path().join("coordinator"), fed.peers_file.clone()).await;
    let mut c = coord.client().await;
    assert_eq!(
        c.get_round(rr(&round2.round_id))
            .await
            .unwrap()
            .into_inner()
            .state,
        "STATEMENT_ISSUED"
    );
    fed.node(NB)
        .admin()
        .await
        .confirm_clearing(proto::ConfirmClearingRequest {
            request_id: "ok".into(),
            round_id: round2.round_id.clone(),
            statement_digest: st2.digest.clone(),
            note: "checked".into(),
        })
        .await
        .unwrap();
    let r = c
        .run_round(rr(&round2.round_id))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.state, "CONFIRMED");
    assert_eq!(pay_all(&mut c, &round2.round_id).await.state, "SETTLED");

    // The coordinator's store holds no personal data: no ID number, name or card.
    let coord_db = std::fs::read(dir.path().join("coordinator").join("coordinator.db")).unwrap();
    let wal = std::fs::read(dir.path().join("coordinator").join("coordinator.db-wal"))
        .unwrap_or_default();
    for s in [&hz_at_nb, &wz_at_nb, &nb_at_hz, &late] {
        for needle in [
            s.id_number.clone(),
            format!("测试{}", &s.id_number[14..]),
            format!("C{}", &s.id_number[6..]),
        ] {
            let b = needle.as_bytes();
            assert!(
                !coord_db.windows(b.len()).any(|w| w == b) && !wal.windows(b.len()).any(|w| w == b),
                "coordinator stores {needle}"
            );
        }
    }
    coord.stop().await;
}

/// AbortRound before any confirmation: every reachable node releases the round's
/// records at once, a node that was down releases them when the next round freezes, the
/// round ends ABORTED for good, and the next round of the period clears the very same
/// records to the fen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_round_releases_its_records_for_the_next_round() {
    let dir = tempfile::tempdir().unwrap();
    // Operators confirm by hand, so that the round waits at its statement.
    let mut fed = Federation::start_with(dir.path(), &[HZ, NB, WZ], |_, c| {
        c.clearing_auto_confirm = false;
    })
    .await;
    prepare(&fed).await;
    let hz_at_nb = inpatient(&fed, HZ, NB, 21, "10000.00").await;
    let nb_at_wz = inpatient(&fed, NB, WZ, 22, "4000.00").await;
    // 10000 − 800 deductible = 9200 × 88 % (retiree, Hangzhou's policy).
    assert_eq!(fund(&hz_at_nb), m("8096.00"));
    wait_outboxes(&fed).await;
    let period = hz_at_nb.period.clone();

    let coord =
        TestCoordinator::start(dir.path().join("coordinator"), fed.peers_file.clone()).await;
    let mut c = coord.client().await;
    let first = open(&mut c, "open-a", &period).await;
    let r = c.run_round(rr(&first.round_id)).await.unwrap().into_inner();
    assert_eq!(r.state, "STATEMENT_ISSUED", "{r:?}");
    let st1 = c
        .get_statement(rr(&first.round_id))
        .await
        .unwrap()
        .into_inner();
    let expected = [
        (HZ, -fund(&hz_at_nb)),
        (NB, fund(&hz_at_nb) - fund(&nb_at_wz)),
        (WZ, fund(&nb_at_wz)),
    ];
    for (region, net) in expected {
        assert_eq!(net_of(&st1, region), net, "{region} in {st1:?}");
    }

    // Wenzhou is down when the operator aborts: best effort, the round still ends.
    fed.stop(WZ).await;
    let aborted = c
        .abort_round(rr(&first.round_id))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(aborted.state, "ABORTED", "{aborted:?}");
    for region in [HZ, NB] {
        assert_eq!(
            round_at(&fed, region, &first.round_id).await,
            Some(("released".to_owned(), 0)),
            "{region}"
        );
    }
    // Aborted is final: not aborted again, and running it only shows it.
    let again = c.abort_round(rr(&first.round_id)).await.unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition, "{again:?}");
    let shown = c.run_round(rr(&first.round_id)).await.unwrap().into_inner();
    assert_eq!(shown.state, "ABORTED", "{shown:?}");

    // Wenzhou returns still holding the first round's records; the next round frees
    // them there and clears the same records.
    fed.restart(WZ, |c| c.clearing_auto_confirm = false).await;
    let second = open(&mut c, "open-b", &period).await;
    let r = c
        .run_round(rr(&second.round_id))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.state, "STATEMENT_ISSUED", "{r:?}");
    let st2 = c
        .get_statement(rr(&second.round_id))
        .await
        .unwrap()
        .into_inner();
    for (region, net) in expected {
        assert_eq!(net_of(&st2, region), net, "{region} in {st2:?}");
    }
    assert_eq!(
        round_at(&fed, WZ, &first.round_id).await,
        Some(("released".to_owned(), 0))
    );
    assert_eq!(
        round_at(&fed, WZ, &second.round_id).await,
        Some(("frozen".to_owned(), 1))
    );
    coord.stop().await;
}

fn open_req(rid: &str, period: &str, early: bool, allow_empty: bool) -> proto::OpenRoundRequest {
    proto::OpenRoundRequest {
        request_id: rid.into(),
        period: period.into(),
        early,
        allow_empty,
    }
}

/// The coordinator's own clock decides what is in the future: a future period is
/// refused early or not (naming the coordinator's current period), the current one
/// needs `early`. A period without a single record ends ABORTED with a note and clears
/// nothing (an earlier period can still be opened); with `allow_empty` it settles with
/// no transfers, and the periods before it count as cleared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn future_periods_are_refused_and_empty_periods_need_allow_empty() {
    let dir = tempfile::tempdir().unwrap();
    let fed = Federation::start(dir.path(), &[HZ, NB]).await;
    let coord = TestCoordinator::start_at(
        dir.path().join("coordinator"),
        fed.peers_file.clone(),
        mid_period("2026-12"),
    )
    .await;
    let mut c = coord.client().await;

    for (period, early) in [("2027-01", true), ("2031-07", true), ("2027-01", false)] {
        let e = c
            .open_round(open_req(
                &format!("f-{period}-{early}"),
                period,
                early,
                false,
            ))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{period}: {e:?}");
        assert!(
            e.message().starts_with(&format!(
                "period {period} is in the future: the coordinator's current period is 2026-12"
            )),
            "{e:?}"
        );
    }
    let e = c
        .open_round(open_req("now-not-early", "2026-12", false, false))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(
        e.message().contains("period 2026-12 is not over yet"),
        "{e:?}"
    );
    let rounds = c.list_rounds(proto::ListRoundsRequest {}).await.unwrap();
    assert!(
        rounds.into_inner().rounds.is_empty(),
        "refusals open nothing"
    );

    // An empty period without allow_empty: aborted, nothing cleared.
    let r = c
        .open_round(open_req("empty-1", "2026-11", false, false))
        .await
        .unwrap()
        .into_inner();
    assert!(!r.allow_empty);
    // A repeat of the same request (its answer lost) gets the same round, not a refusal.
    let again = c
        .open_round(open_req("empty-1", "2026-11", false, false))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (again.round_id.as_str(), again.state.as_str()),
        (r.round_id.as_str(), "OPEN")
    );
    let e = c
        .open_round(open_req("empty-1", "2026-10", false, false))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
    let r = c.run_round(rr(&r.round_id)).await.unwrap().into_inner();
    assert_eq!(r.state, "ABORTED", "{r:?}");
    assert!(
        r.note.starts_with(
            "empty period: no participant has a record of 2026-11; nothing was cleared"
        ) && r.note.contains("yidi clearing open 2026-11 --allow-empty"),
        "{r:?}"
    );
    for region in [HZ, NB] {
        assert_eq!(
            round_at(&fed, region, &r.round_id).await,
            Some(("released".to_owned(), 0)),
            "{region}"
        );
    }

    // An earlier period is not blocked by it; with allow_empty the empty period settles
    // with no transfers and says so.
    let r = c
        .open_round(open_req("empty-2", "2026-10", false, true))
        .await
        .unwrap()
        .into_inner();
    assert!(
        r.allow_empty && r.note.contains("opened with allow_empty"),
        "{r:?}"
    );
    let r = c.run_round(rr(&r.round_id)).await.unwrap().into_inner();
    assert_eq!(
        (r.state.as_str(), r.note.as_str(), r.transfers_expected),
        (
            "SETTLED",
            "empty period settled with no transfers (opened with allow_empty)",
            0
        ),
        "{r:?}"
    );
    assert!(r.cleared.is_empty() || r.cleared == [HZ.to_owned(), NB.to_owned()]);
    let e = c
        .open_round(open_req("before", "2026-09", false, false))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(
        e.message().contains("period 2026-10 is already cleared"),
        "{e:?}"
    );
    assert!(
        c.list_transfers(rr(&r.round_id))
            .await
            .unwrap()
            .into_inner()
            .transfers
            .is_empty()
    );
    let e = c.list_transfers(rr("2026-01-r9")).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    coord.stop().await;
}

/// A recorded transfer reads back; a second recording of the same pair is refused with
/// advice that works, whatever its request id; a correction keeps the old reference as
/// version 1, is idempotent by request id, and checks its fields.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorded_transfers_read_back_and_corrections_keep_the_history() {
    let dir = tempfile::tempdir().unwrap();
    let fed = Federation::start(dir.path(), &[HZ, NB]).await;
    prepare(&fed).await;
    let s = inpatient(&fed, HZ, NB, 31, "10000.00").await;
    wait_outboxes(&fed).await;
    let coord =
        TestCoordinator::start(dir.path().join("coordinator"), fed.peers_file.clone()).await;
    let mut c = coord.client().await;
    let round = open(&mut c, "open-t", &s.period).await.round_id;
    let r = c.run_round(rr(&round)).await.unwrap().into_inner();
    assert_eq!(r.state, "CONFIRMED", "{r:?}");
    let st = c.get_statement(rr(&round)).await.unwrap().into_inner();
    // Hangzhou pays the clearing account, which pays Ningbo: the claim's fund share.
    assert_eq!(st.instructions.len(), 2, "{st:?}");
    let ins = st.instructions[0].clone();
    assert_eq!(m(&ins.amount), fund(&s));
    let record = |rid: &str, reference: &str| proto::RecordTransferRequest {
        request_id: rid.into(),
        round_id: round.clone(),
        from_region: ins.from_region.clone(),
        to_region: ins.to_region.clone(),
        amount: ins.amount.clone(),
        reference: reference.into(),
    };
    let r = c
        .record_transfer(record("x1", "BANK-1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.transfers_recorded, r.transfers_expected), (1, 2));
    // The same request again: the same answer.
    assert_eq!(
        c.record_transfer(record("x1", "BANK-1"))
            .await
            .unwrap()
            .into_inner()
            .transfers_recorded,
        1
    );
    let before = c.list_transfers(rr(&round)).await.unwrap().into_inner();
    assert_eq!(before.transfers.len(), 1);
    let t = &before.transfers[0];
    assert_eq!(
        (t.amount.as_str(), t.reference.as_str(), t.history.len()),
        (ins.amount.as_str(), "BANK-1", 1)
    );
    assert_eq!(
        (
            t.history[0].version,
            t.history[0].request_id.as_str(),
            t.history[0].reason.as_str()
        ),
        (1, "x1", "")
    );
    // Another reference, under the same id and under a new one: both refused the same
    // way, pointing at the correction; nothing changes.
    for rid in ["x1", "x2"] {
        let e = c.record_transfer(record(rid, "BANK-2")).await.unwrap_err();
        assert_eq!(e.code(), Code::AlreadyExists, "{rid}: {e:?}");
        assert!(
            e.message().contains(&format!(
                "the transfer {} → {} of round {round} is already recorded (amount {}, reference \"BANK-1\")",
                ins.from_region, ins.to_region, ins.amount
            )) && e.message().contains("CorrectTransfer")
                && !e.message().contains("new request id"),
            "{rid}: {e:?}"
        );
    }
    assert_eq!(
        c.list_transfers(rr(&round)).await.unwrap().into_inner(),
        before
    );

    let correct =
        |rid: &str, from: &str, reference: &str, reason: &str| proto::CorrectTransferRequest {
            request_id: rid.into(),
            round_id: round.clone(),
            from_region: from.into(),
            to_region: ins.to_region.clone(),
            reference: reference.into(),
            reason: reason.into(),
        };
    for (req, code, needle) in [
        (
            correct("k0", &ins.from_region, "BANK-2", " "),
            Code::InvalidArgument,
            "reason",
        ),
        (
            correct("k0", &ins.from_region, "", "typo"),
            Code::InvalidArgument,
            "reference",
        ),
        (
            correct("k0", &ins.from_region, "BANK-1", "typo"),
            Code::InvalidArgument,
            "nothing to correct",
        ),
        (
            correct("k0", WZ, "BANK-2", "typo"),
            Code::NotFound,
            "has no recorded transfer",
        ),
    ] {
        let e = c.correct_transfer(req).await.unwrap_err();
        assert_eq!(e.code(), code, "{e:?}");
        assert!(e.message().contains(needle), "{e:?}");
    }
    assert_eq!(
        c.list_transfers(rr(&round)).await.unwrap().into_inner(),
        before
    );
    let fixed = c
        .correct_transfer(correct("k1", &ins.from_region, "BANK-2", "typo"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        c.correct_transfer(correct("k1", &ins.from_region, "BANK-2", "typo"))
            .await
            .unwrap()
            .into_inner(),
        fixed,
        "a repeat replays"
    );
    assert_eq!(
        (fixed.reference.as_str(), fixed.amount.as_str()),
        ("BANK-2", ins.amount.as_str())
    );
    assert_eq!(
        fixed
            .history
            .iter()
            .map(|v| (
                v.version,
                v.reference.as_str(),
                v.reason.as_str(),
                v.request_id.as_str()
            ))
            .collect::<Vec<_>>(),
        [(1, "BANK-1", "", "x1"), (2, "BANK-2", "typo", "k1")]
    );
    assert!(
        fixed
            .history
            .iter()
            .all(|v| v.operator == "loopback (insecure mode)" && v.amount == ins.amount)
    );
    assert_eq!(
        c.list_transfers(rr(&round))
            .await
            .unwrap()
            .into_inner()
            .transfers,
        [fixed]
    );
    // The round still settles on its instructions.
    let last = st.instructions[1].clone();
    let r = c
        .record_transfer(proto::RecordTransferRequest {
            request_id: "x3".into(),
            round_id: round.clone(),
            from_region: last.from_region,
            to_region: last.to_region,
            amount: last.amount,
            reference: "BANK-3".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.state, "SETTLED", "{r:?}");
    coord.stop().await;
}

/// A month cleared early is cleared early again while it lasts: the second round takes
/// only the records that came in since (to the fen), never a future month's round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_month_cleared_early_clears_its_late_records_in_another_early_round() {
    let dir = tempfile::tempdir().unwrap();
    let fed = Federation::start(dir.path(), &[HZ, NB]).await;
    prepare(&fed).await;
    let first_claim = inpatient(&fed, HZ, NB, 41, "10000.00").await;
    wait_outboxes(&fed).await;
    let period = first_claim.period.clone();
    let coord =
        TestCoordinator::start(dir.path().join("coordinator"), fed.peers_file.clone()).await;
    let mut c = coord.client().await;
    let r1 = open(&mut c, "early-1", &period).await;
    assert_eq!(r1.round_id, format!("{period}-r1"));
    let r = c.run_round(rr(&r1.round_id)).await.unwrap().into_inner();
    assert_eq!(r.state, "CONFIRMED", "{r:?}");
    assert_eq!(pay_all(&mut c, &r1.round_id).await.state, "SETTLED");

    let late = inpatient(&fed, HZ, NB, 42, "2000.00").await;
    assert_eq!(late.period, period);
    wait_outboxes(&fed).await;
    // Not early: the month is not over, cleared or not.
    let e = c
        .open_round(open_req("late-not-early", &period, false, false))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("is not over yet"), "{e:?}");
    let r2 = open(&mut c, "early-2", &period).await;
    assert_eq!(
        (r2.round_id.as_str(), r2.period.as_str()),
        (format!("{period}-r2").as_str(), period.as_str())
    );
    let r = c.run_round(rr(&r2.round_id)).await.unwrap().into_inner();
    assert_eq!(r.state, "CONFIRMED", "{r:?}");
    let st2 = c
        .get_statement(rr(&r2.round_id))
        .await
        .unwrap()
        .into_inner();
    // Only the late claim: the first is cleared by round 1 and not frozen again.
    assert_eq!(net_of(&st2, NB), fund(&late));
    assert_eq!(net_of(&st2, HZ), -fund(&late));
    assert_eq!(st2.gross.iter().map(|g| g.count).sum::<u64>(), 1, "{st2:?}");
    assert_eq!(pay_all(&mut c, &r2.round_id).await.state, "SETTLED");
    coord.stop().await;
}
