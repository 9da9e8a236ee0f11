//! CMS EnvelopedData (RFC 5652) for `CiphertextForRecipient`.
//!
//! The output is DER: a ContentInfo of type envelopedData with one KeyTransRecipientInfo
//! (rid = subjectKeyIdentifier, the SHA-1 of the recipient's subjectPublicKey as in RFC 5280
//! 4.2.1.2), the 32-byte content key wrapped with RSAES-OAEP (SHA-256, MGF1-SHA-256, empty
//! label), and the content encrypted with AES-256-CBC (PKCS#7 padding, IV in the algorithm
//! parameters). This is the structure AWS KMS returns; clients must also accept BER.
//!
//! aws-lc does the cryptography ([`RecipientKey::seal`]); the `cms` crate's types describe the
//! structure and `der` encodes it (`encode`), with the OIDs from `const-oid`'s database.

use crate::error::{KmsError, KmsResult};
use aws_lc_rs::cipher::{PaddedBlockEncryptingKey, UnboundCipherKey, AES_256};
use aws_lc_rs::rsa::{OaepPublicEncryptingKey, PublicEncryptingKey, OAEP_SHA256_MGF1SHA256};
use cms::content_info::{CmsVersion, ContentInfo};
use cms::enveloped_data::{
    EncryptedContentInfo, EnvelopedData, KeyTransRecipientInfo, RecipientIdentifier, RecipientInfo,
    RecipientInfos,
};
use const_oid::db::{rfc5911, rfc5912};
use der::asn1::{Null, OctetString, SetOfVec};
use der::{Any, Decode, Encode, Sequence};
use x509_cert::ext::pkix::SubjectKeyIdentifier;
use x509_cert::spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoRef};
use zeroize::Zeroizing;

/// Largest recipient public key (DER SPKI) accepted.
pub const MAX_SPKI_LEN: usize = 2048;

/// `RSAES-OAEP-params` (RFC 8017 A.2.1) with the hash and mask generation written out and the
/// default (empty) label left out.
#[derive(Debug, Sequence)]
struct RsaesOaepParams {
    #[asn1(context_specific = "0", tag_mode = "EXPLICIT")]
    hash: AlgorithmIdentifierOwned,
    #[asn1(context_specific = "1", tag_mode = "EXPLICIT")]
    mask_gen: AlgorithmIdentifierOwned,
}

/// The AlgorithmIdentifier of RSAES-OAEP with SHA-256 and MGF1-SHA-256.
fn oaep_sha256_algorithm() -> der::Result<AlgorithmIdentifierOwned> {
    let sha256 = AlgorithmIdentifierOwned {
        oid: rfc5912::ID_SHA_256,
        parameters: Some(Any::from(Null)),
    };
    let mgf1 = AlgorithmIdentifierOwned {
        oid: rfc5912::ID_MGF_1,
        parameters: Some(Any::encode_from(&sha256)?),
    };
    let params = RsaesOaepParams {
        hash: sha256,
        mask_gen: mgf1,
    };
    Ok(AlgorithmIdentifierOwned {
        oid: rfc5912::ID_RSAES_OAEP,
        parameters: Some(Any::encode_from(&params)?),
    })
}

/// The subjectKeyIdentifier of a DER SPKI: the SHA-1 of its subjectPublicKey bits.
fn key_identifier(spki: &[u8]) -> Vec<u8> {
    let parsed = SubjectPublicKeyInfoRef::from_der(spki);
    // The key already parsed as an SPKI (aws-lc); hashing all but the first byte is only a
    // fallback for an encoding aws-lc accepts and `spki` does not.
    let bits = match &parsed {
        Ok(info) => info.subject_public_key.raw_bytes(),
        Err(_) => spki.get(1..).unwrap_or_default(),
    };
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, bits)
        .as_ref()
        .to_vec()
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
        let key_id = key_identifier(spki);
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
        encode(&self.key_id, &wrapped, iv, &content)
            .map_err(|e| KmsError::internal("cms encode", e))
    }
}

/// The DER ContentInfo for one key-transport recipient: a pure function of the recipient's key
/// identifier, the wrapped content key, the CBC IV and the encrypted content.
fn encode(key_id: &[u8], wrapped_key: &[u8], iv: &[u8], ciphertext: &[u8]) -> der::Result<Vec<u8>> {
    let ktri = KeyTransRecipientInfo {
        version: CmsVersion::V2,
        rid: RecipientIdentifier::SubjectKeyIdentifier(SubjectKeyIdentifier(OctetString::new(
            key_id,
        )?)),
        key_enc_alg: oaep_sha256_algorithm()?,
        enc_key: OctetString::new(wrapped_key)?,
    };
    let mut recipients = SetOfVec::new();
    recipients.insert(RecipientInfo::Ktri(ktri))?;
    let enveloped = EnvelopedData {
        version: CmsVersion::V2,
        originator_info: None,
        recip_infos: RecipientInfos(recipients),
        encrypted_content: EncryptedContentInfo {
            content_type: rfc5911::ID_DATA,
            content_enc_alg: AlgorithmIdentifierOwned {
                oid: rfc5911::ID_AES_256_CBC,
                parameters: Some(Any::encode_from(&OctetString::new(iv)?)?),
            },
            encrypted_content: Some(OctetString::new(ciphertext)?),
        },
        unprotected_attrs: None,
    };
    ContentInfo {
        content_type: rfc5911::ID_ENVELOPED_DATA,
        content: Any::encode_from(&enveloped)?,
    }
    .to_der()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_lengths_are_minimal() {
        let out = OctetString::new([0u8; 200]).unwrap().to_der().unwrap();
        assert_eq!(&out[..3], &[0x04, 0x81, 200]);
        let out = OctetString::new([0u8; 0x1234]).unwrap().to_der().unwrap();
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

    /// A fixed 2048-bit RSA recipient key (DER SubjectPublicKeyInfo).
    const SPKI_HEX: [&str; 7] = [
        "30820122300d06092a864886f70d01010105000382010f003082010a0282010100b3eb9f2a02b37b6955eeba",
        "b4c1099462e5d7cf567497cfca0a72eb9a4cd342ae20b6b25ae08889216e82a870d389cee77f5ebd6143176f",
        "f36a6bea09aafb76eca830038f4248200daecd9c0551cbb425f4f56d5320eb6a6b9f6dcf99c207ebee97c77d",
        "e9f810fe3d3ce54c89da317915b501593e0be5290f2038e7aec13a8e4800d5afe78d16854cf8ab00e06298aa",
        "c3adb89c60481e07a47ea8e7317af42b80568de88ddbc5b4f46302346a616746f62d0e57e219e160910ef13e",
        "2352705b86f3fb922bdb987b9b73b0fec178c451b7e6e73d8e6e92447ee5e84e88d68ef93bbd8598781f3456",
        "6647be311841eb1296f5fc1b418b3c1a66b7d12968e2f485070203010001",
    ];

    fn spki() -> Vec<u8> {
        hex::decode(SPKI_HEX.concat()).unwrap()
    }

    /// Fixed inputs: key identifier, wrapped key (256 bytes: long-form lengths), IV, and
    /// `content_len` bytes of ciphertext.
    fn fixed(content_len: usize) -> (Vec<u8>, Vec<u8>, Vec<u8>, Vec<u8>) {
        let key_id = RecipientKey::from_spki(&spki()).unwrap().key_id;
        let wrapped: Vec<u8> = (0..=255u8).rev().collect();
        let iv: Vec<u8> = (0xf0..=0xffu8).collect();
        let ciphertext: Vec<u8> = (0..=250u8).cycle().take(content_len).collect();
        (key_id, wrapped, iv, ciphertext)
    }

    #[test]
    fn key_id_is_sha1_of_the_public_key_bits() {
        let key = RecipientKey::from_spki(&spki()).unwrap();
        assert_eq!(
            hex::encode(&key.key_id),
            "0281809270e5a13611ab0da24c0e29070d65e825"
        );
    }

    #[test]
    fn sealed_output_is_der_cms_for_the_recipient() {
        let key = RecipientKey::from_spki(&spki()).unwrap();
        let sealed = key.seal(b"attested secret").unwrap();
        let info = ContentInfo::from_der(&sealed).unwrap();
        // DER: decoding and encoding again gives the same bytes.
        assert_eq!(info.to_der().unwrap(), sealed);
        assert_eq!(info.content_type, rfc5911::ID_ENVELOPED_DATA);
        let enveloped: EnvelopedData = info.content.decode_as().unwrap();
        assert_eq!(enveloped.version, CmsVersion::V2);
        assert_eq!(enveloped.recip_infos.0.len(), 1);
        let Some(RecipientInfo::Ktri(ktri)) = enveloped.recip_infos.0.get(0) else {
            panic!("not a KeyTransRecipientInfo");
        };
        assert_eq!(ktri.version, CmsVersion::V2);
        let RecipientIdentifier::SubjectKeyIdentifier(ski) = &ktri.rid else {
            panic!("rid is not a subjectKeyIdentifier");
        };
        assert_eq!(ski.0.as_bytes(), &key.key_id[..]);
        assert_eq!(ktri.key_enc_alg, oaep_sha256_algorithm().unwrap());
        assert_eq!(ktri.enc_key.as_bytes().len(), 256);
        let content = &enveloped.encrypted_content;
        assert_eq!(content.content_type, rfc5911::ID_DATA);
        assert_eq!(content.content_enc_alg.oid, rfc5911::ID_AES_256_CBC);
        let iv: OctetString = content
            .content_enc_alg
            .parameters
            .as_ref()
            .unwrap()
            .decode_as()
            .unwrap();
        assert_eq!(iv.as_bytes().len(), 16);
        // 15 bytes of plaintext pad to one AES block.
        assert_eq!(
            content.encrypted_content.as_ref().unwrap().as_bytes().len(),
            16
        );
    }

    #[test]
    fn encoding_is_pinned() {
        let (key_id, wrapped, iv, ciphertext) = fixed(48);
        let der = encode(&key_id, &wrapped, &iv, &ciphertext).unwrap();
        assert_eq!(hex::encode(&der), ENCODED_48.concat());
    }

    #[test]
    fn long_encodings_are_pinned() {
        for (len, want) in [
            (
                3000,
                "3f38971ef73a439b58ebd73bdb875f5213be66b1ad8748c669941e1276b55561",
            ),
            (
                70_000,
                "ff21300175ae5ca631060b373167aa7f640973746485fb71d8876a05b402abff",
            ),
        ] {
            let (key_id, wrapped, iv, ciphertext) = fixed(len);
            let der = encode(&key_id, &wrapped, &iv, &ciphertext).unwrap();
            let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &der);
            assert_eq!(hex::encode(digest.as_ref()), want, "{len} bytes of content");
        }
    }

    /// `encode` of `fixed(48)`.
    const ENCODED_48: [&str; 11] = [
        "308201d706092a864886f70d010703a08201c8308201c40201023182015f3082015b02010280140281809270",
        "e5a13611ab0da24c0e29070d65e825303c06092a864886f70d010107302fa00f300d06096086480165030402",
        "010500a11c301a06092a864886f70d010108300d0609608648016503040201050004820100fffefdfcfbfaf9",
        "f8f7f6f5f4f3f2f1f0efeeedecebeae9e8e7e6e5e4e3e2e1e0dfdedddcdbdad9d8d7d6d5d4d3d2d1d0cfcecd",
        "cccbcac9c8c7c6c5c4c3c2c1c0bfbebdbcbbbab9b8b7b6b5b4b3b2b1b0afaeadacabaaa9a8a7a6a5a4a3a2a1",
        "a09f9e9d9c9b9a999897969594939291908f8e8d8c8b8a898887868584838281807f7e7d7c7b7a7978777675",
        "74737271706f6e6d6c6b6a696867666564636261605f5e5d5c5b5a595857565554535251504f4e4d4c4b4a49",
        "4847464544434241403f3e3d3c3b3a393837363534333231302f2e2d2c2b2a292827262524232221201f1e1d",
        "1c1b1a191817161514131211100f0e0d0c0b0a09080706050403020100305c06092a864886f70d010701301d",
        "060960864801650304012a0410f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff8030000102030405060708090a0b0c",
        "0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f",
    ];
}
