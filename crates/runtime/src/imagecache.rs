//! Image measurements, cached in the run directory.
//!
//! Measuring an image hashes all of it (SHA-384 for PCR0 and PCR1/PCR2, CRC32), which for a
//! multi-megabyte image is the largest single cost of starting an enclave. The result is kept
//! in `<run>/measurements/<dev>-<inode>.json` together with the image's size, mtime and ctime
//! (nanoseconds), and reused while all of them match the file the monitor has open. A changed
//! file always gets a new ctime (which no system call can set back), so a stale entry is never
//! used for a modified image. Entries are small, read with a size cap, written atomically
//! (temp file and rename) and at most [`MAX_ENTRIES`] are kept. Anything wrong with an entry (unreadable,
//! malformed) just means measuring again.
//!
//! The same key names the image's *unpacked root* ([`unpacked_root`]): its ramdisks unpacked
//! once, in order, into `<run>/image-roots/<dev>-<ino>-<size>-<mtime>-<ctime>/tree`, every file
//! owned by root. The process backend mounts that tree read-only, idmapped to the enclave's
//! host uid, as the lower layer of an overlay whose upper layer lives on the enclave's own
//! tmpfs, instead of copying the ramdisks into a tmpfs on every boot. The directory is
//! root-only (mode 0700), an entry appears only complete (unpacked in a temporary directory,
//! then renamed into place; of concurrent first boots the first rename wins and the others use
//! its tree), a changed file gets a new name (its ctime moved), and an entry is removed only
//! under an exclusive lock on its `lock` file, while every enclave using it holds a shared one:
//! older versions of the same file, and the least recently created entries beyond
//! [`MAX_ROOTS`], go when nothing runs from them.
//!
//! Everything is read from one [`OpenImage`]: the monitor opens the image file once, and the
//! measurement, the signature check, the unpacked root (process) and the boot files (VM) all
//! read that open file with positioned reads ([`ImageCursor`]), never the path again, so an image
//! renamed over the path meanwhile cannot boot under the first one's PCRs. The cache keys come
//! from the same descriptor's `fstat` (taken at open), and readers that copy the image out
//! ([`unpacked_root`], the VM's boot files) compare the key again afterwards
//! ([`OpenImage::check_unchanged`]): an in-place rewrite of the open file moves its ctime, so
//! what was copied is refused rather than booted under measurements of other bytes. (So does
//! a rename over the path, which changes the replaced file's link count: an image replaced in
//! the middle of a start fails that start, with a message saying so, rather than telling the
//! two cases apart by something an in-place writer could forge.)

use crate::rootfs::{RootfsError, Unpacker};
use crate::state::RunDir;
use crate::sys::{self, SysError};
use cloister_eif::{EifError, EifReader, Measurements, Metadata, Pcr};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Largest cache entry read.
const MAX_ENTRY_BYTES: u64 = 4096;
/// Most entries kept; the oldest are removed beyond this.
pub const MAX_ENTRIES: usize = 256;

/// What identifies one version of an image file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileKey {
    /// Device.
    pub dev: u64,
    /// Inode.
    pub ino: u64,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i128,
    /// Status change time, nanoseconds since the epoch.
    pub ctime_ns: i128,
}

impl FileKey {
    /// The key of an open file.
    pub fn of(file: &File) -> std::io::Result<Self> {
        let m = file.metadata()?;
        let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
        Ok(Self {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: ns(m.mtime(), m.mtime_nsec()),
            ctime_ns: ns(m.ctime(), m.ctime_nsec()),
        })
    }
}

/// The image an enclave starts from, opened once: every reader of the image shares this one
/// open file (cheap to clone), so all of them see the bytes that were measured.
#[derive(Debug, Clone)]
pub struct OpenImage {
    file: Arc<File>,
    key: FileKey,
    path: PathBuf,
}

/// The open image changed (was written to) since it was opened.
#[derive(Debug, thiserror::Error)]
#[error(
    "the image {0} was modified or replaced while the enclave was starting (the file that was \
     opened and measured changed since); start the enclave again"
)]
pub struct ImageChanged(pub PathBuf);

impl OpenImage {
    /// Opens the image at `path` (read-only) and takes its key from the open file.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        Self::from_file(File::open(path)?, path)
    }

    /// Wraps an already open image file; `path` is used in messages only.
    pub fn from_file(file: File, path: &Path) -> std::io::Result<Self> {
        let key = FileKey::of(&file)?;
        Ok(Self {
            file: Arc::new(file),
            key,
            path: path.to_owned(),
        })
    }

    /// The key of the file as it was opened.
    pub fn key(&self) -> &FileKey {
        &self.key
    }

    /// The path it was opened from (for messages; never reopened).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The size of the file when it was opened.
    pub fn len(&self) -> u64 {
        self.key.size
    }

    /// True for an empty file.
    pub fn is_empty(&self) -> bool {
        self.key.size == 0
    }

    /// A reader with its own position over the open file.
    pub fn cursor(&self) -> ImageCursor {
        ImageCursor {
            file: self.file.clone(),
            pos: 0,
        }
    }

    /// The validated image, read through a fresh [`ImageCursor`].
    pub fn reader(&self) -> Result<EifReader<ImageCursor>, EifError> {
        EifReader::new(self.cursor())
    }

    /// Fails when the open file no longer has the key it was opened with (it was written to).
    pub fn check_unchanged(&self) -> Result<(), ImageChanged> {
        match FileKey::of(&self.file) {
            Ok(now) if now == self.key => Ok(()),
            _ => Err(ImageChanged(self.path.clone())),
        }
    }
}

/// `Read + Seek` over a shared open file with positioned reads (`pread`), so readers in
/// different threads or processes never move each other's offset.
#[derive(Debug)]
pub struct ImageCursor {
    file: Arc<File>,
    pos: u64,
}

impl Read for ImageCursor {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for ImageCursor {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let base_plus = |base: u64, delta: i64| {
            base.checked_add_signed(delta).ok_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "seek out of range")
            })
        };
        self.pos = match to {
            SeekFrom::Start(p) => p,
            SeekFrom::Current(d) => base_plus(self.pos, d)?,
            SeekFrom::End(d) => base_plus(self.file.metadata()?.len(), d)?,
        };
        Ok(self.pos)
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    key: FileKey,
    pcr0: String,
    pcr1: String,
    pcr2: String,
    pcr8: Option<String>,
}

fn pcr(hex_text: &str) -> Option<Pcr> {
    let mut p = [0u8; 48];
    hex::decode_to_slice(hex_text, &mut p).ok()?;
    Some(p)
}

impl Entry {
    fn measurements(&self) -> Option<Measurements> {
        Some(Measurements {
            pcr0: pcr(&self.pcr0)?,
            pcr1: pcr(&self.pcr1)?,
            pcr2: pcr(&self.pcr2)?,
            pcr8: match &self.pcr8 {
                Some(h) => Some(pcr(h)?),
                None => None,
            },
        })
    }
}

/// An image opened for starting an enclave: its measurements, metadata and size.
#[derive(Debug, Clone)]
pub struct MeasuredImage {
    /// PCR0/1/2/8.
    pub measurements: Measurements,
    /// The metadata section, if any (and valid).
    pub metadata: Option<Metadata>,
    /// File size in bytes.
    pub len: u64,
    /// True when the measurements came from the cache.
    pub cached: bool,
}

fn cache_dir(run: &RunDir) -> PathBuf {
    run.root().join("measurements")
}

fn entry_path(run: &RunDir, key: &FileKey) -> PathBuf {
    cache_dir(run).join(format!("{}-{}.json", key.dev, key.ino))
}

fn read_entry(path: &Path, key: &FileKey) -> Option<Measurements> {
    let mut buf = Vec::new();
    File::open(path)
        .ok()?
        .take(MAX_ENTRY_BYTES)
        .read_to_end(&mut buf)
        .ok()?;
    let entry: Entry = serde_json::from_slice(&buf).ok()?;
    if entry.key != *key {
        return None;
    }
    entry.measurements()
}

fn write_entry(run: &RunDir, key: &FileKey, m: &Measurements) -> std::io::Result<()> {
    let dir = cache_dir(run);
    std::fs::create_dir_all(&dir)?;
    let entry = Entry {
        key: *key,
        pcr0: m.pcr0_hex(),
        pcr1: m.pcr1_hex(),
        pcr2: m.pcr2_hex(),
        pcr8: m.pcr8_hex(),
    };
    let path = entry_path(run, key);
    let tmp = dir.join(format!(
        ".{}-{}.{}.tmp",
        key.dev,
        key.ino,
        std::process::id()
    ));
    std::fs::write(
        &tmp,
        serde_json::to_vec(&entry).map_err(std::io::Error::other)?,
    )?;
    std::fs::rename(&tmp, &path)?;
    prune(&dir);
    Ok(())
}

/// Keeps at most [`MAX_ENTRIES`] entries, removing the least recently written.
fn prune(dir: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<(std::time::SystemTime, PathBuf)> = rd
        .flatten()
        .filter_map(|e| {
            let m = e.metadata().ok()?;
            Some((m.modified().ok()?, e.path()))
        })
        .collect();
    if entries.len() <= MAX_ENTRIES {
        return;
    }
    entries.sort();
    let excess = entries.len() - MAX_ENTRIES;
    for (_, p) in entries.into_iter().take(excess) {
        let _ = std::fs::remove_file(p);
    }
}

/// Opens and validates the image at `path` and returns its measurements (see
/// [`measure_image`]). Only for callers that read nothing else of the image afterwards.
pub fn measure(run: &RunDir, path: &Path) -> Result<MeasuredImage, EifError> {
    let image = OpenImage::open(path).map_err(EifError::io("cannot open the image"))?;
    measure_image(run, &image)
}

/// Validates the open image and returns its measurements, from the cache when this version of
/// the file (its key, from the open file) was measured before (and measuring it, then caching
/// the result, otherwise).
pub fn measure_image(run: &RunDir, image: &OpenImage) -> Result<MeasuredImage, EifError> {
    let key = *image.key();
    let mut eif = image.reader()?;
    let metadata = eif.metadata().ok().flatten();
    let len = eif.file_len();
    if let Some(measurements) = read_entry(&entry_path(run, &key), &key) {
        return Ok(MeasuredImage {
            measurements,
            metadata,
            len,
            cached: true,
        });
    }
    let measurements = eif.measure()?;
    if let Err(e) = write_entry(run, &key, &measurements) {
        tracing::debug!(error = %e, "cannot cache the image's measurements");
    }
    Ok(MeasuredImage {
        measurements,
        metadata,
        len,
        cached: false,
    })
}

/// Why a signed image is refused at run time.
#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    /// The signature section cannot be read or parsed.
    #[error("the image's signature section is invalid")]
    Unreadable(#[source] EifError),
    /// The signature does not verify with the certificate's key or does not sign this PCR0.
    #[error("the image's signature does not verify")]
    Invalid(#[source] EifError),
    /// The signing certificate's validity period does not include the current time.
    #[error("the image's signing certificate is {state} (valid from {not_before} to {not_after})")]
    CertificateNotValid {
        /// `expired` or `not yet valid`.
        state: &'static str,
        /// Start of validity.
        not_before: String,
        /// End of validity.
        not_after: String,
    },
}

/// Checks the signature of the open image, if it has one, against its PCR0 (`measured`, from
/// the same open file) and the signing certificate's validity at `now_unix` (seconds). An
/// unsigned image passes with `None`.
pub fn check_signature(
    image: &OpenImage,
    measured: &Measurements,
    now_unix: u64,
) -> Result<Option<cloister_eif::VerifiedSignature>, SignatureError> {
    let mut eif = image.reader().map_err(SignatureError::Unreadable)?;
    let Some(signature) = eif.signature().map_err(SignatureError::Unreadable)? else {
        return Ok(None);
    };
    let verified = signature
        .verify(&measured.pcr0)
        .map_err(SignatureError::Invalid)?;
    let info = signature.certificate.info();
    if !info.is_valid_at(now_unix) {
        return Err(SignatureError::CertificateNotValid {
            state: if now_unix < info.not_before_unix {
                "not yet valid"
            } else {
                "expired"
            },
            not_before: info.not_before,
            not_after: info.not_after,
        });
    }
    Ok(Some(verified))
}

/// Directory of unpacked image roots, under the run directory.
pub const ROOTS_DIR: &str = "image-roots";
/// Most unpacked roots kept (unused ones beyond this are removed, oldest first).
pub const MAX_ROOTS: usize = 16;
/// The lock file of a root entry (shared while an enclave runs from it).
const ROOT_LOCK: &str = "lock";
/// The unpacked tree of a root entry.
const ROOT_TREE: &str = "tree";
/// Times a root is looked up again when a concurrent pruner removed it under us.
const ROOT_ATTEMPTS: usize = 4;
/// Age after which a temporary directory without a lock is considered abandoned.
const STALE_TEMP: Duration = Duration::from_secs(600);
/// Age before which a temporary directory is never touched (its creator may not have locked it
/// yet).
const TEMP_GRACE: Duration = Duration::from_secs(5);

/// Errors of the unpacked-root cache.
#[derive(Debug, thiserror::Error)]
pub enum RootCacheError {
    /// The image is not a valid EIF.
    #[error("cannot read the image's ramdisks")]
    Eif(#[source] EifError),
    /// A ramdisk cannot be unpacked.
    #[error("cannot unpack the image")]
    Unpack(#[source] RootfsError),
    /// A cache directory or file cannot be created or examined.
    #[error("cannot prepare {0}")]
    Io(PathBuf, #[source] std::io::Error),
    /// The cache directory is not a root-only directory owned by this user.
    #[error("{0} is not a private directory owned by this user; refusing to use it")]
    NotPrivate(PathBuf),
    /// Locking an entry failed.
    #[error("cannot lock {0}")]
    Lock(PathBuf, #[source] SysError),
    /// The open file changed since it was opened and measured (nothing was cached).
    #[error(
        "the image {0} was modified or replaced while the enclave was starting; start the \
         enclave again"
    )]
    Changed(PathBuf),
    /// Concurrent pruning kept removing the entry.
    #[error("the unpacked root of {0} kept being removed concurrently")]
    Contended(PathBuf),
}

/// An unpacked image root in use: the shared lock keeps it from being removed until this is
/// dropped.
#[derive(Debug)]
pub struct CachedRoot {
    tree: PathBuf,
    _lock: File,
    created: bool,
}

impl CachedRoot {
    /// The unpacked tree (owned by root, to be mounted read-only).
    pub fn tree(&self) -> &Path {
        &self.tree
    }

    /// True when this call unpacked it (a cache miss).
    pub fn created(&self) -> bool {
        self.created
    }
}

fn root_name(key: &FileKey) -> String {
    format!(
        "{}-{}-{}-{}-{}",
        key.dev, key.ino, key.size, key.mtime_ns, key.ctime_ns
    )
}

/// Creates `dir` (mode 0700) if needed and checks that it is a real directory owned by the
/// effective user and closed to everyone else.
fn ensure_private_dir(dir: &Path) -> Result<(), RootCacheError> {
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent).map_err(|e| RootCacheError::Io(parent.into(), e))?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(RootCacheError::Io(dir.into(), e)),
    }
    let m = std::fs::symlink_metadata(dir).map_err(|e| RootCacheError::Io(dir.into(), e))?;
    if !m.is_dir() || m.uid() != nix::unistd::geteuid().as_raw() || m.mode() & 0o077 != 0 {
        return Err(RootCacheError::NotPrivate(dir.into()));
    }
    Ok(())
}

/// Returns the unpacked root of the open `image`, unpacking it first when this version of the
/// file (its key, from the open file) has none yet. The result holds a shared lock on the
/// entry.
pub fn unpacked_root(run: &RunDir, image: &OpenImage) -> Result<CachedRoot, RootCacheError> {
    unpacked_root_owned(run, image, TREE_OWNER)
}

/// Owner (uid, gid) of every file of a cached tree: root, which the enclave's idmapped mount
/// maps to the enclave's own host uid.
const TREE_OWNER: (u32, u32) = (0, 0);

/// [`unpacked_root`] with the files of a new tree owned by `owner` (unit tests that run
/// without root pass their own ids).
fn unpacked_root_owned(
    run: &RunDir,
    image: &OpenImage,
    owner: (u32, u32),
) -> Result<CachedRoot, RootCacheError> {
    let roots = run.root().join(ROOTS_DIR);
    ensure_private_dir(&roots)?;
    // The open file must still be the version it was opened (and measured) as: a cached
    // tree is looked up by that version's key.
    image
        .check_unchanged()
        .map_err(|_| RootCacheError::Changed(image.path().into()))?;
    let key = *image.key();
    let name = root_name(&key);
    let mut created = false;
    for _ in 0..ROOT_ATTEMPTS {
        if let Some(mut root) = take(&roots, &name)? {
            root.created = created;
            return Ok(root);
        }
        created = build(&roots, &name, image, owner)?;
        if created {
            prune_roots(&roots, &name, &key);
        }
    }
    Err(RootCacheError::Contended(image.path().into()))
}

/// Takes a shared lock on entry `name`; `None` when there is no (complete) entry.
fn take(roots: &Path, name: &str) -> Result<Option<CachedRoot>, RootCacheError> {
    let entry = roots.join(name);
    let lock_path = entry.join(ROOT_LOCK);
    let lock = match File::open(&lock_path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(RootCacheError::Io(lock_path, e)),
    };
    sys::lock_shared(&lock).map_err(|e| RootCacheError::Lock(lock_path.clone(), e))?;
    // A pruner may have removed the entry between our open and our lock: the lock file at the
    // path must still be the one we hold.
    let held = lock
        .metadata()
        .map_err(|e| RootCacheError::Io(lock_path.clone(), e))?;
    match std::fs::symlink_metadata(&lock_path) {
        Ok(m) if m.dev() == held.dev() && m.ino() == held.ino() => Ok(Some(CachedRoot {
            tree: entry.join(ROOT_TREE),
            _lock: lock,
            created: false,
        })),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(RootCacheError::Io(lock_path, e)),
    }
}

fn unique_suffix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{}-{nanos}", std::process::id())
}

/// Unpacks `file` into a temporary directory and renames it to `name`. Returns `true` when
/// this call published the entry, `false` when a concurrent call did first.
fn build(
    roots: &Path,
    name: &str,
    image: &OpenImage,
    owner: (u32, u32),
) -> Result<bool, RootCacheError> {
    let tmp = roots.join(format!(".tmp-{}", unique_suffix()));
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |e| RootCacheError::Io(p, e)
    };
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&tmp)
        .map_err(io(&tmp))?;
    let result = (|| {
        // Held exclusively while unpacking, so a pruner never removes a live temporary.
        let lock_path = tmp.join(ROOT_LOCK);
        let lock = File::create(&lock_path).map_err(io(&lock_path))?;
        let _ = sys::try_lock_exclusive(&lock);
        let tree = tmp.join(ROOT_TREE);
        std::fs::DirBuilder::new()
            .mode(0o755)
            .create(&tree)
            .map_err(io(&tree))?;
        std::fs::set_permissions(&tree, std::fs::Permissions::from_mode(0o755))
            .map_err(io(&tree))?;
        let dir = sys::open_dir(&tree)
            .map_err(|e| RootCacheError::Io(tree.clone(), std::io::Error::from(e.errno)))?;
        let mut unpacker = Unpacker::new(dir, owner.0, owner.1);
        let mut eif = image.reader().map_err(RootCacheError::Eif)?;
        for (n, index) in eif.ramdisks().into_iter().enumerate() {
            let reader = eif.section_reader(index).map_err(RootCacheError::Eif)?;
            unpacker.unpack(n, reader).map_err(RootCacheError::Unpack)?;
        }
        image
            .check_unchanged()
            .map_err(|_| RootCacheError::Changed(image.path().into()))?;
        match std::fs::rename(&tmp, roots.join(name)) {
            Ok(()) => Ok(true),
            Err(e)
                if matches!(
                    nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(0)),
                    nix::errno::Errno::ENOTEMPTY | nix::errno::Errno::EEXIST
                ) =>
            {
                Ok(false)
            }
            Err(e) => Err(RootCacheError::Io(roots.join(name), e)),
        }
    })();
    if !matches!(result, Ok(true)) {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

/// Removes, when no enclave holds them: other versions of the same file, entries beyond
/// [`MAX_ROOTS`] (oldest first), abandoned temporaries and leftovers of interrupted removals.
fn prune_roots(roots: &Path, keep: &str, key: &FileKey) {
    let Ok(rd) = std::fs::read_dir(roots) else {
        return;
    };
    let same_file = format!("{}-{}-", key.dev, key.ino);
    let mut others: Vec<(std::time::SystemTime, PathBuf)> = Vec::new();
    let mut doomed: Vec<PathBuf> = Vec::new();
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let path = e.path();
        let Ok(meta) = e.metadata() else { continue };
        let age = meta
            .modified()
            .ok()
            .and_then(|m| m.elapsed().ok())
            .unwrap_or_default();
        if name.starts_with(".trash-") {
            let _ = std::fs::remove_dir_all(&path);
        } else if name.starts_with(".tmp-") {
            if age > STALE_TEMP || (age > TEMP_GRACE && path.join(ROOT_LOCK).exists()) {
                doomed.push(path);
            }
        } else if name == keep {
        } else if name.starts_with(&same_file) {
            doomed.push(path);
        } else {
            others.push((meta.modified().unwrap_or(std::time::UNIX_EPOCH), path));
        }
    }
    for path in doomed {
        remove_unused(roots, &path);
    }
    // Oldest first; entries in use are skipped (and counted against the limit).
    others.sort();
    let mut excess = (others.len() + 1).saturating_sub(MAX_ROOTS);
    for (_, path) in others {
        if excess == 0 {
            break;
        }
        if remove_unused(roots, &path) {
            excess -= 1;
        }
    }
}

/// Removes entry `path` if nobody holds its lock (renamed aside first, so nobody new takes it).
/// Returns `true` when it was removed.
fn remove_unused(roots: &Path, path: &Path) -> bool {
    let lock = match File::open(path.join(ROOT_LOCK)) {
        Ok(f) => Some(f),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(_) => return false,
    };
    if let Some(l) = &lock {
        if !matches!(sys::try_lock_exclusive(l), Ok(true)) {
            return false;
        }
    }
    let trash = roots.join(format!(".trash-{}", unique_suffix()));
    let removed = std::fs::rename(path, &trash).is_ok();
    if removed {
        let _ = std::fs::remove_dir_all(&trash);
    }
    drop(lock);
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(path: &Path, cmdline: &str) {
        cloister_eif::EifBuilder::new()
            .kernel_bytes(b"kernel".to_vec())
            .cmdline(cmdline)
            .ramdisk_bytes(b"boot ramdisk".to_vec())
            .ramdisk_bytes(b"user ramdisk".to_vec())
            .write_to_path(path)
            .unwrap();
    }

    fn direct(path: &Path) -> Measurements {
        EifReader::open(path).unwrap().measure().unwrap()
    }

    #[test]
    fn cache_hits_only_for_the_same_file_version() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path().join("run"));
        let eif = dir.path().join("a.eif");
        image(&eif, "one");

        let first = measure(&run, &eif).unwrap();
        assert!(!first.cached);
        assert_eq!(first.measurements, direct(&eif));
        let again = measure(&run, &eif).unwrap();
        assert!(again.cached);
        assert_eq!(again.measurements, first.measurements);
        assert_eq!(again.len, std::fs::metadata(&eif).unwrap().len());

        // Rewritten in place with the same size and the old mtime put back: the ctime moved,
        // so it is measured again.
        let mtime = std::fs::metadata(&eif).unwrap().modified().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let mut other = Vec::new();
        let alt = dir.path().join("b.eif");
        image(&alt, "two");
        File::open(&alt).unwrap().read_to_end(&mut other).unwrap();
        let f = std::fs::OpenOptions::new().write(true).open(&eif).unwrap();
        std::io::Write::write_all(&mut &f, &other).unwrap();
        f.set_modified(mtime).unwrap();
        drop(f);
        let changed = measure(&run, &eif).unwrap();
        assert!(!changed.cached);
        assert_eq!(changed.measurements, direct(&alt));
        assert_ne!(changed.measurements, first.measurements);
    }

    #[test]
    fn bad_entries_mean_measuring_again() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path().join("run"));
        let eif = dir.path().join("a.eif");
        image(&eif, "one");
        let m = measure(&run, &eif).unwrap();
        let key = FileKey::of(&File::open(&eif).unwrap()).unwrap();
        let path = entry_path(&run, &key);
        std::fs::write(&path, b"{not json").unwrap();
        let again = measure(&run, &eif).unwrap();
        assert!(!again.cached);
        assert_eq!(again.measurements, m.measurements);
        // A forged entry for another version of the file is ignored.
        let mut entry: Entry = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        entry.key.ctime_ns += 1;
        entry.pcr0 = "00".repeat(48);
        std::fs::write(&path, serde_json::to_vec(&entry).unwrap()).unwrap();
        let third = measure(&run, &eif).unwrap();
        assert!(!third.cached);
        assert_eq!(third.measurements, m.measurements);
    }

    /// An image whose second ramdisk holds `rootfs/a` with `content`.
    fn rooted_image(path: &Path, content: &[u8]) {
        let mut boot = cloister_cpio::CpioWriter::new(Vec::new());
        boot.file("init", 0o755, 0, 0, 4, &b"init"[..]).unwrap();
        let mut user = cloister_cpio::CpioWriter::new(Vec::new());
        user.dir("rootfs", 0o755, 0, 0).unwrap();
        user.file("rootfs/a", 0o644, 0, 0, content.len() as u64, content)
            .unwrap();
        cloister_eif::EifBuilder::new()
            .kernel_bytes(b"kernel".to_vec())
            .cmdline("x")
            .ramdisk_bytes(boot.finish().unwrap())
            .ramdisk_bytes(user.finish().unwrap())
            .write_to_path(path)
            .unwrap();
    }

    /// The owner of unpacked trees in these tests: root's (as the runtime's) where the test
    /// runs as root, else the test's own ids (only root may give files away).
    fn test_owner() -> (u32, u32) {
        if nix::unistd::geteuid().is_root() {
            TREE_OWNER
        } else {
            (
                nix::unistd::getuid().as_raw(),
                nix::unistd::getgid().as_raw(),
            )
        }
    }

    /// [`super::unpacked_root`], with [`test_owner`] owning new trees.
    fn unpacked_root(run: &RunDir, image: &OpenImage) -> Result<CachedRoot, RootCacheError> {
        unpacked_root_owned(run, image, test_owner())
    }

    fn entries(run: &RunDir) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(run.root().join(ROOTS_DIR))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn unpacked_root_is_reused_and_follows_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path().join("run"));
        let eif = dir.path().join("a.eif");
        rooted_image(&eif, b"one");

        let first = unpacked_root(&run, &OpenImage::open(&eif).unwrap()).unwrap();
        assert!(first.created());
        assert_eq!(
            std::fs::read(first.tree().join("rootfs/a")).unwrap(),
            b"one"
        );
        assert_eq!(std::fs::read(first.tree().join("init")).unwrap(), b"init");
        let meta = std::fs::metadata(first.tree().join("rootfs/a")).unwrap();
        assert_eq!((meta.uid(), meta.gid()), test_owner());
        let roots = std::fs::metadata(run.root().join(ROOTS_DIR)).unwrap();
        assert_eq!(roots.mode() & 0o777, 0o700, "the cache is root-only");
        let again = unpacked_root(&run, &OpenImage::open(&eif).unwrap()).unwrap();
        assert!(!again.created());
        assert_eq!(again.tree(), first.tree());

        // Rewritten in place (same size, old mtime put back): a new entry, from the new bytes.
        let mtime = std::fs::metadata(&eif).unwrap().modified().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let alt = dir.path().join("b.eif");
        rooted_image(&alt, b"two");
        let bytes = std::fs::read(&alt).unwrap();
        let f = std::fs::OpenOptions::new().write(true).open(&eif).unwrap();
        std::io::Write::write_all(&mut &f, &bytes).unwrap();
        f.set_modified(mtime).unwrap();
        drop(f);
        let changed = unpacked_root(&run, &OpenImage::open(&eif).unwrap()).unwrap();
        assert!(changed.created());
        assert_ne!(changed.tree(), first.tree());
        assert_eq!(
            std::fs::read(changed.tree().join("rootfs/a")).unwrap(),
            b"two"
        );
        // The old version is still in use, so it stays ...
        assert_eq!(
            std::fs::read(first.tree().join("rootfs/a")).unwrap(),
            b"one"
        );
        assert_eq!(entries(&run).len(), 2);
        // ... until nothing uses it and the next new version is cached; the version still in
        // use stays.
        let first_tree = first.tree().to_path_buf();
        drop((first, again));
        std::thread::sleep(std::time::Duration::from_millis(20));
        let f = std::fs::OpenOptions::new().write(true).open(&eif).unwrap();
        std::io::Write::write_all(&mut &f, &bytes).unwrap();
        drop(f);
        let third = unpacked_root(&run, &OpenImage::open(&eif).unwrap()).unwrap();
        assert!(third.created());
        assert!(!first_tree.exists());
        assert_eq!(
            std::fs::read(changed.tree().join("rootfs/a")).unwrap(),
            b"two"
        );
        let key = FileKey::of(&File::open(&eif).unwrap()).unwrap();
        let mut expected = vec![
            root_name(&key),
            changed
                .tree()
                .parent()
                .unwrap()
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned(),
        ];
        expected.sort();
        assert_eq!(entries(&run), expected);
    }

    #[test]
    fn concurrent_first_boots_share_one_tree() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path().join("run"));
        let eif = dir.path().join("a.eif");
        rooted_image(&eif, &vec![7u8; 1 << 20]);
        let n = 6;
        let barrier = std::sync::Barrier::new(n);
        let roots: Vec<CachedRoot> = std::thread::scope(|sc| {
            let handles: Vec<_> = (0..n)
                .map(|_| {
                    sc.spawn(|| {
                        barrier.wait();
                        unpacked_root(&run, &OpenImage::open(&eif).unwrap()).unwrap()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(roots.iter().filter(|r| r.created()).count(), 1);
        assert!(roots.iter().all(|r| r.tree() == roots[0].tree()));
        assert_eq!(
            std::fs::read(roots[0].tree().join("rootfs/a")).unwrap(),
            vec![7u8; 1 << 20]
        );
        // The losers' temporary directories are gone.
        assert_eq!(entries(&run).len(), 1, "{:?}", entries(&run));
    }

    #[test]
    fn unused_and_abandoned_entries_are_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path().join("run"));
        let held_eif = dir.path().join("held.eif");
        rooted_image(&held_eif, b"held");
        let held = unpacked_root(&run, &OpenImage::open(&held_eif).unwrap()).unwrap();
        // An abandoned temporary (its creator died: the lock is free).
        let tmp = run.root().join(ROOTS_DIR).join(".tmp-1-1");
        std::fs::create_dir(&tmp).unwrap();
        std::fs::write(tmp.join(ROOT_LOCK), b"").unwrap();
        let old = std::time::SystemTime::now() - TEMP_GRACE * 2;
        File::open(&tmp).unwrap().set_modified(old).unwrap();
        for i in 0..MAX_ROOTS + 2 {
            let eif = dir.path().join(format!("{i}.eif"));
            rooted_image(&eif, format!("image {i}").as_bytes());
            drop(unpacked_root(&run, &OpenImage::open(&eif).unwrap()).unwrap());
        }
        let names = entries(&run);
        assert_eq!(names.len(), MAX_ROOTS, "{names:?}");
        assert!(names.contains(&root_name(
            &FileKey::of(&File::open(&held_eif).unwrap()).unwrap()
        )));
        assert!(!tmp.exists());
        // The oldest entry survived because an enclave holds it.
        assert_eq!(
            std::fs::read(held.tree().join("rootfs/a")).unwrap(),
            b"held"
        );
    }

    /// The path of `image` is replaced by another valid image (renamed over it) after it was
    /// opened and measured: everything read afterwards is the measured image's.
    #[test]
    fn an_image_renamed_over_the_path_after_it_was_opened_is_never_read() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path().join("run"));
        let eif = dir.path().join("a.eif");
        rooted_image(&eif, b"measured");
        let image = OpenImage::open(&eif).unwrap();
        let measured = measure_image(&run, &image).unwrap();
        assert_eq!(measured.measurements, direct(&eif));

        let other = dir.path().join("b.eif");
        rooted_image(&other, b"swapped in");
        let swapped = direct(&other);
        std::fs::rename(&other, &eif).unwrap();
        assert_ne!(direct(&eif), measured.measurements);

        // Measured again from the open file: the same PCRs (from the cache, keyed by the open
        // file's identity, and without it).
        let again = measure_image(&run, &image).unwrap();
        assert_eq!(again.measurements, measured.measurements);
        std::fs::remove_dir_all(run.root().join("measurements")).unwrap();
        let fresh = measure_image(&run, &image).unwrap();
        assert!(!fresh.cached);
        assert_eq!(fresh.measurements, measured.measurements);
        assert_ne!(fresh.measurements, swapped);
        // Unpacked before the replacement: the measured image's tree, under the measured
        // version's key.
        let image2 = {
            let p = dir.path().join("c.eif");
            rooted_image(&p, b"second");
            OpenImage::open(&p).unwrap()
        };
        let root = unpacked_root(&run, &image2).unwrap();
        assert_eq!(
            root.tree().parent().unwrap().file_name().unwrap(),
            root_name(image2.key()).as_str()
        );
        assert_eq!(
            std::fs::read(root.tree().join("rootfs/a")).unwrap(),
            b"second"
        );
        // Unpacked after it: the replaced file's status changed (its link count), so nothing
        // is unpacked from it, and certainly not the new file's contents under its key.
        assert!(matches!(
            unpacked_root(&run, &image),
            Err(RootCacheError::Changed(_))
        ));
        assert!(!entries(&run).contains(&root_name(image.key())));
        // The image now at the path gets a root of its own.
        let now = unpacked_root(&run, &OpenImage::open(&eif).unwrap()).unwrap();
        assert_eq!(
            std::fs::read(now.tree().join("rootfs/a")).unwrap(),
            b"swapped in"
        );
    }

    /// The open image itself is rewritten in place after it was opened: nothing is unpacked
    /// from it under the old version's key.
    #[test]
    fn an_image_rewritten_in_place_after_it_was_opened_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path().join("run"));
        let eif = dir.path().join("a.eif");
        rooted_image(&eif, b"one");
        let image = OpenImage::open(&eif).unwrap();
        measure_image(&run, &image).unwrap();
        image.check_unchanged().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let alt = dir.path().join("b.eif");
        rooted_image(&alt, b"two");
        let bytes = std::fs::read(&alt).unwrap();
        let f = std::fs::OpenOptions::new().write(true).open(&eif).unwrap();
        std::io::Write::write_all(&mut &f, &bytes).unwrap();
        drop(f);
        assert!(image.check_unchanged().is_err());
        assert!(matches!(
            unpacked_root(&run, &image),
            Err(RootCacheError::Changed(_))
        ));
    }

    /// Positioned reads: two cursors over one open file keep their own positions.
    #[test]
    fn cursors_have_their_own_positions() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"0123456789").unwrap();
        let image = OpenImage::from_file(File::open(&p).unwrap(), &p).unwrap();
        let (mut a, mut b) = (image.cursor(), image.cursor());
        let mut buf = [0u8; 3];
        a.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"012");
        b.seek(SeekFrom::End(-2)).unwrap();
        b.read_exact(&mut buf[..2]).unwrap();
        assert_eq!(&buf[..2], b"89");
        a.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"345");
        assert!(a.seek(SeekFrom::Current(-10)).is_err());
        assert_eq!(image.len(), 10);
    }

    #[test]
    fn a_cache_directory_open_to_others_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path().join("run"));
        let eif = dir.path().join("a.eif");
        rooted_image(&eif, b"one");
        std::fs::create_dir_all(run.root().join(ROOTS_DIR)).unwrap();
        std::fs::set_permissions(
            run.root().join(ROOTS_DIR),
            std::fs::Permissions::from_mode(0o777),
        )
        .unwrap();
        assert!(matches!(
            unpacked_root(&run, &OpenImage::open(&eif).unwrap()),
            Err(RootCacheError::NotPrivate(_))
        ));
    }
}
