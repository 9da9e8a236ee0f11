//! The HTTP(S) front end: AWS KMS JSON 1.1 over hyper 1, optionally TLS (rustls, aws-lc-rs).
//!
//! Each connection is served by hyper's HTTP/1.1 implementation with keep-alive on a
//! multi-threaded tokio runtime. A request is: body read with a hard cap ([`MAX_BODY`]) and a
//! deadline, SigV4 verified, `X-Amz-Target` mapped to an operation, then [`Service::handle`].
//! Store writes and key-pair generation run under `block_in_place` so they do not stall other
//! connections. [`open`] prepares a data directory the first time (store, master key,
//! administrator credential file).
//!
//! Clients are not trusted to behave: every connection is watched ([`conn`]) so that an idle
//! one, a request head or a request body that takes too long is closed; a declared body over
//! the cap is refused with 413 before any of it is read (and without `100 Continue`); and the
//! number of connections stays below the descriptor limit, the connections idle longest making
//! room for new ones.

pub mod conn;

use crate::config::{Config, ConfigError};
use crate::error::KmsError;
use crate::recipient::RecipientGate;
use crate::service::{is_blocking, Service};
use crate::sigv4::{Credential, SignedRequest, Verifier};
use crate::store::{write_private_file, AdminCredential, Store, StoreError};
use bytes::Bytes;
use conn::{Conn, ConnGuard, Limits, Phase, Registry, Tracked, TrackedBody};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use zeroize::Zeroizing;

/// Largest request body (an attestation document of 256 KiB is ~350 KB in base64).
pub const MAX_BODY: usize = 512 * 1024;
/// Interval of the upkeep task (pending deletions, automatic rotation).
pub const MAINTENANCE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);
/// Name of the administrator credential file in the data directory.
pub const ADMIN_CREDENTIALS_FILE: &str = "admin-credentials.json";
/// Default name of the master key file in the data directory.
pub const MASTER_KEY_FILE: &str = "master.key";

/// Errors starting the server.
#[derive(Debug, Error)]
pub enum ServerError {
    /// The config is not usable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The store cannot be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The administrator credential cannot be read or created.
    #[error("administrator credential: {0}")]
    Admin(String),
    /// The attestation trust anchors are not usable.
    #[error("attestation trust anchors: {0}")]
    TrustAnchors(String),
    /// TLS certificate or key unusable.
    #[error("TLS {0}: {1}")]
    Tls(PathBuf, String),
    /// Socket error.
    #[error("listen on {0}")]
    Listen(String, #[source] std::io::Error),
}

/// What every request handler shares.
pub struct App {
    /// The operations.
    pub service: Service,
    /// SigV4 verifier.
    pub verifier: Verifier,
    /// Connection timeouts.
    pub limits: Limits,
    /// Configured connection cap (lowered further to fit the descriptor limit by [`serve`]).
    pub max_connections: usize,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App").finish_non_exhaustive()
    }
}

/// Opens the data directory (creating the store, master key and admin credential on first use,
/// each atomically, see [`Store::open`]) and builds the application. Returns it with the
/// administrator credential.
pub fn open(data_dir: &Path, config: &Config) -> Result<(Arc<App>, AdminCredential), ServerError> {
    config.validate()?;
    let master = config
        .master_key_path
        .clone()
        .unwrap_or_else(|| data_dir.join(MASTER_KEY_FILE));
    let store = Store::open_configured(data_dir, &master, &config.store)?;
    let admin = store
        .admin_credential()
        .map_err(|e| ServerError::Admin(e.to_string()))?;
    write_admin_file(&data_dir.join(ADMIN_CREDENTIALS_FILE), &admin)?;
    let mut creds = HashMap::new();
    creds.insert(
        admin.access_key_id.clone(),
        Credential {
            secret: admin.secret_access_key.clone(),
            principal: format!("arn:aws:iam::{}:root", config.account_id()),
        },
    );
    for c in &config.credentials {
        creds.insert(
            c.access_key_id.clone(),
            Credential {
                secret: Zeroizing::new(c.secret_access_key.clone()),
                principal: config.principal_arn(&c.principal),
            },
        );
    }
    let anchors = config.trust_anchor_ders()?;
    let gate = if anchors.is_empty() {
        None
    } else {
        let verifier = cloister_attestation::Verifier::new(anchors)
            .map_err(|e| ServerError::TrustAnchors(e.to_string()))?;
        Some(RecipientGate::new(verifier, config.attestation_max_age()))
    };
    let service = Service::new(store, config.region(), config.account_id(), gate)
        .with_regions(&config.other_regions);
    service
        .maintain()
        .map_err(|e| ServerError::Admin(format!("initial upkeep: {e}")))?;
    let mut verifier = Verifier::new(config.region(), creds).with_regions(&config.other_regions);
    for c in &config.credentials {
        if let Some(t) = &c.session_token {
            verifier = verifier.with_session_token(&c.access_key_id, t);
        }
    }
    let limits = Limits {
        header_read: config.server.header_read_timeout(),
        body_read: config.server.body_read_timeout(),
        idle: config.server.idle_timeout(),
    };
    let app = App {
        service,
        verifier,
        limits,
        max_connections: config.server.max_connections(),
    };
    Ok((Arc::new(app), admin))
}

/// Writes the administrator credential file (mode 0600, atomically) unless it already holds
/// this credential.
fn write_admin_file(path: &Path, admin: &AdminCredential) -> Result<(), ServerError> {
    match std::fs::read(path) {
        Ok(bytes) => {
            let bytes = Zeroizing::new(bytes);
            let current: Option<AdminCredential> = serde_json::from_slice(&bytes).ok();
            if current.is_some_and(|c| {
                c.access_key_id == admin.access_key_id
                    && c.secret_access_key == admin.secret_access_key
            }) {
                return Ok(());
            }
            tracing::warn!(path = %path.display(), "replacing a stale administrator credential file");
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(ServerError::Admin(format!("{}: {e}", path.display()))),
    }
    let json = Zeroizing::new(
        serde_json::to_vec_pretty(admin).map_err(|e| ServerError::Admin(e.to_string()))?,
    );
    write_private_file(path, &json)?;
    Ok(())
}

/// Builds a TLS acceptor from PEM files.
pub fn tls_acceptor(cert: &Path, key: &Path) -> Result<tokio_rustls::TlsAcceptor, ServerError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| ServerError::Tls(cert.into(), e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| ServerError::Tls(cert.into(), e.to_string()))?;
    if certs.is_empty() {
        return Err(ServerError::Tls(cert.into(), "no certificate".into()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| ServerError::Tls(key.into(), e.to_string()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ServerError::Tls(cert.into(), e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| ServerError::Tls(cert.into(), e.to_string()))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}

fn epoch_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn respond(status: u16, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let h = r.headers_mut();
    h.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/x-amz-json-1.1"),
    );
    h.insert("x-amzn-requestid", request_id());
    r
}

/// A fresh request id in AWS's form (a version 4 UUID): 72 bits drawn once per process from
/// aws-lc's generator and a 56-bit count of responses, so ids are unique within a process and
/// across restarts, and a response costs no random draw. The id only correlates logs; it
/// protects nothing.
fn request_id() -> hyper::header::HeaderValue {
    static BASE: std::sync::OnceLock<[u8; 16]> = std::sync::OnceLock::new();
    static COUNT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let base = BASE.get_or_init(|| {
        let mut b = [0u8; 16];
        // A failed draw leaves zeros: the ids stay unique within the process.
        let _ = aws_lc_rs::rand::fill(&mut b);
        b
    });
    let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut bytes = *base;
    // Bytes 9 to 15 hold the count; the version and variant bits (bytes 6 and 8) are not
    // among them.
    for (b, c) in bytes[9..].iter_mut().zip(&n.to_be_bytes()[1..]) {
        *b ^= c;
    }
    let id = uuid::Builder::from_random_bytes(bytes).into_uuid();
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let text = id.hyphenated().encode_lower(&mut buf);
    hyper::header::HeaderValue::from_str(text)
        .unwrap_or_else(|_| hyper::header::HeaderValue::from_static("0"))
}

fn error_response(e: &KmsError) -> Response<Full<Bytes>> {
    respond(e.http_status(), e.to_json())
}

/// What follows a response on its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum After {
    /// Keep the connection for the next request.
    KeepAlive,
    /// Close it.
    Close,
    /// Close it, discarding for a while what the client still sends of a refused body, so that
    /// it reads the refusal instead of a reset.
    Linger,
}

/// A response and what happens to the connection after it.
struct Reply {
    response: Response<Full<Bytes>>,
    after: After,
}

impl Reply {
    fn error(e: &KmsError, after: After) -> Reply {
        Reply {
            response: error_response(e),
            after,
        }
    }
}

/// The 413 for a body over [`MAX_BODY`]; the connection is closed after it.
fn too_large() -> Reply {
    Reply::error(
        &KmsError::RequestTooLarge(format!("Request body is larger than {MAX_BODY} bytes")),
        After::Linger,
    )
}

/// The 408 for a body not received within the body read timeout.
fn body_timeout(limit: std::time::Duration) -> Reply {
    let body = serde_json::json!({
        "__type": "RequestTimeoutException",
        "message": format!("The request body did not arrive within {} ms", limit.as_millis()),
    });
    Reply {
        response: respond(408, serde_json::to_vec(&body).unwrap_or_default()),
        after: After::Close,
    }
}

/// Why a body was not read.
enum BodyError {
    TooLarge,
    Read(hyper::Error),
}

/// Reads a whole body of at most [`MAX_BODY`] bytes.
async fn read_body(mut body: Incoming) -> Result<Vec<u8>, BodyError> {
    let mut buf = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(BodyError::Read)?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > MAX_BODY {
                return Err(BodyError::TooLarge);
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf)
}

/// Handles one HTTP request.
pub async fn handle(app: Arc<App>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let reply = handle_request(&app, req, None).await;
    finish_response(reply)
}

/// The response of `reply`, marked `Connection: close` unless the connection is kept.
fn finish_response(reply: Reply) -> Response<Full<Bytes>> {
    let mut r = reply.response;
    if reply.after != After::KeepAlive {
        r.headers_mut().insert(
            hyper::header::CONNECTION,
            hyper::header::HeaderValue::from_static("close"),
        );
    }
    r
}

async fn handle_request(app: &App, req: Request<Incoming>, client: Option<ClientAddr>) -> Reply {
    let (parts, body) = req.into_parts();
    // A declared body over the cap is refused before any of it is read (reading it is what
    // would send `100 Continue`), and before anything else is looked at.
    if let Some(len) = parts.headers.get(hyper::header::CONTENT_LENGTH) {
        match len.to_str().ok().and_then(|s| s.parse::<u64>().ok()) {
            Some(len) if len > MAX_BODY as u64 => return too_large(),
            Some(_) => {}
            None => {
                return Reply::error(
                    &KmsError::Serialization("Invalid Content-Length".into()),
                    After::Close,
                )
            }
        }
    }
    if parts.method != hyper::Method::POST {
        return Reply::error(
            &KmsError::NotImplemented("Only POST / is served (AWS KMS JSON 1.1 protocol)".into()),
            After::KeepAlive,
        );
    }
    let limit = app.limits.body_read;
    // A small body usually arrives with its head, and is read without arming a timer; only a
    // body still on its way is read under the deadline.
    let mut reading = std::pin::pin!(read_body(body));
    let ready =
        std::future::poll_fn(|cx| std::task::Poll::Ready(reading.as_mut().poll(cx).map(Ok))).await;
    let read = match ready {
        std::task::Poll::Ready(r) => r,
        std::task::Poll::Pending => tokio::time::timeout(limit, reading).await,
    };
    let body = match read {
        Err(_elapsed) => return body_timeout(limit),
        Ok(Err(BodyError::TooLarge)) => return too_large(),
        Ok(Err(BodyError::Read(e))) => {
            return Reply::error(
                &KmsError::Serialization(format!("reading body: {e}")),
                After::Close,
            )
        }
        Ok(Ok(body)) => body,
    };
    let response = match dispatch(app, &parts, &body, client) {
        Ok(out) => respond(200, out),
        Err(e) => error_response(&e),
    };
    Reply {
        response,
        after: After::KeepAlive,
    }
}

/// Verifies a read request and runs its operation.
fn dispatch(
    app: &App,
    parts: &hyper::http::request::Parts,
    body: &[u8],
    client: Option<ClientAddr>,
) -> Result<Vec<u8>, KmsError> {
    let headers: Vec<(&str, &[u8])> = parts
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_bytes()))
        .collect();
    let signed = SignedRequest {
        method: parts.method.as_str(),
        path: parts.uri.path(),
        query: parts.uri.query().unwrap_or(""),
        headers: &headers,
        body,
    };
    let (principal, region) = app.verifier.verify_scoped(&signed, epoch_now())?;
    let mut caller = cloister_kms_caller(principal, region);
    if let Some(client) = client {
        caller.source_ip = Some(client.0.ip());
        caller.secure_transport = Some(client.1);
    }
    let target = parts
        .headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| KmsError::UnknownOperation("Missing X-Amz-Target".into()))?;
    let op = target
        .strip_prefix("TrentService.")
        .ok_or_else(|| KmsError::UnknownOperation(format!("Unknown target {target}")))?;
    if is_blocking(op) {
        tokio::task::block_in_place(|| app.service.handle_caller(op, caller, body))
    } else {
        app.service.handle_caller(op, caller, body)
    }
}

/// The address of the client of a request, and whether it came over TLS (`aws:SourceIp` and
/// `aws:SecureTransport` of the request's policy evaluation), handed from the connection to
/// each of its requests.
#[derive(Debug, Clone, Copy)]
struct ClientAddr(SocketAddr, bool);

/// The caller of a verified request: its principal and the Region of its credential scope.
fn cloister_kms_caller(principal: String, region: String) -> crate::service::ops::Caller {
    crate::service::ops::Caller {
        principal,
        region: Some(region),
        ..Default::default()
    }
}

/// The future a connection's service returns (boxed, so that the connection can hand its
/// socket back when it ends).
type ReplyFuture = Pin<Box<dyn Future<Output = Result<Response<TrackedBody>, Infallible>> + Send>>;

/// Serves connections from `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    app: Arc<App>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
) {
    let upkeep_app = app.clone();
    let upkeep = tokio::spawn(async move {
        let mut tick = tokio::time::interval(MAINTENANCE_INTERVAL);
        tick.tick().await;
        loop {
            tick.tick().await;
            let a = upkeep_app.clone();
            let _ = tokio::task::spawn_blocking(move || {
                if let Err(e) = a.service.maintain() {
                    tracing::warn!(error = %e, "key upkeep failed");
                }
            })
            .await;
        }
    });
    let registry = Registry::new(conn::connection_cap(app.max_connections));
    tracing::info!(max_connections = registry.cap(), "connection limit");
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let Some(guard) = registry.admit() else {
            tracing::debug!(%peer, "connection limit reached and every connection is busy");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection(stream, peer, guard, app.clone(), tls.clone()));
    }
    upkeep.abort();
}

/// Serves one accepted connection, closing it when shed or when its phase runs out of time.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    guard: ConnGuard,
    app: Arc<App>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let conn = guard.conn().clone();
    let io = Tracked::new(stream, conn.clone());
    match tls {
        None => drive(io, ClientAddr(peer, false), conn, app).await,
        Some(acceptor) => {
            // The handshake counts as part of the first request head.
            conn.enter(Phase::Head);
            let handshake = tokio::select! {
                r = tokio::time::timeout(app.limits.header_read, acceptor.accept(io)) => r,
                _ = conn.shed() => return,
            };
            match handshake {
                Ok(Ok(s)) => {
                    conn.enter(Phase::Idle);
                    drive(s, ClientAddr(peer, true), conn, app).await;
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        }
    }
    drop(guard);
}

/// Runs HTTP/1.1 on `io` under the connection's deadlines.
async fn drive<S>(io: S, client: ClientAddr, conn: Arc<Conn>, app: Arc<App>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let peer = client.0;
    let limits = app.limits;
    let svc_conn = conn.clone();
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| -> ReplyFuture {
        let app = app.clone();
        let conn = svc_conn.clone();
        let n = conn.begin_request();
        Box::pin(async move {
            let reply = handle_request(&app, req, Some(client)).await;
            if reply.after == After::Linger {
                conn.request_linger();
            }
            Ok(finish_response(reply).map(|b| TrackedBody::new(b, conn, n)))
        })
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    // The deadlines kept below cover the request head (idle, then head phase); hyper's own
    // head timer would arm and cancel a timer on every request, so it is off.
    builder.timer(TokioTimer::new()).header_read_timeout(None);
    let serving = builder
        .serve_connection(TokioIo::new(io), svc)
        .without_shutdown();
    tokio::pin!(serving);
    // One timer for the connection's life, moved only when it fires (see `Conn::next_check`):
    // phase changes wake nothing.
    let check = tokio::time::sleep_until(conn.next_check(&limits, tokio::time::Instant::now()));
    tokio::pin!(check);
    let ended = loop {
        tokio::select! {
            r = &mut serving => break r,
            _ = conn.shed() => return,
            _ = &mut check => {
                let now = tokio::time::Instant::now();
                if now >= conn.deadline(&limits) {
                    tracing::debug!(%peer, phase = ?conn.phase(), "connection timed out");
                    return;
                }
                check.as_mut().reset(conn.next_check(&limits, now));
            }
        }
    };
    let parts = match ended {
        Ok(parts) => parts,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "connection ended with an error");
            return;
        }
    };
    conn.enter(Phase::Closing);
    let io = parts.io.into_inner();
    let lingers = conn.lingers();
    tokio::select! {
        _ = close(io, lingers) => {}
        _ = conn.shed() => {}
        _ = tokio::time::sleep(conn::LINGER_TIMEOUT) => {}
    }
}

/// Shuts the connection down; when `linger`, first discards (for at most
/// [`conn::LINGER_TIMEOUT`], [`conn::LINGER_BYTES`]) what the client still sends.
async fn close<S: AsyncRead + AsyncWrite + Unpin>(mut io: S, linger: bool) {
    if io.shutdown().await.is_err() || !linger {
        return;
    }
    let mut buf = vec![0u8; 16 * 1024];
    let mut seen = 0usize;
    while seen <= conn::LINGER_BYTES {
        match io.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => seen += n,
        }
    }
}

/// Binds `addr` (for the CLI): returns the listener and its local address.
pub async fn bind(addr: &str) -> Result<(TcpListener, SocketAddr), ServerError> {
    let l = TcpListener::bind(addr)
        .await
        .map_err(|e| ServerError::Listen(addr.into(), e))?;
    let a = l
        .local_addr()
        .map_err(|e| ServerError::Listen(addr.into(), e))?;
    Ok((l, a))
}

/// Everything `cloister kms serve` needs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Address to listen on (`127.0.0.1:0` picks a port).
    pub listen: String,
    /// Data directory.
    pub data_dir: PathBuf,
    /// TLS certificate chain and key (PEM).
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Configuration.
    pub config: Config,
}

/// What a started server reports.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Started {
    /// The bound address.
    pub listen: SocketAddr,
    /// `http://` or `https://` URL for `--endpoint-url`.
    pub endpoint: String,
    /// Region.
    pub region: String,
    /// Account id.
    pub account_id: String,
    /// Where the administrator credential is.
    pub admin_credentials_file: PathBuf,
}

/// Runs the server on a multi-threaded runtime until SIGINT or SIGTERM; calls `ready` once it
/// listens.
pub fn serve_blocking(opts: ServeOptions, ready: impl FnOnce(&Started)) -> Result<(), ServerError> {
    let (app, _admin) = open(&opts.data_dir, &opts.config)?;
    let tls = match &opts.tls {
        Some((c, k)) => Some(tls_acceptor(c, k)?),
        None => None,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| ServerError::Listen("runtime".into(), e))?;
    rt.block_on(async move {
        let (listener, addr) = bind(&opts.listen).await?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        ready(&Started {
            listen: addr,
            endpoint: format!("{scheme}://{addr}"),
            region: opts.config.region().to_string(),
            account_id: opts.config.account_id().to_string(),
            admin_credentials_file: opts.data_dir.join(ADMIN_CREDENTIALS_FILE),
        });
        let shutdown = async {
            let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
            match term {
                Ok(mut t) => {
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => {}
                        _ = t.recv() => {}
                    }
                }
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        };
        serve(listener, app, tls, shutdown).await;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::request_id;

    #[test]
    fn request_ids_are_distinct_version_4_uuids() {
        let ids: Vec<String> = (0..1000)
            .map(|_| request_id().to_str().unwrap().to_string())
            .collect();
        let distinct: std::collections::HashSet<&String> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len());
        for id in &ids {
            let u = uuid::Uuid::parse_str(id).unwrap();
            assert_eq!(u.get_version_num(), 4, "{id}");
            assert_eq!(u.get_variant(), uuid::Variant::RFC4122, "{id}");
        }
    }
}
