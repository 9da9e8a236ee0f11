//! Regions and multi-Region keys: one server answers for every Region it serves, and a
//! multi-Region key (id `mrk-...`) exists in its primary Region and in each replica Region.
//!
//! The Region of a request is the one of its SigV4 credential scope (see [`super::scope`]); a
//! request without one (a direct call) is in the service's own Region. Single-Region keys live
//! in the service's own Region: in another Region they do not exist (NotFoundException), as in
//! AWS. Key and alias ARNs name the request's Region.
//!
//! A multi-Region key is one record: the primary and its replicas share the key material (so a
//! ciphertext made in one Region decrypts in every other), its rotations, and, here, also its
//! key policy, grants, description, tags and state (AWS keeps those per Region; ReplicateKey
//! therefore refuses a `Policy`, `Description` or `Tags` of its own). [`MultiRegionRecord`] lists
//! the primary Region and the replica Regions. Scheduling the deletion of a multi-Region key
//! deletes it in every Region.
//!
//! Multi-Region key ids are 16 bytes like UUID key ids, marked by the high nibble 0xF of byte 6
//! (see [`crate::store::is_mrk_id`]), so the ciphertext format is the same for both.

use super::super::{check_len, required, Service};
use super::scope::{self, Caller};
use crate::error::{KmsError, KmsResult};
use crate::store::{format_key_id, now, KeyRecord, KeyState};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// Most replicas of one multi-Region key.
pub const MAX_REPLICAS: usize = 64;
/// Longest Region name.
pub const MAX_REGION_LEN: usize = 32;

/// A replica of a multi-Region key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicaRecord {
    /// Its Region.
    pub region: String,
    /// When it was made.
    pub created: f64,
}

/// The Regions of a multi-Region key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MultiRegionRecord {
    /// The primary Region.
    pub primary: String,
    /// The replica Regions, in the order they were made.
    #[serde(default)]
    pub replicas: Vec<ReplicaRecord>,
}

impl MultiRegionRecord {
    /// True when the key exists in `region`.
    pub fn in_region(&self, region: &str) -> bool {
        self.primary == region || self.replicas.iter().any(|r| r.region == region)
    }
}

/// The fields of ReplicateKey and UpdatePrimaryRegion.
#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub(in crate::service) struct RegionReq {
    key_id: Option<String>,
    replica_region: Option<String>,
    primary_region: Option<String>,
    policy: Option<String>,
    description: Option<String>,
    tags: Option<Value>,
    bypass_policy_lockout_safety_check: Option<bool>,
}

/// Parses a ReplicateKey or UpdatePrimaryRegion body.
pub(in crate::service) fn parse(body: &[u8]) -> KmsResult<RegionReq> {
    if body.is_empty() {
        return Ok(RegionReq::default());
    }
    serde_json::from_slice(body)
        .map_err(|e| KmsError::Serialization(format!("Invalid request: {e}")))
}

/// A fresh multi-Region key id.
pub(in crate::service) fn new_mrk_id() -> KmsResult<String> {
    let mut id = [0u8; 16];
    aws_lc_rs::rand::fill(&mut id).map_err(|e| KmsError::internal("random", e))?;
    id[6] |= 0xF0;
    Ok(format_key_id(&id))
}

fn check_region(field: &str, r: &str) -> KmsResult<()> {
    check_len(field, r.len(), 1, MAX_REGION_LEN)?;
    if !r
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(KmsError::Validation(format!(
            "1 validation error detected: Value '{r}' at '{field}' failed to satisfy constraint: Member must satisfy regular expression pattern: ^([a-z]+-){{2,3}}\\d+$"
        )));
    }
    Ok(())
}

impl Service {
    /// The Region of the current request.
    pub(in crate::service) fn request_region(&self) -> String {
        scope::region().unwrap_or_else(|| self.region.clone())
    }

    /// True when the key of `r` exists in the request's Region.
    pub(in crate::service) fn in_request_region(&self, r: &KeyRecord) -> bool {
        let region = self.request_region();
        match &r.multi_region {
            Some(m) => m.in_region(&region),
            None => region == self.region,
        }
    }

    /// NotFoundException for a key that does not exist in the request's Region.
    pub(in crate::service) fn check_in_region(&self, r: &KeyRecord) -> KmsResult<()> {
        if self.in_request_region(r) {
            Ok(())
        } else {
            Err(KmsError::NotFound(format!(
                "Key '{}' does not exist",
                self.key_arn(&r.id)
            )))
        }
    }

    /// Makes a new key multi-Region, its primary in the request's Region.
    pub(in crate::service) fn apply_multi_region(&self, record: &mut KeyRecord, multi: bool) {
        if multi {
            record.multi_region = Some(MultiRegionRecord {
                primary: self.request_region(),
                replicas: Vec::new(),
            });
        }
    }

    fn arn_in(&self, region: &str, id: &str) -> String {
        format!("arn:aws:kms:{region}:{}:key/{id}", self.account)
    }

    /// `MultiRegion` and `MultiRegionConfiguration` of the metadata.
    pub(in crate::service) fn region_metadata(&self, r: &KeyRecord, m: &mut Value) {
        let Some(mr) = &r.multi_region else { return };
        let here = self.request_region();
        m["MultiRegion"] = json!(true);
        m["MultiRegionConfiguration"] = json!({
            "MultiRegionKeyType": if mr.primary == here { "PRIMARY" } else { "REPLICA" },
            "PrimaryKey": { "Arn": self.arn_in(&mr.primary, &r.id), "Region": mr.primary },
            "ReplicaKeys": mr.replicas.iter()
                .map(|x| json!({ "Arn": self.arn_in(&x.region, &r.id), "Region": x.region }))
                .collect::<Vec<_>>(),
        });
    }

    pub(in crate::service) fn replicate_key(
        &self,
        principal: &str,
        req: RegionReq,
    ) -> KmsResult<Value> {
        let key = self.resolve(&required(req.key_id, "keyId")?)?;
        let replica = required(req.replica_region, "replicaRegion")?;
        check_region("replicaRegion", &replica)?;
        if req.policy.is_some() || req.description.is_some() || req.tags.is_some() {
            return Err(KmsError::UnsupportedOperation(
                "Replicas share the primary key's policy, description and tags here; omit Policy, Description and Tags".into(),
            ));
        }
        let _ = req.bypass_policy_lockout_safety_check;
        self.authorize(&key, principal, "kms:ReplicateKey", None, None)?;
        let mr = key.entry.record.multi_region.as_ref().ok_or_else(|| {
            KmsError::UnsupportedOperation(format!("{} is not a multi-Region key", key.arn))
        })?;
        if mr.primary != self.request_region() {
            return Err(KmsError::UnsupportedOperation(format!(
                "{} is a replica key; call ReplicateKey in the primary Region {}",
                key.arn, mr.primary
            )));
        }
        if !self.served_regions.contains(&replica) {
            return Err(KmsError::UnsupportedOperation(format!(
                "Region {replica} is not served by this key service"
            )));
        }
        if mr.in_region(&replica) {
            return Err(KmsError::AlreadyExists(format!(
                "Key {} already exists in Region {replica}",
                self.arn_in(&replica, &key.entry.record.id)
            )));
        }
        if key.entry.record.state == KeyState::PendingDeletion {
            return Err(KmsError::InvalidState(format!(
                "{} is pending deletion.",
                key.arn
            )));
        }
        let target = replica.clone();
        let (entry, ()) = self.store.update_key(&key.id, |r| {
            let mr = r
                .multi_region
                .as_mut()
                .ok_or_else(|| KmsError::Internal("multi-Region record".into()))?;
            if mr.in_region(&target) {
                return Err(KmsError::AlreadyExists(format!(
                    "The key already exists in Region {target}"
                )));
            }
            if mr.replicas.len() >= MAX_REPLICAS {
                return Err(KmsError::LimitExceeded(format!(
                    "A multi-Region key can have at most {MAX_REPLICAS} replicas"
                )));
            }
            mr.replicas.push(ReplicaRecord {
                region: target,
                created: now(),
            });
            Ok(())
        })?;
        // The replica's metadata as its own Region sees it.
        let metadata = {
            let _in_replica = scope::enter(&Caller {
                principal: principal.to_string(),
                region: Some(replica),
                ..Caller::default()
            });
            self.metadata(&entry)
        };
        Ok(json!({
            "ReplicaKeyMetadata": metadata,
            "ReplicaPolicy": entry.record.policy,
            "ReplicaTags": entry.record.tags.iter()
                .map(|t| json!({ "TagKey": t.key, "TagValue": t.value }))
                .collect::<Vec<_>>(),
        }))
    }

    pub(in crate::service) fn update_primary_region(
        &self,
        principal: &str,
        req: RegionReq,
    ) -> KmsResult<Value> {
        let key = self.resolve(&required(req.key_id, "keyId")?)?;
        let new_primary = required(req.primary_region, "primaryRegion")?;
        check_region("primaryRegion", &new_primary)?;
        self.authorize(&key, principal, "kms:UpdatePrimaryRegion", None, None)?;
        let mr = key.entry.record.multi_region.as_ref().ok_or_else(|| {
            KmsError::UnsupportedOperation(format!("{} is not a multi-Region key", key.arn))
        })?;
        if mr.primary != self.request_region() {
            return Err(KmsError::UnsupportedOperation(format!(
                "{} is a replica key; call UpdatePrimaryRegion in the primary Region {}",
                key.arn, mr.primary
            )));
        }
        if !mr.replicas.iter().any(|r| r.region == new_primary) {
            return Err(KmsError::NotFound(format!(
                "Key {} does not exist",
                self.arn_in(&new_primary, &key.entry.record.id)
            )));
        }
        if key.entry.record.state != KeyState::Enabled
            && key.entry.record.state != KeyState::Disabled
        {
            return Err(KmsError::InvalidState(format!(
                "{} is {}.",
                key.arn,
                key.entry.record.state.as_str()
            )));
        }
        self.store.update_key(&key.id, |r| {
            let mr = r
                .multi_region
                .as_mut()
                .ok_or_else(|| KmsError::Internal("multi-Region record".into()))?;
            let i = mr
                .replicas
                .iter()
                .position(|x| x.region == new_primary)
                .ok_or_else(|| KmsError::NotFound("replica vanished".into()))?;
            let old = std::mem::replace(&mut mr.primary, new_primary);
            mr.replicas[i] = ReplicaRecord {
                region: old,
                created: now(),
            };
            Ok(())
        })?;
        Ok(json!({}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{is_mrk_id, parse_key_id};

    #[test]
    fn mrk_ids_round_trip_and_differ_from_uuids() {
        let id = new_mrk_id().unwrap();
        assert!(id.starts_with("mrk-") && id.len() == 36, "{id}");
        let bytes = parse_key_id(&id).unwrap();
        assert!(is_mrk_id(&bytes));
        assert_eq!(format_key_id(&bytes), id);
        let uuid = uuid::Uuid::new_v4().hyphenated().to_string();
        assert!(!is_mrk_id(&parse_key_id(&uuid).unwrap()));
        for bad in [
            "mrk-",
            "mrk-0123",
            "mrk-0123456789abcdef0123456789ABCDEF",
            // byte 6 without the marker nibble
            "mrk-00000000000000000000000000000000",
            "ffffffff-ffff-ffff-ffff-ffffffffffff",
        ] {
            assert!(parse_key_id(bad).is_none(), "{bad}");
        }
    }
}
