//! Running the enclave's command as PID 1 does: resolve it on PATH, fork, exec, forward
//! termination signals to it, reap every child (orphans included) and report how the command
//! ended.
//!
//! In a process enclave the runtime lowers init's OOM score adjustment (so that under memory
//! pressure the OOM killer takes the enclave's other processes before its PID 1, whose end
//! would end the enclave). The value is inherited on fork; the forked child sets its own back
//! to [`COMMAND_OOM_SCORE_ADJ`] before it execs the command (raising needs no privilege).

use std::ffi::{CStr, CString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::nsm_device::{self, NsmDevice, Supervisor};
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};

/// Signals PID 1 passes on to the command.
pub const FORWARDED: &[Signal] = &[
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

/// The OOM score adjustment the command starts with: the kernel's default.
pub const COMMAND_OOM_SCORE_ADJ: &CStr = c"0";
/// Where a process sets its own.
const OOM_SCORE_ADJ_PATH: &CStr = c"/proc/self/oom_score_adj";

/// Errors starting or waiting for the command.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// Not found on PATH.
    #[error("command {0:?} not found on PATH")]
    NotFound(String),
    /// A system call failed.
    #[error("{what} failed")]
    Syscall {
        /// The call.
        what: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

fn sys(what: &'static str) -> impl FnOnce(nix::errno::Errno) -> LaunchError {
    move |e| LaunchError::Syscall {
        what,
        source: io::Error::from(e),
    }
}

/// How the command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Exited with this status.
    Exited(i32),
    /// Killed by this signal.
    Signaled(i32),
}

impl Outcome {
    /// The status init exits with: the command's, or 128 + the signal.
    pub fn exit_code(self) -> i32 {
        match self {
            Outcome::Exited(n) => n,
            Outcome::Signaled(s) => 128 + s,
        }
    }

    /// The line printed on the console.
    pub fn message(self) -> String {
        match self {
            Outcome::Exited(n) => format!("Enclave command exited with status {n}"),
            Outcome::Signaled(s) => format!("Enclave command killed by signal {s}"),
        }
    }
}

fn is_executable(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `c` is a valid NUL-terminated path.
    path.is_file() && unsafe { libc::access(c.as_ptr(), libc::X_OK) } == 0
}

/// Resolves `program` like execvp: names with a `/` as they are, others on `search_path`.
pub fn resolve(program: &CStr, search_path: &[u8]) -> Result<CString, LaunchError> {
    let bytes = program.to_bytes();
    if bytes.contains(&b'/') {
        return Ok(program.to_owned());
    }
    for dir in search_path.split(|b| *b == b':') {
        let dir = if dir.is_empty() { b".".as_slice() } else { dir };
        let candidate =
            Path::new(std::ffi::OsStr::from_bytes(dir)).join(std::ffi::OsStr::from_bytes(bytes));
        if is_executable(&candidate) {
            if let Ok(c) = CString::new(candidate.as_os_str().as_bytes()) {
                return Ok(c);
            }
        }
    }
    Err(LaunchError::NotFound(
        String::from_utf8_lossy(bytes).into_owned(),
    ))
}

fn ptrs(v: &[CString]) -> Vec<*const libc::c_char> {
    v.iter()
        .map(|c| c.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

fn signal_set() -> SigSet {
    let mut set = SigSet::empty();
    set.add(Signal::SIGCHLD);
    for s in FORWARDED {
        set.add(*s);
    }
    set
}

/// Forks and execs `path` with `argv` and exactly `env`, then waits: forwards [`FORWARDED`]
/// signals to the command, reaps every child, and returns when the command itself ended.
pub fn run(path: &CStr, argv: &[CString], env: &[CString]) -> Result<Outcome, LaunchError> {
    run_inner(path, argv, env, None)
}

/// Like [`run`], and serves `/dev/nsm` meanwhile: the command runs under
/// [`nsm_device::filter`], whose notifications init answers with `device` while it waits.
/// Where the filter cannot be installed, the command runs without it (and says so).
pub fn run_with_nsm(
    path: &CStr,
    argv: &[CString],
    env: &[CString],
    device: NsmDevice,
) -> Result<Outcome, LaunchError> {
    run_inner(path, argv, env, Some(device))
}

/// The filter's program and the socket pair its listener crosses, made before the fork.
struct FilterHandoff {
    program: Vec<libc::sock_filter>,
    ours: OwnedFd,
    theirs: OwnedFd,
}

fn filter_handoff() -> Result<FilterHandoff, LaunchError> {
    nsm_device::check_sizes().map_err(|e| LaunchError::Syscall {
        what: "checking seccomp notifications",
        source: io::Error::other(e),
    })?;
    let (ours, theirs) = nix::sys::socket::socketpair(
        nix::sys::socket::AddressFamily::Unix,
        nix::sys::socket::SockType::Stream,
        None,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
    )
    .map_err(sys("socketpair"))?;
    Ok(FilterHandoff {
        program: nsm_device::filter(),
        ours,
        theirs,
    })
}

fn run_inner(
    path: &CStr,
    argv: &[CString],
    env: &[CString],
    device: Option<NsmDevice>,
) -> Result<Outcome, LaunchError> {
    let handoff = match device.as_ref().map(|_| filter_handoff()) {
        Some(Ok(h)) => Some(h),
        Some(Err(e)) => {
            let cause = std::error::Error::source(&e).map(ToString::to_string);
            let _ = writeln!(
                io::stderr(),
                "cloister-init: /dev/nsm is not served: {e}: {}",
                cause.unwrap_or_default()
            );
            None
        }
        None => None,
    };
    // The program is a handful of instructions: its length always fits.
    let fprog = handoff.as_ref().and_then(|h| {
        Some(libc::sock_fprog {
            len: libc::c_ushort::try_from(h.program.len()).ok()?,
            filter: h.program.as_ptr().cast_mut(),
        })
    });
    let set = signal_set();
    let mut old = SigSet::empty();
    nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), Some(&mut old))
        .map_err(sys("blocking signals"))?;
    let argv_p = ptrs(argv);
    let env_p = ptrs(env);
    // SAFETY: init is single-threaded when it forks the command (in tests the child only makes
    // async-signal-safe calls: sigprocmask, execve, write, _exit).
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(LaunchError::Syscall {
            what: "fork",
            source: io::Error::last_os_error(),
        });
    }
    if pid == 0 {
        // SAFETY: async-signal-safe calls on pointers prepared before the fork, which stay
        // valid (the child's copy of the parent's memory) until execve or _exit.
        unsafe {
            let empty: libc::sigset_t = std::mem::zeroed();
            libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            // Best effort: without /proc the command keeps init's score.
            let adj = libc::open(
                OOM_SCORE_ADJ_PATH.as_ptr(),
                libc::O_WRONLY | libc::O_CLOEXEC,
            );
            if adj >= 0 {
                let value = COMMAND_OOM_SCORE_ADJ.to_bytes();
                libc::write(adj, value.as_ptr().cast(), value.len());
                libc::close(adj);
            }
            if let (Some(prog), Some(h)) = (&fprog, &handoff) {
                let listener = nsm_device::install_with_listener(prog);
                if listener < 0 || !nsm_device::send_fd(h.theirs.as_raw_fd(), listener) {
                    let msg = b"cloister-init: cannot install the /dev/nsm filter\n";
                    libc::write(2, msg.as_ptr().cast(), msg.len());
                }
                // The listener is close-on-exec: the command never holds it.
            }
            libc::execve(path.as_ptr(), argv_p.as_ptr(), env_p.as_ptr());
            let msg = b"cloister-init: exec of the enclave command failed\n";
            libc::write(2, msg.as_ptr().cast(), msg.len());
            libc::_exit(127);
        }
    }
    let child = Pid::from_raw(pid);
    let supervisor = match (handoff, device) {
        (Some(h), Some(device)) => {
            drop(h.theirs);
            match nsm_device::recv_fd(h.ours.as_raw_fd()) {
                Ok(Some(listener)) => Some(Supervisor::new(listener, device)),
                Ok(None) => None,
                Err(e) => {
                    let _ = writeln!(io::stderr(), "cloister-init: /dev/nsm is not served: {e}");
                    None
                }
            }
        }
        _ => None,
    };
    let outcome = match supervisor {
        Some(sup) => wait_serving(child, &set, sup),
        None => wait_for(child, &set),
    };
    let _ = nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None);
    outcome
}

/// Reaps every child that has ended; `Some` once `child` itself has.
fn reap(child: Pid) -> Result<Option<Outcome>, LaunchError> {
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) if pid == child => {
                return Ok(Some(Outcome::Exited(code)));
            }
            Ok(WaitStatus::Signaled(pid, sig, _)) if pid == child => {
                return Ok(Some(Outcome::Signaled(sig as i32)));
            }
            Ok(WaitStatus::StillAlive) => return Ok(None),
            Ok(_) => {} // an orphan reaped, or a stop/continue report
            Err(nix::errno::Errno::EINTR) => {}
            Err(nix::errno::Errno::ECHILD) => {
                return Err(LaunchError::Syscall {
                    what: "waitpid (the command vanished)",
                    source: io::Error::from_raw_os_error(libc::ECHILD),
                })
            }
            Err(e) => return Err(sys("waitpid")(e)),
        }
    }
}

/// How long one wait for a signal (or a notification) lasts at most: keeps reaping going even
/// if SIGCHLD went to another thread (only possible inside a multi-threaded test process).
const WAIT_SLICE_MS: i32 = 200;

/// Like [`wait_for`], serving `/dev/nsm` notifications as they come: polls a signalfd of the
/// blocked signals next to the listener. A listener that hangs up (no process under the
/// filter is left) is dropped; a supervisor error ends the serving, never the waiting.
fn wait_serving(child: Pid, set: &SigSet, sup: Supervisor) -> Result<Outcome, LaunchError> {
    let sfd = nix::sys::signalfd::SignalFd::with_flags(
        set,
        nix::sys::signalfd::SfdFlags::SFD_CLOEXEC | nix::sys::signalfd::SfdFlags::SFD_NONBLOCK,
    )
    .map_err(sys("signalfd"))?;
    let mut sup = Some(sup);
    loop {
        if let Some(outcome) = reap(child)? {
            return Ok(outcome);
        }
        let mut fds = [
            libc::pollfd {
                fd: sfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: sup.as_ref().map_or(-1, Supervisor::listener),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a valid array of two pollfd (a negative fd is ignored by poll).
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, WAIT_SLICE_MS) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(LaunchError::Syscall {
                what: "poll",
                source: e,
            });
        }
        if fds[0].revents & libc::POLLIN != 0 {
            while let Ok(Some(info)) = sfd.read_signal() {
                // Signal numbers are small: one that does not fit is not forwarded.
                let Ok(sig) = i32::try_from(info.ssi_signo) else {
                    continue;
                };
                if sig != libc::SIGCHLD {
                    // SAFETY: sending a signal to our own child.
                    unsafe { libc::kill(child.as_raw(), sig) };
                }
            }
        }
        let ready = fds[1].revents;
        if ready & libc::POLLIN != 0 {
            if let Some(s) = sup.as_mut() {
                if let Err(e) = s.serve_one() {
                    let _ = writeln!(io::stderr(), "cloister-init: /dev/nsm stops: {e}");
                    sup = None;
                }
            }
        } else if ready & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0 {
            sup = None;
        }
    }
}

/// Reaps children until `child` ends; forwards signals meanwhile.
fn wait_for(child: Pid, set: &SigSet) -> Result<Outcome, LaunchError> {
    let timeout = libc::timespec {
        tv_sec: 0,
        tv_nsec: i64::from(WAIT_SLICE_MS) * 1_000_000,
    };
    loop {
        if let Some(outcome) = reap(child)? {
            return Ok(outcome);
        }
        // SAFETY: `set` is a valid signal set, `timeout` a valid timespec; no siginfo wanted.
        let sig = unsafe { libc::sigtimedwait(set.as_ref(), std::ptr::null_mut(), &timeout) };
        if sig > 0 && sig != libc::SIGCHLD {
            // SAFETY: sending a signal to our own child.
            unsafe { libc::kill(child.as_raw(), sig) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> CString {
        CString::new(s).unwrap()
    }

    #[test]
    fn resolves_on_path() {
        let sh = resolve(&c("sh"), b"/nonexistent:/bin:/usr/bin").unwrap();
        assert!(sh.to_bytes().ends_with(b"/sh"));
        assert_eq!(resolve(&c("/x/y"), b"").unwrap(), c("/x/y"));
        assert!(matches!(
            resolve(&c("no-such-program-here"), b"/bin"),
            Err(LaunchError::NotFound(_))
        ));
    }

    #[test]
    fn exit_status_and_signal() {
        let _guard = crate::CHILD_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let sh = resolve(&c("sh"), b"/bin:/usr/bin").unwrap();
        let out = run(&sh, &[c("sh"), c("-c"), c("exit 3")], &[]).unwrap();
        assert_eq!(out, Outcome::Exited(3));
        assert_eq!(out.message(), "Enclave command exited with status 3");
        assert_eq!(out.exit_code(), 3);
        let out = run(&sh, &[c("sh"), c("-c"), c("kill -TERM $$")], &[]).unwrap();
        assert_eq!(out, Outcome::Signaled(15));
        assert_eq!(out.message(), "Enclave command killed by signal 15");
        assert_eq!(out.exit_code(), 143);
        // Only the given environment reaches the command.
        let out = run(
            &sh,
            &[c("sh"), c("-c"), c("[ \"$X\" = 1 ] && [ -z \"$HOME\" ]")],
            &[c("X=1")],
        )
        .unwrap();
        assert_eq!(out, Outcome::Exited(0));
        let out = run(&c("/nonexistent/prog"), &[c("prog")], &[]).unwrap();
        assert_eq!(out, Outcome::Exited(127));
    }

    #[test]
    fn the_command_gets_the_ordinary_oom_score() {
        let _guard = crate::CHILD_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let sh = resolve(&c("sh"), b"/bin:/usr/bin").unwrap();
        let script = "[ \"$(cat /proc/self/oom_score_adj)\" = 0 ]";
        // This process's own score does not reach the command (raising needs no privilege;
        // going back to 0 is allowed as 0 is the least a process starts with).
        std::fs::write("/proc/self/oom_score_adj", "100").unwrap();
        let out = run(&sh, &[c("sh"), c("-c"), c(script)], &[]);
        let _ = std::fs::write("/proc/self/oom_score_adj", "0");
        assert_eq!(out.unwrap(), Outcome::Exited(0));
    }
}
