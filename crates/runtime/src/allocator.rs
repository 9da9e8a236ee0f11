//! The enclave resource allocator: CPUs, memory and CIDs from a host pool.
//!
//! The pool comes from `allocator.yaml` in AWS's format (`memory_mib` plus either `cpu_count`
//! or `cpu_pool: "2,3,6-9"`), read from `CLOISTER_ALLOCATOR_CONFIG` or
//! `/etc/cloister/allocator.yaml`. Without a file the default pool is: every online CPU but CPU 0
//! when the host has more than two CPUs, otherwise every CPU (shared with the host, still
//! exclusive between enclaves), and half of the host's memory.
//!
//! Allocations live in `<run>/allocations.json`, read and rewritten under an exclusive `flock`
//! on `<run>/allocator.lock`, so concurrent `run-enclave` calls never hand out the same CPU, CID
//! or memory twice. An allocation whose owner (the enclave's monitor) is gone is dropped the next
//! time the allocator runs (the owner check is a callback, see [`Allocator::allocate`]).

use crate::sys::{self, SysError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Default path of the allocator configuration.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/cloister/allocator.yaml";
/// Environment variable that overrides [`DEFAULT_CONFIG_PATH`].
pub const CONFIG_ENV: &str = "CLOISTER_ALLOCATOR_CONFIG";
/// Largest allocator config file read.
const MAX_CONFIG_BYTES: u64 = 64 * 1024;
/// Largest allocation state file read.
const MAX_STATE_BYTES: u64 = 4 * 1024 * 1024;
/// Highest CPU id accepted in a CPU list.
pub const MAX_CPU_ID: u32 = 4095;
/// First CID handed out when the caller asks for CID 0.
pub const FIRST_ENCLAVE_CID: u64 = 4;
/// CIDs at or above this value are rejected (`u32::MAX` is VMADDR_CID_ANY).
pub const CID_LIMIT: u64 = u32::MAX as u64;

/// Allocator errors.
#[derive(Debug, thiserror::Error)]
pub enum AllocError {
    /// The allocator configuration cannot be read.
    #[error("cannot read allocator config {0}")]
    ConfigRead(PathBuf, #[source] std::io::Error),
    /// The allocator configuration is malformed.
    #[error("invalid allocator config {0}: {1}")]
    ConfigInvalid(PathBuf, String),
    /// A CPU list does not parse.
    #[error("invalid CPU list {0:?}: {1}")]
    CpuList(String, &'static str),
    /// The CID is reserved or out of range.
    #[error("enclave CID {0} is invalid: CIDs 1, 2 and 3 are reserved and CIDs must be below 4294967295")]
    CidInvalid(u64),
    /// Another enclave uses the CID.
    #[error("enclave CID {0} is already used by enclave {1}")]
    CidInUse(u64, String),
    /// No CID is left.
    #[error("no free enclave CID")]
    CidExhausted,
    /// A requested CPU is not in the pool.
    #[error("CPU {0} is not in the enclave CPU pool {1:?}")]
    CpuNotInPool(u32, Vec<u32>),
    /// A requested CPU is used by another enclave.
    #[error("CPU {0} is already used by enclave {1}")]
    CpuBusy(u32, String),
    /// Not enough free CPUs.
    #[error("not enough free CPUs: requested {requested}, {free} of the pool's {pool} are free")]
    CpusExhausted {
        /// CPUs asked for.
        requested: usize,
        /// CPUs free now.
        free: usize,
        /// Size of the pool.
        pool: usize,
    },
    /// Not enough free memory.
    #[error("not enough free enclave memory: requested {requested} MiB, {free} MiB of the pool's {pool} MiB are free")]
    MemoryExhausted {
        /// MiB asked for.
        requested: u64,
        /// MiB free now.
        free: u64,
        /// Size of the pool.
        pool: u64,
    },
    /// The request itself is malformed (zero CPUs, duplicate ids).
    #[error("invalid resource request: {0}")]
    BadRequest(String),
    /// Reading or writing the allocation state failed.
    #[error("allocator state {0}")]
    State(PathBuf, #[source] std::io::Error),
    /// The allocation state is corrupt.
    #[error("allocator state {0} is corrupt")]
    StateCorrupt(PathBuf, #[source] serde_json::Error),
    /// Locking the state failed.
    #[error("cannot lock allocator state")]
    Lock(#[source] SysError),
}

/// `allocator.yaml` as AWS writes it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    memory_mib: u64,
    #[serde(default)]
    cpu_count: Option<u32>,
    #[serde(default)]
    cpu_pool: Option<serde_yaml_ng::Value>,
}

/// The pool enclaves draw from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Pool {
    /// CPU ids available to enclaves.
    pub cpus: Vec<u32>,
    /// Memory available to enclaves, in MiB.
    pub memory_mib: u64,
}

impl Pool {
    /// Loads the pool from `CLOISTER_ALLOCATOR_CONFIG`, the default path, or the host default.
    pub fn load() -> Result<Self, AllocError> {
        let path = std::env::var_os(CONFIG_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH));
        match std::fs::metadata(&path) {
            Ok(_) => Self::from_file(&path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::host_default()),
            Err(e) => Err(AllocError::ConfigRead(path, e)),
        }
    }

    /// The default pool: see the module docs.
    pub fn host_default() -> Self {
        let online = sys::online_cpus();
        let cpus = if online.len() > 2 {
            online.into_iter().filter(|c| *c != 0).collect()
        } else {
            online
        };
        Pool {
            cpus,
            memory_mib: (sys::total_memory_mib() / 2).max(64),
        }
    }

    /// Parses an `allocator.yaml` file.
    pub fn from_file(path: &Path) -> Result<Self, AllocError> {
        use std::io::Read;
        let file = std::fs::File::open(path).map_err(|e| AllocError::ConfigRead(path.into(), e))?;
        let mut text = String::new();
        file.take(MAX_CONFIG_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(|e| AllocError::ConfigRead(path.into(), e))?;
        if text.len() as u64 > MAX_CONFIG_BYTES {
            return Err(AllocError::ConfigInvalid(
                path.into(),
                "file too large".into(),
            ));
        }
        Self::parse(&text).map_err(|m| AllocError::ConfigInvalid(path.into(), m))
    }

    /// Parses the YAML text of an allocator configuration.
    pub fn parse(text: &str) -> Result<Self, String> {
        let cfg: ConfigFile = serde_yaml_ng::from_str(text).map_err(|e| e.to_string())?;
        let online = sys::online_cpus();
        let cpus = match (cfg.cpu_count, cfg.cpu_pool) {
            (Some(_), Some(_)) => return Err("set either cpu_count or cpu_pool, not both".into()),
            (None, None) => return Err("cpu_count or cpu_pool is required".into()),
            (Some(n), None) => {
                let candidates: Vec<u32> = if online.len() > 2 {
                    online.iter().copied().filter(|c| *c != 0).collect()
                } else {
                    online.clone()
                };
                if n == 0 || n as usize > candidates.len() {
                    return Err(format!(
                        "cpu_count {n} does not fit the host's {} usable CPUs",
                        candidates.len()
                    ));
                }
                candidates.into_iter().take(n as usize).collect()
            }
            (None, Some(v)) => {
                let list = match v {
                    serde_yaml_ng::Value::String(s) => s,
                    serde_yaml_ng::Value::Number(n) => n.to_string(),
                    _ => return Err("cpu_pool must be a string like \"2,3,6-9\"".into()),
                };
                let cpus = parse_cpu_list(&list).map_err(|e| e.to_string())?;
                if let Some(c) = cpus.iter().find(|c| !online.contains(c)) {
                    return Err(format!("cpu_pool names CPU {c}, which is not online"));
                }
                cpus
            }
        };
        if cfg.memory_mib < 64 {
            return Err(format!("memory_mib {} is below 64", cfg.memory_mib));
        }
        Ok(Pool {
            cpus,
            memory_mib: cfg.memory_mib,
        })
    }
}

/// Parses a Linux CPU list (`"0-3,6,8-9"`) into sorted unique ids.
pub fn parse_cpu_list(text: &str) -> Result<Vec<u32>, AllocError> {
    let bad = |why| AllocError::CpuList(text.chars().take(64).collect(), why);
    let mut set = BTreeSet::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (part, part),
        };
        let a: u32 = a.parse().map_err(|_| bad("not a number"))?;
        let b: u32 = b.parse().map_err(|_| bad("not a number"))?;
        if a > b {
            return Err(bad("range goes backwards"));
        }
        if b > MAX_CPU_ID {
            return Err(bad("CPU id too large"));
        }
        set.extend(a..=b);
    }
    if set.is_empty() {
        return Err(bad("empty"));
    }
    Ok(set.into_iter().collect())
}

/// Formats CPU ids as a Linux CPU list (`"0-3,6"`).
pub fn format_cpu_list(cpus: &[u32]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut sorted = cpus.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut i = 0;
    while i < sorted.len() {
        let start = sorted[i];
        let mut end = start;
        while i + 1 < sorted.len() && sorted[i + 1] == end + 1 {
            i += 1;
            end = sorted[i];
        }
        out.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        i += 1;
    }
    out.join(",")
}

/// How many / which CPUs an enclave wants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CpuRequest {
    /// Any `n` free CPUs of the pool (lowest ids first).
    Count(u32),
    /// Exactly these CPUs.
    Ids(Vec<u32>),
}

/// What an enclave asks the allocator for.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    /// The enclave that will own the resources.
    pub enclave_id: String,
    /// The CID asked for (0: assign one).
    pub cid: u64,
    /// CPUs.
    pub cpus: CpuRequest,
    /// Memory in MiB.
    pub memory_mib: u64,
}

/// Resources held by one enclave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    /// The owner.
    pub enclave_id: String,
    /// Its CID.
    pub cid: u64,
    /// Its CPUs.
    pub cpus: Vec<u32>,
    /// Its memory in MiB.
    pub memory_mib: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct StateFile {
    allocations: Vec<Allocation>,
}

/// Validates a CID asked for by a user (0 means "assign one").
pub fn validate_cid(cid: u64) -> Result<(), AllocError> {
    if (1..FIRST_ENCLAVE_CID).contains(&cid) || cid >= CID_LIMIT {
        return Err(AllocError::CidInvalid(cid));
    }
    Ok(())
}

/// The allocator for one run directory.
#[derive(Debug, Clone)]
pub struct Allocator {
    run_dir: PathBuf,
    pool: Pool,
}

impl Allocator {
    /// An allocator over `pool` whose state lives in `run_dir`.
    pub fn new(run_dir: impl Into<PathBuf>, pool: Pool) -> Self {
        Self {
            run_dir: run_dir.into(),
            pool,
        }
    }

    /// The pool.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    fn state_path(&self) -> PathBuf {
        self.run_dir.join("allocations.json")
    }

    /// Runs `f` on the allocation list under the lock, after dropping entries whose owner is
    /// gone (`alive(enclave_id) == false`), and writes the list back atomically.
    fn with_state<T>(
        &self,
        alive: &dyn Fn(&str) -> bool,
        f: impl FnOnce(&mut Vec<Allocation>) -> Result<T, AllocError>,
    ) -> Result<T, AllocError> {
        let state_err = |e| AllocError::State(self.run_dir.clone(), e);
        std::fs::create_dir_all(&self.run_dir).map_err(state_err)?;
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.run_dir.join("allocator.lock"))
            .map_err(state_err)?;
        sys::lock_exclusive(&lock).map_err(AllocError::Lock)?;
        let path = self.state_path();
        let mut state = match std::fs::File::open(&path) {
            Ok(f) => {
                use std::io::Read;
                let mut buf = Vec::new();
                f.take(MAX_STATE_BYTES)
                    .read_to_end(&mut buf)
                    .map_err(|e| AllocError::State(path.clone(), e))?;
                serde_json::from_slice::<StateFile>(&buf)
                    .map_err(|e| AllocError::StateCorrupt(path.clone(), e))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => StateFile::default(),
            Err(e) => return Err(AllocError::State(path, e)),
        };
        state.allocations.retain(|a| alive(&a.enclave_id));
        let out = f(&mut state.allocations)?;
        let tmp = self.run_dir.join("allocations.json.tmp");
        let bytes = serde_json::to_vec_pretty(&state)
            .map_err(|e| AllocError::StateCorrupt(path.clone(), e))?;
        std::fs::write(&tmp, bytes).map_err(|e| AllocError::State(tmp.clone(), e))?;
        std::fs::rename(&tmp, &path).map_err(|e| AllocError::State(path.clone(), e))?;
        drop(lock);
        Ok(out)
    }

    /// Reserves resources for `req`. `alive` tells whether an existing owner still runs; dead
    /// owners' resources are reclaimed first.
    pub fn allocate(
        &self,
        req: &Request,
        alive: &dyn Fn(&str) -> bool,
    ) -> Result<Allocation, AllocError> {
        validate_cid(req.cid)?;
        self.with_state(alive, |list| {
            let alloc = plan(&self.pool, list, req)?;
            list.push(alloc.clone());
            Ok(alloc)
        })
    }

    /// Returns an enclave's resources to the pool. Unknown ids are ignored.
    pub fn release(
        &self,
        enclave_id: &str,
        alive: &dyn Fn(&str) -> bool,
    ) -> Result<(), AllocError> {
        self.with_state(alive, |list| {
            list.retain(|a| a.enclave_id != enclave_id);
            Ok(())
        })
    }

    /// The current allocations (after dropping dead owners).
    pub fn list(&self, alive: &dyn Fn(&str) -> bool) -> Result<Vec<Allocation>, AllocError> {
        self.with_state(alive, |list| Ok(list.clone()))
    }
}

/// Decides what `req` gets given the existing allocations (pure; no I/O).
fn plan(pool: &Pool, existing: &[Allocation], req: &Request) -> Result<Allocation, AllocError> {
    validate_cid(req.cid)?;
    let cid = if req.cid == 0 {
        let used: BTreeSet<u64> = existing.iter().map(|a| a.cid).collect();
        (FIRST_ENCLAVE_CID..CID_LIMIT)
            .find(|c| !used.contains(c))
            .ok_or(AllocError::CidExhausted)?
    } else {
        if let Some(a) = existing.iter().find(|a| a.cid == req.cid) {
            return Err(AllocError::CidInUse(req.cid, a.enclave_id.clone()));
        }
        req.cid
    };
    let owner_of = |cpu: u32| existing.iter().find(|a| a.cpus.contains(&cpu));
    let free: Vec<u32> = pool
        .cpus
        .iter()
        .copied()
        .filter(|c| owner_of(*c).is_none())
        .collect();
    let cpus = match &req.cpus {
        CpuRequest::Count(0) => {
            return Err(AllocError::BadRequest(
                "CPU count must be at least 1".into(),
            ))
        }
        CpuRequest::Count(n) => {
            if (*n as usize) > free.len() {
                return Err(AllocError::CpusExhausted {
                    requested: *n as usize,
                    free: free.len(),
                    pool: pool.cpus.len(),
                });
            }
            free[..*n as usize].to_vec()
        }
        CpuRequest::Ids(ids) => {
            if ids.is_empty() {
                return Err(AllocError::BadRequest("CPU id list is empty".into()));
            }
            let unique: BTreeSet<u32> = ids.iter().copied().collect();
            if unique.len() != ids.len() {
                return Err(AllocError::BadRequest("CPU id list has duplicates".into()));
            }
            for c in &unique {
                if !pool.cpus.contains(c) {
                    return Err(AllocError::CpuNotInPool(*c, pool.cpus.clone()));
                }
                if let Some(a) = owner_of(*c) {
                    return Err(AllocError::CpuBusy(*c, a.enclave_id.clone()));
                }
            }
            unique.into_iter().collect()
        }
    };
    let used_mem: u64 = existing.iter().map(|a| a.memory_mib).sum();
    let free_mem = pool.memory_mib.saturating_sub(used_mem);
    if req.memory_mib > free_mem {
        return Err(AllocError::MemoryExhausted {
            requested: req.memory_mib,
            free: free_mem,
            pool: pool.memory_mib,
        });
    }
    Ok(Allocation {
        enclave_id: req.enclave_id.clone(),
        cid,
        cpus,
        memory_mib: req.memory_mib,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(id: &str, cid: u64, cpus: CpuRequest, mem: u64) -> Request {
        Request {
            enclave_id: id.into(),
            cid,
            cpus,
            memory_mib: mem,
        }
    }

    #[test]
    fn cpu_lists_parse_and_format() {
        assert_eq!(parse_cpu_list("2,3,6-9").unwrap(), vec![2, 3, 6, 7, 8, 9]);
        assert_eq!(format_cpu_list(&[9, 2, 3, 6, 7, 8]), "2-3,6-9");
        assert!(parse_cpu_list("3-1").is_err());
        assert!(parse_cpu_list("x").is_err());
        assert!(parse_cpu_list("").is_err());
        assert!(parse_cpu_list("0-4294967295").is_err());
    }

    #[test]
    fn cid_rules_follow_aws() {
        for bad in [1, 2, 3, u64::from(u32::MAX), u64::MAX] {
            assert!(
                matches!(validate_cid(bad), Err(AllocError::CidInvalid(_))),
                "{bad}"
            );
        }
        validate_cid(0).unwrap();
        validate_cid(4).unwrap();
        validate_cid(u64::from(u32::MAX) - 1).unwrap();
    }

    #[test]
    fn plan_is_exclusive_and_bounded() {
        let pool = Pool {
            cpus: vec![0, 1, 2],
            memory_mib: 1024,
        };
        let a = plan(&pool, &[], &req("a", 0, CpuRequest::Count(2), 512)).unwrap();
        assert_eq!((a.cid, a.cpus.clone()), (4, vec![0, 1]));
        let existing = vec![a];
        let b = plan(&pool, &existing, &req("b", 0, CpuRequest::Count(1), 512)).unwrap();
        assert_eq!((b.cid, b.cpus.clone()), (5, vec![2]));
        assert!(matches!(
            plan(&pool, &existing, &req("c", 0, CpuRequest::Count(2), 64)),
            Err(AllocError::CpusExhausted {
                requested: 2,
                free: 1,
                pool: 3
            })
        ));
        assert!(matches!(
            plan(&pool, &existing, &req("c", 0, CpuRequest::Ids(vec![1]), 64)),
            Err(AllocError::CpuBusy(1, _))
        ));
        assert!(matches!(
            plan(&pool, &existing, &req("c", 0, CpuRequest::Ids(vec![7]), 64)),
            Err(AllocError::CpuNotInPool(7, _))
        ));
        assert!(matches!(
            plan(&pool, &existing, &req("c", 4, CpuRequest::Count(1), 64)),
            Err(AllocError::CidInUse(4, _))
        ));
        assert!(matches!(
            plan(&pool, &existing, &req("c", 0, CpuRequest::Count(1), 513)),
            Err(AllocError::MemoryExhausted { free: 512, .. })
        ));
    }

    #[test]
    fn state_is_shared_and_dead_owners_are_reclaimed() {
        let dir = tempfile::tempdir().unwrap();
        let pool = Pool {
            cpus: vec![0, 1],
            memory_mib: 256,
        };
        let alloc = Allocator::new(dir.path(), pool.clone());
        let all_alive = |_: &str| true;
        alloc
            .allocate(&req("a", 0, CpuRequest::Count(1), 128), &all_alive)
            .unwrap();
        let other = Allocator::new(dir.path(), pool);
        let b = other
            .allocate(&req("b", 0, CpuRequest::Count(1), 128), &all_alive)
            .unwrap();
        assert_eq!(b.cpus, vec![1]);
        assert!(other
            .allocate(&req("c", 0, CpuRequest::Count(1), 1), &all_alive)
            .is_err());
        // "a" died: its resources come back.
        let c = other
            .allocate(&req("c", 0, CpuRequest::Count(1), 128), &|id: &str| {
                id != "a"
            })
            .unwrap();
        assert_eq!((c.cid, c.cpus), (4, vec![0]));
        other.release("b", &all_alive).unwrap();
        let ids: Vec<String> = other
            .list(&all_alive)
            .unwrap()
            .into_iter()
            .map(|a| a.enclave_id)
            .collect();
        assert_eq!(ids, vec!["c".to_owned()]);
    }

    #[test]
    fn config_parses_aws_format() {
        let p = Pool::parse("memory_mib: 512\ncpu_pool: \"0\"\n").unwrap();
        assert_eq!(
            p,
            Pool {
                cpus: vec![0],
                memory_mib: 512
            }
        );
        assert!(Pool::parse("memory_mib: 512\n").is_err());
        assert!(Pool::parse("memory_mib: 512\ncpu_count: 1\ncpu_pool: \"0\"\n").is_err());
        assert!(Pool::parse("memory_mib: 512\ncpu_count: 1\nbogus: 1\n").is_err());
        assert!(Pool::parse("memory_mib: 16\ncpu_count: 1\n").is_err());
        assert!(Pool::parse("memory_mib: 512\ncpu_pool: \"4000\"\n").is_err());
        assert_eq!(
            Pool::parse("memory_mib: 512\ncpu_count: 1\n")
                .unwrap()
                .cpus
                .len(),
            1
        );
    }
}
