//! The COSE algorithms an image signature may use, and what each means for the signature
//! section ([`crate::signature`]) and for an external signer ([`crate::external`]).

use aws_lc_rs::signature as sig;

/// COSE algorithms the format allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CoseAlgorithm {
    /// ECDSA P-256 with SHA-256 (COSE -7).
    Es256,
    /// ECDSA P-384 with SHA-384 (COSE -35), what AWS's tools use.
    Es384,
    /// ECDSA P-521 with SHA-512 (COSE -36).
    Es512,
}

impl CoseAlgorithm {
    /// COSE algorithm identifier.
    pub fn id(self) -> i64 {
        match self {
            Self::Es256 => -7,
            Self::Es384 => -35,
            Self::Es512 => -36,
        }
    }

    /// From a COSE identifier.
    pub fn from_id(id: i128) -> Option<Self> {
        match id {
            -7 => Some(Self::Es256),
            -35 => Some(Self::Es384),
            -36 => Some(Self::Es512),
            _ => None,
        }
    }

    /// Name, e.g. `ES384`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Es256 => "ES256",
            Self::Es384 => "ES384",
            Self::Es512 => "ES512",
        }
    }

    pub(crate) fn from_curve_oid(oid: &str) -> Option<Self> {
        match oid {
            "1.2.840.10045.3.1.7" => Some(Self::Es256),
            "1.3.132.0.34" => Some(Self::Es384),
            "1.3.132.0.35" => Some(Self::Es512),
            _ => None,
        }
    }

    pub(crate) fn verification(self) -> &'static sig::EcdsaVerificationAlgorithm {
        match self {
            Self::Es256 => &sig::ECDSA_P256_SHA256_FIXED,
            Self::Es384 => &sig::ECDSA_P384_SHA384_FIXED,
            Self::Es512 => &sig::ECDSA_P521_SHA512_FIXED,
        }
    }

    pub(crate) fn signing(self) -> &'static sig::EcdsaSigningAlgorithm {
        match self {
            Self::Es256 => &sig::ECDSA_P256_SHA256_FIXED_SIGNING,
            Self::Es384 => &sig::ECDSA_P384_SHA384_FIXED_SIGNING,
            Self::Es512 => &sig::ECDSA_P521_SHA512_FIXED_SIGNING,
        }
    }
}

impl CoseAlgorithm {
    /// Length in bytes of one of `r` and `s` (the curve's field size).
    pub fn scalar_len(self) -> usize {
        match self {
            Self::Es256 => 32,
            Self::Es384 => 48,
            Self::Es512 => 66,
        }
    }

    /// The digest the algorithm signs.
    pub fn digest_algorithm(self) -> &'static aws_lc_rs::digest::Algorithm {
        match self {
            Self::Es256 => &aws_lc_rs::digest::SHA256,
            Self::Es384 => &aws_lc_rs::digest::SHA384,
            Self::Es512 => &aws_lc_rs::digest::SHA512,
        }
    }

    /// KMS's name for the signing algorithm (`ECDSA_SHA_384`).
    pub fn kms_signing_algorithm(self) -> &'static str {
        match self {
            Self::Es256 => "ECDSA_SHA_256",
            Self::Es384 => "ECDSA_SHA_384",
            Self::Es512 => "ECDSA_SHA_512",
        }
    }
}
