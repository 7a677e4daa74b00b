//! PreSettle and Settle, the one orchestrator of a settlement: a same-city bill in one
//! transaction, a cross-region one by intent, commit at the home node and finish.

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, NaiveDate, Utc};
use rusqlite::Connection;
use rust_decimal::Decimal;
use yidi_common::{engine, period, proto, region::RegionCode};

use super::{
    bill::{Priced, price, price_from, price_with, reusable_eligibility},
    home_calls::{PeerFail, classify, eligibility_request, fail_to_error, never_sent},
    offline::settle_offline,
    records::{
        Basis, finish_committed, full_self_pay, insert_record, mark_failed, new_record,
        replay_settle,
    },
    recovery::{Resolved, pending_bill, resolve_claimed, settle_in_doubt},
    shared::{
        Bill, InFlightGuard, bill_from, bill_not_future, check_institution, institution_given,
        read_bill, scope,
    },
};
use crate::settlement::{home, split_fen, wire_date};
use crate::store::states::SettlementState;
use crate::{
    Error, Result,
    context::NodeState,
    idempotency::{RequestKey, payload_hash},
    policy_cache::PolicyCache,
    store::{
        settlements::{self, SettlementRec},
        visits::VisitRec,
    },
};

/// Attempts at committing a claim when the home node reports a concurrent change.
pub(super) const COMMIT_ATTEMPTS: usize = 6;

/// A settlement (or pre-settlement) with the visit it was made for, when this call
/// read the visit and its caller declared a total: not for the stored answer of a
/// repeated request, nor for a same-city settlement (made inside the writer's job).
pub struct WithVisit {
    pub settlement: proto::Settlement,
    pub visit: Option<VisitRec>,
}

/// The total a caller declares for the bill it settles (NHSA `medfee_sumamt`), checked
/// against the bill the settlement reads, in the same job: no fee upload or undo can
/// come between the check and the settlement. Equal as numbers (330 = 330.00).
fn check_declared(bill: &Bill, declared: Option<Decimal>) -> Result<()> {
    let Some(declared) = declared else {
        return Ok(());
    };
    let total = yidi_common::money::from_fen(bill.lines.iter().map(|l| l.amount_fen).sum());
    if declared != total {
        return Err(Error::Invalid {
            field: "declared_total".into(),
            reason: format!(
                "{} differs from the total {total} of the fee lines uploaded for visit {}; nothing was settled",
                declared.normalize(),
                bill.visit.visit_id
            ),
        });
    }
    Ok(())
}

/// HospitalService.PreSettle: the split as it would be now; nothing is recorded.
pub async fn pre_settle(st: &NodeState, req: proto::SettleRequest) -> Result<proto::Settlement> {
    pre_settle_declared(st, req, None)
        .await
        .map(|w| w.settlement)
}

/// PreSettle of a bill whose total the caller declares (see [`check_declared`]).
pub async fn pre_settle_declared(
    st: &NodeState,
    req: proto::SettleRequest,
    declared: Option<Decimal>,
) -> Result<WithVisit> {
    institution_given(&req.institution_code)?;
    let _permit = super::door::admit_pre_settle(st).await?;
    // One trip to the read pool for the institution and the bill — and, for a patient
    // of this city, for the eligibility too: this node is their home node.
    let (inst, vid) = (req.institution_code.clone(), req.visit_id.clone());
    let (cache, region, today) = (Arc::clone(&st.policies), st.region, period::today());
    let (visit, lines, own) = st
        .store
        .read(move |conn| {
            check_institution(conn, &inst, today)?;
            let (visit, lines) = read_bill(conn, &inst, &vid)?;
            // Its refusal counts only after the bill's own checks: kept for later.
            let own = (visit.home_region == region.as_str()).then(|| {
                let req = eligibility_request(&visit, region, today)?;
                home::eligibility(conn, &cache, region, region.as_str(), &req)
            });
            Ok((visit, lines, own))
        })
        .await?;
    let bill = bill_from(visit, lines, false)?;
    check_declared(&bill, declared)?;
    let priced = match own {
        Some(elig) => price_from(st, &bill, req.use_account, elig?).await,
        None => price_with(st, &bill, req.use_account, true, today).await,
    }
    .map_err(fail_to_error)?;
    let split = priced.quote.to_proto_split();
    let settlement = proto::Settlement {
        visit_id: bill.visit.visit_id.clone(),
        institution_code: bill.visit.institution_code.clone(),
        id_number: bill.visit.id_number.clone(),
        home_region: bill.visit.home_region.clone(),
        treatment_region: st.region.to_string(),
        visit_kind: bill.kind.to_proto(),
        split: Some(split),
        state: "presettled".into(),
        policy_version: priced.elig.policy_version,
        cross_province: yidi_common::region::cross_province(
            &bill.visit.home_region,
            st.region.as_str(),
        ),
        ..Default::default()
    };
    Ok(WithVisit {
        settlement,
        visit: Some(bill.visit),
    })
}

/// HospitalService.Settle.
pub async fn settle(st: &NodeState, req: proto::SettleRequest) -> Result<proto::Settlement> {
    settle_declared(st, req, None).await.map(|w| w.settlement)
}

/// Settle of a bill whose total the caller declares (see [`check_declared`]). The
/// declared total is part of the request: a repeat of the request id with another total
/// is a different request.
pub async fn settle_declared(
    st: &NodeState,
    mut req: proto::SettleRequest,
    declared: Option<Decimal>,
) -> Result<WithVisit> {
    let sc = scope(&req.institution_code);
    let mut payload = payload_hash(&mut req, |r| &mut r.request_id);
    if let Some(d) = declared {
        payload =
            yidi_common::digest::sha256_hex(format!("{payload}|{}", d.normalize()).as_bytes());
    }
    let key = RequestKey::new(&sc, &req.request_id, "Settle", payload)?;
    institution_given(&req.institution_code)?;
    // Held to the answer: the slot's service time is the whole call's.
    let _permit = super::door::admit_settle(st, &key).await?;
    // One moment for the whole settlement: its claim's settled_at, and the day the home
    // node judges filings on, in every attempt.
    let now = st.clock.now();
    let (bill_out, bill_in) = tokio::sync::oneshot::channel();
    let opening = open_settlement(st, &req, &key, now, declared, bill_out);
    // A cross-region bill is handed out as soon as the writer has read it and recorded
    // the intent, before the commit: pricing runs while the intent is made durable.
    // Everything else (a repeat's answer, a pending intent, a same-city settlement, an
    // error) comes with the job's outcome.
    let Ok(bill) = bill_in.await else {
        let answered = match opening.await? {
            Opened::Answered(answer) => Ok(answer),
            Opened::Pending(intent) => {
                if intent.payload_hash != key.payload_hash {
                    return Err(Error::AlreadyExists(format!(
                        "request_id {} is in use by a different settlement request",
                        yidi_common::error::quoted(&req.request_id)
                    )));
                }
                // Its Settle call is still running, or another resolver is at it.
                let Some(guard) = st.settling.try_enter(&intent.settlement_id) else {
                    return Err(Error::Aborted(
                        "this settlement request is still in progress; retry shortly".into(),
                    ));
                };
                match resolve_claimed(st, intent.clone()).await? {
                    Resolved::Settled(answer) => Ok(*answer),
                    Resolved::Failed => Err(Error::Aborted(
                        "the earlier attempt of this request was not settled (the home node never committed it); repeat the request to settle afresh".into(),
                    )),
                    Resolved::Pending(why) => Err(Error::Unavailable(format!(
                        "the outcome of this settlement is not known yet ({why}); repeat this request (same request_id) shortly"
                    ))),
                    Resolved::Unreachable(why) => {
                        let bill = pending_bill(st, &intent).await?;
                        let out = settle_offline(
                            st,
                            &bill,
                            &key,
                            req.use_account,
                            why,
                            None,
                            Some(intent),
                        )
                        .await;
                        drop(guard);
                        out
                    }
                }
            }
            Opened::Intent(..) => Err(Error::Internal(
                "a settlement intent was recorded without its bill".into(),
            )),
        };
        return answered.map(|settlement| WithVisit {
            settlement,
            visit: None,
        });
    };
    let person = bill.visit.id_number.clone();
    let visit = declared.is_some().then(|| bill.visit.clone());
    let out = settle_remote(st, bill, key, req.use_account, now, opening).await;
    // The person's accumulators changed (or may have): PreSettle asks afresh.
    st.eligibility_cache.forget(&person);
    out.map(|settlement| WithVisit { settlement, visit })
}

/// What the opening of a Settle found, in the writer's transaction.
pub(super) enum Opened {
    /// A repeat of a finished request (its stored answer), or a same-city settlement
    /// done in the same transaction.
    Answered(proto::Settlement),
    /// An intent of this request whose outcome is not known yet.
    Pending(SettlementRec),
    /// A new cross-region intent, claimed by this call (its bill went out apart).
    Intent(SettlementRec, InFlightGuard),
}

/// Opens a Settle in one writer job — a single trip to the store instead of a read
/// followed by a write that had to check everything again: the institution, a stored
/// answer of the request, a pending intent of it, and, for a new request, the bill
/// (whose errors count only then). A same-city bill is settled in the same job; a
/// cross-region one gets its intent, claimed for this call in the same transaction (so
/// no resolver sees it pending without seeing that its call is running), and is sent on
/// `bill_out` at once. The claim is held by the guard returned with the intent: should
/// the commit fail, the guard is dropped with the outcome and nothing is recorded;
/// should this call be dropped after the job ran (the hospital went away), the guard is
/// dropped with the outcome too and the pending intent is left to recovery. A job whose
/// caller is already gone does nothing.
pub(super) fn open_settlement(
    st: &NodeState,
    req: &proto::SettleRequest,
    key: &RequestKey,
    now: DateTime<Utc>,
    declared: Option<Decimal>,
    bill_out: tokio::sync::oneshot::Sender<Bill>,
) -> impl std::future::Future<Output = Result<Opened>> + Send + 'static {
    let (k, region, use_account) = (key.clone(), st.region, req.use_account);
    let (inst, vid) = (req.institution_code.clone(), req.visit_id.clone());
    let cache = Arc::clone(&st.policies);
    let settling = Arc::clone(&st.settling);
    let clock = st.clock.clone();
    // The caller may have gone away (its deadline passed) while the job queued: then
    // nothing is settled or recorded for it — a pending intent would block the visit
    // until recovery.
    let gone = || Error::Unavailable("the Settle call ended before it was processed".into());
    st.store
        .submit_as(crate::store::JobKind::Settle, move |conn| {
            if bill_out.is_closed() {
                return Err(gone());
            }
            check_institution(conn, &inst, period::today())?;
            if let Some(answer) = replay_settle(conn, &k)? {
                return Ok(Opened::Answered(answer));
            }
            match settlements::by_request(conn, &k.scope, &k.request_id)? {
                Some(intent) if intent.state == SettlementState::Pending => {
                    return Ok(Opened::Pending(intent));
                }
                Some(done) if done.state != SettlementState::Failed => {
                    return Err(answer_expired(&k, &done));
                }
                _ => {}
            }
            let (visit, lines) = read_bill(conn, &inst, &vid)?;
            let bill = bill_from(visit, lines, true)?;
            check_declared(&bill, declared)?;
            bill_not_future(&bill, &clock)?;
            if bill.visit.home_region == region.as_str() {
                return settle_local(conn, &cache, region, &bill, &k, use_account, now)
                    .map(Opened::Answered);
            }
            // The intent's split is a placeholder until the home node has priced the claim
            // — the patient paying everything, nothing from the fund — and the outcome's
            // write (or a retry's) records the real one. Recovery needs only its claim id.
            let placeholder = new_record(
                &bill,
                &k,
                full_self_pay(&bill.lines, "awaiting the home node's eligibility"),
                SettlementState::Pending,
                Basis {
                    policy_version: 0,
                    acc_version: 0,
                },
                now,
                String::new(),
            )?;
            if bill_out.is_closed() {
                return Err(gone());
            }
            let rec = insert_record(conn, region, placeholder)?;
            let guard = settling.try_enter(&rec.settlement_id).ok_or_else(|| {
                Error::Internal(format!(
                    "new intent {} is already claimed",
                    rec.settlement_id
                ))
            })?;
            // The caller may price meanwhile, but sends nothing to the home node before
            // this job's durable outcome (the savepoint's release or the group's commit can
            // still fail it).
            let _ = bill_out.send(bill);
            Ok(Opened::Intent(rec, guard))
        })
}

/// A request id that took effect (its record is here) but whose stored answer is gone:
/// removed after the idempotency window (`store::retention`). The request is not run
/// again — the settlement stands — and the hospital learns where its outcome is.
fn answer_expired(key: &RequestKey, rec: &SettlementRec) -> Error {
    Error::AlreadyExists(format!(
        "request_id {} already took effect on {}: settlement {} (now {}); its stored answer \
         has passed this node's idempotency window and was removed, so the request is not run \
         again — read the settlement with GetSettlement, or settle anew with a new request id",
        yidi_common::error::quoted(&key.request_id),
        rec.settled_at,
        rec.settlement_id,
        rec.state
    ))
}

/// A same-city settlement: this node is also the home node; everything in the opening's
/// transaction, no network.
pub(super) fn settle_local(
    conn: &Connection,
    cache: &PolicyCache,
    region: RegionCode,
    bill: &Bill,
    key: &RequestKey,
    use_account: bool,
    now: DateTime<Utc>,
) -> Result<proto::Settlement> {
    let date = wire_date(&bill.visit.visit_date, "visit_date")?;
    // The day of the settlement's own moment (its settled_at), which the commit below
    // judges the filings on too — not the day the job happens to run.
    let settle_day = now.with_timezone(&period::cst()).date_naive();
    let v = home::view(
        conn,
        cache,
        region,
        &bill.visit.id_number,
        region.as_str(),
        bill.kind,
        date,
        settle_day,
    )?;
    let ctx = bill.visit_ctx(region, None, use_account)?;
    if let Some(why) = home::ineligibility(&v, &ctx) {
        return Err(Error::FailedPrecondition(format!(
            "no direct settlement: {why}"
        )));
    }
    let quote = engine::quote(
        &v.policy,
        &v.person_ctx(),
        &v.accumulators,
        &ctx,
        &bill.engine_lines,
    )?;
    let rec = insert_record(
        conn,
        region,
        new_record(
            bill,
            key,
            quote.to_proto_split(),
            SettlementState::Pending,
            Basis {
                policy_version: v.policy_version,
                acc_version: v.accumulators.version,
            },
            now,
            String::new(),
        )?,
    )?;
    let resp = home::commit(
        conn,
        cache,
        region,
        &commit_request(&rec, bill, region, false, use_account),
    )?;
    finish_committed(conn, region, rec, &resp, Some(key))
}

pub(super) fn commit_request(
    rec: &SettlementRec,
    bill: &Bill,
    region: RegionCode,
    provisional: bool,
    use_account: bool,
) -> proto::CommitClaimRequest {
    proto::CommitClaimRequest {
        request_id: rec.settlement_id.clone(),
        claim_id: rec.settlement_id.clone(),
        treatment_region: region.to_string(),
        id_number: rec.id_number.clone(),
        visit: Some(bill.claim_visit(use_account)),
        split: Some(rec.split.clone()),
        accumulator_version: rec.acc_version,
        policy_version: rec.policy_version,
        settled_at: rec.settled_at.clone(),
        provisional,
    }
}

/// A cross-region settlement.
pub(super) async fn settle_remote(
    st: &NodeState,
    bill: Bill,
    key: RequestKey,
    use_account: bool,
    now: DateTime<Utc>,
    opening: impl std::future::Future<Output = Result<Opened>>,
) -> Result<proto::Settlement> {
    let region = st.region;
    let settle_day = now.with_timezone(&period::cst()).date_naive();
    // No CommitClaim is sent before the intent is durable: the first attempt is priced
    // while the writer records it.
    let (first, mut reused_answer) = price_first(st, &bill, use_account, settle_day).await;
    let Opened::Intent(mut rec, guard) = opening.await? else {
        return Err(Error::Internal(
            "a settlement's bill was handed out without its intent".into(),
        ));
    };
    let mut running = Some(guard);
    let mut priced = match first {
        Ok(p) => p,
        Err(PeerFail::Unreachable(why)) => {
            // Nothing was sent to the home node for this intent: it simply failed, and
            // the offline rule settles the request under a record of its own.
            mark_failed(st, rec).await?;
            drop(running.take());
            return settle_offline(st, &bill, &key, use_account, why, None, None).await;
        }
        Err(PeerFail::Refused(e)) => return fail_with(st, rec, e).await,
    };
    // Whether `priced` rests on an answer the home node gave this call (the offline
    // rule goes by this visit's own answers: this call's, else its opening's — a
    // reused answer may be another visit's PreSettle).
    let mut fresh_answer = !reused_answer;
    // Leaves the loop with the reason the offline rule applies: nothing of this claim
    // is committed at the home node, which cannot be reached.
    let offline = 'attempts: {
        // A reused answer refused as stale takes an attempt of its own.
        for attempt in 0..COMMIT_ATTEMPTS + usize::from(reused_answer) {
            if attempt > 0 {
                priced = match price(st, &bill, use_account, settle_day).await {
                    Ok(p) => {
                        fresh_answer = true;
                        p
                    }
                    Err(PeerFail::Unreachable(why)) => {
                        // The home node answered every CommitClaim of this intent with a
                        // refusal (its transaction rolled back) and now cannot be reached.
                        break 'attempts why;
                    }
                    Err(PeerFail::Refused(e)) => return fail_with(st, rec, e).await,
                };
            }
            take_pricing(&mut rec, &priced)?;
            if attempt > 0 {
                // A retry after a concurrent change: the intent shows what is being tried.
                let r = rec.clone();
                st.store
                    .write_as(crate::store::JobKind::Settle, move |conn| {
                        settlements::update_outcome(conn, &r)
                    })
                    .await?;
            }
            let peer = st.peers.get(&bill.visit.home_region)?;
            // Travels with the other claims bound for the same home node at this moment.
            let call = peer
                .commit_claim(commit_request(&rec, &bill, region, false, use_account))
                .await;
            let failed = match call {
                Ok(resp) => return finish_remote(st, rec, resp, &key, &bill.visit.id_number).await,
                Err(status) => commit_failed(&bill.visit.home_region, &status),
            };
            match failed {
                CommitFailed::NotStored(m) => {
                    return fail_with(
                        st,
                        rec,
                        Error::Unavailable(format!(
                            "{m}; the settlement was not made — retry later"
                        )),
                    )
                    .await;
                }
                // Every earlier attempt the home node refused: the claim is not in doubt,
                // as when the eligibility call cannot connect.
                CommitFailed::NeverSent(why) => break 'attempts why,
                CommitFailed::Changed(m) => {
                    tracing::debug!(attempt, reused_answer, claim = %rec.settlement_id, reason = %m, "home reports a change; repricing");
                    // A change since the answer was got is no contention: reprice at once.
                    if !std::mem::take(&mut reused_answer) {
                        tokio::time::sleep(Duration::from_millis(2 + 3 * attempt as u64)).await;
                    }
                }
                CommitFailed::Refused(e) => return fail_with(st, rec, e).await,
                CommitFailed::InDoubt(why) => {
                    return settle_in_doubt(
                        st,
                        &bill,
                        rec,
                        &key,
                        use_account,
                        why,
                        fresh_answer.then_some(&priced.elig),
                    )
                    .await;
                }
            }
        }
        return fail_with(st, rec, Error::Aborted("the person's accumulators kept changing during settlement (settled elsewhere at the same time); retry".into())).await;
    };
    mark_failed(st, rec).await?;
    drop(running.take());
    settle_offline(
        st,
        &bill,
        &key,
        use_account,
        offline,
        fresh_answer.then_some(&priced.elig),
        None,
    )
    .await
}

/// Prices the first attempt with an answer this node already has when it can, saving
/// the home node a call (CommitClaim refuses it if anything has changed). The flag
/// tells whether the price rests on such a reused answer.
async fn price_first(
    st: &NodeState,
    bill: &Bill,
    use_account: bool,
    settle_day: NaiveDate,
) -> (Result<Priced, PeerFail>, bool) {
    let Some(elig) = reusable_eligibility(st, bill, settle_day) else {
        return (price(st, bill, use_account, settle_day).await, false);
    };
    match price_from(st, bill, use_account, elig).await {
        // Pricing refused what the answer says (a policy version the home node no
        // longer serves, say): a fresh answer decides.
        Err(PeerFail::Refused(_)) => (price(st, bill, use_account, settle_day).await, false),
        other => (other, true),
    }
}

/// The intent takes an attempt's pricing: the split and the versions it rests on.
fn take_pricing(rec: &mut SettlementRec, priced: &Priced) -> Result<()> {
    let acc_version = priced
        .elig
        .accumulators
        .as_ref()
        .map(|a| a.version)
        .unwrap_or_default();
    let split = priced.quote.to_proto_split();
    let (medfee, fund, acct, cash) = split_fen(&split)?;
    rec.split = split;
    (rec.medfee_fen, rec.fund_fen, rec.acct_fen, rec.cash_fen) = (medfee, fund, acct, cash);
    rec.policy_version = priced.elig.policy_version;
    rec.acc_version = acc_version;
    Ok(())
}

/// Records the home node's commit of the intent `rec` and answers the request — unless
/// a concurrent repeat of it finished the intent meanwhile.
async fn finish_remote(
    st: &NodeState,
    rec: SettlementRec,
    resp: proto::CommitClaimResponse,
    key: &RequestKey,
    person: &str,
) -> Result<proto::Settlement> {
    if st
        .hooks
        .crash_after_home_commit
        .load(std::sync::atomic::Ordering::SeqCst)
    {
        return Err(Error::Unavailable(
            "injected crash after the home commit (test hook)".into(),
        ));
    }
    if let Some(acc) = &resp.accumulators {
        st.eligibility_cache.settled(person, acc);
    }
    let (k, region) = (key.clone(), st.region);
    st.store
        .write_as(crate::store::JobKind::Settle, move |conn| {
            // A concurrent repeat of this request may have finished it from the home
            // node's claim status meanwhile: its answer stands.
            if let Some(answer) = replay_settle(conn, &k)? {
                return Ok(answer);
            }
            if settlements::state_of(conn, &rec.settlement_id)?
                .is_none_or(|state| state != SettlementState::Pending)
            {
                return Err(Error::Aborted(
                    "this settlement was resolved concurrently; repeat the request to get its outcome".into(),
                ));
            }
            finish_committed(conn, region, rec, &resp, Some(&k))
        })
        .await
}

/// The intent failed with `e`: nothing of it is committed at the home node.
async fn fail_with(st: &NodeState, rec: SettlementRec, e: Error) -> Result<proto::Settlement> {
    mark_failed(st, rec).await?;
    Err(e)
}

/// What a CommitClaim that failed means for its intent.
enum CommitFailed {
    /// The home node answered that it could not store the claim: nothing is committed
    /// there, so nothing is in doubt; the hospital is told the cause.
    NotStored(String),
    /// The call never reached the home node, which cannot be reached.
    NeverSent(String),
    /// The home node reports a change since the answer the split rests on.
    Changed(String),
    /// The home node refused the claim.
    Refused(Error),
    /// No answer: the claim may be committed at the home node.
    InDoubt(String),
}

fn commit_failed(home_region: &str, status: &tonic::Status) -> CommitFailed {
    if status.metadata().get(home::NOT_COMMITTED).is_some() {
        return CommitFailed::NotStored(status.message().to_owned());
    }
    match classify(home_region, status) {
        PeerFail::Unreachable(why) if never_sent(status) => CommitFailed::NeverSent(why),
        PeerFail::Refused(Error::Aborted(m)) => CommitFailed::Changed(m),
        PeerFail::Refused(e) => CommitFailed::Refused(e),
        PeerFail::Unreachable(why) => CommitFailed::InDoubt(why),
    }
}
