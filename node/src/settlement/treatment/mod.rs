//! The treatment node's side: what a hospital's system does at its local node. For a
//! patient insured elsewhere the node applies the home region's policy (cached by
//! version) to the home node's accumulators, records its intent durably, commits the
//! claim at the home node, and only then records the settlement and answers ("write
//! last, read first": an intent whose outcome is unknown is resolved by asking the home
//! node for the claim's status). Same-city visits take the same API and commit locally in
//! one transaction.
//!
//! One file per phase of a visit: identify, visit (OpenVisit, CloseVisit), visit_edit
//! (UpdateVisit), visit_undo (CancelVisit, ReopenVisit), bill (fees and
//! pricing), settle (PreSettle and Settle, the one orchestrator), offline (the offline
//! rule and its outbox item), recovery (intents in doubt, restart recovery), cancel
//! (CancelSettlement, 冲正) and queries. Calls go only downwards, never back:
//!
//! ```text
//! settle   ──► bill (pricing), recovery, offline
//! cancel   ──► recovery (a 冲正 of a request still in doubt)
//! recovery ──► offline (the repeat of a request the home node cannot be asked about)
//! every phase file ──► shared (institution, visit, bill, InFlight)
//!                      records (settlement rows), home_calls (eligibility, policy)
//! ```
//!
//! Other modules use the functions and types re-exported here.

mod bill;
mod cancel;
mod door;
mod home_calls;
mod hospital_write;
mod identify;
mod offline;
mod queries;
mod records;
mod recovery;
mod settle;
mod shared;
mod visit;
mod visit_edit;
mod visit_undo;

pub use bill::{undo_fees, upload_fees};
pub use cancel::{cancel, reverse_request};
pub use identify::{identify, lookup_local};
pub use queries::{
    DetailDifference, DetailEntry, DetailKind, get_settlement, list_settlements, reconcile_detail,
    reconcile_detail_entries, reconcile_totals,
};
pub(crate) use records::finish_committed;
pub use recovery::{RECOVERY_MIN_AGE, recover, resolve_intent};
pub use settle::{WithVisit, pre_settle, pre_settle_declared, settle, settle_declared};
pub use shared::{InFlight, check_institution, now_ms, scope};
pub use visit::{close_visit, open_visit};
pub use visit_edit::update_visit;
pub use visit_undo::{cancel_visit, reopen_visit};
