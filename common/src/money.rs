//! Money: yuan as `rust_decimal::Decimal` with at most two decimals (fen). Parsing is
//! strict (wire strings come from other systems); rounding is half-up at the fen, the
//! rule every node must apply identically. Never floating point.

use rust_decimal::{Decimal, RoundingStrategy};

use crate::{Error, Result};

/// Amounts are plain decimals; this alias documents intent in signatures.
pub type Money = Decimal;

/// Largest absolute amount accepted anywhere: 10^12 yuan, far above any real bill or
/// clearing total, low enough that sums of millions of claims never overflow.
pub const MAX_ABS: Decimal = Decimal::from_parts(3_567_587_328, 232, 0, false, 0); // 1_000_000_000_000

/// Sign rule for a parsed amount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sign {
    /// `>= 0` — prices, balances, totals.
    NonNegative,
    /// `> 0` — a payment or a deduction must move something.
    Positive,
    /// Any sign — adjustments and net positions.
    Any,
}

/// Parses a money string: optional `-`, digits, optionally `.` and one or two digits.
/// No exponent, no `+`, no separators, no surrounding spaces.
pub fn parse(s: &str, field: &str, sign: Sign) -> Result<Money> {
    let bad = |reason: &str| {
        Error::invalid(
            field,
            format!(
                "{reason} (got {}; expected yuan like \"12.50\")",
                crate::error::quoted(s)
            ),
        )
    };
    if s.is_empty() {
        return Err(bad("missing amount"));
    }
    let body = s.strip_prefix('-').unwrap_or(s);
    let (int, frac) = match body.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (body, None),
    };
    if int.is_empty() || !int.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad("not a decimal amount"));
    }
    if let Some(f) = frac {
        if f.is_empty() || !f.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad("not a decimal amount"));
        }
        if f.len() > 2 {
            return Err(bad("more than 2 decimals"));
        }
    }
    if int.len() > 13 {
        return Err(bad("amount too large"));
    }
    let v: Decimal = s.parse().map_err(|_| bad("not a decimal amount"))?;
    if v.abs() > MAX_ABS {
        return Err(bad("amount too large"));
    }
    match sign {
        Sign::NonNegative if v.is_sign_negative() && !v.is_zero() => {
            Err(bad("must not be negative"))
        }
        Sign::Positive if v <= Decimal::ZERO => Err(bad("must be greater than zero")),
        _ => Ok(v.normalize().round_dp(2)),
    }
}

/// Parses an optional amount: the empty string means `None`.
pub fn parse_opt(s: &str, field: &str, sign: Sign) -> Result<Option<Money>> {
    if s.is_empty() {
        Ok(None)
    } else {
        parse(s, field, sign).map(Some)
    }
}

/// Rounds half-up (away from zero at .5) to the fen.
#[must_use]
pub fn round_fen(v: Decimal) -> Money {
    v.round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero)
}

/// Formats with exactly two decimals, e.g. `1234.50`, `-0.07`, `0.00`.
#[must_use]
pub fn format(v: Money) -> String {
    let mut r = round_fen(v);
    r.rescale(2);
    if r.is_zero() {
        return "0.00".to_owned();
    }
    r.to_string()
}

/// Formats an optional amount; `None` becomes the empty string.
#[must_use]
pub fn format_opt(v: Option<Money>) -> String {
    v.map(format).unwrap_or_default()
}

/// Whole fen (1/100 yuan) for storage: SQLite sums integers exactly and fast. The
/// amount is rounded to the fen first; every stored amount is within `MAX_ABS`, so the
/// conversion never overflows.
#[must_use]
pub fn to_fen(v: Money) -> i64 {
    let mut r = round_fen(v);
    r.rescale(2);
    i64::try_from(r.mantissa()).unwrap_or(if r.is_sign_negative() {
        i64::MIN
    } else {
        i64::MAX
    })
}

/// Yuan from whole fen.
#[must_use]
pub fn from_fen(fen: i64) -> Money {
    Decimal::new(fen, 2)
}

/// Parses a ratio in `[0, 1]` with at most four decimals ("0.85").
pub fn parse_ratio(s: &str, field: &str) -> Result<Decimal> {
    let bad = |reason: &str| {
        Error::invalid(
            field,
            format!(
                "{reason} (got {}; expected a ratio like \"0.85\")",
                crate::error::quoted(s)
            ),
        )
    };
    if s.is_empty() || s.starts_with('+') || s.contains(['e', 'E', ' ']) {
        return Err(bad("not a decimal ratio"));
    }
    let v: Decimal = s.parse().map_err(|_| bad("not a decimal ratio"))?;
    if v.scale() > 4 && v.normalize().scale() > 4 {
        return Err(bad("more than 4 decimals"));
    }
    if v < Decimal::ZERO || v > Decimal::ONE {
        return Err(bad("must be between 0 and 1"));
    }
    Ok(v.normalize())
}

/// Formats a ratio without trailing zeros beyond two decimals ("0.85", "0.1250").
#[must_use]
pub fn format_ratio(v: Decimal) -> String {
    let mut r = v.normalize();
    if r.scale() < 2 {
        r.rescale(2);
    }
    r.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal_macros::dec;

    #[test]
    fn parses_and_formats() {
        assert_eq!(parse("12.5", "x", Sign::NonNegative).unwrap(), dec!(12.5));
        assert_eq!(format(parse("12.5", "x", Sign::Any).unwrap()), "12.50");
        assert_eq!(format(parse("-0.07", "x", Sign::Any).unwrap()), "-0.07");
        assert_eq!(format(dec!(0)), "0.00");
        assert_eq!(format(dec!(-0.00)), "0.00");
        assert_eq!(format(dec!(1000000)), "1000000.00");
        assert_eq!(MAX_ABS, dec!(1000000000000));
    }

    #[test]
    fn rejects_bad_amounts_naming_the_field() {
        for bad in [
            "",
            "1.234",
            "1e3",
            "+1",
            " 1",
            "1,000",
            ".5",
            "5.",
            "abc",
            "--1",
            "12345678901234",
        ] {
            let err = parse(bad, "account_balance", Sign::Any)
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with("invalid account_balance:"),
                "{bad:?} -> {err}"
            );
        }
        assert!(
            parse("-1", "x", Sign::NonNegative)
                .unwrap_err()
                .to_string()
                .contains("negative")
        );
        assert!(parse("0", "x", Sign::Positive).is_err());
        assert!(parse("-0", "x", Sign::NonNegative).is_ok());
    }

    #[test]
    fn rounds_half_up_at_the_fen() {
        assert_eq!(round_fen(dec!(0.005)), dec!(0.01));
        assert_eq!(round_fen(dec!(0.0049)), dec!(0.00));
        assert_eq!(round_fen(dec!(-0.005)), dec!(-0.01));
        assert_eq!(round_fen(dec!(2.675)), dec!(2.68));
    }

    #[test]
    fn fen_round_trip() {
        assert_eq!(to_fen(dec!(12.5)), 1250);
        assert_eq!(to_fen(dec!(-0.07)), -7);
        assert_eq!(from_fen(1250), dec!(12.50));
        assert_eq!(format(from_fen(to_fen(MAX_ABS))), "1000000000000.00");
    }

    #[test]
    fn ratios() {
        assert_eq!(parse_ratio("0.85", "r").unwrap(), dec!(0.85));
        assert_eq!(format_ratio(dec!(0.1)), "0.10");
        assert!(parse_ratio("1.01", "r").is_err());
        assert!(parse_ratio("-0.1", "r").is_err());
        assert!(parse_ratio("0.12345", "r").is_err());
    }
}
