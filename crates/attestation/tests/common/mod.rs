//! Test helpers: hand-built certificate chains (including broken ones) and documents signed
//! with keys the test holds, so each verifier check can be exercised on its own.
#![allow(dead_code)]

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{EcdsaKeyPair, ECDSA_P384_SHA384_FIXED_SIGNING};
use cloister_attestation::cose;
use cloister_nsm_api::{AttestationDoc, Digest};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P384_SHA384,
};
use serde_bytes::ByteBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Now, in milliseconds since the epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis()
        .try_into()
        .unwrap()
}

/// A certificate with its key and the parameters it was made from.
pub struct TestCert {
    pub params: CertificateParams,
    pub key: KeyPair,
    pub der: Vec<u8>,
}

pub fn dn(org: &str, cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, org);
    dn.push(DnType::CommonName, cn);
    dn
}

/// Parameters valid from an hour ago for a day.
pub fn params(
    name: DistinguishedName,
    is_ca: IsCa,
    usages: Vec<KeyUsagePurpose>,
) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = name;
    p.is_ca = is_ca;
    p.key_usages = usages;
    p.use_authority_key_identifier_extension = true;
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - Duration::from_secs(3600);
    p.not_after = now + Duration::from_secs(24 * 3600);
    p
}

pub fn ca_usages() -> Vec<KeyUsagePurpose> {
    vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign]
}

pub fn new_key() -> KeyPair {
    KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).unwrap()
}

pub fn self_signed(params: CertificateParams) -> TestCert {
    let key = new_key();
    let der = params.self_signed(&key).unwrap().der().to_vec();
    TestCert { params, key, der }
}

/// `params` for a fresh key, signed by `issuer`.
pub fn issued(params: CertificateParams, issuer: &TestCert) -> TestCert {
    let key = new_key();
    let der = params
        .signed_by(&key, &Issuer::from_params(&issuer.params, &issuer.key))
        .unwrap()
        .der()
        .to_vec();
    TestCert { params, key, der }
}

pub fn root() -> TestCert {
    self_signed(params(
        dn("Test", "Test Root"),
        IsCa::Ca(BasicConstraints::Constrained(1)),
        ca_usages(),
    ))
}

pub fn intermediate(root: &TestCert) -> TestCert {
    issued(
        params(
            dn("Test", "Test Host CA"),
            IsCa::Ca(BasicConstraints::Constrained(0)),
            ca_usages(),
        ),
        root,
    )
}

pub fn leaf(issuer: &TestCert) -> TestCert {
    issued(
        params(
            dn("Test", "enclave"),
            IsCa::ExplicitNoCa,
            vec![KeyUsagePurpose::DigitalSignature],
        ),
        issuer,
    )
}

/// A well-formed payload for `leaf` with `cabundle`.
pub fn payload(leaf: &TestCert, cabundle: &[&TestCert]) -> AttestationDoc {
    AttestationDoc {
        module_id: "test-enclave".into(),
        digest: Digest::SHA384,
        timestamp: now_ms(),
        pcrs: (0..16)
            .map(|i| (i, ByteBuf::from(vec![u8::try_from(i).unwrap() + 1; 48])))
            .collect(),
        certificate: ByteBuf::from(leaf.der.clone()),
        cabundle: cabundle
            .iter()
            .map(|c| ByteBuf::from(c.der.clone()))
            .collect(),
        public_key: None,
        user_data: None,
        nonce: None,
    }
}

/// The aws-lc signing key behind a test certificate.
pub fn cose_key(cert: &TestCert) -> EcdsaKeyPair {
    EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, &cert.key.serialize_der()).unwrap()
}

/// Signs raw payload bytes with `signer`'s key (ES384, standard protected header).
pub fn sign_bytes(payload: &[u8], signer: &TestCert) -> Vec<u8> {
    cose::sign_es384(payload, &cose_key(signer), &SystemRandom::new()).unwrap()
}

/// Signs a payload with `signer`'s key.
pub fn sign(doc: &AttestationDoc, signer: &TestCert) -> Vec<u8> {
    sign_bytes(&doc.to_cbor().unwrap(), signer)
}

/// Signs with an arbitrary protected header.
pub fn sign_with_protected(protected: &[u8], payload: &[u8], signer: &TestCert) -> Vec<u8> {
    let key = cose_key(signer);
    let sig = key
        .sign(
            &SystemRandom::new(),
            &cose::sig_structure(protected, payload),
        )
        .unwrap();
    cose::encode_parts(protected, payload, sig.as_ref())
}
