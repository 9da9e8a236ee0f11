//! What the host fabric trusts on the filesystem, and whose credentials its connections carry.
//!
//! The fabric directory (`<run>/vsock`) is shared by every host user, and the broker that dials
//! into it runs as root, so a name in it proves nothing by itself. The rules, each enforced
//! here:
//!
//! - **The directory** is reached without following a symlink at its last component, must be
//!   owned by root or by the calling user, and, when anybody but its owner may write to it,
//!   must have the sticky bit (it is created 1777, like `/tmp`): nobody can then rename,
//!   remove or replace another user's entry.
//! - **A listener entry** (`3_<port>.sock`) is opened with `O_PATH | O_NOFOLLOW` relative to
//!   the directory's descriptor, and the opened inode itself (`fstat`) must be a socket with
//!   exactly one link. A planted symlink is refused (it opens as the link, not its target), as
//!   is a non-socket and a hard link to a socket bound elsewhere (which has two links). With a
//!   single-component name and no symlink, the only sockets that pass are those created in the
//!   fabric directory by `bind()`, or renamed into it by someone who may write to both
//!   directories (the same filesystem, `/run`).
//! - **The connection** goes to `/proc/self/fd/<n>` of that `O_PATH` descriptor, which reaches
//!   exactly the inode that was checked, never whatever the name points to by then.
//! - **The listener** behind the entry (`SO_PEERCRED` of the connected socket: the process that
//!   called `listen`) must be root or the entry's owner, so an enclave only reaches a listener
//!   that its owner created, not a socket someone else's process serves under another user's
//!   name. A mismatch closes the connection before any byte is sent.
//! - **Credentials**: the broker connects with the enclave's unprivileged host identity
//!   ([`HostIdentity`], the uid and gid its root maps to), never with root's. The connecting
//!   broker thread switches its own credentials for the `connect` alone (`AsIdentity`):
//!   supplementary groups cleared, then effective gid, then effective uid, with raw
//!   `setgroups`/`setresgid`/`setresuid` system calls, which change the calling thread only
//!   (glibc's wrappers would change every thread of the monitor). The real and saved ids stay
//!   root's, so the thread switches back right after `connect` (about a dozen system calls,
//!   no thread hand-off on the latency path: every enclave connection already has a broker
//!   thread of its own, which does nothing else while it holds the identity). The kernel then checks the socket's write
//!   permission against the enclave's ids (a listener's mode decides who may connect), and the
//!   listener's `SO_PEERCRED` shows the enclave's uid and gid. Switching makes the kernel reset
//!   the process's dumpable flag; it is put back.
//! - **Vouching**: a host listener accepts a `CONNECT-FROM <cid> <port>` preamble from root, from
//!   its own uid, or from a peer whose effective gid is the group of the root-owned broker
//!   socket `<cid>.sock` in the same directory: a broker with a host identity gives its host
//!   socket that group (`set_entry_group`). Only root can make a root-owned file with an
//!   arbitrary group, and only root or the enclave's own processes (which do not see the host
//!   fabric) can have that gid, so an unprivileged host user can impersonate no enclave, and an
//!   enclave's identity vouches for its own cid only.
//! - **Binding** (`bind_unix_replacing_stale`) replaces only a stale socket (one that refuses
//!   connections) with one link, reached without a symlink, and owned by the caller (or lying
//!   in a directory only the caller may write to); anything else under the name is left alone
//!   and the bind fails as in use.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use socket2::{Domain, SockAddr, Socket, Type};

/// Listen backlog of fabric and native listeners.
pub const LISTEN_BACKLOG: i32 = 128;

/// Removes `path` if it is still the file identified by `id` (not one a successor bound).
pub(crate) fn remove_if_same(path: &Path, id: (u64, u64)) {
    use std::os::unix::fs::MetadataExt;
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if (meta.dev(), meta.ino()) == id {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// How long probing an existing socket file (live or stale?) may take.
const STALE_PROBE_TIMEOUT: Duration = Duration::from_millis(200);

/// The host uid and gid an enclave's root maps to: its connections to parent listeners carry
/// them instead of root's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostIdentity {
    /// Host uid.
    pub uid: u32,
    /// Host gid.
    pub gid: u32,
}

/// Errors of the fabric's filesystem checks.
#[derive(Debug, thiserror::Error)]
pub enum FabricError {
    /// Nothing is bound under the name.
    #[error("no fabric entry {0}")]
    Missing(String),
    /// The entry is a symbolic link.
    #[error("fabric entry {0} is a symbolic link")]
    Symlink(String),
    /// The entry is not a socket.
    #[error("fabric entry {0} is not a socket")]
    NotASocket(String),
    /// The entry has more than one link (a hard link to a socket bound elsewhere).
    #[error("fabric entry {name} has {links} links")]
    Linked {
        /// The entry's name.
        name: String,
        /// Its link count.
        links: u64,
    },
    /// The process listening on the entry is neither root nor the entry's owner.
    #[error("fabric entry {name} is owned by uid {owner} but served by uid {listener}")]
    ListenerNotOwner {
        /// The entry's name.
        name: String,
        /// The entry's owner.
        owner: u32,
        /// The listening process's uid.
        listener: u32,
    },
    /// The fabric directory does not meet the rules.
    #[error("fabric directory {path} is unsafe: {reason}")]
    UnsafeDir {
        /// The directory.
        path: PathBuf,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// The calling thread could not take the enclave's host identity.
    #[error("cannot take host identity {uid}:{gid}")]
    Identity {
        /// The uid.
        uid: u32,
        /// The gid.
        gid: u32,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A system call failed.
    #[error("fabric: {context}")]
    Io {
        /// What was being done.
        context: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

impl FabricError {
    fn io(context: &'static str) -> impl FnOnce(io::Error) -> FabricError {
        move |source| FabricError::Io { context, source }
    }

    /// The errno an enclave's `CONNECT` is answered with.
    pub fn errno(&self) -> i32 {
        match self {
            FabricError::Missing(_) => libc::ECONNREFUSED,
            FabricError::Symlink(_)
            | FabricError::NotASocket(_)
            | FabricError::Linked { .. }
            | FabricError::ListenerNotOwner { .. }
            | FabricError::UnsafeDir { .. } => libc::EACCES,
            FabricError::Identity { .. } => libc::EIO,
            FabricError::Io { source, .. } => match source.raw_os_error() {
                Some(libc::ENOENT) | Some(libc::ECONNREFUSED) | Some(libc::ENOTSOCK) => {
                    libc::ECONNREFUSED
                }
                Some(libc::EAGAIN) | Some(libc::ETIMEDOUT) => libc::ETIMEDOUT,
                Some(libc::EACCES) | Some(libc::EPERM) => libc::EACCES,
                _ => libc::EIO,
            },
        }
    }
}

fn cstring(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn last_error<T>() -> io::Result<T> {
    Err(io::Error::last_os_error())
}

/// `openat(dir, name, flags | O_CLOEXEC)`, retrying on EINTR.
fn openat(dir: RawFd, name: &CString, flags: libc::c_int) -> io::Result<OwnedFd> {
    loop {
        // SAFETY: `name` is a valid NUL-terminated string that outlives the call; the result
        // is checked before use.
        let fd = unsafe { libc::openat(dir, name.as_ptr(), flags | libc::O_CLOEXEC) };
        if fd >= 0 {
            // SAFETY: `fd` was just returned by openat and is owned by nobody else.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// `fstat` of an open descriptor (an `O_PATH` one included).
fn fstat(fd: &OwnedFd) -> io::Result<libc::stat> {
    // SAFETY: all-zero bytes are a valid `stat` (plain integers).
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is an open descriptor and `st` a valid, writable `stat`.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return last_error();
    }
    Ok(st)
}

/// The path that reaches exactly the inode behind `fd`.
fn proc_fd_path(fd: &OwnedFd) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

/// `(dev, ino)`: what identifies a file.
#[allow(clippy::useless_conversion)] // dev_t and ino_t are u64 on Linux, not on every target
fn inode_id(st: &libc::stat) -> (u64, u64) {
    (u64::from(st.st_dev), u64::from(st.st_ino))
}

#[allow(clippy::useless_conversion)] // nlink_t is u32 on some targets
fn link_count(st: &libc::stat) -> u64 {
    u64::from(st.st_nlink)
}

fn file_type(st: &libc::stat) -> libc::mode_t {
    st.st_mode & libc::S_IFMT
}

fn current_euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Opens a directory as `O_PATH`; with `nofollow`, a symlink as its last component is refused.
fn open_dir(path: &Path, nofollow: bool) -> io::Result<OwnedFd> {
    let name = cstring(path.as_os_str().as_bytes())?;
    let extra = if nofollow { libc::O_NOFOLLOW } else { 0 };
    openat(
        libc::AT_FDCWD,
        &name,
        libc::O_PATH | libc::O_DIRECTORY | extra,
    )
}

/// The fabric directory, opened and checked: what dials host listeners on an enclave's behalf
/// (the process broker, and any other backend's) goes through [`FabricDir::connect`].
#[derive(Debug)]
pub struct FabricDir {
    fd: OwnedFd,
}

/// A fabric entry opened without following symlinks and found to be a singly linked socket.
struct Entry {
    fd: OwnedFd,
    st: libc::stat,
}

impl FabricDir {
    /// Creates `dir` (mode 1777) when it does not exist, opens it without following a symlink
    /// and checks owner and mode (see the module docs).
    pub fn open(dir: &Path) -> Result<Self, FabricError> {
        let mut created = false;
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(FabricError::io("creating the fabric directory's parent"))?;
        }
        match std::fs::create_dir(dir) {
            Ok(()) => created = true,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(FabricError::io("creating the fabric directory")(e)),
        }
        Self::checked(dir, created)
    }

    /// Opens the existing fabric directory `dir` without following a symlink and checks owner
    /// and mode; a missing directory is an `Io` error with `ENOENT`.
    pub fn open_existing(dir: &Path) -> Result<Self, FabricError> {
        Self::checked(dir, false)
    }

    fn checked(dir: &Path, created: bool) -> Result<Self, FabricError> {
        let fd = match open_dir(dir, true) {
            Ok(fd) => fd,
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTDIR) | Some(libc::ELOOP)) => {
                return Err(FabricError::UnsafeDir {
                    path: dir.to_path_buf(),
                    reason: "not a directory (or a symlink)",
                })
            }
            Err(e) => return Err(FabricError::io("opening the fabric directory")(e)),
        };
        if created {
            chmod_fd(&fd, 0o1777)
                .map_err(FabricError::io("setting the fabric directory's mode"))?;
        }
        let st = fstat(&fd).map_err(FabricError::io("inspecting the fabric directory"))?;
        check_dir(&st).map_err(|reason| FabricError::UnsafeDir {
            path: dir.to_path_buf(),
            reason,
        })?;
        Ok(Self { fd })
    }

    /// Opens `name` without following a symlink; it must be a socket with one link.
    fn open_entry(&self, name: &str) -> Result<Entry, FabricError> {
        let cname = cstring(name.as_bytes()).map_err(FabricError::io("naming a fabric entry"))?;
        let fd = match openat(self.fd.as_raw_fd(), &cname, libc::O_PATH | libc::O_NOFOLLOW) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                return Err(FabricError::Missing(name.to_owned()))
            }
            Err(e) => return Err(FabricError::io("opening a fabric entry")(e)),
        };
        let st = fstat(&fd).map_err(FabricError::io("inspecting a fabric entry"))?;
        match file_type(&st) {
            libc::S_IFSOCK => {}
            libc::S_IFLNK => return Err(FabricError::Symlink(name.to_owned())),
            _ => return Err(FabricError::NotASocket(name.to_owned())),
        }
        let links = link_count(&st);
        if links != 1 {
            return Err(FabricError::Linked {
                name: name.to_owned(),
                links,
            });
        }
        Ok(Entry { fd, st })
    }

    /// Connects to the listener entry `name` (such as `3_5000.sock`; see the module docs for
    /// every check), with `identity`'s credentials when given. With a `timeout`, a full backlog
    /// makes `connect` wait for at most that long and the socket is blocking; without one, the
    /// socket is non-blocking and a full backlog is `EAGAIN` at once.
    pub fn connect(
        &self,
        name: &str,
        identity: Option<HostIdentity>,
        timeout: Option<Duration>,
    ) -> Result<Socket, FabricError> {
        let entry = self.open_entry(name)?;
        let sock = Socket::new(Domain::UNIX, Type::STREAM, None)
            .map_err(FabricError::io("creating a Unix socket"))?;
        match timeout {
            Some(t) => sock.set_write_timeout(Some(t)),
            None => sock.set_nonblocking(true),
        }
        .map_err(FabricError::io("setting the connect timeout"))?;
        let addr = SockAddr::unix(proc_fd_path(&entry.fd))
            .map_err(FabricError::io("naming a fabric entry"))?;
        {
            let _as = match identity {
                Some(id) => {
                    Some(
                        AsIdentity::enter(id).map_err(|source| FabricError::Identity {
                            uid: id.uid,
                            gid: id.gid,
                            source,
                        })?,
                    )
                }
                None => None,
            };
            sock.connect(&addr)
                .map_err(FabricError::io("connecting to a host listener"))?;
        }
        if timeout.is_some() {
            sock.set_write_timeout(None)
                .map_err(FabricError::io("clearing the connect timeout"))?;
        }
        let listener = peer_ids(&sock)
            .map_err(FabricError::io("reading the listener's credentials"))?
            .0;
        if listener != 0 && listener != entry.st.st_uid {
            let _ = sock.shutdown(std::net::Shutdown::Both);
            return Err(FabricError::ListenerNotOwner {
                name: name.to_owned(),
                owner: entry.st.st_uid,
                listener,
            });
        }
        Ok(sock)
    }
}

/// The rules for the fabric directory's inode.
fn check_dir(st: &libc::stat) -> Result<(), &'static str> {
    if file_type(st) != libc::S_IFDIR {
        return Err("not a directory");
    }
    if st.st_uid != 0 && st.st_uid != current_euid() {
        return Err("owned by another user");
    }
    if st.st_mode & 0o022 != 0 && st.st_mode & libc::S_ISVTX == 0 {
        return Err("writable by others without the sticky bit");
    }
    Ok(())
}

/// `chmod` of the inode behind an `O_PATH` descriptor (`fchmod` refuses those).
fn chmod_fd(fd: &OwnedFd, mode: libc::mode_t) -> io::Result<()> {
    let path = cstring(proc_fd_path(fd).as_bytes())?;
    // SAFETY: `path` is a valid NUL-terminated string that outlives the call.
    if unsafe { libc::chmod(path.as_ptr(), mode) } != 0 {
        return last_error();
    }
    Ok(())
}

/// The `(uid, gid)` of the process at the other end of a Unix socket (`SO_PEERCRED`).
pub(crate) fn peer_ids(sock: &Socket) -> io::Result<(u32, u32)> {
    let cred = nix::sys::socket::getsockopt(sock, nix::sys::socket::sockopt::PeerCredentials)
        .map_err(io::Error::from)?;
    Ok((cred.uid(), cred.gid()))
}

/// True when the broker socket `<dir>/<cid>.sock` vouches for a peer whose effective gid is
/// `gid`: a singly linked, root-owned socket whose group is `gid` (never group 0, which every
/// root-made file has).
pub(crate) fn broker_vouches(dir: &Path, cid: u32, gid: u32) -> bool {
    if gid == 0 {
        return false;
    }
    let Ok(fd) = open_dir(dir, false) else {
        return false;
    };
    let fabric = FabricDir { fd };
    match fabric.open_entry(&format!("{cid}.sock")) {
        Ok(entry) => entry.st.st_uid == 0 && entry.st.st_gid == gid,
        Err(_) => false,
    }
}

/// Gives the socket file `path` (identified by `id`, `(dev, ino)`) the group `gid`, without
/// following a symlink.
pub(crate) fn set_entry_group(path: &Path, id: (u64, u64), gid: u32) -> io::Result<()> {
    let (dir, name) = split(path)?;
    let entry = openat(dir.as_raw_fd(), &name, libc::O_PATH | libc::O_NOFOLLOW)?;
    let st = fstat(&entry)?;
    if file_type(&st) != libc::S_IFSOCK || inode_id(&st) != id {
        return Err(io::Error::from_raw_os_error(libc::ESTALE));
    }
    let proc_path = cstring(proc_fd_path(&entry).as_bytes())?;
    // SAFETY: `proc_path` is a valid NUL-terminated string; uid -1 leaves the owner as is.
    if unsafe { libc::chown(proc_path.as_ptr(), u32::MAX, gid) } != 0 {
        return last_error();
    }
    Ok(())
}

/// The parent directory (opened `O_PATH`) and last component of a socket path.
fn split(path: &Path) -> io::Result<(OwnedFd, CString)> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    Ok((open_dir(parent, false)?, cstring(name.as_bytes())?))
}

/// Why a bind failed.
pub(crate) enum BindError {
    /// A live socket, or something that is not the caller's stale socket, holds the name.
    InUse,
    /// A system call failed.
    Io(&'static str, io::Error),
}

/// Binds and listens on a Unix socket path (mode 0666) and returns the socket and the file's
/// `(dev, ino)`. An existing name is replaced only when it is a stale socket (refusing
/// connections) with one link, not a symlink, owned by the caller or in a directory only the
/// caller may write to; anything else is `InUse`.
pub(crate) fn bind_unix_replacing_stale(path: &Path) -> Result<(Socket, (u64, u64)), BindError> {
    let (dir, name) =
        split(path).map_err(|e| BindError::Io("opening the socket's directory", e))?;
    let sock = Socket::new(Domain::UNIX, Type::STREAM, None)
        .map_err(|e| BindError::Io("creating a Unix socket", e))?;
    let addr = SockAddr::unix(path).map_err(|e| BindError::Io("socket path too long", e))?;
    let bind_err = |e: io::Error| {
        if e.raw_os_error() == Some(libc::EADDRINUSE) {
            BindError::InUse
        } else {
            BindError::Io("binding a Unix socket", e)
        }
    };
    match sock.bind(&addr) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EADDRINUSE) => {
            remove_stale(&dir, &name)?;
            sock.bind(&addr).map_err(bind_err)?;
        }
        Err(e) => return Err(BindError::Io("binding a Unix socket", e)),
    }
    // Our file now (in a sticky or private directory nobody else can replace it); check it
    // without following a symlink and set its mode through the descriptor.
    let mine = || -> io::Result<(u64, u64)> {
        let entry = openat(dir.as_raw_fd(), &name, libc::O_PATH | libc::O_NOFOLLOW)?;
        let st = fstat(&entry)?;
        if file_type(&st) != libc::S_IFSOCK || st.st_uid != current_euid() {
            return Err(io::Error::from_raw_os_error(libc::ESTALE));
        }
        chmod_fd(&entry, 0o666)?;
        Ok(inode_id(&st))
    };
    let id = mine().map_err(|e| BindError::Io("setting the socket's mode", e))?;
    sock.listen(LISTEN_BACKLOG)
        .map_err(|e| BindError::Io("listening on a Unix socket", e))?;
    Ok((sock, id))
}

/// Removes `name` in `dir` when it is the caller's own stale socket; `InUse` otherwise.
fn remove_stale(dir: &OwnedFd, name: &CString) -> Result<(), BindError> {
    let entry = match openat(dir.as_raw_fd(), name, libc::O_PATH | libc::O_NOFOLLOW) {
        Ok(fd) => fd,
        // Gone in the meantime: bind again.
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
        Err(_) => return Err(BindError::InUse),
    };
    let st = fstat(&entry).map_err(|e| BindError::Io("inspecting a socket file", e))?;
    let dir_st = fstat(dir).map_err(|e| BindError::Io("inspecting a socket's directory", e))?;
    // Only the caller (or root) can have put anything into a directory only the caller may
    // write to, so there a stale socket may belong to someone else (say, the enclave's uid).
    let private_dir = dir_st.st_uid == current_euid() && dir_st.st_mode & 0o022 == 0;
    if file_type(&st) != libc::S_IFSOCK
        || !(st.st_uid == current_euid() || private_dir)
        || link_count(&st) != 1
    {
        return Err(BindError::InUse);
    }
    let probe = Socket::new(Domain::UNIX, Type::STREAM, None)
        .map_err(|e| BindError::Io("creating a Unix socket", e))?;
    probe
        .set_write_timeout(Some(STALE_PROBE_TIMEOUT))
        .map_err(|e| BindError::Io("setting the probe's timeout", e))?;
    let target = SockAddr::unix(proc_fd_path(&entry))
        .map_err(|e| BindError::Io("naming a socket file", e))?;
    match probe.connect(&target) {
        Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {}
        // Live (or slow): leave it.
        _ => return Err(BindError::InUse),
    }
    // Still the same file? (Only its owner or root can have replaced it.)
    // SAFETY: all-zero bytes are a valid `stat` (plain integers).
    let mut now: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `dir` is open, `name` NUL-terminated, `now` a writable `stat`.
    let rc = unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            &mut now,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc != 0 || inode_id(&now) != inode_id(&st) {
        return Err(BindError::InUse);
    }
    // SAFETY: `dir` is open and `name` NUL-terminated; flags 0 removes a non-directory.
    if unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) } != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ENOENT) {
            return Err(BindError::Io("removing a stale socket file", e));
        }
    }
    Ok(())
}

/// Why an enclave's host socket could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum HostSocketError {
    /// A live socket, or something that is not the caller's stale socket, holds the name.
    #[error("{0} is in use")]
    InUse(PathBuf),
    /// A system call failed.
    #[error("enclave host socket: {context}")]
    Io {
        /// What was being done.
        context: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// An enclave's host-facing socket `<fabric>/<cid>.sock`, bound and listening by the rules of
/// the broker's own, for the backends that serve an enclave's vsock without a broker (the VM's
/// vsock device): mode 0666; a stale socket of the caller's is replaced, anything else under
/// the name is left alone and the bind fails; with the enclave's [`HostIdentity`] the file gets
/// its gid as group, so host listeners believe the `CONNECT-FROM <cid>` preambles of the
/// connections made with that identity ([`FabricDir::connect`]). Dropping it removes the file
/// when it is still this socket's.
#[derive(Debug)]
pub struct EnclaveHostSocket {
    sock: Socket,
    path: PathBuf,
    id: (u64, u64),
}

impl EnclaveHostSocket {
    /// Binds `<fabric_dir>/<cid>.sock` (the directory should have been checked with
    /// [`FabricDir::open`]); `identity` is the enclave's host identity, when it has one.
    pub fn bind(
        fabric_dir: &Path,
        cid: u32,
        identity: Option<HostIdentity>,
    ) -> Result<Self, HostSocketError> {
        let path = fabric_dir.join(format!("{cid}.sock"));
        let (sock, id) = bind_unix_replacing_stale(&path).map_err(|e| match e {
            BindError::InUse => HostSocketError::InUse(path.clone()),
            BindError::Io(context, source) => HostSocketError::Io { context, source },
        })?;
        if let Some(identity) = identity {
            if let Err(source) = set_entry_group(&path, id, identity.gid) {
                remove_if_same(&path, id);
                return Err(HostSocketError::Io {
                    context: "giving the host socket the enclave's group",
                    source,
                });
            }
        }
        Ok(Self { sock, path, id })
    }

    /// Where it is bound.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The listening socket.
    pub fn socket(&self) -> &Socket {
        &self.sock
    }
}

impl Drop for EnclaveHostSocket {
    fn drop(&mut self) {
        remove_if_same(&self.path, self.id);
    }
}

/// Raw `setgroups`: changes the calling thread only.
fn sys_setgroups(groups: &[libc::gid_t]) -> io::Result<()> {
    // SAFETY: the pointer and length describe a live slice of gids (or 0 and a dangling but
    // unread pointer when empty).
    let rc = unsafe { libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) };
    if rc != 0 {
        return last_error();
    }
    Ok(())
}

/// Raw `setresuid(-1, euid, -1)`: changes the calling thread only.
fn sys_set_euid(euid: u32) -> io::Result<()> {
    // SAFETY: plain integer arguments; -1 (u32::MAX) leaves the real and saved uid as they are.
    let rc = unsafe { libc::syscall(libc::SYS_setresuid, u32::MAX, euid, u32::MAX) };
    if rc != 0 {
        return last_error();
    }
    Ok(())
}

/// Raw `setresgid(-1, egid, -1)`: changes the calling thread only.
fn sys_set_egid(egid: u32) -> io::Result<()> {
    // SAFETY: plain integer arguments; -1 (u32::MAX) leaves the real and saved gid as they are.
    let rc = unsafe { libc::syscall(libc::SYS_setresgid, u32::MAX, egid, u32::MAX) };
    if rc != 0 {
        return last_error();
    }
    Ok(())
}

fn thread_groups() -> io::Result<Vec<libc::gid_t>> {
    // SAFETY: a zero size with a null pointer only asks for the count.
    let n = unsafe { libc::getgroups(0, std::ptr::null_mut()) };
    if n < 0 {
        return last_error();
    }
    let mut groups = vec![0 as libc::gid_t; usize::try_from(n).unwrap_or(0)];
    // SAFETY: `groups` has room for `n` gids.
    let got = unsafe { libc::getgroups(n, groups.as_mut_ptr()) };
    if got < 0 {
        return last_error();
    }
    groups.truncate(usize::try_from(got).unwrap_or(0));
    Ok(groups)
}

fn dumpable() -> libc::c_int {
    // SAFETY: PR_GET_DUMPABLE takes no pointer arguments.
    unsafe { libc::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0) }
}

/// The calling thread's effective credentials switched to a [`HostIdentity`] until dropped
/// (see the module docs). A no-op when the thread already has that identity.
pub(crate) struct AsIdentity {
    saved: Option<Saved>,
}

struct Saved {
    euid: u32,
    egid: u32,
    groups: Vec<libc::gid_t>,
    dumpable: libc::c_int,
}

impl AsIdentity {
    /// Switches the calling thread to `id`.
    pub(crate) fn enter(id: HostIdentity) -> io::Result<Self> {
        let euid = current_euid();
        // SAFETY: getegid has no preconditions and cannot fail.
        let egid = unsafe { libc::getegid() };
        if euid == id.uid && egid == id.gid {
            return Ok(Self { saved: None });
        }
        let saved = Saved {
            euid,
            egid,
            groups: thread_groups()?,
            dumpable: dumpable(),
        };
        if !saved.groups.is_empty() {
            sys_setgroups(&[])?;
        }
        if let Err(e) = sys_set_egid(id.gid) {
            let _ = sys_setgroups(&saved.groups);
            return Err(e);
        }
        if let Err(e) = sys_set_euid(id.uid) {
            let _ = sys_set_egid(saved.egid);
            let _ = sys_setgroups(&saved.groups);
            return Err(e);
        }
        Ok(Self { saved: Some(saved) })
    }
}

impl Drop for AsIdentity {
    fn drop(&mut self) {
        let Some(saved) = self.saved.take() else {
            return;
        };
        // Back up in the reverse order: the uid first, which gives back the capabilities the
        // gid and groups need. Should this fail the thread simply keeps fewer privileges.
        let restored = sys_set_euid(saved.euid)
            .and_then(|()| sys_set_egid(saved.egid))
            .and_then(|()| {
                if saved.groups.is_empty() {
                    Ok(())
                } else {
                    sys_setgroups(&saved.groups)
                }
            });
        if let Err(e) = restored {
            tracing::error!(error = %e, "cannot restore a broker thread's credentials");
            return;
        }
        if saved.dumpable > 0 && dumpable() != saved.dumpable {
            // SAFETY: PR_SET_DUMPABLE takes an integer; the value is one the kernel gave.
            unsafe {
                libc::prctl(
                    libc::PR_SET_DUMPABLE,
                    libc::c_ulong::try_from(saved.dumpable).unwrap_or(1),
                    0,
                    0,
                    0,
                )
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    #[test]
    fn fabric_dir_is_created_sticky_and_checked() {
        let base = tempdir();
        let dir = base.path().join("run/vsock");
        FabricDir::open(&dir).unwrap();
        let meta = std::fs::symlink_metadata(&dir).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(meta.permissions().mode() & 0o7777, 0o1777);
        // Again: it exists.
        FabricDir::open(&dir).unwrap();
        // World-writable without the sticky bit: refused.
        let loose = base.path().join("loose");
        std::fs::create_dir(&loose).unwrap();
        std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(matches!(
            FabricDir::open(&loose),
            Err(FabricError::UnsafeDir { .. })
        ));
        // A symlink to a directory: refused.
        let link = base.path().join("link");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        assert!(matches!(
            FabricDir::open(&link),
            Err(FabricError::UnsafeDir { .. })
        ));
    }

    #[test]
    fn entries_must_be_singly_linked_sockets() {
        let base = tempdir();
        let dir = base.path().join("vsock");
        let fabric = FabricDir::open(&dir).unwrap();
        let _l = std::os::unix::net::UnixListener::bind(dir.join("ok.sock")).unwrap();
        assert!(fabric.open_entry("ok.sock").is_ok());
        assert!(matches!(
            fabric.open_entry("none.sock"),
            Err(FabricError::Missing(_))
        ));
        std::os::unix::fs::symlink(dir.join("ok.sock"), dir.join("link.sock")).unwrap();
        assert!(matches!(
            fabric.open_entry("link.sock"),
            Err(FabricError::Symlink(_))
        ));
        std::fs::write(dir.join("file.sock"), b"x").unwrap();
        assert!(matches!(
            fabric.open_entry("file.sock"),
            Err(FabricError::NotASocket(_))
        ));
        std::fs::hard_link(dir.join("ok.sock"), dir.join("hard.sock")).unwrap();
        assert!(matches!(
            fabric.open_entry("hard.sock"),
            Err(FabricError::Linked { links: 2, .. })
        ));
        assert_eq!(
            FabricError::Missing(String::new()).errno(),
            libc::ECONNREFUSED
        );
        assert_eq!(FabricError::Symlink(String::new()).errno(), libc::EACCES);
    }

    #[test]
    fn a_listener_must_be_the_entrys_owner_or_root() {
        if current_euid() != 0 {
            return; // needs root to act as two users
        }
        use std::os::unix::fs::PermissionsExt;
        let base = tempdir();
        std::fs::set_permissions(base.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let dir = base.path().join("vsock");
        let fabric = FabricDir::open(&dir).unwrap();
        // A user's own listener is reachable (non-blocking connect: the socket stays so).
        let path = dir.join("3_1.sock");
        let own = std::thread::spawn({
            let path = path.clone();
            move || {
                let id = HostIdentity {
                    uid: 4_000_001,
                    gid: 4_000_001,
                };
                let _as = AsIdentity::enter(id).unwrap();
                std::os::unix::net::UnixListener::bind(path).unwrap()
            }
        })
        .join()
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        let sock = fabric.connect("3_1.sock", None, None).unwrap();
        assert!(sock.nonblocking().unwrap());
        drop(sock);
        // The same listener under another user's name is not.
        std::os::unix::fs::chown(&path, Some(4_000_002), None).unwrap();
        assert!(matches!(
            fabric.connect("3_1.sock", None, Some(Duration::from_secs(1))),
            Err(FabricError::ListenerNotOwner {
                owner: 4_000_002,
                listener: 4_000_001,
                ..
            })
        ));
        drop(own);
    }

    #[test]
    fn binding_replaces_only_our_own_stale_sockets() {
        let base = tempdir();
        let path = base.path().join("a.sock");
        // A stale socket of ours is replaced.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let (_s, id) = match bind_unix_replacing_stale(&path) {
            Ok(v) => v,
            Err(_) => panic!("stale socket not replaced"),
        };
        assert!(id.1 != 0);
        // A live one is not.
        assert!(matches!(
            bind_unix_replacing_stale(&path),
            Err(BindError::InUse)
        ));
        // Neither are a symlink (dangling or not) nor a regular file, and both stay.
        let target = base.path().join("elsewhere.sock");
        drop(std::os::unix::net::UnixListener::bind(&target).unwrap());
        let link = base.path().join("b.sock");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(matches!(
            bind_unix_replacing_stale(&link),
            Err(BindError::InUse)
        ));
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert!(target.exists());
        let file = base.path().join("c.sock");
        std::fs::write(&file, b"keep").unwrap();
        assert!(matches!(
            bind_unix_replacing_stale(&file),
            Err(BindError::InUse)
        ));
        assert_eq!(std::fs::read(&file).unwrap(), b"keep");
    }

    #[test]
    fn identity_switch_is_per_thread_and_undone() {
        if current_euid() != 0 {
            return; // needs root to switch
        }
        let id = HostIdentity {
            uid: 1_000_004_242,
            gid: 1_000_004_242,
        };
        let before_dumpable = dumpable();
        let (switched_tx, switched_rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let worker = std::thread::spawn(move || {
            let before = thread_groups().unwrap();
            {
                let _as = AsIdentity::enter(id).unwrap();
                // SAFETY: getegid cannot fail.
                let egid = unsafe { libc::getegid() };
                switched_tx
                    .send((current_euid(), egid, thread_groups().unwrap()))
                    .unwrap();
                done_rx.recv().unwrap();
            }
            (current_euid(), thread_groups().unwrap() == before)
        });
        let (euid, egid, groups) = switched_rx.recv().unwrap();
        assert_eq!((euid, egid), (id.uid, id.gid));
        assert!(groups.is_empty());
        // The other threads of the process keep root's credentials.
        assert_eq!(current_euid(), 0);
        done_tx.send(()).unwrap();
        assert_eq!(worker.join().unwrap(), (0, true));
        // (Another test's switch may flip the process's flag for a moment.)
        let deadline = std::time::Instant::now() + Duration::from_secs(1);
        while dumpable() != before_dumpable && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(dumpable(), before_dumpable);
    }
}
