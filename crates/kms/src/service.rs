//! The KMS operations: JSON request in, JSON response out, independent of HTTP.
//!
//! [`Service::handle`] takes an operation name (the part of `X-Amz-Target` after
//! `TrentService.`), the authenticated principal and the request body. Each operation parses its
//! typed request, resolves the key (id, ARN, alias, alias ARN), evaluates the key policy for
//! `kms:<Operation>` with the request's condition values (encryption context, and the verified
//! attestation document's PCRs when a Recipient is given), checks the key state, and answers.
//! With a Recipient, the secret is sealed to the enclave's key as CMS (`CiphertextForRecipient`)
//! and the plaintext field is left out.
//!
//! Two checks guard the policies themselves and the callers who test them:
//! - the policy lockout safety check: CreateKey and PutKeyPolicy refuse a policy under which the
//!   caller could not call PutKeyPolicy on the key again (`MalformedPolicyDocumentException`),
//!   unless `BypassPolicyLockoutSafetyCheck` is true;
//! - `DryRun` (on the operations where AWS has it, [`DRY_RUN_OPERATIONS`]): the operation runs
//!   every check it would run (validation, authorization, key state, the ciphertext) and then
//!   answers `DryRunOperationException` instead of its result, or the error the real call would
//!   get. These operations change nothing, so running them through and dropping the result is
//!   exactly "would it have succeeded".

//!
//! The parts: `request` (one typed struct per operation, the `Request` enum parsed
//! once from the operation name and body), `validate` (AWS's field checks), `authz` (key
//! resolution, policy, key state, Recipient), `symmetric`, `asymmetric`, `mac` and
//! `keys_admin` (the operations, by concern), [`ops`] (grants, imported material, Regions,
//! key rotations list, and the request scope). `Service::handle` parses, applies the checks
//! every operation shares (custom key stores, grant tokens, DryRun) and dispatches with one
//! `match`; the operations of `ops` are variants of the same enum and check their own common
//! fields.

use crate::error::{KmsError, KmsResult};
use crate::recipient::{AttestedRecipient, RecipientGate};
use crate::store::Store;
use base64::Engine as _;
use request::Request;
use serde::de::{self, Deserializer};
use serde::Deserialize;
use serde_json::Value;
use zeroize::Zeroizing;

mod asymmetric;
mod authz;
mod keys_admin;
mod mac;
#[path = "ops/mod.rs"]
pub mod ops;
mod request;
mod symmetric;
mod validate;

pub use request::RecipientParam;

/// Largest Encrypt plaintext (AWS: 4096).
pub const MAX_PLAINTEXT: usize = 4096;
/// Largest attestation document (AWS: 262144).
pub const MAX_ATTESTATION_DOC: usize = 262_144;
/// Largest NumberOfBytes for GenerateRandom / GenerateDataKey.
pub const MAX_RANDOM_BYTES: usize = 1024;
/// Most tags on a key.
pub const MAX_TAGS: usize = 50;
/// Longest description.
pub const MAX_DESCRIPTION: usize = 8192;
/// Longest KeyId parameter.
pub const MAX_KEY_ID: usize = 2048;
/// The only key-encryption algorithm of a Recipient.
pub const RECIPIENT_ALGORITHM: &str = "RSAES_OAEP_SHA_256";

/// Binary request field: base64 on the wire, zeroized when dropped.
pub struct Blob(pub Zeroizing<Vec<u8>>);

impl std::fmt::Debug for Blob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Blob(<{} bytes>)", self.0.len())
    }
}

impl<'de> Deserialize<'de> for Blob {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s: std::borrow::Cow<'de, str> = Deserialize::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(s.as_bytes())
            .map(|v| Blob(Zeroizing::new(v)))
            .map_err(|_| de::Error::custom("Base64 encoded value is not valid"))
    }
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Operations that change the store (run where blocking is allowed).
pub const WRITE_OPERATIONS: &[&str] = &[
    "CreateKey",
    "EnableKey",
    "DisableKey",
    "ScheduleKeyDeletion",
    "CancelKeyDeletion",
    "CreateAlias",
    "UpdateAlias",
    "DeleteAlias",
    "PutKeyPolicy",
    "TagResource",
    "UntagResource",
    "EnableKeyRotation",
    "DisableKeyRotation",
    "RotateKeyOnDemand",
    "UpdateKeyDescription",
];

/// The operations of this service that take AWS's `DryRun` parameter.
pub const DRY_RUN_OPERATIONS: &[&str] = &[
    "Decrypt",
    "Encrypt",
    "GenerateDataKey",
    "GenerateDataKeyWithoutPlaintext",
    "GenerateDataKeyPair",
    "GenerateDataKeyPairWithoutPlaintext",
    "ReEncrypt",
    "Sign",
    "Verify",
    "GenerateMac",
    "VerifyMac",
    "DeriveSharedSecret",
];

/// AWS's message for a policy that fails the lockout safety check.
pub const LOCKOUT_MESSAGE: &str =
    "The new key policy will not allow you to update the key policy in the future.";

/// AWS's message for a DryRun request that would have succeeded.
pub const DRY_RUN_MESSAGE: &str = "The request would have succeeded, but the DryRun option is set.";

/// Operations that may be slow (key-pair generation, attestation verification).
pub fn is_blocking(op: &str) -> bool {
    WRITE_OPERATIONS.contains(&op)
        || op.starts_with("GenerateDataKeyPair")
        || ops::BLOCKING_OPERATIONS.contains(&op)
}

/// The key service.
pub struct Service {
    store: Store,
    region: String,
    account: String,
    recipient: Option<RecipientGate>,
    /// Every Region this service answers for (its own first).
    served_regions: Vec<String>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("region", &self.region)
            .field("account", &self.account)
            .finish_non_exhaustive()
    }
}

impl Service {
    /// A service over `store`.
    pub fn new(
        store: Store,
        region: &str,
        account: &str,
        recipient: Option<RecipientGate>,
    ) -> Self {
        Self {
            store,
            region: region.to_string(),
            account: account.to_string(),
            recipient,
            served_regions: vec![region.to_string()],
        }
    }

    /// Also answers for these Regions (multi-Region keys can have replicas there).
    pub fn with_regions(mut self, regions: &[String]) -> Self {
        for r in regions {
            if !self.served_regions.contains(r) {
                self.served_regions.push(r.clone());
            }
        }
        self
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The region.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// The account id.
    pub fn account(&self) -> &str {
        &self.account
    }

    /// A key's ARN.
    pub fn key_arn(&self, id: &str) -> String {
        format!(
            "arn:aws:kms:{}:{}:key/{id}",
            self.request_region(),
            self.account
        )
    }

    fn alias_arn(&self, name: &str) -> String {
        format!(
            "arn:aws:kms:{}:{}:{name}",
            self.request_region(),
            self.account
        )
    }

    /// Runs one operation. `principal` is the authenticated caller's ARN.
    pub fn handle(&self, op: &str, principal: &str, body: &[u8]) -> KmsResult<Vec<u8>> {
        let _scope = self.enter_direct(op, principal, body);
        let req = Request::parse(op, body)?;
        let Some(common) = req.common() else {
            // Grants, imported material, Regions and ListKeyRotations check their own.
            return self.dispatch(op, principal, req);
        };
        if common.custom_key_store {
            return Err(KmsError::UnsupportedOperation(
                "Custom key stores are not supported".into(),
            ));
        }
        self.check_grant_tokens(common.grant_tokens)?;
        if common.dry_run == Some(true) {
            if !DRY_RUN_OPERATIONS.contains(&op) {
                // AWS has no DryRun on this operation; refuse rather than do for real what the
                // caller asked only to test.
                return Err(KmsError::UnsupportedOperation(format!(
                    "DryRun is not a parameter of {op}"
                )));
            }
            // Every DryRun operation is free of side effects: run it with every check and drop
            // what it would have answered.
            return match self.dispatch(op, principal, req) {
                Ok(_) => Err(KmsError::DryRunOperation(DRY_RUN_MESSAGE.into())),
                Err(e) => Err(e),
            };
        }
        self.dispatch(op, principal, req)
    }

    fn dispatch(&self, op: &str, principal: &str, req: Request<'_>) -> KmsResult<Vec<u8>> {
        let p = principal;
        let v = match req {
            Request::Decrypt(r) => return self.decrypt(p, r),
            Request::Encrypt(r) => self.encrypt(p, r)?,
            Request::GenerateDataKey(r) => self.generate_data_key(p, r, true)?,
            Request::GenerateDataKeyWithoutPlaintext(r) => self.generate_data_key(p, r, false)?,
            Request::GenerateDataKeyPair(r) => self.generate_data_key_pair(p, r, true)?,
            Request::GenerateDataKeyPairWithoutPlaintext(r) => {
                self.generate_data_key_pair(p, r, false)?
            }
            Request::GenerateRandom(r) => self.generate_random(r)?,
            Request::ReEncrypt(r) => self.re_encrypt(p, r)?,
            Request::CreateKey(r) => self.create_key(p, r)?,
            Request::DescribeKey(r) => self.describe_key(p, r)?,
            Request::ListKeys(r) => self.list_keys(r)?,
            Request::EnableKey(r) => self.set_enabled(p, r, true)?,
            Request::DisableKey(r) => self.set_enabled(p, r, false)?,
            Request::ScheduleKeyDeletion(r) => self.schedule_deletion(p, r)?,
            Request::CancelKeyDeletion(r) => self.cancel_deletion(p, r)?,
            Request::CreateAlias(r) => self.create_alias(p, r)?,
            Request::UpdateAlias(r) => self.update_alias(p, r)?,
            Request::DeleteAlias(r) => self.delete_alias(p, r)?,
            Request::ListAliases(r) => self.list_aliases(p, r)?,
            Request::GetKeyPolicy(r) => self.get_key_policy(p, r)?,
            Request::PutKeyPolicy(r) => self.put_key_policy(p, r)?,
            Request::ListKeyPolicies(r) => self.list_key_policies(p, r)?,
            Request::TagResource(r) => self.tag_resource(p, r)?,
            Request::UntagResource(r) => self.untag_resource(p, r)?,
            Request::ListResourceTags(r) => self.list_resource_tags(p, r)?,
            Request::EnableKeyRotation(r) => self.set_rotation(p, r, true)?,
            Request::DisableKeyRotation(r) => self.set_rotation(p, r, false)?,
            Request::GetKeyRotationStatus(r) => self.rotation_status(p, r)?,
            Request::RotateKeyOnDemand(r) => self.rotate_on_demand(p, r)?,
            Request::UpdateKeyDescription(r) => self.update_description(p, r)?,
            Request::Sign(r) => return self.sign(p, r),
            Request::Verify(r) => return self.verify(p, r),
            Request::GetPublicKey(r) => self.get_public_key(p, r)?,
            Request::DeriveSharedSecret(r) => self.derive_shared_secret(p, r)?,
            Request::GenerateMac(r) => self.generate_mac(p, r)?,
            Request::VerifyMac(r) => self.verify_mac(p, r)?,
            Request::CreateGrant(r) => self.create_grant(p, r)?,
            Request::ListGrants(r) => self.list_grants(p, r)?,
            Request::ListRetirableGrants(r) => self.list_retirable_grants(p, r)?,
            Request::RetireGrant(r) => self.retire_grant(p, r)?,
            Request::RevokeGrant(r) => self.revoke_grant(p, r)?,
            Request::GetParametersForImport(r) => self.get_parameters_for_import(p, r)?,
            Request::ImportKeyMaterial(r) => self.import_key_material(p, r)?,
            Request::DeleteImportedKeyMaterial(r) => self.delete_imported_key_material(p, r)?,
            Request::ReplicateKey(r) => self.replicate_key(p, r)?,
            Request::UpdatePrimaryRegion(r) => self.update_primary_region(p, r)?,
            Request::ListKeyRotations(r) => self.list_key_rotations(p, r)?,
            Request::Unknown(_) => {
                return Err(KmsError::UnknownOperation(format!(
                    "Operation {op} is not supported by this key service"
                )))
            }
        };
        serde_json::to_vec(&v).map_err(|e| KmsError::internal("encode response", e))
    }
}

/// Puts a secret into a response: sealed to the attested recipient as `CiphertextForRecipient`
/// (the plaintext field then left out, as AWS does), or in the clear under `plaintext_field`.
fn release(
    out: &mut Value,
    plaintext_field: &str,
    secret: &[u8],
    recipient: Option<&AttestedRecipient>,
) -> KmsResult<()> {
    let (field, value) = match recipient {
        Some(r) => ("CiphertextForRecipient", b64(&r.seal(secret)?)),
        None => (plaintext_field, b64(secret)),
    };
    out[field] = Value::String(value);
    Ok(())
}
#[cfg(test)]
mod tests;
