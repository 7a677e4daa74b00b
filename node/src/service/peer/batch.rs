//! CommitClaims at the home node: the claims a treatment node gathered for this node,
//! applied in writer jobs of at most [`COMMIT_PART`] claims, all queued at once so that
//! they mostly share one transaction and one fsync. Each claim is handled as
//! CommitClaim handles it alone — its checks, exactly once by its request id, the
//! compare-and-set on the accumulators, its audit entry — in a savepoint of its own, so
//! a refused claim rolls back only itself and the others stay committed. Claims run in
//! the order sent: a second claim of the same person is checked against the
//! accumulators the first one left.

use std::sync::Arc;

use tonic::Status;
use yidi_common::proto;

use super::{PeerSvc, commit_failure, commit_key, commit_one, store_full_hook};
use crate::{
    auth::Caller,
    settlement::home,
    store::{
        self,
        audit::{self, Action, Entry},
    },
};

/// Most claims of a batch in one writer job: a full batch in one job would hold the
/// writer (and every settlement queued behind it) for the time of hundreds of claims.
pub const COMMIT_PART: usize = 32;

/// A claim's outcome from the answer CommitClaim would have given for it alone.
fn outcome(answer: Result<proto::CommitClaimResponse, &Status>) -> proto::CommitClaimOutcome {
    match answer {
        Ok(committed) => proto::CommitClaimOutcome {
            committed: Some(committed),
            ..Default::default()
        },
        Err(status) => proto::CommitClaimOutcome {
            committed: None,
            code: status.code() as i32,
            message: status.message().to_owned(),
            not_committed: status.metadata().get(home::NOT_COMMITTED).is_some(),
        },
    }
}

impl PeerSvc {
    pub(super) async fn commit_claims_checked(
        &self,
        who: &Caller,
        claims: Vec<proto::CommitClaimRequest>,
    ) -> Result<proto::CommitClaimsResponse, Status> {
        if self
            .state
            .hooks
            .home_commit_unanswered
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            return Err(Status::unavailable("the call was lost (test hook)"));
        }
        let st = &self.state;
        let mut outcomes: Vec<Option<proto::CommitClaimOutcome>> = vec![None; claims.len()];
        let mut parts = Vec::with_capacity(claims.len());
        for (i, mut req) in claims.into_iter().enumerate() {
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
            let checked = crate::limits::check(&req)
                .map_err(|e| match e {
                    crate::Error::Invalid { field, reason } => {
                        Status::from(crate::Error::Invalid {
                            field: format!("claims[{i}].{field}"),
                            reason,
                        })
                    }
                    other => Status::from(other),
                })
                .and_then(|()| who.check_region("treatment_region", &req.treatment_region))
                .and_then(|()| commit_key(st, &mut req));
            match checked {
                Ok(key) => parts.push((i, key, req, entry)),
                Err(status) => {
                    outcomes[i] = Some(outcome(Err(&status)));
                    audit::record_detached(&st.store, entry.refused(&status));
                }
            }
        }
        // In parts of at most COMMIT_PART claims, each a writer job of its own, all
        // queued at once: consecutive jobs mostly share a transaction and its fsync,
        // but no one job holds the writer for a whole batch.
        let mut pending = Vec::new();
        let mut parts = parts.into_iter().peekable();
        while parts.peek().is_some() {
            let part: Vec<_> = parts.by_ref().take(COMMIT_PART).collect();
            let heads: Vec<(usize, String, Entry)> = part
                .iter()
                .map(|(i, _, req, entry)| (*i, req.claim_id.clone(), entry.clone()))
                .collect();
            let cache = Arc::clone(&st.policies);
            let region = st.region;
            let full = Arc::clone(&st.hooks.home_store_full);
            let written = st
                .store
                .submit_as(store::JobKind::ClaimCommit, move |conn| {
                    store_full_hook(&full)?;
                    Ok(part
                        .iter()
                        .map(|(_, key, req, entry)| {
                            store::in_part(conn, |conn| {
                                commit_one(conn, &cache, region, key, req, entry)
                            })
                        })
                        .collect::<Vec<_>>())
                });
            pending.push((heads, written));
        }
        let region = st.region;
        for (heads, written) in pending {
            match written.await {
                Ok(results) => {
                    for ((i, claim, entry), r) in heads.into_iter().zip(results) {
                        outcomes[i] = Some(match r {
                            Ok(committed) => outcome(Ok(committed)),
                            Err(e) => {
                                let status = commit_failure(region, &claim, e);
                                audit::record_detached(&st.store, entry.refused(&status));
                                outcome(Err(&status))
                            }
                        });
                    }
                }
                // The part as a whole was not stored (or not known to be): every claim
                // in it shares that answer.
                Err(e) => {
                    let status = commit_failure(region, &format!("{} claims", heads.len()), e);
                    for (i, _, entry) in heads {
                        outcomes[i] = Some(outcome(Err(&status)));
                        audit::record_detached(&st.store, entry.refused(&status));
                    }
                }
            }
        }
        Ok(proto::CommitClaimsResponse {
            outcomes: outcomes.into_iter().flatten().collect(),
        })
    }
}
