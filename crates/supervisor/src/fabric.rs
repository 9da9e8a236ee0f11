//! Where a supervised program's vsock sockets lead: [`EnclaveFabric`] (a process enclave: its
//! broker, as the enclave's own connections to `/dev/vsock.sock` are served) and
//! [`HostFabric`] (a parent program: the host fabric directory, as cid 3).

use std::io::Write;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use cloister_vsock::broker::NsmService;
use cloister_vsock::nsm_frame::{read_frame, write_frame, NSM_FRAME_HARD_CAP};
use cloister_vsock::proto::{self, BrokerReply, MAX_LINE_LEN};
use cloister_vsock::stream::VsockError;
use cloister_vsock::{
    is_enclave_cid, VsockAddr, VsockListener, VsockStream, NSM_PORT, PARENT_CID,
    VMADDR_CID_HYPERVISOR,
};

use crate::sys;

/// A positive errno value, what a supervised call fails with.
pub type Errno = i32;

/// The vsock world of a supervised program.
pub trait Fabric: Send + Sync {
    /// The cid the program has (`getsockname`, `IOCTL_VM_SOCKETS_GET_LOCAL_CID`).
    fn local_cid(&self) -> u32;
    /// Connects to `peer`: the connected stream and the local port.
    fn connect(&self, peer: VsockAddr) -> Result<(OwnedFd, u32), Errno>;
    /// Listens on `port`: the descriptor that becomes the program's listening socket.
    fn listen(&self, port: u32) -> Result<OwnedFd, Errno>;
    /// One pending connection on `listener` (from [`Fabric::listen`] for `port`), without
    /// waiting: `Ok(None)` when none is pending.
    fn try_accept(
        &self,
        listener: BorrowedFd<'_>,
        port: u32,
    ) -> Result<Option<(OwnedFd, VsockAddr)>, Errno>;
    /// Answers one NSM request (CBOR in, CBOR out).
    fn nsm(&self, request: &[u8]) -> Result<Vec<u8>, Errno>;
    /// The CPUs the supervisor's loop runs on (empty: anywhere). An enclave's supervisor runs
    /// on the enclave's CPUs: the work a program makes it do (NSM signing included) costs the
    /// enclave's CPU time, never the host's, and a notified call is handed over on the CPU the
    /// caller runs on.
    fn cpus(&self) -> Vec<u32> {
        Vec::new()
    }
    /// Called from the supervisor's loop once it has tried to move to [`Fabric::cpus`]:
    /// whether it runs there now.
    fn pinned(&self, _on_cpus: bool) {}
}

/// The errno a real vsock socket would give for `e`.
pub fn errno_of(e: &VsockError) -> Errno {
    match e {
        VsockError::Refused { .. } => libc::ECONNREFUSED,
        VsockError::NotPermitted { .. } => libc::ENETUNREACH,
        VsockError::AddrInUse { .. } => libc::EADDRINUSE,
        VsockError::InvalidAddress { .. } => libc::EADDRNOTAVAIL,
        VsockError::Remote { errno, .. } => *errno,
        VsockError::UntrustedPeer { .. } | VsockError::Fabric(_) => libc::EACCES,
        VsockError::ListenerClosed => libc::ECONNABORTED,
        VsockError::Protocol { .. } => libc::ECONNRESET,
        VsockError::Io { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
    }
}

/// Most idle NSM channels kept open per enclave.
const MAX_IDLE_NSM_CHANNELS: usize = 4;

/// A process enclave's fabric: its broker's enclave socket (on the host), dialled as the
/// enclave's own `/dev/vsock.sock` connections are, so the broker's rules and caps apply
/// unchanged (only cid 3; its listener and connection caps). NSM requests go to the enclave's
/// own NSM: called directly when the fabric was given it ([`EnclaveFabric::with_nsm`], the
/// runtime's case: no hop through the broker), else over the enclave's own NSM channels
/// (`CONNECT 0 1`); either way documents carry its PCRs.
pub struct EnclaveFabric {
    socket: PathBuf,
    cid: u32,
    idle_nsm: Mutex<Vec<VsockStream>>,
    nsm: Option<Arc<dyn NsmService>>,
    cpus: Vec<u32>,
    /// The loop runs on `cpus` (or was not asked to): the NSM may be called on it.
    on_cpus: AtomicBool,
}

impl std::fmt::Debug for EnclaveFabric {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnclaveFabric")
            .field("socket", &self.socket)
            .field("cid", &self.cid)
            .field("direct_nsm", &self.nsm.is_some())
            .field("cpus", &self.cpus)
            .finish_non_exhaustive()
    }
}

impl EnclaveFabric {
    /// The enclave with cid `cid` whose broker serves `socket`.
    pub fn new(socket: PathBuf, cid: u32) -> Self {
        Self {
            socket,
            cid,
            idle_nsm: Mutex::new(Vec::new()),
            nsm: None,
            cpus: Vec::new(),
            on_cpus: AtomicBool::new(true),
        }
    }

    /// Answers NSM requests with `nsm`, the enclave's own NSM (the one its broker serves on
    /// `(0, 1)`), called on the supervisor's thread: a `/dev/nsm` ioctl then costs one
    /// hand-over (the notification) as an SDK client's request does (its frame), not two.
    pub fn with_nsm(mut self, nsm: Arc<dyn NsmService>) -> Self {
        self.nsm = Some(nsm);
        self
    }

    /// Runs the supervisor's loop on `cpus`, the enclave's ([`Fabric::cpus`]). Should that
    /// fail, NSM requests go over the enclave's NSM channel, which the broker serves on them.
    pub fn with_cpus(mut self, cpus: Vec<u32>) -> Self {
        self.on_cpus = AtomicBool::new(cpus.is_empty());
        self.cpus = cpus;
        self
    }

    fn nsm_once(&self, chan: &mut VsockStream, request: &[u8]) -> Option<Vec<u8>> {
        write_frame(chan, request).ok()?;
        chan.flush().ok()?;
        read_frame(chan, NSM_FRAME_HARD_CAP).ok()?
    }
}

impl Fabric for EnclaveFabric {
    fn local_cid(&self) -> u32 {
        self.cid
    }

    fn connect(&self, peer: VsockAddr) -> Result<(OwnedFd, u32), Errno> {
        // An enclave reaches the parent only (the broker enforces it too).
        if peer.cid != PARENT_CID {
            return Err(libc::ENETUNREACH);
        }
        let s = VsockStream::connect_enclave(&self.socket, peer).map_err(|e| errno_of(&e))?;
        let port = s.local_addr().port;
        Ok((s.into_fd(), port))
    }

    fn listen(&self, port: u32) -> Result<OwnedFd, Errno> {
        let l = VsockListener::bind_enclave(&self.socket, port).map_err(|e| errno_of(&e))?;
        l.into_fd()
            .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))
    }

    fn try_accept(
        &self,
        listener: BorrowedFd<'_>,
        _port: u32,
    ) -> Result<Option<(OwnedFd, VsockAddr)>, Errno> {
        // The broker sends each `ACCEPT <cid> <port>\n` in one message with the descriptor on
        // it; a stream read stops at a message that carries descriptors.
        let mut buf = [0u8; MAX_LINE_LEN];
        let (n, fd) = match sys::recv_line_with_fd(listener, &mut buf) {
            Ok(None) => return Ok(None),
            Ok(Some(got)) => got,
            Err(e) => return Err(e.raw_os_error().unwrap_or(libc::EIO)),
        };
        if n == 0 {
            return Err(libc::ECONNABORTED);
        }
        let line = buf.get(..n).unwrap_or_default();
        let line = line.strip_suffix(b"\n").ok_or(libc::ECONNABORTED)?;
        match (proto::parse_reply(line), fd) {
            (Ok(BrokerReply::Accept(peer)), Some(fd)) => Ok(Some((fd, peer))),
            _ => Err(libc::ECONNABORTED),
        }
    }

    fn cpus(&self) -> Vec<u32> {
        self.cpus.clone()
    }

    fn pinned(&self, on_cpus: bool) {
        if !self.cpus.is_empty() {
            self.on_cpus.store(on_cpus, Ordering::Relaxed);
        }
    }

    fn nsm(&self, request: &[u8]) -> Result<Vec<u8>, Errno> {
        if let Some(nsm) = &self.nsm {
            // Only on the enclave's CPUs: the signing must cost them, not the host's.
            if self.on_cpus.load(Ordering::Relaxed) {
                return Ok(nsm.handle(request));
            }
        }
        let idle = self.idle_nsm.lock().ok().and_then(|mut v| v.pop());
        let mut chan = match idle {
            Some(c) => c,
            None => VsockStream::connect_enclave(
                &self.socket,
                VsockAddr::new(VMADDR_CID_HYPERVISOR, NSM_PORT),
            )
            .map_err(|e| errno_of(&e))?,
        };
        let response = self.nsm_once(&mut chan, request).ok_or(libc::EIO)?;
        if let Ok(mut v) = self.idle_nsm.lock() {
            if v.len() < MAX_IDLE_NSM_CHANNELS {
                v.push(chan);
            }
        }
        Ok(response)
    }
}

/// The host fabric, for a parent program: connections reach enclaves by cid through
/// `<dir>/<cid>.sock`; listening makes `<dir>/3_<port>.sock`.
#[derive(Debug)]
pub struct HostFabric {
    dir: PathBuf,
}

impl HostFabric {
    /// The fabric in `dir` (`<run>/vsock`).
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }
}

impl Fabric for HostFabric {
    fn local_cid(&self) -> u32 {
        PARENT_CID
    }

    fn connect(&self, peer: VsockAddr) -> Result<(OwnedFd, u32), Errno> {
        if !is_enclave_cid(peer.cid) {
            return Err(libc::ENETUNREACH);
        }
        let s = VsockStream::connect_fabric(&self.dir, peer).map_err(|e| errno_of(&e))?;
        let port = s.local_addr().port;
        Ok((s.into_fd(), port))
    }

    fn listen(&self, port: u32) -> Result<OwnedFd, Errno> {
        let l = VsockListener::bind_fabric(&self.dir, port).map_err(|e| errno_of(&e))?;
        l.into_fd()
            .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))
    }

    fn try_accept(
        &self,
        listener: BorrowedFd<'_>,
        port: u32,
    ) -> Result<Option<(OwnedFd, VsockAddr)>, Errno> {
        if !sys::readable(listener) {
            return Ok(None);
        }
        let conn = match accept_now(listener) {
            Ok(Some(c)) => c,
            Ok(None) => return Ok(None),
            Err(e) => return Err(e),
        };
        // The broker writes its preamble as it connects; a connection without one is
        // dropped, as a fabric listener drops it.
        match VsockStream::from_fabric_accept(conn, port, &self.dir) {
            Ok(s) => {
                let peer = s.peer_addr();
                Ok(Some((s.into_fd(), peer)))
            }
            Err(e) => {
                tracing::debug!(error = %e, "dropped an incoming fabric connection");
                Ok(None)
            }
        }
    }

    fn nsm(&self, _request: &[u8]) -> Result<Vec<u8>, Errno> {
        // A parent instance has no NSM.
        Err(libc::ENOTTY)
    }
}

/// `accept4` on a listening socket known to be readable; `None` when another taker won.
fn accept_now(listener: BorrowedFd<'_>) -> Result<Option<OwnedFd>, Errno> {
    use std::os::fd::{AsRawFd, FromRawFd};
    // SAFETY: integer arguments and null address pointers.
    let fd = unsafe {
        libc::accept4(
            listener.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_CLOEXEC,
        )
    };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EAGAIN) | Some(libc::EINTR) | Some(libc::ECONNABORTED) => Ok(None),
            Some(n) => Err(n),
            None => Err(libc::EIO),
        };
    }
    // SAFETY: a new descriptor the kernel just returned.
    Ok(Some(unsafe { OwnedFd::from_raw_fd(fd) }))
}
