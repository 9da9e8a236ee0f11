//! The relay engine shared by vsock-proxy and the forwarders.
//!
//! [`serve`] accepts connections from an [`Acceptor`] (a vsock, TCP or Unix listener), opens a
//! matching connection with a [`Connector`] (TCP to a resolved host, vsock to an enclave or to
//! the parent, Unix), and copies bytes both ways with bounded buffers
//! ([`RelayOptions::buffer_size`] per direction). When one side finishes sending, the other side
//! sees a half-close (`shutdown(SHUT_WR)`) and can still answer. Concurrency is capped by a
//! semaphore ([`RelayOptions::max_connections`]): at the cap the relay stops accepting, so the
//! kernel's backlog queues new clients instead of the process growing without bound.
//!
//! Shutdown: when the `shutdown` future completes, the listener is dropped (no new connections),
//! open connections get [`RelayOptions::drain_timeout`] to finish, and the rest are closed.

use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// Default bytes buffered per direction of each connection.
pub const DEFAULT_BUFFER_SIZE: usize = 64 * 1024;
/// Default maximum of simultaneous connections.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Default time open connections get to finish after shutdown is requested.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Default limit on opening the outgoing side of a connection.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Smallest and largest accepted buffer sizes.
pub const BUFFER_SIZE_RANGE: (usize, usize) = (1024, 16 * 1024 * 1024);
/// Pause after a failed `accept` (e.g. EMFILE), so the loop does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

/// A byte stream the relay can carry.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream for T {}

/// The accepting side: yields incoming streams and a description of the peer for logs.
pub trait Acceptor: Send + 'static {
    /// The accepted stream type.
    type Stream: Stream;
    /// Waits for the next connection.
    fn accept(&mut self) -> impl Future<Output = io::Result<(Self::Stream, String)>> + Send;
}

/// The connecting side: opens the outgoing stream for one accepted connection.
pub trait Connector: Send + Sync + 'static {
    /// The outgoing stream type.
    type Stream: Stream;
    /// Opens one connection to the destination.
    fn connect(&self) -> impl Future<Output = io::Result<Self::Stream>> + Send;
}

impl Acceptor for tokio::net::TcpListener {
    type Stream = tokio::net::TcpStream;
    async fn accept(&mut self) -> io::Result<(Self::Stream, String)> {
        let (s, peer) = tokio::net::TcpListener::accept(self).await?;
        let _ = s.set_nodelay(true);
        Ok((s, peer.to_string()))
    }
}

impl Acceptor for tokio::net::UnixListener {
    type Stream = tokio::net::UnixStream;
    async fn accept(&mut self) -> io::Result<(Self::Stream, String)> {
        let (s, peer) = tokio::net::UnixListener::accept(self).await?;
        Ok((s, format!("{peer:?}")))
    }
}

/// Connects over TCP to a fixed address.
#[derive(Debug, Clone)]
pub struct TcpConnector(pub std::net::SocketAddr);

impl Connector for TcpConnector {
    type Stream = tokio::net::TcpStream;
    async fn connect(&self) -> io::Result<Self::Stream> {
        let s = tokio::net::TcpStream::connect(self.0).await?;
        let _ = s.set_nodelay(true);
        Ok(s)
    }
}

/// Connects to a Unix stream socket.
#[derive(Debug, Clone)]
pub struct UnixConnector(pub std::path::PathBuf);

impl Connector for UnixConnector {
    type Stream = tokio::net::UnixStream;
    async fn connect(&self) -> io::Result<Self::Stream> {
        tokio::net::UnixStream::connect(&self.0).await
    }
}

/// Limits and timeouts of a relay.
#[derive(Debug, Clone)]
pub struct RelayOptions {
    /// Bytes buffered per direction of each connection.
    pub buffer_size: usize,
    /// Maximum of simultaneous connections; at the cap, accepting pauses.
    pub max_connections: usize,
    /// Time open connections get to finish once shutdown is requested.
    pub drain_timeout: Duration,
    /// Limit on opening the outgoing connection.
    pub connect_timeout: Duration,
}

impl Default for RelayOptions {
    fn default() -> Self {
        Self {
            buffer_size: DEFAULT_BUFFER_SIZE,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        }
    }
}

impl RelayOptions {
    /// Checks the limits are usable.
    pub fn validate(&self) -> Result<(), RelayError> {
        if self.buffer_size < BUFFER_SIZE_RANGE.0 || self.buffer_size > BUFFER_SIZE_RANGE.1 {
            return Err(RelayError::BadOption(format!(
                "buffer size {} is outside {}..={}",
                self.buffer_size, BUFFER_SIZE_RANGE.0, BUFFER_SIZE_RANGE.1
            )));
        }
        if self.max_connections == 0 || self.max_connections > Semaphore::MAX_PERMITS {
            return Err(RelayError::BadOption(format!(
                "maximum connections {} must be at least 1",
                self.max_connections
            )));
        }
        Ok(())
    }
}

/// Errors of the relay as a whole (per-connection failures are logged and counted).
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// A limit is out of range.
    #[error("invalid relay option: {0}")]
    BadOption(String),
}

/// Counters, readable while the relay runs.
#[derive(Debug, Default)]
pub struct RelayStats {
    /// Connections accepted.
    pub accepted: AtomicU64,
    /// Connections whose outgoing side could not be opened.
    pub connect_failed: AtomicU64,
    /// Connections that ended (normally or with an error).
    pub closed: AtomicU64,
    /// Connections still open when the drain deadline passed, and closed by force.
    pub aborted: AtomicU64,
    /// Bytes carried from the accepted side to the outgoing side (finished connections).
    pub bytes_up: AtomicU64,
    /// Bytes carried from the outgoing side back to the accepted side (finished connections).
    pub bytes_down: AtomicU64,
}

/// A snapshot of [`RelayStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelaySummary {
    /// See [`RelayStats::accepted`].
    pub accepted: u64,
    /// See [`RelayStats::connect_failed`].
    pub connect_failed: u64,
    /// See [`RelayStats::closed`].
    pub closed: u64,
    /// See [`RelayStats::aborted`].
    pub aborted: u64,
    /// See [`RelayStats::bytes_up`].
    pub bytes_up: u64,
    /// See [`RelayStats::bytes_down`].
    pub bytes_down: u64,
}

impl RelayStats {
    /// Reads every counter.
    pub fn summary(&self) -> RelaySummary {
        RelaySummary {
            accepted: self.accepted.load(Ordering::Relaxed),
            connect_failed: self.connect_failed.load(Ordering::Relaxed),
            closed: self.closed.load(Ordering::Relaxed),
            aborted: self.aborted.load(Ordering::Relaxed),
            bytes_up: self.bytes_up.load(Ordering::Relaxed),
            bytes_down: self.bytes_down.load(Ordering::Relaxed),
        }
    }
}

/// Carries bytes both ways between `a` and `b` until both directions are finished, with
/// `buffer_size` bytes buffered per direction. Returns (bytes a->b, bytes b->a).
pub async fn relay_streams<A: Stream, B: Stream>(
    mut a: A,
    mut b: B,
    buffer_size: usize,
) -> io::Result<(u64, u64)> {
    tokio::io::copy_bidirectional_with_sizes(&mut a, &mut b, buffer_size, buffer_size).await
}

/// Accepts connections from `acceptor` and relays each to a stream from `connector` until
/// `shutdown` completes; then drains (see the module docs) and returns the final counters.
pub async fn serve<A, C, S>(
    acceptor: A,
    connector: Arc<C>,
    options: RelayOptions,
    stats: Arc<RelayStats>,
    shutdown: S,
) -> Result<RelaySummary, RelayError>
where
    A: Acceptor,
    C: Connector,
    S: Future<Output = ()> + Send,
{
    options.validate()?;
    let mut acceptor = acceptor;
    let permits = Arc::new(Semaphore::new(options.max_connections));
    let mut tasks: JoinSet<()> = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let mut error_log = RateLimitedLog::new(Duration::from_secs(1));

    loop {
        // Reap finished tasks so the set does not grow with the total count of connections.
        while tasks.try_join_next().is_some() {}
        let permit = tokio::select! {
            biased;
            () = &mut shutdown => break,
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let accepted = tokio::select! {
            biased;
            () = &mut shutdown => break,
            a = acceptor.accept() => a,
        };
        let (client, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                error_log.warn(|| tracing::warn!(error = %e, "accept failed"));
                tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                continue;
            }
        };
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        let connector = connector.clone();
        let stats = stats.clone();
        let options = options.clone();
        tasks.spawn(async move {
            let _permit = permit;
            handle(client, peer, &*connector, &options, &stats).await;
            stats.closed.fetch_add(1, Ordering::Relaxed);
        });
    }

    // Stop accepting: the listener goes away now (a vsock listener removes its socket).
    drop(acceptor);
    let drained = tokio::time::timeout(options.drain_timeout, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        let left = tasks.len() as u64;
        stats.aborted.fetch_add(left, Ordering::Relaxed);
        tracing::info!(
            connections = left,
            "drain deadline passed; closing connections"
        );
        tasks.shutdown().await;
    }
    Ok(stats.summary())
}

async fn handle<S: Stream, C: Connector>(
    client: S,
    peer: String,
    connector: &C,
    options: &RelayOptions,
    stats: &RelayStats,
) {
    let server = match tokio::time::timeout(options.connect_timeout, connector.connect()).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            stats.connect_failed.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%peer, error = %e, "cannot open the outgoing connection");
            return;
        }
        Err(_) => {
            stats.connect_failed.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%peer, "timed out opening the outgoing connection");
            return;
        }
    };
    tracing::debug!(%peer, "connection open");
    match relay_streams(client, server, options.buffer_size).await {
        Ok((up, down)) => {
            stats.bytes_up.fetch_add(up, Ordering::Relaxed);
            stats.bytes_down.fetch_add(down, Ordering::Relaxed);
            tracing::debug!(%peer, up, down, "connection closed");
        }
        Err(e) => tracing::debug!(%peer, error = %e, "connection ended with an error"),
    }
}

/// Logs at most once per interval; counts what it suppressed.
struct RateLimitedLog {
    interval: Duration,
    last: Option<tokio::time::Instant>,
    suppressed: u64,
}

impl RateLimitedLog {
    fn new(interval: Duration) -> Self {
        Self {
            interval,
            last: None,
            suppressed: 0,
        }
    }

    fn warn(&mut self, log: impl FnOnce()) {
        let now = tokio::time::Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < self.interval)
        {
            self.suppressed += 1;
            return;
        }
        if self.suppressed > 0 {
            tracing::warn!(suppressed = self.suppressed, "similar messages suppressed");
            self.suppressed = 0;
        }
        self.last = Some(now);
        log();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn relays_with_half_close() {
        let (a_outer, a_inner) = tokio::io::duplex(4096);
        let (b_inner, mut b_outer) = tokio::io::duplex(4096);
        let relay = tokio::spawn(relay_streams(a_inner, b_inner, 1024));
        let (mut a_read, mut a_write) = tokio::io::split(a_outer);
        let payload: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let p2 = payload.clone();
        let writer = tokio::spawn(async move {
            a_write.write_all(&p2).await.unwrap();
            a_write.shutdown().await.unwrap();
            a_write
        });
        // The far side reads to EOF (the half-close arrives), then answers.
        let mut got = Vec::new();
        b_outer.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, payload);
        b_outer.write_all(b"done").await.unwrap();
        b_outer.shutdown().await.unwrap();
        let mut answer = Vec::new();
        a_read.read_to_end(&mut answer).await.unwrap();
        assert_eq!(answer, b"done");
        let _ = writer.await.unwrap();
        let (up, down) = relay.await.unwrap().unwrap();
        assert_eq!((up, down), (payload.len() as u64, 4));
    }

    #[test]
    fn options_are_checked() {
        assert!(RelayOptions::default().validate().is_ok());
        let mut o = RelayOptions {
            buffer_size: 10,
            ..RelayOptions::default()
        };
        assert!(o.validate().is_err());
        o.buffer_size = DEFAULT_BUFFER_SIZE;
        o.max_connections = 0;
        assert!(o.validate().is_err());
    }
}
