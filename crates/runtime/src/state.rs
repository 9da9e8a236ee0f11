//! The run directory: where every enclave's record lives, so that any later `cloister` call
//! sees every enclave.
//!
//! Layout (root from `CLOISTER_RUN_DIR`, default `/run/cloister`):
//! - `enclaves/<id>/state.json`: the [`EnclaveRecord`], written atomically (temp + rename) by
//!   the enclave's monitor;
//! - `enclaves/<id>/monitor.lock`: held with `flock` by the monitor for as long as it lives (the
//!   CLI takes it when it creates the directory and hands the locked descriptor to the monitor).
//!   A free lock means the monitor is gone; [`RunDir::list`] then prunes the entry (and its
//!   leftover cgroup), so no stale enclave is ever reported;
//! - `enclaves/<id>/console.log`: the enclave console (the monitor's pid is in the record);
//! - `vsock/`: the host side of the vsock fabric.
//!
//! The run directory holds what the runtime trusts (records, locks, cached image roots and
//! measurements, the fabric), so it must be owned by root (or the user running cloister) and
//! writable by nobody else; [`RunDir::prepare`] creates it or refuses one that is not
//! ([`check_trusted_dir`], also used for the attestation PKI's directory).

use crate::sys;
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Default run directory.
pub const DEFAULT_RUN_DIR: &str = crate::config::DEFAULT_RUN_DIR;
/// Environment variable overriding [`DEFAULT_RUN_DIR`].
pub const RUN_DIR_ENV: &str = crate::config::RUN_DIR_ENV;
/// Name prefix of an enclave entry under construction (see [`RunDir::create_enclave_dir`]).
const STAGING_PREFIX: &str = ".new-";
/// Age after which an unlocked entry under construction is abandoned and removed.
const STAGING_GRACE: std::time::Duration = std::time::Duration::from_secs(60);
/// Largest state file read.
const MAX_RECORD_BYTES: u64 = 1024 * 1024;

/// Run-directory errors.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// File system error on a state path.
    #[error("run directory entry {0}")]
    Io(PathBuf, #[source] std::io::Error),
    /// A record does not parse.
    #[error("enclave record {0} is corrupt")]
    Corrupt(PathBuf, #[source] serde_json::Error),
    /// Locking failed.
    #[error("cannot lock {0}")]
    Lock(PathBuf, #[source] sys::SysError),
}

/// A directory the runtime trusts (the run directory, the PKI directory) is unsafe to use.
#[derive(Debug, thiserror::Error)]
pub enum UnsafeDirError {
    /// It cannot be examined or created.
    #[error("cannot examine {0}")]
    Io(PathBuf, #[source] std::io::Error),
    /// It is not a directory.
    #[error("{0} is not a directory")]
    NotDir(PathBuf),
    /// Someone else owns it.
    #[error(
        "{path} is owned by uid {owner}, not by root or the user running cloister (uid {euid});          refusing to use it: give it to root (`chown root {path}`) or use another directory"
    )]
    Owner {
        /// The directory.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// This process's effective uid.
        euid: u32,
    },
    /// Its group or other users may write to it.
    #[error(
        "{path} is writable by {who} (mode {mode:04o}); refusing to use it:          run `chmod go-w {path}` or use another directory"
    )]
    Writable {
        /// The directory.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
        /// `its group`, `other users`, or both.
        who: &'static str,
    },
}

/// Checks that `path` is a directory owned by root or the effective user and not writable by
/// its group or by other users (anyone who could write to it could replace what the runtime
/// keeps there).
pub fn check_trusted_dir(path: &Path) -> Result<(), UnsafeDirError> {
    let m = std::fs::metadata(path).map_err(|e| UnsafeDirError::Io(path.into(), e))?;
    if !m.is_dir() {
        return Err(UnsafeDirError::NotDir(path.into()));
    }
    let euid = nix::unistd::geteuid().as_raw();
    if m.uid() != 0 && m.uid() != euid {
        return Err(UnsafeDirError::Owner {
            path: path.into(),
            owner: m.uid(),
            euid,
        });
    }
    let mode = m.mode() & 0o7777;
    let who = match (mode & 0o020 != 0, mode & 0o002 != 0) {
        (false, false) => return Ok(()),
        (true, false) => "its group",
        (false, true) => "other users",
        (true, true) => "its group and other users",
    };
    Err(UnsafeDirError::Writable {
        path: path.into(),
        mode,
        who,
    })
}

/// Lifecycle state of an enclave, as nitro-cli reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EnclaveState {
    /// Started, waiting for the boot heartbeat.
    Booting,
    /// Heartbeat received.
    Running,
    /// Being torn down.
    Terminating,
}

/// The image measurements of an enclave (hex SHA-384).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Measurements {
    /// PCR0.
    pub pcr0: String,
    /// PCR1.
    pub pcr1: String,
    /// PCR2.
    pub pcr2: String,
    /// PCR8, for signed images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pcr8: Option<String>,
}

/// Image metadata shown by `describe-enclaves --metadata`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ImageMetadata {
    /// Image name.
    pub image_name: Option<String>,
    /// Image version.
    pub image_version: Option<String>,
    /// Free-form metadata.
    pub metadata: Option<serde_json::Value>,
}

/// Everything known about one enclave.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnclaveRecord {
    /// The enclave id.
    pub enclave_id: String,
    /// Its name.
    pub enclave_name: String,
    /// Pid of its monitor process.
    pub monitor_pid: u32,
    /// Host pid of its init (PID 1 of its PID namespace), once started.
    pub init_pid: Option<u32>,
    /// Its CID.
    pub cid: u64,
    /// Its CPUs.
    pub cpu_ids: Vec<u32>,
    /// Its memory.
    pub memory_mib: u64,
    /// Debug mode (console readable, PCR0-2 zero in attestation documents).
    pub debug_mode: bool,
    /// Isolation backend name.
    pub isolation: String,
    /// The VM's accelerator (`kvm` or `tcg`); none for process enclaves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accelerator: Option<String>,
    /// Cloister's init runs in place of the image's (an image built by nitro-cli in a process
    /// enclave, see [`crate::initswap`]).
    #[serde(default)]
    pub init_replaced: bool,
    /// Lifecycle state.
    pub state: EnclaveState,
    /// The host uid (and gid) the enclave runs as, its own among the live enclaves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_uid: Option<u32>,
    /// Image measurements.
    pub measurements: Measurements,
    /// Image metadata.
    pub metadata: ImageMetadata,
    /// Path of the image it runs.
    pub eif_path: PathBuf,
    /// Cgroup directories to remove if the monitor dies without cleaning up.
    #[serde(default)]
    pub cgroup_dirs: Vec<PathBuf>,
    /// Seconds since the epoch when it started.
    pub started_at: u64,
}

/// The run directory.
#[derive(Debug, Clone)]
pub struct RunDir {
    root: PathBuf,
}

impl RunDir {
    /// The run directory of the process-wide configuration
    /// ([`crate::config::RuntimeConfig::current`]: `CLOISTER_RUN_DIR` or the default).
    pub fn from_env() -> Self {
        Self::from_config(&crate::config::RuntimeConfig::current())
    }

    /// The run directory `cfg` names.
    pub fn from_config(cfg: &crate::config::RuntimeConfig) -> Self {
        Self::new(cfg.run_dir.clone())
    }

    /// A run directory at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// Its root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Creates the run directory if it does not exist, then checks that it is safe to use
    /// ([`check_trusted_dir`]). The directories it creates (the run directory and any missing
    /// parent) get mode 0755 whatever the umask: searchable by others, as a VM enclave's QEMU
    /// (running as the enclave's own uid) must pass through them.
    pub fn prepare(&self) -> Result<(), UnsafeDirError> {
        let missing: Vec<&Path> = self
            .root
            .ancestors()
            .take_while(|p| !p.as_os_str().is_empty() && !p.exists())
            .collect();
        for dir in missing.into_iter().rev() {
            match std::fs::DirBuilder::new().mode(0o755).create(dir) {
                Ok(()) => {
                    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
                        .map_err(|e| UnsafeDirError::Io(dir.into(), e))?;
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(UnsafeDirError::Io(dir.into(), e)),
            }
        }
        check_trusted_dir(&self.root)
    }

    /// `<run>/enclaves`.
    pub fn enclaves_dir(&self) -> PathBuf {
        self.root.join("enclaves")
    }

    /// `<run>/enclaves/<id>`.
    pub fn enclave_dir(&self, id: &str) -> PathBuf {
        self.enclaves_dir().join(id)
    }

    /// `<run>/vsock`.
    pub fn vsock_dir(&self) -> PathBuf {
        self.root.join("vsock")
    }

    /// `<run>/enclaves/<id>/console.log`.
    pub fn console_path(&self, id: &str) -> PathBuf {
        self.enclave_dir(id).join("console.log")
    }

    fn lock_path(&self, id: &str) -> PathBuf {
        self.enclave_dir(id).join("monitor.lock")
    }

    /// Creates `<run>/enclaves/<id>` and takes its monitor lock. The returned file holds the lock;
    /// a child process that inherits it keeps the lock after the caller closes its copy.
    ///
    /// The entry appears atomically with its lock held: it is built as `enclaves/.new-<id>` (a
    /// name [`RunDir::list`] never takes for an enclave) and renamed into place, so a concurrent
    /// `list` can never see it without a held lock and prune it as stale.
    pub fn create_enclave_dir(&self, id: &str) -> Result<File, StateError> {
        let dir = self.enclave_dir(id);
        std::fs::create_dir_all(self.enclaves_dir()).map_err(|e| StateError::Io(dir.clone(), e))?;
        let staging = self.enclaves_dir().join(format!("{STAGING_PREFIX}{id}"));
        std::fs::create_dir(&staging).map_err(|e| StateError::Io(staging.clone(), e))?;
        let unstage = |e: StateError| {
            let _ = std::fs::remove_dir_all(&staging);
            e
        };
        let path = staging.join("monitor.lock");
        let f = File::create(&path).map_err(|e| unstage(StateError::Io(path.clone(), e)))?;
        // Nobody else holds a fresh staging entry's lock for longer than a probe, so wait.
        if let Err(e) = sys::lock_exclusive(&f) {
            return Err(unstage(StateError::Lock(path, e)));
        }
        // rename(2) refuses to replace a non-empty directory, so an existing entry is an error.
        std::fs::rename(&staging, &dir).map_err(|e| unstage(StateError::Io(dir.clone(), e)))?;
        Ok(f)
    }

    /// True while the monitor of `id` holds its lock.
    pub fn is_alive(&self, id: &str) -> bool {
        let Ok(f) = File::open(self.lock_path(id)) else {
            return false;
        };
        // Taking the lock proves nobody holds it; dropping `f` releases it again.
        !matches!(sys::try_lock_exclusive(&f), Ok(true))
    }

    /// Writes a record atomically.
    pub fn write_record(&self, rec: &EnclaveRecord) -> Result<(), StateError> {
        let dir = self.enclave_dir(&rec.enclave_id);
        let tmp = dir.join("state.json.tmp");
        let path = dir.join("state.json");
        let bytes =
            serde_json::to_vec_pretty(rec).map_err(|e| StateError::Corrupt(path.clone(), e))?;
        crate::sys::replace_file(&tmp, &path, &bytes).map_err(|e| StateError::Io(path, e))
    }

    /// Reads one record (`None` when it has none yet).
    pub fn read_record(&self, id: &str) -> Result<Option<EnclaveRecord>, StateError> {
        use std::io::Read;
        let path = self.enclave_dir(id).join("state.json");
        let f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StateError::Io(path, e)),
        };
        let mut buf = Vec::new();
        f.take(MAX_RECORD_BYTES)
            .read_to_end(&mut buf)
            .map_err(|e| StateError::Io(path.clone(), e))?;
        serde_json::from_slice(&buf)
            .map(Some)
            .map_err(|e| StateError::Corrupt(path, e))
    }

    /// Removes an enclave's directory (and the cgroups its record names).
    pub fn remove_enclave(&self, id: &str) {
        if let Ok(Some(rec)) = self.read_record(id) {
            for dir in rec.cgroup_dirs {
                let _ = std::fs::remove_dir(dir);
            }
        }
        let _ = std::fs::remove_dir_all(self.enclave_dir(id));
    }

    /// Every live enclave with a record, sorted by start time. Entries whose monitor is gone are
    /// pruned on the way.
    pub fn list(&self) -> Result<Vec<EnclaveRecord>, StateError> {
        let dir = self.enclaves_dir();
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(StateError::Io(dir, e)),
        };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let Some(id) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if let Some(staged) = id.strip_prefix(STAGING_PREFIX) {
                // An entry still being created, or left by a CLI that died while creating it
                // (its lock is then free). Only an old one is probed: probing takes its lock for a moment, which must
                // never happen to an entry whose creator is about to lock it.
                let young = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_none_or(|age| age < STAGING_GRACE);
                if young || !crate::ids::is_enclave_id(staged) {
                    continue;
                }
                let lock = entry.path().join("monitor.lock");
                let held = File::open(&lock)
                    .map(|f| !matches!(sys::try_lock_exclusive(&f), Ok(true)))
                    .unwrap_or(false);
                if !held {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
                continue;
            }
            if !crate::ids::is_enclave_id(&id) {
                continue;
            }
            if !self.is_alive(&id) {
                self.remove_enclave(&id);
                continue;
            }
            match self.read_record(&id) {
                Ok(Some(rec)) => out.push(rec),
                Ok(None) => {}
                Err(e) => tracing::warn!(enclave = %id, error = %e, "skipping unreadable record"),
            }
        }
        out.sort_by(|a, b| {
            a.started_at
                .cmp(&b.started_at)
                .then(a.enclave_id.cmp(&b.enclave_id))
        });
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_private_run_directories_are_used() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path().join("a/run"));
        run.prepare().unwrap();
        // Made searchable whatever the umask (this process's may be anything).
        for d in [run.root(), &dir.path().join("a")] {
            assert_eq!(std::fs::metadata(d).unwrap().mode() & 0o777, 0o755);
        }
        let chmod = |m: u32| {
            std::fs::set_permissions(run.root(), std::fs::Permissions::from_mode(m)).unwrap()
        };
        chmod(0o700);
        run.prepare().unwrap();
        chmod(0o1777);
        match run.prepare() {
            Err(e @ UnsafeDirError::Writable { .. }) => {
                let msg = e.to_string();
                assert!(
                    msg.contains("writable by its group and other users"),
                    "{msg}"
                );
                assert!(msg.contains("chmod go-w"), "{msg}");
            }
            other => panic!("{other:?}"),
        }
        chmod(0o775);
        assert!(matches!(
            run.prepare(),
            Err(UnsafeDirError::Writable {
                who: "its group",
                ..
            })
        ));
        chmod(0o755);
        // Owned by someone else (only root can give it away).
        if nix::unistd::geteuid().is_root() {
            std::os::unix::fs::chown(run.root(), Some(12345), None).unwrap();
            assert!(matches!(
                run.prepare(),
                Err(UnsafeDirError::Owner { owner: 12345, .. })
            ));
        }
        let file = dir.path().join("file");
        std::fs::write(&file, b"").unwrap();
        assert!(matches!(
            check_trusted_dir(&file),
            Err(UnsafeDirError::NotDir(_))
        ));
    }

    #[test]
    fn dead_entries_are_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        let id = crate::ids::new_enclave_id();
        let lock = run.create_enclave_dir(&id).unwrap();
        assert!(run.is_alive(&id));
        let rec = EnclaveRecord {
            enclave_id: id.clone(),
            enclave_name: "x".into(),
            monitor_pid: 1,
            init_pid: None,
            cid: 4,
            cpu_ids: vec![0],
            memory_mib: 64,
            debug_mode: false,
            isolation: "process".into(),
            accelerator: None,
            init_replaced: false,
            state: EnclaveState::Running,
            host_uid: None,
            measurements: Measurements {
                pcr0: "00".into(),
                pcr1: "00".into(),
                pcr2: "00".into(),
                pcr8: None,
            },
            metadata: ImageMetadata::default(),
            eif_path: "/x.eif".into(),
            cgroup_dirs: vec![],
            started_at: 0,
        };
        run.write_record(&rec).unwrap();
        assert_eq!(run.list().unwrap().len(), 1);
        drop(lock);
        assert!(!run.is_alive(&id));
        assert!(run.list().unwrap().is_empty());
        assert!(!run.enclave_dir(&id).exists());
    }

    #[test]
    fn entries_appear_locked_while_others_list() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        // Creations racing with listings: no listing may prune an entry being created.
        std::thread::scope(|s| {
            let lister = s.spawn(|| {
                for _ in 0..2000 {
                    run.list().unwrap();
                }
            });
            let mut locks = Vec::new();
            for _ in 0..200 {
                let id = crate::ids::new_enclave_id();
                locks.push((run.create_enclave_dir(&id).unwrap(), id));
            }
            lister.join().unwrap();
            for (_lock, id) in &locks {
                assert!(run.is_alive(id), "{id} lost its entry");
            }
        });
        // Creating an existing entry fails and leaves the original alone.
        let id = crate::ids::new_enclave_id();
        let _lock = run.create_enclave_dir(&id).unwrap();
        assert!(run.create_enclave_dir(&id).is_err());
        assert!(run.is_alive(&id));
        // An abandoned staging entry (unlocked, older than the grace period) is removed; a
        // fresh one is left for its creator.
        let stale = run
            .enclaves_dir()
            .join(format!("{STAGING_PREFIX}{}", crate::ids::new_enclave_id()));
        std::fs::create_dir(&stale).unwrap();
        std::fs::File::create(stale.join("monitor.lock")).unwrap();
        run.list().unwrap();
        assert!(stale.exists());
        let old = std::time::SystemTime::now() - 2 * STAGING_GRACE;
        std::fs::File::open(&stale)
            .unwrap()
            .set_modified(old)
            .unwrap();
        run.list().unwrap();
        assert!(!stale.exists());
    }
}
