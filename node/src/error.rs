//! The one error type of the node, and its mapping to gRPC statuses. Messages are
//! written for the integrator or operator who receives them: they name the field, the
//! record, or what to do next.

use tonic::Status;

/// Result alias for the node.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything a node request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Malformed input; the message names the field.
    #[error("invalid {field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    /// Well-formed, but the current state forbids it.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A concurrent change won; retrying may succeed.
    #[error("{0}")]
    Aborted(String),
    /// A dependency (peer, store) is unavailable; retry later.
    #[error("{0}")]
    Unavailable(String),
    /// The node is overloaded (its store's write queue stayed full); nothing was done
    /// and the same request may be repeated after a short pause.
    #[error("{0}")]
    ResourceExhausted(String),
    /// Refused at the node's door (`crate::admission`): nothing was read or written for
    /// it; a retry after `retry_after_ms` has a fair chance. RESOURCE_EXHAUSTED with the
    /// hint in the `retry-after-ms` metadata.
    #[error("{message}")]
    AtCapacity {
        message: String,
        retry_after_ms: u64,
    },
    /// The store's COMMIT failed after the request ran: what it wrote may or may not
    /// have been saved (the log may hold the whole commit, which recovery brings back).
    /// Unlike [`Error::Unavailable`], never "nothing was written"; a repeat with the
    /// same request id finds out.
    #[error("{0}")]
    CommitUnknown(String),
    #[error("{0}")]
    PermissionDenied(String),
    /// About a record of a period archived at this node (frozen, or removed from the
    /// live store): FAILED_PRECONDITION with the period in the [`ARCHIVED`] metadata,
    /// on which a treatment node's outbox parks the item instead of retrying it.
    #[error("{message}")]
    Archived { period: String, message: String },
    /// A bug or a broken store; logged with detail, reported without it.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Metadata on an answer refused because it concerns a record of an archived period:
/// the period (`YYYY-MM`).
pub const ARCHIVED: &str = "yidi-archived";

impl Error {
    /// An invalid-field error.
    pub fn invalid(field: impl std::fmt::Display, reason: impl std::fmt::Display) -> Self {
        Error::Invalid {
            field: field.to_string(),
            reason: reason.to_string(),
        }
    }
}

impl From<yidi_common::Error> for Error {
    fn from(e: yidi_common::Error) -> Self {
        match e {
            yidi_common::Error::Invalid { field, reason } => Error::Invalid { field, reason },
            yidi_common::Error::Precondition(m) => Error::FailedPrecondition(m),
        }
    }
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        // A full disk or a failing one: nothing was written, and a retry once the
        // operator has made room may succeed — not a bug.
        if let rusqlite::Error::SqliteFailure(f, _) = &e
            && matches!(
                f.code,
                rusqlite::ErrorCode::DiskFull | rusqlite::ErrorCode::SystemIoFailure
            )
        {
            return Error::Unavailable(format!("store: {e}"));
        }
        Error::Internal(format!("store: {e}"))
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        let msg = e.to_string();
        match e {
            Error::Invalid { .. } => Status::invalid_argument(msg),
            Error::NotFound(_) => Status::not_found(msg),
            Error::AlreadyExists(_) => Status::already_exists(msg),
            Error::FailedPrecondition(_) => Status::failed_precondition(msg),
            Error::Aborted(_) => Status::aborted(msg),
            Error::Unavailable(_) | Error::CommitUnknown(_) => Status::unavailable(msg),
            Error::ResourceExhausted(_) => Status::resource_exhausted(msg),
            Error::AtCapacity { retry_after_ms, .. } => {
                let mut s = Status::resource_exhausted(msg);
                s.metadata_mut().insert(
                    crate::admission::RETRY_AFTER_MS,
                    tonic::metadata::MetadataValue::from(retry_after_ms),
                );
                s
            }
            Error::PermissionDenied(_) => Status::permission_denied(msg),
            Error::Archived { period, .. } => {
                let mut s = Status::failed_precondition(msg);
                if let Ok(v) = tonic::metadata::MetadataValue::try_from(period.as_str()) {
                    s.metadata_mut().insert(ARCHIVED, v);
                }
                s
            }
            Error::Internal(_) => internal_status(&msg),
        }
    }
}

/// The answer to a caller for an internal error: the detail (store messages, file
/// paths, SQL) stays in the operator's log under a fresh reference, and the caller gets
/// only that reference to quote when reporting it.
fn internal_status(detail: &str) -> Status {
    let reference = new_reference();
    tracing::error!(%reference, error = %detail, "internal error");
    Status::internal(format!(
        "internal error (ref {reference}); the operator's log has the detail under this reference"
    ))
}

/// A short random reference: 12 hex digits (48 bits) tell one incident from another in
/// a log without being a secret.
fn new_reference() -> String {
    let id = uuid::Uuid::new_v4();
    hex::encode(&id.as_bytes()[..6])
}
