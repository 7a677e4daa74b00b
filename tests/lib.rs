//! Shared helpers for the workspace-level tests: start real nodes in-process on
//! `127.0.0.1:0` in temporary directories, connect clients, stop them through their
//! shutdown future ([`harness`]); or run the real `yidi` binary as separate processes
//! ([`process`]).

pub mod fixtures;
pub mod harness;
pub mod pki;
pub mod process;
