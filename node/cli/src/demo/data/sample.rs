//! The sample files shipped in `deploy/` for each city (persons, institutions,
//! catalogue, policies), embedded in the binary and parsed into a [`CityData`].

use std::collections::HashMap;

use anyhow::Context;
use chrono::NaiveDate;
use yidi_common::{
    policy::Policy,
    proto,
    types::{
        AgreementStatus, FilingType, HospitalLevel, InstitutionKind, InsuranceType, PersonStatus,
        PersonType,
    },
};

use super::*;

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
    pub(super) fn valid_on(&self, d: NaiveDate) -> bool {
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
    pub(super) fn usable(
        &self,
        kind: InstitutionKind,
        levels: &[HospitalLevel],
    ) -> Vec<&Institution> {
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

pub(super) fn fen_opt(s: &str) -> anyhow::Result<Option<i64>> {
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
