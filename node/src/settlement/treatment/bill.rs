//! The bill and its pricing: UploadFees and UndoFees against this node's catalogue,
//! and quoting a bill under the home policy with the home node's eligibility answer.

use chrono::NaiveDate;
use prost::Message;
use yidi_common::{
    engine::{self, Quote},
    money::{self, Sign},
    period, proto,
};

use super::{
    home_calls::{PeerFail, eligibility, eligibility_request, home_policy},
    hospital_write::hospital_write,
    shared::{Bill, check_institution, institution_given, own_visit, person_from, scope},
};
use crate::eligibility_cache::{HOME_ANSWERED_WITHIN, PRESETTLE_REUSE, SETTLE_REUSE};
use crate::settlement::{classified_line, wire_date};
use crate::store::states::VisitState;
use crate::{
    Error, Result,
    context::NodeState,
    idempotency::{self, RequestKey, payload_hash},
    store::{
        catalogue,
        visits::{self, LineRec, VisitRec},
    },
};

pub(super) fn fees_response(lines: &[LineRec]) -> proto::UploadFeesResponse {
    proto::UploadFeesResponse {
        lines: lines.iter().map(classified_line).collect(),
        total: money::format(money::from_fen(lines.iter().map(|l| l.amount_fen).sum())),
    }
}

pub(super) fn editable(v: &VisitRec) -> Result<()> {
    if v.state == VisitState::Settled {
        return Err(Error::FailedPrecondition(format!(
            "visit {} is settled; cancel the settlement before changing its fees",
            v.visit_id
        )));
    }
    if v.state == VisitState::Cancelled {
        return Err(Error::FailedPrecondition(format!(
            "visit {} is cancelled; its fees can no longer be changed (open a new visit)",
            v.visit_id
        )));
    }
    Ok(())
}

/// Validates one uploaded line (everything but the catalogue).
pub(super) fn check_line(
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
    req: proto::UndoFeesRequest,
) -> Result<proto::UploadFeesResponse> {
    hospital_write(st, req, "UndoFees", |conn, req| {
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
    .await
}

/// The home node's eligibility answer for PreSettle: from the cache when fresh.
pub(super) async fn eligibility_for_presettle(
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
pub(super) fn reusable_eligibility(
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

/// A quote under the home policy for the current eligibility.
pub(super) struct Priced {
    pub(super) quote: Quote,
    pub(super) elig: proto::EligibilityResponse,
}

pub(super) async fn price(
    st: &NodeState,
    bill: &Bill,
    use_account: bool,
    settle_day: NaiveDate,
) -> Result<Priced, PeerFail> {
    price_with(st, bill, use_account, false, settle_day).await
}

/// Prices a bill; `presettle` lets the eligibility answer come from PreSettle's cache.
pub(super) async fn price_with(
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
pub(super) async fn price_from(
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
