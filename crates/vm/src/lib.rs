//! cloister-vm: VM isolation for Cloister enclaves (the runtime's `vm` backend).
//!
//! An enclave is a QEMU `microvm` guest ([`qemu`]) whose only device is a vhost-user
//! virtio-vsock device served by this process ([`device`], [`muxer`], [`packet`]). The device
//! connects the guest to the same host fabric as the process backend's broker
//! (`cloister_vsock::broker`): parents reach the enclave through `<run>/vsock/<cid>.sock`, the
//! enclave reaches parents through `<run>/vsock/3_<port>.sock`, `(3, 9000)` is the boot
//! heartbeat and `(0, 1)` the NSM.
//!
//! [`VmEnclave::start`] runs: the device (bound before QEMU starts), QEMU paused (`-S`), vCPU
//! threads pinned through QMP, `cont`, and a watchdog that kills the VM when the heartbeat does
//! not arrive within [`VmConfig::boot_timeout`]. QEMU runs under its seccomp sandbox, confined
//! by [`jail`]: in the cgroups of [`VmConfig::cgroup_procs`], in new mount, network, IPC and UTS
//! namespaces, as [`VmConfig::run_as`] (an unprivileged uid/gid) when set, with only its stdio
//! descriptors and `PR_SET_PDEATHSIG` so it never outlives its monitor. The accelerator is KVM when a real test guest runs on `/dev/kvm`, TCG
//! otherwise ([`accel`]); under TCG the kernel command line gets `tsc_early_khz=` (the host's
//! TSC rate).
//!
//! Guest image layout (what the initrd must contain, all cpio newc concatenated): Cloister's
//! static `init`, the kernel modules it loads in order (`/modules.list`: for Debian's cloud
//! kernel `virtio_ring virtio virtio_mmio vsock vmw_vsock_virtio_transport_common
//! vmw_vsock_virtio_transport`; microvm exposes virtio-mmio through ACPI), then the customer
//! ramdisk (`rootfs/`, `cmd`, `env`).

pub mod accel;
pub mod device;
pub mod jail;
pub mod muxer;
pub mod packet;
pub mod qemu;

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use accel::Accel;
use cloister_vsock::broker::NsmService;
pub use cloister_vsock::HostIdentity;
pub use device::{DeviceError, VsockDevice};
pub use muxer::{Heartbeat, Limits, Muxer, MuxerConfig, MuxerError};
use qemu::{ConsoleTail, QemuArgs, QemuError};
pub use qemu::{FirmwareChoice, HostConfig};

/// Console text the kernel prints when it panics.
pub const PANIC_MARKER: &str = "Kernel panic - not syncing";
/// Smallest guest memory accepted.
pub const MIN_MEMORY_MIB: u64 = 64;
/// Default boot timeout (TCG boots take seconds; a loaded host more).
pub const DEFAULT_BOOT_TIMEOUT: Duration = Duration::from_secs(120);
/// Poll period of waits.
const POLL: Duration = Duration::from_millis(20);

/// Called once when the enclave's heartbeat arrives.
pub type HeartbeatCallback = Box<dyn Fn() + Send + Sync>;

/// How to run one VM enclave.
pub struct VmConfig {
    /// Kernel image (bzImage).
    pub kernel: PathBuf,
    /// Initial ramdisk: the image's ramdisks concatenated.
    pub initrd: PathBuf,
    /// Extra kernel command line (the image's); the launcher adds the console and panic
    /// settings and, under TCG, `tsc_early_khz=`.
    pub cmdline: String,
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// Host CPUs: one vCPU per entry, vCPU i pinned to `cpus[i]`. Empty: one unpinned vCPU.
    pub cpus: Vec<usize>,
    /// The enclave's cid.
    pub cid: u32,
    /// The run directory (`<run>/vsock` is the fabric; `<run>/vm/<cid>` holds the sockets).
    pub run_dir: PathBuf,
    /// Where the serial console goes (written only in debug mode; capped).
    pub console: PathBuf,
    /// Debug mode: console captured to `console` and the kernel not quieted.
    pub debug: bool,
    /// The enclave's NSM.
    pub nsm: Arc<dyn NsmService>,
    /// Heartbeat callback.
    pub on_heartbeat: Option<HeartbeatCallback>,
    /// Longest time from start to heartbeat before the VM is killed.
    pub boot_timeout: Duration,
    /// Run QEMU as this (uid, gid). The kernel and initrd must be readable by it.
    pub run_as: Option<(u32, u32)>,
    /// The enclave's host identity: the vsock device connects to parent listeners with it
    /// (never as root) and gives `<run>/vsock/<cid>.sock` its gid as group, so listeners
    /// believe the enclave's `CONNECT-FROM` preambles ([`MuxerConfig::enclave_identity`]).
    /// Normally the identity QEMU runs as ([`VmConfig::run_as`]).
    pub enclave_identity: Option<HostIdentity>,
    /// `cgroup.procs` files QEMU writes itself into before it drops its privileges (one per
    /// cgroup hierarchy of the enclave's cgroup). Empty: QEMU stays in the monitor's cgroup.
    pub cgroup_procs: Vec<PathBuf>,
    /// QEMU, its firmware and the accelerator ([`HostConfig::accel`] forces one; default:
    /// [`accel::detect`]).
    pub host: HostConfig,
    /// Device resource caps.
    pub limits: Limits,
}

impl VmConfig {
    /// A configuration with defaults: 256 MiB, one unpinned vCPU, no debug, QEMU as root, no
    /// enclave identity.
    pub fn new(
        kernel: impl Into<PathBuf>,
        initrd: impl Into<PathBuf>,
        cid: u32,
        run_dir: impl Into<PathBuf>,
        nsm: Arc<dyn NsmService>,
    ) -> Self {
        let run_dir = run_dir.into();
        Self {
            kernel: kernel.into(),
            initrd: initrd.into(),
            cmdline: String::new(),
            memory_mib: 256,
            cpus: Vec::new(),
            cid,
            console: run_dir.join(format!("vm/{cid}/console.log")),
            run_dir,
            debug: false,
            nsm,
            on_heartbeat: None,
            boot_timeout: DEFAULT_BOOT_TIMEOUT,
            run_as: None,
            enclave_identity: None,
            cgroup_procs: Vec::new(),
            host: HostConfig::default(),
            limits: Limits::default(),
        }
    }
}

impl std::fmt::Debug for VmConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmConfig")
            .field("kernel", &self.kernel)
            .field("initrd", &self.initrd)
            .field("cmdline", &self.cmdline)
            .field("memory_mib", &self.memory_mib)
            .field("cpus", &self.cpus)
            .field("cid", &self.cid)
            .field("run_dir", &self.run_dir)
            .field("debug", &self.debug)
            .field("run_as", &self.run_as)
            .field("enclave_identity", &self.enclave_identity)
            .finish_non_exhaustive()
    }
}

/// How a VM ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmExit {
    /// The guest powered off (init's command ended) or rebooted.
    PoweredOff,
    /// The guest kernel panicked (the console line is kept).
    Panicked(String),
    /// Killed by [`VmEnclave::kill`].
    Killed,
    /// The firmware found nothing to boot (its console line is kept); stopped at once.
    Unbootable(String),
    /// Killed because the heartbeat did not come within the boot timeout.
    BootTimeout,
    /// QEMU failed (exit status, last stderr line).
    QemuFailed(Option<i32>, String),
}

impl std::fmt::Display for VmExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VmExit::PoweredOff => f.write_str("the guest powered off"),
            VmExit::Panicked(line) => write!(f, "the guest kernel panicked: {line}"),
            VmExit::Killed => f.write_str("the VM was killed"),
            VmExit::BootTimeout => f.write_str("the VM was killed: no heartbeat in time"),
            VmExit::Unbootable(line) => write!(
                f,
                "the guest's firmware could not boot the kernel ({line:?}); the VM was stopped"
            ),
            VmExit::QemuFailed(Some(code), last) => {
                write!(f, "QEMU exited with status {code}: {last}")
            }
            VmExit::QemuFailed(None, last) => write!(f, "QEMU was killed by a signal: {last}"),
        }
    }
}

/// Errors of the VM backend.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// The configuration is unusable.
    #[error("invalid VM configuration: {0}")]
    Config(String),
    /// The vsock device could not be set up.
    #[error("vsock device")]
    Device(#[from] DeviceError),
    /// The vsock fabric could not be set up.
    #[error("vsock fabric")]
    Muxer(#[from] MuxerError),
    /// QEMU could not be started or controlled.
    #[error("QEMU")]
    Qemu(#[from] QemuError),
    /// The heartbeat did not arrive in time (the VM still runs; see [`VmEnclave::kill`]).
    #[error("no heartbeat within {0:?}")]
    HeartbeatTimeout(Duration),
    /// The VM ended before its heartbeat.
    #[error("the VM ended before its heartbeat: {0}")]
    Exited(VmExit),
    /// QEMU's confinement could not be prepared.
    #[error("QEMU confinement")]
    Jail(#[from] jail::JailError),
    /// A system call failed.
    #[error("{context}")]
    Io {
        /// What was being done.
        context: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

fn io_err(context: &'static str) -> impl FnOnce(io::Error) -> VmError {
    move |source| VmError::Io { context, source }
}

struct Shared {
    child: Mutex<Child>,
    exit: Mutex<Option<VmExit>>,
    killed: AtomicBool,
    boot_timed_out: AtomicBool,
    console: ConsoleTail,
    stderr: ConsoleTail,
}

impl Shared {
    /// Reaps QEMU if it ended; the exit once known.
    fn poll(&self) -> Option<VmExit> {
        let mut exit = self.exit.lock().unwrap_or_else(|p| p.into_inner());
        if exit.is_some() {
            return exit.clone();
        }
        let mut child = self.child.lock().unwrap_or_else(|p| p.into_inner());
        let status = match child.try_wait() {
            Ok(Some(s)) => s,
            Ok(None) => return None,
            Err(_) => return None,
        };
        // Let the console thread drain what QEMU wrote last.
        std::thread::sleep(Duration::from_millis(50));
        let console = self.console.text();
        let result = if self.boot_timed_out.load(Ordering::SeqCst) {
            VmExit::BootTimeout
        } else if self.killed.load(Ordering::SeqCst) {
            VmExit::Killed
        } else if let Some(line) = self.console.boot_failure() {
            VmExit::Unbootable(line)
        } else if let Some(at) = console.find(PANIC_MARKER) {
            // From the marker to the end of its line (without the kernel's timestamp).
            let line = console[at..].lines().next().unwrap_or(PANIC_MARKER);
            VmExit::Panicked(line.trim().to_owned())
        } else if status.success() {
            VmExit::PoweredOff
        } else {
            let err = self.stderr.text();
            let last = err.lines().last().unwrap_or("").to_owned();
            VmExit::QemuFailed(status.code(), last)
        };
        *exit = Some(result.clone());
        exit.clone()
    }

    fn kill(&self) {
        let mut child = self.child.lock().unwrap_or_else(|p| p.into_inner());
        if let Ok(None) = child.try_wait() {
            let _ = child.kill();
        }
    }
}

/// A running VM enclave.
pub struct VmEnclave {
    shared: Arc<Shared>,
    device: VsockDevice,
    heartbeat: Arc<Heartbeat>,
    accel: Accel,
    pid: u32,
    started: Instant,
    dir: PathBuf,
}

impl std::fmt::Debug for VmEnclave {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmEnclave")
            .field("pid", &self.pid)
            .field("accel", &self.accel)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

fn chown(path: &Path, owner: Option<(u32, u32)>) -> Result<(), VmError> {
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(io_err("chown"))?;
    }
    Ok(())
}

/// Writes the image's ramdisks into one initrd at `out`, in order, each padded with zeros to a
/// 4-byte boundary (the kernel's initramfs unpacker takes concatenated cpio archives and skips
/// zero padding between them; later files override earlier ones, as in the process backend).
pub fn concat_ramdisks(parts: &[PathBuf], out: &Path) -> Result<u64, VmError> {
    let mut file = std::fs::File::create(out).map_err(io_err("creating the initrd"))?;
    let mut total = 0u64;
    for part in parts {
        let mut src = std::fs::File::open(part).map_err(io_err("opening a ramdisk"))?;
        let n = io::copy(&mut src, &mut file).map_err(io_err("copying a ramdisk"))?;
        total += n;
        let pad = (4 - total % 4) % 4;
        io::Write::write_all(&mut file, &[0u8; 3][..pad as usize])
            .map_err(io_err("padding the initrd"))?;
        total += pad;
    }
    file.sync_all().map_err(io_err("syncing the initrd"))?;
    Ok(total)
}

/// The full kernel command line for `cfg` under `accel`.
pub fn kernel_cmdline(cfg: &VmConfig, accel: Accel) -> String {
    let mut line = String::from("console=ttyS0 reboot=t i8042.noaux i8042.nomux");
    if !cfg.debug {
        line.push_str(" quiet");
    }
    if accel == Accel::Tcg {
        if let Some(khz) = accel::host_tsc_khz() {
            line.push_str(&format!(" tsc_early_khz={khz}"));
        }
    }
    // `panic=-1` goes after the image's parameters, so an image's own `panic=N` cannot delay
    // the end of a panicked VM (the kernel takes the last value), but before a `--`, which
    // starts init's arguments.
    let image = cfg.cmdline.trim();
    let tokens: Vec<&str> = image.split_whitespace().collect();
    let split = tokens
        .iter()
        .position(|t| *t == "--")
        .unwrap_or(tokens.len());
    for t in &tokens[..split] {
        line.push(' ');
        line.push_str(t);
    }
    line.push_str(" panic=-1");
    for t in &tokens[split..] {
        line.push(' ');
        line.push_str(t);
    }
    line
}

/// The sockets of one VM in its directory.
struct Sockets {
    /// The vhost-user socket of the vsock device.
    vhost: PathBuf,
    /// QEMU's QMP socket.
    qmp: PathBuf,
}

/// Refuses a configuration QEMU must not be started with.
fn check_config(cfg: &VmConfig) -> Result<(), VmError> {
    if !cloister_vsock::is_enclave_cid(cfg.cid) {
        return Err(VmError::Config(format!(
            "cid {} is not an enclave cid",
            cfg.cid
        )));
    }
    if cfg.memory_mib < MIN_MEMORY_MIB {
        return Err(VmError::Config(format!(
            "{} MiB of memory is below the minimum of {MIN_MEMORY_MIB}",
            cfg.memory_mib
        )));
    }
    for path in [&cfg.kernel, &cfg.initrd] {
        if !path.is_file() {
            return Err(VmError::Config(format!("{} is not a file", path.display())));
        }
    }
    Ok(())
}

/// QEMU's command: its command line, a clean environment, its output piped, and the jail it
/// enters between fork and exec.
fn qemu_command(cfg: &VmConfig, accel: Accel, sockets: &Sockets) -> Result<Command, VmError> {
    let cmdline = kernel_cmdline(cfg, accel);
    let firmware = qemu::select_firmware(&cfg.host);
    let args = qemu::command_line(&QemuArgs {
        accel,
        kernel: &cfg.kernel,
        initrd: &cfg.initrd,
        cmdline: &cmdline,
        memory_mib: cfg.memory_mib,
        vcpus: cfg.cpus.len().max(1),
        vhost_socket: &sockets.vhost,
        qmp_socket: &sockets.qmp,
        hugepages: qemu::hugepages_available(cfg.memory_mib),
        firmware: &firmware,
        sandbox: true,
    });
    let mut cmd = Command::new(&cfg.host.qemu);
    cmd.args(&args)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // The uid change happens in the jail, after the namespaces and the cgroup (std's
    // `Command::uid` would drop root before `pre_exec` runs).
    // Under KVM an unprivileged QEMU needs the group that owns /dev/kvm, and nothing else.
    let kvm_group: Vec<u32> = match accel {
        Accel::Kvm => std::fs::metadata("/dev/kvm")
            .ok()
            .filter(|m| m.permissions().mode() & 0o060 == 0o060)
            .map(|m| std::os::unix::fs::MetadataExt::gid(&m))
            .into_iter()
            .collect(),
        Accel::Tcg => Vec::new(),
    };
    let jail = jail::Jail::new(&cfg.cgroup_procs, cfg.run_as, &kvm_group)?;
    // SAFETY: the closure runs between fork and exec; `Jail::enter` only makes system calls
    // on data prepared before the fork (no allocation, no locks).
    unsafe {
        cmd.pre_exec(move || jail.enter());
    }
    tracing::info!(
        cid = cfg.cid,
        accel = accel.qemu_name(),
        firmware = firmware.name(),
        "starting QEMU"
    );
    Ok(cmd)
}

/// Pins QEMU's threads (each vCPU thread to one of the enclave's CPUs) through QMP, then
/// resumes the paused guest.
fn pin_and_resume(
    cfg: &VmConfig,
    pid: u32,
    qmp_socket: &Path,
    shared: &Shared,
) -> Result<(), VmError> {
    let alive = || shared.poll().is_none();
    let mut qmp = qemu::Qmp::connect(
        qmp_socket,
        Instant::now() + qemu::QMP_CONNECT_TIMEOUT,
        alive,
    )?;
    if !cfg.cpus.is_empty() {
        for tid in qemu::threads_of(pid) {
            qemu::pin_thread(tid, &cfg.cpus)?;
        }
        for (i, tid) in qmp.vcpu_threads()?.into_iter().enumerate() {
            qemu::pin_thread(tid, &cfg.cpus[i % cfg.cpus.len()..][..1])?;
        }
    }
    qmp.execute("cont")?;
    Ok(())
}

/// The boot watchdog: no heartbeat by `deadline` kills the VM, and so does a firmware that
/// found nothing to boot.
fn spawn_watchdog(
    shared: Arc<Shared>,
    hb: Arc<Heartbeat>,
    deadline: Instant,
) -> Result<(), VmError> {
    std::thread::Builder::new()
        .name("vm-boot-watchdog".into())
        .spawn(move || {
            while Instant::now() < deadline {
                if hb.booted() || shared.poll().is_some() {
                    return;
                }
                // A firmware that found nothing to boot waits forever: stop now.
                if shared.console.boot_failure().is_some() {
                    shared.kill();
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            if !hb.booted() && shared.poll().is_none() {
                shared.boot_timed_out.store(true, Ordering::SeqCst);
                shared.kill();
            }
        })
        .map_err(io_err("spawning the boot watchdog"))?;
    Ok(())
}

impl VmEnclave {
    /// Starts the VM (returns once the vCPUs run; the heartbeat comes later).
    pub fn start(mut cfg: VmConfig) -> Result<VmEnclave, VmError> {
        check_config(&cfg)?;
        let accel = cfg.host.accel.unwrap_or_else(accel::detect);
        let dir = cfg.run_dir.join("vm").join(cfg.cid.to_string());
        std::fs::create_dir_all(&dir).map_err(io_err("creating the VM directory"))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io_err("setting the VM directory's mode"))?;
        chown(&dir, cfg.run_as)?;

        let heartbeat = Arc::new(Heartbeat::new(cfg.on_heartbeat.take()));
        let muxer = Muxer::new(MuxerConfig {
            cid: cfg.cid,
            fabric_dir: cfg.run_dir.join(cloister_vsock::stream::FABRIC_SUBDIR),
            nsm: cfg.nsm.clone(),
            heartbeat: heartbeat.clone(),
            limits: cfg.limits.clone(),
            bind_host_socket: true,
            enclave_identity: cfg.enclave_identity,
        })?;
        let sockets = Sockets {
            vhost: dir.join("vsock.sock"),
            qmp: dir.join("qmp.sock"),
        };
        let _ = std::fs::remove_file(&sockets.qmp);
        let mut device = VsockDevice::start(cfg.cid, muxer, &sockets.vhost)?;
        chown(&sockets.vhost, cfg.run_as)?;

        let mut cmd = qemu_command(&cfg, accel, &sockets)?;
        let started = Instant::now();
        let mut child = cmd.spawn().map_err(io_err("starting qemu-system-x86_64"))?;
        let pid = child.id();
        let console = ConsoleTail::default();
        let stderr_tail = ConsoleTail::default();
        let console_path = if cfg.debug {
            cfg.console.clone()
        } else {
            PathBuf::from("/dev/null")
        };
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let shared = Arc::new(Shared {
            child: Mutex::new(child),
            exit: Mutex::new(None),
            killed: AtomicBool::new(false),
            boot_timed_out: AtomicBool::new(false),
            console: console.clone(),
            stderr: stderr_tail.clone(),
        });
        let fail = |e: VmError, shared: &Shared, device: &mut VsockDevice| {
            shared.kill();
            let _ = shared.child.lock().map(|mut c| c.wait());
            device.stop();
            e
        };
        if let Some(out) = stdout {
            if let Err(e) = qemu::capture_console(out, &console_path, console) {
                return Err(fail(e.into(), &shared, &mut device));
            }
        }
        if let Some(err) = stderr {
            let _ = qemu::capture_console(err, Path::new("/dev/null"), stderr_tail);
        }
        if let Err(e) = pin_and_resume(&cfg, pid, &sockets.qmp, &shared) {
            let e = match shared.poll() {
                Some(exit) => VmError::Exited(exit),
                None => e,
            };
            return Err(fail(e, &shared, &mut device));
        }
        spawn_watchdog(
            shared.clone(),
            heartbeat.clone(),
            started + cfg.boot_timeout,
        )?;

        Ok(VmEnclave {
            shared,
            device,
            heartbeat,
            accel,
            pid,
            started,
            dir,
        })
    }

    /// The accelerator in use.
    pub fn accel(&self) -> Accel {
        self.accel
    }

    /// QEMU's pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// True once the heartbeat arrived.
    pub fn booted(&self) -> bool {
        self.heartbeat.booted()
    }

    /// Waits for the heartbeat. Errors: the VM ended first, or `timeout` passed (the VM keeps
    /// running; the boot watchdog still applies).
    pub fn wait_heartbeat(&self, timeout: Duration) -> Result<Duration, VmError> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.heartbeat.wait(POLL) {
                return Ok(self.started.elapsed());
            }
            if let Some(exit) = self.shared.poll() {
                return Err(VmError::Exited(exit));
            }
            if Instant::now() >= deadline {
                return Err(VmError::HeartbeatTimeout(timeout));
            }
        }
    }

    /// The exit, when the VM has ended.
    pub fn try_wait(&self) -> Option<VmExit> {
        self.shared.poll()
    }

    /// Waits for the VM to end.
    pub fn wait(&self) -> VmExit {
        loop {
            if let Some(exit) = self.shared.poll() {
                return exit;
            }
            std::thread::sleep(POLL);
        }
    }

    /// Waits up to `timeout` for the VM to end.
    pub fn wait_timeout(&self, timeout: Duration) -> Option<VmExit> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(exit) = self.shared.poll() {
                return Some(exit);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(POLL);
        }
    }

    /// Kills the VM (SIGKILL to QEMU) and waits for it; idempotent.
    pub fn kill(&mut self) -> VmExit {
        if self.shared.poll().is_none() {
            self.shared.killed.store(true, Ordering::SeqCst);
            self.shared.kill();
        }
        let exit = self.wait();
        self.device.stop();
        exit
    }

    /// The last console bytes (debug mode or not).
    pub fn console_tail(&self) -> String {
        self.shared.console.text()
    }

    /// The device's muxer statistics.
    pub fn vsock_stats(&self) -> muxer::MuxerStats {
        self.device.backend().with_muxer(|m| m.stats())
    }
}

impl Drop for VmEnclave {
    fn drop(&mut self) {
        let _ = self.kill();
        let _ = std::fs::remove_file(self.dir.join("qmp.sock"));
        let _ = std::fs::remove_dir(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ramdisks_concatenate_with_alignment() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        std::fs::write(&a, b"12345").unwrap();
        std::fs::write(&b, b"678").unwrap();
        let out = dir.path().join("initrd");
        assert_eq!(concat_ramdisks(&[a, b], &out).unwrap(), 12);
        assert_eq!(std::fs::read(&out).unwrap(), b"12345\x00\x00\x00678\x00");
    }

    #[test]
    fn cmdline_gets_console_panic_and_tsc() {
        let nsm: Arc<dyn NsmService> = Arc::new(NoNsm);
        let mut cfg = VmConfig::new("/k", "/i", 5, "/run", nsm);
        cfg.cmdline = " init_extra=1 ".into();
        let tcg = kernel_cmdline(&cfg, Accel::Tcg);
        assert!(tcg.starts_with("console=ttyS0 reboot=t"));
        assert!(tcg.contains(" tsc_early_khz="));
        assert!(tcg.ends_with(" init_extra=1 panic=-1"));
        assert!(!kernel_cmdline(&cfg, Accel::Kvm).contains("tsc_early_khz"));
        cfg.cmdline = "panic=30 rdinit=/x -- sleep 5".into();
        assert!(
            kernel_cmdline(&cfg, Accel::Kvm).ends_with(" panic=30 rdinit=/x panic=-1 -- sleep 5")
        );
    }

    struct NoNsm;
    impl NsmService for NoNsm {
        fn handle(&self, _request: &[u8]) -> Vec<u8> {
            Vec::new()
        }
    }
}
