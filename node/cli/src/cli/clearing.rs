//! `yidi clearing …`: the provincial operator's client of the coordinator's
//! CoordinatorService — open a round for a period, drive it, look at its disputes and
//! statement (tables, `--json`, or a CSV export), record the bank transfers, abort.
//! The node's side (ledger, deductions, reserves, confirming a statement by hand) is
//! `yidi admin`'s.
//!
//! Refused calls print `error: <CODE>: <message>` on stderr and exit 1, like every
//! other client of the `yidi` binary.

use std::{io::Write as _, path::PathBuf, time::Duration};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use comfy_table::Cell;
use serde_json::{Value, json};
use tonic::{Code, Request, Status, transport::Channel};
use yidi_common::{
    money,
    period::Period,
    proto::{self, coordinator_service_client::CoordinatorServiceClient},
};

use super::{
    flags::{ClientFlags, LangFlag},
    output::{self, Field, Record, emit, num, print_rows, text},
};
use crate::i18n::Lang;

/// The connected coordinator client.
pub type Client = CoordinatorServiceClient<Channel>;

/// Flags of `yidi clearing`. The global flags (flags.rs) may appear before or after the
/// subcommand. `run` and `resolve` call every participant, each with the coordinator's
/// own per-call deadline, so a call may wait up to an hour (120 s by default).
#[derive(Debug, Args)]
#[command(mut_arg("timeout", ClientFlags::timeout("120", 3600)))]
pub struct ClearingArgs {
    /// The coordinator's gRPC address.
    #[arg(
        long,
        env = "YIDI_COORDINATOR",
        default_value = "http://127.0.0.1:7100",
        global = true
    )]
    pub coordinator: String,
    #[command(flatten)]
    pub lang: LangFlag,
    #[command(flatten)]
    pub client: ClientFlags,
    #[command(subcommand)]
    pub command: ClearingCommand,
}

#[derive(Debug, Subcommand)]
pub enum ClearingCommand {
    /// Print a login link for the clearing desk's web console (docs/console.md), signed
    /// with your operator key: valid for a few minutes, signs in once.
    ConsoleLogin(super::console_login::ConsoleLoginArgs),
    /// Open a clearing round for a period (YYYY-MM, calendar month UTC+8). One live round
    /// at a time; a period already cleared cannot be opened again (its late records go
    /// into the next period's round).
    Open {
        /// The period to clear, e.g. 2026-05.
        period: String,
        /// Clear the current period before it is over (a demo, a test, a mid-month
        /// settlement): records of the period that arrive after the round freezes are
        /// carried into the next round. Without it only past periods can be opened; a
        /// future period is refused either way.
        #[arg(long)]
        early: bool,
        /// Settle the round even if no node has a record of the period: it settles
        /// with no transfers, and the period and every earlier one can no longer be
        /// opened. Without it a round that finds no record is aborted and nothing is
        /// cleared.
        #[arg(long)]
        allow_empty: bool,
    },
    /// Advance a round as far as it can go now: collect positions, reconcile, issue the
    /// statement, collect confirmations, and once every transfer is recorded mark the
    /// period cleared at every node. (The coordinator also retries by itself every
    /// few seconds.)
    Run {
        /// Round id, e.g. 2026-05-r1.
        round_id: String,
    },
    /// Show one round (state, who is missing, confirmations, transfers), or every round.
    Status {
        /// Round id; omit to list every round, oldest first.
        round_id: Option<String>,
    },
    /// The pairs whose two sides disagree, drilled down to ledger entry ids (ids and
    /// amounts only, never personal data).
    Disputes {
        /// Round id.
        round_id: String,
    },
    /// Resolve a DISPUTED round the documented way: the entries only one side has (or
    /// whose amounts differ) are excluded from this round on both sides and carried to
    /// the next one; the round then collects again.
    Resolve {
        /// Round id.
        round_id: String,
    },
    /// The round's statement: net positions, payment instructions through the provincial
    /// clearing account, the bilateral gross matrix, reserves and alarms, Σ net = 0, how
    /// many transfers netting saved, and the digest nodes confirm.
    Statement {
        /// Round id.
        round_id: String,
        /// Also write the statement as CSV to FILE: one row per net position,
        /// instruction and gross pair (columns: round_id, section, region,
        /// counterparty, receivable, payable, net, amount, count).
        #[arg(long, value_name = "FILE")]
        csv: Option<PathBuf>,
    },
    /// Record a bank transfer of a CONFIRMED round. It must match one payment
    /// instruction of the statement exactly (from, to, amount); once every instruction
    /// is recorded the round is SETTLED and every node marks the period cleared. The
    /// request id defaults to `xfer:<round>:<from>:<to>`, since a round has one transfer
    /// per instruction.
    RecordTransfer {
        /// Round id.
        round_id: String,
        /// Paying region: a net debtor, or the clearing account (the coordinator's
        /// province code) when it pays a creditor.
        #[arg(long)]
        from: String,
        /// Receiving region: the clearing account, or a net creditor.
        #[arg(long)]
        to: String,
        /// Amount in yuan, exactly as the instruction states it, e.g. 8000.00.
        #[arg(long)]
        amount: String,
        /// The bank's reference of the transfer (kept with the round for audit).
        #[arg(long)]
        reference: String,
    },
    /// The transfers recorded for a round, with every version of each record (the
    /// recording and each correction: time, operator, reason, request id).
    Transfers {
        /// Round id.
        round_id: String,
    },
    /// Correct the bank reference of a recorded transfer; the old reference stays in
    /// the transfer's history (`yidi clearing transfers`). The amount and the regions
    /// are the statement's and cannot change.
    CorrectTransfer {
        /// Round id.
        round_id: String,
        /// Paying region of the recorded transfer.
        #[arg(long)]
        from: String,
        /// Receiving region of the recorded transfer.
        #[arg(long)]
        to: String,
        /// The corrected bank reference.
        #[arg(long)]
        reference: String,
        /// Why the recorded reference was wrong (kept in the history).
        #[arg(long)]
        reason: String,
    },
    /// Abort a round (only before the first confirmation): every node unfreezes its
    /// records, which go into the next round.
    Abort {
        /// Round id.
        round_id: String,
    },
}

// ---------------------------------------------------------------- records

fn int(n: impl TryInto<u64>) -> Field {
    Field::Int(n.try_into().unwrap_or(u64::MAX))
}

impl Record for proto::Round {
    const PLURAL: &'static str = "rounds";
    const LIST_COLUMNS: &'static [&'static str] = &[
        "round_id",
        "period",
        "state",
        "missing",
        "transfers",
        "updated_at",
        "note",
    ];
    fn fields(&self) -> Vec<(&'static str, Field)> {
        vec![
            ("round_id", text(&self.round_id)),
            ("period", text(&self.period)),
            ("state", text(&self.state)),
            ("missing", Field::List(self.missing.clone())),
            ("confirmed", Field::List(self.confirmed.clone())),
            (
                "transfers",
                text(&format!(
                    "{}/{}",
                    self.transfers_recorded, self.transfers_expected
                )),
            ),
            ("cleared", Field::List(self.cleared.clone())),
            ("allow_empty", Field::Bool(self.allow_empty)),
            ("updated_at", text(&self.updated_at)),
            ("note", text(&self.note)),
        ]
    }
}

/// A round as JSON: the wire fields, with the counts of transfers as numbers instead of
/// the table's `recorded/expected` text.
fn round_json(r: &proto::Round) -> Value {
    let mut v = output::to_json(r);
    if let Some(o) = v.as_object_mut() {
        o.remove("transfers");
        o.insert("transfers_recorded".into(), json!(r.transfers_recorded));
        o.insert("transfers_expected".into(), json!(r.transfers_expected));
    }
    v
}

impl Record for proto::Dispute {
    const PLURAL: &'static str = "disputes";
    const LIST_COLUMNS: &'static [&'static str] = &[
        "creditor",
        "debtor",
        "creditor_sum",
        "debtor_sum",
        "only_at_creditor",
        "only_at_debtor",
        "amount_differs",
    ];
    fn fields(&self) -> Vec<(&'static str, Field)> {
        vec![
            ("creditor", text(&self.creditor)),
            ("debtor", text(&self.debtor)),
            ("creditor_sum", num(&self.creditor_sum)),
            ("debtor_sum", num(&self.debtor_sum)),
            (
                "only_at_creditor",
                Field::List(self.only_at_creditor.clone()),
            ),
            ("only_at_debtor", Field::List(self.only_at_debtor.clone())),
            ("amount_differs", Field::List(self.amount_differs.clone())),
        ]
    }
}

impl Record for proto::NetPosition {
    const PLURAL: &'static str = "nets";
    const LIST_COLUMNS: &'static [&'static str] = &["region", "receivable", "payable", "net"];
    fn fields(&self) -> Vec<(&'static str, Field)> {
        vec![
            ("region", text(&self.region)),
            ("receivable", num(&self.receivable)),
            ("payable", num(&self.payable)),
            ("net", num(&self.net)),
        ]
    }
}

impl Record for proto::PaymentInstruction {
    const PLURAL: &'static str = "instructions";
    const LIST_COLUMNS: &'static [&'static str] = &["from_region", "to_region", "amount"];
    fn fields(&self) -> Vec<(&'static str, Field)> {
        vec![
            ("from_region", text(&self.from_region)),
            ("to_region", text(&self.to_region)),
            ("amount", num(&self.amount)),
        ]
    }
}

impl Record for proto::GrossEntry {
    const PLURAL: &'static str = "gross";
    const LIST_COLUMNS: &'static [&'static str] = &["debtor", "creditor", "count", "amount"];
    fn fields(&self) -> Vec<(&'static str, Field)> {
        vec![
            ("debtor", text(&self.debtor)),
            ("creditor", text(&self.creditor)),
            ("count", int(self.count)),
            ("amount", num(&self.amount)),
        ]
    }
}

use super::statement::*;

// ---------------------------------------------------------------- transfers

fn transfer_json(t: &proto::RecordedTransfer) -> Value {
    json!({
        "from_region": t.from_region,
        "to_region": t.to_region,
        "amount": t.amount,
        "reference": t.reference,
        "history": t.history.iter().map(|v| json!({
            "version": v.version,
            "amount": v.amount,
            "reference": v.reference,
            "reason": v.reason,
            "operator": v.operator,
            "request_id": v.request_id,
            "at": v.at,
        })).collect::<Vec<_>>(),
    })
}

/// One row per version of each transfer (the current one last), or as JSON
/// `{"round_id", "transfers": [{…, "history": [...]}]}`.
fn print_transfers(round_id: &str, transfers: &[proto::RecordedTransfer], as_json: bool) {
    if as_json {
        return output::print_json(&json!({
            "round_id": round_id,
            "transfers": transfers.iter().map(transfer_json).collect::<Vec<_>>(),
        }));
    }
    if transfers.is_empty() {
        return emit(format_args!(
            "round {round_id} has no recorded transfers; record them with `yidi clearing record-transfer {round_id} …`"
        ));
    }
    let mut t = output::table();
    t.set_header(vec![
        Cell::new("from"),
        Cell::new("to"),
        right("amount"),
        right("version"),
        Cell::new("reference"),
        Cell::new("at"),
        Cell::new("operator"),
        Cell::new("reason"),
    ]);
    for tr in transfers {
        for v in &tr.history {
            let current = v.reference == tr.reference
                && tr.history.last().map(|l| l.version) == Some(v.version);
            t.add_row(vec![
                Cell::new(&tr.from_region),
                Cell::new(&tr.to_region),
                right(&v.amount),
                right(if current {
                    format!("{} (current)", v.version)
                } else {
                    v.version.to_string()
                }),
                Cell::new(&v.reference),
                Cell::new(&v.at),
                Cell::new(&v.operator),
                Cell::new(&v.reason),
            ]);
        }
    }
    emit(format_args!("{t}"));
    emit(format_args!(
        "{} transfer(s) recorded; correct a reference with `yidi clearing correct-transfer {round_id} --from … --to … --reference … --reason …`",
        transfers.len()
    ));
}

// ---------------------------------------------------------------- rounds

/// What the operator does next, by state; printed under a round's table.
fn next_step(r: &proto::Round) -> Option<String> {
    let id = &r.round_id;
    let waiting = r.missing.join(", ");
    Some(match r.state.as_str() {
        "OPEN" | "COLLECTING" if !r.missing.is_empty() => format!(
            "waiting for the positions of {waiting}; the coordinator retries every few seconds, or run `yidi clearing run {id}` once they are back"
        ),
        "OPEN" | "COLLECTING" | "RECONCILING" => format!("next: yidi clearing run {id}"),
        "DISPUTED" => format!(
            "pairs disagree: `yidi clearing disputes {id}` shows the entries; `yidi clearing resolve {id}` carries the one-sided entries to the next round on both sides"
        ),
        "STATEMENT_ISSUED" => format!(
            "awaiting confirmation by {waiting}; a node with clearing_auto_confirm = false confirms with `yidi admin --node <its URL> clearing confirm {id} --digest <digest from yidi clearing statement {id}>`, then `yidi clearing run {id}`"
        ),
        "CONFIRMED" => format!(
            "{} of {} transfers recorded; record each bank transfer with `yidi clearing record-transfer {id} --from … --to … --amount … --reference …` (instructions: yidi clearing statement {id})",
            r.transfers_recorded, r.transfers_expected
        ),
        "SETTLED" if !r.missing.is_empty() => format!(
            "settled; waiting for {waiting} to mark the period cleared (retried automatically, or `yidi clearing run {id}`)"
        ),
        _ => return None,
    })
}

fn print_round(r: &proto::Round, as_json: bool) {
    if as_json {
        return output::print_json(&round_json(r));
    }
    output::print_one(r, false);
    if let Some(hint) = next_step(r) {
        emit(format_args!("{hint}"));
    }
}

/// The default request id of a transfer: a round has at most one transfer per
/// instruction, so repeating the command after a lost answer returns that answer.
fn transfer_request_id(round: &str, from: &str, to: &str) -> String {
    let id = format!("xfer:{round}:{from}:{to}");
    let valid = id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b));
    if valid {
        id
    } else {
        uuid::Uuid::new_v4().to_string()
    }
}

struct Ctx {
    client: Client,
    json: bool,
    lang: Lang,
    request_id: Option<String>,
    timeout: Duration,
    /// The request id of the state-changing call this invocation sent, for the hint
    /// printed when its outcome is unknown.
    sent: Option<String>,
}

impl Ctx {
    fn req<T>(&self, msg: T) -> Request<T> {
        let mut r = Request::new(msg);
        r.set_timeout(self.timeout);
        r
    }

    /// Chooses the request id of a state-changing call and announces it on stderr
    /// before the call goes out, so that a lost answer can be fetched again.
    fn issue(&mut self, default: impl FnOnce() -> String) -> String {
        let id = self.request_id.clone().unwrap_or_else(default);
        eprintln!("request_id: {id}");
        self.sent = Some(id.clone());
        id
    }

    fn round(id: &str) -> proto::RoundRequest {
        proto::RoundRequest {
            request_id: String::new(),
            round_id: id.to_owned(),
        }
    }
}

async fn execute(ctx: &mut Ctx, cmd: ClearingCommand) -> anyhow::Result<i32> {
    let mut c = ctx.client.clone();
    match cmd {
        // Printed by `run` before any connection: a link needs no server.
        ClearingCommand::ConsoleLogin(_) => {}
        ClearingCommand::Open {
            period,
            early,
            allow_empty,
        } => {
            // Checked here too so that a typo is refused before a request id is spent.
            let p = Period::parse(&period, "period").map_err(|e| anyhow::anyhow!("{e}"))?;
            if allow_empty {
                eprintln!(
                    "allow-empty: if no node has a record of {p}, the round settles with no transfers and {p} (with every earlier period) can no longer be opened"
                );
            }
            let request_id = ctx.issue(|| uuid::Uuid::new_v4().to_string());
            let req = proto::OpenRoundRequest {
                request_id,
                period: p.to_string(),
                early,
                allow_empty,
            };
            let r = c.open_round(ctx.req(req)).await?.into_inner();
            print_round(&r, ctx.json);
        }
        ClearingCommand::Run { round_id } => {
            let r = c.run_round(ctx.req(Ctx::round(&round_id))).await?;
            print_round(&r.into_inner(), ctx.json);
        }
        ClearingCommand::Status { round_id: Some(id) } => {
            let r = c.get_round(ctx.req(Ctx::round(&id))).await?;
            print_round(&r.into_inner(), ctx.json);
        }
        ClearingCommand::Status { round_id: None } => {
            let rounds = c
                .list_rounds(ctx.req(proto::ListRoundsRequest {}))
                .await?
                .into_inner()
                .rounds;
            if ctx.json {
                output::print_json(&json!({
                    "rounds": rounds.iter().map(round_json).collect::<Vec<_>>(),
                }));
            } else if rounds.is_empty() {
                emit(format_args!(
                    "no rounds yet; open one with `yidi clearing open YYYY-MM`"
                ));
            } else {
                print_rows(&rounds, false);
            }
        }
        ClearingCommand::Disputes { round_id } => {
            let disputes = c
                .list_disputes(ctx.req(Ctx::round(&round_id)))
                .await?
                .into_inner()
                .disputes;
            if ctx.json {
                output::print_json(&json!({
                    "round_id": round_id,
                    "disputes": disputes.iter().map(output::to_json).collect::<Vec<_>>(),
                }));
            } else if disputes.is_empty() {
                emit(format_args!("round {round_id} has no disputes"));
            } else {
                print_rows(&disputes, false);
                emit(format_args!(
                    "resolve with `yidi clearing resolve {round_id}`: the entries one side lacks (or whose amounts differ) are carried to the next round on both sides"
                ));
            }
        }
        ClearingCommand::Resolve { round_id } => {
            let r = c.resolve_disputes(ctx.req(Ctx::round(&round_id))).await?;
            print_round(&r.into_inner(), ctx.json);
        }
        ClearingCommand::Statement { round_id, csv } => {
            let s = c
                .get_statement(ctx.req(Ctx::round(&round_id)))
                .await?
                .into_inner();
            let checks = check(&s)?;
            if let Some(path) = &csv {
                let rows = write_csv(&s, path)?;
                // stderr, so that `--json` output on stdout stays one document.
                eprintln!(
                    "wrote {rows} rows to {} (statement digest {})",
                    path.display(),
                    s.digest
                );
            }
            if ctx.json {
                output::print_json(&statement_json(&s, &checks));
            } else {
                print_statement(&s, &checks, ctx.lang)?;
            }
            if !checks.sum_net.is_zero() || !checks.digest_ok || checks.paid_in != checks.paid_out {
                bail!(
                    "the statement of round {round_id} failed the client's checks (Σ net {}, digest {}); report it to the coordinator's operator",
                    money::format(checks.sum_net),
                    if checks.digest_ok { "ok" } else { "wrong" }
                );
            }
        }
        ClearingCommand::RecordTransfer {
            round_id,
            from,
            to,
            amount,
            reference,
        } => {
            let request_id = ctx.issue(|| transfer_request_id(&round_id, &from, &to));
            let req = proto::RecordTransferRequest {
                request_id,
                round_id,
                from_region: from,
                to_region: to,
                amount,
                reference,
            };
            let r = c.record_transfer(ctx.req(req)).await?;
            print_round(&r.into_inner(), ctx.json);
        }
        ClearingCommand::Transfers { round_id } => {
            let transfers = c
                .list_transfers(ctx.req(Ctx::round(&round_id)))
                .await?
                .into_inner()
                .transfers;
            print_transfers(&round_id, &transfers, ctx.json);
        }
        ClearingCommand::CorrectTransfer {
            round_id,
            from,
            to,
            reference,
            reason,
        } => {
            let request_id = ctx.issue(|| uuid::Uuid::new_v4().to_string());
            let req = proto::CorrectTransferRequest {
                request_id,
                round_id: round_id.clone(),
                from_region: from,
                to_region: to,
                reference,
                reason,
            };
            let t = c.correct_transfer(ctx.req(req)).await?.into_inner();
            print_transfers(&round_id, std::slice::from_ref(&t), ctx.json);
        }
        ClearingCommand::Abort { round_id } => {
            let r = c.abort_round(ctx.req(Ctx::round(&round_id))).await?;
            print_round(&r.into_inner(), ctx.json);
        }
    }
    Ok(0)
}

/// A channel to the coordinator; fails fast (UNAVAILABLE, before anything is sent)
/// when nothing listens there.
async fn connect(url: &str, tls: &yidi_node::tls::ClientArgs) -> anyhow::Result<Client> {
    let tls_config = tls.config()?;
    let plain = tls_config.is_none();
    let endpoint = tls
        .endpoint_with(url, tls_config)
        .with_context(|| {
            format!(
                "--coordinator {url:?} is not a valid URL (expected e.g. http://127.0.0.1:7100)"
            )
        })?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true);
    if plain && yidi_node::tls::wants_tls(&endpoint).await {
        return Err(Status::unavailable(format!(
            "the coordinator at {url} requires TLS: pass --ca, --cert and --key (or YIDI_CA, YIDI_CERT, YIDI_KEY); \
             `yidi certs operator` issues them (docs/security.md)"
        ))
        .into());
    }
    let channel = endpoint.connect().await.map_err(|e| {
        Status::unavailable(format!(
            "cannot reach the coordinator at {url}: {e} (is `yidi coordinator` running there?)"
        ))
    })?;
    // Statements of a large province exceed tonic's 4 MiB default.
    Ok(CoordinatorServiceClient::new(channel).max_decoding_message_size(256 * 1024 * 1024))
}

/// `CODE: message` for a gRPC status, the full chain for anything else.
fn describe(e: &anyhow::Error) -> String {
    match e.downcast_ref::<Status>() {
        Some(status) => output::status_line(status),
        None => format!("{e:#}"),
    }
}

/// Runs `yidi clearing …`. Exits the process itself with the documented codes (0 done,
/// 1 refused or failed, 2 bad command line — clap's own).
pub async fn run(args: ClearingArgs) -> anyhow::Result<()> {
    if let ClearingCommand::ConsoleLogin(c) = &args.command {
        let target = super::console_login::Target::Coordinator;
        match super::console_login::link(
            args.client.tls.cert.as_ref(),
            args.client.tls.key.as_ref(),
            c,
            target,
        ) {
            Ok(link) => println!("{link}"),
            Err(e) => {
                eprintln!("error: {e:#}");
                std::process::exit(1);
            }
        }
        return Ok(());
    }
    let code = match connect(&args.coordinator, &args.client.tls).await {
        Err(e) => {
            eprintln!("error: {}", describe(&e));
            1
        }
        Ok(client) => {
            let mut ctx = Ctx {
                client,
                json: args.client.json,
                lang: args.lang.resolve(),
                request_id: args.client.request_id,
                timeout: Duration::from_secs(args.client.timeout),
                sent: None,
            };
            match execute(&mut ctx, args.command).await {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("error: {}", describe(&e));
                    let in_doubt = e.downcast_ref::<Status>().is_some_and(|s| {
                        matches!(
                            s.code(),
                            Code::Unavailable
                                | Code::DeadlineExceeded
                                | Code::Cancelled
                                | Code::Unknown
                                | Code::Internal
                        )
                    });
                    if let (true, Some(id)) = (in_doubt, &ctx.sent) {
                        eprintln!(
                            "hint: the outcome of request {id} is not known here; repeat the same command with --request-id {id} to get it (a repeat never acts twice)"
                        );
                    }
                    1
                }
            }
        }
    };
    if code != 0 {
        let _ = std::io::stdout().flush();
        std::process::exit(code);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::i18n::KindGroup;
    use rust_decimal::Decimal;
    use yidi_common::netting;

    fn statement() -> proto::Statement {
        let mut s = proto::Statement {
            round_id: "2026-05-r1".into(),
            period: "2026-05".into(),
            clearing_account: "330000".into(),
            nets: vec![
                proto::NetPosition {
                    region: "330100".into(),
                    receivable: "30.00".into(),
                    payable: "100.00".into(),
                    net: "-70.00".into(),
                },
                proto::NetPosition {
                    region: "330200".into(),
                    receivable: "100.00".into(),
                    payable: "30.00".into(),
                    net: "70.00".into(),
                },
            ],
            instructions: vec![
                proto::PaymentInstruction {
                    from_region: "330100".into(),
                    to_region: "330000".into(),
                    amount: "70.00".into(),
                },
                proto::PaymentInstruction {
                    from_region: "330000".into(),
                    to_region: "330200".into(),
                    amount: "70.00".into(),
                },
            ],
            gross: vec![
                proto::GrossEntry {
                    debtor: "330100".into(),
                    creditor: "330200".into(),
                    amount: "100.00".into(),
                    count: 3,
                    kinds: vec![
                        proto::KindSum {
                            kind: "claim".into(),
                            count: 2,
                            sum: "120.00".into(),
                        },
                        proto::KindSum {
                            kind: "deduction".into(),
                            count: 1,
                            sum: "-20.00".into(),
                        },
                    ],
                },
                proto::GrossEntry {
                    debtor: "330200".into(),
                    creditor: "330100".into(),
                    amount: "30.00".into(),
                    count: 1,
                    kinds: vec![proto::KindSum {
                        kind: "reserve_topup".into(),
                        count: 1,
                        sum: "30.00".into(),
                    }],
                },
            ],
            bilateral_transfers: 1,
            netted_transfers: 2,
            ..Default::default()
        };
        s.digest = netting::statement_digest(&s);
        s
    }

    #[test]
    fn checks_balance_and_digest() {
        let s = statement();
        let c = check(&s).unwrap();
        assert!(c.sum_net.is_zero() && c.digest_ok);
        assert_eq!(
            (c.paid_in, c.paid_out),
            (Decimal::new(7000, 2), Decimal::new(7000, 2))
        );
        let mut bad = s.clone();
        bad.nets[0].net = "-69.99".into();
        let c = check(&bad).unwrap();
        assert!(!c.sum_net.is_zero() && !c.digest_ok);
        let v = statement_json(&s, &check(&s).unwrap());
        assert_eq!(v["sum_net"], "0.00");
        assert_eq!(v["gross"][0]["count"], 3);
        assert_eq!(v["nets"][1]["net"], "70.00");
    }

    #[test]
    fn the_by_kind_breakdown_adds_up_to_the_gross_amounts() {
        let s = statement();
        let pairs = by_kind(&s).unwrap();
        for (p, g) in pairs.iter().zip(&s.gross) {
            let (n, a) = p
                .groups
                .values()
                .fold((0, Decimal::ZERO), |(n, s), (c, a)| (n + c, s + a));
            assert_eq!((n, a), (g.count, amount(&g.amount, "gross").unwrap()));
        }
        let totals = kind_totals(&pairs);
        assert_eq!(totals[&KindGroup::Claims], (2, Decimal::new(12000, 2)));
        assert_eq!(
            totals[&KindGroup::AuditDeductions],
            (1, Decimal::new(-2000, 2))
        );
        assert_eq!(totals[&KindGroup::Reserves], (1, Decimal::new(3000, 2)));
        let v = statement_json(&s, &check(&s).unwrap());
        assert_eq!(v["by_kind"]["audit_deductions"]["sum"], "-20.00");
        assert_eq!(v["by_kind"]["claims"]["count"], 2);
        assert_eq!(v["gross"][0]["kinds"][1]["kind"], "deduction");
        let en = kind_table(&pairs, Lang::En, str::to_owned).to_string();
        assert!(
            en.contains("audit deductions") && en.contains("-20.00 (1)"),
            "{en}"
        );
        assert!(en.contains("130.00 (4)"), "{en}");
        let zh = kind_table(&pairs, Lang::Zh, str::to_owned).to_string();
        assert!(zh.contains("审核扣款") && zh.contains("结算费用"), "{zh}");
        // A breakdown that does not add up is not shown at all.
        let mut bad = s.clone();
        bad.gross[0].kinds[0].sum = "119.99".into();
        assert!(by_kind(&bad).unwrap()[0].groups.is_empty());
    }

    #[test]
    fn matrix_rows_owe_columns_with_totals() {
        let t = gross_matrix(&statement()).unwrap().to_string();
        let lines: Vec<&str> = t.lines().collect();
        let row = |name: &str| {
            lines
                .iter()
                .find(|l| l.contains(name) && !l.contains("owes"))
                .copied()
                .unwrap_or_default()
                .to_owned()
        };
        assert!(row("330100 ").contains("100.00"), "{t}");
        assert!(row("Σ receivable").contains("130.00"), "{t}");
    }

    #[test]
    fn csv_has_one_row_per_net_instruction_and_pair() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.csv");
        assert_eq!(write_csv(&statement(), &path).unwrap(), 6);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("round_id,section,region,counterparty,"));
        assert!(text.contains("2026-05-r1,gross,330100,330200,,,,100.00,3"));
        assert!(text.contains("2026-05-r1,instruction,330100,330000,,,,70.00,"));
    }

    #[test]
    fn transfer_ids_are_deterministic_and_valid() {
        assert_eq!(
            transfer_request_id("2026-05-r1", "330100", "330000"),
            "xfer:2026-05-r1:330100:330000"
        );
        let long = "r".repeat(70);
        assert_eq!(transfer_request_id(&long, "a", "b").len(), 36);
    }

    #[test]
    fn every_list_column_is_a_field() {
        fn check<R: Record + Default>() {
            let names: Vec<_> = R::default().fields().into_iter().map(|(k, _)| k).collect();
            for col in R::LIST_COLUMNS {
                assert!(names.contains(col), "{}: {col}", R::PLURAL);
            }
        }
        check::<proto::Round>();
        check::<proto::Dispute>();
        check::<proto::NetPosition>();
        check::<proto::PaymentInstruction>();
        check::<proto::GrossEntry>();
    }

    #[test]
    fn next_steps_name_the_commands() {
        let r = proto::Round {
            round_id: "2026-05-r1".into(),
            state: "STATEMENT_ISSUED".into(),
            missing: vec!["330200".into()],
            ..Default::default()
        };
        let hint = next_step(&r).unwrap();
        assert!(hint.contains("330200") && hint.contains("clearing confirm 2026-05-r1"));
        let done = proto::Round {
            state: "SETTLED".into(),
            ..Default::default()
        };
        assert_eq!(next_step(&done), None);
    }

    #[test]
    fn round_json_counts_transfers_as_numbers() {
        let r = proto::Round {
            state: "CONFIRMED".into(),
            transfers_recorded: 1,
            transfers_expected: 3,
            confirmed: vec!["330100".into()],
            ..Default::default()
        };
        let v = round_json(&r);
        assert_eq!(
            (&v["transfers_recorded"], &v["transfers_expected"]),
            (&json!(1), &json!(3))
        );
        assert_eq!(v["confirmed"], json!(["330100"]));
        assert!(v.get("transfers").is_none());
    }
}
