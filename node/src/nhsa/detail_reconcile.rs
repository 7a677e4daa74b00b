//! 3202 detail reconciliation (医药机构费用结算对明细账), sheet §6.20: the HIS uploads
//! its settlements of a period as a zipped text file (9101), names it by `file_qury_no`
//! with the period's totals, and gets back a result file to download (9102) listing
//! every settlement on which the node and the HIS differ.
//!
//! The comparison is the domain's (`treatment::reconcile_detail_entries`, the one behind
//! HospitalService.ReconcileDetail); this module reads the file and writes the result.

use rust_decimal::Decimal;
use serde_json::json;

use super::{
    envelope::{Envelope, NResult, NhsaError, object},
    files::{self, yuan},
    transactions::{Answer, date, refusal},
};
use crate::{
    context::NodeState,
    limits,
    settlement::treatment::{self, DetailDifference, DetailEntry, DetailKind},
    store::states::{NhsaFileKind, SettlementState},
};

/// The result file's name inside the zip ([OH] `ReadToFile`).
pub const RESULT_TEXT: &str = "result.txt";

/// The columns of a detail line, in order (sheet §6.20, from [MD]'s comment).
const COLUMNS: [&str; 7] = [
    "setl_id",
    "mdtrt_id",
    "psn_no",
    "medfee_sumamt",
    "fund_pay_sumamt",
    "acct_pay",
    "refd_setl_flag",
];

/// One line of the HIS's detail file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DetailLine {
    pub setl_id: String,
    pub mdtrt_id: String,
    pub psn_no: String,
    pub medfee_fen: i64,
    pub fund_fen: i64,
    pub acct_fen: i64,
    pub refd_setl_flag: String,
}

/// The lines of a detail file: TAB-separated (space-separated is accepted too, as one
/// [OH] writer does), no header (a first line naming `setl_id` is skipped), blank
/// lines ignored. `Err` says which line and column is wrong.
pub fn parse_detail(text: &str) -> Result<Vec<DetailLine>, String> {
    let mut out: Vec<DetailLine> = Vec::new();
    let mut seen = std::collections::HashMap::new();
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let line = raw.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let cols: Vec<&str> = if line.contains('\t') {
            line.split('\t').map(str::trim).collect()
        } else {
            line.split_whitespace().collect()
        };
        if out.is_empty() && seen.is_empty() && cols.first() == Some(&"setl_id") {
            continue;
        }
        if !(6..=7).contains(&cols.len()) {
            return Err(format!(
                "line {n} has {} columns; expected {} ({}), TAB-separated",
                cols.len(),
                COLUMNS.len(),
                COLUMNS.join(", ")
            ));
        }
        for (c, name) in cols.iter().zip(COLUMNS).take(3) {
            if c.is_empty() || c.chars().count() > 30 {
                return Err(format!(
                    "line {n} column {name} {c:?} must be 1–30 characters"
                ));
            }
        }
        let fen = |c: usize| -> Result<i64, String> {
            let t = cols[c];
            super::envelope::decimal(t)
                .map(|d| d.normalize())
                .filter(|d| d.scale() <= 2)
                .map(yidi_common::money::to_fen)
                .ok_or_else(|| {
                    format!(
                        "line {n} column {} {t:?} is not an amount in yuan with at most two decimals",
                        COLUMNS[c]
                    )
                })
        };
        let refd = cols.get(6).copied().unwrap_or("0");
        if !matches!(refd, "0" | "1") {
            return Err(format!(
                "line {n} column refd_setl_flag {refd:?} must be 0 (settlement) or 1 (refund)"
            ));
        }
        if let Some(first) = seen.insert(cols[0].to_owned(), n) {
            return Err(format!(
                "line {n} lists setl_id {} again (first on line {first})",
                cols[0]
            ));
        }
        if out.len() == limits::RECONCILE_ENTRIES {
            return Err(format!(
                "has more than {} lines; split the period",
                limits::RECONCILE_ENTRIES
            ));
        }
        out.push(DetailLine {
            setl_id: cols[0].to_owned(),
            mdtrt_id: cols[1].to_owned(),
            psn_no: cols[2].to_owned(),
            medfee_fen: fen(3)?,
            fund_fen: fen(4)?,
            acct_fen: fen(5)?,
            refd_setl_flag: refd.to_owned(),
        });
    }
    Ok(out)
}

/// Count and totals of the file's lines (medical fees, fund).
fn file_totals(lines: &[DetailLine]) -> (u64, i64, i64) {
    (
        lines.len() as u64,
        lines.iter().map(|l| l.medfee_fen).sum(),
        lines.iter().map(|l| l.fund_fen).sum(),
    )
}

/// The text of `result.txt`: one TAB-separated line per difference, columns `psn_no`,
/// `mdtrt_id`, `setl_id`, `msgid`, `stmt_rslt`, `refd_setl_flag`, `memo`,
/// `medfee_sumamt`, `fund_pay_sumamt`, `acct_pay` ([OH] `ReadToFile`). The amounts
/// are the node's where it has the settlement (the memo gives the HIS's), and `msgid`
/// is the message that settled it, for a reversal (2601).
fn result_text(diffs: &[DetailDifference], lines: &[DetailLine]) -> String {
    let mut out = String::new();
    for d in diffs {
        let his = d.institution.map(|i| &lines[i]);
        let (psn, mdtrt, msgid, refd, amounts, memo) = match (&d.node, his) {
            (Some(r), his) => {
                let refd = if r.state == SettlementState::Reversal {
                    "1"
                } else {
                    "0"
                };
                let memo = match (d.kind, his) {
                    (DetailKind::AmountDiffers, Some(h)) => format!(
                        "金额不一致，医药机构为 医疗费总额 {} 基金支付 {} 个人账户 {} / amount_differs: the institution has medfee_sumamt {} fund_pay_sumamt {} acct_pay {}",
                        yuan(h.medfee_fen),
                        yuan(h.fund_fen),
                        yuan(h.acct_fen),
                        yuan(h.medfee_fen),
                        yuan(h.fund_fen),
                        yuan(h.acct_fen)
                    ),
                    _ => "医药机构无此结算 / missing_at_institution: settled at the node, not in the uploaded file".to_owned(),
                };
                (
                    r.id_number.as_str(),
                    r.visit_id.as_str(),
                    r.request_id.as_str(),
                    refd,
                    (r.medfee_fen, r.fund_fen, r.acct_fen),
                    memo,
                )
            }
            (None, Some(h)) => (
                h.psn_no.as_str(),
                h.mdtrt_id.as_str(),
                "",
                h.refd_setl_flag.as_str(),
                (h.medfee_fen, h.fund_fen, h.acct_fen),
                "经办机构无此结算 / missing_at_node: the node has no such settlement of this institution in the period".to_owned(),
            ),
            (None, None) => continue,
        };
        let cols = [
            psn,
            mdtrt,
            &d.settlement_id,
            msgid,
            "1",
            refd,
            &memo,
            &yuan(amounts.0),
            &yuan(amounts.1),
            &yuan(amounts.2),
        ];
        out.push_str(&cols.join("\t"));
        out.push('\n');
    }
    out
}

/// A declared total that is not the file's refuses the request, naming the field.
fn check_declared(node: &super::envelope::Node<'_>, lines: &[DetailLine], no: &str) -> NResult<()> {
    let (count, medfee, fund) = file_totals(lines);
    let cnt = node.dec("fixmedins_setl_cnt")?;
    if cnt != Decimal::from(count) {
        return Err(NhsaError::field(
            "input.data.fixmedins_setl_cnt",
            format!("与文件 {no} 的 {count} 行不一致"),
            format!(
                "input.data.fixmedins_setl_cnt {} differs from the {count} lines of file {no}",
                cnt.normalize()
            ),
        ));
    }
    for (f, fen) in [("medfee_sumamt", medfee), ("fund_pay_sumamt", fund)] {
        let declared = node.dec(f)?;
        if declared != yidi_common::money::from_fen(fen) {
            let path = format!("input.data.{f}");
            return Err(NhsaError::field(
                &path,
                format!("与文件 {no} 各行合计 {} 不一致", yuan(fen)),
                format!(
                    "{path} {} differs from the total {} of the lines of file {no}",
                    declared.normalize(),
                    yuan(fen)
                ),
            ));
        }
    }
    Ok(())
}

/// 3202.
pub async fn reconcile_detail(st: &NodeState, env: &Envelope) -> NResult<Answer> {
    let node = object(&env.input, "data", "input.data")?;
    let optins = node.str("setl_optins")?;
    let no = node.str("file_qury_no")?;
    let from = date(&node, "stmt_begndate")?;
    let to = date(&node, "stmt_enddate")?;
    // Required by the sheet; the file has no cash column to check it against.
    node.dec("cash_payamt")?;
    let path = "input.data.file_qury_no";
    let file = files::file_of(st, &env.fixmedins_code, &no, path).await?;
    if file.kind != NhsaFileKind::Upload {
        return Err(NhsaError::field(
            path,
            format!("文件 {no} 是对账结果，不是上传的明细文件"),
            format!("{path} {no} is a 3202 result; name the detail file uploaded with 9101"),
        ));
    }
    let lines = files::unzip_text(&file.content)
        .and_then(|t| parse_detail(&t.text))
        .map_err(|why| NhsaError::field(path, "明细文件内容有误", format!("{path} {no}: {why}")))?;
    check_declared(&node, &lines, &no)?;
    let entries: Vec<DetailEntry> = lines
        .iter()
        .map(|l| DetailEntry {
            settlement_id: l.setl_id.clone(),
            medfee_fen: l.medfee_fen,
            fund_fen: l.fund_fen,
            acct_fen: Some(l.acct_fen),
        })
        .collect();
    let diffs = treatment::reconcile_detail_entries(
        st,
        &env.fixmedins_code,
        &from,
        &to,
        &entries,
        "file lines",
    )
    .await
    .map_err(refusal)?;
    let count = |k: DetailKind| diffs.iter().filter(|d| d.kind == k).count();
    let (differs, at_node, at_his) = (
        count(DetailKind::AmountDiffers),
        count(DetailKind::MissingAtNode),
        count(DetailKind::MissingAtInstitution),
    );
    let balanced = diffs.is_empty();
    let dscr = if balanced {
        format!(
            "对账一致（{} 笔）/ balanced: {} settlements agree",
            lines.len(),
            lines.len()
        )
    } else {
        format!(
            "对账不一致：金额不一致 {differs} 笔，经办机构无 {at_node} 笔，医药机构无 {at_his} 笔，明细见结果文件 / unbalanced: {differs} amount_differs, {at_node} missing_at_node, {at_his} missing_at_institution; download the result file with 9102"
        )
    };
    let zip = files::zip_text(RESULT_TEXT, &result_text(&diffs, &lines))
        .map_err(|e| NhsaError::general("系统内部错误", format!("internal error: {e}")))?;
    let key = files::request_key(
        env,
        "NhsaReconcileDetail",
        &[serde_json::Value::Object(env.input.clone())
            .to_string()
            .as_bytes()],
    )?;
    let filename = format!("{no}-result.zip");
    let n = lines.len();
    let out = files::store_once(
        st,
        key,
        &env.fixmedins_code,
        NhsaFileKind::Result,
        filename,
        zip,
        move |rno, name, end| {
            json!({
                "fileinfo": {"file_qury_no": rno, "filename": name, "dld_endtime": end},
                "stmtinfo": {
                    "setl_optins": optins,
                    "stmt_rslt": if balanced { "0" } else { "1" },
                    "stmt_rslt_dscr": dscr,
                    "fixmedins_setl_cnt": n,
                    "amount_differs": differs,
                    "missing_at_node": at_node,
                    "missing_at_institution": at_his,
                },
            })
        },
    )
    .await?;
    Ok((out, None))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detail_lines_are_read_by_column_and_errors_name_line_and_column() {
        let lines = parse_detail(
            "setl_id\tmdtrt_id\tpsn_no\tmedfee_sumamt\tfund_pay_sumamt\tacct_pay\trefd_setl_flag\n\
             S1\tV1\tP1\t68\t40.5\t0.00\t0\r\n\n\
             S2 V2 P2 -68.00 -40.50 0 1\n",
        )
        .expect("parse");
        assert_eq!(
            lines
                .iter()
                .map(|l| (
                    l.setl_id.as_str(),
                    l.medfee_fen,
                    l.fund_fen,
                    l.refd_setl_flag.as_str()
                ))
                .collect::<Vec<_>>(),
            [("S1", 6800, 4050, "0"), ("S2", -6800, -4050, "1")]
        );
        assert_eq!(file_totals(&lines), (2, 0, 0));
        let e = parse_detail("S1\tV1\tP1\t68.001\t0\t0\t0\n").unwrap_err();
        assert!(e.contains("line 1 column medfee_sumamt \"68.001\""), "{e}");
        let e = parse_detail("S1\tV1\tP1\t68\t0\t0\t0\nS1\tV2\tP1\t1\t0\t0\t0\n").unwrap_err();
        assert!(
            e.contains("line 2 lists setl_id S1 again (first on line 1)"),
            "{e}"
        );
        let e = parse_detail("S1,V1,P1,68,0,0,0\n").unwrap_err();
        assert!(e.contains("line 1 has 1 columns"), "{e}");
    }
}
