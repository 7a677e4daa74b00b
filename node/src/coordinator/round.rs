//! The clearing round state machine. A round moves OPEN → COLLECTING → RECONCILING →
//! (DISPUTED → COLLECTING …) → STATEMENT_ISSUED → CONFIRMED → SETTLED, or ABORTED before
//! any confirmation (the states and their legal moves: common's round_state.rs). Every
//! step is persisted before the next, so a restarted coordinator resumes where it was;
//! a step that needs an unreachable participant waits and is retried, and the round's
//! `missing` names who is holding it up. This file orchestrates each step: it asks the
//! participants (fanout.rs), compares and nets what they said (reconcile.rs,
//! statement.rs: pure) and stores the outcome (store.rs).

use std::collections::BTreeSet;

use yidi_common::{
    period, proto, proto::clearing_participant_client::ClearingParticipantClient,
    round_state::RoundState,
};

use super::{
    CoordState,
    fanout::{self, Unanswered},
    reconcile::{self, Comparison},
    statement::{self, Trimmer},
    store,
};
use crate::{Error, Result};

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

pub(super) type Client = ClearingParticipantClient<tonic::transport::Channel>;

pub(super) fn client(st: &CoordState, region: &str) -> Result<Client> {
    Ok(
        ClearingParticipantClient::new(st.participants.get(region)?.channel())
            .max_decoding_message_size(crate::serving::MAX_MESSAGE_BYTES),
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

/// The participants not in `done`, in region order.
pub(super) fn all_but(st: &CoordState, done: &[String]) -> Vec<String> {
    let done: BTreeSet<&String> = done.iter().collect();
    st.participant_regions()
        .into_iter()
        .filter(|r| !done.contains(r))
        .collect()
}

/// Asks every participant in `regions` through its client: `ask` makes the call (its
/// gRPC error becomes the reason), `keep` records the answer (see `fanout::ask_every`).
pub(super) async fn ask<'a, A, Ask, AskFut, Keep, KeepFut>(
    st: &'a CoordState,
    regions: Vec<String>,
    ask: Ask,
    keep: Keep,
) -> Result<Vec<Unanswered>>
where
    Ask: Fn(Client, String) -> AskFut,
    AskFut: std::future::Future<Output = Result<tonic::Response<A>, tonic::Status>> + 'a,
    Keep: Fn(String, A) -> KeepFut,
    KeepFut: std::future::Future<Output = Result<Result<(), String>>>,
{
    fanout::ask_every(
        regions,
        st.participants.call_timeout(),
        |region| {
            let called = client(st, &region).map(|c| ask(c, region));
            async move {
                match called {
                    Ok(call) => call
                        .await
                        .map(tonic::Response::into_inner)
                        .map_err(|s| s.message().to_owned()),
                    Err(e) => Err(e.to_string()),
                }
            }
        },
        keep,
    )
    .await
}

async fn collect(st: &CoordState, row: &store::RoundRow) -> Result<bool> {
    let have = {
        let id = row.round_id.clone();
        st.store
            .read(move |conn| store::reported(conn, &id))
            .await?
    };
    // Nodes clear their own province's pairs in the provincial round; the national
    // coordinator's participants are provinces, who gather the rest (national.rs).
    let request = proto::ReportPositionsRequest {
        round_id: row.round_id.clone(),
        period: row.period.clone(),
        scope: if st.region.is_national() {
            "national"
        } else {
            "province"
        }
        .to_owned(),
    };
    let missing = ask(
        st,
        all_but(st, &have),
        |mut c, _| {
            let request = request.clone();
            async move { c.report_positions(request).await }
        },
        |region, r: proto::ReportPositionsResponse| async move {
            if r.region != region {
                return Ok(Err(format!("answered as {}", r.region)));
            }
            let id = row.round_id.clone();
            st.store
                .write(move |conn| store::put_report(conn, &id, &r))
                .await?;
            Ok(Ok(()))
        },
    )
    .await?;
    if missing.is_empty() {
        set_state(st, &row.round_id, RoundState::Reconciling, String::new()).await?;
        return Ok(true);
    }
    let missing: Vec<String> = missing
        .iter()
        .map(|m| format!("{} ({})", m.region, m.reason))
        .collect();
    set_state(
        st,
        &row.round_id,
        RoundState::Collecting,
        format!("waiting for {}", missing.join(", ")),
    )
    .await?;
    Ok(false)
}

/// Both sides' records of a pair that disagrees, compared (`reconcile::dispute`).
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
    let at_creditor = list(creditor, debtor, "receivable").await?;
    let at_debtor = list(debtor, creditor, "payable").await?;
    Ok(reconcile::dispute(creditor, debtor, at_creditor, at_debtor))
}

/// Asks every participant to unfreeze a round's records. Best effort: a participant
/// that misses this releases the stale round when the next round freezes. In parallel,
/// as the round's other calls: one after another, a province's unreachable nodes would
/// add up their timeouts.
pub(crate) async fn release_all(st: &CoordState, id: &str) {
    let request = proto::ReleaseRoundRequest {
        round_id: id.to_owned(),
    };
    let released = ask(
        st,
        st.participant_regions(),
        |mut c, _| {
            let request = request.clone();
            async move { c.release_round(request).await }
        },
        |_, _| async { Ok(Ok(())) },
    )
    .await;
    if let Ok(missed) = released
        && !missed.is_empty()
    {
        tracing::info!(round = %id, missed = missed.len(), "participants missed the release; they release it at the next freeze");
    }
}

/// Aborts a round in which no participant has a single record: settling it would mark
/// the period (and so every earlier one) cleared for good with nothing in it, which is
/// what an operator who mistyped a period gets. Only on request (allow_empty).
async fn abort_empty(st: &CoordState, row: &store::RoundRow) -> Result<()> {
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
    Ok(())
}

async fn reconcile(st: &CoordState, row: &store::RoundRow) -> Result<bool> {
    let reports = {
        let id = row.round_id.clone();
        st.store.read(move |conn| store::reports(conn, &id)).await?
    };
    let records = reconcile::record_count(&reports);
    if records == 0 && !row.allow_empty {
        abort_empty(st, row).await?;
        return Ok(false);
    }
    let participants = st.participant_regions();
    let mut agreed = Vec::new();
    let mut disputes = Vec::new();
    for pair in reconcile::pairs(&reports) {
        match reconcile::compare(&pair, &participants)? {
            Comparison::Agreed(gross) => agreed.extend(gross),
            Comparison::Stranger(dispute) => disputes.push(dispute),
            Comparison::Differs => {
                match drill(st, &row.round_id, &pair.creditor, &pair.debtor).await {
                    Ok(dispute) => disputes.push(dispute),
                    Err(e) => {
                        set_state(
                            st,
                            &row.round_id,
                            RoundState::Reconciling,
                            format!("drill-down {}/{} waiting: {e}", pair.creditor, pair.debtor),
                        )
                        .await?;
                        return Ok(false);
                    }
                }
            }
        }
    }
    if !disputes.is_empty() {
        record_disputes(st, row, disputes).await?;
        return Ok(false);
    }
    let statement = statement::issue(
        &row.round_id,
        &row.period,
        st.region.as_str(),
        &participants,
        agreed,
        &reports,
    )?;
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

async fn record_disputes(
    st: &CoordState,
    row: &store::RoundRow,
    disputes: Vec<proto::Dispute>,
) -> Result<()> {
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
    Ok(())
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
    let done = {
        let id = row.round_id.clone();
        st.store
            .read(move |conn| store::confirmed(conn, &id))
            .await?
    };
    let trimmer = Trimmer::new(&statement);
    let request_id = format!("{}-confirm", row.round_id);
    let waiting = ask(
        st,
        all_but(st, &done),
        |mut c, region| {
            let req = proto::StatementRequest {
                request_id: request_id.clone(),
                statement: Some(trimmer.for_participant(&region)),
            };
            async move { c.confirm_statement(req).await }
        },
        |region, a: proto::ConfirmStatementResponse| async move {
            if !a.confirmed {
                return Ok(Err(a.confirmed_by));
            }
            let (id, by) = (row.round_id.clone(), a.confirmed_by);
            st.store
                .write(move |conn| store::put_confirmation(conn, &id, &region, &by, &now()))
                .await?;
            Ok(Ok(()))
        },
    )
    .await?;
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
    let waiting: Vec<String> = waiting
        .iter()
        .map(|w| format!("{}: {}", w.region, w.reason))
        .collect();
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

/// Asks every participant that has not yet to mark the round cleared; the round's
/// `missing` names those still to do it, and the next step asks them again.
async fn mark_cleared(st: &CoordState, row: &store::RoundRow) -> Result<()> {
    let done = {
        let id = row.round_id.clone();
        st.store.read(move |conn| store::cleared(conn, &id)).await?
    };
    let request = proto::MarkClearedRequest {
        request_id: format!("{}-cleared", row.round_id),
        round_id: row.round_id.clone(),
        period: row.period.clone(),
    };
    ask(
        st,
        all_but(st, &done),
        |mut c, _| {
            let request = request.clone();
            async move { c.mark_cleared(request).await }
        },
        |region, _| async move {
            let id = row.round_id.clone();
            st.store
                .write(move |conn| store::put_cleared(conn, &id, &region, &now()))
                .await?;
            Ok(Ok(()))
        },
    )
    .await?;
    Ok(())
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
        for x in reconcile::exclusions(&disputes, &st.participant_regions()) {
            let mut c = client(st, &x.region)?;
            c.exclude_claims(proto::ExcludeClaimsRequest {
                request_id: format!("{id}-exclude-{}-{}-{}", x.region, x.counterparty, x.side),
                round_id: id.to_owned(),
                counterparty: x.counterparty.clone(),
                side: x.side.to_owned(),
                entry_ids: x.entry_ids,
            })
            .await
            .map_err(|s| {
                Error::Unavailable(format!(
                    "{} could not exclude disputed records: {}",
                    x.region,
                    s.message()
                ))
            })?;
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
