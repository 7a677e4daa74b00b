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

/// How many characters of a rejected value an error message quotes.
pub const QUOTE_CHARS: usize = 32;

/// A rejected value as an error message quotes it: in full (as a Rust string literal,
/// control characters escaped) when it is at most [`QUOTE_CHARS`] characters, otherwise
/// its first [`QUOTE_CHARS`] characters then `…(N bytes)`. Errors travel in gRPC
/// trailers, which clients cap (a few KiB by default): a message echoing a megabyte
/// reaches the caller as RESOURCE_EXHAUSTED instead of naming the field.
#[must_use]
pub fn quoted(value: &str) -> String {
    match value.char_indices().nth(QUOTE_CHARS) {
        None => format!("{value:?}"),
        Some((cut, _)) => format!("{:?}…({} bytes)", &value[..cut], value.len()),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_keeps_short_values_and_cuts_long_ones() {
        assert_eq!(quoted(""), r#""""#);
        assert_eq!(quoted("H33010001"), r#""H33010001""#);
        let exactly = "x".repeat(QUOTE_CHARS);
        assert_eq!(quoted(&exactly), format!("{exactly:?}"));
        let long = "9".repeat(1 << 20);
        assert_eq!(
            quoted(&long),
            format!("{:?}…(1048576 bytes)", "9".repeat(QUOTE_CHARS))
        );
        // Cut at a character, never inside one; the size is in bytes.
        let han = "医".repeat(40);
        assert_eq!(quoted(&han), format!("{:?}…(120 bytes)", "医".repeat(32)));
        assert_eq!(quoted("a\nb"), r#""a\nb""#);
    }
}
