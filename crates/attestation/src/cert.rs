//! X.509 certificates as the verifier needs them: parsed once from DER into the few facts the
//! chain checks use (names, validity, CA constraints, key usage, public key, signature) plus the
//! raw to-be-signed bytes the issuer's signature covers.

use crate::Isolation;
use aws_lc_rs::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use der::asn1::{ObjectIdentifier, PrintableStringRef, Utf8StringRef};
use der::{Decode, Encode};
use x509_cert::ext::pkix::{BasicConstraints, KeyUsage, KeyUsages};
use x509_cert::Certificate;

use der::oid::db::rfc4519::OU as OID_OU;
use der::oid::db::rfc5280::{
    ID_CE_BASIC_CONSTRAINTS as OID_BASIC_CONSTRAINTS, ID_CE_KEY_USAGE as OID_KEY_USAGE,
};
use der::oid::db::rfc5912::{
    ECDSA_WITH_SHA_256 as OID_ECDSA_SHA256, ECDSA_WITH_SHA_384 as OID_ECDSA_SHA384,
    ID_EC_PUBLIC_KEY as OID_EC_PUBLIC_KEY, SECP_256_R_1 as OID_P256, SECP_384_R_1 as OID_P384,
};

/// Prefix of the subject OU that records an enclave's isolation kind in a Cloister leaf.
pub const ISOLATION_OU_PREFIX: &str = "isolation=";

/// Curve of an EC public key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Curve {
    /// NIST P-256.
    P256,
    /// NIST P-384.
    P384,
}

/// Hash of an ECDSA certificate signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigHash {
    /// ecdsa-with-SHA256.
    Sha256,
    /// ecdsa-with-SHA384.
    Sha384,
}

/// Why a certificate could not be parsed into [`ParsedCert`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    /// Not a DER X.509 certificate.
    #[error("not a DER X.509 certificate: {0}")]
    Der(String),
    /// The signature algorithm is not ECDSA with SHA-256 or SHA-384, or the inner and outer
    /// algorithm identifiers differ.
    #[error("unsupported or inconsistent signature algorithm {0}")]
    SignatureAlgorithm(String),
    /// The public key is not an EC key on P-256 or P-384.
    #[error("unsupported public key: {0}")]
    PublicKey(String),
    /// An extension cannot be decoded or appears twice.
    #[error("bad extension {0}")]
    Extension(String),
    /// A critical extension this verifier does not process.
    #[error("unknown critical extension {0}")]
    UnknownCritical(String),
    /// The isolation OU is malformed or repeated.
    #[error("bad isolation OU: {0}")]
    Isolation(String),
}

/// The facts of one certificate.
#[derive(Debug, Clone)]
pub struct ParsedCert {
    /// The subject, RFC 4514 string.
    pub subject: String,
    /// The subject Name, DER.
    pub subject_der: Vec<u8>,
    /// The issuer Name, DER.
    pub issuer_der: Vec<u8>,
    /// notBefore, seconds since the epoch.
    pub not_before: u64,
    /// notAfter, seconds since the epoch.
    pub not_after: u64,
    /// basicConstraints, if present: (cA, pathLenConstraint).
    pub basic_constraints: Option<(bool, Option<u8>)>,
    /// keyUsage bits, if present: (digitalSignature, keyCertSign).
    pub key_usage: Option<(bool, bool)>,
    /// The public key's curve.
    pub curve: Curve,
    /// The public key point (uncompressed).
    pub public_point: Vec<u8>,
    /// The signature's hash.
    pub sig_hash: SigHash,
    /// The signature (DER ECDSA-Sig-Value).
    pub signature: Vec<u8>,
    /// The to-be-signed bytes, exactly as they appear in the input.
    pub tbs: Vec<u8>,
    /// The isolation kind recorded in the subject OU (Cloister leaves only).
    pub isolation: Option<Isolation>,
}

/// Reads one DER TLV header at the start of `input`; returns (header length, content length).
fn tlv(input: &[u8]) -> Option<(usize, usize)> {
    let first = *input.get(1)?;
    if first < 0x80 {
        return Some((2, usize::from(first)));
    }
    let n = usize::from(first & 0x7f);
    if n == 0 || n > 4 {
        return None;
    }
    let mut len = 0usize;
    for i in 0..n {
        len = (len << 8) | usize::from(*input.get(2 + i)?);
    }
    Some((2 + n, len))
}

/// The raw TBSCertificate element inside a certificate's outer SEQUENCE.
fn raw_tbs(der_bytes: &[u8]) -> Option<&[u8]> {
    let (outer_hdr, _) = tlv(der_bytes)?;
    let inner = der_bytes.get(outer_hdr..)?;
    let (hdr, len) = tlv(inner)?;
    inner.get(..hdr.checked_add(len)?)
}

fn der_err(e: impl std::fmt::Display) -> CertError {
    CertError::Der(e.to_string())
}

impl ParsedCert {
    /// Parses a DER certificate.
    pub fn parse(der_bytes: &[u8]) -> Result<Self, CertError> {
        let cert = Certificate::from_der(der_bytes).map_err(der_err)?;
        let tbs = raw_tbs(der_bytes)
            .ok_or_else(|| CertError::Der("cannot locate TBSCertificate".into()))?
            .to_vec();
        let tbs_cert = &cert.tbs_certificate;

        // Signature algorithm: outer and inner identifiers must agree; ECDSA has no parameters.
        if cert.signature_algorithm != tbs_cert.signature
            || cert.signature_algorithm.parameters.is_some()
        {
            return Err(CertError::SignatureAlgorithm(
                cert.signature_algorithm.oid.to_string(),
            ));
        }
        let sig_hash = match cert.signature_algorithm.oid {
            OID_ECDSA_SHA256 => SigHash::Sha256,
            OID_ECDSA_SHA384 => SigHash::Sha384,
            other => return Err(CertError::SignatureAlgorithm(other.to_string())),
        };
        let signature = cert
            .signature
            .as_bytes()
            .ok_or_else(|| CertError::Der("signature has unused bits".into()))?
            .to_vec();

        // Public key: EC on P-256 or P-384, uncompressed point.
        let spki = &tbs_cert.subject_public_key_info;
        if spki.algorithm.oid != OID_EC_PUBLIC_KEY {
            return Err(CertError::PublicKey(spki.algorithm.oid.to_string()));
        }
        let curve_oid: ObjectIdentifier = spki
            .algorithm
            .parameters
            .as_ref()
            .ok_or_else(|| CertError::PublicKey("missing curve".into()))?
            .decode_as()
            .map_err(|e| CertError::PublicKey(e.to_string()))?;
        let (curve, point_len) = match curve_oid {
            OID_P256 => (Curve::P256, 65),
            OID_P384 => (Curve::P384, 97),
            other => return Err(CertError::PublicKey(format!("curve {other}"))),
        };
        let public_point = spki
            .subject_public_key
            .as_bytes()
            .ok_or_else(|| CertError::PublicKey("key has unused bits".into()))?
            .to_vec();
        if public_point.len() != point_len || public_point.first() != Some(&0x04) {
            return Err(CertError::PublicKey("not an uncompressed point".into()));
        }

        // Extensions.
        let mut basic_constraints = None;
        let mut key_usage = None;
        for ext in tbs_cert.extensions.iter().flatten() {
            match ext.extn_id {
                OID_BASIC_CONSTRAINTS => {
                    if basic_constraints.is_some() {
                        return Err(CertError::Extension("duplicate basicConstraints".into()));
                    }
                    let bc = BasicConstraints::from_der(ext.extn_value.as_bytes())
                        .map_err(|e| CertError::Extension(format!("basicConstraints: {e}")))?;
                    basic_constraints = Some((bc.ca, bc.path_len_constraint));
                }
                OID_KEY_USAGE => {
                    if key_usage.is_some() {
                        return Err(CertError::Extension("duplicate keyUsage".into()));
                    }
                    let ku = KeyUsage::from_der(ext.extn_value.as_bytes())
                        .map_err(|e| CertError::Extension(format!("keyUsage: {e}")))?;
                    key_usage = Some((
                        ku.0.contains(KeyUsages::DigitalSignature),
                        ku.0.contains(KeyUsages::KeyCertSign),
                    ));
                }
                other if ext.critical => {
                    return Err(CertError::UnknownCritical(other.to_string()));
                }
                _ => {}
            }
        }

        let isolation = isolation_of(&tbs_cert.subject)?;
        Ok(Self {
            subject: tbs_cert.subject.to_string(),
            subject_der: tbs_cert.subject.to_der().map_err(der_err)?,
            issuer_der: tbs_cert.issuer.to_der().map_err(der_err)?,
            not_before: tbs_cert.validity.not_before.to_unix_duration().as_secs(),
            not_after: tbs_cert.validity.not_after.to_unix_duration().as_secs(),
            basic_constraints,
            key_usage,
            curve,
            public_point,
            sig_hash,
            signature,
            tbs,
            isolation,
        })
    }

    /// Verifies that `issuer`'s key signed this certificate.
    pub fn verify_signed_by(&self, issuer: &ParsedCert) -> bool {
        let alg: &'static dyn VerificationAlgorithm = match (issuer.curve, self.sig_hash) {
            (Curve::P256, SigHash::Sha256) => &signature::ECDSA_P256_SHA256_ASN1,
            (Curve::P256, SigHash::Sha384) => &signature::ECDSA_P256_SHA384_ASN1,
            (Curve::P384, SigHash::Sha256) => &signature::ECDSA_P384_SHA256_ASN1,
            (Curve::P384, SigHash::Sha384) => &signature::ECDSA_P384_SHA384_ASN1,
        };
        UnparsedPublicKey::new(alg, &issuer.public_point)
            .verify(&self.tbs, &self.signature)
            .is_ok()
    }

    /// True if `at_secs` is within [notBefore, notAfter].
    pub fn valid_at(&self, at_secs: u64) -> bool {
        self.not_before <= at_secs && at_secs <= self.not_after
    }
}

/// Reads the isolation kind from the subject's OU attributes (`isolation=process|vm`).
fn isolation_of(name: &x509_cert::name::Name) -> Result<Option<Isolation>, CertError> {
    let mut found = None;
    for rdn in name.0.iter() {
        for atv in rdn.0.iter() {
            if atv.oid != OID_OU {
                continue;
            }
            let text = if let Ok(s) = Utf8StringRef::try_from(&atv.value) {
                s.as_str().to_string()
            } else if let Ok(s) = PrintableStringRef::try_from(&atv.value) {
                s.as_str().to_string()
            } else {
                continue;
            };
            let Some(kind) = text.strip_prefix(ISOLATION_OU_PREFIX) else {
                continue;
            };
            let kind: Isolation = kind
                .parse()
                .map_err(|_| CertError::Isolation(text.clone()))?;
            if found.is_some() {
                return Err(CertError::Isolation("repeated".into()));
            }
            found = Some(kind);
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tlv_bounds() {
        assert_eq!(tlv(&[0x30]), None);
        assert_eq!(tlv(&[0x30, 0x05]), Some((2, 5)));
        assert_eq!(tlv(&[0x30, 0x82, 0x01, 0x00]), Some((4, 256)));
        assert_eq!(tlv(&[0x30, 0x82, 0x01]), None);
        assert_eq!(tlv(&[0x30, 0x80]), None);
        assert_eq!(raw_tbs(&[0x30, 0x03, 0x30, 0x05, 0x00]), None);
    }

    #[test]
    fn garbage_is_rejected() {
        assert!(ParsedCert::parse(&[]).is_err());
        assert!(ParsedCert::parse(&[0x30, 0x00]).is_err());
        assert!(ParsedCert::parse(&[0xff; 64]).is_err());
    }
}
