//! The runtime's configuration: everything it takes from the environment, in one typed value.
//!
//! [`RuntimeConfig::from_env`] is the only place the runtime (and the `vm` crate, through
//! [`cloister_vm::HostConfig`], and the supervisor switch) reads environment variables. Library
//! code takes the configuration as a parameter, or reads the process-wide one
//! ([`RuntimeConfig::current`]): filled by [`RuntimeConfig::install`], or from the environment on
//! first use. `run-enclave` hands its configuration to the monitor inside the launch description
//! (`spec.json`), so a monitor, forked or exec'd, runs with exactly its caller's settings.
//!
//! nitro-cli's variables are honoured where Cloister's are unset: `NITRO_CLI_SOCKETS_PATH` for
//! the run directory, `NITRO_CLI_BLOBS` for the blobs directory.

use cloister_vm::{Accel, FirmwareChoice, HostConfig};
use serde::{Deserialize, Serialize};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

/// The run directory where [`RUN_DIR_ENV`] is unset.
pub const DEFAULT_RUN_DIR: &str = "/run/cloister";
/// Environment variable naming the run directory.
pub const RUN_DIR_ENV: &str = "CLOISTER_RUN_DIR";
/// The attestation PKI directory where [`PKI_DIR_ENV`] is unset.
pub const DEFAULT_PKI_DIR: &str = "/var/lib/cloister/pki";
/// Environment variable naming the attestation PKI directory.
pub const PKI_DIR_ENV: &str = "CLOISTER_PKI_DIR";
/// The allocator's configuration file where [`ALLOCATOR_CONFIG_ENV`] is unset.
pub const DEFAULT_ALLOCATOR_CONFIG: &str = "/etc/cloister/allocator.yaml";
/// Environment variable naming the allocator's configuration file.
pub const ALLOCATOR_CONFIG_ENV: &str = "CLOISTER_ALLOCATOR_CONFIG";
/// Environment variable naming the blobs directory (Cloister's init is looked for there first).
pub const BLOBS_ENV: &str = "CLOISTER_BLOBS";
/// nitro-cli's blobs directory variable, honoured where [`BLOBS_ENV`] is unset.
pub const NITRO_BLOBS_ENV: &str = "NITRO_CLI_BLOBS";
/// nitro-cli's sockets directory variable, honoured where [`RUN_DIR_ENV`] is unset.
pub const NITRO_SOCKETS_ENV: &str = "NITRO_CLI_SOCKETS_PATH";
/// Environment variable overriding the boot timeout (milliseconds).
pub const BOOT_TIMEOUT_ENV: &str = "CLOISTER_BOOT_TIMEOUT_MS";
/// Environment variable naming the IAM role whose ARN feeds PCR3.
pub const ROLE_ARN_ENV: &str = "CLOISTER_IAM_ROLE_ARN";
/// Environment variable that, when set to anything, makes `run-enclave` start the monitor by
/// exec'ing the program even where a fork alone would do (for comparison and debugging).
pub const MONITOR_EXEC_ENV: &str = "CLOISTER_MONITOR_EXEC";
/// Environment variable naming a file for end-to-end tests of the image's life between its
/// measurement and the boot: when set, the monitor creates that file once it has measured and
/// checked the image, then waits (up to a minute) until the test removes it.
pub const TEST_HOOK_AFTER_MEASURING_ENV: &str = "CLOISTER_TEST_HOOK_AFTER_MEASURING";
/// Environment variable naming the QEMU binary.
pub const QEMU_ENV: &str = "CLOISTER_QEMU";

/// Everything the runtime takes from its environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// The run directory ([`RUN_DIR_ENV`], default [`DEFAULT_RUN_DIR`]).
    pub run_dir: PathBuf,
    /// The attestation PKI directory ([`PKI_DIR_ENV`], default [`DEFAULT_PKI_DIR`]).
    pub pki_dir: PathBuf,
    /// The allocator's configuration file ([`ALLOCATOR_CONFIG_ENV`], default
    /// [`DEFAULT_ALLOCATOR_CONFIG`]).
    pub allocator_config: PathBuf,
    /// The blobs directory looked in first for Cloister's init ([`BLOBS_ENV`]).
    pub blobs_dir: Option<PathBuf>,
    /// The boot timeout in milliseconds, overriding nitro-cli's rule ([`BOOT_TIMEOUT_ENV`]).
    pub boot_timeout_ms: Option<u64>,
    /// The IAM role ARN that feeds PCR3 ([`ROLE_ARN_ENV`]).
    pub role_arn: Option<String>,
    /// Start the monitor by exec, never by a fork alone ([`MONITOR_EXEC_ENV`]).
    pub monitor_exec: bool,
    /// See [`TEST_HOOK_AFTER_MEASURING_ENV`].
    pub test_hook_after_measuring: Option<PathBuf>,
    /// Whether process enclaves get a supervisor of their `AF_VSOCK` sockets and `/dev/nsm`
    /// ([`cloister_supervisor::SUPERVISOR_ENV`] is not `off`).
    pub supervisor: bool,
    /// QEMU, its firmware and the accelerator, for VM enclaves.
    pub vm: HostConfig,
}

impl Default for RuntimeConfig {
    /// The configuration of an empty environment.
    fn default() -> Self {
        Self::from_lookup(|_| None)
    }
}

/// The process-wide configuration ([`RuntimeConfig::current`]).
static CURRENT: RwLock<Option<Arc<RuntimeConfig>>> = RwLock::new(None);

impl RuntimeConfig {
    /// The configuration from the process's environment: the only place the runtime reads it.
    pub fn from_env() -> Self {
        Self::from_lookup(|name| std::env::var_os(name))
    }

    /// The configuration from `lookup` (an environment: a variable's name to its value).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<OsString>) -> Self {
        let non_empty = |name: &str| lookup(name).filter(|v| !v.is_empty());
        let text = |name: &str| lookup(name).and_then(|v| v.into_string().ok());
        let run_dir = lookup(RUN_DIR_ENV)
            .or_else(|| non_empty(NITRO_SOCKETS_ENV))
            .map_or_else(|| PathBuf::from(DEFAULT_RUN_DIR), PathBuf::from);
        let blobs_dir = match lookup(BLOBS_ENV) {
            Some(v) => Some(v).filter(|v| !v.is_empty()),
            None => non_empty(NITRO_BLOBS_ENV),
        }
        .map(PathBuf::from);
        Self {
            run_dir,
            pki_dir: lookup(PKI_DIR_ENV)
                .map_or_else(|| PathBuf::from(DEFAULT_PKI_DIR), PathBuf::from),
            allocator_config: lookup(ALLOCATOR_CONFIG_ENV)
                .map_or_else(|| PathBuf::from(DEFAULT_ALLOCATOR_CONFIG), PathBuf::from),
            blobs_dir,
            boot_timeout_ms: text(BOOT_TIMEOUT_ENV).and_then(|v| v.trim().parse().ok()),
            role_arn: text(ROLE_ARN_ENV).filter(|s| !s.is_empty()),
            monitor_exec: lookup(MONITOR_EXEC_ENV).is_some(),
            test_hook_after_measuring: lookup(TEST_HOOK_AFTER_MEASURING_ENV).map(PathBuf::from),
            supervisor: lookup(cloister_supervisor::SUPERVISOR_ENV).is_none_or(|v| v != "off"),
            vm: HostConfig {
                qemu: lookup(QEMU_ENV).map_or_else(
                    || PathBuf::from(cloister_vm::qemu::QEMU_BINARY),
                    PathBuf::from,
                ),
                datadir: non_empty(cloister_vm::qemu::DATADIR_ENV).map(PathBuf::from),
                firmware: FirmwareChoice::from_setting(
                    &text(cloister_vm::qemu::FIRMWARE_ENV).unwrap_or_default(),
                ),
                accel: text(cloister_vm::accel::ACCEL_ENV).and_then(|v| Accel::from_setting(&v)),
            },
        }
    }

    /// With another run directory.
    #[must_use]
    pub fn with_run_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.run_dir = dir.into();
        self
    }

    /// With another PKI directory.
    #[must_use]
    pub fn with_pki_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.pki_dir = dir.into();
        self
    }

    /// With another allocator configuration file.
    #[must_use]
    pub fn with_allocator_config(mut self, path: impl Into<PathBuf>) -> Self {
        self.allocator_config = path.into();
        self
    }

    /// Makes this the process-wide configuration ([`RuntimeConfig::current`]) and returns it.
    /// Installed again (a command that runs enclaves in a directory of its own, a monitor that
    /// takes its caller's configuration from the launch), the later one replaces the earlier.
    pub fn install(self) -> Arc<RuntimeConfig> {
        cloister_supervisor::set_enabled(self.supervisor);
        // This process's own vsock clients (the demo's, `cloister vsock`'s) use the same run
        // directory; the default stays the vsock crate's choice (it may pick native AF_VSOCK).
        cloister_vsock::stream::set_run_dir(
            (self.run_dir != Path::new(DEFAULT_RUN_DIR)).then(|| self.run_dir.clone()),
        );
        let cfg = Arc::new(self);
        let mut slot = CURRENT
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *slot = Some(cfg.clone());
        cfg
    }

    /// The process-wide configuration: the one installed last, else the environment's
    /// (installed on this first use).
    pub fn current() -> Arc<RuntimeConfig> {
        let installed = CURRENT
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        installed.unwrap_or_else(|| Self::from_env().install())
    }

    /// The PKI directory.
    pub fn pki_dir(&self) -> &Path {
        &self.pki_dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> RuntimeConfig {
        let map: HashMap<String, OsString> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), OsString::from(v)))
            .collect();
        RuntimeConfig::from_lookup(|name| map.get(name).cloned())
    }

    #[test]
    fn an_empty_environment_gives_the_defaults() {
        let c = env(&[]);
        assert_eq!(c.run_dir, Path::new("/run/cloister"));
        assert_eq!(c.pki_dir, Path::new("/var/lib/cloister/pki"));
        assert_eq!(
            c.allocator_config,
            Path::new("/etc/cloister/allocator.yaml")
        );
        assert_eq!(c.blobs_dir, None);
        assert_eq!(c.boot_timeout_ms, None);
        assert!(!c.monitor_exec && c.supervisor);
        assert_eq!(c.vm, HostConfig::default());
        assert_eq!(c, RuntimeConfig::default());
    }

    #[test]
    fn each_variable_lands_in_its_field() {
        let c = env(&[
            ("CLOISTER_RUN_DIR", "/r"),
            ("CLOISTER_PKI_DIR", "/p"),
            ("CLOISTER_ALLOCATOR_CONFIG", "/a.yaml"),
            ("CLOISTER_BLOBS", "/b"),
            ("CLOISTER_BOOT_TIMEOUT_MS", " 1500 "),
            ("CLOISTER_IAM_ROLE_ARN", "arn:aws:iam::1:role/x"),
            ("CLOISTER_MONITOR_EXEC", ""),
            ("CLOISTER_TEST_HOOK_AFTER_MEASURING", "/h"),
            ("CLOISTER_VSOCK_SUPERVISOR", "off"),
            ("CLOISTER_QEMU", "/q/qemu"),
            ("CLOISTER_QEMU_DATADIR", "/q/share"),
            ("CLOISTER_VM_FIRMWARE", " seabios "),
            ("CLOISTER_VM_ACCEL", "tcg"),
        ]);
        assert_eq!(c.run_dir, Path::new("/r"));
        assert_eq!(c.pki_dir, Path::new("/p"));
        assert_eq!(c.allocator_config, Path::new("/a.yaml"));
        assert_eq!(c.blobs_dir.as_deref(), Some(Path::new("/b")));
        assert_eq!(c.boot_timeout_ms, Some(1500));
        assert_eq!(c.role_arn.as_deref(), Some("arn:aws:iam::1:role/x"));
        assert!(c.monitor_exec && !c.supervisor);
        assert_eq!(
            c.test_hook_after_measuring.as_deref(),
            Some(Path::new("/h"))
        );
        assert_eq!(c.vm.qemu, Path::new("/q/qemu"));
        assert_eq!(c.vm.datadir.as_deref(), Some(Path::new("/q/share")));
        assert_eq!(c.vm.firmware, FirmwareChoice::Seabios);
        assert_eq!(c.vm.accel, Some(Accel::Tcg));
        // Through the launch description and back, unchanged.
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<RuntimeConfig>(&json).unwrap(), c);
    }

    #[test]
    fn nitro_cli_variables_fill_in_only_where_cloisters_are_unset() {
        let c = env(&[
            ("NITRO_CLI_SOCKETS_PATH", "/n/sock"),
            ("NITRO_CLI_BLOBS", "/n/blobs"),
        ]);
        assert_eq!(c.run_dir, Path::new("/n/sock"));
        assert_eq!(c.blobs_dir.as_deref(), Some(Path::new("/n/blobs")));
        let c = env(&[
            ("CLOISTER_RUN_DIR", "/r"),
            ("NITRO_CLI_SOCKETS_PATH", "/n/sock"),
            ("CLOISTER_BLOBS", "/b"),
            ("NITRO_CLI_BLOBS", "/n/blobs"),
        ]);
        assert_eq!(c.run_dir, Path::new("/r"));
        assert_eq!(c.blobs_dir.as_deref(), Some(Path::new("/b")));
        // Empty nitro-cli values are ignored; odd settings fall back to the defaults.
        let c = env(&[
            ("NITRO_CLI_SOCKETS_PATH", ""),
            ("CLOISTER_BOOT_TIMEOUT_MS", "soon"),
            ("CLOISTER_VM_ACCEL", "hvf"),
            ("CLOISTER_VM_FIRMWARE", "ovmf"),
        ]);
        assert_eq!(c.run_dir, Path::new("/run/cloister"));
        assert_eq!(c.boot_timeout_ms, None);
        assert_eq!(c.vm.accel, None);
        assert_eq!(c.vm.firmware, FirmwareChoice::Auto);
    }

    #[test]
    fn the_builder_changes_only_what_it_names() {
        let c = env(&[("CLOISTER_IAM_ROLE_ARN", "r")])
            .with_run_dir("/r")
            .with_pki_dir("/p")
            .with_allocator_config("/a");
        assert_eq!(
            (
                c.run_dir.as_path(),
                c.pki_dir(),
                c.allocator_config.as_path()
            ),
            (Path::new("/r"), Path::new("/p"), Path::new("/a"))
        );
        assert_eq!(c.role_arn.as_deref(), Some("r"));
    }
}
