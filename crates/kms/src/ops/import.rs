//! Imported key material (keys of origin `EXTERNAL`): GetParametersForImport, ImportKeyMaterial,
//! DeleteImportedKeyMaterial, and the expiry of material at its `ValidTo`.
//!
//! CreateKey with `Origin=EXTERNAL` makes a key in state `PendingImport` with no material.
//! GetParametersForImport makes a fresh RSA wrapping key pair (2048, 3072 or 4096 bits) and an
//! import token, valid 24 hours; the private key is sealed under the master key (like key
//! material) in the key's record, and only a SHA-256 digest of the token is kept. The token is
//! `base64(version ‖ key id ‖ 32 random bytes)`: one that does not name this key, or whose
//! digest is not the outstanding one, is refused (`InvalidImportTokenException`).
//!
//! ImportKeyMaterial unwraps the material with the wrapping algorithm asked for:
//! `RSAES_OAEP_SHA_1`/`RSAES_OAEP_SHA_256` (the material itself under RSA-OAEP), or
//! `RSA_AES_KEY_WRAP_SHA_1`/`RSA_AES_KEY_WRAP_SHA_256` (an ephemeral AES-256 key under RSA-OAEP,
//! followed by the material under AES key wrap with padding, RFC 5649). Symmetric material is 32
//! bytes; HMAC keys (CreateKey with an HMAC KeySpec and `Origin=EXTERNAL`, as AWS allows) take
//! AWS's lengths for their spec (HMAC_224: 28-64 bytes, HMAC_256: 32-64, HMAC_384 and HMAC_512:
//! 48-128 and 64-128). Other asymmetric specs do not take imported material here. A key's
//! material can be imported again only if it is the same material (checked against a
//! domain-separated SHA-256 digest), so ciphertexts made before stay decryptable.
//!
//! With `ExpirationModel=KEY_MATERIAL_EXPIRES` the material is deleted when `ValidTo` passes:
//! the first resolution of the key after that moment deletes it and puts the key in
//! `PendingImport` (see `Service::expire_imported`), as does DeleteImportedKeyMaterial.
//!
//! A multi-Region key of origin `EXTERNAL` takes its material as in AWS: the same material is
//! imported into the key of each Region, by GetParametersForImport and ImportKeyMaterial called
//! in that Region (a replica starts in `PendingImport`). Each Region's key has its own import
//! parameters, expiration model, `ValidTo` and state, and DeleteImportedKeyMaterial or expiry
//! deletes the material of one Region's key; the sealed material is kept while any Region's key
//! has it, and the digest every import must match is shared.

use crate::error::{KmsError, KmsResult};
use crate::service::request::ImportRequest;
use crate::service::validate::{check_len, required};
use crate::service::Service;
use crate::store::{now, KeyEntry, KeyRecord, KeyState, MATERIAL_LEN};
use base64::Engine as _;
use serde_json::{json, Value};
use std::sync::Arc;
use zeroize::Zeroizing;

pub use crate::store::record::import::{ImportRecord, PendingImport};

/// How long import parameters stay valid (AWS: 24 hours).
pub const IMPORT_PARAMETERS_TTL_S: f64 = 86_400.0;
/// Latest `ValidTo` accepted, from now (AWS: 365 days).
pub const MAX_VALID_TO_S: f64 = 365.0 * 86_400.0;
/// Longest import token accepted (AWS: 6144 bytes).
pub const MAX_IMPORT_TOKEN: usize = 6144;
/// Longest encrypted key material accepted (AWS: 6144 bytes).
pub const MAX_ENCRYPTED_MATERIAL: usize = 6144;

const TOKEN_VERSION: u8 = 1;
const TOKEN_LEN: usize = 1 + 16 + 32;

const ALGORITHMS: &[&str] = &[
    "RSAES_OAEP_SHA_1",
    "RSAES_OAEP_SHA_256",
    "RSA_AES_KEY_WRAP_SHA_1",
    "RSA_AES_KEY_WRAP_SHA_256",
];

fn oaep(alg: &str) -> &'static aws_lc_rs::rsa::OaepAlgorithm {
    if alg.ends_with("SHA_1") {
        &aws_lc_rs::rsa::OAEP_SHA1_MGF1SHA1
    } else {
        &aws_lc_rs::rsa::OAEP_SHA256_MGF1SHA256
    }
}

fn material_digest(material: &[u8]) -> String {
    let mut c = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    c.update(b"cloister-kms/imported-material/v1");
    c.update(material);
    hex::encode(c.finish().as_ref())
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b).as_ref())
}

/// The sealing name of a key's wrapping key (never a key id: ids have no `/`).
fn wrapping_name(key_id: &str) -> String {
    format!("{key_id}/import-wrapping-key")
}

fn not_external(arn: &str) -> KmsError {
    KmsError::UnsupportedOperation(format!("{arn} origin is not EXTERNAL"))
}

/// Unwraps `wrapped` with the RSA private key `pkcs8` and algorithm `alg`.
fn unwrap(pkcs8: &[u8], alg: &str, wrapped: &[u8]) -> KmsResult<Zeroizing<Vec<u8>>> {
    use aws_lc_rs::rsa::{OaepPrivateDecryptingKey, PrivateDecryptingKey};
    let bad = || {
        KmsError::InvalidCiphertext(
            "The encrypted key material does not unwrap under the import parameters".into(),
        )
    };
    let key = PrivateDecryptingKey::from_pkcs8(pkcs8)
        .map_err(|e| KmsError::internal("wrapping key", e))?;
    let key = OaepPrivateDecryptingKey::new(key).map_err(|e| KmsError::internal("oaep", e))?;
    let k = key.key_size_bytes();
    let mut out = Zeroizing::new(vec![0u8; key.min_output_size().max(k)]);
    if alg.starts_with("RSAES_OAEP") {
        let n = key
            .decrypt(oaep(alg), wrapped, &mut out, None)
            .map_err(|_| bad())?
            .len();
        out.truncate(n);
        return Ok(out);
    }
    // RSA_AES_KEY_WRAP_*: RSA-OAEP(AES-256 key) ‖ AES-KWP(material).
    if wrapped.len() <= k {
        return Err(bad());
    }
    let (rsa_part, kwp_part) = wrapped.split_at(k);
    let n = key
        .decrypt(oaep(alg), rsa_part, &mut out, None)
        .map_err(|_| bad())?
        .len();
    if n != 32 {
        return Err(bad());
    }
    use aws_lc_rs::key_wrap::{AesKek, KeyWrapPadded, AES_256};
    let kek = AesKek::new(&AES_256, &out[..32]).map_err(|_| bad())?;
    let mut material = Zeroizing::new(vec![0u8; kwp_part.len()]);
    let m = kek
        .unwrap_with_padding(kwp_part, &mut material)
        .map_err(|_| bad())?
        .len();
    material.truncate(m);
    Ok(material)
}

impl Service {
    /// Deletes the material of an imported key whose `ValidTo` has passed (the key becomes
    /// `PendingImport`) and answers the current entry.
    pub(in crate::service) fn expire_imported(
        &self,
        id: &[u8; 16],
        entry: Arc<KeyEntry>,
    ) -> KmsResult<Arc<KeyEntry>> {
        let t = now();
        let expired = |model: &Option<String>, valid_to: Option<f64>| {
            model.is_some() && valid_to.is_some_and(|v| v <= t)
        };
        // Read without copying the record: this runs on every resolution of a key.
        let due = |r: &KeyRecord| {
            let Some(i) = &r.import else { return false };
            expired(&i.expiration_model, i.valid_to)
                || r.multi_region.as_ref().is_some_and(|m| {
                    m.replicas
                        .iter()
                        .filter_map(|x| x.own.as_ref())
                        .any(|o| expired(&o.import_expiration_model, o.import_valid_to))
                })
        };
        if !due(&entry.record) {
            return Ok(entry);
        }
        let (entry, ()) = self.store.update_key(id, |r| {
            super::regions::for_each_region_import(r, |x| {
                if expired(x.expiration_model, *x.valid_to) {
                    delete_material(x);
                }
            });
            drop_unused_material(r);
            Ok(())
        })?;
        Ok(entry)
    }

    /// Sets up a new key of `origin` (`EXTERNAL`: no material, `PendingImport`).
    pub(in crate::service) fn apply_origin(&self, record: &mut KeyRecord, origin: Option<&str>) {
        if origin == Some("EXTERNAL") {
            record.materials.clear();
            record.state = KeyState::PendingImport;
            record.import = Some(ImportRecord::default());
        }
    }

    /// Metadata fields of imported keys.
    pub(in crate::service) fn import_metadata(&self, record: &KeyRecord, m: &mut Value) {
        if let Some(i) = &record.import {
            m["Origin"] = json!("EXTERNAL");
            if let Some(model) = &i.expiration_model {
                if record.state != KeyState::PendingImport {
                    m["ExpirationModel"] = json!(model);
                }
            }
            if let Some(t) = i.valid_to {
                if record.state != KeyState::PendingImport {
                    m["ValidTo"] = json!(t);
                }
            }
        }
    }

    pub(in crate::service) fn get_parameters_for_import(
        &self,
        principal: &str,
        req: ImportRequest,
    ) -> KmsResult<Value> {
        use aws_lc_rs::encoding::AsDer;
        use aws_lc_rs::rsa::{KeySize, PrivateDecryptingKey};
        let key = self.resolve(&required(req.key_id, "keyId")?)?;
        let alg = required(req.wrapping_algorithm, "wrappingAlgorithm")?;
        if !ALGORITHMS.contains(&alg.as_str()) {
            return Err(KmsError::Validation(format!(
                "1 validation error detected: Value '{alg}' at 'wrappingAlgorithm' failed to satisfy constraint: Member must satisfy enum value set: [{}]",
                ALGORITHMS.join(", ")
            )));
        }
        let spec = required(req.wrapping_key_spec, "wrappingKeySpec")?;
        let size = match spec.as_str() {
            "RSA_2048" => KeySize::Rsa2048,
            "RSA_3072" => KeySize::Rsa3072,
            "RSA_4096" => KeySize::Rsa4096,
            other => {
                return Err(KmsError::Validation(format!(
                    "1 validation error detected: Value '{other}' at 'wrappingKeySpec' failed to satisfy constraint: Member must satisfy enum value set: [RSA_2048, RSA_3072, RSA_4096]"
                )))
            }
        };
        self.authorize(&key, principal, "kms:GetParametersForImport", None, None)?;
        if key.entry.record.import.is_none() {
            return Err(not_external(&key.arn));
        }
        if key.entry.record.state == KeyState::PendingDeletion {
            return Err(KmsError::InvalidState(format!(
                "{} is pending deletion.",
                key.arn
            )));
        }
        let private = PrivateDecryptingKey::generate(size)
            .map_err(|e| KmsError::internal("rsa keygen", e))?;
        let pkcs8: aws_lc_rs::encoding::Pkcs8V1Der<'_> = private
            .as_der()
            .map_err(|e| KmsError::internal("pkcs8", e))?;
        let spki: aws_lc_rs::encoding::PublicKeyX509Der<'_> = private
            .public_key()
            .as_der()
            .map_err(|e| KmsError::internal("spki", e))?;
        let mut token = Vec::with_capacity(TOKEN_LEN);
        token.push(TOKEN_VERSION);
        token.extend_from_slice(&key.id);
        let mut rand = [0u8; 32];
        aws_lc_rs::rand::fill(&mut rand).map_err(|e| KmsError::internal("random", e))?;
        token.extend_from_slice(&rand);
        let valid_to = now() + IMPORT_PARAMETERS_TTL_S;
        let pending = PendingImport {
            token_digest: sha256_hex(&token),
            wrapping_key: self.store.seal_material(
                &wrapping_name(&key.entry.record.id),
                0,
                pkcs8.as_ref(),
            )?,
            algorithm: alg,
            valid_to,
        };
        // Each Region's key has its own parameters.
        self.update_regional(&key, |r| {
            let i = r.import.as_mut().ok_or_else(|| not_external(&key.arn))?;
            i.pending = Some(pending);
            Ok(())
        })?;
        Ok(json!({
            "KeyId": key.arn,
            "ImportToken": base64::engine::general_purpose::STANDARD.encode(&token),
            "PublicKey": base64::engine::general_purpose::STANDARD.encode(spki.as_ref()),
            "ParametersValidTo": valid_to,
        }))
    }

    #[allow(
        clippy::too_many_lines,
        reason = "every ImportKeyMaterial check in AWS's order, then the write"
    )]
    pub(in crate::service) fn import_key_material(
        &self,
        principal: &str,
        req: ImportRequest,
    ) -> KmsResult<Value> {
        let key = self.resolve(&required(req.key_id, "keyId")?)?;
        let token = required(req.import_token, "importToken")?;
        check_len("importToken", token.0.len(), 1, MAX_IMPORT_TOKEN)?;
        let wrapped = required(req.encrypted_key_material, "encryptedKeyMaterial")?;
        check_len(
            "encryptedKeyMaterial",
            wrapped.0.len(),
            1,
            MAX_ENCRYPTED_MATERIAL,
        )?;
        if let Some(t) = req.import_type.as_deref() {
            if t != "EXISTING_KEY_MATERIAL" {
                return Err(KmsError::UnsupportedOperation(format!(
                    "ImportType {t} is not supported"
                )));
            }
        }
        let t = now();
        let (model, valid_to) = match (req.expiration_model.as_deref(), req.valid_to) {
            (Some("KEY_MATERIAL_DOES_NOT_EXPIRE"), Some(_)) => {
                return Err(KmsError::Validation(
                    "ValidTo must be omitted when ExpirationModel is KEY_MATERIAL_DOES_NOT_EXPIRE"
                        .into(),
                ))
            }
            (Some("KEY_MATERIAL_DOES_NOT_EXPIRE"), None) | (None, None) => {
                ("KEY_MATERIAL_DOES_NOT_EXPIRE", None)
            }
            (Some("KEY_MATERIAL_EXPIRES") | None, Some(v)) => {
                if !v.is_finite() || v <= t || v > t + MAX_VALID_TO_S {
                    return Err(KmsError::Validation(
                        "ValidTo must be in the future and at most 365 days from now".into(),
                    ));
                }
                ("KEY_MATERIAL_EXPIRES", Some(v))
            }
            (Some("KEY_MATERIAL_EXPIRES"), None) => {
                return Err(KmsError::Validation(
                    "ValidTo is required when ExpirationModel is KEY_MATERIAL_EXPIRES".into(),
                ))
            }
            (Some(other), _) => {
                return Err(KmsError::Validation(format!(
                    "1 validation error detected: Value '{other}' at 'expirationModel' failed to satisfy constraint: Member must satisfy enum value set: [KEY_MATERIAL_EXPIRES, KEY_MATERIAL_DOES_NOT_EXPIRE]"
                )))
            }
        };
        self.authorize(&key, principal, "kms:ImportKeyMaterial", None, None)?;
        let record = &key.entry.record;
        let import = record
            .import
            .as_ref()
            .ok_or_else(|| not_external(&key.arn))?;
        if record.state == KeyState::PendingDeletion {
            return Err(KmsError::InvalidState(format!(
                "{} is pending deletion.",
                key.arn
            )));
        }
        let bad_token = || KmsError::InvalidImportToken("Invalid import token".into());
        if token.0.len() != TOKEN_LEN || token.0[0] != TOKEN_VERSION || token.0[1..17] != key.id {
            return Err(bad_token());
        }
        let pending = import.pending.as_ref().ok_or_else(bad_token)?;
        aws_lc_rs::constant_time::verify_slices_are_equal(
            sha256_hex(&token.0).as_bytes(),
            pending.token_digest.as_bytes(),
        )
        .map_err(|_| bad_token())?;
        if pending.valid_to <= t {
            return Err(KmsError::ExpiredImportToken(
                "The import token has expired; call GetParametersForImport again".into(),
            ));
        }
        let pkcs8 =
            self.store
                .unseal_material(&wrapping_name(&record.id), 0, &pending.wrapping_key)?;
        let material = unwrap(&pkcs8, &pending.algorithm, &wrapped.0)?;
        let spec = record.key_spec;
        match spec.hmac_material_lengths() {
            Some(lengths) if !lengths.contains(&material.len()) => {
                return Err(KmsError::IncorrectKeyMaterial(format!(
                    "{spec} key material must be {} to {} bytes",
                    lengths.start(),
                    lengths.end()
                )));
            }
            Some(_) => {
                // Checked as the store will load it, before anything is stored.
                crate::keys::KeyMaterial::load(spec, &material)?;
            }
            None if material.len() != MATERIAL_LEN => {
                return Err(KmsError::IncorrectKeyMaterial(format!(
                    "Symmetric key material must be {MATERIAL_LEN} bytes"
                )));
            }
            None => {}
        }
        let digest = material_digest(&material);
        let sealed = self.store.seal_material(&record.id, 0, &material)?;
        // Into the request's Region's key only: each Region of a multi-Region key takes the
        // (same) material by its own import, and keeps its own expiry.
        self.update_regional(&key, |r| {
            let i = r.import.as_mut().ok_or_else(|| not_external(&key.arn))?;
            // Checked under the store's lock: two imports of different material cannot both
            // be first.
            if i.material_digest.as_ref().is_some_and(|d| d != &digest) {
                return Err(KmsError::IncorrectKeyMaterial(
                    "The key material is not the material previously imported into this key".into(),
                ));
            }
            i.material_digest = Some(digest);
            i.expiration_model = Some(model.to_string());
            i.valid_to = valid_to;
            i.pending = None;
            r.materials = vec![sealed];
            if r.state == KeyState::PendingImport {
                r.state = KeyState::Enabled;
            }
            Ok(())
        })?;
        Ok(json!({}))
    }

    pub(in crate::service) fn delete_imported_key_material(
        &self,
        principal: &str,
        req: ImportRequest,
    ) -> KmsResult<Value> {
        let key = self.resolve(&required(req.key_id, "keyId")?)?;
        self.authorize(&key, principal, "kms:DeleteImportedKeyMaterial", None, None)?;
        if key.entry.record.import.is_none() {
            return Err(not_external(&key.arn));
        }
        if key.entry.record.state == KeyState::PendingDeletion {
            return Err(KmsError::InvalidState(format!(
                "{} is pending deletion.",
                key.arn
            )));
        }
        // From the request's Region's key only; the material stays while another Region's key
        // has it.
        self.update_regional(&key, |r| {
            if let Some(x) = super::regions::RegionImport::of_record(r) {
                delete_material(x);
            }
            drop_unused_material(r);
            Ok(())
        })?;
        Ok(json!({}))
    }
}

/// Deletes the imported material of one Region's key: it waits for the same material again
/// (a key pending deletion stays so).
fn delete_material(x: super::regions::RegionImport<'_>) {
    *x.expiration_model = None;
    *x.valid_to = None;
    if !matches!(
        *x.state,
        KeyState::PendingDeletion | KeyState::PendingReplicaDeletion
    ) {
        *x.state = KeyState::PendingImport;
    }
}

/// Forgets the sealed material of an `EXTERNAL` key once no Region's key has it.
fn drop_unused_material(r: &mut KeyRecord) {
    let mut held = false;
    super::regions::for_each_region_import(r, |x| held |= x.expiration_model.is_some());
    if !held {
        r.materials.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unwraps_every_algorithm() {
        use aws_lc_rs::encoding::AsDer;
        use aws_lc_rs::key_wrap::{AesKek, KeyWrapPadded, AES_256};
        use aws_lc_rs::rsa::{KeySize, OaepPublicEncryptingKey, PrivateDecryptingKey};
        let private = PrivateDecryptingKey::generate(KeySize::Rsa2048).unwrap();
        let pkcs8: aws_lc_rs::encoding::Pkcs8V1Der<'_> = private.as_der().unwrap();
        let public = OaepPublicEncryptingKey::new(private.public_key()).unwrap();
        let material = [0x5Au8; 32];
        for alg in ALGORITHMS {
            let mut wrapped = vec![0u8; 512];
            let wrapped = if alg.starts_with("RSAES") {
                public
                    .encrypt(oaep(alg), &material, &mut wrapped, None)
                    .unwrap()
                    .to_vec()
            } else {
                let aes = [0x11u8; 32];
                let mut out = public
                    .encrypt(oaep(alg), &aes, &mut wrapped, None)
                    .unwrap()
                    .to_vec();
                let mut kwp = vec![0u8; 64];
                let kek = AesKek::new(&AES_256, &aes).unwrap();
                out.extend_from_slice(kek.wrap_with_padding(&material, &mut kwp).unwrap());
                out
            };
            let got = unwrap(pkcs8.as_ref(), alg, &wrapped).unwrap();
            assert_eq!(&got[..], &material, "{alg}");
            // The other hash does not unwrap it.
            let other = if alg.ends_with("SHA_1") {
                alg.replace("SHA_1", "SHA_256")
            } else {
                alg.replace("SHA_256", "SHA_1")
            };
            assert!(unwrap(pkcs8.as_ref(), &other, &wrapped).is_err());
        }
        assert!(unwrap(pkcs8.as_ref(), "RSAES_OAEP_SHA_256", &[1, 2, 3]).is_err());
    }
}
