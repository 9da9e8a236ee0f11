//! cloister-runtime: the enclave runtime.
//!
//! - [`lifecycle`]: run / describe / terminate / console, as the CLI calls them;
//! - [`monitor`]: the per-enclave monitor process (heartbeat, supervision, teardown);
//! - [`config`]: [`RuntimeConfig`], everything the runtime takes from the environment, read in
//!   one place;
//! - [`backend`]: the [`backend::Backend`] trait and the launch a backend gets
//!   ([`backend::LaunchSpec`]); [`backends`]: the backend of each isolation; [`sandbox`]: the
//!   `process` backend (namespaces, an overlay root over the cached image tree with a tmpfs
//!   upper layer, pivot_root, user namespace mapping); [`vmbackend`]: the `vm` backend (a QEMU
//!   microVM, [`cloister_vm`]);
//! - [`rootfs`]: safe unpacking of the image's ramdisks (into the image-root cache, or into a
//!   tmpfs root where overlay or idmapped mounts are unavailable);
//! - [`allocator`]: the CPU / memory / CID pool; [`cgroup`]: per-enclave cgroups (v1 or v2);
//! - [`state`]: the run directory; [`console`]: the bounded console log;
//! - [`imagecache`]: image measurements and unpacked image roots, cached per file version;
//! - [`nsm`]: the enclave's NSM behind the vsock broker; [`ids`]: instance and enclave ids;
//! - [`boottrace`]: debug-level timing of the boot path;
//! - [`sys`]: every system call the runtime makes, wrapped once with typed errors.

pub mod allocator;
pub mod backend;
pub mod backends;
pub mod boottrace;
pub mod cgroup;
pub mod config;
pub mod console;
pub mod ids;
pub mod imagecache;
pub mod initswap;
pub mod lifecycle;
pub mod monitor;
pub mod nsm;
pub mod rootfs;
pub mod sandbox;
pub mod state;
pub mod sys;
pub mod vmbackend;

pub use backend::Isolation;
pub use config::RuntimeConfig;
pub use lifecycle::{LifecycleError, MonitorCommand, RunOptions, Selector};
pub use monitor::{monitor_main, FailureKind, MONITOR_SUBCOMMAND};
pub use state::{EnclaveRecord, EnclaveState, RunDir};
