//! File descriptors: pipes, duplication, close-on-exec, polling, and `flock` locks.

use super::error::{SysError, SysResult};
use nix::errno::Errno;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// `close_range(first, ~0, 0)`: closes every descriptor from `first` up.
pub fn close_from(first: u32) -> SysResult<()> {
    // SAFETY: close_range takes plain integers; closing descriptors cannot violate memory safety
    // (no Rust object of this process owns them after this point, the caller is about to exec).
    let ret = unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, 0u32) };
    if ret == 0 {
        Ok(())
    } else {
        Err(SysError::last("close_range", first.to_string()))
    }
}

/// `dup2(2)` onto a fixed descriptor number.
pub fn dup_onto(fd: BorrowedFd<'_>, target: RawFd) -> SysResult<()> {
    // SAFETY: dup2 takes integers; `fd` is valid for the call (borrowed). Replacing `target`
    // (0/1/2) is intended: the standard streams are not owned by Rust objects we keep using.
    let ret = unsafe { libc::dup2(fd.as_raw_fd(), target) };
    if ret < 0 {
        Err(SysError::last(
            "dup2",
            format!("{} -> {target}", fd.as_raw_fd()),
        ))
    } else {
        Ok(())
    }
}

/// `pipe2(O_CLOEXEC)`: (read end, write end).
pub fn pipe() -> SysResult<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| SysError::new("pipe2", "", e))
}

/// Waits until `fd` is readable (or hung up) for at most `timeout_ms` (-1: forever).
/// Returns `true` when it became ready.
pub fn poll_readable(fd: BorrowedFd<'_>, timeout_ms: i32) -> SysResult<bool> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    let timeout = if timeout_ms < 0 {
        PollTimeout::NONE
    } else {
        PollTimeout::try_from(timeout_ms).unwrap_or(PollTimeout::MAX)
    };
    loop {
        match poll(&mut fds, timeout) {
            Ok(0) => return Ok(false),
            Ok(_) => return Ok(true),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(SysError::new("poll", fd.as_raw_fd().to_string(), e)),
        }
    }
}

/// `flock(LOCK_EX | LOCK_NB)` on an open file; `Ok(false)` when another holder has it.
pub fn try_lock_exclusive(file: &std::fs::File) -> SysResult<bool> {
    // SAFETY: flock takes a valid descriptor (borrowed from `file`) and integer flags.
    let ret = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if ret == 0 {
        return Ok(true);
    }
    match Errno::last() {
        Errno::EWOULDBLOCK => Ok(false),
        e => Err(SysError::new("flock", "LOCK_EX|LOCK_NB", e)),
    }
}

/// `flock(LOCK_EX)` on an open file, waiting for other holders.
pub fn lock_exclusive(file: &std::fs::File) -> SysResult<()> {
    flock_wait(file, libc::LOCK_EX, "LOCK_EX")
}

/// `flock(op)`, retried when a signal interrupts the wait.
fn flock_wait(file: &std::fs::File, op: libc::c_int, shown: &'static str) -> SysResult<()> {
    loop {
        // SAFETY: flock takes a valid descriptor (borrowed from `file`) and integer flags.
        let ret = unsafe { libc::flock(file.as_raw_fd(), op) };
        if ret == 0 {
            return Ok(());
        }
        match Errno::last() {
            Errno::EINTR => continue,
            e => return Err(SysError::new("flock", shown, e)),
        }
    }
}

/// `close_range(first, ~0, CLOSE_RANGE_CLOEXEC)`: marks every descriptor from `first` up
/// close-on-exec (so an `execve` that fails can still report through a pipe).
pub fn cloexec_from(first: u32) -> SysResult<()> {
    const CLOSE_RANGE_CLOEXEC: u32 = 1 << 2;
    // SAFETY: close_range takes plain integers and only changes descriptor flags.
    let ret = unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, CLOSE_RANGE_CLOEXEC) };
    if ret == 0 {
        Ok(())
    } else {
        Err(SysError::last("close_range", format!("{first} CLOEXEC")))
    }
}

/// `flock(LOCK_SH)` on an open file, waiting for an exclusive holder.
pub fn lock_shared(file: &std::fs::File) -> SysResult<()> {
    flock_wait(file, libc::LOCK_SH, "LOCK_SH")
}

/// `fcntl(F_DUPFD_CLOEXEC, min)`: a close-on-exec duplicate numbered at least `min`.
pub fn dup_above(fd: BorrowedFd<'_>, min: RawFd) -> SysResult<OwnedFd> {
    // SAFETY: fcntl takes a valid (borrowed) descriptor and integers; it returns a new
    // descriptor or -1.
    let ret = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, min) };
    if ret < 0 {
        return Err(SysError::last("fcntl", format!("F_DUPFD_CLOEXEC {min}")));
    }
    // SAFETY: a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(ret) })
}

/// Clears `FD_CLOEXEC` on `fd`, so that it is inherited across exec.
pub fn clear_cloexec(fd: BorrowedFd<'_>) -> SysResult<()> {
    // SAFETY: fcntl(F_SETFD) takes a valid (borrowed) descriptor and an integer.
    let ret = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, 0) };
    if ret < 0 {
        Err(SysError::last(
            "fcntl",
            format!("F_SETFD 0 on {}", fd.as_raw_fd()),
        ))
    } else {
        Ok(())
    }
}
