//! Building the static binaries that go into enclave images (init, and the test and sample
//! applications), for the build tooling (`cargo xtask dist`) and the tests. The product never
//! runs this: an installed `cloister` finds these binaries in its data directory; only a
//! `cloister` that is itself a cargo build output of this source tree (`cargo run -- demo`)
//! falls back to it ([`source_tree_of`]).
//!
//! For init this runs:
//!
//! ```text
//! CARGO_TARGET_DIR=<workspace>/target/static CARGO_ENCODED_RUSTFLAGS=<STATIC_RUSTFLAGS> \
//!   cargo build -p cloister-init --release --bin cloister-init --target x86_64-unknown-linux-musl
//! ```
//!
//! Init is linked against musl, the libc that the pinned toolchain's `rust-std` component ships
//! for that target (static-pie: `file` reports "static-pie linked"), without debug info. So
//! nothing of the host enters it: the toolchain is pinned (`rust-toolchain.toml`, which also
//! names the musl target), the workspace and `CARGO_HOME` are remapped to fixed names
//! (`/cloister`, `/cargo`) in panic locations, and the flags go to the target crates only
//! (`--target`, so build scripts and proc macros stay dynamic): two builds of one commit,
//! anywhere, give the same bytes and so the same PCR1.
//!
//! The test and sample applications link aws-lc's C code, which needs a C compiler for the
//! target: they stay on glibc (`x86_64-unknown-linux-gnu` with `+crt-static`, static-pie as
//! well, linking the host's static glibc from `libc6-dev`). They go into customer ramdisks
//! (PCR2), never into the bootstrap ramdisk that PCR1 measures.

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// The target the static applications are built for (explicit, so that the static flags apply
/// to the target crates only: build scripts and proc macros cannot link `+crt-static`).
pub const STATIC_TARGET: &str = "x86_64-unknown-linux-gnu";
/// The target init is built for: musl from the pinned toolchain (see the module comment).
pub const INIT_TARGET: &str = "x86_64-unknown-linux-musl";
/// The binary name of init.
pub const INIT_BIN: &str = "cloister-init";

/// The target binary `bin` is built for.
pub fn static_target(bin: &str) -> &'static str {
    if bin == INIT_BIN {
        INIT_TARGET
    } else {
        STATIC_TARGET
    }
}
/// What the workspace root is remapped to in the binaries.
pub const REMAPPED_WORKSPACE: &str = "/cloister";
/// What `CARGO_HOME` is remapped to in the binaries.
pub const REMAPPED_CARGO_HOME: &str = "/cargo";

/// Errors building the static init.
#[derive(Debug, thiserror::Error)]
pub enum StaticBuildError {
    /// cargo could not be started.
    #[error("running cargo")]
    Spawn(#[source] io::Error),
    /// cargo failed.
    #[error("cargo build failed with {status}: {stderr}")]
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

/// The source tree that `exe` was built from, when `exe` is a cargo build output inside this
/// workspace's `target/` (`cargo run`, `cargo test`) and the tree is still there; `None` for an
/// installed binary (or one copied anywhere else), which must not build anything.
pub fn source_tree_of(exe: &Path) -> Option<PathBuf> {
    let root = workspace_root();
    let in_target = exe.starts_with(root.join("target"));
    let tree = root.join("Cargo.toml").is_file() && root.join("crates/init/Cargo.toml").is_file();
    (in_target && tree).then_some(root)
}

/// `CARGO_HOME` as cargo resolves it.
fn cargo_home() -> Option<PathBuf> {
    std::env::var_os("CARGO_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
}

/// The rustc flags of the static binaries, for `CARGO_ENCODED_RUSTFLAGS` (0x1f-separated):
/// static glibc, no debug info, and the build paths remapped (see the module comment).
pub fn static_rustflags(workspace: &Path) -> OsString {
    let mut flags: Vec<OsString> = vec![
        "-Ctarget-feature=+crt-static".into(),
        "-Cstrip=debuginfo".into(),
    ];
    let mut remap = |from: &Path, to: &str| {
        let mut f = OsString::from("--remap-path-prefix=");
        f.push(from.as_os_str());
        f.push("=");
        f.push(to);
        flags.push(f);
    };
    if let Some(home) = cargo_home() {
        remap(&home, REMAPPED_CARGO_HOME);
    }
    // Last: rustc applies the last matching remapping, and the workspace may hold CARGO_HOME.
    remap(workspace, REMAPPED_WORKSPACE);
    let mut out = OsString::new();
    for (i, f) in flags.iter().enumerate() {
        if i > 0 {
            out.push("\u{1f}");
        }
        out.push(f);
    }
    out
}

/// Where [`build_static_binary`] puts binary `bin`.
pub fn static_binary_path(bin: &str) -> PathBuf {
    static_binary_path_in(&workspace_root().join("target/static"), bin)
}

/// Where [`build_static_binary_in`] puts binary `bin` under `target_dir`.
pub fn static_binary_path_in(target_dir: &Path, bin: &str) -> PathBuf {
    target_dir
        .join(static_target(bin))
        .join("release")
        .join(bin)
}

/// Where [`build_static_init`] puts the binary.
pub fn static_init_path() -> PathBuf {
    static_binary_path(INIT_BIN)
}

static BUILD_LOCK: Mutex<()> = Mutex::new(());

/// Builds (or brings up to date) the statically linked `cloister-init` and returns its path.
pub fn build_static_init() -> Result<PathBuf, StaticBuildError> {
    build_static_binary("cloister-init", INIT_BIN)
}

/// Builds (or brings up to date) binary `bin` of workspace package `package`, statically linked
/// and without debug info (enclave ramdisks carry these binaries, and every boot copies them),
/// in `<workspace>/target/static`, and returns its path. Serialised within the process; cargo's
/// own lock serialises across processes.
pub fn build_static_binary(package: &str, bin: &str) -> Result<PathBuf, StaticBuildError> {
    let root = workspace_root();
    build_static_binary_in(&root, &root.join("target/static"), package, bin)
}

/// [`build_static_binary`] for the workspace at `workspace`, into `target_dir`.
pub fn build_static_binary_in(
    workspace: &Path,
    target_dir: &Path,
    package: &str,
    bin: &str,
) -> Result<PathBuf, StaticBuildError> {
    let _guard = match BUILD_LOCK.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .current_dir(workspace)
        .env("CARGO_TARGET_DIR", target_dir)
        .env("CARGO_ENCODED_RUSTFLAGS", static_rustflags(workspace))
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .args(["build", "-p", package, "--release", "--bin", bin])
        .args(["--target", static_target(bin)])
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
    let path = static_binary_path_in(target_dir, bin);
    if !path.is_file() {
        return Err(StaticBuildError::Missing(path));
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_remap_the_build_paths() {
        let flags = static_rustflags(Path::new("/src/tree"));
        let flags = flags.to_string_lossy();
        let parts: Vec<&str> = flags.split('\u{1f}').collect();
        assert_eq!(parts[0], "-Ctarget-feature=+crt-static");
        assert_eq!(
            parts.last().copied(),
            Some("--remap-path-prefix=/src/tree=/cloister")
        );
    }

    #[test]
    fn only_a_build_output_of_this_tree_is_a_source_tree_binary() {
        let root = workspace_root();
        assert_eq!(
            source_tree_of(&root.join("target/release/cloister")),
            Some(root.clone())
        );
        assert_eq!(
            source_tree_of(&root.join("target/x86_64-unknown-linux-gnu/debug/cloister")),
            Some(root.clone())
        );
        for installed in ["/usr/bin/cloister", "/opt/cloister/bin/cloister"] {
            assert_eq!(source_tree_of(Path::new(installed)), None);
        }
        assert_eq!(source_tree_of(&root.join("crates/cloister")), None);
    }
}
