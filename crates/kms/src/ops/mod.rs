//! Operations beyond the core set, each family in its own module, and the request scope.
//!
//! - [`scope`]: the caller of a request (principal, region, address, TLS) and the condition
//!   values read from its body, seen by the policy evaluator.
//! - [`grants`]: CreateGrant, ListGrants, ListRetirableGrants, RetireGrant, RevokeGrant, grant
//!   tokens, and grants in authorization.
//! - [`import`]: keys of origin EXTERNAL: GetParametersForImport, ImportKeyMaterial,
//!   DeleteImportedKeyMaterial, expiry at ValidTo.
//! - [`regions`]: the Regions one server answers for, multi-Region keys, ReplicateKey,
//!   UpdatePrimaryRegion.
//! - [`rotations`]: the ListKeyRotations operation.
//!
//! These modules live under `service` so that they use its key resolution and authorization.
//! Their requests are variants of the service's one `Request` enum, dispatched by the same
//! `match` as the core operations; unlike those, they check their own common fields (grant
//! tokens, `DryRun`). The records they keep in a key's record (grants, import state, Regions)
//! are defined in the store layer, [`crate::store::record`], and re-exported here.

pub mod grants;
pub mod import;
pub mod regions;
pub mod rotations;
pub mod scope;

use super::Service;
use crate::error::KmsResult;
use serde::Deserialize;
use std::borrow::Cow;

pub use scope::Caller;

/// The operations of these modules that write to the store or generate RSA keys.
pub const BLOCKING_OPERATIONS: &[&str] = &[
    "CreateGrant",
    "RetireGrant",
    "RevokeGrant",
    "GetParametersForImport",
    "ImportKeyMaterial",
    "DeleteImportedKeyMaterial",
    "ReplicateKey",
    "UpdatePrimaryRegion",
];

/// The operations of these modules that take `DryRun` (each checks it itself; the others
/// refuse it when their request is parsed).
pub const DRY_RUN_OPERATIONS: &[&str] = &["CreateGrant", "RetireGrant", "RevokeGrant"];

/// Operations whose `kms:EncryptionAlgorithm` is `SYMMETRIC_DEFAULT` when the request names none.
const ENCRYPTION_OPERATIONS: &[&str] = &[
    "Encrypt",
    "Decrypt",
    "ReEncrypt",
    "GenerateDataKey",
    "GenerateDataKeyWithoutPlaintext",
    "GenerateDataKeyPair",
    "GenerateDataKeyPairWithoutPlaintext",
];

/// Operations whose `kms:MessageType` is `RAW` when the request names none.
const SIGNING_OPERATIONS: &[&str] = &["Sign", "Verify"];

/// What an operation's body yields as condition values beyond its fields: the defaults of
/// `kms:EncryptionAlgorithm` and `kms:MessageType`.
#[derive(Debug, Clone, Copy, Default)]
pub(in crate::service) struct BodyKind {
    /// One of [`ENCRYPTION_OPERATIONS`]: `kms:EncryptionAlgorithm` defaults to
    /// `SYMMETRIC_DEFAULT`.
    encryption: bool,
    /// Sign or Verify: `kms:MessageType` defaults to `RAW`.
    signing: bool,
}

impl BodyKind {
    /// The kind of operation `op`. ReEncrypt names two algorithms (source and destination):
    /// it sets `kms:EncryptionAlgorithm` for each of its two authorizations itself (see
    /// [`scope::set_encryption_algorithm`]).
    pub(in crate::service) fn of(op: &str) -> BodyKind {
        BodyKind {
            encryption: op != "ReEncrypt" && ENCRYPTION_OPERATIONS.contains(&op),
            signing: SIGNING_OPERATIONS.contains(&op),
        }
    }
}

/// The body fields that become condition values.
#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct Peek<'a> {
    #[serde(borrow)]
    key_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    encryption_algorithm: Option<Cow<'a, str>>,
    #[serde(borrow)]
    signing_algorithm: Option<Cow<'a, str>>,
    #[serde(borrow)]
    mac_algorithm: Option<Cow<'a, str>>,
    #[serde(borrow)]
    message_type: Option<Cow<'a, str>>,
    #[serde(borrow)]
    key_agreement_algorithm: Option<Cow<'a, str>>,
}

/// Longest value taken from the body into a condition value.
const MAX_PEEK_VALUE: usize = 2048;

/// The condition values of a request body (lower-case key, value): `kms:RequestAlias`,
/// `kms:EncryptionAlgorithm`, `kms:SigningAlgorithm`, `kms:MacAlgorithm`, `kms:MessageType`,
/// `kms:KeyAgreementAlgorithm`, with the defaults of the operation's `kind`. Computed by
/// [`scope::extend`] only when a policy with conditions is evaluated, so a request under a
/// policy without any (the default policy) parses its body once.
pub(in crate::service) fn peek_values(kind: BodyKind, body: &[u8]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let Ok(p) = serde_json::from_slice::<Peek<'_>>(body) else {
        return out;
    };
    let short = |v: &Option<Cow<'_, str>>| {
        v.as_deref()
            .filter(|s| s.len() <= MAX_PEEK_VALUE)
            .map(str::to_string)
    };
    let mut add = |key: &str, value: String| out.push((key.to_ascii_lowercase(), value));
    if let Some(k) = short(&p.key_id) {
        let alias = if k.starts_with("alias/") {
            Some(k)
        } else if k.starts_with("arn:") {
            k.split_once(":alias/").map(|(_, a)| format!("alias/{a}"))
        } else {
            None
        };
        if let Some(a) = alias {
            add("kms:RequestAlias", a);
        }
    }
    match short(&p.encryption_algorithm) {
        Some(a) => add("kms:EncryptionAlgorithm", a),
        None if kind.encryption => add("kms:EncryptionAlgorithm", "SYMMETRIC_DEFAULT".into()),
        None => {}
    }
    if let Some(a) = short(&p.signing_algorithm) {
        add("kms:SigningAlgorithm", a);
    }
    if let Some(a) = short(&p.mac_algorithm) {
        add("kms:MacAlgorithm", a);
    }
    match short(&p.message_type) {
        Some(t) => add("kms:MessageType", t),
        None if kind.signing => add("kms:MessageType", "RAW".into()),
        None => {}
    }
    if let Some(a) = short(&p.key_agreement_algorithm) {
        add("kms:KeyAgreementAlgorithm", a);
    }
    out
}

impl Service {
    /// Runs one operation for `caller` (whose region, address and transport become condition
    /// values of the key policies evaluated).
    pub fn handle_as(&self, op: &str, caller: &Caller, body: &[u8]) -> KmsResult<Vec<u8>> {
        self.handle_caller(op, caller.clone(), body)
    }

    /// [`Service::handle_as`], taking the caller (the server's path: nothing is copied).
    pub fn handle_caller(&self, op: &str, caller: Caller, body: &[u8]) -> KmsResult<Vec<u8>> {
        let principal = caller.principal.clone();
        let _scope = scope::enter_owned(caller);
        scope::set_body(BodyKind::of(op), body);
        self.handle(op, &principal, body)
    }

    /// For a direct call of `Service::handle` (no scope installed by [`Service::handle_as`]):
    /// a scope with only the principal, and the condition values of the body.
    pub(in crate::service) fn enter_direct(
        &self,
        op: &str,
        principal: &str,
        body: &[u8],
    ) -> Option<scope::ScopeGuard> {
        let guard = scope::ensure(principal)?;
        scope::set_body(BodyKind::of(op), body);
        Some(guard)
    }
}

#[cfg(test)]
mod tests;
