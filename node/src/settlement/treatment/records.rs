//! Settlement records: building, inserting and finishing them, the splits they carry,
//! and how a record that is no settlement answers.

use chrono::{DateTime, Utc};
use rusqlite::Connection;
use yidi_common::{
    money,
    period::{self, Period},
    proto,
    region::RegionCode,
    types::{FilingType, VisitKind},
};

use super::shared::Bill;
use crate::settlement::split_fen;
use crate::store::states::{SettlementState, VisitState};
use crate::{
    Error, Result,
    context::NodeState,
    idempotency::{self, RequestKey},
    store::{
        ledger::{self, Side},
        sequences,
        settlements::{self, SettlementRec},
        visits::{self, LineRec},
    },
};

pub(super) fn settlement_to_proto(s: &SettlementRec, treatment: RegionCode) -> proto::Settlement {
    proto::Settlement {
        settlement_id: s.settlement_id.clone(),
        visit_id: s.visit_id.clone(),
        institution_code: s.institution_code.clone(),
        id_number: s.id_number.clone(),
        home_region: s.home_region.clone(),
        treatment_region: treatment.to_string(),
        visit_kind: VisitKind::parse(&s.visit_kind, "visit_kind")
            .map(VisitKind::to_proto)
            .unwrap_or_default(),
        split: Some(s.split.clone()),
        state: s.state.to_string(),
        settled_at: s.settled_at.clone(),
        period: s.period.clone(),
        policy_version: s.policy_version,
        reverses: s.reverses.clone().unwrap_or_default(),
        note: s.note.clone(),
        cross_province: yidi_common::region::cross_province(&s.home_region, treatment.as_str()),
    }
}

/// The home policy version and accumulator version a split was computed with.
#[derive(Debug, Clone, Copy)]
pub(super) struct Basis {
    pub(super) policy_version: u32,
    pub(super) acc_version: u64,
}

pub(super) fn new_record(
    bill: &Bill,
    key: &RequestKey,
    split: proto::Split,
    state: SettlementState,
    basis: Basis,
    now: DateTime<Utc>,
    note: String,
) -> Result<SettlementRec> {
    let Basis {
        policy_version,
        acc_version,
    } = basis;
    let (medfee, fund, acct, cash) = split_fen(&split)?;
    Ok(SettlementRec {
        settlement_id: String::new(),
        visit_id: bill.visit.visit_id.clone(),
        institution_code: bill.visit.institution_code.clone(),
        id_number: bill.visit.id_number.clone(),
        home_region: bill.visit.home_region.clone(),
        visit_kind: bill.kind.to_string(),
        state,
        reverses: None,
        request_scope: key.scope.clone(),
        request_id: key.request_id.clone(),
        payload_hash: key.payload_hash.clone(),
        split,
        medfee_fen: medfee,
        fund_fen: fund,
        acct_fen: acct,
        cash_fen: cash,
        policy_version,
        acc_version,
        settled_at: period::format_ts(now),
        settle_date: now.with_timezone(&period::cst()).date_naive().to_string(),
        period: Period::of(now).to_string(),
        note,
    })
}

/// Inserts a record with a fresh id; refuses if the visit already has a live settlement.
pub(super) fn insert_record(
    conn: &Connection,
    region: RegionCode,
    mut rec: SettlementRec,
) -> Result<SettlementRec> {
    if rec.reverses.is_none()
        && let Some(live) = settlements::live_for_visit(conn, &rec.visit_id)?
        && live.state != SettlementState::Cancelled
    {
        return Err(Error::FailedPrecondition(format!(
            "visit {} already has settlement {} ({}); cancel it before settling again",
            rec.visit_id, live.settlement_id, live.state
        )));
    }
    let seq = sequences::next(conn, "settlement")?;
    rec.settlement_id = format!("{region}-S-{seq:010}");
    settlements::insert(conn, seq, &rec)?;
    Ok(rec)
}

/// Finishes a settlement the home node committed: the authoritative split, the ledger's
/// receivable, the visit, and the request's answer — one transaction. A claim cancelled
/// before its home node confirmed it stays cancelled (its queued reversal follows) and
/// its visit as the cancellation left it.
pub(crate) fn finish_committed(
    conn: &Connection,
    region: RegionCode,
    mut rec: SettlementRec,
    resp: &proto::CommitClaimResponse,
    key: Option<&RequestKey>,
) -> Result<proto::Settlement> {
    let split = resp.split.clone().unwrap_or_else(|| rec.split.clone());
    let provisional_fund = rec.fund_fen;
    let (medfee, fund, acct, cash) = split_fen(&split)?;
    if rec.state == SettlementState::Provisional && fund != provisional_fund {
        rec.note = format!(
            "provisional fund share {} corrected by the home node to {} (difference {})",
            money::format(money::from_fen(provisional_fund)),
            money::format(money::from_fen(fund)),
            money::format(money::from_fen(provisional_fund - fund))
        );
    }
    let next = if rec.state == SettlementState::Cancelled {
        SettlementState::Cancelled
    } else {
        SettlementState::Settled
    };
    debug_assert!(rec.state.can_become(next), "{} → {next}", rec.state);
    rec.state = next;
    rec.split = split;
    if resp.policy_version != 0 {
        rec.policy_version = resp.policy_version;
    }
    (rec.medfee_fen, rec.fund_fen, rec.acct_fen, rec.cash_fen) = (medfee, fund, acct, cash);
    settlements::update_outcome(conn, &rec)?;
    if rec.home_region != region.as_str() {
        // A provisional claim's entry was written when it was settled: the home node's
        // amount replaces the provisional one.
        ledger::record_confirmed(
            conn,
            &ledger::Entry {
                entry_id: &rec.settlement_id,
                side: Side::Receivable,
                counterparty: &rec.home_region,
                period: &resp.period,
                kind: "claim",
                claim_id: &rec.settlement_id,
                amount_fen: fund,
            },
            &period::now_rfc3339(),
        )?;
    }
    if next == SettlementState::Settled {
        visits::set_state(conn, &rec.visit_id, VisitState::Settled, None)?;
    }
    // The split moves into the answer once the record is written (no copy of it).
    let split = std::mem::take(&mut rec.split);
    let mut answer = settlement_to_proto(&rec, region);
    answer.split = None;
    if let Some(key) = key {
        // The split stays with the settlement record alone, which keeps it unchanged
        // from here on: only a provisional settlement's split is replaced later, and
        // its answer is stored whole (offline.rs).
        idempotency::store(conn, key, &answer)?;
    }
    answer.split = Some(split);
    Ok(answer)
}

/// The answer of a Settle already answered, if `key` was: its stored answer, with the
/// split of its settlement record when the answer was stored without it
/// ([`finish_committed`]) — equal, field by field, to the first answer.
pub(super) fn replay_settle(
    conn: &Connection,
    key: &RequestKey,
) -> Result<Option<proto::Settlement>> {
    let Some(mut answer) = idempotency::replay::<proto::Settlement>(conn, key)? else {
        return Ok(None);
    };
    if answer.split.is_none() {
        let Some(rec) = settlements::get(conn, &answer.settlement_id)? else {
            // Archived and purged while its request record was kept (a window longer
            // than the archive's minimum age): say so, as a read of it would.
            return Err(crate::store::archive::missing(
                conn,
                &answer.settlement_id,
                "settlement",
                false,
            )?
            .unwrap_or_else(|| {
                Error::Internal(format!(
                    "the stored answer of request {} names settlement {}, which is missing",
                    yidi_common::error::quoted(&key.request_id),
                    answer.settlement_id
                ))
            }));
        };
        answer.split = Some(rec.split);
    }
    Ok(Some(answer))
}

pub(super) async fn mark_failed(st: &NodeState, rec: SettlementRec) -> Result<()> {
    st.store
        .write_as(crate::store::JobKind::Settle, move |conn| {
            settlements::fail_pending(conn, &rec.settlement_id).map(drop)
        })
        .await
}

/// A split where the patient pays everything (refused direct settlement).
pub(super) fn full_self_pay(lines: &[LineRec], why: &str) -> proto::Split {
    let total = money::format(money::from_fen(lines.iter().map(|l| l.amount_fen).sum()));
    let zero = money::format(rust_decimal::Decimal::ZERO);
    proto::Split {
        medfee_sumamt: total.clone(),
        fulamt_ownpay_amt: total.clone(),
        overlmt_selfpay: zero.clone(),
        preselfpay_amt: zero.clone(),
        inscp_scp_amt: zero.clone(),
        act_pay_dedc: zero.clone(),
        hifp_pay: zero.clone(),
        hifmi_pay: zero.clone(),
        hifob_pay: zero.clone(),
        cvlserv_pay: zero.clone(),
        maf_pay: zero.clone(),
        fund_pay_sumamt: zero.clone(),
        hosp_part_amt: zero.clone(),
        psn_part_amt: total.clone(),
        acct_pay: zero.clone(),
        psn_cash_pay: total,
        pool_ratio: "0.00".into(),
        trace: vec![why.to_owned()],
        applied_filing_type: FilingType::Temporary.to_proto(),
        ..Default::default()
    }
}

/// NOT_FOUND for an id this node holds no record of.
pub(super) fn no_settlement(id: &str) -> Error {
    Error::NotFound(format!(
        "no settlement {} at this node",
        yidi_common::error::quoted(id)
    ))
}

/// GetSettlement and CancelSettlement of a record that is no settlement (yet): an attempt
/// still in doubt with the home node, or one that failed. Both calls answer the same.
pub(super) fn not_a_settlement(rec: &SettlementRec) -> Result<()> {
    match rec.state {
        SettlementState::Pending => Err(Error::Unavailable(format!(
            "settlement {} is still being confirmed with the home node; repeat the Settle \
             request with the same request id to learn its outcome, or reverse it (冲正)",
            rec.settlement_id
        ))),
        SettlementState::Failed => Err(Error::NotFound(format!(
            "settlement {} is an attempt that failed: no settlement was made under this id \
             and nothing is owed; settle the visit again with a new request id",
            rec.settlement_id
        ))),
        _ => Ok(()),
    }
}
