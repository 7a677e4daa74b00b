//! The demo's data: the sample files shipped in `deploy/` (embedded in the binary, so the
//! demo runs from any directory and inside the container image), and a deterministic
//! generator of persons, filings and bills on top of them.
//!
//! Everything generated is a pure function of the seed and the sizes, so that a re-run
//! sends byte-identical admin requests under the same request ids and the nodes answer
//! them from their idempotency records instead of writing anything twice. Arithmetic on
//! money is integer fen; no floating point anywhere.

/// One city of the demo federation.
#[derive(Debug, Clone, Copy)]
pub struct City {
    pub region: &'static str,
    pub name: &'static str,
    pub zh: &'static str,
    /// County-level codes used for generated ID numbers.
    districts: &'static [&'static str],
    persons_csv: &'static str,
    catalogue_csv: &'static str,
    institutions_csv: &'static str,
    employee_policy: &'static str,
    resident_policy: &'static str,
}

/// The Zhejiang federation of the demo (region codes from DOMAIN.md).
pub const CITIES: [City; 3] = [
    City {
        region: "330100",
        name: "Hangzhou",
        zh: "杭州",
        districts: &["330102", "330105", "330106", "330108", "330109", "330110"],
        persons_csv: include_str!("../../../../../deploy/sample/330100/persons.csv"),
        catalogue_csv: include_str!("../../../../../deploy/sample/330100/catalogue.csv"),
        institutions_csv: include_str!("../../../../../deploy/sample/330100/institutions.csv"),
        employee_policy: include_str!("../../../../../deploy/policies/330100-employee.toml"),
        resident_policy: include_str!("../../../../../deploy/policies/330100-resident.toml"),
    },
    City {
        region: "330200",
        name: "Ningbo",
        zh: "宁波",
        districts: &["330203", "330205", "330206", "330211", "330212"],
        persons_csv: include_str!("../../../../../deploy/sample/330200/persons.csv"),
        catalogue_csv: include_str!("../../../../../deploy/sample/330200/catalogue.csv"),
        institutions_csv: include_str!("../../../../../deploy/sample/330200/institutions.csv"),
        employee_policy: include_str!("../../../../../deploy/policies/330200-employee.toml"),
        resident_policy: include_str!("../../../../../deploy/policies/330200-resident.toml"),
    },
    City {
        region: "330300",
        name: "Wenzhou",
        zh: "温州",
        districts: &["330302", "330303", "330304", "330381"],
        persons_csv: include_str!("../../../../../deploy/sample/330300/persons.csv"),
        catalogue_csv: include_str!("../../../../../deploy/sample/330300/catalogue.csv"),
        institutions_csv: include_str!("../../../../../deploy/sample/330300/institutions.csv"),
        employee_policy: include_str!("../../../../../deploy/policies/330300-employee.toml"),
        resident_policy: include_str!("../../../../../deploy/policies/330300-resident.toml"),
    },
];

/// The provincial clearing centre.
pub const PROVINCE: &str = "330000";

/// The city name of a region code, or the code itself.
#[must_use]
pub fn city_name(region: &str) -> &str {
    if region == PROVINCE {
        return "clearing account";
    }
    CITIES
        .iter()
        .find(|c| c.region == region)
        .map_or(region, |c| c.name)
}

// ------------------------------------------------------------------ PRNG

/// SplitMix64: tiny, fast, and the same sequence on every platform and version (a
/// dependency's generator could change its stream in a minor release and with it every
/// request a re-run sends).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    #[must_use]
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    /// A generator for one purpose, independent of the others' draws.
    #[must_use]
    pub fn derive(seed: u64, purpose: &str) -> Self {
        let mut h = seed;
        for b in purpose.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01B3);
        }
        let mut r = Self::new(h);
        r.next_u64();
        r
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0; the modulo bias is irrelevant at these sizes).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: i64, hi: i64) -> i64 {
        let span = u64::try_from(hi - lo + 1).unwrap_or(1);
        lo + i64::try_from(self.below(span)).unwrap_or(0)
    }

    /// True with `pct` percent probability.
    pub fn chance(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        let i = usize::try_from(self.below(items.len() as u64)).unwrap_or(0);
        &items[i]
    }

    /// An index chosen by integer weights.
    pub fn weighted(&mut self, weights: &[u64]) -> usize {
        let total: u64 = weights.iter().sum();
        let mut x = self.below(total);
        for (i, w) in weights.iter().enumerate() {
            if x < *w {
                return i;
            }
            x -= w;
        }
        weights.len() - 1
    }
}

/// Fen as a yuan string with two decimals.
#[must_use]
pub fn yuan(fen: i64) -> String {
    let sign = if fen < 0 { "-" } else { "" };
    let a = fen.unsigned_abs();
    format!("{sign}{}.{:02}", a / 100, a % 100)
}

mod bills;
mod persons;
mod plan;
mod sample;

pub use bills::*;
pub use persons::*;
pub use plan::*;
pub use sample::*;

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDate;
    use std::collections::HashSet;

    fn cities(today: NaiveDate) -> Vec<CityData> {
        CITIES
            .iter()
            .map(|c| load_city(*c, today).unwrap())
            .collect()
    }

    #[test]
    fn generation_is_deterministic_and_valid() {
        let today = NaiveDate::from_ymd_opt(2026, 11, 23).unwrap();
        let cs = cities(today);
        let generate = || {
            let mut taken = HashSet::new();
            generate_persons(7, 0, 500, &cs, today, &mut taken)
        };
        let (a, b) = (generate(), generate());
        assert_eq!(a.len(), 500);
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x.row(1), y.row(1));
        }
        for p in &a {
            yidi_common::idnum::IdNumber::parse(&p.id_number, "id").unwrap();
            yidi_common::card::parse(&p.card_no, "card").unwrap();
        }
        let mut counts = LoadCounts::default();
        counts.count(&a);
        assert_eq!(counts.by_person_type.len(), 5, "{counts:?}");
        assert!(counts.civil_servants > 0 && counts.not_active > 0);
        assert!(counts.filings.len() >= 4, "{counts:?}");
    }

    #[test]
    fn plans_cover_every_kind_and_a_cancel_and_reverse() {
        let today = NaiveDate::from_ymd_opt(2026, 11, 23).unwrap();
        let cs = cities(today);
        let mut taken = HashSet::new();
        let mut persons = Vec::new();
        for i in 0..3 {
            persons.extend(generate_persons(7, i, 400, &cs, today, &mut taken));
        }
        let pools = Pools::new(&persons, 3);
        let plan = plan(7, 1, 120, &cs, &pools, today);
        assert!(plan.len() >= 110);
        let kinds: HashSet<_> = plan.iter().map(|s| s.kind).collect();
        assert_eq!(kinds.len(), 5, "{kinds:?}");
        assert!(plan.iter().any(|s| s.after == After::Cancel));
        assert!(plan.iter().any(|s| s.after == After::Reverse));
        assert!(plan.iter().any(|s| s.category == Category::Local));
        assert!(plan.iter().any(|s| s.category == Category::Temporary));
        assert!(plan.iter().all(|s| !s.fees.is_empty()));
    }

    #[test]
    fn yuan_formats_fen() {
        assert_eq!(yuan(0), "0.00");
        assert_eq!(yuan(12_345), "123.45");
        assert_eq!(yuan(-7), "-0.07");
    }
}
