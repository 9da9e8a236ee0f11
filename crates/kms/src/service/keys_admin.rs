//! Key management: CreateKey, DescribeKey, ListKeys, key state and deletion, aliases, key
//! policies, tags, rotation, descriptions, and the periodic upkeep (`Service::maintain`).

use super::authz::Resolved;
use super::request::{
    AliasRequest, CreateKeyRequest, KeyPolicyRequest, KeyRequest, KeyRotationRequest,
    ListAliasesRequest, ListKeyPoliciesRequest, ListKeysRequest, ListResourceTagsRequest,
    ScheduleKeyDeletionRequest, TagResourceRequest, UntagResourceRequest,
    UpdateKeyDescriptionRequest,
};
use super::validate::{check_len, check_range, random, required, take_tags, validate_alias_name};
use super::{asymmetric, ops, Service, MAX_DESCRIPTION, MAX_TAGS};
use crate::error::{KmsError, KmsResult};
use crate::policy::Policy;
use crate::store::{now, parse_key_id, KeyEntry, KeyRecord, KeyState, MATERIAL_LEN};
use serde_json::{json, Value};
use std::sync::Arc;

impl Service {
    // ---- key management ----

    pub(super) fn metadata(&self, entry: &KeyEntry) -> Value {
        let r = &entry.record;
        let mut m = json!({
            "AWSAccountId": self.account,
            "KeyId": r.id,
            "Arn": self.key_arn(&r.id),
            "CreationDate": r.created,
            "Enabled": r.state == KeyState::Enabled,
            "Description": r.description,
            "KeyUsage": "ENCRYPT_DECRYPT",
            "KeyState": r.state.as_str(),
            "Origin": "AWS_KMS",
            "KeyManager": "CUSTOMER",
            "CustomerMasterKeySpec": "SYMMETRIC_DEFAULT",
            "KeySpec": "SYMMETRIC_DEFAULT",
            "EncryptionAlgorithms": ["SYMMETRIC_DEFAULT"],
            "MultiRegion": false,
        });
        r.key_spec.describe(r.usage(), &mut m);
        if let Some(d) = r.deletion_date {
            m["DeletionDate"] = json!(d);
        }
        if let Some(w) = r.pending_window_days {
            m["PendingDeletionWindowInDays"] = json!(w);
        }
        self.import_metadata(r, &mut m);
        self.region_metadata(r, &mut m);
        m
    }

    pub(super) fn create_key(&self, principal: &str, req: CreateKeyRequest) -> KmsResult<Value> {
        let (key_spec, key_usage) = asymmetric::spec_and_usage(&req)?;
        if let Some(o) = req.origin.as_deref() {
            if o != "AWS_KMS" && o != "EXTERNAL" {
                return Err(KmsError::UnsupportedOperation(format!(
                    "Origin {o} is not supported"
                )));
            }
            // Material can be imported into symmetric encryption keys and HMAC keys.
            if o == "EXTERNAL"
                && !key_spec.is_symmetric()
                && key_spec.hmac_material_lengths().is_none()
            {
                return Err(KmsError::UnsupportedOperation(format!(
                    "KeySpec {key_spec} with Origin EXTERNAL is not supported: imported material goes into SYMMETRIC_DEFAULT and HMAC keys"
                )));
            }
        }
        let description = req.description.unwrap_or_default();
        check_len("description", description.len(), 0, MAX_DESCRIPTION)?;
        let id = if req.multi_region == Some(true) {
            ops::regions::new_mrk_id()?
        } else {
            uuid::Uuid::new_v4().hyphenated().to_string()
        };
        let policy = match req.policy {
            Some(p) => {
                check_len("policy", p.len(), 1, crate::policy::MAX_POLICY_BYTES)?;
                let parsed = Policy::parse(&p)?;
                self.check_lockout(
                    &parsed,
                    principal,
                    &self.key_arn(&id),
                    req.bypass_policy_lockout_safety_check,
                )?;
                p
            }
            None => Policy::default_text(&self.account),
        };
        let tags = take_tags(req.tags.unwrap_or_default())?;
        if tags.len() > MAX_TAGS {
            return Err(KmsError::Tag(format!(
                "A key can have at most {MAX_TAGS} tags"
            )));
        }
        let material = match crate::keys::generate_material(key_spec)? {
            Some(private) => private,
            None => random(MATERIAL_LEN)?,
        };
        let mut record = KeyRecord {
            key_spec,
            key_usage,
            materials: vec![self.store.seal_material(&id, 0, &material)?],
            id,
            created: now(),
            description,
            state: KeyState::Enabled,
            deletion_date: None,
            pending_window_days: None,
            policy,
            tags,
            rotation_period_days: None,
            rotations: vec![],
            grants: vec![],
            import: None,
            on_demand_rotations: vec![],
            multi_region: None,
        };
        self.apply_origin(&mut record, req.origin.as_deref());
        self.apply_multi_region(&mut record, req.multi_region == Some(true));
        let entry = self.store.insert_key(record)?;
        Ok(json!({ "KeyMetadata": self.metadata(&entry) }))
    }

    pub(super) fn describe_key(&self, principal: &str, req: KeyRequest) -> KmsResult<Value> {
        let key = self.resolve(&required(req.key_id, "keyId")?)?;
        self.authorize(&key, principal, "kms:DescribeKey", None, None)?;
        Ok(json!({ "KeyMetadata": self.metadata(&key.entry) }))
    }

    pub(super) fn limit(req_limit: Option<i64>, default: usize, max: i64) -> KmsResult<usize> {
        match req_limit {
            Some(l) => check_range("limit", l, 1, max),
            None => Ok(default),
        }
    }

    pub(super) fn list_keys(&self, req: ListKeysRequest) -> KmsResult<Value> {
        let limit = Self::limit(req.limit, 100, 1000)?;
        let after = match req.marker.as_deref() {
            Some(m) => Some(
                parse_key_id(m)
                    .ok_or_else(|| KmsError::InvalidMarker(format!("Invalid marker {m}")))?,
            ),
            None => None,
        };
        let t = now();
        let (keys, more) = self.store.list_keys(after, limit)?;
        let list: Vec<Value> = keys
            .iter()
            .filter(|e| self.in_request_region(&e.record))
            .filter(|e| {
                let r = &self.regional(Arc::clone(e)).record;
                !(r.state == KeyState::PendingDeletion && r.deletion_date.is_some_and(|d| d <= t))
            })
            .map(|e| json!({ "KeyId": e.record.id, "KeyArn": self.key_arn(&e.record.id) }))
            .collect();
        let mut out = json!({ "Keys": list, "Truncated": more });
        if more {
            if let Some(last) = keys.last() {
                out["NextMarker"] = Value::String(last.record.id.clone());
            }
        }
        Ok(out)
    }

    pub(super) fn set_enabled(
        &self,
        principal: &str,
        req: KeyRequest,
        enable: bool,
    ) -> KmsResult<Value> {
        let key = self.resolve(&required(req.key_id, "keyId")?)?;
        let action = if enable {
            "kms:EnableKey"
        } else {
            "kms:DisableKey"
        };
        self.authorize(&key, principal, action, None, None)?;
        let arn = key.arn.clone();
        self.update_regional(&key, |r| {
            if matches!(
                r.state,
                KeyState::PendingDeletion | KeyState::PendingReplicaDeletion
            ) {
                return Err(KmsError::InvalidState(format!(
                    "{arn} is {}.",
                    r.state.as_str()
                )));
            }
            if r.state == KeyState::PendingImport {
                return Err(KmsError::InvalidState(format!("{arn} is pending import.")));
            }
            r.state = if enable {
                KeyState::Enabled
            } else {
                KeyState::Disabled
            };
            Ok(())
        })?;
        Ok(json!({}))
    }

    pub(super) fn schedule_deletion(
        &self,
        principal: &str,
        req: ScheduleKeyDeletionRequest,
    ) -> KmsResult<Value> {
        let key = self.resolve(&required(req.key_id, "keyId")?)?;
        let days = match req.pending_window_in_days {
            Some(d) => check_range("pendingWindowInDays", d, 7, 30)?,
            None => 30,
        };
        self.authorize(&key, principal, "kms:ScheduleKeyDeletion", None, None)?;
        let arn = key.arn.clone();
        let region = self.request_region();
        let (entry, ()) = self.update_regional(&key, |r| {
            if matches!(
                r.state,
                KeyState::PendingDeletion | KeyState::PendingReplicaDeletion
            ) {
                return Err(KmsError::InvalidState(format!(
                    "{arn} is {}.",
                    r.state.as_str()
                )));
            }
            // A primary with replicas waits for them: its own waiting period begins when the
            // last replica is deleted.
            let waits = r
                .multi_region
                .as_ref()
                .is_some_and(|m| m.primary == region && !m.replicas.is_empty());
            if waits {
                r.state = KeyState::PendingReplicaDeletion;
                r.deletion_date = None;
            } else {
                r.state = KeyState::PendingDeletion;
                r.deletion_date = Some(now() + (days as f64) * 86_400.0);
            }
            r.pending_window_days = u32::try_from(days).ok();
            Ok(())
        })?;
        let mut out = json!({
            "KeyId": key.arn,
            "KeyState": entry.record.state.as_str(),
            "PendingWindowInDays": days,
        });
        if let Some(d) = entry.record.deletion_date {
            out["DeletionDate"] = json!(d);
        }
        Ok(out)
    }

    pub(super) fn cancel_deletion(&self, principal: &str, req: KeyRequest) -> KmsResult<Value> {
        let key = self.resolve(&required(req.key_id, "keyId")?)?;
        self.authorize(&key, principal, "kms:CancelKeyDeletion", None, None)?;
        let arn = key.arn.clone();
        self.update_regional(&key, |r| {
            if !matches!(
                r.state,
                KeyState::PendingDeletion | KeyState::PendingReplicaDeletion
            ) {
                return Err(KmsError::InvalidState(format!(
                    "{arn} is not pending deletion."
                )));
            }
            r.state = KeyState::Disabled;
            r.deletion_date = None;
            r.pending_window_days = None;
            Ok(())
        })?;
        Ok(json!({ "KeyId": key.arn }))
    }

    pub(super) fn alias_target_key(&self, target: &str) -> KmsResult<Resolved> {
        if target.starts_with("alias/") || target.contains(":alias/") {
            return Err(KmsError::Validation(
                "Aliases must refer to keys. Not aliases".into(),
            ));
        }
        let key = self.resolve(target)?;
        // AWS refuses an alias to a key on its way out, including a primary that waits for its
        // replicas' deletion.
        match key.entry.record.state {
            KeyState::PendingDeletion => Err(KmsError::InvalidState(format!(
                "{} is pending deletion.",
                key.arn
            ))),
            KeyState::PendingReplicaDeletion => Err(KmsError::InvalidState(format!(
                "{} is pending replica deletion.",
                key.arn
            ))),
            _ => Ok(key),
        }
    }

    /// The alias name and target key of CreateAlias and UpdateAlias, validated in that order.
    fn alias_and_target(&self, req: AliasRequest) -> KmsResult<(String, Resolved)> {
        let name = required(req.alias_name, "aliasName")?;
        validate_alias_name(&name)?;
        let key = self.alias_target_key(&required(req.target_key_id, "targetKeyId")?)?;
        Ok((name, key))
    }

    pub(super) fn create_alias(&self, principal: &str, req: AliasRequest) -> KmsResult<Value> {
        let (name, key) = self.alias_and_target(req)?;
        self.authorize(&key, principal, "kms:CreateAlias", None, None)?;
        self.store
            .create_alias(&self.alias_key(&name), &key.entry.record.id)
            .map_err(|e| self.alias_error(&name, e))?;
        Ok(json!({}))
    }

    pub(super) fn update_alias(&self, principal: &str, req: AliasRequest) -> KmsResult<Value> {
        let (name, key) = self.alias_and_target(req)?;
        // The caller needs UpdateAlias on the key the alias leaves and on the one it joins.
        let old = self.resolve(&name)?;
        self.authorize(&old, principal, "kms:UpdateAlias", None, None)?;
        self.authorize(&key, principal, "kms:UpdateAlias", None, None)?;
        self.store
            .update_alias(&self.alias_key(&name), &key.entry.record.id)
            .map_err(|e| self.alias_error(&name, e))?;
        Ok(json!({}))
    }

    pub(super) fn delete_alias(&self, principal: &str, req: AliasRequest) -> KmsResult<Value> {
        let name = required(req.alias_name, "aliasName")?;
        validate_alias_name(&name)?;
        if let Ok(key) = self.resolve(&name) {
            self.authorize(&key, principal, "kms:DeleteAlias", None, None)?;
        }
        self.store
            .delete_alias(&self.alias_key(&name))
            .map_err(|e| self.alias_error(&name, e))?;
        Ok(json!({}))
    }

    pub(super) fn list_aliases(
        &self,
        principal: &str,
        req: ListAliasesRequest,
    ) -> KmsResult<Value> {
        let limit = Self::limit(req.limit, 50, 100)?;
        let filter = match req.key_id.as_deref() {
            Some(k) => {
                let key = self.resolve(k)?;
                self.authorize(&key, principal, "kms:ListAliases", None, None)?;
                Some(key.entry.record.id.clone())
            }
            None => None,
        };
        let all = self.aliases_here()?;
        let start = match req.marker.as_deref() {
            Some(m) => all.partition_point(|(n, _)| n.as_str() <= m),
            None => 0,
        };
        let mut items = all[start..]
            .iter()
            .filter(|(_, a)| filter.as_ref().is_none_or(|f| f == &a.target))
            .filter(|(_, a)| {
                parse_key_id(&a.target)
                    .and_then(|id| self.store.key(&id).ok().flatten())
                    .is_some_and(|e| self.in_request_region(&e.record))
            });
        let page: Vec<&(String, crate::store::AliasRecord)> = items.by_ref().take(limit).collect();
        let more = items.next().is_some();
        let list: Vec<Value> = page
            .iter()
            .map(|(n, a)| {
                json!({
                    "AliasName": n,
                    "AliasArn": self.alias_arn(n),
                    "TargetKeyId": a.target,
                    "CreationDate": a.created,
                    "LastUpdatedDate": a.updated,
                })
            })
            .collect();
        let mut out = json!({ "Aliases": list, "Truncated": more });
        if more {
            if let Some((n, _)) = page.last() {
                out["NextMarker"] = Value::String(n.clone());
            }
        }
        Ok(out)
    }

    pub(super) fn policy_name(req: &KeyPolicyRequest) -> KmsResult<()> {
        match req.policy_name.as_deref() {
            None | Some("default") => Ok(()),
            Some(other) => Err(KmsError::NotFound(format!(
                "Policy {other} does not exist; the only policy name is 'default'"
            ))),
        }
    }

    pub(super) fn get_key_policy(
        &self,
        principal: &str,
        req: KeyPolicyRequest,
    ) -> KmsResult<Value> {
        Self::policy_name(&req)?;
        let key = self.resolve(&required(req.key_id, "keyId")?)?;
        self.authorize(&key, principal, "kms:GetKeyPolicy", None, None)?;
        Ok(json!({ "Policy": key.entry.record.policy, "PolicyName": "default" }))
    }

    pub(super) fn put_key_policy(
        &self,
        principal: &str,
        req: KeyPolicyRequest,
    ) -> KmsResult<Value> {
        Self::policy_name(&req)?;
        let key = self.resolve(&required(req.key_id, "keyId")?)?;
        let text = required(req.policy, "policy")?;
        check_len("policy", text.len(), 1, crate::policy::MAX_POLICY_BYTES)?;
        let parsed = Policy::parse(&text)?;
        self.authorize(&key, principal, "kms:PutKeyPolicy", None, None)?;
        self.check_lockout(
            &parsed,
            principal,
            &key.arn,
            req.bypass_policy_lockout_safety_check,
        )?;
        self.update_regional(&key, |r| {
            r.policy = text;
            Ok(())
        })?;
        Ok(json!({}))
    }

    pub(super) fn list_key_policies(
        &self,
        principal: &str,
        req: ListKeyPoliciesRequest,
    ) -> KmsResult<Value> {
        let key = self.resolve(&required(req.key_id, "keyId")?)?;
        Self::limit(req.limit, 100, 1000)?;
        self.authorize(&key, principal, "kms:ListKeyPolicies", None, None)?;
        Ok(json!({ "PolicyNames": ["default"], "Truncated": false }))
    }

    pub(super) fn tag_resource(
        &self,
        principal: &str,
        req: TagResourceRequest,
    ) -> KmsResult<Value> {
        let key = self.resolve(&required(req.key_id, "keyId")?)?;
        let tags = take_tags(required(req.tags, "tags")?)?;
        self.authorize(&key, principal, "kms:TagResource", None, None)?;
        self.update_regional(&key, |r| {
            for t in tags {
                match r.tags.iter_mut().find(|x| x.key == t.key) {
                    Some(x) => x.value = t.value,
                    None => r.tags.push(t),
                }
            }
            if r.tags.len() > MAX_TAGS {
                return Err(KmsError::Tag(format!(
                    "A key can have at most {MAX_TAGS} tags"
                )));
            }
            Ok(())
        })?;
        Ok(json!({}))
    }

    pub(super) fn untag_resource(
        &self,
        principal: &str,
        req: UntagResourceRequest,
    ) -> KmsResult<Value> {
        let key = self.resolve(&required(req.key_id, "keyId")?)?;
        let keys = required(req.tag_keys, "tagKeys")?;
        self.authorize(&key, principal, "kms:UntagResource", None, None)?;
        self.update_regional(&key, |r| {
            r.tags.retain(|t| !keys.contains(&t.key));
            Ok(())
        })?;
        Ok(json!({}))
    }

    pub(super) fn list_resource_tags(
        &self,
        principal: &str,
        req: ListResourceTagsRequest,
    ) -> KmsResult<Value> {
        let key = self.resolve(&required(req.key_id, "keyId")?)?;
        let limit = Self::limit(req.limit, 50, 50)?;
        self.authorize(&key, principal, "kms:ListResourceTags", None, None)?;
        let tags = &key.entry.record.tags;
        let start = match req.marker.as_deref() {
            Some(m) => m
                .parse::<usize>()
                .ok()
                .filter(|i| *i <= tags.len())
                .ok_or_else(|| KmsError::InvalidMarker(format!("Invalid marker {m}")))?,
            None => 0,
        };
        let end = (start + limit).min(tags.len());
        let list: Vec<Value> = tags[start..end]
            .iter()
            .map(|t| json!({ "TagKey": t.key, "TagValue": t.value }))
            .collect();
        let more = end < tags.len();
        let mut out = json!({ "Tags": list, "Truncated": more });
        if more {
            out["NextMarker"] = Value::String(end.to_string());
        }
        Ok(out)
    }

    pub(super) fn set_rotation(
        &self,
        principal: &str,
        req: KeyRotationRequest,
        enable: bool,
    ) -> KmsResult<Value> {
        let key = self.resolve(&required(req.key_id, "keyId")?)?;
        let period = match req.rotation_period_in_days {
            Some(d) if enable => check_range("rotationPeriodInDays", d, 90, 2560)?,
            _ => 365,
        };
        let action = if enable {
            "kms:EnableKeyRotation"
        } else {
            "kms:DisableKeyRotation"
        };
        self.authorize(&key, principal, action, None, None)?;
        self.require_enabled(&key)?;
        Self::require_rotatable(&key)?;
        self.check_rotatable(&key.entry.record)?;
        self.require_primary(&key, "automatic rotation")?;
        self.store.update_key(&key.id, |r| {
            r.rotation_period_days = if enable {
                u32::try_from(period).ok()
            } else {
                None
            };
            Ok(())
        })?;
        Ok(json!({}))
    }

    pub(super) fn next_rotation(r: &KeyRecord) -> Option<f64> {
        let period = r.rotation_period_days?;
        let last = r.rotations.last().copied().unwrap_or(r.created);
        Some(last + f64::from(period) * 86_400.0)
    }

    pub(super) fn rotation_status(&self, principal: &str, req: KeyRequest) -> KmsResult<Value> {
        let key = self.resolve(&required(req.key_id, "keyId")?)?;
        self.authorize(&key, principal, "kms:GetKeyRotationStatus", None, None)?;
        let r = &key.entry.record;
        let mut out = json!({
            "KeyRotationEnabled": r.rotation_period_days.is_some(),
            "KeyId": key.arn,
        });
        if let Some(p) = r.rotation_period_days {
            out["RotationPeriodInDays"] = json!(p);
            out["NextRotationDate"] = json!(Self::next_rotation(r));
        }
        Ok(out)
    }

    /// Adds a material version. An automatic rotation checks again, on the record as stored
    /// (the closure runs on the locked row), that it is still due: with several servers on one
    /// store, the first to get there rotates and the others find it done. Returns whether it
    /// rotated.
    pub(super) fn rotate(&self, id: &[u8; 16], on_demand: bool) -> KmsResult<bool> {
        let material = random(MATERIAL_LEN)?;
        self.store
            .update_key(id, |r| {
                let t = now();
                if !on_demand
                    && (r.state != KeyState::Enabled
                        || !Self::next_rotation(r).is_some_and(|n| n <= t))
                {
                    return Ok(false);
                }
                self.check_rotatable(r)?;
                let version = r.materials.len();
                r.materials
                    .push(self.store.seal_material(&r.id, version, &material)?);
                r.rotations.push(t);
                if on_demand {
                    r.on_demand_rotations.push(t);
                }
                Ok(true)
            })
            .map(|(_, rotated)| rotated)
    }

    pub(super) fn rotate_on_demand(&self, principal: &str, req: KeyRequest) -> KmsResult<Value> {
        let key = self.resolve(&required(req.key_id, "keyId")?)?;
        self.authorize(&key, principal, "kms:RotateKeyOnDemand", None, None)?;
        self.require_enabled(&key)?;
        Self::require_rotatable(&key)?;
        self.require_primary(&key, "on-demand rotation")?;
        self.rotate(&key.id, true)?;
        Ok(json!({ "KeyId": key.arn }))
    }

    pub(super) fn update_description(
        &self,
        principal: &str,
        req: UpdateKeyDescriptionRequest,
    ) -> KmsResult<Value> {
        let key = self.resolve(&required(req.key_id, "keyId")?)?;
        let d = required(req.description, "description")?;
        check_len("description", d.len(), 0, MAX_DESCRIPTION)?;
        self.authorize(&key, principal, "kms:UpdateKeyDescription", None, None)?;
        self.update_regional(&key, |r| {
            r.description = d;
            Ok(())
        })?;
        Ok(json!({}))
    }

    /// Periodic upkeep: deletes keys whose waiting period is over and rotates keys whose
    /// automatic rotation is due. Returns (deleted, rotated).
    pub fn maintain(&self) -> KmsResult<(usize, usize)> {
        let t = now();
        let deleted = self.store.purge_expired(t)?;
        if deleted > 0 {
            self.drop_orphan_aliases()?;
        }
        let mut rotated = 0;
        let mut after = None;
        loop {
            let (page, more) = self.store.list_keys(after, 256)?;
            for e in &page {
                if e.record.state == KeyState::Enabled
                    && Self::next_rotation(&e.record).is_some_and(|n| n <= t)
                {
                    if let Some(id) = parse_key_id(&e.record.id) {
                        if self.rotate(&id, false)? {
                            rotated += 1;
                        }
                    }
                }
            }
            after = page.last().and_then(|e| parse_key_id(&e.record.id));
            if !more {
                break;
            }
        }
        Ok((deleted, rotated))
    }
}
