//! The in-memory root filesystem that layers are applied to.
//!
//! Nothing from an image is ever written to the host's filesystem tree: paths live in a sorted
//! map (relative path bytes -> node) and file contents are appended to one anonymous spill file
//! (unlinked at creation, so it disappears with the process). This makes path traversal harmless
//! by construction; the tree still refuses paths that would be dangerous if extracted (`..`
//! components, writes through a symlink that leads outside the root) with a clear error, so a
//! hostile image is reported rather than silently reinterpreted.
//!
//! Semantics follow how container runtimes apply layers:
//! - absolute entry names are relative to the image root (`/etc/x` is `etc/x`);
//! - a missing parent directory is created (root-owned, 0755);
//! - a symlink in a parent position is followed inside the tree (an absolute target is relative
//!   to the image root; climbing above the root is an error);
//! - a new entry replaces an existing one, except that a directory over a directory only updates
//!   the directory's owner and mode and keeps its children;
//! - hard links share one inode (content, mode and owner).

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Symlinks followed while resolving one path (Linux's `MAXSYMLINKS`).
pub const MAX_SYMLINK_HOPS: u32 = 40;

/// Owner and permission bits (including setuid, setgid and sticky).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Meta {
    /// Permission bits (`mode & 0o7777`).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
}

impl Meta {
    /// Root-owned with the given permission bits.
    pub fn root(mode: u32) -> Self {
        Self {
            mode: mode & 0o7777,
            uid: 0,
            gid: 0,
        }
    }
}

/// Index of a regular file's inode in the tree.
pub type InodeId = usize;

/// Where a regular file's bytes are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// A range of the spill file.
    Spill {
        /// Start.
        offset: u64,
        /// Length.
        len: u64,
    },
    /// A file on the host (rootfs-directory input), read when the ramdisk is written.
    Host {
        /// Its path.
        path: PathBuf,
        /// Its size when scanned.
        len: u64,
    },
}

impl Content {
    /// Size in bytes.
    pub fn len(&self) -> u64 {
        match self {
            Content::Spill { len, .. } | Content::Host { len, .. } => *len,
        }
    }

    /// Whether the file is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A regular file (shared by all its hard links).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inode {
    /// Owner and mode.
    pub meta: Meta,
    /// Bytes.
    pub content: Content,
}

/// What a path names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeKind {
    /// A directory (its owner and mode in [`Node::meta`]).
    Dir,
    /// A regular file.
    File(InodeId),
    /// A symbolic link and its target (raw bytes).
    Symlink(Vec<u8>),
}

/// One path of the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Owner and mode (for files, the inode's meta is authoritative).
    pub meta: Meta,
    /// Kind.
    pub kind: NodeKind,
    /// Index of the layer that wrote it (whiteouts only hide lower layers).
    pub layer: u32,
}

/// Caps on the tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TreeLimits {
    /// Most paths.
    pub max_entries: usize,
    /// Longest path in bytes (relative to the image root).
    pub max_path_len: usize,
    /// Most bytes of paths and symlink targets held in memory.
    pub max_metadata_bytes: u64,
    /// Most bytes of file content.
    pub max_content_bytes: u64,
}

impl Default for TreeLimits {
    fn default() -> Self {
        Self {
            max_entries: 1_000_000,
            max_path_len: 4000,
            max_metadata_bytes: 256 << 20,
            max_content_bytes: 16 << 30,
        }
    }
}

/// Errors from [`Tree`].
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    /// A path has a `..` component.
    #[error("path {path:?} contains a \"..\" component")]
    DotDot {
        /// The path.
        path: String,
    },
    /// Following a symlink leads above the image root.
    #[error("path {path:?} goes through symlink {link:?}, which points outside the image root")]
    Escape {
        /// The path being written.
        path: String,
        /// The symlink.
        link: String,
    },
    /// Too many symlinks while resolving a path.
    #[error("path {path:?}: too many levels of symbolic links")]
    SymlinkLoop {
        /// The path.
        path: String,
    },
    /// A parent component is not a directory.
    #[error("path {path:?}: {component:?} is not a directory")]
    NotADirectory {
        /// The path.
        path: String,
        /// The component that is a file.
        component: String,
    },
    /// A path is longer than allowed.
    #[error("path {path:?} is {len} bytes long; the limit is {max}")]
    PathTooLong {
        /// The path (cut).
        path: String,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The root itself would be replaced by a non-directory.
    #[error("an entry would replace the image root directory with a non-directory")]
    RootReplaced,
    /// Too many paths.
    #[error("more than {max} files in the image")]
    TooManyEntries {
        /// The limit.
        max: usize,
    },
    /// Too many bytes of names.
    #[error("more than {max} bytes of file names and link targets")]
    MetadataTooLarge {
        /// The limit.
        max: u64,
    },
    /// Too many bytes of content.
    #[error("more than {max} bytes of file content")]
    ContentTooLarge {
        /// The limit.
        max: u64,
    },
    /// A hard link names a path that does not exist.
    #[error("hard link {path:?} points to {target:?}, which does not exist")]
    LinkTargetMissing {
        /// The link.
        path: String,
        /// Its target.
        target: String,
    },
    /// A hard link names a directory.
    #[error("hard link {path:?} points to directory {target:?}")]
    LinkToDirectory {
        /// The link.
        path: String,
        /// Its target.
        target: String,
    },
    /// The spill file failed.
    #[error("cannot use the temporary content file")]
    Spill(#[source] io::Error),
    /// The content source failed or ended early.
    #[error("cannot read the content of {path:?}")]
    Content {
        /// The file.
        path: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

/// Lossy display of path bytes.
pub fn show(path: &[u8]) -> String {
    let s = String::from_utf8_lossy(path);
    if s.len() > 200 {
        let mut cut = 200;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        format!("{}...", &s[..cut])
    } else {
        s.into_owned()
    }
}

/// Splits an entry name into components: empty and `.` components dropped, a leading `/`
/// ignored, `..` refused.
pub fn components(path: &[u8]) -> Result<Vec<&[u8]>, TreeError> {
    let mut out = Vec::new();
    for c in path.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err(TreeError::DotDot { path: show(path) }),
            c => out.push(c),
        }
    }
    Ok(out)
}

fn join(parent: &[u8], name: &[u8]) -> Vec<u8> {
    if parent.is_empty() {
        name.to_vec()
    } else {
        let mut k = Vec::with_capacity(parent.len() + 1 + name.len());
        k.extend_from_slice(parent);
        k.push(b'/');
        k.extend_from_slice(name);
        k
    }
}

/// Upper bound (exclusive) of the keys strictly below `key`: `key/` .. `key0`.
fn subtree_range(key: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let mut lo = key.to_vec();
    lo.push(b'/');
    let mut hi = key.to_vec();
    hi.push(b'/' + 1);
    (lo, hi)
}

/// The anonymous file holding file contents.
struct Spill {
    out: BufWriter<File>,
    len: u64,
}

/// Reads a byte range of the spill file (positioned reads, so many readers can coexist).
#[derive(Debug)]
pub struct RangeReader<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
}

impl Read for RangeReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.end.saturating_sub(self.pos);
        if left == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// The filesystem being assembled. See the module docs.
pub struct Tree {
    root: Meta,
    nodes: BTreeMap<Vec<u8>, Node>,
    inodes: Vec<Inode>,
    spill: Spill,
    limits: TreeLimits,
    metadata_bytes: u64,
}

impl std::fmt::Debug for Tree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tree")
            .field("entries", &self.nodes.len())
            .field("content_bytes", &self.spill.len)
            .finish_non_exhaustive()
    }
}

impl Tree {
    /// An empty tree (root directory root-owned 0755) whose contents spill into an anonymous file
    /// in `temp_dir`.
    pub fn new(temp_dir: &Path, limits: TreeLimits) -> Result<Self, TreeError> {
        let file = tempfile::tempfile_in(temp_dir).map_err(TreeError::Spill)?;
        Ok(Self {
            root: Meta::root(0o755),
            nodes: BTreeMap::new(),
            inodes: Vec::new(),
            spill: Spill {
                out: BufWriter::with_capacity(1 << 20, file),
                len: 0,
            },
            limits,
            metadata_bytes: 0,
        })
    }

    /// Owner and mode of the root directory.
    pub fn root_meta(&self) -> Meta {
        self.root
    }

    /// Number of paths (the root not counted).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the tree has no paths.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Bytes of file content appended so far (including content later replaced).
    pub fn content_bytes(&self) -> u64 {
        self.spill.len
    }

    /// All paths in byte order (parents before children), with their nodes.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &Node)> {
        self.nodes.iter().map(|(k, v)| (k.as_slice(), v))
    }

    /// Looks a path up (exact key, no symlink resolution).
    pub fn get(&self, path: &[u8]) -> Option<&Node> {
        self.nodes.get(path)
    }

    /// The inode of a regular file.
    pub fn inode(&self, id: InodeId) -> Option<&Inode> {
        self.inodes.get(id)
    }

    /// Flushes the spill file; call before reading contents.
    pub fn flush(&mut self) -> Result<(), TreeError> {
        self.spill.out.flush().map_err(TreeError::Spill)
    }

    /// A reader of a spilled range. [`Tree::flush`] must have been called since the last write.
    pub fn spill_reader(&self, offset: u64, len: u64) -> RangeReader<'_> {
        RangeReader {
            file: self.spill.out.get_ref(),
            pos: offset,
            end: offset.saturating_add(len),
        }
    }

    /// Resolves `dir_key` (an existing or to-be-created directory path, already a key) through
    /// symlinks, creating missing directories. Returns the key of the real directory.
    fn resolve_dir(
        &mut self,
        comps: &[&[u8]],
        full: &[u8],
        hops: &mut u32,
        create: bool,
    ) -> Result<Option<Vec<u8>>, TreeError> {
        let mut cur: Vec<u8> = Vec::new();
        for comp in comps {
            let next = join(&cur, comp);
            match self.nodes.get(&next).map(|n| n.kind.clone()) {
                None if !create => return Ok(None),
                None => {
                    self.check_new_path(&next)?;
                    self.nodes.insert(
                        next.clone(),
                        Node {
                            meta: Meta::root(0o755),
                            kind: NodeKind::Dir,
                            layer: 0,
                        },
                    );
                    cur = next;
                }
                Some(NodeKind::Dir) => cur = next,
                Some(NodeKind::File(_)) => {
                    return Err(TreeError::NotADirectory {
                        path: show(full),
                        component: show(&next),
                    })
                }
                Some(NodeKind::Symlink(target)) => {
                    *hops += 1;
                    if *hops > MAX_SYMLINK_HOPS {
                        return Err(TreeError::SymlinkLoop { path: show(full) });
                    }
                    // Resolve the target relative to the link's directory (or the root).
                    let mut base: Vec<Vec<u8>> = if target.first() == Some(&b'/') {
                        Vec::new()
                    } else {
                        cur.split(|&b| b == b'/')
                            .filter(|c| !c.is_empty())
                            .map(<[u8]>::to_vec)
                            .collect()
                    };
                    for t in target.split(|&b| b == b'/') {
                        match t {
                            b"" | b"." => {}
                            b".." => {
                                if base.pop().is_none() {
                                    return Err(TreeError::Escape {
                                        path: show(full),
                                        link: show(&next),
                                    });
                                }
                            }
                            t => base.push(t.to_vec()),
                        }
                    }
                    let refs: Vec<&[u8]> = base.iter().map(Vec::as_slice).collect();
                    match self.resolve_dir(&refs, full, hops, create)? {
                        Some(k) => cur = k,
                        None => return Ok(None),
                    }
                }
            }
        }
        Ok(Some(cur))
    }

    fn check_new_path(&mut self, key: &[u8]) -> Result<(), TreeError> {
        if key.len() > self.limits.max_path_len {
            return Err(TreeError::PathTooLong {
                path: show(key),
                len: key.len(),
                max: self.limits.max_path_len,
            });
        }
        if self.nodes.len() >= self.limits.max_entries {
            return Err(TreeError::TooManyEntries {
                max: self.limits.max_entries,
            });
        }
        self.add_metadata_bytes(key.len() as u64)
    }

    fn add_metadata_bytes(&mut self, n: u64) -> Result<(), TreeError> {
        self.metadata_bytes += n;
        if self.metadata_bytes > self.limits.max_metadata_bytes {
            return Err(TreeError::MetadataTooLarge {
                max: self.limits.max_metadata_bytes,
            });
        }
        Ok(())
    }

    /// Resolves an entry name to its key (parents resolved through symlinks and created when
    /// missing). `None` for the root.
    fn locate(&mut self, path: &[u8]) -> Result<Option<Vec<u8>>, TreeError> {
        Ok(self.find(path, true)?.and_then(|k| k))
    }

    /// Like [`Tree::locate`] without creating anything: `Ok(None)` when a parent is missing,
    /// `Ok(Some(None))` for the root.
    fn find(&mut self, path: &[u8], create: bool) -> Result<Option<Option<Vec<u8>>>, TreeError> {
        let comps = components(path)?;
        let Some((name, parents)) = comps.split_last() else {
            return Ok(Some(None));
        };
        let mut hops = 0;
        Ok(self
            .resolve_dir(parents, path, &mut hops, create)?
            .map(|parent| Some(join(&parent, name))))
    }

    fn remove_subtree(&mut self, key: &[u8], below_layer: Option<u32>) {
        let (lo, hi) = subtree_range(key);
        let doomed: Vec<Vec<u8>> = self
            .nodes
            .range(lo..hi)
            .filter(|(_, n)| below_layer.is_none_or(|l| n.layer < l))
            .map(|(k, _)| k.clone())
            .collect();
        for k in doomed {
            self.nodes.remove(&k);
        }
    }

    /// Puts `node` at `key`, replacing what is there (see the module docs).
    fn put(&mut self, key: Vec<u8>, node: Node) -> Result<(), TreeError> {
        match self.nodes.get_mut(&key) {
            Some(existing) => {
                if existing.kind == NodeKind::Dir && node.kind == NodeKind::Dir {
                    existing.meta = node.meta;
                    existing.layer = node.layer;
                    return Ok(());
                }
                if existing.kind == NodeKind::Dir {
                    self.remove_subtree(&key, None);
                }
                self.nodes.insert(key, node);
            }
            None => {
                self.check_new_path(&key)?;
                self.nodes.insert(key, node);
            }
        }
        Ok(())
    }

    /// Adds or updates a directory.
    pub fn add_dir(&mut self, path: &[u8], meta: Meta, layer: u32) -> Result<(), TreeError> {
        match self.locate(path)? {
            None => {
                self.root = meta;
                Ok(())
            }
            Some(key) => self.put(
                key,
                Node {
                    meta,
                    kind: NodeKind::Dir,
                    layer,
                },
            ),
        }
    }

    /// Adds a symlink.
    pub fn add_symlink(
        &mut self,
        path: &[u8],
        target: &[u8],
        meta: Meta,
        layer: u32,
    ) -> Result<(), TreeError> {
        let key = self.locate(path)?.ok_or(TreeError::RootReplaced)?;
        self.add_metadata_bytes(target.len() as u64)?;
        self.put(
            key,
            Node {
                meta,
                kind: NodeKind::Symlink(target.to_vec()),
                layer,
            },
        )
    }

    /// Adds a regular file whose `size` bytes are read from `content` into the spill file.
    pub fn add_file(
        &mut self,
        path: &[u8],
        meta: Meta,
        size: u64,
        content: &mut dyn Read,
        layer: u32,
    ) -> Result<(), TreeError> {
        let key = self.locate(path)?.ok_or(TreeError::RootReplaced)?;
        if self.spill.len.saturating_add(size) > self.limits.max_content_bytes {
            return Err(TreeError::ContentTooLarge {
                max: self.limits.max_content_bytes,
            });
        }
        let offset = self.spill.len;
        let copied = io::copy(&mut content.take(size), &mut self.spill.out).map_err(|source| {
            TreeError::Content {
                path: show(path),
                source,
            }
        })?;
        self.spill.len += copied;
        if copied != size {
            return Err(TreeError::Content {
                path: show(path),
                source: io::Error::new(io::ErrorKind::UnexpectedEof, "content ended early"),
            });
        }
        self.add_inode(key, meta, Content::Spill { offset, len: size }, layer)
    }

    /// Adds a regular file whose content stays in a host file until the ramdisk is written.
    pub fn add_host_file(
        &mut self,
        path: &[u8],
        meta: Meta,
        host: PathBuf,
        len: u64,
    ) -> Result<InodeId, TreeError> {
        let key = self.locate(path)?.ok_or(TreeError::RootReplaced)?;
        if self.spill.len.saturating_add(len) > self.limits.max_content_bytes {
            return Err(TreeError::ContentTooLarge {
                max: self.limits.max_content_bytes,
            });
        }
        self.spill.len += len;
        self.add_inode(key, meta, Content::Host { path: host, len }, 0)?;
        Ok(self.inodes.len() - 1)
    }

    fn add_inode(
        &mut self,
        key: Vec<u8>,
        meta: Meta,
        content: Content,
        layer: u32,
    ) -> Result<(), TreeError> {
        self.inodes.push(Inode { meta, content });
        let id = self.inodes.len() - 1;
        self.put(
            key,
            Node {
                meta,
                kind: NodeKind::File(id),
                layer,
            },
        )
    }

    /// Adds another name for the regular file (or symlink) at `target`.
    pub fn add_hardlink(
        &mut self,
        path: &[u8],
        target: &[u8],
        layer: u32,
    ) -> Result<(), TreeError> {
        let target_key = self
            .locate(target)?
            .ok_or_else(|| TreeError::LinkToDirectory {
                path: show(path),
                target: "/".into(),
            })?;
        let Some(node) = self.nodes.get(&target_key).cloned() else {
            return Err(TreeError::LinkTargetMissing {
                path: show(path),
                target: show(target),
            });
        };
        if node.kind == NodeKind::Dir {
            return Err(TreeError::LinkToDirectory {
                path: show(path),
                target: show(target),
            });
        }
        let key = self.locate(path)?.ok_or(TreeError::RootReplaced)?;
        if key == target_key {
            return Ok(());
        }
        self.put(key, Node { layer, ..node })
    }

    /// Adds a hard link to an inode created by [`Tree::add_host_file`].
    pub fn add_host_hardlink(&mut self, path: &[u8], id: InodeId) -> Result<(), TreeError> {
        let key = self.locate(path)?.ok_or(TreeError::RootReplaced)?;
        let meta = self
            .inodes
            .get(id)
            .map(|i| i.meta)
            .unwrap_or(Meta::root(0o644));
        self.put(
            key,
            Node {
                meta,
                kind: NodeKind::File(id),
                layer: 0,
            },
        )
    }

    /// A whiteout `.wh.<name>` in `dir`: removes `dir/<name>` (and what is below it) as written
    /// by layers below `layer`.
    pub fn whiteout(&mut self, dir: &[u8], name: &[u8], layer: u32) -> Result<(), TreeError> {
        let mut full = dir.to_vec();
        full.push(b'/');
        full.extend_from_slice(name);
        let Some(Some(key)) = self.find(&full, false)? else {
            return Ok(());
        };
        if let Some(n) = self.nodes.get(&key) {
            if n.layer < layer {
                self.nodes.remove(&key);
            }
        }
        self.remove_subtree(&key, Some(layer));
        Ok(())
    }

    /// An opaque-directory marker in `dir`: hides everything below `dir` written by lower layers.
    pub fn opaque(&mut self, dir: &[u8], layer: u32) -> Result<(), TreeError> {
        match self.locate(dir)? {
            None if components(dir)?.is_empty() => {
                let doomed: Vec<Vec<u8>> = self
                    .nodes
                    .iter()
                    .filter(|(_, n)| n.layer < layer)
                    .map(|(k, _)| k.clone())
                    .collect();
                for k in doomed {
                    self.nodes.remove(&k);
                }
            }
            None => {}
            Some(key) => {
                self.remove_subtree(&key, Some(layer));
                // The directory itself must exist (a marker implies it).
                if !self.nodes.contains_key(&key) {
                    self.put(
                        key,
                        Node {
                            meta: Meta::root(0o755),
                            kind: NodeKind::Dir,
                            layer,
                        },
                    )?;
                }
            }
        }
        Ok(())
    }

    /// For each directory key (and `""` for the root), the number of subdirectories.
    pub fn subdir_counts(&self) -> HashMap<&[u8], u32> {
        let mut counts: HashMap<&[u8], u32> = HashMap::new();
        for (k, n) in &self.nodes {
            if n.kind == NodeKind::Dir {
                let parent = match k.iter().rposition(|&b| b == b'/') {
                    Some(i) => &k[..i],
                    None => &k[..0],
                };
                *counts.entry(parent).or_default() += 1;
            }
        }
        counts
    }

    /// Names of each inode that has more than one, in path order.
    pub fn link_groups(&self) -> HashMap<InodeId, Vec<&[u8]>> {
        let mut groups: HashMap<InodeId, Vec<&[u8]>> = HashMap::new();
        for (k, n) in &self.nodes {
            if let NodeKind::File(id) = n.kind {
                groups.entry(id).or_default().push(k);
            }
        }
        groups.retain(|_, v| v.len() > 1);
        groups
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> Tree {
        Tree::new(&std::env::temp_dir(), TreeLimits::default()).unwrap()
    }

    fn file(t: &mut Tree, p: &str, data: &[u8], layer: u32) -> Result<(), TreeError> {
        t.add_file(
            p.as_bytes(),
            Meta::root(0o644),
            data.len() as u64,
            &mut &data[..],
            layer,
        )
    }

    fn content(t: &mut Tree, p: &str) -> Vec<u8> {
        t.flush().unwrap();
        let NodeKind::File(id) = t.get(p.as_bytes()).unwrap().kind else {
            panic!("not a file")
        };
        let Content::Spill { offset, len } = t.inode(id).unwrap().content.clone() else {
            panic!()
        };
        let mut v = Vec::new();
        t.spill_reader(offset, len).read_to_end(&mut v).unwrap();
        v
    }

    #[test]
    fn normalises_and_creates_parents() {
        let mut t = tree();
        file(&mut t, "/a/./b//c", b"x", 0).unwrap();
        assert_eq!(t.get(b"a").unwrap().kind, NodeKind::Dir);
        assert_eq!(t.get(b"a/b").unwrap().kind, NodeKind::Dir);
        assert_eq!(content(&mut t, "a/b/c"), b"x");
        assert!(matches!(
            file(&mut t, "a/../../etc/passwd", b"x", 0),
            Err(TreeError::DotDot { .. })
        ));
    }

    #[test]
    fn symlinks_in_parents_are_followed_inside_and_refused_outside() {
        let mut t = tree();
        t.add_dir(b"usr/lib", Meta::root(0o755), 0).unwrap();
        t.add_symlink(b"lib", b"usr/lib", Meta::root(0o777), 0)
            .unwrap();
        t.add_symlink(b"abs", b"/usr", Meta::root(0o777), 0)
            .unwrap();
        file(&mut t, "lib/x", b"1", 1).unwrap();
        file(&mut t, "abs/y", b"2", 1).unwrap();
        assert_eq!(content(&mut t, "usr/lib/x"), b"1");
        assert_eq!(content(&mut t, "usr/y"), b"2");
        t.add_symlink(b"out", b"../../../etc", Meta::root(0o777), 0)
            .unwrap();
        let e = file(&mut t, "out/passwd", b"pwn", 1).unwrap_err();
        assert!(matches!(e, TreeError::Escape { .. }), "{e}");
        t.add_symlink(b"loop", b"loop", Meta::root(0o777), 0)
            .unwrap();
        assert!(matches!(
            file(&mut t, "loop/x", b"", 1),
            Err(TreeError::SymlinkLoop { .. })
        ));
        // Replacing a symlink itself does not follow it.
        file(&mut t, "out", b"plain", 1).unwrap();
        assert_eq!(content(&mut t, "out"), b"plain");
    }

    #[test]
    fn file_as_parent_is_an_error() {
        let mut t = tree();
        file(&mut t, "f", b"", 0).unwrap();
        assert!(matches!(
            file(&mut t, "f/x", b"", 0),
            Err(TreeError::NotADirectory { .. })
        ));
    }

    #[test]
    fn whiteouts_and_opaque_dirs_hide_lower_layers_only() {
        let mut t = tree();
        file(&mut t, "d/a", b"", 0).unwrap();
        file(&mut t, "d/sub/b", b"", 0).unwrap();
        file(&mut t, "e/c", b"", 0).unwrap();
        file(&mut t, "d/new", b"", 1).unwrap();
        t.opaque(b"d", 1).unwrap();
        assert!(t.get(b"d/a").is_none());
        assert!(t.get(b"d/sub/b").is_none());
        assert!(t.get(b"d/new").is_some());
        assert!(t.get(b"d").is_some());
        t.whiteout(b"e", b"c", 2).unwrap();
        assert!(t.get(b"e/c").is_none());
        t.whiteout(b"", b"e", 2).unwrap();
        assert!(t.get(b"e").is_none());
    }

    #[test]
    fn replacing_dir_with_file_drops_children_and_dir_over_dir_keeps_them() {
        let mut t = tree();
        file(&mut t, "d/a", b"", 0).unwrap();
        t.add_dir(
            b"d",
            Meta {
                mode: 0o700,
                uid: 5,
                gid: 6,
            },
            1,
        )
        .unwrap();
        assert!(t.get(b"d/a").is_some());
        assert_eq!(t.get(b"d").unwrap().meta.uid, 5);
        file(&mut t, "d", b"now a file", 2).unwrap();
        assert!(t.get(b"d/a").is_none());
        assert!(matches!(t.get(b"d").unwrap().kind, NodeKind::File(_)));
    }

    #[test]
    fn hard_links_share_inodes() {
        let mut t = tree();
        file(&mut t, "a", b"data", 0).unwrap();
        t.add_hardlink(b"b", b"a", 0).unwrap();
        t.add_hardlink(b"/c", b"/a", 0).unwrap();
        let groups = t.link_groups();
        assert_eq!(groups.len(), 1);
        assert_eq!(
            groups.values().next().unwrap(),
            &vec![&b"a"[..], b"b", b"c"]
        );
        assert!(matches!(
            t.add_hardlink(b"x", b"nope", 0),
            Err(TreeError::LinkTargetMissing { .. })
        ));
        t.add_dir(b"dir", Meta::root(0o755), 0).unwrap();
        assert!(matches!(
            t.add_hardlink(b"x", b"dir", 0),
            Err(TreeError::LinkToDirectory { .. })
        ));
    }

    #[test]
    fn limits() {
        let limits = TreeLimits {
            max_entries: 3,
            max_path_len: 10,
            max_metadata_bytes: 1 << 20,
            max_content_bytes: 8,
        };
        let mut t = Tree::new(&std::env::temp_dir(), limits).unwrap();
        assert!(matches!(
            file(&mut t, "0123456789a", b"", 0),
            Err(TreeError::PathTooLong { .. })
        ));
        assert!(matches!(
            file(&mut t, "big", b"123456789", 0),
            Err(TreeError::ContentTooLarge { .. })
        ));
        file(&mut t, "a", b"", 0).unwrap();
        file(&mut t, "b", b"", 0).unwrap();
        file(&mut t, "c", b"", 0).unwrap();
        assert!(matches!(
            file(&mut t, "d", b"", 0),
            Err(TreeError::TooManyEntries { max: 3 })
        ));
    }

    #[test]
    fn subdir_counts() {
        let mut t = tree();
        t.add_dir(b"a/b", Meta::root(0o755), 0).unwrap();
        t.add_dir(b"a/c", Meta::root(0o755), 0).unwrap();
        file(&mut t, "a/f", b"", 0).unwrap();
        let c = t.subdir_counts();
        assert_eq!(c.get(&b""[..]), Some(&1));
        assert_eq!(c.get(&b"a"[..]), Some(&2));
        assert_eq!(c.get(&b"a/b"[..]), None);
    }
}
