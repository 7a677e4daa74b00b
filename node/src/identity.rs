//! Who a party of the federation is, as its certificate says. Every certificate that
//! `yidi certs` issues carries exactly one URI subject alternative name in the `urn:yidi:`
//! namespace; authorisation reads the caller's identity from there and never from a
//! payload field:
//!
//! | URI | Party |
//! |---|---|
//! | `urn:yidi:node:<region>` | a city agency's node |
//! | `urn:yidi:institution:<region>:<code>` | a hospital or pharmacy; `<region>` is its node |
//! | `urn:yidi:coordinator:<province>` | the provincial clearing coordinator |
//! | `urn:yidi:operator:<region>:<role>` | a person operating a node (city code) or the coordinator (province code); role `admin` or `clearing` |

use std::fmt;

use yidi_common::region::RegionCode;

/// The namespace every identity URI starts with.
pub const URN_PREFIX: &str = "urn:yidi:";

/// What an operator may do where they act.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Everything the service offers operators.
    Admin,
    /// Clearing and funds: ledgers, statements, confirmations, rounds, transfers.
    Clearing,
}

impl Role {
    /// The role's name in identities and on the command line.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Clearing => "clearing",
        }
    }

    /// Parses `admin` or `clearing`.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "admin" => Ok(Role::Admin),
            "clearing" => Ok(Role::Clearing),
            other => Err(format!(
                "unknown operator role {other:?}: expected admin or clearing"
            )),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A party of the federation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Identity {
    /// A city agency's node.
    Node { region: RegionCode },
    /// A hospital or pharmacy connected to the node of `region`.
    Institution { region: RegionCode, code: String },
    /// The clearing coordinator of a province.
    Coordinator { province: RegionCode },
    /// An operator of the node of `region` (a city code) or of the coordinator (a
    /// province code).
    Operator { region: RegionCode, role: Role },
}

/// Institution codes: 1–32 characters of `[A-Za-z0-9._-]` (the admin API's rule).
pub fn validate_institution_code(code: &str) -> Result<(), String> {
    if code.is_empty()
        || code.len() > 32
        || !code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        return Err(format!(
            "institution code {} must be 1–32 characters of A-Z a-z 0-9 . _ -",
            yidi_common::error::quoted(code)
        ));
    }
    Ok(())
}

impl Identity {
    /// The identity's URI, as written into certificates.
    #[must_use]
    pub fn urn(&self) -> String {
        match self {
            Identity::Node { region } => format!("{URN_PREFIX}node:{region}"),
            Identity::Institution { region, code } => {
                format!("{URN_PREFIX}institution:{region}:{code}")
            }
            Identity::Coordinator { province } => format!("{URN_PREFIX}coordinator:{province}"),
            Identity::Operator { region, role } => format!("{URN_PREFIX}operator:{region}:{role}"),
        }
    }

    /// Parses an identity URI, checking every part (city or province codes, the
    /// institution code's alphabet, the role).
    pub fn parse_urn(s: &str) -> Result<Self, String> {
        let rest = s
            .strip_prefix(URN_PREFIX)
            .ok_or_else(|| format!("{s:?} is not a {URN_PREFIX} identity"))?;
        let parts: Vec<&str> = rest.split(':').collect();
        let city = |r: &str| {
            RegionCode::parse_city(r, "identity region").map_err(|e| format!("{s:?}: {e}"))
        };
        match parts.as_slice() {
            ["node", region] => Ok(Identity::Node {
                region: city(region)?,
            }),
            ["institution", region, code] => {
                validate_institution_code(code).map_err(|e| format!("{s:?}: {e}"))?;
                Ok(Identity::Institution {
                    region: city(region)?,
                    code: (*code).to_owned(),
                })
            }
            ["coordinator", province] => {
                let province = RegionCode::parse(province, "identity province")
                    .map_err(|e| format!("{s:?}: {e}"))?;
                // 000000: the national coordinator (docs/national.md).
                if !province.is_province() && !province.is_national() {
                    return Err(format!("{s:?}: {province} is not a province code"));
                }
                Ok(Identity::Coordinator { province })
            }
            ["operator", region, role] => Ok(Identity::Operator {
                region: RegionCode::parse(region, "identity region")
                    .map_err(|e| format!("{s:?}: {e}"))?,
                role: Role::parse(role).map_err(|e| format!("{s:?}: {e}"))?,
            }),
            _ => Err(format!(
                "{s:?} is not a yidi identity (node, institution, coordinator or operator)"
            )),
        }
    }

    /// `node`, `institution`, `coordinator` or `operator`.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            Identity::Node { .. } => "node",
            Identity::Institution { .. } => "institution",
            Identity::Coordinator { .. } => "coordinator",
            Identity::Operator { .. } => "operator",
        }
    }

    /// The region the identity belongs to (the province for the coordinator).
    #[must_use]
    pub fn region(&self) -> RegionCode {
        match self {
            Identity::Node { region }
            | Identity::Institution { region, .. }
            | Identity::Operator { region, .. } => *region,
            Identity::Coordinator { province } => *province,
        }
    }

    /// Base name of the certificate and key files, e.g. `node-330100`.
    #[must_use]
    pub fn file_stem(&self) -> String {
        match self {
            Identity::Node { region } => format!("node-{region}"),
            Identity::Institution { region, code } => format!("institution-{region}-{code}"),
            Identity::Coordinator { province } => format!("coordinator-{province}"),
            Identity::Operator { region, role } => format!("operator-{region}-{role}"),
        }
    }

    /// Whether the party serves gRPC (nodes and the coordinator): its certificate is
    /// also a server certificate with DNS names.
    #[must_use]
    pub fn is_server(&self) -> bool {
        matches!(self, Identity::Node { .. } | Identity::Coordinator { .. })
    }

    /// The DNS name that only this server's certificate carries, `node-<region>.yidi`
    /// or `coordinator-<province>.yidi`. Clients verify a server against this name
    /// (whatever address they dial), so one node cannot answer in another's place.
    #[must_use]
    pub fn server_name(&self) -> Option<String> {
        match self {
            Identity::Node { region } => Some(node_server_name(*region)),
            Identity::Coordinator { province } => Some(format!("coordinator-{province}.yidi")),
            _ => None,
        }
    }
}

/// The TLS server name of the node of `region`.
#[must_use]
pub fn node_server_name(region: RegionCode) -> String {
    format!("node-{region}.yidi")
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.urn())
    }
}

/// What a certificate says about its holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub identity: Identity,
    /// Serial number, lowercase hex without leading zeros (see [`normalize_serial`]).
    pub serial: String,
    /// Validity, seconds since the Unix epoch.
    pub not_before: i64,
    pub not_after: i64,
    /// The subject's distinguished name, for people reading logs.
    pub subject: String,
}

impl CertInfo {
    /// Parses a DER certificate: exactly one `urn:yidi:` URI SAN is required.
    pub fn from_der(der: &[u8]) -> Result<Self, String> {
        use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
        let (_, cert) =
            X509Certificate::from_der(der).map_err(|e| format!("unreadable certificate: {e}"))?;
        let mut urns = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                if let GeneralName::URI(uri) = name
                    && uri.starts_with(URN_PREFIX)
                {
                    urns.push((*uri).to_owned());
                }
            }
        }
        let identity = match urns.as_slice() {
            [one] => Identity::parse_urn(one)?,
            [] => {
                return Err(format!(
                    "certificate {} names no {URN_PREFIX} identity (issue it with `yidi certs`)",
                    cert.subject()
                ));
            }
            _ => {
                return Err(format!(
                    "certificate {} names {} identities; exactly one is allowed",
                    cert.subject(),
                    urns.len()
                ));
            }
        };
        Ok(Self {
            identity,
            serial: normalize_serial(&hex::encode(cert.raw_serial()))
                .unwrap_or_else(|| "0".to_owned()),
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
            subject: cert.subject().to_string(),
        })
    }
}

/// A serial number as yidi writes and compares it: lowercase hex, colons and spaces
/// removed, leading zeros stripped (DER may prefix a zero byte). `None` if it is not hex.
#[must_use]
pub fn normalize_serial(s: &str) -> Option<String> {
    let hex: String = s
        .chars()
        .filter(|c| *c != ':' && !c.is_whitespace())
        .collect::<String>()
        .to_ascii_lowercase();
    let hex = hex.strip_prefix("0x").unwrap_or(&hex);
    if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let trimmed = hex.trim_start_matches('0');
    Some(if trimmed.is_empty() {
        "0".to_owned()
    } else {
        trimmed.to_owned()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urns_round_trip() {
        for s in [
            "urn:yidi:node:330100",
            "urn:yidi:institution:330200:H33020001",
            "urn:yidi:coordinator:330000",
            "urn:yidi:operator:330100:admin",
            "urn:yidi:operator:330000:clearing",
        ] {
            let id = Identity::parse_urn(s).expect(s);
            assert_eq!(id.urn(), s);
        }
    }

    #[test]
    fn bad_urns_are_refused() {
        for s in [
            "urn:yidi:node:330000",
            "urn:yidi:node:33010",
            "urn:yidi:coordinator:330100",
            "urn:yidi:institution:330200:",
            "urn:yidi:institution:330200:a:b",
            "urn:yidi:operator:330100:root",
            "urn:other:node:330100",
            "urn:yidi:pharmacy:330100:P1",
        ] {
            assert!(Identity::parse_urn(s).is_err(), "{s} accepted");
        }
    }

    #[test]
    fn serials_normalize() {
        assert_eq!(normalize_serial("00:AB:0c").as_deref(), Some("ab0c"));
        assert_eq!(normalize_serial(" 0x00ff ").as_deref(), Some("ff"));
        assert_eq!(normalize_serial("000").as_deref(), Some("0"));
        assert_eq!(normalize_serial("xyz"), None);
        assert_eq!(normalize_serial(""), None);
    }
}
