//! Applying one layer (a tar stream, plain, gzip or zstd) to the in-memory [`Tree`].
//!
//! The blob is checked while it streams: its size and SHA-256 against the descriptor (or the
//! uncompressed SHA-256 against the config's `diff_id` where the blob is not content-addressed,
//! as in old `docker save` archives), the compression is detected by magic, and the
//! decompressed size is bounded both in total (across layers) and as a ratio of the compressed
//! size (decompression bombs). Entries are applied in order: whiteouts (`.wh.<name>`) and opaque
//! markers (`.wh..wh..opq`) hide lower layers; device nodes, FIFOs and sockets are skipped with
//! a warning (an enclave's `/dev` comes from its runtime).

use crate::digest::{MeterState, Metered, OverLimit, Sha256Digest};
use crate::tree::{show, Meta, Tree, TreeError};
use std::cell::RefCell;
use std::io::{self, Read};
use std::rc::Rc;

/// Whiteout prefix.
pub const WHITEOUT_PREFIX: &[u8] = b".wh.";
/// Opaque-directory marker.
pub const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";

/// Caps that apply while reading layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerLimits {
    /// Largest decompressed/compressed ratio allowed once `ratio_floor` bytes are out.
    pub max_ratio: u64,
    /// Decompressed bytes below which the ratio is not checked (small layers compress well).
    pub ratio_floor: u64,
}

impl Default for LayerLimits {
    fn default() -> Self {
        Self {
            max_ratio: 1000,
            ratio_floor: 64 << 20,
        }
    }
}

/// Errors applying a layer.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// Reading the blob or the tar stream failed.
    #[error("layer {layer}: cannot read the archive")]
    Read {
        /// Layer name.
        layer: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The blob's digest differs from its descriptor's.
    #[error("layer {layer}: digest is {actual}, expected {expected}")]
    DigestMismatch {
        /// Layer name.
        layer: String,
        /// Expected digest.
        expected: Sha256Digest,
        /// Computed digest.
        actual: Sha256Digest,
    },
    /// The blob's size differs from its descriptor's.
    #[error("layer {layer}: size is {actual} bytes, expected {expected}")]
    SizeMismatch {
        /// Layer name.
        layer: String,
        /// Expected size.
        expected: u64,
        /// Actual size.
        actual: u64,
    },
    /// The decompressed image is larger than allowed.
    #[error("layer {layer}: image larger than {max} bytes uncompressed")]
    TooLarge {
        /// Layer name.
        layer: String,
        /// Limit.
        max: u64,
    },
    /// The layer decompresses far more than its size suggests.
    #[error(
        "layer {layer}: decompresses more than {max_ratio} times its size (decompression bomb?)"
    )]
    Bomb {
        /// Layer name.
        layer: String,
        /// Limit.
        max_ratio: u64,
    },
    /// The compression is not one of gzip, zstd, none.
    #[error(
        "layer {layer}: compressed with {format}, which is not supported (gzip, zstd or none)"
    )]
    UnsupportedCompression {
        /// Layer name.
        layer: String,
        /// What was detected.
        format: &'static str,
    },
    /// The media type says one compression, the bytes another.
    #[error("layer {layer}: media type {media_type} does not match its content ({detected})")]
    MediaTypeMismatch {
        /// Layer name.
        layer: String,
        /// Media type.
        media_type: String,
        /// Detected compression.
        detected: &'static str,
    },
    /// An entry could not be applied.
    #[error("layer {layer}: entry {entry:?}")]
    Entry {
        /// Layer name.
        layer: String,
        /// Entry path.
        entry: String,
        /// Cause.
        #[source]
        source: TreeError,
    },
    /// An entry's header is unusable.
    #[error("layer {layer}: entry {entry:?}: {reason}")]
    BadEntry {
        /// Layer name.
        layer: String,
        /// Entry path.
        entry: String,
        /// What is wrong.
        reason: String,
    },
}

/// One layer blob to apply.
pub struct LayerInput<'a> {
    /// Name for messages (usually the digest).
    pub name: String,
    /// The blob's bytes (as stored: compressed or not).
    pub reader: Box<dyn Read + 'a>,
    /// Expected size of the blob.
    pub size: Option<u64>,
    /// Expected SHA-256 of the blob.
    pub digest: Option<Sha256Digest>,
    /// Expected SHA-256 of the uncompressed tar (checked only when `digest` is absent).
    pub diff_id: Option<Sha256Digest>,
    /// Media type from the manifest, when there is one.
    pub media_type: Option<String>,
}

impl std::fmt::Debug for LayerInput<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LayerInput")
            .field("name", &self.name)
            .field("size", &self.size)
            .field("digest", &self.digest)
            .field("diff_id", &self.diff_id)
            .field("media_type", &self.media_type)
            .finish_non_exhaustive()
    }
}

/// What applying a layer did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LayerStats {
    /// Blob bytes read.
    pub compressed_bytes: u64,
    /// Tar bytes read.
    pub uncompressed_bytes: u64,
    /// Entries applied.
    pub entries: u64,
    /// Entries skipped (devices, FIFOs, sockets, unknown types).
    pub skipped: u64,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Compression {
    None,
    Gzip,
    Zstd,
}

fn detect(magic: &[u8]) -> Result<Compression, &'static str> {
    match magic {
        [0x1f, 0x8b, ..] => Ok(Compression::Gzip),
        [0x28, 0xb5, 0x2f, 0xfd, ..] => Ok(Compression::Zstd),
        [0xfd, b'7', b'z', b'X', ..] => Err("xz"),
        [b'B', b'Z', b'h', ..] => Err("bzip2"),
        _ => Ok(Compression::None),
    }
}

fn compression_name(c: Compression) -> &'static str {
    match c {
        Compression::None => "uncompressed tar",
        Compression::Gzip => "gzip",
        Compression::Zstd => "zstd",
    }
}

/// Enforces the decompression ratio, looking at the compressed meter.
struct RatioGuard<R> {
    inner: R,
    compressed: Rc<RefCell<MeterState>>,
    out: u64,
    limits: LayerLimits,
}

#[derive(Debug, thiserror::Error)]
#[error("decompression ratio over {0}")]
struct RatioExceeded(u64);

impl<R: Read> Read for RatioGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.out += n as u64;
        if self.out > self.limits.ratio_floor {
            let inp = self.compressed.borrow().bytes.max(1);
            if self.out / inp > self.limits.max_ratio {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    RatioExceeded(self.limits.max_ratio),
                ));
            }
        }
        Ok(n)
    }
}

/// Turns an I/O error from the reader stack into the matching [`LayerError`].
fn classify(layer: &str, e: io::Error) -> LayerError {
    if let Some(inner) = e.get_ref() {
        if let Some(OverLimit(max)) = inner.downcast_ref::<OverLimit>() {
            return LayerError::TooLarge {
                layer: layer.to_owned(),
                max: *max,
            };
        }
        if let Some(RatioExceeded(max)) = inner.downcast_ref::<RatioExceeded>() {
            return LayerError::Bomb {
                layer: layer.to_owned(),
                max_ratio: *max,
            };
        }
    }
    // tar wraps errors from the reader into its own; look one level down as well.
    if let Some(inner) = e.get_ref().and_then(|i| i.source()) {
        if let Some(OverLimit(max)) = inner.downcast_ref::<OverLimit>() {
            return LayerError::TooLarge {
                layer: layer.to_owned(),
                max: *max,
            };
        }
        if let Some(RatioExceeded(max)) = inner.downcast_ref::<RatioExceeded>() {
            return LayerError::Bomb {
                layer: layer.to_owned(),
                max_ratio: *max,
            };
        }
    }
    LayerError::Read {
        layer: layer.to_owned(),
        source: e,
    }
}

/// Checks that the compression a manifest's media type claims is the one the blob has.
fn check_media_type(
    layer: &str,
    media_type: Option<&str>,
    compression: Compression,
) -> Result<(), LayerError> {
    if let Some(mt) = media_type {
        let claimed = if mt.ends_with("gzip") {
            Some(Compression::Gzip)
        } else if mt.ends_with("zstd") {
            Some(Compression::Zstd)
        } else if mt.ends_with(".tar") || mt.ends_with("diff.tar") {
            Some(Compression::None)
        } else {
            None
        };
        if claimed.is_some_and(|c| c != compression) {
            return Err(LayerError::MediaTypeMismatch {
                layer: layer.to_owned(),
                media_type: mt.to_owned(),
                detected: compression_name(compression),
            });
        }
    }
    Ok(())
}

/// Applies one layer to `tree` as layer number `index` (0 = bottom). `budget` is the number of
/// uncompressed bytes still allowed; it is reduced by what this layer used. `progress` is called
/// with the number of blob bytes consumed as they are read.
pub fn apply_layer(
    tree: &mut Tree,
    index: u32,
    input: LayerInput<'_>,
    budget: &mut u64,
    limits: LayerLimits,
    progress: Box<dyn FnMut(u64)>,
) -> Result<LayerStats, LayerError> {
    let layer = input.name.clone();
    let max_blob = input.size.map_or(u64::MAX, |s| s);
    let (raw, raw_state) = Metered::new(input.reader, input.digest.is_some(), max_blob);
    let mut raw = raw.on_bytes(progress);
    let read_err = |e| classify(&layer, e);

    // Peek at the magic without losing it.
    let mut magic = [0u8; 4];
    let mut got = 0;
    while got < magic.len() {
        match raw.read(&mut magic[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(read_err(e)),
        }
    }
    let compression =
        detect(&magic[..got]).map_err(|format| LayerError::UnsupportedCompression {
            layer: layer.clone(),
            format,
        })?;
    check_media_type(&layer, input.media_type.as_deref(), compression)?;
    let head = io::Cursor::new(magic[..got].to_vec());
    let stream = head.chain(raw);
    let decoded: Box<dyn Read> = match compression {
        Compression::None => Box::new(stream),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(stream)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(stream).map_err(read_err)?),
    };
    let guarded = RatioGuard {
        inner: decoded,
        compressed: raw_state.clone(),
        out: 0,
        limits,
    };
    let check_diff = input.digest.is_none() && input.diff_id.is_some();
    let (tar_stream, tar_state) = Metered::new(guarded, check_diff, *budget);

    let mut stats = LayerStats::default();
    let mut archive = tar::Archive::new(tar_stream);
    {
        let entries = archive.entries().map_err(read_err)?;
        for entry in entries {
            let mut entry = entry.map_err(read_err)?;
            if apply_entry(tree, index, &layer, &mut entry)? {
                stats.entries += 1;
            } else {
                stats.skipped += 1;
            }
        }
    }
    // Drain what follows the end-of-archive marker so that the digests cover the whole blob.
    let mut rest = archive.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(read_err)?;
    drop(rest);

    let mut raw_st = raw_state.borrow_mut();
    stats.compressed_bytes = raw_st.bytes;
    if let Some(expected) = input.size {
        if raw_st.bytes != expected {
            return Err(LayerError::SizeMismatch {
                layer,
                expected,
                actual: raw_st.bytes,
            });
        }
    }
    if let (Some(expected), Some(actual)) = (input.digest, raw_st.digest()) {
        if expected != actual {
            return Err(LayerError::DigestMismatch {
                layer,
                expected,
                actual,
            });
        }
    }
    let mut tar_st = tar_state.borrow_mut();
    stats.uncompressed_bytes = tar_st.bytes;
    if check_diff {
        if let (Some(expected), Some(actual)) = (input.diff_id, tar_st.digest()) {
            if expected != actual {
                return Err(LayerError::DigestMismatch {
                    layer,
                    expected,
                    actual,
                });
            }
        }
    }
    *budget -= tar_st.bytes.min(*budget);
    Ok(stats)
}

fn pax_id(entry: &mut tar::Entry<'_, impl Read>, key: &str) -> Option<u64> {
    let exts = entry.pax_extensions().ok()??;
    for ext in exts.flatten() {
        if ext.key_bytes() == key.as_bytes() {
            return std::str::from_utf8(ext.value_bytes()).ok()?.parse().ok();
        }
    }
    None
}

/// Applies one entry; `Ok(false)` when it was skipped.
fn apply_entry<R: Read>(
    tree: &mut Tree,
    index: u32,
    layer: &str,
    entry: &mut tar::Entry<'_, R>,
) -> Result<bool, LayerError> {
    let path = entry.path_bytes().into_owned();
    let bad = |reason: String| LayerError::BadEntry {
        layer: layer.to_owned(),
        entry: show(&path),
        reason,
    };
    let tree_err = |source| LayerError::Entry {
        layer: layer.to_owned(),
        entry: show(&path),
        source,
    };
    let header = entry.header();
    let kind = header.entry_type();
    let mode = header.mode().map_err(|e| bad(format!("bad mode: {e}")))? & 0o7777;
    // An empty numeric field (all NULs or spaces) means 0, as GNU tar reads it.
    let blank = |f: &[u8]| f.iter().all(|&b| b == 0 || b == b' ');
    let mut uid = match header.uid() {
        Ok(u) => u,
        Err(_) if blank(&header.as_old().uid) => 0,
        Err(e) => return Err(bad(format!("bad uid: {e}"))),
    };
    let mut gid = match header.gid() {
        Ok(g) => g,
        Err(_) if blank(&header.as_old().gid) => 0,
        Err(e) => return Err(bad(format!("bad gid: {e}"))),
    };
    let link = header.link_name_bytes().map(|l| l.into_owned());
    let sparse_size = header.as_gnu().and_then(|g| g.real_size().ok());
    if let Some(u) = pax_id(entry, "uid") {
        uid = u;
    }
    if let Some(g) = pax_id(entry, "gid") {
        gid = g;
    }
    let uid = u32::try_from(uid).map_err(|_| bad(format!("uid {uid} does not fit 32 bits")))?;
    let gid = u32::try_from(gid).map_err(|_| bad(format!("gid {gid} does not fit 32 bits")))?;
    let meta = Meta { mode, uid, gid };

    // Whiteouts.
    let (dir, base) = match path.iter().rposition(|&b| b == b'/') {
        Some(i) if i + 1 == path.len() => (&path[..0], &path[..]),
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&path[..0], &path[..]),
    };
    if base == OPAQUE_MARKER {
        tree.opaque(dir, index).map_err(tree_err)?;
        return Ok(true);
    }
    if let Some(name) = base.strip_prefix(WHITEOUT_PREFIX) {
        if name.starts_with(WHITEOUT_PREFIX) {
            // Other aufs metadata (.wh..wh.plnk and friends): not content.
            return Ok(false);
        }
        if name.is_empty() || name == b"." || name == b".." {
            return Err(bad("malformed whiteout".into()));
        }
        tree.whiteout(dir, name, index).map_err(tree_err)?;
        return Ok(true);
    }

    match kind {
        tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
            let size = if kind == tar::EntryType::GNUSparse {
                sparse_size.ok_or_else(|| bad("sparse file without a real size".into()))?
            } else {
                entry.size()
            };
            tree.add_file(&path, meta, size, entry, index)
                .map_err(|e| match e {
                    TreeError::Content { source, .. } => classify(layer, source),
                    other => tree_err(other),
                })?;
        }
        tar::EntryType::Directory => tree.add_dir(&path, meta, index).map_err(tree_err)?,
        tar::EntryType::Symlink => {
            let target = link.ok_or_else(|| bad("symlink without a target".into()))?;
            if target.is_empty() {
                return Err(bad("symlink with an empty target".into()));
            }
            tree.add_symlink(&path, &target, meta, index)
                .map_err(tree_err)?;
        }
        tar::EntryType::Link => {
            let target = link.ok_or_else(|| bad("hard link without a target".into()))?;
            tree.add_hardlink(&path, &target, index).map_err(tree_err)?;
        }
        tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
            tracing::warn!(layer, entry = %show(&path), kind = ?kind, "skipping special file");
            return Ok(false);
        }
        tar::EntryType::XGlobalHeader | tar::EntryType::XHeader => return Ok(false),
        other => {
            tracing::warn!(layer, entry = %show(&path), kind = ?other, "skipping entry of unsupported type");
            return Ok(false);
        }
    }
    Ok(true)
}
