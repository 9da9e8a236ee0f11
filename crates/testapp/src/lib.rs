//! cloister-testapp: a small static program that runs inside enclaves in tests and benchmarks.
//!
//! Subcommands (see `main.rs`): `echo-server PORT`, `connect-parent PORT MESSAGE`,
//! `nsm-relay PORT` (pipes a parent connection to the NSM channel byte for byte, so a host
//! test can drive the NSM with any bytes), `isolation-suite PORT OTHER_CID HOST_TCP_PORT
//! HOST_PID MEMORY_MIB` (tries to break out and reports every attempt's errno to the parent),
//! `write-file PATH`, `check-absent PATH PORT`, `sink-server PORT` (throughput benchmark),
//! `signal-unix PATH` (readiness signal of the bubblewrap baseline),
//! `sleep`.
//!
//! This library half only builds the binary statically for tests ([`build_static_testapp`]),
//! the same way `cloister-init` is built (glibc with `+crt-static`).

use std::path::{Path, PathBuf};
use std::process::Command;

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// Errors building the static binary.
#[derive(Debug)]
pub struct BuildError(pub String);

impl std::fmt::Display for BuildError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "building the static testapp failed: {}", self.0)
    }
}

impl std::error::Error for BuildError {}

/// Builds (or brings up to date) the statically linked testapp in `target/static` and returns
/// its path.
pub fn build_static_testapp() -> Result<PathBuf, BuildError> {
    let root = workspace_root();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(&root)
        .env("CARGO_TARGET_DIR", root.join("target/static"))
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .args([
            "rustc",
            "-p",
            "cloister-testapp",
            "--release",
            "--bin",
            "cloister-testapp",
            "--",
            "-C",
            "target-feature=+crt-static",
            // Enclave ramdisks carry these binaries: no debug info to copy at every boot.
            "-C",
            "strip=debuginfo",
        ])
        .output()
        .map_err(|e| BuildError(e.to_string()))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: String = err
            .chars()
            .rev()
            .take(2000)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        return Err(BuildError(tail));
    }
    let path = root.join("target/static/release/cloister-testapp");
    if path.exists() {
        Ok(path)
    } else {
        Err(BuildError(format!("missing {}", path.display())))
    }
}
