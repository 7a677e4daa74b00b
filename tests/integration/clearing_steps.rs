//! A clearing round over more ledger records than one writer step takes (a large node's
//! round, scaled down): frozen, marked cleared and released in steps through the real
//! ClearingParticipant service, with exact counts and sums, and a confirmation refused
//! while a freeze is unfinished.

use tonic::Code;
use yidi_common::proto::{self, clearing_participant_client::ClearingParticipantClient};
use yidi_node::store::{Store, clearing::STEP_ENTRIES};
use yidi_tests::harness::TestNode;

const HZ: &str = "330100";
const NB: &str = "330200";

/// Records `n` receivable entries toward Ningbo in 2026-03 (100.00 each) straight into
/// a new store in `dir`, plus `extra` SQL, and closes it.
async fn seeded(dir: &std::path::Path, n: u32, extra: &'static str) {
    let store = Store::open(dir, 1, HZ).expect("open store");
    store
        .write(move |c| {
            let mut st = c.prepare(
                "INSERT INTO ledger (entry_id, side, counterparty, period, kind, claim_id, amount_fen, created_at) \
                 VALUES (?1, 'receivable', '330200', '2026-03', 'claim', ?1, 10000, '2026-03-31T00:00:00Z')",
            )?;
            for i in 0..n {
                st.execute([format!("330100-S-{i:07}")])?;
            }
            c.execute_batch(extra)?;
            Ok(())
        })
        .await
        .expect("seed the ledger");
    assert!(store.close(std::time::Duration::from_secs(5)).await);
}

fn ledger_counts(dir: &std::path::Path) -> (u64, u64, u64) {
    let c = rusqlite::Connection::open(dir.join("node.db")).expect("open");
    c.query_row(
        "SELECT COUNT(*) FILTER (WHERE round_id = 'R1'), COUNT(*) FILTER (WHERE cleared_round = 'R1'), \
         COUNT(*) FILTER (WHERE round_id IS NULL AND cleared_round IS NULL) FROM ledger",
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )
    .expect("counts")
}

/// The node's positions for round R1 of 2026-03 (the report also freezes the round).
async fn report_r1(
    cp: &mut ClearingParticipantClient<tonic::transport::Channel>,
) -> proto::ReportPositionsResponse {
    cp.report_positions(proto::ReportPositionsRequest {
        round_id: "R1".into(),
        period: "2026-03".into(),
        scope: String::new(),
    })
    .await
    .expect("report")
    .into_inner()
}

/// Over 2.5 steps of records: the report freezes them all and reports them exactly;
/// once confirmed, MarkCleared answers their number and every one ends cleared by the
/// round, none left in it.
#[tokio::test]
async fn a_round_larger_than_a_step_is_frozen_and_cleared_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("hz");
    let n = 2 * STEP_ENTRIES + STEP_ENTRIES / 2;
    seeded(&dir, n, "").await;
    let node = TestNode::start(HZ, dir.clone()).await;
    let mut cp = ClearingParticipantClient::new(node.channel().await);
    let report = report_r1(&mut cp).await;
    assert_eq!(report.positions.len(), 1, "{report:?}");
    let p = &report.positions[0];
    assert_eq!(
        (
            p.counterparty.as_str(),
            p.receivable_count,
            p.receivable_sum.as_str()
        ),
        (
            NB,
            u64::from(n),
            format!("{}.00", u64::from(n) * 100).as_str()
        )
    );
    assert_eq!((p.payable_count, p.payable_sum.as_str()), (0, "0.00"));
    // As the coordinator's confirmation would leave it.
    node.stop().await;
    rusqlite::Connection::open(dir.join("node.db"))
        .unwrap()
        .execute(
            "UPDATE clearing_rounds SET state = 'confirmed' WHERE round_id = 'R1'",
            [],
        )
        .unwrap();
    let node = TestNode::start(HZ, dir.clone()).await;
    let mut cp = ClearingParticipantClient::new(node.channel().await);
    let mark = proto::MarkClearedRequest {
        request_id: "mark-R1".into(),
        round_id: "R1".into(),
        period: "2026-03".into(),
    };
    let cleared = cp
        .mark_cleared(mark.clone())
        .await
        .expect("mark")
        .into_inner();
    assert_eq!((cleared.cleared, cleared.records), (true, u64::from(n)));
    // The repeat answers the same.
    let again = cp.mark_cleared(mark).await.expect("repeat").into_inner();
    assert_eq!(again, cleared);
    node.stop().await;
    assert_eq!(ledger_counts(&dir), (0, u64::from(n), 0));
}

/// A round left `freezing` (a stop cut its freeze short): a confirmation is refused
/// and changes nothing; the repeated report finishes the freeze. Released, its records
/// are let go in steps and counted exactly.
#[tokio::test]
async fn an_unfinished_freeze_refuses_confirmation_and_a_report_finishes_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("hz");
    // 500 frozen, as a stop after the first steps leaves it, and more than a step's
    // worth not yet.
    let n = 500 + STEP_ENTRIES + 7;
    seeded(
        &dir,
        n,
        "INSERT INTO clearing_rounds (round_id, period, state, frozen_at) VALUES ('R1', '2026-03', 'freezing', 'x');
         UPDATE ledger SET round_id = 'R1' WHERE entry_id < '330100-S-0000500';",
    )
    .await;
    assert_eq!(ledger_counts(&dir), (500, 0, u64::from(n) - 500));
    let node = TestNode::start(HZ, dir.clone()).await;
    let mut cp = ClearingParticipantClient::new(node.channel().await);
    let refused = cp
        .confirm_statement(proto::StatementRequest {
            request_id: "c1".into(),
            statement: Some(proto::Statement {
                round_id: "R1".into(),
                period: "2026-03".into(),
                ..Default::default()
            }),
        })
        .await
        .expect_err("refused while freezing");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(
        refused
            .message()
            .contains("round R1 is still being frozen here"),
        "{refused:?}"
    );
    let report = report_r1(&mut cp).await;
    assert_eq!(report.positions[0].receivable_count, u64::from(n));
    let released = cp
        .release_round(proto::ReleaseRoundRequest {
            round_id: "R1".into(),
        })
        .await
        .expect("release")
        .into_inner();
    assert_eq!(released.released, u64::from(n));
    node.stop().await;
    assert_eq!(ledger_counts(&dir), (0, 0, u64::from(n)));
    let state: String = rusqlite::Connection::open(dir.join("node.db"))
        .unwrap()
        .query_row(
            "SELECT state FROM clearing_rounds WHERE round_id = 'R1'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(state, "released");
}
