//! yidi-node: the node daemon (one per city agency), its SQLite store, its gRPC services,
//! and the command-line clients of the `yidi` binary. `main.rs` only parses the command
//! line; everything else lives here so that tests can start nodes in-process through
//! [`server::serve`].

pub mod auth;
pub mod backup;
pub mod bench;
pub mod bench_clearing;
pub mod certs;
pub mod clearing;
pub mod cli;
pub mod clock;
pub mod config;
pub mod coordinator;
pub mod demo;
pub mod error;
pub mod funds;
pub mod i18n;
pub mod idempotency;
pub mod identity;
pub mod limits;
pub mod metrics;
pub mod peers;
pub mod policy_cache;
pub mod quote;
pub mod server;
pub mod service;
pub mod settlement;
pub mod store;
pub mod tls;

pub use error::{Error, Result};

// The text-output labels of `--lang en|zh`, embedded at compile time (see `i18n`).
rust_i18n::i18n!("locales", fallback = "en");
