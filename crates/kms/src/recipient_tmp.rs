//! Temporary stand-in while the attestation crate is being written (dev only; removed).
use crate::cms::RecipientKey;
use crate::error::{KmsError, KmsResult};
use std::sync::Arc;
/// x
pub struct AttestedRecipient { values: Vec<(String, String)>, key: RecipientKey }
impl AttestedRecipient {
    /// x
    pub fn condition_values(&self) -> impl Iterator<Item = &(String, String)> { self.values.iter() }
    /// x
    pub fn seal(&self, p: &[u8]) -> KmsResult<Vec<u8>> { self.key.seal(p) }
}
/// x
#[derive(Debug)]
pub struct RecipientGate;
impl RecipientGate {
    /// x
    pub fn resolve(&self, _doc: &[u8]) -> KmsResult<Arc<AttestedRecipient>> { Err(KmsError::Validation("tmp".into())) }
}
