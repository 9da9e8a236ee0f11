//! Files and directories relative to a directory descriptor (`*at` calls that never follow a
//! final symlink), ownership and modes, atomic replacement, and opening what init runs.

use super::error::{check, cname, cpath, SysError, SysResult};
use nix::errno::Errno;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

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

/// Opens `path` as an `O_PATH|O_CLOEXEC` handle to run later with
/// [`exec_fd`](super::exec_fd). Symlinks are followed: call it only once the process's root is
/// the enclave's.
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
