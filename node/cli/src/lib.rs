//! yidi-cli: everything of the `yidi` binary except the daemon and the coordinator,
//! which it runs from yidi-node. `main.rs` only parses the command line; the commands
//! live here, on yidi-node's public API, so that tests can call them too:
//!
//! - [`cli`]: the clients of a running node or coordinator (`yidi admin`, `hospital`,
//!   `clearing`) and the first load of a person register (`yidi load-persons`);
//! - offline tools: [`certs`] (the federation's CA), [`backup`] (`yidi backup`,
//!   `check-store`), [`quote`] (the benefit engine on files);
//! - [`bench`], [`bench_clearing`]: the load generators;
//! - [`demo`]: the Zhejiang demo federation;
//! - [`directory`]: the federation directory's files and what a coordinator serves;
//! - [`i18n`]: the `--lang en|zh` labels of the text output.

pub mod backup;
pub mod bench;
pub mod bench_clearing;
pub mod certs;
pub mod cli;
pub mod demo;
pub mod directory;
pub mod i18n;
pub mod quote;

// The text-output labels of `--lang en|zh`, embedded at compile time (see `i18n`).
rust_i18n::i18n!("locales", fallback = "en");
