//! Start failures leave nothing behind: a monitor whose vsock broker cannot start (its CID's
//! fabric socket is held by a live listener) reports E315 and removes the enclave's cgroup, its
//! directory and its allocation. A separate test binary, so no other enclave test creates
//! cgroups while this one compares the cgroup tree before and after.

mod enclave_support;

use enclave_support::{build_eif, Env};
use std::collections::BTreeSet;
use std::path::PathBuf;

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
    let env = Env::new("0-1", 1024);
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
        "--cpu-count",
        "1",
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
    let ok = env.run(&eif, &["--enclave-cid", "9"]);
    assert_eq!(ok["EnclaveCID"], 9);
    env.terminate_all();
}
