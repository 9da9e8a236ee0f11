//! Isolation of process enclaves, tested from inside: the testapp's `isolation-suite` tries to
//! break out and reports each attempt's errno; attestation documents from the enclave's NSM
//! verify against the PKI root with the image's PCRs (zeros in debug mode); nothing written
//! survives the enclave; hostile bytes on the NSM channel leave the monitor healthy.

mod enclave_support;

use cloister_attestation::verify::{Verifier, VerifyOptions};
use cloister_nsm_api::{Request, Response};
use enclave_support::{accept_read, build_eif, Env};
use std::io::{Read, Write};
use std::time::Duration;

#[test]
fn isolation_suite_from_inside() {
    let env = Env::new("0-1", 1024);
    // A second enclave the first one must not reach.
    let other_eif = build_eif(env.dir.path(), "other", &["echo-server", "5000"]);
    let other = env.run(&other_eif, &["--enclave-name", "other"]);
    let other_cid = other["EnclaveCID"].as_u64().unwrap().to_string();
    // A host TCP listener the enclave must not reach.
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let tcp_port = tcp.local_addr().unwrap().port().to_string();
    let host_pid = std::process::id().to_string();
    let report = env.listen(7100);
    let eif = build_eif(
        env.dir.path(),
        "suite",
        &[
            "isolation-suite",
            "7100",
            &other_cid,
            &tcp_port,
            &host_pid,
            "128",
        ],
    );
    let out = env.run(&eif, &["--enclave-name", "suite", "--debug-mode"]);
    let (_, text) = accept_read(&report, 64 * 1024);
    eprintln!("{text}");
    for check in [
        "fds",
        "caps",
        "no_new_privs",
        "seccomp",
        "interfaces",
        "route",
        "host_tcp",
        "mount",
        "unshare",
        "ptrace",
        "af_vsock",
        "dev",
        "mknod",
        "pid1",
        "host_proc",
        "host_pid",
        "pid_count",
        "proc_masked",
        "proc_readonly",
        "sys_net",
        "sys_readonly",
        "sys_masked",
        "tmp_run",
        "oom_score_adj",
        "other_enclave",
        "fork_bomb",
        "memory",
    ] {
        let line = text
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(check));
        let line = line.unwrap_or_else(|| panic!("no result for {check}:\n{text}"));
        assert!(line.starts_with("ok "), "{line}");
    }
    assert!(text.contains("ok mount EPERM"), "{text}");
    assert!(text.contains("ok unshare EPERM"), "{text}");
    assert!(text.contains("ok ptrace EPERM"), "{text}");
    assert!(text.contains("ok mknod EPERM"), "{text}");
    assert!(text.contains("ok host_tcp ECONNREFUSED"), "{text}");
    assert!(text.contains("ok host_pid ESRCH"), "{text}");
    assert!(text.contains("ok fork_bomb"), "{text}");
    let init_adj = if may_lower_oom_scores() { "-999" } else { "0" };
    assert!(
        text.contains(&format!("ok oom_score_adj init={init_adj} command=0")),
        "{text}"
    );
    // The enclave survived its own memory hog and fork bomb; the host side is fine.
    let list = env.json(&["describe-enclaves"]);
    assert_eq!(list.as_array().unwrap().len(), 2);
    let id = out["EnclaveID"].as_str().unwrap();
    // The hog was the memory cgroup's OOM kill, and the host counts it (v1's oom_control
    // lists `oom_kill_disable 0` before `oom_kill N`).
    assert!(oom_kills(&env, id) >= 1, "no OOM kill counted");
    let t = env.json(&["terminate-enclave", "--enclave-id", id]);
    assert_eq!(t["Terminated"], true);
    drop(tcp);
}

/// Writes an EIF whose `/init` is the testapp itself in `hostile-init PORT` mode (no
/// Cloister init anywhere in the image) and whose customer ramdisk has no `rootfs/`.
fn build_hostile_eif(dir: &std::path::Path, port: u32) -> std::path::PathBuf {
    let (_, app) = enclave_support::static_bins();
    let app = std::fs::read(app).expect("read testapp");
    let mode = format!("hostile-init {port}\n");
    let mut boot = cloister_cpio::CpioWriter::new(Vec::new());
    boot.file("init", 0o755, 0, 0, app.len() as u64, &app[..])
        .unwrap();
    boot.file(
        "testapp.mode",
        0o644,
        0,
        0,
        mode.len() as u64,
        mode.as_bytes(),
    )
    .unwrap();
    let boot = boot.finish().unwrap();
    let mut user = cloister_cpio::CpioWriter::new(Vec::new());
    user.file("cmd", 0o644, 0, 0, 7, &b"/sleep\n"[..]).unwrap();
    let user = user.finish().unwrap();
    let path = dir.join("hostile.eif");
    cloister_eif::EifBuilder::new()
        .kernel_bytes(b"not a kernel: process isolation does not boot one".to_vec())
        .cmdline("console=ttyS0")
        .ramdisk_bytes(boot)
        .ramdisk_bytes(user)
        .write_to_path(&path)
        .expect("write eif");
    path
}

/// The runtime, not the image's init, confines a process enclave: an image whose `/init` is
/// a hostile program (here the testapp, not Cloister's init) is refused AF_VSOCK, io_uring,
/// keyrings, userfaultfd, ptrace, nested namespaces and mounts, holds no capability in any
/// set, and runs with no_new_privs and the seccomp filter, from its first instruction.
#[test]
fn hostile_init_is_confined_by_the_runtime() {
    let env = Env::new("0-1", 1024);
    let report = env.listen(7400);
    let eif = build_hostile_eif(env.dir.path(), 7400);
    let out = env.run(&eif, &["--enclave-name", "hostile", "--debug-mode"]);
    let (_, text) = accept_read(&report, 64 * 1024);
    eprintln!("{text}");
    for check in [
        "af_vsock",
        "io_uring",
        "keyctl",
        "userfaultfd",
        "ptrace",
        "unshare",
        "mount",
        "caps",
        "no_new_privs",
        "seccomp",
    ] {
        let line = text
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(check))
            .unwrap_or_else(|| panic!("no result for {check}:\n{text}"));
        assert!(line.starts_with("ok "), "{line}");
    }
    // The host-side view of the same process: no capabilities, filter mode.
    let id = out["EnclaveID"].as_str().unwrap();
    let state: serde_json::Value = serde_json::from_slice(
        &std::fs::read(env.run.join("enclaves").join(id).join("state.json")).unwrap(),
    )
    .unwrap();
    let init = state["init_pid"].as_u64().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{init}/status")).unwrap();
    for (key, want) in [
        ("CapEff:", "0000000000000000"),
        ("CapPrm:", "0000000000000000"),
        ("CapBnd:", "0000000000000000"),
        ("NoNewPrivs:", "1"),
        ("Seccomp:", "2"),
    ] {
        let got = status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map(str::trim);
        assert_eq!(got, Some(want), "{key} of the hostile init");
    }
    env.json(&["terminate-enclave", "--enclave-id", id]);
}

/// The host shields the enclave's PID 1 from the OOM killer (so that a memory or fork bomb in
/// the enclave loses its own processes first) and Cloister's init gives its command the
/// ordinary score back.
#[test]
fn init_is_shielded_from_the_oom_killer_and_its_command_is_not() {
    let env = Env::new("0-1", 1024);
    let eif = build_eif(env.dir.path(), "oom", &["echo-server", "5000"]);
    let out = env.run(&eif, &["--enclave-name", "oom"]);
    let id = out["EnclaveID"].as_str().unwrap().to_owned();
    let state: serde_json::Value = serde_json::from_slice(
        &std::fs::read(env.run.join("enclaves").join(&id).join("state.json")).unwrap(),
    )
    .unwrap();
    let init = state["init_pid"].as_u64().unwrap();
    let adj = |pid: &str| {
        std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj"))
            .unwrap()
            .trim()
            .to_owned()
    };
    // Lowering a score takes CAP_SYS_RESOURCE, which root lacks in some containers: there
    // init keeps the default, and only its command's score is checked.
    let want = if may_lower_oom_scores() { "-999" } else { "0" };
    assert_eq!(adj(&init.to_string()), want, "init");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let command = loop {
        let children =
            std::fs::read_to_string(format!("/proc/{init}/task/{init}/children")).unwrap();
        if let Some(pid) = children.split_whitespace().next() {
            break pid.to_owned();
        }
        assert!(std::time::Instant::now() < deadline, "init has no child");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(adj(&command), "0", "the enclave's command");
    env.json(&["terminate-enclave", "--enclave-id", &id]);
}

/// The OOM kills the enclave's memory cgroup counted, read as the runtime reads them.
fn oom_kills(env: &Env, id: &str) -> u64 {
    let state: serde_json::Value = serde_json::from_slice(
        &std::fs::read(env.run.join("enclaves").join(id).join("state.json")).unwrap(),
    )
    .unwrap();
    let dirs = state["cgroup_dirs"].as_array().cloned().unwrap_or_default();
    dirs.iter()
        .filter_map(|d| d.as_str())
        .flat_map(|d| ["memory.oom_control", "memory.events"].map(|f| format!("{d}/{f}")))
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .map(|text| cloister_runtime::cgroup::counter(&text, "oom_kill"))
        .sum()
}

/// Whether this process holds CAP_SYS_RESOURCE (as the runtime, started by it, then does).
fn may_lower_oom_scores() -> bool {
    const CAP_SYS_RESOURCE: u32 = 24;
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    eff & (1 << CAP_SYS_RESOURCE) != 0
}

#[test]
fn nothing_survives_an_enclave() {
    let env = Env::new("0-1", 1024);
    let eif = build_eif(env.dir.path(), "writer", &["write-file", "/tmp/persist"]);
    let out = env.run(&eif, &["--debug-mode", "--enclave-name", "writer"]);
    let id = out["EnclaveID"].as_str().unwrap().to_owned();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !env.console(&id).contains("wrote /tmp/persist") {
        assert!(std::time::Instant::now() < deadline, "{}", env.console(&id));
        std::thread::sleep(Duration::from_millis(20));
    }
    env.json(&["terminate-enclave", "--enclave-id", &id]);
    let report = env.listen(7200);
    let eif = build_eif(
        env.dir.path(),
        "checker",
        &["check-absent", "/tmp/persist", "7200"],
    );
    env.run(&eif, &["--enclave-name", "checker"]);
    let (_, text) = accept_read(&report, 1024);
    assert_eq!(text.trim(), "ok absent /tmp/persist");
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

fn attest(relay: &mut (impl Read + Write), nonce: &[u8]) -> Vec<u8> {
    let req = Request::Attestation {
        user_data: Some(serde_bytes::ByteBuf::from(b"hello".to_vec())),
        nonce: Some(serde_bytes::ByteBuf::from(nonce.to_vec())),
        public_key: None,
    };
    relay.write_all(&frame(&req.to_cbor().unwrap())).unwrap();
    match Response::from_cbor(&read_frame(relay)).unwrap() {
        Response::Attestation { document } => document,
        other => panic!("unexpected NSM response {other:?}"),
    }
}

fn relay_enclave(
    env: &Env,
    name: &str,
    port: u32,
    debug: bool,
) -> (serde_json::Value, cloister_vsock::VsockStream) {
    let listener = env.listen(port);
    let eif = build_eif(env.dir.path(), name, &["nsm-relay", &port.to_string()]);
    let mut extra = vec!["--enclave-name", name];
    if debug {
        extra.push("--debug-mode");
    }
    let out = env.run(&eif, &extra);
    listener.set_nonblocking(false).unwrap();
    let (s, _) = listener.accept().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    (out, s)
}

#[test]
fn attestation_documents_verify_with_image_pcrs() {
    let env = Env::new("0-1", 1024);
    let (out, mut relay) = relay_enclave(&env, "attest", 7300, false);
    let doc = attest(&mut relay, b"nonce-1");
    let root = std::fs::read(env.pki.join("root-ca.pem")).unwrap();
    let root_der = pem_to_der(&root);
    let verifier = Verifier::new(vec![root_der.clone()]).unwrap();
    let verified = verifier
        .verify(&doc, &VerifyOptions::default())
        .expect("document verifies");
    let list = env.json(&["describe-enclaves"]);
    let m = &list[0]["Measurements"];
    for (i, key) in [(0, "PCR0"), (1, "PCR1"), (2, "PCR2")] {
        assert_eq!(
            hex::encode(verified.pcr(i).unwrap()),
            m[key].as_str().unwrap(),
            "PCR{i}"
        );
    }
    assert_eq!(verified.module_id(), out["EnclaveID"].as_str().unwrap());
    assert_eq!(
        verified.document().nonce.as_ref().map(|n| n.to_vec()),
        Some(b"nonce-1".to_vec())
    );

    // Hostile input on the NSM channel: garbage, an oversized request, a huge length prefix.
    relay.write_all(&frame(b"\xff\xff garbage")).unwrap();
    assert!(matches!(
        Response::from_cbor(&read_frame(&mut relay)).unwrap(),
        Response::Error(_)
    ));
    relay.write_all(&frame(&vec![0x41; 5000])).unwrap();
    let r = Response::from_cbor(&read_frame(&mut relay)).unwrap();
    assert!(format!("{r:?}").contains("InputTooLarge"), "{r:?}");
    relay.write_all(&(1u32 << 30).to_be_bytes()).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    // The monitor is still healthy: a fresh request works.
    let doc2 = attest(&mut relay, b"nonce-2");
    verifier.verify(&doc2, &VerifyOptions::default()).unwrap();
    // A flood of host connections to a port nobody listens on.
    let cid = u32::try_from(out["EnclaveCID"].as_u64().unwrap()).unwrap();
    for _ in 0..300 {
        let _ = env.connect(cid, 9999);
    }
    assert_eq!(
        env.json(&["describe-enclaves"]).as_array().unwrap().len(),
        1
    );
    let log = std::fs::metadata(
        env.run
            .join("enclaves")
            .join(out["EnclaveID"].as_str().unwrap())
            .join("monitor.log"),
    )
    .map(|m| m.len())
    .unwrap_or(0);
    assert!(log < 64 * 1024, "monitor log grew to {log} bytes");
    let _ = root_der;
}

#[test]
fn debug_mode_zeroes_image_pcrs() {
    let env = Env::new("0-1", 1024);
    let (_, mut relay) = relay_enclave(&env, "attestdbg", 7301, true);
    let doc = attest(&mut relay, b"n");
    let root = pem_to_der(&std::fs::read(env.pki.join("root-ca.pem")).unwrap());
    let verified = Verifier::new(vec![root])
        .unwrap()
        .verify(&doc, &VerifyOptions::default())
        .unwrap();
    for i in 0..3 {
        assert_eq!(verified.pcr(i).unwrap(), &[0u8; 48][..], "PCR{i}");
    }
    assert_ne!(
        verified.pcr(4).unwrap(),
        &[0u8; 48][..],
        "PCR4 carries the instance id"
    );
}

#[test]
fn killed_monitor_takes_its_enclave_along() {
    let env = Env::new("0-1", 1024);
    let eif = build_eif(env.dir.path(), "victim", &["echo-server", "5000"]);
    let out = env.run(&eif, &[]);
    let monitor = i32::try_from(out["ProcessID"].as_u64().unwrap()).unwrap();
    let id = out["EnclaveID"].as_str().unwrap().to_owned();
    let state: serde_json::Value = serde_json::from_slice(
        &std::fs::read(env.run.join("enclaves").join(&id).join("state.json")).unwrap(),
    )
    .unwrap();
    let init = i32::try_from(state["init_pid"].as_u64().unwrap()).unwrap();
    // SAFETY: signalling a process this test started (through the CLI).
    unsafe { libc_kill(monitor, 9) };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::path::Path::new(&format!("/proc/{init}")).exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "enclave init {init} survived its monitor"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(env.json(&["describe-enclaves"]), serde_json::json!([]));
    assert!(!env.run.join("enclaves").join(&id).exists());
    // Its resources are free again.
    let again = env.json(&[
        "run-enclave",
        "--eif-path",
        eif.to_str().unwrap(),
        "--cpu-count",
        "2",
        "--memory",
        "128",
    ]);
    assert_eq!(again["NumberOfCPUs"], 2);
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

fn pem_to_der(pem: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(pem);
    let b64: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .unwrap()
}
