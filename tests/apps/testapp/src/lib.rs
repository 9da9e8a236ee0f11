//! cloister-testapp: a small static program that runs inside enclaves in tests and benchmarks.
//!
//! Subcommands (see `main.rs`): `echo-server PORT`, `connect-parent PORT MESSAGE`,
//! `nsm-relay PORT` (pipes a parent connection to the NSM channel byte for byte, so a host
//! test can drive the NSM with any bytes), `isolation-suite PORT OTHER_CID HOST_TCP_PORT
//! HOST_PID MEMORY_MIB` (tries to break out and reports every attempt's errno to the parent),
//! `write-file PATH`, `check-absent PATH PORT`, `sink-server PORT` (throughput benchmark),
//! `signal-unix PATH` (readiness signal of the bubblewrap baseline), `vsock-bench PORT MIB
//! ROUNDS NSM_COUNT [REPS]` (plain AF_VSOCK and /dev/nsm against the SDK's protocol, see `bench.rs`),
//! `sleep`, `hostile-init PORT` (as an image's own `/init` in place of Cloister's: sends the
//! heartbeat itself, then reports which confinement-breaking calls it could make). Started as `/init` (its file name `init`, the bootstrap ramdisk's PID 1, which has
//! no /cmd), it takes the subcommand and its arguments from `/testapp.mode` when that file
//! exists: `sleep` there makes an init that never sends the boot heartbeat.
//!
//! This library half only builds the binary statically for tests ([`build_static_testapp`]),
//! the same way `cloister-init` is built (glibc with `+crt-static`).

use std::path::PathBuf;

pub use cloister_init::static_build::StaticBuildError as BuildError;

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    cloister_init::static_build::workspace_root()
}

/// Builds (or brings up to date) the statically linked testapp in `target/static` and returns
/// its path.
pub fn build_static_testapp() -> Result<PathBuf, BuildError> {
    cloister_init::static_build::build_static_binary("cloister-testapp", "cloister-testapp")
}

/// Where [`build_static_testapp`] puts the binary.
pub fn static_testapp_path() -> PathBuf {
    cloister_init::static_build::static_binary_path("cloister-testapp")
}
