//! The attested KMS client end to end on the host: the real `cloister kms serve` binary, an
//! in-process vsock broker playing the enclave's monitor, vsock-proxy on the host side of the
//! fabric, and the client on the enclave side with documents from the attestation crate's NSM.
//! Checks Decrypt, GenerateDataKey and GenerateRandom through the whole path, and that a
//! document with other measurements is refused by the key policy.

use cloister_attestation::{ImagePcrs, Isolation, Nsm, NsmConfig, Pki, SystemClock};
use cloister_nsm_api::{Request, Response};
use cloister_proxy::allowlist::{AllowEntry, Allowlist};
use cloister_proxy::{ProxyConfig, VsockProxy};
use cloister_sdk::kms_client::{
    Credentials, Endpoint, KmsClient, KmsClientConfig, KmsClientError, Route, DEFAULT_TIMEOUT,
};
use cloister_vsock::{Broker, BrokerConfig, NsmService, Transport};
use std::collections::BTreeMap;
use std::io::BufRead;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use zeroize::Zeroizing;

const APP_KEY: &str = "AKIAENCLAVEAPPUSER01";
const APP_SECRET: &str = "enclave-app-secret-0123456789";

struct Server(Child);
impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_kms(dir: &Path, root: &Path) -> (Server, SocketAddr) {
    let config = dir.join("kms.yaml");
    std::fs::write(
        &config,
        format!(
            "region: us-east-1\naccount_id: '111122223333'\ncredentials:\n  - access_key_id: {APP_KEY}\n    secret_access_key: {APP_SECRET}\n    principal: app\nattestation:\n  trust_anchors: ['{}']\n",
            root.display()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_cloister"))
        .args(["kms", "serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.join("kms-data"))
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let server = Server(child);
    let mut line = String::new();
    std::io::BufReader::new(stdout)
        .read_line(&mut line)
        .unwrap();
    let started: serde_json::Value = serde_json::from_str(&line).expect("kms serve output");
    let addr: SocketAddr = started["Listen"].as_str().unwrap().parse().unwrap();
    (server, addr)
}

fn nsm(ca: &cloister_attestation::HostCa, pcr0: u8) -> Nsm {
    let signer = ca
        .issue_enclave_signer(
            "i-0123456789abcdef0-enc0123456789abcdef",
            Isolation::Process,
            SystemTime::now() + Duration::from_secs(3600),
        )
        .unwrap();
    Nsm::new(NsmConfig {
        module_id: "i-0123456789abcdef0-enc0123456789abcdef".into(),
        image_pcrs: ImagePcrs {
            pcr0: [pcr0; 48],
            pcr1: [0x11; 48],
            pcr2: [0x22; 48],
            pcr8: None,
        },
        role_arn: None,
        instance_id: "i-0123456789abcdef0".into(),
        debug_mode: false,
        signer,
        clock: Arc::new(SystemClock),
    })
    .unwrap()
}

/// The enclave's NSM as the client sees it: an Attestation request carrying the public key.
fn attester(nsm: Arc<Nsm>) -> Arc<dyn cloister_sdk::kms_client::Attester> {
    Arc::new(move |public_key: &[u8]| -> Result<Vec<u8>, String> {
        match nsm.process(Request::Attestation {
            user_data: None,
            nonce: None,
            public_key: Some(serde_bytes::ByteBuf::from(public_key.to_vec())),
        }) {
            Response::Attestation { document } => Ok(document),
            other => Err(format!("{other:?}")),
        }
    })
}

struct NoNsm;
impl NsmService for NoNsm {
    fn handle(&self, _request: &[u8]) -> Vec<u8> {
        Vec::new()
    }
}

fn client_config(kms: SocketAddr, route: Route, akid: &str, secret: &str) -> KmsClientConfig {
    KmsClientConfig {
        region: "us-east-1".into(),
        endpoint: Endpoint::parse(&format!("http://{kms}")).unwrap(),
        route,
        credentials: Credentials {
            access_key_id: akid.into(),
            secret_access_key: Zeroizing::new(secret.into()),
            session_token: None,
        },
        extra_roots: Vec::new(),
        timeout: DEFAULT_TIMEOUT,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(
    clippy::too_many_lines,
    reason = "one end-to-end scenario, read top to bottom; its steps share the running enclave"
)]
async fn attested_calls_through_vsock_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::init(&dir.path().join("pki")).unwrap();
    let ca = pki.host_ca().unwrap();
    let (_server, kms) = start_kms(dir.path(), &pki.root_cert_path());
    let admin: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("kms-data/admin-credentials.json")).unwrap(),
    )
    .unwrap();

    // The administrator creates a key the app may use only from an enclave whose image is
    // PCR0 = 0x42..., and encrypts a secret under it. (The account principal in a key policy
    // covers every user of the account, so the admin statement leaves out Decrypt.)
    let direct = Route::Tcp(kms);
    let admin_client = KmsClient::new(
        client_config(
            kms,
            direct,
            admin["AccessKeyId"].as_str().unwrap(),
            admin["SecretAccessKey"].as_str().unwrap(),
        ),
        Arc::new(|_: &[u8]| -> Result<Vec<u8>, String> { Err("no NSM on the host".into()) }),
    )
    .unwrap();
    let policy = serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "admin", "Effect": "Allow",
             "Principal": {"AWS": "arn:aws:iam::111122223333:root"},
             "Action": ["kms:Encrypt", "kms:DescribeKey", "kms:GetKeyPolicy", "kms:PutKeyPolicy"],
             "Resource": "*"},
            {"Sid": "enclave", "Effect": "Allow",
             "Principal": {"AWS": "arn:aws:iam::111122223333:user/app"},
             "Action": ["kms:Decrypt", "kms:GenerateDataKey"], "Resource": "*",
             "Condition": {"StringEqualsIgnoreCase": {
                 "kms:RecipientAttestation:ImageSha384": hex::encode([0x42u8; 48])}}}
        ]
    });
    let created = admin_client
        .call(
            "CreateKey",
            serde_json::json!({"Policy": policy.to_string()})
                .to_string()
                .as_bytes(),
        )
        .await
        .unwrap();
    let created: serde_json::Value = serde_json::from_slice(&created).unwrap();
    let key_id = created["KeyMetadata"]["KeyId"].as_str().unwrap().to_owned();
    let secret = b"the enclave's database password";
    let encrypted = admin_client
        .call(
            "Encrypt",
            serde_json::json!({"KeyId": key_id, "Plaintext": b64(secret)})
                .to_string()
                .as_bytes(),
        )
        .await
        .unwrap();
    let encrypted: serde_json::Value = serde_json::from_slice(&encrypted).unwrap();
    let blob = unb64(encrypted["CiphertextBlob"].as_str().unwrap());

    // The fabric: the enclave (cid 16) reaches (3, 8000), where vsock-proxy allows only KMS.
    let broker = Broker::start(BrokerConfig::new(
        16,
        dir.path(),
        dir.path().join("enclave.sock"),
        Arc::new(NoNsm),
    ))
    .unwrap();
    let mut proxy_config = ProxyConfig::new(
        8000,
        "127.0.0.1",
        kms.port(),
        Allowlist {
            allowlist: vec![AllowEntry {
                address: "127.0.0.1".into(),
                port: kms.port(),
            }],
        },
    );
    proxy_config.transport = Some(Transport::Fabric(dir.path().join("vsock")));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let proxy = tokio::spawn(VsockProxy::new(proxy_config).run(async {
        let _ = stopped.await;
    }));
    for _ in 0..500 {
        if dir.path().join("vsock/3_8000.sock").exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let through_proxy = Route::Vsock {
        cid: 3,
        port: 8000,
        transport: Some(Transport::Enclave(broker.enclave_socket().to_owned())),
    };
    let enclave = KmsClient::new(
        client_config(kms, through_proxy.clone(), APP_KEY, APP_SECRET),
        attester(Arc::new(nsm(&ca, 0x42))),
    )
    .unwrap();
    let none = BTreeMap::new();
    let plaintext = enclave.decrypt(&blob, None, None, &none).await.unwrap();
    assert_eq!(&plaintext[..], secret);

    let data_key = enclave
        .generate_data_key(&key_id, "AES_256", &none)
        .await
        .unwrap();
    assert_eq!(data_key.plaintext.len(), 32);
    let again = enclave
        .decrypt(&data_key.ciphertext_blob, Some(&key_id), None, &none)
        .await
        .unwrap();
    assert_eq!(&again[..], &data_key.plaintext[..]);

    let random = enclave.generate_random(64).await.unwrap();
    assert_eq!(random.len(), 64);

    // Another image (PCR0 = 0x43...) gets nothing.
    let impostor = KmsClient::new(
        client_config(kms, through_proxy, APP_KEY, APP_SECRET),
        attester(Arc::new(nsm(&ca, 0x43))),
    )
    .unwrap();
    match impostor.decrypt(&blob, None, None, &none).await {
        Err(KmsClientError::Service { kind, .. }) => assert_eq!(kind, "AccessDeniedException"),
        other => panic!("expected AccessDeniedException, got {other:?}"),
    }

    stop.send(()).unwrap();
    let summary = proxy.await.unwrap().unwrap();
    assert_eq!(summary.accepted, 5);
}

fn b64(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(data)
}

fn unb64(text: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap()
}
