//! Grants: CreateGrant, ListGrants, ListRetirableGrants, RetireGrant, RevokeGrant, grant tokens,
//! and grants in authorization.
//!
//! A grant lives in its key's record ([`KeyRecord::grants`]), so it is written in the same
//! durable transaction as the key, read from the same in-memory entry, and deleted with the key.
//! The store is consistent, so a grant authorizes its grantee from the moment CreateGrant
//! returns; a grant token is therefore "honoured immediately" by construction, and a request's
//! `GrantTokens` are only checked to be tokens this service issued (a malformed or forged token
//! is refused with `InvalidGrantTokenException`).
//!
//! A grant token is `base64url(version ‖ key id ‖ grant id ‖ nonce ‖ tag)`, the tag an
//! HMAC-SHA256 (truncated to 16 bytes) under a random per-grant token key, so each CreateGrant
//! answers a fresh token that cannot be made from what ListGrants shows. A token confers nothing
//! by itself: RetireGrant still requires the caller to be allowed to retire the grant.
//!
//! Authorization (`Service::permits`): an explicit `Deny` of the key policy refuses; an
//! `Allow` allows; otherwise a grant on the key allows when its grantee covers the caller, its
//! operations include the action, and its constraints hold for the request's encryption context
//! (`EncryptionContextEquals`: the same pairs exactly; `EncryptionContextSubset`: the request's
//! context includes every pair).
//!
//! [`KeyRecord::grants`]: crate::store::KeyRecord::grants

use super::scope;
use crate::blob::EncryptionContext;
use crate::error::{KmsError, KmsResult};
use crate::policy::{principal_covers, Decision, RequestContext};
use crate::service::authz::Resolved;
use crate::service::request::GrantRequest;
use crate::service::validate::{check_len, check_range, required};
use crate::service::{Service, DRY_RUN_MESSAGE};
use crate::store::{format_key_id, now, parse_key_id, KeyState};
use base64::Engine as _;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;

pub use crate::store::record::grant::{GrantConstraints, GrantRecord};

/// Most grants on one key (AWS allows 50,000; grants live in the key's record here).
pub const MAX_GRANTS_PER_KEY: usize = 1000;
/// Most grant tokens in one request (AWS: 10).
pub const MAX_GRANT_TOKENS: usize = 10;
/// Longest grant token accepted (AWS: 8192).
pub const MAX_GRANT_TOKEN_LEN: usize = 8192;
/// Longest principal ARN in a grant (AWS: 256).
pub const MAX_PRINCIPAL_LEN: usize = 256;
/// Longest grant name (AWS: 256).
pub const MAX_GRANT_NAME_LEN: usize = 256;
/// Most pairs in a grant constraint.
pub const MAX_CONSTRAINT_PAIRS: usize = 64;

/// Every grant operation AWS defines.
pub const GRANT_OPERATIONS: &[&str] = &[
    "Decrypt",
    "Encrypt",
    "GenerateDataKey",
    "GenerateDataKeyWithoutPlaintext",
    "ReEncryptFrom",
    "ReEncryptTo",
    "Sign",
    "Verify",
    "GetPublicKey",
    "CreateGrant",
    "RetireGrant",
    "DescribeKey",
    "GenerateDataKeyPair",
    "GenerateDataKeyPairWithoutPlaintext",
    "GenerateMac",
    "VerifyMac",
    "DeriveSharedSecret",
];

/// The grant operations a grant with an encryption-context constraint may include.
const CONSTRAINABLE: &[&str] = &[
    "Decrypt",
    "Encrypt",
    "GenerateDataKey",
    "GenerateDataKeyWithoutPlaintext",
    "ReEncryptFrom",
    "ReEncryptTo",
    "CreateGrant",
    "RetireGrant",
    "GenerateDataKeyPair",
    "GenerateDataKeyPairWithoutPlaintext",
];

const TOKEN_VERSION: u8 = 1;
const TOKEN_NONCE_LEN: usize = 16;
const TOKEN_TAG_LEN: usize = 16;
const TOKEN_LEN: usize = 1 + 16 + 32 + TOKEN_NONCE_LEN + TOKEN_TAG_LEN;

impl GrantConstraints {
    fn to_json(&self) -> Value {
        let mut c = json!({});
        if let Some(e) = &self.equals {
            c["EncryptionContextEquals"] = json!(e);
        }
        if let Some(s) = &self.subset {
            c["EncryptionContextSubset"] = json!(s);
        }
        c
    }
}

impl GrantRecord {
    fn tag(&self, key_id: &[u8; 16], nonce: &[u8]) -> KmsResult<[u8; TOKEN_TAG_LEN]> {
        let k =
            hex::decode(&self.token_key).map_err(|e| KmsError::internal("grant token key", e))?;
        let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &k);
        let mut c = aws_lc_rs::hmac::Context::with_key(&key);
        c.update(b"cloister-kms/grant-token/v1");
        c.update(key_id);
        c.update(self.id.as_bytes());
        c.update(nonce);
        let mut out = [0u8; TOKEN_TAG_LEN];
        out.copy_from_slice(&c.sign().as_ref()[..TOKEN_TAG_LEN]);
        Ok(out)
    }

    /// A fresh token of this grant on key `key_id`.
    fn token(&self, key_id: &[u8; 16]) -> KmsResult<String> {
        let id = hex::decode(&self.id).map_err(|e| KmsError::internal("grant id", e))?;
        let mut nonce = [0u8; TOKEN_NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).map_err(|e| KmsError::internal("random", e))?;
        let mut t = Vec::with_capacity(TOKEN_LEN);
        t.push(TOKEN_VERSION);
        t.extend_from_slice(key_id);
        t.extend_from_slice(&id);
        t.extend_from_slice(&nonce);
        t.extend_from_slice(&self.tag(key_id, &nonce)?);
        Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(t))
    }

    fn to_json(&self, key_arn: &str, account: &str) -> Value {
        let mut g = json!({
            "KeyId": key_arn,
            "GrantId": self.id,
            "CreationDate": self.created,
            "GranteePrincipal": self.grantee,
            "IssuingAccount": format!("arn:aws:iam::{account}:root"),
            "Operations": self.operations,
        });
        if let Some(n) = &self.name {
            g["Name"] = json!(n);
        }
        if let Some(r) = &self.retiring {
            g["RetiringPrincipal"] = json!(r);
        }
        if let Some(c) = &self.constraints {
            g["Constraints"] = c.to_json();
        }
        g
    }
}

/// A decoded (not yet authenticated) grant token.
struct Token {
    key_id: [u8; 16],
    grant_id: String,
    nonce: [u8; TOKEN_NONCE_LEN],
    tag: [u8; TOKEN_TAG_LEN],
}

fn invalid_token() -> KmsError {
    KmsError::InvalidGrantToken("Invalid grant token".into())
}

fn decode_token(token: &str) -> KmsResult<Token> {
    if token.is_empty() || token.len() > MAX_GRANT_TOKEN_LEN {
        return Err(invalid_token());
    }
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token.as_bytes())
        .map_err(|_| invalid_token())?;
    if raw.len() != TOKEN_LEN || raw[0] != TOKEN_VERSION {
        return Err(invalid_token());
    }
    let mut key_id = [0u8; 16];
    key_id.copy_from_slice(&raw[1..17]);
    let grant_id = hex::encode(&raw[17..49]);
    let mut nonce = [0u8; TOKEN_NONCE_LEN];
    nonce.copy_from_slice(&raw[49..49 + TOKEN_NONCE_LEN]);
    let mut tag = [0u8; TOKEN_TAG_LEN];
    tag.copy_from_slice(&raw[49 + TOKEN_NONCE_LEN..]);
    Ok(Token {
        key_id,
        grant_id,
        nonce,
        tag,
    })
}

fn check_principal(field: &str, p: &str) -> KmsResult<()> {
    check_len(field, p.len(), 1, MAX_PRINCIPAL_LEN)?;
    let ok = p.starts_with("arn:aws:") || (p.len() == 12 && p.bytes().all(|b| b.is_ascii_digit()));
    if !ok || p.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err(KmsError::Validation(format!(
            "1 validation error detected: Value '{p}' at '{field}' failed to satisfy constraint: Member must be a principal ARN or account id"
        )));
    }
    Ok(())
}

fn check_grant_id(id: &str) -> KmsResult<()> {
    check_len("grantId", id.len(), 1, 128)?;
    if id.len() != 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(KmsError::InvalidGrantId(format!("Invalid grant id {id}")));
    }
    Ok(())
}

fn check_context_map(field: &str, m: &BTreeMap<String, String>) -> KmsResult<()> {
    if m.len() > MAX_CONSTRAINT_PAIRS {
        return Err(KmsError::Validation(format!(
            "{field} has more than {MAX_CONSTRAINT_PAIRS} pairs"
        )));
    }
    for (k, v) in m {
        check_len(field, k.len(), 1, 2048)?;
        check_len(field, v.len(), 0, 2048)?;
    }
    Ok(())
}

fn grant_not_found(id: &str) -> KmsError {
    KmsError::NotFound(format!("Grant ID {id} not found"))
}

impl Service {
    /// Authorization of `ctx` on `key`: the key policy, then (when no statement matched) the
    /// key's grants. Adds the condition values of the request scope and of the key first.
    pub(in crate::service) fn permits(
        &self,
        key: &Resolved,
        ctx: &mut RequestContext<'_>,
        context: Option<&EncryptionContext>,
    ) -> bool {
        // Condition values are only looked at by conditions: a policy without any (the default
        // policy) is evaluated without computing them.
        if key.entry.policy.has_conditions() {
            scope::extend(ctx);
            self.add_key_values(key, ctx);
        }
        match key.entry.policy.decision(ctx) {
            Decision::Allow => true,
            Decision::Deny => false,
            Decision::NoMatch => key
                .entry
                .record
                .grants
                .iter()
                .any(|g| g.allows(ctx.principal, ctx.account, ctx.action, context)),
        }
    }

    /// Key-dependent condition values, computed only when the policy tests them.
    fn add_key_values(&self, key: &Resolved, ctx: &mut RequestContext<'_>) {
        let policy = &key.entry.policy;
        let wants = [
            "kms:keyspec",
            "kms:keyusage",
            "kms:keyorigin",
            "kms:multiregion",
        ];
        if wants.iter().any(|k| policy.mentions(k)) {
            let m = self.metadata(&key.entry);
            for (cond, field) in [
                ("kms:keyspec", "KeySpec"),
                ("kms:keyusage", "KeyUsage"),
                ("kms:keyorigin", "Origin"),
                ("kms:multiregion", "MultiRegion"),
            ] {
                match &m[field] {
                    Value::String(s) => ctx.add(cond, s.as_str()),
                    Value::Bool(b) => ctx.add(cond, b.to_string()),
                    _ => {}
                }
            }
        }
        if policy.mentions("kms:resourcealiases") {
            if let Ok(aliases) = self.aliases_here() {
                for (name, a) in aliases {
                    if a.target == key.entry.record.id {
                        ctx.add("kms:resourcealiases", name);
                    }
                }
            }
        }
    }

    /// Checks a request's `GrantTokens`: at most [`MAX_GRANT_TOKENS`], each one this service
    /// issued (authentic). A token of a grant since retired is accepted and confers nothing.
    pub(in crate::service) fn check_grant_tokens(
        &self,
        tokens: Option<&[String]>,
    ) -> KmsResult<()> {
        let Some(tokens) = tokens else { return Ok(()) };
        if tokens.len() > MAX_GRANT_TOKENS {
            return Err(KmsError::Validation(format!(
                "1 validation error detected: Value at 'grantTokens' failed to satisfy constraint: Member must have length less than or equal to {MAX_GRANT_TOKENS}"
            )));
        }
        for t in tokens {
            let tok = decode_token(t)?;
            if let Some(entry) = self.store.key(&tok.key_id)? {
                // The grants of every Region's key of a multi-Region key.
                let mut views =
                    std::iter::once(&entry).chain(entry.replicas.iter().map(|(_, v)| v));
                if let Some(g) =
                    views.find_map(|e| e.record.grants.iter().find(|g| g.id == tok.grant_id))
                {
                    authentic(g, &tok)?;
                }
            }
        }
        Ok(())
    }

    #[allow(
        clippy::too_many_lines,
        reason = "every CreateGrant check in AWS's order, then the write"
    )]
    pub(in crate::service) fn create_grant(
        &self,
        principal: &str,
        req: GrantRequest,
    ) -> KmsResult<Value> {
        let key = self.resolve(&required(req.key_id, "keyId")?)?;
        let grantee = required(req.grantee_principal, "granteePrincipal")?;
        check_principal("granteePrincipal", &grantee)?;
        if let Some(r) = &req.retiring_principal {
            check_principal("retiringPrincipal", r)?;
        }
        let mut operations = required(req.operations, "operations")?;
        if operations.is_empty() || operations.len() > GRANT_OPERATIONS.len() {
            return Err(KmsError::Validation(
                "1 validation error detected: Value at 'operations' failed to satisfy constraint: Member must name 1 to 17 grant operations".into(),
            ));
        }
        for op in &operations {
            if !GRANT_OPERATIONS.contains(&op.as_str()) {
                return Err(KmsError::Validation(format!(
                    "1 validation error detected: Value '[{op}]' at 'operations' failed to satisfy constraint: Member must satisfy constraint: [Member must satisfy enum value set: [{}]]",
                    GRANT_OPERATIONS.join(", ")
                )));
            }
        }
        operations.dedup();
        if let Some(n) = &req.name {
            check_len("name", n.len(), 1, MAX_GRANT_NAME_LEN)?;
            if !n
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'/' | b'_' | b'-'))
            {
                return Err(KmsError::Validation(format!(
                    "1 validation error detected: Value '{n}' at 'name' failed to satisfy constraint: Member must satisfy regular expression pattern: ^[a-zA-Z0-9:/_-]+$"
                )));
            }
        }
        let constraints = match req.constraints {
            None => None,
            Some(c) => {
                for (f, m) in [
                    (
                        "constraints.encryptionContextEquals",
                        &c.encryption_context_equals,
                    ),
                    (
                        "constraints.encryptionContextSubset",
                        &c.encryption_context_subset,
                    ),
                ] {
                    if let Some(m) = m {
                        check_context_map(f, m)?;
                    }
                }
                if let Some(op) = operations
                    .iter()
                    .find(|o| !CONSTRAINABLE.contains(&o.as_str()))
                {
                    return Err(KmsError::Validation(format!(
                        "Grant constraints are not supported for the {op} operation"
                    )));
                }
                let c = GrantConstraints {
                    equals: c.encryption_context_equals,
                    subset: c.encryption_context_subset,
                };
                (c.equals.is_some() || c.subset.is_some()).then_some(c)
            }
        };
        self.check_grant_tokens(req.grant_tokens.as_deref())?;
        for op in &operations {
            scope::add_value("kms:GrantOperations", op.as_str());
        }
        scope::add_value("kms:GranteePrincipal", grantee.as_str());
        if let Some(r) = &req.retiring_principal {
            scope::add_value("kms:RetiringPrincipal", r.as_str());
        }
        if let Some(c) = &constraints {
            if c.equals.is_some() {
                scope::add_value("kms:GrantConstraintType", "EncryptionContextEquals");
            }
            if c.subset.is_some() {
                scope::add_value("kms:GrantConstraintType", "EncryptionContextSubset");
            }
        }
        scope::add_value("kms:GrantIsForAWSResource", "false");
        self.authorize(&key, principal, "kms:CreateGrant", None, None)?;
        self.check_grant_narrowing(&key, principal, &operations, constraints.as_ref())?;
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
        if req.dry_run == Some(true) {
            return Err(KmsError::DryRunOperation(DRY_RUN_MESSAGE.into()));
        }
        let mut token_key = [0u8; 32];
        aws_lc_rs::rand::fill(&mut token_key).map_err(|e| KmsError::internal("random", e))?;
        let mut id = [0u8; 32];
        aws_lc_rs::rand::fill(&mut id).map_err(|e| KmsError::internal("random", e))?;
        let fresh = GrantRecord {
            id: hex::encode(id),
            name: req.name,
            created: now(),
            grantee,
            retiring: req.retiring_principal,
            operations,
            constraints,
            token_key: hex::encode(token_key),
        };
        let (_, grant) = self.update_regional(&key, |r| {
            // Name idempotency: a retried CreateGrant with the same name and parameters answers
            // the grant it made before (with a fresh token).
            if fresh.name.is_some() {
                if let Some(g) = r.grants.iter().find(|g| {
                    g.name == fresh.name
                        && g.grantee == fresh.grantee
                        && g.retiring == fresh.retiring
                        && g.operations == fresh.operations
                        && g.constraints == fresh.constraints
                }) {
                    return Ok(g.clone());
                }
            }
            if r.grants.len() >= MAX_GRANTS_PER_KEY {
                return Err(KmsError::LimitExceeded(format!(
                    "A key can have at most {MAX_GRANTS_PER_KEY} grants"
                )));
            }
            r.grants.push(fresh.clone());
            Ok(fresh)
        })?;
        Ok(json!({ "GrantId": grant.id, "GrantToken": grant.token(&key.id)? }))
    }

    /// A principal allowed to create grants only by a grant may create grants for a subset of
    /// that grant's operations, carrying its constraints.
    fn check_grant_narrowing(
        &self,
        key: &Resolved,
        principal: &str,
        operations: &[String],
        constraints: Option<&GrantConstraints>,
    ) -> KmsResult<()> {
        let mut ctx = self.request_context(principal, "kms:CreateGrant", &key.arn);
        scope::extend(&mut ctx);
        self.add_key_values(key, &mut ctx);
        if key.entry.policy.decision(&ctx) == Decision::Allow {
            return Ok(());
        }
        let ok = key.entry.record.grants.iter().any(|g| {
            principal_covers(&g.grantee, principal, &self.account)
                && g.operations.iter().any(|o| o == "CreateGrant")
                && operations.iter().all(|o| g.operations.contains(o))
                && g.constraints
                    .as_ref()
                    .is_none_or(|c| constraints.is_some_and(|n| n == c))
        });
        if ok {
            Ok(())
        } else {
            Err(KmsError::AccessDenied(format!(
                "User: {principal} is not authorized to create a grant with more permissions than its own on {}",
                key.arn
            )))
        }
    }

    pub(in crate::service) fn list_grants(
        &self,
        principal: &str,
        req: GrantRequest,
    ) -> KmsResult<Value> {
        let key = self.resolve(&required(req.key_id, "keyId")?)?;
        let limit = match req.limit {
            Some(l) => check_range("limit", l, 1, 100)?,
            None => 50,
        };
        if let Some(id) = &req.grant_id {
            check_grant_id(id)?;
        }
        if let Some(p) = &req.grantee_principal {
            check_principal("granteePrincipal", p)?;
        }
        self.check_grant_tokens(req.grant_tokens.as_deref())?;
        self.authorize(&key, principal, "kms:ListGrants", None, None)?;
        let grants: Vec<&super::grants::GrantRecord> = key
            .entry
            .record
            .grants
            .iter()
            .filter(|g| req.grant_id.as_ref().is_none_or(|id| &g.id == id))
            .filter(|g| {
                req.grantee_principal
                    .as_ref()
                    .is_none_or(|p| &g.grantee == p)
            })
            .collect();
        let page = paginate(&grants, req.marker.as_deref(), limit, |g| g.id.as_str())?;
        let list: Vec<Value> = page
            .items
            .iter()
            .map(|g| g.to_json(&key.arn, &self.account))
            .collect();
        Ok(page.response("Grants", list))
    }

    pub(in crate::service) fn list_retirable_grants(
        &self,
        principal: &str,
        req: GrantRequest,
    ) -> KmsResult<Value> {
        let retiring = required(req.retiring_principal, "retiringPrincipal")?;
        check_principal("retiringPrincipal", &retiring)?;
        let limit = match req.limit {
            Some(l) => check_range("limit", l, 1, 100)?,
            None => 50,
        };
        // An IAM permission in AWS; here any principal of the account may list.
        if !principal_covers(
            &format!("arn:aws:iam::{}:root", self.account),
            principal,
            &self.account,
        ) {
            return Err(KmsError::AccessDenied(format!(
                "User: {principal} is not authorized to perform: kms:ListRetirableGrants"
            )));
        }
        let mut all: Vec<(String, super::grants::GrantRecord)> = Vec::new();
        let mut after = None;
        loop {
            let (keys, more) = self.store.list_keys(after, 256)?;
            // Grants are per Region: those of the keys in the request's Region.
            for e in keys.iter().filter(|e| self.in_request_region(&e.record)) {
                let e = self.regional(Arc::clone(e));
                for g in &e.record.grants {
                    if g.retiring.as_deref() == Some(retiring.as_str()) {
                        all.push((self.key_arn(&e.record.id), g.clone()));
                    }
                }
            }
            match keys.last() {
                Some(last) if more => after = parse_key_id(&last.record.id),
                _ => break,
            }
        }
        let page = paginate(&all, req.marker.as_deref(), limit, |(_, g)| g.id.as_str())?;
        let list: Vec<Value> = page
            .items
            .iter()
            .map(|(arn, g)| g.to_json(arn, &self.account))
            .collect();
        Ok(page.response("Grants", list))
    }

    pub(in crate::service) fn retire_grant(
        &self,
        principal: &str,
        req: GrantRequest,
    ) -> KmsResult<Value> {
        if let Some(t) = &req.grant_token {
            check_len("grantToken", t.len(), 1, MAX_GRANT_TOKEN_LEN)?;
        }
        self.check_grant_tokens(req.grant_tokens.as_deref())?;
        let (key, grant_id) = match (&req.grant_token, &req.key_id, &req.grant_id) {
            (Some(t), _, _) => {
                let tok = decode_token(t)?;
                let key = self
                    .resolve(&format_key_id(&tok.key_id))
                    .map_err(|_| invalid_token())?;
                let g = key
                    .entry
                    .record
                    .grants
                    .iter()
                    .find(|g| g.id == tok.grant_id)
                    .ok_or_else(invalid_token)?;
                authentic(g, &tok)?;
                if let Some(id) = &req.grant_id {
                    if id != &g.id {
                        return Err(KmsError::InvalidGrantId(
                            "The grant id does not match the grant token".into(),
                        ));
                    }
                }
                let id = g.id.clone();
                (key, id)
            }
            (None, Some(k), Some(id)) => {
                check_grant_id(id)?;
                (self.resolve(k)?, id.clone())
            }
            _ => {
                return Err(KmsError::Validation(
                    "Either GrantToken, or KeyId and GrantId, must be given".into(),
                ))
            }
        };
        let grant = key
            .entry
            .record
            .grants
            .iter()
            .find(|g| g.id == grant_id)
            .ok_or_else(|| grant_not_found(&grant_id))?;
        // AWS: the retiring principal, the grantee when the grant includes RetireGrant, and
        // the account that owns the key.
        let root = format!("arn:aws:iam::{}:root", self.account);
        let may = grant
            .retiring
            .as_deref()
            .is_some_and(|r| principal_covers(r, principal, &self.account))
            || (grant.operations.iter().any(|o| o == "RetireGrant")
                && principal_covers(&grant.grantee, principal, &self.account))
            || principal == root;
        if !may {
            return Err(KmsError::AccessDenied(format!(
                "User: {principal} is not authorized to retire grant {grant_id}"
            )));
        }
        if req.dry_run == Some(true) {
            return Err(KmsError::DryRunOperation(DRY_RUN_MESSAGE.into()));
        }
        self.remove_grant(&key, &grant_id)?;
        Ok(json!({}))
    }

    pub(in crate::service) fn revoke_grant(
        &self,
        principal: &str,
        req: GrantRequest,
    ) -> KmsResult<Value> {
        let key = self.resolve(&required(req.key_id, "keyId")?)?;
        let grant_id = required(req.grant_id, "grantId")?;
        check_grant_id(&grant_id)?;
        self.authorize(&key, principal, "kms:RevokeGrant", None, None)?;
        if !key.entry.record.grants.iter().any(|g| g.id == grant_id) {
            return Err(grant_not_found(&grant_id));
        }
        if req.dry_run == Some(true) {
            return Err(KmsError::DryRunOperation(DRY_RUN_MESSAGE.into()));
        }
        self.remove_grant(&key, &grant_id)?;
        Ok(json!({}))
    }

    fn remove_grant(&self, key: &Resolved, grant_id: &str) -> KmsResult<()> {
        self.update_regional(key, |r| {
            let before = r.grants.len();
            r.grants.retain(|g| g.id != grant_id);
            if r.grants.len() == before {
                return Err(grant_not_found(grant_id));
            }
            Ok(())
        })?;
        Ok(())
    }
}

fn authentic(g: &GrantRecord, tok: &Token) -> KmsResult<()> {
    let want = g.tag(&tok.key_id, &tok.nonce)?;
    aws_lc_rs::constant_time::verify_slices_are_equal(&want, &tok.tag).map_err(|_| invalid_token())
}

/// One page of a list, cut after the item whose id is the marker.
struct Page<'a, T> {
    items: &'a [T],
    next: Option<String>,
}

impl<T> Page<'_, T> {
    fn response(&self, field: &str, list: Vec<Value>) -> Value {
        let mut out = json!({ field: list, "Truncated": self.next.is_some() });
        if let Some(n) = &self.next {
            out["NextMarker"] = json!(n);
        }
        out
    }
}

fn paginate<'a, T>(
    all: &'a [T],
    marker: Option<&str>,
    limit: usize,
    id: impl Fn(&T) -> &str,
) -> KmsResult<Page<'a, T>> {
    let start = match marker {
        Some(m) => {
            check_len("marker", m.len(), 1, 1024)?;
            all.iter()
                .position(|x| id(x) == m)
                .map(|i| i + 1)
                .ok_or_else(|| KmsError::InvalidMarker(format!("Invalid marker {m}")))?
        }
        None => 0,
    };
    let end = (start + limit).min(all.len());
    let items = &all[start..end];
    let next = (end < all.len())
        .then(|| items.last().map(|x| id(x).to_string()))
        .flatten();
    Ok(Page { items, next })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(ops: &[&str], c: Option<GrantConstraints>) -> GrantRecord {
        GrantRecord {
            id: "ab".repeat(32),
            name: None,
            created: 0.0,
            grantee: "arn:aws:iam::111122223333:user/app".into(),
            retiring: None,
            operations: ops.iter().map(|s| s.to_string()).collect(),
            constraints: c,
            token_key: "00".repeat(32),
        }
    }

    fn ec(pairs: &[(&str, &str)]) -> EncryptionContext {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn grant_allows_its_grantee_operations_and_constraints() {
        let acct = "111122223333";
        let app = "arn:aws:iam::111122223333:user/app";
        let g = grant(&["Decrypt"], None);
        assert!(g.allows(app, acct, "kms:Decrypt", None));
        assert!(!g.allows(app, acct, "kms:Encrypt", None));
        assert!(!g.allows(
            "arn:aws:iam::111122223333:user/other",
            acct,
            "kms:Decrypt",
            None
        ));

        let eq = grant(
            &["Decrypt"],
            Some(GrantConstraints {
                equals: Some(ec(&[("a", "1")])),
                subset: None,
            }),
        );
        assert!(eq.allows(app, acct, "kms:Decrypt", Some(&ec(&[("a", "1")]))));
        assert!(!eq.allows(
            app,
            acct,
            "kms:Decrypt",
            Some(&ec(&[("a", "1"), ("b", "2")]))
        ));
        assert!(!eq.allows(app, acct, "kms:Decrypt", None));
        let sub = grant(
            &["Decrypt"],
            Some(GrantConstraints {
                equals: None,
                subset: Some(ec(&[("a", "1")])),
            }),
        );
        assert!(sub.allows(
            app,
            acct,
            "kms:Decrypt",
            Some(&ec(&[("a", "1"), ("b", "2")]))
        ));
        assert!(!sub.allows(app, acct, "kms:Decrypt", Some(&ec(&[("a", "2")]))));
        assert!(!sub.allows(app, acct, "kms:Decrypt", None));
    }

    #[test]
    fn tokens_are_authenticated() {
        let g = grant(&["Decrypt"], None);
        let key = [7u8; 16];
        let t = g.token(&key).unwrap();
        let tok = decode_token(&t).unwrap();
        assert_eq!(tok.grant_id, g.id);
        assert!(authentic(&g, &tok).is_ok());
        // Another token of the same grant differs, and a changed byte is refused.
        assert_ne!(g.token(&key).unwrap(), t);
        let mut raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&t)
            .unwrap();
        raw[60] ^= 1;
        let forged = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
        let tok = decode_token(&forged).unwrap();
        assert!(matches!(
            authentic(&g, &tok),
            Err(KmsError::InvalidGrantToken(_))
        ));
        for bad in ["", "!!!", "AAAA", &"A".repeat(MAX_GRANT_TOKEN_LEN + 1)] {
            assert!(matches!(
                decode_token(bad),
                Err(KmsError::InvalidGrantToken(_))
            ));
        }
    }

    #[test]
    fn pages_follow_markers() {
        let v: Vec<String> = (0..5).map(|i| format!("g{i}")).collect();
        let p = paginate(&v, None, 2, |s| s.as_str()).unwrap();
        assert_eq!(p.items, &v[..2]);
        assert_eq!(p.next.as_deref(), Some("g1"));
        let p = paginate(&v, Some("g3"), 2, |s| s.as_str()).unwrap();
        assert_eq!(p.items, &v[4..]);
        assert!(p.next.is_none());
        assert!(paginate(&v, Some("zz"), 2, |s| s.as_str()).is_err());
    }
}
