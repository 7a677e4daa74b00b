//! The treatment node's side: what a hospital's system does at its local node. For a
//! patient insured elsewhere the node applies the home region's policy (cached by
//! version) to the home node's accumulators, records its intent durably, commits the
//! claim at the home node, and only then records the settlement and answers ("write
//! last, read first": an intent whose outcome is unknown is resolved by asking the home
//! node for the claim's status). Same-city visits take the same API and commit locally in
//! one transaction.

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, NaiveDate, Utc};
use prost::Message;
use rusqlite::Connection;
use tonic::Code;
use yidi_common::{
    engine::{self, Accumulators, FilingCtx, Line, PersonCtx, Quote, VisitCtx},
    idnum::IdNumber,
    money::{self, Sign},
    period::{self, Period},
    policy::{OfflineMode, Policy},
    proto,
    region::RegionCode,
    types::{AgreementStatus, FilingType, HospitalLevel, InsuranceType, PersonType, VisitKind},
};

use super::{classified_line, engine_line, home, split_fen, wire_date};
use crate::{
    Error, Result,
    context::{InFlightGuard, NodeState},
    eligibility_cache::{HOME_ANSWERED_WITHIN, PRESETTLE_REUSE, SETTLE_REUSE},
    idempotency::{self, RequestKey, payload_hash},
    policy_cache::PolicyCache,
    store::{
        catalogue,
        institutions::{self, InstitutionRec},
        ledger::{self, Side},
        outbox, persons, policies, sequences,
        settlements::{self, SettlementRec},
        visits::{self, LineRec, VisitRec},
    },
};

/// Attempts at committing a claim when the home node reports a concurrent change.
const COMMIT_ATTEMPTS: usize = 6;
/// The background recovery looks at intents at least this old: younger ones are nearly
/// always a call still running (those are known exactly, see [`InFlight`]), and a repeat
/// of the hospital's request resolves its own intent at once anyway.
pub const RECOVERY_MIN_AGE: Duration = Duration::from_secs(5);

/// Idempotency scope of an institution's requests.
#[must_use]
pub fn scope(institution: &str) -> String {
    format!("inst:{institution}")
}

/// Why a call to a home node did not produce an answer.
enum PeerFail {
    /// No answer: the home node is down, unreachable or too slow. The outcome of a
    /// state-changing call is unknown.
    Unreachable(String),
    /// The home node answered with an error.
    Refused(Error),
}

impl From<Error> for PeerFail {
    fn from(e: Error) -> Self {
        PeerFail::Refused(e)
    }
}

fn classify(home: &str, s: &tonic::Status) -> PeerFail {
    let msg = format!("home region {home}: {}", s.message());
    if s.metadata().get(crate::clock::CLOCK_REFUSED).is_some() {
        // Refused for the clocks of the two nodes, not for anything of the claim:
        // nothing was done, no hospital can act on it, and it passes once the agency
        // has fixed the clock. Not unreachable either: the home node is there, so
        // nothing may be settled offline.
        return PeerFail::Refused(Error::Unavailable(format!(
            "{msg} — the agency must fix the clock; retry later"
        )));
    }
    match s.code() {
        Code::Unavailable
        | Code::DeadlineExceeded
        | Code::Cancelled
        | Code::Unknown
        | Code::ResourceExhausted => PeerFail::Unreachable(msg),
        Code::InvalidArgument | Code::OutOfRange => PeerFail::Refused(Error::invalid("claim", msg)),
        Code::NotFound => PeerFail::Refused(Error::NotFound(msg)),
        Code::AlreadyExists => PeerFail::Refused(Error::AlreadyExists(msg)),
        Code::Aborted => PeerFail::Refused(Error::Aborted(msg)),
        Code::PermissionDenied | Code::Unauthenticated => {
            PeerFail::Refused(Error::PermissionDenied(msg))
        }
        Code::FailedPrecondition => PeerFail::Refused(Error::FailedPrecondition(msg)),
        _ => PeerFail::Refused(Error::Internal(msg)),
    }
}

/// Whether a failed call never left this node: tonic wraps every failure to open the
/// connection (refused, connect timeout, TLS handshake) in [`tonic::ConnectError`], and
/// sends a request only over an open connection. Any other failure may have reached
/// the home node.
fn never_sent(s: &tonic::Status) -> bool {
    let mut source = std::error::Error::source(s);
    while let Some(e) = source {
        if e.is::<tonic::ConnectError>() {
            return true;
        }
        source = e.source();
    }
    false
}

fn fail_to_error(f: PeerFail) -> Error {
    match f {
        PeerFail::Unreachable(m) => Error::Unavailable(m),
        PeerFail::Refused(e) => e,
    }
}

// ------------------------------------------------------------------ lookups

/// The institution, which must be designated and in agreement on `today`.
pub fn check_institution(
    conn: &Connection,
    code: &str,
    today: chrono::NaiveDate,
) -> Result<InstitutionRec> {
    let inst = institutions::get(conn, code)?.ok_or_else(|| {
        Error::PermissionDenied(format!(
            "institution {} is not registered at this node",
            yidi_common::error::quoted(code)
        ))
    })?;
    if inst.agreement_status != AgreementStatus::Active {
        return Err(Error::FailedPrecondition(format!(
            "institution {code} has a {} agreement; it cannot settle until the agreement is active",
            inst.agreement_status
        )));
    }
    if today < inst.agreement_from || inst.agreement_to.is_some_and(|to| today > to) {
        return Err(Error::FailedPrecondition(format!(
            "institution {code}'s agreement does not cover {today}"
        )));
    }
    Ok(inst)
}

/// Refuses a request without an institution code before anything is looked up.
fn institution_given(code: &str) -> Result<()> {
    if code.is_empty() {
        return Err(Error::invalid("institution_code", "missing"));
    }
    Ok(())
}

async fn institution(st: &NodeState, code: &str) -> Result<InstitutionRec> {
    institution_given(code)?;
    let code = code.to_owned();
    st.store
        .read(move |conn| check_institution(conn, &code, period::today()))
        .await
}

/// The home node's eligibility answer for a person (local or over the network).
async fn eligibility(
    st: &NodeState,
    home: &str,
    req: proto::CheckEligibilityRequest,
) -> Result<proto::EligibilityResponse, PeerFail> {
    if home == st.region.as_str() {
        let cache = Arc::clone(&st.policies);
        let region = st.region;
        return st
            .store
            .read(move |conn| home::eligibility(conn, &cache, region, region.as_str(), &req))
            .await
            .map_err(PeerFail::Refused);
    }
    let peer = st
        .peers
        .get(home)
        .map_err(|e| PeerFail::Unreachable(e.to_string()))?;
    peer.client()
        .check_eligibility(req)
        .await
        .map(tonic::Response::into_inner)
        .map_err(|s| classify(home, &s))
}

/// The home node's eligibility answer for PreSettle: from the cache when fresh.
async fn eligibility_for_presettle(
    st: &NodeState,
    home: &str,
    req: proto::CheckEligibilityRequest,
) -> Result<proto::EligibilityResponse, PeerFail> {
    if home == st.region.as_str() {
        // Our own store: as cheap as the cache, and never stale.
        return eligibility(st, home, req).await;
    }
    let key = req.encode_to_vec();
    if let Some(e) = st
        .eligibility_cache
        .get(&req.id_number, &key, PRESETTLE_REUSE)
    {
        return Ok(e);
    }
    let id_number = req.id_number.clone();
    let answer = eligibility(st, home, req).await?;
    st.eligibility_cache.put(&id_number, key, &answer);
    Ok(answer)
}

/// An eligibility answer a Settle may price its first attempt with instead of asking
/// the home node: the one its PreSettle got within [`SETTLE_REUSE`], else the one kept
/// when the visit was opened. Only answers that found the person eligible (a refusal
/// is always asked afresh) and not older than a claim of theirs committed from here,
/// and only while the home node has answered a call within [`HOME_ANSWERED_WITHIN`].
/// The home node re-verifies everything in CommitClaim and refuses a stale answer (see
/// `eligibility_cache`); the Settle then reprices with a fresh one.
fn reusable_eligibility(
    st: &NodeState,
    bill: &Bill,
    settle_day: NaiveDate,
) -> Option<proto::EligibilityResponse> {
    // The eligibility call is also what finds a home node gone: asked first, its
    // failure leaves nothing in doubt and the offline rule applies. A CommitClaim
    // that hangs leaves the claim in doubt instead, so it goes first only to a home
    // node known to be answering.
    if !st
        .peers
        .get(&bill.visit.home_region)
        .is_ok_and(|p| p.answered_within(HOME_ANSWERED_WITHIN))
    {
        return None;
    }
    let req = eligibility_request(&bill.visit, st.region, settle_day).ok()?;
    st.eligibility_cache
        .get(&req.id_number, &req.encode_to_vec(), SETTLE_REUSE)
        .or_else(|| proto::EligibilityResponse::decode(bill.visit.home_snapshot.as_slice()).ok())
        .filter(|e| {
            e.eligible
                && e.accumulators
                    .as_ref()
                    .is_some_and(|a| !st.eligibility_cache.is_stale(&req.id_number, a))
        })
}

/// A home region's policy version: cached, or fetched once from the home node.
async fn home_policy(
    st: &NodeState,
    home: &str,
    it: InsuranceType,
    version: u32,
) -> Result<Arc<Policy>, PeerFail> {
    if let Some(p) = st.policies.get(home, it, version) {
        return Ok(p);
    }
    if home == st.region.as_str() {
        return Err(PeerFail::Refused(Error::Internal(format!(
            "own policy {it} v{version} not cached"
        ))));
    }
    let peer = st
        .peers
        .get(home)
        .map_err(|e| PeerFail::Unreachable(e.to_string()))?;
    let pv = peer
        .client()
        .get_policy(proto::PeerGetPolicyRequest {
            insurance_type: it.to_proto(),
            on_date: String::new(),
            version,
        })
        .await
        .map_err(|s| classify(home, &s))?
        .into_inner();
    let policy = st
        .policies
        .insert_json(home, it, pv.version, &pv.policy_json)?;
    // Kept durably so that after a restart the node can still settle provisionally
    // under this version while the home node is unreachable. A failure to keep it costs
    // only that: this settlement goes on with the policy.
    let (region, json) = (home.to_owned(), pv.policy_json);
    if let Err(e) = st
        .store
        .write(move |conn| {
            policies::keep_peer_policy(conn, &region, it, pv.version, &json, &period::now_rfc3339())
        })
        .await
    {
        tracing::warn!(%home, %it, version = pv.version, error = %e, "could not keep the fetched home policy");
    }
    Ok(policy)
}

fn eligibility_request(
    visit: &VisitRec,
    treatment: RegionCode,
    settle_day: NaiveDate,
) -> Result<proto::CheckEligibilityRequest> {
    Ok(proto::CheckEligibilityRequest {
        id_number: visit.id_number.clone(),
        institution_code: visit.institution_code.clone(),
        level: HospitalLevel::parse(&visit.level, "level")?.to_proto(),
        visit_kind: VisitKind::parse(&visit.visit_kind, "visit_kind")?.to_proto(),
        visit_date: visit.visit_date.clone(),
        treatment_region: treatment.to_string(),
        settle_date: settle_day.to_string(),
    })
}

// ------------------------------------------------------------------ identify

/// HospitalService.Identify.
pub async fn identify(
    st: &NodeState,
    req: proto::IdentifyRequest,
) -> Result<proto::IdentifyResponse> {
    let inst = institution(st, &req.institution_code).await?;
    let kind = if req.visit_kind == 0 {
        VisitKind::Outpatient
    } else {
        VisitKind::from_proto(req.visit_kind, "visit_kind")?
    };
    let found = if !req.card_no.is_empty() {
        let card = yidi_common::card::parse(&req.card_no, "card_no")?;
        let region = RegionCode::parse_city(&req.card_region, "card_region")?;
        lookup(
            st,
            region,
            proto::LookupPersonRequest {
                card_no: card,
                id_number_hash: String::new(),
            },
        )
        .await?
    } else if !req.id_number.is_empty() {
        let id = IdNumber::parse(&req.id_number, "id_number")?;
        lookup_everywhere(st, &id).await?
    } else {
        return Err(Error::invalid(
            "id_number",
            "give card_no with card_region, or id_number",
        ));
    };
    let person = found
        .ok_or_else(|| Error::NotFound("no region of the federation insures this person".into()))?;
    let elig = eligibility(
        st,
        &person.home_region,
        proto::CheckEligibilityRequest {
            settle_date: String::new(),
            id_number: person.id_number.clone(),
            institution_code: inst.code.clone(),
            level: inst.level.to_proto(),
            visit_kind: kind.to_proto(),
            visit_date: period::today().to_string(),
            treatment_region: st.region.to_string(),
        },
    )
    .await
    .map_err(fail_to_error)?;
    Ok(proto::IdentifyResponse {
        id_number: person.id_number,
        name: person.name,
        home_region: person.home_region,
        insurance_type: person.insurance_type,
        person_type: person.person_type,
        status: person.status,
        filing_id: elig
            .filing
            .as_ref()
            .map(|f| f.filing_id.clone())
            .unwrap_or_default(),
        filing_type: elig.applied_filing_type,
        eligible: elig.eligible,
        ineligible_reason: elig.reason,
        accumulators: elig.accumulators,
        account_balance: elig.account_balance,
    })
}

/// Answers LookupPerson from this node's own persons.
pub fn lookup_local(
    conn: &Connection,
    region: RegionCode,
    req: &proto::LookupPersonRequest,
) -> Result<proto::LookupPersonResponse> {
    let p = if !req.card_no.is_empty() {
        persons::get_by_card(conn, &req.card_no)?
    } else {
        persons::get_by_lookup_hash(conn, &req.id_number_hash)?
    };
    Ok(match p {
        None => proto::LookupPersonResponse::default(),
        Some(p) => proto::LookupPersonResponse {
            found: true,
            id_number: p.rec.id_number,
            name: p.rec.name,
            home_region: region.to_string(),
            insurance_type: p.rec.insurance_type.to_proto(),
            person_type: p.rec.person_type.to_proto(),
            status: p.rec.status.to_proto(),
            civil_servant: p.rec.civil_servant,
        },
    })
}

async fn lookup(
    st: &NodeState,
    region: RegionCode,
    req: proto::LookupPersonRequest,
) -> Result<Option<proto::LookupPersonResponse>> {
    let resp = if region == st.region {
        let own = st.region;
        st.store
            .read(move |conn| lookup_local(conn, own, &req))
            .await?
    } else {
        let peer = st.peers.get(region.as_str())?;
        peer.client()
            .lookup_person(req)
            .await
            .map_err(|s| fail_to_error(classify(region.as_str(), &s)))?
            .into_inner()
    };
    Ok(resp.found.then_some(resp))
}

/// With only an ID number: this node first, then every peer at once with the number's
/// hash (the number itself never travels; the coordinator keeps no person index).
async fn lookup_everywhere(
    st: &NodeState,
    id: &IdNumber,
) -> Result<Option<proto::LookupPersonResponse>> {
    let req = proto::LookupPersonRequest {
        card_no: String::new(),
        id_number_hash: id.lookup_hash(),
    };
    if let Some(p) = lookup(st, st.region, req.clone()).await? {
        return Ok(Some(p));
    }
    let asks = st.peers.all().into_iter().map(|peer| {
        let req = req.clone();
        async move {
            peer.client()
                .lookup_person(req)
                .await
                .map(tonic::Response::into_inner)
        }
    });
    let answers = futures::future::join_all(asks).await;
    let mut unreachable = 0;
    for a in answers {
        match a {
            Ok(r) if r.found => return Ok(Some(r)),
            Ok(_) => {}
            Err(_) => unreachable += 1,
        }
    }
    if unreachable > 0 {
        return Err(Error::Unavailable(format!(
            "person not found here, and {unreachable} region(s) did not answer; retry, or identify by card with its issuing region"
        )));
    }
    Ok(None)
}

// ------------------------------------------------------------------ visits and fees

fn visit_to_proto(v: &VisitRec) -> proto::Visit {
    proto::Visit {
        visit_id: v.visit_id.clone(),
        institution_code: v.institution_code.clone(),
        id_number: v.id_number.clone(),
        home_region: v.home_region.clone(),
        visit_kind: VisitKind::parse(&v.visit_kind, "visit_kind")
            .map(VisitKind::to_proto)
            .unwrap_or_default(),
        external_visit_no: v.external_visit_no.clone(),
        state: v.state.clone(),
        opened_at: v.opened_at.clone(),
        closed_at: v.closed_at.clone().unwrap_or_default(),
    }
}

/// An OpenVisit request checked against its institution.
struct Opening {
    inst: InstitutionRec,
    id: IdNumber,
    home: RegionCode,
    kind: VisitKind,
    ext: String,
    opened: DateTime<Utc>,
    visit_date: NaiveDate,
}

fn check_opening(
    inst: InstitutionRec,
    req: &proto::OpenVisitRequest,
    clock: &crate::clock::Clock,
) -> Result<Opening> {
    let id = IdNumber::parse(&req.id_number, "id_number")?;
    let home = RegionCode::parse_city(&req.home_region, "home_region")?;
    let kind = VisitKind::from_proto(req.visit_kind, "visit_kind")?;
    if (kind == VisitKind::Pharmacy) != (inst.kind == yidi_common::types::InstitutionKind::Pharmacy)
    {
        return Err(Error::invalid(
            "visit_kind",
            format!(
                "{kind} visits happen at pharmacies only; {} is a {}",
                inst.code, inst.kind
            ),
        ));
    }
    let ext = req.external_visit_no.trim().to_owned();
    if ext.is_empty() || ext.chars().count() > 64 {
        return Err(Error::invalid(
            "external_visit_no",
            "must be 1–64 characters (the institution's own visit number)",
        ));
    }
    let opened: DateTime<Utc> = if req.admitted_at.is_empty() {
        clock.now()
    } else {
        let at = period::parse_ts(&req.admitted_at, "admitted_at")?;
        clock.not_future(at, "admitted_at")?;
        at
    };
    let visit_date = opened.with_timezone(&period::cst()).date_naive();
    Ok(Opening {
        inst,
        id,
        home,
        kind,
        ext,
        opened,
        visit_date,
    })
}

impl Opening {
    fn eligibility_request(&self, treatment: RegionCode) -> proto::CheckEligibilityRequest {
        proto::CheckEligibilityRequest {
            settle_date: String::new(),
            id_number: self.id.as_str().to_owned(),
            institution_code: self.inst.code.clone(),
            level: self.inst.level.to_proto(),
            visit_kind: self.kind.to_proto(),
            visit_date: self.visit_date.to_string(),
            treatment_region: treatment.to_string(),
        }
    }
}

/// HospitalService.OpenVisit: registration or admission. The home node is asked for the
/// person's eligibility now, and its answer kept with the visit for offline settlement.
pub async fn open_visit(st: &NodeState, mut req: proto::OpenVisitRequest) -> Result<proto::Visit> {
    let sc = scope(&req.institution_code);
    let payload = payload_hash(&mut req, |r| &mut r.request_id);
    let key = RequestKey::new(&sc, &req.request_id, "OpenVisit", payload)?;
    institution_given(&req.institution_code)?;
    // One trip to the read pool for the institution, a stored answer of the request and,
    // for a patient of this city, the eligibility: this node is their home node.
    let (k, cache, region) = (key.clone(), Arc::clone(&st.policies), st.region);
    let clock = st.clock.clone();
    let diagnosis = req.diagnosis_code.trim().to_owned();
    let (opening, own) = match st
        .store
        .read(move |conn| {
            let inst = check_institution(conn, &req.institution_code, period::today())?;
            let opening = check_opening(inst, &req, &clock)?;
            if let Some(replayed) = idempotency::replay::<proto::Visit>(conn, &k)? {
                return Ok(Err(replayed));
            }
            let own = (opening.home == region).then(|| {
                home::eligibility(
                    conn,
                    &cache,
                    region,
                    region.as_str(),
                    &opening.eligibility_request(region),
                )
            });
            Ok(Ok((opening, own)))
        })
        .await?
    {
        Ok(found) => found,
        Err(replayed) => return Ok(replayed),
    };
    let elig = match own {
        Some(answer) => answer.map_err(PeerFail::Refused),
        None => {
            eligibility(
                st,
                opening.home.as_str(),
                opening.eligibility_request(region),
            )
            .await
        }
    };
    // An unreachable home node does not stop registration; settlement decides later.
    let snapshot = match elig {
        Ok(e) => e.encode_to_vec(),
        Err(PeerFail::Unreachable(m)) => {
            tracing::warn!(home = %opening.home, error = %m, "home node unreachable at visit opening");
            Vec::new()
        }
        Err(PeerFail::Refused(e)) => return Err(e),
    };
    st.store
        .write(move |conn| {
            idempotency::once(conn, &key, |conn| {
                let o = opening;
                let seq = sequences::next(conn, "visit")?;
                let v = VisitRec {
                    visit_id: format!("{region}-V-{seq:08}"),
                    institution_code: o.inst.code,
                    id_number: o.id.as_str().to_owned(),
                    home_region: o.home.to_string(),
                    visit_kind: o.kind.to_string(),
                    level: o.inst.level.to_string(),
                    external_visit_no: o.ext,
                    diagnosis_code: diagnosis,
                    state: "open".into(),
                    opened_at: period::format_ts(o.opened),
                    visit_date: o.visit_date.to_string(),
                    closed_at: None,
                    home_snapshot: snapshot,
                };
                visits::insert(conn, seq, &v)?;
                Ok(visit_to_proto(&v))
            })
        })
        .await
}

/// The visit, which must belong to `institution`.
fn own_visit(conn: &Connection, institution: &str, visit_id: &str) -> Result<VisitRec> {
    let v = visits::get(conn, visit_id)?.ok_or_else(|| {
        Error::NotFound(format!(
            "no visit {} at this node",
            yidi_common::error::quoted(visit_id)
        ))
    })?;
    if v.institution_code != institution {
        return Err(Error::PermissionDenied(format!(
            "visit {visit_id} belongs to another institution"
        )));
    }
    Ok(v)
}

/// HospitalService.CloseVisit: discharge.
pub async fn close_visit(
    st: &NodeState,
    mut req: proto::CloseVisitRequest,
) -> Result<proto::Visit> {
    let sc = scope(&req.institution_code);
    let payload = payload_hash(&mut req, |r| &mut r.request_id);
    let key = RequestKey::new(&sc, &req.request_id, "CloseVisit", payload)?;
    institution_given(&req.institution_code)?;
    let now = st.clock.now();
    let latest = st.clock.clone();
    st.store
        .write(move |conn| {
            check_institution(conn, &req.institution_code, period::today())?;
            let at = if req.discharged_at.is_empty() {
                now
            } else {
                let at = period::parse_ts(&req.discharged_at, "discharged_at")?;
                latest.not_future(at, "discharged_at")?;
                at
            };
            idempotency::once(conn, &key, |conn| {
                let v = own_visit(conn, &req.institution_code, &req.visit_id)?;
                if v.state != "open" {
                    return Err(Error::FailedPrecondition(format!(
                        "visit {} is {}, only an open visit can be closed",
                        v.visit_id, v.state
                    )));
                }
                let ts = period::format_ts(at);
                visits::set_state(conn, &v.visit_id, "closed", Some(&ts))?;
                Ok(visit_to_proto(&own_visit(
                    conn,
                    &req.institution_code,
                    &req.visit_id,
                )?))
            })
        })
        .await
}

fn fees_response(lines: &[LineRec]) -> proto::UploadFeesResponse {
    proto::UploadFeesResponse {
        lines: lines.iter().map(classified_line).collect(),
        total: money::format(money::from_fen(lines.iter().map(|l| l.amount_fen).sum())),
    }
}

fn editable(v: &VisitRec) -> Result<()> {
    if v.state == "settled" {
        return Err(Error::FailedPrecondition(format!(
            "visit {} is settled; cancel the settlement before changing its fees",
            v.visit_id
        )));
    }
    Ok(())
}

/// Validates one uploaded line (everything but the catalogue).
fn check_line(
    i: usize,
    l: &proto::FeeLine,
    visit_date: &str,
    clock: &crate::clock::Clock,
) -> Result<(rust_decimal::Decimal, i64, i64, String)> {
    let f = |name: &str| format!("lines[{i}].{name}");
    if l.line_no.is_empty() || l.line_no.len() > 32 {
        return Err(Error::invalid(f("line_no"), "must be 1–32 characters"));
    }
    let quantity = engine::parse_quantity(&l.quantity, &f("quantity"))?;
    let price = money::parse(&l.unit_price, &f("unit_price"), Sign::NonNegative)?;
    let amount = money::parse(&l.amount, &f("amount"), Sign::NonNegative)?;
    let expected = money::round_fen(quantity * price);
    if (expected - amount).abs() > rust_decimal::Decimal::new(1, 2) {
        return Err(Error::invalid(
            f("amount"),
            format!(
                "{} is not quantity × unit_price ({} × {} = {})",
                money::format(amount),
                quantity,
                money::format(price),
                money::format(expected)
            ),
        ));
    }
    let date = if l.service_date.is_empty() {
        visit_date.to_owned()
    } else {
        let d = wire_date(&l.service_date, &f("service_date"))?;
        clock.not_future_day(d, &f("service_date"))?;
        d.to_string()
    };
    Ok((quantity, money::to_fen(price), money::to_fen(amount), date))
}

/// HospitalService.UploadFees: lines are classified against this node's catalogue.
pub async fn upload_fees(
    st: &NodeState,
    mut req: proto::UploadFeesRequest,
) -> Result<proto::UploadFeesResponse> {
    let sc = scope(&req.institution_code);
    let payload = payload_hash(&mut req, |r| &mut r.request_id);
    let key = RequestKey::new(&sc, &req.request_id, "UploadFees", payload)?;
    institution_given(&req.institution_code)?;
    let region = st.region;
    let clock = st.clock.clone();
    st.store
        .write(move |conn| {
            check_institution(conn, &req.institution_code, period::today())?;
            if req.lines.is_empty() {
                return Err(Error::invalid("lines", "no fee lines"));
            }
            if req.lines.len() > 2000 {
                return Err(Error::invalid("lines", "at most 2000 lines per upload"));
            }
            idempotency::once(conn, &key, |conn| {
                let v = own_visit(conn, &req.institution_code, &req.visit_id)?;
                editable(&v)?;
                let existing = visits::lines(conn, &v.visit_id)?;
                let mut seen = std::collections::HashSet::new();
                let mut new = Vec::new();
                for (i, l) in req.lines.iter().enumerate() {
                    let (quantity, price_fen, amount_fen, date) = check_line(i, l, &v.visit_date, &clock)?;
                    if !seen.insert(l.line_no.clone()) {
                        return Err(Error::invalid(format!("lines[{i}].line_no"), format!("{} appears twice", yidi_common::error::quoted(&l.line_no))));
                    }
                    let d = wire_date(&date, "service_date")?;
                    let item = catalogue::get(conn, &l.item_code)?
                        .filter(|c| c.valid_from <= d && c.valid_to.is_none_or(|to| d <= to))
                        .ok_or_else(|| {
                            Error::invalid(format!("lines[{i}].item_code"), format!("{} is not in the catalogue of {region} on {d}", yidi_common::error::quoted(&l.item_code)))
                        })?;
                    if amount_fen == 0 && !item.free_of_charge {
                        return Err(Error::invalid(
                            format!("lines[{i}].amount"),
                            format!("0.00 for {}: a fee line must charge something; only an item the catalogue marks free of charge may be billed at 0.00", item.code),
                        ));
                    }
                    let rec = LineRec {
                        line_no: l.line_no.clone(),
                        item_code: item.code.clone(),
                        item_name: item.name.clone(),
                        class: item.class.to_string(),
                        first_selfpay_ratio: money::format_ratio(item.first_selfpay_ratio),
                        price_cap_fen: item.price_cap_fen,
                        quantity: quantity.normalize().to_string(),
                        unit_price_fen: price_fen,
                        amount_fen,
                        service_date: date,
                    };
                    match existing.iter().find(|e| e.line_no == rec.line_no) {
                        Some(e) if *e == rec => {}
                        Some(_) => {
                            return Err(Error::AlreadyExists(format!(
                                "line {} of visit {} was already uploaded with other values; undo it first",
                                rec.line_no, v.visit_id
                            )));
                        }
                        None => new.push(rec),
                    }
                }
                for rec in &new {
                    visits::insert_line(conn, &v.visit_id, rec)?;
                }
                Ok(fees_response(&visits::lines(conn, &v.visit_id)?))
            })
        })
        .await
}

/// HospitalService.UndoFees.
pub async fn undo_fees(
    st: &NodeState,
    mut req: proto::UndoFeesRequest,
) -> Result<proto::UploadFeesResponse> {
    let sc = scope(&req.institution_code);
    let payload = payload_hash(&mut req, |r| &mut r.request_id);
    let key = RequestKey::new(&sc, &req.request_id, "UndoFees", payload)?;
    institution_given(&req.institution_code)?;
    st.store
        .write(move |conn| {
            check_institution(conn, &req.institution_code, period::today())?;
            idempotency::once(conn, &key, |conn| {
                let v = own_visit(conn, &req.institution_code, &req.visit_id)?;
                editable(&v)?;
                let lines = visits::lines(conn, &v.visit_id)?;
                for (i, no) in req.line_nos.iter().enumerate() {
                    if !lines.iter().any(|l| &l.line_no == no) {
                        return Err(Error::invalid(
                            format!("line_nos[{i}]"),
                            format!(
                                "visit {} has no line {}",
                                v.visit_id,
                                yidi_common::error::quoted(no)
                            ),
                        ));
                    }
                }
                visits::delete_lines(conn, &v.visit_id, &req.line_nos)?;
                Ok(fees_response(&visits::lines(conn, &v.visit_id)?))
            })
        })
        .await
}

// ------------------------------------------------------------------ quoting

/// Everything the engine needs, gathered for a visit.
struct Bill {
    visit: VisitRec,
    lines: Vec<LineRec>,
    engine_lines: Vec<Line>,
    level: HospitalLevel,
    kind: VisitKind,
}

/// The visit (of `institution`) and its fee lines.
fn read_bill(
    conn: &Connection,
    institution: &str,
    visit_id: &str,
) -> Result<(VisitRec, Vec<LineRec>)> {
    let v = own_visit(conn, institution, visit_id)?;
    let lines = visits::lines(conn, &v.visit_id)?;
    Ok((v, lines))
}

/// The bill of a visit, which must be ready to settle (`for_settle`) or to quote.
fn bill_from(visit: VisitRec, lines: Vec<LineRec>, for_settle: bool) -> Result<Bill> {
    let kind = VisitKind::parse(&visit.visit_kind, "visit_kind")?;
    // A settled visit has nothing left to quote either: its claim is already in the
    // accumulators a pre-settle would use, so the estimate would be wrong.
    if visit.state == "settled" {
        return Err(Error::FailedPrecondition(format!(
            "visit {} is already settled; cancel its settlement (CancelSettlement: yidi hospital cancel SETTLEMENT_ID; a refused one too) before settling it again",
            visit.visit_id
        )));
    }
    if for_settle && kind == VisitKind::Inpatient && visit.state != "closed" {
        return Err(Error::FailedPrecondition(format!(
            "inpatient visit {} must be discharged (CloseVisit) before settlement",
            visit.visit_id
        )));
    }
    if lines.is_empty() {
        return Err(Error::FailedPrecondition(format!(
            "visit {} has no fee lines; upload them first",
            visit.visit_id
        )));
    }
    let engine_lines = lines.iter().map(engine_line).collect::<Result<Vec<_>>>()?;
    Ok(Bill {
        level: HospitalLevel::parse(&visit.level, "level")?,
        kind,
        visit,
        lines,
        engine_lines,
    })
}

/// Refuses to settle a bill dated after this node's today: a visit or fee line recorded
/// with a future date (before such dates were refused at the counter) would be booked
/// into a year and period that have not begun.
fn bill_not_future(bill: &Bill, clock: &crate::clock::Clock) -> Result<()> {
    let latest = clock.latest_day();
    let today = clock.today();
    if wire_date(&bill.visit.visit_date, "visit_date")? > latest {
        return Err(Error::invalid(
            "visit_id",
            format!(
                "visit {} is dated {}, after today ({today}) at this node; it cannot be settled — open the visit again with the right admitted_at",
                bill.visit.visit_id, bill.visit.visit_date
            ),
        ));
    }
    if let Some(l) = bill
        .lines
        .iter()
        .find(|l| wire_date(&l.service_date, "service_date").is_ok_and(|d| d > latest))
    {
        return Err(Error::invalid(
            "visit_id",
            format!(
                "line {} of visit {} has service_date {}, after today ({today}) at this node; undo it and upload it with the right date",
                l.line_no, bill.visit.visit_id, l.service_date
            ),
        ));
    }
    Ok(())
}

impl Bill {
    fn claim_visit(&self, use_account: bool) -> proto::ClaimVisit {
        proto::ClaimVisit {
            visit_id: self.visit.visit_id.clone(),
            institution_code: self.visit.institution_code.clone(),
            level: self.level.to_proto(),
            visit_kind: self.kind.to_proto(),
            visit_date: self.visit.visit_date.clone(),
            lines: self.lines.iter().map(classified_line).collect(),
            use_account,
        }
    }

    fn visit_ctx(
        &self,
        treatment: RegionCode,
        filing: Option<FilingCtx>,
        use_account: bool,
    ) -> Result<VisitCtx> {
        Ok(VisitCtx {
            visit_kind: self.kind,
            level: self.level,
            institution_code: self.visit.institution_code.clone(),
            visit_date: wire_date(&self.visit.visit_date, "visit_date")?,
            treatment_region: treatment.to_string(),
            home_region: self.visit.home_region.clone(),
            filing,
            use_account,
        })
    }
}

/// The person as the home node described them.
fn person_from(
    e: &proto::EligibilityResponse,
) -> Result<(PersonCtx, Accumulators, Option<FilingCtx>)> {
    let person = PersonCtx {
        insurance_type: InsuranceType::from_proto(e.insurance_type, "insurance_type")?,
        person_type: PersonType::from_proto(e.person_type, "person_type")?,
        civil_servant: e.civil_servant,
        account_balance: money::parse(&e.account_balance, "account_balance", Sign::NonNegative)?,
    };
    let acc = Accumulators::from_proto(
        e.accumulators
            .as_ref()
            .ok_or_else(|| Error::Internal("eligibility without accumulators".into()))?,
    )?;
    let filing = match &e.filing {
        Some(f) => FilingCtx::from_proto(f)?,
        None => None,
    };
    Ok((person, acc, filing))
}

/// A quote under the home policy for the current eligibility.
struct Priced {
    quote: Quote,
    elig: proto::EligibilityResponse,
}

async fn price(
    st: &NodeState,
    bill: &Bill,
    use_account: bool,
    settle_day: NaiveDate,
) -> Result<Priced, PeerFail> {
    price_with(st, bill, use_account, false, settle_day).await
}

/// Prices a bill; `presettle` lets the eligibility answer come from PreSettle's cache.
async fn price_with(
    st: &NodeState,
    bill: &Bill,
    use_account: bool,
    presettle: bool,
    settle_day: NaiveDate,
) -> Result<Priced, PeerFail> {
    let req = eligibility_request(&bill.visit, st.region, settle_day)?;
    let elig = if presettle {
        eligibility_for_presettle(st, &bill.visit.home_region, req).await?
    } else {
        eligibility(st, &bill.visit.home_region, req).await?
    };
    price_from(st, bill, use_account, elig).await
}

/// Prices a bill with the home node's eligibility answer.
async fn price_from(
    st: &NodeState,
    bill: &Bill,
    use_account: bool,
    elig: proto::EligibilityResponse,
) -> Result<Priced, PeerFail> {
    if !elig.eligible {
        return Err(PeerFail::Refused(Error::FailedPrecondition(format!(
            "no direct settlement: {}",
            elig.reason
        ))));
    }
    let (person, acc, filing) = person_from(&elig)?;
    let policy = home_policy(
        st,
        &bill.visit.home_region,
        person.insurance_type,
        elig.policy_version,
    )
    .await?;
    let ctx = bill.visit_ctx(st.region, filing, use_account)?;
    let quote =
        engine::quote(&policy, &person, &acc, &ctx, &bill.engine_lines).map_err(Error::from)?;
    Ok(Priced { quote, elig })
}

fn settlement_to_proto(s: &SettlementRec, treatment: RegionCode) -> proto::Settlement {
    proto::Settlement {
        settlement_id: s.settlement_id.clone(),
        visit_id: s.visit_id.clone(),
        institution_code: s.institution_code.clone(),
        id_number: s.id_number.clone(),
        home_region: s.home_region.clone(),
        treatment_region: treatment.to_string(),
        visit_kind: VisitKind::parse(&s.visit_kind, "visit_kind")
            .map(VisitKind::to_proto)
            .unwrap_or_default(),
        split: Some(s.split.clone()),
        state: s.state.clone(),
        settled_at: s.settled_at.clone(),
        period: s.period.clone(),
        policy_version: s.policy_version,
        reverses: s.reverses.clone().unwrap_or_default(),
        note: s.note.clone(),
    }
}

/// HospitalService.PreSettle: the split as it would be now; nothing is recorded.
pub async fn pre_settle(st: &NodeState, req: proto::SettleRequest) -> Result<proto::Settlement> {
    institution_given(&req.institution_code)?;
    // One trip to the read pool for the institution and the bill — and, for a patient
    // of this city, for the eligibility too: this node is their home node.
    let (inst, vid) = (req.institution_code.clone(), req.visit_id.clone());
    let (cache, region, today) = (Arc::clone(&st.policies), st.region, period::today());
    let (visit, lines, own) = st
        .store
        .read(move |conn| {
            check_institution(conn, &inst, today)?;
            let (visit, lines) = read_bill(conn, &inst, &vid)?;
            // Its refusal counts only after the bill's own checks: kept for later.
            let own = (visit.home_region == region.as_str()).then(|| {
                let req = eligibility_request(&visit, region, today)?;
                home::eligibility(conn, &cache, region, region.as_str(), &req)
            });
            Ok((visit, lines, own))
        })
        .await?;
    let bill = bill_from(visit, lines, false)?;
    let priced = match own {
        Some(elig) => price_from(st, &bill, req.use_account, elig?).await,
        None => price_with(st, &bill, req.use_account, true, today).await,
    }
    .map_err(fail_to_error)?;
    let split = priced.quote.to_proto_split();
    Ok(proto::Settlement {
        visit_id: bill.visit.visit_id.clone(),
        institution_code: bill.visit.institution_code.clone(),
        id_number: bill.visit.id_number.clone(),
        home_region: bill.visit.home_region.clone(),
        treatment_region: st.region.to_string(),
        visit_kind: bill.kind.to_proto(),
        split: Some(split),
        state: "presettled".into(),
        policy_version: priced.elig.policy_version,
        ..Default::default()
    })
}

// ------------------------------------------------------------------ settle

/// The home policy version and accumulator version a split was computed with.
#[derive(Debug, Clone, Copy)]
struct Basis {
    policy_version: u32,
    acc_version: u64,
}

fn new_record(
    bill: &Bill,
    key: &RequestKey,
    split: proto::Split,
    state: &str,
    basis: Basis,
    now: DateTime<Utc>,
    note: String,
) -> Result<SettlementRec> {
    let Basis {
        policy_version,
        acc_version,
    } = basis;
    let (medfee, fund, acct, cash) = split_fen(&split)?;
    Ok(SettlementRec {
        settlement_id: String::new(),
        visit_id: bill.visit.visit_id.clone(),
        institution_code: bill.visit.institution_code.clone(),
        id_number: bill.visit.id_number.clone(),
        home_region: bill.visit.home_region.clone(),
        visit_kind: bill.kind.to_string(),
        state: state.into(),
        reverses: None,
        request_scope: key.scope.clone(),
        request_id: key.request_id.clone(),
        payload_hash: key.payload_hash.clone(),
        split,
        medfee_fen: medfee,
        fund_fen: fund,
        acct_fen: acct,
        cash_fen: cash,
        policy_version,
        acc_version,
        settled_at: period::format_ts(now),
        settle_date: now.with_timezone(&period::cst()).date_naive().to_string(),
        period: Period::of(now).to_string(),
        note,
    })
}

/// Inserts a record with a fresh id; refuses if the visit already has a live settlement.
fn insert_record(
    conn: &Connection,
    region: RegionCode,
    mut rec: SettlementRec,
) -> Result<SettlementRec> {
    if rec.reverses.is_none()
        && let Some(live) = settlements::live_for_visit(conn, &rec.visit_id)?
        && live.state != "cancelled"
    {
        return Err(Error::FailedPrecondition(format!(
            "visit {} already has settlement {} ({}); cancel it before settling again",
            rec.visit_id, live.settlement_id, live.state
        )));
    }
    let seq = sequences::next(conn, "settlement")?;
    rec.settlement_id = format!("{region}-S-{seq:010}");
    settlements::insert(conn, seq, &rec)?;
    Ok(rec)
}

/// Finishes a settlement the home node committed: the authoritative split, the ledger's
/// receivable, the visit, and the request's answer — one transaction.
pub(crate) fn finish_committed(
    conn: &Connection,
    region: RegionCode,
    mut rec: SettlementRec,
    resp: &proto::CommitClaimResponse,
    key: Option<&RequestKey>,
) -> Result<proto::Settlement> {
    let split = resp.split.clone().unwrap_or_else(|| rec.split.clone());
    let provisional_fund = rec.fund_fen;
    let (medfee, fund, acct, cash) = split_fen(&split)?;
    if rec.state == "provisional" && fund != provisional_fund {
        rec.note = format!(
            "provisional fund share {} corrected by the home node to {} (difference {})",
            money::format(money::from_fen(provisional_fund)),
            money::format(money::from_fen(fund)),
            money::format(money::from_fen(provisional_fund - fund))
        );
    }
    rec.state = "settled".into();
    rec.split = split;
    if resp.policy_version != 0 {
        rec.policy_version = resp.policy_version;
    }
    (rec.medfee_fen, rec.fund_fen, rec.acct_fen, rec.cash_fen) = (medfee, fund, acct, cash);
    settlements::update_outcome(conn, &rec)?;
    if rec.home_region != region.as_str() {
        // A provisional claim's entry was written when it was settled: the home node's
        // amount replaces the provisional one.
        ledger::record_confirmed(
            conn,
            &ledger::Entry {
                entry_id: &rec.settlement_id,
                side: Side::Receivable,
                counterparty: &rec.home_region,
                period: &resp.period,
                kind: "claim",
                claim_id: &rec.settlement_id,
                amount_fen: fund,
            },
            &period::now_rfc3339(),
        )?;
    }
    visits::set_state(conn, &rec.visit_id, "settled", None)?;
    let answer = settlement_to_proto(&rec, region);
    if let Some(key) = key {
        idempotency::store(conn, key, &answer)?;
    }
    Ok(answer)
}

/// HospitalService.Settle.
pub async fn settle(st: &NodeState, mut req: proto::SettleRequest) -> Result<proto::Settlement> {
    let sc = scope(&req.institution_code);
    let payload = payload_hash(&mut req, |r| &mut r.request_id);
    let key = RequestKey::new(&sc, &req.request_id, "Settle", payload)?;
    institution_given(&req.institution_code)?;
    // One moment for the whole settlement: its claim's settled_at, and the day the home
    // node judges filings on, in every attempt.
    let now = st.clock.now();
    let (bill_out, bill_in) = tokio::sync::oneshot::channel();
    let opening = open_settlement(st, &req, &key, now, bill_out);
    // A cross-region bill is handed out as soon as the writer has read it and recorded
    // the intent, before the commit: pricing runs while the intent is made durable.
    // Everything else (a repeat's answer, a pending intent, a same-city settlement, an
    // error) comes with the job's outcome.
    let Ok(bill) = bill_in.await else {
        return match opening.await? {
            Opened::Answered(answer) => Ok(answer),
            Opened::Pending(intent) => {
                if intent.payload_hash != key.payload_hash {
                    return Err(Error::AlreadyExists(format!(
                        "request_id {} is in use by a different settlement request",
                        yidi_common::error::quoted(&req.request_id)
                    )));
                }
                // Its Settle call is still running, or another resolver is at it.
                let Some(guard) = st.settling.try_enter(&intent.settlement_id) else {
                    return Err(Error::Aborted(
                        "this settlement request is still in progress; retry shortly".into(),
                    ));
                };
                match resolve_claimed(st, intent.clone()).await? {
                    Resolved::Settled(answer) => Ok(*answer),
                    Resolved::Failed => Err(Error::Aborted(
                        "the earlier attempt of this request was not settled (the home node never committed it); repeat the request to settle afresh".into(),
                    )),
                    Resolved::Pending(why) => Err(Error::Unavailable(format!(
                        "the outcome of this settlement is not known yet ({why}); repeat this request (same request_id) shortly"
                    ))),
                    Resolved::Unreachable(why) => {
                        let bill = pending_bill(st, &intent).await?;
                        let out = settle_offline(
                            st,
                            &bill,
                            &key,
                            req.use_account,
                            why,
                            None,
                            Some(intent),
                        )
                        .await;
                        drop(guard);
                        out
                    }
                }
            }
            Opened::Intent(..) => Err(Error::Internal(
                "a settlement intent was recorded without its bill".into(),
            )),
        };
    };
    let person = bill.visit.id_number.clone();
    let out = settle_remote(st, bill, key, req.use_account, now, opening).await;
    // The person's accumulators changed (or may have): PreSettle asks afresh.
    st.eligibility_cache.forget(&person);
    out
}

/// What the opening of a Settle found, in the writer's transaction.
enum Opened {
    /// A repeat of a finished request (its stored answer), or a same-city settlement
    /// done in the same transaction.
    Answered(proto::Settlement),
    /// An intent of this request whose outcome is not known yet.
    Pending(SettlementRec),
    /// A new cross-region intent, claimed by this call (its bill went out apart).
    Intent(SettlementRec, InFlightGuard),
}

/// Opens a Settle in one writer job — a single trip to the store instead of a read
/// followed by a write that had to check everything again: the institution, a stored
/// answer of the request, a pending intent of it, and, for a new request, the bill
/// (whose errors count only then). A same-city bill is settled in the same job; a
/// cross-region one gets its intent, claimed for this call in the same transaction (so
/// no resolver sees it pending without seeing that its call is running), and is sent on
/// `bill_out` at once. The claim is held by the guard returned with the intent: should
/// the commit fail, the guard is dropped with the outcome and nothing is recorded;
/// should this call be dropped after the job ran (the hospital went away), the guard is
/// dropped with the outcome too and the pending intent is left to recovery. A job whose
/// caller is already gone does nothing.
fn open_settlement(
    st: &NodeState,
    req: &proto::SettleRequest,
    key: &RequestKey,
    now: DateTime<Utc>,
    bill_out: tokio::sync::oneshot::Sender<Bill>,
) -> impl std::future::Future<Output = Result<Opened>> + Send + 'static {
    let (k, region, use_account) = (key.clone(), st.region, req.use_account);
    let (inst, vid) = (req.institution_code.clone(), req.visit_id.clone());
    let cache = Arc::clone(&st.policies);
    let settling = Arc::clone(&st.settling);
    let clock = st.clock.clone();
    // The caller may have gone away (its deadline passed) while the job queued: then
    // nothing is settled or recorded for it — a pending intent would block the visit
    // until recovery.
    let gone = || Error::Unavailable("the Settle call ended before it was processed".into());
    st.store.submit(move |conn| {
        if bill_out.is_closed() {
            return Err(gone());
        }
        check_institution(conn, &inst, period::today())?;
        if let Some(answer) = idempotency::replay::<proto::Settlement>(conn, &k)? {
            return Ok(Opened::Answered(answer));
        }
        if let Some(intent) =
            settlements::by_request(conn, &k.scope, &k.request_id)?.filter(|i| i.state == "pending")
        {
            return Ok(Opened::Pending(intent));
        }
        let (visit, lines) = read_bill(conn, &inst, &vid)?;
        let bill = bill_from(visit, lines, true)?;
        bill_not_future(&bill, &clock)?;
        if bill.visit.home_region == region.as_str() {
            return settle_local(conn, &cache, region, &bill, &k, use_account, now)
                .map(Opened::Answered);
        }
        // The intent's split is a placeholder until the home node has priced the claim
        // — the patient paying everything, nothing from the fund — and the outcome's
        // write (or a retry's) records the real one. Recovery needs only its claim id.
        let placeholder = new_record(
            &bill,
            &k,
            full_self_pay(&bill.lines, "awaiting the home node's eligibility"),
            "pending",
            Basis {
                policy_version: 0,
                acc_version: 0,
            },
            now,
            String::new(),
        )?;
        if bill_out.is_closed() {
            return Err(gone());
        }
        let rec = insert_record(conn, region, placeholder)?;
        let guard = settling.try_enter(&rec.settlement_id).ok_or_else(|| {
            Error::Internal(format!(
                "new intent {} is already claimed",
                rec.settlement_id
            ))
        })?;
        // The caller may price meanwhile, but sends nothing to the home node before
        // this job's durable outcome (the savepoint's release or the group's commit can
        // still fail it).
        let _ = bill_out.send(bill);
        Ok(Opened::Intent(rec, guard))
    })
}

/// A same-city settlement: this node is also the home node; everything in the opening's
/// transaction, no network.
fn settle_local(
    conn: &Connection,
    cache: &PolicyCache,
    region: RegionCode,
    bill: &Bill,
    key: &RequestKey,
    use_account: bool,
    now: DateTime<Utc>,
) -> Result<proto::Settlement> {
    let date = wire_date(&bill.visit.visit_date, "visit_date")?;
    // The day of the settlement's own moment (its settled_at), which the commit below
    // judges the filings on too — not the day the job happens to run.
    let settle_day = now.with_timezone(&period::cst()).date_naive();
    let v = home::view(
        conn,
        cache,
        region,
        &bill.visit.id_number,
        region.as_str(),
        bill.kind,
        date,
        settle_day,
    )?;
    let ctx = bill.visit_ctx(region, None, use_account)?;
    if let Some(why) = home::ineligibility(&v, &ctx) {
        return Err(Error::FailedPrecondition(format!(
            "no direct settlement: {why}"
        )));
    }
    let quote = engine::quote(
        &v.policy,
        &v.person_ctx(),
        &v.accumulators,
        &ctx,
        &bill.engine_lines,
    )?;
    let rec = insert_record(
        conn,
        region,
        new_record(
            bill,
            key,
            quote.to_proto_split(),
            "pending",
            Basis {
                policy_version: v.policy_version,
                acc_version: v.accumulators.version,
            },
            now,
            String::new(),
        )?,
    )?;
    let resp = home::commit(
        conn,
        cache,
        region,
        &commit_request(&rec, bill, region, false, use_account),
    )?;
    finish_committed(conn, region, rec, &resp, Some(key))
}

fn commit_request(
    rec: &SettlementRec,
    bill: &Bill,
    region: RegionCode,
    provisional: bool,
    use_account: bool,
) -> proto::CommitClaimRequest {
    proto::CommitClaimRequest {
        request_id: rec.settlement_id.clone(),
        claim_id: rec.settlement_id.clone(),
        treatment_region: region.to_string(),
        id_number: rec.id_number.clone(),
        visit: Some(bill.claim_visit(use_account)),
        split: Some(rec.split.clone()),
        accumulator_version: rec.acc_version,
        policy_version: rec.policy_version,
        settled_at: rec.settled_at.clone(),
        provisional,
    }
}

/// A cross-region settlement.
async fn settle_remote(
    st: &NodeState,
    bill: Bill,
    key: RequestKey,
    use_account: bool,
    now: DateTime<Utc>,
    opening: impl std::future::Future<Output = Result<Opened>>,
) -> Result<proto::Settlement> {
    let region = st.region;
    let settle_day = now.with_timezone(&period::cst()).date_naive();
    // The first attempt prices with an answer this node already has when it can,
    // saving the home node a call; CommitClaim refuses it if anything has changed. No
    // CommitClaim is sent before the intent is durable.
    let reused = reusable_eligibility(st, &bill, settle_day);
    let mut reused_answer = reused.is_some();
    let first = match reused {
        Some(elig) => match price_from(st, &bill, use_account, elig).await {
            // Pricing refused what the answer says (a policy version the home node no
            // longer serves, say): a fresh answer decides.
            Err(PeerFail::Refused(_)) => {
                reused_answer = false;
                price(st, &bill, use_account, settle_day).await
            }
            other => other,
        },
        None => price(st, &bill, use_account, settle_day).await,
    };
    let Opened::Intent(mut rec, guard) = opening.await? else {
        return Err(Error::Internal(
            "a settlement's bill was handed out without its intent".into(),
        ));
    };
    let mut running = Some(guard);
    let mut priced = match first {
        Ok(p) => p,
        Err(PeerFail::Unreachable(why)) => {
            // Nothing was sent to the home node for this intent: it simply failed, and
            // the offline rule settles the request under a record of its own.
            mark_failed(st, rec).await?;
            drop(running.take());
            return settle_offline(st, &bill, &key, use_account, why, None, None).await;
        }
        Err(PeerFail::Refused(e)) => {
            mark_failed(st, rec).await?;
            return Err(e);
        }
    };
    // Whether `priced` rests on an answer the home node gave this call (the offline
    // rule goes by this visit's own answers: this call's, else its opening's — a
    // reused answer may be another visit's PreSettle).
    let mut fresh_answer = !reused_answer;
    // Leaves the loop with the reason the offline rule applies: nothing of this claim
    // is committed at the home node, which cannot be reached.
    let offline = 'attempts: {
        // A reused answer refused as stale takes an attempt of its own.
        for attempt in 0..COMMIT_ATTEMPTS + usize::from(reused_answer) {
            if attempt > 0 {
                priced = match price(st, &bill, use_account, settle_day).await {
                    Ok(p) => {
                        fresh_answer = true;
                        p
                    }
                    Err(PeerFail::Unreachable(why)) => {
                        // The home node answered every CommitClaim of this intent with a
                        // refusal (its transaction rolled back) and now cannot be reached.
                        break 'attempts why;
                    }
                    Err(PeerFail::Refused(e)) => {
                        mark_failed(st, rec).await?;
                        return Err(e);
                    }
                };
            }
            let acc_version = priced
                .elig
                .accumulators
                .as_ref()
                .map(|a| a.version)
                .unwrap_or_default();
            let split = priced.quote.to_proto_split();
            let (medfee, fund, acct, cash) = split_fen(&split)?;
            rec.split = split;
            (rec.medfee_fen, rec.fund_fen, rec.acct_fen, rec.cash_fen) = (medfee, fund, acct, cash);
            rec.policy_version = priced.elig.policy_version;
            rec.acc_version = acc_version;
            if attempt > 0 {
                // A retry after a concurrent change: the intent shows what is being tried.
                let r = rec.clone();
                st.store
                    .write(move |conn| settlements::update_outcome(conn, &r))
                    .await?;
            }
            let peer = st.peers.get(&bill.visit.home_region)?;
            let call = peer
                .client()
                .commit_claim(commit_request(&rec, &bill, region, false, use_account))
                .await;
            match call {
                Ok(resp) => {
                    if st
                        .hooks
                        .crash_after_home_commit
                        .load(std::sync::atomic::Ordering::SeqCst)
                    {
                        return Err(Error::Unavailable(
                            "injected crash after the home commit (test hook)".into(),
                        ));
                    }
                    let resp = resp.into_inner();
                    if let Some(acc) = &resp.accumulators {
                        st.eligibility_cache.settled(&bill.visit.id_number, acc);
                    }
                    let k = key.clone();
                    return st
                    .store
                    .write(move |conn| {
                        // A concurrent repeat of this request may have finished it from
                        // the home node's claim status meanwhile: its answer stands.
                        if let Some(answer) = idempotency::replay(conn, &k)? {
                            return Ok(answer);
                        }
                        if settlements::get(conn, &rec.settlement_id)?
                            .is_none_or(|r| r.state != "pending")
                        {
                            return Err(Error::Aborted(
                                "this settlement was resolved concurrently; repeat the request to get its outcome".into(),
                            ));
                        }
                        finish_committed(conn, region, rec, &resp, Some(&k))
                    })
                    .await;
                }
                Err(status) if status.metadata().get(home::NOT_COMMITTED).is_some() => {
                    // The home node answered that it could not store the claim: nothing
                    // is committed there, so nothing is in doubt; the hospital is told
                    // the cause.
                    mark_failed(st, rec).await?;
                    return Err(Error::Unavailable(format!(
                        "{}; the settlement was not made — retry later",
                        status.message()
                    )));
                }
                Err(status) => match classify(&bill.visit.home_region, &status) {
                    PeerFail::Unreachable(why) if never_sent(&status) => {
                        // The home node got nothing (every earlier attempt it refused): the
                        // claim is not in doubt, as when the eligibility call cannot connect.
                        break 'attempts why;
                    }
                    PeerFail::Refused(Error::Aborted(m)) => {
                        tracing::debug!(attempt, reused_answer, claim = %rec.settlement_id, reason = %m, "home reports a change; repricing");
                        // A change since the answer was got is no contention: reprice at once.
                        if !std::mem::take(&mut reused_answer) {
                            tokio::time::sleep(Duration::from_millis(2 + 3 * attempt as u64)).await;
                        }
                    }
                    PeerFail::Refused(e) => {
                        mark_failed(st, rec).await?;
                        return Err(e);
                    }
                    PeerFail::Unreachable(why) => {
                        return settle_in_doubt(
                            st,
                            &bill,
                            rec,
                            &key,
                            use_account,
                            why,
                            fresh_answer.then_some(&priced.elig),
                        )
                        .await;
                    }
                },
            }
        }
        mark_failed(st, rec).await?;
        return Err(Error::Aborted("the person's accumulators kept changing during settlement (settled elsewhere at the same time); retry".into()));
    };
    mark_failed(st, rec).await?;
    drop(running.take());
    settle_offline(
        st,
        &bill,
        &key,
        use_account,
        offline,
        fresh_answer.then_some(&priced.elig),
        None,
    )
    .await
}

async fn mark_failed(st: &NodeState, rec: SettlementRec) -> Result<()> {
    st.store
        .write(move |conn| settlements::fail_pending(conn, &rec.settlement_id).map(drop))
        .await
}

/// The home policy's offline rule, from the cached policy.
fn offline_rule(
    st: &NodeState,
    bill: &Bill,
    snapshot: &proto::EligibilityResponse,
) -> Option<(u32, Arc<Policy>)> {
    let it = InsuranceType::from_proto(snapshot.insurance_type, "insurance_type").ok()?;
    let date = wire_date(&bill.visit.visit_date, "visit_date").ok()?;
    st.policies
        .latest_in_force(&bill.visit.home_region, it, date)
}

/// A split where the patient pays everything (refused direct settlement).
fn full_self_pay(lines: &[LineRec], why: &str) -> proto::Split {
    let total = money::format(money::from_fen(lines.iter().map(|l| l.amount_fen).sum()));
    let zero = money::format(rust_decimal::Decimal::ZERO);
    proto::Split {
        medfee_sumamt: total.clone(),
        fulamt_ownpay_amt: total.clone(),
        overlmt_selfpay: zero.clone(),
        preselfpay_amt: zero.clone(),
        inscp_scp_amt: zero.clone(),
        act_pay_dedc: zero.clone(),
        hifp_pay: zero.clone(),
        hifmi_pay: zero.clone(),
        hifob_pay: zero.clone(),
        cvlserv_pay: zero.clone(),
        maf_pay: zero.clone(),
        fund_pay_sumamt: zero.clone(),
        hosp_part_amt: zero.clone(),
        psn_part_amt: total.clone(),
        acct_pay: zero.clone(),
        psn_cash_pay: total,
        pool_ratio: "0.00".into(),
        trace: vec![why.to_owned()],
        applied_filing_type: FilingType::Temporary.to_proto(),
        ..Default::default()
    }
}

/// The home node cannot be reached and nothing of this claim is committed there: apply
/// the home policy's offline rule with the newest eligibility answer for this visit
/// (`newest`, one the home node gave this call, else the one kept from the visit's
/// opening).
async fn settle_offline(
    st: &NodeState,
    bill: &Bill,
    key: &RequestKey,
    use_account: bool,
    why: String,
    newest: Option<&proto::EligibilityResponse>,
    in_doubt: Option<SettlementRec>,
) -> Result<proto::Settlement> {
    let snapshot = newest
        .cloned()
        .or_else(|| proto::EligibilityResponse::decode(bill.visit.home_snapshot.as_slice()).ok())
        .filter(|s| s.accumulators.is_some());
    let Some(snapshot) = snapshot else {
        return Err(Error::Unavailable(format!(
            "{why}; the person's home data was never received, so nothing can be settled offline — retry later"
        )));
    };
    // The home node's answer at registration decides, as it would online.
    if !snapshot.eligible {
        return Err(Error::FailedPrecondition(format!(
            "no direct settlement: {}",
            snapshot.reason
        )));
    }
    let Some((version, policy)) = offline_rule(st, bill, &snapshot) else {
        return Err(Error::Unavailable(format!(
            "{why}; the home policy is not cached here, so nothing can be settled offline — retry later"
        )));
    };
    let region = st.region;
    let now = st.clock.now();
    let offline = policy.offline.clone();
    // The provisional record (if the policy allows one) and the refused one it falls back
    // to; which one is recorded is decided in the writing transaction.
    let (provisional, limit_fen, refused_note) = match offline {
        OfflineMode::Refuse => (
            None,
            0,
            format!(
                "{why}; the home policy refuses offline settlement: the patient pays in full and claims reimbursement at home"
            ),
        ),
        OfflineMode::Provisional { exposure_limit } => {
            let (person, acc, filing) = person_from(&snapshot)?;
            let ctx = bill.visit_ctx(region, filing, use_account)?;
            let quote = engine::quote(&policy, &person, &acc, &ctx, &bill.engine_lines)?;
            let note = format!(
                "{why}; settled provisionally from cached policy v{version}, to be confirmed by the home node"
            );
            (
                Some((quote.to_proto_split(), note)),
                money::to_fen(exposure_limit),
                format!(
                    "{why}; provisional exposure to {} would exceed its limit {}: the patient pays in full and claims reimbursement at home",
                    bill.visit.home_region,
                    money::format(exposure_limit)
                ),
            )
        }
    };
    let acc_version = snapshot
        .accumulators
        .as_ref()
        .map(|a| a.version)
        .unwrap_or_default();
    let basis = Basis {
        policy_version: version,
        acc_version,
    };
    let refused = new_record(
        bill,
        key,
        full_self_pay(&bill.lines, &refused_note),
        "refused",
        basis,
        now,
        refused_note,
    )?;
    let provisional = provisional
        .map(|(split, note)| new_record(bill, key, split, "provisional", basis, now, note))
        .transpose()?;
    let k = key.clone();
    let visit = bill.claim_visit(use_account);
    let answer = st
        .store
        .write(move |conn| {
            if let Some(answer) = idempotency::replay(conn, &k)? {
                return Ok(answer);
            }
            // The exposure is checked in the transaction that adds to it, so that
            // provisional settlements made at the same moment cannot together exceed it.
            let rec = match provisional {
                Some(p)
                    if settlements::provisional_exposure_fen(conn, &p.home_region)?
                        + p.fund_fen
                        <= limit_fen =>
                {
                    p
                }
                _ => refused,
            };
            let rec = match in_doubt {
                None => insert_record(conn, region, rec)?,
                Some(intent) => {
                    if settlements::get(conn, &intent.settlement_id)?
                        .is_none_or(|r| r.state != "pending")
                    {
                        return Err(Error::Aborted(
                            "this settlement was resolved concurrently; repeat the request to get its outcome".into(),
                        ));
                    }
                    // The claim may be committed at the home node: a record telling the
                    // patient to pay in full cannot be made, only the provisional one
                    // under the same claim id, whose delivery asks the home node first
                    // and takes its claim if it has it.
                    if rec.state != "provisional" {
                        return Err(Error::Unavailable(format!(
                            "{}; whether the home node committed this claim cannot be known until it answers, and its offline rule allows no provisional settlement here — repeat this request (same request_id) later",
                            rec.note
                        )));
                    }
                    let mut rec = SettlementRec {
                        settlement_id: intent.settlement_id,
                        settled_at: intent.settled_at,
                        settle_date: intent.settle_date,
                        period: intent.period,
                        ..rec
                    };
                    rec.note = format!("{} (in doubt after an unanswered commit)", rec.note);
                    settlements::update_outcome(conn, &rec)?;
                    rec
                }
            };
            if rec.state == "provisional" {
                // The receivable is written with the claim, not when the home node
                // confirms it: until then the pair's ledgers differ and a clearing
                // round shows it as a dispute instead of leaving it out unseen.
                ledger::record(
                    conn,
                    &ledger::Entry {
                        entry_id: &rec.settlement_id,
                        side: Side::Receivable,
                        counterparty: &rec.home_region,
                        period: &rec.period,
                        kind: "claim",
                        claim_id: &rec.settlement_id,
                        amount_fen: rec.fund_fen,
                    },
                    &rec.settled_at,
                )?;
                let push = proto::CommitClaimRequest {
                    request_id: rec.settlement_id.clone(),
                    claim_id: rec.settlement_id.clone(),
                    treatment_region: region.to_string(),
                    id_number: rec.id_number.clone(),
                    visit: Some(visit),
                    split: Some(rec.split.clone()),
                    accumulator_version: rec.acc_version,
                    policy_version: rec.policy_version,
                    settled_at: rec.settled_at.clone(),
                    provisional: true,
                };
                outbox::enqueue(
                    conn,
                    "commit",
                    &rec.home_region,
                    &rec.settlement_id,
                    &push.encode_to_vec(),
                    &rec.settled_at,
                    now_ms(),
                )?;
            }
            visits::set_state(conn, &rec.visit_id, "settled", None)?;
            let answer = settlement_to_proto(&rec, region);
            idempotency::store(conn, &k, &answer)?;
            Ok(answer)
        })
        .await?;
    st.outbox_wake.notify_one();
    Ok(answer)
}

/// The home node was asked to commit and did not answer. If it can be asked for the
/// claim's status, that decides; if it cannot be reached at all, the home policy's
/// offline rule applies as to a fresh Settle, under the intent's own claim id (see
/// [`settle_offline`]); otherwise the intent stays pending for recovery and the
/// hospital is told to repeat the same request. The caller holds the intent in
/// [`InFlight`].
async fn settle_in_doubt(
    st: &NodeState,
    bill: &Bill,
    rec: SettlementRec,
    key: &RequestKey,
    use_account: bool,
    why: String,
    newest: Option<&proto::EligibilityResponse>,
) -> Result<proto::Settlement> {
    tracing::warn!(claim = %rec.settlement_id, home = %bill.visit.home_region, error = %why, "claim in doubt");
    match resolve_claimed(st, rec.clone()).await? {
        Resolved::Settled(answer) => Ok(*answer),
        Resolved::Unreachable(now) => {
            settle_offline(st, bill, key, use_account, now, newest, Some(rec)).await
        }
        Resolved::Failed => Err(Error::Aborted(format!(
            "{why}; the home node never committed this settlement and it was abandoned there, so nothing was settled — repeat this request (same request_id) to settle afresh"
        ))),
        Resolved::Pending(now) => Err(Error::Unavailable(format!(
            "{why}; the outcome is being confirmed with the home node ({now}) — repeat this request (same request_id) to get it"
        ))),
    }
}

/// The bill of a pending intent, read again for its repeated request.
async fn pending_bill(st: &NodeState, intent: &SettlementRec) -> Result<Bill> {
    let (inst, vid) = (intent.institution_code.clone(), intent.visit_id.clone());
    let (visit, lines) = st
        .store
        .read(move |conn| read_bill(conn, &inst, &vid))
        .await?;
    bill_from(visit, lines, true)
}

/// Milliseconds since the epoch, for outbox scheduling.
#[must_use]
pub fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// What resolving a pending intent came to.
enum Resolved {
    /// The home node had committed it: settled.
    Settled(Box<proto::Settlement>),
    /// The home node did not have it (now it never will): the intent failed.
    Failed,
    /// The home node could not be reached at all (its status could not be asked, and
    /// nothing was sent that could have changed the claim there): the intent stays
    /// pending, or is settled under the offline rule by its repeated request.
    Unreachable(String),
    /// The home node answered, but the intent could not be finished yet (it stays
    /// pending).
    Pending(String),
}

/// Resolves a pending intent by asking the home node ("read first"): committed → finish
/// locally; unknown → abandon it at the home node (tombstone) and mark it failed. Returns
/// the settlement when it turned out committed, `None` when it failed or the home node
/// cannot be reached (then it stays pending).
pub async fn resolve_intent(
    st: &NodeState,
    rec: SettlementRec,
) -> Result<Option<proto::Settlement>> {
    // Its Settle call is still running, or another resolver is at it: leave it to them.
    let Some(_resolving) = st.settling.try_enter(&rec.settlement_id) else {
        return Ok(None);
    };
    Ok(match resolve_claimed(st, rec).await? {
        Resolved::Settled(answer) => Some(*answer),
        _ => None,
    })
}

/// [`resolve_intent`] for an intent this caller holds in [`InFlight`].
async fn resolve_claimed(st: &NodeState, rec: SettlementRec) -> Result<Resolved> {
    let region = st.region;
    let home = rec.home_region.clone();
    let peer = match st.peers.get(&home) {
        Ok(p) => p,
        Err(e) => return Ok(Resolved::Unreachable(e.to_string())),
    };
    let status = match peer
        .client()
        .claim_status(proto::ClaimStatusRequest {
            claim_id: rec.settlement_id.clone(),
        })
        .await
    {
        Ok(s) => s.into_inner(),
        Err(s) => {
            return match classify(&home, &s) {
                PeerFail::Unreachable(why) => Ok(Resolved::Unreachable(why)),
                PeerFail::Refused(e) => Err(e),
            };
        }
    };
    match status.state.as_str() {
        "committed" => {
            // The stored intent may hold only its placeholder split: the home node's
            // split is the one to record, and without it nothing is finished.
            let resp = status
                .claim
                .filter(|c| c.split.is_some())
                .ok_or_else(|| {
                    Error::Internal(format!(
                        "home node {home} reports claim {} committed without its split; it stays pending",
                        rec.settlement_id
                    ))
                })?;
            let key = RequestKey::new(
                &rec.request_scope,
                &rec.request_id,
                "Settle",
                rec.payload_hash.clone(),
            )?;
            let answer = st
                .store
                .write(move |conn| {
                    let current = settlements::get(conn, &rec.settlement_id)?
                        .ok_or_else(|| Error::Internal("intent vanished".into()))?;
                    if current.state != "pending" {
                        return Ok(settlement_to_proto(&current, region));
                    }
                    let stored = idempotency::replay::<proto::Settlement>(conn, &key)?.is_some();
                    finish_committed(conn, region, current, &resp, (!stored).then_some(&key))
                })
                .await?;
            tracing::info!(claim = %answer.settlement_id, "in-doubt claim was committed at home; settled");
            Ok(Resolved::Settled(Box::new(answer)))
        }
        // Committed late and then reversed by an earlier abandonment: the hospital never
        // had a success, so the intent failed; both of the home node's ledger records are
        // mirrored so that the pair still reconciles.
        "reversed" => {
            mirror_reversed(st, rec, &status).await?;
            Ok(Resolved::Failed)
        }
        "abandoned" => {
            mark_failed(st, rec).await?;
            Ok(Resolved::Failed)
        }
        _ => {
            // Not committed: make sure it never will be, then give up on it.
            let abandon = proto::ReverseClaimRequest {
                request_id: format!("abandon-{}", rec.settlement_id),
                claim_id: rec.settlement_id.clone(),
                reversal_id: format!("abandon-{}", rec.settlement_id),
                reason: "treatment node gave up on an in-doubt claim".into(),
                reversed_at: period::now_rfc3339(),
                treatment_region: region.to_string(),
                abandon_only: true,
            };
            match peer.client().reverse_claim(abandon).await {
                Ok(r) if r.get_ref().state == "abandoned" => {
                    mark_failed(st, rec).await?;
                    Ok(Resolved::Failed)
                }
                // It was committed after all (a late delivery): read its status again
                // and finish it (or mirror it, had it been reversed meanwhile).
                Ok(_) => Box::pin(resolve_claimed(st, rec)).await,
                // The abandonment may have reached the home node and left its
                // tombstone though its answer was lost: the claim id can then never be
                // committed, so it must not be settled provisionally under it. It stays
                // pending; the next resolution reads the home node's status again.
                Err(s) => Ok(Resolved::Pending(match classify(&home, &s) {
                    PeerFail::Unreachable(why) => {
                        format!("the home node did not answer the abandonment: {why}")
                    }
                    PeerFail::Refused(e) => e.to_string(),
                })),
            }
        }
    }
}

/// Records the claim and its reversal as the home node has them, and fails the intent.
async fn mirror_reversed(
    st: &NodeState,
    rec: SettlementRec,
    status: &proto::ClaimStatusResponse,
) -> Result<()> {
    let claim = status.claim.clone().unwrap_or_default();
    let fund = claim
        .split
        .as_ref()
        .map(|s| money::parse(&s.fund_pay_sumamt, "fund_pay_sumamt", Sign::Any).map(money::to_fen))
        .transpose()?
        .unwrap_or_default();
    let (reversal_id, reversal_period) =
        (status.reversal_id.clone(), status.reversal_period.clone());
    tracing::warn!(claim = %rec.settlement_id, "in-doubt claim was committed late at home and reversed; mirrored, intent failed");
    st.store
        .write(move |conn| {
            // Only a pending intent is mirrored: one resolved meanwhile keeps its outcome.
            if settlements::get(conn, &rec.settlement_id)?.is_none_or(|r| r.state != "pending") {
                return Ok(());
            }
            let now = period::now_rfc3339();
            let home = rec.home_region.as_str();
            for (entry, kind, period, amount) in [
                (
                    rec.settlement_id.as_str(),
                    "claim",
                    claim.period.as_str(),
                    fund,
                ),
                (
                    reversal_id.as_str(),
                    "reversal",
                    reversal_period.as_str(),
                    -fund,
                ),
            ] {
                ledger::record(
                    conn,
                    &ledger::Entry {
                        entry_id: entry,
                        side: Side::Receivable,
                        counterparty: home,
                        period,
                        kind,
                        claim_id: &rec.settlement_id,
                        amount_fen: amount,
                    },
                    &now,
                )?;
            }
            settlements::fail_pending(conn, &rec.settlement_id).map(drop)
        })
        .await
}

/// Resolves every pending intent older than `min_age` (all of them at start-up).
pub async fn recover(st: &NodeState, min_age: Duration) -> Result<usize> {
    let pending = st
        .store
        .read(|conn| settlements::in_state(conn, "pending"))
        .await?;
    let cutoff = Utc::now() - chrono::Duration::from_std(min_age).unwrap_or_default();
    let mut resolved = 0;
    for rec in pending {
        let old = period::parse_ts(&rec.settled_at, "settled_at")
            .map(|t| t <= cutoff)
            .unwrap_or(true);
        if !old {
            continue;
        }
        let id = rec.settlement_id.clone();
        match resolve_intent(st, rec).await {
            Ok(Some(_)) => resolved += 1,
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(claim = %id, error = %e, "could not resolve an in-doubt claim")
            }
        }
    }
    Ok(resolved)
}

// ------------------------------------------------------------------ cancel and 冲正

/// Cancels a settlement with a reversal record. Cross-region, the reversal reaches the
/// home node through the outbox (it is this node's decision; the home node must accept
/// it), so a cancellation never waits for, or fails on, an unreachable home node.
fn cancel_in_tx(
    conn: &Connection,
    st_region: RegionCode,
    original: &SettlementRec,
    key: &RequestKey,
    reason: &str,
    now: DateTime<Utc>,
) -> Result<SettlementRec> {
    match original.state.as_str() {
        "settled" | "provisional" | "refused" => {}
        "cancelled" => {
            return Err(Error::FailedPrecondition(format!(
                "settlement {} is already cancelled",
                original.settlement_id
            )));
        }
        other => {
            return Err(Error::FailedPrecondition(format!(
                "settlement {} is {other}; nothing to cancel",
                original.settlement_id
            )));
        }
    }
    let neg = |v: &str| -> String {
        money::parse(v, "amount", Sign::Any)
            .map(|d| money::format(-d))
            .unwrap_or_else(|_| v.to_owned())
    };
    let s = &original.split;
    let split = proto::Split {
        medfee_sumamt: neg(&s.medfee_sumamt),
        fulamt_ownpay_amt: neg(&s.fulamt_ownpay_amt),
        overlmt_selfpay: neg(&s.overlmt_selfpay),
        preselfpay_amt: neg(&s.preselfpay_amt),
        inscp_scp_amt: neg(&s.inscp_scp_amt),
        act_pay_dedc: neg(&s.act_pay_dedc),
        hifp_pay: neg(&s.hifp_pay),
        hifmi_pay: neg(&s.hifmi_pay),
        hifob_pay: neg(&s.hifob_pay),
        cvlserv_pay: neg(&s.cvlserv_pay),
        maf_pay: neg(&s.maf_pay),
        fund_pay_sumamt: neg(&s.fund_pay_sumamt),
        hosp_part_amt: neg(&s.hosp_part_amt),
        psn_part_amt: neg(&s.psn_part_amt),
        acct_pay: neg(&s.acct_pay),
        psn_cash_pay: neg(&s.psn_cash_pay),
        pool_ratio: s.pool_ratio.clone(),
        funds: Vec::new(),
        lines: Vec::new(),
        trace: vec![format!(
            "reverses settlement {}: {reason}",
            original.settlement_id
        )],
        applied_filing_type: s.applied_filing_type,
    };
    let rec = SettlementRec {
        settlement_id: String::new(),
        state: "reversal".into(),
        reverses: Some(original.settlement_id.clone()),
        request_scope: key.scope.clone(),
        request_id: key.request_id.clone(),
        payload_hash: key.payload_hash.clone(),
        split,
        medfee_fen: -original.medfee_fen,
        fund_fen: -original.fund_fen,
        acct_fen: -original.acct_fen,
        cash_fen: -original.cash_fen,
        settled_at: period::format_ts(now),
        settle_date: now.with_timezone(&period::cst()).date_naive().to_string(),
        period: Period::of(now).to_string(),
        note: reason.to_owned(),
        ..original.clone()
    };
    let rec = insert_record(conn, st_region, rec)?;
    settlements::set_state(conn, &original.settlement_id, "cancelled")?;
    let visit = visits::get(conn, &original.visit_id)?
        .ok_or_else(|| Error::Internal("visit vanished".into()))?;
    visits::set_state(
        conn,
        &visit.visit_id,
        if visit.closed_at.is_some() {
            "closed"
        } else {
            "open"
        },
        None,
    )?;
    if original.state == "refused" {
        return Ok(rec);
    }
    let reverse = proto::ReverseClaimRequest {
        request_id: rec.settlement_id.clone(),
        claim_id: original.settlement_id.clone(),
        reversal_id: rec.settlement_id.clone(),
        reason: reason.to_owned(),
        reversed_at: rec.settled_at.clone(),
        treatment_region: st_region.to_string(),
        abandon_only: false,
    };
    if original.home_region == st_region.as_str() {
        home::reverse(conn, st_region.as_str(), &reverse)?;
    } else {
        // The reversal enters this node's ledger now, with its outbox item: a round
        // frozen before the home node has it shows the pair in dispute rather than
        // paying the cancelled claim (docs/clearing.md, "The ledger").
        ledger::record(
            conn,
            &ledger::Entry {
                entry_id: &rec.settlement_id,
                side: Side::Receivable,
                counterparty: &original.home_region,
                period: &rec.period,
                kind: "reversal",
                claim_id: &original.settlement_id,
                amount_fen: -original.fund_fen,
            },
            &rec.settled_at,
        )?;
        outbox::enqueue(
            conn,
            "reverse",
            &original.home_region,
            &rec.settlement_id,
            &reverse.encode_to_vec(),
            &rec.settled_at,
            now_ms(),
        )?;
    }
    Ok(rec)
}

/// NOT_FOUND for an id this node holds no record of.
fn no_settlement(id: &str) -> Error {
    Error::NotFound(format!(
        "no settlement {} at this node",
        yidi_common::error::quoted(id)
    ))
}

/// GetSettlement and CancelSettlement of a record that is no settlement (yet): an attempt
/// still in doubt with the home node, or one that failed. Both calls answer the same.
fn not_a_settlement(rec: &SettlementRec) -> Result<()> {
    match rec.state.as_str() {
        "pending" => Err(Error::Unavailable(format!(
            "settlement {} is still being confirmed with the home node; repeat the Settle \
             request with the same request id to learn its outcome, or reverse it (冲正)",
            rec.settlement_id
        ))),
        "failed" => Err(Error::NotFound(format!(
            "settlement {} is an attempt that failed: no settlement was made under this id \
             and nothing is owed; settle the visit again with a new request id",
            rec.settlement_id
        ))),
        _ => Ok(()),
    }
}

/// HospitalService.CancelSettlement.
pub async fn cancel(
    st: &NodeState,
    mut req: proto::CancelSettlementRequest,
) -> Result<proto::Settlement> {
    let sc = scope(&req.institution_code);
    let payload = payload_hash(&mut req, |r| &mut r.request_id);
    let key = RequestKey::new(&sc, &req.request_id, "CancelSettlement", payload)?;
    institution(st, &req.institution_code).await?;
    let region = st.region;
    let now = st.clock.now();
    let reason = if req.reason.trim().is_empty() {
        "cancelled by the institution".to_owned()
    } else {
        req.reason.trim().to_owned()
    };
    let answer = st
        .store
        .write(move |conn| {
            idempotency::once(conn, &key, |conn| {
                let original = settlements::get(conn, &req.settlement_id)?
                    .ok_or_else(|| no_settlement(&req.settlement_id))?;
                if original.institution_code != req.institution_code {
                    return Err(Error::PermissionDenied(format!(
                        "settlement {} belongs to another institution",
                        original.settlement_id
                    )));
                }
                not_a_settlement(&original)?;
                if let Some(of) = &original.reverses {
                    return Err(Error::FailedPrecondition(format!(
                        "settlement {} is a reversal (冲正/cancellation record) of {of}; it cannot \
                         itself be cancelled — a cancellation is final; to charge the visit again, \
                         settle it again with a new request id",
                        original.settlement_id
                    )));
                }
                let rec = cancel_in_tx(conn, region, &original, &key, &reason, now)?;
                Ok(settlement_to_proto(&rec, region))
            })
        })
        .await?;
    st.eligibility_cache.clear();
    st.outbox_wake.notify_one();
    Ok(answer)
}

/// HospitalService.ReverseRequest (冲正): undo whatever a request the institution never
/// heard back from did. A request that never arrived is barred from taking effect later.
pub async fn reverse_request(
    st: &NodeState,
    mut req: proto::ReverseRequestRequest,
) -> Result<proto::ReverseRequestResponse> {
    let sc = scope(&req.institution_code);
    let payload = payload_hash(&mut req, |r| &mut r.request_id);
    let key = RequestKey::new(&sc, &req.request_id, "ReverseRequest", payload)?;
    idempotency::validate_request_id(&req.original_request_id)
        .map_err(|_| Error::invalid("original_request_id", "missing or malformed"))?;
    institution(st, &req.institution_code).await?;
    // An original still in doubt is settled with the home node first.
    let (s2, o2) = (sc.clone(), req.original_request_id.clone());
    if let Some(intent) = st
        .store
        .read(move |conn| settlements::by_request(conn, &s2, &o2))
        .await?
        .filter(|r| r.state == "pending")
        && resolve_intent(st, intent).await?.is_none()
    {
        let (s3, o3) = (sc.clone(), req.original_request_id.clone());
        if st
            .store
            .read(move |conn| settlements::by_request(conn, &s3, &o3))
            .await?
            .is_some_and(|r| r.state == "pending")
        {
            return Err(Error::Unavailable("the original request is still being confirmed with the home node; retry the 冲正 shortly".into()));
        }
    }
    let region = st.region;
    let now = st.clock.now();
    let answer = st
        .store
        .write(move |conn| {
            idempotency::once(conn, &key, |conn| {
                let original = settlements::by_request(conn, &key.scope, &req.original_request_id)?.filter(|s| s.reverses.is_none());
                match original {
                    Some(o) if o.state == "cancelled" => Ok(proto::ReverseRequestResponse {
                        outcome: "already_reversed".into(),
                        reversal: settlements::reversal_of(conn, &o.settlement_id)?.map(|r| settlement_to_proto(&r, region)),
                    }),
                    Some(o) if o.state != "failed" => {
                        let rec = cancel_in_tx(conn, region, &o, &key, "冲正 (request reversal) by the institution", now)?;
                        Ok(proto::ReverseRequestResponse { outcome: "reversed".into(), reversal: Some(settlement_to_proto(&rec, region)) })
                    }
                    _ => match idempotency::method_of(conn, &key.scope, &req.original_request_id)? {
                        Some(m) if m != "Settle" && m != idempotency::REVERSED => Err(Error::FailedPrecondition(format!(
                            "request {} was a {m}; only settlements are reversed by 冲正 (use UndoFees or CancelSettlement)",
                            req.original_request_id
                        ))),
                        Some(_) => Ok(proto::ReverseRequestResponse { outcome: "not_found".into(), reversal: None }),
                        None => {
                            // Bar the original from taking effect if it arrives late.
                            let bar = RequestKey { scope: key.scope.clone(), request_id: req.original_request_id.clone(), method: idempotency::REVERSED, payload_hash: String::new() };
                            idempotency::store(conn, &bar, &proto::ReverseRequestResponse::default())?;
                            Ok(proto::ReverseRequestResponse { outcome: "not_found".into(), reversal: None })
                        }
                    },
                }
            })
        })
        .await?;
    st.eligibility_cache.clear();
    st.outbox_wake.notify_one();
    Ok(answer)
}

// ------------------------------------------------------------------ queries and reconciliation

/// HospitalService.GetSettlement.
pub async fn get_settlement(
    st: &NodeState,
    req: proto::GetSettlementRequest,
) -> Result<proto::Settlement> {
    institution(st, &req.institution_code).await?;
    let region = st.region;
    st.store
        .read(move |conn| {
            let s = settlements::get(conn, &req.settlement_id)?
                .ok_or_else(|| no_settlement(&req.settlement_id))?;
            if s.institution_code != req.institution_code {
                return Err(Error::PermissionDenied(format!(
                    "settlement {} belongs to another institution",
                    s.settlement_id
                )));
            }
            not_a_settlement(&s)?;
            Ok(settlement_to_proto(&s, region))
        })
        .await
}

fn date_range(from: &str, to: &str) -> Result<(String, String)> {
    let from = wire_date(from, "from_date")?;
    let to = wire_date(to, "to_date")?;
    if to < from {
        return Err(Error::invalid(
            "to_date",
            format!("{to} is before from_date {from}"),
        ));
    }
    Ok((from.to_string(), to.to_string()))
}

/// HospitalService.ListSettlements.
pub async fn list_settlements(
    st: &NodeState,
    req: proto::ListSettlementsRequest,
) -> Result<proto::ListSettlementsResponse> {
    institution(st, &req.institution_code).await?;
    let (from, to) = date_range(&req.from_date, &req.to_date)?;
    let page = req.page.unwrap_or_default();
    let limit = crate::context::page_size(page.page_size);
    let region = st.region;
    st.store
        .read(move |conn| {
            let rows = settlements::for_institution(
                conn,
                &req.institution_code,
                &from,
                &to,
                &page.page_token,
                limit,
            )?;
            let next = if rows.len() == limit as usize {
                rows.last()
                    .map(|s| s.settlement_id.clone())
                    .unwrap_or_default()
            } else {
                String::new()
            };
            Ok(proto::ListSettlementsResponse {
                settlements: rows
                    .iter()
                    .map(|s| settlement_to_proto(s, region))
                    .collect(),
                next_page_token: next,
            })
        })
        .await
}

fn all_for_institution(
    conn: &Connection,
    institution: &str,
    from: &str,
    to: &str,
) -> Result<Vec<SettlementRec>> {
    let mut out = Vec::new();
    let mut after = String::new();
    loop {
        let page = settlements::for_institution(conn, institution, from, to, &after, 1000)?;
        let done = page.len() < 1000;
        if let Some(last) = page.last() {
            after = last.settlement_id.clone();
        }
        out.extend(page);
        if done {
            return Ok(out);
        }
    }
}

/// HospitalService.ReconcileTotals (NHSA 3201).
pub async fn reconcile_totals(
    st: &NodeState,
    req: proto::ReconcileTotalsRequest,
) -> Result<proto::ReconcileTotalsResponse> {
    institution(st, &req.institution_code).await?;
    let (from, to) = date_range(&req.from_date, &req.to_date)?;
    let theirs = (
        req.count,
        money::to_fen(money::parse(
            &req.medfee_sumamt,
            "medfee_sumamt",
            Sign::Any,
        )?),
        money::to_fen(money::parse(
            &req.fund_pay_sumamt,
            "fund_pay_sumamt",
            Sign::Any,
        )?),
        money::to_fen(money::parse(&req.acct_pay, "acct_pay", Sign::Any)?),
    );
    let rows = st
        .store
        .read(move |conn| all_for_institution(conn, &req.institution_code, &from, &to))
        .await?;
    let ours = (
        rows.len() as u64,
        rows.iter().map(|r| r.medfee_fen).sum::<i64>(),
        rows.iter().map(|r| r.fund_fen).sum::<i64>(),
        rows.iter().map(|r| r.acct_fen).sum::<i64>(),
    );
    let f = |fen: i64| money::format(money::from_fen(fen));
    Ok(proto::ReconcileTotalsResponse {
        matches: ours == theirs,
        count: ours.0,
        medfee_sumamt: f(ours.1),
        fund_pay_sumamt: f(ours.2),
        acct_pay: f(ours.3),
    })
}

/// HospitalService.ReconcileDetail (NHSA 3202): differences record by record.
pub async fn reconcile_detail(
    st: &NodeState,
    req: proto::ReconcileDetailRequest,
) -> Result<proto::ReconcileDetailResponse> {
    institution(st, &req.institution_code).await?;
    let (from, to) = date_range(&req.from_date, &req.to_date)?;
    let mut theirs = std::collections::BTreeMap::new();
    for (i, e) in req.entries.iter().enumerate() {
        let medfee = money::to_fen(money::parse(
            &e.medfee_sumamt,
            &format!("entries[{i}].medfee_sumamt"),
            Sign::Any,
        )?);
        let fund = money::to_fen(money::parse(
            &e.fund_pay_sumamt,
            &format!("entries[{i}].fund_pay_sumamt"),
            Sign::Any,
        )?);
        if theirs
            .insert(e.settlement_id.clone(), (medfee, fund, e.clone()))
            .is_some()
        {
            return Err(Error::invalid(
                format!("entries[{i}].settlement_id"),
                format!(
                    "{} is listed twice",
                    yidi_common::error::quoted(&e.settlement_id)
                ),
            ));
        }
    }
    let rows = st
        .store
        .read(move |conn| all_for_institution(conn, &req.institution_code, &from, &to))
        .await?;
    let f = |fen: i64| money::format(money::from_fen(fen));
    let mut differences = Vec::new();
    for r in &rows {
        let node = proto::ReconcileEntry {
            settlement_id: r.settlement_id.clone(),
            medfee_sumamt: f(r.medfee_fen),
            fund_pay_sumamt: f(r.fund_fen),
        };
        match theirs.remove(&r.settlement_id) {
            None => differences.push(proto::ReconcileDifference {
                settlement_id: r.settlement_id.clone(),
                kind: "missing_at_institution".into(),
                node: Some(node),
                institution: None,
            }),
            Some((m, fu, e)) if (m, fu) != (r.medfee_fen, r.fund_fen) => {
                differences.push(proto::ReconcileDifference {
                    settlement_id: r.settlement_id.clone(),
                    kind: "amount_differs".into(),
                    node: Some(node),
                    institution: Some(e),
                })
            }
            Some(_) => {}
        }
    }
    for (id, (_, _, e)) in theirs {
        differences.push(proto::ReconcileDifference {
            settlement_id: id,
            kind: "missing_at_node".into(),
            node: None,
            institution: Some(e),
        });
    }
    Ok(proto::ReconcileDetailResponse { differences })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_failure_to_connect_counts_as_never_sent() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let connect = tonic::Status::from_error(Box::new(tonic::ConnectError(Box::new(refused))));
        assert_eq!(connect.code(), Code::Unavailable);
        assert!(never_sent(&connect));
        // A connection that broke while the call was on it, a timeout, a bare status:
        // the home node may have received the call.
        let broken = std::io::Error::from(std::io::ErrorKind::BrokenPipe);
        assert!(!never_sent(&tonic::Status::from_error(Box::new(broken))));
        assert!(!never_sent(&tonic::Status::from_error(Box::new(
            tonic::TimeoutExpired(())
        ))));
        assert!(!never_sent(&tonic::Status::unavailable(
            "tcp connect error"
        )));
    }
}
