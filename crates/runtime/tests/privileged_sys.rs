//! The `CLONE_VM` helpers of `cloister_runtime::sys` against the real kernel: a network
//! namespace made ahead, and an idmapping user namespace. Both need root (`CAP_SYS_ADMIN` for
//! the network namespace, `CAP_SETUID` to map a foreign uid), as the runtime has; the
//! unprivileged rest of `sys` is tested in the crate's unit tests.

use cloister_runtime::sys::{clone_process, idmap_userns, pipe, wait_child, Forked, NetnsHelper};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

/// The uid map of the user namespace `ns`, as seen from a forked child that enters it
/// (`setns` into a user namespace needs a single-threaded caller; the test harness is not).
fn uid_map_of(ns: BorrowedFd<'_>) -> String {
    let (r, w) = pipe().unwrap();
    let ns_raw = ns.as_raw_fd();
    let w_raw = w.as_raw_fd();
    // SAFETY: the child runs the block below only, then exits.
    let pid = match unsafe { clone_process(0) }.unwrap() {
        // SAFETY: async-signal-safe calls only (setns, open, read, write, _exit) on
        // descriptors open in the child, stack buffers and a NUL-terminated literal.
        Forked::Child => unsafe {
            let mut buf = [0u8; 256];
            let mut n = 0isize;
            if libc::setns(ns_raw, libc::CLONE_NEWUSER) == 0 {
                let fd = libc::open(c"/proc/self/uid_map".as_ptr(), libc::O_RDONLY);
                if fd >= 0 {
                    n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
                }
            }
            if n > 0 {
                libc::write(w_raw, buf.as_ptr().cast(), n.unsigned_abs());
            }
            libc::_exit(0)
        },
        Forked::Parent(pid) => pid,
    };
    drop(w);
    let mut out = String::new();
    std::io::Read::read_to_string(&mut std::fs::File::from(r), &mut out).unwrap();
    wait_child(pid, false).unwrap();
    out
}

#[test]
fn netns_helper_makes_a_namespace_with_loopback_up_and_reaps_itself() {
    let mut helper = NetnsHelper::spawn().unwrap();
    let handle = helper.handle().unwrap();
    let (r, w) = pipe().unwrap();
    let w_raw = w.as_raw_fd();
    // SAFETY: the child runs the block below only, then exits.
    let pid = match unsafe { clone_process(0) }.unwrap() {
        // SAFETY: the child enters the namespace (`enter` does not allocate on the way that
        // succeeds: a pipe read, an open of a /proc path built on the stack, setns), then
        // uses async-signal-safe calls only (stat, socket, ioctl, write, _exit) and a zeroed
        // ifreq on its stack; anything failing ends in `_exit`.
        Forked::Child => unsafe {
            let mut out = [0u8; 10];
            if handle.enter().is_ok() {
                let mut st: libc::stat = std::mem::zeroed();
                if libc::stat(c"/proc/thread-self/ns/net".as_ptr(), &mut st) == 0 {
                    out[..8].copy_from_slice(&st.st_ino.to_le_bytes());
                }
                let sock = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
                let mut req: libc::ifreq = std::mem::zeroed();
                req.ifr_name[0] = libc::c_char::from_ne_bytes([b'l']);
                req.ifr_name[1] = libc::c_char::from_ne_bytes([b'o']);
                if sock >= 0 && libc::ioctl(sock, libc::SIOCGIFFLAGS, &mut req) == 0 {
                    out[8..].copy_from_slice(&req.ifr_ifru.ifru_flags.to_le_bytes());
                }
                libc::write(w_raw, out.as_ptr().cast(), out.len());
            }
            libc::_exit(0)
        },
        Forked::Parent(pid) => pid,
    };
    drop(w);
    // This process's copies go now; the child's keep the helper until the child exits.
    helper.release();
    assert!(helper.handle().is_none());
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut std::fs::File::from(r), &mut out).unwrap();
    wait_child(pid, false).unwrap();
    assert_eq!(out.len(), 10, "the child entered the namespace");
    let ino = u64::from_le_bytes(out[..8].try_into().unwrap());
    let own = std::fs::metadata("/proc/self/ns/net").unwrap();
    assert_ne!(
        std::os::unix::fs::MetadataExt::ino(&own),
        ino,
        "a new namespace"
    );
    let flags = i16::from_le_bytes([out[8], out[9]]);
    assert_ne!(i32::from(flags) & libc::IFF_UP, 0, "lo is up: {flags:#x}");
    drop(helper);
    // Helpers dropped at once, released or not, are killed and reaped without waiting
    // for anyone (each Drop would hang on a helper that is never let go).
    for i in 0..6 {
        let mut helper = NetnsHelper::spawn().unwrap();
        if i % 2 == 0 {
            helper.release();
        }
        drop(helper);
    }
}

#[test]
fn idmap_userns_maps_root_to_the_given_ids_and_reaps_its_helper() {
    let uid = 1_234_567;
    let ns = idmap_userns(uid, uid + 1).unwrap();
    let own = std::fs::metadata("/proc/self/ns/user").unwrap();
    let made = std::fs::metadata(format!("/proc/self/fd/{}", ns.as_raw_fd())).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_ne!(own.ino(), made.ino(), "a new user namespace");
    let map: Vec<String> = uid_map_of(ns.as_fd())
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    assert_eq!(map, ["0", &uid.to_string(), "1"]);
    // Each call releases and reaps its helper before returning (a helper still holding
    // the pipe's write end would never see end of file, and the call would not return).
    for _ in 0..5 {
        drop(idmap_userns(uid, uid).unwrap());
    }
}
