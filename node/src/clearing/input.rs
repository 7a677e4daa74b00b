//! Fields of ClearingParticipant requests that a node's participant (service/clearing.rs)
//! and a province's (coordinator/national.rs) check alike: the round id and the side of
//! a ledger. Pure parsing, so that both refuse the same input with the same message.

use crate::{Error, Result, store::ledger::Side};

/// A round id as the coordinators issue them: 1–64 characters of A-Z a-z 0-9 . _ : -.
pub fn round_id(s: &str) -> Result<String> {
    if s.is_empty()
        || s.len() > 64
        || !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
    {
        return Err(Error::invalid(
            "round_id",
            "must be 1–64 characters of A-Z a-z 0-9 . _ : -",
        ));
    }
    Ok(s.to_owned())
}

/// `receivable` or `payable`.
pub fn side(s: &str) -> Result<Side> {
    match s {
        "receivable" => Ok(Side::Receivable),
        "payable" => Ok(Side::Payable),
        other => Err(Error::invalid(
            "side",
            format!("expected receivable or payable, got {other:?}"),
        )),
    }
}
