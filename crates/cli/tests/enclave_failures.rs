//! Start failures leave nothing behind: a monitor whose vsock broker cannot start (its CID's
//! fabric socket is held by a live listener) reports E315, and an enclave terminated while it
//! boots (its init never sends the heartbeat) makes run-enclave fail with E317; both remove
//! the enclave's cgroup, its processes, its directory and its allocation. A separate test
//! binary, so no other enclave test creates cgroups while this one compares the cgroup tree
//! before and after (the tests here take a lock for the same reason).

mod enclave_support;

use cloister_runtime::allocator::{format_cpu_list, Pool};
use cloister_runtime::{EnclaveState, RunDir};
use enclave_support::{build_eif, static_bins, Env};
use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Serialises the tests of this binary: each compares the host's cgroup tree before and after.
static CGROUP_TREE: Mutex<()> = Mutex::new(());

/// The CPUs this host lets enclaves use (whole cores; CPU 0's core only on small hosts), and
/// the first of its cores.
fn host_pool() -> (String, String) {
    let pool = Pool::host_default();
    let first = pool
        .cores
        .first()
        .expect("a host with an enclave CPU")
        .clone();
    (format_cpu_list(&pool.cpus), format_cpu_list(&first))
}

/// The per-enclave cgroup directories that exist now (every hierarchy).
fn enclave_cgroups() -> BTreeSet<PathBuf> {
    let layout = cloister_runtime::cgroup::Layout::detect().expect("cgroups");
    let probe = cloister_runtime::cgroup::EnclaveCgroup::new(layout, "probe");
    let mut out = BTreeSet::new();
    for dir in probe.dirs() {
        let parent = dir.parent().expect("cgroup parent");
        if let Ok(rd) = std::fs::read_dir(parent) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().contains("-enc") {
                    out.insert(e.path());
                }
            }
        }
    }
    out
}

#[test]
fn broker_failure_removes_the_cgroup() {
    let _tree = CGROUP_TREE.lock().unwrap_or_else(|p| p.into_inner());
    let env = Env::new(&host_pool().0, 1024);
    let eif = build_eif(env.dir.path(), "echo", &["echo-server", "5000"]);
    // A live listener on CID 9's host socket: the broker for CID 9 cannot bind it.
    let fabric = env.run.join("vsock");
    std::fs::create_dir_all(&fabric).unwrap();
    let _held = std::os::unix::net::UnixListener::bind(fabric.join("9.sock")).unwrap();

    let before = enclave_cgroups();
    let out = env.cli(&[
        "run-enclave",
        "--eif-path",
        eif.to_str().unwrap(),
        "--cpu-ids",
        &host_pool().1,
        "--memory",
        "128",
        "--enclave-cid",
        "9",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("E315"), "{err}");
    let leaked: Vec<_> = enclave_cgroups().difference(&before).cloned().collect();
    assert!(leaked.is_empty(), "cgroups left behind: {leaked:?}");
    assert_eq!(env.json(&["describe-enclaves"]), serde_json::json!([]));
    let left: Vec<_> = std::fs::read_dir(env.run.join("enclaves"))
        .map(|d| d.flatten().collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
    let allocations = std::fs::read_to_string(env.run.join("allocations.json")).unwrap_or_default();
    assert!(!allocations.contains("-enc"), "{allocations}");

    // The CID works again once the socket is free.
    drop(_held);
    std::fs::remove_file(fabric.join("9.sock")).unwrap();
    let ok = env.json(&[
        "run-enclave",
        "--eif-path",
        eif.to_str().unwrap(),
        "--cpu-ids",
        &host_pool().1,
        "--memory",
        "128",
        "--enclave-cid",
        "9",
    ]);
    assert_eq!(ok["EnclaveCID"], 9);
    env.terminate_all();
}

/// Writes an EIF whose bootstrap `/init` is the testapp in `sleep` mode (`/testapp.mode`): it
/// never sends the boot heartbeat. The runtime starts `/init` in the image's `rootfs/`, so the
/// mode file is there too.
fn build_silent_eif(dir: &Path) -> PathBuf {
    let (_, app) = static_bins();
    let app = std::fs::read(app).expect("read testapp");
    let mut boot = cloister_cpio::CpioWriter::new(Vec::new());
    boot.file("init", 0o755, 0, 0, app.len() as u64, &app[..])
        .unwrap();
    boot.file("testapp.mode", 0o644, 0, 0, 6, &b"sleep\n"[..])
        .unwrap();
    let boot = boot.finish().unwrap();
    let mut user = cloister_cpio::CpioWriter::new(Vec::new());
    user.file("cmd", 0o644, 0, 0, 7, &b"/sleep\n"[..]).unwrap();
    user.dir("rootfs", 0o755, 0, 0).unwrap();
    user.file("rootfs/testapp.mode", 0o644, 0, 0, 6, &b"sleep\n"[..])
        .unwrap();
    let user = user.finish().unwrap();
    let path = dir.join("silent.eif");
    cloister_eif::EifBuilder::new()
        .kernel_bytes(b"not a kernel: process isolation does not boot one".to_vec())
        .cmdline("console=ttyS0")
        .ramdisk_bytes(boot)
        .ramdisk_bytes(user)
        .write_to_path(&path)
        .expect("write eif");
    path
}

/// Whether `pid` is gone (or a zombie nobody reaped yet).
fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => true,
    }
}

#[test]
#[allow(
    clippy::too_many_lines,
    reason = "one end-to-end scenario, read top to bottom; its steps share what it started"
)]
fn terminate_while_booting_fails_the_run_with_e317_and_frees_everything() {
    let _tree = CGROUP_TREE.lock().unwrap_or_else(|p| p.into_inner());
    let (pool, core) = host_pool();
    // The pool's memory fits one 128 MiB enclave: the rerun below proves it came back.
    let env = Env::new(&pool, 128);
    let silent = build_silent_eif(env.dir.path());
    let before = enclave_cgroups();

    let mut booting = env
        .cmd()
        .args(["run-enclave", "--eif-path", silent.to_str().unwrap()])
        .args(["--cpu-ids", &core, "--memory", "128"])
        .args(["--enclave-name", "never-ready"])
        .env("CLOISTER_BOOT_TIMEOUT_MS", "120000")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn run-enclave");

    // Wait until the enclave's init runs and the monitor waits for its heartbeat.
    let run = RunDir::new(&env.run);
    let deadline = Instant::now() + Duration::from_secs(30);
    let rec = loop {
        let listed = run.list().unwrap_or_default();
        if let Some(r) = listed
            .into_iter()
            .find(|r| r.state == EnclaveState::Booting && r.init_pid.is_some())
        {
            break r;
        }
        assert!(
            booting.try_wait().unwrap().is_none(),
            "run-enclave ended before the enclave was booting"
        );
        assert!(
            Instant::now() < deadline,
            "the enclave never got to booting"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let init_pid = rec.init_pid.unwrap();
    assert!(!process_gone(init_pid), "init {init_pid} is not running");
    assert!(!process_gone(rec.monitor_pid));
    assert!(!rec.cgroup_dirs.is_empty());
    assert!(rec.cgroup_dirs.iter().all(|d| d.is_dir()));
    // Give the silent init time to (not) send its heartbeat: the run is still waiting.
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        booting.try_wait().unwrap().is_none(),
        "run-enclave returned"
    );
    let listed = env.json(&["describe-enclaves"]);
    assert_eq!(listed[0]["EnclaveName"], "never-ready", "{listed}");

    let terminated = env.json(&["terminate-enclave", "--enclave-name", "never-ready"]);
    assert_eq!(terminated["Terminated"], true, "{terminated}");

    // run-enclave fails with E317 (exit 1) and prints no JSON.
    let mut stderr = String::new();
    booting
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let mut stdout = String::new();
    booting
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    let status = booting.wait().unwrap();
    assert_eq!(status.code(), Some(1), "{status:?}: {stderr}");
    assert!(stderr.contains("E317"), "{stderr}");
    assert!(stdout.trim().is_empty(), "{stdout}");

    // Nothing is left: no record, no process, no cgroup, no allocation.
    assert_eq!(env.json(&["describe-enclaves"]), serde_json::json!([]));
    for pid in [init_pid, rec.monitor_pid] {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !process_gone(pid) {
            assert!(Instant::now() < deadline, "process {pid} is still running");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    for dir in &rec.cgroup_dirs {
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
    let leaked: Vec<_> = enclave_cgroups().difference(&before).cloned().collect();
    assert!(leaked.is_empty(), "cgroups left behind: {leaked:?}");
    assert!(!run.enclave_dir(&rec.enclave_id).exists());
    let allocations = std::fs::read_to_string(env.run.join("allocations.json")).unwrap_or_default();
    assert!(!allocations.contains(&rec.enclave_id), "{allocations}");

    // The same CPUs and all of the pool's memory can be had again at once.
    let eif = build_eif(env.dir.path(), "echo", &["echo-server", "5000"]);
    let again = env.json(&[
        "run-enclave",
        "--eif-path",
        eif.to_str().unwrap(),
        "--cpu-ids",
        &core,
        "--memory",
        "128",
    ]);
    assert_eq!(
        format_cpu_list(
            &again["CPUIDs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| u32::try_from(v.as_u64().unwrap()).unwrap())
                .collect::<Vec<_>>()
        ),
        core
    );
    env.terminate_all();
}
