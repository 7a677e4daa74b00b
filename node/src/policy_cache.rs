//! Parsed benefit policies by (home region, insurance type, version). Versions are
//! immutable, so an entry never goes stale: the home node's own versions and the
//! versions fetched from peers are parsed once and shared.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use yidi_common::{policy::Policy, types::InsuranceType};

use crate::{Error, Result};

type Key = (String, InsuranceType, u32);

/// The cache; cheap to share behind an `Arc`.
#[derive(Default)]
pub struct PolicyCache {
    entries: Mutex<HashMap<Key, Arc<Policy>>>,
}

impl PolicyCache {
    /// A cached version, if present.
    #[must_use]
    pub fn get(&self, region: &str, it: InsuranceType, version: u32) -> Option<Arc<Policy>> {
        self.entries
            .lock()
            .ok()?
            .get(&(region.to_owned(), it, version))
            .cloned()
    }

    /// Parses `json` (unless cached) and caches it.
    pub fn insert_json(
        &self,
        region: &str,
        it: InsuranceType,
        version: u32,
        json: &str,
    ) -> Result<Arc<Policy>> {
        if let Some(p) = self.get(region, it, version) {
            return Ok(p);
        }
        let policy = Arc::new(Policy::from_json(json).map_err(|e| {
            Error::Internal(format!(
                "policy {region} {it} v{version} does not parse: {e}"
            ))
        })?);
        if let Ok(mut m) = self.entries.lock() {
            m.insert((region.to_owned(), it, version), Arc::clone(&policy));
        }
        Ok(policy)
    }

    /// The newest cached version of a region's policy in force on `date` (used when the
    /// home node is unreachable and the policy allows provisional settlement).
    #[must_use]
    pub fn latest_in_force(
        &self,
        region: &str,
        it: InsuranceType,
        date: chrono::NaiveDate,
    ) -> Option<(u32, Arc<Policy>)> {
        let m = self.entries.lock().ok()?;
        m.iter()
            .filter(|((r, t, _), p)| r == region && *t == it && p.in_force_on(date))
            .max_by_key(|((_, _, v), p)| (p.effective_from, *v))
            .map(|((_, _, v), p)| (*v, Arc::clone(p)))
    }
}
