//! `yidi hospital …`: a client that behaves like a designated institution's system (HIS)
//! at its local node — one subcommand per HospitalService RPC, in the order a visit goes
//! through them (identify → open-visit → upload-fees → close-visit → pre-settle → settle
//! → cancel / reverse → reconcile; reopen-visit, cancel-visit and update-visit undo or
//! correct a visit). It is an integrator's first tool and the demo's
//! driver, so it prints what a clerk needs (the NHSA split with its Chinese labels, the
//! per-line split, the engine's trace) and, with `--json`, exactly what the node
//! answered. Every state-changing call announces its request id on stderr before it is
//! sent, so that an answer lost on the way can be fetched again (same id) or reversed
//! (冲正) by that id. Refused calls print `error: <CODE>: <message>` on stderr and exit 1.

use std::{
    cell::RefCell,
    fmt::Display,
    path::{Path, PathBuf},
    time::Duration,
};

use crate::i18n::Lang;
use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use comfy_table::{Cell, CellAlignment};
use rust_i18n::t;
use serde_json::{Map, Value, json};
use tonic::{Code, Request, Status, transport::Channel};
use yidi_common::{
    engine,
    money::{self, Sign},
    period, proto,
    proto::hospital_service_client::HospitalServiceClient,
    types::{CatalogueClass, FilingType, InsuranceType, PersonStatus, PersonType, VisitKind},
};

use super::{
    admin::{self, Page, PageArgs},
    flags::{ClientFlags, LangFlag, NodeFlag},
    output::{self, Field, Listing, Record},
};

/// The connected client every subcommand uses.
pub type Client = HospitalServiceClient<Channel>;

/// Exit code of a reconciliation that found differences (0 when everything agrees), so
/// that a nightly script notices without parsing the output.
pub const EXIT_DIFFERENCES: i32 = 3;

/// Flags of `yidi hospital`. The global flags (flags.rs) may appear before or after the
/// subcommand. A hospital's call waits 30 s by default, at most 600 s.
#[derive(Debug, Args)]
#[command(mut_arg("timeout", ClientFlags::timeout("30", 600)))]
pub struct HospitalArgs {
    #[command(flatten)]
    pub node: NodeFlag,
    /// This institution's code at the node, e.g. H33020001. Required for every call
    /// (clap cannot require a global flag, so `run` checks it).
    #[arg(long, env = "YIDI_INSTITUTION", global = true)]
    pub institution: Option<String>,
    #[command(flatten)]
    pub lang: LangFlag,
    #[command(flatten)]
    pub client: ClientFlags,
    #[command(subcommand)]
    pub command: HospitalCommand,
}

#[derive(Debug, Subcommand)]
pub enum HospitalCommand {
    /// Identify a patient by card or ID number (NHSA 1101): home region, eligibility for
    /// direct settlement, filing, accumulators and account balance.
    Identify {
        /// Social security card number; needs --card-region.
        #[arg(
            long,
            requires = "card_region",
            required_unless_present = "id_number",
            conflicts_with = "id_number"
        )]
        card_no: Option<String>,
        /// Region code that issued the card, e.g. 330100 (the card's home region).
        #[arg(long, requires = "card_no")]
        card_region: Option<String>,
        /// Resident ID number; every region of the federation is asked (by hash).
        #[arg(long)]
        id_number: Option<String>,
        /// Kind of care the eligibility is checked for (default: outpatient):
        /// outpatient | pharmacy | chronic | inpatient | emergency.
        #[arg(long, value_parser = admin::domain(VisitKind::parse))]
        visit_kind: Option<VisitKind>,
    },
    /// Register an outpatient visit or admit an inpatient (NHSA 2201 / 2401).
    OpenVisit {
        /// The patient's resident ID number (as `identify` returned it).
        #[arg(long)]
        id_number: String,
        /// The patient's home region (as `identify` returned it), e.g. 330100.
        #[arg(long)]
        home_region: String,
        /// outpatient | pharmacy | chronic | inpatient | emergency (Chinese names too).
        #[arg(long, value_parser = admin::domain(VisitKind::parse))]
        kind: VisitKind,
        /// The institution's own visit number (1–64 characters), printed on its receipts.
        #[arg(long)]
        external_visit_no: String,
        /// Admission or registration time, RFC 3339 (default: now).
        #[arg(long)]
        admitted_at: Option<String>,
        /// Diagnosis code (ICD-10), e.g. I21.9.
        #[arg(long)]
        diagnosis: Option<String>,
    },
    /// Discharge an inpatient / close a visit (NHSA 2402); inpatient visits settle only
    /// after this.
    CloseVisit {
        /// Visit id returned by open-visit, e.g. 330200-V-00000001.
        visit: String,
        /// Discharge time, RFC 3339 (default: now).
        #[arg(long)]
        discharged_at: Option<String>,
    },
    /// Undo a discharge (NHSA 2405): a closed visit without a live settlement is open
    /// again, its closed_at cleared.
    ReopenVisit {
        /// Visit id.
        visit: String,
    },
    /// Withdraw a registration or admission (NHSA 2202 / 2404): the visit becomes
    /// cancelled for good; refused while it has a settlement that is not cancelled.
    CancelVisit {
        /// Visit id.
        visit: String,
        /// Why, kept in the node's log (NHSA exp_content).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Change the main diagnosis or the institution's visit number of a visit
    /// (NHSA 2203 / 2403); what is not given stays as recorded.
    UpdateVisit {
        /// Visit id.
        visit: String,
        /// The new main diagnosis code (ICD-10), e.g. I21.9.
        #[arg(long, required_unless_present = "external_visit_no")]
        diagnosis: Option<String>,
        /// The institution's new visit number (1–64 characters).
        #[arg(long)]
        external_visit_no: Option<String>,
    },
    /// Upload fee lines from a CSV or JSON file (NHSA 2204 / 2301); prints each line as
    /// the node's catalogue classified it.
    UploadFees {
        /// Visit id.
        visit: String,
        /// `.csv` with header line_no,item_code,quantity,unit_price,amount,service_date
        /// (amount and service_date may be empty or absent: amount is then computed as
        /// quantity × unit_price rounded half-up to the fen), or `.json`: an array of
        /// objects with those keys.
        file: PathBuf,
    },
    /// Remove fee lines before settlement (NHSA 2205 / 2302).
    UndoFees {
        /// Visit id.
        visit: String,
        /// Line numbers to remove; none removes every line.
        line_nos: Vec<String>,
    },
    /// Compute the split without recording anything (NHSA 2206 / 2303); any number of
    /// times.
    PreSettle(SettleArgs),
    /// Settle the visit (NHSA 2207 / 2304): the home region's policy is applied and the
    /// claim committed at the home node; once per visit.
    Settle(SettleArgs),
    /// Cancel a settlement with a reversing record (NHSA 2208 / 2305).
    Cancel {
        /// Settlement id, e.g. 330200-S-0000000001.
        settlement: String,
        /// Why, for the record (default: "cancelled by the institution").
        #[arg(long)]
        reason: Option<String>,
    },
    /// 冲正 (NHSA 2601): undo a settle request whose answer never arrived, by its
    /// request id; a request that never arrived is barred from taking effect later.
    Reverse {
        /// The request id of the settle call to undo (its `request_id:` line).
        original_request_id: String,
    },
    /// Show one settlement of this institution.
    Get {
        /// Settlement id.
        settlement: String,
    },
    /// List this institution's settlements and reversals by settlement date.
    List {
        #[command(flatten)]
        range: DateRange,
        #[command(flatten)]
        page: PageArgs,
    },
    /// Compare the institution's totals for a date range with the node's (NHSA 3201);
    /// exits 3 when they differ.
    ReconcileTotals {
        #[command(flatten)]
        range: DateRange,
        /// Number of settlement records (reversals included) in the institution's books.
        #[arg(long)]
        count: u64,
        /// Σ medfee_sumamt in the institution's books, yuan.
        #[arg(long, allow_hyphen_values = true)]
        medfee: String,
        /// Σ fund_pay_sumamt in the institution's books, yuan.
        #[arg(long, allow_hyphen_values = true)]
        fund: String,
        /// Σ acct_pay (personal account) in the institution's books, yuan.
        #[arg(long, allow_hyphen_values = true)]
        acct: String,
    },
    /// Compare the institution's settlements one by one with the node's (NHSA 3202);
    /// prints only the differences and exits 3 when there are any.
    ReconcileDetail {
        #[command(flatten)]
        range: DateRange,
        /// CSV with header settlement_id,medfee_sumamt,fund_pay_sumamt: every settlement
        /// and reversal in the institution's books for the range.
        file: PathBuf,
    },
}

/// Arguments of pre-settle and settle.
#[derive(Debug, Clone, Args)]
pub struct SettleArgs {
    /// Visit id.
    pub visit: String,
    /// Pay the personal share from the personal account where the home policy allows.
    #[arg(long)]
    pub use_account: bool,
}

/// Settlement dates (China Standard Time) of list and reconcile calls.
#[derive(Debug, Clone, Args)]
pub struct DateRange {
    /// First settlement date, YYYY-MM-DD (default: today).
    #[arg(long)]
    pub from: Option<String>,
    /// Last settlement date, inclusive (default: the --from date).
    #[arg(long)]
    pub to: Option<String>,
}

impl DateRange {
    fn resolve(self) -> (String, String) {
        let from = self.from.unwrap_or_else(|| period::today().to_string());
        let to = self.to.unwrap_or_else(|| from.clone());
        (from, to)
    }
}

// ---------------------------------------------------------------- running

/// A state-changing request this invocation sent, remembered for the hint printed when
/// its outcome is unknown.
struct Sent {
    request_id: String,
    /// A settle: it can also be undone by 冲正.
    reversible: bool,
}

/// What every subcommand needs.
struct Ctx {
    client: Client,
    institution: String,
    json: bool,
    lang: Lang,
    request_id: Option<String>,
    timeout: Duration,
    sent: RefCell<Option<Sent>>,
}

impl Ctx {
    /// Chooses the request id of a state-changing call and announces it on stderr
    /// before the call goes out: if the answer is lost, the id is all the integrator
    /// needs to learn the outcome or to reverse it.
    fn issue(&self, reversible: bool) -> String {
        let id = self
            .request_id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        eprintln!("request_id: {id}");
        *self.sent.borrow_mut() = Some(Sent {
            request_id: id.clone(),
            reversible,
        });
        id
    }

    /// A request with this invocation's deadline.
    fn req<T>(&self, msg: T) -> Request<T> {
        let mut r = Request::new(msg);
        r.set_timeout(self.timeout);
        r
    }

    fn client(&self) -> Client {
        self.client.clone()
    }

    fn print<R: Record>(&self, record: &R) {
        output::print_one(record, self.json);
    }

    /// Prints the error line, and for a state-changing call whose outcome the error
    /// leaves open, how to settle the doubt.
    fn report(&self, e: &anyhow::Error) {
        eprintln!("error: {}", describe(e));
        let Some(status) = e.downcast_ref::<Status>() else {
            return;
        };
        let in_doubt = matches!(
            status.code(),
            Code::Unavailable
                | Code::DeadlineExceeded
                | Code::Cancelled
                | Code::Unknown
                | Code::Aborted
                | Code::Internal
        );
        if let (true, Some(sent)) = (in_doubt, self.sent.borrow().as_ref()) {
            let id = &sent.request_id;
            eprintln!(
                "hint: the outcome of request {id} is not known here; repeat the same command with --request-id {id} to get it (a repeat never acts twice)"
            );
            if sent.reversible {
                eprintln!("hint: or undo it (冲正): yidi hospital reverse {id}");
            }
        }
    }
}

/// Connects to the node. A failure here means nothing was sent.
async fn connect(node: &str, tls: &yidi_node::tls::ClientArgs) -> anyhow::Result<Client> {
    Ok(HospitalServiceClient::new(
        admin::channel(node, tls, None).await?,
    ))
}

/// Runs `yidi hospital …`. Exits the process itself with the documented codes (0 done,
/// 1 refused or failed, 2 bad command line, 3 reconciliation found differences).
pub async fn run(args: HospitalArgs) -> anyhow::Result<()> {
    let Some(institution) = args.institution.filter(|s| !s.trim().is_empty()) else {
        eprintln!(
            "error: --institution is required (or set YIDI_INSTITUTION), e.g. --institution H33020001"
        );
        std::process::exit(2);
    };
    let code = match connect(&args.node.node, &args.client.tls).await {
        Err(e) => {
            eprintln!("error: {}", describe(&e));
            1
        }
        Ok(client) => {
            let ctx = Ctx {
                client,
                institution,
                json: args.client.json,
                lang: args.lang.resolve(),
                request_id: args.client.request_id,
                timeout: Duration::from_secs(args.client.timeout),
                sent: RefCell::new(None),
            };
            match execute(&ctx, args.command).await {
                Ok(code) => code,
                Err(e) => {
                    ctx.report(&e);
                    1
                }
            }
        }
    };
    if code != 0 {
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
        std::process::exit(code);
    }
    Ok(())
}

/// `CODE: message` for a gRPC status, the full chain for anything else.
fn describe(e: &anyhow::Error) -> String {
    match e.downcast_ref::<Status>() {
        Some(status) => output::status_line(status),
        None => format!("{e:#}"),
    }
}

async fn execute(ctx: &Ctx, cmd: HospitalCommand) -> anyhow::Result<i32> {
    let mut c = ctx.client();
    let inst = ctx.institution.clone();
    match cmd {
        HospitalCommand::Identify {
            card_no,
            card_region,
            id_number,
            visit_kind,
        } => {
            let req = proto::IdentifyRequest {
                institution_code: inst,
                card_no: card_no.unwrap_or_default(),
                card_region: card_region.unwrap_or_default(),
                id_number: id_number.unwrap_or_default(),
                visit_kind: visit_kind.map_or(0, VisitKind::to_proto),
            };
            print_identity(&c.identify(ctx.req(req)).await?.into_inner(), ctx.json);
        }
        HospitalCommand::OpenVisit {
            id_number,
            home_region,
            kind,
            external_visit_no,
            admitted_at,
            diagnosis,
        } => {
            let req = proto::OpenVisitRequest {
                request_id: ctx.issue(false),
                institution_code: inst,
                id_number,
                home_region,
                visit_kind: kind.to_proto(),
                external_visit_no,
                admitted_at: admitted_at.unwrap_or_default(),
                diagnosis_code: diagnosis.unwrap_or_default(),
            };
            ctx.print(&c.open_visit(ctx.req(req)).await?.into_inner());
        }
        HospitalCommand::CloseVisit {
            visit,
            discharged_at,
        } => {
            let req = proto::CloseVisitRequest {
                request_id: ctx.issue(false),
                institution_code: inst,
                visit_id: visit,
                discharged_at: discharged_at.unwrap_or_default(),
            };
            ctx.print(&c.close_visit(ctx.req(req)).await?.into_inner());
        }
        HospitalCommand::ReopenVisit { visit } => {
            let req = proto::ReopenVisitRequest {
                request_id: ctx.issue(false),
                institution_code: inst,
                visit_id: visit,
            };
            ctx.print(&c.reopen_visit(ctx.req(req)).await?.into_inner());
        }
        HospitalCommand::CancelVisit { visit, reason } => {
            let req = proto::CancelVisitRequest {
                request_id: ctx.issue(false),
                institution_code: inst,
                visit_id: visit,
                reason: reason.unwrap_or_default(),
            };
            ctx.print(&c.cancel_visit(ctx.req(req)).await?.into_inner());
        }
        HospitalCommand::UpdateVisit {
            visit,
            diagnosis,
            external_visit_no,
        } => {
            let req = proto::UpdateVisitRequest {
                request_id: ctx.issue(false),
                institution_code: inst,
                visit_id: visit,
                diagnosis_code: diagnosis.unwrap_or_default(),
                external_visit_no: external_visit_no.unwrap_or_default(),
            };
            ctx.print(&c.update_visit(ctx.req(req)).await?.into_inner());
        }
        HospitalCommand::UploadFees { visit, file } => {
            let lines = read_fees(&file)?;
            let req = proto::UploadFeesRequest {
                request_id: ctx.issue(false),
                institution_code: inst,
                visit_id: visit,
                lines,
            };
            print_fees(&c.upload_fees(ctx.req(req)).await?.into_inner(), ctx.json);
        }
        HospitalCommand::UndoFees { visit, line_nos } => {
            let req = proto::UndoFeesRequest {
                request_id: ctx.issue(false),
                institution_code: inst,
                visit_id: visit,
                line_nos,
            };
            print_fees(&c.undo_fees(ctx.req(req)).await?.into_inner(), ctx.json);
        }
        HospitalCommand::PreSettle(a) => {
            // A dry run changes nothing, so its id is neither announced nor kept.
            let req = settle_request(uuid::Uuid::new_v4().to_string(), inst, a);
            print_settlement(
                &c.pre_settle(ctx.req(req)).await?.into_inner(),
                ctx.json,
                ctx.lang,
            );
        }
        HospitalCommand::Settle(a) => {
            let req = settle_request(ctx.issue(true), inst, a);
            print_settlement(
                &c.settle(ctx.req(req)).await?.into_inner(),
                ctx.json,
                ctx.lang,
            );
        }
        HospitalCommand::Cancel { settlement, reason } => {
            let req = proto::CancelSettlementRequest {
                request_id: ctx.issue(false),
                institution_code: inst,
                settlement_id: settlement,
                reason: reason.unwrap_or_default(),
            };
            let s = c.cancel_settlement(ctx.req(req)).await?.into_inner();
            print_settlement(&s, ctx.json, ctx.lang);
        }
        HospitalCommand::Reverse {
            original_request_id,
        } => {
            let req = proto::ReverseRequestRequest {
                request_id: ctx.issue(false),
                institution_code: inst,
                original_request_id,
            };
            print_reversal(
                &c.reverse_request(ctx.req(req)).await?.into_inner(),
                ctx.json,
                ctx.lang,
            );
        }
        HospitalCommand::Get { settlement } => {
            let req = proto::GetSettlementRequest {
                institution_code: inst,
                settlement_id: settlement,
            };
            print_settlement(
                &c.get_settlement(ctx.req(req)).await?.into_inner(),
                ctx.json,
                ctx.lang,
            );
        }
        HospitalCommand::List { range, page } => list(ctx, inst, range, &page).await?,
        HospitalCommand::ReconcileTotals {
            range,
            count,
            medfee,
            fund,
            acct,
        } => {
            let (from_date, to_date) = range.resolve();
            let req = proto::ReconcileTotalsRequest {
                institution_code: inst,
                from_date,
                to_date,
                count,
                medfee_sumamt: medfee,
                fund_pay_sumamt: fund,
                acct_pay: acct,
            };
            let theirs = req.clone();
            let ours = c.reconcile_totals(ctx.req(req)).await?.into_inner();
            print_totals(&theirs, &ours, ctx.json);
            return Ok(if ours.matches { 0 } else { EXIT_DIFFERENCES });
        }
        HospitalCommand::ReconcileDetail { range, file } => {
            let (from_date, to_date) = range.resolve();
            let req = proto::ReconcileDetailRequest {
                institution_code: inst,
                from_date,
                to_date,
                entries: read_reconcile_entries(&file)?,
            };
            let diffs = c.reconcile_detail(ctx.req(req)).await?.into_inner();
            print_differences(&diffs.differences, ctx.json);
            return Ok(if diffs.differences.is_empty() {
                0
            } else {
                EXIT_DIFFERENCES
            });
        }
    }
    Ok(0)
}

fn settle_request(
    request_id: String,
    institution_code: String,
    a: SettleArgs,
) -> proto::SettleRequest {
    proto::SettleRequest {
        request_id,
        institution_code,
        visit_id: a.visit,
        use_account: a.use_account,
    }
}

async fn list(ctx: &Ctx, inst: String, range: DateRange, page: &PageArgs) -> anyhow::Result<()> {
    let (from_date, to_date) = range.resolve();
    let listing = admin::collect(page, |p| {
        let mut c = ctx.client();
        let req = ctx.req(proto::ListSettlementsRequest {
            institution_code: inst.clone(),
            from_date: from_date.clone(),
            to_date: to_date.clone(),
            page: Some(p),
        });
        async move {
            let r = c.list_settlements(req).await?.into_inner();
            Ok(Page {
                items: r.settlements,
                next_page_token: r.next_page_token,
                total: None,
            })
        }
    })
    .await?;
    if ctx.json {
        output::print_json(&json!({
            "settlements": listing.items.iter().map(settlement_json).collect::<Vec<_>>(),
            "next_page_token": listing.next_page_token,
        }));
    } else {
        output::print_list(
            &Listing {
                items: listing.items.into_iter().map(SettlementRow).collect(),
                next_page_token: listing.next_page_token,
                total: None,
            },
            false,
        );
    }
    Ok(())
}

// ---------------------------------------------------------------- fee files

/// Columns of a fee CSV; the first four are required.
const FEE_COLUMNS: [&str; 6] = [
    "line_no",
    "item_code",
    "quantity",
    "unit_price",
    "amount",
    "service_date",
];
const FEE_REQUIRED: usize = 4;

/// One line as read from a file: where it came from, for messages, and its six values
/// in [`FEE_COLUMNS`] order.
type RawLine = (String, [String; 6]);

/// Reads a fee file, by extension, into wire lines with every amount filled in.
fn read_fees(path: &Path) -> anyhow::Result<Vec<proto::FeeLine>> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let raw = match ext.as_deref() {
        Some("csv") => fees_from_csv(path)?,
        Some("json") => fees_from_json(path)?,
        _ => bail!(
            "{}: cannot tell the format; name the fee file .csv or .json",
            path.display()
        ),
    };
    if raw.is_empty() {
        bail!("{}: no fee lines", path.display());
    }
    Ok(raw
        .into_iter()
        .map(|(at, cols)| fee_line(&at, cols))
        .collect::<Result<_, _>>()?)
}

fn fees_from_csv(path: &Path) -> anyhow::Result<Vec<RawLine>> {
    let name = file_name(path);
    let mut rdr = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_path(path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let positions = columns(&name, rdr.headers()?, &FEE_COLUMNS, FEE_REQUIRED)?;
    let mut out = Vec::new();
    for (i, row) in rdr.records().enumerate() {
        let row = row.with_context(|| format!("{name}: unreadable CSV"))?;
        // Line 1 is the header, as the admin imports count.
        out.push((format!("{name} line {}", i + 2), pick(&row, &positions)));
    }
    Ok(out)
}

fn fees_from_json(path: &Path) -> anyhow::Result<Vec<RawLine>> {
    let name = file_name(path);
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let doc: Value = serde_json::from_str(&text).with_context(|| format!("{name}: not JSON"))?;
    let Value::Array(items) = doc else {
        bail!("{name}: expected a JSON array of fee lines");
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let at = format!("{name} [{i}]");
            let Value::Object(obj) = item else {
                bail!(
                    "{at}: expected an object with keys {}",
                    FEE_COLUMNS.join(", ")
                );
            };
            if let Some(k) = obj.keys().find(|k| !FEE_COLUMNS.contains(&k.as_str())) {
                bail!(
                    "{at}: unknown key {k:?}; expected {}",
                    FEE_COLUMNS.join(", ")
                );
            }
            let mut cols: [String; 6] = Default::default();
            for (slot, key) in cols.iter_mut().zip(FEE_COLUMNS) {
                *slot = match obj.get(key) {
                    None | Some(Value::Null) => String::new(),
                    Some(Value::String(s)) => s.trim().to_owned(),
                    // Numbers are accepted for convenience; strings are exact.
                    Some(Value::Number(n)) => n.to_string(),
                    Some(other) => bail!("{at}: {key} must be a string, got {other}"),
                };
            }
            Ok((at, cols))
        })
        .collect()
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// Where each of `wanted` stands in a CSV header; the first `required` must be there and
/// unknown columns are refused, so that a misspelt column is not silently ignored.
fn columns<const N: usize>(
    name: &str,
    header: &csv::StringRecord,
    wanted: &[&str; N],
    required: usize,
) -> anyhow::Result<[Option<usize>; N]> {
    if let Some(unknown) = header.iter().find(|h| !wanted.contains(h)) {
        bail!(
            "{name}: unknown column {unknown:?}; expected {}",
            wanted.join(",")
        );
    }
    let mut pos = [None; N];
    for (slot, col) in pos.iter_mut().zip(wanted) {
        *slot = header.iter().position(|h| h == *col);
    }
    if let Some(missing) = wanted[..required]
        .iter()
        .zip(&pos)
        .find_map(|(c, p)| p.is_none().then_some(c))
    {
        bail!(
            "{name}: missing column {missing}; the header must name {}",
            wanted[..required].join(",")
        );
    }
    Ok(pos)
}

fn pick<const N: usize>(row: &csv::StringRecord, pos: &[Option<usize>; N]) -> [String; N] {
    pos.map(|p| p.and_then(|i| row.get(i)).unwrap_or_default().to_owned())
}

/// A wire fee line; an empty amount becomes quantity × unit_price rounded half-up to the
/// fen — the node's own rule, so the computed amount always passes its check. Given
/// amounts are sent as they are: the node checks them and names the line if they are off.
fn fee_line(at: &str, cols: [String; 6]) -> Result<proto::FeeLine, Status> {
    let [
        line_no,
        item_code,
        quantity,
        unit_price,
        mut amount,
        service_date,
    ] = cols;
    if amount.is_empty() {
        let q = engine::parse_quantity(&quantity, &format!("quantity ({at})"))?;
        let p = money::parse(
            &unit_price,
            &format!("unit_price ({at})"),
            Sign::NonNegative,
        )?;
        amount = money::format(money::round_fen(q * p));
    }
    Ok(proto::FeeLine {
        line_no,
        item_code,
        quantity,
        unit_price,
        amount,
        service_date,
    })
}

const RECONCILE_COLUMNS: [&str; 3] = ["settlement_id", "medfee_sumamt", "fund_pay_sumamt"];

fn read_reconcile_entries(path: &Path) -> anyhow::Result<Vec<proto::ReconcileEntry>> {
    let name = file_name(path);
    let mut rdr = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_path(path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let positions = columns(&name, rdr.headers()?, &RECONCILE_COLUMNS, 3)?;
    rdr.records()
        .map(|row| {
            let row = row.with_context(|| format!("{name}: unreadable CSV"))?;
            let [settlement_id, medfee_sumamt, fund_pay_sumamt] = pick(&row, &positions);
            Ok(proto::ReconcileEntry {
                settlement_id,
                medfee_sumamt,
                fund_pay_sumamt,
            })
        })
        .collect()
}

// ---------------------------------------------------------------- printing

fn text(s: &str) -> Field {
    Field::Text(s.to_owned())
}

fn num(s: &str) -> Field {
    Field::Num(s.to_owned())
}

/// A proto enum as its stable name; UNSPECIFIED prints empty.
fn enum_name<T: Display>(parsed: yidi_common::Result<T>) -> Field {
    Field::Text(parsed.map(|v| v.to_string()).unwrap_or_default())
}

fn count(n: impl TryInto<u64>) -> Field {
    Field::Int(n.try_into().unwrap_or_default())
}

/// A record's JSON object with one more key.
fn with(record: &impl Record, key: &str, value: Value) -> Value {
    let mut v = output::to_json(record);
    if let Value::Object(map) = &mut v {
        map.insert(key.to_owned(), value);
    }
    v
}

impl Record for proto::Visit {
    const PLURAL: &'static str = "visits";
    const LIST_COLUMNS: &'static [&'static str] = &[
        "visit_id",
        "external_visit_no",
        "id_number",
        "visit_kind",
        "state",
    ];
    fn fields(&self) -> Vec<(&'static str, Field)> {
        vec![
            ("visit_id", text(&self.visit_id)),
            ("state", text(&self.state)),
            ("institution_code", text(&self.institution_code)),
            ("external_visit_no", text(&self.external_visit_no)),
            ("diagnosis_code", text(&self.diagnosis_code)),
            ("id_number", text(&self.id_number)),
            ("home_region", text(&self.home_region)),
            (
                "visit_kind",
                enum_name(VisitKind::from_proto(self.visit_kind, "")),
            ),
            ("opened_at", text(&self.opened_at)),
            ("closed_at", text(&self.closed_at)),
        ]
    }
}

impl Record for proto::IdentifyResponse {
    const PLURAL: &'static str = "persons";
    const LIST_COLUMNS: &'static [&'static str] = &["id_number", "name", "home_region", "eligible"];
    fn fields(&self) -> Vec<(&'static str, Field)> {
        vec![
            ("id_number", text(&self.id_number)),
            ("name", text(&self.name)),
            ("home_region", text(&self.home_region)),
            (
                "insurance_type",
                enum_name(InsuranceType::from_proto(self.insurance_type, "")),
            ),
            (
                "person_type",
                enum_name(PersonType::from_proto(self.person_type, "")),
            ),
            (
                "status",
                enum_name(PersonStatus::from_proto(self.status, "")),
            ),
            ("eligible", Field::Bool(self.eligible)),
            ("ineligible_reason", text(&self.ineligible_reason)),
            ("filing_id", text(&self.filing_id)),
            (
                "filing_type",
                enum_name(FilingType::from_proto(self.filing_type, "")),
            ),
            ("account_balance", num(&self.account_balance)),
        ]
    }
}

impl Record for proto::Accumulators {
    const PLURAL: &'static str = "accumulators";
    const LIST_COLUMNS: &'static [&'static str] = &["year", "version", "pool_paid"];
    fn fields(&self) -> Vec<(&'static str, Field)> {
        vec![
            ("year", count(self.year)),
            ("version", count(self.version)),
            ("pool_paid", num(&self.pool_paid)),
            ("outpatient_pool_paid", num(&self.outpatient_pool_paid)),
            ("chronic_pool_paid", num(&self.chronic_pool_paid)),
            ("serious_illness_paid", num(&self.serious_illness_paid)),
            (
                "outpatient_deductible_paid",
                num(&self.outpatient_deductible_paid),
            ),
            ("admissions", count(self.admissions)),
            ("inscope_total", num(&self.inscope_total)),
        ]
    }
}

fn print_identity(r: &proto::IdentifyResponse, as_json: bool) {
    if as_json {
        let acc = r.accumulators.as_ref().map_or(Value::Null, output::to_json);
        return output::print_json(&with(r, "accumulators", acc));
    }
    output::print_one(r, false);
    if let Some(acc) = &r.accumulators {
        println!("accumulators (year to date at the home node):");
        output::print_one(acc, false);
    }
}

impl Record for proto::ClassifiedLine {
    const PLURAL: &'static str = "lines";
    const LIST_COLUMNS: &'static [&'static str] = &[
        "line_no",
        "item_code",
        "item_name",
        "class",
        "first_selfpay_ratio",
        "price_cap",
        "quantity",
        "unit_price",
        "amount",
        "service_date",
    ];
    fn fields(&self) -> Vec<(&'static str, Field)> {
        let l = self.line.clone().unwrap_or_default();
        vec![
            ("line_no", Field::Text(l.line_no)),
            ("item_code", Field::Text(l.item_code)),
            ("item_name", text(&self.item_name)),
            // Upper-case, as catalogues print the class (甲/乙/丙 = A/B/C).
            (
                "class",
                Field::Text(
                    CatalogueClass::from_proto(self.class, "")
                        .map(|c| c.as_str().to_ascii_uppercase())
                        .unwrap_or_default(),
                ),
            ),
            ("first_selfpay_ratio", num(&self.first_selfpay_ratio)),
            ("price_cap", num(&self.price_cap)),
            ("quantity", Field::Num(l.quantity)),
            ("unit_price", Field::Num(l.unit_price)),
            ("amount", Field::Num(l.amount)),
            ("service_date", Field::Text(l.service_date)),
        ]
    }
}

/// The visit's fee lines after an upload or undo: `{"lines": [...], "total": "…"}`.
fn print_fees(r: &proto::UploadFeesResponse, as_json: bool) {
    if as_json {
        return output::print_json(&json!({
            "lines": r.lines.iter().map(output::to_json).collect::<Vec<_>>(),
            "total": r.total,
        }));
    }
    print_rows(&r.lines);
    println!("total: {}", r.total);
}

/// A table of records with a count footer.
fn print_rows<R: Record + Clone>(items: &[R]) {
    output::print_list(
        &Listing {
            items: items.to_vec(),
            next_page_token: String::new(),
            total: None,
        },
        false,
    );
}

type SplitAmount = fn(&proto::Split) -> &str;

/// The amounts of a split in NHSA `setlinfo` order, with the labels clerks know.
const SPLIT_ROWS: [(&str, &str, SplitAmount); 16] = [
    ("medfee_sumamt", "医疗费总额", |s| &s.medfee_sumamt),
    ("fulamt_ownpay_amt", "全自费金额", |s| {
        &s.fulamt_ownpay_amt
    }),
    ("overlmt_selfpay", "超限价自费", |s| &s.overlmt_selfpay),
    ("preselfpay_amt", "先行自付", |s| &s.preselfpay_amt),
    ("inscp_scp_amt", "符合范围金额", |s| &s.inscp_scp_amt),
    ("act_pay_dedc", "起付线", |s| &s.act_pay_dedc),
    ("hifp_pay", "统筹基金支付", |s| &s.hifp_pay),
    ("hifmi_pay", "大病保险", |s| &s.hifmi_pay),
    ("hifob_pay", "大额补助", |s| &s.hifob_pay),
    ("cvlserv_pay", "公务员医疗补助", |s| &s.cvlserv_pay),
    ("maf_pay", "医疗救助", |s| &s.maf_pay),
    ("fund_pay_sumamt", "基金支付总额", |s| {
        &s.fund_pay_sumamt
    }),
    ("hosp_part_amt", "医院负担", |s| &s.hosp_part_amt),
    ("psn_part_amt", "个人负担", |s| &s.psn_part_amt),
    ("acct_pay", "个人账户支付", |s| &s.acct_pay),
    ("psn_cash_pay", "现金支付", |s| &s.psn_cash_pay),
];

/// The Chinese name of a fund code of `FundPayment.fund`.
fn fund_label(fund: &str) -> &'static str {
    match fund {
        "hifp" => "统筹基金",
        "hifmi" => "大病保险",
        "hifob" => "大额补助",
        "cvlserv" => "公务员医疗补助",
        "maf" => "医疗救助",
        "acct" => "个人账户",
        _ => "",
    }
}

impl Record for proto::FundPayment {
    const PLURAL: &'static str = "funds";
    const LIST_COLUMNS: &'static [&'static str] = &["fund", "label", "amount", "description"];
    fn fields(&self) -> Vec<(&'static str, Field)> {
        vec![
            ("fund", text(&self.fund)),
            ("label", text(fund_label(&self.fund))),
            ("amount", num(&self.amount)),
            ("description", text(&self.description)),
        ]
    }
}

impl Record for proto::LineSplit {
    const PLURAL: &'static str = "lines";
    const LIST_COLUMNS: &'static [&'static str] = &[
        "line_no",
        "amount",
        "fulamt_ownpay_amt",
        "overlmt_selfpay",
        "preselfpay_amt",
        "inscp_scp_amt",
        "reason",
    ];
    fn fields(&self) -> Vec<(&'static str, Field)> {
        vec![
            ("line_no", text(&self.line_no)),
            ("amount", num(&self.amount)),
            ("fulamt_ownpay_amt", num(&self.fulamt_ownpay_amt)),
            ("overlmt_selfpay", num(&self.overlmt_selfpay)),
            ("preselfpay_amt", num(&self.preselfpay_amt)),
            ("inscp_scp_amt", num(&self.inscp_scp_amt)),
            ("reason", text(&self.reason)),
        ]
    }
}

/// The split as JSON: the `setlinfo` amounts by their NHSA names, then the ratio, the
/// filing type applied, funds, per-line split and trace.
fn split_json(s: &proto::Split) -> Value {
    let mut m: Map<String, Value> = SPLIT_ROWS
        .iter()
        .map(|(name, _, get)| ((*name).to_owned(), json!(get(s))))
        .collect();
    m.insert("pool_ratio".into(), json!(s.pool_ratio));
    let filing = FilingType::from_proto(s.applied_filing_type, "").map(|f| f.to_string());
    m.insert(
        "applied_filing_type".into(),
        json!(filing.unwrap_or_default()),
    );
    m.insert(
        "funds".into(),
        s.funds.iter().map(output::to_json).collect(),
    );
    m.insert(
        "lines".into(),
        s.lines.iter().map(output::to_json).collect(),
    );
    m.insert("trace".into(), json!(s.trace));
    Value::Object(m)
}

impl Record for proto::Settlement {
    const PLURAL: &'static str = "settlements";
    const LIST_COLUMNS: &'static [&'static str] = &["settlement_id", "state", "visit_id"];
    fn fields(&self) -> Vec<(&'static str, Field)> {
        vec![
            ("settlement_id", text(&self.settlement_id)),
            ("state", text(&self.state)),
            ("visit_id", text(&self.visit_id)),
            ("institution_code", text(&self.institution_code)),
            ("id_number", text(&self.id_number)),
            ("home_region", text(&self.home_region)),
            ("treatment_region", text(&self.treatment_region)),
            (
                "visit_kind",
                enum_name(VisitKind::from_proto(self.visit_kind, "")),
            ),
            ("settled_at", text(&self.settled_at)),
            ("period", text(&self.period)),
            ("policy_version", count(self.policy_version)),
            ("reverses", text(&self.reverses)),
            ("note", text(&self.note)),
            ("cross_province", Field::Bool(self.cross_province)),
        ]
    }
}

/// A settlement as JSON: its fields with the split nested under `split`.
fn settlement_json(s: &proto::Settlement) -> Value {
    with(s, "split", s.split.as_ref().map_or(Value::Null, split_json))
}

fn print_settlement(s: &proto::Settlement, as_json: bool, lang: Lang) {
    if as_json {
        return output::print_json(&settlement_json(s));
    }
    output::print_one(s, false);
    let Some(split) = &s.split else { return };
    let filing = FilingType::from_proto(split.applied_filing_type, "");
    let filing = match lang {
        Lang::En => filing.map_or_else(|_| "-".to_owned(), |f| f.to_string()),
        Lang::Zh => filing.map_or("本地就医", FilingType::zh_name).to_owned(),
    };
    println!(
        "{}",
        t!(
            "hospital.split_header",
            locale = lang.code(),
            ratio = split.pool_ratio,
            filing = filing
        )
    );
    let mut t = output::table();
    t.set_header([
        lang.label("hospital.field"),
        "项目",
        lang.label("hospital.amount"),
    ]);
    for (name, label, get) in SPLIT_ROWS {
        // Hospitals rarely bear a share; the row only appears when one does.
        let amount = get(split);
        if name == "hosp_part_amt"
            && money::parse(amount, name, Sign::Any).is_ok_and(|v| v.is_zero())
        {
            continue;
        }
        t.add_row(vec![
            Cell::new(name),
            Cell::new(label),
            Cell::new(amount).set_alignment(CellAlignment::Right),
        ]);
    }
    println!("{t}");
    if !split.funds.is_empty() {
        print_rows(&split.funds);
    }
    if !split.lines.is_empty() {
        print_rows(&split.lines);
    }
    if !split.trace.is_empty() {
        println!("{}", lang.label("hospital.trace"));
        for (i, step) in split.trace.iter().enumerate() {
            println!("  {}. {step}", i + 1);
        }
    }
}

/// A settlement as one row of a list table.
#[derive(Clone)]
struct SettlementRow(proto::Settlement);

impl Record for SettlementRow {
    const PLURAL: &'static str = "settlements";
    const LIST_COLUMNS: &'static [&'static str] = &[
        "settlement_id",
        "state",
        "visit_id",
        "id_number",
        "home_region",
        "settled_at",
        "medfee_sumamt",
        "fund_pay_sumamt",
        "acct_pay",
        "psn_cash_pay",
    ];
    fn fields(&self) -> Vec<(&'static str, Field)> {
        let split = self.0.split.clone().unwrap_or_default();
        let mut f = self.0.fields();
        f.extend(
            SPLIT_ROWS
                .iter()
                .map(|(name, _, get)| (*name, num(get(&split)))),
        );
        f
    }
}

fn print_reversal(r: &proto::ReverseRequestResponse, as_json: bool, lang: Lang) {
    if as_json {
        let reversal = r.reversal.as_ref().map_or(Value::Null, settlement_json);
        return output::print_json(&json!({ "outcome": r.outcome, "reversal": reversal }));
    }
    let meaning = match r.outcome.as_str() {
        "reversed" => "the settlement it made is reversed",
        "already_reversed" => "it had already been reversed",
        "not_found" => "it never took effect, and now never will",
        _ => "",
    };
    println!("outcome: {} — {meaning}", r.outcome);
    if let Some(s) = &r.reversal {
        print_settlement(s, false, lang);
    }
}

impl Record for proto::ReconcileTotalsResponse {
    const PLURAL: &'static str = "totals";
    const LIST_COLUMNS: &'static [&'static str] = &["matches", "count"];
    fn fields(&self) -> Vec<(&'static str, Field)> {
        vec![
            ("matches", Field::Bool(self.matches)),
            ("count", Field::Int(self.count)),
            ("medfee_sumamt", num(&self.medfee_sumamt)),
            ("fund_pay_sumamt", num(&self.fund_pay_sumamt)),
            ("acct_pay", num(&self.acct_pay)),
        ]
    }
}

/// The node's totals, or side by side with the institution's.
fn print_totals(
    theirs: &proto::ReconcileTotalsRequest,
    ours: &proto::ReconcileTotalsResponse,
    as_json: bool,
) {
    if as_json {
        return output::print_json(&output::to_json(ours));
    }
    let same = |a: &str, b: &str| {
        let p = |s: &str| money::parse(s, "amount", Sign::Any).ok();
        p(a).is_some() && p(a) == p(b)
    };
    let rows = [
        ("count", theirs.count.to_string(), ours.count.to_string()),
        (
            "medfee_sumamt",
            theirs.medfee_sumamt.clone(),
            ours.medfee_sumamt.clone(),
        ),
        (
            "fund_pay_sumamt",
            theirs.fund_pay_sumamt.clone(),
            ours.fund_pay_sumamt.clone(),
        ),
        ("acct_pay", theirs.acct_pay.clone(), ours.acct_pay.clone()),
    ];
    let mut t = output::table();
    t.set_header(["total", "institution", "node", "agrees"]);
    for (name, inst, node) in rows {
        let agrees = if name == "count" {
            inst == node
        } else {
            same(&inst, &node)
        };
        t.add_row(vec![
            Cell::new(name),
            Cell::new(inst).set_alignment(CellAlignment::Right),
            Cell::new(node).set_alignment(CellAlignment::Right),
            Cell::new(if agrees { "yes" } else { "NO" }),
        ]);
    }
    println!("{t}");
    println!(
        "{} {} … {}",
        if ours.matches {
            "reconciled:"
        } else {
            "differences:"
        },
        theirs.from_date,
        theirs.to_date
    );
    if !ours.matches {
        println!(
            "run `yidi hospital reconcile-detail` with the institution's settlement list to find them"
        );
    }
}

impl Record for proto::ReconcileDifference {
    const PLURAL: &'static str = "differences";
    const LIST_COLUMNS: &'static [&'static str] = &[
        "settlement_id",
        "kind",
        "node_medfee_sumamt",
        "node_fund_pay_sumamt",
        "institution_medfee_sumamt",
        "institution_fund_pay_sumamt",
    ];
    fn fields(&self) -> Vec<(&'static str, Field)> {
        let node = self.node.clone().unwrap_or_default();
        let inst = self.institution.clone().unwrap_or_default();
        vec![
            ("settlement_id", text(&self.settlement_id)),
            ("kind", text(&self.kind)),
            ("node_medfee_sumamt", Field::Num(node.medfee_sumamt)),
            ("node_fund_pay_sumamt", Field::Num(node.fund_pay_sumamt)),
            ("institution_medfee_sumamt", Field::Num(inst.medfee_sumamt)),
            (
                "institution_fund_pay_sumamt",
                Field::Num(inst.fund_pay_sumamt),
            ),
        ]
    }
}

fn print_differences(diffs: &[proto::ReconcileDifference], as_json: bool) {
    if as_json {
        return output::print_json(&json!({
            "differences": diffs.iter().map(output::to_json).collect::<Vec<_>>(),
        }));
    }
    if diffs.is_empty() {
        println!("no differences: every settlement agrees");
    } else {
        print_rows(diffs);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(cols: [&str; 6]) -> [String; 6] {
        cols.map(str::to_owned)
    }

    #[test]
    fn empty_amounts_are_computed_half_up_to_the_fen() {
        let l = fee_line("t", raw(["1", "X", "3", "3.335", "", ""])).unwrap_err();
        assert!(l.message().contains("unit_price (t)"), "{l:?}");
        let l = fee_line("t", raw(["1", "X", "0.5", "0.05", "", ""])).unwrap();
        assert_eq!(l.amount, "0.03");
        let l = fee_line("t", raw(["1", "X", "3", "2.50", "", "2026-03-10"])).unwrap();
        assert_eq!(
            (l.amount.as_str(), l.service_date.as_str()),
            ("7.50", "2026-03-10")
        );
        // A given amount goes to the node untouched: the node is the judge.
        let l = fee_line("t", raw(["1", "X", "3", "2.50", "9.99", ""])).unwrap();
        assert_eq!(l.amount, "9.99");
    }

    #[test]
    fn bad_quantity_names_the_column_and_the_line() {
        let e = fee_line("fees.csv line 3", raw(["1", "X", "-1", "2.00", "", ""])).unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().contains("quantity (fees.csv line 3)"), "{e:?}");
    }

    #[test]
    fn csv_and_json_fee_files_read_alike() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("fees.csv");
        std::fs::write(
            &csv,
            "line_no,item_code,quantity,unit_price,amount\n1,NB-A,1,10000.00,\n2,NB-B,4,500.00,2000.00\n",
        )
        .unwrap();
        let js = dir.path().join("fees.json");
        std::fs::write(
            &js,
            r#"[{"line_no":"1","item_code":"NB-A","quantity":1,"unit_price":"10000.00"},
                {"line_no":"2","item_code":"NB-B","quantity":"4","unit_price":"500.00","amount":"2000.00"}]"#,
        )
        .unwrap();
        let a = read_fees(&csv).unwrap();
        assert_eq!(a, read_fees(&js).unwrap());
        assert_eq!(a[0].amount, "10000.00");
    }

    #[test]
    fn misspelt_or_missing_columns_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("fees.csv");
        std::fs::write(&f, "line_no,item_code,qty,unit_price\n1,A,1,1.00\n").unwrap();
        let e = read_fees(&f).unwrap_err().to_string();
        assert!(e.contains("unknown column \"qty\""), "{e}");
        std::fs::write(&f, "line_no,item_code,unit_price\n1,A,1.00\n").unwrap();
        let e = read_fees(&f).unwrap_err().to_string();
        assert!(e.contains("missing column quantity"), "{e}");
        let j = dir.path().join("fees.json");
        std::fs::write(&j, r#"[{"line_no":"1","item":"A"}]"#).unwrap();
        let e = read_fees(&j).unwrap_err().to_string();
        assert!(e.contains("unknown key \"item\""), "{e}");
    }

    #[test]
    fn settlement_json_nests_the_split_with_nhsa_names() {
        let s = proto::Settlement {
            settlement_id: "330200-S-0000000001".into(),
            visit_kind: VisitKind::Inpatient.to_proto(),
            split: Some(proto::Split {
                medfee_sumamt: "12500.00".into(),
                funds: vec![proto::FundPayment {
                    fund: "hifp".into(),
                    amount: "9680.00".into(),
                    description: "pooled fund 88%".into(),
                }],
                applied_filing_type: FilingType::ResettledRetiree.to_proto(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let v = settlement_json(&s);
        assert_eq!(v["visit_kind"], "inpatient");
        assert_eq!(v["split"]["medfee_sumamt"], "12500.00");
        assert_eq!(v["split"]["applied_filing_type"], "resettled_retiree");
        assert_eq!(v["split"]["funds"][0]["label"], "统筹基金");
        assert_eq!(v["split"]["lines"], json!([]));
    }

    #[test]
    fn every_list_column_is_a_field() {
        fn check<R: Record + Default>() {
            let names: Vec<_> = R::default().fields().into_iter().map(|(k, _)| k).collect();
            for col in R::LIST_COLUMNS {
                assert!(names.contains(col), "{}: {col}", R::PLURAL);
            }
        }
        check::<proto::Visit>();
        check::<proto::IdentifyResponse>();
        check::<proto::Accumulators>();
        check::<proto::ClassifiedLine>();
        check::<proto::FundPayment>();
        check::<proto::LineSplit>();
        check::<proto::Settlement>();
        check::<proto::ReconcileTotalsResponse>();
        check::<proto::ReconcileDifference>();
        let row = SettlementRow(proto::Settlement::default());
        let names: Vec<_> = row.fields().into_iter().map(|(k, _)| k).collect();
        for col in SettlementRow::LIST_COLUMNS {
            assert!(names.contains(col), "settlement row: {col}");
        }
    }
}
