//! The async vsock endpoints the proxy and forwarders use, on top of `cloister_vsock::tokio`.
//! `None` for a transport means the one `cloister_vsock` detects (inside a process enclave the
//! broker socket, on the host the fabric directory, elsewhere native AF_VSOCK).

use crate::relay::{Acceptor, Connector};
use std::io;

pub use cloister_vsock::{Transport, VsockAddr};

/// An async vsock stream.
pub type AsyncVsockStream = cloister_vsock::tokio::VsockStream;

/// An async vsock listener; accepting yields the peer's address for logs.
#[derive(Debug)]
pub struct AsyncVsockListener(cloister_vsock::tokio::VsockListener);

/// Listens on vsock `port` (on the host fabric: `<run>/vsock/3_<port>.sock`, removed again
/// when the listener is dropped).
pub async fn listen(transport: Option<Transport>, port: u32) -> io::Result<AsyncVsockListener> {
    let l = match transport {
        Some(t) => cloister_vsock::tokio::VsockListener::bind_with(t, port).await,
        None => cloister_vsock::tokio::VsockListener::bind(port).await,
    }
    .map_err(io::Error::from)?;
    Ok(AsyncVsockListener(l))
}

/// Connects to `addr`.
pub async fn connect(
    transport: Option<Transport>,
    addr: VsockAddr,
) -> io::Result<AsyncVsockStream> {
    match transport {
        Some(t) => cloister_vsock::tokio::VsockStream::connect_with(t, addr).await,
        None => cloister_vsock::tokio::VsockStream::connect(addr).await,
    }
    .map_err(io::Error::from)
}

impl AsyncVsockListener {
    /// The bound address.
    pub fn local_addr(&self) -> VsockAddr {
        self.0.local_addr()
    }
}

impl Acceptor for AsyncVsockListener {
    type Stream = AsyncVsockStream;
    async fn accept(&mut self) -> io::Result<(Self::Stream, String)> {
        let (s, peer) = self.0.accept().await.map_err(io::Error::from)?;
        Ok((s, peer.to_string()))
    }
}

/// Connects to a fixed vsock address.
#[derive(Debug, Clone)]
pub struct VsockConnector {
    /// The destination.
    pub addr: VsockAddr,
    /// The transport (`None`: detected).
    pub transport: Option<Transport>,
}

impl Connector for VsockConnector {
    type Stream = AsyncVsockStream;
    async fn connect(&self) -> io::Result<Self::Stream> {
        connect(self.transport.clone(), self.addr).await
    }
}
