//! The global flags of the clients of a running server (`yidi admin`, `yidi hospital`,
//! `yidi clearing`), defined once here and flattened into each client's arguments, so
//! that every client accepts them the same way: same names, same environment variables,
//! before or after the subcommand.
//!
//! - [`ClientFlags`]: `--json`, `--request-id`, `--timeout` and the TLS files `--ca`,
//!   `--cert`, `--key`, `--tls-server-name` — every client.
//! - [`NodeFlag`]: `--node`, the node's address — the clients of a node (admin,
//!   hospital); the clearing client names the coordinator with `--coordinator`.
//! - [`LangFlag`]: `--lang` — the clients whose text output is translated (hospital,
//!   clearing).
//!
//! What one client needs differently — the deadline's default and bound, an extra
//! environment variable — it sets on the shared flag with
//! `#[command(mut_arg("timeout", …))]`, next to its own flags.

use clap::{Arg, Args};

use crate::i18n::Lang;

/// The flags every client of a running server takes.
#[derive(Debug, Clone, Args)]
pub struct ClientFlags {
    /// Print answers as JSON on stdout instead of tables (an import also hides its
    /// progress bar).
    #[arg(long, global = true)]
    pub json: bool,
    /// Request id of a state-changing call (1–64 of A-Z a-z 0-9 . _ : -). Repeating a
    /// call with the same id and the same content returns the original answer and never
    /// acts twice; the same id with other content is refused (ALREADY_EXISTS). Default:
    /// a fresh UUID per call, unless the subcommand's help says otherwise (imports,
    /// `clearing record-transfer`). `hospital` and `clearing` print the id on stderr
    /// as `request_id: …` before the call goes out.
    #[arg(long, global = true)]
    pub request_id: Option<String>,
    /// Seconds to wait for each answer (an import: for each batch). A server that stops
    /// answering fails the command with DEADLINE_EXCEEDED; the outcome of a
    /// state-changing call is then unknown: repeat it with the same --request-id.
    #[arg(long, global = true, default_value_t = 120,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout: u64,
    /// Mutual TLS: --ca, --cert (a certificate the server accepts for this client:
    /// an operator's, or the institution's for `yidi hospital`), --key.
    #[command(flatten)]
    pub tls: yidi_node::tls::ClientArgs,
}

impl ClientFlags {
    /// `--timeout`'s default and upper bound for one client, for
    /// `#[command(mut_arg("timeout", ClientFlags::timeout("30", 600)))]`.
    pub fn timeout(default: &'static str, max: u64) -> impl FnOnce(Arg) -> Arg {
        move |arg| {
            arg.default_value(default)
                .value_parser(clap::value_parser!(u64).range(1..=max))
        }
    }
}

/// `--node`: the gRPC address of the node a client talks to.
#[derive(Debug, Clone, Args)]
pub struct NodeFlag {
    /// The node's gRPC address (for a hospital: the node of the city it is in).
    #[arg(
        long,
        env = "YIDI_NODE",
        default_value = "http://127.0.0.1:7101",
        global = true
    )]
    pub node: String,
}

/// `--lang`: the language of a client's text output.
#[derive(Debug, Clone, Args)]
pub struct LangFlag {
    /// Language of text output: en or zh (default: env YIDI_LANG, else zh when LC_ALL
    /// or LANG starts with zh). JSON keeps the codes.
    #[arg(long, global = true, value_enum)]
    pub lang: Option<Lang>,
}

impl LangFlag {
    /// The flag, else the environment's language.
    #[must_use]
    pub fn resolve(&self) -> Lang {
        Lang::resolve(self.lang)
    }
}
