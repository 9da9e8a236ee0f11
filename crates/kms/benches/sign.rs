//! Sign throughput of the key service against the raw signing rate of aws-lc-rs, in one run.
//!
//! Workloads (each for `BENCH_SECONDS`, default 3 s, after a short warm-up):
//! - raw: `EcdsaKeyPair::sign` (P-256, SHA-256) and `RsaKeyPair::sign` (2048-bit,
//!   RSASSA-PSS-SHA-256) on `S` threads, no HTTP;
//! - server: `Sign` with an ECC_NIST_P256 key (ECDSA_SHA_256) and an RSA_2048 key
//!   (RSASSA_PSS_SHA_256) through HTTP/1.1 and SigV4 on a server with `S` worker threads.
//!
//! The load generator is built not to be the bottleneck, as `wrk` replaying one signed request
//! would be: it signs one request per workload up front (a SigV4 signature stays valid for
//! minutes) and replays its bytes over keep-alive connections from its own runtime, reading
//! each response by its Content-Length. The server verifies SigV4, evaluates the key policy
//! and signs on every request, as for any client.
//!
//! `S` is `BENCH_SERVER_THREADS` (default: half the CPUs, at least 1); the load generator gets
//! the other CPUs. The printed ratios are server Sign/s over raw signs/s on the same number of
//! threads (target: at least 0.5), and the same per CPU second that the server's threads and
//! the raw signing threads used (from /proc), which stays meaningful on a machine other work
//! shares.
//!
//! Method, and why two ratios: on a small machine the load generator competes with the server
//! for the CPUs, so the fair comparison is against raw signing on the cores the server gets.
//! The server runs on its own runtime with `S` worker threads (named `kms-server`, so their CPU
//! time can be read from /proc) and the raw baseline on `S` threads; the load generator's
//! threads are neither. The per-second ratio holds when the server's threads get whole CPUs;
//! the per-CPU-second ratio (signs per CPU second of the `kms-server` threads against signs per
//! CPU second of the raw threads) does not depend on what else runs, and is the one to read
//! when other work shares the machine. The load generator is not the bottleneck: it idles in
//! `epoll_wait` for nearly every response (one `epoll_wait` per request on its side), while the
//! server makes exactly one `recvfrom` and one `writev` per request.
//!
//! Where a request's server time goes (perf, 2-CPU KVM guest, AMD EPYC, ECC_NIST_P256, about
//! 90 µs of server CPU per Sign): the P-256 signature itself ~41%; the kernel ~22%, nearly all
//! of it the response's `writev`, in which loopback TCP also runs the client's receive path and
//! wakes the client (~11%; on a real network that receive work happens on the client's
//! machine); SigV4 verification ~6% (three SHA-256 passes and an HMAC, the derived signing key
//! cached); hyper's parse, encode and dispatch ~10%; the operation (JSON request parse, key
//! resolution, policy decision, response) ~11%; malloc/free ~5%. RSA_2048 signing costs ~1.2 ms,
//! so the same ~50 µs of overhead puts it at ~0.9x.
//!
//! Run: `cargo bench -p cloister-kms --bench sign`; `BENCH_SECONDS=5` for steadier numbers.

#[path = "support/mod.rs"]
mod support;

use base64::Engine as _;
use cloister_kms::config::Config;
use cloister_kms::server;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{sign, Creds, Signed};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The bytes of one signed HTTP/1.1 request.
fn signed_bytes(addr: SocketAddr, akid: &str, secret: &str, op: &str, body: &[u8]) -> Vec<u8> {
    let creds = Creds {
        akid: akid.to_owned(),
        secret: secret.to_owned(),
    };
    let Signed {
        amz_date: amz,
        host,
        target,
        authorization: auth,
    } = sign(addr, &creds, op, body);
    let mut out = format!(
        "POST / HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/x-amz-json-1.1\r\nx-amz-date: {amz}\r\nx-amz-target: {target}\r\nauthorization: {auth}\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

/// Reads one HTTP/1.1 response (headers, then Content-Length bytes of body) from `s`, using
/// `buf` as scratch; returns (status, body).
async fn read_response(s: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> (u16, Vec<u8>) {
    buf.clear();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..end]).expect("utf-8 head");
            let status: u16 = head
                .get(9..12)
                .and_then(|s| s.parse().ok())
                .expect("status");
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .expect("content-length");
            let start = end + 4;
            while buf.len() < start + len {
                let n = s.read(&mut chunk).await.expect("read body");
                assert!(n > 0, "connection closed mid-body");
                buf.extend_from_slice(&chunk[..n]);
            }
            return (status, buf[start..start + len].to_vec());
        }
        let n = s.read(&mut chunk).await.expect("read head");
        assert!(n > 0, "connection closed");
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn call(addr: SocketAddr, akid: &str, secret: &str, op: &str, body: &Value) -> Value {
    let bytes = signed_bytes(addr, akid, secret, op, &serde_json::to_vec(body).unwrap());
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(&bytes).await.expect("write");
    let (status, body) = read_response(&mut s, &mut Vec::new()).await;
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    assert_eq!(status, 200, "{op}: {v}");
    v
}

/// Replays `request` on `conns` keep-alive connections for `secs`; the rate per wall-clock
/// second and per CPU second of the server's threads.
async fn replay(
    addr: SocketAddr,
    request: Vec<u8>,
    conns: usize,
    secs: Duration,
    threads: &str,
) -> Rate {
    let request = Arc::new(request);
    let count = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (request, count, stop, measuring) = (
            request.clone(),
            count.clone(),
            stop.clone(),
            measuring.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
            s.set_nodelay(true).expect("nodelay");
            let mut buf = Vec::with_capacity(16 * 1024);
            while !stop.load(Ordering::Relaxed) {
                s.write_all(&request).await.expect("write");
                let (status, body) = read_response(&mut s, &mut buf).await;
                assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
                if measuring.load(Ordering::Relaxed) {
                    count.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    measuring.store(true, Ordering::Relaxed);
    let cpu0 = cpu_of_threads(threads);
    let t = Instant::now();
    tokio::time::sleep(secs).await;
    let n = count.load(Ordering::Relaxed) as f64;
    let elapsed = t.elapsed().as_secs_f64();
    let cpu = (cpu_of_threads(threads) - cpu0).max(1.0 / USER_HZ);
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    Rate {
        per_s: n / elapsed,
        per_cpu_s: n / cpu,
    }
}

/// Name of the server runtime's threads (15 characters at most, the kernel's limit).
const SERVER_THREAD: &str = "kms-server";

/// Name of the floor server's threads.
const FLOOR_THREAD: &str = "http-floor";

/// Starts the floor: hyper's HTTP/1.1 server with keep-alive that reads each request's body and
/// answers 200 with `len` bytes and the key service's content type, doing nothing else.
async fn floor_server(len: Arc<AtomicU64>) -> SocketAddr {
    use http_body_util::{BodyExt, Full};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = l.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let len = len.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: hyper::Request<_>| {
                    let n = usize::try_from(len.load(Ordering::Relaxed)).unwrap_or(0);
                    async move {
                        let body: hyper::body::Incoming = req.into_body();
                        let _ = body.collect().await;
                        let mut r =
                            hyper::Response::new(Full::new(bytes::Bytes::from(vec![b'x'; n])));
                        r.headers_mut().insert(
                            hyper::header::CONTENT_TYPE,
                            hyper::header::HeaderValue::from_static("application/x-amz-json-1.1"),
                        );
                        Ok::<_, std::convert::Infallible>(r)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// Clock ticks per second of /proc's CPU times (USER_HZ, 100 on Linux).
const USER_HZ: f64 = 100.0;

/// CPU seconds (user + system) of one thread, from its /proc stat line.
fn thread_cpu(stat_path: &std::path::Path) -> Option<(String, f64)> {
    let stat = std::fs::read_to_string(stat_path).ok()?;
    let (head, rest) = stat.rsplit_once(')')?;
    let comm = head.split_once('(')?.1.to_string();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the comm: state is field 3 of the line, utime 14 and stime 15.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((comm, (utime + stime) / USER_HZ))
}

/// CPU seconds used so far by this process's threads whose name starts with `prefix`.
fn cpu_of_threads(prefix: &str) -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    dir.filter_map(|e| thread_cpu(&e.ok()?.path().join("stat")))
        .filter(|(comm, _)| comm.starts_with(prefix))
        .map(|(_, cpu)| cpu)
        .sum()
}

/// A rate: operations per wall-clock second and per CPU second of the threads doing them.
struct Rate {
    per_s: f64,
    per_cpu_s: f64,
}

/// Runs `f` on `threads` threads for `secs`.
fn raw_rate(threads: usize, secs: Duration, f: impl Fn() + Sync) -> Rate {
    let count = AtomicU64::new(0);
    let cpu = std::sync::Mutex::new(0.0f64);
    let t = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                let start =
                    thread_cpu(std::path::Path::new("/proc/thread-self/stat")).map_or(0.0, |c| c.1);
                let mut n = 0u64;
                while t.elapsed() < secs {
                    f();
                    n += 1;
                }
                count.fetch_add(n, Ordering::Relaxed);
                let end =
                    thread_cpu(std::path::Path::new("/proc/thread-self/stat")).map_or(0.0, |c| c.1);
                *cpu.lock().expect("lock") += end - start;
            });
        }
    });
    let n = count.load(Ordering::Relaxed) as f64;
    let cpu = cpu.into_inner().expect("lock").max(1.0 / USER_HZ);
    Rate {
        per_s: n / t.elapsed().as_secs_f64(),
        per_cpu_s: n / cpu,
    }
}

#[allow(
    clippy::too_many_lines,
    reason = "the benchmark's workloads and report, in order"
)]
fn main() {
    let secs = Duration::from_secs(
        std::env::var("BENCH_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(3),
    );
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let server_threads = std::env::var("BENCH_SERVER_THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or((cpus / 2).max(1));
    let client_threads = cpus.saturating_sub(server_threads).max(1);
    let message = b"a message of a typical size to be signed by the key service: 64 b";

    // Raw aws-lc-rs signing, the baseline.
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let ec_pkcs8 = aws_lc_rs::signature::EcdsaKeyPair::generate_pkcs8(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
        &rng,
    )
    .expect("ec key");
    let ec = aws_lc_rs::signature::EcdsaKeyPair::from_pkcs8(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
        ec_pkcs8.as_ref(),
    )
    .expect("ec key");
    let raw_ec = raw_rate(server_threads, secs, || {
        std::hint::black_box(ec.sign(&rng, message).expect("sign"));
    });
    let rsa = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).expect("rsa");
    let raw_rsa = raw_rate(server_threads, secs, || {
        let mut sig = [0u8; 256];
        rsa.sign(
            &aws_lc_rs::signature::RSA_PSS_SHA256,
            &rng,
            message,
            &mut sig,
        )
        .expect("sign");
        std::hint::black_box(sig);
    });

    // The server, on its own runtime with `server_threads` workers.
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg: Config = serde_yaml_ng::from_str("region: us-east-1\n").expect("config");
    let (app, admin) = server::open(&tmp.path().join("data"), &cfg).expect("open");
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(server_threads)
        .thread_name(SERVER_THREAD)
        .enable_all()
        .build()
        .expect("runtime");
    let addr = server_rt.block_on(async {
        let (l, addr) = server::bind("127.0.0.1:0").await.expect("bind");
        tokio::spawn(server::serve(l, app, None, std::future::pending()));
        addr
    });
    // The floor: an HTTP/1.1 server on the same stack (tokio, hyper, loopback TCP) that only
    // reads the request and answers a body of the real response's length.
    let floor_len = Arc::new(AtomicU64::new(0));
    let floor_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(server_threads)
        .thread_name(FLOOR_THREAD)
        .enable_all()
        .build()
        .expect("runtime");
    let floor_addr = floor_rt.block_on(floor_server(floor_len.clone()));
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(client_threads)
        .enable_all()
        .build()
        .expect("runtime");
    let (akid, secret) = (
        admin.access_key_id.clone(),
        admin.secret_access_key.to_string(),
    );
    let conns = 8 * server_threads;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let mut rates = client_rt.block_on(async {
        let mut rates = Vec::new();
        for (spec, alg) in [
            ("ECC_NIST_P256", "ECDSA_SHA_256"),
            ("RSA_2048", "RSASSA_PSS_SHA_256"),
        ] {
            let k = call(
                addr,
                &akid,
                &secret,
                "CreateKey",
                &json!({"KeySpec": spec, "KeyUsage": "SIGN_VERIFY"}),
            )
            .await;
            let id = k["KeyMetadata"]["KeyId"]
                .as_str()
                .expect("key id")
                .to_string();
            let body = json!({"KeyId": id, "Message": b64(message), "SigningAlgorithm": alg});
            // One check that the replayed request signs and verifies.
            let s = call(addr, &akid, &secret, "Sign", &body).await;
            let mut v = body.clone();
            v["Signature"] = s["Signature"].clone();
            let ok = call(addr, &akid, &secret, "Verify", &v).await;
            assert_eq!(ok["SignatureValid"], true);
            let request = signed_bytes(
                addr,
                &akid,
                &secret,
                "Sign",
                &serde_json::to_vec(&body).unwrap(),
            );
            let floor_request = signed_bytes(
                floor_addr,
                &akid,
                &secret,
                "Sign",
                &serde_json::to_vec(&body).unwrap(),
            );
            // The floor answers with a body as long as the real response's.
            floor_len.store(s.to_string().len() as u64, Ordering::Relaxed);
            rates.push(replay(addr, request, conns, secs, SERVER_THREAD).await);
            rates.push(replay(floor_addr, floor_request, conns, secs, FLOOR_THREAD).await);
        }
        rates
    });
    let floor_rsa = rates.pop().expect("floor rsa");
    let srv_rsa = rates.pop().expect("rsa");
    let floor_ec = rates.pop().expect("floor ec");
    let srv_ec = rates.pop().expect("ec");

    println!(
        "Sign throughput, {}s per workload, {cpus} CPUs: server {server_threads} worker thread(s), load generator {client_threads} thread(s) and {conns} connections, raw aws-lc-rs on {server_threads} thread(s)",
        secs.as_secs()
    );
    println!(
        "{:<44} {:>12} {:>14}",
        "workload", "per second", "per CPU second"
    );
    for (name, r) in [
        ("raw aws-lc-rs ECDSA P-256 SHA-256 sign", &raw_ec),
        ("cloister Sign ECC_NIST_P256 ECDSA_SHA_256", &srv_ec),
        ("raw aws-lc-rs RSA-2048 PSS SHA-256 sign", &raw_rsa),
        ("cloister Sign RSA_2048 RSASSA_PSS_SHA_256", &srv_rsa),
        ("HTTP floor (read, fixed answer), ECC size", &floor_ec),
        ("HTTP floor (read, fixed answer), RSA size", &floor_rsa),
    ] {
        println!("{name:<44} {:>12.0} {:>14.0}", r.per_s, r.per_cpu_s);
    }
    println!(
        "ratio server/raw per second: ECC_NIST_P256 {:.2}x, RSA_2048 {:.2}x (target >= 0.5x)",
        srv_ec.per_s / raw_ec.per_s,
        srv_rsa.per_s / raw_rsa.per_s
    );
    println!(
        "ratio server/raw per CPU second of the signing threads: ECC_NIST_P256 {:.2}x, RSA_2048 {:.2}x",
        srv_ec.per_cpu_s / raw_ec.per_cpu_s,
        srv_rsa.per_cpu_s / raw_rsa.per_cpu_s
    );
    // Per CPU second, a request costs the server the floor plus its own work plus one
    // signature; no server on this stack can do better than raw / (raw + floor) per CPU second.
    let us = |r: &Rate| 1e6 / r.per_cpu_s;
    println!(
        "server CPU per request: ECC_NIST_P256 {:.1} us = signature {:.1} + HTTP floor {:.1} + key service {:.1}; bound on this stack raw/(raw + floor): {:.2}x",
        us(&srv_ec),
        us(&raw_ec),
        us(&floor_ec),
        us(&srv_ec) - us(&raw_ec) - us(&floor_ec),
        us(&raw_ec) / (us(&raw_ec) + us(&floor_ec))
    );
}
