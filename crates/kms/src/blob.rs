//! Ciphertext blobs of symmetric keys and the encryption context bound to them.
//!
//! Layout (all lengths fixed except the last field):
//!
//! ```text
//! 0      1      version (0x01)
//! 1     16      key id (UUID bytes)
//! 17     4      key-material version, big-endian
//! 21    12      AES-GCM nonce (random)
//! 33     n      AES-256-GCM ciphertext || 16-byte tag
//! ```
//!
//! The AAD is the 21-byte header followed by the canonical encryption context: the pairs sorted
//! by key (byte order), each as `u32 len, key, u32 len, value`, after a `u32` pair count. So a
//! blob names its key and material version (Decrypt needs no KeyId, rotation keeps old blobs
//! readable), and neither the header nor the context can be changed without the tag failing.

use crate::error::{KmsError, KmsResult};
use aws_lc_rs::aead::{self, Aad, LessSafeKey, Nonce, NONCE_LEN};
use std::collections::BTreeMap;

/// Blob format version.
pub const BLOB_VERSION: u8 = 1;
/// Header length (version, key id, material version).
pub const HEADER_LEN: usize = 1 + 16 + 4;
/// Smallest valid blob: header, nonce, empty ciphertext, tag.
pub const MIN_BLOB_LEN: usize = HEADER_LEN + NONCE_LEN + TAG_LEN;
/// AES-GCM tag length.
pub const TAG_LEN: usize = 16;
/// Largest ciphertext blob accepted (AWS: 6144).
pub const MAX_BLOB_LEN: usize = 6144;
/// Largest encoded encryption context.
pub const MAX_CONTEXT_BYTES: usize = 8192;
/// Most encryption-context pairs.
pub const MAX_CONTEXT_PAIRS: usize = 64;

/// An encryption context (sorted).
pub type EncryptionContext = BTreeMap<String, String>;

/// The fields of a blob's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobHeader {
    /// Key id.
    pub key_id: [u8; 16],
    /// Key-material version.
    pub material: u32,
}

/// Canonical bytes of an encryption context (the AAD suffix).
pub fn canonical_context(ctx: &EncryptionContext) -> KmsResult<Vec<u8>> {
    if ctx.len() > MAX_CONTEXT_PAIRS {
        return Err(KmsError::Validation(format!(
            "EncryptionContext has more than {MAX_CONTEXT_PAIRS} pairs"
        )));
    }
    let mut out = Vec::with_capacity(
        4 + ctx
            .iter()
            .map(|(k, v)| 8 + k.len() + v.len())
            .sum::<usize>(),
    );
    let too_large = || {
        KmsError::Validation(format!(
            "EncryptionContext is larger than {MAX_CONTEXT_BYTES} bytes"
        ))
    };
    let pairs = u32::try_from(ctx.len()).map_err(|_| too_large())?;
    out.extend_from_slice(&pairs.to_be_bytes());
    for (k, v) in ctx {
        if k.is_empty() {
            return Err(KmsError::Validation(
                "EncryptionContext keys must not be empty".into(),
            ));
        }
        for s in [k, v] {
            let len = u32::try_from(s.len()).map_err(|_| too_large())?;
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(s.as_bytes());
        }
        if out.len() > MAX_CONTEXT_BYTES {
            return Err(too_large());
        }
    }
    Ok(out)
}

/// Reads a blob's header without decrypting it.
pub fn parse_header(blob: &[u8]) -> KmsResult<BlobHeader> {
    if blob.len() < MIN_BLOB_LEN || blob.len() > MAX_BLOB_LEN || blob[0] != BLOB_VERSION {
        return Err(KmsError::InvalidCiphertext(
            "The ciphertext is not a valid ciphertext blob".into(),
        ));
    }
    let mut key_id = [0u8; 16];
    key_id.copy_from_slice(&blob[1..17]);
    let mut m = [0u8; 4];
    m.copy_from_slice(&blob[17..21]);
    Ok(BlobHeader {
        key_id,
        material: u32::from_be_bytes(m),
    })
}

fn header_bytes(h: &BlobHeader) -> [u8; HEADER_LEN] {
    let mut out = [0u8; HEADER_LEN];
    out[0] = BLOB_VERSION;
    out[1..17].copy_from_slice(&h.key_id);
    out[17..21].copy_from_slice(&h.material.to_be_bytes());
    out
}

/// Encrypts `plaintext` into a blob.
pub fn seal(
    key: &LessSafeKey,
    header: &BlobHeader,
    context: &[u8],
    plaintext: &[u8],
) -> KmsResult<Vec<u8>> {
    let mut nonce = [0u8; NONCE_LEN];
    aws_lc_rs::rand::fill(&mut nonce).map_err(|e| KmsError::internal("random nonce", e))?;
    let hdr = header_bytes(header);
    let mut aad = Vec::with_capacity(HEADER_LEN + context.len());
    aad.extend_from_slice(&hdr);
    aad.extend_from_slice(context);
    let mut out = Vec::with_capacity(HEADER_LEN + NONCE_LEN + plaintext.len() + TAG_LEN);
    out.extend_from_slice(&hdr);
    out.extend_from_slice(&nonce);
    let body_start = out.len();
    out.extend_from_slice(plaintext);
    let tag = key
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(&aad[..]),
            &mut out[body_start..],
        )
        .map_err(|e| KmsError::internal("seal", e))?;
    out.extend_from_slice(tag.as_ref());
    Ok(out)
}

/// Decrypts a blob whose header was read with [`parse_header`]. Returns the plaintext.
pub fn open(
    key: &LessSafeKey,
    blob: &[u8],
    context: &[u8],
) -> KmsResult<zeroize::Zeroizing<Vec<u8>>> {
    if blob.len() < MIN_BLOB_LEN {
        return Err(KmsError::InvalidCiphertext("ciphertext too short".into()));
    }
    let mut aad = Vec::with_capacity(HEADER_LEN + context.len());
    aad.extend_from_slice(&blob[..HEADER_LEN]);
    aad.extend_from_slice(context);
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&blob[HEADER_LEN..HEADER_LEN + NONCE_LEN]);
    let mut buf = zeroize::Zeroizing::new(blob[HEADER_LEN + NONCE_LEN..].to_vec());
    let len = key
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(&aad[..]),
            &mut buf[..],
        )
        .map_err(|_| KmsError::InvalidCiphertext(String::new()))?
        .len();
    buf.truncate(len);
    Ok(buf)
}

/// Builds an AES-256-GCM key from 32 bytes of material.
pub fn aead_key(material: &[u8]) -> KmsResult<LessSafeKey> {
    let unbound = aead::UnboundKey::new(&aead::AES_256_GCM, material)
        .map_err(|e| KmsError::internal("key material", e))?;
    Ok(LessSafeKey::new(unbound))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(pairs: &[(&str, &str)]) -> EncryptionContext {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn round_trip_and_tamper() {
        let key = aead_key(&[7u8; 32]).unwrap();
        let h = BlobHeader {
            key_id: [1; 16],
            material: 3,
        };
        let c = canonical_context(&ctx(&[("b", "2"), ("a", "1")])).unwrap();
        let blob = seal(&key, &h, &c, b"hello").unwrap();
        assert_eq!(parse_header(&blob).unwrap(), h);
        assert_eq!(&open(&key, &blob, &c).unwrap()[..], b"hello");
        // Order of insertion does not matter.
        let c2 = canonical_context(&ctx(&[("a", "1"), ("b", "2")])).unwrap();
        assert_eq!(c, c2);
        // Wrong context.
        let c3 = canonical_context(&ctx(&[("a", "1")])).unwrap();
        assert!(open(&key, &blob, &c3).is_err());
        // Every byte flipped fails.
        for i in 0..blob.len() {
            let mut t = blob.clone();
            t[i] ^= 0x40;
            let ok = parse_header(&t).is_ok() && open(&key, &t, &c).is_ok();
            assert!(!ok, "byte {i}");
        }
        assert!(parse_header(&blob[..MIN_BLOB_LEN - 1]).is_err());
        assert!(parse_header(&[]).is_err());
    }

    #[test]
    fn context_limits() {
        let many: EncryptionContext = (0..=MAX_CONTEXT_PAIRS)
            .map(|i| (format!("k{i}"), "v".into()))
            .collect();
        assert!(canonical_context(&many).is_err());
        assert!(canonical_context(&ctx(&[("", "v")])).is_err());
        let big = ctx(&[("k", &"v".repeat(MAX_CONTEXT_BYTES))]);
        assert!(canonical_context(&big).is_err());
    }
}
