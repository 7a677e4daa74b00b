//! The store's files around real `yidi node` processes: a clean stop (SIGTERM) leaves
//! every acknowledged settlement in `node.db` alone; a log deleted after SIGKILL, a
//! truncated, emptied or damaged `node.db` make the node refuse to start, naming the
//! file and the repair, and change nothing; the log put back, or a `yidi backup` copy
//! restored, brings every acknowledged settlement back.

use std::path::{Path, PathBuf};

use yidi_common::proto::{self, InsuranceType as It, PersonType as Pt, VisitKind as Vk};
use yidi_tests::{
    fixtures::{
        Desk, fee_line, id_number, inst, institution, person, publish_policies, standard_items,
    },
    harness::TestNode,
    process::{NodeProcess, yidi},
};

const HZ: &str = "330100";

/// An acknowledged settlement: its id and split amounts as the hospital was told.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Ack {
    settlement_id: String,
    state: String,
    medfee: String,
    fund: String,
    cash: String,
}

fn ack(s: &proto::Settlement) -> Ack {
    let split = s.split.clone().expect("split");
    Ack {
        settlement_id: s.settlement_id.clone(),
        state: s.state.clone(),
        medfee: split.medfee_sumamt,
        fund: split.fund_pay_sumamt,
        cash: split.psn_cash_pay,
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Hangzhou's node process with its policies, a level-3 hospital, the catalogue and
/// `persons` insured persons.
fn hangzhou(rt: &tokio::runtime::Runtime, persons: u16) -> (NodeProcess, TestNode, Vec<String>) {
    let p = NodeProcess::start(HZ);
    let node = TestNode::remote(p.addr(), HZ, p.data_dir());
    let ids = rt.block_on(async {
        publish_policies(&node).await;
        institution(
            &node,
            inst::HZ_H3,
            proto::InstitutionKind::Hospital,
            proto::HospitalLevel::HospitalLevel3,
        )
        .await;
        standard_items(&node, "HZ").await;
        let mut ids = Vec::new();
        for seq in 0..persons {
            ids.push(
                person(
                    &node,
                    &id_number(HZ, "1968-05-01", 500 + seq),
                    It::Employee,
                    Pt::InService,
                    "0.00",
                    false,
                )
                .await,
            );
        }
        ids
    });
    (p, node, ids)
}

/// Settles one local outpatient visit of `amount` for each of `ids` (tagged `tag`).
fn settle_each(
    rt: &tokio::runtime::Runtime,
    node: &TestNode,
    ids: &[String],
    tag: &str,
    amount: &str,
) -> Vec<Ack> {
    rt.block_on(async {
        let mut desk = Desk::at(node, inst::HZ_H3).await;
        let mut acks = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            let rid = format!("{tag}-{i}");
            let v = desk
                .open(
                    &format!("{rid}-open"),
                    id,
                    HZ,
                    Vk::Outpatient,
                    "2026-03-10T09:00:00+08:00",
                )
                .await
                .expect("open visit");
            desk.fees(
                &format!("{rid}-fees"),
                &v.visit_id,
                vec![fee_line("1", "HZ-A", "1", amount, amount)],
            )
            .await
            .expect("fees");
            let s = desk
                .settle(&format!("{rid}-settle"), &v.visit_id, false)
                .await
                .expect("settle");
            assert_eq!(s.state, "settled", "{s:?}");
            acks.push(ack(&s));
        }
        acks
    })
}

/// Every settlement the hospital can see at the node, as acknowledged records.
fn settlements(rt: &tokio::runtime::Runtime, node: &TestNode) -> Vec<Ack> {
    rt.block_on(async {
        let mut desk = Desk::at(node, inst::HZ_H3).await;
        let mut all: Vec<Ack> = desk.list().await.iter().map(ack).collect();
        all.sort_by(|a, b| a.settlement_id.cmp(&b.settlement_id));
        all
    })
}

fn sorted(mut acks: Vec<Ack>) -> Vec<Ack> {
    acks.sort_by(|a, b| a.settlement_id.cmp(&b.settlement_id));
    acks
}

fn file(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}

/// A start that must be refused: exit code 1 and a log naming the store file, the
/// damage and `yidi backup`.
#[track_caller]
fn refused(p: &mut NodeProcess, more: &[&str], damage: &str) -> String {
    let db = file(&p.data_dir(), "node.db");
    let (code, log) = p
        .try_restart(more)
        .expect_err("the node must refuse to start");
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains(&db.display().to_string()),
        "names the file: {log}"
    );
    assert!(log.contains(damage), "names the damage {damage:?}: {log}");
    assert!(log.contains("yidi backup"), "names the repair: {log}");
    assert!(!log.contains("node serving"), "{log}");
    log
}

/// After SIGTERM the log is checkpointed into node.db and removed, with the running
/// marker: deleting whatever -wal/-shm files an operator finds loses nothing.
#[test]
fn a_clean_stop_leaves_every_acknowledged_settlement_in_node_db_alone() {
    let rt = rt();
    let (mut p, node, ids) = hangzhou(&rt, 8);
    let acks = settle_each(&rt, &node, &ids, "term", "2000.00");
    assert_eq!(acks.len(), 8);
    let data = p.data_dir();
    let wal = file(&data, "node.db-wal");
    assert!(std::fs::metadata(&wal).expect("log while running").len() > 32);
    let status = p.terminate();
    assert!(status.success(), "{status:?}\n{}", p.log());
    assert!(
        p.log().contains("store checkpointed and closed"),
        "{}",
        p.log()
    );
    assert!(!wal.exists(), "no log left after a clean stop");
    assert!(
        !file(&data, "node.running").exists(),
        "running marker removed"
    );
    assert!(file(&data, "node.id").exists(), "identity marker kept");
    // The common mistake: only node.db is kept.
    let _ = std::fs::remove_file(file(&data, "node.db-shm"));
    p.try_restart(&[]).expect("starts on node.db alone");
    assert_eq!(settlements(&rt, &node), sorted(acks));
}

/// After SIGKILL the log holds acknowledged settlements: deleting it is refused at the
/// next start (nothing changed, nothing served), and the log put back brings every one
/// of them back.
#[test]
fn a_log_deleted_after_sigkill_is_refused_and_put_back_loses_nothing() {
    let rt = rt();
    let (mut p, node, ids) = hangzhou(&rt, 8);
    let acks = settle_each(&rt, &node, &ids, "kill", "2000.00");
    p.kill();
    let data = p.data_dir();
    let (db, wal, shm) = (
        file(&data, "node.db"),
        file(&data, "node.db-wal"),
        file(&data, "node.db-shm"),
    );
    assert!(file(&data, "node.running").exists());
    assert!(
        std::fs::metadata(&wal).unwrap().len() > 32,
        "acknowledged data in the log"
    );
    let kept = p.dir.path().join("kept-wal");
    std::fs::rename(&wal, &kept).unwrap();
    let _ = std::fs::remove_file(&shm);
    let before = std::fs::read(&db).unwrap();
    let log = refused(
        &mut p,
        &[],
        &format!("its write-ahead log {} is missing", wal.display()),
    );
    assert!(log.contains("node.running"), "names the override: {log}");
    assert_eq!(std::fs::read(&db).unwrap(), before, "node.db unchanged");
    assert!(!wal.exists(), "no empty log created");
    // Refused again on a second try: nothing was cleared by the first.
    refused(&mut p, &[], "is missing");
    std::fs::rename(&kept, &wal).unwrap();
    p.try_restart(&[]).expect("starts with its log back");
    assert_eq!(settlements(&rt, &node), sorted(acks));
}

/// A truncated, emptied or damaged node.db is refused at start; `yidi check-store`
/// finds the damage too; the `yidi backup` copy restored starts with everything it held.
#[test]
fn a_damaged_store_is_refused_and_a_backup_restores_it() {
    let rt = rt();
    let (mut p, node, ids) = hangzhou(&rt, 4);
    let acks = settle_each(&rt, &node, &ids, "bk", "1500.00");
    let data = p.dir.path().join("data");
    let backup = p.dir.path().join("backup").join("hz.db");
    yidi(&[
        "backup",
        "--data-dir",
        &data.display().to_string(),
        "--to",
        &backup.display().to_string(),
    ])
    .expect_code(0);
    assert!(p.terminate().success());
    let db = file(&data, "node.db");
    let whole = std::fs::read(&db).unwrap();
    assert_eq!(whole.len() % 4096, 0);

    // Whole pages cut off the end, then a cut anywhere.
    std::fs::write(&db, &whole[..whole.len() - 3 * 4096]).unwrap();
    refused(&mut p, &[], "(truncated)");
    std::fs::write(&db, &whole[..whole.len() / 2 + 123]).unwrap();
    refused(&mut p, &[], "not a whole number of 4096-byte pages");
    // Emptied where the identity marker says there was a store.
    std::fs::write(&db, b"").unwrap();
    refused(&mut p, &[], "is empty (0 bytes)");
    assert_eq!(
        std::fs::metadata(&db).unwrap().len(),
        0,
        "not replaced by an empty store"
    );

    // Garbage pages in the middle: found when the pages are checked.
    let mut garbage = whole.clone();
    let mid = whole.len() / 2 / 4096 * 4096;
    for (i, b) in garbage[mid..mid + 2 * 4096].iter_mut().enumerate() {
        *b = u8::try_from(i * 13 % 251).unwrap();
    }
    std::fs::write(&db, &garbage).unwrap();
    refused(&mut p, &["--check-store", "quick"], "is damaged");
    let check = yidi(&["check-store", "--data-dir", &data.display().to_string()]);
    assert_eq!(check.code, Some(1), "{check:?}");
    assert!(
        check
            .stderr
            .contains(&format!("store {} is damaged", db.display()))
            && check.stderr.contains("yidi backup"),
        "{check:?}"
    );
    assert_eq!(
        std::fs::read(&db).unwrap(),
        garbage,
        "the check changed nothing"
    );

    // The repair: the backup copy in node.db's place.
    std::fs::copy(&backup, &db).unwrap();
    for f in ["node.db-wal", "node.db-shm"] {
        let _ = std::fs::remove_file(file(&data, f));
    }
    let ok = yidi(&["check-store", "--data-dir", &data.display().to_string()]).expect_code(0);
    assert!(ok.stdout.contains("ok: region 330100"), "{ok:?}");
    p.try_restart(&["--check-store", "quick"])
        .expect("the restored copy starts");
    assert_eq!(settlements(&rt, &node), sorted(acks));
}
