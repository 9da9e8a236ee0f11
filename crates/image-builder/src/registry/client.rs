//! The registry client for one repository: plain HTTP or TLS, redirects, authentication.

use super::auth::{credentials_for, parse_challenge, url_encode, Credentials};
use super::error::RegistryError;
use super::limits::{MAX_DOCUMENT, MAX_HEAD, MAX_REDIRECTS};
use super::reference::Reference;
use crate::http::{self, Http, HttpError};
use base64::Engine as _;
use serde::Deserialize;
use std::io::{self, Read};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

/// Connect and read timeout.
const NET_TIMEOUT: Duration = Duration::from_secs(60);

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
trait Conn: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Conn for T {}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "timed out")
}

/// Runs `f` within [`NET_TIMEOUT`].
async fn within<T>(f: impl std::future::Future<Output = io::Result<T>>) -> io::Result<T> {
    tokio::time::timeout(NET_TIMEOUT, f)
        .await
        .map_err(|_| timed_out())?
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

/// Opens a connection to `url`'s host: TCP (each address tried within [`NET_TIMEOUT`]), then
/// TLS where the URL says so.
fn connect(url: &Url) -> Result<(Http, Box<dyn Conn>), RegistryError> {
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
    let http = Http::new(Some(NET_TIMEOUT)).map_err(io_err)?;
    let tcp = http
        .block_on(async {
            let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
            for addr in tokio::net::lookup_host(hostport.as_str()).await? {
                match within(tokio::net::TcpStream::connect(addr)).await {
                    Ok(tcp) => return Ok(tcp),
                    Err(e) => last = e,
                }
            }
            Err(last)
        })
        .map_err(io_err)?;
    if !url.tls {
        return Ok((http, Box::new(tcp)));
    }
    let name = hostport
        .rsplit_once(':')
        .map_or(hostport.as_str(), |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let server =
        rustls_pki_types::ServerName::try_from(name).map_err(|e| io_err(io::Error::other(e)))?;
    let connector = tokio_rustls::TlsConnector::from(tls_config()?);
    // The handshake is the first thing sent: its failures read as sending failures.
    let tls = http
        .block_on(within(connector.connect(server, tcp)))
        .map_err(|source| RegistryError::Io {
            what: format!("sending to {}", url.host),
            source,
        })?;
    Ok((http, Box::new(tls)))
}

/// A response whose head has been read; the body is read through [`Response::body`].
pub(super) struct Response {
    pub(super) status: u16,
    inner: http::Response,
}

impl Response {
    pub(super) fn header(&self, name: &str) -> Option<&str> {
        self.inner.header(name)
    }

    /// The body, at most `max` bytes (an error past that).
    pub(super) fn body(self, max: u64, host: &str) -> Result<Box<dyn Read>, RegistryError> {
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
        // hyper ends the body at its Content-Length or last chunk; `max` bounds the rest.
        Ok(Box::new(self.inner.body.take(max)))
    }

    pub(super) fn read_document(self, what: &str, host: &str) -> Result<Vec<u8>, RegistryError> {
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

/// What a failed exchange with `host` reads as.
fn exchange_error(e: HttpError, host: &str) -> RegistryError {
    match e {
        HttpError::Io(source) => RegistryError::Io {
            what: format!("reading from {host}"),
            source,
        },
        HttpError::HeadTooLarge | HttpError::Truncated => RegistryError::Http {
            host: host.to_owned(),
            reason: "response head too long or truncated".into(),
        },
        HttpError::Malformed(reason) => RegistryError::Http {
            host: host.to_owned(),
            reason,
        },
    }
}

/// A registry client for one repository.
pub(super) struct Client {
    pub(super) reference: Reference,
    tls: bool,
    credentials: Option<Credentials>,
    authorization: Option<String>,
}

impl Client {
    pub(super) fn new(reference: Reference) -> Self {
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
            let (http, conn) = connect(&url)?;
            let mut headers = vec![
                ("host", url.host.as_str()),
                ("user-agent", "cloister"),
                ("accept", accept),
                ("connection", "close"),
            ];
            if let Some(a) = auth.filter(|_| url.host == origin) {
                headers.push(("authorization", a));
            }
            let request =
                http::get(&url.path, &headers).map_err(|e| exchange_error(e, &url.host))?;
            let inner = http
                .send(conn, request, MAX_HEAD)
                .map_err(|e| exchange_error(e, &url.host))?;
            let status = inner.status;
            let resp = Response { status, inner };
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
    pub(super) fn api_get(&mut self, path: &str, accept: &str) -> Result<Response, RegistryError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_loopback_is_plain() {
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

    #[test]
    fn heads_are_bounded_by_max_head() {
        let long = format!("HTTP/1.1 200 OK\r\nX: {}\r\n\r\n", "a".repeat(MAX_HEAD));
        let e = crate::http::tests::answer(long.as_bytes(), MAX_HEAD).unwrap_err();
        assert!(matches!(
            exchange_error(e, "h"),
            RegistryError::Http { reason, .. } if reason == "response head too long or truncated"
        ));
        let ok = crate::http::tests::answer(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc",
            MAX_HEAD,
        )
        .unwrap();
        assert_eq!((ok.status, ok.headers.len()), (200, 1));
    }
}
