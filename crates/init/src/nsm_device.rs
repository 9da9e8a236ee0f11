//! `/dev/nsm` in VM enclaves, served by init.
//!
//! The guest kernel Cloister ships has no NSM driver and QEMU has no NSM device, so init plays
//! the driver's part in user space:
//! - [`NsmDevice::prepare`] makes the node `/dev/nsm` before the command runs: a character
//!   device with the numbers of `/dev/null`, so that `open` works for everyone and an ioctl
//!   that nobody intercepts fails as on any other device (`ENOTTY`). The node's identity
//!   (device and inode of the devtmpfs entry) is what init later recognises. Where a real
//!   driver already made `/dev/nsm` (an image with its own kernel and NSM module), init leaves
//!   it alone and serves nothing.
//! - [`filter`] is the seccomp program init installs on the command, in the forked child before
//!   it execs: `ioctl` whose request's low 32 bits are AWS's `0xC0200A00` goes to init as a user
//!   notification (musl passes the request sign-extended, so only the low half is compared);
//!   every other system call, and every other architecture's, is allowed. No no_new_privs: the
//!   filter is no security boundary inside the VM (the VM is), init holds `CAP_SYS_ADMIN` so
//!   the kernel does not ask for it, and setuid programs of the image keep working as on AWS.
//! - [`Supervisor::serve_one`] answers one notification: it checks that the descriptor is the
//!   node (`/proc/<tid>/fd/<fd>`, through the `/proc` init opened before it left the VM's root,
//!   so the command cannot hide it); any other descriptor continues to the kernel unchanged. It
//!   reads the 32-byte message `{ iovec request; iovec response; }` and the request from the
//!   caller's memory (`process_vm_readv`), refuses a request over [`NSM_REQUEST_MAX`] bytes
//!   with `EMSGSIZE` and an unreadable one with `EFAULT`, forwards it to this enclave's NSM
//!   over vsock (CID 0, port 1: the VM's own vsock device, whose host side serves only this
//!   enclave's NSM), writes the response (truncated to the caller's buffer, as AWS's driver
//!   does) and its length back (`process_vm_writev`), and returns 0. A stale notification
//!   (the caller died or was interrupted) is skipped; the notification id is checked again
//!   after every read of the caller's memory, so a recycled pid is never answered.
//!
//! Init serves notifications from its PID 1 loop ([`crate::launch`]): it polls the listener
//! next to its signals and receives only what the listener reports ready, so it never blocks
//! on a notification that vanished. The NSM exchange has a timeout ([`NSM_EXCHANGE_TIMEOUT`]).

use std::ffi::CString;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use cloister_vsock::nsm_frame::{read_frame, write_frame, NSM_FRAME_HARD_CAP};
use cloister_vsock::{Transport, VsockAddr, VsockStream, NSM_PORT, VMADDR_CID_HYPERVISOR};

/// Where the node is made (seen from the VM's root; the command sees it as `/dev/nsm`).
pub const NSM_NODE: &str = "/rootfs/dev/nsm";
/// AWS's ioctl: `_IOWR(0x0A, 0, struct { struct iovec request; struct iovec response; })`.
pub const NSM_IOCTL: u32 = 0xC020_0A00;
/// Largest request (AWS's driver refuses more with `EMSGSIZE`).
pub const NSM_REQUEST_MAX: usize = 4096;
/// Size of the ioctl's message: two `struct iovec`.
pub const NSM_MESSAGE_LEN: usize = 32;
/// Offset of the response's `iov_len` in the message.
const RESPONSE_LEN_OFFSET: u64 = 24;
/// How long one exchange with the NSM may take before the caller gets `EIO`.
pub const NSM_EXCHANGE_TIMEOUT: Duration = Duration::from_secs(30);
/// The node's device numbers: those of `/dev/null`.
/// `SECCOMP_USER_NOTIF_FLAG_CONTINUE` as the response's `flags` field holds it.
#[allow(
    clippy::cast_possible_truncation,
    reason = "the flag is bit 0 of a 32-bit field"
)]
const NOTIF_FLAG_CONTINUE: u32 = libc::SECCOMP_USER_NOTIF_FLAG_CONTINUE as u32;
/// The size of a descriptor in a control message (4 bytes).
#[allow(clippy::cast_possible_truncation, reason = "a descriptor is 4 bytes")]
const FD_LEN: u32 = std::mem::size_of::<RawFd>() as u32;
const NODE_MAJOR: u32 = 1;
const NODE_MINOR: u32 = 3;

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7;

/// Errors setting the device up (none of them ends the enclave: the command then runs
/// without `/dev/nsm`).
#[derive(Debug, thiserror::Error)]
pub enum NsmDeviceError {
    /// The node could not be made or inspected.
    #[error("making {0}")]
    Node(PathBuf, #[source] io::Error),
    /// `/proc` could not be opened.
    #[error("opening /proc")]
    Proc(#[source] io::Error),
    /// The kernel's seccomp notification structures are larger than ours.
    #[error("the kernel's seccomp notification structures are not the ones init knows")]
    Sizes,
    /// A system call of the supervisor failed.
    #[error("{0} failed")]
    Syscall(&'static str, #[source] io::Error),
}

/// The identity of the node: device and inode of the devtmpfs entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeId {
    dev: u64,
    ino: u64,
}

impl NodeId {
    fn of(st: &libc::stat) -> NodeId {
        NodeId {
            dev: st.st_dev,
            ino: st.st_ino,
        }
    }
}

fn stat_path(path: &Path) -> io::Result<libc::stat> {
    let c = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: an all-zero `stat` is a valid value to be overwritten.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is NUL-terminated and `st` a valid out-pointer for the call.
    if unsafe { libc::stat(c.as_ptr(), &mut st) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

/// Talks to the NSM: one request in, one response out.
pub trait NsmChannel {
    /// Sends `request` and returns the response.
    fn exchange(&mut self, request: &[u8]) -> io::Result<Vec<u8>>;
}

/// The NSM of this VM: vsock (CID 0, port 1), connected on first use and again after a
/// failure.
#[derive(Debug, Default)]
pub struct VsockNsm {
    stream: Option<VsockStream>,
}

impl VsockNsm {
    fn connect() -> io::Result<VsockStream> {
        let s = VsockStream::connect_with(
            &Transport::Native,
            VsockAddr::new(VMADDR_CID_HYPERVISOR, NSM_PORT),
        )
        .map_err(io::Error::from)?;
        s.set_read_timeout(Some(NSM_EXCHANGE_TIMEOUT))?;
        s.set_write_timeout(Some(NSM_EXCHANGE_TIMEOUT))?;
        Ok(s)
    }
}

fn frame_err(e: cloister_vsock::nsm_frame::FrameError) -> io::Error {
    io::Error::other(e)
}

impl NsmChannel for VsockNsm {
    fn exchange(&mut self, request: &[u8]) -> io::Result<Vec<u8>> {
        if self.stream.is_none() {
            self.stream = Some(Self::connect()?);
        }
        let result = (|| {
            let mut s = self.stream.as_ref().ok_or(io::ErrorKind::NotConnected)?;
            write_frame(&mut s, request).map_err(frame_err)?;
            read_frame(&mut s, NSM_FRAME_HARD_CAP)
                .map_err(frame_err)?
                .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))
        })();
        if result.is_err() {
            // A broken or desynchronised channel is never reused.
            self.stream = None;
        }
        result
    }
}

/// The device: the node's identity, `/proc` and the NSM channel.
pub struct NsmDevice {
    node: NodeId,
    proc_dir: OwnedFd,
    channel: Box<dyn NsmChannel>,
}

impl std::fmt::Debug for NsmDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NsmDevice")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

fn open_proc() -> Result<OwnedFd, NsmDeviceError> {
    // SAFETY: a NUL-terminated literal path; open returns a new descriptor or -1.
    let fd = unsafe {
        libc::open(
            c"/proc".as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(NsmDeviceError::Proc(io::Error::last_os_error()));
    }
    // SAFETY: a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

impl NsmDevice {
    /// Makes the node at `path` (mode 0666) and returns the device serving it through the
    /// VM's NSM; `Ok(None)` when something is at `path` already (a real driver's node).
    /// Call before leaving the VM's root (it opens `/proc` there).
    pub fn prepare(path: &Path) -> Result<Option<NsmDevice>, NsmDeviceError> {
        if path.symlink_metadata().is_ok() {
            return Ok(None);
        }
        let node_err = |e| NsmDeviceError::Node(path.to_owned(), e);
        let c = CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| node_err(io::Error::from_raw_os_error(libc::EINVAL)))?;
        let dev = libc::makedev(NODE_MAJOR, NODE_MINOR);
        // SAFETY: `c` is a NUL-terminated path; mknod creates a node or fails.
        if unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o666, dev) } < 0 {
            return Err(node_err(io::Error::last_os_error()));
        }
        // The umask may have narrowed the mode.
        // SAFETY: as above; chmod changes the mode of the node just made.
        if unsafe { libc::chmod(c.as_ptr(), 0o666) } < 0 {
            return Err(node_err(io::Error::last_os_error()));
        }
        let st = stat_path(path).map_err(node_err)?;
        Ok(Some(NsmDevice::with_channel(
            NodeId::of(&st),
            Box::<VsockNsm>::default(),
        )?))
    }

    /// A device recognising the node `node` and answering through `channel`.
    pub fn with_channel(
        node: NodeId,
        channel: Box<dyn NsmChannel>,
    ) -> Result<NsmDevice, NsmDeviceError> {
        Ok(NsmDevice {
            node,
            proc_dir: open_proc()?,
            channel,
        })
    }

    /// A device recognising whatever `path` is (tests use an ordinary file as the node).
    pub fn for_path(
        path: &Path,
        channel: Box<dyn NsmChannel>,
    ) -> Result<NsmDevice, NsmDeviceError> {
        let st = stat_path(path).map_err(|e| NsmDeviceError::Node(path.to_owned(), e))?;
        NsmDevice::with_channel(NodeId::of(&st), channel)
    }

    /// Whether descriptor `fd` of task `tid` is the node.
    fn is_node(&self, tid: u32, fd: u64) -> bool {
        let Ok(fd) = i32::try_from(fd) else {
            return false;
        };
        let Ok(rel) = CString::new(format!("{tid}/fd/{fd}")) else {
            return false;
        };
        // SAFETY: an all-zero `stat` is a valid value to be overwritten.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: `proc_dir` is an open directory, `rel` NUL-terminated, `st` a valid
        // out-pointer; following the magic link stats the open file itself.
        let rc = unsafe { libc::fstatat(self.proc_dir.as_raw_fd(), rel.as_ptr(), &mut st, 0) };
        rc == 0 && NodeId::of(&st) == self.node
    }
}

/// The seccomp program installed on the command: [`NSM_IOCTL`] ioctls to the supervisor,
/// everything else allowed.
#[allow(
    clippy::cast_possible_truncation,
    reason = "BPF opcodes are 16-bit and the ioctl system call number is 16"
)]
pub fn filter() -> Vec<libc::sock_filter> {
    const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    const JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
    let ins = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    // Offsets in `struct seccomp_data`: nr at 0, arch at 4, args[1] at 24 (its low half on a
    // little-endian machine).
    vec![
        ins(LD_W_ABS, 0, 0, 4),
        ins(JEQ_K, 0, 4, AUDIT_ARCH),
        ins(LD_W_ABS, 0, 0, 0),
        ins(JEQ_K, 0, 2, libc::SYS_ioctl as u32),
        ins(LD_W_ABS, 0, 0, 24),
        ins(JEQ_K, 1, 0, NSM_IOCTL),
        ins(RET_K, 0, 0, libc::SECCOMP_RET_ALLOW),
        ins(RET_K, 0, 0, libc::SECCOMP_RET_USER_NOTIF),
    ]
}

/// Installs `prog` on the calling thread with a new listener and returns the listener's
/// descriptor (close-on-exec), or -1. Async-signal-safe: for the forked child.
///
/// # Safety
/// `prog` must stay valid for the call.
pub unsafe fn install_with_listener(prog: &libc::sock_fprog) -> RawFd {
    // SAFETY: the caller keeps `prog` valid; seccomp copies the program.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            libc::SECCOMP_FILTER_FLAG_NEW_LISTENER,
            std::ptr::from_ref(prog),
        )
    };
    RawFd::try_from(rc).unwrap_or(-1)
}

/// Checks that the kernel's notification structures are no larger than libc's.
pub fn check_sizes() -> Result<(), NsmDeviceError> {
    let mut sizes = libc::seccomp_notif_sizes {
        seccomp_notif: 0,
        seccomp_notif_resp: 0,
        seccomp_data: 0,
    };
    // SAFETY: `sizes` is a valid out-pointer for SECCOMP_GET_NOTIF_SIZES.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_GET_NOTIF_SIZES,
            0,
            std::ptr::from_mut(&mut sizes),
        )
    };
    if rc < 0 {
        return Err(NsmDeviceError::Syscall(
            "seccomp(GET_NOTIF_SIZES)",
            io::Error::last_os_error(),
        ));
    }
    let fits = usize::from(sizes.seccomp_notif) <= std::mem::size_of::<libc::seccomp_notif>()
        && usize::from(sizes.seccomp_notif_resp) <= std::mem::size_of::<libc::seccomp_notif_resp>();
    fits.then_some(()).ok_or(NsmDeviceError::Sizes)
}

/// What the supervisor tells the kernel about one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Not the node: the kernel runs the call as it is.
    Continue,
    /// The call returns 0.
    Done,
    /// The call fails with this errno.
    Fail(i32),
}

/// The listener and the device it serves.
#[derive(Debug)]
pub struct Supervisor {
    listener: OwnedFd,
    device: NsmDevice,
}

/// How one notification went (for tests and logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    /// The notification was gone before it could be read (its caller was interrupted).
    Stale,
    /// Answered (success, an errno, or passed on to the kernel).
    Answered,
}

impl Supervisor {
    /// Serves `listener` (from [`install_with_listener`] in the command's process) with
    /// `device`.
    pub fn new(listener: OwnedFd, device: NsmDevice) -> Supervisor {
        Supervisor { listener, device }
    }

    /// The listener, to poll: readable when a notification waits; hung up once no process
    /// under the filter is left.
    pub fn listener(&self) -> RawFd {
        self.listener.as_raw_fd()
    }

    fn id_valid(&self, id: u64) -> bool {
        let mut id = id;
        // SAFETY: the listener is open; the argument points at a u64 for the call.
        let rc = unsafe {
            libc::ioctl(
                self.listener.as_raw_fd(),
                libc::SECCOMP_IOCTL_NOTIF_ID_VALID as _,
                std::ptr::from_mut(&mut id),
            )
        };
        rc == 0
    }

    /// Receives one notification and answers it. Call only when the listener polled
    /// readable (a receive with nothing pending would block).
    pub fn serve_one(&mut self) -> Result<Served, NsmDeviceError> {
        // SAFETY: an all-zero notification is a valid value (the kernel wants it zeroed).
        let mut notif: libc::seccomp_notif = unsafe { std::mem::zeroed() };
        // SAFETY: the listener is open; `notif` is a valid out-pointer of the right size
        // (checked against the kernel's by `check_sizes`).
        let rc = unsafe {
            libc::ioctl(
                self.listener.as_raw_fd(),
                libc::SECCOMP_IOCTL_NOTIF_RECV as _,
                std::ptr::from_mut(&mut notif),
            )
        };
        if rc < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::ENOENT | libc::EINTR) => Ok(Served::Stale),
                _ => Err(NsmDeviceError::Syscall("receiving a notification", e)),
            };
        }
        let verdict = self.decide(&notif);
        let mut resp = libc::seccomp_notif_resp {
            id: notif.id,
            val: 0,
            error: 0,
            flags: 0,
        };
        match verdict {
            Verdict::Continue => resp.flags = NOTIF_FLAG_CONTINUE,
            Verdict::Done => {}
            Verdict::Fail(errno) => resp.error = -errno,
        }
        // SAFETY: the listener is open; `resp` is a valid, initialised response.
        let rc = unsafe {
            libc::ioctl(
                self.listener.as_raw_fd(),
                libc::SECCOMP_IOCTL_NOTIF_SEND as _,
                std::ptr::from_mut(&mut resp),
            )
        };
        if rc < 0 {
            let e = io::Error::last_os_error();
            // The caller went away (or was interrupted and will call again).
            if e.raw_os_error() == Some(libc::ENOENT) {
                return Ok(Served::Stale);
            }
            return Err(NsmDeviceError::Syscall("answering a notification", e));
        }
        Ok(Served::Answered)
    }

    fn decide(&mut self, n: &libc::seccomp_notif) -> Verdict {
        // The kernel reads an ioctl's request as a 32-bit `unsigned int`: compare the low half.
        if libc::c_long::from(n.data.nr) != libc::SYS_ioctl
            || n.data.args[1] & u64::from(u32::MAX) != u64::from(NSM_IOCTL)
        {
            return Verdict::Continue;
        }
        let tid = n.pid;
        let is_node = self.device.is_node(tid, n.data.args[0]);
        // The descriptor was looked up under `tid`: valid only if `tid` is still the caller.
        if !self.id_valid(n.id) || !is_node {
            return Verdict::Continue;
        }
        let msg_addr = n.data.args[2];
        let mut msg = [0u8; NSM_MESSAGE_LEN];
        if read_remote(tid, msg_addr, &mut msg).is_err() {
            return Verdict::Fail(libc::EFAULT);
        }
        let word = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&msg[i * 8..i * 8 + 8]);
            u64::from_ne_bytes(w)
        };
        let (req_base, req_len, resp_base, resp_len) = (word(0), word(1), word(2), word(3));
        let req_len = match usize::try_from(req_len) {
            Ok(n) if n <= NSM_REQUEST_MAX => n,
            _ => return Verdict::Fail(libc::EMSGSIZE),
        };
        let mut request = vec![0u8; req_len];
        if read_remote(tid, req_base, &mut request).is_err() {
            return Verdict::Fail(libc::EFAULT);
        }
        if !self.id_valid(n.id) {
            return Verdict::Continue;
        }
        let response = match self.device.channel.exchange(&request) {
            Ok(r) => r,
            Err(e) => {
                let _ = writeln!(io::stderr(), "cloister-init: /dev/nsm: the NSM failed: {e}");
                return Verdict::Fail(libc::EIO);
            }
        };
        // As AWS's driver: a response larger than the caller's buffer is truncated.
        let n_out = usize::try_from(resp_len).map_or(response.len(), |l| l.min(response.len()));
        let Some(len_addr) = msg_addr.checked_add(RESPONSE_LEN_OFFSET) else {
            return Verdict::Fail(libc::EFAULT);
        };
        if !self.id_valid(n.id) {
            return Verdict::Continue;
        }
        if write_remote(tid, resp_base, &response[..n_out]).is_err()
            || write_remote(tid, len_addr, &(n_out as u64).to_ne_bytes()).is_err()
        {
            return Verdict::Fail(libc::EFAULT);
        }
        Verdict::Done
    }
}

/// The local side of a transfer with another task's memory.
enum Local<'a> {
    /// Read the remote bytes into this buffer.
    Into(&'a mut [u8]),
    /// Write these bytes to the remote address.
    From(&'a [u8]),
}

/// Reads exactly `buf.len()` bytes at `addr` in task `tid`.
fn read_remote(tid: u32, addr: u64, buf: &mut [u8]) -> io::Result<()> {
    transfer_remote(tid, addr, Local::Into(buf))
}

/// Writes all of `data` at `addr` in task `tid`.
fn write_remote(tid: u32, addr: u64, data: &[u8]) -> io::Result<()> {
    transfer_remote(tid, addr, Local::From(data))
}

/// Moves all of `local` to or from `addr` in task `tid` (`process_vm_readv` or
/// `process_vm_writev`); a short transfer or an address that does not fit a pointer is
/// `EFAULT`, a task id that is not a pid `ESRCH`.
fn transfer_remote(tid: u32, addr: u64, local: Local<'_>) -> io::Result<()> {
    let fault = || io::Error::from_raw_os_error(libc::EFAULT);
    let (iov, write) = match local {
        Local::Into(buf) => (
            libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: buf.len(),
            },
            false,
        ),
        Local::From(data) => (
            libc::iovec {
                iov_base: data.as_ptr().cast_mut().cast(),
                iov_len: data.len(),
            },
            true,
        ),
    };
    if iov.iov_len == 0 {
        return Ok(());
    }
    let pid = libc::pid_t::try_from(tid).map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?;
    let remote = libc::iovec {
        iov_base: usize::try_from(addr).map_err(|_| fault())? as *mut libc::c_void,
        iov_len: iov.iov_len,
    };
    // SAFETY: `iov` describes the borrowed local buffer for its length: writable for a read
    // (`Local::Into` holds it mutably), only read by the kernel for a write. The remote
    // address is only dereferenced by the kernel in the other process, which checks it.
    let n = unsafe {
        if write {
            libc::process_vm_writev(pid, &iov, 1, &remote, 1, 0)
        } else {
            libc::process_vm_readv(pid, &iov, 1, &remote, 1, 0)
        }
    };
    let n = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
    if n != iov.iov_len {
        return Err(fault());
    }
    Ok(())
}

/// Sends descriptor `fd` over the Unix socket `sock` (one byte of data with it).
/// Async-signal-safe: for the forked child. Returns whether it was sent.
pub fn send_fd(sock: RawFd, fd: RawFd) -> bool {
    const SPACE: usize = 64;
    #[repr(C, align(8))]
    struct Cmsg([u8; SPACE]);
    let mut cbuf = Cmsg([0u8; SPACE]);
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // SAFETY: plain arithmetic on the size of one descriptor.
    let space = unsafe { libc::CMSG_SPACE(FD_LEN) } as usize;
    if space > SPACE {
        return false;
    }
    // SAFETY: an all-zero msghdr is valid; the fields set below point at live locals.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.0.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: `msg` has a control buffer of `space` bytes, aligned for cmsghdr, which
    // CMSG_FIRSTHDR/CMSG_DATA address within; the descriptor is written unaligned.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if cmsg.is_null() {
            return false;
        }
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(FD_LEN) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), fd);
        libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) == 1
    }
}

/// Receives one descriptor from `sock`; `Ok(None)` when the peer closed without sending one.
pub fn recv_fd(sock: RawFd) -> io::Result<Option<OwnedFd>> {
    const SPACE: usize = 64;
    #[repr(C, align(8))]
    struct Cmsg([u8; SPACE]);
    let mut cbuf = Cmsg([0u8; SPACE]);
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // SAFETY: an all-zero msghdr is valid; the fields set below point at live locals.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.0.as_mut_ptr().cast();
    msg.msg_controllen = SPACE as _;
    let n = loop {
        // SAFETY: `msg` points at live buffers of the sizes it states.
        let n = unsafe { libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        }
        break n;
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel filled the control buffer and set its length; the macros walk it
    // within `msg_controllen`, and the descriptor is read unaligned.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let fd = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>());
                return Ok(Some(OwnedFd::from_raw_fd(fd)));
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;

    /// A fake NSM: answers `nsm:` + the request reversed; fails on the request `fail`.
    struct FakeNsm;

    impl NsmChannel for FakeNsm {
        fn exchange(&mut self, request: &[u8]) -> io::Result<Vec<u8>> {
            if request == b"fail" {
                return Err(io::Error::other("fake failure"));
            }
            let mut r = b"nsm:".to_vec();
            r.extend(request.iter().rev());
            Ok(r)
        }
    }

    const CHILD_ENV: &str = "CLOISTER_INIT_NSM_TEST_NODE";

    #[repr(C)]
    struct Message {
        req_base: u64,
        req_len: u64,
        resp_base: u64,
        resp_len: u64,
    }

    /// One ioctl as AWS's library makes it (request widened as musl does when `sign`).
    #[allow(
        clippy::cast_possible_wrap,
        clippy::cast_sign_loss,
        reason = "the sign extension of the request is what this call reproduces"
    )]
    fn call(fd: RawFd, msg: *mut Message, sign: bool) -> Result<(), i32> {
        let request: u64 = if sign {
            NSM_IOCTL as i32 as i64 as u64
        } else {
            u64::from(NSM_IOCTL)
        };
        // SAFETY: a raw ioctl; the pointer may be deliberately bad (the kernel or the
        // supervisor checks it, never this process).
        let rc = unsafe { libc::syscall(libc::SYS_ioctl, fd, request, msg) };
        if rc < 0 {
            Err(io::Error::last_os_error().raw_os_error().unwrap_or(0))
        } else {
            Ok(())
        }
    }

    /// What the command does in `served_requests_and_hostile_ones`: exits 0 when every
    /// check holds, else with the number of the failed check.
    fn child_checks(node: &str) -> i32 {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(node)
            .unwrap();
        let fd = file.as_raw_fd();
        let mut resp = vec![0u8; 64];
        let req = b"hello".to_vec();
        let mut msg = Message {
            req_base: req.as_ptr() as u64,
            req_len: req.len() as u64,
            resp_base: resp.as_mut_ptr() as u64,
            resp_len: resp.len() as u64,
        };
        // 1: served, the response and its length written back.
        if call(fd, &mut msg, false).is_err()
            || resp[..usize::try_from(msg.resp_len).unwrap()] != *b"nsm:olleh"
        {
            return 1;
        }
        // 2: the request sign-extended (musl) is the same request.
        msg.resp_len = resp.len() as u64;
        if call(fd, &mut msg, true).is_err() || msg.resp_len != 9 {
            return 2;
        }
        // 3: a response larger than the buffer is truncated.
        msg.resp_len = 3;
        if call(fd, &mut msg, false).is_err() || msg.resp_len != 3 || resp[..3] != *b"nsm" {
            return 3;
        }
        // 4: requests over 4096 bytes, and absurd lengths.
        let big = vec![0u8; NSM_REQUEST_MAX + 1];
        msg.req_base = big.as_ptr() as u64;
        for len in [big.len() as u64, u64::MAX] {
            msg.req_len = len;
            if call(fd, &mut msg, false) != Err(libc::EMSGSIZE) {
                return 4;
            }
        }
        // 5: bad pointers: the message, the request, the response.
        if call(fd, 16 as *mut Message, false) != Err(libc::EFAULT) {
            return 5;
        }
        msg.req_base = 8;
        msg.req_len = 16;
        if call(fd, &mut msg, false) != Err(libc::EFAULT) {
            return 6;
        }
        msg.req_base = req.as_ptr() as u64;
        msg.req_len = req.len() as u64;
        msg.resp_base = 8;
        msg.resp_len = 64;
        if call(fd, &mut msg, false) != Err(libc::EFAULT) {
            return 7;
        }
        // 8: the NSM failing is EIO.
        let fail = b"fail".to_vec();
        msg.req_base = fail.as_ptr() as u64;
        msg.req_len = 4;
        msg.resp_base = resp.as_mut_ptr() as u64;
        if call(fd, &mut msg, false) != Err(libc::EIO) {
            return 8;
        }
        // 9: the same ioctl on another descriptor reaches the kernel unchanged.
        let null = std::fs::File::open("/dev/null").unwrap();
        msg.req_base = req.as_ptr() as u64;
        msg.req_len = req.len() as u64;
        if call(null.as_raw_fd(), &mut msg, false) != Err(libc::ENOTTY) {
            return 9;
        }
        // 10: a closed descriptor is EBADF, as without the filter.
        if call(999, &mut msg, false) != Err(libc::EBADF) {
            return 10;
        }
        0
    }

    /// The command's side of `served_requests_and_hostile_ones` (this test binary re-run).
    #[test]
    #[allow(
        clippy::exit,
        reason = "the re-run test binary is the command: its exit status is the result"
    )]
    fn nsm_child_entry() {
        if let Ok(node) = std::env::var(CHILD_ENV) {
            let code = child_checks(&node);
            if code == 0 {
                std::fs::write(format!("{node}.passed"), b"").unwrap();
            }
            std::process::exit(code);
        }
    }

    #[test]
    fn served_requests_and_hostile_ones() {
        let _guard = crate::CHILD_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIPPED: installing the filter without no_new_privs needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let node = dir.path().join("nsm");
        std::fs::write(&node, b"").unwrap();
        let device = NsmDevice::for_path(&node, Box::new(FakeNsm)).unwrap();
        let exe = std::env::current_exe().unwrap();
        let c = |s: &str| CString::new(s).unwrap();
        let path = CString::new(exe.as_os_str().as_encoded_bytes()).unwrap();
        let argv = [
            path.clone(),
            c("nsm_device::tests::nsm_child_entry"),
            c("--exact"),
            c("--test-threads=1"),
        ];
        let env = [c(&format!("{CHILD_ENV}={}", node.display()))];
        let out = crate::launch::run_with_nsm(&path, &argv, &env, device).unwrap();
        assert_eq!(out, crate::launch::Outcome::Exited(0), "failed check");
        assert!(
            dir.path().join("nsm.passed").exists(),
            "the checks did not run"
        );
    }

    #[test]
    fn filter_shape() {
        let f = filter();
        assert_eq!(f.len(), 8);
        assert_eq!(f[5].k, NSM_IOCTL);
        assert_eq!(f[7].k, libc::SECCOMP_RET_USER_NOTIF);
        check_sizes().unwrap();
    }
}
