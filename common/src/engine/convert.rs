//! Wire conversions of the engine's inputs and outputs (`proto::Split`,
//! `proto::Accumulators`, `proto::ClassifiedLine`, `proto::Filing`), and the check the
//! home node runs on a caller's split. Money travels as `money::format` strings.

use rust_decimal::Decimal;

use super::{Accumulators, FilingCtx, Fund, Line, Quote};
use crate::money::{self, Money, Sign};
use crate::types::{CatalogueClass, FilingStatus, FilingType};
use crate::{Error, Result, period, proto};

impl Accumulators {
    /// The wire form.
    #[must_use]
    pub fn to_proto(&self) -> proto::Accumulators {
        proto::Accumulators {
            year: self.year,
            version: self.version,
            pool_paid: money::format(self.pool_paid),
            outpatient_pool_paid: money::format(self.outpatient_pool_paid),
            chronic_pool_paid: money::format(self.chronic_pool_paid),
            serious_illness_paid: money::format(self.serious_illness_paid),
            outpatient_deductible_paid: money::format(self.outpatient_deductible_paid),
            admissions: self.admissions,
            inscope_total: money::format(self.inscope_total),
        }
    }

    /// Parses the wire form; errors name `accumulators.<field>`.
    pub fn from_proto(p: &proto::Accumulators) -> Result<Self> {
        let m = |s: &str, f: &str| money::parse(s, &format!("accumulators.{f}"), Sign::NonNegative);
        Ok(Self {
            year: p.year,
            version: p.version,
            pool_paid: m(&p.pool_paid, "pool_paid")?,
            outpatient_pool_paid: m(&p.outpatient_pool_paid, "outpatient_pool_paid")?,
            chronic_pool_paid: m(&p.chronic_pool_paid, "chronic_pool_paid")?,
            serious_illness_paid: m(&p.serious_illness_paid, "serious_illness_paid")?,
            outpatient_deductible_paid: m(
                &p.outpatient_deductible_paid,
                "outpatient_deductible_paid",
            )?,
            admissions: p.admissions,
            inscope_total: m(&p.inscope_total, "inscope_total")?,
        })
    }
}

/// Parses a quantity: a decimal string `> 0` with at most four decimals.
pub fn parse_quantity(s: &str, field: &str) -> Result<Decimal> {
    let bad = |reason: &str| {
        Error::invalid(
            field,
            format!(
                "{reason} (got {}; expected a quantity like \"2\" or \"0.5\")",
                crate::error::quoted(s)
            ),
        )
    };
    if s.is_empty()
        || !s
            .bytes()
            .all(|b| b.is_ascii_digit() || b == b'.' || b == b'-')
    {
        return Err(bad("not a decimal quantity"));
    }
    let v: Decimal = s.parse().map_err(|_| bad("not a decimal quantity"))?;
    if v.normalize().scale() > 4 {
        return Err(bad("more than 4 decimals"));
    }
    if v > money::MAX_ABS {
        return Err(bad("too large"));
    }
    if v <= Decimal::ZERO {
        return Err(bad("must be greater than zero"));
    }
    Ok(v.normalize())
}

impl Line {
    /// From a classified wire line. Errors name the field without a prefix; callers add
    /// `lines[i].` with [`Error::in_field`].
    pub fn from_proto(c: &proto::ClassifiedLine) -> Result<Self> {
        let Some(l) = &c.line else {
            return Err(Error::invalid("line", "missing"));
        };
        let class = CatalogueClass::from_proto(c.class, "class")?;
        let first_selfpay_ratio = if c.first_selfpay_ratio.is_empty() {
            Decimal::ZERO
        } else {
            money::parse_ratio(&c.first_selfpay_ratio, "first_selfpay_ratio")?
        };
        Ok(Self {
            line_no: l.line_no.clone(),
            item_code: l.item_code.clone(),
            class,
            first_selfpay_ratio,
            price_cap: money::parse_opt(&c.price_cap, "price_cap", Sign::NonNegative)?,
            quantity: parse_quantity(&l.quantity, "quantity")?,
            unit_price: money::parse(&l.unit_price, "unit_price", Sign::NonNegative)?,
            amount: money::parse(&l.amount, "amount", Sign::NonNegative)?,
        })
    }
}

impl FilingCtx {
    /// From a wire filing; `None` unless it is approved (an applied, rejected or revoked
    /// filing gives no rights). Errors name `filing.<field>`.
    pub fn from_proto(f: &proto::Filing) -> Result<Option<Self>> {
        if FilingStatus::from_proto(f.status, "filing.status")? != FilingStatus::Approved {
            return Ok(None);
        }
        Ok(Some(Self {
            filing_type: FilingType::from_proto(f.filing_type, "filing.filing_type")?,
            treatment_region: f.treatment_region.clone(),
            institutions: f.institutions.clone(),
            valid_from: period::parse_date(&f.valid_from, "filing.valid_from")?,
            valid_to: period::parse_date_opt(&f.valid_to, "filing.valid_to")?,
        }))
    }
}

impl Quote {
    /// The wire form of the split (trace and fund descriptions included).
    #[must_use]
    pub fn to_proto_split(&self) -> proto::Split {
        let f = money::format;
        proto::Split {
            medfee_sumamt: f(self.medfee_sumamt),
            fulamt_ownpay_amt: f(self.fulamt_ownpay_amt),
            overlmt_selfpay: f(self.overlmt_selfpay),
            preselfpay_amt: f(self.preselfpay_amt),
            inscp_scp_amt: f(self.inscp_scp_amt),
            act_pay_dedc: f(self.act_pay_dedc),
            hifp_pay: f(self.hifp_pay),
            hifmi_pay: f(self.hifmi_pay),
            hifob_pay: f(self.hifob_pay),
            cvlserv_pay: f(self.cvlserv_pay),
            maf_pay: f(self.maf_pay),
            fund_pay_sumamt: f(self.fund_pay_sumamt),
            hosp_part_amt: f(self.hosp_part_amt),
            psn_part_amt: f(self.psn_part_amt),
            acct_pay: f(self.acct_pay),
            psn_cash_pay: f(self.psn_cash_pay),
            pool_ratio: money::format_ratio(self.pool_ratio),
            funds: self
                .funds
                .iter()
                .map(|r| proto::FundPayment {
                    fund: r.fund.as_str().to_owned(),
                    amount: f(r.amount),
                    description: r.description.clone(),
                })
                .collect(),
            lines: self
                .lines
                .iter()
                .map(|l| proto::LineSplit {
                    line_no: l.line_no.clone(),
                    amount: f(l.amount),
                    overlmt_selfpay: f(l.overlmt_selfpay),
                    preselfpay_amt: f(l.preselfpay_amt),
                    fulamt_ownpay_amt: f(l.fulamt_ownpay_amt),
                    inscp_scp_amt: f(l.inscp_scp_amt),
                    reason: l.reason.as_str().to_owned(),
                })
                .collect(),
            trace: self.trace.clone(),
            applied_filing_type: self.applied_filing_type.map_or(0, FilingType::to_proto),
        }
    }

    /// Checks a caller's split against this one (the home node's own computation):
    /// every amount, the pool ratio, the applied filing type, each line and each fund
    /// row must agree. The trace and fund descriptions are prose and are not compared.
    /// A difference is [`Error::Precondition`] naming the first field that differs.
    pub fn split_matches(&self, theirs: &proto::Split) -> Result<()> {
        let mismatch = |field: &str, caller: &str, home: String| {
            Err(Error::Precondition(format!(
                "split mismatch at {field}: caller computed {}, home node computed {home:?} \
                 (stale policy version or accumulators?)",
                crate::error::quoted(caller)
            )))
        };
        let amount_eq = |s: &str, v: Money| money::parse(s, "x", Sign::Any).is_ok_and(|p| p == v);
        let totals: [(&str, &str, Money); 16] = [
            ("medfee_sumamt", &theirs.medfee_sumamt, self.medfee_sumamt),
            (
                "fulamt_ownpay_amt",
                &theirs.fulamt_ownpay_amt,
                self.fulamt_ownpay_amt,
            ),
            (
                "overlmt_selfpay",
                &theirs.overlmt_selfpay,
                self.overlmt_selfpay,
            ),
            (
                "preselfpay_amt",
                &theirs.preselfpay_amt,
                self.preselfpay_amt,
            ),
            ("inscp_scp_amt", &theirs.inscp_scp_amt, self.inscp_scp_amt),
            ("act_pay_dedc", &theirs.act_pay_dedc, self.act_pay_dedc),
            ("hifp_pay", &theirs.hifp_pay, self.hifp_pay),
            ("hifmi_pay", &theirs.hifmi_pay, self.hifmi_pay),
            ("hifob_pay", &theirs.hifob_pay, self.hifob_pay),
            ("cvlserv_pay", &theirs.cvlserv_pay, self.cvlserv_pay),
            ("maf_pay", &theirs.maf_pay, self.maf_pay),
            (
                "fund_pay_sumamt",
                &theirs.fund_pay_sumamt,
                self.fund_pay_sumamt,
            ),
            ("hosp_part_amt", &theirs.hosp_part_amt, self.hosp_part_amt),
            ("psn_part_amt", &theirs.psn_part_amt, self.psn_part_amt),
            ("acct_pay", &theirs.acct_pay, self.acct_pay),
            ("psn_cash_pay", &theirs.psn_cash_pay, self.psn_cash_pay),
        ];
        for (name, caller, home) in totals {
            if !amount_eq(caller, home) {
                return mismatch(name, caller, money::format(home));
            }
        }
        if !money::parse_ratio(&theirs.pool_ratio, "pool_ratio").is_ok_and(|r| r == self.pool_ratio)
        {
            return mismatch(
                "pool_ratio",
                &theirs.pool_ratio,
                money::format_ratio(self.pool_ratio),
            );
        }
        let ours_ft = self.applied_filing_type.map_or(0, FilingType::to_proto);
        if theirs.applied_filing_type != ours_ft {
            return mismatch(
                "applied_filing_type",
                &theirs.applied_filing_type.to_string(),
                ours_ft.to_string(),
            );
        }
        if theirs.lines.len() != self.lines.len() {
            return mismatch(
                "lines",
                &format!("{} lines", theirs.lines.len()),
                format!("{} lines", self.lines.len()),
            );
        }
        for (i, (t, o)) in theirs.lines.iter().zip(&self.lines).enumerate() {
            if t.line_no != o.line_no {
                return mismatch(
                    &format!("lines[{i}].line_no"),
                    &t.line_no,
                    o.line_no.clone(),
                );
            }
            let parts: [(&str, &str, Money); 5] = [
                ("amount", &t.amount, o.amount),
                ("overlmt_selfpay", &t.overlmt_selfpay, o.overlmt_selfpay),
                ("preselfpay_amt", &t.preselfpay_amt, o.preselfpay_amt),
                (
                    "fulamt_ownpay_amt",
                    &t.fulamt_ownpay_amt,
                    o.fulamt_ownpay_amt,
                ),
                ("inscp_scp_amt", &t.inscp_scp_amt, o.inscp_scp_amt),
            ];
            for (name, caller, home) in parts {
                if !amount_eq(caller, home) {
                    return mismatch(&format!("lines[{i}].{name}"), caller, money::format(home));
                }
            }
            if t.reason != o.reason.as_str() {
                return mismatch(
                    &format!("lines[{i}].reason"),
                    &t.reason,
                    o.reason.as_str().to_owned(),
                );
            }
        }
        let mut caller_funds = Vec::with_capacity(theirs.funds.len());
        for (i, fp) in theirs.funds.iter().enumerate() {
            let fund = Fund::parse(&fp.fund, &format!("split.funds[{i}].fund"))
                .map_err(|e| Error::Precondition(format!("split mismatch: {e}")))?;
            let amount = money::parse(&fp.amount, "x", Sign::Any).map_err(|_| {
                Error::Precondition(format!(
                    "split mismatch at funds[{i}].amount: {} is not an amount",
                    crate::error::quoted(&fp.amount)
                ))
            })?;
            caller_funds.push((fund, amount));
        }
        caller_funds.sort();
        let mut ours: Vec<(Fund, Money)> = self.funds.iter().map(|r| (r.fund, r.amount)).collect();
        ours.sort();
        if caller_funds != ours {
            let show = |v: &[(Fund, Money)]| {
                v.iter()
                    .map(|(f, a)| format!("{} {}", f.as_str(), money::format(*a)))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            return mismatch("funds", &show(&caller_funds), show(&ours));
        }
        Ok(())
    }
}
