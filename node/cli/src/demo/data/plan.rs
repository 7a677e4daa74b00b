//! The plan of one run's settlements: who is treated where, for what, and what happens
//! after (a cancellation, a 冲正).

use std::collections::HashSet;

use chrono::{Datelike, Duration as Days, NaiveDate};
use yidi_common::types::{FilingType, HospitalLevel, InstitutionKind, VisitKind};

use super::*;

fn levels_for(kind: VisitKind, rng: &mut Rng) -> Vec<HospitalLevel> {
    use HospitalLevel::{Level1, Level2, Level3};
    match kind {
        VisitKind::Outpatient => match rng.weighted(&[40, 35, 25]) {
            0 => vec![Level1],
            1 => vec![Level2],
            _ => vec![Level3],
        },
        VisitKind::Chronic => vec![Level1, Level2, Level3],
        VisitKind::Inpatient | VisitKind::Emergency => {
            if rng.chance(70) {
                vec![Level3]
            } else {
                vec![Level2]
            }
        }
        VisitKind::Pharmacy => vec![HospitalLevel::Ungraded],
    }
}

/// Plans `n` settlements for run `run`: about a quarter local, 45 % under a filing, the
/// rest unfiled temporary visits; at least one cancellation and one 冲正.
pub fn plan(
    seed: u64,
    run: u32,
    n: u32,
    cities: &[CityData],
    pools: &Pools<'_>,
    today: NaiveDate,
) -> Vec<Scenario> {
    let mut rng = Rng::derive(seed, &format!("run-{run}"));
    let mut used = HashSet::new();
    let mut out = Vec::with_capacity(n as usize);
    let cancel_every = 150;
    let reverse_every = 250;
    let jan1 = NaiveDate::from_ymd_opt(today.year(), 1, 1).unwrap_or(today);
    for k in 0..n {
        let after = if k % cancel_every == 7 || (n <= 7 && k == 0) {
            After::Cancel
        } else if k % reverse_every == 11 || (n <= 11 && k == n.saturating_sub(1) && n > 1) {
            After::Reverse
        } else {
            After::Nothing
        };
        // The cancellation and the 冲正 use filed patients, who settle directly.
        let cat = if after == After::Nothing {
            rng.weighted(&[25, 45, 30])
        } else {
            1
        };
        let chosen = match cat {
            0 => {
                let t = usize::try_from(rng.below(cities.len() as u64)).unwrap_or(0);
                draw(&mut rng, &pools.by_home[t], &mut used, |_| true)
                    .map(|i| (t, i, Category::Local))
            }
            1 => {
                let t = usize::try_from(rng.below(cities.len() as u64)).unwrap_or(0);
                draw(&mut rng, &pools.filed_toward[t], &mut used, |_| true).map(|i| {
                    let ft = pools.persons[i]
                        .filing
                        .as_ref()
                        .map_or(FilingType::Temporary, |f| f.filing_type);
                    (t, i, Category::Filed(ft))
                })
            }
            _ => {
                let t = usize::try_from(rng.below(cities.len() as u64)).unwrap_or(0);
                let home =
                    (t + 1 + usize::try_from(rng.below(cities.len() as u64 - 1)).unwrap_or(0))
                        % cities.len();
                draw(&mut rng, &pools.by_home[home], &mut used, |i| {
                    pools.persons[i]
                        .filing
                        .as_ref()
                        .is_none_or(|f| f.treatment != t)
                })
                .map(|i| (t, i, Category::Temporary))
            }
        };
        let Some((t, pi, category)) = chosen else {
            continue;
        };
        let person = pools.persons[pi].clone();
        let home_policy = cities[person.home].policy(person.insurance);
        let employee = person.insurance == yidi_common::types::InsuranceType::Employee;
        let mut kind = match category {
            Category::Filed(FilingType::Referral) => {
                if rng.chance(70) {
                    VisitKind::Inpatient
                } else {
                    VisitKind::Outpatient
                }
            }
            Category::Filed(FilingType::Emergency) => {
                if rng.chance(60) {
                    VisitKind::Emergency
                } else {
                    VisitKind::Inpatient
                }
            }
            Category::Temporary => match rng.weighted(&[25, 10, 35, 30]) {
                0 => VisitKind::Outpatient,
                1 => VisitKind::Pharmacy,
                2 => VisitKind::Inpatient,
                _ => VisitKind::Emergency,
            },
            _ => match rng.weighted(&[40, if employee { 18 } else { 0 }, 15, 20, 7]) {
                0 => VisitKind::Outpatient,
                1 => VisitKind::Pharmacy,
                2 => VisitKind::Chronic,
                3 => VisitKind::Inpatient,
                _ => VisitKind::Emergency,
            },
        };
        if after != After::Nothing {
            kind = if k % 2 == 0 {
                VisitKind::Outpatient
            } else {
                VisitKind::Inpatient
            };
        }
        // Care the home policy does not cover at all is rarely attempted; unfiled care a
        // policy refuses is attempted (the patient then pays in full and claims at home).
        if !home_policy.visits.contains_key(&kind) && category != Category::Temporary {
            kind = VisitKind::Inpatient;
        }
        let city = &cities[t];
        let named = person
            .filing
            .as_ref()
            .filter(|f| {
                f.treatment == t && !f.institutions.is_empty() && kind != VisitKind::Pharmacy
            })
            .map(|f| f.institutions.clone());
        let mut levels = levels_for(kind, &mut rng);
        if let Some(rule) = home_policy.visits.get(&kind) {
            let allowed: Vec<_> = levels
                .iter()
                .copied()
                .filter(|l| rule.levels.contains(l))
                .collect();
            if !allowed.is_empty() {
                levels = allowed;
            } else if kind != VisitKind::Pharmacy {
                levels = rule.levels.iter().copied().collect();
            }
        }
        // Patients mostly go to a hospital their filing names, at a level the home
        // policy covers for this kind of care.
        let named: Vec<&Institution> = named
            .map(|codes| {
                city.institutions
                    .iter()
                    .filter(|i| i.usable && codes.contains(&i.code) && levels.contains(&i.level))
                    .collect()
            })
            .unwrap_or_default();
        let inst = match named.as_slice() {
            [_, ..] if rng.chance(90) => Some((*rng.pick(&named)).clone()),
            _ => {
                let kind_of = if kind == VisitKind::Pharmacy {
                    InstitutionKind::Pharmacy
                } else {
                    InstitutionKind::Hospital
                };
                let c = city.usable(kind_of, &levels);
                let c = if c.is_empty() {
                    city.usable(
                        kind_of,
                        &[
                            HospitalLevel::Level1,
                            HospitalLevel::Level2,
                            HospitalLevel::Level3,
                        ],
                    )
                } else {
                    c
                };
                (!c.is_empty()).then(|| (*rng.pick(&c)).clone())
            }
        };
        let Some(inst) = inst else {
            continue;
        };
        let days = if kind == VisitKind::Inpatient {
            let d = u32::try_from(rng.range(2, 12)).unwrap_or(3);
            // Admission stays in this calendar year: the year's policy and accumulators.
            d.min(u32::try_from((today - jan1).num_days()).unwrap_or(0))
        } else {
            0
        };
        let admitted = today - Days::days(i64::from(days));
        let (diagnosis, fees) = bill(&mut rng, city, kind, admitted, days.max(1));
        let use_account = employee
            && person.balance_fen > 0
            && match kind {
                VisitKind::Outpatient | VisitKind::Pharmacy | VisitKind::Chronic => rng.chance(75),
                _ => rng.chance(40),
            };
        out.push(Scenario {
            n: k,
            category,
            treatment: t,
            level: inst.level,
            institution: inst.code,
            kind,
            // Some sample persons have no card yet: they are identified by ID number.
            by_card: rng.chance(75) && !person.card_no.is_empty(),
            use_account,
            diagnosis,
            days,
            fees,
            after,
            person,
        });
    }
    out
}
