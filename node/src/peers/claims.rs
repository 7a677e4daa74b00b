//! Claims bound for one home node travel together. A settlement hands its claim to the
//! peer's gatherer and awaits its own answer; at most [`SENDERS`] calls carrying claims
//! are in flight to a home node at a time, and whatever claims arrived while they were
//! out leave together in the next one (up to [`MAX_BATCH`]) as one CommitClaims, which
//! the home node applies in one transaction. Nothing waits for company: a claim that
//! finds a sender free leaves at once, so an unloaded settlement is not slowed, and the
//! batches grow only as fast as claims arrive. A batch of one goes as a plain
//! CommitClaim, as does everything for a home node that answered CommitClaims with
//! UNIMPLEMENTED (a node older than the call).

use std::{
    collections::VecDeque,
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use prost::Message as _;
use tokio::sync::oneshot;
use tonic::{Code, Status};
use yidi_common::proto;

use super::Peer;

/// Calls carrying claims in flight to one home node at a time.
pub const SENDERS: usize = 2;
/// Most claims in one CommitClaims (the home node's limit, `limits::COMMIT_BATCH`).
pub const MAX_BATCH: usize = crate::limits::COMMIT_BATCH;
/// A batch takes no further claim once its encoding is this large: well under the
/// peer service's request size bound, whatever the claims' bills.
const MAX_BATCH_BYTES: usize = 1024 * 1024;

/// Metadata on a claim's refusal that certainly committed nothing at the home node (its
/// store refused the write): the treatment node need not hold the claim in doubt.
pub const NOT_COMMITTED: &str = "yidi-not-committed";

type Answer = Result<proto::CommitClaimResponse, Status>;

struct Waiting {
    req: proto::CommitClaimRequest,
    reply: oneshot::Sender<Answer>,
}

#[derive(Default)]
struct Queue {
    waiting: VecDeque<Waiting>,
    senders: usize,
}

/// The claims waiting for one home node; shared by the clones of its [`Peer`].
#[derive(Default)]
pub struct Gatherer {
    queue: Mutex<Queue>,
    /// Set once the home node answered CommitClaims with UNIMPLEMENTED.
    single_only: AtomicBool,
}

impl Peer {
    /// Commits a claim at this home node, in a batch with the other claims bound for it
    /// at the same moment; answered exactly as a CommitClaim of this claim alone would
    /// be (a failure of the whole call is every claim's failure, with its cause).
    pub async fn commit_claim(&self, req: proto::CommitClaimRequest) -> Answer {
        if self.claims.single_only.load(Ordering::Relaxed) {
            return self.commit_one(req).await;
        }
        let (reply, answer) = oneshot::channel();
        let start = {
            let mut q = self
                .claims
                .queue
                .lock()
                .map_err(|_| Status::internal("claim queue lock poisoned"))?;
            q.waiting.push_back(Waiting { req, reply });
            let free = q.senders < SENDERS;
            if free {
                q.senders += 1;
            }
            free
        };
        if start {
            let peer = self.clone();
            tokio::spawn(async move { peer.send_waiting().await });
        }
        answer.await.unwrap_or_else(|_| {
            Err(Status::unknown(
                "the call carrying the claim ended without an answer; its outcome is not known",
            ))
        })
    }

    async fn commit_one(&self, req: proto::CommitClaimRequest) -> Answer {
        self.client()
            .commit_claim(req)
            .await
            .map(tonic::Response::into_inner)
    }

    /// A sender: takes what is waiting, sends it, and goes on until nothing waits.
    async fn send_waiting(self) {
        loop {
            let batch: Vec<Waiting> = {
                let Ok(mut q) = self.claims.queue.lock() else {
                    return;
                };
                if q.waiting.is_empty() {
                    q.senders -= 1;
                    return;
                }
                let (mut n, mut bytes) = (0, 0);
                for w in q.waiting.iter().take(MAX_BATCH) {
                    if n > 0 && bytes + w.req.encoded_len() > MAX_BATCH_BYTES {
                        break;
                    }
                    bytes += w.req.encoded_len();
                    n += 1;
                }
                q.waiting.drain(..n).collect()
            };
            self.send(batch).await;
        }
    }

    async fn send(&self, mut batch: Vec<Waiting>) {
        if batch.len() == 1 || self.claims.single_only.load(Ordering::Relaxed) {
            self.send_singly(batch).await;
            return;
        }
        let claims = batch.iter().map(|w| w.req.clone()).collect();
        let answered = self
            .client()
            .commit_claims(proto::CommitClaimsRequest { claims })
            .await;
        match answered {
            Ok(resp) => {
                let outcomes = resp.into_inner().outcomes;
                if outcomes.len() != batch.len() {
                    let s = Status::unknown(format!(
                        "home node {} answered {} outcomes for {} claims; their outcomes are not known",
                        self.region,
                        outcomes.len(),
                        batch.len()
                    ));
                    for w in batch {
                        let _ = w.reply.send(Err(s.clone()));
                    }
                    return;
                }
                for (w, o) in batch.into_iter().zip(outcomes) {
                    let _ = w.reply.send(answer_of(o));
                }
            }
            Err(s) if s.code() == Code::Unimplemented => {
                tracing::info!(home = %self.region, "home node has no CommitClaims; its claims go one by one");
                self.claims.single_only.store(true, Ordering::Relaxed);
                self.send_singly(std::mem::take(&mut batch)).await;
            }
            Err(s) => {
                for w in batch {
                    let _ = w.reply.send(Err(s.clone()));
                }
            }
        }
    }

    async fn send_singly(&self, batch: Vec<Waiting>) {
        futures::future::join_all(batch.into_iter().map(|w| async move {
            let answer = self.commit_one(w.req).await;
            let _ = w.reply.send(answer);
        }))
        .await;
    }
}

/// A claim's answer from its outcome in a CommitClaims, as CommitClaim gives it.
fn answer_of(o: proto::CommitClaimOutcome) -> Answer {
    if o.code == 0 {
        return o.committed.ok_or_else(|| {
            Status::unknown("the home node answered a claim with neither a commit nor a refusal")
        });
    }
    let mut s = Status::new(Code::from_i32(o.code), o.message);
    if o.not_committed {
        s.metadata_mut().insert(
            NOT_COMMITTED,
            tonic::metadata::MetadataValue::from_static("1"),
        );
    }
    Err(s)
}
