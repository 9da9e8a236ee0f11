//! CiphertextForRecipient interoperability: the key service's DER CMS opened by the SDK and by
//! OpenSSL; OpenSSL's streamed BER CMS (indefinite lengths, chunked octet strings, as AWS emits)
//! opened by the SDK; and a Python `cryptography` envelope (which can only use RSA PKCS#1 v1.5
//! key transport) refused with a clear error.

mod common;

use cloister_kms::cms::RecipientKey;
use cloister_sdk::recipient::{open_ciphertext_for_recipient, parse, RecipientError};
use std::process::Command;

fn write_pem(dir: &std::path::Path, pkcs8: &[u8]) -> std::path::PathBuf {
    let p = dir.join("key.pem");
    std::fs::write(&p, common::pkcs8_pem(pkcs8)).unwrap();
    p
}

fn openssl(args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[test]
fn kms_der_opens_with_sdk_and_openssl() {
    let key = common::enclave_key();
    let r = RecipientKey::from_spki(&key.spki).unwrap();
    let secret: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
    let cms = r.seal(&secret).unwrap();
    assert_eq!(
        &open_ciphertext_for_recipient(&cms, &key.pkcs8).unwrap()[..],
        &secret[..]
    );
    let dir = tempfile::tempdir().unwrap();
    let pem = write_pem(dir.path(), &key.pkcs8);
    let f = dir.path().join("in.der");
    std::fs::write(&f, &cms).unwrap();
    let out = openssl(&[
        "cms",
        "-decrypt",
        "-inform",
        "DER",
        "-in",
        f.to_str().unwrap(),
        "-inkey",
        pem.to_str().unwrap(),
        "-binary",
    ]);
    assert_eq!(out, secret);
    // The output is DER: OpenSSL's strict parser re-encodes it identically.
    let re = openssl(&[
        "asn1parse",
        "-inform",
        "DER",
        "-in",
        f.to_str().unwrap(),
        "-out",
        "/dev/null",
    ]);
    assert!(!re.is_empty());
}

#[test]
fn openssl_streamed_ber_opens_with_sdk() {
    let key = common::enclave_key();
    let dir = tempfile::tempdir().unwrap();
    let pem = write_pem(dir.path(), &key.pkcs8);
    let cert = dir.path().join("cert.pem");
    openssl(&[
        "req",
        "-x509",
        "-new",
        "-key",
        pem.to_str().unwrap(),
        "-subj",
        "/CN=enclave",
        "-days",
        "1",
        "-out",
        cert.to_str().unwrap(),
    ]);
    let secret: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 251) as u8).collect();
    let input = dir.path().join("secret.bin");
    std::fs::write(&input, &secret).unwrap();
    let ber = openssl(&[
        "cms",
        "-encrypt",
        "-stream",
        "-binary",
        "-outform",
        "DER",
        "-aes256",
        "-in",
        input.to_str().unwrap(),
        "-recip",
        cert.to_str().unwrap(),
        "-keyopt",
        "rsa_padding_mode:oaep",
        "-keyopt",
        "rsa_oaep_md:sha256",
        "-keyopt",
        "rsa_mgf1_md:sha256",
    ]);
    // Indefinite-length ContentInfo: this really is BER, not DER.
    assert_eq!(&ber[..2], &[0x30, 0x80]);
    assert_eq!(
        &open_ciphertext_for_recipient(&ber, &key.pkcs8).unwrap()[..],
        &secret[..]
    );
    // Every truncation fails cleanly.
    for n in (0..ber.len()).step_by(17) {
        assert!(open_ciphertext_for_recipient(&ber[..n], &key.pkcs8).is_err());
    }
    // OAEP with SHA-1 (OpenSSL's default OAEP digest) is refused: KMS only uses SHA-256.
    let sha1 = openssl(&[
        "cms",
        "-encrypt",
        "-binary",
        "-outform",
        "DER",
        "-aes256",
        "-in",
        input.to_str().unwrap(),
        "-recip",
        cert.to_str().unwrap(),
        "-keyopt",
        "rsa_padding_mode:oaep",
    ]);
    assert!(matches!(parse(&sha1), Err(RecipientError::Algorithm(_))));
}

#[test]
fn python_cryptography_envelope_is_refused_clearly() {
    // `cryptography`'s PKCS7EnvelopeBuilder (48.x) has no RSA-OAEP option: it always uses
    // PKCS#1 v1.5 key transport, which KMS never emits. The SDK must refuse it by algorithm.
    let key = common::enclave_key();
    let dir = tempfile::tempdir().unwrap();
    let pem = write_pem(dir.path(), &key.pkcs8);
    let script = r#"
import sys, datetime
from cryptography import x509
from cryptography.x509.oid import NameOID
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.serialization import pkcs7
key = serialization.load_pem_private_key(open(sys.argv[1], 'rb').read(), password=None)
name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, 'enclave')])
now = datetime.datetime.now(datetime.timezone.utc)
cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256()))
out = (pkcs7.PKCS7EnvelopeBuilder().set_data(b'x' * 100).add_recipient(cert)
       .set_content_encryption_algorithm(algorithms.AES256).encrypt(serialization.Encoding.DER, []))
sys.stdout.buffer.write(out)
"#;
    let out = Command::new("python3")
        .args(["-c", script, pem.to_str().unwrap()])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = open_ciphertext_for_recipient(&out.stdout, &key.pkcs8).unwrap_err();
    assert_eq!(
        err,
        RecipientError::Algorithm("key encryption is not RSAES-OAEP")
    );
}
