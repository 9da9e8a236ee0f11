//! Regions and multi-Region keys: one server answers for every Region it serves, and a
//! multi-Region key (id `mrk-...`) exists in its primary Region and in each replica Region.
//!
//! The Region of a request is the one of its SigV4 credential scope (see [`super::scope`]); a
//! request without one (a direct call) is in the service's own Region. Single-Region keys live
//! in the service's own Region: in another Region they do not exist (NotFoundException), as in
//! AWS. Key and alias ARNs name the request's Region.
//!
//! A multi-Region key is one record: the primary and its replicas share the key material (so a
//! ciphertext made in one Region decrypts in every other), key spec, usage and origin, and its
//! rotations (automatic rotation is set on the primary and applies to all). Imported material
//! (origin `EXTERNAL`) is the same everywhere too, but, as in AWS, goes into each Region's key
//! by its own import and expires or is deleted per Region (see [`super::import`]). As in AWS, each
//! Region's key has its own key policy, grants, description, tags, state and pending deletion
//! ([`RegionFields`]): the record's own fields are those of the primary Region, each
//! [`ReplicaRecord`] holds those of its Region. Key lookup answers the view of the request's
//! Region (see [`crate::store::KeyEntry::in_region`]) and every write of these fields goes
//! through `Service::update_regional`, which saves them into the request's Region.
//! ReplicateKey takes the replica's own `Policy` (the default key policy without one),
//! `Description` and `Tags`; UpdatePrimaryRegion moves the primary and each Region keeps its
//! own fields. Aliases are per Region too (see `Service::alias_key`).
//!
//! Deletion is per Region: scheduling the deletion of a replica deletes only that replica when
//! its waiting period is over. A primary with replicas is never deleted first: its deletion,
//! once scheduled, waits in `PendingReplicaDeletion` until the last replica is deleted, and then
//! its own waiting period begins (`PendingDeletion`).
//!
//! Multi-Region key ids are 16 bytes like UUID key ids, marked by the high nibble 0xF of byte 6
//! (see [`crate::store::is_mrk_id`]), so the ciphertext format is the same for both.

use super::scope::{self, Caller};
use crate::error::{KmsError, KmsResult};
use crate::policy::Policy;
use crate::service::authz::Resolved;
use crate::service::request::RegionRequest;
use crate::service::validate::{check_len, required, take_tags};
use crate::service::{Service, MAX_DESCRIPTION, MAX_TAGS};
use crate::store::{format_key_id, now, parse_key_id, KeyEntry, KeyRecord, KeyState};
use serde_json::{json, Value};
use std::sync::Arc;

pub use crate::store::record::multi_region::{
    delete_due_replicas, for_each_region_import, materialize_replicas, replica_deletion_due,
    replica_view, swap_region, MultiRegionRecord, RegionFields, RegionImport, ReplicaRecord,
};

/// Most replicas of one multi-Region key.
pub const MAX_REPLICAS: usize = 64;
/// Longest Region name.
pub const MAX_REGION_LEN: usize = 32;

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
    /// The view of `entry` in the request's Region: a replica's own policy, grants,
    /// description, tags and state in its Region, the entry itself elsewhere.
    pub(in crate::service) fn regional(&self, entry: Arc<KeyEntry>) -> Arc<KeyEntry> {
        if entry.replicas.is_empty() {
            return entry;
        }
        match entry.in_region(&self.request_region()) {
            Some(view) => view.clone(),
            None => entry,
        }
    }

    /// Changes the key of `key` in the request's Region with `f`, which sees (and changes) the
    /// record as that Region sees it: a replica's own fields are saved into the replica, the
    /// primary's into the record. Answers the changed key as the request's Region sees it.
    pub(in crate::service) fn update_regional<T>(
        &self,
        key: &Resolved,
        f: impl FnOnce(&mut KeyRecord) -> KmsResult<T>,
    ) -> KmsResult<(Arc<KeyEntry>, T)> {
        let region = self.request_region();
        let arn = key.arn.clone();
        let (entry, out) = self.store.update_key(&key.id, |r| {
            materialize_replicas(r);
            let swapped = swap_region(r, &region)
                .map_err(|_| KmsError::NotFound(format!("Key '{arn}' does not exist")))?;
            let out = f(r)?;
            if swapped {
                swap_region(r, &region)?;
            }
            Ok(out)
        })?;
        Ok((self.regional(entry), out))
    }

    /// UnsupportedOperationException for a replica key: `what` is managed on the primary key.
    pub(in crate::service) fn require_primary(&self, key: &Resolved, what: &str) -> KmsResult<()> {
        match &key.entry.record.multi_region {
            Some(m) if m.primary != self.request_region() => {
                Err(KmsError::UnsupportedOperation(format!(
                    "{} is a multi-Region replica key; {what} is managed on its primary key in Region {}",
                    key.arn, m.primary
                )))
            }
            _ => Ok(()),
        }
    }

    /// The name under which the store keeps alias `name` of the request's Region: aliases are
    /// per Region. In the service's own Region it is the name itself (as earlier versions kept
    /// every alias), in another `{region}:{name}` (no alias name has a `:`).
    pub(in crate::service) fn alias_key(&self, name: &str) -> String {
        let region = self.request_region();
        if region == self.region {
            name.to_string()
        } else {
            format!("{region}:{name}")
        }
    }

    /// The Region and the alias name of a store alias name (see `Service::alias_key`).
    fn split_alias_key<'a>(&'a self, key: &'a str) -> (&'a str, &'a str) {
        match key.split_once(':') {
            Some((region, name)) => (region, name),
            None => (self.region.as_str(), key),
        }
    }

    /// The aliases of the request's Region (name, record), in name order.
    pub(in crate::service) fn aliases_here(
        &self,
    ) -> KmsResult<Vec<(String, crate::store::AliasRecord)>> {
        let region = self.request_region();
        Ok(self
            .store
            .list_aliases()?
            .into_iter()
            .filter_map(|(k, a)| {
                let (r, name) = self.split_alias_key(&k);
                (r == region).then(|| (name.to_string(), a))
            })
            .collect())
    }

    /// An alias error of the store, told with the alias's name and ARN in the request's Region.
    pub(in crate::service) fn alias_error(&self, name: &str, e: KmsError) -> KmsError {
        match e {
            KmsError::AlreadyExists(_) => KmsError::AlreadyExists(format!(
                "An alias with the name {} already exists",
                self.alias_arn(name)
            )),
            KmsError::NotFound(_) => {
                KmsError::NotFound(format!("Alias {} is not found.", self.alias_arn(name)))
            }
            other => other,
        }
    }

    /// Deletes the aliases whose key still exists but no longer in their Region (those of a
    /// deleted replica; the store deletes those of a deleted key with it).
    pub(in crate::service) fn drop_orphan_aliases(&self) -> KmsResult<usize> {
        let mut dropped = 0;
        for (k, a) in self.store.list_aliases()? {
            let (region, _) = self.split_alias_key(&k);
            let Some(e) = parse_key_id(&a.target).and_then(|id| self.store.key(&id).ok().flatten())
            else {
                continue;
            };
            let exists = match &e.record.multi_region {
                Some(m) => m.in_region(region),
                None => region == self.region,
            };
            if !exists {
                match self.store.delete_alias(&k) {
                    Ok(()) => dropped += 1,
                    Err(KmsError::NotFound(_)) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(dropped)
    }

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

    #[allow(
        clippy::too_many_lines,
        reason = "every ReplicateKey check in AWS's order, then the write"
    )]
    pub(in crate::service) fn replicate_key(
        &self,
        principal: &str,
        req: RegionRequest,
    ) -> KmsResult<Value> {
        let key = self.resolve(&required(req.key_id, "keyId")?)?;
        let replica = required(req.replica_region, "replicaRegion")?;
        check_region("replicaRegion", &replica)?;
        let description = req.description.unwrap_or_default();
        check_len("description", description.len(), 0, MAX_DESCRIPTION)?;
        let tags = take_tags(req.tags.unwrap_or_default())?;
        if tags.len() > MAX_TAGS {
            return Err(KmsError::Tag(format!(
                "A key can have at most {MAX_TAGS} tags"
            )));
        }
        let replica_arn = self.arn_in(&replica, &key.entry.record.id);
        // The replica's own policy (the default key policy without one), checked as PutKeyPolicy
        // checks a policy: the caller must keep PutKeyPolicy on the replica.
        let policy = match req.policy {
            Some(p) => {
                check_len("policy", p.len(), 1, crate::policy::MAX_POLICY_BYTES)?;
                let parsed = Policy::parse(&p)?;
                self.check_lockout(
                    &parsed,
                    principal,
                    &replica_arn,
                    req.bypass_policy_lockout_safety_check,
                )?;
                p
            }
            None => Policy::default_text(&self.account),
        };
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
                "Key {replica_arn} already exists in Region {replica}"
            )));
        }
        if matches!(
            key.entry.record.state,
            KeyState::PendingDeletion | KeyState::PendingReplicaDeletion
        ) {
            return Err(KmsError::InvalidState(format!(
                "{} is {}.",
                key.arn,
                key.entry.record.state.as_str()
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
            // The replica shares the primary's material, except that of a key of origin
            // EXTERNAL: as in AWS, the same material is imported into each Region's key, so the
            // replica waits for its own import.
            let state = if r.import.is_some() || r.materials.is_empty() {
                KeyState::PendingImport
            } else {
                KeyState::Enabled
            };
            mr.replicas.push(ReplicaRecord {
                region: target,
                created: now(),
                own: Some(RegionFields {
                    description,
                    state,
                    deletion_date: None,
                    pending_window_days: None,
                    policy,
                    tags,
                    grants: Vec::new(),
                    import_expiration_model: None,
                    import_valid_to: None,
                    import_pending: None,
                }),
            });
            Ok(())
        })?;
        // The replica's metadata as its own Region sees it.
        let (metadata, view) = {
            let _in_replica = scope::enter(&Caller {
                principal: principal.to_string(),
                region: Some(replica),
                ..Caller::default()
            });
            let view = self.regional(entry);
            (self.metadata(&view), view)
        };
        Ok(json!({
            "ReplicaKeyMetadata": metadata,
            "ReplicaPolicy": view.record.policy,
            "ReplicaTags": view.record.tags.iter()
                .map(|t| json!({ "TagKey": t.key, "TagValue": t.value }))
                .collect::<Vec<_>>(),
        }))
    }

    pub(in crate::service) fn update_primary_region(
        &self,
        principal: &str,
        req: RegionRequest,
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
        let replica_state = mr
            .replicas
            .iter()
            .find(|x| x.region == new_primary)
            .and_then(|x| x.own.as_ref())
            .map_or(key.entry.record.state, |o| o.state);
        if replica_state != KeyState::Enabled && replica_state != KeyState::Disabled {
            return Err(KmsError::InvalidState(format!(
                "{} is {}.",
                self.arn_in(&new_primary, &key.entry.record.id),
                replica_state.as_str()
            )));
        }
        self.store.update_key(&key.id, |r| {
            // The record's own fields become the new primary's, and the old primary's go into
            // the replica entry that now names its Region: each Region keeps its own.
            if !swap_region(r, &new_primary)? {
                return Err(KmsError::Internal("multi-Region record".into()));
            }
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
            mr.replicas[i].region = old;
            mr.replicas[i].created = now();
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
