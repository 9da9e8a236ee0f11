//! The `process` isolation backend: an enclave is a process tree in fresh namespaces.
//!
//! [`ProcessBackend::create`] looks up the unpacked root of the image the monitor opened and
//! measured ([`crate::imagecache`]; the image is read only through that open file,
//! [`LaunchSpec::image`], never its path) and an
//! idmapping user namespace for the enclave's host uid, clones a child into new mount, PID,
//! IPC and UTS namespaces and a network namespace (the one the monitor had made meanwhile,
//! [`crate::sys::NetnsHelper`], which the child enters first; else a new one at the clone),
//! and then, while the child builds the enclave's root, makes
//! the enclave's cgroup (cpuset = its CPUs, memory cap with swap off, pids limit; on v2 it moves
//! the child in). The monitor lets the child go ([`Pending::release`]) as soon as that is done
//! and starts the vsock broker while the child finishes and execs init: the broker's enclave
//! socket was bound before the clone, so init's first connection waits in its backlog at worst
//! ([`Pending::start`] then waits for the exec). The child, still host root inside its private
//! namespaces:
//! 1. makes every mount private, and lowers its OOM score adjustment to
//!    [`INIT_OOM_SCORE_ADJ`] (only host root may lower it; init inherits it, so the OOM killer
//!    of the enclave's memory cgroup takes the enclave's other processes before its PID 1);
//! 2. mounts a scratch tmpfs (size = the enclave's memory) on the run directory's `root/` and
//!    builds the enclave's root on it: an overlay whose lower layer is the image's unpacked
//!    root from [`crate::imagecache::unpacked_root`] (unpacked once per image version, mounted
//!    read-only and idmapped so that its root-owned files belong to the enclave's host uid, as
//!    copied files did) and whose upper and work directories are on the scratch tmpfs, so
//!    writes are capped by the enclave's memory and vanish with it. Where the cache or the
//!    overlay is unavailable (an old kernel, a run directory on a file system without idmapped
//!    mounts) every ramdisk is copied into the tmpfs instead ([`crate::rootfs`]);
//! 3. builds `/dev` (a small tmpfs with null, zero, full, random, urandom and tty made by
//!    `mknod`; with the supervisor, also `nsm` and `vsock`, see [`SUPERVISED_DEV_NODES`]) and
//!    a fresh `/proc` in the application's root: `rootfs/` when the image has one
//!    (with a tmpfs `rootfs/tmp`), else the whole tree. `/proc` is masked as container
//!    runtimes do: `/dev/null` over the files of [`PROC_MASKED`] (kcore, keys, kallsyms, ...),
//!    an empty read-only tmpfs over its directories, and [`PROC_READ_ONLY`] (sys,
//!    sysrq-trigger, ...) bound read-only. Mount targets are opened with `O_PATH|O_NOFOLLOW`
//!    under the root and mounted through `/proc/self/fd/N`, so a symlink in the image cannot
//!    redirect a mount to the host;
//! 4. sets the hostname to the enclave id and brings `lo` up (the only interface there is;
//!    already up in a namespace made ahead);
//!    waits for the go, enters the enclave's cgroup (on v1 it moves itself in: a thread moving
//!    itself avoids the kernel's global lock and its RCU grace period, see
//!    [`EnclaveCgroup::join_self`]), then a new cgroup namespace rooted there, and binds the
//!    broker's socket as `dev/vsock.sock` of the application's root;
//! 5. `pivot_root`s into the root and detaches the old one (the scratch tmpfs's other
//!    directories and the lower layer's mount go with it); opens `/init` (`O_PATH`), `/cmd` and
//!    `/env` there, so that symlinks resolve inside the enclave; then, when the image has a
//!    `rootfs/`, bind-mounts it onto itself and `pivot_root`s again into it, so that the
//!    application's root is the root of the mount namespace and the bootstrap tree is out of
//!    reach (this is the chroot Cloister's init used to do itself);
//! 6. becomes the enclave's host uid/gid (one of its own, from the allocator), unshares a user
//!    namespace and maps uid/gid 0 inside to it (so root in the enclave is an unprivileged,
//!    per-enclave host uid, and the mount and network namespaces stay owned by the host's user
//!    namespace: nothing inside can mount or configure interfaces);
//! 7. confines itself ([`cloister_confine`]): drops every capability (bounding set first, so
//!    that no exec can give root in the enclave's user namespace any back; then ambient,
//!    inheritable, effective and permitted) and sets no_new_privs; sets the parent-death
//!    signal (SIGKILL; after the credential changes, which clear it); marks every descriptor
//!    but stdio and the `/cmd` and `/env` descriptors close-on-exec; installs the seccomp
//!    filter last; and execs the `/init` descriptor (`execveat`, allowed by the filter) with
//!    the environment `CLOISTER_ISOLATION=process` and the numbers of those two descriptors
//!    ([`cloister_confine::CMD_FD_ENV`], [`cloister_confine::ENV_FD_ENV`]). stdin is
//!    `/dev/null`; stdout and stderr are the console pipe. Unless
//!    [`cloister_supervisor::SUPERVISOR_ENV`] is `off`, the notification filter
//!    ([`cloister_confine::notify`]) goes on first, and its listener to the monitor over a
//!    socket pair made before the clone; the allowlist is then
//!    [`seccomp::build_supervised`], which leaves `socket(AF_VSOCK)` to that filter. The
//!    monitor's supervisor ([`cloister_supervisor`]) answers the enclave's `AF_VSOCK` calls
//!    through the enclave's own broker and `/dev/nsm`'s ioctl with the enclave's own NSM.
//!
//! The host, not the image, confines the enclave: the filter, the empty capability sets and
//! no_new_privs hold from the first instruction of whatever the image's `/init` is (Cloister's
//! init, AWS's, or a hostile program), and bind everything it starts. Cloister's init needs no
//! privilege for its part: it sees that it is confined, sends the heartbeat, reads the command
//! and its environment from the inherited descriptors (closing them), and forks, execs and
//! reaps the command; it raises the command's OOM score back to 0 (raising needs no
//! privilege). A foreign init that expects the bootstrap tree (`/cmd`, `/rootfs`) or mounts
//! does not work in process mode; its children keep init's OOM score. The one foreign init
//! Cloister knows, AWS's in an image built by nitro-cli, is not run at all: the monitor opens
//! Cloister's own init and the child execs that instead ([`crate::initswap`],
//! [`LaunchSpec::replacement_init`]).
//!
//! Setup errors travel back through a close-on-exec pipe: EOF with no bytes means `/init` runs.
//! A created enclave that is dropped before it is started (the monitor failed in between, e.g.
//! the broker did not start) kills and reaps its child and removes its cgroup.

use crate::backend::{Backend, BackendError, Isolation, LaunchSpec, Pending, Running};
use crate::cgroup::{EnclaveCgroup, Layout, Limits};
use crate::imagecache::CachedRoot;
use crate::rootfs::Unpacker;
use crate::sys::{self, ExitStatus, Forked};
use cloister_confine::{caps, notify, seccomp, CMD_FD_ENV, ENV_FD_ENV};
use nix::mount::MsFlags;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

/// First host uid (and gid) used for enclave roots.
pub const UID_BASE: u32 = 1_000_000_000;
/// Number of enclave uids: every live enclave holds one of `UID_BASE..UID_BASE + UID_SPAN`
/// of its own, handed out by the allocator ([`crate::allocator::Allocation::host_id`]).
pub const UID_SPAN: u32 = 1_000_000_000;
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
/// Largest setup error message read back from the child.
const MAX_SETUP_ERROR: u64 = 4096;
/// Overlay options; the directories are relative to the scratch tmpfs (the child's cwd).
const OVERLAY_OPTIONS: &str = "lowerdir=lower,upperdir=upper,workdir=work";

/// The process isolation backend.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessBackend;

/// A cloned enclave child waiting for its go. Dropped without [`Pending::start`] (a failure
/// between clone and start), it kills the child, reaps it and removes the cgroup.
struct ProcessPending {
    parts: Option<PendingParts>,
}

struct PendingParts {
    pid: i32,
    /// The go pipe's write end; `None` once the go was sent (its end is then kept in
    /// `sent_go` until start, so the child can tell a dead monitor by the hang-up).
    go: Option<OwnedFd>,
    /// The go pipe after the go was sent, and the result of sending it.
    sent_go: Option<(OwnedFd, std::io::Result<()>)>,
    errors: OwnedFd,
    cgroup: EnclaveCgroup,
    image_root: Option<CachedRoot>,
    /// Where the child sends its seccomp notification listener (supervised enclaves).
    supervisor: Option<OwnedFd>,
}

/// The image's unpacked root and the user namespace its idmapped mount maps through.
struct RootSource {
    cached: CachedRoot,
    userns: OwnedFd,
}

/// Looks up (or creates) the image's unpacked root and the enclave's idmapping; `None` (the
/// child then copies the ramdisks) when either is unavailable. An image that changed since the
/// monitor opened and measured it is an error: nothing of it may boot.
fn root_source(spec: &LaunchSpec) -> Result<Option<RootSource>, BackendError> {
    let run = crate::state::RunDir::from_env();
    let cached = match crate::imagecache::unpacked_root(&run, &spec.image) {
        Ok(c) => c,
        Err(e @ crate::imagecache::RootCacheError::Changed(_)) => {
            return Err(BackendError::Image(e.to_string()));
        }
        Err(e) => {
            tracing::warn!(error = %error_chain(&e), "no cached image root; copying the ramdisks");
            return Ok(None);
        }
    };
    crate::boottrace::mark(if cached.created() {
        "monitor: image root unpacked into the cache"
    } else {
        "monitor: image root from the cache"
    });
    match sys::idmap_userns(spec.host_uid, spec.host_gid) {
        Ok(userns) => {
            crate::boottrace::mark("monitor: idmapping created");
            Ok(Some(RootSource { cached, userns }))
        }
        Err(e) => {
            tracing::warn!(error = %error_chain(&e), "no idmapping; copying the ramdisks");
            Ok(None)
        }
    }
}

impl Drop for ProcessPending {
    fn drop(&mut self) {
        if let Some(p) = self.parts.take() {
            let _ = sys::kill(p.pid, nix::sys::signal::Signal::SIGKILL);
            let _ = sys::wait_child(p.pid, false);
            drop((p.go, p.sent_go));
            if let Err(e) = p.cgroup.remove() {
                tracing::warn!(error = %error_chain(&e), "cannot remove the enclave's cgroup");
            }
        }
    }
}

struct ProcessRunning {
    pid: i32,
    cgroup: EnclaveCgroup,
    status: Option<ExitStatus>,
    /// Keeps the image's unpacked root from being pruned while the enclave runs from it.
    _image_root: Option<CachedRoot>,
    /// The enclave's seccomp notification listener, until the monitor takes it.
    notify: Option<OwnedFd>,
}

impl Backend for ProcessBackend {
    fn isolation(&self) -> Isolation {
        Isolation::Process
    }

    fn create(
        &self,
        spec: &LaunchSpec,
        console: OwnedFd,
    ) -> Result<Box<dyn Pending>, BackendError> {
        let cgroup = EnclaveCgroup::new(Layout::detect()?, &spec.enclave_id);
        let source = root_source(spec)?;
        let (go_r, go_w) = sys::pipe()?;
        let (err_r, err_w) = sys::pipe()?;
        // A supervised enclave's child sends its notification listener over this pair.
        let (sup_parent, sup_child) = if cloister_supervisor::enabled() {
            let (a, b) = nix::sys::socket::socketpair(
                nix::sys::socket::AddressFamily::Unix,
                nix::sys::socket::SockType::Stream,
                None,
                nix::sys::socket::SockFlag::SOCK_CLOEXEC,
            )
            .map_err(|e| BackendError::Setup(format!("socketpair: {e}")))?;
            (Some(a), Some(b))
        } else {
            (None, None)
        };
        let mut flags = sys::ns::MOUNT | sys::ns::PID | sys::ns::IPC | sys::ns::UTS;
        if spec.netns.is_none() {
            flags |= sys::ns::NET;
        }
        // SAFETY: the monitor calls `create` before it starts any thread (see monitor.rs), so
        // the child may allocate and run ordinary Rust code; it never returns (exit_now).
        let forked = unsafe { sys::clone_process(flags) }?;
        let pid = match forked {
            Forked::Child => {
                drop(go_w);
                drop(err_r);
                drop(sup_parent);
                let join = cgroup.can_join_self().then_some(&cgroup);
                let code = match child(
                    spec,
                    source.as_ref(),
                    join,
                    &go_r,
                    &console,
                    sup_child.as_ref(),
                ) {
                    Ok(never) => match never {},
                    Err(msg) => {
                        let mut f = std::fs::File::from(err_w);
                        let _ = f.write_all(msg.as_bytes());
                        1
                    }
                };
                sys::exit_now(code)
            }
            Forked::Parent(pid) => pid,
        };
        drop(go_r);
        drop(err_w);
        drop(sup_child);
        drop(console);
        crate::boottrace::mark("monitor: enclave cloned");
        // From here on, dropping `pending` kills and reaps the child and removes the cgroup.
        let pending = ProcessPending {
            parts: Some(PendingParts {
                pid,
                go: Some(go_w),
                sent_go: None,
                errors: err_r,
                cgroup,
                image_root: source.map(|s| s.cached),
                supervisor: sup_parent,
            }),
        };
        // The cgroup is made while the child builds its root: the child enters it only after
        // the go (on v1 by itself; on v2 it is moved in now).
        if let Some(parts) = &pending.parts {
            parts.cgroup.create(&Limits {
                cpus: spec.cpus.clone(),
                memory_bytes: spec.memory_mib.saturating_mul(1024 * 1024),
                pids_max: spec.pids_max,
            })?;
            if !parts.cgroup.can_join_self() {
                parts.cgroup.add(pid)?;
            }
        }
        crate::boottrace::mark("monitor: cgroup created");
        Ok(Box::new(pending))
    }
}

impl Pending for ProcessPending {
    fn pid(&self) -> i32 {
        self.parts.as_ref().map_or(0, |p| p.pid)
    }

    fn release(&mut self) -> Result<(), BackendError> {
        let Some(parts) = self.parts.as_mut() else {
            return Err(BackendError::Setup(
                "the enclave was already started".into(),
            ));
        };
        if let Some(go) = parts.go.take() {
            crate::boottrace::mark("monitor: go sent");
            // A child that failed before the go has exited: the write fails (EPIPE), and its
            // message is waiting on the error pipe for `start` to report.
            let sent = nix::unistd::write(&go, b"g")
                .map(drop)
                .map_err(std::io::Error::from);
            parts.sent_go = Some((go, sent));
        }
        Ok(())
    }

    fn start(mut self: Box<Self>) -> Result<Box<dyn Running>, BackendError> {
        self.release()?;
        let Some(PendingParts {
            pid,
            go: _,
            sent_go,
            errors,
            cgroup,
            image_root,
            supervisor,
        }) = self.parts.take()
        else {
            return Err(BackendError::Setup(
                "the enclave was already started".into(),
            ));
        };
        let mut running = ProcessRunning {
            pid,
            cgroup,
            status: None,
            _image_root: image_root,
            notify: None,
        };
        let mut msg = String::new();
        let _ = std::fs::File::from(errors)
            .take(MAX_SETUP_ERROR)
            .read_to_string(&mut msg);
        if msg.is_empty() {
            if let Some((_, Err(e))) = &sent_go {
                msg = format!("cannot signal the enclave: {e}");
            }
        }
        drop(sent_go);
        if !msg.is_empty() {
            let _ = running.kill();
            let _ = running.cleanup();
            return Err(BackendError::Setup(msg));
        }
        // Init runs: the child sent its listener before it execed.
        if let Some(chan) = supervisor {
            match cloister_supervisor::recv_listener(chan.as_fd()) {
                Ok(Some(fd)) => running.notify = Some(fd),
                Ok(None) => {
                    let _ = running.kill();
                    let _ = running.cleanup();
                    return Err(BackendError::Setup(
                        "the enclave sent no seccomp notification listener".into(),
                    ));
                }
                Err(e) => {
                    let _ = running.kill();
                    let _ = running.cleanup();
                    return Err(BackendError::Setup(format!(
                        "receiving the enclave's seccomp notification listener: {e}"
                    )));
                }
            }
        }
        Ok(Box::new(running))
    }
}

impl Running for ProcessRunning {
    fn pid(&self) -> i32 {
        self.pid
    }

    fn try_wait(&mut self) -> Result<Option<ExitStatus>, BackendError> {
        if self.status.is_none() {
            self.status = sys::wait_child(self.pid, true)?;
        }
        Ok(self.status)
    }

    fn kill(&mut self) -> Result<ExitStatus, BackendError> {
        if let Some(s) = self.status {
            return Ok(s);
        }
        // Killing PID 1 of the namespace takes every process of the enclave with it.
        let _ = sys::kill(self.pid, nix::sys::signal::Signal::SIGKILL);
        let status = sys::wait_child(self.pid, false)?.unwrap_or(ExitStatus::Signaled(9));
        self.status = Some(status);
        Ok(status)
    }

    fn cleanup(&mut self) -> Result<(), BackendError> {
        Ok(self.cgroup.remove()?)
    }

    fn oom_kills(&self) -> u64 {
        self.cgroup.oom_kills()
    }

    fn leftovers(&self) -> Vec<PathBuf> {
        self.cgroup.dirs().to_vec()
    }

    fn take_notify_listener(&mut self) -> Option<OwnedFd> {
        self.notify.take()
    }
}

/// Waits for the monitor's go; exits quietly if the monitor went away instead.
fn wait_for_go(go: &OwnedFd) {
    let mut byte = [0u8; 1];
    match nix::unistd::read(std::os::fd::AsRawFd::as_raw_fd(go), &mut byte) {
        Ok(1) => crate::boottrace::mark("child: go"),
        _ => sys::exit_now(1),
    }
}

/// What the child does; returns only on error (as a message for the parent).
///
/// It builds its root while the monitor makes its cgroup, and waits for the go (the cgroup
/// exists, and on v2 holds it) before it enters the cgroup: with `join` (v1) it moves itself
/// in then.
fn child(
    spec: &LaunchSpec,
    source: Option<&RootSource>,
    join: Option<&EnclaveCgroup>,
    go: &OwnedFd,
    console: &OwnedFd,
    supervisor: Option<&OwnedFd>,
) -> Result<std::convert::Infallible, String> {
    sys::mount(
        None,
        Path::new("/"),
        None,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None,
    )
    .map_err(s)?;
    // Shield init from the OOM killer: lowering a score needs CAP_SYS_RESOURCE in the host's
    // user namespace, which this child has only until it becomes the enclave's user (and
    // only where the runtime's root has it: not in every container).
    if let Err(e) = std::fs::write(OOM_SCORE_ADJ_PATH, INIT_OOM_SCORE_ADJ.to_string()) {
        tracing::warn!(error = %e, "cannot shield the enclave's init from the OOM killer");
    }
    let (uid, gid) = (spec.host_uid, spec.host_gid);
    let nosuid_nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    let scratch_path = &spec.root_mount;
    sys::mount(
        Some(Path::new("tmpfs")),
        scratch_path,
        Some("tmpfs"),
        nosuid_nodev,
        Some(&format!("size={}m,mode=0700", spec.memory_mib)),
    )
    .map_err(s)?;
    let scratch = sys::open_dir(scratch_path).map_err(s)?;
    sys::mkdir_at(scratch.as_fd(), b"root", 0o755).map_err(s)?;
    let root_path = scratch_path.join("root");
    sys::lchown_at(scratch.as_fd(), Path::new("root"), uid, gid).map_err(s)?;
    crate::boottrace::mark("child: scratch tmpfs mounted");
    let overlaid = match source {
        Some(src) => match mount_overlay(scratch_path, &scratch, src, uid, gid) {
            Ok(()) => true,
            Err(e) => {
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
        sys::mount(Some(&root_path), &root_path, None, MsFlags::MS_BIND, None).map_err(s)?;
        let mut copier = Unpacker::new(sys::open_dir(&root_path).map_err(s)?, uid, gid);
        fill_root(spec, &mut copier)?;
        crate::boottrace::mark("child: ramdisks copied");
    }
    drop(scratch);
    let mut unpacker = Unpacker::new(sys::open_dir(&root_path).map_err(s)?, uid, gid);
    // The enclave runs in the image's `rootfs/` when it has one (the bootstrap's files stay
    // behind, see `enter_rootfs`), else in the whole tree: /dev and /proc go there only.
    let has_rootfs =
        sys::kind_at(unpacker.root(), b"rootfs").map_err(s)? == Some(sys::NodeKind::Dir);
    let (dev_dir, proc_dir): (&[&[u8]], &[&[u8]]) = if has_rootfs {
        (&[b"rootfs", b"dev"], &[b"rootfs", b"proc"])
    } else {
        (&[b"dev"], &[b"proc"])
    };
    populate_dev(&mut unpacker, dev_dir, spec, supervisor.is_some())?;
    mount_proc(&mut unpacker, proc_dir, dev_dir)?;
    crate::boottrace::mark("child: /dev and /proc done");
    // /tmp and /run: tmpfs (capped by the enclave's memory, as all of its writes are), made
    // when the image lacks them, as AWS's init mounts them.
    let app_root: &[&[u8]] = if has_rootfs { &[b"rootfs"] } else { &[] };
    for (name, mode) in [(&b"tmp"[..], "1777"), (b"run", "0755")] {
        let dir: Vec<&[u8]> = app_root.iter().copied().chain([name]).collect();
        let d = unpacker.ensure_dir(&dir, "tmp or run").map_err(s)?;
        let opts = format!("size={}m,mode={mode},uid={uid},gid={gid}", spec.memory_mib);
        sys::mount(
            Some(Path::new("tmpfs")),
            &sys::fd_path(d.as_fd()),
            Some("tmpfs"),
            nosuid_nodev,
            Some(&opts),
        )
        .map_err(s)?;
    }
    crate::boottrace::mark("child: /tmp, /run mounts done");
    sys::sethostname(&spec.enclave_id).map_err(s)?;
    crate::boottrace::mark("child: hostname, lo done");

    // The seccomp filters, compiled while the monitor makes the cgroup: with a supervisor,
    // the notification filter too, and an allowlist that leaves AF_VSOCK to it.
    let (filters, notify_filter) = match supervisor {
        Some(chan) => (
            seccomp::build_supervised().map_err(s)?,
            Some((notify::build().map_err(s)?, chan)),
        ),
        None => (seccomp::build().map_err(s)?, None),
    };
    wait_for_go(go);
    if let Some(cgroup) = join {
        cgroup.join_self().map_err(s)?;
        crate::boottrace::mark("child: joined its cgroup");
    }
    // Now in the enclave's cgroup: a cgroup namespace rooted there.
    sys::unshare(sys::ns::CGROUP).map_err(s)?;
    // The network namespace the monitor's helper made meanwhile (it had the whole setup to
    // do so); where that failed, one of its own.
    let entered = match spec.netns.map(sys::NetnsHandle::enter) {
        Some(Ok(())) => true,
        Some(Err(e)) => {
            tracing::warn!(error = %e, "no network namespace made ahead; making one");
            sys::unshare(sys::ns::NET).map_err(s)?;
            false
        }
        None => false,
    };
    if !entered {
        sys::loopback_up().map_err(s)?;
    }
    // /sys, now that the enclave's network namespace is entered (sysfs shows the mounter's).
    let sys_dir: Vec<&[u8]> = app_root.iter().copied().chain([&b"sys"[..]]).collect();
    mount_sys(&mut unpacker, &sys_dir)?;
    // The broker's socket was bound before the clone; the broker serves it once it starts.
    bind_node(&mut unpacker, dev_dir, &spec.enclave_socket, VSOCK_NODE)?;
    drop(unpacker);
    crate::boottrace::mark("child: vsock socket bound");
    sys::chdir(&root_path).map_err(s)?;
    sys::pivot_root(Path::new("."), Path::new(".")).map_err(s)?;
    sys::umount_detach(Path::new(".")).map_err(s)?;
    sys::chdir(Path::new("/")).map_err(s)?;
    crate::boottrace::mark("child: pivot_root done");
    // What init needs of the bootstrap tree, opened now that symlinks resolve in the enclave's
    // root: init itself (run by descriptor below) and the command and its environment.
    // Cloister's init when the monitor chose it in place of a foreign one
    // (`crate::initswap`: it opened it on the host), else the image's own.
    let image_init = match spec.replacement_init {
        Some(_) => None,
        None => Some(sys::open_exec(Path::new(INIT_PATH)).map_err(s)?),
    };
    let init = spec
        .replacement_init
        .as_deref()
        .or(image_init.as_ref())
        .ok_or("no init to run")?;
    let cmd = sys::open_regular(Path::new(CMD_PATH)).map_err(s)?;
    let env = sys::open_regular(Path::new(ENV_PATH)).map_err(s)?;
    if has_rootfs {
        enter_rootfs()?;
        crate::boottrace::mark("child: entered /rootfs");
    }

    let null = std::fs::File::open("/dev/null").map_err(|e| format!("open /dev/null: {e}"))?;
    sys::dup_onto(null.as_fd(), 0).map_err(s)?;
    sys::dup_onto(console.as_fd(), 1).map_err(s)?;
    sys::dup_onto(console.as_fd(), 2).map_err(s)?;

    sys::become_user(uid, gid).map_err(s)?;
    sys::unshare(sys::ns::USER).map_err(s)?;
    sys::set_dumpable().map_err(s)?;
    let write = |file: &str, text: String| {
        std::fs::write(file, text).map_err(|e| format!("write {file}: {e}"))
    };
    write("/proc/self/setgroups", "deny".into())?;
    write("/proc/self/uid_map", format!("0 {uid} 1\n"))?;
    write("/proc/self/gid_map", format!("0 {gid} 1\n"))?;

    // No capability left in any set (the bounding set included, so that exec cannot give
    // root in the enclave's user namespace any either), and no_new_privs.
    caps::drop_all().map_err(s)?;
    caps::set_no_new_privs().map_err(s)?;
    sys::reset_signals().map_err(s)?;
    sys::set_parent_death_kill().map_err(s)?;
    // The monitor keeps its end of `go` open until we exec: a hang-up means it died before the
    // death signal was armed.
    if sys::poll_readable(go.as_fd(), 0).map_err(s)? {
        sys::exit_now(1);
    }
    sys::cloexec_from(3).map_err(s)?;
    let mut init_env = vec!["CLOISTER_ISOLATION=process".to_owned()];
    for (var, fd) in [(CMD_FD_ENV, &cmd), (ENV_FD_ENV, &env)] {
        if let Some(fd) = fd {
            sys::clear_cloexec(fd.as_fd()).map_err(s)?;
            init_env.push(format!("{var}={}", std::os::fd::AsRawFd::as_raw_fd(fd)));
        }
    }
    let init_env: Vec<&str> = init_env.iter().map(String::as_str).collect();
    crate::boottrace::mark("child: exec /init");
    // Last: the filters. From here on every process of the enclave runs under them. The
    // notification filter goes first (the allowlist does not allow `seccomp`), and its
    // listener to the monitor, whose supervisor answers for the enclave's AF_VSOCK sockets
    // and `/dev/nsm`.
    if let Some((filter, chan)) = &notify_filter {
        let listener = notify::install(filter).map_err(s)?;
        cloister_supervisor::send_listener(chan.as_fd(), listener.as_fd()).map_err(s)?;
        drop(listener);
    }
    seccomp::install(&filters).map_err(s)?;
    Err(sys::exec_fd(init.as_fd(), &[INIT_PATH], &init_env).to_string())
}

fn s(e: impl std::error::Error) -> String {
    error_chain(&e)
}

/// An error and its causes, `: `-separated.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(cause) = src {
        msg.push_str(": ");
        msg.push_str(&cause.to_string());
        src = cause.source();
    }
    msg
}

/// Mounts the overlay on `<scratch>/root`: the cached tree, idmapped and read-only, as its
/// lower layer (attached at `<scratch>/lower` first), `<scratch>/upper` and `<scratch>/work`.
/// The upper directory's root is the enclave root's owner and mode.
fn mount_overlay(
    scratch_path: &Path,
    scratch: &OwnedFd,
    src: &RootSource,
    uid: u32,
    gid: u32,
) -> Result<(), String> {
    for dir in [&b"lower"[..], b"upper", b"work"] {
        sys::mkdir_at(scratch.as_fd(), dir, 0o700).map_err(s)?;
    }
    let upper = sys::open_dir_at(scratch.as_fd(), b"upper").map_err(s)?;
    sys::fchown(upper.as_fd(), uid, gid).map_err(s)?;
    sys::fchmod(upper.as_fd(), 0o755).map_err(s)?;
    let tree = sys::open_tree_clone(src.cached.tree()).map_err(s)?;
    use sys::mount_attr::{IDMAP, NODEV, NOSUID, RDONLY};
    sys::mount_setattr(
        tree.as_fd(),
        RDONLY | NOSUID | NODEV | IDMAP,
        Some(src.userns.as_fd()),
    )
    .map_err(s)?;
    sys::move_mount(tree.as_fd(), &scratch_path.join("lower")).map_err(s)?;
    sys::chdir(scratch_path).map_err(s)?;
    sys::mount(
        Some(Path::new("overlay")),
        Path::new("root"),
        Some("overlay"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(OVERLAY_OPTIONS),
    )
    .map_err(s)
}

/// Unpacks every ramdisk of the image, in order, from the monitor's open image (the measured
/// file), and fails if that file was written to meanwhile.
fn fill_root(spec: &LaunchSpec, unpacker: &mut Unpacker) -> Result<(), String> {
    let mut eif = spec.image.reader().map_err(s)?;
    for (n, index) in eif.ramdisks().into_iter().enumerate() {
        let reader = eif.section_reader(index).map_err(s)?;
        unpacker.unpack(n, reader).map_err(s)?;
    }
    spec.image.check_unchanged().map_err(s)
}

/// Mounts a small tmpfs on `<dir>` (owned by the enclave's root, `nosuid,noexec`) and makes
/// the [`DEV_NODES`] in it with `mknod`, mode 0666 and owned by the enclave's root, as a host's
/// `/dev` has them. The child is still host root in the host's user namespace here, so it may
/// make them; the enclave never can (its root is an unprivileged host uid without
/// `CAP_MKNOD`), so the tmpfs allows devices only for these nodes. Making nodes costs a few
/// microseconds each, where bind-mounting the host's took a mount per node.
fn populate_dev(
    unpacker: &mut Unpacker,
    dir: &[&[u8]],
    spec: &LaunchSpec,
    supervised: bool,
) -> Result<(), String> {
    let shown = "dev";
    let (uid, gid) = (spec.host_uid, spec.host_gid);
    let mount_point = unpacker.ensure_dir(dir, shown).map_err(s)?;
    sys::mount(
        Some(Path::new("tmpfs")),
        &sys::fd_path(mount_point.as_fd()),
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some(&format!("{DEV_TMPFS_OPTIONS},uid={uid},gid={gid}")),
    )
    .map_err(s)?;
    let dev = unpacker.ensure_dir(dir, shown).map_err(s)?;
    let supervised_nodes: &[(&str, u32, u32)] = if supervised {
        &SUPERVISED_DEV_NODES
    } else {
        &[]
    };
    for (name, major, minor) in DEV_NODES.iter().chain(supervised_nodes) {
        sys::mknod_char_at(dev.as_fd(), name.as_bytes(), *major, *minor, 0o666).map_err(s)?;
        sys::lchown_at(dev.as_fd(), Path::new(name), uid, gid).map_err(s)?;
    }
    Ok(())
}

/// Bind-mounts host path `source` as `<dir>/<name>` (a file created for it).
fn bind_node(
    unpacker: &mut Unpacker,
    dir: &[&[u8]],
    source: &Path,
    name: &str,
) -> Result<(), String> {
    let dev = unpacker.ensure_dir(dir, "dev").map_err(s)?;
    bind_at(&dev, source, name)
}

/// Bind-mounts `source` onto `name` in directory `dev`, replacing what is there (never through
/// a symlink: the target is opened `O_PATH|O_NOFOLLOW` and mounted via `/proc/self/fd`).
fn bind_at(dev: &OwnedFd, source: &Path, name: &str) -> Result<(), String> {
    match sys::kind_at(dev.as_fd(), name.as_bytes()).map_err(s)? {
        None | Some(sys::NodeKind::File) => {}
        Some(_) => {
            sys::unlink_at(dev.as_fd(), name.as_bytes(), false).map_err(s)?;
        }
    }
    drop(sys::create_file_at(dev.as_fd(), name.as_bytes(), 0o666).map_err(s)?);
    let target = sys::open_path_nofollow(dev.as_fd(), name.as_bytes()).map_err(s)?;
    sys::mount(
        Some(source),
        &sys::fd_path(target.as_fd()),
        None,
        MsFlags::MS_BIND,
        None,
    )
    .map_err(s)
}

/// The image's init, in the bootstrap tree.
const INIT_PATH: &str = "/init";
/// The image's command, in the bootstrap tree.
const CMD_PATH: &str = "/cmd";
/// The image's environment, in the bootstrap tree.
const ENV_PATH: &str = "/env";
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

/// Mounts a fresh proc (of the new PID namespace) on `dir` and masks it ([`PROC_MASKED`],
/// [`PROC_READ_ONLY`]) with the `null` node of `dev_dir` ([`populate_dev`] made it). The mounts
/// belong to the host's user namespace, so nothing in the enclave can remove them.
fn mount_proc(unpacker: &mut Unpacker, dir: &[&[u8]], dev_dir: &[&[u8]]) -> Result<(), String> {
    let hidden = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let d = unpacker.ensure_dir(dir, "proc").map_err(s)?;
    sys::mount(
        Some(Path::new("proc")),
        &sys::fd_path(d.as_fd()),
        Some("proc"),
        hidden,
        None,
    )
    .map_err(s)?;
    // Opened again: the proc just mounted, not the directory beneath it.
    let proc = unpacker.ensure_dir(dir, "proc").map_err(s)?;
    let dev = unpacker.ensure_dir(dev_dir, "dev").map_err(s)?;
    let null = sys::open_path_nofollow(dev.as_fd(), b"null").map_err(s)?;
    for name in PROC_MASKED {
        let Some(kind) = sys::kind_at(proc.as_fd(), name.as_bytes()).map_err(s)? else {
            continue;
        };
        let target = sys::open_path_nofollow(proc.as_fd(), name.as_bytes()).map_err(s)?;
        if kind == sys::NodeKind::Dir {
            sys::mount(
                Some(Path::new("tmpfs")),
                &sys::fd_path(target.as_fd()),
                Some("tmpfs"),
                hidden | MsFlags::MS_RDONLY,
                Some("size=4k,mode=0555"),
            )
        } else {
            sys::mount(
                Some(&sys::fd_path(null.as_fd())),
                &sys::fd_path(target.as_fd()),
                None,
                MsFlags::MS_BIND,
                None,
            )
        }
        .map_err(s)?;
    }
    for name in PROC_READ_ONLY {
        if sys::kind_at(proc.as_fd(), name.as_bytes())
            .map_err(s)?
            .is_none()
        {
            continue;
        }
        let target = sys::open_path_nofollow(proc.as_fd(), name.as_bytes()).map_err(s)?;
        let path = sys::fd_path(target.as_fd());
        sys::mount(
            Some(&path),
            &path,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
        )
        .map_err(s)?;
        // The remount must reach the bind mount, not the proc beneath: open the name again.
        let bound = sys::open_path_nofollow(proc.as_fd(), name.as_bytes()).map_err(s)?;
        sys::mount(
            None,
            &sys::fd_path(bound.as_fd()),
            None,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | hidden,
            None,
        )
        .map_err(s)?;
    }
    Ok(())
}

/// `/sys` directories that show the host's firmware (ACPI tables, DMI, EFI variables) and its
/// energy counters (powercap/RAPL, a side channel), masked by an empty read-only tmpfs as
/// container runtimes mask them.
pub const SYS_MASKED: [&str; 2] = ["firmware", "devices/virtual/powercap"];

/// Mounts sysfs read-only on `<dir>`: the sysfs of the enclave's network namespace (the
/// caller has entered it), so `class/net` holds only `lo`; [`SYS_MASKED`] hidden. The rest
/// (devices, kernel, module parameters) is the host's, readable as by any unprivileged user:
/// the enclave's root is one on the host, and the mount is read-only.
fn mount_sys(unpacker: &mut Unpacker, dir: &[&[u8]]) -> Result<(), String> {
    let hidden = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC | MsFlags::MS_RDONLY;
    let d = unpacker.ensure_dir(dir, "sys").map_err(s)?;
    sys::mount(
        Some(Path::new("sysfs")),
        &sys::fd_path(d.as_fd()),
        Some("sysfs"),
        hidden,
        None,
    )
    .map_err(s)?;
    // Opened again: the sysfs just mounted, not the directory beneath it.
    let sysfs = unpacker.ensure_dir(dir, "sys").map_err(s)?;
    for name in SYS_MASKED {
        let mut at = sysfs.try_clone().map_err(|e| format!("sys: {e}"))?;
        let mut parts = name.split('/').peekable();
        while let Some(part) = parts.next() {
            if sys::kind_at(at.as_fd(), part.as_bytes()).map_err(s)? != Some(sys::NodeKind::Dir) {
                break;
            }
            let next = sys::open_path_nofollow(at.as_fd(), part.as_bytes()).map_err(s)?;
            if parts.peek().is_none() {
                sys::mount(
                    Some(Path::new("tmpfs")),
                    &sys::fd_path(next.as_fd()),
                    Some("tmpfs"),
                    hidden,
                    Some("size=4k,mode=0555"),
                )
                .map_err(s)?;
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
fn enter_rootfs() -> Result<(), String> {
    let rootfs = Path::new(ROOTFS_PATH);
    // pivot_root needs a mount point.
    sys::mount(
        Some(rootfs),
        rootfs,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
    )
    .map_err(s)?;
    sys::chdir(rootfs).map_err(s)?;
    sys::pivot_root(Path::new("."), Path::new(".")).map_err(s)?;
    sys::umount_detach(Path::new(".")).map_err(s)?;
    sys::chdir(Path::new("/")).map_err(s)
}
