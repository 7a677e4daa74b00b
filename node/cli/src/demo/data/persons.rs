//! Generated persons and their planned filings, on top of each city's sample files,
//! and the tally of what was generated.

use std::collections::{BTreeMap, HashSet};

use chrono::{Datelike, Duration as Days, NaiveDate};
use yidi_common::{
    idnum, proto,
    types::{FilingType, HospitalLevel, InstitutionKind, InsuranceType, PersonStatus, PersonType},
};

use super::*;

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
