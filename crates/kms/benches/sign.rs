//! Sign throughput of the key service against the raw signing rate of aws-lc-rs, in one run.
//!
//! Workloads (each for `BENCH_SECONDS`, default 3 s, after a short warm-up):
//! - raw: `EcdsaKeyPair::sign` (P-256, SHA-256) and `RsaKeyPair::sign` (2048-bit,
//!   RSASSA-PSS-SHA-256) on `S` threads, no HTTP;
//! - server: `Sign` with an ECC_NIST_P256 key (ECDSA_SHA_256) and an RSA_2048 key
//!   (RSASSA_PSS_SHA_256) through HTTP/1.1 and SigV4 on a server with `S` worker threads, and
//!   `GenerateRandom` (64 bytes): the key service's cost per request without a signature;
//! - floor: hyper's HTTP/1.1 server on the same stack (tokio, loopback TCP, `S` workers) that
//!   reads the request and answers a body as long as the real response, first doing nothing
//!   else, then signing the message with a raw P-256 key: the best any server on this stack can
//!   do per Sign;
//! - as deployed: the key service on one worker per CPU (the default of `cloister kms serve`),
//!   sharing the CPUs with the load generator, against raw signing on one thread (what
//!   `openssl speed ecdsap256` measures by default).
//!
//! The load generator is built not to be the bottleneck, as `wrk` replaying one signed request
//! would be: it signs one request per workload up front (a SigV4 signature stays valid for
//! minutes) and replays its bytes over keep-alive connections from its own runtime, reading
//! each response by its Content-Length. The server verifies SigV4, evaluates the key policy
//! and signs on every request, as for any client.
//!
//! `S` is `BENCH_SERVER_THREADS` (default: half the CPUs, at least 1); the load generator gets
//! the other CPUs. The ratios are server Sign/s over raw signs/s on the same number of threads,
//! per second and per CPU second that the server's threads and the raw threads used (read from
//! /proc thread by thread, so a tokio thread retired during a workload is not subtracted), and
//! the as-deployed ratio above.
//!
//! Why several ratios: on a small machine the load generator competes with the server for the
//! CPUs. Per CPU second (signs per CPU second of the `kms-server` threads against signs per CPU
//! second of the raw threads) does not depend on what else runs. The floor that signs shows
//! what the stack itself costs at the Sign's request rate: on a 2-CPU KVM guest it reaches about
//! 0.55x of raw per CPU second, so no server on tokio, hyper and loopback TCP there does much
//! better. Measured with perf on that guest (frame pointers, ECC_NIST_P256, samples split by
//! the leaf function): the key service and the signing floor spend the same in the kernel (16
//! against 14 µs per request, most of it the response's `writev`, in which loopback TCP also
//! runs the client's receive path and wakes it) and in the curve arithmetic (38 against 36 µs);
//! the key service's extra ~23 µs is user-space work: SigV4 verification ~6.5 µs, the JSON
//! request and the key resolution, policy decision and response ~8 µs, the connection
//! bookkeeping and response headers ~5 µs, the rest allocation and copies. RSA_2048 signing
//! costs ~1.1 ms, so the same overhead leaves it at ~0.9x.
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
    let cpu = cpu_since(&cpu0, &cpu_of_threads(threads)).max(1.0 / USER_HZ);
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

/// Name of the threads of the key service that runs on every CPU.
const ALL_THREAD: &str = "kms-all";

/// Name of the floor server's threads.
const FLOOR_THREAD: &str = "http-floor";

/// What the floor does per request besides reading it and answering.
struct FloorWork {
    /// Sign the benchmark's message with `ec` (raw aws-lc-rs, as the key service does).
    sign: AtomicBool,
    ec: aws_lc_rs::signature::EcdsaKeyPair,
    message: &'static [u8],
}

/// Starts the floor: hyper's HTTP/1.1 server with keep-alive that reads each request's body and
/// answers 200 with `len` bytes and the key service's content type, doing nothing else but,
/// when `work.sign` is set, one raw ECDSA signature of the message.
async fn floor_server(len: Arc<AtomicU64>, work: Arc<FloorWork>) -> SocketAddr {
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
            let (len, work) = (len.clone(), work.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: hyper::Request<_>| {
                    let n = usize::try_from(len.load(Ordering::Relaxed)).unwrap_or(0);
                    let work = work.clone();
                    async move {
                        let body: hyper::body::Incoming = req.into_body();
                        let _ = body.collect().await;
                        let mut answer = vec![b'x'; n];
                        if work.sign.load(Ordering::Relaxed) {
                            let rng = aws_lc_rs::rand::SystemRandom::new();
                            let sig = work.ec.sign(&rng, work.message).expect("sign");
                            let sig = sig.as_ref();
                            let k = sig.len().min(answer.len());
                            answer[..k].copy_from_slice(&sig[..k]);
                        }
                        let mut r = hyper::Response::new(Full::new(bytes::Bytes::from(answer)));
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

/// CPU seconds used so far by each of this process's threads whose name starts with `prefix`,
/// by thread id.
fn cpu_of_threads(prefix: &str) -> std::collections::HashMap<String, f64> {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return std::collections::HashMap::new();
    };
    dir.filter_map(|e| {
        let e = e.ok()?;
        let (comm, cpu) = thread_cpu(&e.path().join("stat"))?;
        comm.starts_with(prefix)
            .then(|| (e.file_name().to_string_lossy().into_owned(), cpu))
    })
    .collect()
}

/// CPU seconds the threads of `after` used since `before`, thread by thread: a thread that
/// exits in between (tokio retires idle blocking threads) takes its history with it instead of
/// being subtracted from the others, and a thread started in between counts from zero.
fn cpu_since(
    before: &std::collections::HashMap<String, f64>,
    after: &std::collections::HashMap<String, f64>,
) -> f64 {
    after
        .iter()
        .map(|(tid, cpu)| cpu - before.get(tid).copied().unwrap_or(0.0))
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

/// A key service on its own runtime of `workers` threads named `name`, over a fresh data
/// directory under `dir`: the runtime, its address and the administrator's access key.
fn start_server(
    workers: usize,
    name: &str,
    dir: &std::path::Path,
) -> (tokio::runtime::Runtime, SocketAddr, String, String) {
    let cfg: Config = serde_yaml_ng::from_str("region: us-east-1\n").expect("config");
    let (app, admin) = server::open(dir, &cfg).expect("open");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name(name)
        .enable_all()
        .build()
        .expect("runtime");
    let addr = rt.block_on(async {
        let (l, addr) = server::bind("127.0.0.1:0").await.expect("bind");
        tokio::spawn(server::serve(l, app, None, std::future::pending()));
        addr
    });
    let secret = admin.secret_access_key.to_string();
    (rt, addr, admin.access_key_id, secret)
}

/// Creates a SIGN_VERIFY key of `spec` on the server at `addr`, checks that a Sign with `alg`
/// verifies, and returns the Sign request's body and the length of its response.
async fn sign_request_body(
    addr: SocketAddr,
    akid: &str,
    secret: &str,
    spec: &str,
    alg: &str,
    message: &[u8],
) -> (Vec<u8>, u64) {
    let k = call(
        addr,
        akid,
        secret,
        "CreateKey",
        &json!({"KeySpec": spec, "KeyUsage": "SIGN_VERIFY"}),
    )
    .await;
    let id = k["KeyMetadata"]["KeyId"].as_str().expect("key id");
    let b64 = base64::engine::general_purpose::STANDARD.encode(message);
    let body = json!({"KeyId": id, "Message": b64, "SigningAlgorithm": alg});
    let s = call(addr, akid, secret, "Sign", &body).await;
    let mut v = body.clone();
    v["Signature"] = s["Signature"].clone();
    let ok = call(addr, akid, secret, "Verify", &v).await;
    assert_eq!(ok["SignatureValid"], true);
    (
        serde_json::to_vec(&body).expect("json"),
        s.to_string().len() as u64,
    )
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
    let message: &'static [u8] =
        b"a message of a typical size to be signed by the key service: 64 b";

    // Raw aws-lc-rs signing, the baseline.
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let ec_key = || {
        let pkcs8 = aws_lc_rs::signature::EcdsaKeyPair::generate_pkcs8(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            &rng,
        )
        .expect("ec key");
        aws_lc_rs::signature::EcdsaKeyPair::from_pkcs8(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            pkcs8.as_ref(),
        )
        .expect("ec key")
    };
    let ec = ec_key();
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
    // One thread, as `openssl speed` signs by default.
    let raw_ec_one = if server_threads == 1 {
        Rate {
            per_s: raw_ec.per_s,
            per_cpu_s: raw_ec.per_cpu_s,
        }
    } else {
        raw_rate(1, secs, || {
            std::hint::black_box(ec.sign(&rng, message).expect("sign"));
        })
    };

    let tmp = tempfile::tempdir().expect("tempdir");
    let (_server_rt, addr, akid, secret) =
        start_server(server_threads, SERVER_THREAD, &tmp.path().join("data"));
    // The floor: an HTTP/1.1 server on the same stack (tokio, hyper, loopback TCP) that only
    // reads the request and answers a body of the real response's length; then the same with
    // one raw signature per request.
    let floor_len = Arc::new(AtomicU64::new(0));
    let floor_work = Arc::new(FloorWork {
        sign: AtomicBool::new(false),
        ec: ec_key(),
        message,
    });
    let floor_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(server_threads)
        .thread_name(FLOOR_THREAD)
        .enable_all()
        .build()
        .expect("runtime");
    let floor_addr = floor_rt.block_on(floor_server(floor_len.clone(), floor_work.clone()));
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(client_threads)
        .enable_all()
        .build()
        .expect("runtime");
    let conns = 8 * server_threads;
    let r = client_rt.block_on(async {
        let mut r = Workloads::default();
        for (spec, alg) in [
            ("ECC_NIST_P256", "ECDSA_SHA_256"),
            ("RSA_2048", "RSASSA_PSS_SHA_256"),
        ] {
            let (body, response_len) =
                sign_request_body(addr, &akid, &secret, spec, alg, message).await;
            let request = signed_bytes(addr, &akid, &secret, "Sign", &body);
            let floor_request = signed_bytes(floor_addr, &akid, &secret, "Sign", &body);
            // The floor answers with a body as long as the real response's.
            floor_len.store(response_len, Ordering::Relaxed);
            let server = replay(addr, request, conns, secs, SERVER_THREAD).await;
            let floor = replay(floor_addr, floor_request.clone(), conns, secs, FLOOR_THREAD).await;
            if spec == "ECC_NIST_P256" {
                r.ec = Some(server);
                r.floor_ec = Some(floor);
                floor_work.sign.store(true, Ordering::Relaxed);
                r.floor_sign_ec =
                    Some(replay(floor_addr, floor_request, conns, secs, FLOOR_THREAD).await);
                floor_work.sign.store(false, Ordering::Relaxed);
            } else {
                r.rsa = Some(server);
                r.floor_rsa = Some(floor);
            }
        }
        // The key service on a request with no signature (GenerateRandom, 64 bytes): its
        // HTTP, SigV4 and dispatch cost alone, on the same connections.
        let body = serde_json::to_vec(&json!({"NumberOfBytes": 64})).expect("json");
        let request = signed_bytes(addr, &akid, &secret, "GenerateRandom", &body);
        r.random = Some(replay(addr, request, conns, secs, SERVER_THREAD).await);
        r
    });
    // The key service as `cloister kms serve` runs it: one worker per CPU, sharing the CPUs
    // with the load generator.
    let all = (cpus > server_threads).then(|| {
        let (_rt, addr, akid, secret) = start_server(cpus, ALL_THREAD, &tmp.path().join("all"));
        client_rt.block_on(async {
            let (body, _) = sign_request_body(
                addr,
                &akid,
                &secret,
                "ECC_NIST_P256",
                "ECDSA_SHA_256",
                message,
            )
            .await;
            let request = signed_bytes(addr, &akid, &secret, "Sign", &body);
            replay(addr, request, 8 * cpus, secs, ALL_THREAD).await
        })
    });
    let take = |r: Option<Rate>| r.expect("workload ran");
    let (srv_ec, srv_rsa, floor_ec, floor_rsa, floor_sign_ec, srv_random) = (
        take(r.ec),
        take(r.rsa),
        take(r.floor_ec),
        take(r.floor_rsa),
        take(r.floor_sign_ec),
        take(r.random),
    );

    println!(
        "Sign throughput, {}s per workload, {cpus} CPUs: server {server_threads} worker thread(s), load generator {client_threads} thread(s) and {conns} connections, raw aws-lc-rs on {server_threads} thread(s)",
        secs.as_secs()
    );
    println!(
        "{:<50} {:>12} {:>14}",
        "workload", "per second", "per CPU second"
    );
    for (name, r) in [
        ("raw aws-lc-rs ECDSA P-256 SHA-256 sign", &raw_ec),
        ("cloister Sign ECC_NIST_P256 ECDSA_SHA_256", &srv_ec),
        ("raw aws-lc-rs RSA-2048 PSS SHA-256 sign", &raw_rsa),
        ("cloister Sign RSA_2048 RSASSA_PSS_SHA_256", &srv_rsa),
        ("cloister GenerateRandom 64 bytes", &srv_random),
        ("HTTP floor (read, fixed answer), ECC size", &floor_ec),
        ("HTTP floor + raw P-256 signature, ECC size", &floor_sign_ec),
        ("HTTP floor (read, fixed answer), RSA size", &floor_rsa),
    ] {
        println!("{name:<50} {:>12.0} {:>14.0}", r.per_s, r.per_cpu_s);
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
    // Per CPU second, a request costs the server the stack (the floor at the same request rate,
    // signature included) plus its own work.
    let us = |r: &Rate| 1e6 / r.per_cpu_s;
    println!(
        "server CPU per request, ECC_NIST_P256: {:.1} us; the floor signing the same message {:.1} us (signature alone {:.1}, floor alone {:.1}); key service's own share {:.1} us",
        us(&srv_ec),
        us(&floor_sign_ec),
        us(&raw_ec),
        us(&floor_ec),
        us(&srv_ec) - us(&floor_sign_ec),
    );
    println!(
        "ratio per CPU second: floor signing/raw {:.2}x (no server on this stack does better), cloister/floor signing {:.2}x",
        floor_sign_ec.per_cpu_s / raw_ec.per_cpu_s,
        srv_ec.per_cpu_s / floor_sign_ec.per_cpu_s
    );
    if let Some(all) = all {
        println!(
            "as deployed: cloister Sign ECC_NIST_P256 on all {cpus} CPUs (kms serve's default, sharing them with the load generator) {:.0}/s against raw signing on one thread (openssl speed's default) {:.0}/s: {:.2}x (target >= 0.5x)",
            all.per_s,
            raw_ec_one.per_s,
            all.per_s / raw_ec_one.per_s
        );
    }
}

/// The rates of the server workloads, filled in order.
#[derive(Default)]
struct Workloads {
    ec: Option<Rate>,
    rsa: Option<Rate>,
    floor_ec: Option<Rate>,
    floor_rsa: Option<Rate>,
    floor_sign_ec: Option<Rate>,
    random: Option<Rate>,
}
