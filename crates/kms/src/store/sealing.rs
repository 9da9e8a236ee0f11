//! Sealing under the master key: key material and the administrator credential, each with
//! AES-256-GCM and an AAD naming what it is (key id and version), so nothing sealed can be moved
//! to another key; resealing for a master key rotation.

use super::{AdminCredential, KeyRecord};
use crate::error::{KmsError, KmsResult};
use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, NONCE_LEN};
use base64::Engine as _;
use zeroize::Zeroizing;

/// AAD of the sealed administrator credential.
pub(super) const ADMIN_AAD: &[u8] = b"cloister-kms/admin-credential/v1";

pub(super) fn material_aad(key_id: &str, version: usize) -> Vec<u8> {
    format!("cloister-kms/key-material/v1/{key_id}/{version}").into_bytes()
}

/// Seals `plain` under `key` (AES-256-GCM, random nonce): base64 of nonce, ciphertext, tag.
pub(super) fn seal_with(key: &LessSafeKey, aad: &[u8], plain: &[u8]) -> KmsResult<String> {
    let mut nonce = [0u8; NONCE_LEN];
    aws_lc_rs::rand::fill(&mut nonce).map_err(|e| KmsError::internal("random", e))?;
    let mut buf = Vec::with_capacity(NONCE_LEN + plain.len() + 16);
    buf.extend_from_slice(&nonce);
    buf.extend_from_slice(plain);
    let tag = key
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut buf[NONCE_LEN..],
        )
        .map_err(|e| KmsError::internal("seal material", e))?;
    buf.extend_from_slice(tag.as_ref());
    Ok(base64::engine::general_purpose::STANDARD.encode(&buf))
}

/// Opens what [`seal_with`] sealed.
pub(super) fn unseal_with(
    key: &LessSafeKey,
    aad: &[u8],
    sealed: &str,
) -> KmsResult<Zeroizing<Vec<u8>>> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(sealed)
        .map_err(|e| KmsError::internal("sealed material", e))?;
    if raw.len() < NONCE_LEN + 16 {
        return Err(KmsError::Internal("sealed material too short".into()));
    }
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&raw[..NONCE_LEN]);
    let mut buf = Zeroizing::new(raw[NONCE_LEN..].to_vec());
    let n = key
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut buf[..],
        )
        .map_err(|_| {
            KmsError::Internal("sealed key material does not open under this master key".into())
        })?
        .len();
    buf.truncate(n);
    Ok(buf)
}

/// Seals every material version (and drops pending import parameters, whose wrapping key is
/// sealed too) of `record` again: opened under `old`, sealed under `new`.
pub(super) fn reseal_record(
    old: &LessSafeKey,
    new: &LessSafeKey,
    record: &mut KeyRecord,
) -> KmsResult<()> {
    for (i, sealed) in record.materials.iter_mut().enumerate() {
        let aad = material_aad(&record.id, i);
        let plain = unseal_with(old, &aad, sealed)?;
        *sealed = seal_with(new, &aad, &plain)?;
    }
    if let Some(import) = record.import.as_mut() {
        import.pending = None;
    }
    Ok(())
}

/// A fresh administrator credential (`AKIA...` and a random secret).
pub(super) fn new_admin_credential() -> KmsResult<AdminCredential> {
    let mut raw = [0u8; 30];
    aws_lc_rs::rand::fill(&mut raw).map_err(|e| KmsError::internal("random", e))?;
    const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let akid: String = std::iter::once("AKIA".to_string())
        .chain(
            raw[..16]
                .iter()
                .map(|b| (ALNUM[(*b & 31) as usize] as char).to_string()),
        )
        .collect();
    let secret = Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(&raw[..]));
    Ok(AdminCredential {
        access_key_id: akid,
        secret_access_key: secret,
    })
}
