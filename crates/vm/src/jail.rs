//! QEMU's confinement, applied in the forked child just before `exec`.
//!
//! Besides QEMU's own seccomp sandbox (`-sandbox on`, see [`crate::qemu`]), the child:
//! 1. writes itself into the enclave's cgroup (every `cgroup.procs` file given: cpuset = the
//!    enclave's CPUs, memory = the enclave's memory plus QEMU's overhead, a pids limit), while it
//!    is still root, so QEMU never runs a guest instruction outside it;
//! 2. enters new mount (all mounts made private), network (no interface but a `lo` that is
//!    down), IPC and UTS namespaces;
//! 3. replaces its supplementary groups (none, or only the group owning `/dev/kvm` when QEMU
//!    uses KVM) and becomes the unprivileged uid/gid ([`Jail::run_as`]);
//! 4. sets no_new_privs and the parent-death signal (SIGKILL). The death signal comes after
//!    the uid change because the kernel clears it on credential changes; if the parent already
//!    died in between, the child gives up;
//! 5. marks every descriptor above 2 close-on-exec (`close_range(3, ~0, CLOSE_RANGE_CLOEXEC)`,
//!    or a loop over the descriptor table where the kernel lacks it), so only the stdio pipes
//!    reach QEMU.
//!
//! Everything the child needs (paths as C strings, ids) is prepared in [`Jail::new`] before
//! the fork: between fork and exec only system calls run, nothing allocates.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

/// Highest descriptor the fallback loop visits when `RLIMIT_NOFILE` is unlimited.
const FALLBACK_FD_LIMIT: libc::c_int = 1 << 16;
/// Highest descriptor the fallback loop visits at all.
const MAX_FD_LIMIT: libc::rlim_t = 1 << 20;
/// Namespaces QEMU gets of its own.
const NAMESPACES: libc::c_int =
    libc::CLONE_NEWNS | libc::CLONE_NEWNET | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS;

/// Errors preparing the confinement.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    /// A cgroup path holds a NUL byte.
    #[error("cgroup file path {0} holds a NUL byte")]
    NulInPath(PathBuf),
}

/// QEMU's confinement, ready to apply in a forked child.
#[derive(Debug)]
pub struct Jail {
    cgroup_procs: Vec<CString>,
    run_as: Option<(u32, u32)>,
    groups: Vec<libc::gid_t>,
    parent: libc::pid_t,
}

impl Jail {
    /// Prepares the confinement: the child joins `cgroup_procs` and runs as `run_as` with the
    /// supplementary `groups` only (e.g. the group of `/dev/kvm`).
    pub fn new(
        cgroup_procs: &[PathBuf],
        run_as: Option<(u32, u32)>,
        groups: &[u32],
    ) -> Result<Jail, JailError> {
        let cgroup_procs = cgroup_procs
            .iter()
            .map(|p| {
                CString::new(p.as_os_str().as_bytes()).map_err(|_| JailError::NulInPath(p.clone()))
            })
            .collect::<Result<_, _>>()?;
        Ok(Jail {
            cgroup_procs,
            run_as,
            groups: groups.to_vec(),
            // SAFETY: getpid has no preconditions.
            parent: unsafe { libc::getpid() },
        })
    }

    /// The uid/gid QEMU runs as, when it is not root.
    pub fn run_as(&self) -> Option<(u32, u32)> {
        self.run_as
    }

    /// Applies the confinement to the calling process. Only for the child between fork and
    /// exec: it makes system calls and nothing else (no allocation, no locks).
    pub fn enter(&self) -> io::Result<()> {
        for path in &self.cgroup_procs {
            join_cgroup(path)?;
        }
        // SAFETY: unshare takes flags only.
        check(unsafe { libc::unshare(NAMESPACES) })?;
        // SAFETY: a NUL-terminated static path; the other pointers may be null for a
        // propagation change.
        check(unsafe {
            libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            )
        })?;
        if let Some((uid, gid)) = self.run_as {
            // SAFETY: setgroups reads `groups.len()` ids from the vector prepared before the
            // fork; setresgid and setresuid take integers.
            unsafe {
                check(libc::setgroups(self.groups.len(), self.groups.as_ptr()))?;
                check(libc::setresgid(gid, gid, gid))?;
                check(libc::setresuid(uid, uid, uid))?;
            }
        }
        // SAFETY: prctl with integer arguments only.
        unsafe {
            check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
            check(libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
            ))?;
        }
        // SAFETY: getppid has no preconditions.
        if unsafe { libc::getppid() } != self.parent {
            // The monitor died before the death signal was armed.
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
        cloexec_above_stdio()
    }
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Writes "0" (the writer itself) into a `cgroup.procs` file.
fn join_cgroup(path: &CString) -> io::Result<()> {
    // SAFETY: `path` is NUL-terminated and outlives the call.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
    check(fd)?;
    // SAFETY: writing one byte from a static buffer to the descriptor just opened.
    let n = unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) };
    let err = io::Error::last_os_error();
    // SAFETY: closing the descriptor opened above, used by nothing else.
    unsafe { libc::close(fd) };
    if n != 1 {
        return Err(err);
    }
    Ok(())
}

/// Marks every descriptor from 3 up close-on-exec.
fn cloexec_above_stdio() -> io::Result<()> {
    // SAFETY: close_range with these flags only changes descriptor flags.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3 as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if !matches!(err.raw_os_error(), Some(libc::ENOSYS) | Some(libc::EINVAL)) {
        return Err(err);
    }
    cloexec_loop()
}

/// The fallback of [`cloexec_above_stdio`] for kernels before 5.11.
fn cloexec_loop() -> io::Result<()> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct passed.
    check(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) })?;
    let max = if limit.rlim_cur == libc::RLIM_INFINITY {
        FALLBACK_FD_LIMIT
    } else {
        libc::c_int::try_from(limit.rlim_cur.min(MAX_FD_LIMIT)).unwrap_or(FALLBACK_FD_LIMIT)
    };
    for fd in 3..max {
        // SAFETY: F_GETFD/F_SETFD on any number are harmless (EBADF when not open).
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 && flags & libc::FD_CLOEXEC == 0 {
                check(libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC))?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_in_a_cgroup_path_is_refused() {
        let bad = PathBuf::from(std::ffi::OsStr::from_bytes(b"/sys/fs/cgroup/a\0b"));
        assert!(matches!(
            Jail::new(&[bad], None, &[]),
            Err(JailError::NulInPath(_))
        ));
    }

    #[test]
    fn the_fallback_marks_inherited_descriptors() {
        // Runs in a child so the test process's descriptors are left alone.
        let file = std::fs::File::open("/dev/null").unwrap();
        // SAFETY: duplicating an open descriptor without CLOEXEC.
        let fd = unsafe { libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(&file), libc::F_DUPFD, 10) };
        assert!(fd >= 10);
        // SAFETY: the child only makes system calls and exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let ok = cloexec_loop().is_ok()
                // SAFETY: F_GETFD on a descriptor of this process.
                && unsafe { libc::fcntl(fd, libc::F_GETFD) } & libc::FD_CLOEXEC != 0;
            // SAFETY: leaving the forked child without running the parent's destructors.
            unsafe { libc::_exit(i32::from(!ok)) };
        }
        let mut status = 0;
        // SAFETY: waiting for the child forked above.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
        // SAFETY: closing the duplicate made above.
        unsafe { libc::close(fd) };
    }
}
