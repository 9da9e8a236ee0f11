//! Building the static binaries that go into enclave images (init, and the test and sample
//! applications), for tests and tools; for init:
//!
//! ```text
//! CARGO_TARGET_DIR=<workspace>/target/static \
//!   cargo rustc -p cloister-init --release --bin cloister-init -- -C target-feature=+crt-static -C strip=debuginfo
//! ```
//!
//! (glibc, statically linked: `file` reports "static-pie linked", `ldd` "statically linked").

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// Errors building the static init.
#[derive(Debug, thiserror::Error)]
pub enum StaticBuildError {
    /// cargo could not be started.
    #[error("running cargo")]
    Spawn(#[source] io::Error),
    /// cargo failed.
    #[error("cargo rustc failed with {status}: {stderr}")]
    Failed {
        /// Its exit status.
        status: std::process::ExitStatus,
        /// The end of its error output.
        stderr: String,
    },
    /// cargo succeeded but the binary is missing.
    #[error("built binary missing at {0}")]
    Missing(PathBuf),
}

/// The workspace root (two levels above this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// Where [`build_static_binary`] puts binary `bin`.
pub fn static_binary_path(bin: &str) -> PathBuf {
    workspace_root().join("target/static/release").join(bin)
}

/// Where [`build_static_init`] puts the binary.
pub fn static_init_path() -> PathBuf {
    static_binary_path("cloister-init")
}

static BUILD_LOCK: Mutex<()> = Mutex::new(());

/// Builds (or brings up to date) the statically linked `cloister-init` and returns its path.
pub fn build_static_init() -> Result<PathBuf, StaticBuildError> {
    build_static_binary("cloister-init", "cloister-init")
}

/// Builds (or brings up to date) binary `bin` of workspace package `package`, statically linked
/// and without debug info (enclave ramdisks carry these binaries, and every boot copies them),
/// in `<workspace>/target/static`, and returns its path. Serialised within the process; cargo's
/// own lock serialises across processes.
pub fn build_static_binary(package: &str, bin: &str) -> Result<PathBuf, StaticBuildError> {
    let _guard = match BUILD_LOCK.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    };
    let root = workspace_root();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .current_dir(&root)
        .env("CARGO_TARGET_DIR", root.join("target/static"))
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .args(["rustc", "-p", package, "--release", "--bin", bin, "--"])
        .args(["-C", "target-feature=+crt-static", "-C", "strip=debuginfo"])
        .output()
        .map_err(StaticBuildError::Spawn)?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: String = stderr
            .chars()
            .rev()
            .take(4000)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        return Err(StaticBuildError::Failed {
            status: output.status,
            stderr: tail,
        });
    }
    let path = static_binary_path(bin);
    if !path.is_file() {
        return Err(StaticBuildError::Missing(path));
    }
    Ok(path)
}
