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
use crate::policy::{ISOLATION_KEY, RECIPIENT_PREFIX};
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

/// The value of [`ISOLATION_KEY`] for a document's isolation mark: `process` or `vm` from a
/// Cloister leaf certificate, `nitro` when the leaf carries no Cloister mark (a document from
/// AWS Nitro hardware, which is a virtual machine too).
pub fn isolation_value(isolation: Option<cloister_attestation::Isolation>) -> &'static str {
    isolation.map_or("nitro", |i| i.as_str())
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
        values.push((
            ISOLATION_KEY.to_owned(),
            isolation_value(doc.isolation()).to_owned(),
        ));
        Ok(Self { values, key })
    }

    /// Condition values (lower-case keys): `kms:recipientattestation:imagesha384` and
    /// `...:pcrN` from the document's PCRs, and [`ISOLATION_KEY`].
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

#[cfg(test)]
mod tests {
    use super::*;
    use cloister_attestation::{DocumentFields, Isolation, Pki};
    use std::collections::BTreeMap;

    fn setup() -> (
        tempfile::TempDir,
        Pki,
        cloister_attestation::DocumentSigner,
        Vec<u8>,
    ) {
        use aws_lc_rs::encoding::AsDer;
        use aws_lc_rs::signature::KeyPair as _;
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::init(&dir.path().join("pki")).unwrap();
        let signer = pki
            .host_ca()
            .unwrap()
            .issue_enclave_signer(
                "i-0-enc0",
                Isolation::Process,
                SystemTime::now() + Duration::from_secs(3600),
            )
            .unwrap();
        let kp = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let spki: aws_lc_rs::encoding::PublicKeyX509Der<'_> = kp.public_key().as_der().unwrap();
        (dir, pki, signer, spki.as_ref().to_vec())
    }

    fn doc(signer: &cloister_attestation::DocumentSigner, spki: &[u8], age: Duration) -> Vec<u8> {
        let ms = u64::try_from(
            (SystemTime::now() - age)
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_millis(),
        )
        .unwrap();
        let mut pcrs = BTreeMap::new();
        pcrs.insert(0usize, vec![0xAB; 48]);
        pcrs.insert(7usize, vec![0x07; 48]);
        signer
            .sign(DocumentFields {
                module_id: "i-0-enc0".into(),
                timestamp_ms: ms,
                pcrs,
                public_key: Some(spki.to_vec()),
                user_data: None,
                nonce: None,
            })
            .unwrap()
    }

    #[test]
    fn verifies_once_then_serves_from_cache() {
        let (_d, pki, signer, spki) = setup();
        let gate = RecipientGate::new(
            Verifier::new(vec![pki.root_der().to_vec()]).unwrap(),
            Duration::from_secs(300),
        );
        let d = doc(&signer, &spki, Duration::ZERO);
        let a = gate.resolve(&d).unwrap();
        let b = gate.resolve(&d).unwrap();
        assert!(Arc::ptr_eq(&a, &b), "second call must hit the cache");
        let values: HashMap<_, _> = a.condition_values().cloned().collect();
        assert_eq!(
            values["kms:recipientattestation:imagesha384"],
            hex::encode([0xAB; 48])
        );
        assert_eq!(
            values["kms:recipientattestation:pcr7"],
            hex::encode([0x07; 48])
        );
        assert_eq!(values[ISOLATION_KEY], "process");
        assert!(a.seal(b"x").unwrap().starts_with(&[0x30]));
    }

    #[test]
    fn isolation_values() {
        assert_eq!(isolation_value(Some(Isolation::Vm)), "vm");
        assert_eq!(isolation_value(Some(Isolation::Process)), "process");
        assert_eq!(isolation_value(None), "nitro");
    }

    #[test]
    fn refuses_stale_garbage_and_untrusted_documents() {
        let (_d, pki, signer, spki) = setup();
        let gate = RecipientGate::new(
            Verifier::new(vec![pki.root_der().to_vec()]).unwrap(),
            Duration::from_secs(10),
        );
        // (The leaf is backdated by a minute, so a 30-second-old document can be signed.)
        let old = doc(&signer, &spki, Duration::from_secs(30));
        assert!(matches!(gate.resolve(&old), Err(KmsError::Validation(_))));
        assert!(matches!(
            gate.resolve(b"junk"),
            Err(KmsError::Validation(_))
        ));
        let (_d2, other_pki, _, _) = setup();
        let other = RecipientGate::new(
            Verifier::new(vec![other_pki.root_der().to_vec()]).unwrap(),
            Duration::from_secs(60),
        );
        let fresh = doc(&signer, &spki, Duration::ZERO);
        assert!(matches!(
            other.resolve(&fresh),
            Err(KmsError::Validation(_))
        ));
    }
}
