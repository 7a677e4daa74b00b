//! The web console: server-rendered HTML pages over HTTPS, a transport beside gRPC and
//! the NHSA gateway. The coordinator serves the clearing desk (`coordinator::desk`, its
//! transport beside its gRPC service), each node its agency's pages ([`agency`]), each
//! on a listener of its own (`console_listen`).
//!
//! This module is what both share: the HTTPS accept loop (the server's own certificate
//! from [`crate::tls`], HTTP/1.1, a client certificate optional), who is signed in
//! (an operator certificate presented by the browser, or a session opened by a
//! [`login`] link), CSRF tokens on every form, one outcome per form's request id, and
//! the language. Who may see and do what is the gRPC access table
//! ([`crate::auth::authorize`]) applied to the method an action stands for; actions
//! call the same service code as gRPC.
//!
//! The console needs TLS: without certificates there is no operator to sign in, so a
//! server in `--insecure` mode refuses `console_listen`.

pub mod agency;
pub mod login;
pub(crate) mod page;
mod session;

use std::{collections::HashMap, convert::Infallible, future::Future, sync::Arc, time::Duration};

use bytes::Bytes;
use futures::future::BoxFuture;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, Response, StatusCode, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use maud::Markup;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

pub use page::Lang;

use crate::{
    Error, Result,
    auth::Server,
    identity::{CertInfo, Identity},
    tls::TlsState,
};

/// The largest form body the console reads.
const MAX_FORM_BYTES: usize = 64 * 1024;
/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The session cookie's name.
const COOKIE: &str = "yidi_console";
const LANG_COOKIE: &str = "yidi_lang";

/// Seconds since the Unix epoch.
fn now_secs() -> i64 {
    chrono::Utc::now().timestamp()
}

/// How the operator signed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// The browser presented the operator's certificate (mutual TLS).
    Certificate,
    /// A session opened by a login link.
    Link,
}

/// The signed-in operator.
#[derive(Debug, Clone)]
pub struct Principal {
    pub cert: Arc<CertInfo>,
    pub via: Via,
    /// What the CSRF token is bound to (the session id, or the certificate serial).
    key: String,
}

/// One request, as a page or an action sees it.
#[derive(Debug)]
pub struct Req {
    pub method: Method,
    /// The path split at `/`, without empty parts.
    pub segments: Vec<String>,
    pub query: HashMap<String, String>,
    /// A POST's form fields (CSRF already checked).
    pub form: HashMap<String, String>,
    pub lang: Lang,
    pub who: Principal,
    /// The token every form of the page carries.
    pub csrf: String,
    /// The outcome of the action this page was redirected from (`?done=<request id>`).
    pub flash: Option<Outcome>,
}

impl Req {
    /// A query parameter or form field, trimmed; "" when absent.
    #[must_use]
    pub fn field(&self, name: &str) -> &str {
        self.form
            .get(name)
            .or_else(|| self.query.get(name))
            .map_or("", |s| s.trim())
    }

    /// The text of `key` in the request's language.
    #[must_use]
    pub fn t(&self, key: &'static str) -> &'static str {
        page::t(self.lang, key)
    }
}

/// What an action did: shown once on the page it redirects to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub ok: bool,
    pub message: String,
    /// Where the browser goes next (a path of this console).
    pub location: String,
}

/// What a page handler answers.
pub enum Reply {
    Page {
        status: StatusCode,
        title: String,
        body: Markup,
        /// Reload every so many seconds (a round in progress).
        refresh: Option<u32>,
    },
    /// An action done: the browser is sent to `outcome.location`.
    Done(Outcome),
    /// A downloadable or embeddable body (an SVG chart, CSV).
    Raw {
        content_type: &'static str,
        body: String,
    },
}

impl Reply {
    /// A 200 page.
    #[must_use]
    pub fn page(title: impl Into<String>, body: Markup) -> Self {
        Reply::Page {
            status: StatusCode::OK,
            title: title.into(),
            body,
            refresh: None,
        }
    }

    /// An error page with `status`.
    #[must_use]
    pub fn error(status: StatusCode, title: impl Into<String>, message: &str) -> Self {
        Reply::Page {
            status,
            title: title.into(),
            body: maud::html! { p.error { (message) } },
            refresh: None,
        }
    }
}

/// A console's pages: the clearing desk or an agency.
pub trait App: Send + Sync + 'static {
    /// Answers a signed-in operator's request. For a POST the request id has already
    /// been checked for a repeat; the answer to a POST should be [`Reply::Done`].
    fn handle<'a>(&'a self, req: &'a Req) -> BoxFuture<'a, Reply>;
    /// The console's name in the page header ("Clearing desk 330000").
    fn name(&self, lang: Lang) -> String;
    /// The navigation links: (path, label key).
    fn nav(&self) -> &'static [(&'static str, &'static str)];
}

/// Everything a console server needs.
pub struct Console<A: App> {
    app: A,
    /// This server's identity: the audience of login links.
    me: Identity,
    /// The access table to apply.
    server: Server,
    /// The gRPC service whose read access opens the console.
    read_service: &'static str,
    read_method: &'static str,
    tls: Arc<TlsState>,
    links: login::Verifier,
    sessions: session::Sessions,
}

impl<A: App> Console<A> {
    /// A console for `app`, served as `me` under the access rules of `server`.
    #[must_use]
    pub fn new(
        app: A,
        me: Identity,
        server: Server,
        read: (&'static str, &'static str),
        tls: Arc<TlsState>,
    ) -> Arc<Self> {
        Arc::new(Self {
            links: login::Verifier::new(&me, now_secs()),
            app,
            me,
            server,
            read_service: read.0,
            read_method: read.1,
            tls,
            sessions: session::Sessions::new(),
        })
    }

    /// The identity of the server (the audience a login link must name).
    #[must_use]
    pub fn identity(&self) -> &Identity {
        &self.me
    }

    /// Whether `cert` may use this console at all (the read method of its service).
    fn admitted(&self, cert: &CertInfo) -> std::result::Result<(), String> {
        if self.tls.is_revoked(&cert.serial) {
            return Err(format!("certificate serial {} is revoked", cert.serial));
        }
        if cert.not_after < now_secs() {
            return Err(format!("certificate serial {} has expired", cert.serial));
        }
        crate::auth::authorize(
            &self.server,
            &cert.identity,
            self.read_service,
            self.read_method,
        )
        .map_err(|s| s.message().to_owned())
    }

    /// Whether the signed-in operator may call `method` of `service` — the same
    /// answer gRPC would give.
    pub fn may(
        &self,
        who: &Principal,
        service: &str,
        method: &str,
    ) -> std::result::Result<(), String> {
        crate::auth::authorize(&self.server, &who.cert.identity, service, method)
            .map_err(|s| s.message().to_owned())
    }
}

/// Binds the console's address, naming it in the error.
pub async fn bind(addr: std::net::SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Unavailable(format!("cannot listen for the console on {addr}: {e}")))
}

/// The refusal of a console without TLS.
#[must_use]
pub fn needs_tls() -> Error {
    Error::invalid(
        "console_listen",
        "the console needs mutual TLS (tls_cert, tls_key, tls_ca): without certificates no operator can sign in; drop console_listen or --insecure",
    )
}

/// Serves `console` on `listener` until `shutdown`; open connections are dropped at
/// shutdown (a browser reconnects).
pub async fn serve<A: App>(
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
    console: Arc<Console<A>>,
) {
    let addr = listener.local_addr().ok();
    tracing::info!(
        addr = addr.map(tracing::field::display),
        identity = %console.me,
        "console serving over HTTPS"
    );
    let mut conns = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, remote)) => {
                    let _ = tcp.set_nodelay(true);
                    let console = Arc::clone(&console);
                    let acceptor = TlsAcceptor::from(Arc::clone(&console.tls.current().console));
                    conns.spawn(async move {
                        let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                            Ok(Ok(c)) => c,
                            Ok(Err(e)) => return tracing::debug!(%remote, error = %e, "console TLS handshake refused"),
                            Err(_) => return tracing::debug!(%remote, "console TLS handshake timed out"),
                        };
                        let cert = tls
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|c| c.first())
                            .and_then(|der| CertInfo::from_der(der).ok())
                            .map(Arc::new);
                        let svc = service_fn(move |req| {
                            let console = Arc::clone(&console);
                            let cert = cert.clone();
                            async move { Ok::<_, Infallible>(handle(&console, cert, req).await) }
                        });
                        if let Err(e) = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(tls), svc)
                            .await
                        {
                            tracing::debug!(error = %e, "console connection ended with an error");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "console listener accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    conns.abort_all();
    while conns.join_next().await.is_some() {}
}

type Resp = Response<Full<Bytes>>;

fn cookies(req: &Request<Incoming>) -> HashMap<String, String> {
    req.headers()
        .get_all(hyper::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            Some((k.to_owned(), v.to_owned()))
        })
        .collect()
}

fn respond(status: StatusCode, content_type: &str, body: String) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    let h = r.headers_mut();
    let set = |h: &mut hyper::HeaderMap, k: &'static str, v: &str| {
        if let Ok(v) = hyper::header::HeaderValue::from_str(v) {
            h.insert(k, v);
        }
    };
    set(h, "content-type", content_type);
    // No script of the page's own; styles inline; charts are inline SVG.
    set(
        h,
        "content-security-policy",
        "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    );
    set(h, "x-frame-options", "DENY");
    set(h, "x-content-type-options", "nosniff");
    // A login link's token must not travel on in a Referer header.
    set(h, "referrer-policy", "no-referrer");
    set(h, "cache-control", "no-store");
    r
}

fn html(status: StatusCode, markup: Markup) -> Resp {
    respond(status, "text/html; charset=utf-8", markup.into_string())
}

fn redirect(location: &str) -> Resp {
    let mut r = respond(
        StatusCode::SEE_OTHER,
        "text/plain; charset=utf-8",
        String::new(),
    );
    if let Ok(v) = hyper::header::HeaderValue::from_str(location) {
        r.headers_mut().insert(hyper::header::LOCATION, v);
    }
    r
}

fn add_cookie(r: &mut Resp, cookie: &str) {
    if let Ok(v) = hyper::header::HeaderValue::from_str(cookie) {
        r.headers_mut().append(hyper::header::SET_COOKIE, v);
    }
}

fn parse_query(q: Option<&str>) -> HashMap<String, String> {
    q.map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}

async fn handle<A: App>(
    console: &Console<A>,
    conn_cert: Option<Arc<CertInfo>>,
    req: Request<Incoming>,
) -> Resp {
    let cookies = cookies(&req);
    let query = parse_query(req.uri().query());
    let (lang, set_lang) = match query.get("lang").and_then(|l| Lang::parse(l)) {
        Some(l) => (l, true),
        None => (
            cookies
                .get(LANG_COOKIE)
                .and_then(|l| Lang::parse(l))
                .unwrap_or_else(|| {
                    Lang::from_accept(
                        req.headers()
                            .get(hyper::header::ACCEPT_LANGUAGE)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or(""),
                    )
                }),
            false,
        ),
    };
    let mut resp = route(console, conn_cert, req, cookies, query, lang).await;
    if set_lang {
        add_cookie(
            &mut resp,
            &format!(
                "{LANG_COOKIE}={}; Path=/; Secure; SameSite=Strict; Max-Age=31536000",
                lang.code()
            ),
        );
    }
    resp
}

async fn route<A: App>(
    console: &Console<A>,
    conn_cert: Option<Arc<CertInfo>>,
    req: Request<Incoming>,
    cookies: HashMap<String, String>,
    query: HashMap<String, String>,
    lang: Lang,
) -> Resp {
    let t = |k| page::t(lang, k);
    let bare = |status, title: &str, message: &str| {
        html(
            status,
            page::bare(lang, title, maud::html! { p.error { (message) } }),
        )
    };
    let path = req.uri().path().to_owned();
    if path == "/login" {
        let Some(token) = query.get("t") else {
            return bare(StatusCode::UNAUTHORIZED, t("sign_in"), t("sign_in_how"));
        };
        let tls = console.tls.current();
        return match console.links.accept(
            token,
            &tls.roots,
            |s| console.tls.is_revoked(s),
            now_secs(),
        ) {
            Ok(ok) => match console.admitted(&ok.cert) {
                Ok(()) => {
                    let sid = console.sessions.open(Arc::clone(&ok.cert), now_secs());
                    tracing::info!(operator = %ok.cert.identity, serial = %ok.cert.serial, "console sign-in by login link");
                    let mut r = html(
                        StatusCode::OK,
                        page::signed_in(lang, &ok.cert.identity.to_string()),
                    );
                    add_cookie(
                        &mut r,
                        &format!("{COOKIE}={sid}; Path=/; HttpOnly; Secure; SameSite=Strict"),
                    );
                    r
                }
                Err(why) => bare(StatusCode::FORBIDDEN, t("refused"), &why),
            },
            Err(e) => {
                tracing::info!(reason = %e, "console login link refused");
                bare(StatusCode::UNAUTHORIZED, t("refused"), &e.to_string())
            }
        };
    }

    // Who: the browser's operator certificate, else a session.
    let session = cookies.get(COOKIE).and_then(|sid| {
        console
            .sessions
            .get(sid, now_secs())
            .map(|c| (sid.clone(), c))
    });
    let who = match (conn_cert, session) {
        (Some(cert), _) if matches!(cert.identity, Identity::Operator { .. }) => Principal {
            key: format!("c:{}", cert.serial),
            cert,
            via: Via::Certificate,
        },
        (_, Some((sid, cert))) => Principal {
            key: format!("s:{sid}"),
            cert,
            via: Via::Link,
        },
        _ => {
            return bare(StatusCode::UNAUTHORIZED, t("sign_in"), t("sign_in_how"));
        }
    };
    if let Err(why) = console.admitted(&who.cert) {
        return bare(StatusCode::FORBIDDEN, t("refused"), &why);
    }
    let csrf = console.sessions.csrf(&who.key);
    let method = req.method().clone();

    if path == "/logout" && method == Method::POST {
        let form = match read_form(req).await {
            Ok(f) => f,
            Err(r) => return r,
        };
        if !console
            .sessions
            .csrf_ok(&who.key, form.get("csrf").map_or("", String::as_str))
        {
            return bare(StatusCode::FORBIDDEN, t("refused"), t("csrf_bad"));
        }
        if let Some(sid) = who.key.strip_prefix("s:") {
            console.sessions.close(sid);
        }
        let mut r = bare(StatusCode::OK, t("signed_out"), t("signed_out_text"));
        add_cookie(
            &mut r,
            &format!("{COOKIE}=; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age=0"),
        );
        return r;
    }

    let mut form = HashMap::new();
    if method == Method::POST {
        form = match read_form(req).await {
            Ok(f) => f,
            Err(r) => return r,
        };
        if !console
            .sessions
            .csrf_ok(&who.key, form.get("csrf").map_or("", String::as_str))
        {
            tracing::warn!(operator = %who.cert.identity, %path, "console form refused: CSRF token missing or wrong");
            return bare(StatusCode::FORBIDDEN, t("refused"), t("csrf_bad"));
        }
    } else if method != Method::GET {
        return bare(StatusCode::METHOD_NOT_ALLOWED, t("refused"), "GET or POST");
    }
    let flash = query
        .get("done")
        .and_then(|rid| console.sessions.outcome(rid));
    let r = Req {
        method: method.clone(),
        segments: path
            .split('/')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        query,
        form,
        lang,
        who,
        csrf,
        flash,
    };

    if method == Method::POST {
        // One outcome per form: a repeat (double click, reload, lost answer) gets the
        // first one without doing anything again.
        let rid = r.field("request_id").to_owned();
        if rid.is_empty() || rid.len() > 64 {
            return bare(StatusCode::BAD_REQUEST, t("refused"), t("request_id_bad"));
        }
        let fingerprint = session::fingerprint(&path, &r.form);
        match console.sessions.replay(&rid, &fingerprint) {
            Ok(Some(o)) => return redirect(&done_location(&o.location, &rid)),
            Ok(None) => {}
            Err(()) => {
                return bare(StatusCode::CONFLICT, t("refused"), t("request_id_reused"));
            }
        }
        let reply = console.app.handle(&r).await;
        return match reply {
            Reply::Done(o) => {
                tracing::info!(operator = %r.who.cert.identity, %path, request_id = %rid, ok = o.ok, message = %o.message, "console action");
                let location = done_location(&o.location, &rid);
                console.sessions.record(&rid, fingerprint, o);
                redirect(&location)
            }
            other => render(console, &r, other),
        };
    }
    let reply = console.app.handle(&r).await;
    render(console, &r, reply)
}

fn done_location(location: &str, rid: &str) -> String {
    let sep = if location.contains('?') { '&' } else { '?' };
    let rid: String = form_urlencoded::byte_serialize(rid.as_bytes()).collect();
    format!("{location}{sep}done={rid}")
}

fn render<A: App>(console: &Console<A>, r: &Req, reply: Reply) -> Resp {
    match reply {
        Reply::Page {
            status,
            title,
            body,
            refresh,
        } => html(
            status,
            page::layout(
                r,
                &page::Frame {
                    console: console.app.name(r.lang),
                    nav: console.app.nav(),
                    title: &title,
                    refresh,
                },
                body,
            ),
        ),
        Reply::Done(o) => redirect(&o.location),
        Reply::Raw { content_type, body } => respond(StatusCode::OK, content_type, body),
    }
}

async fn read_form(req: Request<Incoming>) -> std::result::Result<HashMap<String, String>, Resp> {
    let too_big = || {
        respond(
            StatusCode::PAYLOAD_TOO_LARGE,
            "text/plain; charset=utf-8",
            format!("a form is at most {MAX_FORM_BYTES} bytes\n"),
        )
    };
    let body = Limited::new(req.into_body(), MAX_FORM_BYTES)
        .collect()
        .await
        .map_err(|_| too_big())?
        .to_bytes();
    Ok(form_urlencoded::parse(&body).into_owned().collect())
}
