//! The verifier against AWS's real document, Cloister's own documents, and one broken document
//! per check.

mod common;

use cloister_attestation::{
    HostCa, Isolation, Pki, Verifier, VerifyError, VerifyOptions, AWS_NITRO_ROOT_G1,
    VERIFY_ERROR_CODES,
};
use cloister_nsm_api::{SyntaxError, MAX_NONCE_LEN, MAX_PUBLIC_KEY_LEN, MAX_USER_DATA_LEN};
use common::*;
use rcgen::{BasicConstraints, IsCa, KeyUsagePurpose};
use serde_bytes::ByteBuf;
use std::collections::HashSet;
use std::time::{Duration, SystemTime};

const AWS_DOC: &[u8] = include_bytes!("../testdata/aws-debug-2023-09-07.cose");
const AWS_TIME_MS: u64 = 1_694_102_161_556;
/// The AWS leaf's validity (2023-09-07 15:55:08 to 18:55:11 UTC).
const AWS_LEAF_NOT_BEFORE: u64 = 1_694_102_108;
const AWS_LEAF_NOT_AFTER: u64 = 1_694_112_911;

fn aws() -> Verifier {
    Verifier::new(vec![AWS_NITRO_ROOT_G1.to_vec()]).unwrap()
}

#[test]
fn aws_root_constant_is_the_published_root() {
    assert_eq!(
        cloister_attestation::pki::fingerprint_sha256(AWS_NITRO_ROOT_G1),
        "641a0321a3e244efe456463195d606317ed7cdcc3c1756e09893f3c68f79bb5b"
    );
    assert_eq!(
        AWS_NITRO_ROOT_G1,
        std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../tests/vectors/attestation/aws-nitro-root-g1.der")
        )
        .expect("the repository's copy of the AWS Nitro root")
        .as_slice()
    );
}

#[test]
fn aws_document_verifies_at_its_own_time() {
    let v = aws()
        .verify(AWS_DOC, &VerifyOptions::at_unix_ms(AWS_TIME_MS))
        .unwrap();
    assert_eq!(
        Verifier::aws()
            .verify(AWS_DOC, &VerifyOptions::at_unix_ms(AWS_TIME_MS))
            .unwrap(),
        v
    );
    assert_eq!(v.module_id(), "i-0644948d93f19c17b-enc018a705a4fc6e067");
    assert_eq!(v.timestamp_ms(), AWS_TIME_MS);
    assert_eq!(v.pcrs().len(), 16);
    assert!(v.is_debug());
    assert_eq!(v.image_sha384(), Some(&[0u8; 48][..]));
    assert_eq!(v.isolation(), None);
    assert_eq!(v.chain_subjects().len(), 5);
    assert!(v.chain_subjects()[4].contains("CN=aws.nitro-enclaves"));
    assert_eq!(v.nonce().map(<[u8]>::len), Some(256));
    assert_eq!(v.user_data().map(<[u8]>::len), Some(91));
    assert_eq!(v.public_key(), None);
    assert_eq!(v.leaf_not_after_secs(), AWS_LEAF_NOT_AFTER);
    assert_eq!(&v.pcr(3).unwrap()[..4], &[0x4a, 0x93, 0x29, 0xd6]);
    // Verifying with a nonce and a max age relative to its own time.
    let opts = VerifyOptions::at_unix_ms(AWS_TIME_MS + 1000)
        .with_nonce(v.nonce().unwrap().to_vec())
        .with_max_age(Duration::from_secs(5))
        .with_pcr(3, v.pcr(3).unwrap().to_vec());
    aws().verify(AWS_DOC, &opts).unwrap();
}

#[test]
fn aws_document_fails_outside_its_leaf_validity() {
    let after = VerifyOptions::at_unix_ms((AWS_LEAF_NOT_AFTER + 1) * 1000);
    assert!(matches!(
        aws().verify(AWS_DOC, &after),
        Err(VerifyError::CertificateExpired { ref subject, .. }) if subject.contains("enc018a705a4fc6e067")
    ));
    let before = VerifyOptions::at_unix_ms((AWS_LEAF_NOT_BEFORE - 1) * 1000);
    assert!(matches!(
        aws().verify(AWS_DOC, &before),
        Err(VerifyError::CertificateNotYetValid { ref subject, .. }) if subject.contains("enc018a705a4fc6e067")
    ));
    // Today, long after.
    assert!(matches!(
        aws().verify(AWS_DOC, &VerifyOptions::default()),
        Err(VerifyError::CertificateExpired { .. })
    ));
}

#[test]
fn aws_debug_document_never_matches_an_image() {
    let opts = VerifyOptions::at_unix_ms(AWS_TIME_MS).with_pcr(0, vec![0u8; 48]);
    assert_eq!(
        aws().verify(AWS_DOC, &opts),
        Err(VerifyError::DebugDocument(0))
    );
    let opts = VerifyOptions::at_unix_ms(AWS_TIME_MS).with_pcr(2, vec![7u8; 48]);
    assert_eq!(
        aws().verify(AWS_DOC, &opts),
        Err(VerifyError::DebugDocument(2))
    );
}

#[test]
fn aws_document_bit_flips_are_rejected() {
    let opts = VerifyOptions::at_unix_ms(AWS_TIME_MS);
    let v = aws();
    // Every bit of the protected header and the signature, a sample of the payload.
    let len = AWS_DOC.len();
    let positions: Vec<usize> = (1..8)
        .chain(len - 96..len)
        .chain((8..len - 100).step_by(23))
        .collect();
    for pos in positions {
        for bit in [0u8, 3, 7] {
            let mut doc = AWS_DOC.to_vec();
            doc[pos] ^= 1 << bit;
            assert!(
                v.verify(&doc, &opts).is_err(),
                "flip at {pos} bit {bit} accepted"
            );
        }
    }
}

struct Ours {
    _dir: tempfile::TempDir,
    pki: Pki,
    ca: HostCa,
}

fn ours() -> Ours {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::init(dir.path()).unwrap();
    let ca = HostCa::load(dir.path()).unwrap();
    Ours { _dir: dir, pki, ca }
}

fn fields(nonce: Option<Vec<u8>>) -> cloister_attestation::DocumentFields {
    cloister_attestation::DocumentFields {
        module_id: "i-0123456789abcdef0-enc0123456789abcdef".into(),
        timestamp_ms: now_ms(),
        pcrs: (0..16)
            .map(|i| (i, vec![0xa0 + u8::try_from(i).unwrap(); 48]))
            .collect(),
        public_key: Some(vec![0x30, 0x01, 0x00]),
        user_data: Some(b"user".to_vec()),
        nonce,
    }
}

#[test]
fn cloister_document_verifies_with_our_root_only() {
    let o = ours();
    let signer =
        o.ca.issue_enclave_signer(
            "i-0123456789abcdef0-enc0123456789abcdef",
            Isolation::Process,
            SystemTime::now() + Duration::from_secs(3 * 3600),
        )
        .unwrap();
    let doc = signer.sign(fields(Some(b"n0nce".to_vec()))).unwrap();
    let ours = Verifier::new(vec![o.pki.root_der().to_vec()]).unwrap();
    let v = ours
        .verify(
            &doc,
            &VerifyOptions::default()
                .with_nonce(b"n0nce".to_vec())
                .with_max_age(Duration::from_secs(60))
                .with_pcr(0, vec![0xa0; 48])
                .with_pcr(15, vec![0xaf; 48]),
        )
        .unwrap();
    assert_eq!(v.isolation(), Some(Isolation::Process));
    assert!(!v.is_debug());
    assert_eq!(v.user_data(), Some(&b"user"[..]));
    assert_eq!(v.public_key(), Some(&[0x30, 0x01, 0x00][..]));
    assert_eq!(v.chain_subjects().len(), 3);
    assert!(v.chain_subjects()[0].contains("OU=isolation=process"));
    // Both roots trusted: still fine. AWS's root only: untrusted.
    let both = Verifier::new(vec![AWS_NITRO_ROOT_G1.to_vec(), o.pki.root_der().to_vec()]).unwrap();
    both.verify(&doc, &VerifyOptions::default()).unwrap();
    assert!(matches!(
        aws().verify(&doc, &VerifyOptions::default()),
        Err(VerifyError::UntrustedRoot(_))
    ));
    // Another operator's root: untrusted.
    let other = self::ours();
    let theirs = Verifier::new(vec![other.pki.root_der().to_vec()]).unwrap();
    assert!(matches!(
        theirs.verify(&doc, &VerifyOptions::default()),
        Err(VerifyError::UntrustedRoot(_))
    ));
    // Tagged form verifies; trailing bytes do not.
    let mut tagged = vec![0xd2];
    tagged.extend_from_slice(&doc);
    ours.verify(&tagged, &VerifyOptions::default()).unwrap();
    let mut trailing = doc.clone();
    trailing.push(0xf6);
    assert_eq!(
        ours.verify(&trailing, &VerifyOptions::default()),
        Err(VerifyError::TrailingBytes(1))
    );
    // The VM isolation kind.
    let vm =
        o.ca.issue_enclave_signer(
            "vm-enclave",
            Isolation::Vm,
            SystemTime::now() + Duration::from_secs(600),
        )
        .unwrap();
    let doc = vm.sign(fields(None)).unwrap();
    assert_eq!(
        ours.verify(&doc, &VerifyOptions::default())
            .unwrap()
            .isolation(),
        Some(Isolation::Vm)
    );
}

/// A chain built in the test, with keys it holds: root -> host CA -> leaf.
struct Chain {
    root: TestCert,
    host: TestCert,
    leaf: TestCert,
    verifier: Verifier,
}

fn chain() -> Chain {
    let root = root();
    let host = intermediate(&root);
    let leaf = leaf(&host);
    let verifier = Verifier::new(vec![root.der.clone()]).unwrap();
    Chain {
        root,
        host,
        leaf,
        verifier,
    }
}

fn now() -> VerifyOptions {
    VerifyOptions::default()
}

#[test]
fn test_chain_baseline_verifies() {
    let c = chain();
    let doc = sign(&payload(&c.leaf, &[&c.root, &c.host]), &c.leaf);
    let v = c.verifier.verify(&doc, &now()).unwrap();
    assert_eq!(v.isolation(), None);
}

#[test]
fn bit_flips_in_header_payload_signature_and_certificates_are_rejected() {
    let c = chain();
    let body = payload(&c.leaf, &[&c.root, &c.host]);
    let doc = sign(&body, &c.leaf);
    let len = doc.len();
    // Protected header: bytes 1..=5 of the document (0x84, 0x44, a1 01 38 22).
    let mut positions: Vec<usize> = (1..6).collect();
    positions.extend((len - 96..len).step_by(3));
    positions.extend((6..len - 100).step_by(17));
    for pos in positions {
        for bit in 0..8 {
            let mut d = doc.clone();
            d[pos] ^= 1 << bit;
            assert!(
                c.verifier.verify(&d, &now()).is_err(),
                "document flip {pos}/{bit}"
            );
        }
    }
    // Flip bits inside each certificate and re-sign the document with the leaf key, so only
    // the chain checks can catch the change.
    for which in 0..3 {
        let original = match which {
            0 => c.root.der.clone(),
            1 => c.host.der.clone(),
            _ => c.leaf.der.clone(),
        };
        for pos in (0..original.len()).step_by(7) {
            let mut cert = original.clone();
            cert[pos] ^= 1 << (pos % 8);
            let mut p = body.clone();
            match which {
                0 => p.cabundle[0] = ByteBuf::from(cert),
                1 => p.cabundle[1] = ByteBuf::from(cert),
                _ => p.certificate = ByteBuf::from(cert),
            }
            let d = sign(&p, &c.leaf);
            assert!(
                c.verifier.verify(&d, &now()).is_err(),
                "cert {which} flip at {pos}"
            );
        }
    }
}

#[test]
fn wrong_algorithm_is_rejected() {
    let c = chain();
    let body = payload(&c.leaf, &[&c.root, &c.host]).to_cbor().unwrap();
    // ES256 (-7) named in the protected header, signed correctly otherwise.
    let doc = sign_with_protected(&[0xa1, 0x01, 0x26], &body, &c.leaf);
    assert!(matches!(
        c.verifier.verify(&doc, &now()),
        Err(VerifyError::UnsupportedAlgorithm(_))
    ));
    // No algorithm at all.
    let doc = sign_with_protected(&[0xa0], &body, &c.leaf);
    assert!(matches!(
        c.verifier.verify(&doc, &now()),
        Err(VerifyError::UnsupportedAlgorithm(_))
    ));
    assert_eq!(
        VerifyError::UnsupportedAlgorithm(String::new()).code(),
        "E213"
    );
}

#[test]
fn missing_certificate_is_rejected() {
    let c = chain();
    let body = payload(&c.leaf, &[&c.root, &c.host]);
    let wire = body.to_cbor().unwrap();
    // Re-encode the map without the "certificate" entry by decoding to a generic value.
    let value: ciborium::value::Value = ciborium::de::from_reader(wire.as_slice()).unwrap();
    let ciborium::value::Value::Map(entries) = value else {
        panic!()
    };
    let kept: Vec<_> = entries
        .into_iter()
        .filter(|(k, _)| k.as_text() != Some("certificate"))
        .collect();
    let mut bytes = Vec::new();
    ciborium::ser::into_writer(&ciborium::value::Value::Map(kept), &mut bytes).unwrap();
    let doc = sign_bytes(&bytes, &c.leaf);
    assert!(matches!(
        c.verifier.verify(&doc, &now()),
        Err(VerifyError::PayloadMalformed(ref m)) if m.contains("certificate")
    ));
}

/// A change to a payload.
type Mutation = Box<dyn Fn(&mut cloister_nsm_api::AttestationDoc)>;

#[test]
fn syntax_violations_are_rejected() {
    let c = chain();
    let base = payload(&c.leaf, &[&c.root, &c.host]);
    let cases: Vec<(Mutation, SyntaxError)> = vec![
        (Box::new(|d| d.cabundle.clear()), SyntaxError::EmptyCabundle),
        (
            Box::new(|d| d.user_data = Some(ByteBuf::from(vec![1; MAX_USER_DATA_LEN + 1]))),
            SyntaxError::UserData(MAX_USER_DATA_LEN + 1),
        ),
        (
            Box::new(|d| d.nonce = Some(ByteBuf::from(vec![1; MAX_NONCE_LEN + 1]))),
            SyntaxError::Nonce(MAX_NONCE_LEN + 1),
        ),
        (
            Box::new(|d| d.public_key = Some(ByteBuf::from(vec![1; MAX_PUBLIC_KEY_LEN + 1]))),
            SyntaxError::PublicKey(MAX_PUBLIC_KEY_LEN + 1),
        ),
        (
            Box::new(|d| {
                d.pcrs.insert(32, ByteBuf::from(vec![0; 48]));
            }),
            SyntaxError::PcrIndex(32),
        ),
        (
            Box::new(|d| {
                d.pcrs.insert(5, ByteBuf::from(vec![0; 20]));
            }),
            SyntaxError::PcrLength { index: 5, len: 20 },
        ),
        (
            Box::new(|d| d.digest = cloister_nsm_api::Digest::SHA512),
            SyntaxError::Digest(cloister_nsm_api::Digest::SHA512),
        ),
        (
            Box::new(|d| d.cabundle.push(ByteBuf::from(vec![0x30; 1025]))),
            SyntaxError::CabundleEntry {
                index: 2,
                len: 1025,
            },
        ),
    ];
    for (modify, expected) in cases {
        let mut p = base.clone();
        modify(&mut p);
        let doc = sign(&p, &c.leaf);
        assert_eq!(
            c.verifier.verify(&doc, &now()),
            Err(VerifyError::PayloadSyntax(expected))
        );
    }
}

#[test]
fn non_ca_intermediate_is_rejected() {
    let root = root();
    let not_ca = issued(
        params(
            dn("Test", "Not A CA"),
            IsCa::ExplicitNoCa,
            vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::DigitalSignature,
            ],
        ),
        &root,
    );
    let leaf = leaf(&not_ca);
    let v = Verifier::new(vec![root.der.clone()]).unwrap();
    let doc = sign(&payload(&leaf, &[&root, &not_ca]), &leaf);
    assert!(matches!(
        v.verify(&doc, &now()),
        Err(VerifyError::NotACa(ref s)) if s.contains("Not A CA")
    ));
}

#[test]
fn ca_without_key_cert_sign_is_rejected() {
    let root = root();
    let host = issued(
        params(
            dn("Test", "No keyCertSign"),
            IsCa::Ca(BasicConstraints::Constrained(0)),
            vec![KeyUsagePurpose::DigitalSignature],
        ),
        &root,
    );
    let leaf = leaf(&host);
    let v = Verifier::new(vec![root.der.clone()]).unwrap();
    let doc = sign(&payload(&leaf, &[&root, &host]), &leaf);
    assert!(matches!(
        v.verify(&doc, &now()),
        Err(VerifyError::KeyUsage {
            missing: "keyCertSign",
            ..
        })
    ));
}

#[test]
fn leaf_must_not_be_a_ca_and_must_sign() {
    let c = chain();
    let ca_leaf = issued(
        params(
            dn("Test", "CA leaf"),
            IsCa::Ca(BasicConstraints::Unconstrained),
            vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyCertSign,
            ],
        ),
        &c.host,
    );
    let doc = sign(&payload(&ca_leaf, &[&c.root, &c.host]), &ca_leaf);
    assert!(matches!(
        c.verifier.verify(&doc, &now()),
        Err(VerifyError::LeafIsCa(_))
    ));
    let no_sign = issued(
        params(
            dn("Test", "encipher only"),
            IsCa::ExplicitNoCa,
            vec![KeyUsagePurpose::KeyEncipherment],
        ),
        &c.host,
    );
    let doc = sign(&payload(&no_sign, &[&c.root, &c.host]), &no_sign);
    assert!(matches!(
        c.verifier.verify(&doc, &now()),
        Err(VerifyError::KeyUsage {
            missing: "digitalSignature",
            ..
        })
    ));
}

#[test]
fn path_length_is_enforced() {
    let root = self_signed(params(
        dn("Test", "Root pathLen 0"),
        IsCa::Ca(BasicConstraints::Constrained(0)),
        ca_usages(),
    ));
    let host = intermediate(&root);
    let leaf = leaf(&host);
    let v = Verifier::new(vec![root.der.clone()]).unwrap();
    let doc = sign(&payload(&leaf, &[&root, &host]), &leaf);
    assert!(matches!(
        v.verify(&doc, &now()),
        Err(VerifyError::PathLenExceeded(ref s)) if s.contains("Root pathLen 0")
    ));
}

#[test]
fn leaf_signed_by_the_wrong_key_is_rejected() {
    let c = chain();
    // Same issuer name as the host CA, different key.
    let impostor = TestCert {
        params: c.host.params.clone(),
        key: new_key(),
        der: Vec::new(),
    };
    let forged = leaf(&impostor);
    let doc = sign(&payload(&forged, &[&c.root, &c.host]), &forged);
    assert!(matches!(
        c.verifier.verify(&doc, &now()),
        Err(VerifyError::ChainSignature(ref s)) if s.contains("enclave")
    ));
}

#[test]
fn issuer_name_mismatch_is_rejected() {
    let c = chain();
    // Signed by the host CA's key but naming another issuer.
    let renamed = TestCert {
        params: params(
            dn("Test", "Someone Else"),
            IsCa::Ca(BasicConstraints::Constrained(0)),
            ca_usages(),
        ),
        key: KeyPairClone::clone(&c.host.key),
        der: Vec::new(),
    };
    let l = leaf(&renamed);
    let doc = sign(&payload(&l, &[&c.root, &c.host]), &l);
    assert!(matches!(
        c.verifier.verify(&doc, &now()),
        Err(VerifyError::IssuerMismatch(_))
    ));
}

/// Copies an rcgen key pair through its PKCS#8 encoding.
trait KeyPairClone {
    fn clone(&self) -> Self;
}
impl KeyPairClone for rcgen::KeyPair {
    fn clone(&self) -> Self {
        rcgen::KeyPair::try_from(self.serialize_der().as_slice()).unwrap()
    }
}

#[test]
fn look_alike_root_is_rejected() {
    let c = chain();
    // Same subject as the trusted root, different key.
    let fake_root = self_signed(c.root.params.clone());
    assert_ne!(fake_root.der, c.root.der);
    let fake_host = intermediate(&fake_root);
    let fake_leaf = leaf(&fake_host);
    // The look-alike in the cabundle: not pinned.
    let doc = sign(&payload(&fake_leaf, &[&fake_root, &fake_host]), &fake_leaf);
    assert!(matches!(
        c.verifier.verify(&doc, &now()),
        Err(VerifyError::UntrustedRoot(_))
    ));
    // The real root in the cabundle, but the host CA signed by the look-alike's key.
    let doc = sign(&payload(&fake_leaf, &[&c.root, &fake_host]), &fake_leaf);
    assert!(matches!(
        c.verifier.verify(&doc, &now()),
        Err(VerifyError::ChainSignature(ref s)) if s.contains("Test Host CA")
    ));
    // A verifier cannot be built from a broken anchor.
    assert!(matches!(
        Verifier::new(vec![c.leaf.der.clone()]),
        Err(VerifyError::InvalidTrustAnchor { .. })
    ));
    assert!(Verifier::new(vec![]).is_err());
}

#[test]
fn document_signed_by_another_key_is_rejected() {
    let c = chain();
    let other = leaf(&c.host);
    let doc = sign(&payload(&c.leaf, &[&c.root, &c.host]), &other);
    assert_eq!(
        c.verifier.verify(&doc, &now()),
        Err(VerifyError::DocumentSignature)
    );
}

#[test]
fn nonce_checks() {
    let c = chain();
    let mut p = payload(&c.leaf, &[&c.root, &c.host]);
    let no_nonce = sign(&p, &c.leaf);
    assert_eq!(
        c.verifier
            .verify(&no_nonce, &now().with_nonce(b"abc".to_vec())),
        Err(VerifyError::NonceMissing)
    );
    p.nonce = Some(ByteBuf::from(b"abd".to_vec()));
    let doc = sign(&p, &c.leaf);
    assert_eq!(
        c.verifier.verify(&doc, &now().with_nonce(b"abc".to_vec())),
        Err(VerifyError::NonceMismatch)
    );
    c.verifier
        .verify(&doc, &now().with_nonce(b"abd".to_vec()))
        .unwrap();
}

#[test]
fn freshness_checks() {
    let c = chain();
    let mut p = payload(&c.leaf, &[&c.root, &c.host]);
    p.timestamp = now_ms() - 10 * 60 * 1000;
    let stale = sign(&p, &c.leaf);
    assert!(matches!(
        c.verifier
            .verify(&stale, &now().with_max_age(Duration::from_secs(300))),
        Err(VerifyError::Stale { .. })
    ));
    c.verifier
        .verify(&stale, &now().with_max_age(Duration::from_secs(900)))
        .unwrap();
    p.timestamp = now_ms() + 10 * 60 * 1000;
    let future = sign(&p, &c.leaf);
    assert!(matches!(
        c.verifier.verify(&future, &now()),
        Err(VerifyError::TimestampInFuture { .. })
    ));
    p.timestamp = now_ms() + 60 * 1000;
    let skewed = sign(&p, &c.leaf);
    c.verifier.verify(&skewed, &now()).unwrap();
}

#[test]
fn expected_pcr_checks() {
    let c = chain();
    let p = payload(&c.leaf, &[&c.root, &c.host]);
    let doc = sign(&p, &c.leaf);
    c.verifier
        .verify(
            &doc,
            &now().with_pcr(0, vec![1; 48]).with_pcr(4, vec![5; 48]),
        )
        .unwrap();
    assert_eq!(
        c.verifier.verify(&doc, &now().with_pcr(0, vec![2; 48])),
        Err(VerifyError::PcrMismatch(0))
    );
    assert_eq!(
        c.verifier.verify(&doc, &now().with_pcr(20, vec![0; 48])),
        Err(VerifyError::PcrMissing(20))
    );
    assert!(matches!(
        c.verifier.verify(&doc, &now().with_pcr(32, vec![0; 48])),
        Err(VerifyError::InvalidOptions(_))
    ));
}

#[test]
fn garbage_and_oversize_documents_are_rejected() {
    let v = aws();
    assert!(matches!(
        v.verify(&[], &now()),
        Err(VerifyError::CoseMalformed(_))
    ));
    assert!(matches!(
        v.verify(&vec![0x84; 20_000], &now()),
        Err(VerifyError::DocumentTooLarge(20_000))
    ));
    assert!(matches!(
        v.verify(&AWS_DOC[..AWS_DOC.len() - 1], &now()),
        Err(VerifyError::CoseMalformed(_))
    ));
}

#[test]
fn error_codes_are_unique_and_listed() {
    let mut seen = HashSet::new();
    for (code, summary) in VERIFY_ERROR_CODES {
        assert!(seen.insert(*code), "duplicate {code}");
        assert!(code.starts_with("E2") && code.len() == 4 && !summary.is_empty());
    }
    let samples = [
        VerifyError::DocumentTooLarge(0),
        VerifyError::CoseMalformed(String::new()),
        VerifyError::TrailingBytes(0),
        VerifyError::PayloadMalformed(String::new()),
        VerifyError::PayloadSyntax(SyntaxError::EmptyCabundle),
        VerifyError::UntrustedRoot(String::new()),
        VerifyError::LeafKeyType,
        VerifyError::DocumentSignature,
        VerifyError::NonceMissing,
        VerifyError::NonceMismatch,
        VerifyError::PcrMissing(0),
        VerifyError::PcrMismatch(0),
        VerifyError::DebugDocument(0),
    ];
    let mut codes = HashSet::new();
    for e in samples {
        assert!(seen.contains(e.code()));
        assert!(codes.insert(e.code()));
    }
}
