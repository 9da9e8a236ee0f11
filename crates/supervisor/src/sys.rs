//! The kernel interfaces the supervisor uses, each wrapped once: the seccomp notification
//! ioctls on the listener, and a notifying process's descriptors (`pidfd_getfd`) and memory
//! (`process_vm_readv`/`process_vm_writev`).

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// `struct seccomp_data`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct SeccompData {
    /// The system call number.
    pub nr: i32,
    /// `AUDIT_ARCH_*`.
    pub arch: u32,
    /// The instruction pointer.
    pub ip: u64,
    /// The arguments.
    pub args: [u64; 6],
}

/// `struct seccomp_notif`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct Notif {
    /// The notification's cookie.
    pub id: u64,
    /// The calling thread, in the supervisor's PID namespace.
    pub pid: u32,
    /// Unused by the kernel so far.
    pub flags: u32,
    /// The call.
    pub data: SeccompData,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct NotifResp {
    id: u64,
    val: i64,
    error: i32,
    flags: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct NotifAddfd {
    id: u64,
    flags: u32,
    srcfd: u32,
    newfd: u32,
    newfd_flags: u32,
}

#[allow(
    clippy::cast_possible_truncation,
    reason = "the sizes are of the small seccomp structures, far below the 14-bit size field"
)]
const fn iowr(nr: u32, size: usize) -> u32 {
    0xC000_0000 | ((size as u32) << 16) | (0x21 << 8) | nr
}
#[allow(
    clippy::cast_possible_truncation,
    reason = "the sizes are of the small seccomp structures, far below the 14-bit size field"
)]
const fn iow(nr: u32, size: usize) -> u32 {
    0x4000_0000 | ((size as u32) << 16) | (0x21 << 8) | nr
}
const NOTIF_RECV: u32 = iowr(0, std::mem::size_of::<Notif>());
const NOTIF_SEND: u32 = iowr(1, std::mem::size_of::<NotifResp>());
const NOTIF_ID_VALID: u32 = iow(2, std::mem::size_of::<u64>());
const NOTIF_ADDFD: u32 = iow(3, std::mem::size_of::<NotifAddfd>());
const NOTIF_SET_FLAGS: u32 = iow(4, std::mem::size_of::<u64>());
const USER_NOTIF_FD_SYNC_WAKE_UP: u64 = 1;
const FLAG_CONTINUE: u32 = 1;
const ADDFD_FLAG_SETFD: u32 = 1;
const ADDFD_FLAG_SEND: u32 = 2;

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// The listener of a notification filter.
#[derive(Debug)]
pub struct Listener {
    fd: OwnedFd,
}

impl Listener {
    /// Wraps a listener descriptor (from [`cloister_confine::notify::install`]). Where the
    /// kernel has it (6.6 and later), asks for synchronous wake-ups: the caller and the
    /// supervisor hand the CPU to each other directly, which is most of a notified call's
    /// cost.
    pub fn new(fd: OwnedFd) -> Self {
        // SAFETY: the flags go by value (the kernel reads no memory); failure (an older
        // kernel) leaves the listener as it was.
        let _ = unsafe {
            libc::ioctl(
                fd.as_raw_fd(),
                NOTIF_SET_FLAGS as _,
                USER_NOTIF_FD_SYNC_WAKE_UP as libc::c_ulong,
            )
        };
        Self { fd }
    }

    /// The descriptor, for polling.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Receives one notification (blocks unless one is pending). `ENOENT`: the caller died
    /// after notifying; try again.
    pub fn recv(&self) -> io::Result<Notif> {
        // The kernel requires a zeroed buffer.
        let mut n = Notif::default();
        // SAFETY: `n` is a writable `struct seccomp_notif` of the size the request encodes.
        cvt(unsafe { libc::ioctl(self.fd.as_raw_fd(), NOTIF_RECV as _, &mut n as *mut Notif) })?;
        Ok(n)
    }

    fn send(&self, resp: NotifResp) -> io::Result<()> {
        let mut resp = resp;
        // SAFETY: `resp` is a `struct seccomp_notif_resp` of the size the request encodes.
        cvt(unsafe {
            libc::ioctl(
                self.fd.as_raw_fd(),
                NOTIF_SEND as _,
                &mut resp as *mut NotifResp,
            )
        })
        .map(drop)
    }

    /// Answers `id` with a return value.
    pub fn reply(&self, id: u64, val: i64) -> io::Result<()> {
        self.send(NotifResp {
            id,
            val,
            ..Default::default()
        })
    }

    /// Answers `id` with an errno (positive).
    pub fn fail(&self, id: u64, errno: i32) -> io::Result<()> {
        self.send(NotifResp {
            id,
            error: -errno.abs().max(1),
            ..Default::default()
        })
    }

    /// Lets the call run in the kernel, under the other filters' verdict.
    pub fn continue_call(&self, id: u64) -> io::Result<()> {
        self.send(NotifResp {
            id,
            flags: FLAG_CONTINUE,
            ..Default::default()
        })
    }

    /// Whether `id` is still waiting (its caller alive and not interrupted): what was read
    /// from the caller's memory or descriptor table before this check belongs to it.
    pub fn id_valid(&self, id: u64) -> bool {
        let mut id = id;
        // SAFETY: a pointer to a u64, the size the request encodes.
        let r = unsafe {
            libc::ioctl(
                self.fd.as_raw_fd(),
                NOTIF_ID_VALID as _,
                &mut id as *mut u64,
            )
        };
        r == 0
    }

    /// Installs `src` in the caller of `id`: at `target` (replacing what is there, as `dup2`)
    /// or at the lowest free number; with `send`, atomically as the call's return value (the
    /// call is then answered). Returns the number it got.
    pub fn add_fd(
        &self,
        id: u64,
        src: BorrowedFd<'_>,
        target: Option<RawFd>,
        cloexec: bool,
        send: bool,
    ) -> io::Result<RawFd> {
        let mut flags = 0;
        if target.is_some() {
            flags |= ADDFD_FLAG_SETFD;
        }
        if send {
            flags |= ADDFD_FLAG_SEND;
        }
        let mut a = NotifAddfd {
            id,
            flags,
            srcfd: u32::try_from(src.as_raw_fd())
                .map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?,
            newfd: target.map_or(Ok(0), |t| {
                u32::try_from(t).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))
            })?,
            newfd_flags: if cloexec { libc::O_CLOEXEC as u32 } else { 0 },
        };
        // SAFETY: `a` is a `struct seccomp_notif_addfd` of the size the request encodes.
        cvt(unsafe {
            libc::ioctl(
                self.fd.as_raw_fd(),
                NOTIF_ADDFD as _,
                &mut a as *mut NotifAddfd,
            )
        })
    }
}

/// An address in the target as the `iovec` of `process_vm_readv`/`writev` holds it (EFAULT
/// when it does not fit a pointer).
fn remote_ptr(addr: u64) -> io::Result<*mut libc::c_void> {
    usize::try_from(addr)
        .map(|a| a as *mut libc::c_void)
        .map_err(|_| io::Error::from_raw_os_error(libc::EFAULT))
}

/// A notifying process: its pidfd and pid.
#[derive(Debug)]
pub struct Target {
    pid: i32,
    pidfd: OwnedFd,
}

const PIDFD_THREAD: libc::c_uint = libc::O_EXCL as libc::c_uint;

fn pidfd_open(pid: i32, flags: libc::c_uint) -> io::Result<OwnedFd> {
    // SAFETY: integer arguments only.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = RawFd::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: a new descriptor the kernel just returned.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The thread group of thread `tid` (from `/proc/<tid>/status`).
fn tgid_of(tid: i32) -> io::Result<i32> {
    let status = std::fs::read_to_string(format!("/proc/{tid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| io::Error::from_raw_os_error(libc::ESRCH))
}

impl Target {
    /// Opens the thread `pid` of a notification (a thread pidfd where the kernel has them,
    /// else its thread group's: threads share their descriptor table). Check the
    /// notification's id afterwards: a pid can be reused once its thread is gone.
    pub fn open(pid: u32) -> io::Result<Self> {
        let pid = i32::try_from(pid).map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?;
        let pidfd = match pidfd_open(pid, PIDFD_THREAD) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                let tgid = tgid_of(pid)?;
                pidfd_open(tgid, 0)?
            }
            Err(e) => return Err(e),
        };
        Ok(Self { pid, pidfd })
    }

    /// A duplicate of the target's descriptor `fd` (the same open file).
    pub fn get_fd(&self, fd: u64) -> io::Result<OwnedFd> {
        let fd = i32::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
        // SAFETY: integer arguments only.
        let got = unsafe { libc::syscall(libc::SYS_pidfd_getfd, self.pidfd.as_raw_fd(), fd, 0) };
        if got < 0 {
            return Err(io::Error::last_os_error());
        }
        let got = RawFd::try_from(got).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
        // SAFETY: a new descriptor the kernel just returned.
        Ok(unsafe { OwnedFd::from_raw_fd(got) })
    }

    /// Reads exactly `buf.len()` bytes at `addr` of the target (EFAULT when short).
    pub fn read(&self, addr: u64, buf: &mut [u8]) -> io::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let local = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let remote = libc::iovec {
            iov_base: remote_ptr(addr)?,
            iov_len: buf.len(),
        };
        // SAFETY: `local` covers `buf`, writable for its length; `remote` is only an address
        // in the target, checked by the kernel.
        let n = unsafe { libc::process_vm_readv(self.pid, &local, 1, &remote, 1, 0) };
        let n = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
        if n != buf.len() {
            return Err(io::Error::from_raw_os_error(libc::EFAULT));
        }
        Ok(())
    }

    /// Writes `buf` at `addr` of the target (EFAULT when short).
    pub fn write(&self, addr: u64, buf: &[u8]) -> io::Result<()> {
        self.write_parts(&[(addr, buf)])
    }

    /// Writes each `(addr, buf)` of `parts` (at most two) to the target, in order, with one
    /// system call (EFAULT when any is short).
    pub fn write_parts(&self, parts: &[(u64, &[u8])]) -> io::Result<()> {
        const MAX: usize = 2;
        if parts.len() > MAX {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let empty = libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        };
        let (mut local, mut remote) = ([empty; MAX], [empty; MAX]);
        let mut count = 0;
        let mut total = 0usize;
        for &(addr, buf) in parts.iter().filter(|(_, b)| !b.is_empty()) {
            local[count] = libc::iovec {
                iov_base: buf.as_ptr().cast_mut().cast(),
                iov_len: buf.len(),
            };
            remote[count] = libc::iovec {
                iov_base: remote_ptr(addr)?,
                iov_len: buf.len(),
            };
            count += 1;
            total += buf.len();
        }
        if count == 0 {
            return Ok(());
        }
        // SAFETY: the first `count` entries of `local` cover live buffers of `parts`, readable
        // for their lengths (the kernel only reads them); `remote` holds only addresses in the
        // target, checked by the kernel.
        let n = unsafe {
            libc::process_vm_writev(
                self.pid,
                local.as_ptr(),
                count as libc::c_ulong,
                remote.as_ptr(),
                count as libc::c_ulong,
                0,
            )
        };
        let n = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
        if n != total {
            return Err(io::Error::from_raw_os_error(libc::EFAULT));
        }
        Ok(())
    }
}

/// Pins the calling thread to `cpus` (ids beyond the kernel's set size are ignored; none left
/// is EINVAL).
pub fn pin_current_thread(cpus: &[u32]) -> io::Result<()> {
    // SAFETY: all-zero bytes are an empty `cpu_set_t` (a plain bit array).
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let capacity = 8 * std::mem::size_of::<libc::cpu_set_t>();
    let mut any = false;
    for &cpu in cpus {
        let Ok(cpu) = usize::try_from(cpu) else {
            continue;
        };
        if cpu < capacity {
            // SAFETY: `cpu` is below the set's capacity in bits.
            unsafe { libc::CPU_SET(cpu, &mut set) };
            any = true;
        }
    }
    if !any {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: `set` is a valid `cpu_set_t` of the size passed; pid 0 is the calling thread.
    cvt(unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) }).map(drop)
}

/// `fstat` of a descriptor.
pub fn fstat(fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
    // SAFETY: an all-zero `stat` is a valid value of this plain C struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a writable stat buffer.
    cvt(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) })?;
    Ok(st)
}

/// The file status flags (`F_GETFL`).
pub fn status_flags(fd: BorrowedFd<'_>) -> io::Result<libc::c_int> {
    // SAFETY: integer arguments only.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) })
}

/// Sets or clears `O_NONBLOCK` on the open file of `fd`.
pub fn set_nonblocking(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    let flags = status_flags(fd)?;
    let flags = if on {
        flags | libc::O_NONBLOCK
    } else {
        flags & !libc::O_NONBLOCK
    };
    // SAFETY: integer arguments only.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags) }).map(drop)
}

/// A new `AF_UNIX` stream socket (close-on-exec here).
pub fn unix_stream(nonblocking: bool) -> io::Result<OwnedFd> {
    let mut ty = libc::SOCK_STREAM | libc::SOCK_CLOEXEC;
    if nonblocking {
        ty |= libc::SOCK_NONBLOCK;
    }
    // SAFETY: integer arguments only.
    let fd = cvt(unsafe { libc::socket(libc::AF_UNIX, ty, 0) })?;
    // SAFETY: a new descriptor the kernel just returned.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Whether `fd` is readable (or hung up) now.
pub fn readable(fd: BorrowedFd<'_>) -> bool {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    unsafe { libc::poll(&mut p, 1, 0) > 0 }
}

/// Receives one line of at most `buf.len()` bytes from a stream socket without waiting,
/// with the descriptor that travels with it. `Ok(None)`: nothing pending; `Ok(Some((0, _)))`:
/// end of stream.
pub fn recv_line_with_fd(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
) -> io::Result<Option<(usize, Option<OwnedFd>)>> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut cbuf = [0u64; 8];
    // SAFETY: an all-zero msghdr is valid; the pointers are set below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&cbuf) as _;
    // SAFETY: `msg` points at `iov` (covering `buf`) and `cbuf`, both live and writable.
    let n = unsafe {
        libc::recvmsg(
            sock.as_raw_fd(),
            &mut msg,
            libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC,
        )
    };
    let Ok(n) = usize::try_from(n) else {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::WouldBlock {
            return Ok(None);
        }
        return Err(e);
    };
    let mut fds = Vec::new();
    // SAFETY: `msg` was filled by recvmsg; the CMSG macros walk its control buffer within
    // `msg_controllen`.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c).cast::<RawFd>();
                let len = ((*c).cmsg_len as usize).saturating_sub(libc::CMSG_LEN(0) as usize);
                for i in 0..len / std::mem::size_of::<RawFd>() {
                    let fd = std::ptr::read_unaligned(data.add(i));
                    fds.push(OwnedFd::from_raw_fd(fd));
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    // One descriptor travels with a line; any extra ones are closed here.
    let first = if fds.is_empty() {
        None
    } else {
        Some(fds.swap_remove(0))
    };
    Ok(Some((n, first)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_parts_writes_each_part_in_one_call_and_reports_a_short_one() {
        let me = Target::open(std::process::id()).expect("own pidfd");
        let mut a = [0u8; 8];
        let mut b = [0u8; 4];
        let (pa, pb) = (a.as_mut_ptr() as u64, b.as_mut_ptr() as u64);
        me.write_parts(&[(pa, b"response"), (pb, &7u32.to_ne_bytes())])
            .unwrap();
        assert_eq!(&a, b"response");
        assert_eq!(u32::from_ne_bytes(b), 7);
        // A part at an unmapped address: EFAULT, whatever was written before it.
        let e = me
            .write_parts(&[(pa, b"x"), (8, b"y")])
            .expect_err("unmapped address");
        assert_eq!(e.raw_os_error(), Some(libc::EFAULT));
        let mut back = [0u8; 8];
        me.read(pa, &mut back).unwrap();
        assert_eq!(&back, b"xesponse");
    }
}
