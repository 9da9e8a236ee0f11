//! Pulling an image from a registry over the OCI distribution API, without a container engine.
//!
//! [`pull_to_archive`] resolves a reference (`[registry/]repository[:tag|@digest]`, Docker Hub
//! by default), fetches its manifest (an image index or manifest list picks the host's
//! platform), then streams the config and layer blobs, each checked against its digest and
//! size, into a tar that holds an OCI image layout (`oci-layout`, `index.json`,
//! `blobs/sha256/...`): the same input `build-enclave --docker-archive` reads, so the rest of
//! the build is shared. Registries on the loopback (and those in `CLOISTER_INSECURE_REGISTRIES`,
//! comma-separated `host:port`) are spoken to over plain HTTP, all others over TLS with the
//! system's CA bundle (`SSL_CERT_FILE`, default `/etc/ssl/certs/ca-certificates.crt`).
//!
//! Authentication follows the distribution spec: a 401 with a `Bearer` challenge gets a token
//! from the realm (with the user's credentials when there are some), a `Basic` challenge gets
//! the credentials. Credentials come from `$DOCKER_CONFIG/config.json` or
//! `~/.docker/config.json` (`auths.<registry>.auth`, or `username`/`password`).
//!
//! Everything read from the network is bounded: response heads ([`MAX_HEAD`]), manifests and
//! tokens ([`MAX_DOCUMENT`]), blob sizes against the caller's limit, redirects ([`MAX_REDIRECTS`]).

use crate::digest::Sha256Digest;
use crate::source::SourceError;
use base64::Engine as _;
use serde::Deserialize;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Largest response head (status line and headers).
pub const MAX_HEAD: usize = 64 * 1024;
/// Largest manifest, index or token document.
pub const MAX_DOCUMENT: u64 = 4 << 20;
/// Most redirects followed for one request.
pub const MAX_REDIRECTS: usize = 5;
/// Most layers in one image.
pub const MAX_LAYERS: usize = 256;
/// Connect and read timeout.
const NET_TIMEOUT: Duration = Duration::from_secs(60);
/// Docker Hub's API host.
const DOCKER_HUB: &str = "registry-1.docker.io";

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// Why a pull failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The reference does not parse.
    #[error("invalid image reference {0:?}")]
    Reference(String),
    /// A network or TLS failure.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The registry's answer is not HTTP as expected.
    #[error("malformed response from {host}: {reason}")]
    Http {
        /// The host.
        host: String,
        /// What is wrong.
        reason: String,
    },
    /// The registry answered with an error status.
    #[error("{url}: HTTP {status}: {message}")]
    Status {
        /// What was asked.
        url: String,
        /// The status.
        status: u16,
        /// The body's message.
        message: String,
    },
    /// A document is not what the spec says.
    #[error("{what} is not valid: {reason}")]
    Document {
        /// Which document.
        what: String,
        /// What is wrong.
        reason: String,
    },
    /// Content does not match its digest or size.
    #[error("{what}: content does not match its digest {expected} (got {actual})")]
    Digest {
        /// Which content.
        what: String,
        /// The digest asked for.
        expected: Sha256Digest,
        /// The digest of what arrived.
        actual: Sha256Digest,
    },
    /// The image has nothing for this host's platform.
    #[error("no image for linux/{0} in the index")]
    NoPlatform(String),
    /// The image is larger than the limit.
    #[error("the image is larger than {0} bytes")]
    TooLarge(u64),
}

impl From<RegistryError> for SourceError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::Digest {
                what,
                expected,
                actual,
            } => SourceError::DigestMismatch {
                what,
                expected,
                actual,
            },
            RegistryError::Status {
                status: 404,
                url,
                message,
            } => SourceError::TagNotFound {
                tag: url,
                available: format!("the registry answered 404: {message}"),
            },
            RegistryError::Status {
                status, message, ..
            } => SourceError::Engine { status, message },
            other => SourceError::Invalid(format!("registry pull failed: {}", chain(&other))),
        }
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// A parsed image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// Registry host (and port) as named (`docker.io` for Docker Hub).
    pub registry: String,
    /// Repository path.
    pub repository: String,
    /// Tag or `sha256:` digest.
    pub reference: String,
}

impl Reference {
    /// Parses `[registry/]repository[:tag][@digest]` with Docker's defaults.
    pub fn parse(s: &str) -> Result<Self, RegistryError> {
        let bad = || RegistryError::Reference(s.to_owned());
        if s.is_empty() || s.len() > 512 || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad());
        }
        let (name, digest) = match s.split_once('@') {
            Some((n, d)) => (n, Some(d)),
            None => (s, None),
        };
        let numeric_port = |h: &str| {
            h.rsplit_once(':')
                .is_some_and(|(_, p)| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        };
        let (registry, rest) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || numeric_port(first) || first == "localhost" =>
            {
                if first.contains(':') && !numeric_port(first) {
                    return Err(bad());
                }
                (first.to_owned(), rest)
            }
            _ => ("docker.io".to_owned(), name),
        };
        let (repo, tag) = match rest.rsplit_once(':') {
            Some((r, t)) if !t.contains('/') => (r, Some(t)),
            _ => (rest, None),
        };
        let repo_ok = !repo.is_empty()
            && repo.split('/').all(|c| {
                !c.is_empty()
                    && c.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)
                    })
            });
        if !repo_ok {
            return Err(bad());
        }
        let repository = if registry == "docker.io" && !repo.contains('/') {
            format!("library/{repo}")
        } else {
            repo.to_owned()
        };
        let reference = match (digest, tag) {
            (Some(d), _) => {
                Sha256Digest::parse(d).map_err(|_| bad())?;
                d.to_owned()
            }
            (None, Some(t)) => {
                if t.is_empty()
                    || t.len() > 128
                    || !t
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
                {
                    return Err(bad());
                }
                t.to_owned()
            }
            (None, None) => "latest".to_owned(),
        };
        Ok(Reference {
            registry,
            repository,
            reference,
        })
    }

    /// The host the API is served on.
    pub fn api_host(&self) -> &str {
        if self.registry == "docker.io" {
            DOCKER_HUB
        } else {
            &self.registry
        }
    }
}

/// Registry credentials (redacted in `Debug`).
#[derive(Clone)]
pub struct Credentials {
    /// User name.
    pub username: String,
    /// Password or token.
    pub password: zeroize::Zeroizing<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, <redacted>)", self.username)
    }
}

#[derive(Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: std::collections::BTreeMap<String, AuthEntry>,
}

#[derive(Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

/// The credentials `config_json` (a Docker `config.json`) holds for `registry`.
pub fn credentials_in(config_json: &[u8], registry: &str) -> Option<Credentials> {
    let config: DockerConfig = serde_json::from_slice(config_json).ok()?;
    let hub = registry == "docker.io";
    let entry = config.auths.iter().find_map(|(k, v)| {
        let host = k
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap_or_default();
        let matches = host == registry
            || (hub && (host == "index.docker.io" || host == DOCKER_HUB || host == "docker.io"));
        matches.then_some(v)
    })?;
    if let Some(auth) = &entry.auth {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .ok()?;
        let text = zeroize::Zeroizing::new(String::from_utf8(decoded).ok()?);
        let (u, p) = text.split_once(':')?;
        return Some(Credentials {
            username: u.to_owned(),
            password: zeroize::Zeroizing::new(p.to_owned()),
        });
    }
    Some(Credentials {
        username: entry.username.clone()?,
        password: zeroize::Zeroizing::new(entry.password.clone()?),
    })
}

/// Credentials for `registry` from `$DOCKER_CONFIG/config.json` or `~/.docker/config.json`.
pub fn credentials_for(registry: &str) -> Option<Credentials> {
    let path = match std::env::var_os("DOCKER_CONFIG") {
        Some(d) => std::path::PathBuf::from(d).join("config.json"),
        None => std::path::PathBuf::from(std::env::var_os("HOME")?).join(".docker/config.json"),
    };
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .ok()?
        .take(MAX_DOCUMENT)
        .read_to_end(&mut bytes)
        .ok()?;
    credentials_in(&bytes, registry)
}

/// Whether `host` (with its port) is spoken to over plain HTTP.
fn insecure(host: &str) -> bool {
    let name = host
        .rsplit_once(':')
        .filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()))
        .map_or(host, |(h, _)| h);
    if name == "localhost" || name.starts_with("127.") || name == "[::1]" {
        return true;
    }
    std::env::var("CLOISTER_INSECURE_REGISTRIES")
        .map(|v| v.split(',').any(|h| h.trim() == host))
        .unwrap_or(false)
}

/// An absolute URL split into what a request needs.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Url {
    tls: bool,
    host: String,
    path: String,
}

impl Url {
    fn parse(s: &str) -> Option<Url> {
        let (tls, rest) = if let Some(r) = s.strip_prefix("https://") {
            (true, r)
        } else {
            (false, s.strip_prefix("http://")?)
        };
        let (host, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if host.is_empty() || host.contains('@') {
            return None;
        }
        Some(Url {
            tls,
            host: host.to_owned(),
            path: path.to_owned(),
        })
    }

    fn as_string(&self) -> String {
        format!(
            "{}://{}{}",
            if self.tls { "https" } else { "http" },
            self.host,
            self.path
        )
    }
}

/// A connection: plain TCP or TLS.
enum Conn {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read(buf),
            Conn::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.write(buf),
            Conn::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Conn::Plain(s) => s.flush(),
            Conn::Tls(s) => s.flush(),
        }
    }
}

fn tls_config() -> Result<std::sync::Arc<rustls::ClientConfig>, RegistryError> {
    use rustls_pki_types::pem::PemObject;
    let file = std::env::var_os("SSL_CERT_FILE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "/etc/ssl/certs/ca-certificates.crt".into());
    let io_err = |source: io::Error| RegistryError::Io {
        what: format!("cannot read the CA bundle {}", file.display()),
        source,
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_file_iter(&file)
        .map_err(|e| io_err(io::Error::other(e.to_string())))?
    {
        let cert = cert.map_err(|e| io_err(io::Error::other(e.to_string())))?;
        let _ = roots.add(cert);
    }
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| io_err(io::Error::other(e)))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(std::sync::Arc::new(config))
}

fn connect(url: &Url) -> Result<Conn, RegistryError> {
    let io_err = |source: io::Error| RegistryError::Io {
        what: format!("cannot connect to {}", url.host),
        source,
    };
    let hostport = if url.host.rsplit_once(':').is_some_and(|(_, p)| {
        !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && !url.host.ends_with(']')
    }) {
        url.host.clone()
    } else {
        format!("{}:{}", url.host, if url.tls { 443 } else { 80 })
    };
    let addrs: Vec<_> = std::net::ToSocketAddrs::to_socket_addrs(&hostport)
        .map_err(io_err)?
        .collect();
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, NET_TIMEOUT) {
            Ok(tcp) => {
                tcp.set_read_timeout(Some(NET_TIMEOUT)).map_err(io_err)?;
                tcp.set_write_timeout(Some(NET_TIMEOUT)).map_err(io_err)?;
                if !url.tls {
                    return Ok(Conn::Plain(tcp));
                }
                let name = hostport
                    .rsplit_once(':')
                    .map_or(hostport.as_str(), |(h, _)| h)
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_owned();
                let server = rustls_pki_types::ServerName::try_from(name)
                    .map_err(|e| io_err(io::Error::other(e)))?;
                let conn = rustls::ClientConnection::new(tls_config()?, server)
                    .map_err(|e| io_err(io::Error::other(e)))?;
                return Ok(Conn::Tls(Box::new(rustls::StreamOwned::new(conn, tcp))));
            }
            Err(e) => last = e,
        }
    }
    Err(io_err(last))
}

/// A response whose head has been read; the body is read through [`Response::body`].
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    reader: BufReader<Conn>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body, at most `max` bytes (an error past that).
    fn body(self, max: u64, host: &str) -> Result<Box<dyn Read>, RegistryError> {
        let chunked = self
            .header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
        let length = match self.header("content-length") {
            Some(v) => Some(v.trim().parse::<u64>().map_err(|_| RegistryError::Http {
                host: host.to_owned(),
                reason: "bad Content-Length".into(),
            })?),
            None => None,
        };
        if length.is_some_and(|n| n > max) {
            return Err(RegistryError::TooLarge(max));
        }
        Ok(match (chunked, length) {
            (true, _) => Box::new(Chunked::new(self.reader).take(max)),
            (false, Some(n)) => Box::new(self.reader.take(n)),
            (false, None) => Box::new(self.reader.take(max)),
        })
    }

    fn read_document(self, what: &str, host: &str) -> Result<Vec<u8>, RegistryError> {
        let mut body = self.body(MAX_DOCUMENT + 1, host)?;
        let mut out = Vec::new();
        body.read_to_end(&mut out)
            .map_err(|source| RegistryError::Io {
                what: format!("reading {what}"),
                source,
            })?;
        if out.len() as u64 > MAX_DOCUMENT {
            return Err(RegistryError::TooLarge(MAX_DOCUMENT));
        }
        Ok(out)
    }
}

/// Reads one CRLF- (or LF-) terminated line within `budget`.
fn read_line(r: &mut dyn BufRead, budget: &mut usize, host: &str) -> Result<String, RegistryError> {
    let mut line = Vec::new();
    let n = r
        .take(*budget as u64 + 1)
        .read_until(b'\n', &mut line)
        .map_err(|source| RegistryError::Io {
            what: format!("reading from {host}"),
            source,
        })?;
    if n > *budget || !line.ends_with(b"\n") {
        return Err(RegistryError::Http {
            host: host.to_owned(),
            reason: "response head too long or truncated".into(),
        });
    }
    *budget -= n;
    let s = String::from_utf8(line).map_err(|_| RegistryError::Http {
        host: host.to_owned(),
        reason: "response head is not UTF-8".into(),
    })?;
    Ok(s.trim_end_matches(['\r', '\n']).to_owned())
}

/// Parses a response head from `r`: the status and the headers.
fn read_head(
    r: &mut dyn BufRead,
    host: &str,
) -> Result<(u16, Vec<(String, String)>), RegistryError> {
    let mut budget = MAX_HEAD;
    let bad = |reason: &str| RegistryError::Http {
        host: host.to_owned(),
        reason: reason.to_owned(),
    };
    let status_line = read_line(r, &mut budget, host)?;
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(bad("not an HTTP/1.x response"));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .filter(|s| (100..600).contains(s))
        .ok_or_else(|| bad("bad status"))?;
    let mut headers = Vec::new();
    loop {
        let line = read_line(r, &mut budget, host)?;
        if line.is_empty() {
            break;
        }
        let (k, v) = line.split_once(':').ok_or_else(|| bad("bad header line"))?;
        headers.push((k.trim().to_owned(), v.trim().to_owned()));
    }
    Ok((status, headers))
}

/// A chunked transfer-encoded body.
struct Chunked<R: BufRead> {
    inner: R,
    left: u64,
    done: bool,
}

impl<R: BufRead> Chunked<R> {
    fn new(inner: R) -> Self {
        Self {
            inner,
            left: 0,
            done: false,
        }
    }

    fn size_line(&mut self) -> io::Result<u64> {
        let mut line = Vec::new();
        (&mut self.inner).take(1024).read_until(b'\n', &mut line)?;
        let text = std::str::from_utf8(&line)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"))?;
        let size = text.trim().split(';').next().unwrap_or_default();
        u64::from_str_radix(size, 16)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"))
    }
}

impl<R: BufRead> Read for Chunked<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.done || buf.is_empty() {
            return Ok(0);
        }
        if self.left == 0 {
            self.left = self.size_line()?;
            if self.left == 0 {
                self.done = true;
                return Ok(0);
            }
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "chunk truncated",
            ));
        }
        self.left -= n as u64;
        if self.left == 0 {
            let mut crlf = Vec::new();
            (&mut self.inner).take(2).read_until(b'\n', &mut crlf)?;
        }
        Ok(n)
    }
}

/// Parses a `WWW-Authenticate` challenge: its scheme and parameters.
fn parse_challenge(h: &str) -> (String, Vec<(String, String)>) {
    let (scheme, rest) = h.trim().split_once(' ').unwrap_or((h.trim(), ""));
    let mut params = Vec::new();
    let mut rest = rest.trim();
    while !rest.is_empty() {
        let Some((k, after)) = rest.split_once('=') else {
            break;
        };
        let after = after.trim_start();
        let (v, next) = if let Some(q) = after.strip_prefix('"') {
            match q.find('"') {
                Some(i) => (&q[..i], &q[i + 1..]),
                None => (q, ""),
            }
        } else {
            match after.find(',') {
                Some(i) => (&after[..i], &after[i..]),
                None => (after, ""),
            }
        };
        params.push((
            k.trim().trim_start_matches(',').trim().to_owned(),
            v.to_owned(),
        ));
        rest = next.trim_start_matches([',', ' ']);
    }
    (scheme.to_ascii_lowercase(), params)
}

fn url_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A registry client for one repository.
struct Client {
    reference: Reference,
    tls: bool,
    credentials: Option<Credentials>,
    authorization: Option<String>,
}

impl Client {
    fn new(reference: Reference) -> Self {
        let tls = !insecure(reference.api_host());
        let credentials = credentials_for(&reference.registry);
        Client {
            reference,
            tls,
            credentials,
            authorization: None,
        }
    }

    fn basic(&self) -> Option<String> {
        self.credentials.as_ref().map(|c| {
            let raw = zeroize::Zeroizing::new(format!("{}:{}", c.username, c.password.as_str()));
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(raw.as_bytes())
            )
        })
    }

    /// One GET, following redirects (without credentials to another host).
    fn get(&self, url: &Url, accept: &str, auth: Option<&str>) -> Result<Response, RegistryError> {
        let mut url = url.clone();
        let origin = url.host.clone();
        for _ in 0..=MAX_REDIRECTS {
            let mut conn = connect(&url)?;
            let mut req = format!(
                "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: cloister\r\nAccept: {accept}\r\nConnection: close\r\n",
                url.path, url.host
            );
            if let Some(a) = auth.filter(|_| url.host == origin) {
                req.push_str(&format!("Authorization: {a}\r\n"));
            }
            req.push_str("\r\n");
            conn.write_all(req.as_bytes())
                .and_then(|()| conn.flush())
                .map_err(|source| RegistryError::Io {
                    what: format!("sending to {}", url.host),
                    source,
                })?;
            let mut reader = BufReader::new(conn);
            let (status, headers) = read_head(&mut reader, &url.host)?;
            let resp = Response {
                status,
                headers,
                reader,
            };
            if matches!(status, 301 | 302 | 303 | 307 | 308) {
                let loc = resp.header("location").unwrap_or_default().to_owned();
                url = if loc.starts_with('/') {
                    Url {
                        path: loc,
                        ..url.clone()
                    }
                } else {
                    Url::parse(&loc).ok_or_else(|| RegistryError::Http {
                        host: url.host.clone(),
                        reason: format!("bad redirect {loc:?}"),
                    })?
                };
                continue;
            }
            return Ok(resp);
        }
        Err(RegistryError::Http {
            host: origin,
            reason: "too many redirects".into(),
        })
    }

    /// Gets a token for a `Bearer` challenge.
    fn token(&self, params: &[(String, String)]) -> Result<String, RegistryError> {
        let param = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        let realm = param("realm")
            .and_then(Url::parse)
            .ok_or_else(|| RegistryError::Http {
                host: self.reference.api_host().to_owned(),
                reason: "Bearer challenge without a usable realm".into(),
            })?;
        let mut query = Vec::new();
        if let Some(s) = param("service") {
            query.push(format!("service={}", url_encode(s)));
        }
        let scope = param("scope")
            .map(str::to_owned)
            .unwrap_or_else(|| format!("repository:{}:pull", self.reference.repository));
        query.push(format!("scope={}", url_encode(&scope)));
        let sep = if realm.path.contains('?') { '&' } else { '?' };
        let url = Url {
            path: format!("{}{sep}{}", realm.path, query.join("&")),
            ..realm
        };
        let resp = self.get(&url, "application/json", self.basic().as_deref())?;
        let host = url.host.clone();
        if resp.status != 200 {
            return Err(status_error(resp, &url.as_string()));
        }
        #[derive(Deserialize)]
        struct Token {
            token: Option<String>,
            access_token: Option<String>,
        }
        let body = resp.read_document("the token", &host)?;
        let t: Token = serde_json::from_slice(&body).map_err(|e| RegistryError::Document {
            what: "the token answer".into(),
            reason: e.to_string(),
        })?;
        t.token
            .or(t.access_token)
            .filter(|t| !t.is_empty() && t.len() < 64 * 1024 && !t.contains(['\r', '\n']))
            .ok_or_else(|| RegistryError::Document {
                what: "the token answer".into(),
                reason: "no token".into(),
            })
    }

    /// GET on the repository's API, authenticating on a 401 once.
    fn api_get(&mut self, path: &str, accept: &str) -> Result<Response, RegistryError> {
        let url = Url {
            tls: self.tls,
            host: self.reference.api_host().to_owned(),
            path: format!("/v2/{}/{path}", self.reference.repository),
        };
        let resp = self.get(&url, accept, self.authorization.as_deref())?;
        if resp.status != 401 || self.authorization.is_some() {
            return check(resp, &url);
        }
        let challenge = resp
            .header("www-authenticate")
            .unwrap_or_default()
            .to_owned();
        let (scheme, params) = parse_challenge(&challenge);
        self.authorization = match scheme.as_str() {
            "bearer" => Some(format!("Bearer {}", self.token(&params)?)),
            "basic" => self.basic(),
            _ => None,
        };
        if self.authorization.is_none() {
            return check(resp, &url);
        }
        let resp = self.get(&url, accept, self.authorization.as_deref())?;
        check(resp, &url)
    }
}

fn status_error(resp: Response, url: &str) -> RegistryError {
    let status = resp.status;
    let host = Url::parse(url).map(|u| u.host).unwrap_or_default();
    let body = resp
        .body(4096, &host)
        .ok()
        .map(|mut b| {
            let mut v = Vec::new();
            let _ = b.read_to_end(&mut v);
            v
        })
        .unwrap_or_default();
    let message = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| {
            v["errors"][0]["message"]
                .as_str()
                .or(v["details"].as_str())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| {
            String::from_utf8_lossy(&body)
                .trim()
                .chars()
                .take(200)
                .collect()
        });
    RegistryError::Status {
        url: url.to_owned(),
        status,
        message,
    }
}

fn check(resp: Response, url: &Url) -> Result<Response, RegistryError> {
    if resp.status == 200 {
        Ok(resp)
    } else {
        Err(status_error(resp, &url.as_string()))
    }
}

/// A content descriptor.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    digest: String,
    size: u64,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Debug, Clone, Deserialize)]
struct Platform {
    architecture: String,
    os: String,
    #[serde(default)]
    variant: Option<String>,
}

/// An image manifest or an index (the fields both can have).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Document {
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
}

/// The registry's name for this host's architecture.
fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn digest_of(what: &str, d: &str) -> Result<Sha256Digest, RegistryError> {
    Sha256Digest::parse(d).map_err(|e| RegistryError::Document {
        what: what.to_owned(),
        reason: format!("digest {d:?}: {e}"),
    })
}

/// Fetches a manifest (by tag or digest); checks it against `expected` when given.
fn fetch_manifest(
    client: &mut Client,
    reference: &str,
    expected: Option<Sha256Digest>,
) -> Result<(Vec<u8>, Option<String>), RegistryError> {
    let accept = format!("{OCI_INDEX}, {OCI_MANIFEST}, {DOCKER_LIST}, {DOCKER_MANIFEST}");
    let resp = client.api_get(&format!("manifests/{reference}"), &accept)?;
    let content_type = resp.header("content-type").map(str::to_owned);
    let host = client.reference.api_host().to_owned();
    let bytes = resp.read_document("the manifest", &host)?;
    if let Some(expected) = expected {
        let actual = Sha256Digest::of(&bytes);
        if actual != expected {
            return Err(RegistryError::Digest {
                what: "manifest".into(),
                expected,
                actual,
            });
        }
    }
    Ok((bytes, content_type))
}

/// Hashes what passes through.
struct HashingReader<R> {
    inner: R,
    ctx: aws_lc_rs::digest::Context,
    count: u64,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.ctx.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// Pulls `image` from its registry and writes it to `out` as a tar holding an OCI image layout
/// tagged with the reference's tag, at most `max_bytes` of blobs. Returns the bytes of blobs.
pub fn pull_to_archive(
    image: &str,
    out: &mut dyn Write,
    max_bytes: u64,
) -> Result<u64, SourceError> {
    Ok(pull(image, out, max_bytes)?)
}

/// Largest image [`pull_to_temp_archive`] downloads.
pub const MAX_PULL: u64 = 32 << 30;

/// Pulls `image` into an archive in a private temporary directory (removed by
/// [`crate::dockerfile::cleanup`]) and returns its path: what `build-enclave --docker-uri`
/// reads when no Docker engine runs or the engine does not have the image.
pub fn pull_to_temp_archive(image: &str) -> Result<std::path::PathBuf, SourceError> {
    let dir = tempfile::Builder::new()
        .prefix("cloister-pull")
        .tempdir()
        .map_err(|source| SourceError::Io {
            path: std::env::temp_dir().display().to_string(),
            source,
        })?;
    let path = dir.path().join("image.tar");
    let file = std::fs::File::create(&path).map_err(|source| SourceError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let mut w = io::BufWriter::new(file);
    pull_to_archive(image, &mut w, MAX_PULL)?;
    w.flush().map_err(|source| SourceError::Io {
        path: path.display().to_string(),
        source,
    })?;
    crate::dockerfile::keep_until_cleanup(dir);
    Ok(path)
}

fn pull(image: &str, out: &mut dyn Write, max_bytes: u64) -> Result<u64, RegistryError> {
    let reference = Reference::parse(image)?;
    let pinned = reference
        .reference
        .starts_with("sha256:")
        .then(|| digest_of("the reference", &reference.reference))
        .transpose()?;
    let mut client = Client::new(reference.clone());
    let (mut bytes, mut content_type) = fetch_manifest(&mut client, &reference.reference, pinned)?;
    let parse = |b: &[u8]| -> Result<Document, RegistryError> {
        serde_json::from_slice(b).map_err(|e| RegistryError::Document {
            what: "the manifest".into(),
            reason: e.to_string(),
        })
    };
    let mut doc = parse(&bytes)?;
    let media = |doc: &Document, ct: &Option<String>| {
        doc.media_type
            .clone()
            .or_else(|| ct.clone())
            .unwrap_or_default()
    };
    if doc.manifests.is_some()
        || [OCI_INDEX, DOCKER_LIST].contains(&media(&doc, &content_type).as_str())
    {
        let arch = host_arch();
        let chosen = doc
            .manifests
            .unwrap_or_default()
            .into_iter()
            .find(|m| {
                m.platform.as_ref().is_some_and(|p| {
                    p.os == "linux"
                        && p.architecture == arch
                        && (arch != "arm64" || p.variant.as_deref().is_none_or(|v| v == "v8"))
                })
            })
            .ok_or_else(|| RegistryError::NoPlatform(arch.to_owned()))?;
        let expected = digest_of("the index", &chosen.digest)?;
        (bytes, content_type) = fetch_manifest(&mut client, &chosen.digest, Some(expected))?;
        doc = parse(&bytes)?;
    }
    let manifest_media = media(&doc, &content_type);
    let config = doc.config.clone().ok_or_else(|| RegistryError::Document {
        what: "the manifest".into(),
        reason: "no config".into(),
    })?;
    let layers = doc.layers.clone().unwrap_or_default();
    if layers.len() > MAX_LAYERS {
        return Err(RegistryError::Document {
            what: "the manifest".into(),
            reason: format!("more than {MAX_LAYERS} layers"),
        });
    }
    let total = layers
        .iter()
        .chain(std::iter::once(&config))
        .try_fold(0u64, |acc, d| acc.checked_add(d.size))
        .filter(|t| *t <= max_bytes)
        .ok_or(RegistryError::TooLarge(max_bytes))?;

    let io_err = |source: io::Error| RegistryError::Io {
        what: "writing the image archive".into(),
        source,
    };
    let mut tar = tar::Builder::new(out);
    let add = |tar: &mut tar::Builder<&mut dyn Write>, name: &str, data: &[u8]| {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut h, name, data).map_err(io_err)
    };
    add(&mut tar, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let manifest_digest = Sha256Digest::of(&bytes);
    add(
        &mut tar,
        &format!("blobs/sha256/{}", manifest_digest.hex()),
        &bytes,
    )?;
    let mut seen = std::collections::BTreeSet::new();
    for d in std::iter::once(&config).chain(layers.iter()) {
        let expected = digest_of("the manifest", &d.digest)?;
        if !seen.insert(expected.hex()) {
            continue;
        }
        let resp = client.api_get(&format!("blobs/{}", d.digest), "*/*")?;
        let host = client.reference.api_host().to_owned();
        let body = resp.body(d.size, &host)?;
        let mut reader = HashingReader {
            inner: body,
            ctx: aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256),
            count: 0,
        };
        let mut h = tar::Header::new_ustar();
        h.set_size(d.size);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        tar.append_data(
            &mut h,
            format!("blobs/sha256/{}", expected.hex()),
            &mut reader,
        )
        .map_err(|source| RegistryError::Io {
            what: format!("downloading {}", d.digest),
            source,
        })?;
        let count = reader.count;
        let mut arr = [0u8; 32];
        arr.copy_from_slice(reader.ctx.finish().as_ref());
        let actual = Sha256Digest(arr);
        if count != d.size || actual != expected {
            return Err(RegistryError::Digest {
                what: format!("blob {}", d.digest),
                expected,
                actual,
            });
        }
    }
    let tag = if reference.reference.starts_with("sha256:") {
        "latest".to_owned()
    } else {
        reference.reference.clone()
    };
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{
            "mediaType": if manifest_media.is_empty() { OCI_MANIFEST.to_owned() } else { manifest_media },
            "digest": format!("sha256:{}", manifest_digest.hex()),
            "size": bytes.len(),
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }],
    });
    let index = serde_json::to_vec(&index).map_err(|e| io_err(io::Error::other(e)))?;
    add(&mut tar, "index.json", &index)?;
    tar.into_inner().and_then(|w| w.flush()).map_err(io_err)?;
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_follow_docker_defaults() {
        let r = Reference::parse("hello:latest").unwrap();
        assert_eq!(
            (
                r.registry.as_str(),
                r.repository.as_str(),
                r.reference.as_str()
            ),
            ("docker.io", "library/hello", "latest")
        );
        assert_eq!(r.api_host(), DOCKER_HUB);
        let r = Reference::parse("127.0.0.1:5000/team/app").unwrap();
        assert_eq!(
            (
                r.registry.as_str(),
                r.repository.as_str(),
                r.reference.as_str()
            ),
            ("127.0.0.1:5000", "team/app", "latest")
        );
        let d = format!("sha256:{}", "a".repeat(64));
        let r = Reference::parse(&format!("localhost/app@{d}")).unwrap();
        assert_eq!(r.reference, d);
        for bad in ["", "UPPER", "a b", "x:", "x@sha256:zz", "a//b", "x:tag/y"] {
            assert!(Reference::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn credentials_from_docker_config() {
        let auth = base64::engine::general_purpose::STANDARD.encode("u:p:q");
        let cfg = format!(
            r#"{{"auths":{{"https://index.docker.io/v1/":{{"auth":"{auth}"}},"reg.example:5000":{{"username":"a","password":"b"}}}}}}"#
        );
        let c = credentials_in(cfg.as_bytes(), "docker.io").unwrap();
        assert_eq!((c.username.as_str(), c.password.as_str()), ("u", "p:q"));
        let c = credentials_in(cfg.as_bytes(), "reg.example:5000").unwrap();
        assert_eq!((c.username.as_str(), c.password.as_str()), ("a", "b"));
        assert!(credentials_in(cfg.as_bytes(), "other").is_none());
        assert_eq!(format!("{c:?}"), "Credentials(a, <redacted>)");
    }

    #[test]
    fn challenges_and_heads_parse() {
        let (s, p) = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/hello:pull""#,
        );
        assert_eq!(s, "bearer");
        assert_eq!(
            p[0],
            ("realm".into(), "https://auth.docker.io/token".into())
        );
        assert_eq!(p[2].1, "repository:library/hello:pull");
        let mut r = &b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc"[..];
        let (status, h) = read_head(&mut r, "h").unwrap();
        assert_eq!((status, h.len()), (200, 1));
        let long = format!("HTTP/1.1 200 OK\r\nX: {}\r\n\r\n", "a".repeat(MAX_HEAD));
        assert!(read_head(&mut long.as_bytes(), "h").is_err());
        let mut c = Chunked::new(&b"3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n"[..]);
        let mut out = String::new();
        c.read_to_string(&mut out).unwrap();
        assert_eq!(out, "abcde");
        assert_eq!(
            Url::parse("https://h:1/p?q").unwrap(),
            Url {
                tls: true,
                host: "h:1".into(),
                path: "/p?q".into()
            }
        );
        assert!(Url::parse("ftp://h/").is_none());
        assert!(insecure("127.0.0.1:5000") && insecure("localhost") && !insecure("r.example"));
    }
}
