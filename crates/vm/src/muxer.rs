//! The connection multiplexer behind the vhost-user vsock device: it turns the guest's vsock
//! packets into host Unix-socket streams on the Cloister fabric and back, with the virtio-vsock
//! credit-based flow control.
//!
//! It holds no guest memory: the device ([`crate::device`]) decodes each TX packet into a
//! [`Header`] and a payload and calls [`Muxer::on_guest_packet`]; for each RX buffer it calls
//! [`Muxer::next_rx`], which yields a control packet or data read from a host socket. Host-side
//! events (sockets, the listener, a timer) come through one epoll descriptor
//! ([`Muxer::epoll_fd`]) that the device registers with the vhost-user worker thread; when it
//! fires the device calls [`Muxer::process_host_events`].
//!
//! Routing is the broker's (`cloister_vsock::broker`), so a VM enclave and a process enclave look
//! the same to parent processes:
//! - guest `REQUEST` to `(3, P)`: connect `<fabric>/3_P.sock`, write
//!   `CONNECT-FROM <cid> <guest_port>\n`, answer `RESPONSE` (or `RST` when nothing listens or
//!   the entry is refused, see below); the first request to `(3, 9000)` is the boot heartbeat,
//!   answered here (0xB7 echoed);
//! - guest `REQUEST` to `(0, 1)`: the NSM channel (u32 big-endian length-prefixed CBOR frames),
//!   served by the [`NsmService`]; other cid-0 ports and other cids: `RST`;
//! - a parent connects `<fabric>/<cid>.sock` and writes `CONNECT <port>\n`: the muxer sends the
//!   guest a `REQUEST` from `(3, <host_port>)`; on `RESPONSE` it writes `OK <host_port>\n` and
//!   the connection is the stream; on `RST` or after [`Limits::handshake_timeout`] it closes the
//!   connection with no answer.
//!
//! The fabric directory is shared by every host user and the device runs as root, so it follows
//! the broker's filesystem rules (`cloister_vsock::hostfs`): it dials `3_P.sock` through
//! [`FabricDir::connect`] (no symlink, a singly linked socket served by root or its owner) with
//! the enclave's unprivileged [`HostIdentity`] ([`MuxerConfig::enclave_identity`]), so a parent
//! listener never sees root as the peer of an enclave's connection; and it binds `<cid>.sock` as
//! an [`EnclaveHostSocket`], which replaces only a stale socket of its own and carries the
//! enclave's gid as its group, so listeners believe the `CONNECT-FROM <cid>` preamble of a
//! connection made with that identity.
//!
//! Threat model: the guest is hostile. Every header field is checked; a guest that writes more
//! than the credit it was given, answers out of turn or uses an unknown connection gets `RST`;
//! connections, pending host handshakes, queued control packets and per-connection buffers are
//! capped by [`Limits`]; packets with a foreign source cid are dropped; log lines a guest can
//! trigger are rate-limited. Memory held per guest is at most
//! `max_connections * BUF_ALLOC` plus small constants.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use cloister_vsock::broker::NsmService;
use cloister_vsock::hostfs::{
    EnclaveHostSocket, FabricDir, FabricError, HostIdentity, HostSocketError,
};
use cloister_vsock::nsm_frame::{read_frame, write_frame, NSM_FRAME_HARD_CAP};
use cloister_vsock::proto::{self, LineBuf};
use cloister_vsock::ratelimit::RateLimiter;
use cloister_vsock::{HEARTBEAT_BYTE, HEARTBEAT_PORT, NSM_PORT, PARENT_CID, VMADDR_CID_HYPERVISOR};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};

use crate::packet::{
    Header, OP_CREDIT_REQUEST, OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE, OP_RST, OP_RW,
    OP_SHUTDOWN, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM,
};

/// Receive buffer this device offers the guest per connection (bytes it may send unacknowledged).
pub const BUF_ALLOC: u32 = 256 * 1024;
/// Consumed bytes after which an unsolicited CREDIT_UPDATE is sent.
pub const CREDIT_UPDATE_THRESHOLD: u32 = BUF_ALLOC / 4;
/// Largest payload of one packet in either direction.
pub const MAX_PKT_DATA: usize = 64 * 1024;
/// Longest a heartbeat connection waits for its byte.
pub const HEARTBEAT_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Timer period for handshake deadlines.
const TICK: Duration = Duration::from_millis(250);
/// Events fetched per epoll_wait.
const EVENT_BATCH: usize = 64;

const TOKEN_LISTENER: u64 = 0;
const TOKEN_TIMER: u64 = 1;
const FIRST_TOKEN: u64 = 2;
/// First port handed to host-initiated connections (below are the well-known ports).
const FIRST_HOST_PORT: u32 = 1024;

/// Caps on what one guest (and the parents dialling it) can make the device hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Concurrent connections (both directions, services included).
    pub max_connections: usize,
    /// Host connections still sending their `CONNECT` line or waiting for the guest.
    pub max_host_pending: usize,
    /// Control packets (RST, RESPONSE, CREDIT_UPDATE, ...) waiting for an RX buffer.
    pub max_control_queue: usize,
    /// Longest a host client may take to send its line, and the guest to answer its REQUEST.
    pub handshake_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 128,
            max_host_pending: 64,
            max_control_queue: 1024,
            handshake_timeout: Duration::from_secs(5),
        }
    }
}

/// Errors setting the muxer up (the data path reports nothing: it resets connections).
#[derive(Debug, thiserror::Error)]
pub enum MuxerError {
    /// Another live process serves this cid on the fabric.
    #[error("cid {cid} is already served ({path})")]
    CidInUse {
        /// The cid.
        cid: u32,
        /// Its socket.
        path: PathBuf,
    },
    /// The fabric directory does not meet the rules.
    #[error("vsock fabric")]
    Fabric(#[source] FabricError),
    /// A system call failed.
    #[error("vsock device: {context}")]
    Io {
        /// What was being done.
        context: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

fn io_err(context: &'static str) -> impl FnOnce(io::Error) -> MuxerError {
    move |source| MuxerError::Io { context, source }
}

fn nix_err(context: &'static str) -> impl FnOnce(nix::errno::Errno) -> MuxerError {
    move |e| MuxerError::Io {
        context,
        source: io::Error::from(e),
    }
}

/// The boot heartbeat's state, shared with the heartbeat thread and the enclave handle.
pub struct Heartbeat {
    booted: Mutex<bool>,
    cond: Condvar,
    callback: Option<Box<dyn Fn() + Send + Sync>>,
}

impl Heartbeat {
    /// A heartbeat not received yet; `callback` runs once when it arrives.
    pub fn new(callback: Option<Box<dyn Fn() + Send + Sync>>) -> Self {
        Self {
            booted: Mutex::new(false),
            cond: Condvar::new(),
            callback,
        }
    }

    fn mark(&self) {
        let mut booted = self.booted.lock().unwrap_or_else(|p| p.into_inner());
        if !*booted {
            *booted = true;
            self.cond.notify_all();
            drop(booted);
            if let Some(cb) = &self.callback {
                cb();
            }
        }
    }

    /// True once the heartbeat arrived.
    pub fn booted(&self) -> bool {
        *self.booted.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits up to `timeout` for the heartbeat; true when it arrived.
    pub fn wait(&self, timeout: Duration) -> bool {
        let guard = self.booted.lock().unwrap_or_else(|p| p.into_inner());
        let (guard, _) = self
            .cond
            .wait_timeout_while(guard, timeout, |b| !*b)
            .unwrap_or_else(|p| p.into_inner());
        *guard
    }
}

impl std::fmt::Debug for Heartbeat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Heartbeat")
            .field("booted", &self.booted())
            .finish_non_exhaustive()
    }
}

/// How to build a muxer.
pub struct MuxerConfig {
    /// The guest's cid.
    pub cid: u32,
    /// The fabric directory (`<run>/vsock`).
    pub fabric_dir: PathBuf,
    /// The enclave's NSM.
    pub nsm: Arc<dyn NsmService>,
    /// The boot heartbeat.
    pub heartbeat: Arc<Heartbeat>,
    /// Resource caps.
    pub limits: Limits,
    /// Bind `<fabric>/<cid>.sock` for host-initiated connections (false in fuzzing).
    pub bind_host_socket: bool,
    /// The enclave's host identity (the uid and gid it runs as on the host): connections to
    /// parent listeners carry it, and `<cid>.sock` gets its gid as group. `None` only where the
    /// device does not run as root (tests, fuzzing): root's connections would then carry root's
    /// credentials.
    pub enclave_identity: Option<HostIdentity>,
}

/// Identifies a connection: the host-side address and the guest port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    host_cid: u32,
    host_port: u32,
    guest_port: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Host-initiated: REQUEST sent to the guest, waiting for RESPONSE.
    Connecting(Instant),
    Established,
}

struct Conn {
    sock: UnixStream,
    token: u64,
    state: State,
    /// Bytes for the host socket; the first `preamble` of them are our handshake line, not
    /// guest data.
    to_host: VecDeque<u8>,
    preamble: usize,
    fwd_cnt: u32,
    fwd_cnt_sent: u32,
    credit_update_queued: bool,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    tx_cnt: u32,
    /// The host socket may have data (or EOF) for the guest.
    readable: bool,
    /// Registered interest, `None` once deregistered after a hang-up.
    interest: Option<EpollFlags>,
    host_eof: bool,
    guest_no_send: bool,
    guest_no_recv: bool,
    /// Remove once `to_host` has drained.
    closing: bool,
}

impl Conn {
    fn new(sock: UnixStream, token: u64, state: State) -> Self {
        Self {
            sock,
            token,
            state,
            to_host: VecDeque::new(),
            preamble: 0,
            fwd_cnt: 0,
            fwd_cnt_sent: 0,
            credit_update_queued: false,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            tx_cnt: 0,
            readable: false,
            interest: Some(EpollFlags::empty()),
            host_eof: false,
            guest_no_send: false,
            guest_no_recv: false,
            closing: false,
        }
    }

    /// Bytes the guest can still take from us.
    fn peer_credit(&self) -> u32 {
        let in_flight = self.tx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    fn wants_read(&self) -> bool {
        self.state == State::Established && !self.host_eof && !self.guest_no_recv
    }

    fn desired_interest(&self) -> EpollFlags {
        let mut f = EpollFlags::empty();
        if self.wants_read() && !self.readable {
            f |= EpollFlags::EPOLLIN;
        }
        if !self.to_host.is_empty() {
            f |= EpollFlags::EPOLLOUT;
        }
        f
    }

    /// Writes what it can of `to_host`. Err: the host end is gone.
    fn flush(&mut self) -> io::Result<()> {
        while !self.to_host.is_empty() {
            let (a, _) = self.to_host.as_slices();
            match self.sock.write(a) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.to_host.drain(..n);
                    let from_preamble = n.min(self.preamble);
                    self.preamble -= from_preamble;
                    let data = u32::try_from(n - from_preamble).unwrap_or(u32::MAX);
                    self.fwd_cnt = self.fwd_cnt.wrapping_add(data);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.guest_no_send {
            let _ = self.sock.shutdown(Shutdown::Write);
        }
        Ok(())
    }
}

/// A control packet waiting for an RX buffer; counters are filled in when it is sent.
#[derive(Debug, Clone, Copy)]
struct Control {
    key: Key,
    op: u16,
    flags: u32,
}

struct PendingHost {
    sock: UnixStream,
    line: LineBuf,
    deadline: Instant,
}

/// Statistics for tests and monitoring.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MuxerStats {
    /// Connections open now.
    pub connections: usize,
    /// Host handshakes in progress.
    pub host_pending: usize,
    /// Control packets queued.
    pub control_queued: usize,
    /// Connections reset since start.
    pub resets: u64,
    /// Guest packets dropped (foreign source cid, control queue full), since start.
    pub dropped: u64,
}

/// The multiplexer (one per guest).
pub struct Muxer {
    cid: u32,
    fabric: FabricDir,
    identity: Option<HostIdentity>,
    nsm: Arc<dyn NsmService>,
    heartbeat: Arc<Heartbeat>,
    heartbeat_claimed: bool,
    limits: Limits,
    epoll: Epoll,
    _timer: TimerFd,
    listener: Option<EnclaveHostSocket>,
    conns: HashMap<Key, Conn>,
    by_token: HashMap<u64, Key>,
    pending: HashMap<u64, PendingHost>,
    next_token: u64,
    next_host_port: u32,
    control: VecDeque<Control>,
    ready: VecDeque<Key>,
    stats: MuxerStats,
    log: RateLimiter,
    shutting_down: Arc<AtomicBool>,
}

impl std::fmt::Debug for Muxer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Muxer")
            .field("cid", &self.cid)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// Binds `<fabric>/<cid>.sock` (non-blocking), replacing a stale socket of ours but nothing
/// else.
fn bind_host_socket(
    fabric_dir: &Path,
    cid: u32,
    identity: Option<HostIdentity>,
) -> Result<EnclaveHostSocket, MuxerError> {
    let socket = EnclaveHostSocket::bind(fabric_dir, cid, identity).map_err(|e| match e {
        HostSocketError::InUse(path) => MuxerError::CidInUse { cid, path },
        HostSocketError::Io { context, source } => MuxerError::Io { context, source },
    })?;
    socket
        .socket()
        .set_nonblocking(true)
        .map_err(io_err("setting the host socket non-blocking"))?;
    Ok(socket)
}

impl Muxer {
    /// Creates the muxer (and, when asked, binds the host socket).
    pub fn new(config: MuxerConfig) -> Result<Muxer, MuxerError> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(nix_err("epoll_create"))?;
        let timer = TimerFd::new(
            ClockId::CLOCK_MONOTONIC,
            TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
        )
        .map_err(nix_err("timerfd_create"))?;
        timer
            .set(
                Expiration::Interval(TimeSpec::from_duration(TICK)),
                TimerSetTimeFlags::empty(),
            )
            .map_err(nix_err("timerfd_settime"))?;
        epoll
            .add(&timer, EpollEvent::new(EpollFlags::EPOLLIN, TOKEN_TIMER))
            .map_err(nix_err("epoll_ctl timer"))?;
        let fabric = FabricDir::open(&config.fabric_dir).map_err(MuxerError::Fabric)?;
        if config.enclave_identity.is_none() && nix::unistd::geteuid().is_root() {
            tracing::warn!(
                cid = config.cid,
                "vsock device runs as root without the enclave's host identity: host listeners \
                 will see root's credentials on the enclave's connections"
            );
        }
        let listener = if config.bind_host_socket {
            let l = bind_host_socket(&config.fabric_dir, config.cid, config.enclave_identity)?;
            epoll
                .add(
                    l.socket(),
                    EpollEvent::new(EpollFlags::EPOLLIN, TOKEN_LISTENER),
                )
                .map_err(nix_err("epoll_ctl listener"))?;
            Some(l)
        } else {
            None
        };
        Ok(Muxer {
            cid: config.cid,
            fabric,
            identity: config.enclave_identity,
            nsm: config.nsm,
            heartbeat: config.heartbeat,
            heartbeat_claimed: false,
            limits: config.limits,
            epoll,
            _timer: timer,
            listener,
            conns: HashMap::new(),
            by_token: HashMap::new(),
            pending: HashMap::new(),
            next_token: FIRST_TOKEN,
            next_host_port: FIRST_HOST_PORT,
            control: VecDeque::new(),
            ready: VecDeque::new(),
            stats: MuxerStats::default(),
            log: RateLimiter::new(20, Duration::from_secs(60)),
            shutting_down: Arc::new(AtomicBool::new(false)),
        })
    }

    /// The descriptor that becomes readable when host-side work is waiting.
    pub fn epoll_fd(&self) -> RawFd {
        self.epoll.0.as_raw_fd()
    }

    /// The host socket's path, when bound.
    pub fn host_socket(&self) -> Option<&Path> {
        self.listener.as_ref().map(EnclaveHostSocket::path)
    }

    /// Counters.
    pub fn stats(&self) -> MuxerStats {
        MuxerStats {
            connections: self.conns.len(),
            host_pending: self.pending.len(),
            control_queued: self.control.len(),
            ..self.stats
        }
    }

    fn warn(&self, what: std::fmt::Arguments<'_>) {
        if self.log.check().is_some() {
            tracing::warn!(cid = self.cid, "{what}");
        }
    }

    fn token(&mut self) -> u64 {
        let t = self.next_token;
        self.next_token = self.next_token.wrapping_add(1).max(FIRST_TOKEN);
        t
    }

    fn queue_control(&mut self, key: Key, op: u16, flags: u32) -> bool {
        if self.control.len() >= self.limits.max_control_queue {
            self.stats.dropped += 1;
            return false;
        }
        self.control.push_back(Control { key, op, flags });
        true
    }

    /// True when [`Muxer::next_rx`] may have something for the guest.
    pub fn has_rx(&self) -> bool {
        !self.control.is_empty() || !self.ready.is_empty()
    }

    /// Removes a connection (closing its host socket).
    fn remove(&mut self, key: Key) {
        if let Some(conn) = self.conns.remove(&key) {
            if conn.interest.is_some() {
                let _ = self.epoll.delete(&conn.sock);
            }
            self.by_token.remove(&conn.token);
        }
    }

    /// Resets a connection: RST to the guest, host socket closed.
    fn reset(&mut self, key: Key) {
        self.stats.resets += 1;
        self.remove(key);
        self.queue_control(key, OP_RST, 0);
    }

    /// Brings a connection's epoll registration in line with what it waits for.
    fn sync(&mut self, key: Key) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if conn.closing && conn.to_host.is_empty() {
            self.remove(key);
            return;
        }
        if conn.readable
            && conn.wants_read()
            && conn.peer_credit() > 0
            && !self.ready.contains(&key)
        {
            self.ready.push_back(key);
        }
        let Some(current) = conn.interest else {
            return;
        };
        let want = conn.desired_interest();
        if want != current {
            let mut ev = EpollEvent::new(want, conn.token);
            if self.epoll.modify(&conn.sock, &mut ev).is_ok() {
                conn.interest = Some(want);
            }
        }
    }

    fn register(&mut self, key: Key, conn: Conn) -> bool {
        if self
            .epoll
            .add(&conn.sock, EpollEvent::new(EpollFlags::empty(), conn.token))
            .is_err()
        {
            return false;
        }
        self.by_token.insert(conn.token, key);
        self.conns.insert(key, conn);
        true
    }

    // ---- guest -> host ----

    /// Handles one packet the guest sent on its TX queue. `data` is the payload (the device
    /// guarantees `data.len() == header.len as usize <= MAX_PKT_DATA`).
    pub fn on_guest_packet(&mut self, h: &Header, data: &[u8]) {
        if h.src_cid != u64::from(self.cid) {
            self.stats.dropped += 1;
            self.warn(format_args!(
                "guest packet with source cid {} dropped",
                h.src_cid
            ));
            return;
        }
        // Only the parent and the hypervisor's services are reachable; u32::MAX marks the
        // rest (never another enclave).
        let host_cid = if h.dst_cid == u64::from(PARENT_CID) {
            PARENT_CID
        } else if h.dst_cid == u64::from(VMADDR_CID_HYPERVISOR) {
            VMADDR_CID_HYPERVISOR
        } else {
            u32::MAX
        };
        let key = Key {
            host_cid,
            host_port: h.dst_port,
            guest_port: h.src_port,
        };
        if h.op == OP_RST {
            self.remove(key);
            return;
        }
        if h.type_ != TYPE_STREAM || host_cid == u32::MAX || data.len() != h.len as usize {
            self.reset(key);
            return;
        }
        if h.op == OP_REQUEST {
            if self.conns.contains_key(&key) {
                self.reset(key);
            } else {
                self.open_guest_connection(key, h);
            }
            return;
        }
        let Some(conn) = self.conns.get_mut(&key) else {
            self.queue_control(key, OP_RST, 0);
            return;
        };
        conn.peer_buf_alloc = h.buf_alloc;
        conn.peer_fwd_cnt = h.fwd_cnt;
        match h.op {
            OP_RESPONSE => {
                if !matches!(conn.state, State::Connecting(_)) {
                    self.reset(key);
                    return;
                }
                conn.state = State::Established;
                let line = proto::ok_line(Some(key.host_port));
                conn.preamble += line.len();
                conn.to_host.extend(line.as_bytes());
                if conn.flush().is_err() {
                    self.reset(key);
                    return;
                }
            }
            OP_RW => {
                let room = (BUF_ALLOC as usize).saturating_sub(conn.to_host.len() - conn.preamble);
                if conn.state != State::Established || conn.guest_no_send || data.len() > room {
                    self.warn(format_args!(
                        "guest port {} broke the stream protocol (credit or state); reset",
                        key.guest_port
                    ));
                    self.reset(key);
                    return;
                }
                if conn.closing {
                    return;
                }
                conn.to_host.extend(data);
                if conn.flush().is_err() {
                    self.reset(key);
                    return;
                }
                self.maybe_credit_update(key);
            }
            OP_SHUTDOWN => {
                if h.flags & SHUTDOWN_SEND != 0 {
                    conn.guest_no_send = true;
                    if conn.to_host.is_empty() {
                        let _ = conn.sock.shutdown(Shutdown::Write);
                    }
                }
                if h.flags & SHUTDOWN_RCV != 0 {
                    conn.guest_no_recv = true;
                }
                if conn.guest_no_send && conn.guest_no_recv {
                    // Full close: acknowledge with RST, deliver what is buffered, then close.
                    conn.closing = true;
                    self.queue_control(key, OP_RST, 0);
                }
            }
            OP_CREDIT_UPDATE => {}
            OP_CREDIT_REQUEST => {
                if !conn.credit_update_queued {
                    conn.credit_update_queued = true;
                    self.queue_control(key, OP_CREDIT_UPDATE, 0);
                }
            }
            _ => {
                self.reset(key);
                return;
            }
        }
        self.sync(key);
    }

    fn maybe_credit_update(&mut self, key: Key) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if !conn.credit_update_queued
            && conn.fwd_cnt.wrapping_sub(conn.fwd_cnt_sent) >= CREDIT_UPDATE_THRESHOLD
        {
            conn.credit_update_queued = true;
            self.queue_control(key, OP_CREDIT_UPDATE, 0);
        }
    }

    fn open_guest_connection(&mut self, key: Key, h: &Header) {
        if self.conns.len() >= self.limits.max_connections {
            self.stats.dropped += 1;
            self.warn(format_args!(
                "guest connection refused: connection cap reached"
            ));
            self.queue_control(key, OP_RST, 0);
            return;
        }
        let sock = match (key.host_cid, key.host_port) {
            (PARENT_CID, HEARTBEAT_PORT) if !self.heartbeat_claimed => {
                self.heartbeat_claimed = true;
                self.spawn_heartbeat()
            }
            (VMADDR_CID_HYPERVISOR, NSM_PORT) => self.spawn_nsm(),
            (PARENT_CID, port) => self.connect_parent(port, key.guest_port),
            _ => None,
        };
        let Some((sock, preamble)) = sock else {
            self.queue_control(key, OP_RST, 0);
            return;
        };
        let token = self.token();
        let mut conn = Conn::new(sock, token, State::Established);
        conn.peer_buf_alloc = h.buf_alloc;
        conn.peer_fwd_cnt = h.fwd_cnt;
        conn.preamble = preamble.len();
        conn.to_host.extend(preamble.as_bytes());
        if conn.flush().is_err() || !self.register(key, conn) {
            self.queue_control(key, OP_RST, 0);
            return;
        }
        if !self.queue_control(key, OP_RESPONSE, 0) {
            self.remove(key);
            return;
        }
        self.sync(key);
    }

    /// Connects `<fabric>/3_<port>.sock` without blocking (a full backlog is a refusal), with
    /// the fabric's checks and as the enclave's host identity; any failure is a refusal (`RST`).
    fn connect_parent(&self, port: u32, guest_port: u32) -> Option<(UnixStream, String)> {
        let name = format!("{PARENT_CID}_{port}.sock");
        let sock = match self.fabric.connect(&name, self.identity, None) {
            Ok(sock) => sock,
            // Nothing (or nothing live) listens: the guest's ordinary refusal.
            Err(FabricError::Missing(_) | FabricError::Io { .. }) => return None,
            // Something planted in the fabric, or a broken setup.
            Err(e) => {
                self.warn(format_args!("guest connection to {name} refused: {e}"));
                return None;
            }
        };
        let stream = UnixStream::from(OwnedFd::from(sock));
        let line = proto::connect_from_line(cloister_vsock::VsockAddr::new(self.cid, guest_port));
        Some((stream, line))
    }

    fn service_pair() -> Option<(UnixStream, UnixStream)> {
        let (a, b) = UnixStream::pair().ok()?;
        a.set_nonblocking(true).ok()?;
        Some((a, b))
    }

    fn spawn_heartbeat(&self) -> Option<(UnixStream, String)> {
        let (ours, mut theirs) = Self::service_pair()?;
        let hb = self.heartbeat.clone();
        std::thread::Builder::new()
            .name("vsock-heartbeat".into())
            .spawn(move || {
                let _ = theirs.set_read_timeout(Some(HEARTBEAT_READ_TIMEOUT));
                let mut b = [0u8; 1];
                if theirs.read_exact(&mut b).is_ok()
                    && b[0] == HEARTBEAT_BYTE
                    && theirs.write_all(&b).is_ok()
                {
                    hb.mark();
                }
            })
            .ok()?;
        Some((ours, String::new()))
    }

    fn spawn_nsm(&self) -> Option<(UnixStream, String)> {
        let (ours, theirs) = Self::service_pair()?;
        let nsm = self.nsm.clone();
        let stop = self.shutting_down.clone();
        std::thread::Builder::new()
            .name("vsock-nsm".into())
            .spawn(move || {
                let mut r = &theirs;
                while !stop.load(Ordering::Relaxed) {
                    match read_frame(&mut r, NSM_FRAME_HARD_CAP) {
                        Ok(Some(request)) => {
                            let response = nsm.handle(&request);
                            let mut w = &theirs;
                            if write_frame(&mut w, &response).is_err() {
                                break;
                            }
                        }
                        _ => break,
                    }
                }
            })
            .ok()?;
        Some((ours, String::new()))
    }

    // ---- host -> guest ----

    /// Fills one RX buffer: the next control packet, or data from a readable host socket.
    /// `out` is the buffer's payload area; returns the header and the payload length.
    pub fn next_rx(&mut self, out: &mut [u8]) -> Option<(Header, usize)> {
        while let Some(c) = self.control.pop_front() {
            let mut h = self.header(c.key, c.op);
            h.flags = c.flags;
            if let Some(conn) = self.conns.get_mut(&c.key) {
                if c.op == OP_CREDIT_UPDATE {
                    conn.credit_update_queued = false;
                }
                conn.fwd_cnt_sent = conn.fwd_cnt;
            } else if c.op != OP_RST {
                // The connection went away while this waited; only RSTs outlive it.
                continue;
            }
            return Some((h, 0));
        }
        while let Some(key) = self.ready.pop_front() {
            let Some(conn) = self.conns.get_mut(&key) else {
                continue;
            };
            if !conn.readable || !conn.wants_read() {
                continue;
            }
            let credit = conn.peer_credit() as usize;
            if credit == 0 {
                continue; // resumes when the guest's credit update arrives (sync)
            }
            let want = out.len().min(credit).min(MAX_PKT_DATA);
            if want == 0 {
                self.ready.push_front(key);
                return None;
            }
            match conn.sock.read(&mut out[..want]) {
                Ok(0) => {
                    conn.host_eof = true;
                    conn.readable = false;
                    self.sync(key);
                    // The host will send no more; it may still read (a half-close), so the
                    // guest's writes keep flowing until it closes or the host end fails.
                    let mut h = self.header(key, OP_SHUTDOWN);
                    h.flags = SHUTDOWN_SEND;
                    return Some((h, 0));
                }
                Ok(n) => {
                    conn.tx_cnt = conn.tx_cnt.wrapping_add(u32::try_from(n).unwrap_or(0));
                    conn.fwd_cnt_sent = conn.fwd_cnt;
                    let mut h = self.header(key, OP_RW);
                    h.len = u32::try_from(n).unwrap_or(0);
                    self.ready.push_back(key);
                    return Some((h, n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    conn.readable = false;
                    self.sync(key);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => self.ready.push_front(key),
                Err(_) => {
                    self.reset(key);
                }
            }
        }
        None
    }

    fn header(&self, key: Key, op: u16) -> Header {
        let (buf_alloc, fwd_cnt) = self
            .conns
            .get(&key)
            .map_or((0, 0), |c| (BUF_ALLOC, c.fwd_cnt));
        Header {
            src_cid: u64::from(key.host_cid),
            dst_cid: u64::from(self.cid),
            src_port: key.host_port,
            dst_port: key.guest_port,
            len: 0,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc,
            fwd_cnt,
        }
    }

    // ---- host events ----

    /// Handles everything the host side has ready (never blocks).
    pub fn process_host_events(&mut self) {
        let mut events = [EpollEvent::empty(); EVENT_BATCH];
        loop {
            let n = match self.epoll.wait(&mut events, 0u8) {
                Ok(n) => n,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => return,
            };
            for ev in &events[..n] {
                self.on_event(ev.data(), ev.events());
            }
            if n < EVENT_BATCH {
                return;
            }
        }
    }

    fn on_event(&mut self, token: u64, flags: EpollFlags) {
        match token {
            TOKEN_LISTENER => self.accept_host(),
            TOKEN_TIMER => {
                let _ = self._timer.wait();
                self.expire();
            }
            t if self.pending.contains_key(&t) => self.progress_handshake(t),
            t => {
                let Some(&key) = self.by_token.get(&t) else {
                    return;
                };
                let Some(conn) = self.conns.get_mut(&key) else {
                    return;
                };
                let hangup = flags.intersects(EpollFlags::EPOLLHUP | EpollFlags::EPOLLERR);
                if flags.contains(EpollFlags::EPOLLIN) || hangup {
                    conn.readable = true;
                }
                if hangup && conn.interest.is_some() {
                    // A hang-up is reported whatever the interest: stop watching so it cannot
                    // spin; reads and writes now find EOF or an error.
                    let _ = self.epoll.delete(&conn.sock);
                    conn.interest = None;
                }
                if (flags.contains(EpollFlags::EPOLLOUT) || hangup) && !conn.to_host.is_empty() {
                    if conn.flush().is_err() {
                        self.reset(key);
                        return;
                    }
                    self.maybe_credit_update(key);
                }
                if hangup {
                    if let Some(conn) = self.conns.get(&key) {
                        if !conn.wants_read() && conn.to_host.is_empty() && !conn.closing {
                            self.reset(key);
                            return;
                        }
                    }
                }
                self.sync(key);
            }
        }
    }

    fn accept_host(&mut self) {
        loop {
            let Some(listener) = &self.listener else {
                return;
            };
            let sock = match listener.socket().accept() {
                Ok((s, _)) => UnixStream::from(OwnedFd::from(s)),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            };
            if self.pending.len() >= self.limits.max_host_pending
                || self.conns.len() >= self.limits.max_connections
                || sock.set_nonblocking(true).is_err()
            {
                self.stats.dropped += 1;
                continue;
            }
            let token = self.token();
            if self
                .epoll
                .add(&sock, EpollEvent::new(EpollFlags::EPOLLIN, token))
                .is_err()
            {
                continue;
            }
            self.pending.insert(
                token,
                PendingHost {
                    sock,
                    line: LineBuf::new(),
                    deadline: Instant::now() + self.limits.handshake_timeout,
                },
            );
        }
    }

    fn progress_handshake(&mut self, token: u64) {
        let Some(p) = self.pending.get_mut(&token) else {
            return;
        };
        let mut byte = [0u8; 1];
        let port = loop {
            match p.sock.read(&mut byte) {
                Ok(0) => break Err(()),
                Ok(_) => match p.line.push(byte[0]) {
                    Ok(true) => break proto::parse_host_connect(p.line.line()).map_err(|_| ()),
                    Ok(false) => {}
                    Err(_) => break Err(()),
                },
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break Err(()),
            }
        };
        let Some(p) = self.pending.remove(&token) else {
            return;
        };
        let _ = self.epoll.delete(&p.sock);
        let Ok(port) = port else {
            return; // malformed line or closed: drop the connection without an answer
        };
        let Some(host_port) = self.allocate_host_port(port) else {
            return;
        };
        let key = Key {
            host_cid: PARENT_CID,
            host_port,
            guest_port: port,
        };
        let conn = Conn::new(
            p.sock,
            token,
            State::Connecting(Instant::now() + self.limits.handshake_timeout),
        );
        if self.register(key, conn) && !self.queue_control(key, OP_REQUEST, 0) {
            self.remove(key);
        }
    }

    fn allocate_host_port(&mut self, guest_port: u32) -> Option<u32> {
        for _ in 0..=self.limits.max_connections {
            let p = self.next_host_port;
            self.next_host_port = match p.checked_add(1) {
                Some(n) if n < u32::MAX => n,
                _ => FIRST_HOST_PORT,
            };
            let key = Key {
                host_cid: PARENT_CID,
                host_port: p,
                guest_port,
            };
            if !self.conns.contains_key(&key) {
                return Some(p);
            }
        }
        None
    }

    fn expire(&mut self) {
        let now = Instant::now();
        let stale: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(t, _)| *t)
            .collect();
        for t in stale {
            if let Some(p) = self.pending.remove(&t) {
                let _ = self.epoll.delete(&p.sock);
            }
        }
        let late: Vec<Key> = self
            .conns
            .iter()
            .filter(|(_, c)| matches!(c.state, State::Connecting(d) if d <= now))
            .map(|(k, _)| *k)
            .collect();
        for key in late {
            self.reset(key);
        }
    }

    /// Stops accepting host connections and removes `<fabric>/<cid>.sock`.
    pub fn close_host_socket(&mut self) {
        if let Some(listener) = self.listener.take() {
            let _ = self.epoll.delete(listener.socket());
            // Dropping it removes the file (when it is still ours).
        }
        let pending: Vec<u64> = self.pending.keys().copied().collect();
        for t in pending {
            if let Some(p) = self.pending.remove(&t) {
                let _ = self.epoll.delete(&p.sock);
            }
        }
    }

    /// Drops every connection (the guest is gone or reset its device).
    pub fn reset_all(&mut self) {
        let keys: Vec<Key> = self.conns.keys().copied().collect();
        for key in keys {
            self.remove(key);
        }
        self.control.clear();
        self.ready.clear();
    }
}

impl Drop for Muxer {
    fn drop(&mut self) {
        self.shutting_down.store(true, Ordering::Relaxed);
        // The host socket's file goes with `listener`.
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cloister_vsock::VsockAddr;
    use std::os::unix::net::UnixListener;

    const CID: u32 = 9;

    struct Echo;
    impl NsmService for Echo {
        fn handle(&self, request: &[u8]) -> Vec<u8> {
            [b"nsm:".as_slice(), request].concat()
        }
    }

    fn muxer(dir: &Path) -> (Muxer, Arc<Heartbeat>) {
        let hb = Arc::new(Heartbeat::new(None));
        let m = Muxer::new(MuxerConfig {
            cid: CID,
            fabric_dir: dir.join("vsock"),
            nsm: Arc::new(Echo),
            heartbeat: hb.clone(),
            limits: Limits::default(),
            bind_host_socket: true,
            enclave_identity: None,
        })
        .unwrap();
        (m, hb)
    }

    fn guest(op: u16, src_port: u32, dst_cid: u64, dst_port: u32, len: usize) -> Header {
        Header {
            src_cid: u64::from(CID),
            dst_cid,
            src_port,
            dst_port,
            len: len as u32,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: 65536,
            fwd_cnt: 0,
        }
    }

    /// Pumps host events until the muxer has a packet for the guest.
    fn next(m: &mut Muxer, buf: &mut [u8]) -> (Header, Vec<u8>) {
        for _ in 0..500 {
            m.process_host_events();
            if let Some((h, n)) = m.next_rx(buf) {
                return (h, buf[..n].to_vec());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("nothing for the guest");
    }

    #[test]
    fn refused_ports_and_other_cids_get_rst() {
        let dir = tempfile::tempdir().unwrap();
        let (mut m, _) = muxer(dir.path());
        let mut buf = [0u8; 4096];
        m.on_guest_packet(&guest(OP_REQUEST, 1025, 3, 4444, 0), &[]);
        let (h, _) = next(&mut m, &mut buf);
        assert_eq!(
            (h.op, h.src_cid, h.src_port, h.dst_port),
            (OP_RST, 3, 4444, 1025)
        );
        assert_eq!(h.dst_cid, u64::from(CID));
        // Another enclave (cid 10) is unreachable; so is the host cid 2.
        for cid in [10u64, 2, u64::MAX] {
            m.on_guest_packet(&guest(OP_REQUEST, 1026, cid, 5000, 0), &[]);
            assert_eq!(next(&mut m, &mut buf).0.op, OP_RST);
        }
        // Data on a connection that does not exist.
        m.on_guest_packet(&guest(OP_RW, 1027, 3, 5000, 3), b"abc");
        assert_eq!(next(&mut m, &mut buf).0.op, OP_RST);
        // A packet claiming another source cid is dropped without an answer.
        let mut h = guest(OP_REQUEST, 1028, 3, 5000, 0);
        h.src_cid = 77;
        m.on_guest_packet(&h, &[]);
        assert!(!m.has_rx());
        assert_eq!(m.stats().dropped, 1);
        // Not a stream.
        let mut h = guest(OP_REQUEST, 1029, 3, 5000, 0);
        h.type_ = 2;
        m.on_guest_packet(&h, &[]);
        assert_eq!(next(&mut m, &mut buf).0.op, OP_RST);
        // An RST never gets an RST back.
        m.on_guest_packet(&guest(OP_RST, 1030, 3, 5000, 0), &[]);
        assert!(!m.has_rx());
    }

    #[test]
    fn guest_to_parent_stream_with_credit() {
        let dir = tempfile::tempdir().unwrap();
        let (mut m, _) = muxer(dir.path());
        let listener =
            cloister_vsock::VsockListener::bind_fabric(&dir.path().join("vsock"), 5000).unwrap();
        let mut buf = vec![0u8; MAX_PKT_DATA];
        m.on_guest_packet(&guest(OP_REQUEST, 1025, 3, 5000, 0), &[]);
        let (h, _) = next(&mut m, &mut buf);
        assert_eq!(h.op, OP_RESPONSE);
        assert_eq!(h.buf_alloc, BUF_ALLOC);
        let (mut host, peer) = listener.accept().unwrap();
        assert_eq!(peer, VsockAddr::new(CID, 1025));
        m.on_guest_packet(&guest(OP_RW, 1025, 3, 5000, 5), b"hello");
        let mut got = [0u8; 5];
        host.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello");
        // Host to guest, limited by the guest's credit (buf_alloc 65536, nothing consumed).
        let big = vec![0x5au8; 100_000];
        host.write_all(&big).unwrap();
        let mut received = 0usize;
        while received < 65536 {
            let (h, data) = next(&mut m, &mut buf);
            assert_eq!(h.op, OP_RW);
            received += data.len();
        }
        assert_eq!(received, 65536);
        m.process_host_events();
        assert!(
            m.next_rx(&mut buf).is_none(),
            "sent beyond the guest's credit"
        );
        // The guest consumes everything: the rest flows.
        let mut upd = guest(OP_CREDIT_UPDATE, 1025, 3, 5000, 0);
        upd.fwd_cnt = 65536;
        m.on_guest_packet(&upd, &[]);
        while received < big.len() {
            received += next(&mut m, &mut buf).1.len();
        }
        // The guest exceeds the credit we gave it: reset.
        let flood = vec![1u8; MAX_PKT_DATA];
        let mut reset = false;
        for _ in 0..(BUF_ALLOC as usize / MAX_PKT_DATA + 8) {
            // The host does not read, so our buffer fills.
            m.on_guest_packet(&guest(OP_RW, 1025, 3, 5000, flood.len()), &flood);
            if m.stats().connections == 0 {
                reset = true;
                break;
            }
        }
        assert!(reset, "credit overrun not detected");
    }

    #[test]
    fn half_close_keeps_the_other_direction() {
        let dir = tempfile::tempdir().unwrap();
        let (mut m, _) = muxer(dir.path());
        let listener =
            cloister_vsock::VsockListener::bind_fabric(&dir.path().join("vsock"), 5001).unwrap();
        let mut buf = vec![0u8; 4096];
        m.on_guest_packet(&guest(OP_REQUEST, 2000, 3, 5001, 0), &[]);
        assert_eq!(next(&mut m, &mut buf).0.op, OP_RESPONSE);
        let (host, _) = listener.accept().unwrap();
        host.shutdown(Shutdown::Write).unwrap();
        let (h, _) = next(&mut m, &mut buf);
        assert_eq!((h.op, h.flags), (OP_SHUTDOWN, SHUTDOWN_SEND));
        m.on_guest_packet(&guest(OP_RW, 2000, 3, 5001, 4), b"late");
        let mut got = [0u8; 4];
        (&host).read_exact(&mut got).unwrap();
        assert_eq!(&got, b"late");
        // The guest closes: RST, and the host sees the end of the stream.
        let mut close = guest(OP_SHUTDOWN, 2000, 3, 5001, 0);
        close.flags = SHUTDOWN_SEND | SHUTDOWN_RCV;
        m.on_guest_packet(&close, &[]);
        assert_eq!(next(&mut m, &mut buf).0.op, OP_RST);
        assert_eq!(m.stats().connections, 0);
        let mut rest = Vec::new();
        (&host).read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
    }

    #[test]
    fn parent_to_guest_handshake() {
        let dir = tempfile::tempdir().unwrap();
        let (mut m, _) = muxer(dir.path());
        let mut buf = vec![0u8; 4096];
        let path = dir.path().join(format!("vsock/{CID}.sock"));
        let mut host = UnixStream::connect(&path).unwrap();
        host.write_all(b"CONNECT 5005\n").unwrap();
        let (h, _) = next(&mut m, &mut buf);
        assert_eq!((h.op, h.src_cid, h.dst_port), (OP_REQUEST, 3, 5005));
        let host_port = h.src_port;
        m.on_guest_packet(&guest(OP_RESPONSE, 5005, 3, host_port, 0), &[]);
        let mut line = LineBuf::new();
        proto::read_line(&mut host, &mut line).unwrap();
        assert_eq!(line.line(), format!("OK {host_port}").as_bytes());
        m.on_guest_packet(&guest(OP_RW, 5005, 3, host_port, 3), b"xyz");
        let mut got = [0u8; 3];
        host.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"xyz");
        // Refused by the guest: closed without an answer.
        let mut host2 = UnixStream::connect(&path).unwrap();
        host2.write_all(b"CONNECT 6006\n").unwrap();
        let (h, _) = next(&mut m, &mut buf);
        m.on_guest_packet(&guest(OP_RST, 6006, 3, h.src_port, 0), &[]);
        let mut rest = Vec::new();
        host2.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
        // A malformed line: closed, nothing sent to the guest.
        let mut host3 = UnixStream::connect(&path).unwrap();
        host3.write_all(b"HELLO\n").unwrap();
        host3
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        for _ in 0..50 {
            m.process_host_events();
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(!m.has_rx());
        let mut rest = Vec::new();
        host3.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
    }

    #[test]
    fn heartbeat_and_nsm_services() {
        let dir = tempfile::tempdir().unwrap();
        let (mut m, hb) = muxer(dir.path());
        let mut buf = vec![0u8; 4096];
        m.on_guest_packet(&guest(OP_REQUEST, 1025, 3, HEARTBEAT_PORT, 0), &[]);
        assert_eq!(next(&mut m, &mut buf).0.op, OP_RESPONSE);
        m.on_guest_packet(&guest(OP_RW, 1025, 3, HEARTBEAT_PORT, 1), &[HEARTBEAT_BYTE]);
        let (h, data) = next(&mut m, &mut buf);
        assert_eq!((h.op, data.as_slice()), (OP_RW, &[HEARTBEAT_BYTE][..]));
        assert!(hb.wait(Duration::from_secs(5)));
        // A second connection to 9000 goes to the parent (nobody listens here: RST).
        m.on_guest_packet(&guest(OP_REQUEST, 1026, 3, HEARTBEAT_PORT, 0), &[]);
        assert_eq!(next(&mut m, &mut buf).0.op, OP_RST);
        // NSM on (0, 1).
        m.on_guest_packet(&guest(OP_REQUEST, 1027, 0, NSM_PORT, 0), &[]);
        assert_eq!(next(&mut m, &mut buf).0.op, OP_RESPONSE);
        let frame = [&3u32.to_be_bytes()[..], b"abc"].concat();
        m.on_guest_packet(&guest(OP_RW, 1027, 0, NSM_PORT, frame.len()), &frame);
        let mut answer = Vec::new();
        while answer.len() < 11 {
            answer.extend(next(&mut m, &mut buf).1);
        }
        assert_eq!(answer, [&7u32.to_be_bytes()[..], b"nsm:abc"].concat());
        // Other hypervisor ports are refused.
        m.on_guest_packet(&guest(OP_REQUEST, 1028, 0, 2, 0), &[]);
        assert_eq!(next(&mut m, &mut buf).0.op, OP_RST);
    }

    #[test]
    fn floods_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let (mut m, _) = muxer(dir.path());
        // RSTs for refused ports pile up while the guest gives no RX buffers.
        for port in 0..10_000u32 {
            m.on_guest_packet(&guest(OP_REQUEST, port, 3, 4444, 0), &[]);
        }
        assert_eq!(
            m.stats().control_queued,
            Limits::default().max_control_queue
        );
        // Connections are capped.
        let _l = UnixListener::bind(dir.path().join("vsock/3_5000.sock")).unwrap();
        let mut buf = [0u8; 64];
        while m.next_rx(&mut buf).is_some() {}
        for port in 0..1000u32 {
            m.on_guest_packet(&guest(OP_REQUEST, port, 3, 5000, 0), &[]);
            while m.next_rx(&mut buf).is_some() {}
        }
        assert!(m.stats().connections <= Limits::default().max_connections);
    }
}
