//! The console's memory: sessions opened by login links, the CSRF tokens of signed-in
//! operators, and the outcome of every action by its form's request id. All of it is
//! per process: a restart signs everyone out, which is what an operator expects of a
//! restarted server (the actions themselves are idempotent in the store by their
//! request ids where the domain has them).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use ring::{
    hmac,
    rand::{SecureRandom, SystemRandom},
};
use sha2::{Digest, Sha256};

use super::Outcome;
use crate::identity::CertInfo;

/// A session ends after this long without a request…
const IDLE_SECS: i64 = 30 * 60;
/// …and at the latest this long after the link signed in.
const MAX_SECS: i64 = 8 * 3600;
/// Outcomes are kept this long for repeats of their form.
const OUTCOME_SECS: i64 = 24 * 3600;
/// And at most this many (the oldest go first).
const MAX_OUTCOMES: usize = 10_000;

struct Session {
    cert: Arc<CertInfo>,
    opened: i64,
    last: i64,
}

pub(super) struct Sessions {
    /// Keys the CSRF tokens (HMAC of the principal's key); per process.
    secret: hmac::Key,
    rng: SystemRandom,
    open: Mutex<HashMap<String, Session>>,
    outcomes: Mutex<HashMap<String, (String, Outcome, i64)>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Sessions {
    pub(super) fn new() -> Self {
        let rng = SystemRandom::new();
        let secret = hmac::Key::generate(hmac::HMAC_SHA256, &rng)
            .unwrap_or_else(|_| hmac::Key::new(hmac::HMAC_SHA256, uuid::Uuid::new_v4().as_bytes()));
        Self {
            secret,
            rng,
            open: Mutex::new(HashMap::new()),
            outcomes: Mutex::new(HashMap::new()),
        }
    }

    fn random_hex(&self) -> String {
        let mut b = [0u8; 32];
        if self.rng.fill(&mut b).is_err() {
            // ring's system randomness does not fail on a supported OS; a v4 UUID is
            // random too.
            return uuid::Uuid::new_v4().simple().to_string();
        }
        hex::encode(b)
    }

    /// Opens a session for `cert`; returns its id (the cookie's value).
    pub(super) fn open(&self, cert: Arc<CertInfo>, now: i64) -> String {
        let sid = self.random_hex();
        let mut open = lock(&self.open);
        open.retain(|_, s| s.last + IDLE_SECS > now && s.opened + MAX_SECS > now);
        open.insert(
            sid.clone(),
            Session {
                cert,
                opened: now,
                last: now,
            },
        );
        sid
    }

    /// The session's operator, if it is open; touching it keeps it open.
    pub(super) fn get(&self, sid: &str, now: i64) -> Option<Arc<CertInfo>> {
        let mut open = lock(&self.open);
        let s = open.get_mut(sid)?;
        if s.last + IDLE_SECS <= now || s.opened + MAX_SECS <= now {
            open.remove(sid);
            return None;
        }
        s.last = now;
        Some(Arc::clone(&s.cert))
    }

    pub(super) fn close(&self, sid: &str) {
        lock(&self.open).remove(sid);
    }

    /// The CSRF token of a principal.
    pub(super) fn csrf(&self, key: &str) -> String {
        hex::encode(hmac::sign(&self.secret, key.as_bytes()).as_ref())
    }

    /// Whether `token` is the principal's (compared in constant time).
    pub(super) fn csrf_ok(&self, key: &str, token: &str) -> bool {
        hex::decode(token).is_ok_and(|t| hmac::verify(&self.secret, key.as_bytes(), &t).is_ok())
    }

    /// A repeat of request id `rid`: its outcome if the same form was sent, `Err` if
    /// the id was used for a different one, `None` if it is new.
    pub(super) fn replay(&self, rid: &str, fingerprint: &str) -> Result<Option<Outcome>, ()> {
        match lock(&self.outcomes).get(rid) {
            Some((f, o, _)) if f == fingerprint => Ok(Some(o.clone())),
            Some(_) => Err(()),
            None => Ok(None),
        }
    }

    pub(super) fn record(&self, rid: &str, fingerprint: String, outcome: Outcome) {
        let now = super::now_secs();
        let mut all = lock(&self.outcomes);
        all.retain(|_, (_, _, at)| *at + OUTCOME_SECS > now);
        if all.len() >= MAX_OUTCOMES
            && let Some(oldest) = all
                .iter()
                .min_by_key(|(_, (_, _, at))| *at)
                .map(|(k, _)| k.clone())
        {
            all.remove(&oldest);
        }
        all.insert(rid.to_owned(), (fingerprint, outcome, now));
    }

    /// The outcome of request id `rid`, for the page it redirected to.
    pub(super) fn outcome(&self, rid: &str) -> Option<Outcome> {
        lock(&self.outcomes).get(rid).map(|(_, o, _)| o.clone())
    }
}

/// What makes two submissions the same form: the path and every field but the CSRF
/// token (which differs between a certificate and a session of the same operator).
pub(super) fn fingerprint(path: &str, form: &HashMap<String, String>) -> String {
    let mut fields: Vec<_> = form.iter().filter(|(k, _)| *k != "csrf").collect();
    fields.sort();
    let mut h = Sha256::new();
    h.update(path.as_bytes());
    for (k, v) in fields {
        h.update([0]);
        h.update(k.as_bytes());
        h.update([1]);
        h.update(v.as_bytes());
    }
    hex::encode(h.finalize())
}
