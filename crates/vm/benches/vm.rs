//! VM backend benchmarks, each beside its baseline in the same run:
//! 1. boot to heartbeat of a QEMU microvm enclave (accelerator as detected: TCG on hosts
//!    without a usable KVM) vs. a plain `unshare` (pid, mount, net, ipc, uts namespaces) start
//!    of the static testapp until it listens on the host fabric. Median of N
//!    (`CLOISTER_VM_BENCH_BOOTS`, default 5).
//! 2. vsock stream throughput through the vhost-user device: the host sends
//!    `CLOISTER_VM_BENCH_MIB` (default 64) MiB to the guest's echo server and reads it back, so
//!    every byte crosses guest->host (and host->guest) once; vs. the same echo over a Unix
//!    socket pair on the host.
//!
//! Run: `cargo bench -p cloister-vm --bench vm` (as root).

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cloister_vm::{VmConfig, VmEnclave};
use cloister_vsock::{VsockAddr, VsockStream};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn boot_vm(cid: u32, argv: &[&str]) -> (VmEnclave, tempfile::TempDir, common::Image, Duration) {
    let img = common::image(argv);
    let run = tempfile::tempdir().unwrap();
    let mut cfg = VmConfig::new(
        &img.kernel,
        &img.initrd,
        cid,
        run.path(),
        common::fake_nsm(),
    );
    cfg.run_as = Some(common::VM_USER);
    cfg.cpus = vec![0];
    cfg.boot_timeout = Duration::from_secs(300);
    let vm = VmEnclave::start(cfg).expect("VM start");
    let t = vm
        .wait_heartbeat(Duration::from_secs(300))
        .unwrap_or_else(|e| panic!("{e}\n{}", vm.console_tail()));
    (vm, run, img, t)
}

/// Baseline: the static testapp started in fresh namespaces with `unshare`, until it listens
/// on the host fabric (`<run>/vsock/3_9000.sock` accepts a connection). A host-side process
/// cannot dial cid 3 on the fabric, so readiness is "listening" rather than "connected".
fn process_start(testapp: &std::path::Path) -> Duration {
    let run = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(run.path().join("vsock")).unwrap();
    let sock = run.path().join("vsock/3_9000.sock");
    let t0 = Instant::now();
    let mut child = Command::new("unshare")
        .args(["--fork", "--pid", "--mount-proc", "--net", "--ipc", "--uts"])
        .arg(testapp)
        .args(["echo-server", "9000"])
        .env_clear()
        .env("CLOISTER_RUN_DIR", run.path())
        .stdout(Stdio::null())
        .spawn()
        .expect("unshare");
    loop {
        if UnixStream::connect(&sock).is_ok() {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "baseline never listened"
        );
        std::thread::sleep(Duration::from_micros(200));
    }
    let t = t0.elapsed();
    let _ = child.kill();
    let _ = child.wait();
    t
}

fn echo_throughput(mut s: impl Read + Write + Send + 'static, r: impl Read, bytes: usize) -> f64 {
    let chunk = vec![0xA5u8; 256 * 1024];
    let t0 = Instant::now();
    let writer = std::thread::spawn(move || {
        let mut left = bytes;
        while left > 0 {
            let n = left.min(chunk.len());
            s.write_all(&chunk[..n]).unwrap();
            left -= n;
        }
        s
    });
    let mut r = r;
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0;
    while got < bytes {
        let n = r.read(&mut buf).unwrap();
        assert!(n > 0, "echo ended early");
        got += n;
    }
    let secs = t0.elapsed().as_secs_f64();
    drop(writer.join());
    bytes as f64 / secs / (1024.0 * 1024.0)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let boots = env_usize("CLOISTER_VM_BENCH_BOOTS", 5).max(1);
    let mib = env_usize("CLOISTER_VM_BENCH_MIB", 64).max(1);
    let testapp = common::binaries().testapp.clone();
    let accel = cloister_vm::accel::detect();

    let mut vm_times = Vec::new();
    for i in 0..boots {
        let (mut vm, _run, _img, t) = boot_vm(100 + u32::try_from(i).unwrap(), &["sleep"]);
        vm.kill();
        vm_times.push(t);
    }
    let mut proc_times = Vec::new();
    for _ in 0..boots {
        proc_times.push(process_start(&testapp));
    }
    let vm_boot = median(vm_times);
    let proc_boot = median(proc_times);
    println!(
        "boot to heartbeat ({accel:?}, median of {boots}): VM {:.1} ms, unshare+static process {:.1} ms, ratio {:.1}x",
        vm_boot.as_secs_f64() * 1e3,
        proc_boot.as_secs_f64() * 1e3,
        vm_boot.as_secs_f64() / proc_boot.as_secs_f64()
    );

    let bytes = mib * 1024 * 1024;
    let (mut vm, run, _img, _) = boot_vm(150, &["echo-server", "5000"]);
    let mut stream = None;
    for _ in 0..300 {
        if let Ok(s) =
            VsockStream::connect_fabric(&run.path().join("vsock"), VsockAddr::new(150, 5000))
        {
            stream = Some(s);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let s = stream.expect("guest echo server");
    let r = s.try_clone().unwrap();
    let vm_mibs = echo_throughput(s, r, bytes);
    vm.kill();

    let (a, b) = UnixStream::pair().unwrap();
    let echo = std::thread::spawn(move || {
        let mut b = b;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match b.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if b.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
    });
    let ar = a.try_clone().unwrap();
    let unix_mibs = echo_throughput(a, ar, bytes);
    let _ = echo.join();
    println!(
        "vsock echo throughput ({accel:?}, {mib} MiB each way): VM {vm_mibs:.1} MiB/s, host Unix socket pair {unix_mibs:.1} MiB/s, ratio {:.3}",
        vm_mibs / unix_mibs
    );
}
