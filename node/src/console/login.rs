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
        // Only an operator signs in: a node's or a hospital's key signs no link, even
        // one whose holder may call the console's read methods over gRPC.
        if !matches!(info.identity, Identity::Operator { .. }) {
            return Err(LinkError::Certificate(format!(
                "{} is not an operator certificate",
                info.identity.urn()
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
