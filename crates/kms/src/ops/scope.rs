//! The request scope: what the key service knows about a request besides its body.
//!
//! [`Caller`] carries the authenticated principal, the region of the request's credential scope,
//! the client's address and whether the connection was TLS. [`Service::handle_as`] installs it
//! (plus condition values read from the body, such as `kms:EncryptionAlgorithm` and
//! `kms:RequestAlias`) in a thread-local slot for the duration of the synchronous operation, so
//! the policy evaluator sees `aws:SourceIp`, `aws:SecureTransport`, ... without threading them
//! through every operation's signature. The slot is restored by a guard when the operation ends
//! (or unwinds), and an operation never moves to another thread while it runs.
//!
//! [`Service::handle_as`]: crate::Service::handle_as

use crate::policy::RequestContext;
use std::cell::RefCell;
use std::net::IpAddr;

/// The authenticated caller of one request and where it came from.
#[derive(Debug, Clone, Default)]
pub struct Caller {
    /// Principal ARN.
    pub principal: String,
    /// Region of the credential scope (`None`: the service's own region).
    pub region: Option<String>,
    /// The client's address, when known.
    pub source_ip: Option<IpAddr>,
    /// Whether the request came over TLS, when known.
    pub secure_transport: Option<bool>,
}

#[derive(Debug, Default)]
struct Scope {
    caller: Caller,
    /// Extra condition values (lower-case key, value) of this request.
    values: Vec<(String, String)>,
    /// `kms:EncryptionAlgorithm` of the authorization under way, for an operation whose
    /// authorizations see different algorithms (ReEncrypt's source and destination).
    encryption_algorithm: Option<&'static str>,
    /// The request body whose condition values (see [`super::peek_values`]) are not read yet.
    pending: Option<PendingBody>,
}

/// A request body kept for its condition values, read on first use.
#[derive(Debug)]
struct PendingBody {
    /// The operation's defaults of condition values.
    kind: super::BodyKind,
    body: Vec<u8>,
}

thread_local! {
    static SCOPE: RefCell<Option<Scope>> = const { RefCell::new(None) };
}

/// Restores the previous scope when dropped.
pub(in crate::service) struct ScopeGuard {
    prev: Option<Scope>,
}

impl Drop for ScopeGuard {
    fn drop(&mut self) {
        let prev = self.prev.take();
        SCOPE.with(|s| *s.borrow_mut() = prev);
    }
}

/// Installs `caller` as the scope of the operation running on this thread.
pub(in crate::service) fn enter(caller: &Caller) -> ScopeGuard {
    enter_owned(caller.clone())
}

/// Installs `caller` (taken, not copied) as the scope of the operation running on this thread.
pub(in crate::service) fn enter_owned(caller: Caller) -> ScopeGuard {
    let new = Scope {
        caller,
        values: Vec::new(),
        encryption_algorithm: None,
        pending: None,
    };
    let prev = SCOPE.with(|s| s.borrow_mut().replace(new));
    ScopeGuard { prev }
}

/// Installs a scope with only `principal` unless one is already installed (a direct call of
/// `Service::handle`).
pub(in crate::service) fn ensure(principal: &str) -> Option<ScopeGuard> {
    let active = SCOPE.with(|s| s.borrow().is_some());
    (!active).then(|| {
        enter(&Caller {
            principal: principal.to_string(),
            ..Caller::default()
        })
    })
}

/// Adds a condition value to the current request (ignored outside a scope).
pub(in crate::service) fn add_value(key: &str, value: impl Into<String>) {
    SCOPE.with(|s| {
        if let Some(scope) = s.borrow_mut().as_mut() {
            scope.values.push((key.to_ascii_lowercase(), value.into()));
        }
    });
}

/// Sets the `kms:EncryptionAlgorithm` seen by the authorizations that follow (ignored outside
/// a scope).
pub(in crate::service) fn set_encryption_algorithm(alg: &'static str) {
    SCOPE.with(|s| {
        if let Some(scope) = s.borrow_mut().as_mut() {
            scope.encryption_algorithm = Some(alg);
        }
    });
}

/// Keeps the request body of the current scope, whose condition values are read from it when a
/// policy condition first needs them (ignored outside a scope).
pub(in crate::service) fn set_body(kind: super::BodyKind, body: &[u8]) {
    SCOPE.with(|s| {
        if let Some(scope) = s.borrow_mut().as_mut() {
            scope.pending = Some(PendingBody {
                kind,
                body: body.to_vec(),
            });
        }
    });
}

/// The Region of the current request, if it named one.
pub(in crate::service) fn region() -> Option<String> {
    SCOPE.with(|s| s.borrow().as_ref().and_then(|sc| sc.caller.region.clone()))
}

/// Adds the request-wide condition values (`aws:PrincipalArn`, `aws:CurrentTime`,
/// `aws:EpochTime`, `aws:SourceIp`, `aws:SecureTransport`, `aws:RequestedRegion` and the values
/// read from the body) to `ctx`.
#[allow(
    clippy::cast_possible_truncation,
    reason = "whole seconds of the clock, as IAM gives them: the fraction is dropped on purpose"
)]
pub(in crate::service) fn extend(ctx: &mut RequestContext<'_>) {
    let principal = ctx.principal.to_string();
    ctx.add("aws:principalarn", principal);
    let t = crate::store::now();
    ctx.add("aws:epochtime", format!("{}", t as i64));
    ctx.add("aws:currenttime", iso8601(t as i64));
    SCOPE.with(|s| {
        let mut s = s.borrow_mut();
        let Some(scope) = s.as_mut() else { return };
        if let Some(p) = scope.pending.take() {
            // The body's values come first, as if they had been added when the request began.
            let mut values = super::peek_values(p.kind, &p.body);
            values.append(&mut scope.values);
            scope.values = values;
        }
        if let Some(tls) = scope.caller.secure_transport {
            ctx.add("aws:securetransport", tls.to_string());
        }
        if let Some(ip) = scope.caller.source_ip {
            ctx.add("aws:sourceip", ip.to_string());
        }
        if let Some(r) = &scope.caller.region {
            ctx.add("aws:requestedregion", r.as_str());
        }
        for (k, v) in &scope.values {
            ctx.add(k, v.as_str());
        }
        if let Some(alg) = scope.encryption_algorithm {
            ctx.add("kms:encryptionalgorithm", alg);
        }
    });
}

/// `yyyy-mm-ddThh:mm:ssZ` of epoch seconds.
pub(in crate::service) fn iso8601(secs: i64) -> String {
    let amz = crate::sigv4::format_amz_date(secs);
    // yyyymmddThhmmssZ -> yyyy-mm-ddThh:mm:ssZ
    if amz.len() == 16 {
        format!(
            "{}-{}-{}T{}:{}:{}Z",
            &amz[0..4],
            &amz[4..6],
            &amz[6..8],
            &amz[9..11],
            &amz[11..13],
            &amz[13..15]
        )
    } else {
        amz
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_is_restored_and_values_reach_the_context() {
        let caller = Caller {
            principal: "arn:aws:iam::111122223333:user/a".into(),
            region: Some("eu-west-1".into()),
            source_ip: Some("10.0.0.7".parse().unwrap()),
            secure_transport: Some(true),
        };
        {
            let _g = enter(&caller);
            add_value("kms:RequestAlias", "alias/x");
            let mut ctx = RequestContext {
                principal: "arn:aws:iam::111122223333:user/a",
                ..Default::default()
            };
            extend(&mut ctx);
            assert_eq!(ctx.values["aws:sourceip"], vec!["10.0.0.7".to_string()]);
            assert_eq!(ctx.values["aws:securetransport"], vec!["true".to_string()]);
            assert_eq!(ctx.values["kms:requestalias"], vec!["alias/x".to_string()]);
            assert_eq!(
                ctx.values["aws:requestedregion"],
                vec!["eu-west-1".to_string()]
            );
            let now = &ctx.values["aws:currenttime"][0];
            assert!(crate::policy::parse_date(now).is_some(), "{now}");
        }
        assert!(SCOPE.with(|s| s.borrow().is_none()));
    }

    #[test]
    fn iso_dates() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso8601(1_700_000_000), "2023-11-14T22:13:20Z");
    }
}
