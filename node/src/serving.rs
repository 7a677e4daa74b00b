//! What every yidi gRPC daemon (a node, the coordinator) does around its own services:
//! logging, message size limits, the health-side reflection services, binding, and
//! serving until a signal then draining for a bounded time. `server` (a node) and
//! `coordinator` both call these, so the two start, log and stop the same way.

use std::{future::Future, net::SocketAddr, time::Duration};

use tokio::{
    net::TcpListener,
    sync::{oneshot, watch},
};
use yidi_common::proto::FILE_DESCRIPTOR_SET;

use crate::{Error, Result, tls::ServeFuture};

/// Largest gRPC message a node accepts (bulk imports are the largest legitimate ones).
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
/// Largest request a hospital or a peer node may send: a long inpatient stay's fee
/// lines fit many times over; anything bigger is refused (OUT_OF_RANGE) before it is
/// decoded into memory.
pub const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;

/// Installs the global tracing subscriber: text by default, JSON lines when asked;
/// filtered by `RUST_LOG` (default `info`). Colours only when stderr is a terminal: a
/// file or journald would keep the escape codes as text.
pub fn init_tracing(json: bool) {
    use std::io::IsTerminal;
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(!json && std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    // A second call (tests) keeps the first subscriber.
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// The server reflection services, v1 and v1alpha (older grpcurl and many client
/// libraries speak only v1alpha), of a process serving `services` (full names): both
/// list exactly those, health and reflection itself — not every service of yidi's
/// descriptor set, which would advertise the coordinator's on a node.
pub(crate) fn reflection(
    services: &[&str],
) -> Result<(
    tonic_reflection::server::v1::ServerReflectionServer<
        impl tonic_reflection::server::v1::ServerReflection,
    >,
    tonic_reflection::server::v1alpha::ServerReflectionServer<
        impl tonic_reflection::server::v1alpha::ServerReflection,
    >,
)> {
    use tonic_reflection::pb::{v1, v1alpha};
    let builder = || {
        let mut b = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            // Each version's builder adds its own file; the other's is registered
            // here so that both names it lists resolve to a descriptor.
            .register_encoded_file_descriptor_set(v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(v1alpha::FILE_DESCRIPTOR_SET)
            .include_reflection_service(false)
            .with_service_name(tonic_health::pb::health_server::SERVICE_NAME)
            .with_service_name(v1::server_reflection_server::SERVICE_NAME)
            .with_service_name(v1alpha::server_reflection_server::SERVICE_NAME);
        for s in services {
            b = b.with_service_name(*s);
        }
        b
    };
    let fail = |e: tonic_reflection::server::Error| Error::Internal(format!("reflection: {e}"));
    Ok((
        builder().build_v1().map_err(fail)?,
        builder().build_v1alpha().map_err(fail)?,
    ))
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

/// Binds `listen`, naming it in the error.
pub async fn bind(listen: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(listen)
        .await
        .map_err(|e| Error::Unavailable(format!("cannot listen on {listen}: {e}")))
}

/// Drives `server` until it fails or `shutdown` resolves; then tells the background
/// tasks to stop (`stop_background`), stops accepting (`stop_serving`, the stop signal
/// `server` was built with) and waits at most `drain` for requests in flight — tonic
/// alone would wait forever for a stuck client. The caller then joins its tasks and
/// closes its store.
pub async fn serve_until(
    server: ServeFuture,
    stop_serving: oneshot::Sender<()>,
    shutdown: impl Future<Output = ()> + Send,
    drain: Duration,
    stop_background: &watch::Sender<bool>,
) -> Result<()> {
    let failed = |e: tonic::transport::Error| Error::Unavailable(format!("server failed: {e}"));
    tokio::pin!(server);
    tokio::select! {
        result = &mut server => {
            let _ = stop_background.send(true);
            return result.map_err(failed);
        }
        () = shutdown => {}
    }
    let _ = stop_background.send(true);
    tracing::info!(
        drain_seconds = drain.as_secs(),
        "shutting down; draining in-flight requests"
    );
    let _ = stop_serving.send(());
    match tokio::time::timeout(drain, server).await {
        Ok(result) => result.map_err(failed),
        Err(_) => {
            tracing::warn!("drain deadline passed; abandoning the remaining requests");
            Ok(())
        }
    }
}
