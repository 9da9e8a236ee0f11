//! The per-enclave vsock broker, run by the enclave's monitor on the host.
//!
//! It binds two Unix sockets:
//! - host-facing `<fabric>/<cid>.sock`: parent processes send `CONNECT <port>`; when the
//!   enclave listens on `<port>` the broker answers `OK <host_port>` and passes the parent's
//!   connection to the enclave's listener (`ACCEPT 3 <host_port>` + the descriptor); otherwise
//!   it closes the connection without an answer;
//! - enclave-facing (a path the runtime chooses and bind-mounts at `/dev/vsock.sock`): the
//!   enclave sends `CONNECT <cid> <port>` or `LISTEN <port>`:
//!   - `CONNECT 3 <port>`: the broker connects to `<fabric>/3_<port>.sock`, writes
//!     `CONNECT-FROM <cid> <src_port>`, and passes that connection back with `OK <src_port>`;
//!     the first `CONNECT 3 9000` is the boot heartbeat, answered by the broker itself
//!     (`OK`, then 0xB7 echoed on the same connection);
//!   - `CONNECT 0 1`: `OK <src_port>`, then the same connection carries NSM frames, served by the
//!     [`NsmService`];
//!   - any other cid: `ERR EACCES` (an enclave reaches the parent and the hypervisor only; the
//!     broker never dials anything but `3_<port>.sock` and its own services, so
//!     enclave-to-enclave traffic is impossible by construction); other cid-0 ports:
//!     `ERR ECONNREFUSED`;
//!   - `LISTEN <port>`: `OK` (or `ERR EADDRINUSE` / `ERR ENOBUFS` past the listener cap); the
//!     connection then carries `ACCEPT` lines with descriptors until either side closes it.
//!
//! Data never flows through the broker: streams are connected Unix sockets handed over with
//! SCM_RIGHTS, so their throughput is that of a Unix socket pair. What the ends can learn from
//! the passed socket: `getsockname`/`getpeername` reveal Unix socket paths on the host (the
//! fabric directory, e.g. `/run/cloister/vsock/3_5000.sock`), and `SO_PEERCRED` gives the
//! credentials of the process that connected or listened (for a host listener: the monitor's
//! pid with the enclave's host uid and gid, see below; for the enclave: the host listener,
//! translated through the enclave's namespaces: pid 0 and the overflow uid when unmapped). Either end can send descriptors or credentials over the stream
//! with `sendmsg`; a reader that uses plain `read` discards them. Neither end learns anything
//! about the other's process or can reach anything but that one stream.
//!
//! Threat model: every byte from the enclave and from host clients is untrusted. Lines are at
//! most [`MAX_LINE_LEN`](crate::proto::MAX_LINE_LEN) bytes and must arrive within the handshake
//! timeout; the numbers of concurrent enclave connections, pending host handshakes and listeners
//! are capped ([`BrokerLimits`]); NSM frames above the hard cap close the connection; log lines
//! a peer can trigger are rate-limited; no input can panic a broker thread.
//!
//! What is in the fabric directory is untrusted too: any host user can create names there. The
//! broker runs as root, so for `CONNECT 3 <port>` it dials only a singly linked socket bound in
//! the fabric directory, opened without following symlinks and connected through its `O_PATH`
//! descriptor, served by root or by the socket's owner; and it connects with the enclave's
//! unprivileged host identity ([`BrokerConfig::with_enclave_identity`]), so a host listener
//! never sees root's credentials on an enclave's connection and the kernel checks the socket's
//! permissions against the enclave's ids. The broker's own sockets replace only stale sockets
//! of the broker's user, never a symlink or another user's file; the host socket `<cid>.sock`
//! gets the enclave's host gid as its group, which is how host listeners tell the broker's
//! connections from forged ones. The full rules: [`crate::hostfs`].
//!
//! NSM work is the enclave's: the NSM channels of one enclave (each a broker thread) are pinned
//! to the enclave's CPUs when the broker knows them ([`BrokerConfig::with_enclave_cpus`]), and
//! at most as many `NsmService::handle` calls run at once as the enclave has CPUs (at least 1,
//! at most [`BrokerLimits::max_nsm_workers`]). A channel waiting for its turn waits in its own
//! thread, so neither the accept loop nor other enclaves' brokers wait with it; the uncontended
//! path costs one mutex round trip per request.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use socket2::Socket;

use crate::addr::{
    is_enclave_cid, VsockAddr, HEARTBEAT_BYTE, HEARTBEAT_PORT, NSM_PORT, PARENT_CID,
    VMADDR_CID_HYPERVISOR,
};
use crate::fdpass::send_with_fd;
use crate::hostfs::{
    bind_unix_replacing_stale, set_entry_group, BindError, FabricDir, FabricError, HostIdentity,
};
use crate::nsm_frame::{read_frame, write_frame, FrameError, NSM_FRAME_HARD_CAP};
use crate::proto::{self, EnclaveRequest, LineBuf};
use crate::ratelimit::RateLimiter;
use crate::stream::{ensure_fabric_dir, remove_if_same};

/// The NSM behind the broker's `(0, 1)` channel.
pub trait NsmService: Send + Sync {
    /// Answers one CBOR request with one CBOR response. `request` is at most
    /// [`NSM_FRAME_HARD_CAP`] bytes; requests over
    /// [`NSM_REQUEST_MAX`](crate::nsm_frame::NSM_REQUEST_MAX) must get the `InputTooLarge`
    /// error response.
    fn handle(&self, request: &[u8]) -> Vec<u8>;
}

/// Called once, from a broker thread, when init's heartbeat arrives.
pub type HeartbeatCallback = Box<dyn Fn() + Send + Sync>;

/// Caps on what one enclave (and the host clients dialling it) can make the broker hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerLimits {
    /// Concurrent connections from the enclave (handshakes, NSM channels, listeners).
    pub max_enclave_connections: usize,
    /// Concurrent listening ports of the enclave.
    pub max_listeners: usize,
    /// Concurrent host connections still in their handshake.
    pub max_host_pending: usize,
    /// Longest time a peer may take to send its request line (and to read our answer).
    pub handshake_timeout: Duration,
    /// Most NSM requests served at once, whatever the enclave's CPU count (at least 1).
    pub max_nsm_workers: usize,
}

impl Default for BrokerLimits {
    fn default() -> Self {
        Self {
            max_enclave_connections: 256,
            max_listeners: 64,
            max_host_pending: 128,
            handshake_timeout: Duration::from_secs(5),
            max_nsm_workers: 4,
        }
    }
}

/// How to run a broker.
pub struct BrokerConfig {
    /// The enclave's cid (4 ..= 2^32-2).
    pub cid: u32,
    /// The host fabric directory (`<run>/vsock`).
    pub fabric_dir: PathBuf,
    /// Where to bind the enclave-facing socket (its directory must exist).
    pub enclave_socket: PathBuf,
    /// The enclave's NSM.
    pub nsm: Arc<dyn NsmService>,
    /// Called when the boot heartbeat arrives.
    pub on_heartbeat: Option<HeartbeatCallback>,
    /// Resource caps.
    pub limits: BrokerLimits,
    /// The host uid and gid the enclave's root maps to: connections to host listeners carry
    /// them. `None` keeps the broker's own credentials (only for brokers not run as root, such
    /// as tests: a root broker must be given one).
    pub enclave_identity: Option<HostIdentity>,
    /// The enclave's CPUs: NSM requests run there, as many at once as there are CPUs (bounded
    /// by [`BrokerLimits::max_nsm_workers`]). Empty: one at a time, on any CPU.
    pub enclave_cpus: Vec<u32>,
}

impl BrokerConfig {
    /// A configuration with the fabric in `<run_dir>/vsock`, no callback and default limits.
    pub fn new(
        cid: u32,
        run_dir: &Path,
        enclave_socket: impl Into<PathBuf>,
        nsm: Arc<dyn NsmService>,
    ) -> Self {
        Self {
            cid,
            fabric_dir: run_dir.join(crate::stream::FABRIC_SUBDIR),
            enclave_socket: enclave_socket.into(),
            nsm,
            on_heartbeat: None,
            limits: BrokerLimits::default(),
            enclave_identity: None,
            enclave_cpus: Vec::new(),
        }
    }

    /// Sets the enclave's host identity (the uid and gid its root maps to).
    pub fn with_enclave_identity(mut self, uid: u32, gid: u32) -> Self {
        self.enclave_identity = Some(HostIdentity { uid, gid });
        self
    }

    /// Sets the enclave's CPUs.
    pub fn with_enclave_cpus(mut self, cpus: Vec<u32>) -> Self {
        self.enclave_cpus = cpus;
        self
    }

    /// Sets the heartbeat callback.
    pub fn on_heartbeat(mut self, callback: impl Fn() + Send + Sync + 'static) -> Self {
        self.on_heartbeat = Some(Box::new(callback));
        self
    }

    /// Sets the limits.
    pub fn with_limits(mut self, limits: BrokerLimits) -> Self {
        self.limits = limits;
        self
    }
}

impl std::fmt::Debug for BrokerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerConfig")
            .field("cid", &self.cid)
            .field("fabric_dir", &self.fabric_dir)
            .field("enclave_socket", &self.enclave_socket)
            .field("limits", &self.limits)
            .field("enclave_identity", &self.enclave_identity)
            .field("enclave_cpus", &self.enclave_cpus)
            .finish_non_exhaustive()
    }
}

/// Errors starting a broker.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The cid cannot be an enclave's.
    #[error("cid {0} is not an enclave cid (4 ..= 4294967294)")]
    InvalidCid(u32),
    /// Another live broker serves this cid.
    #[error("cid {cid} is already served by a broker ({path})")]
    CidInUse {
        /// The cid.
        cid: u32,
        /// Its socket.
        path: PathBuf,
    },
    /// The enclave-facing socket path is taken by a live socket.
    #[error("enclave socket {0} is in use")]
    EnclaveSocketInUse(PathBuf),
    /// A system call failed.
    #[error("vsock broker: {context}")]
    Io {
        /// What was being done.
        context: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// Counters for monitoring and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BrokerStats {
    /// Enclave connections being served now.
    pub enclave_connections: usize,
    /// Host connections in their handshake now.
    pub host_pending: usize,
    /// Ports the enclave listens on now.
    pub listeners: usize,
    /// Connections refused because a cap was reached, since start.
    pub rejected: u64,
    /// Streams handed over (both directions), since start.
    pub streams: u64,
}

struct Listener {
    id: u64,
    ctl: Mutex<Socket>,
}

struct Shared {
    cid: u32,
    fabric: FabricDir,
    identity: Option<HostIdentity>,
    nsm: Arc<dyn NsmService>,
    nsm_gate: NsmGate,
    nsm_cpus: Vec<u32>,
    on_heartbeat: Option<HeartbeatCallback>,
    limits: BrokerLimits,
    stopping: AtomicBool,
    listeners: Mutex<HashMap<u32, Arc<Listener>>>,
    live: Mutex<HashMap<u64, Socket>>,
    next_id: AtomicU64,
    enclave_conns: AtomicUsize,
    host_pending: AtomicUsize,
    workers: AtomicUsize,
    next_port: AtomicU32,
    heartbeat_claimed: AtomicBool,
    booted: Mutex<bool>,
    booted_cv: Condvar,
    rejected: AtomicU64,
    streams: AtomicU64,
    log: RateLimiter,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// A counting semaphore: at most `n` NSM requests of one enclave are served at once.
struct NsmGate {
    free: Mutex<usize>,
    cv: Condvar,
}

/// One NSM request's turn; dropping it lets the next one go.
struct NsmTurn<'a>(&'a NsmGate);

impl NsmGate {
    fn new(n: usize) -> Self {
        Self {
            free: Mutex::new(n.max(1)),
            cv: Condvar::new(),
        }
    }

    fn acquire(&self) -> NsmTurn<'_> {
        let mut free = lock(&self.free);
        while *free == 0 {
            free = match self.cv.wait(free) {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
        }
        *free -= 1;
        NsmTurn(self)
    }
}

impl Drop for NsmTurn<'_> {
    fn drop(&mut self) {
        *lock(&self.0.free) += 1;
        self.0.cv.notify_one();
    }
}

/// How many NSM requests of an enclave with `cpus` run at once.
fn nsm_workers(cpus: &[u32], max: usize) -> usize {
    let mut distinct = cpus.to_vec();
    distinct.sort_unstable();
    distinct.dedup();
    distinct.len().clamp(1, max.max(1))
}

/// Pins the calling thread to `cpus` (ids beyond the kernel's set size are ignored).
fn pin_current_thread(cpus: &[u32]) -> io::Result<()> {
    // SAFETY: all-zero bytes are an empty `cpu_set_t` (a plain bit array).
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let capacity = 8 * std::mem::size_of::<libc::cpu_set_t>();
    let mut any = false;
    for &cpu in cpus {
        let Ok(cpu) = usize::try_from(cpu) else {
            continue;
        };
        if cpu < capacity {
            // SAFETY: `cpu` is below the set's capacity in bits.
            unsafe { libc::CPU_SET(cpu, &mut set) };
            any = true;
        }
    }
    if !any {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: pid 0 is the calling thread; `set` is a valid cpu_set_t of the given size.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// First ephemeral port handed out (ports below are conventionally reserved).
const FIRST_EPHEMERAL_PORT: u32 = 1024;
/// Most new connections taken from one socket per wake-up, so neither side starves the other.
const ACCEPT_BATCH: usize = 32;
/// How long `shutdown` waits for worker threads to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

impl Shared {
    fn ephemeral_port(&self) -> u32 {
        self.next_port
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |p| {
                Some(if p >= u32::MAX - 2 {
                    FIRST_EPHEMERAL_PORT
                } else {
                    p + 1
                })
            })
            .unwrap_or(FIRST_EPHEMERAL_PORT)
    }

    fn warn(&self, what: &str, detail: &dyn std::fmt::Display) {
        if let Some(suppressed) = self.log.check() {
            tracing::warn!(cid = self.cid, suppressed, detail = %detail, "{what}");
        }
    }

    /// Runs the callback, then wakes the waiters (so a waiter sees the callback's effects).
    fn mark_booted(&self) {
        tracing::info!(cid = self.cid, "enclave heartbeat received");
        if let Some(cb) = &self.on_heartbeat {
            cb();
        }
        {
            let mut b = lock(&self.booted);
            *b = true;
        }
        self.booted_cv.notify_all();
    }
}

#[derive(Clone, Copy)]
enum Side {
    Host,
    Enclave,
}

/// Releases a worker's slot (and its shutdown registration) when the worker ends.
struct Slot {
    shared: Arc<Shared>,
    side: Side,
    id: u64,
}

impl Drop for Slot {
    fn drop(&mut self) {
        lock(&self.shared.live).remove(&self.id);
        match self.side {
            Side::Host => self.shared.host_pending.fetch_sub(1, Ordering::AcqRel),
            Side::Enclave => self.shared.enclave_conns.fetch_sub(1, Ordering::AcqRel),
        };
        self.shared.workers.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A running broker. Dropping it shuts it down.
pub struct Broker {
    shared: Arc<Shared>,
    host_path: PathBuf,
    enclave_path: PathBuf,
    host_id: (u64, u64),
    enclave_id: (u64, u64),
    wake: Option<OwnedFd>,
    acceptor: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("cid", &self.shared.cid)
            .field("host_socket", &self.host_path)
            .field("enclave_socket", &self.enclave_path)
            .finish_non_exhaustive()
    }
}

/// A broker's enclave-facing socket, bound and listening before the broker runs, so that an
/// enclave can be set up (the socket bind-mounted into it) while its NSM is still being
/// prepared: connections wait in the backlog until [`Broker::start_bound`] serves them.
/// Dropped without being handed to a broker, it removes its file.
#[derive(Debug)]
pub struct EnclaveSocket {
    sock: Option<Socket>,
    path: PathBuf,
    id: (u64, u64),
}

impl EnclaveSocket {
    /// Binds `path` (mode 0666; a stale socket file there is replaced, a live one refused).
    pub fn bind(path: impl Into<PathBuf>) -> Result<Self, BrokerError> {
        let path = path.into();
        let (sock, id) = bind_unix_replacing_stale(&path).map_err(|e| match e {
            BindError::InUse => BrokerError::EnclaveSocketInUse(path.clone()),
            BindError::Io(context, source) => BrokerError::Io { context, source },
        })?;
        Ok(Self {
            sock: Some(sock),
            path,
            id,
        })
    }

    /// Where it is bound.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for EnclaveSocket {
    fn drop(&mut self) {
        if self.sock.take().is_some() {
            remove_if_same(&self.path, self.id);
        }
    }
}

impl Broker {
    /// Binds both sockets and starts serving.
    pub fn start(config: BrokerConfig) -> Result<Broker, BrokerError> {
        if !is_enclave_cid(config.cid) {
            return Err(BrokerError::InvalidCid(config.cid));
        }
        let enclave = EnclaveSocket::bind(config.enclave_socket.clone())?;
        Self::start_bound(config, enclave)
    }

    /// Starts serving on an enclave socket bound earlier ([`EnclaveSocket::bind`]), which
    /// takes the place of `config.enclave_socket`, and on the host socket it binds now.
    pub fn start_bound(
        config: BrokerConfig,
        mut enclave_socket: EnclaveSocket,
    ) -> Result<Broker, BrokerError> {
        if !is_enclave_cid(config.cid) {
            return Err(BrokerError::InvalidCid(config.cid));
        }
        let fabric = ensure_fabric_dir(&config.fabric_dir).map_err(|e| BrokerError::Io {
            context: "opening the fabric directory",
            source: io::Error::from(e),
        })?;
        let host_path = config.fabric_dir.join(format!("{}.sock", config.cid));
        let (host, host_id) = bind_unix_replacing_stale(&host_path).map_err(|e| match e {
            BindError::InUse => BrokerError::CidInUse {
                cid: config.cid,
                path: host_path.clone(),
            },
            BindError::Io(context, source) => BrokerError::Io { context, source },
        })?;
        if let Some(identity) = config.enclave_identity {
            // The group vouches for the enclave's connections to host listeners.
            if let Err(source) = set_entry_group(&host_path, host_id, identity.gid) {
                remove_if_same(&host_path, host_id);
                return Err(BrokerError::Io {
                    context: "giving the host socket the enclave's group",
                    source,
                });
            }
        }
        // From here on the broker owns the enclave socket's file (it removes it on shutdown).
        let Some(enclave) = enclave_socket.sock.take() else {
            remove_if_same(&host_path, host_id);
            return Err(BrokerError::Io {
                context: "taking the enclave socket",
                source: io::Error::from(io::ErrorKind::InvalidInput),
            });
        };
        let enclave_path = enclave_socket.path.clone();
        let enclave_id = enclave_socket.id;
        let io_err = |context| {
            let (host_path, enclave_path) = (host_path.clone(), enclave_path.clone());
            move |source| {
                // Nothing serves the sockets: remove both files.
                remove_if_same(&host_path, host_id);
                remove_if_same(&enclave_path, enclave_id);
                BrokerError::Io { context, source }
            }
        };
        host.set_nonblocking(true)
            .map_err(io_err("making the host socket non-blocking"))?;
        enclave
            .set_nonblocking(true)
            .map_err(io_err("making the enclave socket non-blocking"))?;
        let (wake_rx, wake_tx) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| io_err("creating the wake-up pipe")(io::Error::from(e)))?;
        if config.enclave_identity.is_none() && nix::unistd::geteuid().is_root() {
            tracing::warn!(
                cid = config.cid,
                "vsock broker runs as root without the enclave's host identity: host listeners \
                 will see root's credentials on the enclave's connections"
            );
        }
        let nsm_gate = NsmGate::new(nsm_workers(
            &config.enclave_cpus,
            config.limits.max_nsm_workers,
        ));
        let shared = Arc::new(Shared {
            cid: config.cid,
            fabric,
            identity: config.enclave_identity,
            nsm: config.nsm,
            nsm_gate,
            nsm_cpus: config.enclave_cpus,
            on_heartbeat: config.on_heartbeat,
            limits: config.limits,
            stopping: AtomicBool::new(false),
            listeners: Mutex::new(HashMap::new()),
            live: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            enclave_conns: AtomicUsize::new(0),
            host_pending: AtomicUsize::new(0),
            workers: AtomicUsize::new(0),
            next_port: AtomicU32::new(FIRST_EPHEMERAL_PORT),
            heartbeat_claimed: AtomicBool::new(false),
            booted: Mutex::new(false),
            booted_cv: Condvar::new(),
            rejected: AtomicU64::new(0),
            streams: AtomicU64::new(0),
            log: RateLimiter::new(20, Duration::from_secs(60)),
        });
        let acceptor_shared = Arc::clone(&shared);
        let acceptor = std::thread::Builder::new()
            .name(format!("vsock-broker-{}", shared.cid))
            .spawn(move || accept_loop(acceptor_shared, host, enclave, wake_rx))
            .map_err(io_err("spawning the broker thread"))?;
        tracing::debug!(cid = shared.cid, host = %host_path.display(), enclave = %enclave_path.display(), "vsock broker started");
        Ok(Broker {
            shared,
            host_path,
            enclave_path,
            host_id,
            enclave_id,
            wake: Some(wake_tx),
            acceptor: Some(acceptor),
        })
    }

    /// The enclave's cid.
    pub fn cid(&self) -> u32 {
        self.shared.cid
    }

    /// The host-facing socket, `<fabric>/<cid>.sock`.
    pub fn host_socket(&self) -> &Path {
        &self.host_path
    }

    /// The enclave-facing socket (to be bind-mounted at `/dev/vsock.sock`).
    pub fn enclave_socket(&self) -> &Path {
        &self.enclave_path
    }

    /// True once init's heartbeat arrived.
    pub fn booted(&self) -> bool {
        *lock(&self.shared.booted)
    }

    /// Waits up to `timeout` for the heartbeat; true when it arrived.
    pub fn wait_for_heartbeat(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut booted = lock(&self.shared.booted);
        while !*booted {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            booted = match self.shared.booted_cv.wait_timeout(booted, deadline - now) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
        true
    }

    /// Current counters.
    pub fn stats(&self) -> BrokerStats {
        BrokerStats {
            enclave_connections: self.shared.enclave_conns.load(Ordering::Acquire),
            host_pending: self.shared.host_pending.load(Ordering::Acquire),
            listeners: lock(&self.shared.listeners).len(),
            rejected: self.shared.rejected.load(Ordering::Relaxed),
            streams: self.shared.streams.load(Ordering::Relaxed),
        }
    }

    /// Stops accepting, ends every connection the broker still serves (streams already handed
    /// over are not affected) and removes both sockets. Idempotent; `Drop` calls it.
    pub fn shutdown(&mut self) {
        let Some(wake) = self.wake.take() else {
            return;
        };
        self.shared.stopping.store(true, Ordering::Release);
        let _ = nix::unistd::write(&wake, &[1u8]);
        if let Some(handle) = self.acceptor.take() {
            let _ = handle.join();
        }
        drop(wake);
        for sock in lock(&self.shared.live).values() {
            let _ = sock.shutdown(Shutdown::Both);
        }
        lock(&self.shared.listeners).clear();
        let deadline = Instant::now() + SHUTDOWN_GRACE;
        while self.shared.workers.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        remove_if_same(&self.host_path, self.host_id);
        remove_if_same(&self.enclave_path, self.enclave_id);
        tracing::debug!(cid = self.shared.cid, "vsock broker stopped");
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn accept_loop(shared: Arc<Shared>, host: Socket, enclave: Socket, wake: OwnedFd) {
    let span = tracing::info_span!("vsock_broker", cid = shared.cid);
    let _enter = span.enter();
    loop {
        let (host_ready, enclave_ready, woken) = {
            let mut fds = [
                PollFd::new(host.as_fd(), PollFlags::POLLIN),
                PollFd::new(enclave.as_fd(), PollFlags::POLLIN),
                PollFd::new(wake.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    shared.warn("broker poll failed", &e);
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
            }
            let ready = |fd: &PollFd<'_>| fd.revents().is_some_and(|r| !r.is_empty());
            (ready(&fds[0]), ready(&fds[1]), ready(&fds[2]))
        };
        if woken || shared.stopping.load(Ordering::Acquire) {
            return;
        }
        if host_ready {
            accept_batch(&shared, &host, Side::Host);
        }
        if enclave_ready {
            accept_batch(&shared, &enclave, Side::Enclave);
        }
    }
}

fn accept_batch(shared: &Arc<Shared>, listener: &Socket, side: Side) {
    for _ in 0..ACCEPT_BATCH {
        match listener.accept() {
            Ok((conn, _)) => {
                // Accepted sockets do not inherit O_NONBLOCK; keep them blocking.
                dispatch(shared, conn, side);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                shared.warn("broker accept failed", &e);
                std::thread::sleep(Duration::from_millis(50));
                return;
            }
        }
    }
}

fn dispatch(shared: &Arc<Shared>, conn: Socket, side: Side) {
    let (counter, cap) = match side {
        Side::Host => (&shared.host_pending, shared.limits.max_host_pending),
        Side::Enclave => (&shared.enclave_conns, shared.limits.max_enclave_connections),
    };
    if counter.fetch_add(1, Ordering::AcqRel) >= cap {
        counter.fetch_sub(1, Ordering::AcqRel);
        shared.rejected.fetch_add(1, Ordering::Relaxed);
        if let Side::Enclave = side {
            // Best effort: tell the enclave why, without ever blocking on it.
            let _ = conn.send_with_flags(
                proto::err_line(libc::EAGAIN).as_bytes(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            );
        }
        shared.warn("connection cap reached; connection dropped", &cap);
        return;
    }
    shared.workers.fetch_add(1, Ordering::AcqRel);
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let slot = Slot {
        shared: Arc::clone(shared),
        side,
        id,
    };
    match conn.try_clone() {
        Ok(clone) => {
            lock(&shared.live).insert(id, clone);
        }
        Err(e) => {
            shared.warn("cannot track a connection", &e);
            return;
        }
    }
    let spawned = std::thread::Builder::new()
        .name(format!("vsock-broker-{}-conn", shared.cid))
        .stack_size(256 * 1024)
        .spawn(move || {
            let shared = Arc::clone(&slot.shared);
            let span = tracing::info_span!("vsock_broker", cid = shared.cid);
            let _enter = span.enter();
            if shared.stopping.load(Ordering::Acquire) {
                return;
            }
            match side {
                Side::Host => serve_host(&shared, conn),
                Side::Enclave => serve_enclave(&shared, conn),
            }
            drop(slot);
        });
    if let Err(e) = spawned {
        shared.warn("cannot spawn a broker thread", &e);
    }
}

fn set_timeouts(sock: &Socket, timeout: Option<Duration>) -> io::Result<()> {
    sock.set_read_timeout(timeout)?;
    sock.set_write_timeout(timeout)
}

/// A host client on `<cid>.sock`: `CONNECT <port>`, then hand its connection to the listener.
fn serve_host(shared: &Arc<Shared>, conn: Socket) {
    if let Err(e) = set_timeouts(&conn, Some(shared.limits.handshake_timeout)) {
        shared.warn("host connection setup failed", &e);
        return;
    }
    let mut line = LineBuf::new();
    if let Err(e) = proto::read_line(&mut &conn, &mut line) {
        shared.warn("bad host handshake", &e);
        return;
    }
    let port = match proto::parse_host_connect(line.line()) {
        Ok(p) => p,
        Err(e) => {
            shared.warn("bad host CONNECT line", &e);
            return;
        }
    };
    let Some(listener) = lock(&shared.listeners).get(&port).cloned() else {
        tracing::debug!(port, "host connect to a port nobody listens on");
        return;
    };
    let host_port = shared.ephemeral_port();
    if let Err(e) = (&conn).write_all(proto::ok_line(Some(host_port)).as_bytes()) {
        shared.warn("cannot answer a host client", &e);
        return;
    }
    if let Err(e) = set_timeouts(&conn, None) {
        shared.warn("host connection setup failed", &e);
        return;
    }
    let ctl = lock(&listener.ctl);
    let accept = proto::accept_line(VsockAddr::new(PARENT_CID, host_port));
    match send_with_fd(ctl.as_fd(), accept.as_bytes(), Some(conn.as_fd())) {
        Ok(()) => {
            shared.streams.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => {
            drop(ctl);
            shared.warn("cannot pass a connection to the enclave listener", &e);
            remove_listener(shared, port, listener.id);
        }
    }
}

fn remove_listener(shared: &Shared, port: u32, id: u64) {
    let mut listeners = lock(&shared.listeners);
    if listeners.get(&port).is_some_and(|l| l.id == id) {
        if let Some(l) = listeners.remove(&port) {
            let _ = lock(&l.ctl).shutdown(Shutdown::Both);
        }
    }
}

fn reply(shared: &Shared, conn: &Socket, line: &str) -> bool {
    match (&*conn).write_all(line.as_bytes()) {
        Ok(()) => true,
        Err(e) => {
            shared.warn("cannot answer the enclave", &e);
            false
        }
    }
}

/// An enclave connection on the enclave-facing socket.
fn serve_enclave(shared: &Arc<Shared>, conn: Socket) {
    if let Err(e) = set_timeouts(&conn, Some(shared.limits.handshake_timeout)) {
        shared.warn("enclave connection setup failed", &e);
        return;
    }
    let mut line = LineBuf::new();
    if let Err(e) = proto::read_line(&mut &conn, &mut line) {
        shared.warn("bad enclave request", &e);
        return;
    }
    let request = match proto::parse_enclave_request(line.line()) {
        Ok(r) => r,
        Err(e) => {
            shared.warn("bad enclave request line", &e);
            reply(shared, &conn, &proto::err_line(libc::EINVAL));
            return;
        }
    };
    match request {
        EnclaveRequest::Connect(addr) if addr.cid == PARENT_CID => {
            if addr.port == HEARTBEAT_PORT && !shared.heartbeat_claimed.swap(true, Ordering::AcqRel)
            {
                heartbeat(shared, &conn);
            } else {
                connect_parent(shared, &conn, addr.port);
            }
        }
        EnclaveRequest::Connect(addr) if addr.cid == VMADDR_CID_HYPERVISOR => {
            if addr.port == NSM_PORT {
                let src = shared.ephemeral_port();
                if reply(shared, &conn, &proto::ok_line(Some(src))) {
                    serve_nsm(shared, &conn);
                }
            } else {
                reply(shared, &conn, &proto::err_line(libc::ECONNREFUSED));
            }
        }
        EnclaveRequest::Connect(addr) => {
            tracing::debug!(%addr, "enclave tried to reach a cid other than 3 or 0");
            reply(shared, &conn, &proto::err_line(libc::EACCES));
        }
        EnclaveRequest::Listen(port) => listen(shared, conn, port),
    }
}

/// The boot heartbeat: `OK`, then 0xB7 in and out on this same connection.
fn heartbeat(shared: &Arc<Shared>, conn: &Socket) {
    let src = shared.ephemeral_port();
    if !reply(shared, conn, &proto::ok_line(Some(src))) {
        return;
    }
    let mut byte = [0u8; 1];
    match (&*conn).read(&mut byte) {
        Ok(1) if byte[0] == HEARTBEAT_BYTE => {
            if let Err(e) = (&*conn).write_all(&[HEARTBEAT_BYTE]) {
                shared.warn("cannot echo the heartbeat", &e);
            }
            shared.mark_booted();
        }
        Ok(1) => shared.warn("wrong heartbeat byte", &byte[0]),
        Ok(_) => shared.warn("heartbeat connection closed", &"no byte"),
        Err(e) => shared.warn("heartbeat read failed", &e),
    }
}

/// `CONNECT 3 <port>`: dial `3_<port>.sock` (checked, as the enclave's host identity), send
/// the preamble, pass the socket back.
fn connect_parent(shared: &Arc<Shared>, conn: &Socket, port: u32) {
    let name = format!("{PARENT_CID}_{port}.sock");
    let timeout = shared.limits.handshake_timeout;
    let host = match shared.fabric.connect(&name, shared.identity, Some(timeout)) {
        Ok(s) => s,
        Err(e) => {
            match e {
                FabricError::Missing(_) | FabricError::Io { .. } => {
                    tracing::debug!(port, error = %e, "enclave connect to the parent failed");
                }
                // Something planted in the fabric, or a broken setup: worth a (rate-limited)
                // warning.
                _ => shared.warn("refused a fabric entry", &e),
            }
            reply(shared, conn, &proto::err_line(e.errno()));
            return;
        }
    };
    let src = shared.ephemeral_port();
    let preamble = proto::connect_from_line(VsockAddr::new(shared.cid, src));
    let sent = set_timeouts(&host, Some(timeout))
        .and_then(|()| (&host).write_all(preamble.as_bytes()))
        .and_then(|()| set_timeouts(&host, None));
    if let Err(e) = sent {
        shared.warn("cannot send CONNECT-FROM to a host listener", &e);
        reply(shared, conn, &proto::err_line(libc::ECONNRESET));
        return;
    }
    match send_with_fd(
        conn.as_fd(),
        proto::ok_line(Some(src)).as_bytes(),
        Some(host.as_fd()),
    ) {
        Ok(()) => {
            shared.streams.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => shared.warn("cannot pass a connection to the enclave", &e),
    }
}

/// The NSM channel: frames until the enclave closes it.
fn serve_nsm(shared: &Arc<Shared>, conn: &Socket) {
    // Idle NSM channels may stay open (they count against the connection cap); a frame that
    // has started must finish within the handshake timeout is not enforced separately: the
    // whole frame is read with no timeout, which is bounded by the cap on connections.
    if let Err(e) = conn.set_read_timeout(None) {
        shared.warn("NSM channel setup failed", &e);
        return;
    }
    // This thread serves the enclave's NSM requests from now on: on the enclave's CPUs.
    if !shared.nsm_cpus.is_empty() {
        if let Err(e) = pin_current_thread(&shared.nsm_cpus) {
            shared.warn("cannot pin an NSM channel to the enclave's CPUs", &e);
        }
    }
    loop {
        let request = match read_frame(&mut &*conn, NSM_FRAME_HARD_CAP) {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(FrameError::TooLarge { len, .. }) => {
                shared.warn("NSM frame over the hard cap; closing", &len);
                return;
            }
            Err(e) => {
                tracing::debug!(error = %e, "NSM channel ended");
                return;
            }
        };
        let response = {
            let _turn = shared.nsm_gate.acquire();
            shared.nsm.handle(&request)
        };
        if let Err(e) = write_frame(&mut &*conn, &response) {
            shared.warn("cannot send an NSM response", &e);
            return;
        }
    }
}

/// `LISTEN <port>`: register the control connection, then hold it until it closes.
fn listen(shared: &Arc<Shared>, conn: Socket, port: u32) {
    let ctl = match conn.try_clone() {
        Ok(c) => c,
        Err(e) => {
            shared.warn("cannot register a listener", &e);
            return;
        }
    };
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let listener = Arc::new(Listener {
        id,
        ctl: Mutex::new(ctl),
    });
    {
        // Hold the control lock until OK is written, so no ACCEPT can overtake it.
        let guard = lock(&listener.ctl);
        {
            let mut listeners = lock(&shared.listeners);
            if listeners.contains_key(&port) {
                drop(listeners);
                reply(shared, &conn, &proto::err_line(libc::EADDRINUSE));
                return;
            }
            if listeners.len() >= shared.limits.max_listeners {
                drop(listeners);
                shared.rejected.fetch_add(1, Ordering::Relaxed);
                shared.warn("listener cap reached", &shared.limits.max_listeners);
                reply(shared, &conn, &proto::err_line(libc::ENOBUFS));
                return;
            }
            listeners.insert(port, Arc::clone(&listener));
        }
        if !reply(shared, &guard, &proto::ok_line(None)) {
            drop(guard);
            remove_listener(shared, port, id);
            return;
        }
    }
    tracing::debug!(port, "enclave listening");
    // The enclave sends nothing more on a listener connection: any byte or the end of the
    // stream ends the listener. A stalled enclave that stops reading makes the broker's
    // `ACCEPT` sends time out, which also ends the listener.
    let _ = conn.set_read_timeout(None);
    let mut byte = [0u8; 1];
    loop {
        match (&conn).read(&mut byte) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Ok(n) if n > 0 => shared.warn("unexpected bytes on a listener connection", &port),
            _ => {}
        }
        break;
    }
    remove_listener(shared, port, id);
    tracing::debug!(port, "enclave listener closed");
}
