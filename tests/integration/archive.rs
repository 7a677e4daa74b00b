//! Archives of closed and cleared periods (`yidi admin archive`, docs/admin.md): two
//! cities settle, the period is refused while it is current, too recent or not cleared
//! (exact codes, nothing changed), a clearing round clears it end to end, the real
//! `yidi` binary exports and verifies it, a tampered copy is refused, the purge removes
//! the rows (resumed after a stop mid-purge) while the person's remaining cap stays
//! exact, calls about archived records name the archive, and a restore brings every
//! query's answer back.

use std::{sync::Arc, sync::atomic::Ordering, time::Duration};

use rusqlite::OptionalExtension as _;
use serde_json::Value;
use tonic::Code;
use yidi_common::proto::{self, coordinator_service_client::CoordinatorServiceClient};
use yidi_node::context::TestHooks;
use yidi_tests::{
    fixtures::{Desk, accumulators, billed_visit, filed_employee, inst, three_cities},
    harness::{Federation, TestCoordinator, TestNode},
    process::{Run, yidi},
};

const HZ: &str = "330100";
const NB: &str = "330200";
/// How far the nodes' clocks are moved ahead: past the period's end plus the minimum
/// age, as a node would be four months later.
const AHEAD_DAYS: i64 = 125;

async fn run_yidi(args: Vec<String>) -> Run {
    tokio::task::spawn_blocking(move || {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        yidi(&a)
    })
    .await
    .unwrap()
}

async fn admin_cli(node: &TestNode, line: &[&str]) -> Run {
    let mut args = vec!["admin".to_owned(), "--node".to_owned(), node.url()];
    args.extend(line.iter().map(|s| (*s).to_owned()));
    run_yidi(args).await
}

async fn export(node: &TestNode, period: &str) -> Result<proto::ArchiveStatus, tonic::Status> {
    node.admin()
        .await
        .export_archive(proto::ArchivePeriodRequest {
            period: period.into(),
            ..Default::default()
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn archives(node: &TestNode) -> Vec<proto::ArchiveStatus> {
    node.admin()
        .await
        .list_archives(proto::ArchivePeriodRequest::default())
        .await
        .unwrap()
        .into_inner()
        .archives
}

#[track_caller]
fn refused<T: std::fmt::Debug>(r: Result<T, tonic::Status>, code: Code, needles: &[&str]) {
    let e = r.expect_err("refused");
    assert_eq!(e.code(), code, "{e:?}");
    for n in needles {
        assert!(e.message().contains(n), "{n:?} not in {:?}", e.message());
    }
}

/// Rows of `period` in a node's live store: settlements, claims, ledger entries.
fn live(node: &TestNode, period: &str) -> [u64; 3] {
    let db = rusqlite::Connection::open_with_flags(
        node.data_dir.join("node.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    db.busy_timeout(Duration::from_secs(5)).unwrap();
    ["settlements", "claims", "ledger"].map(|t| {
        db.query_row(
            &format!("SELECT COUNT(*) FROM {t} WHERE period = ?1"),
            [period],
            |r| r.get(0),
        )
        .unwrap()
    })
}

async fn ledger(node: &TestNode, period: &str) -> proto::GetLedgerResponse {
    node.admin()
        .await
        .get_ledger(proto::GetLedgerRequest {
            period: period.into(),
        })
        .await
        .unwrap()
        .into_inner()
}

/// Clears `period` in one provincial round at a coordinator whose clock is `ahead`.
async fn clear(fed: &Federation, root: &std::path::Path, period: &str) -> TestCoordinator {
    let now = chrono::Utc::now() + chrono::Duration::days(AHEAD_DAYS);
    clear_rounds(fed, root, &[period], now).await
}

/// Clears each of `periods` in a provincial round of its own at a coordinator whose
/// clock is at `now`.
async fn clear_rounds(
    fed: &Federation,
    root: &std::path::Path,
    periods: &[&str],
    now: chrono::DateTime<chrono::Utc>,
) -> TestCoordinator {
    let coord =
        TestCoordinator::start_at(root.join("coordinator"), fed.peers_file.clone(), now).await;
    let mut c: CoordinatorServiceClient<_> = coord.client().await;
    for (n, period) in periods.iter().enumerate() {
        let round = c
            .open_round(proto::OpenRoundRequest {
                request_id: if n == 0 {
                    "open-archive".into()
                } else {
                    format!("open-archive-{period}")
                },
                period: (*period).into(),
                early: false,
                allow_empty: false,
            })
            .await
            .unwrap()
            .into_inner();
        let rr = || proto::RoundRequest {
            request_id: String::new(),
            round_id: round.round_id.clone(),
        };
        let r = c.run_round(rr()).await.unwrap().into_inner();
        if r.state == "SETTLED" && r.transfers_expected == 0 {
            // Every net position zero (a cancellation and a settlement of the same
            // amount): nothing to transfer.
            continue;
        }
        assert_eq!(r.state, "CONFIRMED", "{r:?}");
        let st = c.get_statement(rr()).await.unwrap().into_inner();
        let mut last = None;
        for (i, ins) in st.instructions.iter().enumerate() {
            last = Some(
                c.record_transfer(proto::RecordTransferRequest {
                    request_id: format!("t{n}-{i}"),
                    round_id: round.round_id.clone(),
                    from_region: ins.from_region.clone(),
                    to_region: ins.to_region.clone(),
                    amount: ins.amount.clone(),
                    reference: format!("BANK-{n}-{i}"),
                })
                .await
                .unwrap()
                .into_inner(),
            );
        }
        assert_eq!(last.unwrap().state, "SETTLED");
    }
    coord
}

/// Exports at `node` once its entries are marked cleared (the round's last step runs
/// in bounded jobs after the round is cleared).
async fn export_when_cleared(node: &TestNode, period: &str) -> proto::ArchiveStatus {
    for _ in 0..500 {
        match export(node, period).await {
            Ok(s) => return s,
            Err(e) if e.message().contains("frozen in clearing round") => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("export {period} at {}: {e:?}", node.region),
        }
    }
    panic!(
        "the round's entries were never marked cleared at {}",
        node.region
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cleared_period_is_exported_verified_purged_and_restored() {
    let dir = tempfile::tempdir().unwrap();
    let hooks = TestHooks::default();
    let offset = Arc::clone(&hooks.clock_offset_ms);
    // Request records are kept longer than the archive's minimum age: a 冲正 of a
    // purged settlement finds its request.
    let mut fed = three_cities(dir.path(), move |_, c| {
        c.hooks = hooks.clone();
        c.request_retention_days = 400;
    })
    .await;
    let (hz, nb) = (fed.node(HZ), fed.node(NB));

    // Two Hangzhou employees settle at Ningbo; the second settlement is cancelled.
    let id = filed_employee(hz, "1980-01-01", 81, "1000.00", NB).await;
    let id2 = filed_employee(hz, "1981-01-01", 82, "0.00", NB).await;
    let mut desk = Desk::at(nb, inst::NB_H3).await;
    let v = billed_visit(&mut desk, "a1", &id, HZ, "2000.00").await;
    desk.discharge("close-a1", &v.visit_id).await.unwrap();
    let s = desk.settle("settle-a1", &v.visit_id, true).await.unwrap();
    yidi_tests::fixtures::settled_2000_at_hz_rates(&s);
    let v2 = billed_visit(&mut desk, "a2", &id2, HZ, "300.00").await;
    desk.discharge("close-a2", &v2.visit_id).await.unwrap();
    let s2 = desk.settle("settle-a2", &v2.visit_id, false).await.unwrap();
    desk.cancel("cancel-a2", &s2.settlement_id, "wrong bill")
        .await
        .unwrap();
    yidi_tests::fixtures::wait_outbox_drained(nb, Duration::from_secs(10)).await;
    let period = s.period.clone();
    let before_acc = accumulators(hz, &id, NB, inst::NB_H3).await;
    let before_get = desk.get(&s.settlement_id).await.unwrap();
    let before_rows = (live(nb, &period), live(hz, &period));
    assert_eq!(
        before_rows.0[0], 3,
        "two settlements and a reversal at Ningbo"
    );

    // The current period is refused; so is a malformed one.
    refused(
        export(nb, &period).await,
        Code::FailedPrecondition,
        &["the current period"],
    );
    refused(
        export(nb, "2026-13").await,
        Code::InvalidArgument,
        &["period"],
    );

    // Four months later: too recent a period, and the period itself while not cleared.
    offset.store(AHEAD_DAYS * 86_400_000, Ordering::Relaxed);
    let later = yidi_common::period::Period::of(
        chrono::Utc::now() + chrono::Duration::days(AHEAD_DAYS - 40),
    );
    refused(
        export(nb, &later.to_string()).await,
        Code::FailedPrecondition,
        &["less than 90 days"],
    );
    refused(
        export(nb, &period).await,
        Code::FailedPrecondition,
        &[
            "is not fully cleared",
            "ledger entries in no clearing round yet",
        ],
    );
    assert!(archives(nb).await.is_empty(), "a refusal records nothing");
    assert_eq!(live(nb, &period), before_rows.0);

    let coord = clear(&fed, dir.path(), &period).await;
    let nb_status = export_when_cleared(nb, &period).await;
    assert_eq!(nb_status.state, "exported");
    let hz_status = export_when_cleared(hz, &period).await;
    assert_eq!(hz_status.state, "exported");
    coord.stop().await;
    // The ledgers as cleared: what a restore must bring back.
    let before_ledger = (ledger(nb, &period).await, ledger(hz, &period).await);
    assert_eq!(
        before_ledger.0.positions[0].cleared, 3,
        "{:?}",
        before_ledger.0
    );

    // From the export on, the period's records are frozen: a cancel is refused and
    // changes nothing.
    refused(
        desk.cancel("cancel-a1", &s.settlement_id, "late").await,
        Code::FailedPrecondition,
        &["archived", &period, "yidi admin archive restore"],
    );
    assert_eq!(desk.get(&s.settlement_id).await.unwrap(), before_get);

    // The real binary copies the archive out and verifies it; a repeated export answers
    // the same archive.
    let out = dir.path().join("archives");
    let run = admin_cli(
        nb,
        &[
            "archive",
            "export",
            "--period",
            &period,
            "--out",
            out.to_str().unwrap(),
            "--json",
        ],
    )
    .await
    .expect_code(0);
    let exported: Value = serde_json::from_str(&run.stdout).unwrap();
    let file = out.join(format!("{NB}-{period}.sqlite"));
    assert_eq!(exported["file"], file.display().to_string());
    let manifest: Value = exported["manifest"].clone();
    let sha = manifest["sha256"].as_str().unwrap().to_owned();
    let tables: Vec<(String, u64)> = manifest["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["table"].as_str().unwrap().to_owned(),
                t["rows"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        tables,
        [
            // Both visits the settlements refer to; the cancelled one is open for
            // settling again, so the purge leaves it live.
            ("visits".to_owned(), 2),
            ("fee_lines".to_owned(), 2),
            ("settlements".to_owned(), 3),
            ("deductions".to_owned(), 0),
            ("claims".to_owned(), 0),
            ("ledger".to_owned(), 3),
        ]
    );
    let settlements = &manifest["tables"][2]["sums"];
    // 2000.00 settled, 300.00 settled and −300.00 reversed.
    assert_eq!(settlements["medfee_fen"], "2000.00", "{manifest}");
    assert_eq!(settlements["fund_fen"], "700.00", "{manifest}");
    assert_eq!(manifest["region"], NB);
    assert_eq!(manifest["period"], period.as_str());
    let verified = run_yidi(vec![
        "admin".into(),
        "archive".into(),
        "verify".into(),
        "--file".into(),
        file.display().to_string(),
    ])
    .await
    .expect_code(0);
    assert!(verified.stdout.starts_with("ok: "), "{}", verified.stdout);

    // A tampered copy (one ledger amount changed) is refused, naming what differs.
    let bad = dir.path().join("tampered");
    std::fs::create_dir_all(&bad).unwrap();
    let bad_file = bad.join(format!("{NB}-{period}.sqlite"));
    std::fs::copy(&file, &bad_file).unwrap();
    std::fs::copy(file.with_extension("json"), bad_file.with_extension("json")).unwrap();
    {
        let db = rusqlite::Connection::open(&bad_file).unwrap();
        db.execute(
            "UPDATE ledger SET amount_fen = amount_fen + 100 WHERE entry_id = (SELECT MIN(entry_id) FROM ledger)",
            [],
        )
        .unwrap();
    }
    let run = run_yidi(vec![
        "admin".into(),
        "archive".into(),
        "verify".into(),
        "--file".into(),
        bad_file.display().to_string(),
    ])
    .await
    .expect_code(1);
    assert!(
        run.stderr.contains("SHA-256 of the file")
            && run.stderr.contains("ledger.amount_fen sums to"),
        "{}",
        run.stderr
    );

    // Purge at Ningbo through the binary; the rows leave the live store.
    let run = admin_cli(
        nb,
        &[
            "archive",
            "purge",
            "--file",
            file.to_str().unwrap(),
            "--json",
        ],
    )
    .await
    .expect_code(0);
    let purged: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(purged["state"], "purged", "{purged}");
    assert_eq!(purged["rows_done"], 8, "{purged}");
    assert_eq!(purged["live_rows"], 0, "{purged}");
    eprintln!(
        "Ningbo's live store after the purge: {} bytes, {} bytes of free pages",
        purged["store_bytes"], purged["free_bytes"]
    );
    assert_eq!(live(nb, &period), [0, 0, 0]);

    // Hangzhou's purge is interrupted after its first step and the node restarted: the
    // repeated purge resumes and finishes.
    let hz_manifest: Value = serde_json::from_str(&hz_status.manifest).unwrap();
    let hz_sha = hz_manifest["sha256"].as_str().unwrap().to_owned();
    let wrong = hz
        .admin()
        .await
        .purge_archive(proto::ArchivePeriodRequest {
            period: period.clone(),
            sha256: sha.clone(),
            max_rows: 0,
        })
        .await;
    refused(
        wrong,
        Code::FailedPrecondition,
        &["is not that of the node's archive"],
    );
    let first = hz
        .admin()
        .await
        .purge_archive(proto::ArchivePeriodRequest {
            period: period.clone(),
            sha256: hz_sha.clone(),
            max_rows: 1,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.state, "purging");
    assert_eq!(first.rows_done, 3, "the ledger entries, one step");
    assert_eq!(live(hz, &period), [0, 2, 0], "the claims are still live");
    fed.stop(HZ).await;
    let hooks2 = TestHooks::default();
    hooks2
        .clock_offset_ms
        .store(AHEAD_DAYS * 86_400_000, Ordering::Relaxed);
    fed.restart(HZ, move |c| c.hooks = hooks2).await;
    let hz = fed.node(HZ);
    let done = hz
        .admin()
        .await
        .purge_archive(proto::ArchivePeriodRequest {
            period: period.clone(),
            sha256: hz_sha.clone(),
            max_rows: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(done.state, "purged");
    assert_eq!(
        done.rows_done, 5,
        "3 ledger entries and 2 claims, each deleted once"
    );
    assert_eq!(live(hz, &period), [0, 0, 0]);

    // At the home node, a reversal of an archived claim (here Ningbo giving up on it) is
    // refused naming the archive: never taken for an unknown claim and tombstoned. The
    // period rides in the metadata, on which a treatment node's outbox parks the item.
    let mut peer = hz.peer().await;
    let e = peer
        .reverse_claim(proto::ReverseClaimRequest {
            request_id: "abandon-archived".into(),
            claim_id: s.settlement_id.clone(),
            reversal_id: "abandon-archived".into(),
            reason: "gave up".into(),
            reversed_at: yidi_common::period::now_rfc3339(),
            treatment_region: NB.into(),
            abandon_only: true,
        })
        .await
        .expect_err("refused");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert_eq!(
        e.message(),
        format!(
            "claim {} belongs to period {period}, archived and removed from this node's live store; \
             restore it to read or change it (yidi admin archive restore --file {HZ}-{period}.sqlite)",
            s.settlement_id
        )
    );
    assert_eq!(
        e.metadata()
            .get("yidi-archived")
            .and_then(|v| v.to_str().ok()),
        Some(period.as_str())
    );
    let st = peer
        .claim_status(proto::ClaimStatusRequest {
            claim_id: s.settlement_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_ne!(st.state, "abandoned", "{st:?}");

    // The person's year-to-date totals, and so the remaining cap, are exactly as before.
    let nb = fed.node(NB);
    assert_eq!(accumulators(hz, &id, NB, inst::NB_H3).await, before_acc);

    // Calls about archived records name the archive.
    let mut desk = Desk::at(nb, inst::NB_H3).await;
    refused(
        desk.get(&s.settlement_id).await,
        Code::NotFound,
        &["archived", &period, "restore"],
    );
    refused(
        desk.cancel("cancel-a1b", &s.settlement_id, "late").await,
        Code::FailedPrecondition,
        &["archived", &period],
    );
    // A 冲正 of the purged settlement by its request id names the archive as a repeat
    // of the request would (not `not_found`), and bars nothing.
    let e = desk
        .reverse("rev-a1", "settle-a1")
        .await
        .expect_err("refused");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert_eq!(
        e.message(),
        format!(
            "settlement {} belongs to period {period}, archived and removed from this node's live store; \
             restore it to read or change it (yidi admin archive restore --file {NB}-{period}.sqlite)",
            s.settlement_id
        )
    );
    assert_eq!(live(nb, &period), [0, 0, 0]);

    // Restore: another region's file and a tampered file are refused; the right file
    // brings every answer back, and a second restore changes nothing.
    let hz_out = dir.path().join("hz-archives");
    admin_cli(
        hz,
        &[
            "archive",
            "export",
            "--period",
            &period,
            "--out",
            hz_out.to_str().unwrap(),
        ],
    )
    .await
    .expect_code(0);
    let run = admin_cli(
        nb,
        &[
            "archive",
            "restore",
            "--file",
            hz_out
                .join(format!("{HZ}-{period}.sqlite"))
                .to_str()
                .unwrap(),
        ],
    )
    .await
    .expect_code(1);
    assert!(
        run.stderr.starts_with("error: FAILED_PRECONDITION: ")
            && run
                .stderr
                .contains("the archive is of region 330100, this node is 330200"),
        "{}",
        run.stderr
    );
    let mut admin = nb.admin().await;
    let bytes = std::fs::read(&bad_file).unwrap();
    admin
        .write_archive(proto::ArchiveChunk {
            period: period.clone(),
            offset: 0,
            data: bytes,
            total: 0,
        })
        .await
        .unwrap();
    let m = std::fs::read_to_string(file.with_extension("json")).unwrap();
    refused(
        admin
            .restore_archive(proto::RestoreArchiveRequest { manifest: m })
            .await,
        Code::FailedPrecondition,
        &["does not match its manifest", "SHA-256"],
    );
    assert_eq!(
        live(nb, &period),
        [0, 0, 0],
        "nothing restored from a tampered file"
    );
    // The live store has one of the archive's ledger entries under its key with another
    // amount (changed behind the node's back): a restore would keep it (INSERT OR
    // IGNORE) and so not bring back the period archived. Refused, nothing restored.
    let (entry, amount): (String, i64) = {
        let db = rusqlite::Connection::open(nb.data_dir.join("node.db")).unwrap();
        db.busy_timeout(Duration::from_secs(5)).unwrap();
        db.execute("ATTACH DATABASE ?1 AS a", [file.to_str().unwrap()])
            .unwrap();
        let (entry, amount): (String, i64) = db
            .query_row(
                "SELECT entry_id, amount_fen FROM a.ledger ORDER BY entry_id LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        db.execute(
            "INSERT INTO main.ledger SELECT * FROM a.ledger WHERE entry_id = ?1",
            [&entry],
        )
        .unwrap();
        db.execute(
            "UPDATE main.ledger SET amount_fen = amount_fen + 1 WHERE entry_id = ?1",
            [&entry],
        )
        .unwrap();
        (entry, amount)
    };
    let run = admin_cli(
        nb,
        &["archive", "restore", "--file", file.to_str().unwrap()],
    )
    .await
    .expect_code(1);
    let yuan = |fen: i64| rust_decimal::Decimal::new(fen, 2).to_string();
    assert!(
        run.stderr.starts_with("error: FAILED_PRECONDITION: ")
            && run.stderr.contains(&format!(
                "the live store holds records of the archive of {period} with other amounts: \
                 ledger {entry} receivable: amount_fen is {} in the live store, {} in the archive; \
                 nothing was restored",
                yuan(amount + 1),
                yuan(amount)
            )),
        "{}",
        run.stderr
    );
    assert_eq!(live(nb, &period), [0, 0, 1], "nothing restored");
    assert_eq!(
        archives(nb)
            .await
            .iter()
            .find(|a| a.period == period)
            .unwrap()
            .state,
        "purged"
    );
    rusqlite::Connection::open(nb.data_dir.join("node.db"))
        .unwrap()
        .execute("DELETE FROM ledger WHERE entry_id = ?1", [&entry])
        .unwrap();
    for _ in 0..2 {
        let run = admin_cli(
            nb,
            &[
                "archive",
                "restore",
                "--file",
                file.to_str().unwrap(),
                "--json",
            ],
        )
        .await
        .expect_code(0);
        let restored: Value = serde_json::from_str(&run.stdout).unwrap();
        assert_eq!(restored["state"], "restored", "{restored}");
    }
    assert_eq!(live(nb, &period), before_rows.0);
    assert_eq!(desk.get(&s.settlement_id).await.unwrap(), before_get);
    assert_eq!(ledger(nb, &period).await, before_ledger.0);
    let hz_file = hz_out.join(format!("{HZ}-{period}.sqlite"));
    admin_cli(
        hz,
        &["archive", "restore", "--file", hz_file.to_str().unwrap()],
    )
    .await
    .expect_code(0);
    assert_eq!(live(hz, &period), before_rows.1);
    assert_eq!(ledger(hz, &period).await, before_ledger.1);
    assert_eq!(accumulators(hz, &id, NB, inst::NB_H3).await, before_acc);
    // Restored, the period is live again: its records may be cancelled as before.
    let id_state: Option<String> = rusqlite::Connection::open(nb.data_dir.join("node.db"))
        .unwrap()
        .query_row(
            "SELECT state FROM archived_periods WHERE period = ?1",
            [&period],
            |r| r.get(0),
        )
        .optional()
        .unwrap();
    assert_eq!(id_state.as_deref(), Some("restored"));
    let c = desk
        .cancel("cancel-a1c", &s.settlement_id, "after restore")
        .await
        .unwrap();
    assert_eq!(c.state, "reversal", "{c:?}");
}

/// Exports and purges `period` at `node` through the admin service; the manifest.
async fn export_and_purge(node: &TestNode, period: &str) -> Value {
    let status = export_when_cleared(node, period).await;
    let manifest: Value = serde_json::from_str(&status.manifest).unwrap();
    let done = node
        .admin()
        .await
        .purge_archive(proto::ArchivePeriodRequest {
            period: period.into(),
            sha256: manifest["sha256"].as_str().unwrap().to_owned(),
            max_rows: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(done.state, "purged", "{done:?}");
    manifest
}

/// A visit settled in one month, cancelled and settled again the next: both months are
/// archived and purged at the treatment node, and the first month is restored (its
/// visit comes back from its own archive). At the home node, a reversal of a claim it
/// never stored whose id falls inside an archived range of ids is taken as for any
/// unknown claim; one of a claim it archived parks the treatment node's outbox item,
/// naming the archive and the restore command, without holding up the items behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_visit_of_two_archived_months_is_restored_and_late_ids_are_not_archived() {
    let dir = tempfile::tempdir().unwrap();
    let hooks = TestHooks::default();
    let offset = Arc::clone(&hooks.clock_offset_ms);
    let fed = three_cities(dir.path(), move |_, c| c.hooks = hooks.clone()).await;
    let (hz, nb, wz) = (fed.node(HZ), fed.node(NB), fed.node("330300"));
    let set_clock = |at: chrono::DateTime<chrono::Utc>| {
        offset.store(
            (at - chrono::Utc::now()).num_milliseconds(),
            Ordering::Relaxed,
        );
    };

    // Month P: a Hangzhou patient (A), a Wenzhou one (W) and another from Hangzhou (B)
    // settle at Ningbo, in that order: W's claim id lies between A's and B's, but only
    // theirs reach Hangzhou.
    let a = filed_employee(hz, "1980-01-01", 81, "0.00", NB).await;
    let w = filed_employee(wz, "1982-01-01", 83, "0.00", NB).await;
    let b = filed_employee(hz, "1981-01-01", 82, "0.00", NB).await;
    let mut desk = Desk::at(nb, inst::NB_H3).await;
    let mut settled = Vec::new();
    for (tag, id, home) in [("a", &a, HZ), ("w", &w, "330300"), ("b", &b, HZ)] {
        let v = billed_visit(&mut desk, tag, id, home, "2000.00").await;
        desk.discharge(&format!("close-{tag}"), &v.visit_id)
            .await
            .unwrap();
        let s = desk
            .settle(&format!("settle-{tag}"), &v.visit_id, false)
            .await
            .unwrap();
        assert_eq!(s.state, "settled", "{s:?}");
        settled.push((v, s));
    }
    let (va, sa) = settled[0].clone();
    let sw = settled[1].1.clone();
    let sb = settled[2].1.clone();
    let p = yidi_common::period::Period::parse(&sa.period, "period").unwrap();
    let (p1, p2) = (p.next(), p.next().next());

    // Month P+1: A's settlement is cancelled and the visit settled again.
    set_clock(yidi_tests::harness::mid_period(&p1.to_string()));
    desk.cancel("cancel-a", &sa.settlement_id, "wrong bill")
        .await
        .unwrap();
    let sa2 = desk
        .settle("settle-a-again", &va.visit_id, false)
        .await
        .unwrap();
    assert_eq!(sa2.period, p1.to_string(), "{sa2:?}");
    yidi_tests::fixtures::wait_outbox_drained(nb, Duration::from_secs(10)).await;

    // 100 days after P+1: both months cleared, archived and purged at Ningbo (the
    // visit leaves the live store with P+1), and P at Hangzhou.
    let later = yidi_common::period::parse_ts(&format!("{p2}-01T00:00:00+08:00"), "t").unwrap()
        + chrono::Duration::days(100);
    set_clock(later);
    let (ps, p1s) = (p.to_string(), p1.to_string());
    let coord = clear_rounds(&fed, dir.path(), &[&ps, &p1s], later).await;
    let nb_p = export_and_purge(nb, &ps).await;
    export_and_purge(nb, &p1s).await;
    export_and_purge(hz, &ps).await;
    coord.stop().await;
    assert_eq!(live(nb, &ps), [0, 0, 0]);
    assert_eq!(live(nb, &p1s), [0, 0, 0]);

    // W's claim id is inside the range of Hangzhou's archive of P but was never stored
    // there: a reversal of it is an unknown claim's (tombstoned as abandoned), not an
    // archived one's.
    let mut peer = hz.peer().await;
    let reverse = |claim: &str, rid: &str| proto::ReverseClaimRequest {
        request_id: rid.into(),
        claim_id: claim.into(),
        reversal_id: rid.into(),
        reason: "test".into(),
        reversed_at: yidi_common::period::format_ts(later),
        treatment_region: NB.into(),
        abandon_only: false,
    };
    let r = peer
        .reverse_claim(reverse(&sw.settlement_id, "rev-w"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.state, "abandoned", "{r:?}");

    // Ningbo restores P: the visit of A's first settlement comes back with it, though
    // it left the live store with P+1.
    let mut admin = nb.admin().await;
    // The node's own copy of the archive, as an operator's copy would be.
    let file = nb
        .data_dir
        .join("archive")
        .join(format!("{NB}-{ps}.sqlite"));
    admin
        .write_archive(proto::ArchiveChunk {
            period: ps.clone(),
            offset: 0,
            data: std::fs::read(&file).unwrap(),
            total: 0,
        })
        .await
        .unwrap();
    let restored = admin
        .restore_archive(proto::RestoreArchiveRequest {
            manifest: nb_p.to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(restored.state, "restored", "{restored:?}");
    assert_eq!(live(nb, &ps), [3, 0, 3]);
    let back = desk.get(&sa.settlement_id).await.unwrap();
    assert_eq!(back.state, "cancelled");
    assert_eq!(back.split.as_ref().unwrap().medfee_sumamt, "2000.00");
    assert_eq!(back.split.as_ref().unwrap().fund_pay_sumamt, "700.00");

    // B's settlement is cancelled at Ningbo (its month restored there), but Hangzhou
    // archived B's claim: the reversal is parked with the alarm, kept in the outbox.
    desk.cancel("cancel-b", &sb.settlement_id, "late")
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let parked = loop {
        let o = yidi_tests::fixtures::outbox(nb).await;
        if let Some(i) = o.items.first()
            && i.attempts > 0
        {
            break i.clone();
        }
        assert!(std::time::Instant::now() < deadline, "never parked: {o:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(parked.kind, "reverse");
    assert!(
        parked.last_error.starts_with(&format!(
            "home region {HZ} archived period {ps}, which holds the record this reverse item \
             concerns; it is parked and looked at again every 24 h: restore period {ps} at {HZ} \
             (yidi admin archive restore --file {HZ}-{ps}.sqlite) and it goes through. \
             The home node said: claim {} belongs to period {ps}, archived",
            sb.settlement_id
        )),
        "{}",
        parked.last_error
    );
    // Not holding up the items behind it: a cancellation of this month reaches Hangzhou.
    let v = billed_visit(&mut desk, "b2", &b, HZ, "100.00").await;
    desk.discharge("close-b2", &v.visit_id).await.unwrap();
    let s = desk.settle("settle-b2", &v.visit_id, false).await.unwrap();
    desk.cancel("cancel-b2", &s.settlement_id, "wrong")
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let st = peer
            .claim_status(proto::ClaimStatusRequest {
                claim_id: s.settlement_id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        if st.state == "reversed" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{st:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let o = yidi_tests::fixtures::outbox(nb).await;
    assert_eq!(o.depth, 1, "only the parked item is left: {o:?}");
    assert_eq!(o.items[0].ref_id, parked.ref_id);
}
