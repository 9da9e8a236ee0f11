//! `cloister demo` end to end: the real binary builds the sample images, starts the key service
//! and vsock-proxy, releases the secret to the attested enclave, sees the modified image refused
//! with AccessDeniedException, and tears everything down; with process isolation and with VM
//! isolation (a real kernel under QEMU), and when SIGINT interrupts it while an enclave runs.
//! Needs root (enclaves).

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// One demo at a time: each boots enclaves on the same two cores.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// Builds the static binaries first (cargo, cached in target/static) so the demo's own timings
/// are those of a warm run.
fn static_binaries() -> PathBuf {
    cloister_sample_app::build_static_sample_app().expect("static sample app");
    cloister_init::build_static_init().expect("static init")
}

/// The demo command with no inherited Cloister environment.
fn demo_command() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cloister"));
    c.arg("demo")
        .env_remove("CLOISTER_RUN_DIR")
        .env_remove("CLOISTER_PKI_DIR")
        .env_remove("CLOISTER_ALLOCATOR_CONFIG")
        .env_remove("CLOISTER_BLOBS");
    c
}

#[test]
fn demo_releases_the_secret_only_to_the_attested_image() {
    let _one = serial();
    static_binaries();
    let out = demo_command().output().expect("run cloister demo");
    check_success(&out);
}

/// Checks a successful demo's output; returns its stdout.
fn check_success(out: &std::process::Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "cloister demo failed ({:?})\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    for line in [
        "[1/6] Build the enclave images",
        "sample.eif",
        "modified.eif",
        "[2/6] Start the key service and vsock-proxy",
        "[3/6] Create an attestation-bound key and encrypt a secret",
        "[4/6] Run sample.eif",
        "attestation document verified",
        "(matches: the enclave holds the secret)",
        "[5/6] Run modified.eif",
        "KMS refused the modified image: AccessDeniedException",
        "[6/6] Tear down",
        "terminated 2 enclaves",
        "run directory clean",
        "Demo complete",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }

    // The two images were measured differently, and the document carried the genuine PCR0.
    let pcr0s: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.trim().strip_prefix("PCR0 "))
        .filter(|v| v.len() == 96 && v.bytes().all(|b| b.is_ascii_hexdigit()))
        .collect();
    assert_eq!(pcr0s.len(), 2, "{stdout}");
    assert_ne!(pcr0s[0], pcr0s[1]);
    let in_document = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("PCR0 in the document = "))
        .expect("document PCR0 line");
    assert_eq!(in_document, pcr0s[0]);

    // The workspace (run dir, KMS data, images) is gone.
    let workspace = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("workspace: "))
        .expect("workspace line");
    assert!(
        !std::path::Path::new(workspace).exists(),
        "{workspace} left behind"
    );
    stdout.into_owned()
}

/// Whether `pid` is gone (or a zombie).
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
    reason = "one end-to-end scenario, read top to bottom; its steps share the running enclave"
)]
fn sigint_while_the_enclave_runs_tears_everything_down() {
    let _one = serial();
    static_binaries();
    let mut child = demo_command()
        .arg("--pause")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn cloister demo");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Read until the demo pauses with the sample enclave running.
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut seen = Vec::new();
    while !seen
        .iter()
        .any(|l: &String| l.contains("paused: the enclave runs"))
    {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => seen.push(line),
            Err(_) => {
                let _ = child.kill();
                panic!("the demo never paused:\n{}", seen.join("\n"));
            }
        }
    }
    let text = seen.join("\n");
    let field = |prefix: &str| -> String {
        seen.iter()
            .find_map(|l| l.trim().strip_prefix(prefix).map(str::to_owned))
            .unwrap_or_else(|| panic!("no {prefix:?} line in:\n{text}"))
    };
    let workspace = PathBuf::from(field("workspace: "));
    let kms = field("key service: http://");
    let kms: std::net::SocketAddr = kms.split_whitespace().next().unwrap().parse().unwrap();
    let booted = seen
        .iter()
        .find(|l| l.contains("monitor PID"))
        .unwrap_or_else(|| panic!("no boot line in:\n{text}"));
    let enclave_id = booted.split_whitespace().nth(1).unwrap().to_owned();
    let monitor: u32 = booted
        .split("monitor PID ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no monitor PID in {booted}"));
    let layout = cloister_runtime::cgroup::Layout::detect().expect("cgroups");
    let cgroup = cloister_runtime::cgroup::EnclaveCgroup::new(layout, &enclave_id);
    // Everything runs before the signal.
    assert!(!process_gone(monitor), "monitor {monitor} is not running");
    assert!(workspace.is_dir());
    assert!(
        cgroup.dirs().iter().any(|d| d.is_dir()),
        "{:?}",
        cgroup.dirs()
    );
    std::net::TcpStream::connect(kms).expect("the key service listens");
    let proxy_socket = workspace.join("run/vsock/3_8000.sock");
    assert!(proxy_socket.exists());

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap()),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the demo did not exit after SIGINT");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    reader.join().unwrap();
    while let Ok(line) = rx.try_recv() {
        seen.push(line);
    }
    assert_eq!(status.code(), Some(130), "{status:?}\n{stderr}");
    assert!(stderr.contains("E812"), "{stderr}");
    assert!(
        !seen.iter().any(|l| l.contains("[5/6]")),
        "went on after SIGINT"
    );
    // Nothing is left: enclave (monitor, cgroup), key service, proxy, temp directory.
    assert!(process_gone(monitor), "monitor {monitor} still runs");
    for dir in cgroup.dirs() {
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
    assert!(
        std::net::TcpStream::connect(kms).is_err(),
        "key service still listens"
    );
    assert!(!proxy_socket.exists());
    assert!(!workspace.exists(), "{} left behind", workspace.display());
}

#[test]
fn vm_isolation_without_a_kernel_is_e813() {
    let out = demo_command()
        .args([
            "--isolation",
            "vm",
            "--blobs",
            "/nonexistent/cloister-blobs",
        ])
        .output()
        .expect("run cloister demo");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("E813"), "{stderr}");
}

/// A blobs directory in the layout `cloister blobs prepare` writes, from the guest kernel that
/// scripts/fetch-vm-kernel.sh caches (kernel, its vsock modules in load order, a command
/// line, and the static init).
fn vm_blobs(init: &Path, dir: &Path) -> PathBuf {
    let root = cloister_init::static_build::workspace_root();
    let kernel = std::env::var_os("CLOISTER_VM_KERNEL_DIR")
        .map_or_else(|| root.join("target/vm-kernel"), PathBuf::from);
    if !kernel.join("modules.order").is_file() {
        let status = Command::new(root.join("scripts/fetch-vm-kernel.sh"))
            .status()
            .expect("running scripts/fetch-vm-kernel.sh");
        assert!(status.success(), "scripts/fetch-vm-kernel.sh failed");
    }
    let blobs = dir.join("blobs");
    std::fs::create_dir_all(blobs.join("modules")).unwrap();
    std::fs::copy(kernel.join("vmlinuz"), blobs.join("vmlinuz")).unwrap();
    std::fs::copy(init, blobs.join("init")).unwrap();
    let order = std::fs::read_to_string(kernel.join("modules.order")).unwrap();
    for m in order.lines().filter(|l| !l.is_empty()) {
        std::fs::copy(
            kernel.join("modules").join(m),
            blobs.join("modules").join(m),
        )
        .unwrap();
    }
    std::fs::write(blobs.join("modules/load_order"), &order).unwrap();
    let cmdline = cloister_image_builder::blobs::default_cmdline(
        cloister_image_builder::blobs::host_tsc_khz(),
    );
    std::fs::write(blobs.join("cmdline"), cmdline).unwrap();
    cloister_image_builder::blobs::Blobs::load(&blobs).expect("a valid blobs directory");
    blobs
}

#[test]
fn demo_with_vm_isolation() {
    let _one = serial();
    let init = static_binaries();
    let dir = tempfile::tempdir().unwrap();
    let blobs = vm_blobs(&init, dir.path());
    let out = demo_command()
        .args(["--isolation", "vm", "--blobs"])
        .arg(&blobs)
        .output()
        .expect("run cloister demo");
    let stdout = check_success(&out);
    assert!(stdout.contains("vm-isolated enclave"), "{stdout}");
    assert!(stdout.contains("vm isolation, monitor PID"), "{stdout}");
    assert!(
        stdout.contains("cloister:RecipientAttestation:Isolation = vm"),
        "{stdout}"
    );
}

#[test]
fn demo_error_codes_are_explained() {
    let out = Command::new(env!("CARGO_BIN_EXE_cloister"))
        .args(["explain", "--error-code", "E810"])
        .output()
        .expect("run cloister explain");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("Modified image was not refused"));
}
