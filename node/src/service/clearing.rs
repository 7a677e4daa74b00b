//! ClearingParticipant over gRPC: decodes and checks each request of the coordinator
//! and hands it to this node's clearing participant (`crate::clearing`), which does the
//! work. Only region codes, record ids, counts, sums and digests leave the node here.

use tonic::{Request, Response, Status};
use yidi_common::{
    period::Period,
    proto::{self, clearing_participant_server::ClearingParticipant},
    region::RegionCode,
};

use crate::context::State;
use crate::{
    Error, Result,
    clearing::{
        Participant,
        input::{round_id, side},
    },
    idempotency::{RequestKey, payload_hash},
    store::clearing::StepLimit,
};

/// ListClaimIds records per page by default, and at most: a page of 10,000 is ~1 MB on
/// the wire, well inside the message limit even at the maximum.
const CLAIM_IDS_PAGE: u32 = 10_000;
const CLAIM_IDS_PAGE_MAX: u32 = 50_000;

/// Idempotency scope of the coordinator's requests.
const SCOPE: &str = "coordinator";

/// The ClearingParticipant implementation.
pub struct ClearingSvc {
    participant: Participant,
}

impl ClearingSvc {
    /// `step`: the bounds of each writer job of a round's freeze or clearing.
    #[must_use]
    pub fn new(state: State, auto_confirm: bool, step: StepLimit) -> Self {
        Self {
            participant: Participant::new(state.store.clone(), state.region, auto_confirm)
                .with_step_limit(step),
        }
    }
}

fn counterparty(s: &str) -> Result<String> {
    Ok(RegionCode::parse_city(s, "counterparty")?.to_string())
}

fn statement(s: Option<proto::Statement>) -> Result<proto::Statement> {
    s.ok_or_else(|| Error::invalid("statement", "missing"))
}

#[tonic::async_trait]
impl ClearingParticipant for ClearingSvc {
    async fn report_positions(
        &self,
        req: Request<proto::ReportPositionsRequest>,
    ) -> Result<Response<proto::ReportPositionsResponse>, Status> {
        crate::limits::check(req.get_ref())?;
        let req = req.into_inner();
        let id = round_id(&req.round_id)?;
        let period = Period::parse(&req.period, "period")
            .map_err(Error::from)?
            .to_string();
        let scope = crate::store::clearing::Scope::parse(&req.scope)?;
        Ok(Response::new(
            self.participant.report_positions(id, period, scope).await?,
        ))
    }

    async fn list_claim_ids(
        &self,
        req: Request<proto::ListClaimIdsRequest>,
    ) -> Result<Response<proto::ListClaimIdsResponse>, Status> {
        crate::limits::check(req.get_ref())?;
        let req = req.into_inner();
        let id = round_id(&req.round_id)?;
        let side = side(&req.side)?;
        let cp = counterparty(&req.counterparty)?;
        let limit = match req.limit {
            0 => CLAIM_IDS_PAGE,
            n if n <= CLAIM_IDS_PAGE_MAX => n,
            n => {
                return Err(Error::invalid(
                    "limit",
                    format!("{n} is more than {CLAIM_IDS_PAGE_MAX} records per page"),
                )
                .into());
            }
        };
        let page = self
            .participant
            .claim_ids(id, cp, side, req.after, limit)
            .await?;
        Ok(Response::new(proto::ListClaimIdsResponse {
            claims: page.claims,
            next_after: page.next_after,
        }))
    }

    async fn exclude_claims(
        &self,
        req: Request<proto::ExcludeClaimsRequest>,
    ) -> Result<Response<proto::ExcludeClaimsResponse>, Status> {
        crate::limits::check(req.get_ref())?;
        let mut req = req.into_inner();
        let payload = payload_hash(&mut req, |r| &mut r.request_id);
        let key = RequestKey::new(SCOPE, &req.request_id, "ExcludeClaims", payload)?;
        let id = round_id(&req.round_id)?;
        let side = side(&req.side)?;
        let cp = counterparty(&req.counterparty)?;
        Ok(Response::new(
            self.participant
                .exclude(key, id, cp, side, req.entry_ids)
                .await?,
        ))
    }

    async fn verify_statement(
        &self,
        req: Request<proto::StatementRequest>,
    ) -> Result<Response<proto::VerifyStatementResponse>, Status> {
        crate::limits::check(req.get_ref())?;
        let s = statement(req.into_inner().statement)?;
        let diffs = self.participant.verify_statement(s).await?;
        Ok(Response::new(proto::VerifyStatementResponse {
            matches: diffs.is_empty(),
            differences: diffs,
        }))
    }

    async fn confirm_statement(
        &self,
        req: Request<proto::StatementRequest>,
    ) -> Result<Response<proto::ConfirmStatementResponse>, Status> {
        crate::limits::check(req.get_ref())?;
        let s = statement(req.into_inner().statement)?;
        Ok(Response::new(self.participant.confirm_statement(s).await?))
    }

    async fn mark_cleared(
        &self,
        req: Request<proto::MarkClearedRequest>,
    ) -> Result<Response<proto::MarkClearedResponse>, Status> {
        crate::limits::check(req.get_ref())?;
        let mut req = req.into_inner();
        let payload = payload_hash(&mut req, |r| &mut r.request_id);
        let key = RequestKey::new(SCOPE, &req.request_id, "MarkCleared", payload)?;
        let id = round_id(&req.round_id)?;
        let out = self.participant.mark_cleared(key, id).await?;
        tracing::info!(round = %req.round_id, period = %req.period, records = out.records, "clearing round settled; records cleared");
        Ok(Response::new(out))
    }

    async fn release_round(
        &self,
        req: Request<proto::ReleaseRoundRequest>,
    ) -> Result<Response<proto::ReleaseRoundResponse>, Status> {
        crate::limits::check(req.get_ref())?;
        let id = round_id(&req.into_inner().round_id)?;
        let released = self.participant.release(id).await?;
        Ok(Response::new(proto::ReleaseRoundResponse { released }))
    }
}
