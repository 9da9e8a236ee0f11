//! AWS Signature Version 4 verification for incoming requests, on [`cloister_sigv4`].
//!
//! The signing and verification code is the `cloister-sigv4` crate's (one copy for the key
//! service, the SDK and the tools that sign requests); this module fixes the service name to
//! `kms`, keeps the names the server, tests and benchmarks use, and maps the crate's
//! [`cloister_sigv4::Error`] onto the service's errors (`MissingAuthenticationToken`,
//! `IncompleteSignature`, `InvalidSignature`, `UnrecognizedClient`, with AWS's messages).

use crate::error::{KmsError, KmsResult};
use std::collections::HashMap;

pub use cloister_sigv4::{
    format_amz_date, parse_amz_date, signing_key, Credential, SignedRequest, MAX_AUTH_HEADER,
    MAX_CLOCK_SKEW_S, MAX_SIGNED_HEADERS, SIGNING_KEYS_PER_ACCESS_KEY, SIGNING_KEY_CACHE_MAX,
};

/// The only service name accepted in the credential scope.
pub const SERVICE: &str = "kms";

impl From<cloister_sigv4::Error> for KmsError {
    fn from(e: cloister_sigv4::Error) -> Self {
        use cloister_sigv4::Error as E;
        match e {
            E::MissingToken(m) => KmsError::MissingAuthenticationToken(m),
            E::Incomplete(m) => KmsError::IncompleteSignature(m),
            E::Invalid(m) => KmsError::InvalidSignature(m),
            E::UnrecognizedClient(m) => KmsError::UnrecognizedClient(m),
        }
    }
}

/// Builds the string to sign for a request (shared by the verifier and by test/bench clients).
pub fn string_to_sign(
    req: &SignedRequest<'_>,
    signed_headers: &str,
    amz_date: &str,
    scope: &str,
) -> KmsResult<String> {
    Ok(cloister_sigv4::string_to_sign(
        req,
        signed_headers,
        amz_date,
        scope,
    )?)
}

/// Signs a request for the `kms` service as an AWS SDK would; returns the `Authorization`
/// header's value. Used by tests, benchmarks and tools that talk to the service.
pub fn sign_request(
    access_key: &str,
    key: &[u8; 32],
    date_scope: (&str, &str),
    amz_date: &str,
    req: &SignedRequest<'_>,
    signed_headers: &str,
) -> KmsResult<String> {
    let (date, region) = date_scope;
    let scope = cloister_sigv4::Scope {
        date,
        region,
        service: SERVICE,
    };
    Ok(cloister_sigv4::sign_request(
        access_key,
        key,
        scope,
        amz_date,
        req,
        signed_headers,
    )?)
}

/// SigV4 verifier of the `kms` service, with a credential table and a signing-key cache.
#[derive(Debug)]
pub struct Verifier(cloister_sigv4::Verifier);

impl Verifier {
    /// A verifier for `region` with these credentials (access key id -> credential).
    pub fn new(region: &str, credentials: HashMap<String, Credential>) -> Self {
        Self(cloister_sigv4::Verifier::new(SERVICE, region, credentials))
    }

    /// Also accepts credential scopes of these Regions (one server answering for several).
    pub fn with_regions(self, regions: &[String]) -> Self {
        Self(self.0.with_regions(regions))
    }

    /// Requires `token` in `X-Amz-Security-Token` on requests signed with `access_key` (a
    /// session credential, as STS issues them).
    pub fn with_session_token(self, access_key: &str, token: &str) -> Self {
        Self(self.0.with_session_token(access_key, token))
    }

    /// Verifies the request's signature at `now` (seconds since the epoch) and returns the
    /// principal ARN it authenticates.
    pub fn verify(&self, req: &SignedRequest<'_>, now: i64) -> KmsResult<String> {
        Ok(self.0.verify(req, now)?)
    }

    /// Like [`Verifier::verify`], and also returns the Region of the credential scope.
    pub fn verify_scoped(&self, req: &SignedRequest<'_>, now: i64) -> KmsResult<(String, String)> {
        Ok(self.0.verify_scoped(req, now)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zeroize::Zeroizing;

    /// The crate's refusals become the service's errors, with their messages.
    #[test]
    fn errors_map_to_aws_types() {
        let mut creds = HashMap::new();
        creds.insert(
            "AKIDEXAMPLE0000001".to_string(),
            Credential {
                secret: Zeroizing::new("secret-secret-secret".into()),
                principal: "arn:aws:iam::111122223333:root".into(),
            },
        );
        let v = Verifier::new("us-east-1", creds);
        let now = 1_700_000_000;
        let amz = format_amz_date(now);
        let check = |auth: Option<&str>| {
            let mut headers: Vec<(&str, &[u8])> =
                vec![("Host", b"localhost"), ("X-Amz-Date", amz.as_bytes())];
            if let Some(a) = auth {
                headers.push(("Authorization", a.as_bytes()));
            }
            let req = SignedRequest {
                method: "POST",
                path: "/",
                query: "",
                headers: &headers,
                body: b"{}",
            };
            v.verify(&req, now)
        };
        assert!(matches!(
            check(None),
            Err(KmsError::MissingAuthenticationToken(m)) if m == "Request is missing Authentication Token"
        ));
        assert!(matches!(
            check(Some("AWS4-HMAC-SHA256 garbage")),
            Err(KmsError::IncompleteSignature(_))
        ));
        let scope = format!("{}/us-east-1/kms/aws4_request", &amz[..8]);
        let unknown = format!(
            "AWS4-HMAC-SHA256 Credential=AKIDUNKNOWN/{scope}, SignedHeaders=host, Signature=00"
        );
        assert!(matches!(
            check(Some(&unknown)),
            Err(KmsError::UnrecognizedClient(_))
        ));
        let key = signing_key("secret-secret-secret", &amz[..8], "us-east-1", SERVICE);
        let headers: Vec<(&str, &[u8])> =
            vec![("host", b"localhost"), ("x-amz-date", amz.as_bytes())];
        let req = SignedRequest {
            method: "POST",
            path: "/",
            query: "",
            headers: &headers,
            body: b"{ }",
        };
        let auth = sign_request(
            "AKIDEXAMPLE0000001",
            &key,
            (&amz[..8], "us-east-1"),
            &amz,
            &req,
            "host;x-amz-date",
        )
        .unwrap();
        assert!(matches!(
            check(Some(&auth)),
            Err(KmsError::InvalidSignature(_))
        ));
    }
}
