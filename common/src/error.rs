//! The one error type of `yidi-common`. Validation errors name the field so that a
//! hospital's integrator or an operator can fix the input without reading code.

use std::fmt;

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in shared, pure code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A field of the input is malformed or out of range.
    #[error("invalid {field}: {reason}")]
    Invalid { field: String, reason: String },
    /// The input is well-formed but the rules forbid the operation.
    #[error("{0}")]
    Precondition(String),
}

impl Error {
    /// An invalid-field error; `field` is the name a client sees on the wire.
    pub fn invalid(field: impl fmt::Display, reason: impl fmt::Display) -> Self {
        Error::Invalid {
            field: field.to_string(),
            reason: reason.to_string(),
        }
    }

    /// The same error with its field name prefixed, e.g. `lines[3].` + `amount`.
    #[must_use]
    pub fn in_field(self, prefix: impl fmt::Display) -> Self {
        match self {
            Error::Invalid { field, reason } => Error::Invalid {
                field: format!("{prefix}{field}"),
                reason,
            },
            other => other,
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        match e {
            Error::Invalid { .. } => tonic::Status::invalid_argument(e.to_string()),
            Error::Precondition(_) => tonic::Status::failed_precondition(e.to_string()),
        }
    }
}
