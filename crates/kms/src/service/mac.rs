//! GenerateMac and VerifyMac with HMAC keys (HMAC_224/256/384/512, usage GENERATE_VERIFY_MAC).
//!
//! The key's spec fixes its one MAC algorithm; a request naming another is refused with
//! `InvalidKeyUsageException`, a MAC that does not verify with `KMSInvalidMacException`
//! (compared in constant time). The HMAC key itself never leaves the service.

use super::asymmetric::enum_error;
use super::authz::Resolved;
use super::request::MacRequest;
use super::validate::{check_len, required};
use super::{b64, Service};
use crate::error::{KmsError, KmsResult};
use crate::keys::{KeyUsage, MacAlgorithm, MAX_MAC, MAX_MESSAGE};
use serde_json::{json, Value};

fn parse_mac_algorithm(alg: Option<String>) -> KmsResult<MacAlgorithm> {
    let a = required(alg, "macAlgorithm")?;
    MacAlgorithm::parse(&a).ok_or_else(|| {
        enum_error(
            "macAlgorithm",
            &a,
            &[
                "HMAC_SHA_224",
                "HMAC_SHA_256",
                "HMAC_SHA_384",
                "HMAC_SHA_512",
            ],
        )
    })
}

impl Service {
    /// Resolves, validates and authorizes a MAC request: the key, the message and algorithm.
    fn mac_request(
        &self,
        principal: &str,
        action: &str,
        key_id: Option<String>,
        message: &Option<super::Blob>,
        alg: Option<String>,
    ) -> KmsResult<(Resolved, MacAlgorithm)> {
        let key = self.resolve(&required(key_id, "keyId")?)?;
        let len = message.as_ref().map(|m| m.0.len());
        check_len("message", required(len, "message")?, 1, MAX_MESSAGE)?;
        let alg = parse_mac_algorithm(alg)?;
        self.authorize(&key, principal, action, None, None)?;
        self.require_enabled(&key)?;
        let spec = key.entry.record.key_spec;
        if spec.mac_algorithm() != Some(alg)
            && key.entry.record.usage() == KeyUsage::GenerateVerifyMac
        {
            return Err(KmsError::InvalidKeyUsage(format!(
                "MAC algorithm {} is not compatible with {} (KeySpec {spec}).",
                alg.as_str(),
                key.arn
            )));
        }
        Ok((key, alg))
    }

    pub(super) fn generate_mac(&self, principal: &str, req: MacRequest) -> KmsResult<Value> {
        let (key, alg) = self.mac_request(
            principal,
            "kms:GenerateMac",
            req.key_id,
            &req.message,
            req.mac_algorithm,
        )?;
        let material = Self::require_usage(&key, KeyUsage::GenerateVerifyMac, "GenerateMac")?;
        let message = req.message.as_ref().map(|m| &m.0[..]).unwrap_or_default();
        let mac = material.mac(alg, message)?;
        Ok(json!({
            "Mac": b64(&mac),
            "MacAlgorithm": alg.as_str(),
            "KeyId": key.arn,
        }))
    }

    pub(super) fn verify_mac(&self, principal: &str, req: MacRequest) -> KmsResult<Value> {
        let mac = required(req.mac, "mac")?;
        check_len("mac", mac.0.len(), 1, MAX_MAC)?;
        let (key, alg) = self.mac_request(
            principal,
            "kms:VerifyMac",
            req.key_id,
            &req.message,
            req.mac_algorithm,
        )?;
        let material = Self::require_usage(&key, KeyUsage::GenerateVerifyMac, "VerifyMac")?;
        let message = req.message.as_ref().map(|m| &m.0[..]).unwrap_or_default();
        material.verify_mac(alg, message, &mac.0)?;
        Ok(json!({
            "KeyId": key.arn,
            "MacValid": true,
            "MacAlgorithm": alg.as_str(),
        }))
    }
}
