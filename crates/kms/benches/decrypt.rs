//! Decrypt throughput over loopback with SigV4, against Cloister's key service and, as the
//! baseline measured in the same run, moto's KMS server (`python3 -m moto.server`).
//!
//! Workloads (each for `BENCH_SECONDS`, default 3 s, after a short warm-up):
//! - Decrypt with 1 and 8 keep-alive client connections, on Cloister and on moto; the ratio is
//!   printed.
//! - Decrypt with a Recipient (a real attestation document, verified once and then cached) with
//!   1 and 8 connections, beside the raw attestation verifier's verifications per second.
//!
//! Run: `cargo bench -p cloister-kms --bench decrypt`. Without moto installed the baseline is
//! skipped and said so.

#[path = "support/mod.rs"]
mod support;

use cloister_attestation::{DocumentFields, Isolation, Pki, VerifyOptions};
use cloister_kms::config::Config;
use cloister_kms::server;
use serde_json::json;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use support::{call, connect, fixed_body, load, Creds};

fn start_moto() -> Option<(std::process::Child, SocketAddr)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let child = std::process::Command::new("python3")
        .args([
            "-m",
            "moto.server",
            "-H",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().ok()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(addr).is_ok() {
            return Some((child, addr));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut child = child;
    let _ = child.kill();
    None
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
    let tmp = tempfile::tempdir().expect("tempdir");

    // Attestation: a PKI, an enclave key and a document.
    let pki = Pki::init(&tmp.path().join("pki")).expect("pki");
    let signer = pki
        .host_ca()
        .expect("host ca")
        .issue_enclave_signer(
            "i-00000000000000000-enc0000000000000000",
            Isolation::Process,
            SystemTime::now() + Duration::from_secs(3600),
        )
        .expect("signer");
    let spki = {
        use aws_lc_rs::encoding::AsDer;
        use aws_lc_rs::signature::KeyPair as _;
        let kp = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).expect("rsa");
        let d: aws_lc_rs::encoding::PublicKeyX509Der<'_> = kp.public_key().as_der().expect("spki");
        d.as_ref().to_vec()
    };
    let pcr0 = vec![0xA1u8; 48];
    let doc = signer
        .sign(DocumentFields {
            module_id: "i-00000000000000000-enc0000000000000000".into(),
            timestamp_ms: u64::try_from(
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .expect("time")
                    .as_millis(),
            )
            .expect("time"),
            pcrs: [(0usize, pcr0.clone()), (1, vec![1; 48]), (2, vec![2; 48])]
                .into_iter()
                .collect(),
            public_key: Some(spki),
            user_data: None,
            nonce: None,
        })
        .expect("document");

    // Raw verifier throughput (single thread).
    let verifier =
        cloister_attestation::Verifier::new(vec![pki.root_der().to_vec()]).expect("verifier");
    let t = Instant::now();
    let mut verifies = 0u64;
    while t.elapsed() < secs {
        verifier
            .verify(&doc, &VerifyOptions::default())
            .expect("verify");
        verifies += 1;
    }
    let verify_rate = verifies as f64 / t.elapsed().as_secs_f64();

    let cfg: Config = serde_yaml_ng::from_str(&format!(
        "attestation:\n  trust_anchors: ['{}']\n",
        pki.root_cert_path().display()
    ))
    .expect("config");
    let (app, admin) = server::open(&tmp.path().join("data"), &cfg).expect("open");
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let addr = server_rt.block_on(async {
        let (l, addr) = server::bind("127.0.0.1:0").await.expect("bind");
        tokio::spawn(server::serve(l, app, None, std::future::pending()));
        addr
    });
    let creds = Creds {
        akid: admin.access_key_id.clone(),
        secret: admin.secret_access_key.to_string(),
    };
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");

    let policy = json!({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::111122223333:root"}, "Action": "kms:*", "Resource": "*",
         "Condition": {"StringEqualsIgnoreCaseIfExists": {"kms:RecipientAttestation:ImageSha384": hex::encode(&pcr0)}}}]});
    let (ours_1, ours_8, rec_1, rec_8) = client_rt.block_on(async {
        let mut s = connect(addr).await;
        let k = call(
            &mut s,
            addr,
            &creds,
            "CreateKey",
            &json!({"Policy": policy.to_string()}),
        )
        .await;
        let id = k["KeyMetadata"]["KeyId"].as_str().expect("id").to_string();
        let e = call(
            &mut s,
            addr,
            &creds,
            "Encrypt",
            &json!({"KeyId": id, "Plaintext": "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="}),
        )
        .await;
        let blob = e["CiphertextBlob"].clone();
        let plain = json!({"CiphertextBlob": blob});
        use base64::Engine as _;
        let with_recipient = json!({"CiphertextBlob": blob, "Recipient": {
            "KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_256",
            "AttestationDocument": base64::engine::general_purpose::STANDARD.encode(&doc)}});
        (
            load(&[addr], &creds, "Decrypt", fixed_body(&plain), 1, secs).await,
            load(&[addr], &creds, "Decrypt", fixed_body(&plain), 8, secs).await,
            load(
                &[addr],
                &creds,
                "Decrypt",
                fixed_body(&with_recipient),
                1,
                secs,
            )
            .await,
            load(
                &[addr],
                &creds,
                "Decrypt",
                fixed_body(&with_recipient),
                8,
                secs,
            )
            .await,
        )
    });

    let moto = start_moto();
    let moto_rates = moto.as_ref().map(|(_, maddr)| {
        let maddr = *maddr;
        let mcreds = Creds {
            akid: "AKIAMOTOEXAMPLE00001".into(),
            secret: "moto-secret".into(),
        };
        client_rt.block_on(async {
            let mut s = connect(maddr).await;
            let k = call(&mut s, maddr, &mcreds, "CreateKey", &json!({})).await;
            let id = k["KeyMetadata"]["KeyId"].as_str().expect("id").to_string();
            let e = call(
                &mut s,
                maddr,
                &mcreds,
                "Encrypt",
                &json!({"KeyId": id, "Plaintext": "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="}),
            )
            .await;
            let body = json!({"CiphertextBlob": e["CiphertextBlob"]});
            (
                load(&[maddr], &mcreds, "Decrypt", fixed_body(&body), 1, secs).await,
                load(&[maddr], &mcreds, "Decrypt", fixed_body(&body), 8, secs).await,
            )
        })
    });
    if let Some((mut child, _)) = moto {
        let _ = child.kill();
        let _ = child.wait();
    }

    println!(
        "Decrypt over loopback HTTP/1.1 keep-alive, SigV4-signed, {} s per run, {} CPUs",
        secs.as_secs(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    println!("{:<44} {:>12}", "workload", "requests/s");
    println!("{:<44} {:>12.0}", "cloister Decrypt, 1 connection", ours_1);
    println!("{:<44} {:>12.0}", "cloister Decrypt, 8 connections", ours_8);
    match moto_rates {
        Some((m1, m8)) => {
            println!("{:<44} {:>12.0}", "moto Decrypt, 1 connection", m1);
            println!("{:<44} {:>12.0}", "moto Decrypt, 8 connections", m8);
            println!("ratio cloister/moto: {:.1}x (1 connection), {:.1}x (8 connections)", ours_1 / m1, ours_8 / m8);
        }
        None => println!("moto baseline skipped: `python3 -m moto.server` did not start (pip install 'moto[server]')"),
    }
    println!(
        "{:<44} {:>12.0}",
        "cloister Decrypt + Recipient, 1 connection", rec_1
    );
    println!(
        "{:<44} {:>12.0}",
        "cloister Decrypt + Recipient, 8 connections", rec_8
    );
    println!(
        "{:<44} {:>12.0}",
        "attestation Verifier::verify (1 thread)", verify_rate
    );
    println!("ratio Recipient-Decrypt(8)/verifies: {:.1}x (the cache makes Recipient cost ~ Decrypt + RSA-OAEP)", rec_8 / verify_rate);
    drop(server_rt);
}
