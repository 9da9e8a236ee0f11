//! Name resolution with lifetimes (TTLs), behind a small trait.
//!
//! vsock-proxy resolves its remote host once, connects every new client to that address, and
//! resolves again when the record's TTL has run out (AWS's behaviour). [`Resolver`] returns
//! addresses with the instant they stop being valid; [`SystemResolver`] asks the system's DNS
//! servers (from `/etc/resolv.conf`, with `/etc/hosts`) through hickory-resolver and so sees the
//! real TTLs; [`StaticResolver`] serves a fixed, changeable table (pinned names, tests).
//!
//! IP address literals resolve to themselves and never expire.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long an IP literal, or an answer without a usable TTL, is kept before resolving again.
pub const LITERAL_TTL: Duration = Duration::from_secs(365 * 24 * 3600);
/// Lower bound on a TTL, so a zero-TTL record does not cause a lookup per connection burst.
pub const MIN_TTL: Duration = Duration::from_secs(1);
/// TTL used for answers from the operating system's resolver, which does not report one.
pub const FALLBACK_TTL: Duration = Duration::from_secs(60);
/// Longest time one lookup may take.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Which address families the proxy may use (`-4`, `-6`, or neither).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IpAddrType {
    /// IPv4 or IPv6, in the order the resolver returns them.
    #[default]
    Mixed,
    /// IPv4 only (`-4`).
    V4Only,
    /// IPv6 only (`-6`).
    V6Only,
}

impl IpAddrType {
    /// True when `ip` is of an allowed family.
    pub fn accepts(self, ip: &IpAddr) -> bool {
        match self {
            IpAddrType::Mixed => true,
            IpAddrType::V4Only => ip.is_ipv4(),
            IpAddrType::V6Only => ip.is_ipv6(),
        }
    }
}

/// Errors resolving a name.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// The lookup failed (no such name, no server reachable, ...).
    #[error("lookup of {host} failed: {reason}")]
    Lookup {
        /// The name.
        host: String,
        /// The resolver's explanation.
        reason: String,
    },
    /// The name resolved, but to no address.
    #[error("{0} has no address")]
    NoAddress(String),
    /// The name resolved, but to no address of the family asked for.
    #[error("{host} has no {family} address")]
    NoAcceptedAddress {
        /// The name.
        host: String,
        /// "IPv4" or "IPv6".
        family: &'static str,
    },
    /// The lookup took longer than [`LOOKUP_TIMEOUT`].
    #[error("lookup of {0} timed out")]
    Timeout(String),
}

/// One resolved address and when it stops being valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolution {
    /// The address.
    pub ip: IpAddr,
    /// When the answer expires (resolution time + TTL).
    pub valid_until: Instant,
}

impl Resolution {
    /// True once the TTL has run out.
    pub fn is_expired(&self, now: Instant) -> bool {
        now >= self.valid_until
    }
}

/// A boxed future, as returned by [`Resolver::resolve`].
pub type ResolveFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Vec<Resolution>, DnsError>> + Send + 'a>>;

/// Resolves names to addresses with their lifetimes.
pub trait Resolver: Send + Sync {
    /// Every address of `host`, in preference order. IP literals resolve to themselves.
    fn resolve<'a>(&'a self, host: &'a str) -> ResolveFuture<'a>;
}

/// The addresses of `host` of the accepted family (AWS: "No accepted IP was found" otherwise).
pub async fn resolve_filtered(
    resolver: &dyn Resolver,
    host: &str,
    ip_type: IpAddrType,
) -> Result<Vec<Resolution>, DnsError> {
    let all = match tokio::time::timeout(LOOKUP_TIMEOUT, resolver.resolve(host)).await {
        Ok(r) => r?,
        Err(_) => return Err(DnsError::Timeout(host.to_owned())),
    };
    if all.is_empty() {
        return Err(DnsError::NoAddress(host.to_owned()));
    }
    let accepted: Vec<Resolution> = all.into_iter().filter(|r| ip_type.accepts(&r.ip)).collect();
    if accepted.is_empty() {
        return Err(DnsError::NoAcceptedAddress {
            host: host.to_owned(),
            family: if ip_type == IpAddrType::V6Only {
                "IPv6"
            } else {
                "IPv4"
            },
        });
    }
    Ok(accepted)
}

/// The first address of `host` of the accepted family (what the proxy connects to).
pub async fn resolve_single(
    resolver: &dyn Resolver,
    host: &str,
    ip_type: IpAddrType,
) -> Result<Resolution, DnsError> {
    let all = resolve_filtered(resolver, host, ip_type).await?;
    all.into_iter()
        .next()
        .ok_or_else(|| DnsError::NoAddress(host.to_owned()))
}

fn literal(host: &str) -> Option<IpAddr> {
    let trimmed = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    trimmed.parse().ok()
}

fn literal_resolution(ip: IpAddr) -> Vec<Resolution> {
    vec![Resolution {
        ip,
        valid_until: Instant::now() + LITERAL_TTL,
    }]
}

/// The system's DNS configuration, queried by hickory-resolver so that TTLs are known. Where no
/// usable `/etc/resolv.conf` exists, falls back to the operating system's resolver
/// (`getaddrinfo`) with [`FALLBACK_TTL`].
pub struct SystemResolver {
    inner: Option<hickory_resolver::TokioResolver>,
}

impl std::fmt::Debug for SystemResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SystemResolver")
            .field("hickory", &self.inner.is_some())
            .finish()
    }
}

impl SystemResolver {
    /// Reads the system configuration.
    pub fn new() -> Self {
        let inner = match hickory_resolver::TokioResolver::builder_tokio() {
            Ok(mut builder) => {
                builder.options_mut().ip_strategy =
                    hickory_resolver::config::LookupIpStrategy::Ipv4thenIpv6;
                Some(builder.build())
            }
            Err(e) => {
                tracing::warn!(error = %e, "no usable DNS configuration; using getaddrinfo without TTLs");
                None
            }
        };
        Self { inner }
    }
}

impl Default for SystemResolver {
    fn default() -> Self {
        Self::new()
    }
}

impl Resolver for SystemResolver {
    fn resolve<'a>(&'a self, host: &'a str) -> ResolveFuture<'a> {
        Box::pin(async move {
            if let Some(ip) = literal(host) {
                return Ok(literal_resolution(ip));
            }
            if let Some(resolver) = &self.inner {
                match resolver.lookup_ip(host).await {
                    Ok(lookup) => {
                        let now = Instant::now();
                        let valid_until = lookup.valid_until().max(now + MIN_TTL);
                        let out: Vec<Resolution> = lookup
                            .iter()
                            .map(|ip| Resolution { ip, valid_until })
                            .collect();
                        if !out.is_empty() {
                            return Ok(out);
                        }
                    }
                    Err(e) => {
                        // "localhost" and names only in nsswitch sources other than files and
                        // DNS are still found through getaddrinfo below.
                        tracing::debug!(host, error = %e, "DNS lookup failed; trying getaddrinfo");
                    }
                }
            }
            let addrs = tokio::net::lookup_host((host, 0))
                .await
                .map_err(|e| DnsError::Lookup {
                    host: host.to_owned(),
                    reason: e.to_string(),
                })?;
            let valid_until = Instant::now() + FALLBACK_TTL;
            let mut out: Vec<Resolution> = Vec::new();
            for a in addrs {
                if !out.iter().any(|r| r.ip == a.ip()) {
                    out.push(Resolution {
                        ip: a.ip(),
                        valid_until,
                    });
                }
            }
            Ok(out)
        })
    }
}

/// A fixed table of names, changeable at run time; names not in it fail to resolve (IP
/// literals always resolve). Use it to pin names, and in tests to simulate DNS changes.
#[derive(Debug, Clone, Default)]
pub struct StaticResolver {
    table: Arc<Mutex<StaticTable>>,
}

/// Name -> (addresses, TTL).
type StaticTable = HashMap<String, (Vec<IpAddr>, Duration)>;

impl StaticResolver {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets (or replaces) the addresses of `host`, each answer valid for `ttl`.
    pub fn set(&self, host: &str, addrs: &[IpAddr], ttl: Duration) {
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        table.insert(host.to_ascii_lowercase(), (addrs.to_vec(), ttl));
    }

    /// Removes `host`.
    pub fn remove(&self, host: &str) {
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        table.remove(&host.to_ascii_lowercase());
    }
}

impl Resolver for StaticResolver {
    fn resolve<'a>(&'a self, host: &'a str) -> ResolveFuture<'a> {
        Box::pin(async move {
            if let Some(ip) = literal(host) {
                return Ok(literal_resolution(ip));
            }
            let table = self.table.lock().unwrap_or_else(|p| p.into_inner());
            let (addrs, ttl) =
                table
                    .get(&host.to_ascii_lowercase())
                    .ok_or_else(|| DnsError::Lookup {
                        host: host.to_owned(),
                        reason: "not in the static table".to_owned(),
                    })?;
            let valid_until = Instant::now() + *ttl;
            Ok(addrs
                .iter()
                .map(|&ip| Resolution { ip, valid_until })
                .collect())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn literals_resolve_to_themselves() {
        let r = StaticResolver::new();
        let v4 = resolve_single(&r, "127.0.0.1", IpAddrType::Mixed)
            .await
            .unwrap();
        assert_eq!(v4.ip, IpAddr::from([127, 0, 0, 1]));
        assert!(!v4.is_expired(Instant::now()));
        let v6 = resolve_single(&r, "[::1]", IpAddrType::V6Only)
            .await
            .unwrap();
        assert!(v6.ip.is_ipv6());
        assert!(matches!(
            resolve_single(&r, "::1", IpAddrType::V4Only).await,
            Err(DnsError::NoAcceptedAddress { .. })
        ));
    }

    #[tokio::test]
    async fn static_table_changes_and_expires() {
        let r = StaticResolver::new();
        r.set("svc", &[IpAddr::from([10, 0, 0, 1])], Duration::ZERO);
        let a = resolve_single(&r, "SVC", IpAddrType::Mixed).await.unwrap();
        assert!(a.is_expired(Instant::now()));
        r.set(
            "svc",
            &[IpAddr::from([10, 0, 0, 2])],
            Duration::from_secs(5),
        );
        let b = resolve_single(&r, "svc", IpAddrType::Mixed).await.unwrap();
        assert_eq!(b.ip, IpAddr::from([10, 0, 0, 2]));
        r.remove("svc");
        assert!(resolve_single(&r, "svc", IpAddrType::Mixed).await.is_err());
        r.set("empty", &[], Duration::from_secs(5));
        assert!(matches!(
            resolve_single(&r, "empty", IpAddrType::Mixed).await,
            Err(DnsError::NoAddress(_))
        ));
    }

    #[tokio::test]
    async fn system_resolver_finds_localhost_and_literals() {
        let r = SystemResolver::new();
        let lo = resolve_filtered(&r, "localhost", IpAddrType::Mixed)
            .await
            .unwrap();
        assert!(lo.iter().all(|a| a.ip.is_loopback()), "{lo:?}");
        let lit = resolve_single(&r, "127.0.0.1", IpAddrType::V4Only)
            .await
            .unwrap();
        assert_eq!(lit.ip, IpAddr::from([127, 0, 0, 1]));
    }
}
