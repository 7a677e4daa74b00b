//! Golden cases: hand-worked settlements under realistic city policies (modelled on
//! Hangzhou's and Ningbo's published employee and resident rules). Each case writes its
//! arithmetic out and asserts every field of the split exactly.
//!
//! The policies are inline (not read from `deploy/`) so that tuning a demo file can never
//! silently change what these cases prove.

use chrono::NaiveDate;
use rust_decimal::Decimal;
use rust_decimal_macros::dec;
use yidi_common::engine::{
    self, Accumulators, FilingCtx, Line, LineReason, PersonCtx, Quote, VisitCtx,
};
use yidi_common::money;
use yidi_common::policy::Policy;
use yidi_common::types::{
    CatalogueClass, FilingType, HospitalLevel, InsuranceType, PersonType, VisitKind,
};
use yidi_common::{Error, proto};

/// Hangzhou-like employee policy (home region 330100).
const HZ_EMPLOYEE: &str = r#"
region = "330100"
insurance_type = "employee"
name = "杭州市职工医保 (golden)"
effective_from = "2026-01-01"
person_types = ["in_service", "retired"]
caps = { annual = "400000.00", chronic = "30000.00" }
outpatient_deductible = { in_service = "1000.00", retired = "700.00" }
[visit.outpatient]
levels = ["level1", "level2", "level3"]
deductible = { mode = "annual" }
ratio.level1 = { in_service = "0.80", retired = "0.85" }
ratio.level2 = { in_service = "0.75", retired = "0.80" }
ratio.level3 = { in_service = "0.70", retired = "0.75" }
[visit.pharmacy]
levels = ["ungraded"]
pooled = false
[visit.chronic]
levels = ["level1", "level2", "level3"]
deductible = { mode = "none" }
ratio.level1 = { in_service = "0.90", retired = "0.92" }
ratio.level2 = { in_service = "0.88", retired = "0.90" }
ratio.level3 = { in_service = "0.85", retired = "0.88" }
[visit.inpatient]
levels = ["level1", "level2", "level3"]
deductible = { mode = "per_visit", first = { level1 = "300.00", level2 = "600.00", level3 = "800.00" }, later = { level1 = "150.00", level2 = "300.00", level3 = "400.00" } }
ratio.level1 = { in_service = "0.90", retired = "0.92" }
ratio.level2 = { in_service = "0.87", retired = "0.90" }
ratio.level3 = { in_service = "0.85", retired = "0.88" }
[visit.emergency]
levels = ["level1", "level2", "level3"]
deductible = { mode = "none" }
ratio.level1 = { in_service = "0.90", retired = "0.92" }
ratio.level2 = { in_service = "0.87", retired = "0.90" }
ratio.level3 = { in_service = "0.85", retired = "0.88" }
[serious_illness]
fund = "hifmi"
cap = "300000.00"
tiers = [{ from = "20000.00", to = "100000.00", ratio = "0.60" }, { from = "100000.00", ratio = "0.70" }]
[civil_servant]
ratio = "0.50"
[cross_region]
filing.resettled_retiree = { ratio_cut = "0" }
filing.long_term_resident = { ratio_cut = "0" }
filing.posted_worker = { ratio_cut = "0" }
filing.referral = { ratio_cut = "0.10" }
filing.emergency = { ratio_cut = "0.10" }
filing.temporary = { ratio_cut = "0.20" }
[account]
kinds = ["outpatient", "pharmacy", "chronic", "inpatient", "emergency"]
[offline]
mode = "refuse"
"#;

/// Hangzhou-like resident policy (home region 330100).
const HZ_RESIDENT: &str = r#"
region = "330100"
insurance_type = "resident"
name = "杭州市居民医保 (golden)"
effective_from = "2026-01-01"
person_types = ["resident_adult", "resident_minor", "resident_elderly"]
caps = { annual = "250000.00" }
[visit.inpatient]
levels = ["level1", "level2", "level3"]
deductible = { mode = "per_visit", first = { level1 = "300.00", level2 = "700.00", level3 = "1000.00" } }
ratio.level1 = { resident_adult = "0.85", resident_minor = "0.85", resident_elderly = "0.88" }
ratio.level2 = { resident_adult = "0.75", resident_minor = "0.78", resident_elderly = "0.78" }
ratio.level3 = { resident_adult = "0.65", resident_minor = "0.70", resident_elderly = "0.68" }
[serious_illness]
fund = "hifmi"
cap = "400000.00"
tiers = [{ from = "15000.00", to = "50000.00", ratio = "0.60" }, { from = "50000.00", ratio = "0.70" }]
[cross_region]
filing.resettled_retiree = { ratio_cut = "0" }
filing.long_term_resident = { ratio_cut = "0" }
filing.posted_worker = { ratio_cut = "0" }
filing.referral = { ratio_cut = "0.10" }
filing.emergency = { ratio_cut = "0.10" }
filing.temporary = { ratio_cut = "0.20" }
[offline]
mode = "refuse"
"#;

/// Ningbo-like employee policy (home region 330200): large-amount subsidy (hifob), the
/// account pays catalogue-covered shares only, unfiled outpatient care not settled
/// directly.
const NB_EMPLOYEE: &str = r#"
region = "330200"
insurance_type = "employee"
name = "宁波市职工医保 (golden)"
effective_from = "2026-01-01"
person_types = ["in_service", "retired"]
caps = { annual = "350000.00", outpatient_pool = "10000.00" }
outpatient_deductible = { in_service = "600.00", retired = "300.00" }
[visit.outpatient]
levels = ["level1", "level2", "level3"]
deductible = { mode = "annual" }
ratio.level1 = { in_service = "0.75", retired = "0.82" }
ratio.level2 = { in_service = "0.68", retired = "0.75" }
ratio.level3 = { in_service = "0.60", retired = "0.68" }
[visit.inpatient]
levels = ["level1", "level2", "level3"]
deductible = { mode = "per_visit", first = { level1 = "400.00", level2 = "600.00", level3 = "900.00" } }
ratio.level1 = { in_service = "0.92", retired = "0.94" }
ratio.level2 = { in_service = "0.88", retired = "0.91" }
ratio.level3 = { in_service = "0.84", retired = "0.87" }
[serious_illness]
fund = "hifob"
cap = "200000.00"
tiers = [{ from = "15000.00", ratio = "0.75" }]
[cross_region]
filing.resettled_retiree = { ratio_cut = "0" }
filing.long_term_resident = { ratio_cut = "0" }
filing.posted_worker = { ratio_cut = "0" }
filing.referral = { ratio_cut = "0.10" }
filing.emergency = { ratio_cut = "0.05" }
filing.temporary = { ratio_cut = "0.15", no_direct_settlement = ["outpatient"] }
[account]
kinds = ["outpatient", "inpatient"]
scope = "in_scope_share"
[offline]
mode = "provisional"
exposure_limit = "500000.00"
"#;

/// Ningbo-like resident policy: unfiled resident care is never settled directly.
fn nb_resident() -> Policy {
    let text = HZ_RESIDENT
        .replace("region = \"330100\"", "region = \"330200\"")
        .replace(
            "filing.temporary = { ratio_cut = \"0.20\" }",
            "filing.temporary = { ratio_cut = \"0.20\", no_direct_settlement = [\"inpatient\"] }",
        );
    Policy::from_toml(&text).unwrap()
}

fn policy(text: &str) -> Policy {
    Policy::from_toml(text).unwrap()
}

fn d(s: &str) -> NaiveDate {
    NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
}

fn person(pt: PersonType, balance: Decimal) -> PersonCtx {
    PersonCtx {
        insurance_type: match pt {
            PersonType::InService | PersonType::Retired => InsuranceType::Employee,
            _ => InsuranceType::Resident,
        },
        person_type: pt,
        civil_servant: false,
        account_balance: balance,
    }
}

fn filing(ft: FilingType, region: &str, institutions: &[&str]) -> Option<FilingCtx> {
    Some(FilingCtx {
        filing_type: ft,
        treatment_region: region.to_owned(),
        institutions: institutions.iter().map(|s| (*s).to_owned()).collect(),
        valid_from: d("2026-01-01"),
        valid_to: None,
    })
}

/// A visit by a Hangzhou insured person to Ningbo hospital 330200-H0001.
fn visit(kind: VisitKind, level: HospitalLevel, f: Option<FilingCtx>) -> VisitCtx {
    VisitCtx {
        visit_kind: kind,
        level,
        institution_code: "330200-H0001".to_owned(),
        visit_date: d("2026-03-14"),
        treatment_region: "330200".to_owned(),
        home_region: "330100".to_owned(),
        filing: f,
        use_account: false,
    }
}

/// A line; amount = quantity × unit price (exact in every case here).
fn line(no: &str, class: CatalogueClass, qty: Decimal, price: Decimal) -> Line {
    Line {
        line_no: no.to_owned(),
        item_code: format!("ITEM-{no}"),
        class,
        first_selfpay_ratio: Decimal::ZERO,
        price_cap: None,
        quantity: qty,
        unit_price: price,
        amount: money::round_fen(qty * price),
    }
}

fn b_line(no: &str, ratio: Decimal, qty: Decimal, price: Decimal) -> Line {
    Line {
        first_selfpay_ratio: ratio,
        ..line(no, CatalogueClass::B, qty, price)
    }
}

/// The 10,000.00 inpatient bill used by several cases:
/// surgery 1 × 6000.00 (A), bed and nursing 10 × 200.00 (A), a class-B drug 4 × 500.00
/// with 10 % first self-pay → preselfpay 200.00, in scope 1800.00.
/// Total 10000.00 = preselfpay 200.00 + in scope 9800.00.
fn inpatient_bill() -> Vec<Line> {
    vec![
        line("1", CatalogueClass::A, dec!(1), dec!(6000.00)),
        line("2", CatalogueClass::A, dec!(10), dec!(200.00)),
        b_line("3", dec!(0.10), dec!(4), dec!(500.00)),
    ]
}

/// Expected split, every field as its wire string.
struct Exp {
    medfee: &'static str,
    fulamt: &'static str,
    overlmt: &'static str,
    presel: &'static str,
    inscp: &'static str,
    dedc: &'static str,
    hifp: &'static str,
    hifmi: &'static str,
    hifob: &'static str,
    cvlserv: &'static str,
    fund: &'static str,
    psn: &'static str,
    acct: &'static str,
    cash: &'static str,
    ratio: &'static str,
    filing: Option<FilingType>,
}

fn check(q: &Quote, e: &Exp) {
    let f = money::format;
    let got = [
        ("medfee_sumamt", f(q.medfee_sumamt), e.medfee),
        ("fulamt_ownpay_amt", f(q.fulamt_ownpay_amt), e.fulamt),
        ("overlmt_selfpay", f(q.overlmt_selfpay), e.overlmt),
        ("preselfpay_amt", f(q.preselfpay_amt), e.presel),
        ("inscp_scp_amt", f(q.inscp_scp_amt), e.inscp),
        ("act_pay_dedc", f(q.act_pay_dedc), e.dedc),
        ("hifp_pay", f(q.hifp_pay), e.hifp),
        ("hifmi_pay", f(q.hifmi_pay), e.hifmi),
        ("hifob_pay", f(q.hifob_pay), e.hifob),
        ("cvlserv_pay", f(q.cvlserv_pay), e.cvlserv),
        ("maf_pay", f(q.maf_pay), "0.00"),
        ("fund_pay_sumamt", f(q.fund_pay_sumamt), e.fund),
        ("hosp_part_amt", f(q.hosp_part_amt), "0.00"),
        ("psn_part_amt", f(q.psn_part_amt), e.psn),
        ("acct_pay", f(q.acct_pay), e.acct),
        ("psn_cash_pay", f(q.psn_cash_pay), e.cash),
        ("pool_ratio", money::format_ratio(q.pool_ratio), e.ratio),
    ];
    for (name, got, want) in got {
        assert_eq!(got, want, "{name}\ntrace:\n{}", q.trace.join("\n"));
    }
    assert_eq!(q.applied_filing_type, e.filing, "applied filing type");
    // The identities hold in every golden case too.
    assert_eq!(
        q.medfee_sumamt,
        q.fulamt_ownpay_amt + q.overlmt_selfpay + q.preselfpay_amt + q.inscp_scp_amt
    );
    assert_eq!(
        q.fund_pay_sumamt,
        q.hifp_pay + q.hifmi_pay + q.hifob_pay + q.cvlserv_pay + q.maf_pay
    );
    assert_eq!(
        q.psn_part_amt,
        q.medfee_sumamt - q.fund_pay_sumamt - q.hosp_part_amt
    );
    assert_eq!(q.psn_part_amt, q.acct_pay + q.psn_cash_pay);
    // The wire form verifies against itself.
    q.split_matches(&q.to_proto_split()).unwrap();
}

fn acc() -> Accumulators {
    Accumulators {
        version: 3,
        ..Accumulators::new(2026)
    }
}

#[test]
fn g01_employee_inpatient_level3_first_admission() {
    // In-service employee, posted to Ningbo (常驻异地工作, no cut), level-3 hospital.
    // Bill 10000.00: preselfpay 200.00, in scope 9800.00.
    // Deductible (first admission, level 3)                800.00
    // Pooled fund 85 % × (9800.00 − 800.00) = 0.85 × 9000 7650.00
    // Personal share 10000.00 − 7650.00                   2350.00 (all cash)
    // Serious illness: personal in-scope share 0 → 2150.00, below 20000: nothing.
    let q = engine::quote(
        &policy(HZ_EMPLOYEE),
        &person(PersonType::InService, dec!(0)),
        &acc(),
        &visit(
            VisitKind::Inpatient,
            HospitalLevel::Level3,
            filing(FilingType::PostedWorker, "330200", &[]),
        ),
        &inpatient_bill(),
    )
    .unwrap();
    check(
        &q,
        &Exp {
            medfee: "10000.00",
            fulamt: "0.00",
            overlmt: "0.00",
            presel: "200.00",
            inscp: "9800.00",
            dedc: "800.00",
            hifp: "7650.00",
            hifmi: "0.00",
            hifob: "0.00",
            cvlserv: "0.00",
            fund: "7650.00",
            psn: "2350.00",
            acct: "0.00",
            cash: "2350.00",
            ratio: "0.85",
            filing: Some(FilingType::PostedWorker),
        },
    );
    assert_eq!(q.lines[2].reason, LineReason::BFirstSelfpay);
    assert_eq!(money::format(q.lines[2].preselfpay_amt), "200.00");
    assert_eq!(money::format(q.lines[2].inscp_scp_amt), "1800.00");
    // New accumulators: one admission, pooled fund and in-scope totals, version + 1.
    let a = &q.accumulators;
    assert_eq!(
        (a.version, a.admissions, a.pool_paid, a.inscope_total),
        (4, 1, dec!(7650.00), dec!(9800.00))
    );
    assert!(
        q.trace
            .iter()
            .any(|t| t == "deductible 800.00: level-3 hospital, first admission this year"),
        "{:?}",
        q.trace
    );
}

#[test]
fn g02_employee_inpatient_level1() {
    // Same bill at a level-1 hospital.
    // Deductible 300.00; pooled fund 90 % × 9500.00 = 8550.00; personal 1450.00.
    let q = engine::quote(
        &policy(HZ_EMPLOYEE),
        &person(PersonType::InService, dec!(0)),
        &acc(),
        &visit(
            VisitKind::Inpatient,
            HospitalLevel::Level1,
            filing(FilingType::PostedWorker, "330200", &[]),
        ),
        &inpatient_bill(),
    )
    .unwrap();
    check(
        &q,
        &Exp {
            medfee: "10000.00",
            fulamt: "0.00",
            overlmt: "0.00",
            presel: "200.00",
            inscp: "9800.00",
            dedc: "300.00",
            hifp: "8550.00",
            hifmi: "0.00",
            hifob: "0.00",
            cvlserv: "0.00",
            fund: "8550.00",
            psn: "1450.00",
            acct: "0.00",
            cash: "1450.00",
            ratio: "0.90",
            filing: Some(FilingType::PostedWorker),
        },
    );
}

#[test]
fn g03_employee_inpatient_level2() {
    // Level 2: deductible 600.00; 87 % × 9200.00 = 8004.00; personal 1996.00.
    let q = engine::quote(
        &policy(HZ_EMPLOYEE),
        &person(PersonType::InService, dec!(0)),
        &acc(),
        &visit(
            VisitKind::Inpatient,
            HospitalLevel::Level2,
            filing(FilingType::PostedWorker, "330200", &[]),
        ),
        &inpatient_bill(),
    )
    .unwrap();
    check(
        &q,
        &Exp {
            medfee: "10000.00",
            fulamt: "0.00",
            overlmt: "0.00",
            presel: "200.00",
            inscp: "9800.00",
            dedc: "600.00",
            hifp: "8004.00",
            hifmi: "0.00",
            hifob: "0.00",
            cvlserv: "0.00",
            fund: "8004.00",
            psn: "1996.00",
            acct: "0.00",
            cash: "1996.00",
            ratio: "0.87",
            filing: Some(FilingType::PostedWorker),
        },
    );
}

/// Accumulators after g01's admission.
fn after_first_admission() -> Accumulators {
    Accumulators {
        version: 4,
        admissions: 1,
        pool_paid: dec!(7650.00),
        inscope_total: dec!(9800.00),
        ..Accumulators::new(2026)
    }
}

#[test]
fn g04_second_admission_uses_the_later_deductible() {
    // Second admission of the year at level 3: later-admission deductible 400.00.
    // 85 % × (9800.00 − 400.00) = 0.85 × 9400 = 7990.00; personal 2010.00.
    // Serious illness: personal in-scope share 2150.00 → 3960.00, below 20000.
    let q = engine::quote(
        &policy(HZ_EMPLOYEE),
        &person(PersonType::InService, dec!(0)),
        &after_first_admission(),
        &visit(
            VisitKind::Inpatient,
            HospitalLevel::Level3,
            filing(FilingType::PostedWorker, "330200", &[]),
        ),
        &inpatient_bill(),
    )
    .unwrap();
    check(
        &q,
        &Exp {
            medfee: "10000.00",
            fulamt: "0.00",
            overlmt: "0.00",
            presel: "200.00",
            inscp: "9800.00",
            dedc: "400.00",
            hifp: "7990.00",
            hifmi: "0.00",
            hifob: "0.00",
            cvlserv: "0.00",
            fund: "7990.00",
            psn: "2010.00",
            acct: "0.00",
            cash: "2010.00",
            ratio: "0.85",
            filing: Some(FilingType::PostedWorker),
        },
    );
    let a = &q.accumulators;
    assert_eq!(
        (a.version, a.admissions, a.pool_paid, a.inscope_total),
        (5, 2, dec!(15640.00), dec!(19600.00))
    );
    assert!(q.trace.iter().any(|t| t.contains("admission 2 this year")));
}

#[test]
fn g05_retiree_with_personal_account() {
    // Resettled retiree (异地安置退休) at one of the named hospitals, level 3.
    // Deductible 800.00; 88 % × 9000.00 = 7920.00; personal 2080.00.
    // The account (balance 1500.00) pays 1500.00, cash 580.00.
    let mut v = visit(
        VisitKind::Inpatient,
        HospitalLevel::Level3,
        filing(
            FilingType::ResettledRetiree,
            "330200",
            &["330200-H0001", "330200-H0002"],
        ),
    );
    v.use_account = true;
    let q = engine::quote(
        &policy(HZ_EMPLOYEE),
        &person(PersonType::Retired, dec!(1500.00)),
        &acc(),
        &v,
        &inpatient_bill(),
    )
    .unwrap();
    check(
        &q,
        &Exp {
            medfee: "10000.00",
            fulamt: "0.00",
            overlmt: "0.00",
            presel: "200.00",
            inscp: "9800.00",
            dedc: "800.00",
            hifp: "7920.00",
            hifmi: "0.00",
            hifob: "0.00",
            cvlserv: "0.00",
            fund: "7920.00",
            psn: "2080.00",
            acct: "1500.00",
            cash: "580.00",
            ratio: "0.88",
            filing: Some(FilingType::ResettledRetiree),
        },
    );
}

#[test]
fn g06_resident_inpatient() {
    // Elderly resident, long-term resident filing, level-2 hospital.
    // Lines: A 2 × 1500.00 = 3000.00; B (10 %) 5 × 200.00 = 1000.00 → preselfpay
    // 100.00, in scope 900.00; C 1 × 250.00 fully self-paid.
    // Total 4250.00 = C 250.00 + preselfpay 100.00 + in scope 3900.00.
    // Deductible level 2: 700.00; 78 % × 3200.00 = 2496.00; personal 1754.00, cash.
    let q = engine::quote(
        &policy(HZ_RESIDENT),
        &person(PersonType::ResidentElderly, dec!(0)),
        &acc(),
        &visit(
            VisitKind::Inpatient,
            HospitalLevel::Level2,
            filing(FilingType::LongTermResident, "330200", &[]),
        ),
        &[
            line("1", CatalogueClass::A, dec!(2), dec!(1500.00)),
            b_line("2", dec!(0.10), dec!(5), dec!(200.00)),
            line("3", CatalogueClass::C, dec!(1), dec!(250.00)),
        ],
    )
    .unwrap();
    check(
        &q,
        &Exp {
            medfee: "4250.00",
            fulamt: "250.00",
            overlmt: "0.00",
            presel: "100.00",
            inscp: "3900.00",
            dedc: "700.00",
            hifp: "2496.00",
            hifmi: "0.00",
            hifob: "0.00",
            cvlserv: "0.00",
            fund: "2496.00",
            psn: "1754.00",
            acct: "0.00",
            cash: "1754.00",
            ratio: "0.78",
            filing: Some(FilingType::LongTermResident),
        },
    );
}

#[test]
fn g07_pharmacy_purchase_paid_from_the_personal_account() {
    // Pharmacy purchases are not pooled in this city: no deductible, no fund.
    // Lines: B drug (5 %) 3 × 45.60 = 136.80 → preselfpay 6.84, in scope 129.96;
    // C item 1 × 58.00.  Total 194.80, all personal; the account (3000.00) pays it.
    let mut v = visit(VisitKind::Pharmacy, HospitalLevel::Ungraded, None);
    v.institution_code = "330200-P0007".to_owned();
    v.use_account = true;
    let q = engine::quote(
        &policy(HZ_EMPLOYEE),
        &person(PersonType::InService, dec!(3000.00)),
        &acc(),
        &v,
        &[
            b_line("1", dec!(0.05), dec!(3), dec!(45.60)),
            line("2", CatalogueClass::C, dec!(1), dec!(58.00)),
        ],
    )
    .unwrap();
    check(
        &q,
        &Exp {
            medfee: "194.80",
            fulamt: "58.00",
            overlmt: "0.00",
            presel: "6.84",
            inscp: "129.96",
            dedc: "0.00",
            hifp: "0.00",
            hifmi: "0.00",
            hifob: "0.00",
            cvlserv: "0.00",
            fund: "0.00",
            psn: "194.80",
            acct: "194.80",
            cash: "0.00",
            ratio: "0.00",
            filing: Some(FilingType::Temporary),
        },
    );
    // Nothing pooled: only the version moves.
    assert_eq!(
        q.accumulators,
        Accumulators {
            version: 4,
            ..Accumulators::new(2026)
        }
    );
}

#[test]
fn g08_chronic_disease_outpatient() {
    // Resettled retiree, chronic-disease outpatient at level 2, no deductible.
    // Lines: A 2 × 86.50 = 173.00; B (10 %) 1 × 420.00 → preselfpay 42.00, in scope
    // 378.00.  Total 593.00; in scope 551.00.
    // Pooled fund 90 % × 551.00 = 495.90 (chronic cap 30000 with 1200 paid: no limit).
    // Personal 97.10: account (balance 50.00) pays 50.00, cash 47.10.
    let mut v = visit(
        VisitKind::Chronic,
        HospitalLevel::Level2,
        filing(FilingType::ResettledRetiree, "330200", &[]),
    );
    v.use_account = true;
    let before = Accumulators {
        pool_paid: dec!(1200.00),
        chronic_pool_paid: dec!(1200.00),
        inscope_total: dec!(1400.00),
        ..acc()
    };
    let q = engine::quote(
        &policy(HZ_EMPLOYEE),
        &person(PersonType::Retired, dec!(50.00)),
        &before,
        &v,
        &[
            line("1", CatalogueClass::A, dec!(2), dec!(86.50)),
            b_line("2", dec!(0.10), dec!(1), dec!(420.00)),
        ],
    )
    .unwrap();
    check(
        &q,
        &Exp {
            medfee: "593.00",
            fulamt: "0.00",
            overlmt: "0.00",
            presel: "42.00",
            inscp: "551.00",
            dedc: "0.00",
            hifp: "495.90",
            hifmi: "0.00",
            hifob: "0.00",
            cvlserv: "0.00",
            fund: "495.90",
            psn: "97.10",
            acct: "50.00",
            cash: "47.10",
            ratio: "0.90",
            filing: Some(FilingType::ResettledRetiree),
        },
    );
    assert_eq!(q.accumulators.chronic_pool_paid, dec!(1695.90));
    assert_eq!(q.accumulators.pool_paid, dec!(1695.90));
    assert_eq!(q.accumulators.inscope_total, dec!(1951.00));
}

#[test]
fn g09_unfiled_temporary_visit_loses_20_points() {
    // No filing: temporary (临时外出), ratio 85 % − 20 pp = 65 %.
    // Deductible 800.00; 65 % × 9000.00 = 5850.00; personal 4150.00.
    let q = engine::quote(
        &policy(HZ_EMPLOYEE),
        &person(PersonType::InService, dec!(0)),
        &acc(),
        &visit(VisitKind::Inpatient, HospitalLevel::Level3, None),
        &inpatient_bill(),
    )
    .unwrap();
    check(
        &q,
        &Exp {
            medfee: "10000.00",
            fulamt: "0.00",
            overlmt: "0.00",
            presel: "200.00",
            inscp: "9800.00",
            dedc: "800.00",
            hifp: "5850.00",
            hifmi: "0.00",
            hifob: "0.00",
            cvlserv: "0.00",
            fund: "5850.00",
            psn: "4150.00",
            acct: "0.00",
            cash: "4150.00",
            ratio: "0.65",
            filing: Some(FilingType::Temporary),
        },
    );
    assert!(
        q.trace.iter().any(
            |t| t.contains("ratio 85% (inpatient, level3, in_service) − 20 pp temporary = 65%")
        ),
        "{:?}",
        q.trace
    );
}

#[test]
fn g10_referral_second_admission_loses_10_points() {
    // Referral (异地转诊), second admission: deductible 400.00;
    // ratio 85 % − 10 pp = 75 %; 75 % × 9400.00 = 7050.00; personal 2950.00.
    let q = engine::quote(
        &policy(HZ_EMPLOYEE),
        &person(PersonType::InService, dec!(0)),
        &after_first_admission(),
        &visit(
            VisitKind::Inpatient,
            HospitalLevel::Level3,
            filing(FilingType::Referral, "330200", &[]),
        ),
        &inpatient_bill(),
    )
    .unwrap();
    check(
        &q,
        &Exp {
            medfee: "10000.00",
            fulamt: "0.00",
            overlmt: "0.00",
            presel: "200.00",
            inscp: "9800.00",
            dedc: "400.00",
            hifp: "7050.00",
            hifmi: "0.00",
            hifob: "0.00",
            cvlserv: "0.00",
            fund: "7050.00",
            psn: "2950.00",
            acct: "0.00",
            cash: "2950.00",
            ratio: "0.75",
            filing: Some(FilingType::Referral),
        },
    );
}

#[test]
fn g11_filed_person_outside_named_hospitals_counts_as_unfiled() {
    // Retiree resettled in Ningbo, filing names H0001 and H0002; admitted at H0099.
    // Counts as temporary: ratio 90 % − 20 pp = 70 %, level 2.
    // Bill: A 1 × 5000.00. Deductible 600.00; 70 % × 4400.00 = 3080.00; personal 1920.00.
    let mut v = visit(
        VisitKind::Inpatient,
        HospitalLevel::Level2,
        filing(
            FilingType::ResettledRetiree,
            "330200",
            &["330200-H0001", "330200-H0002"],
        ),
    );
    v.institution_code = "330200-H0099".to_owned();
    let q = engine::quote(
        &policy(HZ_EMPLOYEE),
        &person(PersonType::Retired, dec!(0)),
        &acc(),
        &v,
        &[line("1", CatalogueClass::A, dec!(1), dec!(5000.00))],
    )
    .unwrap();
    check(
        &q,
        &Exp {
            medfee: "5000.00",
            fulamt: "0.00",
            overlmt: "0.00",
            presel: "0.00",
            inscp: "5000.00",
            dedc: "600.00",
            hifp: "3080.00",
            hifmi: "0.00",
            hifob: "0.00",
            cvlserv: "0.00",
            fund: "3080.00",
            psn: "1920.00",
            acct: "0.00",
            cash: "1920.00",
            ratio: "0.70",
            filing: Some(FilingType::Temporary),
        },
    );
    assert!(
        q.trace
            .iter()
            .any(|t| t.contains("330200-H0099 is not one of them"))
    );
}

#[test]
fn g12_bill_crossing_the_cap_into_the_serious_illness_tier() {
    // Third admission. Pooled fund paid 395000.00 of its 400000.00 cap; in-scope total
    // 430000.00, so the year's in-scope personal share is 35000.00 (9000.00 already
    // paid by serious illness insurance: 60 % × 15000.00).
    // Bill: A 1 × 30000.00. Deductible (later) 400.00.
    // Pooled fund 85 % × 29600.00 = 25160.00, capped at 400000 − 395000 = 5000.00.
    // Personal in-scope share 35000.00 → 35000.00 + (30000.00 − 5000.00) = 60000.00,
    // all in tier 20000–100000 at 60 %: 0.60 × 25000.00 = 15000.00 (cap 300000 − 9000
    // leaves room).  Funds 20000.00; personal 10000.00.
    let before = Accumulators {
        admissions: 2,
        pool_paid: dec!(395000.00),
        inscope_total: dec!(430000.00),
        serious_illness_paid: dec!(9000.00),
        ..acc()
    };
    let q = engine::quote(
        &policy(HZ_EMPLOYEE),
        &person(PersonType::InService, dec!(0)),
        &before,
        &visit(
            VisitKind::Inpatient,
            HospitalLevel::Level3,
            filing(FilingType::PostedWorker, "330200", &[]),
        ),
        &[line("1", CatalogueClass::A, dec!(1), dec!(30000.00))],
    )
    .unwrap();
    check(
        &q,
        &Exp {
            medfee: "30000.00",
            fulamt: "0.00",
            overlmt: "0.00",
            presel: "0.00",
            inscp: "30000.00",
            dedc: "400.00",
            hifp: "5000.00",
            hifmi: "15000.00",
            hifob: "0.00",
            cvlserv: "0.00",
            fund: "20000.00",
            psn: "10000.00",
            acct: "0.00",
            cash: "10000.00",
            ratio: "0.85",
            filing: Some(FilingType::PostedWorker),
        },
    );
    let a = &q.accumulators;
    assert_eq!(a.pool_paid, dec!(400000.00), "exactly at the cap");
    assert_eq!(a.serious_illness_paid, dec!(24000.00));
    assert_eq!(a.inscope_total, dec!(460000.00));
    assert_eq!(q.funds.len(), 2);
}

#[test]
fn g13_class_b_first_selfpay_rounds_half_up_per_line() {
    // Outpatient at level 1, long-term resident filing, annual deductible already met.
    // Lines: B (15 %) 3 × 33.33 = 99.99 → 0.15 × 99.99 = 14.9985 → 15.00, in scope 84.99;
    //        B (10 %) 2 × 12.35 = 24.70 → 2.47, in scope 22.23;  A 1 × 25.00.
    // Total 149.69 = preselfpay 17.47 + in scope 132.22.
    // Pooled fund 80 % × 132.22 = 105.776 → 105.78; personal 43.91.
    let before = Accumulators {
        outpatient_deductible_paid: dec!(1000.00),
        ..acc()
    };
    let q = engine::quote(
        &policy(HZ_EMPLOYEE),
        &person(PersonType::InService, dec!(0)),
        &before,
        &visit(
            VisitKind::Outpatient,
            HospitalLevel::Level1,
            filing(FilingType::LongTermResident, "330200", &[]),
        ),
        &[
            b_line("1", dec!(0.15), dec!(3), dec!(33.33)),
            b_line("2", dec!(0.10), dec!(2), dec!(12.35)),
            line("3", CatalogueClass::A, dec!(1), dec!(25.00)),
        ],
    )
    .unwrap();
    check(
        &q,
        &Exp {
            medfee: "149.69",
            fulamt: "0.00",
            overlmt: "0.00",
            presel: "17.47",
            inscp: "132.22",
            dedc: "0.00",
            hifp: "105.78",
            hifmi: "0.00",
            hifob: "0.00",
            cvlserv: "0.00",
            fund: "105.78",
            psn: "43.91",
            acct: "0.00",
            cash: "43.91",
            ratio: "0.80",
            filing: Some(FilingType::LongTermResident),
        },
    );
    assert_eq!(money::format(q.lines[0].preselfpay_amt), "15.00");
    assert_eq!(q.accumulators.outpatient_pool_paid, dec!(105.78));
}

#[test]
fn g14_lines_above_their_price_cap() {
    // Outpatient at level 2, 100.00 of the annual deductible left (900.00 of 1000.00 met).
    // Line 1, A, cap 800.00: 2 × 950.00 = 1900.00; allowed 2 × 800.00 = 1600.00 →
    //   above cap 300.00, in scope 1600.00.
    // Line 2, B (10 %), cap 120.00: 1 × 150.00 → above cap 30.00; 10 % × 120.00 = 12.00
    //   preselfpay; in scope 108.00.
    // Total 2050.00 = above cap 330.00 + preselfpay 12.00 + in scope 1708.00.
    // Deductible 100.00; pooled 75 % × 1608.00 = 1206.00; personal 844.00 from the
    // account (balance 10000.00).
    let before = Accumulators {
        outpatient_deductible_paid: dec!(900.00),
        ..acc()
    };
    let mut v = visit(
        VisitKind::Outpatient,
        HospitalLevel::Level2,
        filing(FilingType::PostedWorker, "330200", &[]),
    );
    v.use_account = true;
    let q = engine::quote(
        &policy(HZ_EMPLOYEE),
        &person(PersonType::InService, dec!(10000.00)),
        &before,
        &v,
        &[
            Line {
                price_cap: Some(dec!(800.00)),
                ..line("1", CatalogueClass::A, dec!(2), dec!(950.00))
            },
            Line {
                price_cap: Some(dec!(120.00)),
                ..b_line("2", dec!(0.10), dec!(1), dec!(150.00))
            },
        ],
    )
    .unwrap();
    check(
        &q,
        &Exp {
            medfee: "2050.00",
            fulamt: "0.00",
            overlmt: "330.00",
            presel: "12.00",
            inscp: "1708.00",
            dedc: "100.00",
            hifp: "1206.00",
            hifmi: "0.00",
            hifob: "0.00",
            cvlserv: "0.00",
            fund: "1206.00",
            psn: "844.00",
            acct: "844.00",
            cash: "0.00",
            ratio: "0.75",
            filing: Some(FilingType::PostedWorker),
        },
    );
    assert_eq!(q.lines[0].reason, LineReason::OverPriceCap);
    assert_eq!(q.lines[1].reason, LineReason::BOverPriceCap);
    assert_eq!(q.accumulators.outpatient_deductible_paid, dec!(1000.00));
}

#[test]
fn g15_class_c_lines_only() {
    // Outpatient, only class-C items: 1 × 380.00 + 2 × 60.00 = 500.00, all self-paid.
    // In scope 0: no deductible consumed, no fund; the whole 500.00 in cash.
    let q = engine::quote(
        &policy(HZ_EMPLOYEE),
        &person(PersonType::InService, dec!(0)),
        &acc(),
        &visit(
            VisitKind::Outpatient,
            HospitalLevel::Level1,
            filing(FilingType::PostedWorker, "330200", &[]),
        ),
        &[
            line("1", CatalogueClass::C, dec!(1), dec!(380.00)),
            line("2", CatalogueClass::C, dec!(2), dec!(60.00)),
        ],
    )
    .unwrap();
    check(
        &q,
        &Exp {
            medfee: "500.00",
            fulamt: "500.00",
            overlmt: "0.00",
            presel: "0.00",
            inscp: "0.00",
            dedc: "0.00",
            hifp: "0.00",
            hifmi: "0.00",
            hifob: "0.00",
            cvlserv: "0.00",
            fund: "0.00",
            psn: "500.00",
            acct: "0.00",
            cash: "500.00",
            ratio: "0.80",
            filing: Some(FilingType::PostedWorker),
        },
    );
    assert!(q.lines.iter().all(|l| l.reason == LineReason::COutOfScope));
    assert_eq!(q.accumulators.outpatient_deductible_paid, dec!(0));
    assert!(q.funds.is_empty());
}

#[test]
fn g16_policy_saying_no_direct_settlement() {
    // A Ningbo resident admitted unfiled in Hangzhou: the Ningbo resident policy does not
    // settle unfiled inpatient care directly. An error, never a split.
    let mut v = visit(VisitKind::Inpatient, HospitalLevel::Level3, None);
    v.home_region = "330200".to_owned();
    v.treatment_region = "330100".to_owned();
    v.institution_code = "330100-H0001".to_owned();
    let err = engine::quote(
        &nb_resident(),
        &person(PersonType::ResidentAdult, dec!(0)),
        &acc(),
        &v,
        &inpatient_bill(),
    )
    .unwrap_err();
    let Error::Precondition(msg) = &err else {
        panic!("expected a precondition error, got {err}");
    };
    assert!(msg.starts_with("no direct settlement"), "{msg}");
    assert!(
        msg.contains("temporary") && msg.contains("inpatient"),
        "{msg}"
    );
    // Once filed (a patient may file before discharge), it settles.
    v.filing = filing(FilingType::LongTermResident, "330100", &[]);
    assert!(
        engine::quote(
            &nb_resident(),
            &person(PersonType::ResidentAdult, dec!(0)),
            &acc(),
            &v,
            &inpatient_bill(),
        )
        .is_ok()
    );
}

#[test]
fn g17_civil_servant_subsidy() {
    // In-service civil servant, level 1, first admission, posted worker.
    // Deductible 300.00; 90 % × 9500.00 = 8550.00.
    // In-scope personal share 9800.00 − 8550.00 = 1250.00; subsidy 50 % = 625.00.
    // Funds 9175.00; personal 825.00 (preselfpay 200.00 is not subsidised).
    let mut p = person(PersonType::InService, dec!(0));
    p.civil_servant = true;
    let q = engine::quote(
        &policy(HZ_EMPLOYEE),
        &p,
        &acc(),
        &visit(
            VisitKind::Inpatient,
            HospitalLevel::Level1,
            filing(FilingType::PostedWorker, "330200", &[]),
        ),
        &inpatient_bill(),
    )
    .unwrap();
    check(
        &q,
        &Exp {
            medfee: "10000.00",
            fulamt: "0.00",
            overlmt: "0.00",
            presel: "200.00",
            inscp: "9800.00",
            dedc: "300.00",
            hifp: "8550.00",
            hifmi: "0.00",
            hifob: "0.00",
            cvlserv: "625.00",
            fund: "9175.00",
            psn: "825.00",
            acct: "0.00",
            cash: "825.00",
            ratio: "0.90",
            filing: Some(FilingType::PostedWorker),
        },
    );
}

#[test]
fn g18_unfiled_emergency_counts_as_filed() {
    // Emergency rescue (门诊抢救) without a filing is settled under the emergency rule:
    // 87 % − 10 pp = 77 % at level 2, no deductible.
    // A 1 × 1234.56; 0.77 × 1234.56 = 950.6112 → 950.61; personal 283.95.
    let q = engine::quote(
        &policy(HZ_EMPLOYEE),
        &person(PersonType::InService, dec!(0)),
        &acc(),
        &visit(VisitKind::Emergency, HospitalLevel::Level2, None),
        &[line("1", CatalogueClass::A, dec!(1), dec!(1234.56))],
    )
    .unwrap();
    check(
        &q,
        &Exp {
            medfee: "1234.56",
            fulamt: "0.00",
            overlmt: "0.00",
            presel: "0.00",
            inscp: "1234.56",
            dedc: "0.00",
            hifp: "950.61",
            hifmi: "0.00",
            hifob: "0.00",
            cvlserv: "0.00",
            fund: "950.61",
            psn: "283.95",
            acct: "0.00",
            cash: "283.95",
            ratio: "0.77",
            filing: Some(FilingType::Emergency),
        },
    );
}

#[test]
fn g19_ningbo_referral_large_amount_subsidy_and_in_scope_account() {
    // Ningbo employee referred to Hangzhou, level 3; deductible 900.00 every admission.
    // Lines: A 1 × 20000.00; C 1 × 1000.00. Total 21000.00, in scope 20000.00.
    // Pooled 84 % − 10 pp = 74 % × 19100.00 = 14134.00.
    // Personal in-scope share 14000.00 (24000 − 10000) → 14000 + 5866 = 19866.00;
    // hifob tier from 15000 at 75 %: 0.75 × 4866.00 = 3649.50.
    // Funds 17783.50; personal 3216.50. The account pays in-scope shares only:
    // 3216.50 − 1000.00 class C = 2216.50 (balance 5000.00); cash 1000.00.
    let before = Accumulators {
        admissions: 1,
        pool_paid: dec!(10000.00),
        inscope_total: dec!(24000.00),
        ..acc()
    };
    let v = VisitCtx {
        visit_kind: VisitKind::Inpatient,
        level: HospitalLevel::Level3,
        institution_code: "330100-H0001".to_owned(),
        visit_date: d("2026-05-02"),
        treatment_region: "330100".to_owned(),
        home_region: "330200".to_owned(),
        filing: filing(FilingType::Referral, "330100", &[]),
        use_account: true,
    };
    let q = engine::quote(
        &policy(NB_EMPLOYEE),
        &person(PersonType::InService, dec!(5000.00)),
        &before,
        &v,
        &[
            line("1", CatalogueClass::A, dec!(1), dec!(20000.00)),
            line("2", CatalogueClass::C, dec!(1), dec!(1000.00)),
        ],
    )
    .unwrap();
    check(
        &q,
        &Exp {
            medfee: "21000.00",
            fulamt: "1000.00",
            overlmt: "0.00",
            presel: "0.00",
            inscp: "20000.00",
            dedc: "900.00",
            hifp: "14134.00",
            hifmi: "0.00",
            hifob: "3649.50",
            cvlserv: "0.00",
            fund: "17783.50",
            psn: "3216.50",
            acct: "2216.50",
            cash: "1000.00",
            ratio: "0.74",
            filing: Some(FilingType::Referral),
        },
    );
    // Unfiled outpatient care is refused by this policy.
    let mut out = v.clone();
    out.visit_kind = VisitKind::Outpatient;
    out.filing = None;
    let err = engine::quote(
        &policy(NB_EMPLOYEE),
        &person(PersonType::InService, dec!(5000.00)),
        &before,
        &out,
        &[line("1", CatalogueClass::A, dec!(1), dec!(100.00))],
    )
    .unwrap_err();
    assert!(matches!(err, Error::Precondition(_)), "{err}");
}

#[test]
fn split_matches_catches_a_wrong_field() {
    let q = engine::quote(
        &policy(HZ_EMPLOYEE),
        &person(PersonType::InService, dec!(0)),
        &acc(),
        &visit(VisitKind::Inpatient, HospitalLevel::Level3, None),
        &inpatient_bill(),
    )
    .unwrap();
    let good: proto::Split = q.to_proto_split();
    q.split_matches(&good).unwrap();
    let mut bad = good.clone();
    bad.hifp_pay = "5850.01".to_owned();
    let msg = q.split_matches(&bad).unwrap_err().to_string();
    assert!(msg.contains("hifp_pay") && msg.contains("5850.00"), "{msg}");
    let mut bad = good.clone();
    bad.lines[2].preselfpay_amt = "199.99".to_owned();
    assert!(
        q.split_matches(&bad)
            .unwrap_err()
            .to_string()
            .contains("lines[2].preselfpay_amt")
    );
    let mut bad = good.clone();
    bad.applied_filing_type = FilingType::Referral.to_proto();
    assert!(
        q.split_matches(&bad)
            .unwrap_err()
            .to_string()
            .contains("applied_filing_type")
    );
    let mut bad = good.clone();
    bad.funds.clear();
    assert!(
        q.split_matches(&bad)
            .unwrap_err()
            .to_string()
            .contains("funds")
    );
    // Amounts written without trailing zeros still match: values are compared.
    let mut loose = good;
    loose.hifp_pay = "5850".to_owned();
    q.split_matches(&loose).unwrap();
    // Accumulators survive the wire.
    let back = Accumulators::from_proto(&q.accumulators.to_proto()).unwrap();
    assert_eq!(back, q.accumulators);
}
