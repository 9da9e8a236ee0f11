//! Every operation, Recipient with real attestation documents, and AWS's error shapes, driven by
//! boto3 (tests/python/test_kms_boto3.py) against a server on a loopback port. CiphertextForRecipient
//! blobs the script saves are then opened here with the SDK.

mod common;

use std::process::Command;

#[test]
fn boto3_drives_every_operation() {
    if !common::have_boto3() {
        // The CI image installs boto3 (scripts/install-deps.sh); say so loudly if it is absent.
        panic!("python3 with boto3 is required for this test");
    }
    let tmp = tempfile::tempdir().unwrap();
    let attestor = common::Attestor::new(&tmp.path().join("pki"));
    let key = common::enclave_key();
    let image_a = [0xA1u8; 48];
    let image_b = [0xB2u8; 48];
    let doc_a = attestor.document(image_a, &key.spki);
    let doc_b = attestor.document(image_b, &key.spki);
    std::fs::write(tmp.path().join("doc-a.cbor"), &doc_a).unwrap();
    std::fs::write(tmp.path().join("doc-b.cbor"), &doc_b).unwrap();
    let doc_a_vm = attestor.document_as(cloister_attestation::Isolation::Vm, image_a, &key.spki);
    std::fs::write(tmp.path().join("doc-a-vm.cbor"), &doc_a_vm).unwrap();
    std::fs::write(
        tmp.path().join("enclave.pem"),
        common::pkcs8_pem(&key.pkcs8),
    )
    .unwrap();
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).unwrap();

    let cfg = common::config(Some(attestor.root_path()));
    let data = tmp.path().join("data");
    let server = common::TestServer::start(&data, cfg, 2);

    // The data directory was initialised with private files.
    use std::os::unix::fs::PermissionsExt;
    for f in ["admin-credentials.json", "master.key"] {
        let mode = std::fs::metadata(data.join(f))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{f}");
    }
    let creds: serde_json::Value =
        serde_json::from_slice(&std::fs::read(data.join("admin-credentials.json")).unwrap())
            .unwrap();
    assert_eq!(creds["AccessKeyId"], server.admin.access_key_id.as_str());

    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/test_kms_boto3.py"
    );
    let status = Command::new("python3")
        .arg(script)
        .env("KMS_ENDPOINT", server.endpoint())
        .env("ADMIN_AKID", creds["AccessKeyId"].as_str().unwrap())
        .env("ADMIN_SECRET", creds["SecretAccessKey"].as_str().unwrap())
        .env("APP_AKID", "AKIAAPPUSEREXAMPLE1")
        .env("APP_SECRET", "app-secret-app-secret")
        .env("DOC_A", tmp.path().join("doc-a.cbor"))
        .env("DOC_B", tmp.path().join("doc-b.cbor"))
        .env("DOC_A_VM", tmp.path().join("doc-a-vm.cbor"))
        .env("IMAGE_A", hex::encode(image_a))
        .env("IMAGE_B", hex::encode(image_b))
        .env("ENCLAVE_KEY_PEM", tmp.path().join("enclave.pem"))
        .env("OUT_DIR", &out)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .status()
        .expect("run python3");
    assert!(status.success(), "boto3 script failed");

    // The SDK opens what the server sealed for the enclave (DER) to the same bytes OpenSSL did.
    let cms = std::fs::read(out.join("datakey.cms")).unwrap();
    let plain = std::fs::read(out.join("datakey.plain")).unwrap();
    let opened = cloister_sdk::recipient::open_ciphertext_for_recipient(&cms, &key.pkcs8).unwrap();
    assert_eq!(&opened[..], &plain[..]);
    let cms = std::fs::read(out.join("decrypt.cms")).unwrap();
    let opened = cloister_sdk::recipient::open_ciphertext_for_recipient(&cms, &key.pkcs8).unwrap();
    assert_eq!(&opened[..], b"enclave secret");
}
