//! The system calls the sandbox's setup makes, behind a trait.
//!
//! The process backend's child builds the enclave's root with a fixed sequence of mounts,
//! device nodes, ownership changes, a `pivot_root`, the hostname and the user namespace's id
//! maps. That sequence is written once, against [`Syscalls`]: the runtime runs it with
//! [`LinuxSyscalls`] (each method is the wrapper of the same name in [`crate::sys`]), and unit
//! tests run it with a recording implementation (`sys::recording`, test builds only) that
//! records each call with its arguments and returns scripted results, so the order, flags and
//! error paths are tested without root.
//!
//! Calls that only open or inspect what is already there (`openat`, `fstatat`, `mkdirat` of the
//! runtime's own directories) stay direct: they behave the same for an unprivileged test on a
//! temporary directory.

use super::error::SysResult;
use super::{fs, mount, ns};
use nix::mount::MsFlags;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::Path;

/// The privileged system calls of the sandbox's setup sequence.
pub trait Syscalls {
    /// `mount(2)` ([`mount::mount`]).
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> SysResult<()>;
    /// `umount2(target, MNT_DETACH)`.
    fn umount_detach(&self, target: &Path) -> SysResult<()>;
    /// `pivot_root(2)`.
    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> SysResult<()>;
    /// `chdir(2)`.
    fn chdir(&self, path: &Path) -> SysResult<()>;
    /// `sethostname(2)`.
    fn sethostname(&self, name: &str) -> SysResult<()>;
    /// `unshare(2)` with `CLONE_NEW*` flags ([`super::ns`]).
    fn unshare(&self, flags: i32) -> SysResult<()>;
    /// Brings `lo` up in the current network namespace.
    fn loopback_up(&self) -> SysResult<()>;
    /// `mknodat(2)` of a character device, then its exact mode.
    fn mknod_char_at(
        &self,
        dir: BorrowedFd<'_>,
        name: &[u8],
        major: u32,
        minor: u32,
        mode: u32,
    ) -> SysResult<()>;
    /// `fchownat(dir, name, AT_SYMLINK_NOFOLLOW)`.
    fn lchown_at(&self, dir: BorrowedFd<'_>, name: &Path, uid: u32, gid: u32) -> SysResult<()>;
    /// `fchown(2)`.
    fn fchown(&self, fd: BorrowedFd<'_>, uid: u32, gid: u32) -> SysResult<()>;
    /// `open_tree(path, OPEN_TREE_CLONE)`: a detached bind mount.
    fn open_tree_clone(&self, path: &Path) -> SysResult<OwnedFd>;
    /// `mount_setattr(2)` on a detached mount.
    fn mount_setattr(
        &self,
        mount: BorrowedFd<'_>,
        attr_set: u64,
        userns: Option<BorrowedFd<'_>>,
    ) -> SysResult<()>;
    /// `move_mount(2)`: attaches a detached mount at `target`.
    fn move_mount(&self, mount: BorrowedFd<'_>, target: &Path) -> SysResult<()>;
    /// `setgroups([])`, `setresgid`, `setresuid`.
    fn become_user(&self, uid: u32, gid: u32) -> SysResult<()>;
    /// `prctl(PR_SET_DUMPABLE, 1)`.
    fn set_dumpable(&self) -> SysResult<()>;
    /// Writes `contents` to a kernel file (`/proc/self/uid_map`, `oom_score_adj`, ...).
    fn write_file(&self, path: &Path, contents: &str) -> std::io::Result<()>;
}

/// The real system calls.
#[derive(Debug, Clone, Copy, Default)]
pub struct LinuxSyscalls;

impl Syscalls for LinuxSyscalls {
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> SysResult<()> {
        mount::mount(source, target, fstype, flags, data)
    }

    fn umount_detach(&self, target: &Path) -> SysResult<()> {
        mount::umount_detach(target)
    }

    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> SysResult<()> {
        mount::pivot_root(new_root, put_old)
    }

    fn chdir(&self, path: &Path) -> SysResult<()> {
        mount::chdir(path)
    }

    fn sethostname(&self, name: &str) -> SysResult<()> {
        ns::sethostname(name)
    }

    fn unshare(&self, flags: i32) -> SysResult<()> {
        ns::unshare(flags)
    }

    fn loopback_up(&self) -> SysResult<()> {
        ns::loopback_up()
    }

    fn mknod_char_at(
        &self,
        dir: BorrowedFd<'_>,
        name: &[u8],
        major: u32,
        minor: u32,
        mode: u32,
    ) -> SysResult<()> {
        fs::mknod_char_at(dir, name, major, minor, mode)
    }

    fn lchown_at(&self, dir: BorrowedFd<'_>, name: &Path, uid: u32, gid: u32) -> SysResult<()> {
        fs::lchown_at(dir, name, uid, gid)
    }

    fn fchown(&self, fd: BorrowedFd<'_>, uid: u32, gid: u32) -> SysResult<()> {
        fs::fchown(fd, uid, gid)
    }

    fn open_tree_clone(&self, path: &Path) -> SysResult<OwnedFd> {
        mount::open_tree_clone(path)
    }

    fn mount_setattr(
        &self,
        mount: BorrowedFd<'_>,
        attr_set: u64,
        userns: Option<BorrowedFd<'_>>,
    ) -> SysResult<()> {
        mount::mount_setattr(mount, attr_set, userns)
    }

    fn move_mount(&self, mount: BorrowedFd<'_>, target: &Path) -> SysResult<()> {
        mount::move_mount(mount, target)
    }

    fn become_user(&self, uid: u32, gid: u32) -> SysResult<()> {
        ns::become_user(uid, gid)
    }

    fn set_dumpable(&self) -> SysResult<()> {
        ns::set_dumpable()
    }

    fn write_file(&self, path: &Path, contents: &str) -> std::io::Result<()> {
        std::fs::write(path, contents)
    }
}
