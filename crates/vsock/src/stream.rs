//! Blocking vsock streams and listeners over the three transports: the host fabric (Unix
//! sockets in `<run>/vsock/`), the enclave side (`/dev/vsock.sock`, the broker's line
//! protocol) and native `AF_VSOCK`.
//!
//! Every stream is, underneath, a connected stream socket of the kernel (a Unix socket for the
//! fabric and enclave transports, since the broker passes connected sockets rather than relaying
//! bytes; an `AF_VSOCK` socket natively), so reads and writes cost what the kernel charges and
//! nothing more.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use socket2::{Domain, SockAddr, Socket, Type};

use crate::addr::{is_enclave_cid, VsockAddr, PARENT_CID, VMADDR_CID_ANY, VMADDR_PORT_ANY};
use crate::fdpass::FdLine;
use crate::hostfs::{
    bind_unix_replacing_stale, broker_vouches, peer_ids, remove_if_same, BindError, FabricDir,
    FabricError,
};
use crate::proto::{self, BrokerReply, LineBuf, ProtoError};
use crate::ratelimit::RateLimiter;

/// Where a process enclave finds its broker.
pub const ENCLAVE_SOCKET_PATH: &str = "/dev/vsock.sock";
/// Default run directory.
pub const DEFAULT_RUN_DIR: &str = "/run/cloister";
/// Environment variable overriding the run directory.
pub const RUN_DIR_ENV: &str = "CLOISTER_RUN_DIR";
/// Environment variable forcing a transport: `fabric`, `enclave` or `native`.
pub const TRANSPORT_ENV: &str = "CLOISTER_VSOCK_TRANSPORT";
/// Name of the fabric directory inside the run directory.
pub const FABRIC_SUBDIR: &str = "vsock";
/// Device node whose presence means the kernel offers AF_VSOCK.
pub const VSOCK_DEVICE: &str = "/dev/vsock";
/// Longest time a handshake (line exchange) may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
pub use crate::hostfs::LISTEN_BACKLOG;

/// Errors of vsock streams and listeners.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// Nothing listens at the address (or the enclave does not exist).
    #[error("connection to vsock {addr} refused")]
    Refused {
        /// The address dialled.
        addr: VsockAddr,
    },
    /// The broker refused the address by policy (an enclave may reach only cid 3 and cid 0).
    #[error("connection to vsock {addr} not permitted")]
    NotPermitted {
        /// The address dialled.
        addr: VsockAddr,
    },
    /// The port is already bound.
    #[error("vsock port {port} already in use")]
    AddrInUse {
        /// The port.
        port: u32,
    },
    /// The address cannot be used with this transport.
    #[error("vsock address {addr} is not valid here: {reason}")]
    InvalidAddress {
        /// The address.
        addr: VsockAddr,
        /// Why.
        reason: &'static str,
    },
    /// The broker answered with an error.
    #[error("vsock {addr}: the broker answered errno {errno}")]
    Remote {
        /// The address dialled.
        addr: VsockAddr,
        /// The errno value of its `ERR` line.
        errno: i32,
    },
    /// A fabric peer is neither root nor us (nor, for a listener, an enclave identity the
    /// named cid's broker socket vouches for).
    #[error("fabric peer at {path} is uid {uid}: neither root, us, nor vouched for")]
    UntrustedPeer {
        /// The socket path.
        path: PathBuf,
        /// The peer's uid.
        uid: u32,
    },
    /// The host fabric directory or one of its entries failed a check.
    #[error("host fabric check failed")]
    Fabric(#[source] FabricError),
    /// The peer broke the handshake protocol (or timed out in it).
    #[error("vsock handshake failed while {context}")]
    Protocol {
        /// What was being done.
        context: &'static str,
        /// The cause.
        #[source]
        source: ProtoError,
    },
    /// The enclave listener's control connection ended (the broker went away).
    #[error("the listener's control connection to the broker closed")]
    ListenerClosed,
    /// A system call failed.
    #[error("vsock: {context}")]
    Io {
        /// What was being done.
        context: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

impl VsockError {
    fn io(context: &'static str) -> impl FnOnce(io::Error) -> VsockError {
        move |source| VsockError::Io { context, source }
    }

    fn proto(context: &'static str) -> impl FnOnce(ProtoError) -> VsockError {
        move |source| VsockError::Protocol { context, source }
    }

    /// True for a non-blocking operation that would have blocked.
    pub fn is_would_block(&self) -> bool {
        match self {
            VsockError::Io { source, .. } => source.kind() == io::ErrorKind::WouldBlock,
            VsockError::Protocol {
                source: ProtoError::Io(e),
                ..
            } => e.kind() == io::ErrorKind::WouldBlock,
            _ => false,
        }
    }

    /// The closest `io::ErrorKind`.
    pub fn kind(&self) -> io::ErrorKind {
        match self {
            VsockError::Refused { .. } => io::ErrorKind::ConnectionRefused,
            VsockError::NotPermitted { .. }
            | VsockError::UntrustedPeer { .. }
            | VsockError::Fabric(_) => io::ErrorKind::PermissionDenied,
            VsockError::AddrInUse { .. } => io::ErrorKind::AddrInUse,
            VsockError::InvalidAddress { .. } => io::ErrorKind::InvalidInput,
            VsockError::Remote { errno, .. } => io::Error::from_raw_os_error(*errno).kind(),
            VsockError::Protocol { source, .. } => match source {
                ProtoError::Io(e) => e.kind(),
                ProtoError::Closed { .. } => io::ErrorKind::ConnectionReset,
                _ => io::ErrorKind::InvalidData,
            },
            VsockError::ListenerClosed => io::ErrorKind::ConnectionAborted,
            VsockError::Io { source, .. } => source.kind(),
        }
    }
}

impl From<VsockError> for io::Error {
    fn from(e: VsockError) -> Self {
        io::Error::new(e.kind(), e)
    }
}

/// How vsock addresses are reached from this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// The host fabric: Unix sockets in this directory (`<run>/vsock`).
    Fabric(PathBuf),
    /// Inside a process enclave: the broker's socket at this path.
    Enclave(PathBuf),
    /// The kernel's AF_VSOCK.
    Native,
}

/// The run directory a program set for itself ([`set_run_dir`]), overriding the environment.
static RUN_DIR_OVERRIDE: std::sync::RwLock<Option<PathBuf>> = std::sync::RwLock::new(None);

/// Sets this process's run directory, in place of `$CLOISTER_RUN_DIR` (a program that takes
/// its configuration from elsewhere, such as the `cloister` CLI with nitro-cli's
/// `NITRO_CLI_SOCKETS_PATH`); `None` goes back to the environment. Like a set
/// `$CLOISTER_RUN_DIR`, a set directory makes [`Transport::detect`] choose the host fabric.
pub fn set_run_dir(dir: Option<PathBuf>) {
    *RUN_DIR_OVERRIDE
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = dir;
}

/// The run directory given by [`set_run_dir`] or `$CLOISTER_RUN_DIR`, if any.
fn configured_run_dir() -> Option<PathBuf> {
    let set = RUN_DIR_OVERRIDE
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    set.or_else(|| {
        std::env::var_os(RUN_DIR_ENV)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    })
}

/// The run directory: the one set with [`set_run_dir`], else `$CLOISTER_RUN_DIR`, else
/// `/run/cloister`.
pub fn run_dir() -> PathBuf {
    configured_run_dir().unwrap_or_else(|| PathBuf::from(DEFAULT_RUN_DIR))
}

/// The host fabric directory: `<run>/vsock`.
pub fn fabric_dir() -> PathBuf {
    run_dir().join(FABRIC_SUBDIR)
}

impl Transport {
    /// Chooses the transport: `$CLOISTER_VSOCK_TRANSPORT` when set; else the enclave side when
    /// `/dev/vsock.sock` exists; else the host fabric when a run directory is set ([`run_dir`]), when
    /// `<run>/vsock` exists or when the kernel has no `/dev/vsock`; else native AF_VSOCK.
    pub fn detect() -> Transport {
        match std::env::var(TRANSPORT_ENV).as_deref() {
            Ok("fabric") => return Transport::Fabric(fabric_dir()),
            Ok("enclave") => return Transport::Enclave(PathBuf::from(ENCLAVE_SOCKET_PATH)),
            Ok("native") => return Transport::Native,
            _ => {}
        }
        if Path::new(ENCLAVE_SOCKET_PATH).exists() {
            return Transport::Enclave(PathBuf::from(ENCLAVE_SOCKET_PATH));
        }
        let fabric = fabric_dir();
        if configured_run_dir().is_some() || fabric.is_dir() || !Path::new(VSOCK_DEVICE).exists() {
            return Transport::Fabric(fabric);
        }
        Transport::Native
    }
}

/// Log limiter for peer-triggered problems seen by listeners.
static ACCEPT_LOG: std::sync::LazyLock<RateLimiter> =
    std::sync::LazyLock::new(|| RateLimiter::new(10, Duration::from_secs(60)));

/// Connects a Unix stream socket with a bounded wait (a full backlog blocks `connect` for at
/// most the send timeout).
pub(crate) fn connect_unix(path: &Path, timeout: Duration) -> io::Result<Socket> {
    let sock = Socket::new(Domain::UNIX, Type::STREAM, None)?;
    sock.set_write_timeout(Some(timeout))?;
    sock.connect(&SockAddr::unix(path)?)?;
    sock.set_write_timeout(None)?;
    Ok(sock)
}

/// The uid of the process at the other end of a Unix socket.
pub(crate) fn peer_uid(sock: &Socket) -> io::Result<u32> {
    peer_ids(sock).map(|(uid, _)| uid)
}

/// Fabric peers we believe: root (the runtime) or our own user.
fn trusted_uid(uid: u32) -> bool {
    uid == 0 || uid == nix::unistd::geteuid().as_raw()
}

fn is_refusal(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOENT) | Some(libc::ECONNREFUSED) | Some(libc::ENOTSOCK)
    )
}

/// A connected vsock stream (blocking).
#[derive(Debug)]
pub struct VsockStream {
    sock: Socket,
    local: VsockAddr,
    peer: VsockAddr,
}

impl VsockStream {
    /// Connects to `addr` over the transport [`Transport::detect`] picks.
    pub fn connect(addr: VsockAddr) -> Result<Self, VsockError> {
        Self::connect_with(&Transport::detect(), addr)
    }

    /// Connects to `addr` over `transport`.
    pub fn connect_with(transport: &Transport, addr: VsockAddr) -> Result<Self, VsockError> {
        match transport {
            Transport::Fabric(dir) => Self::connect_fabric(dir, addr),
            Transport::Enclave(path) => Self::connect_enclave(path, addr),
            Transport::Native => Self::connect_native(addr),
        }
    }

    /// Host side: connects through the fabric in `dir` to an enclave (`addr.cid` >= 4), with
    /// the `CONNECT <port>` / `OK <host_port>` handshake.
    pub fn connect_fabric(dir: &Path, addr: VsockAddr) -> Result<Self, VsockError> {
        if !is_enclave_cid(addr.cid) {
            return Err(VsockError::InvalidAddress {
                addr,
                reason: "the host fabric reaches enclaves only (cid 4 and above)",
            });
        }
        if addr.port == VMADDR_PORT_ANY {
            return Err(VsockError::InvalidAddress {
                addr,
                reason: "cannot connect to the wildcard port",
            });
        }
        // The broker's socket, reached as the fabric's rules say (no symlink, a singly linked
        // socket served by its owner), then believed only when root or we serve it.
        let name = format!("{}.sock", addr.cid);
        let path = dir.join(&name);
        let connected = FabricDir::open_existing(dir)
            .and_then(|fabric| fabric.connect(&name, None, Some(HANDSHAKE_TIMEOUT)));
        let sock = match connected {
            Ok(s) => s,
            Err(FabricError::Missing(_)) => return Err(VsockError::Refused { addr }),
            Err(FabricError::Io { source, .. }) if is_refusal(&source) => {
                return Err(VsockError::Refused { addr })
            }
            Err(FabricError::Io { context, source }) => {
                return Err(VsockError::Io { context, source })
            }
            Err(e) => return Err(VsockError::Fabric(e)),
        };
        let uid = peer_uid(&sock).map_err(VsockError::io("reading the broker's credentials"))?;
        if !trusted_uid(uid) {
            return Err(VsockError::UntrustedPeer { path, uid });
        }
        sock.set_read_timeout(Some(HANDSHAKE_TIMEOUT))
            .and_then(|()| sock.set_write_timeout(Some(HANDSHAKE_TIMEOUT)))
            .map_err(VsockError::io("setting handshake timeouts"))?;
        (&sock)
            .write_all(proto::host_connect_line(addr.port).as_bytes())
            .map_err(VsockError::io("sending CONNECT"))?;
        let mut line = LineBuf::new();
        match proto::read_line(&mut &sock, &mut line) {
            Ok(()) => {}
            Err(ProtoError::Closed { got: 0 }) => return Err(VsockError::Refused { addr }),
            Err(e) => return Err(VsockError::proto("reading the broker's OK")(e)),
        }
        let host_port = match proto::parse_reply(line.line()) {
            Ok(BrokerReply::Ok(Some(p))) => p,
            Ok(_) => {
                return Err(VsockError::Protocol {
                    context: "reading the broker's OK",
                    source: ProtoError::Malformed("expected OK <port>"),
                })
            }
            Err(e) => return Err(VsockError::proto("reading the broker's OK")(e)),
        };
        sock.set_read_timeout(None)
            .and_then(|()| sock.set_write_timeout(None))
            .map_err(VsockError::io("clearing handshake timeouts"))?;
        Ok(Self {
            sock,
            local: VsockAddr::new(PARENT_CID, host_port),
            peer: addr,
        })
    }

    /// Enclave side: connects through the broker socket at `socket` (normally
    /// `/dev/vsock.sock`). The local cid is not known inside a process enclave and is reported
    /// as `VMADDR_CID_ANY`.
    pub fn connect_enclave(socket: &Path, addr: VsockAddr) -> Result<Self, VsockError> {
        let ctl = match connect_unix(socket, HANDSHAKE_TIMEOUT) {
            Ok(s) => s,
            Err(e) => {
                return Err(VsockError::io("connecting to the enclave's broker socket")(
                    e,
                ))
            }
        };
        ctl.set_read_timeout(Some(HANDSHAKE_TIMEOUT))
            .and_then(|()| ctl.set_write_timeout(Some(HANDSHAKE_TIMEOUT)))
            .map_err(VsockError::io("setting handshake timeouts"))?;
        (&ctl)
            .write_all(proto::enclave_connect_line(addr).as_bytes())
            .map_err(VsockError::io("sending CONNECT"))?;
        let mut reply = FdLine::default();
        reply
            .read(ctl.as_fd(), false)
            .map_err(VsockError::proto("reading the broker's reply"))?;
        match proto::parse_reply(reply.line.line()) {
            Ok(BrokerReply::Ok(Some(port))) => {
                // The connected socket comes with the OK line; without one, this connection
                // itself carries the stream (the broker serves it, e.g. the NSM).
                let sock = match reply.fd.take() {
                    Some(fd) => Socket::from(fd),
                    None => {
                        ctl.set_read_timeout(None)
                            .and_then(|()| ctl.set_write_timeout(None))
                            .map_err(VsockError::io("clearing handshake timeouts"))?;
                        ctl
                    }
                };
                Ok(Self {
                    sock,
                    local: VsockAddr::new(VMADDR_CID_ANY, port),
                    peer: addr,
                })
            }
            Ok(BrokerReply::Err(libc::ECONNREFUSED)) => Err(VsockError::Refused { addr }),
            Ok(BrokerReply::Err(libc::EACCES)) => Err(VsockError::NotPermitted { addr }),
            Ok(BrokerReply::Err(errno)) => Err(VsockError::Remote { addr, errno }),
            Ok(_) => Err(VsockError::Protocol {
                context: "reading the broker's reply",
                source: ProtoError::Malformed("expected OK <port> or ERR"),
            }),
            Err(e) => Err(VsockError::proto("reading the broker's reply")(e)),
        }
    }

    /// Native AF_VSOCK.
    pub fn connect_native(addr: VsockAddr) -> Result<Self, VsockError> {
        let sock = Socket::new(Domain::VSOCK, Type::STREAM, None)
            .map_err(VsockError::io("creating an AF_VSOCK socket"))?;
        match sock.connect(&SockAddr::vsock(addr.cid, addr.port)) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
                return Err(VsockError::Refused { addr })
            }
            Err(e) => return Err(VsockError::io("connecting an AF_VSOCK socket")(e)),
        }
        let local = sock
            .local_addr()
            .ok()
            .and_then(|a| a.as_vsock_address())
            .map_or(VsockAddr::new(VMADDR_CID_ANY, VMADDR_PORT_ANY), |(c, p)| {
                VsockAddr::new(c, p)
            });
        Ok(Self {
            sock,
            local,
            peer: addr,
        })
    }

    /// Wraps an already connected stream socket (for callers that pass sockets around).
    pub fn from_parts(fd: OwnedFd, local: VsockAddr, peer: VsockAddr) -> Self {
        Self {
            sock: Socket::from(fd),
            local,
            peer,
        }
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> VsockAddr {
        self.peer
    }

    /// Our address (cid `VMADDR_CID_ANY` where the transport cannot tell).
    pub fn local_addr(&self) -> VsockAddr {
        self.local
    }

    /// A second handle to the same stream.
    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(Self {
            sock: self.sock.try_clone()?,
            local: self.local,
            peer: self.peer,
        })
    }

    /// Shuts down reading, writing or both.
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        self.sock.shutdown(how)
    }

    /// Read timeout (`None`: block forever).
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.sock.set_read_timeout(timeout)
    }

    /// Write timeout (`None`: block forever).
    pub fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.sock.set_write_timeout(timeout)
    }

    /// Non-blocking mode.
    pub fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        self.sock.set_nonblocking(nonblocking)
    }

    /// The connected socket, for callers that hand it on (a supervisor installing it in
    /// another process).
    pub fn into_fd(self) -> OwnedFd {
        self.sock.into()
    }

    /// Host side: reads the broker's `CONNECT-FROM` preamble from `sock`, a connection accepted
    /// on a fabric listener of port `port` bound in `dir` (the checks of
    /// [`VsockListener::accept`]).
    pub fn from_fabric_accept(sock: OwnedFd, port: u32, dir: &Path) -> Result<Self, VsockError> {
        fabric_handshake(
            Socket::from(sock),
            VsockAddr::new(PARENT_CID, port),
            Some(dir),
        )
    }

    #[cfg(feature = "tokio")]
    pub(crate) fn into_parts(self) -> (Socket, VsockAddr, VsockAddr) {
        (self.sock, self.local, self.peer)
    }
}

impl Read for VsockStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.sock).read(buf)
    }
}

impl Read for &VsockStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.sock).read(buf)
    }
}

impl Write for VsockStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&self.sock).write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Write for &VsockStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&self.sock).write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsRawFd for VsockStream {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

impl AsFd for VsockStream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

impl From<VsockStream> for OwnedFd {
    fn from(s: VsockStream) -> OwnedFd {
        s.sock.into()
    }
}

#[derive(Debug)]
enum ListenerKind {
    /// Bound `<dir>/3_<port>.sock`; `(dev, ino)` identify our file for removal on drop.
    Fabric {
        sock: Socket,
        path: PathBuf,
        id: (u64, u64),
    },
    /// The control connection to the broker that carries `ACCEPT` lines and descriptors.
    Enclave {
        ctl: Socket,
        pending: Mutex<FdLine>,
    },
    Native {
        sock: Socket,
    },
}

/// What a non-blocking accept step produced.
pub(crate) enum RawAccept {
    /// A finished stream.
    Ready(VsockStream),
    /// A fabric connection that still has to send its `CONNECT-FROM` line.
    Fabric(Socket),
}

/// A vsock listener (blocking).
#[derive(Debug)]
pub struct VsockListener {
    kind: ListenerKind,
    local: VsockAddr,
}

impl VsockListener {
    /// Listens on `port` over the transport [`Transport::detect`] picks.
    pub fn bind(port: u32) -> Result<Self, VsockError> {
        Self::bind_with(&Transport::detect(), port)
    }

    /// Listens on `port` over `transport`.
    pub fn bind_with(transport: &Transport, port: u32) -> Result<Self, VsockError> {
        match transport {
            Transport::Fabric(dir) => Self::bind_fabric(dir, port),
            Transport::Enclave(path) => Self::bind_enclave(path, port),
            Transport::Native => Self::bind_native(port),
        }
    }

    /// Host side: binds `<dir>/3_<port>.sock` (creating `dir`, mode 1777, when missing). A
    /// stale socket file (nobody accepting) is replaced; a live one is `AddrInUse`.
    pub fn bind_fabric(dir: &Path, port: u32) -> Result<Self, VsockError> {
        let addr = VsockAddr::new(PARENT_CID, port);
        if port == VMADDR_PORT_ANY {
            return Err(VsockError::InvalidAddress {
                addr,
                reason: "the fabric needs an explicit port",
            });
        }
        ensure_fabric_dir(dir)?;
        let path = dir.join(format!("{PARENT_CID}_{port}.sock"));
        let (sock, id) = bind_unix_replacing_stale(&path).map_err(|e| match e {
            BindError::InUse => VsockError::AddrInUse { port },
            BindError::Io(context, source) => VsockError::Io { context, source },
        })?;
        Ok(Self {
            kind: ListenerKind::Fabric { sock, path, id },
            local: addr,
        })
    }

    /// Enclave side: `LISTEN <port>` on the broker socket at `socket`.
    pub fn bind_enclave(socket: &Path, port: u32) -> Result<Self, VsockError> {
        let addr = VsockAddr::new(VMADDR_CID_ANY, port);
        let ctl = connect_unix(socket, HANDSHAKE_TIMEOUT)
            .map_err(VsockError::io("connecting to the enclave's broker socket"))?;
        ctl.set_read_timeout(Some(HANDSHAKE_TIMEOUT))
            .and_then(|()| ctl.set_write_timeout(Some(HANDSHAKE_TIMEOUT)))
            .map_err(VsockError::io("setting handshake timeouts"))?;
        (&ctl)
            .write_all(proto::listen_line(port).as_bytes())
            .map_err(VsockError::io("sending LISTEN"))?;
        let mut reply = FdLine::default();
        reply
            .read(ctl.as_fd(), false)
            .map_err(VsockError::proto("reading the broker's reply"))?;
        match proto::parse_reply(reply.line.line()) {
            Ok(BrokerReply::Ok(None)) => {}
            Ok(BrokerReply::Err(libc::EADDRINUSE)) => return Err(VsockError::AddrInUse { port }),
            Ok(BrokerReply::Err(errno)) => return Err(VsockError::Remote { addr, errno }),
            Ok(_) => {
                return Err(VsockError::Protocol {
                    context: "reading the broker's reply",
                    source: ProtoError::Malformed("expected OK or ERR"),
                })
            }
            Err(e) => return Err(VsockError::proto("reading the broker's reply")(e)),
        }
        ctl.set_read_timeout(None)
            .map_err(VsockError::io("clearing handshake timeouts"))?;
        Ok(Self {
            kind: ListenerKind::Enclave {
                ctl,
                pending: Mutex::new(FdLine::default()),
            },
            local: addr,
        })
    }

    /// Native AF_VSOCK on `(VMADDR_CID_ANY, port)`.
    pub fn bind_native(port: u32) -> Result<Self, VsockError> {
        let sock = Socket::new(Domain::VSOCK, Type::STREAM, None)
            .map_err(VsockError::io("creating an AF_VSOCK socket"))?;
        match sock.bind(&SockAddr::vsock(VMADDR_CID_ANY, port)) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EADDRINUSE) => {
                return Err(VsockError::AddrInUse { port })
            }
            Err(e) => return Err(VsockError::io("binding an AF_VSOCK socket")(e)),
        }
        sock.listen(LISTEN_BACKLOG)
            .map_err(VsockError::io("listening on an AF_VSOCK socket"))?;
        let local = sock
            .local_addr()
            .ok()
            .and_then(|a| a.as_vsock_address())
            .map_or(VsockAddr::new(VMADDR_CID_ANY, port), |(c, p)| {
                VsockAddr::new(c, p)
            });
        Ok(Self {
            kind: ListenerKind::Native { sock },
            local,
        })
    }

    /// The listening socket (fabric) or the broker control connection (enclave: it carries
    /// `ACCEPT <cid> <port>` lines, each with a descriptor), for callers that hand it on. A
    /// fabric listener's socket file stays (the next bind replaces it once nobody listens).
    pub fn into_fd(mut self) -> io::Result<OwnedFd> {
        if let ListenerKind::Fabric { id, .. } = &mut self.kind {
            // No file has this identity: dropping the listener leaves the socket file.
            *id = (u64::MAX, u64::MAX);
        }
        self.as_fd().try_clone_to_owned()
    }

    /// Our address (`(3, port)` on the fabric; cid `VMADDR_CID_ANY` inside an enclave).
    pub fn local_addr(&self) -> VsockAddr {
        self.local
    }

    /// The fabric directory a fabric listener is bound in.
    pub(crate) fn fabric_dir(&self) -> Option<&Path> {
        match &self.kind {
            ListenerKind::Fabric { path, .. } => path.parent(),
            _ => None,
        }
    }

    /// Waits for a connection. On the fabric, connections that fail the `CONNECT-FROM`
    /// handshake or come from an untrusted uid are dropped (logged, rate-limited) and the wait
    /// goes on.
    pub fn accept(&self) -> Result<(VsockStream, VsockAddr), VsockError> {
        loop {
            match self.accept_raw(false)? {
                RawAccept::Ready(s) => {
                    let peer = s.peer_addr();
                    return Ok((s, peer));
                }
                RawAccept::Fabric(sock) => {
                    match fabric_handshake(sock, self.local, self.fabric_dir()) {
                        Ok(s) => {
                            let peer = s.peer_addr();
                            return Ok((s, peer));
                        }
                        Err(e) => log_dropped(&e),
                    }
                }
            }
        }
    }

    /// An endless iterator over incoming connections.
    pub fn incoming(&self) -> impl Iterator<Item = Result<VsockStream, VsockError>> + '_ {
        std::iter::repeat_with(move || self.accept().map(|(s, _)| s))
    }

    /// Non-blocking mode for `accept`.
    pub fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        match &self.kind {
            ListenerKind::Fabric { sock, .. } | ListenerKind::Native { sock } => {
                sock.set_nonblocking(nonblocking)
            }
            // The control connection stays blocking; non-blocking reads use MSG_DONTWAIT.
            ListenerKind::Enclave { .. } => Ok(()),
        }
    }

    /// One accept step. With `dontwait`, an enclave listener reads without blocking (fabric
    /// and native listeners follow their non-blocking flag).
    pub(crate) fn accept_raw(&self, dontwait: bool) -> Result<RawAccept, VsockError> {
        match &self.kind {
            ListenerKind::Fabric { sock, .. } => {
                let (conn, _) = sock.accept().map_err(VsockError::io("accepting"))?;
                Ok(RawAccept::Fabric(conn))
            }
            ListenerKind::Native { sock } => {
                let (conn, peer) = sock.accept().map_err(VsockError::io("accepting"))?;
                let peer = peer
                    .as_vsock_address()
                    .map_or(VsockAddr::new(VMADDR_CID_ANY, VMADDR_PORT_ANY), |(c, p)| {
                        VsockAddr::new(c, p)
                    });
                Ok(RawAccept::Ready(VsockStream {
                    sock: conn,
                    local: self.local,
                    peer,
                }))
            }
            ListenerKind::Enclave { ctl, pending } => {
                let mut pending = match pending.lock() {
                    Ok(g) => g,
                    Err(p) => p.into_inner(),
                };
                match pending.read(ctl.as_fd(), dontwait) {
                    Ok(()) => {}
                    Err(ProtoError::Closed { .. }) => {
                        pending.reset();
                        return Err(VsockError::ListenerClosed);
                    }
                    Err(e) => {
                        if !matches!(&e, ProtoError::Io(io) if io.kind() == io::ErrorKind::WouldBlock)
                        {
                            pending.reset();
                        }
                        return Err(VsockError::proto("reading an ACCEPT line")(e));
                    }
                }
                let parsed = proto::parse_reply(pending.line.line());
                let fd = pending.fd.take();
                pending.reset();
                match (parsed, fd) {
                    (Ok(BrokerReply::Accept(peer)), Some(fd)) => {
                        Ok(RawAccept::Ready(VsockStream {
                            sock: Socket::from(fd),
                            local: self.local,
                            peer,
                        }))
                    }
                    (Ok(_), _) => Err(VsockError::Protocol {
                        context: "reading an ACCEPT line",
                        source: ProtoError::Malformed("expected ACCEPT with a descriptor"),
                    }),
                    (Err(e), _) => Err(VsockError::proto("reading an ACCEPT line")(e)),
                }
            }
        }
    }
}

/// Reads the broker's `CONNECT-FROM` preamble from a freshly accepted fabric connection in
/// the fabric directory `dir`. The preamble is believed from root or our own uid, or from a
/// peer whose gid the broker socket of the cid it names vouches for (a broker connects with
/// its enclave's host identity; see [`crate::hostfs`]).
pub(crate) fn fabric_handshake(
    sock: Socket,
    local: VsockAddr,
    dir: Option<&Path>,
) -> Result<VsockStream, VsockError> {
    let (uid, gid) = peer_ids(&sock).map_err(VsockError::io("reading the peer's credentials"))?;
    let trusted = trusted_uid(uid);
    if !trusted && dir.is_none() {
        return Err(VsockError::UntrustedPeer {
            path: PathBuf::new(),
            uid,
        });
    }
    sock.set_read_timeout(Some(HANDSHAKE_TIMEOUT))
        .map_err(VsockError::io("setting handshake timeouts"))?;
    let mut line = LineBuf::new();
    proto::read_line(&mut &sock, &mut line).map_err(VsockError::proto("reading CONNECT-FROM"))?;
    let peer = proto::parse_connect_from(line.line())
        .map_err(VsockError::proto("reading CONNECT-FROM"))?;
    if let (false, Some(dir)) = (trusted, dir) {
        if !broker_vouches(dir, peer.cid, gid) {
            return Err(VsockError::UntrustedPeer {
                path: dir.join(format!("{}.sock", peer.cid)),
                uid,
            });
        }
    }
    sock.set_read_timeout(None)
        .map_err(VsockError::io("clearing handshake timeouts"))?;
    Ok(VsockStream { sock, local, peer })
}

pub(crate) fn log_dropped(e: &VsockError) {
    if let Some(suppressed) = ACCEPT_LOG.check() {
        tracing::warn!(error = %e, suppressed, "dropped an incoming fabric connection");
    }
}

impl AsRawFd for VsockListener {
    fn as_raw_fd(&self) -> RawFd {
        match &self.kind {
            ListenerKind::Fabric { sock, .. } | ListenerKind::Native { sock } => sock.as_raw_fd(),
            ListenerKind::Enclave { ctl, .. } => ctl.as_raw_fd(),
        }
    }
}

impl AsFd for VsockListener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match &self.kind {
            ListenerKind::Fabric { sock, .. } | ListenerKind::Native { sock } => sock.as_fd(),
            ListenerKind::Enclave { ctl, .. } => ctl.as_fd(),
        }
    }
}

impl Drop for VsockListener {
    fn drop(&mut self) {
        if let ListenerKind::Fabric { path, id, .. } = &self.kind {
            remove_if_same(path, *id);
        }
    }
}

/// Creates the fabric directory (mode 1777: any host user may listen, nobody may remove
/// another's socket) when it does not exist, and checks it (see [`crate::hostfs`]).
pub(crate) fn ensure_fabric_dir(dir: &Path) -> Result<FabricDir, VsockError> {
    FabricDir::open(dir).map_err(VsockError::Fabric)
}
