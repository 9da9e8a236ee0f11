//! The signing side: the derived signing key (`kSigning`), the signature over a string to
//! sign, and the `Authorization` header of a request, as AWS's SDKs write it.

use crate::canonical::{hex32, string_to_sign, SignedRequest};
use crate::Error;
use aws_lc_rs::hmac;
use zeroize::Zeroizing;

/// The credential scope of a signature: day (`yyyymmdd`), Region and service.
#[derive(Debug, Clone, Copy)]
pub struct Scope<'a> {
    /// `yyyymmdd`, the first eight characters of `X-Amz-Date`.
    pub date: &'a str,
    /// The Region signed for.
    pub region: &'a str,
    /// The service signed for (`kms`).
    pub service: &'a str,
}

impl Scope<'_> {
    /// `date/region/service/aws4_request`.
    pub fn to_credential_scope(&self) -> String {
        format!(
            "{}/{}/{}/aws4_request",
            self.date, self.region, self.service
        )
    }
}

/// HMAC-SHA256 of `data` under `key`.
pub(crate) fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
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

/// The signature (lower-case hex) of a string to sign under a derived signing key.
pub fn signature(key: &[u8; 32], string_to_sign: &str) -> [u8; 64] {
    hex32(&hmac_sha256(key, string_to_sign.as_bytes()))
}

/// The signature (lower-case hex) of a string to sign under a signing key already made into
/// an HMAC key (the verifier's cached form).
pub(crate) fn signature_under(key: &hmac::Key, string_to_sign: &str) -> [u8; 64] {
    hex32(hmac::sign(key, string_to_sign.as_bytes()).as_ref())
}

/// Signs a request as an AWS SDK would; returns the `Authorization` header's value (the
/// request carries its `x-amz-date` among `signed_headers`).
pub fn sign_request(
    access_key: &str,
    key: &[u8; 32],
    scope: Scope<'_>,
    amz_date: &str,
    req: &SignedRequest<'_>,
    signed_headers: &str,
) -> Result<String, Error> {
    let scope = scope.to_credential_scope();
    let sts = string_to_sign(req, signed_headers, amz_date, &scope)?;
    let sig = hex::encode(hmac_sha256(key, sts.as_bytes()));
    Ok(format!(
        "AWS4-HMAC-SHA256 Credential={access_key}/{scope}, SignedHeaders={signed_headers}, Signature={sig}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(&signature(&key, &sts)[..], sig.as_bytes());
        let auth = sign_request(
            "AKIDEXAMPLE",
            &key,
            Scope {
                date: "20150830",
                region: "us-east-1",
                service: "iam",
            },
            "20150830T123600Z",
            &req,
            "content-type;host;x-amz-date",
        )
        .unwrap();
        assert_eq!(
            auth,
            format!("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iam/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature={sig}")
        );
    }
}
