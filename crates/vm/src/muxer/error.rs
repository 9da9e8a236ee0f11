//! The muxer's one error type: what can fail while setting it up. The data path reports
//! nothing; it resets connections.

use std::io;
use std::path::PathBuf;

use cloister_vsock::hostfs::FabricError;

/// Errors setting the muxer up (the data path reports nothing: it resets connections).
#[derive(Debug, thiserror::Error)]
pub enum MuxerError {
    /// Another live process serves this cid on the fabric.
    #[error("cid {cid} is already served ({path})")]
    CidInUse {
        /// The cid.
        cid: u32,
        /// Its socket.
        path: PathBuf,
    },
    /// The fabric directory does not meet the rules.
    #[error("vsock fabric")]
    Fabric(#[source] FabricError),
    /// A system call failed.
    #[error("vsock device: {context}")]
    Io {
        /// What was being done.
        context: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

pub(super) fn io_err(context: &'static str) -> impl FnOnce(io::Error) -> MuxerError {
    move |source| MuxerError::Io { context, source }
}

pub(super) fn nix_err(context: &'static str) -> impl FnOnce(nix::errno::Errno) -> MuxerError {
    move |e| MuxerError::Io {
        context,
        source: io::Error::from(e),
    }
}
