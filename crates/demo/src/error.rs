//! What can go wrong in the demo: one variant per kind of failure, each carrying its message.
//! The CLI gives each variant its stable error code (E8xx, E610 for missing blobs); the demo
//! itself never deals in codes.

use std::fmt;
use std::sync::Arc;

/// A failed demo step. The message is the whole story (causes are already folded into it), so
/// the error has no `source()`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DemoError {
    /// The images could not be built (blobs, sample app, ramdisks, EIF writing, a source-tree
    /// build).
    #[error("{0}")]
    Images(String),
    /// The temp directory, run directory, PKI, allocator pool, async runtime or a helper thread
    /// could not be set up.
    #[error("{0}")]
    Setup(String),
    /// The in-process key service could not start.
    #[error("{0}")]
    KeyService(String),
    /// The vsock-proxy could not start or stopped with an error.
    #[error("{0}")]
    Proxy(String),
    /// CreateKey or Encrypt failed.
    #[error("{0}")]
    KeySetup(String),
    /// A demo enclave did not start.
    #[error("{0}")]
    EnclaveStart(String),
    /// The sample app could not be reached or sent no well-formed answer.
    #[error("{0}")]
    NoAnswer(String),
    /// The genuine image reported an error instead of its proof.
    #[error("{0}")]
    NotReleased(String),
    /// The genuine image's proof did not verify.
    #[error("{0}")]
    ProofRejected(String),
    /// The modified image was not refused with AccessDeniedException.
    #[error("{0}")]
    NotRefused(String),
    /// An enclave, monitor or socket was left behind.
    #[error("{0}")]
    LeftBehind(String),
    /// SIGINT or SIGTERM arrived.
    #[error("{0}")]
    Interrupted(String),
    /// `--isolation vm` without blobs that have a kernel.
    #[error("{0}")]
    VmNeedsKernel(String),
    /// The sample app is not installed (and there is no source tree to build it from).
    #[error("{0}")]
    SampleAppMissing(String),
    /// No blobs are installed (and there is no source tree to build init from).
    #[error("{0}")]
    BlobsMissing(String),
}

/// Result of a demo step.
pub type DemoResult<T> = Result<T, DemoError>;

/// How the demo reports the error it exits on by itself after SIGINT or SIGTERM (the CLI prints
/// it with its code).
pub type Reporter = Arc<dyn Fn(&DemoError) + Send + Sync>;

/// Builds an error of `kind` from any message.
pub(crate) fn err(kind: fn(String) -> DemoError, e: impl fmt::Display) -> DemoError {
    kind(e.to_string())
}

/// The `source()` chain of `e`, joined with `: `.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut parts = Vec::new();
    let mut source = e.source();
    while let Some(s) = source {
        parts.push(s.to_string());
        source = s.source();
    }
    parts.join(": ")
}
