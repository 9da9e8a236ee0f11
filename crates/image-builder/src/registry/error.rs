//! Why a pull failed, and how that reads as a [`SourceError`].

use crate::digest::Sha256Digest;
use crate::source::SourceError;
use std::io;

/// Why a pull failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The reference does not parse.
    #[error("invalid image reference {0:?}")]
    Reference(String),
    /// A network or TLS failure.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The registry's answer is not HTTP as expected.
    #[error("malformed response from {host}: {reason}")]
    Http {
        /// The host.
        host: String,
        /// What is wrong.
        reason: String,
    },
    /// The registry answered with an error status.
    #[error("{url}: HTTP {status}: {message}")]
    Status {
        /// What was asked.
        url: String,
        /// The status.
        status: u16,
        /// The body's message.
        message: String,
    },
    /// A document is not what the spec says.
    #[error("{what} is not valid: {reason}")]
    Document {
        /// Which document.
        what: String,
        /// What is wrong.
        reason: String,
    },
    /// Content does not match its digest or size.
    #[error("{what}: content does not match its digest {expected} (got {actual})")]
    Digest {
        /// Which content.
        what: String,
        /// The digest asked for.
        expected: Sha256Digest,
        /// The digest of what arrived.
        actual: Sha256Digest,
    },
    /// The image has nothing for this host's platform.
    #[error("no image for linux/{0} in the index")]
    NoPlatform(String),
    /// The image is larger than the limit.
    #[error("the image is larger than {0} bytes")]
    TooLarge(u64),
}

impl From<RegistryError> for SourceError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::Digest {
                what,
                expected,
                actual,
            } => SourceError::DigestMismatch {
                what,
                expected,
                actual,
            },
            RegistryError::Status {
                status: 404,
                url,
                message,
            } => SourceError::TagNotFound {
                tag: url,
                available: format!("the registry answered 404: {message}"),
            },
            RegistryError::Status {
                status, message, ..
            } => SourceError::Engine { status, message },
            other => SourceError::Invalid(format!("registry pull failed: {}", chain(&other))),
        }
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}
