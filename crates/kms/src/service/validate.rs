//! Field checks with AWS's validation messages, and the small helpers the operations share
//! (random bytes, data-key pairs, aliases and tags).

use super::request::TagParam;
use crate::error::{KmsError, KmsResult};
use crate::store::Tag;
use zeroize::Zeroizing;

pub(super) fn required<T>(v: Option<T>, field: &str) -> KmsResult<T> {
    v.ok_or_else(|| KmsError::missing(field))
}

pub(super) fn check_len(field: &str, len: usize, min: usize, max: usize) -> KmsResult<()> {
    if len < min {
        return Err(KmsError::Validation(format!(
            "1 validation error detected: Value at '{field}' failed to satisfy constraint: Member must have length greater than or equal to {min}"
        )));
    }
    if len > max {
        return Err(KmsError::Validation(format!(
            "1 validation error detected: Value at '{field}' failed to satisfy constraint: Member must have length less than or equal to {max}"
        )));
    }
    Ok(())
}

pub(super) fn check_range(field: &str, v: i64, min: i64, max: i64) -> KmsResult<usize> {
    if v < min || v > max {
        return Err(KmsError::Validation(format!(
            "1 validation error detected: Value '{v}' at '{field}' failed to satisfy constraint: Member must have value between {min} and {max}"
        )));
    }
    usize::try_from(v).map_err(|_| KmsError::Validation(format!("{field} out of range")))
}

pub(super) fn check_symmetric_algorithm(alg: &Option<String>) -> KmsResult<()> {
    match alg.as_deref() {
        None | Some("SYMMETRIC_DEFAULT") => Ok(()),
        Some(other) => Err(KmsError::InvalidKeyUsage(format!(
            "The encryption algorithm {other} is not compatible with the type of the specified key"
        ))),
    }
}

pub(super) fn random(n: usize) -> KmsResult<Zeroizing<Vec<u8>>> {
    let mut v = Zeroizing::new(vec![0u8; n]);
    aws_lc_rs::rand::fill(&mut v[..]).map_err(|e| KmsError::internal("random", e))?;
    Ok(v)
}

/// Returns the data-key pair (PKCS#8 private key, SPKI public key) of `spec`.
pub(super) fn generate_key_pair(spec: &str) -> KmsResult<(Zeroizing<Vec<u8>>, Vec<u8>)> {
    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::rsa::KeySize;
    use aws_lc_rs::signature::KeyPair as _;
    let rsa = |size: KeySize| -> KmsResult<(Zeroizing<Vec<u8>>, Vec<u8>)> {
        let kp = aws_lc_rs::rsa::KeyPair::generate(size)
            .map_err(|e| KmsError::internal("rsa keygen", e))?;
        let private: aws_lc_rs::encoding::Pkcs8V1Der<'_> = kp
            .as_der()
            .map_err(|e| KmsError::internal("rsa pkcs8", e))?;
        let public: aws_lc_rs::encoding::PublicKeyX509Der<'_> = kp
            .public_key()
            .as_der()
            .map_err(|e| KmsError::internal("rsa spki", e))?;
        Ok((
            Zeroizing::new(private.as_ref().to_vec()),
            public.as_ref().to_vec(),
        ))
    };
    let ec = |alg: &'static aws_lc_rs::signature::EcdsaSigningAlgorithm| -> KmsResult<(Zeroizing<Vec<u8>>, Vec<u8>)> {
        let kp = aws_lc_rs::signature::EcdsaKeyPair::generate(alg)
            .map_err(|e| KmsError::internal("ec keygen", e))?;
        let private = kp
            .to_pkcs8v1()
            .map_err(|e| KmsError::internal("ec pkcs8", e))?;
        let public: aws_lc_rs::encoding::PublicKeyX509Der<'_> = kp
            .public_key()
            .as_der()
            .map_err(|e| KmsError::internal("ec spki", e))?;
        Ok((
            Zeroizing::new(private.as_ref().to_vec()),
            public.as_ref().to_vec(),
        ))
    };
    match spec {
        "RSA_2048" => rsa(KeySize::Rsa2048),
        "RSA_3072" => rsa(KeySize::Rsa3072),
        "RSA_4096" => rsa(KeySize::Rsa4096),
        "ECC_NIST_P256" => ec(&aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1_SIGNING),
        "ECC_NIST_P384" => ec(&aws_lc_rs::signature::ECDSA_P384_SHA384_ASN1_SIGNING),
        "ECC_NIST_P521" => ec(&aws_lc_rs::signature::ECDSA_P521_SHA512_ASN1_SIGNING),
        "ECC_SECG_P256K1" => ec(&aws_lc_rs::signature::ECDSA_P256K1_SHA256_ASN1_SIGNING),
        other => Err(KmsError::Validation(format!(
            "1 validation error detected: Value '{other}' at 'keyPairSpec' failed to satisfy constraint: Member must satisfy enum value set: [RSA_2048, RSA_3072, RSA_4096, ECC_NIST_P256, ECC_NIST_P384, ECC_NIST_P521, ECC_SECG_P256K1]"
        ))),
    }
}

pub(super) fn validate_alias_name(name: &str) -> KmsResult<()> {
    check_len("aliasName", name.len(), 1, 256)?;
    let Some(rest) = name.strip_prefix("alias/") else {
        return Err(KmsError::Validation(
            "Alias must start with the prefix \"alias/\"".into(),
        ));
    };
    if rest.is_empty()
        || !rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'_' | b'-'))
    {
        return Err(KmsError::Validation(format!(
            "1 validation error detected: Value '{name}' at 'aliasName' failed to satisfy constraint: Member must satisfy regular expression pattern: ^[a-zA-Z0-9:/_-]+$"
        )));
    }
    if rest.starts_with("aws/") {
        return Err(KmsError::InvalidAliasName(
            "Cannot create alias with prefix 'alias/aws/'".into(),
        ));
    }
    Ok(())
}

pub(super) fn validate_tags(tags: &[Tag]) -> KmsResult<()> {
    for t in tags {
        if t.key.is_empty() || t.key.len() > 128 || t.value.len() > 256 {
            return Err(KmsError::Validation(
                "Tag keys must be 1..128 characters and values 0..256".into(),
            ));
        }
        if t.key.starts_with("aws:") {
            return Err(KmsError::Tag(
                "Tag keys beginning with 'aws:' are reserved".into(),
            ));
        }
    }
    Ok(())
}

pub(super) fn take_tags(tags: Vec<TagParam>) -> KmsResult<Vec<Tag>> {
    let tags: Vec<Tag> = tags
        .into_iter()
        .map(|t| {
            Ok(Tag {
                key: required(t.tag_key, "tags.member.tagKey")?,
                value: required(t.tag_value, "tags.member.tagValue")?,
            })
        })
        .collect::<KmsResult<_>>()?;
    validate_tags(&tags)?;
    Ok(tags)
}
