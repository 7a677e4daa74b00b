//! Calls to the home node for what pricing needs (eligibility, a policy version) and
//! how a failed call is read: unreachable (its outcome unknown) or refused.

use std::sync::Arc;

use chrono::NaiveDate;
use tonic::Code;
use yidi_common::{
    period,
    policy::Policy,
    proto,
    region::RegionCode,
    types::{HospitalLevel, InsuranceType, VisitKind},
};

use crate::settlement::home;
use crate::{
    Error, Result,
    context::NodeState,
    store::{policies, visits::VisitRec},
};

/// Why a call to a home node did not produce an answer.
pub(super) enum PeerFail {
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

pub(super) fn classify(home: &str, s: &tonic::Status) -> PeerFail {
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
pub(super) fn never_sent(s: &tonic::Status) -> bool {
    let mut source = std::error::Error::source(s);
    while let Some(e) = source {
        if e.is::<tonic::ConnectError>() {
            return true;
        }
        source = e.source();
    }
    false
}

pub(super) fn fail_to_error(f: PeerFail) -> Error {
    match f {
        PeerFail::Unreachable(m) => Error::Unavailable(m),
        PeerFail::Refused(e) => e,
    }
}

/// The home node's eligibility answer for a person (local or over the network).
pub(super) async fn eligibility(
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

/// A home region's policy version: cached, or fetched once from the home node.
pub(super) async fn home_policy(
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

pub(super) fn eligibility_request(
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
