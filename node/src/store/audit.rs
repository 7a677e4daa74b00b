//! The audit log of peers' reads of this node's person data and of the claims they
//! committed or reversed here. Append-only (the schema's triggers refuse UPDATE and
//! DELETE); an entry of a commit is written in the commit's own transaction, so the
//! log never lacks a claim that exists nor holds one that does not.

use rusqlite::{Connection, params};
use yidi_common::{idnum, period, proto};

use crate::{Error, Result, store::Store};

/// What a peer did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    LookupPerson,
    CheckEligibility,
    CommitClaim,
    ReverseClaim,
}

impl Action {
    /// The name stored and shown (the PeerService method).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Action::LookupPerson => "LookupPerson",
            Action::CheckEligibility => "CheckEligibility",
            Action::CommitClaim => "CommitClaim",
            Action::ReverseClaim => "ReverseClaim",
        }
    }

    /// Parses a stored or requested name.
    pub fn parse(s: &str, field: &str) -> Result<Self> {
        match s {
            "LookupPerson" => Ok(Action::LookupPerson),
            "CheckEligibility" => Ok(Action::CheckEligibility),
            "CommitClaim" => Ok(Action::CommitClaim),
            "ReverseClaim" => Ok(Action::ReverseClaim),
            other => Err(Error::invalid(
                field,
                format!(
                    "unknown action {other:?}: expected LookupPerson, CheckEligibility, CommitClaim or ReverseClaim"
                ),
            )),
        }
    }
}

/// One entry to append.
#[derive(Debug, Clone)]
pub struct Entry {
    pub peer_region: String,
    pub peer_serial: String,
    pub action: Action,
    pub id_number: String,
    pub person_hash: String,
    pub reference: String,
    pub institution_code: String,
    pub outcome: String,
    pub detail: String,
}

/// Caps a peer-supplied field: the log keeps evidence, not whatever bulk a caller sends.
fn cap(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

impl Entry {
    /// An entry about `id_number` (its lookup hash is derived here), outcome `ok`.
    #[must_use]
    pub fn about(
        peer_region: String,
        peer_serial: &str,
        action: Action,
        id_number: &str,
        reference: &str,
        institution_code: &str,
    ) -> Self {
        Self {
            peer_region: cap(&peer_region, 16),
            peer_serial: cap(peer_serial, 64),
            action,
            id_number: String::new(),
            person_hash: String::new(),
            reference: cap(reference, 64),
            institution_code: cap(institution_code, 32),
            outcome: "ok".to_owned(),
            detail: String::new(),
        }
        .person(id_number)
    }

    /// Names the person (and derives the lookup hash).
    #[must_use]
    pub fn person(mut self, id_number: &str) -> Self {
        self.id_number = cap(id_number, 32);
        self.person_hash = if id_number.is_empty() {
            String::new()
        } else {
            idnum::lookup_hash(id_number)
        };
        self
    }

    /// Names the person by lookup hash only (a look-up that found no one).
    #[must_use]
    pub fn person_hash(mut self, hash: &str) -> Self {
        self.person_hash = cap(&hash.to_ascii_lowercase(), 64);
        self
    }

    /// The outcome of a call that was answered without the data asked for.
    #[must_use]
    pub fn outcome(mut self, outcome: &str) -> Self {
        self.outcome = outcome.to_owned();
        self
    }

    /// The same entry with the outcome of a refused call.
    #[must_use]
    pub fn refused(mut self, status: &tonic::Status) -> Self {
        self.outcome = code_name(status.code()).to_owned();
        self.detail = cap(status.message(), 500);
        self
    }
}

/// The canonical gRPC name of a code (`NOT_FOUND`, …).
#[must_use]
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code as C;
    match code {
        C::Ok => "OK",
        C::Cancelled => "CANCELLED",
        C::Unknown => "UNKNOWN",
        C::InvalidArgument => "INVALID_ARGUMENT",
        C::DeadlineExceeded => "DEADLINE_EXCEEDED",
        C::NotFound => "NOT_FOUND",
        C::AlreadyExists => "ALREADY_EXISTS",
        C::PermissionDenied => "PERMISSION_DENIED",
        C::ResourceExhausted => "RESOURCE_EXHAUSTED",
        C::FailedPrecondition => "FAILED_PRECONDITION",
        C::Aborted => "ABORTED",
        C::OutOfRange => "OUT_OF_RANGE",
        C::Unimplemented => "UNIMPLEMENTED",
        C::Internal => "INTERNAL",
        C::Unavailable => "UNAVAILABLE",
        C::DataLoss => "DATA_LOSS",
        C::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Appends `e` in the caller's transaction.
pub fn record(conn: &Connection, e: &Entry) -> Result<()> {
    let now = chrono::Utc::now();
    conn.prepare_cached(
        "INSERT INTO audit_log (at, at_ms, peer_region, peer_serial, action, id_number, person_hash, reference, institution_code, outcome, detail)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )?
    .execute(params![
        period::now_rfc3339(),
        now.timestamp_millis(),
        e.peer_region,
        e.peer_serial,
        e.action.as_str(),
        e.id_number,
        e.person_hash,
        e.reference,
        e.institution_code,
        e.outcome,
        e.detail,
    ])?;
    Ok(())
}

/// Queues `e` on the writer without waiting for its commit: a peer's read is answered
/// at once, its entry lands in the writer's next group commit (queued before the answer
/// leaves). A failure is logged loudly: the log must not silently lose reads.
pub fn record_detached(store: &Store, e: Entry) {
    let store = store.clone();
    let action = e.action.as_str();
    // Past the write queue's bound: the read was answered, its entry must not be lost
    // to a full queue.
    let pending = store.submit_unbounded(move |conn| record(conn, &e));
    tokio::spawn(async move {
        match pending.await {
            Ok(()) => {}
            Err(err) => tracing::error!(error = %err, action, "audit log entry not written"),
        }
    });
}

/// Filters of a listing.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    pub peer_region: Option<String>,
    /// An ID number or its lookup hash.
    pub person: Option<String>,
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
    pub action: Option<Action>,
}

/// Entries matching `filter`, newest first, with `seq` below `before` (0: from the
/// newest).
pub fn list(
    conn: &Connection,
    filter: &Filter,
    before: i64,
    limit: u32,
) -> Result<Vec<proto::AuditEntry>> {
    let before = if before <= 0 { i64::MAX } else { before };
    // Only the filters given go into the statement, so that SQLite can walk the index
    // that serves them — the person's `(person_hash, seq)`, the peer's `(peer_region,
    // seq)` — instead of the whole log ("?n IS NULL OR …" defeats every index). An entry
    // about an ID number always carries the number's lookup hash too, so a person is
    // found by hash whether the filter gives the number or the hash.
    let mut sql = String::from(
        "SELECT seq, at, peer_region, peer_serial, action, id_number, person_hash, reference, institution_code, outcome, detail
         FROM audit_log WHERE seq < ?1",
    );
    let mut args: Vec<rusqlite::types::Value> = vec![before.into()];
    let mut arg = |sql: &mut String, clause: &str, v: rusqlite::types::Value| {
        args.push(v);
        sql.push_str(&clause.replace('?', &format!("?{}", args.len())));
    };
    if let Some(peer) = &filter.peer_region {
        arg(&mut sql, " AND peer_region = ?", peer.clone().into());
    }
    if let Some(person) = &filter.person {
        arg(
            &mut sql,
            " AND person_hash IN (?",
            person.to_ascii_lowercase().into(),
        );
        arg(&mut sql, ", ?)", idnum::lookup_hash(person).into());
    }
    if let Some(from) = filter.from_ms {
        arg(&mut sql, " AND at_ms >= ?", from.into());
    }
    if let Some(to) = filter.to_ms {
        arg(&mut sql, " AND at_ms < ?", to.into());
    }
    if let Some(action) = filter.action {
        arg(
            &mut sql,
            " AND action = ?",
            action.as_str().to_owned().into(),
        );
    }
    arg(
        &mut sql,
        " ORDER BY seq DESC LIMIT ?",
        i64::from(limit).into(),
    );
    let rows = conn
        .prepare_cached(&sql)?
        .query_map(rusqlite::params_from_iter(args), |r| {
            Ok(proto::AuditEntry {
                seq: r.get::<_, i64>(0)?.try_into().unwrap_or_default(),
                at: r.get(1)?,
                peer_region: r.get(2)?,
                peer_serial: r.get(3)?,
                action: r.get(4)?,
                id_number: r.get(5)?,
                person_hash: r.get(6)?,
                reference: r.get(7)?,
                institution_code: r.get(8)?,
                outcome: r.get(9)?,
                detail: r.get(10)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_is_append_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let conn = {
            let path = dir.path().join("t.db");
            let mut c = Connection::open(path).expect("open");
            crate::store::migrations::migrate(&mut c, crate::store::migrations::Schema::Node)
                .expect("migrate");
            c
        };
        let e = Entry::about(
            "330200".into(),
            "ab12",
            Action::CommitClaim,
            "330106199001011234",
            "33020026C000001",
            "H33020001",
        );
        record(&conn, &e).expect("append");
        let got = list(&conn, &Filter::default(), 0, 10).expect("list");
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].person_hash, idnum::lookup_hash("330106199001011234"));
        let by_hash = Filter {
            person: Some(got[0].person_hash.clone()),
            ..Filter::default()
        };
        assert_eq!(list(&conn, &by_hash, 0, 10).expect("by hash").len(), 1);
        let by_number = Filter {
            person: Some("330106199001011234".into()),
            ..Filter::default()
        };
        assert_eq!(list(&conn, &by_number, 0, 10).expect("by number").len(), 1);
        let other = Filter {
            person: Some("330106199001011242".into()),
            ..Filter::default()
        };
        assert!(list(&conn, &other, 0, 10).expect("other").is_empty());
        // A person's entries come from the hash index, not from a walk of the log.
        let plan: Vec<String> = conn
            .prepare(
                "EXPLAIN QUERY PLAN SELECT seq FROM audit_log WHERE seq < ?1 \
                 AND person_hash IN (?2, ?3) ORDER BY seq DESC LIMIT ?4",
            )
            .expect("plan")
            .query_map(params![i64::MAX, "a", "b", 10], |r| r.get::<_, String>(3))
            .expect("plan rows")
            .collect::<rusqlite::Result<_>>()
            .expect("plan text");
        assert!(plan.iter().any(|p| p.contains("audit_by_hash")), "{plan:?}");
        let upd = conn.execute("UPDATE audit_log SET outcome = 'x'", []);
        assert!(upd.is_err(), "update refused");
        let del = conn.execute("DELETE FROM audit_log", []);
        assert!(del.is_err(), "delete refused");
        assert_eq!(
            list(&conn, &Filter::default(), 0, 10).expect("list").len(),
            1
        );
    }
}
