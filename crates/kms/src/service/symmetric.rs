//! The operations of symmetric keys: Encrypt, Decrypt, GenerateDataKey(WithoutPlaintext),
//! GenerateDataKeyPair(WithoutPlaintext), GenerateRandom and ReEncrypt (either side of which
//! may be an RSA key, see `asymmetric`).

use super::authz::Resolved;
use super::request::{
    DecryptRequest, EncryptRequest, GenerateDataKeyPairRequest, GenerateDataKeyRequest,
    GenerateRandomRequest, ReEncryptRequest,
};
use super::validate::{
    check_len, check_range, check_symmetric_algorithm, generate_key_pair, random, required,
};
use super::{asymmetric, b64, ops, release, Service, MAX_PLAINTEXT, MAX_RANDOM_BYTES};
use crate::blob::{self, BlobHeader, EncryptionContext};
use crate::error::{KmsError, KmsResult};
use crate::recipient::AttestedRecipient;
use crate::store::format_key_id;
use serde::Serialize;
use serde_json::{json, Value};
use zeroize::Zeroizing;

/// [`MAX_RANDOM_BYTES`] as the request's integer type.
const MAX_RANDOM_BYTES_I64: i64 = 1024;
const _: () = assert!(MAX_RANDOM_BYTES == 1024);

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct DecryptResponse {
    key_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    plaintext: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ciphertext_for_recipient: Option<String>,
    encryption_algorithm: &'static str,
}

impl Service {
    pub(super) fn symmetric_encrypt(
        &self,
        key: &Resolved,
        context: &EncryptionContext,
        plaintext: &[u8],
    ) -> KmsResult<Vec<u8>> {
        let version = key
            .entry
            .materials
            .len()
            .checked_sub(1)
            .ok_or_else(|| KmsError::Internal("key has no material".into()))?;
        let material = &key.entry.materials[version];
        let header = BlobHeader {
            key_id: key.id,
            material: u32::try_from(version).map_err(|e| KmsError::internal("version", e))?,
        };
        blob::seal(
            material,
            &header,
            &blob::canonical_context(context)?,
            plaintext,
        )
    }

    /// Resolves the key a ciphertext blob names and decrypts it (after authorization).
    pub(super) fn symmetric_decrypt(
        &self,
        principal: &str,
        action: &str,
        ciphertext: &[u8],
        context: &EncryptionContext,
        key_id: Option<&str>,
        recipient: Option<&AttestedRecipient>,
    ) -> KmsResult<(Resolved, Zeroizing<Vec<u8>>)> {
        check_len("ciphertextBlob", ciphertext.len(), 1, blob::MAX_BLOB_LEN)?;
        let header = blob::parse_header(ciphertext)?;
        // A blob naming no existing key is indistinguishable from garbage: AWS answers
        // InvalidCiphertextException, not NotFoundException.
        let key = self
            .resolve(&format_key_id(&header.key_id))
            .map_err(|e| match e {
                KmsError::NotFound(_) => KmsError::InvalidCiphertext(String::new()),
                other => other,
            })?;
        if let Some(named) = key_id {
            let want = self.resolve(named)?;
            Self::require_symmetric(&want, action)?;
            if want.id != key.id {
                return Err(KmsError::IncorrectKey(
                    "The key ID in the request does not identify a CMK that can perform this operation.".into(),
                ));
            }
        }
        self.authorize(&key, principal, action, Some(context), recipient)?;
        self.require_enabled(&key)?;
        let material = usize::try_from(header.material)
            .ok()
            .and_then(|i| key.entry.materials.get(i))
            .ok_or_else(|| KmsError::InvalidCiphertext(String::new()))?;
        let plain = blob::open(material, ciphertext, &blob::canonical_context(context)?)?;
        Ok((key, plain))
    }

    // ---- cryptographic operations ----

    pub(super) fn decrypt(&self, principal: &str, req: DecryptRequest) -> KmsResult<Vec<u8>> {
        if asymmetric::is_rsa_algorithm(&req.encryption_algorithm) {
            return self.rsa_decrypt(principal, req);
        }
        check_symmetric_algorithm(&req.encryption_algorithm)?;
        let ct = required(req.ciphertext_blob, "ciphertextBlob")?;
        let recipient = self.attested(req.recipient)?;
        let ctx = req.encryption_context.unwrap_or_default();
        let (key, plain) = self.symmetric_decrypt(
            principal,
            "kms:Decrypt",
            &ct.0,
            &ctx,
            req.key_id.as_deref(),
            recipient.as_deref(),
        )?;
        let (plaintext, cfr) = match &recipient {
            Some(r) => (None, Some(b64(&r.seal(&plain)?))),
            None => (Some(b64(&plain)), None),
        };
        let resp = DecryptResponse {
            key_id: key.arn,
            plaintext,
            ciphertext_for_recipient: cfr,
            encryption_algorithm: "SYMMETRIC_DEFAULT",
        };
        serde_json::to_vec(&resp).map_err(|e| KmsError::internal("encode", e))
    }

    pub(super) fn encrypt(&self, principal: &str, req: EncryptRequest) -> KmsResult<Value> {
        let key = self.resolve(required(req.key_id.as_deref(), "keyId")?)?;
        if !key.entry.record.key_spec.is_symmetric() {
            return self.rsa_encrypt(principal, key, req);
        }
        check_symmetric_algorithm(&req.encryption_algorithm)?;
        let pt = required(req.plaintext, "plaintext")?;
        check_len("plaintext", pt.0.len(), 1, MAX_PLAINTEXT)?;
        let ctx = req.encryption_context.unwrap_or_default();
        self.authorize(&key, principal, "kms:Encrypt", Some(&ctx), None)?;
        self.require_enabled(&key)?;
        let blob = self.symmetric_encrypt(&key, &ctx, &pt.0)?;
        Ok(json!({
            "CiphertextBlob": b64(&blob),
            "KeyId": key.arn,
            "EncryptionAlgorithm": "SYMMETRIC_DEFAULT",
        }))
    }

    pub(super) fn generate_data_key(
        &self,
        principal: &str,
        req: GenerateDataKeyRequest,
        with_plaintext: bool,
    ) -> KmsResult<Value> {
        let key = self.resolve(&required(req.key_id, "keyId")?)?;
        Self::require_symmetric(&key, "kms:GenerateDataKey")?;
        let n = match (req.key_spec.as_deref(), req.number_of_bytes) {
            (Some(_), Some(_)) => {
                return Err(KmsError::Validation(
                    "Please specify either number of bytes or key spec.".into(),
                ))
            }
            (Some("AES_256"), None) => 32,
            (Some("AES_128"), None) => 16,
            (Some(other), None) => {
                return Err(KmsError::Validation(format!(
                    "1 validation error detected: Value '{other}' at 'keySpec' failed to satisfy constraint: Member must satisfy enum value set: [AES_256, AES_128]"
                )))
            }
            (None, Some(n)) => check_range("numberOfBytes", n, 1, MAX_RANDOM_BYTES_I64)?,
            (None, None) => {
                return Err(KmsError::Validation(
                    "Please specify either number of bytes or key spec.".into(),
                ))
            }
        };
        let (ctx, recipient) = self.authorize_generation(
            &key,
            principal,
            req.recipient,
            req.encryption_context,
            ["kms:GenerateDataKey", "kms:GenerateDataKeyWithoutPlaintext"],
            with_plaintext,
        )?;
        let dk = random(n)?;
        let blob = self.symmetric_encrypt(&key, &ctx, &dk)?;
        let mut out = json!({ "CiphertextBlob": b64(&blob), "KeyId": key.arn });
        if with_plaintext {
            release(&mut out, "Plaintext", &dk, recipient.as_deref())?;
        }
        Ok(out)
    }

    pub(super) fn generate_data_key_pair(
        &self,
        principal: &str,
        req: GenerateDataKeyPairRequest,
        with_plaintext: bool,
    ) -> KmsResult<Value> {
        let key = self.resolve(&required(req.key_id, "keyId")?)?;
        Self::require_symmetric(&key, "kms:GenerateDataKeyPair")?;
        let spec = required(req.key_pair_spec, "keyPairSpec")?;
        let (ctx, recipient) = self.authorize_generation(
            &key,
            principal,
            req.recipient,
            req.encryption_context,
            [
                "kms:GenerateDataKeyPair",
                "kms:GenerateDataKeyPairWithoutPlaintext",
            ],
            with_plaintext,
        )?;
        let (private, public) = generate_key_pair(&spec)?;
        let blob = self.symmetric_encrypt(&key, &ctx, &private)?;
        let mut out = json!({
            "PrivateKeyCiphertextBlob": b64(&blob),
            "PublicKey": b64(&public),
            "KeyId": key.arn,
            "KeyPairSpec": spec,
        });
        if with_plaintext {
            release(
                &mut out,
                "PrivateKeyPlaintext",
                &private,
                recipient.as_deref(),
            )?;
        }
        Ok(out)
    }

    pub(super) fn generate_random(&self, req: GenerateRandomRequest) -> KmsResult<Value> {
        let n = check_range(
            "numberOfBytes",
            required(req.number_of_bytes, "numberOfBytes")?,
            1,
            MAX_RANDOM_BYTES_I64,
        )?;
        let recipient = self.attested(req.recipient)?;
        let bytes = random(n)?;
        let mut out = json!({});
        release(&mut out, "Plaintext", &bytes, recipient.as_deref())?;
        Ok(out)
    }

    /// ReEncrypt. Either side may be an RSA key (`RSAES_OAEP_SHA_1`/`_256`, as AWS allows):
    /// an RSA source names its key and algorithm (an RSA ciphertext names neither), an RSA
    /// destination its algorithm; neither takes an encryption context. The plaintext never
    /// leaves the service.
    pub(super) fn re_encrypt(&self, principal: &str, req: ReEncryptRequest) -> KmsResult<Value> {
        let src_rsa = asymmetric::is_rsa_algorithm(&req.source_encryption_algorithm);
        let dst_rsa = asymmetric::is_rsa_algorithm(&req.destination_encryption_algorithm);
        if !src_rsa {
            check_symmetric_algorithm(&req.source_encryption_algorithm)?;
        }
        if !dst_rsa {
            check_symmetric_algorithm(&req.destination_encryption_algorithm)?;
        }
        let ct = required(req.ciphertext_blob, "ciphertextBlob")?;
        let dest = self.resolve(&required(req.destination_key_id, "destinationKeyId")?)?;
        if !dst_rsa {
            Self::require_symmetric(&dest, "kms:ReEncryptTo")?;
        }
        // Each side's authorization sees its own `kms:EncryptionAlgorithm`.
        let src_alg_name = match req.source_encryption_algorithm.as_deref() {
            Some("RSAES_OAEP_SHA_1") => "RSAES_OAEP_SHA_1",
            Some("RSAES_OAEP_SHA_256") => "RSAES_OAEP_SHA_256",
            _ => "SYMMETRIC_DEFAULT",
        };
        let dst_alg_name = match req.destination_encryption_algorithm.as_deref() {
            Some("RSAES_OAEP_SHA_1") => "RSAES_OAEP_SHA_1",
            Some("RSAES_OAEP_SHA_256") => "RSAES_OAEP_SHA_256",
            _ => "SYMMETRIC_DEFAULT",
        };
        ops::scope::set_encryption_algorithm(src_alg_name);
        let (src, src_alg, plain) = if src_rsa {
            let (src, alg, plain) = self.rsa_open(
                principal,
                "kms:ReEncryptFrom",
                req.source_encryption_algorithm
                    .as_deref()
                    .unwrap_or_default(),
                &req.source_encryption_context,
                &ct.0,
                req.source_key_id.as_deref(),
                None,
            )?;
            (src, alg.as_str(), plain)
        } else {
            let src_ctx = req.source_encryption_context.unwrap_or_default();
            let (src, plain) = self.symmetric_decrypt(
                principal,
                "kms:ReEncryptFrom",
                &ct.0,
                &src_ctx,
                req.source_key_id.as_deref(),
                None,
            )?;
            (src, "SYMMETRIC_DEFAULT", plain)
        };
        ops::scope::set_encryption_algorithm(dst_alg_name);
        let (blob, dst_alg) = if dst_rsa {
            let (blob, alg) = self.rsa_seal_to(
                principal,
                &dest,
                req.destination_encryption_algorithm
                    .as_deref()
                    .unwrap_or_default(),
                &req.destination_encryption_context,
                &plain,
            )?;
            (blob, alg.as_str())
        } else {
            let dst_ctx = req.destination_encryption_context.unwrap_or_default();
            self.authorize(&dest, principal, "kms:ReEncryptTo", Some(&dst_ctx), None)?;
            self.require_enabled(&dest)?;
            (
                self.symmetric_encrypt(&dest, &dst_ctx, &plain)?,
                "SYMMETRIC_DEFAULT",
            )
        };
        Ok(json!({
            "CiphertextBlob": b64(&blob),
            "SourceKeyId": src.arn,
            "KeyId": dest.arn,
            "SourceEncryptionAlgorithm": src_alg,
            "DestinationEncryptionAlgorithm": dst_alg,
        }))
    }
}
