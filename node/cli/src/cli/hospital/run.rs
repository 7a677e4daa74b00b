//! Running `yidi hospital …`: connecting, the per-invocation context that issues and
//! remembers request ids, and one arm per subcommand calling its HospitalService RPC.

use std::{cell::RefCell, time::Duration};

use crate::i18n::Lang;
use serde_json::json;
use tonic::{Code, Request, Status};
use yidi_common::{proto, proto::hospital_service_client::HospitalServiceClient, types::VisitKind};

use crate::cli::{
    admin::{self, Page, PageArgs},
    output::{self, Listing, Record},
};

use super::{
    Client, DateRange, EXIT_DIFFERENCES, HospitalArgs, HospitalCommand, SettleArgs,
    files::{read_fees, read_reconcile_entries},
    print::{
        SettlementRow, print_differences, print_fees, print_identity, print_reversal,
        print_settlement, print_totals, settlement_json,
    },
};

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
