//! Cloister's controlled paths between enclaves and the outside world.
//!
//! - [`vsock_proxy`]: `vsock-proxy`, AWS's parent-side proxy: listens on a vsock port and
//!   carries each connection to one TCP destination that an allowlist ([`allowlist`]) permits,
//!   re-resolving the destination's name when its DNS TTL runs out ([`dns`]).
//! - [`forward`]: forwarders between TCP and vsock in both directions: inside an enclave, a
//!   TCP listener on loopback that reaches a parent vsock port (so an unmodified HTTP client
//!   reaches vsock-proxy); on the host, a TCP listener that reaches an enclave's vsock port
//!   (ingress), and the reverse.
//! - [`relay`]: the engine both use: accept, connect, copy both ways with bounded buffers and
//!   half-close, a high cap on concurrent connections, and a drain deadline at shutdown.
//!
//! Everything is async (tokio). vsock sockets come from `cloister-vsock`, which picks the
//! transport (the host fabric, the enclave side, or native AF_VSOCK).

pub mod allowlist;
pub mod dns;
pub mod forward;
pub mod relay;
pub mod vsock_io;
pub mod vsock_proxy;

pub use allowlist::{AllowEntry, Allowlist, AllowlistError};
pub use dns::{IpAddrType, Resolver, StaticResolver, SystemResolver};
pub use forward::{ForwardError, TcpToVsock, VsockToTcp};
pub use relay::{RelayOptions, RelayStats, RelaySummary};
pub use vsock_proxy::{ProxyConfig, ProxyError, VsockProxy};

/// Raises this process's soft limit on open files to its hard limit, so a proxy can hold many
/// connections (each takes two descriptors). Returns the new soft limit.
pub fn raise_fd_limit() -> std::io::Result<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(std::io::Error::from)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).map_err(std::io::Error::from)?;
        return Ok(hard);
    }
    Ok(soft)
}
