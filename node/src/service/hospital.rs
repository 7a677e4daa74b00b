//! HospitalService: the calls an institution's system (HIS) makes at its local node.
//! Thin: each call is traced with its institution, visit and request id and delegated to
//! `settlement::treatment`; Settle and PreSettle are also counted and timed here, the
//! one place every answer passes (metrics).

use std::time::Instant;

use tonic::{Request, Response, Status};
use tracing::Instrument;
use yidi_common::proto::{self, hospital_service_server::HospitalService};

use crate::context::State;
use crate::{metrics::Op, settlement::treatment};

/// The HospitalService implementation.
pub struct HospitalSvc {
    state: State,
}

impl HospitalSvc {
    #[must_use]
    pub fn new(state: State) -> Self {
        Self { state }
    }

    /// The error a store fault gives (test hook `store_error_on_get_settlement`): a real
    /// SQLite error through the same conversion as any other.
    async fn forced_store_error(&self) -> crate::error::Error {
        let result = self
            .state
            .store
            .read(|conn| {
                conn.query_row("SELECT 1 FROM test_hook_missing_table", [], |r| {
                    r.get::<_, i64>(0)
                })
                .map_err(crate::error::Error::from)
            })
            .await;
        match result {
            Err(e) => e,
            Ok(_) => crate::error::Error::Internal("the test hook's query succeeded".into()),
        }
    }
}

/// Runs a treatment-side call inside a span naming who asked for what.
macro_rules! call {
    ($self:ident, $req:ident, $method:literal, $f:path, $inst:expr, $rid:expr) => {{
        // Sizes first (crate::limits): nothing below, errors included, sees an
        // oversized value.
        crate::limits::check($req.get_ref())?;
        // The institution a request names must be the one its certificate names.
        let caller = crate::auth::caller(&$req)?;
        let req = $req.into_inner();
        caller.check_institution(&$inst(&req))?;
        let span = tracing::info_span!($method, institution = %$inst(&req), request_id = %$rid(&req));
        let out = $f(&$self.state, req).instrument(span).await;
        out.map(Response::new).map_err(Status::from)
    }};
}

#[tonic::async_trait]
impl HospitalService for HospitalSvc {
    async fn identify(
        &self,
        req: Request<proto::IdentifyRequest>,
    ) -> Result<Response<proto::IdentifyResponse>, Status> {
        call!(
            self,
            req,
            "identify",
            treatment::identify,
            |r: &proto::IdentifyRequest| r.institution_code.clone(),
            |_r: &proto::IdentifyRequest| ""
        )
    }

    async fn open_visit(
        &self,
        req: Request<proto::OpenVisitRequest>,
    ) -> Result<Response<proto::Visit>, Status> {
        call!(
            self,
            req,
            "open_visit",
            treatment::open_visit,
            |r: &proto::OpenVisitRequest| r.institution_code.clone(),
            |r: &proto::OpenVisitRequest| r.request_id.clone()
        )
    }

    async fn close_visit(
        &self,
        req: Request<proto::CloseVisitRequest>,
    ) -> Result<Response<proto::Visit>, Status> {
        call!(
            self,
            req,
            "close_visit",
            treatment::close_visit,
            |r: &proto::CloseVisitRequest| r.institution_code.clone(),
            |r: &proto::CloseVisitRequest| r.request_id.clone()
        )
    }

    async fn cancel_visit(
        &self,
        req: Request<proto::CancelVisitRequest>,
    ) -> Result<Response<proto::Visit>, Status> {
        call!(
            self,
            req,
            "cancel_visit",
            treatment::cancel_visit,
            |r: &proto::CancelVisitRequest| r.institution_code.clone(),
            |r: &proto::CancelVisitRequest| r.request_id.clone()
        )
    }

    async fn update_visit(
        &self,
        req: Request<proto::UpdateVisitRequest>,
    ) -> Result<Response<proto::Visit>, Status> {
        call!(
            self,
            req,
            "update_visit",
            treatment::update_visit,
            |r: &proto::UpdateVisitRequest| r.institution_code.clone(),
            |r: &proto::UpdateVisitRequest| r.request_id.clone()
        )
    }

    async fn reopen_visit(
        &self,
        req: Request<proto::ReopenVisitRequest>,
    ) -> Result<Response<proto::Visit>, Status> {
        call!(
            self,
            req,
            "reopen_visit",
            treatment::reopen_visit,
            |r: &proto::ReopenVisitRequest| r.institution_code.clone(),
            |r: &proto::ReopenVisitRequest| r.request_id.clone()
        )
    }

    async fn upload_fees(
        &self,
        req: Request<proto::UploadFeesRequest>,
    ) -> Result<Response<proto::UploadFeesResponse>, Status> {
        call!(
            self,
            req,
            "upload_fees",
            treatment::upload_fees,
            |r: &proto::UploadFeesRequest| r.institution_code.clone(),
            |r: &proto::UploadFeesRequest| r.request_id.clone()
        )
    }

    async fn undo_fees(
        &self,
        req: Request<proto::UndoFeesRequest>,
    ) -> Result<Response<proto::UploadFeesResponse>, Status> {
        call!(
            self,
            req,
            "undo_fees",
            treatment::undo_fees,
            |r: &proto::UndoFeesRequest| r.institution_code.clone(),
            |r: &proto::UndoFeesRequest| r.request_id.clone()
        )
    }

    async fn pre_settle(
        &self,
        req: Request<proto::SettleRequest>,
    ) -> Result<Response<proto::Settlement>, Status> {
        let started = Instant::now();
        let answer = call!(
            self,
            req,
            "pre_settle",
            treatment::pre_settle,
            |r: &proto::SettleRequest| r.institution_code.clone(),
            |r: &proto::SettleRequest| r.request_id.clone()
        );
        self.state
            .metrics
            .settlement(Op::PreSettle, &answer, started.elapsed());
        answer
    }

    async fn settle(
        &self,
        req: Request<proto::SettleRequest>,
    ) -> Result<Response<proto::Settlement>, Status> {
        let started = Instant::now();
        let answer = call!(
            self,
            req,
            "settle",
            treatment::settle,
            |r: &proto::SettleRequest| r.institution_code.clone(),
            |r: &proto::SettleRequest| r.request_id.clone()
        );
        self.state
            .metrics
            .settlement(Op::Settle, &answer, started.elapsed());
        answer
    }

    async fn cancel_settlement(
        &self,
        req: Request<proto::CancelSettlementRequest>,
    ) -> Result<Response<proto::Settlement>, Status> {
        call!(
            self,
            req,
            "cancel_settlement",
            treatment::cancel,
            |r: &proto::CancelSettlementRequest| r.institution_code.clone(),
            |r: &proto::CancelSettlementRequest| r.request_id.clone()
        )
    }

    async fn reverse_request(
        &self,
        req: Request<proto::ReverseRequestRequest>,
    ) -> Result<Response<proto::ReverseRequestResponse>, Status> {
        call!(
            self,
            req,
            "reverse_request",
            treatment::reverse_request,
            |r: &proto::ReverseRequestRequest| r.institution_code.clone(),
            |r: &proto::ReverseRequestRequest| r.request_id.clone()
        )
    }

    async fn get_settlement(
        &self,
        req: Request<proto::GetSettlementRequest>,
    ) -> Result<Response<proto::Settlement>, Status> {
        if self
            .state
            .hooks
            .store_error_on_get_settlement
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            return Err(self.forced_store_error().await.into());
        }
        call!(
            self,
            req,
            "get_settlement",
            treatment::get_settlement,
            |r: &proto::GetSettlementRequest| r.institution_code.clone(),
            |_r: &proto::GetSettlementRequest| ""
        )
    }

    async fn list_settlements(
        &self,
        req: Request<proto::ListSettlementsRequest>,
    ) -> Result<Response<proto::ListSettlementsResponse>, Status> {
        call!(
            self,
            req,
            "list_settlements",
            treatment::list_settlements,
            |r: &proto::ListSettlementsRequest| r.institution_code.clone(),
            |_r: &proto::ListSettlementsRequest| ""
        )
    }

    async fn reconcile_totals(
        &self,
        req: Request<proto::ReconcileTotalsRequest>,
    ) -> Result<Response<proto::ReconcileTotalsResponse>, Status> {
        call!(
            self,
            req,
            "reconcile_totals",
            treatment::reconcile_totals,
            |r: &proto::ReconcileTotalsRequest| r.institution_code.clone(),
            |_r: &proto::ReconcileTotalsRequest| ""
        )
    }

    async fn reconcile_detail(
        &self,
        req: Request<proto::ReconcileDetailRequest>,
    ) -> Result<Response<proto::ReconcileDetailResponse>, Status> {
        call!(
            self,
            req,
            "reconcile_detail",
            treatment::reconcile_detail,
            |r: &proto::ReconcileDetailRequest| r.institution_code.clone(),
            |_r: &proto::ReconcileDetailRequest| ""
        )
    }
}
