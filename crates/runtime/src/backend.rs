//! Isolation backends: the [`Backend`] trait that both isolations implement.
//!
//! The monitor ([`crate::monitor`]) drives one launch the same way for every backend: it asks
//! the backend to check the host ([`Backend::check_host`]) and the image
//! ([`Backend::check_image`]) before anything is allocated, then turns the launch
//! ([`LaunchSpec`]) into a [`Pending`] enclave ([`Backend::create`]), lets it go and supervises
//! the [`Running`] one it hands back. What differs between backends is said by the trait, not
//! by the monitor: whether the image's init is replaced ([`Backend::replaces_init`]), whether a
//! network namespace is made ahead ([`Backend::needs_netns`]), and how the enclave reaches the
//! host ([`Backend::host_link`]: through the monitor's broker, or through a device of its own).
//!
//! - `process` ([`crate::sandbox::ProcessBackend`]): a clone in new namespaces whose init
//!   talks to the broker's enclave socket;
//! - `vm` ([`crate::vmbackend::VmBackend`]): a QEMU microVM whose vsock device joins the host
//!   fabric itself.
//!
//! [`crate::backends::backend_for`] picks one.

use crate::sys::{ExitStatus, SysError};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

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

/// An isolation name that is neither `process` nor `vm`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown isolation {0:?} (expected process or vm)")]
pub struct UnknownIsolation(pub String);

impl std::str::FromStr for Isolation {
    type Err = UnknownIsolation;
    fn from_str(s: &str) -> Result<Self, UnknownIsolation> {
        match s {
            "process" => Ok(Isolation::Process),
            "vm" => Ok(Isolation::Vm),
            other => Err(UnknownIsolation(other.to_owned())),
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
    /// The CID does not fit the backend's (32-bit) address.
    #[error("CID {0} is out of range")]
    CidOutOfRange(u64),
}

/// The enclave's NSM, set by the monitor once it is made (after [`Backend::create`], so a
/// process enclave builds its root meanwhile) and before [`Pending::start`]: a backend whose
/// device serves the NSM itself ([`HostLink::Device`]) takes it from here when it starts.
pub type NsmCell = Arc<OnceLock<Arc<dyn cloister_vsock::NsmService>>>;

/// Called once when the enclave's heartbeat arrives (a backend whose device receives it).
pub type HeartbeatFn = Arc<dyn Fn() + Send + Sync>;

/// One launch as a backend sees it: the monitor's launch description ([`crate::monitor`]'s
/// `spec.json`) with the resources allocated for it.
#[derive(Clone)]
pub struct LaunchSpec {
    /// The enclave id (also its hostname and its cgroup's name).
    pub enclave_id: String,
    /// The image, opened once by the monitor (and measured from that open file): the backend
    /// reads it only through this, never through its path.
    pub image: crate::imagecache::OpenImage,
    /// The enclave's directory in the run directory.
    pub enclave_dir: PathBuf,
    /// The run directory (`<run>/vsock` is the host fabric).
    pub run_dir: PathBuf,
    /// The enclave's CID.
    pub cid: u64,
    /// Memory in MiB (size of the tmpfs holding the root's writable layer, or the guest's
    /// memory; and the cgroup memory cap).
    pub memory_mib: u64,
    /// CPUs the enclave is pinned to.
    pub cpus: Vec<u32>,
    /// Debug mode (a VM's console goes into the console file).
    pub debug: bool,
    /// The enclave's console file.
    pub console_path: PathBuf,
    /// The boot timeout the monitor applies.
    pub boot_timeout: std::time::Duration,
    /// Host directory the enclave's root is mounted on (inside its private mount namespace).
    pub root_mount: PathBuf,
    /// The broker's enclave-facing socket, bind-mounted at `/dev/vsock.sock`.
    pub enclave_socket: PathBuf,
    /// The enclave's own host uid and gid, allocated with its other resources: a process
    /// enclave's root maps to it, a VM's QEMU runs as it, and the enclave's connections to
    /// host listeners carry it.
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
    /// The enclave's NSM, once made (see [`NsmCell`]).
    pub nsm: NsmCell,
    /// Called once when the heartbeat arrives at the backend's own device.
    pub on_heartbeat: HeartbeatFn,
}

impl std::fmt::Debug for LaunchSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LaunchSpec")
            .field("enclave_id", &self.enclave_id)
            .field("cid", &self.cid)
            .field("cpus", &self.cpus)
            .field("memory_mib", &self.memory_mib)
            .field("host_uid", &self.host_uid)
            .finish_non_exhaustive()
    }
}

/// How an enclave reaches the host fabric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostLink {
    /// Through the monitor's broker behind [`LaunchSpec::enclave_socket`]: the broker reports
    /// the heartbeat, and the console arrives on the pipe given to [`Backend::create`].
    Broker,
    /// Through a device of the backend's own: it joins the fabric, serves the NSM from
    /// [`LaunchSpec::nsm`], calls [`LaunchSpec::on_heartbeat`] and writes the console file
    /// itself (the console pipe is unused).
    Device,
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
    /// How its enclaves reach the host.
    fn host_link(&self) -> HostLink {
        HostLink::Broker
    }
    /// Whether the monitor makes a network namespace ahead for the enclave to enter
    /// ([`LaunchSpec::netns`]).
    fn needs_netns(&self) -> bool {
        false
    }
    /// Whether the enclave runs Cloister's init in place of the image's ([`crate::initswap`]).
    fn replaces_init(&self) -> bool {
        false
    }
    /// Checks, before anything is allocated, that this host can run the enclave whose files go
    /// into `enclave_dir` under the run directory `run_dir`.
    fn check_host(&self, run_dir: &Path, enclave_dir: &Path) -> Result<(), BackendError> {
        let _ = (run_dir, enclave_dir);
        Ok(())
    }
    /// Checks, before anything is allocated, that `image` can run under this backend.
    fn check_image(&self, image: &crate::imagecache::OpenImage) -> Result<(), BackendError> {
        let _ = image;
        Ok(())
    }
    /// Creates the enclave (namespaces, cgroup) without running it. `console` becomes init's
    /// stdout and stderr.
    fn create(
        &self,
        spec: &LaunchSpec,
        console: std::os::fd::OwnedFd,
    ) -> Result<Box<dyn Pending>, BackendError>;
}
