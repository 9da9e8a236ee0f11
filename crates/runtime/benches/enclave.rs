//! Enclave benchmarks, each against its baseline in the same run:
//! (a) `cloister run-enclave` until the boot heartbeat, against bubblewrap starting a
//!     comparable sandbox (user, mount, PID, network, IPC, UTS and cgroup namespaces, a tmpfs
//!     root holding the same static init and testapp, the testapp signalling readiness over a
//!     Unix socket); medians of `BOOT_RUNS` runs. The image is booted once before timing
//!     starts, so the timed boots find its measurements and its unpacked root in the run
//!     directory's caches, as every boot of an image after its first does;
//! (b) parent-to-enclave vsock stream throughput and 1-byte round-trip latency, against a
//!     Unix socket pair in this process.
//!
//! Run as root: `cargo bench -p cloister-runtime --bench enclave`. Set `CLOISTER_BIN` to use an
//! existing `cloister` binary; otherwise the release binary is built (a no-op when it is up to
//! date) and used. The two boot measurements alternate run by run, so a load change on the host
//! hits both alike. Environment knobs:
//! - `CLOISTER_BENCH_BOOT_RUNS`: boot runs of each kind (default 20);
//! - `CLOISTER_BENCH_ONLY=boot`: skip (b);
//! - `CLOISTER_BENCH_BASELINE_BIN`: another build of `cloister`, booted in turn with the one
//!   measured, to compare two builds side by side (the bench prints the ratio);
//! - `CLOISTER_BENCH_DIR`: where the run directory (and the image) go. By default that is
//!   `/dev/shm` where it is a tmpfs, because the default run directory, `/run/cloister`, is on
//!   the tmpfs that systemd mounts on `/run`; point it at a disk-backed directory to measure a
//!   host whose `/run` is on disk (the bench prints which file system it used);
//! - `CLOISTER_BENCH_TRACE=1`: first print one boot's step timings (the runtime's
//!   `boottrace` events from the CLI, the monitor and the enclave's setup child, on one
//!   timeline: the monitor is forked from the CLI, so its times count from the CLI's start).
//!
//! Where the time goes (an ftrace of scheduler events and system calls of one boot on a 2-core
//! VM, cgroup v1, run directory on tmpfs, after the image's first boot): the CLI process from
//! exec to forking the monitor 1.7 ms (loading and relocating a large PIE, constructors' `cpuid`
//! probes, which trap in a VM, std's start, argument parsing, the run-directory entry); the
//! monitor until the clone 1.1-1.3 ms (spec, cached measurements, allocation, the enclave's
//! socket, image root, idmapping); the clone 0.2-0.3 ms; the child's setup until it execs init
//! 1.4-1.6 ms (overlay root, `/dev` and `/proc` twice, the cgroup join after the go, of which
//! the cpuset move alone is 0.25 ms, the vsock binds, `pivot_root`, the user namespace), while
//! the monitor makes the cgroup, the NSM and the broker on the other CPU; init's exec and its
//! heartbeat through the broker 1.0 ms; the record, the answer and the CLI's exit 0.3-0.4 ms.
//! The network namespace, 0.5-0.9 ms of kernel time, is made by a helper on the other CPU
//! meanwhile. bubblewrap starts a far smaller process and pays the network namespace in line.
//!
//! History, each step measured against the one before in the same session: an exec'd monitor,
//! a copy of the ramdisks per boot and a cgroup v1 move through `cgroup.procs` (which waits for
//! an RCU grace period) took 20.9 ms (4.84x bubblewrap); a cached overlay root, the cgroup
//! self-join and a forked monitor 8.2 ms (1.94-2.05x); the leaf certificate issued at idle
//! priority after the answer and smaller steps (run-enclave parsed against its own small
//! command tree, the NSM set up while the enclave builds its root, the idmapping's helper
//! cloned with `CLONE_VM`) 6.5-7.3 ms (1.64-1.80x). The latest round, 0.88-0.94x the build
//! before it side by side (`CLOISTER_BENCH_BASELINE_BIN`), gives 1.33-1.46x on tmpfs and
//! 1.60-1.65x with the run directory on ext4: the network namespace made by a helper in
//! parallel; the cgroup made after the clone, while the child builds its root; the broker's
//! enclave socket bound before the clone, so the child goes on to init while the monitor sets
//! up the NSM and the broker; `/dev` made with `mknod` on a small tmpfs instead of a bind mount
//! per node; files in the run directory replaced by `RENAME_EXCHANGE` (a rename over a file
//! makes ext4 write the new data out first); and the caller moved off the enclave's CPUs before
//! the answer wakes it (else it could wait a millisecond behind init on the CPU it last ran on).

use cloister_cpio::CpioWriter;
use cloister_vsock::{VsockAddr, VsockStream};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const BOOT_RUNS: usize = 20;
/// The CLI's log filter that turns on the boot-step events.
const TRACE_FILTER: &str = "warn,cloister_runtime::boottrace=debug";
const STREAM_BYTES: u64 = 512 << 20;
const CHUNK: usize = 256 * 1024;
const PINGS: usize = 2000;

fn cloister_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("CLOISTER_BIN") {
        return p.into();
    }
    let root = cloister_testapp::workspace_root();
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .current_dir(&root)
        .env("CARGO_TARGET_DIR", &target)
        .args(["build", "--release", "-p", "cloister", "--bin", "cloister"])
        .status()
        .expect("cargo build");
    assert!(status.success());
    target.join("release/cloister")
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn build_eif(dir: &Path, init: &Path, app: &Path, args: &[&str]) -> PathBuf {
    let init_b = std::fs::read(init).unwrap();
    let app_b = std::fs::read(app).unwrap();
    let mut boot = CpioWriter::new(Vec::new());
    boot.file("init", 0o755, 0, 0, init_b.len() as u64, &init_b[..])
        .unwrap();
    let cmd = std::iter::once("/testapp")
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join("\n")
        + "\n";
    let mut user = CpioWriter::new(Vec::new());
    user.file("cmd", 0o644, 0, 0, cmd.len() as u64, cmd.as_bytes())
        .unwrap();
    user.file("env", 0o644, 0, 0, 0, &b""[..]).unwrap();
    user.dir("rootfs", 0o755, 0, 0).unwrap();
    user.file(
        "rootfs/testapp",
        0o755,
        0,
        0,
        app_b.len() as u64,
        &app_b[..],
    )
    .unwrap();
    let path = dir.join("bench.eif");
    cloister_eif::EifBuilder::new()
        .kernel_bytes(b"none".to_vec())
        .cmdline("x")
        .ramdisk_bytes(boot.finish().unwrap())
        .ramdisk_bytes(user.finish().unwrap())
        .write_to_path(&path)
        .unwrap();
    path
}

/// One bubblewrap sandbox from start to readiness (it signals on `sock`).
fn bwrap_boot(bwrap: &Path, init: &Path, app: &Path, sock: &Path) -> Duration {
    let _ = std::fs::remove_file(sock);
    let l = std::os::unix::net::UnixListener::bind(sock).unwrap();
    let t = Instant::now();
    let mut child = Command::new(bwrap)
        .args([
            "--unshare-all",
            "--unshare-user",
            "--die-with-parent",
            "--tmpfs",
            "/",
            "--dev",
            "/dev",
            "--proc",
            "/proc",
        ])
        .args(["--ro-bind", init.to_str().unwrap(), "/init"])
        .args(["--ro-bind", app.to_str().unwrap(), "/testapp"])
        .args(["--bind", sock.to_str().unwrap(), "/ready.sock"])
        .args(["/testapp", "signal-unix", "/ready.sock"])
        .spawn()
        .unwrap();
    let (mut s, _) = l.accept().unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).unwrap();
    let took = t.elapsed();
    let _ = child.wait();
    took
}

/// The CID in `run-enclave`'s answer.
fn enclave_cid(rec: &serde_json::Value) -> u32 {
    u32::try_from(rec["EnclaveCID"].as_u64().unwrap()).unwrap()
}

/// A connection to port 5000 of enclave `cid`, once it listens.
fn connect_enclave(fabric: &Path, cid: u32) -> VsockStream {
    loop {
        if let Ok(s) = VsockStream::connect_fabric(fabric, VsockAddr::new(cid, 5000)) {
            return s;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// MB/s from the parent into the sink server of enclave `cid`.
fn vsock_throughput(fabric: &Path, cid: u32) -> f64 {
    let buf = vec![7u8; CHUNK];
    let mut s = connect_enclave(fabric, cid);
    let t = Instant::now();
    let mut sent = 0u64;
    while sent < STREAM_BYTES {
        s.write_all(&buf).unwrap();
        sent += CHUNK as u64;
    }
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut total = [0u8; 8];
    s.read_exact(&mut total).unwrap();
    let vs = sent as f64 / t.elapsed().as_secs_f64() / 1e6;
    assert_eq!(u64::from_be_bytes(total), sent);
    vs
}

/// MB/s through a Unix socket pair into a sink thread (the baseline).
fn unix_throughput() -> f64 {
    let buf = vec![7u8; CHUNK];
    let (mut a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
    let sink = std::thread::spawn(move || {
        let mut r = vec![0u8; CHUNK];
        let mut n = 0u64;
        loop {
            match b.read(&mut r) {
                Ok(0) | Err(_) => break,
                Ok(k) => n += k as u64,
            }
        }
        n
    });
    let t = Instant::now();
    let mut sent = 0u64;
    while sent < STREAM_BYTES {
        a.write_all(&buf).unwrap();
        sent += CHUNK as u64;
    }
    drop(a);
    assert_eq!(sink.join().unwrap(), sent);
    sent as f64 / t.elapsed().as_secs_f64() / 1e6
}

/// Prints the boot medians and their ratios: this build, bubblewrap (`theirs`, empty when it is
/// not installed), another build (`baseline`).
fn report_boot(
    boot_runs: usize,
    ours: Vec<Duration>,
    theirs: &[Duration],
    baseline: Option<(&Path, Vec<Duration>)>,
) {
    let m_ours = median(ours);
    let m_theirs = if theirs.is_empty() {
        Duration::ZERO
    } else {
        median(theirs.to_vec())
    };
    println!(
        "boot: cloister run-enclave to heartbeat, median of {boot_runs}: {:.1} ms",
        m_ours.as_secs_f64() * 1e3
    );
    if !theirs.is_empty() {
        println!(
            "boot: bubblewrap sandbox to readiness, median of {boot_runs}: {:.1} ms",
            m_theirs.as_secs_f64() * 1e3
        );
        println!(
            "boot: ratio cloister/bwrap = {:.2}x (target <= 1.5x)",
            m_ours.as_secs_f64() / m_theirs.as_secs_f64()
        );
    } else {
        println!("boot: bwrap not installed; baseline skipped");
    }
    if let Some((other, baseline)) = baseline {
        let m_base = median(baseline);
        println!(
            "boot: {} run-enclave to heartbeat, median of {boot_runs}: {:.1} ms; \
             ratio this build/that one = {:.2}x",
            other.display(),
            m_base.as_secs_f64() * 1e3,
            m_ours.as_secs_f64() / m_base.as_secs_f64()
        );
    }
}

/// [`round_trip`] through a Unix socket pair to an echo thread (the baseline).
fn unix_round_trip() -> Duration {
    let (mut a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
    std::thread::spawn(move || {
        let mut one = [0u8; 1];
        while b.read_exact(&mut one).is_ok() {
            if b.write_all(&one).is_err() {
                break;
            }
        }
    });
    round_trip(&mut a)
}

/// The mean time of [`PINGS`] one-byte round trips on `s`.
fn round_trip(s: &mut dyn ReadWrite) -> Duration {
    let mut one = [0u8; 1];
    let t = Instant::now();
    for _ in 0..PINGS {
        s.write_all(b"x").unwrap();
        s.read_exact(&mut one).unwrap();
    }
    t.elapsed() / u32::try_from(PINGS).unwrap()
}

/// Boots measured: `CLOISTER_BENCH_BOOT_RUNS`, else [`BOOT_RUNS`].
fn boot_runs() -> usize {
    std::env::var("CLOISTER_BENCH_BOOT_RUNS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n > 0)
        .unwrap_or(BOOT_RUNS)
}

fn main() {
    let init = cloister_init::build_static_init().expect("static init");
    let app = cloister_testapp::build_static_testapp().expect("static testapp");
    let bin = cloister_bin();
    let (dir, fs) = bench_dir();
    println!(
        "boot: run directory {} on {fs}",
        dir.path().join("run").display()
    );
    let run = dir.path().join("run");
    let alloc = dir.path().join("allocator.yaml");
    std::fs::write(&alloc, "memory_mib: 2048\ncpu_pool: \"0-1\"\n").unwrap();
    let eif = build_eif(dir.path(), &init, &app, &["sink-server", "5000"]);
    let cli_with = |bin: &Path, args: &[&str]| {
        let out = Command::new(bin)
            .env("CLOISTER_RUN_DIR", &run)
            .env("CLOISTER_PKI_DIR", dir.path().join("pki"))
            .env("CLOISTER_ALLOCATOR_CONFIG", &alloc)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let cli = |args: &[&str]| cli_with(&bin, args);
    // Another build of `cloister` to compare with, booted alternately with this one.
    let baseline_bin = std::env::var_os("CLOISTER_BENCH_BASELINE_BIN").map(PathBuf::from);
    let boot_runs = boot_runs();
    let run_args = [
        "run-enclave",
        "--eif-path",
        eif.to_str().unwrap(),
        "--cpu-count",
        "1",
        "--memory",
        "256",
    ];

    // (a) boot to heartbeat.
    cli(&run_args); // warm-up: creates the PKI, caches the image's measurements and root
    cli(&["terminate-enclave", "--all"]);
    if std::env::var_os("CLOISTER_BENCH_TRACE").is_some() {
        trace_one_boot(&bin, &run, dir.path(), &alloc, &run_args);
        cli(&["terminate-enclave", "--all"]);
    }
    let bwrap = which_bwrap();
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    let mut baseline = Vec::new();
    let sock = dir.path().join("ready.sock");
    for _ in 0..boot_runs {
        let t = Instant::now();
        cli(&run_args);
        ours.push(t.elapsed());
        cli(&["terminate-enclave", "--all"]);
        if let Some(other) = &baseline_bin {
            let t = Instant::now();
            cli_with(other, &run_args);
            baseline.push(t.elapsed());
            cli(&["terminate-enclave", "--all"]);
        }
        if let Some(bwrap) = &bwrap {
            theirs.push(bwrap_boot(bwrap, &init, &app, &sock));
        }
    }
    report_boot(
        boot_runs,
        ours,
        &theirs,
        baseline_bin.as_deref().zip(Some(baseline)),
    );

    if std::env::var("CLOISTER_BENCH_ONLY").as_deref() == Ok("boot") {
        return;
    }

    // (b) throughput and latency.
    let rec = cli(&run_args);
    let fabric = run.join("vsock");
    let vs = vsock_throughput(&fabric, enclave_cid(&rec));
    let us = unix_throughput();
    println!("throughput: parent->enclave vsock {vs:.0} MB/s, unix socket pair {us:.0} MB/s, ratio {:.2}x (target >= 0.8x)", vs / us);
    cli(&["terminate-enclave", "--all"]);

    // Latency: 1-byte round trips to an echo server in an enclave vs a Unix pair echo thread.
    let eif = build_eif(dir.path(), &init, &app, &["echo-server", "5000"]);
    let rec = cli(&[
        "run-enclave",
        "--eif-path",
        eif.to_str().unwrap(),
        "--cpu-count",
        "1",
        "--memory",
        "256",
    ]);
    let v_rt = round_trip(&mut connect_enclave(&fabric, enclave_cid(&rec)));
    let u_rt = unix_round_trip();
    println!(
        "latency: vsock round trip {:.1} us, unix pair {:.1} us",
        v_rt.as_secs_f64() * 1e6,
        u_rt.as_secs_f64() * 1e6
    );
    cli(&["terminate-enclave", "--all"]);
}

/// Boots once with the boot-step events on and prints them: the CLI's from its stderr, the
/// monitor's (and its setup child's) from the monitor log, read before the enclave is
/// terminated.
fn trace_one_boot(bin: &Path, run: &Path, dir: &Path, alloc: &Path, args: &[&str]) {
    let t = Instant::now();
    let out = Command::new(bin)
        .env("CLOISTER_RUN_DIR", run)
        .env("CLOISTER_PKI_DIR", dir.join("pki"))
        .env("CLOISTER_ALLOCATOR_CONFIG", alloc)
        .env("CLOISTER_LOG", TRACE_FILTER)
        .args(args)
        .output()
        .unwrap();
    let total = t.elapsed();
    assert!(out.status.success());
    let rec: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = rec["EnclaveID"].as_str().unwrap();
    let monitor_log = std::fs::read_to_string(run.join("enclaves").join(id).join("monitor.log"))
        .unwrap_or_default();
    println!("trace: CLI");
    print!("{}", String::from_utf8_lossy(&out.stderr));
    println!("trace: monitor");
    print!("{monitor_log}");
    println!(
        "trace: run-enclave took {:.1} ms as seen by the caller",
        total.as_secs_f64() * 1e3
    );
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// The bench's working directory (see the module docs) and the name of its file system.
fn bench_dir() -> (tempfile::TempDir, &'static str) {
    let parent = std::env::var_os("CLOISTER_BENCH_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            let shm = Path::new("/dev/shm");
            (fs_name(shm) == "tmpfs").then(|| shm.to_owned())
        })
        .unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::tempdir_in(&parent).unwrap();
    let fs = fs_name(dir.path());
    (dir, fs)
}

fn fs_name(path: &Path) -> &'static str {
    use nix::sys::statfs::{
        statfs, BTRFS_SUPER_MAGIC, EXT4_SUPER_MAGIC, TMPFS_MAGIC, XFS_SUPER_MAGIC,
    };
    match statfs(path).map(|s| s.filesystem_type()) {
        Ok(t) if t == TMPFS_MAGIC => "tmpfs",
        Ok(t) if t == EXT4_SUPER_MAGIC => "ext4",
        Ok(t) if t == XFS_SUPER_MAGIC => "xfs",
        Ok(t) if t == BTRFS_SUPER_MAGIC => "btrfs",
        Ok(_) => "another file system",
        Err(_) => "an unknown file system",
    }
}

fn which_bwrap() -> Option<PathBuf> {
    ["/usr/bin/bwrap", "/bin/bwrap", "/usr/local/bin/bwrap"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}
