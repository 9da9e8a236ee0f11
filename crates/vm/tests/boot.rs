//! Boots real guests (Debian's cloud kernel, Cloister's init, the static testapp) under QEMU
//! with the vhost-user vsock device, and drives them over the host fabric. Run as root; the
//! kernel is fetched by scripts/fetch-vm-kernel.sh when missing.

mod common;

use std::io::{BufRead, Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cloister_vm::{Accel, VmConfig, VmEnclave, VmError, VmExit};
use cloister_vsock::nsm_frame::{read_frame, write_frame};
use cloister_vsock::{VsockAddr, VsockListener, VsockStream};

/// Generous: TCG on a shared two-core machine.
const BOOT: Duration = Duration::from_secs(180);

struct Run {
    _img: common::Image,
    run: tempfile::TempDir,
    vm: VmEnclave,
}

fn boot(cid: u32, argv: &[&str], tweak: impl FnOnce(&mut VmConfig)) -> Run {
    let img = common::image(argv);
    let run = tempfile::tempdir().unwrap();
    let mut cfg = VmConfig::new(
        &img.kernel,
        &img.initrd,
        cid,
        run.path(),
        common::fake_nsm(),
    );
    cfg.debug = true;
    cfg.boot_timeout = BOOT;
    cfg.run_as = Some(common::VM_USER);
    cfg.cpus = vec![0];
    tweak(&mut cfg);
    let vm = VmEnclave::start(cfg).expect("VM start");
    Run { _img: img, run, vm }
}

fn fabric(run: &tempfile::TempDir) -> std::path::PathBuf {
    run.path().join("vsock")
}

fn expect_boot(r: &Run) {
    match r.vm.wait_heartbeat(BOOT) {
        Ok(t) => eprintln!("heartbeat after {t:?} ({:?})", r.vm.accel()),
        Err(e) => panic!("no heartbeat: {e}\nconsole:\n{}", r.vm.console_tail()),
    }
}

#[test]
fn picks_tcg_on_a_pvm_only_kvm() {
    // On hosts whose /dev/kvm only runs PVM guests the probe must not choose KVM.
    if std::path::Path::new("/sys/module/kvm_pvm").exists() {
        assert_eq!(cloister_vm::accel::detect(), Accel::Tcg);
    }
}

#[test]
fn heartbeat_parent_echo_and_kill() {
    let _g = common::serial();
    let beats = Arc::new(AtomicUsize::new(0));
    let b = beats.clone();
    // A descriptor of the monitor without close-on-exec must not reach QEMU.
    let marker_dir = tempfile::tempdir().unwrap();
    let marker_path = marker_dir.path().join("monitor-secret");
    std::fs::write(&marker_path, b"x").unwrap();
    let marker = std::fs::File::open(&marker_path).unwrap();
    // SAFETY: duplicating an open descriptor without CLOEXEC; closed at the end of the test.
    let leaked = unsafe { libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(&marker), libc::F_DUPFD, 3) };
    assert!(leaked >= 3);
    let mut r = boot(21, &["echo-server", "5000"], |c| {
        c.on_heartbeat = Some(Box::new(move || {
            b.fetch_add(1, Ordering::SeqCst);
        }));
    });
    expect_boot(&r);
    assert_eq!(beats.load(Ordering::SeqCst), 1);
    // QEMU runs as the unprivileged user, every thread pinned to CPU 0.
    let pid = r.vm.pid();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(
        uid_line.split_whitespace().skip(1).all(|u| u == "65534"),
        "{uid_line}"
    );
    // Confinement: seccomp filter, no_new_privs, namespaces of its own, no leaked descriptor.
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_owned())
            .unwrap_or_default()
    };
    assert_eq!(field("Seccomp:"), "2", "{status}");
    assert_eq!(field("NoNewPrivs:"), "1", "{status}");
    for ns in ["mnt", "net", "ipc", "uts"] {
        let mine = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
        let qemu = std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap();
        assert_ne!(mine, qemu, "QEMU shares the {ns} namespace");
    }
    let net_dev = std::fs::read_to_string(format!("/proc/{pid}/net/dev")).unwrap();
    let ifaces: Vec<&str> = net_dev
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(str::trim)
        .collect();
    assert_eq!(ifaces, ["lo"], "{net_dev}");
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
        let target = std::fs::read_link(fd.unwrap().path()).unwrap_or_default();
        assert_ne!(target, marker_path, "a monitor descriptor leaked into QEMU");
    }
    // SAFETY: closing the duplicate made above.
    unsafe { libc::close(leaked) };
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let st = std::fs::read_to_string(task.unwrap().path().join("status")).unwrap_or_default();
        if let Some(l) = st.lines().find(|l| l.starts_with("Cpus_allowed_list:")) {
            assert_eq!(l.split_whitespace().nth(1), Some("0"), "{l}");
        }
    }
    // The echo server may need a moment after the heartbeat to listen.
    let mut stream = None;
    for _ in 0..200 {
        match VsockStream::connect_fabric(&fabric(&r.run), VsockAddr::new(21, 5000)) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
    let mut s = stream.unwrap_or_else(|| panic!("no listener:\n{}", r.vm.console_tail()));
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let msg: Vec<u8> = (0..300_000u32)
        .map(|i| u8::try_from(i % 251).unwrap())
        .collect();
    let writer = {
        let mut w = s.try_clone().unwrap();
        let m = msg.clone();
        std::thread::spawn(move || w.write_all(&m).unwrap())
    };
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back).unwrap();
    writer.join().unwrap();
    assert!(back == msg, "echo mismatch");
    // A port nobody listens on: the connection is closed without an OK.
    assert!(VsockStream::connect_fabric(&fabric(&r.run), VsockAddr::new(21, 5999)).is_err());
    // Termination from the host.
    let pid = r.vm.pid();
    assert_eq!(r.vm.kill(), VmExit::Killed);
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    let sock = fabric(&r.run).join("21.sock");
    drop(r.vm);
    assert!(!sock.exists(), "the fabric socket outlived the enclave");
}

#[test]
fn guest_connects_to_a_parent_listener() {
    let _g = common::serial();
    let cid = 22;
    let run_dir = tempfile::tempdir().unwrap();
    let listener = VsockListener::bind_fabric(&run_dir.path().join("vsock"), 6000).unwrap();
    let img = common::image(&["connect-parent", "6000", "hello-from-the-vm"]);
    let mut cfg = VmConfig::new(
        &img.kernel,
        &img.initrd,
        cid,
        run_dir.path(),
        common::fake_nsm(),
    );
    cfg.debug = true;
    cfg.boot_timeout = BOOT;
    cfg.run_as = Some(common::VM_USER);
    // The listener (root's) believes the preamble of a peer with the enclave's identity
    // because `<cid>.sock` vouches for its gid.
    let identity = cloister_vm::HostIdentity {
        uid: common::VM_USER.0,
        gid: common::VM_USER.1,
    };
    cfg.enclave_identity = Some(identity);
    let mut vm = VmEnclave::start(cfg).unwrap();
    let (mut s, peer) = listener.accept().unwrap();
    assert_eq!(peer.cid, cid);
    assert!(vm.booted());
    // The device connected as the enclave's host identity, not as root.
    let cred = nix::sys::socket::getsockopt(
        &std::os::fd::AsFd::as_fd(&s),
        nix::sys::socket::sockopt::PeerCredentials,
    )
    .unwrap();
    assert_eq!((cred.uid(), cred.gid()), (identity.uid, identity.gid));
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut line = String::new();
    std::io::BufReader::new(&mut s)
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "hello-from-the-vm\n");
    s.write_all(b"pong\n").unwrap();
    let mut seen = false;
    for _ in 0..600 {
        if vm.console_tail().contains("parent answered: pong") {
            seen = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(seen, "{}", vm.console_tail());
    assert_eq!(vm.kill(), VmExit::Killed);
}

#[test]
fn nsm_requests_are_answered_then_the_vm_powers_off() {
    let _g = common::serial();
    let cid = 23;
    let run_dir = tempfile::tempdir().unwrap();
    let listener = VsockListener::bind_fabric(&run_dir.path().join("vsock"), 7000).unwrap();
    let img = common::image(&["nsm-relay", "7000"]);
    let mut cfg = VmConfig::new(
        &img.kernel,
        &img.initrd,
        cid,
        run_dir.path(),
        common::fake_nsm(),
    );
    cfg.debug = true;
    cfg.boot_timeout = BOOT;
    cfg.run_as = Some(common::VM_USER);
    let vm = VmEnclave::start(cfg).unwrap();
    let (mut s, peer) = listener.accept().unwrap();
    assert_eq!(peer.cid, cid);
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    for req in [&b"\xa1\x00"[..], &[7u8; 3000][..]] {
        write_frame(&mut s, req).unwrap();
        let resp = read_frame(&mut s, 65536).unwrap().unwrap();
        assert_eq!(&resp[..4], b"nsm:");
        assert_eq!(&resp[4..], req);
    }
    // Closing the parent side ends the relay; init reports and powers the VM off.
    drop(s);
    let exit = vm
        .wait_timeout(BOOT)
        .unwrap_or_else(|| panic!("VM did not power off:\n{}", vm.console_tail()));
    assert_eq!(exit, VmExit::PoweredOff, "{}", vm.console_tail());
    assert!(vm
        .console_tail()
        .contains("Enclave command exited with status 0"));
}

#[test]
fn bogus_init_panic_is_detected() {
    let _g = common::serial();
    let r = boot(24, &["sleep"], |c| {
        c.cmdline = "rdinit=/does-not-exist".into();
    });
    let exit =
        r.vm.wait_timeout(BOOT)
            .unwrap_or_else(|| panic!("VM still running:\n{}", r.vm.console_tail()));
    match exit {
        VmExit::Panicked(line) => assert!(line.contains("Kernel panic"), "{line}"),
        other => panic!("expected a panic, got {other:?}\n{}", r.vm.console_tail()),
    }
    assert!(!r.vm.booted());
}

#[test]
fn missing_heartbeat_times_out_cleanly() {
    let _g = common::serial();
    // init is replaced by the testapp sleeping forever: it never sends the heartbeat.
    let r = boot(25, &["sleep"], |c| {
        c.cmdline = "rdinit=/rootfs/bin/testapp -- sleep".into();
        c.boot_timeout = Duration::from_secs(8);
    });
    match r.vm.wait_heartbeat(Duration::from_secs(2)) {
        Err(VmError::HeartbeatTimeout(_)) => {}
        other => panic!("expected a heartbeat timeout, got {other:?}"),
    }
    let exit =
        r.vm.wait_timeout(Duration::from_secs(60))
            .expect("watchdog kill");
    assert_eq!(exit, VmExit::BootTimeout);
    assert!(!r.vm.booted());
}
