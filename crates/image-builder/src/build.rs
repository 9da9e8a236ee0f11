//! Building an enclave image: source -> layers applied to a [`Tree`] -> two deterministic cpio
//! ramdisks -> EIF.
//!
//! Phases (timed separately in [`Timings`]):
//! 1. extraction: resolve the image, apply its layers in order ([`crate::layer`]);
//! 2. ramdisks: the bootstrap ramdisk (`dev/`, `init`, `nsm.ko` for AWS blobs, modules under
//!    `lib/modules/` for VM blobs) and the customer ramdisk (`cmd`, `env`, `rootfs/...`, with
//!    `rootfs/{dev,proc,run,sys,tmp,var}` added when missing, as nitro-cli does);
//! 3. EIF: kernel (an empty section when the blobs have none), cmdline, metadata, ramdisks
//!    written and measured in one pass by [`cloister_eif::EifBuilder`] ([`write_eif`] is the
//!    one function that does it).
//!
//! Determinism: entries are sorted by path bytes; every mtime is 0 or `SOURCE_DATE_EPOCH`;
//! owners and permission bits come from the image (never from the host's umask or user);
//! inode numbers are sequential; the metadata's build time is `SOURCE_DATE_EPOCH`, else the
//! image's `created`, else the epoch. Nothing depends on the host, the time or the temp dir.

use crate::blobs::{Blobs, BlobsError};
use crate::config::{CommandEnv, CommandOverrides, CommandStyle, ConfigError, ContainerConfig};
use crate::layer::{apply_layer, LayerError, LayerInput, LayerLimits};
use crate::source::{self, BlobStore, DirStore, ImageManifest, SourceError, TarStore};
use crate::tree::{Content, Meta, NodeKind, Tree, TreeError, TreeLimits};
use cloister_cpio::{CpioWriter, WriteError};
use cloister_eif::measure::Measurements;
use cloister_eif::metadata::Metadata;
use cloister_eif::{EifBuilder, EifError, EifSigner};
use indicatif::{ProgressBar, ProgressStyle};
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufWriter, IsTerminal, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Directories nitro-cli always puts under `rootfs/`.
pub const ROOTFS_DIRS: &[&str] = &["dev", "proc", "run", "sys", "tmp", "var"];

/// Caps on the whole build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most layers.
    pub max_layers: usize,
    /// Most uncompressed layer bytes in total.
    pub max_uncompressed: u64,
    /// Largest archive downloaded from a Docker engine.
    pub max_download: u64,
    /// Tree caps (entries, path length, content).
    pub tree: TreeLimits,
    /// Decompression-ratio caps.
    pub layer: LayerLimits,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_layers: 128,
            max_uncompressed: 16 << 30,
            max_download: 32 << 30,
            tree: TreeLimits::default(),
            layer: LayerLimits::default(),
        }
    }
}

/// Where the image comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageInput {
    /// An OCI image layout directory and an optional tag.
    OciLayout {
        /// The directory.
        dir: PathBuf,
        /// Tag (`org.opencontainers.image.ref.name`).
        tag: Option<String>,
    },
    /// A `docker save` archive and an optional tag.
    DockerArchive {
        /// The tar file.
        file: PathBuf,
        /// Tag (`RepoTags`).
        tag: Option<String>,
    },
    /// An image held by a Docker engine.
    DockerEngine {
        /// Image reference.
        image: String,
        /// The engine's Unix socket.
        socket: PathBuf,
    },
    /// A plain root filesystem directory.
    Rootfs {
        /// The directory.
        dir: PathBuf,
        /// Owner to record for every file instead of the host's.
        owner: Option<(u32, u32)>,
    },
}

/// Everything a build needs.
#[derive(Debug)]
pub struct BuildRequest {
    /// The image.
    pub input: ImageInput,
    /// Blobs directory.
    pub blobs_dir: PathBuf,
    /// Output EIF path.
    pub output: PathBuf,
    /// Command and environment overrides.
    pub overrides: CommandOverrides,
    /// Cmd/Entrypoint rule; default: nitro-cli's for images, Docker's for a rootfs.
    pub style: Option<CommandStyle>,
    /// Image name for the metadata (default: derived from the source).
    pub image_name: Option<String>,
    /// Image version for the metadata (default: the image ID's hex).
    pub image_version: Option<String>,
    /// `CustomMetadata` JSON.
    pub custom_metadata: serde_json::Value,
    /// Signs the image when set.
    pub signer: Option<EifSigner>,
    /// `SOURCE_DATE_EPOCH`: mtime of every entry and the build time.
    pub source_date_epoch: Option<u64>,
    /// Where temporary files go (default: the system's).
    pub temp_dir: Option<PathBuf>,
    /// Caps.
    pub limits: Limits,
    /// Progress bars on a terminal.
    pub progress: bool,
}

impl BuildRequest {
    /// A request with defaults for everything but the input, blobs and output.
    pub fn new(input: ImageInput, blobs_dir: PathBuf, output: PathBuf) -> Self {
        Self {
            input,
            blobs_dir,
            output,
            overrides: CommandOverrides::default(),
            style: None,
            image_name: None,
            image_version: None,
            custom_metadata: serde_json::Value::Null,
            signer: None,
            source_date_epoch: None,
            temp_dir: None,
            limits: Limits::default(),
            progress: false,
        }
    }
}

/// Errors of a build.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The image source failed.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// A layer failed.
    #[error(transparent)]
    Layer(#[from] LayerError),
    /// The filesystem tree refused something.
    #[error(transparent)]
    Tree(#[from] TreeError),
    /// The command or environment is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The blobs are unusable.
    #[error(transparent)]
    Blobs(#[from] BlobsError),
    /// Too many layers.
    #[error("the image has {count} layers; the limit is {max}")]
    TooManyLayers {
        /// Layers in the image.
        count: usize,
        /// Limit.
        max: usize,
    },
    /// Writing a ramdisk failed.
    #[error("cannot write the {which} ramdisk")]
    Ramdisk {
        /// "bootstrap" or "customer".
        which: &'static str,
        /// Cause.
        #[source]
        source: WriteError,
    },
    /// Writing the EIF failed.
    #[error("cannot write the enclave image")]
    Eif(#[source] EifError),
    /// A host file or directory could not be used.
    #[error("cannot access {path}")]
    Io {
        /// The path.
        path: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// `SOURCE_DATE_EPOCH` does not fit the 32-bit cpio mtime.
    #[error("SOURCE_DATE_EPOCH {0} is past 2106, beyond cpio's 32-bit times")]
    EpochTooLarge(u64),
    /// A build from a Dockerfile directory was asked for.
    #[error("building from a Dockerfile (--docker-dir) needs a container engine, which cloister does not use; build the image with docker/buildah/kaniko and pass it as --docker-archive or --oci-layout")]
    DockerfileUnsupported,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> BuildError + '_ {
    move |source| BuildError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Time spent in each phase.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timings {
    /// Resolving the image and applying its layers.
    pub extract: Duration,
    /// Writing both ramdisks.
    pub ramdisks: Duration,
    /// Writing and measuring the EIF.
    pub eif: Duration,
}

/// The ramdisks and metadata of an image, ready to be written as an EIF.
#[derive(Debug)]
pub struct Prepared {
    /// Kernel image; `None` writes an empty kernel section (an image for process isolation,
    /// see [`crate::blobs`]).
    pub kernel: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: String,
    /// Bootstrap ramdisk (temporary file).
    pub bootstrap: tempfile::NamedTempFile,
    /// Customer ramdisk (temporary file).
    pub customer: tempfile::NamedTempFile,
    /// Metadata section.
    pub metadata: Metadata,
    /// The command and environment written.
    pub command: CommandEnv,
    /// Layers applied.
    pub layers: usize,
    /// Paths in the root filesystem.
    pub entries: usize,
    /// Timings so far.
    pub timings: Timings,
}

/// The result of [`build`].
#[derive(Debug, Clone)]
pub struct BuildReport {
    /// PCRs of the written image.
    pub measurements: Measurements,
    /// Metadata written.
    pub metadata: Metadata,
    /// Layers applied.
    pub layers: usize,
    /// Paths in the root filesystem.
    pub entries: usize,
    /// Size of the bootstrap ramdisk.
    pub bootstrap_size: u64,
    /// Size of the customer ramdisk.
    pub customer_size: u64,
    /// Time per phase.
    pub timings: Timings,
}

/// Progress display: bars on a terminal, nothing otherwise.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    enabled: bool,
}

impl Progress {
    /// Shows bars only if `wanted` and stderr is a terminal.
    pub fn new(wanted: bool) -> Self {
        Self {
            enabled: wanted && io::stderr().is_terminal(),
        }
    }

    /// A byte-count bar (hidden when disabled).
    pub fn bar(&self, len: u64, message: impl Into<String>) -> ProgressBar {
        if !self.enabled {
            return ProgressBar::hidden();
        }
        let pb = ProgressBar::new(len);
        if let Ok(style) = ProgressStyle::with_template(
            "{msg:30!} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec})",
        ) {
            pb.set_style(style.progress_chars("=> "));
        }
        pb.set_message(message.into());
        pb
    }
}

/// RFC 3339 (UTC) of a Unix time (past year 9999: the last second of 9999).
pub fn rfc3339(secs: u64) -> String {
    let t = i64::try_from(secs)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .unwrap_or_else(|| time::PrimitiveDateTime::MAX.assume_utc());
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// A resolved source: the manifest plus the store to read layers from (kept alive).
struct Resolved {
    manifest: ImageManifest,
    store: Box<dyn BlobStore>,
    default_name: String,
    _download: Option<tempfile::NamedTempFile>,
}

fn resolve(
    input: &ImageInput,
    temp: &Path,
    limits: &Limits,
) -> Result<Option<Resolved>, BuildError> {
    Ok(Some(match input {
        ImageInput::OciLayout { dir, tag } => {
            let store: Box<dyn BlobStore> = Box::new(DirStore(dir.clone()));
            let manifest = source::oci_manifest(store.as_ref(), tag.as_deref())?;
            let default_name = manifest.repo_tags.first().cloned().unwrap_or_else(|| {
                dir.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "image".into())
            });
            Resolved {
                manifest,
                store,
                default_name,
                _download: None,
            }
        }
        ImageInput::DockerArchive { file, tag } => {
            let store: Box<dyn BlobStore> = Box::new(TarStore::open(file)?);
            let manifest = source::docker_archive_manifest(store.as_ref(), tag.as_deref())?;
            let default_name = manifest.repo_tags.first().cloned().unwrap_or_else(|| {
                file.file_stem()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "image".into())
            });
            Resolved {
                manifest,
                store,
                default_name,
                _download: None,
            }
        }
        ImageInput::DockerEngine { image, socket } => {
            let mut tmp = tempfile::NamedTempFile::new_in(temp).map_err(io_err(temp))?;
            {
                let mut w = BufWriter::new(tmp.as_file_mut());
                source::docker_engine_save(socket, image, &mut w, limits.max_download)?;
                w.flush().map_err(io_err(temp))?;
            }
            let store: Box<dyn BlobStore> = Box::new(TarStore::open(tmp.path())?);
            let manifest = source::docker_archive_manifest(store.as_ref(), None)?;
            Resolved {
                manifest,
                store,
                default_name: image.clone(),
                _download: Some(tmp),
            }
        }
        ImageInput::Rootfs { .. } => return Ok(None),
    }))
}

/// Walks a host directory into the tree (symlinks not followed; special files skipped).
fn scan_rootfs(tree: &mut Tree, dir: &Path, owner: Option<(u32, u32)>) -> Result<(), BuildError> {
    let top = std::fs::symlink_metadata(dir).map_err(io_err(dir))?;
    if !top.is_dir() {
        return Err(BuildError::Io {
            path: dir.display().to_string(),
            source: io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
        });
    }
    let meta_of = |m: &std::fs::Metadata| {
        let (uid, gid) = owner.unwrap_or((m.uid(), m.gid()));
        Meta {
            mode: m.mode() & 0o7777,
            uid,
            gid,
        }
    };
    tree.add_dir(b"", meta_of(&top), 0)?;
    let mut links: HashMap<(u64, u64), usize> = HashMap::new();
    let mut stack: Vec<(PathBuf, Vec<u8>)> = vec![(dir.to_path_buf(), Vec::new())];
    while let Some((host, rel)) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&host)
            .map_err(io_err(&host))?
            .collect::<Result<_, _>>()
            .map_err(io_err(&host))?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            use std::os::unix::ffi::OsStrExt;
            let path = e.path();
            let mut r = rel.clone();
            if !r.is_empty() {
                r.push(b'/');
            }
            r.extend_from_slice(e.file_name().as_bytes());
            let m = std::fs::symlink_metadata(&path).map_err(io_err(&path))?;
            let ft = m.file_type();
            if ft.is_dir() {
                tree.add_dir(&r, meta_of(&m), 0)?;
                stack.push((path, r));
            } else if ft.is_symlink() {
                let target = std::fs::read_link(&path).map_err(io_err(&path))?;
                tree.add_symlink(&r, target.as_os_str().as_bytes(), meta_of(&m), 0)?;
            } else if ft.is_file() {
                if m.nlink() > 1 {
                    if let Some(&id) = links.get(&(m.dev(), m.ino())) {
                        tree.add_host_hardlink(&r, id)?;
                        continue;
                    }
                }
                let id = tree.add_host_file(&r, meta_of(&m), path, m.len())?;
                if m.nlink() > 1 {
                    links.insert((m.dev(), m.ino()), id);
                }
            } else {
                tracing::warn!(path = %path.display(), "skipping special file");
            }
        }
    }
    Ok(())
}

/// Writes the customer ramdisk: `cmd`, `env`, `rootfs/...` in byte order.
pub fn write_customer_ramdisk<W: Write>(
    tree: &Tree,
    command: &CommandEnv,
    mtime: u32,
    out: W,
    bar: &ProgressBar,
) -> Result<W, WriteError> {
    let mut w = CpioWriter::new(out);
    w.set_mtime(mtime);
    let cmd = command.cmd_file();
    let env = command.env_file();
    w.file("cmd", 0o644, 0, 0, cmd.len() as u64, &cmd[..])?;
    w.file("env", 0o644, 0, 0, env.len() as u64, &env[..])?;
    let subdirs = tree.subdir_counts();
    let root = tree.root_meta();
    w.dir_with_nlink(
        "rootfs",
        root.mode,
        root.uid,
        root.gid,
        2 + subdirs.get(&b""[..]).copied().unwrap_or(0),
    )?;
    let groups = tree.link_groups();
    let mut name = Vec::with_capacity(4096);
    let full = |name: &mut Vec<u8>, k: &[u8]| {
        name.clear();
        name.extend_from_slice(b"rootfs/");
        name.extend_from_slice(k);
    };
    for (key, node) in tree.iter() {
        full(&mut name, key);
        match &node.kind {
            NodeKind::Dir => w.dir_with_nlink(
                &name,
                node.meta.mode,
                node.meta.uid,
                node.meta.gid,
                2 + subdirs.get(key).copied().unwrap_or(0),
            )?,
            NodeKind::Symlink(target) => {
                w.symlink_owned(&name, target, node.meta.mode, node.meta.uid, node.meta.gid)?
            }
            NodeKind::File(id) => {
                let Some(inode) = tree.inode(*id) else {
                    continue;
                };
                let names: Vec<Vec<u8>> = match groups.get(id) {
                    // Emit the whole group at its last name, so every parent exists already.
                    Some(g) if g.last() != Some(&key) => continue,
                    Some(g) => g.iter().map(|k| [&b"rootfs/"[..], k].concat()).collect(),
                    None => vec![name.clone()],
                };
                let m = inode.meta;
                let len = inode.content.len();
                match &inode.content {
                    Content::Spill { offset, len } => w.hardlinks(
                        &names,
                        m.mode,
                        m.uid,
                        m.gid,
                        *len,
                        tree.spill_reader(*offset, *len),
                    )?,
                    Content::Host { path, len } => {
                        let f = File::open(path).map_err(|source| WriteError::Source {
                            path: path.display().to_string(),
                            source,
                        })?;
                        w.hardlinks(
                            &names,
                            m.mode,
                            m.uid,
                            m.gid,
                            *len,
                            io::BufReader::with_capacity(1 << 20, f),
                        )?
                    }
                }
                bar.inc(len);
            }
        }
    }
    w.finish()
}

/// Writes the bootstrap ramdisk: `dev/`, `init`, `nsm.ko` (AWS blobs) and
/// `lib/modules/<name>.ko` plus `modules.list` (VM blobs: the absolute paths of the modules in
/// load order, which is what `init` reads), in byte order.
pub fn write_bootstrap_ramdisk<W: Write>(
    blobs: &Blobs,
    mtime: u32,
    out: W,
) -> Result<W, BuildError> {
    enum Item<'a> {
        Dir,
        File(&'a Path),
        Bytes(Vec<u8>),
    }
    let mut items: Vec<(String, Item)> = vec![
        ("dev".into(), Item::Dir),
        ("init".into(), Item::File(&blobs.init)),
    ];
    if let Some(nsm) = &blobs.nsm_ko {
        items.push(("nsm.ko".into(), Item::File(nsm)));
    }
    if !blobs.modules.is_empty() {
        items.push(("lib".into(), Item::Dir));
        items.push(("lib/modules".into(), Item::Dir));
        let mut order = String::new();
        for m in &blobs.modules {
            let name = m
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            order.push_str("/lib/modules/");
            order.push_str(&name);
            order.push('\n');
            items.push((format!("lib/modules/{name}"), Item::File(m)));
        }
        items.push(("modules.list".into(), Item::Bytes(order.into_bytes())));
    }
    items.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let ramdisk = |source| BuildError::Ramdisk {
        which: "bootstrap",
        source,
    };
    let mut w = CpioWriter::new(out);
    w.set_mtime(mtime);
    for (name, item) in items {
        match item {
            Item::Dir => w.dir(&name, 0o755, 0, 0).map_err(ramdisk)?,
            Item::File(p) => {
                let f = File::open(p).map_err(io_err(p))?;
                let len = f.metadata().map_err(io_err(p))?.len();
                w.file(&name, 0o755, 0, 0, len, io::BufReader::new(f))
                    .map_err(ramdisk)?;
            }
            Item::Bytes(b) => w
                .file(&name, 0o644, 0, 0, b.len() as u64, &b[..])
                .map_err(ramdisk)?,
        }
    }
    w.finish().map_err(ramdisk)
}

/// What the input says about the image besides its files.
struct ImageFacts {
    container: ContainerConfig,
    style: CommandStyle,
    docker_info: serde_json::Value,
    default_name: String,
    version: String,
    created: Option<String>,
    layers: usize,
}

/// Applies a resolved image's layers to `tree`, in order.
fn apply_image(
    r: &Resolved,
    req: &BuildRequest,
    tree: &mut Tree,
    progress: &Progress,
) -> Result<ImageFacts, BuildError> {
    let m = &r.manifest;
    if m.layers.len() > req.limits.max_layers {
        return Err(BuildError::TooManyLayers {
            count: m.layers.len(),
            max: req.limits.max_layers,
        });
    }
    let mut budget = req.limits.max_uncompressed;
    let total: u64 = m.layers.iter().filter_map(|l| l.size).sum();
    let bar = progress.bar(total, "Extracting layers");
    for (i, l) in m.layers.iter().enumerate() {
        let (reader, size) = r.store.open(&l.path)?;
        let b = bar.clone();
        if l.size.is_none() {
            bar.inc_length(size);
        }
        let index = u32::try_from(i).map_err(|_| BuildError::TooManyLayers {
            count: m.layers.len(),
            max: req.limits.max_layers,
        })?;
        apply_layer(
            tree,
            index,
            LayerInput {
                name: l.digest.map_or_else(|| l.path.clone(), |d| d.to_string()),
                reader,
                size: Some(l.size.unwrap_or(size)),
                digest: l.digest,
                diff_id: l.diff_id,
                media_type: l.media_type.clone(),
            },
            &mut budget,
            req.limits.layer,
            Box::new(move |n| b.inc(n)),
        )?;
    }
    bar.finish_and_clear();
    let raw_config: serde_json::Value =
        serde_json::from_slice(&m.config_bytes).unwrap_or(serde_json::Value::Null);
    let info = serde_json::json!({
        "Id": m.config_digest.to_string(),
        "RepoTags": m.repo_tags,
        "RepoDigests": m.manifest_digest.map(|d| vec![d.to_string()]).unwrap_or_default(),
        "Created": m.config.created,
        "Architecture": m.config.architecture,
        "Os": m.config.os,
        "Config": raw_config.get("config").cloned().unwrap_or(serde_json::Value::Null),
        "RootFS": raw_config.get("rootfs").cloned().unwrap_or(serde_json::Value::Null),
    });
    Ok(ImageFacts {
        container: m.config.config.clone().unwrap_or_default(),
        style: req.style.unwrap_or(CommandStyle::NitroCli),
        docker_info: info,
        default_name: r.default_name.clone(),
        version: m.config_digest.hex(),
        created: m.config.created.clone(),
        layers: m.layers.len(),
    })
}

/// Scans a root filesystem directory input into `tree`.
fn scan_rootfs_input(req: &BuildRequest, tree: &mut Tree) -> Result<ImageFacts, BuildError> {
    let ImageInput::Rootfs { dir, owner } = &req.input else {
        unreachable!("resolve returns None only for a rootfs")
    };
    scan_rootfs(tree, dir, *owner)?;
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "rootfs".into());
    Ok(ImageFacts {
        container: ContainerConfig::default(),
        style: req.style.unwrap_or(CommandStyle::Docker),
        docker_info: serde_json::Value::Null,
        default_name: name,
        version: "1.0".to_string(),
        created: None,
        layers: 0,
    })
}

/// Phases 1 and 2: resolves the image, applies its layers and writes both ramdisks.
pub fn prepare(req: &BuildRequest) -> Result<Prepared, BuildError> {
    let progress = Progress::new(req.progress);
    let temp = req.temp_dir.clone().unwrap_or_else(std::env::temp_dir);
    let blobs = Blobs::load(&req.blobs_dir)?;
    let mtime = match req.source_date_epoch {
        Some(e) => u32::try_from(e).map_err(|_| BuildError::EpochTooLarge(e))?,
        None => 0,
    };
    let t0 = Instant::now();
    let mut tree = Tree::new(&temp, req.limits.tree)?;
    let resolved = resolve(&req.input, &temp, &req.limits)?;
    let ImageFacts {
        container,
        style,
        docker_info,
        default_name,
        version,
        created,
        layers,
    } = match &resolved {
        Some(r) => apply_image(r, req, &mut tree, &progress)?,
        None => scan_rootfs_input(req, &mut tree)?,
    };
    let command = CommandEnv::derive(&container, &req.overrides, style)?;
    for d in ROOTFS_DIRS {
        if tree.get(d.as_bytes()).is_none() {
            tree.add_dir(d.as_bytes(), Meta::root(0o755), u32::MAX)?;
        }
    }
    tree.flush()?;
    let extract = t0.elapsed();

    let t1 = Instant::now();
    let mut bootstrap = tempfile::NamedTempFile::new_in(&temp).map_err(io_err(&temp))?;
    {
        let w = BufWriter::with_capacity(1 << 20, bootstrap.as_file_mut());
        let mut w = write_bootstrap_ramdisk(&blobs, mtime, w)?;
        w.flush().map_err(io_err(&temp))?;
    }
    let mut customer = tempfile::NamedTempFile::new_in(&temp).map_err(io_err(&temp))?;
    {
        let bar = progress.bar(tree.content_bytes(), "Writing ramdisk");
        let w = BufWriter::with_capacity(1 << 20, customer.as_file_mut());
        let mut w = write_customer_ramdisk(&tree, &command, mtime, w, &bar).map_err(|source| {
            BuildError::Ramdisk {
                which: "customer",
                source,
            }
        })?;
        w.flush().map_err(io_err(&temp))?;
        bar.finish_and_clear();
    }
    let ramdisks = t1.elapsed();

    let build_time = match (req.source_date_epoch, created) {
        (Some(e), _) => rfc3339(e),
        (None, Some(c)) if c.len() <= 64 && c.is_ascii() => c,
        _ => rfc3339(0),
    };
    let image_name =
        req.image_name
            .clone()
            .unwrap_or_else(|| match default_name.rsplit_once(':') {
                Some((n, t)) if !t.contains('/') => n.to_owned(),
                _ => default_name.clone(),
            });
    let mut metadata = Metadata::new(
        image_name,
        "cloister",
        env!("CARGO_PKG_VERSION"),
        build_time,
    );
    metadata.image_version = req.image_version.clone().unwrap_or(version);
    metadata.docker_info = docker_info;
    metadata.custom_metadata = req.custom_metadata.clone();
    Ok(Prepared {
        kernel: blobs.kernel.clone(),
        cmdline: blobs.cmdline.clone(),
        bootstrap,
        customer,
        metadata,
        command,
        layers,
        entries: tree.len(),
        timings: Timings {
            extract,
            ramdisks,
            eif: Duration::ZERO,
        },
    })
}

/// Phase 3: writes (and measures) the EIF. The one place an image file is produced.
pub fn write_eif(
    prepared: &Prepared,
    output: &Path,
    signer: Option<EifSigner>,
) -> Result<Measurements, BuildError> {
    let b = match &prepared.kernel {
        Some(kernel) => EifBuilder::new().kernel_path(kernel),
        None => EifBuilder::new().kernel_bytes(Vec::new()),
    };
    let mut b = b
        .cmdline(prepared.cmdline.clone())
        .ramdisk_path(prepared.bootstrap.path())
        .ramdisk_path(prepared.customer.path())
        .metadata(prepared.metadata.clone());
    if let Some(s) = signer {
        b = b.signer(s);
    }
    b.write_to_path(output).map_err(BuildError::Eif)
}

/// Builds an enclave image file from `req` (all three phases).
pub fn build(req: BuildRequest) -> Result<BuildReport, BuildError> {
    let mut prepared = prepare(&req)?;
    let progress = Progress::new(req.progress);
    let spinner = progress.bar(0, "Measuring and writing the image");
    let t = Instant::now();
    let measurements = write_eif(&prepared, &req.output, req.signer)?;
    prepared.timings.eif = t.elapsed();
    spinner.finish_and_clear();
    let size = |f: &tempfile::NamedTempFile| f.as_file().metadata().map(|m| m.len()).unwrap_or(0);
    Ok(BuildReport {
        measurements,
        metadata: prepared.metadata.clone(),
        layers: prepared.layers,
        entries: prepared.entries,
        bootstrap_size: size(&prepared.bootstrap),
        customer_size: size(&prepared.customer),
        timings: prepared.timings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(4_102_444_799), "2099-12-31T23:59:59Z");
    }
}
