//! Connection bookkeeping of the HTTP front end: what each connection is doing, how long it may
//! keep doing it, and which connection gives way when the cap is reached.
//!
//! Every accepted connection gets a [`Conn`] in the [`Registry`] and keeps it (through a
//! [`ConnGuard`]) until its socket is closed. A connection is in one [`Phase`]: `Idle` (waiting
//! for the first byte of a request), `Head` (a request head is arriving), `Busy` (a request is
//! being read, handled or answered) or `Closing`. Reads through [`Tracked`] move `Idle` to
//! `Head`; the request handler moves `Head` to `Busy`; the end of a response body
//! ([`TrackedBody`]) moves it back to `Idle`. The connection's task closes it when its phase has
//! lasted longer than that phase allows ([`Limits::phase_timeout`]).
//!
//! A phase change is only two atomic stores: it wakes nobody. The connection's task checks
//! its deadline at [`Conn::next_check`], which is never later than the deadline of the current
//! phase nor than the earliest deadline a phase entered later could have, so no deadline is
//! missed and the task wakes at most once per shortest timeout, not three times per request.
//!
//! When the cap is reached, a new connection is admitted by closing the one that has been
//! `Closing` longest, else the one idle longest, else the one whose request head has been
//! arriving longest. A connection with a request in hand is never closed to make room; when
//! every connection has one, the new connection is closed at once.

use bytes::Bytes;
use http_body_util::Full;
use std::collections::HashMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;

/// Longest time a request may take from its complete body to the end of its response (the
/// handling itself takes milliseconds; this bounds a client that does not read its answer).
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest time a connection being closed after a refused body keeps discarding what the client
/// still sends, so that the client reads the refusal instead of a reset.
pub const LINGER_TIMEOUT: Duration = Duration::from_secs(2);
/// Most bytes discarded while lingering.
pub const LINGER_BYTES: usize = 8 * 1024 * 1024;
/// Descriptors kept free of connections, for the listener, the store, the runtime and the
/// sockets of shed connections not yet closed.
pub const FD_RESERVE: u64 = 64;
/// Descriptor limit assumed when the real one cannot be read.
pub const FALLBACK_FD_LIMIT: u64 = 1024;

/// What a connection is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    /// Waiting for the first byte of a request.
    Idle = 0,
    /// A request head is arriving.
    Head = 1,
    /// A request is being read, handled or answered.
    Busy = 2,
    /// Being shut down (and lingering after a refused body).
    Closing = 3,
}

impl Phase {
    fn from_u8(v: u8) -> Phase {
        match v {
            0 => Phase::Idle,
            1 => Phase::Head,
            2 => Phase::Busy,
            _ => Phase::Closing,
        }
    }

    /// Order in which connections are shed (lower first); `None`: never shed.
    fn shed_rank(self) -> Option<u8> {
        match self {
            Phase::Closing => Some(0),
            Phase::Idle => Some(1),
            Phase::Head => Some(2),
            Phase::Busy => None,
        }
    }
}

/// The timeouts a connection runs under.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Time allowed for a request head, from its first byte.
    pub header_read: Duration,
    /// Time allowed for a request body, from the end of its head.
    pub body_read: Duration,
    /// Time a connection may wait for its next request.
    pub idle: Duration,
}

impl Limits {
    /// How long a connection may stay in `phase`.
    pub fn phase_timeout(&self, phase: Phase) -> Duration {
        match phase {
            Phase::Idle => self.idle,
            Phase::Head => self.header_read,
            Phase::Busy => self.body_read.saturating_add(RESPONSE_TIMEOUT),
            Phase::Closing => LINGER_TIMEOUT,
        }
    }

    /// The shortest timeout of the phases a served connection can enter.
    pub fn shortest(&self) -> Duration {
        [Phase::Idle, Phase::Head, Phase::Busy]
            .into_iter()
            .map(|p| self.phase_timeout(p))
            .min()
            .unwrap_or(self.header_read)
    }
}

/// One connection's state, shared by its task, its I/O wrapper, its requests and the registry.
#[derive(Debug)]
pub struct Conn {
    id: u64,
    epoch: Instant,
    phase: AtomicU8,
    /// Milliseconds from `epoch` to the start of the current phase.
    since_ms: AtomicU64,
    linger: AtomicBool,
    /// Requests begun on this connection (see [`Conn::begin_request`]).
    requests: AtomicU64,
    shed: Notify,
}

impl Conn {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::Acquire))
    }

    /// Enters `phase` now.
    pub fn enter(&self, phase: Phase) {
        self.since_ms.store(self.now_ms(), Ordering::Release);
        self.phase.store(phase as u8, Ordering::Release);
    }

    /// Enters `Busy` for a new request; returns its number.
    pub fn begin_request(&self) -> u64 {
        let n = self.requests.fetch_add(1, Ordering::AcqRel) + 1;
        self.enter(Phase::Busy);
        n
    }

    /// Returns to `Idle` after request `n`, unless a later request has begun.
    fn end_request(&self, n: u64) {
        if self.requests.load(Ordering::Acquire) == n && self.phase() == Phase::Busy {
            self.enter(Phase::Idle);
        }
    }

    /// Notes that bytes arrived: an idle connection has started a request head.
    fn note_read(&self) {
        if self.phase() == Phase::Idle {
            let now = self.now_ms();
            if self
                .phase
                .compare_exchange(
                    Phase::Idle as u8,
                    Phase::Head as u8,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok()
            {
                self.since_ms.store(now, Ordering::Release);
            }
        }
    }

    /// When the current phase runs out under `limits`.
    pub fn deadline(&self, limits: &Limits) -> Instant {
        let phase = self.phase();
        let since = Duration::from_millis(self.since_ms.load(Ordering::Acquire));
        self.epoch + since + limits.phase_timeout(phase)
    }

    /// When the connection's task, checking at `now`, next needs to look at its deadline: the
    /// deadline of the current phase, or `now` plus the shortest phase timeout when that is
    /// sooner (a phase entered after `now` cannot run out before then).
    pub fn next_check(&self, limits: &Limits, now: Instant) -> Instant {
        self.deadline(limits).min(now + limits.shortest())
    }

    /// Asks for the connection to linger after its response (a refused body may follow).
    pub fn request_linger(&self) {
        self.linger.store(true, Ordering::Release);
    }

    /// Whether [`Conn::request_linger`] was called.
    pub fn lingers(&self) -> bool {
        self.linger.load(Ordering::Acquire)
    }

    /// Completes when the registry sheds this connection.
    pub async fn shed(&self) {
        self.shed.notified().await;
    }
}

/// All connections of one server.
#[derive(Debug)]
pub struct Registry {
    cap: usize,
    epoch: Instant,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    next_id: u64,
    conns: HashMap<u64, Arc<Conn>>,
}

impl Registry {
    /// A registry admitting at most `cap` connections (at least one).
    pub fn new(cap: usize) -> Arc<Registry> {
        Arc::new(Registry {
            cap: cap.max(1),
            epoch: Instant::now(),
            inner: Mutex::new(Inner::default()),
        })
    }

    /// The cap.
    pub fn cap(&self) -> usize {
        self.cap
    }

    /// Connections registered now.
    pub fn len(&self) -> usize {
        self.inner.lock().map(|i| i.conns.len()).unwrap_or(0)
    }

    /// True when no connection is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Registers a new (idle) connection, shedding another if the cap is reached; `None` when
    /// every connection has a request in hand (the caller closes the new one).
    pub fn admit(self: &Arc<Self>) -> Option<ConnGuard> {
        let mut inner = self.inner.lock().ok()?;
        if inner.conns.len() >= self.cap {
            let victim = inner
                .conns
                .values()
                .filter_map(|c| {
                    let rank = c.phase().shed_rank()?;
                    Some((rank, c.since_ms.load(Ordering::Acquire), c.id))
                })
                .min()?;
            if let Some(c) = inner.conns.remove(&victim.2) {
                tracing::debug!(
                    phase = ?c.phase(),
                    "connection limit reached: closing the connection idle longest"
                );
                c.shed.notify_one();
            }
        }
        let id = inner.next_id;
        inner.next_id += 1;
        let conn = Arc::new(Conn {
            id,
            epoch: self.epoch,
            phase: AtomicU8::new(Phase::Idle as u8),
            since_ms: AtomicU64::new(0),
            linger: AtomicBool::new(false),
            requests: AtomicU64::new(0),
            shed: Notify::new(),
        });
        conn.enter(Phase::Idle);
        inner.conns.insert(id, conn.clone());
        Some(ConnGuard {
            registry: self.clone(),
            conn,
        })
    }
}

/// A registered connection; unregisters it when dropped.
#[derive(Debug)]
pub struct ConnGuard {
    registry: Arc<Registry>,
    conn: Arc<Conn>,
}

impl ConnGuard {
    /// The connection's state.
    pub fn conn(&self) -> &Arc<Conn> {
        &self.conn
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        if let Ok(mut inner) = self.registry.inner.lock() {
            inner.conns.remove(&self.conn.id);
        }
    }
}

/// The connection cap: `configured`, but below the process's soft descriptor limit by
/// [`FD_RESERVE`].
pub fn connection_cap(configured: usize) -> usize {
    use nix::sys::resource::{getrlimit, Resource};
    let soft = getrlimit(Resource::RLIMIT_NOFILE)
        .map(|(soft, _hard)| soft)
        .unwrap_or(FALLBACK_FD_LIMIT);
    let by_fds = usize::try_from(soft.saturating_sub(FD_RESERVE)).unwrap_or(usize::MAX);
    configured.min(by_fds).max(1)
}

/// A socket whose reads move its connection from `Idle` to `Head`.
#[derive(Debug)]
pub struct Tracked<S> {
    inner: S,
    conn: Arc<Conn>,
}

impl<S> Tracked<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, conn: Arc<Conn>) -> Self {
        Tracked { inner, conn }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.conn.note_read();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// A response body that returns its connection to `Idle` once it has been sent (dropped).
#[derive(Debug)]
pub struct TrackedBody {
    inner: Full<Bytes>,
    conn: Arc<Conn>,
    request: u64,
}

impl TrackedBody {
    /// Wraps `inner`, the response to request number `request` of `conn`.
    pub fn new(inner: Full<Bytes>, conn: Arc<Conn>, request: u64) -> Self {
        TrackedBody {
            inner,
            conn,
            request,
        }
    }
}

impl hyper::body::Body for TrackedBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for TrackedBody {
    fn drop(&mut self) {
        self.conn.end_request(self.request);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            header_read: Duration::from_secs(1),
            body_read: Duration::from_secs(2),
            idle: Duration::from_secs(3),
        }
    }

    #[tokio::test]
    async fn sheds_closing_then_oldest_idle_then_heads_never_busy() {
        let reg = Registry::new(3);
        let busy = reg.admit().unwrap();
        let first = busy.conn().begin_request();
        // A response to an earlier request does not make a later one idle.
        let second = busy.conn().begin_request();
        busy.conn().end_request(first);
        assert_eq!(busy.conn().phase(), Phase::Busy);
        let old_idle = reg.admit().unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        let new_idle = reg.admit().unwrap();
        assert_eq!(reg.len(), 3);
        // Full: the idle connection admitted first goes.
        let fourth = reg.admit().unwrap();
        assert_eq!(reg.len(), 3);
        let shed = tokio::time::timeout(Duration::from_secs(1), old_idle.conn().shed()).await;
        assert!(shed.is_ok(), "oldest idle connection was not shed");
        drop(old_idle);
        // Heads go after idle ones, and only when nothing idle is left.
        new_idle.conn().note_read();
        assert_eq!(new_idle.conn().phase(), Phase::Head);
        fourth.conn().enter(Phase::Busy);
        let fifth = reg.admit().unwrap();
        assert!(
            tokio::time::timeout(Duration::from_secs(1), new_idle.conn().shed())
                .await
                .is_ok()
        );
        drop(new_idle);
        fifth.conn().enter(Phase::Busy);
        // Everything is busy: the new connection is refused.
        assert!(reg.admit().is_none());
        assert_eq!(reg.len(), 3);
        busy.conn().end_request(second);
        assert_eq!(busy.conn().phase(), Phase::Idle);
        drop(busy);
        assert_eq!(reg.len(), 2);
        assert!(reg.admit().is_some());
    }

    #[tokio::test]
    async fn deadlines_follow_the_phase() {
        let reg = Registry::new(1);
        let g = reg.admit().unwrap();
        let c = g.conn();
        let l = limits();
        let start = Instant::now();
        let idle = c.deadline(&l);
        assert!(idle >= start + Duration::from_secs(2) && idle <= start + Duration::from_secs(4));
        c.note_read();
        let head = c.deadline(&l);
        assert!(head < idle);
        c.enter(Phase::Busy);
        assert!(c.deadline(&l) > start + RESPONSE_TIMEOUT);
        // The task looks again no later than a head that began right now could run out.
        let now = Instant::now();
        assert_eq!(l.shortest(), Duration::from_secs(1));
        assert_eq!(c.next_check(&l, now), now + Duration::from_secs(1));
        c.enter(Phase::Head);
        assert!(c.next_check(&l, now) <= c.deadline(&l));
    }

    #[test]
    fn cap_stays_below_the_descriptor_limit() {
        let (soft, _) =
            nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
        let cap = connection_cap(usize::MAX);
        assert!((cap as u64) < soft.max(FD_RESERVE + 1));
        assert_eq!(connection_cap(5), 5.min(cap));
        assert_eq!(connection_cap(0), 1);
    }
}
