//! What the key service's benchmarks share: SigV4-signed requests made the way the AWS SDKs make
//! them, and a hyper HTTP/1.1 client connection. Each benchmark uses part of it.
#![allow(dead_code)] // Each bench target compiles this module and uses only some of it.

use bytes::Bytes;
use cloister_kms::sigv4::format_amz_date;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// An access key and its secret.
#[derive(Clone)]
pub struct Creds {
    pub akid: String,
    pub secret: String,
}

pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The headers of one signed KMS request to `addr`.
pub struct Signed {
    pub amz_date: String,
    pub host: String,
    pub target: String,
    pub authorization: String,
}

/// The SigV4 `Authorization` of a KMS JSON request in us-east-1, as the SDK signs it.
fn kms_authorization(creds: &Creds, host: &str, amz: &str, target: &str, body: &[u8]) -> String {
    let credentials = cloister_sdk::kms_client::Credentials {
        access_key_id: creds.akid.clone(),
        secret_access_key: creds.secret.clone().into(),
        session_token: None,
    };
    let headers = [
        ("content-type", "application/x-amz-json-1.1"),
        ("host", host),
        ("x-amz-date", amz),
        ("x-amz-target", target),
    ];
    cloister_sdk::kms_client::sigv4_authorization(&credentials, "us-east-1", amz, &headers, body)
}

/// Signs KMS operation `op` with `body` for `addr`, deriving the signing key per request as
/// the AWS SDKs do.
pub fn sign(addr: SocketAddr, creds: &Creds, op: &str, body: &[u8]) -> Signed {
    let amz = format_amz_date(now_secs());
    let host = addr.to_string();
    let target = format!("TrentService.{op}");
    let authorization = kms_authorization(creds, &host, &amz, &target, body);
    Signed {
        amz_date: amz,
        host,
        target,
        authorization,
    }
}

pub fn signed_request(
    addr: SocketAddr,
    creds: &Creds,
    op: &str,
    body: Bytes,
) -> hyper::Request<Full<Bytes>> {
    let s = sign(addr, creds, op, &body);
    hyper::Request::builder()
        .method("POST")
        .uri("/")
        .header("host", s.host)
        .header("content-type", "application/x-amz-json-1.1")
        .header("x-amz-date", s.amz_date)
        .header("x-amz-target", s.target)
        .header("authorization", s.authorization)
        .body(Full::new(body))
        .expect("request")
}

pub type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

pub async fn connect(addr: SocketAddr) -> Sender {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
}

/// One setup call on a fresh connection (moto closes connections after each response); its
/// JSON answer, which must be a success.
pub async fn call(
    sender: &mut Sender,
    addr: SocketAddr,
    creds: &Creds,
    op: &str,
    body: &Value,
) -> Value {
    let req = signed_request(
        addr,
        creds,
        op,
        Bytes::from(serde_json::to_vec(body).expect("json")),
    );
    *sender = connect(addr).await;
    let resp = sender.send_request(req).await.expect("send");
    let status = resp.status();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    assert!(status.is_success(), "{op}: {status} {v}");
    v
}

/// A load whose every request has the body `v`.
pub fn fixed_body(v: &Value) -> BodyFn {
    let b = Bytes::from(serde_json::to_vec(v).expect("json"));
    Arc::new(move |_| b.clone())
}

/// The body of the n-th request of a load.
pub type BodyFn = Arc<dyn Fn(u64) -> Bytes + Send + Sync>;

/// Runs `conns` connections (connection `i` to `addrs[i % len]`) sending `op` with the body
/// `body(n)` (n counts requests) for `secs`; returns requests per second.
pub async fn load(
    addrs: &[SocketAddr],
    creds: &Creds,
    op: &str,
    body: BodyFn,
    conns: usize,
    secs: Duration,
) -> f64 {
    let count = Arc::new(AtomicU64::new(0));
    let seq = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for i in 0..conns {
        let addr = addrs[i % addrs.len()];
        let (count, seq, stop, measuring, creds, body, op) = (
            count.clone(),
            seq.clone(),
            stop.clone(),
            measuring.clone(),
            creds.clone(),
            body.clone(),
            op.to_string(),
        );
        tasks.push(tokio::spawn(async move {
            let mut sender = connect(addr).await;
            while !stop.load(Ordering::Relaxed) {
                // A server that closes after each response (moto's werkzeug does) gets a new
                // connection; a keep-alive server keeps the one it has.
                if sender.ready().await.is_err() {
                    sender = connect(addr).await;
                }
                let n = seq.fetch_add(1, Ordering::Relaxed);
                let req = signed_request(addr, &creds, &op, body(n));
                let resp = match sender.send_request(req).await {
                    Ok(r) => r,
                    Err(_) => {
                        sender = connect(addr).await;
                        continue;
                    }
                };
                let ok = resp.status().is_success();
                let b = resp.into_body().collect().await.expect("body").to_bytes();
                assert!(ok, "{op} failed: {}", String::from_utf8_lossy(&b));
                if measuring.load(Ordering::Relaxed) {
                    count.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await; // warm-up
    measuring.store(true, Ordering::Relaxed);
    let t = Instant::now();
    tokio::time::sleep(secs).await;
    let n = count.load(Ordering::Relaxed);
    let elapsed = t.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    n as f64 / elapsed
}
