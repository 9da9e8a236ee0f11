//! Programs written for AWS Nitro Enclaves, unchanged, in process enclaves: a static C program
//! using plain AF_VSOCK (client, listener with epoll and a blocking accept, vsock errnos,
//! `/dev/vsock`'s cid ioctl, `/dev/nsm`'s ioctl, hostile arguments, a flood, descriptors
//! swapped under pending calls), and a Rust program built against AWS's
//! `aws-nitro-enclaves-nsm-api` crate whose attestation document the parent verifies with
//! `cloister verify-attestation`. Also `cloister exec` and `cloister vsock` on the parent side.
//!
//! The programs live in `tests/apps/` and are built here: the C one with `gcc -static`, the
//! Rust one as a cargo project of its own (not a workspace member, so the workspace's
//! `Cargo.lock` does not carry AWS's crate) into `target/apps`.

mod enclave_support;

use enclave_support::Env;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .unwrap()
        .to_path_buf()
}

/// Builds `tests/apps/vsock-c/vsock_app.c` statically into `dir`.
fn build_c_app(dir: &Path) -> PathBuf {
    let src = workspace_root().join("tests/apps/vsock-c/vsock_app.c");
    let out = dir.join("vsock_app");
    let status = Command::new("gcc")
        .args(["-static", "-O2", "-Wall", "-pthread", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .expect("run gcc");
    assert!(status.success(), "gcc failed");
    out
}

/// Builds the NSM app (a cargo project of its own) statically; returns the binary.
fn build_nsm_app() -> PathBuf {
    let root = workspace_root();
    let target = root.join("target/apps");
    let manifest = root.join("tests/apps/nsm-rust/Cargo.toml");
    let out = Command::new(env!("CARGO"))
        .args(["build", "--release", "--locked", "--manifest-path"])
        .arg(&manifest)
        .args(["--target", "x86_64-unknown-linux-gnu"])
        .env("CARGO_TARGET_DIR", &target)
        .env("CARGO_ENCODED_RUSTFLAGS", "-Ctarget-feature=+crt-static")
        .env_remove("RUSTFLAGS")
        .output()
        .expect("run cargo");
    assert!(
        out.status.success(),
        "building the NSM app failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    target.join("x86_64-unknown-linux-gnu/release/nsm-attest")
}

/// An EIF with Cloister's static init whose command is `/app <args>` (the binary `app`).
fn build_app_eif(dir: &Path, name: &str, app: &Path, args: &[&str]) -> PathBuf {
    enclave_support::build_binary_eif(dir, name, app, "app", args)
}

/// Accepts one connection on a fabric listener, with a deadline.
fn accept(l: &cloister_vsock::VsockListener) -> cloister_vsock::VsockStream {
    l.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match l.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
                return s;
            }
            Err(e) if e.is_would_block() && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
}

/// Connects to the enclave's port, sends one line and returns the answer line.
fn echo(env: &Env, cid: u32, port: u32, text: &str) -> String {
    let mut s = env.connect_retry(cid, port);
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.write_all(format!("{text}\n").as_bytes()).unwrap();
    let mut answer = String::new();
    BufReader::new(s).read_line(&mut answer).unwrap();
    answer
}

#[test]
fn unmodified_c_program_uses_af_vsock_and_dev_nsm() {
    let env = Env::new("0-1", 1024);
    let app = build_c_app(env.dir.path());
    let report = env.listen(7600);
    let eif = build_app_eif(env.dir.path(), "capp", &app, &["7600", "7610"]);
    let out = env.run(&eif, &["--enclave-name", "capp", "--debug-mode"]);
    let cid = u32::try_from(out["EnclaveCID"].as_u64().unwrap()).unwrap();
    let id = out["EnclaveID"].as_str().unwrap().to_owned();
    let mut lines = BufReader::new(accept(&report)).lines();
    let mut text = String::new();
    let mut next = || {
        let line = lines
            .next()
            .unwrap_or_else(|| panic!("report ended early:\n{}", env.console(&id)))
            .unwrap();
        line
    };
    loop {
        let line = next();
        if let Some(c) = line.strip_prefix("ready ") {
            assert_eq!(c, cid.to_string());
            break;
        }
        text.push_str(&line);
        text.push('\n');
    }
    assert_eq!(echo(&env, cid, 7610, "ping"), "echo:ping\n");
    assert_eq!(echo(&env, cid, 7611, "pong"), "echo:pong\n");
    loop {
        let line = next();
        if line == "done" {
            break;
        }
        text.push_str(&line);
        text.push('\n');
    }
    eprintln!("{text}");
    for check in [
        "getpeername",
        "local_cid",
        "getsockname",
        "cloexec",
        "dgram",
        "refused",
        "other_cid",
        "bad_addr",
        "bad_name",
        "bad_len",
        "bad_fd",
        "nsm_bad_arg",
        "nsm_too_big",
        "nsm_bad_request",
        "nsm_describe",
        "flood",
        "after_race",
        "listen",
        "addrinuse",
        "accept_eagain",
        "listen2",
        "epoll",
        "accept4",
        "served",
        "accept_blocking",
        "served2",
    ] {
        let line = text
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(check))
            .unwrap_or_else(|| panic!("no result for {check}:\n{text}"));
        assert!(line.starts_with("ok "), "{line}");
    }
}

#[test]
fn aws_nsm_api_program_gets_a_verifiable_attestation() {
    let env = Env::new("0-1", 1024);
    let app = build_nsm_app();
    let report = env.listen(7620);
    let nonce = "00112233445566778899aabbccddeeff";
    let eif = build_app_eif(env.dir.path(), "nsmapp", &app, &["7620", nonce]);
    let out = env.run(&eif, &["--enclave-name", "nsmapp", "--debug-mode"]);
    let id = out["EnclaveID"].as_str().unwrap().to_owned();
    let mut doc = Vec::new();
    accept(&report).read_to_end(&mut doc).unwrap();
    assert!(
        doc.len() > 100,
        "no document ({} bytes): {}",
        doc.len(),
        env.console(&id)
    );
    let path = env.dir.path().join("doc.cbor");
    std::fs::write(&path, &doc).unwrap();
    let root = env.pki.join("root-ca.pem");
    let out = env.cli(&[
        "verify-attestation",
        "--document",
        path.to_str().unwrap(),
        "--root",
        root.to_str().unwrap(),
        "--nonce",
        nonce,
    ]);
    assert!(
        out.status.success(),
        "verify-attestation failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let verified: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(verified["Isolation"], "process", "{verified}");
    assert_eq!(verified["Nonce"], nonce, "{verified}");
    assert_eq!(
        verified["UserData"],
        hex::encode(b"unmodified nitro app"),
        "{verified}"
    );
}

/// Builds `tests/apps/vsock-c/vsock_parent.c` into `dir`.
fn build_parent_app(dir: &Path) -> PathBuf {
    let src = workspace_root().join("tests/apps/vsock-c/vsock_parent.c");
    let out = dir.join("vsock_parent");
    let status = Command::new("gcc")
        .args(["-O2", "-Wall", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .expect("run gcc");
    assert!(status.success(), "gcc failed");
    out
}

#[test]
fn parent_programs_reach_enclaves_under_cloister_exec() {
    let env = Env::new("0-1", 1024);
    let echo_eif = enclave_support::build_eif(env.dir.path(), "echo", &["echo-server", "5000"]);
    let echo = env.run(&echo_eif, &["--enclave-name", "echo"]);
    let cid = echo["EnclaveCID"].as_u64().unwrap().to_string();
    // Wait for the enclave's listener.
    drop(env.connect_retry(cid.parse().unwrap(), 5000));

    // `cloister vsock connect`: stdin to the enclave's echo server and back.
    let mut vc = env
        .cmd()
        .args(["vsock", "connect", "--cid", &cid, "--port", "5000"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    vc.stdin.take().unwrap().write_all(b"over stdio\n").unwrap();
    let out = vc.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout, b"over stdio\n");

    // An unmodified parent program: connects to the enclave, then listens as cid 3.
    let parent = build_parent_app(env.dir.path());
    let mut exec = env
        .cmd()
        .arg("exec")
        .arg("--")
        .arg(&parent)
        .args([cid.as_str(), "5000", "7801"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(exec.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "reply hello\n");
    line.clear();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "listening\n");
    let caller_eif = enclave_support::build_eif(
        env.dir.path(),
        "caller",
        &["connect-parent", "7801", "ping"],
    );
    let caller = env.run(&caller_eif, &["--enclave-name", "caller", "--debug-mode"]);
    let caller_cid = caller["EnclaveCID"].as_u64().unwrap();
    let caller_id = caller["EnclaveID"].as_str().unwrap().to_owned();
    line.clear();
    out.read_line(&mut line).unwrap();
    assert!(line.starts_with(&format!("peer {caller_cid} ")), "{line}");
    assert!(exec.wait().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(30);
    while !env
        .console(&caller_id)
        .contains("parent answered: echo:ping")
    {
        assert!(
            Instant::now() < deadline,
            "console: {}",
            env.console(&caller_id)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The pool has two CPUs: the caller makes room for the next one.
    env.json(&["terminate-enclave", "--enclave-id", &caller_id]);
    // `cloister vsock listen`: an enclave's connection to stdin/stdout.
    let mut vl = env
        .cmd()
        .args(["vsock", "listen", "--port", "7802"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    vl.stdin.take().unwrap().write_all(b"pong\n").unwrap();
    let fabric_listener = env.fabric().join("3_7802.sock");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !fabric_listener.exists() {
        assert!(Instant::now() < deadline, "vsock listen did not bind");
        std::thread::sleep(Duration::from_millis(20));
    }
    let caller2_eif = enclave_support::build_eif(
        env.dir.path(),
        "caller2",
        &["connect-parent", "7802", "ping2"],
    );
    let caller2 = env.run(&caller2_eif, &["--enclave-name", "caller2", "--debug-mode"]);
    let caller2_id = caller2["EnclaveID"].as_str().unwrap().to_owned();
    let mut vl_out = BufReader::new(vl.stdout.take().unwrap());
    line.clear();
    vl_out.read_line(&mut line).unwrap();
    assert_eq!(line, "ping2\n");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !env.console(&caller2_id).contains("parent answered: pong") {
        assert!(
            Instant::now() < deadline,
            "console: {}",
            env.console(&caller2_id)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = vl.kill();
    let _ = vl.wait();
}
