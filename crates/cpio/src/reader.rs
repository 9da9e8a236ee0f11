//! The bounded streaming newc reader.
//!
//! Input is untrusted. The reader never allocates more than a name or a symlink target (both
//! capped by [`ReaderLimits`]) plus fixed buffers, never slices before checking a length, and
//! reports every malformation as a [`ReadError`] naming the field and the offset.
//!
//! Layout accepted (what the Linux initramfs unpacker accepts, minus the rarely used formats):
//! one or more newc archives, each ending with `TRAILER!!!`, optionally separated by zero bytes,
//! each segment either plain or gzip-compressed (detected by the `1f 8b` magic). A gzip segment
//! may itself hold several archives. Offsets in errors are relative to the current segment's
//! (decompressed) bytes. The trailer is consumed internally and never returned as an entry.

use crate::format::{
    pad4, FileKind, RawHeader, CRC_MAGIC, FIELD_NAMES, HEADER_LEN, NEWC_MAGIC, ODC_MAGIC,
    PERM_MASK, TRAILER_NAME,
};
use flate2::bufread::GzDecoder;
use std::io::{self, BufRead, BufReader, Read};

/// Caps applied while reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReaderLimits {
    /// Largest `namesize` field accepted (bytes, including the NUL).
    pub max_name_size: u32,
    /// Largest data size of one entry.
    pub max_file_size: u64,
    /// Most entries (trailers not counted) in the whole input.
    pub max_entries: u64,
    /// Most zero bytes skipped between two archives.
    pub max_padding: u64,
    /// Most bytes (after decompression) read in total: bounds work on a decompression bomb.
    pub max_total_bytes: u64,
}

/// Default cap on `namesize`: `PATH_MAX`.
pub const DEFAULT_MAX_NAME_SIZE: u32 = 4096;
/// Default cap on a symlink target's length (`PATH_MAX` - 1); not configurable.
pub const MAX_SYMLINK_TARGET: u32 = 4095;
/// Default cap on entries.
pub const DEFAULT_MAX_ENTRIES: u64 = 1_000_000;
/// Default cap on inter-archive zero padding.
pub const DEFAULT_MAX_PADDING: u64 = 1 << 20;
/// Default cap on total decompressed bytes (64 GiB).
pub const DEFAULT_MAX_TOTAL_BYTES: u64 = 64 << 30;

impl Default for ReaderLimits {
    fn default() -> Self {
        Self {
            max_name_size: DEFAULT_MAX_NAME_SIZE,
            max_file_size: u64::from(u32::MAX),
            max_entries: DEFAULT_MAX_ENTRIES,
            max_padding: DEFAULT_MAX_PADDING,
            max_total_bytes: DEFAULT_MAX_TOTAL_BYTES,
        }
    }
}

/// Errors from [`CpioReader`].
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The underlying reader or the gzip decoder failed.
    #[error("cannot read the archive")]
    Io(#[source] io::Error),
    /// The input ended in the middle of something.
    #[error("archive truncated at offset {offset} (inside {what})")]
    Truncated {
        /// Offset where more bytes were expected.
        offset: u64,
        /// What was being read.
        what: &'static str,
    },
    /// The input ended after entries but before the `TRAILER!!!` entry.
    #[error("archive ends at offset {offset} without a TRAILER!!! entry")]
    MissingTrailer {
        /// Offset of the end.
        offset: u64,
    },
    /// A header did not start with `070701`.
    #[error("bad magic {found:02x?} at offset {offset} (expected \"070701\")")]
    BadMagic {
        /// Offset of the header.
        offset: u64,
        /// The bytes found.
        found: [u8; 6],
    },
    /// A cpio format other than newc.
    #[error("unsupported cpio format {format} at offset {offset} (only newc 070701 is read)")]
    UnsupportedFormat {
        /// Offset of the header.
        offset: u64,
        /// Format name.
        format: &'static str,
    },
    /// The input is compressed with something other than gzip.
    #[error("input compressed with {format}; only gzip is supported")]
    UnsupportedCompression {
        /// Compression name.
        format: &'static str,
    },
    /// A header field is not exactly 8 hex digits.
    #[error("header at offset {offset}: field {field} is not 8 hex digits")]
    BadField {
        /// Offset of the header.
        offset: u64,
        /// Field name.
        field: &'static str,
    },
    /// The `check` field is not 0, as newc requires.
    #[error("header at offset {offset}: check field is {value:#x}, newc requires 0")]
    NonZeroCheck {
        /// Offset of the header.
        offset: u64,
        /// Value found.
        value: u32,
    },
    /// `namesize` is 0, 1 or over the limit.
    #[error("header at offset {offset}: name size {size} outside 2..={max}")]
    NameSize {
        /// Offset of the header.
        offset: u64,
        /// Value found.
        size: u32,
        /// Limit.
        max: u32,
    },
    /// The name is not NUL-terminated or contains a NUL before its end.
    #[error("header at offset {offset}: name is not a NUL-terminated string")]
    BadName {
        /// Offset of the header.
        offset: u64,
    },
    /// The mode's type bits name no file type.
    #[error("entry {name:?}: unknown file type in mode {mode:#o}")]
    UnknownType {
        /// Entry name.
        name: String,
        /// The mode.
        mode: u32,
    },
    /// The data size is over the limit.
    #[error("entry {name:?}: size {size} exceeds the limit of {max} bytes")]
    FileTooLarge {
        /// Entry name.
        name: String,
        /// Size in the header.
        size: u64,
        /// Limit.
        max: u64,
    },
    /// An entry that carries no data (directory, device, FIFO, socket, trailer) has a size.
    #[error("entry {name:?} of kind {kind} has {size} bytes of data; it should have none")]
    UnexpectedData {
        /// Entry name.
        name: String,
        /// Kind, in words.
        kind: &'static str,
        /// Size in the header.
        size: u64,
    },
    /// A symlink's target is empty or too long.
    #[error("symlink {name:?}: target length {size} outside 1..={MAX_SYMLINK_TARGET}")]
    SymlinkTarget {
        /// Entry name.
        name: String,
        /// Target length.
        size: u64,
    },
    /// More entries than [`ReaderLimits::max_entries`].
    #[error("more than {max} entries")]
    TooManyEntries {
        /// Limit.
        max: u64,
    },
    /// More zero padding between archives than [`ReaderLimits::max_padding`].
    #[error("more than {max} bytes of zero padding between archives")]
    TooMuchPadding {
        /// Limit.
        max: u64,
    },
    /// More bytes than [`ReaderLimits::max_total_bytes`].
    #[error("archive larger than {max} bytes (decompressed)")]
    TooLarge {
        /// Limit.
        max: u64,
    },
}

/// One archive entry (the trailer is never returned).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The name exactly as stored, without the terminating NUL. Not sanitised.
    pub name: Vec<u8>,
    /// Inode number (shared by hard links).
    pub ino: u32,
    /// Type and permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Link count.
    pub nlink: u32,
    /// Modification time.
    pub mtime: u32,
    /// Data size in bytes (0 for all but the last link of a hard-linked file).
    pub size: u64,
    /// File type.
    pub kind: FileKind,
    /// Device of the file (major).
    pub devmajor: u32,
    /// Device of the file (minor).
    pub devminor: u32,
    /// Device number of a device node (major).
    pub rdevmajor: u32,
    /// Device number of a device node (minor).
    pub rdevminor: u32,
    /// Target of a symlink (its data, read eagerly; at most 4095 bytes).
    pub symlink_target: Option<Vec<u8>>,
}

impl Entry {
    /// The name as UTF-8, if it is.
    pub fn name_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.name).ok()
    }

    /// Permission bits (including setuid, setgid, sticky).
    pub fn permissions(&self) -> u32 {
        self.mode & PERM_MASK
    }
}

/// Where bytes come from: the raw input, or a gzip member inside it.
enum Source<R: Read> {
    Raw(BufReader<R>),
    Gzip(BufReader<GzDecoder<BufReader<R>>>),
    /// Only while switching between the two.
    Switching,
}

impl<R: Read> Source<R> {
    fn buf(&mut self) -> io::Result<&[u8]> {
        match self {
            Source::Raw(r) => r.fill_buf(),
            Source::Gzip(r) => r.fill_buf(),
            Source::Switching => Ok(&[]),
        }
    }

    fn consume(&mut self, n: usize) {
        match self {
            Source::Raw(r) => r.consume(n),
            Source::Gzip(r) => r.consume(n),
            Source::Switching => {}
        }
    }

    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        match self {
            Source::Raw(r) => r.read(out),
            Source::Gzip(r) => r.read(out),
            Source::Switching => Ok(0),
        }
    }
}

const BUF_SIZE: usize = 64 * 1024;

/// Reads entries from a newc archive (see the module docs). Use [`CpioReader::next_entry`] to
/// step through entries and [`CpioReader::data`] to read the current entry's content; content
/// not read is skipped by the next call to `next_entry`.
pub struct CpioReader<R: Read> {
    src: Source<R>,
    limits: ReaderLimits,
    /// Bytes consumed in the current segment (decompressed bytes for gzip).
    offset: u64,
    /// Offset where the current archive started (alignment is relative to it).
    archive_start: u64,
    /// Bytes consumed in total across all segments.
    total: u64,
    /// A header was read and no trailer yet in the current archive.
    in_archive: bool,
    /// Data bytes of the current entry not read yet.
    data_left: u64,
    /// Padding after the current entry's data.
    data_pad: u64,
    entries: u64,
    done: bool,
}

impl<R: Read> std::fmt::Debug for CpioReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpioReader")
            .field("offset", &self.offset)
            .field("entries", &self.entries)
            .finish_non_exhaustive()
    }
}

impl<R: Read> CpioReader<R> {
    /// A reader with [`ReaderLimits::default`].
    pub fn new(input: R) -> Self {
        Self::with_limits(input, ReaderLimits::default())
    }

    /// A reader with explicit limits.
    pub fn with_limits(input: R, limits: ReaderLimits) -> Self {
        Self {
            src: Source::Raw(BufReader::with_capacity(BUF_SIZE, input)),
            limits,
            offset: 0,
            archive_start: 0,
            total: 0,
            in_archive: false,
            data_left: 0,
            data_pad: 0,
            entries: 0,
            done: false,
        }
    }

    fn account(&mut self, n: usize) -> Result<(), ReadError> {
        self.offset += n as u64;
        self.total += n as u64;
        if self.total > self.limits.max_total_bytes {
            return Err(ReadError::TooLarge {
                max: self.limits.max_total_bytes,
            });
        }
        Ok(())
    }

    /// Reads exactly `out.len()` bytes; `Ok(false)` if the segment ended before the first byte.
    fn read_exact_or_eof(&mut self, out: &mut [u8], what: &'static str) -> Result<bool, ReadError> {
        let mut got = 0;
        while got < out.len() {
            let n = match self.src.read(&mut out[got..]) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ReadError::Io(e)),
            };
            if n == 0 {
                if got == 0 {
                    return Ok(false);
                }
                return Err(ReadError::Truncated {
                    offset: self.offset,
                    what,
                });
            }
            got += n;
            self.account(n)?;
        }
        Ok(true)
    }

    fn read_exact(&mut self, out: &mut [u8], what: &'static str) -> Result<(), ReadError> {
        if out.is_empty() || self.read_exact_or_eof(out, what)? {
            Ok(())
        } else {
            Err(ReadError::Truncated {
                offset: self.offset,
                what,
            })
        }
    }

    fn skip(&mut self, mut n: u64, what: &'static str) -> Result<(), ReadError> {
        let mut scratch = [0u8; 4096];
        while n > 0 {
            let k = usize::try_from(n).map_or(scratch.len(), |n| n.min(scratch.len()));
            self.read_exact(&mut scratch[..k], what)?;
            n -= k as u64;
        }
        Ok(())
    }

    /// Between archives: skips zero padding, switches segments, and reports whether a header
    /// follows (`false`: the input is exhausted).
    fn find_next_archive(&mut self) -> Result<bool, ReadError> {
        let mut zeros: u64 = 0;
        loop {
            let buf = self.src.buf().map_err(ReadError::Io)?;
            if buf.is_empty() {
                match std::mem::replace(&mut self.src, Source::Switching) {
                    Source::Gzip(g) => {
                        // The gzip member is over: continue with the raw input after it.
                        self.src = Source::Raw(g.into_inner().into_inner());
                        self.offset = 0;
                        zeros = 0;
                        continue;
                    }
                    other => {
                        self.src = other;
                        return Ok(false);
                    }
                }
            }
            let n_zero = buf.iter().take_while(|&&b| b == 0).count();
            if n_zero > 0 {
                zeros += n_zero as u64;
                if zeros > self.limits.max_padding {
                    return Err(ReadError::TooMuchPadding {
                        max: self.limits.max_padding,
                    });
                }
                self.src.consume(n_zero);
                self.account(n_zero)?;
                continue;
            }
            let first = buf[0];
            match (&self.src, first) {
                (Source::Raw(_), 0x1f) => {
                    let Source::Raw(raw) = std::mem::replace(&mut self.src, Source::Switching)
                    else {
                        unreachable!("matched Raw above")
                    };
                    self.src =
                        Source::Gzip(BufReader::with_capacity(BUF_SIZE, GzDecoder::new(raw)));
                    self.offset = 0;
                    zeros = 0;
                    continue;
                }
                (_, 0x28) => return Err(ReadError::UnsupportedCompression { format: "zstd" }),
                (_, 0xfd) => return Err(ReadError::UnsupportedCompression { format: "xz" }),
                (_, 0x5d) => return Err(ReadError::UnsupportedCompression { format: "lzma" }),
                (_, 0x42) => return Err(ReadError::UnsupportedCompression { format: "bzip2" }),
                (_, 0x02 | 0x89) => {
                    return Err(ReadError::UnsupportedCompression {
                        format: "lz4 or lzo",
                    })
                }
                _ => {
                    self.archive_start = self.offset;
                    return Ok(true);
                }
            }
        }
    }

    /// Reads one header and its name (with the padding after it), checking the magic, the
    /// fields and the name's size; the name is returned without its NUL.
    fn read_header(&mut self) -> Result<(RawHeader, Vec<u8>), ReadError> {
        let header_offset = self.offset;
        let mut magic = [0u8; 6];
        if !self.read_exact_or_eof(&mut magic, "header")? {
            return Err(ReadError::MissingTrailer {
                offset: self.offset,
            });
        }
        if &magic != NEWC_MAGIC {
            let format = match &magic {
                m if m == CRC_MAGIC => Some("crc (070702)"),
                m if m == ODC_MAGIC => Some("odc (070707)"),
                _ => None,
            };
            return Err(match format {
                Some(format) => ReadError::UnsupportedFormat {
                    offset: header_offset,
                    format,
                },
                None => ReadError::BadMagic {
                    offset: header_offset,
                    found: magic,
                },
            });
        }
        let mut fields = [0u8; HEADER_LEN - 6];
        self.read_exact(&mut fields, "header")?;
        let raw = RawHeader::decode_fields(&fields).map_err(|i| ReadError::BadField {
            offset: header_offset,
            field: FIELD_NAMES[i],
        })?;
        if raw.check != 0 {
            return Err(ReadError::NonZeroCheck {
                offset: header_offset,
                value: raw.check,
            });
        }
        if raw.namesize < 2 || raw.namesize > self.limits.max_name_size {
            return Err(ReadError::NameSize {
                offset: header_offset,
                size: raw.namesize,
                max: self.limits.max_name_size,
            });
        }
        // Bounded by max_name_size, checked above.
        let mut name = vec![0u8; raw.namesize as usize];
        self.read_exact(&mut name, "name")?;
        if name.pop() != Some(0) || name.contains(&0) {
            return Err(ReadError::BadName {
                offset: header_offset,
            });
        }
        let name_pad = pad4(self.offset - self.archive_start);
        self.skip(name_pad, "name padding")?;
        Ok((raw, name))
    }

    /// The kind of the entry of header `raw` named `name`, checking that only files and
    /// symlinks carry data, and no more than the limit.
    fn entry_kind(&self, raw: &RawHeader, name: &[u8]) -> Result<FileKind, ReadError> {
        let size = u64::from(raw.filesize);
        let lossy = || String::from_utf8_lossy(name).into_owned();
        let kind = FileKind::from_mode(raw.mode).ok_or_else(|| ReadError::UnknownType {
            name: lossy(),
            mode: raw.mode,
        })?;
        let no_data = match kind {
            FileKind::Dir => Some("directory"),
            FileKind::CharDevice => Some("character device"),
            FileKind::BlockDevice => Some("block device"),
            FileKind::Fifo => Some("fifo"),
            FileKind::Socket => Some("socket"),
            FileKind::File | FileKind::Symlink => None,
        };
        if let Some(kind) = no_data {
            if size != 0 {
                return Err(ReadError::UnexpectedData {
                    name: lossy(),
                    kind,
                    size,
                });
            }
        }
        if size > self.limits.max_file_size {
            return Err(ReadError::FileTooLarge {
                name: lossy(),
                size,
                max: self.limits.max_file_size,
            });
        }
        Ok(kind)
    }

    /// Reads the next entry's header. Unread data of the previous entry is skipped. Returns
    /// `Ok(None)` at the end of the input.
    pub fn next_entry(&mut self) -> Result<Option<Entry>, ReadError> {
        if self.done {
            return Ok(None);
        }
        let left = self.data_left + self.data_pad;
        self.data_left = 0;
        self.data_pad = 0;
        self.skip(left, "entry data")?;
        loop {
            if !self.in_archive {
                if !self.find_next_archive()? {
                    self.done = true;
                    return Ok(None);
                }
                self.in_archive = true;
            }
            let (raw, name) = self.read_header()?;
            let size = u64::from(raw.filesize);
            let lossy = || String::from_utf8_lossy(&name).into_owned();

            if name == TRAILER_NAME.as_bytes() {
                if size != 0 {
                    return Err(ReadError::UnexpectedData {
                        name: lossy(),
                        kind: "trailer",
                        size,
                    });
                }
                self.in_archive = false;
                continue;
            }

            self.entries += 1;
            if self.entries > self.limits.max_entries {
                return Err(ReadError::TooManyEntries {
                    max: self.limits.max_entries,
                });
            }
            let kind = self.entry_kind(&raw, &name)?;
            let data_pad = pad4(size);
            let mut symlink_target = None;
            if kind == FileKind::Symlink {
                if size == 0 || size > u64::from(MAX_SYMLINK_TARGET) {
                    return Err(ReadError::SymlinkTarget {
                        name: lossy(),
                        size,
                    });
                }
                // Bounded by MAX_SYMLINK_TARGET, checked above.
                let mut target = vec![0u8; usize::try_from(size).unwrap_or(0)];
                self.read_exact(&mut target, "symlink target")?;
                self.skip(data_pad, "data padding")?;
                symlink_target = Some(target);
            } else {
                self.data_left = size;
                self.data_pad = data_pad;
            }
            return Ok(Some(Entry {
                name,
                ino: raw.ino,
                mode: raw.mode,
                uid: raw.uid,
                gid: raw.gid,
                nlink: raw.nlink,
                mtime: raw.mtime,
                size,
                kind,
                devmajor: raw.devmajor,
                devminor: raw.devminor,
                rdevmajor: raw.rdevmajor,
                rdevminor: raw.rdevminor,
                symlink_target,
            }));
        }
    }

    /// The current entry's data (what [`CpioReader::next_entry`] returned last). Truncation
    /// shows up as an [`io::ErrorKind::UnexpectedEof`] error.
    pub fn data(&mut self) -> EntryData<'_, R> {
        EntryData { reader: self }
    }
}

/// Reads the data of the current entry; see [`CpioReader::data`].
#[derive(Debug)]
pub struct EntryData<'a, R: Read> {
    reader: &'a mut CpioReader<R>,
}

impl<R: Read> Read for EntryData<'_, R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let r = &mut *self.reader;
        if r.data_left == 0 || out.is_empty() {
            return Ok(0);
        }
        let want = usize::try_from(r.data_left).map_or(out.len(), |l| l.min(out.len()));
        let n = r.src.read(&mut out[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                ReadError::Truncated {
                    offset: r.offset,
                    what: "entry data",
                },
            ));
        }
        r.account(n).map_err(io::Error::other)?;
        r.data_left -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::writer::CpioWriter;

    fn sample() -> Vec<u8> {
        let mut w = CpioWriter::new(Vec::new());
        w.dir("d", 0o755, 1, 2).unwrap();
        w.file("d/f", 0o4755, 3, 4, 3, &b"abc"[..]).unwrap();
        w.symlink("d/l", "f").unwrap();
        w.finish().unwrap()
    }

    fn all(bytes: &[u8]) -> Result<Vec<(Entry, Vec<u8>)>, ReadError> {
        let mut r = CpioReader::new(bytes);
        let mut out = Vec::new();
        while let Some(e) = r.next_entry()? {
            let mut data = Vec::new();
            r.data().read_to_end(&mut data).map_err(ReadError::Io)?;
            out.push((e, data));
        }
        Ok(out)
    }

    #[test]
    fn reads_back() {
        let es = all(&sample()).unwrap();
        assert_eq!(es.len(), 3);
        assert_eq!(es[0].0.name, b"d");
        assert_eq!(es[0].0.kind, FileKind::Dir);
        assert_eq!((es[0].0.uid, es[0].0.gid), (1, 2));
        assert_eq!(es[1].0.permissions(), 0o4755);
        assert_eq!(es[1].1, b"abc");
        assert_eq!(es[2].0.symlink_target.as_deref(), Some(&b"f"[..]));
    }

    #[test]
    fn empty_input_has_no_entries() {
        assert!(all(&[]).unwrap().is_empty());
    }

    #[test]
    fn missing_trailer() {
        let s = sample();
        let cut = s.len() - 124;
        assert!(matches!(
            all(&s[..cut]),
            Err(ReadError::MissingTrailer { .. })
        ));
    }

    #[test]
    fn every_truncation_is_an_error() {
        let s = sample();
        for cut in 1..s.len() - 1 {
            // Cutting inside the final trailer's padding can still parse; everything else fails.
            let r = all(&s[..cut]);
            assert!(r.is_err(), "cut at {cut} parsed");
        }
    }

    #[test]
    fn unsupported_formats_and_compressions() {
        let mut s = sample();
        s[5] = b'2';
        assert!(matches!(all(&s), Err(ReadError::UnsupportedFormat { .. })));
        s[5] = b'9';
        assert!(matches!(all(&s), Err(ReadError::BadMagic { .. })));
        assert!(matches!(
            all(&[0x28, 0xb5, 0x2f, 0xfd]),
            Err(ReadError::UnsupportedCompression { format: "zstd" })
        ));
    }

    #[test]
    fn unread_data_is_skipped() {
        let s = sample();
        let mut r = CpioReader::new(&s[..]);
        let mut n = 0;
        while r.next_entry().unwrap().is_some() {
            n += 1;
        }
        assert_eq!(n, 3);
        assert!(r.next_entry().unwrap().is_none());
    }
}
