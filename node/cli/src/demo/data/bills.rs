//! What a planned settlement is made of: how the patient relates to the city, the fee
//! templates per visit kind, and the bill drawn from them.

use std::collections::HashSet;

use chrono::NaiveDate;
use yidi_common::types::{FilingType, HospitalLevel, VisitKind};

use super::*;

// ------------------------------------------------------------------ settlements

/// How a planned settlement relates the patient to the treatment city.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Category {
    /// Treated in the home city.
    Local,
    /// Cross-region under an approved filing.
    Filed(FilingType),
    /// Cross-region without a filing (临时外出).
    Temporary,
}

/// What happens after a successful settlement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    Nothing,
    /// The institution cancels it (NHSA 2208).
    Cancel,
    /// The institution never learned the outcome and reverses the request (冲正, 2601).
    Reverse,
}

/// One fee line to upload.
#[derive(Debug, Clone)]
pub struct Fee {
    pub item_code: String,
    pub quantity: u32,
    pub price_fen: i64,
}

/// One patient's visit, from identification to settlement.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub n: u32,
    pub category: Category,
    pub treatment: usize,
    pub person: Person,
    pub kind: VisitKind,
    pub institution: String,
    pub level: HospitalLevel,
    pub by_card: bool,
    pub use_account: bool,
    pub diagnosis: &'static str,
    /// Days in hospital before today (inpatient only).
    pub days: u32,
    /// Uploaded in two batches for inpatient care (admission and the rest).
    pub fees: Vec<Fee>,
    pub after: After,
}

/// (code suffix, unit price in fen, quantity range)
type Tpl = (&'static str, i64, u32, u32);

const OUTPATIENT_CORE: &[Tpl] = &[("S110200001", 2_500, 1, 1), ("S110200002", 3_800, 1, 1)];
const OUTPATIENT_DRUGS: &[Tpl] = &[
    ("XJ01CA04", 1_250, 1, 3),
    ("XJ01DC02", 3_000, 1, 2),
    ("XJ01MA12", 1_850, 1, 2),
    ("XJ01FA10", 2_200, 1, 2),
    ("XM01AE01", 1_100, 1, 3),
    ("XN02BE01", 450, 1, 4),
    ("XR06AE09", 1_900, 1, 2),
    ("XZA01BAL", 1_650, 1, 3),
    ("XA02BC01", 1_150, 1, 3),
    ("XA11GA01", 980, 1, 2),
    ("XR05FA02", 600, 1, 2),
];
const OUTPATIENT_TESTS: &[Tpl] = &[
    ("S250101015", 2_000, 1, 1),
    ("S310701001", 2_500, 1, 1),
    ("S220201001", 8_000, 1, 1),
    ("S210102015", 7_200, 1, 1),
    ("S250301001", 5_800, 1, 1),
];
const PHARMACY: &[Tpl] = &[
    ("XA10BA02", 1_600, 1, 6),
    ("XC08CA05", 3_200, 1, 4),
    ("XC10AA05", 1_950, 1, 4),
    ("XB01AC06", 1_400, 1, 4),
    ("XN02BE01", 440, 1, 3),
    ("XR05FA02", 600, 1, 3),
    ("XA11GA01", 980, 1, 3),
    ("XA11EA01", 1_200, 1, 2),
    ("XM01AX05", 6_800, 1, 2),
    ("XZA12BBF", 2_800, 1, 3),
    ("XB03BA05", 2_800, 1, 3),
    ("XR03DC03", 4_600, 1, 2),
];
const CHRONIC_DIABETES: &[Tpl] = &[
    ("S110200001", 2_500, 1, 1),
    ("XA10BA02", 1_600, 2, 6),
    ("XA10AE04", 8_400, 1, 3),
    ("MC0112", 4_500, 1, 2),
    ("S250302007", 6_000, 1, 1),
];
const CHRONIC_HYPERTENSION: &[Tpl] = &[
    ("S110200001", 2_500, 1, 1),
    ("XC08CA05", 3_200, 2, 4),
    ("XC09CA04", 2_700, 1, 3),
    ("XC10AA05", 1_950, 1, 3),
    ("S310701001", 2_500, 1, 1),
];
const CHRONIC_DIALYSIS: &[Tpl] = &[("S311000006", 42_000, 4, 8), ("MC0711", 13_000, 4, 8)];
const EMERGENCY: &[Tpl] = &[
    ("S110200005", 2_900, 1, 1),
    ("XB05BB01", 330, 1, 4),
    ("S120400006", 750, 1, 3),
    ("XA03BA01", 250, 1, 2),
    ("S310701001", 2_500, 1, 1),
    ("S210300001", 25_500, 1, 1),
    ("MC0102", 350, 1, 3),
    ("MC0103", 90, 2, 6),
];
/// Per-day items of an admission: quantity = days (× the factor).
const WARD_DAILY: &[(&str, i64, u32)] = &[
    ("S110300001", 3_000, 1),
    ("S110900001", 4_800, 1),
    ("S120100002", 3_000, 1),
    ("S120400006", 750, 2),
    ("XB05BB01", 330, 2),
    ("MC0102", 350, 2),
];
const WARD_TESTS: &[Tpl] = &[
    ("S250101015", 2_000, 2, 4),
    ("S250301001", 5_800, 1, 2),
    ("S310701001", 2_500, 1, 2),
    ("MC0104", 150, 5, 20),
];

/// Diagnoses of admissions and their procedure bundles.
const ADMISSIONS: &[(&str, &[Tpl])] = &[
    (
        "I21.9",
        &[
            ("S330803015", 360_000, 1, 1),
            ("MC0201", 70_000, 1, 2),
            ("XB01AC04", 4_200, 2, 6),
            ("XV08AB09", 29_000, 1, 2),
            ("S111000001", 42_000, 1, 3),
        ],
    ),
    (
        "K80.2",
        &[
            ("S331005009", 275_000, 1, 1),
            ("MC0508", 155_000, 1, 1),
            ("MC0509", 10_000, 2, 4),
            ("XJ01CR05", 4_500, 4, 10),
        ],
    ),
    (
        "K35.8",
        &[
            ("S331003007", 120_000, 1, 1),
            ("XJ01CR05", 4_500, 4, 8),
            ("MC0509", 10_000, 1, 3),
        ],
    ),
    (
        "H25.9",
        &[("S330604013", 240_000, 1, 1), ("MC0406", 195_000, 1, 1)],
    ),
    (
        "M16.9",
        &[
            ("S331508003", 600_000, 1, 1),
            ("MC0305", 880_000, 1, 1),
            ("XB05AA01", 38_000, 1, 3),
            ("S210102015", 7_200, 1, 2),
        ],
    ),
    (
        "J18.9",
        &[
            ("XJ01CR05", 4_500, 8, 20),
            ("S210300001", 25_500, 1, 2),
            ("XA02BC02", 2_600, 2, 8),
        ],
    ),
    (
        "C50.9",
        &[
            ("XL01FD01", 250_000, 1, 3),
            ("S210300004", 50_000, 1, 1),
            ("XB05AA01", 38_000, 1, 2),
            ("XA11EA01", 1_200, 1, 2),
        ],
    ),
];

fn jitter(rng: &mut Rng, fen: i64) -> i64 {
    // ±10 %, whole fen; a small share above the price cap is realistic.
    (fen * rng.range(90, 110) / 100).max(1)
}

/// Adds template lines whose item is in the treatment city's catalogue on `date`.
fn add(rng: &mut Rng, city: &CityData, date: NaiveDate, tpl: &Tpl, fees: &mut Vec<Fee>) {
    let (suffix, price, lo, hi) = *tpl;
    let Some(item) = city.items.get(suffix).filter(|i| i.valid_on(date)) else {
        return;
    };
    if fees.iter().any(|f| f.item_code == item.code) {
        return;
    }
    let quantity = u32::try_from(rng.range(i64::from(lo), i64::from(hi))).unwrap_or(1);
    fees.push(Fee {
        item_code: item.code.clone(),
        quantity,
        price_fen: jitter(rng, price),
    });
}

/// A realistic bill for a visit kind (and the diagnosis it implies).
pub(super) fn bill(
    rng: &mut Rng,
    city: &CityData,
    kind: VisitKind,
    date: NaiveDate,
    days: u32,
) -> (&'static str, Vec<Fee>) {
    let mut fees = Vec::new();
    let diagnosis = match kind {
        VisitKind::Outpatient => {
            let core = *rng.pick(OUTPATIENT_CORE);
            add(rng, city, date, &core, &mut fees);
            for _ in 0..rng.range(1, 3) {
                let t = *rng.pick(OUTPATIENT_DRUGS);
                add(rng, city, date, &t, &mut fees);
            }
            if rng.chance(50) {
                let t = *rng.pick(OUTPATIENT_TESTS);
                add(rng, city, date, &t, &mut fees);
            }
            *rng.pick(&["J06.9", "K29.7", "M54.5", "J20.9", "R51"])
        }
        VisitKind::Pharmacy => {
            for _ in 0..rng.range(1, 4) {
                let t = *rng.pick(PHARMACY);
                add(rng, city, date, &t, &mut fees);
            }
            ""
        }
        VisitKind::Chronic => {
            let (dx, tpl): (&'static str, &[Tpl]) = match rng.weighted(&[45, 45, 10]) {
                0 => ("E11.9", CHRONIC_DIABETES),
                1 => ("I10", CHRONIC_HYPERTENSION),
                _ => ("N18.5", CHRONIC_DIALYSIS),
            };
            for t in tpl {
                add(rng, city, date, t, &mut fees);
            }
            dx
        }
        VisitKind::Emergency => {
            for t in EMERGENCY {
                if rng.chance(70) {
                    add(rng, city, date, t, &mut fees);
                }
            }
            *rng.pick(&["S06.0", "R07.4", "T78.4", "S52.5"])
        }
        VisitKind::Inpatient => {
            let (dx, tpl) = *rng.pick(ADMISSIONS);
            for (suffix, price, per_day) in WARD_DAILY {
                add(
                    rng,
                    city,
                    date,
                    &(*suffix, *price, days * per_day, days * per_day),
                    &mut fees,
                );
            }
            // A few patients ask for a single room (class C, self-paid).
            if rng.chance(15) {
                add(
                    rng,
                    city,
                    date,
                    &("S110900003", 20_000, days, days),
                    &mut fees,
                );
            }
            for t in WARD_TESTS {
                add(rng, city, date, t, &mut fees);
            }
            for t in tpl {
                add(rng, city, date, t, &mut fees);
            }
            dx
        }
    };
    if fees.is_empty() {
        // Every catalogue has a consultation fee; a bill is never empty.
        add(rng, city, date, &("S110200001", 2_500, 1, 1), &mut fees);
    }
    (diagnosis, fees)
}

/// The person pools the planner draws from.
pub struct Pools<'a> {
    pub persons: &'a [Person],
    /// Per city: indices of its persons.
    pub by_home: Vec<Vec<usize>>,
    /// Per treatment city: indices of persons with a filing toward it.
    pub filed_toward: Vec<Vec<usize>>,
}

impl<'a> Pools<'a> {
    #[must_use]
    pub fn new(persons: &'a [Person], cities: usize) -> Self {
        let mut by_home = vec![Vec::new(); cities];
        let mut filed_toward = vec![Vec::new(); cities];
        for (i, p) in persons.iter().enumerate() {
            by_home[p.home].push(i);
            if let Some(f) = &p.filing {
                filed_toward[f.treatment].push(i);
            }
        }
        Self {
            persons,
            by_home,
            filed_toward,
        }
    }
}

/// Draws an unused person from `pool` (no person twice in a run: two concurrent visits
/// of one person would race on their accumulators, which the nodes handle correctly
/// but which would make the demo's numbers harder to read).
pub(super) fn draw(
    rng: &mut Rng,
    pool: &[usize],
    used: &mut HashSet<usize>,
    ok: impl Fn(usize) -> bool,
) -> Option<usize> {
    for _ in 0..64 {
        let i = *rng.pick(pool);
        if !used.contains(&i) && ok(i) {
            used.insert(i);
            return Some(i);
        }
    }
    pool.iter()
        .copied()
        .find(|i| !used.contains(i) && ok(*i))
        .inspect(|i| {
            used.insert(*i);
        })
}
