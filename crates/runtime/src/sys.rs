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
    loop {
        // SAFETY: flock takes a valid descriptor (borrowed from `file`) and integer flags.
        let ret = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        if ret == 0 {
            return Ok(());
        }
        match Errno::last() {
            Errno::EINTR => continue,
            e => return Err(SysError::new("flock", "LOCK_EX", e)),
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
    let mut stack = vec![0u8; USERNS_HOLDER_STACK];
    // The stack grows down from its 16-byte-aligned top.
    let top = {
        let end = stack.as_mut_ptr_range().end as usize;
        (end & !15) as *mut libc::c_void
    };
    let flags = libc::CLONE_VM | ns::USER | libc::SIGCHLD;
    // SAFETY: `top` is the aligned top of `stack`, which lives until the helper has been reaped
    // below; the helper runs `userns_holder` only (raw system calls on its own stack, see
    // there) and gets the pipe's descriptor numbers as its argument. No pointer is shared.
    let pid = unsafe {
        libc::clone(
            userns_holder,
            top,
            flags,
            ((hold_r.as_raw_fd() as u32 as u64) << 32 | hold_w.as_raw_fd() as u32 as u64) as usize
                as *mut libc::c_void,
        )
    };
    if pid < 0 {
        return Err(SysError::last("clone", "CLONE_VM|CLONE_NEWUSER"));
    }
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

/// `flock(LOCK_SH)` on an open file, waiting for an exclusive holder.
pub fn lock_shared(file: &std::fs::File) -> SysResult<()> {
    loop {
        // SAFETY: flock takes a valid descriptor (borrowed from `file`) and integer flags.
        let ret = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH) };
        if ret == 0 {
            return Ok(());
        }
        match Errno::last() {
            Errno::EINTR => continue,
            e => return Err(SysError::new("flock", "LOCK_SH", e)),
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

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
