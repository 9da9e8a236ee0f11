//! `run-enclave --isolation vm` end to end through the real `cloister` binary, under whatever
//! accelerator the host offers (TCG in CI): a VM-capable image built with `cloister blobs
//! prepare` and `build-enclave --blobs` around the static testapp; describe (isolation,
//! accelerator, the same PCRs as the process backend); vsock both ways; an attestation document
//! fetched from inside the VM and verified by `cloister verify-attestation`; QEMU's confinement
//! (uid, namespaces, seccomp, descriptors, cgroup); termination; a guest kernel panic; a guest
//! that never sends its heartbeat. Boots are few (each costs seconds under TCG) and serialised.

mod enclave_support;
mod vm_support;

use cloister_nsm_api::{Request, Response};
use enclave_support::{build_eif, Env};
use serde_json::Value;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use vm_support::{json_ok, VmKit};

/// Boot timeout for VM enclaves that should boot (TCG on a loaded two-core host).
const VM_BOOT_TIMEOUT_MS: &str = "180000";

fn vm_env() -> Env {
    Env::new("0-1", 2048)
}

/// `cloister <args>` with the VM boot timeout.
fn cli(env: &Env, args: &[&str], timeout_ms: &str) -> std::process::Output {
    env.cmd()
        .env("CLOISTER_BOOT_TIMEOUT_MS", timeout_ms)
        .args(args)
        .output()
        .expect("run cloister")
}

/// `run-enclave` of `eif` on one CPU with `memory` MiB under `isolation`, plus `extra` flags.
fn run_enclave(
    env: &Env,
    eif: &Path,
    memory: &str,
    isolation: &str,
    extra: &[&str],
    timeout_ms: &str,
) -> std::process::Output {
    let mut args = enclave_support::run_enclave_args(eif, memory, &["--isolation", isolation]);
    args.extend_from_slice(extra);
    cli(env, &args, timeout_ms)
}

fn run_vm(env: &Env, eif: &Path, name: &str) -> Value {
    let extra = ["--debug-mode", "--enclave-name", name];
    let out = run_enclave(env, eif, "256", "vm", &extra, VM_BOOT_TIMEOUT_MS);
    json_ok(&out, "run-enclave --isolation vm")
}

fn state(env: &Env, id: &str) -> Value {
    let path = env.run.join("enclaves").join(id).join("state.json");
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn status_field(pid: u64, name: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut v = u32::try_from(payload.len()).unwrap().to_be_bytes().to_vec();
    v.extend_from_slice(payload);
    v
}

fn read_frame(s: &mut impl Read) -> Vec<u8> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).unwrap();
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).unwrap();
    body
}

/// Checks QEMU's confinement from the host side.
fn check_qemu_confinement(pid: u64, cid: u64, cpus: &[Value], cgroups: &[PathBuf]) {
    let host_id = (1_000_000_000 + cid).to_string();
    assert_eq!(
        status_field(pid, "Uid:"),
        [host_id.as_str(); 4].join(" "),
        "QEMU's uid"
    );
    assert_eq!(status_field(pid, "Gid:"), [host_id.as_str(); 4].join(" "));
    // No supplementary group, but for the owner of /dev/kvm under KVM.
    let groups = status_field(pid, "Groups:");
    let kvm_gid = std::fs::metadata("/dev/kvm")
        .map(|m| std::os::unix::fs::MetadataExt::gid(&m).to_string())
        .unwrap_or_default();
    assert!(
        groups.is_empty() || groups == kvm_gid,
        "QEMU's groups: {groups}"
    );
    assert_eq!(status_field(pid, "Seccomp:"), "2", "QEMU's seccomp sandbox");
    assert_eq!(status_field(pid, "NoNewPrivs:"), "1");
    assert_eq!(status_field(pid, "CapEff:"), "0000000000000000");
    for ns in ["mnt", "net", "ipc", "uts"] {
        let mine = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
        let qemu = std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap();
        assert_ne!(mine, qemu, "QEMU shares the host's {ns} namespace");
    }
    // No interface but lo, and lo is down.
    let dev = std::fs::read_to_string(format!("/proc/{pid}/net/dev")).unwrap();
    let ifaces: Vec<&str> = dev
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(str::trim)
        .collect();
    assert_eq!(ifaces, ["lo"], "{dev}");
    let route = std::fs::read_to_string(format!("/proc/{pid}/net/route")).unwrap();
    assert!(route.lines().count() <= 1, "QEMU has routes: {route}");
    // lo is down (`ip` run in QEMU's network namespace, where the host has the tools).
    let ip = Command::new("nsenter")
        .arg(format!("--net=/proc/{pid}/ns/net"))
        .args(["ip", "-o", "link", "show", "lo"])
        .output();
    match ip {
        Ok(o) if o.status.success() => {
            let text = String::from_utf8_lossy(&o.stdout);
            let flags = text.split(['<', '>']).nth(1).unwrap_or_default();
            assert!(!flags.split(',').any(|f| f == "UP"), "lo is up: {text}");
        }
        other => eprintln!("note: cannot inspect lo with nsenter + ip: {other:?}"),
    }
    // Descriptors: stdio plus what QEMU opened itself (eventfds, its sockets, guest memory);
    // nothing of the monitor's (enclave directory, run directory files, the lock).
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
        let fd = fd.unwrap();
        let target = std::fs::read_link(fd.path()).unwrap_or_default();
        let t = target.to_string_lossy();
        assert!(
            !t.starts_with('/') || t == "/dev/null" || t.starts_with("/memfd:"),
            "unexpected descriptor {:?} -> {t}",
            fd.file_name()
        );
    }
    // Every QEMU thread on the enclave's CPU.
    let want = cpus
        .iter()
        .map(|c| c.as_u64().unwrap().to_string())
        .collect::<Vec<_>>()
        .join(",");
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let st = std::fs::read_to_string(task.unwrap().path().join("status")).unwrap_or_default();
        if let Some(l) = st.lines().find(|l| l.starts_with("Cpus_allowed_list:")) {
            assert_eq!(l.split_whitespace().nth(1), Some(want.as_str()), "{l}");
        }
    }
    // In the enclave's cgroup, whose limits hold the guest.
    assert!(!cgroups.is_empty());
    for dir in cgroups {
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap();
        assert!(
            procs.lines().any(|l| l.trim() == pid.to_string()),
            "QEMU is not in {}",
            dir.display()
        );
        if let Ok(cpus) = std::fs::read_to_string(dir.join("cpuset.cpus")) {
            assert_eq!(cpus.trim(), want);
        }
        let limit = std::fs::read_to_string(dir.join("memory.limit_in_bytes"))
            .or_else(|_| std::fs::read_to_string(dir.join("memory.max")));
        if let Ok(limit) = limit {
            let limit: u64 = limit.trim().parse().unwrap();
            assert!((256 << 20..=1024 << 20).contains(&limit), "{limit}");
        }
    }
}

#[test]
#[allow(
    clippy::too_many_lines,
    reason = "one end-to-end scenario, read top to bottom; its steps share what it started"
)]
fn vm_enclave_lifecycle_vsock_attestation_and_confinement() {
    let Some(kit) = VmKit::get() else { return };
    let _serial = vm_support::serial();
    let env = vm_env();

    // Parent -> enclave: an echo server.
    let echo = kit.eif(env.dir.path(), "echo", &["echo-server", "5000"]);
    let started = Instant::now();
    let out = run_vm(&env, &echo, "vm-echo");
    eprintln!("VM enclave booted in {:?}", started.elapsed());
    let id = out["EnclaveID"].as_str().unwrap().to_owned();
    let cid = out["EnclaveCID"].as_u64().unwrap();
    let list = json_ok(&cli(&env, &["describe-enclaves"], "1"), "describe");
    let entry = &list[0];
    assert_eq!(entry["Isolation"], "vm");
    let accel = entry["Accelerator"].as_str().unwrap().to_owned();
    assert!(accel == "tcg" || accel == "kvm", "{accel}");
    if std::path::Path::new("/sys/module/kvm_pvm").exists() || !Path::new("/dev/kvm").exists() {
        assert_eq!(accel, "tcg");
    }
    assert_eq!(entry["State"], "RUNNING");
    assert_eq!(entry["Flags"], "DEBUG_MODE");

    let mut s = env.connect_retry(u32::try_from(cid).unwrap(), 5000);
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let msg: Vec<u8> = (0..200_000u32)
        .map(|i| u8::try_from(i * 7 % 253).unwrap())
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
    drop(s);

    // QEMU, as seen from the host.
    let st = state(&env, &id);
    let qemu_pid = st["init_pid"].as_u64().unwrap();
    let cgroups: Vec<PathBuf> = st["cgroup_dirs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| PathBuf::from(p.as_str().unwrap()))
        .collect();
    check_qemu_confinement(qemu_pid, cid, entry["CPUIDs"].as_array().unwrap(), &cgroups);
    // The console streams (debug mode) and shows the guest kernel.
    let console = env.console(&id);
    assert!(console.contains("Linux version"), "{console}");

    // The same EIF under process isolation: the same PCRs.
    let extra = ["--enclave-name", "proc-echo"];
    let p = json_ok(
        &run_enclave(&env, &echo, "256", "process", &extra, "20000"),
        "run-enclave --isolation process",
    );
    let list = json_ok(&cli(&env, &["describe-enclaves"], "1"), "describe");
    let by_name = |n: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|e| e["EnclaveName"] == n)
            .unwrap()
            .clone()
    };
    let (vm, process) = (by_name("vm-echo"), by_name("proc-echo"));
    assert_eq!(vm["Measurements"], process["Measurements"]);
    assert_eq!(process["Isolation"], "process");
    assert_eq!(process["Accelerator"], Value::Null);
    // Both answer on the same fabric.
    let mut ps = env.connect_retry(
        u32::try_from(p["EnclaveCID"].as_u64().unwrap()).unwrap(),
        5000,
    );
    ps.write_all(b"ping").unwrap();
    let mut pong = [0u8; 4];
    ps.read_exact(&mut pong).unwrap();
    assert_eq!(&pong, b"ping");
    drop(ps);
    json_ok(
        &cli(
            &env,
            &["terminate-enclave", "--enclave-name", "proc-echo"],
            "1",
        ),
        "terminate",
    );

    // Termination from the host: no entry, no QEMU, no cgroup, no fabric socket.
    let t = json_ok(
        &cli(&env, &["terminate-enclave", "--enclave-id", &id], "1"),
        "terminate",
    );
    assert_eq!(t["Terminated"], true);
    assert!(
        !Path::new(&format!("/proc/{qemu_pid}")).exists(),
        "QEMU survived"
    );
    for dir in &cgroups {
        assert!(!dir.exists(), "cgroup {} left behind", dir.display());
    }
    assert!(!env.run.join("enclaves").join(&id).exists());
    assert!(!env.fabric().join(format!("{cid}.sock")).exists());
    let list = json_ok(&cli(&env, &["describe-enclaves"], "1"), "describe");
    assert_eq!(list.as_array().unwrap().len(), 0);

    // Enclave -> parent, and the NSM from inside the VM: testapp's relay connects to a parent
    // listener and forwards NSM frames to cid 0 port 1.
    let listener = env.listen(7400);
    let relay = kit.eif(env.dir.path(), "relay", &["nsm-relay", "7400"]);
    let out = run_vm(&env, &relay, "vm-relay");
    let relay_cid = out["EnclaveCID"].as_u64().unwrap();
    let (mut r, peer) = listener.accept().unwrap();
    assert_eq!(u64::from(peer.cid), relay_cid);
    r.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let req = Request::Attestation {
        user_data: Some(serde_bytes::ByteBuf::from(b"from the vm".to_vec())),
        nonce: Some(serde_bytes::ByteBuf::from(b"vm-nonce".to_vec())),
        public_key: None,
    };
    r.write_all(&frame(&req.to_cbor().unwrap())).unwrap();
    let document = match Response::from_cbor(&read_frame(&mut r)).unwrap() {
        Response::Attestation { document } => document,
        other => panic!("unexpected NSM response {other:?}"),
    };
    let doc_path = env.dir.path().join("vm-attestation.cose");
    std::fs::write(&doc_path, &document).unwrap();
    let root = env.pki.join("root-ca.pem");
    let verified = json_ok(
        &cli(
            &env,
            &[
                "verify-attestation",
                "--document",
                doc_path.to_str().unwrap(),
                "--root",
                root.to_str().unwrap(),
                "--nonce",
                &hex::encode(b"vm-nonce"),
            ],
            "1",
        ),
        "verify-attestation",
    );
    assert_eq!(verified["Isolation"], "vm");
    assert_eq!(verified["ModuleId"], out["EnclaveID"]);
    assert_eq!(verified["UserData"], hex::encode(b"from the vm"));
    // Debug mode: PCR0-2 are zero in documents, as on AWS.
    assert_eq!(verified["Debug"], true);
    assert_eq!(verified["PCRs"]["0"], "0".repeat(96));
    drop(r);
    json_ok(
        &cli(&env, &["terminate-enclave", "--all"], "1"),
        "terminate",
    );
}

#[test]
fn vm_start_failures_panic_timeout_and_kernelless_image() {
    let Some(kit) = VmKit::get() else { return };
    let _serial = vm_support::serial();
    let env = vm_env();

    // An image built without a kernel: an image error naming the way to build one.
    let kernelless = build_eif(env.dir.path(), "nokernel", &["sleep"]);
    let out = run_enclave(&env, &kernelless, "128", "vm", &[], VM_BOOT_TIMEOUT_MS);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("E307"), "{err}");
    assert!(err.contains("cloister blobs prepare"), "{err}");

    // A guest kernel panic: no init in the initramfs at the path the kernel is told to run,
    // and no root device to fall back to.
    let panicking =
        kit.eif_with_cmdline(env.dir.path(), "panic", &["sleep"], "rdinit=/no-such-init");
    let started = Instant::now();
    let out = run_enclave(
        &env,
        &panicking,
        "256",
        "vm",
        &["--debug-mode"],
        VM_BOOT_TIMEOUT_MS,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    eprintln!("panic reported after {:?}", started.elapsed());
    assert!(!out.status.success());
    assert!(err.contains("E310"), "{err}");
    assert!(
        err.contains("the guest kernel panicked: Kernel panic - not syncing"),
        "{err}"
    );
    assert_no_leftovers(&env);

    // A guest that never sends the heartbeat: the testapp replaces init and sleeps.
    let silent = kit.eif_with_cmdline(
        env.dir.path(),
        "silent",
        &["sleep"],
        "rdinit=/rootfs/bin/testapp -- sleep",
    );
    let timeout_ms = 15_000u64;
    let started = Instant::now();
    let out = run_enclave(
        &env,
        &silent,
        "256",
        "vm",
        &["--debug-mode"],
        &timeout_ms.to_string(),
    );
    let took = started.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("E309"), "{err}");
    assert!(
        err.contains(&format!(
            "no heartbeat from the enclave within {timeout_ms} ms"
        )),
        "{err}"
    );
    // The console is quoted: the kernel ran the replacement init.
    assert!(err.contains("/rootfs/bin/testapp"), "{err}");
    assert!(
        took >= Duration::from_millis(timeout_ms)
            && took < Duration::from_millis(timeout_ms + 30_000),
        "the timeout took {took:?}"
    );
    assert_no_leftovers(&env);
}

/// A run directory closed to other users (as `mktemp -d` makes it) fails at once with E702
/// saying what to do, never with a bare "Permission denied" from QEMU; one that cloister makes
/// itself works whatever the umask (the directories it makes are searchable by QEMU's uid),
/// and QEMU runs as the uid recorded for the enclave.
#[test]
fn vm_enclaves_reach_their_files_or_fail_at_once() {
    let Some(kit) = VmKit::get() else { return };
    let _serial = vm_support::serial();
    let env = vm_env();
    let echo = kit.eif(env.dir.path(), "echo", &["echo-server", "5000"]);

    std::fs::create_dir(&env.run).unwrap();
    std::fs::set_permissions(
        &env.run,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    let started = Instant::now();
    let out = run_enclave(&env, &echo, "256", "vm", &[], VM_BOOT_TIMEOUT_MS);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(6), "{err}");
    assert!(err.contains("[E702]"), "{err}");
    assert!(
        err.contains("(mode 0700)") && err.contains("chmod o+x"),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_no_leftovers(&env);
    std::fs::remove_dir_all(&env.run).unwrap();

    // Made by cloister under a umask that closes everything to others.
    let mut cmd = env.cmd();
    cmd.env("CLOISTER_BOOT_TIMEOUT_MS", VM_BOOT_TIMEOUT_MS)
        .args(enclave_support::run_enclave_args(
            &echo,
            "256",
            &["--isolation", "vm", "--enclave-name", "umask"],
        ));
    // SAFETY: runs between fork and exec and only calls umask(2), which is async-signal-safe.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
            Ok(())
        });
    }
    let out = json_ok(&cmd.output().unwrap(), "run-enclave under umask 077");
    let id = out["EnclaveID"].as_str().unwrap();
    let cid = out["EnclaveCID"].as_u64().unwrap();
    let rec = state(&env, id);
    let qemu = rec["init_pid"].as_u64().unwrap();
    let uid = rec["host_uid"].as_u64().unwrap().to_string();
    assert_eq!(status_field(qemu, "Uid:"), [uid.as_str(); 4].join(" "));
    let mut s = env.connect_retry(u32::try_from(cid).unwrap(), 5000);
    s.write_all(b"through a umask\n").unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(&mut s), &mut line).unwrap();
    assert_eq!(line, "through a umask\n");
    json_ok(
        &cli(&env, &["terminate-enclave", "--all"], "1"),
        "terminate",
    );
    assert_no_leftovers(&env);
}

/// No enclave entry, no QEMU of this run directory, no cgroup of ours.
fn assert_no_leftovers(env: &Env) {
    // The monitor may still be finishing its teardown when run-enclave has reported the
    // failure: give it a moment.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let list = json_ok(&cli(env, &["describe-enclaves"], "1"), "describe");
        if list.as_array().unwrap().is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "an enclave is left: {list}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let entries = std::fs::read_dir(env.run.join("enclaves"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(entries, 0, "an enclave directory was left behind");
    let run = env.run.to_string_lossy().into_owned();
    for p in std::fs::read_dir("/proc").unwrap().flatten() {
        let cmdline = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline);
        assert!(
            !(cmdline.contains("qemu-system") && cmdline.contains(&run)),
            "QEMU survived: {cmdline}"
        );
    }
}
