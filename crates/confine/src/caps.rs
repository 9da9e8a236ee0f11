//! Dropping every capability (ambient, bounding, effective/permitted/inheritable) and setting
//! no_new_privs, so the enclave's processes keep none of the root powers they had inside their
//! user namespace and cannot regain any through exec.

use std::io;

/// Errors dropping privileges.
#[derive(Debug, thiserror::Error)]
pub enum CapsError {
    /// A prctl or capset call failed.
    #[error("{what} failed")]
    Syscall {
        /// The call.
        what: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

fn check(what: &'static str, rc: libc::c_long) -> Result<(), CapsError> {
    if rc < 0 {
        return Err(CapsError::Syscall {
            what,
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Highest capability number the bounding set can hold (capabilities are < 64).
const MAX_CAP: libc::c_ulong = 63;

/// `_LINUX_CAPABILITY_VERSION_3`.
const CAP_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Drops every capability of the calling thread, in the order the kernel requires (the
/// bounding set needs CAP_SETPCAP, so it goes before capset). Allocation-free.
pub fn drop_all() -> Result<(), CapsError> {
    // SAFETY: prctl with integer arguments only.
    let rc = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    };
    if rc < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
        // EINVAL: a kernel without ambient capabilities has none to clear.
        check("clearing ambient capabilities", rc.into())?;
    }
    for cap in 0..=MAX_CAP {
        // SAFETY: prctl with integer arguments only.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) };
        if rc < 0 {
            if io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
                // Past the kernel's last capability.
                break;
            }
            check("dropping the bounding set", rc.into())?;
        }
    }
    let header = CapHeader {
        version: CAP_VERSION_3,
        pid: 0,
    };
    let data = [CapData::default(); 2];
    // SAFETY: header and data are valid repr(C) structures of the layout capset(2) expects for
    // version 3 (two data elements); the kernel only reads them.
    let rc = unsafe { libc::syscall(libc::SYS_capset, std::ptr::from_ref(&header), data.as_ptr()) };
    check("capset", rc)
}

/// Sets no_new_privs (exec can never grant privileges again).
pub fn set_no_new_privs() -> Result<(), CapsError> {
    // SAFETY: prctl with integer arguments only.
    let rc = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    check("setting no_new_privs", rc.into())
}

/// Whether the bounding set holds no capability (exec can then grant none, even to root).
pub fn bounding_set_is_empty() -> bool {
    (0..=MAX_CAP).all(|cap| {
        // SAFETY: prctl with integer arguments only.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_READ, cap, 0, 0, 0) };
        // 1: held; 0: not held; EINVAL: past the kernel's last capability.
        rc != 1
    })
}

/// The effective, permitted and inheritable sets of the calling thread (low 64 bits each).
pub fn current() -> Result<[u64; 3], CapsError> {
    let header = CapHeader {
        version: CAP_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: valid header and a two-element buffer, as capget(2) requires for version 3.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_capget,
            std::ptr::from_ref(&header),
            data.as_mut_ptr(),
        )
    };
    check("capget", rc)?;
    let join = |lo: u32, hi: u32| u64::from(lo) | (u64::from(hi) << 32);
    Ok([
        join(data[0].effective, data[1].effective),
        join(data[0].permitted, data[1].permitted),
        join(data[0].inheritable, data[1].inheritable),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_everything_in_a_child() {
        let _guard = crate::testing::CHILD_LOCK
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        // SAFETY: the child makes raw syscalls only, then `_exit`s.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let code = (|| {
                if drop_all().is_err() || set_no_new_privs().is_err() {
                    return 1;
                }
                match current() {
                    Ok([0, 0, 0]) => {}
                    _ => return 2,
                }
                // SAFETY: prctl with integer arguments only.
                if unsafe { libc::prctl(libc::PR_CAPBSET_READ, 21, 0, 0, 0) } != 0 {
                    return 3; // CAP_SYS_ADMIN still in the bounding set
                }
                if !bounding_set_is_empty() {
                    return 6;
                }
                // SAFETY: prctl with integer arguments only.
                if unsafe { libc::prctl(libc::PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) } != 1 {
                    return 4;
                }
                // Without capabilities even root cannot mount.
                // SAFETY: constant C strings and a null data pointer.
                let r = unsafe {
                    libc::mount(
                        c"tmpfs".as_ptr(),
                        c"/tmp".as_ptr(),
                        c"tmpfs".as_ptr(),
                        0,
                        std::ptr::null(),
                    )
                };
                if r != -1 {
                    return 5;
                }
                0
            })();
            // SAFETY: leaving the forked child without running the parent's destructors.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status));
        assert_eq!(libc::WEXITSTATUS(status), 0);
    }
}
