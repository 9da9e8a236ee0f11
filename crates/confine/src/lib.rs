//! cloister-confine: what confines every process of a process enclave, shared by the runtime
//! (which applies it) and Cloister's init (which checks for it, and applies it itself only
//! when something other than the runtime started it).
//!
//! - [`seccomp`]: the baseline filter, an allowlist with a reason per rule;
//! - [`notify`]: the seccomp user-notification filter a supervisor answers (AF_VSOCK,
//!   `/dev/nsm`) for programs written for Nitro Enclaves;
//! - [`caps`]: dropping every capability (bounding, ambient, inheritable, effective,
//!   permitted) and setting no_new_privs.
//!
//! [`confine`] applies all three in the order the kernel requires. The runtime calls it as
//! the last step before it execs the image's `/init`, so that nothing from the image ever runs
//! unconfined, whatever that `/init` is. [`is_confined`] tells a process whether that happened.
//!
//! The runtime also hands Cloister's init the image's `/cmd` and `/env`, which it opens before
//! it moves the enclave into the application's root, as inherited descriptors whose numbers
//! are in the environment variables [`CMD_FD_ENV`] and [`ENV_FD_ENV`].

pub mod caps;
pub mod notify;
pub mod seccomp;

/// The compiled filters against the golden files (recorded on x86_64).
#[cfg(all(test, target_arch = "x86_64"))]
mod golden;

/// What the unit tests that fork share (a module of its own, below every other).
#[cfg(test)]
mod testing {
    /// Serialises the unit tests that fork (a child forked while another test holds a lock
    /// could deadlock; a child's exit status must not be reaped by another test).
    pub(crate) static CHILD_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
}

/// Environment variable naming the descriptor of the image's `/cmd` (decimal).
pub const CMD_FD_ENV: &str = "CLOISTER_CMD_FD";
/// Environment variable naming the descriptor of the image's `/env` (absent without one).
pub const ENV_FD_ENV: &str = "CLOISTER_ENV_FD";

/// Errors confining the calling process.
#[derive(Debug, thiserror::Error)]
pub enum ConfineError {
    /// Dropping capabilities or setting no_new_privs.
    #[error("dropping privileges")]
    Caps(#[from] caps::CapsError),
    /// Installing the seccomp filter.
    #[error("installing the seccomp filter")]
    Seccomp(#[from] seccomp::SeccompError),
}

/// Drops every capability, sets no_new_privs and installs `filters` (from
/// [`seccomp::build`], compiled beforehand: this call does not allocate, so it may run in a
/// freshly forked child). Every later exec keeps all three.
pub fn confine(filters: &[seccomp::BpfProgram]) -> Result<(), ConfineError> {
    caps::drop_all()?;
    caps::set_no_new_privs()?;
    seccomp::install(filters)?;
    Ok(())
}

/// Whether the calling thread runs under a seccomp filter, with no_new_privs, and with no
/// effective, permitted or bounding capability: what [`confine`] leaves.
pub fn is_confined() -> bool {
    // SAFETY: prctl with integer arguments only.
    let mode = unsafe { libc::prctl(libc::PR_GET_SECCOMP, 0, 0, 0, 0) };
    // SAFETY: prctl with integer arguments only.
    let nnp = unsafe { libc::prctl(libc::PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) };
    mode == 2
        && nnp == 1
        && matches!(caps::current(), Ok([0, 0, _]))
        && caps::bounding_set_is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confine_leaves_a_confined_process() {
        let filters = seccomp::build().unwrap();
        let _guard = testing::CHILD_LOCK
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        // SAFETY: the child makes raw syscalls only (confine does not allocate), then `_exit`s.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let code = match confine(&filters) {
                Ok(()) if is_confined() => 0,
                Ok(()) => 1,
                Err(_) => 2,
            };
            // SAFETY: leaving the forked child without running the parent's destructors.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child with a valid status pointer.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status));
        assert_eq!(libc::WEXITSTATUS(status), 0);
    }
}
