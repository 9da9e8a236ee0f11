//! Pulling an image from a registry over the OCI distribution API, without a container engine.
//!
//! [`pull_to_archive`] resolves a reference (`[registry/]repository[:tag|@digest]`, Docker Hub
//! by default), fetches its manifest (an image index or manifest list picks the host's
//! platform), then streams the config and layer blobs, each checked against its digest and
//! size, into a tar that holds an OCI image layout (`oci-layout`, `index.json`,
//! `blobs/sha256/...`): the same input `build-enclave --docker-archive` reads, so the rest of
//! the build is shared. Registries on the loopback (and those in `CLOISTER_INSECURE_REGISTRIES`,
//! comma-separated `host:port`) are spoken to over plain HTTP, all others over TLS with the
//! system's CA bundle (`SSL_CERT_FILE`, default `/etc/ssl/certs/ca-certificates.crt`).
//!
//! Authentication follows the distribution spec: a 401 with a `Bearer` challenge gets a token
//! from the realm (with the user's credentials when there are some), a `Basic` challenge gets
//! the credentials. Credentials come from `$DOCKER_CONFIG/config.json` or
//! `~/.docker/config.json` (`auths.<registry>.auth`, or `username`/`password`).
//!
//! Everything read from the network is bounded: response heads ([`MAX_HEAD`]), manifests and
//! tokens ([`MAX_DOCUMENT`]), blob sizes against the caller's limit, redirects ([`MAX_REDIRECTS`]).
//!
//! Parts: `reference` (parsing references), `auth` (credentials and challenges), `client` (one
//! repository's requests over the crate's HTTP client: TLS, redirects, authentication),
//! `limits` and `error`; this module pulls and writes the archive.

mod auth;
mod client;
mod error;
mod limits;
mod reference;

pub use auth::{credentials_for, credentials_in, Credentials};
pub use error::RegistryError;
pub use limits::{MAX_DOCUMENT, MAX_HEAD, MAX_LAYERS, MAX_REDIRECTS};
pub use reference::Reference;

use crate::digest::Sha256Digest;
use crate::source::SourceError;
use client::Client;
use serde::Deserialize;
use std::io::{self, Read, Write};

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// A content descriptor.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    digest: String,
    size: u64,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Debug, Clone, Deserialize)]
struct Platform {
    architecture: String,
    os: String,
    #[serde(default)]
    variant: Option<String>,
}

/// An image manifest or an index (the fields both can have).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Document {
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
}

/// The registry's name for this host's architecture.
fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn digest_of(what: &str, d: &str) -> Result<Sha256Digest, RegistryError> {
    Sha256Digest::parse(d).map_err(|e| RegistryError::Document {
        what: what.to_owned(),
        reason: format!("digest {d:?}: {e}"),
    })
}

/// Fetches a manifest (by tag or digest); checks it against `expected` when given.
fn fetch_manifest(
    client: &mut Client,
    reference: &str,
    expected: Option<Sha256Digest>,
) -> Result<(Vec<u8>, Option<String>), RegistryError> {
    let accept = format!("{OCI_INDEX}, {OCI_MANIFEST}, {DOCKER_LIST}, {DOCKER_MANIFEST}");
    let resp = client.api_get(&format!("manifests/{reference}"), &accept)?;
    let content_type = resp.header("content-type").map(str::to_owned);
    let host = client.reference.api_host().to_owned();
    let bytes = resp.read_document("the manifest", &host)?;
    if let Some(expected) = expected {
        let actual = Sha256Digest::of(&bytes);
        if actual != expected {
            return Err(RegistryError::Digest {
                what: "manifest".into(),
                expected,
                actual,
            });
        }
    }
    Ok((bytes, content_type))
}

/// Hashes what passes through.
struct HashingReader<R> {
    inner: R,
    ctx: aws_lc_rs::digest::Context,
    count: u64,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.ctx.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// Pulls `image` from its registry and writes it to `out` as a tar holding an OCI image layout
/// tagged with the reference's tag, at most `max_bytes` of blobs. Returns the bytes of blobs.
pub fn pull_to_archive(
    image: &str,
    out: &mut dyn Write,
    max_bytes: u64,
) -> Result<u64, SourceError> {
    Ok(pull(image, out, max_bytes)?)
}

/// Largest image [`pull_to_temp_archive`] downloads.
pub const MAX_PULL: u64 = 32 << 30;

/// Pulls `image` into an archive in a private temporary directory (removed by
/// [`crate::dockerfile::cleanup`]) and returns its path: what `build-enclave --docker-uri`
/// reads when no Docker engine runs or the engine does not have the image.
pub fn pull_to_temp_archive(image: &str) -> Result<std::path::PathBuf, SourceError> {
    let dir = tempfile::Builder::new()
        .prefix("cloister-pull")
        .tempdir()
        .map_err(|source| SourceError::Io {
            path: std::env::temp_dir().display().to_string(),
            source,
        })?;
    let path = dir.path().join("image.tar");
    let file = std::fs::File::create(&path).map_err(|source| SourceError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let mut w = io::BufWriter::new(file);
    pull_to_archive(image, &mut w, MAX_PULL)?;
    w.flush().map_err(|source| SourceError::Io {
        path: path.display().to_string(),
        source,
    })?;
    crate::dockerfile::keep_until_cleanup(dir);
    Ok(path)
}

fn pull(image: &str, out: &mut dyn Write, max_bytes: u64) -> Result<u64, RegistryError> {
    let reference = Reference::parse(image)?;
    let pinned = reference
        .reference
        .starts_with("sha256:")
        .then(|| digest_of("the reference", &reference.reference))
        .transpose()?;
    let mut client = Client::new(reference.clone());
    let (mut bytes, mut content_type) = fetch_manifest(&mut client, &reference.reference, pinned)?;
    let parse = |b: &[u8]| -> Result<Document, RegistryError> {
        serde_json::from_slice(b).map_err(|e| RegistryError::Document {
            what: "the manifest".into(),
            reason: e.to_string(),
        })
    };
    let mut doc = parse(&bytes)?;
    let media = |doc: &Document, ct: &Option<String>| {
        doc.media_type
            .clone()
            .or_else(|| ct.clone())
            .unwrap_or_default()
    };
    if doc.manifests.is_some()
        || [OCI_INDEX, DOCKER_LIST].contains(&media(&doc, &content_type).as_str())
    {
        let arch = host_arch();
        let chosen = doc
            .manifests
            .unwrap_or_default()
            .into_iter()
            .find(|m| {
                m.platform.as_ref().is_some_and(|p| {
                    p.os == "linux"
                        && p.architecture == arch
                        && (arch != "arm64" || p.variant.as_deref().is_none_or(|v| v == "v8"))
                })
            })
            .ok_or_else(|| RegistryError::NoPlatform(arch.to_owned()))?;
        let expected = digest_of("the index", &chosen.digest)?;
        (bytes, content_type) = fetch_manifest(&mut client, &chosen.digest, Some(expected))?;
        doc = parse(&bytes)?;
    }
    let manifest_media = media(&doc, &content_type);
    let config = doc.config.clone().ok_or_else(|| RegistryError::Document {
        what: "the manifest".into(),
        reason: "no config".into(),
    })?;
    let layers = doc.layers.clone().unwrap_or_default();
    if layers.len() > MAX_LAYERS {
        return Err(RegistryError::Document {
            what: "the manifest".into(),
            reason: format!("more than {MAX_LAYERS} layers"),
        });
    }
    let total = layers
        .iter()
        .chain(std::iter::once(&config))
        .try_fold(0u64, |acc, d| acc.checked_add(d.size))
        .filter(|t| *t <= max_bytes)
        .ok_or(RegistryError::TooLarge(max_bytes))?;

    let io_err = |source: io::Error| RegistryError::Io {
        what: "writing the image archive".into(),
        source,
    };
    let mut tar = tar::Builder::new(out);
    let add = |tar: &mut tar::Builder<&mut dyn Write>, name: &str, data: &[u8]| {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut h, name, data).map_err(io_err)
    };
    add(&mut tar, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let manifest_digest = Sha256Digest::of(&bytes);
    add(
        &mut tar,
        &format!("blobs/sha256/{}", manifest_digest.hex()),
        &bytes,
    )?;
    let mut seen = std::collections::BTreeSet::new();
    for d in std::iter::once(&config).chain(layers.iter()) {
        let expected = digest_of("the manifest", &d.digest)?;
        if !seen.insert(expected.hex()) {
            continue;
        }
        let resp = client.api_get(&format!("blobs/{}", d.digest), "*/*")?;
        let host = client.reference.api_host().to_owned();
        let body = resp.body(d.size, &host)?;
        let mut reader = HashingReader {
            inner: body,
            ctx: aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256),
            count: 0,
        };
        let mut h = tar::Header::new_ustar();
        h.set_size(d.size);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        tar.append_data(
            &mut h,
            format!("blobs/sha256/{}", expected.hex()),
            &mut reader,
        )
        .map_err(|source| RegistryError::Io {
            what: format!("downloading {}", d.digest),
            source,
        })?;
        let count = reader.count;
        let mut arr = [0u8; 32];
        arr.copy_from_slice(reader.ctx.finish().as_ref());
        let actual = Sha256Digest(arr);
        if count != d.size || actual != expected {
            return Err(RegistryError::Digest {
                what: format!("blob {}", d.digest),
                expected,
                actual,
            });
        }
    }
    let tag = if reference.reference.starts_with("sha256:") {
        "latest".to_owned()
    } else {
        reference.reference.clone()
    };
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{
            "mediaType": if manifest_media.is_empty() { OCI_MANIFEST.to_owned() } else { manifest_media },
            "digest": format!("sha256:{}", manifest_digest.hex()),
            "size": bytes.len(),
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }],
    });
    let index = serde_json::to_vec(&index).map_err(|e| io_err(io::Error::other(e)))?;
    add(&mut tar, "index.json", &index)?;
    tar.into_inner().and_then(|w| w.flush()).map_err(io_err)?;
    Ok(total)
}
