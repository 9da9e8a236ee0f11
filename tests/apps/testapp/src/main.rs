//! The `cloister-testapp` binary: see the library docs for the subcommands.

use cloister_vsock::{VsockAddr, VsockListener, VsockStream, PARENT_CID};
use std::io::{BufRead, BufReader, Read, Write};

mod bench;
mod hostile;

fn main() {
    // Started as an enclave's `/init` (PID 1 of the bootstrap ramdisk), where there is no
    // /cmd: the subcommand and its arguments come from `/testapp.mode` when the image has one
    // (e.g. `sleep`: an init that never sends the boot heartbeat).
    let argv0 = std::env::args_os().next().unwrap_or_default();
    let as_init = std::path::Path::new(&argv0).file_name() == Some(std::ffi::OsStr::new("init"));
    let mode = as_init.then(read_mode_file).flatten();
    let args: Vec<String> = match mode {
        Some(words) => words,
        None => std::env::args().skip(1).collect(),
    };
    let arg = |i: usize| args.get(i).cloned().unwrap_or_default();
    let num = |i: usize| arg(i).parse::<u32>().unwrap_or(0);
    let code = match arg(0).as_str() {
        "echo-server" => echo_server(num(1)),
        "sink-server" => sink_server(num(1)),
        "connect-parent" => connect_parent(num(1), &arg(2)),
        "nsm-relay" => nsm_relay(num(1)),
        "isolation-suite" => {
            let report = isolation_suite(
                num(2),
                num(3),
                i32::try_from(num(4)).unwrap_or(0),
                u64::from(num(5)),
            );
            print!("{report}");
            send_report(num(1), &report)
        }
        "write-file" => match std::fs::write(arg(1), b"persist?") {
            Ok(()) => {
                println!("wrote {}", arg(1));
                sleep_forever()
            }
            Err(e) => {
                println!("write failed: {e}");
                1
            }
        },
        "check-absent" => {
            let present = std::path::Path::new(&arg(1)).exists();
            let report = format!(
                "{} {}\n",
                if present { "FAIL present" } else { "ok absent" },
                arg(1)
            );
            send_report(num(2), &report)
        }
        "sleep" => sleep_forever(),
        "hostile-init" => hostile::run(num(1)),
        "vsock-bench" => {
            // Repetitions: 9 unless given.
            let reps = if num(5) == 0 { 9 } else { num(5) };
            bench::run(num(1), num(2), num(3), num(4), reps)
        }
        "signal-unix" => match std::os::unix::net::UnixStream::connect(arg(1)) {
            Ok(mut s) => i32::from(s.write_all(b"R").is_err()),
            Err(e) => {
                eprintln!("signal-unix {}: {e}", arg(1));
                1
            }
        },
        other => {
            eprintln!("unknown subcommand {other:?}");
            2
        }
    };
    std::process::exit(code);
}

/// `sizeof(T)` as a `socklen_t`, for the small socket structures.
#[allow(
    clippy::cast_possible_truncation,
    reason = "socket structures are a few bytes"
)]
pub(crate) fn socklen_of<T>() -> libc::socklen_t {
    std::mem::size_of::<T>() as libc::socklen_t
}

/// An address family constant as a `sa_family_t`.
#[allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "address families are small positive numbers"
)]
pub(crate) fn family(af: libc::c_int) -> libc::sa_family_t {
    af as libc::sa_family_t
}

/// Largest `/testapp.mode` file read.
const MAX_MODE_FILE: u64 = 4096;

/// The words of `/testapp.mode`, if it exists.
fn read_mode_file() -> Option<Vec<String>> {
    let f = std::fs::File::open("/testapp.mode").ok()?;
    let mut text = String::new();
    f.take(MAX_MODE_FILE).read_to_string(&mut text).ok()?;
    Some(text.split_whitespace().map(str::to_owned).collect())
}

fn sleep_forever() -> i32 {
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

fn send_report(port: u32, report: &str) -> i32 {
    match VsockStream::connect(VsockAddr::new(PARENT_CID, port)) {
        Ok(mut s) => {
            let _ = s.write_all(report.as_bytes());
            let _ = s.shutdown(std::net::Shutdown::Write);
            let mut sink = Vec::new();
            let _ = s.read_to_end(&mut sink);
            sleep_forever()
        }
        Err(e) => {
            eprintln!("cannot reach the parent: {e}");
            1
        }
    }
}

fn echo_server(port: u32) -> i32 {
    let listener = match VsockListener::bind(port) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("bind {port}: {e}");
            return 1;
        }
    };
    println!("echo-server listening on {port}");
    loop {
        match listener.accept() {
            Ok((mut s, _)) => {
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        match s.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if s.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                        }
                    }
                });
            }
            Err(e) => eprintln!("accept: {e}"),
        }
    }
}

/// Reads everything a connection sends and answers with the byte count (8 bytes, big endian).
fn sink_server(port: u32) -> i32 {
    let listener = match VsockListener::bind(port) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("bind {port}: {e}");
            return 1;
        }
    };
    loop {
        if let Ok((mut s, _)) = listener.accept() {
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 256 * 1024];
                let mut total = 0u64;
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => total += n as u64,
                    }
                }
                let _ = s.write_all(&total.to_be_bytes());
            });
        }
    }
}

fn connect_parent(port: u32, message: &str) -> i32 {
    let mut s = match VsockStream::connect(VsockAddr::new(PARENT_CID, port)) {
        Ok(s) => s,
        Err(e) => {
            println!("connect-parent {port}: {e}");
            return 1;
        }
    };
    if s.write_all(format!("{message}\n").as_bytes()).is_err() {
        return 1;
    }
    let mut line = String::new();
    let _ = BufReader::new(&mut s).read_line(&mut line);
    println!("parent answered: {}", line.trim_end());
    sleep_forever()
}

/// Connects to the parent on `port` and copies bytes between it and the NSM channel. When the
/// NSM closes the channel (it does on a length prefix over its hard cap) the next bytes from
/// the parent go to a fresh channel.
fn nsm_relay(port: u32) -> i32 {
    let parent = match VsockStream::connect(VsockAddr::new(PARENT_CID, port)) {
        Ok(s) => s,
        Err(e) => {
            println!("nsm-relay: parent {port}: {e}");
            return 1;
        }
    };
    let Ok(mut p_in) = parent.try_clone() else {
        return 1;
    };
    let mut channel: Option<(VsockStream, std::thread::JoinHandle<()>)> = None;
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match p_in.read(&mut buf) {
            Ok(0) | Err(_) => return 0,
            Ok(n) => n,
        };
        if channel.as_ref().is_some_and(|(_, back)| back.is_finished()) {
            channel = None;
        }
        if channel.is_none() {
            let nsm = match VsockStream::connect(VsockAddr::new(0, 1)) {
                Ok(s) => s,
                Err(e) => {
                    println!("nsm-relay: nsm: {e}");
                    return 1;
                }
            };
            let (Ok(mut n_out), Ok(mut p_out)) = (nsm.try_clone(), parent.try_clone()) else {
                return 1;
            };
            let back = std::thread::spawn(move || {
                let _ = std::io::copy(&mut n_out, &mut p_out);
            });
            channel = Some((nsm, back));
        }
        if let Some((nsm, _)) = channel.as_mut() {
            if nsm.write_all(&buf[..n]).is_err() {
                channel = None;
            }
        }
    }
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn errno_name(e: i32) -> String {
    let name = match e {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::ESRCH => "ESRCH",
        libc::EACCES => "EACCES",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EINVAL => "EINVAL",
        libc::ENETUNREACH => "ENETUNREACH",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::EAFNOSUPPORT => "EAFNOSUPPORT",
        libc::ENOSYS => "ENOSYS",
        libc::EROFS => "EROFS",
        _ => return format!("errno{e}"),
    };
    name.to_owned()
}

/// Runs every break-out attempt; one line per check: `ok <name> <detail>` when the attempt
/// failed the expected way, `FAIL <name> <detail>` otherwise.
fn isolation_suite(other_cid: u32, host_tcp_port: u32, host_pid: i32, memory_mib: u64) -> String {
    let mut out = String::new();
    let mut line = |ok: bool, name: &str, detail: String| {
        out.push_str(&format!(
            "{} {name} {detail}\n",
            if ok { "ok" } else { "FAIL" }
        ));
    };

    line_host_view(&mut line, host_tcp_port);
    line_privileged(&mut line);
    line_dev(&mut line);
    line_host_processes(&mut line, host_pid);

    // /proc: the kernel's secrets masked, its knobs read-only, init shielded from the OOM
    // killer while its children are not.
    line_proc(&mut line);
    line_sys(&mut line);

    // Another enclave over vsock.
    let r = VsockStream::connect(VsockAddr::new(other_cid, 5000));
    line(
        r.is_err(),
        "other_enclave",
        match r {
            Ok(_) => "connected".into(),
            Err(e) => e.to_string(),
        },
    );

    // The pids limit holds against a fork bomb (in a child process group).
    line_fork_bomb(&mut line);
    // Memory beyond the cap kills only the hog.
    line_memory(&mut line, memory_mib);
    out
}

/// What the enclave sees of the host: open descriptors, credentials, network.
fn line_host_view(line: &mut dyn FnMut(bool, &str, String), host_tcp_port: u32) {
    // Host descriptors: only stdio may be open (enumerated first, before we open anything).
    let fds: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    let extra: Vec<&String> = fds
        .iter()
        .filter(|f| !["0", "1", "2"].contains(&f.as_str()))
        .collect();
    // One extra entry is the directory handle read_dir itself holds.
    line(extra.len() <= 1, "fds", format!("{fds:?}"));

    // Credentials: no capabilities, no_new_privs, seccomp filter mode.
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .map(|v| v.trim().to_owned())
            .unwrap_or_default()
    };
    line(
        field("CapEff:") == "0000000000000000",
        "caps",
        format!("CapEff={} CapBnd={}", field("CapEff:"), field("CapBnd:")),
    );
    line(
        field("NoNewPrivs:") == "1",
        "no_new_privs",
        field("NoNewPrivs:"),
    );
    line(field("Seccomp:") == "2", "seccomp", field("Seccomp:"));

    // Network: only lo, nothing routed, the host's TCP port unreachable.
    let dev = std::fs::read_to_string("/proc/net/dev").unwrap_or_default();
    let ifaces: Vec<String> = dev
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(|s| s.trim().to_owned())
        .collect();
    line(ifaces == ["lo"], "interfaces", format!("{ifaces:?}"));
    let (r, e) = tcp_connect([10, 0, 0, 1], 80);
    line(r < 0 && e == libc::ENETUNREACH, "route", errno_name(e));
    let (r, e) = tcp_connect([127, 0, 0, 1], u16::try_from(host_tcp_port).unwrap_or(0));
    line(r < 0 && e == libc::ECONNREFUSED, "host_tcp", errno_name(e));
}

/// Privileged operations: mount, unshare, ptrace, a real AF_VSOCK socket.
fn line_privileged(line: &mut dyn FnMut(bool, &str, String)) {
    // Privileged operations.
    // SAFETY: valid NUL-terminated strings; mount fails (that is the point) or mounts a tmpfs.
    let r = unsafe {
        libc::mount(
            c"none".as_ptr(),
            c"/tmp".as_ptr(),
            c"tmpfs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    let e = errno();
    line(r < 0 && e == libc::EPERM, "mount", errno_name(e));
    // SAFETY: unshare takes an integer.
    let r = unsafe { libc::unshare(libc::CLONE_NEWUSER) };
    let e = errno();
    line(r < 0 && e == libc::EPERM, "unshare", errno_name(e));
    // SAFETY: ptrace(PTRACE_ATTACH, 1) with null pointers; fails or attaches to init.
    let r = unsafe {
        libc::ptrace(
            libc::PTRACE_ATTACH,
            1,
            std::ptr::null_mut::<libc::c_void>(),
            std::ptr::null_mut::<libc::c_void>(),
        )
    };
    let e = errno();
    line(r < 0 && e == libc::EPERM, "ptrace", errno_name(e));
    // SAFETY: socket takes integers.
    let r = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM, 0) };
    let e = errno();
    // Refused, or (a supervised enclave) answered with the supervisor's Unix socket: never a
    // real vsock socket.
    let supervised = r >= 0 && socket_domain(r) == Some(libc::AF_UNIX);
    line(
        (r < 0 && (e == libc::EPERM || e == libc::EAFNOSUPPORT)) || supervised,
        "af_vsock",
        if supervised {
            "supervised (AF_UNIX)".to_owned()
        } else {
            errno_name(e)
        },
    );
    if r >= 0 {
        // SAFETY: closing the descriptor just made.
        unsafe { libc::close(r) };
    }
}

/// `/dev`: the character devices and the vsock socket, working nodes, no mknod.
fn line_dev(line: &mut dyn FnMut(bool, &str, String)) {
    // /dev: the character devices and the vsock socket, nothing of the host's; working
    // nodes; and no way to make another.
    let mut dev: Vec<String> = std::fs::read_dir("/dev")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    dev.sort();
    let null_works = {
        use std::io::Read;
        let mut b = [1u8; 8];
        std::fs::write("/dev/null", b"x").is_ok()
            && std::fs::File::open("/dev/zero")
                .and_then(|mut f| f.read_exact(&mut b))
                .is_ok()
            && b == [0u8; 8]
    };
    // A supervised enclave also has `nsm` and `vsock` (both null devices, their ioctls
    // answered by the supervisor).
    dev.retain(|n| n != "nsm" && n != "vsock");
    line(
        dev == [
            "full",
            "null",
            "random",
            "tty",
            "urandom",
            "vsock.sock",
            "zero",
        ] && null_works,
        "dev",
        format!("{dev:?} null/zero work: {null_works}"),
    );
    // SAFETY: a NUL-terminated path and integers; mknod fails (the point) or makes a node.
    let r = unsafe {
        libc::mknod(
            c"/tmp/mem".as_ptr(),
            libc::S_IFCHR | 0o600,
            libc::makedev(1, 1),
        )
    };
    let e = errno();
    line(r < 0 && e == libc::EPERM, "mknod", errno_name(e));
}

/// Host processes: PID 1 is the enclave's, the host's pids are neither visible nor reachable.
fn line_host_processes(line: &mut dyn FnMut(bool, &str, String), host_pid: i32) {
    // Host processes and /proc.
    let init_cmd = std::fs::read("/proc/1/cmdline").unwrap_or_default();
    line(
        init_cmd.starts_with(b"/init"),
        "pid1",
        String::from_utf8_lossy(&init_cmd).replace('\0', " "),
    );
    let r = std::fs::metadata(format!("/proc/{host_pid}/status"));
    line(
        r.is_err(),
        "host_proc",
        format!(
            "/proc/{host_pid}: {}",
            r.map(|_| "visible".to_owned())
                .unwrap_or_else(|e| e.to_string())
        ),
    );
    // SAFETY: kill with signal 0 only checks existence.
    let r = unsafe { libc::kill(host_pid, 0) };
    let e = errno();
    line(r < 0 && e == libc::ESRCH, "host_pid", errno_name(e));
    let pids: Vec<String> = std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
                .collect()
        })
        .unwrap_or_default();
    line(
        pids.len() < 10,
        "pid_count",
        format!("{} processes visible", pids.len()),
    );
}

/// `/proc` files that must read as empty (masked by `/dev/null` or an empty tmpfs) where the
/// kernel has them.
const PROC_MASKED: &[&str] = &[
    "kcore",
    "keys",
    "timer_list",
    "sched_debug",
    "config.gz",
    "iomem",
    "kallsyms",
    "latency_stats",
    "timer_stats",
    "scsi",
    "acpi",
];
/// `/proc` paths that must be read-only mounts.
const PROC_READ_ONLY: &[&str] = &["sys", "sysrq-trigger", "irq", "bus", "fs"];

/// `/sys` as AWS's init mounts it, but read-only and of the enclave's own network namespace
/// (only `lo`), with the host's firmware masked; `/tmp` and `/run` tmpfs.
fn line_sys(line: &mut dyn FnMut(bool, &str, String)) {
    let mut nets: Vec<String> = std::fs::read_dir("/sys/class/net")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    nets.sort();
    line(nets == ["lo"], "sys_net", format!("{nets:?}"));
    let flags = |path: &str| -> Option<(u64, i64)> {
        let c = std::ffi::CString::new(path).ok()?;
        // SAFETY: valid NUL-terminated path and out-pointers to zeroed structs of ours.
        let mut vfs: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let ok = unsafe {
            libc::statvfs(c.as_ptr(), &mut vfs) == 0 && libc::statfs(c.as_ptr(), &mut fs) == 0
        };
        ok.then_some((vfs.f_flag, fs.f_type))
    };
    const SYSFS_MAGIC: i64 = 0x6265_6572;
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    let sys = flags("/sys");
    line(
        matches!(sys, Some((f, t)) if f & libc::ST_RDONLY != 0 && t == SYSFS_MAGIC),
        "sys_readonly",
        format!("{sys:?}"),
    );
    let firmware: Vec<_> = std::fs::read_dir("/sys/firmware")
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    line(firmware.is_empty(), "sys_masked", format!("{firmware:?}"));
    let (tmp, run) = (flags("/tmp"), flags("/run"));
    line(
        matches!((tmp, run), (Some((_, a)), Some((_, b))) if a == TMPFS_MAGIC && b == TMPFS_MAGIC),
        "tmp_run",
        format!("{tmp:?} {run:?}"),
    );
}

fn line_proc(line: &mut dyn FnMut(bool, &str, String)) {
    let mut leaks = Vec::new();
    for name in PROC_MASKED {
        let path = std::path::Path::new("/proc").join(name);
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue; // this kernel has no such file
        };
        let empty = if meta.is_dir() {
            std::fs::read_dir(&path).is_ok_and(|mut d| d.next().is_none())
        } else {
            let mut buf = [0u8; 64];
            std::fs::File::open(&path).is_ok_and(|mut f| f.read(&mut buf).is_ok_and(|n| n == 0))
        };
        if !empty {
            leaks.push(*name);
        }
    }
    line(
        leaks.is_empty(),
        "proc_masked",
        format!("not masked: {leaks:?}"),
    );
    // Mount points under /proc and their options (mountinfo fields 5 and 6).
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let read_only = |target: &str| {
        info.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 5 && f[4] == target && f[5].split(',').any(|o| o == "ro")
        })
    };
    let writable: Vec<&str> = PROC_READ_ONLY
        .iter()
        .copied()
        .filter(|n| std::path::Path::new("/proc").join(n).exists())
        .filter(|n| !read_only(&format!("/proc/{n}")))
        .collect();
    line(
        writable.is_empty(),
        "proc_readonly",
        format!("writable: {writable:?}"),
    );
    let adj = |who: &str| {
        std::fs::read_to_string(format!("/proc/{who}/oom_score_adj"))
            .map(|s| s.trim().to_owned())
            .unwrap_or_default()
    };
    // The host checks init's exact value where its root may lower scores (it may not in
    // every container); here: init is never more likely a victim than its command.
    let (init, me) = (adj("1"), adj("self"));
    let init_n: i32 = init.parse().unwrap_or(i32::MAX);
    line(
        me == "0" && init_n <= 0,
        "oom_score_adj",
        format!("init={init} command={me}"),
    );
}

fn tcp_connect(ip: [u8; 4], port: u16) -> (i32, i32) {
    // SAFETY: socket takes integers.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
    if fd < 0 {
        return (fd, errno());
    }
    let addr = libc::sockaddr_in {
        sin_family: family(libc::AF_INET),
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(ip),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: `addr` is a valid sockaddr_in for the call's duration.
    let r = unsafe {
        libc::connect(
            fd,
            (&addr as *const libc::sockaddr_in).cast(),
            socklen_of::<libc::sockaddr_in>(),
        )
    };
    let e = errno();
    // SAFETY: closing our own descriptor.
    unsafe { libc::close(fd) };
    (r, e)
}

fn fork_pid() -> i32 {
    // SAFETY: this program is single-threaded at this point; the child only calls
    // async-signal-safe functions (fork, pause, _exit, write through libc).
    unsafe { libc::fork() }
}

fn line_fork_bomb(line: &mut dyn FnMut(bool, &str, String)) {
    let (rd, wr) = pipe();
    let child = fork_pid();
    if child == 0 {
        // SAFETY: new process group so the whole bomb can be killed at once.
        unsafe { libc::setpgid(0, 0) };
        let mut n: u32 = 0;
        let mut err = 0;
        loop {
            let p = fork_pid();
            if p == 0 {
                // SAFETY: grandchild just waits to be killed.
                unsafe { libc::pause() };
                // SAFETY: never returns.
                unsafe { libc::_exit(0) };
            }
            if p < 0 {
                err = errno();
                break;
            }
            n += 1;
            if n > 100_000 {
                break;
            }
        }
        let msg = format!("{n} {err}");
        // SAFETY: writing our own buffer to our pipe.
        unsafe { libc::write(wr, msg.as_ptr().cast(), msg.len()) };
        // SAFETY: kill the whole group (including us), then exit.
        unsafe { libc::kill(0, libc::SIGKILL) };
        // SAFETY: never returns.
        unsafe { libc::_exit(0) };
    }
    // SAFETY: closing our copy of the write end.
    unsafe { libc::close(wr) };
    let text = read_all(rd);
    let mut st = 0;
    // SAFETY: reaping our child.
    unsafe { libc::waitpid(child, &mut st, 0) };
    let mut it = text.split_whitespace();
    let n: u32 = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let e: i32 = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    line(
        e == libc::EAGAIN && n < 2000,
        "fork_bomb",
        format!("{n} forks, then {}", errno_name(e)),
    );
    // Let init reap the killed group before the next check.
    std::thread::sleep(std::time::Duration::from_millis(300));
}

fn line_memory(line: &mut dyn FnMut(bool, &str, String), memory_mib: u64) {
    let child = fork_pid();
    if child == 0 {
        let want = (memory_mib + 64) << 20;
        let mut blocks: Vec<Vec<u8>> = Vec::new();
        let mut got = 0u64;
        while got < want {
            blocks.push(vec![1u8; 1 << 20]);
            got += 1 << 20;
        }
        // SAFETY: never returns.
        unsafe { libc::_exit(0) };
    }
    let mut st = 0;
    // SAFETY: reaping our child.
    unsafe { libc::waitpid(child, &mut st, 0) };
    let killed = libc::WIFSIGNALED(st) && libc::WTERMSIG(st) == libc::SIGKILL;
    let detail = if libc::WIFSIGNALED(st) {
        format!("hog killed by signal {}", libc::WTERMSIG(st))
    } else {
        format!("hog exited {}", libc::WEXITSTATUS(st))
    };
    line(killed, "memory", detail);
}

fn pipe() -> (i32, i32) {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid 2-element array.
    unsafe { libc::pipe(fds.as_mut_ptr()) };
    (fds[0], fds[1])
}

fn read_all(fd: i32) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 256];
    loop {
        // SAFETY: reading into our own buffer.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        let Ok(n @ 1..) = usize::try_from(n) else {
            break;
        };
        out.extend_from_slice(&buf[..n]);
    }
    // SAFETY: closing our descriptor.
    unsafe { libc::close(fd) };
    String::from_utf8_lossy(&out).into_owned()
}

/// The domain of socket `fd` (`SO_DOMAIN`), `None` when it is not a socket.
pub(crate) fn socket_domain(fd: i32) -> Option<i32> {
    let mut domain: libc::c_int = 0;
    let mut len = socklen_of::<libc::c_int>();
    // SAFETY: `domain` and `len` are valid for writes of the sizes given.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_DOMAIN,
            (&mut domain as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    (r == 0).then_some(domain)
}
