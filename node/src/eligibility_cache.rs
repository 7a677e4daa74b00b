//! The treatment node's short-lived cache of home nodes' eligibility answers.
//!
//! PreSettle stores the answer it priced with; a PreSettle repeated within
//! [`PRESETTLE_REUSE`] is answered from it, and the Settle that follows a PreSettle
//! within [`SETTLE_REUSE`] prices its first attempt with it instead of asking the home
//! node again. Neither can settle anything the home node would not: CommitClaim re-runs
//! the engine on the home node's current data and refuses (ABORTED) when the
//! accumulator version, the policy version or the split differ — the Settle then
//! reprices with a fresh answer — and refuses an inactive enrolment or a visit the
//! policy does not settle directly outright, as a fresh answer would have.
//!
//! Entries are grouped by person, so that a settlement can drop the person's entries
//! (their accumulators just changed) without looking at anybody else's: the first
//! version scanned and decoded every key of the cache on each settlement, which grew
//! with the day's pre-settles.
//!
//! It also remembers the accumulator version each person's last claim committed from
//! here left behind: an answer older than that (a visit opened before this node settled
//! another of the person's visits) is known to be stale and is not tried at all.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use yidi_common::proto;

/// How long PreSettle answers a repeat from the cache. PreSettle is a dry run that a
/// desk may repeat while a patient watches; a few seconds of staleness only shift an
/// estimate. This node's own settlements and cancellations drop the person's entries
/// at once; a claim settled for the same person in another city shows up here within
/// this time.
pub const PRESETTLE_REUSE: Duration = Duration::from_secs(2);

/// How long a Settle prices its first attempt with the answer its PreSettle got: the
/// time a patient takes to confirm and pay at the counter. A stale answer costs one
/// refused CommitClaim and a fresh eligibility call, never a wrong split (see the
/// module header).
pub const SETTLE_REUSE: Duration = Duration::from_secs(60);

/// How recently the home node must have answered a call of this node for a Settle to
/// reuse an answer: a CommitClaim sent first to a home node that has hung leaves its
/// claim in doubt until the node is back, where a failed eligibility call would have
/// let the offline rule settle it. A busy node calls its peers all the time; a quiet
/// one asks first, as before.
pub const HOME_ANSWERED_WITHIN: Duration = Duration::from_secs(3);

/// Entries kept at most (about a kilobyte each). Past it the expired ones go, and if
/// none had expired, all of them: the cache only saves calls.
const MAX_ENTRIES: usize = 100_000;

/// Persons whose last accumulator version is remembered, at most (about 80 bytes each
/// with the map's overhead: 16 MB); past it they are forgotten, which costs at most one
/// refused attempt each.
const MAX_VERSIONS: usize = 200_000;

struct Entry {
    /// The encoded CheckEligibilityRequest: the same person, institution and level,
    /// visit kind and date, treatment region and settlement day (visits of a person
    /// alike in all of these share their answers, which is harmless: the answer is
    /// about the person).
    key: Vec<u8>,
    at: Instant,
    answer: proto::EligibilityResponse,
}

#[derive(Default)]
struct Entries {
    by_person: HashMap<String, Vec<Entry>>,
    len: usize,
    /// When expired entries were last dropped (`None`: never).
    swept: Option<Instant>,
}

impl Entries {
    /// Drops the entries older than `age`.
    fn drop_older_than(&mut self, age: Duration) {
        let mut len = 0;
        self.by_person.retain(|_, v| {
            v.retain(|e| e.at.elapsed() < age);
            len += v.len();
            !v.is_empty()
        });
        self.len = len;
    }
}

/// Eligibility answers by person and request; see the module header.
#[derive(Default)]
pub struct EligibilityCache {
    entries: Mutex<Entries>,
    /// Per person: the accumulator year and version their last claim committed from
    /// this node left.
    versions: Mutex<HashMap<String, (i32, u64)>>,
}

impl EligibilityCache {
    /// The answer to exactly this request (`key`, the encoded request for `id_number`)
    /// if it is younger than `max_age`.
    pub fn get(
        &self,
        id_number: &str,
        key: &[u8],
        max_age: Duration,
    ) -> Option<proto::EligibilityResponse> {
        let m = self.entries.lock().ok()?;
        m.by_person
            .get(id_number)?
            .iter()
            .find(|e| e.key == key && e.at.elapsed() < max_age)
            .map(|e| e.answer.clone())
    }

    /// Stores (or replaces) the answer to a request.
    pub fn put(&self, id_number: &str, key: Vec<u8>, answer: &proto::EligibilityResponse) {
        let Ok(mut m) = self.entries.lock() else {
            return;
        };
        // Expired entries go at the first put after each reuse time (so that the cache
        // holds about a minute of answers instead of growing to its bound), or when
        // the cache is full.
        if m.swept.is_none_or(|at| at.elapsed() >= SETTLE_REUSE) || m.len >= MAX_ENTRIES {
            m.drop_older_than(SETTLE_REUSE);
            m.swept = Some(Instant::now());
            if m.len >= MAX_ENTRIES {
                *m = Entries {
                    swept: m.swept,
                    ..Entries::default()
                };
            }
        }
        let entry = Entry {
            key,
            at: Instant::now(),
            answer: answer.clone(),
        };
        let person = m.by_person.entry(id_number.to_owned()).or_default();
        if let Some(e) = person.iter_mut().find(|e| e.key == entry.key) {
            *e = entry;
        } else {
            person.push(entry);
            m.len += 1;
        }
    }

    /// A claim of the person committed from this node left their accumulators at
    /// `acc`: their answers go, and answers older than `acc` are stale from now on.
    pub fn settled(&self, id_number: &str, acc: &proto::Accumulators) {
        self.forget(id_number);
        if let Ok(mut m) = self.versions.lock() {
            if m.len() >= MAX_VERSIONS && !m.contains_key(id_number) {
                m.clear();
            }
            let known = m.entry(id_number.to_owned()).or_insert((acc.year, 0));
            if known.0 != acc.year || known.1 < acc.version {
                *known = (acc.year, acc.version);
            }
        }
    }

    /// Whether an answer showing `acc` is older than what a claim committed from here
    /// left (the same accumulator year, a lower version).
    pub fn is_stale(&self, id_number: &str, acc: &proto::Accumulators) -> bool {
        self.versions.lock().is_ok_and(|m| {
            m.get(id_number)
                .is_some_and(|&(year, version)| year == acc.year && version > acc.version)
        })
    }

    /// Drops every entry of a person (this node just changed their accumulators).
    pub fn forget(&self, id_number: &str) {
        if let Ok(mut m) = self.entries.lock()
            && let Some(v) = m.by_person.remove(id_number)
        {
            m.len -= v.len();
        }
    }

    /// Drops every answer. The remembered versions stay: a version only grows, so what
    /// a claim left is still a lower bound after any change at the home node.
    pub fn clear(&self) {
        if let Ok(mut m) = self.entries.lock() {
            *m = Entries::default();
        }
    }

    /// Entries held (expired ones included until they are dropped).
    pub fn len(&self) -> usize {
        self.entries.lock().map_or(0, |m| m.len)
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acc(year: i32, version: u64) -> proto::Accumulators {
        proto::Accumulators {
            year,
            version,
            ..Default::default()
        }
    }

    fn answer(version: u64) -> proto::EligibilityResponse {
        proto::EligibilityResponse {
            eligible: true,
            accumulators: Some(acc(2026, version)),
            ..Default::default()
        }
    }

    fn version(a: Option<proto::EligibilityResponse>) -> Option<u64> {
        a.map(|a| a.accumulators.unwrap_or_default().version)
    }

    const LONG: Duration = Duration::from_secs(3600);

    #[test]
    fn answers_exactly_the_request_it_stored() {
        let c = EligibilityCache::default();
        c.put("A", b"visit-1".to_vec(), &answer(3));
        c.put("A", b"visit-2".to_vec(), &answer(4));
        c.put("B", b"visit-1".to_vec(), &answer(9));
        assert_eq!(version(c.get("A", b"visit-1", LONG)), Some(3));
        assert_eq!(version(c.get("A", b"visit-2", LONG)), Some(4));
        assert_eq!(version(c.get("B", b"visit-1", LONG)), Some(9));
        assert_eq!(version(c.get("A", b"visit-3", LONG)), None);
        assert_eq!(version(c.get("C", b"visit-1", LONG)), None);
        // A newer answer to the same request replaces the old one.
        c.put("A", b"visit-1".to_vec(), &answer(5));
        assert_eq!(version(c.get("A", b"visit-1", LONG)), Some(5));
        assert_eq!(c.len(), 3);
    }

    #[test]
    fn an_answer_older_than_the_asked_age_is_not_used() {
        let c = EligibilityCache::default();
        c.put("A", b"visit-1".to_vec(), &answer(3));
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(
            version(c.get("A", b"visit-1", Duration::from_millis(10))),
            None
        );
        assert_eq!(version(c.get("A", b"visit-1", LONG)), Some(3));
    }

    #[test]
    fn forgetting_a_person_leaves_everybody_else() {
        let c = EligibilityCache::default();
        for p in ["A", "B", "C"] {
            c.put(p, b"visit-1".to_vec(), &answer(1));
            c.put(p, b"visit-2".to_vec(), &answer(1));
        }
        c.forget("B");
        c.forget("nobody");
        assert_eq!(c.len(), 4);
        assert_eq!(version(c.get("B", b"visit-1", LONG)), None);
        assert_eq!(version(c.get("A", b"visit-2", LONG)), Some(1));
        assert_eq!(version(c.get("C", b"visit-1", LONG)), Some(1));
        c.clear();
        assert!(c.is_empty());
        assert_eq!(version(c.get("A", b"visit-2", LONG)), None);
    }

    #[test]
    fn a_full_cache_drops_its_expired_entries_first_and_stays_bounded() {
        let c = EligibilityCache::default();
        {
            // Fill it with answers older than any reuse time.
            let mut m = c.entries.lock().unwrap();
            // (A monotonic clock may start at boot: on a machine up for less than a
            // minute there is no instant that old to write, and nothing to test.)
            let Some(old) = Instant::now().checked_sub(SETTLE_REUSE + Duration::from_secs(1))
            else {
                return;
            };
            for i in 0..MAX_ENTRIES {
                m.by_person.entry(format!("P{i}")).or_default().push(Entry {
                    key: b"k".to_vec(),
                    at: old,
                    answer: answer(1),
                });
            }
            m.len = MAX_ENTRIES;
            m.swept = Some(Instant::now());
        }
        c.put("fresh", b"k".to_vec(), &answer(2));
        assert_eq!(c.len(), 1, "the expired entries went");
        assert_eq!(version(c.get("fresh", b"k", LONG)), Some(2));
        assert_eq!(version(c.get("P7", b"k", LONG)), None);

        // Full of answers that have not expired: it starts over rather than grow.
        c.clear();
        for i in 0..MAX_ENTRIES {
            c.put(&format!("Q{i}"), b"k".to_vec(), &answer(3));
        }
        assert_eq!(c.len(), MAX_ENTRIES);
        c.put("one more", b"k".to_vec(), &answer(4));
        assert_eq!(c.len(), 1);
        assert_eq!(version(c.get("one more", b"k", LONG)), Some(4));
    }

    #[test]
    fn a_claim_committed_from_here_makes_older_answers_stale() {
        let c = EligibilityCache::default();
        c.put("A", b"visit-1".to_vec(), &answer(3));
        assert!(!c.is_stale("A", &acc(2026, 3)));
        c.settled("A", &acc(2026, 4));
        // Its answers went with the claim; older versions are stale, not newer ones,
        // nor another year's, nor anybody else's.
        assert_eq!(version(c.get("A", b"visit-1", LONG)), None);
        assert!(c.is_stale("A", &acc(2026, 3)));
        assert!(!c.is_stale("A", &acc(2026, 4)));
        assert!(!c.is_stale("A", &acc(2026, 5)));
        assert!(!c.is_stale("A", &acc(2027, 0)));
        assert!(!c.is_stale("B", &acc(2026, 0)));
        // Claims finishing out of order never lower what is known.
        c.settled("A", &acc(2026, 2));
        assert!(c.is_stale("A", &acc(2026, 3)));
        // A new year starts over.
        c.settled("A", &acc(2027, 1));
        assert!(!c.is_stale("A", &acc(2026, 3)));
        assert!(c.is_stale("A", &acc(2027, 0)));
        // Dropping every answer (a cancellation) keeps what is known.
        c.clear();
        assert!(c.is_stale("A", &acc(2027, 0)));
    }
}
