//! The key service's configuration file (YAML or JSON; unknown fields are refused).
//!
//! Everything has a default, so an empty data directory and no config file give a working
//! service: region `us-east-1`, account `111122223333`, no attestation roots (Recipient requests
//! are then refused), one administrator credential generated on first start.

use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;

/// Largest config file read.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Default region.
pub const DEFAULT_REGION: &str = "us-east-1";
/// Default account id.
pub const DEFAULT_ACCOUNT: &str = "111122223333";
/// Default maximum age of an attestation document, in seconds.
pub const DEFAULT_ATTESTATION_MAX_AGE_S: u64 = 300;

/// Default time a client has to send a whole request head once its first byte arrived (a
/// stalled partial head is closed after it).
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time a client has to send a whole request body once its head arrived (the request is
/// then answered 408 and the connection closed).
pub const DEFAULT_BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Default time a connection may wait for its next request (AWS load balancers use 60 s, which
/// SDK connection pools expect).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default most connections served at once; the server also stays below its descriptor limit.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// Longest timeout the config accepts, in milliseconds (one hour).
pub const MAX_TIMEOUT_MS: u64 = 3_600_000;
/// Largest connection cap the config accepts.
pub const MAX_MAX_CONNECTIONS: usize = 1_000_000;

/// The AWS Nitro Enclaves root certificate (G1), DER.
///
/// CN=aws.nitro-enclaves, O=Amazon, OU=AWS, C=US; SHA-256 of the DER is
/// 641a0321a3e244efe456463195d606317ed7cdcc3c1756e09893f3c68f79bb5b.
pub const AWS_NITRO_ROOT_G1_DER: &[u8] = include_bytes!("../testdata/aws-nitro-root-g1.der");

/// Errors reading the config file.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read {0}")]
    Read(PathBuf, #[source] std::io::Error),
    /// The file is larger than [`MAX_CONFIG_BYTES`].
    #[error("{0} is larger than {MAX_CONFIG_BYTES} bytes")]
    TooLarge(PathBuf),
    /// The file is not valid YAML/JSON of the expected shape.
    #[error("{0} is not a valid key service config")]
    Parse(PathBuf, #[source] serde_yaml_ng::Error),
    /// A value is out of range or malformed.
    #[error("invalid config value: {0}")]
    Invalid(String),
    /// A trust anchor cannot be read.
    #[error("cannot read trust anchor {0}")]
    TrustAnchor(PathBuf, #[source] std::io::Error),
}

/// An extra credential and the principal it authenticates as.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialConfig {
    /// Access key id (`AKIA...` style; 16..128 characters of [A-Z0-9]).
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: String,
    /// Principal ARN, e.g. `arn:aws:iam::111122223333:user/app`; a bare name becomes a user of
    /// the configured account, `role/<name>` a role, and `assumed-role/<role>/<session>` a
    /// session of a role (`arn:aws:sts::<account>:assumed-role/...`).
    pub principal: String,
    /// Makes this a session credential (like one from STS AssumeRole): requests must carry this
    /// token in `X-Amz-Security-Token` (16..4096 characters).
    #[serde(default)]
    pub session_token: Option<String>,
}

/// Attestation settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttestationConfig {
    /// Root certificates (DER or PEM files) that attestation documents must chain to.
    #[serde(default)]
    pub trust_anchors: Vec<PathBuf>,
    /// Also trust the AWS Nitro Enclaves root certificate.
    #[serde(default)]
    pub include_aws_nitro_root: bool,
    /// Maximum age of a document, in seconds (default 300).
    #[serde(default)]
    pub max_age_seconds: Option<u64>,
}

/// Connection limits of the HTTP front end (all optional; the defaults suit most hosts).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Milliseconds a client has to send a request head after its first byte (default 10 000).
    #[serde(default)]
    pub header_read_timeout_ms: Option<u64>,
    /// Milliseconds a client has to send a request body after its head (default 30 000).
    #[serde(default)]
    pub body_read_timeout_ms: Option<u64>,
    /// Milliseconds a connection may wait for its next request (default 60 000).
    #[serde(default)]
    pub idle_timeout_ms: Option<u64>,
    /// Most connections served at once (default 4096, and always below the descriptor limit);
    /// when reached, the longest idle connections are closed to admit new ones.
    #[serde(default)]
    pub max_connections: Option<usize>,
}

impl ServerConfig {
    /// Time allowed for a request head.
    pub fn header_read_timeout(&self) -> Duration {
        self.header_read_timeout_ms
            .map_or(DEFAULT_HEADER_READ_TIMEOUT, Duration::from_millis)
    }

    /// Time allowed for a request body.
    pub fn body_read_timeout(&self) -> Duration {
        self.body_read_timeout_ms
            .map_or(DEFAULT_BODY_READ_TIMEOUT, Duration::from_millis)
    }

    /// Time a connection may stay idle.
    pub fn idle_timeout(&self) -> Duration {
        self.idle_timeout_ms
            .map_or(DEFAULT_IDLE_TIMEOUT, Duration::from_millis)
    }

    /// The configured connection cap (before the descriptor limit is applied).
    pub fn max_connections(&self) -> usize {
        self.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        for (name, value) in [
            ("header_read_timeout_ms", self.header_read_timeout_ms),
            ("body_read_timeout_ms", self.body_read_timeout_ms),
            ("idle_timeout_ms", self.idle_timeout_ms),
        ] {
            if value.is_some_and(|v| v == 0 || v > MAX_TIMEOUT_MS) {
                return Err(ConfigError::Invalid(format!(
                    "server.{name} must be 1..{MAX_TIMEOUT_MS}"
                )));
            }
        }
        if self
            .max_connections
            .is_some_and(|n| n == 0 || n > MAX_MAX_CONNECTIONS)
        {
            return Err(ConfigError::Invalid(format!(
                "server.max_connections must be 1..{MAX_MAX_CONNECTIONS}"
            )));
        }
        Ok(())
    }
}

/// Default milliseconds to open a connection to a PostgreSQL store.
pub const DEFAULT_PG_CONNECT_TIMEOUT_MS: u64 = 5_000;
/// Default milliseconds one SQL statement may run (`statement_timeout`).
pub const DEFAULT_PG_STATEMENT_TIMEOUT_MS: u64 = 5_000;
/// Default most connections of a server's pool.
pub const DEFAULT_PG_POOL_SIZE: usize = 16;
/// Default milliseconds between two full resyncs of a server's in-memory view.
pub const DEFAULT_PG_RESYNC_INTERVAL_MS: u64 = 1_000;
/// Default milliseconds a write waits for the other servers to apply it before answering.
pub const DEFAULT_PG_ACK_WAIT_MS: u64 = 1_000;
/// Default milliseconds after the last successful resync past which a server refuses to answer
/// from its view (it cannot tell whether it is current).
pub const DEFAULT_PG_STALE_AFTER_MS: u64 = 5_000;

/// Where keys are stored. Without `url`, the embedded store in the data directory.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// A PostgreSQL connection string: `postgres://user@host:port/db`, or key-value
    /// (`host=/run/postgresql dbname=kms user=kms`; a `host` that is a path is a Unix socket
    /// directory). Several servers given the same URL and master key serve the same keys.
    #[serde(default)]
    pub url: Option<String>,
    /// Milliseconds to open a connection (default 5000).
    #[serde(default)]
    pub connect_timeout_ms: Option<u64>,
    /// Milliseconds a statement may run (default 5000).
    #[serde(default)]
    pub statement_timeout_ms: Option<u64>,
    /// Most connections per server (default 16).
    #[serde(default)]
    pub pool_size: Option<usize>,
    /// Milliseconds between full resyncs of the in-memory view (default 1000).
    #[serde(default)]
    pub resync_interval_ms: Option<u64>,
    /// Milliseconds a write waits for the other servers to apply it (default 1000).
    #[serde(default)]
    pub ack_wait_ms: Option<u64>,
    /// Milliseconds without a successful resync after which requests are refused (default 5000).
    #[serde(default)]
    pub stale_after_ms: Option<u64>,
}

impl StoreConfig {
    /// Connect timeout.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(
            self.connect_timeout_ms
                .unwrap_or(DEFAULT_PG_CONNECT_TIMEOUT_MS),
        )
    }

    /// Statement timeout.
    pub fn statement_timeout(&self) -> Duration {
        Duration::from_millis(
            self.statement_timeout_ms
                .unwrap_or(DEFAULT_PG_STATEMENT_TIMEOUT_MS),
        )
    }

    /// Pool size.
    pub fn pool_size(&self) -> usize {
        self.pool_size.unwrap_or(DEFAULT_PG_POOL_SIZE)
    }

    /// Resync interval.
    pub fn resync_interval(&self) -> Duration {
        Duration::from_millis(
            self.resync_interval_ms
                .unwrap_or(DEFAULT_PG_RESYNC_INTERVAL_MS),
        )
    }

    /// How long a write waits for the other servers.
    pub fn ack_wait(&self) -> Duration {
        Duration::from_millis(self.ack_wait_ms.unwrap_or(DEFAULT_PG_ACK_WAIT_MS))
    }

    /// Age of the view past which requests are refused.
    pub fn stale_after(&self) -> Duration {
        Duration::from_millis(self.stale_after_ms.unwrap_or(DEFAULT_PG_STALE_AFTER_MS))
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if let Some(url) = &self.url {
            if url.parse::<tokio_postgres::Config>().is_err() {
                return Err(ConfigError::Invalid(
                    "store.url must be a PostgreSQL connection string (postgres://...)".into(),
                ));
            }
        }
        for (name, value) in [
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("statement_timeout_ms", self.statement_timeout_ms),
            ("resync_interval_ms", self.resync_interval_ms),
            ("ack_wait_ms", self.ack_wait_ms),
            ("stale_after_ms", self.stale_after_ms),
        ] {
            if value.is_some_and(|v| v == 0 || v > MAX_TIMEOUT_MS) {
                return Err(ConfigError::Invalid(format!(
                    "store.{name} must be 1..{MAX_TIMEOUT_MS}"
                )));
            }
        }
        if self.pool_size.is_some_and(|n| n == 0 || n > 1024) {
            return Err(ConfigError::Invalid(
                "store.pool_size must be 1..1024".into(),
            ));
        }
        if self.stale_after() <= self.resync_interval() {
            return Err(ConfigError::Invalid(
                "store.stale_after_ms must be larger than store.resync_interval_ms".into(),
            ));
        }
        Ok(())
    }
}

/// The config file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// AWS region the service answers as.
    #[serde(default)]
    pub region: Option<String>,
    /// Further Regions the service also answers for (multi-Region keys replicate to them).
    #[serde(default)]
    pub other_regions: Vec<String>,
    /// 12-digit account id.
    #[serde(default)]
    pub account_id: Option<String>,
    /// Where the master key lives (default: `<data-dir>/master.key`).
    #[serde(default)]
    pub master_key_path: Option<PathBuf>,
    /// Attestation trust.
    #[serde(default)]
    pub attestation: AttestationConfig,
    /// Extra credentials.
    #[serde(default)]
    pub credentials: Vec<CredentialConfig>,
    /// Connection limits and timeouts.
    #[serde(default)]
    pub server: ServerConfig,
    /// The key store (default: embedded, in the data directory).
    #[serde(default)]
    pub store: StoreConfig,
}

impl Config {
    /// Reads a YAML or JSON config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let meta = std::fs::metadata(path).map_err(|e| ConfigError::Read(path.into(), e))?;
        if meta.len() > MAX_CONFIG_BYTES {
            return Err(ConfigError::TooLarge(path.into()));
        }
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read(path.into(), e))?;
        let cfg: Config =
            serde_yaml_ng::from_str(&text).map_err(|e| ConfigError::Parse(path.into(), e))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks value ranges.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let account = self.account_id();
        if account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ConfigError::Invalid(format!(
                "account_id {account:?} must be 12 digits"
            )));
        }
        for r in &self.other_regions {
            if !valid_region(r) {
                return Err(ConfigError::Invalid(format!(
                    "other_regions entry {r:?} must be lower-case letters, digits and dashes"
                )));
            }
        }
        let region = self.region();
        if region.is_empty()
            || region.len() > 32
            || !region
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(ConfigError::Invalid(format!(
                "region {region:?} must be lower-case letters, digits and dashes"
            )));
        }
        for c in &self.credentials {
            if c.access_key_id.len() < 16
                || c.access_key_id.len() > 128
                || !c.access_key_id.bytes().all(|b| b.is_ascii_alphanumeric())
            {
                return Err(ConfigError::Invalid(format!(
                    "access_key_id {:?} must be 16..128 letters and digits",
                    c.access_key_id
                )));
            }
            if c.secret_access_key.len() < 16 {
                return Err(ConfigError::Invalid(format!(
                    "secret for {} is shorter than 16 characters",
                    c.access_key_id
                )));
            }
            if let Some(t) = &c.session_token {
                if t.len() < 16 || t.len() > 4096 || !t.bytes().all(|b| b.is_ascii_graphic()) {
                    return Err(ConfigError::Invalid(format!(
                        "session_token for {} must be 16..4096 printable characters",
                        c.access_key_id
                    )));
                }
            }
            if c.principal.is_empty() {
                return Err(ConfigError::Invalid(format!(
                    "principal for {} is empty",
                    c.access_key_id
                )));
            }
        }
        if let Some(age) = self.attestation.max_age_seconds {
            if age == 0 || age > 86_400 {
                return Err(ConfigError::Invalid(
                    "attestation.max_age_seconds must be 1..86400".into(),
                ));
            }
        }
        self.server.validate()?;
        self.store.validate()
    }

    /// The region (default `us-east-1`).
    pub fn region(&self) -> &str {
        self.region.as_deref().unwrap_or(DEFAULT_REGION)
    }

    /// The account id (default `111122223333`).
    pub fn account_id(&self) -> &str {
        self.account_id.as_deref().unwrap_or(DEFAULT_ACCOUNT)
    }

    /// The principal ARN for a configured principal string.
    pub fn principal_arn(&self, principal: &str) -> String {
        if principal.starts_with("arn:") {
            principal.to_string()
        } else if principal.starts_with("assumed-role/") {
            format!("arn:aws:sts::{}:{principal}", self.account_id())
        } else if principal.starts_with("role/") || principal.starts_with("user/") {
            format!("arn:aws:iam::{}:{principal}", self.account_id())
        } else {
            format!("arn:aws:iam::{}:user/{}", self.account_id(), principal)
        }
    }

    /// Reads the trust anchors (DER, or PEM converted to DER).
    pub fn trust_anchor_ders(&self) -> Result<Vec<Vec<u8>>, ConfigError> {
        let mut out = Vec::new();
        if self.attestation.include_aws_nitro_root {
            out.push(AWS_NITRO_ROOT_G1_DER.to_vec());
        }
        for path in &self.attestation.trust_anchors {
            let bytes =
                std::fs::read(path).map_err(|e| ConfigError::TrustAnchor(path.clone(), e))?;
            if bytes.starts_with(b"-----BEGIN") {
                let ders = pem_certificates(&bytes).ok_or_else(|| {
                    ConfigError::Invalid(format!("{} has no PEM certificate", path.display()))
                })?;
                out.extend(ders);
            } else {
                out.push(bytes);
            }
        }
        Ok(out)
    }

    /// Maximum document age.
    pub fn attestation_max_age(&self) -> std::time::Duration {
        std::time::Duration::from_secs(
            self.attestation
                .max_age_seconds
                .unwrap_or(DEFAULT_ATTESTATION_MAX_AGE_S),
        )
    }
}

fn valid_region(r: &str) -> bool {
    !r.is_empty()
        && r.len() <= 32
        && r.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Extracts the DER of every `CERTIFICATE` block of a PEM file.
fn pem_certificates(pem: &[u8]) -> Option<Vec<Vec<u8>>> {
    use base64::Engine as _;
    let text = std::str::from_utf8(pem).ok()?;
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("-----BEGIN CERTIFICATE-----") {
        let body_start = start + "-----BEGIN CERTIFICATE-----".len();
        let end = rest[body_start..].find("-----END CERTIFICATE-----")? + body_start;
        let b64: String = rest[body_start..end]
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        out.push(base64::engine::general_purpose::STANDARD.decode(b64).ok()?);
        rest = &rest[end..];
    }
    (!out.is_empty()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_and_json_parse_and_unknown_fields_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let y = dir.path().join("c.yaml");
        std::fs::write(
            &y,
            "region: eu-west-1\naccount_id: '123456789012'\ncredentials:\n  - access_key_id: AKIAEXAMPLEEXAMPLE1\n    secret_access_key: secretsecretsecret\n    principal: app\n",
        )
        .unwrap();
        let c = Config::load(&y).unwrap();
        assert_eq!(c.region(), "eu-west-1");
        assert_eq!(
            c.principal_arn(&c.credentials[0].principal),
            "arn:aws:iam::123456789012:user/app"
        );
        let j = dir.path().join("c.json");
        std::fs::write(&j, r#"{"region": "us-west-2", "bogus": 1}"#).unwrap();
        assert!(matches!(Config::load(&j), Err(ConfigError::Parse(..))));
        std::fs::write(&j, r#"{"account_id": "12"}"#).unwrap();
        assert!(matches!(Config::load(&j), Err(ConfigError::Invalid(..))));
        std::fs::write(&j, r#"{"server": {"idle_timeout_ms": 0}}"#).unwrap();
        assert!(matches!(Config::load(&j), Err(ConfigError::Invalid(..))));
        std::fs::write(&j, r#"{"server": {"max_conns": 5}}"#).unwrap();
        assert!(matches!(Config::load(&j), Err(ConfigError::Parse(..))));
        std::fs::write(
            &j,
            r#"{"server": {"header_read_timeout_ms": 1500, "max_connections": 20}}"#,
        )
        .unwrap();
        let c = Config::load(&j).unwrap();
        assert_eq!(c.server.header_read_timeout(), Duration::from_millis(1500));
        assert_eq!(c.server.idle_timeout(), DEFAULT_IDLE_TIMEOUT);
        assert_eq!(c.server.max_connections(), 20);
    }

    #[test]
    fn store_settings_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let y = dir.path().join("c.yaml");
        std::fs::write(
            &y,
            "store:\n  url: postgres://kms@127.0.0.1:5432/kms\n  pool_size: 4\n  resync_interval_ms: 500\n",
        )
        .unwrap();
        let c = Config::load(&y).unwrap();
        assert_eq!(c.store.pool_size(), 4);
        assert_eq!(c.store.resync_interval(), Duration::from_millis(500));
        assert_eq!(
            c.store.stale_after(),
            Duration::from_millis(DEFAULT_PG_STALE_AFTER_MS)
        );
        for bad in [
            "store:\n  url: 'host=/run/postgresql port=notaport'\n",
            "store:\n  pool_size: 0\n",
            "store:\n  resync_interval_ms: 9000\n  stale_after_ms: 5000\n",
            "store:\n  statement_timeout_ms: 0\n",
        ] {
            std::fs::write(&y, bad).unwrap();
            assert!(
                matches!(Config::load(&y), Err(ConfigError::Invalid(_))),
                "{bad}"
            );
        }
        std::fs::write(&y, "store:\n  uri: x\n").unwrap();
        assert!(matches!(Config::load(&y), Err(ConfigError::Parse(..))));
        assert!(Config::default().store.url.is_none(), "embedded by default");
    }

    #[test]
    fn nitro_root_is_embedded() {
        let c = Config {
            attestation: AttestationConfig {
                include_aws_nitro_root: true,
                ..Default::default()
            },
            ..Default::default()
        };
        let ders = c.trust_anchor_ders().unwrap();
        let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &ders[0]);
        assert_eq!(
            hex::encode(d.as_ref()),
            "641a0321a3e244efe456463195d606317ed7cdcc3c1756e09893f3c68f79bb5b"
        );
    }

    #[test]
    fn pem_anchor_is_decoded() {
        let pem = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/testdata/aws-nitro-root-g1.pem"
        ))
        .unwrap();
        let ders = pem_certificates(pem.as_bytes()).unwrap();
        assert_eq!(ders[0], AWS_NITRO_ROOT_G1_DER);
    }
}
