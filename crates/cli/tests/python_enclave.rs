//! Python programs written for AWS Nitro Enclaves, unchanged, in Cloister enclaves: Debian's
//! own python3.11 (not a build of ours) in a small root file system, running
//! tests/apps/python/:
//! - `nsm_attest.py` asks `/dev/nsm` for an attestation document with AWS's ioctl (a struct of
//!   two iovecs built with ctypes, a CBOR request with a nonce) and sends it to the parent over
//!   `socket.AF_VSOCK`; the parent checks it with `cloister verify-attestation --root --nonce`.
//!   In a process enclave and in a VM enclave.
//! - `vsock_sample.py`, the shape of AWS's vsock sample: its server in the enclave, its client
//!   on the parent under `cloister exec`. In a process enclave and in a VM enclave.
//!
//! The root file system comes from Debian's packages (`apt-get download` of python3.11-minimal,
//! libpython3.11-minimal, libpython3.11-stdlib and libffi8, unpacked with `dpkg -x`), cut down
//! to the modules the two programs import (found by importing them with the unpacked
//! interpreter) and the shared libraries the interpreter and its extension modules load (as
//! `ldd` finds them: libffi from the packages, glibc and the rest from the host), with the modules
//! compiled ahead (`unchecked-hash` .pyc files, valid whatever the image's timestamps), so a VM
//! boot under TCG stays small and fast. It is cached in target/python-rootfs.

mod enclave_support;
mod vm_support;

use enclave_support::Env;
use serde_json::Value;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use vm_support::{copy_dir, json_ok, run_ok, workspace_root};

/// Debian's packages the root file system is made of.
const PACKAGES: &[&str] = &[
    "python3.11-minimal",
    "libpython3.11-minimal",
    "libpython3.11-stdlib",
    "libffi8",
];
/// The interpreter, inside the root file system.
const PYTHON: &str = "/usr/bin/python3.11";
/// The modules the programs import, also lazily (argparse's messages go through gettext and
/// locale, its help through shutil and textwrap): their closure goes into the root file
/// system.
const MODULES: &str = "argparse, ctypes, fcntl, locale, os, shutil, socket, struct, sys, textwrap";
/// Bumped when the way the root file system is made changes.
const ROOTFS_VERSION: &str = "2";
/// Boot timeout for the VM (TCG on a loaded two-core host).
const VM_BOOT_TIMEOUT_MS: &str = "180000";

/// Copies `from` to `to`, creating `to`'s parent directories.
fn copy_file(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    std::fs::copy(from, to).unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
}

/// The unpacked packages (target/python-rootfs/staging), downloaded once.
fn staging(cache: &Path) -> PathBuf {
    let debs = cache.join("debs");
    let staging = cache.join("staging");
    if staging.join("done").exists() {
        return staging;
    }
    std::fs::create_dir_all(&debs).unwrap();
    let have = |pkg: &str| {
        std::fs::read_dir(&debs).unwrap().flatten().any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&format!("{pkg}_"))
        })
    };
    let missing: Vec<&str> = PACKAGES.iter().copied().filter(|p| !have(p)).collect();
    if !missing.is_empty() {
        run_ok(
            Command::new("apt-get")
                .args(["download", "-qq"])
                .args(&missing)
                .current_dir(&debs),
            "apt-get download of Debian's python3.11 packages",
        );
    }
    // Unpacked beside it, then renamed into place: another test process may do the same.
    let tmp = cache.join(format!("staging.tmp{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).unwrap();
    for e in std::fs::read_dir(&debs).unwrap().flatten() {
        if e.path().extension().is_some_and(|x| x == "deb") {
            run_ok(
                Command::new("dpkg").arg("-x").arg(e.path()).arg(&tmp),
                "dpkg -x",
            );
        }
    }
    std::fs::write(tmp.join("done"), "").unwrap();
    install_dir(&tmp, &staging, |d| d.join("done").exists());
    staging
}

/// Renames the finished directory `tmp` to `dest`, unless another process got there first
/// (`dest` then is `complete`); an incomplete leftover is replaced.
fn install_dir(tmp: &Path, dest: &Path, complete: impl Fn(&Path) -> bool) {
    if std::fs::rename(tmp, dest).is_ok() {
        return;
    }
    if complete(dest) {
        let _ = std::fs::remove_dir_all(tmp);
        return;
    }
    let _ = std::fs::remove_dir_all(dest);
    std::fs::rename(tmp, dest).unwrap();
}

/// The unpacked interpreter, run on the host with its own standard library.
fn staged_python(staging: &Path) -> Command {
    let mut c = Command::new(staging.join(PYTHON.trim_start_matches('/')));
    c.env_clear()
        .env("PYTHONHOME", staging.join("usr"))
        .env("LD_LIBRARY_PATH", staging.join("usr/lib/x86_64-linux-gnu"));
    c
}

/// The shared libraries `elf` loads (`ldd`), with the program interpreter.
fn shared_libraries(staging: &Path, elf: &Path) -> Vec<PathBuf> {
    let out = run_ok(
        Command::new("ldd")
            .arg(elf)
            .env("LD_LIBRARY_PATH", staging.join("usr/lib/x86_64-linux-gnu")),
        "ldd",
    );
    String::from_utf8_lossy(&out)
        .lines()
        .filter_map(|l| {
            // "libm.so.6 => /lib/x86_64-linux-gnu/libm.so.6 (0x...)" or
            // "/lib64/ld-linux-x86-64.so.2 (0x...)"; the vDSO has no file.
            let path = match l.split_once("=>") {
                Some((_, right)) => right.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// The cached root file system with Debian's python3.11 (see the module's documentation).
fn python_rootfs() -> &'static PathBuf {
    static ROOTFS: OnceLock<PathBuf> = OnceLock::new();
    ROOTFS.get_or_init(|| {
        let cache = workspace_root().join("target/python-rootfs");
        let rootfs = cache.join(format!("rootfs-{ROOTFS_VERSION}"));
        if rootfs.join(PYTHON.trim_start_matches('/')).exists() {
            return rootfs;
        }
        let staging = staging(&cache);
        let tmp = cache.join(format!("rootfs-{ROOTFS_VERSION}.tmp{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        // The modules the programs import, and what importing them loads.
        let listing = run_ok(
            staged_python(&staging).args([
                "-S",
                "-B",
                "-c",
                &format!(
                    "import {MODULES}\n\
                     for m in list(sys.modules.values()):\n    \
                         f = getattr(m, '__file__', None)\n    \
                         if f: print(f)\n"
                ),
            ]),
            "listing the modules the programs import",
        );
        let mut elves = vec![staging.join(PYTHON.trim_start_matches('/'))];
        for line in String::from_utf8_lossy(&listing).lines() {
            let file = PathBuf::from(line);
            let rel = file
                .strip_prefix(&staging)
                .unwrap_or_else(|_| panic!("a module outside the packages: {line}"));
            copy_file(&file, &tmp.join(rel));
            if line.ends_with(".so") {
                elves.push(file.clone());
            }
        }
        // Python finds its prefix by `os.py` and its exec prefix by `lib-dynload`.
        assert!(tmp.join("usr/lib/python3.11/os.py").exists());
        std::fs::create_dir_all(tmp.join("usr/lib/python3.11/lib-dynload")).unwrap();
        copy_file(&elves[0], &tmp.join(PYTHON.trim_start_matches('/')));
        for elf in &elves {
            for so in shared_libraries(&staging, elf) {
                let name = so.file_name().unwrap();
                let dest = if name.to_string_lossy().starts_with("ld-linux") {
                    tmp.join("lib64").join(name)
                } else {
                    tmp.join("lib/x86_64-linux-gnu").join(name)
                };
                // Resolve symlinks: the copy is the library itself.
                let real = std::fs::canonicalize(&so).unwrap();
                copy_file(&real, &dest);
            }
        }
        // Compiled ahead, valid whatever timestamps the image gives the sources.
        run_ok(
            staged_python(&staging)
                .args(["-S", "-m", "compileall", "-q", "--invalidation-mode"])
                .args(["unchecked-hash", "-s"])
                .arg(&tmp)
                .args(["-p", "/"])
                .arg(tmp.join("usr/lib/python3.11")),
            "compileall",
        );
        std::fs::create_dir_all(tmp.join("tmp")).unwrap();
        install_dir(&tmp, &rootfs, |d| {
            d.join(PYTHON.trim_start_matches('/')).exists()
        });
        rootfs
    })
}

/// A directory with Cloister's static init and a command line: a process image's blobs.
fn process_blobs(dir: &Path) -> PathBuf {
    let blobs = dir.join("blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::copy(&enclave_support::static_bins().0, blobs.join("init")).unwrap();
    std::fs::write(blobs.join("cmdline"), "console=ttyS0\n").unwrap();
    blobs
}

/// An image of the Python root file system with tests/apps/python/ in `/app`, running
/// `python3.11 -S -B /app/<argv...>`.
fn python_eif(dir: &Path, blobs: &Path, name: &str, argv: &[&str]) -> PathBuf {
    let rootfs = dir.join(format!("rootfs-{name}"));
    copy_dir(python_rootfs(), &rootfs);
    copy_dir(
        &workspace_root().join("tests/apps/python"),
        &rootfs.join("app"),
    );
    let mut cmd = vec![PYTHON, "-S", "-B"];
    cmd.extend_from_slice(argv);
    let out = dir.join(format!("{name}.eif"));
    run_ok(
        Command::new(env!("CARGO_BIN_EXE_cloister"))
            .args(["build-enclave", "--rootfs"])
            .arg(&rootfs)
            .args(["--rootfs-owner", "0:0", "--cmd"])
            .arg(serde_json::to_string(&cmd).unwrap())
            .arg("--blobs")
            .arg(blobs)
            .arg("--output-file")
            .arg(&out),
        "cloister build-enclave --rootfs",
    );
    out
}

/// Accepts the program's connection (within `deadline`), reads the length-prefixed document.
fn receive_document(
    env: &Env,
    id: &str,
    listener: &cloister_vsock::VsockListener,
    deadline: Duration,
) -> (u32, Vec<u8>) {
    listener.set_nonblocking(true).unwrap();
    let end = Instant::now() + deadline;
    let (stream, peer) = loop {
        match listener.accept() {
            Ok(s) => break s,
            Err(e) if e.is_would_block() && Instant::now() < end => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(e) => panic!(
                "no connection from the enclave ({e}); console: {}; enclaves: {}",
                env.console(id),
                String::from_utf8_lossy(&env.cli(&["describe-enclaves"]).stdout)
            ),
        }
    };
    stream.set_nonblocking(false).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut reader = BufReader::new(stream);
    let mut len = [0u8; 4];
    reader
        .read_exact(&mut len)
        .unwrap_or_else(|e| panic!("no document ({e}): {}", env.console(id)));
    let len = u32::from_be_bytes(len) as usize;
    if len == 0 {
        let mut error = String::new();
        let _ = reader.read_to_string(&mut error);
        panic!("the enclave could not attest: {error}");
    }
    let mut document = vec![0u8; len];
    reader.read_exact(&mut document).unwrap();
    (peer.cid, document)
}

/// `cloister verify-attestation --root --nonce` of `document`; its JSON.
fn verify(env: &Env, document: &[u8], nonce: &str) -> Value {
    let path = env.dir.path().join("python-doc.cose");
    std::fs::write(&path, document).unwrap();
    let root = env.pki.join("root-ca.pem");
    json_ok(
        &env.cli(&[
            "verify-attestation",
            "--document",
            path.to_str().unwrap(),
            "--root",
            root.to_str().unwrap(),
            "--nonce",
            nonce,
        ]),
        "verify-attestation",
    )
}

#[test]
fn python_attests_through_dev_nsm_in_a_process_enclave() {
    let env = Env::new("0-1", 1024);
    let blobs = process_blobs(env.dir.path());
    let nonce = hex::encode(b"python nonce, process");
    let eif = python_eif(
        env.dir.path(),
        &blobs,
        "pyattest",
        &["/app/nsm_attest.py", "7630", &nonce, "python enclave"],
    );
    let listener = env.listen(7630);
    let run = env.run(&eif, &["--enclave-name", "pyattest", "--debug-mode"]);
    let id = run["EnclaveID"].as_str().unwrap().to_owned();
    let (cid, document) = receive_document(&env, &id, &listener, Duration::from_secs(60));
    assert_eq!(u64::from(cid), run["EnclaveCID"].as_u64().unwrap());
    let verified = verify(&env, &document, &nonce);
    assert_eq!(verified["Isolation"], "process", "{verified}");
    assert_eq!(verified["ModuleId"], run["EnclaveID"], "{verified}");
    assert_eq!(verified["Nonce"], nonce, "{verified}");
    assert_eq!(
        verified["UserData"],
        hex::encode(b"python enclave"),
        "{verified}"
    );
}

/// AWS's vsock sample pattern against the enclave `id` (cid `cid`) that runs
/// `vsock_sample.py server 5005` (which serves on, so that the enclave and its console stay
/// until the test ends): waits (at most `deadline`) for the server to listen,
/// runs the client, the host's own python3, unchanged, under `cloister exec`, and checks both
/// sides.
fn vsock_sample_round(env: &Env, id: &str, cid: &str, deadline: Duration) {
    // The server says when it listens (on its console).
    let end = Instant::now() + deadline;
    while !env.console(id).contains("listening on port 5005") {
        assert!(
            Instant::now() < end,
            "the server did not start: {}",
            env.console(id)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let sample = workspace_root().join("tests/apps/python/vsock_sample.py");
    let mut child = env
        .cmd()
        .args(["exec", "--", "python3"])
        .arg(&sample)
        .args(["client", cid, "5005"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cloister exec python3");
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    let mut stderr = String::new();
    let _ = child.stderr.take().unwrap().read_to_string(&mut stderr);
    let status = child.wait().unwrap();
    assert!(status.success(), "client failed: {stdout}{stderr}");
    assert_eq!(stdout, "enclave says: HELLO, WORLD!\n", "{stderr}");
    // The server saw the parent's message, from cid 3.
    let end = Instant::now() + Duration::from_secs(60);
    let mut console = env.console(id);
    while !console.contains("from cid 3 port ") {
        assert!(Instant::now() < end, "{console}");
        std::thread::sleep(Duration::from_millis(50));
        console = env.console(id);
    }
    let line = console
        .lines()
        .find(|l| l.contains("from cid 3 port "))
        .unwrap();
    assert!(line.trim_end().ends_with(": Hello, world!"), "{console}");
}

#[test]
fn aws_vsock_sample_pattern_server_in_enclave_client_under_cloister_exec() {
    let env = Env::new("0-1", 1024);
    let blobs = process_blobs(env.dir.path());
    let eif = python_eif(
        env.dir.path(),
        &blobs,
        "pysample",
        &["/app/vsock_sample.py", "server", "5005"],
    );
    let run = env.run(&eif, &["--enclave-name", "pysample", "--debug-mode"]);
    let id = run["EnclaveID"].as_str().unwrap().to_owned();
    let cid = run["EnclaveCID"].as_u64().unwrap().to_string();
    vsock_sample_round(&env, &id, &cid, Duration::from_secs(60));
}

/// Runs `eif` as a debug-mode VM enclave named `name`; run-enclave's JSON.
fn run_vm(env: &Env, eif: &Path, name: &str) -> Value {
    let out = env
        .cmd()
        .env("CLOISTER_BOOT_TIMEOUT_MS", VM_BOOT_TIMEOUT_MS)
        .args(enclave_support::run_enclave_args(
            eif,
            "256",
            &["--isolation", "vm", "--debug-mode", "--enclave-name", name],
        ))
        .output()
        .unwrap();
    json_ok(&out, "run-enclave --isolation vm")
}

#[test]
fn aws_vsock_sample_pattern_in_a_vm_enclave() {
    let Some(kit) = vm_support::VmKit::get() else {
        return;
    };
    let _serial = vm_support::serial();
    let env = Env::new("0-1", 2048);
    let eif = python_eif(
        env.dir.path(),
        &kit.blobs,
        "pysample-vm",
        &["/app/vsock_sample.py", "server", "5005"],
    );
    let run = run_vm(&env, &eif, "pysample-vm");
    let id = run["EnclaveID"].as_str().unwrap().to_owned();
    let cid = run["EnclaveCID"].as_u64().unwrap().to_string();
    vsock_sample_round(&env, &id, &cid, Duration::from_secs(240));
    env.terminate_all();
}

#[test]
fn python_attests_through_dev_nsm_in_a_vm_enclave() {
    let Some(kit) = vm_support::VmKit::get() else {
        return;
    };
    let _serial = vm_support::serial();
    let env = Env::new("0-1", 2048);
    let nonce = hex::encode(b"python nonce, vm");
    let eif = python_eif(
        env.dir.path(),
        &kit.blobs,
        "pyattest-vm",
        &["/app/nsm_attest.py", "7631", &nonce, "python in a vm"],
    );
    let listener = env.listen(7631);
    let run = run_vm(&env, &eif, "pyattest-vm");
    let id = run["EnclaveID"].as_str().unwrap().to_owned();
    let (cid, document) = receive_document(&env, &id, &listener, Duration::from_secs(240));
    assert_eq!(u64::from(cid), run["EnclaveCID"].as_u64().unwrap());
    let verified = verify(&env, &document, &nonce);
    assert_eq!(verified["Isolation"], "vm", "{verified}");
    assert_eq!(verified["ModuleId"], run["EnclaveID"], "{verified}");
    assert_eq!(verified["Nonce"], nonce, "{verified}");
    assert_eq!(
        verified["UserData"],
        hex::encode(b"python in a vm"),
        "{verified}"
    );
    env.terminate_all();
}

/// The root file system is what the enclave runs: Debian's interpreter with only what the
/// programs need, and it runs them (checked here in a chroot, without an enclave).
#[test]
fn the_python_root_file_system_is_self_contained() {
    let rootfs = python_rootfs();
    let out = run_ok(
        Command::new("chroot").arg(rootfs).args([
            PYTHON,
            "-S",
            "-B",
            "-c",
            &format!(
                "import {MODULES}\n\
                 argparse.ArgumentParser(prog='p').format_help()\n\
                 print(socket.AF_VSOCK, sys.version_info[:2])"
            ),
        ]),
        "python3.11 in a chroot of the root file system",
    );
    assert_eq!(String::from_utf8_lossy(&out), "40 (3, 11)\n");
}
