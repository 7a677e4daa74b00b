//! Signing and verifying a province's directory document. The coordinator signs with
//! its own TLS key (ECDSA P-256, the key `yidi certs coordinator` issued) and attaches
//! its certificate; a verifier checks that the certificate chains to the federation CA,
//! is valid now and not revoked, names the coordinator of the document's own province,
//! and that the signature is that key's. No key beyond the ones the federation already
//! has, and a document stays verifiable wherever it is relayed or cached.

use std::{collections::HashSet, path::Path, sync::Arc};

use ring::{
    rand::SystemRandom,
    signature::{self, EcdsaKeyPair},
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime, pem::PemObject};
use yidi_common::proto::SignedDirectory;

use super::{Document, Refusal};
use crate::{
    Error, Result,
    identity::{CertInfo, Identity},
};

/// Signs `doc` with the party's certificate and key (PEM).
pub fn sign(doc: &Document, cert_pem: &[u8], key_pem: &[u8]) -> Result<SignedDirectory> {
    let cert = CertificateDer::from_pem_slice(cert_pem)
        .map_err(|e| Error::invalid("tls_cert", format!("not a PEM certificate: {e}")))?;
    let key = match PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| Error::invalid("tls_key", format!("not a PEM private key: {e}")))?
    {
        PrivateKeyDer::Pkcs8(k) => k,
        _ => {
            return Err(Error::invalid(
                "tls_key",
                "expected a PKCS#8 key as `yidi certs` writes; the directory is signed with it",
            ));
        }
    };
    let rng = SystemRandom::new();
    let pair = EcdsaKeyPair::from_pkcs8(
        &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
        key.secret_pkcs8_der(),
        &rng,
    )
    .map_err(|e| Error::invalid("tls_key", format!("not an ECDSA P-256 key: {e}")))?;
    let document =
        serde_json::to_vec(doc).map_err(|e| Error::Internal(format!("directory document: {e}")))?;
    let sig = pair
        .sign(&rng, &document)
        .map_err(|_| Error::Internal("signing the directory failed".into()))?;
    Ok(SignedDirectory {
        province: doc.province.clone(),
        version: doc.version,
        document,
        signature: sig.as_ref().to_vec(),
        certificate: cert.as_ref().to_vec(),
    })
}

/// The document unsigned: what a coordinator in --insecure loopback mode publishes.
pub(crate) fn unsigned(doc: &Document) -> Result<SignedDirectory> {
    Ok(SignedDirectory {
        province: doc.province.clone(),
        version: doc.version,
        document: serde_json::to_vec(doc)
            .map_err(|e| Error::Internal(format!("directory document: {e}")))?,
        signature: Vec::new(),
        certificate: Vec::new(),
    })
}

/// How documents are checked.
#[derive(Clone)]
pub enum Verifier {
    /// A party in --insecure loopback mode: it has no CA to check against, so it takes
    /// documents as they come (structure and versions are still checked).
    Insecure,
    /// Against the federation CA and its revocation list.
    Federation {
        roots: Arc<rustls::RootCertStore>,
        revoked: Arc<HashSet<String>>,
    },
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verifier::Insecure => f.write_str("Verifier::Insecure"),
            Verifier::Federation { revoked, .. } => {
                write!(f, "Verifier::Federation({} revoked)", revoked.len())
            }
        }
    }
}

impl Verifier {
    /// The verifier of a party with this TLS material (`None`: insecure mode).
    #[must_use]
    pub fn from_tls(tls: Option<&crate::tls::TlsState>) -> Self {
        match tls {
            None => Verifier::Insecure,
            Some(t) => {
                let m = t.current();
                Verifier::Federation {
                    roots: Arc::clone(&m.roots),
                    revoked: Arc::new(m.revoked.clone()),
                }
            }
        }
    }

    /// A verifier from a CA file and an optional revocation list (the CLI's).
    pub fn from_files(ca: &Path, revoked: Option<&Path>) -> Result<Self> {
        let roots = Arc::new(crate::tls::load_roots(ca)?);
        let revoked = match revoked {
            Some(p) => crate::revoked::read_revoked(p)
                .map_err(|e| Error::invalid("revoked_file", format!("{e:#}")))?
                .into_iter()
                .collect(),
            None => HashSet::new(),
        };
        Ok(Verifier::Federation {
            roots,
            revoked: Arc::new(revoked),
        })
    }

    /// Verifies a signed document and returns it checked.
    pub fn verify(&self, s: &SignedDirectory) -> std::result::Result<Document, Refusal> {
        let province = s.province.clone();
        if let Verifier::Federation { roots, revoked } = self {
            if s.signature.is_empty() || s.certificate.is_empty() {
                return Err(Refusal::Unsigned(province));
            }
            let cert = |reason: String| Refusal::Certificate {
                province: province.clone(),
                reason,
            };
            // The chain first: nothing of an unverified certificate is trusted.
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::clone(roots),
                crate::tls::provider(),
            )
            .build()
            .map_err(|e| cert(e.to_string()))?;
            let end = CertificateDer::from(s.certificate.clone());
            let now = UnixTime::since_unix_epoch(std::time::Duration::from_secs(
                u64::try_from(chrono::Utc::now().timestamp()).unwrap_or(0),
            ));
            verifier
                .verify_client_cert(&end, &[], now)
                .map_err(|e| cert(e.to_string()))?;
            let info = CertInfo::from_der(&s.certificate).map_err(cert)?;
            if revoked.contains(&info.serial) {
                return Err(cert(format!("serial {} is revoked", info.serial)));
            }
            let speaks_for = matches!(
                &info.identity,
                Identity::Coordinator { province: p } if p.as_str() == province
            );
            if !speaks_for {
                return Err(Refusal::Signer {
                    province,
                    signer: info.identity.urn(),
                });
            }
            let key = public_key(&s.certificate).map_err(cert)?;
            signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_ASN1, key)
                .verify(&s.document, &s.signature)
                .map_err(|_| Refusal::Signature(province.clone()))?;
        }
        let invalid = |reason: String| Refusal::Invalid {
            province: province.clone(),
            reason,
        };
        let doc: Document = serde_json::from_slice(&s.document)
            .map_err(|e| invalid(format!("unreadable document: {e}")))?;
        if doc.province != s.province || doc.version != s.version {
            return Err(invalid(format!(
                "the document says province {} version {}, its envelope {} version {}",
                doc.province, doc.version, s.province, s.version
            )));
        }
        doc.check().map_err(|e| invalid(e.to_string()))?;
        Ok(doc)
    }
}

/// The certificate's public key (an uncompressed P-256 point), if it is one.
fn public_key(der: &[u8]) -> std::result::Result<Vec<u8>, String> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| format!("unreadable: {e}"))?;
    let spki = cert.public_key();
    // id-ecPublicKey with the prime256v1 curve.
    let ec = spki.algorithm.algorithm.to_id_string() == "1.2.840.10045.2.1";
    let p256 = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok())
        .is_some_and(|o| o.to_id_string() == "1.2.840.10045.3.1.7");
    if !(ec && p256) {
        return Err("its key is not ECDSA P-256".into());
    }
    Ok(spki.subject_public_key.data.to_vec())
}
