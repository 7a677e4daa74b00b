//! The home policy's offline rule when the home node cannot be reached: a provisional
//! settlement whose claim the outbox delivers later, or a refused one.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use rusqlite::Connection;

use prost::Message;
use yidi_common::{
    engine, money,
    policy::{OfflineMode, Policy},
    proto,
    region::RegionCode,
    types::InsuranceType,
};

use super::{
    records::{Basis, full_self_pay, insert_record, new_record, settlement_to_proto},
    shared::{Bill, now_ms, person_from},
};
use crate::settlement::wire_date;
use crate::store::states::{OutboxKind, SettlementState, VisitState};
use crate::{
    Error, Result,
    context::NodeState,
    idempotency::{self, RequestKey},
    store::{
        ledger::{self, Side},
        outbox,
        settlements::{self, SettlementRec},
        visits,
    },
};

/// The home policy's offline rule, from the cached policy.
pub(super) fn offline_rule(
    st: &NodeState,
    bill: &Bill,
    snapshot: &proto::EligibilityResponse,
) -> Option<(u32, Arc<Policy>)> {
    let it = InsuranceType::from_proto(snapshot.insurance_type, "insurance_type").ok()?;
    let date = wire_date(&bill.visit.visit_date, "visit_date").ok()?;
    st.policies
        .latest_in_force(&bill.visit.home_region, it, date)
}

/// The home node cannot be reached and nothing of this claim is committed there: apply
/// the home policy's offline rule with the newest eligibility answer for this visit
/// (`newest`, one the home node gave this call, else the one kept from the visit's
/// opening).
pub(super) async fn settle_offline(
    st: &NodeState,
    bill: &Bill,
    key: &RequestKey,
    use_account: bool,
    why: String,
    newest: Option<&proto::EligibilityResponse>,
    in_doubt: Option<SettlementRec>,
) -> Result<proto::Settlement> {
    let snapshot = newest
        .cloned()
        .or_else(|| proto::EligibilityResponse::decode(bill.visit.home_snapshot.as_slice()).ok())
        .filter(|s| s.accumulators.is_some());
    let Some(snapshot) = snapshot else {
        return Err(Error::Unavailable(format!(
            "{why}; the person's home data was never received, so nothing can be settled offline — retry later"
        )));
    };
    // The home node's answer at registration decides, as it would online.
    if !snapshot.eligible {
        return Err(Error::FailedPrecondition(format!(
            "no direct settlement: {}",
            snapshot.reason
        )));
    }
    let Some((version, policy)) = offline_rule(st, bill, &snapshot) else {
        return Err(Error::Unavailable(format!(
            "{why}; the home policy is not cached here, so nothing can be settled offline — retry later"
        )));
    };
    let region = st.region;
    let now = st.clock.now();
    let OfflineRecords {
        provisional,
        limit_fen,
        refused,
    } = offline_records(
        bill,
        key,
        use_account,
        &why,
        &snapshot,
        version,
        &policy,
        region,
        now,
    )?;
    let k = key.clone();
    let visit = bill.claim_visit(use_account);
    let answer = st
        .store
        .write(move |conn| {
            if let Some(answer) = super::records::replay_settle(conn, &k)? {
                return Ok(answer);
            }
            // The exposure is checked in the transaction that adds to it, so that
            // provisional settlements made at the same moment cannot together exceed it.
            let rec = match provisional {
                Some(p)
                    if settlements::provisional_exposure_fen(conn, &p.home_region)?
                        + p.fund_fen
                        <= limit_fen =>
                {
                    p
                }
                _ => refused,
            };
            let rec = match in_doubt {
                None => insert_record(conn, region, rec)?,
                Some(intent) => take_intent(conn, intent, rec)?,
            };
            if rec.state == SettlementState::Provisional {
                enqueue_provisional(conn, region, &rec, visit)?;
            }
            visits::set_state(conn, &rec.visit_id, VisitState::Settled, None)?;
            let answer = settlement_to_proto(&rec, region);
            idempotency::store(conn, &k, &answer)?;
            Ok(answer)
        })
        .await?;
    st.outbox_wake.notify_one();
    Ok(answer)
}

/// The records the offline rule may settle with: the provisional one (if the policy
/// allows one) and the refused one it falls back to; which one is recorded is decided in
/// the writing transaction, against the exposure limit.
struct OfflineRecords {
    provisional: Option<SettlementRec>,
    limit_fen: i64,
    refused: SettlementRec,
}

#[allow(clippy::too_many_arguments)]
fn offline_records(
    bill: &Bill,
    key: &RequestKey,
    use_account: bool,
    why: &str,
    snapshot: &proto::EligibilityResponse,
    version: u32,
    policy: &Policy,
    region: RegionCode,
    now: DateTime<Utc>,
) -> Result<OfflineRecords> {
    let (provisional, limit_fen, refused_note) = match policy.offline.clone() {
        OfflineMode::Refuse => (
            None,
            0,
            format!(
                "{why}; the home policy refuses offline settlement: the patient pays in full and claims reimbursement at home"
            ),
        ),
        OfflineMode::Provisional { exposure_limit } => {
            let (person, acc, filing) = person_from(snapshot)?;
            let ctx = bill.visit_ctx(region, filing, use_account)?;
            let quote = engine::quote(policy, &person, &acc, &ctx, &bill.engine_lines)?;
            let note = format!(
                "{why}; settled provisionally from cached policy v{version}, to be confirmed by the home node"
            );
            (
                Some((quote.to_proto_split(), note)),
                money::to_fen(exposure_limit),
                format!(
                    "{why}; provisional exposure to {} would exceed its limit {}: the patient pays in full and claims reimbursement at home",
                    bill.visit.home_region,
                    money::format(exposure_limit)
                ),
            )
        }
    };
    let acc_version = snapshot
        .accumulators
        .as_ref()
        .map(|a| a.version)
        .unwrap_or_default();
    let basis = Basis {
        policy_version: version,
        acc_version,
    };
    let refused = new_record(
        bill,
        key,
        full_self_pay(&bill.lines, &refused_note),
        SettlementState::Refused,
        basis,
        now,
        refused_note,
    )?;
    let provisional = provisional
        .map(|(split, note)| {
            new_record(
                bill,
                key,
                split,
                SettlementState::Provisional,
                basis,
                now,
                note,
            )
        })
        .transpose()?;
    Ok(OfflineRecords {
        provisional,
        limit_fen,
        refused,
    })
}

/// The offline record `rec` takes the place of an intent in doubt, under its claim id.
fn take_intent(
    conn: &Connection,
    intent: SettlementRec,
    rec: SettlementRec,
) -> Result<SettlementRec> {
    if settlements::get(conn, &intent.settlement_id)?
        .is_none_or(|r| r.state != SettlementState::Pending)
    {
        return Err(Error::Aborted(
            "this settlement was resolved concurrently; repeat the request to get its outcome"
                .into(),
        ));
    }
    // The claim may be committed at the home node: a record telling the patient to pay
    // in full cannot be made, only the provisional one under the same claim id, whose
    // delivery asks the home node first and takes its claim if it has it.
    if rec.state != SettlementState::Provisional {
        return Err(Error::Unavailable(format!(
            "{}; whether the home node committed this claim cannot be known until it answers, and its offline rule allows no provisional settlement here — repeat this request (same request_id) later",
            rec.note
        )));
    }
    let mut rec = SettlementRec {
        settlement_id: intent.settlement_id,
        settled_at: intent.settled_at,
        settle_date: intent.settle_date,
        period: intent.period,
        ..rec
    };
    rec.note = format!("{} (in doubt after an unanswered commit)", rec.note);
    settlements::update_outcome(conn, &rec)?;
    Ok(rec)
}

/// A provisional settlement's receivable and the outbox item that delivers its claim to
/// the home node.
fn enqueue_provisional(
    conn: &Connection,
    region: RegionCode,
    rec: &SettlementRec,
    visit: proto::ClaimVisit,
) -> Result<()> {
    // The receivable is written with the claim, not when the home node confirms it:
    // until then the pair's ledgers differ and a clearing round shows it as a dispute
    // instead of leaving it out unseen.
    ledger::record(
        conn,
        &ledger::Entry {
            entry_id: &rec.settlement_id,
            side: Side::Receivable,
            counterparty: &rec.home_region,
            period: &rec.period,
            kind: "claim",
            claim_id: &rec.settlement_id,
            amount_fen: rec.fund_fen,
        },
        &rec.settled_at,
    )?;
    let push = proto::CommitClaimRequest {
        request_id: rec.settlement_id.clone(),
        claim_id: rec.settlement_id.clone(),
        treatment_region: region.to_string(),
        id_number: rec.id_number.clone(),
        visit: Some(visit),
        split: Some(rec.split.clone()),
        accumulator_version: rec.acc_version,
        policy_version: rec.policy_version,
        settled_at: rec.settled_at.clone(),
        provisional: true,
    };
    outbox::enqueue(
        conn,
        OutboxKind::Commit,
        &rec.home_region,
        &rec.settlement_id,
        &push.encode_to_vec(),
        &rec.settled_at,
        now_ms(),
    )
}
