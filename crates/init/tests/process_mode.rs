//! End to end: the static init as PID 1 of a fresh PID and mount namespace (made with
//! `unshare`), its heartbeat reaching a real broker, the command running under the seccomp
//! filter, signal forwarding and the exit report. Started this way init is not confined, so
//! it takes the path that confines itself; the runtime's path (init confined before it runs,
//! the command handed over as descriptors) is tested with real enclaves in the cli crate
//! (`enclave_isolation`).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cloister_vsock::{Broker, BrokerConfig, NsmService};

struct NoNsm;
impl NsmService for NoNsm {
    fn handle(&self, _request: &[u8]) -> Vec<u8> {
        Vec::new()
    }
}

/// Copies `bin` and the shared libraries `ldd` lists into `root`, at the same paths.
fn install_with_libs(root: &Path, bin: &str) {
    let mut files = vec![PathBuf::from(bin)];
    let out = Command::new("ldd").arg(bin).output().unwrap();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        for word in line.split_whitespace() {
            if word.starts_with('/') {
                files.push(PathBuf::from(word));
            }
        }
    }
    for f in files {
        let dest = root.join(f.strip_prefix("/").unwrap());
        fs::create_dir_all(dest.parent().unwrap()).unwrap();
        fs::copy(fs::canonicalize(&f).unwrap(), &dest).unwrap();
    }
}

struct Enclave {
    _dir: tempfile::TempDir,
    root: PathBuf,
    broker: Broker,
}

fn prepare(cmd: &str, env: &str) -> Enclave {
    let init = cloister_init::build_static_init().expect("static init builds");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let rootfs = root.join("rootfs");
    fs::create_dir_all(rootfs.join("tmp")).unwrap();
    fs::create_dir_all(root.join("dev")).unwrap();
    fs::copy(&init, root.join("init")).unwrap();
    fs::write(root.join("cmd"), cmd).unwrap();
    fs::write(root.join("env"), env).unwrap();
    install_with_libs(&rootfs, "/bin/sh");
    install_with_libs(&rootfs, "/usr/bin/sleep");
    let cfg = BrokerConfig::new(
        40 + std::process::id() % 1000,
        dir.path(),
        root.join("dev/vsock.sock"),
        Arc::new(NoNsm),
    );
    let broker = Broker::start(cfg).unwrap();
    Enclave {
        _dir: dir,
        root,
        broker,
    }
}

fn spawn(enc: &Enclave) -> std::process::Child {
    Command::new("unshare")
        .args(["--pid", "--fork", "--mount", "--kill-child"])
        .arg(format!("--root={}", enc.root.display()))
        .arg("/init")
        .env_clear()
        .env("CLOISTER_ISOLATION", "process")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("unshare runs")
}

#[test]
fn runs_the_command_and_reports_its_status() {
    let enc = prepare(
        "/bin/sh\n-c\necho \"hello $GREETING from $(pwd)\"; [ ! -e /init ] && exit 3\n",
        "GREETING=world\nPATH=/bin:/usr/bin\n",
    );
    let out = spawn(&enc).wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(enc.broker.booted(), "no heartbeat; stderr: {stderr}");
    assert!(stdout.contains("hello world from /"), "{stdout} / {stderr}");
    assert!(
        stdout.contains("Enclave command exited with status 3"),
        "{stdout} / {stderr}"
    );
    assert_eq!(out.status.code(), Some(3));
}

#[test]
fn sandbox_applies_to_the_command() {
    // The command is PATH-resolved inside the chroot; unshare (a denied call) must fail.
    let enc = prepare(
        "sh\n-c\nif unshare -U true 2>/dev/null; then exit 9; fi; exit 0\n",
        "PATH=/bin:/usr/bin\n",
    );
    let out = spawn(&enc).wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("Enclave command exited with status 0"),
        "{stdout} / {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn forwards_sigterm_to_the_command() {
    let enc = prepare(
        "/bin/sh\n-c\necho up > /tmp/started; exec sleep 30\n",
        "PATH=/bin:/usr/bin\n",
    );
    let child = spawn(&enc);
    let started = enc.root.join("rootfs/tmp/started");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !started.exists() {
        assert!(Instant::now() < deadline, "command never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    // init is the only child of `unshare --fork`.
    let children =
        fs::read_to_string(format!("/proc/{}/task/{}/children", child.id(), child.id())).unwrap();
    let init_pid: i32 = children.split_whitespace().next().unwrap().parse().unwrap();
    // SAFETY: signalling a process this test started.
    assert_eq!(unsafe { libc::kill(init_pid, libc::SIGTERM) }, 0);
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("Enclave command killed by signal 15"),
        "{stdout} / {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(143));
}

/// True when the ELF64 file has a PT_INTERP program header (a dynamic loader).
fn has_interpreter(elf: &[u8]) -> bool {
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]);
    let u64_at = |o: usize| u64::from_le_bytes(elf[o..o + 8].try_into().unwrap());
    assert_eq!(&elf[..4], b"\x7fELF");
    assert_eq!(elf[4], 2, "ELF64");
    let phoff = usize::try_from(u64_at(0x20)).unwrap();
    let phentsize = u16_at(0x36) as usize;
    let phnum = u16_at(0x38) as usize;
    (0..phnum).any(|i| {
        let p = phoff + i * phentsize;
        u32::from_le_bytes(elf[p..p + 4].try_into().unwrap()) == 3
    })
}

#[test]
fn init_is_statically_linked() {
    let init = cloister_init::build_static_init().unwrap();
    let elf = fs::read(&init).unwrap();
    assert!(
        !has_interpreter(&elf),
        "{} needs a dynamic loader",
        init.display()
    );
    let ldd = Command::new("ldd").arg(&init).output().unwrap();
    let text = String::from_utf8_lossy(&ldd.stdout) + String::from_utf8_lossy(&ldd.stderr);
    assert!(
        text.contains("statically linked") || text.contains("not a dynamic executable"),
        "{text}"
    );
    // A dynamic binary for contrast, so the check above means something.
    assert!(has_interpreter(&fs::read("/bin/sh").unwrap()));
}

#[test]
fn init_does_nothing_unless_it_is_pid_1() {
    let init = cloister_init::build_static_init().unwrap();
    // Run as pid 2 of a fresh PID namespace (a shell is its PID 1), so that even an init that
    // went on could only reach that namespace, in both modes.
    for isolation in ["", "process"] {
        let out = Command::new("unshare")
            .args(["--pid", "--fork", "sh", "-c", "\"$0\"; echo \"status=$?\""])
            .arg(&init)
            .env("CLOISTER_ISOLATION", isolation)
            .output()
            .expect("unshare runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stdout.contains(&format!("status={}", cloister_init::NOT_PID1_EXIT)),
            "{stdout}{stderr}"
        );
        assert!(
            stderr.contains("runs only as an enclave's PID 1"),
            "{stderr}"
        );
    }
}
