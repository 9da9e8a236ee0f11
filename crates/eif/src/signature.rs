//! The signature section: a CBOR array of `{signing_certificate, signature}` entries, where both
//! fields are arrays of unsigned integers (one per byte, not byte strings), the certificate is PEM
//! text and the signature is an untagged COSE_Sign1 over the CBOR payload
//! `{register_index: 0, register_value: [48 uints]}` (PCR0). Only the first entry is checked.
//!
//! [`EifSigner`] produces such a section from an ECDSA key and its certificate (the key in a PEM
//! file, or held by an [`ExternalSigner`] such as a KMS key);
//! [`EifSignature::parse`] reads one and [`EifSignature::verify`] checks it against the image's
//! PCR0, returning a [`VerifiedSignature`] that only a successful check can construct.

pub use crate::algorithm::CoseAlgorithm;
use crate::error::{EifError, Result};
use crate::external::{self, ExternalSigner};
use crate::format::MAX_SIGNATURE_SIZE;
use crate::measure::{pcr_hex, pcr_of, Pcr, PCR_LEN};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, UnparsedPublicKey};
use ciborium::value::Value;
use der::asn1::ObjectIdentifier;
use der::oid::db::{rfc3280, rfc4519, rfc5912, rfc8410};
use der::{Decode, Tag, Tagged};
use serde::Serialize;
use std::collections::BTreeMap;
use zeroize::Zeroizing;

/// Largest PEM file (certificate or key) accepted.
pub const MAX_PEM_SIZE: u64 = 64 * 1024;

/// Finds the first `-----BEGIN <label>-----` block in `input` and decodes it.
fn pem_block(input: &[u8], labels: &[&str]) -> Option<(String, Zeroizing<Vec<u8>>)> {
    let text = std::str::from_utf8(input).ok()?;
    for label in labels {
        let begin = format!("-----BEGIN {label}-----");
        let end = format!("-----END {label}-----");
        let Some(start) = text.find(&begin) else {
            continue;
        };
        let rest = &text[start..];
        let stop = rest.find(&end)? + end.len();
        let block = &rest[..stop];
        let (found, der) = der::pem::decode_vec(block.as_bytes()).ok()?;
        return Some((found.to_string(), Zeroizing::new(der)));
    }
    None
}

fn cert_err(reason: impl Into<String>) -> EifError {
    EifError::InvalidCertificate {
        reason: reason.into(),
    }
}

/// A parsed X.509 signing certificate, as PEM (what the image stores) and DER (what PCR8
/// measures).
#[derive(Clone)]
pub struct SigningCertificate {
    pem: Vec<u8>,
    der: Vec<u8>,
    cert: x509_cert::Certificate,
}

impl std::fmt::Debug for SigningCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningCertificate")
            .field("issuer", &self.info().issuer_name)
            .finish_non_exhaustive()
    }
}

impl SigningCertificate {
    /// Parses a PEM certificate (the first `CERTIFICATE` block).
    pub fn from_pem(pem: &[u8]) -> Result<Self> {
        if pem.len() as u64 > MAX_PEM_SIZE {
            return Err(cert_err(format!("PEM is larger than {MAX_PEM_SIZE} bytes")));
        }
        let (_, der) =
            pem_block(pem, &["CERTIFICATE"]).ok_or_else(|| cert_err("no PEM CERTIFICATE block"))?;
        let cert = x509_cert::Certificate::from_der(&der)
            .map_err(|e| cert_err(format!("bad DER: {e}")))?;
        Ok(Self {
            pem: pem.to_vec(),
            der: der.to_vec(),
            cert,
        })
    }

    /// The PEM text.
    pub fn pem(&self) -> &[u8] {
        &self.pem
    }

    /// The DER encoding.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// PCR8: the measurement of the DER certificate.
    pub fn pcr8(&self) -> Pcr {
        pcr_of(&self.der)
    }

    /// The certificate's EC public key: its COSE algorithm (by curve) and uncompressed point.
    pub fn public_key(&self) -> Result<(CoseAlgorithm, &[u8])> {
        ec_public_key(&self.cert.tbs_certificate.subject_public_key_info)
    }

    /// What `describe-eif` shows about the certificate.
    pub fn info(&self) -> CertificateInfo {
        let tbs = &self.cert.tbs_certificate;
        let mut issuer_name = BTreeMap::new();
        for rdn in tbs.issuer.0.iter() {
            for atv in rdn.0.iter() {
                let key =
                    attribute_name(&atv.oid).map_or_else(|| atv.oid.to_string(), str::to_string);
                issuer_name.insert(key, attribute_value(&atv.value));
            }
        }
        let alg_oid = &self.cert.signature_algorithm.oid;
        let algorithm = algorithm_name(alg_oid).map_or_else(|| alg_oid.to_string(), str::to_string);
        let signature = self
            .cert
            .signature
            .raw_bytes()
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":");
        let v = &tbs.validity;
        CertificateInfo {
            issuer_name,
            algorithm,
            not_before: openssl_time(v.not_before.to_date_time()),
            not_after: openssl_time(v.not_after.to_date_time()),
            signature,
            not_before_unix: v.not_before.to_unix_duration().as_secs(),
            not_after_unix: v.not_after.to_unix_duration().as_secs(),
        }
    }
}

/// An EC SubjectPublicKeyInfo's COSE algorithm (by curve) and point.
fn ec_public_key(
    spki: &x509_cert::spki::SubjectPublicKeyInfoOwned,
) -> Result<(CoseAlgorithm, &[u8])> {
    if spki.algorithm.oid != rfc5912::ID_EC_PUBLIC_KEY {
        return Err(EifError::UnsupportedAlgorithm {
            what: format!("public key type {} (need an EC key)", spki.algorithm.oid),
        });
    }
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.decode_as::<der::asn1::ObjectIdentifier>().ok())
        .ok_or_else(|| cert_err("EC public key without a named curve"))?;
    let alg = CoseAlgorithm::from_curve_oid(&curve.to_string()).ok_or_else(|| {
        EifError::UnsupportedAlgorithm {
            what: format!("EC curve {curve}"),
        }
    })?;
    let point = spki
        .subject_public_key
        .as_bytes()
        .ok_or_else(|| cert_err("public key bit string has unused bits"))?;
    Ok((alg, point))
}

/// OpenSSL's long names for the name attributes certificates usually carry.
fn attribute_name(oid: &ObjectIdentifier) -> Option<&'static str> {
    Some(match *oid {
        rfc4519::CN => "commonName",
        rfc4519::SN => "surname",
        rfc4519::SERIAL_NUMBER => "serialNumber",
        rfc4519::C => "countryName",
        rfc4519::L => "localityName",
        rfc4519::ST => "stateOrProvinceName",
        rfc4519::STREET => "streetAddress",
        rfc4519::O => "organizationName",
        rfc4519::OU => "organizationalUnitName",
        rfc4519::TITLE => "title",
        rfc4519::GIVEN_NAME => "givenName",
        rfc4519::DC => "domainComponent",
        rfc3280::EMAIL_ADDRESS => "emailAddress",
        _ => return None,
    })
}

/// OpenSSL's names for signature algorithms.
fn algorithm_name(oid: &ObjectIdentifier) -> Option<&'static str> {
    Some(match *oid {
        rfc5912::ECDSA_WITH_SHA_256 => "ecdsa-with-SHA256",
        rfc5912::ECDSA_WITH_SHA_384 => "ecdsa-with-SHA384",
        rfc5912::ECDSA_WITH_SHA_512 => "ecdsa-with-SHA512",
        rfc5912::SHA_256_WITH_RSA_ENCRYPTION => "sha256WithRSAEncryption",
        rfc5912::SHA_384_WITH_RSA_ENCRYPTION => "sha384WithRSAEncryption",
        rfc5912::SHA_512_WITH_RSA_ENCRYPTION => "sha512WithRSAEncryption",
        rfc5912::ID_RSASSA_PSS => "rsassaPss",
        rfc8410::ID_ED_25519 => "ED25519",
        _ => return None,
    })
}

fn attribute_value(any: &der::Any) -> String {
    match any.tag() {
        Tag::Utf8String
        | Tag::PrintableString
        | Tag::Ia5String
        | Tag::TeletexString
        | Tag::VisibleString => String::from_utf8_lossy(any.value()).into_owned(),
        _ => hex::encode(any.value()),
    }
}

/// OpenSSL's `ASN1_TIME_print` format: `Nov 21 09:16:35 2026 GMT`.
fn openssl_time(t: der::DateTime) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS
        .get(usize::from(t.month()).saturating_sub(1))
        .copied()
        .unwrap_or("???");
    format!(
        "{month} {:>2} {:02}:{:02}:{:02} {} GMT",
        t.day(),
        t.hour(),
        t.minutes(),
        t.seconds(),
        t.year()
    )
}

/// The signing certificate as `describe-eif` reports it (nitro-cli's field names).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CertificateInfo {
    /// Issuer attributes by OpenSSL long name.
    #[serde(rename = "IssuerName")]
    pub issuer_name: BTreeMap<String, String>,
    /// Signature algorithm of the certificate.
    #[serde(rename = "Algorithm")]
    pub algorithm: String,
    /// Start of validity, OpenSSL style.
    #[serde(rename = "NotBefore")]
    pub not_before: String,
    /// End of validity, OpenSSL style.
    #[serde(rename = "NotAfter")]
    pub not_after: String,
    /// The certificate's signature, `XX:XX:...`.
    #[serde(rename = "Signature")]
    pub signature: String,
    /// Start of validity, Unix seconds.
    #[serde(skip)]
    pub not_before_unix: u64,
    /// End of validity, Unix seconds.
    #[serde(skip)]
    pub not_after_unix: u64,
}

impl CertificateInfo {
    /// True when `unix_secs` lies in the validity period.
    pub fn is_valid_at(&self, unix_secs: u64) -> bool {
        (self.not_before_unix..=self.not_after_unix).contains(&unix_secs)
    }
}

#[derive(Serialize)]
struct PcrInfo<'a> {
    register_index: i32,
    register_value: &'a [u8],
}

#[derive(Serialize)]
struct PcrSignatureEntry<'a> {
    signing_certificate: &'a [u8],
    signature: &'a [u8],
}

fn cbor(value: &impl Serialize) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    ciborium::into_writer(value, &mut out).map_err(|_| EifError::Crypto {
        what: "CBOR encoding",
    })?;
    Ok(out)
}

/// The payload AWS signs: `{register_index: 0, register_value: [PCR0 bytes as uints]}`.
fn pcr0_payload(pcr0: &Pcr) -> Result<Vec<u8>> {
    cbor(&PcrInfo {
        register_index: 0,
        register_value: pcr0,
    })
}

/// COSE `Sig_structure` for a COSE_Sign1 without external data.
fn sig_structure(protected: &[u8], payload: &[u8]) -> Result<Vec<u8>> {
    cbor(&Value::Array(vec![
        Value::Text("Signature1".into()),
        Value::Bytes(protected.to_vec()),
        Value::Bytes(Vec::new()),
        Value::Bytes(payload.to_vec()),
    ]))
}

/// Signs images: an ECDSA private key and its certificate. The key never appears in `Debug`.
pub struct EifSigner {
    certificate: SigningCertificate,
    algorithm: CoseAlgorithm,
    key: SigningKey,
}

/// Where the private key is: in this process, or behind an [`ExternalSigner`].
enum SigningKey {
    Local(EcdsaKeyPair),
    External(Box<dyn ExternalSigner>),
}

impl std::fmt::Debug for EifSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let key = match &self.key {
            SigningKey::Local(_) => "<redacted>".to_string(),
            SigningKey::External(s) => s.name(),
        };
        f.debug_struct("EifSigner")
            .field("algorithm", &self.algorithm)
            .field("certificate", &self.certificate)
            .field("key", &key)
            .finish()
    }
}

impl EifSigner {
    /// From a PEM certificate and a PEM private key (`EC PRIVATE KEY` or PKCS#8 `PRIVATE KEY`)
    /// that must belong to it.
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Self> {
        let certificate = SigningCertificate::from_pem(cert_pem)?;
        let (algorithm, point) = certificate.public_key()?;
        if key_pem.len() as u64 > MAX_PEM_SIZE {
            return Err(EifError::InvalidPrivateKey {
                reason: "PEM file is too large",
            });
        }
        let (_, der) = pem_block(key_pem, &["EC PRIVATE KEY", "PRIVATE KEY"]).ok_or(
            EifError::InvalidPrivateKey {
                reason: "no PEM EC PRIVATE KEY or PRIVATE KEY block",
            },
        )?;
        let key = EcdsaKeyPair::from_private_key_der(algorithm.signing(), &der).map_err(|_| {
            EifError::InvalidPrivateKey {
                reason: "not an EC private key on the certificate's curve",
            }
        })?;
        if key.public_key().as_ref() != point {
            return Err(EifError::KeyCertificateMismatch);
        }
        Ok(Self {
            certificate,
            algorithm,
            key: SigningKey::Local(key),
        })
    }

    /// From a PEM certificate and a signer that holds the private key elsewhere. The signer's
    /// public key must be the certificate's ([`EifError::ExternalKeyMismatch`] otherwise); it is
    /// asked once, here.
    pub fn external(cert_pem: &[u8], signer: Box<dyn ExternalSigner>) -> Result<Self> {
        let certificate = SigningCertificate::from_pem(cert_pem)?;
        let (algorithm, point) = certificate.public_key()?;
        let spki_der = signer
            .public_key_spki()
            .map_err(|e| external::signer_error(&*signer, e))?;
        let spki =
            x509_cert::spki::SubjectPublicKeyInfoOwned::from_der(&spki_der).map_err(|e| {
                external::signer_error(
                    &*signer,
                    format!("its public key is not a DER SubjectPublicKeyInfo: {e}").into(),
                )
            })?;
        match ec_public_key(&spki) {
            Ok((alg, p)) if alg == algorithm && p == point => {}
            _ => {
                return Err(EifError::ExternalKeyMismatch {
                    signer: signer.name(),
                })
            }
        }
        Ok(Self {
            certificate,
            algorithm,
            key: SigningKey::External(signer),
        })
    }

    /// Reads the certificate and key from files (each capped at [`MAX_PEM_SIZE`]).
    pub fn from_files(cert: &std::path::Path, key: &std::path::Path) -> Result<Self> {
        let cert_pem =
            crate::read_capped(cert, MAX_PEM_SIZE, "cannot read the signing certificate")?;
        let key_pem = Zeroizing::new(crate::read_capped(
            key,
            MAX_PEM_SIZE,
            "cannot read the private key",
        )?);
        Self::from_pem(&cert_pem, &key_pem)
    }

    /// The signing certificate.
    pub fn certificate(&self) -> &SigningCertificate {
        &self.certificate
    }

    /// The COSE algorithm used.
    pub fn algorithm(&self) -> CoseAlgorithm {
        self.algorithm
    }

    /// A COSE_Sign1 (untagged) over the PCR0 payload.
    pub fn sign_pcr0(&self, pcr0: &Pcr) -> Result<Vec<u8>> {
        let protected = cbor(&Value::Map(vec![(
            Value::Integer(1.into()),
            Value::Integer(self.algorithm.id().into()),
        )]))?;
        let payload = pcr0_payload(pcr0)?;
        let tbs = sig_structure(&protected, &payload)?;
        let signature = match &self.key {
            SigningKey::Local(key) => key
                .sign(&SystemRandom::new(), &tbs)
                .map_err(|_| EifError::Crypto {
                    what: "ECDSA signing",
                })?
                .as_ref()
                .to_vec(),
            SigningKey::External(signer) => {
                let signature = external::sign_message(&**signer, self.algorithm, &tbs)?;
                // A key service could answer with another key's signature: check it before it
                // goes into an image.
                let (_, point) = self.certificate.public_key()?;
                UnparsedPublicKey::new(self.algorithm.verification(), point)
                    .verify(&tbs, &signature)
                    .map_err(|_| {
                        external::signer_error(
                            &**signer,
                            Box::new(external::UnusableSignature(
                                "its signature does not verify with the signing certificate",
                            )),
                        )
                    })?;
                signature
            }
        };
        cbor(&Value::Array(vec![
            Value::Bytes(protected),
            Value::Map(Vec::new()),
            Value::Bytes(payload),
            Value::Bytes(signature),
        ]))
    }

    /// The whole signature section for an image whose PCR0 is `pcr0`.
    pub fn signature_section(&self, pcr0: &Pcr) -> Result<Vec<u8>> {
        let cose = self.sign_pcr0(pcr0)?;
        encode_signature_section(self.certificate.pem(), &cose)
    }
}

/// Encodes a signature section with one entry, as AWS's tools do: both fields as CBOR arrays
/// of unsigned integers. Fails when the result exceeds [`MAX_SIGNATURE_SIZE`].
pub fn encode_signature_section(certificate_pem: &[u8], cose_sign1: &[u8]) -> Result<Vec<u8>> {
    let section = cbor(&[PcrSignatureEntry {
        signing_certificate: certificate_pem,
        signature: cose_sign1,
    }])?;
    if section.len() as u64 > MAX_SIGNATURE_SIZE {
        return Err(EifError::SignatureTooLarge {
            size: section.len() as u64,
            limit: MAX_SIGNATURE_SIZE,
        });
    }
    Ok(section)
}

fn malformed(reason: impl Into<String>) -> EifError {
    EifError::MalformedSignature {
        reason: reason.into(),
    }
}

fn uint_array(v: &Value, what: &str) -> Result<Vec<u8>> {
    let items = v
        .as_array()
        .ok_or_else(|| malformed(format!("{what} is not an array of byte values")))?;
    items
        .iter()
        .map(|i| {
            i.as_integer()
                .and_then(|n| u8::try_from(n).ok())
                .ok_or_else(|| malformed(format!("{what} holds a value that is not a byte")))
        })
        .collect()
}

fn map_get<'a>(map: &'a [(Value, Value)], key: &str) -> Option<&'a Value> {
    map.iter()
        .find(|(k, _)| k.as_text() == Some(key))
        .map(|(_, v)| v)
}

/// A parsed signature section (its first entry).
#[derive(Clone, Debug)]
pub struct EifSignature {
    /// The signing certificate.
    pub certificate: SigningCertificate,
    /// The COSE_Sign1 bytes.
    pub cose_sign1: Vec<u8>,
    /// How many entries the section holds.
    pub entries: usize,
}

/// Proof that an image's signature verified against its PCR0. Only
/// [`EifSignature::verify`] constructs it.
#[derive(Clone, Debug)]
pub struct VerifiedSignature {
    algorithm: CoseAlgorithm,
    pcr0: Pcr,
    pcr8: Pcr,
}

impl VerifiedSignature {
    /// The algorithm of the signature.
    pub fn algorithm(&self) -> CoseAlgorithm {
        self.algorithm
    }

    /// The PCR0 that was signed (equal to the image's).
    pub fn pcr0(&self) -> &Pcr {
        &self.pcr0
    }

    /// PCR8 of the signing certificate.
    pub fn pcr8(&self) -> &Pcr {
        &self.pcr8
    }
}

impl EifSignature {
    /// Parses a signature section. `section` must be at most [`MAX_SIGNATURE_SIZE`] bytes.
    pub fn parse(section: &[u8]) -> Result<Self> {
        if section.len() as u64 > MAX_SIGNATURE_SIZE {
            return Err(EifError::SectionTooLarge {
                kind: "signature",
                size: section.len() as u64,
                limit: MAX_SIGNATURE_SIZE,
            });
        }
        let value: Value =
            ciborium::from_reader(section).map_err(|e| malformed(format!("bad CBOR: {e}")))?;
        let entries = value
            .as_array()
            .ok_or_else(|| malformed("not a CBOR array"))?;
        let first = entries
            .first()
            .ok_or_else(|| malformed("no signature entry"))?
            .as_map()
            .ok_or_else(|| malformed("entry is not a map"))?;
        let cert_pem = uint_array(
            map_get(first, "signing_certificate")
                .ok_or_else(|| malformed("entry has no signing_certificate"))?,
            "signing_certificate",
        )?;
        let cose_sign1 = uint_array(
            map_get(first, "signature").ok_or_else(|| malformed("entry has no signature"))?,
            "signature",
        )?;
        Ok(Self {
            certificate: SigningCertificate::from_pem(&cert_pem)?,
            cose_sign1,
            entries: entries.len(),
        })
    }

    /// Checks the COSE signature with the certificate's key and that it signs `pcr0`.
    pub fn verify(&self, pcr0: &Pcr) -> Result<VerifiedSignature> {
        let (key_alg, point) = self.certificate.public_key()?;
        let value: Value = ciborium::from_reader(self.cose_sign1.as_slice())
            .map_err(|e| malformed(format!("COSE_Sign1 is not CBOR: {e}")))?;
        let value = match value {
            Value::Tag(18, inner) => *inner,
            v => v,
        };
        let parts = value
            .as_array()
            .filter(|a| a.len() == 4)
            .ok_or_else(|| malformed("COSE_Sign1 is not an array of 4"))?;
        let protected = parts[0]
            .as_bytes()
            .ok_or_else(|| malformed("COSE protected header is not a byte string"))?;
        let payload = parts[2]
            .as_bytes()
            .ok_or_else(|| malformed("COSE payload is not a byte string"))?;
        let signature = parts[3]
            .as_bytes()
            .ok_or_else(|| malformed("COSE signature is not a byte string"))?;
        let header: Value = ciborium::from_reader(protected.as_slice())
            .map_err(|e| malformed(format!("COSE protected header is not CBOR: {e}")))?;
        let alg_id = header
            .as_map()
            .and_then(|m| {
                m.iter()
                    .find(|(k, _)| k.as_integer().map(i128::from) == Some(1))
                    .and_then(|(_, v)| v.as_integer())
            })
            .map(i128::from)
            .ok_or_else(|| malformed("COSE protected header has no algorithm"))?;
        let alg = CoseAlgorithm::from_id(alg_id).ok_or_else(|| EifError::UnsupportedAlgorithm {
            what: format!("COSE algorithm {alg_id}"),
        })?;
        if alg != key_alg {
            return Err(EifError::UnsupportedAlgorithm {
                what: format!(
                    "COSE algorithm {} with a certificate key for {}",
                    alg.name(),
                    key_alg.name()
                ),
            });
        }
        let tbs = sig_structure(protected, payload)?;
        UnparsedPublicKey::new(alg.verification(), point)
            .verify(&tbs, signature)
            .map_err(|_| EifError::BadSignature)?;

        let info: Value = ciborium::from_reader(payload.as_slice())
            .map_err(|e| malformed(format!("signed payload is not CBOR: {e}")))?;
        let map = info
            .as_map()
            .ok_or_else(|| malformed("signed payload is not a map"))?;
        let index = map_get(map, "register_index")
            .and_then(Value::as_integer)
            .map(i128::from)
            .ok_or_else(|| malformed("signed payload has no register_index"))?;
        let signed = uint_array(
            map_get(map, "register_value")
                .ok_or_else(|| malformed("signed payload has no register_value"))?,
            "register_value",
        )?;
        if index != 0 || signed.as_slice() != pcr0.as_slice() {
            return Err(EifError::SignaturePcrMismatch {
                signed: if index == 0 {
                    hex::encode(&signed)
                } else {
                    format!("PCR{index}")
                },
                measured: pcr_hex(pcr0),
            });
        }
        if signed.len() != PCR_LEN {
            return Err(malformed("register_value is not 48 bytes"));
        }
        Ok(VerifiedSignature {
            algorithm: alg,
            pcr0: *pcr0,
            pcr8: self.certificate.pcr8(),
        })
    }
}
