//! Signing enclave images with a KMS key: `build-enclave` and `sign-eif` take
//! `--private-key arn:aws:kms:REGION:ACCOUNT:key/ID` (or an alias ARN), as nitro-cli does since
//! 1.4, and sign through the KMS `Sign` API, against AWS or `cloister kms serve`.
//!
//! [`KmsSigner`] is a [`cloister_eif::ExternalSigner`]: `GetPublicKey` gives the key's public
//! key (checked against the signing certificate by [`cloister_eif::EifSigner::external`]), and
//! `Sign` with `MessageType=DIGEST` signs the digest of the COSE `Sig_structure`
//! (`ECDSA_SHA_384` for a P-384 key). The requests go through the SDK's KMS client
//! ([`cloister_sdk::kms_client::KmsClient::call`]: SigV4, HTTP/1.1, TLS with rustls), over TCP
//! from the host.
//!
//! Configuration follows the AWS SDKs: the endpoint from `AWS_ENDPOINT_URL_KMS`, then
//! `AWS_ENDPOINT_URL`, else `https://kms.<region>.amazonaws.com` (`.com.cn` in the China
//! partition), the region from the ARN, extra TLS roots from `AWS_CA_BUNDLE`, and credentials
//! from `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` / `AWS_SESSION_TOKEN`, else from the
//! `AWS_PROFILE` (default: `default`) profile of `AWS_SHARED_CREDENTIALS_FILE` (default:
//! `~/.aws/credentials`).

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use cloister_eif::external::ExternalError;
use cloister_eif::{CoseAlgorithm, ExternalSigner};
use cloister_sdk::kms_client::{
    load_root_certificates, AttestError, Credentials, Endpoint, KmsClient, KmsClientConfig,
    KmsClientError, Route, DEFAULT_TIMEOUT,
};
use std::net::ToSocketAddrs;
use std::path::PathBuf;
use std::sync::Arc;
use zeroize::Zeroizing;

/// Largest shared credentials file read.
pub const MAX_CREDENTIALS_FILE: u64 = 1024 * 1024;

/// Why a KMS key cannot sign.
#[derive(Debug, thiserror::Error)]
pub enum KmsSignerError {
    /// No credentials in the environment or the shared credentials file.
    #[error(
        "no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or add a \
         [{profile}] profile to {file}"
    )]
    NoCredentials {
        /// The profile looked for.
        profile: String,
        /// The shared credentials file.
        file: String,
    },
    /// The shared credentials file exists but cannot be read.
    #[error("cannot read the AWS credentials file {file}")]
    CredentialsFile {
        /// The file.
        file: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The endpoint URL or a TLS root is unusable.
    #[error("cannot use the KMS endpoint")]
    Endpoint(#[source] KmsClientError),
    /// The endpoint's host name does not resolve.
    #[error("cannot resolve the KMS endpoint {host}:{port}")]
    Resolve {
        /// Host.
        host: String,
        /// Port.
        port: u16,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The client's runtime could not start.
    #[error("cannot start the KMS client")]
    Runtime(#[source] std::io::Error),
    /// A KMS call failed (connection, TLS, or an error answer such as AccessDeniedException).
    #[error("KMS {operation} failed")]
    Call {
        /// The operation.
        operation: &'static str,
        /// Why.
        #[source]
        source: KmsClientError,
    },
    /// The answer lacks a field or holds an unusable value.
    #[error("KMS {operation} answered without a usable {field}")]
    BadResponse {
        /// The operation.
        operation: &'static str,
        /// The field.
        field: &'static str,
    },
    /// The key cannot sign images.
    #[error(
        "{key} is a {spec} key for {usage}; signing images needs an ECC_NIST_P384 \
         (or ECC_NIST_P256, ECC_NIST_P521) SIGN_VERIFY key"
    )]
    UnsuitableKey {
        /// The key.
        key: String,
        /// Its KeySpec.
        spec: String,
        /// Its KeyUsage.
        usage: String,
    },
}

/// A KMS key named by its ARN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KmsKeyArn {
    /// The whole ARN (what the requests name as KeyId).
    pub arn: String,
    /// `aws`, `aws-cn`, `aws-us-gov`, ...
    pub partition: String,
    /// The key's region.
    pub region: String,
}

/// Recognizes a KMS key or alias ARN: `arn:PARTITION:kms:REGION:ACCOUNT:key/ID` (or `key:ID`)
/// or `arn:PARTITION:kms:REGION:ACCOUNT:alias/NAME`, with a 12-digit account. Anything else is
/// `None` (and `--private-key` names a PEM file, as with nitro-cli).
pub fn parse_kms_arn(s: &str) -> Option<KmsKeyArn> {
    let mut parts = s.splitn(6, ':');
    let (Some("arn"), Some(partition), Some("kms"), Some(region), Some(account), Some(resource)) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return None;
    };
    let partition_ok = partition == "aws"
        || partition.strip_prefix("aws-").is_some_and(|p| {
            !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase() || b == b'-')
        });
    let region_ok = !region.is_empty()
        && region.len() <= 64
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let account_ok = account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit());
    let resource_ok = if let Some(id) = resource
        .strip_prefix("key/")
        .or_else(|| resource.strip_prefix("key:"))
    {
        !id.is_empty()
            && id.len() <= 128
            && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    } else if let Some(name) = resource.strip_prefix("alias/") {
        !name.is_empty()
            && name.len() <= 250
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'_' | b'-'))
    } else {
        false
    };
    (partition_ok && region_ok && account_ok && resource_ok).then(|| KmsKeyArn {
        arn: s.to_owned(),
        partition: partition.to_owned(),
        region: region.to_owned(),
    })
}

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// The endpoint the AWS SDKs would use for KMS in `key`'s region.
pub fn endpoint_for(key: &KmsKeyArn) -> Result<Endpoint, KmsSignerError> {
    let url = env_nonempty("AWS_ENDPOINT_URL_KMS")
        .or_else(|| env_nonempty("AWS_ENDPOINT_URL"))
        .unwrap_or_else(|| {
            let suffix = if key.partition == "aws-cn" {
                "amazonaws.com.cn"
            } else {
                "amazonaws.com"
            };
            format!("https://kms.{}.{suffix}", key.region)
        });
    Endpoint::parse(url.trim()).map_err(KmsSignerError::Endpoint)
}

/// Credentials as the AWS SDKs find them: the environment, then the shared credentials file.
pub fn credentials_from_env() -> Result<Credentials, KmsSignerError> {
    if let (Some(id), Some(secret)) = (
        env_nonempty("AWS_ACCESS_KEY_ID"),
        env_nonempty("AWS_SECRET_ACCESS_KEY"),
    ) {
        return Ok(Credentials {
            access_key_id: id,
            secret_access_key: Zeroizing::new(secret),
            session_token: env_nonempty("AWS_SESSION_TOKEN").map(Zeroizing::new),
        });
    }
    let profile = env_nonempty("AWS_PROFILE").unwrap_or_else(|| "default".into());
    let file = env_nonempty("AWS_SHARED_CREDENTIALS_FILE")
        .map(PathBuf::from)
        .or_else(|| env_nonempty("HOME").map(|h| PathBuf::from(h).join(".aws/credentials")));
    let none = |file: &str| KmsSignerError::NoCredentials {
        profile: profile.clone(),
        file: file.to_owned(),
    };
    let Some(file) = file else {
        return Err(none("~/.aws/credentials"));
    };
    let shown = file.display().to_string();
    let text = match read_credentials_file(&file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(none(&shown)),
        Err(source) => {
            return Err(KmsSignerError::CredentialsFile {
                file: shown,
                source,
            })
        }
    };
    profile_credentials(&text, &profile).ok_or_else(|| none(&shown))
}

fn read_credentials_file(path: &std::path::Path) -> std::io::Result<Zeroizing<String>> {
    use std::io::Read;
    let file = std::fs::File::open(path)?;
    let mut text = Zeroizing::new(String::new());
    file.take(MAX_CREDENTIALS_FILE + 1)
        .read_to_string(&mut text)?;
    if text.len() as u64 > MAX_CREDENTIALS_FILE {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {MAX_CREDENTIALS_FILE} bytes"),
        ));
    }
    Ok(text)
}

/// The static credentials of `[profile]` in a shared credentials file (INI).
pub fn profile_credentials(text: &str, profile: &str) -> Option<Credentials> {
    let mut in_profile = false;
    let (mut id, mut secret, mut token) = (None, None, None);
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            in_profile = name.trim() == profile;
            continue;
        }
        if !in_profile {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let value = value.trim().to_owned();
        match key.trim() {
            "aws_access_key_id" => id = Some(value),
            "aws_secret_access_key" => secret = Some(Zeroizing::new(value)),
            "aws_session_token" => token = Some(Zeroizing::new(value)),
            _ => {}
        }
    }
    Some(Credentials {
        access_key_id: id.filter(|v| !v.is_empty())?,
        secret_access_key: secret.filter(|v| !v.is_empty())?,
        session_token: token.filter(|v| !v.is_empty()),
    })
}

/// A KMS key that signs images.
pub struct KmsSigner {
    key: KmsKeyArn,
    client: KmsClient,
    runtime: tokio::runtime::Runtime,
}

impl std::fmt::Debug for KmsSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KmsSigner")
            .field("key", &self.key.arn)
            .field("client", &self.client)
            .finish_non_exhaustive()
    }
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct PublicKeyResponse {
    public_key: Option<String>,
    key_spec: Option<String>,
    key_usage: Option<String>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SignResponse {
    signature: Option<String>,
}

impl KmsSigner {
    /// A signer for `key`, configured from the environment (no request is sent yet).
    pub fn from_env(key: KmsKeyArn) -> Result<Self, KmsSignerError> {
        let credentials = credentials_from_env()?;
        let endpoint = endpoint_for(&key)?;
        let extra_roots = match env_nonempty("AWS_CA_BUNDLE") {
            Some(path) => load_root_certificates(std::path::Path::new(&path))
                .map_err(KmsSignerError::Endpoint)?,
            None => Vec::new(),
        };
        let resolve_err = |source| KmsSignerError::Resolve {
            host: endpoint.host.clone(),
            port: endpoint.port,
            source,
        };
        let addr = (endpoint.host.as_str(), endpoint.port)
            .to_socket_addrs()
            .map_err(resolve_err)?
            .next()
            .ok_or_else(|| {
                resolve_err(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no address",
                ))
            })?;
        let config = KmsClientConfig {
            region: key.region.clone(),
            endpoint,
            route: Route::Tcp(addr),
            credentials,
            extra_roots,
            timeout: DEFAULT_TIMEOUT,
        };
        // Signing needs no attestation: the attester is never asked.
        let attester: Arc<dyn cloister_sdk::kms_client::Attester> =
            Arc::new(|_: &[u8]| -> Result<Vec<u8>, AttestError> {
                Err(AttestError::Other(
                    "host-side KMS calls carry no attestation document".into(),
                ))
            });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(KmsSignerError::Runtime)?;
        let client = KmsClient::new(config, attester).map_err(KmsSignerError::Endpoint)?;
        Ok(Self {
            key,
            client,
            runtime,
        })
    }

    fn call(
        &self,
        operation: &'static str,
        body: serde_json::Value,
    ) -> Result<Vec<u8>, KmsSignerError> {
        let payload = serde_json::to_vec(&body).map_err(|_| KmsSignerError::BadResponse {
            operation,
            field: "request",
        })?;
        self.runtime
            .block_on(self.client.call(operation, &payload))
            .map_err(|source| KmsSignerError::Call { operation, source })
    }

    /// `GetPublicKey`: the key's DER SubjectPublicKeyInfo, after checking it is an EC signing
    /// key.
    pub fn public_key(&self) -> Result<Vec<u8>, KmsSignerError> {
        const OP: &str = "GetPublicKey";
        let body = self.call(OP, serde_json::json!({ "KeyId": self.key.arn }))?;
        let bad = |field| KmsSignerError::BadResponse {
            operation: OP,
            field,
        };
        let resp: PublicKeyResponse =
            serde_json::from_slice(&body).map_err(|_| bad("JSON body"))?;
        let spec = resp.key_spec.unwrap_or_default();
        let usage = resp.key_usage.unwrap_or_default();
        if !spec.starts_with("ECC_NIST_P") || usage != "SIGN_VERIFY" {
            return Err(KmsSignerError::UnsuitableKey {
                key: self.key.arn.clone(),
                spec,
                usage,
            });
        }
        B64.decode(resp.public_key.ok_or_else(|| bad("PublicKey"))?)
            .map_err(|_| bad("PublicKey"))
    }

    /// `Sign` with `MessageType=DIGEST`: the DER signature of `digest`.
    pub fn sign(&self, algorithm: CoseAlgorithm, digest: &[u8]) -> Result<Vec<u8>, KmsSignerError> {
        const OP: &str = "Sign";
        let body = self.call(
            OP,
            serde_json::json!({
                "KeyId": self.key.arn,
                "Message": B64.encode(digest),
                "MessageType": "DIGEST",
                "SigningAlgorithm": algorithm.kms_signing_algorithm(),
            }),
        )?;
        let bad = |field| KmsSignerError::BadResponse {
            operation: OP,
            field,
        };
        let resp: SignResponse = serde_json::from_slice(&body).map_err(|_| bad("JSON body"))?;
        B64.decode(resp.signature.ok_or_else(|| bad("Signature"))?)
            .map_err(|_| bad("Signature"))
    }
}

impl ExternalSigner for KmsSigner {
    fn name(&self) -> String {
        format!("KMS key {}", self.key.arn)
    }

    fn public_key_spki(&self) -> Result<Vec<u8>, ExternalError> {
        Ok(self.public_key()?)
    }

    fn sign_digest(
        &self,
        algorithm: CoseAlgorithm,
        digest: &[u8],
    ) -> Result<Vec<u8>, ExternalError> {
        Ok(self.sign(algorithm, digest)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kms_arns_are_recognized_and_paths_are_not() {
        for (arn, partition, region) in [
            (
                "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab",
                "aws",
                "us-east-1",
            ),
            (
                "arn:aws:kms:us-east-1:123456789012:key:1234abcd",
                "aws",
                "us-east-1",
            ),
            (
                "arn:aws-cn:kms:cn-north-1:123456789012:key/abcd1234",
                "aws-cn",
                "cn-north-1",
            ),
            (
                "arn:aws-us-gov:kms:us-gov-west-1:123456789012:alias/eif/signing_key",
                "aws-us-gov",
                "us-gov-west-1",
            ),
        ] {
            let k = parse_kms_arn(arn).unwrap_or_else(|| panic!("{arn}"));
            assert_eq!(
                (k.partition.as_str(), k.region.as_str()),
                (partition, region)
            );
            assert_eq!(k.arn, arn);
        }
        for not in [
            "key.pem",
            "/etc/keys/arn:aws:kms:us-east-1:123456789012:key/x",
            "arn:invalid:kms:us-east-1:123456789012:key/abcd",
            "arn:aws:kms::123456789012:key/abcd",
            "arn:aws:kms:us-east-1:12345678901:key/abcd",
            "arn:aws:kms:us-east-1:123456789012:key/",
            "arn:aws:kms:us-east-1:123456789012:key/a b",
            "arn:aws:kms:us-east-1:123456789012:secret/abcd",
            "arn:aws:s3:us-east-1:123456789012:key/abcd",
            "1234abcd-12ab-34cd-56ef-1234567890ab",
        ] {
            assert!(parse_kms_arn(not).is_none(), "{not}");
        }
    }

    #[test]
    fn shared_credentials_profiles() {
        let text = "# comment\n[other]\naws_access_key_id = AKOTHER\naws_secret_access_key = s1\n\
                    [default]\naws_access_key_id=AKDEFAULT\n aws_secret_access_key = s2 \n\
                    aws_session_token = t\n";
        let c = profile_credentials(text, "default").unwrap();
        assert_eq!(c.access_key_id, "AKDEFAULT");
        assert_eq!(&*c.secret_access_key, "s2");
        assert_eq!(c.session_token.as_deref().map(String::as_str), Some("t"));
        let c = profile_credentials(text, "other").unwrap();
        assert_eq!(c.access_key_id, "AKOTHER");
        assert!(c.session_token.is_none());
        assert!(profile_credentials(text, "missing").is_none());
        assert!(profile_credentials("[default]\naws_access_key_id = x\n", "default").is_none());
    }
}
