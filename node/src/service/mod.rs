//! gRPC service implementations of the node, and the state they share.

pub mod admin;
pub mod archive;
pub mod audit;
pub mod clearing;
pub mod funds;
pub mod hospital;
pub mod peer;
