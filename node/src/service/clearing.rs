//! ClearingParticipant: what the coordinator asks of this node in a clearing round.
//! Only region codes, record ids, counts, sums and digests leave the node here.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use tonic::{Request, Response, Status};
use yidi_common::{
    money::{self, Sign},
    netting::statement_digest,
    period::{self, Period},
    proto::{self, clearing_participant_server::ClearingParticipant},
    region::RegionCode,
    round_state::ParticipantState,
};

use super::State;
use crate::{
    Error, Result,
    idempotency::{self, RequestKey, payload_hash},
    store::{
        clearing::{self, FreezeStep, RoundRec},
        funds,
        ledger::{self, Side},
    },
};

/// ListClaimIds records per page by default, and at most: a page of 10,000 is ~1 MB on
/// the wire, well inside the message limit even at the maximum.
const CLAIM_IDS_PAGE: u32 = 10_000;
const CLAIM_IDS_PAGE_MAX: u32 = 50_000;

/// Idempotency scope of the coordinator's requests.
const SCOPE: &str = "coordinator";

/// The ClearingParticipant implementation.
pub struct ClearingSvc {
    state: State,
    auto_confirm: bool,
    /// Counts exclusions, bumped inside their writer jobs: a confirmation verified from
    /// a read re-verifies in its writer job only if an exclusion ran in between.
    exclusions: Arc<AtomicU64>,
}

impl ClearingSvc {
    #[must_use]
    pub fn new(state: State, auto_confirm: bool) -> Self {
        Self {
            state,
            auto_confirm,
            exclusions: Arc::default(),
        }
    }
}

fn round_id(s: &str) -> Result<String> {
    if s.is_empty()
        || s.len() > 64
        || !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
    {
        return Err(Error::invalid(
            "round_id",
            "must be 1–64 characters of A-Z a-z 0-9 . _ : -",
        ));
    }
    Ok(s.to_owned())
}

fn side(s: &str) -> Result<Side> {
    match s {
        "receivable" => Ok(Side::Receivable),
        "payable" => Ok(Side::Payable),
        other => Err(Error::invalid(
            "side",
            format!("expected receivable or payable, got {other:?}"),
        )),
    }
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

/// Lets go, in bounded writer jobs, the entries a released or cleared round still
/// holds; returns how many.
async fn tidy(store: &crate::store::Store, round_id: &str) -> Result<u64> {
    let mut total = 0;
    loop {
        let id = round_id.to_owned();
        let n = store
            .write(move |conn| clearing::tidy_step(conn, &id))
            .await?;
        if n == 0 {
            return Ok(total);
        }
        total += n;
    }
}

/// Compares a statement with this node's frozen ledger.
fn verify(
    conn: &rusqlite::Connection,
    own: RegionCode,
    s: &proto::Statement,
) -> Result<Vec<String>> {
    let mut diffs = Vec::new();
    if statement_digest(s) != s.digest {
        diffs.push("the statement's digest does not match its content".to_owned());
    }
    let (recv, pay) = clearing::totals(conn, &s.round_id)?;
    let f = |fen: i64| money::format(money::from_fen(fen));
    match s.nets.iter().find(|n| n.region == own.as_str()) {
        None if recv != 0 || pay != 0 => {
            diffs.push(format!("the statement has no position for {own}"))
        }
        None => {}
        Some(n) => {
            let expect = [
                ("receivable", &n.receivable, recv),
                ("payable", &n.payable, pay),
                ("net", &n.net, recv - pay),
            ];
            for (name, theirs, ours) in expect {
                let theirs_fen = money::parse(theirs, name, Sign::Any).map(money::to_fen)?;
                if theirs_fen != ours {
                    diffs.push(format!("{name}: statement {theirs}, ledger {}", f(ours)));
                }
            }
            // What the instructions move for this region must equal its net.
            let moved: i64 = s
                .instructions
                .iter()
                .map(|i| {
                    let a = money::parse(&i.amount, "amount", Sign::Any)
                        .map(money::to_fen)
                        .unwrap_or_default();
                    if i.to_region == own.as_str() {
                        a
                    } else if i.from_region == own.as_str() {
                        -a
                    } else {
                        0
                    }
                })
                .sum();
            if moved != recv - pay {
                diffs.push(format!(
                    "instructions move {} for {own}, its net is {}",
                    f(moved),
                    f(recv - pay)
                ));
            }
        }
    }
    Ok(diffs)
}

/// A position's records by kind, as reported: counts and sums only.
fn kind_sums(kinds: &std::collections::BTreeMap<String, (u64, i64)>) -> Vec<proto::KindSum> {
    kinds
        .iter()
        .map(|(kind, (count, fen))| proto::KindSum {
            kind: kind.clone(),
            count: *count,
            sum: money::format(money::from_fen(*fen)),
        })
        .collect()
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
        let region = self.state.region;
        // Frozen in steps of bounded writer jobs (see `clearing::freeze_step`), then
        // reported from a read: a large node's round must not hold the writer.
        let mut cursor = None;
        loop {
            let (id, period) = (id.clone(), period.clone());
            let step = self
                .state
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
        let out = self
            .state
            .store
            .read(move |conn| {
                let round = known_round(conn, &id)?;
                if round.period != period {
                    return Err(Error::invalid(
                        "period",
                        format!("round {id} is for {}", round.period),
                    ));
                }
                let mut positions = Vec::new();
                for cp in clearing::counterparties(conn, &id)? {
                    let r = clearing::position(conn, &id, &cp, Side::Receivable)?;
                    let p = clearing::position(conn, &id, &cp, Side::Payable)?;
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
            })
            .await?;
        Ok(Response::new(out))
    }

    async fn list_claim_ids(
        &self,
        req: Request<proto::ListClaimIdsRequest>,
    ) -> Result<Response<proto::ListClaimIdsResponse>, Status> {
        crate::limits::check(req.get_ref())?;
        let req = req.into_inner();
        let id = round_id(&req.round_id)?;
        let side = side(&req.side)?;
        let cp = RegionCode::parse_city(&req.counterparty, "counterparty")
            .map_err(Error::from)?
            .to_string();
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
        let after = req.after;
        let out = self
            .state
            .store
            .read(move |conn| {
                known_round(conn, &id)?;
                let page = clearing::frozen_page(conn, &id, &cp, side, &after, limit)?;
                let next_after = if page.len() == limit as usize {
                    page.last().map(|f| f.entry_id.clone()).unwrap_or_default()
                } else {
                    String::new()
                };
                Ok(proto::ListClaimIdsResponse {
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
            .await?;
        Ok(Response::new(out))
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
        let cp = RegionCode::parse_city(&req.counterparty, "counterparty")
            .map_err(Error::from)?
            .to_string();
        let exclusions = Arc::clone(&self.exclusions);
        let out = self
            .state
            .store
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
                        excluded: clearing::exclude(conn, &id, &cp, side, &req.entry_ids)?,
                    })
                })
            })
            .await?;
        Ok(Response::new(out))
    }

    async fn verify_statement(
        &self,
        req: Request<proto::StatementRequest>,
    ) -> Result<Response<proto::VerifyStatementResponse>, Status> {
        crate::limits::check(req.get_ref())?;
        let s = req
            .into_inner()
            .statement
            .ok_or_else(|| Error::invalid("statement", "missing"))?;
        let region = self.state.region;
        let diffs = self
            .state
            .store
            .read(move |conn| {
                known_round(conn, &s.round_id)?;
                verify(conn, region, &s)
            })
            .await?;
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
        let s = req
            .into_inner()
            .statement
            .ok_or_else(|| Error::invalid("statement", "missing"))?;
        let region = self.state.region;
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
            self.state
                .store
                .write(move |_| Ok((exclusions.load(Ordering::SeqCst), ledger::changes())))
                .await?
        };
        let verified = {
            let s = s.clone();
            self.state
                .store
                .read(move |conn| {
                    let round = known_round(conn, &s.round_id)?;
                    (round.state == ParticipantState::Frozen)
                        .then(|| verify(conn, region, &s))
                        .transpose()
                })
                .await?
        };
        let out = self
            .state
            .store
            .write(move |conn| {
                let round = known_round(conn, &s.round_id)?;
                if matches!(
                    round.state,
                    ParticipantState::Confirmed | ParticipantState::Cleared
                ) {
                    return Ok(proto::ConfirmStatementResponse {
                        confirmed: round.statement_digest == s.digest,
                        confirmed_by: round.confirmed_by,
                    });
                }
                if round.state == ParticipantState::Freezing {
                    // Its totals are not final until the last step of the freeze.
                    return Err(Error::FailedPrecondition(format!(
                        "round {} is still being frozen here; confirm once its positions \
                         have been reported",
                        s.round_id
                    )));
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
            .await?;
        Ok(Response::new(out))
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
        // Counted from a read: a confirmed round's entries no longer change (exclusions
        // end at confirmation), and counting millions would hold the writer.
        let counted = id.clone();
        let records = self
            .state
            .store
            .read(move |conn| clearing::records_of(conn, &counted))
            .await?;
        let marked = id.clone();
        let out = self
            .state
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
        // The round is cleared from here on; its entries are marked so in steps (also
        // on a repeat, in case a stop cut the first one short).
        tidy(&self.state.store, &id).await?;
        tracing::info!(round = %req.round_id, period = %req.period, records = out.records, "clearing round settled; records cleared");
        Ok(Response::new(out))
    }

    async fn release_round(
        &self,
        req: Request<proto::ReleaseRoundRequest>,
    ) -> Result<Response<proto::ReleaseRoundResponse>, Status> {
        crate::limits::check(req.get_ref())?;
        let id = round_id(&req.into_inner().round_id)?;
        let released = id.clone();
        self.state
            .store
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
        let released = tidy(&self.state.store, &id).await?;
        Ok(Response::new(proto::ReleaseRoundResponse { released }))
    }
}
