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
            let Some(s) = settlements::get(conn, &req.settlement_id)? else {
                return Err(crate::store::archive::missing(
                    conn,
                    &req.settlement_id,
                    "settlement",
                    true,
                )?
                .unwrap_or_else(|| no_settlement(&req.settlement_id)));
            };
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

/// One settlement as the institution's books have it, for detail reconciliation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DetailEntry {
    pub settlement_id: String,
    pub medfee_fen: i64,
    pub fund_fen: i64,
    /// Compared when the institution gives it (NHSA 3202's file does, the gRPC entry
    /// does not).
    pub acct_fen: Option<i64>,
}

/// How one settlement differs between the node and the institution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DetailKind {
    /// The institution lists it; the node has no counted settlement of that id in the range.
    MissingAtNode,
    /// The node settled it; the institution does not list it.
    MissingAtInstitution,
    /// Both have it with different amounts.
    AmountDiffers,
}

impl DetailKind {
    /// The name ReconcileDifference.kind carries.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::MissingAtNode => "missing_at_node",
            Self::MissingAtInstitution => "missing_at_institution",
            Self::AmountDiffers => "amount_differs",
        }
    }
}

/// One difference: the node's record (absent for `MissingAtNode`) and the index of the
/// institution's entry (absent for `MissingAtInstitution`).
#[derive(Debug, Clone)]
pub struct DetailDifference {
    pub settlement_id: String,
    pub kind: DetailKind,
    pub node: Option<SettlementRec>,
    pub institution: Option<usize>,
}

/// Detail reconciliation of an institution's settlements in a date range (NHSA 3202):
/// the one implementation behind HospitalService.ReconcileDetail and the gateway's
/// 3202. `what` names the entries in messages (`entries`, or the NHSA file's lines).
pub async fn reconcile_detail_entries(
    st: &NodeState,
    institution_code: &str,
    from_date: &str,
    to_date: &str,
    entries: &[DetailEntry],
    what: &'static str,
) -> Result<Vec<DetailDifference>> {
    institution(st, institution_code).await?;
    let (from, to) = date_range(from_date, to_date)?;
    duplicates(entries, what)?;
    let code = institution_code.to_owned();
    let rows = st
        .store
        .read(move |conn| all_for_institution(conn, &code, &from, &to))
        .await?;
    Ok(compare_detail(rows, entries))
}

/// A settlement id listed twice is refused: which of the two lines would count?
fn duplicates(entries: &[DetailEntry], what: &str) -> Result<()> {
    let mut seen = std::collections::HashSet::with_capacity(entries.len());
    for (i, e) in entries.iter().enumerate() {
        if !seen.insert(e.settlement_id.as_str()) {
            return Err(Error::invalid(
                format!("{what}[{i}].settlement_id"),
                format!(
                    "{} is listed twice",
                    yidi_common::error::quoted(&e.settlement_id)
                ),
            ));
        }
    }
    Ok(())
}

/// The pure comparison: node records in settlement-id order, then the institution's
/// entries the node does not have, also in settlement-id order.
fn compare_detail(rows: Vec<SettlementRec>, entries: &[DetailEntry]) -> Vec<DetailDifference> {
    let mut theirs: std::collections::HashMap<&str, usize> = entries
        .iter()
        .enumerate()
        .map(|(i, e)| (e.settlement_id.as_str(), i))
        .collect();
    let mut differences = Vec::new();
    for r in rows {
        match theirs.remove(r.settlement_id.as_str()) {
            None => differences.push(DetailDifference {
                settlement_id: r.settlement_id.clone(),
                kind: DetailKind::MissingAtInstitution,
                node: Some(r),
                institution: None,
            }),
            Some(i) => {
                let e = &entries[i];
                let same = (e.medfee_fen, e.fund_fen) == (r.medfee_fen, r.fund_fen)
                    && e.acct_fen.is_none_or(|a| a == r.acct_fen);
                if !same {
                    differences.push(DetailDifference {
                        settlement_id: r.settlement_id.clone(),
                        kind: DetailKind::AmountDiffers,
                        node: Some(r),
                        institution: Some(i),
                    });
                }
            }
        }
    }
    let mut extra: Vec<usize> = theirs.into_values().collect();
    extra.sort_unstable_by(|a, b| entries[*a].settlement_id.cmp(&entries[*b].settlement_id));
    differences.extend(extra.into_iter().map(|i| DetailDifference {
        settlement_id: entries[i].settlement_id.clone(),
        kind: DetailKind::MissingAtNode,
        node: None,
        institution: Some(i),
    }));
    differences
}

/// HospitalService.ReconcileDetail (NHSA 3202): differences record by record.
pub async fn reconcile_detail(
    st: &NodeState,
    req: proto::ReconcileDetailRequest,
) -> Result<proto::ReconcileDetailResponse> {
    let mut entries = Vec::with_capacity(req.entries.len());
    for (i, e) in req.entries.iter().enumerate() {
        entries.push(DetailEntry {
            settlement_id: e.settlement_id.clone(),
            medfee_fen: money::to_fen(money::parse(
                &e.medfee_sumamt,
                &format!("entries[{i}].medfee_sumamt"),
                Sign::Any,
            )?),
            fund_fen: money::to_fen(money::parse(
                &e.fund_pay_sumamt,
                &format!("entries[{i}].fund_pay_sumamt"),
                Sign::Any,
            )?),
            acct_fen: None,
        });
    }
    let found = reconcile_detail_entries(
        st,
        &req.institution_code,
        &req.from_date,
        &req.to_date,
        &entries,
        "entries",
    )
    .await?;
    let f = |fen: i64| money::format(money::from_fen(fen));
    let differences = found
        .into_iter()
        .map(|d| proto::ReconcileDifference {
            settlement_id: d.settlement_id,
            kind: d.kind.name().into(),
            node: d.node.map(|r| proto::ReconcileEntry {
                settlement_id: r.settlement_id.clone(),
                medfee_sumamt: f(r.medfee_fen),
                fund_pay_sumamt: f(r.fund_fen),
            }),
            institution: d.institution.map(|i| req.entries[i].clone()),
        })
        .collect();
    Ok(proto::ReconcileDetailResponse { differences })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::states::SettlementState;

    fn rec(id: &str, medfee: i64, fund: i64, acct: i64) -> SettlementRec {
        SettlementRec {
            settlement_id: id.into(),
            visit_id: format!("V-{id}"),
            institution_code: "H1".into(),
            id_number: "P".into(),
            home_region: "330100".into(),
            visit_kind: "outpatient".into(),
            state: SettlementState::Settled,
            reverses: None,
            request_scope: "inst:H1".into(),
            request_id: format!("r-{id}"),
            payload_hash: String::new(),
            split: proto::Split::default(),
            medfee_fen: medfee,
            fund_fen: fund,
            acct_fen: acct,
            cash_fen: medfee - fund - acct,
            policy_version: 1,
            acc_version: 0,
            settled_at: String::new(),
            settle_date: "2026-03-10".into(),
            period: "2026-03".into(),
            note: String::new(),
        }
    }

    fn entry(id: &str, medfee: i64, fund: i64, acct: Option<i64>) -> DetailEntry {
        DetailEntry {
            settlement_id: id.into(),
            medfee_fen: medfee,
            fund_fen: fund,
            acct_fen: acct,
        }
    }

    /// The account share is compared when the institution gives it (NHSA 3202), not
    /// when it does not (the gRPC entry); each kind is named with its record and line.
    #[test]
    fn detail_differences_name_each_kind_and_compare_the_account_when_given() {
        let rows = || {
            vec![
                rec("S1", 6800, 4000, 1000),
                rec("S2", 6800, 4000, 1000),
                rec("S3", 100, 50, 0),
            ]
        };
        let found = |entries: &[DetailEntry]| -> Vec<(String, DetailKind, Option<usize>)> {
            compare_detail(rows(), entries)
                .into_iter()
                .map(|d| (d.settlement_id, d.kind, d.institution))
                .collect()
        };
        assert_eq!(
            found(&[
                entry("S1", 6800, 4000, Some(1000)),
                entry("S2", 6800, 4000, Some(999)),
                entry("S9", 10, 5, Some(0)),
                entry("S0", 10, 5, None),
            ]),
            [
                ("S2".to_owned(), DetailKind::AmountDiffers, Some(1)),
                ("S3".to_owned(), DetailKind::MissingAtInstitution, None),
                ("S0".to_owned(), DetailKind::MissingAtNode, Some(3)),
                ("S9".to_owned(), DetailKind::MissingAtNode, Some(2)),
            ]
        );
        assert!(
            found(&[
                entry("S1", 6800, 4000, None),
                entry("S2", 6800, 4000, None),
                entry("S3", 100, 50, None),
            ])
            .is_empty()
        );
        let e = duplicates(
            &[entry("S1", 1, 1, None), entry("S1", 1, 1, None)],
            "entries",
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid entries[1].settlement_id: \"S1\" is listed twice"
        );
    }
}
