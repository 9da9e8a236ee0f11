//! Shared helpers for the enclave tests: a static init + testapp image, an isolated run
//! directory / PKI / allocator pool per test, and the real `cloister` binary.
#![allow(dead_code)]

use cloister_cpio::CpioWriter;
use cloister_vsock::{VsockAddr, VsockListener, VsockStream};
use serde_json::Value;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// Builds both static binaries once per test process.
pub fn static_bins() -> &'static (PathBuf, PathBuf) {
    static BINS: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    BINS.get_or_init(|| {
        let init = cloister_init::build_static_init().expect("static init");
        let app = cloister_testapp::build_static_testapp().expect("static testapp");
        (init, app)
    })
}

/// Writes an EIF whose command is `/testapp <args>`.
pub fn build_eif(dir: &Path, name: &str, args: &[&str]) -> PathBuf {
    build_binary_eif(dir, name, &static_bins().1, "testapp", args)
}

/// Writes an EIF with Cloister's static init whose root file system holds `binary` as
/// `/<in_root>` (and `/tmp`), and whose command is `/<in_root> <args>`.
pub fn build_binary_eif(
    dir: &Path,
    name: &str,
    binary: &Path,
    in_root: &str,
    args: &[&str],
) -> PathBuf {
    let read = |p: &Path| std::fs::read(p).expect("read binary");
    let init_bytes = read(&static_bins().0);
    let app_bytes = read(binary);
    let mut boot = CpioWriter::new(Vec::new());
    boot.file(
        "init",
        0o755,
        0,
        0,
        init_bytes.len() as u64,
        &init_bytes[..],
    )
    .unwrap();
    let boot = boot.finish().unwrap();
    let program = format!("/{in_root}");
    let cmd = std::iter::once(program.as_str())
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join("\n")
        + "\n";
    let env = "RUST_BACKTRACE=1\n";
    let mut user = CpioWriter::new(Vec::new());
    user.file("cmd", 0o644, 0, 0, cmd.len() as u64, cmd.as_bytes())
        .unwrap();
    user.file("env", 0o644, 0, 0, env.len() as u64, env.as_bytes())
        .unwrap();
    user.dir("rootfs", 0o755, 0, 0).unwrap();
    user.dir("rootfs/tmp", 0o1777, 0, 0).unwrap();
    user.file(
        format!("rootfs/{in_root}"),
        0o755,
        0,
        0,
        app_bytes.len() as u64,
        &app_bytes[..],
    )
    .unwrap();
    let user = user.finish().unwrap();
    let path = dir.join(format!("{name}.eif"));
    cloister_eif::EifBuilder::new()
        .kernel_bytes(b"not a kernel: process isolation does not boot one".to_vec())
        .cmdline("console=ttyS0")
        .ramdisk_bytes(boot)
        .ramdisk_bytes(user)
        .write_to_path(&path)
        .expect("write eif");
    path
}

/// An isolated environment: run dir, PKI, allocator pool.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub run: PathBuf,
    pub pki: PathBuf,
    pub alloc: PathBuf,
}

impl Env {
    /// `pool_cpus` is the pool on small hosts (two CPUs or fewer, where CPU 0's core may be
    /// lent); on larger hosts the pool is the host default (whole cores but CPU 0's), which
    /// `cpu_pool` must respect there.
    pub fn new(pool_cpus: &str, pool_mib: u64) -> Self {
        let host = cloister_runtime::allocator::Pool::host_default();
        let pool_cpus = if host.cpus.len() > cloister_runtime::allocator::SMALL_HOST_CPUS {
            cloister_runtime::allocator::format_cpu_list(&host.cpus)
        } else {
            pool_cpus.to_owned()
        };
        let dir = tempfile::Builder::new()
            .prefix("cloister-enc")
            .tempdir()
            .unwrap();
        // Searchable by others (not listable): a VM enclave's QEMU runs as the enclave's own
        // uid and must reach the run directory inside it.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o711),
        )
        .unwrap();
        let run = dir.path().join("run");
        let pki = dir.path().join("pki");
        let alloc = dir.path().join("allocator.yaml");
        std::fs::write(
            &alloc,
            format!("memory_mib: {pool_mib}\ncpu_pool: \"{pool_cpus}\"\n"),
        )
        .unwrap();
        Env {
            dir,
            run,
            pki,
            alloc,
        }
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_cloister"));
        c.env("CLOISTER_RUN_DIR", &self.run)
            .env("CLOISTER_PKI_DIR", &self.pki)
            .env("CLOISTER_ALLOCATOR_CONFIG", &self.alloc)
            .env("CLOISTER_BOOT_TIMEOUT_MS", "20000");
        c
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().expect("run cloister")
    }

    pub fn json(&self, args: &[&str]) -> Value {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "cloister {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("json output")
    }

    /// Runs an enclave (debug mode) and returns run-enclave's JSON.
    pub fn run(&self, eif: &Path, extra: &[&str]) -> Value {
        self.json(&run_enclave_args(eif, "128", extra))
    }

    pub fn fabric(&self) -> PathBuf {
        self.run.join("vsock")
    }

    pub fn listen(&self, port: u32) -> VsockListener {
        VsockListener::bind_fabric(&self.fabric(), port).expect("bind fabric listener")
    }

    pub fn connect(&self, cid: u32, port: u32) -> Result<VsockStream, cloister_vsock::VsockError> {
        VsockStream::connect_fabric(&self.fabric(), VsockAddr::new(cid, port))
    }

    /// Connects, retrying while the enclave's listener comes up.
    pub fn connect_retry(&self, cid: u32, port: u32) -> VsockStream {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match self.connect(cid, port) {
                Ok(s) => return s,
                Err(e) if std::time::Instant::now() > deadline => {
                    panic!("connect {cid}:{port}: {e}")
                }
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
            }
        }
    }

    pub fn terminate_all(&self) {
        let _ = self.cli(&["terminate-enclave", "--all"]);
    }

    pub fn console(&self, id: &str) -> String {
        std::fs::read_to_string(self.run.join("enclaves").join(id).join("console.log"))
            .unwrap_or_default()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        self.terminate_all();
    }
}

/// Accepts one connection with a deadline and reads it to EOF (or `max` bytes).
pub fn accept_read(l: &VsockListener, max: usize) -> (VsockAddr, String) {
    l.set_nonblocking(true).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match l.accept() {
            Ok((s, peer)) => {
                s.set_nonblocking(false).unwrap();
                s.set_read_timeout(Some(std::time::Duration::from_secs(60)))
                    .unwrap();
                let mut out = Vec::new();
                let mut s = s;
                let _ = (&mut s).take(max as u64).read_to_end(&mut out);
                return (peer, String::from_utf8_lossy(&out).into_owned());
            }
            Err(e) if e.is_would_block() && std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10))
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
}

/// `run-enclave` of `eif` on one CPU with `memory` MiB, then `extra`.
pub fn run_enclave_args<'a>(eif: &'a Path, memory: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "run-enclave",
        "--eif-path",
        eif.to_str().unwrap(),
        "--cpu-count",
        "1",
        "--memory",
        memory,
    ];
    args.extend_from_slice(extra);
    args
}
