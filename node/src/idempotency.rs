//! Exactly-once handling of state-changing requests. A client-chosen request id is
//! claimed in the same SQLite transaction as the request's effect, together with a hash
//! of the payload and the encoded answer: the same id with the same payload replays the
//! original answer, the same id with another payload is refused, and a request that
//! failed leaves no claim behind (its savepoint rolled back). Settle and CommitClaim
//! store their answer without its split, which their settlement or claim record holds
//! (`records::replay_settle`, `home::commit_once`): a split is stored once per node.

use prost::Message;
use rusqlite::{Connection, OptionalExtension, params};
use yidi_common::{digest::sha256_hex, period};

use crate::{Error, Result};

/// Checks the shape of a request id: 1–64 characters of `[A-Za-z0-9._:-]`.
pub fn validate_request_id(id: &str) -> Result<()> {
    if id.is_empty() {
        return Err(Error::invalid(
            "request_id",
            "missing: every state-changing request needs a client-chosen id",
        ));
    }
    if id.len() > 64
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
    {
        return Err(Error::invalid(
            "request_id",
            "must be 1–64 characters of A-Z a-z 0-9 . _ : -",
        ));
    }
    Ok(())
}

/// Hash of a request's payload without its request id, so that a retry with the same
/// content matches whatever id it carries.
/// The id is taken out for the encoding and put back, rather than the request cloned
/// without it: a claim or fee upload is kilobytes of nested messages, and every write
/// request is hashed.
pub fn payload_hash<M: Message>(msg: &mut M, request_id: impl Fn(&mut M) -> &mut String) -> String {
    let id = std::mem::take(request_id(msg));
    let hash = sha256_hex(&msg.encode_to_vec());
    *request_id(msg) = id;
    hash
}

/// Identity of one request for idempotency.
#[derive(Debug, Clone)]
pub struct RequestKey {
    pub scope: String,
    pub request_id: String,
    pub method: &'static str,
    pub payload_hash: String,
}

impl RequestKey {
    /// Builds a key after validating the id.
    pub fn new(
        scope: &str,
        request_id: &str,
        method: &'static str,
        payload_hash: String,
    ) -> Result<Self> {
        validate_request_id(request_id)?;
        Ok(Self {
            scope: scope.to_owned(),
            request_id: request_id.to_owned(),
            method,
            payload_hash,
        })
    }
}

/// The stored answer for `key`, if this request was already answered; ALREADY_EXISTS if
/// the id was used for another payload (or was reversed by 冲正 before it arrived).
pub fn replay<R: Message + Default>(conn: &Connection, key: &RequestKey) -> Result<Option<R>> {
    let prior: Option<(String, String, Vec<u8>)> = conn
        .prepare_cached("SELECT method, payload_hash, response FROM requests WHERE scope = ?1 AND request_id = ?2")?
        .query_row(params![key.scope, key.request_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?;
    let Some((method, hash, response)) = prior else {
        return Ok(None);
    };
    if method == REVERSED {
        return Err(Error::AlreadyExists(format!(
            "request_id {} was reversed (冲正) before it took effect; use a new request id",
            yidi_common::error::quoted(&key.request_id)
        )));
    }
    if method == key.method && hash == key.payload_hash {
        return R::decode(response.as_slice()).map(Some).map_err(|e| {
            Error::Internal(format!(
                "stored answer of request {} is unreadable: {e}",
                yidi_common::error::quoted(&key.request_id)
            ))
        });
    }
    Err(Error::AlreadyExists(format!(
        "request_id {} was already used by an earlier {method} request with a different payload; \
         nothing was changed — use a new request id for a new request",
        yidi_common::error::quoted(&key.request_id)
    )))
}

/// Claims `key` with its answer, in the caller's transaction.
pub fn store<R: Message>(conn: &Connection, key: &RequestKey, answer: &R) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO requests (scope, request_id, method, payload_hash, response, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![key.scope, key.request_id, key.method, key.payload_hash, answer.encode_to_vec(), period::now_rfc3339()])?;
    Ok(())
}

/// Method name recorded for a request id that 冲正 reversed before it arrived.
pub const REVERSED: &str = "Reversed";

/// The method a request id of `scope` was used for, if any.
pub fn method_of(conn: &Connection, scope: &str, request_id: &str) -> Result<Option<String>> {
    Ok(conn
        .prepare_cached("SELECT method FROM requests WHERE scope = ?1 AND request_id = ?2")?
        .query_row(params![scope, request_id], |r| r.get(0))
        .optional()?)
}

/// The answer stored for a request id of `scope` used for `method`, if any (whatever
/// its payload).
pub fn stored<R: Message + Default>(
    conn: &Connection,
    scope: &str,
    request_id: &str,
    method: &str,
) -> Result<Option<R>> {
    let response: Option<Vec<u8>> = conn
        .prepare_cached(
            "SELECT response FROM requests WHERE scope = ?1 AND request_id = ?2 AND method = ?3",
        )?
        .query_row(params![scope, request_id, method], |r| r.get(0))
        .optional()?;
    response
        .map(|b| {
            R::decode(b.as_slice()).map_err(|e| {
                Error::Internal(format!(
                    "stored answer of request {} is unreadable: {e}",
                    yidi_common::error::quoted(request_id)
                ))
            })
        })
        .transpose()
}

/// Runs `effect` exactly once for `key` inside the caller's transaction: replays the
/// stored answer for a repeat, refuses a reused id with another payload, otherwise runs
/// the effect and stores its answer.
pub fn once<R, F>(conn: &Connection, key: &RequestKey, effect: F) -> Result<R>
where
    R: Message + Default,
    F: FnOnce(&Connection) -> Result<R>,
{
    if let Some(answer) = replay(conn, key)? {
        return Ok(answer);
    }
    let answer = effect(conn)?;
    store(conn, key, &answer)?;
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use yidi_common::proto;

    /// The hash ignores the request id and leaves it in place, and is the hash of the
    /// request encoded without its id — the value stored by every earlier version, so a
    /// repeat across an upgrade still matches its record.
    #[test]
    fn the_payload_hash_leaves_out_the_request_id_only() {
        let mut req = proto::SettleRequest {
            request_id: "desk-7".into(),
            institution_code: "H33020001".into(),
            visit_id: "330200-V-00000001".into(),
            use_account: true,
        };
        let hash = payload_hash(&mut req, |r| &mut r.request_id);
        assert_eq!(req.request_id, "desk-7");
        let without_id = proto::SettleRequest {
            request_id: String::new(),
            ..req.clone()
        };
        assert_eq!(hash, sha256_hex(&without_id.encode_to_vec()));
        let mut retry = proto::SettleRequest {
            request_id: "desk-8".into(),
            ..req.clone()
        };
        assert_eq!(payload_hash(&mut retry, |r| &mut r.request_id), hash);
        let mut other = proto::SettleRequest {
            use_account: false,
            ..req
        };
        assert_ne!(payload_hash(&mut other, |r| &mut r.request_id), hash);
    }
}
