//! CMS EnvelopedData (RFC 5652) for `CiphertextForRecipient`.
//!
//! The output is DER: a ContentInfo of type envelopedData with one KeyTransRecipientInfo
//! (rid = subjectKeyIdentifier, the SHA-1 of the recipient's subjectPublicKey as in RFC 5280
//! 4.2.1.2), the 32-byte content key wrapped with RSAES-OAEP (SHA-256, MGF1-SHA-256, empty
//! label), and the content encrypted with AES-256-CBC (PKCS#7 padding, IV in the algorithm
//! parameters). This is the structure AWS KMS returns; clients must also accept BER.

use crate::error::{KmsError, KmsResult};
use aws_lc_rs::cipher::{PaddedBlockEncryptingKey, UnboundCipherKey, AES_256};
use aws_lc_rs::rsa::{OaepPublicEncryptingKey, PublicEncryptingKey, OAEP_SHA256_MGF1SHA256};
use zeroize::Zeroizing;

/// Largest recipient public key (DER SPKI) accepted.
pub const MAX_SPKI_LEN: usize = 2048;

/// OIDs in DER content form.
pub mod oid {
    /// id-envelopedData 1.2.840.113549.1.7.3
    pub const ENVELOPED_DATA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x03];
    /// id-data 1.2.840.113549.1.7.1
    pub const DATA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x01];
    /// id-RSAES-OAEP 1.2.840.113549.1.1.7
    pub const RSAES_OAEP: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x07];
    /// id-mgf1 1.2.840.113549.1.1.8
    pub const MGF1: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x08];
    /// id-sha256 2.16.840.1.101.3.4.2.1
    pub const SHA256: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01];
    /// id-aes256-CBC 2.16.840.1.101.3.4.1.42
    pub const AES256_CBC: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x01, 0x2a];
}

/// Appends a DER TLV.
fn tlv(out: &mut Vec<u8>, tag: u8, content: &[u8]) {
    out.push(tag);
    let n = content.len();
    if n < 0x80 {
        out.push(n as u8);
    } else {
        let bytes = n.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
}

fn der(tag: u8, parts: &[&[u8]]) -> Vec<u8> {
    let content: Vec<u8> = parts.concat();
    let mut out = Vec::with_capacity(content.len() + 6);
    tlv(&mut out, tag, &content);
    out
}

fn algorithm_identifier(oid_bytes: &[u8], params: Option<&[u8]>) -> Vec<u8> {
    let o = der(0x06, &[oid_bytes]);
    match params {
        Some(p) => der(0x30, &[&o, p]),
        None => der(0x30, &[&o]),
    }
}

/// The AlgorithmIdentifier of RSAES-OAEP with SHA-256 and MGF1-SHA-256.
pub fn oaep_sha256_algorithm() -> Vec<u8> {
    let null = [0x05u8, 0x00];
    let sha256 = algorithm_identifier(oid::SHA256, Some(&null));
    let mgf1 = algorithm_identifier(oid::MGF1, Some(&sha256));
    let params = der(0x30, &[&der(0xa0, &[&sha256]), &der(0xa1, &[&mgf1])]);
    algorithm_identifier(oid::RSAES_OAEP, Some(&params))
}

/// Reads the subjectPublicKey BIT STRING contents out of a DER SPKI (for the key identifier).
fn spki_public_key_bits(spki: &[u8]) -> Option<&[u8]> {
    fn read(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let tag = *b.first()?;
        let first = *b.get(1)? as usize;
        let (len, hdr) = if first < 0x80 {
            (first, 2)
        } else {
            let n = first & 0x7f;
            if n == 0 || n > 4 {
                return None;
            }
            let mut len = 0usize;
            for i in 0..n {
                len = (len << 8) | *b.get(2 + i)? as usize;
            }
            (len, 2 + n)
        };
        let end = hdr.checked_add(len)?;
        Some((tag, b.get(hdr..end)?, b.get(end..)?))
    }
    let (tag, seq, _) = read(spki)?;
    if tag != 0x30 {
        return None;
    }
    let (_, _alg, rest) = read(seq)?;
    let (tag, bits, _) = read(rest)?;
    (tag == 0x03).then_some(bits)
}

/// A recipient's RSA public key, parsed once and reused.
pub struct RecipientKey {
    key: OaepPublicEncryptingKey,
    key_id: Vec<u8>,
}

impl std::fmt::Debug for RecipientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecipientKey")
            .field("key_id", &hex::encode(&self.key_id))
            .finish()
    }
}

impl RecipientKey {
    /// Parses a DER SubjectPublicKeyInfo of an RSA key.
    pub fn from_spki(spki: &[u8]) -> KmsResult<Self> {
        if spki.is_empty() || spki.len() > MAX_SPKI_LEN {
            return Err(KmsError::Validation(
                "The attestation document's public key is not a valid RSA key".into(),
            ));
        }
        let public = PublicEncryptingKey::from_der(spki).map_err(|_| {
            KmsError::Validation(
                "The attestation document's public key is not a DER SubjectPublicKeyInfo of an RSA key".into(),
            )
        })?;
        if public.key_size_bits() < 2048 {
            return Err(KmsError::Validation(
                "The attestation document's RSA key is shorter than 2048 bits".into(),
            ));
        }
        let key =
            OaepPublicEncryptingKey::new(public).map_err(|e| KmsError::internal("oaep key", e))?;
        let bits = spki_public_key_bits(spki).unwrap_or(spki);
        let key_id = aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY,
            bits.get(1..).unwrap_or_default(),
        )
        .as_ref()
        .to_vec();
        Ok(Self { key, key_id })
    }

    /// Seals `plaintext` into a DER CMS EnvelopedData for this key.
    pub fn seal(&self, plaintext: &[u8]) -> KmsResult<Vec<u8>> {
        let mut cek = Zeroizing::new([0u8; 32]);
        aws_lc_rs::rand::fill(&mut cek[..]).map_err(|e| KmsError::internal("random", e))?;
        let enc_key = PaddedBlockEncryptingKey::cbc_pkcs7(
            UnboundCipherKey::new(&AES_256, &cek[..])
                .map_err(|e| KmsError::internal("cbc key", e))?,
        )
        .map_err(|e| KmsError::internal("cbc key", e))?;
        let mut content = plaintext.to_vec();
        let ctx = enc_key
            .encrypt(&mut content)
            .map_err(|e| KmsError::internal("cbc encrypt", e))?;
        let iv: &[u8] = (&ctx)
            .try_into()
            .map_err(|e| KmsError::internal("cbc iv", e))?;
        let mut wrapped = vec![0u8; self.key.ciphertext_size()];
        let wrapped_len = self
            .key
            .encrypt(&OAEP_SHA256_MGF1SHA256, &cek[..], &mut wrapped, None)
            .map_err(|e| KmsError::internal("oaep encrypt", e))?
            .len();
        wrapped.truncate(wrapped_len);

        let int = |v: u8| der(0x02, &[&[v]]);
        let rid = der(0x80, &[&self.key_id]);
        let ktri = der(
            0x30,
            &[
                &int(2),
                &rid,
                &oaep_sha256_algorithm(),
                &der(0x04, &[&wrapped]),
            ],
        );
        let recipient_infos = der(0x31, &[&ktri]);
        let cea = algorithm_identifier(oid::AES256_CBC, Some(&der(0x04, &[iv])));
        let eci = der(
            0x30,
            &[&der(0x06, &[oid::DATA]), &cea, &der(0x80, &[&content])],
        );
        let enveloped = der(0x30, &[&int(2), &recipient_infos, &eci]);
        Ok(der(
            0x30,
            &[
                &der(0x06, &[oid::ENVELOPED_DATA]),
                &der(0xa0, &[&enveloped]),
            ],
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_lengths_are_minimal() {
        let mut out = Vec::new();
        tlv(&mut out, 0x04, &[0u8; 200]);
        assert_eq!(&out[..3], &[0x04, 0x81, 200]);
        let mut out = Vec::new();
        tlv(&mut out, 0x04, &[0u8; 0x1234]);
        assert_eq!(&out[..4], &[0x04, 0x82, 0x12, 0x34]);
    }

    #[test]
    fn rejects_non_rsa_keys() {
        assert!(RecipientKey::from_spki(&[]).is_err());
        assert!(RecipientKey::from_spki(&[0x30, 0x00]).is_err());
        let ec = aws_lc_rs::signature::EcdsaKeyPair::generate(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
        )
        .unwrap();
        use aws_lc_rs::encoding::AsDer;
        use aws_lc_rs::signature::KeyPair;
        let spki = ec.public_key().as_der().unwrap();
        assert!(RecipientKey::from_spki(spki.as_ref()).is_err());
    }
}
