//! AWS Signature Version 4 verification for incoming requests.
//!
//! The verifier rebuilds the canonical request from the method, path, query, the headers the
//! client says it signed and the SHA-256 of the body, and compares the HMAC-SHA256 signature in
//! constant time. Derived signing keys (`kSigning`, one per access key, day and region) are
//! cached, so a request costs one SHA-256 of the body, one of the canonical request and one
//! HMAC. Requests whose `X-Amz-Date` is more than [`MAX_CLOCK_SKEW_S`] away from the server's
//! clock are refused, as AWS does. `X-Amz-Security-Token` is accepted (and, when signed, covered
//! by the signature) but not interpreted.

use crate::error::{KmsError, KmsResult};
use aws_lc_rs::{constant_time, digest, hmac};
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
/// Most signed headers accepted.
pub const MAX_SIGNED_HEADERS: usize = 64;
/// The only service name accepted in the credential scope.
pub const SERVICE: &str = "kms";

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

/// What the verifier needs from a request.
#[derive(Debug)]
pub struct SignedRequest<'a> {
    /// HTTP method.
    pub method: &'a str,
    /// Raw path.
    pub path: &'a str,
    /// Raw query string (without `?`).
    pub query: &'a str,
    /// Headers as (name, value); names in any case.
    pub headers: &'a [(&'a str, &'a [u8])],
    /// Body bytes.
    pub body: &'a [u8],
}

/// Derived signing keys by access key id, then (yyyymmdd, region). Keyed by the access key id
/// alone so that a lookup borrows the request's `&str` instead of allocating a key.
type SigningKeyCache = HashMap<String, Vec<CachedKey>>;

/// One derived signing key of an access key.
struct CachedKey {
    date: [u8; 8],
    region: String,
    key: Zeroizing<[u8; 32]>,
}

/// Most (day, region) signing keys kept per access key; the oldest goes first. A client needs
/// one per Region it signs for, plus one for the day before around midnight.
pub const SIGNING_KEYS_PER_ACCESS_KEY: usize = 16;

/// SigV4 verifier with a credential table and a signing-key cache.
pub struct Verifier {
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

fn parse_auth(value: &str) -> KmsResult<AuthHeader<'_>> {
    let incomplete = |m: &str| KmsError::IncompleteSignature(m.to_string());
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
        return Err(incomplete(
            "Credential should be scoped to a valid region and service: AKID/yyyymmdd/region/kms/aws4_request",
        ));
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

/// Seconds since the epoch for `YYYYMMDDTHHMMSSZ`.
pub fn parse_amz_date(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        if !part.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        part.parse().ok()
    };
    let (y, m, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (hh, mm, ss) = (num(9..11)?, num(11..13)?, num(13..15)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    Some(days_from_civil(y, m, d) * 86_400 + hh * 3600 + mm * 60 + ss)
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Formats seconds since the epoch as `YYYYMMDDTHHMMSSZ`.
pub fn format_amz_date(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~')
}

fn uri_encode(out: &mut String, bytes: &[u8], keep_slash: bool) {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    for &b in bytes {
        if is_unreserved(b) || (keep_slash && b == b'/') {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(char::from(DIGITS[usize::from(b >> 4)]));
            out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
        }
    }
}

fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hexval = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (hexval(b[i + 1]), hexval(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

fn canonical_query(query: &str) -> String {
    if query.is_empty() {
        return String::new();
    }
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let mut ek = String::new();
            uri_encode(&mut ek, &percent_decode(k), false);
            let mut ev = String::new();
            uri_encode(&mut ev, &percent_decode(v), false);
            (ek, ev)
        })
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// Lower-case hex of a 32-byte digest, on the stack (the verifier's hot path).
fn hex32(bytes: &[u8]) -> [u8; 64] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 64];
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes.iter().take(32)) {
        pair[0] = DIGITS[usize::from(b >> 4)];
        pair[1] = DIGITS[usize::from(b & 0x0f)];
    }
    out
}

/// [`hex32`] as text.
fn hex32_str(buf: &[u8; 64]) -> &str {
    // Only ASCII hex digits are written into the buffer.
    std::str::from_utf8(buf).unwrap_or_default()
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    let k = hmac::Key::new(hmac::HMAC_SHA256, key);
    let tag = hmac::sign(&k, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    out
}

/// Derives `kSigning` for a secret, day (`yyyymmdd`), region and service.
pub fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> Zeroizing<[u8; 32]> {
    let k_secret = Zeroizing::new(format!("AWS4{secret}"));
    let k_date = Zeroizing::new(hmac_sha256(k_secret.as_bytes(), date.as_bytes()));
    let k_region = Zeroizing::new(hmac_sha256(&*k_date, region.as_bytes()));
    let k_service = Zeroizing::new(hmac_sha256(&*k_region, service.as_bytes()));
    Zeroizing::new(hmac_sha256(&*k_service, b"aws4_request"))
}

/// Builds the string to sign for a request (shared by the verifier and by test/bench clients).
pub fn string_to_sign(
    req: &SignedRequest<'_>,
    signed_headers: &str,
    amz_date: &str,
    scope: &str,
) -> KmsResult<String> {
    let mut canonical = String::with_capacity(512);
    canonical.push_str(req.method);
    canonical.push('\n');
    if req.path.is_empty() {
        canonical.push('/');
    } else {
        // Non-S3 services encode the already-encoded path once more, segment by segment.
        uri_encode(&mut canonical, req.path.as_bytes(), true);
    }
    canonical.push('\n');
    if !req.query.is_empty() {
        canonical.push_str(&canonical_query(req.query));
    }
    canonical.push('\n');
    let mut content_sha = None;
    if signed_headers.split(';').count() > MAX_SIGNED_HEADERS {
        return Err(KmsError::IncompleteSignature(
            "too many signed headers".into(),
        ));
    }
    for name in signed_headers.split(';') {
        if name.is_empty() || name.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(KmsError::IncompleteSignature(
                "SignedHeaders must be lower-case names separated by ';'".into(),
            ));
        }
        canonical.push_str(name);
        canonical.push(':');
        let mut first = true;
        let mut found = false;
        for (hn, hv) in req.headers {
            if hn.eq_ignore_ascii_case(name) {
                found = true;
                if !first {
                    canonical.push(',');
                }
                first = false;
                let v = std::str::from_utf8(hv).map_err(|_| {
                    KmsError::InvalidSignature(format!("header {name} is not valid text"))
                })?;
                let mut last_space = false;
                for c in v.trim().chars() {
                    if c == ' ' || c == '\t' {
                        if !last_space {
                            canonical.push(' ');
                        }
                        last_space = true;
                    } else {
                        canonical.push(c);
                        last_space = false;
                    }
                }
            }
        }
        if !found {
            return Err(KmsError::InvalidSignature(format!(
                "signed header {name} is missing from the request"
            )));
        }
        canonical.push('\n');
        if name == "x-amz-content-sha256" {
            content_sha = Some(());
        }
    }
    canonical.push('\n');
    canonical.push_str(signed_headers);
    canonical.push('\n');
    let body_hash_hex = hex32(digest::digest(&digest::SHA256, req.body).as_ref());
    let body_hash = hex32_str(&body_hash_hex);
    if content_sha.is_some() {
        let claimed = req
            .headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("x-amz-content-sha256"))
            .map(|(_, v)| *v)
            .unwrap_or_default();
        if claimed != body_hash.as_bytes() {
            return Err(KmsError::InvalidSignature(
                "The provided x-amz-content-sha256 header does not match the body".into(),
            ));
        }
    }
    canonical.push_str(body_hash);
    let creq_hash = hex32(digest::digest(&digest::SHA256, canonical.as_bytes()).as_ref());
    // The canonical request's buffer is reused for the string to sign.
    canonical.clear();
    canonical.push_str("AWS4-HMAC-SHA256\n");
    canonical.push_str(amz_date);
    canonical.push('\n');
    canonical.push_str(scope);
    canonical.push('\n');
    canonical.push_str(hex32_str(&creq_hash));
    Ok(canonical)
}

impl Verifier {
    /// A verifier for `region` with these credentials (access key id -> credential).
    pub fn new(region: &str, credentials: HashMap<String, Credential>) -> Self {
        Self {
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
    pub fn verify(&self, req: &SignedRequest<'_>, now: i64) -> KmsResult<String> {
        self.verify_scoped(req, now).map(|(principal, _)| principal)
    }

    /// Like [`Verifier::verify`], and also returns the Region of the credential scope.
    pub fn verify_scoped(&self, req: &SignedRequest<'_>, now: i64) -> KmsResult<(String, String)> {
        let header = |name: &str| {
            req.headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| *v)
        };
        let auth = header("authorization").ok_or_else(|| {
            KmsError::MissingAuthenticationToken("Request is missing Authentication Token".into())
        })?;
        if auth.len() > MAX_AUTH_HEADER {
            return Err(KmsError::IncompleteSignature(
                "Authorization header is too long".into(),
            ));
        }
        let auth = std::str::from_utf8(auth)
            .map_err(|_| KmsError::IncompleteSignature("Authorization is not text".into()))?;
        let auth = parse_auth(auth)?;
        let cred = self.credentials.get(auth.access_key).ok_or_else(|| {
            KmsError::UnrecognizedClient(
                "The security token included in the request is invalid.".into(),
            )
        })?;
        if let Some(want) = self.session_tokens.get(auth.access_key) {
            let got = header("x-amz-security-token").unwrap_or_default();
            if constant_time::verify_slices_are_equal(want.as_bytes(), got).is_err() {
                return Err(KmsError::UnrecognizedClient(
                    "The security token included in the request is invalid.".into(),
                ));
            }
        }
        let region_ok =
            auth.region == self.region || self.other_regions.iter().any(|r| r == auth.region);
        if auth.service != SERVICE || !region_ok {
            return Err(KmsError::InvalidSignature(format!(
                "Credential should be scoped to a valid region and service ('{}', '{SERVICE}')",
                self.region
            )));
        }
        let amz_date = header("x-amz-date")
            .and_then(|v| std::str::from_utf8(v).ok())
            .ok_or_else(|| {
                KmsError::IncompleteSignature(
                    "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header".into(),
                )
            })?;
        let when = parse_amz_date(amz_date).ok_or_else(|| {
            KmsError::IncompleteSignature(format!("X-Amz-Date {amz_date:?} is malformed"))
        })?;
        if !amz_date.starts_with(auth.date) {
            return Err(KmsError::InvalidSignature(
                "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP".into(),
            ));
        }
        if (now - when).abs() > MAX_CLOCK_SKEW_S {
            return Err(KmsError::InvalidSignature(format!(
                "Signature expired: {amz_date} is now earlier than {} ({} - 5 min.)",
                format_amz_date(now - MAX_CLOCK_SKEW_S),
                format_amz_date(now)
            )));
        }
        let scope = format!(
            "{}/{}/{}/aws4_request",
            auth.date, auth.region, auth.service
        );
        let sts = string_to_sign(req, auth.signed_headers, amz_date, &scope)?;
        let key = self.cached_signing_key(auth.access_key, auth.date, auth.region, cred);
        let expected = hex32(&hmac_sha256(&*key, sts.as_bytes()));
        if constant_time::verify_slices_are_equal(&expected, auth.signature.as_bytes()).is_err() {
            return Err(KmsError::InvalidSignature(
                "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.".into(),
            ));
        }
        Ok((cred.principal.clone(), auth.region.to_string()))
    }

    fn cached_signing_key(
        &self,
        access_key: &str,
        date: &str,
        region: &str,
        cred: &Credential,
    ) -> Zeroizing<[u8; 32]> {
        let mut d = [0u8; 8];
        d.copy_from_slice(&date.as_bytes()[..8]);
        if let Ok(cache) = self.cache.read() {
            if let Some(k) = cache
                .get(access_key)
                .and_then(|keys| keys.iter().find(|k| k.date == d && k.region == region))
            {
                return k.key.clone();
            }
        }
        let k = signing_key(&cred.secret, date, region, SERVICE);
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
                    key: k.clone(),
                });
            }
        }
        k
    }
}

/// Signs a request as an AWS SDK would; returns the headers to add (`x-amz-date`,
/// `authorization`). Used by tests, benchmarks and tools that talk to the service.
pub fn sign_request(
    access_key: &str,
    key: &[u8; 32],
    date_scope: (&str, &str),
    amz_date: &str,
    req: &SignedRequest<'_>,
    signed_headers: &str,
) -> KmsResult<String> {
    let (date, region) = date_scope;
    let scope = format!("{date}/{region}/{SERVICE}/aws4_request");
    let sts = string_to_sign(req, signed_headers, amz_date, &scope)?;
    let sig = hex::encode(hmac_sha256(key, sts.as_bytes()));
    Ok(format!(
        "AWS4-HMAC-SHA256 Credential={access_key}/{scope}, SignedHeaders={signed_headers}, Signature={sig}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip() {
        let t = parse_amz_date("20150830T123600Z").unwrap();
        assert_eq!(t, 1_440_938_160);
        assert_eq!(format_amz_date(t), "20150830T123600Z");
        assert!(parse_amz_date("20151330T123600Z").is_none());
        assert!(parse_amz_date("2015083OT123600Z").is_none());
        assert!(parse_amz_date("").is_none());
    }

    /// The example from AWS's SigV4 documentation (IAM ListUsers, GET with a query).
    #[test]
    fn aws_documented_example() {
        let headers: Vec<(&str, &[u8])> = vec![
            (
                "Content-Type",
                b"application/x-www-form-urlencoded; charset=utf-8",
            ),
            ("Host", b"iam.amazonaws.com"),
            ("X-Amz-Date", b"20150830T123600Z"),
        ];
        let req = SignedRequest {
            method: "GET",
            path: "/",
            query: "Action=ListUsers&Version=2010-05-08",
            headers: &headers,
            body: b"",
        };
        let sts = string_to_sign(
            &req,
            "content-type;host;x-amz-date",
            "20150830T123600Z",
            "20150830/us-east-1/iam/aws4_request",
        )
        .unwrap();
        assert!(sts.ends_with("f536975d06c0309214f805bb90ccff089219ecd68b2577efef23edd43b7e1a59"));
        let key = signing_key(
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            "20150830",
            "us-east-1",
            "iam",
        );
        let sig = hex::encode(hmac_sha256(&*key, sts.as_bytes()));
        assert_eq!(
            sig,
            "5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"
        );
    }

    fn verifier() -> Verifier {
        let mut creds = HashMap::new();
        creds.insert(
            "AKIDEXAMPLE0000001".to_string(),
            Credential {
                secret: Zeroizing::new("secret-secret-secret".into()),
                principal: "arn:aws:iam::111122223333:root".into(),
            },
        );
        Verifier::new("us-east-1", creds)
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
            (&amz[..8], "us-east-1"),
            &amz,
            &req,
            "host;x-amz-date;x-amz-target",
        )
        .unwrap();
        (amz, auth)
    }

    fn check(v: &Verifier, now: i64, amz: &str, auth: &str, body: &[u8]) -> KmsResult<String> {
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
            Err(KmsError::InvalidSignature(_))
        ));
        assert!(matches!(
            check(&v, now + 301, &amz, &auth, b"{}"),
            Err(KmsError::InvalidSignature(m)) if m.contains("expired")
        ));
        let (amz2, auth2) = signed(now, "AKIDEXAMPLE0000001", "wrong-secret-wrong", b"{}");
        assert!(matches!(
            check(&v, now, &amz2, &auth2, b"{}"),
            Err(KmsError::InvalidSignature(_))
        ));
        let (amz3, auth3) = signed(now, "AKIDUNKNOWN0000001", "secret-secret-secret", b"{}");
        assert!(matches!(
            check(&v, now, &amz3, &auth3, b"{}"),
            Err(KmsError::UnrecognizedClient(_))
        ));
        assert!(matches!(
            check(&v, now, &amz, "AWS4-HMAC-SHA256 garbage", b"{}"),
            Err(KmsError::IncompleteSignature(_))
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
            assert!(matches!(call(bad), Err(KmsError::UnrecognizedClient(_))));
        }
        // A credential without a session token ignores the header.
        assert!(check(&verifier(), now, &amz, &auth, b"{}").is_ok());
    }

    #[test]
    fn percent_decoding_is_bounded() {
        assert_eq!(percent_decode("a%2"), b"a%2");
        assert_eq!(percent_decode("a%20b"), b"a b");
        assert_eq!(percent_decode("%"), b"%");
        assert_eq!(canonical_query("b=2&a=1"), "a=1&b=2");
    }
}
