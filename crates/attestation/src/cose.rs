//! A minimal COSE_Sign1 (RFC 9052) for attestation documents: ES384 only.
//!
//! Structure: `[protected: bstr, unprotected: map, payload: bstr, signature: bstr]`, optionally
//! wrapped in tag 18. The protected header must name ES384 (`{1: -35}`); the signature is the
//! 96-byte raw `r || s` of ECDSA P-384 with SHA-384 over the `Sig_structure`
//! `["Signature1", protected, h'', payload]`. Decoding takes untrusted bytes: the input is capped
//! at [`MAX_COSE_LEN`], any other tag, a detached payload, critical headers and trailing bytes
//! are rejected. Encoding writes the untagged form real documents use.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, UnparsedPublicKey};
use ciborium::value::Value;

/// Largest COSE_Sign1 document accepted, in bytes (an NSM response is at most 12288 bytes).
pub const MAX_COSE_LEN: usize = 16 * 1024;
/// The CBOR tag of COSE_Sign1.
pub const COSE_SIGN1_TAG: u64 = 18;
/// COSE algorithm identifier of ES384.
pub const ALG_ES384: i64 = -35;
/// Length of an ES384 signature (`r || s`).
pub const ES384_SIGNATURE_LEN: usize = 96;
/// Largest protected header accepted, in bytes.
pub const MAX_PROTECTED_LEN: usize = 256;
/// Most entries accepted in the unprotected header.
pub const MAX_UNPROTECTED_ENTRIES: usize = 16;

/// The protected header of every document Cloister signs: `{1: -35}`.
const PROTECTED_ES384: [u8; 4] = [0xa1, 0x01, 0x38, 0x22];

/// Errors decoding, verifying or producing a COSE_Sign1.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoseError {
    /// The input exceeds [`MAX_COSE_LEN`].
    #[error("COSE document of {0} bytes exceeds the limit of {MAX_COSE_LEN} bytes")]
    TooLarge(usize),
    /// The bytes are not a COSE_Sign1 structure.
    #[error("malformed COSE_Sign1: {0}")]
    Malformed(String),
    /// Bytes follow the COSE_Sign1 structure.
    #[error("{0} trailing bytes after the COSE_Sign1 structure")]
    TrailingBytes(usize),
    /// The protected header does not name an algorithm.
    #[error("the protected header names no algorithm")]
    MissingAlgorithm,
    /// The algorithm is not ES384.
    #[error("unsupported COSE algorithm {0} (only ES384, -35, is accepted)")]
    UnsupportedAlgorithm(String),
    /// The protected header lists critical parameters this implementation does not process.
    #[error("the protected header has critical parameters")]
    CriticalHeaders,
    /// The signature does not verify.
    #[error("the COSE signature does not verify")]
    BadSignature,
    /// Signing failed.
    #[error("signing failed")]
    SigningFailed,
}

/// A decoded COSE_Sign1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoseSign1 {
    /// The protected header, as encoded (it is covered by the signature byte for byte).
    pub protected: Vec<u8>,
    /// The payload.
    pub payload: Vec<u8>,
    /// The signature.
    pub signature: Vec<u8>,
}

fn malformed(what: &str) -> CoseError {
    CoseError::Malformed(what.to_string())
}

impl CoseSign1 {
    /// Decodes an untagged or tag-18 COSE_Sign1 from exactly `bytes`.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, CoseError> {
        if bytes.len() > MAX_COSE_LEN {
            return Err(CoseError::TooLarge(bytes.len()));
        }
        let mut reader = bytes;
        let value: Value = ciborium::de::from_reader(&mut reader)
            .map_err(|e| CoseError::Malformed(e.to_string()))?;
        if !reader.is_empty() {
            return Err(CoseError::TrailingBytes(reader.len()));
        }
        let items = match value {
            Value::Tag(COSE_SIGN1_TAG, inner) => match *inner {
                Value::Array(items) => items,
                _ => return Err(malformed("tag 18 does not wrap an array")),
            },
            Value::Tag(tag, _) => {
                return Err(CoseError::Malformed(format!("unexpected tag {tag}")));
            }
            Value::Array(items) => items,
            _ => return Err(malformed("not an array")),
        };
        let [protected, unprotected, payload, signature]: [Value; 4] = items
            .try_into()
            .map_err(|_| malformed("array does not have 4 elements"))?;
        let Value::Bytes(protected) = protected else {
            return Err(malformed("protected header is not a byte string"));
        };
        if protected.len() > MAX_PROTECTED_LEN {
            return Err(malformed("protected header too large"));
        }
        match unprotected {
            Value::Map(entries) if entries.len() <= MAX_UNPROTECTED_ENTRIES => {}
            Value::Map(_) => return Err(malformed("unprotected header too large")),
            _ => return Err(malformed("unprotected header is not a map")),
        }
        let Value::Bytes(payload) = payload else {
            return Err(malformed(
                "payload is not a byte string (detached payloads are not accepted)",
            ));
        };
        let Value::Bytes(signature) = signature else {
            return Err(malformed("signature is not a byte string"));
        };
        Ok(Self {
            protected,
            payload,
            signature,
        })
    }

    /// Checks that the protected header names ES384 and nothing critical.
    pub fn check_es384(&self) -> Result<(), CoseError> {
        if self.protected.is_empty() {
            return Err(CoseError::MissingAlgorithm);
        }
        let mut reader = self.protected.as_slice();
        let value: Value = ciborium::de::from_reader(&mut reader)
            .map_err(|e| CoseError::Malformed(format!("protected header: {e}")))?;
        if !reader.is_empty() {
            return Err(malformed("trailing bytes in the protected header"));
        }
        let Value::Map(entries) = value else {
            return Err(malformed("protected header is not a map"));
        };
        let mut alg = None;
        for (key, value) in entries {
            match key.as_integer().map(i128::from) {
                Some(1) => {
                    if alg.is_some() {
                        return Err(malformed("duplicate algorithm parameter"));
                    }
                    alg = Some(value);
                }
                Some(2) => return Err(CoseError::CriticalHeaders),
                _ => {}
            }
        }
        match alg {
            None => Err(CoseError::MissingAlgorithm),
            Some(Value::Integer(i)) if i128::from(i) == i128::from(ALG_ES384) => Ok(()),
            Some(Value::Integer(i)) => {
                Err(CoseError::UnsupportedAlgorithm(i128::from(i).to_string()))
            }
            Some(Value::Text(t)) => Err(CoseError::UnsupportedAlgorithm(format!("{t:?}"))),
            Some(_) => Err(malformed(
                "algorithm is neither an integer nor a text string",
            )),
        }
    }

    /// The `Sig_structure` the signature covers.
    pub fn sig_structure(&self) -> Vec<u8> {
        sig_structure(&self.protected, &self.payload)
    }

    /// Verifies the ES384 signature with an uncompressed P-384 public key point.
    /// Call [`CoseSign1::check_es384`] first.
    pub fn verify_es384(&self, public_point: &[u8]) -> Result<(), CoseError> {
        if self.signature.len() != ES384_SIGNATURE_LEN {
            return Err(CoseError::BadSignature);
        }
        UnparsedPublicKey::new(&signature::ECDSA_P384_SHA384_FIXED, public_point)
            .verify(&self.sig_structure(), &self.signature)
            .map_err(|_| CoseError::BadSignature)
    }
}

/// Appends a CBOR major-type header with argument `len`.
fn push_header(out: &mut Vec<u8>, major: u8, len: usize) {
    let m = major << 5;
    // usize -> u64 is lossless on every supported target.
    let len = len as u64;
    if let Ok(small @ 0..24) = u8::try_from(len) {
        out.push(m | small);
    } else if let Ok(len) = u8::try_from(len) {
        out.extend_from_slice(&[m | 24, len]);
    } else if let Ok(len) = u16::try_from(len) {
        out.push(m | 25);
        out.extend_from_slice(&len.to_be_bytes());
    } else if let Ok(len) = u32::try_from(len) {
        out.push(m | 26);
        out.extend_from_slice(&len.to_be_bytes());
    } else {
        out.push(m | 27);
        out.extend_from_slice(&len.to_be_bytes());
    }
}

fn push_bstr(out: &mut Vec<u8>, bytes: &[u8]) {
    push_header(out, 2, bytes.len());
    out.extend_from_slice(bytes);
}

/// Encodes `["Signature1", protected, h'', payload]`.
pub fn sig_structure(protected: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + protected.len() + payload.len());
    out.push(0x84);
    push_header(&mut out, 3, 10);
    out.extend_from_slice(b"Signature1");
    push_bstr(&mut out, protected);
    out.push(0x40);
    push_bstr(&mut out, payload);
    out
}

/// Signs `payload` with ES384 and returns the untagged COSE_Sign1 bytes. `key` must have been
/// created for [`signature::ECDSA_P384_SHA384_FIXED_SIGNING`].
pub fn sign_es384(
    payload: &[u8],
    key: &EcdsaKeyPair,
    rng: &SystemRandom,
) -> Result<Vec<u8>, CoseError> {
    let tbs = sig_structure(&PROTECTED_ES384, payload);
    let sig = key.sign(rng, &tbs).map_err(|_| CoseError::SigningFailed)?;
    if sig.as_ref().len() != ES384_SIGNATURE_LEN {
        return Err(CoseError::SigningFailed);
    }
    let mut out = Vec::with_capacity(payload.len() + 128);
    out.push(0x84);
    push_bstr(&mut out, &PROTECTED_ES384);
    out.push(0xa0);
    push_bstr(&mut out, payload);
    push_bstr(&mut out, sig.as_ref());
    Ok(out)
}

/// Encodes a COSE_Sign1 from its parts (untagged). Used to build test and fuzz inputs.
pub fn encode_parts(protected: &[u8], payload: &[u8], signature: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + protected.len() + signature.len() + 16);
    out.push(0x84);
    push_bstr(&mut out, protected);
    out.push(0xa0);
    push_bstr(&mut out, payload);
    push_bstr(&mut out, signature);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::signature::KeyPair;

    fn key() -> EcdsaKeyPair {
        EcdsaKeyPair::generate(&signature::ECDSA_P384_SHA384_FIXED_SIGNING).unwrap()
    }

    #[test]
    fn sign_then_verify_untagged_and_tagged() {
        let key = key();
        let rng = SystemRandom::new();
        let doc = sign_es384(b"hello payload", &key, &rng).unwrap();
        let cose = CoseSign1::from_slice(&doc).unwrap();
        cose.check_es384().unwrap();
        cose.verify_es384(key.public_key().as_ref()).unwrap();
        assert_eq!(cose.payload, b"hello payload");

        let mut tagged = vec![0xd2];
        tagged.extend_from_slice(&doc);
        let cose2 = CoseSign1::from_slice(&tagged).unwrap();
        assert_eq!(cose, cose2);

        let mut other_tag = vec![0xd1];
        other_tag.extend_from_slice(&doc);
        assert!(matches!(
            CoseSign1::from_slice(&other_tag),
            Err(CoseError::Malformed(_))
        ));

        let mut trailing = doc.clone();
        trailing.push(0);
        assert_eq!(
            CoseSign1::from_slice(&trailing),
            Err(CoseError::TrailingBytes(1))
        );
    }

    #[test]
    fn other_key_and_flipped_bits_fail() {
        let key = key();
        let rng = SystemRandom::new();
        let doc = sign_es384(b"payload", &key, &rng).unwrap();
        let cose = CoseSign1::from_slice(&doc).unwrap();
        assert_eq!(
            cose.verify_es384(self::key().public_key().as_ref()),
            Err(CoseError::BadSignature)
        );
        let mut c = cose.clone();
        c.payload[0] ^= 1;
        assert_eq!(
            c.verify_es384(key.public_key().as_ref()),
            Err(CoseError::BadSignature)
        );
        let mut c = cose;
        c.signature.pop();
        assert_eq!(
            c.verify_es384(key.public_key().as_ref()),
            Err(CoseError::BadSignature)
        );
    }

    #[test]
    fn algorithm_checks() {
        let es256 = encode_parts(&[0xa1, 0x01, 0x26], b"p", &[0; 64]);
        assert_eq!(
            CoseSign1::from_slice(&es256).unwrap().check_es384(),
            Err(CoseError::UnsupportedAlgorithm("-7".into()))
        );
        let none = encode_parts(&[], b"p", &[0; 96]);
        assert_eq!(
            CoseSign1::from_slice(&none).unwrap().check_es384(),
            Err(CoseError::MissingAlgorithm)
        );
        let crit = encode_parts(&[0xa2, 0x01, 0x38, 0x22, 0x02, 0x81, 0x01], b"p", &[0; 96]);
        assert_eq!(
            CoseSign1::from_slice(&crit).unwrap().check_es384(),
            Err(CoseError::CriticalHeaders)
        );
    }

    #[test]
    fn structure_errors() {
        for bad in [
            &[][..],
            &[0x83, 0x40, 0xa0, 0x40][..],
            &[0x84, 0x40, 0xa0, 0xf6, 0x40][..],
            &[0x84, 0x40, 0x80, 0x40, 0x40][..],
            &[0xa0][..],
        ] {
            assert!(CoseSign1::from_slice(bad).is_err(), "{bad:?}");
        }
        assert!(matches!(
            CoseSign1::from_slice(&vec![0u8; MAX_COSE_LEN + 1]),
            Err(CoseError::TooLarge(_))
        ));
    }
}
