//! What every phase uses: the institution's checks, a visit and its bill, the
//! idempotency scope, and [`InFlight`], the intents someone in this process works on.

use chrono::Utc;
use rusqlite::Connection;
use yidi_common::{
    engine::{Accumulators, FilingCtx, Line, PersonCtx, VisitCtx},
    money::{self, Sign},
    period, proto,
    region::RegionCode,
    types::{AgreementStatus, HospitalLevel, InsuranceType, PersonType, VisitKind},
};

use crate::settlement::{classified_line, engine_line, wire_date};
use crate::store::states::VisitState;
use crate::{
    Error, Result,
    context::NodeState,
    store::{
        institutions::{self, InstitutionRec},
        visits::{self, LineRec, VisitRec},
    },
};

pub use crate::context::InFlight;
pub(super) use crate::context::InFlightGuard;

/// Idempotency scope of an institution's requests.
#[must_use]
pub fn scope(institution: &str) -> String {
    format!("inst:{institution}")
}

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
pub(super) fn institution_given(code: &str) -> Result<()> {
    if code.is_empty() {
        return Err(Error::invalid("institution_code", "missing"));
    }
    Ok(())
}

pub(super) async fn institution(st: &NodeState, code: &str) -> Result<InstitutionRec> {
    institution_given(code)?;
    let code = code.to_owned();
    st.store
        .read(move |conn| check_institution(conn, &code, period::today()))
        .await
}

/// The visit, which must belong to `institution`.
pub(super) fn own_visit(conn: &Connection, institution: &str, visit_id: &str) -> Result<VisitRec> {
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

/// Everything the engine needs, gathered for a visit.
pub(super) struct Bill {
    pub(super) visit: VisitRec,
    pub(super) lines: Vec<LineRec>,
    pub(super) engine_lines: Vec<Line>,
    pub(super) level: HospitalLevel,
    pub(super) kind: VisitKind,
}

/// The visit (of `institution`) and its fee lines.
pub(super) fn read_bill(
    conn: &Connection,
    institution: &str,
    visit_id: &str,
) -> Result<(VisitRec, Vec<LineRec>)> {
    let v = own_visit(conn, institution, visit_id)?;
    let lines = visits::lines(conn, &v.visit_id)?;
    Ok((v, lines))
}

/// The bill of a visit, which must be ready to settle (`for_settle`) or to quote.
pub(super) fn bill_from(visit: VisitRec, lines: Vec<LineRec>, for_settle: bool) -> Result<Bill> {
    let kind = VisitKind::parse(&visit.visit_kind, "visit_kind")?;
    // A settled visit has nothing left to quote either: its claim is already in the
    // accumulators a pre-settle would use, so the estimate would be wrong.
    if visit.state == VisitState::Settled {
        return Err(Error::FailedPrecondition(format!(
            "visit {} is already settled; cancel its settlement (CancelSettlement: yidi hospital cancel SETTLEMENT_ID; a refused one too) before settling it again",
            visit.visit_id
        )));
    }
    if visit.state == VisitState::Cancelled {
        return Err(Error::FailedPrecondition(format!(
            "visit {} is cancelled; it cannot be priced or settled (open a new visit)",
            visit.visit_id
        )));
    }
    if for_settle && kind == VisitKind::Inpatient && visit.state != VisitState::Closed {
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
pub(super) fn bill_not_future(bill: &Bill, clock: &crate::clock::Clock) -> Result<()> {
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
    pub(super) fn claim_visit(&self, use_account: bool) -> proto::ClaimVisit {
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

    pub(super) fn visit_ctx(
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
pub(super) fn person_from(
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

/// Milliseconds since the epoch, for outbox scheduling.
#[must_use]
pub fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}
