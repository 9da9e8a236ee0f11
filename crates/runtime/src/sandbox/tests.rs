//! Unit tests of the child's setup sequence on a recorder ([`crate::sys::recording`]): the
//! order, targets and flags of the mounts, the masking of `/proc` and `/sys`, the id maps and
//! the error paths, without root. The tree is a temporary directory; the recorder performs no
//! mount, so the sequence goes on inspecting the directories beneath.

use super::error::{error_chain, SetupError};
use super::setup::{self, ImageTree, RootParams};
use crate::rootfs::Unpacker;
use crate::sys::recording::{Call, RecordingSyscalls};
use crate::sys::{self, mount_attr};
use nix::errno::Errno;
use nix::mount::MsFlags;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

/// A temporary scratch directory (canonical, as the recorder resolves descriptors).
struct Scratch {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

fn scratch() -> Scratch {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().canonicalize().unwrap().join("scratch");
    std::fs::create_dir(&path).unwrap();
    Scratch { _dir: dir, path }
}

/// The test's own ids: the unpacker chowns what it creates to them, which needs no privilege.
fn ids() -> (u32, u32) {
    (
        nix::unistd::getuid().as_raw(),
        nix::unistd::getgid().as_raw(),
    )
}

fn params<'a>(scratch: &'a Path, supervised: bool) -> RootParams<'a> {
    let (uid, gid) = ids();
    RootParams {
        scratch,
        memory_mib: 64,
        uid,
        gid,
        hostname: "i-0123456789abcdef0-enc0123456789abcdef",
        supervised,
    }
}

/// A user namespace stand-in: any descriptor (the recorder only notes that there is one).
fn userns() -> OwnedFd {
    OwnedFd::from(std::fs::File::open("/dev/null").unwrap())
}

fn mount(
    source: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> Call {
    Call::Mount {
        source: source.map(Path::to_owned),
        target: target.to_owned(),
        fstype: fstype.map(str::to_owned),
        flags,
        data: data.map(str::to_owned),
    }
}

fn nosuid_nodev() -> MsFlags {
    MsFlags::MS_NOSUID | MsFlags::MS_NODEV
}

fn proc_hidden() -> MsFlags {
    MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC
}

/// The calls of `/dev`, `/proc` (nothing to mask), `/tmp`, `/run` and the hostname, for a
/// tree whose application root is `app`.
fn dev_proc_tmp_run(app: &Path, supervised: bool) -> Vec<Call> {
    let (uid, gid) = ids();
    let dev = app.join("dev");
    let mut calls = vec![mount(
        Some(Path::new("tmpfs")),
        &dev,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some(&format!(
            "size=1m,nr_inodes=256,mode=0755,uid={uid},gid={gid}"
        )),
    )];
    let extra: &[(&str, u32, u32)] = if supervised {
        &super::SUPERVISED_DEV_NODES
    } else {
        &[]
    };
    for (name, major, minor) in super::DEV_NODES.iter().chain(extra) {
        calls.push(Call::MknodChar {
            path: dev.join(name),
            major: *major,
            minor: *minor,
            mode: 0o666,
        });
        calls.push(Call::Lchown(dev.join(name), uid, gid));
    }
    calls.push(mount(
        Some(Path::new("proc")),
        &app.join("proc"),
        Some("proc"),
        proc_hidden(),
        None,
    ));
    for (name, mode) in [("tmp", "1777"), ("run", "0755")] {
        calls.push(mount(
            Some(Path::new("tmpfs")),
            &app.join(name),
            Some("tmpfs"),
            nosuid_nodev(),
            Some(&format!("size=64m,mode={mode},uid={uid},gid={gid}")),
        ));
    }
    calls.push(Call::Sethostname(
        "i-0123456789abcdef0-enc0123456789abcdef".into(),
    ));
    calls
}

/// The calls before the root is filled: private mounts, the OOM score, the scratch tmpfs.
fn prologue(scratch: &Path) -> Vec<Call> {
    let (uid, gid) = ids();
    vec![
        mount(
            None,
            Path::new("/"),
            None,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None,
        ),
        Call::WriteFile("/proc/self/oom_score_adj".into(), "-999".into()),
        mount(
            Some(Path::new("tmpfs")),
            scratch,
            Some("tmpfs"),
            nosuid_nodev(),
            Some("size=64m,mode=0700"),
        ),
        Call::Lchown(scratch.join("root"), uid, gid),
    ]
}

/// Builds the root with `calls`, the image tree `/cache/tree` when `overlay`, and `fill`
/// (counting its calls) otherwise.
fn build(
    calls: &RecordingSyscalls,
    scratch: &Path,
    overlay: bool,
    supervised: bool,
    fill: &mut dyn FnMut(&mut Unpacker) -> Result<(), SetupError>,
) -> Result<setup::BuiltRoot, SetupError> {
    let ns = userns();
    let image = overlay.then(|| ImageTree {
        tree: Path::new("/cache/tree"),
        userns: ns.as_fd(),
    });
    setup::build_root(calls, &params(scratch, supervised), image, fill)
}

#[test]
fn an_overlay_root_mounts_the_idmapped_image_under_a_tmpfs_upper_layer() {
    let s = scratch();
    let calls = RecordingSyscalls::new();
    let mut filled = 0;
    let built = build(&calls, &s.path, true, false, &mut |_| {
        filled += 1;
        Ok(())
    })
    .unwrap();
    assert_eq!(filled, 0, "nothing is copied under an overlay");
    assert!(!built.has_rootfs());
    let (uid, gid) = ids();
    let mut want = prologue(&s.path);
    want.extend([
        Call::Fchown(s.path.join("upper"), uid, gid),
        Call::OpenTreeClone("/cache/tree".into()),
        Call::MountSetattr(
            mount_attr::RDONLY | mount_attr::NOSUID | mount_attr::NODEV | mount_attr::IDMAP,
            true,
        ),
        Call::MoveMount(s.path.join("lower")),
        Call::Chdir(s.path.clone()),
        mount(
            Some(Path::new("overlay")),
            Path::new("root"),
            Some("overlay"),
            nosuid_nodev(),
            Some("lowerdir=lower,upperdir=upper,workdir=work"),
        ),
    ]);
    want.extend(dev_proc_tmp_run(&s.path.join("root"), false));
    assert_eq!(calls.calls(), want);
    // The overlay's directories are on the scratch tmpfs, the upper one open to the enclave.
    for dir in ["lower", "upper", "work", "root"] {
        assert!(s.path.join(dir).is_dir(), "{dir}");
    }
}

#[test]
fn a_tmpfs_root_is_bind_mounted_onto_itself_and_filled_with_the_ramdisks() {
    let s = scratch();
    let calls = RecordingSyscalls::new();
    let mut filled = 0;
    build(&calls, &s.path, false, false, &mut |_| {
        filled += 1;
        Ok(())
    })
    .unwrap();
    assert_eq!(filled, 1);
    let root = s.path.join("root");
    let mut want = prologue(&s.path);
    // pivot_root needs a mount point.
    want.push(mount(Some(&root), &root, None, MsFlags::MS_BIND, None));
    want.extend(dev_proc_tmp_run(&root, false));
    assert_eq!(calls.calls(), want);
}

#[test]
fn an_overlay_that_fails_falls_back_to_copying_the_ramdisks() {
    let s = scratch();
    let calls = RecordingSyscalls::failing(|c| matches!(c, Call::MountSetattr(..)), Errno::EINVAL);
    let mut filled = 0;
    build(&calls, &s.path, true, false, &mut |_| {
        filled += 1;
        Ok(())
    })
    .unwrap();
    assert_eq!(filled, 1, "the ramdisks are copied instead");
    let recorded = calls.calls();
    let root = s.path.join("root");
    let failed = recorded
        .iter()
        .position(|c| matches!(c, Call::MountSetattr(..)))
        .unwrap();
    // Nothing more of the overlay: the root becomes a bind mount of itself.
    assert_eq!(
        recorded[failed + 1],
        mount(Some(&root), &root, None, MsFlags::MS_BIND, None)
    );
    assert!(!recorded
        .iter()
        .any(|c| matches!(c, Call::MoveMount(_) | Call::Chdir(_))));
}

#[test]
fn proc_is_masked_where_the_kernel_has_the_entries() {
    let s = scratch();
    let calls = RecordingSyscalls::new();
    // A proc with some of the masked entries: a file, a directory, a read-only one.
    build(&calls, &s.path, false, false, &mut |u| {
        u.ensure_dir(&[b"proc", b"scsi"], "t")?;
        u.ensure_dir(&[b"proc", b"sys"], "t")?;
        let proc = u.ensure_dir(&[b"proc"], "t")?;
        drop(sys::create_file_at(proc.as_fd(), b"kcore", 0o444)?);
        drop(sys::create_file_at(proc.as_fd(), b"sysrq-trigger", 0o200)?);
        Ok(())
    })
    .unwrap();
    let root = s.path.join("root");
    let (proc, null) = (root.join("proc"), root.join("dev/null"));
    let mounts = calls.mounts();
    let at = mounts
        .iter()
        .position(|c| matches!(c, Call::Mount { fstype: Some(t), .. } if t == "proc"))
        .unwrap();
    let hidden = proc_hidden();
    let ro_again = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | hidden;
    let rec_bind = MsFlags::MS_BIND | MsFlags::MS_REC;
    let want = [
        // PROC_MASKED, in its order: kcore (a file), scsi (a directory).
        mount(
            Some(&null),
            &proc.join("kcore"),
            None,
            MsFlags::MS_BIND,
            None,
        ),
        mount(
            Some(Path::new("tmpfs")),
            &proc.join("scsi"),
            Some("tmpfs"),
            hidden | MsFlags::MS_RDONLY,
            Some("size=4k,mode=0555"),
        ),
        // PROC_READ_ONLY: bound onto themselves, then remounted read-only.
        mount(
            Some(&proc.join("sys")),
            &proc.join("sys"),
            None,
            rec_bind,
            None,
        ),
        mount(None, &proc.join("sys"), None, ro_again, None),
        mount(
            Some(&proc.join("sysrq-trigger")),
            &proc.join("sysrq-trigger"),
            None,
            rec_bind,
            None,
        ),
        mount(None, &proc.join("sysrq-trigger"), None, ro_again, None),
    ];
    assert_eq!(mounts[at + 1..at + 1 + want.len()], want);
    // Then /tmp: nothing else of /proc (the other entries are not there to mask).
    let next = &mounts[at + 1 + want.len()];
    let tmp = root.join("tmp");
    assert!(matches!(next, Call::Mount { target, .. } if target == &tmp));
}

#[test]
fn a_failing_mount_stops_the_sequence_with_the_typed_error() {
    let s = scratch();
    let calls = RecordingSyscalls::failing(
        |c| matches!(c, Call::Mount { fstype: Some(t), .. } if t == "proc"),
        Errno::EPERM,
    );
    let err = build(&calls, &s.path, false, false, &mut |_| Ok(())).unwrap_err();
    let SetupError::Sys(e) = &err else {
        panic!("not a system call error: {err:?}");
    };
    assert_eq!((e.call, e.errno), ("mount", Errno::EPERM));
    // The parent reads the whole chain: the call, then the kernel's answer.
    let text = error_chain(&err);
    assert!(text.starts_with("mount("), "{text}");
    assert!(text.ends_with(": EPERM: Operation not permitted"), "{text}");
    // Nothing after the failed mount.
    let recorded = calls.calls();
    assert!(matches!(recorded.last(), Some(Call::Mount { fstype: Some(t), .. }) if t == "proc"));
    assert!(!recorded.iter().any(|c| matches!(c, Call::Sethostname(_))));
}

#[test]
fn an_image_with_a_rootfs_gets_dev_proc_tmp_and_run_there() {
    let s = scratch();
    let calls = RecordingSyscalls::new();
    let built = build(&calls, &s.path, false, false, &mut |u| {
        u.ensure_dir(&[b"rootfs"], "t")?;
        Ok(())
    })
    .unwrap();
    assert!(built.has_rootfs());
    let root = s.path.join("root");
    let mut want = prologue(&s.path);
    want.push(mount(Some(&root), &root, None, MsFlags::MS_BIND, None));
    want.extend(dev_proc_tmp_run(&root.join("rootfs"), false));
    assert_eq!(calls.calls(), want);
    // The bootstrap tree has no /dev or /proc of its own.
    assert!(!root.join("dev").exists() && !root.join("proc").exists());
}

#[test]
fn a_supervised_enclave_gets_nsm_and_vsock_nodes_too() {
    let s = scratch();
    let calls = RecordingSyscalls::new();
    build(&calls, &s.path, true, true, &mut |_| Ok(())).unwrap();
    let nodes: Vec<(String, u32, u32)> = calls
        .calls()
        .into_iter()
        .filter_map(|c| match c {
            Call::MknodChar {
                path, major, minor, ..
            } => Some((
                path.file_name().unwrap().to_string_lossy().into_owned(),
                major,
                minor,
            )),
            _ => None,
        })
        .collect();
    let names: Vec<&str> = nodes.iter().map(|(n, ..)| n.as_str()).collect();
    assert_eq!(
        names,
        ["null", "zero", "full", "random", "urandom", "tty", "nsm", "vsock"]
    );
    // Both are the null device: the supervisor answers their ioctls.
    assert!(nodes[6..].iter().all(|(_, ma, mi)| (*ma, *mi) == (1, 3)));
}

#[test]
fn entering_the_root_mounts_sys_binds_the_vsock_socket_and_pivots() {
    let s = scratch();
    let calls = RecordingSyscalls::new();
    let built = build(&calls, &s.path, false, false, &mut |u| {
        // A sysfs with firmware to hide (powercap is not there).
        u.ensure_dir(&[b"sys", b"firmware"], "t")?;
        Ok(())
    })
    .unwrap();
    let before = calls.calls().len();
    let socket = s.path.join("enclave.sock");
    setup::enter_root(&calls, built, None, &socket).unwrap();
    let root = s.path.join("root");
    let ro = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC | MsFlags::MS_RDONLY;
    let want = vec![
        Call::Unshare(sys::ns::CGROUP),
        // No namespace made ahead: the clone made one, whose loopback is brought up here.
        Call::LoopbackUp,
        mount(
            Some(Path::new("sysfs")),
            &root.join("sys"),
            Some("sysfs"),
            ro,
            None,
        ),
        mount(
            Some(Path::new("tmpfs")),
            &root.join("sys/firmware"),
            Some("tmpfs"),
            ro,
            Some("size=4k,mode=0555"),
        ),
        mount(
            Some(&socket),
            &root.join("dev/vsock.sock"),
            None,
            MsFlags::MS_BIND,
            None,
        ),
        Call::Chdir(root.clone()),
        Call::PivotRoot(".".into(), ".".into()),
        Call::UmountDetach(".".into()),
        Call::Chdir("/".into()),
    ];
    assert_eq!(calls.calls()[before..], want);
    // The socket's mount point is a file made for it.
    assert!(root.join("dev/vsock.sock").is_file());
}

#[test]
fn entering_rootfs_pivots_again_into_it() {
    let calls = RecordingSyscalls::new();
    setup::enter_rootfs(&calls).unwrap();
    let rootfs = Path::new("/rootfs");
    assert_eq!(
        calls.calls(),
        [
            mount(
                Some(rootfs),
                rootfs,
                None,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None
            ),
            Call::Chdir(rootfs.into()),
            Call::PivotRoot(".".into(), ".".into()),
            Call::UmountDetach(".".into()),
            Call::Chdir("/".into()),
        ]
    );
}

#[test]
fn the_id_maps_map_root_to_the_enclave_uid_after_setgroups_is_denied() {
    let calls = RecordingSyscalls::new();
    setup::map_ids(&calls, 1_000_000_004, 1_000_000_005).unwrap();
    assert_eq!(
        calls.calls(),
        [
            Call::BecomeUser(1_000_000_004, 1_000_000_005),
            Call::Unshare(sys::ns::USER),
            Call::SetDumpable,
            Call::WriteFile("/proc/self/setgroups".into(), "deny".into()),
            Call::WriteFile("/proc/self/uid_map".into(), "0 1000000004 1\n".into()),
            Call::WriteFile("/proc/self/gid_map".into(), "0 1000000005 1\n".into()),
        ]
    );
}

#[test]
fn a_map_that_cannot_be_written_names_the_file_and_stops() {
    let calls = RecordingSyscalls::failing(
        |c| matches!(c, Call::WriteFile(p, _) if p.ends_with("uid_map")),
        Errno::EPERM,
    );
    let err = setup::map_ids(&calls, 7, 8).unwrap_err();
    assert!(matches!(
        err,
        SetupError::Write {
            file: "/proc/self/uid_map",
            ..
        }
    ));
    assert_eq!(
        error_chain(&err),
        format!(
            "write /proc/self/uid_map: {}",
            std::io::Error::from_raw_os_error(libc::EPERM)
        )
    );
    assert!(!calls
        .calls()
        .iter()
        .any(|c| matches!(c, Call::WriteFile(p, _) if p.ends_with("gid_map"))));
}

#[test]
fn setup_errors_read_as_before() {
    assert_eq!(error_chain(&SetupError::NoInit), "no init to run");
    let e = SetupError::DevNull(std::io::Error::from_raw_os_error(libc::ENOENT));
    assert_eq!(
        error_chain(&e),
        format!(
            "open /dev/null: {}",
            std::io::Error::from_raw_os_error(libc::ENOENT)
        )
    );
    let sys = sys::SysError::new("sethostname", "enc", Errno::EPERM);
    assert_eq!(
        error_chain(&SetupError::from(sys)),
        "sethostname(enc) failed: EPERM: Operation not permitted"
    );
}
