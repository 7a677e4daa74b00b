//! The clearing desk: the coordinator's console. Rounds and their progress per
//! participant, a round's statement (gross matrix, net positions as a chart, payment
//! instructions), transfers with their bank references and corrections, disputes with
//! the drill-down by claim id, and the participants' reachability. Its actions — open
//! and run a round, record and correct a transfer, resolve disputes — are calls of the
//! CoordinatorService implementation itself, as the signed-in operator (the same
//! checks, the same request ids, the same audit of who recorded what), after the gRPC
//! access table said yes to the operator's role.
//!
//! Nothing personal is shown: the coordinator holds none (claim ids, counts and sums).

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::{StreamExt, future::BoxFuture, stream};
use hyper::StatusCode;
use maud::{Markup, html};
use rust_decimal::Decimal;
use yidi_common::{
    money::{self, Sign},
    proto::{self, coordinator_service_server::CoordinatorService},
};

use super::{CoordState, CoordinatorSvc};
use crate::auth::{Caller, Server, services::COORDINATOR};
use crate::console::{App, Console, Lang, Outcome, Principal, Reply, Req, page};

/// The round's states by their wire names (common's round_state.rs), to match the
/// `Round.state` the coordinator answers with.
mod state {
    use yidi_common::round_state::RoundState;

    pub const OPEN: &str = RoundState::Open.as_str();
    pub const COLLECTING: &str = RoundState::Collecting.as_str();
    pub const RECONCILING: &str = RoundState::Reconciling.as_str();
    pub const DISPUTED: &str = RoundState::Disputed.as_str();
    pub const STATEMENT_ISSUED: &str = RoundState::StatementIssued.as_str();
    pub const CONFIRMED: &str = RoundState::Confirmed.as_str();
    pub const SETTLED: &str = RoundState::Settled.as_str();
    pub const ABORTED: &str = RoundState::Aborted.as_str();
}

/// How long a reachability probe waits for a participant's health answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Probes are reused for this long: a page view does not call every node each time.
const PROBE_REUSE: Duration = Duration::from_secs(10);
/// The round's steps, in order (DISPUTED and ABORTED are side branches).
const STEPS: &[&str] = &[
    state::OPEN,
    state::COLLECTING,
    state::RECONCILING,
    state::STATEMENT_ISSUED,
    state::CONFIRMED,
    state::SETTLED,
];

/// The coordinator's console: the desk, served as the coordinator, open to the
/// province's operators (role admin reads, role clearing also acts).
#[must_use]
pub fn console(state: Arc<CoordState>, tls: Arc<crate::tls::TlsState>) -> Arc<Console<Desk>> {
    let me = crate::identity::Identity::Coordinator {
        province: state.region,
    };
    let server = Server::Coordinator {
        province: state.region,
        participants: Arc::clone(&state.participants),
    };
    Console::new(
        Desk::new(state),
        me,
        server,
        (COORDINATOR, "ListRounds"),
        tls,
    )
}

/// The clearing desk of one coordinator.
pub struct Desk {
    state: Arc<CoordState>,
    svc: CoordinatorSvc,
    server: Server,
    reach: tokio::sync::Mutex<Option<(Instant, Vec<Reach>)>>,
    /// Last time each participant answered a probe.
    last_seen: Mutex<std::collections::HashMap<String, String>>,
}

#[derive(Clone)]
struct Reach {
    region: String,
    name: String,
    address: String,
    up: bool,
    last_seen: String,
}

impl Desk {
    #[must_use]
    pub fn new(state: Arc<CoordState>) -> Self {
        let server = Server::Coordinator {
            province: state.region,
            participants: Arc::clone(&state.participants),
        };
        Self {
            svc: CoordinatorSvc::new(Arc::clone(&state)),
            state,
            server,
            reach: tokio::sync::Mutex::new(None),
            last_seen: Mutex::new(std::collections::HashMap::new()),
        }
    }

    async fn reachability(&self) -> Vec<Reach> {
        let mut cached = self.reach.lock().await;
        if let Some((at, r)) = cached.as_ref()
            && at.elapsed() < PROBE_REUSE
        {
            return r.clone();
        }
        let peers = self.state.participants.all();
        let probed: Vec<(crate::peers::Peer, bool)> = stream::iter(peers)
            .map(|p| async move {
                let mut health = tonic_health::pb::health_client::HealthClient::new(p.channel());
                let up = tokio::time::timeout(
                    PROBE_TIMEOUT,
                    health.check(tonic_health::pb::HealthCheckRequest::default()),
                )
                .await
                .is_ok_and(|r| r.is_ok());
                (p, up)
            })
            .buffer_unordered(32)
            .collect()
            .await;
        let now = yidi_common::period::now_rfc3339();
        let mut seen = self.last_seen.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<Reach> = probed
            .into_iter()
            .map(|(p, up)| {
                let region = p.region.to_string();
                if up {
                    seen.insert(region.clone(), now.clone());
                }
                Reach {
                    last_seen: seen.get(&region).cloned().unwrap_or_default(),
                    region,
                    name: p.name,
                    address: p.address,
                    up,
                }
            })
            .collect();
        out.sort_by(|a, b| a.region.cmp(&b.region));
        *cached = Some((Instant::now(), out.clone()));
        out
    }

    fn may(&self, who: &Principal, method: &str) -> Result<(), String> {
        crate::auth::authorize(&self.server, &who.cert.identity, COORDINATOR, method)
            .map_err(|s| s.message().to_owned())
    }
}

/// A request to the CoordinatorService implementation as the signed-in operator.
fn call<T>(who: &Principal, msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.extensions_mut()
        .insert(Caller::Party(Arc::clone(&who.cert)));
    r
}

fn rr(id: &str) -> proto::RoundRequest {
    proto::RoundRequest {
        round_id: id.to_owned(),
        ..Default::default()
    }
}

/// A round request of an action, with the form's request id.
fn rr_action(r: &Req, id: &str) -> proto::RoundRequest {
    proto::RoundRequest {
        request_id: format!("console:{}", r.field("request_id")),
        round_id: id.to_owned(),
    }
}

fn status_text(s: &tonic::Status) -> String {
    format!("{:?}: {}", s.code(), s.message())
}

fn round_path(id: &str) -> String {
    format!("/rounds/{}", urlenc(id))
}

fn urlenc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn state_badge(s: &str) -> Markup {
    html! { span class={"state state-" (s)} { (s) } }
}

fn dec(s: &str) -> Decimal {
    money::parse(s, "amount", Sign::Any).unwrap_or_default()
}

impl App for Desk {
    fn handle<'a>(&'a self, req: &'a Req) -> BoxFuture<'a, Reply> {
        Box::pin(async move {
            let segs: Vec<&str> = req.segments.iter().map(String::as_str).collect();
            let post = req.method == hyper::Method::POST;
            match (post, segs.as_slice()) {
                (false, [] | ["rounds"]) => self.rounds(req).await,
                (false, ["participants"]) => self.participants(req).await,
                (false, ["rounds", id]) => self.round(req, id).await,
                (false, ["rounds", id, "claim"]) => self.claim(req, id).await,
                (false, ["rounds", id, "net.svg"]) => self.net_svg(req, id).await,
                (true, ["rounds"]) => self.open(req).await,
                (true, ["rounds", id, "run"]) => self.run(req, id).await,
                (true, ["rounds", id, "resolve"]) => self.resolve(req, id).await,
                (true, ["rounds", id, "transfer"]) => self.record(req, id).await,
                (true, ["rounds", id, "correct"]) => self.correct(req, id).await,
                _ => Reply::error(StatusCode::NOT_FOUND, req.t("not_found"), "no such page"),
            }
        })
    }

    fn name(&self, lang: Lang) -> String {
        format!("{} {}", page::t(lang, "desk"), self.state.region)
    }

    fn nav(&self) -> &'static [(&'static str, &'static str)] {
        &[("/", "rounds"), ("/participants", "participants")]
    }
}

impl Desk {
    async fn rounds(&self, r: &Req) -> Reply {
        let rounds = match self
            .svc
            .list_rounds(call(&r.who, proto::ListRoundsRequest::default()))
            .await
        {
            Ok(x) => x.into_inner().rounds,
            Err(s) => {
                return Reply::error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    r.t("rounds"),
                    &status_text(&s),
                );
            }
        };
        let n = self.state.participant_regions().len();
        let live = rounds.iter().any(|x| !finished(x));
        let body = html! {
            table id="rounds" {
                tr {
                    th { (r.t("round")) } th { (r.t("period")) } th { (r.t("state")) }
                    th.num { (r.t("reported")) } th.num { (r.t("confirmed")) } th.num { (r.t("cleared")) }
                    th.num { (r.t("transfers")) } th { (r.t("waiting")) } th { (r.t("updated")) }
                }
                @for x in rounds.iter().rev() {
                    @let (rep, conf, clr) = progress(x, n);
                    tr data-round=(x.round_id) {
                        td { a href=(round_path(&x.round_id)) { (x.round_id) } }
                        td { (x.period) }
                        td.round-state { (state_badge(&x.state)) }
                        td.num { (rep) "/" (n) } td.num { (conf) "/" (n) } td.num { (clr) "/" (n) }
                        td.num { (x.transfers_recorded) "/" (x.transfers_expected) }
                        td { (x.missing.join(", ")) }
                        td.muted { (x.updated_at) }
                    }
                }
            }
            @if self.may(&r.who, "OpenRound").is_ok() {
                h2 { (r.t("open_round")) }
                form.action id="open-round" method="post" action="/rounds" {
                    (page::form_fields(r))
                    label { (r.t("period")) " " input type="text" name="period" placeholder="2026-05" pattern="[0-9]{4}-[0-9]{2}" required; }
                    label { input type="checkbox" name="early" value="yes"; " " (r.t("early")) }
                    label { input type="checkbox" name="allow_empty" value="yes"; " " (r.t("allow_empty")) }
                    (page::confirm_box(r))
                    button type="submit" { (r.t("open")) }
                }
            }
        };
        Reply::Page {
            status: StatusCode::OK,
            title: r.t("rounds").to_owned(),
            body,
            refresh: live.then_some(5),
        }
    }

    async fn participants(&self, r: &Req) -> Reply {
        let reach = self.reachability().await;
        // A store that cannot be read shows no last reports rather than no page.
        let last = self
            .state
            .store
            .read(super::store::last_reports)
            .await
            .unwrap_or_default();
        let body = html! {
            table id="participants" {
                tr { th { (r.t("participant")) } th { "" } th { "" } th { (r.t("reachable")) } th { (r.t("updated")) } th { (r.t("last_report")) } }
                @for p in &reach {
                    tr data-region=(p.region) {
                        td { (p.region) } td { (p.name) } td.muted { (p.address) }
                        td class=(if p.up { "good" } else { "bad" }) { (r.t(if p.up { "reachable" } else { "unreachable" })) }
                        td.muted { (p.last_seen) }
                        td.last-report {
                            @if let Some((round, at)) = last.get(&p.region) {
                                a href=(round_path(round)) { (round) } " " span.muted { (at) }
                            }
                        }
                    }
                }
            }
        };
        Reply::page(r.t("participants"), body)
    }

    async fn round(&self, r: &Req, id: &str) -> Reply {
        let round = match self.svc.get_round(call(&r.who, rr(id))).await {
            Ok(x) => x.into_inner(),
            Err(s) => return Reply::error(StatusCode::NOT_FOUND, r.t("round"), &status_text(&s)),
        };
        let statement = self
            .svc
            .get_statement(call(&r.who, rr(id)))
            .await
            .ok()
            .map(tonic::Response::into_inner);
        let transfers = self
            .svc
            .list_transfers(call(&r.who, rr(id)))
            .await
            .map(|x| x.into_inner().transfers)
            .unwrap_or_default();
        let disputes = self
            .svc
            .list_disputes(call(&r.who, rr(id)))
            .await
            .map(|x| x.into_inner().disputes)
            .unwrap_or_default();
        let regions = self.state.participant_regions();
        let may_act = |m: &str| self.may(&r.who, m).is_ok();
        let body = html! {
            p { (r.t("period")) ": " strong { (round.period) } " · " (r.t("state")) ": "
                span id="round-state" { (state_badge(&round.state)) }
                @if !round.note.is_empty() { " · " span.muted { (round.note) } } }
            ol.steps {
                @for s in STEPS {
                    li { @if *s == round.state { strong { (s) } } @else { span.muted { (s) } } }
                }
            }
            h2 { (r.t("progress")) }
            table id="progress" {
                tr { th { (r.t("participant")) } th { (r.t("reported")) } th { (r.t("confirmed")) } th { (r.t("cleared")) } th { (r.t("waiting")) } }
                @for p in &regions {
                    @let reported = match round.state.as_str() {
                        state::OPEN | state::COLLECTING => !round.missing.contains(p),
                        state::ABORTED => false,
                        _ => true,
                    };
                    tr data-region=(p) {
                        td { (p) }
                        td { (tick(reported)) }
                        td { (tick(round.confirmed.contains(p))) }
                        td { (tick(round.cleared.contains(p))) }
                        td { @if round.missing.contains(p) { span.bad { "●" } } }
                    }
                }
            }
            @if may_act("RunRound") && !finished(&round) {
                form.action id="run-round" method="post" action={(round_path(id)) "/run"} {
                    (page::form_fields(r))
                    (page::confirm_box(r))
                    button type="submit" { (r.t("run_round")) }
                }
            }
            h2 { (r.t("disputes")) }
            (self.disputes(r, id, &round, &disputes))
            h2 { (r.t("statement")) }
            @match &statement {
                None => p.muted { (r.t("no_statement")) },
                Some(s) => (statement_view(r, s)),
            }
            @if let Some(s) = &statement {
                h2 { (r.t("instructions")) }
                table id="instructions" {
                    tr { th { (r.t("from")) } th { (r.t("to")) } th.num { (r.t("amount")) } th { (r.t("reference")) } th { "" } }
                    @for i in &s.instructions {
                        @let done = transfers.iter().find(|t| t.from_region == i.from_region && t.to_region == i.to_region);
                        tr data-from=(i.from_region) data-to=(i.to_region) {
                            td { (i.from_region) } td { (i.to_region) } td.num { (i.amount) }
                            td.reference { @if let Some(t) = done { (t.reference) } @else { span.muted { (r.t("not_recorded")) } } }
                            td {
                                @if done.is_none() && round.state == state::CONFIRMED && may_act("RecordTransfer") {
                                    form method="post" action={(round_path(id)) "/transfer"} class="record" {
                                        (page::form_fields(r))
                                        input type="hidden" name="from" value=(i.from_region);
                                        input type="hidden" name="to" value=(i.to_region);
                                        input type="hidden" name="amount" value=(i.amount);
                                        input type="text" name="reference" placeholder=(r.t("reference")) required;
                                        (page::confirm_box(r))
                                        button type="submit" { (r.t("record")) }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            h2 { (r.t("transfers")) " " span.muted { (round.transfers_recorded) "/" (round.transfers_expected) } }
            table id="transfers" {
                tr { th { (r.t("from")) } th { (r.t("to")) } th.num { (r.t("amount")) } th { (r.t("reference")) } th { (r.t("history")) } th { "" } }
                @for t in &transfers {
                    tr data-from=(t.from_region) data-to=(t.to_region) {
                        td { (t.from_region) } td { (t.to_region) } td.num { (t.amount) }
                        td.reference { (t.reference) }
                        td {
                            @for v in &t.history {
                                div.muted { "v" (v.version) " " (v.reference) " · " (v.operator) " · " (v.at)
                                    @if !v.reason.is_empty() { " · " (r.t("reason")) ": " (v.reason) } }
                            }
                        }
                        td {
                            @if may_act("CorrectTransfer") {
                                form method="post" action={(round_path(id)) "/correct"} class="correct" {
                                    (page::form_fields(r))
                                    input type="hidden" name="from" value=(t.from_region);
                                    input type="hidden" name="to" value=(t.to_region);
                                    input type="text" name="reference" placeholder=(r.t("reference")) required;
                                    input type="text" name="reason" placeholder=(r.t("reason")) required;
                                    (page::confirm_box(r))
                                    button type="submit" { (r.t("correct")) }
                                }
                            }
                        }
                    }
                }
            }
        };
        let refresh = matches!(
            round.state.as_str(),
            state::OPEN | state::COLLECTING | state::RECONCILING | state::STATEMENT_ISSUED
        ) || (round.state == state::SETTLED && !round.missing.is_empty());
        Reply::Page {
            status: StatusCode::OK,
            title: format!("{} {}", r.t("round"), round.round_id),
            body,
            refresh: refresh.then_some(3),
        }
    }

    fn disputes(
        &self,
        r: &Req,
        id: &str,
        round: &proto::Round,
        disputes: &[proto::Dispute],
    ) -> Markup {
        html! {
            form.action id="find-claim" method="get" action={(round_path(id)) "/claim"} {
                label { (r.t("find_claim")) " " input type="text" name="claim_id" required; }
                button type="submit" { (r.t("find")) }
            }
            @if disputes.is_empty() {
                p.muted id="no-disputes" { (r.t("no_disputes")) }
            } @else {
                table id="disputes" {
                    tr { th { (r.t("creditor")) } th { (r.t("debtor")) } th.num { (r.t("creditor")) " Σ" } th.num { (r.t("debtor")) " Σ" }
                         th { (r.t("only_at_creditor")) } th { (r.t("only_at_debtor")) } th { (r.t("amount_differs")) } }
                    @for d in disputes {
                        tr {
                            td { (d.creditor) } td { (d.debtor) } td.num { (d.creditor_sum) } td.num { (d.debtor_sum) }
                            td { (claim_links(id, &d.only_at_creditor)) }
                            td { (claim_links(id, &d.only_at_debtor)) }
                            td { (claim_links(id, &d.amount_differs)) }
                        }
                    }
                }
                @if round.state == state::DISPUTED && self.may(&r.who, "ResolveDisputes").is_ok() {
                    form.action id="resolve" method="post" action={(round_path(id)) "/resolve"} {
                        (page::form_fields(r))
                        (page::confirm_box(r))
                        button type="submit" { (r.t("resolve")) }
                    }
                }
            }
        }
    }

    async fn claim(&self, r: &Req, id: &str) -> Reply {
        let claim = r.field("claim_id").to_owned();
        let disputes = match self.svc.list_disputes(call(&r.who, rr(id))).await {
            Ok(x) => x.into_inner().disputes,
            Err(s) => {
                return Reply::error(StatusCode::NOT_FOUND, r.t("drill_down"), &status_text(&s));
            }
        };
        let hits: Vec<(&proto::Dispute, &'static str)> = disputes
            .iter()
            .flat_map(|d| {
                [
                    (&d.only_at_creditor, "only_at_creditor"),
                    (&d.only_at_debtor, "only_at_debtor"),
                    (&d.amount_differs, "amount_differs"),
                ]
                .into_iter()
                .filter(|(ids, _)| ids.contains(&claim))
                .map(move |(_, k)| (d, k))
            })
            .collect();
        let body = html! {
            p { (r.t("claim_id")) ": " code id="claim-id" { (claim) } " · " a href=(round_path(id)) { (r.t("round")) " " (id) } }
            @if hits.is_empty() {
                p id="claim-result" { (r.t("not_in_dispute")) }
            } @else {
                table id="claim-result" {
                    tr { th { (r.t("creditor")) } th { (r.t("debtor")) } th { (r.t("in_dispute")) } }
                    @for (d, k) in &hits {
                        tr { td { (d.creditor) } td { (d.debtor) } td { (r.t(k)) } }
                    }
                }
            }
        };
        Reply::page(format!("{} · {}", r.t("drill_down"), id), body)
    }

    async fn net_svg(&self, r: &Req, id: &str) -> Reply {
        match self.svc.get_statement(call(&r.who, rr(id))).await {
            Ok(s) => Reply::Raw {
                content_type: "image/svg+xml",
                body: net_chart(r, &s.into_inner()).into_string(),
            },
            Err(s) => Reply::error(StatusCode::NOT_FOUND, r.t("statement"), &status_text(&s)),
        }
    }

    fn checked(&self, r: &Req, method: &str, back: String) -> Result<(), Reply> {
        if let Err(why) = self.may(&r.who, method) {
            return Err(Reply::Done(Outcome {
                ok: false,
                message: why,
                location: back,
            }));
        }
        if !page::confirmed(r) {
            return Err(Reply::Done(Outcome {
                ok: false,
                message: format!(
                    "{}: tick “{}” to confirm the action",
                    method,
                    r.t("confirm")
                ),
                location: back,
            }));
        }
        Ok(())
    }

    async fn open(&self, r: &Req) -> Reply {
        if let Err(e) = self.checked(r, "OpenRound", "/".into()) {
            return e;
        }
        let req = proto::OpenRoundRequest {
            request_id: format!("console:{}", r.field("request_id")),
            period: r.field("period").to_owned(),
            early: r.field("early") == "yes",
            allow_empty: r.field("allow_empty") == "yes",
        };
        match self.svc.open_round(call(&r.who, req)).await {
            Ok(x) => {
                let x = x.into_inner();
                Reply::Done(Outcome {
                    ok: true,
                    message: format!("round {} opened for {} ({})", x.round_id, x.period, x.state),
                    location: round_path(&x.round_id),
                })
            }
            Err(s) => Reply::Done(Outcome {
                ok: false,
                message: status_text(&s),
                location: "/".into(),
            }),
        }
    }

    async fn run(&self, r: &Req, id: &str) -> Reply {
        if let Err(e) = self.checked(r, "RunRound", round_path(id)) {
            return e;
        }
        done(
            self.svc
                .run_round(call(&r.who, rr_action(r, id)))
                .await
                .map(|x| {
                    let x = x.into_inner();
                    let waiting = if x.missing.is_empty() {
                        String::new()
                    } else {
                        format!("; waiting for {}", x.missing.join(", "))
                    };
                    format!("round {} is {}{waiting}", x.round_id, x.state)
                }),
            round_path(id),
        )
    }

    async fn resolve(&self, r: &Req, id: &str) -> Reply {
        if let Err(e) = self.checked(r, "ResolveDisputes", round_path(id)) {
            return e;
        }
        done(
            self.svc
                .resolve_disputes(call(&r.who, rr_action(r, id)))
                .await
                .map(|x| {
                    let x = x.into_inner();
                    format!(
                        "disputed records of round {} carried to the next period; the round is {}",
                        x.round_id, x.state
                    )
                }),
            round_path(id),
        )
    }

    async fn record(&self, r: &Req, id: &str) -> Reply {
        if let Err(e) = self.checked(r, "RecordTransfer", round_path(id)) {
            return e;
        }
        let req = proto::RecordTransferRequest {
            request_id: format!("console:{}", r.field("request_id")),
            round_id: id.to_owned(),
            from_region: r.field("from").to_owned(),
            to_region: r.field("to").to_owned(),
            amount: r.field("amount").to_owned(),
            reference: r.field("reference").to_owned(),
        };
        let what = format!(
            "transfer {} → {} of {} recorded with reference {}",
            req.from_region,
            req.to_region,
            req.amount,
            req.reference.trim()
        );
        done(
            self.svc
                .record_transfer(call(&r.who, req))
                .await
                .map(|x| format!("{what}; the round is {}", x.into_inner().state)),
            round_path(id),
        )
    }

    async fn correct(&self, r: &Req, id: &str) -> Reply {
        if let Err(e) = self.checked(r, "CorrectTransfer", round_path(id)) {
            return e;
        }
        let req = proto::CorrectTransferRequest {
            request_id: format!("console:{}", r.field("request_id")),
            round_id: id.to_owned(),
            from_region: r.field("from").to_owned(),
            to_region: r.field("to").to_owned(),
            reference: r.field("reference").to_owned(),
            reason: r.field("reason").to_owned(),
        };
        done(
            self.svc.correct_transfer(call(&r.who, req)).await.map(|x| {
                let t = x.into_inner();
                format!(
                    "transfer {} → {} now has reference {}",
                    t.from_region, t.to_region, t.reference
                )
            }),
            round_path(id),
        )
    }
}

fn done(result: Result<String, tonic::Status>, location: String) -> Reply {
    Reply::Done(match result {
        Ok(message) => Outcome {
            ok: true,
            message,
            location,
        },
        Err(s) => Outcome {
            ok: false,
            message: status_text(&s),
            location,
        },
    })
}

fn finished(r: &proto::Round) -> bool {
    r.state == state::ABORTED || (r.state == state::SETTLED && r.missing.is_empty())
}

/// Reported, confirmed and cleared participants of a round.
fn progress(r: &proto::Round, n: usize) -> (usize, usize, usize) {
    let reported = match r.state.as_str() {
        state::OPEN | state::COLLECTING => n.saturating_sub(r.missing.len()),
        state::ABORTED => 0,
        _ => n,
    };
    (reported, r.confirmed.len(), r.cleared.len())
}

fn tick(b: bool) -> Markup {
    html! { @if b { span.good { "✓" } } @else { span.muted { "—" } } }
}

fn claim_links(round: &str, ids: &[String]) -> Markup {
    html! {
        @for c in ids {
            a.claim href={(round_path(round)) "/claim?claim_id=" (urlenc(c))} { code { (c) } } " "
        }
    }
}

fn net_chart(r: &Req, s: &proto::Statement) -> Markup {
    let rows: Vec<(String, Decimal)> = s
        .nets
        .iter()
        .map(|n| (n.region.clone(), dec(&n.net)))
        .collect();
    page::signed_bars("net-chart", r.t("chart_net"), &rows)
}

fn statement_view(r: &Req, s: &proto::Statement) -> Markup {
    let sum: Decimal = s.nets.iter().map(|n| dec(&n.net)).sum();
    let debtors: Vec<&String> = {
        let mut v: Vec<&String> = s.gross.iter().map(|g| &g.debtor).collect();
        v.sort();
        v.dedup();
        v
    };
    let creditors: Vec<&String> = {
        let mut v: Vec<&String> = s.gross.iter().map(|g| &g.creditor).collect();
        v.sort();
        v.dedup();
        v
    };
    html! {
        p.muted { (r.t("digest")) ": " code { (s.digest) } " · " (r.t("clearing_account")) ": " (s.clearing_account)
            " · " (r.t("netting")) ": " (s.netted_transfers) " / " (s.bilateral_transfers) }
        h2 { (r.t("net_positions")) }
        (net_chart(r, s))
        table id="nets" {
            tr { th { (r.t("participant")) } th.num { (r.t("receivable")) } th.num { (r.t("payable")) } th.num { (r.t("net")) } }
            @for n in &s.nets {
                tr data-region=(n.region) { td { (n.region) } td.num { (n.receivable) } td.num { (n.payable) } td.num { (n.net) } }
            }
            tr { th colspan="3" { (r.t("sum_net")) } th.num id="sum-net" { (money::format(sum)) } }
        }
        h2 { (r.t("gross")) }
        table id="gross" {
            tr { th { (r.t("debtor")) " \\ " (r.t("creditor")) } @for c in &creditors { th.num { (c) } } }
            @for d in &debtors {
                tr {
                    th { (d) }
                    @for c in &creditors {
                        @let cell = s.gross.iter().find(|g| &g.debtor == *d && &g.creditor == *c);
                        td.num { @if let Some(g) = cell { (g.amount) br; span.muted { (g.count) } } }
                    }
                }
            }
        }
    }
}
