//! Attestation for Cloister: COSE_Sign1 (ES384) documents in AWS Nitro's format, the PKI that
//! signs them, the NSM that issues them, and a strict verifier.
//!
//! - [`cose`]: minimal COSE_Sign1 with ES384 (sign, parse, verify).
//! - [`pki`]: operator root CA -> host CA -> per-enclave leaf; [`pki::DocumentSigner`] signs
//!   documents with the leaf key (one P-384 signature per document).
//! - [`nsm`]: the NSM state machine (PCR bank, requests, responses) the runtime serves to each
//!   enclave.
//! - [`verify`]: [`Verifier`] checks a document against pinned roots and returns a
//!   [`VerifiedDocument`], which nothing else can construct.
//!
//! The isolation kind of an enclave (process or VM) is recorded in its leaf certificate's
//! subject (`OU=isolation=process|vm`) and reported by [`VerifiedDocument::isolation`].
#![forbid(unsafe_code)]

pub mod cert;
pub mod cose;
pub mod nsm;
pub mod pki;
pub mod verify;

pub use nsm::{Clock, ImagePcrs, Nsm, NsmConfig, NsmError, SystemClock};
pub use pki::{DocumentFields, DocumentSigner, HostCa, Pki, PkiError, SignError};
pub use verify::{
    VerifiedDocument, Verifier, VerifyError, VerifyOptions, AWS_NITRO_ROOT_G1, VERIFY_ERROR_CODES,
};

use std::fmt;
use std::str::FromStr;

/// How an enclave is isolated from its host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Isolation {
    /// A process tree in fresh namespaces with seccomp.
    Process,
    /// A microVM.
    Vm,
}

impl Isolation {
    /// `"process"` or `"vm"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Isolation::Process => "process",
            Isolation::Vm => "vm",
        }
    }
}

impl fmt::Display for Isolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An isolation name other than `process` or `vm`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown isolation kind {0:?} (expected \"process\" or \"vm\")")]
pub struct UnknownIsolation(pub String);

impl FromStr for Isolation {
    type Err = UnknownIsolation;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "process" => Ok(Isolation::Process),
            "vm" => Ok(Isolation::Vm),
            other => Err(UnknownIsolation(other.to_string())),
        }
    }
}
