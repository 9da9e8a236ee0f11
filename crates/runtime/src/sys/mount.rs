//! Mounts: `mount`, `umount2`, `pivot_root`, `chdir`, and the new mount API
//! (`open_tree`, `mount_setattr`, `move_mount`) for idmapped, detached mounts.

use super::error::{cpath, SysError, SysResult};
use nix::errno::Errno;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

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
    let fd = RawFd::try_from(ret)
        .map_err(|_| SysError::new("open_tree", path.display().to_string(), Errno::EOVERFLOW))?;
    // SAFETY: the kernel returned a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
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
        userns_fd: userns.map_or(0, |u| u64::from(u.as_raw_fd().unsigned_abs())),
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
