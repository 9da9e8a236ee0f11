//! The unpacked image root cache as enclaves use it: concurrent first boots of one image share
//! one read-only tree, writes from an enclave (to image files and new files alike) land in its
//! own overlay and never reach the cache, and a rewritten image file gets a fresh tree while the
//! old one is dropped.

mod enclave_support;

use cloister_cpio::CpioWriter;
use enclave_support::{static_bins, Env};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The cache directory under a run directory (see `cloister_runtime::imagecache`).
const ROOTS_DIR: &str = "image-roots";

/// An image whose command overwrites `/data` (a file of the image) and whose rootfs holds
/// `data` with `content`.
fn data_image(dir: &Path, content: &[u8]) -> PathBuf {
    let (init, app) = static_bins();
    let init = std::fs::read(init).unwrap();
    let app = std::fs::read(app).unwrap();
    let mut boot = CpioWriter::new(Vec::new());
    boot.file("init", 0o755, 0, 0, init.len() as u64, &init[..])
        .unwrap();
    let cmd = "/testapp\nwrite-file\n/data\n";
    let mut user = CpioWriter::new(Vec::new());
    user.file("cmd", 0o644, 0, 0, cmd.len() as u64, cmd.as_bytes())
        .unwrap();
    user.file("env", 0o644, 0, 0, 0, &b""[..]).unwrap();
    user.dir("rootfs", 0o755, 0, 0).unwrap();
    user.file("rootfs/testapp", 0o755, 0, 0, app.len() as u64, &app[..])
        .unwrap();
    user.file("rootfs/data", 0o644, 0, 0, content.len() as u64, content)
        .unwrap();
    let path = dir.join("data.eif");
    cloister_eif::EifBuilder::new()
        .kernel_bytes(b"not a kernel".to_vec())
        .cmdline("console=ttyS0")
        .ramdisk_bytes(boot.finish().unwrap())
        .ramdisk_bytes(user.finish().unwrap())
        .write_to_path(&path)
        .unwrap();
    path
}

fn entries(env: &Env) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(env.run.join(ROOTS_DIR))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

fn wait_console(env: &Env, id: &str, text: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !env.console(id).contains(text) {
        assert!(Instant::now() < deadline, "{}", env.console(id));
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn enclaves_share_a_read_only_image_root() {
    let env = Env::new("0-1", 1024);
    let eif = data_image(env.dir.path(), b"original");

    // Two first boots of the same image at once: both start, one tree is cached.
    let start = |name: &str| {
        env.cmd()
            .args(["run-enclave", "--eif-path", eif.to_str().unwrap()])
            .args(["--cpu-count", "1", "--memory", "128", "--debug-mode"])
            .args(["--enclave-name", name])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (start("a"), start("b"));
    let mut ids = Vec::new();
    for child in [a, b] {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let rec: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        ids.push(rec["EnclaveID"].as_str().unwrap().to_owned());
    }
    let cached = entries(&env);
    assert_eq!(cached.len(), 1, "{cached:?}");
    let tree = cached[0].join("tree");

    // The cache is root-only; its files belong to root on the host.
    let roots = std::fs::metadata(env.run.join(ROOTS_DIR)).unwrap();
    assert_eq!(roots.mode() & 0o777, 0o700);
    assert_eq!(roots.uid(), 0);
    let data = std::fs::metadata(tree.join("rootfs/data")).unwrap();
    assert_eq!((data.uid(), data.gid()), (0, 0));

    // Each enclave overwrote /data (an image file, owned by its root): the cache is unchanged.
    for id in &ids {
        wait_console(&env, id, "wrote /data");
    }
    assert_eq!(
        std::fs::read(tree.join("rootfs/data")).unwrap(),
        b"original"
    );
    let names: Vec<_> = std::fs::read_dir(tree.join("rootfs"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    env.terminate_all();
    assert_eq!(entries(&env), cached, "the tree is kept for the next boot");

    // A boot after termination sees the image's file again, not the earlier write.
    let rec = env.run(&eif, &["--debug-mode", "--enclave-name", "again"]);
    let id = rec["EnclaveID"].as_str().unwrap();
    wait_console(&env, id, "wrote /data");
    assert!(
        !env.console(id).contains("write failed"),
        "{}",
        env.console(id)
    );
    assert_eq!(
        std::fs::read(tree.join("rootfs/data")).unwrap(),
        b"original"
    );
    env.terminate_all();

    // The image file is rewritten in place: a new tree with the new bytes, the old one gone.
    std::thread::sleep(Duration::from_millis(20));
    let other = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(data_image(other.path(), b"replaced")).unwrap();
    std::fs::write(&eif, bytes).unwrap();
    env.run(&eif, &["--enclave-name", "changed"]);
    let now = entries(&env);
    assert_eq!(now.len(), 1, "{now:?}");
    assert_ne!(now, cached);
    assert_eq!(
        std::fs::read(now[0].join("tree/rootfs/data")).unwrap(),
        b"replaced"
    );
    env.terminate_all();
}

#[test]
fn without_a_usable_cache_the_ramdisks_are_copied() {
    let env = Env::new("0-1", 1024);
    let eif = data_image(env.dir.path(), b"original");
    // A cache directory others could write to is refused; the enclave still boots, from a copy.
    let roots = env.run.join(ROOTS_DIR);
    std::fs::create_dir_all(&roots).unwrap();
    std::fs::set_permissions(&roots, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let rec = env.run(&eif, &["--debug-mode", "--enclave-name", "copied"]);
    let id = rec["EnclaveID"].as_str().unwrap();
    wait_console(&env, id, "wrote /data");
    let log =
        std::fs::read_to_string(env.run.join("enclaves").join(id).join("monitor.log")).unwrap();
    assert!(log.contains("copying the ramdisks"), "{log}");
    assert!(entries(&env).is_empty());
    env.terminate_all();
}
