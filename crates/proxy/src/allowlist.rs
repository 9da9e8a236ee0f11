//! The vsock-proxy allowlist: AWS's YAML format and AWS's matching rules.
//!
//! The file is the one AWS's `vsock-proxy` reads (`/etc/nitro_enclaves/vsock-proxy.yaml`):
//!
//! ```yaml
//! allowlist:
//! - {address: kms.us-east-1.amazonaws.com, port: 443}
//! - {address: 127.0.0.1, port: 8443}
//! ```
//!
//! A destination `(remote_host, remote_port)` is allowed when some entry has the same port and
//! either names `remote_host` exactly, or resolves (under the same IP family restriction) to the
//! address `remote_host` resolves to. [`check_destination`] applies those rules with a
//! [`Resolver`](crate::dns::Resolver) and returns the address to connect to and how it matched.
//!
//! The file is untrusted input to the parser: its size, the number of entries and the length of
//! each address are capped by named constants, and every field is type-checked (a port outside
//! 0..=65535 is an error, not a truncation).

use crate::dns::{DnsError, IpAddrType, Resolution, Resolver};
use serde::Deserialize;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// Where AWS's vsock-proxy reads its allowlist from when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/nitro_enclaves/vsock-proxy.yaml";
/// Largest allowlist file accepted, in bytes.
pub const MAX_CONFIG_BYTES: usize = 1024 * 1024;
/// Largest number of entries accepted.
pub const MAX_ENTRIES: usize = 10_000;
/// Longest address accepted (the longest DNS name is 253 characters).
pub const MAX_ADDRESS_LEN: usize = 253;

/// Errors loading or applying an allowlist.
#[derive(Debug, thiserror::Error)]
pub enum AllowlistError {
    /// The allowlist file cannot be read.
    #[error("cannot read allowlist {0}")]
    Read(PathBuf, #[source] std::io::Error),
    /// The allowlist file is larger than [`MAX_CONFIG_BYTES`].
    #[error("allowlist is {size} bytes, more than the limit of {MAX_CONFIG_BYTES}")]
    TooLarge {
        /// Size of the input, in bytes.
        size: u64,
    },
    /// The YAML is malformed or does not have the `allowlist: [{address, port}]` shape.
    #[error("malformed allowlist")]
    Yaml(#[source] serde_yaml_ng::Error),
    /// More entries than [`MAX_ENTRIES`].
    #[error("allowlist has {0} entries, more than the limit of {MAX_ENTRIES}")]
    TooManyEntries(usize),
    /// An entry's address is empty, too long or contains characters no host name has.
    #[error("allowlist entry {index}: invalid address {address:?}")]
    BadAddress {
        /// Position of the entry, from 0.
        index: usize,
        /// The address as written (truncated to [`MAX_ADDRESS_LEN`] characters).
        address: String,
    },
    /// The destination's own name cannot be resolved.
    #[error("cannot resolve the remote host {host}")]
    Resolve {
        /// The remote host.
        host: String,
        /// Why.
        #[source]
        source: DnsError,
    },
    /// No entry allows this destination.
    #[error("the destination {host}:{port} is not on the allowlist")]
    NotAllowed {
        /// The remote host.
        host: String,
        /// The remote port.
        port: u16,
    },
}

/// One allowed destination.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowEntry {
    /// A host name or an IP address literal.
    pub address: String,
    /// A TCP port.
    pub port: u16,
}

/// A parsed allowlist.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Allowlist {
    /// The allowed destinations, in file order.
    pub allowlist: Vec<AllowEntry>,
}

/// How a destination matched the allowlist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchKind {
    /// An entry names the remote host exactly: any address the name resolves to later is
    /// allowed too.
    ByName,
    /// An entry resolves to the remote host's address: a later re-resolution must match again.
    ByAddress,
}

/// The result of a successful allowlist check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedDestination {
    /// The address `remote_host` resolved to (the one to connect to), with its lifetime.
    pub resolution: Resolution,
    /// How it matched.
    pub matched: MatchKind,
    /// The entry that allowed it.
    pub entry: AllowEntry,
}

impl Allowlist {
    /// Parses the YAML text of an allowlist file.
    pub fn from_yaml(text: &[u8]) -> Result<Self, AllowlistError> {
        if text.len() > MAX_CONFIG_BYTES {
            return Err(AllowlistError::TooLarge {
                size: text.len() as u64,
            });
        }
        let list: Allowlist = serde_yaml_ng::from_slice(text).map_err(AllowlistError::Yaml)?;
        list.validate()?;
        Ok(list)
    }

    /// Reads and parses an allowlist file.
    pub fn load(path: &Path) -> Result<Self, AllowlistError> {
        use std::io::Read;
        let file =
            std::fs::File::open(path).map_err(|e| AllowlistError::Read(path.to_owned(), e))?;
        let mut text = Vec::new();
        // Read one byte past the limit so an oversized file is reported, not truncated.
        file.take(MAX_CONFIG_BYTES as u64 + 1)
            .read_to_end(&mut text)
            .map_err(|e| AllowlistError::Read(path.to_owned(), e))?;
        Self::from_yaml(&text)
    }

    fn validate(&self) -> Result<(), AllowlistError> {
        if self.allowlist.len() > MAX_ENTRIES {
            return Err(AllowlistError::TooManyEntries(self.allowlist.len()));
        }
        for (index, entry) in self.allowlist.iter().enumerate() {
            if !is_plausible_host(&entry.address) {
                return Err(AllowlistError::BadAddress {
                    index,
                    address: entry.address.chars().take(MAX_ADDRESS_LEN).collect(),
                });
            }
        }
        Ok(())
    }
}

/// True for a non-empty string of at most [`MAX_ADDRESS_LEN`] bytes made of the characters
/// host names and IP literals use (letters, digits, `-`, `.`, `_`, `:`, `%`).
pub fn is_plausible_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= MAX_ADDRESS_LEN
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b':' | b'%'))
}

/// Applies AWS's rules: resolves `remote_host` to one address (the first of the family asked
/// for), then looks for an entry with `remote_port` whose address is `remote_host` itself or
/// resolves to that address. Entries that fail to resolve are skipped, as AWS does.
pub async fn check_destination(
    allowlist: &Allowlist,
    remote_host: &str,
    remote_port: u16,
    ip_type: IpAddrType,
    resolver: &dyn Resolver,
) -> Result<AllowedDestination, AllowlistError> {
    let not_allowed = || AllowlistError::NotAllowed {
        host: remote_host.to_owned(),
        port: remote_port,
    };
    if !allowlist.allowlist.iter().any(|e| e.port == remote_port) {
        return Err(not_allowed());
    }
    let resolution = crate::dns::resolve_single(resolver, remote_host, ip_type)
        .await
        .map_err(|source| AllowlistError::Resolve {
            host: remote_host.to_owned(),
            source,
        })?;
    for entry in allowlist.allowlist.iter().filter(|e| e.port == remote_port) {
        if entry.address == remote_host {
            return Ok(AllowedDestination {
                resolution,
                matched: MatchKind::ByName,
                entry: entry.clone(),
            });
        }
        match crate::dns::resolve_filtered(resolver, &entry.address, ip_type).await {
            Ok(addrs) if addrs.iter().any(|a| a.ip == resolution.ip) => {
                return Ok(AllowedDestination {
                    resolution,
                    matched: MatchKind::ByAddress,
                    entry: entry.clone(),
                });
            }
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(address = %entry.address, error = %e, "allowlist entry does not resolve");
            }
        }
    }
    Err(not_allowed())
}

/// True when `ip` is one of the addresses `entry` resolves to (used to re-check an address
/// allowed [`MatchKind::ByAddress`] after the remote host's DNS record changed).
pub async fn entry_allows_ip(
    entry: &AllowEntry,
    ip: IpAddr,
    ip_type: IpAddrType,
    resolver: &dyn Resolver,
) -> bool {
    match crate::dns::resolve_filtered(resolver, &entry.address, ip_type).await {
        Ok(addrs) => addrs.iter().any(|a| a.ip == ip),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::StaticResolver;
    use std::time::Duration;

    #[test]
    fn parses_aws_format() {
        let text = b"allowlist:\n- {address: kms.us-east-1.amazonaws.com, port: 443}\n- {address: 127.0.0.1, port: 8000}\n";
        let list = Allowlist::from_yaml(text).unwrap();
        assert_eq!(list.allowlist.len(), 2);
        assert_eq!(list.allowlist[0].address, "kms.us-east-1.amazonaws.com");
        assert_eq!(list.allowlist[1].port, 8000);
    }

    #[test]
    fn rejects_bad_shapes() {
        for bad in [
            &b"whitelist:\n- {address: a, port: 1}\n"[..],
            b"allowlist:\n- {address: a, port: 70000}\n",
            b"allowlist:\n- {address: a, port: -1}\n",
            b"allowlist:\n- {address: a}\n",
            b"allowlist:\n- {address: a, port: 1, extra: 2}\n",
            b"allowlist:\n- {address: '', port: 1}\n",
            b"allowlist:\n- {address: 'a b', port: 1}\n",
            b"allowlist: 3\n",
            b"\xff\xfe",
            b"",
        ] {
            assert!(
                Allowlist::from_yaml(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn rejects_oversized_input() {
        let big = vec![b' '; MAX_CONFIG_BYTES + 1];
        assert!(matches!(
            Allowlist::from_yaml(&big),
            Err(AllowlistError::TooLarge { .. })
        ));
        let long = format!("allowlist:\n- {{address: {}, port: 1}}\n", "a".repeat(300));
        assert!(matches!(
            Allowlist::from_yaml(long.as_bytes()),
            Err(AllowlistError::BadAddress { index: 0, .. })
        ));
    }

    fn resolver() -> StaticResolver {
        let r = StaticResolver::new();
        r.set(
            "kms.example",
            &["10.0.0.1".parse().unwrap()],
            Duration::from_secs(60),
        );
        r.set(
            "alias.example",
            &["10.0.0.1".parse().unwrap()],
            Duration::from_secs(60),
        );
        r.set(
            "other.example",
            &["10.0.0.2".parse().unwrap()],
            Duration::from_secs(60),
        );
        r
    }

    fn list(entries: &[(&str, u16)]) -> Allowlist {
        Allowlist {
            allowlist: entries
                .iter()
                .map(|(a, p)| AllowEntry {
                    address: a.to_string(),
                    port: *p,
                })
                .collect(),
        }
    }

    #[tokio::test]
    async fn matches_by_name_then_by_address() {
        let r = resolver();
        let l = list(&[("kms.example", 443)]);
        let ok = check_destination(&l, "kms.example", 443, IpAddrType::Mixed, &r)
            .await
            .unwrap();
        assert_eq!(ok.matched, MatchKind::ByName);
        assert_eq!(ok.resolution.ip, "10.0.0.1".parse::<IpAddr>().unwrap());

        let ok = check_destination(&l, "alias.example", 443, IpAddrType::Mixed, &r)
            .await
            .unwrap();
        assert_eq!(ok.matched, MatchKind::ByAddress);
        let ok = check_destination(&l, "10.0.0.1", 443, IpAddrType::Mixed, &r)
            .await
            .unwrap();
        assert_eq!(ok.matched, MatchKind::ByAddress);
    }

    #[tokio::test]
    async fn refuses_other_ports_hosts_and_families() {
        let r = resolver();
        let l = list(&[("kms.example", 443), ("unresolvable.example", 80)]);
        for (host, port) in [
            ("kms.example", 80),
            ("other.example", 443),
            ("10.0.0.2", 443),
            ("unresolvable.example", 443),
        ] {
            assert!(
                check_destination(&l, host, port, IpAddrType::Mixed, &r)
                    .await
                    .is_err(),
                "{host}:{port}"
            );
        }
        // An IPv6-only proxy cannot use an IPv4-only name.
        assert!(matches!(
            check_destination(&l, "kms.example", 443, IpAddrType::V6Only, &r).await,
            Err(AllowlistError::Resolve { .. })
        ));
        // An empty allowlist allows nothing.
        assert!(
            check_destination(&list(&[]), "kms.example", 443, IpAddrType::Mixed, &r)
                .await
                .is_err()
        );
    }
}
