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
//!
//! Its parts: `config` (what a broker is given), `shared` (the state its threads share),
//! `accept` (the accept loop and the connection caps), `host` and `enclave` (the two sides'
//! protocols); this module starts and stops a broker.

mod accept;
mod config;
mod enclave;
mod host;
mod shared;

use std::collections::HashMap;
use std::io;
use std::net::Shutdown;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use socket2::Socket;

use crate::addr::is_enclave_cid;
use crate::hostfs::{bind_unix_replacing_stale, remove_if_same, set_entry_group, BindError};
use crate::ratelimit::RateLimiter;
use crate::stream::ensure_fabric_dir;
use accept::accept_loop;
use shared::{lock, nsm_workers, NsmGate, Shared, FIRST_EPHEMERAL_PORT};

pub use config::{BrokerConfig, BrokerLimits, HeartbeatCallback, NsmService};

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

/// How long `shutdown` waits for worker threads to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

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
