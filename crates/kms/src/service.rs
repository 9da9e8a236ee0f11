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

use crate::blob::{self, BlobHeader, EncryptionContext};
use crate::error::{KmsError, KmsResult};
use crate::policy::{Policy, RequestContext, CALLER_ACCOUNT_KEY, CONTEXT_KEYS_KEY, CONTEXT_PREFIX};
use crate::recipient::{AttestedRecipient, RecipientGate};
use crate::store::{
    format_key_id, now, parse_key_id, KeyEntry, KeyRecord, KeyState, Store, Tag, MATERIAL_LEN,
};
use base64::Engine as _;
use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use zeroize::Zeroizing;

mod asymmetric;
mod mac;
#[path = "ops/mod.rs"]
pub mod ops;

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

/// A Recipient parameter.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RecipientParam {
    /// Must be RSAES_OAEP_SHA_256.
    pub key_encryption_algorithm: Option<String>,
    /// The attestation document.
    pub attestation_document: Option<Blob>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct Req {
    key_id: Option<String>,
    plaintext: Option<Blob>,
    ciphertext_blob: Option<Blob>,
    encryption_context: Option<EncryptionContext>,
    encryption_algorithm: Option<String>,
    recipient: Option<RecipientParam>,
    key_spec: Option<String>,
    number_of_bytes: Option<i64>,
    key_pair_spec: Option<String>,
    source_encryption_context: Option<EncryptionContext>,
    source_key_id: Option<String>,
    destination_key_id: Option<String>,
    destination_encryption_context: Option<EncryptionContext>,
    source_encryption_algorithm: Option<String>,
    destination_encryption_algorithm: Option<String>,
    description: Option<String>,
    key_usage: Option<String>,
    customer_master_key_spec: Option<String>,
    origin: Option<String>,
    policy: Option<String>,
    policy_name: Option<String>,
    tags: Option<Vec<TagParam>>,
    tag_keys: Option<Vec<String>>,
    multi_region: Option<bool>,
    bypass_policy_lockout_safety_check: Option<bool>,
    limit: Option<i64>,
    marker: Option<String>,
    alias_name: Option<String>,
    target_key_id: Option<String>,
    pending_window_in_days: Option<i64>,
    rotation_period_in_days: Option<i64>,
    custom_key_store_id: Option<String>,
    grant_tokens: Option<Vec<String>>,
    dry_run: Option<bool>,
    // Sign, Verify, GenerateMac, VerifyMac, DeriveSharedSecret (see `asymmetric` and `mac`).
    message: Option<Blob>,
    message_type: Option<String>,
    signing_algorithm: Option<String>,
    signature: Option<Blob>,
    mac_algorithm: Option<String>,
    mac: Option<Blob>,
    public_key: Option<Blob>,
    key_agreement_algorithm: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TagParam {
    tag_key: Option<String>,
    tag_value: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct DecryptResponse {
    key_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    plaintext: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ciphertext_for_recipient: Option<String>,
    encryption_algorithm: &'static str,
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

fn parse_req(body: &[u8]) -> KmsResult<Req> {
    if body.is_empty() {
        return Ok(Req::default());
    }
    serde_json::from_slice(body).map_err(|e| {
        let msg = match e.classify() {
            serde_json::error::Category::Data => format!("Invalid request: {e}"),
            _ => format!("Request body is not valid JSON: {e}"),
        };
        KmsError::Serialization(msg)
    })
}

fn required<T>(v: Option<T>, field: &str) -> KmsResult<T> {
    v.ok_or_else(|| KmsError::missing(field))
}

fn check_len(field: &str, len: usize, min: usize, max: usize) -> KmsResult<()> {
    if len < min {
        return Err(KmsError::Validation(format!(
            "1 validation error detected: Value at '{field}' failed to satisfy constraint: Member must have length greater than or equal to {min}"
        )));
    }
    if len > max {
        return Err(KmsError::Validation(format!(
            "1 validation error detected: Value at '{field}' failed to satisfy constraint: Member must have length less than or equal to {max}"
        )));
    }
    Ok(())
}

fn check_range(field: &str, v: i64, min: i64, max: i64) -> KmsResult<usize> {
    if v < min || v > max {
        return Err(KmsError::Validation(format!(
            "1 validation error detected: Value '{v}' at '{field}' failed to satisfy constraint: Member must have value between {min} and {max}"
        )));
    }
    usize::try_from(v).map_err(|_| KmsError::Validation(format!("{field} out of range")))
}

fn check_symmetric_algorithm(alg: &Option<String>) -> KmsResult<()> {
    match alg.as_deref() {
        None | Some("SYMMETRIC_DEFAULT") => Ok(()),
        Some(other) => Err(KmsError::InvalidKeyUsage(format!(
            "The encryption algorithm {other} is not compatible with the type of the specified key"
        ))),
    }
}

fn random(n: usize) -> KmsResult<Zeroizing<Vec<u8>>> {
    let mut v = Zeroizing::new(vec![0u8; n]);
    aws_lc_rs::rand::fill(&mut v[..]).map_err(|e| KmsError::internal("random", e))?;
    Ok(v)
}

/// Returns the data-key pair (PKCS#8 private key, SPKI public key) of `spec`.
fn generate_key_pair(spec: &str) -> KmsResult<(Zeroizing<Vec<u8>>, Vec<u8>)> {
    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::rsa::KeySize;
    use aws_lc_rs::signature::KeyPair as _;
    let rsa = |size: KeySize| -> KmsResult<(Zeroizing<Vec<u8>>, Vec<u8>)> {
        let kp = aws_lc_rs::rsa::KeyPair::generate(size)
            .map_err(|e| KmsError::internal("rsa keygen", e))?;
        let private: aws_lc_rs::encoding::Pkcs8V1Der<'_> = kp
            .as_der()
            .map_err(|e| KmsError::internal("rsa pkcs8", e))?;
        let public: aws_lc_rs::encoding::PublicKeyX509Der<'_> = kp
            .public_key()
            .as_der()
            .map_err(|e| KmsError::internal("rsa spki", e))?;
        Ok((
            Zeroizing::new(private.as_ref().to_vec()),
            public.as_ref().to_vec(),
        ))
    };
    let ec = |alg: &'static aws_lc_rs::signature::EcdsaSigningAlgorithm| -> KmsResult<(Zeroizing<Vec<u8>>, Vec<u8>)> {
        let kp = aws_lc_rs::signature::EcdsaKeyPair::generate(alg)
            .map_err(|e| KmsError::internal("ec keygen", e))?;
        let private = kp
            .to_pkcs8v1()
            .map_err(|e| KmsError::internal("ec pkcs8", e))?;
        let public: aws_lc_rs::encoding::PublicKeyX509Der<'_> = kp
            .public_key()
            .as_der()
            .map_err(|e| KmsError::internal("ec spki", e))?;
        Ok((
            Zeroizing::new(private.as_ref().to_vec()),
            public.as_ref().to_vec(),
        ))
    };
    match spec {
        "RSA_2048" => rsa(KeySize::Rsa2048),
        "RSA_3072" => rsa(KeySize::Rsa3072),
        "RSA_4096" => rsa(KeySize::Rsa4096),
        "ECC_NIST_P256" => ec(&aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1_SIGNING),
        "ECC_NIST_P384" => ec(&aws_lc_rs::signature::ECDSA_P384_SHA384_ASN1_SIGNING),
        "ECC_NIST_P521" => ec(&aws_lc_rs::signature::ECDSA_P521_SHA512_ASN1_SIGNING),
        "ECC_SECG_P256K1" => ec(&aws_lc_rs::signature::ECDSA_P256K1_SHA256_ASN1_SIGNING),
        other => Err(KmsError::Validation(format!(
            "1 validation error detected: Value '{other}' at 'keyPairSpec' failed to satisfy constraint: Member must satisfy enum value set: [RSA_2048, RSA_3072, RSA_4096, ECC_NIST_P256, ECC_NIST_P384, ECC_NIST_P521, ECC_SECG_P256K1]"
        ))),
    }
}

fn validate_alias_name(name: &str) -> KmsResult<()> {
    check_len("aliasName", name.len(), 1, 256)?;
    let Some(rest) = name.strip_prefix("alias/") else {
        return Err(KmsError::Validation(
            "Alias must start with the prefix \"alias/\"".into(),
        ));
    };
    if rest.is_empty()
        || !rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'_' | b'-'))
    {
        return Err(KmsError::Validation(format!(
            "1 validation error detected: Value '{name}' at 'aliasName' failed to satisfy constraint: Member must satisfy regular expression pattern: ^[a-zA-Z0-9:/_-]+$"
        )));
    }
    if rest.starts_with("aws/") {
        return Err(KmsError::InvalidAliasName(
            "Cannot create alias with prefix 'alias/aws/'".into(),
        ));
    }
    Ok(())
}

fn validate_tags(tags: &[Tag]) -> KmsResult<()> {
    for t in tags {
        if t.key.is_empty() || t.key.len() > 128 || t.value.len() > 256 {
            return Err(KmsError::Validation(
                "Tag keys must be 1..128 characters and values 0..256".into(),
            ));
        }
        if t.key.starts_with("aws:") {
            return Err(KmsError::Tag(
                "Tag keys beginning with 'aws:' are reserved".into(),
            ));
        }
    }
    Ok(())
}

fn take_tags(tags: Vec<TagParam>) -> KmsResult<Vec<Tag>> {
    let tags: Vec<Tag> = tags
        .into_iter()
        .map(|t| {
            Ok(Tag {
                key: required(t.tag_key, "tags.member.tagKey")?,
                value: required(t.tag_value, "tags.member.tagValue")?,
            })
        })
        .collect::<KmsResult<_>>()?;
    validate_tags(&tags)?;
    Ok(tags)
}

/// A resolved key plus what the request needs of it.
struct Resolved {
    id: [u8; 16],
    entry: Arc<KeyEntry>,
    arn: String,
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
        if let Some(out) = self.extension(op, principal, body) {
            return out;
        }
        let req = parse_req(body)?;
        if req.custom_key_store_id.is_some() {
            return Err(KmsError::UnsupportedOperation(
                "Custom key stores are not supported".into(),
            ));
        }
        self.check_grant_tokens(req.grant_tokens.as_deref())?;
        if req.dry_run == Some(true) {
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

    fn dispatch(&self, op: &str, principal: &str, req: Req) -> KmsResult<Vec<u8>> {
        let v = match op {
            "Decrypt" => return self.decrypt(principal, req),
            "Encrypt" => self.encrypt(principal, req)?,
            "GenerateDataKey" => self.generate_data_key(principal, req, true)?,
            "GenerateDataKeyWithoutPlaintext" => self.generate_data_key(principal, req, false)?,
            "GenerateDataKeyPair" => self.generate_data_key_pair(principal, req, true)?,
            "GenerateDataKeyPairWithoutPlaintext" => {
                self.generate_data_key_pair(principal, req, false)?
            }
            "GenerateRandom" => self.generate_random(req)?,
            "ReEncrypt" => self.re_encrypt(principal, req)?,
            "CreateKey" => self.create_key(principal, req)?,
            "DescribeKey" => self.describe_key(principal, req)?,
            "ListKeys" => self.list_keys(req)?,
            "EnableKey" => self.set_enabled(principal, req, true)?,
            "DisableKey" => self.set_enabled(principal, req, false)?,
            "ScheduleKeyDeletion" => self.schedule_deletion(principal, req)?,
            "CancelKeyDeletion" => self.cancel_deletion(principal, req)?,
            "CreateAlias" => self.create_alias(principal, req)?,
            "UpdateAlias" => self.update_alias(principal, req)?,
            "DeleteAlias" => self.delete_alias(principal, req)?,
            "ListAliases" => self.list_aliases(principal, req)?,
            "GetKeyPolicy" => self.get_key_policy(principal, req)?,
            "PutKeyPolicy" => self.put_key_policy(principal, req)?,
            "ListKeyPolicies" => self.list_key_policies(principal, req)?,
            "TagResource" => self.tag_resource(principal, req)?,
            "UntagResource" => self.untag_resource(principal, req)?,
            "ListResourceTags" => self.list_resource_tags(principal, req)?,
            "EnableKeyRotation" => self.set_rotation(principal, req, true)?,
            "DisableKeyRotation" => self.set_rotation(principal, req, false)?,
            "GetKeyRotationStatus" => self.rotation_status(principal, req)?,
            "RotateKeyOnDemand" => self.rotate_on_demand(principal, req)?,
            "UpdateKeyDescription" => self.update_description(principal, req)?,
            "Sign" => return self.sign(principal, req),
            "Verify" => return self.verify(principal, req),
            "GetPublicKey" => self.get_public_key(principal, req)?,
            "DeriveSharedSecret" => self.derive_shared_secret(principal, req)?,
            "GenerateMac" => self.generate_mac(principal, req)?,
            "VerifyMac" => self.verify_mac(principal, req)?,
            _ => {
                return Err(KmsError::UnknownOperation(format!(
                    "Operation {op} is not supported by this key service"
                )))
            }
        };
        serde_json::to_vec(&v).map_err(|e| KmsError::internal("encode response", e))
    }

    // ---- key resolution and authorization ----

    fn resolve(&self, key_id: &str) -> KmsResult<Resolved> {
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

    fn alias_target(&self, alias: &str) -> KmsResult<String> {
        Ok(self
            .store
            .alias(&self.alias_key(alias))?
            .ok_or_else(|| {
                KmsError::NotFound(format!("Alias {} is not found.", self.alias_arn(alias)))
            })?
            .target)
    }

    fn authorize(
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
    fn request_context<'a>(
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
    fn check_lockout(
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

    fn require_enabled(&self, key: &Resolved) -> KmsResult<()> {
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
    fn authorize_generation(
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

    fn attested(&self, r: Option<RecipientParam>) -> KmsResult<Option<Arc<AttestedRecipient>>> {
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

    fn symmetric_encrypt(
        &self,
        key: &Resolved,
        context: &EncryptionContext,
        plaintext: &[u8],
    ) -> KmsResult<Vec<u8>> {
        let version = key
            .entry
            .materials
            .len()
            .checked_sub(1)
            .ok_or_else(|| KmsError::Internal("key has no material".into()))?;
        let material = &key.entry.materials[version];
        let header = BlobHeader {
            key_id: key.id,
            material: u32::try_from(version).map_err(|e| KmsError::internal("version", e))?,
        };
        blob::seal(
            material,
            &header,
            &blob::canonical_context(context)?,
            plaintext,
        )
    }

    /// Resolves the key a ciphertext blob names and decrypts it (after authorization).
    fn symmetric_decrypt(
        &self,
        principal: &str,
        action: &str,
        ciphertext: &[u8],
        context: &EncryptionContext,
        key_id: Option<&str>,
        recipient: Option<&AttestedRecipient>,
    ) -> KmsResult<(Resolved, Zeroizing<Vec<u8>>)> {
        check_len("ciphertextBlob", ciphertext.len(), 1, blob::MAX_BLOB_LEN)?;
        let header = blob::parse_header(ciphertext)?;
        // A blob naming no existing key is indistinguishable from garbage: AWS answers
        // InvalidCiphertextException, not NotFoundException.
        let key = self
            .resolve(&format_key_id(&header.key_id))
            .map_err(|e| match e {
                KmsError::NotFound(_) => KmsError::InvalidCiphertext(String::new()),
                other => other,
            })?;
        if let Some(named) = key_id {
            let want = self.resolve(named)?;
            Self::require_symmetric(&want, action)?;
            if want.id != key.id {
                return Err(KmsError::IncorrectKey(
                    "The key ID in the request does not identify a CMK that can perform this operation.".into(),
                ));
            }
        }
        self.authorize(&key, principal, action, Some(context), recipient)?;
        self.require_enabled(&key)?;
        let material = usize::try_from(header.material)
            .ok()
            .and_then(|i| key.entry.materials.get(i))
            .ok_or_else(|| KmsError::InvalidCiphertext(String::new()))?;
        let plain = blob::open(material, ciphertext, &blob::canonical_context(context)?)?;
        Ok((key, plain))
    }

    // ---- cryptographic operations ----

    fn decrypt(&self, principal: &str, req: Req) -> KmsResult<Vec<u8>> {
        if asymmetric::is_rsa_algorithm(&req.encryption_algorithm) {
            return self.rsa_decrypt(principal, req);
        }
        check_symmetric_algorithm(&req.encryption_algorithm)?;
        let ct = required(req.ciphertext_blob, "ciphertextBlob")?;
        let recipient = self.attested(req.recipient)?;
        let ctx = req.encryption_context.unwrap_or_default();
        let (key, plain) = self.symmetric_decrypt(
            principal,
            "kms:Decrypt",
            &ct.0,
            &ctx,
            req.key_id.as_deref(),
            recipient.as_deref(),
        )?;
        let (plaintext, cfr) = match &recipient {
            Some(r) => (None, Some(b64(&r.seal(&plain)?))),
            None => (Some(b64(&plain)), None),
        };
        let resp = DecryptResponse {
            key_id: key.arn,
            plaintext,
            ciphertext_for_recipient: cfr,
            encryption_algorithm: "SYMMETRIC_DEFAULT",
        };
        serde_json::to_vec(&resp).map_err(|e| KmsError::internal("encode", e))
    }

    fn encrypt(&self, principal: &str, req: Req) -> KmsResult<Value> {
        let key = self.resolve(required(req.key_id.as_deref(), "keyId")?)?;
        if !key.entry.record.key_spec.is_symmetric() {
            return self.rsa_encrypt(principal, key, req);
        }
        check_symmetric_algorithm(&req.encryption_algorithm)?;
        let pt = required(req.plaintext, "plaintext")?;
        check_len("plaintext", pt.0.len(), 1, MAX_PLAINTEXT)?;
        let ctx = req.encryption_context.unwrap_or_default();
        self.authorize(&key, principal, "kms:Encrypt", Some(&ctx), None)?;
        self.require_enabled(&key)?;
        let blob = self.symmetric_encrypt(&key, &ctx, &pt.0)?;
        Ok(json!({
            "CiphertextBlob": b64(&blob),
            "KeyId": key.arn,
            "EncryptionAlgorithm": "SYMMETRIC_DEFAULT",
        }))
    }

    fn generate_data_key(
        &self,
        principal: &str,
        req: Req,
        with_plaintext: bool,
    ) -> KmsResult<Value> {
        let key = self.resolve(&required(req.key_id, "keyId")?)?;
        Self::require_symmetric(&key, "kms:GenerateDataKey")?;
        let n = match (req.key_spec.as_deref(), req.number_of_bytes) {
            (Some(_), Some(_)) => {
                return Err(KmsError::Validation(
                    "Please specify either number of bytes or key spec.".into(),
                ))
            }
            (Some("AES_256"), None) => 32,
            (Some("AES_128"), None) => 16,
            (Some(other), None) => {
                return Err(KmsError::Validation(format!(
                    "1 validation error detected: Value '{other}' at 'keySpec' failed to satisfy constraint: Member must satisfy enum value set: [AES_256, AES_128]"
                )))
            }
            (None, Some(n)) => check_range("numberOfBytes", n, 1, MAX_RANDOM_BYTES as i64)?,
            (None, None) => {
                return Err(KmsError::Validation(
                    "Please specify either number of bytes or key spec.".into(),
                ))
            }
        };
        let (ctx, recipient) = self.authorize_generation(
            &key,
            principal,
            req.recipient,
            req.encryption_context,
            ["kms:GenerateDataKey", "kms:GenerateDataKeyWithoutPlaintext"],
            with_plaintext,
        )?;
        let dk = random(n)?;
        let blob = self.symmetric_encrypt(&key, &ctx, &dk)?;
        let mut out = json!({ "CiphertextBlob": b64(&blob), "KeyId": key.arn });
        if with_plaintext {
            release(&mut out, "Plaintext", &dk, recipient.as_deref())?;
        }
        Ok(out)
    }

    fn generate_data_key_pair(
        &self,
        principal: &str,
        req: Req,
        with_plaintext: bool,
    ) -> KmsResult<Value> {
        let key = self.resolve(&required(req.key_id, "keyId")?)?;
        Self::require_symmetric(&key, "kms:GenerateDataKeyPair")?;
        let spec = required(req.key_pair_spec, "keyPairSpec")?;
        let (ctx, recipient) = self.authorize_generation(
            &key,
            principal,
            req.recipient,
            req.encryption_context,
            [
                "kms:GenerateDataKeyPair",
                "kms:GenerateDataKeyPairWithoutPlaintext",
            ],
            with_plaintext,
        )?;
        let (private, public) = generate_key_pair(&spec)?;
        let blob = self.symmetric_encrypt(&key, &ctx, &private)?;
        let mut out = json!({
            "PrivateKeyCiphertextBlob": b64(&blob),
            "PublicKey": b64(&public),
            "KeyId": key.arn,
            "KeyPairSpec": spec,
        });
        if with_plaintext {
            release(
                &mut out,
                "PrivateKeyPlaintext",
                &private,
                recipient.as_deref(),
            )?;
        }
        Ok(out)
    }

    fn generate_random(&self, req: Req) -> KmsResult<Value> {
        let n = check_range(
            "numberOfBytes",
            required(req.number_of_bytes, "numberOfBytes")?,
            1,
            MAX_RANDOM_BYTES as i64,
        )?;
        let recipient = self.attested(req.recipient)?;
        let bytes = random(n)?;
        let mut out = json!({});
        release(&mut out, "Plaintext", &bytes, recipient.as_deref())?;
        Ok(out)
    }

    /// ReEncrypt. Either side may be an RSA key (`RSAES_OAEP_SHA_1`/`_256`, as AWS allows):
    /// an RSA source names its key and algorithm (an RSA ciphertext names neither), an RSA
    /// destination its algorithm; neither takes an encryption context. The plaintext never
    /// leaves the service.
    fn re_encrypt(&self, principal: &str, req: Req) -> KmsResult<Value> {
        let src_rsa = asymmetric::is_rsa_algorithm(&req.source_encryption_algorithm);
        let dst_rsa = asymmetric::is_rsa_algorithm(&req.destination_encryption_algorithm);
        if !src_rsa {
            check_symmetric_algorithm(&req.source_encryption_algorithm)?;
        }
        if !dst_rsa {
            check_symmetric_algorithm(&req.destination_encryption_algorithm)?;
        }
        let ct = required(req.ciphertext_blob, "ciphertextBlob")?;
        let dest = self.resolve(&required(req.destination_key_id, "destinationKeyId")?)?;
        if !dst_rsa {
            Self::require_symmetric(&dest, "kms:ReEncryptTo")?;
        }
        // Each side's authorization sees its own `kms:EncryptionAlgorithm`.
        let src_alg_name = match req.source_encryption_algorithm.as_deref() {
            Some("RSAES_OAEP_SHA_1") => "RSAES_OAEP_SHA_1",
            Some("RSAES_OAEP_SHA_256") => "RSAES_OAEP_SHA_256",
            _ => "SYMMETRIC_DEFAULT",
        };
        let dst_alg_name = match req.destination_encryption_algorithm.as_deref() {
            Some("RSAES_OAEP_SHA_1") => "RSAES_OAEP_SHA_1",
            Some("RSAES_OAEP_SHA_256") => "RSAES_OAEP_SHA_256",
            _ => "SYMMETRIC_DEFAULT",
        };
        ops::scope::set_encryption_algorithm(src_alg_name);
        let (src, src_alg, plain) = if src_rsa {
            let (src, alg, plain) = self.rsa_open(
                principal,
                "kms:ReEncryptFrom",
                req.source_encryption_algorithm
                    .as_deref()
                    .unwrap_or_default(),
                &req.source_encryption_context,
                &ct.0,
                req.source_key_id.as_deref(),
                None,
            )?;
            (src, alg.as_str(), plain)
        } else {
            let src_ctx = req.source_encryption_context.unwrap_or_default();
            let (src, plain) = self.symmetric_decrypt(
                principal,
                "kms:ReEncryptFrom",
                &ct.0,
                &src_ctx,
                req.source_key_id.as_deref(),
                None,
            )?;
            (src, "SYMMETRIC_DEFAULT", plain)
        };
        ops::scope::set_encryption_algorithm(dst_alg_name);
        let (blob, dst_alg) = if dst_rsa {
            let (blob, alg) = self.rsa_seal_to(
                principal,
                &dest,
                req.destination_encryption_algorithm
                    .as_deref()
                    .unwrap_or_default(),
                &req.destination_encryption_context,
                &plain,
            )?;
            (blob, alg.as_str())
        } else {
            let dst_ctx = req.destination_encryption_context.unwrap_or_default();
            self.authorize(&dest, principal, "kms:ReEncryptTo", Some(&dst_ctx), None)?;
            self.require_enabled(&dest)?;
            (
                self.symmetric_encrypt(&dest, &dst_ctx, &plain)?,
                "SYMMETRIC_DEFAULT",
            )
        };
        Ok(json!({
            "CiphertextBlob": b64(&blob),
            "SourceKeyId": src.arn,
            "KeyId": dest.arn,
            "SourceEncryptionAlgorithm": src_alg,
            "DestinationEncryptionAlgorithm": dst_alg,
        }))
    }

    // ---- key management ----

    fn metadata(&self, entry: &KeyEntry) -> Value {
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

    fn create_key(&self, principal: &str, req: Req) -> KmsResult<Value> {
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

    fn describe_key(&self, principal: &str, req: Req) -> KmsResult<Value> {
        let key = self.resolve(&required(req.key_id, "keyId")?)?;
        self.authorize(&key, principal, "kms:DescribeKey", None, None)?;
        Ok(json!({ "KeyMetadata": self.metadata(&key.entry) }))
    }

    fn limit(req_limit: Option<i64>, default: usize, max: i64) -> KmsResult<usize> {
        match req_limit {
            Some(l) => check_range("limit", l, 1, max),
            None => Ok(default),
        }
    }

    fn list_keys(&self, req: Req) -> KmsResult<Value> {
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

    fn set_enabled(&self, principal: &str, req: Req, enable: bool) -> KmsResult<Value> {
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

    fn schedule_deletion(&self, principal: &str, req: Req) -> KmsResult<Value> {
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

    fn cancel_deletion(&self, principal: &str, req: Req) -> KmsResult<Value> {
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

    fn alias_target_key(&self, target: &str) -> KmsResult<Resolved> {
        if target.starts_with("alias/") || target.contains(":alias/") {
            return Err(KmsError::Validation(
                "Aliases must refer to keys. Not aliases".into(),
            ));
        }
        let key = self.resolve(target)?;
        if key.entry.record.state == KeyState::PendingDeletion {
            return Err(KmsError::InvalidState(format!(
                "{} is pending deletion.",
                key.arn
            )));
        }
        Ok(key)
    }

    fn create_alias(&self, principal: &str, req: Req) -> KmsResult<Value> {
        let name = required(req.alias_name, "aliasName")?;
        validate_alias_name(&name)?;
        let key = self.alias_target_key(&required(req.target_key_id, "targetKeyId")?)?;
        self.authorize(&key, principal, "kms:CreateAlias", None, None)?;
        self.store
            .create_alias(&self.alias_key(&name), &key.entry.record.id)
            .map_err(|e| self.alias_error(&name, e))?;
        Ok(json!({}))
    }

    fn update_alias(&self, principal: &str, req: Req) -> KmsResult<Value> {
        let name = required(req.alias_name, "aliasName")?;
        validate_alias_name(&name)?;
        let key = self.alias_target_key(&required(req.target_key_id, "targetKeyId")?)?;
        let old = self.resolve(&name)?;
        self.authorize(&old, principal, "kms:UpdateAlias", None, None)?;
        self.authorize(&key, principal, "kms:UpdateAlias", None, None)?;
        self.store
            .update_alias(&self.alias_key(&name), &key.entry.record.id)
            .map_err(|e| self.alias_error(&name, e))?;
        Ok(json!({}))
    }

    fn delete_alias(&self, principal: &str, req: Req) -> KmsResult<Value> {
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

    fn list_aliases(&self, principal: &str, req: Req) -> KmsResult<Value> {
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

    fn policy_name(req: &Req) -> KmsResult<()> {
        match req.policy_name.as_deref() {
            None | Some("default") => Ok(()),
            Some(other) => Err(KmsError::NotFound(format!(
                "Policy {other} does not exist; the only policy name is 'default'"
            ))),
        }
    }

    fn get_key_policy(&self, principal: &str, req: Req) -> KmsResult<Value> {
        Self::policy_name(&req)?;
        let key = self.resolve(&required(req.key_id, "keyId")?)?;
        self.authorize(&key, principal, "kms:GetKeyPolicy", None, None)?;
        Ok(json!({ "Policy": key.entry.record.policy, "PolicyName": "default" }))
    }

    fn put_key_policy(&self, principal: &str, req: Req) -> KmsResult<Value> {
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

    fn list_key_policies(&self, principal: &str, req: Req) -> KmsResult<Value> {
        let key = self.resolve(&required(req.key_id, "keyId")?)?;
        Self::limit(req.limit, 100, 1000)?;
        self.authorize(&key, principal, "kms:ListKeyPolicies", None, None)?;
        Ok(json!({ "PolicyNames": ["default"], "Truncated": false }))
    }

    fn tag_resource(&self, principal: &str, req: Req) -> KmsResult<Value> {
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

    fn untag_resource(&self, principal: &str, req: Req) -> KmsResult<Value> {
        let key = self.resolve(&required(req.key_id, "keyId")?)?;
        let keys = required(req.tag_keys, "tagKeys")?;
        self.authorize(&key, principal, "kms:UntagResource", None, None)?;
        self.update_regional(&key, |r| {
            r.tags.retain(|t| !keys.contains(&t.key));
            Ok(())
        })?;
        Ok(json!({}))
    }

    fn list_resource_tags(&self, principal: &str, req: Req) -> KmsResult<Value> {
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

    fn set_rotation(&self, principal: &str, req: Req, enable: bool) -> KmsResult<Value> {
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

    fn next_rotation(r: &KeyRecord) -> Option<f64> {
        let period = r.rotation_period_days?;
        let last = r.rotations.last().copied().unwrap_or(r.created);
        Some(last + f64::from(period) * 86_400.0)
    }

    fn rotation_status(&self, principal: &str, req: Req) -> KmsResult<Value> {
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
    fn rotate(&self, id: &[u8; 16], on_demand: bool) -> KmsResult<bool> {
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

    fn rotate_on_demand(&self, principal: &str, req: Req) -> KmsResult<Value> {
        let key = self.resolve(&required(req.key_id, "keyId")?)?;
        self.authorize(&key, principal, "kms:RotateKeyOnDemand", None, None)?;
        self.require_enabled(&key)?;
        Self::require_rotatable(&key)?;
        self.require_primary(&key, "on-demand rotation")?;
        self.rotate(&key.id, true)?;
        Ok(json!({ "KeyId": key.arn }))
    }

    fn update_description(&self, principal: &str, req: Req) -> KmsResult<Value> {
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
mod tests {
    use super::*;

    const ROOT: &str = "arn:aws:iam::111122223333:root";

    fn service() -> (tempfile::TempDir, Service) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &dir.path().join("master.key")).unwrap();
        (dir, Service::new(store, "us-east-1", "111122223333", None))
    }

    fn call(s: &Service, op: &str, body: Value) -> KmsResult<Value> {
        s.handle(op, ROOT, &serde_json::to_vec(&body).unwrap())
            .map(|b| serde_json::from_slice(&b).unwrap())
    }

    /// An automatic rotation that a second server (working from the same stale view) also
    /// finds due happens once: the check is repeated on the stored record.
    #[test]
    fn a_due_rotation_happens_once() {
        let (_d, s) = service();
        let k = call(&s, "CreateKey", json!({})).unwrap();
        let id = k["KeyMetadata"]["KeyId"].as_str().unwrap().to_string();
        call(
            &s,
            "EnableKeyRotation",
            json!({"KeyId": id, "RotationPeriodInDays": 90}),
        )
        .unwrap();
        let raw = parse_key_id(&id).unwrap();
        // Created 91 days ago: the first rotation is due.
        s.store
            .update_key(&raw, |r| {
                r.created -= 91.0 * 86_400.0;
                Ok(())
            })
            .unwrap();
        assert!(s.rotate(&raw, false).unwrap());
        assert!(!s.rotate(&raw, false).unwrap(), "rotated twice");
        assert_eq!(s.maintain().unwrap(), (0, 0));
        let entry = s.store.key(&raw).unwrap().unwrap();
        assert_eq!(entry.record.materials.len(), 2);
        assert_eq!(entry.record.rotations.len(), 1);
        // On demand is never skipped.
        assert!(s.rotate(&raw, true).unwrap());
    }

    #[test]
    fn encrypt_decrypt_with_context_and_rotation() {
        let (_d, s) = service();
        let k = call(&s, "CreateKey", json!({"Description": "t"})).unwrap();
        let id = k["KeyMetadata"]["KeyId"].as_str().unwrap().to_string();
        let ctx = json!({"b": "2", "a": "1"});
        let e = call(
            &s,
            "Encrypt",
            json!({"KeyId": id, "Plaintext": b64(b"secret"), "EncryptionContext": ctx}),
        )
        .unwrap();
        let blob = e["CiphertextBlob"].as_str().unwrap().to_string();
        call(&s, "RotateKeyOnDemand", json!({"KeyId": id})).unwrap();
        let d = call(
            &s,
            "Decrypt",
            json!({"CiphertextBlob": blob, "EncryptionContext": {"a": "1", "b": "2"}}),
        )
        .unwrap();
        assert_eq!(d["Plaintext"], b64(b"secret"));
        assert!(matches!(
            call(&s, "Decrypt", json!({"CiphertextBlob": blob})),
            Err(KmsError::InvalidCiphertext(_))
        ));
        assert!(matches!(
            call(
                &s,
                "Encrypt",
                json!({"KeyId": id, "Plaintext": b64(&[0u8; 4097])})
            ),
            Err(KmsError::Validation(_))
        ));
        assert!(matches!(
            call(&s, "Encrypt", json!({"KeyId": id, "Plaintext": "!!"})),
            Err(KmsError::Serialization(_))
        ));
        assert!(matches!(
            call(&s, "Encrypt", json!({"KeyId": 5, "Plaintext": "AA=="})),
            Err(KmsError::Serialization(_))
        ));
        assert!(matches!(
            call(&s, "Nope", json!({})),
            Err(KmsError::UnknownOperation(_))
        ));
        call(&s, "DisableKey", json!({"KeyId": id})).unwrap();
        assert!(matches!(
            call(
                &s,
                "Decrypt",
                json!({"CiphertextBlob": blob, "EncryptionContext": ctx})
            ),
            Err(KmsError::Disabled(_))
        ));
    }

    #[test]
    fn aliases_and_policies() {
        let (_d, s) = service();
        let k = call(&s, "CreateKey", json!({})).unwrap();
        let id = k["KeyMetadata"]["KeyId"].as_str().unwrap().to_string();
        call(
            &s,
            "CreateAlias",
            json!({"AliasName": "alias/app", "TargetKeyId": id}),
        )
        .unwrap();
        let d = call(&s, "DescribeKey", json!({"KeyId": "alias/app"})).unwrap();
        assert_eq!(d["KeyMetadata"]["KeyId"], id);
        let arn = "arn:aws:kms:us-east-1:111122223333:alias/app";
        assert!(call(&s, "DescribeKey", json!({"KeyId": arn})).is_ok());
        let deny_all = r#"{"Statement":[{"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111122223333:user/other"},"Action":"kms:*","Resource":"*"}]}"#;
        call(
            &s,
            "PutKeyPolicy",
            json!({"KeyId": id, "Policy": deny_all, "BypassPolicyLockoutSafetyCheck": true}),
        )
        .unwrap();
        assert!(matches!(
            call(&s, "DescribeKey", json!({"KeyId": id})),
            Err(KmsError::AccessDenied(_))
        ));
        assert!(matches!(
            call(&s, "PutKeyPolicy", json!({"KeyId": id, "Policy": "{"})),
            Err(KmsError::MalformedPolicyDocument(_))
        ));
    }

    fn policy(statements: Value) -> String {
        json!({"Version": "2012-10-17", "Statement": statements}).to_string()
    }

    fn allow_root_all() -> Value {
        json!({"Effect": "Allow", "Principal": {"AWS": ROOT}, "Action": "kms:*", "Resource": "*"})
    }

    fn is_lockout(r: KmsResult<Value>) -> bool {
        matches!(r, Err(KmsError::MalformedPolicyDocument(m)) if m == LOCKOUT_MESSAGE)
    }

    #[test]
    fn lockout_safety_check() {
        let (_d, s) = service();
        let other = json!({"Effect": "Allow",
            "Principal": {"AWS": "arn:aws:iam::111122223333:user/other"},
            "Action": "kms:*", "Resource": "*"});
        let no_put = json!({"Effect": "Deny", "Principal": "*", "Action": "kms:PutKeyPolicy",
            "Resource": "*"});
        // PutKeyPolicy only with an encryption context, which PutKeyPolicy never carries.
        let needs_context = json!({"Effect": "Allow", "Principal": {"AWS": ROOT},
            "Action": "kms:*", "Resource": "*",
            "Condition": {"StringEquals": {"kms:EncryptionContext:app": "x"}}});
        // A negated Deny on a key PutKeyPolicy lacks applies to it.
        let negated_deny = json!({"Effect": "Deny", "Principal": "*", "Action": "kms:*",
            "Resource": "*",
            "Condition": {"StringNotEquals": {"kms:EncryptionContext:app": "x"}}});
        let locking = [
            policy(json!([other])),
            policy(json!([allow_root_all(), no_put])),
            policy(json!([needs_context])),
            policy(json!([allow_root_all(), negated_deny])),
        ];
        for p in &locking {
            assert!(
                is_lockout(call(&s, "CreateKey", json!({"Policy": p}))),
                "{p}"
            );
            assert!(is_lockout(call(
                &s,
                "CreateKey",
                json!({"Policy": p, "BypassPolicyLockoutSafetyCheck": false})
            )));
        }
        let k = call(&s, "CreateKey", json!({})).unwrap();
        let id = k["KeyMetadata"]["KeyId"].as_str().unwrap().to_string();
        for p in &locking {
            assert!(
                is_lockout(call(&s, "PutKeyPolicy", json!({"KeyId": id, "Policy": p}))),
                "{p}"
            );
            // Refused policies were not stored: the caller still holds the key.
            call(&s, "DescribeKey", json!({"KeyId": id})).unwrap();
        }
        // Policies that keep PutKeyPolicy for the caller pass, even with other Denies.
        let only_put = json!({"Effect": "Allow", "Principal": {"AWS": ROOT},
            "Action": "kms:PutKeyPolicy", "Resource": "*"});
        let no_decrypt = json!({"Effect": "Deny", "Principal": "*", "Action": "kms:Decrypt",
            "Resource": "*"});
        for p in [
            policy(json!([only_put])),
            policy(json!([allow_root_all(), no_decrypt])),
        ] {
            call(&s, "CreateKey", json!({"Policy": p})).unwrap();
            call(&s, "PutKeyPolicy", json!({"KeyId": id, "Policy": p})).unwrap();
        }
        // With the bypass, the caller may lock itself out, and then is locked out.
        let c = call(
            &s,
            "CreateKey",
            json!({"Policy": locking[0], "BypassPolicyLockoutSafetyCheck": true}),
        )
        .unwrap();
        let locked = c["KeyMetadata"]["KeyId"].as_str().unwrap().to_string();
        assert!(matches!(
            call(
                &s,
                "PutKeyPolicy",
                json!({"KeyId": locked, "Policy": locking[1]})
            ),
            Err(KmsError::AccessDenied(_))
        ));
        call(
            &s,
            "PutKeyPolicy",
            json!({"KeyId": id, "Policy": locking[1], "BypassPolicyLockoutSafetyCheck": true}),
        )
        .unwrap();
        assert!(matches!(
            call(
                &s,
                "PutKeyPolicy",
                json!({"KeyId": id, "Policy": policy(json!([allow_root_all()]))})
            ),
            Err(KmsError::AccessDenied(_))
        ));
    }

    #[test]
    fn negated_deny_on_missing_context_key() {
        let (_d, s) = service();
        let deny = json!({"Effect": "Deny", "Principal": "*",
            "Action": ["kms:Encrypt", "kms:Decrypt"], "Resource": "*",
            "Condition": {"StringNotEquals": {"kms:EncryptionContext:tenant": "a"}}});
        let k = call(
            &s,
            "CreateKey",
            json!({"Policy": policy(json!([allow_root_all(), deny]))}),
        )
        .unwrap();
        let id = k["KeyMetadata"]["KeyId"].as_str().unwrap().to_string();
        let pt = b64(b"s");
        for ctx in [
            None,
            Some(json!({})),
            Some(json!({"other": "a"})),
            Some(json!({"tenant": "b"})),
        ] {
            let mut body = json!({"KeyId": id, "Plaintext": pt});
            if let Some(c) = ctx.clone() {
                body["EncryptionContext"] = c;
            }
            assert!(
                matches!(call(&s, "Encrypt", body), Err(KmsError::AccessDenied(_))),
                "{ctx:?}"
            );
        }
        let e = call(
            &s,
            "Encrypt",
            json!({"KeyId": id, "Plaintext": pt, "EncryptionContext": {"tenant": "a"}}),
        )
        .unwrap();
        let blob = e["CiphertextBlob"].as_str().unwrap();
        assert!(matches!(
            call(&s, "Decrypt", json!({"CiphertextBlob": blob})),
            Err(KmsError::AccessDenied(_))
        ));
        let d = call(
            &s,
            "Decrypt",
            json!({"CiphertextBlob": blob, "EncryptionContext": {"tenant": "a"}}),
        )
        .unwrap();
        assert_eq!(d["Plaintext"], pt);
    }

    fn is_dry_run(r: KmsResult<Value>) -> bool {
        matches!(&r, Err(e @ KmsError::DryRunOperation(m))
            if m == DRY_RUN_MESSAGE && e.aws_type() == "DryRunOperationException"
                && e.http_status() == 400)
    }

    #[test]
    fn dry_run() {
        let (_d, s) = service();
        let k = call(&s, "CreateKey", json!({})).unwrap();
        let id = k["KeyMetadata"]["KeyId"].as_str().unwrap().to_string();
        let ctx = json!({"a": "1"});
        let e = call(
            &s,
            "Encrypt",
            json!({"KeyId": id, "Plaintext": b64(b"x"), "EncryptionContext": ctx}),
        )
        .unwrap();
        let blob = e["CiphertextBlob"].as_str().unwrap().to_string();
        let dry = |op: &str, mut body: Value| {
            body["DryRun"] = json!(true);
            call(&s, op, body)
        };
        // Would succeed: DryRunOperationException.
        for (op, body) in [
            ("Encrypt", json!({"KeyId": id, "Plaintext": b64(b"x")})),
            (
                "Decrypt",
                json!({"CiphertextBlob": blob, "EncryptionContext": ctx}),
            ),
            (
                "GenerateDataKey",
                json!({"KeyId": id, "KeySpec": "AES_256"}),
            ),
            (
                "GenerateDataKeyWithoutPlaintext",
                json!({"KeyId": id, "NumberOfBytes": 16}),
            ),
            (
                "GenerateDataKeyPair",
                json!({"KeyId": id, "KeyPairSpec": "ECC_NIST_P256"}),
            ),
            (
                "GenerateDataKeyPairWithoutPlaintext",
                json!({"KeyId": id, "KeyPairSpec": "ECC_NIST_P256"}),
            ),
            (
                "ReEncrypt",
                json!({"CiphertextBlob": blob, "SourceEncryptionContext": ctx, "DestinationKeyId": id}),
            ),
        ] {
            assert!(is_dry_run(dry(op, body.clone())), "{op}");
            // DryRun false is an ordinary call.
            let mut body = body;
            body["DryRun"] = json!(false);
            call(&s, op, body).unwrap();
        }
        // Would fail: the real error.
        assert!(matches!(
            dry("Decrypt", json!({"CiphertextBlob": blob})),
            Err(KmsError::InvalidCiphertext(_))
        ));
        assert!(matches!(
            dry(
                "Encrypt",
                json!({"KeyId": id, "Plaintext": b64(&[0u8; 4097])})
            ),
            Err(KmsError::Validation(_))
        ));
        assert!(matches!(
            dry(
                "GenerateDataKeyPair",
                json!({"KeyId": id, "KeyPairSpec": "RSA_1024"})
            ),
            Err(KmsError::Validation(_))
        ));
        assert!(matches!(
            dry(
                "Encrypt",
                json!({"KeyId": "alias/none", "Plaintext": b64(b"x")})
            ),
            Err(KmsError::NotFound(_))
        ));
        call(&s, "DisableKey", json!({"KeyId": id})).unwrap();
        assert!(matches!(
            dry("Encrypt", json!({"KeyId": id, "Plaintext": b64(b"x")})),
            Err(KmsError::Disabled(_))
        ));
        call(&s, "EnableKey", json!({"KeyId": id})).unwrap();
        let other = "arn:aws:iam::111122223333:user/other";
        let only_other = policy(json!([{"Effect": "Allow", "Principal": {"AWS": other},
            "Action": "kms:*", "Resource": "*"}]));
        call(
            &s,
            "PutKeyPolicy",
            json!({"KeyId": id, "Policy": only_other, "BypassPolicyLockoutSafetyCheck": true}),
        )
        .unwrap();
        assert!(matches!(
            dry(
                "Decrypt",
                json!({"CiphertextBlob": blob, "EncryptionContext": ctx})
            ),
            Err(KmsError::AccessDenied(_))
        ));
        let body = json!({"CiphertextBlob": blob, "EncryptionContext": ctx, "DryRun": true});
        let r = s.handle("Decrypt", other, &serde_json::to_vec(&body).unwrap());
        assert!(matches!(r, Err(KmsError::DryRunOperation(_))), "{r:?}");
        // Operations without DryRun refuse it rather than act.
        let before = call(&s, "ListKeys", json!({})).unwrap()["Keys"]
            .as_array()
            .unwrap()
            .len();
        assert!(matches!(
            dry("CreateKey", json!({})),
            Err(KmsError::UnsupportedOperation(_))
        ));
        let after = call(&s, "ListKeys", json!({})).unwrap()["Keys"]
            .as_array()
            .unwrap()
            .len();
        assert_eq!(before, after);
    }
}
