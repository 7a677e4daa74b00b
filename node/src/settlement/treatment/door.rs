//! The door of Settle and PreSettle (`crate::admission`): a new call passes its gate
//! before anything is read or written for it, or is refused unchanged. A Settle that
//! repeats a request already recorded here passes even when the gate refuses: its
//! answer is stored, or its intent is being finished, and the hospital must learn it.

use crate::{
    Error, Result,
    admission::{Permit, Refusal},
    context::NodeState,
    idempotency::{self, RequestKey},
    store::{settlements, states::SettlementState},
};

fn at_capacity(r: Refusal) -> Error {
    Error::AtCapacity {
        message: r.message,
        retry_after_ms: u64::try_from(r.retry_after.as_millis()).unwrap_or(u64::MAX),
    }
}

/// Lets a Settle in, or refuses it (RESOURCE_EXHAUSTED, nothing done) — unless its
/// request is already recorded, which is looked up only then: an admitted call pays
/// nothing for the check.
pub(super) async fn admit_settle(st: &NodeState, key: &RequestKey) -> Result<Permit> {
    let refusal = match st.admission.settle.enter().await {
        Ok(permit) => return Ok(permit),
        Err(r) => r,
    };
    let (scope, id) = (key.scope.clone(), key.request_id.clone());
    let recorded = st
        .store
        .read(move |conn| {
            if idempotency::method_of(conn, &scope, &id)?.is_some() {
                return Ok(true);
            }
            Ok(settlements::by_request(conn, &scope, &id)?
                .is_some_and(|r| r.state != SettlementState::Failed))
        })
        .await?;
    if recorded {
        return Ok(Permit::unmetered());
    }
    st.admission.settle.shed();
    Err(at_capacity(refusal))
}

/// Lets a PreSettle in, or refuses it (nothing is ever recorded for one).
pub(super) async fn admit_pre_settle(st: &NodeState) -> Result<Permit> {
    st.admission.pre_settle.enter().await.map_err(|r| {
        st.admission.pre_settle.shed();
        at_capacity(r)
    })
}
