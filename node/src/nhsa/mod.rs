//! The NHSA-compatible gateway: the national medical insurance platform's hospital
//! interface (HTTP/JSON, `POST /fsi/api/rsfComIfsService/callService`, one envelope
//! per transaction) on a node's own HTTPS listener (`nhsa_listen`), so that an
//! unmodified HIS settles through its local node.
//!
//! A transport beside gRPC: it translates envelopes and code tables into the same
//! `settlement::treatment` operations HospitalService calls ([`transactions`]), with
//! the same access rules and limits. docs/nhsa-gateway.md is the integrator's guide.

pub mod codes;
pub mod detail_reconcile;
pub mod envelope;
pub mod files;
pub mod server;
pub mod tif;
pub mod transactions;

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use crate::{auth::AuthLayer, context::State, tls::TlsState};

pub use server::{PATH, serve};
pub use tif::TifKeys;

/// What the gateway of a node needs.
pub struct Gateway {
    pub state: State,
    /// The node's access rules (the gRPC server's layer, shared).
    pub auth: AuthLayer,
    /// `None` in insecure loopback mode: plain HTTP, every caller trusted.
    pub tls: Option<Arc<TlsState>>,
    /// The provincial gateway's signature keys, when required.
    pub tif: Option<TifKeys>,
    /// The x-tif nonces accepted within the timestamp window (used with `tif`).
    pub nonces: tif::Nonces,
}

impl Gateway {
    /// `inf_refmsgid`: this region (6) + time (14) + serial (10), 30 characters.
    fn refmsgid(&self) -> String {
        let now = chrono::Utc::now().with_timezone(&yidi_common::period::cst());
        format!(
            "{}{}{:010}",
            self.state.region,
            now.format("%Y%m%d%H%M%S"),
            serial() % 10_000_000_000
        )
    }
}

/// A process-wide serial for receiver message ids and sign numbers.
fn serial() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// `yyyyMMddHHmmssSSS` in China Standard Time (`refmsg_time`, `respond_time`).
fn stamp() -> String {
    chrono::Utc::now()
        .with_timezone(&yidi_common::period::cst())
        .format("%Y%m%d%H%M%S%3f")
        .to_string()
}
