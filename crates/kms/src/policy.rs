//! IAM-style key policies: parsing, validation and evaluation.
//!
//! A policy is parsed once (on PutKeyPolicy / CreateKey / load) into [`Policy`]; evaluation is a
//! walk over its statements with the request's principal, action, key ARN and condition values.
//! Rules, as AWS evaluates them: an explicit `Deny` that matches wins; otherwise a matching
//! `Allow` allows; otherwise the request is denied ([`Policy::decision`] tells "no statement
//! matched" apart, so that a grant can still allow).
//!
//! Every IAM condition operator is supported: `String*`, `Numeric*` (integers and decimals),
//! `Date*` (ISO 8601 or epoch seconds), `Bool`, `BinaryEquals` (base64), `IpAddress` and
//! `NotIpAddress` (CIDR, IPv4 and IPv6), `ArnEquals`/`ArnLike` and their `Not` forms (each of the
//! six ARN parts matched on its own), `Null`, each with `...IfExists` (but `Null`) and the
//! `ForAnyValue:`/`ForAllValues:` qualifiers. Policy values an operator cannot compare (a
//! `NumericLessThan` on `"ten"`) make the policy malformed.
//!
//! A condition on a key the request does not carry follows IAM's rules (see `Condition::holds`):
//! a positive operator (`StringEquals`, `StringLike`, `Bool`, ...) is false, so a policy that
//! allows only with `kms:RecipientAttestation:PCR0` denies a request without an attestation; a
//! negated operator (`StringNotEquals`, `StringNotLike`, ...) is true, so a `Deny` unless
//! `cloister:RecipientAttestation:Isolation` is `vm` also refuses a request with no Recipient at
//! all; the `...IfExists` forms are true; `Null` tests presence; `ForAllValues` is vacuously true
//! and `ForAnyValue` false.
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
/// Condition key (lower case) of the encryption context's keys: multivalued, one value per key.
pub const CONTEXT_KEYS_KEY: &str = "kms:encryptioncontextkeys";
/// Condition key (lower case) of the caller's account.
pub const CALLER_ACCOUNT_KEY: &str = "kms:calleraccount";

/// What a policy says about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// A matching `Deny` statement: nothing (not even a grant) can allow the request.
    Deny,
    /// A matching `Allow` statement and no matching `Deny`.
    Allow,
    /// No statement matches.
    NoMatch,
}

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
    NumericEquals,
    NumericNotEquals,
    NumericLessThan,
    NumericLessThanEquals,
    NumericGreaterThan,
    NumericGreaterThanEquals,
    DateEquals,
    DateNotEquals,
    DateLessThan,
    DateLessThanEquals,
    DateGreaterThan,
    DateGreaterThanEquals,
    Bool,
    BinaryEquals,
    IpAddress,
    NotIpAddress,
    ArnEquals,
    ArnLike,
    ArnNotEquals,
    ArnNotLike,
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
    /// Condition values by lower-case key (`kms:recipientattestation:pcr0`, ...). A key the
    /// request does not carry has no entry (never an empty string or list standing in for it);
    /// a multivalued key (`kms:encryptioncontextkeys`) has one entry per value.
    pub values: HashMap<String, Vec<String>>,
}

impl RequestContext<'_> {
    /// Adds `value` to the condition key `key` (any case; stored in lower case).
    pub fn add(&mut self, key: &str, value: impl Into<String>) {
        self.values
            .entry(key.to_ascii_lowercase())
            .or_default()
            .push(value.into());
    }

    /// The values of `key` (lower case), or `None` when the request does not carry it.
    fn get(&self, key: &str) -> Option<&[String]> {
        self.values
            .get(key)
            .map(Vec::as_slice)
            .filter(|v| !v.is_empty())
    }
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
        "NumericEquals" => Op::NumericEquals,
        "NumericNotEquals" => Op::NumericNotEquals,
        "NumericLessThan" => Op::NumericLessThan,
        "NumericLessThanEquals" => Op::NumericLessThanEquals,
        "NumericGreaterThan" => Op::NumericGreaterThan,
        "NumericGreaterThanEquals" => Op::NumericGreaterThanEquals,
        "DateEquals" => Op::DateEquals,
        "DateNotEquals" => Op::DateNotEquals,
        "DateLessThan" => Op::DateLessThan,
        "DateLessThanEquals" => Op::DateLessThanEquals,
        "DateGreaterThan" => Op::DateGreaterThan,
        "DateGreaterThanEquals" => Op::DateGreaterThanEquals,
        "Bool" => Op::Bool,
        "BinaryEquals" => Op::BinaryEquals,
        "IpAddress" => Op::IpAddress,
        "NotIpAddress" => Op::NotIpAddress,
        "ArnEquals" => Op::ArnEquals,
        "ArnLike" => Op::ArnLike,
        "ArnNotEquals" => Op::ArnNotEquals,
        "ArnNotLike" => Op::ArnNotLike,
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

#[allow(
    clippy::too_many_lines,
    reason = "one statement's fields in AWS's validation order, each a few lines"
)]
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
                for v in &values {
                    check_policy_value(op, v).map_err(|why| {
                        malformed(format!("{op_name} value {v:?} for {key} {why}"))
                    })?;
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

    /// The policy's decision on a request: an explicit deny, an allow, or no statement
    /// matching (which a grant can still turn into an allow).
    pub fn decision(&self, ctx: &RequestContext<'_>) -> Decision {
        let mut decision = Decision::NoMatch;
        for st in &self.statements {
            if !st.matches(ctx) {
                continue;
            }
            if !st.allow {
                return Decision::Deny;
            }
            decision = Decision::Allow;
        }
        decision
    }

    /// True if some statement has a condition.
    pub fn has_conditions(&self) -> bool {
        self.statements.iter().any(|s| !s.conditions.is_empty())
    }

    /// True if some condition of the policy tests `key` (lower case), so a caller computes
    /// costly condition values only for policies that use them.
    pub fn mentions(&self, key: &str) -> bool {
        self.statements
            .iter()
            .any(|s| s.conditions.iter().any(|c| c.key == key))
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

/// True when the principal `p` of a policy statement (or a grant's grantee) covers the caller
/// `principal` of account `account`: `*`, the same ARN, the caller's account (its root ARN or
/// bare id), or the role whose session the caller is.
pub fn principal_covers(p: &str, principal: &str, account: &str) -> bool {
    if p == "*" || p == principal {
        return true;
    }
    // A role principal stands for its sessions
    // (`arn:aws:sts::<account>:assumed-role/<role>/<session>`), as in IAM.
    if let (Some(role), Some(session)) = (
        p.strip_prefix("arn:aws:iam::"),
        principal.strip_prefix("arn:aws:sts::"),
    ) {
        if let (Some((acct, role)), Some((sacct, rest))) = (
            role.split_once(":role/"),
            session.split_once(":assumed-role/"),
        ) {
            let role_name = role.rsplit('/').next().unwrap_or(role);
            if acct == sacct && rest.rsplit_once('/').is_some_and(|(r, _)| r == role_name) {
                return true;
            }
        }
    }
    let root = p
        .strip_prefix("arn:aws:iam::")
        .and_then(|r| r.strip_suffix(":root"));
    let acct = root.or_else(|| (p.len() == 12).then_some(p));
    match acct {
        Some(a) => account_of(principal) == Some(a) && a == account,
        None => false,
    }
}

impl Statement {
    fn principal_matches(&self, ctx: &RequestContext<'_>) -> bool {
        self.principals
            .iter()
            .any(|p| principal_covers(p, ctx.principal, ctx.account))
    }

    fn matches(&self, ctx: &RequestContext<'_>) -> bool {
        self.principal_matches(ctx)
            && self.actions.iter().any(|a| glob(a, ctx.action, true))
            && self.resources.iter().any(|r| glob(r, ctx.resource, false))
            && self.conditions.iter().all(|c| c.holds(ctx))
    }
}

/// Checks at parse time that a policy value can be compared by `op` (AWS refuses a policy with,
/// say, a `NumericLessThan` on `"ten"`).
fn check_policy_value(op: Op, v: &str) -> Result<(), &'static str> {
    match op {
        Op::NumericEquals
        | Op::NumericNotEquals
        | Op::NumericLessThan
        | Op::NumericLessThanEquals
        | Op::NumericGreaterThan
        | Op::NumericGreaterThanEquals => parse_number(v).map(drop).ok_or("is not a number"),
        Op::DateEquals
        | Op::DateNotEquals
        | Op::DateLessThan
        | Op::DateLessThanEquals
        | Op::DateGreaterThan
        | Op::DateGreaterThanEquals => parse_date(v).map(drop).ok_or("is not a date"),
        Op::BinaryEquals => {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD
                .decode(v)
                .map(drop)
                .map_err(|_| "is not base64")
        }
        Op::IpAddress | Op::NotIpAddress => parse_cidr(v).map(drop).ok_or("is not an IP range"),
        Op::Bool => (v.eq_ignore_ascii_case("true") || v.eq_ignore_ascii_case("false"))
            .then_some(())
            .ok_or("is not true or false"),
        _ => Ok(()),
    }
}

/// Longest number or date text compared (longer values never match).
const MAX_SCALAR_LEN: usize = 64;

/// A policy or request number: an integer or a decimal (`"10"`, `"1.5"`, `"-3"`).
fn parse_number(v: &str) -> Option<f64> {
    if v.is_empty()
        || v.len() > MAX_SCALAR_LEN
        || !v
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.'))
    {
        return None;
    }
    v.parse::<f64>().ok().filter(|f| f.is_finite())
}

/// A date as IAM accepts it: ISO 8601 (`2020-01-01`, `2020-01-01T00:00:00Z`, with optional
/// fraction and `Z` or `+hh:mm` offset) or seconds since the epoch. Returns epoch seconds.
pub fn parse_date(v: &str) -> Option<f64> {
    if v.is_empty() || v.len() > MAX_SCALAR_LEN {
        return None;
    }
    if v.bytes().all(|b| b.is_ascii_digit()) {
        return v.parse::<f64>().ok();
    }
    let b = v.as_bytes();
    let num = |s: &[u8]| -> Option<i64> {
        (!s.is_empty() && s.iter().all(u8::is_ascii_digit))
            .then(|| std::str::from_utf8(s).ok()?.parse().ok())
            .flatten()
    };
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let (y, m, d) = (num(&b[..4])?, num(&b[5..7])?, num(&b[8..10])?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    let days = cloister_sigv4::epoch_day(y, m, d)?;
    let mut secs = (days * 86_400) as f64;
    let rest = &b[10..];
    if rest.is_empty() {
        return Some(secs);
    }
    if rest[0] != b'T' || rest.len() < 9 || rest[3] != b':' || rest[6] != b':' {
        return None;
    }
    let (hh, mm, ss) = (num(&rest[1..3])?, num(&rest[4..6])?, num(&rest[7..9])?);
    if hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    secs += (hh * 3600 + mm * 60 + ss) as f64;
    let mut tail = &rest[9..];
    if let Some(frac) = tail.strip_prefix(b".") {
        let n = frac.iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 {
            return None;
        }
        let f: f64 = format!("0.{}", std::str::from_utf8(&frac[..n]).ok()?)
            .parse()
            .ok()?;
        secs += f;
        tail = &frac[n..];
    }
    match tail {
        b"" | b"Z" | b"z" => Some(secs),
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let off = (num(&[*h1, *h2])? * 3600 + num(&[*m1, *m2])? * 60) as f64;
            Some(if *sign == b'+' {
                secs - off
            } else {
                secs + off
            })
        }
        _ => None,
    }
}

/// An IPv4 or IPv6 range in CIDR notation (a bare address is a /32 or /128).
fn parse_cidr(v: &str) -> Option<(std::net::IpAddr, u8)> {
    if v.len() > MAX_SCALAR_LEN {
        return None;
    }
    let (addr, bits) = match v.split_once('/') {
        Some((a, b)) => (a, Some(b)),
        None => (v, None),
    };
    let ip: std::net::IpAddr = addr.parse().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let bits = match bits {
        Some(b) => b.parse::<u8>().ok().filter(|b| *b <= max)?,
        None => max,
    };
    Some((ip, bits))
}

/// True when `ip` lies in the range `cidr`. An IPv4 address is also matched against IPv6
/// ranges in its IPv4-mapped form.
fn ip_in(cidr: (std::net::IpAddr, u8), ip: std::net::IpAddr) -> bool {
    use std::net::IpAddr;
    let (net, bits) = cidr;
    let prefix = |a: u128, b: u128, width: u32| {
        let bits = u32::from(bits);
        if bits == 0 {
            return true;
        }
        let shift = width - bits;
        (a >> shift) == (b >> shift)
    };
    match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(i)) => {
            prefix(u128::from(u32::from(n)), u128::from(u32::from(i)), 32)
        }
        (IpAddr::V6(n), IpAddr::V6(i)) => prefix(u128::from(n), u128::from(i), 128),
        (IpAddr::V6(n), IpAddr::V4(i)) => {
            prefix(u128::from(n), u128::from(i.to_ipv6_mapped()), 128)
        }
        (IpAddr::V4(n), IpAddr::V6(i)) => match i.to_ipv4_mapped() {
            Some(i) => prefix(u128::from(u32::from(n)), u128::from(u32::from(i)), 32),
            None => false,
        },
    }
}

/// `ArnLike`/`ArnEquals`: each of the six colon-separated parts is matched on its own, with
/// `*` and `?` wildcards, case-sensitively.
fn arn_matches(pattern: &str, arn: &str) -> bool {
    let p: Vec<&str> = pattern.splitn(6, ':').collect();
    let a: Vec<&str> = arn.splitn(6, ':').collect();
    p.len() == 6 && a.len() == 6 && p.iter().zip(&a).all(|(p, a)| glob(p, a, false))
}

impl Condition {
    fn value_matches(&self, policy_value: &str, request_value: &str) -> bool {
        use std::cmp::Ordering;
        let numeric =
            |want: &[Ordering]| match (parse_number(request_value), parse_number(policy_value)) {
                (Some(r), Some(p)) => r.partial_cmp(&p).is_some_and(|o| want.contains(&o)),
                _ => false,
            };
        let date = |want: &[Ordering]| match (parse_date(request_value), parse_date(policy_value)) {
            (Some(r), Some(p)) => r.partial_cmp(&p).is_some_and(|o| want.contains(&o)),
            _ => false,
        };
        match self.op {
            Op::StringEquals | Op::StringNotEquals => policy_value == request_value,
            Op::StringEqualsIgnoreCase | Op::StringNotEqualsIgnoreCase => {
                policy_value.eq_ignore_ascii_case(request_value)
            }
            Op::StringLike | Op::StringNotLike => glob(policy_value, request_value, false),
            Op::NumericEquals | Op::NumericNotEquals => numeric(&[Ordering::Equal]),
            Op::NumericLessThan => numeric(&[Ordering::Less]),
            Op::NumericLessThanEquals => numeric(&[Ordering::Less, Ordering::Equal]),
            Op::NumericGreaterThan => numeric(&[Ordering::Greater]),
            Op::NumericGreaterThanEquals => numeric(&[Ordering::Greater, Ordering::Equal]),
            Op::DateEquals | Op::DateNotEquals => date(&[Ordering::Equal]),
            Op::DateLessThan => date(&[Ordering::Less]),
            Op::DateLessThanEquals => date(&[Ordering::Less, Ordering::Equal]),
            Op::DateGreaterThan => date(&[Ordering::Greater]),
            Op::DateGreaterThanEquals => date(&[Ordering::Greater, Ordering::Equal]),
            Op::Bool => policy_value.eq_ignore_ascii_case(request_value),
            Op::BinaryEquals => {
                use base64::Engine as _;
                let d = |s: &str| base64::engine::general_purpose::STANDARD.decode(s).ok();
                matches!((d(policy_value), d(request_value)), (Some(p), Some(r)) if p == r)
            }
            Op::IpAddress | Op::NotIpAddress => {
                match (parse_cidr(policy_value), request_value.parse()) {
                    (Some(c), Ok(ip)) => ip_in(c, ip),
                    _ => false,
                }
            }
            Op::ArnEquals | Op::ArnLike | Op::ArnNotEquals | Op::ArnNotLike => {
                arn_matches(policy_value, request_value)
            }
            Op::Null => false,
        }
    }

    fn negated(&self) -> bool {
        matches!(
            self.op,
            Op::StringNotEquals
                | Op::StringNotEqualsIgnoreCase
                | Op::StringNotLike
                | Op::NumericNotEquals
                | Op::DateNotEquals
                | Op::NotIpAddress
                | Op::ArnNotEquals
                | Op::ArnNotLike
        )
    }

    /// The operator on one request value: a positive operator holds when the value matches one
    /// of the policy's values, a negated one when it matches none of them.
    fn holds_for(&self, request_value: &str) -> bool {
        let any = self
            .values
            .iter()
            .any(|pv| self.value_matches(pv, request_value));
        any != self.negated()
    }

    /// IAM's evaluation of one condition (key and operator) against the request.
    ///
    /// A key the request does not carry (IAM: "the key is not present in the request context"):
    /// - `Null`: `"true"` holds, `"false"` does not;
    /// - `...IfExists`: holds;
    /// - `ForAllValues:`: holds (every one of no values matches);
    /// - `ForAnyValue:`: does not hold, negated operator or not (there is no value to match);
    /// - no qualifier: a negated operator (`StringNotEquals`, `StringNotEqualsIgnoreCase`,
    ///   `StringNotLike`) holds, as "the key is not equal to X" is true of a missing key; a
    ///   positive one does not.
    ///
    /// A present key is tested value by value with [`Condition::holds_for`]: `ForAllValues`
    /// needs every value to pass, `ForAnyValue` one. Without a qualifier, a key with several
    /// values (a multivalued key, or encryption-context keys differing only by case) is tested
    /// like `ForAnyValue`, which lets a `Deny` apply as soon as one value triggers it.
    fn holds(&self, ctx: &RequestContext<'_>) -> bool {
        let values = ctx.get(&self.key);
        if self.op == Op::Null {
            let present = values.is_some();
            return self.values.iter().any(|v| {
                if v.eq_ignore_ascii_case("true") {
                    !present
                } else if v.eq_ignore_ascii_case("false") {
                    present
                } else {
                    false
                }
            });
        }
        let Some(values) = values else {
            return self.if_exists
                || match self.qualifier {
                    SetQualifier::ForAllValues => true,
                    SetQualifier::ForAnyValue => false,
                    SetQualifier::None => self.negated(),
                };
        };
        match self.qualifier {
            SetQualifier::ForAllValues => values.iter().all(|v| self.holds_for(v)),
            SetQualifier::ForAnyValue | SetQualifier::None => {
                values.iter().any(|v| self.holds_for(v))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ACCT: &str = "111122223333";

    fn ctx<'a>(principal: &'a str, action: &'a str, values: &[(&str, &str)]) -> RequestContext<'a> {
        let mut c = RequestContext {
            principal,
            account: ACCT,
            action,
            resource: "arn:aws:kms:us-east-1:111122223333:key/1234",
            values: HashMap::new(),
        };
        for (k, v) in values {
            c.add(k, *v);
        }
        c
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
            r#"{"Statement":{"Effect":"Allow","Principal":"*","Action":"kms:*","Resource":"*","Condition":{"NumericEquals":{"a":"one"}}}}"#,
            r#"{"Statement":{"Effect":"Allow","Principal":"*","Action":"kms:*","Resource":"*","Condition":{"NumericEqualsSometimes":{"a":"1"}}}}"#,
            r#"{"Statement":{"Effect":"Allow","Principal":"*","Action":"kms:*","Resource":"*","Condition":{"DateLessThan":{"aws:CurrentTime":"yesterday"}}}}"#,
            r#"{"Statement":{"Effect":"Allow","Principal":"*","Action":"kms:*","Resource":"*","Condition":{"IpAddress":{"aws:SourceIp":"10.0.0.0/33"}}}}"#,
            r#"{"Statement":{"Effect":"Allow","Principal":"*","Action":"kms:*","Resource":"*","Condition":{"BinaryEquals":{"a":"!!"}}}}"#,
            r#"{"Statement":{"Effect":"Allow","Principal":"*","Action":"kms:*","Resource":"*","Condition":{"Bool":{"aws:SecureTransport":"yes"}}}}"#,
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

    /// The forms of an operator: no qualifier, `ForAnyValue:`, `ForAllValues:`, each without and
    /// with `IfExists`. Rows of [`POSITIVE`] and [`NEGATED`] follow this order.
    const FORMS: [(&str, &str); 6] = [
        ("", ""),
        ("", "IfExists"),
        ("ForAnyValue:", ""),
        ("ForAnyValue:", "IfExists"),
        ("ForAllValues:", ""),
        ("ForAllValues:", "IfExists"),
    ];

    /// A positive operator (`StringEquals`, `StringLike`, `Bool`, ...) on a key that is
    /// [present and matching, present and not matching, absent], per form, as AWS documents it.
    const POSITIVE: [[bool; 3]; 6] = [
        [true, false, false], // absent: a positive operator is false
        [true, false, true],  // absent: ...IfExists is true
        [true, false, false], // absent: ForAnyValue is false
        [true, false, true],  // ... unless IfExists
        [true, false, true],  // absent: ForAllValues is vacuously true
        [true, false, true],
    ];

    /// The same for a negated operator (`StringNotEquals`, `StringNotLike`, ...).
    const NEGATED: [[bool; 3]; 6] = [
        [false, true, true],  // absent: a negated operator is true
        [false, true, true],  // absent: ...IfExists is true
        [false, true, false], // absent: ForAnyValue is false, negated or not
        [false, true, true],  // ... unless IfExists
        [false, true, true],  // absent: ForAllValues is vacuously true
        [false, true, true],
    ];

    struct OpCase {
        op: &'static str,
        policy_value: &'static str,
        matching: &'static str,
        not_matching: &'static str,
        expected: &'static [[bool; 3]; 6],
    }

    /// Every operator the evaluator supports except `Null` (tested on its own below).
    const OPERATORS: &[OpCase] = &[
        OpCase {
            op: "StringEquals",
            policy_value: "web-1",
            matching: "web-1",
            not_matching: "Web-1",
            expected: &POSITIVE,
        },
        OpCase {
            op: "StringNotEquals",
            policy_value: "web-1",
            matching: "web-1",
            not_matching: "Web-1",
            expected: &NEGATED,
        },
        OpCase {
            op: "StringEqualsIgnoreCase",
            policy_value: "WEB-1",
            matching: "web-1",
            not_matching: "web-2",
            expected: &POSITIVE,
        },
        OpCase {
            op: "StringNotEqualsIgnoreCase",
            policy_value: "WEB-1",
            matching: "web-1",
            not_matching: "web-2",
            expected: &NEGATED,
        },
        OpCase {
            op: "StringLike",
            policy_value: "web-*",
            matching: "web-42",
            not_matching: "app-42",
            expected: &POSITIVE,
        },
        OpCase {
            op: "StringNotLike",
            policy_value: "web-?",
            matching: "web-4",
            not_matching: "web-42",
            expected: &NEGATED,
        },
        OpCase {
            op: "Bool",
            policy_value: "true",
            matching: "true",
            not_matching: "false",
            expected: &POSITIVE,
        },
    ];

    /// One Allow statement with `condition`, and the same condition on a Deny after an Allow of
    /// everything: the first allows exactly when the condition holds, the second refuses then.
    fn allow_and_deny(condition: &str) -> (Policy, Policy) {
        let allow = format!(
            r#"{{"Statement":{{"Effect":"Allow","Principal":"*","Action":"kms:Decrypt","Resource":"*","Condition":{condition}}}}}"#
        );
        let deny = format!(
            r#"{{"Statement":[{{"Effect":"Allow","Principal":"*","Action":"kms:*","Resource":"*"}},
              {{"Effect":"Deny","Principal":"*","Action":"kms:Decrypt","Resource":"*","Condition":{condition}}}]}}"#
        );
        (
            Policy::parse(&allow).unwrap(),
            Policy::parse(&deny).unwrap(),
        )
    }

    #[test]
    fn every_operator_on_present_and_absent_keys() {
        let key = "kms:EncryptionContext:App";
        for case in OPERATORS {
            for (form, expected) in FORMS.iter().zip(case.expected) {
                let op = format!("{}{}{}", form.0, case.op, form.1);
                let (allow, deny) = allow_and_deny(&format!(
                    r#"{{"{op}":{{"{key}":"{}"}}}}"#,
                    case.policy_value
                ));
                let requests: [&[(&str, &str)]; 3] = [
                    &[(key, case.matching), ("kms:EncryptionContext:other", "x")],
                    &[(key, case.not_matching)],
                    // Absent, while another encryption-context key is present.
                    &[("kms:EncryptionContext:other", "x")],
                ];
                for ((values, want), what) in requests.iter().zip(expected).zip([
                    "present, matching",
                    "present, not matching",
                    "absent",
                ]) {
                    let c = ctx("arn:aws:iam::1:user/x", "kms:Decrypt", values);
                    assert_eq!(allow.allows(&c), *want, "Allow with {op}, key {what}");
                    assert_eq!(deny.allows(&c), !*want, "Deny with {op}, key {what}");
                }
                // No condition values at all is "absent" too.
                let c = ctx("arn:aws:iam::1:user/x", "kms:Decrypt", &[]);
                assert_eq!(
                    allow.allows(&c),
                    expected[2],
                    "Allow with {op}, empty request"
                );
            }
        }
    }

    #[test]
    fn null_tests_presence() {
        let key = "kms:RecipientAttestation:PCR0";
        // (policy values, expected when present, expected when absent)
        let table: &[(&str, bool, bool)] = &[
            (r#""true""#, false, true),
            (r#""false""#, true, false),
            ("true", false, true),
            (r#"["true","false"]"#, true, true),
            (r#""maybe""#, false, false),
        ];
        for (values, present, absent) in table {
            let (allow, deny) = allow_and_deny(&format!(r#"{{"Null":{{"{key}":{values}}}}}"#));
            for (want, request) in [(present, &[(key, "ab")][..]), (absent, &[][..])] {
                let c = ctx("arn:aws:iam::1:user/x", "kms:Decrypt", request);
                assert_eq!(allow.allows(&c), *want, "Null {values}, {request:?}");
                assert_eq!(deny.allows(&c), !*want, "Null {values}, {request:?}");
            }
        }
        assert!(Policy::parse(
            r#"{"Statement":{"Effect":"Allow","Principal":"*","Action":"kms:*","Resource":"*","Condition":{"NullIfExists":{"a":"true"}}}}"#
        )
        .is_err());
    }

    #[test]
    fn set_qualifiers_on_a_multivalued_key() {
        let key = "kms:EncryptionContextKeys";
        // (operator, policy values, request values, expected)
        let table: &[(&str, &str, &[&str], bool)] = &[
            ("ForAllValues:StringEquals", r#"["a","b"]"#, &["a"], true),
            (
                "ForAllValues:StringEquals",
                r#"["a","b"]"#,
                &["a", "b"],
                true,
            ),
            (
                "ForAllValues:StringEquals",
                r#"["a","b"]"#,
                &["a", "c"],
                false,
            ),
            ("ForAllValues:StringEquals", r#"["a","b"]"#, &[], true),
            (
                "ForAnyValue:StringEquals",
                r#"["a","b"]"#,
                &["c", "b"],
                true,
            ),
            ("ForAnyValue:StringEquals", r#"["a","b"]"#, &["c"], false),
            ("ForAnyValue:StringEquals", r#"["a","b"]"#, &[], false),
            (
                "ForAllValues:StringNotEquals",
                r#"["a"]"#,
                &["b", "c"],
                true,
            ),
            (
                "ForAllValues:StringNotEquals",
                r#"["a"]"#,
                &["b", "a"],
                false,
            ),
            ("ForAllValues:StringNotEquals", r#"["a"]"#, &[], true),
            ("ForAnyValue:StringNotEquals", r#"["a"]"#, &["a", "b"], true),
            ("ForAnyValue:StringNotEquals", r#"["a"]"#, &["a"], false),
            ("ForAnyValue:StringNotEquals", r#"["a"]"#, &[], false),
            ("ForAnyValue:StringLike", r#"["x-*"]"#, &["a", "x-1"], true),
            (
                "ForAllValues:StringLike",
                r#"["x-*"]"#,
                &["a", "x-1"],
                false,
            ),
            // No qualifier: one value that passes is enough.
            ("StringEquals", r#"["a"]"#, &["b", "a"], true),
            ("StringNotEquals", r#"["a"]"#, &["a", "b"], true),
            ("StringNotEquals", r#"["a"]"#, &["a"], false),
            ("StringNotEquals", r#"["a"]"#, &[], true),
        ];
        for (op, policy_values, request, want) in table {
            let (allow, deny) =
                allow_and_deny(&format!(r#"{{"{op}":{{"{key}":{policy_values}}}}}"#));
            let values: Vec<(&str, &str)> = request.iter().map(|v| (key, *v)).collect();
            let c = ctx("arn:aws:iam::1:user/x", "kms:Decrypt", &values);
            assert_eq!(
                allow.allows(&c),
                *want,
                "{op} {policy_values} on {request:?}"
            );
            assert_eq!(
                deny.allows(&c),
                !*want,
                "{op} {policy_values} on {request:?}"
            );
        }
    }

    /// The README's policy for a hardware boundary, and a Deny on an encryption-context key:
    /// a request that leaves the key out is refused like one with the wrong value.
    #[test]
    fn negated_deny_refuses_requests_without_the_key() {
        let text = r#"{"Version":"2012-10-17","Statement":[
          {"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111122223333:root"},"Action":"kms:*","Resource":"*"},
          {"Effect":"Deny","Principal":"*","Action":["kms:Decrypt","kms:ReEncrypt*"],"Resource":"*",
           "Condition":{"StringNotEquals":{"cloister:RecipientAttestation:Isolation":["vm","nitro"]}}},
          {"Effect":"Deny","Principal":"*","Action":"kms:Encrypt","Resource":"*",
           "Condition":{"StringNotEquals":{"kms:EncryptionContext:tenant":"a"}}}
        ]}"#;
        let p = Policy::parse(text).unwrap();
        let user = "arn:aws:iam::111122223333:user/app";
        let iso = "cloister:RecipientAttestation:Isolation";
        assert!(!p.allows(&ctx(user, "kms:Decrypt", &[])));
        assert!(!p.allows(&ctx(user, "kms:ReEncryptFrom", &[])));
        assert!(!p.allows(&ctx(user, "kms:Decrypt", &[(iso, "process")])));
        assert!(p.allows(&ctx(user, "kms:Decrypt", &[(iso, "vm")])));
        assert!(p.allows(&ctx(user, "kms:Decrypt", &[(iso, "nitro")])));
        let tenant = "kms:EncryptionContext:tenant";
        assert!(!p.allows(&ctx(user, "kms:Encrypt", &[])));
        assert!(!p.allows(&ctx(user, "kms:Encrypt", &[(tenant, "b")])));
        assert!(p.allows(&ctx(user, "kms:Encrypt", &[(tenant, "a")])));
        // Context keys that differ only by case: one of them is not "a", so the Deny applies.
        assert!(!p.allows(&ctx(
            user,
            "kms:Encrypt",
            &[(tenant, "a"), ("kms:EncryptionContext:TENANT", "b")]
        )));
        assert!(p.allows(&ctx(user, "kms:DescribeKey", &[])));
    }

    /// One condition block, the request's condition values, and whether the condition holds.
    struct Example {
        condition: &'static str,
        values: &'static [(&'static str, &'static str)],
        holds: bool,
    }

    /// The examples of AWS's IAM and KMS documentation ("IAM JSON policy elements: Condition
    /// operators", "AWS KMS condition keys"), on present and absent keys.
    const AWS_EXAMPLES: &[Example] = &[
        // Numeric: "NumericLessThanEquals": {"s3:max-keys": "10"}.
        Example {
            condition: r#"{"NumericLessThanEquals":{"s3:max-keys":"10"}}"#,
            values: &[("s3:max-keys", "10")],
            holds: true,
        },
        Example {
            condition: r#"{"NumericLessThanEquals":{"s3:max-keys":"10"}}"#,
            values: &[("s3:max-keys", "11")],
            holds: false,
        },
        Example {
            condition: r#"{"NumericLessThanEquals":{"s3:max-keys":"10"}}"#,
            values: &[],
            holds: false,
        },
        Example {
            condition: r#"{"NumericLessThanEqualsIfExists":{"s3:max-keys":"10"}}"#,
            values: &[],
            holds: true,
        },
        Example {
            condition: r#"{"NumericEquals":{"n":"1.50"}}"#,
            values: &[("n", "1.5")],
            holds: true,
        },
        Example {
            condition: r#"{"NumericNotEquals":{"n":"2"}}"#,
            values: &[("n", "2")],
            holds: false,
        },
        Example {
            condition: r#"{"NumericNotEquals":{"n":"2"}}"#,
            values: &[],
            holds: true,
        },
        Example {
            condition: r#"{"NumericGreaterThan":{"n":"2"}}"#,
            values: &[("n", "3")],
            holds: true,
        },
        Example {
            condition: r#"{"NumericGreaterThanEquals":{"n":"2"}}"#,
            values: &[("n", "1")],
            holds: false,
        },
        Example {
            condition: r#"{"NumericLessThan":{"n":"2"}}"#,
            values: &[("n", "not a number")],
            holds: false,
        },
        // Date: a window of aws:CurrentTime.
        Example {
            condition: r#"{"DateGreaterThan":{"aws:CurrentTime":"2020-04-01T00:00:00Z"},"DateLessThan":{"aws:CurrentTime":"2020-06-30T23:59:59Z"}}"#,
            values: &[("aws:CurrentTime", "2020-05-15T12:00:00Z")],
            holds: true,
        },
        Example {
            condition: r#"{"DateGreaterThan":{"aws:CurrentTime":"2020-04-01T00:00:00Z"},"DateLessThan":{"aws:CurrentTime":"2020-06-30T23:59:59Z"}}"#,
            values: &[("aws:CurrentTime", "2020-07-01T00:00:00Z")],
            holds: false,
        },
        Example {
            condition: r#"{"DateLessThanEquals":{"aws:EpochTime":"1590000000"}}"#,
            values: &[("aws:EpochTime", "2020-05-20T18:40:00Z")],
            holds: true,
        },
        Example {
            condition: r#"{"DateEquals":{"d":"2020-01-01"}}"#,
            values: &[("d", "2020-01-01T00:00:00+00:00")],
            holds: true,
        },
        Example {
            condition: r#"{"DateGreaterThanEquals":{"d":"2020-01-01T00:00:00Z"}}"#,
            values: &[("d", "2019-12-31T23:00:00-02:00")],
            holds: true,
        },
        Example {
            condition: r#"{"DateNotEquals":{"d":"2020-01-01"}}"#,
            values: &[],
            holds: true,
        },
        Example {
            condition: r#"{"DateLessThan":{"d":"2020-01-01"}}"#,
            values: &[],
            holds: false,
        },
        Example {
            condition: r#"{"DateLessThanIfExists":{"d":"2020-01-01"}}"#,
            values: &[],
            holds: true,
        },
        // Bool: deny plain HTTP with "Bool": {"aws:SecureTransport": "false"}.
        Example {
            condition: r#"{"Bool":{"aws:SecureTransport":"false"}}"#,
            values: &[("aws:SecureTransport", "false")],
            holds: true,
        },
        Example {
            condition: r#"{"Bool":{"aws:SecureTransport":"false"}}"#,
            values: &[("aws:SecureTransport", "true")],
            holds: false,
        },
        Example {
            condition: r#"{"Bool":{"aws:SecureTransport":"false"}}"#,
            values: &[],
            holds: false,
        },
        Example {
            condition: r#"{"BoolIfExists":{"aws:MultiFactorAuthPresent":"true"}}"#,
            values: &[],
            holds: true,
        },
        Example {
            condition: r#"{"Bool":{"kms:GrantIsForAWSResource":true}}"#,
            values: &[("kms:GrantIsForAWSResource", "false")],
            holds: false,
        },
        // Binary.
        Example {
            condition: r#"{"BinaryEquals":{"key":"QmluYXJ5VmFsdWVJbkJhc2U2NA=="}}"#,
            values: &[("key", "QmluYXJ5VmFsdWVJbkJhc2U2NA==")],
            holds: true,
        },
        Example {
            condition: r#"{"BinaryEquals":{"key":"QmluYXJ5VmFsdWVJbkJhc2U2NA=="}}"#,
            values: &[("key", "QmluYXJ5")],
            holds: false,
        },
        Example {
            condition: r#"{"BinaryEquals":{"key":"QmluYXJ5VmFsdWVJbkJhc2U2NA=="}}"#,
            values: &[],
            holds: false,
        },
        // IP addresses: "IpAddress": {"aws:SourceIp": "203.0.113.0/24"}, IPv6 ranges.
        Example {
            condition: r#"{"IpAddress":{"aws:SourceIp":"203.0.113.0/24"}}"#,
            values: &[("aws:SourceIp", "203.0.113.7")],
            holds: true,
        },
        Example {
            condition: r#"{"IpAddress":{"aws:SourceIp":"203.0.113.0/24"}}"#,
            values: &[("aws:SourceIp", "203.0.114.7")],
            holds: false,
        },
        Example {
            condition: r#"{"IpAddress":{"aws:SourceIp":"203.0.113.0/24"}}"#,
            values: &[],
            holds: false,
        },
        Example {
            condition: r#"{"IpAddress":{"aws:SourceIp":["203.0.113.0/24","2001:DB8:1234:5678::/64"]}}"#,
            values: &[("aws:SourceIp", "2001:db8:1234:5678::1")],
            holds: true,
        },
        Example {
            condition: r#"{"IpAddress":{"aws:SourceIp":"10.1.2.3"}}"#,
            values: &[("aws:SourceIp", "10.1.2.3")],
            holds: true,
        },
        Example {
            condition: r#"{"IpAddress":{"aws:SourceIp":"0.0.0.0/0"}}"#,
            values: &[("aws:SourceIp", "192.0.2.1")],
            holds: true,
        },
        Example {
            condition: r#"{"NotIpAddress":{"aws:SourceIp":["192.0.2.0/24","203.0.113.0/24"]}}"#,
            values: &[("aws:SourceIp", "198.51.100.1")],
            holds: true,
        },
        Example {
            condition: r#"{"NotIpAddress":{"aws:SourceIp":["192.0.2.0/24","203.0.113.0/24"]}}"#,
            values: &[("aws:SourceIp", "192.0.2.9")],
            holds: false,
        },
        Example {
            condition: r#"{"NotIpAddress":{"aws:SourceIp":"192.0.2.0/24"}}"#,
            values: &[],
            holds: true,
        },
        Example {
            condition: r#"{"IpAddressIfExists":{"aws:SourceIp":"192.0.2.0/24"}}"#,
            values: &[],
            holds: true,
        },
        // ARNs: each of the six parts is matched on its own.
        Example {
            condition: r#"{"ArnEquals":{"aws:SourceArn":"arn:aws:sns:us-east-1:123456789012:my-topic"}}"#,
            values: &[(
                "aws:SourceArn",
                "arn:aws:sns:us-east-1:123456789012:my-topic",
            )],
            holds: true,
        },
        Example {
            condition: r#"{"ArnLike":{"aws:PrincipalArn":"arn:aws:iam::*:role/Admin*"}}"#,
            values: &[(
                "aws:PrincipalArn",
                "arn:aws:iam::111122223333:role/AdminOps",
            )],
            holds: true,
        },
        Example {
            condition: r#"{"ArnLike":{"aws:PrincipalArn":"arn:aws:iam::*:role/Admin*"}}"#,
            values: &[(
                "aws:PrincipalArn",
                "arn:aws:iam::111122223333:user/AdminOps",
            )],
            holds: false,
        },
        Example {
            condition: r#"{"ArnLike":{"aws:PrincipalArn":"arn:aws:iam::*:role/Admin*"}}"#,
            values: &[("aws:PrincipalArn", "not-an-arn")],
            holds: false,
        },
        Example {
            condition: r#"{"ArnNotLike":{"aws:PrincipalArn":"arn:aws:iam::*:role/Admin*"}}"#,
            values: &[("aws:PrincipalArn", "arn:aws:iam::111122223333:user/bob")],
            holds: true,
        },
        Example {
            condition: r#"{"ArnNotEquals":{"aws:SourceArn":"arn:aws:sns:*:*:t"}}"#,
            values: &[],
            holds: true,
        },
        Example {
            condition: r#"{"ArnLike":{"aws:SourceArn":"arn:aws:sns:*:*:t"}}"#,
            values: &[],
            holds: false,
        },
        Example {
            condition: r#"{"ArnLikeIfExists":{"aws:SourceArn":"arn:aws:sns:*:*:t"}}"#,
            values: &[],
            holds: true,
        },
        // Null: "Null": {"aws:TokenIssueTime": "true"} holds when the key is absent.
        Example {
            condition: r#"{"Null":{"aws:TokenIssueTime":"true"}}"#,
            values: &[],
            holds: true,
        },
        Example {
            condition: r#"{"Null":{"aws:TokenIssueTime":"false"}}"#,
            values: &[("aws:TokenIssueTime", "2020-01-01T00:00:00Z")],
            holds: true,
        },
        // KMS: kms:CallerAccount, kms:ViaService (absent: no AWS service calls through Cloister).
        Example {
            condition: r#"{"StringEquals":{"kms:CallerAccount":"111122223333"}}"#,
            values: &[("kms:CallerAccount", "111122223333")],
            holds: true,
        },
        Example {
            condition: r#"{"StringEquals":{"kms:ViaService":"ec2.us-west-2.amazonaws.com"}}"#,
            values: &[],
            holds: false,
        },
        Example {
            condition: r#"{"StringNotEquals":{"kms:ViaService":"ec2.us-west-2.amazonaws.com"}}"#,
            values: &[],
            holds: true,
        },
        Example {
            condition: r#"{"StringLike":{"kms:ViaService":"*.amazonaws.com"}}"#,
            values: &[("kms:ViaService", "rds.us-east-1.amazonaws.com")],
            holds: true,
        },
        // kms:EncryptionAlgorithm, kms:SigningAlgorithm, kms:KeySpec, kms:KeyUsage.
        Example {
            condition: r#"{"StringEquals":{"kms:EncryptionAlgorithm":"SYMMETRIC_DEFAULT"}}"#,
            values: &[("kms:EncryptionAlgorithm", "SYMMETRIC_DEFAULT")],
            holds: true,
        },
        Example {
            condition: r#"{"StringEquals":{"kms:EncryptionAlgorithm":"SYMMETRIC_DEFAULT"}}"#,
            values: &[("kms:EncryptionAlgorithm", "RSAES_OAEP_SHA_256")],
            holds: false,
        },
        Example {
            condition: r#"{"StringLike":{"kms:SigningAlgorithm":"ECDSA_*"}}"#,
            values: &[("kms:SigningAlgorithm", "ECDSA_SHA_256")],
            holds: true,
        },
        Example {
            condition: r#"{"StringLike":{"kms:SigningAlgorithm":"ECDSA_*"}}"#,
            values: &[],
            holds: false,
        },
        Example {
            condition: r#"{"StringEquals":{"kms:KeySpec":["RSA_2048","SYMMETRIC_DEFAULT"]}}"#,
            values: &[("kms:KeySpec", "SYMMETRIC_DEFAULT")],
            holds: true,
        },
        Example {
            condition: r#"{"StringEquals":{"kms:KeyUsage":"SIGN_VERIFY"}}"#,
            values: &[("kms:KeyUsage", "ENCRYPT_DECRYPT")],
            holds: false,
        },
        // kms:GrantOperations: ForAllValues (every requested operation listed).
        Example {
            condition: r#"{"ForAllValues:StringEquals":{"kms:GrantOperations":["Decrypt","RetireGrant"]}}"#,
            values: &[
                ("kms:GrantOperations", "Decrypt"),
                ("kms:GrantOperations", "RetireGrant"),
            ],
            holds: true,
        },
        Example {
            condition: r#"{"ForAllValues:StringEquals":{"kms:GrantOperations":["Decrypt","RetireGrant"]}}"#,
            values: &[
                ("kms:GrantOperations", "Decrypt"),
                ("kms:GrantOperations", "Encrypt"),
            ],
            holds: false,
        },
        Example {
            condition: r#"{"ForAnyValue:StringEquals":{"kms:GrantOperations":["Encrypt"]}}"#,
            values: &[
                ("kms:GrantOperations", "Decrypt"),
                ("kms:GrantOperations", "Encrypt"),
            ],
            holds: true,
        },
        Example {
            condition: r#"{"ForAnyValue:StringEquals":{"kms:GrantOperations":["Encrypt"]}}"#,
            values: &[],
            holds: false,
        },
        Example {
            condition: r#"{"ForAllValues:StringEquals":{"kms:GrantOperations":["Encrypt"]}}"#,
            values: &[],
            holds: true,
        },
        // kms:EncryptionContextKeys: "ForAllValues:StringEquals" with AppName and FilePath.
        Example {
            condition: r#"{"ForAllValues:StringEquals":{"kms:EncryptionContextKeys":["AppName","FilePath"]}}"#,
            values: &[("kms:EncryptionContextKeys", "AppName")],
            holds: true,
        },
        Example {
            condition: r#"{"ForAllValues:StringEquals":{"kms:EncryptionContextKeys":["AppName","FilePath"]}}"#,
            values: &[
                ("kms:EncryptionContextKeys", "AppName"),
                ("kms:EncryptionContextKeys", "Other"),
            ],
            holds: false,
        },
        Example {
            condition: r#"{"ForAnyValue:StringEquals":{"kms:EncryptionContextKeys":"AppName"}}"#,
            values: &[
                ("kms:EncryptionContextKeys", "Other"),
                ("kms:EncryptionContextKeys", "AppName"),
            ],
            holds: true,
        },
        Example {
            condition: r#"{"ForAnyValue:IpAddress":{"aws:SourceIp":"10.0.0.0/8"}}"#,
            values: &[("aws:SourceIp", "10.9.9.9")],
            holds: true,
        },
        Example {
            condition: r#"{"ForAllValues:NumericLessThan":{"n":"5"}}"#,
            values: &[("n", "1"), ("n", "7")],
            holds: false,
        },
        // kms:RequestAlias and kms:ResourceAliases.
        Example {
            condition: r#"{"StringEquals":{"kms:RequestAlias":"alias/finance-key"}}"#,
            values: &[("kms:RequestAlias", "alias/finance-key")],
            holds: true,
        },
        Example {
            condition: r#"{"StringEquals":{"kms:RequestAlias":"alias/finance-key"}}"#,
            values: &[],
            holds: false,
        },
        Example {
            condition: r#"{"ForAnyValue:StringEquals":{"kms:ResourceAliases":"alias/finance-key"}}"#,
            values: &[
                ("kms:ResourceAliases", "alias/x"),
                ("kms:ResourceAliases", "alias/finance-key"),
            ],
            holds: true,
        },
        // aws:PrincipalArn with StringLike, and kms:RecipientAttestation keys.
        Example {
            condition: r#"{"StringLike":{"aws:PrincipalArn":"arn:aws:iam::111122223333:role/*"}}"#,
            values: &[("aws:PrincipalArn", "arn:aws:iam::111122223333:role/app")],
            holds: true,
        },
        Example {
            condition: r#"{"StringEqualsIgnoreCase":{"kms:RecipientAttestation:ImageSha384":"ABCD"}}"#,
            values: &[("kms:RecipientAttestation:ImageSha384", "abcd")],
            holds: true,
        },
        Example {
            condition: r#"{"StringEqualsIgnoreCase":{"kms:RecipientAttestation:PCR8":"00"}}"#,
            values: &[],
            holds: false,
        },
    ];

    #[test]
    fn aws_documented_examples() {
        for (i, e) in AWS_EXAMPLES.iter().enumerate() {
            let text = format!(
                r#"{{"Version":"2012-10-17","Statement":[{{"Effect":"Allow","Principal":"*","Action":"kms:*","Resource":"*","Condition":{}}}]}}"#,
                e.condition
            );
            let p = Policy::parse(&text).unwrap_or_else(|err| panic!("example {i}: {err}"));
            let c = ctx(
                "arn:aws:iam::111122223333:user/app",
                "kms:Decrypt",
                e.values,
            );
            assert_eq!(
                p.allows(&c),
                e.holds,
                "example {i}: {} with {:?}",
                e.condition,
                e.values
            );
        }
    }

    #[test]
    fn dates_parse_as_iam_does() {
        assert_eq!(parse_date("1970-01-01T00:00:00Z"), Some(0.0));
        assert_eq!(parse_date("1970-01-02"), Some(86_400.0));
        assert_eq!(parse_date("1970-01-01T01:00:00+01:00"), Some(0.0));
        assert_eq!(parse_date("1970-01-01T00:00:00.5Z"), Some(0.5));
        assert_eq!(parse_date("86400"), Some(86_400.0));
        for bad in [
            "",
            "yesterday",
            "2020-13-01",
            "2020-01-01T25:00:00Z",
            "2020-01-01T00:00:00Q",
        ] {
            assert!(parse_date(bad).is_none(), "{bad}");
        }
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
