//! What `run-enclave` checks before an enclave runs, end to end through the real binary:
//! a signed image must verify, with a signing certificate valid now (E318, exit status 4); the
//! run directory and the PKI directory must be writable by nobody else (E319); a VM enclave's
//! run directory must be searchable by QEMU's uid (E702, at once); the image that boots is the
//! one that was measured, even when another is renamed over its path meanwhile; and two live
//! enclaves never share a host uid, whatever their CIDs.

mod enclave_support;

use enclave_support::{build_eif, run_enclave_args, Env};
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts that `out` failed with `code` and exit status `status`; returns stderr.
fn failed_with(out: &Output, code: &str, status: i32) -> String {
    let err = stderr(out);
    assert!(err.contains(&format!("[{code}]")), "expected {code}: {err}");
    assert_eq!(out.status.code(), Some(status), "{err}");
    err
}

/// Nothing of a refused enclave is left: no record, no directory, no allocation.
fn nothing_left(env: &Env) {
    assert_eq!(env.json(&["describe-enclaves"]), serde_json::json!([]));
    let left: Vec<PathBuf> = std::fs::read_dir(env.run.join("enclaves"))
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
}

/// A P-384 certificate and key valid from `not_before` to `not_after` (seconds from now).
fn signing_pair(dir: &Path, name: &str, not_before: i64, not_after: i64) -> (PathBuf, PathBuf) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("signer {name}"));
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now + time::Duration::seconds(not_before);
    params.not_after = now + time::Duration::seconds(not_after);
    let cert = params.self_signed(&key).unwrap();
    let (c, k) = (
        dir.join(format!("{name}.cert.pem")),
        dir.join(format!("{name}.key.pem")),
    );
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c, k)
}

/// An echo-server image signed with a certificate valid from `not_before` to `not_after`
/// (seconds from now).
fn signed_eif(env: &Env, name: &str, not_before: i64, not_after: i64) -> PathBuf {
    let eif = build_eif(env.dir.path(), name, &["echo-server", "5000"]);
    let (cert, key) = signing_pair(env.dir.path(), name, not_before, not_after);
    let out = env.cli(&[
        "sign-eif",
        "--eif-path",
        eif.to_str().unwrap(),
        "--signing-certificate",
        cert.to_str().unwrap(),
        "--private-key",
        key.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "sign-eif: {}", stderr(&out));
    eif
}

fn run(env: &Env, eif: &Path, extra: &[&str]) -> Output {
    env.cli(&run_enclave_args(eif, "128", extra))
}

const DAY: i64 = 24 * 3600;

#[test]
fn signed_images_must_verify_with_a_certificate_valid_now() {
    let env = Env::new("0-1", 1024);

    // Tampered: signed, then changed (its command line), so the signature no longer signs
    // the image's PCR0.
    let tampered = signed_eif(&env, "tampered", -3600, DAY);
    let mut bytes = std::fs::read(&tampered).unwrap();
    let at = bytes
        .windows(b"console=ttyS0".len())
        .position(|w| w == b"console=ttyS0")
        .unwrap();
    bytes[at + b"console=ttyS".len()] = b'1';
    std::fs::write(&tampered, bytes).unwrap();
    let err = failed_with(&run(&env, &tampered, &[]), "E318", 4);
    assert!(err.contains("signature does not verify"), "{err}");
    nothing_left(&env);

    let expired = signed_eif(&env, "expired", -2 * DAY, -DAY);
    let err = failed_with(&run(&env, &expired, &[]), "E318", 4);
    assert!(err.contains("signing certificate is expired"), "{err}");
    nothing_left(&env);

    let early = signed_eif(&env, "early", DAY, 2 * DAY);
    let err = failed_with(&run(&env, &early, &[]), "E318", 4);
    assert!(
        err.contains("signing certificate is not yet valid"),
        "{err}"
    );
    nothing_left(&env);

    // `explain` knows the code and its exit class.
    let explain = env.cli(&["explain", "--error-code", "E318"]);
    assert!(explain.status.success(), "{}", stderr(&explain));

    // Valid now: it runs, with its PCR8.
    let valid = signed_eif(&env, "valid", -3600, DAY);
    let out = run(&env, &valid, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let described = env.json(&["describe-eif", "--eif-path", valid.to_str().unwrap()]);
    let list = env.json(&["describe-enclaves"]);
    assert_eq!(
        list[0]["Measurements"]["PCR8"],
        described["Measurements"]["PCR8"]
    );
    assert!(list[0]["Measurements"]["PCR8"].is_string());
}

#[test]
fn run_and_pki_directories_writable_by_others_are_refused() {
    let env = Env::new("0-1", 1024);
    let eif = build_eif(env.dir.path(), "echo", &["echo-server", "5000"]);

    std::fs::create_dir_all(&env.run).unwrap();
    chmod(&env.run, 0o757);
    let err = failed_with(&run(&env, &eif, &[]), "E319", 6);
    assert!(err.contains(&env.run.display().to_string()), "{err}");
    assert!(err.contains("writable by other users"), "{err}");
    chmod(&env.run, 0o775);
    let err = failed_with(&run(&env, &eif, &[]), "E319", 6);
    assert!(err.contains("writable by its group"), "{err}");
    // Nothing was created in it.
    assert!(!env.run.join("enclaves").exists());
    chmod(&env.run, 0o755);

    std::fs::create_dir_all(&env.pki).unwrap();
    chmod(&env.pki, 0o777);
    let err = failed_with(&run(&env, &eif, &[]), "E319", 6);
    assert!(err.contains(&env.pki.display().to_string()), "{err}");
    assert!(err.contains("chmod go-w"), "{err}");

    // Fixed: it runs.
    chmod(&env.pki, 0o700);
    let out = run(&env, &eif, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn a_vm_enclave_in_a_run_directory_closed_to_others_fails_at_once() {
    let env = Env::new("0-1", 1024);
    let eif = build_eif(env.dir.path(), "echo", &["echo-server", "5000"]);
    // As `mktemp -d` makes it.
    std::fs::create_dir_all(&env.run).unwrap();
    chmod(&env.run, 0o700);
    let started = Instant::now();
    let out = run(&env, &eif, &["--isolation", "vm"]);
    let err = failed_with(&out, "E702", 6);
    assert!(
        err.contains(&format!("{} (mode 0700)", env.run.display())),
        "{err}"
    );
    assert!(err.contains("chmod o+x"), "{err}");
    assert!(!err.contains("Permission denied"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
    nothing_left(&env);
}

fn state(env: &Env, id: &str) -> Value {
    let path = env.run.join("enclaves").join(id).join("state.json");
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn uid_of(pid: u64) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    let uids: Vec<u32> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap())
        .collect();
    assert!(uids.iter().all(|u| *u == uids[0]), "{line}");
    uids[0]
}

#[test]
fn enclaves_whose_cids_agree_modulo_the_uid_range_get_their_own_uids() {
    let env = Env::new("0-1", 1024);
    let eif = build_eif(env.dir.path(), "echo", &["echo-server", "5000"]);
    let mut uids = Vec::new();
    for (name, cid) in [("five", "5"), ("far", "1000000005")] {
        let out = env.run(&eif, &["--enclave-cid", cid, "--enclave-name", name]);
        let id = out["EnclaveID"].as_str().unwrap().to_owned();
        assert_eq!(out["EnclaveCID"].as_u64().unwrap().to_string(), cid);
        let rec = state(&env, &id);
        let uid = u32::try_from(rec["host_uid"].as_u64().unwrap()).unwrap();
        // The enclave's processes run as that uid on the host.
        let init = rec["init_pid"].as_u64().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while uid_of(init) != uid && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(uid_of(init), uid);
        uids.push(uid);
    }
    assert_eq!(uids[0], 1_000_000_005);
    assert_ne!(uids[0], uids[1], "two live enclaves share a host uid");
    // Both serve.
    for cid in [5u32, 1_000_000_005] {
        let mut s = env.connect_retry(cid, 5000);
        s.write_all(b"hi\n").unwrap();
        let mut line = String::new();
        BufReader::new(&mut s).read_line(&mut line).unwrap();
        assert_eq!(line, "hi\n");
    }
}

/// Starts run-enclave of `eif` with the monitor's after-measuring hook at `hook`; once the
/// monitor has measured the image, runs `meanwhile`, then lets the monitor go on.
fn run_with_hook(env: &Env, eif: &Path, name: &str, meanwhile: impl FnOnce()) -> Output {
    let hook = env.dir.path().join(format!("{name}.hook"));
    let child = env
        .cmd()
        .env(
            cloister_runtime::monitor::TEST_HOOK_AFTER_MEASURING_ENV,
            &hook,
        )
        .args(run_enclave_args(
            eif,
            "128",
            &["--debug-mode", "--enclave-name", name],
        ))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !hook.exists() {
        assert!(Instant::now() < deadline, "the monitor never measured");
        std::thread::sleep(Duration::from_millis(5));
    }
    meanwhile();
    std::fs::remove_file(&hook).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn the_image_that_boots_is_the_one_that_was_measured() {
    let env = Env::new("0-1", 1024);
    let measured = build_eif(env.dir.path(), "measured", &["echo-server", "5000"]);
    let pcrs = |p: &Path| {
        env.json(&["describe-eif", "--eif-path", p.to_str().unwrap()])["Measurements"].clone()
    };
    let measured_pcrs = pcrs(&measured);

    // Unchanged while the monitor waits after measuring: it boots, with the measured PCRs.
    let out = run_with_hook(&env, &measured, "steady", || {});
    assert!(out.status.success(), "{}", stderr(&out));
    let list = env.json(&["describe-enclaves"]);
    assert_eq!(list[0]["Measurements"]["PCR0"], measured_pcrs["PCR0"]);
    env.terminate_all();

    // Another valid image renamed over the path after the measurement: what boots under the
    // measured PCRs is never any of it (the start either boots the measured image or fails).
    let other_dir = env.dir.path().join("other");
    std::fs::create_dir(&other_dir).unwrap();
    let other = build_eif(&other_dir, "measured", &["echo-server", "5001"]);
    let other_pcrs = pcrs(&other);
    assert_ne!(other_pcrs["PCR0"], measured_pcrs["PCR0"]);
    let out = run_with_hook(&env, &measured, "swapped", || {
        std::fs::rename(&other, &measured).unwrap();
    });
    if out.status.success() {
        // Booted: then the measured image, all of it: its PCRs and its application.
        let list = env.json(&["describe-enclaves"]);
        assert_eq!(list[0]["Measurements"]["PCR0"], measured_pcrs["PCR0"]);
        let cid = u32::try_from(list[0]["EnclaveCID"].as_u64().unwrap()).unwrap();
        let mut s = env.connect_retry(cid, 5000);
        s.write_all(b"measured?\n").unwrap();
        let mut line = String::new();
        BufReader::new(&mut s).read_line(&mut line).unwrap();
        assert_eq!(line, "measured?\n");
        assert!(env.connect(cid, 5001).is_err(), "the replacement runs");
        env.terminate_all();
    } else {
        // Refused (what cloister does: the file it opened changed status), saying why, and
        // leaving nothing behind.
        let err = failed_with(&out, "E307", 3);
        assert!(err.contains("modified or replaced"), "{err}");
        nothing_left(&env);
    }

    // The image now at the path runs under its own PCRs.
    let out = run(&env, &measured, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let list = env.json(&["describe-enclaves"]);
    assert_eq!(list[0]["Measurements"]["PCR0"], other_pcrs["PCR0"]);
}
