//! Shared helpers of the key service's integration tests: an in-process server on a loopback
//! port, attestation documents minted with the attestation crate's PKI, and a SigV4 client.

#![allow(dead_code)]

use cloister_attestation::{DocumentFields, Isolation, Pki};
use cloister_kms::config::Config;
use cloister_kms::server;
use cloister_kms::store::AdminCredential;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A server running on its own runtime in a background thread.
pub struct TestServer {
    /// Bound address.
    pub addr: SocketAddr,
    /// Administrator credential.
    pub admin: AdminCredential,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestServer {
    /// Starts a server on 127.0.0.1:0 over `data_dir`.
    pub fn start(data_dir: &Path, config: Config, workers: usize) -> TestServer {
        Self::start_with_tls(data_dir, config, workers, None)
    }

    /// Starts a server, serving HTTPS when `tls` (certificate, key PEM paths) is given.
    pub fn start_with_tls(
        data_dir: &Path,
        config: Config,
        workers: usize,
        tls: Option<(PathBuf, PathBuf)>,
    ) -> TestServer {
        let tls = tls.map(|(c, k)| server::tls_acceptor(&c, &k).expect("tls"));
        let (app, admin) = server::open(data_dir, &config).expect("open data dir");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (atx, arx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(workers)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let (l, addr) = server::bind("127.0.0.1:0").await.expect("bind");
                atx.send(addr).expect("send addr");
                server::serve(l, app, tls, async {
                    let _ = rx.await;
                })
                .await;
            });
        });
        let addr = arx
            .recv_timeout(Duration::from_secs(10))
            .expect("server address");
        TestServer {
            addr,
            admin,
            shutdown: Some(tx),
            thread: Some(thread),
        }
    }

    /// `http://addr`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// An enclave key pair (RSA-2048): PKCS#8 private key and SPKI public key.
pub struct EnclaveKey {
    /// PKCS#8 DER.
    pub pkcs8: Vec<u8>,
    /// SubjectPublicKeyInfo DER.
    pub spki: Vec<u8>,
}

/// Generates an enclave RSA key.
pub fn enclave_key() -> EnclaveKey {
    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::signature::KeyPair as _;
    let kp = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
    let pkcs8: aws_lc_rs::encoding::Pkcs8V1Der<'_> = kp.as_der().unwrap();
    let spki: aws_lc_rs::encoding::PublicKeyX509Der<'_> = kp.public_key().as_der().unwrap();
    EnclaveKey {
        pkcs8: pkcs8.as_ref().to_vec(),
        spki: spki.as_ref().to_vec(),
    }
}

/// A Cloister attestation PKI in a directory, for minting real documents.
pub struct Attestor {
    /// The PKI.
    pub pki: Pki,
    signer: cloister_attestation::DocumentSigner,
    vm_signer: cloister_attestation::DocumentSigner,
}

impl Attestor {
    /// Creates a PKI in `dir` and a signer for one enclave.
    pub fn new(dir: &Path) -> Attestor {
        let pki = Pki::init(dir).expect("pki");
        let ca = pki.host_ca().expect("host ca");
        let issue = |isolation| {
            ca.issue_enclave_signer(
                "i-0123456789abcdef0-enc0123456789abcdef",
                isolation,
                SystemTime::now() + Duration::from_secs(3 * 3600),
            )
            .expect("signer")
        };
        let signer = issue(Isolation::Process);
        let vm_signer = issue(Isolation::Vm);
        Attestor {
            pki,
            signer,
            vm_signer,
        }
    }

    /// Path of the root certificate (the trust anchor).
    pub fn root_path(&self) -> PathBuf {
        self.pki.root_cert_path()
    }

    /// Signs a document of a process enclave with `pcr0` (PCR1, PCR2 fixed) and `public_key`.
    pub fn document(&self, pcr0: [u8; 48], public_key: &[u8]) -> Vec<u8> {
        self.document_as(Isolation::Process, pcr0, public_key)
    }

    /// [`Attestor::document`] for an enclave under `isolation`.
    pub fn document_as(&self, isolation: Isolation, pcr0: [u8; 48], public_key: &[u8]) -> Vec<u8> {
        let signer = match isolation {
            Isolation::Process => &self.signer,
            Isolation::Vm => &self.vm_signer,
        };
        let mut pcrs = BTreeMap::new();
        pcrs.insert(0usize, pcr0.to_vec());
        pcrs.insert(1usize, vec![0x11; 48]);
        pcrs.insert(2usize, vec![0x22; 48]);
        pcrs.insert(8usize, vec![0; 48]);
        let ms = u64::try_from(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_millis(),
        )
        .unwrap();
        signer
            .sign(DocumentFields {
                module_id: "i-0123456789abcdef0-enc0123456789abcdef".into(),
                timestamp_ms: ms,
                pcrs,
                public_key: Some(public_key.to_vec()),
                user_data: None,
                nonce: None,
            })
            .expect("sign document")
    }
}

/// A config for tests: default region/account, one extra user, optional trust anchor.
pub fn config(anchor: Option<PathBuf>) -> Config {
    let yaml = format!(
        "region: us-east-1\naccount_id: '111122223333'\ncredentials:\n  - access_key_id: AKIAAPPUSEREXAMPLE1\n    secret_access_key: app-secret-app-secret\n    principal: app\n{}",
        match anchor {
            Some(p) => format!("attestation:\n  trust_anchors: ['{}']\n", p.display()),
            None => String::new(),
        }
    );
    serde_yaml_ng::from_str(&yaml).expect("config")
}

/// True if `python3 -c "import boto3"` works.
pub fn have_boto3() -> bool {
    std::process::Command::new("python3")
        .args(["-c", "import boto3"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// A tiny SigV4 KMS client over one keep-alive connection (raw HTTP/1.1 on a TcpStream).
pub struct RawClient {
    stream: std::io::BufReader<std::net::TcpStream>,
    akid: String,
    secret: String,
    host: String,
}

impl RawClient {
    /// Connects to `addr` with a credential.
    pub fn connect(addr: SocketAddr, akid: &str, secret: &str) -> RawClient {
        Self::try_connect(addr, akid, secret).expect("connect")
    }

    /// Connects to `addr` with a credential, or returns the I/O error.
    pub fn try_connect(addr: SocketAddr, akid: &str, secret: &str) -> std::io::Result<RawClient> {
        let s = std::net::TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(RawClient {
            stream: std::io::BufReader::new(s),
            akid: akid.into(),
            secret: secret.into(),
            host: addr.to_string(),
        })
    }

    /// Sends one signed request; returns (status, JSON body). Panics on I/O errors.
    pub fn call(&mut self, op: &str, body: &[u8]) -> (u16, serde_json::Value) {
        self.try_call(op, body).expect("request")
    }

    /// Sends one signed request; returns (status, JSON body), or the I/O error.
    pub fn try_call(&mut self, op: &str, body: &[u8]) -> std::io::Result<(u16, serde_json::Value)> {
        let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
        use cloister_kms::sigv4::format_amz_date;
        use std::io::{BufRead, Read, Write};
        let now = i64::try_from(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs(),
        )
        .unwrap();
        let amz = format_amz_date(now);
        let target = format!("TrentService.{op}");
        let credentials = cloister_sdk::kms_client::Credentials {
            access_key_id: self.akid.clone(),
            secret_access_key: self.secret.clone().into(),
            session_token: None,
        };
        let headers = [
            ("content-type", "application/x-amz-json-1.1"),
            ("host", self.host.as_str()),
            ("x-amz-date", amz.as_str()),
            ("x-amz-target", target.as_str()),
        ];
        let auth = cloister_sdk::kms_client::sigv4_authorization(
            &credentials,
            "us-east-1",
            &amz,
            &headers,
            body,
        );
        let head = format!(
            "POST / HTTP/1.1\r\nhost: {}\r\ncontent-type: application/x-amz-json-1.1\r\nx-amz-date: {amz}\r\nx-amz-target: {target}\r\nauthorization: {auth}\r\ncontent-length: {}\r\n\r\n",
            self.host,
            body.len()
        );
        let s = self.stream.get_mut();
        s.write_all(head.as_bytes())?;
        s.write_all(body)?;
        let mut status_line = String::new();
        if self.stream.read_line(&mut status_line)? == 0 {
            return Err(bad("connection closed"));
        }
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("bad status line"))?;
        let mut len = 0usize;
        loop {
            let mut line = String::new();
            if self.stream.read_line(&mut line)? == 0 {
                return Err(bad("connection closed in headers"));
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().map_err(|_| bad("content-length"))?;
                }
            }
        }
        let mut buf = vec![0u8; len];
        self.stream.read_exact(&mut buf)?;
        Ok((
            status,
            serde_json::from_slice(&buf).map_err(|_| bad("json"))?,
        ))
    }
}

/// A PKCS#8 private key (DER) as PEM, for OpenSSL and `cryptography`.
pub fn pkcs8_pem(der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN PRIVATE KEY-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap());
        out.push('\n');
    }
    out.push_str("-----END PRIVATE KEY-----\n");
    out
}
