//! cloister-supervisor: `AF_VSOCK` and `/dev/nsm` for programs written for AWS Nitro Enclaves,
//! unchanged, where there is no vsock device and no NSM driver (a process enclave; a parent
//! program under `cloister exec`).
//!
//! The supervised process runs under the notification filter of
//! [`cloister_confine::notify`], installed before it execs the program; the listener
//! descriptor goes to the supervisor (passed with [`send_listener`] / [`recv_listener`] over a
//! socket pair), which answers the notified calls ([`serve`]) against a [`Fabric`]:
//! - `socket(AF_VSOCK, SOCK_STREAM[|SOCK_NONBLOCK|SOCK_CLOEXEC], 0)` gets an `AF_UNIX` stream
//!   socket of the supervisor's, installed in the caller (`SECCOMP_IOCTL_NOTIF_ADDFD` with
//!   `SEND`, so the call returns its number atomically) and tracked by inode;
//! - `connect` of such a socket to `(cid, port)` makes the fabric connection (through the
//!   enclave's broker, or the host fabric) and installs the connected stream at the caller's
//!   descriptor number, as `dup2` would (`ADDFD` with `SETFD`), keeping its close-on-exec and
//!   non-blocking flags: from then on the program reads and writes a native Unix stream, with
//!   no notification and no copy through the supervisor;
//! - `bind` to `(VMADDR_CID_ANY or the own cid, port)` makes the fabric listener (the broker's
//!   `LISTEN` control connection, or `3_<port>.sock` on the host) and installs it in place of
//!   the socket, so `poll`/`epoll` readiness of the listening descriptor is native (it is
//!   readable exactly when a connection waits); `listen` then succeeds; `accept`/`accept4`
//!   take one connection from it and install it as the call's result (a blocking accept waits
//!   in the supervisor, parked, without holding it up);
//! - `getsockname`/`getpeername` write `sockaddr_vm`s; `ioctl(IOCTL_VM_SOCKETS_GET_LOCAL_CID)`
//!   on a device node writes the cid; AWS's NSM ioctl (`0xC0200A00`) on a device node hands
//!   the request to the enclave's own NSM (called on the supervisor's thread, which runs on
//!   the enclave's CPUs, or over the enclave's NSM channel) and writes the response back;
//! - everything else the filter shows it (other families, other sockets' calls) runs in the
//!   kernel unchanged.
//!
//! Errors are those of a real vsock socket: ECONNREFUSED when nobody listens, EADDRINUSE,
//! EAFNOSUPPORT for `SOCK_DGRAM`, ENETUNREACH for a cid the fabric does not reach (an enclave
//! reaches cid 3 only), EFAULT for bad pointers, EMSGSIZE for an NSM request over 4096 bytes.
//! Nothing a supervised program does can make the supervisor panic or wait: reads of its
//! memory are bounded, calls that wait on the fabric run on [`serve::WORKERS`] workers with a
//! bounded queue (EAGAIN beyond), and blocking accepts are parked in bounded numbers.

pub mod fabric;
pub mod serve;
pub mod sys;

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

pub use fabric::{EnclaveFabric, Fabric, HostFabric};

/// Environment variable that turns the supervisor of process enclaves off (`off`): then
/// `AF_VSOCK` fails with EPERM and there is no `/dev/nsm` or `/dev/vsock`, as before.
pub const SUPERVISOR_ENV: &str = "CLOISTER_VSOCK_SUPERVISOR";
/// The size of a descriptor in a control message (4 bytes).
#[allow(clippy::cast_possible_truncation, reason = "a descriptor is 4 bytes")]
const FD_LEN: u32 = std::mem::size_of::<RawFd>() as u32;

/// The switch [`enabled`] reports: on unless the runtime's configuration turns it off.
static ENABLED: AtomicBool = AtomicBool::new(true);

/// Whether process enclaves get a supervisor: yes, unless [`set_enabled`] said no (the runtime's
/// configuration does when [`SUPERVISOR_ENV`] is `off`; this crate reads no environment).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Turns the supervisor of process enclaves on or off, for this process.
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// A running supervisor thread (dropping the handle lets it run on, as [`Supervisor::detach`]).
#[derive(Debug)]
pub struct Supervisor {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Supervisor {
    /// Starts serving the notification listener `listener` against `fabric`, on a thread of
    /// its own. It ends when every supervised process is gone, or on [`Supervisor::stop`].
    pub fn spawn(listener: OwnedFd, fabric: Arc<dyn Fabric>) -> io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("vsock-supervisor".into())
            .spawn(move || serve::run(sys::Listener::new(listener), fabric, flag))?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }

    /// Waits until the supervised processes are gone.
    pub fn wait(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Lets the thread run on by itself, until the supervised processes are gone.
    pub fn detach(self) {
        drop(self);
    }

    /// Stops serving (within a poll tick) and waits for the thread.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Sends the listener descriptor `fd` over the Unix socket `chan` (one byte with it).
/// Allocation-free, so a freshly forked child may call it.
pub fn send_listener(chan: BorrowedFd<'_>, fd: BorrowedFd<'_>) -> io::Result<()> {
    let byte = [b'L'];
    let mut iov = libc::iovec {
        iov_base: byte.as_ptr().cast_mut().cast(),
        iov_len: 1,
    };
    let mut cbuf = [0u64; 4];
    // SAFETY: an all-zero msghdr is valid; the pointers are set below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE is a pure size computation.
    msg.msg_controllen = unsafe { libc::CMSG_SPACE(FD_LEN) } as _;
    // SAFETY: `msg` points at `cbuf`, large enough for one descriptor's control message; the
    // CMSG macros stay within `msg_controllen`.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(FD_LEN) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<RawFd>(), fd.as_raw_fd());
    }
    // SAFETY: `msg` points at live buffers (`byte`, `cbuf`).
    let n = unsafe { libc::sendmsg(chan.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
    if n == 1 {
        Ok(())
    } else if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Err(io::Error::from(io::ErrorKind::WriteZero))
    }
}

/// Receives a listener descriptor sent with [`send_listener`], without waiting: `Ok(None)` when
/// none was sent (the peer closed, or nothing is pending).
pub fn recv_listener(chan: BorrowedFd<'_>) -> io::Result<Option<OwnedFd>> {
    let mut buf = [0u8; 1];
    match sys::recv_line_with_fd(chan, &mut buf)? {
        Some((1, Some(fd))) => Ok(Some(fd)),
        _ => Ok(None),
    }
}
