//! ListKeyRotations: the material versions the rotation code recorded, oldest first.
//!
//! Each rotation (automatic, by [`Service::maintain`], or on demand, by RotateKeyOnDemand) adds a
//! material version and records its time in the key's `rotations`; the times of on-demand
//! rotations are also kept in `on_demand_rotations`, which tells the two kinds apart.

use crate::error::{KmsError, KmsResult};
use crate::service::request::ListKeyRotationsRequest;
use crate::service::validate::{check_len, check_range, required};
use crate::service::Service;
use crate::store::KeyRecord;
use serde_json::{json, Value};

/// `(time, type)` of each rotation of `r`, oldest first.
pub(in crate::service) fn rotations(r: &KeyRecord) -> Vec<(f64, &'static str)> {
    r.rotations
        .iter()
        .map(|t| {
            let kind = if r.on_demand_rotations.contains(t) {
                "ON_DEMAND"
            } else {
                "AUTOMATIC"
            };
            (*t, kind)
        })
        .collect()
}

impl Service {
    pub(in crate::service) fn list_key_rotations(
        &self,
        principal: &str,
        req: ListKeyRotationsRequest,
    ) -> KmsResult<Value> {
        let key = self.resolve(&required(req.key_id, "keyId")?)?;
        let limit = match req.limit {
            Some(l) => check_range("limit", l, 1, 1000)?,
            None => 100,
        };
        self.authorize(&key, principal, "kms:ListKeyRotations", None, None)?;
        if key.entry.record.import.is_some() {
            return Err(KmsError::UnsupportedOperation(format!(
                "{} has imported key material, which this key service does not rotate",
                key.arn
            )));
        }
        let all = rotations(&key.entry.record);
        let start = match req.marker.as_deref() {
            Some(m) => {
                check_len("marker", m.len(), 1, 32)?;
                m.parse::<usize>()
                    .ok()
                    .filter(|i| *i <= all.len())
                    .ok_or_else(|| KmsError::InvalidMarker(format!("Invalid marker {m}")))?
            }
            None => 0,
        };
        let end = (start + limit).min(all.len());
        let list: Vec<Value> = all[start..end]
            .iter()
            .map(|(t, kind)| json!({ "KeyId": key.arn, "RotationDate": t, "RotationType": kind }))
            .collect();
        let more = end < all.len();
        let mut out = json!({ "Rotations": list, "Truncated": more });
        if more {
            out["NextMarker"] = json!(end.to_string());
        }
        Ok(out)
    }

    /// Refuses to rotate keys whose material is imported (their material comes from outside).
    pub(in crate::service) fn check_rotatable(&self, r: &KeyRecord) -> KmsResult<()> {
        if r.import.is_some() {
            return Err(KmsError::UnsupportedOperation(format!(
                "{} has imported key material, which this key service does not rotate",
                self.key_arn(&r.id)
            )));
        }
        Ok(())
    }
}
