//! The KMS client's HTTP/1.1: hyper's client over the stream the caller opened (vsock to the
//! parent's proxy, TCP, either under TLS), one request per connection, with the response caps
//! ([`MAX_RESPONSE_HEADERS`], [`MAX_RESPONSE_BODY`]) that keep a hostile endpoint from filling
//! the enclave's memory.

use super::{KmsClientError, MAX_RESPONSE_BODY, MAX_RESPONSE_HEADERS};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

/// A request the client sends.
pub(super) type Request = hyper::Request<Full<Bytes>>;

/// The bytes of a head besides its headers: the status line and the empty line.
const HEAD_OVERHEAD: usize = 19;

/// Ends the connection's task when the exchange ends (or is dropped by a timeout).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What a hyper failure reads as; `in_body` says whether the head had arrived.
fn hyper_error(e: hyper::Error, in_body: bool) -> KmsClientError {
    if e.is_parse_too_large() {
        KmsClientError::Http("headers too large")
    } else if e.is_incomplete_message() {
        KmsClientError::Http(if in_body {
            "connection closed inside the body"
        } else {
            "connection closed before the headers ended"
        })
    } else if e.is_parse_status() {
        KmsClientError::Http("bad status code")
    } else if e.is_parse() {
        KmsClientError::Http("malformed response head")
    } else {
        KmsClientError::Connect(std::io::Error::other(e))
    }
}

/// Sends `request` over `stream` and reads one response within the caps; returns (status,
/// body).
pub(super) async fn exchange<S>(
    stream: S,
    request: Request,
) -> Result<(u16, Vec<u8>), KmsClientError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
        .max_buf_size(MAX_RESPONSE_HEADERS)
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| hyper_error(e, false))?;
    let _conn = AbortOnDrop(tokio::spawn(async move {
        let _ = conn.await;
    }));
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| hyper_error(e, false))?;
    let status = response.status().as_u16();
    if !(100..600).contains(&status) {
        return Err(KmsClientError::Http("bad status code"));
    }
    // hyper's buffer bounds the head only to within one read: count it as sent.
    let head = response.headers().iter().fold(HEAD_OVERHEAD, |n, (k, v)| {
        n.saturating_add(k.as_str().len() + v.len() + 4)
    });
    if head > MAX_RESPONSE_HEADERS {
        return Err(KmsClientError::Http("headers too large"));
    }
    if let Some(length) = response.headers().get(hyper::header::CONTENT_LENGTH) {
        let n: usize = length
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .ok_or(KmsClientError::Http("bad Content-Length"))?;
        if n > MAX_RESPONSE_BODY {
            return Err(KmsClientError::Http("body too large"));
        }
    }
    let mut body = response.into_body();
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| hyper_error(e, true))?;
        if let Ok(data) = frame.into_data() {
            if out.len().saturating_add(data.len()) > MAX_RESPONSE_BODY {
                return Err(KmsClientError::Http("body too large"));
            }
            out.extend_from_slice(&data);
        }
    }
    Ok((status, out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// One exchange with a server that reads the request head, answers `answer` and closes.
    async fn answer(answer: &'static [u8]) -> Result<(u16, Vec<u8>), KmsClientError> {
        let (client, mut server) = tokio::io::duplex(64 * 1024);
        tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut buf = [0u8; 1024];
            while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                match server.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => seen.extend_from_slice(&buf[..n]),
                }
            }
            let _ = server.write_all(answer).await;
            let _ = server.shutdown().await;
        });
        let request = hyper::Request::post("/")
            .header("host", "kms")
            .header("content-length", "0")
            .body(Full::new(Bytes::new()))
            .unwrap();
        exchange(client, request).await
    }

    #[tokio::test]
    async fn responses_parse_within_caps() {
        assert_eq!(
            answer(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
                .await
                .unwrap(),
            (200, b"hello".to_vec())
        );
        assert_eq!(
            answer(b"HTTP/1.1 400 Bad\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x\r\nde\r\n0\r\n\r\n")
                .await
                .unwrap(),
            (400, b"abcde".to_vec())
        );
        assert_eq!(
            answer(b"HTTP/1.0 200 OK\r\n\r\nuntil eof").await.unwrap().1,
            b"until eof"
        );
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
                answer(bad).await.is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let huge: &'static [u8] =
            Box::leak(vec![b'a'; MAX_RESPONSE_HEADERS + 10].into_boxed_slice());
        assert!(answer(huge).await.is_err());
        let long: &'static [u8] = Box::leak(
            format!(
                "HTTP/1.1 200 OK\r\nX: {}\r\n\r\n",
                "a".repeat(MAX_RESPONSE_HEADERS)
            )
            .into_bytes()
            .into_boxed_slice(),
        );
        assert!(matches!(
            answer(long).await,
            Err(KmsClientError::Http("headers too large"))
        ));
    }

    #[tokio::test]
    async fn bodies_past_the_cap_are_refused() {
        let chunked: &'static [u8] = Box::leak({
            let mut v = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            let chunk = vec![b'x'; 64 * 1024];
            for _ in 0..=(MAX_RESPONSE_BODY / chunk.len()) {
                v.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                v.extend_from_slice(&chunk);
                v.extend_from_slice(b"\r\n");
            }
            v.extend_from_slice(b"0\r\n\r\n");
            v.into_boxed_slice()
        });
        assert!(matches!(
            answer(chunked).await,
            Err(KmsClientError::Http("body too large"))
        ));
    }
}
