//! Intents whose outcome is unknown: a claim in doubt after an unanswered commit, the
//! repeat of its request, and recovery of pending intents (at start-up and periodically).

use std::time::Duration;

use chrono::Utc;
use yidi_common::{
    money::{self, Sign},
    period, proto,
};

use super::{
    home_calls::{PeerFail, classify},
    offline::settle_offline,
    records::{finish_committed, mark_failed, settlement_to_proto},
    shared::{Bill, bill_from, read_bill},
};
use crate::peers::Peer;
use crate::store::states::{ClaimState, SettlementState};
use crate::{
    Error, Result,
    context::NodeState,
    idempotency::{self, RequestKey},
    store::{
        ledger::{self, Side},
        settlements::{self, SettlementRec},
    },
};

/// The background recovery looks at intents at least this old: younger ones are nearly
/// always a call still running (those are known exactly, see [`InFlight`](super::InFlight)), and a repeat
/// of the hospital's request resolves its own intent at once anyway.
pub const RECOVERY_MIN_AGE: Duration = Duration::from_secs(5);

/// The home node was asked to commit and did not answer. If it can be asked for the
/// claim's status, that decides; if it cannot be reached at all, the home policy's
/// offline rule applies as to a fresh Settle, under the intent's own claim id (see
/// [`settle_offline`]); otherwise the intent stays pending for recovery and the
/// hospital is told to repeat the same request. The caller holds the intent in
/// [`InFlight`](super::InFlight).
pub(super) async fn settle_in_doubt(
    st: &NodeState,
    bill: &Bill,
    rec: SettlementRec,
    key: &RequestKey,
    use_account: bool,
    why: String,
    newest: Option<&proto::EligibilityResponse>,
) -> Result<proto::Settlement> {
    tracing::warn!(claim = %rec.settlement_id, home = %bill.visit.home_region, error = %why, "claim in doubt");
    match resolve_claimed(st, rec.clone()).await? {
        Resolved::Settled(answer) => Ok(*answer),
        Resolved::Unreachable(now) => {
            settle_offline(st, bill, key, use_account, now, newest, Some(rec)).await
        }
        Resolved::Failed => Err(Error::Aborted(format!(
            "{why}; the home node never committed this settlement and it was abandoned there, so nothing was settled — repeat this request (same request_id) to settle afresh"
        ))),
        Resolved::Pending(now) => Err(Error::Unavailable(format!(
            "{why}; the outcome is being confirmed with the home node ({now}) — repeat this request (same request_id) to get it"
        ))),
    }
}

/// The bill of a pending intent, read again for its repeated request.
pub(super) async fn pending_bill(st: &NodeState, intent: &SettlementRec) -> Result<Bill> {
    let (inst, vid) = (intent.institution_code.clone(), intent.visit_id.clone());
    let (visit, lines) = st
        .store
        .read(move |conn| read_bill(conn, &inst, &vid))
        .await?;
    bill_from(visit, lines, true)
}

/// What resolving a pending intent came to.
pub(super) enum Resolved {
    /// The home node had committed it: settled.
    Settled(Box<proto::Settlement>),
    /// The home node did not have it (now it never will): the intent failed.
    Failed,
    /// The home node could not be reached at all (its status could not be asked, and
    /// nothing was sent that could have changed the claim there): the intent stays
    /// pending, or is settled under the offline rule by its repeated request.
    Unreachable(String),
    /// The home node answered, but the intent could not be finished yet (it stays
    /// pending).
    Pending(String),
}

/// Resolves a pending intent by asking the home node ("read first"): committed → finish
/// locally; unknown → abandon it at the home node (tombstone) and mark it failed. Returns
/// the settlement when it turned out committed, `None` when it failed or the home node
/// cannot be reached (then it stays pending).
pub async fn resolve_intent(
    st: &NodeState,
    rec: SettlementRec,
) -> Result<Option<proto::Settlement>> {
    // Its Settle call is still running, or another resolver is at it: leave it to them.
    let Some(_resolving) = st.settling.try_enter(&rec.settlement_id) else {
        return Ok(None);
    };
    Ok(match resolve_claimed(st, rec).await? {
        Resolved::Settled(answer) => Some(*answer),
        _ => None,
    })
}

/// [`resolve_intent`] for an intent this caller holds in [`InFlight`](super::InFlight).
pub(super) async fn resolve_claimed(st: &NodeState, rec: SettlementRec) -> Result<Resolved> {
    let home = rec.home_region.clone();
    let peer = match st.peers.get(&home) {
        Ok(p) => p,
        Err(e) => return Ok(Resolved::Unreachable(e.to_string())),
    };
    let status = match peer
        .client()
        .claim_status(proto::ClaimStatusRequest {
            claim_id: rec.settlement_id.clone(),
        })
        .await
    {
        Ok(s) => s.into_inner(),
        Err(s) => {
            return match classify(&home, &s) {
                PeerFail::Unreachable(why) => Ok(Resolved::Unreachable(why)),
                PeerFail::Refused(e) => Err(e),
            };
        }
    };
    match status.state.as_str() {
        s if s == ClaimState::Committed.as_str() => finish_from_home(st, rec, status).await,
        // Committed late and then reversed by an earlier abandonment: the hospital never
        // had a success, so the intent failed; both of the home node's ledger records are
        // mirrored so that the pair still reconciles.
        s if s == ClaimState::Reversed.as_str() => {
            mirror_reversed(st, rec, &status).await?;
            Ok(Resolved::Failed)
        }
        "abandoned" => {
            mark_failed(st, rec).await?;
            Ok(Resolved::Failed)
        }
        // Not committed: make sure it never will be, then give up on it.
        _ => abandon(st, rec, &peer).await,
    }
}

/// Records the claim and its reversal as the home node has them, and fails the intent.
pub(super) async fn mirror_reversed(
    st: &NodeState,
    rec: SettlementRec,
    status: &proto::ClaimStatusResponse,
) -> Result<()> {
    let claim = status.claim.clone().unwrap_or_default();
    let fund = claim
        .split
        .as_ref()
        .map(|s| money::parse(&s.fund_pay_sumamt, "fund_pay_sumamt", Sign::Any).map(money::to_fen))
        .transpose()?
        .unwrap_or_default();
    let (reversal_id, reversal_period) =
        (status.reversal_id.clone(), status.reversal_period.clone());
    tracing::warn!(claim = %rec.settlement_id, "in-doubt claim was committed late at home and reversed; mirrored, intent failed");
    st.store
        .write_as(crate::store::JobKind::Settle, move |conn| {
            // Only a pending intent is mirrored: one resolved meanwhile keeps its outcome.
            if settlements::get(conn, &rec.settlement_id)?
                .is_none_or(|r| r.state != SettlementState::Pending)
            {
                return Ok(());
            }
            let now = period::now_rfc3339();
            let home = rec.home_region.as_str();
            for (entry, kind, period, amount) in [
                (
                    rec.settlement_id.as_str(),
                    "claim",
                    claim.period.as_str(),
                    fund,
                ),
                (
                    reversal_id.as_str(),
                    "reversal",
                    reversal_period.as_str(),
                    -fund,
                ),
            ] {
                ledger::record(
                    conn,
                    &ledger::Entry {
                        entry_id: entry,
                        side: Side::Receivable,
                        counterparty: home,
                        period,
                        kind,
                        claim_id: &rec.settlement_id,
                        amount_fen: amount,
                    },
                    &now,
                )?;
            }
            settlements::fail_pending(conn, &rec.settlement_id).map(drop)
        })
        .await
}

/// Resolves every pending intent older than `min_age` (all of them at start-up).
pub async fn recover(st: &NodeState, min_age: Duration) -> Result<usize> {
    let pending = st.store.read(settlements::pending).await?;
    let cutoff = Utc::now() - chrono::Duration::from_std(min_age).unwrap_or_default();
    let mut resolved = 0;
    for rec in pending {
        let old = period::parse_ts(&rec.settled_at, "settled_at")
            .map(|t| t <= cutoff)
            .unwrap_or(true);
        if !old {
            continue;
        }
        let id = rec.settlement_id.clone();
        match resolve_intent(st, rec).await {
            Ok(Some(_)) => resolved += 1,
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(claim = %id, error = %e, "could not resolve an in-doubt claim")
            }
        }
    }
    Ok(resolved)
}

/// The home node has the claim committed: finish the intent with its split.
async fn finish_from_home(
    st: &NodeState,
    rec: SettlementRec,
    status: proto::ClaimStatusResponse,
) -> Result<Resolved> {
    let (region, home) = (st.region, &rec.home_region);
    // The stored intent may hold only its placeholder split: the home node's
    // split is the one to record, and without it nothing is finished.
    let resp = status.claim.filter(|c| c.split.is_some()).ok_or_else(|| {
        Error::Internal(format!(
            "home node {home} reports claim {} committed without its split; it stays pending",
            rec.settlement_id
        ))
    })?;
    let key = RequestKey::new(
        &rec.request_scope,
        &rec.request_id,
        "Settle",
        rec.payload_hash.clone(),
    )?;
    let answer = st
        .store
        .write_as(crate::store::JobKind::Settle, move |conn| {
            let current = settlements::get(conn, &rec.settlement_id)?
                .ok_or_else(|| Error::Internal("intent vanished".into()))?;
            if current.state != SettlementState::Pending {
                return Ok(settlement_to_proto(&current, region));
            }
            let stored = idempotency::replay::<proto::Settlement>(conn, &key)?.is_some();
            finish_committed(conn, region, current, &resp, (!stored).then_some(&key))
        })
        .await?;
    tracing::info!(claim = %answer.settlement_id, "in-doubt claim was committed at home; settled");
    Ok(Resolved::Settled(Box::new(answer)))
}

/// The home node does not have the claim: abandon it there (a tombstone, so that it is
/// never committed), then fail the intent.
async fn abandon(st: &NodeState, rec: SettlementRec, peer: &Peer) -> Result<Resolved> {
    let (region, home) = (st.region, rec.home_region.clone());
    let abandon = proto::ReverseClaimRequest {
        request_id: format!("abandon-{}", rec.settlement_id),
        claim_id: rec.settlement_id.clone(),
        reversal_id: format!("abandon-{}", rec.settlement_id),
        reason: "treatment node gave up on an in-doubt claim".into(),
        reversed_at: period::now_rfc3339(),
        treatment_region: region.to_string(),
        abandon_only: true,
    };
    match peer.client().reverse_claim(abandon).await {
        Ok(r) if r.get_ref().state == "abandoned" => {
            mark_failed(st, rec).await?;
            Ok(Resolved::Failed)
        }
        // It was committed after all (a late delivery): read its status again
        // and finish it (or mirror it, had it been reversed meanwhile).
        Ok(_) => Box::pin(resolve_claimed(st, rec)).await,
        // The abandonment may have reached the home node and left its
        // tombstone though its answer was lost: the claim id can then never be
        // committed, so it must not be settled provisionally under it. It stays
        // pending; the next resolution reads the home node's status again.
        Err(s) => Ok(Resolved::Pending(match classify(&home, &s) {
            PeerFail::Unreachable(why) => {
                format!("the home node did not answer the abandonment: {why}")
            }
            PeerFail::Refused(e) => e.to_string(),
        })),
    }
}
