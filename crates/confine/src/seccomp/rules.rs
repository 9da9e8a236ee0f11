//! The seccomp policy as data: every syscall a process enclave may make, one rule a line with
//! the reason it exists, and the syscalls denied on purpose, each with the reason. The compiler
//! of these tables is in the parent module; nothing here depends on it.
//!
//! To change a rule, edit its line (see `docs/seccomp.md`): `allow!(SYS_x, "why")` allows any
//! arguments, `allow!(SYS_x, Condition, "why")` only those an [`Args`] condition admits, and
//! `deny!(SYS_x, "why")` records a call that must never be allowed (a unit test fails if it is).
//! The name a report shows is the constant's, without `SYS_`, so the two cannot disagree.

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

/// The syscall name of a `libc::SYS_*` constant's name (`"SYS_read"` -> `"read"`); evaluated
/// at compile time, so a table entry that names something else does not compile.
const fn sys_name(constant: &'static str) -> &'static str {
    match constant.as_bytes() {
        [b'S', b'Y', b'S', b'_', rest @ ..] => match core::str::from_utf8(rest) {
            Ok(name) => name,
            Err(_) => panic!("a syscall constant's name is ASCII"),
        },
        _ => panic!("a rule names a libc::SYS_* constant"),
    }
}

/// `allow!(SYS_x, "why")`: any arguments; `allow!(SYS_x, Condition, "why")`: the arguments
/// that [`Args::Condition`](Args) admits.
macro_rules! allow {
    ($nr:ident, $why:literal) => {
        allow!($nr, Any, $why)
    };
    ($nr:ident, $args:ident, $why:literal) => {
        Allow {
            name: sys_name(stringify!($nr)),
            nr: libc::$nr,
            args: Args::$args,
            why: $why,
        }
    };
}

/// `deny!(SYS_x, "why")`: a syscall that must never be allowed.
macro_rules! deny {
    ($nr:ident, $why:literal) => {
        Deny {
            name: sys_name(stringify!($nr)),
            nr: libc::$nr,
            why: $why,
        }
    };
}

/// Syscalls present on every supported architecture.
#[rustfmt::skip]
const COMMON: &[Allow] = &[
    // Plain I/O on descriptors the process holds.
    allow!(SYS_read,                   "read from descriptors"),
    allow!(SYS_write,                  "write to descriptors"),
    allow!(SYS_readv,                  "vectored read"),
    allow!(SYS_writev,                 "vectored write"),
    allow!(SYS_pread64,                "positioned read"),
    allow!(SYS_pwrite64,               "positioned write"),
    allow!(SYS_preadv,                 "positioned vectored read"),
    allow!(SYS_pwritev,                "positioned vectored write"),
    allow!(SYS_preadv2,                "positioned vectored read with flags"),
    allow!(SYS_pwritev2,               "positioned vectored write with flags"),
    allow!(SYS_lseek,                  "file offsets"),
    allow!(SYS_close,                  "closing descriptors"),
    allow!(SYS_close_range,            "closing descriptor ranges (spawn helpers)"),
    allow!(SYS_dup,                    "duplicating descriptors"),
    allow!(SYS_dup3,                   "duplicating descriptors"),
    allow!(SYS_fcntl,                  "descriptor flags and locks"),
    allow!(SYS_flock,                  "advisory locks"),
    allow!(SYS_fsync,                  "durability within the enclave's tmpfs"),
    allow!(SYS_fdatasync,              "durability within the enclave's tmpfs"),
    allow!(SYS_sync,                   "durability (harmless on tmpfs)"),
    allow!(SYS_syncfs,                 "durability (harmless on tmpfs)"),
    allow!(SYS_sync_file_range,        "durability hints"),
    allow!(SYS_ftruncate,              "resizing files"),
    allow!(SYS_truncate,               "resizing files"),
    allow!(SYS_fallocate,              "preallocating files"),
    allow!(SYS_fadvise64,              "access-pattern hints"),
    allow!(SYS_readahead,              "access-pattern hints"),
    allow!(SYS_sendfile,               "copying between descriptors"),
    allow!(SYS_copy_file_range,        "copying between files"),
    allow!(SYS_splice,                 "moving data through pipes"),
    allow!(SYS_tee,                    "duplicating pipe data"),
    allow!(SYS_vmsplice,               "moving user pages into pipes"),
    allow!(SYS_ioctl,                  NoTerminalInjection, "device and socket controls (FIONREAD, TCGETS, ...) but no terminal input injection"),
    // Filesystem (inside the enclave's own tmpfs root; mounts are denied).
    allow!(SYS_openat,                 "opening files"),
    allow!(SYS_openat2,                "opening files with resolve flags"),
    allow!(SYS_newfstatat,             "file status"),
    allow!(SYS_fstat,                  "file status"),
    allow!(SYS_statx,                  "file status"),
    allow!(SYS_statfs,                 "filesystem status"),
    allow!(SYS_fstatfs,                "filesystem status"),
    allow!(SYS_faccessat,              "permission checks"),
    allow!(SYS_faccessat2,             "permission checks"),
    allow!(SYS_getdents64,             "listing directories"),
    allow!(SYS_getcwd,                 "current directory"),
    allow!(SYS_chdir,                  "changing directory"),
    allow!(SYS_fchdir,                 "changing directory"),
    allow!(SYS_mkdirat,                "creating directories"),
    allow!(SYS_mknodat,                "creating FIFOs and sockets (devices need a capability)"),
    allow!(SYS_unlinkat,               "removing files"),
    allow!(SYS_renameat,               "renaming files"),
    allow!(SYS_renameat2,              "renaming files"),
    allow!(SYS_linkat,                 "hard links"),
    allow!(SYS_symlinkat,              "symbolic links"),
    allow!(SYS_readlinkat,             "reading symbolic links"),
    allow!(SYS_fchmod,                 "file modes"),
    allow!(SYS_fchmodat,               "file modes"),
    allow!(SYS_fchown,                 "file owners"),
    allow!(SYS_fchownat,               "file owners"),
    allow!(SYS_umask,                  "file creation mask"),
    allow!(SYS_utimensat,              "file times"),
    allow!(SYS_setxattr,               "extended attributes"),
    allow!(SYS_lsetxattr,              "extended attributes"),
    allow!(SYS_fsetxattr,              "extended attributes"),
    allow!(SYS_getxattr,               "extended attributes"),
    allow!(SYS_lgetxattr,              "extended attributes"),
    allow!(SYS_fgetxattr,              "extended attributes"),
    allow!(SYS_listxattr,              "extended attributes"),
    allow!(SYS_llistxattr,             "extended attributes"),
    allow!(SYS_flistxattr,             "extended attributes"),
    allow!(SYS_removexattr,            "extended attributes"),
    allow!(SYS_lremovexattr,           "extended attributes"),
    allow!(SYS_fremovexattr,           "extended attributes"),
    allow!(SYS_inotify_init1,          "file change notification"),
    allow!(SYS_inotify_add_watch,      "file change notification"),
    allow!(SYS_inotify_rm_watch,       "file change notification"),
    allow!(SYS_memfd_create,           "anonymous files (JITs, sealing)"),
    // Memory.
    allow!(SYS_brk,                    "heap"),
    allow!(SYS_mmap,                   "mappings"),
    allow!(SYS_munmap,                 "mappings"),
    allow!(SYS_mprotect,               "mapping protection"),
    allow!(SYS_mremap,                 "growing mappings"),
    allow!(SYS_msync,                  "flushing mappings"),
    allow!(SYS_mincore,                "residency queries"),
    allow!(SYS_madvise,                "memory advice"),
    allow!(SYS_mlock,                  "keeping secrets out of swap"),
    allow!(SYS_mlock2,                 "keeping secrets out of swap"),
    allow!(SYS_munlock,                "keeping secrets out of swap"),
    allow!(SYS_mlockall,               "keeping secrets out of swap"),
    allow!(SYS_munlockall,             "keeping secrets out of swap"),
    allow!(SYS_membarrier,             "runtimes' memory barriers"),
    allow!(SYS_pkey_mprotect,          "memory protection keys"),
    allow!(SYS_pkey_alloc,             "memory protection keys"),
    allow!(SYS_pkey_free,              "memory protection keys"),
    allow!(SYS_mbind,                  "NUMA policy (within the enclave's cpuset)"),
    allow!(SYS_set_mempolicy,          "NUMA policy"),
    allow!(SYS_get_mempolicy,          "NUMA policy"),
    // Processes and threads (namespaces are refused by the clone rule).
    allow!(SYS_clone,                  NoNamespaceFlags, "threads and processes, without new namespaces"),
    allow!(SYS_execve,                 "running programs"),
    allow!(SYS_execveat,               "running programs"),
    allow!(SYS_exit,                   "thread exit"),
    allow!(SYS_exit_group,             "process exit"),
    allow!(SYS_wait4,                  "reaping children"),
    allow!(SYS_waitid,                 "reaping children"),
    allow!(SYS_kill,                   "signals within the enclave's PID namespace"),
    allow!(SYS_tkill,                  "signals to threads"),
    allow!(SYS_tgkill,                 "signals to threads"),
    allow!(SYS_pidfd_open,             "process handles"),
    allow!(SYS_pidfd_send_signal,      "process handles"),
    allow!(SYS_getpid,                 "identity"),
    allow!(SYS_getppid,                "identity"),
    allow!(SYS_gettid,                 "identity"),
    allow!(SYS_getuid,                 "identity"),
    allow!(SYS_geteuid,                "identity"),
    allow!(SYS_getgid,                 "identity"),
    allow!(SYS_getegid,                "identity"),
    allow!(SYS_getresuid,              "identity"),
    allow!(SYS_getresgid,              "identity"),
    allow!(SYS_getgroups,              "identity"),
    allow!(SYS_setuid,                 "dropping privileges inside the user namespace"),
    allow!(SYS_setgid,                 "dropping privileges inside the user namespace"),
    allow!(SYS_setreuid,               "dropping privileges inside the user namespace"),
    allow!(SYS_setregid,               "dropping privileges inside the user namespace"),
    allow!(SYS_setresuid,              "dropping privileges inside the user namespace"),
    allow!(SYS_setresgid,              "dropping privileges inside the user namespace"),
    allow!(SYS_setfsuid,               "dropping privileges inside the user namespace"),
    allow!(SYS_setfsgid,               "dropping privileges inside the user namespace"),
    allow!(SYS_setgroups,              "dropping privileges inside the user namespace"),
    allow!(SYS_capget,                 "reading capabilities (all dropped)"),
    allow!(SYS_capset,                 "dropping capabilities further"),
    allow!(SYS_prctl,                  "thread names, no_new_privs, dumpable (privileged options need capabilities)"),
    allow!(SYS_seccomp,                "adding stricter filters"),
    allow!(SYS_setpgid,                "job control"),
    allow!(SYS_getpgid,                "job control"),
    allow!(SYS_setsid,                 "job control"),
    allow!(SYS_getsid,                 "job control"),
    allow!(SYS_set_tid_address,        "thread start-up"),
    allow!(SYS_set_robust_list,        "thread start-up"),
    allow!(SYS_get_robust_list,        "thread start-up"),
    allow!(SYS_rseq,                   "restartable sequences (glibc)"),
    allow!(SYS_futex,                  "locks"),
    allow!(SYS_futex_waitv,            "locks"),
    allow!(SYS_sched_yield,            "scheduling"),
    allow!(SYS_sched_getaffinity,      "scheduling (CPU count)"),
    allow!(SYS_sched_setaffinity,      "scheduling (within the cgroup's cpuset)"),
    allow!(SYS_sched_getparam,         "scheduling"),
    allow!(SYS_sched_setparam,         "scheduling"),
    allow!(SYS_sched_getscheduler,     "scheduling"),
    allow!(SYS_sched_setscheduler,     "scheduling"),
    allow!(SYS_sched_get_priority_max, "scheduling"),
    allow!(SYS_sched_get_priority_min, "scheduling"),
    allow!(SYS_sched_rr_get_interval,  "scheduling"),
    allow!(SYS_getpriority,            "scheduling"),
    allow!(SYS_setpriority,            "scheduling"),
    allow!(SYS_getcpu,                 "scheduling"),
    allow!(SYS_getrlimit,              "resource limits"),
    allow!(SYS_setrlimit,              "lowering resource limits"),
    allow!(SYS_prlimit64,              "resource limits"),
    allow!(SYS_getrusage,              "resource usage"),
    allow!(SYS_times,                  "resource usage"),
    allow!(SYS_sysinfo,                "memory and uptime figures"),
    allow!(SYS_uname,                  "system identity"),
    // Signals.
    allow!(SYS_rt_sigaction,           "signal handlers"),
    allow!(SYS_rt_sigprocmask,         "signal masks"),
    allow!(SYS_rt_sigreturn,           "returning from handlers"),
    allow!(SYS_rt_sigpending,          "signal queries"),
    allow!(SYS_rt_sigtimedwait,        "waiting for signals (init's reaper)"),
    allow!(SYS_rt_sigqueueinfo,        "queued signals"),
    allow!(SYS_rt_tgsigqueueinfo,      "queued signals"),
    allow!(SYS_rt_sigsuspend,          "waiting for signals"),
    allow!(SYS_sigaltstack,            "alternate signal stacks"),
    allow!(SYS_restart_syscall,        "restarting interrupted calls"),
    // Time.
    allow!(SYS_clock_gettime,          "time"),
    allow!(SYS_clock_getres,           "time"),
    allow!(SYS_clock_nanosleep,        "sleeping"),
    allow!(SYS_gettimeofday,           "time"),
    allow!(SYS_nanosleep,              "sleeping"),
    allow!(SYS_getitimer,              "timers"),
    allow!(SYS_setitimer,              "timers"),
    allow!(SYS_timer_create,           "timers"),
    allow!(SYS_timer_settime,          "timers"),
    allow!(SYS_timer_gettime,          "timers"),
    allow!(SYS_timer_getoverrun,       "timers"),
    allow!(SYS_timer_delete,           "timers"),
    allow!(SYS_timerfd_create,         "timers"),
    allow!(SYS_timerfd_settime,        "timers"),
    allow!(SYS_timerfd_gettime,        "timers"),
    // Event loops and pipes.
    allow!(SYS_pipe2,                  "pipes"),
    allow!(SYS_eventfd2,               "event loops"),
    allow!(SYS_signalfd4,              "event loops"),
    allow!(SYS_epoll_create1,          "event loops"),
    allow!(SYS_epoll_ctl,              "event loops"),
    allow!(SYS_epoll_pwait,            "event loops"),
    allow!(SYS_epoll_pwait2,           "event loops"),
    allow!(SYS_ppoll,                  "event loops"),
    allow!(SYS_pselect6,               "event loops"),
    // Sockets: AF_UNIX reaches the vsock fabric at /dev/vsock.sock; IP stays on the enclave's
    // loopback-only network namespace.
    allow!(SYS_socket,                 SocketFamilies, "AF_UNIX (the vsock fabric), loopback IP, route netlink; never AF_VSOCK or AF_PACKET"),
    allow!(SYS_socketpair,             UnixOnly, "connected AF_UNIX pairs"),
    allow!(SYS_connect,                "connecting allowed sockets"),
    allow!(SYS_bind,                   "binding allowed sockets"),
    allow!(SYS_listen,                 "listening sockets"),
    allow!(SYS_accept4,                "accepting connections"),
    allow!(SYS_accept,                 "accepting connections"),
    allow!(SYS_shutdown,               "closing halves of connections"),
    allow!(SYS_sendto,                 "sending"),
    allow!(SYS_recvfrom,               "receiving"),
    allow!(SYS_sendmsg,                "sending (and receiving passed vsock descriptors)"),
    allow!(SYS_recvmsg,                "receiving (and receiving passed vsock descriptors)"),
    allow!(SYS_sendmmsg,               "batched sending"),
    allow!(SYS_recvmmsg,               "batched receiving"),
    allow!(SYS_getsockname,            "socket addresses"),
    allow!(SYS_getpeername,            "socket addresses"),
    allow!(SYS_setsockopt,             "socket options (timeouts, buffers)"),
    allow!(SYS_getsockopt,             "socket options"),
    // System V and POSIX IPC (inside the enclave's IPC namespace).
    allow!(SYS_shmget,                 "IPC within the enclave"),
    allow!(SYS_shmat,                  "IPC within the enclave"),
    allow!(SYS_shmdt,                  "IPC within the enclave"),
    allow!(SYS_shmctl,                 "IPC within the enclave"),
    allow!(SYS_semget,                 "IPC within the enclave"),
    allow!(SYS_semop,                  "IPC within the enclave"),
    allow!(SYS_semtimedop,             "IPC within the enclave"),
    allow!(SYS_semctl,                 "IPC within the enclave"),
    allow!(SYS_msgget,                 "IPC within the enclave"),
    allow!(SYS_msgsnd,                 "IPC within the enclave"),
    allow!(SYS_msgrcv,                 "IPC within the enclave"),
    allow!(SYS_msgctl,                 "IPC within the enclave"),
    allow!(SYS_mq_open,                "IPC within the enclave"),
    allow!(SYS_mq_unlink,              "IPC within the enclave"),
    allow!(SYS_mq_timedsend,           "IPC within the enclave"),
    allow!(SYS_mq_timedreceive,        "IPC within the enclave"),
    allow!(SYS_mq_notify,              "IPC within the enclave"),
    allow!(SYS_mq_getsetattr,          "IPC within the enclave"),
    // Randomness and asynchronous I/O.
    allow!(SYS_getrandom,              "randomness"),
    allow!(SYS_io_setup,               "Linux AIO (io_uring stays denied: it bypasses seccomp)"),
    allow!(SYS_io_destroy,             "Linux AIO"),
    allow!(SYS_io_submit,              "Linux AIO"),
    allow!(SYS_io_getevents,           "Linux AIO"),
    allow!(SYS_io_cancel,              "Linux AIO"),
];

/// Legacy syscalls that only x86_64 has (aarch64 uses the `*at` forms above).
#[cfg(target_arch = "x86_64")]
#[rustfmt::skip]
const ARCH: &[Allow] = &[
    allow!(SYS_open,         "opening files (legacy form)"),
    allow!(SYS_stat,         "file status (legacy form)"),
    allow!(SYS_lstat,        "file status (legacy form)"),
    allow!(SYS_access,       "permission checks (legacy form)"),
    allow!(SYS_poll,         "event loops (legacy form)"),
    allow!(SYS_select,       "event loops (legacy form)"),
    allow!(SYS_epoll_create, "event loops (legacy form)"),
    allow!(SYS_epoll_wait,   "event loops (legacy form)"),
    allow!(SYS_pipe,         "pipes (legacy form)"),
    allow!(SYS_dup2,         "duplicating descriptors (legacy form)"),
    allow!(SYS_pause,        "waiting for signals (legacy form)"),
    allow!(SYS_alarm,        "timers (legacy form)"),
    allow!(SYS_fork,         "processes (legacy form)"),
    allow!(SYS_vfork,        "processes (posix_spawn)"),
    allow!(SYS_getdents,     "listing directories (legacy form)"),
    allow!(SYS_rename,       "renaming (legacy form)"),
    allow!(SYS_mkdir,        "creating directories (legacy form)"),
    allow!(SYS_rmdir,        "removing directories (legacy form)"),
    allow!(SYS_creat,        "creating files (legacy form)"),
    allow!(SYS_link,         "hard links (legacy form)"),
    allow!(SYS_unlink,       "removing files (legacy form)"),
    allow!(SYS_symlink,      "symbolic links (legacy form)"),
    allow!(SYS_readlink,     "reading links (legacy form)"),
    allow!(SYS_chmod,        "file modes (legacy form)"),
    allow!(SYS_chown,        "file owners (legacy form)"),
    allow!(SYS_lchown,       "file owners (legacy form)"),
    allow!(SYS_mknod,        "FIFOs (legacy form)"),
    allow!(SYS_utime,        "file times (legacy form)"),
    allow!(SYS_utimes,       "file times (legacy form)"),
    allow!(SYS_futimesat,    "file times (legacy form)"),
    allow!(SYS_inotify_init, "notification (legacy form)"),
    allow!(SYS_eventfd,      "event loops (legacy form)"),
    allow!(SYS_signalfd,     "event loops (legacy form)"),
    allow!(SYS_getpgrp,      "job control (legacy form)"),
    allow!(SYS_time,         "time (legacy form)"),
    allow!(SYS_arch_prctl,   "thread-local storage set-up"),
];

#[cfg(target_arch = "aarch64")]
const ARCH: &[Allow] = &[];

/// Syscalls that must never be allowed (a unit test checks the allowlist against this list).
#[rustfmt::skip]
pub const DENIED: &[Deny] = &[
    deny!(SYS_mount,             "changes the filesystem view"),
    deny!(SYS_umount2,           "changes the filesystem view"),
    deny!(SYS_pivot_root,        "changes the filesystem root"),
    deny!(SYS_chroot,            "changes the filesystem root"),
    deny!(SYS_open_tree,         "new mount API"),
    deny!(SYS_move_mount,        "new mount API"),
    deny!(SYS_fsopen,            "new mount API"),
    deny!(SYS_fsmount,           "new mount API"),
    deny!(SYS_fsconfig,          "new mount API"),
    deny!(SYS_fspick,            "new mount API"),
    deny!(SYS_mount_setattr,     "new mount API"),
    deny!(SYS_unshare,           "new namespaces"),
    deny!(SYS_setns,             "joining namespaces"),
    deny!(SYS_clone3,            "flags out of a filter's reach (ENOSYS: libc falls back to clone)"),
    deny!(SYS_ptrace,            "inspecting processes"),
    deny!(SYS_process_vm_readv,  "reading other processes' memory"),
    deny!(SYS_process_vm_writev, "writing other processes' memory"),
    deny!(SYS_kcmp,              "comparing other processes' kernel objects"),
    deny!(SYS_pidfd_getfd,       "stealing other processes' descriptors"),
    deny!(SYS_bpf,               "loading code into the kernel"),
    deny!(SYS_perf_event_open,   "kernel profiling, side channels"),
    deny!(SYS_kexec_load,        "replacing the kernel"),
    deny!(SYS_kexec_file_load,   "replacing the kernel"),
    deny!(SYS_init_module,       "loading kernel modules"),
    deny!(SYS_finit_module,      "loading kernel modules"),
    deny!(SYS_delete_module,     "unloading kernel modules"),
    deny!(SYS_keyctl,            "kernel keyrings are not namespaced"),
    deny!(SYS_add_key,           "kernel keyrings are not namespaced"),
    deny!(SYS_request_key,       "kernel keyrings are not namespaced"),
    deny!(SYS_userfaultfd,       "a common kernel-exploit primitive"),
    deny!(SYS_open_by_handle_at, "opens files outside the root by handle"),
    deny!(SYS_name_to_handle_at, "file handles (see open_by_handle_at)"),
    deny!(SYS_io_uring_setup,    "io_uring operations bypass seccomp"),
    deny!(SYS_io_uring_enter,    "io_uring operations bypass seccomp"),
    deny!(SYS_io_uring_register, "io_uring operations bypass seccomp"),
    deny!(SYS_reboot,            "host power control"),
    deny!(SYS_swapon,            "host memory management"),
    deny!(SYS_swapoff,           "host memory management"),
    deny!(SYS_acct,              "process accounting to a host file"),
    deny!(SYS_syslog,            "reading the host kernel log"),
    deny!(SYS_settimeofday,      "the clock is not namespaced"),
    deny!(SYS_clock_settime,     "the clock is not namespaced"),
    deny!(SYS_clock_adjtime,     "the clock is not namespaced"),
    deny!(SYS_adjtimex,          "the clock is not namespaced"),
    deny!(SYS_quotactl,          "host filesystem quotas"),
    deny!(SYS_fanotify_init,     "filesystem-wide monitoring"),
    deny!(SYS_personality,       "disables ASLR and other hardening"),
    deny!(SYS_sethostname,       "identity is fixed by the runtime"),
    deny!(SYS_setdomainname,     "identity is fixed by the runtime"),
    deny!(SYS_vhangup,           "terminal control"),
    deny!(SYS_lookup_dcookie,    "kernel profiling"),
];

/// The whole allowlist for this architecture.
pub fn allowlist() -> impl Iterator<Item = &'static Allow> {
    COMMON.iter().chain(ARCH.iter())
}
