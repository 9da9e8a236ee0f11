//! Processes: `clone` with fork semantics, waiting, pidfds, `execve`/`execveat`, `_exit`, and
//! the per-process flags a child sets before it execs (session, parent-death signal,
//! no_new_privs).

use super::error::{cpath, SysError, SysResult};
use nix::errno::Errno;
use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

/// Outcome of [`clone_process`] as seen by the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forked {
    /// We are the parent; the child has this pid (in our PID namespace).
    Parent(i32),
    /// We are the child.
    Child,
}

/// `clone(2)` with fork semantics (no new stack, SIGCHLD on exit) and extra namespace flags.
///
/// # Safety
/// As with `fork(2)`: in the child only async-signal-safe work is sound unless the calling
/// process is single-threaded at the time of the call.
pub unsafe fn clone_process(ns_flags: i32) -> SysResult<Forked> {
    let flags = libc::c_ulong::try_from(ns_flags | libc::SIGCHLD)
        .map_err(|_| SysError::new("clone", format!("flags {ns_flags:#x}"), Errno::EINVAL))?;
    // SAFETY: clone with a null stack pointer duplicates the caller's stack like fork(2); the
    // caller upholds fork's rules (documented above). No pointers are passed to the kernel.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone,
            flags,
            std::ptr::null_mut::<libc::c_void>(),
            std::ptr::null_mut::<libc::c_int>(),
            std::ptr::null_mut::<libc::c_int>(),
            0 as libc::c_ulong,
        )
    };
    match ret {
        -1 => Err(SysError::last("clone", format!("flags {ns_flags:#x}"))),
        0 => Ok(Forked::Child),
        pid => i32::try_from(pid)
            .map(Forked::Parent)
            .map_err(|_| SysError::new("clone", format!("pid {pid}"), Errno::EOVERFLOW)),
    }
}

/// `setsid(2)`.
pub fn setsid() -> SysResult<()> {
    nix::unistd::setsid()
        .map(|_| ())
        .map_err(|e| SysError::new("setsid", "", e))
}

/// `prctl(PR_SET_PDEATHSIG, SIGKILL)`.
pub fn set_parent_death_kill() -> SysResult<()> {
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
        .map_err(|e| SysError::new("prctl", "PR_SET_PDEATHSIG", e))
}

/// `prctl(PR_SET_NO_NEW_PRIVS, 1)`.
pub fn set_no_new_privs() -> SysResult<()> {
    nix::sys::prctl::set_no_new_privs()
        .map_err(|e| SysError::new("prctl", "PR_SET_NO_NEW_PRIVS", e))
}

/// How a waited-for child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// Exited with a status code.
    Exited(i32),
    /// Killed by a signal.
    Signaled(i32),
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitStatus::Exited(c) => write!(f, "exited with status {c}"),
            ExitStatus::Signaled(s) => write!(f, "killed by signal {s}"),
        }
    }
}

/// `waitpid(pid, 0)`, retried on EINTR; `None` with `nohang` when the child still runs.
pub fn wait_child(pid: i32, nohang: bool) -> SysResult<Option<ExitStatus>> {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    let flags = if nohang {
        Some(WaitPidFlag::WNOHANG)
    } else {
        None
    };
    loop {
        match waitpid(nix::unistd::Pid::from_raw(pid), flags) {
            Ok(WaitStatus::Exited(_, c)) => return Ok(Some(ExitStatus::Exited(c))),
            Ok(WaitStatus::Signaled(_, s, _)) => return Ok(Some(ExitStatus::Signaled(s as i32))),
            Ok(WaitStatus::StillAlive) => return Ok(None),
            Ok(_) => continue,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(SysError::new("waitpid", pid.to_string(), e)),
        }
    }
}

/// `pidfd_open(2)`: a descriptor that becomes readable when `pid` exits.
pub fn pidfd_open(pid: i32) -> SysResult<OwnedFd> {
    // SAFETY: pidfd_open takes integers and returns a new descriptor or -1.
    let ret = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0u32) };
    if ret < 0 {
        return Err(SysError::last("pidfd_open", pid.to_string()));
    }
    let fd = RawFd::try_from(ret)
        .map_err(|_| SysError::new("pidfd_open", pid.to_string(), Errno::EOVERFLOW))?;
    // SAFETY: the kernel returned a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `execve(2)` with an explicit environment. Returns only on failure.
pub fn exec(path: &Path, argv: &[&str], env: &[&str]) -> SysError {
    let Ok(p) = cpath("execve", path) else {
        return SysError::new("execve", path.display().to_string(), Errno::EINVAL);
    };
    let to_c =
        |v: &[&str]| -> Option<Vec<CString>> { v.iter().map(|s| CString::new(*s).ok()).collect() };
    let (Some(a), Some(e)) = (to_c(argv), to_c(env)) else {
        return SysError::new("execve", path.display().to_string(), Errno::EINVAL);
    };
    match nix::unistd::execve(&p, &a, &e) {
        Ok(never) => match never {},
        Err(err) => SysError::new("execve", path.display().to_string(), err),
    }
}

/// `_exit(2)`: ends the process without running destructors or atexit handlers (for a cloned
/// child that must never return into its parent's code).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and touches no Rust state.
    unsafe { libc::_exit(code) }
}

/// `execveat(fd, "", argv, env, AT_EMPTY_PATH)`: runs the file `fd` refers to (opened before,
/// e.g. with [`open_exec`](super::open_exec), possibly from a root the process has left
/// since). Returns only on failure.
pub fn exec_fd(fd: BorrowedFd<'_>, argv: &[&str], env: &[&str]) -> SysError {
    let to_c =
        |v: &[&str]| -> Option<Vec<CString>> { v.iter().map(|s| CString::new(*s).ok()).collect() };
    let (Some(a), Some(e)) = (to_c(argv), to_c(env)) else {
        return SysError::new("execveat", format!("fd {}", fd.as_raw_fd()), Errno::EINVAL);
    };
    let ptrs = |v: &[CString]| -> Vec<*const libc::c_char> {
        v.iter()
            .map(|c| c.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect()
    };
    let (argv_p, env_p) = (ptrs(&a), ptrs(&e));
    // SAFETY: `fd` is a valid descriptor for the call; the path is an empty NUL-terminated
    // string; `argv_p` and `env_p` are NULL-terminated arrays of pointers into `a` and `e`,
    // which outlive the call. execveat returns only on failure.
    unsafe {
        libc::syscall(
            libc::SYS_execveat,
            fd.as_raw_fd(),
            c"".as_ptr(),
            argv_p.as_ptr(),
            env_p.as_ptr(),
            libc::AT_EMPTY_PATH,
        )
    };
    SysError::last("execveat", format!("fd {}", fd.as_raw_fd()))
}
