//! "Ask every participant": the one way the coordinator calls the province's nodes in a
//! round step (collect positions, confirm the statement, mark cleared, release). The
//! calls run concurrently but at most [`PARALLEL_CALLS`] at a time, each under its own
//! deadline; what each participant answered is kept as it arrives, and those that did
//! not answer (or answered no) are collected with the reason, in region order, for the
//! round's note. A local failure (the coordinator's own store) ends the step instead.

use std::{future::Future, time::Duration};

use futures::{StreamExt, stream};

use crate::Result;

/// Participants asked at once in a step (collect, confirm, mark cleared). Calls to a
/// province's nodes one after another would add up their round trips and fsyncs; all
/// at once would hold every answer in memory together. Answers that arrive together
/// are also stored together (the writer's group commit).
pub(crate) const PARALLEL_CALLS: usize = 32;

/// The time a participant is given beyond the call's own deadline (which the channel
/// enforces and reports itself): connecting to it, which that deadline does not cover.
const CONNECT_ALLOWANCE: Duration = Duration::from_secs(1);

/// A participant that did not do what it was asked, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Unanswered {
    pub region: String,
    pub reason: String,
}

/// Asks every region in `regions`: `call` is the request (an `Err` is the participant's
/// failure, as text), bounded by `call_timeout` plus the time to connect; `keep` records
/// an answer and says whether it is one the step can use (`Ok(Err(reason))`: it is
/// not). Returns the participants that are still owed something, sorted by region; an
/// error of `keep` (the coordinator's own) fails the step once every call has ended.
pub(crate) async fn ask_every<A, Call, CallFut, Keep, KeepFut>(
    regions: Vec<String>,
    call_timeout: Duration,
    call: Call,
    keep: Keep,
) -> Result<Vec<Unanswered>>
where
    Call: Fn(String) -> CallFut,
    CallFut: Future<Output = Result<A, String>>,
    Keep: Fn(String, A) -> KeepFut,
    KeepFut: Future<Output = Result<Result<(), String>>>,
{
    let deadline = call_timeout + CONNECT_ALLOWANCE;
    let outcomes: Vec<Result<Option<Unanswered>>> = stream::iter(regions)
        .map(|region| {
            let asked = call(region.clone());
            let keep = &keep;
            async move {
                let answer = match tokio::time::timeout(deadline, asked).await {
                    Ok(answer) => answer,
                    Err(_) => Err(format!("no answer within {} ms", deadline.as_millis())),
                };
                let kept = match answer {
                    Ok(a) => keep(region.clone(), a).await?,
                    Err(reason) => Err(reason),
                };
                Ok(kept.err().map(|reason| Unanswered { region, reason }))
            }
        })
        .buffer_unordered(PARALLEL_CALLS)
        .collect()
        .await;
    let mut unanswered = Vec::new();
    for o in outcomes {
        unanswered.extend(o?);
    }
    // Answers arrive in any order; the note names the participants in region order.
    unanswered.sort_by(|a, b| a.region.cmp(&b.region));
    Ok(unanswered)
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };

    use super::*;
    use crate::Error;

    fn regions(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("33{:04}", 9999 - i)).collect()
    }

    /// Every participant is asked once, never more than PARALLEL_CALLS at a time; the
    /// failures come back sorted with their reasons, a slow one as a timeout, and the
    /// answers that were kept are exactly the others.
    #[tokio::test]
    async fn asks_everyone_bounded_and_collects_who_failed() {
        let (live, peak, kept) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
            Arc::new(std::sync::Mutex::new(Vec::new())),
        );
        let all = regions(100);
        let unanswered = ask_every(
            all.clone(),
            Duration::from_millis(100),
            |region| {
                let (live, peak) = (Arc::clone(&live), Arc::clone(&peak));
                async move {
                    let now = live.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    let slow = region.ends_with("00");
                    tokio::time::sleep(Duration::from_millis(if slow { 3_000 } else { 10 })).await;
                    live.fetch_sub(1, Ordering::SeqCst);
                    if region.ends_with('7') {
                        return Err(format!("{region} is down"));
                    }
                    Ok(region.len())
                }
            },
            |region, len| {
                let kept = Arc::clone(&kept);
                async move {
                    if region.ends_with('3') {
                        return Ok(Err("answered no".to_owned()));
                    }
                    kept.lock().unwrap().push((region, len));
                    Ok(Ok(()))
                }
            },
        )
        .await
        .unwrap();
        assert!(peak.load(Ordering::SeqCst) <= PARALLEL_CALLS);
        assert_eq!(peak.load(Ordering::SeqCst), PARALLEL_CALLS);
        let mut expected: Vec<Unanswered> = all
            .iter()
            .filter_map(|r| {
                let reason = if r.ends_with("00") {
                    "no answer within 1100 ms".to_owned()
                } else if r.ends_with('7') {
                    format!("{r} is down")
                } else if r.ends_with('3') {
                    "answered no".to_owned()
                } else {
                    return None;
                };
                Some(Unanswered {
                    region: r.clone(),
                    reason,
                })
            })
            .collect();
        expected.sort_by(|a, b| a.region.cmp(&b.region));
        assert_eq!(unanswered, expected);
        assert_eq!(kept.lock().unwrap().len(), 100 - expected.len());
    }

    /// The coordinator's own failure (keeping an answer) fails the step.
    #[tokio::test]
    async fn a_local_failure_fails_the_step() {
        let e = ask_every(
            regions(3),
            Duration::from_secs(1),
            |_| async { Ok(()) },
            |region, ()| async move {
                if region == "339998" {
                    return Err(Error::Unavailable("store closed".into()));
                }
                Ok(Ok(()))
            },
        )
        .await
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            Error::Unavailable("store closed".into()).to_string()
        );
    }
}
