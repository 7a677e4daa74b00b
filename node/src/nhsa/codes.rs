//! The NHSA code tables the gateway translates, both ways, in one table ([`CODES`]),
//! and the Chinese names of the NHSA fields its error messages name ([`FIELDS`]).
//! docs/nhsa-gateway.md prints the same table; a code the reference sheet marks
//! unverified is `verified: false` here and says so there.

use yidi_common::proto;

/// Which NHSA dictionary a code belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dict {
    /// 医疗类别 ↔ `VisitKind`.
    MedType,
    /// 险种类型 ↔ `InsuranceType`.
    Insutype,
    /// 人员类别 ↔ `PersonType`.
    PsnType,
    /// 就诊凭证类型: how 1101 identifies the person.
    MdtrtCertType,
    /// 收费项目等级 ↔ `CatalogueClass`.
    ChrgitmLv,
    /// 基金支付类型 ↔ a split's fund (`hifp`, `acct`, …), per insurance type.
    FundPayType,
    /// 清算类别 ↔ `VisitKind`.
    ClrType,
}

/// One row: NHSA `code` ↔ yidi `value`. `primary` marks the code answered for `value`
/// when several codes read to it.
#[derive(Debug, Clone, Copy)]
pub struct Code {
    pub dict: Dict,
    pub code: &'static str,
    /// The yidi value: a proto enum number, or a fund name for `FundPayType` (with the
    /// insurance type after a `/`: `hifp/1` is the employee pooled fund).
    pub value: &'static str,
    pub primary: bool,
    pub zh: &'static str,
    pub en: &'static str,
    /// False where the reference sheet found the code in no source.
    pub verified: bool,
}

const fn c(
    dict: Dict,
    code: &'static str,
    value: &'static str,
    primary: bool,
    zh: &'static str,
    en: &'static str,
    verified: bool,
) -> Code {
    Code {
        dict,
        code,
        value,
        primary,
        zh,
        en,
        verified,
    }
}

use Dict::*;

/// Every code the gateway reads or answers.
pub const CODES: &[Code] = &[
    c(
        MedType,
        "11",
        "1",
        true,
        "普通门诊",
        "ordinary outpatient",
        true,
    ),
    c(
        MedType,
        "12",
        "1",
        false,
        "门诊挂号",
        "outpatient registration",
        true,
    ),
    c(MedType, "13", "5", true, "急诊", "emergency", true),
    c(
        MedType,
        "14",
        "3",
        true,
        "门诊慢特病",
        "chronic/special-disease outpatient",
        true,
    ),
    c(
        MedType,
        "21",
        "4",
        true,
        "普通住院",
        "ordinary inpatient",
        true,
    ),
    c(
        MedType,
        "41",
        "2",
        true,
        "定点药店购药",
        "pharmacy purchase",
        false,
    ),
    c(
        Insutype,
        "310",
        "1",
        true,
        "职工基本医疗保险",
        "employee basic medical insurance",
        true,
    ),
    c(
        Insutype,
        "390",
        "2",
        true,
        "城乡居民基本医疗保险",
        "urban-rural residents' basic medical insurance",
        true,
    ),
    c(
        PsnType,
        "1101",
        "1",
        true,
        "在职",
        "employee in service",
        true,
    ),
    c(
        PsnType,
        "11",
        "1",
        false,
        "在职",
        "employee in service (2-digit)",
        true,
    ),
    c(PsnType, "1201", "2", true, "退休", "employee retired", true),
    c(
        PsnType,
        "12",
        "2",
        false,
        "退休",
        "employee retired (2-digit)",
        true,
    ),
    c(
        PsnType,
        "1501",
        "3",
        true,
        "普通成年居民",
        "ordinary adult resident",
        true,
    ),
    c(
        PsnType,
        "15",
        "3",
        false,
        "成年居民",
        "adult resident (2-digit)",
        true,
    ),
    c(
        PsnType,
        "1403",
        "4",
        true,
        "中小学生",
        "primary/secondary pupil",
        true,
    ),
    c(PsnType, "1401", "4", false, "新生儿", "newborn", true),
    c(
        PsnType,
        "1402",
        "4",
        false,
        "学龄前儿童",
        "pre-school child",
        true,
    ),
    c(
        PsnType,
        "1404",
        "4",
        false,
        "大学生",
        "university student",
        true,
    ),
    c(
        PsnType,
        "1405",
        "4",
        false,
        "非在校未成年人",
        "minor not in school",
        true,
    ),
    c(
        PsnType,
        "14",
        "4",
        false,
        "未成年居民",
        "resident minor (2-digit)",
        true,
    ),
    c(
        PsnType,
        "16",
        "5",
        true,
        "老年居民",
        "elderly resident (2-digit)",
        true,
    ),
    c(
        MdtrtCertType,
        "02",
        "id_number",
        true,
        "居民身份证",
        "resident ID number",
        true,
    ),
    c(
        MdtrtCertType,
        "03",
        "card",
        true,
        "社会保障卡",
        "social-security card",
        true,
    ),
    c(ChrgitmLv, "01", "1", true, "甲类", "category A", true),
    c(ChrgitmLv, "02", "2", true, "乙类", "category B", true),
    c(
        ChrgitmLv,
        "03",
        "3",
        true,
        "丙类",
        "category C (self-paid)",
        true,
    ),
    c(
        FundPayType,
        "310100",
        "hifp/1",
        true,
        "职工基本医疗保险统筹基金",
        "employee pooled fund",
        true,
    ),
    c(
        FundPayType,
        "310200",
        "acct/1",
        true,
        "职工基本医疗保险个人账户基金",
        "employee personal account",
        true,
    ),
    c(
        FundPayType,
        "330100",
        "hifob/1",
        true,
        "职工大额医疗费用补助基金",
        "employee large-amount subsidy",
        true,
    ),
    c(
        FundPayType,
        "320100",
        "cvlserv/1",
        true,
        "公务员医疗补助基金",
        "civil-servant medical subsidy",
        true,
    ),
    c(
        FundPayType,
        "610100",
        "maf/1",
        true,
        "医疗救助基金",
        "medical assistance fund",
        true,
    ),
    c(
        FundPayType,
        "390100",
        "hifp/2",
        true,
        "城乡居民基本医疗保险基金",
        "residents' pooled fund",
        true,
    ),
    c(
        FundPayType,
        "390200",
        "hifmi/2",
        true,
        "城乡居民大病医疗保险基金",
        "residents' serious-illness insurance",
        true,
    ),
    c(
        FundPayType,
        "610100",
        "maf/2",
        true,
        "医疗救助基金",
        "medical assistance fund",
        true,
    ),
    c(
        FundPayType,
        "310200",
        "acct/2",
        true,
        "个人账户",
        "personal account",
        true,
    ),
    c(
        FundPayType,
        "330100",
        "hifob/2",
        true,
        "大额医疗费用补助基金",
        "large-amount subsidy",
        true,
    ),
    c(
        FundPayType,
        "390200",
        "hifmi/1",
        true,
        "大病医疗保险基金",
        "serious-illness insurance",
        true,
    ),
    c(
        FundPayType,
        "320100",
        "cvlserv/2",
        true,
        "公务员医疗补助基金",
        "civil-servant medical subsidy",
        true,
    ),
    c(ClrType, "11", "1", true, "门诊", "outpatient", true),
    c(ClrType, "11", "3", true, "门诊", "outpatient", true),
    c(ClrType, "11", "5", true, "门诊", "outpatient", true),
    c(ClrType, "21", "4", true, "住院", "inpatient", true),
    c(
        ClrType,
        "41",
        "2",
        true,
        "药店购药",
        "pharmacy purchase",
        true,
    ),
];

/// The yidi value of an NHSA code (`None`: not in the table).
#[must_use]
pub fn read(dict: Dict, code: &str) -> Option<&'static Code> {
    CODES.iter().find(|r| r.dict == dict && r.code == code)
}

/// The NHSA code answered for a yidi value.
#[must_use]
pub fn answer(dict: Dict, value: &str) -> Option<&'static Code> {
    CODES
        .iter()
        .find(|r| r.dict == dict && r.value == value && r.primary)
        .or_else(|| CODES.iter().find(|r| r.dict == dict && r.value == value))
}

/// The codes of a dictionary, for an error message listing what is accepted.
#[must_use]
pub fn accepted(dict: Dict) -> String {
    let mut out: Vec<&str> = Vec::new();
    for r in CODES.iter().filter(|r| r.dict == dict) {
        if !out.contains(&r.code) {
            out.push(r.code);
        }
    }
    out.join(", ")
}

/// `med_type` of a visit kind (proto number).
#[must_use]
pub fn med_type(kind: i32) -> &'static str {
    answer(MedType, &kind.to_string()).map_or("", |r| r.code)
}

/// `clr_type` of a visit kind (proto number).
#[must_use]
pub fn clr_type(kind: i32) -> &'static str {
    answer(ClrType, &kind.to_string()).map_or("", |r| r.code)
}

/// The `fund_pay_type` row of a split's fund under an insurance type (proto number).
#[must_use]
pub fn fund_pay_type(fund: &str, insurance: i32) -> Option<&'static Code> {
    answer(FundPayType, &format!("{fund}/{insurance}"))
}

/// The insurance type a split shows when the request did not say: only residents have
/// the serious-illness insurance (`hifmi`); otherwise employee.
#[must_use]
pub fn insurance_of_split(split: &proto::Split) -> i32 {
    let hifmi = split.hifmi_pay.trim_start_matches('-');
    if !hifmi.is_empty() && hifmi.chars().any(|c| matches!(c, '1'..='9')) {
        proto::InsuranceType::Resident as i32
    } else {
        proto::InsuranceType::Employee as i32
    }
}

/// Chinese names of the NHSA fields that error messages name.
pub const FIELDS: &[(&str, &str)] = &[
    ("infno", "交易编号"),
    ("msgid", "发送方报文ID"),
    ("omsgid", "原发送方报文ID"),
    ("oinfno", "原交易编号"),
    ("fixmedins_code", "定点医药机构编号"),
    ("insuplc_admdvs", "参保地医保区划"),
    ("mdtrtarea_admvs", "就医地医保区划"),
    ("input", "交易输入"),
    ("psn_no", "人员编号"),
    ("mdtrt_cert_type", "就诊凭证类型"),
    ("mdtrt_cert_no", "就诊凭证编号"),
    ("mdtrt_id", "就诊ID"),
    ("setl_id", "结算ID"),
    ("ipt_otp_no", "住院/门诊号"),
    ("begntime", "开始时间"),
    ("endtime", "结束时间"),
    ("med_type", "医疗类别"),
    ("insutype", "险种类型"),
    ("feedetail", "费用明细"),
    ("feedetl_sn", "费用明细流水号"),
    ("med_list_codg", "医疗目录编码"),
    ("cnt", "数量"),
    ("pric", "单价"),
    ("det_item_fee_sumamt", "明细项目费用总额"),
    ("fee_ocur_time", "费用发生时间"),
    ("chrg_bchno", "收费批次号"),
    ("medfee_sumamt", "医疗费总额"),
    ("acct_used_flag", "个人账户使用标志"),
    ("fund_pay_sumamt", "基金支付总额"),
    ("acct_pay", "个人账户支出"),
    ("fixmedins_setl_cnt", "定点医药机构结算笔数"),
    ("stmt_begndate", "对账开始日期"),
    ("stmt_enddate", "对账结束日期"),
    ("opter_no", "操作员编号"),
    ("diag_code", "诊断代码"),
    ("dscg_time", "出院时间"),
];

/// The Chinese name of an NHSA field path's last component (`feedetail[0].pric` → 单价).
#[must_use]
pub fn field_zh(path: &str) -> &'static str {
    let last = path.rsplit('.').next().unwrap_or(path);
    let last = last.split('[').next().unwrap_or(last);
    FIELDS
        .iter()
        .find(|(f, _)| *f == last)
        .map_or("字段", |(_, zh)| zh)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_reads_back_to_its_value_and_every_value_has_one_primary_code() {
        for r in CODES {
            let back = answer(r.dict, r.value).expect("answer");
            assert!(back.primary, "{:?} {} has a primary code", r.dict, r.value);
            assert_eq!(
                CODES
                    .iter()
                    .filter(|o| o.dict == r.dict && o.value == r.value && o.primary)
                    .count(),
                1,
                "{:?} {}",
                r.dict,
                r.value
            );
        }
        assert_eq!(read(MedType, "21").map(|r| r.value), Some("4"));
        assert_eq!(med_type(proto::VisitKind::Inpatient as i32), "21");
        assert_eq!(clr_type(proto::VisitKind::Emergency as i32), "11");
        assert_eq!(
            fund_pay_type("hifp", proto::InsuranceType::Resident as i32).map(|r| r.code),
            Some("390100")
        );
        assert!(read(MedType, "99").is_none());
        assert_eq!(field_zh("feedetail[3].pric"), "单价");
    }
}
