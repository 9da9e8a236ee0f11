//! Errors as the AWS KMS JSON protocol reports them.
//!
//! Every failure a client can see is one [`KmsError`] variant named after the AWS exception it
//! becomes on the wire (`{"__type": "<Name>", "message": "..."}`), with the HTTP status AWS uses.
//! Internal causes (storage, crypto library) are logged and reported as `KMSInternalException`
//! without their details.

use thiserror::Error;

/// An error returned to a KMS client.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum KmsError {
    /// The key, alias or policy does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The key is disabled.
    #[error("{0}")]
    Disabled(String),
    /// The key's state does not allow the operation (e.g. pending deletion).
    #[error("{0}")]
    InvalidState(String),
    /// The ciphertext, or its encryption context, is not valid.
    #[error("{0}")]
    InvalidCiphertext(String),
    /// The ciphertext was not produced by the key the caller named.
    #[error("{0}")]
    IncorrectKey(String),
    /// The key's usage does not allow the operation.
    #[error("{0}")]
    InvalidKeyUsage(String),
    /// The key policy does not allow the caller.
    #[error("{0}")]
    AccessDenied(String),
    /// A parameter failed validation.
    #[error("{0}")]
    Validation(String),
    /// The body is not valid JSON of the expected shape.
    #[error("{0}")]
    Serialization(String),
    /// The X-Amz-Target names no operation.
    #[error("{0}")]
    UnknownOperation(String),
    /// The SigV4 signature does not match, or the request is too old or too new.
    #[error("{0}")]
    InvalidSignature(String),
    /// The Authorization header is malformed.
    #[error("{0}")]
    IncompleteSignature(String),
    /// No Authorization header.
    #[error("{0}")]
    MissingAuthenticationToken(String),
    /// The access key id is unknown.
    #[error("{0}")]
    UnrecognizedClient(String),
    /// The alias already exists.
    #[error("{0}")]
    AlreadyExists(String),
    /// The key policy is not valid.
    #[error("{0}")]
    MalformedPolicyDocument(String),
    /// A tag is not valid.
    #[error("{0}")]
    Tag(String),
    /// A limit (tags, aliases) was exceeded.
    #[error("{0}")]
    LimitExceeded(String),
    /// The operation or a parameter value is not supported by this key service.
    #[error("{0}")]
    UnsupportedOperation(String),
    /// `DryRun` was set and the request would have succeeded.
    #[error("{0}")]
    DryRunOperation(String),
    /// A marker for pagination is not valid.
    #[error("{0}")]
    InvalidMarker(String),
    /// An alias name is not valid.
    #[error("{0}")]
    InvalidAliasName(String),
    /// A KeyId that is an ARN is malformed.
    #[error("{0}")]
    InvalidArn(String),
    /// The request body is larger than the service accepts.
    #[error("{0}")]
    RequestTooLarge(String),
    /// The request used a method or path the service does not serve.
    #[error("{0}")]
    NotImplemented(String),
    /// The signature of a Verify request does not verify.
    #[error("{0}")]
    KmsInvalidSignature(String),
    /// The MAC of a VerifyMac request does not verify.
    #[error("{0}")]
    KmsInvalidMac(String),
    /// A grant token is malformed, or names no grant of this service.
    #[error("{0}")]
    InvalidGrantToken(String),
    /// A grant id names no grant of the key.
    #[error("{0}")]
    InvalidGrantId(String),
    /// An import token is malformed, or was not issued for this key.
    #[error("{0}")]
    InvalidImportToken(String),
    /// An import token (and its wrapping key) has expired.
    #[error("{0}")]
    ExpiredImportToken(String),
    /// Imported key material differs from the material the key had before.
    #[error("{0}")]
    IncorrectKeyMaterial(String),
    /// A fault inside the key service.
    #[error("{0}")]
    Internal(String),
    /// A service the key service depends on (its database) did not answer in time.
    #[error("{0}")]
    DependencyTimeout(String),
}

impl KmsError {
    /// The `__type` AWS puts in the error body.
    pub fn aws_type(&self) -> &'static str {
        match self {
            KmsError::NotFound(_) => "NotFoundException",
            KmsError::Disabled(_) => "DisabledException",
            KmsError::InvalidState(_) => "KMSInvalidStateException",
            KmsError::InvalidCiphertext(_) => "InvalidCiphertextException",
            KmsError::IncorrectKey(_) => "IncorrectKeyException",
            KmsError::InvalidKeyUsage(_) => "InvalidKeyUsageException",
            KmsError::AccessDenied(_) => "AccessDeniedException",
            KmsError::Validation(_) => "ValidationException",
            KmsError::Serialization(_) => "SerializationException",
            KmsError::UnknownOperation(_) => "UnknownOperationException",
            KmsError::InvalidSignature(_) => "InvalidSignatureException",
            KmsError::IncompleteSignature(_) => "IncompleteSignatureException",
            KmsError::MissingAuthenticationToken(_) => "MissingAuthenticationTokenException",
            KmsError::UnrecognizedClient(_) => "UnrecognizedClientException",
            KmsError::AlreadyExists(_) => "AlreadyExistsException",
            KmsError::MalformedPolicyDocument(_) => "MalformedPolicyDocumentException",
            KmsError::Tag(_) => "TagException",
            KmsError::LimitExceeded(_) => "LimitExceededException",
            KmsError::UnsupportedOperation(_) => "UnsupportedOperationException",
            KmsError::DryRunOperation(_) => "DryRunOperationException",
            KmsError::InvalidMarker(_) => "InvalidMarkerException",
            KmsError::InvalidAliasName(_) => "InvalidAliasNameException",
            KmsError::InvalidArn(_) => "InvalidArnException",
            KmsError::RequestTooLarge(_) => "RequestEntityTooLargeException",
            KmsError::NotImplemented(_) => "UnknownOperationException",
            KmsError::KmsInvalidSignature(_) => "KMSInvalidSignatureException",
            KmsError::KmsInvalidMac(_) => "KMSInvalidMacException",
            KmsError::InvalidGrantToken(_) => "InvalidGrantTokenException",
            KmsError::InvalidGrantId(_) => "InvalidGrantIdException",
            KmsError::InvalidImportToken(_) => "InvalidImportTokenException",
            KmsError::ExpiredImportToken(_) => "ExpiredImportTokenException",
            KmsError::IncorrectKeyMaterial(_) => "IncorrectKeyMaterialException",
            KmsError::Internal(_) => "KMSInternalException",
            KmsError::DependencyTimeout(_) => "DependencyTimeoutException",
        }
    }

    /// The HTTP status AWS answers with.
    pub fn http_status(&self) -> u16 {
        match self {
            KmsError::Internal(_) => 500,
            KmsError::DependencyTimeout(_) => 503,
            KmsError::RequestTooLarge(_) => 413,
            KmsError::AccessDenied(_)
            | KmsError::InvalidSignature(_)
            | KmsError::IncompleteSignature(_)
            | KmsError::MissingAuthenticationToken(_) => 400,
            KmsError::NotImplemented(_) => 404,
            _ => 400,
        }
    }

    /// The JSON body AWS sends for this error.
    pub fn to_json(&self) -> Vec<u8> {
        let body = serde_json::json!({ "__type": self.aws_type(), "message": self.to_string() });
        serde_json::to_vec(&body).unwrap_or_else(|_| b"{}".to_vec())
    }

    /// An internal error; the cause is logged, not sent.
    pub fn internal(context: &str, cause: impl std::fmt::Display) -> Self {
        tracing::error!(%cause, "{context}");
        KmsError::Internal(format!("{context}: internal failure"))
    }

    /// `1 validation error detected: Value null at '<field>' ...`, as AWS words it.
    pub fn missing(field: &str) -> Self {
        KmsError::Validation(format!(
            "1 validation error detected: Value null at '{field}' failed to satisfy constraint: Member must not be null"
        ))
    }
}

impl From<crate::keys::KeyError> for KmsError {
    fn from(e: crate::keys::KeyError) -> Self {
        use crate::keys::KeyError as K;
        match e {
            K::IncompatibleAlgorithm(m) => KmsError::InvalidKeyUsage(m),
            K::DigestLength(_) | K::PlaintextTooLong(..) | K::InvalidPublicKey => {
                KmsError::Validation(e.to_string())
            }
            K::InvalidSignature => KmsError::KmsInvalidSignature(e.to_string()),
            K::InvalidMac => KmsError::KmsInvalidMac(e.to_string()),
            K::InvalidCiphertext => KmsError::InvalidCiphertext(String::new()),
            K::Internal(context) => KmsError::internal(context, "key material"),
        }
    }
}

/// Result of a key-service operation.
pub type KmsResult<T> = Result<T, KmsError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_json_has_aws_shape() {
        let e = KmsError::NotFound("Key 'x' does not exist".into());
        let v: serde_json::Value = serde_json::from_slice(&e.to_json()).unwrap();
        assert_eq!(v["__type"], "NotFoundException");
        assert_eq!(v["message"], "Key 'x' does not exist");
        assert_eq!(e.http_status(), 400);
        assert_eq!(KmsError::Internal("x".into()).http_status(), 500);
    }
}
