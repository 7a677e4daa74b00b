//! The demo's data: the sample files shipped in `deploy/` (embedded in the binary, so the
//! demo runs from any directory and inside the container image), and a deterministic
//! generator of persons, filings and bills on top of them.
//!
//! Everything generated is a pure function of the seed and the sizes, so that a re-run
//! sends byte-identical admin requests under the same request ids and the nodes answer
//! them from their idempotency records instead of writing anything twice. Arithmetic on
//! money is integer fen; no floating point anywhere.

use std::collections::{BTreeMap, HashMap, HashSet};

use anyhow::Context;
use chrono::{Datelike, Duration as Days, NaiveDate};
use yidi_common::{
    idnum,
    policy::Policy,
    proto,
    types::{
        AgreementStatus, FilingType, HospitalLevel, InstitutionKind, InsuranceType, PersonStatus,
        PersonType, VisitKind,
    },
};

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
        persons_csv: include_str!("../../../../deploy/sample/330100/persons.csv"),
        catalogue_csv: include_str!("../../../../deploy/sample/330100/catalogue.csv"),
        institutions_csv: include_str!("../../../../deploy/sample/330100/institutions.csv"),
        employee_policy: include_str!("../../../../deploy/policies/330100-employee.toml"),
        resident_policy: include_str!("../../../../deploy/policies/330100-resident.toml"),
    },
    City {
        region: "330200",
        name: "Ningbo",
        zh: "宁波",
        districts: &["330203", "330205", "330206", "330211", "330212"],
        persons_csv: include_str!("../../../../deploy/sample/330200/persons.csv"),
        catalogue_csv: include_str!("../../../../deploy/sample/330200/catalogue.csv"),
        institutions_csv: include_str!("../../../../deploy/sample/330200/institutions.csv"),
        employee_policy: include_str!("../../../../deploy/policies/330200-employee.toml"),
        resident_policy: include_str!("../../../../deploy/policies/330200-resident.toml"),
    },
    City {
        region: "330300",
        name: "Wenzhou",
        zh: "温州",
        districts: &["330302", "330303", "330304", "330381"],
        persons_csv: include_str!("../../../../deploy/sample/330300/persons.csv"),
        catalogue_csv: include_str!("../../../../deploy/sample/330300/catalogue.csv"),
        institutions_csv: include_str!("../../../../deploy/sample/330300/institutions.csv"),
        employee_policy: include_str!("../../../../deploy/policies/330300-employee.toml"),
        resident_policy: include_str!("../../../../deploy/policies/330300-resident.toml"),
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

// ------------------------------------------------------------------ sample files

/// A person of the federation as the demo knows them.
#[derive(Debug, Clone)]
pub struct Person {
    pub id_number: String,
    pub name: String,
    pub card_no: String,
    pub home: usize,
    pub insurance: InsuranceType,
    pub person_type: PersonType,
    pub civil_servant: bool,
    pub status: PersonStatus,
    pub balance_fen: i64,
    pub enrolled_since: NaiveDate,
    pub filing: Option<PlannedFiling>,
}

impl Person {
    /// The admin API's import row.
    #[must_use]
    pub fn row(&self, row: u64) -> proto::PersonRow {
        proto::PersonRow {
            row,
            id_number: self.id_number.clone(),
            name: self.name.clone(),
            card_no: self.card_no.clone(),
            insurance_type: self.insurance.as_str().to_owned(),
            person_type: self.person_type.as_str().to_owned(),
            civil_servant: self.civil_servant.to_string(),
            status: self.status.as_str().to_owned(),
            account_balance: yuan(self.balance_fen),
            enrolled_since: self.enrolled_since.to_string(),
        }
    }
}

/// A filing the demo applies for at the person's home node and approves.
#[derive(Debug, Clone)]
pub struct PlannedFiling {
    pub filing_type: FilingType,
    pub treatment: usize,
    pub institutions: Vec<String>,
    pub valid_from: NaiveDate,
    pub valid_to: Option<NaiveDate>,
    pub note: &'static str,
}

/// A designated institution.
#[derive(Debug, Clone)]
pub struct Institution {
    pub code: String,
    pub kind: InstitutionKind,
    pub level: HospitalLevel,
    /// Agreement active today.
    pub usable: bool,
    pub proto: proto::Institution,
}

/// A catalogue item (only what bills need).
#[derive(Debug, Clone)]
pub struct Item {
    pub code: String,
    pub valid_from: NaiveDate,
    pub valid_to: Option<NaiveDate>,
}

impl Item {
    fn valid_on(&self, d: NaiveDate) -> bool {
        self.valid_from <= d && self.valid_to.is_none_or(|to| d <= to)
    }
}

/// Everything the demo knows about one city.
#[derive(Debug)]
pub struct CityData {
    pub city: City,
    pub sample_persons: Vec<proto::PersonRow>,
    pub catalogue_rows: Vec<proto::CatalogueRow>,
    pub institutions: Vec<Institution>,
    /// Item by code suffix (`XJ01CA04`).
    pub items: HashMap<String, Item>,
    pub employee_policy: Policy,
    pub resident_policy: Policy,
}

impl CityData {
    #[must_use]
    pub fn policy(&self, it: InsuranceType) -> &Policy {
        match it {
            InsuranceType::Employee => &self.employee_policy,
            InsuranceType::Resident => &self.resident_policy,
        }
    }

    /// Usable institutions of a kind (and, for hospitals, one of `levels`).
    fn usable(&self, kind: InstitutionKind, levels: &[HospitalLevel]) -> Vec<&Institution> {
        self.institutions
            .iter()
            .filter(|i| {
                i.usable
                    && i.kind == kind
                    && (kind == InstitutionKind::Pharmacy || levels.contains(&i.level))
            })
            .collect()
    }
}

fn csv_records(text: &str) -> anyhow::Result<(csv::StringRecord, Vec<csv::StringRecord>)> {
    let mut r = csv::ReaderBuilder::new().from_reader(text.as_bytes());
    let header = r.headers()?.clone();
    let rows = r.records().collect::<Result<Vec<_>, _>>()?;
    Ok((header, rows))
}

fn col(header: &csv::StringRecord, rec: &csv::StringRecord, name: &str) -> String {
    header
        .iter()
        .position(|h| h.trim_start_matches('\u{feff}') == name)
        .and_then(|i| rec.get(i))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

fn date_opt(s: &str) -> anyhow::Result<Option<NaiveDate>> {
    if s.is_empty() {
        Ok(None)
    } else {
        Ok(Some(s.parse().with_context(|| format!("date {s:?}"))?))
    }
}

fn fen_opt(s: &str) -> anyhow::Result<Option<i64>> {
    if s.is_empty() {
        return Ok(None);
    }
    let (whole, frac) = s.split_once('.').unwrap_or((s, "0"));
    let frac = format!("{frac:0<2}");
    let fen = whole.parse::<i64>()? * 100 + frac.get(..2).unwrap_or("00").parse::<i64>()?;
    Ok(Some(fen))
}

/// Parses the embedded sample files of a city.
pub fn load_city(city: City, today: NaiveDate) -> anyhow::Result<CityData> {
    let (h, rows) = csv_records(city.persons_csv)?;
    let sample_persons = rows
        .iter()
        .enumerate()
        .map(|(i, r)| proto::PersonRow {
            row: i as u64 + 2,
            id_number: col(&h, r, "id_number"),
            name: col(&h, r, "name"),
            card_no: col(&h, r, "card_no"),
            insurance_type: col(&h, r, "insurance_type"),
            person_type: col(&h, r, "person_type"),
            civil_servant: col(&h, r, "civil_servant"),
            status: col(&h, r, "status"),
            account_balance: col(&h, r, "account_balance"),
            enrolled_since: col(&h, r, "enrolled_since"),
        })
        .collect();

    let (h, rows) = csv_records(city.catalogue_csv)?;
    let mut catalogue_rows = Vec::new();
    let mut items = HashMap::new();
    for (i, r) in rows.iter().enumerate() {
        let row = proto::CatalogueRow {
            row: i as u64 + 2,
            code: col(&h, r, "code"),
            name: col(&h, r, "name"),
            category: col(&h, r, "category"),
            class: col(&h, r, "class"),
            first_selfpay_ratio: col(&h, r, "first_selfpay_ratio"),
            price_cap: col(&h, r, "price_cap"),
            unit: col(&h, r, "unit"),
            valid_from: col(&h, r, "valid_from"),
            valid_to: col(&h, r, "valid_to"),
            free_of_charge: String::new(),
        };
        let suffix = row
            .code
            .split_once('-')
            .map_or(row.code.as_str(), |(_, s)| s)
            .to_owned();
        items.insert(
            suffix,
            Item {
                code: row.code.clone(),
                valid_from: date_opt(&row.valid_from)?.unwrap_or(NaiveDate::MIN),
                valid_to: date_opt(&row.valid_to)?,
            },
        );
        catalogue_rows.push(row);
    }

    let (h, rows) = csv_records(city.institutions_csv)?;
    let mut institutions = Vec::new();
    for r in &rows {
        let kind = InstitutionKind::parse(&col(&h, r, "kind"), "kind")?;
        let level = HospitalLevel::parse(&col(&h, r, "level"), "level")?;
        let status = AgreementStatus::parse(&col(&h, r, "agreement_status"), "agreement_status")?;
        let from = date_opt(&col(&h, r, "agreement_from"))?;
        let to = date_opt(&col(&h, r, "agreement_to"))?;
        let usable = status == AgreementStatus::Active
            && from.is_none_or(|f| f <= today)
            && to.is_none_or(|t| today <= t);
        let code = col(&h, r, "code");
        institutions.push(Institution {
            proto: proto::Institution {
                code: code.clone(),
                name: col(&h, r, "name"),
                kind: kind.to_proto(),
                level: level.to_proto(),
                agreement_status: status.to_proto(),
                agreement_from: col(&h, r, "agreement_from"),
                agreement_to: col(&h, r, "agreement_to"),
            },
            code,
            kind,
            level,
            usable,
        });
    }
    Ok(CityData {
        city,
        sample_persons,
        catalogue_rows,
        institutions,
        items,
        employee_policy: Policy::from_toml(city.employee_policy)
            .with_context(|| format!("{} employee policy", city.region))?,
        resident_policy: Policy::from_toml(city.resident_policy)
            .with_context(|| format!("{} resident policy", city.region))?,
    })
}

// ------------------------------------------------------------------ persons

const SURNAMES: &[&str] = &[
    "王", "李", "张", "刘", "陈", "杨", "黄", "赵", "吴", "周", "徐", "孙", "马", "朱", "胡", "郭",
    "何", "林", "罗", "高", "郑", "梁", "谢", "宋", "唐", "许", "韩", "冯", "邓", "曹", "彭", "曾",
    "肖", "田", "董", "潘", "袁", "蔡", "蒋", "余", "叶", "程", "魏", "苏", "吕", "丁", "沈", "姚",
    "卢", "姜", "钟", "陆", "汪", "范", "金", "方", "邵", "应", "楼", "俞", "章", "项",
];
const GIVEN: &[&str] = &[
    "伟", "芳", "娜", "敏", "静", "丽", "强", "磊", "军", "洋", "勇", "艳", "杰", "娟", "涛", "明",
    "超", "秀", "霞", "平", "刚", "桂", "英", "华", "建", "国", "文", "辉", "玲", "红", "斌", "宇",
    "浩", "凯", "婷", "雪", "琳", "晨", "欣", "怡", "佳", "子", "涵", "睿", "博", "轩", "萱", "梓",
    "俊", "泽", "思", "雨", "嘉", "晓", "志", "海", "春", "亮", "慧", "琴", "瑶", "鑫", "诗", "航",
];

fn name(rng: &mut Rng) -> String {
    let mut s = (*rng.pick(SURNAMES)).to_owned();
    let given = *rng.pick(GIVEN);
    s.push_str(given);
    if rng.chance(70) {
        let more = *rng.pick(GIVEN);
        s.push_str(more);
    }
    s
}

fn birth(rng: &mut Rng, from_year: i32, to_year: i32) -> NaiveDate {
    let y = i32::try_from(rng.range(i64::from(from_year), i64::from(to_year))).unwrap_or(1970);
    let doy = u32::try_from(rng.range(1, 365)).unwrap_or(1);
    NaiveDate::from_yo_opt(y, doy)
        .unwrap_or_else(|| NaiveDate::from_ymd_opt(y, 1, 1).unwrap_or_default())
}

fn first_of_month(d: NaiveDate) -> NaiveDate {
    d.with_day(1).unwrap_or(d)
}

fn last_of_month(d: NaiveDate) -> NaiveDate {
    let first = first_of_month(d);
    let next = if first.month() == 12 {
        NaiveDate::from_ymd_opt(first.year() + 1, 1, 1)
    } else {
        NaiveDate::from_ymd_opt(first.year(), first.month() + 1, 1)
    };
    next.map_or(d, |n| n - Days::days(1))
}

/// Generates `n` persons of city `home` (deterministic in seed, n and the city) with
/// valid ID numbers distinct from `taken`, every insurance and person type, civil
/// servants, account balances, a few enrolments that are not active, and about one
/// in ten with an approved filing toward another city of every filing type.
pub fn generate_persons(
    seed: u64,
    home: usize,
    n: u32,
    cities: &[CityData],
    today: NaiveDate,
    taken: &mut HashSet<String>,
) -> Vec<Person> {
    let city = cities[home].city;
    let mut rng = Rng::derive(seed, &format!("persons-{}-{n}", city.region));
    let this_year = today.year();
    let mut out = Vec::with_capacity(n as usize);
    for i in 0..n {
        let (insurance, person_type, b) = match rng.weighted(&[33, 14, 28, 13, 12]) {
            0 => (
                InsuranceType::Employee,
                PersonType::InService,
                birth(&mut rng, this_year - 60, this_year - 20),
            ),
            1 => (
                InsuranceType::Employee,
                PersonType::Retired,
                birth(&mut rng, this_year - 90, this_year - 58),
            ),
            2 => (
                InsuranceType::Resident,
                PersonType::ResidentAdult,
                birth(&mut rng, this_year - 59, this_year - 18),
            ),
            3 => (
                InsuranceType::Resident,
                PersonType::ResidentMinor,
                birth(&mut rng, this_year - 17, this_year - 1),
            ),
            _ => (
                InsuranceType::Resident,
                PersonType::ResidentElderly,
                birth(&mut rng, this_year - 95, this_year - 60),
            ),
        };
        let id = loop {
            let district = *rng.pick(city.districts);
            let seq = u16::try_from(rng.below(1000)).unwrap_or(0);
            let id = idnum::make(district, b, seq);
            if taken.insert(id.clone()) {
                break id;
            }
        };
        let status = match rng.below(1000) {
            0..=959 => PersonStatus::Active,
            960..=979 => PersonStatus::Suspended,
            980..=989 => PersonStatus::Terminated,
            _ if matches!(
                person_type,
                PersonType::Retired | PersonType::ResidentElderly
            ) =>
            {
                PersonStatus::Deceased
            }
            _ => PersonStatus::Suspended,
        };
        let civil_servant = insurance == InsuranceType::Employee && rng.chance(7);
        // Residents have no personal account; employees' balances grow with age.
        let balance_fen = match person_type {
            PersonType::InService => rng.range(0, 2_000_000),
            PersonType::Retired => rng.range(300_000, 6_000_000),
            _ => 0,
        };
        let earliest = match insurance {
            InsuranceType::Employee => NaiveDate::from_ymd_opt(2001, 1, 1),
            InsuranceType::Resident => NaiveDate::from_ymd_opt(2017, 1, 1),
        }
        .unwrap_or(b);
        let since_year =
            i32::try_from(rng.range(i64::from(earliest.year()), i64::from(this_year - 1)))
                .unwrap_or(2020);
        let enrolled_since =
            NaiveDate::from_ymd_opt(since_year, u32::try_from(rng.range(1, 12)).unwrap_or(1), 1)
                .unwrap_or(earliest)
                .max(b)
                .max(earliest);
        let mut p = Person {
            card_no: format!("ZJ{}{:07}", &city.region[..4], i + 1),
            id_number: id,
            name: name(&mut rng),
            home,
            insurance,
            person_type,
            civil_servant,
            status,
            balance_fen,
            enrolled_since,
            filing: None,
        };
        if status == PersonStatus::Active {
            p.filing = plan_filing(&mut rng, &p, cities, today);
        }
        out.push(p);
    }
    out
}

/// About one active person in ten files for care in another city.
fn plan_filing(
    rng: &mut Rng,
    p: &Person,
    cities: &[CityData],
    today: NaiveDate,
) -> Option<PlannedFiling> {
    let others: Vec<usize> = (0..cities.len()).filter(|c| *c != p.home).collect();
    let treatment = *rng.pick(&others);
    let long_term_from = NaiveDate::from_ymd_opt(
        today.year() - 1,
        u32::try_from(rng.range(1, 12)).unwrap_or(1),
        1,
    )?;
    let (filing_type, valid_from, valid_to, note) = match p.person_type {
        PersonType::Retired if rng.chance(22) => (
            FilingType::ResettledRetiree,
            long_term_from,
            None,
            "随子女异地安置",
        ),
        PersonType::InService if rng.chance(8) => (
            FilingType::PostedWorker,
            long_term_from,
            None,
            "单位派驻异地工作",
        ),
        PersonType::ResidentAdult | PersonType::ResidentElderly if rng.chance(6) => (
            FilingType::LongTermResident,
            long_term_from,
            None,
            "异地居住满一年",
        ),
        // Short filings cover whole months so that a re-run within the month sends the
        // same request.
        _ if rng.chance(4) => {
            let prev = first_of_month(first_of_month(today) - Days::days(1));
            let next_end = last_of_month(last_of_month(today) + Days::days(1));
            (
                FilingType::Referral,
                prev,
                Some(next_end),
                "转诊: 上级医院专科诊疗",
            )
        }
        _ if rng.chance(2) => (
            FilingType::Emergency,
            first_of_month(today),
            Some(last_of_month(today)),
            "急诊抢救",
        ),
        _ => return None,
    };
    // Long-term filings may name two or three designated hospitals there (Liaoning).
    let mut institutions = Vec::new();
    if filing_type.is_long_term() && rng.chance(35) {
        let candidates = cities[treatment].usable(
            InstitutionKind::Hospital,
            &[HospitalLevel::Level2, HospitalLevel::Level3],
        );
        let k = usize::try_from(rng.range(2, 3)).unwrap_or(2);
        while institutions.len() < k.min(candidates.len()) {
            let c = rng.pick(&candidates).code.clone();
            if !institutions.contains(&c) {
                institutions.push(c);
            }
        }
        institutions.sort();
    }
    Some(PlannedFiling {
        filing_type,
        treatment,
        institutions,
        valid_from,
        valid_to,
        note,
    })
}

/// Reads a sample person row back into the demo's view of a person.
pub fn sample_person(home: usize, row: &proto::PersonRow) -> Option<Person> {
    Some(Person {
        id_number: row.id_number.clone(),
        name: row.name.clone(),
        card_no: row.card_no.clone(),
        home,
        insurance: InsuranceType::parse(&row.insurance_type, "insurance_type").ok()?,
        person_type: PersonType::parse(&row.person_type, "person_type").ok()?,
        civil_servant: matches!(row.civil_servant.as_str(), "true" | "1"),
        status: PersonStatus::parse(&row.status, "status").ok()?,
        balance_fen: fen_opt(&row.account_balance).ok().flatten().unwrap_or(0),
        enrolled_since: row.enrolled_since.parse().ok()?,
        filing: None,
    })
}

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
fn bill(
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
fn draw(
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

/// Counts for the "what the federation holds" table.
#[derive(Debug, Default)]
pub struct LoadCounts {
    pub persons_generated: u64,
    pub persons_sample: u64,
    pub by_person_type: BTreeMap<String, u64>,
    pub civil_servants: u64,
    pub not_active: u64,
    pub filings: BTreeMap<String, u64>,
    pub filings_named: u64,
}

impl LoadCounts {
    /// Tallies the persons of one city.
    pub fn count(&mut self, persons: &[Person]) {
        for p in persons {
            *self
                .by_person_type
                .entry(p.person_type.as_str().to_owned())
                .or_default() += 1;
            self.civil_servants += u64::from(p.civil_servant);
            self.not_active += u64::from(p.status != PersonStatus::Active);
            if let Some(f) = &p.filing {
                *self
                    .filings
                    .entry(f.filing_type.as_str().to_owned())
                    .or_default() += 1;
                self.filings_named += u64::from(!f.institutions.is_empty());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
