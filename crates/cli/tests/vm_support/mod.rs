//! Shared set-up of the VM enclave tests and the isolation benchmark: QEMU and the guest kernel
//! (scripts/fetch-vm-kernel.sh), the kernel package (cached in target/vm-kernel-deb, or
//! CLOISTER_VM_KERNEL_DEB), one blobs directory made by `cloister blobs prepare`, and
//! VM-capable images made by `cloister build-enclave --blobs` around the static testapp.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard, OnceLock};

/// One VM test at a time: the host has two cores.
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

/// The JSON a successful `cloister` command printed; panics with its stderr if it failed.
pub fn json_ok(out: &std::process::Output, what: &str) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json output")
}

fn cloister() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cloister"))
}

/// Runs `cmd`, panics unless it succeeds, and returns its standard output.
pub fn run_ok(cmd: &mut Command, what: &str) -> Vec<u8> {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// What the VM tests share.
pub struct VmKit {
    _dir: tempfile::TempDir,
    pub blobs: PathBuf,
    pub testapp: PathBuf,
}

fn qemu_present() -> bool {
    Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The kernel package: CLOISTER_VM_KERNEL_DEB, or the cached download of the release
/// scripts/fetch-vm-kernel.sh unpacked.
fn kernel_deb(kernel_dir: &Path) -> PathBuf {
    if let Some(p) = std::env::var_os("CLOISTER_VM_KERNEL_DEB") {
        return PathBuf::from(p);
    }
    let release = std::fs::read_to_string(kernel_dir.join("version")).expect("kernel version");
    let pkg = format!("linux-image-{}-unsigned", release.trim());
    let cache = workspace_root().join("target/vm-kernel-deb");
    let find = || {
        std::fs::read_dir(&cache).ok().and_then(|d| {
            d.flatten().map(|e| e.path()).find(|p| {
                p.extension().is_some_and(|x| x == "deb")
                    && p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{pkg}_")))
            })
        })
    };
    if let Some(p) = find() {
        return p;
    }
    std::fs::create_dir_all(&cache).unwrap();
    run_ok(
        Command::new("apt-get")
            .args(["download", "-qq", &pkg])
            .current_dir(&cache),
        "apt-get download of the kernel package",
    );
    find().expect("the downloaded kernel package")
}

impl VmKit {
    /// The kit, or `None` (after saying why) when QEMU cannot be installed here.
    pub fn get() -> Option<&'static VmKit> {
        static KIT: OnceLock<Option<VmKit>> = OnceLock::new();
        KIT.get_or_init(|| {
            let root = workspace_root();
            let status = Command::new(root.join("scripts/fetch-vm-kernel.sh")).status();
            if !qemu_present() {
                eprintln!(
                    "SKIPPED: qemu-system-x86_64 is not installed and could not be installed \
                     ({status:?}); VM enclave tests need it"
                );
                return None;
            }
            assert!(
                status.is_ok_and(|s| s.success()),
                "scripts/fetch-vm-kernel.sh failed"
            );
            let kernel_dir = std::env::var_os("CLOISTER_VM_KERNEL_DIR")
                .map_or_else(|| root.join("target/vm-kernel"), PathBuf::from);
            let deb = kernel_deb(&kernel_dir);
            let init = cloister_init::build_static_init().expect("static init");
            let testapp = cloister_testapp::build_static_testapp().expect("static testapp");
            let dir = tempfile::tempdir().unwrap();
            let blobs = dir.path().join("blobs");
            run_ok(
                cloister()
                    .args(["blobs", "prepare", "--output"])
                    .arg(&blobs)
                    .arg("--kernel-deb")
                    .arg(&deb)
                    .arg("--init")
                    .arg(&init),
                "cloister blobs prepare",
            );
            Some(VmKit {
                _dir: dir,
                blobs,
                testapp,
            })
        })
        .as_ref()
    }

    /// A VM-capable image in `dir` running `/bin/testapp <argv>`.
    pub fn eif(&self, dir: &Path, name: &str, argv: &[&str]) -> PathBuf {
        self.build(dir, name, argv, &self.blobs)
    }

    /// Like [`VmKit::eif`] with `extra` appended to the kernel command line.
    pub fn eif_with_cmdline(&self, dir: &Path, name: &str, argv: &[&str], extra: &str) -> PathBuf {
        let blobs = dir.join(format!("blobs-{name}"));
        copy_dir(&self.blobs, &blobs);
        let cmdline = std::fs::read_to_string(blobs.join("cmdline")).unwrap();
        std::fs::write(
            blobs.join("cmdline"),
            format!("{} {extra}\n", cmdline.trim()),
        )
        .unwrap();
        self.build(dir, name, argv, &blobs)
    }

    fn build(&self, dir: &Path, name: &str, argv: &[&str], blobs: &Path) -> PathBuf {
        let rootfs = dir.join(format!("rootfs-{name}"));
        std::fs::create_dir_all(rootfs.join("bin")).unwrap();
        std::fs::copy(&self.testapp, rootfs.join("bin/testapp")).unwrap();
        let mut cmd = vec!["/bin/testapp"];
        cmd.extend_from_slice(argv);
        let out = dir.join(format!("{name}.eif"));
        run_ok(
            cloister()
                .args(["build-enclave", "--rootfs"])
                .arg(&rootfs)
                .args(["--rootfs-owner", "0:0", "--cmd"])
                .arg(serde_json::to_string(&cmd).unwrap())
                .arg("--blobs")
                .arg(blobs)
                .arg("--output-file")
                .arg(&out),
            "cloister build-enclave --blobs",
        );
        out
    }
}

/// Copies the tree `from` into `to` (created), files and directories only.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}
