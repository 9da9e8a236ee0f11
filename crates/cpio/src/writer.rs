//! The deterministic newc writer.
//!
//! Output depends only on the calls made: entries are written in call order, inode numbers are
//! assigned sequentially from 1 (all links of a hard-linked file share one), the modification
//! time is the writer's fixed value ([`CpioWriter::set_mtime`], 0 by default), the device numbers
//! are 0, and only the permission bits of the caller's mode are used (the writer adds the type).
//! Hard links follow the newc convention: every link is an entry with the shared inode number and
//! the full link count, and the data travels with the last one.

use crate::format::{
    pad4, FileKind, RawHeader, HEADER_LEN, PERM_MASK, S_IFDIR, S_IFLNK, S_IFREG, TRAILER_NAME,
};
use std::io::{self, Read, Write};

/// Longest name the writer accepts, in bytes (without the NUL). Linux's initramfs unpacker
/// refuses names of `PATH_MAX` (4096) bytes or more including the NUL.
pub const MAX_NAME_LEN: usize = 4095;
/// Longest symlink target, in bytes (`PATH_MAX` - 1).
pub const MAX_SYMLINK_TARGET_LEN: usize = 4095;
/// Largest file the format can carry (the size field is 32 bits).
pub const MAX_FILE_SIZE: u64 = u32::MAX as u64;

/// Errors from [`CpioWriter`].
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// Writing to the output failed.
    #[error("cannot write the archive")]
    Io(#[source] io::Error),
    /// Reading a file's content from its source failed.
    #[error("cannot read the content of {path:?}")]
    Source {
        /// Entry name.
        path: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The source ended before the announced size.
    #[error("content of {path:?} is {got} bytes, shorter than the announced {expected}")]
    ShortSource {
        /// Entry name.
        path: String,
        /// Announced size.
        expected: u64,
        /// Bytes available.
        got: u64,
    },
    /// The source has more bytes than announced.
    #[error("content of {path:?} is longer than the announced {expected} bytes")]
    LongSource {
        /// Entry name.
        path: String,
        /// Announced size.
        expected: u64,
    },
    /// A name is empty, contains a NUL byte, is the trailer's name, or is too long.
    #[error("invalid entry name {path:?}: {reason}")]
    InvalidName {
        /// The name.
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A symlink target is empty, contains a NUL, or is too long.
    #[error("invalid symlink target for {path:?}: {reason}")]
    InvalidTarget {
        /// The link's name.
        path: String,
        /// What is wrong with the target.
        reason: &'static str,
    },
    /// A file is larger than the format can carry.
    #[error("{path:?} is {size} bytes; newc carries at most {MAX_FILE_SIZE}")]
    FileTooLarge {
        /// Entry name.
        path: String,
        /// Its size.
        size: u64,
    },
    /// A hard-link group was empty or had more links than a link count can hold.
    #[error("invalid hard-link group: {reason}")]
    InvalidLinks {
        /// What is wrong.
        reason: &'static str,
    },
    /// Every inode number has been used.
    #[error("too many entries for 32-bit inode numbers")]
    InodesExhausted,
    /// A device-node kind was requested from [`CpioWriter::node`] for a non-node kind.
    #[error("{kind:?} is not a special-file kind")]
    NotANode {
        /// The kind given.
        kind: FileKind,
    },
}

/// Streams a deterministic newc archive into `W`. Call [`CpioWriter::finish`] to write the
/// trailer; dropping the writer without it leaves a truncated archive.
#[derive(Debug)]
pub struct CpioWriter<W: Write> {
    out: W,
    next_ino: u32,
    mtime: u32,
    written: u64,
}

fn lossy(path: &[u8]) -> String {
    String::from_utf8_lossy(path).into_owned()
}

fn check_name(path: &[u8]) -> Result<(), WriteError> {
    let bad = |reason| {
        Err(WriteError::InvalidName {
            path: lossy(path),
            reason,
        })
    };
    if path.is_empty() {
        return bad("empty");
    }
    if path.contains(&0) {
        return bad("contains a NUL byte");
    }
    if path == TRAILER_NAME.as_bytes() {
        return bad("reserved for the archive trailer");
    }
    if path.len() > MAX_NAME_LEN {
        return bad("longer than 4095 bytes");
    }
    Ok(())
}

impl<W: Write> CpioWriter<W> {
    /// A writer with modification time 0.
    pub fn new(out: W) -> Self {
        Self {
            out,
            next_ino: 1,
            mtime: 0,
            written: 0,
        }
    }

    /// Sets the modification time recorded for entries written from now on (seconds since the
    /// epoch, e.g. `SOURCE_DATE_EPOCH`).
    pub fn set_mtime(&mut self, mtime: u32) {
        self.mtime = mtime;
    }

    /// Bytes written so far.
    pub fn position(&self) -> u64 {
        self.written
    }

    fn alloc_ino(&mut self) -> Result<u32, WriteError> {
        let ino = self.next_ino;
        self.next_ino = self
            .next_ino
            .checked_add(1)
            .ok_or(WriteError::InodesExhausted)?;
        Ok(ino)
    }

    fn put(&mut self, bytes: &[u8]) -> Result<(), WriteError> {
        self.out.write_all(bytes).map_err(WriteError::Io)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> Result<(), WriteError> {
        let n = usize::try_from(pad4(self.written)).unwrap_or(0);
        self.put(&[0u8; 3][..n])
    }

    /// Writes a header and name (with NUL and padding).
    fn header(&mut self, h: RawHeader, name: &[u8]) -> Result<(), WriteError> {
        let h = RawHeader {
            namesize: u32::try_from(name.len() + 1).map_err(|_| WriteError::InvalidName {
                path: String::from_utf8_lossy(name).into_owned(),
                reason: "longer than 4095 bytes",
            })?,
            ..h
        };
        self.put(&h.encode())?;
        self.put(name)?;
        self.put(&[0])?;
        self.pad()
    }

    fn base(&self, ino: u32, mode: u32, uid: u32, gid: u32, nlink: u32) -> RawHeader {
        RawHeader {
            ino,
            mode,
            uid,
            gid,
            nlink,
            mtime: self.mtime,
            ..RawHeader::default()
        }
    }

    /// Writes a directory with link count 2 (a directory without subdirectories).
    pub fn dir(
        &mut self,
        path: impl AsRef<[u8]>,
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> Result<(), WriteError> {
        self.dir_with_nlink(path, mode, uid, gid, 2)
    }

    /// Writes a directory with an explicit link count (2 + number of subdirectories).
    pub fn dir_with_nlink(
        &mut self,
        path: impl AsRef<[u8]>,
        mode: u32,
        uid: u32,
        gid: u32,
        nlink: u32,
    ) -> Result<(), WriteError> {
        let path = path.as_ref();
        check_name(path)?;
        let ino = self.alloc_ino()?;
        let h = self.base(ino, S_IFDIR | (mode & PERM_MASK), uid, gid, nlink);
        self.header(h, path)
    }

    /// Writes a regular file of `size` bytes read from `reader` (exactly `size` bytes are
    /// expected: a shorter or longer source is an error).
    pub fn file<R: Read>(
        &mut self,
        path: impl AsRef<[u8]>,
        mode: u32,
        uid: u32,
        gid: u32,
        size: u64,
        reader: R,
    ) -> Result<(), WriteError> {
        self.hardlinks(&[path.as_ref()], mode, uid, gid, size, reader)
    }

    /// Writes a regular file with several names (hard links). Every name gets an entry with the
    /// same inode number and a link count of `paths.len()`; the data goes with the last name.
    pub fn hardlinks<P: AsRef<[u8]>, R: Read>(
        &mut self,
        paths: &[P],
        mode: u32,
        uid: u32,
        gid: u32,
        size: u64,
        mut reader: R,
    ) -> Result<(), WriteError> {
        let Some((last, others)) = paths.split_last() else {
            return Err(WriteError::InvalidLinks { reason: "no names" });
        };
        let nlink = u32::try_from(paths.len()).map_err(|_| WriteError::InvalidLinks {
            reason: "more links than a 32-bit link count holds",
        })?;
        for p in paths {
            check_name(p.as_ref())?;
        }
        let last = last.as_ref();
        let filesize = u32::try_from(size).map_err(|_| WriteError::FileTooLarge {
            path: lossy(last),
            size,
        })?;
        let ino = self.alloc_ino()?;
        let base = self.base(ino, S_IFREG | (mode & PERM_MASK), uid, gid, nlink);
        for p in others {
            self.header(base, p.as_ref())?;
        }
        self.header(RawHeader { filesize, ..base }, last)?;
        self.copy_exact(last, size, &mut reader)?;
        self.pad()
    }

    fn copy_exact<R: Read>(
        &mut self,
        path: &[u8],
        size: u64,
        reader: &mut R,
    ) -> Result<(), WriteError> {
        let mut buf = vec![0u8; 64 * 1024];
        let mut left = size;
        while left > 0 {
            let want = usize::try_from(left).map_or(buf.len(), |l| l.min(buf.len()));
            let n = match reader.read(&mut buf[..want]) {
                Ok(0) => {
                    return Err(WriteError::ShortSource {
                        path: lossy(path),
                        expected: size,
                        got: size - left,
                    })
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(WriteError::Source {
                        path: lossy(path),
                        source,
                    })
                }
            };
            self.put(&buf[..n])?;
            left -= n as u64;
        }
        // A source longer than announced means the caller's size is wrong: refuse rather than
        // silently truncate.
        loop {
            match reader.read(&mut buf[..1]) {
                Ok(0) => return Ok(()),
                Ok(_) => {
                    return Err(WriteError::LongSource {
                        path: lossy(path),
                        expected: size,
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(WriteError::Source {
                        path: lossy(path),
                        source,
                    })
                }
            }
        }
    }

    /// Writes a symbolic link owned by root with mode 0777.
    pub fn symlink(
        &mut self,
        path: impl AsRef<[u8]>,
        target: impl AsRef<[u8]>,
    ) -> Result<(), WriteError> {
        self.symlink_owned(path, target, 0o777, 0, 0)
    }

    /// Writes a symbolic link with the given permission bits and owner.
    pub fn symlink_owned(
        &mut self,
        path: impl AsRef<[u8]>,
        target: impl AsRef<[u8]>,
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> Result<(), WriteError> {
        let (path, target) = (path.as_ref(), target.as_ref());
        check_name(path)?;
        let bad = |reason| {
            Err(WriteError::InvalidTarget {
                path: lossy(path),
                reason,
            })
        };
        if target.is_empty() {
            return bad("empty");
        }
        if target.contains(&0) {
            return bad("contains a NUL byte");
        }
        if target.len() > MAX_SYMLINK_TARGET_LEN {
            return bad("longer than 4095 bytes");
        }
        let ino = self.alloc_ino()?;
        let h = RawHeader {
            filesize: u32::try_from(target.len()).map_err(|_| WriteError::InvalidTarget {
                path: String::from_utf8_lossy(path).into_owned(),
                reason: "longer than 4095 bytes",
            })?,
            ..self.base(ino, S_IFLNK | (mode & PERM_MASK), uid, gid, 1)
        };
        self.header(h, path)?;
        self.put(target)?;
        self.pad()
    }

    /// Writes a device node, FIFO or socket entry (no data).
    #[allow(clippy::too_many_arguments)]
    pub fn node(
        &mut self,
        path: impl AsRef<[u8]>,
        kind: FileKind,
        mode: u32,
        uid: u32,
        gid: u32,
        rdevmajor: u32,
        rdevminor: u32,
    ) -> Result<(), WriteError> {
        if matches!(kind, FileKind::File | FileKind::Dir | FileKind::Symlink) {
            return Err(WriteError::NotANode { kind });
        }
        let path = path.as_ref();
        check_name(path)?;
        let ino = self.alloc_ino()?;
        let h = RawHeader {
            rdevmajor,
            rdevminor,
            ..self.base(ino, kind.type_bits() | (mode & PERM_MASK), uid, gid, 1)
        };
        self.header(h, path)
    }

    /// Writes the trailer, flushes, and returns the output.
    pub fn finish(mut self) -> Result<W, WriteError> {
        let h = RawHeader {
            nlink: 1,
            ..RawHeader::default()
        };
        self.header(h, TRAILER_NAME.as_bytes())?;
        self.out.flush().map_err(WriteError::Io)?;
        Ok(self.out)
    }
}

/// Size in bytes of the archive entry for a name of `name_len` bytes with `data_len` bytes of
/// data, padding included (lets callers size progress bars before writing).
pub fn entry_len(name_len: usize, data_len: u64) -> u64 {
    let head = (HEADER_LEN + name_len + 1) as u64;
    head + pad4(head) + data_len + pad4(data_len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_archive_is_just_the_trailer() {
        let out = CpioWriter::new(Vec::new()).finish().unwrap();
        assert_eq!(out.len(), 124);
        assert_eq!(&out[..6], b"070701");
        assert_eq!(&out[110..120], b"TRAILER!!!");
        assert_eq!(out.len() as u64, entry_len(10, 0));
    }

    #[test]
    fn alignment_and_layout() {
        let mut w = CpioWriter::new(Vec::new());
        w.file("a", 0o644, 0, 0, 5, &b"hello"[..]).unwrap();
        assert_eq!(w.position(), entry_len(1, 5));
        assert_eq!(w.position() % 4, 0);
        let out = w.finish().unwrap();
        // header(110) + "a\0"(2) = 112, data 5 + pad 3.
        assert_eq!(&out[112..117], b"hello");
        assert_eq!(&out[117..120], &[0, 0, 0]);
        assert_eq!(&out[120..126], b"070701");
    }

    #[test]
    fn mode_type_bits_from_caller_ignored() {
        let mut w = CpioWriter::new(Vec::new());
        w.dir("d", 0o170_755, 0, 0).unwrap();
        let out = w.finish().unwrap();
        assert_eq!(&out[14..22], b"000041ED");
    }

    #[test]
    fn short_and_long_sources_are_errors() {
        let mut w = CpioWriter::new(Vec::new());
        let e = w.file("a", 0o644, 0, 0, 10, &b"abc"[..]).unwrap_err();
        assert!(
            matches!(
                e,
                WriteError::ShortSource {
                    got: 3,
                    expected: 10,
                    ..
                }
            ),
            "{e}"
        );
        let mut w = CpioWriter::new(Vec::new());
        let e = w.file("a", 0o644, 0, 0, 2, &b"abc"[..]).unwrap_err();
        assert!(
            matches!(e, WriteError::LongSource { expected: 2, .. }),
            "{e}"
        );
    }

    #[test]
    fn bad_names_and_targets() {
        let mut w = CpioWriter::new(Vec::new());
        assert!(matches!(
            w.dir("", 0o755, 0, 0),
            Err(WriteError::InvalidName { .. })
        ));
        assert!(matches!(
            w.dir("a\0b", 0o755, 0, 0),
            Err(WriteError::InvalidName { .. })
        ));
        assert!(matches!(
            w.dir(TRAILER_NAME, 0o755, 0, 0),
            Err(WriteError::InvalidName { .. })
        ));
        let long = "x".repeat(MAX_NAME_LEN + 1);
        assert!(matches!(
            w.dir(&long, 0o755, 0, 0),
            Err(WriteError::InvalidName { .. })
        ));
        assert!(w.dir(&long[1..], 0o755, 0, 0).is_ok());
        assert!(matches!(
            w.symlink("l", ""),
            Err(WriteError::InvalidTarget { .. })
        ));
        assert!(matches!(
            w.hardlinks::<&str, &[u8]>(&[], 0o644, 0, 0, 0, &[][..]),
            Err(WriteError::InvalidLinks { .. })
        ));
        assert!(matches!(
            w.node("n", FileKind::File, 0, 0, 0, 0, 0),
            Err(WriteError::NotANode { .. })
        ));
    }

    #[test]
    fn inodes_are_sequential_and_shared_by_links() {
        let mut w = CpioWriter::new(Vec::new());
        w.dir("d", 0o755, 0, 0).unwrap();
        w.hardlinks(&["d/a", "d/b"], 0o644, 0, 0, 1, &b"x"[..])
            .unwrap();
        w.symlink("s", "d/a").unwrap();
        let out = w.finish().unwrap();
        let inos: Vec<&[u8]> = out
            .windows(6)
            .enumerate()
            .filter(|(_, w)| *w == b"070701")
            .map(|(i, _)| &out[i + 6..i + 14])
            .collect();
        assert_eq!(
            inos,
            vec![
                &b"00000001"[..],
                b"00000002",
                b"00000002",
                b"00000003",
                b"00000000"
            ]
        );
    }
}
