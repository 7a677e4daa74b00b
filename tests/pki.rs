//! A federation CA for tests of mutual TLS: issues node, institution, coordinator and
//! operator certificates with the library behind `yidi certs`, into a temporary
//! directory, and turns them into node configs and client TLS configs. A second,
//! unrelated CA ([`Pki::new`] again) stands in for an attacker's.

use std::path::{Path, PathBuf};

use tonic::transport::{Channel, ClientTlsConfig};
use yidi_cli::certs::{self, Issued, Validity};
use yidi_common::region::RegionCode;
use yidi_node::{
    identity::{Identity, Role},
    tls::{ClientArgs, SecurityConfig},
};

use crate::harness::{Federation, TestNode};

/// A test federation CA in `dir`.
pub struct Pki {
    pub dir: PathBuf,
    /// The CA's own directory (ca.crt, ca.key, revoked.txt).
    pub ca: PathBuf,
}

/// The files a party presents.
#[derive(Debug, Clone)]
pub struct Party {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The federation CA certificate it trusts.
    pub ca: PathBuf,
    pub serial: String,
}

fn region(s: &str) -> RegionCode {
    RegionCode::parse(s, "region").expect("region code")
}

/// `urn:yidi:node:<r>`.
#[must_use]
pub fn node(r: &str) -> Identity {
    Identity::Node { region: region(r) }
}

/// `urn:yidi:institution:<r>:<code>`.
#[must_use]
pub fn institution(r: &str, code: &str) -> Identity {
    Identity::Institution {
        region: region(r),
        code: code.to_owned(),
    }
}

/// `urn:yidi:coordinator:<province>`.
#[must_use]
pub fn coordinator(province: &str) -> Identity {
    Identity::Coordinator {
        province: region(province),
    }
}

/// `urn:yidi:operator:<r>:<role>`.
#[must_use]
pub fn operator(r: &str, role: Role) -> Identity {
    Identity::Operator {
        region: region(r),
        role,
    }
}

impl Pki {
    /// Creates a CA under `dir` (`dir/ca`).
    #[must_use]
    pub fn new(dir: &Path) -> Self {
        let ca = dir.join("ca");
        certs::create_ca(&ca, 30, "yidi test CA").expect("create test CA");
        Self {
            dir: dir.to_path_buf(),
            ca,
        }
    }

    /// The revocation list beside the CA (the file nodes are pointed at in tests).
    #[must_use]
    pub fn revoked_file(&self) -> PathBuf {
        self.ca.join(certs::REVOKED)
    }

    /// Issues (or re-issues) a certificate valid for 10 days into `dir/<file stem>/`.
    #[must_use]
    pub fn issue(&self, id: &Identity) -> Party {
        self.issue_with(id, Validity::days(10))
    }

    /// Issues a certificate with the given validity (in the past: an expired one).
    #[must_use]
    pub fn issue_with(&self, id: &Identity, validity: Validity) -> Party {
        let out = self.dir.join(id.file_stem());
        let Issued { cert, key, serial } =
            certs::issue(&self.ca, &out, id, validity, &[]).expect("issue certificate");
        Party {
            cert,
            key,
            ca: self.ca.join(certs::CA_CERT),
            serial,
        }
    }

    /// The serial of the certificate last issued for `id` by this CA.
    #[must_use]
    pub fn serial_of(&self, id: &Identity) -> String {
        let stem = id.file_stem();
        certs::show(&self.dir.join(&stem).join(format!("{stem}.crt")))
            .expect("issued certificate")
            .serial
    }

    /// Appends a serial to the revocation list.
    pub fn revoke(&self, serial: &str) {
        certs::revoke(&self.ca, serial, "test").expect("revoke");
    }

    /// The mutual TLS settings of a node (or the coordinator) with a freshly issued
    /// certificate for `id`, watching this CA's revocation list.
    #[must_use]
    pub fn server_security(&self, id: &Identity) -> (SecurityConfig, Party) {
        let p = self.issue(id);
        (
            SecurityConfig::tls(&p.cert, &p.key, &p.ca, Some(&self.revoked_file())),
            p,
        )
    }

    /// Client TLS presenting a freshly issued certificate of `id`.
    #[must_use]
    pub fn client(&self, id: &Identity) -> ClientTlsConfig {
        self.issue(id).client()
    }
}

impl Party {
    /// Client TLS presenting this party's certificate.
    #[must_use]
    pub fn client(&self) -> ClientTlsConfig {
        ClientArgs::files(&self.ca, &self.cert, &self.key)
            .config()
            .expect("client TLS files")
            .expect("client TLS configured")
    }
}

/// A channel to `node` presenting `tls` (connects lazily: a refused handshake shows as
/// the first call's error).
#[must_use]
pub fn channel(node: &TestNode, tls: ClientTlsConfig) -> Channel {
    yidi_node::tls::endpoint(&node.url(), Some(tls))
        .expect("endpoint")
        .connect_lazy()
}

/// A federation whose nodes serve mutual TLS with node certificates of `pki` (revocation
/// list: the CA's), each node's helper clients presenting its region's `admin`
/// operator certificate.
pub async fn federation(
    root: &Path,
    pki: &Pki,
    regions: &[&str],
    adjust: impl Fn(&str, &mut yidi_node::config::NodeConfig),
) -> Federation {
    let mut fed = Federation::start_with(root, regions, |r, c| {
        c.security = pki.server_security(&node(r)).0;
        adjust(r, c);
    })
    .await;
    for n in &mut fed.nodes {
        n.client_tls = Some(pki.client(&operator(n.region.as_str(), Role::Admin)));
    }
    fed
}
