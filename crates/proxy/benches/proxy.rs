//! vsock-proxy throughput and added latency against a direct loopback TCP connection and
//! against `socat` relaying the same way (Unix socket in, TCP out), then 30 concurrent attested
//! KMS Decrypt calls through the proxy against the key service in-process (p50, p99), with the
//! same calls made directly as the baseline. Run: `cargo bench -p cloister-proxy --bench proxy`.

use cloister_attestation::{DocumentFields, DocumentSigner, Isolation, Pki};
use cloister_proxy::allowlist::{AllowEntry, Allowlist};
use cloister_proxy::vsock_io::{self, Transport, VsockAddr};
use cloister_proxy::{ProxyConfig, VsockProxy};
use cloister_sdk::kms_client::{
    AttestError, Credentials, Endpoint, KmsClient, KmsClientConfig, Route,
};
use cloister_vsock::{Broker, BrokerConfig, NsmService};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const BULK_BYTES: usize = 256 << 20;
const ROUND_TRIPS: usize = 5000;
const KMS_CALLS: usize = 30;

struct NoNsm;
impl NsmService for NoNsm {
    fn handle(&self, _request: &[u8]) -> Vec<u8> {
        Vec::new()
    }
}

/// A server that, per connection, echoes 1-byte pings while they come, or (after a 'B' byte)
/// sinks bytes until EOF and answers with the count.
async fn server() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let mut b = [0u8; 1];
                while s.read_exact(&mut b).await.is_ok() {
                    if b[0] == b'B' {
                        let mut buf = vec![0u8; 256 * 1024];
                        let mut n: u64 = 0;
                        loop {
                            match s.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(k) => n += k as u64,
                            }
                        }
                        let _ = s.write_all(&n.to_le_bytes()).await;
                        return;
                    }
                    if s.write_all(&b).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

async fn bulk<S: AsyncRead + AsyncWrite + Unpin>(mut s: S) -> f64 {
    let chunk = vec![0x5Au8; 256 * 1024];
    let start = Instant::now();
    s.write_all(b"B").await.unwrap();
    let mut sent = 0;
    while sent < BULK_BYTES {
        s.write_all(&chunk).await.unwrap();
        sent += chunk.len();
    }
    s.shutdown().await.unwrap();
    let mut n = [0u8; 8];
    s.read_exact(&mut n).await.unwrap();
    assert_eq!(u64::from_le_bytes(n), BULK_BYTES as u64);
    BULK_BYTES as f64 / start.elapsed().as_secs_f64() / (1 << 20) as f64
}

async fn ping<S: AsyncRead + AsyncWrite + Unpin>(mut s: S) -> Vec<Duration> {
    let mut times = Vec::with_capacity(ROUND_TRIPS);
    let mut b = [0u8; 1];
    for _ in 0..ROUND_TRIPS {
        let t = Instant::now();
        s.write_all(b"p").await.unwrap();
        s.read_exact(&mut b).await.unwrap();
        times.push(t.elapsed());
    }
    times
}

#[allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "the index is a fraction p in [0, 1] of the last index: in range, not negative"
)]
fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

async fn wait_for(path: &Path) {
    for _ in 0..1000 {
        if path.exists() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("{path:?} did not appear");
}

fn allow(port: u16) -> Allowlist {
    Allowlist {
        allowlist: vec![AllowEntry {
            address: "127.0.0.1".into(),
            port,
        }],
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(BrokerConfig::new(
        16,
        dir.path(),
        dir.path().join("enclave.sock"),
        Arc::new(NoNsm),
    ))
    .unwrap();
    let enclave = Transport::Enclave(broker.enclave_socket().to_owned());
    let target = server().await;

    let mut cfg = ProxyConfig::new(8000, "127.0.0.1", target.port(), allow(target.port()));
    cfg.transport = Some(Transport::Fabric(dir.path().join("vsock")));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let proxy = tokio::spawn(VsockProxy::new(cfg).run(async {
        let _ = stopped.await;
    }));
    wait_for(&dir.path().join("vsock/3_8000.sock")).await;

    let socat_path = dir.path().join("socat.sock");
    let socat = std::process::Command::new("socat")
        .arg(format!("UNIX-LISTEN:{},fork", socat_path.display()))
        .arg(format!("TCP:{target},nodelay"))
        .spawn();
    let mut socat = match socat {
        Ok(c) => Some(c),
        Err(e) => {
            println!("socat not available ({e}); install it with `apt-get install -y socat`");
            None
        }
    };
    if socat.is_some() {
        wait_for(&socat_path).await;
    }
    let via_proxy = || async {
        vsock_io::connect(Some(enclave.clone()), VsockAddr::new(3, 8000))
            .await
            .unwrap()
    };

    println!("== throughput ({} MiB, one direction) ==", BULK_BYTES >> 20);
    let direct = bulk(tokio::net::TcpStream::connect(target).await.unwrap()).await;
    let prox = bulk(via_proxy().await).await;
    println!("direct TCP      {direct:9.1} MiB/s");
    println!(
        "vsock-proxy     {prox:9.1} MiB/s   ratio to direct {:.2}",
        prox / direct
    );
    let mut socat_tp = None;
    if socat.is_some() {
        let s = bulk(tokio::net::UnixStream::connect(&socat_path).await.unwrap()).await;
        println!(
            "socat           {s:9.1} MiB/s   ratio to direct {:.2}",
            s / direct
        );
        println!("vsock-proxy / socat throughput: {:.2}", prox / s);
        socat_tp = Some(s);
    }
    let _ = socat_tp;

    println!("== latency ({ROUND_TRIPS} one-byte round trips on one connection) ==");
    let mut d = ping(tokio::net::TcpStream::connect(target).await.unwrap()).await;
    let mut p = ping(via_proxy().await).await;
    let (d50, d99) = (pct(&mut d, 0.5), pct(&mut d, 0.99));
    let (p50, p99) = (pct(&mut p, 0.5), pct(&mut p, 0.99));
    println!(
        "direct TCP      p50 {:7.1} us  p99 {:7.1} us",
        us(d50),
        us(d99)
    );
    println!(
        "vsock-proxy     p50 {:7.1} us  p99 {:7.1} us  added p50 {:.1} us",
        us(p50),
        us(p99),
        us(p50) - us(d50)
    );
    if socat.is_some() {
        let mut s = ping(tokio::net::UnixStream::connect(&socat_path).await.unwrap()).await;
        let (s50, s99) = (pct(&mut s, 0.5), pct(&mut s, 0.99));
        println!(
            "socat           p50 {:7.1} us  p99 {:7.1} us  added p50 {:.1} us",
            us(s50),
            us(s99),
            us(s50) - us(d50)
        );
        println!(
            "added latency vsock-proxy / socat (p50): {:.2}",
            (us(p50) - us(d50)) / (us(s50) - us(d50))
        );
    }
    if let Some(c) = socat.as_mut() {
        let _ = c.kill();
        let _ = c.wait();
    }
    stop.send(()).unwrap();
    proxy.await.unwrap().unwrap();

    kms_bench(dir.path(), &enclave).await;
}

/// 30 concurrent attested Decrypt calls, direct and through vsock-proxy.
async fn kms_bench(dir: &Path, enclave: &Transport) {
    let pki = Pki::init(&dir.join("pki")).unwrap();
    let signer = Arc::new(
        pki.host_ca()
            .unwrap()
            .issue_enclave_signer(
                "i-0123456789abcdef0-enc0123456789abcdef",
                Isolation::Process,
                SystemTime::now() + Duration::from_secs(3600),
            )
            .unwrap(),
    );
    let config: cloister_kms::config::Config = serde_yaml_ng::from_str(&format!(
        "attestation:\n  trust_anchors: ['{}']\n",
        pki.root_cert_path().display()
    ))
    .unwrap();
    let (app, admin) = cloister_kms::server::open(&dir.join("kms"), &config).unwrap();
    let (listener, kms) = cloister_kms::server::bind("127.0.0.1:0").await.unwrap();
    tokio::spawn(cloister_kms::server::serve(
        listener,
        app,
        None,
        std::future::pending(),
    ));

    let mut cfg = ProxyConfig::new(8001, "127.0.0.1", kms.port(), allow(kms.port()));
    cfg.transport = Some(Transport::Fabric(dir.join("vsock")));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let proxy = tokio::spawn(VsockProxy::new(cfg).run(async {
        let _ = stopped.await;
    }));
    wait_for(&dir.join("vsock/3_8001.sock")).await;

    let credentials = Credentials {
        access_key_id: admin.access_key_id.clone(),
        secret_access_key: admin.secret_access_key.clone(),
        session_token: None,
    };
    let client = |route: Route| attested_client(&signer, kms, &credentials, route);
    let direct = client(Route::Tcp(kms));
    let created = direct.call("CreateKey", b"{}").await.unwrap();
    let created: serde_json::Value = serde_json::from_slice(&created).unwrap();
    let key_id = created["KeyMetadata"]["KeyId"].as_str().unwrap().to_owned();
    let enc = direct
        .call(
            "Encrypt",
            serde_json::json!({"KeyId": key_id, "Plaintext": "c2VjcmV0"})
                .to_string()
                .as_bytes(),
        )
        .await
        .unwrap();
    let enc: serde_json::Value = serde_json::from_slice(&enc).unwrap();
    use base64::Engine as _;
    let blob = base64::engine::general_purpose::STANDARD
        .decode(enc["CiphertextBlob"].as_str().unwrap())
        .unwrap();
    let proxied = client(Route::Vsock {
        cid: 3,
        port: 8001,
        transport: Some(enclave.clone()),
    });

    println!("== {KMS_CALLS} concurrent attested Decrypt calls (fresh document per call) ==");
    let mut results = Vec::new();
    for (name, c) in [("direct TCP", &direct), ("vsock-proxy", &proxied)] {
        results.push(time_decrypts(name, c, &blob).await);
    }
    println!(
        "vsock-proxy / direct: p50 {:.2}  p99 {:.2}",
        results[1].0.as_secs_f64() / results[0].0.as_secs_f64(),
        results[1].1.as_secs_f64() / results[0].1.as_secs_f64()
    );
    stop.send(()).unwrap();
    proxy.await.unwrap().unwrap();
}

/// A KMS client whose attestation documents `signer` issues (fresh for each call), through
/// `route` to the key service at `kms`.
fn attested_client(
    signer: &Arc<DocumentSigner>,
    kms: SocketAddr,
    credentials: &Credentials,
    route: Route,
) -> KmsClient {
    let signer = signer.clone();
    KmsClient::new(
        KmsClientConfig {
            region: "us-east-1".into(),
            endpoint: Endpoint::parse(&format!("http://{kms}")).unwrap(),
            route,
            credentials: credentials.clone(),
            extra_roots: Vec::new(),
            timeout: Duration::from_secs(60),
        },
        Arc::new(move |pk: &[u8]| -> Result<Vec<u8>, AttestError> {
            let mut pcrs = BTreeMap::new();
            for i in [0usize, 1, 2, 8] {
                pcrs.insert(i, vec![u8::try_from(i).unwrap(); 48]);
            }
            signer
                .sign(DocumentFields {
                    module_id: "i-0123456789abcdef0-enc0123456789abcdef".into(),
                    timestamp_ms: SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .unwrap()
                        .as_millis()
                        .try_into()
                        .unwrap(),
                    pcrs,
                    public_key: Some(pk.to_vec()),
                    user_data: None,
                    nonce: None,
                })
                .map_err(|e| AttestError::Other(e.to_string()))
        }),
    )
    .unwrap()
}

/// Times KMS_CALLS concurrent attested Decrypt calls of `blob` through `c` (after one warm-up
/// call) and prints them; returns the median and the 99th percentile.
async fn time_decrypts(name: &str, c: &KmsClient, blob: &[u8]) -> (Duration, Duration) {
    // One call first: the client generates its RSA-2048 recipient key once, on first use.
    let warm = c.decrypt(blob, None, None, &BTreeMap::new()).await.unwrap();
    assert_eq!(&warm[..], b"secret");
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..KMS_CALLS {
        let c = c.clone();
        let blob = blob.to_vec();
        set.spawn(async move {
            let t = Instant::now();
            let p = c
                .decrypt(&blob, None, None, &BTreeMap::new())
                .await
                .unwrap();
            assert_eq!(&p[..], b"secret");
            t.elapsed()
        });
    }
    let mut times = Vec::new();
    while let Some(t) = set.join_next().await {
        times.push(t.unwrap());
    }
    let wall = start.elapsed();
    let (p50, p99) = (pct(&mut times, 0.5), pct(&mut times, 0.99));
    println!(
        "{name:<15} p50 {:8.1} ms  p99 {:8.1} ms  all {KMS_CALLS} in {:.1} ms",
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        wall.as_secs_f64() * 1e3
    );
    (p50, p99)
}
