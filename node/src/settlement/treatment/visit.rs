//! Visits: OpenVisit (registration or admission, with the home node's eligibility
//! kept for offline settlement) and CloseVisit (discharge).

use std::sync::Arc;

use chrono::{DateTime, NaiveDate, Utc};
use prost::Message;
use yidi_common::{idnum::IdNumber, period, proto, region::RegionCode, types::VisitKind};

use super::{
    home_calls::{PeerFail, eligibility},
    shared::{check_institution, institution_given, own_visit, scope},
};
use crate::settlement::home;
use crate::store::states::VisitState;
use crate::{
    Error, Result,
    context::NodeState,
    idempotency::{self, RequestKey, payload_hash},
    store::{
        institutions::InstitutionRec,
        sequences,
        visits::{self, VisitRec},
    },
};

pub(super) fn visit_to_proto(v: &VisitRec) -> proto::Visit {
    proto::Visit {
        visit_id: v.visit_id.clone(),
        institution_code: v.institution_code.clone(),
        id_number: v.id_number.clone(),
        home_region: v.home_region.clone(),
        visit_kind: VisitKind::parse(&v.visit_kind, "visit_kind")
            .map(VisitKind::to_proto)
            .unwrap_or_default(),
        external_visit_no: v.external_visit_no.clone(),
        state: v.state.to_string(),
        opened_at: v.opened_at.clone(),
        closed_at: v.closed_at.clone().unwrap_or_default(),
        diagnosis_code: v.diagnosis_code.clone(),
    }
}

/// An OpenVisit request checked against its institution.
pub(super) struct Opening {
    inst: InstitutionRec,
    id: IdNumber,
    home: RegionCode,
    kind: VisitKind,
    ext: String,
    opened: DateTime<Utc>,
    visit_date: NaiveDate,
}

pub(super) fn check_opening(
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
                    state: VisitState::Open,
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
                if v.state != VisitState::Open {
                    return Err(Error::FailedPrecondition(format!(
                        "visit {} is {}, only an open visit can be closed",
                        v.visit_id, v.state
                    )));
                }
                let ts = period::format_ts(at);
                visits::set_state(conn, &v.visit_id, VisitState::Closed, Some(&ts))?;
                Ok(visit_to_proto(&own_visit(
                    conn,
                    &req.institution_code,
                    &req.visit_id,
                )?))
            })
        })
        .await
}
