//! AWS Signature Version 4, one module for both sides: the client that signs a request and the
//! server that verifies it build the same canonical request and string to sign.
//!
//! - [`date`]: `X-Amz-Date` (`YYYYMMDDTHHMMSSZ`) to and from epoch seconds, on the `time` crate.
//! - [`canonical`]: the request as the signature covers it ([`SignedRequest`]), the canonical
//!   request and the string to sign ([`string_to_sign`]).
//! - [`sign`]: the derived signing key ([`signing_key`]), a signature, and the
//!   `Authorization` header of a signed request ([`sign_request`]).
//! - [`verify`]: a [`Verifier`] with a credential table and a cache of derived signing keys,
//!   checking the `Authorization` header, the credential scope, the clock skew, a session
//!   token and the signature (compared in constant time).
//!
//! Errors are one [`Error`] enum whose variants are the four ways AWS refuses a signature
//! (missing, incomplete, invalid, unknown client), each carrying AWS's message; a service maps
//! them onto its own error type.

#![forbid(unsafe_code)]

pub mod canonical;
pub mod date;
pub mod sign;
pub mod verify;

pub use canonical::{string_to_sign, SignedRequest, MAX_SIGNED_HEADERS};
pub use date::{epoch_day, format_amz_date, parse_amz_date};
pub use sign::{sign_request, signature, signing_key, Scope};
pub use verify::{
    Credential, Verifier, MAX_AUTH_HEADER, MAX_CLOCK_SKEW_S, SIGNING_KEYS_PER_ACCESS_KEY,
    SIGNING_KEY_CACHE_MAX,
};

/// Why a request's signature was refused. The message of each variant is AWS's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The request has no `Authorization` header (AWS: `MissingAuthenticationTokenException`).
    #[error("{0}")]
    MissingToken(String),
    /// The `Authorization` header or `X-Amz-Date` is malformed or incomplete (AWS:
    /// `IncompleteSignatureException`).
    #[error("{0}")]
    Incomplete(String),
    /// The signature, its scope or its date does not match (AWS: `InvalidSignatureException`).
    #[error("{0}")]
    Invalid(String),
    /// The access key or its session token is unknown (AWS:
    /// `UnrecognizedClientException`).
    #[error("{0}")]
    UnrecognizedClient(String),
}
