//! The demo federation's mutual TLS: a CA and a certificate for every party — the
//! nodes, the coordinator, each city's operator, the provincial operator and every
//! hospital and pharmacy that settles — generated under `<data-dir>/certs` on first use
//! and reused by later runs. They are the same files `yidi certs` writes for a real
//! federation, so the `yidi` commands the demo prints work against it unchanged.

use std::{
    path::{Path, PathBuf},
    sync::Mutex,
};

use anyhow::Context;

use yidi_node::{
    identity::Identity,
    tls::{ClientArgs, SecurityConfig},
};

use crate::certs::{self, Validity};

/// The demo CA's lifetime: a long-lived development directory keeps working.
const CA_DAYS: u32 = 3650;
/// Each party's certificate.
const PARTY_DAYS: u32 = 825;

/// The demo's certificate directory.
pub(crate) struct Pki {
    dir: PathBuf,
    /// Issuing writes a key and a certificate: two callers issuing the same party at
    /// once could pair one's key with the other's certificate.
    issuing: Mutex<()>,
}

/// The files of one party.
pub(crate) struct Party {
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
    pub(crate) ca: PathBuf,
}

impl Pki {
    /// Opens `<data_dir>/certs`, creating the CA the first time.
    pub(crate) fn open(data_dir: &Path) -> anyhow::Result<Self> {
        let dir = data_dir.join("certs");
        let ca = dir.join("ca");
        if !ca.join(certs::CA_CERT).exists() {
            certs::create_ca(&ca, CA_DAYS, "yidi demo CA")
                .with_context(|| format!("creating the demo CA in {}", ca.display()))?;
        }
        Ok(Self {
            dir,
            issuing: Mutex::new(()),
        })
    }

    /// A party's files, issued now unless an earlier run did.
    pub(crate) fn party(&self, id: &Identity) -> anyhow::Result<Party> {
        let stem = id.file_stem();
        let out = self.dir.join(&stem);
        let party = Party {
            cert: out.join(format!("{stem}.crt")),
            key: out.join(format!("{stem}.key")),
            ca: self.dir.join("ca").join(certs::CA_CERT),
        };
        let _guard = self
            .issuing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !(party.cert.exists() && party.key.exists()) {
            certs::issue(
                &self.dir.join("ca"),
                &out,
                id,
                Validity::days(PARTY_DAYS),
                &[],
            )
            .with_context(|| format!("issuing the demo certificate of {id}"))?;
        }
        Ok(party)
    }

    /// The server side of a node or the coordinator.
    pub(crate) fn server(&self, id: &Identity) -> anyhow::Result<SecurityConfig> {
        let p = self.party(id)?;
        Ok(SecurityConfig::tls(&p.cert, &p.key, &p.ca, None))
    }

    /// The client side of a party.
    pub(crate) fn client(&self, id: &Identity) -> anyhow::Result<ClientArgs> {
        let p = self.party(id)?;
        Ok(ClientArgs::files(&p.ca, &p.cert, &p.key))
    }

    /// `--ca … --cert … --key …` of a party, for the commands the demo prints.
    pub(crate) fn flags(&self, id: &Identity) -> anyhow::Result<String> {
        let p = self.party(id)?;
        Ok(format!(
            "--ca {} --cert {} --key {}",
            p.ca.display(),
            p.cert.display(),
            p.key.display()
        ))
    }
}
