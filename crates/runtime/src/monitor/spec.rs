//! The monitor's vocabulary: the launch description it reads ([`MonitorSpec`]), the one line
//! it answers ([`MonitorMessage`]), and why a launch failed ([`StartFailure`], by
//! [`FailureKind`]), with the class of each allocator and backend error.

use crate::allocator::{AllocError, CpuRequest};
use crate::backend::{BackendError, Isolation};
use crate::config::RuntimeConfig;
use crate::state::EnclaveRecord;
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Hidden CLI subcommand that runs a monitor.
pub const MONITOR_SUBCOMMAND: &str = "__enclave-monitor";
/// Descriptor number of the ready pipe in a monitor.
pub const READY_FD: i32 = 3;
/// Descriptor number of the inherited monitor lock in a monitor.
pub const LOCK_FD: i32 = 4;
/// Minimum enclave memory, in MiB.
pub const MIN_MEMORY_MIB: u64 = 64;
/// Memory must be at least this many times the image size.
pub const MEMORY_PER_EIF_FACTOR: u64 = 4;
/// Signals that end an enclave.
pub(super) const STOP_SIGNALS: [Signal; 3] = [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP];

/// One launch, as `run-enclave` describes it to the monitor (`spec.json`): what to start, and
/// the configuration to start it with.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MonitorSpec {
    /// The enclave id (the directory's name).
    pub enclave_id: String,
    /// The enclave name.
    pub enclave_name: String,
    /// The image.
    pub eif_path: PathBuf,
    /// CPUs.
    pub cpus: CpuRequest,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// Requested CID (0: assign).
    pub cid: u64,
    /// Debug mode.
    pub debug_mode: bool,
    /// Backend.
    pub isolation: Isolation,
    /// Boot timeout.
    pub boot_timeout_ms: u64,
    /// The caller's configuration, which the monitor installs as its own.
    pub config: RuntimeConfig,
}

/// Why an enclave did not start, by class (the CLI maps each to an error code).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FailureKind {
    /// The image cannot be read or is invalid.
    Image,
    /// The image's signature does not verify, or its signing certificate is not valid now.
    Signature,
    /// The run directory or the PKI directory is unsafe (owned by someone else, or writable
    /// by others).
    UnsafeDir,
    /// A VM enclave's files would be out of QEMU's reach (a directory on the way to the run
    /// directory is closed to other users).
    VmPathClosed,
    /// The request is malformed (memory too small, bad CPU list).
    BadRequest,
    /// The CID is reserved or out of range.
    CidInvalid,
    /// The CID is taken.
    CidInUse,
    /// Not enough CPUs.
    Cpus,
    /// Not enough memory.
    Memory,
    /// The allocator configuration is invalid.
    AllocatorConfig,
    /// No heartbeat in time.
    BootTimeout,
    /// The enclave exited or failed during setup.
    Setup,
    /// A stop signal (`terminate-enclave`) arrived before the boot heartbeat.
    Terminated,
    /// The attestation PKI or the NSM could not be set up.
    Nsm,
    /// The backend is not supported.
    Unsupported,
    /// Anything else on the host (state files, broker, cgroups).
    System,
}

/// A start failure with its message.
#[derive(Debug, Clone, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct StartFailure {
    /// The class.
    pub kind: FailureKind,
    /// What happened.
    pub message: String,
}

impl StartFailure {
    pub(crate) fn new(kind: FailureKind, e: impl std::fmt::Display) -> Self {
        Self {
            kind,
            message: e.to_string(),
        }
    }

    pub(crate) fn chain(kind: FailureKind, e: &dyn std::error::Error) -> Self {
        let mut message = e.to_string();
        let mut src = e.source();
        while let Some(cause) = src {
            message.push_str(": ");
            message.push_str(&cause.to_string());
            src = cause.source();
        }
        Self { kind, message }
    }
}

/// The one line a monitor writes on its ready pipe.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum MonitorMessage {
    /// The enclave booted.
    Ready(Box<EnclaveRecord>),
    /// It did not.
    Failed(StartFailure),
}

pub(super) fn alloc_kind(e: &AllocError) -> FailureKind {
    match e {
        AllocError::CidInvalid(_) => FailureKind::CidInvalid,
        AllocError::CidInUse(..) | AllocError::CidExhausted => FailureKind::CidInUse,
        AllocError::CpuNotInPool(..)
        | AllocError::CpuBusy(..)
        | AllocError::CpusExhausted { .. } => FailureKind::Cpus,
        AllocError::MemoryExhausted { .. } => FailureKind::Memory,
        AllocError::BadRequest(_) | AllocError::CpuList(..) => FailureKind::BadRequest,
        AllocError::ConfigRead(..) | AllocError::ConfigInvalid(..) => FailureKind::AllocatorConfig,
        AllocError::State(..)
        | AllocError::StateCorrupt(..)
        | AllocError::Lock(_)
        | AllocError::HostIdExhausted => FailureKind::System,
    }
}

pub(super) fn backend_kind(e: &BackendError) -> FailureKind {
    match e {
        BackendError::Unsupported(_) | BackendError::VmUnavailable(_) => FailureKind::Unsupported,
        BackendError::Setup(_) | BackendError::Vm(_) => FailureKind::Setup,
        BackendError::Image(_) => FailureKind::Image,
        BackendError::VmPathClosed { .. } => FailureKind::VmPathClosed,
        BackendError::CidOutOfRange(_) => FailureKind::CidInvalid,
        BackendError::Sys(_) | BackendError::Cgroup(_) => FailureKind::System,
    }
}

/// A backend error as a start failure of its class.
pub(super) fn backend_failure(e: &BackendError) -> StartFailure {
    StartFailure::chain(backend_kind(e), e)
}

/// A host error (state files, pipes, threads) as a start failure.
pub(super) fn sys_failure(e: &dyn std::error::Error) -> StartFailure {
    StartFailure::chain(FailureKind::System, e)
}
