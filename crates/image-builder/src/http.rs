//! The image builder's one HTTP/1.1 client: hyper's, over a stream the caller opens (TCP, TLS
//! to a registry, the Docker engine's Unix socket), driven by a private current-thread runtime
//! so that its callers stay synchronous. The registry client, the Docker engine input and the
//! CLI's Dockerfile builds on a Docker engine all use it.
//!
//! [`Http`] owns the runtime: [`Http::block_on`] runs the caller's connect (which bounds its
//! own waits), [`Http::send`] sends one [`Request`] (made by [`get`] or [`post`]) and returns
//! the [`Response`] head, whose body is a blocking [`Read`] ([`Body`]). A request's body
//! ([`RequestBody`]) is empty or a file, streamed as it is read. Response heads are bounded by
//! the caller's limit; bodies are bounded by the callers (`Read::take`). With a timeout, every
//! wait of the exchange (the head, each piece of the body) is bounded by it, as a socket read
//! timeout bounds a blocking read.

use bytes::Bytes;
use http_body_util::BodyExt as _;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::io::{self, Read};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The smallest head limit hyper accepts.
const MIN_HEAD: usize = 8 * 1024;
/// The bytes of a head besides its headers: the status line (`HTTP/1.1 200 OK`) and the
/// empty line.
const HEAD_OVERHEAD: usize = 19;

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The stream failed, or a wait exceeded the timeout (`ErrorKind::TimedOut`).
    #[error("{0}")]
    Io(#[source] io::Error),
    /// The response head is larger than the limit.
    #[error("response head too large")]
    HeadTooLarge,
    /// The connection closed before the response head ended.
    #[error("connection closed in the response head")]
    Truncated,
    /// The response is not HTTP/1.x.
    #[error("{0}")]
    Malformed(String),
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "timed out")
}

impl HttpError {
    fn from_hyper(e: &hyper::Error) -> Self {
        if e.is_parse_too_large() {
            return HttpError::HeadTooLarge;
        }
        if e.is_incomplete_message() {
            return HttpError::Truncated;
        }
        if e.is_parse() || e.is_parse_status() {
            return HttpError::Malformed(e.to_string());
        }
        HttpError::Io(io::Error::other(chain(e)))
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

/// A runtime for one exchange.
pub struct Http {
    rt: Arc<tokio::runtime::Runtime>,
    timeout: Option<Duration>,
}

impl std::fmt::Debug for Http {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Http {
    /// A client whose waits are each bounded by `timeout` (none: unbounded).
    pub fn new(timeout: Option<Duration>) -> io::Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        Ok(Http {
            rt: Arc::new(rt),
            timeout,
        })
    }

    /// Runs `f` (a connect) to completion on this client's runtime.
    pub fn block_on<F: Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// Sends `request` over `stream` and reads the response head, at most `max_head` bytes.
    /// The request's body is sent while the head is awaited; an error of the stream before the
    /// head arrived ([`HttpError::Io`]) is one of sending the request, or of reading the head.
    pub fn send<S>(
        self,
        stream: S,
        request: Request,
        max_head: usize,
    ) -> Result<Response, HttpError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let timeout = self.timeout;
        let rt = Arc::clone(&self.rt);
        let response = rt.block_on(async move {
            let exchange = async {
                let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
                    .max_buf_size(max_head.max(MIN_HEAD))
                    .handshake(TokioIo::new(stream))
                    .await
                    .map_err(|e| HttpError::from_hyper(&e))?;
                tokio::spawn(conn);
                sender
                    .send_request(request)
                    .await
                    .map_err(|e| HttpError::from_hyper(&e))
            };
            match timeout {
                Some(t) => tokio::time::timeout(t, exchange)
                    .await
                    .map_err(|_| HttpError::Io(timed_out()))?,
                None => exchange.await,
            }
        })?;
        let (parts, body) = response.into_parts();
        // hyper's buffer bounds the head only to within one read: count it as sent.
        let head = parts.headers.iter().fold(HEAD_OVERHEAD, |n, (k, v)| {
            n.saturating_add(k.as_str().len() + v.len() + 4)
        });
        if head > max_head {
            return Err(HttpError::HeadTooLarge);
        }
        Ok(Response {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body: Body {
                http: self,
                body,
                pending: Bytes::new(),
                done: false,
            },
        })
    }
}

/// A response whose head has been read.
#[derive(Debug)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The headers (read them with [`Response::header`]).
    pub(crate) headers: hyper::HeaderMap,
    /// The body, decoded (chunked, by length or until the connection closes).
    pub body: Body,
}

impl Response {
    /// The value of header `name`, when it is text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A response body, read with blocking reads (each bounded by the client's timeout).
pub struct Body {
    http: Http,
    body: Incoming,
    pending: Bytes,
    done: bool,
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Body")
            .field("pending", &self.pending.len())
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl Read for Body {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pending.is_empty() {
            if self.done || buf.is_empty() {
                return Ok(0);
            }
            let timeout = self.http.timeout;
            let body = &mut self.body;
            let frame = self.http.rt.block_on(async move {
                match timeout {
                    Some(t) => tokio::time::timeout(t, body.frame()).await.ok(),
                    None => Some(body.frame().await),
                }
            });
            match frame {
                None => return Err(timed_out()),
                Some(None) => self.done = true,
                Some(Some(Err(e))) => {
                    return Err(match HttpError::from_hyper(&e) {
                        HttpError::Truncated => io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "connection closed inside the body",
                        ),
                        HttpError::Io(e) => e,
                        other => io::Error::new(io::ErrorKind::InvalidData, other.to_string()),
                    })
                }
                Some(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        self.pending = data;
                    }
                }
            }
        }
        let n = buf.len().min(self.pending.len());
        buf[..n].copy_from_slice(&self.pending.split_to(n));
        Ok(n)
    }
}

/// A request [`Http::send`] sends.
pub type Request = hyper::Request<RequestBody>;

/// Most bytes of a request body read from its file at a time.
const BODY_CHUNK: usize = 64 * 1024;

/// A request's body: none, or `length` bytes of a file, read as they are sent.
#[derive(Debug)]
pub struct RequestBody {
    file: Option<tokio::fs::File>,
    remaining: u64,
}

impl RequestBody {
    /// No body.
    pub fn empty() -> Self {
        RequestBody {
            file: None,
            remaining: 0,
        }
    }

    /// The first `length` bytes of `file` from its current position; a file that ends before
    /// fails the exchange.
    pub fn file(file: std::fs::File, length: u64) -> Self {
        RequestBody {
            file: Some(tokio::fs::File::from_std(file)),
            remaining: length,
        }
    }

    /// How many bytes are left to send.
    pub fn len(&self) -> u64 {
        self.remaining
    }

    /// Whether nothing is left to send.
    pub fn is_empty(&self) -> bool {
        self.remaining == 0
    }
}

impl hyper::body::Body for RequestBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        let Some(file) = this.file.as_mut().filter(|_| this.remaining > 0) else {
            return Poll::Ready(None);
        };
        let want = usize::try_from(this.remaining).map_or(BODY_CHUNK, |r| r.min(BODY_CHUNK));
        let mut buf = vec![0u8; want];
        let mut read = ReadBuf::new(&mut buf);
        if let Err(e) = std::task::ready!(Pin::new(file).poll_read(cx, &mut read)) {
            return Poll::Ready(Some(Err(e)));
        }
        let n = read.filled().len();
        if n == 0 {
            return Poll::Ready(Some(Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the request body's file ended early",
            ))));
        }
        buf.truncate(n);
        // n <= want <= remaining, so both conversions hold.
        this.remaining = this
            .remaining
            .saturating_sub(u64::try_from(n).unwrap_or(u64::MAX));
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(buf)))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

/// A request of `method` for `path` with `headers` (the `Host` header among them).
fn request(
    method: hyper::Method,
    path: &str,
    headers: &[(&str, &str)],
    body: RequestBody,
) -> Result<Request, HttpError> {
    let mut builder = hyper::Request::builder().method(method).uri(path);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder
        .body(body)
        .map_err(|e| HttpError::Malformed(format!("cannot form the request: {e}")))
}

/// A `GET` of `path` with `headers` (the `Host` header among them).
pub fn get(path: &str, headers: &[(&str, &str)]) -> Result<Request, HttpError> {
    request(hyper::Method::GET, path, headers, RequestBody::empty())
}

/// A `POST` of `body` to `path` with `headers` (the `Host` header among them); the
/// `Content-Length` header is the body's length.
pub fn post(path: &str, headers: &[(&str, &str)], body: RequestBody) -> Result<Request, HttpError> {
    let length = body.len().to_string();
    let mut all = headers.to_vec();
    all.push(("content-length", &length));
    request(hyper::Method::POST, path, &all, body)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};

    /// Sends `request` to a server that answers `answer` and closes; returns the exchange.
    pub(crate) fn answer(answer: &[u8], max_head: usize) -> Result<Response, HttpError> {
        let (client, server) = std::os::unix::net::UnixStream::pair().unwrap();
        let answer = answer.to_vec();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(server.try_clone().unwrap());
            loop {
                let mut l = String::new();
                if reader.read_line(&mut l).unwrap_or(0) == 0 || l == "\r\n" {
                    break;
                }
            }
            let mut s = server;
            let _ = s.write_all(&answer);
        });
        client.set_nonblocking(true).unwrap();
        let http = Http::new(Some(Duration::from_secs(10))).unwrap();
        let stream = http
            .block_on(async { tokio::net::UnixStream::from_std(client) })
            .unwrap();
        let req = get("/x", &[("host", "h")]).unwrap();
        http.send(stream, req, max_head)
    }

    #[test]
    fn heads_parse_and_bodies_decode() {
        let mut r = answer(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc", 64 << 10).unwrap();
        assert_eq!((r.status, r.headers.len()), (200, 1));
        assert_eq!(r.header("content-length"), Some("3"));
        let mut out = String::new();
        r.body.read_to_string(&mut out).unwrap();
        assert_eq!(out, "abc");

        let mut r = answer(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n",
            64 << 10,
        )
        .unwrap();
        let mut out = String::new();
        r.body.read_to_string(&mut out).unwrap();
        assert_eq!(out, "abcde");

        let mut r = answer(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-T: 1\r\n\r\n",
            64 << 10,
        )
        .unwrap();
        let mut out = String::new();
        r.body.read_to_string(&mut out).unwrap();
        assert_eq!(out, "hello world");

        let mut r = answer(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n",
            64 << 10,
        )
        .unwrap();
        assert!(r.body.read_to_end(&mut Vec::new()).is_err());

        let mut r = answer(
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
            64 << 10,
        )
        .unwrap();
        assert!(r.body.read_to_end(&mut Vec::new()).is_err());
    }

    #[test]
    fn a_file_body_is_posted_with_its_length() {
        let (client, server) = std::os::unix::net::UnixStream::pair().unwrap();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(server.try_clone().unwrap());
            let (mut request_line, mut length) = (String::new(), 0usize);
            reader.read_line(&mut request_line).unwrap();
            loop {
                let mut l = String::new();
                if reader.read_line(&mut l).unwrap_or(0) == 0 || l == "\r\n" {
                    break;
                }
                if let Some(v) = l.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap();
                }
            }
            let mut body = vec![0u8; length];
            reader.read_exact(&mut body).unwrap();
            let text = format!("{} {}", request_line.trim_end(), body.len());
            let mut s = server;
            let _ = write!(s, "HTTP/1.1 201 Created\r\n\r\n{text}");
        });
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&vec![7u8; 200_000]).unwrap();
        std::io::Seek::rewind(&mut file).unwrap();
        client.set_nonblocking(true).unwrap();
        let http = Http::new(Some(Duration::from_secs(10))).unwrap();
        let stream = http
            .block_on(async { tokio::net::UnixStream::from_std(client) })
            .unwrap();
        let body = RequestBody::file(file, 150_000);
        assert_eq!((body.len(), body.is_empty()), (150_000, false));
        let req = post("/up?t=a:b", &[("host", "h")], body).unwrap();
        let mut r = http.send(stream, req, 64 << 10).unwrap();
        assert_eq!(r.status, 201);
        let mut out = String::new();
        r.body.read_to_string(&mut out).unwrap();
        assert_eq!(out, "POST /up?t=a:b HTTP/1.1 150000");
        assert!(RequestBody::empty().is_empty());
    }

    #[test]
    fn heads_are_bounded_and_checked() {
        let long = format!("HTTP/1.1 200 OK\r\nX: {}\r\n\r\n", "a".repeat(64 << 10));
        assert!(matches!(
            answer(long.as_bytes(), 64 << 10),
            Err(HttpError::HeadTooLarge)
        ));
        assert!(matches!(
            answer(b"SSH-2.0\r\n\r\n", 64 << 10),
            Err(HttpError::Malformed(_))
        ));
        assert!(answer(b"HTTP/1.1 200", 64 << 10).is_err());
        assert!(answer(b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n", 64 << 10).is_err());
    }
}
