//! Signals: sending them, the signal mask, and waiting for one synchronously.

use super::error::{SysError, SysResult};
use nix::errno::Errno;

/// `kill(2)`.
pub fn kill(pid: i32, signal: nix::sys::signal::Signal) -> SysResult<()> {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal)
        .map_err(|e| SysError::new("kill", format!("{pid} {signal}"), e))
}

/// Unblocks every signal and restores default dispositions for the common ones (a cloned child
/// must not inherit its parent's signal mask into the enclave).
pub fn reset_signals() -> SysResult<()> {
    use nix::sys::signal::{sigprocmask, SigSet, SigmaskHow};
    sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
        .map_err(|e| SysError::new("sigprocmask", "SETMASK empty", e))
}

/// Blocks `signals` in the calling thread (threads spawned later inherit the mask).
pub fn block_signals(signals: &[nix::sys::signal::Signal]) -> SysResult<()> {
    use nix::sys::signal::{sigprocmask, SigSet, SigmaskHow};
    let mut set = SigSet::empty();
    for s in signals {
        set.add(*s);
    }
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None)
        .map_err(|e| SysError::new("sigprocmask", "SIG_BLOCK", e))
}

/// `sigtimedwait(2)`: waits up to `timeout_ms` for one of `signals` (which must be blocked).
pub fn wait_signal(
    signals: &[nix::sys::signal::Signal],
    timeout_ms: u64,
) -> SysResult<Option<i32>> {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t for these calls.
    unsafe {
        libc::sigemptyset(&mut set);
        for s in signals {
            libc::sigaddset(&mut set, *s as libc::c_int);
        }
    }
    let ts = libc::timespec {
        tv_sec: libc::time_t::try_from(timeout_ms / 1000).unwrap_or(libc::time_t::MAX),
        // Below 10^9: always fits.
        tv_nsec: libc::c_long::try_from((timeout_ms % 1000) * 1_000_000).unwrap_or(0),
    };
    // SAFETY: `set` and `ts` are valid for the call; a null siginfo pointer is allowed.
    let ret = unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &ts) };
    if ret >= 0 {
        return Ok(Some(ret));
    }
    match Errno::last() {
        Errno::EAGAIN | Errno::EINTR => Ok(None),
        e => Err(SysError::new("sigtimedwait", "", e)),
    }
}
