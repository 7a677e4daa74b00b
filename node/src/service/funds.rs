//! The AdminService calls about money between agencies and institutions: audit
//! deductions, reserves, hospital statements, the ledger, and clearing confirmations.

use chrono::Utc;
use yidi_common::{
    money::{self, Sign},
    period::{self, Period},
    proto,
    region::RegionCode,
    round_state::ParticipantState,
};

use crate::context::NodeState;
use crate::{
    Error, Result,
    clearing::reserve_balances,
    funds,
    idempotency::{self, RequestKey, payload_hash},
    store::{
        clearing,
        funds::{self as fund_store, DeductionRec},
        ledger::{self, Side},
        sequences, settlements,
    },
};

const SCOPE: &str = "admin";

fn deduction_to_proto(d: &DeductionRec) -> proto::Deduction {
    proto::Deduction {
        deduction_id: d.deduction_id.clone(),
        settlement_id: d.settlement_id.clone(),
        institution_code: d.institution_code.clone(),
        home_region: d.home_region.clone(),
        amount: money::format(money::from_fen(d.amount_fen)),
        reason: d.reason.clone(),
        created_at: d.created_at.clone(),
        period: d.period.clone(),
    }
}

/// AdminService.RecordDeduction.
pub async fn record_deduction(
    st: &NodeState,
    mut req: proto::RecordDeductionRequest,
) -> Result<proto::Deduction> {
    let payload = payload_hash(&mut req, |r| &mut r.request_id);
    let key = RequestKey::new(SCOPE, &req.request_id, "RecordDeduction", payload)?;
    let amount = money::to_fen(money::parse(&req.amount, "amount", Sign::Positive)?);
    let reason = req.reason.trim().to_owned();
    if reason.is_empty() {
        return Err(Error::invalid(
            "reason",
            "an audit deduction needs its reason",
        ));
    }
    let region = st.region;
    let answer = st
        .store
        .write_as(crate::store::JobKind::Admin, move |conn| {
            idempotency::once(conn, &key, |conn| {
                let Some(s) =
                    settlements::get(conn, &req.settlement_id)?.filter(|s| s.reverses.is_none())
                else {
                    return Err(crate::store::archive::missing(
                        conn,
                        &req.settlement_id,
                        "settlement",
                        false,
                    )?
                    .unwrap_or_else(|| {
                        Error::NotFound(format!(
                            "no settlement {} was treated here",
                            yidi_common::error::quoted(&req.settlement_id)
                        ))
                    }));
                };
                if let Some(e) =
                    crate::store::archive::refusal(conn, &s.period, &s.settlement_id, "settlement")?
                {
                    return Err(e);
                }
                if s.state != crate::store::states::SettlementState::Settled {
                    return Err(Error::FailedPrecondition(format!(
                        "settlement {} is {}; only a settled claim can be audited",
                        s.settlement_id, s.state
                    )));
                }
                let already = fund_store::deducted_fen(conn, &s.settlement_id)?;
                if already + amount > s.fund_fen {
                    return Err(Error::invalid(
                        "amount",
                        format!(
                            "deductions would reach {} but the fund share of {} is {}",
                            money::format(money::from_fen(already + amount)),
                            s.settlement_id,
                            money::format(money::from_fen(s.fund_fen))
                        ),
                    ));
                }
                let now = Utc::now();
                let seq = sequences::next(conn, "deduction")?;
                let d = DeductionRec {
                    deduction_id: format!("{region}-D-{seq:08}"),
                    settlement_id: s.settlement_id.clone(),
                    institution_code: s.institution_code.clone(),
                    home_region: s.home_region.clone(),
                    amount_fen: amount,
                    reason: reason.clone(),
                    created_at: period::format_ts(now),
                    period: Period::of(now).to_string(),
                };
                fund_store::insert_deduction(conn, &d)?;
                if s.home_region != region.as_str() {
                    funds::originate(
                        conn,
                        region,
                        &proto::AdjustmentRequest {
                            request_id: d.deduction_id.clone(),
                            entry_id: d.deduction_id.clone(),
                            kind: "deduction".into(),
                            claim_id: s.settlement_id.clone(),
                            payer: s.home_region.clone(),
                            payee: region.to_string(),
                            amount: money::format(money::from_fen(-amount)),
                            created_at: d.created_at.clone(),
                            reason,
                            from_region: region.to_string(),
                            alarm_threshold: String::new(),
                        },
                    )?;
                }
                Ok(deduction_to_proto(&d))
            })
        })
        .await?;
    st.outbox_wake.notify_one();
    Ok(answer)
}

/// AdminService.ListDeductions.
pub async fn list_deductions(
    st: &NodeState,
    req: proto::ListDeductionsRequest,
) -> Result<proto::ListDeductionsResponse> {
    let opt = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    let (s, i, p) = (
        opt(&req.settlement_id),
        opt(&req.institution_code),
        opt(&req.period),
    );
    if let Some(p) = &p {
        Period::parse(p, "period")?;
    }
    st.store
        .read(move |conn| {
            Ok(proto::ListDeductionsResponse {
                deductions: fund_store::deductions(conn, s.as_deref(), i.as_deref(), p.as_deref())?
                    .iter()
                    .map(deduction_to_proto)
                    .collect(),
            })
        })
        .await
}

/// AdminService.RecordReserve.
pub async fn record_reserve(
    st: &NodeState,
    mut req: proto::RecordReserveRequest,
) -> Result<proto::ReserveMovement> {
    let payload = payload_hash(&mut req, |r| &mut r.request_id);
    let key = RequestKey::new(SCOPE, &req.request_id, "RecordReserve", payload)?;
    let other = RegionCode::parse_city(&req.counterparty, "counterparty")?;
    if other == st.region {
        return Err(Error::invalid(
            "counterparty",
            "a reserve is held between two different regions",
        ));
    }
    let amount = money::to_fen(money::parse(&req.amount, "amount", Sign::Positive)?);
    money::parse_opt(&req.alarm_threshold, "alarm_threshold", Sign::NonNegative)?;
    let region = st.region;
    // A top-up is the home region's decision, a use the treatment region's.
    let (home, treatment, delta) = match req.kind.as_str() {
        "topup" => (region.to_string(), other.to_string(), amount),
        "use" => (other.to_string(), region.to_string(), -amount),
        k => {
            return Err(Error::invalid(
                "kind",
                format!("expected topup or use, got {k:?}"),
            ));
        }
    };
    let answer = st
        .store
        .write_as(crate::store::JobKind::Admin, move |conn| {
            idempotency::once(conn, &key, |conn| {
                let seq = sequences::next(conn, "reserve")?;
                let entry_id = format!("{region}-RS-{seq:08}");
                let now = period::now_rfc3339();
                let kind = format!("reserve_{}", req.kind);
                funds::originate(
                    conn,
                    region,
                    &proto::AdjustmentRequest {
                        request_id: entry_id.clone(),
                        entry_id: entry_id.clone(),
                        kind: kind.clone(),
                        claim_id: String::new(),
                        payer: home.clone(),
                        payee: treatment.clone(),
                        amount: money::format(money::from_fen(delta)),
                        created_at: now.clone(),
                        reason: req.note.trim().to_owned(),
                        from_region: region.to_string(),
                        alarm_threshold: req.alarm_threshold.clone(),
                    },
                )?;
                let r = fund_store::reserve(conn, &home, &treatment)?;
                Ok(proto::ReserveMovement {
                    entry_id,
                    home_region: home.clone(),
                    treatment_region: treatment.clone(),
                    kind,
                    amount: money::format(money::from_fen(delta)),
                    balance: money::format(money::from_fen(r.balance_fen)),
                    alarm: r.alarm(),
                    created_at: now,
                })
            })
        })
        .await?;
    if answer.alarm {
        tracing::warn!(home = %answer.home_region, treatment = %answer.treatment_region, balance = %answer.balance, "reserve below its alarm threshold");
    }
    st.outbox_wake.notify_one();
    Ok(answer)
}

/// AdminService.ListReserves.
pub async fn list_reserves(st: &NodeState) -> Result<proto::ListReservesResponse> {
    st.store
        .read(|conn| {
            Ok(proto::ListReservesResponse {
                reserves: reserve_balances(conn)?,
            })
        })
        .await
}

/// AdminService.HospitalStatement.
pub async fn hospital_statement(
    st: &NodeState,
    req: proto::HospitalStatementRequest,
) -> Result<proto::HospitalStatementResponse> {
    let period = Period::parse(&req.period, "period")?.to_string();
    if req.institution_code.is_empty() {
        return Err(Error::invalid("institution_code", "missing"));
    }
    let region = st.region;
    st.store
        .read(move |conn| {
            if crate::store::institutions::get(conn, &req.institution_code)?.is_none() {
                return Err(Error::NotFound(format!(
                    "no institution {} here",
                    yidi_common::error::quoted(&req.institution_code)
                )));
            }
            let rows = settlements::for_institution_period(conn, &req.institution_code, &period)?;
            let deducted: i64 =
                fund_store::deductions(conn, None, Some(&req.institution_code), Some(&period))?
                    .iter()
                    .map(|d| d.amount_fen)
                    .sum();
            let fund: i64 = rows.iter().map(|r| r.fund_fen).sum();
            let cross: i64 = rows
                .iter()
                .filter(|r| r.home_region != region.as_str())
                .map(|r| r.fund_fen)
                .sum();
            let f = |fen: i64| money::format(money::from_fen(fen));
            Ok(proto::HospitalStatementResponse {
                institution_code: req.institution_code.clone(),
                period: period.clone(),
                records: rows.len() as u64,
                medfee_sumamt: f(rows.iter().map(|r| r.medfee_fen).sum()),
                fund_pay_sumamt: f(fund),
                acct_pay: f(rows.iter().map(|r| r.acct_fen).sum()),
                deductions: f(deducted),
                payable: f(fund - deducted),
                cross_region_fund: f(cross),
                local_fund: f(fund - cross),
            })
        })
        .await
}

/// AdminService.GetLedger: this node's 台账 for a period.
pub async fn get_ledger(
    st: &NodeState,
    req: proto::GetLedgerRequest,
) -> Result<proto::GetLedgerResponse> {
    let period = Period::parse(&req.period, "period")?.to_string();
    let own = st.region;
    st.store
        .read(move |conn| {
            let f = |fen: i64| money::format(money::from_fen(fen));
            let mut positions = Vec::new();
            let mut total = 0;
            for cp in ledger::counterparties(conn, &period)? {
                let r = ledger::position(conn, Side::Receivable, &cp, &period)?;
                let p = ledger::position(conn, Side::Payable, &cp, &period)?;
                total += r.sum_fen - p.sum_fen;
                positions.push(proto::LedgerPosition {
                    receivable_count: r.count,
                    receivable_sum: f(r.sum_fen),
                    payable_count: p.count,
                    payable_sum: f(p.sum_fen),
                    net: f(r.sum_fen - p.sum_fen),
                    cleared: ledger::cleared_count(conn, &cp, &period)?,
                    cross_province: yidi_common::region::cross_province(&cp, own.as_str()),
                    counterparty: cp,
                });
            }
            Ok(proto::GetLedgerResponse {
                period,
                positions,
                net: f(total),
            })
        })
        .await
}

fn round_to_proto(r: &clearing::RoundRec, records: u64) -> proto::ClearingRound {
    proto::ClearingRound {
        round_id: r.round_id.clone(),
        period: r.period.clone(),
        state: r.state.to_string(),
        statement_digest: r.statement_digest.clone(),
        confirmed_by: r.confirmed_by.clone(),
        records,
    }
}

/// AdminService.ConfirmClearing: the operator vouches for a statement digest; the
/// coordinator's next confirmation request then succeeds if the statement matches.
pub async fn confirm_clearing(
    st: &NodeState,
    mut req: proto::ConfirmClearingRequest,
) -> Result<proto::ClearingRound> {
    let payload = payload_hash(&mut req, |r| &mut r.request_id);
    let key = RequestKey::new(SCOPE, &req.request_id, "ConfirmClearing", payload)?;
    if req.statement_digest.len() != 64 {
        return Err(Error::invalid(
            "statement_digest",
            "must be the 64-hex digest shown by `yidi clearing statement`",
        ));
    }
    st.store
        .write_as(crate::store::JobKind::Admin, move |conn| {
            idempotency::once(conn, &key, |conn| {
                let r = clearing::get(conn, &req.round_id)?.ok_or_else(|| {
                    Error::NotFound(format!(
                        "round {} is unknown here",
                        yidi_common::error::quoted(&req.round_id)
                    ))
                })?;
                if r.state != ParticipantState::Frozen {
                    return Err(Error::FailedPrecondition(format!(
                        "round {} is {} here",
                        r.round_id, r.state
                    )));
                }
                clearing::operator_confirm(conn, &r.round_id, &req.statement_digest)?;
                let r = clearing::get(conn, &req.round_id)?.unwrap_or(r);
                Ok(round_to_proto(&r, 0))
            })
        })
        .await
}

/// AdminService.ListClearingRounds.
pub async fn list_clearing_rounds(st: &NodeState) -> Result<proto::ListClearingRoundsResponse> {
    st.store
        .read(|conn| {
            Ok(proto::ListClearingRoundsResponse {
                rounds: clearing::list(conn)?
                    .iter()
                    .map(|(r, n)| round_to_proto(r, *n))
                    .collect(),
            })
        })
        .await
}
