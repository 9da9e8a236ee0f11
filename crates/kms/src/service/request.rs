//! One typed request per operation, parsed once from (operation name, body bytes).
//!
//! [`Request::parse`] picks the operation's struct by name and deserializes the body straight
//! into it: each struct holds exactly its operation's fields, plus the three every operation
//! accepts (`CustomKeyStoreId`, refused; `GrantTokens`, checked; `DryRun`), which
//! [`Request::common`] hands to `Service::handle`. As AWS does, fields the operation does not
//! have are ignored; a field of the wrong type, or a body that is not JSON, is a
//! `SerializationException`; a missing required field is reported by the operation itself
//! (`ValidationException`), in the order AWS checks them. An empty body is an empty request.
//!
//! The Sign and Verify structs borrow their short strings from the body, so the hot path
//! allocates only the decoded message.

use super::Blob;
use crate::blob::EncryptionContext;
use crate::error::{KmsError, KmsResult};
use serde::Deserialize;
use std::borrow::Cow;
use std::collections::BTreeMap;

/// A Recipient parameter.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RecipientParam {
    /// Must be RSAES_OAEP_SHA_256.
    pub key_encryption_algorithm: Option<String>,
    /// The attestation document.
    pub attestation_document: Option<Blob>,
}

/// One element of a `Tags` parameter.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct TagParam {
    pub(super) tag_key: Option<String>,
    pub(super) tag_value: Option<String>,
}

/// A string field borrowed from the body when it has no escapes (serde borrows a `Cow` only
/// when it is the field's whole type, not inside an `Option`).
#[derive(Debug, Default, Deserialize)]
#[serde(transparent)]
pub(super) struct Text<'a>(#[serde(borrow)] pub(super) Cow<'a, str>);

impl std::ops::Deref for Text<'_> {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

/// Defines a request struct: the operation's own fields, then the fields every operation
/// accepts.
macro_rules! request {
    ($(#[$m:meta])* struct $name:ident $(<$lt:lifetime>)? {
        $($(#[$fm:meta])* $f:ident : $t:ty,)*
    }) => {
        $(#[$m])*
        #[derive(Debug, Default, Deserialize)]
        #[serde(rename_all = "PascalCase")]
        pub(super) struct $name $(<$lt>)? {
            $($(#[$fm])* pub(super) $f: $t,)*
            /// Refused on every operation (custom key stores are not supported).
            pub(super) custom_key_store_id: Option<String>,
            /// Checked on every operation (a grant token must be well formed).
            pub(super) grant_tokens: Option<Vec<String>>,
            /// Honoured by [`super::DRY_RUN_OPERATIONS`], refused by the others.
            pub(super) dry_run: Option<bool>,
        }
    };
}

request! {
    /// Encrypt (symmetric or RSA key).
    struct EncryptRequest {
        key_id: Option<String>,
        plaintext: Option<Blob>,
        encryption_context: Option<EncryptionContext>,
        encryption_algorithm: Option<String>,
    }
}

request! {
    /// Decrypt (symmetric or RSA ciphertext).
    struct DecryptRequest {
        key_id: Option<String>,
        ciphertext_blob: Option<Blob>,
        encryption_context: Option<EncryptionContext>,
        encryption_algorithm: Option<String>,
        recipient: Option<RecipientParam>,
    }
}

request! {
    /// GenerateDataKey and GenerateDataKeyWithoutPlaintext.
    struct GenerateDataKeyRequest {
        key_id: Option<String>,
        key_spec: Option<String>,
        number_of_bytes: Option<i64>,
        encryption_context: Option<EncryptionContext>,
        recipient: Option<RecipientParam>,
    }
}

request! {
    /// GenerateDataKeyPair and GenerateDataKeyPairWithoutPlaintext.
    struct GenerateDataKeyPairRequest {
        key_id: Option<String>,
        key_pair_spec: Option<String>,
        encryption_context: Option<EncryptionContext>,
        recipient: Option<RecipientParam>,
    }
}

request! {
    /// GenerateRandom.
    struct GenerateRandomRequest {
        number_of_bytes: Option<i64>,
        recipient: Option<RecipientParam>,
    }
}

request! {
    /// ReEncrypt.
    struct ReEncryptRequest {
        ciphertext_blob: Option<Blob>,
        source_encryption_context: Option<EncryptionContext>,
        source_key_id: Option<String>,
        destination_key_id: Option<String>,
        destination_encryption_context: Option<EncryptionContext>,
        source_encryption_algorithm: Option<String>,
        destination_encryption_algorithm: Option<String>,
    }
}

request! {
    /// CreateKey.
    struct CreateKeyRequest {
        description: Option<String>,
        key_spec: Option<String>,
        customer_master_key_spec: Option<String>,
        key_usage: Option<String>,
        origin: Option<String>,
        policy: Option<String>,
        bypass_policy_lockout_safety_check: Option<bool>,
        tags: Option<Vec<TagParam>>,
        multi_region: Option<bool>,
    }
}

request! {
    /// The operations on one key that take nothing else: DescribeKey, EnableKey, DisableKey,
    /// CancelKeyDeletion, GetKeyRotationStatus, RotateKeyOnDemand, GetPublicKey.
    struct KeyRequest {
        key_id: Option<String>,
    }
}

request! {
    /// ListKeys.
    struct ListKeysRequest {
        limit: Option<i64>,
        marker: Option<String>,
    }
}

request! {
    /// ScheduleKeyDeletion.
    struct ScheduleKeyDeletionRequest {
        key_id: Option<String>,
        pending_window_in_days: Option<i64>,
    }
}

request! {
    /// CreateAlias, UpdateAlias and DeleteAlias (which has no target).
    struct AliasRequest {
        alias_name: Option<String>,
        target_key_id: Option<String>,
    }
}

request! {
    /// ListAliases.
    struct ListAliasesRequest {
        key_id: Option<String>,
        limit: Option<i64>,
        marker: Option<String>,
    }
}

request! {
    /// GetKeyPolicy and PutKeyPolicy (the policy and the bypass are PutKeyPolicy's).
    struct KeyPolicyRequest {
        key_id: Option<String>,
        policy_name: Option<String>,
        policy: Option<String>,
        bypass_policy_lockout_safety_check: Option<bool>,
    }
}

request! {
    /// ListKeyPolicies.
    struct ListKeyPoliciesRequest {
        key_id: Option<String>,
        limit: Option<i64>,
    }
}

request! {
    /// TagResource.
    struct TagResourceRequest {
        key_id: Option<String>,
        tags: Option<Vec<TagParam>>,
    }
}

request! {
    /// UntagResource.
    struct UntagResourceRequest {
        key_id: Option<String>,
        tag_keys: Option<Vec<String>>,
    }
}

request! {
    /// ListResourceTags.
    struct ListResourceTagsRequest {
        key_id: Option<String>,
        limit: Option<i64>,
        marker: Option<String>,
    }
}

request! {
    /// EnableKeyRotation and DisableKeyRotation.
    struct KeyRotationRequest {
        key_id: Option<String>,
        rotation_period_in_days: Option<i64>,
    }
}

request! {
    /// UpdateKeyDescription.
    struct UpdateKeyDescriptionRequest {
        key_id: Option<String>,
        description: Option<String>,
    }
}

request! {
    /// Sign (the hot path: short strings borrowed from the body).
    struct SignRequest<'a> {
        #[serde(borrow)]
        key_id: Option<Text<'a>>,
        message: Option<Blob>,
        #[serde(borrow)]
        message_type: Option<Text<'a>>,
        #[serde(borrow)]
        signing_algorithm: Option<Text<'a>>,
    }
}

request! {
    /// Verify.
    struct VerifyRequest<'a> {
        #[serde(borrow)]
        key_id: Option<Text<'a>>,
        message: Option<Blob>,
        #[serde(borrow)]
        message_type: Option<Text<'a>>,
        #[serde(borrow)]
        signing_algorithm: Option<Text<'a>>,
        signature: Option<Blob>,
    }
}

request! {
    /// DeriveSharedSecret.
    struct DeriveSharedSecretRequest {
        key_id: Option<String>,
        key_agreement_algorithm: Option<String>,
        public_key: Option<Blob>,
        recipient: Option<RecipientParam>,
    }
}

request! {
    /// GenerateMac and VerifyMac (the MAC is VerifyMac's).
    struct MacRequest {
        key_id: Option<String>,
        message: Option<Blob>,
        mac_algorithm: Option<String>,
        mac: Option<Blob>,
    }
}

request! {
    /// An operation this service does not have: only the common fields are read, so the
    /// answer is the same as for a known operation up to the dispatch.
    struct UnknownRequest {
    }
}

// The operations below check their own common fields (grant tokens where they take them,
// `DryRun` on the grant operations that have it); a body that does not parse is refused as
// `Invalid request: ...` whatever the fault ([`from_body_unclassified`]).

/// The `Constraints` parameter of CreateGrant.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub(super) struct ConstraintsParam {
    pub(super) encryption_context_subset: Option<BTreeMap<String, String>>,
    pub(super) encryption_context_equals: Option<BTreeMap<String, String>>,
}

/// The fields of the grant operations' requests.
#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub(super) struct GrantRequest {
    pub(super) key_id: Option<String>,
    pub(super) grantee_principal: Option<String>,
    pub(super) retiring_principal: Option<String>,
    pub(super) operations: Option<Vec<String>>,
    pub(super) constraints: Option<ConstraintsParam>,
    pub(super) grant_tokens: Option<Vec<String>>,
    pub(super) name: Option<String>,
    pub(super) grant_id: Option<String>,
    pub(super) grant_token: Option<String>,
    pub(super) limit: Option<i64>,
    pub(super) marker: Option<String>,
    pub(super) dry_run: Option<bool>,
}

/// The fields of the import operations' requests.
#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub(super) struct ImportRequest {
    pub(super) key_id: Option<String>,
    pub(super) wrapping_algorithm: Option<String>,
    pub(super) wrapping_key_spec: Option<String>,
    pub(super) import_token: Option<Blob>,
    pub(super) encrypted_key_material: Option<Blob>,
    pub(super) valid_to: Option<f64>,
    pub(super) expiration_model: Option<String>,
    pub(super) import_type: Option<String>,
}

/// The fields of ReplicateKey and UpdatePrimaryRegion.
#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub(super) struct RegionRequest {
    pub(super) key_id: Option<String>,
    pub(super) replica_region: Option<String>,
    pub(super) primary_region: Option<String>,
    pub(super) policy: Option<String>,
    pub(super) description: Option<String>,
    pub(super) tags: Option<Vec<TagParam>>,
    pub(super) bypass_policy_lockout_safety_check: Option<bool>,
}

/// The fields of ListKeyRotations.
#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub(super) struct ListKeyRotationsRequest {
    pub(super) key_id: Option<String>,
    pub(super) limit: Option<i64>,
    pub(super) marker: Option<String>,
}

/// The fields every operation accepts.
#[derive(Debug, Clone, Copy)]
pub(super) struct Common<'r> {
    /// `CustomKeyStoreId` was given.
    pub(super) custom_key_store: bool,
    /// `GrantTokens`.
    pub(super) grant_tokens: Option<&'r [String]>,
    /// `DryRun`.
    pub(super) dry_run: Option<bool>,
}

/// Defines [`Request`]: one variant per operation, its wire name and its struct. The `shared`
/// operations leave their common fields to `Service::handle` ([`Request::common`]); the
/// `own` ones check them themselves.
macro_rules! operations {
    (
        shared { $($(#[$vm:meta])* $variant:ident($ty:ty) = $name:literal,)* }
        own { $($(#[$ovm:meta])* $ovariant:ident($oty:ty) = $oname:literal,)* }
    ) => {
        /// A parsed request of one operation.
        #[derive(Debug)]
        pub(super) enum Request<'a> {
            $($(#[$vm])* $variant($ty),)*
            $($(#[$ovm])* $ovariant($oty),)*
            /// An operation this service does not have.
            Unknown(UnknownRequest),
        }

        impl<'a> Request<'a> {
            /// Parses `body` as a request of operation `op` (the part of `X-Amz-Target` after
            /// `TrentService.`).
            pub(super) fn parse(op: &str, body: &'a [u8]) -> KmsResult<Self> {
                Ok(match op {
                    $($name => Request::$variant(from_body(body)?),)*
                    $($oname => {
                        refuse_dry_run(op, body)?;
                        Request::$ovariant(from_body_unclassified(body)?)
                    })*
                    _ => Request::Unknown(from_body(body)?),
                })
            }

            /// The fields every operation accepts, for the operations that leave them to
            /// `Service::handle`; `None` for those that check their own.
            pub(super) fn common(&self) -> Option<Common<'_>> {
                match self {
                    $(Request::$variant(r) => Some(Common {
                        custom_key_store: r.custom_key_store_id.is_some(),
                        grant_tokens: r.grant_tokens.as_deref(),
                        dry_run: r.dry_run,
                    }),)*
                    $(Request::$ovariant(_) => None,)*
                    Request::Unknown(r) => Some(Common {
                        custom_key_store: r.custom_key_store_id.is_some(),
                        grant_tokens: r.grant_tokens.as_deref(),
                        dry_run: r.dry_run,
                    }),
                }
            }
        }
    };
}

operations! {
    shared {
        Decrypt(DecryptRequest) = "Decrypt",
        Encrypt(EncryptRequest) = "Encrypt",
        GenerateDataKey(GenerateDataKeyRequest) = "GenerateDataKey",
        GenerateDataKeyWithoutPlaintext(GenerateDataKeyRequest) = "GenerateDataKeyWithoutPlaintext",
        GenerateDataKeyPair(GenerateDataKeyPairRequest) = "GenerateDataKeyPair",
        GenerateDataKeyPairWithoutPlaintext(GenerateDataKeyPairRequest) =
            "GenerateDataKeyPairWithoutPlaintext",
        GenerateRandom(GenerateRandomRequest) = "GenerateRandom",
        ReEncrypt(ReEncryptRequest) = "ReEncrypt",
        CreateKey(CreateKeyRequest) = "CreateKey",
        DescribeKey(KeyRequest) = "DescribeKey",
        ListKeys(ListKeysRequest) = "ListKeys",
        EnableKey(KeyRequest) = "EnableKey",
        DisableKey(KeyRequest) = "DisableKey",
        ScheduleKeyDeletion(ScheduleKeyDeletionRequest) = "ScheduleKeyDeletion",
        CancelKeyDeletion(KeyRequest) = "CancelKeyDeletion",
        CreateAlias(AliasRequest) = "CreateAlias",
        UpdateAlias(AliasRequest) = "UpdateAlias",
        DeleteAlias(AliasRequest) = "DeleteAlias",
        ListAliases(ListAliasesRequest) = "ListAliases",
        GetKeyPolicy(KeyPolicyRequest) = "GetKeyPolicy",
        PutKeyPolicy(KeyPolicyRequest) = "PutKeyPolicy",
        ListKeyPolicies(ListKeyPoliciesRequest) = "ListKeyPolicies",
        TagResource(TagResourceRequest) = "TagResource",
        UntagResource(UntagResourceRequest) = "UntagResource",
        ListResourceTags(ListResourceTagsRequest) = "ListResourceTags",
        EnableKeyRotation(KeyRotationRequest) = "EnableKeyRotation",
        DisableKeyRotation(KeyRotationRequest) = "DisableKeyRotation",
        GetKeyRotationStatus(KeyRequest) = "GetKeyRotationStatus",
        RotateKeyOnDemand(KeyRequest) = "RotateKeyOnDemand",
        UpdateKeyDescription(UpdateKeyDescriptionRequest) = "UpdateKeyDescription",
        Sign(SignRequest<'a>) = "Sign",
        Verify(VerifyRequest<'a>) = "Verify",
        GetPublicKey(KeyRequest) = "GetPublicKey",
        DeriveSharedSecret(DeriveSharedSecretRequest) = "DeriveSharedSecret",
        GenerateMac(MacRequest) = "GenerateMac",
        VerifyMac(MacRequest) = "VerifyMac",
    }
    own {
        CreateGrant(GrantRequest) = "CreateGrant",
        ListGrants(GrantRequest) = "ListGrants",
        ListRetirableGrants(GrantRequest) = "ListRetirableGrants",
        RetireGrant(GrantRequest) = "RetireGrant",
        RevokeGrant(GrantRequest) = "RevokeGrant",
        GetParametersForImport(ImportRequest) = "GetParametersForImport",
        ImportKeyMaterial(ImportRequest) = "ImportKeyMaterial",
        DeleteImportedKeyMaterial(ImportRequest) = "DeleteImportedKeyMaterial",
        ReplicateKey(RegionRequest) = "ReplicateKey",
        UpdatePrimaryRegion(RegionRequest) = "UpdatePrimaryRegion",
        ListKeyRotations(ListKeyRotationsRequest) = "ListKeyRotations",
    }
}

/// Deserializes one request struct; an empty body is the empty request.
fn from_body<'a, T: Deserialize<'a> + Default>(body: &'a [u8]) -> KmsResult<T> {
    if body.is_empty() {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| {
        let msg = match e.classify() {
            serde_json::error::Category::Data => format!("Invalid request: {e}"),
            _ => format!("Request body is not valid JSON: {e}"),
        };
        KmsError::Serialization(msg)
    })
}

/// Deserializes the request of an operation that checks its own common fields: any failure is
/// `Invalid request: ...`; an empty body is the empty request.
fn from_body_unclassified<'a, T: Deserialize<'a> + Default>(body: &'a [u8]) -> KmsResult<T> {
    if body.is_empty() {
        return Ok(T::default());
    }
    serde_json::from_slice(body)
        .map_err(|e| KmsError::Serialization(format!("Invalid request: {e}")))
}

/// Refuses `DryRun: true` on an operation that checks its own common fields and has no
/// `DryRun` (the grant operations that have it check it themselves), before the body is
/// parsed, as for the other operations: rather than do for real what the caller asked only to
/// test.
fn refuse_dry_run(op: &str, body: &[u8]) -> KmsResult<()> {
    #[derive(Deserialize)]
    struct DryRun {
        #[serde(rename = "DryRun")]
        dry_run: Option<bool>,
    }
    if super::ops::DRY_RUN_OPERATIONS.contains(&op) {
        return Ok(());
    }
    if let Ok(DryRun {
        dry_run: Some(true),
    }) = serde_json::from_slice(body)
    {
        return Err(KmsError::UnsupportedOperation(format!(
            "DryRun is not a parameter of {op}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_operation_reads_its_own_fields() {
        let body =
            br#"{"KeyId":"k","Message":"AA==","SigningAlgorithm":"ECDSA_SHA_256","Limit":"x"}"#;
        let Request::Sign(s) = Request::parse("Sign", body).unwrap() else {
            panic!("not Sign");
        };
        assert_eq!(s.key_id.as_deref(), Some("k"));
        assert!(matches!(s.key_id, Some(Text(Cow::Borrowed(_)))));
        assert_eq!(s.message.unwrap().0.as_slice(), &[0u8]);
        // An escaped string is decoded into an owned one.
        let Request::Sign(s) = Request::parse("Sign", br#"{"KeyId":"alias\/a"}"#).unwrap() else {
            panic!("not Sign");
        };
        assert_eq!(s.key_id.as_deref(), Some("alias/a"));
        // Sign ignores `Limit` (not one of its fields); ListKeys refuses its type.
        assert!(matches!(
            Request::parse("ListKeys", body),
            Err(KmsError::Serialization(_))
        ));
        assert!(matches!(
            Request::parse("Nope", b""),
            Ok(Request::Unknown(_))
        ));
        assert!(matches!(
            Request::parse("Sign", b"{"),
            Err(KmsError::Serialization(m)) if m.starts_with("Request body is not valid JSON")
        ));
        let r = Request::parse("Encrypt", br#"{"DryRun":true,"GrantTokens":["t"]}"#).unwrap();
        let c = r.common().unwrap();
        assert_eq!(c.dry_run, Some(true));
        assert_eq!(c.grant_tokens.map(<[String]>::len), Some(1));
        assert!(!c.custom_key_store);
    }

    #[test]
    fn operations_with_their_own_checks_parse_apart() {
        let body = br#"{"KeyId":"k","GranteePrincipal":"p","DryRun":true,"GrantTokens":["t"]}"#;
        let r = Request::parse("CreateGrant", body).unwrap();
        assert!(r.common().is_none());
        let Request::CreateGrant(g) = r else {
            panic!("not CreateGrant");
        };
        assert_eq!(g.dry_run, Some(true));
        assert_eq!(g.grant_tokens.as_deref().map(<[String]>::len), Some(1));
        // DryRun is refused before the body is read on an operation that lacks it.
        assert!(matches!(
            Request::parse("ReplicateKey", br#"{"DryRun":true,"KeyId":5}"#),
            Err(KmsError::UnsupportedOperation(m)) if m == "DryRun is not a parameter of ReplicateKey"
        ));
        // Any body fault is `Invalid request: ...`, a syntax error included.
        assert!(matches!(
            Request::parse("ListKeyRotations", b"{"),
            Err(KmsError::Serialization(m)) if m.starts_with("Invalid request: ")
        ));
        assert!(matches!(
            Request::parse("ImportKeyMaterial", b""),
            Ok(Request::ImportKeyMaterial(_))
        ));
    }
}
