//! The clearing round state machine. A round moves OPEN → COLLECTING → RECONCILING →
//! (DISPUTED → COLLECTING …) → STATEMENT_ISSUED → CONFIRMED → SETTLED, or ABORTED before
//! any confirmation. Every step is persisted before the next, so a restarted coordinator
//! resumes where it was; a step that needs an unreachable participant waits and is
//! retried, and the round's `missing` names who is holding it up.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use futures::{StreamExt, stream};
use yidi_common::{
    money::{self, Sign},
    netting::{self, Gross},
    period, proto,
    proto::clearing_participant_client::ClearingParticipantClient,
    round_state::RoundState,
};

use super::{CoordState, store};
use crate::{Error, Result};

type Client = ClearingParticipantClient<tonic::transport::Channel>;

/// Participants asked at once in a step (collect, confirm, mark cleared). Calls to a
/// province's nodes one after another would add up their round trips and fsyncs; all
/// at once would hold every answer in memory together. Answers that arrive together
/// are also stored together (the writer's group commit).
pub(crate) const PARALLEL_CALLS: usize = 32;

fn client(st: &CoordState, region: &str) -> Result<Client> {
    Ok(
        ClearingParticipantClient::new(st.participants.get(region)?.channel())
            .max_decoding_message_size(crate::server::MAX_MESSAGE_BYTES),
    )
}

fn now() -> String {
    period::now_rfc3339()
}

async fn set_state(st: &CoordState, id: &str, s: RoundState, note: String) -> Result<()> {
    let id = id.to_owned();
    st.store
        .write(move |conn| store::set_state(conn, &id, s, &note, &now()))
        .await
}

/// The round as its operator sees it.
pub async fn view(st: &CoordState, id: &str) -> Result<proto::Round> {
    let id = id.to_owned();
    let regions = st.participant_regions();
    st.store
        .read(move |conn| {
            let r = store::round_head(conn, &id)?.ok_or_else(|| {
                Error::NotFound(format!("no round {}", yidi_common::error::quoted(&id)))
            })?;
            let confirmed = store::confirmed(conn, &id)?;
            let cleared = store::cleared(conn, &id)?;
            let reported: BTreeSet<String> = match r.state {
                RoundState::Open | RoundState::Collecting => {
                    store::reported(conn, &id)?.into_iter().collect()
                }
                _ => BTreeSet::new(),
            };
            let missing: Vec<String> = match r.state {
                RoundState::Open | RoundState::Collecting => regions
                    .iter()
                    .filter(|p| !reported.contains(*p))
                    .cloned()
                    .collect(),
                RoundState::StatementIssued => regions
                    .iter()
                    .filter(|p| !confirmed.contains(p))
                    .cloned()
                    .collect(),
                RoundState::Settled => regions
                    .iter()
                    .filter(|p| !cleared.contains(p))
                    .cloned()
                    .collect(),
                _ => Vec::new(),
            };
            let expected = store::instructions(conn, &id)?.len();
            Ok(proto::Round {
                round_id: r.round_id,
                period: r.period,
                state: r.state.to_string(),
                missing,
                confirmed,
                updated_at: r.updated_at,
                transfers_recorded: u32::try_from(store::transfers(conn, &id)?.len())
                    .unwrap_or(u32::MAX),
                transfers_expected: u32::try_from(expected).unwrap_or(u32::MAX),
                cleared,
                note: r.note,
                allow_empty: r.allow_empty,
            })
        })
        .await
}

/// Advances a round as far as it can go now.
pub async fn advance(st: &CoordState, id: &str) -> Result<proto::Round> {
    let _guard = st.advancing.lock().await;
    for _ in 0..8 {
        let row = {
            let owned = id.to_owned();
            st.store
                .read(move |conn| store::round_head(conn, &owned))
                .await?
                .ok_or_else(|| {
                    Error::NotFound(format!("no round {}", yidi_common::error::quoted(id)))
                })?
        };
        let moved = match row.state {
            RoundState::Open => {
                set_state(st, id, RoundState::Collecting, String::new()).await?;
                true
            }
            RoundState::Collecting => collect(st, &row).await?,
            RoundState::Reconciling => reconcile(st, &row).await?,
            RoundState::StatementIssued => confirm(st, &row).await?,
            RoundState::Confirmed => settle_if_paid(st, &row).await?,
            RoundState::Settled => {
                mark_cleared(st, &row).await?;
                false
            }
            RoundState::Disputed | RoundState::Aborted => false,
        };
        if !moved {
            break;
        }
    }
    view(st, id).await
}

async fn collect(st: &CoordState, row: &store::RoundRow) -> Result<bool> {
    let have: BTreeSet<String> = {
        let id = row.round_id.clone();
        st.store
            .read(move |conn| store::reported(conn, &id))
            .await?
            .into_iter()
            .collect()
    };
    let todo: Vec<String> = st
        .participant_regions()
        .into_iter()
        .filter(|r| !have.contains(r))
        .collect();
    let answers: Vec<Result<Option<String>>> = stream::iter(todo)
        .map(|region| async move {
            let answer = match client(st, &region) {
                Ok(mut c) => c
                    .report_positions(proto::ReportPositionsRequest {
                        round_id: row.round_id.clone(),
                        period: row.period.clone(),
                    })
                    .await
                    .map(tonic::Response::into_inner)
                    .map_err(|s| s.message().to_owned()),
                Err(e) => Err(e.to_string()),
            };
            Ok(match answer {
                Ok(r) if r.region == region => {
                    let id = row.round_id.clone();
                    st.store
                        .write(move |conn| store::put_report(conn, &id, &r))
                        .await?;
                    None
                }
                Ok(r) => Some(format!("{region} (answered as {})", r.region)),
                Err(e) => Some(format!("{region} ({e})")),
            })
        })
        .buffer_unordered(PARALLEL_CALLS)
        .collect()
        .await;
    let mut missing = Vec::new();
    for a in answers {
        missing.extend(a?);
    }
    // Answers arrive in any order; the note names the missing in region order.
    missing.sort();
    if missing.is_empty() {
        set_state(st, &row.round_id, RoundState::Reconciling, String::new()).await?;
        return Ok(true);
    }
    set_state(
        st,
        &row.round_id,
        RoundState::Collecting,
        format!("waiting for {}", missing.join(", ")),
    )
    .await?;
    Ok(false)
}

/// One side of a pair as reported.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Side {
    count: u64,
    sum: String,
    digest: String,
    kinds: Vec<proto::KindSum>,
}

fn zero_side() -> Side {
    Side {
        count: 0,
        sum: money::format(rust_decimal::Decimal::ZERO),
        digest: yidi_common::digest::SetDigest::default().to_hex(),
        kinds: Vec::new(),
    }
}

/// Whether a reported by-kind breakdown adds up to the side's count and sum: one that
/// does not (or a node that sent none) leaves the pair without a breakdown rather than
/// with a wrong one.
fn kinds_add_up(kinds: &[proto::KindSum], count: u64, sum: rust_decimal::Decimal) -> bool {
    let mut n = 0;
    let mut total = rust_decimal::Decimal::ZERO;
    for k in kinds {
        match money::parse(&k.sum, "sum", Sign::Any) {
            Ok(s) => total += s,
            Err(_) => return false,
        }
        n += k.count;
    }
    !kinds.is_empty() && n == count && total == sum
}

async fn drill(
    st: &CoordState,
    round: &str,
    creditor: &str,
    debtor: &str,
) -> Result<proto::Dispute> {
    // Page by page: a disputed pair of a busy month holds millions of records.
    let list = |region: &str, counterparty: &str, side: &str| {
        let mut req = proto::ListClaimIdsRequest {
            round_id: round.to_owned(),
            counterparty: counterparty.to_owned(),
            side: side.to_owned(),
            after: String::new(),
            limit: 0,
        };
        let c = client(st, region);
        async move {
            let mut c = c?;
            let mut all = Vec::new();
            loop {
                let page = c
                    .list_claim_ids(req.clone())
                    .await
                    .map_err(|s| Error::Unavailable(s.message().to_owned()))?
                    .into_inner();
                all.extend(page.claims);
                if page.next_after.is_empty() {
                    return Ok::<_, Error>(all);
                }
                req.after = page.next_after;
            }
        }
    };
    let at_creditor: BTreeMap<String, proto::ClaimAmount> = list(creditor, debtor, "receivable")
        .await?
        .into_iter()
        .map(|c| (c.entry_id.clone(), c))
        .collect();
    let at_debtor: BTreeMap<String, proto::ClaimAmount> = list(debtor, creditor, "payable")
        .await?
        .into_iter()
        .map(|c| (c.entry_id.clone(), c))
        .collect();
    let sum = |m: &BTreeMap<String, proto::ClaimAmount>| {
        money::format(
            m.values()
                .map(|c| money::parse(&c.amount, "amount", Sign::Any).unwrap_or_default())
                .sum(),
        )
    };
    Ok(proto::Dispute {
        creditor: creditor.to_owned(),
        debtor: debtor.to_owned(),
        only_at_creditor: at_creditor
            .keys()
            .filter(|k| !at_debtor.contains_key(*k))
            .cloned()
            .collect(),
        only_at_debtor: at_debtor
            .keys()
            .filter(|k| !at_creditor.contains_key(*k))
            .cloned()
            .collect(),
        creditor_sum: sum(&at_creditor),
        debtor_sum: sum(&at_debtor),
        amount_differs: at_creditor
            .iter()
            .filter(|(k, c)| {
                at_debtor.get(*k).is_some_and(|d| {
                    (d.amount.as_str(), d.kind.as_str()) != (c.amount.as_str(), c.kind.as_str())
                })
            })
            .map(|(k, _)| k.clone())
            .collect(),
    })
}

/// Asks every participant to unfreeze a round's records. Best effort: a participant
/// that misses this releases the stale round when the next round freezes. In parallel,
/// as the round's other calls: one after another, a province's unreachable nodes would
/// add up their timeouts.
pub(crate) async fn release_all(st: &CoordState, id: &str) {
    stream::iter(st.participants.all())
        .map(|p| {
            let round_id = id.to_owned();
            async move {
                let _ = ClearingParticipantClient::new(p.channel())
                    .release_round(proto::ReleaseRoundRequest { round_id })
                    .await;
            }
        })
        .buffer_unordered(PARALLEL_CALLS)
        .collect::<Vec<()>>()
        .await;
}

async fn reconcile(st: &CoordState, row: &store::RoundRow) -> Result<bool> {
    let reports = {
        let id = row.round_id.clone();
        st.store.read(move |conn| store::reports(conn, &id)).await?
    };
    // A period in which no participant has a single record: settling it would mark the
    // period (and so every earlier one) cleared for good with nothing in it, which is
    // what an operator who mistyped a period gets. Only on request (allow_empty).
    let records: u64 = reports
        .iter()
        .flat_map(|r| &r.positions)
        .map(|p| p.receivable_count.saturating_add(p.payable_count))
        .fold(0, u64::saturating_add);
    if records == 0 && !row.allow_empty {
        release_all(st, &row.round_id).await;
        set_state(
            st,
            &row.round_id,
            RoundState::Aborted,
            format!(
                "empty period: no participant has a record of {}; nothing was cleared. To record {} as cleared with no transfers, open it again with allow_empty (yidi clearing open {} --allow-empty)",
                row.period, row.period, row.period
            ),
        )
        .await?;
        tracing::warn!(round = %row.round_id, period = %row.period, "clearing round aborted: empty period");
        return Ok(false);
    }
    // side[(creditor, debtor)] as the creditor reports it (receivable) and as the debtor does (payable).
    let mut as_creditor: BTreeMap<(String, String), Side> = BTreeMap::new();
    let mut as_debtor: BTreeMap<(String, String), Side> = BTreeMap::new();
    for r in &reports {
        for p in &r.positions {
            as_creditor.insert(
                (r.region.clone(), p.counterparty.clone()),
                Side {
                    count: p.receivable_count,
                    sum: p.receivable_sum.clone(),
                    digest: p.receivable_digest.clone(),
                    kinds: p.receivable_kinds.clone(),
                },
            );
            as_debtor.insert(
                (p.counterparty.clone(), r.region.clone()),
                Side {
                    count: p.payable_count,
                    sum: p.payable_sum.clone(),
                    digest: p.payable_digest.clone(),
                    kinds: p.payable_kinds.clone(),
                },
            );
        }
    }
    let participants = st.participant_regions();
    let pairs: BTreeSet<(String, String)> = as_creditor
        .keys()
        .chain(as_debtor.keys())
        .cloned()
        .collect();
    let mut gross = Vec::new();
    let mut kinds: BTreeMap<(String, String), Vec<proto::KindSum>> = BTreeMap::new();
    let mut disputes = Vec::new();
    for (creditor, debtor) in pairs {
        let c = as_creditor
            .get(&(creditor.clone(), debtor.clone()))
            .cloned()
            .unwrap_or_else(zero_side);
        let d = as_debtor
            .get(&(creditor.clone(), debtor.clone()))
            .cloned()
            .unwrap_or_else(zero_side);
        let same = c.count == d.count
            && money::parse(&c.sum, "sum", Sign::Any).ok()
                == money::parse(&d.sum, "sum", Sign::Any).ok()
            && c.digest == d.digest;
        if !participants.contains(&creditor) || !participants.contains(&debtor) {
            disputes.push(proto::Dispute {
                creditor: creditor.clone(),
                debtor: debtor.clone(),
                creditor_sum: c.sum.clone(),
                debtor_sum: d.sum.clone(),
                ..Default::default()
            });
            continue;
        }
        if !same {
            match drill(st, &row.round_id, &creditor, &debtor).await {
                Ok(dispute) => disputes.push(dispute),
                Err(e) => {
                    set_state(
                        st,
                        &row.round_id,
                        RoundState::Reconciling,
                        format!("drill-down {creditor}/{debtor} waiting: {e}"),
                    )
                    .await?;
                    return Ok(false);
                }
            }
            continue;
        }
        let amount = money::parse(&c.sum, "sum", Sign::Any)?;
        if c.count > 0 {
            if kinds_add_up(&c.kinds, c.count, amount) {
                kinds.insert((debtor.clone(), creditor.clone()), c.kinds.clone());
            }
            gross.push(Gross {
                debtor,
                creditor,
                amount,
                count: c.count,
            });
        }
    }
    if !disputes.is_empty() {
        let (id, n) = (row.round_id.clone(), disputes.len());
        st.store
            .write(move |conn| {
                for d in &disputes {
                    store::put_dispute(conn, &id, d)?;
                }
                store::set_state(
                    conn,
                    &id,
                    RoundState::Disputed,
                    &format!("{n} pair(s) disagree; see disputes"),
                    &now(),
                )
            })
            .await?;
        tracing::warn!(round = %row.round_id, pairs = n, "clearing round disputed");
        return Ok(false);
    }
    let result = netting::net(&participants, &gross, st.region.as_str())?;
    let f = money::format;
    let mut reserves: Vec<proto::ReserveBalance> =
        reports.iter().flat_map(|r| r.reserves.clone()).collect();
    reserves.sort_by(|a, b| {
        (&a.home_region, &a.treatment_region).cmp(&(&b.home_region, &b.treatment_region))
    });
    reserves.dedup_by(|a, b| {
        a.home_region == b.home_region && a.treatment_region == b.treatment_region
    });
    let mut statement = proto::Statement {
        round_id: row.round_id.clone(),
        period: row.period.clone(),
        nets: result
            .nets
            .iter()
            .map(|n| proto::NetPosition {
                region: n.region.clone(),
                receivable: f(n.receivable),
                payable: f(n.payable),
                net: f(n.net),
            })
            .collect(),
        instructions: result
            .instructions
            .iter()
            .map(|i| proto::PaymentInstruction {
                from_region: i.from.clone(),
                to_region: i.to.clone(),
                amount: f(i.amount),
            })
            .collect(),
        digest: String::new(),
        gross: gross
            .iter()
            .map(|g| proto::GrossEntry {
                debtor: g.debtor.clone(),
                creditor: g.creditor.clone(),
                amount: f(g.amount),
                count: g.count,
                kinds: kinds
                    .remove(&(g.debtor.clone(), g.creditor.clone()))
                    .unwrap_or_default(),
            })
            .collect(),
        bilateral_transfers: result.bilateral_transfers,
        netted_transfers: result.netted_transfers,
        clearing_account: st.region.to_string(),
        reserves,
    };
    statement.digest = netting::statement_digest(&statement);
    let note = if records == 0 {
        "empty period (allow_empty): no participant has a record; settles with no transfers"
    } else {
        "Σ net = 0"
    };
    let id = row.round_id.clone();
    st.store
        .write(move |conn| {
            store::set_statement(conn, &id, &statement)?;
            store::set_state(conn, &id, RoundState::StatementIssued, note, &now())
        })
        .await?;
    tracing::info!(round = %row.round_id, "clearing statement issued");
    Ok(true)
}

/// The statement as one participant is asked to confirm it: whole, except that the
/// gross matrix and the reserves keep only the rows the participant is party to. The
/// digest covers the round, the nets and the instructions, which are sent whole; the
/// other pairs' rows are for reference, cannot be checked against this participant's
/// ledger, and province-wide (one row per pair of regions) would make every
/// confirmation megabytes to build, send and decode.
struct Trimmer<'a> {
    statement: &'a proto::Statement,
    gross: HashMap<&'a str, Vec<usize>>,
}

impl<'a> Trimmer<'a> {
    fn new(statement: &'a proto::Statement) -> Self {
        let mut gross: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, g) in statement.gross.iter().enumerate() {
            gross.entry(g.debtor.as_str()).or_default().push(i);
            gross.entry(g.creditor.as_str()).or_default().push(i);
        }
        Self { statement, gross }
    }

    fn for_participant(&self, region: &str) -> proto::Statement {
        let s = self.statement;
        proto::Statement {
            round_id: s.round_id.clone(),
            period: s.period.clone(),
            nets: s.nets.clone(),
            instructions: s.instructions.clone(),
            digest: s.digest.clone(),
            gross: self
                .gross
                .get(region)
                .map(|rows| rows.iter().map(|&i| s.gross[i].clone()).collect())
                .unwrap_or_default(),
            bilateral_transfers: s.bilateral_transfers,
            netted_transfers: s.netted_transfers,
            clearing_account: s.clearing_account.clone(),
            reserves: s
                .reserves
                .iter()
                .filter(|r| r.home_region == region || r.treatment_region == region)
                .cloned()
                .collect(),
        }
    }
}

async fn confirm(st: &CoordState, row: &store::RoundRow) -> Result<bool> {
    let statement = {
        let id = row.round_id.clone();
        st.store
            .read(move |conn| store::round(conn, &id))
            .await?
            .and_then(|r| r.statement)
            .ok_or_else(|| Error::Internal("issued round without a statement".into()))?
    };
    let done: BTreeSet<String> = {
        let id = row.round_id.clone();
        st.store
            .read(move |conn| store::confirmed(conn, &id))
            .await?
            .into_iter()
            .collect()
    };
    let trimmer = Trimmer::new(&statement);
    let todo: Vec<String> = st
        .participant_regions()
        .into_iter()
        .filter(|r| !done.contains(r))
        .collect();
    let answers: Vec<Result<Option<String>>> = stream::iter(todo)
        .map(|region| {
            let req = proto::StatementRequest {
                request_id: format!("{}-confirm", row.round_id),
                statement: Some(trimmer.for_participant(&region)),
            };
            async move {
                let answer = match client(st, &region) {
                    Ok(mut c) => c
                        .confirm_statement(req)
                        .await
                        .map(tonic::Response::into_inner)
                        .map_err(|s| s.message().to_owned()),
                    Err(e) => Err(e.to_string()),
                };
                Ok(match answer {
                    Ok(a) if a.confirmed => {
                        let (id, by) = (row.round_id.clone(), a.confirmed_by);
                        let r = region.clone();
                        st.store
                            .write(move |conn| store::put_confirmation(conn, &id, &r, &by, &now()))
                            .await?;
                        None
                    }
                    Ok(a) => Some(format!("{region}: {}", a.confirmed_by)),
                    Err(e) => Some(format!("{region}: {e}")),
                })
            }
        })
        .buffer_unordered(PARALLEL_CALLS)
        .collect()
        .await;
    let mut waiting = Vec::new();
    for a in answers {
        waiting.extend(a?);
    }
    waiting.sort();
    if waiting.is_empty() {
        set_state(
            st,
            &row.round_id,
            RoundState::Confirmed,
            "every participant confirmed; record the transfers".into(),
        )
        .await?;
        return Ok(true);
    }
    set_state(
        st,
        &row.round_id,
        RoundState::StatementIssued,
        format!("awaiting confirmation — {}", waiting.join("; ")),
    )
    .await?;
    Ok(false)
}

async fn settle_if_paid(st: &CoordState, row: &store::RoundRow) -> Result<bool> {
    let (expected, recorded) = {
        let id = row.round_id.clone();
        st.store
            .read(move |conn| {
                Ok((
                    store::instructions(conn, &id)?.len(),
                    store::transfers(conn, &id)?.len(),
                ))
            })
            .await?
    };
    if recorded < expected {
        return Ok(false);
    }
    let note = if expected == 0 && row.allow_empty {
        "empty period settled with no transfers (opened with allow_empty)"
    } else {
        "every transfer recorded"
    };
    set_state(st, &row.round_id, RoundState::Settled, note.into()).await?;
    Ok(true)
}

async fn mark_cleared(st: &CoordState, row: &store::RoundRow) -> Result<()> {
    let done: BTreeSet<String> = {
        let id = row.round_id.clone();
        st.store
            .read(move |conn| store::cleared(conn, &id))
            .await?
            .into_iter()
            .collect()
    };
    let todo: Vec<String> = st
        .participant_regions()
        .into_iter()
        .filter(|r| !done.contains(r))
        .collect();
    let marked: Vec<Result<()>> = stream::iter(todo)
        .map(|region| async move {
            let req = proto::MarkClearedRequest {
                request_id: format!("{}-cleared", row.round_id),
                round_id: row.round_id.clone(),
                period: row.period.clone(),
            };
            let ok = match client(st, &region) {
                Ok(mut c) => c.mark_cleared(req).await.is_ok(),
                Err(_) => false,
            };
            if ok {
                let id = row.round_id.clone();
                st.store
                    .write(move |conn| store::put_cleared(conn, &id, &region, &now()))
                    .await?;
            }
            Ok(())
        })
        .buffer_unordered(PARALLEL_CALLS)
        .collect()
        .await;
    marked.into_iter().collect()
}

/// Carries every disputed record to the next round on both sides, then re-collects.
pub async fn resolve(st: &CoordState, id: &str) -> Result<proto::Round> {
    {
        let _guard = st.advancing.lock().await;
        let row = {
            let owned = id.to_owned();
            st.store
                .read(move |conn| store::round_head(conn, &owned))
                .await?
                .ok_or_else(|| {
                    Error::NotFound(format!("no round {}", yidi_common::error::quoted(id)))
                })?
        };
        if row.state != RoundState::Disputed {
            return Err(Error::FailedPrecondition(format!(
                "round {id} is {}; only a DISPUTED round is resolved",
                row.state
            )));
        }
        let disputes = {
            let id = id.to_owned();
            st.store
                .read(move |conn| store::disputes(conn, &id))
                .await?
        };
        for d in &disputes {
            for (region, counterparty, side, ids) in [
                (
                    &d.creditor,
                    &d.debtor,
                    "receivable",
                    d.only_at_creditor.iter().chain(&d.amount_differs),
                ),
                (
                    &d.debtor,
                    &d.creditor,
                    "payable",
                    d.only_at_debtor.iter().chain(&d.amount_differs),
                ),
            ] {
                let entry_ids: Vec<String> = ids.cloned().collect();
                if entry_ids.is_empty() || !st.participant_regions().contains(region) {
                    continue;
                }
                let mut c = client(st, region)?;
                c.exclude_claims(proto::ExcludeClaimsRequest {
                    request_id: format!("{id}-exclude-{region}-{counterparty}-{side}"),
                    round_id: id.to_owned(),
                    counterparty: counterparty.clone(),
                    side: side.to_owned(),
                    entry_ids,
                })
                .await
                .map_err(|s| {
                    Error::Unavailable(format!(
                        "{region} could not exclude disputed records: {}",
                        s.message()
                    ))
                })?;
            }
        }
        let id2 = id.to_owned();
        st.store
            .write(move |conn| {
                store::clear_collection(conn, &id2)?;
                store::set_state(
                    conn,
                    &id2,
                    RoundState::Collecting,
                    "disputed records carried to the next round",
                    &now(),
                )
            })
            .await?;
        tracing::info!(round = %id, pairs = disputes.len(), "disputes resolved by carrying records forward");
    }
    advance(st, id).await
}
