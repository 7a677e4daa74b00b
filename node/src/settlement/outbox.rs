//! Delivers the outbox: provisional claims and reversals queued while a home node was
//! unreachable (or, for reversals, always: a cancellation is this node's decision and
//! never waits for the home node). Items go out in order per home region, each after
//! asking the home node what it already has ("read first"), with exponential backoff
//! while it stays unreachable.

use std::{collections::HashSet, future::Future, time::Duration};

use prost::Message;
use tonic::Code;
use yidi_common::{
    money::{self, Sign},
    period::{self, Period},
    proto,
};

use super::treatment::{finish_committed, now_ms};
use crate::store::states::{ClaimState, OutboxKind, SettlementState};
use crate::{
    Error, Result,
    context::NodeState,
    store::{
        ledger::{self, Side},
        outbox::{self, Item},
        settlements,
    },
};

/// Longest wait between two attempts at one item.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// How long an item parked for a record its home node archived waits before it is
/// looked at again: not retried every minute (the home node keeps refusing it until the
/// period is restored there), but gone through by itself once it has been.
pub const PARK_RECHECK: Duration = Duration::from_secs(24 * 3600);

fn backoff(attempts: u32) -> Duration {
    Duration::from_millis(500u64.saturating_mul(1 << attempts.min(8))).min(MAX_BACKOFF)
}

/// Runs deliveries whenever woken (a new item) and once a second, until `stop`.
pub async fn run(st: std::sync::Arc<NodeState>, stop: impl Future<Output = ()>) {
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => return,
            () = st.outbox_wake.notified() => {}
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        if let Err(e) = deliver_due(&st).await {
            tracing::warn!(error = %e, "outbox delivery round failed");
        }
    }
}

/// What happened to one delivery attempt.
enum Outcome {
    Done,
    Retry(String),
    /// Refused by the home node as about a record of a period it archived: the alarm.
    Park(String),
}

/// Delivers every due item once; returns how many were delivered.
pub async fn deliver_due(st: &NodeState) -> Result<usize> {
    let now = now_ms();
    let (items, waiting) = st
        .store
        .read(move |conn| {
            Ok((
                outbox::due(conn, now, 256)?,
                outbox::first_waiting(conn, now)?,
            ))
        })
        .await?;
    let mut blocked: HashSet<String> = HashSet::new();
    let mut delivered = 0;
    for item in items {
        // Keep per-region order: once one item of a region waits, the rest wait too —
        // also behind an older item still backing off (a reversal must never overtake
        // the commit of its claim, or the home node would tombstone the claim first).
        if blocked.contains(&item.target_region)
            || waiting
                .get(&item.target_region)
                .is_some_and(|&head| head < item.id)
        {
            continue;
        }
        let outcome = match item.kind {
            OutboxKind::Commit => deliver_commit(st, &item).await,
            OutboxKind::Reverse => deliver_reverse(st, &item).await,
            OutboxKind::Adjust => deliver_adjustment(st, &item).await,
        };
        match outcome {
            Ok(Outcome::Done) => delivered += 1,
            Ok(Outcome::Retry(why)) => {
                blocked.insert(item.target_region.clone());
                let next =
                    now_ms() + i64::try_from(backoff(item.attempts).as_millis()).unwrap_or(60_000);
                let id = item.id;
                st.store
                    .write_as(crate::store::JobKind::Outbox, move |conn| {
                        outbox::retry_later(conn, id, next, &why)
                    })
                    .await?;
            }
            Ok(Outcome::Park(why)) => {
                // Final until the home node restores the period: kept, not dropped, and
                // no longer holding up the region's other items.
                tracing::error!(
                    item = %item.ref_id,
                    kind = %item.kind,
                    home = %item.target_region,
                    alarm = %why,
                    "outbox item parked: its home node archived the record it concerns"
                );
                let next = now_ms() + i64::try_from(PARK_RECHECK.as_millis()).unwrap_or(i64::MAX);
                let id = item.id;
                st.store
                    .write_as(crate::store::JobKind::Outbox, move |conn| {
                        outbox::park(conn, id, next, &why)
                    })
                    .await?;
            }
            Err(e) => {
                blocked.insert(item.target_region.clone());
                tracing::error!(item = item.ref_id, error = %e, "outbox item failed");
            }
        }
    }
    Ok(delivered)
}

fn unreachable(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Cancelled
            | Code::Unknown
            | Code::ResourceExhausted
    )
}

/// Whether a failed call is worth retrying later: the home node was not reached, or
/// refused the call for this node's clock (nothing was done; it will be, once the
/// clocks agree).
fn retry_later(s: &tonic::Status) -> bool {
    unreachable(s.code()) || s.metadata().get(crate::clock::CLOCK_REFUSED).is_some()
}

/// The alarm of an item the home node refused because it concerns a record of a period
/// the home node archived ([`crate::error::ARCHIVED`]), if it was.
fn archived(item: &Item, s: &tonic::Status) -> Option<String> {
    let period = s.metadata().get(crate::error::ARCHIVED)?.to_str().ok()?;
    Some(format!(
        "home region {} archived period {period}, which holds the record this {} item concerns; \
         it is parked and looked at again every {} h: restore period {period} at {} \
         (yidi admin archive restore --file {}-{period}.sqlite) and it goes through. The home node said: {}",
        item.target_region,
        item.kind,
        PARK_RECHECK.as_secs() / 3600,
        item.target_region,
        item.target_region,
        s.message()
    ))
}

async fn deliver_commit(st: &NodeState, item: &Item) -> Result<Outcome> {
    let req = proto::CommitClaimRequest::decode(item.payload.as_slice())
        .map_err(|e| Error::Internal(format!("outbox payload: {e}")))?;
    let Ok(peer) = st.peers.get(&item.target_region) else {
        return Ok(Outcome::Retry(format!(
            "{} is not in the peer directory",
            item.target_region
        )));
    };
    let mut client = peer.client();
    let status = match client
        .claim_status(proto::ClaimStatusRequest {
            claim_id: req.claim_id.clone(),
        })
        .await
    {
        Ok(s) => s.into_inner(),
        Err(s) if retry_later(&s) => return Ok(Outcome::Retry(s.message().to_owned())),
        Err(s) => {
            return Err(Error::Internal(format!(
                "claim status of {}: {}",
                req.claim_id,
                s.message()
            )));
        }
    };
    // A claim the home node holds (committed, or reversed since) is not sent again.
    let resp = match status.state.parse::<ClaimState>() {
        Ok(_) => status.claim.unwrap_or_default(),
        Err(_) => match client.commit_claim(req.clone()).await {
            Ok(r) => r.into_inner(),
            // A claim the home node has by now (its original commit, still in flight
            // when the status was read) is found by the next attempt's status.
            Err(s) if retry_later(&s) || s.code() == Code::AlreadyExists => {
                return Ok(Outcome::Retry(s.message().to_owned()));
            }
            // The home node has the claim, in an archive: not refused, not to be
            // disputed; the settlement stays provisional until it is restored there.
            Err(s) if archived(item, &s).is_some() => {
                return Ok(Outcome::Park(archived(item, &s).unwrap_or_default()));
            }
            Err(s) => {
                // The home node refuses the claim outright (e.g. the person is unknown):
                // the advance to the hospital is now the treatment agency's to recover.
                let note = format!(
                    "home region {} refused the provisional claim: {}",
                    item.target_region,
                    s.message()
                );
                tracing::error!(claim = %req.claim_id, %note, "provisional claim refused by its home node");
                let (id, claim) = (item.id, req.claim_id.clone());
                st.store
                    .write_as(crate::store::JobKind::Outbox, move |conn| {
                        if let Some(mut rec) = settlements::get(conn, &claim)? {
                            debug_assert!(rec.state.can_become(SettlementState::Disputed));
                            rec.state = SettlementState::Disputed;
                            rec.note = note;
                            settlements::update_outcome(conn, &rec)?;
                        }
                        // Not owed by the home node: the receivable written with the
                        // provisional claim is taken back.
                        ledger::withdraw(conn, &claim, Side::Receivable)?;
                        outbox::remove(conn, id)
                    })
                    .await?;
                return Ok(Outcome::Done);
            }
        },
    };
    let (id, region, claim) = (item.id, st.region, req.claim_id.clone());
    st.store
        .write_as(crate::store::JobKind::Outbox, move |conn| {
            if let Some(rec) = settlements::get(conn, &claim)?
                && (rec.state == SettlementState::Provisional
                    || rec.state == SettlementState::Cancelled)
            {
                // One cancelled before the home node heard of it stays cancelled, its
                // visit re-settleable; the queued reversal follows.
                finish_committed(conn, region, rec, &resp, None)?;
            }
            outbox::remove(conn, id)
        })
        .await?;
    tracing::info!(claim = %req.claim_id, "provisional claim confirmed by its home node");
    Ok(Outcome::Done)
}

async fn deliver_reverse(st: &NodeState, item: &Item) -> Result<Outcome> {
    let req = proto::ReverseClaimRequest::decode(item.payload.as_slice())
        .map_err(|e| Error::Internal(format!("outbox payload: {e}")))?;
    let Ok(peer) = st.peers.get(&item.target_region) else {
        return Ok(Outcome::Retry(format!(
            "{} is not in the peer directory",
            item.target_region
        )));
    };
    let resp = match peer.client().reverse_claim(req.clone()).await {
        Ok(r) => r.into_inner(),
        Err(s) if retry_later(&s) => return Ok(Outcome::Retry(s.message().to_owned())),
        Err(s) if archived(item, &s).is_some() => {
            return Ok(Outcome::Park(archived(item, &s).unwrap_or_default()));
        }
        Err(s) => {
            return Err(Error::Internal(format!(
                "reversal {} refused: {}",
                req.reversal_id,
                s.message()
            )));
        }
    };
    let (id, home) = (item.id, item.target_region.clone());
    st.store
        .write_as(crate::store::JobKind::Outbox, move |conn| {
            if resp.state == "abandoned" {
                // The home node never had the claim (it refused it): nothing to
                // reverse, and the reversal written at the cancellation is taken back.
                ledger::withdraw(conn, &req.reversal_id, Side::Receivable)?;
            }
            if resp.state == ClaimState::Reversed.as_str() {
                let fund = resp
                    .split
                    .as_ref()
                    .map(|s| {
                        money::parse(&s.fund_pay_sumamt, "fund_pay_sumamt", Sign::Any)
                            .map(money::to_fen)
                    })
                    .transpose()?
                    .unwrap_or_default();
                let at = period::parse_ts(&req.reversed_at, "reversed_at")?;
                // Written at the cancellation; the home node's amount is the one owed.
                ledger::record_confirmed(
                    conn,
                    &ledger::Entry {
                        entry_id: &req.reversal_id,
                        side: Side::Receivable,
                        counterparty: &home,
                        period: &Period::of(at).to_string(),
                        kind: "reversal",
                        claim_id: &req.claim_id,
                        amount_fen: -fund,
                    },
                    &period::now_rfc3339(),
                )
                .map(drop)?;
            }
            outbox::remove(conn, id)
        })
        .await?;
    Ok(Outcome::Done)
}

async fn deliver_adjustment(st: &NodeState, item: &Item) -> Result<Outcome> {
    let req = proto::AdjustmentRequest::decode(item.payload.as_slice())
        .map_err(|e| Error::Internal(format!("outbox payload: {e}")))?;
    let Ok(peer) = st.peers.get(&item.target_region) else {
        return Ok(Outcome::Retry(format!(
            "{} is not in the peer directory",
            item.target_region
        )));
    };
    match peer.client().push_adjustment(req.clone()).await {
        Ok(_) => {}
        Err(s) if retry_later(&s) => return Ok(Outcome::Retry(s.message().to_owned())),
        Err(s) if archived(item, &s).is_some() => {
            return Ok(Outcome::Park(archived(item, &s).unwrap_or_default()));
        }
        Err(s) => {
            return Err(Error::Internal(format!(
                "adjustment {} refused: {}",
                req.entry_id,
                s.message()
            )));
        }
    }
    let id = item.id;
    st.store
        .write_as(crate::store::JobKind::Outbox, move |conn| {
            outbox::remove(conn, id)
        })
        .await?;
    Ok(Outcome::Done)
}
