//! The child's setup sequence: the enclave's root, its `/dev`, `/proc`, `/sys`, `/tmp` and
//! `/run`, the hostname, the namespaces entered after the go, the `pivot_root`s and the user
//! namespace's id maps (steps 1 to 6 of [`crate::sandbox`]'s docs).
//!
//! Every privileged call goes through a [`Syscalls`]: the child passes
//! [`crate::sys::LinuxSyscalls`], unit tests a recorder, so the order of the mounts and their
//! flags are tested without root. Opening and inspecting directories stays direct (the same
//! for a test on a temporary directory).

use super::error::{error_chain, SetupError};
use crate::rootfs::Unpacker;
use crate::sys::{self, NodeKind, Syscalls};
use nix::mount::MsFlags;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

/// The character devices of an enclave's `/dev`: name, major, minor (Linux's fixed numbers,
/// the same as the host's nodes).
pub const DEV_NODES: [(&str, u32, u32); 6] = [
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];
/// The device nodes a supervised enclave gets besides [`DEV_NODES`]: `/dev/nsm` and
/// `/dev/vsock`, both the null device (reads and writes behave as on `/dev/null`); their
/// ioctls (AWS's NSM request, `IOCTL_VM_SOCKETS_GET_LOCAL_CID`) are answered by the monitor's
/// supervisor ([`cloister_supervisor`]) through the notification filter.
pub const SUPERVISED_DEV_NODES: [(&str, u32, u32); 2] = [("nsm", 1, 3), ("vsock", 1, 3)];
/// Mount options of an enclave's `/dev` tmpfs (besides its owner): a few nodes and sockets.
const DEV_TMPFS_OPTIONS: &str = "size=1m,nr_inodes=256,mode=0755";
/// Name of the fabric socket inside `/dev`.
pub const VSOCK_NODE: &str = "vsock.sock";
/// Overlay options; the directories are relative to the scratch tmpfs (the child's cwd).
const OVERLAY_OPTIONS: &str = "lowerdir=lower,upperdir=upper,workdir=work";
/// The application's root in the bootstrap tree.
const ROOTFS_PATH: &str = "/rootfs";

/// The OOM score adjustment of an enclave's init. One above the lowest: -1000 would make init
/// unkillable even when it alone holds the enclave's memory, which leaves the memory cgroup
/// without a victim; -999 lets the enclave's OOM killer take every other process of the
/// enclave first. Cloister's init gives its command the default 0 back; the processes of a
/// foreign init inherit -999 (and any process may come back down to it, never below).
pub const INIT_OOM_SCORE_ADJ: i32 = -999;

/// Where a process sets its own OOM score adjustment.
const OOM_SCORE_ADJ_PATH: &str = "/proc/self/oom_score_adj";

/// `/proc` entries that show the host's kernel (its memory, keyrings, timers, symbols,
/// hardware), masked where the kernel has them: `/dev/null` bound over files, an empty
/// read-only tmpfs over directories.
pub const PROC_MASKED: [&str; 11] = [
    "kcore",
    "keys",
    "timer_list",
    "sched_debug",
    "config.gz",
    "iomem",
    "kallsyms",
    "latency_stats",
    "timer_stats",
    "scsi",
    "acpi",
];
/// `/proc` entries through which a writer could reconfigure the host's kernel, made read-only
/// mounts (the enclave's root could not write most of them anyway: they belong to the host's
/// root).
pub const PROC_READ_ONLY: [&str; 5] = ["sys", "sysrq-trigger", "irq", "bus", "fs"];

/// `/sys` directories that show the host's firmware (ACPI tables, DMI, EFI variables) and its
/// energy counters (powercap/RAPL, a side channel), masked by an empty read-only tmpfs as
/// container runtimes mask them.
pub const SYS_MASKED: [&str; 2] = ["firmware", "devices/virtual/powercap"];

/// What the root is built from, besides the image.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RootParams<'a> {
    /// Host directory the scratch tmpfs goes on (`LaunchSpec::root_mount`).
    pub scratch: &'a Path,
    /// The enclave's memory: the size of its tmpfs mounts.
    pub memory_mib: u64,
    /// The enclave's host uid.
    pub uid: u32,
    /// The enclave's host gid.
    pub gid: u32,
    /// The hostname (the enclave id).
    pub hostname: &'a str,
    /// Whether the enclave gets the supervisor's device nodes.
    pub supervised: bool,
}

/// The image's unpacked tree and the user namespace its idmapped mount maps through.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ImageTree<'a> {
    /// The cached tree.
    pub tree: &'a Path,
    /// The idmapping user namespace.
    pub userns: BorrowedFd<'a>,
}

/// The enclave's root, built before the go.
#[derive(Debug)]
pub(crate) struct BuiltRoot {
    unpacker: Unpacker,
    root_path: PathBuf,
    has_rootfs: bool,
}

/// Where `/dev` is in the tree: `rootfs/dev` when the image has a `rootfs/`.
fn dev_dir_of(has_rootfs: bool) -> &'static [&'static [u8]] {
    if has_rootfs {
        &[b"rootfs", b"dev"]
    } else {
        &[b"dev"]
    }
}

/// The application's root in the tree: `rootfs` when the image has one, else the tree.
fn app_root_of(has_rootfs: bool) -> &'static [&'static [u8]] {
    if has_rootfs {
        &[b"rootfs"]
    } else {
        &[]
    }
}

impl BuiltRoot {
    /// Whether the image has a `rootfs/` (the enclave then runs there, see [`enter_rootfs`]).
    pub fn has_rootfs(&self) -> bool {
        self.has_rootfs
    }
}

/// Steps 1 to 4 up to the go: private mounts, the OOM score, the scratch tmpfs, the root (the
/// image's overlay, or `fill` copying the ramdisks when `image` is `None` or its overlay fails),
/// `/dev`, `/proc`, `/tmp`, `/run` and the hostname.
pub(crate) fn build_root(
    sys: &dyn Syscalls,
    p: &RootParams<'_>,
    image: Option<ImageTree<'_>>,
    fill: &mut dyn FnMut(&mut Unpacker) -> Result<(), SetupError>,
) -> Result<BuiltRoot, SetupError> {
    sys.mount(
        None,
        Path::new("/"),
        None,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None,
    )?;
    // Shield init from the OOM killer: lowering a score needs CAP_SYS_RESOURCE in the host's
    // user namespace, which this child has only until it becomes the enclave's user (and
    // only where the runtime's root has it: not in every container).
    if let Err(e) = sys.write_file(
        Path::new(OOM_SCORE_ADJ_PATH),
        &INIT_OOM_SCORE_ADJ.to_string(),
    ) {
        tracing::warn!(error = %e, "cannot shield the enclave's init from the OOM killer");
    }
    let (uid, gid) = (p.uid, p.gid);
    let nosuid_nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    let scratch_path = p.scratch;
    sys.mount(
        Some(Path::new("tmpfs")),
        scratch_path,
        Some("tmpfs"),
        nosuid_nodev,
        Some(&format!("size={}m,mode=0700", p.memory_mib)),
    )?;
    let scratch = sys::open_dir(scratch_path)?;
    sys::mkdir_at(scratch.as_fd(), b"root", 0o755)?;
    let root_path = scratch_path.join("root");
    sys.lchown_at(scratch.as_fd(), Path::new("root"), uid, gid)?;
    crate::boottrace::mark("child: scratch tmpfs mounted");
    let overlaid = match image {
        Some(src) => match mount_overlay(sys, scratch_path, &scratch, src, uid, gid) {
            Ok(()) => true,
            Err(e) => {
                let e = error_chain(&e);
                tracing::warn!(error = %e, "cannot mount the image overlay; copying the ramdisks");
                false
            }
        },
        None => false,
    };
    if overlaid {
        crate::boottrace::mark("child: image overlay mounted");
    } else {
        // pivot_root needs a mount point.
        sys.mount(Some(&root_path), &root_path, None, MsFlags::MS_BIND, None)?;
        let mut copier = Unpacker::new(sys::open_dir(&root_path)?, uid, gid);
        fill(&mut copier)?;
        crate::boottrace::mark("child: ramdisks copied");
    }
    drop(scratch);
    let mut unpacker = Unpacker::new(sys::open_dir(&root_path)?, uid, gid);
    // The enclave runs in the image's `rootfs/` when it has one (the bootstrap's files stay
    // behind, see `enter_rootfs`), else in the whole tree: /dev and /proc go there only.
    let has_rootfs = sys::kind_at(unpacker.root(), b"rootfs")? == Some(NodeKind::Dir);
    let (dev_dir, app_root) = (dev_dir_of(has_rootfs), app_root_of(has_rootfs));
    let proc_dir: &[&[u8]] = if has_rootfs {
        &[b"rootfs", b"proc"]
    } else {
        &[b"proc"]
    };
    populate_dev(sys, &mut unpacker, dev_dir, p)?;
    mount_proc(sys, &mut unpacker, proc_dir, dev_dir)?;
    crate::boottrace::mark("child: /dev and /proc done");
    // /tmp and /run: tmpfs (capped by the enclave's memory, as all of its writes are), made
    // when the image lacks them, as AWS's init mounts them.
    for (name, mode) in [(&b"tmp"[..], "1777"), (b"run", "0755")] {
        let dir: Vec<&[u8]> = app_root.iter().copied().chain([name]).collect();
        let d = unpacker.ensure_dir(&dir, "tmp or run")?;
        let opts = format!("size={}m,mode={mode},uid={uid},gid={gid}", p.memory_mib);
        sys.mount(
            Some(Path::new("tmpfs")),
            &sys::fd_path(d.as_fd()),
            Some("tmpfs"),
            nosuid_nodev,
            Some(&opts),
        )?;
    }
    crate::boottrace::mark("child: /tmp, /run mounts done");
    sys.sethostname(p.hostname)?;
    crate::boottrace::mark("child: hostname, lo done");
    Ok(BuiltRoot {
        unpacker,
        root_path,
        has_rootfs,
    })
}

/// Step 4 after the go (the caller has entered the enclave's cgroup) and step 5 up to the
/// first `pivot_root`: a cgroup namespace, the network namespace (`netns`, made ahead; else a
/// new one), `/sys`, the broker's socket as `dev/vsock.sock`, then `pivot_root` into the root.
pub(crate) fn enter_root(
    sys: &dyn Syscalls,
    mut built: BuiltRoot,
    netns: Option<sys::NetnsHandle>,
    enclave_socket: &Path,
) -> Result<(), SetupError> {
    // Now in the enclave's cgroup: a cgroup namespace rooted there.
    sys.unshare(sys::ns::CGROUP)?;
    // The network namespace the monitor's helper made meanwhile (it had the whole setup to
    // do so); where that failed, one of its own.
    let entered = match netns.map(sys::NetnsHandle::enter) {
        Some(Ok(())) => true,
        Some(Err(e)) => {
            tracing::warn!(error = %e, "no network namespace made ahead; making one");
            sys.unshare(sys::ns::NET)?;
            false
        }
        None => false,
    };
    if !entered {
        sys.loopback_up()?;
    }
    // /sys, now that the enclave's network namespace is entered (sysfs shows the mounter's).
    let sys_dir: Vec<&[u8]> = app_root_of(built.has_rootfs)
        .iter()
        .copied()
        .chain([&b"sys"[..]])
        .collect();
    mount_sys(sys, &mut built.unpacker, &sys_dir)?;
    // The broker's socket was bound before the clone; the broker serves it once it starts.
    let dev_dir = dev_dir_of(built.has_rootfs);
    bind_node(
        sys,
        &mut built.unpacker,
        dev_dir,
        enclave_socket,
        VSOCK_NODE,
    )?;
    drop(built.unpacker);
    crate::boottrace::mark("child: vsock socket bound");
    sys.chdir(&built.root_path)?;
    sys.pivot_root(Path::new("."), Path::new("."))?;
    sys.umount_detach(Path::new("."))?;
    sys.chdir(Path::new("/"))?;
    crate::boottrace::mark("child: pivot_root done");
    Ok(())
}

/// Step 6's id maps: becomes `uid`/`gid`, unshares a user namespace and maps uid and gid 0 in
/// it to them (`setgroups` denied first, as an unprivileged writer of `gid_map` must).
pub(crate) fn map_ids(sys: &dyn Syscalls, uid: u32, gid: u32) -> Result<(), SetupError> {
    sys.become_user(uid, gid)?;
    sys.unshare(sys::ns::USER)?;
    sys.set_dumpable()?;
    let write = |file: &'static str, text: String| {
        sys.write_file(Path::new(file), &text)
            .map_err(|error| SetupError::Write { file, error })
    };
    write("/proc/self/setgroups", "deny".into())?;
    write("/proc/self/uid_map", format!("0 {uid} 1\n"))?;
    write("/proc/self/gid_map", format!("0 {gid} 1\n"))?;
    Ok(())
}

/// Mounts the overlay on `<scratch>/root`: the cached tree, idmapped and read-only, as its
/// lower layer (attached at `<scratch>/lower` first), `<scratch>/upper` and `<scratch>/work`.
/// The upper directory's root is the enclave root's owner and mode.
fn mount_overlay(
    sys: &dyn Syscalls,
    scratch_path: &Path,
    scratch: &OwnedFd,
    src: ImageTree<'_>,
    uid: u32,
    gid: u32,
) -> Result<(), SetupError> {
    for dir in [&b"lower"[..], b"upper", b"work"] {
        sys::mkdir_at(scratch.as_fd(), dir, 0o700)?;
    }
    let upper = sys::open_dir_at(scratch.as_fd(), b"upper")?;
    sys.fchown(upper.as_fd(), uid, gid)?;
    sys::fchmod(upper.as_fd(), 0o755)?;
    let tree = sys.open_tree_clone(src.tree)?;
    use sys::mount_attr::{IDMAP, NODEV, NOSUID, RDONLY};
    sys.mount_setattr(
        tree.as_fd(),
        RDONLY | NOSUID | NODEV | IDMAP,
        Some(src.userns),
    )?;
    sys.move_mount(tree.as_fd(), &scratch_path.join("lower"))?;
    sys.chdir(scratch_path)?;
    Ok(sys.mount(
        Some(Path::new("overlay")),
        Path::new("root"),
        Some("overlay"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(OVERLAY_OPTIONS),
    )?)
}

/// Mounts a small tmpfs on `<dir>` (owned by the enclave's root, `nosuid,noexec`) and makes
/// the [`DEV_NODES`] in it with `mknod`, mode 0666 and owned by the enclave's root, as a host's
/// `/dev` has them. The child is still host root in the host's user namespace here, so it may
/// make them; the enclave never can (its root is an unprivileged host uid without
/// `CAP_MKNOD`), so the tmpfs allows devices only for these nodes. Making nodes costs a few
/// microseconds each, where bind-mounting the host's took a mount per node.
fn populate_dev(
    sys: &dyn Syscalls,
    unpacker: &mut Unpacker,
    dir: &[&[u8]],
    p: &RootParams<'_>,
) -> Result<(), SetupError> {
    let shown = "dev";
    let (uid, gid) = (p.uid, p.gid);
    let mount_point = unpacker.ensure_dir(dir, shown)?;
    sys.mount(
        Some(Path::new("tmpfs")),
        &sys::fd_path(mount_point.as_fd()),
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some(&format!("{DEV_TMPFS_OPTIONS},uid={uid},gid={gid}")),
    )?;
    let dev = unpacker.ensure_dir(dir, shown)?;
    let supervised_nodes: &[(&str, u32, u32)] = if p.supervised {
        &SUPERVISED_DEV_NODES
    } else {
        &[]
    };
    for (name, major, minor) in DEV_NODES.iter().chain(supervised_nodes) {
        sys.mknod_char_at(dev.as_fd(), name.as_bytes(), *major, *minor, 0o666)?;
        sys.lchown_at(dev.as_fd(), Path::new(name), uid, gid)?;
    }
    Ok(())
}

/// Bind-mounts host path `source` as `<dir>/<name>` (a file created for it).
fn bind_node(
    sys: &dyn Syscalls,
    unpacker: &mut Unpacker,
    dir: &[&[u8]],
    source: &Path,
    name: &str,
) -> Result<(), SetupError> {
    let dev = unpacker.ensure_dir(dir, "dev")?;
    bind_at(sys, &dev, source, name)
}

/// Bind-mounts `source` onto `name` in directory `dev`, replacing what is there (never through
/// a symlink: the target is opened `O_PATH|O_NOFOLLOW` and mounted via `/proc/self/fd`).
fn bind_at(sys: &dyn Syscalls, dev: &OwnedFd, source: &Path, name: &str) -> Result<(), SetupError> {
    match sys::kind_at(dev.as_fd(), name.as_bytes())? {
        None | Some(NodeKind::File) => {}
        Some(_) => {
            sys::unlink_at(dev.as_fd(), name.as_bytes(), false)?;
        }
    }
    drop(sys::create_file_at(dev.as_fd(), name.as_bytes(), 0o666)?);
    let target = sys::open_path_nofollow(dev.as_fd(), name.as_bytes())?;
    Ok(sys.mount(
        Some(source),
        &sys::fd_path(target.as_fd()),
        None,
        MsFlags::MS_BIND,
        None,
    )?)
}

/// Mounts a fresh proc (of the new PID namespace) on `dir` and masks it ([`PROC_MASKED`],
/// [`PROC_READ_ONLY`]) with the `null` node of `dev_dir` ([`populate_dev`] made it). The mounts
/// belong to the host's user namespace, so nothing in the enclave can remove them.
fn mount_proc(
    sys: &dyn Syscalls,
    unpacker: &mut Unpacker,
    dir: &[&[u8]],
    dev_dir: &[&[u8]],
) -> Result<(), SetupError> {
    let hidden = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let d = unpacker.ensure_dir(dir, "proc")?;
    sys.mount(
        Some(Path::new("proc")),
        &sys::fd_path(d.as_fd()),
        Some("proc"),
        hidden,
        None,
    )?;
    // Opened again: the proc just mounted, not the directory beneath it.
    let proc = unpacker.ensure_dir(dir, "proc")?;
    let dev = unpacker.ensure_dir(dev_dir, "dev")?;
    let null = sys::open_path_nofollow(dev.as_fd(), b"null")?;
    for name in PROC_MASKED {
        let Some(kind) = sys::kind_at(proc.as_fd(), name.as_bytes())? else {
            continue;
        };
        let target = sys::open_path_nofollow(proc.as_fd(), name.as_bytes())?;
        if kind == NodeKind::Dir {
            sys.mount(
                Some(Path::new("tmpfs")),
                &sys::fd_path(target.as_fd()),
                Some("tmpfs"),
                hidden | MsFlags::MS_RDONLY,
                Some("size=4k,mode=0555"),
            )
        } else {
            sys.mount(
                Some(&sys::fd_path(null.as_fd())),
                &sys::fd_path(target.as_fd()),
                None,
                MsFlags::MS_BIND,
                None,
            )
        }?;
    }
    for name in PROC_READ_ONLY {
        if sys::kind_at(proc.as_fd(), name.as_bytes())?.is_none() {
            continue;
        }
        let target = sys::open_path_nofollow(proc.as_fd(), name.as_bytes())?;
        let path = sys::fd_path(target.as_fd());
        sys.mount(
            Some(&path),
            &path,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
        )?;
        // The remount must reach the bind mount, not the proc beneath: open the name again.
        let bound = sys::open_path_nofollow(proc.as_fd(), name.as_bytes())?;
        sys.mount(
            None,
            &sys::fd_path(bound.as_fd()),
            None,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | hidden,
            None,
        )?;
    }
    Ok(())
}

/// Mounts sysfs read-only on `<dir>`: the sysfs of the enclave's network namespace (the
/// caller has entered it), so `class/net` holds only `lo`; [`SYS_MASKED`] hidden. The rest
/// (devices, kernel, module parameters) is the host's, readable as by any unprivileged user:
/// the enclave's root is one on the host, and the mount is read-only.
fn mount_sys(sys: &dyn Syscalls, unpacker: &mut Unpacker, dir: &[&[u8]]) -> Result<(), SetupError> {
    let hidden = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC | MsFlags::MS_RDONLY;
    let d = unpacker.ensure_dir(dir, "sys")?;
    sys.mount(
        Some(Path::new("sysfs")),
        &sys::fd_path(d.as_fd()),
        Some("sysfs"),
        hidden,
        None,
    )?;
    // Opened again: the sysfs just mounted, not the directory beneath it.
    let sysfs = unpacker.ensure_dir(dir, "sys")?;
    for name in SYS_MASKED {
        let mut at = sysfs.try_clone().map_err(SetupError::SysDir)?;
        let mut parts = name.split('/').peekable();
        while let Some(part) = parts.next() {
            if sys::kind_at(at.as_fd(), part.as_bytes())? != Some(NodeKind::Dir) {
                break;
            }
            let next = sys::open_path_nofollow(at.as_fd(), part.as_bytes())?;
            if parts.peek().is_none() {
                sys.mount(
                    Some(Path::new("tmpfs")),
                    &sys::fd_path(next.as_fd()),
                    Some("tmpfs"),
                    hidden,
                    Some("size=4k,mode=0555"),
                )?;
            }
            at = next;
        }
    }
    Ok(())
}

/// Makes `/rootfs` (with its /dev, /proc and /tmp mounts) the root, the way the first
/// `pivot_root` made the enclave's tree the root: the bootstrap tree (init, `/cmd`, `/env`)
/// is no longer reachable from the enclave, only through the descriptors opened before.
/// `/rootfs` is a real directory of the enclave's tree (checked before, and nothing of the
/// enclave runs yet), and paths now resolve inside that tree.
pub(crate) fn enter_rootfs(sys: &dyn Syscalls) -> Result<(), SetupError> {
    let rootfs = Path::new(ROOTFS_PATH);
    // pivot_root needs a mount point.
    sys.mount(
        Some(rootfs),
        rootfs,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
    )?;
    sys.chdir(rootfs)?;
    sys.pivot_root(Path::new("."), Path::new("."))?;
    sys.umount_detach(Path::new("."))?;
    Ok(sys.chdir(Path::new("/"))?)
}
