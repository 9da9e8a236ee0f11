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

use crate::state::RunDir;
use cloister_eif::{EifError, EifReader, Measurements, Metadata, Pcr};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

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

/// Opens and validates the image at `path` and returns its measurements, from the cache when
/// the file is unchanged since it was last measured (and measuring it, then caching the
/// result, otherwise).
pub fn measure(run: &RunDir, path: &Path) -> Result<MeasuredImage, EifError> {
    let file = File::open(path).map_err(EifError::io("cannot open the image"))?;
    let key = FileKey::of(&file).ok();
    let mut eif = EifReader::new(file)?;
    let metadata = eif.metadata().ok().flatten();
    let len = eif.file_len();
    if let Some(key) = &key {
        if let Some(measurements) = read_entry(&entry_path(run, key), key) {
            return Ok(MeasuredImage {
                measurements,
                metadata,
                len,
                cached: true,
            });
        }
    }
    let measurements = eif.measure()?;
    if let Some(key) = &key {
        if let Err(e) = write_entry(run, key, &measurements) {
            tracing::debug!(error = %e, "cannot cache the image's measurements");
        }
    }
    Ok(MeasuredImage {
        measurements,
        metadata,
        len,
        cached: false,
    })
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
}
