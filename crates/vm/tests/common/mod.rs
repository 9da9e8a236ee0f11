//! Shared set-up of the VM integration tests and benchmarks: the cached guest kernel, the
//! static init and testapp, and the two ramdisks (bootstrap + customer) concatenated into one
//! initrd.

#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use cloister_cpio::CpioWriter;

/// One VM at a time: the tests share two cores.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .unwrap()
        .to_path_buf()
}

/// The cached guest kernel directory (fetched by scripts/fetch-vm-kernel.sh when missing).
pub fn kernel_dir() -> PathBuf {
    let dir = std::env::var_os("CLOISTER_VM_KERNEL_DIR")
        .map_or_else(|| workspace_root().join("target/vm-kernel"), PathBuf::from);
    if !dir.join("modules.order").is_file() {
        let status =
            std::process::Command::new(workspace_root().join("scripts/fetch-vm-kernel.sh"))
                .status()
                .expect("running scripts/fetch-vm-kernel.sh");
        assert!(status.success(), "scripts/fetch-vm-kernel.sh failed");
    }
    dir
}

pub struct Binaries {
    pub init: PathBuf,
    pub testapp: PathBuf,
}

pub fn binaries() -> &'static Binaries {
    static BINS: OnceLock<Binaries> = OnceLock::new();
    BINS.get_or_init(|| Binaries {
        init: cloister_init::build_static_init().expect("static init"),
        testapp: cloister_testapp::build_static_testapp().expect("static testapp"),
    })
}

fn add_file(w: &mut CpioWriter<&mut Vec<u8>>, name: &str, mode: u32, bytes: &[u8]) {
    w.file(name, mode, 0, 0, bytes.len() as u64, bytes).unwrap();
}

/// The bootstrap ramdisk: init, the kernel modules and /modules.list.
pub fn bootstrap_ramdisk() -> Vec<u8> {
    let kdir = kernel_dir();
    let order = fs::read_to_string(kdir.join("modules.order")).unwrap();
    let mut out = Vec::new();
    {
        let mut w = CpioWriter::new(&mut out);
        add_file(&mut w, "init", 0o755, &fs::read(&binaries().init).unwrap());
        w.dir("lib", 0o755, 0, 0).unwrap();
        w.dir("lib/modules", 0o755, 0, 0).unwrap();
        let mut list = String::new();
        for m in order.lines().filter(|l| !l.is_empty()) {
            let bytes = fs::read(kdir.join("modules").join(m)).unwrap();
            add_file(&mut w, &format!("lib/modules/{m}"), 0o644, &bytes);
            list.push_str(&format!("lib/modules/{m}\n"));
        }
        add_file(&mut w, "modules.list", 0o644, list.as_bytes());
        w.finish().unwrap();
    }
    out
}

/// The customer ramdisk: rootfs/bin/testapp, cmd, env.
pub fn customer_ramdisk(argv: &[&str]) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut w = CpioWriter::new(&mut out);
        w.dir("rootfs", 0o755, 0, 0).unwrap();
        w.dir("rootfs/bin", 0o755, 0, 0).unwrap();
        add_file(
            &mut w,
            "rootfs/bin/testapp",
            0o755,
            &fs::read(&binaries().testapp).unwrap(),
        );
        let mut cmd = String::from("/bin/testapp\n");
        for a in argv {
            cmd.push_str(a);
            cmd.push('\n');
        }
        add_file(&mut w, "cmd", 0o644, cmd.as_bytes());
        add_file(&mut w, "env", 0o644, b"PATH=/bin\n");
        w.finish().unwrap();
    }
    out
}

/// A world-readable scratch directory with `initrd` for `argv`.
pub struct Image {
    pub dir: tempfile::TempDir,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
}

pub fn image(argv: &[&str]) -> Image {
    let dir = tempfile::tempdir().unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let boot = dir.path().join("bootstrap.cpio");
    let customer = dir.path().join("customer.cpio");
    fs::write(&boot, bootstrap_ramdisk()).unwrap();
    fs::write(&customer, customer_ramdisk(argv)).unwrap();
    let path = dir.path().join("initrd.cpio");
    cloister_vm::concat_ramdisks(&[boot, customer], &path).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    Image {
        kernel: kernel_dir().join("vmlinuz"),
        initrd: path,
        dir,
    }
}

/// A fake NSM for tests: answers `nsm:` + the request.
pub struct FakeNsm;

impl cloister_vsock::NsmService for FakeNsm {
    fn handle(&self, request: &[u8]) -> Vec<u8> {
        let mut r = b"nsm:".to_vec();
        r.extend_from_slice(request);
        r
    }
}

pub fn fake_nsm() -> Arc<dyn cloister_vsock::NsmService> {
    Arc::new(FakeNsm)
}

/// The unprivileged user QEMU runs as in tests.
pub const VM_USER: (u32, u32) = (65534, 65534);
