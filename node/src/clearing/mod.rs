//! The node's half of clearing: what the coordinator asks of this node in a round —
//! freeze and report its positions, list a disputed pair's records, take disputed
//! records out, check and confirm the statement, mark the round cleared, release it.
//! [`Participant`] runs each of these over the store (store/clearing.rs), in bounded
//! writer jobs; the check of a statement against the ledger is pure (`verify`). The
//! gRPC service (service/clearing.rs) only decodes, checks and calls it. Only region
//! codes, record ids, counts, sums and digests leave the node here.

pub mod verify;

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use yidi_common::{money, period, proto, region::RegionCode, round_state::ParticipantState};

use crate::{
    Error, Result,
    idempotency::{self, RequestKey},
    store::{
        Store,
        clearing::{self, FreezeStep, RoundRec},
        funds,
        ledger::{self, Side},
    },
};

/// This node as a clearing participant.
pub struct Participant {
    store: Store,
    region: RegionCode,
    /// Confirm a statement that matches the ledger without the operator's confirmation.
    auto_confirm: bool,
    /// Counts exclusions, bumped inside their writer jobs: a confirmation verified from
    /// a read re-verifies in its writer job only if an exclusion ran in between.
    exclusions: Arc<AtomicU64>,
}

/// A page of a disputed pair's records.
pub struct ClaimPage {
    pub claims: Vec<proto::ClaimAmount>,
    /// The entry id to continue after; empty on the last page.
    pub next_after: String,
}

fn known_round(conn: &rusqlite::Connection, id: &str) -> Result<RoundRec> {
    clearing::get(conn, id)?.ok_or_else(|| {
        Error::NotFound(format!(
            "round {id} has not collected positions at this node"
        ))
    })
}

/// Reserve balances as reported for statements.
pub fn reserve_balances(conn: &rusqlite::Connection) -> Result<Vec<proto::ReserveBalance>> {
    Ok(funds::reserves(conn)?
        .into_iter()
        .map(|r| proto::ReserveBalance {
            alarm: r.alarm(),
            home_region: r.home_region,
            treatment_region: r.treatment_region,
            balance: money::format(money::from_fen(r.balance_fen)),
            alarm_threshold: money::format(money::from_fen(r.alarm_fen)),
        })
        .collect())
}

/// A position's records by kind, as reported: counts and sums only.
fn kind_sums(kinds: &BTreeMap<String, (u64, i64)>) -> Vec<proto::KindSum> {
    kinds
        .iter()
        .map(|(kind, (count, fen))| proto::KindSum {
            kind: kind.clone(),
            count: *count,
            sum: money::format(money::from_fen(*fen)),
        })
        .collect()
}

/// This node's positions in a frozen round: per counterparty, both sides.
fn positions(
    conn: &rusqlite::Connection,
    region: RegionCode,
    id: &str,
    period: String,
) -> Result<proto::ReportPositionsResponse> {
    let round = known_round(conn, id)?;
    if round.period != period {
        return Err(Error::invalid(
            "period",
            format!("round {id} is for {}", round.period),
        ));
    }
    let mut positions = Vec::new();
    for cp in clearing::counterparties(conn, id)? {
        let r = clearing::position(conn, id, &cp, Side::Receivable)?;
        let p = clearing::position(conn, id, &cp, Side::Payable)?;
        positions.push(proto::Position {
            counterparty: cp,
            receivable_count: r.count,
            receivable_sum: money::format(money::from_fen(r.sum_fen)),
            receivable_digest: r.digest.to_hex(),
            payable_count: p.count,
            payable_sum: money::format(money::from_fen(p.sum_fen)),
            payable_digest: p.digest.to_hex(),
            receivable_kinds: kind_sums(&r.kinds),
            payable_kinds: kind_sums(&p.kinds),
        });
    }
    Ok(proto::ReportPositionsResponse {
        region: region.to_string(),
        period,
        positions,
        reserves: reserve_balances(conn)?,
    })
}

/// Compares a statement with this node's frozen ledger.
fn verify(
    conn: &rusqlite::Connection,
    own: RegionCode,
    s: &proto::Statement,
) -> Result<Vec<String>> {
    let (recv, pay) = clearing::totals(conn, &s.round_id)?;
    verify::against_ledger(own, s, recv, pay)
}

impl Participant {
    #[must_use]
    pub fn new(store: Store, region: RegionCode, auto_confirm: bool) -> Self {
        Self {
            store,
            region,
            auto_confirm,
            exclusions: Arc::default(),
        }
    }

    /// Freezes the round's records (on its first report) and reports their positions.
    /// Frozen in steps of bounded writer jobs (see `clearing::freeze_step`), then
    /// reported from a read: a large node's round must not hold the writer.
    pub async fn report_positions(
        &self,
        id: String,
        period: String,
    ) -> Result<proto::ReportPositionsResponse> {
        let mut cursor = None;
        loop {
            let (id, period) = (id.clone(), period.clone());
            let step = self
                .store
                .write(move |conn| {
                    clearing::freeze_step(conn, &id, &period, &period::now_rfc3339(), cursor)
                })
                .await?;
            match step {
                FreezeStep::Continue(next) => cursor = next,
                FreezeStep::Done => break,
            }
        }
        let region = self.region;
        self.store
            .read(move |conn| positions(conn, region, &id, period))
            .await
    }

    /// One page (at most `limit`) of a round's frozen records of one side toward one
    /// counterparty, after entry id `after`.
    pub async fn claim_ids(
        &self,
        id: String,
        counterparty: String,
        side: Side,
        after: String,
        limit: u32,
    ) -> Result<ClaimPage> {
        self.store
            .read(move |conn| {
                known_round(conn, &id)?;
                let page = clearing::frozen_page(conn, &id, &counterparty, side, &after, limit)?;
                let next_after = if page.len() == limit as usize {
                    page.last().map(|f| f.entry_id.clone()).unwrap_or_default()
                } else {
                    String::new()
                };
                Ok(ClaimPage {
                    claims: page
                        .into_iter()
                        .map(|f| proto::ClaimAmount {
                            entry_id: f.entry_id,
                            claim_id: f.claim_id,
                            kind: f.kind,
                            amount: money::format(money::from_fen(f.amount_fen)),
                            period: f.period,
                        })
                        .collect(),
                    next_after,
                })
            })
            .await
    }

    /// Takes disputed records out of a frozen round (once per request id); they stay
    /// uncleared for the next round. Returns how many were taken out.
    pub async fn exclude(
        &self,
        key: RequestKey,
        id: String,
        counterparty: String,
        side: Side,
        entry_ids: Vec<String>,
    ) -> Result<proto::ExcludeClaimsResponse> {
        let exclusions = Arc::clone(&self.exclusions);
        self.store
            .write(move |conn| {
                exclusions.fetch_add(1, Ordering::SeqCst);
                idempotency::once(conn, &key, |conn| {
                    let round = known_round(conn, &id)?;
                    if round.state != ParticipantState::Frozen {
                        return Err(Error::FailedPrecondition(format!(
                            "round {id} is {} here; records can no longer be excluded",
                            round.state
                        )));
                    }
                    Ok(proto::ExcludeClaimsResponse {
                        excluded: clearing::exclude(conn, &id, &counterparty, side, &entry_ids)?,
                    })
                })
            })
            .await
    }

    /// The differences between a statement and this node's ledger (empty: it matches).
    pub async fn verify_statement(&self, s: proto::Statement) -> Result<Vec<String>> {
        let region = self.region;
        self.store
            .read(move |conn| {
                known_round(conn, &s.round_id)?;
                verify(conn, region, &s)
            })
            .await
    }

    /// Confirms a statement that matches this node's ledger, automatically or once the
    /// operator confirmed its digest; answers why not otherwise.
    pub async fn confirm_statement(
        &self,
        s: proto::Statement,
    ) -> Result<proto::ConfirmStatementResponse> {
        let region = self.region;
        let auto = self.auto_confirm;
        // The statement is verified from a read (the round's totals go through all its
        // records, too many for a writer job at a large node). The exclusion count is
        // taken by a writer job first, so that the read sees every exclusion run before
        // it, and any run after it shows in the count when the confirmation runs. So is
        // the count of ledger entries corrected or taken back (a provisional claim's or a
        // cancellation's answer from the counterparty), which may be frozen ones.
        let exclusions = Arc::clone(&self.exclusions);
        let seen = {
            let exclusions = Arc::clone(&exclusions);
            self.store
                .write(move |_| Ok((exclusions.load(Ordering::SeqCst), ledger::changes())))
                .await?
        };
        let verified = {
            let s = s.clone();
            self.store
                .read(move |conn| {
                    let round = known_round(conn, &s.round_id)?;
                    (round.state == ParticipantState::Frozen)
                        .then(|| verify(conn, region, &s))
                        .transpose()
                })
                .await?
        };
        self.store
            .write(move |conn| {
                let round = known_round(conn, &s.round_id)?;
                match round.state {
                    ParticipantState::Confirmed | ParticipantState::Cleared => {
                        return Ok(proto::ConfirmStatementResponse {
                            confirmed: round.statement_digest == s.digest,
                            confirmed_by: round.confirmed_by,
                        });
                    }
                    // Its totals are not final until the last step of the freeze.
                    ParticipantState::Freezing => {
                        return Err(Error::FailedPrecondition(format!(
                            "round {} is still being frozen here; confirm once its positions \
                             have been reported",
                            s.round_id
                        )));
                    }
                    ParticipantState::Frozen | ParticipantState::Released => {}
                }
                let diffs = match verified {
                    Some(d) if (exclusions.load(Ordering::SeqCst), ledger::changes()) == seen => d,
                    _ => verify(conn, region, &s)?,
                };
                if !diffs.is_empty() {
                    return Ok(proto::ConfirmStatementResponse {
                        confirmed: false,
                        confirmed_by: format!("does not match: {}", diffs.join("; ")),
                    });
                }
                let by = if auto {
                    "auto"
                } else if round.operator_digest == s.digest {
                    "operator"
                } else {
                    return Ok(proto::ConfirmStatementResponse {
                        confirmed: false,
                        confirmed_by: format!(
                            "awaiting the operator's confirmation of statement {}",
                            s.digest
                        ),
                    });
                };
                clearing::confirm(conn, &s.round_id, &s.digest, by)?;
                Ok(proto::ConfirmStatementResponse {
                    confirmed: true,
                    confirmed_by: by.to_owned(),
                })
            })
            .await
    }

    /// Marks a confirmed round cleared (once per request id), then its records, in
    /// steps (also on a repeat, in case a stop cut the first one short).
    pub async fn mark_cleared(
        &self,
        key: RequestKey,
        id: String,
    ) -> Result<proto::MarkClearedResponse> {
        // Counted from a read: a confirmed round's entries no longer change (exclusions
        // end at confirmation), and counting millions would hold the writer.
        let counted = id.clone();
        let records = self
            .store
            .read(move |conn| clearing::records_of(conn, &counted))
            .await?;
        let marked = id.clone();
        let out = self
            .store
            .write(move |conn| {
                idempotency::once(conn, &key, |conn| {
                    let round = known_round(conn, &marked)?;
                    if round.state != ParticipantState::Confirmed {
                        return Err(Error::FailedPrecondition(format!(
                            "round {marked} is {} here; only a confirmed round is cleared",
                            round.state
                        )));
                    }
                    clearing::mark_cleared(conn, &marked, &period::now_rfc3339())?;
                    Ok(proto::MarkClearedResponse {
                        cleared: true,
                        records,
                    })
                })
            })
            .await?;
        self.tidy(&id).await?;
        Ok(out)
    }

    /// Releases a round not cleared here (the coordinator aborted it); returns how many
    /// records it let go.
    pub async fn release(&self, id: String) -> Result<u64> {
        let released = id.clone();
        self.store
            .write(move |conn| {
                let id = released;
                if let Some(r) = clearing::get(conn, &id)?
                    && r.state == ParticipantState::Cleared
                {
                    return Err(Error::FailedPrecondition(format!(
                        "round {id} is already cleared here"
                    )));
                }
                clearing::release(conn, &id)
            })
            .await?;
        self.tidy(&id).await
    }

    /// Lets go, in bounded writer jobs, the entries a released or cleared round still
    /// holds; returns how many.
    async fn tidy(&self, round_id: &str) -> Result<u64> {
        let mut total = 0;
        loop {
            let id = round_id.to_owned();
            let n = self
                .store
                .write(move |conn| clearing::tidy_step(conn, &id))
                .await?;
            if n == 0 {
                return Ok(total);
            }
            total += n;
        }
    }
}
