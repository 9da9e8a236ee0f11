//! The enclave console: init's stdout and stderr, captured by the monitor into a bounded file.
//!
//! [`ConsoleLog`] appends to `console.log` and, once it reaches [`CONSOLE_CAP`], renames it to
//! `console.log.1` (replacing the previous one) and starts a new file, so an enclave can never
//! use more than twice the cap of host disk. [`follow`] streams the file to a writer, following
//! rotations, until a stop condition holds.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Size at which the console file is rotated.
pub const CONSOLE_CAP: u64 = 1024 * 1024;
/// How many trailing bytes of the console a boot failure quotes.
pub const TAIL_BYTES: u64 = 2048;

/// A bounded, rotating console file.
#[derive(Debug)]
pub struct ConsoleLog {
    path: PathBuf,
    file: File,
    written: u64,
    cap: u64,
}

impl ConsoleLog {
    /// Creates (truncates) the console file at `path`.
    pub fn create(path: &Path) -> std::io::Result<Self> {
        Self::with_cap(path, CONSOLE_CAP)
    }

    /// Like [`ConsoleLog::create`] with an explicit cap (tests).
    pub fn with_cap(path: &Path, cap: u64) -> std::io::Result<Self> {
        let file = File::create(path)?;
        Ok(Self {
            path: path.to_owned(),
            file,
            written: 0,
            cap: cap.max(1),
        })
    }

    /// Appends bytes, rotating when the cap is reached. Errors are reported but never leave the
    /// file larger than the cap.
    pub fn append(&mut self, mut data: &[u8]) -> std::io::Result<()> {
        while !data.is_empty() {
            // Past a 32-bit address space, the room is never the limit.
            let room = usize::try_from(self.cap.saturating_sub(self.written)).unwrap_or(usize::MAX);
            if room == 0 {
                self.rotate()?;
                continue;
            }
            let n = room.min(data.len());
            self.file.write_all(&data[..n])?;
            self.written += n as u64;
            data = &data[n..];
        }
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        let mut old = self.path.clone().into_os_string();
        old.push(".1");
        std::fs::rename(&self.path, &old)?;
        self.file = File::create(&self.path)?;
        self.written = 0;
        Ok(())
    }

    /// Copies everything from `reader` into the log until EOF.
    pub fn pump(&mut self, mut reader: impl Read) -> std::io::Result<()> {
        let mut buf = [0u8; 8192];
        loop {
            match reader.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => self.append(&buf[..n])?,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// The last `max` bytes of the console at `path`, lossily decoded.
pub fn tail(path: &Path, max: u64) -> String {
    let Ok(mut f) = File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map_or(0, |m| m.len());
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(max)));
    let mut buf = Vec::new();
    let _ = f.take(max).read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

/// Streams the console at `path` into `out`, following rotations, until `stop()` is true (checked
/// between reads, after draining what is there) or `timeout` passes without new output.
pub fn follow(
    path: &Path,
    out: &mut dyn Write,
    stop: &dyn Fn() -> bool,
    timeout: Option<Duration>,
) -> std::io::Result<()> {
    let mut file = File::open(path)?;
    let mut ino = file.metadata()?.ino();
    let mut last_data = Instant::now();
    let mut buf = [0u8; 8192];
    loop {
        let n = file.read(&mut buf)?;
        if n > 0 {
            out.write_all(&buf[..n])?;
            last_data = Instant::now();
            continue;
        }
        out.flush()?;
        // Rotated: the path now names a new file; finish the old one (done above) and switch.
        if let Ok(meta) = std::fs::metadata(path) {
            if meta.ino() != ino {
                file = File::open(path)?;
                ino = file.metadata()?.ino();
                continue;
            }
        }
        if stop() {
            return Ok(());
        }
        if timeout.is_some_and(|t| last_data.elapsed() >= t) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_is_bounded_and_followable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let mut log = ConsoleLog::with_cap(&path, 100).unwrap();
        for _ in 0..50 {
            log.append(&[b'x'; 37]).unwrap();
        }
        let size = |p: &Path| std::fs::metadata(p).unwrap().len();
        assert!(size(&path) <= 100);
        assert_eq!(size(&dir.path().join("console.log.1")), 100);
        log.append(b"END").unwrap();
        assert!(tail(&path, 3).ends_with("END"));
        let mut out = Vec::new();
        follow(&path, &mut out, &|| true, None).unwrap();
        assert!(out.ends_with(b"END"));
    }
}
