//! The seccomp policy of process enclaves, installed by the runtime on the enclave's first
//! process before it execs anything from the image (so it binds whatever the image's `/init`
//! is, and everything that process starts): an allowlist (rules as data, each with the reason it
//! exists, in [`rules`]), everything else failing with EPERM, plus a second filter that makes `clone3` fail
//! with ENOSYS so that libc falls back to `clone`, whose flags a filter can inspect.
//!
//! Denied on purpose (absent from the allowlist, see [`DENIED`]): everything that changes mounts
//! or namespaces, loads code into the kernel, inspects other processes, or reaches the host
//! through channels other than the vsock fabric. Conditional rules: `socket` only for
//! AF_UNIX, AF_INET, AF_INET6 and NETLINK_ROUTE (so no AF_VSOCK, no AF_PACKET); `socketpair`
//! only AF_UNIX; `clone` only without namespace flags; `ioctl` except the terminal-injection
//! requests.

mod rules;

use std::collections::BTreeMap;

pub use rules::{allowlist, Allow, Args, Deny, DENIED};

pub use seccompiler::BpfProgram;
use seccompiler::{
    SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
    TargetArch,
};

/// Errors building or installing the filter.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The architecture has no policy.
    #[error("no seccomp policy for this architecture")]
    UnsupportedArch,
    /// The filter could not be compiled.
    #[error("compiling the seccomp filter")]
    Compile(#[source] seccompiler::BackendError),
    /// The kernel refused the filter.
    #[error("installing the seccomp filter")]
    Install(#[source] seccompiler::Error),
}

/// A non-negative libc constant (an address family, a protocol, an errno, flag bits) as the
/// unsigned value a filter compares with or returns; used in constants, so a negative one is a
/// compile error.
const fn unsigned(v: libc::c_int) -> u32 {
    assert!(v >= 0, "a libc constant the filter uses is non-negative");
    v.unsigned_abs()
}

/// Namespace flags that `clone` may not carry (CLONE_NEWTIME shares its bit with the exit
/// signal byte in `clone`, and is only usable with `clone3`/`unshare`, both denied).
pub const NAMESPACE_FLAGS: u64 = unsigned(
    libc::CLONE_NEWNS
        | libc::CLONE_NEWCGROUP
        | libc::CLONE_NEWUTS
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWUSER
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWNET,
) as u64;

const AF_UNIX: u32 = unsigned(libc::AF_UNIX);
const AF_INET: u32 = unsigned(libc::AF_INET);
const AF_INET6: u32 = unsigned(libc::AF_INET6);
const AF_NETLINK: u32 = unsigned(libc::AF_NETLINK);
const AF_VSOCK: u32 = unsigned(libc::AF_VSOCK);
const NETLINK_ROUTE: u32 = unsigned(libc::NETLINK_ROUTE);
const EPERM: u32 = unsigned(libc::EPERM);
const ENOSYS: u32 = unsigned(libc::ENOSYS);

/// Terminal ioctls that inject input (TIOCSTI) or reach the virtual console (TIOCLINUX).
const TIOCSTI: u64 = 0x5412;
const TIOCLINUX: u64 = 0x541C;

fn target_arch() -> Result<TargetArch, SeccompError> {
    if cfg!(target_arch = "x86_64") {
        Ok(TargetArch::x86_64)
    } else if cfg!(target_arch = "aarch64") {
        Ok(TargetArch::aarch64)
    } else {
        Err(SeccompError::UnsupportedArch)
    }
}

fn cond(
    arg: u8,
    len: SeccompCmpArgLen,
    op: SeccompCmpOp,
    value: u64,
) -> Result<SeccompCondition, SeccompError> {
    SeccompCondition::new(arg, len, op, value).map_err(SeccompError::Compile)
}

fn rule(conditions: Vec<SeccompCondition>) -> Result<SeccompRule, SeccompError> {
    SeccompRule::new(conditions).map_err(SeccompError::Compile)
}

fn arg_rules(args: Args) -> Result<Vec<SeccompRule>, SeccompError> {
    use SeccompCmpArgLen::{Dword, Qword};
    use SeccompCmpOp::{Eq, MaskedEq, Ne};
    Ok(match args {
        Args::Any => Vec::new(),
        Args::SocketFamilies => vec![
            rule(vec![cond(0, Dword, Eq, u64::from(AF_UNIX))?])?,
            rule(vec![cond(0, Dword, Eq, u64::from(AF_INET))?])?,
            rule(vec![cond(0, Dword, Eq, u64::from(AF_INET6))?])?,
            rule(vec![
                cond(0, Dword, Eq, u64::from(AF_NETLINK))?,
                cond(2, Dword, Eq, u64::from(NETLINK_ROUTE))?,
            ])?,
        ],
        Args::UnixOnly => vec![rule(vec![cond(0, Dword, Eq, u64::from(AF_UNIX))?])?],
        Args::NoNamespaceFlags => vec![rule(vec![cond(0, Qword, MaskedEq(NAMESPACE_FLAGS), 0)?])?],
        Args::NoTerminalInjection => vec![rule(vec![
            cond(1, Dword, Ne, TIOCSTI)?,
            cond(1, Dword, Ne, TIOCLINUX)?,
        ])?],
    })
}

/// Compiles the two filters, in installation order: the allowlist (EPERM otherwise), then the
/// `clone3` -> ENOSYS filter (installed last, so its errno wins for `clone3`).
pub fn build() -> Result<Vec<BpfProgram>, SeccompError> {
    build_with(false)
}

/// [`build`] for an enclave whose `AF_VSOCK` sockets a supervisor serves ([`crate::notify`]):
/// the allowlist lets `socket(AF_VSOCK, ..)` through to the notification filter, whose
/// verdict (`SECCOMP_RET_USER_NOTIF`) then decides; the supervisor never lets that call reach
/// the kernel, so no real vsock socket can exist in the enclave. An errno from this filter
/// would win over the notification, which is why the rule must be here.
pub fn build_supervised() -> Result<Vec<BpfProgram>, SeccompError> {
    build_with(true)
}

fn build_with(vsock_notified: bool) -> Result<Vec<BpfProgram>, SeccompError> {
    let arch = target_arch()?;
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for allow in allowlist() {
        rules.insert(allow.nr, arg_rules(allow.args)?);
    }
    if vsock_notified {
        use SeccompCmpArgLen::Dword;
        use SeccompCmpOp::Eq;
        if let Some(socket) = rules.get_mut(&libc::SYS_socket) {
            socket.push(rule(vec![cond(0, Dword, Eq, u64::from(AF_VSOCK))?])?);
        }
    }
    let allow = SeccompFilter::new(
        rules,
        SeccompAction::Errno(EPERM),
        SeccompAction::Allow,
        arch,
    )
    .map_err(SeccompError::Compile)?;
    let mut clone3 = BTreeMap::new();
    clone3.insert(libc::SYS_clone3, Vec::new());
    let clone3 = SeccompFilter::new(
        clone3,
        SeccompAction::Allow,
        SeccompAction::Errno(ENOSYS),
        arch,
    )
    .map_err(SeccompError::Compile)?;
    Ok(vec![
        BpfProgram::try_from(allow).map_err(SeccompError::Compile)?,
        BpfProgram::try_from(clone3).map_err(SeccompError::Compile)?,
    ])
}

/// Installs compiled filters on the calling thread (sets no_new_privs first). Allocation-free,
/// so it may run in a freshly forked child.
pub fn install(filters: &[BpfProgram]) -> Result<(), SeccompError> {
    for f in filters {
        seccompiler::apply_filter(f).map_err(SeccompError::Install)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn denied_calls_are_not_allowed() {
        let allowed: HashSet<i64> = allowlist().map(|a| a.nr).collect();
        for d in DENIED {
            assert!(
                !allowed.contains(&d.nr),
                "{} is both allowed and denied",
                d.name
            );
        }
        // No duplicate rules (a later one would silently replace an earlier one).
        let mut seen = HashSet::new();
        for a in allowlist() {
            assert!(seen.insert(a.nr), "{} listed twice", a.name);
            assert!(!a.why.is_empty());
        }
    }

    #[test]
    fn the_runtime_can_exec_init_by_descriptor() {
        // The runtime installs the filter and then execs the image's `/init` through a
        // descriptor opened before it left the bootstrap tree.
        assert!(allowlist().any(|a| a.nr == libc::SYS_execveat && a.args == Args::Any));
    }

    #[test]
    fn filters_compile_within_bpf_limits() {
        let filters = build().unwrap();
        assert_eq!(filters.len(), 2);
        for f in &filters {
            assert!(f.len() < 4096, "BPF program too long: {}", f.len());
        }
    }

    /// Runs `check` in a forked child under the filters; returns the child's exit code.
    fn in_filtered_child(check: fn() -> i32) -> i32 {
        let filters = build().unwrap();
        let _guard = crate::testing::CHILD_LOCK
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        // SAFETY: the child only makes raw syscalls (no allocation, no locks) before `_exit`,
        // which is sound after fork in a multi-threaded process.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let code = match install(&filters) {
                Ok(()) => check(),
                Err(_) => 100,
            };
            // SAFETY: terminating the forked child without running the parent's destructors.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child with a valid status pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(r, pid);
        assert!(libc::WIFEXITED(status), "child died: {status:#x}");
        libc::WEXITSTATUS(status)
    }

    fn errno() -> i32 {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
    }

    /// 0 when every denied call fails with the expected errno; else the number of the check.
    fn denied_checks() -> i32 {
        // SAFETY: raw syscalls with constant, valid (or null) arguments.
        unsafe {
            let fs = c"tmpfs".as_ptr();
            let dir = c"/tmp".as_ptr();
            if libc::mount(fs, dir, fs, 0, std::ptr::null()) != -1 || errno() != libc::EPERM {
                return 1;
            }
            if libc::unshare(libc::CLONE_NEWUSER) != -1 || errno() != libc::EPERM {
                return 2;
            }
            if libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM, 0) != -1 || errno() != libc::EPERM {
                return 3;
            }
            if libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) != -1 || errno() != libc::EPERM {
                return 4;
            }
            if libc::syscall(libc::SYS_clone3, std::ptr::null::<u8>(), 0usize) != -1
                || errno() != libc::ENOSYS
            {
                return 5;
            }
            let r = libc::syscall(
                libc::SYS_clone,
                libc::c_ulong::from(unsigned(libc::CLONE_NEWUSER | libc::SIGCHLD)),
                0usize,
                0usize,
                0usize,
                0usize,
            );
            if r == 0 {
                libc::_exit(0);
            }
            if r != -1 || errno() != libc::EPERM {
                return 6;
            }
            if libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0) != -1 || errno() != libc::EPERM {
                return 7;
            }
            if libc::syscall(libc::SYS_bpf, 0, 0, 0) != -1 || errno() != libc::EPERM {
                return 8;
            }
            if libc::syscall(libc::SYS_keyctl, 0, 0, 0) != -1 || errno() != libc::EPERM {
                return 9;
            }
            if libc::chroot(dir) != -1 || errno() != libc::EPERM {
                return 10;
            }
            if libc::syscall(libc::SYS_setns, 0, 0) != -1 || errno() != libc::EPERM {
                return 11;
            }
            if libc::syscall(libc::SYS_userfaultfd, 0) != -1 || errno() != libc::EPERM {
                return 12;
            }
            if libc::ioctl(0, TIOCSTI as libc::c_ulong, c"x".as_ptr()) != -1
                || errno() != libc::EPERM
            {
                return 13;
            }
            if libc::syscall(libc::SYS_io_uring_setup, 1, 0) != -1 || errno() != libc::EPERM {
                return 14;
            }
        }
        0
    }

    /// 0 when ordinary work succeeds; else the number of the failed step.
    fn ordinary_checks() -> i32 {
        // SAFETY: raw syscalls on descriptors created here, with valid buffers.
        unsafe {
            let mut fds = [0; 2];
            if libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) != 0 {
                return 1;
            }
            if libc::write(fds[1], b"ok".as_ptr().cast(), 2) != 2 {
                return 2;
            }
            let mut buf = [0u8; 2];
            if libc::read(fds[0], buf.as_mut_ptr().cast(), 2) != 2 {
                return 3;
            }
            let s = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            if s < 0 {
                return 4;
            }
            libc::close(s);
            let s = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
            if s < 0 {
                return 5;
            }
            libc::close(s);
            let mut sp = [0; 2];
            if libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, sp.as_mut_ptr()) != 0 {
                return 6;
            }
            // A plain fork (clone without namespace flags) and wait.
            let pid = libc::fork();
            if pid == 0 {
                libc::_exit(7);
            }
            if pid < 0 {
                return 7;
            }
            let mut status = 0;
            if libc::waitpid(pid, &mut status, 0) != pid || libc::WEXITSTATUS(status) != 7 {
                return 8;
            }
            let fd = libc::open(c"/proc/self/status".as_ptr(), libc::O_RDONLY);
            if fd < 0 {
                return 9;
            }
            libc::close(fd);
            let mut ts = std::mem::zeroed::<libc::timespec>();
            if libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) != 0 {
                return 10;
            }
        }
        0
    }

    #[test]
    fn denied_calls_get_eperm() {
        assert_eq!(in_filtered_child(denied_checks), 0);
    }

    #[test]
    fn ordinary_work_still_runs() {
        assert_eq!(in_filtered_child(ordinary_checks), 0);
    }
}
