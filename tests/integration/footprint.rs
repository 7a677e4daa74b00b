//! The store's footprint per settlement (issue #25 item 5, DESIGN.md's target of at
//! most 3 KB per settlement per node, request records included): a realistic mix
//! settled through a real federation, measured with the function `yidi footprint` uses
//! (`yidi_node::store::footprint`), at both the treatment and the home node. And the
//! answers that are no longer stored whole: a repeated Settle still answers, field by
//! field, what the first one did.

use rusqlite::Connection;
use yidi_common::proto;
use yidi_node::store::footprint::{Footprint, measure_file};
use yidi_tests::fixtures::{
    Desk, VISIT_OPENED, fee_line, filed_employee, id_number, inst, person,
    settled_2000_at_hz_rates, three_cities,
};

const HZ: &str = "330100";
const NB: &str = "330200";

/// DESIGN.md: bytes of store per settlement per node.
const TARGET: u64 = 3 * 1024;

fn store(root: &std::path::Path, region: &str) -> std::path::PathBuf {
    root.join(region).join("node.db")
}

/// Seven lines of the four standard items of `prefix`'s catalogue, as a bench visit
/// bills (~7 lines): class A, B with its first self-pay, C, an item above its price
/// cap; the amounts vary with `n`.
fn lines(prefix: &str, n: usize) -> Vec<proto::FeeLine> {
    let p = 200 + n % 97;
    let big = format!("{p}.00");
    vec![
        fee_line("1", &format!("{prefix}-A"), "2", "35.50", "71.00"),
        fee_line("2", &format!("{prefix}-B"), "1", "120.00", "120.00"),
        fee_line("3", &format!("{prefix}-C"), "3", "8.00", "24.00"),
        fee_line("4", &format!("{prefix}-CAP"), "2", "15.00", "30.00"),
        fee_line("5", &format!("{prefix}-A"), "1", &big, &big),
        fee_line("6", &format!("{prefix}-B"), "4", "22.50", "90.00"),
        fee_line("7", &format!("{prefix}-A"), "1", "48.30", "48.30"),
    ]
}

/// Settles `cross` visits of `foreign` persons and `local` visits of `own` persons at
/// `desk`, every fifth an admission (opened, billed, discharged, settled), the others
/// outpatient visits; half of them pay from the personal account.
async fn settle_mix(
    desk: &mut Desk,
    prefix: &str,
    (foreign, foreign_home): (&[String], &str),
    (own, own_home): (&[String], &str),
    cross: usize,
    local: usize,
) {
    for n in 0..cross + local {
        let (id, home) = if n < cross {
            (&foreign[n % foreign.len()], foreign_home)
        } else {
            (&own[n % own.len()], own_home)
        };
        let tag = format!("{prefix}-{n}");
        let kind = if n % 5 == 4 {
            proto::VisitKind::Inpatient
        } else {
            proto::VisitKind::Outpatient
        };
        let v = desk
            .open(&format!("ov-{tag}"), id, home, kind, VISIT_OPENED)
            .await
            .unwrap();
        desk.fees(&format!("fees-{tag}"), &v.visit_id, lines(prefix, n))
            .await
            .unwrap();
        if kind == proto::VisitKind::Inpatient {
            desk.discharge(&format!("cv-{tag}"), &v.visit_id)
                .await
                .unwrap();
        }
        let s = desk
            .settle(&format!("st-{tag}"), &v.visit_id, n % 2 == 0)
            .await
            .unwrap();
        assert_eq!(s.state, "settled", "{s:?}");
    }
}

fn per_settlement(before: &Footprint, after: &Footprint) -> (u64, u64) {
    let settled = after.settlements - before.settlements;
    ((after.bytes() - before.bytes()) / settled, settled)
}

fn report(region: &str, before: &Footprint, after: &Footprint) {
    let (per, settled) = per_settlement(before, after);
    eprintln!("{region}: {settled} settlements, {per} bytes per settlement");
    for o in &after.objects {
        let was = before
            .objects
            .iter()
            .find(|b| b.name == o.name)
            .map_or(0, |b| b.bytes);
        if o.bytes > was {
            eprintln!(
                "  {:<32} {:>7} B/settlement",
                o.name,
                (o.bytes - was) / settled
            );
        }
    }
}

/// A few hundred settlements at each of two nodes, each the treatment node of its own
/// hospital and the home node of the other's patients (80 % cross-region, seven fee
/// lines a visit, admissions among them): the store grows by at most 3 KB per
/// settlement at both, request records included (the records of the whole run are
/// within the idempotency window).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settlement_costs_each_node_at_most_3_kb_of_store() {
    let dir = tempfile::tempdir().unwrap();
    let fed = three_cities(dir.path(), |_, _| {}).await;
    let (hz, nb) = (fed.node(HZ), fed.node(NB));
    let mut hz_filed = Vec::new();
    let mut nb_filed = Vec::new();
    for i in 0..8u16 {
        hz_filed.push(filed_employee(hz, "1975-05-05", 100 + i, "800.00", NB).await);
        nb_filed.push(filed_employee(nb, "1976-06-06", 100 + i, "800.00", HZ).await);
    }
    let mut hz_local = Vec::new();
    let mut nb_local = Vec::new();
    for i in 0..4u16 {
        for (node, region, out) in [(hz, HZ, &mut hz_local), (nb, NB, &mut nb_local)] {
            out.push(
                person(
                    node,
                    &id_number(region, "1960-02-02", 300 + i),
                    proto::InsuranceType::Employee,
                    proto::PersonType::Retired,
                    "300.00",
                    false,
                )
                .await,
            );
        }
    }
    let before = (
        measure_file(&store(dir.path(), HZ)).unwrap(),
        measure_file(&store(dir.path(), NB)).unwrap(),
    );

    let mut hz_desk = Desk::at(hz, inst::HZ_H3).await;
    let mut nb_desk = Desk::at(nb, inst::NB_H3).await;
    let (cross, local) = (120, 30);
    tokio::join!(
        settle_mix(
            &mut hz_desk,
            "HZ",
            (&nb_filed, NB),
            (&hz_local, HZ),
            cross,
            local
        ),
        settle_mix(
            &mut nb_desk,
            "NB",
            (&hz_filed, HZ),
            (&nb_local, NB),
            cross,
            local
        ),
    );

    let after = (
        measure_file(&store(dir.path(), HZ)).unwrap(),
        measure_file(&store(dir.path(), NB)).unwrap(),
    );
    report(HZ, &before.0, &after.0);
    report(NB, &before.1, &after.1);
    for (region, b, a) in [(HZ, &before.0, &after.0), (NB, &before.1, &after.1)] {
        let (per, settled) = per_settlement(b, a);
        // Its own settlements as treatment node and the other's claims as home node.
        assert_eq!(settled, (cross + local + cross) as u64, "{region}");
        assert!(
            per <= TARGET,
            "{region}: {per} bytes per settlement, above the target of {TARGET}"
        );
    }
}

/// The request records of Settle (treatment node) and CommitClaim (home node) keep the
/// answer without its split, which the settlement and the claim records hold; a
/// repeated Settle still answers exactly what the first one did — also after the
/// settlement was cancelled, whose record then says `cancelled`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_settle_answers_the_first_answer_rebuilt_from_its_record() {
    let dir = tempfile::tempdir().unwrap();
    let fed = three_cities(dir.path(), |_, _| {}).await;
    let id = filed_employee(fed.node(HZ), "1980-01-01", 41, "1000.00", NB).await;
    let mut desk = Desk::at(fed.node(NB), inst::NB_H3).await;
    let v = yidi_tests::fixtures::billed_visit(&mut desk, "r", &id, HZ, "2000.00").await;
    let first = desk.settle("settle-r1", &v.visit_id, true).await.unwrap();
    settled_2000_at_hz_rates(&first);
    assert!(
        first.split.as_ref().unwrap().trace.len() > 3,
        "{:?}",
        first.split
    );

    let answer_size = |region: &str, method: &str| -> (usize, usize) {
        let conn = Connection::open(store(dir.path(), region)).unwrap();
        conn.query_row(
            "SELECT COUNT(*), COALESCE(MAX(length(response)), 0) FROM requests WHERE method = ?1",
            [method],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap()
    };
    let split_size = first
        .split
        .as_ref()
        .map(prost::Message::encoded_len)
        .unwrap();
    for (region, method) in [(NB, "Settle"), (HZ, "CommitClaim")] {
        let (n, size) = answer_size(region, method);
        assert_eq!(n, 1, "{region} {method}");
        assert!(
            size < split_size / 2,
            "{region} {method}: a stored answer of {size} bytes, the split alone is {split_size}"
        );
    }

    assert_eq!(
        desk.settle("settle-r1", &v.visit_id, true).await.unwrap(),
        first
    );
    assert_eq!(
        desk.get(&first.settlement_id).await.unwrap().split,
        first.split
    );
    // A repeat with another payload is still refused, nothing changed.
    let e = desk
        .settle("settle-r1", &v.visit_id, false)
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::AlreadyExists, "{e:?}");
    assert!(e.message().contains("different payload"), "{e:?}");

    let cancelled = desk
        .cancel("cancel-r1", &first.settlement_id, "entered twice")
        .await
        .unwrap();
    assert_eq!(cancelled.reverses, first.settlement_id);
    assert_eq!(
        desk.get(&first.settlement_id).await.unwrap().state,
        "cancelled"
    );
    assert_eq!(
        desk.settle("settle-r1", &v.visit_id, true).await.unwrap(),
        first,
        "the first answer, not the record's state now"
    );
}
