//! Validation at the API edge: what a caller is told when a request is too big, a value
//! is malformed at length, a record is of the wrong kind for the call, or the node fails
//! inside — each a specific status naming the field or the record, and nothing changed.

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use tonic::Code;
use yidi_common::proto::{self, HospitalLevel as Hl, InstitutionKind as Ik, VisitKind as Vk};
use yidi_node::context::TestHooks;
use yidi_tests::{
    fixtures::{
        Desk, VISIT_OPENED, billed_visit, fee_line, filed_employee, id_number, inst, institution,
        settled_2000_at_hz_rates, three_cities, wait_outbox_drained,
    },
    harness::TestNode,
};

const HZ: &str = "330100";
const NB: &str = "330200";

/// Refused as INVALID_ARGUMENT with exactly `message`.
#[track_caller]
fn invalid(e: &tonic::Status, message: &str) {
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert_eq!(e.message(), message);
}

/// An internal error (a real SQLite error, forced by a test hook) reaches the caller as
/// INTERNAL with a reference only: no SQL, no table name, no SQLite text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_error_answers_a_reference_without_store_detail() {
    let dir = tempfile::tempdir().unwrap();
    let hooks = TestHooks::default();
    let fail = Arc::clone(&hooks.store_error_on_get_settlement);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let node = TestNode::start_on(listener, HZ, dir.path().join("hz"), move |c| {
        c.hooks = hooks.clone();
    })
    .await;
    institution(&node, inst::HZ_H3, Ik::Hospital, Hl::HospitalLevel3).await;
    let mut hospital = node.hospital().await;
    let req = proto::GetSettlementRequest {
        institution_code: inst::HZ_H3.into(),
        settlement_id: "S-1".into(),
    };
    fail.store(true, Ordering::SeqCst);
    let e = hospital.get_settlement(req.clone()).await.unwrap_err();
    assert_eq!(e.code(), Code::Internal, "{e:?}");
    let msg = e.message();
    let reference = msg
        .strip_prefix("internal error (ref ")
        .and_then(|rest| rest.split_once(')'))
        .map(|(r, _)| r.to_owned())
        .unwrap_or_else(|| panic!("no reference in {msg:?}"));
    assert_eq!(reference.len(), 12, "{msg}");
    assert!(reference.chars().all(|c| c.is_ascii_hexdigit()), "{msg}");
    assert!(
        msg.ends_with("the operator's log has the detail under this reference"),
        "{msg}"
    );
    for leak in [
        "store",
        "SQLite",
        "sqlite",
        "no such table",
        "test_hook_missing_table",
        "SELECT",
    ] {
        assert!(!msg.contains(leak), "{leak:?} leaked in {msg:?}");
    }
    // Each incident has its own reference.
    let again = hospital.get_settlement(req.clone()).await.unwrap_err();
    assert_ne!(again.message(), msg);
    // Without the fault the same call is an ordinary NOT_FOUND.
    fail.store(false, Ordering::SeqCst);
    let e = hospital.get_settlement(req).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
}

/// Every table of a node's store: its row count and a hash of all its rows, read through
/// a connection of its own (WAL lets it read beside the running node). Two equal
/// fingerprints mean nothing was written in between.
pub(crate) fn store_fingerprint(
    node: &TestNode,
) -> std::collections::BTreeMap<String, (usize, u64)> {
    db_fingerprint(&node.data_dir.join("node.db"))
}

/// [`store_fingerprint`] of the SQLite file at `path` (a node's or the coordinator's).
pub(crate) fn db_fingerprint(
    path: &std::path::Path,
) -> std::collections::BTreeMap<String, (usize, u64)> {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let db =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let tables: Vec<String> = db
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let mut out = std::collections::BTreeMap::new();
    for t in tables {
        let mut stmt = db.prepare(&format!("SELECT * FROM \"{t}\"")).unwrap();
        let n = stmt.column_count();
        let mut h = DefaultHasher::new();
        let mut rows = 0;
        let mut q = stmt.query([]).unwrap();
        while let Some(row) = q.next().unwrap() {
            rows += 1;
            for i in 0..n {
                format!("{:?}", row.get_ref(i).unwrap()).hash(&mut h);
            }
        }
        out.insert(t, (rows, h.finish()));
    }
    out
}

/// A settled 2000.00 outpatient claim of a Hangzhou employee at Ningbo (see
/// `fixtures::settled_2000_at_hz_rates`), its home commit delivered.
pub(crate) async fn settled_at_nb(
    fed: &yidi_tests::harness::Federation,
    desk: &mut Desk,
) -> proto::Settlement {
    let id = filed_employee(fed.node(HZ), "1979-09-09", 41, "1000.00", NB).await;
    let v = billed_visit(desk, "1", &id, HZ, "2000.00").await;
    let s = desk.settle("settle-1", &v.visit_id, true).await.unwrap();
    settled_2000_at_hz_rates(&s);
    wait_outbox_drained(fed.node(NB), Duration::from_secs(10)).await;
    s
}

/// Item #18.5: a megabyte in a field is refused before anything is parsed or stored,
/// naming the field, the limit and the length; the caller's default client gets that
/// message (not RESOURCE_EXHAUSTED), and both stores are unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_fields_are_refused_by_name_and_nothing_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let fed = three_cities(dir.path(), |_, _| {}).await;
    let mut desk = Desk::at(fed.node(NB), inst::NB_H3).await;
    let s = settled_at_nb(&fed, &mut desk).await;
    let (nb0, hz0) = (
        store_fingerprint(fed.node(NB)),
        store_fingerprint(fed.node(HZ)),
    );
    let mega = "E".repeat(1 << 20);

    let id = id_number(HZ, "1979-09-09", 41);
    let mut open = desk.open_req("ov-big", &id, HZ, Vk::Outpatient, VISIT_OPENED);
    open.diagnosis_code = mega.clone();
    let e = desk.client.open_visit(open).await.unwrap_err();
    invalid(
        &e,
        "invalid diagnosis_code: is 1048576 characters long; at most 30 are accepted",
    );

    let e = desk
        .cancel("cancel-big", &s.settlement_id, &mega)
        .await
        .unwrap_err();
    invalid(
        &e,
        "invalid reason: is 1048576 characters long; at most 500 are accepted",
    );
    // 500 Han characters are 1500 bytes, and accepted: the limit counts characters.
    // (Checked on a fresh request id below, after the refusals.)

    // A fee line's field, named by its index.
    let mut line = fee_line("9", "NB-A", "1", "1.00", "1.00");
    line.item_code = "X".repeat(33);
    let e = desk
        .fees(
            "fees-big",
            "330200-V-00000001",
            vec![fee_line("8", "NB-A", "1", "1.00", "1.00"), line],
        )
        .await
        .unwrap_err();
    invalid(
        &e,
        "invalid lines[1].item_code: is 33 characters long; at most 32 are accepted",
    );
    // Too many lines in one upload.
    let e = desk
        .fees(
            "fees-many",
            "330200-V-00000001",
            vec![fee_line("1", "NB-A", "1", "1.00", "1.00"); 2001],
        )
        .await
        .unwrap_err();
    invalid(
        &e,
        "invalid lines: has 2001 elements; at most 2000 are accepted in one request",
    );

    // The admin and peer services check the same way.
    let mut admin = fed.node(HZ).admin().await;
    let e = admin
        .record_deduction(proto::RecordDeductionRequest {
            request_id: "ded-big".into(),
            settlement_id: s.settlement_id.clone(),
            amount: "1.00".into(),
            reason: mega.clone(),
        })
        .await
        .unwrap_err();
    invalid(
        &e,
        "invalid reason: is 1048576 characters long; at most 500 are accepted",
    );
    let mut peer = fed.node(HZ).peer().await;
    let e = peer
        .claim_status(proto::ClaimStatusRequest {
            claim_id: mega.clone(),
        })
        .await
        .unwrap_err();
    invalid(
        &e,
        "invalid claim_id: is 1048576 characters long; at most 30 are accepted",
    );

    assert_eq!(store_fingerprint(fed.node(NB)), nb0);
    assert_eq!(store_fingerprint(fed.node(HZ)), hz0);
    assert_eq!(desk.get(&s.settlement_id).await.unwrap().state, "settled");

    // At the limit it is accepted: 500 Han characters (1500 bytes) as the reason.
    let c = desk
        .cancel("cancel-ok", &s.settlement_id, &"因".repeat(500))
        .await
        .unwrap();
    assert_eq!(c.state, "reversal");
}

/// Item #18.6: a rejected value is quoted by at most 32 characters and its size, so the
/// message stays short however long the value (here a request id at its limit, 64).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_value_is_quoted_by_a_short_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let fed = three_cities(dir.path(), |_, _| {}).await;
    let mut desk = Desk::at(fed.node(NB), inst::NB_H3).await;
    let id = filed_employee(fed.node(HZ), "1979-09-09", 42, "1000.00", NB).await;
    let rid = format!("r-{}", "7".repeat(62));
    let mut open = desk.open_req(&rid, &id, HZ, Vk::Outpatient, VISIT_OPENED);
    open.external_visit_no = "EXT-1".into();
    desk.client.open_visit(open.clone()).await.unwrap();
    let before = store_fingerprint(fed.node(NB));
    // The same request id with another payload.
    open.diagnosis_code = "J06.9".into();
    let e = desk.client.open_visit(open).await.unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
    let prefix = format!(
        "request_id \"r-{}\"…(64 bytes) was already used",
        "7".repeat(30)
    );
    assert!(e.message().starts_with(&prefix), "{}", e.message());
    assert_eq!(store_fingerprint(fed.node(NB)), before);
    // A malformed amount at its length limit (24) is quoted whole.
    let v = desk
        .open("ov-2", &id, HZ, Vk::Outpatient, VISIT_OPENED)
        .await
        .unwrap();
    let bad = "12345678901234567890.0x0";
    let before = store_fingerprint(fed.node(NB));
    let e = desk
        .fees(
            "fees-bad",
            &v.visit_id,
            vec![fee_line("1", "NB-A", "1", "1.00", bad)],
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(
        e.message().starts_with("invalid lines[0].amount:"),
        "{}",
        e.message()
    );
    assert!(e.message().contains(&format!("{bad:?}")), "{}", e.message());
    assert_eq!(store_fingerprint(fed.node(NB)), before);
}

/// Item #18.11: a reversal record's id cannot be cancelled (FAILED_PRECONDITION saying
/// what it is and what can be done) but can be read; nothing changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_reversal_says_what_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let fed = three_cities(dir.path(), |_, _| {}).await;
    let mut desk = Desk::at(fed.node(NB), inst::NB_H3).await;
    let s = settled_at_nb(&fed, &mut desk).await;
    let r = desk
        .cancel("cancel-1", &s.settlement_id, "wrong patient")
        .await
        .unwrap();
    assert_eq!(
        (r.state.as_str(), r.reverses.as_str()),
        ("reversal", s.settlement_id.as_str())
    );
    wait_outbox_drained(fed.node(NB), Duration::from_secs(10)).await;
    let (nb0, hz0) = (
        store_fingerprint(fed.node(NB)),
        store_fingerprint(fed.node(HZ)),
    );

    let e = desk
        .cancel("cancel-2", &r.settlement_id, "")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert_eq!(
        e.message(),
        format!(
            "settlement {} is a reversal (冲正/cancellation record) of {}; it cannot itself be \
             cancelled — a cancellation is final; to charge the visit again, settle it again \
             with a new request id",
            r.settlement_id, s.settlement_id
        )
    );
    // Reading it answers the record.
    let got = desk.get(&r.settlement_id).await.unwrap();
    assert_eq!(got, r);
    assert_eq!(got.split.unwrap().fund_pay_sumamt, "-700.00");
    assert_eq!(store_fingerprint(fed.node(NB)), nb0);
    assert_eq!(store_fingerprint(fed.node(HZ)), hz0);
}

/// Item #18.11: the id of an attempt that failed (the home node was down; the refused
/// settlement got a record of its own) answers the same to GetSettlement and to
/// CancelSettlement: NOT_FOUND saying it failed and nothing is owed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_attempt_answers_the_same_to_get_and_cancel() {
    let dir = tempfile::tempdir().unwrap();
    let mut fed = three_cities(dir.path(), |_, _| {}).await;
    let mut desk = Desk::at(fed.node(NB), inst::NB_H3).await;
    let id = filed_employee(fed.node(HZ), "1979-09-09", 43, "1000.00", NB).await;
    let v = billed_visit(&mut desk, "1", &id, HZ, "2000.00").await;
    // The pre-settlement caches Hangzhou's policy, which decides what happens offline.
    desk.pre_settle(&v.visit_id, true).await.unwrap();
    fed.stop(HZ).await;
    // Hangzhou's policy refuses offline settlement: a "refused" record, and the intent
    // sent first failed. Ids are issued in sequence, so the failed one is just before.
    let s = desk.settle("settle-1", &v.visit_id, true).await.unwrap();
    assert_eq!(s.state, "refused", "{s:?}");
    let (head, seq) = s.settlement_id.rsplit_once('-').unwrap();
    let seq: u64 = seq.parse().unwrap();
    let failed = format!("{head}-{:010}", seq - 1);
    let before = store_fingerprint(fed.node(NB));
    let expected = format!(
        "settlement {failed} is an attempt that failed: no settlement was made under this id \
         and nothing is owed; settle the visit again with a new request id"
    );
    let e = desk.get(&failed).await.unwrap_err();
    assert_eq!((e.code(), e.message()), (Code::NotFound, expected.as_str()));
    let e = desk.cancel("cancel-f", &failed, "").await.unwrap_err();
    assert_eq!((e.code(), e.message()), (Code::NotFound, expected.as_str()));
    // An id never issued is plainly unknown.
    let e = desk.get("330200-S-9999999999").await.unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (
            Code::NotFound,
            "no settlement \"330200-S-9999999999\" at this node"
        )
    );
    assert_eq!(store_fingerprint(fed.node(NB)), before);
}

/// An import row over a limit is that row's error; the other rows of the batch count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_row_over_a_limit_is_that_rows_error() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(HZ, dir.path().join("hz")).await;
    let row = |n: u64, seq: u16, name: String| proto::PersonRow {
        row: n,
        id_number: id_number(HZ, "1980-01-01", seq),
        name,
        card_no: String::new(),
        insurance_type: "resident".into(),
        person_type: "resident_adult".into(),
        civil_servant: String::new(),
        status: "active".into(),
        account_balance: "0.00".into(),
        enrolled_since: "2021-07-01".into(),
    };
    let result = node
        .admin()
        .await
        .import_persons(proto::ImportPersonsRequest {
            request_id: "imp-1".into(),
            rows: vec![row(2, 1, "张三".into()), row(3, 2, "长".repeat(1 << 20))],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((result.inserted, result.updated), (1, 0));
    assert_eq!(
        result.errors,
        [proto::RowError {
            row: 3,
            field: "name".into(),
            reason: "is 1048576 characters long; at most 50 are accepted".into(),
        }]
    );
}
