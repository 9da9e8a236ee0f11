//! Isolation backends: the [`Backend`] trait and the choice between them.
//!
//! A [`Backend`] turns a prepared [`LaunchSpec`] into a cloned enclave whose init talks to the
//! broker's enclave socket: that is `process` ([`crate::sandbox::ProcessBackend`]). `vm` (a QEMU
//! microVM, [`crate::vmbackend`]) needs no clone and no broker (its vsock device joins the
//! fabric itself), so the monitor starts it through [`crate::vmbackend::start`]; both hand back
//! a [`Running`] enclave that the monitor supervises and tears down the same way.

use crate::sys::{ExitStatus, SysError};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Which isolation an enclave runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    /// Namespaces, cgroups, seccomp (this host's kernel).
    Process,
    /// A QEMU microVM.
    Vm,
}

impl Isolation {
    /// The name used on the command line, in records and in certificates.
    pub fn as_str(self) -> &'static str {
        match self {
            Isolation::Process => "process",
            Isolation::Vm => "vm",
        }
    }
}

impl std::str::FromStr for Isolation {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "process" => Ok(Isolation::Process),
            "vm" => Ok(Isolation::Vm),
            other => Err(format!(
                "unknown isolation {other:?} (expected process or vm)"
            )),
        }
    }
}

/// Backend errors.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The backend is not available in this build or on this host.
    #[error("isolation backend {0} is not supported yet")]
    Unsupported(&'static str),
    /// A system call failed while creating the enclave.
    #[error("cannot create the enclave")]
    Sys(#[from] SysError),
    /// The enclave's setup failed before its init ran (message from inside the sandbox).
    #[error("enclave setup failed: {0}")]
    Setup(String),
    /// Cgroup setup failed.
    #[error("cannot set up the enclave's cgroup")]
    Cgroup(#[from] crate::cgroup::CgroupError),
    /// The image cannot run under this backend (e.g. no bootable kernel for a VM).
    #[error("{0}")]
    Image(String),
    /// VM isolation is unavailable on this host (QEMU missing).
    #[error("VM isolation is unavailable on this host: {0}")]
    VmUnavailable(String),
    /// The VM could not be started.
    #[error("cannot start the VM")]
    Vm(#[from] cloister_vm::VmError),
    /// A directory on the way to a VM enclave's files is closed to other users, so QEMU
    /// (running as the enclave's own unprivileged uid) could not reach them.
    #[error(
        "{dir} (mode {mode:04o}) is not searchable by other users, so QEMU, which runs as the \
         enclave's own unprivileged uid, cannot reach the enclave's files in the run directory \
         {run}: run `chmod o+x {dir}` (for example `chmod 0711 {dir}`), or use another run \
         directory (CLOISTER_RUN_DIR, default /run/cloister)"
    )]
    VmPathClosed {
        /// The directory.
        dir: PathBuf,
        /// Its permission bits.
        mode: u32,
        /// The run directory.
        run: PathBuf,
    },
}

/// Everything a backend needs to start one enclave.
#[derive(Debug, Clone)]
pub struct LaunchSpec {
    /// The enclave id (also its hostname).
    pub enclave_id: String,
    /// The image, opened once by the monitor (and measured from that open file): the backend
    /// reads it only through this, never through its path.
    pub image: crate::imagecache::OpenImage,
    /// Memory in MiB (size of the tmpfs holding the root's writable layer, and the cgroup memory
    /// cap).
    pub memory_mib: u64,
    /// CPUs the enclave is pinned to.
    pub cpus: Vec<u32>,
    /// Host directory the enclave's root is mounted on (inside its private mount namespace).
    pub root_mount: PathBuf,
    /// The broker's enclave-facing socket, bind-mounted at `/dev/vsock.sock`.
    pub enclave_socket: PathBuf,
    /// Host uid and gid that the enclave's root maps to.
    pub host_uid: u32,
    /// See `host_uid`.
    pub host_gid: u32,
    /// Process limit.
    pub pids_max: u32,
    /// A network namespace being made meanwhile ([`crate::sys::NetnsHelper`], loopback up)
    /// for the enclave to enter; `None`: the backend makes one at the clone.
    pub netns: Option<crate::sys::NetnsHandle>,
    /// Cloister's init, opened by the monitor, to run in place of the image's `/init`
    /// ([`crate::initswap`]); `None`: the image's own.
    pub replacement_init: Option<std::sync::Arc<std::os::fd::OwnedFd>>,
}

/// A created enclave, stopped before its init runs.
pub trait Pending {
    /// Host pid of the enclave's first process.
    fn pid(&self) -> i32;
    /// Lets it go on to execute `/init` without waiting for it, so the caller can prepare
    /// what init needs first (the broker behind the enclave's socket) meanwhile. Idempotent.
    /// The default does nothing ([`Pending::start`] lets it go).
    fn release(&mut self) -> Result<(), BackendError> {
        Ok(())
    }
    /// Lets it run (if [`Pending::release`] did not already): it sets itself up and executes
    /// `/init`. Returns once init runs (or setup failed). `console` receives init's stdout
    /// and stderr.
    fn start(self: Box<Self>) -> Result<Box<dyn Running>, BackendError>;
}

/// A running enclave.
pub trait Running: Send {
    /// Host pid of the enclave's first process.
    fn pid(&self) -> i32;
    /// Returns the exit status if it has ended (non-blocking).
    fn try_wait(&mut self) -> Result<Option<ExitStatus>, BackendError>;
    /// Kills it and waits for it.
    fn kill(&mut self) -> Result<ExitStatus, BackendError>;
    /// Removes what the backend created on the host (cgroups). Idempotent.
    fn cleanup(&mut self) -> Result<(), BackendError>;
    /// Number of out-of-memory kills inside the enclave so far.
    fn oom_kills(&self) -> u64;
    /// Host directories to remove if the monitor dies without cleaning up.
    fn leftovers(&self) -> Vec<PathBuf>;
    /// The seccomp notification listener of a supervised enclave (a process enclave's
    /// `AF_VSOCK` and `/dev/nsm`, see `cloister_supervisor`), once; `None` for others.
    fn take_notify_listener(&mut self) -> Option<std::os::fd::OwnedFd> {
        None
    }
    /// How it ended, in words, when the backend knows more than the exit status (a VM: a
    /// guest kernel panic, a power-off).
    fn exit_detail(&self) -> Option<String> {
        None
    }
    /// The console's last bytes when the backend keeps them itself (a VM); `None` when the
    /// console is the monitor's console file.
    fn console_tail(&self) -> Option<String> {
        None
    }
    /// The accelerator, for a VM (`kvm` or `tcg`).
    fn accelerator(&self) -> Option<&'static str> {
        None
    }
}

/// An isolation backend.
pub trait Backend {
    /// Its isolation kind.
    fn isolation(&self) -> Isolation;
    /// Creates the enclave (namespaces, cgroup) without running it. `console` becomes init's
    /// stdout and stderr.
    fn create(
        &self,
        spec: &LaunchSpec,
        console: std::os::fd::OwnedFd,
    ) -> Result<Box<dyn Pending>, BackendError>;
}

/// The clone-style backend for `isolation`: `process`. `vm` has none (see the module docs):
/// asking for it is [`BackendError::Unsupported`].
pub fn backend_for(isolation: Isolation) -> Result<Box<dyn Backend>, BackendError> {
    match isolation {
        Isolation::Process => Ok(Box::new(crate::sandbox::ProcessBackend)),
        Isolation::Vm => Err(BackendError::Unsupported(
            "vm (started by vmbackend::start)",
        )),
    }
}
