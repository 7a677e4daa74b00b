//! CoordinatorService: the provincial operator's interface to clearing rounds.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use yidi_common::{
    money::{self, Sign},
    period::{self, Period},
    proto::{self, coordinator_service_server::CoordinatorService},
    round_state::RoundState,
};

use super::{CoordState, round, statement, store};
use crate::{
    Error, Result,
    idempotency::{self, RequestKey, payload_hash},
};

const SCOPE: &str = "operator";

/// The CoordinatorService implementation.
pub struct CoordinatorSvc {
    state: Arc<CoordState>,
}

impl CoordinatorSvc {
    #[must_use]
    pub fn new(state: Arc<CoordState>) -> Self {
        Self { state }
    }
}

/// Advances every round that is not finished; failures are logged and retried later.
pub async fn advance_unfinished(st: &CoordState) {
    let ids = match st.store.read(store::round_ids).await {
        Ok(ids) => ids,
        Err(e) => return tracing::warn!(error = %e, "cannot list rounds"),
    };
    for id in ids {
        match round::view(st, &id).await {
            Ok(r) if r.state == RoundState::Aborted || r.state == RoundState::Disputed => {}
            Ok(r) if r.state == RoundState::Settled && r.missing.is_empty() => {}
            Ok(_) => {
                if let Err(e) = round::advance(st, &id).await {
                    tracing::warn!(round = %id, error = %e, "round could not advance");
                }
            }
            Err(e) => tracing::warn!(round = %id, error = %e, "cannot read round"),
        }
    }
}

fn finished(r: &proto::Round) -> bool {
    r.state == RoundState::Aborted || (r.state == RoundState::Settled && r.missing.is_empty())
}

#[tonic::async_trait]
impl CoordinatorService for CoordinatorSvc {
    async fn open_round(
        &self,
        req: Request<proto::OpenRoundRequest>,
    ) -> Result<Response<proto::Round>, Status> {
        crate::limits::check(req.get_ref())?;
        let mut req = req.into_inner();
        let payload = payload_hash(&mut req, |r| &mut r.request_id);
        let key = RequestKey::new(SCOPE, &req.request_id, "OpenRound", payload)?;
        // A repeat (an answer lost on the way) gets the round it opened, before the checks
        // below, which the round it opened now fails ("still OPEN").
        let prior = {
            let key = key.clone();
            self.state
                .store
                .read(move |conn| idempotency::replay::<proto::Round>(conn, &key))
                .await?
        };
        if let Some(opened) = prior {
            return Ok(Response::new(
                round::view(&self.state, &opened.round_id).await?,
            ));
        }
        let p = Period::parse(&req.period, "period").map_err(Error::from)?;
        let now = self.state.clock.now();
        let current = Period::of(now);
        if p > current {
            return Err(Error::FailedPrecondition(format!(
                "period {p} is in the future: the coordinator's current period is {current} (its clock reads {}); a period can be opened early from its first day (UTC+8) on, and without early once it is over",
                period::format_ts(now)
            ))
            .into());
        }
        if p == current && !req.early {
            return Err(Error::FailedPrecondition(format!(
                "period {p} is not over yet; clear it from {} on (or open it early: later records then go to the next round)",
                p.next()
            ))
            .into());
        }
        if self.state.participant_regions().is_empty() {
            return Err(
                Error::FailedPrecondition("the participants file lists no node".into()).into(),
            );
        }
        let ids = self.state.store.read(store::round_ids).await?;
        let mut views = Vec::new();
        for id in &ids {
            views.push(round::view(&self.state, id).await?);
        }
        if let Some(live) = views.iter().find(|r| !finished(r)) {
            return Err(Error::FailedPrecondition(format!(
                "round {} ({}) is still {}; finish or abort it first",
                live.round_id, live.period, live.state
            ))
            .into());
        }
        // A settled period is not opened again, but for the current one: a round of a
        // month not yet over was opened early, and another early round of it clears the
        // records that came in since (the nodes freeze only records not yet cleared).
        if let Some(done) = views
            .iter()
            .filter(|r| r.state == RoundState::Settled)
            .map(|r| r.period.clone())
            .max()
            && p.to_string() <= done
            && !(p == current && req.early && p.to_string() == done)
        {
            return Err(Error::FailedPrecondition(format!(
                    "period {done} is already cleared; records arriving late are carried into the next period's round"
                ))
                .into());
        }
        let n = views.iter().filter(|r| r.period == p.to_string()).count() + 1;
        // A national round's id differs from every provincial one ("2026-12-n1"): the
        // provinces forward it to their nodes, where both rounds may be live at once.
        let id = if self.state.region.is_national() {
            format!("{p}-n{n}")
        } else {
            format!("{p}-r{n}")
        };
        let id2 = id.clone();
        let allow_empty = req.allow_empty;
        let note = if allow_empty {
            format!(
                "opened with allow_empty: if no participant has a record of {p}, the round settles with no transfers and {p} counts as cleared"
            )
        } else {
            String::new()
        };
        self.state
            .store
            .write(move |conn| {
                idempotency::once(conn, &key, |conn| {
                    store::insert_round(
                        conn,
                        &id2,
                        &p.to_string(),
                        allow_empty,
                        &note,
                        &period::now_rfc3339(),
                    )?;
                    Ok(proto::Round {
                        round_id: id2.clone(),
                        period: p.to_string(),
                        state: RoundState::Open.to_string(),
                        ..Default::default()
                    })
                })
            })
            .await?;
        tracing::info!(round = %id, period = %p, allow_empty, "clearing round opened");
        Ok(Response::new(round::view(&self.state, &id).await?))
    }

    async fn run_round(
        &self,
        req: Request<proto::RoundRequest>,
    ) -> Result<Response<proto::Round>, Status> {
        crate::limits::check(req.get_ref())?;
        Ok(Response::new(
            round::advance(&self.state, &req.into_inner().round_id).await?,
        ))
    }

    async fn get_round(
        &self,
        req: Request<proto::RoundRequest>,
    ) -> Result<Response<proto::Round>, Status> {
        crate::limits::check(req.get_ref())?;
        Ok(Response::new(
            round::view(&self.state, &req.into_inner().round_id).await?,
        ))
    }

    async fn list_rounds(
        &self,
        _req: Request<proto::ListRoundsRequest>,
    ) -> Result<Response<proto::ListRoundsResponse>, Status> {
        let ids = self.state.store.read(store::round_ids).await?;
        let mut rounds = Vec::new();
        for id in ids {
            rounds.push(round::view(&self.state, &id).await?);
        }
        Ok(Response::new(proto::ListRoundsResponse { rounds }))
    }

    async fn list_disputes(
        &self,
        req: Request<proto::RoundRequest>,
    ) -> Result<Response<proto::ListDisputesResponse>, Status> {
        crate::limits::check(req.get_ref())?;
        let id = req.into_inner().round_id;
        round::view(&self.state, &id).await?;
        Ok(Response::new(proto::ListDisputesResponse {
            disputes: self
                .state
                .store
                .read(move |conn| store::disputes(conn, &id))
                .await?,
        }))
    }

    async fn resolve_disputes(
        &self,
        req: Request<proto::RoundRequest>,
    ) -> Result<Response<proto::Round>, Status> {
        crate::limits::check(req.get_ref())?;
        Ok(Response::new(
            round::resolve(&self.state, &req.into_inner().round_id).await?,
        ))
    }

    async fn get_statement(
        &self,
        req: Request<proto::RoundRequest>,
    ) -> Result<Response<proto::Statement>, Status> {
        crate::limits::check(req.get_ref())?;
        let id = req.into_inner().round_id;
        let national_id = id.clone();
        let row = self
            .state
            .store
            .read(move |conn| store::round(conn, &id))
            .await?;
        // A national round at a province: its provincial statement (what each city
        // pays or receives for its cross-province records), once issued.
        let Some(row) = row else {
            let nat = self
                .state
                .store
                .read(move |conn| super::national::national_round(conn, &national_id))
                .await?
                .ok_or_else(|| Error::NotFound("no such round".into()))?;
            return Ok(Response::new(nat.statement.ok_or_else(|| {
                Error::FailedPrecondition(format!(
                    "national round {} is {} at this province; its provincial statement is made when the national statement arrives",
                    nat.round_id,
                    nat.state.as_str()
                ))
            })?));
        };
        Ok(Response::new(row.statement.ok_or_else(|| {
            Error::FailedPrecondition(format!(
                "round {} is {}; no statement has been issued",
                row.round_id, row.state
            ))
        })?))
    }

    async fn record_transfer(
        &self,
        req: Request<proto::RecordTransferRequest>,
    ) -> Result<Response<proto::Round>, Status> {
        crate::limits::check(req.get_ref())?;
        let operator = crate::auth::caller(&req)?.describe();
        let mut req = req.into_inner();
        let payload = payload_hash(&mut req, |r| &mut r.request_id);
        let key = RequestKey::new(SCOPE, &req.request_id, "RecordTransfer", payload)?;
        let amount = money::to_fen(
            money::parse(&req.amount, "amount", Sign::Positive).map_err(Error::from)?,
        );
        if req.reference.trim().is_empty() {
            return Err(Error::invalid(
                "reference",
                "the bank reference of the transfer is required",
            )
            .into());
        }
        let id = req.round_id.clone();
        self.state
            .store
            .write(move |conn| {
                // A transfer is recorded once: whatever the request id, a second
                // recording of the same pair is refused, and the way to change what
                // was recorded is a correction (CorrectTransfer).
                let recorded = |conn: &rusqlite::Connection| -> Result<Option<store::Transfer>> {
                    Ok(store::transfers(conn, &req.round_id)?
                        .into_iter()
                        .find(|t| t.from == req.from_region && t.to == req.to_region))
                };
                let already = |t: &store::Transfer| {
                    Error::AlreadyExists(format!(
                        "the transfer {} → {} of round {} is already recorded (amount {}, reference {:?}); it is recorded once — to change its reference, correct it (CorrectTransfer; yidi clearing correct-transfer {} --from {} --to {} --reference … --reason …), which keeps the old one in its history",
                        t.from,
                        t.to,
                        req.round_id,
                        money::format(money::from_fen(t.amount_fen)),
                        t.reference,
                        req.round_id,
                        t.from,
                        t.to
                    ))
                };
                // The id was used before with another payload: when this pair is
                // recorded, the caller is after a correction, and a fresh id would
                // only meet the refusal below.
                match idempotency::replay::<proto::Round>(conn, &key) {
                    Err(Error::AlreadyExists(msg)) => {
                        return Err(recorded(conn)?.map_or(Error::AlreadyExists(msg), |t| already(&t)));
                    }
                    Err(e) => return Err(e),
                    Ok(_) => {}
                }
                idempotency::once(conn, &key, |conn| {
                    // Before the state: a settled round's transfers are all recorded,
                    // and "not CONFIRMED" would not tell the caller what to do.
                    if let Some(t) = recorded(conn)? {
                        return Err(already(&t));
                    }
                    // The head and the instructions only: this runs on the writer
                    // thread, once per transfer, and the full statement of a large
                    // province is megabytes to decode.
                    let row = store::round_head(conn, &req.round_id)?.ok_or_else(|| {
                        Error::NotFound(format!(
                            "no round {}",
                            yidi_common::error::quoted(&req.round_id)
                        ))
                    })?;
                    if row.state != RoundState::Confirmed {
                        return Err(Error::FailedPrecondition(format!(
                            "round {} is {}; transfers are recorded once it is CONFIRMED",
                            row.round_id, row.state
                        )));
                    }
                    let instructions = store::instructions(conn, &row.round_id)?;
                    if !statement::instructs(&instructions, &req.from_region, &req.to_region, amount) {
                        return Err(Error::invalid(
                            "amount",
                            format!(
                                "no payment instruction {} → {} of {} in round {}",
                                req.from_region,
                                req.to_region,
                                money::format(money::from_fen(amount)),
                                row.round_id
                            ),
                        ));
                    }
                    store::put_transfer(
                        conn,
                        &row.round_id,
                        &store::Transfer {
                            from: req.from_region.clone(),
                            to: req.to_region.clone(),
                            amount_fen: amount,
                            reference: req.reference.trim().to_owned(),
                        },
                        &store::Change {
                            operator: &operator,
                            request_id: &req.request_id,
                            reason: "",
                            at: &period::now_rfc3339(),
                        },
                    )?;
                    Ok(proto::Round {
                        round_id: row.round_id,
                        ..Default::default()
                    })
                })
            })
            .await?;
        Ok(Response::new(round::advance(&self.state, &id).await?))
    }

    async fn list_transfers(
        &self,
        req: Request<proto::RoundRequest>,
    ) -> Result<Response<proto::ListTransfersResponse>, Status> {
        crate::limits::check(req.get_ref())?;
        let id = req.into_inner().round_id;
        round::view(&self.state, &id).await?;
        let transfers = self
            .state
            .store
            .read(move |conn| {
                let current = store::transfers(conn, &id)?;
                let versions = store::transfer_versions(conn, &id)?;
                Ok(recorded_transfers(&id, &current, &versions))
            })
            .await?;
        Ok(Response::new(proto::ListTransfersResponse { transfers }))
    }

    async fn correct_transfer(
        &self,
        req: Request<proto::CorrectTransferRequest>,
    ) -> Result<Response<proto::RecordedTransfer>, Status> {
        crate::limits::check(req.get_ref())?;
        let operator = crate::auth::caller(&req)?.describe();
        let mut req = req.into_inner();
        let payload = payload_hash(&mut req, |r| &mut r.request_id);
        let key = RequestKey::new(SCOPE, &req.request_id, "CorrectTransfer", payload)?;
        let reference = req.reference.trim().to_owned();
        if reference.is_empty() {
            return Err(
                Error::invalid("reference", "the corrected bank reference is required").into(),
            );
        }
        if req.reason.trim().is_empty() {
            return Err(Error::invalid(
                "reason",
                "required: why the recorded reference was wrong (kept in the transfer's history)",
            )
            .into());
        }
        let answer = self
            .state
            .store
            .write(move |conn| {
                idempotency::once(conn, &key, |conn| {
                    store::round_head(conn, &req.round_id)?
                        .ok_or_else(|| Error::NotFound(format!("no round {}", req.round_id)))?;
                    let current = store::transfers(conn, &req.round_id)?;
                    let before = current
                        .iter()
                        .find(|t| t.from == req.from_region && t.to == req.to_region)
                        .ok_or_else(|| {
                            Error::NotFound(format!(
                                "round {} has no recorded transfer {} → {}; recorded: {}",
                                req.round_id,
                                req.from_region,
                                req.to_region,
                                if current.is_empty() {
                                    "none".to_owned()
                                } else {
                                    current
                                        .iter()
                                        .map(|t| format!("{} → {}", t.from, t.to))
                                        .collect::<Vec<_>>()
                                        .join(", ")
                                }
                            ))
                        })?;
                    if before.reference == reference {
                        return Err(Error::invalid(
                            "reference",
                            format!(
                                "the transfer {} → {} of round {} already has reference {reference:?}; nothing to correct",
                                req.from_region, req.to_region, req.round_id
                            ),
                        ));
                    }
                    store::correct_transfer(
                        conn,
                        &req.round_id,
                        &req.from_region,
                        &req.to_region,
                        &reference,
                        &store::Change {
                            operator: &operator,
                            request_id: &req.request_id,
                            reason: req.reason.trim(),
                            at: &period::now_rfc3339(),
                        },
                    )?;
                    let current = store::transfers(conn, &req.round_id)?;
                    let versions = store::transfer_versions(conn, &req.round_id)?;
                    recorded_transfers(&req.round_id, &current, &versions)
                        .into_iter()
                        .find(|t| t.from_region == req.from_region && t.to_region == req.to_region)
                        .ok_or_else(|| Error::Internal("corrected transfer not found".into()))
                })
            })
            .await?;
        tracing::info!(round = %answer.round_id, from = %answer.from_region, to = %answer.to_region, "transfer reference corrected");
        Ok(Response::new(answer))
    }

    async fn abort_round(
        &self,
        req: Request<proto::RoundRequest>,
    ) -> Result<Response<proto::Round>, Status> {
        crate::limits::check(req.get_ref())?;
        let id = req.into_inner().round_id;
        // Held from the check to the write: a step of `advance` (which holds it too)
        // cannot collect a confirmation in between, and no participant is released
        // before the round is recorded ABORTED — else a round could end CONFIRMED with
        // its participants' records released into the next round and paid twice.
        let _guard = self.state.advancing.lock().await;
        let r = round::view(&self.state, &id).await?;
        if !r.confirmed.is_empty()
            || matches!(
                RoundState::parse(&r.state).map_err(Error::from)?,
                RoundState::Confirmed | RoundState::Settled | RoundState::Aborted
            )
        {
            return Err(Error::FailedPrecondition(format!(
                "round {id} is {} with {} confirmation(s); a round can only be aborted before the first confirmation",
                r.state,
                r.confirmed.len()
            ))
            .into());
        }
        let id2 = id.clone();
        self.state
            .store
            .write(move |conn| {
                store::set_state(
                    conn,
                    &id2,
                    RoundState::Aborted,
                    "aborted by the operator",
                    &period::now_rfc3339(),
                )
            })
            .await?;
        round::release_all(&self.state, &id).await;
        Ok(Response::new(round::view(&self.state, &id).await?))
    }
}

/// The recorded transfers of a round with their histories, in (from, to) order.
fn recorded_transfers(
    round_id: &str,
    current: &[store::Transfer],
    versions: &[store::TransferVersion],
) -> Vec<proto::RecordedTransfer> {
    let amount = |fen| money::format(money::from_fen(fen));
    current
        .iter()
        .map(|t| proto::RecordedTransfer {
            round_id: round_id.to_owned(),
            from_region: t.from.clone(),
            to_region: t.to.clone(),
            amount: amount(t.amount_fen),
            reference: t.reference.clone(),
            history: versions
                .iter()
                .filter(|v| v.from == t.from && v.to == t.to)
                .map(|v| proto::TransferVersion {
                    version: v.version,
                    amount: amount(v.amount_fen),
                    reference: v.reference.clone(),
                    reason: v.reason.clone(),
                    operator: v.operator.clone(),
                    request_id: v.request_id.clone(),
                    at: v.at.clone(),
                })
                .collect(),
        })
        .collect()
}
