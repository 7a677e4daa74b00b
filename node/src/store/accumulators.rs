//! Year-to-date accumulators (累计) of the home region's persons, one row per person and
//! calendar year, with a version that every claim bumps: the compare-and-set that keeps
//! a person treated in two cities at once within their caps.

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use yidi_common::{engine::Accumulators, money};

use crate::{Error, Result};

/// The accumulators of `id_number` for `year` (zeros at version 0 when none yet).
pub fn get(conn: &Connection, id_number: &str, year: i32) -> Result<Accumulators> {
    let row = conn
        .prepare_cached(
            "SELECT version, pool_paid, outpatient_pool_paid, chronic_pool_paid, serious_illness_paid, \
             outpatient_deductible_paid, admissions, inscope_total FROM accumulators WHERE id_number = ?1 AND year = ?2",
        )?
        .query_row(params![id_number, year], |r| {
            Ok(Accumulators {
                year,
                version: r.get::<_, i64>(0)?.try_into().unwrap_or_default(),
                pool_paid: money::from_fen(r.get(1)?),
                outpatient_pool_paid: money::from_fen(r.get(2)?),
                chronic_pool_paid: money::from_fen(r.get(3)?),
                serious_illness_paid: money::from_fen(r.get(4)?),
                outpatient_deductible_paid: money::from_fen(r.get(5)?),
                admissions: r.get(6)?,
                inscope_total: money::from_fen(r.get(7)?),
            })
        })
        .optional()?;
    Ok(row.unwrap_or_else(|| Accumulators::new(year)))
}

/// Stores `new` if the stored version is still `expected_version`; ABORTED otherwise (a
/// concurrent claim won; the caller re-reads and recomputes).
pub fn compare_and_set(
    conn: &Connection,
    id_number: &str,
    expected_version: u64,
    new: &Accumulators,
) -> Result<()> {
    let current = get(conn, id_number, new.year)?;
    if current.version != expected_version {
        return Err(Error::Aborted(format!(
            "accumulators of this person changed (version {} now, {} expected): another claim was settled at the same \
             time; retry with fresh eligibility",
            current.version, expected_version
        )));
    }
    let v = i64::try_from(new.version)
        .map_err(|_| Error::Internal("accumulator version overflow".into()))?;
    conn.prepare_cached(
        "INSERT INTO accumulators (id_number, year, version, pool_paid, outpatient_pool_paid, chronic_pool_paid, \
         serious_illness_paid, outpatient_deductible_paid, admissions, inscope_total) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) \
         ON CONFLICT (id_number, year) DO UPDATE SET version = excluded.version, pool_paid = excluded.pool_paid, \
         outpatient_pool_paid = excluded.outpatient_pool_paid, chronic_pool_paid = excluded.chronic_pool_paid, \
         serious_illness_paid = excluded.serious_illness_paid, \
         outpatient_deductible_paid = excluded.outpatient_deductible_paid, admissions = excluded.admissions, \
         inscope_total = excluded.inscope_total",
    )?
    .execute(params![
        id_number,
        new.year,
        v,
        money::to_fen(new.pool_paid),
        money::to_fen(new.outpatient_pool_paid),
        money::to_fen(new.chronic_pool_paid),
        money::to_fen(new.serious_illness_paid),
        money::to_fen(new.outpatient_deductible_paid),
        new.admissions,
        money::to_fen(new.inscope_total),
    ])?;
    Ok(())
}

/// What one claim added to a person's accumulators, kept with the claim so that a
/// reversal takes back exactly that.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delta {
    pub pool_paid: i64,
    pub outpatient_pool_paid: i64,
    pub chronic_pool_paid: i64,
    pub serious_illness_paid: i64,
    pub outpatient_deductible_paid: i64,
    pub admissions: i64,
    pub inscope_total: i64,
}

impl Delta {
    /// `after − before`.
    #[must_use]
    pub fn between(before: &Accumulators, after: &Accumulators) -> Self {
        let d = |a: rust_decimal::Decimal, b: rust_decimal::Decimal| {
            money::to_fen(a) - money::to_fen(b)
        };
        Self {
            pool_paid: d(after.pool_paid, before.pool_paid),
            outpatient_pool_paid: d(after.outpatient_pool_paid, before.outpatient_pool_paid),
            chronic_pool_paid: d(after.chronic_pool_paid, before.chronic_pool_paid),
            serious_illness_paid: d(after.serious_illness_paid, before.serious_illness_paid),
            outpatient_deductible_paid: d(
                after.outpatient_deductible_paid,
                before.outpatient_deductible_paid,
            ),
            admissions: i64::from(after.admissions) - i64::from(before.admissions),
            inscope_total: d(after.inscope_total, before.inscope_total),
        }
    }

    /// `acc − self`, with a bumped version (a reversal is a change like any other).
    #[must_use]
    pub fn taken_from(&self, acc: &Accumulators) -> Accumulators {
        let sub =
            |a: rust_decimal::Decimal, fen: i64| money::from_fen((money::to_fen(a) - fen).max(0));
        Accumulators {
            year: acc.year,
            version: acc.version + 1,
            pool_paid: sub(acc.pool_paid, self.pool_paid),
            outpatient_pool_paid: sub(acc.outpatient_pool_paid, self.outpatient_pool_paid),
            chronic_pool_paid: sub(acc.chronic_pool_paid, self.chronic_pool_paid),
            serious_illness_paid: sub(acc.serious_illness_paid, self.serious_illness_paid),
            outpatient_deductible_paid: sub(
                acc.outpatient_deductible_paid,
                self.outpatient_deductible_paid,
            ),
            admissions: u32::try_from((i64::from(acc.admissions) - self.admissions).max(0))
                .unwrap_or(0),
            inscope_total: sub(acc.inscope_total, self.inscope_total),
        }
    }
}
