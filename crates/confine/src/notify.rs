//! The notification filter: the system calls a supervisor answers for a confined process
//! (seccomp user notification, `SECCOMP_RET_USER_NOTIF`), so that programs written for AWS
//! Nitro Enclaves use `AF_VSOCK` and `/dev/nsm` unchanged.
//!
//! It is a second filter next to the baseline ([`crate::seccomp::build_supervised`]), installed
//! first with `SECCOMP_FILTER_FLAG_NEW_LISTENER`: [`install`] returns the listener descriptor,
//! which the installing process hands to its supervisor before it execs anything. The kernel
//! runs every filter and keeps the strictest verdict, so a call the baseline refuses stays
//! refused; a notified call the supervisor lets through (`SECCOMP_USER_NOTIF_FLAG_CONTINUE`)
//! runs under the baseline's verdict, which was "allow".
//!
//! What is notified, and why it is no wider (every notification is a round trip to the
//! supervisor):
//! - `socket(AF_VSOCK, ..)` only: the supervisor answers with a descriptor of its own and never
//!   lets the call through, so the enclave can never hold a real vsock socket;
//! - `connect` and `bind` only with an address length of [`VSOCK_ADDR_LEN`] (the size of
//!   `sockaddr_vm`; `sockaddr_in` has it too, so the supervisor lets those through after it
//!   read the family);
//! - `listen`, `accept`, `accept4`, `getsockname` and `getpeername` always: a filter cannot
//!   tell which descriptors the supervisor handed out, and these calls are rare next to reads
//!   and writes, which are never notified (the data path is a native socket);
//! - `ioctl` only for the requests [`NSM_IOCTL_RAW`] and [`IOCTL_VM_SOCKETS_GET_LOCAL_CID`]
//!   (compared on their low 32 bits: musl sign-extends the request).

use std::os::fd::{FromRawFd, OwnedFd};

/// Length of a `sockaddr_vm`.
pub const VSOCK_ADDR_LEN: u32 = 16;
/// AWS's NSM request: `_IOWR(0x0A, 0, struct { struct iovec request; struct iovec response; })`.
pub const NSM_IOCTL_RAW: u32 = 0xC020_0A00;
/// `IOCTL_VM_SOCKETS_GET_LOCAL_CID`: `_IO(7, 0xb9)`.
pub const IOCTL_VM_SOCKETS_GET_LOCAL_CID: u32 = 0x7b9;

const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
const SECCOMP_RET_USER_NOTIF: u32 = 0x7fc0_0000;
const SECCOMP_SET_MODE_FILTER: libc::c_uint = 1;
const SECCOMP_FILTER_FLAG_NEW_LISTENER: libc::c_ulong = 1 << 3;

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7;

/// Offsets in `struct seccomp_data` (the low word of an argument on little-endian targets).
const NR: u32 = 0;
const ARCH: u32 = 4;

/// A syscall number or address family as the 32-bit value `struct seccomp_data` holds it in;
/// used in constants, so a value that does not fit is a compile error.
#[allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "the assertion checks that the value fits in a u32"
)]
const fn word(v: i64) -> u32 {
    assert!(
        v >= 0 && v <= u32::MAX as i64,
        "a filter word fits in 32 bits"
    );
    v as u32
}

const SYS_SOCKET: u32 = word(libc::SYS_socket);
const SYS_CONNECT: u32 = word(libc::SYS_connect);
const SYS_BIND: u32 = word(libc::SYS_bind);
const SYS_IOCTL: u32 = word(libc::SYS_ioctl);
/// Socket calls notified whatever their arguments.
const SYS_NOTIFIED: [u32; 5] = [
    word(libc::SYS_listen),
    word(libc::SYS_accept),
    word(libc::SYS_accept4),
    word(libc::SYS_getsockname),
    word(libc::SYS_getpeername),
];
const AF_VSOCK: u32 = word(libc::AF_VSOCK as i64);

const fn arg_lo(n: u32) -> u32 {
    16 + 8 * n
}

const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JEQ_K: u16 = 0x15;
const BPF_RET_K: u16 = 0x06;

/// Errors installing the notification filter.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// The architecture has no notification filter.
    #[error("no notification filter for this architecture")]
    UnsupportedArch,
    /// The kernel refused the filter (no user notification, or no no_new_privs).
    #[error("installing the seccomp notification filter")]
    Install(#[source] std::io::Error),
}

/// A compiled notification filter.
#[derive(Debug, Clone)]
pub struct NotifyFilter(pub(crate) Vec<libc::sock_filter>);

impl NotifyFilter {
    /// Number of BPF instructions.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Always false (a filter has instructions).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Jump targets while assembling.
#[derive(Clone, Copy)]
enum To {
    Next,
    Allow,
    Notify,
    Label(usize),
}

struct Asm {
    code: Vec<(u16, To, To, u32)>,
}

impl Asm {
    fn ld(&mut self, off: u32) {
        self.code.push((BPF_LD_W_ABS, To::Next, To::Next, off));
    }
    fn jeq(&mut self, k: u32, yes: To, no: To) {
        self.code.push((BPF_JEQ_K, yes, no, k));
    }
    fn ret(&mut self, k: u32) {
        self.code.push((BPF_RET_K, To::Next, To::Next, k));
    }
}

/// Compiles the filter (see the module documentation for what it notifies).
pub fn build() -> Result<NotifyFilter, NotifyError> {
    if !cfg!(any(target_arch = "x86_64", target_arch = "aarch64")) {
        return Err(NotifyError::UnsupportedArch);
    }
    // Labels: 0 = socket, 1 = address length, 2 = ioctl; Allow and Notify are the last two.
    let mut a = Asm { code: Vec::new() };
    a.ld(ARCH);
    a.jeq(AUDIT_ARCH, To::Next, To::Allow);
    a.ld(NR);
    a.jeq(SYS_SOCKET, To::Label(0), To::Next);
    a.jeq(SYS_CONNECT, To::Label(1), To::Next);
    a.jeq(SYS_BIND, To::Label(1), To::Next);
    a.jeq(SYS_IOCTL, To::Label(2), To::Next);
    for nr in SYS_NOTIFIED {
        a.jeq(nr, To::Notify, To::Next);
    }
    a.ret(SECCOMP_RET_ALLOW);
    let mut labels = [0usize; 3];
    labels[0] = a.code.len();
    a.ld(arg_lo(0));
    a.jeq(AF_VSOCK, To::Notify, To::Allow);
    labels[1] = a.code.len();
    a.ld(arg_lo(2));
    a.jeq(VSOCK_ADDR_LEN, To::Notify, To::Allow);
    labels[2] = a.code.len();
    a.ld(arg_lo(1));
    a.jeq(NSM_IOCTL_RAW, To::Notify, To::Next);
    a.jeq(IOCTL_VM_SOCKETS_GET_LOCAL_CID, To::Notify, To::Allow);
    let allow = a.code.len();
    a.ret(SECCOMP_RET_ALLOW);
    let notify = a.code.len();
    a.ret(SECCOMP_RET_USER_NOTIF);
    let mut out = Vec::with_capacity(a.code.len());
    for (i, (code, jt, jf, k)) in a.code.iter().enumerate() {
        let target = |t: To| -> Result<u8, NotifyError> {
            let abs = match t {
                To::Next => i + 1,
                To::Allow => allow,
                To::Notify => notify,
                To::Label(l) => labels[l],
            };
            // Jumps go forward only, at most 255 instructions (the program is far shorter).
            u8::try_from(abs - (i + 1)).map_err(|_| NotifyError::UnsupportedArch)
        };
        let (jt, jf) = if *code == BPF_JEQ_K {
            (target(*jt)?, target(*jf)?)
        } else {
            (0, 0)
        };
        out.push(libc::sock_filter {
            code: *code,
            jt,
            jf,
            k: *k,
        });
    }
    Ok(NotifyFilter(out))
}

/// Installs `filter` on the calling thread and returns the listener descriptor (close-on-exec).
/// The caller must have set no_new_privs or hold `CAP_SYS_ADMIN`. Allocation-free, so it may
/// run in a freshly forked child.
pub fn install(filter: &NotifyFilter) -> Result<OwnedFd, NotifyError> {
    let prog = libc::sock_fprog {
        len: u16::try_from(filter.0.len())
            .map_err(|_| NotifyError::Install(std::io::Error::from_raw_os_error(libc::EINVAL)))?,
        filter: filter.0.as_ptr().cast_mut(),
    };
    // SAFETY: `prog` points at `filter`'s instructions, which outlive the call; the kernel
    // copies them.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            SECCOMP_SET_MODE_FILTER,
            SECCOMP_FILTER_FLAG_NEW_LISTENER,
            &prog as *const libc::sock_fprog,
        )
    };
    if fd < 0 {
        return Err(NotifyError::Install(std::io::Error::last_os_error()));
    }
    let fd = i32::try_from(fd)
        .map_err(|_| NotifyError::Install(std::io::Error::from_raw_os_error(libc::EBADF)))?;
    // SAFETY: the kernel just returned this new descriptor, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_assembles_with_forward_jumps() {
        let f = build().unwrap();
        assert!(f.len() > 10 && f.len() < 64);
        assert_eq!(f.0.last().unwrap().k, SECCOMP_RET_USER_NOTIF);
    }

    #[test]
    fn notified_socket_call_waits_for_the_listener() {
        let filter = build().unwrap();
        let _guard = crate::testing::CHILD_LOCK
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        // SAFETY: the child makes raw syscalls only (install does not allocate), then `_exit`s.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            // SAFETY: plain prctl; the listener is dropped at once, so socket(AF_VSOCK) then
            // fails with ENOSYS (no listener) instead of waiting.
            let code = unsafe {
                libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
                match install(&filter) {
                    Ok(fd) => {
                        drop(fd);
                        let s = libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM, 0);
                        let e = *libc::__errno_location();
                        let u = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
                        if s == -1 && e == libc::ENOSYS && u >= 0 {
                            0
                        } else {
                            1
                        }
                    }
                    Err(_) => 2,
                }
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

    #[test]
    fn supervised_baseline_leaves_af_vsock_to_the_notification_filter() {
        let filter = build().unwrap();
        let baseline = crate::seccomp::build_supervised().unwrap();
        let _guard = crate::testing::CHILD_LOCK
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        // SAFETY: the child makes raw syscalls only (install does not allocate), then `_exit`s.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            // SAFETY: plain prctl and socket calls; with the listener dropped, a notified call
            // fails with ENOSYS, one the baseline refuses with EPERM.
            let code = unsafe {
                libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
                match install(&filter) {
                    Ok(fd) => {
                        drop(fd);
                        if crate::seccomp::install(&baseline).is_err() {
                            3
                        } else {
                            let v = libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM, 0);
                            let ve = *libc::__errno_location();
                            let p = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
                            let pe = *libc::__errno_location();
                            if v == -1 && ve == libc::ENOSYS && p == -1 && pe == libc::EPERM {
                                0
                            } else {
                                1
                            }
                        }
                    }
                    Err(_) => 2,
                }
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
