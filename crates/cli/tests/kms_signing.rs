//! Signing images with a KMS key, as nitro-cli does since 1.4: `build-enclave` and `sign-eif`
//! with `--private-key arn:aws:kms:...` against a real `cloister kms serve`. The signing
//! certificate is made for the KMS key's public key and signed by that key through KMS `Sign`
//! (the private key never leaves the key service); `describe-eif` must verify the image's
//! signature and report PCR8. A certificate for another key, a refused call and a missing
//! credential fail with stable codes (nitro-cli's E60 under its name) and leave no image.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use cloister_sdk::kms_client::{Credentials, Endpoint, KmsClient, KmsClientConfig, Route};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use zeroize::Zeroizing;

/// A running `cloister kms serve` and a client with its administrator credential.
struct Kms {
    child: Child,
    endpoint: String,
    access_key: String,
    secret_key: String,
    client: KmsClient,
    runtime: tokio::runtime::Runtime,
    _data: tempfile::TempDir,
}

impl Drop for Kms {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Kms {
    fn start() -> Self {
        let data = tempfile::tempdir().unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_cloister"))
            .args(["kms", "serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data.path().join("kms"))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let started: serde_json::Value = serde_json::from_str(&line).unwrap();
        let endpoint = started["Endpoint"].as_str().unwrap().to_string();
        let creds: serde_json::Value = serde_json::from_slice(
            &std::fs::read(started["AdminCredentialsFile"].as_str().unwrap()).unwrap(),
        )
        .unwrap();
        let access_key = creds["AccessKeyId"].as_str().unwrap().to_string();
        let secret_key = creds["SecretAccessKey"].as_str().unwrap().to_string();
        let parsed = Endpoint::parse(&endpoint).unwrap();
        let addr = format!("{}:{}", parsed.host, parsed.port).parse().unwrap();
        let config = KmsClientConfig {
            region: started["Region"].as_str().unwrap().to_string(),
            endpoint: parsed,
            route: Route::Tcp(addr),
            credentials: Credentials {
                access_key_id: access_key.clone(),
                secret_access_key: Zeroizing::new(secret_key.clone()),
                session_token: None,
            },
            extra_roots: Vec::new(),
            timeout: std::time::Duration::from_secs(30),
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let attester = Arc::new(|_: &[u8]| -> Result<Vec<u8>, String> { Err("unused".into()) });
        let client = KmsClient::new(config, attester).unwrap();
        Self {
            child,
            endpoint,
            access_key,
            secret_key,
            client,
            runtime,
            _data: data,
        }
    }

    fn call(&self, operation: &str, body: serde_json::Value) -> serde_json::Value {
        let payload = serde_json::to_vec(&body).unwrap();
        let out = self
            .runtime
            .block_on(self.client.call(operation, &payload))
            .unwrap_or_else(|e| panic!("{operation}: {e}"));
        serde_json::from_slice(&out).unwrap()
    }

    /// A new key of `spec` for signing; its ARN.
    fn create_signing_key(&self, spec: &str) -> String {
        let r = self.call(
            "CreateKey",
            serde_json::json!({"KeySpec": spec, "KeyUsage": "SIGN_VERIFY"}),
        );
        r["KeyMetadata"]["Arn"].as_str().unwrap().to_string()
    }

    fn public_key(&self, key: &str) -> Vec<u8> {
        let r = self.call("GetPublicKey", serde_json::json!({"KeyId": key}));
        B64.decode(r["PublicKey"].as_str().unwrap()).unwrap()
    }

    /// The environment the AWS SDKs (and `cloister build-enclave`) read.
    fn env(&self, cmd: &mut Command) {
        for v in [
            "AWS_ENDPOINT_URL",
            "AWS_SESSION_TOKEN",
            "AWS_PROFILE",
            "AWS_SHARED_CREDENTIALS_FILE",
            "AWS_CA_BUNDLE",
        ] {
            cmd.env_remove(v);
        }
        cmd.env("AWS_ENDPOINT_URL_KMS", &self.endpoint)
            .env("AWS_ACCESS_KEY_ID", &self.access_key)
            .env("AWS_SECRET_ACCESS_KEY", &self.secret_key);
    }
}

/// A P-384 KMS key as rcgen's signing key: the certificate's signature is made by KMS `Sign`
/// over the TBSCertificate (RAW message, ECDSA_SHA_384, a DER signature as X.509 wants).
struct KmsCertKey<'a> {
    kms: &'a Kms,
    arn: String,
    point: Vec<u8>,
}

impl rcgen::PublicKeyData for KmsCertKey<'_> {
    fn der_bytes(&self) -> &[u8] {
        &self.point
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P384_SHA384
    }
}

impl rcgen::SigningKey for KmsCertKey<'_> {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        let r = self.kms.call(
            "Sign",
            serde_json::json!({
                "KeyId": self.arn,
                "Message": B64.encode(msg),
                "MessageType": "RAW",
                "SigningAlgorithm": "ECDSA_SHA_384",
            }),
        );
        Ok(B64.decode(r["Signature"].as_str().unwrap()).unwrap())
    }
}

/// A self-signed certificate for the KMS key `arn`, signed through KMS, written to `path`.
fn kms_certificate(kms: &Kms, arn: &str, path: &Path) {
    let spki = kms.public_key(arn);
    // An uncompressed P-384 point ends the SubjectPublicKeyInfo.
    let point = spki[spki.len() - 97..].to_vec();
    assert_eq!(point[0], 4);
    let key = KmsCertKey {
        kms,
        arn: arn.to_string(),
        point,
    };
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "kms-signed enclave images");
    params.not_before = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
    params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(30);
    let cert = params.self_signed(&key).unwrap();
    std::fs::write(path, cert.pem()).unwrap();
}

fn vectors() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/vectors/eif")
}

/// `build-enclave` arguments over the reference vectors' kernel, cmdline and ramdisks.
fn build_args(output: &Path, cert: &Path, key: &str) -> Vec<String> {
    let v = vectors();
    let cmdline = std::fs::read_to_string(v.join("cmdline.txt")).unwrap();
    let p = |p: &Path| p.to_str().unwrap().to_string();
    vec![
        "build-enclave".into(),
        "--kernel".into(),
        p(&v.join("kernel.bin")),
        "--cmdline".into(),
        cmdline.trim_end_matches('\n').to_string(),
        "--ramdisk".into(),
        p(&v.join("ramdisk0.bin")),
        "--ramdisk".into(),
        p(&v.join("ramdisk1.bin")),
        "--build-time".into(),
        "2026-01-01T00:00:00Z".into(),
        "--output-file".into(),
        p(output),
        "--signing-certificate".into(),
        p(cert),
        "--private-key".into(),
        key.into(),
    ]
}

fn json(o: &Output) -> serde_json::Value {
    assert!(
        o.status.success(),
        "status {:?}: {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn cloister(kms: &Kms, args: &[String]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cloister"));
    kms.env(&mut cmd);
    cmd.args(args)
        .env_remove("CLOISTER_ERROR_STYLE")
        .output()
        .unwrap()
}

/// `describe-eif` of `eif`: the signature checks and PCR8 is the certificate's.
fn assert_verified(kms: &Kms, eif: &Path, cert: &Path) {
    let pcr8 = json(&cloister(
        kms,
        &[
            "pcr".into(),
            "--signing-certificate".into(),
            cert.to_str().unwrap().into(),
        ],
    ))["PCR8"]
        .clone();
    let d = json(&cloister(
        kms,
        &[
            "describe-eif".into(),
            "--eif-path".into(),
            eif.to_str().unwrap().into(),
        ],
    ));
    assert_eq!(d["IsSigned"], true, "{d}");
    assert_eq!(d["SignatureCheck"], true, "{d}");
    assert_eq!(d["CheckCRC"], true, "{d}");
    assert_eq!(d["Measurements"]["PCR8"], pcr8, "{d}");
    assert_eq!(
        d["SigningCertificate"]["IssuerName"]["commonName"],
        "kms-signed enclave images"
    );
}

#[test]
fn build_and_sign_with_a_kms_key_and_describe_verifies() {
    let kms = Kms::start();
    let dir = tempfile::tempdir().unwrap();
    let arn = kms.create_signing_key("ECC_NIST_P384");
    let cert = dir.path().join("cert.pem");
    kms_certificate(&kms, &arn, &cert);

    // build-enclave --private-key <key ARN>.
    let eif = dir.path().join("signed.eif");
    let built = json(&cloister(&kms, &build_args(&eif, &cert, &arn)));
    let pcr8 = built["Measurements"]["PCR8"].as_str().unwrap().to_string();
    assert_eq!(pcr8.len(), 96);
    assert_verified(&kms, &eif, &cert);

    // The same through an alias ARN and AWS_ENDPOINT_URL, under the name nitro-cli.
    kms.call(
        "CreateAlias",
        serde_json::json!({"AliasName": "alias/eif-signing", "TargetKeyId": arn}),
    );
    let alias_arn = format!(
        "{}:alias/eif-signing",
        arn.rsplit_once(':').map(|(head, _)| head).unwrap()
    );
    let links = dir.path().join("bin");
    std::fs::create_dir_all(&links).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_cloister"), links.join("nitro-cli")).unwrap();
    let eif2 = dir.path().join("alias.eif");
    let mut cmd = Command::new(links.join("nitro-cli"));
    kms.env(&mut cmd);
    let out = cmd
        .args(build_args(&eif2, &cert, &alias_arn))
        // The endpoint for every service, as the SDKs also read it.
        .env_remove("AWS_ENDPOINT_URL_KMS")
        .env("AWS_ENDPOINT_URL", &kms.endpoint)
        .env("NITRO_CLI_LOGS_PATH", dir.path().join("logs"))
        .output()
        .unwrap();
    let built2 = json(&out);
    // Same inputs, same certificate: the same PCRs (ECDSA signatures differ, PCRs do not).
    assert_eq!(built2["Measurements"], built["Measurements"]);
    assert_verified(&kms, &eif2, &cert);

    // sign-eif re-signs an image in place with the KMS key.
    let o = cloister(
        &kms,
        &[
            "sign-eif".into(),
            "--eif-path".into(),
            eif.to_str().unwrap().into(),
            "--signing-certificate".into(),
            cert.to_str().unwrap().into(),
            "--private-key".into(),
            arn.clone(),
        ],
    );
    assert_eq!(json(&o)["Measurements"]["PCR8"], pcr8);
    assert_verified(&kms, &eif, &cert);
}

#[test]
#[allow(
    clippy::too_many_lines,
    reason = "one end-to-end scenario, read top to bottom; its steps share what it started"
)]
fn kms_signing_failures_are_coded_and_write_no_image() {
    let kms = Kms::start();
    let dir = tempfile::tempdir().unwrap();
    let key = kms.create_signing_key("ECC_NIST_P384");
    let other = kms.create_signing_key("ECC_NIST_P384");
    let other_cert = dir.path().join("other.pem");
    kms_certificate(&kms, &other, &other_cert);
    let eif = dir.path().join("out.eif");

    // A certificate for another key: E132, checked before anything is written.
    let o = cloister(&kms, &build_args(&eif, &other_cert, &key));
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert!(err.contains("[E132]"), "{err}");
    assert!(
        err.contains(&format!("is not the public key of KMS key {key}")),
        "{err}"
    );
    assert!(!eif.exists());

    // The same for a container input, before anything is built.
    let rootfs = dir.path().join("rootfs");
    std::fs::create_dir_all(&rootfs).unwrap();
    let o = cloister(
        &kms,
        &[
            "build-enclave".into(),
            "--rootfs".into(),
            rootfs.to_str().unwrap().into(),
            "--cmd".into(),
            "/app".into(),
            "--output-file".into(),
            eif.to_str().unwrap().into(),
            "--signing-certificate".into(),
            other_cert.to_str().unwrap().into(),
            "--private-key".into(),
            key.clone(),
        ],
    );
    let err = stderr(&o);
    assert!(err.contains("[E132]"), "{err}");
    assert!(!eif.exists());

    // Under nitro-cli's name: its signing error, E60, as the exit status.
    let links = dir.path().join("bin");
    std::fs::create_dir_all(&links).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_cloister"), links.join("nitro-cli")).unwrap();
    let mut cmd = Command::new(links.join("nitro-cli"));
    kms.env(&mut cmd);
    let o = cmd
        .args(build_args(&eif, &other_cert, &key))
        .env("NITRO_CLI_LOGS_PATH", dir.path().join("logs"))
        .env_remove("CLOISTER_ERROR_STYLE")
        .output()
        .unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(60), "{err}");
    assert!(err.starts_with("[ E60 ] Signing error."), "{err}");
    assert!(err.lines().nth(1).unwrap().starts_with("[E132]"), "{err}");
    assert!(!eif.exists());

    // A key the service does not know: E131 with the service's answer.
    let missing = format!(
        "{}/00000000-0000-0000-0000-000000000000",
        key.rsplit_once('/').unwrap().0
    );
    let o = cloister(&kms, &build_args(&eif, &other_cert, &missing));
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(5), "{err}");
    assert!(
        err.contains("[E131]") && err.contains("NotFoundException"),
        "{err}"
    );
    assert!(!eif.exists());

    // A symmetric key has no public key: E131 quoting the service.
    let aes = kms.call("CreateKey", serde_json::json!({}))["KeyMetadata"]["Arn"]
        .as_str()
        .unwrap()
        .to_string();
    let o = cloister(&kms, &build_args(&eif, &other_cert, &aes));
    let err = stderr(&o);
    assert!(
        err.contains("[E131]") && err.contains("UnsupportedOperationException"),
        "{err}"
    );
    assert!(!eif.exists());

    // An RSA signing key cannot sign images: E131 naming the key's spec.
    let rsa = kms.create_signing_key("RSA_2048");
    let o = cloister(&kms, &build_args(&eif, &other_cert, &rsa));
    let err = stderr(&o);
    assert!(
        err.contains("[E131]") && err.contains("is a RSA_2048 key for SIGN_VERIFY"),
        "{err}"
    );
    assert!(!eif.exists());

    // No credentials anywhere: E131 saying where they are looked for.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cloister"));
    kms.env(&mut cmd);
    let o = cmd
        .args(build_args(&eif, &other_cert, &other))
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env("AWS_SHARED_CREDENTIALS_FILE", dir.path().join("none"))
        .output()
        .unwrap();
    let err = stderr(&o);
    assert!(
        err.contains("[E131]") && err.contains("AWS_ACCESS_KEY_ID"),
        "{err}"
    );
    assert!(!eif.exists());

    // Credentials from the shared credentials file's default profile work.
    let creds = dir.path().join("credentials");
    std::fs::write(
        &creds,
        format!(
            "[default]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            kms.access_key, kms.secret_key
        ),
    )
    .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cloister"));
    kms.env(&mut cmd);
    let o = cmd
        .args(build_args(&eif, &other_cert, &other))
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env("AWS_SHARED_CREDENTIALS_FILE", &creds)
        .output()
        .unwrap();
    json(&o);
    assert_verified(&kms, &eif, &other_cert);
}
