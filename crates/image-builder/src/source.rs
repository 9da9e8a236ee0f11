//! Where images come from: an OCI image layout directory, a `docker save` archive (old and
//! OCI-style), a Docker engine's API (which yields a `docker save` archive), or a plain root
//! filesystem directory.
//!
//! Each container-image source resolves to an [`ImageManifest`]: the config (bytes, parsed and
//! digest) and the ordered layer descriptors, plus a [`BlobStore`] to open blobs from. Every JSON
//! document is size-capped; every blob is read through a digest check (see [`crate::layer`]).
//! Paths named inside an archive (docker's `manifest.json`) are confined to the archive.

use crate::config::{ImageConfig, MAX_JSON_SIZE};
use crate::digest::{DigestError, Sha256Digest};
use crate::http::{self, Http, HttpError};
use serde::Deserialize;
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The OCI annotation that carries a tag in an image layout's index.
pub const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";
/// Most files indexed in a `docker save` archive.
pub const MAX_ARCHIVE_FILES: usize = 100_000;
/// Most nested image indexes followed.
pub const MAX_INDEX_DEPTH: u32 = 4;
/// Largest HTTP response head from the Docker engine.
pub const MAX_HTTP_HEAD: usize = 64 << 10;
/// Default Docker engine socket.
pub const DEFAULT_DOCKER_SOCKET: &str = "/var/run/docker.sock";

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// Errors from image sources.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// A file could not be read.
    #[error("cannot read {path}")]
    Io {
        /// What was being read.
        path: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// A JSON document is malformed.
    #[error("{what} is not valid")]
    Json {
        /// Which document.
        what: String,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
    /// A JSON document is too large.
    #[error("{what} is larger than {MAX_JSON_SIZE} bytes")]
    JsonTooLarge {
        /// Which document.
        what: String,
    },
    /// A digest is malformed or unsupported.
    #[error("{what}: bad digest")]
    Digest {
        /// Where.
        what: String,
        /// Cause.
        #[source]
        source: DigestError,
    },
    /// A blob's digest or size does not match.
    #[error("{what}: content does not match its digest {expected} (got {actual})")]
    DigestMismatch {
        /// Which blob.
        what: String,
        /// Expected.
        expected: Sha256Digest,
        /// Computed.
        actual: Sha256Digest,
    },
    /// The requested tag is not in the image.
    #[error("no image tagged {tag:?} (available: {available})")]
    TagNotFound {
        /// Requested tag.
        tag: String,
        /// Tags present.
        available: String,
    },
    /// Several images and no tag given.
    #[error("the source holds {count} images; choose one with :TAG (available: {available})")]
    Ambiguous {
        /// How many.
        count: usize,
        /// Tags present.
        available: String,
    },
    /// Nothing usable in the source.
    #[error("{0}")]
    Invalid(String),
    /// A path inside an archive points outside it.
    #[error("path {0:?} in the archive is not a plain relative path")]
    UnsafePath(String),
    /// A file named by the manifest is missing from the archive.
    #[error("{0:?} is not in the archive")]
    Missing(String),
    /// The Docker engine is not reachable.
    #[error("no Docker engine at {socket}: {reason}; build from --docker-archive (docker save) or --oci-layout instead")]
    NoEngine {
        /// Socket path.
        socket: String,
        /// Why.
        reason: String,
    },
    /// The Docker engine answered with an error.
    #[error("the Docker engine refused: HTTP {status}: {message}")]
    Engine {
        /// HTTP status.
        status: u16,
        /// Its message.
        message: String,
    },
    /// The engine's HTTP response is malformed.
    #[error("malformed HTTP response from the Docker engine: {0}")]
    Http(String),
}

fn io_err(path: impl Into<String>) -> impl FnOnce(io::Error) -> SourceError {
    let path = path.into();
    move |source| SourceError::Io { path, source }
}

/// A place blobs are read from.
pub trait BlobStore {
    /// Opens a file by relative path; returns it and its size.
    fn open(&self, path: &str) -> Result<(Box<dyn Read + '_>, u64), SourceError>;
    /// Whether a file exists.
    fn exists(&self, path: &str) -> bool;
}

/// Checks that `path` is relative and has no `..` (paths from untrusted manifests).
pub fn safe_relative(path: &str) -> Result<String, SourceError> {
    let mut parts = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => return Err(SourceError::UnsafePath(path.chars().take(200).collect())),
            c => parts.push(c),
        }
    }
    if path.starts_with('/') || parts.is_empty() || path.contains('\0') {
        return Err(SourceError::UnsafePath(path.chars().take(200).collect()));
    }
    Ok(parts.join("/"))
}

/// A directory on the host.
#[derive(Debug)]
pub struct DirStore(pub PathBuf);

impl BlobStore for DirStore {
    fn open(&self, path: &str) -> Result<(Box<dyn Read + '_>, u64), SourceError> {
        let rel = safe_relative(path)?;
        let full = self.0.join(&rel);
        let f = File::open(&full).map_err(io_err(full.display().to_string()))?;
        let meta = f.metadata().map_err(io_err(full.display().to_string()))?;
        if !meta.is_file() {
            return Err(SourceError::Invalid(format!(
                "{} is not a file",
                full.display()
            )));
        }
        Ok((Box::new(f), meta.len()))
    }

    fn exists(&self, path: &str) -> bool {
        safe_relative(path).is_ok_and(|rel| self.0.join(rel).is_file())
    }
}

/// A tar archive on the host, indexed once so that members can be opened in any order.
#[derive(Debug)]
pub struct TarStore {
    file: File,
    name: String,
    members: HashMap<String, (u64, u64)>,
}

impl TarStore {
    /// Indexes the regular files of the tar at `path`.
    pub fn open(path: &Path) -> Result<Self, SourceError> {
        let name = path.display().to_string();
        let file = File::open(path).map_err(io_err(name.clone()))?;
        let mut members = HashMap::new();
        let mut archive = tar::Archive::new(BufReader::new(
            file.try_clone().map_err(io_err(name.clone()))?,
        ));
        for entry in archive.entries().map_err(io_err(name.clone()))? {
            let entry = entry.map_err(io_err(name.clone()))?;
            let kind = entry.header().entry_type();
            if !matches!(kind, tar::EntryType::Regular | tar::EntryType::Continuous) {
                continue;
            }
            let p = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let Ok(rel) = safe_relative(&p) else { continue };
            if members.len() >= MAX_ARCHIVE_FILES {
                return Err(SourceError::Invalid(format!(
                    "{name} has more than {MAX_ARCHIVE_FILES} files"
                )));
            }
            members.insert(rel, (entry.raw_file_position(), entry.size()));
        }
        Ok(Self {
            file,
            name,
            members,
        })
    }
}

impl BlobStore for TarStore {
    fn open(&self, path: &str) -> Result<(Box<dyn Read + '_>, u64), SourceError> {
        let rel = safe_relative(path)?;
        let &(offset, size) = self
            .members
            .get(&rel)
            .ok_or(SourceError::Missing(rel.clone()))?;
        let mut f = self.file.try_clone().map_err(io_err(self.name.clone()))?;
        f.seek(SeekFrom::Start(offset))
            .map_err(io_err(self.name.clone()))?;
        Ok((
            Box::new(BufReader::with_capacity(1 << 20, f).take(size)),
            size,
        ))
    }

    fn exists(&self, path: &str) -> bool {
        safe_relative(path).is_ok_and(|rel| self.members.contains_key(&rel))
    }
}

/// Reads a whole small document, capped at [`MAX_JSON_SIZE`].
pub fn read_small(store: &dyn BlobStore, path: &str, what: &str) -> Result<Vec<u8>, SourceError> {
    let (r, size) = store.open(path)?;
    if size > MAX_JSON_SIZE {
        return Err(SourceError::JsonTooLarge {
            what: what.to_owned(),
        });
    }
    let mut buf = Vec::new();
    r.take(MAX_JSON_SIZE + 1)
        .read_to_end(&mut buf)
        .map_err(io_err(what.to_owned()))?;
    if buf.len() as u64 > MAX_JSON_SIZE {
        return Err(SourceError::JsonTooLarge {
            what: what.to_owned(),
        });
    }
    Ok(buf)
}

fn parse_json<T: for<'de> Deserialize<'de>>(bytes: &[u8], what: &str) -> Result<T, SourceError> {
    serde_json::from_slice(bytes).map_err(|source| SourceError::Json {
        what: what.to_owned(),
        source,
    })
}

/// An OCI content descriptor.
#[derive(Debug, Clone, Deserialize)]
pub struct Descriptor {
    /// Media type.
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    /// `sha256:...`.
    pub digest: String,
    /// Size in bytes.
    pub size: u64,
    /// Annotations.
    #[serde(default)]
    pub annotations: HashMap<String, String>,
    /// Platform (in indexes).
    #[serde(default)]
    pub platform: Option<Platform>,
}

/// A descriptor's platform.
#[derive(Debug, Clone, Deserialize)]
pub struct Platform {
    /// CPU architecture.
    pub architecture: String,
    /// OS.
    pub os: String,
}

#[derive(Debug, Deserialize)]
struct Index {
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
struct Manifest {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Vec<Descriptor>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
}

/// One layer to apply.
#[derive(Debug, Clone)]
pub struct LayerRef {
    /// Path in the store.
    pub path: String,
    /// Media type, when known.
    pub media_type: Option<String>,
    /// Blob digest, when the blob is content-addressed.
    pub digest: Option<Sha256Digest>,
    /// Blob size, when known.
    pub size: Option<u64>,
    /// Uncompressed digest from the config.
    pub diff_id: Option<Sha256Digest>,
}

/// A resolved image: config and layers.
#[derive(Debug, Clone)]
pub struct ImageManifest {
    /// The config document's bytes.
    pub config_bytes: Vec<u8>,
    /// Its digest (the image ID).
    pub config_digest: Sha256Digest,
    /// The parsed config.
    pub config: ImageConfig,
    /// Layers, bottom first.
    pub layers: Vec<LayerRef>,
    /// Tags of the image.
    pub repo_tags: Vec<String>,
    /// Digest of the manifest, when there is one.
    pub manifest_digest: Option<Sha256Digest>,
}

fn parse_digest(s: &str, what: &str) -> Result<Sha256Digest, SourceError> {
    Sha256Digest::parse(s).map_err(|source| SourceError::Digest {
        what: what.to_owned(),
        source,
    })
}

fn blob_path(d: &Sha256Digest) -> String {
    format!("blobs/sha256/{}", d.hex())
}

/// Reads a small blob and checks its digest (and size).
fn read_blob(
    store: &dyn BlobStore,
    desc: &Descriptor,
    what: &str,
) -> Result<(Vec<u8>, Sha256Digest), SourceError> {
    let digest = parse_digest(&desc.digest, what)?;
    if desc.size > MAX_JSON_SIZE {
        return Err(SourceError::JsonTooLarge {
            what: what.to_owned(),
        });
    }
    let bytes = read_small(store, &blob_path(&digest), what)?;
    let actual = Sha256Digest::of(&bytes);
    if actual != digest {
        return Err(SourceError::DigestMismatch {
            what: what.to_owned(),
            expected: digest,
            actual,
        });
    }
    if bytes.len() as u64 != desc.size {
        return Err(SourceError::Invalid(format!(
            "{what}: size {} differs from the descriptor's {}",
            bytes.len(),
            desc.size
        )));
    }
    Ok((bytes, digest))
}

fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "aarch64" => "arm64",
        _ => "amd64",
    }
}

fn tags_of(descs: &[Descriptor]) -> String {
    let tags: Vec<&str> = descs
        .iter()
        .filter_map(|d| d.annotations.get(REF_NAME_ANNOTATION).map(String::as_str))
        .collect();
    if tags.is_empty() {
        "none tagged".into()
    } else {
        tags.join(", ")
    }
}

/// Resolves the image in an OCI layout (a directory, or the root of an archive).
pub fn oci_manifest(
    store: &dyn BlobStore,
    tag: Option<&str>,
) -> Result<ImageManifest, SourceError> {
    let index: Index = parse_json(
        &read_small(store, "index.json", "index.json")?,
        "index.json",
    )?;
    let chosen = match tag {
        Some(tag) => index
            .manifests
            .iter()
            .find(|d| {
                d.annotations
                    .get(REF_NAME_ANNOTATION)
                    .is_some_and(|r| r == tag || r.rsplit_once(':').is_some_and(|(_, t)| t == tag))
            })
            .ok_or_else(|| SourceError::TagNotFound {
                tag: tag.to_owned(),
                available: tags_of(&index.manifests),
            })?,
        None => match index.manifests.as_slice() {
            [one] => one,
            [] => return Err(SourceError::Invalid("index.json lists no image".into())),
            many => {
                return Err(SourceError::Ambiguous {
                    count: many.len(),
                    available: tags_of(many),
                })
            }
        },
    };
    let tags: Vec<String> = chosen
        .annotations
        .get(REF_NAME_ANNOTATION)
        .cloned()
        .into_iter()
        .collect();
    resolve_manifest(store, chosen, tags, 0)
}

fn resolve_manifest(
    store: &dyn BlobStore,
    desc: &Descriptor,
    repo_tags: Vec<String>,
    depth: u32,
) -> Result<ImageManifest, SourceError> {
    if depth > MAX_INDEX_DEPTH {
        return Err(SourceError::Invalid(
            "image indexes nested too deeply".into(),
        ));
    }
    let (bytes, digest) = read_blob(store, desc, "manifest")?;
    let m: Manifest = parse_json(&bytes, "manifest")?;
    let is_index = desc.media_type == OCI_INDEX
        || desc.media_type == DOCKER_LIST
        || m.media_type == OCI_INDEX
        || m.media_type == DOCKER_LIST
        || (m.manifests.is_some() && m.config.is_none());
    if is_index {
        let list = m.manifests.unwrap_or_default();
        let arch = host_arch();
        let pick = list
            .iter()
            .find(|d| {
                d.platform
                    .as_ref()
                    .is_some_and(|p| p.os == "linux" && p.architecture == arch)
            })
            .ok_or_else(|| {
                SourceError::Invalid(format!("the image index has no linux/{arch} image"))
            })?;
        return resolve_manifest(store, pick, repo_tags, depth + 1);
    }
    let config_desc = m
        .config
        .ok_or_else(|| SourceError::Invalid("manifest has no config".into()))?;
    let (config_bytes, config_digest) = read_blob(store, &config_desc, "image config")?;
    let config: ImageConfig = parse_json(&config_bytes, "image config")?;
    let diff_ids = diff_ids(&config)?;
    if !diff_ids.is_empty() && diff_ids.len() != m.layers.len() {
        return Err(SourceError::Invalid(format!(
            "manifest lists {} layers but the config {} diff_ids",
            m.layers.len(),
            diff_ids.len()
        )));
    }
    let mut layers = Vec::new();
    for (i, l) in m.layers.iter().enumerate() {
        let d = parse_digest(&l.digest, "layer")?;
        layers.push(LayerRef {
            path: blob_path(&d),
            media_type: Some(l.media_type.clone()),
            digest: Some(d),
            size: Some(l.size),
            diff_id: diff_ids.get(i).copied(),
        });
    }
    Ok(ImageManifest {
        config_bytes,
        config_digest,
        config,
        layers,
        repo_tags,
        manifest_digest: Some(digest),
    })
}

fn diff_ids(config: &ImageConfig) -> Result<Vec<Sha256Digest>, SourceError> {
    config
        .rootfs
        .as_ref()
        .map(|r| {
            r.diff_ids
                .iter()
                .map(|d| parse_digest(d, "diff_id"))
                .collect()
        })
        .unwrap_or(Ok(Vec::new()))
}

#[derive(Debug, Deserialize)]
struct DockerManifestEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers", default)]
    layers: Vec<String>,
}

/// `blobs/sha256/<hex>` or `<hex>.json` / `<hex>/layer.tar`-style names: the digest the name
/// claims, when it claims one.
fn digest_in_name(path: &str) -> Option<Sha256Digest> {
    let base = path.rsplit('/').next()?;
    let hex_part = base.strip_suffix(".json").unwrap_or(base);
    if path.starts_with("blobs/sha256/") || base.ends_with(".json") {
        Sha256Digest::parse(&format!("sha256:{hex_part}")).ok()
    } else {
        None
    }
}

/// Resolves the image in a `docker save` archive (old layout with `manifest.json`, or the
/// OCI-style layout docker 25+ writes, or a plain OCI archive with only `index.json`).
pub fn docker_archive_manifest(
    store: &dyn BlobStore,
    tag: Option<&str>,
) -> Result<ImageManifest, SourceError> {
    if !store.exists("manifest.json") {
        if store.exists("index.json") {
            return oci_manifest(store, tag);
        }
        return Err(SourceError::Invalid(
            "the archive has neither manifest.json nor index.json: not a docker save archive"
                .into(),
        ));
    }
    let entries: Vec<DockerManifestEntry> = parse_json(
        &read_small(store, "manifest.json", "manifest.json")?,
        "manifest.json",
    )?;
    let all_tags = || {
        let t: Vec<String> = entries
            .iter()
            .flat_map(|e| e.repo_tags.clone().unwrap_or_default())
            .collect();
        if t.is_empty() {
            "none tagged".to_string()
        } else {
            t.join(", ")
        }
    };
    let entry = match tag {
        Some(tag) => entries
            .iter()
            .find(|e| {
                e.repo_tags.as_ref().is_some_and(|ts| {
                    ts.iter()
                        .any(|t| t == tag || t.rsplit_once(':').is_some_and(|(_, x)| x == tag))
                })
            })
            .ok_or_else(|| SourceError::TagNotFound {
                tag: tag.to_owned(),
                available: all_tags(),
            })?,
        None => match entries.as_slice() {
            [one] => one,
            [] => return Err(SourceError::Invalid("manifest.json lists no image".into())),
            many => {
                return Err(SourceError::Ambiguous {
                    count: many.len(),
                    available: all_tags(),
                })
            }
        },
    };
    let config_bytes = read_small(store, &entry.config, "image config")?;
    let config_digest = Sha256Digest::of(&config_bytes);
    if let Some(claimed) = digest_in_name(&entry.config) {
        if claimed != config_digest {
            return Err(SourceError::DigestMismatch {
                what: "image config".into(),
                expected: claimed,
                actual: config_digest,
            });
        }
    }
    let config: ImageConfig = parse_json(&config_bytes, "image config")?;
    let diff_ids = diff_ids(&config)?;
    if diff_ids.len() != entry.layers.len() {
        return Err(SourceError::Invalid(format!(
            "manifest.json lists {} layers but the config {} diff_ids",
            entry.layers.len(),
            diff_ids.len()
        )));
    }
    let mut layers = Vec::new();
    for (i, p) in entry.layers.iter().enumerate() {
        let path = safe_relative(p)?;
        let digest = if path.starts_with("blobs/sha256/") {
            digest_in_name(&path)
        } else {
            None
        };
        layers.push(LayerRef {
            path,
            media_type: None,
            digest,
            size: None,
            diff_id: Some(diff_ids[i]),
        });
    }
    Ok(ImageManifest {
        config_bytes,
        config_digest,
        config,
        layers,
        repo_tags: entry.repo_tags.clone().unwrap_or_default(),
        manifest_digest: None,
    })
}

/// Splits `PATH[:TAG]`: the whole string if it exists as a path, else at the last `:`.
pub fn split_tag(spec: &str) -> (PathBuf, Option<String>) {
    if Path::new(spec).exists() {
        return (PathBuf::from(spec), None);
    }
    match spec.rsplit_once(':') {
        Some((p, t)) if !t.is_empty() && !t.contains('/') => (PathBuf::from(p), Some(t.to_owned())),
        _ => (PathBuf::from(spec), None),
    }
}

/// Percent-encodes an image reference for the engine's URL path.
fn encode_ref(name: &str) -> Result<String, SourceError> {
    if name.is_empty() || name.len() > 512 {
        return Err(SourceError::Invalid(
            "empty or overlong image reference".into(),
        ));
    }
    let mut out = String::new();
    for b in name.bytes() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'_' | b'-' | b'/' | b':' | b'@' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    Ok(out)
}

/// The engine socket: `DOCKER_HOST=unix://PATH` if set, else [`DEFAULT_DOCKER_SOCKET`].
pub fn docker_socket_from_env() -> PathBuf {
    match std::env::var("DOCKER_HOST") {
        Ok(h) if h.starts_with("unix://") => PathBuf::from(&h["unix://".len()..]),
        _ => PathBuf::from(DEFAULT_DOCKER_SOCKET),
    }
}

/// Downloads `docker save <image>` from the engine at `socket` (`GET /images/<name>/get`) into
/// `out`, at most `max_bytes`. Returns the number of bytes written.
pub fn docker_engine_save(
    socket: &Path,
    image: &str,
    out: &mut dyn Write,
    max_bytes: u64,
) -> Result<u64, SourceError> {
    let sock_name = socket.display().to_string();
    let path = format!("/images/{}/get", encode_ref(image)?);
    let client = Http::new(None).map_err(io_err(sock_name.clone()))?;
    let stream = client
        .block_on(tokio::net::UnixStream::connect(socket))
        .map_err(|e| SourceError::NoEngine {
            socket: sock_name.clone(),
            reason: e.to_string(),
        })?;
    let request = http::get(
        &path,
        &[
            ("host", "docker"),
            ("user-agent", "cloister"),
            ("connection", "close"),
        ],
    )
    .map_err(|e| engine_error(e, &sock_name))?;
    let response = client
        .send(stream, request, MAX_HTTP_HEAD)
        .map_err(|e| engine_error(e, &sock_name))?;
    let length = response
        .header("content-length")
        .map(|v| {
            v.trim()
                .parse::<u64>()
                .map_err(|_| SourceError::Http("bad Content-Length".into()))
        })
        .transpose()?;
    let status = response.status;
    let mut body = response.body;
    if status != 200 {
        let mut text = Vec::new();
        let _ = body.by_ref().take(4096).read_to_end(&mut text);
        let message = serde_json::from_slice::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&text).trim().to_owned());
        return Err(SourceError::Engine { status, message });
    }
    let mut limited = body.take(max_bytes + 1);
    let n = io::copy(&mut limited, out).map_err(io_err("the Docker engine's response"))?;
    if n > max_bytes {
        return Err(SourceError::Invalid(format!(
            "the image archive is larger than {max_bytes} bytes"
        )));
    }
    if let Some(expected) = length {
        if n != expected {
            return Err(SourceError::Http(format!(
                "body ended after {n} of {expected} bytes"
            )));
        }
    }
    Ok(n)
}

/// What a failed exchange with the engine reads as.
fn engine_error(e: HttpError, socket: &str) -> SourceError {
    match e {
        HttpError::Io(source) => SourceError::Io {
            path: socket.to_owned(),
            source,
        },
        HttpError::HeadTooLarge => SourceError::Http("response head too large".into()),
        HttpError::Truncated => SourceError::Http("connection closed in the response head".into()),
        HttpError::Malformed(reason) => SourceError::Http(reason),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_paths() {
        assert_eq!(safe_relative("./a/b.tar").unwrap(), "a/b.tar");
        assert!(safe_relative("../x").is_err());
        assert!(safe_relative("/etc/passwd").is_err());
        assert!(safe_relative("a/../../x").is_err());
        assert!(safe_relative("").is_err());
    }

    #[test]
    fn tags_split() {
        let (p, t) = split_tag("/nonexistent/dir:v1");
        assert_eq!(
            (p.to_str().unwrap(), t.as_deref()),
            ("/nonexistent/dir", Some("v1"))
        );
        let (p, t) = split_tag("/nonexistent/a:b/c");
        assert_eq!((p.to_str().unwrap(), t), ("/nonexistent/a:b/c", None));
    }

    #[test]
    fn engine_heads_are_bounded() {
        let r = crate::http::tests::answer(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\n{}",
            MAX_HTTP_HEAD,
        )
        .unwrap();
        assert_eq!(r.status, 404);
        assert_eq!(r.header("content-length"), Some("2"));
        let huge = format!(
            "HTTP/1.1 200 OK\r\nX: {}\r\n\r\n",
            "a".repeat(MAX_HTTP_HEAD)
        );
        let e = crate::http::tests::answer(huge.as_bytes(), MAX_HTTP_HEAD).unwrap_err();
        assert!(matches!(engine_error(e, "s"), SourceError::Http(_)));
        let e = crate::http::tests::answer(b"SSH-2.0\r\n", MAX_HTTP_HEAD).unwrap_err();
        assert!(matches!(engine_error(e, "s"), SourceError::Http(_)));
    }

    #[test]
    fn encodes_refs() {
        assert_eq!(encode_ref("library/app:1.0").unwrap(), "library/app:1.0");
        assert_eq!(encode_ref("a b?").unwrap(), "a%20b%3F");
        assert!(encode_ref("").is_err());
    }
}
