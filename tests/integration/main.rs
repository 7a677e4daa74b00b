//! The workspace's end-to-end tests, one binary: each module starts real nodes (in
//! process or as `yidi` child processes) and drives them over gRPC or the command line.
//! One binary rather than one per file keeps the debug build small and links once.

mod admin;
mod admission;
mod archive;
mod bench;
mod clearing;
mod clearing_steps;
mod cli_admin;
mod cli_clearing;
mod cli_errors;
mod cli_flags;
mod cli_hospital;
mod cli_quote;
mod cli_security;
mod commit_batch;
mod console;
mod console_login;
mod demo;
mod directory;
mod doc_run;
mod edge;
mod edge_fuzz;
mod footprint;
mod kill;
mod load_persons;
mod local_run;
mod money_guards;
mod national;
mod nhsa;
mod nhsa_ops;
mod observability;
mod refused_resettle;
mod retention;
mod security;
mod settlement;
mod settlement_concurrency;
mod settlement_failures;
mod settlement_flows;
mod store_files;
mod write_queue;
