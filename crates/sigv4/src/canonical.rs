//! The request as a SigV4 signature covers it: the canonical request (method, path encoded
//! once more, sorted query, the signed headers with their values trimmed and inner spaces
//! collapsed, the signed header list, the body's SHA-256) and the string to sign over it.
//!
//! The same function serves both sides: a client signs the string it builds, a server
//! rebuilds it from what it received. Names in `SignedHeaders` must be lower-case and present
//! in the request; a signed `x-amz-content-sha256` must match the body.

use crate::Error;
use aws_lc_rs::digest;

/// Most signed headers accepted.
pub const MAX_SIGNED_HEADERS: usize = 64;

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
            let hexval = |c: u8| char::from(c).to_digit(16);
            let byte = hexval(b[i + 1])
                .zip(hexval(b[i + 2]))
                .and_then(|(h, l)| u8::try_from(h * 16 + l).ok());
            if let Some(byte) = byte {
                out.push(byte);
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
pub(crate) fn hex32(bytes: &[u8]) -> [u8; 64] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 64];
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes.iter().take(32)) {
        pair[0] = DIGITS[usize::from(b >> 4)];
        pair[1] = DIGITS[usize::from(b & 0x0f)];
    }
    out
}

/// [`hex32`] as text.
pub(crate) fn hex32_str(buf: &[u8; 64]) -> &str {
    // Only ASCII hex digits are written into the buffer.
    std::str::from_utf8(buf).unwrap_or_default()
}

/// Builds the string to sign for a request (shared by the verifier and by clients).
pub fn string_to_sign(
    req: &SignedRequest<'_>,
    signed_headers: &str,
    amz_date: &str,
    scope: &str,
) -> Result<String, Error> {
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
        return Err(Error::Incomplete("too many signed headers".into()));
    }
    for name in signed_headers.split(';') {
        if name.is_empty() || name.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(Error::Incomplete(
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
                let v = std::str::from_utf8(hv)
                    .map_err(|_| Error::Invalid(format!("header {name} is not valid text")))?;
                let v = v.trim();
                if !v.contains("  ") && !v.contains('\t') {
                    // Nothing to fold (the usual case): the value as it is.
                    canonical.push_str(v);
                    continue;
                }
                let mut last_space = false;
                for c in v.chars() {
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
            return Err(Error::Invalid(format!(
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
            return Err(Error::Invalid(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding_is_bounded() {
        assert_eq!(percent_decode("a%2"), b"a%2");
        assert_eq!(percent_decode("a%20b"), b"a b");
        assert_eq!(percent_decode("%"), b"%");
        assert_eq!(canonical_query("b=2&a=1"), "a=1&b=2");
    }

    #[test]
    fn signed_headers_are_checked() {
        let headers: Vec<(&str, &[u8])> = vec![("Host", b"h"), ("x-amz-date", b"d")];
        let req = SignedRequest {
            method: "POST",
            path: "/",
            query: "",
            headers: &headers,
            body: b"",
        };
        assert!(matches!(
            string_to_sign(&req, "Host", "d", "s"),
            Err(Error::Incomplete(_))
        ));
        assert!(matches!(
            string_to_sign(&req, "host;x-amz-target", "d", "s"),
            Err(Error::Invalid(m)) if m == "signed header x-amz-target is missing from the request"
        ));
        let many = vec!["a"; MAX_SIGNED_HEADERS + 1].join(";");
        assert!(matches!(
            string_to_sign(&req, &many, "d", "s"),
            Err(Error::Incomplete(_))
        ));
        assert!(string_to_sign(&req, "host;x-amz-date", "d", "s").is_ok());
    }
}
