//! Namespaces: the `CLONE_NEW*` flags the process backend uses, `unshare`, `setns` into a
//! network namespace, the hostname, the loopback interface and the credential changes that
//! precede a user namespace's id maps.

use super::error::{SysError, SysResult};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// New mount namespace.
pub const MOUNT: i32 = libc::CLONE_NEWNS;
/// New PID namespace.
pub const PID: i32 = libc::CLONE_NEWPID;
/// New network namespace.
pub const NET: i32 = libc::CLONE_NEWNET;
/// New System V IPC namespace.
pub const IPC: i32 = libc::CLONE_NEWIPC;
/// New UTS namespace.
pub const UTS: i32 = libc::CLONE_NEWUTS;
/// New user namespace.
pub const USER: i32 = libc::CLONE_NEWUSER;
/// New cgroup namespace.
pub const CGROUP: i32 = libc::CLONE_NEWCGROUP;

/// The flags that bring an interface up (`IFF_UP | IFF_RUNNING`), as `ifreq` holds them.
#[allow(
    clippy::cast_possible_truncation,
    reason = "IFF_UP | IFF_RUNNING is 0x41, which fits the ifreq's short flags"
)]
pub(super) const LO_UP_FLAGS: libc::c_short = (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;

/// `unshare(2)`.
pub fn unshare(flags: i32) -> SysResult<()> {
    nix::sched::unshare(nix::sched::CloneFlags::from_bits_retain(flags))
        .map_err(|e| SysError::new("unshare", format!("{flags:#x}"), e))
}

/// `sethostname(2)`.
pub fn sethostname(name: &str) -> SysResult<()> {
    // SAFETY: the pointer and length describe `name`'s bytes, valid for the call.
    let ret = unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) };
    if ret < 0 {
        Err(SysError::last("sethostname", name))
    } else {
        Ok(())
    }
}

/// `setgroups(0, NULL)`, `setresgid(gid)`, `setresuid(uid)`: become `uid`/`gid` with no
/// supplementary groups.
pub fn become_user(uid: u32, gid: u32) -> SysResult<()> {
    nix::unistd::setgroups(&[]).map_err(|e| SysError::new("setgroups", "[]", e))?;
    let g = nix::unistd::Gid::from_raw(gid);
    nix::unistd::setresgid(g, g, g).map_err(|e| SysError::new("setresgid", gid.to_string(), e))?;
    let u = nix::unistd::Uid::from_raw(uid);
    nix::unistd::setresuid(u, u, u).map_err(|e| SysError::new("setresuid", uid.to_string(), e))
}

/// Brings the loopback interface of the current network namespace up
/// (`ioctl(SIOCGIFFLAGS/SIOCSIFFLAGS)` on an `AF_INET` datagram socket).
pub fn loopback_up() -> SysResult<()> {
    // SAFETY: socket() takes integers and returns a new descriptor or -1.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(SysError::last("socket", "AF_INET"));
    }
    // SAFETY: a fresh descriptor that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = libc::c_char::from_ne_bytes([*src]);
    }
    // SAFETY: SIOCGIFFLAGS reads the interface named in `req` and writes its flags into `req`,
    // which is a valid, exclusively borrowed ifreq for the duration of the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(SysError::last("ioctl", "SIOCGIFFLAGS lo"));
    }
    // SAFETY: the kernel filled the flags member of the union for SIOCGIFFLAGS.
    unsafe {
        req.ifr_ifru.ifru_flags |= LO_UP_FLAGS;
    }
    // SAFETY: SIOCSIFFLAGS reads `req` (valid, initialised above) and changes no memory of ours.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(SysError::last("ioctl", "SIOCSIFFLAGS lo"));
    }
    Ok(())
}

/// `prctl(PR_SET_DUMPABLE, 1)`: keeps `/proc/self` owned by the process after a credential
/// change (needed to write its own user namespace maps).
pub fn set_dumpable() -> SysResult<()> {
    // SAFETY: prctl with integer arguments only.
    let ret = unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 1 as libc::c_ulong, 0, 0, 0) };
    if ret < 0 {
        Err(SysError::last("prctl", "PR_SET_DUMPABLE"))
    } else {
        Ok(())
    }
}

/// `setns(fd, CLONE_NEWNET)`: moves the calling thread into the network namespace `fd`.
pub fn enter_netns(fd: BorrowedFd<'_>) -> SysResult<()> {
    // SAFETY: setns takes a valid (borrowed) descriptor and an integer flag.
    let ret = unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) };
    if ret < 0 {
        return Err(SysError::last("setns", "CLONE_NEWNET"));
    }
    Ok(())
}
