//! The home node's side of a claim. Everything here runs inside one store transaction
//! (a writer closure) or on a read connection; the home node never trusts the treatment
//! node's arithmetic: it re-runs the same engine on its own person, filing, policy and
//! accumulators, and applies the claim with a compare-and-set on the accumulator version.

use std::sync::Arc;

use chrono::{Datelike, NaiveDate};
use rusqlite::Connection;
use yidi_common::{
    engine::{self, FilingCtx, Line, PersonCtx, Quote, VisitCtx},
    money,
    period::{self, Period},
    policy::Policy,
    proto,
    region::RegionCode,
    types::{FilingType, HospitalLevel, PersonStatus, VisitKind},
};

use crate::store::states::ClaimState;
use crate::{
    Error, Result,
    policy_cache::PolicyCache,
    store::{
        accumulators::{self, Delta},
        claims::{self, ClaimRec},
        filings::{self, FilingRec},
        ledger::{self, Side},
        persons::{self, StoredPerson},
        policies,
    },
};

/// Metadata on a CommitClaim refused because the home node's store could not write
/// it: the claim was certainly not committed, so the treatment node need not hold it in
/// doubt.
pub const NOT_COMMITTED: &str = crate::peers::NOT_COMMITTED;

/// The home node's view of a person for one visit.
pub struct HomeView {
    pub person: StoredPerson,
    pub filing: Option<FilingRec>,
    pub policy_version: u32,
    pub policy: Arc<Policy>,
    pub accumulators: engine::Accumulators,
}

impl HomeView {
    /// The engine's person input.
    #[must_use]
    pub fn person_ctx(&self) -> PersonCtx {
        PersonCtx {
            insurance_type: self.person.rec.insurance_type,
            person_type: self.person.rec.person_type,
            civil_servant: self.person.rec.civil_servant,
            account_balance: money::from_fen(self.person.rec.account_fen),
        }
    }

    /// The engine's filing input.
    #[must_use]
    pub fn filing_ctx(&self) -> Option<FilingCtx> {
        self.filing.as_ref().map(filing_ctx)
    }
}

fn filing_ctx(f: &FilingRec) -> FilingCtx {
    FilingCtx {
        filing_type: f.filing_type,
        treatment_region: f.treatment_region.clone(),
        institutions: f.institutions.clone(),
        valid_from: f.valid_from,
        valid_to: f.valid_to,
    }
}

/// The approved filing of a person that best applies to care in `treatment` that began
/// on `date`: long-term filings first, then the most recent.
///
/// A filing applies when it covers the visit's start. A stay (`late_until`: the day of
/// the discharge settlement) is also covered by a filing that had not expired by the
/// admission and is valid by that day: a patient admitted unfiled may file before the
/// discharge settlement and still settle directly as filed (DOMAIN.md, "Filing").
pub fn applicable_filing(
    conn: &Connection,
    id_number: &str,
    treatment: &str,
    date: NaiveDate,
    late_until: Option<NaiveDate>,
) -> Result<Option<FilingRec>> {
    let all = filings::approved_for(conn, id_number, treatment)?;
    let by = late_until.map_or(date, |d| d.max(date));
    Ok(all
        .into_iter()
        .filter(|f| f.valid_from <= by && f.valid_to.is_none_or(|to| date <= to))
        .max_by_key(|f| {
            (
                f.filing_type.is_long_term(),
                f.filing_type != FilingType::Emergency,
                // Of filings of the same standing, one covering the visit's start ranks
                // before one filed during the stay.
                f.valid_from <= date,
                f.valid_from,
                f.filing_id.clone(),
            )
        }))
}

/// The policy version in force for the person's insurance type on `date`, parsed.
pub fn policy_in_force(
    conn: &Connection,
    cache: &PolicyCache,
    region: RegionCode,
    p: &StoredPerson,
    date: NaiveDate,
) -> Result<(u32, Arc<Policy>)> {
    let it = p.rec.insurance_type;
    let version = policies::version_in_force(conn, it, date)?.ok_or_else(|| {
        Error::FailedPrecondition(format!(
            "home region {region} has no {it} policy in force on {date}"
        ))
    })?;
    Ok((version, policy_version(conn, cache, region, p, version)?))
}

/// A specific policy version, parsed.
pub fn policy_version(
    conn: &Connection,
    cache: &PolicyCache,
    region: RegionCode,
    p: &StoredPerson,
    version: u32,
) -> Result<Arc<Policy>> {
    let it = p.rec.insurance_type;
    if let Some(policy) = cache.get(region.as_str(), it, version) {
        return Ok(policy);
    }
    let rec = policies::get(conn, it, version)?.ok_or_else(|| {
        Error::FailedPrecondition(format!(
            "home region {region} has no {it} policy version {version}"
        ))
    })?;
    cache.insert_json(region.as_str(), it, version, &rec.policy_json)
}

/// Gathers the home node's view of a person for care of `kind` in `treatment` that
/// began on `date` and is settled (or checked) on `settle_day`.
#[allow(clippy::too_many_arguments)]
pub fn view(
    conn: &Connection,
    cache: &PolicyCache,
    region: RegionCode,
    id_number: &str,
    treatment: &str,
    kind: VisitKind,
    date: NaiveDate,
    settle_day: NaiveDate,
) -> Result<HomeView> {
    let person = persons::get(conn, id_number)?.ok_or_else(|| {
        Error::NotFound(format!(
            "person {id_number} is not insured in region {region}"
        ))
    })?;
    let (policy_version, policy) = policy_in_force(conn, cache, region, &person, date)?;
    let filing = if treatment == region.as_str() {
        None
    } else {
        applicable_filing(
            conn,
            id_number,
            treatment,
            date,
            (kind == VisitKind::Inpatient).then_some(settle_day),
        )?
    };
    let accumulators = accumulators::get(conn, id_number, date.year())?;
    Ok(HomeView {
        person,
        filing,
        policy_version,
        policy,
        accumulators,
    })
}

/// Why a person cannot settle directly, if they cannot: enrolment status, or the
/// policy's cross-region rule for the filing that applies.
#[must_use]
pub fn ineligibility(view: &HomeView, visit: &VisitCtx) -> Option<String> {
    if view.person.rec.status != PersonStatus::Active {
        return Some(format!(
            "enrolment is {}; direct settlement needs an active enrolment",
            view.person.rec.status
        ));
    }
    engine::direct_settlement(&view.policy, visit)
        .err()
        .map(|e| e.to_string())
}

/// Answers CheckEligibility.
pub fn eligibility(
    conn: &Connection,
    cache: &PolicyCache,
    region: RegionCode,
    treatment: &str,
    req: &proto::CheckEligibilityRequest,
) -> Result<proto::EligibilityResponse> {
    let date = super::wire_date(&req.visit_date, "visit_date")?;
    let kind = VisitKind::from_proto(req.visit_kind, "visit_kind")?;
    let level = HospitalLevel::from_proto(req.level, "level")?;
    let v = view(
        conn,
        cache,
        region,
        &req.id_number,
        treatment,
        kind,
        date,
        if req.settle_date.is_empty() {
            period::today()
        } else {
            super::wire_date(&req.settle_date, "settle_date")?
        },
    )?;
    let visit = VisitCtx {
        visit_kind: kind,
        level,
        institution_code: req.institution_code.clone(),
        visit_date: date,
        treatment_region: treatment.to_owned(),
        home_region: region.to_string(),
        filing: v.filing_ctx(),
        use_account: false,
    };
    let why_not = ineligibility(&v, &visit);
    let applied = engine::direct_settlement(&v.policy, &visit).ok().flatten();
    Ok(proto::EligibilityResponse {
        eligible: why_not.is_none(),
        reason: why_not.unwrap_or_default(),
        filing: v.filing.as_ref().map(crate::records::filing_to_proto),
        applied_filing_type: applied.map(FilingType::to_proto).unwrap_or_default(),
        accumulators: Some(v.accumulators.to_proto()),
        account_balance: money::format(money::from_fen(v.person.rec.account_fen)),
        policy_version: v.policy_version,
        person_type: v.person.rec.person_type.to_proto(),
        civil_servant: v.person.rec.civil_servant,
        insurance_type: v.person.rec.insurance_type.to_proto(),
        name: v.person.rec.name.clone(),
    })
}

/// The engine inputs of a claim as the treatment node describes the visit.
pub fn claim_visit(
    visit: &proto::ClaimVisit,
    treatment: &str,
    home: RegionCode,
    filing: Option<FilingCtx>,
) -> Result<(VisitCtx, Vec<Line>)> {
    let ctx = VisitCtx {
        visit_kind: VisitKind::from_proto(visit.visit_kind, "visit.visit_kind")?,
        level: HospitalLevel::from_proto(visit.level, "visit.level")?,
        institution_code: visit.institution_code.clone(),
        visit_date: super::wire_date(&visit.visit_date, "visit.visit_date")?,
        treatment_region: treatment.to_owned(),
        home_region: home.to_string(),
        filing,
        use_account: visit.use_account,
    };
    let lines = visit
        .lines
        .iter()
        .enumerate()
        .map(|(i, l)| {
            Line::from_proto(l).map_err(|e| Error::from(e.in_field(format!("visit.lines[{i}]."))))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((ctx, lines))
}

/// Refuses a claim dated ahead of this node's clock (beyond its skew bound): it would
/// open a year's accumulators (a fresh deductible and cap) and book a ledger period no
/// round has reached. The bound is the latest day this node accepts (its clock plus
/// the skew, UTC+8), not its own today: a treatment node a few seconds past New Year
/// is within the skew and its claim must not be refused as of a year not reached, or a
/// provisional claim delivered then would be disputed for good. The treatment node's
/// clock is checked on the call too; this is the check that holds whatever the caller
/// sends.
pub fn check_dates(req: &proto::CommitClaimRequest, clock: &crate::clock::Clock) -> Result<()> {
    let settled_at = period::parse_ts(&req.settled_at, "settled_at")?;
    clock.not_future(settled_at, "settled_at")?;
    if let Some(visit) = &req.visit {
        let date = super::wire_date(&visit.visit_date, "visit.visit_date")?;
        // Also bounds the year: a year later than the latest day's is in the future.
        clock.not_future_day(date, "visit.visit_date")?;
    }
    Ok(())
}

/// CommitClaim exactly once by its request key, in the caller's transaction: a repeat
/// gets the first answer, with the split of its claim record when the answer was stored
/// without it. The request record keeps the answer without its split — the claim
/// record holds the same one for good (a reversal marks the claim, its split stays) —
/// so that the claim's split is stored once at this node, not twice.
pub fn commit_once(
    conn: &Connection,
    cache: &PolicyCache,
    region: RegionCode,
    key: &crate::idempotency::RequestKey,
    req: &proto::CommitClaimRequest,
) -> Result<proto::CommitClaimResponse> {
    if let Some(mut answer) = crate::idempotency::replay::<proto::CommitClaimResponse>(conn, key)? {
        if answer.split.is_none() {
            let Some(claim) = claims::get(conn, &answer.claim_id)? else {
                // Archived and purged while its request record was kept.
                return Err(crate::store::archive::missing(
                    conn,
                    &answer.claim_id,
                    "claim",
                    false,
                )?
                .unwrap_or_else(|| {
                    Error::Internal(format!(
                        "the stored answer of request {} names claim {}, which is missing",
                        yidi_common::error::quoted(&key.request_id),
                        answer.claim_id
                    ))
                }));
            };
            answer.split = Some(claim.split);
        }
        return Ok(answer);
    }
    let mut answer = commit(conn, cache, region, req)?;
    let split = answer.split.take();
    crate::idempotency::store(conn, key, &answer)?;
    answer.split = split;
    Ok(answer)
}

/// Commits a claim at the home node: re-runs the engine, checks the accumulator version
/// (unless provisional: a provisional claim was settled while this node was unreachable
/// and is applied on top of whatever happened since, the engine's answer being
/// authoritative), applies accumulators and the account, records the claim and the
/// ledger entry — in the caller's transaction.
pub fn commit(
    conn: &Connection,
    cache: &PolicyCache,
    region: RegionCode,
    req: &proto::CommitClaimRequest,
) -> Result<proto::CommitClaimResponse> {
    claim_id_unused(conn, &req.claim_id)?;
    let visit = req
        .visit
        .as_ref()
        .ok_or_else(|| Error::invalid("visit", "missing"))?;
    let date = super::wire_date(&visit.visit_date, "visit.visit_date")?;
    let settled_at = period::parse_ts(&req.settled_at, "settled_at")?;
    let v = view(
        conn,
        cache,
        region,
        &req.id_number,
        &req.treatment_region,
        VisitKind::from_proto(visit.visit_kind, "visit.visit_kind")?,
        date,
        settled_at.with_timezone(&period::cst()).date_naive(),
    )?;
    let policy = current_basis(req, &v, date)?;
    let (visit_ctx, lines) = claim_visit(visit, &req.treatment_region, region, v.filing_ctx())?;
    let quote: Quote = engine::quote(
        &policy,
        &v.person_ctx(),
        &v.accumulators,
        &visit_ctx,
        &lines,
    )?;
    if !req.provisional {
        split_agrees(req, &quote)?;
    }
    let split = quote.to_proto_split();
    accumulators::compare_and_set(
        conn,
        &req.id_number,
        v.accumulators.version,
        &quote.accumulators,
    )?;
    let acct_fen = money::to_fen(quote.acct_pay);
    if acct_fen > 0
        && !persons::move_account(conn, &req.id_number, -acct_fen, &period::now_rfc3339())?
    {
        return Err(Error::NotFound(format!(
            "no person with ID number {}",
            req.id_number
        )));
    }
    let period = Period::of(settled_at).to_string();
    let fund_fen = money::to_fen(quote.fund_pay_sumamt);
    claims::insert(
        conn,
        &ClaimRec {
            claim_id: req.claim_id.clone(),
            treatment_region: req.treatment_region.clone(),
            id_number: req.id_number.clone(),
            institution_code: visit.institution_code.clone(),
            visit_kind: visit_ctx.visit_kind.to_string(),
            settled_at: req.settled_at.clone(),
            period: period.clone(),
            policy_version: v.policy_version,
            provisional: req.provisional,
            split: split.clone(),
            fund_fen,
            acct_fen,
            acc_year: date.year(),
            acc_delta: Delta::between(&v.accumulators, &quote.accumulators),
            state: ClaimState::Committed,
            reversal_id: None,
            reversed_at: None,
        },
    )?;
    if req.treatment_region != region.as_str() {
        ledger::record(
            conn,
            &ledger::Entry {
                entry_id: &req.claim_id,
                side: Side::Payable,
                counterparty: &req.treatment_region,
                period: &period,
                kind: "claim",
                claim_id: &req.claim_id,
                amount_fen: fund_fen,
            },
            &period::now_rfc3339(),
        )?;
    }
    Ok(proto::CommitClaimResponse {
        claim_id: req.claim_id.clone(),
        state: ClaimState::Committed.to_string(),
        split: Some(split),
        accumulators: Some(quote.accumulators.to_proto()),
        period,
        policy_version: v.policy_version,
    })
}

/// A claim id is committed once: refused when it is already, or was abandoned.
fn claim_id_unused(conn: &Connection, claim_id: &str) -> Result<()> {
    if let Some(existing) = claims::get(conn, claim_id)? {
        return Err(Error::AlreadyExists(format!(
            "claim {} was already committed by another request (state {})",
            existing.claim_id, existing.state
        )));
    }
    if let Some(e) = crate::store::archive::missing(conn, claim_id, "claim", false)? {
        return Err(e);
    }
    if claims::is_tombstoned(conn, claim_id)? {
        return Err(Error::FailedPrecondition(format!(
            "claim {claim_id} was abandoned by its treatment region and cannot be committed"
        )));
    }
    Ok(())
}

/// The policy to price a claim with, once the claim is found to rest on this node's
/// current data: the person's status, the accumulators' and the policy's versions. A
/// provisional claim is taken as it comes.
fn current_basis(
    req: &proto::CommitClaimRequest,
    v: &HomeView,
    date: NaiveDate,
) -> Result<Arc<Policy>> {
    if v.person.rec.status != PersonStatus::Active && !req.provisional {
        return Err(Error::FailedPrecondition(format!(
            "person {} is {}; no direct settlement",
            req.id_number, v.person.rec.status
        )));
    }
    if !req.provisional && req.accumulator_version != v.accumulators.version {
        return Err(Error::Aborted(format!(
            "accumulators changed since eligibility (version {} now, {} used); retry with fresh eligibility",
            v.accumulators.version, req.accumulator_version
        )));
    }
    if req.provisional || req.policy_version == v.policy_version {
        Ok(Arc::clone(&v.policy))
    } else {
        Err(Error::Aborted(format!(
            "policy version {} is in force for {date}, the claim used {}; retry with the current policy",
            v.policy_version, req.policy_version
        )))
    }
}

/// Refuses a claim whose split differs from this node's. The treatment node priced with
/// eligibility read a moment ago; a different split here means home data changed since
/// (an account balance, a filing) or the caller is wrong. Either way nothing is
/// committed, and the caller reprices with fresh eligibility — it gives up after a few
/// attempts.
fn split_agrees(req: &proto::CommitClaimRequest, quote: &Quote) -> Result<()> {
    let theirs = req
        .split
        .as_ref()
        .ok_or_else(|| Error::invalid("split", "missing"))?;
    quote.split_matches(theirs).map_err(|e| {
        Error::Aborted(format!(
            "the home node computes a different split: {e}; nothing was committed — reprice with fresh eligibility"
        ))
    })
}

/// Reverses a committed claim: takes back exactly what it added to the accumulators,
/// returns the account payment, and records a negative ledger entry in the period of the
/// reversal. An unknown claim id is tombstoned so that a late commit cannot revive it.
pub fn reverse(
    conn: &Connection,
    caller: &str,
    req: &proto::ReverseClaimRequest,
) -> Result<proto::CommitClaimResponse> {
    let Some(claim) = claims::get(conn, &req.claim_id)? else {
        // A claim of an archived period is not unknown: never tombstoned as abandoned.
        if let Some(e) = crate::store::archive::missing(conn, &req.claim_id, "claim", false)? {
            return Err(e);
        }
        claims::tombstone(conn, &req.claim_id, &period::now_rfc3339())?;
        return Ok(proto::CommitClaimResponse {
            claim_id: req.claim_id.clone(),
            state: "abandoned".into(),
            ..Default::default()
        });
    };
    if claim.treatment_region != caller {
        return Err(Error::PermissionDenied(format!(
            "claim {} belongs to treatment region {}",
            claim.claim_id, claim.treatment_region
        )));
    }
    if !req.abandon_only
        && let Some(e) =
            crate::store::archive::refusal(conn, &claim.period, &claim.claim_id, "claim")?
    {
        return Err(e);
    }
    if req.abandon_only {
        // Committed after all (a late delivery): the caller finishes it from its status.
        return Ok(proto::CommitClaimResponse {
            claim_id: claim.claim_id.clone(),
            state: claim.state.to_string(),
            split: Some(claim.split.clone()),
            period: claim.period.clone(),
            policy_version: claim.policy_version,
            ..Default::default()
        });
    }
    if claim.state == ClaimState::Reversed {
        return Err(Error::FailedPrecondition(format!(
            "claim {} was already reversed by {}",
            claim.claim_id,
            claim.reversal_id.unwrap_or_default()
        )));
    }
    let at = period::parse_ts(&req.reversed_at, "reversed_at")?;
    let acc = accumulators::get(conn, &claim.id_number, claim.acc_year)?;
    let back = claim.acc_delta.taken_from(&acc);
    accumulators::compare_and_set(conn, &claim.id_number, acc.version, &back)?;
    if claim.acct_fen > 0 {
        // A person no longer in the register has no account to give back to.
        persons::move_account(
            conn,
            &claim.id_number,
            claim.acct_fen,
            &period::now_rfc3339(),
        )?;
    }
    claims::mark_reversed(conn, &claim.claim_id, &req.reversal_id, &req.reversed_at)?;
    let period = Period::of(at).to_string();
    if claim.treatment_region != conn_region(conn)? {
        ledger::record(
            conn,
            &ledger::Entry {
                entry_id: &req.reversal_id,
                side: Side::Payable,
                counterparty: &claim.treatment_region,
                period: &period,
                kind: "reversal",
                claim_id: &claim.claim_id,
                amount_fen: -claim.fund_fen,
            },
            &period::now_rfc3339(),
        )?;
    }
    Ok(proto::CommitClaimResponse {
        claim_id: claim.claim_id,
        state: ClaimState::Reversed.to_string(),
        split: Some(claim.split),
        accumulators: Some(back.to_proto()),
        period,
        policy_version: claim.policy_version,
    })
}

/// This node's own region as recorded in the store's meta table (set at start).
fn conn_region(conn: &Connection) -> Result<String> {
    crate::store::meta_get(conn, "region")?
        .ok_or_else(|| Error::Internal("store has no region recorded".into()))
}

/// Answers ClaimStatus.
pub fn status(conn: &Connection, claim_id: &str) -> Result<proto::ClaimStatusResponse> {
    if let Some(c) = claims::get(conn, claim_id)? {
        let state = c.state.to_string();
        // The reversal's period is derived from its time exactly as `reverse` did.
        let reversal_period = c
            .reversed_at
            .as_deref()
            .map(|at| period::parse_ts(at, "reversed_at").map(|t| Period::of(t).to_string()))
            .transpose()?
            .unwrap_or_default();
        return Ok(proto::ClaimStatusResponse {
            state: state.clone(),
            claim: Some(proto::CommitClaimResponse {
                claim_id: c.claim_id,
                state,
                split: Some(c.split),
                accumulators: None,
                period: c.period,
                policy_version: c.policy_version,
            }),
            reversal_id: c.reversal_id.unwrap_or_default(),
            reversal_period,
        });
    }
    let state = if claims::is_tombstoned(conn, claim_id)? {
        "abandoned"
    } else {
        "unknown"
    };
    Ok(proto::ClaimStatusResponse {
        state: state.into(),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicI64, Ordering},
    };

    use super::*;
    use crate::clock::Clock;

    fn req(visit_date: &str, settled_at: &str) -> proto::CommitClaimRequest {
        proto::CommitClaimRequest {
            claim_id: "330200-S-0000000001".into(),
            settled_at: settled_at.into(),
            visit: Some(proto::ClaimVisit {
                visit_date: visit_date.into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// A treatment node 20 s into the new year, within the skew of a home node 10 s
    /// before it: its claim is of a day the home node accepts, not of a year it has
    /// not reached.
    #[test]
    fn a_claim_just_past_new_year_within_the_skew_is_accepted() {
        let offset = Arc::new(AtomicI64::new(0));
        let clock = Clock::new(Arc::clone(&offset), crate::clock::DEFAULT_MAX_SKEW);
        let home_now = chrono::DateTime::parse_from_rfc3339("2026-12-31T23:59:50+08:00")
            .unwrap()
            .timestamp_millis();
        offset.store(
            home_now - chrono::Utc::now().timestamp_millis(),
            Ordering::Relaxed,
        );
        assert_eq!(clock.today().year(), 2026);

        check_dates(&req("2027-01-01", "2027-01-01T00:00:20+08:00"), &clock).unwrap();
        // A day beyond the skew is still refused, naming the field.
        let e = check_dates(&req("2027-01-02", "2027-01-01T00:00:20+08:00"), &clock).unwrap_err();
        assert!(
            matches!(&e, Error::Invalid { field, reason }
                if field == "visit.visit_date" && reason.contains("2027-01-02 is in the future")),
            "{e:?}"
        );
        let e = check_dates(&req("2027-01-01", "2027-01-01T00:10:00+08:00"), &clock).unwrap_err();
        assert!(
            matches!(&e, Error::Invalid { field, .. } if field == "settled_at"),
            "{e:?}"
        );
    }
}
