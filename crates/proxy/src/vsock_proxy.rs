//! vsock-proxy: carries connections from enclaves (a vsock port on the parent) to one
//! allowlisted TCP destination, as AWS's `vsock-proxy` does.
//!
//! Before it listens, [`VsockProxy::run`] checks the destination against the allowlist with
//! AWS's rules ([`crate::allowlist::check_destination`]) and refuses to start otherwise. Each
//! new connection goes to the address the remote host last resolved to; once that answer's TTL
//! has run out, the next connection resolves the name again. A destination that was allowed only
//! through its address (not by name) is checked again after each re-resolution, so a DNS change
//! cannot move it off the allowlist. Connections, buffers and shutdown follow
//! [`crate::relay`].

use crate::allowlist::{self, AllowedDestination, Allowlist, AllowlistError, MatchKind};
use crate::dns::{self, DnsError, IpAddrType, Resolution, Resolver, SystemResolver};
use crate::relay::{self, Acceptor, Connector, RelayError, RelayOptions, RelayStats, RelaySummary};
use crate::vsock_io::Transport;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

/// Settings of one proxy (the command line of `vsock-proxy`).
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// The vsock port to listen on (on the parent, CID 3).
    pub local_port: u32,
    /// The destination host (a name or an IP literal).
    pub remote_host: String,
    /// The destination TCP port.
    pub remote_port: u16,
    /// Address families allowed (`-4` / `-6`).
    pub ip_type: IpAddrType,
    /// The allowed destinations.
    pub allowlist: Allowlist,
    /// Connection limits, buffers and timeouts.
    pub relay: RelayOptions,
    /// The vsock transport to listen on (`None`: the one `cloister-vsock` detects).
    pub transport: Option<Transport>,
}

impl ProxyConfig {
    /// A configuration with default limits and the detected transport.
    pub fn new(local_port: u32, remote_host: &str, remote_port: u16, allowlist: Allowlist) -> Self {
        Self {
            local_port,
            remote_host: remote_host.to_owned(),
            remote_port,
            ip_type: IpAddrType::Mixed,
            allowlist,
            relay: RelayOptions::default(),
            transport: None,
        }
    }
}

/// Errors of the proxy.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The destination is not allowed, or cannot be resolved.
    #[error("refusing to start")]
    Allowlist(#[from] AllowlistError),
    /// The vsock port cannot be listened on.
    #[error("cannot listen on vsock port {port}")]
    Listen {
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

/// A configured proxy. See the module docs.
pub struct VsockProxy {
    config: ProxyConfig,
    resolver: Arc<dyn Resolver>,
    stats: Arc<RelayStats>,
}

impl std::fmt::Debug for VsockProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VsockProxy")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl VsockProxy {
    /// A proxy that resolves names through the system's DNS configuration.
    pub fn new(config: ProxyConfig) -> Self {
        Self::with_resolver(config, Arc::new(SystemResolver::new()))
    }

    /// A proxy with its own resolver.
    pub fn with_resolver(config: ProxyConfig, resolver: Arc<dyn Resolver>) -> Self {
        Self {
            config,
            resolver,
            stats: Arc::new(RelayStats::default()),
        }
    }

    /// The live counters.
    pub fn stats(&self) -> Arc<RelayStats> {
        self.stats.clone()
    }

    /// Checks the destination against the allowlist (what `run` does before listening).
    pub async fn check(&self) -> Result<AllowedDestination, AllowlistError> {
        allowlist::check_destination(
            &self.config.allowlist,
            &self.config.remote_host,
            self.config.remote_port,
            self.config.ip_type,
            &*self.resolver,
        )
        .await
    }

    /// Checks the allowlist, listens on the configured vsock port (the host side of the
    /// fabric, or native AF_VSOCK) and serves until `shutdown` completes.
    pub async fn run<S>(self, shutdown: S) -> Result<RelaySummary, ProxyError>
    where
        S: Future<Output = ()> + Send,
    {
        self.config.relay.validate()?;
        let allowed = self.check().await?;
        let port = self.config.local_port;
        let listener = crate::vsock_io::listen(self.config.transport.clone(), port)
            .await
            .map_err(|source| ProxyError::Listen { port, source })?;
        self.serve_checked(listener, allowed, shutdown).await
    }

    /// Like [`run`](Self::run), on a listener the caller opened (a vsock listener, or a TCP or
    /// Unix listener in tests and benchmarks).
    pub async fn run_on<A, S>(self, acceptor: A, shutdown: S) -> Result<RelaySummary, ProxyError>
    where
        A: Acceptor,
        S: Future<Output = ()> + Send,
    {
        self.config.relay.validate()?;
        let allowed = self.check().await?;
        self.serve_checked(acceptor, allowed, shutdown).await
    }

    async fn serve_checked<A, S>(
        self,
        acceptor: A,
        allowed: AllowedDestination,
        shutdown: S,
    ) -> Result<RelaySummary, ProxyError>
    where
        A: Acceptor,
        S: Future<Output = ()> + Send,
    {
        tracing::info!(
            host = %self.config.remote_host,
            port = self.config.remote_port,
            ip = %allowed.resolution.ip,
            matched = ?allowed.matched,
            "destination allowed"
        );
        let connector = Arc::new(ResolvingConnector {
            host: self.config.remote_host.clone(),
            port: self.config.remote_port,
            ip_type: self.config.ip_type,
            resolver: self.resolver.clone(),
            allowed: allowed.clone(),
            current: tokio::sync::Mutex::new(allowed.resolution),
        });
        Ok(relay::serve(
            acceptor,
            connector,
            self.config.relay.clone(),
            self.stats.clone(),
            shutdown,
        )
        .await?)
    }
}

/// Connects to the remote host's current address, re-resolving once the TTL runs out.
struct ResolvingConnector {
    host: String,
    port: u16,
    ip_type: IpAddrType,
    resolver: Arc<dyn Resolver>,
    allowed: AllowedDestination,
    current: tokio::sync::Mutex<Resolution>,
}

impl ResolvingConnector {
    async fn address(&self) -> Result<SocketAddr, DnsError> {
        let mut current = self.current.lock().await;
        if current.is_expired(Instant::now()) {
            let fresh = dns::resolve_single(&*self.resolver, &self.host, self.ip_type).await?;
            if fresh.ip != current.ip {
                if self.allowed.matched == MatchKind::ByAddress
                    && !allowlist::entry_allows_ip(
                        &self.allowed.entry,
                        fresh.ip,
                        self.ip_type,
                        &*self.resolver,
                    )
                    .await
                {
                    return Err(DnsError::Lookup {
                        host: self.host.clone(),
                        reason: format!("new address {} is not on the allowlist", fresh.ip),
                    });
                }
                tracing::info!(host = %self.host, old = %current.ip, new = %fresh.ip, "remote address changed");
            }
            *current = fresh;
        }
        Ok(SocketAddr::new(current.ip, self.port))
    }
}

impl Connector for ResolvingConnector {
    type Stream = tokio::net::TcpStream;
    async fn connect(&self) -> io::Result<Self::Stream> {
        let addr = self
            .address()
            .await
            .map_err(|e| io::Error::new(io::ErrorKind::NotFound, e))?;
        let s = tokio::net::TcpStream::connect(addr).await?;
        let _ = s.set_nodelay(true);
        Ok(s)
    }
}
