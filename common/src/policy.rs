//! The benefit policy model (待遇标准): what a home region's fund pays for its insured
//! persons, wherever they are treated. One policy per home region and insurance type,
//! effective-dated and versioned by the node that publishes it.
//!
//! The same document is read from TOML (operators' files, `deploy/policy.sample.toml`
//! explains every field) and JSON (AdminService, PeerService), and written as canonical
//! JSON whose SHA-256 digest identifies the version in peers' caches. Amounts and ratios
//! are decimal *strings* in both formats: a TOML or JSON number would pass through a
//! binary float and could silently change a fen.
//!
//! Reading happens in two steps so that every error names the field an operator must
//! fix (`visit.inpatient.ratio.level3.retired`): a loose document of strings is
//! deserialised first ([`doc`]), then parsed into typed values, then [`Policy::validate`]
//! checks the rules that tie fields together (every covered visit kind × level × person
//! type has a ratio, tiers are sorted and disjoint, …).

use std::collections::{BTreeMap, BTreeSet};

use chrono::NaiveDate;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::money::{self, Money, Sign};
use crate::region::RegionCode;
use crate::types::{FilingType, HospitalLevel, InsuranceType, PersonType, VisitKind};
use crate::{Error, Result, digest, period};

/// Fund ratios: hospital level → person type → ratio in `[0, 1]`.
pub type RatioTable = BTreeMap<HospitalLevel, BTreeMap<PersonType, Decimal>>;

/// A home region's benefit policy for one insurance type.
///
/// `effective_from` is part of the document (not only of the published version record)
/// so that a policy file is self-contained and the engine can refuse a visit dated before
/// it. A policy has no end date: the next published version supersedes it, and the node
/// picks the version with the latest `effective_from` on or before the visit date.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "doc::PolicyDoc", into = "doc::PolicyDoc")]
pub struct Policy {
    /// Home region (6-digit city code) that owns the policy.
    pub region: String,
    pub insurance_type: InsuranceType,
    /// Human-readable title, e.g. "杭州市职工基本医疗保险 2026".
    pub name: String,
    /// First visit date the policy applies to.
    pub effective_from: NaiveDate,
    /// Person types the policy covers; every pooled visit kind has a ratio for each.
    pub person_types: BTreeSet<PersonType>,
    pub caps: Caps,
    /// Annual deductible of outpatient pooling, per person type, shared by every visit
    /// kind whose deductible mode is [`Deductible::Annual`].
    pub outpatient_deductible: Option<BTreeMap<PersonType, Money>>,
    /// Covered visit kinds. A kind that is absent is not covered at all.
    pub visits: BTreeMap<VisitKind, VisitRule>,
    pub serious_illness: Option<SeriousIllness>,
    pub civil_servant: Option<CivilServant>,
    pub cross_region: CrossRegion,
    pub account: AccountRule,
    pub offline: OfflineMode,
}

/// Annual caps of the pooled fund (hifp), calendar year.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caps {
    /// 封顶线: all visit kinds together.
    pub annual: Money,
    /// 门诊统筹限额: outpatient and pharmacy together, within `annual`.
    pub outpatient_pool: Option<Money>,
    /// Chronic / special-disease outpatient, within `annual`.
    pub chronic: Option<Money>,
}

/// How one visit kind is covered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VisitRule {
    /// Hospital levels at which the kind is covered (pharmacies are `Ungraded`).
    pub levels: BTreeSet<HospitalLevel>,
    /// The pooled fund's part; `None` when the kind is not pooled (e.g. pharmacy
    /// purchases that only the personal account or cash pay).
    pub pool: Option<PoolRule>,
}

/// Deductible and ratios of the pooled fund for one visit kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolRule {
    pub deductible: Deductible,
    pub ratio: RatioTable,
}

/// 起付线.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deductible {
    /// No deductible.
    None,
    /// An amount per visit by hospital level; for inpatient care, per admission, with an
    /// optional different amount from the second admission of the calendar year on.
    PerVisit {
        first: BTreeMap<HospitalLevel, Money>,
        later: Option<BTreeMap<HospitalLevel, Money>>,
    },
    /// The annual outpatient deductible ([`Policy::outpatient_deductible`]), consumed
    /// once a year across all visits of the kinds that use it.
    Annual,
}

/// Which wire fund a serious-illness scheme pays from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SeriousFund {
    /// 大病保险 — serious-illness insurance (`hifmi_pay`).
    Hifmi,
    /// 大额医疗费用补助 — large-amount subsidy (`hifob_pay`).
    Hifob,
}

impl SeriousFund {
    /// Stable name in files and on the wire (`FundPayment.fund`).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            SeriousFund::Hifmi => "hifmi",
            SeriousFund::Hifob => "hifob",
        }
    }
}

/// 大病保险 / 大额补助: pays segments of the person's year-to-date in-scope personal share
/// (the in-scope amount the pooled fund did not pay, deductible included) at each
/// segment's ratio, up to an annual cap. Once the pooled fund's cap is reached, the whole
/// in-scope amount becomes personal share and so runs into the tiers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeriousIllness {
    pub fund: SeriousFund,
    /// Annual cap of this fund.
    pub cap: Money,
    /// Sorted, disjoint segments of the year-to-date in-scope personal share.
    pub tiers: Vec<Tier>,
}

/// One segment `[from, to)`; `to == None` is open-ended (last tier only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tier {
    pub from: Money,
    pub to: Option<Money>,
    pub ratio: Decimal,
}

/// 公务员医疗补助: a ratio of the in-scope personal share left after the pooled and the
/// serious-illness funds, for persons flagged as civil servants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CivilServant {
    pub ratio: Decimal,
}

/// Cross-region rules, one per filing type (all six are required).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrossRegion {
    /// When a long-term filing names institutions, care at any other institution counts
    /// as unfiled (temporary).
    pub named_institutions_only: bool,
    pub filing: BTreeMap<FilingType, FilingRule>,
}

/// What a filing type does to a cross-region visit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilingRule {
    /// Percentage-point cut of the pooled fund's ratio (`0.10` = −10 pp).
    pub ratio_cut: Decimal,
    /// Visit kinds that cannot be settled directly under this filing type: the patient
    /// pays in full and claims reimbursement at home.
    pub no_direct_settlement: BTreeSet<VisitKind>,
}

/// What the personal account (个人账户) may pay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountRule {
    /// Visit kinds whose personal share the account may pay (none for residents).
    pub kinds: BTreeSet<VisitKind>,
    pub scope: AccountScope,
}

/// Which part of the personal share the account may pay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountScope {
    /// The whole personal share, out-of-scope items included.
    PersonalShare,
    /// Only the catalogue part: class-B first self-pay plus the in-scope personal share;
    /// class-C items and amounts above price caps are paid in cash.
    InScopeShare,
}

impl AccountScope {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            AccountScope::PersonalShare => "personal_share",
            AccountScope::InScopeShare => "in_scope_share",
        }
    }
}

/// What a treatment node does for this home policy when the home node is unreachable.
/// Modelled and validated here; applied by settlement in the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OfflineMode {
    /// Refuse direct settlement: the patient pays in full, manual reimbursement later.
    Refuse,
    /// Settle provisionally from the cached policy while the fund share of outstanding
    /// provisional claims for this home region stays within `exposure_limit`.
    Provisional { exposure_limit: Money },
}

impl Policy {
    /// Reads a TOML policy document and validates it.
    pub fn from_toml(s: &str) -> Result<Self> {
        let d: doc::PolicyDoc = toml::from_str(s)
            .map_err(|e| Error::invalid("policy", format!("not a valid policy document: {e}")))?;
        Self::from_doc(d)
    }

    /// Reads a JSON policy document (e.g. `PolicyVersion.policy_json`) and validates it.
    pub fn from_json(s: &str) -> Result<Self> {
        let d: doc::PolicyDoc = serde_json::from_str(s)
            .map_err(|e| Error::invalid("policy", format!("not a valid policy document: {e}")))?;
        Self::from_doc(d)
    }

    /// The canonical JSON form: fixed field order, sorted map keys, amounts with exactly
    /// two decimals, ratios normalised, no whitespace. Equal policies give equal bytes.
    #[must_use]
    pub fn to_canonical_json(&self) -> String {
        // Serialising plain strings, maps and vectors cannot fail.
        serde_json::to_string(&doc::PolicyDoc::from(self.clone())).unwrap_or_default()
    }

    /// SHA-256 hex of the canonical JSON: the version's identity in peers' caches.
    #[must_use]
    pub fn digest(&self) -> String {
        digest::sha256_hex(self.to_canonical_json().as_bytes())
    }

    /// True when the policy applies to a visit on `date`.
    #[must_use]
    pub fn in_force_on(&self, date: NaiveDate) -> bool {
        date >= self.effective_from
    }

    fn from_doc(d: doc::PolicyDoc) -> Result<Self> {
        let p = d.parse()?;
        p.validate()?;
        Ok(p)
    }

    /// Checks every rule a policy must satisfy; errors name the field path.
    pub fn validate(&self) -> Result<()> {
        RegionCode::parse_city(&self.region, "region")?;
        self.validate_person_types()?;
        nonneg_positive(self.caps.annual, "caps.annual")?;
        self.validate_visits()?;
        self.validate_caps()?;
        self.validate_outpatient_deductible()?;
        if let Some(s) = &self.serious_illness {
            s.validate()?;
        }
        if let Some(c) = &self.civil_servant {
            check_ratio(c.ratio, "civil_servant.ratio")?;
            if self.insurance_type != InsuranceType::Employee {
                return Err(Error::invalid(
                    "civil_servant",
                    "the civil-servant subsidy belongs to employee insurance only",
                ));
            }
        }
        self.validate_cross_region()?;
        self.validate_account()?;
        if let OfflineMode::Provisional { exposure_limit } = &self.offline {
            nonneg_positive(*exposure_limit, "offline.exposure_limit")?;
        }
        Ok(())
    }

    fn validate_person_types(&self) -> Result<()> {
        if self.person_types.is_empty() {
            return Err(Error::invalid(
                "person_types",
                "a policy must cover at least one person type",
            ));
        }
        for pt in &self.person_types {
            let employee = matches!(pt, PersonType::InService | PersonType::Retired);
            if employee != (self.insurance_type == InsuranceType::Employee) {
                return Err(Error::invalid(
                    "person_types",
                    format!(
                        "{pt} is not a person type of {} insurance",
                        self.insurance_type
                    ),
                ));
            }
        }
        Ok(())
    }

    fn validate_visits(&self) -> Result<()> {
        if self.visits.is_empty() {
            return Err(Error::invalid(
                "visit",
                "a policy must cover at least one visit kind",
            ));
        }
        for (kind, rule) in &self.visits {
            let path = format!("visit.{kind}");
            if rule.levels.is_empty() {
                return Err(Error::invalid(
                    format!("{path}.levels"),
                    "list at least one hospital level",
                ));
            }
            let Some(pool) = &rule.pool else { continue };
            // The ratio table must cover exactly levels × person types: a missing entry
            // would leave some visit unsettleable, an extra one hints at a typo.
            for (level, row) in &pool.ratio {
                if !rule.levels.contains(level) {
                    return Err(Error::invalid(
                        format!("{path}.ratio.{level}"),
                        format!("level is not listed in {path}.levels"),
                    ));
                }
                for (pt, r) in row {
                    if !self.person_types.contains(pt) {
                        return Err(Error::invalid(
                            format!("{path}.ratio.{level}.{pt}"),
                            "person type is not listed in person_types",
                        ));
                    }
                    check_ratio(*r, &format!("{path}.ratio.{level}.{pt}"))?;
                }
            }
            for level in &rule.levels {
                for pt in &self.person_types {
                    if pool.ratio.get(level).and_then(|row| row.get(pt)).is_none() {
                        return Err(Error::invalid(
                            format!("{path}.ratio.{level}.{pt}"),
                            format!("missing: {kind} at {level} is covered for {pt}"),
                        ));
                    }
                }
            }
            match &pool.deductible {
                Deductible::None => {}
                Deductible::PerVisit { first, later } => {
                    level_amounts(first, &rule.levels, &format!("{path}.deductible.first"))?;
                    if let Some(later) = later {
                        if *kind != VisitKind::Inpatient {
                            return Err(Error::invalid(
                                format!("{path}.deductible.later"),
                                "only inpatient deductibles distinguish later admissions",
                            ));
                        }
                        level_amounts(later, &rule.levels, &format!("{path}.deductible.later"))?;
                    }
                }
                Deductible::Annual => {
                    if !matches!(kind, VisitKind::Outpatient | VisitKind::Pharmacy) {
                        return Err(Error::invalid(
                            format!("{path}.deductible.mode"),
                            "the annual deductible belongs to outpatient pooling (outpatient, pharmacy)",
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    fn pooled(&self, kind: VisitKind) -> bool {
        self.visits.get(&kind).is_some_and(|r| r.pool.is_some())
    }

    fn validate_caps(&self) -> Result<()> {
        let sub = [
            (
                self.caps.outpatient_pool,
                "caps.outpatient_pool",
                self.pooled(VisitKind::Outpatient) || self.pooled(VisitKind::Pharmacy),
                "no pooled outpatient or pharmacy visit kind",
            ),
            (
                self.caps.chronic,
                "caps.chronic",
                self.pooled(VisitKind::Chronic),
                "chronic visits are not pooled",
            ),
        ];
        for (cap, field, used, unused_why) in sub {
            let Some(cap) = cap else { continue };
            nonneg_positive(cap, field)?;
            if !used {
                return Err(Error::invalid(
                    field,
                    format!("cap without use: {unused_why}"),
                ));
            }
            if cap > self.caps.annual {
                return Err(Error::invalid(
                    field,
                    format!(
                        "{} exceeds caps.annual {}; the annual cap bounds every visit kind",
                        money::format(cap),
                        money::format(self.caps.annual)
                    ),
                ));
            }
        }
        Ok(())
    }

    fn validate_outpatient_deductible(&self) -> Result<()> {
        let used = self.visits.values().any(|r| {
            r.pool
                .as_ref()
                .is_some_and(|p| p.deductible == Deductible::Annual)
        });
        match (&self.outpatient_deductible, used) {
            (None, false) => Ok(()),
            (None, true) => Err(Error::invalid(
                "outpatient_deductible",
                "missing: a visit kind uses deductible mode \"annual\"",
            )),
            (Some(_), false) => Err(Error::invalid(
                "outpatient_deductible",
                "set but no visit kind uses deductible mode \"annual\"",
            )),
            (Some(table), true) => {
                for (pt, amount) in table {
                    let field = format!("outpatient_deductible.{pt}");
                    if !self.person_types.contains(pt) {
                        return Err(Error::invalid(
                            field,
                            "person type is not listed in person_types",
                        ));
                    }
                    nonneg(*amount, &field)?;
                }
                for pt in &self.person_types {
                    if !table.contains_key(pt) {
                        return Err(Error::invalid(
                            format!("outpatient_deductible.{pt}"),
                            "missing",
                        ));
                    }
                }
                Ok(())
            }
        }
    }

    fn validate_cross_region(&self) -> Result<()> {
        for ft in FilingType::ALL {
            let field = format!("cross_region.filing.{ft}");
            let Some(rule) = self.cross_region.filing.get(ft) else {
                return Err(Error::invalid(
                    field,
                    "missing: every filing type needs a rule (use ratio_cut = \"0\" for none)",
                ));
            };
            check_ratio(rule.ratio_cut, &format!("{field}.ratio_cut"))?;
        }
        Ok(())
    }

    fn validate_account(&self) -> Result<()> {
        if self.insurance_type == InsuranceType::Resident && !self.account.kinds.is_empty() {
            return Err(Error::invalid(
                "account.kinds",
                "must be empty: resident insurance has no personal account",
            ));
        }
        for kind in &self.account.kinds {
            if !self.visits.contains_key(kind) {
                return Err(Error::invalid(
                    "account.kinds",
                    format!("{kind} is not a covered visit kind"),
                ));
            }
        }
        Ok(())
    }
}

impl SeriousIllness {
    fn validate(&self) -> Result<()> {
        nonneg_positive(self.cap, "serious_illness.cap")?;
        if self.tiers.is_empty() {
            return Err(Error::invalid(
                "serious_illness.tiers",
                "list at least one tier",
            ));
        }
        let last = self.tiers.len() - 1;
        let mut prev_to: Option<Money> = None;
        for (i, t) in self.tiers.iter().enumerate() {
            let path = format!("serious_illness.tiers[{i}]");
            nonneg(t.from, &format!("{path}.from"))?;
            check_ratio(t.ratio, &format!("{path}.ratio"))?;
            match t.to {
                Some(to) if to <= t.from => {
                    return Err(Error::invalid(
                        format!("{path}.to"),
                        format!(
                            "{} must be above from {}",
                            money::format(to),
                            money::format(t.from)
                        ),
                    ));
                }
                None if i != last => {
                    return Err(Error::invalid(
                        format!("{path}.to"),
                        "only the last tier may be open-ended",
                    ));
                }
                _ => {}
            }
            if let Some(p) = prev_to
                && t.from < p
            {
                return Err(Error::invalid(
                    format!("{path}.from"),
                    format!(
                        "{} overlaps the previous tier ending at {}; tiers must be sorted and disjoint",
                        money::format(t.from),
                        money::format(p)
                    ),
                ));
            }
            prev_to = t.to;
        }
        Ok(())
    }
}

fn check_ratio(r: Decimal, field: &str) -> Result<()> {
    if r < Decimal::ZERO || r > Decimal::ONE {
        return Err(Error::invalid(
            field,
            format!("ratio {r} must be between 0 and 1"),
        ));
    }
    Ok(())
}

fn nonneg(v: Money, field: &str) -> Result<()> {
    if v.is_sign_negative() && !v.is_zero() {
        return Err(Error::invalid(field, "must not be negative"));
    }
    if v.normalize().scale() > 2 {
        return Err(Error::invalid(field, "more than 2 decimals"));
    }
    Ok(())
}

fn nonneg_positive(v: Money, field: &str) -> Result<()> {
    nonneg(v, field)?;
    if v.is_zero() {
        return Err(Error::invalid(field, "must be greater than zero"));
    }
    Ok(())
}

/// A per-level amount table must cover exactly the kind's levels.
fn level_amounts(
    t: &BTreeMap<HospitalLevel, Money>,
    levels: &BTreeSet<HospitalLevel>,
    path: &str,
) -> Result<()> {
    for (level, v) in t {
        if !levels.contains(level) {
            return Err(Error::invalid(
                format!("{path}.{level}"),
                "level is not listed in the visit kind's levels",
            ));
        }
        nonneg(*v, &format!("{path}.{level}"))?;
    }
    for level in levels {
        if !t.contains_key(level) {
            return Err(Error::invalid(format!("{path}.{level}"), "missing"));
        }
    }
    Ok(())
}

/// The loose document form: strings everywhere, so that parsing can name the field of any
/// bad value. Serialising it gives the canonical JSON.
pub mod doc {
    use super::*;

    /// Top level of a policy file.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct PolicyDoc {
        pub region: String,
        pub insurance_type: String,
        #[serde(default)]
        pub name: String,
        pub effective_from: String,
        pub person_types: Vec<String>,
        pub caps: CapsDoc,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub outpatient_deductible: Option<BTreeMap<String, String>>,
        pub visit: BTreeMap<String, VisitDoc>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub serious_illness: Option<SeriousDoc>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub civil_servant: Option<CivilServantDoc>,
        pub cross_region: CrossRegionDoc,
        #[serde(default)]
        pub account: AccountDoc,
        pub offline: OfflineDoc,
    }

    #[derive(Debug, Clone, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct CapsDoc {
        pub annual: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub outpatient_pool: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub chronic: Option<String>,
    }

    #[derive(Debug, Clone, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct VisitDoc {
        pub levels: Vec<String>,
        #[serde(default = "yes")]
        pub pooled: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub deductible: Option<DeductibleDoc>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub ratio: Option<BTreeMap<String, BTreeMap<String, String>>>,
    }

    fn yes() -> bool {
        true
    }

    #[derive(Debug, Clone, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct DeductibleDoc {
        pub mode: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub first: Option<BTreeMap<String, String>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub later: Option<BTreeMap<String, String>>,
    }

    #[derive(Debug, Clone, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct SeriousDoc {
        pub fund: String,
        pub cap: String,
        pub tiers: Vec<TierDoc>,
    }

    #[derive(Debug, Clone, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct TierDoc {
        pub from: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub to: Option<String>,
        pub ratio: String,
    }

    #[derive(Debug, Clone, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct CivilServantDoc {
        pub ratio: String,
    }

    #[derive(Debug, Clone, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct CrossRegionDoc {
        #[serde(default = "yes")]
        pub named_institutions_only: bool,
        pub filing: BTreeMap<String, FilingRuleDoc>,
    }

    #[derive(Debug, Clone, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct FilingRuleDoc {
        pub ratio_cut: String,
        #[serde(default)]
        pub no_direct_settlement: Vec<String>,
    }

    #[derive(Debug, Clone, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct AccountDoc {
        #[serde(default)]
        pub kinds: Vec<String>,
        #[serde(default = "personal_share")]
        pub scope: String,
    }

    impl Default for AccountDoc {
        fn default() -> Self {
            Self {
                kinds: Vec::new(),
                scope: personal_share(),
            }
        }
    }

    fn personal_share() -> String {
        AccountScope::PersonalShare.as_str().to_owned()
    }

    #[derive(Debug, Clone, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct OfflineDoc {
        pub mode: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub exposure_limit: Option<String>,
    }

    fn amount(s: &str, field: &str) -> Result<Money> {
        money::parse(s, field, Sign::NonNegative)
    }

    fn ratio(s: &str, field: &str) -> Result<Decimal> {
        money::parse_ratio(s, field)
    }

    /// Parses a list of enum names, rejecting duplicates (a duplicate is a typo).
    fn enum_set<T: Ord + Copy>(
        items: &[String],
        field: &str,
        parse: impl Fn(&str, &str) -> Result<T>,
    ) -> Result<BTreeSet<T>> {
        let mut out = BTreeSet::new();
        for (i, s) in items.iter().enumerate() {
            let f = format!("{field}[{i}]");
            if !out.insert(parse(s, &f)?) {
                return Err(Error::invalid(
                    f,
                    format!("{} is listed twice", crate::error::quoted(s)),
                ));
            }
        }
        Ok(out)
    }

    fn level_map(
        m: &BTreeMap<String, String>,
        path: &str,
    ) -> Result<BTreeMap<HospitalLevel, Money>> {
        let mut out = BTreeMap::new();
        for (k, v) in m {
            let f = format!("{path}.{k}");
            let level = HospitalLevel::parse(k, &f)?;
            if out.insert(level, amount(v, &f)?).is_some() {
                return Err(Error::invalid(f, "level given twice"));
            }
        }
        Ok(out)
    }

    fn person_map(m: &BTreeMap<String, String>, path: &str) -> Result<BTreeMap<PersonType, Money>> {
        let mut out = BTreeMap::new();
        for (k, v) in m {
            let f = format!("{path}.{k}");
            let pt = PersonType::parse(k, &f)?;
            if out.insert(pt, amount(v, &f)?).is_some() {
                return Err(Error::invalid(f, "person type given twice"));
            }
        }
        Ok(out)
    }

    impl PolicyDoc {
        /// Parses every string into its typed value; [`Policy::validate`] follows.
        pub fn parse(self) -> Result<Policy> {
            let insurance_type = InsuranceType::parse(&self.insurance_type, "insurance_type")?;
            let effective_from = period::parse_date(&self.effective_from, "effective_from")?;
            let person_types = enum_set(&self.person_types, "person_types", PersonType::parse)?;
            let caps = Caps {
                annual: amount(&self.caps.annual, "caps.annual")?,
                outpatient_pool: self
                    .caps
                    .outpatient_pool
                    .as_deref()
                    .map(|s| amount(s, "caps.outpatient_pool"))
                    .transpose()?,
                chronic: self
                    .caps
                    .chronic
                    .as_deref()
                    .map(|s| amount(s, "caps.chronic"))
                    .transpose()?,
            };
            let outpatient_deductible = self
                .outpatient_deductible
                .as_ref()
                .map(|m| person_map(m, "outpatient_deductible"))
                .transpose()?;
            let mut visits = BTreeMap::new();
            for (k, v) in &self.visit {
                let path = format!("visit.{k}");
                let kind = VisitKind::parse(k, &path)?;
                let rule = v.parse(&path)?;
                if visits.insert(kind, rule).is_some() {
                    return Err(Error::invalid(path, "visit kind given twice"));
                }
            }
            let serious_illness = self
                .serious_illness
                .as_ref()
                .map(SeriousDoc::parse)
                .transpose()?;
            let civil_servant = self
                .civil_servant
                .as_ref()
                .map(|c| {
                    Ok::<_, Error>(CivilServant {
                        ratio: ratio(&c.ratio, "civil_servant.ratio")?,
                    })
                })
                .transpose()?;
            let mut filing = BTreeMap::new();
            for (k, v) in &self.cross_region.filing {
                let path = format!("cross_region.filing.{k}");
                let ft = FilingType::parse(k, &path)?;
                let rule = FilingRule {
                    ratio_cut: ratio(&v.ratio_cut, &format!("{path}.ratio_cut"))?,
                    no_direct_settlement: enum_set(
                        &v.no_direct_settlement,
                        &format!("{path}.no_direct_settlement"),
                        VisitKind::parse,
                    )?,
                };
                if filing.insert(ft, rule).is_some() {
                    return Err(Error::invalid(path, "filing type given twice"));
                }
            }
            let account = AccountRule {
                kinds: enum_set(&self.account.kinds, "account.kinds", VisitKind::parse)?,
                scope: match self.account.scope.as_str() {
                    "personal_share" => AccountScope::PersonalShare,
                    "in_scope_share" => AccountScope::InScopeShare,
                    other => {
                        return Err(Error::invalid(
                            "account.scope",
                            format!(
                                "unknown value {other:?}; expected personal_share or in_scope_share"
                            ),
                        ));
                    }
                },
            };
            let offline = match (self.offline.mode.as_str(), &self.offline.exposure_limit) {
                ("refuse", None) => OfflineMode::Refuse,
                ("refuse", Some(_)) => {
                    return Err(Error::invalid(
                        "offline.exposure_limit",
                        "only meaningful with mode = \"provisional\"",
                    ));
                }
                ("provisional", Some(l)) => OfflineMode::Provisional {
                    exposure_limit: amount(l, "offline.exposure_limit")?,
                },
                ("provisional", None) => {
                    return Err(Error::invalid(
                        "offline.exposure_limit",
                        "missing: provisional settlement needs an exposure limit",
                    ));
                }
                (other, _) => {
                    return Err(Error::invalid(
                        "offline.mode",
                        format!("unknown value {other:?}; expected refuse or provisional"),
                    ));
                }
            };
            Ok(Policy {
                region: self.region,
                insurance_type,
                name: self.name,
                effective_from,
                person_types,
                caps,
                outpatient_deductible,
                visits,
                serious_illness,
                civil_servant,
                cross_region: CrossRegion {
                    named_institutions_only: self.cross_region.named_institutions_only,
                    filing,
                },
                account,
                offline,
            })
        }
    }

    impl VisitDoc {
        fn parse(&self, path: &str) -> Result<VisitRule> {
            let levels = enum_set(
                &self.levels,
                &format!("{path}.levels"),
                HospitalLevel::parse,
            )?;
            if !self.pooled {
                for (present, name) in [
                    (self.deductible.is_some(), "deductible"),
                    (self.ratio.is_some(), "ratio"),
                ] {
                    if present {
                        return Err(Error::invalid(
                            format!("{path}.{name}"),
                            "not allowed when pooled = false",
                        ));
                    }
                }
                return Ok(VisitRule { levels, pool: None });
            }
            let Some(ratio_doc) = &self.ratio else {
                return Err(Error::invalid(
                    format!("{path}.ratio"),
                    "missing: a pooled visit kind needs fund ratios (or set pooled = false)",
                ));
            };
            let mut table = RatioTable::new();
            for (lk, row) in ratio_doc {
                let lpath = format!("{path}.ratio.{lk}");
                let level = HospitalLevel::parse(lk, &lpath)?;
                let mut out = BTreeMap::new();
                for (pk, v) in row {
                    let f = format!("{lpath}.{pk}");
                    let pt = PersonType::parse(pk, &f)?;
                    if out.insert(pt, ratio(v, &f)?).is_some() {
                        return Err(Error::invalid(f, "person type given twice"));
                    }
                }
                if table.insert(level, out).is_some() {
                    return Err(Error::invalid(lpath, "level given twice"));
                }
            }
            let Some(d) = &self.deductible else {
                return Err(Error::invalid(
                    format!("{path}.deductible"),
                    "missing: use mode = \"none\" for no deductible",
                ));
            };
            let dpath = format!("{path}.deductible");
            let deductible = match d.mode.as_str() {
                "none" | "annual" => {
                    for (present, name) in
                        [(d.first.is_some(), "first"), (d.later.is_some(), "later")]
                    {
                        if present {
                            return Err(Error::invalid(
                                format!("{dpath}.{name}"),
                                format!("not allowed with mode = {:?}", d.mode),
                            ));
                        }
                    }
                    if d.mode == "none" {
                        Deductible::None
                    } else {
                        Deductible::Annual
                    }
                }
                "per_visit" => {
                    let Some(first) = &d.first else {
                        return Err(Error::invalid(
                            format!("{dpath}.first"),
                            "missing: per_visit needs an amount per level",
                        ));
                    };
                    Deductible::PerVisit {
                        first: level_map(first, &format!("{dpath}.first"))?,
                        later: d
                            .later
                            .as_ref()
                            .map(|m| level_map(m, &format!("{dpath}.later")))
                            .transpose()?,
                    }
                }
                other => {
                    return Err(Error::invalid(
                        format!("{dpath}.mode"),
                        format!("unknown value {other:?}; expected none, per_visit or annual"),
                    ));
                }
            };
            Ok(VisitRule {
                levels,
                pool: Some(PoolRule {
                    deductible,
                    ratio: table,
                }),
            })
        }
    }

    impl SeriousDoc {
        fn parse(&self) -> Result<SeriousIllness> {
            let fund = match self.fund.as_str() {
                "hifmi" => SeriousFund::Hifmi,
                "hifob" => SeriousFund::Hifob,
                other => {
                    return Err(Error::invalid(
                        "serious_illness.fund",
                        format!("unknown value {other:?}; expected hifmi or hifob"),
                    ));
                }
            };
            let mut tiers = Vec::with_capacity(self.tiers.len());
            for (i, t) in self.tiers.iter().enumerate() {
                let path = format!("serious_illness.tiers[{i}]");
                tiers.push(Tier {
                    from: amount(&t.from, &format!("{path}.from"))?,
                    to: t
                        .to
                        .as_deref()
                        .map(|s| amount(s, &format!("{path}.to")))
                        .transpose()?,
                    ratio: ratio(&t.ratio, &format!("{path}.ratio"))?,
                });
            }
            Ok(SeriousIllness {
                fund,
                cap: amount(&self.cap, "serious_illness.cap")?,
                tiers,
            })
        }
    }

    fn names<T: Copy + std::fmt::Display>(set: &BTreeSet<T>) -> Vec<String> {
        set.iter().map(ToString::to_string).collect()
    }

    fn level_strings(m: &BTreeMap<HospitalLevel, Money>) -> BTreeMap<String, String> {
        m.iter()
            .map(|(k, v)| (k.to_string(), money::format(*v)))
            .collect()
    }

    impl From<Policy> for PolicyDoc {
        fn from(p: Policy) -> Self {
            PolicyDoc {
                region: p.region,
                insurance_type: p.insurance_type.to_string(),
                name: p.name,
                effective_from: p.effective_from.format("%Y-%m-%d").to_string(),
                person_types: names(&p.person_types),
                caps: CapsDoc {
                    annual: money::format(p.caps.annual),
                    outpatient_pool: p.caps.outpatient_pool.map(money::format),
                    chronic: p.caps.chronic.map(money::format),
                },
                outpatient_deductible: p.outpatient_deductible.map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.to_string(), money::format(*v)))
                        .collect()
                }),
                visit: p
                    .visits
                    .iter()
                    .map(|(k, r)| (k.to_string(), VisitDoc::from(r)))
                    .collect(),
                serious_illness: p.serious_illness.map(|s| SeriousDoc {
                    fund: s.fund.as_str().to_owned(),
                    cap: money::format(s.cap),
                    tiers: s
                        .tiers
                        .iter()
                        .map(|t| TierDoc {
                            from: money::format(t.from),
                            to: t.to.map(money::format),
                            ratio: money::format_ratio(t.ratio),
                        })
                        .collect(),
                }),
                civil_servant: p.civil_servant.map(|c| CivilServantDoc {
                    ratio: money::format_ratio(c.ratio),
                }),
                cross_region: CrossRegionDoc {
                    named_institutions_only: p.cross_region.named_institutions_only,
                    filing: p
                        .cross_region
                        .filing
                        .iter()
                        .map(|(k, r)| {
                            (
                                k.to_string(),
                                FilingRuleDoc {
                                    ratio_cut: money::format_ratio(r.ratio_cut),
                                    no_direct_settlement: names(&r.no_direct_settlement),
                                },
                            )
                        })
                        .collect(),
                },
                account: AccountDoc {
                    kinds: names(&p.account.kinds),
                    scope: p.account.scope.as_str().to_owned(),
                },
                offline: match p.offline {
                    OfflineMode::Refuse => OfflineDoc {
                        mode: "refuse".to_owned(),
                        exposure_limit: None,
                    },
                    OfflineMode::Provisional { exposure_limit } => OfflineDoc {
                        mode: "provisional".to_owned(),
                        exposure_limit: Some(money::format(exposure_limit)),
                    },
                },
            }
        }
    }

    impl From<&VisitRule> for VisitDoc {
        fn from(r: &VisitRule) -> Self {
            let levels = names(&r.levels);
            match &r.pool {
                None => VisitDoc {
                    levels,
                    pooled: false,
                    deductible: None,
                    ratio: None,
                },
                Some(pool) => VisitDoc {
                    levels,
                    pooled: true,
                    deductible: Some(match &pool.deductible {
                        Deductible::None => DeductibleDoc {
                            mode: "none".to_owned(),
                            first: None,
                            later: None,
                        },
                        Deductible::Annual => DeductibleDoc {
                            mode: "annual".to_owned(),
                            first: None,
                            later: None,
                        },
                        Deductible::PerVisit { first, later } => DeductibleDoc {
                            mode: "per_visit".to_owned(),
                            first: Some(level_strings(first)),
                            later: later.as_ref().map(level_strings),
                        },
                    }),
                    ratio: Some(
                        pool.ratio
                            .iter()
                            .map(|(l, row)| {
                                (
                                    l.to_string(),
                                    row.iter()
                                        .map(|(pt, r)| (pt.to_string(), money::format_ratio(*r)))
                                        .collect(),
                                )
                            })
                            .collect(),
                    ),
                },
            }
        }
    }

    impl TryFrom<PolicyDoc> for Policy {
        type Error = Error;
        fn try_from(d: PolicyDoc) -> Result<Policy> {
            Policy::from_doc(d)
        }
    }
}
