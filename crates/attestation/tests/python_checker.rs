//! An independent check: a Python script using `cryptography` and `cbor2` (no Cloister code)
//! verifies a Cloister document's COSE signature and its chain to our root. CI installs the
//! packages (scripts/install-deps.sh); a missing python3 or package fails this test.

use cloister_attestation::{HostCa, ImagePcrs, Isolation, Nsm, NsmConfig, Pki, SystemClock};
use cloister_nsm_api::{Request, Response};
use serde_bytes::ByteBuf;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/python/verify_document.py"
);

fn run_checker(doc: &Path, root: &Path, extra: &[&str]) -> std::process::Output {
    Command::new("python3")
        .arg(SCRIPT)
        .arg(doc)
        .arg(root)
        .args(extra)
        .output()
        .expect("python3 must be installed (scripts/install-deps.sh)")
}

#[test]
fn python_verifies_a_cloister_document() {
    let probe = Command::new("python3")
        .args(["-c", "import cbor2, cryptography"])
        .output()
        .expect("python3 must be installed (scripts/install-deps.sh)");
    assert!(
        probe.status.success(),
        "python packages cbor2 and cryptography are required (scripts/install-deps.sh): {}",
        String::from_utf8_lossy(&probe.stderr)
    );

    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::init(&dir.path().join("pki")).unwrap();
    let ca = HostCa::load(pki.dir()).unwrap();
    let signer = ca
        .issue_enclave_signer(
            "i-0123456789abcdef0-enc00000000000000ff",
            Isolation::Vm,
            SystemTime::now() + Duration::from_secs(3 * 3600),
        )
        .unwrap();
    let nsm = Nsm::new(NsmConfig {
        module_id: "i-0123456789abcdef0-enc00000000000000ff".into(),
        image_pcrs: ImagePcrs {
            pcr0: [0xaa; 48],
            pcr1: [0xbb; 48],
            pcr2: [0xcc; 48],
            pcr8: None,
        },
        role_arn: None,
        instance_id: "i-0123456789abcdef0".into(),
        debug_mode: false,
        signer,
        clock: Arc::new(SystemClock),
    })
    .unwrap();
    let Response::Attestation { document } = nsm.process(Request::Attestation {
        user_data: Some(ByteBuf::from(b"hello".to_vec())),
        nonce: Some(ByteBuf::from(vec![0xde, 0xad])),
        public_key: None,
    }) else {
        panic!("attestation failed")
    };
    let doc_path = dir.path().join("doc.cose");
    let root_path = dir.path().join("root.der");
    std::fs::write(&doc_path, &document).unwrap();
    std::fs::write(&root_path, pki.root_der()).unwrap();

    let out = run_checker(&doc_path, &root_path, &["--nonce", "dead"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "checker rejected the document: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(summary["verified"], true);
    assert_eq!(
        summary["module_id"],
        "i-0123456789abcdef0-enc00000000000000ff"
    );
    assert_eq!(summary["isolation"], "vm");
    assert_eq!(summary["pcrs"]["0"], hex::encode([0xaa; 48]));

    // The checker is not vacuous: a flipped signature bit and a foreign root both fail.
    let mut tampered = document.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    std::fs::write(&doc_path, &tampered).unwrap();
    assert!(!run_checker(&doc_path, &root_path, &[]).status.success());
    std::fs::write(&doc_path, &document).unwrap();
    let other = Pki::init(&dir.path().join("other")).unwrap();
    std::fs::write(&root_path, other.root_der()).unwrap();
    assert!(!run_checker(&doc_path, &root_path, &[]).status.success());
}
