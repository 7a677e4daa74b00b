//! The frame of a hospital's plain state-changing request (one that needs nothing but
//! its institution and its store): the request id claimed under the institution's
//! scope, then in one writer job the institution checked as of today and the effect run
//! once, so that a repeat of the request answers what it answered the first time.

use prost::Message;
use rusqlite::Connection;
use yidi_common::{period, proto};

use super::shared::{check_institution, institution_given, scope};
use crate::{
    Result,
    context::NodeState,
    idempotency::{self, RequestKey, payload_hash},
};

/// A hospital's request: its request id and the institution it comes from.
pub(super) trait HospitalRequest: Message + Send + 'static {
    fn request_id(&mut self) -> &mut String;
    fn institution(&self) -> &str;
}

macro_rules! hospital_request {
    ($($t:ty),* $(,)?) => {$(
        impl HospitalRequest for $t {
            fn request_id(&mut self) -> &mut String {
                &mut self.request_id
            }
            fn institution(&self) -> &str {
                &self.institution_code
            }
        }
    )*};
}

hospital_request!(
    proto::UndoFeesRequest,
    proto::CancelVisitRequest,
    proto::ReopenVisitRequest,
);

/// Runs `effect` for `req` (RPC `method`) once, in the frame described above.
pub(super) async fn hospital_write<M, R>(
    st: &NodeState,
    mut req: M,
    method: &'static str,
    effect: impl FnOnce(&Connection, &M) -> Result<R> + Send + 'static,
) -> Result<R>
where
    M: HospitalRequest,
    R: Message + Default + Send + 'static,
{
    let sc = scope(req.institution());
    let payload = payload_hash(&mut req, M::request_id);
    let key = RequestKey::new(&sc, req.request_id(), method, payload)?;
    institution_given(req.institution())?;
    st.store
        .write(move |conn| {
            check_institution(conn, req.institution(), period::today())?;
            idempotency::once(conn, &key, |conn| effect(conn, &req))
        })
        .await
}
