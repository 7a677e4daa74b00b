//! Dates, timestamps and clearing periods. A claim's clearing period is the calendar
//! month of its settlement time in China Standard Time (UTC+8), derived, never chosen,
//! so there is no "close the window" race between nodes.

use std::fmt;

use chrono::{DateTime, Datelike, FixedOffset, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// China Standard Time.
#[must_use]
pub fn cst() -> FixedOffset {
    #[allow(clippy::expect_used)]
    FixedOffset::east_opt(8 * 3600).expect("UTC+8 is a valid offset")
}

/// Today's date in UTC+8.
#[must_use]
pub fn today() -> NaiveDate {
    Utc::now().with_timezone(&cst()).date_naive()
}

/// Now as an RFC 3339 string in UTC+8, second precision plus millis.
#[must_use]
pub fn now_rfc3339() -> String {
    format_ts(Utc::now())
}

/// Formats a timestamp as RFC 3339 in UTC+8 with milliseconds.
#[must_use]
pub fn format_ts(t: DateTime<Utc>) -> String {
    t.with_timezone(&cst())
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, false)
}

/// Parses an RFC 3339 timestamp.
pub fn parse_ts(s: &str, field: &str) -> Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| {
            Error::invalid(
                field,
                format!(
                    "expected an RFC 3339 timestamp like \"2026-03-01T10:00:00+08:00\", got {}",
                    crate::error::quoted(s)
                ),
            )
        })
}

/// Parses a `YYYY-MM-DD` date.
pub fn parse_date(s: &str, field: &str) -> Result<NaiveDate> {
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .filter(|_| s.len() == 10)
        .ok_or_else(|| {
            Error::invalid(
                field,
                format!(
                    "expected a date like \"2026-03-01\", got {}",
                    crate::error::quoted(s)
                ),
            )
        })
}

/// Parses an optional date (empty string = none).
pub fn parse_date_opt(s: &str, field: &str) -> Result<Option<NaiveDate>> {
    if s.is_empty() {
        Ok(None)
    } else {
        parse_date(s, field).map(Some)
    }
}

/// A clearing period: one calendar month in UTC+8.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Period {
    year: i32,
    month: u32,
}

impl Period {
    /// The period a settlement at instant `t` belongs to.
    #[must_use]
    pub fn of(t: DateTime<Utc>) -> Self {
        let local = t.with_timezone(&cst());
        Self {
            year: local.year(),
            month: local.month(),
        }
    }

    /// The period containing a calendar date.
    #[must_use]
    pub fn of_date(d: NaiveDate) -> Self {
        Self {
            year: d.year(),
            month: d.month(),
        }
    }

    /// Parses `YYYY-MM`.
    pub fn parse(s: &str, field: &str) -> Result<Self> {
        let bad = || {
            Error::invalid(
                field,
                format!(
                    "expected a period like \"2026-03\", got {}",
                    crate::error::quoted(s)
                ),
            )
        };
        let (y, m) = s.split_once('-').ok_or_else(bad)?;
        if y.len() != 4 || m.len() != 2 {
            return Err(bad());
        }
        let year: i32 = y.parse().map_err(|_| bad())?;
        let month: u32 = m.parse().map_err(|_| bad())?;
        if !(1..=12).contains(&month) || !(2000..=2999).contains(&year) {
            return Err(bad());
        }
        Ok(Self { year, month })
    }

    /// The following month.
    #[must_use]
    pub fn next(self) -> Self {
        if self.month == 12 {
            Self {
                year: self.year + 1,
                month: 1,
            }
        } else {
            Self {
                year: self.year,
                month: self.month + 1,
            }
        }
    }

    #[must_use]
    pub fn year(self) -> i32 {
        self.year
    }

    #[must_use]
    pub fn month(self) -> u32 {
        self.month
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

impl TryFrom<String> for Period {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        Self::parse(&s, "period")
    }
}

impl From<Period> for String {
    fn from(p: Period) -> Self {
        p.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn period_is_the_month_in_utc_plus_8() {
        // 2026-01-31 16:30 UTC is 2026-02-01 00:30 in Beijing.
        let t = parse_ts("2026-01-31T16:30:00Z", "t").unwrap();
        assert_eq!(Period::of(t).to_string(), "2026-02");
        let t = parse_ts("2026-01-31T15:59:59Z", "t").unwrap();
        assert_eq!(Period::of(t).to_string(), "2026-01");
        assert_eq!(
            Period::parse("2026-12", "p").unwrap().next().to_string(),
            "2027-01"
        );
        assert!(Period::parse("2026-13", "p").is_err());
        assert!(Period::parse("2026-1", "p").is_err());
    }

    #[test]
    fn dates() {
        assert!(
            parse_date("2026-02-29", "valid_from")
                .unwrap_err()
                .to_string()
                .contains("valid_from")
        );
        assert!(parse_date("2024-02-29", "d").is_ok());
        assert!(parse_date("2024-2-9", "d").is_err());
    }
}
