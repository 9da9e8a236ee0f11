//! Grants as stored in their key's record, and whether one allows a request.

use crate::blob::EncryptionContext;
use crate::policy::principal_covers;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A grant's encryption-context constraints.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantConstraints {
    /// The request's encryption context must be exactly this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub equals: Option<BTreeMap<String, String>>,
    /// The request's encryption context must include these pairs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subset: Option<BTreeMap<String, String>>,
}

impl GrantConstraints {
    /// True when `ctx` satisfies the constraints (an absent context is the empty one).
    pub fn hold(&self, ctx: Option<&EncryptionContext>) -> bool {
        let empty = EncryptionContext::new();
        let ctx = ctx.unwrap_or(&empty);
        if let Some(eq) = &self.equals {
            if eq != ctx {
                return false;
            }
        }
        if let Some(sub) = &self.subset {
            if !sub.iter().all(|(k, v)| ctx.get(k) == Some(v)) {
                return false;
            }
        }
        true
    }
}

/// A grant as stored in its key's record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantRecord {
    /// Grant id (64 lower-case hex digits).
    pub id: String,
    /// Friendly name (idempotency key of CreateGrant).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Creation time, seconds since the epoch.
    pub created: f64,
    /// Principal the grant allows.
    pub grantee: String,
    /// Principal that may retire the grant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retiring: Option<String>,
    /// Allowed operations (names from `GRANT_OPERATIONS` of the grant operations).
    pub operations: Vec<String>,
    /// Encryption-context constraints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub constraints: Option<GrantConstraints>,
    /// Key of the tags of this grant's tokens (hex; identifies tokens, grants no access).
    pub token_key: String,
}

impl GrantRecord {
    /// True when the grant lets `principal` (of `account`) perform `action` (`kms:<Op>`) with
    /// the encryption context `ctx`.
    pub fn allows(
        &self,
        principal: &str,
        account: &str,
        action: &str,
        ctx: Option<&EncryptionContext>,
    ) -> bool {
        let Some(op) = action.strip_prefix("kms:") else {
            return false;
        };
        principal_covers(&self.grantee, principal, account)
            && self.operations.iter().any(|o| o == op)
            && self.constraints.as_ref().is_none_or(|c| c.hold(ctx))
    }
}
