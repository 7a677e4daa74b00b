//! The gateway's own HTTPS listener: mutual TLS with the node's material (the same CA,
//! certificate and revocation list as gRPC, reloaded the same way) offering HTTP/1.1,
//! one hyper connection per client, `POST` of one envelope per request.
//!
//! Every request passes the node's access rules as the HospitalService call its infno
//! stands for (`crate::auth::AuthLayer`: certificate, revocation, institution of this
//! region, rate limit), then `fixmedins_code` must be the certificate's institution.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, Response, StatusCode, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tracing::Instrument;

use super::{
    Gateway,
    envelope::{self, NhsaError},
    files, tif, transactions,
};
use crate::{
    auth::{Caller, services},
    identity::CertInfo,
    tls::{PeerInfo, TlsState},
};

/// The path every HIS can be pointed at (URL shape A of the sheet); `/{infno}` may
/// follow it.
pub const PATH: &str = "/fsi/api/rsfComIfsService/callService";

/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The server config of the gateway: the node's, offering HTTP/1.1 instead of h2.
/// Rebuilt when the node's material is reloaded.
struct Http1Config {
    tls: Arc<TlsState>,
    cached: Mutex<Option<(Arc<ServerConfig>, Arc<ServerConfig>)>>,
}

impl Http1Config {
    fn current(&self) -> Arc<ServerConfig> {
        let node = Arc::clone(&self.tls.current().server);
        let mut cached = self
            .cached
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((of, ours)) = cached.as_ref()
            && Arc::ptr_eq(of, &node)
        {
            return Arc::clone(ours);
        }
        let mut ours = (*node).clone();
        ours.alpn_protocols = vec![b"http/1.1".to_vec()];
        let ours = Arc::new(ours);
        *cached = Some((node, Arc::clone(&ours)));
        ours
    }
}

/// Serves the gateway on `listener` until `shutdown`, then stops accepting (the
/// listener is closed: new connections are refused) and lets every open connection
/// finish the request it is serving — its answer is written — before closing it, for
/// at most `drain` (the node's drain time, as gRPC's); connections still busy then are
/// dropped (an HIS repeats a message it got no answer to, with the same msgid).
pub async fn serve(
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
    drain: Duration,
    gateway: Arc<Gateway>,
) {
    let addr = listener.local_addr().ok();
    tracing::info!(
        addr = addr.map(tracing::field::display),
        tls = gateway.tls.is_some(),
        "NHSA gateway serving on {PATH}"
    );
    let http1 = gateway.tls.as_ref().map(|t| {
        Arc::new(Http1Config {
            tls: Arc::clone(t),
            cached: Mutex::new(None),
        })
    });
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut conns = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, remote)) => {
                    let _ = tcp.set_nodelay(true);
                    let gw = Arc::clone(&gateway);
                    let http1 = http1.clone();
                    let stop = stop_rx.clone();
                    conns.spawn(async move {
                        match http1 {
                            None => connection(TokioIo::new(tcp), gw, None, remote, stop).await,
                            Some(cfg) => {
                                let acceptor = TlsAcceptor::from(cfg.current());
                                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                                    Ok(Ok(conn)) => {
                                        let cert = match conn.get_ref().1.peer_certificates().and_then(|c| c.first()) {
                                            Some(der) => CertInfo::from_der(der).map(Arc::new).map_err(|e| Arc::from(e.as_str())),
                                            None => Err(Arc::from("no client certificate")),
                                        };
                                        let info = PeerInfo { remote: Some(remote), cert };
                                        connection(TokioIo::new(conn), gw, Some(info), remote, stop).await;
                                    }
                                    Ok(Err(e)) => tracing::info!(%remote, error = %e, "NHSA gateway: TLS handshake refused"),
                                    Err(_) => tracing::info!(%remote, "NHSA gateway: TLS handshake timed out"),
                                }
                            }
                        }
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "NHSA gateway accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    tracing::info!(
        connections = conns.len(),
        drain_seconds = drain.as_secs(),
        "NHSA gateway: no longer accepting; finishing the requests in flight"
    );
    let drained =
        tokio::time::timeout(drain, async { while conns.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(
            connections = conns.len(),
            "NHSA gateway: drain deadline passed; dropping the remaining connections"
        );
        conns.abort_all();
        while conns.join_next().await.is_some() {}
    }
}

/// Serves one connection until the client closes it or, once `stop` turns true, until
/// the request it is serving has been answered (an idle connection closes at once).
async fn connection<I>(
    io: I,
    gw: Arc<Gateway>,
    peer: Option<PeerInfo>,
    remote: SocketAddr,
    mut stop: tokio::sync::watch::Receiver<bool>,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let svc = service_fn(move |req| {
        let (gw, peer) = (Arc::clone(&gw), peer.clone());
        async move { Ok::<_, Infallible>(handle(req, &gw, peer).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new().serve_connection(io, svc);
    tokio::pin!(conn);
    let ended = tokio::select! {
        ended = conn.as_mut() => ended,
        _ = async { stop.wait_for(|s| *s).await.map(|_| ()) } => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = ended {
        tracing::debug!(%remote, error = %e, "NHSA gateway connection ended with an error");
    }
}

fn reply(status: StatusCode, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json; charset=utf-8"),
    );
    r
}

/// A file's bytes (9102), named for a client that saves what it gets.
fn file_reply(name: &str, bytes: Vec<u8>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(bytes)));
    let h = r.headers_mut();
    h.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/zip"),
    );
    // The name is ours (`<file_qury_no>-result.zip`) or the uploader's: keep it ASCII.
    let safe: String = name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        .collect();
    if let Ok(v) = hyper::header::HeaderValue::from_str(&format!("attachment; filename=\"{safe}\""))
    {
        h.insert(hyper::header::CONTENT_DISPOSITION, v);
    }
    r
}

/// The `/{infno}` of `.../callService/{infno}`; `Err` for a path that is not the
/// gateway's. Any `/fsi/api/<service>/<method>` path is accepted too (URL shape C);
/// the body's infno routes it.
fn path_infno(path: &str) -> Result<Option<&str>, ()> {
    if let Some(rest) = path.strip_prefix(PATH) {
        return match rest.trim_end_matches('/') {
            "" => Ok(None),
            r => r
                .strip_prefix('/')
                .filter(|s| !s.contains('/'))
                .map(Some)
                .ok_or(()),
        };
    }
    if path.starts_with("/fsi/api/") {
        return Ok(None);
    }
    Err(())
}

async fn handle(
    req: Request<Incoming>,
    gw: &Gateway,
    peer: Option<PeerInfo>,
) -> Response<Full<Bytes>> {
    let received = super::stamp();
    let refmsgid = gw.refmsgid();
    let fail = |status: StatusCode, e: NhsaError| {
        let body = envelope::answer(&Err(e), &refmsgid, &received, &super::stamp());
        reply(status, body)
    };
    let path = req.uri().path().to_owned();
    let Ok(infno_in_path) = path_infno(&path).map(|o| o.map(str::to_owned)) else {
        return fail(
            StatusCode::NOT_FOUND,
            NhsaError::general(
                format!("路径 {path} 不存在，请使用 POST {PATH}"),
                format!(
                    "no such path {path}; POST the envelope to {PATH} (optionally /{{infno}} appended)"
                ),
            ),
        );
    };
    if req.method() != Method::POST {
        return fail(
            StatusCode::METHOD_NOT_ALLOWED,
            NhsaError::general(
                "只接受 POST 请求",
                format!(
                    "{} is not accepted; POST the envelope as application/json",
                    req.method()
                ),
            ),
        );
    }
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, crate::serving::MAX_REQUEST_BYTES)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return fail(
                StatusCode::PAYLOAD_TOO_LARGE,
                NhsaError::general(
                    "请求报文过大或读取失败",
                    format!(
                        "the request body could not be read ({e}); at most {} bytes are accepted",
                        crate::serving::MAX_REQUEST_BYTES
                    ),
                ),
            );
        }
    };
    if let Some(keys) = &gw.tif {
        let now = chrono::Utc::now().timestamp();
        if let Err(e) =
            tif::verify(keys, &parts.headers, now).and_then(|s| gw.nonces.admit(&s, now))
        {
            return fail(StatusCode::OK, e);
        }
    }
    let result = async {
        let env = envelope::parse(&body, infno_in_path.as_deref())?;
        let span = tracing::info_span!("nhsa", infno = %env.infno, msgid = %env.msgid, institution = %env.fixmedins_code);
        async {
            let method = transactions::method(&env.infno).ok_or_else(|| {
                NhsaError::field(
                    "infno",
                    format!("不支持交易 {}", env.infno),
                    format!("infno {} is not a transaction of this gateway (see docs/nhsa-gateway.md)", env.infno),
                )
            })?;
            let caller = gw.caller(peer.as_ref(), method)?;
            caller
                .check_institution(&env.fixmedins_code)
                .map_err(|s| transactions::status_refusal(&s))?;
            if env.infno == files::DOWNLOAD {
                return files::download(&gw.state, &env).await.map(Err);
            }
            transactions::run(&gw.state, &env).await.map(Ok)
        }
        .instrument(span)
        .await
    }
    .await;
    // 9102 answers the file itself (sheet §1); everything else, and its refusals, JSON.
    let result = match result {
        Ok(Err((name, bytes))) => return file_reply(&name, bytes),
        Ok(Ok(answer)) => Ok(answer),
        Err(e) => Err(e),
    };
    if let Err(e) = &result {
        tracing::info!(err = %e.en, "NHSA transaction refused");
    }
    let retry_after = result.as_ref().err().and_then(|e| e.retry_after_ms);
    let body = envelope::answer(&result, &refmsgid, &received, &super::stamp());
    let mut r = reply(StatusCode::OK, body);
    if let Some(ms) = retry_after {
        // HTTP's Retry-After counts whole seconds (rounded up); the milliseconds beside.
        let h = r.headers_mut();
        h.insert(
            hyper::header::RETRY_AFTER,
            hyper::header::HeaderValue::from(ms.div_ceil(1000).max(1)),
        );
        h.insert(
            crate::admission::RETRY_AFTER_MS,
            hyper::header::HeaderValue::from(ms),
        );
    }
    r
}

impl Gateway {
    /// Who is calling, through the node's access rules for the HospitalService method.
    fn caller(&self, peer: Option<&PeerInfo>, method: &str) -> Result<Caller, NhsaError> {
        let mut probe = http::Request::builder()
            .uri(format!("/{}/{method}", services::HOSPITAL))
            .body(())
            .map_err(|e| NhsaError::general("系统内部错误", format!("internal error: {e}")))?;
        if let Some(p) = peer {
            probe.extensions_mut().insert(p.clone());
        }
        self.auth
            .check(&probe)
            .map_err(|s| transactions::status_refusal(&s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_of_the_three_url_shapes() {
        assert_eq!(path_infno(PATH), Ok(None));
        assert_eq!(path_infno(&format!("{PATH}/2207")), Ok(Some("2207")));
        assert_eq!(path_infno("/fsi/api/hospSettService/settV2"), Ok(None));
        assert_eq!(path_infno("/metrics"), Err(()));
        assert_eq!(path_infno(&format!("{PATH}/2207/x")), Err(()));
    }
}
