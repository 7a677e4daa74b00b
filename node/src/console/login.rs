//! Console login links. `yidi clearing console-login` / `yidi admin console-login`
//! signs a short statement with the operator's own private key (the ECDSA P-256 key
//! `yidi certs` issued with the certificate) and prints it as a link:
//!
//! `https://<console>/login?t=v1.<payload>.<signature>.<certificate>`
//!
//! (each part base64url). The payload names the console it is for (the server's
//! identity URN, so a link for one node's console is useless at another), when it was
//! issued, when it expires and a random nonce. The console checks that the certificate
//! chains to the federation CA, is valid and not revoked, names an operator of its own
//! region, that the signature is the certificate key's, that the link is not expired,
//! and that its nonce was not used before: a link signs in once. Used nonces are kept
//! in memory until the link expires; a link issued before the console started is
//! refused, so a restart cannot make a used link good again.
//!
//! Signing with the operator's key means no secret is shared between the CLI and the
//! server and no RPC is needed: whoever holds an operator's key is that operator, on
//! the console as over gRPC.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD as B64};
use ring::{
    rand::{SecureRandom, SystemRandom},
    signature::{self, EcdsaKeyPair},
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime, pem::PemObject};
use serde::{Deserialize, Serialize};

use crate::identity::{CertInfo, Identity};

/// How long a link is good for unless the command asks otherwise.
pub const DEFAULT_TTL_SECS: i64 = 300;
/// The longest validity a console accepts: a link is a way in, not a credential.
pub const MAX_TTL_SECS: i64 = 900;
/// Clock difference tolerated between the operator's machine and the console.
const SKEW_SECS: i64 = 60;
const VERSION: &str = "v1";

/// What a link says.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    /// The console's server identity (`urn:yidi:coordinator:330000`, `urn:yidi:node:330100`).
    pub aud: String,
    /// Issued and expiry, seconds since the Unix epoch.
    pub iat: i64,
    pub exp: i64,
    /// Random, hex: what makes a link single use.
    pub nonce: String,
}

/// Why a link does not sign in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("the login link is malformed: {0}")]
    Malformed(String),
    #[error("the login link's certificate is not accepted: {0}")]
    Certificate(String),
    #[error("the login link's signature does not match its certificate")]
    Signature,
    #[error("the login link is for {0}, not this console")]
    WrongConsole(String),
    #[error("the login link expired {0} s ago; print a new one with console-login")]
    Expired(i64),
    #[error(
        "the login link was already used (a link signs in once); print a new one with console-login"
    )]
    Used,
    #[error(
        "the login link was issued before this console started; print a new one with console-login"
    )]
    BeforeStart,
}

/// Signs a link token for the console of `aud` with the operator's certificate and key
/// (PEM), valid for `ttl_secs` from `now` (seconds since the epoch).
pub fn sign(
    cert_pem: &[u8],
    key_pem: &[u8],
    aud: &Identity,
    now: i64,
    ttl_secs: i64,
) -> anyhow::Result<String> {
    anyhow::ensure!(
        (1..=MAX_TTL_SECS).contains(&ttl_secs),
        "invalid valid-for: {ttl_secs} s; a login link is valid for 1 to {MAX_TTL_SECS} seconds"
    );
    let cert = CertificateDer::from_pem_slice(cert_pem)
        .map_err(|e| anyhow::anyhow!("invalid cert: not a PEM certificate: {e}"))?;
    let info = CertInfo::from_der(&cert).map_err(|e| anyhow::anyhow!("invalid cert: {e}"))?;
    anyhow::ensure!(
        matches!(info.identity, Identity::Operator { .. }),
        "invalid cert: {} is not an operator's certificate; console links are for operators",
        info.identity
    );
    let key = match PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| anyhow::anyhow!("invalid key: not a PEM private key: {e}"))?
    {
        PrivateKeyDer::Pkcs8(k) => k,
        _ => anyhow::bail!("invalid key: expected a PKCS#8 key as `yidi certs` writes"),
    };
    let rng = SystemRandom::new();
    let pair = EcdsaKeyPair::from_pkcs8(
        &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
        key.secret_pkcs8_der(),
        &rng,
    )
    .map_err(|e| anyhow::anyhow!("invalid key: not an ECDSA P-256 key: {e}"))?;
    anyhow::ensure!(
        signature_key(&cert).ok().as_deref() == Some(pair_public(&pair)),
        "invalid key: it does not go with the certificate"
    );
    let mut nonce = [0u8; 16];
    rng.fill(&mut nonce)
        .map_err(|_| anyhow::anyhow!("no randomness for the nonce"))?;
    let claims = Claims {
        aud: aud.urn(),
        iat: now,
        exp: now + ttl_secs,
        nonce: hex::encode(nonce),
    };
    let payload = B64.encode(serde_json::to_vec(&claims)?);
    let sig = pair
        .sign(&rng, payload.as_bytes())
        .map_err(|_| anyhow::anyhow!("signing the link failed"))?;
    Ok(format!(
        "{VERSION}.{payload}.{}.{}",
        B64.encode(sig.as_ref()),
        B64.encode(cert.as_ref())
    ))
}

fn pair_public(pair: &EcdsaKeyPair) -> &[u8] {
    use ring::signature::KeyPair;
    pair.public_key().as_ref()
}

/// The certificate's public key (an uncompressed P-256 point), if it is one.
fn signature_key(der: &[u8]) -> Result<Vec<u8>, String> {
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

/// The console's side: checks links and remembers the nonces used.
pub struct Verifier {
    /// This console's identity URN.
    aud: String,
    started: i64,
    used: Mutex<HashMap<String, i64>>,
}

/// A link that signed in: who, by which certificate.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub cert: Arc<CertInfo>,
    pub claims: Claims,
}

impl Verifier {
    #[must_use]
    pub fn new(aud: &Identity, started: i64) -> Self {
        Self {
            aud: aud.urn(),
            started,
            used: Mutex::new(HashMap::new()),
        }
    }

    /// Checks `token` at `now` against the CA `roots` (and the revocation check
    /// `revoked`); on success the nonce is spent.
    pub fn accept(
        &self,
        token: &str,
        roots: &Arc<rustls::RootCertStore>,
        revoked: impl Fn(&str) -> bool,
        now: i64,
    ) -> Result<Accepted, LinkError> {
        let parts: Vec<&str> = token.split('.').collect();
        let [version, payload, sig, cert] = parts.as_slice() else {
            return Err(LinkError::Malformed(
                "expected v1.<payload>.<signature>.<certificate>".into(),
            ));
        };
        if *version != VERSION {
            return Err(LinkError::Malformed(format!("unknown version {version:?}")));
        }
        let decode = |what: &str, s: &str| {
            B64.decode(s)
                .map_err(|e| LinkError::Malformed(format!("{what}: {e}")))
        };
        let cert_der = decode("certificate", cert)?;
        let sig = decode("signature", sig)?;
        let claims: Claims = serde_json::from_slice(&decode("payload", payload)?)
            .map_err(|e| LinkError::Malformed(format!("payload: {e}")))?;
        // The chain first: nothing of an unverified certificate is trusted.
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::clone(roots),
            crate::tls::provider(),
        )
        .build()
        .map_err(|e| LinkError::Certificate(e.to_string()))?;
        let end = CertificateDer::from(cert_der.clone());
        let at = UnixTime::since_unix_epoch(std::time::Duration::from_secs(
            u64::try_from(now).unwrap_or(0),
        ));
        verifier
            .verify_client_cert(&end, &[], at)
            .map_err(|e| LinkError::Certificate(e.to_string()))?;
        let info = CertInfo::from_der(&cert_der).map_err(LinkError::Certificate)?;
        if revoked(&info.serial) {
            return Err(LinkError::Certificate(format!(
                "serial {} is revoked",
                info.serial
            )));
        }
        let key = signature_key(&cert_der).map_err(LinkError::Certificate)?;
        signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_ASN1, key)
            .verify(payload.as_bytes(), &sig)
            .map_err(|_| LinkError::Signature)?;
        if claims.aud != self.aud {
            return Err(LinkError::WrongConsole(claims.aud));
        }
        if claims.exp <= now {
            return Err(LinkError::Expired(now - claims.exp));
        }
        if claims.exp - claims.iat > MAX_TTL_SECS || claims.iat > now + SKEW_SECS {
            return Err(LinkError::Malformed(format!(
                "validity {}..{} is not a short link's",
                claims.iat, claims.exp
            )));
        }
        if claims.iat < self.started {
            return Err(LinkError::BeforeStart);
        }
        {
            let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
            used.retain(|_, exp| *exp > now);
            if used.insert(claims.nonce.clone(), claims.exp).is_some() {
                return Err(LinkError::Used);
            }
        }
        Ok(Accepted {
            cert: Arc::new(info),
            claims,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        certs::{self, Validity},
        identity::Role,
    };
    use yidi_common::region::RegionCode;

    struct Fixture {
        _dir: tempfile::TempDir,
        roots: Arc<rustls::RootCertStore>,
        cert: Vec<u8>,
        key: Vec<u8>,
        serial: String,
    }

    fn province() -> Identity {
        Identity::Coordinator {
            province: RegionCode::parse("330000", "r").unwrap(),
        }
    }

    fn fixture(who: &Identity) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca");
        certs::create_ca(&ca, 30, "test CA").unwrap();
        let issued =
            certs::issue(&ca, &dir.path().join("op"), who, Validity::days(5), &[]).unwrap();
        let roots = Arc::new(crate::tls::load_roots(&ca.join(certs::CA_CERT)).unwrap());
        Fixture {
            roots,
            cert: std::fs::read(&issued.cert).unwrap(),
            key: std::fs::read(&issued.key).unwrap(),
            serial: issued.serial,
            _dir: dir,
        }
    }

    fn operator() -> Identity {
        Identity::Operator {
            region: RegionCode::parse("330000", "r").unwrap(),
            role: Role::Clearing,
        }
    }

    #[test]
    fn a_link_signs_in_once_and_only_while_valid_and_only_here() {
        let f = fixture(&operator());
        let now = chrono::Utc::now().timestamp();
        let v = Verifier::new(&province(), now - 10);
        let token = sign(&f.cert, &f.key, &province(), now, 300).unwrap();
        let ok = v.accept(&token, &f.roots, |_| false, now + 5).unwrap();
        assert_eq!(ok.cert.identity, operator());
        assert_eq!(
            v.accept(&token, &f.roots, |_| false, now + 6).unwrap_err(),
            LinkError::Used
        );
        // Expired: a fresh verifier has not seen the nonce, the clock says why.
        let v2 = Verifier::new(&province(), now - 10);
        assert_eq!(
            v2.accept(&token, &f.roots, |_| false, now + 301)
                .unwrap_err(),
            LinkError::Expired(1)
        );
        // For another console.
        let node = Identity::Node {
            region: RegionCode::parse("330100", "r").unwrap(),
        };
        let other = Verifier::new(&node, now - 10);
        assert!(matches!(
            other
                .accept(&token, &f.roots, |_| false, now + 5)
                .unwrap_err(),
            LinkError::WrongConsole(_)
        ));
        // Issued before the console started: a used nonce may have been forgotten.
        let restarted = Verifier::new(&province(), now + 1);
        assert_eq!(
            restarted
                .accept(&token, &f.roots, |_| false, now + 5)
                .unwrap_err(),
            LinkError::BeforeStart
        );
        // Revoked.
        let v3 = Verifier::new(&province(), now - 10);
        let serial = f.serial.clone();
        assert!(matches!(
            v3.accept(&token, &f.roots, |s| s == serial, now + 5).unwrap_err(),
            LinkError::Certificate(m) if m.contains("revoked")
        ));
    }

    #[test]
    fn a_tampered_or_foreign_link_is_refused() {
        let f = fixture(&operator());
        let now = chrono::Utc::now().timestamp();
        let v = Verifier::new(&province(), now - 10);
        let token = sign(&f.cert, &f.key, &province(), now, 300).unwrap();
        // Another payload under the same signature: a longer validity.
        let parts: Vec<&str> = token.split('.').collect();
        let forged = Claims {
            aud: province().urn(),
            iat: now,
            exp: now + 900,
            nonce: "00".into(),
        };
        let forged = format!(
            "v1.{}.{}.{}",
            B64.encode(serde_json::to_vec(&forged).unwrap()),
            parts[2],
            parts[3]
        );
        assert_eq!(
            v.accept(&forged, &f.roots, |_| false, now).unwrap_err(),
            LinkError::Signature
        );
        // A certificate of another CA.
        let stranger = fixture(&operator());
        let token = sign(&stranger.cert, &stranger.key, &province(), now, 300).unwrap();
        assert!(matches!(
            v.accept(&token, &f.roots, |_| false, now).unwrap_err(),
            LinkError::Certificate(_)
        ));
        assert!(matches!(
            v.accept("v1.x", &f.roots, |_| false, now).unwrap_err(),
            LinkError::Malformed(_)
        ));
        // Too long a validity is refused when signing.
        let e = sign(&f.cert, &f.key, &province(), now, MAX_TTL_SECS + 1).unwrap_err();
        assert!(e.to_string().contains("valid-for"), "{e}");
    }

    #[test]
    fn only_an_operator_certificate_signs_links() {
        let node = Identity::Node {
            region: RegionCode::parse("330100", "r").unwrap(),
        };
        let f = fixture(&node);
        let e = sign(&f.cert, &f.key, &province(), 1_900_000_000, 60).unwrap_err();
        assert!(e.to_string().contains("not an operator"), "{e}");
    }
}
