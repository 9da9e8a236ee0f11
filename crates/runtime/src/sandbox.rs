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
//! Steps 1 to 6 (the mounts, `pivot_root`s and id maps) are the `setup` module's, written
//! against [`crate::sys::Syscalls`]: the child runs them on [`crate::sys::LinuxSyscalls`], and
//! unit tests run them on a recorder, which checks their order, targets and flags without root.
//!
//! Setup errors ([`SetupError`]) travel back as text through a close-on-exec pipe: EOF with no
//! bytes means `/init` runs.
//! A created enclave that is dropped before it is started (the monitor failed in between, e.g.
//! the broker did not start) kills and reaps its child and removes its cgroup.

use crate::backend::{Backend, BackendError, Isolation, LaunchSpec, Pending, Running};
use crate::cgroup::{EnclaveCgroup, Layout, Limits};
use crate::imagecache::CachedRoot;
use crate::rootfs::Unpacker;
use crate::sys::{self, ExitStatus, Forked, LinuxSyscalls};
use cloister_confine::{caps, notify, seccomp, CMD_FD_ENV, ENV_FD_ENV};
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

mod error;
mod setup;
#[cfg(test)]
mod tests;

pub(crate) use error::error_chain;
pub use error::SetupError;
pub use setup::{
    DEV_NODES, INIT_OOM_SCORE_ADJ, PROC_MASKED, PROC_READ_ONLY, SUPERVISED_DEV_NODES, SYS_MASKED,
    VSOCK_NODE,
};

/// First host uid (and gid) used for enclave roots, and how many there are (the allocator
/// hands them out).
pub use crate::allocator::{UID_BASE, UID_SPAN};
/// Largest setup error message read back from the child.
const MAX_SETUP_ERROR: u64 = 4096;

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

    fn needs_netns(&self) -> bool {
        true
    }

    fn replaces_init(&self) -> bool {
        true
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
                        let _ = f.write_all(error_chain(&msg).as_bytes());
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

/// What the child does; returns only on error (sent to the parent as its text).
///
/// It builds its root while the monitor makes its cgroup, and waits for the go (the cgroup
/// exists, and on v2 holds it) before it enters the cgroup: with `join` (v1) it moves itself
/// in then. The mounts, `pivot_root`s and id maps are [`setup`]'s, run on the real system
/// calls here.
fn child(
    spec: &LaunchSpec,
    source: Option<&RootSource>,
    join: Option<&EnclaveCgroup>,
    go: &OwnedFd,
    console: &OwnedFd,
    supervisor: Option<&OwnedFd>,
) -> Result<std::convert::Infallible, SetupError> {
    let calls = &LinuxSyscalls;
    let (uid, gid) = (spec.host_uid, spec.host_gid);
    let params = setup::RootParams {
        scratch: &spec.root_mount,
        memory_mib: spec.memory_mib,
        uid,
        gid,
        hostname: &spec.enclave_id,
        supervised: supervisor.is_some(),
    };
    let image = source.map(|src| setup::ImageTree {
        tree: src.cached.tree(),
        userns: src.userns.as_fd(),
    });
    let root = setup::build_root(calls, &params, image, &mut |u| fill_root(spec, u))?;
    let has_rootfs = root.has_rootfs();

    // The seccomp filters, compiled while the monitor makes the cgroup: with a supervisor,
    // the notification filter too, and an allowlist that leaves AF_VSOCK to it.
    let (filters, notify_filter) = match supervisor {
        Some(chan) => (seccomp::build_supervised()?, Some((notify::build()?, chan))),
        None => (seccomp::build()?, None),
    };
    wait_for_go(go);
    if let Some(cgroup) = join {
        cgroup.join_self()?;
        crate::boottrace::mark("child: joined its cgroup");
    }
    setup::enter_root(calls, root, spec.netns, &spec.enclave_socket)?;
    // What init needs of the bootstrap tree, opened now that symlinks resolve in the enclave's
    // root: init itself (run by descriptor below) and the command and its environment.
    // Cloister's init when the monitor chose it in place of a foreign one
    // (`crate::initswap`: it opened it on the host), else the image's own.
    let image_init = match spec.replacement_init {
        Some(_) => None,
        None => Some(sys::open_exec(Path::new(INIT_PATH))?),
    };
    let init = spec
        .replacement_init
        .as_deref()
        .or(image_init.as_ref())
        .ok_or(SetupError::NoInit)?;
    let cmd = sys::open_regular(Path::new(CMD_PATH))?;
    let env = sys::open_regular(Path::new(ENV_PATH))?;
    if has_rootfs {
        setup::enter_rootfs(calls)?;
        crate::boottrace::mark("child: entered /rootfs");
    }

    let null = std::fs::File::open("/dev/null").map_err(SetupError::DevNull)?;
    sys::dup_onto(null.as_fd(), 0)?;
    sys::dup_onto(console.as_fd(), 1)?;
    sys::dup_onto(console.as_fd(), 2)?;

    setup::map_ids(calls, uid, gid)?;

    // No capability left in any set (the bounding set included, so that exec cannot give
    // root in the enclave's user namespace any either), and no_new_privs.
    caps::drop_all()?;
    caps::set_no_new_privs()?;
    sys::reset_signals()?;
    sys::set_parent_death_kill()?;
    // The monitor keeps its end of `go` open until we exec: a hang-up means it died before the
    // death signal was armed.
    if sys::poll_readable(go.as_fd(), 0)? {
        sys::exit_now(1);
    }
    sys::cloexec_from(3)?;
    let mut init_env = vec!["CLOISTER_ISOLATION=process".to_owned()];
    for (var, fd) in [(CMD_FD_ENV, &cmd), (ENV_FD_ENV, &env)] {
        if let Some(fd) = fd {
            sys::clear_cloexec(fd.as_fd())?;
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
        let listener = notify::install(filter)?;
        cloister_supervisor::send_listener(chan.as_fd(), listener.as_fd())
            .map_err(SetupError::SendListener)?;
        drop(listener);
    }
    seccomp::install(&filters)?;
    Err(sys::exec_fd(init.as_fd(), &[INIT_PATH], &init_env).into())
}

/// Unpacks every ramdisk of the image, in order, from the monitor's open image (the measured
/// file), and fails if that file was written to meanwhile.
fn fill_root(spec: &LaunchSpec, unpacker: &mut Unpacker) -> Result<(), SetupError> {
    let mut eif = spec.image.reader()?;
    for (n, index) in eif.ramdisks().into_iter().enumerate() {
        let reader = eif.section_reader(index)?;
        unpacker.unpack(n, reader)?;
    }
    Ok(spec.image.check_unchanged()?)
}

/// The image's init, in the bootstrap tree.
const INIT_PATH: &str = "/init";
/// The image's command, in the bootstrap tree.
const CMD_PATH: &str = "/cmd";
/// The image's environment, in the bootstrap tree.
const ENV_PATH: &str = "/env";
