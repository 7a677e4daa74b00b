//! The provincial gateway's request signature (`x-tif-*` headers), checked when the
//! node is configured with a paasid and its secret. The algorithm, as the clients of
//! the reference sheet (§1) compute it:
//!
//! `x-tif-signature` = lowercase hex of SHA-256 over the UTF-8 text
//! `timestamp + secret + nonce + timestamp`, where `timestamp` is `x-tif-timestamp`
//! (Unix seconds) and `nonce` is `x-tif-nonce`; `x-tif-paasid` must be the configured
//! paasid. A timestamp more than [`MAX_SKEW_SECONDS`] away from the node's clock is
//! refused, so a captured request cannot be replayed later.

use hyper::HeaderMap;
use sha2::{Digest, Sha256};

use super::envelope::NhsaError;

/// How far `x-tif-timestamp` may be from the node's clock.
pub const MAX_SKEW_SECONDS: i64 = 300;

/// The paasid and secret a node accepts.
#[derive(Clone, PartialEq, Eq)]
pub struct TifKeys {
    pub paasid: String,
    pub secret: String,
}

impl std::fmt::Debug for TifKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret never reaches a log.
        f.debug_struct("TifKeys")
            .field("paasid", &self.paasid)
            .finish_non_exhaustive()
    }
}

/// The signature of a request.
#[must_use]
pub fn signature(timestamp: &str, secret: &str, nonce: &str) -> String {
    let mut h = Sha256::new();
    h.update(timestamp.as_bytes());
    h.update(secret.as_bytes());
    h.update(nonce.as_bytes());
    h.update(timestamp.as_bytes());
    hex::encode(h.finalize())
}

/// Checks the headers of a request at time `now` (Unix seconds).
pub fn verify(keys: &TifKeys, headers: &HeaderMap, now: i64) -> Result<(), NhsaError> {
    let get = |name: &str| -> Result<String, NhsaError> {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| {
                NhsaError::field(
                    name,
                    "请求头缺失（本节点要求网关签名）",
                    format!(
                        "header {name} is missing; this node requires the x-tif-* signature headers"
                    ),
                )
            })
    };
    let paasid = get("x-tif-paasid")?;
    let timestamp = get("x-tif-timestamp")?;
    let nonce = get("x-tif-nonce")?;
    let sig = get("x-tif-signature")?;
    if paasid != keys.paasid {
        return Err(NhsaError::field(
            "x-tif-paasid",
            "不是本节点配置的账号",
            format!("x-tif-paasid {paasid:?} is not the paasid this node is configured with"),
        ));
    }
    let ts: i64 = timestamp.parse().map_err(|_| {
        NhsaError::field(
            "x-tif-timestamp",
            "应为 Unix 秒数",
            format!("x-tif-timestamp {timestamp:?} is not Unix seconds"),
        )
    })?;
    if ts.abs_diff(now) > MAX_SKEW_SECONDS.unsigned_abs() {
        return Err(NhsaError::field(
            "x-tif-timestamp",
            format!("与本节点时间相差超过 {MAX_SKEW_SECONDS} 秒"),
            format!(
                "x-tif-timestamp {ts} is more than {MAX_SKEW_SECONDS} s from this node's clock ({now})"
            ),
        ));
    }
    // Compared in constant time: the time a mismatch takes tells nothing of the secret.
    let expected = signature(&timestamp, &keys.secret, &nonce);
    let given = sig.to_ascii_lowercase();
    let differs = given.len() != expected.len()
        || given
            .bytes()
            .zip(expected.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            != 0;
    if differs {
        return Err(NhsaError::field(
            "x-tif-signature",
            "签名不符",
            "x-tif-signature does not match SHA-256(timestamp + secret + nonce + timestamp)",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(paasid: &str, ts: &str, nonce: &str, sig: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-tif-paasid", paasid.parse().unwrap());
        h.insert("x-tif-timestamp", ts.parse().unwrap());
        h.insert("x-tif-nonce", nonce.parse().unwrap());
        h.insert("x-tif-signature", sig.parse().unwrap());
        h
    }

    #[test]
    fn signature_is_checked_with_paasid_and_clock() {
        let keys = TifKeys {
            paasid: "his01".into(),
            secret: "s3cret".into(),
        };
        // sha256("1700000000s3cretabc1700000000")
        let good = signature("1700000000", "s3cret", "abc");
        assert_eq!(good.len(), 64);
        assert_eq!(
            good,
            hex::encode(Sha256::digest(b"1700000000s3cretabc1700000000"))
        );
        assert!(
            verify(
                &keys,
                &headers("his01", "1700000000", "abc", &good),
                1_700_000_100
            )
            .is_ok()
        );
        let e = verify(
            &keys,
            &headers("his01", "1700000000", "abd", &good),
            1_700_000_000,
        )
        .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("x-tif-signature"));
        let e = verify(
            &keys,
            &headers("his02", "1700000000", "abc", &good),
            1_700_000_000,
        )
        .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("x-tif-paasid"));
        let e = verify(
            &keys,
            &headers("his01", "1700000000", "abc", &good),
            1_700_000_301,
        )
        .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("x-tif-timestamp"));
        let e = verify(&keys, &HeaderMap::new(), 0).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("x-tif-paasid"));
    }
}
