//! The node's side of clearing rounds: freezing the ledger records a round clears,
//! positions over the frozen set, excluding disputed records, marking them cleared.

use super::ledger::{Position, Side, record_bytes};
use crate::{Error, Result};
use rusqlite::{Connection, OptionalExtension, params};
use yidi_common::round_state::ParticipantState;

/// A round as this node knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoundRec {
    pub round_id: String,
    pub period: String,
    pub state: ParticipantState,
    pub statement_digest: String,
    pub confirmed_by: String,
    pub operator_digest: String,
    pub scope: Scope,
}

/// Which of a node's records a round clears (docs/national.md): those toward cities of
/// its own province (the provincial coordinator's round) or those toward other
/// provinces (the national round). Stored with the round (CHECK constraint, V16).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Province,
    National,
}

impl Scope {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Province => "province",
            Scope::National => "national",
        }
    }

    /// The request's scope: empty is the provincial round (what every coordinator
    /// before two-level clearing asks for).
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "" | "province" => Ok(Scope::Province),
            "national" => Ok(Scope::National),
            other => Err(Error::invalid(
                "scope",
                format!("expected province or national, got {other:?}"),
            )),
        }
    }
}

/// The round, if this node has seen it.
pub fn get(conn: &Connection, round_id: &str) -> Result<Option<RoundRec>> {
    Ok(conn
        .prepare_cached(
            "SELECT round_id, period, state, statement_digest, confirmed_by, operator_digest, scope FROM clearing_rounds WHERE round_id = ?1",
        )?
        .query_row([round_id], |r| {
            Ok(RoundRec {
                round_id: r.get(0)?,
                period: r.get(1)?,
                state: {
                    // The CHECK constraint keeps any other value out.
                    let s: String = r.get(2)?;
                    ParticipantState::parse(&s).map_err(|e| {
                        rusqlite::Error::FromSqlConversionFailure(
                            2,
                            rusqlite::types::Type::Text,
                            Box::new(e),
                        )
                    })?
                },
                statement_digest: r.get(3)?,
                confirmed_by: r.get(4)?,
                operator_digest: r.get(5)?,
                scope: {
                    let s: String = r.get(6)?;
                    Scope::parse(&s).map_err(|e| {
                        rusqlite::Error::FromSqlConversionFailure(
                            6,
                            rusqlite::types::Type::Text,
                            Box::new(e),
                        )
                    })?
                },
            })
        })
        .optional()?)
}

/// Every round this node has seen, newest first.
pub fn list(conn: &Connection) -> Result<Vec<(RoundRec, u64)>> {
    let ids: Vec<String> = conn
        .prepare_cached("SELECT round_id FROM clearing_rounds ORDER BY frozen_at DESC")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some(r) = get(conn, &id)? {
            let n = records_of(conn, &id)?;
            out.push((r, n));
        }
    }
    Ok(out)
}

/// Entries frozen in or cleared by a round.
pub fn records_of(conn: &Connection, round_id: &str) -> Result<u64> {
    Ok(conn
        // Two counts, each through its index (an entry is frozen in a round or cleared
        // by it, never both: clearing moves it from the one to the other); an OR would
        // not use the partial index by round and scan the ledger.
        .prepare_cached(
            "SELECT (SELECT COUNT(*) FROM ledger WHERE round_id = ?1) \
             + (SELECT COUNT(*) FROM ledger WHERE cleared_round = ?1)",
        )?
        .query_row([round_id], |r| r.get(0))?)
}

/// Most ledger entries one writer job of a freeze, a clearing or a release touches: a
/// round of a large node holds millions of entries, and rewriting them in one job would
/// hold the writer (and every settlement behind it) for seconds and grow the log by
/// hundreds of megabytes. A settlement that arrives just after a step began waits for
/// the whole step and its commit, so a step is kept to a small fraction of a
/// settlement's own time; its key SELECT reads no more keys than this either.
/// A node's config may change it (`clearing_step_entries`).
pub const STEP_ENTRIES: u32 = 200;

/// How long one step of a node's round may run before it stops where it got to (the
/// next step goes on from there): a step holds every settlement queued behind it, and
/// on a slow or busy host [`STEP_ENTRIES`] entries can take much longer than usual.
/// A node's config may change it (`clearing_step_millis`).
pub const STEP_TIME: std::time::Duration = std::time::Duration::from_millis(STEP_MILLIS);

/// [`STEP_TIME`] in milliseconds.
pub const STEP_MILLIS: u64 = 2;

/// The bounds of one step: at most `entries` entries, and no more once it has run for
/// `time` (it always does at least one, so that a round moves however slow the host).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepLimit {
    pub entries: u32,
    pub time: Option<std::time::Duration>,
}

impl StepLimit {
    /// What a node's participant uses: [`STEP_ENTRIES`] and [`STEP_TIME`].
    pub const SERVING: StepLimit = StepLimit {
        entries: STEP_ENTRIES,
        time: Some(STEP_TIME),
    };

    /// At most `entries` entries and, when `millis` is not 0, no more once it has run
    /// that many milliseconds (a node's `clearing_step_entries`, `clearing_step_millis`).
    #[must_use]
    pub fn new(entries: u32, millis: u64) -> Self {
        Self {
            entries: entries.max(1),
            time: (millis > 0).then(|| std::time::Duration::from_millis(millis)),
        }
    }

    /// At most `entries`, however long they take (tests, tools).
    #[must_use]
    pub fn entries(entries: u32) -> Self {
        Self {
            entries: entries.max(1),
            time: None,
        }
    }

    /// Whether a step that started at `started` and has done `done` entries stops.
    fn spent(&self, started: std::time::Instant, done: usize) -> bool {
        done >= self.entries as usize
            || self
                .time
                .is_some_and(|t| done > 0 && started.elapsed() >= t)
    }
}

/// Where a freeze has got to in the index of uncleared entries (period, then key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FreezeCursor {
    period: String,
    entry_id: String,
    side: String,
}

/// What a step of a freeze did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FreezeStep {
    /// Run the next step from here (None: from the start).
    Continue(Option<FreezeCursor>),
    /// The round is frozen (or past freezing, or was never to be frozen here).
    Done,
}

/// One writer job of freezing `round_id` on its first report: every uncleared record of
/// `period` or earlier that is not frozen elsewhere or excluded from this round. Run it
/// until [`FreezeStep::Done`], each time with the cursor the last step returned; steps
/// of concurrent callers (a repeated report) interleave safely, since each re-reads the
/// round and only ever freezes unfrozen entries. In order:
/// 1. a live round left over from an abort the node never heard of is released (the
///    coordinator runs one round at a time), and entries still held by a released or
///    cleared round are let go (see [`tidy_step`]), a step at a time;
/// 2. the round is recorded as `freezing` (refused by exclusions and confirmations
///    until frozen);
/// 3. the entries are frozen [`STEP_ENTRIES`] at a time, then the round is `frozen`.
pub fn freeze_step(
    conn: &Connection,
    round_id: &str,
    period: &str,
    now: &str,
    cursor: Option<FreezeCursor>,
) -> Result<FreezeStep> {
    freeze_scoped_step(conn, round_id, period, now, cursor, None)
}

/// [`freeze_step`] of a round of `scope`, with the node's own region `own`: only the
/// entries toward cities of its own province (`Scope::Province`) or of other provinces
/// (`Scope::National`) are frozen, and a live round left over is released only if it is
/// of the same scope (a provincial and a national round may be live together). `None`:
/// a provincial round that freezes every entry (a node alone in its province).
pub fn freeze_scoped_step(
    conn: &Connection,
    round_id: &str,
    period: &str,
    now: &str,
    cursor: Option<FreezeCursor>,
    scoped: Option<(Scope, &str)>,
) -> Result<FreezeStep> {
    freeze_limited_step(
        conn,
        round_id,
        period,
        now,
        cursor,
        scoped,
        StepLimit::entries(STEP_ENTRIES),
    )
}

/// [`freeze_scoped_step`] within `limit` (a step also stops at its time bound, where
/// it got to: the cursor it returns is the last entry it froze).
pub fn freeze_limited_step(
    conn: &Connection,
    round_id: &str,
    period: &str,
    now: &str,
    cursor: Option<FreezeCursor>,
    scoped: Option<(Scope, &str)>,
    limit: StepLimit,
) -> Result<FreezeStep> {
    let started = std::time::Instant::now();
    let scope = scoped.map_or(Scope::Province, |(s, _)| s);
    let round = match get(conn, round_id)? {
        Some(r) if r.state != ParticipantState::Freezing => return Ok(FreezeStep::Done),
        Some(r) => r,
        None => {
            let stale: Vec<String> = conn
                .prepare_cached(
                    "SELECT round_id FROM clearing_rounds WHERE state IN (?1, ?2, ?3) AND scope = ?4",
                )?
                .query_map(
                    params![
                        ParticipantState::Freezing.as_str(),
                        ParticipantState::Frozen.as_str(),
                        ParticipantState::Confirmed.as_str(),
                        scope.as_str()
                    ],
                    |r| r.get(0),
                )?
                .collect::<rusqlite::Result<_>>()?;
            for r in stale {
                release(conn, &r)?;
            }
            let untidy: Option<String> = conn
                .prepare_cached(
                    "SELECT round_id FROM clearing_rounds WHERE state IN (?1, ?2) \
                     AND EXISTS (SELECT 1 FROM ledger WHERE ledger.round_id = clearing_rounds.round_id) LIMIT 1",
                )?
                .query_row(
                    params![
                        ParticipantState::Released.as_str(),
                        ParticipantState::Cleared.as_str()
                    ],
                    |r| r.get(0),
                )
                .optional()?;
            if let Some(r) = untidy {
                tidy_limited_step(conn, &r, limit)?;
                return Ok(FreezeStep::Continue(None));
            }
            conn.prepare_cached("INSERT INTO clearing_rounds (round_id, period, state, frozen_at, scope) VALUES (?1, ?2, ?4, ?3, ?5)")?
                .execute(params![round_id, period, now, ParticipantState::Freezing.as_str(), scope.as_str()])?;
            return Ok(FreezeStep::Continue(None));
        }
    };
    let (p, e, s) = cursor.map_or_else(
        || (String::new(), String::new(), String::new()),
        |c| (c.period, c.entry_id, c.side),
    );
    // The province boundary: the counterparty's first two digits against this node's.
    // With no scope given every entry is the round's (-1 matches no comparison).
    let (own_province, want_same) = match scoped {
        None => (String::new(), -1),
        Some((s, own)) => (
            own.get(..2).unwrap_or_default().to_owned(),
            i64::from(s == Scope::Province),
        ),
    };
    let keys: Vec<(String, String, String)> = conn
        .prepare_cached(
            "SELECT period, entry_id, side FROM ledger WHERE cleared_round IS NULL AND period <= ?1 \
             AND (period, entry_id, side) > (?2, ?3, ?4) \
             AND (?7 = -1 OR (substr(counterparty, 1, 2) = ?6) = ?7) \
             ORDER BY period, entry_id, side LIMIT ?5",
        )?
        .query_map(
            params![round.period, p, e, s, limit.entries, own_province, want_same],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?
        .collect::<rusqlite::Result<_>>()?;
    let mut freeze = conn.prepare_cached(
        "UPDATE ledger SET round_id = ?1 WHERE entry_id = ?2 AND side = ?3 AND round_id IS NULL \
         AND (excluded_round IS NULL OR excluded_round <> ?1)",
    )?;
    let mut done = 0;
    for (_, entry_id, side) in &keys {
        if limit.spent(started, done) {
            break;
        }
        freeze.execute(params![round_id, entry_id, side])?;
        done += 1;
    }
    let mut keys = keys;
    if done < keys.len() {
        // Stopped at its time bound: the next step goes on after the last one frozen.
        keys.truncate(done);
    } else if keys.len() < limit.entries as usize {
        conn.prepare_cached(
            "UPDATE clearing_rounds SET state = ?2 WHERE round_id = ?1 AND state = ?3",
        )?
        .execute(params![
            round_id,
            ParticipantState::Frozen.as_str(),
            ParticipantState::Freezing.as_str()
        ])?;
        return Ok(FreezeStep::Done);
    }
    Ok(FreezeStep::Continue(keys.into_iter().last().map(
        |(period, entry_id, side)| FreezeCursor {
            period,
            entry_id,
            side,
        },
    )))
}

/// Releases a round (abort): it is `released` at once — nothing can be confirmed or
/// cleared in it any more — and its entries are let go by [`tidy_step`]. A cleared
/// round is left as it is. Entries excluded from it keep the mark: it only ever kept
/// them out of this round, which is never frozen again (finding them would take a
/// scan of the whole ledger).
pub fn release(conn: &Connection, round_id: &str) -> Result<()> {
    conn.prepare_cached(
        "UPDATE clearing_rounds SET state = ?2 WHERE round_id = ?1 AND state <> ?3",
    )?
    .execute(params![
        round_id,
        ParticipantState::Released.as_str(),
        ParticipantState::Cleared.as_str()
    ])?;
    Ok(())
}

/// One writer job of letting go the entries a finished round still holds, at most
/// [`STEP_ENTRIES`]: a released round's become unfrozen, a cleared round's are marked
/// cleared by it. Returns how many; 0 when none are left (or the round is live). Until
/// then an entry held by a finished round is in no live round and counted as its
/// round's state says.
pub fn tidy_step(conn: &Connection, round_id: &str) -> Result<u64> {
    tidy_limited_step(conn, round_id, StepLimit::entries(STEP_ENTRIES))
}

/// [`tidy_step`] within `limit`.
pub fn tidy_limited_step(conn: &Connection, round_id: &str, limit: StepLimit) -> Result<u64> {
    let started = std::time::Instant::now();
    let sql = match get(conn, round_id)?.map(|r| r.state) {
        Some(ParticipantState::Cleared) => {
            "UPDATE ledger SET cleared_round = ?1, round_id = NULL \
             WHERE entry_id = ?2 AND side = ?3 AND round_id = ?1"
        }
        Some(ParticipantState::Released) => {
            "UPDATE ledger SET round_id = NULL WHERE entry_id = ?2 AND side = ?3 AND round_id = ?1"
        }
        _ => return Ok(0),
    };
    let keys: Vec<(String, String)> = conn
        .prepare_cached("SELECT entry_id, side FROM ledger WHERE round_id = ?1 LIMIT ?2")?
        .query_map(params![round_id, limit.entries], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let mut update = conn.prepare_cached(sql)?;
    let mut done = 0;
    for (entry_id, side) in &keys {
        if limit.spent(started, done) {
            break;
        }
        update.execute(params![round_id, entry_id, side])?;
        done += 1;
    }
    Ok(done as u64)
}

/// Counterparties with frozen records in a round.
pub fn counterparties(conn: &Connection, round_id: &str) -> Result<Vec<String>> {
    Ok(conn
        .prepare_cached(
            "SELECT DISTINCT counterparty FROM ledger WHERE round_id = ?1 ORDER BY counterparty",
        )?
        .query_map([round_id], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?)
}

/// One frozen record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frozen {
    pub entry_id: String,
    pub claim_id: String,
    pub kind: String,
    pub amount_fen: i64,
    pub period: String,
}

/// The frozen records of one side toward one counterparty, by id.
pub fn frozen(
    conn: &Connection,
    round_id: &str,
    counterparty: &str,
    side: Side,
) -> Result<Vec<Frozen>> {
    frozen_page(conn, round_id, counterparty, side, "", u32::MAX)
}

/// One page of [`frozen`]: records with an entry id after `after`, at most `limit`.
pub fn frozen_page(
    conn: &Connection,
    round_id: &str,
    counterparty: &str,
    side: Side,
    after: &str,
    limit: u32,
) -> Result<Vec<Frozen>> {
    Ok(conn
        .prepare_cached(
            "SELECT entry_id, claim_id, kind, amount_fen, period FROM ledger WHERE round_id = ?1 AND counterparty = ?2 AND side = ?3 \
             AND entry_id > ?4 ORDER BY entry_id LIMIT ?5",
        )?
        .query_map(params![round_id, counterparty, side.as_str(), after, limit], |r| {
            Ok(Frozen { entry_id: r.get(0)?, claim_id: r.get(1)?, kind: r.get(2)?, amount_fen: r.get(3)?, period: r.get(4)? })
        })?
        .collect::<rusqlite::Result<_>>()?)
}

/// Count, sum and digest of the frozen records of one side toward one counterparty.
pub fn position(
    conn: &Connection,
    round_id: &str,
    counterparty: &str,
    side: Side,
) -> Result<Position> {
    let mut p = Position::default();
    for f in frozen(conn, round_id, counterparty, side)? {
        p.count += 1;
        p.sum_fen += f.amount_fen;
        p.digest.add(&record_bytes(
            &f.entry_id,
            &f.kind,
            &f.claim_id,
            f.amount_fen,
        ));
        let k = p.kinds.entry(f.kind).or_default();
        k.0 += 1;
        k.1 += f.amount_fen;
    }
    Ok(p)
}

/// Σ receivable and Σ payable of the round's frozen records.
pub fn totals(conn: &Connection, round_id: &str) -> Result<(i64, i64)> {
    Ok(conn
        .prepare_cached(
            "SELECT COALESCE(SUM(CASE WHEN side = 'receivable' THEN amount_fen END), 0), \
             COALESCE(SUM(CASE WHEN side = 'payable' THEN amount_fen END), 0) FROM ledger WHERE round_id = ?1",
        )?
        .query_row([round_id], |r| Ok((r.get(0)?, r.get(1)?)))?)
}

/// Takes records out of the round; they stay uncleared for the next one.
pub fn exclude(
    conn: &Connection,
    round_id: &str,
    counterparty: &str,
    side: Side,
    entry_ids: &[String],
) -> Result<u64> {
    let mut n = 0;
    for id in entry_ids {
        n += conn
            .prepare_cached(
                "UPDATE ledger SET round_id = NULL, excluded_round = ?1 WHERE round_id = ?1 AND counterparty = ?2 AND side = ?3 AND entry_id = ?4",
            )?
            .execute(params![round_id, counterparty, side.as_str(), id])?;
    }
    Ok(n as u64)
}

/// The round's recorded state, checked to move to `next` (`ParticipantState::can_become`):
/// FAILED_PRECONDITION when it may not, NOT_FOUND when the round is unknown here.
fn check_move(conn: &Connection, round_id: &str, next: ParticipantState) -> Result<()> {
    let round = get(conn, round_id)?.ok_or_else(|| {
        Error::NotFound(format!(
            "round {round_id} has not collected positions at this node"
        ))
    })?;
    Ok(round.state.check_move(next, round_id)?)
}

/// Records a confirmation of the statement with `digest` (of a frozen round).
pub fn confirm(conn: &Connection, round_id: &str, digest: &str, by: &str) -> Result<()> {
    check_move(conn, round_id, ParticipantState::Confirmed)?;
    conn.prepare_cached("UPDATE clearing_rounds SET state = ?4, statement_digest = ?2, confirmed_by = ?3 WHERE round_id = ?1")?
        .execute(params![round_id, digest, by, ParticipantState::Confirmed.as_str()])?;
    Ok(())
}

/// The operator's confirmation of a statement digest (used on the next confirmation).
pub fn operator_confirm(conn: &Connection, round_id: &str, digest: &str) -> Result<()> {
    conn.prepare_cached("UPDATE clearing_rounds SET operator_digest = ?2 WHERE round_id = ?1")?
        .execute(params![round_id, digest])?;
    Ok(())
}

/// Marks a confirmed round cleared, at once; its entries are then marked cleared by
/// [`tidy_step`].
pub fn mark_cleared(conn: &Connection, round_id: &str, now: &str) -> Result<()> {
    check_move(conn, round_id, ParticipantState::Cleared)?;
    conn.prepare_cached(
        "UPDATE clearing_rounds SET state = ?3, cleared_at = ?2 WHERE round_id = ?1",
    )?
    .execute(params![round_id, now, ParticipantState::Cleared.as_str()])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ledger::{self, Entry};

    /// A migrated node store in memory with `n` entries toward 330200 in periods
    /// 2026-01..2026-03 (and three in 2026-04), alternating sides.
    fn ledger_of(n: usize) -> Connection {
        let mut conn = Connection::open_in_memory().unwrap();
        crate::store::migrations::migrate(&mut conn, crate::store::migrations::Schema::Node)
            .unwrap();
        let periods = ["2026-01", "2026-02", "2026-03"];
        for i in 0..n + 3 {
            let (period, side) = if i >= n {
                ("2026-04", Side::Receivable)
            } else {
                (
                    periods[i % 3],
                    if i % 2 == 0 {
                        Side::Receivable
                    } else {
                        Side::Payable
                    },
                )
            };
            let id = format!("e{i:06}");
            ledger::record(
                &conn,
                &Entry {
                    entry_id: &id,
                    side,
                    counterparty: "330200",
                    period,
                    kind: "claim",
                    claim_id: &id,
                    amount_fen: 100,
                },
                "2026-04-01T00:00:00Z",
            )
            .unwrap();
        }
        conn
    }

    fn count(conn: &Connection, sql: &str) -> u64 {
        conn.query_row(sql, [], |r| r.get(0)).unwrap()
    }

    /// Runs a freeze to its end; returns the steps it took.
    fn freeze(conn: &Connection, round: &str, period: &str) -> usize {
        let (mut cursor, mut steps) = (None, 0);
        loop {
            steps += 1;
            match freeze_step(conn, round, period, "now", cursor).unwrap() {
                FreezeStep::Continue(next) => cursor = next,
                FreezeStep::Done => return steps,
            }
        }
    }

    /// Two-level clearing: a provincial round freezes only the entries toward cities of
    /// the node's province, a national round only those toward other provinces, and
    /// the two are live side by side (neither releases the other as stale).
    #[test]
    fn provincial_and_national_rounds_split_the_ledger_at_the_province_boundary() {
        let conn = ledger_of(6);
        for (i, cp) in ["320500", "320100"].iter().enumerate() {
            let id = format!("x{i:06}");
            ledger::record(
                &conn,
                &Entry {
                    entry_id: &id,
                    side: Side::Receivable,
                    counterparty: cp,
                    period: "2026-02",
                    kind: "claim",
                    claim_id: &id,
                    amount_fen: 250,
                },
                "2026-04-01T00:00:00Z",
            )
            .unwrap();
        }
        let run = |round: &str, scope: Scope| {
            while let FreezeStep::Continue(_) = freeze_scoped_step(
                &conn,
                round,
                "2026-03",
                "now",
                None,
                Some((scope, "330100")),
            )
            .unwrap()
            {}
        };
        run("2026-03-n1", Scope::National);
        run("2026-03-r1", Scope::Province);
        assert_eq!(
            count(
                &conn,
                "SELECT COUNT(*) FROM ledger WHERE round_id = '2026-03-n1' AND counterparty LIKE '32%'"
            ),
            2
        );
        assert_eq!(
            count(
                &conn,
                "SELECT COUNT(*) FROM ledger WHERE round_id = '2026-03-n1'"
            ),
            2
        );
        assert_eq!(
            count(
                &conn,
                "SELECT COUNT(*) FROM ledger WHERE round_id = '2026-03-r1'"
            ),
            6
        );
        let n = get(&conn, "2026-03-n1").unwrap().unwrap();
        let r = get(&conn, "2026-03-r1").unwrap().unwrap();
        assert_eq!(
            (n.scope, n.state),
            (Scope::National, ParticipantState::Frozen)
        );
        assert_eq!(
            (r.scope, r.state),
            (Scope::Province, ParticipantState::Frozen)
        );
        assert_eq!(totals(&conn, "2026-03-n1").unwrap(), (500, 0));
    }

    /// A step stops at whichever of its bounds comes first: its entries (the key
    /// SELECT reads no more), or its time, after at least one entry; the next step goes
    /// on right after the last entry frozen or marked, and nothing is skipped. A
    /// node's steps are small by default (200 entries, 2 ms).
    #[test]
    fn a_step_stops_at_its_entry_bound_or_its_time_bound() {
        assert_eq!(StepLimit::SERVING, StepLimit::new(200, 2));
        assert_eq!(
            StepLimit::new(0, 0),
            StepLimit {
                entries: 1,
                time: None
            }
        );
        let n = 3 * STEP_ENTRIES as usize;
        let conn = ledger_of(n);
        let frozen = |c: &Connection| count(c, "SELECT COUNT(*) FROM ledger WHERE round_id = 'R1'");
        let step = |c: &Connection, cursor, limit| {
            freeze_limited_step(c, "R1", "2026-03", "now", cursor, None, limit).unwrap()
        };
        let no_time = StepLimit {
            entries: STEP_ENTRIES,
            time: Some(std::time::Duration::ZERO),
        };
        assert_eq!(
            step(&conn, None, StepLimit::SERVING),
            FreezeStep::Continue(None),
            "the round is recorded first"
        );
        let FreezeStep::Continue(Some(c)) = step(&conn, None, StepLimit::entries(STEP_ENTRIES))
        else {
            panic!("a full step continues");
        };
        assert_eq!(frozen(&conn), u64::from(STEP_ENTRIES), "its entry bound");
        let FreezeStep::Continue(Some(c)) = step(&conn, Some(c), no_time) else {
            panic!("a step stopped by time continues");
        };
        assert_eq!(
            frozen(&conn),
            u64::from(STEP_ENTRIES) + 1,
            "one entry, then its time"
        );
        // In key order: the whole of January (every third entry), then February's first.
        assert_eq!(
            (c.period.as_str(), c.entry_id.as_str()),
            ("2026-02", "e000001"),
            "the last one frozen"
        );
        let FreezeStep::Continue(Some(c)) = step(&conn, Some(c), StepLimit::new(7, 1_000)) else {
            panic!("a full step continues");
        };
        assert_eq!(frozen(&conn), u64::from(STEP_ENTRIES) + 8);
        let mut cursor = Some(c);
        while let FreezeStep::Continue(next) = step(&conn, cursor, StepLimit::SERVING) {
            cursor = next;
        }
        assert_eq!(frozen(&conn), n as u64, "nothing skipped");
        assert_eq!(get(&conn, "R1").unwrap().unwrap().state, "frozen");

        conn.execute("UPDATE clearing_rounds SET state = 'confirmed'", [])
            .unwrap();
        mark_cleared(&conn, "R1", "now").unwrap();
        assert_eq!(tidy_limited_step(&conn, "R1", no_time).unwrap(), 1);
        assert_eq!(
            tidy_limited_step(&conn, "R1", StepLimit::new(9, 1_000)).unwrap(),
            9
        );
        assert_eq!(
            tidy_limited_step(&conn, "R1", StepLimit::entries(STEP_ENTRIES)).unwrap(),
            u64::from(STEP_ENTRIES)
        );
        let mut marked = 10 + u64::from(STEP_ENTRIES);
        loop {
            let k = tidy_limited_step(&conn, "R1", StepLimit::SERVING).unwrap();
            assert!(k <= u64::from(STEP_ENTRIES), "{k}");
            if k == 0 {
                break;
            }
            marked += k;
        }
        assert_eq!(marked, n as u64);
        assert_eq!(frozen(&conn), 0);
    }

    /// A freeze runs in steps of at most STEP_ENTRIES entries, leaves the round
    /// `freezing` (refused by exclusions and confirmations) until the last, and freezes
    /// exactly the uncleared, unexcluded entries of its period or earlier.
    #[test]
    fn a_freeze_runs_in_bounded_steps_and_freezes_exactly_its_entries() {
        let n = 2 * STEP_ENTRIES as usize + STEP_ENTRIES as usize / 2;
        let conn = ledger_of(n);
        // One entry excluded from this round by an earlier dispute.
        conn.execute(
            "UPDATE ledger SET excluded_round = 'R1' WHERE entry_id = 'e000003'",
            [],
        )
        .unwrap();
        assert_eq!(
            freeze_step(&conn, "R1", "2026-03", "now", None).unwrap(),
            FreezeStep::Continue(None)
        );
        assert_eq!(get(&conn, "R1").unwrap().unwrap().state, "freezing");
        let FreezeStep::Continue(Some(c)) =
            freeze_step(&conn, "R1", "2026-03", "now", None).unwrap()
        else {
            panic!("a full step continues");
        };
        assert_eq!(
            count(&conn, "SELECT COUNT(*) FROM ledger WHERE round_id = 'R1'"),
            u64::from(STEP_ENTRIES) - 1,
            "one step: one chunk of keys, the excluded one skipped"
        );
        assert_eq!(get(&conn, "R1").unwrap().unwrap().state, "freezing");
        let mut cursor = Some(c);
        let mut steps = 2;
        loop {
            steps += 1;
            match freeze_step(&conn, "R1", "2026-03", "now", cursor).unwrap() {
                FreezeStep::Continue(next) => cursor = next,
                FreezeStep::Done => break,
            }
        }
        assert_eq!(steps, 4, "insert, then three chunks of keys");
        assert_eq!(get(&conn, "R1").unwrap().unwrap().state, "frozen");
        assert_eq!(records_of(&conn, "R1").unwrap(), n as u64 - 1);
        assert_eq!(
            count(&conn, "SELECT COUNT(*) FROM ledger WHERE round_id IS NULL"),
            4,
            "the excluded entry and April's three"
        );
        // A repeated report finds the round frozen: nothing more.
        assert_eq!(freeze(&conn, "R1", "2026-03"), 1);
        let p = position(&conn, "R1", "330200", Side::Receivable).unwrap();
        assert_eq!((p.count, p.sum_fen), (n as u64 / 2, 100 * (n as i64 / 2)));
    }

    /// Cleared at once, then its entries marked cleared in bounded steps; meanwhile
    /// they count as cleared and stay out of the next round, which freezes the rest.
    #[test]
    fn clearing_marks_the_round_at_once_and_its_entries_in_steps() {
        let n = STEP_ENTRIES as usize + 10;
        let conn = ledger_of(n);
        freeze(&conn, "R1", "2026-03");
        conn.execute("UPDATE clearing_rounds SET state = 'confirmed'", [])
            .unwrap();
        mark_cleared(&conn, "R1", "now").unwrap();
        assert_eq!(get(&conn, "R1").unwrap().unwrap().state, "cleared");
        let cleared = |c: &Connection| -> u64 {
            ["2026-01", "2026-02", "2026-03"]
                .iter()
                .map(|p| ledger::cleared_count(c, "330200", p).unwrap())
                .sum()
        };
        assert_eq!(
            cleared(&conn),
            n as u64,
            "cleared before any entry is marked"
        );
        assert_eq!(tidy_step(&conn, "R1").unwrap(), u64::from(STEP_ENTRIES));
        assert_eq!(cleared(&conn), n as u64, "and half-way");
        assert_eq!(records_of(&conn, "R1").unwrap(), n as u64);
        // The next round, before the first is tidied, lets it finish first.
        freeze(&conn, "R2", "2026-04");
        assert_eq!(tidy_step(&conn, "R1").unwrap(), 0);
        assert_eq!(
            count(
                &conn,
                "SELECT COUNT(*) FROM ledger WHERE cleared_round = 'R1' AND round_id IS NULL"
            ),
            n as u64
        );
        assert_eq!(records_of(&conn, "R2").unwrap(), 3, "April's three only");
    }

    /// A live round left behind is released when the next one freezes: its entries
    /// are let go in steps and frozen into the new round; so is one released on purpose.
    #[test]
    fn a_stale_round_is_released_and_its_entries_frozen_anew() {
        let n = STEP_ENTRIES as usize + 10;
        let conn = ledger_of(n);
        freeze(&conn, "R1", "2026-03");
        conn.execute(
            "UPDATE ledger SET round_id = NULL, excluded_round = 'R1' WHERE entry_id = 'e000000'",
            [],
        )
        .unwrap();
        let steps = freeze(&conn, "R2", "2026-04");
        assert!(steps > 3, "{steps} steps");
        assert_eq!(get(&conn, "R1").unwrap().unwrap().state, "released");
        assert_eq!(records_of(&conn, "R1").unwrap(), 0);
        assert_eq!(records_of(&conn, "R2").unwrap(), n as u64 + 3);
        release(&conn, "R2").unwrap();
        let mut released = 0;
        loop {
            let k = tidy_step(&conn, "R2").unwrap();
            assert!(k <= u64::from(STEP_ENTRIES));
            if k == 0 {
                break;
            }
            released += k;
        }
        assert_eq!(released, n as u64 + 3);
        assert_eq!(
            count(
                &conn,
                "SELECT COUNT(*) FROM ledger WHERE round_id IS NOT NULL"
            ),
            0
        );
    }

    /// A released round is never confirmed nor cleared, and a cleared one never
    /// released: the store refuses moves `ParticipantState` does not list, and the
    /// round stays as it was.
    #[test]
    fn moves_outside_the_state_machine_are_refused() {
        let conn = ledger_of(3);
        freeze(&conn, "R1", "2026-03");
        release(&conn, "R1").unwrap();
        let e = confirm(&conn, "R1", "d", "auto").unwrap_err();
        assert!(
            matches!(&e, crate::Error::FailedPrecondition(m) if m == "round R1 is released here; it cannot become confirmed"),
            "{e:?}"
        );
        let e = mark_cleared(&conn, "R1", "now").unwrap_err();
        assert!(matches!(e, crate::Error::FailedPrecondition(_)), "{e:?}");
        let r = get(&conn, "R1").unwrap().unwrap();
        assert_eq!(
            (
                r.state,
                r.statement_digest.as_str(),
                r.confirmed_by.as_str()
            ),
            (ParticipantState::Released, "", "")
        );
        freeze(&conn, "R2", "2026-03");
        confirm(&conn, "R2", "d", "auto").unwrap();
        mark_cleared(&conn, "R2", "now").unwrap();
        release(&conn, "R2").unwrap();
        assert_eq!(
            get(&conn, "R2").unwrap().unwrap().state,
            ParticipantState::Cleared
        );
        assert!(matches!(
            confirm(&conn, "R9", "d", "auto").unwrap_err(),
            crate::Error::NotFound(_)
        ));
    }

    /// The counterparty's answer for entry `id`: the same record with `amount_fen`.
    fn answered(conn: &Connection, id: &str, amount_fen: i64) -> bool {
        let side = side_of(conn, id);
        let period: String = conn
            .query_row("SELECT period FROM ledger WHERE entry_id = ?1", [id], |r| {
                r.get(0)
            })
            .unwrap();
        ledger::record_confirmed(
            conn,
            &Entry {
                entry_id: id,
                side,
                counterparty: "330200",
                period: &period,
                kind: "claim",
                claim_id: id,
                amount_fen,
            },
            "now",
        )
        .unwrap()
    }

    fn side_of(conn: &Connection, id: &str) -> Side {
        let side: String = conn
            .query_row("SELECT side FROM ledger WHERE entry_id = ?1", [id], |r| {
                r.get(0)
            })
            .unwrap();
        if side == "receivable" {
            Side::Receivable
        } else {
            Side::Payable
        }
    }

    /// A round marked cleared keeps its entries' `round_id` (and `cleared_round` NULL)
    /// until `tidy_step` reaches them: they are cleared all the same, and a late answer
    /// of the counterparty neither corrects nor takes them back; nor one of a confirmed
    /// round. An entry of a round still frozen is corrected, and the change is counted
    /// for the confirmation verified from a read.
    #[test]
    fn entries_of_a_cleared_or_confirmed_round_are_never_changed() {
        let conn = ledger_of(6);
        freeze(&conn, "R1", "2026-03");
        let sums = |conn: &Connection| {
            count(conn, "SELECT COUNT(*) FROM ledger")
                + 1_000_000 * count(conn, "SELECT SUM(amount_fen) FROM ledger")
        };
        // Frozen: corrected and taken back, each counted.
        let before = ledger::changes();
        assert!(answered(&conn, "e000000", 150));
        assert!(ledger::withdraw(&conn, "e000001", side_of(&conn, "e000001")).unwrap());
        assert!(ledger::changes() >= before + 2);
        let frozen = sums(&conn);
        assert_eq!(frozen, 8 + 1_000_000 * (7 * 100 + 150));

        // Confirmed: nothing changes, nothing counted from this store.
        confirm(&conn, "R1", "d", "auto").unwrap();
        assert!(!answered(&conn, "e000002", 1));
        assert!(!ledger::withdraw(&conn, "e000003", side_of(&conn, "e000003")).unwrap());
        assert_eq!(sums(&conn), frozen);

        // Cleared, before any tidy step: still its entries, unchanged.
        mark_cleared(&conn, "R1", "now").unwrap();
        assert_eq!(
            count(
                &conn,
                "SELECT COUNT(*) FROM ledger WHERE round_id = 'R1' AND cleared_round IS NULL"
            ),
            5
        );
        assert!(!answered(&conn, "e000002", 1));
        assert!(!ledger::withdraw(&conn, "e000004", side_of(&conn, "e000004")).unwrap());
        assert_eq!(sums(&conn), frozen);
        assert_eq!(
            conn.query_row(
                "SELECT amount_fen FROM ledger WHERE entry_id = 'e000002'",
                [],
                |r| r.get::<_, i64>(0)
            )
            .unwrap(),
            100
        );
        // April's entries are in no round: still answered.
        assert!(answered(&conn, "e000007", 120));
    }
}
