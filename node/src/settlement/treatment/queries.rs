//! GetSettlement, ListSettlements and the institution's reconciliation (NHSA 3201/3202).

use rusqlite::Connection;
use yidi_common::{
    money::{self, Sign},
    proto,
};

use super::{
    records::{no_settlement, not_a_settlement, settlement_to_proto},
    shared::institution,
};
use crate::settlement::wire_date;
use crate::{
    Error, Result,
    context::NodeState,
    store::settlements::{self, SettlementRec},
};

/// HospitalService.GetSettlement.
pub async fn get_settlement(
    st: &NodeState,
    req: proto::GetSettlementRequest,
) -> Result<proto::Settlement> {
    institution(st, &req.institution_code).await?;
    let region = st.region;
    st.store
        .read(move |conn| {
            let s = settlements::get(conn, &req.settlement_id)?
                .ok_or_else(|| no_settlement(&req.settlement_id))?;
            if s.institution_code != req.institution_code {
                return Err(Error::PermissionDenied(format!(
                    "settlement {} belongs to another institution",
                    s.settlement_id
                )));
            }
            not_a_settlement(&s)?;
            Ok(settlement_to_proto(&s, region))
        })
        .await
}

pub(super) fn date_range(from: &str, to: &str) -> Result<(String, String)> {
    let from = wire_date(from, "from_date")?;
    let to = wire_date(to, "to_date")?;
    if to < from {
        return Err(Error::invalid(
            "to_date",
            format!("{to} is before from_date {from}"),
        ));
    }
    Ok((from.to_string(), to.to_string()))
}

/// HospitalService.ListSettlements.
pub async fn list_settlements(
    st: &NodeState,
    req: proto::ListSettlementsRequest,
) -> Result<proto::ListSettlementsResponse> {
    institution(st, &req.institution_code).await?;
    let (from, to) = date_range(&req.from_date, &req.to_date)?;
    let page = req.page.unwrap_or_default();
    let limit = crate::context::page_size(page.page_size);
    let region = st.region;
    st.store
        .read(move |conn| {
            let rows = settlements::for_institution(
                conn,
                &req.institution_code,
                &from,
                &to,
                &page.page_token,
                limit,
            )?;
            let next = if rows.len() == limit as usize {
                rows.last()
                    .map(|s| s.settlement_id.clone())
                    .unwrap_or_default()
            } else {
                String::new()
            };
            Ok(proto::ListSettlementsResponse {
                settlements: rows
                    .iter()
                    .map(|s| settlement_to_proto(s, region))
                    .collect(),
                next_page_token: next,
            })
        })
        .await
}

pub(super) fn all_for_institution(
    conn: &Connection,
    institution: &str,
    from: &str,
    to: &str,
) -> Result<Vec<SettlementRec>> {
    let mut out = Vec::new();
    let mut after = String::new();
    loop {
        let page = settlements::for_institution(conn, institution, from, to, &after, 1000)?;
        let done = page.len() < 1000;
        if let Some(last) = page.last() {
            after = last.settlement_id.clone();
        }
        out.extend(page);
        if done {
            return Ok(out);
        }
    }
}

/// HospitalService.ReconcileTotals (NHSA 3201).
pub async fn reconcile_totals(
    st: &NodeState,
    req: proto::ReconcileTotalsRequest,
) -> Result<proto::ReconcileTotalsResponse> {
    institution(st, &req.institution_code).await?;
    let (from, to) = date_range(&req.from_date, &req.to_date)?;
    let theirs = (
        req.count,
        money::to_fen(money::parse(
            &req.medfee_sumamt,
            "medfee_sumamt",
            Sign::Any,
        )?),
        money::to_fen(money::parse(
            &req.fund_pay_sumamt,
            "fund_pay_sumamt",
            Sign::Any,
        )?),
        money::to_fen(money::parse(&req.acct_pay, "acct_pay", Sign::Any)?),
    );
    let rows = st
        .store
        .read(move |conn| all_for_institution(conn, &req.institution_code, &from, &to))
        .await?;
    let ours = (
        rows.len() as u64,
        rows.iter().map(|r| r.medfee_fen).sum::<i64>(),
        rows.iter().map(|r| r.fund_fen).sum::<i64>(),
        rows.iter().map(|r| r.acct_fen).sum::<i64>(),
    );
    let f = |fen: i64| money::format(money::from_fen(fen));
    Ok(proto::ReconcileTotalsResponse {
        matches: ours == theirs,
        count: ours.0,
        medfee_sumamt: f(ours.1),
        fund_pay_sumamt: f(ours.2),
        acct_pay: f(ours.3),
    })
}

/// HospitalService.ReconcileDetail (NHSA 3202): differences record by record.
pub async fn reconcile_detail(
    st: &NodeState,
    req: proto::ReconcileDetailRequest,
) -> Result<proto::ReconcileDetailResponse> {
    institution(st, &req.institution_code).await?;
    let (from, to) = date_range(&req.from_date, &req.to_date)?;
    let mut theirs = std::collections::BTreeMap::new();
    for (i, e) in req.entries.iter().enumerate() {
        let medfee = money::to_fen(money::parse(
            &e.medfee_sumamt,
            &format!("entries[{i}].medfee_sumamt"),
            Sign::Any,
        )?);
        let fund = money::to_fen(money::parse(
            &e.fund_pay_sumamt,
            &format!("entries[{i}].fund_pay_sumamt"),
            Sign::Any,
        )?);
        if theirs
            .insert(e.settlement_id.clone(), (medfee, fund, e.clone()))
            .is_some()
        {
            return Err(Error::invalid(
                format!("entries[{i}].settlement_id"),
                format!(
                    "{} is listed twice",
                    yidi_common::error::quoted(&e.settlement_id)
                ),
            ));
        }
    }
    let rows = st
        .store
        .read(move |conn| all_for_institution(conn, &req.institution_code, &from, &to))
        .await?;
    let f = |fen: i64| money::format(money::from_fen(fen));
    let mut differences = Vec::new();
    for r in &rows {
        let node = proto::ReconcileEntry {
            settlement_id: r.settlement_id.clone(),
            medfee_sumamt: f(r.medfee_fen),
            fund_pay_sumamt: f(r.fund_fen),
        };
        match theirs.remove(&r.settlement_id) {
            None => differences.push(proto::ReconcileDifference {
                settlement_id: r.settlement_id.clone(),
                kind: "missing_at_institution".into(),
                node: Some(node),
                institution: None,
            }),
            Some((m, fu, e)) if (m, fu) != (r.medfee_fen, r.fund_fen) => {
                differences.push(proto::ReconcileDifference {
                    settlement_id: r.settlement_id.clone(),
                    kind: "amount_differs".into(),
                    node: Some(node),
                    institution: Some(e),
                })
            }
            Some(_) => {}
        }
    }
    for (id, (_, _, e)) in theirs {
        differences.push(proto::ReconcileDifference {
            settlement_id: id,
            kind: "missing_at_node".into(),
            node: None,
            institution: Some(e),
        });
    }
    Ok(proto::ReconcileDetailResponse { differences })
}
