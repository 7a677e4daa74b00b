//! The node's half of clearing: what the coordinator asks of this node in a round —
//! freeze and report its positions, list a disputed pair's records, take disputed
//! records out, check and confirm the statement, mark the round cleared, release it.
//! [`Participant`] runs each of these over the store (store/clearing.rs), in bounded
//! writer jobs; the check of a statement against the ledger is pure (`verify`). The
//! gRPC service (service/clearing.rs) only decodes, checks and calls it. Only region
//! codes, record ids, counts, sums and digests leave the node here.

pub mod archive;
pub mod input;
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
        JobKind, Store,
        clearing::{self, FreezeStep, RoundRec, Scope, StepLimit},
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
    /// The bounds of each step of a freeze or a tidy.
    step: StepLimit,
    /// Where each unfinished freeze got to, by round: a report cut short (the
    /// coordinator's call timed out while a large period was being frozen) resumes
    /// there on the next report instead of walking the frozen entries again. Every
    /// entry up to a cursor kept here was seen by a step of that round.
    resume: Arc<std::sync::Mutex<BTreeMap<String, clearing::FreezeCursor>>>,
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
            step: StepLimit::SERVING,
            resume: Arc::default(),
        }
    }

    /// The same participant with steps of at most `step` (the node's config, tests).
    #[must_use]
    pub fn with_step_limit(mut self, step: StepLimit) -> Self {
        self.step = step;
        self
    }

    /// Freezes the round's records (on its first report) and reports their positions.
    /// Frozen in steps of bounded writer jobs (see `clearing::freeze_step`) in the
    /// writer's background lane — each runs when no settlement waits, or after the
    /// lane's longest wait — then reported from a read: a large node's round must not
    /// hold the writer, nor compete with settlements for it. A report cut short
    /// resumes where its last step got to.
    /// `scope` says which side of the province boundary the round clears (a round's
    /// scope is fixed by its first report).
    pub async fn report_positions(
        &self,
        id: String,
        period: String,
        scope: Scope,
    ) -> Result<proto::ReportPositionsResponse> {
        let mut cursor = self.resumed(&id, None);
        let (own, limit) = (self.region, self.step);
        loop {
            let (round, period) = (id.clone(), period.clone());
            let step = self
                .store
                .write_background(JobKind::FreezeStep, move |conn| {
                    clearing::freeze_limited_step(
                        conn,
                        &round,
                        &period,
                        &period::now_rfc3339(),
                        cursor,
                        Some((scope, own.as_str())),
                        limit,
                    )
                })
                .await?;
            match step {
                FreezeStep::Continue(next) => cursor = self.resumed(&id, next),
                FreezeStep::Done => {
                    if let Ok(mut r) = self.resume.lock() {
                        r.remove(&id);
                    }
                    break;
                }
            }
        }
        let region = self.region;
        self.store
            .read(move |conn| positions(conn, region, &id, period))
            .await
    }

    /// Notes `next` as where round `id`'s freeze got to, and returns where the next
    /// step starts: `next`, or with none (a first report, or a step that only
    /// prepared the round) the furthest point a step of this round reached.
    fn resumed(
        &self,
        id: &str,
        next: Option<clearing::FreezeCursor>,
    ) -> Option<clearing::FreezeCursor> {
        let mut r = self.resume.lock().ok()?;
        match next {
            Some(c) => {
                r.insert(id.to_owned(), c.clone());
                Some(c)
            }
            None => r.get(id).cloned(),
        }
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
            .write_as(JobKind::Clearing, move |conn| {
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
        let seen = self.changes_seen().await?;
        let verified = self.verified_from_read(s.clone()).await?;
        let exclusions = Arc::clone(&self.exclusions);
        self.store
            .write_as(JobKind::Clearing, move |conn| {
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
                    // Aborted: its records went back to the next round.
                    ParticipantState::Released => {
                        round
                            .state
                            .check_move(ParticipantState::Confirmed, &s.round_id)?;
                    }
                    ParticipantState::Frozen => {}
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

    /// The count of exclusions and of ledger entries corrected or taken back, taken by
    /// a writer job: a read after it sees every change made before it, and any change
    /// after it shows in the counts when the confirmation is written.
    async fn changes_seen(&self) -> Result<(u64, u64)> {
        let exclusions = Arc::clone(&self.exclusions);
        self.store
            .write_as(JobKind::Clearing, move |_| {
                Ok((exclusions.load(Ordering::SeqCst), ledger::changes()))
            })
            .await
    }

    /// The statement checked against a frozen round's ledger from a read (the round's
    /// totals go through all its records, too many for a writer job at a large node);
    /// None when the round is not frozen.
    async fn verified_from_read(&self, s: proto::Statement) -> Result<Option<Vec<String>>> {
        let region = self.region;
        self.store
            .read(move |conn| {
                let round = known_round(conn, &s.round_id)?;
                (round.state == ParticipantState::Frozen)
                    .then(|| verify(conn, region, &s))
                    .transpose()
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
            .write_as(JobKind::Clearing, move |conn| {
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
        if let Ok(mut r) = self.resume.lock() {
            r.remove(&id);
        }
        let released = id.clone();
        self.store
            .write_as(JobKind::Clearing, move |conn| {
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
        let (mut total, limit) = (0, self.step);
        loop {
            let id = round_id.to_owned();
            let n = self
                .store
                .write_background(JobKind::ClearStep, move |conn| {
                    clearing::tidy_limited_step(conn, &id, limit)
                })
                .await?;
            if n == 0 {
                return Ok(total);
            }
            total += n;
        }
    }
}

#[cfg(test)]
mod tests {
    use yidi_common::netting::statement_digest;

    use super::*;
    use crate::store::ledger::Entry;

    /// A node 330100 whose ledger holds, toward 330200 in 2026-03, a receivable of
    /// 123.45 + 0.55 and a payable of 10.00.
    async fn participant(dir: &std::path::Path, auto_confirm: bool) -> Participant {
        let store = Store::open(dir, 1, "330100").unwrap();
        store
            .write(|conn| {
                for (id, side, fen) in [
                    ("e1", Side::Receivable, 12_345),
                    ("e2", Side::Receivable, 55),
                    ("e3", Side::Payable, 1_000),
                ] {
                    ledger::record(
                        conn,
                        &Entry {
                            entry_id: id,
                            side,
                            counterparty: "330200",
                            period: "2026-03",
                            kind: "claim",
                            claim_id: id,
                            amount_fen: fen,
                        },
                        "2026-03-05T00:00:00Z",
                    )?;
                }
                Ok(())
            })
            .await
            .unwrap();
        Participant::new(
            store,
            RegionCode::parse("330100", "region").unwrap(),
            auto_confirm,
        )
    }

    /// The statement the coordinator would issue for this node's ledger.
    fn statement(round: &str) -> proto::Statement {
        let mut s = proto::Statement {
            round_id: round.into(),
            period: "2026-03".into(),
            clearing_account: "330000".into(),
            nets: vec![
                proto::NetPosition {
                    region: "330100".into(),
                    receivable: "124.00".into(),
                    payable: "10.00".into(),
                    net: "114.00".into(),
                },
                proto::NetPosition {
                    region: "330200".into(),
                    receivable: "10.00".into(),
                    payable: "124.00".into(),
                    net: "-114.00".into(),
                },
            ],
            instructions: vec![
                proto::PaymentInstruction {
                    from_region: "330200".into(),
                    to_region: "330000".into(),
                    amount: "114.00".into(),
                },
                proto::PaymentInstruction {
                    from_region: "330000".into(),
                    to_region: "330100".into(),
                    amount: "114.00".into(),
                },
            ],
            ..Default::default()
        };
        s.digest = statement_digest(&s);
        s
    }

    /// Report, confirm, mark cleared: the exact positions, a matching statement
    /// confirmed automatically, the records cleared.
    #[tokio::test]
    async fn a_round_from_report_to_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let p = participant(dir.path(), true).await;
        let r = p
            .report_positions("R1".into(), "2026-03".into(), Scope::Province)
            .await
            .unwrap();
        let pos = &r.positions[0];
        assert_eq!(
            (
                pos.counterparty.as_str(),
                pos.receivable_count,
                pos.receivable_sum.as_str(),
                pos.payable_count,
                pos.payable_sum.as_str()
            ),
            ("330200", 2, "124.00", 1, "10.00")
        );
        let mut off = statement("R1");
        off.nets[0].receivable = "124.01".into();
        off.digest = statement_digest(&off);
        assert_eq!(
            p.verify_statement(off.clone()).await.unwrap(),
            ["receivable: statement 124.01, ledger 124.00"]
        );
        let refused = p.confirm_statement(off).await.unwrap();
        assert!(!refused.confirmed, "{refused:?}");
        let ok = p.confirm_statement(statement("R1")).await.unwrap();
        assert_eq!((ok.confirmed, ok.confirmed_by.as_str()), (true, "auto"));
        let key = RequestKey::new("coordinator", "R1-cleared", "MarkCleared", "h".into()).unwrap();
        let cleared = p.mark_cleared(key, "R1".into()).await.unwrap();
        assert_eq!((cleared.cleared, cleared.records), (true, 3));
    }

    /// A released (aborted) round is not confirmed, even by a statement that matches
    /// what it held, and stays released.
    #[tokio::test]
    async fn a_released_round_is_not_confirmed() {
        let dir = tempfile::tempdir().unwrap();
        let p = participant(dir.path(), true).await;
        p.report_positions("R1".into(), "2026-03".into(), Scope::Province)
            .await
            .unwrap();
        assert_eq!(p.release("R1".into()).await.unwrap(), 3);
        let e = p.confirm_statement(statement("R1")).await.unwrap_err();
        assert!(
            matches!(&e, Error::FailedPrecondition(m) if m == "round R1 is released here; it cannot become confirmed"),
            "{e:?}"
        );
        let r = p.store.read(|conn| known_round(conn, "R1")).await.unwrap();
        assert_eq!(
            (r.state, r.confirmed_by.as_str()),
            (ParticipantState::Released, "")
        );
    }

    /// Hangzhou's store in `dir` with `n` receivable entries of 2.50 toward Ningbo in
    /// 2026-03 (ids e000000…).
    async fn store_with_entries(dir: &std::path::Path, n: u64) -> Store {
        let store = Store::open(dir, 1, "330100").unwrap();
        store
            .write(move |conn| {
                let mut st = conn.prepare(
                    "INSERT INTO ledger (entry_id, side, counterparty, period, kind, claim_id, amount_fen, created_at) \
                     VALUES (?1, 'receivable', '330200', '2026-03', 'claim', ?1, 250, '2026-03-31T00:00:00Z')",
                )?;
                for i in 0..n {
                    st.execute([format!("e{i:06}")])?;
                }
                Ok(())
            })
            .await
            .unwrap();
        store
    }

    /// A round of many steps' entries is frozen and then marked cleared in background
    /// jobs that each wrote at most the step's entries, while a stream of settlement
    /// jobs goes on: many of them run while the round is still being frozen, and
    /// while its entries are still being marked cleared — they are not queued behind
    /// the whole round. Exact counts and sums at the end.
    #[tokio::test]
    async fn a_large_round_runs_in_bounded_steps_that_settlements_interleave() {
        const N: u64 = 6_000;
        const STEP: u32 = 100;
        let dir = tempfile::tempdir().unwrap();
        let store = store_with_entries(dir.path(), N).await;
        let p = Participant::new(
            store.clone(),
            RegionCode::parse("330100", "region").unwrap(),
            true,
        )
        .with_step_limit(StepLimit::entries(STEP));
        let before = store.writer_totals();

        // Settlement jobs one after another until told to stop; each notes the state
        // of round R1 it ran beside.
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        let (s2, stop2) = (store.clone(), Arc::clone(&stop));
        let settling = tokio::spawn(async move {
            let mut i = 0_u64;
            while !stop2.load(Ordering::SeqCst) {
                i += 1;
                let state = s2
                    .write_as(JobKind::Settle, move |conn| {
                        crate::store::meta_set(conn, "bench-probe", &i.to_string())?;
                        Ok(conn
                            .query_row(
                                "SELECT state || ':' || (SELECT COUNT(*) FROM ledger WHERE round_id = 'R1') \
                                 FROM clearing_rounds WHERE round_id = 'R1'",
                                [],
                                |r| r.get::<_, String>(0),
                            )
                            .unwrap_or_else(|_| "none".into()))
                    })
                    .await
                    .unwrap();
                let _ = seen_tx.send(state);
            }
        });
        // The stream runs before the round starts.
        assert_eq!(seen_rx.recv().await.unwrap(), "none");

        let report = p
            .report_positions("R1".into(), "2026-03".into(), Scope::Province)
            .await
            .unwrap();
        assert_eq!(
            (
                report.positions[0].receivable_count,
                report.positions[0].receivable_sum.as_str()
            ),
            (N, "15000.00")
        );
        let mut during_freeze = 0;
        while let Ok(s) = seen_rx.try_recv() {
            if s.starts_with("freezing:") && s != format!("freezing:{N}") {
                during_freeze += 1;
            }
        }
        store
            .write(|c| {
                Ok(c.execute(
                    "UPDATE clearing_rounds SET state = 'confirmed' WHERE round_id = 'R1'",
                    [],
                )?)
            })
            .await
            .unwrap();
        let key = RequestKey::new("coordinator", "R1-cleared", "MarkCleared", "h".into()).unwrap();
        let cleared = p.mark_cleared(key, "R1".into()).await.unwrap();
        assert_eq!((cleared.cleared, cleared.records), (true, N));
        stop.store(true, Ordering::SeqCst);
        settling.await.unwrap();
        let mut during_clear = 0;
        while let Ok(s) = seen_rx.try_recv() {
            // Cleared, some of its entries still held by the round: being marked.
            if s.starts_with("cleared:") && s != "cleared:0" && s != format!("cleared:{N}") {
                during_clear += 1;
            }
        }
        let steps = N / u64::from(STEP);
        assert!(
            during_freeze >= 3,
            "settlements ran while the round was being frozen: {during_freeze}"
        );
        assert!(
            during_clear >= 3,
            "settlements ran while its entries were being marked cleared: {during_clear}"
        );

        let t = store.writer_totals();
        let freeze = t.kind(JobKind::FreezeStep);
        let clear = t.kind(JobKind::ClearStep);
        assert!(
            freeze.jobs - before.kind(JobKind::FreezeStep).jobs > steps,
            "{freeze:?}"
        );
        assert!(freeze.most_rows <= u64::from(STEP), "{freeze:?}");
        assert!(clear.jobs > steps, "{clear:?}");
        assert!(clear.most_rows <= u64::from(STEP), "{clear:?}");
        assert!(t.kind(JobKind::Settle).jobs >= during_freeze + during_clear);
        let (held, done): (u64, u64) = store
            .read(|c| {
                Ok(c.query_row(
                    "SELECT COUNT(*) FILTER (WHERE round_id IS NOT NULL), \
                     COUNT(*) FILTER (WHERE cleared_round = 'R1') FROM ledger",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )?)
            })
            .await
            .unwrap();
        assert_eq!((held, done), (0, N));
    }

    /// A report cut short while its round is being frozen (the coordinator's call
    /// timed out and was dropped) is resumed by the next report where the first got
    /// to: the second walks only the rest of the period, not the entries already
    /// frozen. Exact count and sum at the end.
    #[tokio::test]
    async fn a_report_cut_short_resumes_where_its_freeze_got_to() {
        const N: u64 = 10_000;
        const STEP: u32 = 100;
        let dir = tempfile::tempdir().unwrap();
        let store = store_with_entries(dir.path(), N).await;
        let p = Arc::new(
            Participant::new(
                store.clone(),
                RegionCode::parse("330100", "region").unwrap(),
                true,
            )
            .with_step_limit(StepLimit::entries(STEP)),
        );
        let frozen = || {
            store.read(|c| {
                Ok(c.query_row(
                    "SELECT COUNT(*) FROM ledger WHERE round_id = 'R1'",
                    [],
                    |r| r.get::<_, u64>(0),
                )?)
            })
        };
        let p1 = Arc::clone(&p);
        let first = tokio::spawn(async move {
            p1.report_positions("R1".into(), "2026-03".into(), Scope::Province)
                .await
        });
        while frozen().await.unwrap() < 10 * u64::from(STEP) {
            tokio::task::yield_now().await;
        }
        // The writer held by a job of our own, then the report dropped: its next step
        // may still run once the writer is let go, but nothing more.
        let (started_tx, started) = tokio::sync::oneshot::channel();
        let (go, wait) = std::sync::mpsc::channel::<()>();
        let s2 = store.clone();
        let held = tokio::spawn(async move {
            s2.write(move |_| {
                let _ = started_tx.send(());
                let _ = wait.recv();
                Ok(())
            })
            .await
        });
        started.await.unwrap();
        first.abort();
        assert!(first.await.unwrap_err().is_cancelled(), "cut short");
        let got_to = store
            .read(|c| {
                Ok(c.query_row(
                    "SELECT COUNT(*) FROM ledger WHERE round_id = 'R1'",
                    [],
                    |r| r.get::<_, u64>(0),
                )?)
            })
            .await
            .unwrap();
        assert!(got_to < N, "{got_to}");
        go.send(()).unwrap();
        held.await.unwrap().unwrap();

        let before = store.writer_totals().kind(JobKind::FreezeStep).jobs;
        let report = p
            .report_positions("R1".into(), "2026-03".into(), Scope::Province)
            .await
            .unwrap();
        let steps = store.writer_totals().kind(JobKind::FreezeStep).jobs - before;
        // From where the first got to: the rest in full steps and one last step (and
        // the step the first left queued, walked again); from the start it would be
        // N / STEP + 1.
        let rest = (N - got_to).div_ceil(u64::from(STEP));
        assert!(steps <= rest + 2, "{steps} steps for the {rest} steps left");
        assert!(steps < N / u64::from(STEP), "{steps}");
        assert_eq!(
            (
                report.positions[0].receivable_count,
                report.positions[0].receivable_sum.as_str()
            ),
            (N, "25000.00")
        );
        assert_eq!(frozen().await.unwrap(), N);
    }
}
