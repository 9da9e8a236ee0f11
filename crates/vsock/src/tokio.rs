//! Async (tokio) vsock streams and listeners, for the proxy and other async code.
//!
//! Handshakes (a few short lines, bounded by [`HANDSHAKE_TIMEOUT`](crate::stream::HANDSHAKE_TIMEOUT))
//! run on tokio's blocking pool; the streams themselves are non-blocking sockets driven by
//! `AsyncFd`, so data moves without extra threads or copies.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use ::tokio::io::unix::AsyncFd;
use ::tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use socket2::Socket;

use crate::addr::VsockAddr;
use crate::stream::{
    self as blocking, fabric_handshake, log_dropped, RawAccept, Transport, VsockError,
};

fn join_error(e: ::tokio::task::JoinError) -> VsockError {
    VsockError::Io {
        context: "running a vsock handshake",
        source: io::Error::other(e),
    }
}

/// An async connected vsock stream.
#[derive(Debug)]
pub struct VsockStream {
    inner: AsyncFd<Socket>,
    local: VsockAddr,
    peer: VsockAddr,
}

impl VsockStream {
    /// Connects over the transport [`Transport::detect`] picks.
    pub async fn connect(addr: VsockAddr) -> Result<Self, VsockError> {
        Self::connect_with(Transport::detect(), addr).await
    }

    /// Connects over `transport`.
    pub async fn connect_with(transport: Transport, addr: VsockAddr) -> Result<Self, VsockError> {
        let stream = ::tokio::task::spawn_blocking(move || {
            blocking::VsockStream::connect_with(&transport, addr)
        })
        .await
        .map_err(join_error)??;
        Self::from_std(stream).map_err(|source| VsockError::Io {
            context: "registering a stream with tokio",
            source,
        })
    }

    /// Host side, through the fabric in `dir`.
    pub async fn connect_fabric(dir: PathBuf, addr: VsockAddr) -> Result<Self, VsockError> {
        Self::connect_with(Transport::Fabric(dir), addr).await
    }

    /// Enclave side, through the broker socket at `socket`.
    pub async fn connect_enclave(socket: PathBuf, addr: VsockAddr) -> Result<Self, VsockError> {
        Self::connect_with(Transport::Enclave(socket), addr).await
    }

    /// Native AF_VSOCK.
    pub async fn connect_native(addr: VsockAddr) -> Result<Self, VsockError> {
        Self::connect_with(Transport::Native, addr).await
    }

    /// Converts a blocking stream (must be called inside a tokio runtime).
    pub fn from_std(stream: blocking::VsockStream) -> io::Result<Self> {
        let (sock, local, peer) = stream.into_parts();
        sock.set_nonblocking(true)?;
        // SAFETY: the `Socket` owns its descriptor, which stays open and unchanged until the
        // `AsyncFd` is dropped or `into_inner` returns the socket.
        let inner = unsafe { AsyncFd::register(sock) }.map_err(io::Error::from)?;
        Ok(Self { inner, local, peer })
    }

    /// Converts back into a blocking stream.
    pub fn into_std(self) -> io::Result<blocking::VsockStream> {
        let sock = self.inner.into_inner();
        sock.set_nonblocking(false)?;
        Ok(blocking::VsockStream::from_parts(
            sock.into(),
            self.local,
            self.peer,
        ))
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> VsockAddr {
        self.peer
    }

    /// Our address.
    pub fn local_addr(&self) -> VsockAddr {
        self.local
    }

    /// Shuts down reading, writing or both.
    pub fn shutdown_std(&self, how: Shutdown) -> io::Result<()> {
        self.inner.get_ref().shutdown(how)
    }
}

impl AsyncRead for VsockStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.inner.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|inner| inner.get_ref().read(unfilled)) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for VsockStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.inner.poll_write_ready(cx))?;
            match guard.try_io(|inner| inner.get_ref().write(data)) {
                Ok(result) => return Poll::Ready(result),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.inner.get_ref().shutdown(Shutdown::Write))
    }
}

impl AsRawFd for VsockStream {
    fn as_raw_fd(&self) -> RawFd {
        self.inner.as_raw_fd()
    }
}

impl AsFd for VsockStream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.inner.get_ref().as_fd()
    }
}

/// An async vsock listener.
#[derive(Debug)]
pub struct VsockListener {
    inner: AsyncFd<blocking::VsockListener>,
}

impl VsockListener {
    /// Listens on `port` over the transport [`Transport::detect`] picks.
    pub async fn bind(port: u32) -> Result<Self, VsockError> {
        Self::bind_with(Transport::detect(), port).await
    }

    /// Listens on `port` over `transport`.
    pub async fn bind_with(transport: Transport, port: u32) -> Result<Self, VsockError> {
        let listener = ::tokio::task::spawn_blocking(move || {
            blocking::VsockListener::bind_with(&transport, port)
        })
        .await
        .map_err(join_error)??;
        Self::from_std(listener).map_err(|source| VsockError::Io {
            context: "registering a listener with tokio",
            source,
        })
    }

    /// Converts a blocking listener (must be called inside a tokio runtime).
    pub fn from_std(listener: blocking::VsockListener) -> io::Result<Self> {
        listener.set_nonblocking(true)?;
        // SAFETY: the listener owns its descriptor (listening socket or control connection),
        // which stays open and unchanged for the listener's whole life.
        let inner = unsafe { AsyncFd::register(listener) }.map_err(io::Error::from)?;
        Ok(Self { inner })
    }

    /// Our address.
    pub fn local_addr(&self) -> VsockAddr {
        self.inner.get_ref().local_addr()
    }

    /// Waits for a connection (fabric connections that fail their handshake are dropped and
    /// the wait goes on, as with the blocking listener).
    pub async fn accept(&self) -> Result<(VsockStream, VsockAddr), VsockError> {
        loop {
            let step = {
                let mut guard = self
                    .inner
                    .readable()
                    .await
                    .map_err(|source| VsockError::Io {
                        context: "waiting for a connection",
                        source,
                    })?;
                match guard.get_inner().accept_raw(true) {
                    Err(e) if e.is_would_block() => {
                        guard.clear_ready();
                        continue;
                    }
                    other => other?,
                }
            };
            let stream = match step {
                RawAccept::Ready(s) => s,
                RawAccept::Fabric(sock) => {
                    let local = self.local_addr();
                    let dir = self.inner.get_ref().fabric_dir().map(PathBuf::from);
                    let finished = ::tokio::task::spawn_blocking(move || {
                        fabric_handshake(sock, local, dir.as_deref())
                    })
                    .await
                    .map_err(join_error)?;
                    match finished {
                        Ok(s) => s,
                        Err(e) => {
                            log_dropped(&e);
                            continue;
                        }
                    }
                }
            };
            let peer = stream.peer_addr();
            let stream = VsockStream::from_std(stream).map_err(|source| VsockError::Io {
                context: "registering a stream with tokio",
                source,
            })?;
            return Ok((stream, peer));
        }
    }
}
