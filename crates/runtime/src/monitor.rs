//! The monitor: one process per enclave that owns it for its whole life.
//!
//! `run-enclave` creates the enclave's directory (holding its lock), writes `spec.json`, and
//! starts the monitor detached (`setsid`) with the ready pipe as fd 3 and the locked
//! `monitor.lock` as fd 4 ([`crate::lifecycle`]). The monitor ([`monitor_main`]):
//! 1. checks that the run and PKI directories are writable by nobody else, opens the image
//!    once ([`crate::imagecache::OpenImage`]: the measurement, the signature check and the
//!    backend's root or boot files all read that open file, never the path again), reads it
//!    (measurements, metadata; the measurements come from [`crate::imagecache`] when this
//!    version of the file was measured before), refuses a signed image whose signature does
//!    not verify or whose certificate is not valid now, reserves CPUs, memory, a CID and a
//!    host uid of the enclave's own ([`crate::allocator`]), and sets up the enclave's NSM
//!    ([`crate::nsm`]: the host CA is loaded now, the leaf certificate is issued once the
//!    enclave has booted or at its first NSM request, off the boot path); for a process
//!    enclave the NSM is set up in step 2, after the clone, while the enclave builds its root;
//! 2. `process`: creates the enclave with its backend while still single-threaded (the process
//!    backend clones), then blocks SIGTERM/SIGINT/SIGHUP, starts the console pump, sets up the
//!    NSM, starts the vsock broker and lets the enclave run. `vm`: blocks the signals and starts the microVM
//!    ([`crate::vmbackend`]: kernel check, boot files, cgroup, QEMU); its vsock device joins the
//!    fabric itself and reports the heartbeat, so there is no broker;
//! 3. waits for init's heartbeat (the broker or the VM reports it) up to the boot timeout, then
//!    writes the record (RUNNING) and a [`MonitorMessage::Ready`] line on the ready pipe; on any
//!    failure it writes [`MonitorMessage::Failed`] (with the console's last lines for a timeout
//!    or an early end; for a VM, a guest kernel panic is named), tears everything down and
//!    exits;
//! 4. supervises: SIGTERM (from `terminate-enclave`) or the enclave's end both lead to the same
//!    teardown: kill the enclave's PID 1 (its PID namespace dies with it) or QEMU, stop the
//!    broker, remove the cgroup, return the resources, remove the directory.
//!
//! If the monitor itself is killed, the enclave's init gets SIGKILL (parent-death signal) and
//! the next `describe-enclaves` prunes the directory (its lock is free).

use crate::allocator::{AllocError, Allocator, CpuRequest, Pool, Request};
use crate::backend::{backend_for, BackendError, Isolation, LaunchSpec, Running};
use crate::console::{self, ConsoleLog};
use crate::state::{EnclaveRecord, EnclaveState, ImageMetadata, Measurements, RunDir};
use crate::sys;
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

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
/// Size of the history log (`<run>/history.log`) before it is rotated.
const HISTORY_CAP: u64 = 256 * 1024;
/// Signals that end an enclave.
const STOP_SIGNALS: [Signal; 3] = [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP];

/// What the CLI asks a monitor to start.
#[derive(Debug, Clone, Serialize, Deserialize)]
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
    fn new(kind: FailureKind, e: impl std::fmt::Display) -> Self {
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

fn alloc_kind(e: &AllocError) -> FailureKind {
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

fn backend_kind(e: &BackendError) -> FailureKind {
    match e {
        BackendError::Unsupported(_) | BackendError::VmUnavailable(_) => FailureKind::Unsupported,
        BackendError::Setup(_) | BackendError::Vm(_) => FailureKind::Setup,
        BackendError::Image(_) => FailureKind::Image,
        BackendError::VmPathClosed { .. } => FailureKind::VmPathClosed,
        BackendError::Sys(_) | BackendError::Cgroup(_) => FailureKind::System,
    }
}

/// Entry point of the hidden monitor subcommand. Takes the ready pipe and the lock from fds
/// [`READY_FD`] and [`LOCK_FD`]. Returns the process exit status.
pub fn monitor_main(enclave_id: &str) -> i32 {
    monitor_main_with(enclave_id, None)
}

/// [`monitor_main`] for a monitor forked (without exec) by the run-enclave process `caller`,
/// which only prints the answer and exits once it has it (see [`wake_off_enclave_cpus`]).
pub(crate) fn monitor_main_with(enclave_id: &str, caller: Option<i32>) -> i32 {
    // SAFETY: by contract with `lifecycle::spawn_monitor`, fds 3 and 4 are open in this process
    // and owned by nothing else (they were dup2'ed there just before exec).
    let (ready, lock) = unsafe {
        (
            OwnedFd::from_raw_fd(READY_FD),
            OwnedFd::from_raw_fd(LOCK_FD),
        )
    };
    crate::boottrace::mark("monitor: start");
    let mut ready = std::fs::File::from(ready);
    let run = RunDir::from_env();
    if !crate::ids::is_enclave_id(enclave_id) {
        let msg =
            MonitorMessage::Failed(StartFailure::new(FailureKind::System, "invalid enclave id"));
        let _ = send(&mut ready, &msg);
        return 1;
    }
    let span = tracing::info_span!("enclave", id = %enclave_id);
    let _enter = span.enter();
    let mut live = match start(&run, enclave_id) {
        Ok(live) => live,
        Err(failure) => {
            tracing::warn!(error = %failure.message, "enclave failed to start");
            // The entry goes before the answer, so a caller that has the answer finds nothing
            // left (the lock stays held until then, so nobody else prunes it meanwhile).
            run.remove_enclave(enclave_id);
            let _ = send(&mut ready, &MonitorMessage::Failed(failure));
            drop(lock);
            return 1;
        }
    };
    if let Some(pid) = caller {
        wake_off_enclave_cpus(pid, &live.record.cpu_ids);
    }
    let _ = send(
        &mut ready,
        &MonitorMessage::Ready(Box::new(live.record.clone())),
    );
    drop(ready);
    crate::boottrace::mark("monitor: ready sent");
    // The leaf certificate is issued now, off the boot path and at idle CPU priority, unless
    // a request comes first.
    live.nsm.prepare_in_background();
    live.supervise();
    live.teardown(&run);
    drop(lock);
    0
}

/// Moves the waiting run-enclave process `caller` off the enclave's CPUs (where the host has
/// others) before the answer wakes it. The scheduler wakes a task on the CPU it last ran on
/// when it can, which may be one of the enclave's; the enclave's init is busy there right after
/// its heartbeat (it installs its seccomp filter and starts the application), and the caller,
/// which only prints the answer and exits, would wait behind it for about a millisecond. The
/// caller is asleep, so this only changes where it wakes. Best effort.
fn wake_off_enclave_cpus(caller: i32, enclave: &[u32]) {
    let Ok(now) = sys::cpu_affinity(caller) else {
        return;
    };
    let rest: Vec<u32> = now.into_iter().filter(|c| !enclave.contains(c)).collect();
    if !rest.is_empty() {
        if let Err(e) = sys::set_cpu_affinity(caller, &rest) {
            tracing::debug!(error = %e, "cannot move the caller off the enclave's CPUs");
        }
    }
}

fn send(out: &mut std::fs::File, msg: &MonitorMessage) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(msg).map_err(std::io::Error::other)?;
    line.push(b'\n');
    out.write_all(&line)
}

/// A started enclave and everything the monitor holds for it.
struct Live {
    record: EnclaveRecord,
    running: Box<dyn Running>,
    broker: Option<cloister_vsock::Broker>,
    allocator: Allocator,
    console: Option<std::thread::JoinHandle<()>>,
    console_path: PathBuf,
    nsm: std::sync::Arc<crate::nsm::EnclaveNsm>,
}

/// Resources taken so far, released in reverse on failure.
struct Partial<'a> {
    run: &'a RunDir,
    id: &'a str,
    allocator: Option<Allocator>,
    /// The helper making a process enclave's network namespace, until it is used.
    netns: Option<sys::NetnsHelper>,
    running: Option<Box<dyn Running>>,
    broker: Option<cloister_vsock::Broker>,
}

impl Partial<'_> {
    fn unwind(mut self) {
        if let Some(r) = self.running.as_mut() {
            let _ = r.kill();
            let _ = r.cleanup();
        }
        if let Some(mut b) = self.broker.take() {
            b.shutdown();
        }
        if let Some(a) = &self.allocator {
            let run = self.run.clone();
            let _ = a.release(self.id, &|id| run.is_alive(id));
        }
    }
}

fn read_spec(run: &RunDir, id: &str) -> Result<MonitorSpec, StartFailure> {
    let path = run.enclave_dir(id).join("spec.json");
    let bytes = std::fs::read(&path)
        .map_err(|e| StartFailure::new(FailureKind::System, format!("{}: {e}", path.display())))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| StartFailure::new(FailureKind::System, format!("{}: {e}", path.display())))
}

fn start(run: &RunDir, id: &str) -> Result<Live, StartFailure> {
    let spec = read_spec(run, id)?;
    // What the runtime trusts must be writable by nobody else (the CLI checked it too; this
    // is the monitor's own look, one `stat` each).
    run.prepare()
        .map_err(|e| StartFailure::chain(FailureKind::UnsafeDir, &e))?;
    crate::nsm::check_pki_dir(&crate::nsm::pki_dir())
        .map_err(|e| StartFailure::chain(FailureKind::UnsafeDir, &e))?;
    // A clone-style backend for `process`; `vm` starts through `vmbackend` (the paths QEMU
    // needs and QEMU itself checked now, before anything is allocated).
    let backend = match spec.isolation {
        Isolation::Process => Some(
            backend_for(spec.isolation).map_err(|e| StartFailure::chain(backend_kind(&e), &e))?,
        ),
        Isolation::Vm => {
            crate::vmbackend::prepare_paths(run.root(), &run.enclave_dir(id))
                .map_err(|e| StartFailure::chain(backend_kind(&e), &e))?;
            crate::vmbackend::check_host()
                .map_err(|e| StartFailure::chain(backend_kind(&e), &e))?;
            None
        }
    };

    // A process enclave's network namespace is made by a helper meanwhile (see
    // `sys::NetnsHelper`); without one, the clone makes it.
    let netns = match backend {
        Some(_) => sys::NetnsHelper::spawn()
            .inspect_err(|e| tracing::warn!(error = %e, "cannot make a network namespace ahead"))
            .ok(),
        None => None,
    };

    // The image, opened once: everything below (measurements, signature, the backend's
    // root or boot files) reads this open file, never the path again.
    let image = crate::imagecache::OpenImage::open(&spec.eif_path).map_err(|e| {
        StartFailure::new(
            FailureKind::Image,
            format!("cannot open the image {}: {e}", spec.eif_path.display()),
        )
    })?;
    let measured_image = crate::imagecache::measure_image(run, &image)
        .map_err(|e| StartFailure::chain(FailureKind::Image, &e))?;
    crate::boottrace::mark(if measured_image.cached {
        "monitor: image measurements from the cache"
    } else {
        "monitor: image measured"
    });
    let (measured, metadata) = (measured_image.measurements, measured_image.metadata);
    // A signed image must verify, with a certificate valid now (nitro-cli's E59).
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    crate::imagecache::check_signature(&image, &measured, now)
        .map_err(|e| StartFailure::chain(FailureKind::Signature, &e))?;
    check_memory(spec.memory_mib, measured_image.len)?;
    if spec.isolation == Isolation::Vm {
        crate::vmbackend::check_kernel(&image)
            .map_err(|e| StartFailure::chain(backend_kind(&e), &e))?;
    }
    // A process enclave runs Cloister's init in place of AWS's (images built by nitro-cli).
    let init_choice = match spec.isolation {
        Isolation::Process => crate::initswap::choose(&image)
            .map_err(|e| StartFailure::chain(FailureKind::Image, &e))?,
        Isolation::Vm => crate::initswap::InitChoice::Image,
    };
    test_hook_after_measuring();

    let pool = Pool::load().map_err(|e| StartFailure::chain(alloc_kind(&e), &e))?;
    let allocator = Allocator::new(run.root(), pool);
    let alive = |other: &str| run.is_alive(other);
    let alloc = allocator
        .allocate(
            &Request {
                enclave_id: id.to_owned(),
                cid: spec.cid,
                cpus: spec.cpus.clone(),
                memory_mib: spec.memory_mib,
            },
            &alive,
        )
        .map_err(|e| StartFailure::chain(alloc_kind(&e), &e))?;
    crate::boottrace::mark("monitor: resources allocated");
    let mut partial = Partial {
        run,
        id,
        allocator: Some(allocator.clone()),
        netns,
        running: None,
        broker: None,
    };
    match launch(
        run,
        id,
        &spec,
        backend.as_deref(),
        &alloc,
        &image,
        measured,
        metadata,
        init_choice,
        &mut partial,
    ) {
        Ok((record, console_thread, nsm)) => {
            let running = partial
                .running
                .take()
                .ok_or_else(|| StartFailure::new(FailureKind::System, "lost the enclave"))?;
            Ok(Live {
                record,
                running,
                broker: partial.broker.take(),
                allocator,
                console: console_thread,
                console_path: run.console_path(id),
                nsm,
            })
        }
        Err(f) => {
            partial.unwind();
            Err(f)
        }
    }
}

/// Environment variable naming a file for end-to-end tests of the image's life between its
/// measurement and the boot: when set, the monitor creates that file once it has measured and
/// checked the image, then waits (up to a minute) until the test removes it.
pub const TEST_HOOK_AFTER_MEASURING_ENV: &str = "CLOISTER_TEST_HOOK_AFTER_MEASURING";
/// Longest wait of [`TEST_HOOK_AFTER_MEASURING_ENV`].
const TEST_HOOK_WAIT: Duration = Duration::from_secs(60);

/// See [`TEST_HOOK_AFTER_MEASURING_ENV`]; does nothing when it is not set.
fn test_hook_after_measuring() {
    let Some(path) = std::env::var_os(TEST_HOOK_AFTER_MEASURING_ENV) else {
        return;
    };
    let path = PathBuf::from(path);
    if std::fs::write(&path, b"measured\n").is_err() {
        return;
    }
    let deadline = Instant::now() + TEST_HOOK_WAIT;
    while path.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Memory rules: at least [`MIN_MEMORY_MIB`] and [`MEMORY_PER_EIF_FACTOR`] times the image.
pub fn check_memory(memory_mib: u64, eif_len: u64) -> Result<(), StartFailure> {
    let need = eif_len
        .saturating_mul(MEMORY_PER_EIF_FACTOR)
        .div_ceil(1024 * 1024)
        .max(MIN_MEMORY_MIB);
    if memory_mib < need {
        return Err(StartFailure::new(
            FailureKind::BadRequest,
            format!(
                "{memory_mib} MiB of memory is too little: the enclave needs at least {need} MiB \
                 (64 MiB and 4 times the image size)"
            ),
        ));
    }
    Ok(())
}

/// What [`launch`] hands back: the record, the console pump (process enclaves) and the NSM.
type Launched = (
    EnclaveRecord,
    Option<std::thread::JoinHandle<()>>,
    std::sync::Arc<crate::nsm::EnclaveNsm>,
);

/// How the monitor learns of the heartbeat.
enum Beat {
    /// The process backend's broker reports it.
    Broker,
    /// The VM's vsock device sends on this channel.
    Channel(std::sync::mpsc::Receiver<()>),
}

/// The last `max` bytes of `text` (at a character boundary).
fn last_bytes(text: &str, max: u64) -> &str {
    let max = usize::try_from(max).unwrap_or(usize::MAX);
    let mut start = text.len().saturating_sub(max);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// The console's last bytes: the backend's own tail (a VM) or the console file.
fn console_tail(running: &dyn Running, console_path: &std::path::Path) -> String {
    match running.console_tail() {
        Some(t) => last_bytes(&t, console::TAIL_BYTES).to_owned(),
        None => console::tail(console_path, console::TAIL_BYTES),
    }
}

#[allow(clippy::too_many_arguments)]
fn launch(
    run: &RunDir,
    id: &str,
    spec: &MonitorSpec,
    backend: Option<&dyn crate::backend::Backend>,
    alloc: &crate::allocator::Allocation,
    image: &crate::imagecache::OpenImage,
    measured: cloister_eif::Measurements,
    metadata: Option<cloister_eif::Metadata>,
    init_choice: crate::initswap::InitChoice,
    partial: &mut Partial<'_>,
) -> Result<Launched, StartFailure> {
    let init_replaced = init_choice.replaced();
    let replacement_init = match init_choice {
        crate::initswap::InitChoice::Replace { file, .. } => Some(std::sync::Arc::new(file)),
        crate::initswap::InitChoice::Image => None,
    };
    let sys_err = |e: &dyn std::error::Error| StartFailure::chain(FailureKind::System, e);
    // The NSM (host CA loaded, leaf deferred); a process enclave sets it up once cloned, while
    // the enclave builds its root, as only the broker needs it.
    let make_nsm = || {
        let instance = crate::ids::instance_id();
        let pki = crate::nsm::open_pki(&crate::nsm::pki_dir(), run.root())
            .map_err(|e| StartFailure::chain(FailureKind::Nsm, &e))?;
        crate::boottrace::mark("monitor: PKI opened");
        let nsm = crate::nsm::enclave_nsm(
            &pki,
            id,
            spec.isolation,
            init_replaced,
            &measured,
            spec.debug_mode,
            &instance,
        )
        .map_err(|e| StartFailure::chain(FailureKind::Nsm, &e))?;
        crate::boottrace::mark("monitor: NSM set up (leaf deferred)");
        Ok::<_, StartFailure>(nsm)
    };

    let dir = run.enclave_dir(id);
    // The enclave's own host uid/gid, allocated with its other resources: no other live
    // enclave has it.
    let host_id = alloc.host_id;
    let cid = u32::try_from(alloc.cid)
        .map_err(|_| StartFailure::new(FailureKind::CidInvalid, "CID out of range"))?;
    let console_path = run.console_path(id);
    let (pid, beat, console_thread, nsm) = match backend {
        Some(backend) => {
            let (pid, thread, nsm) = launch_process(
                run,
                id,
                backend,
                alloc,
                image,
                &make_nsm,
                cid,
                host_id,
                replacement_init,
                partial,
            )?;
            (pid, Beat::Broker, Some(thread), nsm)
        }
        None => {
            let nsm = make_nsm()?;
            // Blocked before any thread starts, so every thread inherits the mask and the
            // stop signals stay pending for `wait_signal` (QEMU gets a clean mask from exec).
            sys::block_signals(&STOP_SIGNALS).map_err(|e| sys_err(&e))?;
            let (tx, rx) = std::sync::mpsc::channel();
            let vm = crate::vmbackend::start(crate::vmbackend::VmLaunch {
                enclave_id: id.to_owned(),
                image: image.clone(),
                enclave_dir: dir.clone(),
                run_dir: run.root().to_owned(),
                cid,
                cpus: alloc.cpus.clone(),
                memory_mib: alloc.memory_mib,
                debug: spec.debug_mode,
                console: console_path.clone(),
                host_id: (host_id, host_id),
                nsm: nsm.clone(),
                boot_timeout: Duration::from_millis(spec.boot_timeout_ms),
                on_heartbeat: Box::new(move || {
                    let _ = tx.send(());
                }),
            })
            .map_err(|e| StartFailure::chain(backend_kind(&e), &e))?;
            let pid = vm.pid();
            partial.running = Some(Box::new(vm));
            crate::boottrace::mark("monitor: VM started");
            (pid, Beat::Channel(rx), None, nsm)
        }
    };

    let (image_name, image_version, meta_json) = match &metadata {
        Some(m) => (
            Some(m.image_name.clone()),
            Some(m.image_version.clone()),
            Some(m.describe_json()),
        ),
        None => (None, None, None),
    };
    let mut record = EnclaveRecord {
        enclave_id: id.to_owned(),
        enclave_name: spec.enclave_name.clone(),
        monitor_pid: std::process::id(),
        init_pid: u32::try_from(pid).ok(),
        cid: alloc.cid,
        cpu_ids: alloc.cpus.clone(),
        memory_mib: alloc.memory_mib,
        debug_mode: spec.debug_mode,
        isolation: spec.isolation.as_str().to_owned(),
        init_replaced,
        accelerator: partial
            .running
            .as_ref()
            .and_then(|r| r.accelerator())
            .map(str::to_owned),
        state: EnclaveState::Booting,
        host_uid: Some(host_id),
        measurements: Measurements {
            pcr0: measured.pcr0_hex(),
            pcr1: measured.pcr1_hex(),
            pcr2: measured.pcr2_hex(),
            pcr8: measured.pcr8_hex(),
        },
        metadata: ImageMetadata {
            image_name,
            image_version,
            metadata: meta_json,
        },
        eif_path: spec.eif_path.clone(),
        cgroup_dirs: partial
            .running
            .as_ref()
            .map(|r| r.leftovers())
            .unwrap_or_default(),
        started_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    };
    run.write_record(&record).map_err(|e| sys_err(&e))?;

    // Wait for the heartbeat, the enclave's end, a stop signal, or the deadline.
    let deadline = Instant::now() + Duration::from_millis(spec.boot_timeout_ms);
    loop {
        let beat_now = match &beat {
            Beat::Broker => partial
                .broker
                .as_ref()
                .ok_or_else(|| StartFailure::new(FailureKind::System, "lost the broker"))?
                .wait_for_heartbeat(Duration::from_millis(20)),
            Beat::Channel(rx) => match rx.recv_timeout(Duration::from_millis(20)) {
                Ok(()) => true,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => false,
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    std::thread::sleep(Duration::from_millis(20));
                    false
                }
            },
        };
        if beat_now {
            break;
        }
        let running = partial
            .running
            .as_mut()
            .ok_or_else(|| StartFailure::new(FailureKind::System, "lost the enclave"))?;
        if let Some(status) = running.try_wait().map_err(|e| sys_err(&e))? {
            std::thread::sleep(Duration::from_millis(50));
            let what = running
                .exit_detail()
                .unwrap_or_else(|| format!("the enclave {status}"));
            return Err(StartFailure::new(
                FailureKind::Setup,
                format!(
                    "{what} before its heartbeat; console:\n{}",
                    console_tail(running.as_ref(), &console_path)
                ),
            ));
        }
        if sys::wait_signal(&STOP_SIGNALS, 0)
            .map_err(|e| sys_err(&e))?
            .is_some()
        {
            return Err(StartFailure::new(
                FailureKind::Terminated,
                "the enclave was terminated while it was booting",
            ));
        }
        if Instant::now() >= deadline {
            let tail = match partial.running.as_deref() {
                Some(r) => console_tail(r, &console_path),
                None => console::tail(&console_path, console::TAIL_BYTES),
            };
            return Err(StartFailure::new(
                FailureKind::BootTimeout,
                format!(
                    "no heartbeat from the enclave within {} ms; last console lines:\n{tail}",
                    spec.boot_timeout_ms,
                ),
            ));
        }
    }
    crate::boottrace::mark("monitor: heartbeat received");
    record.state = EnclaveState::Running;
    run.write_record(&record).map_err(|e| sys_err(&e))?;
    Ok((record, console_thread, nsm))
}

/// The process path of [`launch`]: bind the enclave's socket, create the enclave (clone, still
/// single-threaded, and cgroup) and let it go on to init at once, then block the stop signals,
/// start the console pump, set up the NSM (`make_nsm`) and start the broker while the enclave
/// finishes its setup, and wait for init to run. Returns init's pid, the console thread and the
/// NSM; the broker and the running enclave go into `partial`.
#[allow(clippy::too_many_arguments)]
fn launch_process(
    run: &RunDir,
    id: &str,
    backend: &dyn crate::backend::Backend,
    alloc: &crate::allocator::Allocation,
    image: &crate::imagecache::OpenImage,
    make_nsm: &dyn Fn() -> Result<std::sync::Arc<crate::nsm::EnclaveNsm>, StartFailure>,
    cid: u32,
    host_id: u32,
    replacement_init: Option<std::sync::Arc<OwnedFd>>,
    partial: &mut Partial<'_>,
) -> Result<
    (
        i32,
        std::thread::JoinHandle<()>,
        std::sync::Arc<crate::nsm::EnclaveNsm>,
    ),
    StartFailure,
> {
    let sys_err = |e: &dyn std::error::Error| StartFailure::chain(FailureKind::System, e);
    let dir = run.enclave_dir(id);
    let root_mount = dir.join("root");
    std::fs::create_dir_all(&root_mount).map_err(|e| sys_err(&e))?;
    let enclave_socket = dir.join("vsock.sock");
    let netns = partial.netns.as_ref().and_then(sys::NetnsHelper::handle);
    let launch = LaunchSpec {
        enclave_id: id.to_owned(),
        image: image.clone(),
        memory_mib: alloc.memory_mib,
        cpus: alloc.cpus.clone(),
        root_mount,
        enclave_socket: enclave_socket.clone(),
        host_uid: host_id,
        host_gid: host_id,
        pids_max: crate::cgroup::DEFAULT_PIDS_MAX,
        netns,
        replacement_init,
    };
    // The enclave's socket is bound (and given to the enclave's uid) before the clone, so the
    // child can bind-mount it and init can connect while the broker is still being set up.
    let enclave_sock = cloister_vsock::EnclaveSocket::bind(&enclave_socket)
        .map_err(|e| StartFailure::chain(FailureKind::System, &e))?;
    sys::lchown_at(
        sys::open_dir(&dir).map_err(|e| sys_err(&e))?.as_ref_fd(),
        std::path::Path::new("vsock.sock"),
        host_id,
        host_id,
    )
    .map_err(|e| sys_err(&e))?;
    let (console_r, console_w) = sys::pipe().map_err(|e| sys_err(&e))?;
    // Still single-threaded here: the process backend clones.
    let mut pending = backend
        .create(&launch, console_w)
        .map_err(|e| StartFailure::chain(backend_kind(&e), &e))?;
    let pid = pending.pid();
    // The child has its copies of the network namespace helper's pipes; ours go.
    if let Some(helper) = partial.netns.as_mut() {
        helper.release();
    }
    // Dropping the pending enclave on a failure from here on kills and reaps the child and
    // removes its cgroup.
    pending
        .release()
        .map_err(|e| StartFailure::chain(backend_kind(&e), &e))?;
    sys::block_signals(&STOP_SIGNALS).map_err(|e| sys_err(&e))?;

    let console_path = run.console_path(id);
    let mut log = ConsoleLog::create(&console_path).map_err(|e| sys_err(&e))?;
    let console_thread = std::thread::Builder::new()
        .name("console".into())
        .spawn(move || {
            let _ = log.pump(std::fs::File::from(console_r));
        })
        .map_err(|e| sys_err(&e))?;

    let nsm = make_nsm()?;
    let broker = cloister_vsock::Broker::start_bound(
        // The enclave's connections to host listeners carry its host identity, never root's,
        // and its NSM requests run on its own CPUs.
        cloister_vsock::BrokerConfig::new(cid, run.root(), &enclave_socket, nsm.clone())
            .with_enclave_identity(host_id, host_id)
            .with_enclave_cpus(alloc.cpus.clone()),
        enclave_sock,
    )
    .map_err(|e| StartFailure::chain(FailureKind::System, &e))?;
    partial.broker = Some(broker);
    crate::boottrace::mark("monitor: broker started");

    let mut running = pending
        .start()
        .map_err(|e| StartFailure::chain(backend_kind(&e), &e))?;
    // Init runs, in the namespace: the helper has let go of it (or is stopped now).
    drop(partial.netns.take());
    // The supervisor of the enclave's AF_VSOCK sockets and /dev/nsm: it dials the broker as
    // the enclave does, answers /dev/nsm from the enclave's own NSM, runs on the enclave's
    // CPUs, and ends when the enclave's last process is gone.
    if let Some(listener) = running.take_notify_listener() {
        let fabric = std::sync::Arc::new(
            cloister_supervisor::EnclaveFabric::new(enclave_socket.clone(), cid)
                .with_nsm(nsm.clone())
                .with_cpus(alloc.cpus.clone()),
        );
        partial.running = Some(running);
        cloister_supervisor::Supervisor::spawn(listener, fabric)
            .map_err(|e| sys_err(&e))?
            .detach();
        crate::boottrace::mark("monitor: supervisor started");
    } else {
        partial.running = Some(running);
    }
    crate::boottrace::mark("monitor: init executing");
    Ok((pid, console_thread, nsm))
}

/// Borrowing helper: `OwnedFd` as `BorrowedFd`.
trait AsRefFd {
    fn as_ref_fd(&self) -> std::os::fd::BorrowedFd<'_>;
}

impl AsRefFd for OwnedFd {
    fn as_ref_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(self)
    }
}

impl Live {
    /// Waits until the enclave ends or a stop signal arrives.
    fn supervise(&mut self) {
        loop {
            match sys::wait_signal(&STOP_SIGNALS, 100) {
                Ok(Some(sig)) => {
                    tracing::info!(signal = sig, "terminating on request");
                    return;
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(error = %e, "waiting for signals failed");
                    return;
                }
            }
            match self.running.try_wait() {
                Ok(Some(status)) => {
                    tracing::info!(%status, "enclave ended");
                    return;
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(error = %e, "waiting for the enclave failed");
                    return;
                }
            }
        }
    }

    fn teardown(&mut self, run: &RunDir) {
        let mut rec = self.record.clone();
        rec.state = EnclaveState::Terminating;
        let _ = run.write_record(&rec);
        let status = self.running.kill();
        let ooms = self.running.oom_kills();
        let detail = self
            .running
            .exit_detail()
            .map(|d| format!(" ({d})"))
            .unwrap_or_default();
        let summary = match &status {
            Ok(s) => format!(
                "enclave {} {s}{detail}; out-of-memory kills: {ooms}",
                rec.enclave_id
            ),
            Err(e) => format!(
                "enclave {}: {e}; out-of-memory kills: {ooms}",
                rec.enclave_id
            ),
        };
        if let Some(mut b) = self.broker.take() {
            b.shutdown();
        }
        if let Some(t) = self.console.take() {
            let _ = t.join();
        }
        if let Ok(mut log) = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.console_path)
        {
            let _ = writeln!(log, "[cloister] {summary}");
        }
        append_history(run, &summary);
        if let Err(e) = self.running.cleanup() {
            tracing::warn!(error = %e, "cgroup cleanup failed");
        }
        let _ = self
            .allocator
            .release(&rec.enclave_id, &|id| run.is_alive(id));
        run.remove_enclave(&rec.enclave_id);
    }
}

/// Appends one line to `<run>/history.log` (rotated at [`HISTORY_CAP`]).
fn append_history(run: &RunDir, line: &str) {
    let path = run.root().join("history.log");
    if std::fs::metadata(&path).is_ok_and(|m| m.len() > HISTORY_CAP) {
        let _ = std::fs::rename(&path, run.root().join("history.log.1"));
    }
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
    {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let _ = writeln!(f, "{now} {line}");
    }
}
