//! Undoing a visit's steps: CancelVisit (a registration or admission withdrawn, NHSA
//! 2202 / 2404) and ReopenVisit (a discharge undone, NHSA 2405). Both are refused while
//! the visit has a live settlement: that must be cancelled first (CancelSettlement), so
//! that no claim stands on a visit that no longer exists or is still running.

use rusqlite::Connection;
use yidi_common::proto;

use super::{hospital_write::hospital_write, shared::own_visit, visit::visit_to_proto};
use crate::store::states::{SettlementState, VisitState};
use crate::{
    Error, Result,
    context::NodeState,
    store::{
        settlements,
        visits::{self, VisitRec},
    },
};

/// Refuses a visit that has a settlement not cancelled (pending, settled, provisional,
/// refused or disputed), naming it and what to do.
fn no_live_settlement(conn: &Connection, v: &VisitRec, what: &str) -> Result<()> {
    let live = settlements::live_for_visit(conn, &v.visit_id)?
        .filter(|s| s.state != SettlementState::Cancelled);
    if let Some(s) = live {
        return Err(Error::FailedPrecondition(format!(
            "visit {} has settlement {} ({}); cancel it (CancelSettlement) before {what}",
            v.visit_id, s.settlement_id, s.state
        )));
    }
    Ok(())
}

/// HospitalService.CancelVisit: the visit becomes `cancelled`, for good. Its fee lines
/// stay as a record but can no longer be changed, priced or settled.
pub async fn cancel_visit(st: &NodeState, req: proto::CancelVisitRequest) -> Result<proto::Visit> {
    hospital_write(st, req, "CancelVisit", |conn, req| {
        let v = own_visit(conn, &req.institution_code, &req.visit_id)?;
        if v.state == VisitState::Cancelled {
            return Err(Error::FailedPrecondition(format!(
                "visit {} is already cancelled",
                v.visit_id
            )));
        }
        no_live_settlement(conn, &v, "cancelling the visit")?;
        if !v.state.can_become(VisitState::Cancelled) {
            return Err(Error::FailedPrecondition(format!(
                "visit {} is {}; only an open or closed visit can be cancelled",
                v.visit_id, v.state
            )));
        }
        visits::set_state(conn, &v.visit_id, VisitState::Cancelled, None)?;
        tracing::info!(visit = %v.visit_id, reason = %req.reason, "visit cancelled");
        Ok(visit_to_proto(&own_visit(
            conn,
            &req.institution_code,
            &req.visit_id,
        )?))
    })
    .await
}

/// HospitalService.ReopenVisit: a closed (discharged) visit is open again, its closing
/// time cleared, so that fees may be added and it is discharged again before settlement.
pub async fn reopen_visit(st: &NodeState, req: proto::ReopenVisitRequest) -> Result<proto::Visit> {
    hospital_write(st, req, "ReopenVisit", |conn, req| {
        let v = own_visit(conn, &req.institution_code, &req.visit_id)?;
        no_live_settlement(conn, &v, "undoing its discharge")?;
        if v.state != VisitState::Closed {
            return Err(Error::FailedPrecondition(format!(
                "visit {} is {}; only a closed (discharged) visit can be reopened",
                v.visit_id, v.state
            )));
        }
        visits::reopen(conn, &v.visit_id)?;
        Ok(visit_to_proto(&own_visit(
            conn,
            &req.institution_code,
            &req.visit_id,
        )?))
    })
    .await
}
