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

use aws_lc_rs::digest::{digest, SHA256};
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::hmac;
use aws_lc_rs::rsa::{KeySize, PrivateDecryptingKey};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use zeroize::{Zeroize, Zeroizing};

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
    Attestation(String),
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

/// Produces the attestation document that carries the enclave's public key.
pub trait Attester: Send + Sync {
    /// Returns a COSE_Sign1 attestation document whose `public_key` is `public_key_der`.
    fn attest(&self, public_key_der: &[u8]) -> Result<Vec<u8>, String>;
}

impl<F> Attester for F
where
    F: Fn(&[u8]) -> Result<Vec<u8>, String> + Send + Sync,
{
    fn attest(&self, public_key_der: &[u8]) -> Result<Vec<u8>, String> {
        self(public_key_der)
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
            .map_err(|e| KmsClientError::Attestation(e.to_string()))?;
        Ok(Self(std::sync::Mutex::new(client)))
    }
}

impl Attester for NsmAttester {
    fn attest(&self, public_key_der: &[u8]) -> Result<Vec<u8>, String> {
        let client = self.0.lock().unwrap_or_else(|p| p.into_inner());
        client
            .attestation(None, None, Some(public_key_der))
            .map_err(|e| e.to_string())
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
        let request = build_request(&self.config, operation, payload, SystemTime::now());
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
                exchange(tls_stream, &request).await?
            }
            None => exchange(stream, &request).await?,
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

/// Formats `t` as SigV4's `YYYYMMDDTHHMMSSZ` (UTC).
pub fn amz_date(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

fn hex_sha256(data: &[u8]) -> String {
    hex::encode(digest(&SHA256, data).as_ref())
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    hmac::sign(&key, data).as_ref().to_vec()
}

/// Signs a KMS JSON request with SigV4 and returns the `Authorization` header value. `headers`
/// are the signed headers as (lower-case name, value), sorted by name.
pub fn sigv4_authorization(
    credentials: &Credentials,
    region: &str,
    amz_date: &str,
    headers: &[(&str, &str)],
    payload: &[u8],
) -> String {
    let date = &amz_date[..amz_date.len().min(8)];
    let mut canonical = String::from("POST\n/\n\n");
    for (name, value) in headers {
        canonical.push_str(name);
        canonical.push(':');
        canonical.push_str(value.trim());
        canonical.push('\n');
    }
    canonical.push('\n');
    let signed: Vec<&str> = headers.iter().map(|(n, _)| *n).collect();
    let signed = signed.join(";");
    canonical.push_str(&signed);
    canonical.push('\n');
    canonical.push_str(&hex_sha256(payload));
    let scope = format!("{date}/{region}/kms/aws4_request");
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex_sha256(canonical.as_bytes())
    );
    let mut secret = Zeroizing::new(format!("AWS4{}", &*credentials.secret_access_key));
    let k_date = Zeroizing::new(hmac_sha256(secret.as_bytes(), date.as_bytes()));
    secret.zeroize();
    let k_region = Zeroizing::new(hmac_sha256(&k_date, region.as_bytes()));
    let k_service = Zeroizing::new(hmac_sha256(&k_region, b"kms"));
    let k_signing = Zeroizing::new(hmac_sha256(&k_service, b"aws4_request"));
    let signature = hex::encode(hmac_sha256(&k_signing, string_to_sign.as_bytes()));
    format!(
        "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed}, Signature={signature}",
        credentials.access_key_id
    )
}

fn build_request(
    config: &KmsClientConfig,
    operation: &str,
    payload: &[u8],
    now: SystemTime,
) -> Vec<u8> {
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
    let mut req = String::from("POST / HTTP/1.1\r\n");
    for (name, value) in &headers {
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    req.push_str(&format!(
        "authorization: {auth}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        payload.len()
    ));
    let mut out = req.into_bytes();
    out.extend_from_slice(payload);
    out
}

/// Writes `request`, reads one response; returns (status, body).
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    request: &[u8],
) -> Result<(u16, Vec<u8>), KmsClientError> {
    stream
        .write_all(request)
        .await
        .map_err(KmsClientError::Connect)?;
    stream.flush().await.map_err(KmsClientError::Connect)?;
    read_response(&mut stream).await
}

/// Reads one HTTP/1.1 response (Content-Length, chunked, or until EOF), within the caps.
pub async fn read_response<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<(u16, Vec<u8>), KmsClientError> {
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let header_end = loop {
        if let Some(pos) = find(&buf, b"\r\n\r\n") {
            break pos;
        }
        if buf.len() > MAX_RESPONSE_HEADERS {
            return Err(KmsClientError::Http("headers too large"));
        }
        fill(
            stream,
            &mut buf,
            "connection closed before the headers ended",
        )
        .await?;
    };
    if header_end > MAX_RESPONSE_HEADERS {
        return Err(KmsClientError::Http("headers too large"));
    }
    let head = std::str::from_utf8(&buf[..header_end])
        .map_err(|_| KmsClientError::Http("headers are not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(KmsClientError::Http("not an HTTP/1.x status line"));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .filter(|s| (100..600).contains(s))
        .ok_or(KmsClientError::Http("bad status code"))?;
    let mut content_length: Option<usize> = None;
    let mut chunked = false;
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .ok_or(KmsClientError::Http("malformed header line"))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let n: usize = value
                .parse()
                .map_err(|_| KmsClientError::Http("bad Content-Length"))?;
            if n > MAX_RESPONSE_BODY {
                return Err(KmsClientError::Http("body too large"));
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        }
    }
    let mut rest = buf.split_off(header_end + 4);
    if chunked {
        let body = read_chunked(stream, rest).await?;
        return Ok((status, body));
    }
    match content_length {
        Some(n) => {
            if rest.len() > n {
                rest.truncate(n);
            }
            while rest.len() < n {
                let mut chunk = vec![0u8; (n - rest.len()).min(16 * 1024)];
                let got = stream
                    .read(&mut chunk)
                    .await
                    .map_err(KmsClientError::Connect)?;
                if got == 0 {
                    return Err(KmsClientError::Http("connection closed inside the body"));
                }
                rest.extend_from_slice(&chunk[..got]);
            }
        }
        None => {
            let mut limited =
                stream.take((MAX_RESPONSE_BODY + 1 - rest.len().min(MAX_RESPONSE_BODY)) as u64);
            limited
                .read_to_end(&mut rest)
                .await
                .map_err(KmsClientError::Connect)?;
            if rest.len() > MAX_RESPONSE_BODY {
                return Err(KmsClientError::Http("body too large"));
            }
        }
    }
    Ok((status, rest))
}

async fn read_chunked<S: AsyncRead + Unpin>(
    stream: &mut S,
    mut pending: Vec<u8>,
) -> Result<Vec<u8>, KmsClientError> {
    let mut body = Vec::new();
    loop {
        // Need one size line.
        let line_end = loop {
            if let Some(p) = find(&pending, b"\r\n") {
                break p;
            }
            if pending.len() > 64 {
                return Err(KmsClientError::Http("chunk size line too long"));
            }
            fill(
                stream,
                &mut pending,
                "connection closed inside a chunked body",
            )
            .await?;
        };
        let size_text = std::str::from_utf8(&pending[..line_end])
            .map_err(|_| KmsClientError::Http("bad chunk size"))?;
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| KmsClientError::Http("bad chunk size"))?;
        if size > MAX_RESPONSE_BODY || body.len() + size > MAX_RESPONSE_BODY {
            return Err(KmsClientError::Http("body too large"));
        }
        pending.drain(..line_end + 2);
        if size == 0 {
            return Ok(body);
        }
        while pending.len() < size + 2 {
            fill(
                stream,
                &mut pending,
                "connection closed inside a chunked body",
            )
            .await?;
        }
        body.extend_from_slice(&pending[..size]);
        if &pending[size..size + 2] != b"\r\n" {
            return Err(KmsClientError::Http("chunk not followed by CRLF"));
        }
        pending.drain(..size + 2);
    }
}

/// Appends what one read returns to `buf`; end of stream is the error `at_eof`.
async fn fill<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    at_eof: &'static str,
) -> Result<(), KmsClientError> {
    let mut chunk = [0u8; 4096];
    let n = stream
        .read(&mut chunk)
        .await
        .map_err(KmsClientError::Connect)?;
    if n == 0 {
        return Err(KmsClientError::Http(at_eof));
    }
    buf.extend_from_slice(&chunk[..n]);
    Ok(())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
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
    }

    #[tokio::test]
    async fn responses_parse_within_caps() {
        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello".to_vec();
        assert_eq!(
            read_response(&mut &ok[..]).await.unwrap(),
            (200, b"hello".to_vec())
        );
        let chunked =
            b"HTTP/1.1 400 Bad\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x\r\nde\r\n0\r\n\r\n".to_vec();
        assert_eq!(
            read_response(&mut &chunked[..]).await.unwrap(),
            (400, b"abcde".to_vec())
        );
        let eof = b"HTTP/1.0 200 OK\r\n\r\nuntil eof".to_vec();
        assert_eq!(read_response(&mut &eof[..]).await.unwrap().1, b"until eof");
        for bad in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
            b"SSH-2.0\r\n\r\n",
            b"HTTP/1.1 999 X\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffff\r\n",
            b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
            b"HTTP/1.1 200",
        ] {
            assert!(
                read_response(&mut &bad[..]).await.is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let huge = vec![b'a'; MAX_RESPONSE_HEADERS + 10];
        assert!(read_response(&mut &huge[..]).await.is_err());
    }
}
