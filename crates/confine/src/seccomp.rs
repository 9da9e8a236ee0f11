//! The seccomp policy of process enclaves, installed by the runtime on the enclave's first
//! process before it execs anything from the image (so it binds whatever the image's `/init`
//! is, and everything that process starts): an allowlist (rules as data, each with the reason it
//! exists), everything else failing with EPERM, plus a second filter that makes `clone3` fail
//! with ENOSYS so that libc falls back to `clone`, whose flags a filter can inspect.
//!
//! Denied on purpose (absent from the allowlist, see [`DENIED`]): everything that changes mounts
//! or namespaces, loads code into the kernel, inspects other processes, or reaches the host
//! through channels other than the vsock fabric. Conditional rules: `socket` only for
//! AF_UNIX, AF_INET, AF_INET6 and NETLINK_ROUTE (so no AF_VSOCK, no AF_PACKET); `socketpair`
//! only AF_UNIX; `clone` only without namespace flags; `ioctl` except the terminal-injection
//! requests.

use std::collections::BTreeMap;

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

/// What a rule allows of a syscall's arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Args {
    /// Any arguments.
    Any,
    /// `socket(domain, ..)`: AF_UNIX, AF_INET, AF_INET6, and AF_NETLINK with NETLINK_ROUTE.
    SocketFamilies,
    /// `socketpair(domain, ..)`: AF_UNIX.
    UnixOnly,
    /// `clone(flags, ..)`: no CLONE_NEW* flag.
    NoNamespaceFlags,
    /// `ioctl(fd, request, ..)`: not TIOCSTI or TIOCLINUX (input injection into a terminal).
    NoTerminalInjection,
}

/// One allowlist entry.
#[derive(Debug, Clone, Copy)]
pub struct Allow {
    /// Syscall name (for reports).
    pub name: &'static str,
    /// Syscall number on this architecture.
    pub nr: i64,
    /// Which arguments are allowed.
    pub args: Args,
    /// Why the rule exists.
    pub why: &'static str,
}

const fn any(name: &'static str, nr: i64, why: &'static str) -> Allow {
    Allow {
        name,
        nr,
        args: Args::Any,
        why,
    }
}

/// Namespace flags that `clone` may not carry (CLONE_NEWTIME shares its bit with the exit
/// signal byte in `clone`, and is only usable with `clone3`/`unshare`, both denied).
pub const NAMESPACE_FLAGS: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWCGROUP
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET) as u64;

/// Terminal ioctls that inject input (TIOCSTI) or reach the virtual console (TIOCLINUX).
const TIOCSTI: u64 = 0x5412;
const TIOCLINUX: u64 = 0x541C;

/// Syscalls present on every supported architecture.
const COMMON: &[Allow] = &[
    // Plain I/O on descriptors the process holds.
    any("read", libc::SYS_read, "read from descriptors"),
    any("write", libc::SYS_write, "write to descriptors"),
    any("readv", libc::SYS_readv, "vectored read"),
    any("writev", libc::SYS_writev, "vectored write"),
    any("pread64", libc::SYS_pread64, "positioned read"),
    any("pwrite64", libc::SYS_pwrite64, "positioned write"),
    any("preadv", libc::SYS_preadv, "positioned vectored read"),
    any("pwritev", libc::SYS_pwritev, "positioned vectored write"),
    any(
        "preadv2",
        libc::SYS_preadv2,
        "positioned vectored read with flags",
    ),
    any(
        "pwritev2",
        libc::SYS_pwritev2,
        "positioned vectored write with flags",
    ),
    any("lseek", libc::SYS_lseek, "file offsets"),
    any("close", libc::SYS_close, "closing descriptors"),
    any(
        "close_range",
        libc::SYS_close_range,
        "closing descriptor ranges (spawn helpers)",
    ),
    any("dup", libc::SYS_dup, "duplicating descriptors"),
    any("dup3", libc::SYS_dup3, "duplicating descriptors"),
    any("fcntl", libc::SYS_fcntl, "descriptor flags and locks"),
    any("flock", libc::SYS_flock, "advisory locks"),
    any(
        "fsync",
        libc::SYS_fsync,
        "durability within the enclave's tmpfs",
    ),
    any(
        "fdatasync",
        libc::SYS_fdatasync,
        "durability within the enclave's tmpfs",
    ),
    any("sync", libc::SYS_sync, "durability (harmless on tmpfs)"),
    any("syncfs", libc::SYS_syncfs, "durability (harmless on tmpfs)"),
    any(
        "sync_file_range",
        libc::SYS_sync_file_range,
        "durability hints",
    ),
    any("ftruncate", libc::SYS_ftruncate, "resizing files"),
    any("truncate", libc::SYS_truncate, "resizing files"),
    any("fallocate", libc::SYS_fallocate, "preallocating files"),
    any("fadvise64", libc::SYS_fadvise64, "access-pattern hints"),
    any("readahead", libc::SYS_readahead, "access-pattern hints"),
    any(
        "sendfile",
        libc::SYS_sendfile,
        "copying between descriptors",
    ),
    any(
        "copy_file_range",
        libc::SYS_copy_file_range,
        "copying between files",
    ),
    any("splice", libc::SYS_splice, "moving data through pipes"),
    any("tee", libc::SYS_tee, "duplicating pipe data"),
    any(
        "vmsplice",
        libc::SYS_vmsplice,
        "moving user pages into pipes",
    ),
    Allow {
        name: "ioctl",
        nr: libc::SYS_ioctl,
        args: Args::NoTerminalInjection,
        why: "device and socket controls (FIONREAD, TCGETS, ...) but no terminal input injection",
    },
    // Filesystem (inside the enclave's own tmpfs root; mounts are denied).
    any("openat", libc::SYS_openat, "opening files"),
    any(
        "openat2",
        libc::SYS_openat2,
        "opening files with resolve flags",
    ),
    any("newfstatat", libc::SYS_newfstatat, "file status"),
    any("fstat", libc::SYS_fstat, "file status"),
    any("statx", libc::SYS_statx, "file status"),
    any("statfs", libc::SYS_statfs, "filesystem status"),
    any("fstatfs", libc::SYS_fstatfs, "filesystem status"),
    any("faccessat", libc::SYS_faccessat, "permission checks"),
    any("faccessat2", libc::SYS_faccessat2, "permission checks"),
    any("getdents64", libc::SYS_getdents64, "listing directories"),
    any("getcwd", libc::SYS_getcwd, "current directory"),
    any("chdir", libc::SYS_chdir, "changing directory"),
    any("fchdir", libc::SYS_fchdir, "changing directory"),
    any("mkdirat", libc::SYS_mkdirat, "creating directories"),
    any(
        "mknodat",
        libc::SYS_mknodat,
        "creating FIFOs and sockets (devices need a capability)",
    ),
    any("unlinkat", libc::SYS_unlinkat, "removing files"),
    any("renameat", libc::SYS_renameat, "renaming files"),
    any("renameat2", libc::SYS_renameat2, "renaming files"),
    any("linkat", libc::SYS_linkat, "hard links"),
    any("symlinkat", libc::SYS_symlinkat, "symbolic links"),
    any("readlinkat", libc::SYS_readlinkat, "reading symbolic links"),
    any("fchmod", libc::SYS_fchmod, "file modes"),
    any("fchmodat", libc::SYS_fchmodat, "file modes"),
    any("fchown", libc::SYS_fchown, "file owners"),
    any("fchownat", libc::SYS_fchownat, "file owners"),
    any("umask", libc::SYS_umask, "file creation mask"),
    any("utimensat", libc::SYS_utimensat, "file times"),
    any("setxattr", libc::SYS_setxattr, "extended attributes"),
    any("lsetxattr", libc::SYS_lsetxattr, "extended attributes"),
    any("fsetxattr", libc::SYS_fsetxattr, "extended attributes"),
    any("getxattr", libc::SYS_getxattr, "extended attributes"),
    any("lgetxattr", libc::SYS_lgetxattr, "extended attributes"),
    any("fgetxattr", libc::SYS_fgetxattr, "extended attributes"),
    any("listxattr", libc::SYS_listxattr, "extended attributes"),
    any("llistxattr", libc::SYS_llistxattr, "extended attributes"),
    any("flistxattr", libc::SYS_flistxattr, "extended attributes"),
    any("removexattr", libc::SYS_removexattr, "extended attributes"),
    any(
        "lremovexattr",
        libc::SYS_lremovexattr,
        "extended attributes",
    ),
    any(
        "fremovexattr",
        libc::SYS_fremovexattr,
        "extended attributes",
    ),
    any(
        "inotify_init1",
        libc::SYS_inotify_init1,
        "file change notification",
    ),
    any(
        "inotify_add_watch",
        libc::SYS_inotify_add_watch,
        "file change notification",
    ),
    any(
        "inotify_rm_watch",
        libc::SYS_inotify_rm_watch,
        "file change notification",
    ),
    any(
        "memfd_create",
        libc::SYS_memfd_create,
        "anonymous files (JITs, sealing)",
    ),
    // Memory.
    any("brk", libc::SYS_brk, "heap"),
    any("mmap", libc::SYS_mmap, "mappings"),
    any("munmap", libc::SYS_munmap, "mappings"),
    any("mprotect", libc::SYS_mprotect, "mapping protection"),
    any("mremap", libc::SYS_mremap, "growing mappings"),
    any("msync", libc::SYS_msync, "flushing mappings"),
    any("mincore", libc::SYS_mincore, "residency queries"),
    any("madvise", libc::SYS_madvise, "memory advice"),
    any("mlock", libc::SYS_mlock, "keeping secrets out of swap"),
    any("mlock2", libc::SYS_mlock2, "keeping secrets out of swap"),
    any("munlock", libc::SYS_munlock, "keeping secrets out of swap"),
    any(
        "mlockall",
        libc::SYS_mlockall,
        "keeping secrets out of swap",
    ),
    any(
        "munlockall",
        libc::SYS_munlockall,
        "keeping secrets out of swap",
    ),
    any(
        "membarrier",
        libc::SYS_membarrier,
        "runtimes' memory barriers",
    ),
    any(
        "pkey_mprotect",
        libc::SYS_pkey_mprotect,
        "memory protection keys",
    ),
    any("pkey_alloc", libc::SYS_pkey_alloc, "memory protection keys"),
    any("pkey_free", libc::SYS_pkey_free, "memory protection keys"),
    any(
        "mbind",
        libc::SYS_mbind,
        "NUMA policy (within the enclave's cpuset)",
    ),
    any("set_mempolicy", libc::SYS_set_mempolicy, "NUMA policy"),
    any("get_mempolicy", libc::SYS_get_mempolicy, "NUMA policy"),
    // Processes and threads (namespaces are refused by the clone rule).
    Allow {
        name: "clone",
        nr: libc::SYS_clone,
        args: Args::NoNamespaceFlags,
        why: "threads and processes, without new namespaces",
    },
    any("execve", libc::SYS_execve, "running programs"),
    any("execveat", libc::SYS_execveat, "running programs"),
    any("exit", libc::SYS_exit, "thread exit"),
    any("exit_group", libc::SYS_exit_group, "process exit"),
    any("wait4", libc::SYS_wait4, "reaping children"),
    any("waitid", libc::SYS_waitid, "reaping children"),
    any(
        "kill",
        libc::SYS_kill,
        "signals within the enclave's PID namespace",
    ),
    any("tkill", libc::SYS_tkill, "signals to threads"),
    any("tgkill", libc::SYS_tgkill, "signals to threads"),
    any("pidfd_open", libc::SYS_pidfd_open, "process handles"),
    any(
        "pidfd_send_signal",
        libc::SYS_pidfd_send_signal,
        "process handles",
    ),
    any("getpid", libc::SYS_getpid, "identity"),
    any("getppid", libc::SYS_getppid, "identity"),
    any("gettid", libc::SYS_gettid, "identity"),
    any("getuid", libc::SYS_getuid, "identity"),
    any("geteuid", libc::SYS_geteuid, "identity"),
    any("getgid", libc::SYS_getgid, "identity"),
    any("getegid", libc::SYS_getegid, "identity"),
    any("getresuid", libc::SYS_getresuid, "identity"),
    any("getresgid", libc::SYS_getresgid, "identity"),
    any("getgroups", libc::SYS_getgroups, "identity"),
    any(
        "setuid",
        libc::SYS_setuid,
        "dropping privileges inside the user namespace",
    ),
    any(
        "setgid",
        libc::SYS_setgid,
        "dropping privileges inside the user namespace",
    ),
    any(
        "setreuid",
        libc::SYS_setreuid,
        "dropping privileges inside the user namespace",
    ),
    any(
        "setregid",
        libc::SYS_setregid,
        "dropping privileges inside the user namespace",
    ),
    any(
        "setresuid",
        libc::SYS_setresuid,
        "dropping privileges inside the user namespace",
    ),
    any(
        "setresgid",
        libc::SYS_setresgid,
        "dropping privileges inside the user namespace",
    ),
    any(
        "setfsuid",
        libc::SYS_setfsuid,
        "dropping privileges inside the user namespace",
    ),
    any(
        "setfsgid",
        libc::SYS_setfsgid,
        "dropping privileges inside the user namespace",
    ),
    any(
        "setgroups",
        libc::SYS_setgroups,
        "dropping privileges inside the user namespace",
    ),
    any(
        "capget",
        libc::SYS_capget,
        "reading capabilities (all dropped)",
    ),
    any("capset", libc::SYS_capset, "dropping capabilities further"),
    any(
        "prctl",
        libc::SYS_prctl,
        "thread names, no_new_privs, dumpable (privileged options need capabilities)",
    ),
    any("seccomp", libc::SYS_seccomp, "adding stricter filters"),
    any("setpgid", libc::SYS_setpgid, "job control"),
    any("getpgid", libc::SYS_getpgid, "job control"),
    any("setsid", libc::SYS_setsid, "job control"),
    any("getsid", libc::SYS_getsid, "job control"),
    any(
        "set_tid_address",
        libc::SYS_set_tid_address,
        "thread start-up",
    ),
    any(
        "set_robust_list",
        libc::SYS_set_robust_list,
        "thread start-up",
    ),
    any(
        "get_robust_list",
        libc::SYS_get_robust_list,
        "thread start-up",
    ),
    any("rseq", libc::SYS_rseq, "restartable sequences (glibc)"),
    any("futex", libc::SYS_futex, "locks"),
    any("futex_waitv", libc::SYS_futex_waitv, "locks"),
    any("sched_yield", libc::SYS_sched_yield, "scheduling"),
    any(
        "sched_getaffinity",
        libc::SYS_sched_getaffinity,
        "scheduling (CPU count)",
    ),
    any(
        "sched_setaffinity",
        libc::SYS_sched_setaffinity,
        "scheduling (within the cgroup's cpuset)",
    ),
    any("sched_getparam", libc::SYS_sched_getparam, "scheduling"),
    any("sched_setparam", libc::SYS_sched_setparam, "scheduling"),
    any(
        "sched_getscheduler",
        libc::SYS_sched_getscheduler,
        "scheduling",
    ),
    any(
        "sched_setscheduler",
        libc::SYS_sched_setscheduler,
        "scheduling",
    ),
    any(
        "sched_get_priority_max",
        libc::SYS_sched_get_priority_max,
        "scheduling",
    ),
    any(
        "sched_get_priority_min",
        libc::SYS_sched_get_priority_min,
        "scheduling",
    ),
    any(
        "sched_rr_get_interval",
        libc::SYS_sched_rr_get_interval,
        "scheduling",
    ),
    any("getpriority", libc::SYS_getpriority, "scheduling"),
    any("setpriority", libc::SYS_setpriority, "scheduling"),
    any("getcpu", libc::SYS_getcpu, "scheduling"),
    any("getrlimit", libc::SYS_getrlimit, "resource limits"),
    any("setrlimit", libc::SYS_setrlimit, "lowering resource limits"),
    any("prlimit64", libc::SYS_prlimit64, "resource limits"),
    any("getrusage", libc::SYS_getrusage, "resource usage"),
    any("times", libc::SYS_times, "resource usage"),
    any("sysinfo", libc::SYS_sysinfo, "memory and uptime figures"),
    any("uname", libc::SYS_uname, "system identity"),
    // Signals.
    any("rt_sigaction", libc::SYS_rt_sigaction, "signal handlers"),
    any("rt_sigprocmask", libc::SYS_rt_sigprocmask, "signal masks"),
    any(
        "rt_sigreturn",
        libc::SYS_rt_sigreturn,
        "returning from handlers",
    ),
    any("rt_sigpending", libc::SYS_rt_sigpending, "signal queries"),
    any(
        "rt_sigtimedwait",
        libc::SYS_rt_sigtimedwait,
        "waiting for signals (init's reaper)",
    ),
    any(
        "rt_sigqueueinfo",
        libc::SYS_rt_sigqueueinfo,
        "queued signals",
    ),
    any(
        "rt_tgsigqueueinfo",
        libc::SYS_rt_tgsigqueueinfo,
        "queued signals",
    ),
    any(
        "rt_sigsuspend",
        libc::SYS_rt_sigsuspend,
        "waiting for signals",
    ),
    any(
        "sigaltstack",
        libc::SYS_sigaltstack,
        "alternate signal stacks",
    ),
    any(
        "restart_syscall",
        libc::SYS_restart_syscall,
        "restarting interrupted calls",
    ),
    // Time.
    any("clock_gettime", libc::SYS_clock_gettime, "time"),
    any("clock_getres", libc::SYS_clock_getres, "time"),
    any("clock_nanosleep", libc::SYS_clock_nanosleep, "sleeping"),
    any("gettimeofday", libc::SYS_gettimeofday, "time"),
    any("nanosleep", libc::SYS_nanosleep, "sleeping"),
    any("getitimer", libc::SYS_getitimer, "timers"),
    any("setitimer", libc::SYS_setitimer, "timers"),
    any("timer_create", libc::SYS_timer_create, "timers"),
    any("timer_settime", libc::SYS_timer_settime, "timers"),
    any("timer_gettime", libc::SYS_timer_gettime, "timers"),
    any("timer_getoverrun", libc::SYS_timer_getoverrun, "timers"),
    any("timer_delete", libc::SYS_timer_delete, "timers"),
    any("timerfd_create", libc::SYS_timerfd_create, "timers"),
    any("timerfd_settime", libc::SYS_timerfd_settime, "timers"),
    any("timerfd_gettime", libc::SYS_timerfd_gettime, "timers"),
    // Event loops and pipes.
    any("pipe2", libc::SYS_pipe2, "pipes"),
    any("eventfd2", libc::SYS_eventfd2, "event loops"),
    any("signalfd4", libc::SYS_signalfd4, "event loops"),
    any("epoll_create1", libc::SYS_epoll_create1, "event loops"),
    any("epoll_ctl", libc::SYS_epoll_ctl, "event loops"),
    any("epoll_pwait", libc::SYS_epoll_pwait, "event loops"),
    any("epoll_pwait2", libc::SYS_epoll_pwait2, "event loops"),
    any("ppoll", libc::SYS_ppoll, "event loops"),
    any("pselect6", libc::SYS_pselect6, "event loops"),
    // Sockets: AF_UNIX reaches the vsock fabric at /dev/vsock.sock; IP stays on the enclave's
    // loopback-only network namespace.
    Allow {
        name: "socket",
        nr: libc::SYS_socket,
        args: Args::SocketFamilies,
        why: "AF_UNIX (the vsock fabric), loopback IP, route netlink; never AF_VSOCK or AF_PACKET",
    },
    Allow {
        name: "socketpair",
        nr: libc::SYS_socketpair,
        args: Args::UnixOnly,
        why: "connected AF_UNIX pairs",
    },
    any("connect", libc::SYS_connect, "connecting allowed sockets"),
    any("bind", libc::SYS_bind, "binding allowed sockets"),
    any("listen", libc::SYS_listen, "listening sockets"),
    any("accept4", libc::SYS_accept4, "accepting connections"),
    any("accept", libc::SYS_accept, "accepting connections"),
    any(
        "shutdown",
        libc::SYS_shutdown,
        "closing halves of connections",
    ),
    any("sendto", libc::SYS_sendto, "sending"),
    any("recvfrom", libc::SYS_recvfrom, "receiving"),
    any(
        "sendmsg",
        libc::SYS_sendmsg,
        "sending (and receiving passed vsock descriptors)",
    ),
    any(
        "recvmsg",
        libc::SYS_recvmsg,
        "receiving (and receiving passed vsock descriptors)",
    ),
    any("sendmmsg", libc::SYS_sendmmsg, "batched sending"),
    any("recvmmsg", libc::SYS_recvmmsg, "batched receiving"),
    any("getsockname", libc::SYS_getsockname, "socket addresses"),
    any("getpeername", libc::SYS_getpeername, "socket addresses"),
    any(
        "setsockopt",
        libc::SYS_setsockopt,
        "socket options (timeouts, buffers)",
    ),
    any("getsockopt", libc::SYS_getsockopt, "socket options"),
    // System V and POSIX IPC (inside the enclave's IPC namespace).
    any("shmget", libc::SYS_shmget, "IPC within the enclave"),
    any("shmat", libc::SYS_shmat, "IPC within the enclave"),
    any("shmdt", libc::SYS_shmdt, "IPC within the enclave"),
    any("shmctl", libc::SYS_shmctl, "IPC within the enclave"),
    any("semget", libc::SYS_semget, "IPC within the enclave"),
    any("semop", libc::SYS_semop, "IPC within the enclave"),
    any("semtimedop", libc::SYS_semtimedop, "IPC within the enclave"),
    any("semctl", libc::SYS_semctl, "IPC within the enclave"),
    any("msgget", libc::SYS_msgget, "IPC within the enclave"),
    any("msgsnd", libc::SYS_msgsnd, "IPC within the enclave"),
    any("msgrcv", libc::SYS_msgrcv, "IPC within the enclave"),
    any("msgctl", libc::SYS_msgctl, "IPC within the enclave"),
    any("mq_open", libc::SYS_mq_open, "IPC within the enclave"),
    any("mq_unlink", libc::SYS_mq_unlink, "IPC within the enclave"),
    any(
        "mq_timedsend",
        libc::SYS_mq_timedsend,
        "IPC within the enclave",
    ),
    any(
        "mq_timedreceive",
        libc::SYS_mq_timedreceive,
        "IPC within the enclave",
    ),
    any("mq_notify", libc::SYS_mq_notify, "IPC within the enclave"),
    any(
        "mq_getsetattr",
        libc::SYS_mq_getsetattr,
        "IPC within the enclave",
    ),
    // Randomness and asynchronous I/O.
    any("getrandom", libc::SYS_getrandom, "randomness"),
    any(
        "io_setup",
        libc::SYS_io_setup,
        "Linux AIO (io_uring stays denied: it bypasses seccomp)",
    ),
    any("io_destroy", libc::SYS_io_destroy, "Linux AIO"),
    any("io_submit", libc::SYS_io_submit, "Linux AIO"),
    any("io_getevents", libc::SYS_io_getevents, "Linux AIO"),
    any("io_cancel", libc::SYS_io_cancel, "Linux AIO"),
];

/// Legacy syscalls that only x86_64 has (aarch64 uses the `*at` forms above).
#[cfg(target_arch = "x86_64")]
const ARCH: &[Allow] = &[
    any("open", libc::SYS_open, "opening files (legacy form)"),
    any("stat", libc::SYS_stat, "file status (legacy form)"),
    any("lstat", libc::SYS_lstat, "file status (legacy form)"),
    any(
        "access",
        libc::SYS_access,
        "permission checks (legacy form)",
    ),
    any("poll", libc::SYS_poll, "event loops (legacy form)"),
    any("select", libc::SYS_select, "event loops (legacy form)"),
    any(
        "epoll_create",
        libc::SYS_epoll_create,
        "event loops (legacy form)",
    ),
    any(
        "epoll_wait",
        libc::SYS_epoll_wait,
        "event loops (legacy form)",
    ),
    any("pipe", libc::SYS_pipe, "pipes (legacy form)"),
    any(
        "dup2",
        libc::SYS_dup2,
        "duplicating descriptors (legacy form)",
    ),
    any(
        "pause",
        libc::SYS_pause,
        "waiting for signals (legacy form)",
    ),
    any("alarm", libc::SYS_alarm, "timers (legacy form)"),
    any("fork", libc::SYS_fork, "processes (legacy form)"),
    any("vfork", libc::SYS_vfork, "processes (posix_spawn)"),
    any(
        "getdents",
        libc::SYS_getdents,
        "listing directories (legacy form)",
    ),
    any("rename", libc::SYS_rename, "renaming (legacy form)"),
    any(
        "mkdir",
        libc::SYS_mkdir,
        "creating directories (legacy form)",
    ),
    any(
        "rmdir",
        libc::SYS_rmdir,
        "removing directories (legacy form)",
    ),
    any("creat", libc::SYS_creat, "creating files (legacy form)"),
    any("link", libc::SYS_link, "hard links (legacy form)"),
    any("unlink", libc::SYS_unlink, "removing files (legacy form)"),
    any("symlink", libc::SYS_symlink, "symbolic links (legacy form)"),
    any(
        "readlink",
        libc::SYS_readlink,
        "reading links (legacy form)",
    ),
    any("chmod", libc::SYS_chmod, "file modes (legacy form)"),
    any("chown", libc::SYS_chown, "file owners (legacy form)"),
    any("lchown", libc::SYS_lchown, "file owners (legacy form)"),
    any("mknod", libc::SYS_mknod, "FIFOs (legacy form)"),
    any("utime", libc::SYS_utime, "file times (legacy form)"),
    any("utimes", libc::SYS_utimes, "file times (legacy form)"),
    any("futimesat", libc::SYS_futimesat, "file times (legacy form)"),
    any(
        "inotify_init",
        libc::SYS_inotify_init,
        "notification (legacy form)",
    ),
    any("eventfd", libc::SYS_eventfd, "event loops (legacy form)"),
    any("signalfd", libc::SYS_signalfd, "event loops (legacy form)"),
    any("getpgrp", libc::SYS_getpgrp, "job control (legacy form)"),
    any("time", libc::SYS_time, "time (legacy form)"),
    any(
        "arch_prctl",
        libc::SYS_arch_prctl,
        "thread-local storage set-up",
    ),
];

#[cfg(target_arch = "aarch64")]
const ARCH: &[Allow] = &[];

/// A syscall denied on purpose, with the reason.
#[derive(Debug, Clone, Copy)]
pub struct Deny {
    /// Syscall name.
    pub name: &'static str,
    /// Syscall number on this architecture.
    pub nr: i64,
    /// Why it is denied.
    pub why: &'static str,
}

const fn deny(name: &'static str, nr: i64, why: &'static str) -> Deny {
    Deny { name, nr, why }
}

/// Syscalls that must never be allowed (a unit test checks the allowlist against this list).
pub const DENIED: &[Deny] = &[
    deny("mount", libc::SYS_mount, "changes the filesystem view"),
    deny("umount2", libc::SYS_umount2, "changes the filesystem view"),
    deny(
        "pivot_root",
        libc::SYS_pivot_root,
        "changes the filesystem root",
    ),
    deny("chroot", libc::SYS_chroot, "changes the filesystem root"),
    deny("open_tree", libc::SYS_open_tree, "new mount API"),
    deny("move_mount", libc::SYS_move_mount, "new mount API"),
    deny("fsopen", libc::SYS_fsopen, "new mount API"),
    deny("fsmount", libc::SYS_fsmount, "new mount API"),
    deny("fsconfig", libc::SYS_fsconfig, "new mount API"),
    deny("fspick", libc::SYS_fspick, "new mount API"),
    deny("mount_setattr", libc::SYS_mount_setattr, "new mount API"),
    deny("unshare", libc::SYS_unshare, "new namespaces"),
    deny("setns", libc::SYS_setns, "joining namespaces"),
    deny(
        "clone3",
        libc::SYS_clone3,
        "flags out of a filter's reach (ENOSYS: libc falls back to clone)",
    ),
    deny("ptrace", libc::SYS_ptrace, "inspecting processes"),
    deny(
        "process_vm_readv",
        libc::SYS_process_vm_readv,
        "reading other processes' memory",
    ),
    deny(
        "process_vm_writev",
        libc::SYS_process_vm_writev,
        "writing other processes' memory",
    ),
    deny(
        "kcmp",
        libc::SYS_kcmp,
        "comparing other processes' kernel objects",
    ),
    deny(
        "pidfd_getfd",
        libc::SYS_pidfd_getfd,
        "stealing other processes' descriptors",
    ),
    deny("bpf", libc::SYS_bpf, "loading code into the kernel"),
    deny(
        "perf_event_open",
        libc::SYS_perf_event_open,
        "kernel profiling, side channels",
    ),
    deny("kexec_load", libc::SYS_kexec_load, "replacing the kernel"),
    deny(
        "kexec_file_load",
        libc::SYS_kexec_file_load,
        "replacing the kernel",
    ),
    deny(
        "init_module",
        libc::SYS_init_module,
        "loading kernel modules",
    ),
    deny(
        "finit_module",
        libc::SYS_finit_module,
        "loading kernel modules",
    ),
    deny(
        "delete_module",
        libc::SYS_delete_module,
        "unloading kernel modules",
    ),
    deny(
        "keyctl",
        libc::SYS_keyctl,
        "kernel keyrings are not namespaced",
    ),
    deny(
        "add_key",
        libc::SYS_add_key,
        "kernel keyrings are not namespaced",
    ),
    deny(
        "request_key",
        libc::SYS_request_key,
        "kernel keyrings are not namespaced",
    ),
    deny(
        "userfaultfd",
        libc::SYS_userfaultfd,
        "a common kernel-exploit primitive",
    ),
    deny(
        "open_by_handle_at",
        libc::SYS_open_by_handle_at,
        "opens files outside the root by handle",
    ),
    deny(
        "name_to_handle_at",
        libc::SYS_name_to_handle_at,
        "file handles (see open_by_handle_at)",
    ),
    deny(
        "io_uring_setup",
        libc::SYS_io_uring_setup,
        "io_uring operations bypass seccomp",
    ),
    deny(
        "io_uring_enter",
        libc::SYS_io_uring_enter,
        "io_uring operations bypass seccomp",
    ),
    deny(
        "io_uring_register",
        libc::SYS_io_uring_register,
        "io_uring operations bypass seccomp",
    ),
    deny("reboot", libc::SYS_reboot, "host power control"),
    deny("swapon", libc::SYS_swapon, "host memory management"),
    deny("swapoff", libc::SYS_swapoff, "host memory management"),
    deny("acct", libc::SYS_acct, "process accounting to a host file"),
    deny("syslog", libc::SYS_syslog, "reading the host kernel log"),
    deny(
        "settimeofday",
        libc::SYS_settimeofday,
        "the clock is not namespaced",
    ),
    deny(
        "clock_settime",
        libc::SYS_clock_settime,
        "the clock is not namespaced",
    ),
    deny(
        "clock_adjtime",
        libc::SYS_clock_adjtime,
        "the clock is not namespaced",
    ),
    deny(
        "adjtimex",
        libc::SYS_adjtimex,
        "the clock is not namespaced",
    ),
    deny("quotactl", libc::SYS_quotactl, "host filesystem quotas"),
    deny(
        "fanotify_init",
        libc::SYS_fanotify_init,
        "filesystem-wide monitoring",
    ),
    deny(
        "personality",
        libc::SYS_personality,
        "disables ASLR and other hardening",
    ),
    deny(
        "sethostname",
        libc::SYS_sethostname,
        "identity is fixed by the runtime",
    ),
    deny(
        "setdomainname",
        libc::SYS_setdomainname,
        "identity is fixed by the runtime",
    ),
    deny("vhangup", libc::SYS_vhangup, "terminal control"),
    deny(
        "lookup_dcookie",
        libc::SYS_lookup_dcookie,
        "kernel profiling",
    ),
];

/// The whole allowlist for this architecture.
pub fn allowlist() -> impl Iterator<Item = &'static Allow> {
    COMMON.iter().chain(ARCH.iter())
}

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
            rule(vec![cond(0, Dword, Eq, libc::AF_UNIX as u64)?])?,
            rule(vec![cond(0, Dword, Eq, libc::AF_INET as u64)?])?,
            rule(vec![cond(0, Dword, Eq, libc::AF_INET6 as u64)?])?,
            rule(vec![
                cond(0, Dword, Eq, libc::AF_NETLINK as u64)?,
                cond(2, Dword, Eq, libc::NETLINK_ROUTE as u64)?,
            ])?,
        ],
        Args::UnixOnly => vec![rule(vec![cond(0, Dword, Eq, libc::AF_UNIX as u64)?])?],
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
            socket.push(rule(vec![cond(0, Dword, Eq, libc::AF_VSOCK as u64)?])?);
        }
    }
    let allow = SeccompFilter::new(
        rules,
        SeccompAction::Errno(libc::EPERM as u32),
        SeccompAction::Allow,
        arch,
    )
    .map_err(SeccompError::Compile)?;
    let mut clone3 = BTreeMap::new();
    clone3.insert(libc::SYS_clone3, Vec::new());
    let clone3 = SeccompFilter::new(
        clone3,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
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
        let _guard = crate::CHILD_LOCK.lock().unwrap_or_else(|e| e.into_inner());
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
                (libc::CLONE_NEWUSER | libc::SIGCHLD) as libc::c_ulong,
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
