//! Validation at the API edge: what a caller is told when a request is too big, a value
//! is malformed at length, a record is of the wrong kind for the call, or the node fails
//! inside — each a specific status naming the field or the record, and nothing changed.

use std::sync::{Arc, atomic::Ordering};

use tonic::Code;
use yidi_common::proto::{self, HospitalLevel as Hl, InstitutionKind as Ik};
use yidi_node::service::TestHooks;
use yidi_tests::{
    fixtures::{inst, institution},
    harness::TestNode,
};

const HZ: &str = "330100";

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
