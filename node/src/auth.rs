//! Authorisation from the caller's certificate, never from payload fields. One tower
//! layer in front of every service of a server (node or coordinator):
//!
//! 1. takes the caller's identity from the connection's verified certificate
//!    ([`crate::tls::PeerInfo`]) — no certificate, or one naming no yidi identity, is
//!    UNAUTHENTICATED; a revoked serial is UNAUTHENTICATED "certificate revoked" (the
//!    list in force is checked on every request, so a revocation also cuts off
//!    connections that were already open);
//! 2. checks the identity's kind and region against the service and method it calls
//!    ([`authorize`], the table of docs/security.md) — PERMISSION_DENIED otherwise;
//! 3. rate-limits each hospital (token bucket per institution identity) —
//!    RESOURCE_EXHAUSTED;
//! 4. hands the [`Caller`] to the service in the request's extensions, where the
//!    services compare payload fields that name a party (an institution code, a
//!    treatment region) with it.
//!
//! A server in `--insecure` loopback mode has no certificates to read: every caller is
//! [`Caller::Loopback`], trusted as local development, as its startup warning says.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Instant,
};

use futures::future::{BoxFuture, FutureExt};
use tonic::{
    Status,
    body::Body,
    codegen::http::{Request, Response},
};
use yidi_common::region::RegionCode;

use crate::{
    identity::{CertInfo, Identity, Role},
    peers::PeerDirectory,
    tls::{PeerInfo, TlsState},
};

/// gRPC service names the rules refer to (the generated servers' own names).
pub mod services {
    use yidi_common::proto::{
        admin_service_server, clearing_participant_server, coordinator_service_server,
        directory_service_server, hospital_service_server, peer_service_server,
    };
    pub const HOSPITAL: &str = hospital_service_server::SERVICE_NAME;
    pub const PEER: &str = peer_service_server::SERVICE_NAME;
    pub const CLEARING_PARTICIPANT: &str = clearing_participant_server::SERVICE_NAME;
    pub const ADMIN: &str = admin_service_server::SERVICE_NAME;
    pub const COORDINATOR: &str = coordinator_service_server::SERVICE_NAME;
    pub const DIRECTORY: &str = directory_service_server::SERVICE_NAME;
    pub const HEALTH: &str = "grpc.health.v1.Health";
    pub const REFLECTION: &str = "grpc.reflection.v1.ServerReflection";
    pub const REFLECTION_ALPHA: &str = "grpc.reflection.v1alpha.ServerReflection";
}

/// AdminService calls an operator with role `clearing` may make at a node: the funds
/// desk reads ledgers and statements and confirms clearing; it does not touch persons,
/// filings, policies, the catalogue or institutions.
pub const CLEARING_ROLE_ADMIN_METHODS: &[&str] = &[
    "GetNodeInfo",
    "GetOutbox",
    "ListDeductions",
    "RecordReserve",
    "ListReserves",
    "HospitalStatement",
    "GetLedger",
    "ConfirmClearing",
    "ListClearingRounds",
];

/// CoordinatorService calls that only read: open to the province's `admin` operators
/// and to the registered nodes; everything else needs a `clearing` operator.
pub const COORDINATOR_READ_METHODS: &[&str] = &[
    "GetRound",
    "ListRounds",
    "ListDisputes",
    "GetStatement",
    "ListTransfers",
];

/// Who is calling, as the request's extensions carry it.
#[derive(Debug, Clone)]
pub enum Caller {
    /// A server in `--insecure` loopback mode: no certificate, trusted as development.
    Loopback,
    /// A verified certificate naming a yidi identity.
    Party(Arc<CertInfo>),
}

impl Caller {
    /// The identity, if the caller presented one.
    #[must_use]
    pub fn identity(&self) -> Option<&Identity> {
        match self {
            Caller::Loopback => None,
            Caller::Party(c) => Some(&c.identity),
        }
    }

    /// The certificate serial ("" on loopback).
    #[must_use]
    pub fn serial(&self) -> &str {
        match self {
            Caller::Loopback => "",
            Caller::Party(c) => &c.serial,
        }
    }

    /// For logs.
    #[must_use]
    pub fn describe(&self) -> String {
        match self {
            Caller::Loopback => "loopback (insecure mode)".to_owned(),
            Caller::Party(c) => format!("{} (serial {})", c.identity, c.serial),
        }
    }

    /// HospitalService: the institution code a request names must be the caller's own.
    pub fn check_institution(&self, code: &str) -> Result<(), Status> {
        match self.identity() {
            None => Ok(()),
            Some(Identity::Institution { code: own, .. }) if own == code => Ok(()),
            Some(Identity::Institution { code: own, .. }) => {
                Err(Status::permission_denied(format!(
                    "institution_code {} is not the caller's institution {own:?} (from its certificate); an institution acts only as itself",
                    yidi_common::error::quoted(code)
                )))
            }
            Some(other) => Err(Status::permission_denied(format!(
                "the caller {other} is not an institution"
            ))),
        }
    }

    /// PeerService: a region a request names as its sender (`treatment_region`,
    /// `from_region`, `counterparty`) must be the calling node's own region.
    pub fn check_region(&self, field: &str, value: &str) -> Result<(), Status> {
        match self.identity() {
            None => Ok(()),
            Some(Identity::Node { region }) if region.as_str() == value => Ok(()),
            Some(Identity::Node { region }) => Err(Status::permission_denied(format!(
                "{field} {} is not the calling node's region {region} (from its certificate); a node acts only as itself",
                yidi_common::error::quoted(value)
            ))),
            Some(other) => Err(Status::permission_denied(format!(
                "the caller {other} is not a node"
            ))),
        }
    }

    /// The calling node's region for the audit log: from the certificate, or on an
    /// insecure loopback server what the payload claims (marked as such).
    #[must_use]
    pub fn peer_region(&self, claimed: &str) -> String {
        match self.identity() {
            Some(id) => id.region().to_string(),
            None if claimed.is_empty() => "loopback".to_owned(),
            None => claimed.to_owned(),
        }
    }
}

/// Reads the caller the layer stored; a request that did not pass the layer is
/// refused rather than trusted.
pub fn caller<T>(req: &tonic::Request<T>) -> Result<Caller, Status> {
    req.extensions().get::<Caller>().cloned().ok_or_else(|| {
        Status::unauthenticated("no caller identity: the request did not pass authentication")
    })
}

/// Which server the rules are for.
#[derive(Clone)]
pub enum Server {
    /// A city node.
    Node { region: RegionCode },
    /// The coordinator of a province and its registered participants.
    Coordinator {
        province: RegionCode,
        participants: Arc<PeerDirectory>,
    },
}

fn deny(msg: String) -> Status {
    Status::permission_denied(msg)
}

/// The access table: may `who` call `service`/`method` on `server`?
pub fn authorize(
    server: &Server,
    who: &Identity,
    service: &str,
    method: &str,
) -> Result<(), Status> {
    use services::*;
    if matches!(service, HEALTH | REFLECTION | REFLECTION_ALPHA) {
        return Ok(());
    }
    match server {
        Server::Node { region: own } => match (service, who) {
            (HOSPITAL, Identity::Institution { region, .. }) if region == own => Ok(()),
            (HOSPITAL, Identity::Institution { region, code }) => Err(deny(format!(
                "institution {code} belongs to the node of {region}; it may call HospitalService only there (this node is {own})"
            ))),
            (HOSPITAL, other) => Err(deny(format!(
                "HospitalService is for the institutions of {own}; the caller is {other}"
            ))),
            (PEER, Identity::Node { region }) if region != own => Ok(()),
            (PEER, other) => Err(deny(format!(
                "PeerService is for the other nodes of the federation; the caller is {other}"
            ))),
            (CLEARING_PARTICIPANT, Identity::Coordinator { province })
                if *province == own.province() =>
            {
                Ok(())
            }
            (CLEARING_PARTICIPANT, other) => Err(deny(format!(
                "ClearingParticipant is for the coordinator of province {}; the caller is {other}",
                own.province()
            ))),
            (ADMIN, Identity::Operator { region, role }) if region == own => match role {
                Role::Admin => Ok(()),
                Role::Clearing if CLEARING_ROLE_ADMIN_METHODS.contains(&method) => Ok(()),
                Role::Clearing => Err(deny(format!(
                    "operator role clearing may not call AdminService/{method}; it needs role admin"
                ))),
            },
            (ADMIN, other) => Err(deny(format!(
                "AdminService of {own} is for its own operators; the caller is {other}"
            ))),
            _ => Err(deny(format!("no access to {service} at a node"))),
        },
        Server::Coordinator {
            province,
            participants,
        } => match (service, who) {
            (COORDINATOR, Identity::Operator { region, role }) if region == province => {
                match role {
                    Role::Clearing => Ok(()),
                    Role::Admin if COORDINATOR_READ_METHODS.contains(&method) => Ok(()),
                    Role::Admin => Err(deny(format!(
                        "operator role admin may only read rounds at the coordinator; CoordinatorService/{method} needs role clearing"
                    ))),
                }
            }
            (COORDINATOR, Identity::Node { region }) => {
                if participants.get(region.as_str()).is_err() {
                    Err(deny(format!(
                        "node {region} is not a registered participant of {province}"
                    )))
                } else if COORDINATOR_READ_METHODS.contains(&method) {
                    Ok(())
                } else {
                    Err(deny(format!(
                        "nodes may only read rounds at the coordinator; CoordinatorService/{method} is for its operators"
                    )))
                }
            }
            (COORDINATOR, other) => Err(deny(format!(
                "CoordinatorService of {province} is for its operators and registered nodes; the caller is {other}"
            ))),
            // A provincial coordinator is the national coordinator's participant.
            (CLEARING_PARTICIPANT, Identity::Coordinator { province: caller })
                if caller.is_national() && !province.is_national() =>
            {
                Ok(())
            }
            (CLEARING_PARTICIPANT, other) => Err(deny(format!(
                "ClearingParticipant of the coordinator of {province} is for the national coordinator (000000); the caller is {other}"
            ))),
            // The federation directory (addresses and identities, nothing personal) is
            // read by nodes of any province, other coordinators and the national
            // level, and operators; hospitals never dial a node but their own.
            (DIRECTORY, Identity::Institution { .. }) => Err(deny(
                "DirectoryService is for the federation's nodes, coordinators and operators; the caller is an institution".to_owned(),
            )),
            (DIRECTORY, _) => Ok(()),
            _ => Err(deny(format!("no access to {service} at the coordinator"))),
        },
    }
}

/// Per-hospital request rate: a token bucket per institution identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Sustained requests per second; 0 turns the limit off.
    pub per_second: u32,
    /// Requests allowed in a burst above the sustained rate.
    pub burst: u32,
}

impl Default for RateLimit {
    fn default() -> Self {
        Self {
            per_second: 200,
            burst: 400,
        }
    }
}

struct Bucket {
    /// Thousandths of a request, so that refills need no floating point.
    milli_tokens: u64,
    at: Instant,
}

struct Limiter {
    limit: RateLimit,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl Limiter {
    fn admit(&self, key: &str) -> bool {
        let cap = u64::from(self.limit.burst.max(1)) * 1000;
        let now = Instant::now();
        let Ok(mut buckets) = self.buckets.lock() else {
            return true;
        };
        let b = buckets.entry(key.to_owned()).or_insert(Bucket {
            milli_tokens: cap,
            at: now,
        });
        let elapsed_us = u64::try_from(now.duration_since(b.at).as_micros()).unwrap_or(u64::MAX);
        // per_second tokens per 1e6 µs = per_second/1000 milli-tokens per µs.
        let refill = elapsed_us.saturating_mul(u64::from(self.limit.per_second)) / 1000;
        if refill > 0 {
            b.milli_tokens = b.milli_tokens.saturating_add(refill).min(cap);
            b.at = now;
        }
        if b.milli_tokens >= 1000 {
            b.milli_tokens -= 1000;
            true
        } else {
            false
        }
    }
}

struct Inner {
    server: Server,
    /// `None`: an insecure loopback server.
    tls: Option<Arc<TlsState>>,
    limiter: Option<Limiter>,
}

/// The layer; cheap to clone.
#[derive(Clone)]
pub struct AuthLayer {
    inner: Arc<Inner>,
}

impl AuthLayer {
    /// The layer of a server. `tls` is `None` only in insecure loopback mode.
    #[must_use]
    pub fn new(server: Server, tls: Option<Arc<TlsState>>, hospital_rate: RateLimit) -> Self {
        let limiter = (hospital_rate.per_second > 0).then(|| Limiter {
            limit: hospital_rate,
            buckets: Mutex::new(HashMap::new()),
        });
        Self {
            inner: Arc::new(Inner {
                server,
                tls,
                limiter,
            }),
        }
    }

    /// Authenticates and authorises one request; the caller on success.
    pub(crate) fn check<B>(&self, req: &Request<B>) -> Result<Caller, Status> {
        let Some(tls) = &self.inner.tls else {
            return Ok(Caller::Loopback);
        };
        let info = req.extensions().get::<PeerInfo>().ok_or_else(|| {
            Status::unauthenticated("no client certificate: this server requires mutual TLS")
        })?;
        let cert = match &info.cert {
            Ok(c) => Arc::clone(c),
            Err(e) => {
                return Err(Status::unauthenticated(format!(
                    "client certificate refused: {e}"
                )));
            }
        };
        if tls.is_revoked(&cert.serial) {
            tracing::warn!(caller = %cert.identity, serial = %cert.serial, remote = info.remote.map(tracing::field::display), "revoked certificate refused");
            return Err(Status::unauthenticated(format!(
                "certificate revoked (serial {})",
                cert.serial
            )));
        }
        let path = req.uri().path().trim_start_matches('/');
        let (service, method) = path.split_once('/').unwrap_or((path, ""));
        if let Err(status) = authorize(&self.inner.server, &cert.identity, service, method) {
            tracing::warn!(caller = %cert.identity, serial = %cert.serial, service, method, reason = %status.message(), "call refused");
            return Err(status);
        }
        if let (Some(limiter), Identity::Institution { code, .. }) =
            (&self.inner.limiter, &cert.identity)
            && service == services::HOSPITAL
            && !limiter.admit(&cert.identity.urn())
        {
            return Err(Status::resource_exhausted(format!(
                "rate limit: institution {code} may send {} requests per second (bursts of {}); slow down and retry",
                limiter.limit.per_second, limiter.limit.burst
            )));
        }
        Ok(Caller::Party(cert))
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthSvc<S>;

    fn layer(&self, inner: S) -> AuthSvc<S> {
        AuthSvc {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service the layer wraps around a server's routes.
#[derive(Clone)]
pub struct AuthSvc<S> {
    inner: S,
    layer: AuthLayer,
}

impl<S, B> tower::Service<Request<B>> for AuthSvc<S>
where
    S: tower::Service<Request<B>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        match self.layer.check(&req) {
            Ok(caller) => {
                req.extensions_mut().insert(caller);
                // The clone that was polled ready serves this request (tower's rule).
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                inner.call(req).boxed()
            }
            Err(status) => {
                let response = status.into_http::<Body>();
                async move { Ok(response) }.boxed()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> RegionCode {
        RegionCode::parse(s, "r").expect("region")
    }

    #[test]
    fn node_access_table() {
        use services::*;
        let node = Server::Node {
            region: r("330100"),
        };
        let ok = |id: Identity, s: &str, m: &str| authorize(&node, &id, s, m).is_ok();
        let inst = |reg: &str| Identity::Institution {
            region: r(reg),
            code: "H1".into(),
        };
        let n = |reg: &str| Identity::Node { region: r(reg) };
        let op = |reg: &str, role| Identity::Operator {
            region: r(reg),
            role,
        };
        assert!(ok(inst("330100"), HOSPITAL, "Settle"));
        assert!(!ok(inst("330200"), HOSPITAL, "Settle"));
        assert!(!ok(n("330200"), HOSPITAL, "Settle"));
        assert!(ok(n("330200"), PEER, "CommitClaim"));
        assert!(!ok(n("330100"), PEER, "CommitClaim"), "not itself");
        assert!(!ok(inst("330100"), PEER, "LookupPerson"));
        assert!(ok(
            Identity::Coordinator {
                province: r("330000")
            },
            CLEARING_PARTICIPANT,
            "MarkCleared"
        ));
        assert!(!ok(
            Identity::Coordinator {
                province: r("320000")
            },
            CLEARING_PARTICIPANT,
            "MarkCleared"
        ));
        assert!(!ok(n("330200"), CLEARING_PARTICIPANT, "ReportPositions"));
        assert!(ok(op("330100", Role::Admin), ADMIN, "CreatePerson"));
        assert!(!ok(op("330200", Role::Admin), ADMIN, "GetNodeInfo"));
        assert!(ok(op("330100", Role::Clearing), ADMIN, "ConfirmClearing"));
        assert!(!ok(op("330100", Role::Clearing), ADMIN, "CreatePerson"));
        assert!(!ok(op("330000", Role::Clearing), ADMIN, "GetLedger"));
        assert!(
            ok(inst("330200"), HEALTH, "Check"),
            "health is open to every verified party"
        );
        assert!(!ok(op("330100", Role::Admin), "other.Service", "X"));
    }

    /// A provincial coordinator's ClearingParticipant is for the national coordinator
    /// alone; the national coordinator serves none, and never reaches a node's.
    #[test]
    fn only_the_national_coordinator_calls_a_province_as_participant() {
        use services::*;
        let dir = |own: &str| {
            Arc::new(
                PeerDirectory::load(r(own), None, std::time::Duration::from_secs(1))
                    .expect("empty directory"),
            )
        };
        let province = Server::Coordinator {
            province: r("330000"),
            participants: dir("330000"),
        };
        let national = Identity::Coordinator {
            province: r("000000"),
        };
        assert!(
            authorize(
                &province,
                &national,
                CLEARING_PARTICIPANT,
                "ReportPositions"
            )
            .is_ok()
        );
        for other in [
            Identity::Coordinator {
                province: r("320000"),
            },
            Identity::Node {
                region: r("330100"),
            },
        ] {
            let e =
                authorize(&province, &other, CLEARING_PARTICIPANT, "ReportPositions").unwrap_err();
            assert_eq!(e.code(), tonic::Code::PermissionDenied);
            assert!(
                e.message().starts_with(
                    "ClearingParticipant of the coordinator of 330000 is for the national coordinator (000000)"
                ),
                "{}",
                e.message()
            );
        }
        let at_national = Server::Coordinator {
            province: r("000000"),
            participants: dir("000000"),
        };
        assert!(
            authorize(
                &at_national,
                &national,
                CLEARING_PARTICIPANT,
                "ReportPositions"
            )
            .is_err()
        );
        let node = Server::Node {
            region: r("330100"),
        };
        assert!(authorize(&node, &national, CLEARING_PARTICIPANT, "ReportPositions").is_err());
    }

    #[test]
    fn rate_limit_refills_at_the_configured_rate() {
        let l = Limiter {
            limit: RateLimit {
                per_second: 1000,
                burst: 3,
            },
            buckets: Mutex::new(HashMap::new()),
        };
        assert!(l.admit("a") && l.admit("a") && l.admit("a"));
        assert!(!l.admit("a"), "burst spent");
        assert!(l.admit("b"), "buckets are per institution");
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert!(l.admit("a"), "refilled after a few ms at 1000/s");
    }
}
