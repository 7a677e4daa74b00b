//! PeerService: what other nodes ask of this node as the home region. Every
//! state-changing call is idempotent per calling region and request id, and every read of
//! a person's data by a peer is logged.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use yidi_common::{
    idnum, money, period,
    proto::{self, peer_service_server::PeerService},
    region::RegionCode,
    types::InsuranceType,
};

mod batch;

use crate::context::State;
use crate::{
    Error, Result,
    idempotency::{self, RequestKey, payload_hash},
    identity::Identity,
    settlement::{home, treatment},
    store::{
        audit::{self, Action, Entry},
        claims,
        ledger::{self, Side},
        policies,
    },
};

/// The PeerService implementation.
pub struct PeerSvc {
    state: State,
}

impl PeerSvc {
    #[must_use]
    pub fn new(state: State) -> Self {
        Self { state }
    }
}

/// The PeerService's clock check, run before any call: a calling node sends its clock
/// ([`crate::clock::CLOCK_HEADER`]); one further from this node's than the configured
/// bound, either way, is refused with FAILED_PRECONDITION and nothing is done — a claim
/// it dates would land in another period or year than the one it belongs to. Every
/// reading is kept as a gauge, every refusal counted and logged. A call without the
/// header (a tool, or a node from before the check) passes; the home node still
/// refuses a claim dated ahead of its own clock (`home::check_dates`).
pub fn clock_check(
    state: State,
) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone + Send + Sync + 'static {
    move |req: Request<()>| {
        let Some(theirs) = req
            .metadata()
            .get(crate::clock::CLOCK_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<i64>().ok())
        else {
            return Ok(req);
        };
        let peer = crate::auth::caller(&req)
            .map(|c| c.peer_region(""))
            .unwrap_or_else(|_| "unknown".to_owned());
        let (skew_ms, beyond) = state.clock.skew_of(theirs);
        state.metrics.peer_clocks().observe(&peer, skew_ms, beyond);
        if !beyond {
            return Ok(req);
        }
        let ahead = if skew_ms > 0 { "ahead of" } else { "behind" };
        tracing::error!(%peer, skew_ms, bound_s = state.clock.max_skew().as_secs(), "peer node's clock is off; its calls are refused");
        let mut status = Status::failed_precondition(format!(
            "the clock of the calling node ({peer}) is {} s {ahead} this node's; calls are refused beyond {} s — correct the clock (NTP) of the node that is off; nothing was done",
            skew_ms.unsigned_abs() / 1000,
            state.clock.max_skew().as_secs(),
        ));
        status.metadata_mut().insert(
            crate::clock::CLOCK_REFUSED,
            tonic::metadata::MetadataValue::from_static("1"),
        );
        Err(status)
    }
}

/// The answer to a CommitClaim whose write failed. Only a failure that certainly
/// committed nothing — the store refused or dropped the job, or it failed inside its
/// savepoint (a full disk, an I/O error) and was rolled back — is tagged
/// [`home::NOT_COMMITTED`], on which the treatment node fails its intent without
/// asking again. A failed COMMIT may have left the whole commit in the log, which
/// recovery brings back: that claim stays in doubt at the treatment node, which asks
/// for its status (and abandons it if unknown).
fn commit_failure(region: RegionCode, claim: &str, e: Error) -> Status {
    match e {
        Error::Unavailable(m) => {
            tracing::error!(claim = %claim, error = %m, "cannot store a claim");
            let mut s = Status::unavailable(format!(
                "home node {region} cannot store claims now (its store refused the write: {m}); nothing was committed"
            ));
            s.metadata_mut().insert(
                home::NOT_COMMITTED,
                tonic::metadata::MetadataValue::from_static("1"),
            );
            s
        }
        // Refused unrun by a full write queue: nothing was committed either, and the
        // treatment node must know it (else it takes the claim for in doubt and may
        // settle it offline while this node is up).
        Error::ResourceExhausted(m) => {
            tracing::warn!(claim = %claim, error = %m, "a claim refused: write queue full");
            let mut s = Status::resource_exhausted(format!(
                "home node {region} is overloaded ({m}); nothing was committed"
            ));
            s.metadata_mut().insert(
                home::NOT_COMMITTED,
                tonic::metadata::MetadataValue::from_static("1"),
            );
            s
        }
        Error::CommitUnknown(m) => {
            tracing::error!(claim = %claim, error = %m, "a claim's commit failed; it may be saved");
            Status::unavailable(format!(
                "home node {region} could not confirm storing the claim ({m}); whether it was committed is not known"
            ))
        }
        other => Status::from(other),
    }
}

/// The checks of a claim before its write, shared by CommitClaim and CommitClaims: the
/// treatment region, the claim id's issuer, the dates against this node's clock; gives
/// the claim's request key.
fn commit_key(state: &State, req: &mut proto::CommitClaimRequest) -> Result<RequestKey, Status> {
    let treatment = caller(&req.treatment_region, "treatment_region")?;
    if treatment == state.region {
        return Err(Error::invalid(
            "treatment_region",
            "a node does not commit claims to itself over the network",
        )
        .into());
    }
    if req.claim_id.is_empty() || !req.claim_id.starts_with(treatment.as_str()) {
        return Err(
            Error::invalid("claim_id", format!("must be an id issued by {treatment}")).into(),
        );
    }
    home::check_dates(req, &state.clock)?;
    let payload = payload_hash(req, |r| &mut r.request_id);
    Ok(RequestKey::new(
        &format!("peer:{treatment}"),
        &req.request_id,
        "CommitClaim",
        payload,
    )?)
}

/// The test hook that fails a claim's write as a full disk would.
fn store_full_hook(full: &std::sync::atomic::AtomicBool) -> Result<()> {
    if full.load(std::sync::atomic::Ordering::SeqCst) {
        return Err(Error::from(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
            Some("database or disk is full (test hook)".into()),
        )));
    }
    Ok(())
}

/// One claim's write, in the caller's transaction: exactly once by its request key,
/// with its audit entry (no claim without its entry).
fn commit_one(
    conn: &rusqlite::Connection,
    cache: &crate::policy_cache::PolicyCache,
    region: RegionCode,
    key: &RequestKey,
    req: &proto::CommitClaimRequest,
    entry: &Entry,
) -> Result<proto::CommitClaimResponse> {
    let out = home::commit_once(conn, cache, region, key, req)?;
    audit::record(conn, entry)?;
    Ok(out)
}

fn caller(region: &str, field: &str) -> Result<RegionCode> {
    Ok(RegionCode::parse_city(region, field)?)
}

#[tonic::async_trait]
impl PeerService for PeerSvc {
    async fn get_policy(
        &self,
        req: Request<proto::PeerGetPolicyRequest>,
    ) -> Result<Response<proto::PolicyVersion>, Status> {
        crate::limits::check(req.get_ref())?;
        let req = req.into_inner();
        let it = InsuranceType::from_proto(req.insurance_type, "insurance_type")?;
        let region = self.state.region;
        let date = if req.on_date.is_empty() {
            period::today()
        } else {
            period::parse_date(&req.on_date, "on_date").map_err(Error::from)?
        };
        let version = req.version;
        let p = self
            .state
            .store
            .read(move |conn| {
                let p = if version > 0 {
                    policies::get(conn, it, version)?
                } else {
                    policies::in_force(conn, it, date)?
                };
                p.ok_or_else(|| Error::NotFound(format!("region {region} has no such {it} policy")))
            })
            .await?;
        Ok(Response::new(proto::PolicyVersion {
            region: region.to_string(),
            insurance_type: p.insurance_type.to_proto(),
            version: p.version,
            effective_from: p.effective_from.to_string(),
            policy_json: p.policy_json,
            digest: p.digest,
            published_at: p.published_at,
            note: p.note,
            unchanged: false,
        }))
    }

    async fn lookup_person(
        &self,
        req: Request<proto::LookupPersonRequest>,
    ) -> Result<Response<proto::LookupPersonResponse>, Status> {
        crate::limits::check(req.get_ref())?;
        let who = crate::auth::caller(&req)?;
        let req = req.into_inner();
        let entry = Entry::about(
            who.peer_region(""),
            who.serial(),
            Action::LookupPerson,
            "",
            &req.card_no,
            "",
        )
        .person_hash(&req.id_number_hash);
        let answer = self.lookup_person_checked(req).await;
        audit::record_detached(
            &self.state.store,
            match &answer {
                Ok(found) if found.found => entry.person(&found.id_number),
                Ok(_) => entry.outcome("NOT_FOUND"),
                Err(status) => entry.refused(status),
            },
        );
        answer.map(Response::new)
    }

    async fn check_eligibility(
        &self,
        req: Request<proto::CheckEligibilityRequest>,
    ) -> Result<Response<proto::EligibilityResponse>, Status> {
        crate::limits::check(req.get_ref())?;
        let who = crate::auth::caller(&req)?;
        let req = req.into_inner();
        let delay = self
            .state
            .hooks
            .eligibility_delay_ms
            .load(std::sync::atomic::Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
        }
        let entry = Entry::about(
            who.peer_region(&req.treatment_region),
            who.serial(),
            Action::CheckEligibility,
            &req.id_number,
            "",
            &req.institution_code,
        );
        let answer = match who.check_region("treatment_region", &req.treatment_region) {
            Ok(()) => self.check_eligibility_checked(req).await,
            Err(status) => Err(status),
        };
        audit::record_detached(
            &self.state.store,
            match &answer {
                Ok(_) => entry,
                Err(status) => entry.refused(status),
            },
        );
        answer.map(Response::new)
    }

    async fn commit_claim(
        &self,
        req: Request<proto::CommitClaimRequest>,
    ) -> Result<Response<proto::CommitClaimResponse>, Status> {
        crate::limits::check(req.get_ref())?;
        let who = crate::auth::caller(&req)?;
        let req = req.into_inner();
        let entry = Entry::about(
            who.peer_region(&req.treatment_region),
            who.serial(),
            Action::CommitClaim,
            &req.id_number,
            &req.claim_id,
            req.visit
                .as_ref()
                .map_or("", |v| v.institution_code.as_str()),
        );
        let answer = match who.check_region("treatment_region", &req.treatment_region) {
            Ok(()) => self.commit_claim_checked(req, entry.clone()).await,
            Err(status) => Err(status),
        };
        // A committed claim's entry is part of its transaction; a refusal is noted apart.
        if let Err(status) = &answer {
            audit::record_detached(&self.state.store, entry.refused(status));
        }
        answer.map(Response::new)
    }

    async fn commit_claims(
        &self,
        req: Request<proto::CommitClaimsRequest>,
    ) -> Result<Response<proto::CommitClaimsResponse>, Status> {
        crate::limits::check(req.get_ref())?;
        let who = crate::auth::caller(&req)?;
        self.commit_claims_checked(&who, req.into_inner().claims)
            .await
            .map(Response::new)
    }

    async fn reverse_claim(
        &self,
        req: Request<proto::ReverseClaimRequest>,
    ) -> Result<Response<proto::CommitClaimResponse>, Status> {
        crate::limits::check(req.get_ref())?;
        let who = crate::auth::caller(&req)?;
        let req = req.into_inner();
        let entry = Entry::about(
            who.peer_region(&req.treatment_region),
            who.serial(),
            Action::ReverseClaim,
            "",
            &req.claim_id,
            "",
        );
        let answer = match who.check_region("treatment_region", &req.treatment_region) {
            Ok(()) => self.reverse_claim_checked(req, entry.clone()).await,
            Err(status) => Err(status),
        };
        if let Err(status) = &answer {
            audit::record_detached(&self.state.store, entry.refused(status));
        }
        answer.map(Response::new)
    }

    async fn claim_status(
        &self,
        req: Request<proto::ClaimStatusRequest>,
    ) -> Result<Response<proto::ClaimStatusResponse>, Status> {
        crate::limits::check(req.get_ref())?;
        let who = crate::auth::caller(&req)?;
        let id = req.into_inner().claim_id;
        if id.is_empty() {
            return Err(Error::invalid("claim_id", "missing").into());
        }
        // A node asks only about claims it issued (claim ids start with the issuer).
        if let Some(Identity::Node { region }) = who.identity()
            && !id.starts_with(region.as_str())
        {
            return Err(Status::permission_denied(format!(
                "claim {id} was not issued by the calling node {region}"
            )));
        }
        Ok(Response::new(
            self.state
                .store
                .read(move |conn| home::status(conn, &id))
                .await?,
        ))
    }

    async fn period_digest(
        &self,
        req: Request<proto::PeriodDigestRequest>,
    ) -> Result<Response<proto::PeriodDigestResponse>, Status> {
        crate::limits::check(req.get_ref())?;
        let who = crate::auth::caller(&req)?;
        let req = req.into_inner();
        who.check_region("counterparty", &req.counterparty)?;
        self.period_digest_checked(req).await.map(Response::new)
    }

    async fn push_adjustment(
        &self,
        req: Request<proto::AdjustmentRequest>,
    ) -> Result<Response<proto::AdjustmentResponse>, Status> {
        crate::limits::check(req.get_ref())?;
        let who = crate::auth::caller(&req)?;
        let req = req.into_inner();
        who.check_region("from_region", &req.from_region)?;
        self.push_adjustment_checked(req).await.map(Response::new)
    }
}

/// The calls after the caller's identity was checked against the payload.
impl PeerSvc {
    async fn lookup_person_checked(
        &self,
        req: proto::LookupPersonRequest,
    ) -> Result<proto::LookupPersonResponse, Status> {
        if req.card_no.is_empty() == req.id_number_hash.is_empty() {
            return Err(
                Error::invalid("card_no", "give exactly one of card_no or id_number_hash").into(),
            );
        }
        if !req.id_number_hash.is_empty()
            && (req.id_number_hash.len() != 64
                || !req.id_number_hash.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(
                Error::invalid("id_number_hash", "must be 64 hex characters (SHA-256)").into(),
            );
        }
        let region = self.state.region;
        Ok(self
            .state
            .store
            .read(move |conn| treatment::lookup_local(conn, region, &req))
            .await?)
    }

    async fn check_eligibility_checked(
        &self,
        req: proto::CheckEligibilityRequest,
    ) -> Result<proto::EligibilityResponse, Status> {
        let treatment = caller(&req.treatment_region, "treatment_region")?;
        idnum::IdNumber::parse(&req.id_number, "id_number").map_err(Error::from)?;
        let cache = Arc::clone(&self.state.policies);
        let region = self.state.region;
        // Debug, not info: one line per cross-region settlement would drown a busy
        // node's log, and the audit log keeps every read for good.
        tracing::debug!(peer = %treatment, person = %idnum::lookup_hash(&req.id_number)[..12], institution = %req.institution_code, "peer read of person data (eligibility)");
        Ok(self
            .state
            .store
            .read(move |conn| home::eligibility(conn, &cache, region, treatment.as_str(), &req))
            .await?)
    }

    async fn commit_claim_checked(
        &self,
        mut req: proto::CommitClaimRequest,
        entry: Entry,
    ) -> Result<proto::CommitClaimResponse, Status> {
        let key = commit_key(&self.state, &mut req)?;
        if self
            .state
            .hooks
            .home_commit_unanswered
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            return Err(Status::unavailable("the call was lost (test hook)"));
        }
        let cache = Arc::clone(&self.state.policies);
        let region = self.state.region;
        let claim = req.claim_id.clone();
        let full = Arc::clone(&self.state.hooks.home_store_full);
        let out = self
            .state
            .store
            .write_as(crate::store::JobKind::ClaimCommit, move |conn| {
                store_full_hook(&full)?;
                commit_one(conn, &cache, region, &key, &req, &entry)
            })
            .await
            .map_err(|e| commit_failure(region, &claim, e))?;
        tracing::debug!(claim = %claim, "claim committed for a treatment region");
        Ok(out)
    }

    async fn reverse_claim_checked(
        &self,
        mut req: proto::ReverseClaimRequest,
        entry: Entry,
    ) -> Result<proto::CommitClaimResponse, Status> {
        let treatment = caller(&req.treatment_region, "treatment_region")?;
        if req.claim_id.is_empty() || !req.claim_id.starts_with(treatment.as_str()) {
            return Err(
                Error::invalid("claim_id", format!("must be an id issued by {treatment}")).into(),
            );
        }
        period::parse_ts(&req.reversed_at, "reversed_at").map_err(Error::from)?;
        let payload = payload_hash(&mut req, |r| &mut r.request_id);
        let key = RequestKey::new(
            &format!("peer:{treatment}"),
            &req.request_id,
            "ReverseClaim",
            payload,
        )?;
        let lose_answer = req.abandon_only
            && self
                .state
                .hooks
                .abandon_answer_lost
                .load(std::sync::atomic::Ordering::SeqCst);
        let out = self
            .state
            .store
            .write_as(crate::store::JobKind::ClaimCommit, move |conn| {
                let out = idempotency::once(conn, &key, |conn| {
                    home::reverse(conn, treatment.as_str(), &req)
                })?;
                let person = claims::get(conn, &req.claim_id)?
                    .map(|c| c.id_number)
                    .unwrap_or_default();
                audit::record(conn, &entry.person(&person))?;
                Ok(out)
            })
            .await?;
        if lose_answer {
            return Err(Status::unavailable("the answer was lost (test hook)"));
        }
        Ok(out)
    }

    async fn period_digest_checked(
        &self,
        req: proto::PeriodDigestRequest,
    ) -> Result<proto::PeriodDigestResponse, Status> {
        let counterparty = caller(&req.counterparty, "counterparty")?;
        let period = yidi_common::period::Period::parse(&req.period, "period")
            .map_err(Error::from)?
            .to_string();
        let side = match req.side.as_str() {
            "receivable" => Side::Receivable,
            "payable" => Side::Payable,
            other => {
                return Err(Error::invalid(
                    "side",
                    format!("expected receivable or payable, got {other:?}"),
                )
                .into());
            }
        };
        let out = self
            .state
            .store
            .read(move |conn| {
                let p = ledger::position(conn, side, counterparty.as_str(), &period)?;
                let claim_ids = if req.include_ids {
                    ledger::entry_ids(conn, side, counterparty.as_str(), &period)?
                } else {
                    Vec::new()
                };
                Ok(proto::PeriodDigestResponse {
                    count: p.count,
                    sum: money::format(money::from_fen(p.sum_fen)),
                    digest: p.digest.to_hex(),
                    claim_ids,
                })
            })
            .await?;
        Ok(out)
    }

    async fn push_adjustment_checked(
        &self,
        mut req: proto::AdjustmentRequest,
    ) -> Result<proto::AdjustmentResponse, Status> {
        let from = caller(&req.from_region, "from_region")?;
        if from == self.state.region || (req.payer != from.as_str() && req.payee != from.as_str()) {
            return Err(Error::invalid(
                "from_region",
                "the sender must be the other party of the adjustment",
            )
            .into());
        }
        if !matches!(
            req.kind.as_str(),
            "deduction" | "reserve_topup" | "reserve_use"
        ) {
            return Err(Error::invalid(
                "kind",
                format!(
                    "unknown adjustment kind {}",
                    yidi_common::error::quoted(&req.kind)
                ),
            )
            .into());
        }
        if !req.entry_id.starts_with(from.as_str()) {
            return Err(
                Error::invalid("entry_id", format!("must be an id issued by {from}")).into(),
            );
        }
        let payload = payload_hash(&mut req, |r| &mut r.request_id);
        let key = RequestKey::new(
            &format!("peer:{from}"),
            &req.request_id,
            "PushAdjustment",
            payload,
        )?;
        let region = self.state.region;
        let out = self
            .state
            .store
            .write_as(crate::store::JobKind::ClaimCommit, move |conn| {
                idempotency::once(conn, &key, |conn| {
                    let period = crate::funds::apply(conn, region, &req)?;
                    Ok(proto::AdjustmentResponse {
                        entry_id: req.entry_id.clone(),
                        period,
                    })
                })
            })
            .await?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only a write that certainly committed nothing tells the treatment node so; a
    /// failed COMMIT leaves the claim in doubt there.
    #[test]
    fn only_a_certain_failure_is_marked_not_committed() {
        let hz = RegionCode::parse_city("330100", "r").unwrap();
        let refused = commit_failure(hz, "c", Error::Unavailable("store: disk full".into()));
        assert_eq!(refused.code(), tonic::Code::Unavailable);
        assert!(refused.metadata().get(home::NOT_COMMITTED).is_some());
        assert!(
            refused.message().contains("nothing was committed"),
            "{refused:?}"
        );
        let unknown = commit_failure(
            hz,
            "c",
            Error::CommitUnknown("the store could not confirm its commit (disk I/O error)".into()),
        );
        assert_eq!(unknown.code(), tonic::Code::Unavailable);
        assert!(unknown.metadata().get(home::NOT_COMMITTED).is_none());
        assert!(
            unknown
                .message()
                .contains("whether it was committed is not known")
                && !unknown.message().contains("nothing was committed"),
            "{unknown:?}"
        );
    }
}
