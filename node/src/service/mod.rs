//! gRPC service implementations of the node, and the state they share.

pub mod admin;

use std::sync::Arc;

use yidi_common::region::RegionCode;

use crate::store::Store;

/// What every service of a node needs.
#[derive(Clone)]
pub struct NodeState {
    pub region: RegionCode,
    pub name: String,
    pub store: Store,
    pub started_at: String,
}

/// Shared handle.
pub type State = Arc<NodeState>;

/// Page size for list calls: default 100, at most 1000.
#[must_use]
pub fn page_size(requested: u32) -> u32 {
    match requested {
        0 => 100,
        n => n.min(1000),
    }
}
