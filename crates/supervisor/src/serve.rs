//! The supervisor's loop: receives notifications, answers quick ones (and NSM requests, which
//! the enclave's own NSM answers within its signing time) at once, hands the ones that wait on
//! the fabric (`connect`, `bind`) to a small pool of workers, and parks blocking `accept`s
//! until their listener is readable.
//!
//! Every notification is untrusted: its arguments are numbers the program chose, its memory
//! may change or vanish at any time, its descriptors may be closed or swapped by another
//! thread. So every read of memory is bounded and may fail (the call then fails with EFAULT),
//! a descriptor is looked at through a duplicate taken with `pidfd_getfd` (the open file, not
//! the number), and the notification's id is checked again before anything read is acted on.
//! A call the supervisor does not recognise as its own runs in the kernel unchanged
//! (`CONTINUE`): that is safe because no real `AF_VSOCK` socket can exist in the program (its
//! `socket(AF_VSOCK)` is never let through), so the kernel then fails or serves the call as
//! for any other socket.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

use cloister_confine::notify::{IOCTL_VM_SOCKETS_GET_LOCAL_CID, NSM_IOCTL_RAW};
use cloister_vsock::nsm_frame::NSM_REQUEST_MAX;
use cloister_vsock::{VsockAddr, VMADDR_CID_ANY, VMADDR_PORT_ANY};

use crate::fabric::{Errno, Fabric};
use crate::sys::{self, Listener, Notif, Target};

/// Workers serving calls that wait on the fabric (connect, bind).
pub const WORKERS: usize = 4;
/// Calls queued for the workers at most; beyond, a call fails with EAGAIN.
pub const MAX_QUEUED: usize = 256;
/// Blocking `accept`s parked at most; beyond, one fails with ENOBUFS.
pub const MAX_PARKED: usize = 1024;
/// Sockets tracked at most (entries of closed sockets are pruned past this).
pub const MAX_TRACKED: usize = 16384;
/// How often (ms) parked calls are checked for interruption when nothing else happens.
const TICK_MS: i32 = 200;

#[allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "AF_VSOCK is 40: sa_family_t holds it"
)]
const AF_VSOCK: u16 = libc::AF_VSOCK as u16;
/// `sizeof(struct sockaddr_vm)`, as the socklen_t the caller gets back.
const SOCKADDR_VM_LEN_U32: u32 = 16;
const SOCKADDR_VM_LEN: usize = SOCKADDR_VM_LEN_U32 as usize;

/// A system call argument that the kernel reads as a C `unsigned int`: the low half of the
/// 64-bit register.
#[allow(
    clippy::cast_possible_truncation,
    reason = "the kernel reads an unsigned int parameter from the low 32 bits"
)]
fn arg_uint(v: u64) -> u32 {
    v as u32
}

/// A system call argument that the kernel reads as a C `int`: the low half of the register,
/// as signed.
#[allow(
    clippy::cast_possible_wrap,
    reason = "the kernel reads an int parameter from the low 32 bits, signed"
)]
fn arg_int(v: u64) -> i32 {
    arg_uint(v) as i32
}

/// What a descriptor the supervisor handed out is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// From `socket(AF_VSOCK)`, neither connected nor bound; whether it was made
    /// close-on-exec (kept by the descriptor that replaces it).
    Unbound { cloexec: bool },
    /// Bound to `port` (the fabric listens from `bind` on); `listening` after `listen`.
    Listener { port: u32, listening: bool },
    /// A connected stream.
    Stream { local: VsockAddr, peer: VsockAddr },
}

/// State shared by the loop and the workers.
struct Shared {
    listener: Listener,
    fabric: Arc<dyn Fabric>,
    /// The supervisor's sockets by inode number (sockfs inode numbers are not reused while
    /// the counter has not wrapped).
    sockets: Mutex<HashMap<u64, Kind>>,
    stop: Arc<AtomicBool>,
}

type Job = Box<dyn FnOnce() + Send>;

/// A blocking accept waiting for its listener.
struct Parked {
    n: Notif,
    target: Target,
    listener: OwnedFd,
    port: u32,
    flags: i32,
}

/// How a call was answered by a handler.
enum Outcome {
    /// Let the kernel run it.
    Continue,
    /// Return this value.
    Value(i64),
    /// Fail with this errno.
    Fail(Errno),
    /// Already answered (an ADDFD that completed it).
    Done,
    /// Queued for a worker, which answers it.
    Queued,
    /// A blocking accept to park.
    Park(Box<Parked>),
}

fn io_errno(e: &std::io::Error) -> Errno {
    e.raw_os_error().unwrap_or(libc::EIO)
}

fn sockaddr_vm(addr: VsockAddr) -> [u8; SOCKADDR_VM_LEN] {
    let mut b = [0u8; SOCKADDR_VM_LEN];
    b[0..2].copy_from_slice(&AF_VSOCK.to_ne_bytes());
    b[4..8].copy_from_slice(&addr.port.to_ne_bytes());
    b[8..12].copy_from_slice(&addr.cid.to_ne_bytes());
    b
}

/// Parses a `sockaddr_vm` (family, port, cid); `None` for another family.
pub fn parse_sockaddr_vm(b: &[u8; SOCKADDR_VM_LEN]) -> Option<VsockAddr> {
    let family = u16::from_ne_bytes([b[0], b[1]]);
    if family != AF_VSOCK {
        return None;
    }
    let port = u32::from_ne_bytes([b[4], b[5], b[6], b[7]]);
    let cid = u32::from_ne_bytes([b[8], b[9], b[10], b[11]]);
    Some(VsockAddr::new(cid, port))
}

/// Parses the argument of AWS's NSM ioctl: (request address, request length, response
/// address, response capacity).
pub fn parse_nsm_iovecs(b: &[u8; 32]) -> (u64, u64, u64, u64) {
    let word = |i: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&b[i * 8..i * 8 + 8]);
        u64::from_ne_bytes(w)
    };
    (word(0), word(1), word(2), word(3))
}

impl Shared {
    fn inode(fd: BorrowedFd<'_>) -> Option<u64> {
        let st = sys::fstat(fd).ok()?;
        (st.st_mode & libc::S_IFMT == libc::S_IFSOCK).then_some(st.st_ino)
    }

    fn kind_of(&self, fd: BorrowedFd<'_>) -> Option<(u64, Kind)> {
        let ino = Self::inode(fd)?;
        let map = self.sockets.lock().ok()?;
        map.get(&ino).map(|k| (ino, *k))
    }

    fn track(&self, fd: BorrowedFd<'_>, kind: Kind) -> Result<u64, Errno> {
        let ino = Self::inode(fd).ok_or(libc::EIO)?;
        let mut map = self.sockets.lock().map_err(|_| libc::EIO)?;
        if map.len() >= MAX_TRACKED {
            prune(&mut map);
            if map.len() >= MAX_TRACKED {
                return Err(libc::ENFILE);
            }
        }
        map.insert(ino, kind);
        Ok(ino)
    }

    fn untrack(&self, ino: u64) {
        if let Ok(mut map) = self.sockets.lock() {
            map.remove(&ino);
        }
    }

    fn answer(&self, id: u64, outcome: Outcome) {
        let r = match outcome {
            Outcome::Continue => self.listener.continue_call(id),
            Outcome::Value(v) => self.listener.reply(id, v),
            Outcome::Fail(e) => self.listener.fail(id, e),
            Outcome::Done | Outcome::Queued | Outcome::Park(_) => Ok(()),
        };
        // ENOENT: the caller is gone or was interrupted; nothing is waiting for an answer.
        if let Err(e) = r {
            tracing::trace!(error = %e, "notification answer not delivered");
        }
    }
}

/// Drops the entries of sockets that no longer exist (the live ones are listed in the
/// supervisor's network namespace's `/proc/net/unix`, where all of them were made).
fn prune(map: &mut HashMap<u64, Kind>) {
    let Ok(text) = std::fs::read_to_string("/proc/self/net/unix") else {
        return;
    };
    let live: std::collections::HashSet<u64> = text
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(6)?.parse().ok())
        .collect();
    map.retain(|ino, _| live.contains(ino));
}

/// Runs the supervisor on `listener` until every supervised process is gone (the listener
/// hangs up) or `stop` is set.
pub fn run(listener: Listener, fabric: Arc<dyn Fabric>, stop: Arc<AtomicBool>) {
    let shared = Arc::new(Shared {
        listener,
        fabric,
        sockets: Mutex::new(HashMap::new()),
        stop,
    });
    let (tx, rx) = sync_channel::<Job>(MAX_QUEUED);
    let rx = Arc::new(Mutex::new(rx));
    let mut workers = Vec::new();
    for i in 0..WORKERS {
        let rx = rx.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("vsock-sup-{i}"))
            .spawn(move || worker(&rx));
        match spawned {
            Ok(h) => workers.push(h),
            Err(e) => tracing::warn!(error = %e, "cannot start a supervisor worker"),
        }
    }
    let tx = (!workers.is_empty()).then_some(tx);
    // The loop (not the workers, started above, which wait on the fabric) runs on the
    // enclave's CPUs.
    let cpus = shared.fabric.cpus();
    if !cpus.is_empty() {
        let pinned = sys::pin_current_thread(&cpus);
        if let Err(e) = &pinned {
            tracing::warn!(error = %e, "cannot pin the supervisor to the enclave's CPUs");
        }
        shared.fabric.pinned(pinned.is_ok());
    }
    let mut parked: Vec<Parked> = Vec::new();
    while !shared.stop.load(Ordering::Relaxed) {
        let mut fds = Vec::with_capacity(parked.len() + 1);
        fds.push(libc::pollfd {
            fd: shared.listener.fd().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        });
        for p in &parked {
            fds.push(libc::pollfd {
                fd: p.listener.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        // SAFETY: `fds` is a live array of pollfds of the length passed.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, TICK_MS) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            tracing::error!(error = %e, "supervisor poll failed");
            break;
        }
        // Parked accepts: retry the readable ones, drop the interrupted ones.
        let ready: Vec<bool> = fds[1..].iter().map(|p| p.revents != 0).collect();
        let mut still = Vec::with_capacity(parked.len());
        for (p, ready) in parked.drain(..).zip(ready) {
            if !shared.listener.id_valid(p.n.id) {
                continue;
            }
            if !ready {
                still.push(p);
                continue;
            }
            let id = p.n.id;
            match accept_step(&shared, p) {
                Ok(Some(p)) => still.push(p),
                Ok(None) => {}
                Err(e) => shared.answer(id, Outcome::Fail(e)),
            }
        }
        parked = still;
        let revents = fds[0].revents;
        if revents & libc::POLLIN != 0 {
            let n = match shared.listener.recv() {
                Ok(n) => n,
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::EINTR)) => continue,
                Err(e) => {
                    tracing::error!(error = %e, "receiving a notification failed");
                    break;
                }
            };
            let outcome = handle(&shared, tx.as_ref(), n);
            match outcome {
                Outcome::Park(p) if parked.len() < MAX_PARKED => parked.push(*p),
                Outcome::Park(_) => shared.answer(n.id, Outcome::Fail(libc::ENOBUFS)),
                other => shared.answer(n.id, other),
            }
        } else if revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0 {
            // No supervised process is left.
            break;
        }
    }
    drop(tx);
    for w in workers {
        let _ = w.join();
    }
}

fn worker(rx: &Mutex<Receiver<Job>>) {
    loop {
        let job = match rx.lock() {
            Ok(r) => r.recv(),
            Err(_) => return,
        };
        match job {
            Ok(job) => job(),
            Err(_) => return,
        }
    }
}

fn queue(tx: Option<&SyncSender<Job>>, job: Job) -> Outcome {
    let Some(tx) = tx else {
        return Outcome::Fail(libc::EAGAIN);
    };
    match tx.try_send(job) {
        Ok(()) => Outcome::Queued,
        Err(TrySendError::Full(_)) => Outcome::Fail(libc::EAGAIN),
        Err(TrySendError::Disconnected(_)) => Outcome::Fail(libc::EIO),
    }
}

/// Answers (or queues, or parks) one notification.
fn handle(shared: &Arc<Shared>, tx: Option<&SyncSender<Job>>, n: Notif) -> Outcome {
    let nr = i64::from(n.data.nr);
    if nr == libc::SYS_socket {
        return on_socket(shared, &n);
    }
    let target = match Target::open(n.pid) {
        Ok(t) => t,
        // The caller is gone: nothing waits for the answer.
        Err(_) => return Outcome::Fail(libc::ESRCH),
    };
    match nr {
        libc::SYS_connect | libc::SYS_bind => on_connect_or_bind(shared, tx, n, target),
        libc::SYS_listen => on_listen(shared, &target, n.data.args),
        libc::SYS_accept | libc::SYS_accept4 => on_accept(shared, n, target),
        libc::SYS_getsockname | libc::SYS_getpeername => {
            on_getname(shared, &target, nr, n.data.args)
        }
        libc::SYS_ioctl => on_ioctl(shared, &n, &target),
        _ => Outcome::Continue,
    }
}

/// connect(2) and bind(2) on a socket the supervisor made: checked here, done by a worker.
fn on_connect_or_bind(
    shared: &Arc<Shared>,
    tx: Option<&SyncSender<Job>>,
    n: Notif,
    target: Target,
) -> Outcome {
    let nr = i64::from(n.data.nr);
    let a = n.data.args;
    let mut raw = [0u8; SOCKADDR_VM_LEN];
    if target.read(a[1], &mut raw).is_err() {
        return Outcome::Fail(libc::EFAULT);
    }
    let Some(addr) = parse_sockaddr_vm(&raw) else {
        return Outcome::Continue;
    };
    let Ok(fd) = target.get_fd(a[0]) else {
        return Outcome::Fail(libc::EBADF);
    };
    let Some((ino, kind)) = shared.kind_of(fd.as_fd()) else {
        return Outcome::Continue;
    };
    let Kind::Unbound { cloexec } = kind else {
        return Outcome::Fail(if nr == libc::SYS_connect {
            match kind {
                Kind::Stream { .. } => libc::EISCONN,
                _ => libc::EINVAL,
            }
        } else {
            libc::EINVAL
        });
    };
    let shared2 = shared.clone();
    if nr == libc::SYS_connect {
        queue(
            tx,
            Box::new(move || {
                let out = do_connect(&shared2, &n, &target, (ino, cloexec), addr);
                shared2.answer(n.id, out);
            }),
        )
    } else {
        let cid = shared.fabric.local_cid();
        if addr.cid != VMADDR_CID_ANY && addr.cid != cid {
            return Outcome::Fail(libc::EADDRNOTAVAIL);
        }
        if addr.port == VMADDR_PORT_ANY {
            // The fabric listens on explicit ports only.
            return Outcome::Fail(libc::EADDRNOTAVAIL);
        }
        queue(
            tx,
            Box::new(move || {
                let out = do_bind(&shared2, &n, &target, (ino, cloexec), addr.port);
                shared2.answer(n.id, out);
            }),
        )
    }
}

/// listen(2): marks the supervisor's listener as listening.
fn on_listen(shared: &Shared, target: &Target, a: [u64; 6]) -> Outcome {
    let Ok(fd) = target.get_fd(a[0]) else {
        return Outcome::Fail(libc::EBADF);
    };
    let Some((ino, kind)) = shared.kind_of(fd.as_fd()) else {
        return Outcome::Continue;
    };
    match kind {
        Kind::Listener { port, .. } => {
            if let Ok(mut map) = shared.sockets.lock() {
                map.insert(
                    ino,
                    Kind::Listener {
                        port,
                        listening: true,
                    },
                );
            }
            Outcome::Value(0)
        }
        _ => Outcome::Fail(libc::EINVAL),
    }
}

/// accept(2) and accept4(2): a connection now, EAGAIN, or the call parked until one comes.
fn on_accept(shared: &Arc<Shared>, n: Notif, target: Target) -> Outcome {
    let nr = i64::from(n.data.nr);
    let a = n.data.args;
    let flags = if nr == libc::SYS_accept4 {
        arg_int(a[3])
    } else {
        0
    };
    if flags & !(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC) != 0 {
        return Outcome::Fail(libc::EINVAL);
    }
    let Ok(fd) = target.get_fd(a[0]) else {
        return Outcome::Fail(libc::EBADF);
    };
    let Some((_, kind)) = shared.kind_of(fd.as_fd()) else {
        return Outcome::Continue;
    };
    let port = match kind {
        Kind::Listener {
            port,
            listening: true,
        } => port,
        _ => return Outcome::Fail(libc::EINVAL),
    };
    let p = Parked {
        n,
        target,
        listener: fd,
        port,
        flags,
    };
    match accept_step(shared, p) {
        Ok(None) => Outcome::Done,
        Ok(Some(p)) => {
            let nonblocking = sys::status_flags(p.listener.as_fd())
                .map(|f| f & libc::O_NONBLOCK != 0)
                .unwrap_or(false);
            if nonblocking {
                Outcome::Fail(libc::EAGAIN)
            } else {
                Outcome::Park(Box::new(p))
            }
        }
        Err(e) => Outcome::Fail(e),
    }
}

/// getsockname(2) and getpeername(2) of the supervisor's sockets.
fn on_getname(shared: &Shared, target: &Target, nr: i64, a: [u64; 6]) -> Outcome {
    let Ok(fd) = target.get_fd(a[0]) else {
        return Outcome::Fail(libc::EBADF);
    };
    let Some((_, kind)) = shared.kind_of(fd.as_fd()) else {
        return Outcome::Continue;
    };
    let cid = shared.fabric.local_cid();
    let addr = match (nr == libc::SYS_getsockname, kind) {
        (true, Kind::Unbound { .. }) => VsockAddr::new(VMADDR_CID_ANY, VMADDR_PORT_ANY),
        (true, Kind::Listener { port, .. }) => VsockAddr::new(cid, port),
        (true, Kind::Stream { local, .. }) => local,
        (false, Kind::Stream { peer, .. }) => peer,
        (false, _) => return Outcome::Fail(libc::ENOTCONN),
    };
    match write_sockaddr(target, a[1], a[2], addr) {
        Ok(()) => Outcome::Value(0),
        Err(e) => Outcome::Fail(e),
    }
}

/// ioctl(2) on a device node: the local CID of `/dev/vsock` and the NSM's request.
fn on_ioctl(shared: &Arc<Shared>, n: &Notif, target: &Target) -> Outcome {
    let a = n.data.args;
    let request = arg_uint(a[1]);
    let Ok(fd) = target.get_fd(a[0]) else {
        return Outcome::Fail(libc::EBADF);
    };
    // Only device nodes (`/dev/nsm`, `/dev/vsock`) answer; elsewhere the kernel's
    // ENOTTY stands.
    let is_chr = sys::fstat(fd.as_fd())
        .map(|st| st.st_mode & libc::S_IFMT == libc::S_IFCHR)
        .unwrap_or(false);
    if !is_chr {
        return Outcome::Continue;
    }
    if request == IOCTL_VM_SOCKETS_GET_LOCAL_CID {
        let cid = shared.fabric.local_cid().to_ne_bytes();
        return match target.write(a[2], &cid) {
            Ok(()) => Outcome::Value(0),
            Err(_) => Outcome::Fail(libc::EFAULT),
        };
    }
    if request != NSM_IOCTL_RAW {
        return Outcome::Continue;
    }
    // Answered here, without a hand-off to a worker: the enclave's own NSM answers
    // within its signing time (it never waits on anything the enclave controls), and
    // the hand-off would cost each request another wake-up.
    do_nsm(shared, n, target, a[2])
}

fn on_socket(shared: &Shared, n: &Notif) -> Outcome {
    let a = n.data.args;
    if arg_int(a[0]) != libc::AF_VSOCK {
        return Outcome::Continue;
    }
    let ty = arg_int(a[1]);
    let flags = ty & !0xf;
    if flags & !(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC) != 0 {
        return Outcome::Fail(libc::EINVAL);
    }
    match ty & 0xf {
        libc::SOCK_STREAM => {}
        libc::SOCK_DGRAM => return Outcome::Fail(libc::EAFNOSUPPORT),
        libc::SOCK_SEQPACKET => return Outcome::Fail(libc::ESOCKTNOSUPPORT),
        _ => return Outcome::Fail(libc::EINVAL),
    }
    if arg_uint(a[2]) != 0 {
        return Outcome::Fail(libc::EPROTONOSUPPORT);
    }
    let sock = match sys::unix_stream(flags & libc::SOCK_NONBLOCK != 0) {
        Ok(s) => s,
        Err(e) => return Outcome::Fail(io_errno(&e)),
    };
    let cloexec = flags & libc::SOCK_CLOEXEC != 0;
    let ino = match shared.track(sock.as_fd(), Kind::Unbound { cloexec }) {
        Ok(i) => i,
        Err(e) => return Outcome::Fail(e),
    };
    match shared
        .listener
        .add_fd(n.id, sock.as_fd(), None, cloexec, true)
    {
        Ok(_) => Outcome::Done,
        Err(e) => {
            shared.untrack(ino);
            Outcome::Fail(io_errno(&e))
        }
    }
}

/// Installs `new` at the caller's descriptor `a0` in place of the socket `old` (its inode and
/// close-on-exec flag), if that descriptor still is that socket.
fn replace_fd(
    shared: &Shared,
    n: &Notif,
    target: &Target,
    new: &OwnedFd,
    old: (u64, bool),
) -> Result<(), Errno> {
    let (old_ino, cloexec) = old;
    let number = n.data.args[0];
    let now = target.get_fd(number).map_err(|_| libc::EBADF)?;
    if Shared::inode(now.as_fd()) != Some(old_ino) {
        // Closed or swapped while the call waited.
        return Err(libc::EBADF);
    }
    let nonblocking = sys::status_flags(now.as_fd())
        .map(|f| f & libc::O_NONBLOCK != 0)
        .unwrap_or(false);
    sys::set_nonblocking(new.as_fd(), nonblocking).map_err(|e| io_errno(&e))?;
    if !shared.listener.id_valid(n.id) {
        return Err(libc::EINTR);
    }
    let fd = i32::try_from(number).map_err(|_| libc::EBADF)?;
    shared
        .listener
        .add_fd(n.id, new.as_fd(), Some(fd), cloexec, false)
        .map(drop)
        .map_err(|e| io_errno(&e))
}

fn do_connect(
    shared: &Shared,
    n: &Notif,
    target: &Target,
    old: (u64, bool),
    peer: VsockAddr,
) -> Outcome {
    let (stream, port) = match shared.fabric.connect(peer) {
        Ok(s) => s,
        Err(e) => return Outcome::Fail(e),
    };
    let local = VsockAddr::new(shared.fabric.local_cid(), port);
    let new_ino = match shared.track(stream.as_fd(), Kind::Stream { local, peer }) {
        Ok(i) => i,
        Err(e) => return Outcome::Fail(e),
    };
    match replace_fd(shared, n, target, &stream, old) {
        Ok(()) => {
            shared.untrack(old.0);
            Outcome::Value(0)
        }
        Err(e) => {
            shared.untrack(new_ino);
            Outcome::Fail(e)
        }
    }
}

fn do_bind(shared: &Shared, n: &Notif, target: &Target, old: (u64, bool), port: u32) -> Outcome {
    let ctl = match shared.fabric.listen(port) {
        Ok(c) => c,
        Err(e) => return Outcome::Fail(e),
    };
    let kind = Kind::Listener {
        port,
        listening: false,
    };
    let new_ino = match shared.track(ctl.as_fd(), kind) {
        Ok(i) => i,
        Err(e) => return Outcome::Fail(e),
    };
    match replace_fd(shared, n, target, &ctl, old) {
        Ok(()) => {
            shared.untrack(old.0);
            Outcome::Value(0)
        }
        Err(e) => {
            shared.untrack(new_ino);
            Outcome::Fail(e)
        }
    }
}

/// One accept attempt: `Ok(None)` when answered (a connection installed), `Ok(Some)` to wait.
fn accept_step(shared: &Shared, p: Parked) -> Result<Option<Parked>, Errno> {
    let (conn, peer) = match shared.fabric.try_accept(p.listener.as_fd(), p.port)? {
        Some(c) => c,
        None => return Ok(Some(p)),
    };
    let a = p.n.data.args;
    sys::set_nonblocking(conn.as_fd(), p.flags & libc::SOCK_NONBLOCK != 0)
        .map_err(|e| io_errno(&e))?;
    if a[1] != 0 {
        write_sockaddr(&p.target, a[1], a[2], peer)?;
    }
    let local = VsockAddr::new(shared.fabric.local_cid(), p.port);
    let ino = shared.track(conn.as_fd(), Kind::Stream { local, peer })?;
    match shared.listener.add_fd(
        p.n.id,
        conn.as_fd(),
        None,
        p.flags & libc::SOCK_CLOEXEC != 0,
        true,
    ) {
        Ok(_) => Ok(None),
        Err(e) => {
            shared.untrack(ino);
            Err(io_errno(&e))
        }
    }
}

/// Writes `addr` as a `sockaddr_vm` for `getsockname`/`getpeername`/`accept`: at most the
/// caller's `*len_ptr` bytes at `addr_ptr`, then the full length into `*len_ptr`.
fn write_sockaddr(
    target: &Target,
    addr_ptr: u64,
    len_ptr: u64,
    addr: VsockAddr,
) -> Result<(), Errno> {
    let mut len = [0u8; 4];
    target.read(len_ptr, &mut len).map_err(|_| libc::EFAULT)?;
    let len = i32::from_ne_bytes(len);
    let Ok(len) = usize::try_from(len) else {
        return Err(libc::EINVAL);
    };
    let raw = sockaddr_vm(addr);
    let n = len.min(SOCKADDR_VM_LEN);
    target
        .write(addr_ptr, &raw[..n])
        .map_err(|_| libc::EFAULT)?;
    target
        .write(len_ptr, &SOCKADDR_VM_LEN_U32.to_ne_bytes())
        .map_err(|_| libc::EFAULT)
}

/// AWS's NSM ioctl: reads the request (at most [`NSM_REQUEST_MAX`] bytes, else EMSGSIZE),
/// asks the enclave's NSM, writes as much of the response as fits and its length.
fn do_nsm(shared: &Shared, n: &Notif, target: &Target, arg: u64) -> Outcome {
    let mut raw = [0u8; 32];
    if target.read(arg, &mut raw).is_err() {
        return Outcome::Fail(libc::EFAULT);
    }
    let (req_addr, req_len, resp_addr, resp_cap) = parse_nsm_iovecs(&raw);
    let Ok(req_len) = usize::try_from(req_len) else {
        return Outcome::Fail(libc::EMSGSIZE);
    };
    if req_len > NSM_REQUEST_MAX {
        return Outcome::Fail(libc::EMSGSIZE);
    }
    let mut buf = [0u8; NSM_REQUEST_MAX];
    let request = &mut buf[..req_len];
    if target.read(req_addr, request).is_err() {
        return Outcome::Fail(libc::EFAULT);
    }
    // What was read belongs to the caller only while its call is pending.
    if !shared.listener.id_valid(n.id) {
        return Outcome::Fail(libc::EINTR);
    }
    let response = match shared.fabric.nsm(request) {
        Ok(r) => r,
        Err(e) => return Outcome::Fail(e),
    };
    let fit = usize::try_from(resp_cap)
        .unwrap_or(usize::MAX)
        .min(response.len());
    // The response, then its length, in one write.
    let len = (fit as u64).to_ne_bytes();
    if target
        .write_parts(&[(resp_addr, &response[..fit]), (arg.wrapping_add(24), &len)])
        .is_err()
    {
        return Outcome::Fail(libc::EFAULT);
    }
    Outcome::Value(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockaddr_vm_round_trips() {
        let a = VsockAddr::new(3, 5005);
        assert_eq!(parse_sockaddr_vm(&sockaddr_vm(a)), Some(a));
        let mut inet = [0u8; 16];
        inet[0] = u8::try_from(libc::AF_INET).unwrap();
        assert_eq!(parse_sockaddr_vm(&inet), None);
    }

    #[test]
    fn nsm_iovecs_parse_in_order() {
        let mut b = [0u8; 32];
        for (i, v) in [1u64, 2, 3, 4].iter().enumerate() {
            b[i * 8..i * 8 + 8].copy_from_slice(&v.to_ne_bytes());
        }
        assert_eq!(parse_nsm_iovecs(&b), (1, 2, 3, 4));
    }
}
