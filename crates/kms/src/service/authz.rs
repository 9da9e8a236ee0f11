//! Key resolution (id, ARN, alias, alias ARN) and authorization: the key policy with the
//! request's condition values, the lockout safety check, the key state, the attested Recipient.

use super::request::RecipientParam;
use super::validate::{check_len, required};
use super::{Service, LOCKOUT_MESSAGE, MAX_ATTESTATION_DOC, MAX_KEY_ID, RECIPIENT_ALGORITHM};
use crate::blob::EncryptionContext;
use crate::error::{KmsError, KmsResult};
use crate::policy::{Policy, RequestContext, CALLER_ACCOUNT_KEY, CONTEXT_KEYS_KEY, CONTEXT_PREFIX};
use crate::recipient::AttestedRecipient;
use crate::store::{format_key_id, now, parse_key_id, KeyEntry, KeyState};
use std::collections::HashMap;
use std::sync::Arc;

/// A resolved key plus what the request needs of it.
pub(super) struct Resolved {
    pub(super) id: [u8; 16],
    pub(super) entry: Arc<KeyEntry>,
    pub(super) arn: String,
}

impl Service {
    // ---- key resolution and authorization ----

    pub(super) fn resolve(&self, key_id: &str) -> KmsResult<Resolved> {
        check_len("keyId", key_id.len(), 1, MAX_KEY_ID)?;
        let not_found = || KmsError::NotFound(format!("Invalid keyId '{key_id}'"));
        let id_str = if let Some(alias) = key_id.strip_prefix("alias/").map(|_| key_id) {
            self.alias_target(alias)?
        } else if let Some(rest) = key_id.strip_prefix("arn:") {
            let parts: Vec<&str> = rest.splitn(5, ':').collect();
            let [partition, service, region, account, resource] = parts[..] else {
                return Err(KmsError::InvalidArn(format!("Invalid arn {key_id}")));
            };
            if partition != "aws" || service != "kms" {
                return Err(KmsError::InvalidArn(format!("Invalid arn {key_id}")));
            }
            if region != self.request_region() || account != self.account {
                return Err(not_found());
            }
            if let Some(id) = resource.strip_prefix("key/") {
                id.to_string()
            } else if resource.starts_with("alias/") {
                self.alias_target(resource)?
            } else {
                return Err(KmsError::InvalidArn(format!("Invalid arn {key_id}")));
            }
        } else {
            key_id.to_string()
        };
        let id = parse_key_id(&id_str).ok_or_else(not_found)?;
        let entry = self.store.key(&id)?.ok_or_else(|| {
            KmsError::NotFound(format!(
                "Key '{}' does not exist",
                self.key_arn(&format_key_id(&id))
            ))
        })?;
        self.check_in_region(&entry.record)?;
        let entry = self.expire_imported(&id, entry)?;
        // Each Region's key of a multi-Region key has its own policy, grants and state.
        let entry = self.regional(entry);
        if entry.record.state == KeyState::PendingDeletion
            && entry.record.deletion_date.is_some_and(|d| d <= now())
        {
            return Err(KmsError::NotFound(format!(
                "Key '{}' does not exist",
                self.key_arn(&entry.record.id)
            )));
        }
        let arn = self.key_arn(&entry.record.id);
        Ok(Resolved { id, entry, arn })
    }

    pub(super) fn alias_target(&self, alias: &str) -> KmsResult<String> {
        Ok(self
            .store
            .alias(&self.alias_key(alias))?
            .ok_or_else(|| {
                KmsError::NotFound(format!("Alias {} is not found.", self.alias_arn(alias)))
            })?
            .target)
    }

    pub(super) fn authorize(
        &self,
        key: &Resolved,
        principal: &str,
        action: &str,
        context: Option<&EncryptionContext>,
        recipient: Option<&AttestedRecipient>,
    ) -> KmsResult<()> {
        // Condition values are only read by conditions: under a policy without any (the default
        // policy) none is built.
        let conditional = key.entry.policy.has_conditions();
        let mut ctx = if conditional {
            self.request_context(principal, action, &key.arn)
        } else {
            RequestContext {
                principal,
                account: &self.account,
                action,
                resource: &key.arn,
                values: HashMap::new(),
            }
        };
        // Only what the request carries becomes a condition value: no context, no
        // `kms:EncryptionContext:*` key; no Recipient, no `kms:RecipientAttestation:*` key.
        if let Some(ec) = context.filter(|_| conditional) {
            for (k, v) in ec {
                ctx.add(&format!("{CONTEXT_PREFIX}{k}"), v.as_str());
                ctx.add(CONTEXT_KEYS_KEY, k.as_str());
            }
        }
        if let Some(r) = recipient.filter(|_| conditional) {
            for (k, v) in r.condition_values() {
                if !v.is_empty() {
                    ctx.add(k, v.as_str());
                }
            }
        }
        if self.permits(key, &mut ctx, context) {
            Ok(())
        } else {
            Err(KmsError::AccessDenied(format!(
                "User: {principal} is not authorized to perform: {action} on resource: {} because no resource-based policy allows the {action} action",
                key.arn
            )))
        }
    }

    /// The condition values every request carries (the caller's account) and nothing else.
    pub(super) fn request_context<'a>(
        &'a self,
        principal: &'a str,
        action: &'a str,
        resource: &'a str,
    ) -> RequestContext<'a> {
        let mut ctx = RequestContext {
            principal,
            account: &self.account,
            action,
            resource,
            values: HashMap::new(),
        };
        ctx.add(CALLER_ACCOUNT_KEY, self.account.as_str());
        ctx
    }

    /// The policy lockout safety check: `policy` must let `principal` call PutKeyPolicy on the
    /// key `arn` again (with no condition values but the caller's account, as a PutKeyPolicy
    /// request carries), unless the caller bypasses the check.
    pub(super) fn check_lockout(
        &self,
        policy: &Policy,
        principal: &str,
        arn: &str,
        bypass: Option<bool>,
    ) -> KmsResult<()> {
        if bypass == Some(true) {
            return Ok(());
        }
        let ctx = self.request_context(principal, "kms:PutKeyPolicy", arn);
        if policy.allows(&ctx) {
            Ok(())
        } else {
            Err(KmsError::MalformedPolicyDocument(LOCKOUT_MESSAGE.into()))
        }
    }

    pub(super) fn require_enabled(&self, key: &Resolved) -> KmsResult<()> {
        match key.entry.record.state {
            KeyState::Enabled => Ok(()),
            KeyState::Disabled => Err(KmsError::Disabled(format!("{} is disabled.", key.arn))),
            KeyState::PendingDeletion => Err(KmsError::InvalidState(format!(
                "{} is pending deletion.",
                key.arn
            ))),
            KeyState::PendingImport => Err(KmsError::InvalidState(format!(
                "{} is pending import.",
                key.arn
            ))),
            KeyState::PendingReplicaDeletion => Err(KmsError::InvalidState(format!(
                "{} is pending replica deletion.",
                key.arn
            ))),
        }
    }

    /// The common front of the GenerateDataKey* operations: the attestation (only when a
    /// plaintext is released), the encryption context, the policy check for `actions[0]` (with
    /// plaintext) or `actions[1]` (without), and the key's state.
    pub(super) fn authorize_generation(
        &self,
        key: &Resolved,
        principal: &str,
        recipient: Option<RecipientParam>,
        context: Option<EncryptionContext>,
        actions: [&str; 2],
        with_plaintext: bool,
    ) -> KmsResult<(EncryptionContext, Option<Arc<AttestedRecipient>>)> {
        let recipient = if with_plaintext {
            self.attested(recipient)?
        } else {
            None
        };
        let ctx = context.unwrap_or_default();
        let action = if with_plaintext {
            actions[0]
        } else {
            actions[1]
        };
        self.authorize(key, principal, action, Some(&ctx), recipient.as_deref())?;
        self.require_enabled(key)?;
        Ok((ctx, recipient))
    }

    pub(super) fn attested(
        &self,
        r: Option<RecipientParam>,
    ) -> KmsResult<Option<Arc<AttestedRecipient>>> {
        let Some(r) = r else { return Ok(None) };
        let alg = required(
            r.key_encryption_algorithm,
            "recipient.keyEncryptionAlgorithm",
        )?;
        if alg != RECIPIENT_ALGORITHM {
            return Err(KmsError::Validation(format!(
                "1 validation error detected: Value '{alg}' at 'recipient.keyEncryptionAlgorithm' failed to satisfy constraint: Member must satisfy enum value set: [RSAES_OAEP_SHA_256]"
            )));
        }
        let doc = required(r.attestation_document, "recipient.attestationDocument")?;
        check_len(
            "recipient.attestationDocument",
            doc.0.len(),
            1,
            MAX_ATTESTATION_DOC,
        )?;
        let gate = self.recipient.as_ref().ok_or_else(|| {
            KmsError::Validation(
                "This key service has no attestation trust anchors configured, so it cannot accept a Recipient".into(),
            )
        })?;
        gate.resolve(&doc.0).map(Some)
    }
}
