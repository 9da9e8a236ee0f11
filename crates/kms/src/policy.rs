//! IAM-style key policies: parsing, validation and evaluation.
//!
//! A policy is parsed once (on PutKeyPolicy / CreateKey / load) into [`Policy`]; evaluation is a
//! walk over its statements with the request's principal, action, key ARN and condition values.
//! Rules, as AWS evaluates them: an explicit `Deny` that matches wins; otherwise a matching
//! `Allow` allows; otherwise the request is denied. A condition on a key the request does not
//! carry does not match (so a policy that requires `kms:RecipientAttestation:PCR0` denies a
//! request without an attestation), except with the `...IfExists` operators and `Null`.
//!
//! The account principal (`arn:aws:iam::<account>:root` or a bare account id) stands for every
//! principal of that account, as in AWS where it delegates to IAM; Cloister has no IAM policies,
//! so every configured principal of the account is covered by it.

use crate::error::{KmsError, KmsResult};
use serde_json::Value;
use std::collections::HashMap;

/// Largest policy document accepted (AWS: 32 KiB).
pub const MAX_POLICY_BYTES: usize = 32 * 1024;
/// Most statements in a policy.
pub const MAX_STATEMENTS: usize = 256;
/// Condition-key prefix of attestation values.
pub const RECIPIENT_PREFIX: &str = "kms:recipientattestation:";
/// Condition key (lower case) of the enclave's isolation, a Cloister extension: `process`, `vm`
/// or `nitro` (a document from AWS Nitro hardware). A policy that requires a hardware boundary
/// names `["vm", "nitro"]`.
pub const ISOLATION_KEY: &str = "cloister:recipientattestation:isolation";
/// Condition-key prefix of Cloister's own keys.
pub const CLOISTER_PREFIX: &str = "cloister:";
/// Condition-key prefix of encryption-context values.
pub const CONTEXT_PREFIX: &str = "kms:encryptioncontext:";

/// A parsed policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    statements: Vec<Statement>,
}

#[derive(Debug, Clone, PartialEq)]
struct Statement {
    allow: bool,
    principals: Vec<String>,
    actions: Vec<String>,
    resources: Vec<String>,
    conditions: Vec<Condition>,
}

#[derive(Debug, Clone, PartialEq, Eq, Copy)]
enum Op {
    StringEquals,
    StringNotEquals,
    StringEqualsIgnoreCase,
    StringNotEqualsIgnoreCase,
    StringLike,
    StringNotLike,
    Bool,
    Null,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SetQualifier {
    None,
    ForAnyValue,
    ForAllValues,
}

#[derive(Debug, Clone, PartialEq)]
struct Condition {
    op: Op,
    qualifier: SetQualifier,
    if_exists: bool,
    /// Lower-case condition key.
    key: String,
    values: Vec<String>,
}

/// What the evaluator needs about a request.
#[derive(Debug, Default)]
pub struct RequestContext<'a> {
    /// The caller's principal ARN.
    pub principal: &'a str,
    /// The caller's account id.
    pub account: &'a str,
    /// `kms:<Operation>`.
    pub action: &'a str,
    /// The key's ARN.
    pub resource: &'a str,
    /// Condition values by lower-case key (`kms:recipientattestation:pcr0`, ...).
    pub values: HashMap<String, String>,
}

fn malformed(msg: impl Into<String>) -> KmsError {
    KmsError::MalformedPolicyDocument(msg.into())
}

fn string_or_list(v: &Value, what: &str) -> KmsResult<Vec<String>> {
    match v {
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(a) if !a.is_empty() => a
            .iter()
            .map(|x| {
                x.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| malformed(format!("{what} entries must be strings")))
            })
            .collect(),
        _ => Err(malformed(format!(
            "{what} must be a string or a non-empty list of strings"
        ))),
    }
}

fn parse_op(name: &str) -> KmsResult<(Op, SetQualifier, bool)> {
    let (qualifier, rest) = if let Some(r) = name.strip_prefix("ForAnyValue:") {
        (SetQualifier::ForAnyValue, r)
    } else if let Some(r) = name.strip_prefix("ForAllValues:") {
        (SetQualifier::ForAllValues, r)
    } else {
        (SetQualifier::None, name)
    };
    let (rest, if_exists) = match rest.strip_suffix("IfExists") {
        Some(r) => (r, true),
        None => (rest, false),
    };
    let op = match rest {
        "StringEquals" => Op::StringEquals,
        "StringNotEquals" => Op::StringNotEquals,
        "StringEqualsIgnoreCase" => Op::StringEqualsIgnoreCase,
        "StringNotEqualsIgnoreCase" => Op::StringNotEqualsIgnoreCase,
        "StringLike" => Op::StringLike,
        "StringNotLike" => Op::StringNotLike,
        "Bool" => Op::Bool,
        "Null" if !if_exists => Op::Null,
        _ => return Err(malformed(format!("unsupported condition operator {name}"))),
    };
    Ok((op, qualifier, if_exists))
}

fn parse_principal(v: &Value) -> KmsResult<Vec<String>> {
    match v {
        Value::String(s) if s == "*" => Ok(vec!["*".into()]),
        Value::Object(m) => {
            let mut out = Vec::new();
            for (k, v) in m {
                if k != "AWS" {
                    return Err(malformed(format!(
                        "unsupported principal type {k}: only \"AWS\" principals exist here"
                    )));
                }
                for p in string_or_list(v, "Principal.AWS")? {
                    let ok = p == "*"
                        || p.starts_with("arn:")
                        || (p.len() == 12 && p.bytes().all(|b| b.is_ascii_digit()));
                    if !ok {
                        return Err(malformed(format!("invalid principal {p:?}")));
                    }
                    out.push(p);
                }
            }
            if out.is_empty() {
                return Err(malformed("Principal names no one"));
            }
            Ok(out)
        }
        _ => Err(malformed("Principal must be \"*\" or {\"AWS\": ...}")),
    }
}

/// `0`..`31` without leading zeros.
fn pcr_index_ok(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 2
        && n.bytes().all(|b| b.is_ascii_digit())
        && (n == "0" || !n.starts_with('0'))
        && n.parse::<u8>().is_ok_and(|i| i < 32)
}

fn parse_statement(v: &Value) -> KmsResult<Statement> {
    let m = v
        .as_object()
        .ok_or_else(|| malformed("each Statement must be an object"))?;
    for k in m.keys() {
        match k.as_str() {
            "Sid" | "Effect" | "Principal" | "Action" | "Resource" | "Condition" => {}
            "NotAction" | "NotResource" | "NotPrincipal" => {
                return Err(malformed(format!(
                    "{k} is not supported by this key service"
                )))
            }
            _ => return Err(malformed(format!("unknown statement field {k}"))),
        }
    }
    if let Some(sid) = m.get("Sid") {
        if !sid.is_string() {
            return Err(malformed("Sid must be a string"));
        }
    }
    let allow = match m.get("Effect").and_then(Value::as_str) {
        Some("Allow") => true,
        Some("Deny") => false,
        _ => return Err(malformed("Effect must be \"Allow\" or \"Deny\"")),
    };
    let principals = parse_principal(
        m.get("Principal")
            .ok_or_else(|| malformed("a key policy statement needs a Principal"))?,
    )?;
    let actions = string_or_list(
        m.get("Action")
            .ok_or_else(|| malformed("statement needs an Action"))?,
        "Action",
    )?;
    for a in &actions {
        let lower = a.to_ascii_lowercase();
        if a != "*" && !lower.starts_with("kms:") {
            return Err(malformed(format!("action {a:?} is not a kms: action")));
        }
    }
    let resources = string_or_list(
        m.get("Resource")
            .ok_or_else(|| malformed("statement needs a Resource"))?,
        "Resource",
    )?;
    let mut conditions = Vec::new();
    if let Some(c) = m.get("Condition") {
        let c = c
            .as_object()
            .ok_or_else(|| malformed("Condition must be an object"))?;
        for (op_name, block) in c {
            let (op, qualifier, if_exists) = parse_op(op_name)?;
            let block = block
                .as_object()
                .ok_or_else(|| malformed(format!("{op_name} must map keys to values")))?;
            for (key, vals) in block {
                let values = match vals {
                    Value::Bool(b) => vec![b.to_string()],
                    Value::Number(n) => vec![n.to_string()],
                    Value::Array(a) if !a.is_empty() => a
                        .iter()
                        .map(|x| match x {
                            Value::String(s) => Ok(s.clone()),
                            Value::Bool(b) => Ok(b.to_string()),
                            Value::Number(n) => Ok(n.to_string()),
                            _ => Err(malformed("condition values must be scalars")),
                        })
                        .collect::<KmsResult<_>>()?,
                    Value::String(s) => vec![s.clone()],
                    _ => return Err(malformed("condition values must be scalars or lists")),
                };
                let lower = key.to_ascii_lowercase();
                if let Some(rest) = lower.strip_prefix(RECIPIENT_PREFIX) {
                    let ok =
                        rest == "imagesha384" || rest.strip_prefix("pcr").is_some_and(pcr_index_ok);
                    if !ok {
                        return Err(malformed(format!("unknown condition key {key}")));
                    }
                }
                if lower.starts_with(CLOISTER_PREFIX) && lower != ISOLATION_KEY {
                    return Err(malformed(format!("unknown condition key {key}")));
                }
                conditions.push(Condition {
                    op,
                    qualifier,
                    if_exists,
                    key: lower,
                    values,
                });
            }
        }
    }
    Ok(Statement {
        allow,
        principals,
        actions,
        resources,
        conditions,
    })
}

impl Policy {
    /// Parses and validates a policy document.
    pub fn parse(text: &str) -> KmsResult<Self> {
        if text.len() > MAX_POLICY_BYTES {
            return Err(malformed(format!(
                "policy is larger than {MAX_POLICY_BYTES} bytes"
            )));
        }
        let v: Value = serde_json::from_str(text)
            .map_err(|e| malformed(format!("policy is not valid JSON: {e}")))?;
        let m = v
            .as_object()
            .ok_or_else(|| malformed("policy must be a JSON object"))?;
        for k in m.keys() {
            if !matches!(k.as_str(), "Version" | "Id" | "Statement") {
                return Err(malformed(format!("unknown policy field {k}")));
            }
        }
        if let Some(ver) = m.get("Version") {
            if !matches!(ver.as_str(), Some("2012-10-17") | Some("2008-10-17")) {
                return Err(malformed("Version must be 2012-10-17 or 2008-10-17"));
            }
        }
        let statements = match m.get("Statement") {
            Some(Value::Array(a)) if !a.is_empty() => {
                if a.len() > MAX_STATEMENTS {
                    return Err(malformed("too many statements"));
                }
                a.iter().map(parse_statement).collect::<KmsResult<_>>()?
            }
            Some(o @ Value::Object(_)) => vec![parse_statement(o)?],
            _ => return Err(malformed("policy needs a Statement")),
        };
        Ok(Policy { statements })
    }

    /// AWS's default key policy: the account may do everything.
    pub fn default_text(account: &str) -> String {
        format!(
            "{{\n  \"Version\" : \"2012-10-17\",\n  \"Id\" : \"key-default-1\",\n  \"Statement\" : [ {{\n    \"Sid\" : \"Enable IAM User Permissions\",\n    \"Effect\" : \"Allow\",\n    \"Principal\" : {{\n      \"AWS\" : \"arn:aws:iam::{account}:root\"\n    }},\n    \"Action\" : \"kms:*\",\n    \"Resource\" : \"*\"\n  }} ]\n}}"
        )
    }

    /// True if the request is allowed.
    pub fn allows(&self, ctx: &RequestContext<'_>) -> bool {
        let mut allowed = false;
        for st in &self.statements {
            if !st.matches(ctx) {
                continue;
            }
            if !st.allow {
                return false;
            }
            allowed = true;
        }
        allowed
    }

    /// True if any statement conditions on attestation values.
    pub fn mentions_attestation(&self) -> bool {
        self.statements.iter().any(|s| {
            s.conditions
                .iter()
                .any(|c| c.key.starts_with(RECIPIENT_PREFIX) || c.key == ISOLATION_KEY)
        })
    }
}

/// Glob match with `*` and `?`, optionally ignoring ASCII case. Iterative, O(len * pattern).
pub fn glob(pattern: &str, text: &str, ignore_case: bool) -> bool {
    let p = pattern.as_bytes();
    let t = text.as_bytes();
    let eq = |a: u8, b: u8| {
        if ignore_case {
            a.eq_ignore_ascii_case(&b)
        } else {
            a == b
        }
    };
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == b'?' || (p[pi] != b'*' && eq(p[pi], t[ti]))) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}

fn account_of(arn: &str) -> Option<&str> {
    // arn:aws:iam::<account>:...
    let mut it = arn.splitn(6, ':');
    let (_, _, _, _, acct) = (it.next()?, it.next()?, it.next()?, it.next()?, it.next()?);
    Some(acct)
}

impl Statement {
    fn principal_matches(&self, ctx: &RequestContext<'_>) -> bool {
        self.principals.iter().any(|p| {
            if p == "*" || p == ctx.principal {
                return true;
            }
            let root = p
                .strip_prefix("arn:aws:iam::")
                .and_then(|r| r.strip_suffix(":root"));
            let account = root.or_else(|| (p.len() == 12).then_some(p.as_str()));
            match account {
                Some(a) => account_of(ctx.principal) == Some(a) && a == ctx.account,
                None => false,
            }
        })
    }

    fn matches(&self, ctx: &RequestContext<'_>) -> bool {
        self.principal_matches(ctx)
            && self.actions.iter().any(|a| glob(a, ctx.action, true))
            && self.resources.iter().any(|r| glob(r, ctx.resource, false))
            && self.conditions.iter().all(|c| c.holds(ctx))
    }
}

impl Condition {
    fn value_matches(&self, policy_value: &str, request_value: &str) -> bool {
        match self.op {
            Op::StringEquals | Op::StringNotEquals => policy_value == request_value,
            Op::StringEqualsIgnoreCase | Op::StringNotEqualsIgnoreCase => {
                policy_value.eq_ignore_ascii_case(request_value)
            }
            Op::StringLike | Op::StringNotLike => glob(policy_value, request_value, false),
            Op::Bool => policy_value.eq_ignore_ascii_case(request_value),
            Op::Null => false,
        }
    }

    fn negated(&self) -> bool {
        matches!(
            self.op,
            Op::StringNotEquals | Op::StringNotEqualsIgnoreCase | Op::StringNotLike
        )
    }

    fn holds(&self, ctx: &RequestContext<'_>) -> bool {
        let value = ctx.values.get(&self.key);
        if self.op == Op::Null {
            let want_absent = self.values.iter().any(|v| v.eq_ignore_ascii_case("true"));
            return value.is_none() == want_absent;
        }
        let Some(value) = value else {
            // Absent key: IfExists and ForAllValues hold vacuously; everything else fails,
            // including the negated operators (as AWS does for a missing key).
            return self.if_exists || self.qualifier == SetQualifier::ForAllValues;
        };
        let any = self.values.iter().any(|pv| self.value_matches(pv, value));
        if self.negated() {
            !any
        } else {
            any
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ACCT: &str = "111122223333";

    fn ctx<'a>(principal: &'a str, action: &'a str, values: &[(&str, &str)]) -> RequestContext<'a> {
        RequestContext {
            principal,
            account: ACCT,
            action,
            resource: "arn:aws:kms:us-east-1:111122223333:key/1234",
            values: values
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn default_policy_allows_account_principals() {
        let p = Policy::parse(&Policy::default_text(ACCT)).unwrap();
        assert!(p.allows(&ctx("arn:aws:iam::111122223333:root", "kms:Decrypt", &[])));
        assert!(p.allows(&ctx(
            "arn:aws:iam::111122223333:user/app",
            "kms:Encrypt",
            &[]
        )));
        assert!(!p.allows(&ctx("arn:aws:iam::999999999999:root", "kms:Decrypt", &[])));
    }

    #[test]
    fn attestation_condition_and_explicit_deny() {
        let text = r#"{"Version":"2012-10-17","Statement":[
          {"Sid":"admin","Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111122223333:root"},
           "Action":["kms:Describe*","kms:PutKeyPolicy","kms:Encrypt"],"Resource":"*"},
          {"Sid":"enclave","Effect":"Allow","Principal":{"AWS":"*"},"Action":"kms:Decrypt","Resource":"*",
           "Condition":{"StringEqualsIgnoreCase":{"kms:RecipientAttestation:ImageSha384":"AABB"}}},
          {"Sid":"no-debug","Effect":"Deny","Principal":"*","Action":"kms:*","Resource":"*",
           "Condition":{"StringEquals":{"kms:RecipientAttestation:PCR8":"00"}}}
        ]}"#;
        let p = Policy::parse(text).unwrap();
        assert!(p.mentions_attestation());
        let root = "arn:aws:iam::111122223333:root";
        assert!(p.allows(&ctx(root, "kms:DescribeKey", &[])));
        assert!(p.allows(&ctx(root, "kms:encrypt", &[])));
        // No attestation: the Decrypt statement's condition has no value.
        assert!(!p.allows(&ctx(root, "kms:Decrypt", &[])));
        let good = [("kms:RecipientAttestation:ImageSha384", "aabb")];
        assert!(p.allows(&ctx(root, "kms:Decrypt", &good)));
        let other = [("kms:RecipientAttestation:ImageSha384", "ccdd")];
        assert!(!p.allows(&ctx(root, "kms:Decrypt", &other)));
        let denied = [
            ("kms:RecipientAttestation:ImageSha384", "aabb"),
            ("kms:RecipientAttestation:PCR8", "00"),
        ];
        assert!(!p.allows(&ctx(root, "kms:Decrypt", &denied)));
    }

    #[test]
    fn isolation_condition() {
        let text = r#"{"Statement":{"Effect":"Allow","Principal":"*","Action":"kms:Decrypt","Resource":"*",
          "Condition":{"StringEquals":{"cloister:RecipientAttestation:Isolation":["vm","nitro"]}}}}"#;
        let p = Policy::parse(text).unwrap();
        assert!(p.mentions_attestation());
        let root = "arn:aws:iam::1:root";
        let key = "cloister:RecipientAttestation:Isolation";
        assert!(p.allows(&ctx(root, "kms:Decrypt", &[(key, "vm")])));
        assert!(p.allows(&ctx(root, "kms:Decrypt", &[(key, "nitro")])));
        assert!(!p.allows(&ctx(root, "kms:Decrypt", &[(key, "process")])));
        assert!(!p.allows(&ctx(root, "kms:Decrypt", &[])));
        // Only the isolation key exists under the cloister: prefix.
        let typo = text.replace("Isolation", "Isolaton");
        assert!(matches!(
            Policy::parse(&typo),
            Err(KmsError::MalformedPolicyDocument(_))
        ));
    }

    #[test]
    fn operators() {
        let text = r#"{"Statement":{"Effect":"Allow","Principal":"*","Action":"kms:Decrypt","Resource":"*",
          "Condition":{"StringLike":{"kms:EncryptionContext:app":"web-*"},
                       "StringNotEqualsIfExists":{"kms:EncryptionContext:env":"prod"},
                       "Null":{"kms:EncryptionContext:tenant":"false"}}}}"#;
        let p = Policy::parse(text).unwrap();
        let c = |v: &[(&str, &str)]| p.allows(&ctx("arn:aws:iam::1:user/x", "kms:Decrypt", v));
        assert!(c(&[
            ("kms:EncryptionContext:app", "web-1"),
            ("kms:EncryptionContext:tenant", "t")
        ]));
        assert!(!c(&[("kms:EncryptionContext:app", "web-1")]));
        assert!(!c(&[
            ("kms:EncryptionContext:app", "web-1"),
            ("kms:EncryptionContext:tenant", "t"),
            ("kms:EncryptionContext:env", "prod")
        ]));
    }

    #[test]
    fn malformed_policies_are_refused() {
        for bad in [
            "",
            "[]",
            "{}",
            r#"{"Statement":[]}"#,
            r#"{"Statement":{"Effect":"Maybe","Principal":"*","Action":"kms:*","Resource":"*"}}"#,
            r#"{"Statement":{"Effect":"Allow","Action":"kms:*","Resource":"*"}}"#,
            r#"{"Statement":{"Effect":"Allow","Principal":"*","Action":"s3:*","Resource":"*"}}"#,
            r#"{"Statement":{"Effect":"Allow","Principal":"*","Action":"kms:*","Resource":"*","Condition":{"NumericEquals":{"a":"1"}}}}"#,
            r#"{"Statement":{"Effect":"Allow","Principal":"*","Action":"kms:*","Resource":"*","Condition":{"StringEquals":{"kms:RecipientAttestation:PCR32":"1"}}}}"#,
            r#"{"Version":"1999","Statement":{"Effect":"Allow","Principal":"*","Action":"kms:*","Resource":"*"}}"#,
        ] {
            assert!(
                matches!(
                    Policy::parse(bad),
                    Err(KmsError::MalformedPolicyDocument(_))
                ),
                "{bad}"
            );
        }
        let big = format!("{{\"Id\":\"{}\"}}", "x".repeat(MAX_POLICY_BYTES));
        assert!(Policy::parse(&big).is_err());
    }

    #[test]
    fn glob_matches() {
        assert!(glob("kms:*", "kms:Decrypt", true));
        assert!(glob("kms:Gen*Key", "kms:GenerateDataKey", true));
        assert!(!glob("kms:Gen*Key", "kms:GenerateDataKeyPair", true));
        assert!(glob("a?c", "abc", false));
        assert!(glob("*", "", false));
        assert!(!glob("a", "", false));
    }
}
