//! Region codes: the 6-digit administrative division codes of GB/T 2260. A province is
//! `PP0000`, a city (the pooling level, 统筹地区) is `PPCC00`. Nodes are cities; the
//! coordinator carries its province's code.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// A validated 6-digit region code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RegionCode([u8; 6]);

/// Province codes of the People's Republic (GB/T 2260 first two digits).
const PROVINCES: &[&str] = &[
    "11", "12", "13", "14", "15", "21", "22", "23", "31", "32", "33", "34", "35", "36", "37", "41",
    "42", "43", "44", "45", "46", "50", "51", "52", "53", "54", "61", "62", "63", "64", "65", "71",
    "81", "82",
];

impl RegionCode {
    /// Parses and checks structure: six digits, a known province, and either a province
    /// (`PP0000`) or a city/district code.
    pub fn parse(s: &str, field: &str) -> Result<Self> {
        let bytes = s.as_bytes();
        if s == NATIONAL.as_str() {
            return Ok(NATIONAL);
        }
        if bytes.len() != 6 || !bytes.iter().all(u8::is_ascii_digit) {
            return Err(Error::invalid(
                field,
                format!(
                    "region code must be 6 digits, got {}",
                    crate::error::quoted(s)
                ),
            ));
        }
        if !PROVINCES.contains(&&s[..2]) {
            return Err(Error::invalid(
                field,
                format!(
                    "region code {} names no known province",
                    crate::error::quoted(s)
                ),
            ));
        }
        if &s[2..4] == "00" && &s[4..] != "00" {
            return Err(Error::invalid(
                field,
                format!(
                    "region code {} has a district under no city",
                    crate::error::quoted(s)
                ),
            ));
        }
        let mut b = [0u8; 6];
        b.copy_from_slice(bytes);
        Ok(Self(b))
    }

    /// Parses a code that must name a city (pooling region): `PPCC00` with `CC != 00`.
    pub fn parse_city(s: &str, field: &str) -> Result<Self> {
        let r = Self::parse(s, field)?;
        if !r.is_city() {
            return Err(Error::invalid(
                field,
                format!(
                    "{} is not a city (pooling region) code like \"330100\"",
                    crate::error::quoted(s)
                ),
            ));
        }
        Ok(r)
    }

    /// The code as a string slice.
    #[must_use]
    pub fn as_str(&self) -> &str {
        // The bytes are ASCII digits by construction.
        std::str::from_utf8(&self.0).unwrap_or("000000")
    }

    /// True for `PP0000` (not for the national level, `000000`).
    #[must_use]
    pub fn is_province(&self) -> bool {
        &self.0[2..] == b"0000" && !self.is_national()
    }

    /// True for `000000`, the national clearing level: the national coordinator, whose
    /// participants are the provinces (docs/national.md).
    #[must_use]
    pub fn is_national(&self) -> bool {
        *self == NATIONAL
    }

    /// True for `PPCC00` with `CC != 00`.
    #[must_use]
    pub fn is_city(&self) -> bool {
        &self.0[2..4] != b"00" && &self.0[4..] == b"00"
    }

    /// The province this code belongs to.
    #[must_use]
    pub fn province(&self) -> RegionCode {
        let mut b = self.0;
        b[2..].copy_from_slice(b"0000");
        RegionCode(b)
    }
}

/// The national clearing level's code: no province of GB/T 2260, so it never names a
/// city or a province. Only a coordinator carries it (its participants are provinces).
pub const NATIONAL: RegionCode = RegionCode(*b"000000");

/// The province of a region code as a string: its first two digits and `0000`
/// (`"330102"` → `"330000"`). The one helper for "which province is this region in",
/// for claims, ledgers and the federation directory alike; it does not validate (a
/// string shorter than two characters gives itself followed by zeros), so parse with
/// [`RegionCode::parse`] where the input is untrusted.
#[must_use]
pub fn province_of(region: &str) -> String {
    let head: String = region.chars().take(2).collect();
    format!("{head:0<2}0000")
}

/// Whether two region codes lie in different provinces (a cross-province claim, cleared
/// at the national level). Codes that do not parse compare by their first two digits.
#[must_use]
pub fn cross_province(a: &str, b: &str) -> bool {
    a.get(..2) != b.get(..2)
}

impl fmt::Display for RegionCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl TryFrom<String> for RegionCode {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        Self::parse(&s, "region")
    }
}

impl From<RegionCode> for String {
    fn from(r: RegionCode) -> Self {
        r.as_str().to_owned()
    }
}

impl std::str::FromStr for RegionCode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s, "region")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn structure() {
        let hz = RegionCode::parse_city("330100", "r").unwrap();
        assert!(hz.is_city() && !hz.is_province());
        assert_eq!(hz.province().as_str(), "330000");
        assert!(RegionCode::parse("330000", "r").unwrap().is_province());
        assert!(RegionCode::parse("330102", "r").is_ok());
        for bad in ["33010", "3301000", "33010a", "990100", "330001", ""] {
            let e = RegionCode::parse(bad, "home_region")
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("invalid home_region"), "{bad} {e}");
        }
        assert!(RegionCode::parse_city("330000", "r").is_err());
        assert!(RegionCode::parse_city("330102", "r").is_err());
    }

    #[test]
    fn provinces_and_the_national_level() {
        assert_eq!(province_of("330102"), "330000");
        assert_eq!(province_of("320500"), "320000");
        assert_eq!(province_of("330000"), "330000");
        let hz = RegionCode::parse_city("330100", "r").unwrap();
        assert_eq!(province_of(hz.as_str()), hz.province().as_str());
        assert!(
            RegionCode::parse("990100", "r")
                .unwrap_err()
                .to_string()
                .contains("names no known province")
        );
        let n = RegionCode::parse("000000", "r").unwrap();
        assert!(n.is_national() && !n.is_province() && !n.is_city());
        assert!(RegionCode::parse_city("000000", "r").is_err());
        assert!(cross_province("330100", "320500"));
        assert!(!cross_province("330100", "330200"));
    }
}
