//! Transport security: mutual TLS (rustls) on every connection, or — only on a loopback
//! address and only when asked with `--insecure` — plain text for development.
//!
//! A server (node or coordinator) runs its own accept loop instead of tonic's fixed
//! `ServerTlsConfig`, so that its certificate, CA and revocation list can be replaced
//! while it runs: every new handshake takes the [`TlsMaterial`] current at that moment
//! from an [`ArcSwap`], connections already open keep theirs. The material is re-read
//! when its files change (checked every few seconds) or on SIGHUP; a broken or
//! mismatched new set of files is refused with a warning and the previous one stays in
//! force. Each accepted connection carries the caller's parsed certificate
//! ([`PeerInfo`], parsed once per connection) to the authorisation layer
//! ([`crate::auth`]), which also checks the revocation list on every request.
//!
//! Outgoing calls use tonic's client TLS with the federation CA and the caller's own
//! certificate; a node verifies a peer against the name only that peer's certificate
//! carries (`node-<region>.yidi`), whatever address it dials.

use std::{
    collections::HashSet,
    future::Future,
    net::SocketAddr,
    path::{Path, PathBuf},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use arc_swap::ArcSwap;
use rustls::{
    RootCertStore, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::WebPkiClientVerifier,
};
use sha2::{Digest, Sha256};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{Semaphore, mpsc, watch},
};
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, server::Connected};

use crate::{
    Error, Result,
    identity::{CertInfo, Identity},
};

/// How long a client may take to complete its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; more wait in the kernel's accept queue, so a flood
/// of half-open connections cannot exhaust memory.
const MAX_PENDING_HANDSHAKES: usize = 512;
/// How often the certificate, key, CA and revocation files are checked for changes.
pub const RELOAD_CHECK: Duration = Duration::from_secs(2);

/// The transport settings of a node or coordinator.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SecurityConfig {
    /// This party's certificate (PEM; the chain may follow the leaf).
    pub tls_cert: Option<PathBuf>,
    /// Its private key (PEM, PKCS#8 or SEC1).
    pub tls_key: Option<PathBuf>,
    /// The federation CA certificate(s) (PEM): the only issuer whose certificates are
    /// accepted from callers and servers.
    pub tls_ca: Option<PathBuf>,
    /// Revocation list: serials (hex), one per line; optional.
    pub revoked_file: Option<PathBuf>,
    /// Plain text for loopback development. Refused on any other address.
    pub insecure: bool,
}

/// The files of a TLS identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
    pub revoked: Option<PathBuf>,
}

impl SecurityConfig {
    /// Plain text on loopback: what tests and the embedded demo use unless they ask for
    /// TLS.
    #[must_use]
    pub fn insecure_loopback() -> Self {
        Self {
            insecure: true,
            ..Self::default()
        }
    }

    /// Mutual TLS with the given files.
    #[must_use]
    pub fn tls(cert: &Path, key: &Path, ca: &Path, revoked: Option<&Path>) -> Self {
        Self {
            tls_cert: Some(cert.to_path_buf()),
            tls_key: Some(key.to_path_buf()),
            tls_ca: Some(ca.to_path_buf()),
            revoked_file: revoked.map(Path::to_path_buf),
            insecure: false,
        }
    }

    /// Decides the transport for a server listening on `listen`: the TLS files, or
    /// `None` for plain text — which is only allowed with `insecure` on a loopback
    /// address. Every other combination is refused with what to do about it.
    pub fn transport(&self, listen: SocketAddr) -> Result<Option<TlsFiles>> {
        let any_tls = self.tls_cert.is_some() || self.tls_key.is_some() || self.tls_ca.is_some();
        if self.insecure {
            if any_tls {
                return Err(Error::invalid(
                    "insecure",
                    "--insecure and tls_cert/tls_key/tls_ca are both set; remove one of them",
                ));
            }
            if !listen.ip().is_loopback() {
                return Err(Error::invalid(
                    "insecure",
                    format!(
                        "plain text (--insecure) is allowed only on a loopback address, and {listen} is not one; \
                         configure tls_cert, tls_key and tls_ca (see docs/security.md)"
                    ),
                ));
            }
            return Ok(None);
        }
        match (&self.tls_cert, &self.tls_key, &self.tls_ca) {
            (Some(cert), Some(key), Some(ca)) => Ok(Some(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                ca: ca.clone(),
                revoked: self.revoked_file.clone(),
            })),
            _ => Err(Error::invalid(
                "tls",
                "mutual TLS is required: set tls_cert, tls_key and tls_ca (flags --tls-cert, --tls-key, --tls-ca; \
                 make them with `yidi certs`, see docs/security.md), or use --insecure on a loopback address for development",
            )),
        }
    }
}

/// One loaded generation of TLS material.
pub struct TlsMaterial {
    /// What new server-side handshakes use.
    pub server: Arc<ServerConfig>,
    /// What the console's HTTPS handshakes use: the same certificate, HTTP/1.1, a
    /// client certificate optional.
    pub console: Arc<ServerConfig>,
    /// The federation CA, to check a certificate met outside a handshake (the one a
    /// console login link carries).
    pub roots: Arc<RootCertStore>,
    /// This party's own certificate, parsed.
    pub own: CertInfo,
    /// Revoked serials (normalised hex).
    pub revoked: HashSet<String>,
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    ca_pem: Vec<u8>,
    fingerprint: [u8; 32],
}

impl TlsMaterial {
    /// Client TLS for calling a server that must present `server_name` (e.g.
    /// `node-330200.yidi`), with this party's certificate as its client identity.
    #[must_use]
    pub fn client_config(&self, server_name: &str) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(tonic::transport::Identity::from_pem(
                &self.cert_pem,
                &self.key_pem,
            ))
            .domain_name(server_name)
            .timeout(HANDSHAKE_TIMEOUT)
    }

    /// This party's certificate and private key (PEM), for signing what it publishes
    /// (the federation directory, `crate::directory`).
    pub(crate) fn own_pem(&self) -> (&[u8], &[u8]) {
        (&self.cert_pem, &self.key_pem)
    }
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| {
        // Say what the file should hold: "cannot read certificate FILE" is the
        // error a new operator can act on.
        let kind = match what {
            "tls_key" | "key" => "key",
            "revoked_file" => "revocation list",
            _ => "certificate",
        };
        Error::invalid(what, format!("cannot read {kind} {}: {e}", path.display()))
    })
}

/// The ring provider, named explicitly so that no process-wide default is needed.
pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads every certificate of a PEM file.
pub fn load_certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>> {
    let bytes = read(path, what)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::invalid(what, format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(Error::invalid(
            what,
            format!("{} holds no PEM certificate", path.display()),
        ));
    }
    Ok(certs)
}

/// The root store of the federation CA file.
pub fn load_roots(path: &Path) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for c in load_certs(path, "tls_ca")? {
        roots
            .add(c)
            .map_err(|e| Error::invalid("tls_ca", format!("{}: {e}", path.display())))?;
    }
    Ok(roots)
}

fn now_secs() -> i64 {
    chrono::Utc::now().timestamp()
}

impl TlsFiles {
    fn fingerprint(&self) -> Result<[u8; 32]> {
        let mut h = Sha256::new();
        for (p, what) in [
            (&self.cert, "tls_cert"),
            (&self.key, "tls_key"),
            (&self.ca, "tls_ca"),
        ] {
            h.update(read(p, what)?);
            h.update([0u8]);
        }
        if let Some(r) = &self.revoked {
            h.update(read(r, "revoked_file")?);
        }
        Ok(h.finalize().into())
    }

    /// Loads and checks the material: the certificate must name `expected` and be
    /// valid now, the key must match it, the CA must parse, the revocation list must
    /// parse and must not list this party's own serial.
    pub fn load(&self, expected: &Identity) -> Result<TlsMaterial> {
        let fingerprint = self.fingerprint()?;
        let cert_pem = read(&self.cert, "tls_cert")?;
        let key_pem = read(&self.key, "tls_key")?;
        let ca_pem = read(&self.ca, "tls_ca")?;
        let chain = load_certs(&self.cert, "tls_cert")?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem)
            .map_err(|e| Error::invalid("tls_key", format!("{}: {e}", self.key.display())))?;
        let own = CertInfo::from_der(&chain[0])
            .map_err(|e| Error::invalid("tls_cert", format!("{}: {e}", self.cert.display())))?;
        if own.identity != *expected {
            return Err(Error::invalid(
                "tls_cert",
                format!(
                    "{} names {}, but this is {expected}; issue the right one with `yidi certs`",
                    self.cert.display(),
                    own.identity
                ),
            ));
        }
        let now = now_secs();
        if own.not_after < now {
            return Err(Error::invalid(
                "tls_cert",
                format!(
                    "{} (serial {}) has expired; issue a new one with `yidi certs`",
                    self.cert.display(),
                    own.serial
                ),
            ));
        }
        if own.not_before > now + 86_400 {
            return Err(Error::invalid(
                "tls_cert",
                format!("{} is not valid yet", self.cert.display()),
            ));
        }
        let revoked = match &self.revoked {
            Some(p) => crate::revoked::read_revoked(p)
                .map_err(|e| Error::invalid("revoked_file", format!("{e:#}")))?
                .into_iter()
                .collect(),
            None => HashSet::new(),
        };
        if revoked.contains(&own.serial) {
            return Err(Error::invalid(
                "tls_cert",
                format!(
                    "{} (serial {}) is on the revocation list; issue a new one",
                    self.cert.display(),
                    own.serial
                ),
            ));
        }
        let roots = Arc::new(load_roots(&self.ca)?);
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::clone(&roots), provider())
            .build()
            .map_err(|e| Error::invalid("tls_ca", format!("{}: {e}", self.ca.display())))?;
        let mut server = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Internal(format!("TLS versions: {e}")))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| {
                Error::invalid(
                    "tls_key",
                    format!(
                        "{} does not go with {}: {e}",
                        self.key.display(),
                        self.cert.display()
                    ),
                )
            })?;
        // gRPC is HTTP/2 only.
        server.alpn_protocols = vec![b"h2".to_vec()];
        // The console (crate::console): a browser may come without a certificate and
        // sign in with a login link instead; one it presents must chain to the CA.
        let optional = WebPkiClientVerifier::builder_with_provider(Arc::clone(&roots), provider())
            .allow_unauthenticated()
            .build()
            .map_err(|e| Error::invalid("tls_ca", format!("{}: {e}", self.ca.display())))?;
        let mut console = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Internal(format!("TLS versions: {e}")))?
            .with_client_cert_verifier(optional)
            .with_single_cert(chain, key)
            .map_err(|e| Error::invalid("tls_key", e.to_string()))?;
        console.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsMaterial {
            server: Arc::new(server),
            console: Arc::new(console),
            roots,
            own,
            revoked,
            cert_pem,
            key_pem,
            ca_pem,
            fingerprint,
        })
    }
}

/// The live TLS material of a server, replaceable while it runs.
pub struct TlsState {
    files: TlsFiles,
    expected: Identity,
    current: ArcSwap<TlsMaterial>,
    generation: watch::Sender<u64>,
}

impl TlsState {
    /// Loads the files once; refuses to start on anything wrong with them.
    pub fn load(files: TlsFiles, expected: Identity) -> Result<Arc<Self>> {
        let material = files.load(&expected)?;
        let days_left = (material.own.not_after - now_secs()) / 86_400;
        if days_left < 30 {
            tracing::warn!(serial = %material.own.serial, days_left, "this party's certificate expires soon; issue a new one (it is picked up without a restart)");
        }
        Ok(Arc::new(Self {
            files,
            expected,
            current: ArcSwap::from_pointee(material),
            generation: watch::channel(0).0,
        }))
    }

    /// The material in force now.
    #[must_use]
    pub fn current(&self) -> Arc<TlsMaterial> {
        self.current.load_full()
    }

    /// Whether `serial` is on the revocation list in force.
    #[must_use]
    pub fn is_revoked(&self, serial: &str) -> bool {
        self.current.load().revoked.contains(serial)
    }

    /// Changes whenever new material comes into force.
    #[must_use]
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Re-reads the files; swaps in new material if they changed and are good. Returns
    /// whether anything changed. On error the previous material stays in force.
    pub fn reload(&self) -> Result<bool> {
        let fp = self.files.fingerprint()?;
        if fp == self.current.load().fingerprint {
            return Ok(false);
        }
        let next = self.files.load(&self.expected)?;
        let (old_serial, new_serial) = (
            self.current.load().own.serial.clone(),
            next.own.serial.clone(),
        );
        let revoked = next.revoked.len();
        self.current.store(Arc::new(next));
        self.generation.send_modify(|g| *g += 1);
        tracing::info!(old_serial = %old_serial, new_serial = %new_serial, revoked, "TLS material reloaded");
        Ok(true)
    }

    /// Reloads whenever the files change (checked every `interval`) or on SIGHUP, until
    /// `stop` resolves.
    pub async fn watch(
        self: Arc<Self>,
        interval: Duration,
        stop: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(stop);
        #[cfg(unix)]
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        loop {
            #[cfg(unix)]
            let hangup = async {
                match hup.as_mut() {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            #[cfg(not(unix))]
            let hangup = std::future::pending::<()>();
            let by_signal = tokio::select! {
                () = &mut stop => return,
                () = tokio::time::sleep(interval) => false,
                () = hangup => true,
            };
            let me = Arc::clone(&self);
            match tokio::task::spawn_blocking(move || me.reload()).await {
                Ok(Ok(changed)) => {
                    if by_signal && !changed {
                        tracing::info!("SIGHUP: TLS files unchanged");
                    }
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "new TLS files not loaded; the previous certificate stays in force")
                }
                Err(e) => tracing::warn!(error = %e, "TLS reload task failed"),
            }
        }
    }
}

/// Decides and prepares a server's transport: loads its TLS material (checking that
/// the certificate names `me`), or — in insecure loopback mode — says loudly that
/// there is none. `what` names the server in the log ("node", "coordinator").
pub async fn start(
    security: &SecurityConfig,
    listen: SocketAddr,
    me: Identity,
    what: &str,
) -> Result<Option<Arc<TlsState>>> {
    match security.transport(listen)? {
        None => {
            tracing::warn!(
                %listen,
                "INSECURE: this {what} serves PLAIN TEXT without TLS (--insecure). Every caller on this machine is \
                 trusted as any party (hospital, peer node, coordinator, operator) and nothing is authenticated. \
                 For loopback development only; never with real data."
            );
            Ok(None)
        }
        Some(files) => {
            let state = tokio::task::spawn_blocking(move || TlsState::load(files, me))
                .await
                .map_err(|e| Error::Internal(format!("TLS load task failed: {e}")))??;
            {
                let m = state.current();
                tracing::info!(identity = %m.own.identity, serial = %m.own.serial, revoked = m.revoked.len(), "mutual TLS: callers need a certificate from the federation CA");
            }
            Ok(Some(state))
        }
    }
}

/// What the server knows about the other end of a connection.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub remote: Option<SocketAddr>,
    /// The caller's certificate, parsed once per connection; the error says why it
    /// names no usable identity (the chain itself was verified in the handshake).
    pub cert: std::result::Result<Arc<CertInfo>, Arc<str>>,
}

/// A server-side TLS connection that tells tonic (and so every request's extensions)
/// who is calling.
pub struct TlsConn {
    inner: tokio_rustls::server::TlsStream<TcpStream>,
    info: PeerInfo,
}

impl Connected for TlsConn {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

fn peer_info(conn: &tokio_rustls::server::TlsStream<TcpStream>) -> PeerInfo {
    let (tcp, session) = conn.get_ref();
    let cert = match session.peer_certificates().and_then(|c| c.first()) {
        Some(der) => CertInfo::from_der(der)
            .map(Arc::new)
            .map_err(|e| Arc::from(e.as_str())),
        None => Err(Arc::from("no client certificate")),
    };
    PeerInfo {
        remote: tcp.peer_addr().ok(),
        cert,
    }
}

/// Accepts TCP connections on `listener` (TCP_NODELAY on: without it every small reply
/// waits for the peer's delayed ACK), completes each TLS handshake with the material
/// in force at that moment, and yields the connections for tonic's
/// `serve_with_incoming`. Handshakes run concurrently, each with a deadline; a failed
/// one (wrong CA, expired certificate, no certificate) is logged and dropped. The loop
/// ends, closing the listener, when the server stops reading the stream.
pub fn incoming(
    listener: TcpListener,
    tls: Arc<TlsState>,
) -> ReceiverStream<std::result::Result<TlsConn, std::io::Error>> {
    let (tx, rx) = mpsc::channel(256);
    tokio::spawn(async move {
        let pending = Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES));
        loop {
            let permit = tokio::select! {
                () = tx.closed() => return,
                p = Arc::clone(&pending).acquire_owned() => p,
            };
            let Ok(permit) = permit else {
                return;
            };
            let accepted = tokio::select! {
                () = tx.closed() => return,
                a = listener.accept() => a,
            };
            let (tcp, remote) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = TlsAcceptor::from(Arc::clone(&tls.current().server));
            let tx = tx.clone();
            tokio::spawn(async move {
                let _permit = permit;
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(conn)) => {
                        let info = peer_info(&conn);
                        let _ = tx.send(Ok(TlsConn { inner: conn, info })).await;
                    }
                    Ok(Err(e)) => {
                        tracing::info!(%remote, error = %e, "TLS handshake refused");
                    }
                    Err(_) => {
                        tracing::info!(%remote, "TLS handshake timed out");
                    }
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// What serving a router resolves to.
pub type ServeFuture =
    std::pin::Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>>;

/// Serves `router` on `listener`: mutual TLS through the reloadable accept loop of
/// [`incoming`], or plain TCP in insecure loopback mode. Either way
/// TCP_NODELAY is on: without it every small reply waits for the peer's delayed ACK
/// (~40 ms).
pub fn serve_router<L>(
    router: tonic::transport::server::Router<L>,
    listener: TcpListener,
    tls: Option<Arc<TlsState>>,
    stop: impl Future<Output = ()> + Send + 'static,
) -> ServeFuture
where
    L: tower::Layer<tonic::service::Routes> + Send + 'static,
    L::Service: tower::Service<
            tonic::codegen::http::Request<tonic::body::Body>,
            Response = tonic::codegen::http::Response<tonic::body::Body>,
        > + Clone
        + Send
        + 'static,
    <L::Service as tower::Service<tonic::codegen::http::Request<tonic::body::Body>>>::Future:
        Send + 'static,
    <L::Service as tower::Service<tonic::codegen::http::Request<tonic::body::Body>>>::Error:
        Into<Box<dyn std::error::Error + Send + Sync>> + Send,
{
    match tls {
        Some(t) => Box::pin(router.serve_with_incoming_shutdown(incoming(listener, t), stop)),
        None => Box::pin(router.serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            stop,
        )),
    }
}

/// An endpoint for `address` (`http://h:p`, `https://h:p` or `h:p`): the scheme
/// follows the transport — TLS when `tls` is given, plain text otherwise — so that one
/// peers file serves both a development federation and a real one.
pub fn endpoint(
    address: &str,
    tls: Option<ClientTlsConfig>,
) -> std::result::Result<Endpoint, String> {
    let rest = address
        .strip_prefix("https://")
        .or_else(|| address.strip_prefix("http://"))
        .unwrap_or(address);
    let scheme = if tls.is_some() { "https" } else { "http" };
    let ep = Endpoint::from_shared(format!("{scheme}://{rest}")).map_err(|e| e.to_string())?;
    match tls {
        Some(cfg) => ep.tls_config(cfg).map_err(|e| e.to_string()),
        None => Ok(ep),
    }
}

/// Connects to a TLS server at `addr` as `client` (CA, certificate and key files),
/// verifies it against `server_name`, and returns what its certificate says — which
/// certificate a node is serving right now (after a reload, say).
pub async fn probe(
    addr: SocketAddr,
    server_name: &str,
    ca: &Path,
    cert: &Path,
    key: &Path,
) -> Result<CertInfo> {
    let roots = load_roots(ca)?;
    let chain = load_certs(cert, "cert")?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| Error::invalid("key", format!("{}: {e}", key.display())))?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Internal(format!("TLS versions: {e}")))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| Error::invalid("key", e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    let name = rustls::pki_types::ServerName::try_from(server_name.to_owned())
        .map_err(|e| Error::invalid("server_name", e.to_string()))?;
    let tcp = tokio::time::timeout(HANDSHAKE_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| Error::Unavailable(format!("{addr}: connect timed out")))?
        .map_err(|e| Error::Unavailable(format!("{addr}: {e}")))?;
    let conn = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp),
    )
    .await
    .map_err(|_| Error::Unavailable(format!("{addr}: TLS handshake timed out")))?
    .map_err(|e| Error::Unavailable(format!("{addr}: TLS handshake failed: {e}")))?;
    let der = conn
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or_else(|| Error::Unavailable(format!("{addr} presented no certificate")))?;
    CertInfo::from_der(der).map_err(|e| Error::Unavailable(format!("{addr}: {e}")))
}

/// TLS flags of the command-line clients (`yidi admin`, `hospital`, `clearing`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ClientArgs {
    /// The federation CA certificate (PEM) that the server's certificate must chain to.
    /// With --cert and --key: mutual TLS. Without all three: plain text (a server in
    /// --insecure loopback mode only).
    #[arg(long, env = "YIDI_CA", global = true)]
    pub ca: Option<PathBuf>,
    /// Your certificate (PEM), issued by `yidi certs operator|hospital`.
    #[arg(long, env = "YIDI_CERT", global = true)]
    pub cert: Option<PathBuf>,
    /// Your private key (PEM).
    #[arg(long, env = "YIDI_KEY", global = true)]
    pub key: Option<PathBuf>,
    /// The name the server's certificate must carry, when it differs from the host in
    /// the URL, e.g. node-330100.yidi.
    #[arg(long, env = "YIDI_TLS_SERVER_NAME", global = true)]
    pub tls_server_name: Option<String>,
}

impl ClientArgs {
    /// Client TLS from explicit files.
    #[must_use]
    pub fn files(ca: &Path, cert: &Path, key: &Path) -> Self {
        Self {
            ca: Some(ca.to_path_buf()),
            cert: Some(cert.to_path_buf()),
            key: Some(key.to_path_buf()),
            tls_server_name: None,
        }
    }

    /// The client TLS configuration, or `None` for plain text. A file that cannot be
    /// read is named with its flag.
    pub fn config(&self) -> anyhow::Result<Option<ClientTlsConfig>> {
        use anyhow::Context;
        let (ca, cert, key) = match (&self.ca, &self.cert, &self.key) {
            (None, None, None) => return Ok(None),
            (Some(ca), Some(cert), Some(key)) => (ca, cert, key),
            _ => anyhow::bail!(
                "mutual TLS needs all three of --ca, --cert and --key (or YIDI_CA, YIDI_CERT, YIDI_KEY)"
            ),
        };
        let read = |p: &PathBuf, what: &str, flag: &str| {
            std::fs::read(p).with_context(|| format!("cannot read {what} {} ({flag})", p.display()))
        };
        let mut cfg = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read(ca, "certificate", "--ca")?))
            .identity(tonic::transport::Identity::from_pem(
                read(cert, "certificate", "--cert")?,
                read(key, "key", "--key")?,
            ))
            .timeout(HANDSHAKE_TIMEOUT);
        if let Some(name) = &self.tls_server_name {
            cfg = cfg.domain_name(name.clone());
        }
        Ok(Some(cfg))
    }

    /// An endpoint for `url` with this TLS configuration (see [`endpoint`]).
    pub fn endpoint(&self, url: &str) -> anyhow::Result<Endpoint> {
        self.endpoint_with(url, self.config()?)
    }

    /// An endpoint for `url` with `tls` (from [`ClientArgs::config`]): callers that
    /// word a bad URL themselves read the files first, so that an unreadable
    /// certificate is not reported as a bad URL.
    pub fn endpoint_with(
        &self,
        url: &str,
        tls: Option<ClientTlsConfig>,
    ) -> anyhow::Result<Endpoint> {
        if tls.is_none() && url.starts_with("https://") {
            anyhow::bail!(
                "{url} is https: give --ca, --cert and --key (or YIDI_CA, YIDI_CERT, YIDI_KEY)"
            );
        }
        endpoint(url, tls).map_err(|e| anyhow::anyhow!("{url:?} is not a valid address: {e}"))
    }
}

/// Whether the server of a plain-text `endpoint` wants TLS instead. A client without
/// certificates would otherwise learn it only from its first call, as a bare
/// CANCELLED or "h2 protocol error". It opens one TCP connection and sends the HTTP/2
/// preface: a plain-text gRPC server answers with a SETTINGS frame; a TLS server
/// answers with a TLS alert record or closes the connection. `false` when nothing
/// answers in time or nothing listens (the real connect then reports that).
pub async fn wants_tls(endpoint: &Endpoint) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const PROBE: Duration = Duration::from_secs(3);
    let uri = endpoint.uri();
    let Some(host) = uri.host() else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(80);
    let Ok(Ok(mut tcp)) = tokio::time::timeout(PROBE, TcpStream::connect((host, port))).await
    else {
        return false;
    };
    // The client preface and an empty SETTINGS frame (RFC 9113 §3.4).
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    if tcp.write_all(&hello).await.is_err() {
        return true;
    }
    let mut head = [0u8; 9];
    match tokio::time::timeout(PROBE, tcp.read(&mut head)).await {
        Err(_) => false,
        // Closed or reset without a frame: a TLS server dropping a failed handshake.
        Ok(Err(_) | Ok(0)) => true,
        // 0x15: a TLS alert record; 0x16: a TLS handshake record.
        Ok(Ok(_)) if head[0] == 0x15 || head[0] == 0x16 => true,
        Ok(Ok(_)) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_only_on_loopback_and_only_when_asked() {
        let lo: SocketAddr = "127.0.0.1:7101".parse().expect("addr");
        let any: SocketAddr = "0.0.0.0:7101".parse().expect("addr");
        let v6: SocketAddr = "[::1]:7101".parse().expect("addr");
        let insecure = SecurityConfig::insecure_loopback();
        assert_eq!(insecure.transport(lo).expect("loopback"), None);
        assert_eq!(insecure.transport(v6).expect("loopback v6"), None);
        assert!(insecure.transport(any).is_err());
        let none = SecurityConfig::default();
        assert!(
            none.transport(lo).is_err(),
            "no TLS files and no --insecure"
        );
        let p = Path::new("x");
        let both = SecurityConfig {
            insecure: true,
            ..SecurityConfig::tls(p, p, p, None)
        };
        assert!(both.transport(lo).is_err());
        assert!(
            SecurityConfig::tls(p, p, p, None)
                .transport(any)
                .expect("tls")
                .is_some()
        );
    }

    #[test]
    fn endpoint_scheme_follows_the_transport() {
        let ep = endpoint("http://127.0.0.1:7101", None).expect("plain");
        assert_eq!(ep.uri().to_string(), "http://127.0.0.1:7101/");
        let ep = endpoint("127.0.0.1:7101", None).expect("bare");
        assert_eq!(ep.uri().scheme_str(), Some("http"));
        let ep = endpoint("http://127.0.0.1:7101", Some(ClientTlsConfig::new())).expect("tls");
        assert_eq!(ep.uri().scheme_str(), Some("https"));
    }
}
