//! The verifying side: a credential table, the checks of the `Authorization` header (its
//! parameters, the credential scope's Region and service, `X-Amz-Date` against the clock, a
//! session token), and the signature, compared in constant time.
//!
//! Derived signing keys (`kSigning`, one per access key, day and Region) are cached, so a
//! request costs one SHA-256 of the body, one of the canonical request and one HMAC. Requests
//! whose `X-Amz-Date` is more than [`MAX_CLOCK_SKEW_S`] away from the server's clock are
//! refused, as AWS does. `X-Amz-Security-Token` is accepted (and, when signed, covered by the
//! signature) but not interpreted, except for credentials registered with a session token.

use crate::canonical::{string_to_sign, SignedRequest};
use crate::date::{format_amz_date, parse_amz_date};
use crate::sign::{signature_under, signing_key};
use crate::Error;
use aws_lc_rs::{constant_time, hmac};
use std::collections::HashMap;
use std::fmt;
use std::sync::RwLock;
use zeroize::Zeroizing;

/// Largest accepted clock difference between client and server, in seconds (AWS: 5 minutes).
pub const MAX_CLOCK_SKEW_S: i64 = 300;
/// Most access keys with cached signing keys before the cache is cleared.
pub const SIGNING_KEY_CACHE_MAX: usize = 4096;
/// Longest Authorization header accepted.
pub const MAX_AUTH_HEADER: usize = 4096;
/// A principal's credential.
#[derive(Clone)]
pub struct Credential {
    /// Secret access key.
    pub secret: Zeroizing<String>,
    /// Principal ARN the key authenticates as.
    pub principal: String,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("secret", &"<redacted>")
            .field("principal", &self.principal)
            .finish()
    }
}

/// Derived signing keys by access key id, then (yyyymmdd, region). Keyed by the access key id
/// alone so that a lookup borrows the request's `&str` instead of allocating a key.
type SigningKeyCache = HashMap<String, Vec<CachedKey>>;

/// One derived signing key of an access key, kept as an HMAC key whose pads are already
/// computed (aws-lc wipes them when the key is dropped).
struct CachedKey {
    date: [u8; 8],
    region: String,
    key: hmac::Key,
}

/// Most (day, region) signing keys kept per access key; the oldest goes first. A client needs
/// one per Region it signs for, plus one for the day before around midnight.
pub const SIGNING_KEYS_PER_ACCESS_KEY: usize = 16;

/// SigV4 verifier with a credential table and a signing-key cache.
pub struct Verifier {
    /// The service name accepted in the credential scope (`kms`).
    service: String,
    region: String,
    credentials: HashMap<String, Credential>,
    /// Session tokens by access key id: a request with such a key must carry the token in
    /// `X-Amz-Security-Token`.
    session_tokens: HashMap<String, Zeroizing<String>>,
    /// Further Regions accepted in the credential scope.
    other_regions: Vec<String>,
    cache: RwLock<SigningKeyCache>,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("region", &self.region)
            .field("access_keys", &self.credentials.keys().collect::<Vec<_>>())
            .finish()
    }
}

struct AuthHeader<'a> {
    access_key: &'a str,
    date: &'a str,
    region: &'a str,
    service: &'a str,
    signed_headers: &'a str,
    signature: &'a str,
}

fn parse_auth<'a>(value: &'a str, service: &str) -> Result<AuthHeader<'a>, Error> {
    let incomplete = |m: &str| Error::Incomplete(m.to_string());
    let rest = value
        .strip_prefix("AWS4-HMAC-SHA256")
        .ok_or_else(|| incomplete("Authorization header requires AWS4-HMAC-SHA256"))?;
    let mut credential = None;
    let mut signed = None;
    let mut signature = None;
    for part in rest.split(',') {
        let part = part.trim();
        if let Some(v) = part.strip_prefix("Credential=") {
            credential = Some(v);
        } else if let Some(v) = part.strip_prefix("SignedHeaders=") {
            signed = Some(v);
        } else if let Some(v) = part.strip_prefix("Signature=") {
            signature = Some(v);
        }
    }
    let credential = credential
        .ok_or_else(|| incomplete("Authorization header requires 'Credential' parameter"))?;
    let signed_headers = signed
        .ok_or_else(|| incomplete("Authorization header requires 'SignedHeaders' parameter"))?;
    let signature = signature
        .ok_or_else(|| incomplete("Authorization header requires 'Signature' parameter"))?;
    let mut it = credential.split('/');
    let (Some(access_key), Some(date), Some(region), Some(service), Some("aws4_request"), None) = (
        it.next(),
        it.next(),
        it.next(),
        it.next(),
        it.next(),
        it.next(),
    ) else {
        return Err(Error::Incomplete(format!(
            "Credential should be scoped to a valid region and service: AKID/yyyymmdd/region/{service}/aws4_request"
        )));
    };
    if date.len() != 8 || !date.bytes().all(|b| b.is_ascii_digit()) {
        return Err(incomplete("Credential date must be yyyymmdd"));
    }
    Ok(AuthHeader {
        access_key,
        date,
        region,
        service,
        signed_headers,
        signature,
    })
}

impl Verifier {
    /// A verifier for `service` in `region` with these credentials (access key id ->
    /// credential).
    pub fn new(service: &str, region: &str, credentials: HashMap<String, Credential>) -> Self {
        Self {
            service: service.to_string(),
            region: region.to_string(),
            credentials,
            session_tokens: HashMap::new(),
            other_regions: Vec::new(),
            cache: RwLock::new(HashMap::new()),
        }
    }

    /// Also accepts credential scopes of these Regions (one server answering for several).
    pub fn with_regions(mut self, regions: &[String]) -> Self {
        self.other_regions.extend(regions.iter().cloned());
        self
    }

    /// Requires `token` in `X-Amz-Security-Token` on requests signed with `access_key` (a
    /// session credential, as STS issues them).
    pub fn with_session_token(mut self, access_key: &str, token: &str) -> Self {
        self.session_tokens
            .insert(access_key.to_string(), Zeroizing::new(token.to_string()));
        self
    }

    /// Verifies the request's signature at `now` (seconds since the epoch) and returns the
    /// principal ARN it authenticates.
    pub fn verify(&self, req: &SignedRequest<'_>, now: i64) -> Result<String, Error> {
        self.verify_scoped(req, now).map(|(principal, _)| principal)
    }

    /// Like [`Verifier::verify`], and also returns the Region of the credential scope.
    pub fn verify_scoped(
        &self,
        req: &SignedRequest<'_>,
        now: i64,
    ) -> Result<(String, String), Error> {
        let header = |name: &str| {
            req.headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| *v)
        };
        let auth = header("authorization")
            .ok_or_else(|| Error::MissingToken("Request is missing Authentication Token".into()))?;
        if auth.len() > MAX_AUTH_HEADER {
            return Err(Error::Incomplete("Authorization header is too long".into()));
        }
        let auth = std::str::from_utf8(auth)
            .map_err(|_| Error::Incomplete("Authorization is not text".into()))?;
        let auth = parse_auth(auth, &self.service)?;
        let cred = self.credentials.get(auth.access_key).ok_or_else(|| {
            Error::UnrecognizedClient(
                "The security token included in the request is invalid.".into(),
            )
        })?;
        if let Some(want) = self.session_tokens.get(auth.access_key) {
            let got = header("x-amz-security-token").unwrap_or_default();
            if constant_time::verify_slices_are_equal(want.as_bytes(), got).is_err() {
                return Err(Error::UnrecognizedClient(
                    "The security token included in the request is invalid.".into(),
                ));
            }
        }
        let region_ok =
            auth.region == self.region || self.other_regions.iter().any(|r| r == auth.region);
        if auth.service != self.service || !region_ok {
            return Err(Error::Invalid(format!(
                "Credential should be scoped to a valid region and service ('{}', '{}')",
                self.region, self.service
            )));
        }
        let amz_date = header("x-amz-date")
            .and_then(|v| std::str::from_utf8(v).ok())
            .ok_or_else(|| {
                Error::Incomplete(
                    "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header".into(),
                )
            })?;
        let when = parse_amz_date(amz_date)
            .ok_or_else(|| Error::Incomplete(format!("X-Amz-Date {amz_date:?} is malformed")))?;
        if !amz_date.starts_with(auth.date) {
            return Err(Error::Invalid(
                "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP".into(),
            ));
        }
        if (now - when).abs() > MAX_CLOCK_SKEW_S {
            return Err(Error::Invalid(format!(
                "Signature expired: {amz_date} is now earlier than {} ({} - 5 min.)",
                format_amz_date(now - MAX_CLOCK_SKEW_S),
                format_amz_date(now)
            )));
        }
        let mut scope =
            String::with_capacity(auth.date.len() + auth.region.len() + auth.service.len() + 15);
        for part in [
            auth.date,
            "/",
            auth.region,
            "/",
            auth.service,
            "/aws4_request",
        ] {
            scope.push_str(part);
        }
        let sts = string_to_sign(req, auth.signed_headers, amz_date, &scope)?;
        let expected = self.signature(auth.access_key, auth.date, auth.region, cred, &sts);
        if constant_time::verify_slices_are_equal(&expected, auth.signature.as_bytes()).is_err() {
            return Err(Error::Invalid(
                "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.".into(),
            ));
        }
        Ok((cred.principal.clone(), auth.region.to_string()))
    }

    /// The signature of `sts` under the access key's signing key for `date` and `region`,
    /// computed under the cache's read lock when the key is cached (no copy of the key), else
    /// derived, cached and used.
    fn signature(
        &self,
        access_key: &str,
        date: &str,
        region: &str,
        cred: &Credential,
        sts: &str,
    ) -> [u8; 64] {
        let mut d = [0u8; 8];
        d.copy_from_slice(&date.as_bytes()[..8]);
        if let Ok(cache) = self.cache.read() {
            if let Some(k) = cache
                .get(access_key)
                .and_then(|keys| keys.iter().find(|k| k.date == d && k.region == region))
            {
                return signature_under(&k.key, sts);
            }
        }
        let raw = signing_key(&cred.secret, date, region, &self.service);
        let k = hmac::Key::new(hmac::HMAC_SHA256, &*raw);
        let expected = signature_under(&k, sts);
        if let Ok(mut cache) = self.cache.write() {
            if cache.len() >= SIGNING_KEY_CACHE_MAX {
                cache.clear();
            }
            let keys = cache.entry(access_key.to_string()).or_default();
            if !keys.iter().any(|c| c.date == d && c.region == region) {
                if keys.len() >= SIGNING_KEYS_PER_ACCESS_KEY {
                    keys.remove(0);
                }
                keys.push(CachedKey {
                    date: d,
                    region: region.to_string(),
                    key: k,
                });
            }
        }
        expected
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sign::{sign_request, Scope};

    fn verifier() -> Verifier {
        let mut creds = HashMap::new();
        creds.insert(
            "AKIDEXAMPLE0000001".to_string(),
            Credential {
                secret: Zeroizing::new("secret-secret-secret".into()),
                principal: "arn:aws:iam::111122223333:root".into(),
            },
        );
        Verifier::new("kms", "us-east-1", creds)
    }

    fn signed(now: i64, akid: &str, secret: &str, body: &[u8]) -> (String, String) {
        let amz = format_amz_date(now);
        let headers: Vec<(&str, &[u8])> = vec![
            ("host", b"localhost"),
            ("x-amz-date", amz.as_bytes()),
            ("x-amz-target", b"TrentService.ListKeys"),
        ];
        let req = SignedRequest {
            method: "POST",
            path: "/",
            query: "",
            headers: &headers,
            body,
        };
        let key = signing_key(secret, &amz[..8], "us-east-1", "kms");
        let auth = sign_request(
            akid,
            &key,
            Scope {
                date: &amz[..8],
                region: "us-east-1",
                service: "kms",
            },
            &amz,
            &req,
            "host;x-amz-date;x-amz-target",
        )
        .unwrap();
        (amz, auth)
    }

    fn check(v: &Verifier, now: i64, amz: &str, auth: &str, body: &[u8]) -> Result<String, Error> {
        let headers: Vec<(&str, &[u8])> = vec![
            ("Host", b"localhost"),
            ("X-Amz-Date", amz.as_bytes()),
            ("X-Amz-Target", b"TrentService.ListKeys"),
            ("Authorization", auth.as_bytes()),
        ];
        v.verify(
            &SignedRequest {
                method: "POST",
                path: "/",
                query: "",
                headers: &headers,
                body,
            },
            now,
        )
    }

    #[test]
    fn verify_accepts_good_and_rejects_bad() {
        let v = verifier();
        let now = 1_700_000_000;
        let (amz, auth) = signed(now, "AKIDEXAMPLE0000001", "secret-secret-secret", b"{}");
        assert_eq!(
            check(&v, now, &amz, &auth, b"{}").unwrap(),
            "arn:aws:iam::111122223333:root"
        );
        // Cached key gives the same answer.
        assert!(check(&v, now + 1, &amz, &auth, b"{}").is_ok());
        assert!(matches!(
            check(&v, now, &amz, &auth, b"{ }"),
            Err(Error::Invalid(_))
        ));
        assert!(matches!(
            check(&v, now + 301, &amz, &auth, b"{}"),
            Err(Error::Invalid(m)) if m.contains("expired")
        ));
        let (amz2, auth2) = signed(now, "AKIDEXAMPLE0000001", "wrong-secret-wrong", b"{}");
        assert!(matches!(
            check(&v, now, &amz2, &auth2, b"{}"),
            Err(Error::Invalid(_))
        ));
        let (amz3, auth3) = signed(now, "AKIDUNKNOWN0000001", "secret-secret-secret", b"{}");
        assert!(matches!(
            check(&v, now, &amz3, &auth3, b"{}"),
            Err(Error::UnrecognizedClient(_))
        ));
        assert!(matches!(
            check(&v, now, &amz, "AWS4-HMAC-SHA256 garbage", b"{}"),
            Err(Error::Incomplete(_))
        ));
    }

    #[test]
    fn session_credentials_need_their_token() {
        let v = verifier().with_session_token("AKIDEXAMPLE0000001", "session-token-0001");
        let now = 1_700_000_000;
        let (amz, auth) = signed(now, "AKIDEXAMPLE0000001", "secret-secret-secret", b"{}");
        let call = |token: Option<&[u8]>| {
            let mut headers: Vec<(&str, &[u8])> = vec![
                ("Host", b"localhost"),
                ("X-Amz-Date", amz.as_bytes()),
                ("X-Amz-Target", b"TrentService.ListKeys"),
                ("Authorization", auth.as_bytes()),
            ];
            if let Some(t) = token {
                headers.push(("X-Amz-Security-Token", t));
            }
            v.verify(
                &SignedRequest {
                    method: "POST",
                    path: "/",
                    query: "",
                    headers: &headers,
                    body: b"{}",
                },
                now,
            )
        };
        assert!(call(Some(b"session-token-0001")).is_ok());
        for bad in [None, Some(&b"session-token-0002"[..]), Some(&b""[..])] {
            assert!(matches!(call(bad), Err(Error::UnrecognizedClient(_))));
        }
        // A credential without a session token ignores the header.
        assert!(check(&verifier(), now, &amz, &auth, b"{}").is_ok());
    }
}
