//! File forms of the engine's inputs, for `yidi quote` and for tests: a person with
//! year-to-date accumulators, and a visit with its classified fee lines. TOML or JSON,
//! amounts and ratios as decimal strings (as in policy files and on the wire). The
//! field names are those of the wire messages (`EligibilityResponse`, `ClaimVisit`,
//! `ClassifiedLine`), so an integrator can reuse what they already send.

use serde::{Deserialize, Serialize};

use super::convert::parse_quantity;
use super::{Accumulators, FilingCtx, Line, PersonCtx, VisitCtx};
use crate::money::{self, Sign};
use crate::region::RegionCode;
use crate::types::{
    CatalogueClass, FilingType, HospitalLevel, InsuranceType, PersonType, VisitKind,
};
use crate::{Error, Result, period};

/// A person and their accumulators.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PersonInput {
    pub insurance_type: String,
    pub person_type: String,
    #[serde(default)]
    pub civil_servant: bool,
    #[serde(default = "zero")]
    pub account_balance: String,
    pub accumulators: AccumulatorsInput,
}

/// Year-to-date accumulators; absent amounts are zero.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccumulatorsInput {
    pub year: i32,
    #[serde(default)]
    pub version: u64,
    #[serde(default = "zero")]
    pub pool_paid: String,
    #[serde(default = "zero")]
    pub outpatient_pool_paid: String,
    #[serde(default = "zero")]
    pub chronic_pool_paid: String,
    #[serde(default = "zero")]
    pub serious_illness_paid: String,
    #[serde(default = "zero")]
    pub outpatient_deductible_paid: String,
    #[serde(default)]
    pub admissions: u32,
    #[serde(default = "zero")]
    pub inscope_total: String,
}

fn zero() -> String {
    "0.00".to_owned()
}

/// A visit and its classified lines.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VisitInput {
    pub visit_kind: String,
    pub level: String,
    pub institution_code: String,
    pub visit_date: String,
    pub treatment_region: String,
    pub home_region: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filing: Option<FilingInput>,
    #[serde(default)]
    pub use_account: bool,
    pub lines: Vec<LineInput>,
}

/// An approved filing.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilingInput {
    pub filing_type: String,
    pub treatment_region: String,
    #[serde(default)]
    pub institutions: Vec<String>,
    pub valid_from: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_to: Option<String>,
}

/// A fee line with its catalogue classification.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LineInput {
    pub line_no: String,
    #[serde(default)]
    pub item_code: String,
    #[serde(default)]
    pub item_name: String,
    pub class: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_selfpay_ratio: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price_cap: Option<String>,
    pub quantity: String,
    pub unit_price: String,
    pub amount: String,
}

/// Document syntax.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Toml,
    Json,
}

impl Format {
    /// JSON for a `.json` path, TOML otherwise.
    #[must_use]
    pub fn of_path(path: &str) -> Self {
        if path.to_ascii_lowercase().ends_with(".json") {
            Format::Json
        } else {
            Format::Toml
        }
    }
}

fn read<T: serde::de::DeserializeOwned>(text: &str, format: Format, what: &str) -> Result<T> {
    match format {
        Format::Toml => toml::from_str(text).map_err(|e| Error::invalid(what, e.to_string())),
        Format::Json => serde_json::from_str(text).map_err(|e| Error::invalid(what, e.to_string())),
    }
}

impl PersonInput {
    pub fn parse(text: &str, format: Format) -> Result<Self> {
        read(text, format, "person")
    }

    /// Typed context and accumulators; errors name `person.<field>` and
    /// `accumulators.<field>`.
    pub fn to_ctx(&self) -> Result<(PersonCtx, Accumulators)> {
        let a = &self.accumulators;
        let m = |s: &str, f: &str| money::parse(s, &format!("accumulators.{f}"), Sign::NonNegative);
        Ok((
            PersonCtx {
                insurance_type: InsuranceType::parse(
                    &self.insurance_type,
                    "person.insurance_type",
                )?,
                person_type: PersonType::parse(&self.person_type, "person.person_type")?,
                civil_servant: self.civil_servant,
                account_balance: money::parse(
                    &self.account_balance,
                    "person.account_balance",
                    Sign::NonNegative,
                )?,
            },
            Accumulators {
                year: a.year,
                version: a.version,
                pool_paid: m(&a.pool_paid, "pool_paid")?,
                outpatient_pool_paid: m(&a.outpatient_pool_paid, "outpatient_pool_paid")?,
                chronic_pool_paid: m(&a.chronic_pool_paid, "chronic_pool_paid")?,
                serious_illness_paid: m(&a.serious_illness_paid, "serious_illness_paid")?,
                outpatient_deductible_paid: m(
                    &a.outpatient_deductible_paid,
                    "outpatient_deductible_paid",
                )?,
                admissions: a.admissions,
                inscope_total: m(&a.inscope_total, "inscope_total")?,
            },
        ))
    }
}

impl VisitInput {
    pub fn parse(text: &str, format: Format) -> Result<Self> {
        read(text, format, "visit")
    }

    /// Typed visit and lines; errors name `visit.<field>` and `lines[i].<field>`.
    pub fn to_ctx(&self) -> Result<(VisitCtx, Vec<Line>)> {
        let filing = self
            .filing
            .as_ref()
            .map(|f| {
                Ok::<_, Error>(FilingCtx {
                    filing_type: FilingType::parse(&f.filing_type, "visit.filing.filing_type")?,
                    treatment_region: city(&f.treatment_region, "visit.filing.treatment_region")?,
                    institutions: f.institutions.clone(),
                    valid_from: period::parse_date(&f.valid_from, "visit.filing.valid_from")?,
                    valid_to: f
                        .valid_to
                        .as_deref()
                        .map(|d| period::parse_date(d, "visit.filing.valid_to"))
                        .transpose()?,
                })
            })
            .transpose()?;
        let visit = VisitCtx {
            visit_kind: VisitKind::parse(&self.visit_kind, "visit.visit_kind")?,
            level: HospitalLevel::parse(&self.level, "visit.level")?,
            institution_code: self.institution_code.clone(),
            visit_date: period::parse_date(&self.visit_date, "visit.visit_date")?,
            // A malformed code would only differ from every filing's and be priced as
            // unfiled care: refused instead.
            treatment_region: city(&self.treatment_region, "visit.treatment_region")?,
            home_region: city(&self.home_region, "visit.home_region")?,
            filing,
            use_account: self.use_account,
        };
        let mut lines = Vec::with_capacity(self.lines.len());
        for (i, l) in self.lines.iter().enumerate() {
            lines.push(
                l.to_line()
                    .map_err(|e| e.in_field(format!("lines[{i}].")))?,
            );
        }
        Ok((visit, lines))
    }
}

/// A city (pooling region) code, as a string.
fn city(code: &str, field: &str) -> Result<String> {
    Ok(RegionCode::parse_city(code, field)?.to_string())
}

/// A line's first self-pay ratio by its class, the catalogue's rule: a class-B line
/// states it (`"0"` when the item has none) — left out it would silently be 0 % and the
/// fund would pay more; a class-A or C line has none, as the ratio would be ignored.
pub fn class_ratio(class: CatalogueClass, ratio: Option<&str>) -> Result<rust_decimal::Decimal> {
    let field = "first_selfpay_ratio";
    let raw = ratio.map(str::trim).filter(|r| !r.is_empty());
    let ratio = raw.map(|r| money::parse_ratio(r, field)).transpose()?;
    match (class, ratio) {
        (CatalogueClass::B, Some(r)) => Ok(r),
        (CatalogueClass::B, None) => Err(Error::invalid(
            field,
            "required for a class B (乙类) item: its first self-pay share, e.g. 0.10 (0 if it has none)",
        )),
        (_, Some(r)) if !r.is_zero() => Err(Error::invalid(
            field,
            format!(
                "only class B items have a first self-pay ratio; class {} must have none or 0, got {}",
                class.as_str().to_ascii_uppercase(),
                raw.unwrap_or_default()
            ),
        )),
        (_, _) => Ok(rust_decimal::Decimal::ZERO),
    }
}

impl LineInput {
    fn to_line(&self) -> Result<Line> {
        let class = CatalogueClass::parse(&self.class, "class")?;
        Ok(Line {
            line_no: self.line_no.clone(),
            item_code: self.item_code.clone(),
            class,
            first_selfpay_ratio: class_ratio(class, self.first_selfpay_ratio.as_deref())?,
            price_cap: self
                .price_cap
                .as_deref()
                .map(|c| money::parse(c, "price_cap", Sign::NonNegative))
                .transpose()?,
            quantity: parse_quantity(&self.quantity, "quantity")?,
            unit_price: money::parse(&self.unit_price, "unit_price", Sign::NonNegative)?,
            amount: money::parse(&self.amount, "amount", Sign::NonNegative)?,
        })
    }
}
