//! The attested KMS client for code inside an enclave (what AWS's `kmstool-enclave-cli` does).
//!
//! A client generates one RSA-2048 key pair, on first use, and keeps it for its lifetime (as AWS's
//! Nitro Enclaves SDK does): generating a key costs tens of milliseconds and would otherwise sit
//! on every call's latency. For each call it asks the enclave's NSM (through an [`Attester`]) for
//! a fresh attestation document carrying the public key (DER SubjectPublicKeyInfo), and sends the
//! request with
//! `Recipient = {RSAES_OAEP_SHA_256, document}`. KMS answers with `CiphertextForRecipient`,
//! which only the private key, which never leaves this process, opens
//! ([`crate::recipient::open_ciphertext_for_recipient`]).
//!
//! The request goes over one connection per call: from an enclave, a vsock stream to the
//! parent's vsock-proxy (`(3, proxy_port)`), which carries it to the KMS endpoint; TLS (rustls)
//! runs end to end between this client and KMS when the endpoint is `https`. The HTTP/1.1
//! exchange and the SigV4 signature are done here: the request is small and fixed, and the
//! response is read with hard caps ([`MAX_RESPONSE_HEADERS`], [`MAX_RESPONSE_BODY`]). The
//! parent passes in the SigV4 credentials, as on AWS; the secret key is zeroized on drop and
//! redacted from `Debug`.

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{KeySize, PrivateDecryptingKey};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncRead, AsyncWrite};
use zeroize::Zeroizing;

mod http;

/// Largest response header block accepted.
pub const MAX_RESPONSE_HEADERS: usize = 16 * 1024;
/// Largest response body accepted (a CiphertextForRecipient is a few KiB).
pub const MAX_RESPONSE_BODY: usize = 1024 * 1024;
/// Most bytes GenerateRandom may ask for (KMS's limit).
pub const MAX_RANDOM_BYTES: usize = 1024;
/// Default limit on one call (connect, TLS, request, response).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// The only key encryption algorithm of a Recipient.
pub const KEY_ENCRYPTION_ALGORITHM: &str = "RSAES_OAEP_SHA_256";

/// Errors of the KMS client.
#[derive(Debug, thiserror::Error)]
pub enum KmsClientError {
    /// An argument is unusable.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The endpoint URL is malformed.
    #[error("invalid endpoint {0:?}: expected http(s)://host[:port]")]
    BadEndpoint(String),
    /// The enclave key pair could not be generated.
    #[error("cannot generate the enclave's RSA key pair")]
    KeyGeneration,
    /// The attestation document could not be obtained.
    #[error("cannot get an attestation document: {0}")]
    Attestation(AttestError),
    /// The connection (vsock to the proxy, or TCP) could not be opened or broke.
    #[error("connection to KMS failed")]
    Connect(#[source] std::io::Error),
    /// The TLS configuration or handshake failed.
    #[error("TLS with {host} failed: {reason}")]
    Tls {
        /// The endpoint host.
        host: String,
        /// Why.
        reason: String,
    },
    /// The call took longer than its timeout.
    #[error("KMS did not answer within {0:?}")]
    Timeout(Duration),
    /// The response is not well-formed HTTP/1.1 or exceeds a cap.
    #[error("malformed HTTP response: {0}")]
    Http(&'static str),
    /// KMS answered with an error.
    #[error("KMS returned HTTP {status}: {kind}: {message}")]
    Service {
        /// HTTP status.
        status: u16,
        /// The `__type` field (e.g. `AccessDeniedException`).
        kind: String,
        /// The message.
        message: String,
    },
    /// The response body is not the JSON expected.
    #[error("unexpected KMS response: {0}")]
    BadResponse(String),
    /// `CiphertextForRecipient` could not be opened.
    #[error("cannot open CiphertextForRecipient")]
    Recipient(#[source] crate::recipient::RecipientError),
}

/// SigV4 credentials, passed in by the parent.
#[derive(Clone)]
pub struct Credentials {
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key (zeroized on drop, never printed).
    pub secret_access_key: Zeroizing<String>,
    /// Session token of temporary credentials.
    pub session_token: Option<Zeroizing<String>>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// Why an [`Attester`] produced no document.
#[derive(Debug, thiserror::Error)]
pub enum AttestError {
    /// The NSM refused or could not be reached.
    #[error("{0}")]
    Nsm(#[from] crate::nsm::NsmError),
    /// Another attester's reason.
    #[error("{0}")]
    Other(String),
}

impl From<String> for AttestError {
    fn from(reason: String) -> Self {
        AttestError::Other(reason)
    }
}

/// Produces the attestation document that carries the enclave's public key.
pub trait Attester: Send + Sync {
    /// Returns a COSE_Sign1 attestation document whose `public_key` is `public_key_der`.
    fn attest(&self, public_key_der: &[u8]) -> Result<Vec<u8>, AttestError>;
}

/// A closure is an attester; its error, displayed, is the reason.
impl<F, E> Attester for F
where
    F: Fn(&[u8]) -> Result<Vec<u8>, E> + Send + Sync,
    E: fmt::Display,
{
    fn attest(&self, public_key_der: &[u8]) -> Result<Vec<u8>, AttestError> {
        self(public_key_der).map_err(|e| AttestError::Other(e.to_string()))
    }
}

/// The enclave's own NSM (`/dev/nsm` on AWS, the fabric's NSM channel in a Cloister enclave).
/// Requests are serialized: one NSM channel carries one exchange at a time.
#[derive(Debug)]
pub struct NsmAttester(std::sync::Mutex<crate::nsm::NsmClient>);

impl NsmAttester {
    /// Opens the NSM.
    pub fn open() -> Result<Self, KmsClientError> {
        let client = crate::nsm::NsmClient::open()
            .map_err(|e| KmsClientError::Attestation(AttestError::Nsm(e)))?;
        Ok(Self(std::sync::Mutex::new(client)))
    }
}

impl Attester for NsmAttester {
    fn attest(&self, public_key_der: &[u8]) -> Result<Vec<u8>, AttestError> {
        let client = self.0.lock().unwrap_or_else(|p| p.into_inner());
        Ok(client.attestation(None, None, Some(public_key_der))?)
    }
}

/// How the client reaches the endpoint.
#[derive(Debug, Clone)]
pub enum Route {
    /// A vsock address (from an enclave: `(3, proxy_port)`, the parent's vsock-proxy).
    Vsock {
        /// CID.
        cid: u32,
        /// Port.
        port: u32,
        /// Transport (`None`: the one `cloister-vsock` detects).
        transport: Option<cloister_vsock::Transport>,
    },
    /// A TCP address (the endpoint itself, or a forwarder).
    Tcp(std::net::SocketAddr),
}

/// A parsed `http(s)://host[:port]` endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `https` or not.
    pub tls: bool,
    /// Host name (or IP literal) for the `Host` header, SigV4 and TLS server name.
    pub host: String,
    /// Port.
    pub port: u16,
}

impl Endpoint {
    /// AWS's endpoint for `region`: `https://kms.<region>.amazonaws.com`.
    pub fn for_region(region: &str) -> Result<Self, KmsClientError> {
        if region.is_empty()
            || region.len() > 64
            || !region
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(KmsClientError::InvalidArgument(format!(
                "region {region:?}"
            )));
        }
        Ok(Self {
            tls: true,
            host: format!("kms.{region}.amazonaws.com"),
            port: 443,
        })
    }

    /// Parses `http://host[:port]` or `https://host[:port]` (a trailing `/` is allowed).
    pub fn parse(url: &str) -> Result<Self, KmsClientError> {
        let bad = || KmsClientError::BadEndpoint(url.chars().take(256).collect());
        let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(bad());
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (h, tail) = v6.split_once(']').ok_or_else(bad)?;
            let port = match tail.strip_prefix(':') {
                Some(p) => Some(p),
                None if tail.is_empty() => None,
                None => return Err(bad()),
            };
            (h, port)
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (rest, None),
            }
        };
        let port = match port {
            Some(p) => p.parse::<u16>().map_err(|_| bad())?,
            None if tls => 443,
            None => 80,
        };
        if host.is_empty()
            || host.len() > 253
            || !host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b':'))
        {
            return Err(bad());
        }
        Ok(Self {
            tls,
            host: host.to_owned(),
            port,
        })
    }

    /// The `Host` header value (port omitted when it is the scheme's default).
    pub fn host_header(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if (self.tls && self.port == 443) || (!self.tls && self.port == 80) {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

/// Everything a client needs.
#[derive(Debug, Clone)]
pub struct KmsClientConfig {
    /// The region (SigV4 scope).
    pub region: String,
    /// The endpoint.
    pub endpoint: Endpoint,
    /// How to reach it.
    pub route: Route,
    /// SigV4 credentials.
    pub credentials: Credentials,
    /// Extra trusted root certificates (DER) for TLS, added to the built-in Mozilla roots.
    pub extra_roots: Vec<Vec<u8>>,
    /// Limit on one call.
    pub timeout: Duration,
}

impl KmsClientConfig {
    /// AWS's setup: `https://kms.<region>.amazonaws.com` through vsock-proxy on `(3, proxy_port)`.
    pub fn aws(
        region: &str,
        proxy_port: u32,
        credentials: Credentials,
    ) -> Result<Self, KmsClientError> {
        Ok(Self {
            region: region.to_owned(),
            endpoint: Endpoint::for_region(region)?,
            route: Route::Vsock {
                cid: 3,
                port: proxy_port,
                transport: None,
            },
            credentials,
            extra_roots: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
        })
    }
}

/// Largest certificate bundle file read by [`load_root_certificates`].
pub const MAX_CA_BUNDLE_BYTES: u64 = 4 * 1024 * 1024;

/// Reads root certificates (PEM, one or more `CERTIFICATE` blocks, or a single DER
/// certificate) for [`KmsClientConfig::extra_roots`].
pub fn load_root_certificates(path: &std::path::Path) -> Result<Vec<Vec<u8>>, KmsClientError> {
    use rustls_pki_types::pem::PemObject;
    use std::io::Read;
    let bad = |why: String| KmsClientError::InvalidArgument(format!("{}: {why}", path.display()));
    let file = std::fs::File::open(path).map_err(|e| bad(e.to_string()))?;
    let mut bytes = Vec::new();
    file.take(MAX_CA_BUNDLE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| bad(e.to_string()))?;
    if bytes.len() as u64 > MAX_CA_BUNDLE_BYTES {
        return Err(bad("too large".into()));
    }
    if bytes.starts_with(b"-----") || bytes.iter().take(64).all(|b| b.is_ascii()) {
        let certs: Vec<Vec<u8>> = rustls_pki_types::CertificateDer::pem_slice_iter(&bytes)
            .map(|c| c.map(|c| c.as_ref().to_vec()))
            .collect::<Result<_, _>>()
            .map_err(|e| bad(e.to_string()))?;
        if certs.is_empty() {
            return Err(bad("no CERTIFICATE block".into()));
        }
        return Ok(certs);
    }
    Ok(vec![bytes])
}

/// The result of GenerateDataKey.
pub struct DataKey {
    /// The data key encrypted under the KMS key (store it next to the data).
    pub ciphertext_blob: Vec<u8>,
    /// The plaintext data key (zeroized on drop).
    pub plaintext: Zeroizing<Vec<u8>>,
    /// The ARN of the KMS key.
    pub key_id: String,
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DataKey")
            .field("ciphertext_blob", &self.ciphertext_blob.len())
            .field("plaintext", &"<redacted>")
            .field("key_id", &self.key_id)
            .finish()
    }
}

/// The attested KMS client.
#[derive(Clone)]
pub struct KmsClient {
    config: Arc<KmsClientConfig>,
    attester: Arc<dyn Attester>,
    tls: Option<tokio_rustls::TlsConnector>,
    keys: Arc<tokio::sync::OnceCell<RecipientKeys>>,
}

/// The client's recipient key pair: the private key (PKCS#8, zeroized on drop) and its public
/// half as DER SubjectPublicKeyInfo, the form attestation documents carry.
struct RecipientKeys {
    pkcs8: Zeroizing<Vec<u8>>,
    spki: Vec<u8>,
}

impl RecipientKeys {
    fn generate() -> Result<Self, KmsClientError> {
        let key = PrivateDecryptingKey::generate(KeySize::Rsa2048)
            .map_err(|_| KmsClientError::KeyGeneration)?;
        let spki = key
            .public_key()
            .as_der()
            .map_err(|_| KmsClientError::KeyGeneration)?
            .as_ref()
            .to_vec();
        let pkcs8 = Zeroizing::new(
            key.as_der()
                .map_err(|_| KmsClientError::KeyGeneration)?
                .as_ref()
                .to_vec(),
        );
        Ok(Self { pkcs8, spki })
    }
}

impl fmt::Debug for KmsClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KmsClient")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct RecipientJson {
    key_encryption_algorithm: &'static str,
    attestation_document: String,
}

#[derive(Deserialize)]
struct ErrorJson {
    #[serde(rename = "__type", default)]
    kind: String,
    #[serde(alias = "Message", default)]
    message: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RecipientResponse {
    #[serde(default)]
    ciphertext_for_recipient: Option<String>,
    #[serde(default)]
    ciphertext_blob: Option<String>,
    #[serde(default)]
    key_id: Option<String>,
}

impl KmsClient {
    /// A client; `attester` produces attestation documents (in an enclave, the NSM).
    pub fn new(
        config: KmsClientConfig,
        attester: Arc<dyn Attester>,
    ) -> Result<Self, KmsClientError> {
        let tls = if config.endpoint.tls {
            Some(tls_connector(&config.extra_roots, &config.endpoint.host)?)
        } else {
            None
        };
        Ok(Self {
            config: Arc::new(config),
            attester,
            tls,
            keys: Arc::new(tokio::sync::OnceCell::new()),
        })
    }

    /// Decrypt: returns the plaintext of `ciphertext_blob`.
    pub async fn decrypt(
        &self,
        ciphertext_blob: &[u8],
        key_id: Option<&str>,
        encryption_algorithm: Option<&str>,
        encryption_context: &BTreeMap<String, String>,
    ) -> Result<Zeroizing<Vec<u8>>, KmsClientError> {
        let mut body = serde_json::Map::new();
        body.insert("CiphertextBlob".into(), B64.encode(ciphertext_blob).into());
        if let Some(k) = key_id {
            body.insert("KeyId".into(), k.into());
        }
        if let Some(a) = encryption_algorithm {
            body.insert("EncryptionAlgorithm".into(), a.into());
        }
        if !encryption_context.is_empty() {
            body.insert(
                "EncryptionContext".into(),
                serde_json::to_value(encryption_context)
                    .map_err(|e| KmsClientError::InvalidArgument(e.to_string()))?,
            );
        }
        let (plaintext, _) = self.call_with_recipient("Decrypt", body).await?;
        Ok(plaintext)
    }

    /// GenerateDataKey with `key_spec` (`AES_256` or `AES_128`).
    pub async fn generate_data_key(
        &self,
        key_id: &str,
        key_spec: &str,
        encryption_context: &BTreeMap<String, String>,
    ) -> Result<DataKey, KmsClientError> {
        let mut body = serde_json::Map::new();
        body.insert("KeyId".into(), key_id.into());
        body.insert("KeySpec".into(), key_spec.into());
        if !encryption_context.is_empty() {
            body.insert(
                "EncryptionContext".into(),
                serde_json::to_value(encryption_context)
                    .map_err(|e| KmsClientError::InvalidArgument(e.to_string()))?,
            );
        }
        let (plaintext, resp) = self.call_with_recipient("GenerateDataKey", body).await?;
        let blob = resp
            .ciphertext_blob
            .ok_or_else(|| KmsClientError::BadResponse("no CiphertextBlob".into()))?;
        Ok(DataKey {
            ciphertext_blob: B64
                .decode(blob)
                .map_err(|e| KmsClientError::BadResponse(format!("CiphertextBlob: {e}")))?,
            plaintext,
            key_id: resp.key_id.unwrap_or_default(),
        })
    }

    /// GenerateRandom: `length` random bytes (1..=1024) released to this enclave.
    pub async fn generate_random(
        &self,
        length: usize,
    ) -> Result<Zeroizing<Vec<u8>>, KmsClientError> {
        if length == 0 || length > MAX_RANDOM_BYTES {
            return Err(KmsClientError::InvalidArgument(format!(
                "length {length} is outside 1..={MAX_RANDOM_BYTES}"
            )));
        }
        let mut body = serde_json::Map::new();
        body.insert("NumberOfBytes".into(), length.into());
        let (plaintext, _) = self.call_with_recipient("GenerateRandom", body).await?;
        Ok(plaintext)
    }

    async fn call_with_recipient(
        &self,
        operation: &str,
        mut body: serde_json::Map<String, serde_json::Value>,
    ) -> Result<(Zeroizing<Vec<u8>>, RecipientResponse), KmsClientError> {
        // One key pair per client, generated once off the async threads; a fresh document per
        // call.
        let keys = self
            .keys
            .get_or_try_init(|| async {
                tokio::task::spawn_blocking(RecipientKeys::generate)
                    .await
                    .map_err(|_| KmsClientError::KeyGeneration)?
            })
            .await?;
        let document = self
            .attester
            .attest(&keys.spki)
            .map_err(KmsClientError::Attestation)?;
        body.insert(
            "Recipient".into(),
            serde_json::to_value(RecipientJson {
                key_encryption_algorithm: KEY_ENCRYPTION_ALGORITHM,
                attestation_document: B64.encode(&document),
            })
            .map_err(|e| KmsClientError::InvalidArgument(e.to_string()))?,
        );
        let payload = serde_json::to_vec(&serde_json::Value::Object(body))
            .map_err(|e| KmsClientError::InvalidArgument(e.to_string()))?;
        let response = self.call(operation, &payload).await?;
        let parsed: RecipientResponse = serde_json::from_slice(&response)
            .map_err(|e| KmsClientError::BadResponse(e.to_string()))?;
        let cms = parsed
            .ciphertext_for_recipient
            .as_deref()
            .ok_or_else(|| KmsClientError::BadResponse("no CiphertextForRecipient".into()))?;
        let cms = B64
            .decode(cms)
            .map_err(|e| KmsClientError::BadResponse(format!("CiphertextForRecipient: {e}")))?;
        let plaintext = open_recipient(&cms, &keys.pkcs8)?;
        Ok((plaintext, parsed))
    }

    /// Sends one signed `TrentService.<operation>` request and returns the response body of a
    /// 2xx answer.
    pub async fn call(&self, operation: &str, payload: &[u8]) -> Result<Vec<u8>, KmsClientError> {
        let timeout = self.config.timeout;
        tokio::time::timeout(timeout, self.call_inner(operation, payload))
            .await
            .map_err(|_| KmsClientError::Timeout(timeout))?
    }

    async fn call_inner(&self, operation: &str, payload: &[u8]) -> Result<Vec<u8>, KmsClientError> {
        let request = build_request(&self.config, operation, payload, SystemTime::now())?;
        let stream = self.open().await?;
        let (status, body) = match &self.tls {
            Some(tls) => {
                let name =
                    rustls_pki_types::ServerName::try_from(self.config.endpoint.host.clone())
                        .map_err(|e| KmsClientError::Tls {
                            host: self.config.endpoint.host.clone(),
                            reason: e.to_string(),
                        })?;
                let tls_stream =
                    tls.connect(name, stream)
                        .await
                        .map_err(|e| KmsClientError::Tls {
                            host: self.config.endpoint.host.clone(),
                            reason: e.to_string(),
                        })?;
                http::exchange(tls_stream, request).await?
            }
            None => http::exchange(stream, request).await?,
        };
        if (200..300).contains(&status) {
            return Ok(body);
        }
        let err: ErrorJson = serde_json::from_slice(&body).unwrap_or(ErrorJson {
            kind: String::new(),
            message: String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned(),
        });
        let kind = err.kind.rsplit('#').next().unwrap_or_default().to_owned();
        Err(KmsClientError::Service {
            status,
            kind,
            message: err.message,
        })
    }

    async fn open(&self) -> Result<Box<dyn IoStream>, KmsClientError> {
        match &self.config.route {
            Route::Tcp(addr) => {
                let s = tokio::net::TcpStream::connect(addr)
                    .await
                    .map_err(KmsClientError::Connect)?;
                let _ = s.set_nodelay(true);
                Ok(Box::new(s))
            }
            Route::Vsock {
                cid,
                port,
                transport,
            } => {
                let addr = cloister_vsock::VsockAddr::new(*cid, *port);
                let s = match transport {
                    Some(t) => {
                        cloister_vsock::tokio::VsockStream::connect_with(t.clone(), addr).await
                    }
                    None => cloister_vsock::tokio::VsockStream::connect(addr).await,
                }
                .map_err(|e| KmsClientError::Connect(e.into()))?;
                Ok(Box::new(s))
            }
        }
    }
}

/// Opens a CiphertextForRecipient with the call's private key (PKCS#8 DER).
fn open_recipient(cms: &[u8], pkcs8: &[u8]) -> Result<Zeroizing<Vec<u8>>, KmsClientError> {
    crate::recipient::open_ciphertext_for_recipient(cms, pkcs8).map_err(KmsClientError::Recipient)
}

/// A byte stream the client can speak HTTP over.
trait IoStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> IoStream for T {}

fn tls_connector(
    extra_roots: &[Vec<u8>],
    host: &str,
) -> Result<tokio_rustls::TlsConnector, KmsClientError> {
    let tls_err = |reason: String| KmsClientError::Tls {
        host: host.to_owned(),
        reason,
    };
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for der in extra_roots {
        roots
            .add(rustls_pki_types::CertificateDer::from(der.clone()))
            .map_err(|e| tls_err(format!("bad root certificate: {e}")))?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// Formats `t` as SigV4's `YYYYMMDDTHHMMSSZ` (UTC), with [`cloister_sigv4::format_amz_date`].
pub fn amz_date(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    cloister_sigv4::format_amz_date(i64::try_from(secs).unwrap_or(i64::MAX))
}

/// Signs a KMS JSON request with SigV4 and returns the `Authorization` header value. `headers`
/// are the signed headers as (lower-case name, value), sorted by name. The signing is
/// `cloister_sigv4`'s, the same code the key service verifies with. Headers it cannot sign (an
/// empty or upper-case name, more than [`cloister_sigv4::MAX_SIGNED_HEADERS`]) give an empty
/// value, which the service refuses as it would have refused their signature.
pub fn sigv4_authorization(
    credentials: &Credentials,
    region: &str,
    amz_date: &str,
    headers: &[(&str, &str)],
    payload: &[u8],
) -> String {
    let date = amz_date.get(..8).unwrap_or(amz_date);
    let key = cloister_sigv4::signing_key(&credentials.secret_access_key, date, region, "kms");
    let signed = headers
        .iter()
        .map(|(n, _)| *n)
        .collect::<Vec<_>>()
        .join(";");
    let headers: Vec<(&str, &[u8])> = headers.iter().map(|(n, v)| (*n, v.as_bytes())).collect();
    let req = cloister_sigv4::SignedRequest {
        method: "POST",
        path: "/",
        query: "",
        headers: &headers,
        body: payload,
    };
    let scope = cloister_sigv4::Scope {
        date,
        region,
        service: "kms",
    };
    cloister_sigv4::sign_request(
        &credentials.access_key_id,
        &key,
        scope,
        amz_date,
        &req,
        &signed,
    )
    .unwrap_or_default()
}

/// Sends a minimal request over `stream` and reads the answer as the client reads a key
/// service's, within the same caps: the entry point of the response parser's fuzz target.
#[doc(hidden)]
pub async fn read_response<S>(stream: S) -> Result<(u16, Vec<u8>), KmsClientError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let request = hyper::Request::post("/")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .map_err(|_| KmsClientError::Http("cannot build the request"))?;
    http::exchange(stream, request).await
}

fn build_request(
    config: &KmsClientConfig,
    operation: &str,
    payload: &[u8],
    now: SystemTime,
) -> Result<http::Request, KmsClientError> {
    let date = amz_date(now);
    let host = config.endpoint.host_header();
    let target = format!("TrentService.{operation}");
    let token = config
        .credentials
        .session_token
        .as_ref()
        .map(|t| t.as_str());
    let mut headers: Vec<(&str, &str)> = vec![
        ("content-type", "application/x-amz-json-1.1"),
        ("host", &host),
        ("x-amz-date", &date),
    ];
    if let Some(t) = token {
        headers.push(("x-amz-security-token", t));
    }
    headers.push(("x-amz-target", &target));
    let auth = sigv4_authorization(
        &config.credentials,
        &config.region,
        &date,
        &headers,
        payload,
    );
    let mut request = hyper::Request::post("/");
    for (name, value) in &headers {
        request = request.header(*name, *value);
    }
    request
        .header("authorization", auth)
        .header("content-length", payload.len())
        .header("connection", "close")
        .body(http_body_util::Full::new(bytes::Bytes::copy_from_slice(
            payload,
        )))
        .map_err(|e| KmsClientError::InvalidArgument(format!("cannot form the request: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds() -> Credentials {
        Credentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: Zeroizing::new("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into()),
            session_token: None,
        }
    }

    #[test]
    fn dates_are_formatted_in_utc() {
        assert_eq!(amz_date(UNIX_EPOCH), "19700101T000000Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_440_938_160); // 2015-08-30T12:36:00Z
        assert_eq!(amz_date(t), "20150830T123600Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29T00:00:00Z
        assert_eq!(amz_date(leap), "20000229T000000Z");
    }

    #[test]
    fn endpoints_parse() {
        let e = Endpoint::parse("https://kms.us-east-1.amazonaws.com").unwrap();
        assert_eq!(
            (e.tls, e.port, e.host_header().as_str()),
            (true, 443, "kms.us-east-1.amazonaws.com")
        );
        let e = Endpoint::parse("http://127.0.0.1:4000/").unwrap();
        assert_eq!(
            (e.tls, e.port, e.host_header().as_str()),
            (false, 4000, "127.0.0.1:4000")
        );
        let e = Endpoint::parse("http://[::1]:4000").unwrap();
        assert_eq!(e.host_header(), "[::1]:4000");
        for bad in [
            "ftp://x",
            "http://",
            "http://a b",
            "http://h:99999",
            "https://[::1",
        ] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
        assert!(Endpoint::for_region("us-east-1").is_ok());
        assert!(Endpoint::for_region("us east").is_err());
    }

    #[test]
    fn credentials_are_redacted() {
        let text = format!("{:?}", creds());
        assert!(!text.contains("EXAMPLEKEY"), "{text}");
    }

    #[test]
    fn signature_is_deterministic_and_covers_the_payload() {
        let h = [
            ("content-type", "application/x-amz-json-1.1"),
            ("host", "kms.us-east-1.amazonaws.com"),
            ("x-amz-date", "20150830T123600Z"),
            ("x-amz-target", "TrentService.Decrypt"),
        ];
        let a = sigv4_authorization(&creds(), "us-east-1", "20150830T123600Z", &h, b"{}");
        let b = sigv4_authorization(&creds(), "us-east-1", "20150830T123600Z", &h, b"{}");
        let c = sigv4_authorization(&creds(), "us-east-1", "20150830T123600Z", &h, b"{ }");
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(a.starts_with(
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/kms/aws4_request, \
             SignedHeaders=content-type;host;x-amz-date;x-amz-target, Signature="
        ));
        // The value the hand-written signer produced (and an independent SigV4 computes).
        assert!(a.ends_with(
            "Signature=8a164eed79ee074124d2cc2a08ef2e71a1127fca419e26ba952221db2024db6a"
        ));
    }
}
