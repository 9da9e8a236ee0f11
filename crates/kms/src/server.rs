//! The HTTP(S) front end: AWS KMS JSON 1.1 over hyper 1, optionally TLS (rustls, aws-lc-rs).
//!
//! Each connection is served by hyper's HTTP/1.1 implementation with keep-alive on a
//! multi-threaded tokio runtime. A request is: body read with a hard cap ([`MAX_BODY`]), SigV4
//! verified, `X-Amz-Target` mapped to an operation, then [`Service::handle`]. Store writes and
//! key-pair generation run under `block_in_place` so they do not stall other connections.
//! [`open`] prepares a data directory the first time (store, master key, administrator
//! credential file).

use crate::config::{Config, ConfigError};
use crate::error::KmsError;
use crate::recipient::RecipientGate;
use crate::service::{is_blocking, Service};
use crate::sigv4::{Credential, SignedRequest, Verifier};
use crate::store::{write_private_file, AdminCredential, Store, StoreError};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use thiserror::Error;
use tokio::net::TcpListener;
use zeroize::Zeroizing;

/// Largest request body (an attestation document of 256 KiB is ~350 KB in base64).
pub const MAX_BODY: usize = 512 * 1024;
/// Most bytes of a too-large body read (and discarded) before answering.
pub const MAX_DRAIN: usize = 8 * 1024 * 1024;
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
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App").finish_non_exhaustive()
    }
}

/// Opens the data directory (creating the store, master key and admin credential on first use)
/// and builds the application. Returns it with the administrator credential.
pub fn open(data_dir: &Path, config: &Config) -> Result<(Arc<App>, AdminCredential), ServerError> {
    config.validate()?;
    let master = config
        .master_key_path
        .clone()
        .unwrap_or_else(|| data_dir.join(MASTER_KEY_FILE));
    let store = Store::open(data_dir, &master)?;
    let admin = store
        .admin_credential()
        .map_err(|e| ServerError::Admin(e.to_string()))?;
    let cred_file = data_dir.join(ADMIN_CREDENTIALS_FILE);
    if !cred_file.exists() {
        let json = Zeroizing::new(
            serde_json::to_vec_pretty(&admin).map_err(|e| ServerError::Admin(e.to_string()))?,
        );
        write_private_file(&cred_file, &json)?;
    }
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
    let service = Service::new(store, config.region(), config.account_id(), gate);
    service
        .maintain()
        .map_err(|e| ServerError::Admin(format!("initial upkeep: {e}")))?;
    let verifier = Verifier::new(config.region(), creds);
    Ok((Arc::new(App { service, verifier }), admin))
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
    if let Ok(v) = hyper::header::HeaderValue::from_str(&uuid::Uuid::new_v4().to_string()) {
        h.insert("x-amzn-requestid", v);
    }
    r
}

fn error_response(e: &KmsError) -> Response<Full<Bytes>> {
    respond(e.http_status(), e.to_json())
}

/// Reads and discards up to [`MAX_DRAIN`] more bytes of a refused body, so the client can read
/// the error instead of seeing the connection reset under its upload.
async fn drain(mut body: Incoming) {
    let mut seen = 0usize;
    while let Some(Ok(frame)) = body.frame().await {
        if let Ok(d) = frame.into_data() {
            seen += d.len();
        }
        if seen > MAX_DRAIN {
            break;
        }
    }
}

/// Handles one HTTP request.
pub async fn handle(app: Arc<App>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    match handle_inner(app, req).await {
        Ok(body) => respond(200, body),
        Err(e) => error_response(&e),
    }
}

async fn handle_inner(app: Arc<App>, req: Request<Incoming>) -> Result<Vec<u8>, KmsError> {
    let (parts, body) = req.into_parts();
    if parts.method != hyper::Method::POST {
        return Err(KmsError::NotImplemented(
            "Only POST / is served (AWS KMS JSON 1.1 protocol)".into(),
        ));
    }
    let too_large =
        || KmsError::RequestTooLarge(format!("Request body is larger than {MAX_BODY} bytes"));
    if let Some(len) = parts.headers.get(hyper::header::CONTENT_LENGTH) {
        let len: u64 = len
            .to_str()
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| KmsError::Serialization("Invalid Content-Length".into()))?;
        if len > MAX_BODY as u64 {
            drain(body).await;
            return Err(too_large());
        }
    }
    let mut body = body;
    let mut buf = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| KmsError::Serialization(format!("reading body: {e}")))?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > MAX_BODY {
                drain(body).await;
                return Err(too_large());
            }
            buf.extend_from_slice(&data);
        }
    }
    let body = buf;
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
        body: &body,
    };
    let principal = app.verifier.verify(&signed, epoch_now())?;
    let target = parts
        .headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| KmsError::UnknownOperation("Missing X-Amz-Target".into()))?;
    let op = target
        .strip_prefix("TrentService.")
        .ok_or_else(|| KmsError::UnknownOperation(format!("Unknown target {target}")))?;
    if is_blocking(op) {
        let op = op.to_string();
        tokio::task::block_in_place(|| app.service.handle(&op, &principal, &body))
    } else {
        app.service.handle(op, &principal, &body)
    }
}

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
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let app = app.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(app, req).await) }
            });
            let builder = hyper::server::conn::http1::Builder::new();
            let result = match tls {
                Some(acceptor) => match acceptor.accept(stream).await {
                    Ok(s) => builder.serve_connection(TokioIo::new(s), svc).await,
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                },
                None => builder.serve_connection(TokioIo::new(stream), svc).await,
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    upkeep.abort();
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
