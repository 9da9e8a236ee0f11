//! Key specs, key usages and the algorithms of asymmetric and HMAC keys, and their material.
//!
//! The names are AWS's ([`KeySpec`], [`KeyUsage`], [`SigningAlgorithm`], [`MacAlgorithm`],
//! [`RsaEncryptionAlgorithm`]): each enum parses the wire string, prints it back, and says which
//! of its values go with which spec, so DescribeKey, GetPublicKey and the operations' checks all
//! read the same tables.
//!
//! Material: an asymmetric key's private key is stored (sealed, see [`crate::store`]) as PKCS#8
//! DER, an HMAC key's as its raw bytes. [`KeyMaterial::load`] parses it once when the store loads
//! the key, into the aws-lc-rs objects the operations use (an RSA key pair for signing and an
//! OAEP decrypting key; an ECDSA key pair and, for the NIST curves, an ECDH private key; an HMAC
//! key). The private halves never leave this module: only signatures, MACs, shared secrets and
//! OAEP plaintexts do, and the public key as a DER SubjectPublicKeyInfo.

use aws_lc_rs::digest::{self, Digest};
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::{self, KeyPair as _};
use aws_lc_rs::{agreement, hmac, rsa};
use serde::{Deserialize, Serialize};
use std::fmt;
use thiserror::Error;
use zeroize::Zeroizing;

/// Largest Sign/Verify/GenerateMac/VerifyMac message (AWS: 4096 bytes).
pub const MAX_MESSAGE: usize = 4096;
/// Largest Signature parameter of Verify (AWS: 6144 bytes).
pub const MAX_SIGNATURE: usize = 6144;
/// Largest Mac parameter of VerifyMac (AWS: 6144 bytes).
pub const MAX_MAC: usize = 6144;
/// Largest PublicKey parameter of DeriveSharedSecret (AWS: 8192 bytes).
pub const MAX_PUBLIC_KEY: usize = 8192;

/// Errors of the key operations, sorted by who is at fault.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum KeyError {
    /// The algorithm does not belong to this key's spec or usage (the caller's mistake).
    #[error("{0}")]
    IncompatibleAlgorithm(String),
    /// A DIGEST message whose length is not the digest length of the algorithm.
    #[error("Digest is invalid length for algorithm {0}.")]
    DigestLength(&'static str),
    /// The signature does not verify.
    #[error("The signature is not valid.")]
    InvalidSignature,
    /// The MAC does not verify.
    #[error("The MAC is not valid.")]
    InvalidMac,
    /// The RSA ciphertext does not decrypt.
    #[error("The ciphertext is not valid for this key and algorithm.")]
    InvalidCiphertext,
    /// The plaintext is longer than RSAES-OAEP takes with this key and algorithm.
    #[error("Plaintext of {0} bytes is longer than the {1} bytes {2} takes with this key.")]
    PlaintextTooLong(usize, usize, &'static str),
    /// The peer public key of DeriveSharedSecret is not a key on this key's curve.
    #[error("The public key is not a valid DER SubjectPublicKeyInfo on the curve of this key.")]
    InvalidPublicKey,
    /// Stored material does not parse, or the crypto library failed (our fault).
    #[error("{0}")]
    Internal(&'static str),
}

/// A key's spec, as AWS names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum KeySpec {
    /// AES-256-GCM (the default).
    #[default]
    #[serde(rename = "SYMMETRIC_DEFAULT")]
    SymmetricDefault,
    /// RSA, 2048-bit modulus.
    #[serde(rename = "RSA_2048")]
    Rsa2048,
    /// RSA, 3072-bit modulus.
    #[serde(rename = "RSA_3072")]
    Rsa3072,
    /// RSA, 4096-bit modulus.
    #[serde(rename = "RSA_4096")]
    Rsa4096,
    /// ECC on NIST P-256.
    #[serde(rename = "ECC_NIST_P256")]
    EccNistP256,
    /// ECC on NIST P-384.
    #[serde(rename = "ECC_NIST_P384")]
    EccNistP384,
    /// ECC on NIST P-521.
    #[serde(rename = "ECC_NIST_P521")]
    EccNistP521,
    /// ECC on secp256k1.
    #[serde(rename = "ECC_SECG_P256K1")]
    EccSecgP256k1,
    /// HMAC with a 224-bit key.
    #[serde(rename = "HMAC_224")]
    Hmac224,
    /// HMAC with a 256-bit key.
    #[serde(rename = "HMAC_256")]
    Hmac256,
    /// HMAC with a 384-bit key.
    #[serde(rename = "HMAC_384")]
    Hmac384,
    /// HMAC with a 512-bit key.
    #[serde(rename = "HMAC_512")]
    Hmac512,
}

/// Every key spec, in AWS's order.
pub const KEY_SPECS: [KeySpec; 12] = [
    KeySpec::SymmetricDefault,
    KeySpec::Rsa2048,
    KeySpec::Rsa3072,
    KeySpec::Rsa4096,
    KeySpec::EccNistP256,
    KeySpec::EccNistP384,
    KeySpec::EccNistP521,
    KeySpec::EccSecgP256k1,
    KeySpec::Hmac224,
    KeySpec::Hmac256,
    KeySpec::Hmac384,
    KeySpec::Hmac512,
];

impl KeySpec {
    /// The AWS name.
    pub fn as_str(self) -> &'static str {
        match self {
            KeySpec::SymmetricDefault => "SYMMETRIC_DEFAULT",
            KeySpec::Rsa2048 => "RSA_2048",
            KeySpec::Rsa3072 => "RSA_3072",
            KeySpec::Rsa4096 => "RSA_4096",
            KeySpec::EccNistP256 => "ECC_NIST_P256",
            KeySpec::EccNistP384 => "ECC_NIST_P384",
            KeySpec::EccNistP521 => "ECC_NIST_P521",
            KeySpec::EccSecgP256k1 => "ECC_SECG_P256K1",
            KeySpec::Hmac224 => "HMAC_224",
            KeySpec::Hmac256 => "HMAC_256",
            KeySpec::Hmac384 => "HMAC_384",
            KeySpec::Hmac512 => "HMAC_512",
        }
    }

    /// Parses an AWS name.
    pub fn parse(s: &str) -> Option<Self> {
        KEY_SPECS.into_iter().find(|k| k.as_str() == s)
    }

    /// True for the default AES key (which stores no spec, for stores made before specs).
    pub fn is_symmetric(&self) -> bool {
        *self == KeySpec::SymmetricDefault
    }

    /// True for the RSA specs.
    pub fn is_rsa(self) -> bool {
        matches!(self, KeySpec::Rsa2048 | KeySpec::Rsa3072 | KeySpec::Rsa4096)
    }

    /// True for the HMAC specs.
    pub fn is_hmac(self) -> bool {
        matches!(
            self,
            KeySpec::Hmac224 | KeySpec::Hmac256 | KeySpec::Hmac384 | KeySpec::Hmac512
        )
    }

    /// The usages a key of this spec may be created with; the first is the default.
    pub fn usages(self) -> &'static [KeyUsage] {
        match self {
            KeySpec::SymmetricDefault => &[KeyUsage::EncryptDecrypt],
            KeySpec::Rsa2048 | KeySpec::Rsa3072 | KeySpec::Rsa4096 => {
                &[KeyUsage::EncryptDecrypt, KeyUsage::SignVerify]
            }
            KeySpec::EccNistP256 | KeySpec::EccNistP384 | KeySpec::EccNistP521 => {
                &[KeyUsage::SignVerify, KeyUsage::KeyAgreement]
            }
            KeySpec::EccSecgP256k1 => &[KeyUsage::SignVerify],
            KeySpec::Hmac224 | KeySpec::Hmac256 | KeySpec::Hmac384 | KeySpec::Hmac512 => {
                &[KeyUsage::GenerateVerifyMac]
            }
        }
    }

    /// The signing algorithms of a SIGN_VERIFY key of this spec.
    pub fn signing_algorithms(self) -> &'static [SigningAlgorithm] {
        use SigningAlgorithm::*;
        match self {
            KeySpec::Rsa2048 | KeySpec::Rsa3072 | KeySpec::Rsa4096 => &[
                RsassaPssSha256,
                RsassaPssSha384,
                RsassaPssSha512,
                RsassaPkcs1V15Sha256,
                RsassaPkcs1V15Sha384,
                RsassaPkcs1V15Sha512,
            ],
            KeySpec::EccNistP256 | KeySpec::EccSecgP256k1 => &[EcdsaSha256],
            KeySpec::EccNistP384 => &[EcdsaSha384],
            KeySpec::EccNistP521 => &[EcdsaSha512],
            _ => &[],
        }
    }

    /// The MAC algorithm of an HMAC key of this spec.
    pub fn mac_algorithm(self) -> Option<MacAlgorithm> {
        match self {
            KeySpec::Hmac224 => Some(MacAlgorithm::HmacSha224),
            KeySpec::Hmac256 => Some(MacAlgorithm::HmacSha256),
            KeySpec::Hmac384 => Some(MacAlgorithm::HmacSha384),
            KeySpec::Hmac512 => Some(MacAlgorithm::HmacSha512),
            _ => None,
        }
    }

    /// Length of the material [`generate_material`] makes for an HMAC spec.
    fn hmac_key_len(self) -> Option<usize> {
        self.mac_algorithm().map(|m| m.output_len())
    }

    /// The lengths of HMAC key material this spec accepts (AWS's limits for imported material:
    /// at least the digest length, at most the hash's block length); `None` for other specs.
    pub fn hmac_material_lengths(self) -> Option<std::ops::RangeInclusive<usize>> {
        match self {
            KeySpec::Hmac224 => Some(28..=64),
            KeySpec::Hmac256 => Some(32..=64),
            KeySpec::Hmac384 => Some(48..=128),
            KeySpec::Hmac512 => Some(64..=128),
            _ => None,
        }
    }

    /// The key-metadata fields that depend on spec and usage, as AWS shows them in DescribeKey.
    pub fn describe(self, usage: KeyUsage, m: &mut serde_json::Value) {
        if let Some(o) = m.as_object_mut() {
            for field in [
                "EncryptionAlgorithms",
                "SigningAlgorithms",
                "MacAlgorithms",
                "KeyAgreementAlgorithms",
            ] {
                o.remove(field);
            }
        }
        m["KeySpec"] = self.as_str().into();
        m["CustomerMasterKeySpec"] = self.as_str().into();
        m["KeyUsage"] = usage.as_str().into();
        let names = |v: Vec<&'static str>| serde_json::Value::from(v);
        match (self, usage) {
            (KeySpec::SymmetricDefault, _) => {
                m["EncryptionAlgorithms"] = names(vec!["SYMMETRIC_DEFAULT"]);
            }
            (_, KeyUsage::EncryptDecrypt) => {
                m["EncryptionAlgorithms"] = names(
                    RSA_ENCRYPTION_ALGORITHMS
                        .iter()
                        .map(|a| a.as_str())
                        .collect(),
                );
            }
            (_, KeyUsage::SignVerify) => {
                m["SigningAlgorithms"] = names(
                    self.signing_algorithms()
                        .iter()
                        .map(|a| a.as_str())
                        .collect(),
                );
            }
            (_, KeyUsage::GenerateVerifyMac) => {
                m["MacAlgorithms"] = names(
                    self.mac_algorithm()
                        .map(|a| a.as_str())
                        .into_iter()
                        .collect(),
                );
            }
            (_, KeyUsage::KeyAgreement) => {
                m["KeyAgreementAlgorithms"] = names(vec![KEY_AGREEMENT_ALGORITHM]);
            }
        }
    }
}

impl fmt::Display for KeySpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A key's usage, as AWS names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyUsage {
    /// Encrypt and decrypt.
    #[serde(rename = "ENCRYPT_DECRYPT")]
    EncryptDecrypt,
    /// Sign and verify.
    #[serde(rename = "SIGN_VERIFY")]
    SignVerify,
    /// Generate and verify MACs.
    #[serde(rename = "GENERATE_VERIFY_MAC")]
    GenerateVerifyMac,
    /// Derive shared secrets.
    #[serde(rename = "KEY_AGREEMENT")]
    KeyAgreement,
}

impl KeyUsage {
    /// The AWS name.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyUsage::EncryptDecrypt => "ENCRYPT_DECRYPT",
            KeyUsage::SignVerify => "SIGN_VERIFY",
            KeyUsage::GenerateVerifyMac => "GENERATE_VERIFY_MAC",
            KeyUsage::KeyAgreement => "KEY_AGREEMENT",
        }
    }

    /// Parses an AWS name.
    pub fn parse(s: &str) -> Option<Self> {
        [
            KeyUsage::EncryptDecrypt,
            KeyUsage::SignVerify,
            KeyUsage::GenerateVerifyMac,
            KeyUsage::KeyAgreement,
        ]
        .into_iter()
        .find(|u| u.as_str() == s)
    }
}

/// The only key-agreement algorithm.
pub const KEY_AGREEMENT_ALGORITHM: &str = "ECDH";

/// Signing algorithms, as AWS names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum SigningAlgorithm {
    RsassaPssSha256,
    RsassaPssSha384,
    RsassaPssSha512,
    RsassaPkcs1V15Sha256,
    RsassaPkcs1V15Sha384,
    RsassaPkcs1V15Sha512,
    EcdsaSha256,
    EcdsaSha384,
    EcdsaSha512,
}

/// Every signing algorithm of this service.
pub const SIGNING_ALGORITHMS: [SigningAlgorithm; 9] = [
    SigningAlgorithm::RsassaPssSha256,
    SigningAlgorithm::RsassaPssSha384,
    SigningAlgorithm::RsassaPssSha512,
    SigningAlgorithm::RsassaPkcs1V15Sha256,
    SigningAlgorithm::RsassaPkcs1V15Sha384,
    SigningAlgorithm::RsassaPkcs1V15Sha512,
    SigningAlgorithm::EcdsaSha256,
    SigningAlgorithm::EcdsaSha384,
    SigningAlgorithm::EcdsaSha512,
];

impl SigningAlgorithm {
    /// The AWS name.
    pub fn as_str(self) -> &'static str {
        match self {
            SigningAlgorithm::RsassaPssSha256 => "RSASSA_PSS_SHA_256",
            SigningAlgorithm::RsassaPssSha384 => "RSASSA_PSS_SHA_384",
            SigningAlgorithm::RsassaPssSha512 => "RSASSA_PSS_SHA_512",
            SigningAlgorithm::RsassaPkcs1V15Sha256 => "RSASSA_PKCS1_V1_5_SHA_256",
            SigningAlgorithm::RsassaPkcs1V15Sha384 => "RSASSA_PKCS1_V1_5_SHA_384",
            SigningAlgorithm::RsassaPkcs1V15Sha512 => "RSASSA_PKCS1_V1_5_SHA_512",
            SigningAlgorithm::EcdsaSha256 => "ECDSA_SHA_256",
            SigningAlgorithm::EcdsaSha384 => "ECDSA_SHA_384",
            SigningAlgorithm::EcdsaSha512 => "ECDSA_SHA_512",
        }
    }

    /// Parses an AWS name.
    pub fn parse(s: &str) -> Option<Self> {
        SIGNING_ALGORITHMS.into_iter().find(|a| a.as_str() == s)
    }

    /// The digest the algorithm hashes the message with.
    pub fn digest(self) -> &'static digest::Algorithm {
        use SigningAlgorithm::*;
        match self {
            RsassaPssSha256 | RsassaPkcs1V15Sha256 | EcdsaSha256 => &digest::SHA256,
            RsassaPssSha384 | RsassaPkcs1V15Sha384 | EcdsaSha384 => &digest::SHA384,
            RsassaPssSha512 | RsassaPkcs1V15Sha512 | EcdsaSha512 => &digest::SHA512,
        }
    }

    fn rsa_encoding(self) -> Option<&'static dyn signature::RsaEncoding> {
        use SigningAlgorithm::*;
        Some(match self {
            RsassaPssSha256 => &signature::RSA_PSS_SHA256,
            RsassaPssSha384 => &signature::RSA_PSS_SHA384,
            RsassaPssSha512 => &signature::RSA_PSS_SHA512,
            RsassaPkcs1V15Sha256 => &signature::RSA_PKCS1_SHA256,
            RsassaPkcs1V15Sha384 => &signature::RSA_PKCS1_SHA384,
            RsassaPkcs1V15Sha512 => &signature::RSA_PKCS1_SHA512,
            _ => return None,
        })
    }

    fn rsa_verification(self) -> Option<&'static signature::RsaParameters> {
        use SigningAlgorithm::*;
        Some(match self {
            RsassaPssSha256 => &signature::RSA_PSS_2048_8192_SHA256,
            RsassaPssSha384 => &signature::RSA_PSS_2048_8192_SHA384,
            RsassaPssSha512 => &signature::RSA_PSS_2048_8192_SHA512,
            RsassaPkcs1V15Sha256 => &signature::RSA_PKCS1_2048_8192_SHA256,
            RsassaPkcs1V15Sha384 => &signature::RSA_PKCS1_2048_8192_SHA384,
            RsassaPkcs1V15Sha512 => &signature::RSA_PKCS1_2048_8192_SHA512,
            _ => return None,
        })
    }
}

/// Sign/Verify's MessageType.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageType {
    /// The message itself, hashed by the service.
    Raw,
    /// The message's digest, computed by the caller.
    Digest,
}

impl MessageType {
    /// Parses an AWS name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "RAW" => Some(MessageType::Raw),
            "DIGEST" => Some(MessageType::Digest),
            _ => None,
        }
    }
}

/// MAC algorithms, as AWS names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum MacAlgorithm {
    HmacSha224,
    HmacSha256,
    HmacSha384,
    HmacSha512,
}

impl MacAlgorithm {
    /// The AWS name.
    pub fn as_str(self) -> &'static str {
        match self {
            MacAlgorithm::HmacSha224 => "HMAC_SHA_224",
            MacAlgorithm::HmacSha256 => "HMAC_SHA_256",
            MacAlgorithm::HmacSha384 => "HMAC_SHA_384",
            MacAlgorithm::HmacSha512 => "HMAC_SHA_512",
        }
    }

    /// Parses an AWS name.
    pub fn parse(s: &str) -> Option<Self> {
        [
            MacAlgorithm::HmacSha224,
            MacAlgorithm::HmacSha256,
            MacAlgorithm::HmacSha384,
            MacAlgorithm::HmacSha512,
        ]
        .into_iter()
        .find(|a| a.as_str() == s)
    }

    fn hmac(self) -> hmac::Algorithm {
        match self {
            MacAlgorithm::HmacSha224 => hmac::HMAC_SHA224,
            MacAlgorithm::HmacSha256 => hmac::HMAC_SHA256,
            MacAlgorithm::HmacSha384 => hmac::HMAC_SHA384,
            MacAlgorithm::HmacSha512 => hmac::HMAC_SHA512,
        }
    }

    /// Length of the MAC (and of the key material of its spec).
    pub fn output_len(self) -> usize {
        match self {
            MacAlgorithm::HmacSha224 => 28,
            MacAlgorithm::HmacSha256 => 32,
            MacAlgorithm::HmacSha384 => 48,
            MacAlgorithm::HmacSha512 => 64,
        }
    }
}

/// RSA encryption algorithms, as AWS names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RsaEncryptionAlgorithm {
    /// RSAES-OAEP with SHA-1 and MGF1-SHA-1.
    OaepSha1,
    /// RSAES-OAEP with SHA-256 and MGF1-SHA-256.
    OaepSha256,
}

/// The encryption algorithms of an RSA ENCRYPT_DECRYPT key.
pub const RSA_ENCRYPTION_ALGORITHMS: [RsaEncryptionAlgorithm; 2] = [
    RsaEncryptionAlgorithm::OaepSha1,
    RsaEncryptionAlgorithm::OaepSha256,
];

impl RsaEncryptionAlgorithm {
    /// The AWS name.
    pub fn as_str(self) -> &'static str {
        match self {
            RsaEncryptionAlgorithm::OaepSha1 => "RSAES_OAEP_SHA_1",
            RsaEncryptionAlgorithm::OaepSha256 => "RSAES_OAEP_SHA_256",
        }
    }

    /// Parses an AWS name.
    pub fn parse(s: &str) -> Option<Self> {
        RSA_ENCRYPTION_ALGORITHMS
            .into_iter()
            .find(|a| a.as_str() == s)
    }

    fn oaep(self) -> &'static rsa::OaepAlgorithm {
        match self {
            RsaEncryptionAlgorithm::OaepSha1 => &rsa::OAEP_SHA1_MGF1SHA1,
            RsaEncryptionAlgorithm::OaepSha256 => &rsa::OAEP_SHA256_MGF1SHA256,
        }
    }

    /// Longest plaintext with a modulus of `modulus_len` bytes (RFC 8017: k - 2hLen - 2).
    pub fn max_plaintext(self, modulus_len: usize) -> usize {
        let h = match self {
            RsaEncryptionAlgorithm::OaepSha1 => 20,
            RsaEncryptionAlgorithm::OaepSha256 => 32,
        };
        modulus_len.saturating_sub(2 * h + 2)
    }
}

/// Generates the material of a new key of `spec`: PKCS#8 DER for an asymmetric spec, random
/// bytes for an HMAC spec. `None` for the symmetric default (the caller makes AES material).
pub fn generate_material(spec: KeySpec) -> Result<Option<Zeroizing<Vec<u8>>>, KeyError> {
    let der = |d: &[u8]| Ok(Some(Zeroizing::new(d.to_vec())));
    let rsa = |size| {
        let kp = rsa::KeyPair::generate(size).map_err(|_| KeyError::Internal("rsa keygen"))?;
        let pkcs8: aws_lc_rs::encoding::Pkcs8V1Der<'_> =
            kp.as_der().map_err(|_| KeyError::Internal("rsa pkcs8"))?;
        der(pkcs8.as_ref())
    };
    let ec = |alg| {
        let kp =
            signature::EcdsaKeyPair::generate(alg).map_err(|_| KeyError::Internal("ec keygen"))?;
        let pkcs8 = kp
            .to_pkcs8v1()
            .map_err(|_| KeyError::Internal("ec pkcs8"))?;
        der(pkcs8.as_ref())
    };
    match spec {
        KeySpec::SymmetricDefault => Ok(None),
        KeySpec::Rsa2048 => rsa(rsa::KeySize::Rsa2048),
        KeySpec::Rsa3072 => rsa(rsa::KeySize::Rsa3072),
        KeySpec::Rsa4096 => rsa(rsa::KeySize::Rsa4096),
        KeySpec::EccNistP256
        | KeySpec::EccNistP384
        | KeySpec::EccNistP521
        | KeySpec::EccSecgP256k1 => ec(ecdsa_signing(spec).ok_or(KeyError::Internal("curve"))?),
        KeySpec::Hmac224 | KeySpec::Hmac256 | KeySpec::Hmac384 | KeySpec::Hmac512 => {
            let n = spec
                .hmac_key_len()
                .ok_or(KeyError::Internal("hmac length"))?;
            let mut k = Zeroizing::new(vec![0u8; n]);
            aws_lc_rs::rand::fill(&mut k[..]).map_err(|_| KeyError::Internal("random"))?;
            Ok(Some(k))
        }
    }
}

fn ecdsa_signing(spec: KeySpec) -> Option<&'static signature::EcdsaSigningAlgorithm> {
    Some(match spec {
        KeySpec::EccNistP256 => &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
        KeySpec::EccNistP384 => &signature::ECDSA_P384_SHA384_ASN1_SIGNING,
        KeySpec::EccNistP521 => &signature::ECDSA_P521_SHA512_ASN1_SIGNING,
        KeySpec::EccSecgP256k1 => &signature::ECDSA_P256K1_SHA256_ASN1_SIGNING,
        _ => return None,
    })
}

fn ecdsa_verification(spec: KeySpec) -> Option<&'static signature::EcdsaVerificationAlgorithm> {
    Some(match spec {
        KeySpec::EccNistP256 => &signature::ECDSA_P256_SHA256_ASN1,
        KeySpec::EccNistP384 => &signature::ECDSA_P384_SHA384_ASN1,
        KeySpec::EccNistP521 => &signature::ECDSA_P521_SHA512_ASN1,
        KeySpec::EccSecgP256k1 => &signature::ECDSA_P256K1_SHA256_ASN1,
        _ => return None,
    })
}

fn ecdh(spec: KeySpec) -> Option<&'static agreement::Algorithm> {
    Some(match spec {
        KeySpec::EccNistP256 => &agreement::ECDH_P256,
        KeySpec::EccNistP384 => &agreement::ECDH_P384,
        KeySpec::EccNistP521 => &agreement::ECDH_P521,
        _ => return None,
    })
}

/// The parsed private material of an asymmetric or HMAC key.
// One per key, behind an Arc: the size of the largest variant costs nothing worth a Box.
#[allow(clippy::large_enum_variant)]
pub enum KeyMaterial {
    /// An RSA key.
    Rsa {
        /// For Sign.
        signing: rsa::KeyPair,
        /// For Decrypt.
        decrypting: rsa::OaepPrivateDecryptingKey,
        /// For Encrypt.
        encrypting: rsa::OaepPublicEncryptingKey,
        /// DER SubjectPublicKeyInfo.
        public: Vec<u8>,
    },
    /// An elliptic-curve key.
    Ec {
        /// Its spec (which curve).
        spec: KeySpec,
        /// For Sign.
        signing: signature::EcdsaKeyPair,
        /// For DeriveSharedSecret (NIST curves only).
        agreement: Option<agreement::PrivateKey>,
        /// DER SubjectPublicKeyInfo.
        public: Vec<u8>,
    },
    /// An HMAC key.
    Hmac {
        /// Its algorithm.
        algorithm: MacAlgorithm,
        /// The key.
        key: hmac::Key,
    },
}

impl fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self {
            KeyMaterial::Rsa { .. } => "Rsa",
            KeyMaterial::Ec { .. } => "Ec",
            KeyMaterial::Hmac { .. } => "Hmac",
        };
        write!(f, "KeyMaterial::{kind}(<redacted>)")
    }
}

impl KeyMaterial {
    /// Parses stored material of `spec` (PKCS#8 DER, or an HMAC key's bytes).
    pub fn load(spec: KeySpec, bytes: &[u8]) -> Result<Self, KeyError> {
        if spec.is_rsa() {
            let signing =
                rsa::KeyPair::from_pkcs8(bytes).map_err(|_| KeyError::Internal("rsa material"))?;
            let private = rsa::PrivateDecryptingKey::from_pkcs8(bytes)
                .map_err(|_| KeyError::Internal("rsa material"))?;
            let encrypting = rsa::OaepPublicEncryptingKey::new(private.public_key())
                .map_err(|_| KeyError::Internal("rsa public key"))?;
            let decrypting = rsa::OaepPrivateDecryptingKey::new(private)
                .map_err(|_| KeyError::Internal("rsa material"))?;
            let public: aws_lc_rs::encoding::PublicKeyX509Der<'_> =
                signing
                    .public_key()
                    .as_der()
                    .map_err(|_| KeyError::Internal("rsa spki"))?;
            let public = public.as_ref().to_vec();
            let expected = match spec {
                KeySpec::Rsa2048 => 256,
                KeySpec::Rsa3072 => 384,
                _ => 512,
            };
            if signing.public_modulus_len() != expected {
                return Err(KeyError::Internal("rsa modulus length"));
            }
            return Ok(KeyMaterial::Rsa {
                signing,
                decrypting,
                encrypting,
                public,
            });
        }
        if let Some(alg) = ecdsa_signing(spec) {
            let signing = signature::EcdsaKeyPair::from_pkcs8(alg, bytes)
                .map_err(|_| KeyError::Internal("ec material"))?;
            let agreement = match ecdh(spec) {
                Some(a) => Some(
                    agreement::PrivateKey::from_private_key_der(a, bytes)
                        .map_err(|_| KeyError::Internal("ec material"))?,
                ),
                None => None,
            };
            let public: aws_lc_rs::encoding::PublicKeyX509Der<'_> =
                signing
                    .public_key()
                    .as_der()
                    .map_err(|_| KeyError::Internal("ec spki"))?;
            let public = public.as_ref().to_vec();
            return Ok(KeyMaterial::Ec {
                spec,
                signing,
                agreement,
                public,
            });
        }
        let hmac_length_ok = spec
            .hmac_material_lengths()
            .is_some_and(|r| r.contains(&bytes.len()));
        match spec.mac_algorithm() {
            Some(algorithm) if hmac_length_ok => Ok(KeyMaterial::Hmac {
                algorithm,
                key: hmac::Key::new(algorithm.hmac(), bytes),
            }),
            _ => Err(KeyError::Internal("material does not match the key spec")),
        }
    }

    /// The DER SubjectPublicKeyInfo (none for HMAC).
    pub fn public_key(&self) -> Option<&[u8]> {
        match self {
            KeyMaterial::Rsa { public, .. } | KeyMaterial::Ec { public, .. } => Some(public),
            KeyMaterial::Hmac { .. } => None,
        }
    }

    fn digest_of(
        alg: SigningAlgorithm,
        message_type: MessageType,
        message: &[u8],
    ) -> Result<Digest, KeyError> {
        match message_type {
            MessageType::Raw => Ok(digest::digest(alg.digest(), message)),
            MessageType::Digest => Digest::import_less_safe(message, alg.digest())
                .map_err(|_| KeyError::DigestLength(alg.as_str())),
        }
    }

    /// Signs `message` (or, with [`MessageType::Digest`], its digest). The caller has checked
    /// that `alg` is one of the key's signing algorithms.
    pub fn sign(
        &self,
        alg: SigningAlgorithm,
        message_type: MessageType,
        message: &[u8],
    ) -> Result<Vec<u8>, KeyError> {
        let digest = Self::digest_of(alg, message_type, message)?;
        match self {
            KeyMaterial::Rsa { signing, .. } => {
                let enc = alg.rsa_encoding().ok_or_else(|| incompatible(alg))?;
                let mut sig = vec![0u8; signing.public_modulus_len()];
                signing
                    .sign_digest(enc, &digest, &mut sig)
                    .map_err(|_| KeyError::Internal("rsa sign"))?;
                Ok(sig)
            }
            KeyMaterial::Ec { spec, .. } if !spec.signing_algorithms().contains(&alg) => {
                Err(incompatible(alg))
            }
            KeyMaterial::Ec { signing, .. } => signing
                .sign_digest(&digest)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| incompatible(alg)),
            KeyMaterial::Hmac { .. } => Err(incompatible(alg)),
        }
    }

    /// Verifies `signature` of `message` (or of its digest).
    pub fn verify(
        &self,
        alg: SigningAlgorithm,
        message_type: MessageType,
        message: &[u8],
        sig: &[u8],
    ) -> Result<(), KeyError> {
        let digest = Self::digest_of(alg, message_type, message)?;
        let ok = match self {
            KeyMaterial::Rsa { public, .. } => {
                let params = alg.rsa_verification().ok_or_else(|| incompatible(alg))?;
                signature::UnparsedPublicKey::new(params, public).verify_digest(&digest, sig)
            }
            KeyMaterial::Ec { spec, public, .. } => {
                let v = ecdsa_verification(*spec).ok_or(KeyError::Internal("curve"))?;
                if !spec.signing_algorithms().contains(&alg) {
                    return Err(incompatible(alg));
                }
                signature::UnparsedPublicKey::new(v, public).verify_digest(&digest, sig)
            }
            KeyMaterial::Hmac { .. } => return Err(incompatible(alg)),
        };
        ok.map_err(|_| KeyError::InvalidSignature)
    }

    /// RSAES-OAEP encryption with the public key.
    pub fn encrypt(
        &self,
        alg: RsaEncryptionAlgorithm,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, KeyError> {
        let KeyMaterial::Rsa { encrypting, .. } = self else {
            return Err(KeyError::IncompatibleAlgorithm(format!(
                "{} is not compatible with this key",
                alg.as_str()
            )));
        };
        let max = alg.max_plaintext(encrypting.key_size_bytes());
        if plaintext.len() > max {
            return Err(KeyError::PlaintextTooLong(
                plaintext.len(),
                max,
                alg.as_str(),
            ));
        }
        let mut out = vec![0u8; encrypting.ciphertext_size()];
        let n = encrypting
            .encrypt(alg.oaep(), plaintext, &mut out, None)
            .map_err(|_| KeyError::Internal("rsa encrypt"))?
            .len();
        out.truncate(n);
        Ok(out)
    }

    /// RSAES-OAEP decryption with the private key.
    pub fn decrypt(
        &self,
        alg: RsaEncryptionAlgorithm,
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        let KeyMaterial::Rsa { decrypting, .. } = self else {
            return Err(KeyError::IncompatibleAlgorithm(format!(
                "{} is not compatible with this key",
                alg.as_str()
            )));
        };
        if ciphertext.len() != decrypting.key_size_bytes() {
            return Err(KeyError::InvalidCiphertext);
        }
        let mut out = Zeroizing::new(vec![0u8; decrypting.min_output_size()]);
        let n = decrypting
            .decrypt(alg.oaep(), ciphertext, &mut out, None)
            .map_err(|_| KeyError::InvalidCiphertext)?
            .len();
        out.truncate(n);
        Ok(out)
    }

    /// ECDH with the peer's DER SubjectPublicKeyInfo: the shared secret (the x-coordinate).
    pub fn derive(&self, peer_spki: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        let KeyMaterial::Ec {
            agreement: Some(private),
            ..
        } = self
        else {
            return Err(KeyError::IncompatibleAlgorithm(
                "ECDH is not compatible with this key".into(),
            ));
        };
        // Only a SubjectPublicKeyInfo is accepted (as AWS does), not a bare point: a DER
        // SEQUENCE starts with 0x30, a point with 0x04, 0x02 or 0x03.
        if peer_spki.first() != Some(&0x30) {
            return Err(KeyError::InvalidPublicKey);
        }
        let peer = agreement::UnparsedPublicKey::new(private.algorithm(), peer_spki);
        agreement::agree(private, peer, KeyError::InvalidPublicKey, |z| {
            Ok(Zeroizing::new(z.to_vec()))
        })
    }

    /// The HMAC of `message`.
    pub fn mac(&self, alg: MacAlgorithm, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        match self {
            KeyMaterial::Hmac { algorithm, key } if *algorithm == alg => {
                Ok(hmac::sign(key, message).as_ref().to_vec())
            }
            _ => Err(KeyError::IncompatibleAlgorithm(format!(
                "{} is not compatible with this key",
                alg.as_str()
            ))),
        }
    }

    /// Checks an HMAC in constant time.
    pub fn verify_mac(
        &self,
        alg: MacAlgorithm,
        message: &[u8],
        mac: &[u8],
    ) -> Result<(), KeyError> {
        match self {
            KeyMaterial::Hmac { algorithm, key } if *algorithm == alg => {
                hmac::verify(key, message, mac).map_err(|_| KeyError::InvalidMac)
            }
            _ => Err(KeyError::IncompatibleAlgorithm(format!(
                "{} is not compatible with this key",
                alg.as_str()
            ))),
        }
    }
}

fn incompatible(alg: SigningAlgorithm) -> KeyError {
    KeyError::IncompatibleAlgorithm(format!(
        "Signing algorithm {} is not compatible with this key",
        alg.as_str()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(spec: KeySpec) -> KeyMaterial {
        let m = generate_material(spec).unwrap().unwrap();
        KeyMaterial::load(spec, &m).unwrap()
    }

    #[test]
    fn names_round_trip() {
        for s in KEY_SPECS {
            assert_eq!(KeySpec::parse(s.as_str()), Some(s));
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(json, format!("\"{}\"", s.as_str()));
            assert!(!s.usages().is_empty());
        }
        for a in SIGNING_ALGORITHMS {
            assert_eq!(SigningAlgorithm::parse(a.as_str()), Some(a));
        }
        for a in RSA_ENCRYPTION_ALGORITHMS {
            assert_eq!(RsaEncryptionAlgorithm::parse(a.as_str()), Some(a));
        }
        for u in [
            "ENCRYPT_DECRYPT",
            "SIGN_VERIFY",
            "GENERATE_VERIFY_MAC",
            "KEY_AGREEMENT",
        ] {
            assert_eq!(KeyUsage::parse(u).unwrap().as_str(), u);
        }
        assert_eq!(KeySpec::parse("RSA_1024"), None);
        assert_eq!(SigningAlgorithm::parse("ecdsa_sha_256"), None);
        assert_eq!(MessageType::parse("RAW"), Some(MessageType::Raw));
        assert_eq!(MessageType::parse("raw"), None);
    }

    #[test]
    fn usage_and_algorithm_tables_match_aws() {
        assert_eq!(KeySpec::EccSecgP256k1.usages(), &[KeyUsage::SignVerify]);
        assert!(KeySpec::EccNistP521
            .usages()
            .contains(&KeyUsage::KeyAgreement));
        assert!(!KeySpec::Rsa2048.usages().contains(&KeyUsage::KeyAgreement));
        assert_eq!(KeySpec::Rsa3072.signing_algorithms().len(), 6);
        assert_eq!(
            KeySpec::EccNistP384.signing_algorithms(),
            &[SigningAlgorithm::EcdsaSha384]
        );
        assert_eq!(
            KeySpec::EccNistP521.signing_algorithms(),
            &[SigningAlgorithm::EcdsaSha512]
        );
        let mut m = serde_json::json!({});
        KeySpec::Rsa2048.describe(KeyUsage::EncryptDecrypt, &mut m);
        assert_eq!(
            m["EncryptionAlgorithms"],
            serde_json::json!(["RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256"])
        );
        assert!(m.get("SigningAlgorithms").is_none());
        let mut m = serde_json::json!({});
        KeySpec::Hmac384.describe(KeyUsage::GenerateVerifyMac, &mut m);
        assert_eq!(m["MacAlgorithms"], serde_json::json!(["HMAC_SHA_384"]));
        assert_eq!(m["CustomerMasterKeySpec"], "HMAC_384");
        let mut m = serde_json::json!({});
        KeySpec::EccNistP256.describe(KeyUsage::KeyAgreement, &mut m);
        assert_eq!(m["KeyAgreementAlgorithms"], serde_json::json!(["ECDH"]));
        assert_eq!(RsaEncryptionAlgorithm::OaepSha256.max_plaintext(256), 190);
        assert_eq!(RsaEncryptionAlgorithm::OaepSha1.max_plaintext(256), 214);
    }

    #[test]
    fn ec_sign_verify_every_curve_raw_and_digest() {
        for spec in [
            KeySpec::EccNistP256,
            KeySpec::EccNistP384,
            KeySpec::EccNistP521,
            KeySpec::EccSecgP256k1,
        ] {
            let k = load(spec);
            let alg = spec.signing_algorithms()[0];
            let sig = k.sign(alg, MessageType::Raw, b"hello").unwrap();
            k.verify(alg, MessageType::Raw, b"hello", &sig).unwrap();
            let d = digest::digest(alg.digest(), b"hello");
            k.verify(alg, MessageType::Digest, d.as_ref(), &sig)
                .unwrap();
            let sig2 = k.sign(alg, MessageType::Digest, d.as_ref()).unwrap();
            k.verify(alg, MessageType::Raw, b"hello", &sig2).unwrap();
            assert_eq!(
                k.verify(alg, MessageType::Raw, b"hellO", &sig),
                Err(KeyError::InvalidSignature)
            );
            assert_eq!(
                k.sign(alg, MessageType::Digest, b"short"),
                Err(KeyError::DigestLength(alg.as_str()))
            );
            // The other ECDSA digests do not fit this curve.
            for other in SIGNING_ALGORITHMS.into_iter().filter(|a| *a != alg) {
                assert!(matches!(
                    k.verify(other, MessageType::Raw, b"hello", &sig),
                    Err(KeyError::IncompatibleAlgorithm(_))
                ));
            }
            let spki = k.public_key().unwrap();
            assert_eq!(spki[0], 0x30);
        }
    }

    #[test]
    fn rsa_every_signing_algorithm_and_oaep() {
        let k = load(KeySpec::Rsa2048);
        for alg in KeySpec::Rsa2048.signing_algorithms() {
            let sig = k.sign(*alg, MessageType::Raw, b"m").unwrap();
            assert_eq!(sig.len(), 256);
            k.verify(*alg, MessageType::Raw, b"m", &sig).unwrap();
            let mut bad = sig.clone();
            bad[10] ^= 1;
            assert_eq!(
                k.verify(*alg, MessageType::Raw, b"m", &bad),
                Err(KeyError::InvalidSignature)
            );
        }
        assert!(matches!(
            k.sign(SigningAlgorithm::EcdsaSha256, MessageType::Raw, b"m"),
            Err(KeyError::IncompatibleAlgorithm(_))
        ));
        for alg in RSA_ENCRYPTION_ALGORITHMS {
            let ct = k.encrypt(alg, b"secret").unwrap();
            assert_eq!(&k.decrypt(alg, &ct).unwrap()[..], b"secret");
            let mut bad = ct.clone();
            bad[0] ^= 1;
            assert_eq!(k.decrypt(alg, &bad), Err(KeyError::InvalidCiphertext));
            assert_eq!(k.decrypt(alg, &ct[1..]), Err(KeyError::InvalidCiphertext));
            let max = alg.max_plaintext(256);
            k.encrypt(alg, &vec![1u8; max]).unwrap();
            assert!(matches!(
                k.encrypt(alg, &vec![1u8; max + 1]),
                Err(KeyError::PlaintextTooLong(..))
            ));
        }
        // A ciphertext under one OAEP digest does not open under the other.
        let ct = k.encrypt(RsaEncryptionAlgorithm::OaepSha1, b"x").unwrap();
        assert!(k.decrypt(RsaEncryptionAlgorithm::OaepSha256, &ct).is_err());
    }

    #[test]
    fn ecdh_matches_a_local_agreement() {
        let k = load(KeySpec::EccNistP384);
        let mine = agreement::PrivateKey::generate(&agreement::ECDH_P384).unwrap();
        let my_spki: aws_lc_rs::encoding::PublicKeyX509Der<'_> =
            mine.compute_public_key().unwrap().as_der().unwrap();
        let z = k.derive(my_spki.as_ref()).unwrap();
        let peer = agreement::UnparsedPublicKey::new(
            &agreement::ECDH_P384,
            k.public_key().unwrap().to_vec(),
        );
        let local = agreement::agree(&mine, &peer, (), |s| Ok(s.to_vec())).unwrap();
        assert_eq!(&z[..], &local[..]);
        assert_eq!(z.len(), 48);
        // A key on another curve, garbage, and a bare point are refused.
        let other = agreement::PrivateKey::generate(&agreement::ECDH_P256).unwrap();
        let other_spki: aws_lc_rs::encoding::PublicKeyX509Der<'_> =
            other.compute_public_key().unwrap().as_der().unwrap();
        assert_eq!(
            k.derive(other_spki.as_ref()),
            Err(KeyError::InvalidPublicKey)
        );
        assert_eq!(
            k.derive(b"\x30\x03garbage"),
            Err(KeyError::InvalidPublicKey)
        );
        let point = mine.compute_public_key().unwrap();
        assert_eq!(k.derive(point.as_ref()), Err(KeyError::InvalidPublicKey));
        // secp256k1 keys sign only.
        assert!(matches!(
            load(KeySpec::EccSecgP256k1).derive(my_spki.as_ref()),
            Err(KeyError::IncompatibleAlgorithm(_))
        ));
    }

    #[test]
    fn hmac_every_size() {
        for spec in [
            KeySpec::Hmac224,
            KeySpec::Hmac256,
            KeySpec::Hmac384,
            KeySpec::Hmac512,
        ] {
            let m = generate_material(spec).unwrap().unwrap();
            let alg = spec.mac_algorithm().unwrap();
            assert_eq!(m.len(), alg.output_len());
            let k = KeyMaterial::load(spec, &m).unwrap();
            let mac = k.mac(alg, b"msg").unwrap();
            let expect = hmac::sign(&hmac::Key::new(alg.hmac(), &m), b"msg");
            assert_eq!(mac, expect.as_ref());
            assert_eq!(mac.len(), alg.output_len());
            k.verify_mac(alg, b"msg", &mac).unwrap();
            let mut bad = mac.clone();
            bad[0] ^= 0x80;
            assert_eq!(k.verify_mac(alg, b"msg", &bad), Err(KeyError::InvalidMac));
            assert_eq!(
                k.verify_mac(alg, b"msg", &mac[1..]),
                Err(KeyError::InvalidMac)
            );
            for other in [
                MacAlgorithm::HmacSha224,
                MacAlgorithm::HmacSha256,
                MacAlgorithm::HmacSha384,
                MacAlgorithm::HmacSha512,
            ]
            .into_iter()
            .filter(|a| *a != alg)
            {
                assert!(matches!(
                    k.mac(other, b"msg"),
                    Err(KeyError::IncompatibleAlgorithm(_))
                ));
            }
        }
        // Material of the wrong length for the spec is refused.
        assert!(KeyMaterial::load(KeySpec::Hmac256, &[0u8; 28]).is_err());
        assert!(KeyMaterial::load(KeySpec::EccNistP256, &[0u8; 32]).is_err());
    }
}
