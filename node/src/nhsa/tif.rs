//! The provincial gateway's request signature (`x-tif-*` headers), checked when the
//! node is configured with a paasid and its secret. The algorithm, as the clients of
//! the reference sheet (§1) compute it:
//!
//! `x-tif-signature` = lowercase hex of SHA-256 over the UTF-8 text
//! `timestamp + secret + nonce + timestamp`, where `timestamp` is `x-tif-timestamp`
//! (Unix seconds) and `nonce` is `x-tif-nonce`; `x-tif-paasid` must be the configured
//! paasid. A timestamp more than [`MAX_SKEW_SECONDS`] away from the node's clock is
//! refused, so a captured request cannot be replayed later; within that window
//! [`Nonces`] refuses a nonce already accepted, so it cannot be replayed at all.

use std::{collections::HashMap, sync::Mutex};

use hyper::HeaderMap;
use sha2::{Digest, Sha256};

use super::envelope::NhsaError;

/// How far `x-tif-timestamp` may be from the node's clock.
pub const MAX_SKEW_SECONDS: i64 = 300;

/// The longest `x-tif-nonce` accepted (the clients of the sheet send 32 or fewer).
pub const MAX_NONCE_CHARS: usize = 128;

/// How many nonces a node remembers at most: a window's worth at a rate well above
/// what one node settles. Past it requests are refused (until nonces expire) rather
/// than the memory growing without bound.
pub const MAX_NONCES: usize = 200_000;

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

/// What a verified signature vouches for: its nonce and timestamp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    pub nonce: String,
    pub timestamp: i64,
}

/// The nonces of accepted requests, each kept while its timestamp is still inside the
/// window (after that the timestamp check refuses the same headers by itself).
#[derive(Debug)]
pub struct Nonces {
    cap: usize,
    seen: Mutex<Seen>,
}

#[derive(Debug, Default)]
struct Seen {
    /// Nonce → the last second its timestamp is accepted.
    until: HashMap<String, i64>,
    /// When expired entries were last removed (at most once a second: one pass over
    /// the map).
    swept: i64,
}

impl Default for Nonces {
    fn default() -> Self {
        Self::with_capacity(MAX_NONCES)
    }
}

impl Nonces {
    /// A memory of at most `cap` nonces.
    #[must_use]
    pub fn with_capacity(cap: usize) -> Self {
        Self {
            cap,
            seen: Mutex::new(Seen::default()),
        }
    }

    /// Records the nonce of a request whose signature was verified at `now`; refuses
    /// one already accepted within the window, and any while the memory is full.
    pub fn admit(&self, signed: &Signed, now: i64) -> Result<(), NhsaError> {
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if now != seen.swept {
            seen.until.retain(|_, until| *until >= now);
            seen.swept = now;
        }
        if seen
            .until
            .get(&signed.nonce)
            .is_some_and(|until| *until >= now)
        {
            return Err(NhsaError::field(
                "x-tif-nonce",
                format!("已在 {MAX_SKEW_SECONDS} 秒内使用过（重放的请求），未做任何处理"),
                format!(
                    "x-tif-nonce {:?} was already used within the last {MAX_SKEW_SECONDS} s (a replayed request); nothing was done — sign every request with a fresh nonce",
                    signed.nonce
                ),
            ));
        }
        if seen.until.len() >= self.cap {
            return Err(NhsaError::field(
                "x-tif-nonce",
                format!(
                    "本节点已记录 {} 个 {MAX_SKEW_SECONDS} 秒内的随机数，已达上限，未做任何处理，请稍后重试",
                    self.cap
                ),
                format!(
                    "this node remembers {} x-tif-nonce values of the last {MAX_SKEW_SECONDS} s, its limit; nothing was done — retry shortly (the oldest expire within {MAX_SKEW_SECONDS} s)",
                    self.cap
                ),
            ));
        }
        seen.until
            .insert(signed.nonce.clone(), signed.timestamp + MAX_SKEW_SECONDS);
        Ok(())
    }
}

/// Checks the headers of a request at time `now` (Unix seconds).
pub fn verify(keys: &TifKeys, headers: &HeaderMap, now: i64) -> Result<Signed, NhsaError> {
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
    let n = nonce.chars().count();
    if n > MAX_NONCE_CHARS {
        return Err(NhsaError::field(
            "x-tif-nonce",
            format!("长度 {n} 超过 {MAX_NONCE_CHARS}"),
            format!("x-tif-nonce is {n} characters long; at most {MAX_NONCE_CHARS} are accepted"),
        ));
    }
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
    Ok(Signed {
        nonce,
        timestamp: ts,
    })
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

    fn signed(nonce: &str, timestamp: i64) -> Signed {
        Signed {
            nonce: nonce.into(),
            timestamp,
        }
    }

    #[test]
    fn a_nonce_is_refused_while_its_timestamp_is_accepted_and_the_memory_is_bounded() {
        let nonces = Nonces::with_capacity(2);
        let t = 1_700_000_000;
        assert_eq!(nonces.admit(&signed("a", t), t), Ok(()));
        let e = nonces.admit(&signed("a", t), t + 10).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("x-tif-nonce"));
        assert_eq!(
            e.message(),
            "字段（x-tif-nonce）已在 300 秒内使用过（重放的请求），未做任何处理；x-tif-nonce \"a\" was already used within the last 300 s (a replayed request); nothing was done — sign every request with a fresh nonce"
        );
        // Another timestamp with the same nonce is the same replay.
        assert!(nonces.admit(&signed("a", t + 20), t + 20).is_err());
        assert_eq!(nonces.admit(&signed("b", t + 100), t + 100), Ok(()));
        // Full: a fresh nonce is refused, not remembered.
        let e = nonces.admit(&signed("c", t + 100), t + 100).unwrap_err();
        assert!(
            e.en.starts_with("this node remembers 2 x-tif-nonce values"),
            "{}",
            e.en
        );
        // Once "a"'s timestamp has left the window it is forgotten: room again, and
        // the timestamp check refuses "a"'s old headers by itself.
        assert_eq!(nonces.admit(&signed("c", t + 301), t + 301), Ok(()));
        assert!(nonces.admit(&signed("b", t + 301), t + 301).is_err());
        assert_eq!(nonces.seen.lock().unwrap().until.len(), 2);
    }
}
