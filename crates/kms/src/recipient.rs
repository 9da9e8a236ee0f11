//! Recipient: attestation-bound key release.
//!
//! A request's `Recipient.AttestationDocument` is verified with the attestation crate's
//! [`Verifier`] against the configured trust anchors. Only a [`VerifiedDocument`] (which only the
//! verifier can construct) becomes an [`AttestedRecipient`]: its PCRs become the
//! `kms:RecipientAttestation:*` condition values, and its RSA public key seals the response
//! (CMS, see [`crate::cms`]). An unverified document cannot reach policy evaluation.
//!
//! Verified documents are cached by the SHA-256 of their bytes, so an enclave that repeats calls
//! with the same document pays for chain and signature checks once. A cached entry is used only
//! until the earlier of the document's expiry (timestamp + maximum age) and its signing leaf's
//! notAfter; after that the document is verified again (and then refused as too old).

use crate::cms::RecipientKey;
use crate::error::{KmsError, KmsResult};
use crate::policy::RECIPIENT_PREFIX;
use cloister_attestation::{VerifiedDocument, Verifier, VerifyOptions};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
/// Most cached documents.
pub const CACHE_MAX: usize = 4096;

/// A recipient whose attestation document was verified.
pub struct AttestedRecipient {
    values: Vec<(String, String)>,
    key: RecipientKey,
}

impl std::fmt::Debug for AttestedRecipient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttestedRecipient")
            .field("values", &self.values)
            .finish_non_exhaustive()
    }
}

impl AttestedRecipient {
    /// Builds the recipient from a verified document: its PCRs and its RSA public key.
    pub fn from_verified(doc: &VerifiedDocument) -> KmsResult<Self> {
        let spki = doc.public_key().ok_or_else(|| {
            KmsError::Validation("The attestation document has no public key".into())
        })?;
        let key = RecipientKey::from_spki(spki)?;
        let mut values = Vec::new();
        for (index, value) in doc.pcrs() {
            let hex = hex::encode(value);
            if index == 0 {
                values.push((format!("{RECIPIENT_PREFIX}imagesha384"), hex.clone()));
            }
            values.push((format!("{RECIPIENT_PREFIX}pcr{index}"), hex));
        }
        Ok(Self { values, key })
    }

    /// Condition values (lower-case keys).
    pub fn condition_values(&self) -> impl Iterator<Item = &(String, String)> {
        self.values.iter()
    }

    /// Seals `plaintext` for this recipient (CMS EnvelopedData, DER).
    pub fn seal(&self, plaintext: &[u8]) -> KmsResult<Vec<u8>> {
        self.key.seal(plaintext)
    }
}

struct Cached {
    /// Milliseconds since the epoch after which the entry must not be used.
    valid_until_ms: u64,
    recipient: Arc<AttestedRecipient>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Verifies documents (with a cache) and yields attested recipients.
pub struct RecipientGate {
    verifier: Verifier,
    max_age: Duration,
    cache: Mutex<HashMap<[u8; 32], Cached>>,
}

impl std::fmt::Debug for RecipientGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecipientGate")
            .field("max_age", &self.max_age)
            .finish_non_exhaustive()
    }
}

impl RecipientGate {
    /// A gate trusting `verifier`'s anchors, refusing documents older than `max_age`.
    pub fn new(verifier: Verifier, max_age: Duration) -> Self {
        Self {
            verifier,
            max_age,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Verifies `doc` (or finds it in the cache) and returns the attested recipient.
    pub fn resolve(&self, doc: &[u8]) -> KmsResult<Arc<AttestedRecipient>> {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, doc);
        let mut id = [0u8; 32];
        id.copy_from_slice(digest.as_ref());
        let now = now_ms();
        if let Ok(cache) = self.cache.lock() {
            if let Some(c) = cache.get(&id) {
                if now < c.valid_until_ms {
                    return Ok(c.recipient.clone());
                }
            }
        }
        let opts = VerifyOptions {
            at: SystemTime::now(),
            expected_nonce: None,
            max_age: Some(self.max_age),
            expected_pcrs: Vec::new(),
        };
        let verified = self.verifier.verify(doc, &opts).map_err(|e| {
            KmsError::Validation(format!("The attestation document is not valid: {e}"))
        })?;
        let recipient = Arc::new(AttestedRecipient::from_verified(&verified)?);
        let max_age_ms = u64::try_from(self.max_age.as_millis()).unwrap_or(u64::MAX);
        let valid_until_ms = verified
            .timestamp_ms()
            .saturating_add(max_age_ms)
            .min(verified.leaf_not_after_secs().saturating_mul(1000));
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= CACHE_MAX {
                cache.retain(|_, c| now < c.valid_until_ms);
                if cache.len() >= CACHE_MAX {
                    cache.clear();
                }
            }
            cache.insert(
                id,
                Cached {
                    valid_until_ms,
                    recipient: recipient.clone(),
                },
            );
        }
        Ok(recipient)
    }
}
