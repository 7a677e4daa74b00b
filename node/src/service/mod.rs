//! gRPC service implementations of the node, and the state they share.

pub mod admin;
pub mod audit;
pub mod clearing;
pub mod funds;
pub mod hospital;
pub mod peer;

// The node context moved below service/ and settlement/; this re-export serves branches
// still using the old path until they are merged.
pub use crate::context::{NodeState, State, TestHooks, page_size};
