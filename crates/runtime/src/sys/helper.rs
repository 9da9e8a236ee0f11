//! Helper processes cloned with `CLONE_VM` (nothing copied, as `posix_spawn` does): the
//! network namespace helper that makes an enclave's namespace off the boot path
//! ([`NetnsHelper`]), and the short-lived holder of an idmapping user namespace
//! ([`idmap_userns`]). They share the caller's memory, so they make raw system calls only
//! (`raw`).

use super::error::{cpath, SysError, SysResult};
use super::fd::pipe;
use super::ns::{enter_netns, USER};
use super::process::wait_child;
use super::signals::kill;
use nix::errno::Errno;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

/// System calls without libc: the result is `-errno` on failure and nothing else is touched
/// (libc's wrappers store `errno` in the calling thread's TLS, which a `CLONE_VM` helper shares
/// with the thread that cloned it).
mod raw {
    /// `syscall(nr, a1, a2, a3)`.
    ///
    /// # Safety
    /// The arguments must be valid for system call `nr` (pointers to memory the call may use).
    #[cfg(target_arch = "x86_64")]
    #[allow(
        clippy::cast_possible_truncation,
        reason = "on x86_64 a c_long and an isize are both 64 bits"
    )]
    pub unsafe fn syscall3(nr: libc::c_long, a1: usize, a2: usize, a3: usize) -> isize {
        let ret: isize;
        // SAFETY: the caller vouches for the arguments; `syscall` clobbers rcx and r11 only.
        unsafe {
            std::arch::asm!(
                "syscall",
                inlateout("rax") nr as isize => ret,
                in("rdi") a1,
                in("rsi") a2,
                in("rdx") a3,
                lateout("rcx") _,
                lateout("r11") _,
                options(nostack),
            );
        }
        ret
    }

    /// `syscall(nr, a1, a2, a3)`.
    ///
    /// # Safety
    /// The arguments must be valid for system call `nr` (pointers to memory the call may use).
    #[cfg(target_arch = "aarch64")]
    pub unsafe fn syscall3(nr: libc::c_long, a1: usize, a2: usize, a3: usize) -> isize {
        let ret: isize;
        // SAFETY: the caller vouches for the arguments; `svc 0` returns in x0 only.
        unsafe {
            std::arch::asm!(
                "svc 0",
                in("x8") nr,
                inlateout("x0") a1 as isize => ret,
                in("x1") a2,
                in("x2") a3,
                options(nostack),
            );
        }
        ret
    }

    /// `syscall(nr, a1, a2, a3)` through libc where no direct form is written: a failure also
    /// stores `errno` (see the module docs), which only a failing helper can cause.
    ///
    /// # Safety
    /// The arguments must be valid for system call `nr` (pointers to memory the call may use).
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    pub unsafe fn syscall3(nr: libc::c_long, a1: usize, a2: usize, a3: usize) -> isize {
        // SAFETY: as the caller vouches.
        let ret = unsafe { libc::syscall(nr, a1, a2, a3) };
        if ret < 0 {
            // SAFETY: reading this thread's errno right after the failed call.
            -(unsafe { *libc::__errno_location() } as isize)
        } else {
            ret as isize
        }
    }
}

/// Stack of the helper process of [`NetnsHelper`].
const NETNS_HELPER_STACK: usize = 16 * 1024;
/// Stages of [`netns_maker`] reported with an errno (`0` is success).
const NETNS_STAGES: [&str; 4] = [
    "unshare(CLONE_NEWNET)",
    "socket(AF_INET)",
    "ioctl(SIOCGIFFLAGS lo)",
    "ioctl(SIOCSIFFLAGS lo)",
];

/// The helper of [`NetnsHelper`]: moves itself into a new network namespace, brings its
/// loopback interface up, reports `[stage, errno (4 bytes, little endian)]` on the ready pipe
/// (stage 0xff: done), then waits for the hold pipe's end of file and exits. `arg` packs the
/// ready pipe's write end (high 32 bits) and the hold pipe's read end (low 32 bits). It shares
/// the caller's memory (`CLONE_VM`), so it makes raw system calls only ([`raw`]: not even
/// `errno` is written), on its own stack. `arg` points to the descriptor numbers
/// `[ready write end, hold read end, hold write end]`, which the caller keeps until the helper
/// is reaped; the helper closes its copy of the hold pipe's write end first, so that the
/// caller's close is the end of file it waits for.
#[allow(
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss,
    reason = "raw system call arguments and results: descriptor numbers are non-negative, \
              the ioctl numbers and flags fit their registers, and a failed call's -errno is \
              below 4096; no fallible conversion may run in a CLONE_VM helper's error paths"
)]
extern "C" fn netns_maker(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the caller's live `[i32; 3]` (see above), only read here.
    let [ready_w, hold_r, hold_w] = unsafe { *(arg as *const [i32; 3]) }.map(|fd| fd as usize);
    // SAFETY: closing this process's own copy of a descriptor.
    unsafe { raw::syscall3(libc::SYS_close, hold_w, 0, 0) };
    let mut report = [0xffu8, 0, 0, 0, 0];
    let mut fail = |stage: u8, ret: isize| {
        report[0] = stage;
        report[1..].copy_from_slice(&((-ret) as u32).to_le_bytes());
    };
    // SAFETY: every call gets integers, or pointers to this function's own locals (`req`,
    // `report`, `byte`), valid for the call's duration; none of them touches shared memory.
    unsafe {
        let ret = raw::syscall3(libc::SYS_unshare, libc::CLONE_NEWNET as usize, 0, 0);
        if ret < 0 {
            fail(0, ret);
        } else {
            let flags = (libc::SOCK_DGRAM | libc::SOCK_CLOEXEC) as usize;
            let sock = raw::syscall3(libc::SYS_socket, libc::AF_INET as usize, flags, 0);
            if sock < 0 {
                fail(1, sock);
            } else {
                let mut req: libc::ifreq = std::mem::zeroed();
                // The kernel reads and writes `req` through this pointer only.
                let req = std::ptr::addr_of_mut!(req);
                (*req).ifr_name[0] = b'l' as libc::c_char;
                (*req).ifr_name[1] = b'o' as libc::c_char;
                let get = libc::SIOCGIFFLAGS as usize;
                let ret = raw::syscall3(libc::SYS_ioctl, sock as usize, get, req as usize);
                if ret < 0 {
                    fail(2, ret);
                } else {
                    (*req).ifr_ifru.ifru_flags |= super::ns::LO_UP_FLAGS;
                    let set = libc::SIOCSIFFLAGS as usize;
                    let ret = raw::syscall3(libc::SYS_ioctl, sock as usize, set, req as usize);
                    if ret < 0 {
                        fail(3, ret);
                    }
                }
                raw::syscall3(libc::SYS_close, sock as usize, 0, 0);
            }
        }
        let at = std::ptr::addr_of!(report) as usize;
        raw::syscall3(libc::SYS_write, ready_w, at, report.len());
        raw::syscall3(libc::SYS_close, ready_w, 0, 0);
        let mut byte = 0u8;
        let at = std::ptr::addr_of_mut!(byte) as usize;
        raw::syscall3(libc::SYS_read, hold_r, at, 1);
        raw::syscall3(libc::SYS_exit, 0, 0, 0);
    }
    0
}

/// A network namespace with its loopback interface up, being made by a helper process while
/// the caller goes on: creating a network namespace costs the kernel 0.5 to 0.9 ms, which a
/// clone with `CLONE_NEWNET` would spend on the boot path. The helper is cloned with `CLONE_VM`
/// (nothing copied), makes the namespace itself on whichever CPU is free, and holds it until
/// every copy of the hold pipe's write end is closed. A process cloned from the caller meanwhile
/// inherits those copies and enters the namespace through [`NetnsHelper::handle`] when it
/// needs it (its copies go at its exec or exit); the caller drops its own with
/// [`NetnsHelper::release`]. Dropping the helper releases, kills and reaps it.
pub struct NetnsHelper {
    pid: i32,
    ready: Option<OwnedFd>,
    hold: Option<OwnedFd>,
    /// The helper's stack and argument: freed only once the helper has been reaped.
    stack: Vec<u8>,
    arg: Box<[i32; 3]>,
}

/// What a process cloned after [`NetnsHelper::spawn`] needs to enter the helper's namespace:
/// the helper's pid and the descriptor number of the ready pipe's read end (valid in a process
/// cloned from the spawner, before its exec).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetnsHandle {
    pid: i32,
    ready: RawFd,
}

impl std::fmt::Debug for NetnsHelper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetnsHelper")
            .field("pid", &self.pid)
            .field("released", &self.hold.is_none())
            .finish_non_exhaustive()
    }
}

impl NetnsHelper {
    /// Clones the helper.
    pub fn spawn() -> SysResult<Self> {
        let (ready_r, ready_w) = pipe()?;
        let (hold_r, hold_w) = pipe()?;
        let mut arg = Box::new([ready_w.as_raw_fd(), hold_r.as_raw_fd(), hold_w.as_raw_fd()]);
        // SAFETY: `netns_maker` makes raw system calls only, on its own stack and descriptors
        // and reading `arg`; `arg` and the stack live until the helper has been reaped (`Drop`).
        let (pid, stack) = unsafe {
            clone_vm_helper(
                netns_maker,
                0,
                std::ptr::addr_of_mut!(*arg).cast(),
                NETNS_HELPER_STACK,
                "CLONE_VM (network namespace helper)",
            )
        }?;
        // The helper has its own copies of these ends.
        drop((ready_w, hold_r));
        Ok(Self {
            pid,
            ready: Some(ready_r),
            hold: Some(hold_w),
            stack,
            arg,
        })
    }

    /// The handle for a process cloned from this one from now until [`NetnsHelper::release`].
    pub fn handle(&self) -> Option<NetnsHandle> {
        self.ready.as_ref().map(|r| NetnsHandle {
            pid: self.pid,
            ready: r.as_raw_fd(),
        })
    }

    /// Closes this process's ends of the helper's pipes: the helper then holds its namespace
    /// only as long as a process cloned meanwhile keeps its copies.
    pub fn release(&mut self) {
        drop(self.hold.take());
        drop(self.ready.take());
    }
}

impl NetnsHandle {
    /// Waits for the namespace (the helper's report) and moves the calling thread into it.
    /// Only in a process cloned from the spawner (single-threaded there, as `setns` into a
    /// network namespace concerns the calling thread only).
    pub fn enter(self) -> SysResult<()> {
        // SAFETY: the descriptor is this process's copy of the ready pipe's read end (see the
        // type's docs); the File is forgotten below, so the number stays open and owned by
        // nothing else here.
        let mut ready = std::mem::ManuallyDrop::new(std::fs::File::from(unsafe {
            OwnedFd::from_raw_fd(self.ready)
        }));
        let mut report = [0u8; 5];
        std::io::Read::read_exact(&mut *ready, &mut report).map_err(|e| {
            let errno = Errno::from_raw(e.raw_os_error().unwrap_or(libc::EPIPE));
            SysError::new("read", "network namespace helper", errno)
        })?;
        if report[0] != 0xff {
            let errno = u32::from_le_bytes([report[1], report[2], report[3], report[4]]);
            let stage = NETNS_STAGES
                .get(usize::from(report[0]))
                .copied()
                .unwrap_or("?");
            return Err(SysError::new(
                "network namespace helper",
                stage,
                Errno::from_raw(i32::try_from(errno).unwrap_or(libc::EIO)),
            ));
        }
        // `/proc/<pid>/ns/net`, NUL-terminated, built without allocating (so that a caller
        // forked from a multi-threaded process may use this on the way that succeeds).
        let mut path = [0u8; 40];
        let mut len = 0;
        let mut put = |bytes: &[u8]| {
            path[len..len + bytes.len()].copy_from_slice(bytes);
            len += bytes.len();
        };
        put(b"/proc/");
        let mut digits = [0u8; 10];
        let mut n = self.pid.unsigned_abs();
        let mut at = digits.len();
        loop {
            at -= 1;
            digits[at] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        put(&digits[at..]);
        put(b"/ns/net\0");
        // SAFETY: `path` holds a NUL-terminated string; open returns a new descriptor or -1.
        let fd = unsafe { libc::open(path.as_ptr().cast(), libc::O_RDONLY | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(SysError::last("open", format!("/proc/{}/ns/net", self.pid)));
        }
        // SAFETY: a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        enter_netns(std::os::fd::AsFd::as_fd(&fd))
    }
}

impl Drop for NetnsHelper {
    fn drop(&mut self) {
        self.release();
        // Killed rather than waited for: a process cloned meanwhile may still hold the pipe
        // (one that has entered the namespace keeps it alive by being in it).
        let _ = kill(self.pid, nix::sys::signal::Signal::SIGKILL);
        let _ = wait_child(self.pid, false);
        // Only now are the helper's stack and argument free.
        self.stack = Vec::new();
        *self.arg = [-1; 3];
    }
}

/// Clones a helper process that shares this process's memory (`CLONE_VM`, as `posix_spawn`
/// does: nothing is copied) and runs `f(arg)` on a stack of its own, with `flags` (namespaces)
/// added. Returns its pid and its stack, which the caller keeps until the helper is reaped.
///
/// # Safety
/// `f` must make raw system calls only (no allocation, no lock, nothing that touches this
/// process's state), and whatever `arg` points to must stay valid until the helper is reaped.
unsafe fn clone_vm_helper(
    f: extern "C" fn(*mut libc::c_void) -> libc::c_int,
    flags: i32,
    arg: *mut libc::c_void,
    stack_size: usize,
    shown: &'static str,
) -> SysResult<(i32, Vec<u8>)> {
    let mut stack = vec![0u8; stack_size];
    // The stack grows down from its 16-byte-aligned top.
    let top = {
        let end = stack.as_mut_ptr_range().end as usize;
        (end & !15) as *mut libc::c_void
    };
    // SAFETY: `top` is the aligned top of `stack`, returned to the caller, who keeps it until
    // the helper has been reaped; the caller vouches for `f` and `arg`.
    let pid = unsafe { libc::clone(f, top, libc::CLONE_VM | flags | libc::SIGCHLD, arg) };
    if pid < 0 {
        return Err(SysError::last("clone", shown));
    }
    Ok((pid, stack))
}

/// Stack of the helper process of [`idmap_userns`] (it makes three system calls).
const USERNS_HOLDER_STACK: usize = 16 * 1024;

/// The helper of [`idmap_userns`]: closes its copy of the pipe's write end, waits until the
/// read end reports end of file, then exits (`arg` carries the read end in its high 32 bits and
/// the write end in its low ones). It shares the caller's memory (`CLONE_VM`), so it makes raw
/// system calls only: no allocation, no lock, no Rust runtime. None of them can fail in a way
/// that writes `errno` (the caller's): the descriptors are valid, the buffer is its own stack,
/// and no signal is aimed at an unnamed helper.
#[allow(
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    reason = "`arg` is the two descriptor numbers packed by `idmap_userns`, each below 2^31"
)]
extern "C" fn userns_holder(arg: *mut libc::c_void) -> libc::c_int {
    let fds = arg as usize as u64;
    let (read_end, write_end) = (
        (fds >> 32) as libc::c_long,
        (fds & 0xffff_ffff) as libc::c_long,
    );
    let mut byte = 0u8;
    // SAFETY: both descriptors are open in this process (its own copies, made at the clone);
    // `byte` is a valid one-byte buffer on this helper's own stack.
    unsafe {
        libc::syscall(libc::SYS_close, write_end);
        libc::syscall(
            libc::SYS_read,
            read_end,
            std::ptr::addr_of_mut!(byte),
            1usize,
        );
        libc::syscall(libc::SYS_exit, 0);
    }
    0
}

/// A user namespace mapping uid and gid 0 to `uid`/`gid` (one id each), as a descriptor for
/// idmapped mounts. A short-lived helper process is cloned into the new namespace, its maps are
/// written from here, its namespace is opened, and the helper is released and reaped.
///
/// The helper shares this process's memory (`CLONE_VM`, as `posix_spawn` does), so nothing is
/// copied for it and nothing torn down when it exits; it runs `userns_holder` on a stack of
/// its own, which outlives it. It only blocks in `read(2)` and exits, so this is sound in a
/// multi-threaded process as well.
pub fn idmap_userns(uid: u32, gid: u32) -> SysResult<OwnedFd> {
    let (hold_r, hold_w) = pipe()?;
    // Descriptor numbers are non-negative: `unsigned_abs` keeps them as they are.
    let fds = u64::from(hold_r.as_raw_fd().unsigned_abs()) << 32
        | u64::from(hold_w.as_raw_fd().unsigned_abs());
    let fds = usize::try_from(fds)
        .map_err(|_| SysError::new("clone", "CLONE_VM|CLONE_NEWUSER", Errno::EOVERFLOW))?;
    // SAFETY: `userns_holder` makes raw system calls only, on its own stack (freed below, once
    // the helper has been reaped); its argument is the pipe's descriptor numbers, no pointer.
    let (pid, stack) = unsafe {
        clone_vm_helper(
            userns_holder,
            USER,
            fds as *mut libc::c_void,
            USERNS_HOLDER_STACK,
            "CLONE_VM|CLONE_NEWUSER",
        )
    }?;
    let result = (|| {
        let write = |file: &str, text: String| {
            let path = format!("/proc/{pid}/{file}");
            std::fs::write(&path, text).map_err(|e| {
                SysError::new(
                    "write",
                    path,
                    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
                )
            })
        };
        write("uid_map", format!("0 {uid} 1\n"))?;
        write("gid_map", format!("0 {gid} 1\n"))?;
        let ns = format!("/proc/{pid}/ns/user");
        let c = cpath("open", Path::new(&ns))?;
        // SAFETY: `c` is a valid NUL-terminated string; open returns a new descriptor or -1.
        let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(SysError::last("open", ns));
        }
        // SAFETY: a fresh descriptor that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    })();
    drop(hold_w);
    let _ = wait_child(pid, false);
    // Only now is the helper's stack free.
    drop(stack);
    drop(hold_r);
    result
}
