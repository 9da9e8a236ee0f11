//! Thin, typed wrappers around the system calls the runtime needs.
//!
//! Every kernel entry point the runtime uses goes through this module exactly once, so each
//! failure carries the call's name and its context, and every `unsafe` block lives here with the
//! invariant that makes it sound. Higher modules never call `libc` directly.

use nix::errno::Errno;
use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// A failed system call: which call, on what, and the errno.
#[derive(Debug, thiserror::Error)]
#[error("{call}({context}) failed")]
pub struct SysError {
    /// The system call (or libc function) that failed.
    pub call: &'static str,
    /// What it was applied to (a path, a pid, flags).
    pub context: String,
    /// The kernel's answer.
    #[source]
    pub errno: Errno,
}

impl SysError {
    /// Builds an error from the current `errno`.
    pub fn last(call: &'static str, context: impl Into<String>) -> Self {
        Self {
            call,
            context: context.into(),
            errno: Errno::last(),
        }
    }

    /// Builds an error from an explicit errno.
    pub fn new(call: &'static str, context: impl Into<String>, errno: Errno) -> Self {
        Self {
            call,
            context: context.into(),
            errno,
        }
    }
}

/// Result of a wrapped system call.
pub type SysResult<T> = Result<T, SysError>;

fn cpath(call: &'static str, path: &Path) -> SysResult<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| SysError::new(call, path.display().to_string(), Errno::EINVAL))
}

/// Namespace flags used by the process backend.
pub mod ns {
    /// New mount namespace.
    pub const MOUNT: i32 = libc::CLONE_NEWNS;
    /// New PID namespace.
    pub const PID: i32 = libc::CLONE_NEWPID;
    /// New network namespace.
    pub const NET: i32 = libc::CLONE_NEWNET;
    /// New System V IPC namespace.
    pub const IPC: i32 = libc::CLONE_NEWIPC;
    /// New UTS namespace.
    pub const UTS: i32 = libc::CLONE_NEWUTS;
    /// New user namespace.
    pub const USER: i32 = libc::CLONE_NEWUSER;
    /// New cgroup namespace.
    pub const CGROUP: i32 = libc::CLONE_NEWCGROUP;
}

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
    let flags = (ns_flags | libc::SIGCHLD) as libc::c_ulong;
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
        pid => Ok(Forked::Parent(pid as i32)),
    }
}

/// `unshare(2)`.
pub fn unshare(flags: i32) -> SysResult<()> {
    nix::sched::unshare(nix::sched::CloneFlags::from_bits_retain(flags))
        .map_err(|e| SysError::new("unshare", format!("{flags:#x}"), e))
}

/// `mount(2)` with optional source, fstype and data.
pub fn mount(
    source: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: nix::mount::MsFlags,
    data: Option<&str>,
) -> SysResult<()> {
    nix::mount::mount(source, target, fstype, flags, data).map_err(|e| {
        SysError::new(
            "mount",
            format!(
                "{} on {} type {}",
                source.map(|s| s.display().to_string()).unwrap_or_default(),
                target.display(),
                fstype.unwrap_or("-")
            ),
            e,
        )
    })
}

/// `umount2(2)`.
pub fn umount_detach(target: &Path) -> SysResult<()> {
    nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH)
        .map_err(|e| SysError::new("umount2", target.display().to_string(), e))
}

/// `pivot_root(2)`.
pub fn pivot_root(new_root: &Path, put_old: &Path) -> SysResult<()> {
    nix::unistd::pivot_root(new_root, put_old).map_err(|e| {
        SysError::new(
            "pivot_root",
            format!("{} {}", new_root.display(), put_old.display()),
            e,
        )
    })
}

/// `chdir(2)`.
pub fn chdir(path: &Path) -> SysResult<()> {
    nix::unistd::chdir(path).map_err(|e| SysError::new("chdir", path.display().to_string(), e))
}

/// `sethostname(2)`.
pub fn sethostname(name: &str) -> SysResult<()> {
    // SAFETY: the pointer and length describe `name`'s bytes, valid for the call.
    let ret = unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) };
    if ret < 0 {
        Err(SysError::last("sethostname", name))
    } else {
        Ok(())
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

/// `setgroups(0, NULL)`, `setresgid(gid)`, `setresuid(uid)`: become `uid`/`gid` with no
/// supplementary groups.
pub fn become_user(uid: u32, gid: u32) -> SysResult<()> {
    nix::unistd::setgroups(&[]).map_err(|e| SysError::new("setgroups", "[]", e))?;
    let g = nix::unistd::Gid::from_raw(gid);
    nix::unistd::setresgid(g, g, g).map_err(|e| SysError::new("setresgid", gid.to_string(), e))?;
    let u = nix::unistd::Uid::from_raw(uid);
    nix::unistd::setresuid(u, u, u).map_err(|e| SysError::new("setresuid", uid.to_string(), e))
}

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

/// `kill(2)`.
pub fn kill(pid: i32, signal: nix::sys::signal::Signal) -> SysResult<()> {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal)
        .map_err(|e| SysError::new("kill", format!("{pid} {signal}"), e))
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
    // SAFETY: the kernel returned a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(ret as RawFd) })
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

/// Brings the loopback interface of the current network namespace up
/// (`ioctl(SIOCGIFFLAGS/SIOCSIFFLAGS)` on an `AF_INET` datagram socket).
pub fn loopback_up() -> SysResult<()> {
    // SAFETY: socket() takes integers and returns a new descriptor or -1.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(SysError::last("socket", "AF_INET"));
    }
    // SAFETY: a fresh descriptor that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads the interface named in `req` and writes its flags into `req`,
    // which is a valid, exclusively borrowed ifreq for the duration of the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(SysError::last("ioctl", "SIOCGIFFLAGS lo"));
    }
    // SAFETY: the kernel filled the flags member of the union for SIOCGIFFLAGS.
    unsafe {
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    }
    // SAFETY: SIOCSIFFLAGS reads `req` (valid, initialised above) and changes no memory of ours.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(SysError::last("ioctl", "SIOCSIFFLAGS lo"));
    }
    Ok(())
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

/// `fchown(2)`.
pub fn fchown(fd: BorrowedFd<'_>, uid: u32, gid: u32) -> SysResult<()> {
    nix::unistd::fchown(
        fd.as_raw_fd(),
        Some(nix::unistd::Uid::from_raw(uid)),
        Some(nix::unistd::Gid::from_raw(gid)),
    )
    .map_err(|e| SysError::new("fchown", format!("{uid}:{gid}"), e))
}

/// `lchown(2)` relative to a directory descriptor (never follows a final symlink).
pub fn lchown_at(dir: BorrowedFd<'_>, name: &Path, uid: u32, gid: u32) -> SysResult<()> {
    nix::unistd::fchownat(
        Some(dir.as_raw_fd()),
        name,
        Some(nix::unistd::Uid::from_raw(uid)),
        Some(nix::unistd::Gid::from_raw(gid)),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(|e| SysError::new("fchownat", name.display().to_string(), e))
}

/// Writes `bytes` to `tmp`, then puts `tmp` in `path`'s place atomically: a reader sees the old
/// or the new contents, never a mix. An existing `path` is swapped with `tmp`
/// (`renameat2(RENAME_EXCHANGE)`) and the old contents unlinked after, rather than renamed
/// over: replacing a file by rename makes ext4 write the new data out first (its
/// `auto_da_alloc` heuristic), which costs 0.15 to 0.7 ms on the boot path. Where the file
/// system cannot exchange, or `path` does not exist yet, a plain rename does it. The caller
/// serializes writers of `path` (`tmp` is theirs alone).
pub fn replace_file(tmp: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(tmp, bytes)?;
    let flags = nix::fcntl::RenameFlags::RENAME_EXCHANGE;
    match nix::fcntl::renameat2(None, tmp, None, path, flags) {
        Ok(()) => {
            // `tmp` now holds the old contents; a failure to remove it leaves only a stale
            // temp file, which the next write truncates.
            let _ = std::fs::remove_file(tmp);
            Ok(())
        }
        Err(Errno::ENOENT | Errno::EINVAL | Errno::ENOSYS | Errno::EOPNOTSUPP) => {
            std::fs::rename(tmp, path)
        }
        Err(e) => Err(e.into()),
    }
}

/// Number of online CPUs' ids, from `/sys/devices/system/cpu/online` (falls back to
/// `available_parallelism`).
pub fn online_cpus() -> Vec<u32> {
    if let Ok(text) = std::fs::read_to_string("/sys/devices/system/cpu/online") {
        if let Ok(set) = crate::allocator::parse_cpu_list(text.trim()) {
            return set;
        }
    }
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    (0..n as u32).collect()
}

/// Total memory of the host in MiB, from `/proc/meminfo`.
pub fn total_memory_mib() -> u64 {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map_or(0, |kib| kib / 1024)
}

/// Kind of a directory entry as seen by `fstatat(AT_SYMLINK_NOFOLLOW)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    /// A directory.
    Dir,
    /// A regular file.
    File,
    /// A symbolic link.
    Symlink,
    /// Anything else (device, FIFO, socket).
    Other,
}

fn cname(call: &'static str, name: &[u8]) -> SysResult<CString> {
    CString::new(name).map_err(|_| {
        SysError::new(
            call,
            String::from_utf8_lossy(name).into_owned(),
            Errno::EINVAL,
        )
    })
}

fn check(call: &'static str, name: &[u8], ret: libc::c_int) -> SysResult<libc::c_int> {
    if ret < 0 {
        Err(SysError::last(
            call,
            String::from_utf8_lossy(name).into_owned(),
        ))
    } else {
        Ok(ret)
    }
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`: what `name` is, or `None` if it does not exist.
pub fn kind_at(dir: BorrowedFd<'_>, name: &[u8]) -> SysResult<Option<NodeKind>> {
    let c = cname("fstatat", name)?;
    // SAFETY: stat is plain old data, zero is a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated string and `st` a valid out-pointer for the call.
    let ret = unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            c.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if ret < 0 {
        return match Errno::last() {
            Errno::ENOENT => Ok(None),
            e => Err(SysError::new(
                "fstatat",
                String::from_utf8_lossy(name).into_owned(),
                e,
            )),
        };
    }
    Ok(Some(match st.st_mode & libc::S_IFMT {
        libc::S_IFDIR => NodeKind::Dir,
        libc::S_IFREG => NodeKind::File,
        libc::S_IFLNK => NodeKind::Symlink,
        _ => NodeKind::Other,
    }))
}

/// Opens directory `name` under `dir` without following symlinks (`O_NOFOLLOW|O_DIRECTORY`).
pub fn open_dir_at(dir: BorrowedFd<'_>, name: &[u8]) -> SysResult<OwnedFd> {
    let c = cname("openat", name)?;
    // SAFETY: `c` is a valid NUL-terminated string; openat returns a new descriptor or -1.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    let fd = check("openat", name, fd)?;
    // SAFETY: a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens a path as an `O_PATH` handle without following a final symlink (mount targets).
pub fn open_path_nofollow(dir: BorrowedFd<'_>, name: &[u8]) -> SysResult<OwnedFd> {
    let c = cname("openat", name)?;
    // SAFETY: `c` is a valid NUL-terminated string; openat returns a new descriptor or -1.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c.as_ptr(),
            libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    let fd = check("openat", name, fd)?;
    // SAFETY: a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens the directory at an absolute host path (`O_DIRECTORY|O_CLOEXEC`).
pub fn open_dir(path: &Path) -> SysResult<OwnedFd> {
    let c = cpath("open", path)?;
    // SAFETY: `c` is a valid NUL-terminated string; open returns a new descriptor or -1.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(SysError::last("open", path.display().to_string()));
    }
    // SAFETY: a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `mkdirat(2)`.
pub fn mkdir_at(dir: BorrowedFd<'_>, name: &[u8], mode: u32) -> SysResult<()> {
    let c = cname("mkdirat", name)?;
    // SAFETY: `c` is a valid NUL-terminated string.
    let ret = unsafe { libc::mkdirat(dir.as_raw_fd(), c.as_ptr(), mode as libc::mode_t) };
    check("mkdirat", name, ret).map(|_| ())
}

/// Makes character device `name` (`major`:`minor`) under `dir` with exactly `mode` (the umask
/// does not apply: the mode is set again after `mknodat(2)`, on the node just made).
pub fn mknod_char_at(
    dir: BorrowedFd<'_>,
    name: &[u8],
    major: u32,
    minor: u32,
    mode: u32,
) -> SysResult<()> {
    let c = cname("mknodat", name)?;
    let dev = libc::makedev(major, minor);
    // SAFETY: `c` is a valid NUL-terminated string; mknodat only reads it.
    let ret = unsafe {
        libc::mknodat(
            dir.as_raw_fd(),
            c.as_ptr(),
            libc::S_IFCHR | mode as libc::mode_t,
            dev,
        )
    };
    check("mknodat", name, ret)?;
    // SAFETY: as above; the node was just created in a directory nobody else can write to yet,
    // and fchmodat without flags resolves `name` itself (a device node, not a symlink).
    let ret = unsafe { libc::fchmodat(dir.as_raw_fd(), c.as_ptr(), mode as libc::mode_t, 0) };
    check("fchmodat", name, ret).map(|_| ())
}

/// Creates (or truncates) regular file `name` under `dir`, never following a symlink.
pub fn create_file_at(dir: BorrowedFd<'_>, name: &[u8], mode: u32) -> SysResult<std::fs::File> {
    let c = cname("openat", name)?;
    // SAFETY: `c` is a valid NUL-terminated string; openat returns a new descriptor or -1.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            mode as libc::c_uint,
        )
    };
    let fd = check("openat", name, fd)?;
    // SAFETY: a fresh descriptor that nothing else owns.
    Ok(std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// `symlinkat(2)`: creates `name` under `dir` pointing at `target` (never resolved here).
pub fn symlink_at(target: &[u8], dir: BorrowedFd<'_>, name: &[u8]) -> SysResult<()> {
    let t = cname("symlinkat", target)?;
    let c = cname("symlinkat", name)?;
    // SAFETY: both are valid NUL-terminated strings.
    let ret = unsafe { libc::symlinkat(t.as_ptr(), dir.as_raw_fd(), c.as_ptr()) };
    check("symlinkat", name, ret).map(|_| ())
}

/// `linkat(2)` without following symlinks.
pub fn link_at(
    old_dir: BorrowedFd<'_>,
    old: &[u8],
    new_dir: BorrowedFd<'_>,
    new: &[u8],
) -> SysResult<()> {
    let o = cname("linkat", old)?;
    let n = cname("linkat", new)?;
    // SAFETY: both are valid NUL-terminated strings; flags 0 never follow symlinks.
    let ret = unsafe {
        libc::linkat(
            old_dir.as_raw_fd(),
            o.as_ptr(),
            new_dir.as_raw_fd(),
            n.as_ptr(),
            0,
        )
    };
    check("linkat", new, ret).map(|_| ())
}

/// `unlinkat(2)`; `dir` selects `AT_REMOVEDIR`.
pub fn unlink_at(dir_fd: BorrowedFd<'_>, name: &[u8], dir: bool) -> SysResult<()> {
    let c = cname("unlinkat", name)?;
    let flags = if dir { libc::AT_REMOVEDIR } else { 0 };
    // SAFETY: `c` is a valid NUL-terminated string.
    let ret = unsafe { libc::unlinkat(dir_fd.as_raw_fd(), c.as_ptr(), flags) };
    check("unlinkat", name, ret).map(|_| ())
}

/// `fchmod(2)` (sets permission bits exactly, including setuid/setgid/sticky).
pub fn fchmod(fd: BorrowedFd<'_>, mode: u32) -> SysResult<()> {
    // SAFETY: fchmod takes a valid (borrowed) descriptor and an integer.
    let ret = unsafe { libc::fchmod(fd.as_raw_fd(), mode as libc::mode_t) };
    check("fchmod", b"", ret).map(|_| ())
}

/// The `/proc/self/fd/N` path of a descriptor, for mounting onto a handle opened safely.
pub fn fd_path(fd: BorrowedFd<'_>) -> std::path::PathBuf {
    std::path::PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// `_exit(2)`: ends the process without running destructors or atexit handlers (for a cloned
/// child that must never return into its parent's code).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and touches no Rust state.
    unsafe { libc::_exit(code) }
}

/// `prctl(PR_SET_DUMPABLE, 1)`: keeps `/proc/self` owned by the process after a credential
/// change (needed to write its own user namespace maps).
pub fn set_dumpable() -> SysResult<()> {
    // SAFETY: prctl with integer arguments only.
    let ret = unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 1 as libc::c_ulong, 0, 0, 0) };
    if ret < 0 {
        Err(SysError::last("prctl", "PR_SET_DUMPABLE"))
    } else {
        Ok(())
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
        tv_sec: (timeout_ms / 1000) as libc::time_t,
        tv_nsec: ((timeout_ms % 1000) * 1_000_000) as libc::c_long,
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

/// `open_tree(2)` flag: a detached copy of the mount instead of an `O_PATH` handle.
const OPEN_TREE_CLONE: libc::c_uint = 1;
/// `move_mount(2)` flag: the source is the descriptor itself.
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
/// `mount_setattr(2)` attributes.
pub mod mount_attr {
    /// Read-only.
    pub const RDONLY: u64 = 0x1;
    /// No set-user-ID or set-group-ID execution.
    pub const NOSUID: u64 = 0x2;
    /// No device files.
    pub const NODEV: u64 = 0x4;
    /// Ids mapped through the given user namespace.
    pub const IDMAP: u64 = 0x0010_0000;
}

/// `open_tree(path, OPEN_TREE_CLONE|OPEN_TREE_CLOEXEC)`: a detached bind mount of `path`.
pub fn open_tree_clone(path: &Path) -> SysResult<OwnedFd> {
    let c = cpath("open_tree", path)?;
    let flags = OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint;
    // SAFETY: `c` is a valid NUL-terminated string; the call returns a new descriptor or -1.
    let ret = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, c.as_ptr(), flags) };
    if ret < 0 {
        return Err(SysError::last("open_tree", path.display().to_string()));
    }
    // SAFETY: the kernel returned a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(ret as RawFd) })
}

/// `mount_setattr(fd, "", AT_EMPTY_PATH, {attr_set, userns_fd})` on a detached mount.
pub fn mount_setattr(
    mount: BorrowedFd<'_>,
    attr_set: u64,
    userns: Option<BorrowedFd<'_>>,
) -> SysResult<()> {
    let attr = libc::mount_attr {
        attr_set,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.map_or(0, |u| u.as_raw_fd() as u64),
    };
    // SAFETY: the empty path is a valid NUL-terminated string; `attr` is a valid, initialised
    // mount_attr whose size is passed alongside; the kernel only reads it.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            mount.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH as libc::c_uint,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    if ret < 0 {
        return Err(SysError::last("mount_setattr", format!("{attr_set:#x}")));
    }
    Ok(())
}

/// `move_mount(fd, "", AT_FDCWD, target, MOVE_MOUNT_F_EMPTY_PATH)`: attaches a detached mount.
pub fn move_mount(mount: BorrowedFd<'_>, target: &Path) -> SysResult<()> {
    let t = cpath("move_mount", target)?;
    // SAFETY: both strings are valid and NUL-terminated; the call takes no other pointers.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            mount.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if ret < 0 {
        return Err(SysError::last("move_mount", target.display().to_string()));
    }
    Ok(())
}

/// System calls without libc: the result is `-errno` on failure and nothing else is touched
/// (libc's wrappers store `errno` in the calling thread's TLS, which a `CLONE_VM` helper shares
/// with the thread that cloned it).
mod raw {
    /// `syscall(nr, a1, a2, a3)`.
    ///
    /// # Safety
    /// The arguments must be valid for system call `nr` (pointers to memory the call may use).
    #[cfg(target_arch = "x86_64")]
    pub unsafe fn syscall3(nr: libc::c_long, a1: usize, a2: usize, a3: usize) -> isize {
        let ret: isize;
        // SAFETY: the caller vouches for the arguments; `syscall` clobbers rcx and r11 only.
        unsafe {
            std::arch::asm!(
                "syscall",
                inlateout("rax") nr as isize => ret,
                in("rdi") a1,
                in("rsi") a2,
                in("rdx") a3,
                lateout("rcx") _,
                lateout("r11") _,
                options(nostack),
            );
        }
        ret
    }

    /// `syscall(nr, a1, a2, a3)`.
    ///
    /// # Safety
    /// The arguments must be valid for system call `nr` (pointers to memory the call may use).
    #[cfg(target_arch = "aarch64")]
    pub unsafe fn syscall3(nr: libc::c_long, a1: usize, a2: usize, a3: usize) -> isize {
        let ret: isize;
        // SAFETY: the caller vouches for the arguments; `svc 0` returns in x0 only.
        unsafe {
            std::arch::asm!(
                "svc 0",
                in("x8") nr,
                inlateout("x0") a1 as isize => ret,
                in("x1") a2,
                in("x2") a3,
                options(nostack),
            );
        }
        ret
    }

    /// `syscall(nr, a1, a2, a3)` through libc where no direct form is written: a failure also
    /// stores `errno` (see the module docs), which only a failing helper can cause.
    ///
    /// # Safety
    /// The arguments must be valid for system call `nr` (pointers to memory the call may use).
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    pub unsafe fn syscall3(nr: libc::c_long, a1: usize, a2: usize, a3: usize) -> isize {
        // SAFETY: as the caller vouches.
        let ret = unsafe { libc::syscall(nr, a1, a2, a3) };
        if ret < 0 {
            // SAFETY: reading this thread's errno right after the failed call.
            -(unsafe { *libc::__errno_location() } as isize)
        } else {
            ret as isize
        }
    }
}

/// Stack of the helper process of [`NetnsHelper`].
const NETNS_HELPER_STACK: usize = 16 * 1024;
/// Stages of [`netns_maker`] reported with an errno (`0` is success).
const NETNS_STAGES: [&str; 4] = [
    "unshare(CLONE_NEWNET)",
    "socket(AF_INET)",
    "ioctl(SIOCGIFFLAGS lo)",
    "ioctl(SIOCSIFFLAGS lo)",
];

/// The helper of [`NetnsHelper`]: moves itself into a new network namespace, brings its
/// loopback interface up, reports `[stage, errno (4 bytes, little endian)]` on the ready pipe
/// (stage 0xff: done), then waits for the hold pipe's end of file and exits. `arg` packs the
/// ready pipe's write end (high 32 bits) and the hold pipe's read end (low 32 bits). It shares
/// the caller's memory (`CLONE_VM`), so it makes raw system calls only ([`raw`]: not even
/// `errno` is written), on its own stack. `arg` points to the descriptor numbers
/// `[ready write end, hold read end, hold write end]`, which the caller keeps until the helper
/// is reaped; the helper closes its copy of the hold pipe's write end first, so that the
/// caller's close is the end of file it waits for.
extern "C" fn netns_maker(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the caller's live `[i32; 3]` (see above), only read here.
    let [ready_w, hold_r, hold_w] = unsafe { *(arg as *const [i32; 3]) }.map(|fd| fd as usize);
    // SAFETY: closing this process's own copy of a descriptor.
    unsafe { raw::syscall3(libc::SYS_close, hold_w, 0, 0) };
    let mut report = [0xffu8, 0, 0, 0, 0];
    let mut fail = |stage: u8, ret: isize| {
        report[0] = stage;
        report[1..].copy_from_slice(&((-ret) as u32).to_le_bytes());
    };
    // SAFETY: every call gets integers, or pointers to this function's own locals (`req`,
    // `report`, `byte`), valid for the call's duration; none of them touches shared memory.
    unsafe {
        let ret = raw::syscall3(libc::SYS_unshare, libc::CLONE_NEWNET as usize, 0, 0);
        if ret < 0 {
            fail(0, ret);
        } else {
            let flags = (libc::SOCK_DGRAM | libc::SOCK_CLOEXEC) as usize;
            let sock = raw::syscall3(libc::SYS_socket, libc::AF_INET as usize, flags, 0);
            if sock < 0 {
                fail(1, sock);
            } else {
                let mut req: libc::ifreq = std::mem::zeroed();
                // The kernel reads and writes `req` through this pointer only.
                let req = std::ptr::addr_of_mut!(req);
                (*req).ifr_name[0] = b'l' as libc::c_char;
                (*req).ifr_name[1] = b'o' as libc::c_char;
                let get = libc::SIOCGIFFLAGS as usize;
                let ret = raw::syscall3(libc::SYS_ioctl, sock as usize, get, req as usize);
                if ret < 0 {
                    fail(2, ret);
                } else {
                    (*req).ifr_ifru.ifru_flags |=
                        (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
                    let set = libc::SIOCSIFFLAGS as usize;
                    let ret = raw::syscall3(libc::SYS_ioctl, sock as usize, set, req as usize);
                    if ret < 0 {
                        fail(3, ret);
                    }
                }
                raw::syscall3(libc::SYS_close, sock as usize, 0, 0);
            }
        }
        let at = std::ptr::addr_of!(report) as usize;
        raw::syscall3(libc::SYS_write, ready_w, at, report.len());
        raw::syscall3(libc::SYS_close, ready_w, 0, 0);
        let mut byte = 0u8;
        let at = std::ptr::addr_of_mut!(byte) as usize;
        raw::syscall3(libc::SYS_read, hold_r, at, 1);
        raw::syscall3(libc::SYS_exit, 0, 0, 0);
    }
    0
}

/// A network namespace with its loopback interface up, being made by a helper process while
/// the caller goes on: creating a network namespace costs the kernel 0.5 to 0.9 ms, which a
/// clone with `CLONE_NEWNET` would spend on the boot path. The helper is cloned with `CLONE_VM`
/// (nothing copied), makes the namespace itself on whichever CPU is free, and holds it until
/// every copy of the hold pipe's write end is closed. A process cloned from the caller meanwhile
/// inherits those copies and enters the namespace through [`NetnsHelper::handle`] when it
/// needs it (its copies go at its exec or exit); the caller drops its own with
/// [`NetnsHelper::release`]. Dropping the helper releases, kills and reaps it.
pub struct NetnsHelper {
    pid: i32,
    ready: Option<OwnedFd>,
    hold: Option<OwnedFd>,
    /// The helper's stack and argument: freed only once the helper has been reaped.
    stack: Vec<u8>,
    arg: Box<[i32; 3]>,
}

/// What a process cloned after [`NetnsHelper::spawn`] needs to enter the helper's namespace:
/// the helper's pid and the descriptor number of the ready pipe's read end (valid in a process
/// cloned from the spawner, before its exec).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetnsHandle {
    pid: i32,
    ready: RawFd,
}

impl NetnsHelper {
    /// Clones the helper.
    pub fn spawn() -> SysResult<Self> {
        let (ready_r, ready_w) = pipe()?;
        let (hold_r, hold_w) = pipe()?;
        let mut arg = Box::new([ready_w.as_raw_fd(), hold_r.as_raw_fd(), hold_w.as_raw_fd()]);
        // SAFETY: `netns_maker` makes raw system calls only, on its own stack and descriptors
        // and reading `arg`; `arg` and the stack live until the helper has been reaped (`Drop`).
        let (pid, stack) = unsafe {
            clone_vm_helper(
                netns_maker,
                0,
                std::ptr::addr_of_mut!(*arg).cast(),
                NETNS_HELPER_STACK,
                "CLONE_VM (network namespace helper)",
            )
        }?;
        // The helper has its own copies of these ends.
        drop((ready_w, hold_r));
        Ok(Self {
            pid,
            ready: Some(ready_r),
            hold: Some(hold_w),
            stack,
            arg,
        })
    }

    /// The handle for a process cloned from this one from now until [`NetnsHelper::release`].
    pub fn handle(&self) -> Option<NetnsHandle> {
        self.ready.as_ref().map(|r| NetnsHandle {
            pid: self.pid,
            ready: r.as_raw_fd(),
        })
    }

    /// Closes this process's ends of the helper's pipes: the helper then holds its namespace
    /// only as long as a process cloned meanwhile keeps its copies.
    pub fn release(&mut self) {
        drop(self.hold.take());
        drop(self.ready.take());
    }
}

impl NetnsHandle {
    /// Waits for the namespace (the helper's report) and moves the calling thread into it.
    /// Only in a process cloned from the spawner (single-threaded there, as `setns` into a
    /// network namespace concerns the calling thread only).
    pub fn enter(self) -> SysResult<()> {
        // SAFETY: the descriptor is this process's copy of the ready pipe's read end (see the
        // type's docs); the File is forgotten below, so the number stays open and owned by
        // nothing else here.
        let mut ready = std::mem::ManuallyDrop::new(std::fs::File::from(unsafe {
            OwnedFd::from_raw_fd(self.ready)
        }));
        let mut report = [0u8; 5];
        std::io::Read::read_exact(&mut *ready, &mut report).map_err(|e| {
            let errno = Errno::from_raw(e.raw_os_error().unwrap_or(libc::EPIPE));
            SysError::new("read", "network namespace helper", errno)
        })?;
        if report[0] != 0xff {
            let errno = u32::from_le_bytes([report[1], report[2], report[3], report[4]]);
            let stage = NETNS_STAGES
                .get(usize::from(report[0]))
                .copied()
                .unwrap_or("?");
            return Err(SysError::new(
                "network namespace helper",
                stage,
                Errno::from_raw(errno as i32),
            ));
        }
        // `/proc/<pid>/ns/net`, NUL-terminated, built without allocating (so that a caller
        // forked from a multi-threaded process may use this on the way that succeeds).
        let mut path = [0u8; 40];
        let mut len = 0;
        let mut put = |bytes: &[u8]| {
            path[len..len + bytes.len()].copy_from_slice(bytes);
            len += bytes.len();
        };
        put(b"/proc/");
        let mut digits = [0u8; 10];
        let mut n = self.pid.unsigned_abs();
        let mut at = digits.len();
        loop {
            at -= 1;
            digits[at] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        put(&digits[at..]);
        put(b"/ns/net\0");
        // SAFETY: `path` holds a NUL-terminated string; open returns a new descriptor or -1.
        let fd = unsafe { libc::open(path.as_ptr().cast(), libc::O_RDONLY | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(SysError::last("open", format!("/proc/{}/ns/net", self.pid)));
        }
        // SAFETY: a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        enter_netns(std::os::fd::AsFd::as_fd(&fd))
    }
}

impl Drop for NetnsHelper {
    fn drop(&mut self) {
        self.release();
        // Killed rather than waited for: a process cloned meanwhile may still hold the pipe
        // (one that has entered the namespace keeps it alive by being in it).
        let _ = kill(self.pid, nix::sys::signal::Signal::SIGKILL);
        let _ = wait_child(self.pid, false);
        // Only now are the helper's stack and argument free.
        self.stack = Vec::new();
        *self.arg = [-1; 3];
    }
}

/// `setns(fd, CLONE_NEWNET)`: moves the calling thread into the network namespace `fd`.
pub fn enter_netns(fd: BorrowedFd<'_>) -> SysResult<()> {
    // SAFETY: setns takes a valid (borrowed) descriptor and an integer flag.
    let ret = unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) };
    if ret < 0 {
        return Err(SysError::last("setns", "CLONE_NEWNET"));
    }
    Ok(())
}

/// Clones a helper process that shares this process's memory (`CLONE_VM`, as `posix_spawn`
/// does: nothing is copied) and runs `f(arg)` on a stack of its own, with `flags` (namespaces)
/// added. Returns its pid and its stack, which the caller keeps until the helper is reaped.
///
/// # Safety
/// `f` must make raw system calls only (no allocation, no lock, nothing that touches this
/// process's state), and whatever `arg` points to must stay valid until the helper is reaped.
unsafe fn clone_vm_helper(
    f: extern "C" fn(*mut libc::c_void) -> libc::c_int,
    flags: i32,
    arg: *mut libc::c_void,
    stack_size: usize,
    shown: &'static str,
) -> SysResult<(i32, Vec<u8>)> {
    let mut stack = vec![0u8; stack_size];
    // The stack grows down from its 16-byte-aligned top.
    let top = {
        let end = stack.as_mut_ptr_range().end as usize;
        (end & !15) as *mut libc::c_void
    };
    // SAFETY: `top` is the aligned top of `stack`, returned to the caller, who keeps it until
    // the helper has been reaped; the caller vouches for `f` and `arg`.
    let pid = unsafe { libc::clone(f, top, libc::CLONE_VM | flags | libc::SIGCHLD, arg) };
    if pid < 0 {
        return Err(SysError::last("clone", shown));
    }
    Ok((pid, stack))
}

/// Stack of the helper process of [`idmap_userns`] (it makes three system calls).
const USERNS_HOLDER_STACK: usize = 16 * 1024;

/// The helper of [`idmap_userns`]: closes its copy of the pipe's write end, waits until the
/// read end reports end of file, then exits (`arg` carries the read end in its high 32 bits and
/// the write end in its low ones). It shares the caller's memory (`CLONE_VM`), so it makes raw
/// system calls only: no allocation, no lock, no Rust runtime. None of them can fail in a way
/// that writes `errno` (the caller's): the descriptors are valid, the buffer is its own stack,
/// and no signal is aimed at an unnamed helper.
extern "C" fn userns_holder(arg: *mut libc::c_void) -> libc::c_int {
    let fds = arg as usize as u64;
    let (read_end, write_end) = (
        (fds >> 32) as libc::c_long,
        (fds & 0xffff_ffff) as libc::c_long,
    );
    let mut byte = 0u8;
    // SAFETY: both descriptors are open in this process (its own copies, made at the clone);
    // `byte` is a valid one-byte buffer on this helper's own stack.
    unsafe {
        libc::syscall(libc::SYS_close, write_end);
        libc::syscall(
            libc::SYS_read,
            read_end,
            std::ptr::addr_of_mut!(byte),
            1usize,
        );
        libc::syscall(libc::SYS_exit, 0);
    }
    0
}

/// A user namespace mapping uid and gid 0 to `uid`/`gid` (one id each), as a descriptor for
/// idmapped mounts. A short-lived helper process is cloned into the new namespace, its maps are
/// written from here, its namespace is opened, and the helper is released and reaped.
///
/// The helper shares this process's memory (`CLONE_VM`, as `posix_spawn` does), so nothing is
/// copied for it and nothing torn down when it exits; it runs [`userns_holder`] on a stack of
/// its own, which outlives it. It only blocks in `read(2)` and exits, so this is sound in a
/// multi-threaded process as well.
pub fn idmap_userns(uid: u32, gid: u32) -> SysResult<OwnedFd> {
    let (hold_r, hold_w) = pipe()?;
    let fds = (hold_r.as_raw_fd() as u32 as u64) << 32 | hold_w.as_raw_fd() as u32 as u64;
    // SAFETY: `userns_holder` makes raw system calls only, on its own stack (freed below, once
    // the helper has been reaped); its argument is the pipe's descriptor numbers, no pointer.
    let (pid, stack) = unsafe {
        clone_vm_helper(
            userns_holder,
            ns::USER,
            fds as usize as *mut libc::c_void,
            USERNS_HOLDER_STACK,
            "CLONE_VM|CLONE_NEWUSER",
        )
    }?;
    let result = (|| {
        let write = |file: &str, text: String| {
            let path = format!("/proc/{pid}/{file}");
            std::fs::write(&path, text).map_err(|e| {
                SysError::new(
                    "write",
                    path,
                    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
                )
            })
        };
        write("uid_map", format!("0 {uid} 1\n"))?;
        write("gid_map", format!("0 {gid} 1\n"))?;
        let ns = format!("/proc/{pid}/ns/user");
        let c = cpath("open", Path::new(&ns))?;
        // SAFETY: `c` is a valid NUL-terminated string; open returns a new descriptor or -1.
        let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(SysError::last("open", ns));
        }
        // SAFETY: a fresh descriptor that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    })();
    drop(hold_w);
    let _ = wait_child(pid, false);
    // Only now is the helper's stack free.
    drop(stack);
    drop(hold_r);
    result
}

/// The CPUs thread `tid` may run on (`0`: the calling thread), from `sched_getaffinity(2)`.
pub fn cpu_affinity(tid: i32) -> SysResult<Vec<u32>> {
    let set = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(tid))
        .map_err(|e| SysError::new("sched_getaffinity", tid.to_string(), e))?;
    Ok((0..nix::sched::CpuSet::count())
        .filter(|&c| set.is_set(c).unwrap_or(false))
        .filter_map(|c| u32::try_from(c).ok())
        .collect())
}

/// Restricts thread `tid` (`0`: the calling thread) to `cpus` with `sched_setaffinity(2)`.
pub fn set_cpu_affinity(tid: i32, cpus: &[u32]) -> SysResult<()> {
    let mut set = nix::sched::CpuSet::new();
    for &c in cpus {
        set.set(c as usize)
            .map_err(|e| SysError::new("sched_setaffinity", format!("cpu {c}"), e))?;
    }
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(tid), &set)
        .map_err(|e| SysError::new("sched_setaffinity", tid.to_string(), e))
}

/// `flock(LOCK_SH)` on an open file, waiting for an exclusive holder.
pub fn lock_shared(file: &std::fs::File) -> SysResult<()> {
    flock_wait(file, libc::LOCK_SH, "LOCK_SH")
}

/// Number of threads of the calling process (from `/proc/self/task`); `None` if unknown.
pub fn thread_count() -> Option<usize> {
    std::fs::read_dir("/proc/self/task")
        .ok()
        .map(|d| d.filter(|e| e.is_ok()).count())
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

/// The calling thread's id.
pub fn gettid() -> i32 {
    // SAFETY: gettid has no preconditions and cannot fail.
    unsafe { libc::gettid() }
}

/// Sets the scheduling policy of thread `tid` (0: the calling thread) to `SCHED_IDLE` (it runs
/// only when a CPU has nothing else to do) or back to `SCHED_OTHER`.
pub fn set_idle_scheduling(tid: i32, idle: bool) -> SysResult<()> {
    let policy = if idle {
        libc::SCHED_IDLE
    } else {
        libc::SCHED_OTHER
    };
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler reads the valid `param` and changes only the thread's policy.
    let ret = unsafe { libc::sched_setscheduler(tid, policy, &param) };
    if ret != 0 {
        return Err(SysError::last(
            "sched_setscheduler",
            format!("tid {tid}, idle {idle}"),
        ));
    }
    Ok(())
}

/// Opens `path` as an `O_PATH|O_CLOEXEC` handle to run later with [`exec_fd`]. Symlinks are
/// followed: call it only once the process's root is the enclave's.
pub fn open_exec(path: &Path) -> SysResult<OwnedFd> {
    let c = cpath("open", path)?;
    // SAFETY: `c` is a valid NUL-terminated string; open returns a new descriptor or -1.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
    let fd = check("open", path.as_os_str().as_bytes(), fd)?;
    // SAFETY: a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens `path` read-only and close-on-exec if it is a regular file; `None` when nothing is
/// there or something else is (opened `O_NONBLOCK`, so a FIFO cannot block the caller; a
/// regular file ignores the flag). Symlinks are followed, as for [`open_exec`].
pub fn open_regular(path: &Path) -> SysResult<Option<OwnedFd>> {
    let c = cpath("open", path)?;
    // SAFETY: `c` is a valid NUL-terminated string; open returns a new descriptor or -1.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return match Errno::last() {
            Errno::ENOENT | Errno::ENOTDIR | Errno::ENXIO => Ok(None),
            e => Err(SysError::new("open", path.display().to_string(), e)),
        };
    }
    // SAFETY: a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let st = nix::sys::stat::fstat(fd.as_raw_fd())
        .map_err(|e| SysError::new("fstat", path.display().to_string(), e))?;
    Ok((st.st_mode & libc::S_IFMT == libc::S_IFREG).then_some(fd))
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

/// `execveat(fd, "", argv, env, AT_EMPTY_PATH)`: runs the file `fd` refers to (opened before,
/// e.g. with [`open_exec`], possibly from a root the process has left since). Returns only on
/// failure.
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn open_regular_takes_only_regular_files_and_never_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("cmd");
        std::fs::write(&file, b"/app\n").unwrap();
        let fd = open_regular(&file).unwrap().expect("a regular file opens");
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::fs::File::from(fd), &mut text).unwrap();
        assert_eq!(text, "/app\n");
        assert!(open_regular(&dir.path().join("missing")).unwrap().is_none());
        assert!(open_regular(dir.path()).unwrap().is_none(), "a directory");
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        assert!(
            open_regular(&fifo).unwrap().is_none(),
            "a FIFO, without blocking"
        );
    }

    #[test]
    fn replace_file_creates_then_swaps_and_leaves_no_temp_file() {
        // The default temp dir and a tmpfs, where there is one: the two paths of the swap.
        let dirs = [
            tempfile::tempdir().ok(),
            tempfile::tempdir_in("/dev/shm").ok(),
        ];
        for dir in dirs.into_iter().flatten() {
            let (tmp, path) = (dir.path().join("f.tmp"), dir.path().join("f"));
            replace_file(&tmp, &path, b"first").unwrap();
            assert_eq!(std::fs::read(&path).unwrap(), b"first");
            assert!(!tmp.exists());
            // A reader holding the old file keeps the old contents; the path has the new.
            let old = std::fs::File::open(&path).unwrap();
            replace_file(&tmp, &path, b"second, longer").unwrap();
            assert_eq!(std::fs::read(&path).unwrap(), b"second, longer");
            assert_eq!(std::io::read_to_string(old).unwrap(), "first");
            assert!(!tmp.exists());
            // A stale temp file from an interrupted write is simply overwritten.
            std::fs::write(&tmp, b"stale").unwrap();
            replace_file(&tmp, &path, b"third").unwrap();
            assert_eq!(std::fs::read(&path).unwrap(), b"third");
            assert!(!tmp.exists());
        }
    }

    /// The uid map of the user namespace `ns`, as seen from a forked child that enters it
    /// (`setns` into a user namespace needs a single-threaded caller; the test harness is not).
    fn uid_map_of(ns: BorrowedFd<'_>) -> String {
        let (r, w) = pipe().unwrap();
        let ns_raw = ns.as_raw_fd();
        let w_raw = w.as_raw_fd();
        // SAFETY: the child runs the block below only, then exits.
        let pid = match unsafe { clone_process(0) }.unwrap() {
            // SAFETY: async-signal-safe calls only (setns, open, read, write, _exit) on
            // descriptors open in the child, stack buffers and a NUL-terminated literal.
            Forked::Child => unsafe {
                let mut buf = [0u8; 256];
                let mut n = 0isize;
                if libc::setns(ns_raw, libc::CLONE_NEWUSER) == 0 {
                    let fd = libc::open(c"/proc/self/uid_map".as_ptr(), libc::O_RDONLY);
                    if fd >= 0 {
                        n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
                    }
                }
                if n > 0 {
                    libc::write(w_raw, buf.as_ptr().cast(), n as usize);
                }
                libc::_exit(0)
            },
            Forked::Parent(pid) => pid,
        };
        drop(w);
        let mut out = String::new();
        std::io::Read::read_to_string(&mut std::fs::File::from(r), &mut out).unwrap();
        wait_child(pid, false).unwrap();
        out
    }

    #[test]
    fn netns_helper_makes_a_namespace_with_loopback_up_and_reaps_itself() {
        let mut helper = NetnsHelper::spawn().unwrap();
        let handle = helper.handle().unwrap();
        let (r, w) = pipe().unwrap();
        let w_raw = w.as_raw_fd();
        // SAFETY: the child runs the block below only, then exits.
        let pid = match unsafe { clone_process(0) }.unwrap() {
            // SAFETY: the child enters the namespace (`enter` does not allocate on the way that
            // succeeds: a pipe read, an open of a /proc path built on the stack, setns), then
            // uses async-signal-safe calls only (stat, socket, ioctl, write, _exit) and a zeroed
            // ifreq on its stack; anything failing ends in `_exit`.
            Forked::Child => unsafe {
                let mut out = [0u8; 10];
                if handle.enter().is_ok() {
                    let mut st: libc::stat = std::mem::zeroed();
                    if libc::stat(c"/proc/thread-self/ns/net".as_ptr(), &mut st) == 0 {
                        out[..8].copy_from_slice(&st.st_ino.to_le_bytes());
                    }
                    let sock = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
                    let mut req: libc::ifreq = std::mem::zeroed();
                    req.ifr_name[0] = b'l' as libc::c_char;
                    req.ifr_name[1] = b'o' as libc::c_char;
                    if sock >= 0 && libc::ioctl(sock, libc::SIOCGIFFLAGS, &mut req) == 0 {
                        out[8..].copy_from_slice(&req.ifr_ifru.ifru_flags.to_le_bytes());
                    }
                    libc::write(w_raw, out.as_ptr().cast(), out.len());
                }
                libc::_exit(0)
            },
            Forked::Parent(pid) => pid,
        };
        drop(w);
        // This process's copies go now; the child's keep the helper until the child exits.
        helper.release();
        assert!(helper.handle().is_none());
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut std::fs::File::from(r), &mut out).unwrap();
        wait_child(pid, false).unwrap();
        assert_eq!(out.len(), 10, "the child entered the namespace");
        let ino = u64::from_le_bytes(out[..8].try_into().unwrap());
        let own = std::fs::metadata("/proc/self/ns/net").unwrap();
        assert_ne!(
            std::os::unix::fs::MetadataExt::ino(&own),
            ino,
            "a new namespace"
        );
        let flags = i16::from_le_bytes([out[8], out[9]]);
        assert_ne!(flags & libc::IFF_UP as i16, 0, "lo is up: {flags:#x}");
        drop(helper);
        // Helpers dropped at once, released or not, are killed and reaped without waiting
        // for anyone (each Drop would hang on a helper that is never let go).
        for i in 0..6 {
            let mut helper = NetnsHelper::spawn().unwrap();
            if i % 2 == 0 {
                helper.release();
            }
            drop(helper);
        }
    }

    #[test]
    fn idmap_userns_maps_root_to_the_given_ids_and_reaps_its_helper() {
        let uid = 1_234_567;
        let ns = idmap_userns(uid, uid + 1).unwrap();
        let own = std::fs::metadata("/proc/self/ns/user").unwrap();
        let made = std::fs::metadata(format!("/proc/self/fd/{}", ns.as_raw_fd())).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_ne!(own.ino(), made.ino(), "a new user namespace");
        let map: Vec<String> = uid_map_of(ns.as_fd())
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        assert_eq!(map, ["0", &uid.to_string(), "1"]);
        // Each call releases and reaps its helper before returning (a helper still holding
        // the pipe's write end would never see end of file, and the call would not return).
        for _ in 0..5 {
            drop(idmap_userns(uid, uid).unwrap());
        }
    }
}
