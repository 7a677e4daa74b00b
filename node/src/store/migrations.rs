//! Versioned schema migrations (rusqlite_migration, tracked in `user_version`). Each
//! migration is append-only: a released migration is never edited, a change is a new
//! one. Money is stored as INTEGER fen so that SQL sums are exact.

use rusqlite::Connection;
use rusqlite_migration::{M, Migrations};

use crate::{Error, Result};

/// Schema version after all migrations.
pub const SCHEMA_VERSION: u32 = 20;

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
    lookup_hash     TEXT NOT NULL,   -- SHA-256 of the number, for federated look-ups by hash
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
CREATE UNIQUE INDEX persons_by_lookup_hash ON persons (lookup_hash);

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

const V2_SETTLEMENT: &str = r"
-- Home side: year-to-date accumulators per person, versioned for compare-and-set.
CREATE TABLE accumulators (
    id_number                TEXT NOT NULL REFERENCES persons (id_number),
    year                     INTEGER NOT NULL,
    version                  INTEGER NOT NULL,
    pool_paid                INTEGER NOT NULL,
    outpatient_pool_paid     INTEGER NOT NULL,
    chronic_pool_paid        INTEGER NOT NULL,
    serious_illness_paid     INTEGER NOT NULL,
    outpatient_deductible_paid INTEGER NOT NULL,
    admissions               INTEGER NOT NULL,
    inscope_total            INTEGER NOT NULL,
    PRIMARY KEY (id_number, year)
) STRICT, WITHOUT ROWID;

-- Home side: claims committed by treatment regions (and local settlements), owed by
-- this region. A claim is never edited except to mark it reversed; the reversal is a
-- ledger record of its own.
CREATE TABLE claims (
    claim_id          TEXT PRIMARY KEY,
    treatment_region  TEXT NOT NULL,
    id_number         TEXT NOT NULL,
    institution_code  TEXT NOT NULL,
    visit_kind        TEXT NOT NULL,
    settled_at        TEXT NOT NULL,
    period            TEXT NOT NULL,
    policy_version    INTEGER NOT NULL,
    provisional       INTEGER NOT NULL,
    split             BLOB NOT NULL,      -- encoded yidi.v1.Split, the authoritative one
    fund_fen          INTEGER NOT NULL,
    acct_fen          INTEGER NOT NULL,
    acc_year          INTEGER NOT NULL,
    acc_delta         TEXT NOT NULL,      -- JSON: what this claim added to the accumulators
    state             TEXT NOT NULL,      -- committed | reversed
    reversal_id       TEXT,
    reversed_at       TEXT
) STRICT;
CREATE INDEX claims_by_person ON claims (id_number);

-- A claim id a treatment region gave up on: a late CommitClaim for it is refused.
CREATE TABLE claim_tombstones (
    claim_id   TEXT PRIMARY KEY,
    created_at TEXT NOT NULL
) STRICT, WITHOUT ROWID;

-- Treatment side: visits, fee lines, settlements.
CREATE TABLE visits (
    visit_id          TEXT PRIMARY KEY,
    seq               INTEGER NOT NULL UNIQUE,
    institution_code  TEXT NOT NULL REFERENCES institutions (code),
    id_number         TEXT NOT NULL,
    home_region       TEXT NOT NULL,
    visit_kind        TEXT NOT NULL,
    level             TEXT NOT NULL,
    external_visit_no TEXT NOT NULL,
    diagnosis_code    TEXT NOT NULL,
    state             TEXT NOT NULL,      -- open | closed | settled
    opened_at         TEXT NOT NULL,
    visit_date        TEXT NOT NULL,
    closed_at         TEXT,
    home_snapshot     BLOB NOT NULL       -- encoded EligibilityResponse at opening, for offline settlement
) STRICT;
CREATE INDEX visits_by_institution ON visits (institution_code, external_visit_no);

CREATE TABLE fee_lines (
    visit_id            TEXT NOT NULL REFERENCES visits (visit_id),
    line_no             TEXT NOT NULL,
    item_code           TEXT NOT NULL,
    item_name           TEXT NOT NULL,
    class               TEXT NOT NULL,
    first_selfpay_ratio TEXT NOT NULL,
    price_cap_fen       INTEGER,
    quantity            TEXT NOT NULL,
    unit_price_fen      INTEGER NOT NULL,
    amount_fen          INTEGER NOT NULL,
    service_date        TEXT NOT NULL,
    PRIMARY KEY (visit_id, line_no)
) STRICT, WITHOUT ROWID;

-- Settlements at the treatment node, and their reversals (cancellations), as records
-- of their own. `state` of a settlement: pending (intent recorded, home not yet
-- answered) | settled | provisional (home unreachable, queued) | refused (patient paid
-- in full) | failed (never took effect) | cancelled (a reversal exists).
CREATE TABLE settlements (
    settlement_id     TEXT PRIMARY KEY,
    seq               INTEGER NOT NULL UNIQUE,
    visit_id          TEXT NOT NULL REFERENCES visits (visit_id),
    institution_code  TEXT NOT NULL,
    id_number         TEXT NOT NULL,
    home_region       TEXT NOT NULL,
    visit_kind        TEXT NOT NULL,
    state             TEXT NOT NULL,
    reverses          TEXT,               -- set on a reversal record
    request_scope     TEXT NOT NULL,
    request_id        TEXT NOT NULL,
    payload_hash      TEXT NOT NULL,
    split             BLOB NOT NULL,      -- encoded yidi.v1.Split
    medfee_fen        INTEGER NOT NULL,
    fund_fen          INTEGER NOT NULL,
    acct_fen          INTEGER NOT NULL,
    cash_fen          INTEGER NOT NULL,
    policy_version    INTEGER NOT NULL,
    acc_version       INTEGER NOT NULL,
    settled_at        TEXT NOT NULL,
    settle_date       TEXT NOT NULL,      -- UTC+8 calendar date, for reconciliation
    period            TEXT NOT NULL,
    note              TEXT NOT NULL
) STRICT;
CREATE INDEX settlements_by_institution ON settlements (institution_code, settle_date);
CREATE INDEX settlements_by_visit ON settlements (visit_id);
CREATE INDEX settlements_by_state ON settlements (state);

-- Durable outbox of pushes to home nodes that could not be delivered at once.
CREATE TABLE outbox (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    kind            TEXT NOT NULL,        -- commit | reverse
    target_region   TEXT NOT NULL,
    ref_id          TEXT NOT NULL UNIQUE, -- the settlement or reversal id it delivers
    payload         BLOB NOT NULL,        -- the encoded request
    created_at      TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_ms INTEGER NOT NULL,     -- unix millis
    last_error      TEXT NOT NULL DEFAULT ''
) STRICT;

-- The ledger (台账): one record per claim, reversal or adjustment, per counterparty and
-- clearing period. receivable = owed to this region (as treatment region); payable = owed
-- by this region (as home region). Both sides write the same record id, amount and
-- period, so their per-pair digests agree.
CREATE TABLE ledger (
    entry_id      TEXT NOT NULL,
    side          TEXT NOT NULL,          -- receivable | payable
    counterparty  TEXT NOT NULL,
    period        TEXT NOT NULL,
    kind          TEXT NOT NULL,          -- claim | reversal | adjustment
    claim_id      TEXT NOT NULL,
    amount_fen    INTEGER NOT NULL,
    created_at    TEXT NOT NULL,
    PRIMARY KEY (entry_id, side)
) STRICT, WITHOUT ROWID;
CREATE INDEX ledger_by_pair ON ledger (counterparty, period, side);

CREATE TABLE sequences (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
";

const V3_CLEARING: &str = r"
-- Which clearing round a ledger record is frozen into, excluded from (dispute carried
-- to the next round), or cleared by.
ALTER TABLE ledger ADD COLUMN round_id TEXT;
ALTER TABLE ledger ADD COLUMN excluded_round TEXT;
ALTER TABLE ledger ADD COLUMN cleared_round TEXT;
CREATE INDEX ledger_by_round ON ledger (round_id);
CREATE INDEX ledger_uncleared ON ledger (cleared_round, period);

CREATE TABLE clearing_rounds (
    round_id          TEXT PRIMARY KEY,
    period            TEXT NOT NULL,
    state             TEXT NOT NULL,      -- frozen | confirmed | cleared | released
    statement_digest  TEXT NOT NULL DEFAULT '',
    confirmed_by      TEXT NOT NULL DEFAULT '',
    operator_digest   TEXT NOT NULL DEFAULT '', -- statement digest the operator confirmed
    frozen_at         TEXT NOT NULL,
    cleared_at        TEXT
) STRICT;

-- Reserves (储备金) prepaid by a home region to a treatment region.
CREATE TABLE reserves (
    home_region      TEXT NOT NULL,
    treatment_region TEXT NOT NULL,
    balance_fen      INTEGER NOT NULL,
    alarm_fen        INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (home_region, treatment_region)
) STRICT, WITHOUT ROWID;

-- Audit deductions (审核扣款) on settlements treated here.
CREATE TABLE deductions (
    deduction_id     TEXT PRIMARY KEY,
    settlement_id    TEXT NOT NULL REFERENCES settlements (settlement_id),
    institution_code TEXT NOT NULL,
    home_region      TEXT NOT NULL,
    amount_fen       INTEGER NOT NULL CHECK (amount_fen > 0),
    reason           TEXT NOT NULL,
    created_at       TEXT NOT NULL,
    period           TEXT NOT NULL
) STRICT;
CREATE INDEX deductions_by_institution ON deductions (institution_code, period);
";

const V4_AUDIT: &str = r"
-- Every read of a person's data by a peer node and every claim a peer committed or
-- reversed here: who (the peer's region and certificate serial), what, when, about whom,
-- with what outcome. Append-only: the triggers refuse any change or removal, so that
-- not even a bug in this program can rewrite what happened.
CREATE TABLE audit_log (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    at               TEXT NOT NULL,              -- RFC 3339, UTC+8
    at_ms            INTEGER NOT NULL,           -- the same instant, ms since the epoch
    peer_region      TEXT NOT NULL,
    peer_serial      TEXT NOT NULL DEFAULT '',   -- '' on an --insecure loopback node
    action           TEXT NOT NULL,              -- LookupPerson | CheckEligibility | CommitClaim | ReverseClaim
    id_number        TEXT NOT NULL DEFAULT '',
    person_hash      TEXT NOT NULL DEFAULT '',
    reference        TEXT NOT NULL DEFAULT '',   -- claim id, or the card number looked up
    institution_code TEXT NOT NULL DEFAULT '',
    outcome          TEXT NOT NULL,              -- ok, or a gRPC code name (NOT_FOUND, ...)
    detail           TEXT NOT NULL DEFAULT ''
) STRICT;
CREATE INDEX audit_by_peer ON audit_log (peer_region, seq);
CREATE INDEX audit_by_person ON audit_log (id_number, seq);
CREATE INDEX audit_by_hash ON audit_log (person_hash, seq);
CREATE INDEX audit_by_time ON audit_log (at_ms);
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
";

const COORDINATOR_V1: &str = r"
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) STRICT;

CREATE TABLE requests (
    scope        TEXT NOT NULL,
    request_id   TEXT NOT NULL,
    method       TEXT NOT NULL,
    payload_hash TEXT NOT NULL,
    response     BLOB NOT NULL,
    created_at   TEXT NOT NULL,
    PRIMARY KEY (scope, request_id)
) STRICT, WITHOUT ROWID;

-- Clearing rounds and everything a round learned; only regions, ids, counts, sums and
-- digests: the coordinator never stores personal data.
CREATE TABLE rounds (
    round_id   TEXT PRIMARY KEY,
    period     TEXT NOT NULL,
    state      TEXT NOT NULL,
    statement  BLOB,              -- encoded yidi.v1.Statement once issued
    note       TEXT NOT NULL DEFAULT '',
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
) STRICT;

CREATE TABLE round_reports (
    round_id TEXT NOT NULL REFERENCES rounds (round_id),
    region   TEXT NOT NULL,
    report   BLOB NOT NULL,       -- encoded ReportPositionsResponse
    PRIMARY KEY (round_id, region)
) STRICT, WITHOUT ROWID;

CREATE TABLE round_disputes (
    round_id TEXT NOT NULL REFERENCES rounds (round_id),
    creditor TEXT NOT NULL,
    debtor   TEXT NOT NULL,
    dispute  BLOB NOT NULL,       -- encoded Dispute
    PRIMARY KEY (round_id, creditor, debtor)
) STRICT, WITHOUT ROWID;

CREATE TABLE round_confirmations (
    round_id     TEXT NOT NULL REFERENCES rounds (round_id),
    region       TEXT NOT NULL,
    confirmed_by TEXT NOT NULL,
    at           TEXT NOT NULL,
    PRIMARY KEY (round_id, region)
) STRICT, WITHOUT ROWID;

CREATE TABLE round_transfers (
    round_id    TEXT NOT NULL REFERENCES rounds (round_id),
    from_region TEXT NOT NULL,
    to_region   TEXT NOT NULL,
    amount_fen  INTEGER NOT NULL,
    reference   TEXT NOT NULL,
    recorded_at TEXT NOT NULL,
    PRIMARY KEY (round_id, from_region, to_region)
) STRICT, WITHOUT ROWID;

CREATE TABLE round_cleared (
    round_id TEXT NOT NULL REFERENCES rounds (round_id),
    region   TEXT NOT NULL,
    at       TEXT NOT NULL,
    PRIMARY KEY (round_id, region)
) STRICT, WITHOUT ROWID;
";

// The payment instructions of an issued statement on their own (an encoded message with
// the Statement's `instructions` field): every recorded transfer checks them, and the
// statement they come from holds the gross matrix, one row per pair of regions —
// megabytes for a province — that SQLite would read in full each time.
const COORDINATOR_V2: &str = r"
ALTER TABLE rounds ADD COLUMN instructions BLOB;
";

// Empty periods settle only when the operator asked for it at OpenRound (`allow_empty`).
// A recorded transfer's bank reference can be corrected; every version of the record —
// the recording and each correction, with time, operator and reason — is kept here,
// append-only, while `round_transfers` holds the current one. Transfers recorded before
// this migration become their version 1 (operator unknown).
const COORDINATOR_V3: &str = r"
ALTER TABLE rounds ADD COLUMN allow_empty INTEGER NOT NULL DEFAULT 0 CHECK (allow_empty IN (0, 1));
CREATE TABLE round_transfer_versions (
    round_id    TEXT NOT NULL REFERENCES rounds (round_id),
    from_region TEXT NOT NULL,
    to_region   TEXT NOT NULL,
    version     INTEGER NOT NULL CHECK (version >= 1),
    amount_fen  INTEGER NOT NULL,
    reference   TEXT NOT NULL,
    reason      TEXT NOT NULL,
    operator    TEXT NOT NULL,
    request_id  TEXT NOT NULL,
    at          TEXT NOT NULL,
    PRIMARY KEY (round_id, from_region, to_region, version)
) STRICT, WITHOUT ROWID;
INSERT INTO round_transfer_versions
    SELECT round_id, from_region, to_region, 1, amount_fen, reference, '', '', '', recorded_at
    FROM round_transfers;
CREATE TRIGGER round_transfer_versions_no_update BEFORE UPDATE ON round_transfer_versions
BEGIN SELECT RAISE(ABORT, 'round_transfer_versions is append-only'); END;
CREATE TRIGGER round_transfer_versions_no_delete BEFORE DELETE ON round_transfer_versions
BEGIN SELECT RAISE(ABORT, 'round_transfer_versions is append-only'); END;
";

// Every Settle looks its request up among the settlements (a repeat, or one in doubt);
// without this index SQLite walks the whole table in `seq` order for each of them, so
// settling got slower with every settlement stored.
const V5_SETTLEMENT_BY_REQUEST: &str = r"
CREATE INDEX settlements_by_request ON settlements (request_scope, request_id, seq);
";

// Home regions' policy versions fetched from their nodes. Versions are immutable, so a
// copy never goes stale; kept so that a restarted node can still settle provisionally
// (offline) under the home policy before the home node answers again.
const V6_PEER_POLICIES: &str = r"
CREATE TABLE peer_policies (
    region          TEXT NOT NULL,
    insurance_type  TEXT NOT NULL,
    version         INTEGER NOT NULL,
    policy_json     TEXT NOT NULL,
    fetched_at      TEXT NOT NULL,
    PRIMARY KEY (region, insurance_type, version)
) WITHOUT ROWID;
";

// Every eligibility check and claim asks which policy version is in force on a date
// (the latest effective_from, ties to the higher version). With the version in the
// index, that is one descent of this index read backwards: no table row, no sort.
const V7_POLICY_IN_FORCE: &str = r"
DROP INDEX policies_in_force;
CREATE INDEX policies_in_force ON policies (insurance_type, effective_from, version);
";

// The peer audit log is searched for a person by lookup hash (an entry about an ID number
// carries its hash too), so the index by ID number served no query — and cost a randomly
// placed index entry on every eligibility check and claim a peer makes.
const V8_AUDIT_BY_HASH_ONLY: &str = r"
DROP INDEX audit_by_person;
";

// The card's uniqueness as a named index instead of a column constraint, so that
// `yidi load-persons` can drop it and build it by sorting like the other indexes of the
// register (an automatic index of a constraint cannot be dropped). The look-up hash as
// its 32 bytes instead of 64 hex characters: its index — one randomly placed entry per
// person — shrinks, and with it the cost of building or updating it. SQLite cannot drop a
// constraint in place: the table is rebuilt (the copy runs in ID order, so its pages are
// filled one after another) with foreign keys off, which `migrate` arranges.
const V9_CARD_INDEX: &str = r"
CREATE TABLE persons_v9 (
    id_number       TEXT PRIMARY KEY,
    lookup_hash     BLOB NOT NULL,   -- SHA-256 of the number (32 bytes), for federated look-ups by hash
    name            TEXT NOT NULL,
    card_no         TEXT,            -- unique: persons_by_card
    insurance_type  TEXT NOT NULL,
    person_type     TEXT NOT NULL,
    civil_servant   INTEGER NOT NULL,
    status          TEXT NOT NULL,
    account_fen     INTEGER NOT NULL CHECK (account_fen >= 0),
    enrolled_since  TEXT NOT NULL,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL
) STRICT, WITHOUT ROWID;
INSERT INTO persons_v9 (id_number, lookup_hash, name, card_no, insurance_type, person_type, civil_servant,
                        status, account_fen, enrolled_since, created_at, updated_at)
    SELECT id_number, unhex(lookup_hash), name, card_no, insurance_type, person_type, civil_servant,
           status, account_fen, enrolled_since, created_at, updated_at
    FROM persons ORDER BY id_number;
DROP TABLE persons;
ALTER TABLE persons_v9 RENAME TO persons;
CREATE UNIQUE INDEX persons_by_lookup_hash ON persons (lookup_hash);
CREATE INDEX persons_by_type ON persons (insurance_type, status);
CREATE UNIQUE INDEX persons_by_card ON persons (card_no);
";

// A ledger entry has no clearing round until a round freezes it, yet every entry —
// two per cross-region claim, one at each node — put a (NULL, entry) key into the
// index by round, a page written at every commit for an index that is only ever
// searched for a given round. Only entries in a round are indexed now.
const V10_LEDGER_BY_ROUND_PARTIAL: &str = r"
DROP INDEX ledger_by_round;
CREATE INDEX ledger_by_round ON ledger (round_id) WHERE round_id IS NOT NULL;
";

// The stored answers of Settle and CommitClaim are larger than a row of a WITHOUT ROWID
// table keeps on its page (see docs/performance.md for their sizes): each spilled to an
// overflow page of its own, a leaf held about three rows and split every few inserts —
// pages in both nodes' commits of every claim. In a rowid table a row keeps up to ~4 KB
// on its page and new rows are appended at the table's end (one page shared by a
// group's inserts); the request's key lives in a small index. Same columns and
// statements; the table is copied once.
const V11_REQUESTS_BY_ROWID: &str = r"
CREATE TABLE requests_v11 (
    scope        TEXT NOT NULL,   -- who may reuse ids independently (admin, an institution, a peer)
    request_id   TEXT NOT NULL,
    method       TEXT NOT NULL,
    payload_hash TEXT NOT NULL,
    response     BLOB NOT NULL,   -- the encoded original answer
    created_at   TEXT NOT NULL
) STRICT;
INSERT INTO requests_v11 (scope, request_id, method, payload_hash, response, created_at)
    SELECT scope, request_id, method, payload_hash, response, created_at FROM requests;
DROP TABLE requests;
ALTER TABLE requests_v11 RENAME TO requests;
CREATE UNIQUE INDEX requests_by_request ON requests (scope, request_id);
";

// A catalogue item may be marked free of charge: only such an item may be billed on
// a fee line of 0.00 (every item stored before is not).
const V12_CATALOGUE_FREE_OF_CHARGE: &str = r"
ALTER TABLE catalogue ADD COLUMN free_of_charge INTEGER NOT NULL DEFAULT 0 CHECK (free_of_charge IN (0, 1));
";

// The states of visits, settlements and claims, and the kinds of outbox item, as CHECK
// constraints: the same lists as `store::states` (a test compares them), so that no
// write, by this program or by hand, can store a state the code does not know. SQLite
// cannot add a constraint in place: each table is rebuilt with the same columns and
// indexes (foreign keys off, which `migrate` arranges; checked before the commit). The
// outbox keeps its AUTOINCREMENT counter, so that no delivered item's id is reused.
const V13_STATE_CHECKS: &str = r"
CREATE TABLE visits_v13 (
    visit_id          TEXT PRIMARY KEY,
    seq               INTEGER NOT NULL UNIQUE,
    institution_code  TEXT NOT NULL REFERENCES institutions (code),
    id_number         TEXT NOT NULL,
    home_region       TEXT NOT NULL,
    visit_kind        TEXT NOT NULL,
    level             TEXT NOT NULL,
    external_visit_no TEXT NOT NULL,
    diagnosis_code    TEXT NOT NULL,
    state             TEXT NOT NULL CHECK (state IN ('open', 'closed', 'settled')),
    opened_at         TEXT NOT NULL,
    visit_date        TEXT NOT NULL,
    closed_at         TEXT,
    home_snapshot     BLOB NOT NULL       -- encoded EligibilityResponse at opening, for offline settlement
) STRICT;
INSERT INTO visits_v13 SELECT visit_id, seq, institution_code, id_number, home_region, visit_kind, level,
    external_visit_no, diagnosis_code, state, opened_at, visit_date, closed_at, home_snapshot FROM visits ORDER BY seq;
DROP TABLE visits;
ALTER TABLE visits_v13 RENAME TO visits;
CREATE INDEX visits_by_institution ON visits (institution_code, external_visit_no);

CREATE TABLE settlements_v13 (
    settlement_id     TEXT PRIMARY KEY,
    seq               INTEGER NOT NULL UNIQUE,
    visit_id          TEXT NOT NULL REFERENCES visits (visit_id),
    institution_code  TEXT NOT NULL,
    id_number         TEXT NOT NULL,
    home_region       TEXT NOT NULL,
    visit_kind        TEXT NOT NULL,
    state             TEXT NOT NULL CHECK (state IN ('pending', 'settled', 'provisional', 'refused',
                                                     'failed', 'cancelled', 'disputed', 'reversal')),
    reverses          TEXT,               -- set on a reversal record
    request_scope     TEXT NOT NULL,
    request_id        TEXT NOT NULL,
    payload_hash      TEXT NOT NULL,
    split             BLOB NOT NULL,      -- encoded yidi.v1.Split
    medfee_fen        INTEGER NOT NULL,
    fund_fen          INTEGER NOT NULL,
    acct_fen          INTEGER NOT NULL,
    cash_fen          INTEGER NOT NULL,
    policy_version    INTEGER NOT NULL,
    acc_version       INTEGER NOT NULL,
    settled_at        TEXT NOT NULL,
    settle_date       TEXT NOT NULL,      -- UTC+8 calendar date, for reconciliation
    period            TEXT NOT NULL,
    note              TEXT NOT NULL
) STRICT;
INSERT INTO settlements_v13 SELECT settlement_id, seq, visit_id, institution_code, id_number, home_region,
    visit_kind, state, reverses, request_scope, request_id, payload_hash, split, medfee_fen, fund_fen, acct_fen,
    cash_fen, policy_version, acc_version, settled_at, settle_date, period, note FROM settlements ORDER BY seq;
DROP TABLE settlements;
ALTER TABLE settlements_v13 RENAME TO settlements;
CREATE INDEX settlements_by_institution ON settlements (institution_code, settle_date);
CREATE INDEX settlements_by_visit ON settlements (visit_id);
CREATE INDEX settlements_by_state ON settlements (state);
CREATE INDEX settlements_by_request ON settlements (request_scope, request_id, seq);

CREATE TABLE claims_v13 (
    claim_id          TEXT PRIMARY KEY,
    treatment_region  TEXT NOT NULL,
    id_number         TEXT NOT NULL,
    institution_code  TEXT NOT NULL,
    visit_kind        TEXT NOT NULL,
    settled_at        TEXT NOT NULL,
    period            TEXT NOT NULL,
    policy_version    INTEGER NOT NULL,
    provisional       INTEGER NOT NULL,
    split             BLOB NOT NULL,      -- encoded yidi.v1.Split, the authoritative one
    fund_fen          INTEGER NOT NULL,
    acct_fen          INTEGER NOT NULL,
    acc_year          INTEGER NOT NULL,
    acc_delta         TEXT NOT NULL,      -- JSON: what this claim added to the accumulators
    state             TEXT NOT NULL CHECK (state IN ('committed', 'reversed')),
    reversal_id       TEXT,
    reversed_at       TEXT
) STRICT;
INSERT INTO claims_v13 SELECT claim_id, treatment_region, id_number, institution_code, visit_kind, settled_at,
    period, policy_version, provisional, split, fund_fen, acct_fen, acc_year, acc_delta, state, reversal_id,
    reversed_at FROM claims ORDER BY rowid;
DROP TABLE claims;
ALTER TABLE claims_v13 RENAME TO claims;
CREATE INDEX claims_by_person ON claims (id_number);

CREATE TABLE outbox_v13 (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    kind            TEXT NOT NULL CHECK (kind IN ('commit', 'reverse', 'adjust')),
    target_region   TEXT NOT NULL,
    ref_id          TEXT NOT NULL UNIQUE, -- the settlement or reversal id it delivers
    payload         BLOB NOT NULL,        -- the encoded request
    created_at      TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_ms INTEGER NOT NULL,     -- unix millis
    last_error      TEXT NOT NULL DEFAULT ''
) STRICT;
INSERT INTO outbox_v13 SELECT id, kind, target_region, ref_id, payload, created_at, attempts, next_attempt_ms,
    last_error FROM outbox ORDER BY id;
DELETE FROM sqlite_sequence WHERE name = 'outbox_v13';
INSERT INTO sqlite_sequence (name, seq) SELECT 'outbox_v13', seq FROM sqlite_sequence WHERE name = 'outbox';
DROP TABLE outbox;
ALTER TABLE outbox_v13 RENAME TO outbox;
";

// The state of a participant's round is one of `ParticipantState`'s names (common's
// round_state.rs), enforced by the store (the comment of V3 listed four of the five).
// Numbered 14: it follows V13 (the settlement tables). SQLite cannot add a CHECK to a
// column: the table is rebuilt and its rows copied (it has no index of its own). A row
// with a state outside the list makes the copy, and so the migration, fail.
const V14_CLEARING_ROUND_STATES: &str = r"
CREATE TABLE clearing_rounds_v14 (
    round_id          TEXT PRIMARY KEY,
    period            TEXT NOT NULL,
    state             TEXT NOT NULL
        CHECK (state IN ('freezing', 'frozen', 'confirmed', 'cleared', 'released')),
    statement_digest  TEXT NOT NULL DEFAULT '',
    confirmed_by      TEXT NOT NULL DEFAULT '',
    operator_digest   TEXT NOT NULL DEFAULT '', -- statement digest the operator confirmed
    frozen_at         TEXT NOT NULL,
    cleared_at        TEXT
) STRICT;
INSERT INTO clearing_rounds_v14 (round_id, period, state, statement_digest, confirmed_by,
                                 operator_digest, frozen_at, cleared_at)
    SELECT round_id, period, state, statement_digest, confirmed_by, operator_digest, frozen_at, cleared_at
    FROM clearing_rounds;
DROP TABLE clearing_rounds;
ALTER TABLE clearing_rounds_v14 RENAME TO clearing_rounds;
";

// A visit may be cancelled (CancelVisit; NHSA 2202 / 2404): the visits table's CHECK
// takes `VisitState`'s new name. Rebuilt as V13 did (foreign keys off while fee lines
// and settlements refer to it by name; checked before the commit), every row and the
// index kept.
const V15_VISIT_CANCELLED: &str = r"
CREATE TABLE visits_v15 (
    visit_id          TEXT PRIMARY KEY,
    seq               INTEGER NOT NULL UNIQUE,
    institution_code  TEXT NOT NULL REFERENCES institutions (code),
    id_number         TEXT NOT NULL,
    home_region       TEXT NOT NULL,
    visit_kind        TEXT NOT NULL,
    level             TEXT NOT NULL,
    external_visit_no TEXT NOT NULL,
    diagnosis_code    TEXT NOT NULL,
    state             TEXT NOT NULL CHECK (state IN ('open', 'closed', 'settled', 'cancelled')),
    opened_at         TEXT NOT NULL,
    visit_date        TEXT NOT NULL,
    closed_at         TEXT,
    home_snapshot     BLOB NOT NULL       -- encoded EligibilityResponse at opening, for offline settlement
) STRICT;
INSERT INTO visits_v15 SELECT visit_id, seq, institution_code, id_number, home_region, visit_kind, level,
    external_visit_no, diagnosis_code, state, opened_at, visit_date, closed_at, home_snapshot FROM visits ORDER BY seq;
DROP TABLE visits;
ALTER TABLE visits_v15 RENAME TO visits;
CREATE INDEX visits_by_institution ON visits (institution_code, external_visit_no);
";

// Files of the NHSA gateway's file transfer (9101 upload, 3202 result, 9102 download):
// the content itself, bounded in size by the gateway, with the institution that alone
// may use it and the time after which it is gone (deleted when the next file is stored).
const V16_NHSA_FILES: &str = r"
CREATE TABLE nhsa_files (
    file_qury_no      TEXT PRIMARY KEY,
    institution_code  TEXT NOT NULL,
    kind              TEXT NOT NULL CHECK (kind IN ('upload', 'result')),
    filename          TEXT NOT NULL,
    content           BLOB NOT NULL,
    stored_at         TEXT NOT NULL,
    expires_at        TEXT NOT NULL
) STRICT;
CREATE INDEX nhsa_files_by_expiry ON nhsa_files (expires_at);
CREATE INDEX nhsa_files_by_institution ON nhsa_files (institution_code, expires_at);
";

// A coordinator round's state is one of `RoundState`'s names (common's round_state.rs),
// enforced by the store. The table is rebuilt and its rows copied, with foreign keys off
// (`migrate`): the tables of reports, disputes, confirmations, transfers and clear marks
// refer to it by name, and find the new one under it; the migration checks those
// references before it commits. It has no index of its own.
const COORDINATOR_V4: &str = r"
CREATE TABLE rounds_v4 (
    round_id     TEXT PRIMARY KEY,
    period       TEXT NOT NULL,
    state        TEXT NOT NULL CHECK (state IN ('OPEN', 'COLLECTING', 'RECONCILING', 'DISPUTED',
                                               'STATEMENT_ISSUED', 'CONFIRMED', 'SETTLED', 'ABORTED')),
    statement    BLOB,              -- encoded yidi.v1.Statement once issued
    note         TEXT NOT NULL DEFAULT '',
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL,
    instructions BLOB,              -- the statement's payment instructions alone (V2)
    allow_empty  INTEGER NOT NULL DEFAULT 0 CHECK (allow_empty IN (0, 1))
) STRICT;
INSERT INTO rounds_v4 (round_id, period, state, statement, note, created_at, updated_at,
                       instructions, allow_empty)
    SELECT round_id, period, state, statement, note, created_at, updated_at, instructions, allow_empty
    FROM rounds;
DROP TABLE rounds;
ALTER TABLE rounds_v4 RENAME TO rounds;
";

// Two-level clearing (docs/national.md): a node's round clears either its records
// toward cities of its own province (the provincial coordinator's round) or those toward
// other provinces (the national round, through the provincial coordinator). Rounds
// recorded before are provincial.
const V17_CLEARING_ROUND_SCOPE: &str = r"
ALTER TABLE clearing_rounds ADD COLUMN scope TEXT NOT NULL DEFAULT 'province'
    CHECK (scope IN ('province', 'national'));
";

// The index of settlements by state held an entry for every settlement, moved at every
// settlement from `pending` to `settled` (a second page in the outcome's commit), for
// queries that only ever look for the few records in a passing or rare state: the
// pending intents (recovery), the provisional ones (exposure per home region) and the
// refused ones (the console). Each is now a partial index of its state alone, which a
// settled record leaves and never re-enters. The queries name the state literally, as
// SQLite uses a partial index only then.
const V19_SETTLEMENT_STATES_PARTIAL: &str = r"
DROP INDEX settlements_by_state;
CREATE INDEX settlements_pending ON settlements (seq) WHERE state = 'pending';
CREATE INDEX settlements_provisional ON settlements (home_region) WHERE state = 'provisional';
CREATE INDEX settlements_refused ON settlements (note) WHERE state = 'refused';
";

// The national rounds a provincial coordinator takes part in as a participant of the
// national coordinator (coordinator/national.rs): per round its state, its cities'
// reports of their cross-province records, the provincial statement of the national
// round (what each city pays or receives through the provincial clearing account), and
// which cities have confirmed it and marked the round cleared. Only counts, sums,
// digests and region codes, as for a provincial round.
const COORDINATOR_V5_NATIONAL: &str = r"
CREATE TABLE national_rounds (
    round_id    TEXT PRIMARY KEY,
    period      TEXT NOT NULL,
    state       TEXT NOT NULL
        CHECK (state IN ('collecting', 'reported', 'confirming', 'confirmed', 'cleared', 'released')),
    statement   BLOB,              -- encoded yidi.v1.Statement: the provincial statement
    national_digest TEXT NOT NULL DEFAULT '',
    note        TEXT NOT NULL DEFAULT '',
    updated_at  TEXT NOT NULL
) STRICT;
CREATE TABLE national_reports (
    round_id TEXT NOT NULL REFERENCES national_rounds (round_id),
    region   TEXT NOT NULL,
    report   BLOB NOT NULL,        -- encoded yidi.v1.ReportPositionsResponse of the city
    PRIMARY KEY (round_id, region)
) STRICT;
CREATE TABLE national_marks (
    round_id TEXT NOT NULL REFERENCES national_rounds (round_id),
    region   TEXT NOT NULL,
    mark     TEXT NOT NULL CHECK (mark IN ('confirmed', 'cleared')),
    detail   TEXT NOT NULL DEFAULT '',
    at       TEXT NOT NULL,
    PRIMARY KEY (round_id, region, mark)
) STRICT;
";

// Periods archived to a file (`yidi admin archive`, store/archive.rs): the state of
// each period's export, purge and restore, the purge's or restore's cursor (so that a
// killed one resumes where it stopped), the file's digest and manifest; and per
// period and region the range of `<region>-S-<seq>` ids archived, so that a call about
// a settlement or claim no longer in the live store is told which archive holds it.
const V18_ARCHIVED_PERIODS: &str = r"
CREATE TABLE archived_periods (
    period      TEXT PRIMARY KEY,
    state       TEXT NOT NULL
        CHECK (state IN ('exporting', 'exported', 'purging', 'purged', 'restoring', 'restored')),
    digest      TEXT NOT NULL DEFAULT '',   -- SHA-256 of the archive file, hex
    manifest    TEXT NOT NULL DEFAULT '',   -- the manifest (JSON) of the archive file
    step_table  TEXT NOT NULL DEFAULT '',   -- purge or restore: the table it is at
    step_after  TEXT NOT NULL DEFAULT '',   -- and the last key done there (JSON array)
    rows_done   INTEGER NOT NULL DEFAULT 0,
    updated_at  TEXT NOT NULL
) STRICT;
CREATE TABLE archived_ranges (
    period   TEXT NOT NULL REFERENCES archived_periods (period),
    region   TEXT NOT NULL,
    seq_min  INTEGER NOT NULL,
    seq_max  INTEGER NOT NULL,
    PRIMARY KEY (period, region)
) STRICT, WITHOUT ROWID;
";

// Exactly which ids an archive holds (`members`, a bitmap over `seq_min..=seq_max`; NULL
// for an archive written before it, whose whole range counts as archived): a claim the
// home node never stored is not refused because its id falls inside an archived range.
// And outbox items a home node refused because they concern a record it archived
// (`parked`): they no longer hold up the items queued behind them.
const V20_ARCHIVE_MEMBERS: &str = r"
ALTER TABLE archived_ranges ADD COLUMN members BLOB;
ALTER TABLE outbox ADD COLUMN parked INTEGER NOT NULL DEFAULT 0 CHECK (parked IN (0, 1));
";

/// Which database a store holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schema {
    Node,
    Coordinator,
}

fn migrations(schema: Schema) -> Migrations<'static> {
    match schema {
        Schema::Node => Migrations::new(vec![
            M::up(V1_FOUNDATION),
            M::up(V2_SETTLEMENT),
            M::up(V3_CLEARING),
            M::up(V4_AUDIT),
            M::up(V5_SETTLEMENT_BY_REQUEST),
            M::up(V6_PEER_POLICIES),
            M::up(V7_POLICY_IN_FORCE),
            M::up(V8_AUDIT_BY_HASH_ONLY),
            // Checked inside the migration's transaction: a broken reference rolls it back.
            M::up(V9_CARD_INDEX).foreign_key_check(),
            M::up(V10_LEDGER_BY_ROUND_PARTIAL),
            M::up(V11_REQUESTS_BY_ROWID),
            M::up(V12_CATALOGUE_FREE_OF_CHARGE),
            // Checked inside the migration's transaction: a broken reference rolls it back.
            M::up(V13_STATE_CHECKS).foreign_key_check(),
            M::up(V14_CLEARING_ROUND_STATES),
            // Checked inside the migration's transaction: a broken reference rolls it back.
            M::up(V15_VISIT_CANCELLED).foreign_key_check(),
            M::up(V16_NHSA_FILES),
            M::up(V17_CLEARING_ROUND_SCOPE),
            M::up(V18_ARCHIVED_PERIODS),
            M::up(V19_SETTLEMENT_STATES_PARTIAL),
            M::up(V20_ARCHIVE_MEMBERS),
        ]),
        Schema::Coordinator => Migrations::new(vec![
            M::up(COORDINATOR_V1),
            M::up(COORDINATOR_V2),
            M::up(COORDINATOR_V3),
            M::up(COORDINATOR_V4).foreign_key_check(),
            M::up(COORDINATOR_V5_NATIONAL),
        ]),
    }
}

/// The schema version of `schema` after all its migrations.
pub fn latest(schema: Schema) -> u32 {
    match schema {
        Schema::Node => SCHEMA_VERSION,
        Schema::Coordinator => COORDINATOR_SCHEMA_VERSION,
    }
}

/// Brings the schema to the latest version. Refuses a store written by a newer yidi.
pub fn migrate(conn: &mut Connection, schema: Schema) -> Result<()> {
    let current: u32 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let latest = latest(schema);
    if current > latest {
        return Err(Error::FailedPrecondition(format!(
            "the store has schema version {current}, newer than this yidi ({latest}); upgrade yidi"
        )));
    }
    if current == latest {
        return Ok(());
    }
    // Foreign keys off while migrating: a migration that rebuilds a table others refer
    // to (V9) drops the old one first, which enforcement would refuse. The pragma does
    // nothing inside a transaction, hence here; such a migration checks the references
    // itself before it commits (`M::foreign_key_check`).
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    // Helper threads for SQLite's sorter: a migration that builds an index over
    // millions of rows (V9) sorts its keys.
    let migrated = conn
        .pragma_update(None, "threads", 2)
        .map_err(Error::from)
        .and_then(|()| {
            migrations(schema)
                .to_latest(conn)
                .map_err(|e| Error::Internal(format!("schema migration failed: {e}")))
        });
    conn.pragma_update(None, "foreign_keys", "ON")?;
    migrated
}

/// Coordinator schema version after all migrations.
pub const COORDINATOR_SCHEMA_VERSION: u32 = 5;

#[cfg(test)]
mod tests {
    use rusqlite::Connection;

    use super::{Schema, migrate, migrations};

    const PERSON: &str = "INSERT INTO persons (id_number, lookup_hash, name, card_no, insurance_type, person_type, \
        civil_servant, status, account_fen, enrolled_since, created_at, updated_at) \
        VALUES (?1, ?2, '甲', ?3, 'employee', 'in_service', 0, 'active', 100, '2020-01-01', 't', 't')";
    const FILING: &str = "INSERT INTO filings (filing_id, seq, id_number, filing_type, treatment_region, institutions, \
        valid_from, status, note, applied_at) VALUES (?1, ?2, ?3, 'referral', '330200', '', '2026-01-01', 'applied', '', 't')";

    #[test]
    fn v9_rebuilds_the_register_keeping_persons_references_and_card_uniqueness() {
        let mut conn = Connection::open_in_memory().expect("open");
        conn.pragma_update(None, "foreign_keys", "ON").expect("fk");
        migrations(Schema::Node)
            .to_version(&mut conn, 8)
            .expect("to V8");
        for (id, card) in [
            ("330106199003150417", "A00000001"),
            ("330106199003150433", "A00000002"),
        ] {
            conn.execute(PERSON, [id, &yidi_common::idnum::lookup_hash(id), card])
                .expect("person");
        }
        conn.execute(FILING, ["330100-F-000001", "1", "330106199003150417"])
            .expect("filing");

        migrate(&mut conn, Schema::Node).expect("to the latest");

        let v: u32 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .expect("version");
        assert_eq!(v, super::SCHEMA_VERSION);
        let fk: bool = conn
            .pragma_query_value(None, "foreign_keys", |r| r.get(0))
            .expect("fk");
        assert!(fk, "foreign keys are enforced again after migrating");
        let cards: Vec<(String, String)> = conn
            .prepare("SELECT id_number, card_no FROM persons ORDER BY id_number")
            .expect("prepare")
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .expect("query")
            .collect::<rusqlite::Result<_>>()
            .expect("rows");
        assert_eq!(
            cards,
            [
                ("330106199003150417".to_owned(), "A00000001".to_owned()),
                ("330106199003150433".to_owned(), "A00000002".to_owned())
            ]
        );
        // After V9 the hash is stored as bytes (a text value is refused: STRICT).
        let taken = conn
            .execute(
                &PERSON.replace("?2", "unhex(?2)"),
                ["33010619900315045X", "00", "A00000001"],
            )
            .expect_err("a card is still unique");
        assert!(taken.to_string().contains("persons.card_no"), "{taken}");
        let orphan = conn
            .execute(FILING, ["330100-F-000002", "2", "110105194912310029"])
            .expect_err("filings still refer to persons");
        assert!(orphan.to_string().contains("FOREIGN KEY"), "{orphan}");
        let filed: String = conn
            .query_row(
                "SELECT p.name FROM filings f JOIN persons p USING (id_number)",
                [],
                |r| r.get(0),
            )
            .expect("the filing's person");
        assert_eq!(filed, "甲");
        let by_hash: String = conn
            .query_row(
                "SELECT id_number FROM persons WHERE lookup_hash = ?1",
                [&yidi_common::idnum::lookup_digest("330106199003150433")[..]],
                |r| r.get(0),
            )
            .expect("found by the hash's bytes");
        assert_eq!(by_hash, "330106199003150433");
    }

    /// V10: only entries frozen in a round are in the index by round, and the clearing
    /// statements that look entries up by round still go through it.
    #[test]
    fn v10_indexes_only_entries_in_a_round() {
        let mut conn = Connection::open_in_memory().expect("open");
        migrate(&mut conn, Schema::Node).expect("to the latest");
        conn.execute_batch(
            "INSERT INTO ledger (entry_id, side, counterparty, period, kind, claim_id, amount_fen, created_at, round_id) VALUES \
             ('e1', 'receivable', '330200', '2026-11', 'claim', 'e1', 100, 't', NULL), \
             ('e2', 'receivable', '330200', '2026-11', 'claim', 'e2', 200, 't', 'R1')",
        )
        .expect("entries");
        let indexed: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM ledger INDEXED BY ledger_by_round WHERE round_id IS NOT NULL",
                [],
                |r| r.get(0),
            )
            .expect("count through the index");
        assert_eq!(indexed, 1);
        let plan: String = conn
            .query_row(
                "EXPLAIN QUERY PLAN UPDATE ledger SET round_id = NULL WHERE round_id = ?1",
                ["R1"],
                |r| r.get(3),
            )
            .expect("plan");
        assert!(plan.contains("ledger_by_round"), "{plan}");
    }

    /// V11: the request records are copied into a rowid table, found by their key
    /// through the new unique index, and a repeat still replays its stored answer.
    #[test]
    fn v11_keeps_every_request_and_its_uniqueness() {
        use prost::Message;
        use yidi_common::proto;

        use crate::idempotency::{RequestKey, replay};

        let mut conn = Connection::open_in_memory().expect("open");
        migrations(Schema::Node)
            .to_version(&mut conn, 10)
            .expect("to V10");
        // An answer as large as a Settle's with a long explanation (over what a row of
        // the old table kept on its page).
        let answer = proto::Settlement {
            settlement_id: "330200-S-0000000001".into(),
            note: "说明".repeat(400),
            ..Default::default()
        };
        let insert = "INSERT INTO requests (scope, request_id, method, payload_hash, response, created_at) \
                      VALUES (?1, ?2, ?3, ?4, ?5, 't')";
        conn.execute(
            insert,
            rusqlite::params!["inst:H1", "r-1", "Settle", "h1", answer.encode_to_vec()],
        )
        .expect("request 1");
        conn.execute(
            insert,
            rusqlite::params!["admin", "r-1", "OpenVisit", "h2", vec![1u8, 2, 3]],
        )
        .expect("request 2");

        migrate(&mut conn, Schema::Node).expect("to the latest");

        let rows: Vec<(i64, String, String, String, usize)> = conn
            .prepare("SELECT rowid, scope, request_id, method, length(response) FROM requests ORDER BY scope")
            .expect("prepare")
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
            .expect("query")
            .collect::<rusqlite::Result<_>>()
            .expect("rows");
        assert_eq!(rows.len(), 2, "{rows:?}");
        assert_eq!(
            (
                rows[0].1.as_str(),
                rows[0].2.as_str(),
                rows[0].3.as_str(),
                rows[0].4
            ),
            ("admin", "r-1", "OpenVisit", 3)
        );
        assert_eq!(
            (rows[1].1.as_str(), rows[1].3.as_str(), rows[1].4),
            ("inst:H1", "Settle", answer.encoded_len())
        );
        let key = RequestKey::new("inst:H1", "r-1", "Settle", "h1".into()).expect("key");
        let replayed: proto::Settlement = replay(&conn, &key).expect("replay").expect("stored");
        assert_eq!(replayed, answer);
        let other = RequestKey::new("inst:H1", "r-1", "Settle", "h9".into()).expect("key");
        let refused = replay::<proto::Settlement>(&conn, &other).expect_err("another payload");
        assert!(
            refused.to_string().contains("different payload"),
            "{refused}"
        );
        let again = conn
            .execute(
                insert,
                rusqlite::params!["admin", "r-1", "X", "h", vec![0u8]],
            )
            .expect_err("a request id is still claimed once per scope");
        assert!(again.to_string().contains("UNIQUE"), "{again}");
        let plan: String = conn
            .query_row(
                "EXPLAIN QUERY PLAN SELECT method, payload_hash, response FROM requests WHERE scope = ?1 AND request_id = ?2",
                ["admin", "r-1"],
                |r| r.get(3),
            )
            .expect("plan");
        assert!(plan.contains("requests_by_request"), "{plan}");
    }

    /// Every row of `table`, in its primary key's order, column by column.
    fn rows(conn: &Connection, table: &str) -> Vec<Vec<rusqlite::types::Value>> {
        let mut stmt = conn
            .prepare(&format!("SELECT * FROM {table} ORDER BY 1"))
            .expect("prepare");
        let n = stmt.column_count();
        stmt.query_map([], |r| (0..n).map(|i| r.get(i)).collect())
            .expect("query")
            .collect::<rusqlite::Result<_>>()
            .expect("rows")
    }

    /// V13: the rebuilt tables keep every row, their indexes, the foreign keys that
    /// point at them and the outbox's counter; a state none of the enums of
    /// `store::states` knows is refused by a CHECK constraint, and every state they know
    /// is accepted.
    #[test]
    fn v13_keeps_every_row_and_refuses_unknown_states() {
        use crate::store::states::{ClaimState, OutboxKind, SettlementState, VisitState};

        let mut conn = Connection::open_in_memory().expect("open");
        migrations(Schema::Node)
            .to_version(&mut conn, 12)
            .expect("to V12");
        conn.execute_batch(
            "INSERT INTO institutions VALUES ('H1', '医院', 'hospital', 'level3', 'active', '2026-01-01', NULL);
             INSERT INTO visits VALUES ('V1', 1, 'H1', 'P1', '330200', 'outpatient', 'level3', 'E1', '', 'settled', 't', '2026-11-02', NULL, x'');
             INSERT INTO visits VALUES ('V2', 2, 'H1', 'P2', '330200', 'inpatient', 'level3', 'E2', 'J18', 'closed', 't', '2026-11-01', 't2', x'0a01');
             INSERT INTO fee_lines VALUES ('V1', '1', 'X1', '药', 'A', '0', NULL, '2', 1000, 2000, '2026-11-02');
             INSERT INTO settlements VALUES ('S1', 1, 'V1', 'H1', 'P1', '330200', 'outpatient', 'cancelled', NULL, 'inst:H1', 'r1', 'h1', x'01', 2000, 1500, 0, 500, 3, 7, 't', '2026-11-02', '2026-11', '');
             INSERT INTO settlements VALUES ('S2', 2, 'V1', 'H1', 'P1', '330200', 'outpatient', 'reversal', 'S1', 'inst:H1', 'r2', 'h2', x'02', -2000, -1500, 0, -500, 3, 7, 't', '2026-11-02', '2026-11', 'cancelled');
             INSERT INTO settlements VALUES ('S3', 3, 'V2', 'H1', 'P2', '330200', 'inpatient', 'provisional', NULL, 'inst:H1', 'r3', 'h3', x'', 9999, 8888, 11, 1100, 2, 0, 't', '2026-11-01', '2026-11', 'offline');
             INSERT INTO deductions VALUES ('D1', 'S3', 'H1', '330200', 5, 'audit', 't', '2026-11');
             INSERT INTO claims VALUES ('330300-S-1', '330300', 'P9', 'H9', 'outpatient', 't', '2026-11', 1, 0, x'', 300, 0, 2026, '{}', 'reversed', 'R1', 't');
             INSERT INTO outbox (kind, target_region, ref_id, payload, created_at, next_attempt_ms) VALUES
                 ('commit', '330200', 'S3', x'01', 't', 5), ('reverse', '330200', 'S2', x'', 't', 0);
             DELETE FROM outbox WHERE ref_id = 'S2';",
        )
        .expect("rows of every kind");
        let tables = [
            "visits",
            "fee_lines",
            "settlements",
            "deductions",
            "claims",
            "outbox",
        ];
        let before: Vec<_> = tables.iter().map(|t| rows(&conn, t)).collect();

        migrate(&mut conn, Schema::Node).expect("to the latest");

        let mut after: Vec<_> = tables.iter().map(|t| rows(&conn, t)).collect();
        // Later migrations add columns (V20: outbox.parked, 0 for every item queued
        // before): the rows are the same in the columns they had.
        for row in &mut after[5] {
            assert_eq!(row.pop(), Some(rusqlite::types::Value::Integer(0)));
        }
        assert_eq!(after, before);
        assert_eq!(after[2].len(), 3);
        let indexes: Vec<String> = conn
            .prepare(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL \
                 AND tbl_name IN ('visits', 'settlements', 'claims', 'outbox') ORDER BY name",
            )
            .expect("prepare")
            .query_map([], |r| r.get(0))
            .expect("query")
            .collect::<rusqlite::Result<_>>()
            .expect("names");
        assert_eq!(
            indexes,
            [
                "claims_by_person",
                "settlements_by_institution",
                "settlements_by_request",
                "settlements_by_visit",
                "settlements_pending",
                "settlements_provisional",
                "settlements_refused",
                "visits_by_institution"
            ]
        );
        // The delivered item's id (2) is not given out again.
        conn.execute(
            "INSERT INTO outbox (kind, target_region, ref_id, payload, created_at, next_attempt_ms) \
             VALUES (?1, '330200', 'S4', x'', 't', 0)",
            [OutboxKind::Reverse],
        )
        .expect("a new item");
        assert_eq!(conn.last_insert_rowid(), 3);
        let orphan = conn
            .execute(
                "INSERT INTO fee_lines VALUES ('V9', '1', 'X1', '药', 'A', '0', NULL, '1', 1, 1, 't')",
                [],
            )
            .expect_err("fee lines still refer to visits");
        assert!(orphan.to_string().contains("FOREIGN KEY"), "{orphan}");

        for sql in [
            "UPDATE visits SET state = 'Open' WHERE visit_id = 'V1'",
            "UPDATE settlements SET state = 'done' WHERE settlement_id = 'S3'",
            "UPDATE settlements SET state = 'presettled' WHERE settlement_id = 'S3'",
            "UPDATE claims SET state = 'abandoned'",
            "UPDATE outbox SET kind = 'push'",
            "INSERT INTO outbox (kind, target_region, ref_id, payload, created_at, next_attempt_ms) \
             VALUES ('', '330200', 'S5', x'', 't', 0)",
        ] {
            let e = conn.execute(sql, []).expect_err(sql);
            assert!(
                e.to_string().contains("CHECK constraint failed"),
                "{sql}: {e}"
            );
        }
        let after_refusals: Vec<_> = tables[..5].iter().map(|t| rows(&conn, t)).collect();
        assert_eq!(after_refusals, before[..5]);

        // Each CHECK lists exactly the enum's states, in its order.
        let checked = |table: &str| -> Vec<String> {
            let sql: String = conn
                .query_row(
                    "SELECT sql FROM sqlite_master WHERE name = ?1",
                    [table],
                    |r| r.get(0),
                )
                .expect("table");
            let list = &sql[sql.find("IN (").expect("a CHECK list") + 4..];
            list[..list.find(')').expect("its end")]
                .split(',')
                .map(|s| s.trim().trim_matches('\'').to_owned())
                .collect()
        };
        fn names<T: std::fmt::Display>(all: &[T]) -> Vec<String> {
            all.iter().map(ToString::to_string).collect()
        }
        assert_eq!(checked("visits"), names(VisitState::ALL));
        assert_eq!(checked("settlements"), names(SettlementState::ALL));
        assert_eq!(checked("claims"), names(ClaimState::ALL));
        assert_eq!(checked("outbox"), names(OutboxKind::ALL));

        let tx = conn.transaction().expect("tx");
        for s in VisitState::ALL {
            tx.execute("UPDATE visits SET state = ?1", [s])
                .expect("a visit state");
        }
        for s in SettlementState::ALL {
            tx.execute("UPDATE settlements SET state = ?1", [s])
                .expect("a settlement state");
        }
        for s in ClaimState::ALL {
            tx.execute("UPDATE claims SET state = ?1", [s])
                .expect("a claim state");
        }
        for k in OutboxKind::ALL {
            tx.execute("UPDATE outbox SET kind = ?1", [k])
                .expect("an outbox kind");
        }
        tx.rollback().expect("rollback");
    }

    #[test]
    fn coordinator_v3_keeps_recorded_transfers_as_their_first_version() {
        let mut conn = Connection::open_in_memory().expect("open");
        migrations(Schema::Coordinator)
            .to_version(&mut conn, 2)
            .expect("to V2");
        conn.execute_batch(
            "INSERT INTO rounds (round_id, period, state, created_at, updated_at) VALUES ('2026-05-r1', '2026-05', 'SETTLED', 't0', 't1');
             INSERT INTO round_transfers VALUES ('2026-05-r1', '330100', '330000', 12345, 'BANK-1', 't2');",
        )
        .expect("a round and its transfer");
        migrate(&mut conn, Schema::Coordinator).expect("to the latest");
        let (allow_empty, version): (bool, (u32, i64, String, String, String)) = (
            conn.query_row("SELECT allow_empty FROM rounds", [], |r| r.get(0))
                .expect("round"),
            conn.query_row(
                "SELECT version, amount_fen, reference, reason, at FROM round_transfer_versions",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .expect("version"),
        );
        assert!(!allow_empty);
        assert_eq!(
            version,
            (1, 12345, "BANK-1".into(), String::new(), "t2".into())
        );
        for sql in [
            "UPDATE round_transfer_versions SET reference = 'X'",
            "DELETE FROM round_transfer_versions",
        ] {
            let e = conn.execute(sql, []).expect_err("append-only");
            assert!(e.to_string().contains("append-only"), "{e}");
        }
    }

    /// V15: the rebuilt visits table keeps every visit (and the fee lines and
    /// settlements that refer to it), its index, and now takes `cancelled`; a name
    /// outside `VisitState` is still refused.
    #[test]
    fn v15_keeps_every_visit_and_takes_cancelled() {
        let mut conn = Connection::open_in_memory().expect("open");
        migrations(Schema::Node)
            .to_version(&mut conn, 14)
            .expect("to V14");
        conn.execute_batch(
            "INSERT INTO institutions VALUES ('H1', '医院', 'hospital', 'level3', 'active', '2026-01-01', NULL);
             INSERT INTO visits VALUES ('V1', 1, 'H1', 'P1', '330200', 'outpatient', 'level3', 'E1', '', 'settled', 't', '2026-11-02', NULL, x'');
             INSERT INTO visits VALUES ('V2', 2, 'H1', 'P2', '330200', 'inpatient', 'level3', 'E2', 'J18', 'closed', 't', '2026-11-01', 't2', x'0a01');
             INSERT INTO visits VALUES ('V3', 3, 'H1', 'P3', '330200', 'outpatient', 'level3', 'E3', '', 'open', 't', '2026-11-03', NULL, x'');
             INSERT INTO fee_lines VALUES ('V1', '1', 'X1', '药', 'A', '0', NULL, '2', 1000, 2000, '2026-11-02');
             INSERT INTO settlements VALUES ('S1', 1, 'V1', 'H1', 'P1', '330200', 'outpatient', 'settled', NULL, 'inst:H1', 'r1', 'h1', x'01', 2000, 1500, 0, 500, 3, 7, 't', '2026-11-02', '2026-11', '');",
        )
        .expect("rows");
        let tables = ["visits", "fee_lines", "settlements"];
        let before: Vec<_> = tables.iter().map(|t| rows(&conn, t)).collect();
        let e = conn
            .execute(
                "UPDATE visits SET state = 'cancelled' WHERE visit_id = 'V3'",
                [],
            )
            .expect_err("no cancelled before V15");
        assert!(e.to_string().contains("CHECK constraint failed"), "{e}");

        migrate(&mut conn, Schema::Node).expect("to the latest");

        let after: Vec<_> = tables.iter().map(|t| rows(&conn, t)).collect();
        assert_eq!(after, before);
        assert_eq!(after[0].len(), 3);
        let index: String = conn
            .query_row(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'visits' AND sql IS NOT NULL",
                [],
                |r| r.get(0),
            )
            .expect("the index");
        assert_eq!(index, "visits_by_institution");
        conn.execute(
            "UPDATE visits SET state = ?1 WHERE visit_id = 'V3'",
            [crate::store::states::VisitState::Cancelled],
        )
        .expect("cancelled is a visit state");
        let e = conn
            .execute(
                "UPDATE visits SET state = 'canceled' WHERE visit_id = 'V2'",
                [],
            )
            .expect_err("an unknown state");
        assert!(e.to_string().contains("CHECK constraint failed"), "{e}");
        let orphan = conn
            .execute(
                "INSERT INTO fee_lines VALUES ('V9', '1', 'X1', '药', 'A', '0', NULL, '1', 1, 1, 't')",
                [],
            )
            .expect_err("fee lines still refer to visits");
        assert!(orphan.to_string().contains("FOREIGN KEY"), "{orphan}");
    }

    /// V14 (the node's): every participant round kept as it was; the state column takes
    /// exactly `ParticipantState`'s names; a store holding another value is not migrated.
    #[test]
    fn v14_keeps_participant_rounds_and_refuses_unknown_states() {
        use yidi_common::round_state::ParticipantState;

        let mut conn = Connection::open_in_memory().expect("open");
        migrations(Schema::Node)
            .to_version(&mut conn, 12)
            .expect("to V12");
        conn.execute_batch(
            "INSERT INTO clearing_rounds (round_id, period, state, statement_digest, confirmed_by, operator_digest, frozen_at, cleared_at) VALUES \
             ('2026-01-r1', '2026-01', 'cleared', 'd1', 'auto', '', 't1', 't2'), \
             ('2026-02-r1', '2026-02', 'released', '', '', '', 't3', NULL), \
             ('2026-02-r2', '2026-02', 'frozen', '', '', 'd2', 't4', NULL)",
        )
        .expect("rounds before V14");
        let rows =
            |conn: &Connection| -> Vec<(String, String, String, String, String, Option<String>)> {
                conn.prepare("SELECT round_id, state, statement_digest, confirmed_by, operator_digest, cleared_at FROM clearing_rounds ORDER BY round_id")
                .expect("prepare")
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)))
                .expect("query")
                .collect::<rusqlite::Result<_>>()
                .expect("rows")
            };
        let before = rows(&conn);
        migrate(&mut conn, Schema::Node).expect("to the latest");
        assert_eq!(rows(&conn), before);
        assert_eq!(
            crate::store::clearing::get(&conn, "2026-01-r1")
                .expect("read")
                .expect("kept")
                .state,
            ParticipantState::Cleared
        );
        let insert = "INSERT INTO clearing_rounds (round_id, period, state, frozen_at) VALUES (?1, '2026-03', ?2, 't')";
        for (i, s) in ParticipantState::ALL.iter().enumerate() {
            conn.execute(insert, [format!("ok-{i}"), s.to_string()])
                .expect("every state of the enum");
        }
        for bad in ["FROZEN", "settled", ""] {
            let e = conn
                .execute(insert, ["bad", bad])
                .expect_err("not a participant state");
            assert!(e.to_string().contains("CHECK constraint failed"), "{e}");
        }
        let e = conn
            .execute(
                "UPDATE clearing_rounds SET state = 'confirm' WHERE round_id = '2026-02-r2'",
                [],
            )
            .expect_err("nor by an update");
        assert!(e.to_string().contains("CHECK constraint failed"), "{e}");
        assert_eq!(rows(&conn)[..3], before[..]);

        // A store holding a state outside the list stays as it was.
        let mut old = Connection::open_in_memory().expect("open");
        migrations(Schema::Node)
            .to_version(&mut old, 12)
            .expect("to V12");
        old.execute(insert, ["odd", "thawed"])
            .expect("no CHECK before V14");
        migrate(&mut old, Schema::Node).expect_err("the copy refuses it");
        let v: u32 = old
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .expect("version");
        assert_eq!(v, 12);
    }

    /// COORDINATOR_V4: every round kept, still the parent of its reports (foreign keys
    /// enforced again); the state column takes exactly `RoundState`'s names.
    #[test]
    fn coordinator_v4_keeps_rounds_and_refuses_unknown_states() {
        use yidi_common::round_state::RoundState;

        let mut conn = Connection::open_in_memory().expect("open");
        conn.pragma_update(None, "foreign_keys", "ON").expect("fk");
        migrations(Schema::Coordinator)
            .to_version(&mut conn, 3)
            .expect("to V3");
        conn.execute_batch(
            "INSERT INTO rounds (round_id, period, state, statement, note, created_at, updated_at, instructions, allow_empty) VALUES \
             ('2026-05-r1', '2026-05', 'SETTLED', x'0a01', 'every transfer recorded', 't0', 't1', x'22', 0), \
             ('2026-06-r1', '2026-06', 'COLLECTING', NULL, 'waiting for 330300 (down)', 't2', 't3', NULL, 1);
             INSERT INTO round_reports VALUES ('2026-06-r1', '330100', x'00');
             INSERT INTO round_transfers VALUES ('2026-05-r1', '330100', '330000', 12345, 'BANK-1', 't2');",
        )
        .expect("rounds before V4");
        type Row = (
            String,
            String,
            Option<Vec<u8>>,
            String,
            String,
            String,
            Option<Vec<u8>>,
            bool,
        );
        let rows = |conn: &Connection| -> Vec<Row> {
            conn.prepare("SELECT round_id, state, statement, note, created_at, updated_at, instructions, allow_empty FROM rounds ORDER BY round_id")
                .expect("prepare")
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?)))
                .expect("query")
                .collect::<rusqlite::Result<_>>()
                .expect("rows")
        };
        let before = rows(&conn);
        migrate(&mut conn, Schema::Coordinator).expect("to the latest");
        assert_eq!(rows(&conn), before);
        let state: String = conn
            .query_row(
                "SELECT state FROM rounds WHERE round_id = '2026-06-r1'",
                [],
                |r| r.get(0),
            )
            .expect("kept");
        assert_eq!(
            state.parse::<RoundState>().expect("known"),
            RoundState::Collecting
        );
        let reported: String = conn
            .query_row(
                "SELECT r.state FROM round_reports p JOIN rounds r USING (round_id)",
                [],
                |r| r.get(0),
            )
            .expect("the report's round");
        assert_eq!(reported, "COLLECTING");
        let orphan = conn
            .execute(
                "INSERT INTO round_reports VALUES ('2026-07-r1', '330100', x'00')",
                [],
            )
            .expect_err("reports still refer to rounds");
        assert!(orphan.to_string().contains("FOREIGN KEY"), "{orphan}");
        let insert = "INSERT INTO rounds (round_id, period, state, created_at, updated_at) VALUES (?1, '2026-07', ?2, 't', 't')";
        for (i, s) in RoundState::ALL.iter().enumerate() {
            conn.execute(insert, [format!("ok-{i}"), s.to_string()])
                .expect("every state of the enum");
        }
        for bad in ["settled", "frozen", "PAID"] {
            let e = conn
                .execute(insert, ["bad", bad])
                .expect_err("not a round state");
            assert!(e.to_string().contains("CHECK constraint failed"), "{e}");
        }
        assert_eq!(rows(&conn)[..2], before[..]);
        assert_eq!(rows(&conn)[..2], before[..]);
    }

    /// V19: every settlement kept; the index by state gone, each partial index holds
    /// only the records of its state, and the queries that look for those states use
    /// them (EXPLAIN QUERY PLAN), while a settled record is in none of them.
    #[test]
    fn v19_indexes_only_the_passing_and_rare_states() {
        let mut conn = Connection::open_in_memory().expect("open");
        migrations(Schema::Node)
            .to_version(&mut conn, 18)
            .expect("to V18");
        let row = |id: &str, seq: u32, state: &str, note: &str| {
            format!(
                "INSERT INTO settlements VALUES ('{id}', {seq}, 'V{seq}', 'H1', 'P1', '330200', 'outpatient', '{state}', NULL, \
                 'inst:H1', 'r{seq}', 'h', x'', 2000, 1500, 0, 500, 3, 7, 't', '2026-11-02', '2026-11', '{note}');"
            )
        };
        let mut sql = String::from(
            "INSERT INTO institutions VALUES ('H1', '医院', 'hospital', 'level3', 'active', '2026-01-01', NULL);",
        );
        for (i, (state, note)) in [
            ("settled", ""),
            ("pending", ""),
            ("provisional", ""),
            ("refused", "home unreachable"),
            ("cancelled", ""),
            ("settled", ""),
        ]
        .iter()
        .enumerate()
        {
            let seq = u32::try_from(i).expect("small") + 1;
            sql.push_str(&format!(
                "INSERT INTO visits VALUES ('V{seq}', {seq}, 'H1', 'P1', '330200', 'outpatient', 'level3', 'E{seq}', '', 'settled', 't', '2026-11-02', NULL, x'');"
            ));
            sql.push_str(&row(&format!("S{seq}"), seq, state, note));
        }
        conn.execute_batch(&sql).expect("rows");
        let before = rows(&conn, "settlements");

        migrate(&mut conn, Schema::Node).expect("to the latest");

        assert_eq!(rows(&conn, "settlements"), before);
        let count = |sql: &str| -> i64 { conn.query_row(sql, [], |r| r.get(0)).expect(sql) };
        assert_eq!(
            count("SELECT COUNT(*) FROM sqlite_master WHERE name = 'settlements_by_state'"),
            0
        );
        let plan = |sql: &str| -> String {
            conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
                .expect("plan")
                .query_map([], |r| r.get::<_, String>(3))
                .expect("rows")
                .collect::<rusqlite::Result<Vec<_>>>()
                .expect("plan")
                .join("; ")
        };
        for (sql, index) in [
            (
                "SELECT settlement_id FROM settlements WHERE state = 'pending' ORDER BY seq",
                "settlements_pending",
            ),
            (
                "SELECT SUM(fund_fen) FROM settlements WHERE home_region = '330200' AND state = 'provisional'",
                "settlements_provisional",
            ),
            (
                "SELECT home_region, SUM(fund_fen) FROM settlements WHERE state = 'provisional' GROUP BY home_region ORDER BY home_region",
                "settlements_provisional",
            ),
            (
                "SELECT note, COUNT(*) FROM settlements WHERE state = 'refused' GROUP BY note ORDER BY COUNT(*) DESC, note",
                "settlements_refused",
            ),
        ] {
            let p = plan(sql);
            assert!(p.contains(index), "{sql}: {p}");
        }
        let pending = crate::store::settlements::pending(&conn).expect("pending");
        assert_eq!(
            pending
                .iter()
                .map(|r| r.settlement_id.as_str())
                .collect::<Vec<_>>(),
            ["S2"]
        );
        assert_eq!(
            crate::store::settlements::provisional_exposure_by_region(&conn).expect("exposure"),
            [("330200".to_owned(), 1500)]
        );
        // A pending record that settles leaves the index; a settled one never enters.
        conn.execute(
            "UPDATE settlements SET state = 'settled' WHERE settlement_id = 'S2'",
            [],
        )
        .expect("settle");
        assert!(
            crate::store::settlements::pending(&conn)
                .expect("pending")
                .is_empty()
        );
    }

    #[test]
    fn migrations_are_valid() {
        assert!(super::migrations(super::Schema::Node).validate().is_ok());
        assert!(
            super::migrations(super::Schema::Coordinator)
                .validate()
                .is_ok()
        );
    }
}
