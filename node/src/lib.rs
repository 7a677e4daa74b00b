//! yidi-node: the node daemon (one per city agency) and the provincial clearing
//! coordinator, as a library. The `yidi` binary, the command-line clients, the offline
//! tools, the benchmarks and the demo live in the yidi-cli crate (`node/cli/`) and use
//! only this public API; tests start nodes in-process the same way.
//!
//! What a program built on the library uses:
//!
//! - [`server`]: run a node — [`server::serve`] on a bound listener (tests, the demo,
//!   the benchmarks), [`server::run`] for the daemon; [`config`] resolves its settings
//!   ([`config::NodeArgs`] → [`config::NodeConfig`]).
//! - [`coordinator`]: the clearing coordinator — its settings, [`coordinator::serve`];
//!   [`metrics`] runs it with its metrics listener and scrapes a `/metrics` endpoint.
//! - [`tls`]: the transport — server security settings, the clients' `--ca/--cert/--key`
//!   flags ([`tls::ClientArgs`]) and their channels; [`identity`] names the party a
//!   certificate speaks for; [`revoked`] reads the revocation list.
//! - [`store`]: the SQLite store, for the offline tools (backup, check, first load of
//!   the person register); [`error`] is the error type every operation returns.
//! - The request and reply types of every RPC, and the generated clients, are
//!   `yidi_common::proto`.
//!
//! The rest is the daemon's inside, public so that integration tests can reach it:
//! [`service`] (the gRPC implementations and their shared state), [`settlement`],
//! [`funds`], [`peers`], [`auth`], [`limits`], [`clock`], [`idempotency`],
//! [`policy_cache`].

pub mod admission;
pub mod auth;
pub mod clearing;
pub mod clock;
pub mod config;
pub mod console;
pub mod context;
pub mod coordinator;
pub mod directory;
pub mod eligibility_cache;
pub mod error;
pub mod funds;
pub mod idempotency;
pub mod identity;
pub mod limits;
pub mod metrics;
#[cfg(test)]
mod module_graph;
pub mod nhsa;
pub mod peers;
pub mod policy_cache;
pub mod prebound;
pub mod records;
pub mod revoked;
pub mod server;
pub mod service;
pub mod serving;
pub mod settlement;
pub mod store;
pub mod tls;

pub use error::{Error, Result};
