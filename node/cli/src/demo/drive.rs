//! Driving planned visits through the real HospitalService, as a hospital's system
//! would: identify the patient, register or admit, upload fee lines, (discharge,)
//! pre-settle, settle — and for a few, cancel or 冲正 afterwards. A call whose answer is
//! ABORTED or UNAVAILABLE is repeated with the same request id, which is what the
//! protocol's idempotency is for.

use std::{
    collections::BTreeMap,
    future::Future,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tonic::{Code, Status, transport::Channel};
use yidi_common::{
    proto::{self, hospital_service_client::HospitalServiceClient},
    types::VisitKind,
};

use super::data::{After, Category, Scenario, yuan};
use yidi_node::metrics::code_label;

/// What became of one visit.
#[derive(Debug)]
pub enum Outcome {
    Settled(Box<Done>),
    /// No direct settlement: the patient pays in full and claims at home.
    Refused {
        stage: &'static str,
        reason: String,
    },
    Failed {
        stage: &'static str,
        code: Code,
        message: String,
    },
}

/// A settled visit and what followed.
#[derive(Debug)]
pub struct Done {
    pub scenario: Scenario,
    pub pre: proto::Settlement,
    pub settlement: proto::Settlement,
    pub cancel: Option<proto::Settlement>,
    pub reverse: Option<proto::ReverseRequestResponse>,
}

/// Running counts, shared by the concurrent visits.
#[derive(Debug, Default)]
pub struct Tally {
    inner: Mutex<Counts>,
    /// Settle calls sent to each node (retries included), to compare with its metrics.
    pub settle_calls: [AtomicU64; 3],
}

/// The counts themselves.
#[derive(Debug, Default, Clone)]
pub struct Counts {
    pub settled: u64,
    pub provisional: u64,
    pub refused: u64,
    pub failed: u64,
    pub cancelled: u64,
    pub reversed: u64,
    pub retried: u64,
    pub errors: BTreeMap<&'static str, u64>,
    /// (visit kind, category) → [settled, refused, failed]
    pub by_kind: BTreeMap<(String, String), [u64; 3]>,
    pub refusal_reasons: BTreeMap<String, u64>,
    pub first_errors: Vec<String>,
}

impl Tally {
    /// Counts one outcome and returns the progress line.
    pub fn record(&self, sc: &Scenario, o: &Outcome) -> String {
        let mut c = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = (sc.kind.as_str().to_owned(), short_category(sc.category));
        let column = match o {
            Outcome::Settled(_) => 0,
            Outcome::Refused { .. } => 1,
            Outcome::Failed { .. } => 2,
        };
        c.by_kind.entry(key).or_default()[column] += 1;
        match o {
            Outcome::Settled(d) => {
                c.settled += 1;
                c.provisional += u64::from(d.settlement.state == "provisional");
                c.cancelled += u64::from(d.cancel.is_some());
                c.reversed +=
                    u64::from(d.reverse.as_ref().is_some_and(|r| r.outcome == "reversed"));
            }
            Outcome::Refused { stage, reason } => {
                c.refused += 1;
                *c.refusal_reasons
                    .entry(format!("at {stage}: {}", short_reason(reason)))
                    .or_default() += 1;
            }
            Outcome::Failed {
                stage,
                code,
                message,
            } => {
                c.failed += 1;
                *c.errors.entry(code_label(*code)).or_default() += 1;
                if c.first_errors.len() < 5 {
                    c.first_errors.push(format!(
                        "visit #{} ({} at {}), {stage}: {code:?}: {message}",
                        sc.n, sc.kind, sc.institution
                    ));
                }
            }
        }
        progress_line(&c)
    }

    fn retried(&self) {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retried += 1;
    }

    /// A copy of the counts.
    #[must_use]
    pub fn counts(&self) -> Counts {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// "settled 312 · refused 21 · errors 0 (…)"
#[must_use]
pub fn progress_line(c: &Counts) -> String {
    let mut s = format!(
        "settled {} · refused {} · errors {}",
        c.settled, c.refused, c.failed
    );
    if !c.errors.is_empty() {
        let by: Vec<String> = c.errors.iter().map(|(k, v)| format!("{k} {v}")).collect();
        s.push_str(&format!(" ({})", by.join(", ")));
    }
    s
}

fn short_category(c: Category) -> String {
    match c {
        Category::Local => "local".into(),
        Category::Filed(_) => "filed".into(),
        Category::Temporary => "unfiled".into(),
    }
}

/// The reason without the variable parts, for grouping.
fn short_reason(r: &str) -> String {
    let r = r.trim_start_matches("no direct settlement: ");
    let cut = r.find(['(', ';']).unwrap_or(r.len());
    let mut s: String = r[..cut].trim().chars().take(120).collect();
    if s.is_empty() {
        s = "refused".into();
    }
    s
}

/// An owned future of one HospitalService call, so that [`retry`] can make it again.
macro_rules! call {
    ($h:expr, $method:ident, $req:expr) => {{
        let mut h = $h.clone();
        let req = $req.clone();
        async move { h.$method(req).await }
    }};
}

/// Repeats a call answered ABORTED (a concurrent change; retry) or UNAVAILABLE (a peer
/// was briefly unreachable) with the same request, a few times with a short backoff.
async fn retry<T, F, Fut>(tally: &Tally, mut f: F) -> Result<T, Status>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, Status>>,
{
    let mut attempt = 0u64;
    loop {
        match f().await {
            Ok(r) => return Ok(r.into_inner()),
            Err(s) if matches!(s.code(), Code::Aborted | Code::Unavailable) && attempt < 4 => {
                attempt += 1;
                tally.retried();
                tokio::time::sleep(Duration::from_millis(40 * attempt)).await;
            }
            Err(s) => return Err(s),
        }
    }
}

fn lines(sc: &Scenario, range: std::ops::Range<usize>) -> Vec<proto::FeeLine> {
    sc.fees[range.clone()]
        .iter()
        .zip(range)
        .map(|(f, i)| proto::FeeLine {
            line_no: (i + 1).to_string(),
            item_code: f.item_code.clone(),
            quantity: f.quantity.to_string(),
            unit_price: yuan(f.price_fen),
            amount: yuan(f.price_fen * i64::from(f.quantity)),
            service_date: String::new(),
        })
        .collect()
}

fn failed(stage: &'static str, s: &Status) -> Outcome {
    // "No direct settlement" is the policy's answer, not a fault.
    if s.code() == Code::FailedPrecondition && s.message().contains("no direct settlement") {
        return Outcome::Refused {
            stage,
            reason: s.message().to_owned(),
        };
    }
    Outcome::Failed {
        stage,
        code: s.code(),
        message: s.message().to_owned(),
    }
}

/// Runs one visit end to end at its treatment node.
pub async fn visit(
    mut h: HospitalServiceClient<Channel>,
    tally: &Tally,
    run: u32,
    sc: Scenario,
    today: chrono::NaiveDate,
) -> Outcome {
    let rid = |step: &str| format!("d{run}-{:05}-{step}", sc.n);
    let inst = sc.institution.clone();
    let p = &sc.person;
    let home = super::data::CITIES[p.home].region;

    let who = match h
        .identify(proto::IdentifyRequest {
            institution_code: inst.clone(),
            card_no: if sc.by_card {
                p.card_no.clone()
            } else {
                String::new()
            },
            card_region: if sc.by_card {
                home.to_owned()
            } else {
                String::new()
            },
            id_number: if sc.by_card {
                String::new()
            } else {
                p.id_number.clone()
            },
            visit_kind: sc.kind.to_proto(),
        })
        .await
    {
        Ok(r) => r.into_inner(),
        Err(s) => return failed("identify", &s),
    };
    if !who.eligible {
        return Outcome::Refused {
            stage: "identify",
            reason: who.ineligible_reason,
        };
    }

    let admitted_at = if sc.kind == VisitKind::Inpatient {
        format!(
            "{}T09:00:00+08:00",
            today - chrono::Duration::days(i64::from(sc.days))
        )
    } else {
        String::new()
    };
    let open = proto::OpenVisitRequest {
        request_id: rid("open"),
        institution_code: inst.clone(),
        id_number: who.id_number.clone(),
        home_region: who.home_region.clone(),
        visit_kind: sc.kind.to_proto(),
        external_visit_no: format!("D{run}-{:05}", sc.n),
        admitted_at,
        diagnosis_code: sc.diagnosis.to_owned(),
    };
    let v = match retry(tally, || call!(h, open_visit, open)).await {
        Ok(v) => v,
        Err(s) => return failed("open visit", &s),
    };

    // An admission's fees arrive in two uploads (admission day, then the rest).
    let n = sc.fees.len();
    let batches: Vec<std::ops::Range<usize>> = if sc.kind == VisitKind::Inpatient && n > 2 {
        vec![0..n / 2, n / 2..n]
    } else {
        std::iter::once(0..n).collect()
    };
    for (i, b) in batches.into_iter().enumerate() {
        let up = proto::UploadFeesRequest {
            request_id: rid(&format!("fees{}", i + 1)),
            institution_code: inst.clone(),
            visit_id: v.visit_id.clone(),
            lines: lines(&sc, b),
        };
        if let Err(s) = retry(tally, || call!(h, upload_fees, up)).await {
            return failed("upload fees", &s);
        }
    }
    if sc.kind == VisitKind::Inpatient {
        let close = proto::CloseVisitRequest {
            request_id: rid("close"),
            institution_code: inst.clone(),
            visit_id: v.visit_id.clone(),
            discharged_at: String::new(),
        };
        if let Err(s) = retry(tally, || call!(h, close_visit, close)).await {
            return failed("close visit", &s);
        }
    }

    let mut settle = proto::SettleRequest {
        request_id: rid("pre"),
        institution_code: inst.clone(),
        visit_id: v.visit_id.clone(),
        use_account: sc.use_account,
    };
    let pre = match retry(tally, || call!(h, pre_settle, settle)).await {
        Ok(p) => p,
        Err(s) => return failed("pre-settle", &s),
    };
    settle.request_id = rid("settle");
    let calls = &tally.settle_calls[sc.treatment];
    let settled = retry(tally, || {
        calls.fetch_add(1, Ordering::Relaxed);
        call!(h, settle, settle)
    })
    .await;
    let settlement = match settled {
        Ok(s) if s.state == "refused" => {
            return Outcome::Refused {
                stage: "settle",
                reason: s.note,
            };
        }
        Ok(s) => s,
        Err(s) => return failed("settle", &s),
    };

    let mut done = Done {
        scenario: sc.clone(),
        pre,
        settlement,
        cancel: None,
        reverse: None,
    };
    match sc.after {
        After::Nothing => {}
        After::Cancel => {
            let req = proto::CancelSettlementRequest {
                request_id: rid("cancel"),
                institution_code: inst.clone(),
                settlement_id: done.settlement.settlement_id.clone(),
                reason: "wrong patient registered at the counter (demo)".into(),
            };
            match retry(tally, || call!(h, cancel_settlement, req)).await {
                Ok(c) => done.cancel = Some(c),
                Err(s) => return failed("cancel", &s),
            }
        }
        After::Reverse => {
            // The counter's connection dropped before the settle answer arrived: the HIS
            // reverses the request by its id (冲正) rather than guessing.
            let req = proto::ReverseRequestRequest {
                request_id: rid("reverse"),
                institution_code: inst.clone(),
                original_request_id: settle.request_id.clone(),
            };
            match retry(tally, || call!(h, reverse_request, req)).await {
                Ok(r) => done.reverse = Some(r),
                Err(s) => return failed("冲正", &s),
            }
        }
    }
    Outcome::Settled(Box::new(done))
}
