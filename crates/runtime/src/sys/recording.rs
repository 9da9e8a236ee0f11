//! A [`Syscalls`] that records each call with its arguments and performs none of them (test
//! builds only). Paths of descriptors (`/proc/self/fd/N`, a directory descriptor and a name)
//! are recorded as the host paths they resolve to, so a test names the places it expects.
//! A scripted failure makes the first call that matches fail with a given errno. The one
//! thing it does make is an empty regular file in place of each device node, so that the
//! sequence can go on opening it.

use super::error::{SysError, SysResult};
use super::syscalls::Syscalls;
use nix::errno::Errno;
use nix::mount::MsFlags;
use std::cell::RefCell;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

/// One recorded call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// `mount(source, target, fstype, flags, data)`.
    Mount {
        /// The source, resolved when it is a `/proc/self/fd/N` path.
        source: Option<PathBuf>,
        /// The target, resolved likewise.
        target: PathBuf,
        /// The file system type.
        fstype: Option<String>,
        /// The flags.
        flags: MsFlags,
        /// The options.
        data: Option<String>,
    },
    /// `umount2(target, MNT_DETACH)`.
    UmountDetach(PathBuf),
    /// `pivot_root(new_root, put_old)`.
    PivotRoot(PathBuf, PathBuf),
    /// `chdir(path)`.
    Chdir(PathBuf),
    /// `sethostname(name)`.
    Sethostname(String),
    /// `unshare(flags)`.
    Unshare(i32),
    /// Loopback up.
    LoopbackUp,
    /// `mknodat` of a character device at `path`.
    MknodChar {
        /// Where.
        path: PathBuf,
        /// Device major.
        major: u32,
        /// Device minor.
        minor: u32,
        /// Mode.
        mode: u32,
    },
    /// `fchownat(path, AT_SYMLINK_NOFOLLOW)`.
    Lchown(PathBuf, u32, u32),
    /// `fchown(fd)` of the file at this path.
    Fchown(PathBuf, u32, u32),
    /// `open_tree(path, OPEN_TREE_CLONE)`.
    OpenTreeClone(PathBuf),
    /// `mount_setattr(attr_set, with a user namespace?)`.
    MountSetattr(u64, bool),
    /// `move_mount(target)`.
    MoveMount(PathBuf),
    /// `become_user(uid, gid)`.
    BecomeUser(u32, u32),
    /// `prctl(PR_SET_DUMPABLE)`.
    SetDumpable,
    /// A write of `contents` to `path`.
    WriteFile(PathBuf, String),
}

impl Call {
    /// The name of the wrapped call, as [`SysError::call`] names it.
    fn name(&self) -> &'static str {
        match self {
            Call::Mount { .. } => "mount",
            Call::UmountDetach(_) => "umount2",
            Call::PivotRoot(..) => "pivot_root",
            Call::Chdir(_) => "chdir",
            Call::Sethostname(_) => "sethostname",
            Call::Unshare(_) => "unshare",
            Call::LoopbackUp => "ioctl",
            Call::MknodChar { .. } => "mknodat",
            Call::Lchown(..) => "fchownat",
            Call::Fchown(..) => "fchown",
            Call::OpenTreeClone(_) => "open_tree",
            Call::MountSetattr(..) => "mount_setattr",
            Call::MoveMount(_) => "move_mount",
            Call::BecomeUser(..) => "setresuid",
            Call::SetDumpable => "prctl",
            Call::WriteFile(..) => "write",
        }
    }
}

/// A predicate choosing the call that fails.
type FailWhen = Box<dyn Fn(&Call) -> bool>;

/// Records calls; fails the first one matching the scripted predicate.
#[derive(Default)]
pub struct RecordingSyscalls {
    calls: RefCell<Vec<Call>>,
    fail: Option<(FailWhen, Errno)>,
    failed: RefCell<bool>,
}

impl std::fmt::Debug for RecordingSyscalls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordingSyscalls")
            .field("calls", &self.calls.borrow())
            .finish_non_exhaustive()
    }
}

/// The host path behind `/proc/self/fd/N` (else `path` itself).
fn resolve(path: &Path) -> PathBuf {
    if path.starts_with("/proc/self/fd") {
        std::fs::read_link(path).unwrap_or_else(|_| path.to_owned())
    } else {
        path.to_owned()
    }
}

/// The host path of `name` under directory descriptor `dir`.
fn at(dir: BorrowedFd<'_>, name: &[u8]) -> PathBuf {
    let dir = resolve(&PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd())));
    dir.join(std::ffi::OsStr::new(
        std::str::from_utf8(name).unwrap_or("?"),
    ))
}

impl RecordingSyscalls {
    /// A recorder under which every call succeeds.
    pub fn new() -> Self {
        Self::default()
    }

    /// A recorder under which the first call that `when` matches fails with `errno` (and is
    /// recorded).
    pub fn failing(when: impl Fn(&Call) -> bool + 'static, errno: Errno) -> Self {
        Self {
            fail: Some((Box::new(when), errno)),
            ..Self::default()
        }
    }

    /// The calls so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.calls.borrow().clone()
    }

    /// The recorded mounts, in order.
    pub fn mounts(&self) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| matches!(c, Call::Mount { .. }))
            .collect()
    }

    fn record(&self, call: Call) -> SysResult<()> {
        let fails =
            !*self.failed.borrow() && self.fail.as_ref().is_some_and(|(when, _)| when(&call));
        let name = call.name();
        let context = format!("{call:?}");
        self.calls.borrow_mut().push(call);
        match (&self.fail, fails) {
            (Some((_, errno)), true) => {
                *self.failed.borrow_mut() = true;
                Err(SysError::new(name, context, *errno))
            }
            _ => Ok(()),
        }
    }
}

/// A descriptor to hand out for a detached mount nobody made.
fn placeholder_fd() -> OwnedFd {
    OwnedFd::from(std::fs::File::open("/dev/null").expect("open /dev/null"))
}

impl Syscalls for RecordingSyscalls {
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> SysResult<()> {
        self.record(Call::Mount {
            source: source.map(resolve),
            target: resolve(target),
            fstype: fstype.map(str::to_owned),
            flags,
            data: data.map(str::to_owned),
        })
    }

    fn umount_detach(&self, target: &Path) -> SysResult<()> {
        self.record(Call::UmountDetach(target.to_owned()))
    }

    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> SysResult<()> {
        self.record(Call::PivotRoot(new_root.to_owned(), put_old.to_owned()))
    }

    fn chdir(&self, path: &Path) -> SysResult<()> {
        self.record(Call::Chdir(path.to_owned()))
    }

    fn sethostname(&self, name: &str) -> SysResult<()> {
        self.record(Call::Sethostname(name.to_owned()))
    }

    fn unshare(&self, flags: i32) -> SysResult<()> {
        self.record(Call::Unshare(flags))
    }

    fn loopback_up(&self) -> SysResult<()> {
        self.record(Call::LoopbackUp)
    }

    fn mknod_char_at(
        &self,
        dir: BorrowedFd<'_>,
        name: &[u8],
        major: u32,
        minor: u32,
        mode: u32,
    ) -> SysResult<()> {
        self.record(Call::MknodChar {
            path: at(dir, name),
            major,
            minor,
            mode,
        })?;
        // An empty file stands in for the node, so that later opens of it find something.
        drop(super::fs::create_file_at(dir, name, mode)?);
        Ok(())
    }

    fn lchown_at(&self, dir: BorrowedFd<'_>, name: &Path, uid: u32, gid: u32) -> SysResult<()> {
        let path = at(dir, name.as_os_str().as_encoded_bytes());
        self.record(Call::Lchown(path, uid, gid))
    }

    fn fchown(&self, fd: BorrowedFd<'_>, uid: u32, gid: u32) -> SysResult<()> {
        let path = resolve(&PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd())));
        self.record(Call::Fchown(path, uid, gid))
    }

    fn open_tree_clone(&self, path: &Path) -> SysResult<OwnedFd> {
        self.record(Call::OpenTreeClone(path.to_owned()))?;
        Ok(placeholder_fd())
    }

    fn mount_setattr(
        &self,
        _mount: BorrowedFd<'_>,
        attr_set: u64,
        userns: Option<BorrowedFd<'_>>,
    ) -> SysResult<()> {
        self.record(Call::MountSetattr(attr_set, userns.is_some()))
    }

    fn move_mount(&self, _mount: BorrowedFd<'_>, target: &Path) -> SysResult<()> {
        self.record(Call::MoveMount(target.to_owned()))
    }

    fn become_user(&self, uid: u32, gid: u32) -> SysResult<()> {
        self.record(Call::BecomeUser(uid, gid))
    }

    fn set_dumpable(&self) -> SysResult<()> {
        self.record(Call::SetDumpable)
    }

    fn write_file(&self, path: &Path, contents: &str) -> std::io::Result<()> {
        self.record(Call::WriteFile(path.to_owned(), contents.to_owned()))
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno as i32))
    }
}
