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
//! `FabricDir::connect` (no symlink, a singly linked socket served by root or its owner) with
//! the enclave's unprivileged [`HostIdentity`] ([`MuxerConfig::enclave_identity`]), so a parent
//! listener never sees root as the peer of an enclave's connection; and it binds `<cid>.sock` as
//! an `EnclaveHostSocket`, which replaces only a stale socket of its own and carries the
//! enclave's gid as its group, so listeners believe the `CONNECT-FROM <cid>` preamble of a
//! connection made with that identity.
//!
//! Its parts, as Firecracker splits its vsock muxer: `conn` (one connection's state and
//! credit accounting), `rxq` (what waits for the guest's RX buffers), `host` (the fabric
//! side: `<cid>.sock`, its handshakes, dialling parents), `services` (heartbeat and NSM);
//! this module routes between them and owns the epoll set.
//!
//! Threat model: the guest is hostile. Every header field is checked; a guest that writes more
//! than the credit it was given, answers out of turn or uses an unknown connection gets `RST`;
//! connections, pending host handshakes, queued control packets and per-connection buffers are
//! capped by [`Limits`]; packets with a foreign source cid are dropped; log lines a guest can
//! trigger are rate-limited. Memory held per guest is at most
//! `max_connections * BUF_ALLOC` plus small constants.

mod conn;
mod error;
mod host;
mod rxq;
mod services;

use std::collections::HashMap;
use std::io::{self, Read};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cloister_vsock::broker::NsmService;
use cloister_vsock::proto;
use cloister_vsock::ratelimit::RateLimiter;
use cloister_vsock::{HostIdentity, HEARTBEAT_PORT, NSM_PORT, PARENT_CID, VMADDR_CID_HYPERVISOR};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};

use crate::packet::{
    Header, OP_CREDIT_REQUEST, OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE, OP_RST, OP_RW,
    OP_SHUTDOWN, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM,
};
use conn::{Conn, Key, State};
use error::nix_err;
use host::{HostSide, Refusal};
use rxq::RxQueue;

pub use conn::{BUF_ALLOC, CREDIT_UPDATE_THRESHOLD};
pub use error::MuxerError;
pub use services::{Heartbeat, HEARTBEAT_READ_TIMEOUT};

/// Largest payload of one packet in either direction, as the header's `len` field counts it.
pub const MAX_PKT_LEN: u32 = 64 * 1024;
/// Largest payload of one packet in either direction.
pub const MAX_PKT_DATA: usize = MAX_PKT_LEN as usize;
/// Timer period for handshake deadlines.
const TICK: Duration = Duration::from_millis(250);
/// Events fetched per epoll_wait.
const EVENT_BATCH: usize = 64;

const TOKEN_LISTENER: u64 = 0;
const TOKEN_TIMER: u64 = 1;
const FIRST_TOKEN: u64 = 2;

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

impl std::fmt::Debug for MuxerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MuxerConfig")
            .field("cid", &self.cid)
            .field("fabric_dir", &self.fabric_dir)
            .field("limits", &self.limits)
            .field("bind_host_socket", &self.bind_host_socket)
            .field("enclave_identity", &self.enclave_identity)
            .finish_non_exhaustive()
    }
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
    nsm: Arc<dyn NsmService>,
    heartbeat: Arc<Heartbeat>,
    heartbeat_claimed: bool,
    limits: Limits,
    epoll: Epoll,
    timer: TimerFd,
    host: HostSide,
    conns: HashMap<Key, Conn>,
    by_token: HashMap<u64, Key>,
    next_token: u64,
    rxq: RxQueue,
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
        let host = HostSide::new(
            &config.fabric_dir,
            config.cid,
            config.enclave_identity,
            config.bind_host_socket,
            &epoll,
            TOKEN_LISTENER,
        )?;
        Ok(Muxer {
            cid: config.cid,
            nsm: config.nsm,
            heartbeat: config.heartbeat,
            heartbeat_claimed: false,
            rxq: RxQueue::new(config.limits.max_control_queue),
            limits: config.limits,
            epoll,
            timer,
            host,
            conns: HashMap::new(),
            by_token: HashMap::new(),
            next_token: FIRST_TOKEN,
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
        self.host.socket_path()
    }

    /// Counters.
    pub fn stats(&self) -> MuxerStats {
        MuxerStats {
            connections: self.conns.len(),
            host_pending: self.host.pending_len(),
            control_queued: self.rxq.control_len(),
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
        let queued = self.rxq.push_control(key, op, flags);
        if !queued {
            self.stats.dropped += 1;
        }
        queued
    }

    /// True when [`Muxer::next_rx`] may have something for the guest.
    pub fn has_rx(&self) -> bool {
        !self.rxq.is_empty()
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
        if conn.readable && conn.wants_read() && conn.peer_credit() > 0 {
            self.rxq.mark_ready(key);
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
        conn.set_peer_credit(h.buf_alloc, h.fwd_cnt);
        if self.on_connection_packet(key, h, data) {
            self.sync(key);
        }
    }

    /// Handles a guest packet for an existing connection (`REQUEST` and `RST` are handled
    /// before). False when the connection is gone (reset) or needs no sync.
    fn on_connection_packet(&mut self, key: Key, h: &Header, data: &[u8]) -> bool {
        let Some(conn) = self.conns.get_mut(&key) else {
            return false;
        };
        match h.op {
            OP_RESPONSE => {
                if !matches!(conn.state, State::Connecting(_)) {
                    self.reset(key);
                    return false;
                }
                conn.state = State::Established;
                conn.push_preamble(proto::ok_line(Some(key.host_port)).as_bytes());
                if conn.flush().is_err() {
                    self.reset(key);
                    return false;
                }
            }
            OP_RW => {
                if conn.state != State::Established || conn.guest_no_send || !conn.fits(data.len())
                {
                    self.warn(format_args!(
                        "guest port {} broke the stream protocol (credit or state); reset",
                        key.guest_port
                    ));
                    self.reset(key);
                    return false;
                }
                if conn.closing {
                    return false;
                }
                conn.to_host.extend(data);
                if conn.flush().is_err() {
                    self.reset(key);
                    return false;
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
                return false;
            }
        }
        true
    }

    fn maybe_credit_update(&mut self, key: Key) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if conn.credit_update_due() {
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
                services::spawn_heartbeat(self.heartbeat.clone()).map(|s| (s, String::new()))
            }
            (VMADDR_CID_HYPERVISOR, NSM_PORT) => {
                services::spawn_nsm(self.nsm.clone(), self.shutting_down.clone())
                    .map(|s| (s, String::new()))
            }
            (PARENT_CID, port) => self.connect_parent(port, key.guest_port),
            _ => None,
        };
        let Some((sock, preamble)) = sock else {
            self.queue_control(key, OP_RST, 0);
            return;
        };
        let token = self.token();
        let mut conn = Conn::new(sock, token, State::Established);
        conn.set_peer_credit(h.buf_alloc, h.fwd_cnt);
        conn.push_preamble(preamble.as_bytes());
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

    /// Dials a parent listener for the guest; any failure is a refusal (`RST`).
    fn connect_parent(&self, port: u32, guest_port: u32) -> Option<(UnixStream, String)> {
        match self.host.connect_parent(port, guest_port) {
            Ok(dialled) => Some(dialled),
            Err(Refusal::NotListening) => None,
            Err(Refusal::Rejected { name, error }) => {
                self.warn(format_args!("guest connection to {name} refused: {error}"));
                None
            }
        }
    }

    // ---- host -> guest ----

    /// Fills one RX buffer: the next control packet, or data from a readable host socket.
    /// `out` is the buffer's payload area; returns the header and the payload length.
    pub fn next_rx(&mut self, out: &mut [u8]) -> Option<(Header, usize)> {
        while let Some(c) = self.rxq.pop_control() {
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
        while let Some(key) = self.rxq.pop_ready() {
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
                self.rxq.retry_first(key);
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
                    conn.sent_to_guest(u32::try_from(n).unwrap_or(0));
                    let mut h = self.header(key, OP_RW);
                    h.len = u32::try_from(n).unwrap_or(0);
                    self.rxq.retry_last(key);
                    return Some((h, n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    conn.readable = false;
                    self.sync(key);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => self.rxq.retry_first(key),
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
                let _ = self.timer.wait();
                self.expire();
            }
            t if self.host.is_pending(t) => self.progress_handshake(t),
            t => {
                if let Some(&key) = self.by_token.get(&t) {
                    self.on_connection_event(key, flags);
                }
            }
        }
    }

    /// A host socket of an open connection is ready (or hung up).
    fn on_connection_event(&mut self, key: Key, flags: EpollFlags) {
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

    fn accept_host(&mut self) {
        while let Some(sock) = self.host.accept() {
            if self.host.pending_len() >= self.limits.max_host_pending
                || self.conns.len() >= self.limits.max_connections
                || sock.set_nonblocking(true).is_err()
            {
                self.stats.dropped += 1;
                continue;
            }
            let token = self.token();
            self.host
                .start_handshake(&self.epoll, token, sock, self.limits.handshake_timeout);
        }
    }

    fn progress_handshake(&mut self, token: u64) {
        let Some((sock, port)) = self.host.progress_handshake(&self.epoll, token) else {
            return;
        };
        let Some(port) = port else {
            return; // malformed line or closed: drop the connection without an answer
        };
        let conns = &self.conns;
        let in_use = |host_port| {
            conns.contains_key(&Key {
                host_cid: PARENT_CID,
                host_port,
                guest_port: port,
            })
        };
        let Some(host_port) = self.host.allocate_port(self.limits.max_connections, in_use) else {
            return;
        };
        let key = Key {
            host_cid: PARENT_CID,
            host_port,
            guest_port: port,
        };
        let conn = Conn::new(
            sock,
            token,
            State::Connecting(Instant::now() + self.limits.handshake_timeout),
        );
        if self.register(key, conn) && !self.queue_control(key, OP_REQUEST, 0) {
            self.remove(key);
        }
    }

    fn expire(&mut self) {
        let now = Instant::now();
        self.host.expire(&self.epoll, now);
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
        self.host.close(&self.epoll);
    }

    /// Drops every connection (the guest is gone or reset its device).
    pub fn reset_all(&mut self) {
        let keys: Vec<Key> = self.conns.keys().copied().collect();
        for key in keys {
            self.remove(key);
        }
        self.rxq.clear();
    }
}

impl Drop for Muxer {
    fn drop(&mut self) {
        self.shutting_down.store(true, Ordering::Relaxed);
        // The host socket's file goes with `host`.
    }
}

#[cfg(test)]
mod tests;
