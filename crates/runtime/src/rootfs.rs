//! Unpacks an enclave image's ramdisks (cpio newc, maybe gzip) into the enclave's root directory.
//!
//! Every name in a ramdisk is untrusted. Names are split into components; empty and `.`
//! components are dropped, `..` is refused, leading `/` is ignored (names are always relative to
//! the root). Files are created with `openat`-style calls relative to a directory descriptor,
//! walking one component at a time with `O_NOFOLLOW|O_DIRECTORY`, so nothing is ever written
//! through a symlink: a parent component that is a symlink or a file is an error, and an existing
//! final component that is not a directory is unlinked before being replaced (later ramdisks
//! override earlier ones). Device nodes, FIFOs and sockets are skipped (an enclave's `/dev` is
//! built by the runtime). Everything created is owned by the given host uid/gid (the enclave's
//! root after the user namespace mapping). Hard links within one ramdisk are preserved.

use crate::sys::{self, NodeKind, SysError};
use cloister_cpio::{CpioReader, FileKind, ReadError};
use std::collections::HashMap;
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

/// Deepest path accepted in a ramdisk.
pub const MAX_DEPTH: usize = 128;
/// Size of the buffer file data is copied through: large enough that a big file costs few
/// system calls (reads this large bypass the archive reader's own buffer).
pub const COPY_BUFFER: usize = 1 << 20;

/// Unpacking errors.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    /// The ramdisk is not a valid archive.
    #[error("ramdisk {0} is malformed")]
    Archive(usize, #[source] ReadError),
    /// A name tries to leave the root.
    #[error("ramdisk entry {0:?} escapes the enclave root")]
    Escape(String),
    /// A name is too deep.
    #[error("ramdisk entry {0:?} is nested deeper than {MAX_DEPTH} levels")]
    TooDeep(String),
    /// A parent component is not a directory (a symlink or a file).
    #[error("ramdisk entry {0:?} would be written through a non-directory")]
    NotADirectory(String),
    /// A file system call failed.
    #[error("cannot create {0:?}")]
    Create(String, #[source] SysError),
    /// Copying file data failed.
    #[error("cannot write {0:?}")]
    Write(String, #[source] std::io::Error),
}

/// Statistics of one unpack.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct UnpackStats {
    /// Regular files written.
    pub files: u64,
    /// Directories created.
    pub dirs: u64,
    /// Symlinks created.
    pub symlinks: u64,
    /// Entries skipped (devices, FIFOs, sockets).
    pub skipped: u64,
    /// File bytes written.
    pub bytes: u64,
}

/// Splits an archive name into safe components.
pub fn sanitize(name: &[u8]) -> Result<Vec<&[u8]>, RootfsError> {
    let shown = || String::from_utf8_lossy(name).into_owned();
    let mut out = Vec::new();
    for comp in name.split(|b| *b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => return Err(RootfsError::Escape(shown())),
            c => out.push(c),
        }
    }
    if out.len() > MAX_DEPTH {
        return Err(RootfsError::TooDeep(shown()));
    }
    Ok(out)
}

/// Writes ramdisks into a root directory.
#[derive(Debug)]
pub struct Unpacker {
    root: OwnedFd,
    uid: u32,
    gid: u32,
    stats: UnpackStats,
    buf: Vec<u8>,
}

impl Unpacker {
    /// An unpacker writing under `root` (an open directory), owning files to `uid:gid`.
    pub fn new(root: OwnedFd, uid: u32, gid: u32) -> Self {
        Self {
            root,
            uid,
            gid,
            stats: UnpackStats::default(),
            buf: Vec::new(),
        }
    }

    /// What has been written so far.
    pub fn stats(&self) -> UnpackStats {
        self.stats
    }

    /// The root directory descriptor.
    pub fn root(&self) -> BorrowedFd<'_> {
        self.root.as_fd()
    }

    /// Opens (creating as needed) the directory `comps` under the root, never following symlinks.
    pub fn ensure_dir(&mut self, comps: &[&[u8]], shown: &str) -> Result<OwnedFd, RootfsError> {
        let mut cur = sys::open_dir_at(self.root.as_fd(), b".")
            .map_err(|e| RootfsError::Create(shown.into(), e))?;
        for comp in comps {
            match sys::kind_at(cur.as_fd(), comp)
                .map_err(|e| RootfsError::Create(shown.into(), e))?
            {
                None => {
                    sys::mkdir_at(cur.as_fd(), comp, 0o755)
                        .map_err(|e| RootfsError::Create(shown.into(), e))?;
                    sys::lchown_at(
                        cur.as_fd(),
                        std::path::Path::new(std::ffi::OsStr::from_bytes_compat(comp)),
                        self.uid,
                        self.gid,
                    )
                    .map_err(|e| RootfsError::Create(shown.into(), e))?;
                    self.stats.dirs += 1;
                }
                Some(NodeKind::Dir) => {}
                Some(_) => return Err(RootfsError::NotADirectory(shown.into())),
            }
            cur = sys::open_dir_at(cur.as_fd(), comp).map_err(|e| match e.errno {
                nix::errno::Errno::ELOOP | nix::errno::Errno::ENOTDIR => {
                    RootfsError::NotADirectory(shown.into())
                }
                _ => RootfsError::Create(shown.into(), e),
            })?;
        }
        Ok(cur)
    }

    /// Unpacks one ramdisk (`index` is only used in messages).
    pub fn unpack(&mut self, index: usize, input: impl Read) -> Result<(), RootfsError> {
        let mut reader = CpioReader::new(input);
        // Hard links: inode -> names seen without data yet.
        let mut pending_links: HashMap<u32, Vec<Vec<Vec<u8>>>> = HashMap::new();
        while let Some(entry) = reader
            .next_entry()
            .map_err(|e| RootfsError::Archive(index, e))?
        {
            let shown = String::from_utf8_lossy(&entry.name).into_owned();
            let comps = sanitize(&entry.name)?;
            let Some((last, parents)) = comps.split_last() else {
                continue; // "." or "/": the root itself
            };
            let dir = self.ensure_dir(parents, &shown)?;
            let create = |e| RootfsError::Create(shown.clone(), e);
            let existing = sys::kind_at(dir.as_fd(), last).map_err(create)?;
            let perms = entry.permissions();
            match entry.kind {
                FileKind::Dir => {
                    match existing {
                        Some(NodeKind::Dir) => {}
                        Some(_) => {
                            sys::unlink_at(dir.as_fd(), last, false).map_err(create)?;
                            sys::mkdir_at(dir.as_fd(), last, 0o700).map_err(create)?;
                            self.stats.dirs += 1;
                        }
                        None => {
                            sys::mkdir_at(dir.as_fd(), last, 0o700).map_err(create)?;
                            self.stats.dirs += 1;
                        }
                    }
                    let d = sys::open_dir_at(dir.as_fd(), last).map_err(create)?;
                    sys::fchown(d.as_fd(), self.uid, self.gid).map_err(create)?;
                    sys::fchmod(d.as_fd(), perms).map_err(create)?;
                }
                FileKind::File => {
                    match existing {
                        Some(NodeKind::Dir) => {
                            return Err(RootfsError::Create(
                                shown.clone(),
                                SysError::new("openat", shown.clone(), nix::errno::Errno::EISDIR),
                            ))
                        }
                        Some(_) => sys::unlink_at(dir.as_fd(), last, false).map_err(create)?,
                        None => {}
                    }
                    let mut f = sys::create_file_at(dir.as_fd(), last, 0o600).map_err(create)?;
                    let n = copy_data(&mut reader.data(), &mut f, &mut self.buf)
                        .map_err(|e| RootfsError::Write(shown.clone(), e))?;
                    sys::fchown(f.as_fd(), self.uid, self.gid).map_err(create)?;
                    sys::fchmod(f.as_fd(), perms).map_err(create)?;
                    self.stats.files += 1;
                    self.stats.bytes += n;
                    if entry.nlink > 1 {
                        let mine: Vec<Vec<u8>> = comps.iter().map(|c| c.to_vec()).collect();
                        if n == 0 {
                            pending_links.entry(entry.ino).or_default().push(mine);
                        } else if let Some(others) = pending_links.remove(&entry.ino) {
                            for other in others {
                                self.relink(&dir, last, &other, &shown)?;
                            }
                        }
                    }
                }
                FileKind::Symlink => {
                    let target = entry.symlink_target.clone().unwrap_or_default();
                    match existing {
                        Some(NodeKind::Dir) => {
                            return Err(RootfsError::NotADirectory(shown.clone()));
                        }
                        Some(_) => sys::unlink_at(dir.as_fd(), last, false).map_err(create)?,
                        None => {}
                    }
                    sys::symlink_at(&target, dir.as_fd(), last).map_err(create)?;
                    sys::lchown_at(
                        dir.as_fd(),
                        std::path::Path::new(std::ffi::OsStr::from_bytes_compat(last)),
                        self.uid,
                        self.gid,
                    )
                    .map_err(create)?;
                    self.stats.symlinks += 1;
                }
                FileKind::CharDevice
                | FileKind::BlockDevice
                | FileKind::Fifo
                | FileKind::Socket => {
                    self.stats.skipped += 1;
                }
            }
        }
        Ok(())
    }

    /// Replaces `other` (an earlier, empty hard-link name) with a link to `last` in `dir`.
    fn relink(
        &mut self,
        dir: &OwnedFd,
        last: &[u8],
        other: &[Vec<u8>],
        shown: &str,
    ) -> Result<(), RootfsError> {
        let comps: Vec<&[u8]> = other.iter().map(Vec::as_slice).collect();
        let Some((olast, oparents)) = comps.split_last() else {
            return Ok(());
        };
        let odir = self.ensure_dir(oparents, shown)?;
        let create = |e| RootfsError::Create(shown.to_owned(), e);
        if sys::kind_at(odir.as_fd(), olast).map_err(create)? == Some(NodeKind::File) {
            sys::unlink_at(odir.as_fd(), olast, false).map_err(create)?;
        }
        sys::link_at(dir.as_fd(), last, odir.as_fd(), olast).map_err(create)
    }
}

/// Copies `from` to `to` through `buf` (grown to [`COPY_BUFFER`] on first use); returns the
/// number of bytes copied.
fn copy_data(
    from: &mut impl Read,
    to: &mut impl std::io::Write,
    buf: &mut Vec<u8>,
) -> std::io::Result<u64> {
    if buf.len() < COPY_BUFFER {
        buf.resize(COPY_BUFFER, 0);
    }
    let mut total = 0u64;
    loop {
        let n = match from.read(buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        to.write_all(&buf[..n])?;
        total += n as u64;
    }
}

/// `OsStr::from_bytes` under a name that reads well at call sites.
trait FromBytesCompat {
    fn from_bytes_compat(b: &[u8]) -> &Self;
}

impl FromBytesCompat for std::ffi::OsStr {
    fn from_bytes_compat(b: &[u8]) -> &Self {
        use std::os::unix::ffi::OsStrExt;
        std::ffi::OsStr::from_bytes(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cloister_cpio::CpioWriter;

    fn archive(build: impl FnOnce(&mut CpioWriter<Vec<u8>>)) -> Vec<u8> {
        let mut w = CpioWriter::new(Vec::new());
        build(&mut w);
        w.finish().unwrap()
    }

    fn unpacker(dir: &std::path::Path) -> Unpacker {
        let uid = nix::unistd::getuid().as_raw();
        let gid = nix::unistd::getgid().as_raw();
        Unpacker::new(sys::open_dir(dir).unwrap(), uid, gid)
    }

    #[test]
    fn sanitize_refuses_escapes() {
        assert_eq!(sanitize(b"./a//b/").unwrap(), vec![&b"a"[..], b"b"]);
        assert_eq!(sanitize(b"/etc/x").unwrap(), vec![&b"etc"[..], b"x"]);
        assert!(matches!(
            sanitize(b"a/../../x"),
            Err(RootfsError::Escape(_))
        ));
        assert!(sanitize(b".").unwrap().is_empty());
        let deep = "a/".repeat(MAX_DEPTH + 1);
        assert!(matches!(
            sanitize(deep.as_bytes()),
            Err(RootfsError::TooDeep(_))
        ));
    }

    #[test]
    fn unpacks_files_dirs_links_and_overrides() {
        let dir = tempfile::tempdir().unwrap();
        let first = archive(|w| {
            w.dir("rootfs", 0o755, 0, 0).unwrap();
            w.file("rootfs/a", 0o644, 0, 0, 3, &b"one"[..]).unwrap();
            w.symlink("rootfs/l", "a").unwrap();
            w.hardlinks(&["rootfs/h1", "rootfs/h2"], 0o755, 0, 0, 2, &b"hh"[..])
                .unwrap();
        });
        let second = archive(|w| {
            w.file("rootfs/a", 0o600, 0, 0, 3, &b"two"[..]).unwrap();
            w.file("cmd", 0o644, 0, 0, 5, &b"/app\n"[..]).unwrap();
        });
        let mut u = unpacker(dir.path());
        u.unpack(0, &first[..]).unwrap();
        u.unpack(1, &second[..]).unwrap();
        let root = dir.path();
        assert_eq!(std::fs::read(root.join("rootfs/a")).unwrap(), b"two");
        assert_eq!(
            std::fs::read_link(root.join("rootfs/l")).unwrap().to_str(),
            Some("a")
        );
        assert_eq!(std::fs::read(root.join("rootfs/h1")).unwrap(), b"hh");
        assert_eq!(std::fs::read(root.join("rootfs/h2")).unwrap(), b"hh");
        assert_eq!(std::fs::read(root.join("cmd")).unwrap(), b"/app\n");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(root.join("rootfs/a"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o600);
    }

    #[test]
    fn large_files_are_copied_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let len = 3 * COPY_BUFFER + 7;
        let data: Vec<u8> = (0..len).map(|i| u8::try_from(i % 251).unwrap()).collect();
        let a = archive(|w| {
            w.file("big", 0o644, 0, 0, len as u64, &data[..]).unwrap();
            w.file("small", 0o644, 0, 0, 2, &b"ok"[..]).unwrap();
        });
        let mut u = unpacker(dir.path());
        u.unpack(0, &a[..]).unwrap();
        assert_eq!(std::fs::read(dir.path().join("big")).unwrap(), data);
        assert_eq!(std::fs::read(dir.path().join("small")).unwrap(), b"ok");
        assert_eq!(u.stats().bytes, len as u64 + 2);
    }

    #[test]
    fn never_writes_through_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let evil = archive(|w| {
            w.symlink("esc", outside.path().to_str().unwrap()).unwrap();
            w.file("esc/pwned", 0o644, 0, 0, 1, &b"x"[..]).unwrap();
        });
        let mut u = unpacker(dir.path());
        let err = u.unpack(0, &evil[..]).unwrap_err();
        assert!(matches!(err, RootfsError::NotADirectory(_)), "{err}");
        assert!(!outside.path().join("pwned").exists());

        // A symlink replaced by a file is unlinked, not written through.
        let target = outside.path().join("victim");
        std::fs::write(&target, b"keep").unwrap();
        let evil2 = archive(|w| {
            w.symlink("f", target.to_str().unwrap()).unwrap();
            w.file("f", 0o644, 0, 0, 3, &b"new"[..]).unwrap();
        });
        let dir2 = tempfile::tempdir().unwrap();
        unpacker(dir2.path()).unpack(0, &evil2[..]).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
        assert_eq!(std::fs::read(dir2.path().join("f")).unwrap(), b"new");

        let dots = archive(|w| {
            w.file("../x", 0o644, 0, 0, 1, &b"x"[..]).unwrap();
        });
        assert!(matches!(
            unpacker(dir.path()).unpack(0, &dots[..]),
            Err(RootfsError::Escape(_))
        ));
    }
}
