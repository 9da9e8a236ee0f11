//! Forwarders between TCP and vsock.
//!
//! - [`TcpToVsock`]: a TCP listener whose connections are carried to a vsock address. Inside an
//!   enclave, `127.0.0.1:PORT -> (3, P)` lets an unmodified client reach the parent's
//!   vsock-proxy; on the host, `0.0.0.0:PORT -> (CID, P)` carries ingress traffic into an
//!   enclave.
//! - [`VsockToTcp`]: a vsock listener whose connections are carried to a TCP address. Inside an
//!   enclave it joins the host's ingress forwarder to a server on the enclave's loopback; on the
//!   host it is vsock-proxy without an allowlist, for destinations the operator chooses (so it
//!   only accepts a literal `IP:port`, never a name).
//!
//! Both run on [`crate::relay`]: bounded buffers, half-close, a high connection cap, and a drain
//! deadline at shutdown.

use crate::relay::{self, RelayError, RelayOptions, RelayStats, RelaySummary, TcpConnector};
use crate::vsock_io::{self, Transport, VsockAddr, VsockConnector};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

/// Errors of the forwarders.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// The TCP address cannot be listened on.
    #[error("cannot listen on {addr}")]
    TcpListen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The vsock port cannot be listened on.
    #[error("cannot listen on vsock port {port}")]
    VsockListen {
        /// The port.
        port: u32,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A limit is out of range.
    #[error(transparent)]
    Relay(#[from] RelayError),
}

/// A bound TCP listener that forwards to a vsock address.
#[derive(Debug)]
pub struct TcpToVsock {
    listener: tokio::net::TcpListener,
    target: VsockAddr,
    transport: Option<Transport>,
    options: RelayOptions,
    stats: Arc<RelayStats>,
}

impl TcpToVsock {
    /// Binds `listen` (port 0 picks a free port; see [`local_addr`](Self::local_addr)).
    pub async fn bind(
        listen: SocketAddr,
        target: VsockAddr,
        options: RelayOptions,
    ) -> Result<Self, ForwardError> {
        options.validate()?;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|source| ForwardError::TcpListen {
                addr: listen,
                source,
            })?;
        Ok(Self {
            listener,
            target,
            transport: None,
            options,
            stats: Arc::new(RelayStats::default()),
        })
    }

    /// Uses `transport` instead of the detected one.
    pub fn with_transport(mut self, transport: Transport) -> Self {
        self.transport = Some(transport);
        self
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The live counters.
    pub fn stats(&self) -> Arc<RelayStats> {
        self.stats.clone()
    }

    /// Forwards until `shutdown` completes, then drains.
    pub async fn run<S: Future<Output = ()> + Send>(
        self,
        shutdown: S,
    ) -> Result<RelaySummary, ForwardError> {
        tracing::info!(listen = ?self.listener.local_addr().ok(), target = %self.target, "forwarding TCP to vsock");
        Ok(relay::serve(
            self.listener,
            Arc::new(VsockConnector {
                addr: self.target,
                transport: self.transport,
            }),
            self.options,
            self.stats,
            shutdown,
        )
        .await?)
    }
}

/// A bound vsock listener that forwards to a TCP address.
pub struct VsockToTcp {
    listener: vsock_io::AsyncVsockListener,
    port: u32,
    target: SocketAddr,
    options: RelayOptions,
    stats: Arc<RelayStats>,
}

impl std::fmt::Debug for VsockToTcp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VsockToTcp")
            .field("port", &self.port)
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl VsockToTcp {
    /// Listens on vsock `port` over `transport` (`None`: the one `cloister-vsock` detects).
    pub async fn bind(
        transport: Option<Transport>,
        port: u32,
        target: SocketAddr,
        options: RelayOptions,
    ) -> Result<Self, ForwardError> {
        options.validate()?;
        let listener = vsock_io::listen(transport, port)
            .await
            .map_err(|source| ForwardError::VsockListen { port, source })?;
        Ok(Self {
            listener,
            port,
            target,
            options,
            stats: Arc::new(RelayStats::default()),
        })
    }

    /// The live counters.
    pub fn stats(&self) -> Arc<RelayStats> {
        self.stats.clone()
    }

    /// Forwards until `shutdown` completes, then drains.
    pub async fn run<S: Future<Output = ()> + Send>(
        self,
        shutdown: S,
    ) -> Result<RelaySummary, ForwardError> {
        tracing::info!(port = self.port, target = %self.target, "forwarding vsock to TCP");
        Ok(relay::serve(
            self.listener,
            Arc::new(TcpConnector(self.target)),
            self.options,
            self.stats,
            shutdown,
        )
        .await?)
    }
}
