//! `hostile-init PORT`: the testapp placed as an image's `/init` in place of Cloister's init,
//! acting as a hostile image would. It sends the boot heartbeat itself, then tries what a
//! process enclave must never allow and reports one line per attempt to the parent on `PORT`:
//! `ok <name> <detail>` when the attempt was refused, `FAIL <name> <detail>` when it worked.
//! Nothing here relies on Cloister's init having confined anything: whatever holds must have
//! been put in place by the runtime before it started this program.

use std::path::PathBuf;

use cloister_vsock::{Transport, ENCLAVE_SOCKET_PATH};

/// Runs the attempts and reports them; returns only on failure.
pub fn run(port: u32) -> i32 {
    if let Err(e) =
        cloister_init::heartbeat(&Transport::Enclave(PathBuf::from(ENCLAVE_SOCKET_PATH)))
    {
        eprintln!("hostile-init: heartbeat: {e}");
        return 1;
    }
    let report = attempts();
    print!("{report}");
    crate::send_report(port, &report)
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// `ok`/`FAIL` for a call that must fail: `ret < 0` is a refusal.
fn refused(out: &mut String, name: &str, ret: i64, err: i32) {
    let ok = ret < 0;
    let detail = if ok {
        crate::errno_name(err)
    } else {
        format!("succeeded ({ret})")
    };
    out.push_str(&format!(
        "{} {name} {detail}\n",
        if ok { "ok" } else { "FAIL" }
    ));
}

/// Runs `attempt` in a forked child (so that a call that works, such as `unshare`, cannot
/// change this process) and returns what the child reported: `(ret, errno)`.
fn in_child(attempt: fn() -> (i64, i32)) -> (i64, i32) {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid two-element array.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return (0, errno());
    }
    // SAFETY: this program is single-threaded here; the child makes raw syscalls, writes to
    // its pipe and `_exit`s.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let (ret, err) = attempt();
        let mut buf = [0u8; 12];
        buf[..8].copy_from_slice(&ret.to_ne_bytes());
        buf[8..].copy_from_slice(&err.to_ne_bytes());
        // SAFETY: writing our own buffer to our pipe, then leaving without destructors.
        unsafe {
            libc::write(fds[1], buf.as_ptr().cast(), buf.len());
            libc::_exit(0);
        }
    }
    // SAFETY: closing our copy of the write end.
    unsafe { libc::close(fds[1]) };
    let mut buf = [0u8; 12];
    // SAFETY: reading into our own buffer from our pipe.
    let n = unsafe { libc::read(fds[0], buf.as_mut_ptr().cast(), buf.len()) };
    // SAFETY: closing our descriptor; reaping our child (if the fork worked).
    unsafe {
        libc::close(fds[0]);
        if pid > 0 {
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
    }
    if n != 12 {
        return (0, 0); // no report: counted as "not refused"
    }
    let ret = i64::from_ne_bytes(buf[..8].try_into().unwrap_or_default());
    let err = i32::from_ne_bytes(buf[8..].try_into().unwrap_or_default());
    (ret, err)
}

fn attempts() -> String {
    let mut out = String::new();

    // SAFETY: socket takes integers; a descriptor it returns is closed below.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    let e = errno();
    if fd >= 0 && crate::socket_domain(fd) == Some(libc::AF_UNIX) {
        // A supervised enclave: the runtime's supervisor answered with a socket of its own;
        // no real vsock socket exists.
        out.push_str("ok af_vsock supervised (AF_UNIX)\n");
    } else {
        refused(&mut out, "af_vsock", fd.into(), e);
    }
    if fd >= 0 {
        // SAFETY: closing the descriptor just opened.
        unsafe { libc::close(fd) };
    }

    // A zeroed `struct io_uring_params` (120 bytes).
    let mut params = [0u8; 120];
    // SAFETY: io_uring_setup reads and writes the 120-byte params struct we own.
    let r = unsafe { libc::syscall(libc::SYS_io_uring_setup, 4u32, params.as_mut_ptr()) };
    let e = errno();
    refused(&mut out, "io_uring", r, e);
    if let Ok(fd @ 0..) = i32::try_from(r) {
        // SAFETY: closing the ring descriptor just made.
        unsafe { libc::close(fd) };
    }

    // KEYCTL_GET_KEYRING_ID (0) of KEY_SPEC_USER_KEYRING (-4), creating it: touches the
    // kernel's (unnamespaced) keyrings.
    // SAFETY: keyctl with integer arguments only.
    let r = unsafe { libc::syscall(libc::SYS_keyctl, 0, -4i64, 1) };
    let e = errno();
    refused(&mut out, "keyctl", r, e);

    // SAFETY: userfaultfd takes flags; a descriptor it returns is closed below.
    let r = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC) };
    let e = errno();
    refused(&mut out, "userfaultfd", r, e);
    if let Ok(fd @ 0..) = i32::try_from(r) {
        // SAFETY: closing the descriptor just made.
        unsafe { libc::close(fd) };
    }

    refused_ptrace(&mut out);

    let (r, e) = in_child(|| {
        // SAFETY: unshare takes flags; this runs in a throwaway child.
        let r = unsafe { libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNS) };
        (r.into(), errno())
    });
    refused(&mut out, "unshare", r, e);

    let (r, e) = in_child(|| {
        // /dev: a directory every enclave root has.
        // SAFETY: constant C strings and a null data pointer; in a throwaway child.
        let r = unsafe {
            libc::mount(
                c"none".as_ptr(),
                c"/dev".as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        (r.into(), errno())
    });
    refused(&mut out, "mount", r, e);

    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .map(|v| v.trim().to_owned())
            .unwrap_or_default()
    };
    let sets: Vec<String> = ["CapEff:", "CapPrm:", "CapInh:", "CapBnd:", "CapAmb:"]
        .iter()
        .map(|k| format!("{k}{}", field(k)))
        .collect();
    let no_caps = sets.iter().all(|s| s.ends_with(":0000000000000000"));
    out.push_str(&format!(
        "{} caps {}\n",
        if no_caps { "ok" } else { "FAIL" },
        sets.join(" ")
    ));
    let nnp = field("NoNewPrivs:");
    out.push_str(&format!(
        "{} no_new_privs {nnp}\n",
        if nnp == "1" { "ok" } else { "FAIL" }
    ));
    let mode = field("Seccomp:");
    out.push_str(&format!(
        "{} seccomp {mode}\n",
        if mode == "2" { "ok" } else { "FAIL" }
    ));
    out
}

/// PTRACE_ATTACH to a child of ours (same user: allowed unless something forbids ptrace).
fn refused_ptrace(out: &mut String) {
    // SAFETY: single-threaded; the child only pauses until it is killed.
    let child = unsafe { libc::fork() };
    if child == 0 {
        loop {
            // SAFETY: waits for a signal; the child never returns from here.
            unsafe { libc::pause() };
        }
    }
    if child < 0 {
        refused(out, "ptrace", 0, 0);
        return;
    }
    // SAFETY: ptrace with a pid and null pointers.
    let r = unsafe {
        libc::ptrace(
            libc::PTRACE_ATTACH,
            child,
            std::ptr::null_mut::<libc::c_void>(),
            std::ptr::null_mut::<libc::c_void>(),
        )
    };
    let e = errno();
    refused(out, "ptrace", r, e);
    // SAFETY: killing and reaping our own child.
    unsafe {
        libc::kill(child, libc::SIGKILL);
        libc::waitpid(child, std::ptr::null_mut(), 0);
    }
}
