//! The benefit engine: the home region's [`Policy`] applied to a bill priced and
//! classified by the treatment region's catalogue. Pure and deterministic — no I/O, no
//! clock, no floating point — so the treatment node's pre-settlement and the home
//! node's verification compute the same split to the fen.
//!
//! # Order of the computation
//! 1. Checks: policy in force on the visit date, person and visit covered, accumulators
//!    of the visit's calendar year, every line well-formed.
//! 2. Cross-region rule: the filing that applies (or `temporary` when unfiled) gives the
//!    percentage-point cut of the pooled ratio, or refuses direct settlement.
//! 3. Lines: class C is fully self-paid; the part above a price cap is self-paid; of the
//!    rest, a class-B line's first self-pay share is self-paid; what remains is in scope.
//! 4. Deductible, taken from the in-scope amount.
//! 5. Pooled fund (hifp): ratio × (in scope − deductible), then the annual cap and the
//!    visit kind's own cap.
//! 6. Serious illness (hifmi or hifob): tiers over the year-to-date in-scope personal
//!    share, then its cap.
//! 7. Civil-servant subsidy (cvlserv): ratio × the in-scope personal share left.
//! 8. Personal share = total − funds; the personal account pays what it may, cash the
//!    rest.
//!
//! `maf_pay` (medical assistance) and `hosp_part_amt` (hospital-borne share) are always
//! zero: they are decided outside the home region's benefit policy (civil affairs, the
//! treatment region's payment agreements). They are still carried so that the identities
//! of the NHSA result hold in their full form.
//!
//! # Rounding (half-up at the fen, [`money::round_fen`])
//! Only products are rounded; sums and differences of fen amounts are exact.
//! * Per line: the capped price total `quantity × price_cap`, and the class-B first
//!   self-pay `rest × first_selfpay_ratio`. Rounding per line makes the per-line detail
//!   sent to the hospital add up exactly to the claim's totals.
//! * Per claim, once each: `ratio × base` of the pooled fund, the sum over the tiers of
//!   the serious-illness fund, and `ratio × share` of the civil-servant subsidy. Fund
//!   amounts are computed on claim totals, as agencies do, so that per-line rounding
//!   errors do not accumulate; each is rounded *before* its cap is applied, so a cap is
//!   never exceeded by a rounding fen.
//!
//! # Accumulators
//! Calendar-year totals of the person at the home node, with a version for
//! compare-and-set. The engine returns the new accumulators (`version + 1`); it never
//! resets a year: the caller passes the visit year's accumulators (zeros with the stored
//! version for the first claim of a year), and a year mismatch is an error.

/// `format!` for a trace line: one buffer sized for a typical line, so formatting does
/// not regrow it (the trace is built on every quote).
macro_rules! tline {
    ($($arg:tt)*) => {{
        let mut s = String::with_capacity(144);
        let _ = write!(s, $($arg)*);
        s
    }};
}

mod convert;
pub use convert::parse_quantity;
pub mod input;

use std::fmt::{self, Write as _};

use chrono::{Datelike, NaiveDate};
use rust_decimal::Decimal;

use crate::money::{self, Money};
use crate::policy::{AccountScope, Deductible, Policy, SeriousFund};
use crate::types::{
    CatalogueClass, FilingType, HospitalLevel, InsuranceType, PersonType, VisitKind,
};
use crate::{Error, Result};

/// The person as the home node knows them at the time of the visit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersonCtx {
    pub insurance_type: InsuranceType,
    pub person_type: PersonType,
    /// Flagged for the civil-servant subsidy (公务员医疗补助).
    pub civil_servant: bool,
    /// Personal account balance (0 for residents).
    pub account_balance: Money,
}

/// An approved cross-region filing of the person (pass `None` when there is none, or
/// when it is not approved: an unapproved filing is no filing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilingCtx {
    pub filing_type: FilingType,
    /// The region the filing is for.
    pub treatment_region: String,
    /// Designated institutions named by a long-term filing (may be empty).
    pub institutions: Vec<String>,
    pub valid_from: NaiveDate,
    /// Inclusive; `None` is open-ended.
    pub valid_to: Option<NaiveDate>,
}

/// The visit being settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VisitCtx {
    pub visit_kind: VisitKind,
    pub level: HospitalLevel,
    pub institution_code: String,
    /// Date of the visit (admission date for inpatient care): selects the policy and the
    /// accumulators' year.
    pub visit_date: NaiveDate,
    pub treatment_region: String,
    pub home_region: String,
    pub filing: Option<FilingCtx>,
    /// The patient asks to pay the personal share from the personal account.
    pub use_account: bool,
}

/// A fee line already classified by the treatment region's catalogue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// Unique within the bill.
    pub line_no: String,
    pub item_code: String,
    pub class: CatalogueClass,
    /// Class-B first self-pay ratio (ignored for classes A and C).
    pub first_selfpay_ratio: Decimal,
    /// Highest unit price the fund recognises, if the item has one.
    pub price_cap: Option<Money>,
    /// `> 0`.
    pub quantity: Decimal,
    /// `>= 0`.
    pub unit_price: Money,
    /// `quantity × unit_price`, within one fen; at most two decimals.
    pub amount: Money,
}

/// Year-to-date accumulators of a person (calendar year of the visit date).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Accumulators {
    pub year: i32,
    /// Compare-and-set version at the home node.
    pub version: u64,
    /// Pooled fund paid, all visit kinds (against `caps.annual`).
    pub pool_paid: Money,
    /// Pooled fund paid for outpatient and pharmacy visits (against `caps.outpatient_pool`).
    pub outpatient_pool_paid: Money,
    /// Pooled fund paid for chronic visits (against `caps.chronic`).
    pub chronic_pool_paid: Money,
    /// Serious-illness fund paid (against `serious_illness.cap`).
    pub serious_illness_paid: Money,
    /// Annual outpatient deductible met so far.
    pub outpatient_deductible_paid: Money,
    /// Inpatient admissions settled this year.
    pub admissions: u32,
    /// In-scope amount of pooled visits this year; `inscope_total − pool_paid` is the
    /// year-to-date in-scope personal share that the serious-illness tiers apply to.
    pub inscope_total: Money,
}

impl Accumulators {
    /// Fresh accumulators for a calendar year.
    #[must_use]
    pub fn new(year: i32) -> Self {
        Self {
            year,
            ..Self::default()
        }
    }

    /// The same year's totals, zeroed, keeping the version: what the home node passes for
    /// a person's first claim of a new year.
    #[must_use]
    pub fn rolled_to(&self, year: i32) -> Self {
        if year == self.year {
            return self.clone();
        }
        Self {
            year,
            version: self.version,
            ..Self::default()
        }
    }

    fn check(&self) -> Result<()> {
        for (v, f) in [
            (self.pool_paid, "accumulators.pool_paid"),
            (
                self.outpatient_pool_paid,
                "accumulators.outpatient_pool_paid",
            ),
            (self.chronic_pool_paid, "accumulators.chronic_pool_paid"),
            (
                self.serious_illness_paid,
                "accumulators.serious_illness_paid",
            ),
            (
                self.outpatient_deductible_paid,
                "accumulators.outpatient_deductible_paid",
            ),
            (self.inscope_total, "accumulators.inscope_total"),
        ] {
            check_money(v, f)?;
        }
        Ok(())
    }
}

/// Why a line's amount was split as it was (`LineSplit.reason` on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineReason {
    /// Class A: fully in scope.
    A,
    /// Class B without a first self-pay share.
    B,
    /// Class B: first self-pay share, rest in scope.
    BFirstSelfpay,
    /// Class C: fully self-paid.
    COutOfScope,
    /// Class A above its price cap.
    OverPriceCap,
    /// Class B above its price cap (first self-pay applies to the capped part).
    BOverPriceCap,
}

impl LineReason {
    /// Wire code.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            LineReason::A => "A",
            LineReason::B => "B",
            LineReason::BFirstSelfpay => "B_FIRST_SELFPAY",
            LineReason::COutOfScope => "C_OUT_OF_SCOPE",
            LineReason::OverPriceCap => "OVER_PRICE_CAP",
            LineReason::BOverPriceCap => "B_OVER_PRICE_CAP",
        }
    }
}

/// Per-line result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineSplit {
    pub line_no: String,
    pub amount: Money,
    pub overlmt_selfpay: Money,
    pub preselfpay_amt: Money,
    pub fulamt_ownpay_amt: Money,
    pub inscp_scp_amt: Money,
    pub reason: LineReason,
}

/// A fund that pays part of a bill (`FundPayment.fund` on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fund {
    /// 统筹基金 — pooled fund.
    Hifp,
    /// 大病保险 — serious-illness insurance.
    Hifmi,
    /// 大额医疗费用补助 — large-amount subsidy.
    Hifob,
    /// 公务员医疗补助 — civil-servant subsidy.
    Cvlserv,
    /// 医疗救助 — medical assistance.
    Maf,
    /// 个人账户 — personal account (part of the personal share, not of the fund total).
    Acct,
}

impl Fund {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Fund::Hifp => "hifp",
            Fund::Hifmi => "hifmi",
            Fund::Hifob => "hifob",
            Fund::Cvlserv => "cvlserv",
            Fund::Maf => "maf",
            Fund::Acct => "acct",
        }
    }

    /// Parses the wire name.
    pub fn parse(s: &str, field: &str) -> Result<Self> {
        Ok(match s {
            "hifp" => Fund::Hifp,
            "hifmi" => Fund::Hifmi,
            "hifob" => Fund::Hifob,
            "cvlserv" => Fund::Cvlserv,
            "maf" => Fund::Maf,
            "acct" => Fund::Acct,
            _ => {
                return Err(Error::invalid(
                    field,
                    format!(
                        "unknown fund {s:?}; expected hifp, hifmi, hifob, cvlserv, maf or acct"
                    ),
                ));
            }
        })
    }
}

/// One paying fund's row (setldetail); only funds that pay something get a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FundRow {
    pub fund: Fund,
    pub amount: Money,
    pub description: String,
}

/// The split of a bill. Identities, always:
/// `medfee_sumamt = fulamt_ownpay_amt + overlmt_selfpay + preselfpay_amt + inscp_scp_amt`,
/// `fund_pay_sumamt = hifp_pay + hifmi_pay + hifob_pay + cvlserv_pay + maf_pay`,
/// `psn_part_amt = medfee_sumamt − fund_pay_sumamt − hosp_part_amt = acct_pay + psn_cash_pay`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quote {
    pub medfee_sumamt: Money,
    pub fulamt_ownpay_amt: Money,
    pub overlmt_selfpay: Money,
    pub preselfpay_amt: Money,
    pub inscp_scp_amt: Money,
    pub act_pay_dedc: Money,
    pub hifp_pay: Money,
    pub hifmi_pay: Money,
    pub hifob_pay: Money,
    pub cvlserv_pay: Money,
    pub maf_pay: Money,
    pub fund_pay_sumamt: Money,
    pub hosp_part_amt: Money,
    pub psn_part_amt: Money,
    pub acct_pay: Money,
    pub psn_cash_pay: Money,
    /// Ratio the pooled fund applied, after the cross-region cut (0 when not pooled).
    pub pool_ratio: Decimal,
    /// Filing type applied to a cross-region visit (`Temporary` when unfiled); `None` for
    /// a visit in the home region itself.
    pub applied_filing_type: Option<FilingType>,
    pub funds: Vec<FundRow>,
    pub lines: Vec<LineSplit>,
    /// The person's accumulators after this claim (`version + 1`).
    pub accumulators: Accumulators,
    /// What happened, step by step, for a clerk.
    pub trace: Vec<String>,
}

/// Applies `policy` to a bill. Errors rather than guesses: an uncovered visit, a policy
/// not in force, a filing type without direct settlement or a malformed line never yields
/// a split.
pub fn quote(
    policy: &Policy,
    person: &PersonCtx,
    acc: &Accumulators,
    visit: &VisitCtx,
    lines: &[Line],
) -> Result<Quote> {
    let mut trace = Vec::with_capacity(12);

    // 1. Checks.
    if !policy.in_force_on(visit.visit_date) {
        return Err(Error::invalid(
            "visit.visit_date",
            format!(
                "policy {} {} is in force from {}, not on {}",
                policy.region, policy.insurance_type, policy.effective_from, visit.visit_date
            ),
        ));
    }
    if visit.home_region != policy.region {
        return Err(Error::invalid(
            "visit.home_region",
            format!(
                "{} is not the policy's region {}",
                crate::error::quoted(&visit.home_region),
                policy.region
            ),
        ));
    }
    if person.insurance_type != policy.insurance_type {
        return Err(Error::invalid(
            "person.insurance_type",
            format!(
                "{} does not match the policy's {}",
                person.insurance_type, policy.insurance_type
            ),
        ));
    }
    if !policy.person_types.contains(&person.person_type) {
        return Err(Error::invalid(
            "person.person_type",
            format!(
                "{} is not covered by policy {} {}",
                person.person_type, policy.region, policy.insurance_type
            ),
        ));
    }
    check_money(person.account_balance, "person.account_balance")?;
    if acc.year != visit.visit_date.year() {
        return Err(Error::invalid(
            "accumulators.year",
            format!(
                "accumulators of {} given for a visit on {}; pass the visit year's",
                acc.year, visit.visit_date
            ),
        ));
    }
    acc.check()?;
    let kind = visit.visit_kind;
    let Some(rule) = policy.visits.get(&kind) else {
        // Well-formed input the home policy does not provide for: a refusal
        // (FAILED_PRECONDITION), not a malformed request.
        return Err(Error::Precondition(format!(
            "policy {} {} does not cover {kind} visits",
            policy.region, policy.insurance_type
        )));
    };
    if !rule.levels.contains(&visit.level) {
        return Err(Error::Precondition(format!(
            "policy {} {} does not cover {kind} visits at {}",
            policy.region,
            policy.insurance_type,
            level_desc(visit.level)
        )));
    }
    trace.push(tline!(
        "policy {} {} \"{}\" in force from {}; {} {}{}",
        policy.region,
        policy.insurance_type,
        policy.name,
        policy.effective_from,
        kind,
        level_desc(visit.level),
        if person.civil_servant {
            format!(", person {} (civil servant)", person.person_type)
        } else {
            format!(", person {}", person.person_type)
        },
    ));

    // 2. Cross-region rule.
    let (applied_filing_type, cut) = cross_region(policy, visit, &mut trace)?;

    // 3. Lines.
    let (line_splits, t) = split_lines(lines)?;
    let medfee = t.fulamt + t.overlmt + t.preselfpay + t.inscope;
    trace.push(tline!(
        "bill {}: class C {} + above price cap {} + class-B first self-pay {} + in scope {}",
        Yuan(medfee),
        Yuan(t.fulamt),
        Yuan(t.overlmt),
        Yuan(t.preselfpay),
        Yuan(t.inscope)
    ));

    let zero = Decimal::ZERO;
    let mut new_acc = acc.clone();
    new_acc.version = acc.version.wrapping_add(1);
    let mut funds = Vec::with_capacity(4);
    let (mut dedc, mut hifp, mut serious, mut cvlserv, mut pool_ratio) =
        (zero, zero, zero, zero, zero);
    let mut serious_fund = None;

    if let Some(pool) = &rule.pool {
        // 4. Deductible.
        match &pool.deductible {
            Deductible::None => trace.push(tline!("no deductible for {kind} visits")),
            Deductible::PerVisit { first, later } => {
                let later_admission = kind == VisitKind::Inpatient && acc.admissions > 0;
                let table = match later {
                    Some(l) if later_admission => l,
                    _ => first,
                };
                let amount = lookup_level(table, visit.level, kind, "deductible")?;
                dedc = amount.min(t.inscope);
                let when = if kind != VisitKind::Inpatient {
                    "per visit".to_owned()
                } else if later_admission {
                    format!("admission {} this year", u64::from(acc.admissions) + 1)
                } else {
                    "first admission this year".to_owned()
                };
                let mut s = tline!(
                    "deductible {}: {}, {when}",
                    Yuan(amount),
                    level_desc(visit.level)
                );
                if dedc < amount {
                    let _ = write!(s, "; in scope covers {} of it", Yuan(dedc));
                }
                trace.push(s);
            }
            Deductible::Annual => {
                let total = policy
                    .outpatient_deductible
                    .as_ref()
                    .and_then(|m| m.get(&person.person_type))
                    .copied()
                    .ok_or_else(|| {
                        Error::invalid(
                            format!("policy.outpatient_deductible.{}", person.person_type),
                            "missing",
                        )
                    })?;
                let remaining = (total - acc.outpatient_deductible_paid).max(zero);
                dedc = remaining.min(t.inscope);
                new_acc.outpatient_deductible_paid += dedc;
                trace.push(tline!(
                    "annual outpatient deductible {} for {}: {} met before, {} applied now",
                    Yuan(total),
                    person.person_type,
                    Yuan(acc.outpatient_deductible_paid.min(total)),
                    Yuan(dedc)
                ));
            }
        }

        // 5. Pooled fund.
        let base_ratio = pool
            .ratio
            .get(&visit.level)
            .and_then(|row| row.get(&person.person_type))
            .copied()
            .ok_or_else(|| {
                Error::invalid(
                    format!(
                        "policy.visit.{kind}.ratio.{}.{}",
                        visit.level, person.person_type
                    ),
                    "missing",
                )
            })?;
        check_ratio(base_ratio, "policy ratio")?;
        pool_ratio = (base_ratio - cut).max(zero);
        let mut s = tline!(
            "ratio {} ({kind}, {}, {})",
            Pct(base_ratio),
            visit.level,
            person.person_type
        );
        if !cut.is_zero() {
            let _ = write!(
                s,
                " − {} pp {} = {}",
                Pp(cut),
                applied_filing_type.map_or("", FilingType::as_str),
                Pct(pool_ratio)
            );
        }
        trace.push(s);
        let base = t.inscope - dedc;
        let raw = money::round_fen(pool_ratio * base);
        let mut s = tline!(
            "pooled fund {} × {} = {}",
            Pct(pool_ratio),
            Yuan(base),
            Yuan(raw)
        );
        hifp = raw;
        let annual_left = (policy.caps.annual - acc.pool_paid).max(zero);
        if hifp > annual_left {
            hifp = annual_left;
            let _ = write!(
                s,
                "; annual cap {} with {} paid this year leaves {}",
                Yuan(policy.caps.annual),
                Yuan(acc.pool_paid),
                Yuan(annual_left)
            );
        }
        let kind_cap = match kind {
            VisitKind::Outpatient | VisitKind::Pharmacy => policy
                .caps
                .outpatient_pool
                .map(|c| (c, acc.outpatient_pool_paid, "outpatient pooling")),
            VisitKind::Chronic => policy
                .caps
                .chronic
                .map(|c| (c, acc.chronic_pool_paid, "chronic")),
            VisitKind::Inpatient | VisitKind::Emergency => None,
        };
        if let Some((cap, paid, what)) = kind_cap {
            let left = (cap - paid).max(zero);
            if hifp > left {
                hifp = left;
                let _ = write!(
                    s,
                    "; {what} cap {} with {} paid this year leaves {}",
                    Yuan(cap),
                    Yuan(paid),
                    Yuan(left)
                );
            }
        }
        if hifp != raw {
            let _ = write!(s, " → pays {}", Yuan(hifp));
        }
        trace.push(s);
        new_acc.pool_paid += hifp;
        match kind {
            VisitKind::Outpatient | VisitKind::Pharmacy => new_acc.outpatient_pool_paid += hifp,
            VisitKind::Chronic => new_acc.chronic_pool_paid += hifp,
            VisitKind::Inpatient | VisitKind::Emergency => {}
        }
        if kind == VisitKind::Inpatient {
            new_acc.admissions = acc.admissions.saturating_add(1);
        }
        new_acc.inscope_total += t.inscope;
        if !hifp.is_zero() {
            funds.push(FundRow {
                fund: Fund::Hifp,
                amount: hifp,
                description: format!("pooled fund {}", Pct(pool_ratio)),
            });
        }

        // 6. Serious illness.
        if let Some(si) = &policy.serious_illness {
            let before = (acc.inscope_total - acc.pool_paid).max(zero);
            let after = before + (t.inscope - hifp);
            let mut exact = zero;
            let mut s = tline!(
                "serious illness ({}): year-to-date in-scope personal share {} → {}",
                si.fund.as_str(),
                Yuan(before),
                Yuan(after)
            );
            let mut touched = false;
            for tier in &si.tiers {
                let lo = before.max(tier.from);
                let hi = tier.to.map_or(after, |to| after.min(to));
                if hi > lo {
                    touched = true;
                    exact += tier.ratio * (hi - lo);
                    let _ = write!(
                        s,
                        "; tier {}–{} at {} on {}",
                        Yuan(tier.from),
                        tier.to.map_or_else(|| "".to_owned(), money::format),
                        Pct(tier.ratio),
                        Yuan(hi - lo)
                    );
                }
            }
            let raw = money::round_fen(exact);
            serious = raw;
            let left = (si.cap - acc.serious_illness_paid).max(zero);
            if serious > left {
                serious = left;
                let _ = write!(
                    s,
                    "; cap {} with {} paid this year leaves {}",
                    Yuan(si.cap),
                    Yuan(acc.serious_illness_paid),
                    Yuan(left)
                );
            }
            if touched {
                let _ = write!(s, " → pays {}", Yuan(serious));
            } else {
                s.push_str("; below the first tier");
            }
            trace.push(s);
            new_acc.serious_illness_paid += serious;
            serious_fund = Some(si.fund);
            if !serious.is_zero() {
                let (fund, name) = match si.fund {
                    SeriousFund::Hifmi => (Fund::Hifmi, "serious-illness insurance"),
                    SeriousFund::Hifob => (Fund::Hifob, "large-amount subsidy"),
                };
                funds.push(FundRow {
                    fund,
                    amount: serious,
                    description: name.to_owned(),
                });
            }
        }

        // 7. Civil-servant subsidy.
        if person.civil_servant {
            match &policy.civil_servant {
                Some(cs) => {
                    let share = t.inscope - hifp - serious;
                    cvlserv = money::round_fen(cs.ratio * share);
                    trace.push(tline!(
                        "civil-servant subsidy {} × in-scope personal share {} = {}",
                        Pct(cs.ratio),
                        Yuan(share),
                        Yuan(cvlserv)
                    ));
                    if !cvlserv.is_zero() {
                        funds.push(FundRow {
                            fund: Fund::Cvlserv,
                            amount: cvlserv,
                            description: format!("civil-servant subsidy {}", Pct(cs.ratio)),
                        });
                    }
                }
                None => trace.push("no civil-servant subsidy in this policy".to_owned()),
            }
        }
    } else {
        trace.push(tline!(
            "{kind} visits are not pooled under this policy: no fund pays"
        ));
    }

    let (hifmi, hifob) = match serious_fund {
        Some(SeriousFund::Hifob) => (zero, serious),
        _ => (serious, zero),
    };
    let maf = zero;
    let hosp_part = zero;
    let fund_sum = hifp + hifmi + hifob + cvlserv + maf;
    let psn_part = medfee - fund_sum - hosp_part;
    trace.push(tline!(
        "funds pay {}; personal share {}",
        Yuan(fund_sum),
        Yuan(psn_part)
    ));

    // 8. Personal account, then cash.
    let mut acct = zero;
    if visit.use_account {
        if policy.account.kinds.contains(&kind) {
            let eligible = match policy.account.scope {
                AccountScope::PersonalShare => psn_part,
                AccountScope::InScopeShare => psn_part - t.fulamt - t.overlmt,
            };
            acct = eligible.min(person.account_balance).max(zero);
            trace.push(tline!(
                "personal account pays {} (balance {}, may pay {})",
                Yuan(acct),
                Yuan(person.account_balance),
                Yuan(eligible)
            ));
            if !acct.is_zero() {
                funds.push(FundRow {
                    fund: Fund::Acct,
                    amount: acct,
                    description: "personal account".to_owned(),
                });
            }
        } else {
            trace.push(tline!(
                "personal account may not pay for {kind} visits under this policy"
            ));
        }
    }
    let cash = psn_part - acct;
    trace.push(tline!("patient pays {} in cash", Yuan(cash)));

    Ok(Quote {
        medfee_sumamt: medfee,
        fulamt_ownpay_amt: t.fulamt,
        overlmt_selfpay: t.overlmt,
        preselfpay_amt: t.preselfpay,
        inscp_scp_amt: t.inscope,
        act_pay_dedc: dedc,
        hifp_pay: hifp,
        hifmi_pay: hifmi,
        hifob_pay: hifob,
        cvlserv_pay: cvlserv,
        maf_pay: maf,
        fund_pay_sumamt: fund_sum,
        hosp_part_amt: hosp_part,
        psn_part_amt: psn_part,
        acct_pay: acct,
        psn_cash_pay: cash,
        pool_ratio,
        applied_filing_type,
        funds,
        lines: line_splits,
        accumulators: new_acc,
        trace,
    })
}

/// The filing type that applies to a cross-region visit under `policy` (`Temporary` when
/// unfiled; `None` for care in the home region), or the error that refuses direct
/// settlement. Used for eligibility before any fee line exists; [`quote`] applies the
/// same rule.
pub fn direct_settlement(policy: &Policy, visit: &VisitCtx) -> Result<Option<FilingType>> {
    if !policy.visits.contains_key(&visit.visit_kind) {
        return Err(Error::Precondition(format!(
            "{} visits are not covered by the home policy {}",
            visit.visit_kind, policy.name
        )));
    }
    let mut trace = Vec::new();
    let (applied, _) = cross_region(policy, visit, &mut trace)?;
    Ok(applied)
}

/// Decides which filing applies and returns it with the ratio cut; refuses visits the
/// policy does not settle directly.
fn cross_region(
    policy: &Policy,
    visit: &VisitCtx,
    trace: &mut Vec<String>,
) -> Result<(Option<FilingType>, Decimal)> {
    if visit.treatment_region == visit.home_region {
        trace.push(tline!(
            "visit in the home region {}: no cross-region rule",
            visit.home_region
        ));
        return Ok((None, Decimal::ZERO));
    }
    let mut applied = FilingType::Temporary;
    let why = match &visit.filing {
        None => "no filing".to_owned(),
        Some(f) if f.treatment_region != visit.treatment_region => format!(
            "filing {} is for {}, not {}",
            f.filing_type, f.treatment_region, visit.treatment_region
        ),
        // An inpatient admitted unfiled may file before the discharge settlement and
        // still settle as filed (DOMAIN.md): for a stay, only a filing that expired
        // before the admission fails to cover it. (The node hands the engine only
        // filings valid by the day of settlement.)
        Some(f)
            if (visit.visit_date < f.valid_from && visit.visit_kind != VisitKind::Inpatient)
                || f.valid_to.is_some_and(|to| visit.visit_date > to) =>
        {
            format!(
                "filing {} valid {}..{} does not cover {}",
                f.filing_type,
                f.valid_from,
                f.valid_to.map_or_else(String::new, |d| d.to_string()),
                visit.visit_date
            )
        }
        Some(f)
            if f.filing_type.is_long_term()
                && policy.cross_region.named_institutions_only
                && !f.institutions.is_empty()
                && !f.institutions.contains(&visit.institution_code) =>
        {
            format!(
                "filing {} names {}; {} is not one of them",
                f.filing_type,
                f.institutions.join(", "),
                visit.institution_code
            )
        }
        Some(f) => {
            applied = f.filing_type;
            format!("filed {} for {}", f.filing_type, f.treatment_region)
        }
    };
    // Emergency rescue (门诊抢救) counts as filed even without a filing.
    let emergency = applied == FilingType::Temporary && visit.visit_kind == VisitKind::Emergency;
    if emergency {
        applied = FilingType::Emergency;
    }
    let rule = policy.cross_region.filing.get(&applied).ok_or_else(|| {
        Error::invalid(format!("policy.cross_region.filing.{applied}"), "missing")
    })?;
    check_ratio(rule.ratio_cut, "policy ratio_cut")?;
    let mut s = tline!(
        "cross-region care in {} (home {}): {why}",
        visit.treatment_region,
        visit.home_region
    );
    if applied == FilingType::Temporary {
        s.push_str(" → unfiled, settled as temporary");
    } else if emergency {
        s.push_str(" → emergency rescue counts as filed");
    }
    if rule.no_direct_settlement.contains(&visit.visit_kind) {
        return Err(Error::Precondition(format!(
            "no direct settlement: policy {} {} does not settle {} visits directly under filing type {applied} ({why}); the patient pays in full and claims reimbursement from the home agency",
            policy.region, policy.insurance_type, visit.visit_kind
        )));
    }
    if rule.ratio_cut.is_zero() {
        s.push_str("; no ratio cut");
    } else {
        let _ = write!(s, "; ratio cut {} pp", Pp(rule.ratio_cut));
    }
    trace.push(s);
    Ok((Some(applied), rule.ratio_cut))
}

#[derive(Default)]
struct Totals {
    fulamt: Money,
    overlmt: Money,
    preselfpay: Money,
    inscope: Money,
}

fn split_lines(lines: &[Line]) -> Result<(Vec<LineSplit>, Totals)> {
    if lines.is_empty() {
        return Err(Error::invalid("lines", "a bill needs at least one line"));
    }
    if let Some(i) = duplicate_line_no(lines) {
        return Err(Error::invalid(
            format!("lines[{i}].line_no"),
            format!(
                "{} appears twice in the bill",
                crate::error::quoted(&lines[i].line_no)
            ),
        ));
    }
    let zero = Decimal::ZERO;
    let fen = Decimal::new(1, 2);
    let mut out = Vec::with_capacity(lines.len());
    let mut t = Totals::default();
    for (i, l) in lines.iter().enumerate() {
        let field = |f: &str| format!("lines[{i}].{f}");
        if l.line_no.is_empty() {
            return Err(Error::invalid(field("line_no"), "missing"));
        }
        if l.quantity.is_sign_negative() || l.quantity.is_zero() {
            return Err(Error::invalid(
                field("quantity"),
                format!("{} must be greater than zero", l.quantity),
            ));
        }
        if let Some(reason) = money_problem(l.amount) {
            return Err(Error::invalid(field("amount"), reason));
        }
        if l.unit_price.is_sign_negative() && !l.unit_price.is_zero() {
            return Err(Error::invalid(
                field("unit_price"),
                format!("{} must not be negative", l.unit_price),
            ));
        }
        if let Some(cap) = l.price_cap
            && cap.is_sign_negative()
            && !cap.is_zero()
        {
            return Err(Error::invalid(
                field("price_cap"),
                format!("{cap} must not be negative"),
            ));
        }
        if let Some(reason) = ratio_problem(l.first_selfpay_ratio) {
            return Err(Error::invalid(field("first_selfpay_ratio"), reason));
        }
        let product = l
            .quantity
            .checked_mul(l.unit_price)
            .ok_or_else(|| Error::invalid(field("quantity"), "quantity × unit_price too large"))?;
        if (l.amount - product).abs() > fen {
            return Err(Error::invalid(
                field("amount"),
                format!(
                    "{} differs from quantity {} × unit_price {} = {} by more than one fen (line {:?})",
                    Yuan(l.amount),
                    l.quantity,
                    l.unit_price,
                    product,
                    l.line_no
                ),
            ));
        }
        let mut s = LineSplit {
            line_no: l.line_no.clone(),
            amount: l.amount,
            overlmt_selfpay: zero,
            preselfpay_amt: zero,
            fulamt_ownpay_amt: zero,
            inscp_scp_amt: zero,
            reason: LineReason::A,
        };
        if l.class == CatalogueClass::C {
            s.fulamt_ownpay_amt = l.amount;
            s.reason = LineReason::COutOfScope;
        } else {
            let mut over = false;
            if let Some(cap) = l.price_cap
                && l.unit_price > cap
            {
                let allowed = money::round_fen(l.quantity * cap).min(l.amount);
                s.overlmt_selfpay = l.amount - allowed;
                over = !s.overlmt_selfpay.is_zero();
            }
            let rest = l.amount - s.overlmt_selfpay;
            if l.class == CatalogueClass::B {
                s.preselfpay_amt = money::round_fen(rest * l.first_selfpay_ratio);
                s.reason = match (over, l.first_selfpay_ratio.is_zero()) {
                    (true, _) => LineReason::BOverPriceCap,
                    (false, true) => LineReason::B,
                    (false, false) => LineReason::BFirstSelfpay,
                };
            } else if over {
                s.reason = LineReason::OverPriceCap;
            }
            s.inscp_scp_amt = rest - s.preselfpay_amt;
        }
        // Most parts of most lines are zero; skipping them saves Decimal additions on
        // the hot path.
        for (sum, part) in [
            (&mut t.fulamt, s.fulamt_ownpay_amt),
            (&mut t.overlmt, s.overlmt_selfpay),
            (&mut t.preselfpay, s.preselfpay_amt),
            (&mut t.inscope, s.inscp_scp_amt),
        ] {
            if !part.is_zero() {
                *sum += part;
            }
        }
        out.push(s);
    }
    Ok((out, t))
}

/// The index of a line whose number an earlier line already has. Sorts 64-bit hashes
/// rather than the strings (the engine's hot path), comparing strings only within a run
/// of equal hashes, so a hash collision can never hide a duplicate.
fn duplicate_line_no(lines: &[Line]) -> Option<usize> {
    fn fnv1a(b: &[u8]) -> u64 {
        b.iter().fold(0xcbf2_9ce4_8422_2325, |h, &x| {
            (h ^ u64::from(x)).wrapping_mul(0x0100_0000_01b3)
        })
    }
    let mut keys: Vec<(u64, usize)> = lines
        .iter()
        .enumerate()
        .map(|(i, l)| (fnv1a(l.line_no.as_bytes()), i))
        .collect();
    keys.sort_unstable();
    let mut found: Option<usize> = None;
    let mut start = 0;
    while start < keys.len() {
        let mut end = start + 1;
        while end < keys.len() && keys[end].0 == keys[start].0 {
            end += 1;
        }
        let run = &keys[start..end];
        for (a, &(_, i)) in run.iter().enumerate() {
            for &(_, j) in &run[a + 1..] {
                if lines[i].line_no == lines[j].line_no {
                    let later = i.max(j);
                    found = Some(found.map_or(later, |f| f.min(later)));
                }
            }
        }
        start = end;
    }
    found
}

fn lookup_level(
    t: &std::collections::BTreeMap<HospitalLevel, Money>,
    level: HospitalLevel,
    kind: VisitKind,
    what: &str,
) -> Result<Money> {
    t.get(&level)
        .copied()
        .ok_or_else(|| Error::invalid(format!("policy.visit.{kind}.{what}.{level}"), "missing"))
}

fn check_money(v: Money, field: &str) -> Result<()> {
    match money_problem(v) {
        Some(reason) => Err(Error::invalid(field, reason)),
        None => Ok(()),
    }
}

/// Why `v` is not a valid non-negative amount, if it is not. Cheap on the good path:
/// sign and scale are bit tests, the range check compares mantissas.
fn money_problem(v: Money) -> Option<String> {
    if v.is_sign_negative() && !v.is_zero() {
        return Some(format!("{v} must not be negative"));
    }
    if v.scale() > 2 && v.normalize().scale() > 2 {
        return Some(format!("{v} has more than 2 decimals"));
    }
    // MAX_ABS (10^12 yuan) as a mantissa at the value's scale (0, 1 or 2 here).
    const LIMITS: [u128; 3] = [1_000_000_000_000, 10_000_000_000_000, 100_000_000_000_000];
    let too_large = match LIMITS.get(v.scale() as usize) {
        Some(limit) => v.mantissa().unsigned_abs() > *limit,
        None => v > money::MAX_ABS,
    };
    if too_large {
        return Some(format!("{v} is too large"));
    }
    None
}

fn check_ratio(r: Decimal, field: &str) -> Result<()> {
    match ratio_problem(r) {
        Some(reason) => Err(Error::invalid(field, reason)),
        None => Ok(()),
    }
}

fn ratio_problem(r: Decimal) -> Option<String> {
    if r.is_zero() {
        return None;
    }
    // r <= 1 exactly when its mantissa is at most 10^scale (cheaper than a Decimal
    // comparison, which rescales).
    let one = 10_i128.checked_pow(r.scale()).unwrap_or(i128::MAX);
    if r.is_sign_negative() || r.mantissa() > one {
        return Some(format!("ratio {r} must be between 0 and 1"));
    }
    None
}

/// Trace formatting of an amount ("1234.50") straight from the fen integer: the trace
/// is built on every quote, and `Decimal`'s own `Display` would dominate the engine's
/// time.
struct Yuan(Decimal);

impl fmt::Display for Yuan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut r = self.0;
        if r.scale() > 2 {
            r = money::round_fen(r);
        }
        r.rescale(2);
        let m = r.mantissa();
        let mut fen = m.unsigned_abs();
        // Digits right to left into a stack buffer: "-", up to 27 digits, ".".
        let mut buf = [0u8; 40];
        let mut at = buf.len();
        let mut digits = 0;
        while digits < 3 || fen > 0 {
            if digits == 2 {
                at -= 1;
                buf[at] = b'.';
            }
            at -= 1;
            buf[at] = b'0' + (fen % 10) as u8;
            fen /= 10;
            digits += 1;
        }
        if m < 0 {
            at -= 1;
            buf[at] = b'-';
        }
        f.write_str(std::str::from_utf8(&buf[at..]).unwrap_or("?"))
    }
}

/// A ratio as percentage points without the sign: 0.85 → "85", 0.875 → "87.5".
struct Pp(Decimal);

impl fmt::Display for Pp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut r = self.0;
        r.rescale(4);
        let bp = r.mantissa();
        let (whole, frac) = (bp / 100, (bp % 100).unsigned_abs());
        if frac == 0 {
            write!(f, "{whole}")
        } else if frac % 10 == 0 {
            write!(f, "{whole}.{}", frac / 10)
        } else {
            write!(f, "{whole}.{frac:02}")
        }
    }
}

/// A ratio as a percentage: "85%", "87.5%".
struct Pct(Decimal);

impl fmt::Display for Pct {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}%", Pp(self.0))
    }
}

fn level_desc(level: HospitalLevel) -> &'static str {
    match level {
        HospitalLevel::Level1 => "level-1 hospital",
        HospitalLevel::Level2 => "level-2 hospital",
        HospitalLevel::Level3 => "level-3 hospital",
        HospitalLevel::Ungraded => "ungraded institution",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_formatting_matches_money_format() {
        for s in [
            "0",
            "0.05",
            "0.5",
            "1",
            "12.34",
            "-0.07",
            "-12.5",
            "1234567.89",
            "0.004",
            "0.005",
            "999999999999.99",
            "20.000",
        ] {
            let v: Decimal = s.parse().unwrap();
            assert_eq!(Yuan(v).to_string(), money::format(v), "{s}");
        }
        assert_eq!(Pct(Decimal::new(85, 2)).to_string(), "85%");
        assert_eq!(Pct(Decimal::new(875, 3)).to_string(), "87.5%");
        assert_eq!(Pct(Decimal::new(8755, 4)).to_string(), "87.55%");
        assert_eq!(Pct(Decimal::ONE).to_string(), "100%");
        assert_eq!(Pct(Decimal::ZERO).to_string(), "0%");
        assert_eq!(Pp(Decimal::new(1, 1)).to_string(), "10");
    }

    #[test]
    fn duplicate_line_numbers_are_found() {
        let line = |no: &str| Line {
            line_no: no.to_owned(),
            item_code: String::new(),
            class: CatalogueClass::A,
            first_selfpay_ratio: Decimal::ZERO,
            price_cap: None,
            quantity: Decimal::ONE,
            unit_price: Decimal::ONE,
            amount: Decimal::ONE,
        };
        let lines: Vec<Line> = ["3", "1", "2", "10", "1", "3"]
            .into_iter()
            .map(line)
            .collect();
        assert_eq!(duplicate_line_no(&lines), Some(4));
        assert_eq!(duplicate_line_no(&lines[..4]), None);
    }
}
