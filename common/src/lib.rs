//! yidi-common: everything every party of the federation must agree on bit for bit —
//! the generated wire types, money, identifiers, clearing periods, digests, the benefit
//! policy model and the benefit engine. Pure code, no I/O.

pub mod card;
pub mod digest;
pub mod engine;
pub mod error;
pub mod idnum;
pub mod money;
pub mod netting;
pub mod period;
pub mod policy;
pub mod proto;
pub mod region;
pub mod round_state;
pub mod types;

pub use error::{Error, Result};
