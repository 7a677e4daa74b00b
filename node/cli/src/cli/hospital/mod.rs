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

use std::path::PathBuf;

use clap::{Args, Subcommand};
use tonic::transport::Channel;
use yidi_common::{
    period, proto::hospital_service_client::HospitalServiceClient, types::VisitKind,
};

use super::{
    admin::{self, PageArgs},
    flags::{ClientFlags, LangFlag, NodeFlag},
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

mod files;
mod print;
mod run;

pub use run::run;
