//! The agency's console at a node: settlements per day (a chart), refusals by reason,
//! the outbox and the provisional exposure per home region, the peers' health, reserve
//! balances against their alarm thresholds, hospitals' monthly statements, the audit
//! log of other cities' reads with its filters, and a settlement's split and trace.
//! The pages read through the AdminService implementation as the signed-in operator
//! (the same answers `yidi admin` prints) and, for what no RPC lists, through the
//! store's read-only summaries ([`crate::store::overview`]).

use std::{sync::Arc, time::Duration};

use futures::future::BoxFuture;
use hyper::StatusCode;
use maud::{Markup, html};
use yidi_common::{
    money,
    proto::{self, admin_service_server::AdminService},
};

use super::{App, Lang, Principal, Reply, Req, page};
use crate::{
    auth::{Caller, Server, services::ADMIN},
    context::State,
    service::admin::AdminSvc,
    store::overview,
};

/// A peer counts as healthy when it answered a call this recently.
const PEER_FRESH: Duration = Duration::from_secs(120);

/// The node's console, served as the node, open to its city's operators (role admin
/// and role clearing read it).
#[must_use]
pub fn console(state: State, tls: Arc<crate::tls::TlsState>) -> Arc<super::Console<Agency>> {
    let me = crate::identity::Identity::Node {
        region: state.region,
    };
    let server = Server::Node {
        region: state.region,
    };
    super::Console::new(
        Agency {
            svc: AdminSvc::new(Arc::clone(&state)),
            state,
            server: server.clone(),
        },
        me,
        server,
        (ADMIN, "GetNodeInfo"),
        tls,
    )
}

/// The agency's pages of one node.
pub struct Agency {
    state: State,
    svc: AdminSvc,
    server: Server,
}

fn call<T>(who: &Principal, msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.extensions_mut()
        .insert(Caller::Party(Arc::clone(&who.cert)));
    r
}

fn yuan(fen: i64) -> String {
    money::format(money::from_fen(fen))
}

fn urlenc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn settlement_link(id: &str) -> Markup {
    html! { a.settlement href={"/settlements/" (urlenc(id))} { (id) } }
}

impl App for Agency {
    fn handle<'a>(&'a self, req: &'a Req) -> BoxFuture<'a, Reply> {
        Box::pin(async move {
            let segs: Vec<&str> = req.segments.iter().map(String::as_str).collect();
            if req.method != hyper::Method::GET {
                return Reply::error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    req.t("refused"),
                    "the agency's console only reads",
                );
            }
            // Each page reads what these AdminService methods answer: the operator's
            // role must allow them, as over gRPC.
            let needs: &[&str] = match segs.as_slice() {
                [] => &["GetOutbox", "ListReserves"],
                ["hospitals"] => &["ListInstitutions", "HospitalStatement"],
                ["audit"] => &["ListAudit"],
                _ => &["GetNodeInfo"],
            };
            for m in needs {
                if let Err(s) =
                    crate::auth::authorize(&self.server, &req.who.cert.identity, ADMIN, m)
                {
                    return Reply::error(StatusCode::FORBIDDEN, req.t("refused"), s.message());
                }
            }
            match segs.as_slice() {
                [] => self.overview(req).await,
                ["settlements"] => self.settlements(req).await,
                ["settlements", id] => self.settlement(req, id).await,
                ["hospitals"] => self.hospitals(req).await,
                ["audit"] => self.audit(req).await,
                _ => Reply::error(StatusCode::NOT_FOUND, req.t("not_found"), "no such page"),
            }
        })
    }

    fn name(&self, lang: Lang) -> String {
        format!(
            "{} {} {}",
            page::t(lang, "agency"),
            self.state.region,
            self.state.name
        )
    }

    fn nav(&self) -> &'static [(&'static str, &'static str)] {
        &[
            ("/", "overview"),
            ("/settlements", "settlements"),
            ("/hospitals", "hospital_statements"),
            ("/audit", "audit"),
        ]
    }
}

fn failed(r: &Req, what: &'static str, s: &tonic::Status) -> Reply {
    Reply::error(
        StatusCode::SERVICE_UNAVAILABLE,
        r.t(what),
        &format!("{:?}: {}", s.code(), s.message()),
    )
}

impl Agency {
    async fn overview(&self, r: &Req) -> Reply {
        let outbox = match self
            .svc
            .get_outbox(call(&r.who, proto::GetOutboxRequest { list: 0 }))
            .await
        {
            Ok(o) => o.into_inner(),
            Err(s) => return failed(r, "overview", &s),
        };
        let reserves = match self
            .svc
            .list_reserves(call(&r.who, proto::ListReservesRequest::default()))
            .await
        {
            Ok(x) => x.into_inner().reserves,
            Err(s) => return failed(r, "overview", &s),
        };
        let (days, refusals) = match self
            .state
            .store
            .read(|conn| {
                Ok((
                    overview::settlements_by_day(conn, 30)?,
                    overview::refusals_by_reason(conn)?,
                ))
            })
            .await
        {
            Ok(x) => x,
            Err(e) => return failed(r, "overview", &tonic::Status::from(e)),
        };
        let peers = self.state.peers.all();
        let bars: Vec<(String, u64)> = days.iter().map(|d| (d.date.clone(), d.count)).collect();
        let body = html! {
            h2 { (r.t("settlements_by_day")) }
            @if bars.is_empty() { p.muted { "—" } } @else {
                (page::count_bars("settlements-chart", r.t("settlements_by_day"), &bars))
            }
            table id="days" {
                tr { th { "" } th.num { (r.t("count")) } th.num { (r.t("fund_pay")) } }
                @for d in days.iter().rev() {
                    tr { td { (d.date) } td.num { (d.count) } td.num { (yuan(d.fund_fen)) } }
                }
            }
            h2 { (r.t("refusals")) }
            table id="refusals" {
                tr { th { (r.t("reason")) } th.num { (r.t("count")) } }
                @for (why, n) in &refusals { tr { td { (why) } td.num { (n) } } }
            }
            h2 { (r.t("outbox")) " " span.muted id="outbox-depth" { (outbox.depth) } }
            table id="outbox" {
                tr { th { (r.t("home_region")) } th.num { (r.t("outbox")) } th { "oldest" }
                     th.num { (r.t("exposure")) } th.num { (r.t("limit")) } }
                @for t in &outbox.targets {
                    @let e = outbox.exposure.iter().find(|e| e.region == t.region);
                    tr { td { (t.region) } td.num { (t.depth) } td.muted { (t.oldest) }
                         td.num { @if let Some(e) = e { (e.amount) } }
                         td.num { @if let Some(e) = e { (e.limit) } } }
                }
                @for e in outbox.exposure.iter().filter(|e| !outbox.targets.iter().any(|t| t.region == e.region)) {
                    tr { td { (e.region) } td.num { "0" } td {} td.num { (e.amount) } td.num { (e.limit) } }
                }
            }
            h2 { (r.t("peers")) }
            table id="peers" {
                tr { th { (r.t("participant")) } th { "" } th { "" } th { (r.t("reachable")) } }
                @for p in &peers {
                    @let up = p.answered_within(PEER_FRESH);
                    tr data-region=(p.region) {
                        td { (p.region) } td { (p.name) } td.muted { (p.address) }
                        td class=(if up { "good" } else { "muted" }) {
                            (if up { r.t("reachable") } else { "—" })
                        }
                    }
                }
            }
            h2 { (r.t("reserves")) }
            table id="reserves" {
                tr { th { (r.t("home_region")) } th { (r.t("participant")) } th.num { (r.t("balance")) } th.num { (r.t("alarm")) } th { "" } }
                @for x in &reserves {
                    tr { td { (x.home_region) } td { (x.treatment_region) } td.num { (x.balance) }
                         td.num { (x.alarm_threshold) }
                         td { @if x.alarm { span.bad { "● " (r.t("alarm")) } } } }
                }
            }
        };
        Reply::page(r.t("overview"), body)
    }

    async fn settlements(&self, r: &Req) -> Reply {
        let inst = r.field("institution").to_owned();
        let rows = match self
            .state
            .store
            .read(move |conn| overview::recent(conn, &inst, 200))
            .await
        {
            Ok(x) => x,
            Err(e) => return failed(r, "settlements", &tonic::Status::from(e)),
        };
        let body = html! {
            form.action method="get" action="/settlements" {
                label { (r.t("institution")) " " input type="text" name="institution" value=(r.field("institution")); }
                button type="submit" { (r.t("find")) }
            }
            table id="settlements" {
                tr { th { (r.t("settlement")) } th { (r.t("institution")) } th { (r.t("home_region")) } th { (r.t("state")) }
                     th.num { (r.t("amount")) } th.num { (r.t("fund_pay")) } th { (r.t("updated")) } }
                @for s in &rows {
                    tr { td { (settlement_link(&s.settlement_id)) } td { (s.institution_code) } td { (s.home_region) }
                         td { (s.state) } td.num { (yuan(s.medfee_fen)) } td.num { (yuan(s.fund_fen)) } td.muted { (s.settled_at) } }
                }
            }
        };
        Reply::page(r.t("settlements"), body)
    }

    async fn settlement(&self, r: &Req, id: &str) -> Reply {
        let key = id.to_owned();
        let t = match self
            .state
            .store
            .read(move |conn| overview::trace(conn, &key))
            .await
        {
            Ok(Some(t)) => t,
            Ok(None) => {
                return Reply::error(
                    StatusCode::NOT_FOUND,
                    r.t("not_found"),
                    &format!("no settlement {id} at this node"),
                );
            }
            Err(e) => return failed(r, "settlement", &tonic::Status::from(e)),
        };
        let s = &t.row;
        let body = html! {
            table id="settlement" {
                tr { th { (r.t("institution")) } td { (s.institution_code) } }
                tr { th { (r.t("home_region")) } td { (s.home_region) } }
                tr { th { (r.t("state")) } td id="settlement-state" { (s.state) } }
                tr { th { (r.t("period")) } td { (s.period) } }
                tr { th { (r.t("updated")) } td { (s.settled_at) } }
                tr { th { "policy / accumulators" } td { "v" (s.policy_version) " / v" (s.acc_version) } }
                @if !s.note.is_empty() { tr { th { (r.t("reason")) } td { (s.note) } } }
                @if let Some(o) = &s.reverses { tr { th { "reverses" } td { (settlement_link(o)) } } }
            }
            h2 { (r.t("split")) }
            @match &t.split {
                None => p.muted { "—" },
                Some(sp) => table id="split" {
                    @for (k, v) in split_rows(sp) { tr { th { (k) } td.num { (v) } } }
                },
            }
            h2 { (r.t("trace")) }
            table id="trace" {
                tr { th { "" } th { "" } th { "" } th.num { (r.t("amount")) } th { (r.t("updated")) } }
                tr { td { "settlement" } td { (s.state) } td { (s.home_region) } td.num { (yuan(s.fund_fen)) } td.muted { (s.settled_at) } }
                @for x in &t.reversals {
                    tr { td { "reversal " (settlement_link(&x.settlement_id)) } td { (x.state) } td { (x.home_region) } td.num { (yuan(x.fund_fen)) } td.muted { (x.settled_at) } }
                }
                @for (kind, target, created, attempts, err) in &t.outbox {
                    tr { td { "outbox: " (kind) } td { "queued, " (attempts) " attempt(s)" } td { (target) } td.muted { (err) } td.muted { (created) } }
                }
                @for (entry, side, cp, period, kind, fen, created) in &t.ledger {
                    tr { td { "ledger " (kind) " " code { (entry) } } td { (side) " " (period) } td { (cp) } td.num { (yuan(*fen)) } td.muted { (created) } }
                }
            }
        };
        Reply::page(format!("{} {id}", r.t("settlement")), body)
    }

    async fn hospitals(&self, r: &Req) -> Reply {
        let period = match r.field("period") {
            "" => yidi_common::period::Period::of(chrono::Utc::now()).to_string(),
            p => p.to_owned(),
        };
        let insts = match self
            .svc
            .list_institutions(call(
                &r.who,
                proto::ListInstitutionsRequest {
                    page: Some(proto::PageRequest {
                        page_size: 1000,
                        page_token: String::new(),
                    }),
                },
            ))
            .await
        {
            Ok(x) => x.into_inner().institutions,
            Err(s) => return failed(r, "hospital_statements", &s),
        };
        let mut rows = Vec::new();
        for i in &insts {
            let req = proto::HospitalStatementRequest {
                institution_code: i.code.clone(),
                period: period.clone(),
            };
            match self.svc.hospital_statement(call(&r.who, req)).await {
                Ok(s) => rows.push((i.name.clone(), s.into_inner())),
                Err(s) => return failed(r, "hospital_statements", &s),
            }
        }
        let body = html! {
            form.action method="get" action="/hospitals" {
                label { (r.t("period")) " " input type="text" name="period" value=(period) pattern="[0-9]{4}-[0-9]{2}"; }
                button type="submit" { (r.t("find")) }
            }
            table id="hospital-statements" {
                tr { th { (r.t("institution")) } th { "" } th.num { (r.t("count")) } th.num { (r.t("amount")) }
                     th.num { (r.t("fund_pay")) } th.num { "deductions" } th.num { (r.t("payable")) } }
                @for (name, s) in &rows {
                    tr { td { a href={"/settlements?institution=" (urlenc(&s.institution_code))} { (s.institution_code) } } td { (name) }
                         td.num { (s.records) } td.num { (s.medfee_sumamt) } td.num { (s.fund_pay_sumamt) }
                         td.num { (s.deductions) } td.num { (s.payable) } }
                }
            }
        };
        Reply::page(format!("{} {period}", r.t("hospital_statements")), body)
    }

    async fn audit(&self, r: &Req) -> Reply {
        let req = proto::ListAuditRequest {
            peer_region: r.field("peer_region").to_owned(),
            person: String::new(),
            from: r.field("from").to_owned(),
            to: r.field("to").to_owned(),
            action: r.field("action").to_owned(),
            page: Some(proto::PageRequest {
                page_size: 200,
                page_token: String::new(),
            }),
        };
        let (entries, error) = match self.svc.list_audit(call(&r.who, req)).await {
            Ok(x) => (x.into_inner().entries, None),
            Err(s) => (Vec::new(), Some(format!("{:?}: {}", s.code(), s.message()))),
        };
        let body = html! {
            form.action id="audit-filter" method="get" action="/audit" {
                label { (r.t("participant")) " " input type="text" name="peer_region" value=(r.field("peer_region")) size="8"; }
                label { "action " select name="action" {
                    @for a in ["", "LookupPerson", "CheckEligibility", "CommitClaim", "ReverseClaim"] {
                        option value=(a) selected[r.field("action") == a] { (a) }
                    }
                } }
                label { "from " input type="text" name="from" value=(r.field("from")) placeholder="2026-05-01" size="12"; }
                label { "to " input type="text" name="to" value=(r.field("to")) placeholder="2026-06-01" size="12"; }
                button type="submit" { (r.t("find")) }
            }
            @if let Some(e) = &error { p.error { (e) } }
            table id="audit" {
                tr { th { "#" } th { (r.t("updated")) } th { (r.t("participant")) } th { "action" } th { "reference" }
                     th { (r.t("institution")) } th { "outcome" } }
                @for e in &entries {
                    tr { td { (e.seq) } td.muted { (e.at) } td { (e.peer_region) } td { (e.action) } td { code { (e.reference) } }
                         td { (e.institution_code) } td { (e.outcome) } }
                }
            }
        };
        Reply::page(r.t("audit"), body)
    }
}

/// The split's amounts in the national field names, as the hospital got them.
fn split_rows(s: &proto::Split) -> Vec<(&'static str, String)> {
    vec![
        ("medfee_sumamt", s.medfee_sumamt.clone()),
        ("fulamt_ownpay_amt", s.fulamt_ownpay_amt.clone()),
        ("overlmt_selfpay", s.overlmt_selfpay.clone()),
        ("preselfpay_amt", s.preselfpay_amt.clone()),
        ("inscp_scp_amt", s.inscp_scp_amt.clone()),
        ("act_pay_dedc", s.act_pay_dedc.clone()),
        ("pool_ratio", s.pool_ratio.clone()),
        ("hifp_pay", s.hifp_pay.clone()),
        ("hifmi_pay", s.hifmi_pay.clone()),
        ("hifob_pay", s.hifob_pay.clone()),
        ("cvlserv_pay", s.cvlserv_pay.clone()),
        ("fund_pay_sumamt", s.fund_pay_sumamt.clone()),
        ("psn_part_amt", s.psn_part_amt.clone()),
        ("acct_pay", s.acct_pay.clone()),
        ("psn_cash_pay", s.psn_cash_pay.clone()),
    ]
}
