//! The NHSA transactions (`infno`), each translated into the HospitalService request it
//! stands for and handed to the same `settlement::treatment` operation, after the same
//! size limits (`crate::limits::check`). No settlement logic lives here: the gateway
//! only reads the NHSA input, builds the proto request and writes the proto answer back
//! in NHSA names (docs/nhsa-gateway.md has the mapping).
//!
//! `msgid` is the request id of every state-changing call, so repeating a message
//! returns its original answer and a different message under a used msgid is refused.

use rust_decimal::Decimal;
use serde_json::{Map, Value, json};
use yidi_common::{idnum::IdNumber, period, proto};

use super::{
    codes::{self, Dict},
    envelope::{
        self, Envelope, NResult, NhsaError, Node, amount, amount_str, object, objects, plain,
    },
};
use crate::{
    context::NodeState,
    limits,
    settlement::{bill, treatment},
};

/// What a transaction answers: `output` and an optional `warn_msg`.
pub type Answer = (Value, Option<String>);

/// The HospitalService method an infno stands for (for the access rules and the rate
/// limit), or `None` for an unknown infno.
#[must_use]
pub fn method(infno: &str) -> Option<&'static str> {
    Some(match infno {
        "9001" | "9002" | "1101" => "Identify",
        "2201" | "2401" => "OpenVisit",
        "2402" => "CloseVisit",
        "2202" | "2404" => "CancelVisit",
        "2405" => "ReopenVisit",
        "2203" | "2203A" | "2403" => "UpdateVisit",
        "2204" | "2301" => "UploadFees",
        "2205" | "2302" => "UndoFees",
        "2206" | "2303" => "PreSettle",
        "2207" | "2304" => "Settle",
        "2208" | "2305" => "CancelSettlement",
        "2601" => "ReverseRequest",
        "3201" => "ReconcileTotals",
        "3202" | "9101" | "9102" => "ReconcileDetail",
        "5203" | "5204" => "GetSettlement",
        _ => return None,
    })
}

/// Runs one transaction for the institution `env.fixmedins_code` (already checked
/// against the caller's certificate).
pub async fn run(st: &NodeState, env: &Envelope) -> NResult<Answer> {
    match env.infno.as_str() {
        "9001" => sign_in(st, env),
        "9002" => sign_out(env),
        "1101" => person_info(st, env).await,
        "2201" => register(st, env, false).await,
        "2401" => register(st, env, true).await,
        "2402" => discharge(st, env).await,
        "2202" | "2404" => cancel_visit(st, env).await,
        "2405" => undo_discharge(st, env).await,
        "2203" | "2203A" => visit_info(st, env, false).await,
        "2403" => visit_info(st, env, true).await,
        "2204" | "2301" => upload_fees(st, env).await,
        "2205" | "2302" => undo_fees(st, env).await,
        "2206" | "2303" => settle(st, env, false).await,
        "2207" | "2304" => settle(st, env, true).await,
        "2208" | "2305" => cancel(st, env).await,
        "2601" => reverse(st, env).await,
        "3201" => reconcile_totals(st, env).await,
        "3202" => super::detail_reconcile::reconcile_detail(st, env).await,
        "9101" => super::files::upload(st, env).await,
        "5203" => settlement_query(st, env).await,
        "5204" => fee_query(st, env).await,
        other => Err(NhsaError::field(
            "infno",
            format!("不支持交易 {other}"),
            format!(
                "infno {other} is not a transaction of this gateway; supported: 9001 9002 1101 2201 2202 2203 2203A 2204 2205 2206 2207 2208 2301 2302 2303 2304 2305 2401 2402 2403 2404 2405 2601 3201 3202 5203 5204 9101 9102"
            ),
        )),
    }
}

// ------------------------------------------------------------------ errors

/// Proto field names as they appear in domain messages, and the NHSA names an HIS
/// knows them by. Longer names first: `original_request_id` before `request_id`.
const RENAMES: &[(&str, &str)] = &[
    ("original_request_id", "omsgid"),
    ("request_id", "msgid"),
    ("institution_code", "fixmedins_code"),
    ("external_visit_no", "ipt_otp_no"),
    ("admitted_at", "begntime"),
    ("discharged_at", "endtime"),
    ("settlement_id", "setl_id"),
    ("visit_id", "mdtrt_id"),
    ("id_number", "psn_no"),
    ("card_region", "insuplc_admdvs"),
    ("home_region", "insuplc_admdvs"),
    ("card_no", "mdtrt_cert_no"),
    ("line_nos", "feedetl_sn"),
    ("lines[", "feedetail["),
    (".line_no", ".feedetl_sn"),
    (".item_code", ".med_list_codg"),
    (".quantity", ".cnt"),
    (".unit_price", ".pric"),
    (".amount", ".det_item_fee_sumamt"),
    (".service_date", ".fee_ocur_time"),
    ("invalid lines:", "invalid feedetail:"),
    ("from_date", "stmt_begndate"),
    ("to_date", "stmt_enddate"),
    ("diagnosis_code", "diag_code"),
    ("visit_kind", "med_type"),
    // The HospitalService calls a message suggests, as the transactions an HIS sends.
    ("(CloseVisit)", "(2402)"),
    ("CancelSettlement:", "2208/2305:"),
    ("(CancelSettlement)", "(2208/2305)"),
];

/// A domain refusal as the NHSA answer: the gRPC status it would be (internal detail
/// stays in the log), its message in NHSA field names, and a Chinese summary naming
/// the field.
pub fn refusal(e: crate::Error) -> NhsaError {
    status_refusal(&tonic::Status::from(e))
}

/// A gRPC status as the NHSA answer (also used for the access checks).
#[must_use]
pub fn status_refusal(s: &tonic::Status) -> NhsaError {
    use tonic::Code;
    let mut en = s.message().to_owned();
    for (from, to) in RENAMES {
        en = en.replace(from, to);
    }
    let kind = match s.code() {
        Code::InvalidArgument => "输入有误",
        Code::NotFound => "未找到",
        Code::AlreadyExists => "报文ID（msgid）已用于内容不同的请求，未做任何变更",
        Code::FailedPrecondition => "当前状态不允许此交易",
        Code::Aborted => "并发冲突，请以相同 msgid 重试",
        Code::Unavailable => "暂时无法完成，请以相同 msgid 重试或冲正",
        Code::PermissionDenied => "无权办理",
        Code::ResourceExhausted => "请求过于频繁，请稍后重试",
        Code::Unauthenticated => "身份认证失败",
        _ => "系统内部错误",
    };
    let field = en
        .strip_prefix("invalid ")
        .and_then(|rest| rest.split(':').next())
        .filter(|f| !f.contains(' '))
        .map(str::to_owned);
    let zh = match &field {
        Some(f) => format!("{kind}：{}（{f}）", codes::field_zh(f)),
        None => kind.to_owned(),
    };
    // Refused at the node's door: busy, not this institution's rate.
    let retry_after_ms = (s.code() == Code::ResourceExhausted)
        .then(|| s.metadata().get(crate::admission::RETRY_AFTER_MS))
        .flatten()
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if let Some(ms) = retry_after_ms {
        return NhsaError {
            field: None,
            zh: format!("节点繁忙，未做任何处理，请于 {ms} 毫秒后以相同 msgid 重试"),
            en,
            retry_after_ms,
        };
    }
    NhsaError {
        field,
        zh,
        en,
        retry_after_ms: None,
    }
}

fn limited<M: limits::Limited>(req: &M) -> NResult<()> {
    limits::check(req).map_err(refusal)
}

// ------------------------------------------------------------------ helpers

fn data<'a>(env: &'a Envelope) -> NResult<Node<'a>> {
    object(&env.input, "data", "input.data")
}

/// `insuplc_admdvs`, required when the input names a person (sheet §2).
fn home_region(env: &Envelope) -> NResult<String> {
    if env.insuplc_admdvs.is_empty() {
        return Err(NhsaError::field(
            "insuplc_admdvs",
            "缺失：输入含人员编号时必填，取自 1101 的 insuinfo[].insuplc_admdvs",
            "insuplc_admdvs is missing; it is required when the input names a person (psn_no): take it from 1101 output.insuinfo[].insuplc_admdvs",
        ));
    }
    Ok(env.insuplc_admdvs.clone())
}

/// `yyyy-MM-dd HH:mm:ss` (China Standard Time) → RFC 3339; RFC 3339 passes as is.
fn datetime(node: &Node<'_>, f: &str, required: bool) -> NResult<String> {
    let s = if required {
        node.str(f)?
    } else {
        node.opt_str(f)?
    };
    if s.is_empty() {
        return Ok(s);
    }
    if chrono::DateTime::parse_from_rfc3339(&s).is_ok() {
        return Ok(s);
    }
    let parsed = chrono::NaiveDateTime::parse_from_str(&s, "%Y-%m-%d %H:%M:%S")
        .or_else(|_| {
            chrono::NaiveDate::parse_from_str(&s, "%Y-%m-%d")
                .map(|d| d.and_hms_opt(0, 0, 0).unwrap_or_default())
        })
        .map_err(|_| {
            let path = format!("{}.{f}", node.path);
            NhsaError::field(
                &path,
                "格式应为 yyyy-MM-dd HH:mm:ss",
                format!("{path} {s:?} is not a time yyyy-MM-dd HH:mm:ss"),
            )
        })?;
    Ok(format!("{}+08:00", parsed.format("%Y-%m-%dT%H:%M:%S")))
}

/// `yyyy-MM-dd` (a datetime's date part is accepted).
pub(super) fn date(node: &Node<'_>, f: &str) -> NResult<String> {
    let s = node.str(f)?;
    let day = s.get(..10).unwrap_or(&s);
    chrono::NaiveDate::parse_from_str(day, "%Y-%m-%d")
        .map(|d| d.to_string())
        .map_err(|_| {
            let path = format!("{}.{f}", node.path);
            NhsaError::field(
                &path,
                "格式应为 yyyy-MM-dd",
                format!("{path} {s:?} is not a date yyyy-MM-dd"),
            )
        })
}

/// A code read through a dictionary; `None` when the field is absent.
fn code(node: &Node<'_>, f: &str, dict: Dict) -> NResult<Option<&'static codes::Code>> {
    let s = node.opt_str(f)?;
    if s.is_empty() {
        return Ok(None);
    }
    codes::read(dict, &s).map(Some).ok_or_else(|| {
        let path = format!("{}.{f}", node.path);
        NhsaError::field(
            &path,
            format!(
                "代码 {s} 不在本网关的代码表中（可用：{}）",
                codes::accepted(dict)
            ),
            format!(
                "{path} {s:?} is not a code this gateway maps; accepted: {}",
                codes::accepted(dict)
            ),
        )
    })
}

/// A yes/no flag (`"1"` / `"0"`); absent reads as `default`.
fn flag(node: &Node<'_>, f: &str, default: bool) -> NResult<bool> {
    match node.opt_str(f)?.as_str() {
        "" => Ok(default),
        "1" => Ok(true),
        "0" => Ok(false),
        other => {
            let path = format!("{}.{f}", node.path);
            Err(NhsaError::field(
                &path,
                "应为 1 或 0",
                format!("{path} {other:?} must be \"1\" (yes) or \"0\" (no)"),
            ))
        }
    }
}

/// A money amount as the proto's decimal string (at most two decimals once trailing
/// zeros are dropped: `12.500000` is 12.50).
fn money_text(path: &str, d: Decimal) -> NResult<String> {
    let n = d.normalize();
    if n.scale() > 2 {
        return Err(NhsaError::field(
            path,
            "金额最多两位小数",
            format!("{path} {n} has more than two decimals (fen)"),
        ));
    }
    Ok(n.to_string())
}

/// `yyyy-MM-dd HH:mm:ss` in China Standard Time of an RFC 3339 timestamp.
fn nhsa_time(rfc3339: &str) -> Value {
    chrono::DateTime::parse_from_rfc3339(rfc3339).map_or(Value::Null, |t| {
        Value::String(
            t.with_timezone(&period::cst())
                .format("%Y-%m-%d %H:%M:%S")
                .to_string(),
        )
    })
}

fn now_time() -> String {
    chrono::Utc::now()
        .with_timezone(&period::cst())
        .format("%Y-%m-%d %H:%M:%S")
        .to_string()
}

/// Gender, birth date and age of an ID number (blank when it is not one).
fn person_facts(id_number: &str) -> (Value, Value, Value) {
    let Ok(id) = IdNumber::parse(id_number, "id_number") else {
        return (Value::Null, Value::Null, Value::Null);
    };
    let birth = id.birth_date();
    let days = (period::today() - birth).num_days();
    // Age in years with one decimal, as the sheet's fixtures give it.
    let age = (Decimal::from(days) / Decimal::new(36525, 2)).round_dp(1);
    let gend = if id.sex() == "M" { "1" } else { "2" };
    (
        Value::from(gend),
        Value::from(birth.to_string()),
        envelope::number(&age.to_string()),
    )
}

// ------------------------------------------------------------------ 9001 / 9002

/// 9001 sign-in: a sign number for the envelopes that follow. The gateway does not
/// require it later (identity is the certificate); it is issued so that HIS which
/// sign in first work unchanged.
fn sign_in(st: &NodeState, env: &Envelope) -> NResult<Answer> {
    let node = object(&env.input, "signIn", "input.signIn")?;
    node.str("opter_no")?;
    let now = chrono::Utc::now().with_timezone(&period::cst());
    let sign_no = format!(
        "{}{}{:010}",
        st.region,
        now.format("%Y%m%d%H%M%S"),
        super::serial()
    );
    Ok((
        json!({"signinoutb": {"sign_time": now.format("%Y-%m-%d %H:%M:%S").to_string(), "sign_no": sign_no}}),
        None,
    ))
}

/// 9002 sign-out.
fn sign_out(env: &Envelope) -> NResult<Answer> {
    let node = object(&env.input, "signOut", "input.signOut")?;
    node.str("opter_no")?;
    node.str("sign_no")?;
    Ok((json!({"signinoutb": {"sign_time": now_time()}}), None))
}

// ------------------------------------------------------------------ 1101

async fn person_info(st: &NodeState, env: &Envelope) -> NResult<Answer> {
    let node = data(env)?;
    let cert_type = node.str("mdtrt_cert_type")?;
    let cert_no = node.str("mdtrt_cert_no")?;
    let mut req = proto::IdentifyRequest {
        institution_code: env.fixmedins_code.clone(),
        ..Default::default()
    };
    match codes::read(Dict::MdtrtCertType, &cert_type).map(|c| c.value) {
        Some("id_number") => req.id_number = cert_no,
        Some(_) => {
            req.card_no = cert_no;
            req.card_region = home_region(env).map_err(|_| {
                NhsaError::field(
                    "insuplc_admdvs",
                    "缺失：以社保卡（03）识别时填写发卡地区划",
                    "insuplc_admdvs is missing; identifying by social-security card (mdtrt_cert_type 03) needs the card's issuing region there",
                )
            })?;
        }
        None => {
            return Err(NhsaError::field(
                "input.data.mdtrt_cert_type",
                format!(
                    "代码 {cert_type} 不支持（可用：{}；01 电子凭证不支持）",
                    codes::accepted(Dict::MdtrtCertType)
                ),
                format!(
                    "input.data.mdtrt_cert_type {cert_type:?} is not supported; use 02 (resident ID number) or 03 (social-security card with insuplc_admdvs); 01 e-vouchers are not"
                ),
            ));
        }
    }
    limited(&req)?;
    let r = treatment::identify(st, req).await.map_err(refusal)?;
    let (gend, brdy, age) = person_facts(&r.id_number);
    let stas = match proto::PersonStatus::try_from(r.status) {
        Ok(proto::PersonStatus::Active) => "1",
        _ => "0",
    };
    let out = json!({
        "baseinfo": {
            "psn_no": r.id_number,
            "psn_cert_type": "01",
            "certno": r.id_number,
            "psn_name": r.name,
            "gend": gend,
            "naty": null,
            "brdy": brdy,
            "age": age,
            "exp_content": null,
        },
        "insuinfo": [{
            "balc": amount_str(&r.account_balance),
            "insutype": codes::answer(Dict::Insutype, &r.insurance_type.to_string()).map(|c| c.code),
            "psn_type": codes::answer(Dict::PsnType, &r.person_type.to_string()).map(|c| c.code),
            "psn_insu_stas": stas,
            "psn_insu_date": null,
            "paus_insu_date": null,
            "cvlserv_flag": null,
            "insuplc_admdvs": r.home_region,
            "emp_name": null,
        }],
        "idetinfo": [],
    });
    let warn = (!r.eligible).then(|| {
        format!(
            "不能直接结算 / not eligible for direct settlement: {}",
            r.ineligible_reason
        )
    });
    Ok((out, warn))
}

// ------------------------------------------------------------------ 2201 / 2401 / 2402

async fn register(st: &NodeState, env: &Envelope, inpatient: bool) -> NResult<Answer> {
    let node = if inpatient {
        object(&env.input, "mdtrtinfo", "input.mdtrtinfo")?
    } else {
        data(env)?
    };
    let psn_no = node.str("psn_no")?;
    code(&node, "insutype", Dict::Insutype)?;
    let kind = match code(&node, "med_type", Dict::MedType)? {
        Some(c) => c.value.parse::<i32>().unwrap_or_default(),
        None if inpatient => proto::VisitKind::Inpatient as i32,
        None => proto::VisitKind::Outpatient as i32,
    };
    if inpatient != (kind == proto::VisitKind::Inpatient as i32) {
        let path = format!("{}.med_type", node.path);
        return Err(NhsaError::field(
            &path,
            if inpatient {
                "入院办理须为住院类别（21）"
            } else {
                "门诊挂号不能是住院类别（21）"
            },
            format!(
                "{path} must be {} for infno {}",
                if inpatient {
                    "21 (inpatient)"
                } else {
                    "an outpatient type (11, 13, 14, 41)"
                },
                env.infno
            ),
        ));
    }
    let visit_no = if inpatient {
        node.str("ipt_no")?
    } else {
        node.str("ipt_otp_no")?
    };
    // The main diagnosis of an admission: the diseinfo line flagged main, or the first.
    let diagnosis = if inpatient {
        match env.input.get("diseinfo") {
            Some(_) => {
                let lines = objects(&env.input, "diseinfo")?;
                let main = lines
                    .iter()
                    .find(|d| d.get("maindiag_flag").and_then(Value::as_str) == Some("1"))
                    .or(lines.first());
                main.and_then(|d| d.get("diag_code").and_then(Value::as_str))
                    .unwrap_or_default()
                    .to_owned()
            }
            None => node.opt_str("dscg_maindiag_code")?,
        }
    } else {
        String::new()
    };
    let req = proto::OpenVisitRequest {
        request_id: env.msgid.clone(),
        institution_code: env.fixmedins_code.clone(),
        id_number: psn_no.clone(),
        home_region: home_region(env)?,
        visit_kind: kind,
        external_visit_no: visit_no.clone(),
        admitted_at: datetime(&node, "begntime", true)?,
        diagnosis_code: diagnosis,
    };
    limited(&req)?;
    let v = treatment::open_visit(st, req).await.map_err(refusal)?;
    let body =
        json!({"mdtrt_id": v.visit_id, "psn_no": v.id_number, "ipt_otp_no": v.external_visit_no});
    // 2401's node is `result` in the one source that shows it; `data` as 2201 too.
    let out = if inpatient {
        json!({"result": body, "data": body})
    } else {
        json!({"data": body})
    };
    Ok((out, None))
}

async fn discharge(st: &NodeState, env: &Envelope) -> NResult<Answer> {
    let node = object(&env.input, "dscginfo", "input.dscginfo")?;
    node.str("psn_no")?;
    let req = proto::CloseVisitRequest {
        request_id: env.msgid.clone(),
        institution_code: env.fixmedins_code.clone(),
        visit_id: node.str("mdtrt_id")?,
        discharged_at: datetime(&node, "endtime", true)?,
    };
    limited(&req)?;
    treatment::close_visit(st, req).await.map_err(refusal)?;
    Ok((json!({}), None))
}

/// The visit `mdtrt_id` names must be the person's (`psn_no`) and, where given, carry
/// the institution's visit number (`ipt_otp_no`): a cancellation aimed at the wrong visit
/// is refused, not carried out.
async fn matching_visit(
    st: &NodeState,
    env: &Envelope,
    node: &Node<'_>,
    with_visit_no: bool,
) -> NResult<String> {
    let psn_no = node.str("psn_no")?;
    let visit_id = node.str("mdtrt_id")?;
    let visit_no = if with_visit_no {
        Some(node.str("ipt_otp_no")?)
    } else {
        None
    };
    let v = bill::visit_bill(st, &env.fixmedins_code, &visit_id)
        .await
        .map_err(refusal)?
        .visit;
    let path = node.path;
    if v.id_number != psn_no {
        return Err(NhsaError::field(
            format!("{path}.psn_no"),
            format!("与就诊 {visit_id} 的人员编号不一致"),
            format!("{path}.psn_no {psn_no} is not the person of visit {visit_id}"),
        ));
    }
    if let Some(no) = visit_no.filter(|no| *no != v.external_visit_no) {
        return Err(NhsaError::field(
            format!("{path}.ipt_otp_no"),
            format!(
                "与就诊 {visit_id} 的住院/门诊号 {} 不一致",
                v.external_visit_no
            ),
            format!(
                "{path}.ipt_otp_no {no} is not the visit number {} of visit {visit_id}",
                v.external_visit_no
            ),
        ));
    }
    Ok(visit_id)
}

/// 2202 (registration cancel) and 2404 (admission cancel): CancelVisit.
async fn cancel_visit(st: &NodeState, env: &Envelope) -> NResult<Answer> {
    let node = data(env)?;
    let visit_id = matching_visit(st, env, &node, env.infno == "2202").await?;
    let req = proto::CancelVisitRequest {
        request_id: env.msgid.clone(),
        institution_code: env.fixmedins_code.clone(),
        visit_id,
        reason: node.opt_str("exp_content")?,
    };
    limited(&req)?;
    treatment::cancel_visit(st, req).await.map_err(refusal)?;
    Ok((json!({}), None))
}

/// 2405 (discharge cancel): ReopenVisit.
async fn undo_discharge(st: &NodeState, env: &Envelope) -> NResult<Answer> {
    let node = data(env)?;
    let visit_id = matching_visit(st, env, &node, false).await?;
    let req = proto::ReopenVisitRequest {
        request_id: env.msgid.clone(),
        institution_code: env.fixmedins_code.clone(),
        visit_id,
    };
    limited(&req)?;
    treatment::reopen_visit(st, req).await.map_err(refusal)?;
    Ok((json!({}), None))
}

/// The main diagnosis of `diseinfo[]`: the line flagged main (`maindiag_flag` 1), else
/// the one numbered 1 (`diag_srt_no`), else the first; empty without `diseinfo`.
fn main_diagnosis(env: &Envelope) -> NResult<String> {
    if env.input.get("diseinfo").is_none() {
        return Ok(String::new());
    }
    let lines = objects(&env.input, "diseinfo")?;
    let flag = |d: &&Map<String, Value>, f: &str| {
        d.get(f).is_some_and(|v| match v {
            Value::String(s) => s.trim() == "1",
            Value::Number(n) => n.as_u64() == Some(1),
            _ => false,
        })
    };
    if lines.is_empty() {
        return Ok(String::new());
    }
    let i = lines
        .iter()
        .position(|d| flag(d, "maindiag_flag"))
        .or_else(|| lines.iter().position(|d| flag(d, "diag_srt_no")))
        .unwrap_or(0);
    let path = format!("diseinfo[{i}]");
    Node {
        path: &path,
        obj: lines[i],
    }
    .str("diag_code")
}

/// 2203 / 2203A (outpatient visit information) and 2403 (admission change): UpdateVisit
/// with what the node keeps — the main diagnosis and, for 2403, the visit number. The
/// other fields (department, doctors, conditions, maternity data…) are accepted and not
/// kept (docs/nhsa-gateway.md).
async fn visit_info(st: &NodeState, env: &Envelope, admission: bool) -> NResult<Answer> {
    let node = if admission {
        object(&env.input, "adminfo", "input.adminfo")?
    } else {
        object(&env.input, "mdtrtinfo", "input.mdtrtinfo")?
    };
    let visit_id = matching_visit(st, env, &node, false).await?;
    let mut diagnosis = main_diagnosis(env)?;
    if diagnosis.is_empty() {
        diagnosis = node.opt_str(if admission {
            "dscg_maindiag_code"
        } else {
            "dise_codg"
        })?;
    }
    let visit_no = if admission {
        node.str("ipt_otp_no")?
    } else {
        String::new()
    };
    if diagnosis.is_empty() && visit_no.is_empty() {
        return Err(NhsaError::missing("input.diseinfo"));
    }
    let req = proto::UpdateVisitRequest {
        request_id: env.msgid.clone(),
        institution_code: env.fixmedins_code.clone(),
        visit_id,
        diagnosis_code: diagnosis,
        external_visit_no: visit_no,
    };
    limited(&req)?;
    treatment::update_visit(st, req).await.map_err(refusal)?;
    Ok((json!({}), None))
}

// ------------------------------------------------------------------ fees

async fn upload_fees(st: &NodeState, env: &Envelope) -> NResult<Answer> {
    let items = objects(&env.input, "feedetail")?;
    let mut visit_id = String::new();
    let mut lines = Vec::with_capacity(items.len());
    let paths: Vec<String> = (0..items.len())
        .map(|i| format!("feedetail[{i}]"))
        .collect();
    for (obj, path) in items.iter().zip(&paths) {
        let node = Node { path, obj };
        let mdtrt_id = node.str("mdtrt_id")?;
        if visit_id.is_empty() {
            visit_id = mdtrt_id;
        } else if visit_id != mdtrt_id {
            return Err(NhsaError::field(
                format!("{path}.mdtrt_id"),
                "一次上传的明细须属于同一就诊",
                format!(
                    "{path}.mdtrt_id {mdtrt_id} differs from feedetail[0].mdtrt_id {visit_id}; upload one visit's lines per message"
                ),
            ));
        }
        let fee_time = datetime(&node, "fee_ocur_time", true)?;
        lines.push(proto::FeeLine {
            line_no: node.str("feedetl_sn")?,
            item_code: node.str("med_list_codg")?,
            quantity: plain(node.dec("cnt")?),
            unit_price: money_text(&format!("{path}.pric"), node.dec("pric")?)?,
            amount: money_text(
                &format!("{path}.det_item_fee_sumamt"),
                node.dec("det_item_fee_sumamt")?,
            )?,
            service_date: fee_time.get(..10).unwrap_or_default().to_owned(),
        });
    }
    let req = proto::UploadFeesRequest {
        request_id: env.msgid.clone(),
        institution_code: env.fixmedins_code.clone(),
        visit_id,
        lines,
    };
    limited(&req)?;
    let r = treatment::upload_fees(st, req).await.map_err(refusal)?;
    let result: Vec<Value> = r.lines.iter().map(classified_line).collect();
    Ok((json!({ "result": result }), None))
}

/// One `result[]` line of 2204/2301: the line's class and limits. The per-line
/// amounts of the split come with pre-settlement (2206/2303).
fn classified_line(c: &proto::ClassifiedLine) -> Value {
    let line = c.line.clone().unwrap_or_default();
    let lv = codes::answer(Dict::ChrgitmLv, &c.class.to_string()).map(|r| r.code);
    let selfpay = if c.class == proto::CatalogueClass::C as i32 {
        Decimal::ONE
    } else {
        envelope::decimal(&c.first_selfpay_ratio).unwrap_or_default()
    };
    json!({
        "feedetl_sn": line.line_no,
        "det_item_fee_sumamt": amount_str(&line.amount),
        "cnt": envelope::number(&line.quantity),
        "pric": amount_str(&line.unit_price),
        "pric_uplmt_amt": if c.price_cap.is_empty() { amount(Decimal::from(999_999)) } else { amount_str(&c.price_cap) },
        "selfpay_prop": envelope::number(&selfpay.round_dp(4).to_string()),
        "fulamt_ownpay_amt": null,
        "overlmt_amt": null,
        "preselfpay_amt": null,
        "inscp_scp_amt": null,
        "chrgitm_lv": lv,
        "med_chrgitm_type": null,
        "bas_medn_flag": null,
        "hi_nego_drug_flag": null,
        "chld_medc_flag": null,
        "list_sp_item_flag": null,
        "lmt_used_flag": "0",
        "drt_reim_flag": null,
        "memo": c.item_name,
    })
}

/// 2205 (`chrg_bchno`) / 2302 (`feedetl_sn`): `"0000"` removes every line; 2302 names
/// one line; a 2205 batch other than `"0000"` is refused (yidi keeps no batches).
async fn undo_fees(st: &NodeState, env: &Envelope) -> NResult<Answer> {
    let node = data(env)?;
    node.str("psn_no")?;
    let line_nos = if env.infno == "2205" {
        let b = node.str("chrg_bchno")?;
        if b != "0000" {
            return Err(NhsaError::field(
                "input.data.chrg_bchno",
                "只支持 0000（撤销全部未结算明细）",
                format!(
                    "input.data.chrg_bchno {b:?}: only \"0000\" (all unsettled lines) is supported; undo single lines with 2302 by feedetl_sn"
                ),
            ));
        }
        Vec::new()
    } else {
        match node.str("feedetl_sn")?.as_str() {
            "0000" => Vec::new(),
            sn => vec![sn.to_owned()],
        }
    };
    let req = proto::UndoFeesRequest {
        request_id: env.msgid.clone(),
        institution_code: env.fixmedins_code.clone(),
        visit_id: node.str("mdtrt_id")?,
        line_nos,
    };
    limited(&req)?;
    treatment::undo_fees(st, req).await.map_err(refusal)?;
    Ok((json!({}), None))
}

// ------------------------------------------------------------------ settlement

/// 2206/2303 pre-settle, 2207/2304 settle: `medfee_sumamt` must be the uploaded
/// bill's total (checked by the settlement against the bill it settles).
async fn settle(st: &NodeState, env: &Envelope, real: bool) -> NResult<Answer> {
    let node = data(env)?;
    let visit_id = node.str("mdtrt_id")?;
    let declared = node.dec("medfee_sumamt")?;
    // Validated; the settlement's insurance type is the home node's (kept with the visit).
    code(&node, "insutype", Dict::Insutype)?;
    // 2303 leaves the flag optional ([OH]); every other sends it.
    let use_account = flag(&node, "acct_used_flag", false)?;
    let cert_type = node.opt_str("mdtrt_cert_type")?;
    let req = proto::SettleRequest {
        request_id: env.msgid.clone(),
        institution_code: env.fixmedins_code.clone(),
        visit_id: visit_id.clone(),
        use_account,
    };
    limited(&req)?;
    // The declared total is checked against the bill the settlement itself reads, in
    // the same store job: nothing uploaded or undone in between can be settled unseen.
    let started = std::time::Instant::now();
    let answer = if real {
        treatment::settle_declared(st, req, Some(declared)).await
    } else {
        treatment::pre_settle_declared(st, req, Some(declared)).await
    };
    let (answer, visit) = match answer {
        Ok(w) => (Ok(tonic::Response::new(w.settlement)), w.visit),
        Err(e) => (Err(tonic::Status::from(e)), None),
    };
    // Counted and timed in the node's metrics as HospitalService's are.
    let op = if real {
        crate::metrics::Op::Settle
    } else {
        crate::metrics::Op::PreSettle
    };
    st.metrics.settlement(op, &answer, started.elapsed());
    let s = answer
        .map(tonic::Response::into_inner)
        .map_err(|e| settle_refusal(&e))?;
    let warn = match s.state.as_str() {
        "refused" | "provisional" => Some(s.note.clone()),
        _ => None,
    };
    // The visit as the settlement read it; read apart only for a repeated request's
    // stored answer or a same-city settlement.
    let visit = match visit {
        Some(v) => Some(v),
        None => bill::visit_bill(st, &env.fixmedins_code, &visit_id)
            .await
            .ok()
            .map(|b| b.visit),
    };
    let mut out = settlement_output(
        &s,
        &env.msgid,
        visit.as_ref().and_then(home_facts).as_ref(),
        real,
    );
    if let Some(info) = out.get_mut("setlinfo").and_then(Value::as_object_mut) {
        info.insert("mdtrt_cert_type".into(), Value::from(cert_type));
    }
    Ok((out, warn))
}

/// A refusal of 2206/2207/2303/2304: the declared total's in NHSA terms.
fn settle_refusal(e: &tonic::Status) -> NhsaError {
    let r = status_refusal(e);
    if r.field.as_deref() != Some("declared_total") {
        return r;
    }
    NhsaError {
        retry_after_ms: None,
        field: Some("input.data.medfee_sumamt".into()),
        zh: "医疗费总额（input.data.medfee_sumamt）与上传费用明细总额不一致，未做任何结算".into(),
        en: r
            .en
            .replace("invalid declared_total", "input.data.medfee_sumamt"),
    }
}

/// What the home node said about the person when the visit was opened (kept with the
/// visit): insurance type, person type, civil-servant flag.
fn home_facts(visit: &crate::store::visits::VisitRec) -> Option<proto::EligibilityResponse> {
    use prost::Message;
    proto::EligibilityResponse::decode(visit.home_snapshot.as_slice()).ok()
}

/// `setlinfo` and `setldetail` of a settlement (or pre-settlement, `with_id` false).
fn settlement_output(
    s: &proto::Settlement,
    msgid: &str,
    person: Option<&proto::EligibilityResponse>,
    with_id: bool,
) -> Value {
    let split = s.split.clone().unwrap_or_default();
    let insurance = person
        .map(|p| p.insurance_type)
        .filter(|t| *t != 0)
        .unwrap_or_else(|| codes::insurance_of_split(&split));
    let (gend, brdy, age) = person_facts(&s.id_number);
    let mut info = Map::new();
    info.insert("mdtrt_id".into(), Value::from(s.visit_id.clone()));
    if with_id {
        info.insert("setl_id".into(), Value::from(s.settlement_id.clone()));
    }
    info.insert("psn_no".into(), Value::from(s.id_number.clone()));
    // As the home node gave it when the visit was opened (null for a visit opened
    // before home nodes sent it).
    info.insert(
        "psn_name".into(),
        person
            .map(|p| p.name.clone())
            .filter(|n| !n.is_empty())
            .map_or(Value::Null, Value::from),
    );
    info.insert("psn_cert_type".into(), Value::from("01"));
    info.insert("certno".into(), Value::from(s.id_number.clone()));
    info.insert("gend".into(), gend);
    info.insert("naty".into(), Value::Null);
    info.insert(
        "psn_type".into(),
        person
            .and_then(|p| codes::answer(Dict::PsnType, &p.person_type.to_string()))
            .map_or(Value::Null, |c| c.code.into()),
    );
    info.insert(
        "cvlserv_flag".into(),
        person.map_or(Value::Null, |p| {
            Value::from(if p.civil_servant { "1" } else { "0" })
        }),
    );
    info.insert("brdy".into(), brdy);
    info.insert("age".into(), age);
    info.insert(
        "insutype".into(),
        codes::answer(Dict::Insutype, &insurance.to_string())
            .map_or(Value::Null, |c| c.code.into()),
    );
    info.insert(
        "setl_time".into(),
        if with_id {
            nhsa_time(&s.settled_at)
        } else {
            Value::Null
        },
    );
    info.insert(
        "med_type".into(),
        Value::from(codes::med_type(s.visit_kind)),
    );
    for (name, v) in [
        ("medfee_sumamt", &split.medfee_sumamt),
        ("fulamt_ownpay_amt", &split.fulamt_ownpay_amt),
        ("overlmt_selfpay", &split.overlmt_selfpay),
        ("preselfpay_amt", &split.preselfpay_amt),
        ("inscp_scp_amt", &split.inscp_scp_amt),
        ("act_pay_dedc", &split.act_pay_dedc),
        ("hifp_pay", &split.hifp_pay),
        ("cvlserv_pay", &split.cvlserv_pay),
        ("hifmi_pay", &split.hifmi_pay),
        ("hifob_pay", &split.hifob_pay),
        ("maf_pay", &split.maf_pay),
        ("fund_pay_sumamt", &split.fund_pay_sumamt),
        ("psn_part_amt", &split.psn_part_amt),
        ("acct_pay", &split.acct_pay),
        ("psn_cash_pay", &split.psn_cash_pay),
        ("hosp_part_amt", &split.hosp_part_amt),
    ] {
        info.insert(name.into(), amount_str(v));
    }
    // Funds yidi's policies do not have: always zero.
    for name in ["hifes_pay", "oth_pay", "acct_mulaid_pay"] {
        info.insert(name.into(), amount(Decimal::ZERO));
    }
    // Both spellings of the cash field: the 2208 table has the typo (sheet §6.9).
    info.insert("pdn_cash_pay".into(), amount_str(&split.psn_cash_pay));
    info.insert(
        "pool_prop_selfpay".into(),
        envelope::number(&plain(
            envelope::decimal(&split.pool_ratio).unwrap_or_default(),
        )),
    );
    info.insert("balc".into(), Value::Null);
    info.insert("medins_setl_id".into(), Value::from(msgid));
    info.insert("clr_optins".into(), Value::from(s.treatment_region.clone()));
    info.insert("clr_way".into(), Value::Null);
    info.insert(
        "clr_type".into(),
        Value::from(codes::clr_type(s.visit_kind)),
    );
    info.insert(
        "refd_setl_flag".into(),
        Value::from(if s.state == "reversal" { "1" } else { "0" }),
    );
    // From the split's fund amounts (a reversal record carries them negated, and no
    // fund list): one row per fund that paid anything.
    let detail: Vec<Value> = [
        ("hifp", &split.hifp_pay),
        ("hifmi", &split.hifmi_pay),
        ("hifob", &split.hifob_pay),
        ("cvlserv", &split.cvlserv_pay),
        ("maf", &split.maf_pay),
        ("acct", &split.acct_pay),
    ]
    .into_iter()
    .filter(|(_, v)| envelope::decimal(v).is_some_and(|d| !d.is_zero()))
    .map(|(fund, v)| {
        let row = codes::fund_pay_type(fund, insurance);
        json!({
            "fund_pay_type": row.map(|r| r.code),
            "inscp_scp_amt": amount_str(&split.inscp_scp_amt),
            "crt_payb_lmt_amt": null,
            "fund_payamt": amount_str(v),
            "fund_pay_type_name": row.map(|r| r.zh),
            "setl_proc_info": null,
        })
    })
    .collect();
    json!({"setlinfo": info, "setldetail": detail})
}

/// 2208 / 2305: cancel a settlement; the answer is the reversal record.
async fn cancel(st: &NodeState, env: &Envelope) -> NResult<Answer> {
    let node = data(env)?;
    node.str("psn_no")?;
    let setl_id = node.str("setl_id")?;
    let visit_id = node.str("mdtrt_id")?;
    let get = proto::GetSettlementRequest {
        institution_code: env.fixmedins_code.clone(),
        settlement_id: setl_id.clone(),
    };
    limited(&get)?;
    let original = treatment::get_settlement(st, get).await.map_err(refusal)?;
    if original.visit_id != visit_id {
        return Err(NhsaError::field(
            "input.data.mdtrt_id",
            format!("与结算 {setl_id} 的就诊ID {} 不一致", original.visit_id),
            format!(
                "input.data.mdtrt_id {visit_id} is not the visit {} of settlement {setl_id}",
                original.visit_id
            ),
        ));
    }
    let req = proto::CancelSettlementRequest {
        request_id: env.msgid.clone(),
        institution_code: env.fixmedins_code.clone(),
        settlement_id: setl_id,
        reason: format!("NHSA {} by the institution", env.infno),
    };
    limited(&req)?;
    let rev = treatment::cancel(st, req).await.map_err(refusal)?;
    let person = bill::visit_bill(st, &env.fixmedins_code, &visit_id)
        .await
        .ok()
        .and_then(|b| home_facts(&b.visit));
    Ok((
        settlement_output(&rev, &env.msgid, person.as_ref(), true),
        None,
    ))
}

/// 2601 冲正: reverse the request whose msgid was `omsgid`.
async fn reverse(st: &NodeState, env: &Envelope) -> NResult<Answer> {
    let node = data(env)?;
    let omsgid = node.str("omsgid")?;
    let oinfno = node.str("oinfno")?;
    if !matches!(oinfno.as_str(), "2207" | "2304") {
        return Err(NhsaError::field(
            "input.data.oinfno",
            format!("交易 {oinfno} 不可冲正（可冲正：2207、2304）"),
            format!(
                "input.data.oinfno {oinfno}: only settlements (2207, 2304) are reversed by 2601; cancel others with their cancel transaction"
            ),
        ));
    }
    let req = proto::ReverseRequestRequest {
        request_id: env.msgid.clone(),
        institution_code: env.fixmedins_code.clone(),
        original_request_id: omsgid,
    };
    limited(&req)?;
    let r = treatment::reverse_request(st, req).await.map_err(refusal)?;
    let warn = match r.outcome.as_str() {
        "not_found" => Some(
            "原交易未生效，已阻止其日后生效 / the original never took effect; it is barred from taking effect later".to_owned(),
        ),
        "already_reversed" => Some("原交易已冲正 / the original was already reversed".to_owned()),
        _ => None,
    };
    Ok((json!({}), warn))
}

// ------------------------------------------------------------------ reconciliation

async fn reconcile_totals(st: &NodeState, env: &Envelope) -> NResult<Answer> {
    let node = data(env)?;
    let count = node.dec("fixmedins_setl_cnt")?;
    let count = u64::try_from(count.normalize().mantissa())
        .ok()
        .filter(|_| count.normalize().scale() == 0)
        .ok_or_else(|| {
            NhsaError::field(
                "input.data.fixmedins_setl_cnt",
                "应为非负整数",
                "input.data.fixmedins_setl_cnt must be a whole number ≥ 0",
            )
        })?;
    let req = proto::ReconcileTotalsRequest {
        institution_code: env.fixmedins_code.clone(),
        from_date: date(&node, "stmt_begndate")?,
        to_date: date(&node, "stmt_enddate")?,
        count,
        medfee_sumamt: money_text("input.data.medfee_sumamt", node.dec("medfee_sumamt")?)?,
        fund_pay_sumamt: money_text("input.data.fund_pay_sumamt", node.dec("fund_pay_sumamt")?)?,
        acct_pay: money_text("input.data.acct_pay", node.dec("acct_pay")?)?,
    };
    limited(&req)?;
    let r = treatment::reconcile_totals(st, req)
        .await
        .map_err(refusal)?;
    let optins = node.opt_str("setl_optins")?;
    let dscr = if r.matches {
        "对账一致".to_owned()
    } else {
        format!(
            "对账不一致：本节点 {} 笔，医疗费总额 {}，基金支付 {}，个人账户 {} / unbalanced: the node has {} settlements, medfee_sumamt {}, fund_pay_sumamt {}, acct_pay {}",
            r.count,
            r.medfee_sumamt,
            r.fund_pay_sumamt,
            r.acct_pay,
            r.count,
            r.medfee_sumamt,
            r.fund_pay_sumamt,
            r.acct_pay
        )
    };
    Ok((
        json!({"stmtinfo": {
            "setl_optins": if optins.is_empty() { st.region.to_string() } else { optins },
            "stmt_rslt": if r.matches { "0" } else { "1" },
            "stmt_rslt_dscr": dscr,
            "fixmedins_setl_cnt": r.count,
            "medfee_sumamt": amount_str(&r.medfee_sumamt),
            "fund_pay_sumamt": amount_str(&r.fund_pay_sumamt),
            "acct_pay": amount_str(&r.acct_pay),
        }}),
        None,
    ))
}

// ------------------------------------------------------------------ queries

async fn settlement_query(st: &NodeState, env: &Envelope) -> NResult<Answer> {
    let node = data(env)?;
    node.str("psn_no")?;
    let req = proto::GetSettlementRequest {
        institution_code: env.fixmedins_code.clone(),
        settlement_id: node.str("setl_id")?,
    };
    limited(&req)?;
    let s = treatment::get_settlement(st, req).await.map_err(refusal)?;
    let person = bill::visit_bill(st, &env.fixmedins_code, &s.visit_id)
        .await
        .ok()
        .and_then(|b| home_facts(&b.visit));
    let mut out = settlement_output(&s, "", person.as_ref(), true);
    if let Some(info) = out.get_mut("setlinfo").and_then(Value::as_object_mut) {
        info.remove("medins_setl_id");
        info.insert(
            "fixmedins_code".into(),
            Value::from(s.institution_code.clone()),
        );
        // 5203's names of the person's share (sheet §6.21).
        let split = s.split.clone().unwrap_or_default();
        info.insert("psn_pay".into(), amount_str(&split.psn_part_amt));
        info.insert("cash_payamt".into(), amount_str(&split.psn_cash_pay));
        info.insert(
            "year".into(),
            Value::from(s.settled_at.get(..4).unwrap_or_default()),
        );
    }
    Ok((out, None))
}

/// 5204: the fee lines of a visit as uploaded (the output node name is not in the
/// sheet; `data`, the node of most list outputs).
async fn fee_query(st: &NodeState, env: &Envelope) -> NResult<Answer> {
    let node = data(env)?;
    node.str("psn_no")?;
    let visit_id = node.str("mdtrt_id")?;
    let setl_id = node.opt_str("setl_id")?;
    let b = bill::visit_bill(st, &env.fixmedins_code, &visit_id)
        .await
        .map_err(refusal)?;
    let med_type = codes::read(Dict::MedType, "11").map_or("", |c| c.code);
    let kind_code = yidi_common::types::VisitKind::parse(&b.visit.visit_kind, "visit_kind")
        .map(|k| codes::med_type(k.to_proto()))
        .unwrap_or(med_type);
    let lines: Vec<Value> = b
        .lines
        .iter()
        .map(|l| {
            let lv = yidi_common::types::CatalogueClass::parse(&l.class, "class")
                .ok()
                .and_then(|c| codes::answer(Dict::ChrgitmLv, &c.to_proto().to_string()))
                .map(|r| r.code);
            json!({
                "mdtrt_id": visit_id,
                "setl_id": setl_id,
                "feedetl_sn": l.line_no,
                "med_type": kind_code,
                "fee_ocur_time": l.service_date,
                "cnt": envelope::number(&l.quantity),
                "pric": amount(yidi_common::money::from_fen(l.unit_price_fen)),
                "det_item_fee_sumamt": amount(yidi_common::money::from_fen(l.amount_fen)),
                "pric_uplmt_amt": l.price_cap_fen.map_or(Value::Null, |f| amount(yidi_common::money::from_fen(f))),
                "selfpay_prop": envelope::number(&l.first_selfpay_ratio),
                "chrgitm_lv": lv,
                "hilist_code": l.item_code,
                "hilist_name": l.item_name,
                "med_list_codg": l.item_code,
            })
        })
        .collect();
    Ok((json!({ "data": lines }), None))
}
