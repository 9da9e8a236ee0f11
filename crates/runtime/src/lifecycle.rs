//! The lifecycle verbs as a library: what `run-enclave`, `describe-enclaves`,
//! `terminate-enclave` and `console` do, called by the CLI's thin handlers.
//!
//! [`run_enclave`] validates the request (and that the run and PKI directories are writable by
//! nobody else), creates the enclave's directory (taking its lock),
//! writes `spec.json`, starts the monitor detached (a new session outliving the CLI) with the
//! ready pipe on fd 3 and the lock on fd 4, and waits for the monitor's one-line answer.
//!
//! A single-threaded caller (the CLI) starts the monitor by forking without exec: a first
//! child calls `setsid`, forks the monitor and exits at once, so the monitor is neither the
//! caller's child (no zombie in a long-lived caller) nor a session leader; the monitor sets
//! up its standard streams and descriptors exactly as an exec'd one would have them, closes
//! every other descriptor and runs [`crate::monitor::monitor_main`] in place, which spares
//! loading and relocating the program again. A caller that exits right after
//! ([`run_enclave_then_exit`], the CLI) forks the monitor directly, without the intermediate
//! child: it becomes an orphan when the caller exits. A multi-threaded caller (where a fork may only
//! exec), or one whose configuration says so ([`MONITOR_EXEC_ENV`]), re-executes the program the
//! caller names ([`MonitorCommand`]) with the hidden subcommand
//! ([`crate::monitor::MONITOR_SUBCOMMAND`]), with the run directory in its environment.
//!
//! Either way the monitor runs with the caller's configuration
//! ([`crate::config::RuntimeConfig::current`]), which travels in the launch description.

use crate::allocator::{self, CpuRequest};
use crate::backend::Isolation;
use crate::monitor::{FailureKind, MonitorMessage, MonitorSpec, StartFailure, LOCK_FD, READY_FD};
use crate::state::{EnclaveRecord, RunDir, StateError};
use crate::sys;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Environment variable that, when set to anything, makes [`run_enclave`] start the monitor by
/// exec'ing [`MonitorCommand`] even where a fork alone would do (for comparison and debugging).
pub const MONITOR_EXEC_ENV: &str = crate::config::MONITOR_EXEC_ENV;
/// Environment variable overriding the boot timeout (milliseconds).
pub const BOOT_TIMEOUT_ENV: &str = crate::config::BOOT_TIMEOUT_ENV;
/// AWS's boot timeout unit: 90 s per started 6 GiB of image plus 90 s per started 100 GiB of
/// memory (nitro-cli's rule, kept as is).
const TIMEOUT_UNIT_MS: u64 = 90_000;
/// Extra time the CLI waits for the monitor beyond the boot timeout (setup, teardown).
const MONITOR_GRACE: Duration = Duration::from_secs(30);
/// Largest answer read from a monitor.
const MAX_MONITOR_MESSAGE: u64 = 256 * 1024;
/// Longest enclave name accepted.
pub const MAX_NAME_LEN: usize = 128;
/// How long `terminate` waits for a monitor to finish its teardown.
const TERMINATE_WAIT: Duration = Duration::from_secs(15);

/// Lifecycle errors.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    /// The request is invalid before anything starts.
    #[error("{0}")]
    Invalid(StartFailure),
    /// The monitor reported a failure.
    #[error("{0}")]
    Start(StartFailure),
    /// The monitor could not be started.
    #[error("cannot start the enclave monitor")]
    Spawn(#[source] std::io::Error),
    /// The monitor ended without answering.
    #[error("the enclave monitor exited without reporting ({0})")]
    MonitorVanished(String),
    /// The run directory failed.
    #[error(transparent)]
    State(#[from] StateError),
    /// No such enclave.
    #[error("no running enclave matches {0}")]
    NotFound(String),
    /// The enclave is not in debug mode.
    #[error("enclave {0} was not started in debug mode; its console is not available")]
    NotDebug(String),
    /// The monitor did not stop.
    #[error("enclave {0} did not terminate within {1:?}")]
    TerminateTimeout(String, Duration),
    /// Streaming the console failed.
    #[error("console stream failed")]
    Console(#[source] std::io::Error),
}

impl LifecycleError {
    /// The failure class, for error codes.
    pub fn kind(&self) -> Option<FailureKind> {
        match self {
            LifecycleError::Invalid(f) | LifecycleError::Start(f) => Some(f.kind),
            _ => None,
        }
    }
}

/// What `run-enclave` asks for.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The image.
    pub eif_path: PathBuf,
    /// CPUs.
    pub cpus: CpuRequest,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// CID (0: assign).
    pub cid: u64,
    /// Debug mode.
    pub debug_mode: bool,
    /// Name (default: the image file's stem).
    pub name: Option<String>,
    /// Backend.
    pub isolation: Isolation,
}

/// The program and leading arguments that start a monitor (`<exe> <args..> <enclave-id>`).
#[derive(Debug, Clone)]
pub struct MonitorCommand {
    /// The program (normally the running `cloister` binary).
    pub program: PathBuf,
    /// Arguments before the enclave id (normally the hidden subcommand and `--enclave-id`).
    pub args: Vec<String>,
}

/// The boot timeout for an image of `eif_len` bytes and `memory_mib` of memory, or the
/// configuration's ([`BOOT_TIMEOUT_ENV`]) when set.
pub fn boot_timeout_ms(eif_len: u64, memory_mib: u64) -> u64 {
    if let Some(ms) = crate::config::RuntimeConfig::current().boot_timeout_ms {
        return ms;
    }
    nitro_boot_timeout_ms(eif_len, memory_mib)
}

/// nitro-cli's boot timeout for an image of `eif_len` bytes and `memory_mib` of memory.
fn nitro_boot_timeout_ms(eif_len: u64, memory_mib: u64) -> u64 {
    let eif_blocks = eif_len.div_ceil(6 << 30).max(1);
    let mem_blocks = (memory_mib.saturating_mul(1 << 20))
        .div_ceil(100 << 30)
        .max(1);
    TIMEOUT_UNIT_MS * (eif_blocks + mem_blocks)
}

fn invalid(kind: FailureKind, msg: impl std::fmt::Display) -> LifecycleError {
    LifecycleError::Invalid(StartFailure {
        kind,
        message: msg.to_string(),
    })
}

/// How a single-threaded caller forks the monitor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Detach {
    /// Through an intermediate child, so the monitor is never the caller's child.
    Twice,
    /// Directly: the monitor is the caller's child until the caller exits.
    Once,
}

/// Starts an enclave and returns its record once it has booted.
pub fn run_enclave(
    run: &RunDir,
    opts: &RunOptions,
    monitor: &MonitorCommand,
) -> Result<EnclaveRecord, LifecycleError> {
    run_enclave_with(run, opts, monitor, Detach::Twice)
}

/// [`run_enclave`] for a caller that exits as soon as it returns (the CLI). A single-threaded
/// caller forks the monitor once instead of through an intermediate child: the monitor (in a
/// session of its own, as always) is the caller's child only until the caller exits, then it
/// is an orphan adopted by init (or the nearest subreaper), where the double fork puts it at
/// once. That spares a process and a wait on the boot path. A caller that lives on must use
/// [`run_enclave`], or each monitor that ends stays a zombie while it lives.
pub fn run_enclave_then_exit(
    run: &RunDir,
    opts: &RunOptions,
    monitor: &MonitorCommand,
) -> Result<EnclaveRecord, LifecycleError> {
    run_enclave_with(run, opts, monitor, Detach::Once)
}

fn run_enclave_with(
    run: &RunDir,
    opts: &RunOptions,
    monitor: &MonitorCommand,
    detach: Detach,
) -> Result<EnclaveRecord, LifecycleError> {
    crate::boottrace::mark("cli: run-enclave");
    allocator::validate_cid(opts.cid).map_err(|e| invalid(FailureKind::CidInvalid, e))?;
    // The run directory and the PKI hold what the runtime trusts: refuse ones that others
    // could write to before anything is created in them.
    let unsafe_dir = |e: crate::state::UnsafeDirError| {
        LifecycleError::Invalid(StartFailure::chain(FailureKind::UnsafeDir, &e))
    };
    run.prepare().map_err(unsafe_dir)?;
    let config = crate::config::RuntimeConfig::current();
    crate::nsm::check_pki_dir(&config.pki_dir).map_err(unsafe_dir)?;
    let meta = std::fs::metadata(&opts.eif_path).map_err(|e| {
        invalid(
            FailureKind::Image,
            format!("cannot read {}: {e}", opts.eif_path.display()),
        )
    })?;
    crate::monitor::check_memory(opts.memory_mib, meta.len()).map_err(LifecycleError::Invalid)?;
    let name = match &opts.name {
        Some(n) => n.clone(),
        None => opts
            .eif_path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("enclave")
            .to_owned(),
    };
    if name.is_empty() || name.len() > MAX_NAME_LEN || name.chars().any(char::is_control) {
        return Err(invalid(
            FailureKind::BadRequest,
            format!("enclave name must be 1..={MAX_NAME_LEN} printable characters"),
        ));
    }
    if run.list()?.iter().any(|r| r.enclave_name == name) {
        return Err(invalid(
            FailureKind::BadRequest,
            format!("an enclave named {name:?} is already running"),
        ));
    }
    let eif_path = std::fs::canonicalize(&opts.eif_path).map_err(|e| {
        invalid(
            FailureKind::Image,
            format!("cannot read {}: {e}", opts.eif_path.display()),
        )
    })?;

    let id = crate::ids::new_enclave_id();
    let lock = run.create_enclave_dir(&id)?;
    let spec = MonitorSpec {
        enclave_id: id.clone(),
        enclave_name: name,
        eif_path,
        cpus: opts.cpus.clone(),
        memory_mib: opts.memory_mib,
        cid: opts.cid,
        debug_mode: opts.debug_mode,
        isolation: opts.isolation,
        boot_timeout_ms: boot_timeout_ms(meta.len(), opts.memory_mib),
        config: (*config).clone(),
    };
    let spec_path = run.enclave_dir(&id).join("spec.json");
    let write = serde_json::to_vec_pretty(&spec)
        .map_err(std::io::Error::other)
        .and_then(|b| std::fs::write(&spec_path, b));
    if let Err(e) = write {
        run.remove_enclave(&id);
        return Err(StateError::Io(spec_path, e).into());
    }
    let result = spawn_and_wait(run, &id, &spec, lock, monitor, detach);
    if result.is_err() && !run.is_alive(&id) {
        run.remove_enclave(&id);
    }
    result
}

fn spawn_and_wait(
    run: &RunDir,
    id: &str,
    spec: &MonitorSpec,
    lock: std::fs::File,
    monitor: &MonitorCommand,
    detach: Detach,
) -> Result<EnclaveRecord, LifecycleError> {
    let (ready_r, ready_w) = sys::pipe().map_err(|e| LifecycleError::Spawn(e.errno.into()))?;
    let log = std::fs::File::create(run.enclave_dir(id).join("monitor.log"))
        .map_err(LifecycleError::Spawn)?;
    if !spec.config.monitor_exec && sys::thread_count() == Some(1) {
        let pipes = (ready_r, ready_w);
        return fork_and_wait(run, id, spec, lock, log, pipes, detach);
    }
    let ready_raw = ready_w.as_raw_fd();
    let lock_raw = lock.as_raw_fd();
    let mut cmd = std::process::Command::new(&monitor.program);
    cmd.args(&monitor.args)
        .arg(id)
        // The one setting an exec'd monitor needs before it finds the launch description,
        // which carries the rest.
        .env(crate::config::RUN_DIR_ENV, run.root())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log);
    // SAFETY: the closure runs in the forked child before exec and only calls async-signal-safe
    // functions (setsid, fcntl, dup2) on descriptors that are open in the child (inherited copies).
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Move both out of the way first: either may currently be fd 3 or 4.
            let ready_tmp = libc::fcntl(ready_raw, libc::F_DUPFD_CLOEXEC, 10);
            let lock_tmp = libc::fcntl(lock_raw, libc::F_DUPFD_CLOEXEC, 10);
            if ready_tmp < 0 || lock_tmp < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::dup2(ready_tmp, READY_FD) < 0 || libc::dup2(lock_tmp, LOCK_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    crate::boottrace::mark("cli: spawning the monitor");
    let mut child = cmd.spawn().map_err(LifecycleError::Spawn)?;
    crate::boottrace::mark("cli: monitor spawned");
    drop(ready_w);
    drop(lock);
    let wait = Duration::from_millis(spec.boot_timeout_ms) + MONITOR_GRACE;
    let answer = read_answer(ready_r, wait);
    crate::boottrace::mark("cli: monitor answered");
    // The monitor is a session leader of its own; reap it if it already exited so no zombie is
    // left while this process lives on (tests), otherwise leave it running.
    let _ = child.try_wait();
    match answer {
        Some(MonitorMessage::Ready(rec)) => Ok(*rec),
        Some(MonitorMessage::Failed(f)) => {
            let _ = child.wait();
            Err(LifecycleError::Start(f))
        }
        None => {
            let _ = child.kill();
            let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
            Err(LifecycleError::MonitorVanished(status))
        }
    }
}

/// Starts the monitor by a fork without exec, through an intermediate child or not (see the
/// module docs and [`Detach`]), and waits for its answer. The caller must be single-threaded.
fn fork_and_wait(
    run: &RunDir,
    id: &str,
    spec: &MonitorSpec,
    lock: std::fs::File,
    log: std::fs::File,
    (ready_r, ready_w): (OwnedFd, OwnedFd),
    detach: Detach,
) -> Result<EnclaveRecord, LifecycleError> {
    let spawn_err = |e: sys::SysError| LifecycleError::Spawn(e.errno.into());
    let null = std::fs::File::open("/dev/null").map_err(LifecycleError::Spawn)?;
    if detach == Detach::Once {
        let caller = i32::try_from(std::process::id()).ok();
        crate::boottrace::mark("cli: forking the monitor");
        // SAFETY: the caller checked that this process is single-threaded, so the child may
        // run ordinary code; it never returns into the caller (it ends in `exit_now`).
        let monitor_pid = match unsafe { sys::clone_process(0) }.map_err(spawn_err)? {
            sys::Forked::Parent(pid) => pid,
            sys::Forked::Child => {
                drop(ready_r);
                // A forked child is never a process-group leader, so `setsid` succeeds.
                if sys::setsid().is_err() {
                    sys::exit_now(1);
                }
                let code = match become_monitor(&null, &log, &ready_w, &lock) {
                    Ok(()) => crate::monitor::monitor_main_with(run, id, caller),
                    Err(_) => 1,
                };
                sys::exit_now(code)
            }
        };
        drop(ready_w);
        drop(lock);
        drop(log);
        crate::boottrace::mark("cli: monitor forked");
        return wait_monitor(run, id, spec, ready_r, Some(monitor_pid));
    }
    let (pid_r, pid_w) = sys::pipe().map_err(spawn_err)?;
    crate::boottrace::mark("cli: forking the monitor");
    // SAFETY: the caller checked that this process is single-threaded, so the children may
    // run ordinary code; neither ever returns into the caller (both end in `exit_now`).
    let first = match unsafe { sys::clone_process(0) }.map_err(spawn_err)? {
        sys::Forked::Parent(pid) => pid,
        sys::Forked::Child => {
            drop(ready_r);
            drop(pid_r);
            if sys::setsid().is_err() {
                sys::exit_now(1);
            }
            // SAFETY: as above; this intermediate child is single-threaded too.
            match unsafe { sys::clone_process(0) } {
                Ok(sys::Forked::Parent(monitor)) => {
                    let mut f = std::fs::File::from(pid_w);
                    let _ = std::io::Write::write_all(&mut f, &monitor.to_le_bytes());
                    sys::exit_now(0)
                }
                Ok(sys::Forked::Child) => {
                    drop(pid_w);
                    let code = match become_monitor(&null, &log, &ready_w, &lock) {
                        Ok(()) => crate::monitor::monitor_main_with(run, id, None),
                        Err(_) => 1,
                    };
                    sys::exit_now(code)
                }
                Err(_) => sys::exit_now(1),
            }
        }
    };
    drop(pid_w);
    drop(ready_w);
    drop(lock);
    drop(log);
    let _ = sys::wait_child(first, false);
    let mut pid_bytes = [0u8; 4];
    let monitor_pid = std::io::Read::read_exact(&mut std::fs::File::from(pid_r), &mut pid_bytes)
        .ok()
        .map(|()| i32::from_le_bytes(pid_bytes));
    crate::boottrace::mark("cli: monitor forked");
    wait_monitor(run, id, spec, ready_r, monitor_pid)
}

/// Waits for a forked monitor's answer; kills a monitor that did not answer in time.
fn wait_monitor(
    run: &RunDir,
    id: &str,
    spec: &MonitorSpec,
    ready_r: OwnedFd,
    monitor_pid: Option<i32>,
) -> Result<EnclaveRecord, LifecycleError> {
    let wait = Duration::from_millis(spec.boot_timeout_ms) + MONITOR_GRACE;
    let answer = read_answer(ready_r, wait);
    crate::boottrace::mark("cli: monitor answered");
    match answer {
        Some(MonitorMessage::Ready(rec)) => Ok(*rec),
        Some(MonitorMessage::Failed(f)) => Err(LifecycleError::Start(f)),
        None => {
            let Some(pid) = monitor_pid.filter(|p| *p > 0) else {
                return Err(LifecycleError::MonitorVanished(
                    "it could not be started".into(),
                ));
            };
            // Not our child (forked once, it is until this process exits; a zombie keeps its
            // pid from reuse): it is reaped by init. Kill it only if it still holds the lock.
            if run.is_alive(id) {
                let _ = sys::kill(pid, nix::sys::signal::Signal::SIGKILL);
                return Err(LifecycleError::MonitorVanished(
                    "it did not answer in time and was killed".into(),
                ));
            }
            Err(LifecycleError::MonitorVanished(format!(
                "monitor process {pid} ended"
            )))
        }
    }
}

/// In the forked monitor: stdin and stdout on `/dev/null`, stderr on the log, the ready pipe on
/// [`READY_FD`], the lock on [`LOCK_FD`], every other descriptor closed: what an exec'd monitor
/// starts with (the run directory is handed to the monitor's code directly).
fn become_monitor(
    null: &std::fs::File,
    log: &std::fs::File,
    ready: &OwnedFd,
    lock: &std::fs::File,
) -> Result<(), sys::SysError> {
    use std::os::fd::AsFd;
    // Move the ready pipe and the lock above the target numbers first: either may be 3 or 4.
    let ready_tmp = sys::dup_above(ready.as_fd(), 10)?;
    let lock_tmp = sys::dup_above(lock.as_fd(), 10)?;
    sys::dup_onto(null.as_fd(), 0)?;
    sys::dup_onto(null.as_fd(), 1)?;
    sys::dup_onto(log.as_fd(), 2)?;
    sys::dup_onto(ready_tmp.as_fd(), READY_FD)?;
    sys::dup_onto(lock_tmp.as_fd(), LOCK_FD)?;
    // Everything else the caller had open (its own copies of these included) is closed; the
    // objects that owned them are never dropped, as this process never returns into the
    // caller's code.
    sys::close_from(LOCK_FD as u32 + 1)?;
    std::mem::forget((ready_tmp, lock_tmp));
    Ok(())
}

fn read_answer(ready: OwnedFd, wait: Duration) -> Option<MonitorMessage> {
    let deadline = Instant::now() + wait;
    let mut buf = Vec::new();
    let mut file = std::fs::File::from(ready);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        let ms = i32::try_from(left.as_millis()).unwrap_or(i32::MAX);
        match sys::poll_readable(std::os::fd::AsFd::as_fd(&file), ms) {
            Ok(true) => {}
            _ => return None,
        }
        let mut chunk = [0u8; 4096];
        let n = (&mut file)
            .take(MAX_MONITOR_MESSAGE)
            .read(&mut chunk)
            .ok()?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.contains(&b'\n') || buf.len() as u64 >= MAX_MONITOR_MESSAGE {
            break;
        }
    }
    let line = buf.split(|b| *b == b'\n').next()?;
    serde_json::from_slice(line).ok()
}

/// Every running enclave.
pub fn describe(run: &RunDir) -> Result<Vec<EnclaveRecord>, LifecycleError> {
    Ok(run.list()?)
}

/// Which enclave(s) a verb applies to.
#[derive(Debug, Clone)]
pub enum Selector {
    /// By id.
    Id(String),
    /// By name.
    Name(String),
    /// All of them.
    All,
}

/// The records `sel` names (an error when a specific one is missing).
pub fn select(run: &RunDir, sel: &Selector) -> Result<Vec<EnclaveRecord>, LifecycleError> {
    let all = run.list()?;
    let found: Vec<EnclaveRecord> = match sel {
        Selector::All => return Ok(all),
        Selector::Id(id) => all.into_iter().filter(|r| &r.enclave_id == id).collect(),
        Selector::Name(n) => all.into_iter().filter(|r| &r.enclave_name == n).collect(),
    };
    if found.is_empty() {
        return Err(LifecycleError::NotFound(match sel {
            Selector::Id(id) => format!("enclave id {id}"),
            Selector::Name(n) => format!("enclave name {n}"),
            Selector::All => String::new(),
        }));
    }
    Ok(found)
}

/// Terminates one enclave: asks its monitor to stop and waits until it is gone.
pub fn terminate(run: &RunDir, rec: &EnclaveRecord) -> Result<(), LifecycleError> {
    let id = &rec.enclave_id;
    if !run.is_alive(id) {
        return Ok(());
    }
    let pid = i32::try_from(rec.monitor_pid).unwrap_or(0);
    if pid > 0 {
        let _ = sys::kill(pid, nix::sys::signal::Signal::SIGTERM);
    }
    let deadline = Instant::now() + TERMINATE_WAIT;
    while run.is_alive(id) {
        if Instant::now() >= deadline {
            if pid > 0 {
                // The monitor is stuck: kill it; the parent-death signal ends the enclave.
                let _ = sys::kill(pid, nix::sys::signal::Signal::SIGKILL);
            }
            return Err(LifecycleError::TerminateTimeout(id.clone(), TERMINATE_WAIT));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    run.remove_enclave(id);
    Ok(())
}

/// Streams a debug-mode enclave's console to `out` until it ends or `disconnect` passes
/// without output.
pub fn console(
    run: &RunDir,
    rec: &EnclaveRecord,
    out: &mut dyn std::io::Write,
    disconnect: Option<Duration>,
) -> Result<(), LifecycleError> {
    if !rec.debug_mode {
        return Err(LifecycleError::NotDebug(rec.enclave_id.clone()));
    }
    let path = run.console_path(&rec.enclave_id);
    let id = rec.enclave_id.clone();
    crate::console::follow(&path, out, &|| !run.is_alive(&id), disconnect)
        .map_err(LifecycleError::Console)
}

/// Resolves `path` relative to the current directory (for error messages).
pub fn display_path(path: &Path) -> String {
    path.display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_timeout_follows_nitro_rule() {
        assert_eq!(nitro_boot_timeout_ms(1 << 20, 512), 180_000);
        assert_eq!(nitro_boot_timeout_ms((6 << 30) + 1, 512), 270_000);
    }
}
