//! UpdateVisit (NHSA 2203 visit information, 2403 admission change): what the node keeps
//! of a visit besides its state — the main diagnosis and the institution's visit number —
//! changed before settlement. A settled visit's record is what its claim was priced on,
//! so it is refused until the settlement is cancelled; a cancelled visit is final.

use yidi_common::{period, proto};

use super::{
    shared::{check_institution, institution_given, own_visit, scope},
    visit::visit_to_proto,
};
use crate::store::states::VisitState;
use crate::{
    Error, Result,
    context::NodeState,
    idempotency::{self, RequestKey, payload_hash},
    store::visits,
};

/// HospitalService.UpdateVisit: an empty field keeps what is recorded.
pub async fn update_visit(
    st: &NodeState,
    mut req: proto::UpdateVisitRequest,
) -> Result<proto::Visit> {
    let sc = scope(&req.institution_code);
    let payload = payload_hash(&mut req, |r| &mut r.request_id);
    let key = RequestKey::new(&sc, &req.request_id, "UpdateVisit", payload)?;
    institution_given(&req.institution_code)?;
    let diagnosis = req.diagnosis_code.trim().to_owned();
    let ext = req.external_visit_no.trim().to_owned();
    if ext.chars().count() > 64 {
        return Err(Error::invalid(
            "external_visit_no",
            "must be 1–64 characters (the institution's own visit number), or empty to keep it",
        ));
    }
    if diagnosis.is_empty() && ext.is_empty() {
        return Err(Error::invalid(
            "diagnosis_code",
            "nothing to change: give diagnosis_code, external_visit_no or both",
        ));
    }
    st.store
        .write(move |conn| {
            check_institution(conn, &req.institution_code, period::today())?;
            idempotency::once(conn, &key, |conn| {
                let v = own_visit(conn, &req.institution_code, &req.visit_id)?;
                match v.state {
                    VisitState::Settled => {
                        return Err(Error::FailedPrecondition(format!(
                            "visit {} is settled; cancel its settlement (CancelSettlement) before changing the visit",
                            v.visit_id
                        )));
                    }
                    VisitState::Cancelled => {
                        return Err(Error::FailedPrecondition(format!(
                            "visit {} is cancelled; it can no longer be changed",
                            v.visit_id
                        )));
                    }
                    VisitState::Open | VisitState::Closed => {}
                }
                let diagnosis = if diagnosis.is_empty() {
                    v.diagnosis_code.clone()
                } else {
                    diagnosis
                };
                let ext = if ext.is_empty() {
                    v.external_visit_no.clone()
                } else {
                    ext
                };
                visits::set_info(conn, &v.visit_id, &diagnosis, &ext)?;
                Ok(visit_to_proto(&own_visit(
                    conn,
                    &req.institution_code,
                    &req.visit_id,
                )?))
            })
        })
        .await
}
