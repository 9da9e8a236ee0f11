//! Signing with a private key this process never holds: a key service (AWS KMS, `cloister kms
//! serve`) or a hardware module signs the digest of the COSE `Sig_structure`.
//!
//! An [`ExternalSigner`] reports its public key (DER SubjectPublicKeyInfo, what KMS's
//! `GetPublicKey` returns) and signs a digest, answering with a DER `ECDSA-Sig-Value` (what KMS's
//! `Sign` returns). [`crate::EifSigner::external`] checks the key against the signing
//! certificate once, and every signature is converted to COSE's fixed-size `r || s`
//! ([`ecdsa_der_to_fixed`]) and verified against the certificate before it goes into an image.
//! This crate does no I/O for the signer: the transport lives with the caller.

use crate::algorithm::CoseAlgorithm;
use crate::error::{EifError, Result};
use der::Reader;

/// What an external signer's failures carry.
pub type ExternalError = Box<dyn std::error::Error + Send + Sync>;

/// A signing key held elsewhere.
pub trait ExternalSigner: Send + Sync {
    /// A name for messages (for a KMS key, its ARN).
    fn name(&self) -> String;

    /// The key's public key as DER SubjectPublicKeyInfo.
    fn public_key_spki(&self) -> std::result::Result<Vec<u8>, ExternalError>;

    /// Signs `digest`, the hash of the message under `algorithm`'s digest (SHA-384 for ES384),
    /// and returns a DER `ECDSA-Sig-Value` or the fixed-size `r || s`.
    fn sign_digest(
        &self,
        algorithm: CoseAlgorithm,
        digest: &[u8],
    ) -> std::result::Result<Vec<u8>, ExternalError>;
}

/// The reason an external signature is unusable, as the source of
/// [`EifError::ExternalSigner`].
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UnusableSignature(pub &'static str);

/// Converts an ECDSA signature from DER (`SEQUENCE { INTEGER r, INTEGER s }`) to the fixed-size
/// `r || s` COSE uses, each left-padded with zeros to the curve's size. A signature that is not
/// DER but has the fixed size is taken as `r || s` already. Refuses anything else: trailing
/// bytes, negative or oversized integers, zero values.
pub fn ecdsa_der_to_fixed(
    signature: &[u8],
    algorithm: CoseAlgorithm,
) -> std::result::Result<Vec<u8>, UnusableSignature> {
    let n = algorithm.scalar_len();
    let parsed = der::SliceReader::new(signature).and_then(|mut reader| {
        let pair = reader.sequence(|seq| {
            let r = seq.decode::<der::asn1::UintRef<'_>>()?;
            let s = seq.decode::<der::asn1::UintRef<'_>>()?;
            Ok((r.as_bytes().to_vec(), s.as_bytes().to_vec()))
        })?;
        reader.finish(pair)
    });
    let (r, s) = match parsed {
        Ok(pair) => pair,
        Err(_) if signature.len() == 2 * n => return Ok(signature.to_vec()),
        Err(_) => {
            return Err(UnusableSignature(
                "the signature is not a DER ECDSA-Sig-Value",
            ))
        }
    };
    let mut out = vec![0u8; 2 * n];
    for (i, v) in [r, s].iter().enumerate() {
        // UintRef strips leading zeros; zero itself is encoded as one zero byte.
        let v = match v.iter().position(|b| *b != 0) {
            Some(first) => &v[first..],
            None => return Err(UnusableSignature("the signature has a zero r or s")),
        };
        if v.len() > n {
            return Err(UnusableSignature(
                "the signature's r or s is larger than the curve allows",
            ));
        }
        let end = (i + 1) * n;
        out[end - v.len()..end].copy_from_slice(v);
    }
    Ok(out)
}

/// Wraps an external signer's failure.
pub(crate) fn signer_error(signer: &dyn ExternalSigner, source: ExternalError) -> EifError {
    EifError::ExternalSigner {
        signer: signer.name(),
        source,
    }
}

/// Asks `signer` for a signature of `message` under `algorithm` and returns it as `r || s`.
pub(crate) fn sign_message(
    signer: &dyn ExternalSigner,
    algorithm: CoseAlgorithm,
    message: &[u8],
) -> Result<Vec<u8>> {
    let digest = aws_lc_rs::digest::digest(algorithm.digest_algorithm(), message);
    let der = signer
        .sign_digest(algorithm, digest.as_ref())
        .map_err(|e| signer_error(signer, e))?;
    ecdsa_der_to_fixed(&der, algorithm).map_err(|e| signer_error(signer, Box::new(e)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{self as sig, EcdsaKeyPair};

    #[test]
    fn der_signatures_convert_to_what_the_fixed_form_verifies() {
        let rng = SystemRandom::new();
        for (alg, asn1, fixed) in [
            (
                CoseAlgorithm::Es256,
                &sig::ECDSA_P256_SHA256_ASN1_SIGNING,
                &sig::ECDSA_P256_SHA256_FIXED,
            ),
            (
                CoseAlgorithm::Es384,
                &sig::ECDSA_P384_SHA384_ASN1_SIGNING,
                &sig::ECDSA_P384_SHA384_FIXED,
            ),
            (
                CoseAlgorithm::Es512,
                &sig::ECDSA_P521_SHA512_ASN1_SIGNING,
                &sig::ECDSA_P521_SHA512_FIXED,
            ),
        ] {
            let key = EcdsaKeyPair::generate(asn1).unwrap();
            use aws_lc_rs::signature::KeyPair;
            let public = key.public_key().as_ref().to_vec();
            // Enough signatures that some have an r or s with leading zero bytes.
            for i in 0..64u32 {
                let msg = i.to_be_bytes();
                let der = key.sign(&rng, &msg).unwrap();
                let raw = ecdsa_der_to_fixed(der.as_ref(), alg).unwrap();
                assert_eq!(raw.len(), 2 * alg.scalar_len());
                sig::UnparsedPublicKey::new(fixed, &public)
                    .verify(&msg, &raw)
                    .unwrap();
                // Already fixed: unchanged.
                assert_eq!(ecdsa_der_to_fixed(&raw, alg).unwrap(), raw);
            }
        }
    }

    /// A signer over a key pair in this process, answering as KMS does: DER signatures of
    /// digests. `other` signs with a second key while reporting the first one's public key.
    struct DigestSigner {
        key: EcdsaKeyPair,
        other: Option<EcdsaKeyPair>,
    }

    impl ExternalSigner for DigestSigner {
        fn name(&self) -> String {
            "test-signer".into()
        }

        fn public_key_spki(&self) -> std::result::Result<Vec<u8>, ExternalError> {
            use aws_lc_rs::encoding::AsDer;
            use aws_lc_rs::signature::KeyPair;
            Ok(self.key.public_key().as_der()?.as_ref().to_vec())
        }

        fn sign_digest(
            &self,
            algorithm: CoseAlgorithm,
            digest: &[u8],
        ) -> std::result::Result<Vec<u8>, ExternalError> {
            let digest =
                aws_lc_rs::digest::Digest::import_less_safe(digest, algorithm.digest_algorithm())?;
            let key = self.other.as_ref().unwrap_or(&self.key);
            Ok(key.sign_digest(&digest)?.as_ref().to_vec())
        }
    }

    fn vector(name: &str) -> Vec<u8> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/vectors/eif");
        std::fs::read(dir.join(name)).unwrap()
    }

    fn vector_key() -> EcdsaKeyPair {
        let pem = vector("key.pem");
        let (_, der) = der::pem::decode_vec(&pem).unwrap();
        EcdsaKeyPair::from_private_key_der(&sig::ECDSA_P384_SHA384_ASN1_SIGNING, &der).unwrap()
    }

    #[test]
    fn an_external_key_signs_images_that_verify() {
        let cert = vector("cert.pem");
        let signer = DigestSigner {
            key: vector_key(),
            other: None,
        };
        let signer = crate::EifSigner::external(&cert, Box::new(signer)).unwrap();
        assert!(format!("{signer:?}").contains("test-signer"));
        let pcr0 = [7u8; 48];
        let section = signer.signature_section(&pcr0).unwrap();
        let parsed = crate::EifSignature::parse(&section).unwrap();
        let verified = parsed.verify(&pcr0).unwrap();
        assert_eq!(verified.algorithm(), CoseAlgorithm::Es384);
        assert_eq!(verified.pcr8(), &signer.certificate().pcr8());
    }

    #[test]
    fn an_external_key_that_is_not_the_certificates_is_refused() {
        let cert = vector("cert.pem");
        let fresh = || EcdsaKeyPair::generate(&sig::ECDSA_P384_SHA384_ASN1_SIGNING).unwrap();
        let wrong = DigestSigner {
            key: fresh(),
            other: None,
        };
        let err = crate::EifSigner::external(&cert, Box::new(wrong)).unwrap_err();
        assert!(
            matches!(&err, EifError::ExternalKeyMismatch { signer } if signer == "test-signer"),
            "{err:?}"
        );
        // Reports the certificate's key but signs with another: caught at signing time.
        let lying = DigestSigner {
            key: vector_key(),
            other: Some(fresh()),
        };
        let signer = crate::EifSigner::external(&cert, Box::new(lying)).unwrap();
        let err = signer.signature_section(&[0u8; 48]).unwrap_err();
        assert!(matches!(err, EifError::ExternalSigner { .. }), "{err:?}");
    }

    #[test]
    fn short_integers_are_left_padded() {
        // r = 1, s = 0x80 (DER adds a zero byte to keep it positive).
        let der = [0x30, 0x07, 0x02, 0x01, 0x01, 0x02, 0x02, 0x00, 0x80];
        let raw = ecdsa_der_to_fixed(&der, CoseAlgorithm::Es384).unwrap();
        assert_eq!(raw.len(), 96);
        assert_eq!(raw[47], 1);
        assert_eq!(raw[95], 0x80);
        assert!(raw[..47].iter().all(|b| *b == 0));
        assert!(raw[48..95].iter().all(|b| *b == 0));
    }

    #[test]
    fn malformed_signatures_are_refused() {
        let alg = CoseAlgorithm::Es384;
        let oversized = {
            let mut v = vec![0x30, 0x36, 0x02, 0x31, 0x01];
            v.extend([0x11; 48]);
            v.extend([0x02, 0x01, 0x01]);
            v
        };
        for bad in [
            &[][..],
            &[0x30],
            &[0x30, 0x00],
            // Trailing byte.
            &[0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01, 0x00],
            // Negative r.
            &[0x30, 0x06, 0x02, 0x01, 0x81, 0x02, 0x01, 0x01],
            // Zero s.
            &[0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x00],
            // Length beyond the input.
            &[0x30, 0x7f, 0x02, 0x01, 0x01],
            &oversized,
        ] {
            assert!(ecdsa_der_to_fixed(bad, alg).is_err(), "{bad:02x?}");
        }
    }
}
