//! Versioned schema migrations (rusqlite_migration, tracked in `user_version`). Each
//! migration is append-only: a released migration is never edited, a change is a new
//! one. Money is stored as INTEGER fen so that SQL sums are exact.

use rusqlite::Connection;
use rusqlite_migration::{M, Migrations};

use crate::{Error, Result};

/// Schema version after all migrations.
pub const SCHEMA_VERSION: u32 = 1;

const V1_FOUNDATION: &str = r"
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) STRICT;

-- Idempotency: a request id is claimed in the same transaction as its effect.
CREATE TABLE requests (
    scope        TEXT NOT NULL,   -- who may reuse ids independently (admin, an institution, a peer)
    request_id   TEXT NOT NULL,
    method       TEXT NOT NULL,
    payload_hash TEXT NOT NULL,
    response     BLOB NOT NULL,   -- the encoded original answer
    created_at   TEXT NOT NULL,
    PRIMARY KEY (scope, request_id)
) STRICT, WITHOUT ROWID;

CREATE TABLE persons (
    id_number       TEXT PRIMARY KEY,
    name            TEXT NOT NULL,
    card_no         TEXT UNIQUE,
    insurance_type  TEXT NOT NULL,
    person_type     TEXT NOT NULL,
    civil_servant   INTEGER NOT NULL,
    status          TEXT NOT NULL,
    account_fen     INTEGER NOT NULL CHECK (account_fen >= 0),
    enrolled_since  TEXT NOT NULL,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL
) STRICT, WITHOUT ROWID;
CREATE INDEX persons_by_type ON persons (insurance_type, status);

CREATE TABLE filings (
    filing_id        TEXT PRIMARY KEY,
    seq              INTEGER NOT NULL UNIQUE,
    id_number        TEXT NOT NULL REFERENCES persons (id_number),
    filing_type      TEXT NOT NULL,
    treatment_region TEXT NOT NULL,
    institutions     TEXT NOT NULL,   -- comma-separated institution codes, at most three
    valid_from       TEXT NOT NULL,
    valid_to         TEXT,            -- inclusive; NULL = open-ended
    status           TEXT NOT NULL,
    note             TEXT NOT NULL,
    applied_at       TEXT NOT NULL,
    decided_at       TEXT
) STRICT;
CREATE INDEX filings_by_person ON filings (id_number, status);

CREATE TABLE policies (
    insurance_type TEXT NOT NULL,
    version        INTEGER NOT NULL,
    effective_from TEXT NOT NULL,
    policy_json    TEXT NOT NULL,
    digest         TEXT NOT NULL,
    published_at   TEXT NOT NULL,
    note           TEXT NOT NULL,
    PRIMARY KEY (insurance_type, version)
) STRICT;
CREATE INDEX policies_in_force ON policies (insurance_type, effective_from);

CREATE TABLE catalogue (
    code                TEXT PRIMARY KEY,
    name                TEXT NOT NULL,
    category            TEXT NOT NULL,
    class               TEXT NOT NULL,
    first_selfpay_ratio TEXT NOT NULL,
    price_cap_fen       INTEGER,       -- NULL = no price cap
    unit                TEXT NOT NULL,
    valid_from          TEXT NOT NULL,
    valid_to            TEXT
) STRICT, WITHOUT ROWID;

CREATE TABLE institutions (
    code             TEXT PRIMARY KEY,
    name             TEXT NOT NULL,
    kind             TEXT NOT NULL,
    level            TEXT NOT NULL,
    agreement_status TEXT NOT NULL,
    agreement_from   TEXT NOT NULL,
    agreement_to     TEXT
) STRICT, WITHOUT ROWID;
";

fn migrations() -> Migrations<'static> {
    Migrations::new(vec![M::up(V1_FOUNDATION)])
}

/// Brings the schema to the latest version. Refuses a store written by a newer yidi.
pub fn migrate(conn: &mut Connection) -> Result<()> {
    let current: u32 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if current > SCHEMA_VERSION {
        return Err(Error::FailedPrecondition(format!(
            "the store has schema version {current}, newer than this yidi ({SCHEMA_VERSION}); upgrade yidi"
        )));
    }
    migrations()
        .to_latest(conn)
        .map_err(|e| Error::Internal(format!("schema migration failed: {e}")))
}

#[cfg(test)]
mod tests {
    #[test]
    fn migrations_are_valid() {
        assert!(super::migrations().validate().is_ok());
    }
}
