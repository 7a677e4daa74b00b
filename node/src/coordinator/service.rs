//! CoordinatorService: the provincial operator's interface to clearing rounds.

use std::sync::Arc;

use futures::{StreamExt, stream};
use tonic::{Request, Response, Status};
use yidi_common::{
    money::{self, Sign},
    period::{self, Period},
    proto::{
        self, clearing_participant_client::ClearingParticipantClient,
        coordinator_service_server::CoordinatorService,
    },
};

use super::{
    CoordState,
    round::{self, state},
    store,
};
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
            Ok(r) if r.state == state::ABORTED || r.state == state::DISPUTED => {}
            Ok(r) if r.state == state::SETTLED && r.missing.is_empty() => {}
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
    r.state == state::ABORTED || (r.state == state::SETTLED && r.missing.is_empty())
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
        let p = Period::parse(&req.period, "period").map_err(Error::from)?;
        if p >= Period::of(chrono::Utc::now()) && !req.early {
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
        if let Some(done) = views
            .iter()
            .filter(|r| r.state == state::SETTLED)
            .map(|r| r.period.clone())
            .max()
            && p.to_string() <= done
        {
            return Err(Error::FailedPrecondition(format!(
                    "period {done} is already cleared; records arriving late are carried into the next period's round"
                ))
                .into());
        }
        let n = views.iter().filter(|r| r.period == p.to_string()).count() + 1;
        let id = format!("{p}-r{n}");
        let id2 = id.clone();
        self.state
            .store
            .write(move |conn| {
                idempotency::once(conn, &key, |conn| {
                    store::insert_round(conn, &id2, &p.to_string(), &period::now_rfc3339())?;
                    Ok(proto::Round {
                        round_id: id2.clone(),
                        period: p.to_string(),
                        state: state::OPEN.into(),
                        ..Default::default()
                    })
                })
            })
            .await?;
        tracing::info!(round = %id, period = %p, "clearing round opened");
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
        let row = self
            .state
            .store
            .read(move |conn| store::round(conn, &id))
            .await?
            .ok_or_else(|| Error::NotFound("no such round".into()))?;
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
                idempotency::once(conn, &key, |conn| {
                    // The head and the instructions only: this runs on the writer
                    // thread, once per transfer, and the full statement of a large
                    // province is megabytes to decode.
                    let row = store::round_head(conn, &req.round_id)?.ok_or_else(|| {
                        Error::NotFound(format!(
                            "no round {}",
                            yidi_common::error::quoted(&req.round_id)
                        ))
                    })?;
                    if row.state != state::CONFIRMED {
                        return Err(Error::FailedPrecondition(format!(
                            "round {} is {}; transfers are recorded once it is CONFIRMED",
                            row.round_id, row.state
                        )));
                    }
                    let instructions = store::instructions(conn, &row.round_id)?;
                    let matches = instructions.iter().any(|i| {
                        i.from_region == req.from_region
                            && i.to_region == req.to_region
                            && money::parse(&i.amount, "amount", Sign::Any)
                                .map(money::to_fen)
                                .ok()
                                == Some(amount)
                    });
                    if !matches {
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
                    if store::transfers(conn, &row.round_id)?
                        .iter()
                        .any(|t| t.from == req.from_region && t.to == req.to_region)
                    {
                        return Err(Error::AlreadyExists(format!(
                            "the transfer {} → {} is already recorded",
                            req.from_region, req.to_region
                        )));
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
                        &period::now_rfc3339(),
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

    async fn abort_round(
        &self,
        req: Request<proto::RoundRequest>,
    ) -> Result<Response<proto::Round>, Status> {
        crate::limits::check(req.get_ref())?;
        let id = req.into_inner().round_id;
        let r = round::view(&self.state, &id).await?;
        if !r.confirmed.is_empty()
            || matches!(
                r.state.as_str(),
                state::CONFIRMED | state::SETTLED | state::ABORTED
            )
        {
            return Err(Error::FailedPrecondition(format!(
                "round {id} is {} with {} confirmation(s); a round can only be aborted before the first confirmation",
                r.state,
                r.confirmed.len()
            ))
            .into());
        }
        // Best effort: a participant that misses this releases the stale round when the
        // next round freezes. In parallel, as the round's other calls: one after another,
        // a province's unreachable nodes would add up their timeouts.
        stream::iter(self.state.participants.all())
            .map(|p| {
                let round_id = id.clone();
                async move {
                    let _ = ClearingParticipantClient::new(p.channel())
                        .release_round(proto::ReleaseRoundRequest { round_id })
                        .await;
                }
            })
            .buffer_unordered(round::PARALLEL_CALLS)
            .collect::<Vec<()>>()
            .await;
        let id2 = id.clone();
        self.state
            .store
            .write(move |conn| {
                store::set_state(
                    conn,
                    &id2,
                    state::ABORTED,
                    "aborted by the operator",
                    &period::now_rfc3339(),
                )
            })
            .await?;
        Ok(Response::new(round::view(&self.state, &id).await?))
    }
}
