//! A provincial coordinator as a participant of the national coordinator (two-level
//! clearing, docs/national.md). The national coordinator runs the same rounds as a
//! province (round.rs) with the provinces as its participants; each provincial
//! coordinator answers its ClearingParticipant calls by asking its own cities for their
//! cross-province records (the nodes' `national` scope) and answering for the province:
//! - report: every city's cross-province positions, summed per counterparty province
//!   (national_statement.rs); a city that does not answer holds the report up (the
//!   national round waits and names the province, whose note names the city);
//! - drill-down and exclusion: by entry id, forwarded to the cities that hold the pair;
//! - confirmation: the national statement checked against the province's report, then
//!   the provincial statement of the round (what each city pays or receives through the
//!   provincial clearing account) confirmed by every city before the province confirms;
//! - marking cleared and releasing: forwarded to every city.
//!
//! Every step is persisted in the coordinator's store (`national_*` tables) before it is
//! answered, so a restarted provincial coordinator resumes the national round where it
//! was, and the national coordinator's retries find the same answers.

use std::{collections::BTreeSet, sync::Arc};

use prost::Message;
use rusqlite::{Connection, OptionalExtension, params};
use tonic::{Request, Response, Status};
use yidi_common::{
    period::{self, Period},
    proto,
    proto::clearing_participant_server::ClearingParticipant,
    region::RegionCode,
};

use super::{CoordState, national_statement, round};
use crate::{
    Error, Result,
    clearing::input::{round_id, side},
    store::ledger::Side,
};

/// Where the province is in a national round (the `national_rounds.state` CHECK).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NationalState {
    /// Asking the cities for their cross-province positions.
    Collecting,
    /// Every city reported; the province's report stands.
    Reported,
    /// The national statement arrived; the cities are confirming the provincial one.
    Confirming,
    /// Every city confirmed; so has the province.
    Confirmed,
    /// Every city marked the round cleared.
    Cleared,
    /// The national coordinator aborted the round.
    Released,
}

impl NationalState {
    pub const ALL: [NationalState; 6] = [
        NationalState::Collecting,
        NationalState::Reported,
        NationalState::Confirming,
        NationalState::Confirmed,
        NationalState::Cleared,
        NationalState::Released,
    ];

    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            NationalState::Collecting => "collecting",
            NationalState::Reported => "reported",
            NationalState::Confirming => "confirming",
            NationalState::Confirmed => "confirmed",
            NationalState::Cleared => "cleared",
            NationalState::Released => "released",
        }
    }

    fn parse(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|x| x.as_str() == s)
            .ok_or_else(|| Error::Internal(format!("unknown national round state {s:?}")))
    }
}

/// A national round as the province keeps it.
#[derive(Debug, Clone)]
pub struct NationalRow {
    pub round_id: String,
    pub period: String,
    pub state: NationalState,
    /// The provincial statement, once the national statement arrived.
    pub statement: Option<proto::Statement>,
    /// The digest of the national statement it was made from.
    pub national_digest: String,
    pub note: String,
}

/// The province's record of a national round.
pub fn national_round(conn: &Connection, id: &str) -> Result<Option<NationalRow>> {
    let raw = conn
        .prepare_cached(
            "SELECT round_id, period, state, statement, national_digest, note FROM national_rounds WHERE round_id = ?1",
        )?
        .query_row([id], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Option<Vec<u8>>>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, String>(5)?,
            ))
        })
        .optional()?;
    raw.map(
        |(round_id, period, state, statement, national_digest, note)| {
            Ok(NationalRow {
                round_id,
                period,
                state: NationalState::parse(&state)?,
                statement: statement
                    .map(|b| {
                        proto::Statement::decode(b.as_slice()).map_err(|e| {
                            Error::Internal(format!("stored provincial statement unreadable: {e}"))
                        })
                    })
                    .transpose()?,
                national_digest,
                note,
            })
        },
    )
    .transpose()
}

fn set_state(conn: &Connection, id: &str, s: NationalState, note: &str) -> Result<()> {
    conn.prepare_cached(
        "UPDATE national_rounds SET state = ?2, note = ?3, updated_at = ?4 WHERE round_id = ?1",
    )?
    .execute(params![id, s.as_str(), note, period::now_rfc3339()])?;
    Ok(())
}

fn city_reports(conn: &Connection, id: &str) -> Result<Vec<proto::ReportPositionsResponse>> {
    let blobs: Vec<Vec<u8>> = conn
        .prepare_cached("SELECT report FROM national_reports WHERE round_id = ?1 ORDER BY region")?
        .query_map([id], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    blobs
        .iter()
        .map(|b| {
            proto::ReportPositionsResponse::decode(b.as_slice())
                .map_err(|e| Error::Internal(format!("stored city report unreadable: {e}")))
        })
        .collect()
}

/// Cities with a mark (`confirmed`, `cleared`) in a national round, and its detail.
pub fn marks(conn: &Connection, id: &str, mark: &str) -> Result<Vec<(String, String)>> {
    Ok(conn
        .prepare_cached(
            "SELECT region, detail FROM national_marks WHERE round_id = ?1 AND mark = ?2 ORDER BY region",
        )?
        .query_map(params![id, mark], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?)
}

fn put_mark(conn: &Connection, id: &str, region: &str, mark: &str, detail: &str) -> Result<()> {
    conn.prepare_cached(
        "INSERT OR REPLACE INTO national_marks (round_id, region, mark, detail, at) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![id, region, mark, detail, period::now_rfc3339()])?;
    Ok(())
}

/// The province's ClearingParticipant, served by its coordinator to the national one.
pub struct ProvinceParticipant {
    st: Arc<CoordState>,
}

impl ProvinceParticipant {
    #[must_use]
    pub fn new(st: Arc<CoordState>) -> Self {
        Self { st }
    }

    async fn row(&self, id: &str) -> Result<NationalRow> {
        let owned = id.to_owned();
        self.st
            .store
            .read(move |conn| national_round(conn, &owned))
            .await?
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "national round {id} has not collected positions at this province"
                ))
            })
    }

    async fn reports(&self, id: &str) -> Result<Vec<proto::ReportPositionsResponse>> {
        let owned = id.to_owned();
        self.st
            .store
            .read(move |conn| city_reports(conn, &owned))
            .await
    }

    /// Collects the cities' reports not yet stored; Ok when every city has reported.
    async fn collect(&self, id: &str, period: &str) -> Result<Vec<proto::ReportPositionsResponse>> {
        let have: Vec<String> = self
            .reports(id)
            .await?
            .into_iter()
            .map(|r| r.region)
            .collect();
        let request = proto::ReportPositionsRequest {
            round_id: id.to_owned(),
            period: period.to_owned(),
            scope: "national".to_owned(),
        };
        let st = &*self.st;
        let missing = round::ask(
            st,
            round::all_but(st, &have),
            |mut c, _| {
                let request = request.clone();
                async move { c.report_positions(request).await }
            },
            |region, r: proto::ReportPositionsResponse| async move {
                if r.region != region {
                    return Ok(Err(format!("answered as {}", r.region)));
                }
                let id = id.to_owned();
                st.store
                    .write(move |conn| {
                        conn.prepare_cached(
                            "INSERT OR REPLACE INTO national_reports (round_id, region, report) VALUES (?1, ?2, ?3)",
                        )?
                        .execute(params![id, r.region, r.encode_to_vec()])?;
                        Ok(())
                    })
                    .await?;
                Ok(Ok(()))
            },
        )
        .await?;
        if !missing.is_empty() {
            let waiting: Vec<String> = missing
                .iter()
                .map(|m| format!("{} ({})", m.region, m.reason))
                .collect();
            let note = format!("waiting for {}", waiting.join(", "));
            let owned = id.to_owned();
            let n = note.clone();
            st.store
                .write(move |conn| set_state(conn, &owned, NationalState::Collecting, &n))
                .await?;
            return Err(Error::Unavailable(note));
        }
        let owned = id.to_owned();
        st.store
            .write(move |conn| {
                set_state(
                    conn,
                    &owned,
                    NationalState::Reported,
                    "every city reported its cross-province positions",
                )
            })
            .await?;
        self.reports(id).await
    }

    /// The province's report of a national round: its cities' positions, summed.
    pub async fn report(
        &self,
        id: String,
        period: String,
    ) -> Result<proto::ReportPositionsResponse> {
        let existing = {
            let owned = id.clone();
            self.st
                .store
                .read(move |conn| national_round(conn, &owned))
                .await?
        };
        let collected = existing
            .as_ref()
            .is_some_and(|r| r.state != NationalState::Collecting);
        match existing {
            Some(r) if r.period != period => {
                return Err(Error::invalid(
                    "period",
                    format!("national round {id} is for {}", r.period),
                ));
            }
            Some(r) if r.state == NationalState::Released => {
                return Err(Error::FailedPrecondition(format!(
                    "national round {id} was released here"
                )));
            }
            Some(_) => {}
            None => {
                let (owned, p) = (id.clone(), period.clone());
                self.st
                    .store
                    .write(move |conn| {
                        conn.prepare_cached(
                            "INSERT OR IGNORE INTO national_rounds (round_id, period, state, updated_at) VALUES (?1, ?2, ?3, ?4)",
                        )?
                        .execute(params![
                            owned,
                            p,
                            NationalState::Collecting.as_str(),
                            period::now_rfc3339()
                        ])?;
                        Ok(())
                    })
                    .await?;
                tracing::info!(round = %id, "national round: collecting the cities' cross-province positions");
            }
        }
        // Once every city has reported, the report stands (a repeated call, or one after
        // the confirmation, must not move the round back).
        let reports = if collected {
            self.reports(&id).await?
        } else {
            self.collect(&id, &period).await?
        };
        national_statement::aggregate(self.st.region.as_str(), &reports, &period)
    }

    /// Every record toward `province` on `side` in the round, by (city, counterparty
    /// city), asked of the cities that reported any.
    async fn records_toward(
        &self,
        id: &str,
        province: RegionCode,
        side: Side,
    ) -> Result<Vec<(String, String, proto::ClaimAmount)>> {
        let reports = self.reports(id).await?;
        let side_name = match side {
            Side::Receivable => "receivable",
            Side::Payable => "payable",
        };
        let mut out = Vec::new();
        for r in &reports {
            for p in &r.positions {
                let count = match side {
                    Side::Receivable => p.receivable_count,
                    Side::Payable => p.payable_count,
                };
                if count == 0 || !p.counterparty.starts_with(&province.as_str()[..2]) {
                    continue;
                }
                let mut c = round::client(&self.st, &r.region)?;
                let mut req = proto::ListClaimIdsRequest {
                    round_id: id.to_owned(),
                    counterparty: p.counterparty.clone(),
                    side: side_name.to_owned(),
                    after: String::new(),
                    limit: 0,
                };
                loop {
                    let page = c
                        .list_claim_ids(req.clone())
                        .await
                        .map_err(|s| Error::Unavailable(format!("{}: {}", r.region, s.message())))?
                        .into_inner();
                    out.extend(
                        page.claims
                            .into_iter()
                            .map(|x| (r.region.clone(), p.counterparty.clone(), x)),
                    );
                    if page.next_after.is_empty() {
                        break;
                    }
                    req.after = page.next_after;
                }
            }
        }
        out.sort_by(|a, b| a.2.entry_id.cmp(&b.2.entry_id));
        Ok(out)
    }

    /// A page of the province's records toward `province` (drill-down by entry id).
    pub async fn claim_ids(
        &self,
        id: String,
        province: RegionCode,
        side: Side,
        after: String,
        limit: u32,
    ) -> Result<proto::ListClaimIdsResponse> {
        self.row(&id).await?;
        let all = self.records_toward(&id, province, side).await?;
        let page: Vec<proto::ClaimAmount> = all
            .into_iter()
            .map(|(_, _, c)| c)
            .filter(|c| after.is_empty() || c.entry_id > after)
            .take(limit as usize)
            .collect();
        let next_after = if page.len() == limit as usize {
            page.last().map(|c| c.entry_id.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(proto::ListClaimIdsResponse {
            claims: page,
            next_after,
        })
    }

    /// Takes disputed records out of the round at the cities holding them; the round
    /// then collects again.
    pub async fn exclude(
        &self,
        request_id: String,
        id: String,
        province: RegionCode,
        side: Side,
        entry_ids: Vec<String>,
    ) -> Result<proto::ExcludeClaimsResponse> {
        self.row(&id).await?;
        let wanted: BTreeSet<String> = entry_ids.into_iter().collect();
        let held = self.records_toward(&id, province, side).await?;
        let mut by_pair: std::collections::BTreeMap<(String, String), Vec<String>> =
            std::collections::BTreeMap::new();
        for (city, cp, c) in held {
            if wanted.contains(&c.entry_id) {
                by_pair.entry((city, cp)).or_default().push(c.entry_id);
            }
        }
        let side_name = match side {
            Side::Receivable => "receivable",
            Side::Payable => "payable",
        };
        let mut excluded = 0;
        for ((city, cp), ids) in by_pair {
            let mut c = round::client(&self.st, &city)?;
            excluded += c
                .exclude_claims(proto::ExcludeClaimsRequest {
                    request_id: format!("{request_id}-{city}-{cp}"),
                    round_id: id.clone(),
                    counterparty: cp.clone(),
                    side: side_name.to_owned(),
                    entry_ids: ids,
                })
                .await
                .map_err(|s| Error::Unavailable(format!("{city}: {}", s.message())))?
                .into_inner()
                .excluded;
        }
        let owned = id.clone();
        self.st
            .store
            .write(move |conn| {
                conn.prepare_cached("DELETE FROM national_reports WHERE round_id = ?1")?
                    .execute([&owned])?;
                set_state(
                    conn,
                    &owned,
                    NationalState::Collecting,
                    "disputed records carried to the next round; collecting again",
                )
            })
            .await?;
        Ok(proto::ExcludeClaimsResponse { excluded })
    }

    /// The national statement against the province's report (empty: it matches).
    pub async fn verify(&self, s: &proto::Statement) -> Result<Vec<String>> {
        self.row(&s.round_id).await?;
        let reports = self.reports(&s.round_id).await?;
        let agg = national_statement::aggregate(self.st.region.as_str(), &reports, &s.period)?;
        let (r, p) = national_statement::totals_fen(&agg)?;
        crate::clearing::verify::against_ledger(self.st.region, s, r, p)
    }

    /// Confirms the national statement once it matches the province's report and every
    /// city has confirmed the provincial statement made from it.
    pub async fn confirm(&self, s: proto::Statement) -> Result<proto::ConfirmStatementResponse> {
        let row = self.row(&s.round_id).await?;
        match row.state {
            NationalState::Confirmed | NationalState::Cleared => {
                return Ok(proto::ConfirmStatementResponse {
                    confirmed: row.national_digest == s.digest,
                    confirmed_by: row.note,
                });
            }
            NationalState::Collecting => {
                return Err(Error::FailedPrecondition(format!(
                    "national round {} is still collecting here; confirm once the province has reported",
                    s.round_id
                )));
            }
            NationalState::Released => {
                return Err(Error::FailedPrecondition(format!(
                    "national round {} was released here; it cannot become confirmed",
                    s.round_id
                )));
            }
            NationalState::Reported | NationalState::Confirming => {}
        }
        let diffs = self.verify(&s).await?;
        if !diffs.is_empty() {
            return Ok(proto::ConfirmStatementResponse {
                confirmed: false,
                confirmed_by: format!("does not match: {}", diffs.join("; ")),
            });
        }
        let provincial = match row.statement {
            Some(p) if row.national_digest == s.digest => p,
            _ => {
                let reports = self.reports(&s.round_id).await?;
                let p = national_statement::provincial(
                    self.st.region.as_str(),
                    &self.st.participant_regions(),
                    &reports,
                    &s,
                )?;
                let (id, enc, digest) = (s.round_id.clone(), p.encode_to_vec(), s.digest.clone());
                self.st
                    .store
                    .write(move |conn| {
                        conn.prepare_cached(
                            "UPDATE national_rounds SET statement = ?2, national_digest = ?3 WHERE round_id = ?1",
                        )?
                        .execute(params![id, enc, digest])?;
                        // A new national statement: confirmations of another are void.
                        conn.prepare_cached(
                            "DELETE FROM national_marks WHERE round_id = ?1 AND mark = 'confirmed'",
                        )?
                        .execute([&id])?;
                        set_state(
                            conn,
                            &id,
                            NationalState::Confirming,
                            "the cities are confirming the provincial statement",
                        )
                    })
                    .await?;
                p
            }
        };
        let done: Vec<String> = {
            let id = s.round_id.clone();
            self.st
                .store
                .read(move |conn| marks(conn, &id, "confirmed"))
                .await?
                .into_iter()
                .map(|(r, _)| r)
                .collect()
        };
        let st = &*self.st;
        let request_id = format!("{}-confirm-{}", s.round_id, &provincial.digest[..16]);
        let waiting = round::ask(
            st,
            round::all_but(st, &done),
            |mut c, _| {
                let req = proto::StatementRequest {
                    request_id: request_id.clone(),
                    statement: Some(provincial.clone()),
                };
                async move { c.confirm_statement(req).await }
            },
            |region, a: proto::ConfirmStatementResponse| {
                let id = s.round_id.clone();
                async move {
                    if !a.confirmed {
                        return Ok(Err(a.confirmed_by));
                    }
                    st.store
                        .write(move |conn| {
                            put_mark(conn, &id, &region, "confirmed", &a.confirmed_by)
                        })
                        .await?;
                    Ok(Ok(()))
                }
            },
        )
        .await?;
        if !waiting.is_empty() {
            let w: Vec<String> = waiting
                .iter()
                .map(|w| format!("{}: {}", w.region, w.reason))
                .collect();
            let note = format!("awaiting the cities' confirmation — {}", w.join("; "));
            let (id, n) = (s.round_id.clone(), note.clone());
            st.store
                .write(move |conn| set_state(conn, &id, NationalState::Confirming, &n))
                .await?;
            return Ok(proto::ConfirmStatementResponse {
                confirmed: false,
                confirmed_by: note,
            });
        }
        let by = format!(
            "province {}: every city confirmed statement {}",
            st.region, provincial.digest
        );
        let (id, n) = (s.round_id.clone(), by.clone());
        st.store
            .write(move |conn| set_state(conn, &id, NationalState::Confirmed, &n))
            .await?;
        tracing::info!(round = %s.round_id, "national round confirmed by the province and its cities");
        Ok(proto::ConfirmStatementResponse {
            confirmed: true,
            confirmed_by: by,
        })
    }

    /// Has every city mark the round cleared; UNAVAILABLE (retried by the national
    /// coordinator) while one has not.
    pub async fn mark_cleared(
        &self,
        id: String,
        period: String,
    ) -> Result<proto::MarkClearedResponse> {
        let row = self.row(&id).await?;
        if !matches!(row.state, NationalState::Confirmed | NationalState::Cleared) {
            return Err(Error::FailedPrecondition(format!(
                "national round {id} is {} here; only a confirmed round is cleared",
                row.state.as_str()
            )));
        }
        let done: Vec<String> = {
            let id = id.clone();
            self.st
                .store
                .read(move |conn| marks(conn, &id, "cleared"))
                .await?
                .into_iter()
                .map(|(r, _)| r)
                .collect()
        };
        let st = &*self.st;
        let request = proto::MarkClearedRequest {
            request_id: format!("{id}-cleared"),
            round_id: id.clone(),
            period,
        };
        let missing = round::ask(
            st,
            round::all_but(st, &done),
            |mut c, _| {
                let request = request.clone();
                async move { c.mark_cleared(request).await }
            },
            |region, a: proto::MarkClearedResponse| {
                let id = id.clone();
                async move {
                    st.store
                        .write(move |conn| {
                            put_mark(conn, &id, &region, "cleared", &a.records.to_string())
                        })
                        .await?;
                    Ok(Ok(()))
                }
            },
        )
        .await?;
        if !missing.is_empty() {
            let w: Vec<String> = missing
                .iter()
                .map(|m| format!("{} ({})", m.region, m.reason))
                .collect();
            return Err(Error::Unavailable(format!(
                "waiting for {} to mark the round cleared",
                w.join(", ")
            )));
        }
        let (owned, records) = {
            let read = id.clone();
            let marks = st
                .store
                .read(move |conn| marks(conn, &read, "cleared"))
                .await?;
            (
                id,
                marks
                    .iter()
                    .map(|(_, d)| d.parse::<u64>().unwrap_or_default())
                    .sum::<u64>(),
            )
        };
        st.store
            .write(move |conn| {
                set_state(
                    conn,
                    &owned,
                    NationalState::Cleared,
                    "every city marked the round cleared",
                )
            })
            .await?;
        Ok(proto::MarkClearedResponse {
            cleared: true,
            records,
        })
    }

    /// Releases an aborted national round at every city (best effort, as a province's).
    pub async fn release(&self, id: String) -> Result<u64> {
        let row = self.row(&id).await?;
        if row.state == NationalState::Cleared {
            return Err(Error::FailedPrecondition(format!(
                "national round {id} is already cleared here"
            )));
        }
        let owned = id.clone();
        self.st
            .store
            .write(move |conn| {
                set_state(
                    conn,
                    &owned,
                    NationalState::Released,
                    "aborted by the national coordinator",
                )
            })
            .await?;
        round::release_all(&self.st, &id).await;
        Ok(0)
    }
}

fn province(s: &str) -> Result<RegionCode> {
    let r = RegionCode::parse(s, "counterparty")?;
    if !r.is_province() {
        return Err(Error::invalid(
            "counterparty",
            format!(
                "{r} is not a province code like 320000: a province's counterparties are provinces"
            ),
        ));
    }
    Ok(r)
}

/// Most records per drill-down page (as a node's).
const PAGE: u32 = 10_000;

#[tonic::async_trait]
impl ClearingParticipant for ProvinceParticipant {
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
        Ok(Response::new(self.report(id, period).await?))
    }

    async fn list_claim_ids(
        &self,
        req: Request<proto::ListClaimIdsRequest>,
    ) -> Result<Response<proto::ListClaimIdsResponse>, Status> {
        crate::limits::check(req.get_ref())?;
        let req = req.into_inner();
        let id = round_id(&req.round_id)?;
        let side = side(&req.side)?;
        let q = province(&req.counterparty)?;
        let limit = if req.limit == 0 {
            PAGE
        } else {
            req.limit.min(PAGE)
        };
        Ok(Response::new(
            self.claim_ids(id, q, side, req.after, limit).await?,
        ))
    }

    async fn exclude_claims(
        &self,
        req: Request<proto::ExcludeClaimsRequest>,
    ) -> Result<Response<proto::ExcludeClaimsResponse>, Status> {
        crate::limits::check(req.get_ref())?;
        let req = req.into_inner();
        let id = round_id(&req.round_id)?;
        let side = side(&req.side)?;
        let q = province(&req.counterparty)?;
        Ok(Response::new(
            self.exclude(req.request_id, id, q, side, req.entry_ids)
                .await?,
        ))
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
        let diffs = self.verify(&s).await?;
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
        Ok(Response::new(self.confirm(s).await?))
    }

    async fn mark_cleared(
        &self,
        req: Request<proto::MarkClearedRequest>,
    ) -> Result<Response<proto::MarkClearedResponse>, Status> {
        crate::limits::check(req.get_ref())?;
        let req = req.into_inner();
        let id = round_id(&req.round_id)?;
        Ok(Response::new(self.mark_cleared(id, req.period).await?))
    }

    async fn release_round(
        &self,
        req: Request<proto::ReleaseRoundRequest>,
    ) -> Result<Response<proto::ReleaseRoundResponse>, Status> {
        crate::limits::check(req.get_ref())?;
        let id = round_id(&req.into_inner().round_id)?;
        let released = self.release(id).await?;
        Ok(Response::new(proto::ReleaseRoundResponse { released }))
    }
}
