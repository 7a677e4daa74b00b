//! Command-line clients of the `yidi` binary: each talks to a running node over gRPC and
//! prints tables, or JSON with `--json` — except `load`, which writes a stopped node's
//! store directly.

pub mod admin;
pub mod archive;
pub mod audit;
pub mod clearing;
pub mod console_login;
pub mod flags;
pub mod hospital;
pub mod import;
pub mod load;
pub mod output;
pub mod statement;
