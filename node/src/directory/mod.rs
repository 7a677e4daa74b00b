//! The federation directory: region code → node address, certificate identity and
//! province, instead of hand-kept peers files (docs/national.md).
//!
//! Each provincial coordinator publishes its province as one signed, versioned
//! [`Document`] (`signed.rs`: signed with its own TLS key, verified against the
//! federation CA and the coordinator identity of that very province). A [`Book`] holds
//! the newest verified document of each province and refuses older, unsigned or forged
//! ones; `follow.rs` fetches documents from sources (a node's coordinator; a provincial
//! coordinator's national level; the national level's provinces), caches them on disk
//! and refreshes them; `publish.rs` is the coordinator's side: its directory file, the
//! version it assigns and the DirectoryService it serves.

mod follow;
mod publish;
mod signed;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use yidi_common::region::{RegionCode, province_of};

pub use follow::{Follower, Source};
pub use publish::{
    CityLine, DirectoryFile, DirectorySvc, NATIONAL_SERVER_NAME, NationalLine, PUBLISHED_FILE,
    ProvinceLine, Publisher, for_cities, keep_current,
};
pub use signed::{Verifier, sign};

use crate::{Error, Result, identity::Identity};

/// The file in a node's (or coordinator's) data directory caching the documents in
/// force, so that it starts routing while its coordinator is down.
pub const CACHE_FILE: &str = "directory-cache.json";

/// One city's node as the directory lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// The city's region code, e.g. "330100".
    pub region: String,
    /// The agency's name, for people.
    #[serde(default)]
    pub name: String,
    /// The node's gRPC address (`https://host:port`).
    pub address: String,
    /// The identity its certificate must carry: `urn:yidi:node:<region>`.
    pub identity: String,
    /// The TLS server name its certificate must carry: `node-<region>.yidi`.
    pub server_name: String,
    /// The province the city belongs to: its code's first two digits and `0000`.
    pub province: String,
    /// The node's NHSA gateway for hospital systems, if it serves one.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub nhsa: String,
    /// The agency's web console, if it serves one.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub console: String,
}

/// One province's directory, as its coordinator signs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Document {
    /// The province, e.g. "330000".
    pub province: String,
    /// Grows with every change the coordinator publishes.
    pub version: u64,
    /// When this version was first published (RFC 3339).
    pub issued_at: String,
    /// The provincial coordinator's own address, if it publishes it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub coordinator: String,
    /// The province's cities, sorted by region.
    pub entries: Vec<Entry>,
}

impl Entry {
    /// An entry for the node of `region` with the identity and server name its
    /// certificate carries and its province.
    #[must_use]
    pub fn for_city(region: RegionCode, name: &str, address: &str) -> Self {
        Self {
            region: region.to_string(),
            name: name.to_owned(),
            address: address.to_owned(),
            identity: Identity::Node { region }.urn(),
            server_name: crate::identity::node_server_name(region),
            province: province_of(region.as_str()),
            nhsa: String::new(),
            console: String::new(),
        }
    }

    /// Checks the entry on its own: a city code, a usable address, and the identity,
    /// server name and province that follow from the code (a directory cannot send
    /// one city's traffic to another city's certificate).
    pub fn check(&self, field: &str) -> Result<RegionCode> {
        let region = RegionCode::parse_city(&self.region, &format!("{field}.region"))?;
        let expect = Entry::for_city(region, "", "");
        if self.identity != expect.identity {
            return Err(Error::invalid(
                format!("{field}.identity"),
                format!(
                    "{:?} is not the identity of the node of {region}; it must be {:?}",
                    self.identity, expect.identity
                ),
            ));
        }
        if self.server_name != expect.server_name {
            return Err(Error::invalid(
                format!("{field}.server_name"),
                format!(
                    "{:?} is not the TLS name of the node of {region}; it must be {:?}",
                    self.server_name, expect.server_name
                ),
            ));
        }
        if self.province != expect.province {
            return Err(Error::invalid(
                format!("{field}.province"),
                format!(
                    "{region} is in province {}, not {:?}",
                    expect.province, self.province
                ),
            ));
        }
        check_address(&format!("{field}.address"), &self.address)?;
        Ok(region)
    }
}

/// An address a client can dial: `https://host:port`, `http://host:port` or `host:port`.
pub fn check_address(field: &str, address: &str) -> Result<()> {
    crate::tls::endpoint(address, None)
        .map(|_| ())
        .map_err(|e| Error::invalid(field, format!("{address:?} is not an address: {e}")))
}

impl Document {
    /// Checks the whole document: a province code, every entry valid and a city of that
    /// province, no city twice.
    pub fn check(&self) -> Result<RegionCode> {
        let province = RegionCode::parse(&self.province, "directory.province")?;
        if !province.is_province() {
            return Err(Error::invalid(
                "directory.province",
                format!("{province} is not a province code like 330000"),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, e) in self.entries.iter().enumerate() {
            let field = format!("directory.entries[{i}]");
            let region = e.check(&field)?;
            if region.province() != province {
                return Err(Error::invalid(
                    format!("{field}.region"),
                    format!(
                        "{region} is not a city of {province}: a province's directory lists only its own cities"
                    ),
                ));
            }
            if !seen.insert(region) {
                return Err(Error::invalid(
                    format!("{field}.region"),
                    format!("{region} is listed twice"),
                ));
            }
        }
        if !self.coordinator.is_empty() {
            check_address("directory.coordinator", &self.coordinator)?;
        }
        Ok(province)
    }
}

/// A verified document and the signed form it came in (kept to pass it on unchanged).
#[derive(Debug, Clone)]
pub struct Held {
    pub doc: Document,
    pub signed: yidi_common::proto::SignedDirectory,
}

/// What became of a document offered to a [`Book`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Offered {
    /// Newer than what was held (or the first of its province): now in force.
    Accepted { province: String, version: u64 },
    /// The version already held, with the same content.
    Unchanged,
}

/// Why a document was refused; the previous one (if any) stays in force.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("unsigned directory of {0}: only a node in --insecure loopback mode accepts one")]
    Unsigned(String),
    #[error("directory of {province}: its certificate is not accepted: {reason}")]
    Certificate { province: String, reason: String },
    #[error(
        "directory of {province}: signed by {signer}, but only the coordinator of {province} speaks for it"
    )]
    Signer { province: String, signer: String },
    #[error("directory of {0}: the signature does not match the document")]
    Signature(String),
    #[error("directory of {province}: {reason}")]
    Invalid { province: String, reason: String },
    #[error(
        "directory of {province} version {offered} is older than version {held} already in force"
    )]
    Older {
        province: String,
        offered: u64,
        held: u64,
    },
    #[error(
        "directory of {province} version {version} differs from the version {version} already in force"
    )]
    Conflict { province: String, version: u64 },
}

impl Refusal {
    /// The reason as a metric label.
    #[must_use]
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::Unsigned(_) => "unsigned",
            Refusal::Certificate { .. } => "certificate",
            Refusal::Signer { .. } => "signer",
            Refusal::Signature(_) => "signature",
            Refusal::Invalid { .. } => "invalid",
            Refusal::Older { .. } => "older",
            Refusal::Conflict { .. } => "conflict",
        }
    }
}

/// The newest verified document of each province.
#[derive(Debug, Default, Clone)]
pub struct Book {
    held: BTreeMap<String, Held>,
}

impl Book {
    /// Verifies `signed` with `verifier` and keeps it if it is newer than the document
    /// held for its province. A refused document changes nothing.
    pub fn offer(
        &mut self,
        signed: yidi_common::proto::SignedDirectory,
        verifier: &Verifier,
    ) -> std::result::Result<Offered, Refusal> {
        let doc = verifier.verify(&signed)?;
        if let Some(h) = self.held.get(&doc.province) {
            if doc.version < h.doc.version {
                return Err(Refusal::Older {
                    province: doc.province,
                    offered: doc.version,
                    held: h.doc.version,
                });
            }
            if doc.version == h.doc.version {
                return if doc == h.doc {
                    Ok(Offered::Unchanged)
                } else {
                    Err(Refusal::Conflict {
                        province: doc.province,
                        version: doc.version,
                    })
                };
            }
        }
        let (province, version) = (doc.province.clone(), doc.version);
        self.held.insert(province.clone(), Held { doc, signed });
        Ok(Offered::Accepted { province, version })
    }

    /// Puts the coordinator's own freshly signed document in force without verifying
    /// it (it comes from this process).
    pub(crate) fn put_own(&mut self, held: Held) {
        self.held.insert(held.doc.province.clone(), held);
    }

    /// The documents held, by province.
    #[must_use]
    pub fn held(&self) -> &BTreeMap<String, Held> {
        &self.held
    }

    /// The version held of each province.
    #[must_use]
    pub fn versions(&self) -> BTreeMap<String, u64> {
        self.held
            .iter()
            .map(|(p, h)| (p.clone(), h.doc.version))
            .collect()
    }

    /// Every city of every province held, except `except` (a node's own region).
    #[must_use]
    pub fn entries(&self, except: Option<RegionCode>) -> Vec<Entry> {
        self.held
            .values()
            .flat_map(|h| h.doc.entries.iter())
            .filter(|e| except.is_none_or(|r| e.region != r.as_str()))
            .cloned()
            .collect()
    }
}
