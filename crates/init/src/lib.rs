//! cloister-init: the enclave's PID 1 (a static binary in the bootstrap ramdisk).
//!
//! Process mode (`CLOISTER_ISOLATION=process`, set by the runtime): the runtime has already
//! confined init (seccomp filter, no capability, no_new_privs: [`cloister_confine`]) and put
//! it in the application's root (`/rootfs` of the image), handing it the image's `/cmd` and
//! `/env` as inherited descriptors ([`cloister_confine::CMD_FD_ENV`]). Init checks that it is
//! confined, sends the heartbeat to (3, 9000) through `/dev/vsock.sock`, reads the command and
//! its environment from those descriptors, then forks and execs the command (giving it the
//! ordinary OOM score, see [`launch`]), reaps every child, forwards termination signals,
//! prints `Enclave command exited with status N` (or `... killed by signal S`) and exits with
//! that status (128 + S for a signal). PID 1 exiting ends the PID namespace: the enclave is
//! gone. Started unconfined in process mode (by hand, or by the crate's tests under `unshare`),
//! init confines itself as it used to: it reads `/cmd` and `/env`, chroots into `/rootfs`,
//! drops every capability, sets no_new_privs and installs the same filter before the command.
//!
//! VM mode (no variable; a real kernel booted us): mount /proc, /sys, /dev, load the kernel
//! modules of the bootstrap ramdisk ([`vm`]), heartbeat over native AF_VSOCK, read `/env` and
//! `/cmd`, give `/rootfs` its pseudo filesystems, make `/dev/nsm` ([`nsm_device`]), chroot,
//! run the command as above under a seccomp filter that hands AWS's NSM ioctl to init, which
//! answers it from this enclave's NSM while it reaps, and power the VM off when it ends.
//!
//! [`static_build::build_static_init`] builds the static binary for tests and tools.

pub mod config;
pub mod launch;
pub mod nsm_device;
pub mod static_build;
pub mod vm;

pub use cloister_confine::{caps, seccomp};

/// Serialises the unit tests that fork: `launch` reaps every child of the process (as PID 1
/// must), so a concurrent test's child would otherwise vanish from under its `waitpid`.
#[cfg(test)]
pub(crate) static CHILD_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use cloister_vsock::{
    Transport, VsockAddr, VsockStream, ENCLAVE_SOCKET_PATH, HEARTBEAT_BYTE, HEARTBEAT_PORT,
    PARENT_CID,
};

pub use static_build::build_static_init;

/// Environment variable the runtime sets for process enclaves.
pub const ISOLATION_ENV: &str = "CLOISTER_ISOLATION";
/// The command file.
pub const CMD_PATH: &str = "/cmd";
/// The environment file.
pub const ENV_PATH: &str = "/env";
/// The application's root.
pub const ROOTFS_PATH: &str = "/rootfs";
/// How long the heartbeat exchange may take.
pub const HEARTBEAT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How init was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Inside a process enclave.
    Process,
    /// As the init of a VM.
    Vm,
}

impl Mode {
    /// Reads [`ISOLATION_ENV`].
    pub fn detect() -> Mode {
        match std::env::var(ISOLATION_ENV).as_deref() {
            Ok("process") => Mode::Process,
            _ => Mode::Vm,
        }
    }
}

/// Errors of init (each ends the enclave).
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// The heartbeat could not be delivered.
    #[error("boot heartbeat to the parent failed")]
    Heartbeat(#[source] io::Error),
    /// The parent echoed something else.
    #[error("boot heartbeat answered with {0:#04x} instead of 0xb7")]
    HeartbeatReply(u8),
    /// `/cmd` or `/env`.
    #[error("enclave configuration")]
    Config(#[from] config::ConfigError),
    /// chroot into /rootfs.
    #[error("entering {ROOTFS_PATH}")]
    Chroot(#[source] io::Error),
    /// Compiling the seccomp filter.
    #[error("building the seccomp filter")]
    Seccomp(#[from] seccomp::SeccompError),
    /// Dropping privileges or installing the filter.
    #[error("confining the enclave")]
    Confine(#[from] cloister_confine::ConfineError),
    /// Running the command.
    #[error("running the enclave command")]
    Launch(#[from] launch::LaunchError),
    /// VM set-up.
    #[error("VM set-up")]
    Vm(#[from] vm::VmError),
    /// `/dev/nsm` could not be set up (the command runs without it).
    #[error("/dev/nsm is not served")]
    NsmDevice(#[source] nsm_device::NsmDeviceError),
}

/// Sends 0xB7 to (3, 9000) and waits for it to come back.
pub fn heartbeat(transport: &Transport) -> Result<(), InitError> {
    let mut s = VsockStream::connect_with(transport, VsockAddr::new(PARENT_CID, HEARTBEAT_PORT))
        .map_err(|e| InitError::Heartbeat(e.into()))?;
    s.set_read_timeout(Some(HEARTBEAT_TIMEOUT))
        .and_then(|()| s.set_write_timeout(Some(HEARTBEAT_TIMEOUT)))
        .and_then(|()| s.write_all(&[HEARTBEAT_BYTE]))
        .map_err(InitError::Heartbeat)?;
    let mut b = [0u8; 1];
    s.read_exact(&mut b).map_err(InitError::Heartbeat)?;
    if b[0] != HEARTBEAT_BYTE {
        return Err(InitError::HeartbeatReply(b[0]));
    }
    Ok(())
}

fn chroot_rootfs() -> Result<(), InitError> {
    nix::unistd::chroot(ROOTFS_PATH).map_err(|e| InitError::Chroot(e.into()))?;
    nix::unistd::chdir("/").map_err(|e| InitError::Chroot(e.into()))
}

/// The command, its environment and its resolved path.
struct Command {
    argv: Vec<std::ffi::CString>,
    env: Vec<std::ffi::CString>,
}

fn read_command() -> Result<Command, InitError> {
    let argv = config::parse_cmd(&config::read_bounded(
        Path::new(CMD_PATH),
        config::MAX_CMD_BYTES,
    )?)?;
    let env_path = PathBuf::from(ENV_PATH);
    let env = if env_path.exists() {
        config::parse_env(&config::read_bounded(&env_path, config::MAX_ENV_BYTES)?)?
    } else {
        Vec::new()
    };
    Ok(Command { argv, env })
}

/// The descriptor the runtime passed in environment variable `var`, if it names one that is
/// open (never 0, 1 or 2).
fn inherited_file(var: &str) -> Option<std::fs::File> {
    use std::os::fd::FromRawFd;
    let fd: std::os::fd::RawFd = std::env::var(var).ok()?.parse().ok()?;
    // SAFETY: fcntl(F_GETFD) on an integer only queries descriptor flags.
    if fd < 3 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return None;
    }
    // SAFETY: the runtime opened this descriptor for init and nothing else in this process
    // owns it; the `File` takes it over and closes it once read (the command never sees it).
    Some(unsafe { std::fs::File::from_raw_fd(fd) })
}

/// The command and environment from the descriptors the runtime handed over (the image's
/// `/cmd` and `/env`, opened before it moved init into `/rootfs`).
fn read_inherited_command() -> Result<Command, InitError> {
    let cmd = inherited_file(cloister_confine::CMD_FD_ENV).ok_or_else(|| {
        config::ConfigError::Read(
            PathBuf::from(CMD_PATH),
            io::Error::new(io::ErrorKind::NotFound, "the runtime passed no command"),
        )
    })?;
    let argv = config::parse_cmd(&config::read_bounded_from(
        cmd,
        Path::new(CMD_PATH),
        config::MAX_CMD_BYTES,
    )?)?;
    let env = match inherited_file(cloister_confine::ENV_FD_ENV) {
        Some(f) => config::parse_env(&config::read_bounded_from(
            f,
            Path::new(ENV_PATH),
            config::MAX_ENV_BYTES,
        )?)?,
        None => Vec::new(),
    };
    Ok(Command { argv, env })
}

fn exec_and_wait(cmd: &Command) -> Result<launch::Outcome, InitError> {
    let program = cmd.argv.first().ok_or(config::ConfigError::EmptyCommand)?;
    let path = launch::resolve(program, &config::search_path(&cmd.env))?;
    Ok(launch::run(&path, &cmd.argv, &cmd.env)?)
}

/// Process mode, up to the command's end.
pub fn run_process_mode() -> Result<launch::Outcome, InitError> {
    let confined = cloister_confine::is_confined();
    heartbeat(&Transport::Enclave(PathBuf::from(ENCLAVE_SOCKET_PATH)))?;
    let cmd = if confined {
        // The runtime confined us and moved us into the application's root already.
        read_inherited_command()?
    } else {
        // Started by something else: confine ourselves as the runtime would have.
        let cmd = read_command()?;
        chroot_rootfs()?;
        let filters = seccomp::build()?;
        cloister_confine::confine(&filters)?;
        cmd
    };
    exec_and_wait(&cmd)
}

/// VM mode, up to the command's end.
pub fn run_vm_mode() -> Result<launch::Outcome, InitError> {
    vm::mount_pseudo_filesystems()?;
    for module in vm::module_paths(Path::new("/"))? {
        vm::load_module(&module)?;
    }
    heartbeat(&Transport::Native)?;
    let cmd = read_command()?;
    vm::prepare_rootfs()?;
    // `/dev/nsm`, served by init (see `nsm_device`); without it the command still runs.
    let nsm = match nsm_device::NsmDevice::prepare(Path::new(nsm_device::NSM_NODE)) {
        Ok(device) => device,
        Err(e) => {
            report(&InitError::NsmDevice(e));
            None
        }
    };
    chroot_rootfs()?;
    let program = cmd.argv.first().ok_or(config::ConfigError::EmptyCommand)?;
    let path = launch::resolve(program, &config::search_path(&cmd.env))?;
    Ok(match nsm {
        Some(device) => launch::run_with_nsm(&path, &cmd.argv, &cmd.env, device)?,
        None => launch::run(&path, &cmd.argv, &cmd.env)?,
    })
}

fn report(e: &InitError) {
    let mut msg = format!("cloister-init: {e}");
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg.push_str(&format!(": {s}"));
        source = s.source();
    }
    let _ = writeln!(io::stderr(), "{msg}");
}

/// A byte string every build of this init carries (its `main` refers to it): how the runtime
/// tells Cloister's init from a foreign one in an image (`cloister_runtime::initswap`).
pub const INIT_MARKER: &[u8] = b"cloister-init:pid1:7c3e9a51d04b";

/// Exit status of `cloister-init` started anywhere but as PID 1.
pub const NOT_PID1_EXIT: i32 = 2;

/// The binary's entry point. Never returns.
///
/// Outside an enclave it refuses to run: as the PID 1 of a VM it ends by signalling every
/// process and powering off, which on a host would take the host down.
pub fn main() -> ! {
    // Keeps the marker in the binary whatever the optimiser and linker drop.
    std::hint::black_box(INIT_MARKER);
    let pid = std::process::id();
    if pid != 1 {
        let _ = writeln!(
            io::stderr(),
            "cloister-init: runs only as an enclave's PID 1 (this is pid {pid}); doing nothing"
        );
        std::process::exit(NOT_PID1_EXIT);
    }
    let mode = Mode::detect();
    let result = match mode {
        Mode::Process => run_process_mode(),
        Mode::Vm => run_vm_mode(),
    };
    let code = match result {
        Ok(outcome) => {
            let mut out = io::stdout().lock();
            let _ = writeln!(out, "{}", outcome.message());
            let _ = out.flush();
            outcome.exit_code()
        }
        Err(e) => {
            report(&e);
            1
        }
    };
    match mode {
        Mode::Process => std::process::exit(code),
        Mode::Vm => vm::power_off(),
    }
}
