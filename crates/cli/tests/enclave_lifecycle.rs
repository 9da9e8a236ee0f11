//! End-to-end tests of the enclave lifecycle with real process-isolated enclaves: boot,
//! vsock both ways, describe from another call, terminate, CID and allocator rules.

mod enclave_support;

use enclave_support::{accept_read, build_eif, Env};
use std::io::{BufRead, BufReader, Read, Write};

#[test]
fn enclave_boots_talks_both_ways_and_terminates() {
    let env = Env::new("0-1", 1024);
    let eif = build_eif(env.dir.path(), "echo", &["echo-server", "5000"]);
    let out = env.run(&eif, &["--debug-mode", "--enclave-name", "echo"]);
    let id = out["EnclaveID"].as_str().unwrap().to_owned();
    let cid = out["EnclaveCID"].as_u64().unwrap();
    assert_eq!(cid, 4);
    assert_eq!(out["EnclaveName"], "echo");
    assert_eq!(out["NumberOfCPUs"], 1);
    assert_eq!(out["MemoryMiB"], 128);
    assert!(id.contains("-enc"), "{id}");

    // Host -> enclave.
    let mut s = env.connect_retry(u32::try_from(cid).unwrap(), 5000);
    s.write_all(b"hello enclave\n").unwrap();
    let mut line = String::new();
    BufReader::new(&mut s).read_line(&mut line).unwrap();
    assert_eq!(line, "hello enclave\n");

    // Another call sees it.
    let list = env.json(&["describe-enclaves", "--metadata"]);
    let e = &list.as_array().unwrap()[0];
    assert_eq!(e["EnclaveID"], id.as_str());
    assert_eq!(e["State"], "RUNNING");
    assert_eq!(e["Flags"], "DEBUG_MODE");
    assert_eq!(e["Isolation"], "process");
    assert_eq!(e["Measurements"]["HashAlgorithm"], "Sha384 { ... }");
    assert_eq!(e["Measurements"]["PCR0"].as_str().unwrap().len(), 96);

    // Console of a debug enclave.
    let console = env.cli(&["console", "--enclave-id", &id, "--disconnect-timeout", "1"]);
    assert!(
        console.status.success(),
        "{}",
        String::from_utf8_lossy(&console.stderr)
    );
    assert!(String::from_utf8_lossy(&console.stdout).contains("echo-server listening on 5000"));

    let t = env.json(&["terminate-enclave", "--enclave-id", &id]);
    assert_eq!(t["Terminated"], true);
    assert_eq!(t["EnclaveID"], id.as_str());
    assert_eq!(env.json(&["describe-enclaves"]), serde_json::json!([]));
    assert!(env.connect(u32::try_from(cid).unwrap(), 5000).is_err());
    assert!(!env.run.join("enclaves").join(&id).exists());
}

#[test]
fn enclave_connects_to_parent() {
    let env = Env::new("0-1", 1024);
    let listener = env.listen(7001);
    let eif = build_eif(
        env.dir.path(),
        "client",
        &["connect-parent", "7001", "ping-from-enclave"],
    );
    let out = env.run(&eif, &[]);
    let cid = u32::try_from(out["EnclaveCID"].as_u64().unwrap()).unwrap();
    listener.set_nonblocking(false).unwrap();
    let (mut s, peer) = listener.accept().unwrap();
    assert_eq!(peer.cid, cid);
    let mut line = String::new();
    BufReader::new(&mut s).read_line(&mut line).unwrap();
    assert_eq!(line, "ping-from-enclave\n");
    s.write_all(b"pong\n").unwrap();
    // A non-debug enclave's console is refused.
    let id = out["EnclaveID"].as_str().unwrap();
    let c = env.cli(&["console", "--enclave-id", id]);
    assert_eq!(
        c.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&c.stderr)
    );
    assert!(String::from_utf8_lossy(&c.stderr).contains("E313"));
    let _ = accept_read; // shared helper used by other tests
}

#[test]
#[allow(
    clippy::too_many_lines,
    reason = "one end-to-end scenario, read top to bottom; its steps share what it started"
)]
fn cid_and_allocator_rules() {
    let env = Env::new("0-1", 256);
    let eif = build_eif(env.dir.path(), "sleep", &["sleep"]);
    let p = eif.to_str().unwrap();
    for bad in ["1", "2", "3", "4294967295"] {
        let o = env.cli(&[
            "run-enclave",
            "--eif-path",
            p,
            "--cpu-count",
            "1",
            "--memory",
            "128",
            "--enclave-cid",
            bad,
        ]);
        assert_eq!(o.status.code(), Some(2), "cid {bad}");
        assert!(String::from_utf8_lossy(&o.stderr).contains("E302"));
    }
    let a = env.run(&eif, &["--enclave-cid", "42", "--enclave-name", "a"]);
    assert_eq!(a["EnclaveCID"], 42);
    // Same CID again.
    let o = env.cli(&[
        "run-enclave",
        "--eif-path",
        p,
        "--cpu-count",
        "1",
        "--memory",
        "64",
        "--enclave-cid",
        "42",
        "--enclave-name",
        "b",
    ]);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("E303"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(o.status.code(), Some(5));
    // Memory: 128 of 256 used; 192 does not fit.
    let o = env.cli(&[
        "run-enclave",
        "--eif-path",
        p,
        "--cpu-count",
        "1",
        "--memory",
        "192",
        "--enclave-name",
        "c",
    ]);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("E305"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // CPUs: the one left is taken by b; a third enclave gets none.
    let b = env.run(&eif, &["--enclave-name", "b"]);
    assert_eq!(b["EnclaveCID"], 4);
    assert_ne!(a["CPUIDs"], b["CPUIDs"]);
    let o = env.cli(&[
        "run-enclave",
        "--eif-path",
        p,
        "--cpu-count",
        "1",
        "--memory",
        "64",
        "--enclave-name",
        "d",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("E304") || err.contains("E305"), "{err}");
    assert_eq!(o.status.code(), Some(5));
    // Too little memory for the rules.
    let o = env.cli(&[
        "run-enclave",
        "--eif-path",
        p,
        "--cpu-count",
        "1",
        "--memory",
        "32",
    ]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("E306"));
    // vm isolation needs QEMU (E701 without it) and a bootable kernel, which this image lacks.
    let o = env.cli(&[
        "run-enclave",
        "--eif-path",
        p,
        "--cpu-count",
        "1",
        "--memory",
        "64",
        "--isolation",
        "vm",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("E701") || err.contains("E307"), "{err}");
    // Terminate returns the resources.
    let all = env.json(&["terminate-enclave", "--all"]);
    assert_eq!(all.as_array().unwrap().len(), 2);
    let c = env.json(&[
        "run-enclave",
        "--eif-path",
        p,
        "--cpu-count",
        "1",
        "--memory",
        "192",
        "--enclave-name",
        "c",
    ]);
    assert_eq!(c["MemoryMiB"], 192);
}

#[test]
fn boot_timeout_tears_everything_down() {
    let env = Env::new("0-1", 1024);
    // An image whose init is not an init: it never sends the heartbeat.
    let (_, app) = enclave_support::static_bins();
    let bytes = std::fs::read(app).unwrap();
    let mut boot = cloister_cpio::CpioWriter::new(Vec::new());
    boot.file("init", 0o755, 0, 0, bytes.len() as u64, &bytes[..])
        .unwrap();
    let path = env.dir.path().join("noinit.eif");
    cloister_eif::EifBuilder::new()
        .kernel_bytes(b"k".to_vec())
        .cmdline("x")
        .ramdisk_bytes(boot.finish().unwrap())
        .write_to_path(&path)
        .unwrap();
    let o = env
        .cmd()
        .env("CLOISTER_BOOT_TIMEOUT_MS", "1500")
        .args([
            "run-enclave",
            "--eif-path",
            path.to_str().unwrap(),
            "--cpu-count",
            "1",
            "--memory",
            "64",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    // testapp with no arguments prints "unknown subcommand" and exits: either the enclave ends
    // before its heartbeat (E310) or, if slower, the timeout fires (E309); both quote the console.
    assert!(err.contains("E310") || err.contains("E309"), "{err}");
    assert!(err.contains("unknown subcommand"), "{err}");
    assert_eq!(env.json(&["describe-enclaves"]), serde_json::json!([]));
    let left: Vec<_> = std::fs::read_dir(env.run.join("enclaves"))
        .map(|d| d.flatten().collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
    let mut s = String::new();
    let _ = std::fs::File::open(env.run.join("allocations.json"))
        .and_then(|mut f| f.read_to_string(&mut s));
    assert!(!s.contains("-enc"), "{s}");
}
