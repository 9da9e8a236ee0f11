//! Asymmetric and HMAC keys driven by real clients: boto3 and the AWS CLI
//! (tests/python/test_kms_asymmetric.py) against a server on a loopback port, with signatures,
//! RSAES-OAEP ciphertexts and ECDH secrets checked by `cryptography`, and CiphertextForRecipient
//! opened by OpenSSL.

mod common;

use std::process::Command;

#[test]
fn boto3_and_aws_cli_drive_asymmetric_and_hmac_keys() {
    if !common::have_boto3() {
        // The CI image installs boto3 (scripts/install-deps.sh); say so loudly if it is absent.
        panic!("python3 with boto3 is required for this test");
    }
    let tmp = tempfile::tempdir().unwrap();
    let attestor = common::Attestor::new(&tmp.path().join("pki"));
    let key = common::enclave_key();
    let doc = attestor.document([0xA1u8; 48], &key.spki);
    std::fs::write(tmp.path().join("doc-a.cbor"), &doc).unwrap();
    std::fs::write(
        tmp.path().join("enclave.pem"),
        common::pkcs8_pem(&key.pkcs8),
    )
    .unwrap();

    let cfg = common::config(Some(attestor.root_path()));
    let data = tmp.path().join("data");
    let server = common::TestServer::start(&data, cfg, 2);

    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/test_kms_asymmetric.py"
    );
    let status = Command::new("python3")
        .arg(script)
        .env("KMS_ENDPOINT", server.endpoint())
        .env("ADMIN_AKID", server.admin.access_key_id.as_str())
        .env("ADMIN_SECRET", server.admin.secret_access_key.as_str())
        .env("DOC_A", tmp.path().join("doc-a.cbor"))
        .env("ENCLAVE_KEY_PEM", tmp.path().join("enclave.pem"))
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .status()
        .expect("run python3");
    assert!(status.success(), "asymmetric key script failed");
}
