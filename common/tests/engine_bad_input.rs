//! Bad input to the engine: a clear error naming the field, never a split.

use chrono::NaiveDate;
use rust_decimal::Decimal;
use rust_decimal_macros::dec;
use yidi_common::engine::input::{Format, PersonInput, VisitInput};
use yidi_common::engine::{self, Accumulators, Line, PersonCtx, VisitCtx};
use yidi_common::policy::Policy;
use yidi_common::types::{CatalogueClass, HospitalLevel, InsuranceType, PersonType, VisitKind};
use yidi_common::{Error, proto};

fn policy() -> Policy {
    Policy::from_toml(include_str!("../../deploy/policy.sample.toml")).unwrap()
}

fn person() -> PersonCtx {
    PersonCtx {
        insurance_type: InsuranceType::Employee,
        person_type: PersonType::InService,
        civil_servant: false,
        account_balance: dec!(100.00),
    }
}

fn visit() -> VisitCtx {
    VisitCtx {
        visit_kind: VisitKind::Inpatient,
        level: HospitalLevel::Level2,
        institution_code: "330200-H0001".to_owned(),
        visit_date: NaiveDate::from_ymd_opt(2026, 4, 1).unwrap(),
        treatment_region: "330200".to_owned(),
        home_region: "330100".to_owned(),
        filing: None,
        use_account: false,
    }
}

fn line(no: &str) -> Line {
    Line {
        line_no: no.to_owned(),
        item_code: "X".to_owned(),
        class: CatalogueClass::A,
        first_selfpay_ratio: Decimal::ZERO,
        price_cap: None,
        quantity: dec!(2),
        unit_price: dec!(10.00),
        amount: dec!(20.00),
    }
}

fn field_of(r: yidi_common::Result<engine::Quote>) -> String {
    match r {
        Err(Error::Invalid { field, .. }) => field,
        Err(e) => panic!("expected an invalid-field error, got {e}"),
        Ok(q) => panic!("expected an error, got a split: {:?}", q.trace),
    }
}

/// A well-formed visit the policy does not provide for is refused (FAILED_PRECONDITION
/// on the wire), not reported as malformed input.
fn refusal_of(r: yidi_common::Result<engine::Quote>) -> String {
    match r {
        Err(Error::Precondition(m)) => m,
        Err(e) => panic!("expected a refusal, got {e}"),
        Ok(q) => panic!("expected a refusal, got a split: {:?}", q.trace),
    }
}

fn run_lines(lines: &[Line]) -> String {
    field_of(engine::quote(
        &policy(),
        &person(),
        &Accumulators::new(2026),
        &visit(),
        lines,
    ))
}

#[test]
fn well_formed_input_settles() {
    engine::quote(
        &policy(),
        &person(),
        &Accumulators::new(2026),
        &visit(),
        &[line("1")],
    )
    .unwrap();
}

#[test]
fn bad_lines_name_the_line_and_field() {
    let neg_qty = Line {
        quantity: dec!(-2),
        amount: dec!(0),
        ..line("2")
    };
    assert_eq!(run_lines(&[line("1"), neg_qty]), "lines[1].quantity");
    let zero_qty = Line {
        quantity: dec!(0),
        amount: dec!(0),
        ..line("1")
    };
    assert_eq!(run_lines(&[zero_qty]), "lines[0].quantity");
    let neg_price = Line {
        unit_price: dec!(-10.00),
        amount: dec!(0),
        ..line("1")
    };
    assert_eq!(run_lines(&[neg_price]), "lines[0].unit_price");
    let neg_amount = Line {
        amount: dec!(-20.00),
        ..line("1")
    };
    assert_eq!(run_lines(&[neg_amount]), "lines[0].amount");
    // quantity × price = 20.00; 20.01 is within a fen, 20.02 is not.
    let close = Line {
        amount: dec!(20.01),
        ..line("1")
    };
    run_lines_ok(&[close]);
    let off = Line {
        amount: dec!(20.02),
        ..line("1")
    };
    assert_eq!(run_lines(&[off]), "lines[0].amount");
    let fine = Line {
        amount: dec!(20.001),
        ..line("1")
    };
    assert_eq!(
        run_lines(&[fine]),
        "lines[0].amount",
        "more than two decimals"
    );
    let ratio = Line {
        class: CatalogueClass::B,
        first_selfpay_ratio: dec!(1.5),
        ..line("1")
    };
    assert_eq!(run_lines(&[ratio]), "lines[0].first_selfpay_ratio");
    let cap = Line {
        price_cap: Some(dec!(-1)),
        ..line("1")
    };
    assert_eq!(run_lines(&[cap]), "lines[0].price_cap");
    assert_eq!(run_lines(&[line("1"), line("1")]), "lines[1].line_no");
    assert_eq!(run_lines(&[line("")]), "lines[0].line_no");
    assert_eq!(run_lines(&[]), "lines");
}

fn run_lines_ok(lines: &[Line]) {
    engine::quote(
        &policy(),
        &person(),
        &Accumulators::new(2026),
        &visit(),
        lines,
    )
    .unwrap();
}

#[test]
fn uncovered_visits_and_persons_are_refused() {
    let p = policy();
    let acc = Accumulators::new(2026);
    let lines = [line("1")];
    // The pharmacy kind is covered only at `ungraded` institutions.
    let v = VisitCtx {
        visit_kind: VisitKind::Pharmacy,
        level: HospitalLevel::Level3,
        ..visit()
    };
    assert_eq!(
        refusal_of(engine::quote(&p, &person(), &acc, &v, &lines)),
        "policy 330100 employee does not cover pharmacy visits at level-3 hospital"
    );
    // A policy without chronic coverage.
    let mut no_chronic = p.clone();
    no_chronic.visits.remove(&VisitKind::Chronic);
    no_chronic.caps.chronic = None;
    no_chronic.account.kinds.remove(&VisitKind::Chronic);
    no_chronic.validate().unwrap();
    let v = VisitCtx {
        visit_kind: VisitKind::Chronic,
        ..visit()
    };
    assert_eq!(
        refusal_of(engine::quote(&no_chronic, &person(), &acc, &v, &lines)),
        "policy 330100 employee does not cover chronic visits"
    );
    // Policy not in force on the visit date.
    let v = VisitCtx {
        visit_date: NaiveDate::from_ymd_opt(2025, 12, 31).unwrap(),
        ..visit()
    };
    assert_eq!(
        field_of(engine::quote(
            &p,
            &person(),
            &Accumulators::new(2025),
            &v,
            &lines
        )),
        "visit.visit_date"
    );
    // Accumulators of another year.
    assert_eq!(
        field_of(engine::quote(
            &p,
            &person(),
            &Accumulators::new(2025),
            &visit(),
            &lines
        )),
        "accumulators.year"
    );
    let neg = Accumulators {
        pool_paid: dec!(-1),
        ..acc.clone()
    };
    assert_eq!(
        field_of(engine::quote(&p, &person(), &neg, &visit(), &lines)),
        "accumulators.pool_paid"
    );
    // Person not of this policy.
    let resident = PersonCtx {
        insurance_type: InsuranceType::Resident,
        person_type: PersonType::ResidentAdult,
        ..person()
    };
    assert_eq!(
        field_of(engine::quote(&p, &resident, &acc, &visit(), &lines)),
        "person.insurance_type"
    );
    let mut only_retired = p.clone();
    only_retired.person_types.remove(&PersonType::InService);
    assert_eq!(
        field_of(engine::quote(
            &only_retired,
            &person(),
            &acc,
            &visit(),
            &lines
        )),
        "person.person_type"
    );
    let broke = PersonCtx {
        account_balance: dec!(-5),
        ..person()
    };
    assert_eq!(
        field_of(engine::quote(&p, &broke, &acc, &visit(), &lines)),
        "person.account_balance"
    );
    // A visit whose home region is not the policy's.
    let v = VisitCtx {
        home_region: "330300".to_owned(),
        ..visit()
    };
    assert_eq!(
        field_of(engine::quote(&p, &person(), &acc, &v, &lines)),
        "visit.home_region"
    );
    // A ratio made invalid after validation is still refused by the engine.
    let mut bad = p.clone();
    bad.visits
        .get_mut(&VisitKind::Inpatient)
        .unwrap()
        .pool
        .as_mut()
        .unwrap()
        .ratio
        .get_mut(&HospitalLevel::Level2)
        .unwrap()
        .insert(PersonType::InService, dec!(1.2));
    assert!(engine::quote(&bad, &person(), &acc, &visit(), &lines).is_err());
}

#[test]
fn file_inputs_name_the_field() {
    let visit_toml = |kind: &str, level: &str, qty: &str| {
        format!(
            r#"
visit_kind = "{kind}"
level = "{level}"
institution_code = "330200-H0001"
visit_date = "2026-04-01"
treatment_region = "330200"
home_region = "330100"
[[lines]]
line_no = "1"
class = "a"
quantity = "{qty}"
unit_price = "10.00"
amount = "20.00"
"#
        )
    };
    let err = |text: String| -> String {
        match VisitInput::parse(&text, Format::Toml).and_then(|v| v.to_ctx()) {
            Err(Error::Invalid { field, .. }) => field,
            other => panic!("expected invalid, got {other:?}"),
        }
    };
    assert_eq!(err(visit_toml("dental", "level2", "2")), "visit.visit_kind");
    assert_eq!(err(visit_toml("inpatient", "level4", "2")), "visit.level");
    assert_eq!(
        err(visit_toml("inpatient", "level2", "-2")),
        "lines[0].quantity"
    );
    assert_eq!(
        err(visit_toml("inpatient", "level2", "2.00001")),
        "lines[0].quantity"
    );
    let (v, lines) = VisitInput::parse(&visit_toml("住院", "3", "2"), Format::Toml)
        .unwrap()
        .to_ctx()
        .unwrap();
    assert_eq!(v.visit_kind, VisitKind::Inpatient);
    assert_eq!(lines[0].quantity, dec!(2));

    let person =
        r#"{"insurance_type":"employee","person_type":"boss","accumulators":{"year":2026}}"#;
    match PersonInput::parse(person, Format::Json).and_then(|p| p.to_ctx()) {
        Err(Error::Invalid { field, .. }) => assert_eq!(field, "person.person_type"),
        other => panic!("{other:?}"),
    }
    let person = r#"{"insurance_type":"employee","person_type":"retired","accumulators":{"year":2026,"pool_paid":"1.005"}}"#;
    match PersonInput::parse(person, Format::Json).and_then(|p| p.to_ctx()) {
        Err(Error::Invalid { field, .. }) => assert_eq!(field, "accumulators.pool_paid"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn wire_lines_name_the_field() {
    let wire = |qty: &str, price: &str, amount: &str, class: i32| proto::ClassifiedLine {
        line: Some(proto::FeeLine {
            line_no: "7".to_owned(),
            item_code: "X".to_owned(),
            quantity: qty.to_owned(),
            unit_price: price.to_owned(),
            amount: amount.to_owned(),
            service_date: "2026-04-01".to_owned(),
        }),
        class,
        first_selfpay_ratio: String::new(),
        price_cap: String::new(),
        item_name: String::new(),
    };
    let a = CatalogueClass::A.to_proto();
    let ok = Line::from_proto(&wire("2", "10.00", "20.00", a)).unwrap();
    assert_eq!(ok.amount, dec!(20.00));
    let field = |c: proto::ClassifiedLine| match Line::from_proto(&c)
        .map_err(|e| e.in_field("lines[3]."))
    {
        Err(Error::Invalid { field, .. }) => field,
        other => panic!("{other:?}"),
    };
    assert_eq!(field(wire("-2", "10.00", "20.00", a)), "lines[3].quantity");
    assert_eq!(
        field(wire("2", "-10.00", "20.00", a)),
        "lines[3].unit_price"
    );
    assert_eq!(field(wire("2", "10.00", "20.001", a)), "lines[3].amount");
    assert_eq!(field(wire("2", "10.00", "20.00", 0)), "lines[3].class");
}

#[test]
fn a_filing_dated_after_the_visit_start_covers_only_a_stay() {
    let p = policy();
    let acc = Accumulators::new(2026);
    let lines = [line("1")];
    // Filed on 2026-04-05, after the visit of 2026-04-01.
    let filed_late = |kind| VisitCtx {
        visit_kind: kind,
        filing: Some(engine::FilingCtx {
            filing_type: yidi_common::types::FilingType::LongTermResident,
            treatment_region: "330200".to_owned(),
            institutions: Vec::new(),
            valid_from: NaiveDate::from_ymd_opt(2026, 4, 5).unwrap(),
            valid_to: None,
        }),
        ..visit()
    };
    // An inpatient admitted unfiled may file before discharge settlement: applies.
    let q = engine::quote(
        &p,
        &person(),
        &acc,
        &filed_late(VisitKind::Inpatient),
        &lines,
    )
    .unwrap();
    assert_eq!(
        q.applied_filing_type,
        Some(yidi_common::types::FilingType::LongTermResident)
    );
    // An outpatient visit before the filing's first day is unfiled care.
    let q = engine::quote(
        &p,
        &person(),
        &acc,
        &filed_late(VisitKind::Outpatient),
        &lines,
    )
    .unwrap();
    assert_eq!(
        q.applied_filing_type,
        Some(yidi_common::types::FilingType::Temporary)
    );
    assert!(
        q.trace
            .iter()
            .any(|t| t.contains("does not cover 2026-04-01")),
        "{:?}",
        q.trace
    );
}

/// The file form of a visit: region codes are city codes (a malformed one would be
/// priced as unfiled care), and each line's first self-pay ratio fits its class.
#[test]
fn visit_files_refuse_bad_regions_and_ratios_by_class() {
    use yidi_common::engine::input::{Format, VisitInput, class_ratio};
    use yidi_common::types::CatalogueClass;
    let toml = |treatment: &str, filing_region: &str, b_ratio: &str| {
        format!(
            "visit_kind = \"inpatient\"\nlevel = \"level3\"\ninstitution_code = \"H1\"\nvisit_date = \"2026-03-14\"\n\
             treatment_region = \"{treatment}\"\nhome_region = \"330100\"\n\
             [filing]\nfiling_type = \"referral\"\ntreatment_region = \"{filing_region}\"\nvalid_from = \"2026-03-01\"\n\
             [[lines]]\nline_no = \"1\"\nclass = \"b\"\n{b_ratio}quantity = \"1\"\nunit_price = \"10.00\"\namount = \"10.00\"\n"
        )
    };
    let field = |text: String| match VisitInput::parse(&text, Format::Toml).and_then(|v| v.to_ctx())
    {
        Err(yidi_common::Error::Invalid { field, .. }) => field,
        other => panic!("expected a refusal, got {other:?}"),
    };
    let ratio = "first_selfpay_ratio = \"0.10\"\n";
    let (visit, lines) = VisitInput::parse(&toml("330200", "330200", ratio), Format::Toml)
        .and_then(|v| v.to_ctx())
        .expect("a good visit");
    assert_eq!(
        (
            visit.treatment_region.as_str(),
            lines[0].first_selfpay_ratio
        ),
        ("330200", Decimal::new(10, 2))
    );
    assert_eq!(
        field(toml("3302", "330200", ratio)),
        "visit.treatment_region"
    );
    assert_eq!(
        field(toml("330200", "33020", ratio)),
        "visit.filing.treatment_region"
    );
    assert_eq!(
        field(toml("330200", "330200", "")),
        "lines[0].first_selfpay_ratio"
    );

    assert_eq!(class_ratio(CatalogueClass::B, Some("0")), Ok(Decimal::ZERO));
    assert_eq!(class_ratio(CatalogueClass::A, None), Ok(Decimal::ZERO));
    assert_eq!(class_ratio(CatalogueClass::C, Some(" ")), Ok(Decimal::ZERO));
    for (class, r) in [
        (CatalogueClass::B, None),
        (CatalogueClass::B, Some("")),
        (CatalogueClass::C, Some("0.2")),
    ] {
        match class_ratio(class, r) {
            Err(yidi_common::Error::Invalid { field, .. }) => {
                assert_eq!(field, "first_selfpay_ratio")
            }
            other => panic!("{class:?} {r:?}: {other:?}"),
        }
    }
}
