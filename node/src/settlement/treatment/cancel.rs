//! CancelSettlement and ReverseRequest (冲正): a reversal record, and the home node's
//! reversal (in the same transaction same-city, through the outbox cross-region).

use chrono::{DateTime, Utc};
use prost::Message;
use rusqlite::Connection;
use yidi_common::{
    money::{self, Sign},
    period::{self, Period},
    proto,
    region::RegionCode,
};

use super::{
    records::{insert_record, no_settlement, not_a_settlement, settlement_to_proto},
    recovery::resolve_intent,
    shared::{institution, now_ms, scope},
};
use crate::settlement::home;
use crate::store::archive;
use crate::store::states::{OutboxKind, SettlementState, VisitState};
use crate::{
    Error, Result,
    context::NodeState,
    idempotency::{self, RequestKey, payload_hash},
    store::{
        ledger::{self, Side},
        outbox,
        settlements::{self, SettlementRec},
        visits,
    },
};

/// Cancels a settlement with a reversal record. Cross-region, the reversal reaches the
/// home node through the outbox (it is this node's decision; the home node must accept
/// it), so a cancellation never waits for, or fails on, an unreachable home node.
pub(super) fn cancel_in_tx(
    conn: &Connection,
    st_region: RegionCode,
    original: &SettlementRec,
    key: &RequestKey,
    reason: &str,
    now: DateTime<Utc>,
) -> Result<SettlementRec> {
    if original.state == SettlementState::Cancelled {
        return Err(Error::FailedPrecondition(format!(
            "settlement {} is already cancelled",
            original.settlement_id
        )));
    }
    if !original.state.can_become(SettlementState::Cancelled) {
        return Err(Error::FailedPrecondition(format!(
            "settlement {} is {}; nothing to cancel",
            original.settlement_id, original.state
        )));
    }
    let split = negated_split(&original.split, &original.settlement_id, reason);
    let rec = SettlementRec {
        settlement_id: String::new(),
        state: SettlementState::Reversal,
        reverses: Some(original.settlement_id.clone()),
        request_scope: key.scope.clone(),
        request_id: key.request_id.clone(),
        payload_hash: key.payload_hash.clone(),
        split,
        medfee_fen: -original.medfee_fen,
        fund_fen: -original.fund_fen,
        acct_fen: -original.acct_fen,
        cash_fen: -original.cash_fen,
        settled_at: period::format_ts(now),
        settle_date: now.with_timezone(&period::cst()).date_naive().to_string(),
        period: Period::of(now).to_string(),
        note: reason.to_owned(),
        ..original.clone()
    };
    let rec = insert_record(conn, st_region, rec)?;
    settlements::set_state(conn, &original.settlement_id, SettlementState::Cancelled)?;
    let visit = visits::get(conn, &original.visit_id)?
        .ok_or_else(|| Error::Internal("visit vanished".into()))?;
    visits::set_state(
        conn,
        &visit.visit_id,
        VisitState::unsettled(visit.closed_at.is_some()),
        None,
    )?;
    if original.state == SettlementState::Refused {
        return Ok(rec);
    }
    reverse_claim(conn, st_region, original, &rec, reason)?;
    Ok(rec)
}

/// HospitalService.CancelSettlement.
pub async fn cancel(
    st: &NodeState,
    mut req: proto::CancelSettlementRequest,
) -> Result<proto::Settlement> {
    let sc = scope(&req.institution_code);
    let payload = payload_hash(&mut req, |r| &mut r.request_id);
    let key = RequestKey::new(&sc, &req.request_id, "CancelSettlement", payload)?;
    institution(st, &req.institution_code).await?;
    let region = st.region;
    let now = st.clock.now();
    let reason = if req.reason.trim().is_empty() {
        "cancelled by the institution".to_owned()
    } else {
        req.reason.trim().to_owned()
    };
    let answer = st
        .store
        .write_as(crate::store::JobKind::Settle, move |conn| {
            idempotency::once(conn, &key, |conn| {
                let Some(original) = settlements::get(conn, &req.settlement_id)? else {
                    return Err(
                        archive::missing(conn, &req.settlement_id, "settlement", false)?
                            .unwrap_or_else(|| no_settlement(&req.settlement_id)),
                    );
                };
                if let Some(e) = archive::refusal(
                    conn,
                    &original.period,
                    &original.settlement_id,
                    "settlement",
                )? {
                    return Err(e);
                }
                if original.institution_code != req.institution_code {
                    return Err(Error::PermissionDenied(format!(
                        "settlement {} belongs to another institution",
                        original.settlement_id
                    )));
                }
                not_a_settlement(&original)?;
                if let Some(of) = &original.reverses {
                    return Err(Error::FailedPrecondition(format!(
                        "settlement {} is a reversal (冲正/cancellation record) of {of}; it cannot \
                         itself be cancelled — a cancellation is final; to charge the visit again, \
                         settle it again with a new request id",
                        original.settlement_id
                    )));
                }
                let rec = cancel_in_tx(conn, region, &original, &key, &reason, now)?;
                Ok(settlement_to_proto(&rec, region))
            })
        })
        .await?;
    st.eligibility_cache.clear();
    st.outbox_wake.notify_one();
    Ok(answer)
}

/// HospitalService.ReverseRequest (冲正): undo whatever a request the institution never
/// heard back from did. A request that never arrived is barred from taking effect later.
pub async fn reverse_request(
    st: &NodeState,
    mut req: proto::ReverseRequestRequest,
) -> Result<proto::ReverseRequestResponse> {
    let sc = scope(&req.institution_code);
    let payload = payload_hash(&mut req, |r| &mut r.request_id);
    let key = RequestKey::new(&sc, &req.request_id, "ReverseRequest", payload)?;
    idempotency::validate_request_id(&req.original_request_id)
        .map_err(|_| Error::invalid("original_request_id", "missing or malformed"))?;
    institution(st, &req.institution_code).await?;
    // An original still in doubt is settled with the home node first.
    let (s2, o2) = (sc.clone(), req.original_request_id.clone());
    if let Some(intent) = st
        .store
        .read(move |conn| settlements::by_request(conn, &s2, &o2))
        .await?
        .filter(|r| r.state == SettlementState::Pending)
        && resolve_intent(st, intent).await?.is_none()
    {
        let (s3, o3) = (sc.clone(), req.original_request_id.clone());
        if st
            .store
            .read(move |conn| settlements::by_request(conn, &s3, &o3))
            .await?
            .is_some_and(|r| r.state == SettlementState::Pending)
        {
            return Err(Error::Unavailable("the original request is still being confirmed with the home node; retry the 冲正 shortly".into()));
        }
    }
    let region = st.region;
    let now = st.clock.now();
    let answer = st
        .store
        .write_as(crate::store::JobKind::Settle, move |conn| {
            idempotency::once(conn, &key, |conn| {
                let original = settlements::by_request(conn, &key.scope, &req.original_request_id)?.filter(|s| s.reverses.is_none());
                match original {
                    Some(o) if o.state == SettlementState::Cancelled => Ok(proto::ReverseRequestResponse {
                        outcome: "already_reversed".into(),
                        reversal: settlements::reversal_of(conn, &o.settlement_id)?.map(|r| settlement_to_proto(&r, region)),
                    }),
                    Some(o) if o.state != SettlementState::Failed => {
                        if let Some(e) = archive::refusal(conn, &o.period, &o.settlement_id, "settlement")? {
                            return Err(e);
                        }
                        let rec = cancel_in_tx(conn, region, &o, &key, "冲正 (request reversal) by the institution", now)?;
                        Ok(proto::ReverseRequestResponse { outcome: "reversed".into(), reversal: Some(settlement_to_proto(&rec, region)) })
                    }
                    _ => match idempotency::method_of(conn, &key.scope, &req.original_request_id)? {
                        Some(m) if m != "Settle" && m != idempotency::REVERSED => Err(Error::FailedPrecondition(format!(
                            "request {} was a {m}; only settlements are reversed by 冲正 (use UndoFees or CancelSettlement)",
                            req.original_request_id
                        ))),
                        Some(m) => {
                            // A settlement archived and purged while its request record
                            // was kept: say so, as a repeat of the Settle would.
                            if m == "Settle"
                                && let Some(answer) = idempotency::stored::<proto::Settlement>(conn, &key.scope, &req.original_request_id, "Settle")?
                                && let Some(e) = archive::missing(conn, &answer.settlement_id, "settlement", false)?
                            {
                                return Err(e);
                            }
                            Ok(proto::ReverseRequestResponse { outcome: "not_found".into(), reversal: None })
                        }
                        None => {
                            // Bar the original from taking effect if it arrives late.
                            let bar = RequestKey { scope: key.scope.clone(), request_id: req.original_request_id.clone(), method: idempotency::REVERSED, payload_hash: String::new() };
                            idempotency::store(conn, &bar, &proto::ReverseRequestResponse::default())?;
                            Ok(proto::ReverseRequestResponse { outcome: "not_found".into(), reversal: None })
                        }
                    },
                }
            })
        })
        .await?;
    st.eligibility_cache.clear();
    st.outbox_wake.notify_one();
    Ok(answer)
}

/// The split of a reversal record: every amount of the original's negated.
fn negated_split(s: &proto::Split, original_id: &str, reason: &str) -> proto::Split {
    let neg = |v: &str| -> String {
        money::parse(v, "amount", Sign::Any)
            .map(|d| money::format(-d))
            .unwrap_or_else(|_| v.to_owned())
    };
    proto::Split {
        medfee_sumamt: neg(&s.medfee_sumamt),
        fulamt_ownpay_amt: neg(&s.fulamt_ownpay_amt),
        overlmt_selfpay: neg(&s.overlmt_selfpay),
        preselfpay_amt: neg(&s.preselfpay_amt),
        inscp_scp_amt: neg(&s.inscp_scp_amt),
        act_pay_dedc: neg(&s.act_pay_dedc),
        hifp_pay: neg(&s.hifp_pay),
        hifmi_pay: neg(&s.hifmi_pay),
        hifob_pay: neg(&s.hifob_pay),
        cvlserv_pay: neg(&s.cvlserv_pay),
        maf_pay: neg(&s.maf_pay),
        fund_pay_sumamt: neg(&s.fund_pay_sumamt),
        hosp_part_amt: neg(&s.hosp_part_amt),
        psn_part_amt: neg(&s.psn_part_amt),
        acct_pay: neg(&s.acct_pay),
        psn_cash_pay: neg(&s.psn_cash_pay),
        pool_ratio: s.pool_ratio.clone(),
        funds: Vec::new(),
        lines: Vec::new(),
        trace: vec![format!("reverses settlement {original_id}: {reason}")],
        applied_filing_type: s.applied_filing_type,
    }
}

/// The claim's reversal at its home node: in this transaction when this node is the home
/// node, else written to the ledger and queued in the outbox.
fn reverse_claim(
    conn: &Connection,
    st_region: RegionCode,
    original: &SettlementRec,
    rec: &SettlementRec,
    reason: &str,
) -> Result<()> {
    let reverse = proto::ReverseClaimRequest {
        request_id: rec.settlement_id.clone(),
        claim_id: original.settlement_id.clone(),
        reversal_id: rec.settlement_id.clone(),
        reason: reason.to_owned(),
        reversed_at: rec.settled_at.clone(),
        treatment_region: st_region.to_string(),
        abandon_only: false,
    };
    if original.home_region == st_region.as_str() {
        home::reverse(conn, st_region.as_str(), &reverse)?;
    } else {
        // The reversal enters this node's ledger now, with its outbox item: a round
        // frozen before the home node has it shows the pair in dispute rather than
        // paying the cancelled claim (docs/clearing.md, "The ledger").
        ledger::record(
            conn,
            &ledger::Entry {
                entry_id: &rec.settlement_id,
                side: Side::Receivable,
                counterparty: &original.home_region,
                period: &rec.period,
                kind: "reversal",
                claim_id: &original.settlement_id,
                amount_fen: -original.fund_fen,
            },
            &rec.settled_at,
        )?;
        outbox::enqueue(
            conn,
            OutboxKind::Reverse,
            &original.home_region,
            &rec.settlement_id,
            &reverse.encode_to_vec(),
            &rec.settled_at,
            now_ms(),
        )?;
    }
    Ok(())
}
