//! The operations of asymmetric keys: Sign, Verify, GetPublicKey, RSA Encrypt and Decrypt,
//! DeriveSharedSecret, and CreateKey's choice of KeySpec and KeyUsage.
//!
//! Each operation follows the service's order: resolve the key, validate every field (bounded
//! lengths, AWS's enum values), evaluate the key policy, check the key state, then check that
//! the key's usage and spec allow the operation and algorithm (`InvalidKeyUsageException`), and
//! only then touch the private key (parsed once by the store, see [`crate::keys`]). Decrypt and
//! DeriveSharedSecret honour a Recipient exactly as the symmetric operations do: the secret is
//! sealed to the attested enclave as `CiphertextForRecipient` and the plaintext field left out.

use super::authz::Resolved;
use super::request::{
    CreateKeyRequest, DecryptRequest, DeriveSharedSecretRequest, EncryptRequest, KeyRequest,
    SignRequest, VerifyRequest,
};
use super::validate::{check_len, required};
use super::{b64, release, Service};
use crate::blob::MAX_BLOB_LEN;
use crate::error::{KmsError, KmsResult};
use crate::keys::{
    KeyMaterial, KeySpec, KeyUsage, MessageType, RsaEncryptionAlgorithm, SigningAlgorithm,
    KEY_AGREEMENT_ALGORITHM, KEY_SPECS, MAX_MESSAGE, MAX_PUBLIC_KEY, MAX_SIGNATURE,
    RSA_ENCRYPTION_ALGORITHMS, SIGNING_ALGORITHMS,
};
use serde_json::{json, Value};
use std::sync::Arc;

/// AWS's wording for a value outside an enum.
pub(super) fn enum_error(field: &str, value: &str, allowed: &[&str]) -> KmsError {
    KmsError::Validation(format!(
        "1 validation error detected: Value '{value}' at '{field}' failed to satisfy constraint: Member must satisfy enum value set: [{}]",
        allowed.join(", ")
    ))
}

/// True when a Decrypt names an RSA algorithm (anything `RSAES_`-prefixed: unknown ones are
/// refused with AWS's enum error on that path).
pub(super) fn is_rsa_algorithm(alg: &Option<String>) -> bool {
    alg.as_deref().is_some_and(|a| a.starts_with("RSAES_"))
}

fn parse_spec(field: &str, s: &str) -> KmsResult<KeySpec> {
    KeySpec::parse(s).ok_or_else(|| {
        let names: Vec<&str> = KEY_SPECS.iter().map(|k| k.as_str()).collect();
        enum_error(field, s, &names)
    })
}

/// CreateKey's KeySpec (or its older name CustomerMasterKeySpec) and KeyUsage: the spec
/// (SYMMETRIC_DEFAULT when absent) and the usage to store (`None` for a symmetric key).
pub(super) fn spec_and_usage(req: &CreateKeyRequest) -> KmsResult<(KeySpec, Option<KeyUsage>)> {
    let spec = match (
        req.key_spec.as_deref(),
        req.customer_master_key_spec.as_deref(),
    ) {
        (Some(_), Some(_)) => {
            return Err(KmsError::Validation(
                "You cannot specify KeySpec and CustomerMasterKeySpec in the same request. CustomerMasterKeySpec parameter is deprecated. Use KeySpec instead.".into(),
            ))
        }
        (Some(s), None) => parse_spec("keySpec", s)?,
        (None, Some(s)) => parse_spec("customerMasterKeySpec", s)?,
        (None, None) => KeySpec::SymmetricDefault,
    };
    let usage = match req.key_usage.as_deref() {
        Some(u) => KeyUsage::parse(u).ok_or_else(|| {
            enum_error(
                "keyUsage",
                u,
                &[
                    "SIGN_VERIFY",
                    "ENCRYPT_DECRYPT",
                    "GENERATE_VERIFY_MAC",
                    "KEY_AGREEMENT",
                ],
            )
        })?,
        // AWS's default, which only RSA and symmetric keys accept.
        None => KeyUsage::EncryptDecrypt,
    };
    if !spec.usages().contains(&usage) {
        return Err(KmsError::Validation(format!(
            "KeyUsage {} is not compatible with KeySpec {spec}",
            usage.as_str()
        )));
    }
    Ok((spec, (!spec.is_symmetric()).then_some(usage)))
}

fn parse_signing(req_alg: Option<&str>) -> KmsResult<SigningAlgorithm> {
    let a = required(req_alg, "signingAlgorithm")?;
    SigningAlgorithm::parse(a).ok_or_else(|| {
        let names: Vec<&str> = SIGNING_ALGORITHMS.iter().map(|s| s.as_str()).collect();
        enum_error("signingAlgorithm", a, &names)
    })
}

fn parse_message_type(t: Option<&str>) -> KmsResult<MessageType> {
    match t {
        None => Ok(MessageType::Raw),
        Some(t) => {
            MessageType::parse(t).ok_or_else(|| enum_error("messageType", t, &["RAW", "DIGEST"]))
        }
    }
}

fn parse_rsa_encryption(alg: &str) -> KmsResult<RsaEncryptionAlgorithm> {
    RsaEncryptionAlgorithm::parse(alg).ok_or_else(|| {
        let mut names = vec!["SYMMETRIC_DEFAULT"];
        names.extend(RSA_ENCRYPTION_ALGORITHMS.iter().map(|a| a.as_str()));
        names.push("SM2PKE");
        enum_error("encryptionAlgorithm", alg, &names)
    })
}

/// A response's JSON bytes.
fn encode<T: serde::Serialize>(v: &T) -> KmsResult<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| KmsError::internal("encode response", e))
}

fn no_context(context: &Option<crate::blob::EncryptionContext>) -> KmsResult<()> {
    match context {
        Some(c) if !c.is_empty() => Err(KmsError::Validation(
            "EncryptionContext is not supported with asymmetric KMS keys".into(),
        )),
        _ => Ok(()),
    }
}

impl Service {
    /// `InvalidKeyUsageException` unless `key` is a symmetric encryption key (for the
    /// operations only those keys do: GenerateDataKey*, ReEncrypt, symmetric Decrypt).
    pub(super) fn require_symmetric(key: &Resolved, action: &str) -> KmsResult<()> {
        let r = &key.entry.record;
        if r.key_spec.is_symmetric() {
            return Ok(());
        }
        let op = action.strip_prefix("kms:").unwrap_or(action);
        Err(KmsError::InvalidKeyUsage(format!(
            "{} key usage is {} which is not valid for {op}.",
            key.arn,
            r.usage().as_str()
        )))
    }

    /// `UnsupportedOperationException` for rotation of anything but a symmetric encryption key.
    pub(super) fn require_rotatable(key: &Resolved) -> KmsResult<()> {
        let spec = key.entry.record.key_spec;
        if spec.is_symmetric() {
            Ok(())
        } else {
            Err(KmsError::UnsupportedOperation(format!(
                "{} has KeySpec {spec}; only symmetric encryption keys rotate.",
                key.arn
            )))
        }
    }

    /// The key's private material, when its usage is `usage`; `InvalidKeyUsageException`
    /// otherwise.
    pub(super) fn require_usage<'k>(
        key: &'k Resolved,
        usage: KeyUsage,
        op: &str,
    ) -> KmsResult<&'k Arc<KeyMaterial>> {
        let r = &key.entry.record;
        match &key.entry.private {
            Some(m) if r.usage() == usage => Ok(m),
            _ => Err(KmsError::InvalidKeyUsage(format!(
                "{} key usage is {} which is not valid for {op}.",
                key.arn,
                r.usage().as_str()
            ))),
        }
    }

    fn check_signing_algorithm(key: &Resolved, alg: SigningAlgorithm) -> KmsResult<()> {
        let spec = key.entry.record.key_spec;
        if spec.signing_algorithms().contains(&alg) {
            Ok(())
        } else {
            Err(KmsError::InvalidKeyUsage(format!(
                "Signing algorithm {} is not compatible with {} (KeySpec {spec}).",
                alg.as_str(),
                key.arn
            )))
        }
    }

    /// Sign. The response is written from a typed struct (the hot path of signing services:
    /// no intermediate JSON value).
    pub(super) fn sign(&self, principal: &str, req: SignRequest<'_>) -> KmsResult<Vec<u8>> {
        let key = self.resolve(&required(req.key_id, "keyId")?)?;
        let message = required(req.message, "message")?;
        check_len("message", message.0.len(), 1, MAX_MESSAGE)?;
        let message_type = parse_message_type(req.message_type.as_deref())?;
        let alg = parse_signing(req.signing_algorithm.as_deref())?;
        self.authorize(&key, principal, "kms:Sign", None, None)?;
        self.require_enabled(&key)?;
        let material = Self::require_usage(&key, KeyUsage::SignVerify, "Sign")?;
        Self::check_signing_algorithm(&key, alg)?;
        let signature = material.sign(alg, message_type, &message.0)?;
        #[derive(serde::Serialize)]
        #[serde(rename_all = "PascalCase")]
        struct SignResponse<'a> {
            key_id: &'a str,
            signature: &'a str,
            signing_algorithm: &'a str,
        }
        encode(&SignResponse {
            key_id: &key.arn,
            signature: &b64(&signature),
            signing_algorithm: alg.as_str(),
        })
    }

    pub(super) fn verify(&self, principal: &str, req: VerifyRequest<'_>) -> KmsResult<Vec<u8>> {
        let key = self.resolve(&required(req.key_id, "keyId")?)?;
        let message = required(req.message, "message")?;
        check_len("message", message.0.len(), 1, MAX_MESSAGE)?;
        let signature = required(req.signature, "signature")?;
        check_len("signature", signature.0.len(), 1, MAX_SIGNATURE)?;
        let message_type = parse_message_type(req.message_type.as_deref())?;
        let alg = parse_signing(req.signing_algorithm.as_deref())?;
        self.authorize(&key, principal, "kms:Verify", None, None)?;
        self.require_enabled(&key)?;
        let material = Self::require_usage(&key, KeyUsage::SignVerify, "Verify")?;
        Self::check_signing_algorithm(&key, alg)?;
        material.verify(alg, message_type, &message.0, &signature.0)?;
        #[derive(serde::Serialize)]
        #[serde(rename_all = "PascalCase")]
        struct VerifyResponse<'a> {
            key_id: &'a str,
            signature_valid: bool,
            signing_algorithm: &'a str,
        }
        encode(&VerifyResponse {
            key_id: &key.arn,
            signature_valid: true,
            signing_algorithm: alg.as_str(),
        })
    }

    pub(super) fn get_public_key(&self, principal: &str, req: KeyRequest) -> KmsResult<Value> {
        let key = self.resolve(&required(req.key_id, "keyId")?)?;
        self.authorize(&key, principal, "kms:GetPublicKey", None, None)?;
        self.require_enabled(&key)?;
        let r = &key.entry.record;
        let public = key
            .entry
            .private
            .as_ref()
            .and_then(|m| m.public_key())
            .ok_or_else(|| {
                KmsError::UnsupportedOperation(format!(
                    "{} has KeySpec {}, which has no public key.",
                    key.arn, r.key_spec
                ))
            })?;
        let mut out = json!({ "KeyId": key.arn, "PublicKey": b64(public) });
        r.key_spec.describe(r.usage(), &mut out);
        Ok(out)
    }

    /// Encrypt with an asymmetric key (`key` already resolved by Encrypt).
    pub(super) fn rsa_encrypt(
        &self,
        principal: &str,
        key: Resolved,
        req: EncryptRequest,
    ) -> KmsResult<Value> {
        no_context(&req.encryption_context)?;
        let plaintext = required(req.plaintext, "plaintext")?;
        check_len("plaintext", plaintext.0.len(), 1, super::MAX_PLAINTEXT)?;
        let alg = match req.encryption_algorithm.as_deref() {
            None | Some("SYMMETRIC_DEFAULT") => None,
            Some(a) => Some(parse_rsa_encryption(a)?),
        };
        self.authorize(&key, principal, "kms:Encrypt", None, None)?;
        self.require_enabled(&key)?;
        let material = Self::require_usage(&key, KeyUsage::EncryptDecrypt, "Encrypt")?;
        let alg = alg.ok_or_else(|| {
            KmsError::InvalidKeyUsage(format!(
                "The encryption algorithm SYMMETRIC_DEFAULT is not compatible with {} (KeySpec {}).",
                key.arn, key.entry.record.key_spec
            ))
        })?;
        let ciphertext = material.encrypt(alg, &plaintext.0)?;
        Ok(json!({
            "CiphertextBlob": b64(&ciphertext),
            "KeyId": key.arn,
            "EncryptionAlgorithm": alg.as_str(),
        }))
    }

    /// Decrypt with an RSA algorithm: the key must be named (an RSA ciphertext names no key).
    pub(super) fn rsa_decrypt(&self, principal: &str, req: DecryptRequest) -> KmsResult<Vec<u8>> {
        let ciphertext = required(req.ciphertext_blob, "ciphertextBlob")?;
        let recipient = self.attested(req.recipient)?;
        let (key, alg, plain) = self.rsa_open(
            principal,
            "kms:Decrypt",
            req.encryption_algorithm.as_deref().unwrap_or_default(),
            &req.encryption_context,
            &ciphertext.0,
            req.key_id.as_deref(),
            recipient.as_deref(),
        )?;
        let mut out = json!({ "KeyId": key.arn, "EncryptionAlgorithm": alg.as_str() });
        release(&mut out, "Plaintext", &plain, recipient.as_deref())?;
        serde_json::to_vec(&out).map_err(|e| KmsError::internal("encode", e))
    }

    /// The RSA decryption of Decrypt and of ReEncrypt's source: validates the algorithm
    /// (`alg`), the absence of an encryption context and the ciphertext, resolves the named key
    /// (an RSA ciphertext names none, so `key_id` is required), authorizes `action`, checks the
    /// key's state and usage, and decrypts.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn rsa_open(
        &self,
        principal: &str,
        action: &str,
        alg: &str,
        context: &Option<crate::blob::EncryptionContext>,
        ciphertext: &[u8],
        key_id: Option<&str>,
        recipient: Option<&crate::recipient::AttestedRecipient>,
    ) -> KmsResult<(
        Resolved,
        RsaEncryptionAlgorithm,
        zeroize::Zeroizing<Vec<u8>>,
    )> {
        let alg = parse_rsa_encryption(alg)?;
        no_context(context)?;
        check_len("ciphertextBlob", ciphertext.len(), 1, MAX_BLOB_LEN)?;
        let key_id = key_id.ok_or_else(|| {
            KmsError::Validation(
                "KeyId is required to decrypt with an asymmetric encryption algorithm".into(),
            )
        })?;
        let key = self.resolve(key_id)?;
        self.authorize(&key, principal, action, None, recipient)?;
        self.require_enabled(&key)?;
        let op = action.strip_prefix("kms:").unwrap_or(action);
        let material = Self::require_usage(&key, KeyUsage::EncryptDecrypt, op)?;
        let plain = material.decrypt(alg, ciphertext)?;
        Ok((key, alg, plain))
    }

    /// The RSA encryption of ReEncrypt's destination `key` (already resolved): validates the
    /// algorithm and the absence of an encryption context, authorizes `kms:ReEncryptTo`,
    /// checks the key's state and usage, and encrypts (a plaintext too long for the key and
    /// padding is refused as AWS does).
    pub(super) fn rsa_seal_to(
        &self,
        principal: &str,
        key: &Resolved,
        alg: &str,
        context: &Option<crate::blob::EncryptionContext>,
        plaintext: &[u8],
    ) -> KmsResult<(Vec<u8>, RsaEncryptionAlgorithm)> {
        let alg = parse_rsa_encryption(alg)?;
        no_context(context)?;
        self.authorize(key, principal, "kms:ReEncryptTo", None, None)?;
        self.require_enabled(key)?;
        let material = Self::require_usage(key, KeyUsage::EncryptDecrypt, "ReEncrypt")?;
        Ok((material.encrypt(alg, plaintext)?, alg))
    }

    pub(super) fn derive_shared_secret(
        &self,
        principal: &str,
        req: DeriveSharedSecretRequest,
    ) -> KmsResult<Value> {
        let key = self.resolve(&required(req.key_id, "keyId")?)?;
        let alg = required(req.key_agreement_algorithm, "keyAgreementAlgorithm")?;
        if alg != KEY_AGREEMENT_ALGORITHM {
            return Err(enum_error(
                "keyAgreementAlgorithm",
                &alg,
                &[KEY_AGREEMENT_ALGORITHM],
            ));
        }
        let peer = required(req.public_key, "publicKey")?;
        check_len("publicKey", peer.0.len(), 1, MAX_PUBLIC_KEY)?;
        let recipient = self.attested(req.recipient)?;
        self.authorize(
            &key,
            principal,
            "kms:DeriveSharedSecret",
            None,
            recipient.as_deref(),
        )?;
        self.require_enabled(&key)?;
        let material = Self::require_usage(&key, KeyUsage::KeyAgreement, "DeriveSharedSecret")?;
        let secret = material.derive(&peer.0)?;
        let mut out = json!({
            "KeyId": key.arn,
            "KeyAgreementAlgorithm": KEY_AGREEMENT_ALGORITHM,
            "KeyOrigin": "AWS_KMS",
        });
        release(&mut out, "SharedSecret", &secret, recipient.as_deref())?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::super::b64;
    use crate::error::KmsError;
    use crate::keys::KeyMaterial;
    use crate::service::Service;
    use crate::store::Store;
    use base64::Engine as _;
    use serde_json::{json, Value};

    const ROOT: &str = "arn:aws:iam::111122223333:root";

    fn service() -> (tempfile::TempDir, Service) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &dir.path().join("master.key")).unwrap();
        (dir, Service::new(store, "us-east-1", "111122223333", None))
    }

    fn call(s: &Service, op: &str, body: Value) -> Result<Value, KmsError> {
        s.handle(op, ROOT, &serde_json::to_vec(&body).unwrap())
            .map(|b| serde_json::from_slice(&b).unwrap())
    }

    fn create(s: &Service, spec: &str, usage: &str) -> String {
        let k = call(s, "CreateKey", json!({"KeySpec": spec, "KeyUsage": usage})).unwrap();
        let m = &k["KeyMetadata"];
        assert_eq!(m["KeySpec"], spec);
        assert_eq!(m["CustomerMasterKeySpec"], spec);
        assert_eq!(m["KeyUsage"], usage);
        m["KeyId"].as_str().unwrap().to_string()
    }

    fn unb64(v: &Value) -> Vec<u8> {
        base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap())
            .unwrap()
    }

    fn err_type(r: Result<Value, KmsError>) -> &'static str {
        r.unwrap_err().aws_type()
    }

    #[test]
    fn create_key_specs_and_usages() {
        let (_d, s) = service();
        for (spec, usage) in [
            ("ECC_NIST_P256", "KEY_AGREEMENT"),
            ("ECC_SECG_P256K1", "SIGN_VERIFY"),
            ("HMAC_224", "GENERATE_VERIFY_MAC"),
        ] {
            create(&s, spec, usage);
        }
        // The deprecated CustomerMasterKeySpec names a spec too.
        let k = call(
            &s,
            "CreateKey",
            json!({"CustomerMasterKeySpec": "ECC_NIST_P384", "KeyUsage": "SIGN_VERIFY"}),
        )
        .unwrap();
        assert_eq!(
            k["KeyMetadata"]["SigningAlgorithms"],
            json!(["ECDSA_SHA_384"])
        );
        assert!(k["KeyMetadata"].get("EncryptionAlgorithms").is_none());
        for bad in [
            json!({"KeySpec": "ECC_SECG_P256K1", "KeyUsage": "KEY_AGREEMENT"}),
            json!({"KeySpec": "ECC_NIST_P256"}),
            json!({"KeySpec": "HMAC_256", "KeyUsage": "SIGN_VERIFY"}),
            json!({"KeySpec": "SYMMETRIC_DEFAULT", "KeyUsage": "SIGN_VERIFY"}),
            json!({"KeySpec": "RSA_1024", "KeyUsage": "SIGN_VERIFY"}),
            json!({"KeySpec": "RSA_2048", "KeyUsage": "SIGN"}),
            json!({"KeySpec": "RSA_2048", "CustomerMasterKeySpec": "RSA_2048"}),
        ] {
            assert_eq!(
                err_type(call(&s, "CreateKey", bad.clone())),
                "ValidationException",
                "{bad}"
            );
        }
        let d = call(
            &s,
            "DescribeKey",
            json!({"KeyId": create(&s, "HMAC_512", "GENERATE_VERIFY_MAC")}),
        )
        .unwrap();
        assert_eq!(d["KeyMetadata"]["MacAlgorithms"], json!(["HMAC_SHA_512"]));
        let sym = call(&s, "CreateKey", json!({})).unwrap();
        assert_eq!(sym["KeyMetadata"]["KeySpec"], "SYMMETRIC_DEFAULT");
        assert_eq!(
            sym["KeyMetadata"]["EncryptionAlgorithms"],
            json!(["SYMMETRIC_DEFAULT"])
        );
    }

    #[test]
    #[allow(clippy::too_many_lines, reason = "one scenario, step by step")]
    fn sign_verify_and_errors() {
        let (_d, s) = service();
        let id = create(&s, "ECC_NIST_P256", "SIGN_VERIFY");
        let msg = b64(b"to be signed");
        let sig = call(
            &s,
            "Sign",
            json!({"KeyId": id, "Message": msg, "SigningAlgorithm": "ECDSA_SHA_256"}),
        )
        .unwrap();
        assert_eq!(sig["SigningAlgorithm"], "ECDSA_SHA_256");
        let signature = sig["Signature"].clone();
        let v = call(
            &s,
            "Verify",
            json!({"KeyId": id, "Message": msg, "Signature": signature, "SigningAlgorithm": "ECDSA_SHA_256"}),
        )
        .unwrap();
        assert_eq!(v["SignatureValid"], true);
        // Verified independently with the public key GetPublicKey returns.
        let pk = call(&s, "GetPublicKey", json!({"KeyId": id})).unwrap();
        assert_eq!(pk["KeySpec"], "ECC_NIST_P256");
        assert_eq!(pk["SigningAlgorithms"], json!(["ECDSA_SHA_256"]));
        aws_lc_rs::signature::UnparsedPublicKey::new(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1,
            public_point(&unb64(&pk["PublicKey"])),
        )
        .verify(b"to be signed", &unb64(&signature))
        .unwrap();
        let mut bad = unb64(&signature);
        let last = bad.len() - 1;
        bad[last] ^= 1;
        let r = call(
            &s,
            "Verify",
            json!({"KeyId": id, "Message": msg, "Signature": b64(&bad), "SigningAlgorithm": "ECDSA_SHA_256"}),
        );
        assert_eq!(err_type(r), "KMSInvalidSignatureException");
        let sign = |body: Value| {
            let mut b = json!({"KeyId": id, "Message": msg, "SigningAlgorithm": "ECDSA_SHA_256"});
            for (k, v) in body.as_object().unwrap() {
                b[k] = v.clone();
            }
            call(&s, "Sign", b)
        };
        assert_eq!(
            err_type(sign(json!({"SigningAlgorithm": "ECDSA_SHA_384"}))),
            "InvalidKeyUsageException"
        );
        assert_eq!(
            err_type(sign(json!({"SigningAlgorithm": "RSASSA_PSS_SHA_256"}))),
            "InvalidKeyUsageException"
        );
        assert_eq!(
            err_type(sign(json!({"SigningAlgorithm": "ECDSA"}))),
            "ValidationException"
        );
        assert_eq!(
            err_type(sign(json!({"MessageType": "DIGEST"}))),
            "ValidationException"
        );
        assert_eq!(
            err_type(sign(json!({"MessageType": "HASH"}))),
            "ValidationException"
        );
        assert_eq!(
            err_type(sign(json!({"Message": b64(&[0u8; 4097])}))),
            "ValidationException"
        );
        assert_eq!(
            err_type(sign(json!({"Message": ""}))),
            "ValidationException"
        );
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b"to be signed");
        let d = sign(json!({"MessageType": "DIGEST", "Message": b64(digest.as_ref())})).unwrap();
        call(
            &s,
            "Verify",
            json!({"KeyId": id, "Message": msg, "Signature": d["Signature"], "SigningAlgorithm": "ECDSA_SHA_256"}),
        )
        .unwrap();
        // Symmetric-only operations on an asymmetric key, and the reverse.
        assert_eq!(
            err_type(call(&s, "Encrypt", json!({"KeyId": id, "Plaintext": msg}))),
            "InvalidKeyUsageException"
        );
        assert_eq!(
            err_type(call(
                &s,
                "GenerateDataKey",
                json!({"KeyId": id, "KeySpec": "AES_256"})
            )),
            "InvalidKeyUsageException"
        );
        assert_eq!(
            err_type(call(&s, "EnableKeyRotation", json!({"KeyId": id}))),
            "UnsupportedOperationException"
        );
        assert_eq!(
            err_type(call(&s, "RotateKeyOnDemand", json!({"KeyId": id}))),
            "UnsupportedOperationException"
        );
        let sym = call(&s, "CreateKey", json!({})).unwrap()["KeyMetadata"]["KeyId"].clone();
        assert_eq!(
            err_type(call(&s, "GetPublicKey", json!({"KeyId": sym}))),
            "UnsupportedOperationException"
        );
        assert_eq!(
            err_type(call(
                &s,
                "Sign",
                json!({"KeyId": sym, "Message": msg, "SigningAlgorithm": "ECDSA_SHA_256"})
            )),
            "InvalidKeyUsageException"
        );
        // DryRun runs every check and signs nothing it returns.
        assert_eq!(
            err_type(sign(json!({"DryRun": true}))),
            "DryRunOperationException"
        );
        call(&s, "DisableKey", json!({"KeyId": id})).unwrap();
        assert_eq!(err_type(sign(json!({}))), "DisabledException");
    }

    /// The uncompressed point at the end of a P-256 SubjectPublicKeyInfo.
    fn public_point(spki: &[u8]) -> Vec<u8> {
        spki[spki.len() - 65..].to_vec()
    }

    #[test]
    fn rsa_encrypt_decrypt_and_sign() {
        let (_d, s) = service();
        let enc = create(&s, "RSA_2048", "ENCRYPT_DECRYPT");
        let pk = call(&s, "GetPublicKey", json!({"KeyId": enc})).unwrap();
        assert_eq!(
            pk["EncryptionAlgorithms"],
            json!(["RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256"])
        );
        let e = call(
            &s,
            "Encrypt",
            json!({"KeyId": enc, "Plaintext": b64(b"hi"), "EncryptionAlgorithm": "RSAES_OAEP_SHA_256"}),
        )
        .unwrap();
        assert_eq!(unb64(&e["CiphertextBlob"]).len(), 256);
        let d = call(
            &s,
            "Decrypt",
            json!({"KeyId": enc, "CiphertextBlob": e["CiphertextBlob"], "EncryptionAlgorithm": "RSAES_OAEP_SHA_256"}),
        )
        .unwrap();
        assert_eq!(unb64(&d["Plaintext"]), b"hi");
        assert_eq!(d["EncryptionAlgorithm"], "RSAES_OAEP_SHA_256");
        for (body, want) in [
            (
                json!({"KeyId": enc, "CiphertextBlob": e["CiphertextBlob"], "EncryptionAlgorithm": "RSAES_OAEP_SHA_1"}),
                "InvalidCiphertextException",
            ),
            (
                json!({"CiphertextBlob": e["CiphertextBlob"], "EncryptionAlgorithm": "RSAES_OAEP_SHA_256"}),
                "ValidationException",
            ),
            (
                json!({"KeyId": enc, "CiphertextBlob": e["CiphertextBlob"], "EncryptionAlgorithm": "RSAES_PKCS1"}),
                "ValidationException",
            ),
            // Without an RSA algorithm the blob is read as a symmetric ciphertext.
            (
                json!({"KeyId": enc, "CiphertextBlob": e["CiphertextBlob"]}),
                "InvalidCiphertextException",
            ),
        ] {
            assert_eq!(err_type(call(&s, "Decrypt", body.clone())), want, "{body}");
        }
        for (body, want) in [
            (
                json!({"KeyId": enc, "Plaintext": b64(b"hi")}),
                "InvalidKeyUsageException",
            ),
            (
                json!({"KeyId": enc, "Plaintext": b64(&[1u8; 191]), "EncryptionAlgorithm": "RSAES_OAEP_SHA_256"}),
                "ValidationException",
            ),
            (
                json!({"KeyId": enc, "Plaintext": b64(b"x"), "EncryptionAlgorithm": "RSAES_OAEP_SHA_1", "EncryptionContext": {"a": "b"}}),
                "ValidationException",
            ),
        ] {
            assert_eq!(err_type(call(&s, "Encrypt", body.clone())), want, "{body}");
        }
        // The RSA key signs nothing (its usage is ENCRYPT_DECRYPT).
        assert_eq!(
            err_type(call(
                &s,
                "Sign",
                json!({"KeyId": enc, "Message": b64(b"m"), "SigningAlgorithm": "RSASSA_PSS_SHA_256"})
            )),
            "InvalidKeyUsageException"
        );
        // A symmetric key refuses the RSA algorithms.
        let sym = call(&s, "CreateKey", json!({})).unwrap()["KeyMetadata"]["KeyId"].clone();
        assert_eq!(
            err_type(call(
                &s,
                "Encrypt",
                json!({"KeyId": sym, "Plaintext": b64(b"x"), "EncryptionAlgorithm": "RSAES_OAEP_SHA_1"})
            )),
            "InvalidKeyUsageException"
        );
        assert_eq!(
            err_type(call(
                &s,
                "Decrypt",
                json!({"KeyId": sym, "CiphertextBlob": e["CiphertextBlob"], "EncryptionAlgorithm": "RSAES_OAEP_SHA_1"})
            )),
            "InvalidKeyUsageException"
        );
    }

    #[test]
    #[allow(clippy::too_many_lines, reason = "one scenario, step by step")]
    fn derive_shared_secret_and_mac() {
        let (_d, s) = service();
        let id = create(&s, "ECC_NIST_P256", "KEY_AGREEMENT");
        let pk = call(&s, "GetPublicKey", json!({"KeyId": id})).unwrap();
        assert_eq!(pk["KeyAgreementAlgorithms"], json!(["ECDH"]));
        let mine =
            aws_lc_rs::agreement::PrivateKey::generate(&aws_lc_rs::agreement::ECDH_P256).unwrap();
        use aws_lc_rs::encoding::AsDer;
        let spki: aws_lc_rs::encoding::PublicKeyX509Der<'_> =
            mine.compute_public_key().unwrap().as_der().unwrap();
        let out = call(
            &s,
            "DeriveSharedSecret",
            json!({"KeyId": id, "KeyAgreementAlgorithm": "ECDH", "PublicKey": b64(spki.as_ref())}),
        )
        .unwrap();
        let peer = aws_lc_rs::agreement::UnparsedPublicKey::new(
            &aws_lc_rs::agreement::ECDH_P256,
            unb64(&pk["PublicKey"]),
        );
        let local = aws_lc_rs::agreement::agree(&mine, &peer, (), |z| Ok(z.to_vec())).unwrap();
        assert_eq!(unb64(&out["SharedSecret"]), local);
        assert_eq!(out["KeyOrigin"], "AWS_KMS");
        assert_eq!(
            err_type(call(
                &s,
                "DeriveSharedSecret",
                json!({"KeyId": id, "KeyAgreementAlgorithm": "DH", "PublicKey": b64(spki.as_ref())})
            )),
            "ValidationException"
        );
        assert_eq!(
            err_type(call(
                &s,
                "DeriveSharedSecret",
                json!({"KeyId": id, "KeyAgreementAlgorithm": "ECDH", "PublicKey": b64(b"junk")})
            )),
            "ValidationException"
        );
        assert_eq!(
            err_type(call(
                &s,
                "Sign",
                json!({"KeyId": id, "Message": b64(b"m"), "SigningAlgorithm": "ECDSA_SHA_256"})
            )),
            "InvalidKeyUsageException"
        );

        let mac_key = create(&s, "HMAC_256", "GENERATE_VERIFY_MAC");
        let m = call(
            &s,
            "GenerateMac",
            json!({"KeyId": mac_key, "Message": b64(b"msg"), "MacAlgorithm": "HMAC_SHA_256"}),
        )
        .unwrap();
        let mac = unb64(&m["Mac"]);
        assert_eq!(mac.len(), 32);
        let v = call(
            &s,
            "VerifyMac",
            json!({"KeyId": mac_key, "Message": b64(b"msg"), "MacAlgorithm": "HMAC_SHA_256", "Mac": m["Mac"]}),
        )
        .unwrap();
        assert_eq!(v["MacValid"], true);
        let mut bad = mac.clone();
        bad[3] ^= 4;
        assert_eq!(
            err_type(call(
                &s,
                "VerifyMac",
                json!({"KeyId": mac_key, "Message": b64(b"msg"), "MacAlgorithm": "HMAC_SHA_256", "Mac": b64(&bad)})
            )),
            "KMSInvalidMacException"
        );
        assert_eq!(
            err_type(call(
                &s,
                "GenerateMac",
                json!({"KeyId": mac_key, "Message": b64(b"msg"), "MacAlgorithm": "HMAC_SHA_384"})
            )),
            "InvalidKeyUsageException"
        );
        assert_eq!(
            err_type(call(
                &s,
                "GenerateMac",
                json!({"KeyId": mac_key, "Message": b64(b"msg"), "MacAlgorithm": "HMAC_SHA_1"})
            )),
            "ValidationException"
        );
        assert_eq!(
            err_type(call(
                &s,
                "GenerateMac",
                json!({"KeyId": mac_key, "MacAlgorithm": "HMAC_SHA_256"})
            )),
            "ValidationException"
        );
        assert_eq!(
            err_type(call(
                &s,
                "GenerateMac",
                json!({"KeyId": id, "Message": b64(b"msg"), "MacAlgorithm": "HMAC_SHA_256"})
            )),
            "InvalidKeyUsageException"
        );
        assert_eq!(
            err_type(call(&s, "GetPublicKey", json!({"KeyId": mac_key}))),
            "UnsupportedOperationException"
        );
    }

    #[test]
    fn records_of_earlier_versions_are_symmetric_keys() {
        // A key record as stores made before key specs hold it: no spec, no usage.
        let old = json!({
            "id": "1234abcd-12ab-34cd-56ef-1234567890ab", "created": 1.0, "description": "",
            "state": "Enabled", "deletion_date": null, "pending_window_days": null,
            "policy": "{}", "tags": [], "rotation_period_days": null, "rotations": [],
            "materials": ["sealed"],
        });
        let r: crate::store::KeyRecord = serde_json::from_value(old).unwrap();
        assert!(r.key_spec.is_symmetric());
        assert_eq!(r.usage(), crate::keys::KeyUsage::EncryptDecrypt);
        // And a symmetric record is written without them, as before.
        let v = serde_json::to_value(&r).unwrap();
        assert!(v.get("key_spec").is_none() && v.get("key_usage").is_none());
    }

    #[test]
    fn material_survives_reopen_sealed() {
        let dir = tempfile::tempdir().unwrap();
        let master = dir.path().join("master.key");
        let (id, public) = {
            let store = Store::open(dir.path(), &master).unwrap();
            let s = Service::new(store, "us-east-1", "111122223333", None);
            let id = create(&s, "ECC_SECG_P256K1", "SIGN_VERIFY");
            let pk = call(&s, "GetPublicKey", json!({"KeyId": id})).unwrap();
            (id, pk["PublicKey"].clone())
        };
        // The private key is sealed under the master key: another master key cannot load it.
        let other = dir.path().join("other.key");
        assert!(Store::open(dir.path(), &other).is_err());
        let store = Store::open(dir.path(), &master).unwrap();
        let entry = store
            .key(&crate::store::parse_key_id(&id).unwrap())
            .unwrap()
            .unwrap();
        let m: &KeyMaterial = entry.private.as_deref().unwrap();
        assert!(entry.materials.is_empty());
        assert_eq!(m.public_key().unwrap()[0], 0x30);
        let s = Service::new(store, "us-east-1", "111122223333", None);
        let pk = call(&s, "GetPublicKey", json!({"KeyId": id})).unwrap();
        assert_eq!(pk["PublicKey"], public);
        let sig = call(
            &s,
            "Sign",
            json!({"KeyId": id, "Message": b64(b"m"), "SigningAlgorithm": "ECDSA_SHA_256"}),
        )
        .unwrap();
        call(&s, "Verify", json!({"KeyId": id, "Message": b64(b"m"), "Signature": sig["Signature"], "SigningAlgorithm": "ECDSA_SHA_256"})).unwrap();
        // Data key pairs on secp256k1.
        let sym = call(&s, "CreateKey", json!({})).unwrap()["KeyMetadata"]["KeyId"].clone();
        let p = call(
            &s,
            "GenerateDataKeyPair",
            json!({"KeyId": sym, "KeyPairSpec": "ECC_SECG_P256K1"}),
        )
        .unwrap();
        assert_eq!(p["KeyPairSpec"], "ECC_SECG_P256K1");
        let d = call(
            &s,
            "Decrypt",
            json!({"CiphertextBlob": p["PrivateKeyCiphertextBlob"]}),
        )
        .unwrap();
        assert_eq!(d["Plaintext"], p["PrivateKeyPlaintext"]);
    }
}
