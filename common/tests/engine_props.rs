//! Property tests of the benefit engine over random policies, persons, visits and bills:
//! the NHSA sum identities, no negative amount, no cap ever exceeded across a sequence of
//! claims, determinism, monotonicity of the patient's share, additivity of outpatient
//! pooling, and the personal account never paying more than its balance.

use chrono::NaiveDate;
use proptest::prelude::*;
use rust_decimal::Decimal;
use yidi_common::engine::{self, Accumulators, FilingCtx, Line, PersonCtx, Quote, VisitCtx};
use yidi_common::money;
use yidi_common::policy::{AccountScope, Deductible, Policy};
use yidi_common::types::{
    CatalogueClass, FilingType, HospitalLevel, InsuranceType, PersonType, VisitKind,
};

fn yuan(fen: u64) -> Decimal {
    Decimal::new(i64::try_from(fen).unwrap(), 2)
}

fn pct(p: u8) -> Decimal {
    Decimal::new(i64::from(p), 2)
}

/// Knobs of a random policy, applied over the annotated sample.
#[derive(Debug, Clone)]
struct PolicyKnobs {
    ratios: Vec<u8>,
    deductibles: Vec<u32>,
    out_deductible: (u32, u32),
    annual_cap: u32,
    outpatient_cap: u32,
    chronic_cap: u32,
    tier_from: u32,
    tier_width: u32,
    tier_ratios: (u8, u8),
    serious_cap: u32,
    serious: bool,
    civil_servant: Option<u8>,
    cuts: Vec<u8>,
    in_scope_account: bool,
    /// Whole yuan and whole percent: no claim-level rounding ever happens.
    integral: bool,
}

fn knobs(integral: bool) -> impl Strategy<Value = PolicyKnobs> {
    (
        prop::collection::vec(0u8..=100, 40),
        prop::collection::vec(0u32..150_000, 12),
        (0u32..200_000, 0u32..200_000),
        (
            10_000u32..2_000_000,
            1_000u32..1_000_000,
            1_000u32..1_000_000,
        ),
        (
            0u32..500_000,
            1u32..1_000_000,
            0u8..=100,
            0u8..=100,
            1_000u32..500_000,
        ),
        any::<bool>(),
        prop::option::of(0u8..=100),
        prop::collection::vec(0u8..=30, 6),
        any::<bool>(),
    )
        .prop_map(
            move |(ratios, deductibles, out_deductible, caps, tiers, serious, cs, cuts, acct)| {
                let (annual_cap, outpatient_cap, chronic_cap) = caps;
                let (tier_from, tier_width, r1, r2, serious_cap) = tiers;
                PolicyKnobs {
                    ratios,
                    deductibles,
                    out_deductible,
                    annual_cap,
                    outpatient_cap: outpatient_cap.min(annual_cap),
                    chronic_cap: chronic_cap.min(annual_cap),
                    tier_from,
                    tier_width,
                    tier_ratios: (r1, r2),
                    serious_cap,
                    serious,
                    civil_servant: cs,
                    cuts,
                    in_scope_account: acct,
                    integral,
                }
            },
        )
}

/// Amount knob in fen, or whole yuan for integral policies.
fn amt(k: &PolicyKnobs, fen: u32) -> Decimal {
    if k.integral {
        Decimal::from(fen / 100)
    } else {
        yuan(u64::from(fen))
    }
}

fn build_policy(k: &PolicyKnobs) -> Policy {
    let mut p = Policy::from_toml(include_str!("../../deploy/policy.sample.toml")).unwrap();
    let mut ri = k.ratios.iter().cycle();
    let mut di = k.deductibles.iter().cycle();
    for rule in p.visits.values_mut() {
        let Some(pool) = rule.pool.as_mut() else {
            continue;
        };
        for row in pool.ratio.values_mut() {
            for r in row.values_mut() {
                *r = pct(*ri.next().unwrap());
            }
        }
        if let Deductible::PerVisit { first, later } = &mut pool.deductible {
            for v in first.values_mut() {
                *v = amt(k, *di.next().unwrap());
            }
            if let Some(later) = later {
                for v in later.values_mut() {
                    *v = amt(k, *di.next().unwrap());
                }
            }
        }
    }
    let od = p.outpatient_deductible.as_mut().unwrap();
    od.insert(PersonType::InService, amt(k, k.out_deductible.0));
    od.insert(PersonType::Retired, amt(k, k.out_deductible.1));
    p.caps.annual = amt(k, k.annual_cap).max(Decimal::ONE);
    p.caps.outpatient_pool = Some(amt(k, k.outpatient_cap).clamp(Decimal::ONE, p.caps.annual));
    p.caps.chronic = Some(amt(k, k.chronic_cap).clamp(Decimal::ONE, p.caps.annual));
    if k.serious && !k.integral {
        let si = p.serious_illness.as_mut().unwrap();
        si.cap = yuan(u64::from(k.serious_cap));
        si.tiers[0].from = yuan(u64::from(k.tier_from));
        si.tiers[0].to = Some(yuan(u64::from(k.tier_from + k.tier_width)));
        si.tiers[0].ratio = pct(k.tier_ratios.0);
        si.tiers[1].from = yuan(u64::from(k.tier_from + k.tier_width));
        si.tiers[1].ratio = pct(k.tier_ratios.1);
    } else {
        p.serious_illness = None;
    }
    match k.civil_servant {
        Some(r) if !k.integral => p.civil_servant.as_mut().unwrap().ratio = pct(r),
        _ => p.civil_servant = None,
    }
    for (rule, cut) in p.cross_region.filing.values_mut().zip(&k.cuts) {
        rule.ratio_cut = pct(*cut);
        rule.no_direct_settlement.clear();
    }
    p.account.scope = if k.in_scope_account {
        AccountScope::InScopeShare
    } else {
        AccountScope::PersonalShare
    };
    p.validate().unwrap();
    p
}

fn line_strategy(integral: bool) -> impl Strategy<Value = Line> {
    (
        0u8..3,
        0u8..=40,
        1u32..2_000,
        0u64..300_000,
        prop::option::of(0u64..300_000),
    )
        .prop_map(move |(class, ratio, qty, price, cap)| {
            let (class, quantity, unit_price, price_cap, first) = if integral {
                // Class A, whole units at whole-yuan prices: no line-level rounding.
                (
                    CatalogueClass::A,
                    Decimal::from(qty % 5 + 1),
                    Decimal::from(price / 100),
                    None,
                    Decimal::ZERO,
                )
            } else {
                (
                    [CatalogueClass::A, CatalogueClass::B, CatalogueClass::C][class as usize],
                    Decimal::new(i64::from(qty), 2),
                    yuan(price),
                    cap.map(yuan),
                    pct(ratio),
                )
            };
            Line {
                line_no: String::new(),
                item_code: "ITEM".to_owned(),
                class,
                first_selfpay_ratio: first,
                price_cap,
                quantity,
                unit_price,
                amount: money::round_fen(quantity * unit_price),
            }
        })
}

fn numbered(mut lines: Vec<Line>) -> Vec<Line> {
    for (i, l) in lines.iter_mut().enumerate() {
        l.line_no = (i + 1).to_string();
    }
    lines
}

fn bill(integral: bool) -> impl Strategy<Value = Vec<Line>> {
    prop::collection::vec(line_strategy(integral), 1..8).prop_map(numbered)
}

#[derive(Debug, Clone)]
struct Who {
    person: PersonCtx,
    visit: VisitCtx,
}

fn who() -> impl Strategy<Value = Who> {
    (
        any::<bool>(),
        any::<bool>(),
        0u64..500_000,
        0usize..5,
        0usize..3,
        0usize..8,
        any::<bool>(),
    )
        .prop_map(|(retired, cs, balance, kind, level, filing, use_account)| {
            let visit_kind = VisitKind::ALL[kind];
            let level = if visit_kind == VisitKind::Pharmacy {
                HospitalLevel::Ungraded
            } else {
                [
                    HospitalLevel::Level1,
                    HospitalLevel::Level2,
                    HospitalLevel::Level3,
                ][level]
            };
            let filing = match filing {
                0..=5 => Some(FilingCtx {
                    filing_type: FilingType::ALL[filing],
                    treatment_region: "330200".to_owned(),
                    institutions: if filing == 0 {
                        vec!["330200-H0002".to_owned()]
                    } else {
                        Vec::new()
                    },
                    valid_from: NaiveDate::from_ymd_opt(2026, 1, 1).unwrap(),
                    valid_to: None,
                }),
                _ => None,
            };
            Who {
                person: PersonCtx {
                    insurance_type: InsuranceType::Employee,
                    person_type: if retired {
                        PersonType::Retired
                    } else {
                        PersonType::InService
                    },
                    civil_servant: cs,
                    account_balance: yuan(balance),
                },
                visit: VisitCtx {
                    visit_kind,
                    level,
                    institution_code: "330200-H0001".to_owned(),
                    visit_date: NaiveDate::from_ymd_opt(2026, 6, 1).unwrap(),
                    treatment_region: "330200".to_owned(),
                    home_region: "330100".to_owned(),
                    filing,
                    use_account,
                },
            }
        })
}

fn accumulators() -> impl Strategy<Value = Accumulators> {
    (
        prop::collection::vec(0u64..3_000_000, 6),
        0u32..4,
        any::<u64>(),
    )
        .prop_map(|(v, admissions, version)| Accumulators {
            year: 2026,
            version: version / 2,
            pool_paid: yuan(v[0]),
            outpatient_pool_paid: yuan(v[1]),
            chronic_pool_paid: yuan(v[2]),
            serious_illness_paid: yuan(v[3]),
            outpatient_deductible_paid: yuan(v[4]),
            admissions,
            inscope_total: yuan(v[5]),
        })
}

fn assert_identities(q: &Quote) {
    let z = Decimal::ZERO;
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
    for (name, v) in [
        ("medfee", q.medfee_sumamt),
        ("fulamt", q.fulamt_ownpay_amt),
        ("overlmt", q.overlmt_selfpay),
        ("preselfpay", q.preselfpay_amt),
        ("inscp", q.inscp_scp_amt),
        ("dedc", q.act_pay_dedc),
        ("hifp", q.hifp_pay),
        ("hifmi", q.hifmi_pay),
        ("hifob", q.hifob_pay),
        ("cvlserv", q.cvlserv_pay),
        ("maf", q.maf_pay),
        ("fund", q.fund_pay_sumamt),
        ("hosp", q.hosp_part_amt),
        ("psn", q.psn_part_amt),
        ("acct", q.acct_pay),
        ("cash", q.psn_cash_pay),
    ] {
        assert!(v >= z, "{name} negative: {v}");
        assert_eq!(v, money::round_fen(v), "{name} is whole fen");
    }
    assert!(q.act_pay_dedc <= q.inscp_scp_amt);
    assert!(
        q.fund_pay_sumamt <= q.inscp_scp_amt,
        "funds pay in-scope only"
    );
    // Per-line detail adds up to the claim.
    let sum = |f: fn(&engine::LineSplit) -> Decimal| q.lines.iter().map(f).sum::<Decimal>();
    assert_eq!(sum(|l| l.amount), q.medfee_sumamt);
    assert_eq!(sum(|l| l.inscp_scp_amt), q.inscp_scp_amt);
    assert_eq!(sum(|l| l.preselfpay_amt), q.preselfpay_amt);
    assert_eq!(sum(|l| l.overlmt_selfpay), q.overlmt_selfpay);
    assert_eq!(sum(|l| l.fulamt_ownpay_amt), q.fulamt_ownpay_amt);
    for l in &q.lines {
        assert_eq!(
            l.amount,
            l.fulamt_ownpay_amt + l.overlmt_selfpay + l.preselfpay_amt + l.inscp_scp_amt
        );
    }
    let funds: Decimal = q
        .funds
        .iter()
        .filter(|f| f.fund != engine::Fund::Acct)
        .map(|f| f.amount)
        .sum();
    assert_eq!(funds, q.fund_pay_sumamt);
    q.split_matches(&q.to_proto_split()).unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn identities_hold_and_nothing_is_negative(
        k in knobs(false), w in who(), acc in accumulators(), lines in bill(false)
    ) {
        let p = build_policy(&k);
        let q = engine::quote(&p, &w.person, &acc, &w.visit, &lines).unwrap();
        assert_identities(&q);
        prop_assert!(q.acct_pay <= w.person.account_balance, "account pays within balance");
        prop_assert_eq!(q.accumulators.version, acc.version + 1);
        // Determinism: the same inputs give the same output, trace included.
        let again = engine::quote(&p, &w.person, &acc, &w.visit, &lines).unwrap();
        prop_assert_eq!(&again, &q);
    }

    #[test]
    fn no_cap_is_ever_exceeded_across_a_sequence_of_claims(
        k in knobs(false),
        claims in prop::collection::vec((who(), bill(false)), 1..10),
    ) {
        let p = build_policy(&k);
        let mut acc = Accumulators::new(2026);
        let mut balance = claims[0].0.person.account_balance;
        let (person_type, civil_servant) =
            (claims[0].0.person.person_type, claims[0].0.person.civil_servant);
        for (w, lines) in &claims {
            let person = PersonCtx {
                person_type,
                civil_servant,
                account_balance: balance,
                ..w.person.clone()
            };
            let q = engine::quote(&p, &person, &acc, &w.visit, lines).unwrap();
            assert_identities(&q);
            prop_assert!(q.acct_pay <= balance);
            balance -= q.acct_pay;
            let a = &q.accumulators;
            prop_assert!(a.pool_paid <= p.caps.annual, "annual cap");
            prop_assert!(a.outpatient_pool_paid <= p.caps.outpatient_pool.unwrap());
            prop_assert!(a.chronic_pool_paid <= p.caps.chronic.unwrap());
            if let Some(si) = &p.serious_illness {
                prop_assert!(a.serious_illness_paid <= si.cap, "serious-illness cap");
            }
            let od = p.outpatient_deductible.as_ref().unwrap()[&person_type];
            prop_assert!(a.outpatient_deductible_paid <= od, "annual deductible met at most once");
            prop_assert!(a.pool_paid <= a.inscope_total);
            prop_assert_eq!(a.version, acc.version + 1);
            acc = q.accumulators;
        }
    }

    #[test]
    fn a_larger_bill_never_lowers_the_patients_share(
        k in knobs(false), w in who(), acc in accumulators(),
        lines in bill(false), extra in prop::collection::vec(line_strategy(false), 1..4),
    ) {
        let p = build_policy(&k);
        let small = engine::quote(&p, &w.person, &acc, &w.visit, &lines).unwrap();
        let mut more = lines.clone();
        more.extend(extra);
        let big = engine::quote(&p, &w.person, &acc, &w.visit, &numbered(more)).unwrap();
        prop_assert!(big.psn_part_amt >= small.psn_part_amt,
            "{} < {}", big.psn_part_amt, small.psn_part_amt);
        prop_assert!(big.fund_pay_sumamt >= small.fund_pay_sumamt);
        prop_assert!(big.medfee_sumamt >= small.medfee_sumamt);
    }

    /// Outpatient pooling (annual deductible, annual and outpatient caps) is additive:
    /// two claims leave the same accumulators as one claim of the combined bill, when no
    /// claim-level rounding happens (whole yuan, whole percent).
    #[test]
    fn outpatient_pooling_accumulates_like_one_combined_claim(
        k in knobs(true), w in who(), first in bill(true), second in bill(true),
        pharmacy in any::<bool>(),
    ) {
        let mut p = build_policy(&k);
        // Pool pharmacy purchases like outpatient care for this test.
        if pharmacy {
            let rule = p.visits.get_mut(&VisitKind::Pharmacy).unwrap();
            let mut ratio = std::collections::BTreeMap::new();
            ratio.insert(
                HospitalLevel::Ungraded,
                [(PersonType::InService, pct(k.ratios[0])), (PersonType::Retired, pct(k.ratios[1]))]
                    .into_iter()
                    .collect(),
            );
            rule.pool = Some(yidi_common::policy::PoolRule { deductible: Deductible::Annual, ratio });
            p.validate().unwrap();
        }
        let mut visit = w.visit.clone();
        if pharmacy {
            visit.visit_kind = VisitKind::Pharmacy;
            visit.level = HospitalLevel::Ungraded;
        } else {
            visit.visit_kind = VisitKind::Outpatient;
            if visit.level == HospitalLevel::Ungraded {
                visit.level = HospitalLevel::Level1;
            }
        }
        let person = PersonCtx { civil_servant: false, ..w.person.clone() };
        let acc = Accumulators::new(2026);
        let q1 = engine::quote(&p, &person, &acc, &visit, &first).unwrap();
        let q2 = engine::quote(&p, &person, &q1.accumulators, &visit, &second).unwrap();
        let mut both = first.clone();
        both.extend(second.iter().cloned());
        let q = engine::quote(&p, &person, &acc, &visit, &numbered(both)).unwrap();
        let two = Accumulators { version: 0, ..q2.accumulators.clone() };
        let one = Accumulators { version: 0, ..q.accumulators.clone() };
        prop_assert_eq!(two, one);
        prop_assert_eq!(q1.hifp_pay + q2.hifp_pay, q.hifp_pay);
        prop_assert_eq!(q1.act_pay_dedc + q2.act_pay_dedc, q.act_pay_dedc);
        prop_assert_eq!(q1.psn_part_amt + q2.psn_part_amt, q.psn_part_amt);
    }
}
