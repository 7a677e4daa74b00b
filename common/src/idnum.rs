//! Resident identity numbers (公民身份号码, GB 11643-1999): 6-digit region of birth
//! registration, 8-digit birth date, 3-digit sequence (odd = male), and an ISO 7064
//! MOD 11-2 check character (`0`–`9` or `X`).

use chrono::NaiveDate;
use sha2::{Digest, Sha256};

use crate::{Error, Result};

const WEIGHTS: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
const CHECK: &[u8; 11] = b"10X98765432";

/// A validated 18-character ID number (upper-case `X`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdNumber(String);

/// The check character for the first 17 digits.
#[must_use]
pub fn check_char(first17: &[u8]) -> char {
    let sum: u32 = first17
        .iter()
        .zip(WEIGHTS)
        .map(|(d, w)| u32::from(d - b'0') * w)
        .sum();
    CHECK[(sum % 11) as usize] as char
}

impl IdNumber {
    /// Validates length, digits, birth date (not in the future, not before 1900) and the
    /// check character. A lower-case `x` is accepted and normalised.
    pub fn parse(s: &str, field: &str) -> Result<Self> {
        let s = s.to_ascii_uppercase();
        let b = s.as_bytes();
        if b.len() != 18 {
            return Err(Error::invalid(
                field,
                format!("ID number must be 18 characters, got {}", b.len()),
            ));
        }
        if !b[..17].iter().all(u8::is_ascii_digit) || !(b[17].is_ascii_digit() || b[17] == b'X') {
            return Err(Error::invalid(
                field,
                "ID number must be 17 digits followed by a digit or X",
            ));
        }
        let birth = birth_date_of(&s).ok_or_else(|| {
            Error::invalid(
                field,
                format!("ID number has an impossible birth date {:?}", &s[6..14]),
            )
        })?;
        let today = chrono::Utc::now().date_naive();
        if birth > today || birth.year_ce().1 < 1900 {
            return Err(Error::invalid(
                field,
                format!("ID number birth date {birth} is out of range"),
            ));
        }
        let want = check_char(&b[..17]);
        if b[17] as char != want {
            return Err(Error::invalid(
                field,
                format!("ID number check digit is wrong (expected {want})"),
            ));
        }
        Ok(Self(s))
    }

    /// The number as a string.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Birth date encoded in the number.
    #[must_use]
    pub fn birth_date(&self) -> NaiveDate {
        birth_date_of(&self.0).unwrap_or_default()
    }

    /// "M" or "F" from the parity of the sequence number.
    #[must_use]
    pub fn sex(&self) -> &'static str {
        if (self.0.as_bytes()[16] - b'0') % 2 == 1 {
            "M"
        } else {
            "F"
        }
    }

    /// The hash that travels in federated look-ups instead of the number itself.
    #[must_use]
    pub fn lookup_hash(&self) -> String {
        lookup_hash(&self.0)
    }
}

use chrono::Datelike;

fn birth_date_of(s: &str) -> Option<NaiveDate> {
    let y = s.get(6..10)?.parse().ok()?;
    let m = s.get(10..12)?.parse().ok()?;
    let d = s.get(12..14)?.parse().ok()?;
    NaiveDate::from_ymd_opt(y, m, d)
}

/// SHA-256 hex of `"yidi-person-v1:" + number` (see `LookupPersonRequest`).
#[must_use]
pub fn lookup_hash(number: &str) -> String {
    hex::encode(lookup_digest(number))
}

/// The bytes of [`lookup_hash`], for callers that keep millions of them in memory.
#[must_use]
pub fn lookup_digest(number: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"yidi-person-v1:");
    h.update(number.as_bytes());
    h.finalize().into()
}

/// Builds a valid number from region, birth date and a sequence 0..=999 (test data,
/// the demo's generator).
#[must_use]
pub fn make(region: &str, birth: NaiveDate, seq: u16) -> String {
    let mut s = format!("{region}{}{:03}", birth.format("%Y%m%d"), seq % 1000);
    let c = check_char(s.as_bytes());
    s.push(c);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_numbers() {
        // The GB 11643 worked example.
        let id = IdNumber::parse("11010519491231002x", "id_number").unwrap();
        assert_eq!(id.as_str(), "11010519491231002X");
        assert_eq!(id.sex(), "F");
        assert_eq!(
            id.birth_date(),
            NaiveDate::from_ymd_opt(1949, 12, 31).unwrap()
        );
        let made = make("330106", NaiveDate::from_ymd_opt(1980, 2, 29).unwrap(), 123);
        assert!(IdNumber::parse(&made, "x").is_ok());
        assert_eq!(IdNumber::parse(&made, "x").unwrap().sex(), "M");
    }

    #[test]
    fn rejects_with_reason() {
        let e = IdNumber::parse("110105194912310021", "id_number")
            .unwrap_err()
            .to_string();
        assert!(e.contains("check digit") && e.contains("id_number"), "{e}");
        assert!(
            IdNumber::parse("11010519491331002X", "f")
                .unwrap_err()
                .to_string()
                .contains("birth date")
        );
        assert!(
            IdNumber::parse("1101051949123100", "f")
                .unwrap_err()
                .to_string()
                .contains("18")
        );
        assert!(IdNumber::parse("11010519491231A02X", "f").is_err());
        let future = make("330106", NaiveDate::from_ymd_opt(2999, 1, 1).unwrap(), 1);
        assert!(IdNumber::parse(&future, "f").is_err());
    }
}
