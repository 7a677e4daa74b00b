//! How `yidi hospital` prints the node's answers: a [`Record`] per message (table
//! columns and JSON keys) and the clerk-facing layouts of identity, fees, settlement,
//! reversal and reconciliation.

use crate::i18n::Lang;
use comfy_table::{Cell, CellAlignment};
use rust_i18n::t;
use serde_json::{Map, Value, json};
use yidi_common::{
    money::{self, Sign},
    proto,
    types::{CatalogueClass, FilingType, InsuranceType, PersonStatus, PersonType, VisitKind},
};

use crate::cli::output::{self, Field, Record, name as enum_name, num, print_rows, text};

// ---------------------------------------------------------------- printing

fn count(n: impl TryInto<u64>) -> Field {
    Field::Int(n.try_into().unwrap_or_default())
}

/// A record's JSON object with one more key.
fn with(record: &impl Record, key: &str, value: Value) -> Value {
    let mut v = output::to_json(record);
    if let Value::Object(map) = &mut v {
        map.insert(key.to_owned(), value);
    }
    v
}

impl Record for proto::Visit {
    const PLURAL: &'static str = "visits";
    const LIST_COLUMNS: &'static [&'static str] = &[
        "visit_id",
        "external_visit_no",
        "id_number",
        "visit_kind",
        "state",
    ];
    fn fields(&self) -> Vec<(&'static str, Field)> {
        vec![
            ("visit_id", text(&self.visit_id)),
            ("state", text(&self.state)),
            ("institution_code", text(&self.institution_code)),
            ("external_visit_no", text(&self.external_visit_no)),
            ("diagnosis_code", text(&self.diagnosis_code)),
            ("id_number", text(&self.id_number)),
            ("home_region", text(&self.home_region)),
            (
                "visit_kind",
                enum_name(VisitKind::from_proto(self.visit_kind, "")),
            ),
            ("opened_at", text(&self.opened_at)),
            ("closed_at", text(&self.closed_at)),
        ]
    }
}

impl Record for proto::IdentifyResponse {
    const PLURAL: &'static str = "persons";
    const LIST_COLUMNS: &'static [&'static str] = &["id_number", "name", "home_region", "eligible"];
    fn fields(&self) -> Vec<(&'static str, Field)> {
        vec![
            ("id_number", text(&self.id_number)),
            ("name", text(&self.name)),
            ("home_region", text(&self.home_region)),
            (
                "insurance_type",
                enum_name(InsuranceType::from_proto(self.insurance_type, "")),
            ),
            (
                "person_type",
                enum_name(PersonType::from_proto(self.person_type, "")),
            ),
            (
                "status",
                enum_name(PersonStatus::from_proto(self.status, "")),
            ),
            ("eligible", Field::Bool(self.eligible)),
            ("ineligible_reason", text(&self.ineligible_reason)),
            ("filing_id", text(&self.filing_id)),
            (
                "filing_type",
                enum_name(FilingType::from_proto(self.filing_type, "")),
            ),
            ("account_balance", num(&self.account_balance)),
        ]
    }
}

impl Record for proto::Accumulators {
    const PLURAL: &'static str = "accumulators";
    const LIST_COLUMNS: &'static [&'static str] = &["year", "version", "pool_paid"];
    fn fields(&self) -> Vec<(&'static str, Field)> {
        vec![
            ("year", count(self.year)),
            ("version", count(self.version)),
            ("pool_paid", num(&self.pool_paid)),
            ("outpatient_pool_paid", num(&self.outpatient_pool_paid)),
            ("chronic_pool_paid", num(&self.chronic_pool_paid)),
            ("serious_illness_paid", num(&self.serious_illness_paid)),
            (
                "outpatient_deductible_paid",
                num(&self.outpatient_deductible_paid),
            ),
            ("admissions", count(self.admissions)),
            ("inscope_total", num(&self.inscope_total)),
        ]
    }
}

pub(super) fn print_identity(r: &proto::IdentifyResponse, as_json: bool) {
    if as_json {
        let acc = r.accumulators.as_ref().map_or(Value::Null, output::to_json);
        return output::print_json(&with(r, "accumulators", acc));
    }
    output::print_one(r, false);
    if let Some(acc) = &r.accumulators {
        println!("accumulators (year to date at the home node):");
        output::print_one(acc, false);
    }
}

impl Record for proto::ClassifiedLine {
    const PLURAL: &'static str = "lines";
    const LIST_COLUMNS: &'static [&'static str] = &[
        "line_no",
        "item_code",
        "item_name",
        "class",
        "first_selfpay_ratio",
        "price_cap",
        "quantity",
        "unit_price",
        "amount",
        "service_date",
    ];
    fn fields(&self) -> Vec<(&'static str, Field)> {
        let l = self.line.clone().unwrap_or_default();
        vec![
            ("line_no", Field::Text(l.line_no)),
            ("item_code", Field::Text(l.item_code)),
            ("item_name", text(&self.item_name)),
            // Upper-case, as catalogues print the class (甲/乙/丙 = A/B/C).
            (
                "class",
                Field::Text(
                    CatalogueClass::from_proto(self.class, "")
                        .map(|c| c.as_str().to_ascii_uppercase())
                        .unwrap_or_default(),
                ),
            ),
            ("first_selfpay_ratio", num(&self.first_selfpay_ratio)),
            ("price_cap", num(&self.price_cap)),
            ("quantity", Field::Num(l.quantity)),
            ("unit_price", Field::Num(l.unit_price)),
            ("amount", Field::Num(l.amount)),
            ("service_date", Field::Text(l.service_date)),
        ]
    }
}

/// The visit's fee lines after an upload or undo: `{"lines": [...], "total": "…"}`.
pub(super) fn print_fees(r: &proto::UploadFeesResponse, as_json: bool) {
    if as_json {
        return output::print_json(&json!({
            "lines": r.lines.iter().map(output::to_json).collect::<Vec<_>>(),
            "total": r.total,
        }));
    }
    print_rows(&r.lines, false);
    println!("total: {}", r.total);
}

type SplitAmount = fn(&proto::Split) -> &str;

/// The amounts of a split in NHSA `setlinfo` order, with the labels clerks know.
const SPLIT_ROWS: [(&str, &str, SplitAmount); 16] = [
    ("medfee_sumamt", "医疗费总额", |s| &s.medfee_sumamt),
    ("fulamt_ownpay_amt", "全自费金额", |s| {
        &s.fulamt_ownpay_amt
    }),
    ("overlmt_selfpay", "超限价自费", |s| &s.overlmt_selfpay),
    ("preselfpay_amt", "先行自付", |s| &s.preselfpay_amt),
    ("inscp_scp_amt", "符合范围金额", |s| &s.inscp_scp_amt),
    ("act_pay_dedc", "起付线", |s| &s.act_pay_dedc),
    ("hifp_pay", "统筹基金支付", |s| &s.hifp_pay),
    ("hifmi_pay", "大病保险", |s| &s.hifmi_pay),
    ("hifob_pay", "大额补助", |s| &s.hifob_pay),
    ("cvlserv_pay", "公务员医疗补助", |s| &s.cvlserv_pay),
    ("maf_pay", "医疗救助", |s| &s.maf_pay),
    ("fund_pay_sumamt", "基金支付总额", |s| {
        &s.fund_pay_sumamt
    }),
    ("hosp_part_amt", "医院负担", |s| &s.hosp_part_amt),
    ("psn_part_amt", "个人负担", |s| &s.psn_part_amt),
    ("acct_pay", "个人账户支付", |s| &s.acct_pay),
    ("psn_cash_pay", "现金支付", |s| &s.psn_cash_pay),
];

/// The Chinese name of a fund code of `FundPayment.fund`.
fn fund_label(fund: &str) -> &'static str {
    match fund {
        "hifp" => "统筹基金",
        "hifmi" => "大病保险",
        "hifob" => "大额补助",
        "cvlserv" => "公务员医疗补助",
        "maf" => "医疗救助",
        "acct" => "个人账户",
        _ => "",
    }
}

impl Record for proto::FundPayment {
    const PLURAL: &'static str = "funds";
    const LIST_COLUMNS: &'static [&'static str] = &["fund", "label", "amount", "description"];
    fn fields(&self) -> Vec<(&'static str, Field)> {
        vec![
            ("fund", text(&self.fund)),
            ("label", text(fund_label(&self.fund))),
            ("amount", num(&self.amount)),
            ("description", text(&self.description)),
        ]
    }
}

impl Record for proto::LineSplit {
    const PLURAL: &'static str = "lines";
    const LIST_COLUMNS: &'static [&'static str] = &[
        "line_no",
        "amount",
        "fulamt_ownpay_amt",
        "overlmt_selfpay",
        "preselfpay_amt",
        "inscp_scp_amt",
        "reason",
    ];
    fn fields(&self) -> Vec<(&'static str, Field)> {
        vec![
            ("line_no", text(&self.line_no)),
            ("amount", num(&self.amount)),
            ("fulamt_ownpay_amt", num(&self.fulamt_ownpay_amt)),
            ("overlmt_selfpay", num(&self.overlmt_selfpay)),
            ("preselfpay_amt", num(&self.preselfpay_amt)),
            ("inscp_scp_amt", num(&self.inscp_scp_amt)),
            ("reason", text(&self.reason)),
        ]
    }
}

/// The split as JSON: the `setlinfo` amounts by their NHSA names, then the ratio, the
/// filing type applied, funds, per-line split and trace.
fn split_json(s: &proto::Split) -> Value {
    let mut m: Map<String, Value> = SPLIT_ROWS
        .iter()
        .map(|(name, _, get)| ((*name).to_owned(), json!(get(s))))
        .collect();
    m.insert("pool_ratio".into(), json!(s.pool_ratio));
    let filing = FilingType::from_proto(s.applied_filing_type, "").map(|f| f.to_string());
    m.insert(
        "applied_filing_type".into(),
        json!(filing.unwrap_or_default()),
    );
    m.insert(
        "funds".into(),
        s.funds.iter().map(output::to_json).collect(),
    );
    m.insert(
        "lines".into(),
        s.lines.iter().map(output::to_json).collect(),
    );
    m.insert("trace".into(), json!(s.trace));
    Value::Object(m)
}

impl Record for proto::Settlement {
    const PLURAL: &'static str = "settlements";
    const LIST_COLUMNS: &'static [&'static str] = &["settlement_id", "state", "visit_id"];
    fn fields(&self) -> Vec<(&'static str, Field)> {
        vec![
            ("settlement_id", text(&self.settlement_id)),
            ("state", text(&self.state)),
            ("visit_id", text(&self.visit_id)),
            ("institution_code", text(&self.institution_code)),
            ("id_number", text(&self.id_number)),
            ("home_region", text(&self.home_region)),
            ("treatment_region", text(&self.treatment_region)),
            (
                "visit_kind",
                enum_name(VisitKind::from_proto(self.visit_kind, "")),
            ),
            ("settled_at", text(&self.settled_at)),
            ("period", text(&self.period)),
            ("policy_version", count(self.policy_version)),
            ("reverses", text(&self.reverses)),
            ("note", text(&self.note)),
            ("cross_province", Field::Bool(self.cross_province)),
        ]
    }
}

/// A settlement as JSON: its fields with the split nested under `split`.
pub(super) fn settlement_json(s: &proto::Settlement) -> Value {
    with(s, "split", s.split.as_ref().map_or(Value::Null, split_json))
}

pub(super) fn print_settlement(s: &proto::Settlement, as_json: bool, lang: Lang) {
    if as_json {
        return output::print_json(&settlement_json(s));
    }
    output::print_one(s, false);
    let Some(split) = &s.split else { return };
    let filing = FilingType::from_proto(split.applied_filing_type, "");
    let filing = match lang {
        Lang::En => filing.map_or_else(|_| "-".to_owned(), |f| f.to_string()),
        Lang::Zh => filing.map_or("本地就医", FilingType::zh_name).to_owned(),
    };
    println!(
        "{}",
        t!(
            "hospital.split_header",
            locale = lang.code(),
            ratio = split.pool_ratio,
            filing = filing
        )
    );
    let mut t = output::table();
    t.set_header([
        lang.label("hospital.field"),
        "项目",
        lang.label("hospital.amount"),
    ]);
    for (name, label, get) in SPLIT_ROWS {
        // Hospitals rarely bear a share; the row only appears when one does.
        let amount = get(split);
        if name == "hosp_part_amt"
            && money::parse(amount, name, Sign::Any).is_ok_and(|v| v.is_zero())
        {
            continue;
        }
        t.add_row(vec![
            Cell::new(name),
            Cell::new(label),
            Cell::new(amount).set_alignment(CellAlignment::Right),
        ]);
    }
    println!("{t}");
    if !split.funds.is_empty() {
        print_rows(&split.funds, false);
    }
    if !split.lines.is_empty() {
        print_rows(&split.lines, false);
    }
    if !split.trace.is_empty() {
        println!("{}", lang.label("hospital.trace"));
        for (i, step) in split.trace.iter().enumerate() {
            println!("  {}. {step}", i + 1);
        }
    }
}

/// A settlement as one row of a list table.
#[derive(Clone)]
pub(super) struct SettlementRow(pub(super) proto::Settlement);

impl Record for SettlementRow {
    const PLURAL: &'static str = "settlements";
    const LIST_COLUMNS: &'static [&'static str] = &[
        "settlement_id",
        "state",
        "visit_id",
        "id_number",
        "home_region",
        "settled_at",
        "medfee_sumamt",
        "fund_pay_sumamt",
        "acct_pay",
        "psn_cash_pay",
    ];
    fn fields(&self) -> Vec<(&'static str, Field)> {
        let split = self.0.split.clone().unwrap_or_default();
        let mut f = self.0.fields();
        f.extend(
            SPLIT_ROWS
                .iter()
                .map(|(name, _, get)| (*name, num(get(&split)))),
        );
        f
    }
}

pub(super) fn print_reversal(r: &proto::ReverseRequestResponse, as_json: bool, lang: Lang) {
    if as_json {
        let reversal = r.reversal.as_ref().map_or(Value::Null, settlement_json);
        return output::print_json(&json!({ "outcome": r.outcome, "reversal": reversal }));
    }
    let meaning = match r.outcome.as_str() {
        "reversed" => "the settlement it made is reversed",
        "already_reversed" => "it had already been reversed",
        "not_found" => "it never took effect, and now never will",
        _ => "",
    };
    println!("outcome: {} — {meaning}", r.outcome);
    if let Some(s) = &r.reversal {
        print_settlement(s, false, lang);
    }
}

impl Record for proto::ReconcileTotalsResponse {
    const PLURAL: &'static str = "totals";
    const LIST_COLUMNS: &'static [&'static str] = &["matches", "count"];
    fn fields(&self) -> Vec<(&'static str, Field)> {
        vec![
            ("matches", Field::Bool(self.matches)),
            ("count", Field::Int(self.count)),
            ("medfee_sumamt", num(&self.medfee_sumamt)),
            ("fund_pay_sumamt", num(&self.fund_pay_sumamt)),
            ("acct_pay", num(&self.acct_pay)),
        ]
    }
}

/// The node's totals, or side by side with the institution's.
pub(super) fn print_totals(
    theirs: &proto::ReconcileTotalsRequest,
    ours: &proto::ReconcileTotalsResponse,
    as_json: bool,
) {
    if as_json {
        return output::print_json(&output::to_json(ours));
    }
    let same = |a: &str, b: &str| {
        let p = |s: &str| money::parse(s, "amount", Sign::Any).ok();
        p(a).is_some() && p(a) == p(b)
    };
    let rows = [
        ("count", theirs.count.to_string(), ours.count.to_string()),
        (
            "medfee_sumamt",
            theirs.medfee_sumamt.clone(),
            ours.medfee_sumamt.clone(),
        ),
        (
            "fund_pay_sumamt",
            theirs.fund_pay_sumamt.clone(),
            ours.fund_pay_sumamt.clone(),
        ),
        ("acct_pay", theirs.acct_pay.clone(), ours.acct_pay.clone()),
    ];
    let mut t = output::table();
    t.set_header(["total", "institution", "node", "agrees"]);
    for (name, inst, node) in rows {
        let agrees = if name == "count" {
            inst == node
        } else {
            same(&inst, &node)
        };
        t.add_row(vec![
            Cell::new(name),
            Cell::new(inst).set_alignment(CellAlignment::Right),
            Cell::new(node).set_alignment(CellAlignment::Right),
            Cell::new(if agrees { "yes" } else { "NO" }),
        ]);
    }
    println!("{t}");
    println!(
        "{} {} … {}",
        if ours.matches {
            "reconciled:"
        } else {
            "differences:"
        },
        theirs.from_date,
        theirs.to_date
    );
    if !ours.matches {
        println!(
            "run `yidi hospital reconcile-detail` with the institution's settlement list to find them"
        );
    }
}

impl Record for proto::ReconcileDifference {
    const PLURAL: &'static str = "differences";
    const LIST_COLUMNS: &'static [&'static str] = &[
        "settlement_id",
        "kind",
        "node_medfee_sumamt",
        "node_fund_pay_sumamt",
        "institution_medfee_sumamt",
        "institution_fund_pay_sumamt",
    ];
    fn fields(&self) -> Vec<(&'static str, Field)> {
        let node = self.node.clone().unwrap_or_default();
        let inst = self.institution.clone().unwrap_or_default();
        vec![
            ("settlement_id", text(&self.settlement_id)),
            ("kind", text(&self.kind)),
            ("node_medfee_sumamt", Field::Num(node.medfee_sumamt)),
            ("node_fund_pay_sumamt", Field::Num(node.fund_pay_sumamt)),
            ("institution_medfee_sumamt", Field::Num(inst.medfee_sumamt)),
            (
                "institution_fund_pay_sumamt",
                Field::Num(inst.fund_pay_sumamt),
            ),
        ]
    }
}

pub(super) fn print_differences(diffs: &[proto::ReconcileDifference], as_json: bool) {
    if as_json {
        return output::print_json(&json!({
            "differences": diffs.iter().map(output::to_json).collect::<Vec<_>>(),
        }));
    }
    if diffs.is_empty() {
        println!("no differences: every settlement agrees");
    } else {
        print_rows(diffs, false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settlement_json_nests_the_split_with_nhsa_names() {
        let s = proto::Settlement {
            settlement_id: "330200-S-0000000001".into(),
            visit_kind: VisitKind::Inpatient.to_proto(),
            split: Some(proto::Split {
                medfee_sumamt: "12500.00".into(),
                funds: vec![proto::FundPayment {
                    fund: "hifp".into(),
                    amount: "9680.00".into(),
                    description: "pooled fund 88%".into(),
                }],
                applied_filing_type: FilingType::ResettledRetiree.to_proto(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let v = settlement_json(&s);
        assert_eq!(v["visit_kind"], "inpatient");
        assert_eq!(v["split"]["medfee_sumamt"], "12500.00");
        assert_eq!(v["split"]["applied_filing_type"], "resettled_retiree");
        assert_eq!(v["split"]["funds"][0]["label"], "统筹基金");
        assert_eq!(v["split"]["lines"], json!([]));
    }

    #[test]
    fn every_list_column_is_a_field() {
        fn check<R: Record + Default>() {
            let names: Vec<_> = R::default().fields().into_iter().map(|(k, _)| k).collect();
            for col in R::LIST_COLUMNS {
                assert!(names.contains(col), "{}: {col}", R::PLURAL);
            }
        }
        check::<proto::Visit>();
        check::<proto::IdentifyResponse>();
        check::<proto::Accumulators>();
        check::<proto::ClassifiedLine>();
        check::<proto::FundPayment>();
        check::<proto::LineSplit>();
        check::<proto::Settlement>();
        check::<proto::ReconcileTotalsResponse>();
        check::<proto::ReconcileDifference>();
        let row = SettlementRow(proto::Settlement::default());
        let names: Vec<_> = row.fields().into_iter().map(|(k, _)| k).collect();
        for col in SettlementRow::LIST_COLUMNS {
            assert!(names.contains(col), "settlement row: {col}");
        }
    }
}
