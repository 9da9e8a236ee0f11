//! The enclave resource allocator: CPUs, memory and CIDs from a host pool.
//!
//! The pool comes from `allocator.yaml` in AWS's format (`memory_mib` plus either `cpu_count`
//! or `cpu_pool: "2,3,6-9"`), read from `CLOISTER_ALLOCATOR_CONFIG` or
//! `/etc/cloister/allocator.yaml`. As with nitro-cli, enclaves get whole physical cores,
//! exclusively: the host's SMT siblings ([`Topology`], from sysfs) are never split between an
//! enclave and anything else. A `cpu_pool` that holds part of a core, or anything of CPU 0's
//! core, is invalid; `cpu_count` and `--cpu-count` must be multiples of the threads per core;
//! `--cpu-ids` must list whole cores. Without a file the default pool is every core but CPU
//! 0's, and half of the host's memory. Hosts with at most [`SMALL_HOST_CPUS`] CPUs (or a
//! single core) are the exception: there CPU 0's core is in the pool, since an enclave could
//! get no CPU otherwise (shared with the host, still exclusive between enclaves).
//!
//! Allocations live in `<run>/allocations.json`, read and rewritten under an exclusive `flock`
//! on `<run>/allocator.lock`, so concurrent `run-enclave` calls never hand out the same CPU, CID
//! or memory twice. An allocation whose owner (the enclave's monitor) is gone is dropped the next
//! time the allocator runs (the owner check is a callback, see [`Allocator::allocate`]).
//!
//! Each allocation also holds a host uid (and gid) of its own ([`Allocation::host_id`]): the
//! unprivileged host user that a process enclave's root maps to and that a VM enclave's QEMU
//! runs as. No two live enclaves share one, whatever their CIDs, so one enclave can never
//! signal, ptrace or read the memory of another's processes. The uid is `UID_BASE + CID` when
//! that is free (the usual case), else the lowest free one of the range.

use crate::sys::{self, SysError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Default path of the allocator configuration.
pub const DEFAULT_CONFIG_PATH: &str = crate::config::DEFAULT_ALLOCATOR_CONFIG;
/// Environment variable that overrides [`DEFAULT_CONFIG_PATH`].
pub const CONFIG_ENV: &str = crate::config::ALLOCATOR_CONFIG_ENV;
/// Largest allocator config file read.
const MAX_CONFIG_BYTES: u64 = 64 * 1024;
/// Largest allocation state file read.
const MAX_STATE_BYTES: u64 = 4 * 1024 * 1024;
/// Highest CPU id accepted in a CPU list.
pub const MAX_CPU_ID: u32 = 4095;
/// Where sysfs is mounted on a real host.
pub const SYSFS_ROOT: &str = "/sys";
/// Largest sysfs file read (CPU lists).
const MAX_SYSFS_BYTES: u64 = 16 * 1024;
/// Hosts with at most this many CPUs keep CPU 0's core in the enclave pool.
pub const SMALL_HOST_CPUS: usize = 2;
/// First CID handed out when the caller asks for CID 0.
pub const FIRST_ENCLAVE_CID: u64 = 4;
/// CIDs at or above this value are rejected (`u32::MAX` is VMADDR_CID_ANY).
pub const CID_LIMIT: u64 = u32::MAX as u64;
/// First host uid (and gid) used for enclave roots.
pub const UID_BASE: u32 = 1_000_000_000;
/// Number of enclave uids: every live enclave holds one of `UID_BASE..UID_BASE + UID_SPAN`
/// of its own ([`Allocation::host_id`]).
pub const UID_SPAN: u32 = 1_000_000_000;

/// Allocator errors.
#[derive(Debug, thiserror::Error)]
pub enum AllocError {
    /// The allocator configuration cannot be read.
    #[error("cannot read allocator config {0}")]
    ConfigRead(PathBuf, #[source] std::io::Error),
    /// The allocator configuration is malformed.
    #[error("invalid allocator config {0}: {1}")]
    ConfigInvalid(PathBuf, ConfigError),
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
    /// No enclave host uid is left.
    #[error("no free enclave host uid")]
    HostIdExhausted,
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

/// What is wrong with an allocator configuration (the text after its path in
/// [`AllocError::ConfigInvalid`]).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file exceeds the size read.
    #[error("file too large")]
    TooLarge,
    /// The YAML does not parse into AWS's format.
    #[error("{0}")]
    Yaml(serde_yaml_ng::Error),
    /// Both CPU settings are given.
    #[error("set either cpu_count or cpu_pool, not both")]
    BothCpuSettings,
    /// Neither CPU setting is given.
    #[error("cpu_count or cpu_pool is required")]
    NoCpuSetting,
    /// `cpu_pool` is neither a string nor a number.
    #[error("cpu_pool must be a string like \"2,3,6-9\"")]
    PoolNotAList,
    /// `cpu_pool` is not a CPU list.
    #[error("invalid CPU list {0:?}: {1}")]
    CpuList(String, &'static str),
    /// `memory_mib` is below the minimum.
    #[error("memory_mib {0} is below 64")]
    MemoryTooSmall(u64),
    /// `cpu_count` is zero or more than the enclave cores hold.
    #[error(
        "cpu_count {n} does not fit the host's {usable} usable CPUs{}",
        if *.cpu0_reserved { " (CPU 0's core stays with the host)" } else { "" }
    )]
    CountDoesNotFit {
        /// CPUs asked for.
        n: u32,
        /// CPUs of the enclave cores.
        usable: usize,
        /// Whether CPU 0's core stays with the host.
        cpu0_reserved: bool,
    },
    /// `cpu_count` would split a core.
    #[error(
        "cpu_count {n} is not a multiple of the host's {threads} threads per core: enclaves \
         take whole cores"
    )]
    CountSplitsCores {
        /// CPUs asked for.
        n: u32,
        /// Threads per core.
        threads: u32,
    },
    /// No set of whole enclave cores adds up to `cpu_count`.
    #[error("cpu_count {0} cannot be made of whole cores of this host's enclave cores")]
    CountNotWholeCores(u32),
    /// `cpu_pool` names CPUs that are not online.
    #[error("cpu_pool names CPU(s) {}, which are not online", format_cpu_list(.0))]
    PoolOffline(Vec<u32>),
    /// `cpu_pool` holds part of a core.
    #[error(
        "cpu_pool holds CPU(s) {} but not their sibling(s) {} of the same core: enclaves \
         take whole cores, so list all of {} or none",
        format_cpu_list(.held),
        format_cpu_list(.missing),
        format_cpu_list(.core)
    )]
    PoolSplitsCore {
        /// The core's CPUs in the pool.
        held: Vec<u32>,
        /// Its CPUs not in the pool.
        missing: Vec<u32>,
        /// The whole core.
        core: Vec<u32>,
    },
    /// `cpu_pool` holds CPUs of CPU 0's core, which the host keeps.
    #[error(
        "cpu_pool holds CPU(s) {} of CPU 0's core, which stays with the host",
        format_cpu_list(.0)
    )]
    PoolHasCpu0Core(Vec<u32>),
}

/// Why explicit cores do not make a [`Topology`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TopologyError {
    /// A core without CPUs.
    #[error("a core has no CPU")]
    EmptyCore,
    /// A CPU in two cores (or twice in one).
    #[error("a CPU appears twice")]
    DuplicateCpu,
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

/// The host's online CPUs grouped into physical cores (SMT siblings together).
///
/// Read from `<sysfs>/devices/system/cpu/online` and each CPU's
/// `topology/thread_siblings_list`; the sysfs root is a parameter so tests can describe any
/// host. A CPU whose siblings file cannot be read counts as a core of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// Disjoint cores, each sorted, ordered by their lowest CPU id.
    cores: Vec<Vec<u32>>,
}

impl Topology {
    /// Reads the topology of the host whose sysfs is mounted at `sysfs_root` (normally
    /// [`SYSFS_ROOT`]).
    pub fn read(sysfs_root: &Path) -> Self {
        let cpu_dir = sysfs_root.join("devices/system/cpu");
        let online = read_small(&cpu_dir.join("online"))
            .and_then(|t| parse_cpu_list(t.trim()).ok())
            .unwrap_or_else(|| {
                let n = std::thread::available_parallelism().map_or(1, |n| n.get());
                (0..u32::try_from(n).unwrap_or(u32::MAX).min(MAX_CPU_ID + 1)).collect()
            });
        let online_set: BTreeSet<u32> = online.iter().copied().collect();
        let mut assigned = BTreeSet::new();
        let mut cores = Vec::new();
        for &cpu in &online {
            if assigned.contains(&cpu) {
                continue;
            }
            let siblings = read_small(
                &cpu_dir
                    .join(format!("cpu{cpu}"))
                    .join("topology/thread_siblings_list"),
            )
            .and_then(|t| parse_cpu_list(t.trim()).ok())
            .unwrap_or_default();
            let mut core: BTreeSet<u32> = siblings
                .into_iter()
                .filter(|c| online_set.contains(c) && !assigned.contains(c))
                .collect();
            core.insert(cpu);
            assigned.extend(core.iter().copied());
            cores.push(core.into_iter().collect());
        }
        Topology { cores }
    }

    /// The topology of the running host ([`SYSFS_ROOT`]).
    pub fn host() -> Self {
        Self::read(Path::new(SYSFS_ROOT))
    }

    /// A topology from explicit cores (each a list of sibling CPU ids). Fails when a core is
    /// empty or a CPU appears twice.
    pub fn from_cores(cores: Vec<Vec<u32>>) -> Result<Self, TopologyError> {
        let mut seen = BTreeSet::new();
        let mut out = Vec::with_capacity(cores.len());
        for core in cores {
            let set: BTreeSet<u32> = core.iter().copied().collect();
            if set.is_empty() {
                return Err(TopologyError::EmptyCore);
            }
            if set.len() != core.len() || set.iter().any(|c| !seen.insert(*c)) {
                return Err(TopologyError::DuplicateCpu);
            }
            out.push(set.into_iter().collect::<Vec<u32>>());
        }
        out.sort();
        Ok(Topology { cores: out })
    }

    /// Every CPU its own core (no SMT).
    pub fn single_threaded(cpus: &[u32]) -> Self {
        let set: BTreeSet<u32> = cpus.iter().copied().collect();
        Topology {
            cores: set.into_iter().map(|c| vec![c]).collect(),
        }
    }

    /// The cores, ordered by their lowest CPU id.
    pub fn cores(&self) -> &[Vec<u32>] {
        &self.cores
    }

    /// Every online CPU, sorted.
    pub fn online(&self) -> Vec<u32> {
        let mut all: Vec<u32> = self.cores.iter().flatten().copied().collect();
        all.sort_unstable();
        all
    }

    /// The core `cpu` belongs to.
    pub fn core_of(&self, cpu: u32) -> Option<&[u32]> {
        self.cores
            .iter()
            .find(|c| c.contains(&cpu))
            .map(Vec::as_slice)
    }

    /// Threads per core when every core has the same number, else `None`.
    pub fn threads_per_core(&self) -> Option<u32> {
        let first = self.cores.first()?.len();
        self.cores
            .iter()
            .all(|c| c.len() == first)
            .then(|| u32::try_from(first).ok())
            .flatten()
    }

    /// Whether CPU 0's core stays with the host: nitro-cli's rule, applied when the host has
    /// more than [`SMALL_HOST_CPUS`] CPUs and another core. On smaller hosts no enclave could
    /// get a CPU otherwise, so CPU 0's core may be shared (still exclusive between enclaves).
    pub fn reserves_cpu0_core(&self) -> bool {
        self.cores.len() > 1 && self.cores.iter().map(Vec::len).sum::<usize>() > SMALL_HOST_CPUS
    }

    /// The cores enclaves may use by default: all but CPU 0's when [`Self::reserves_cpu0_core`].
    pub fn enclave_cores(&self) -> Vec<Vec<u32>> {
        let reserve = self.reserves_cpu0_core();
        self.cores
            .iter()
            .filter(|c| !(reserve && c.contains(&0)))
            .cloned()
            .collect()
    }
}

/// Reads a small sysfs file (at most [`MAX_SYSFS_BYTES`]).
fn read_small(path: &Path) -> Option<String> {
    use std::io::Read;
    let f = std::fs::File::open(path).ok()?;
    let mut text = String::new();
    f.take(MAX_SYSFS_BYTES).read_to_string(&mut text).ok()?;
    Some(text)
}

/// The pool enclaves draw from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Pool {
    /// CPU ids available to enclaves.
    pub cpus: Vec<u32>,
    /// Memory available to enclaves, in MiB.
    pub memory_mib: u64,
    /// The pool's CPUs grouped into whole cores; enclaves get whole cores only.
    pub cores: Vec<Vec<u32>>,
}

impl Pool {
    /// A pool of whole `cores` and `memory_mib`.
    pub fn from_cores(cores: Vec<Vec<u32>>, memory_mib: u64) -> Self {
        let mut cpus: Vec<u32> = cores.iter().flatten().copied().collect();
        cpus.sort_unstable();
        Pool {
            cpus,
            memory_mib,
            cores,
        }
    }

    /// A pool on a host without SMT: every CPU its own core.
    pub fn single_threaded(cpus: &[u32], memory_mib: u64) -> Self {
        Self::from_cores(Topology::single_threaded(cpus).cores, memory_mib)
    }

    /// Loads the pool from `CLOISTER_ALLOCATOR_CONFIG`, the default path, or the host default.
    pub fn load() -> Result<Self, AllocError> {
        let path = crate::config::RuntimeConfig::current()
            .allocator_config
            .clone();
        let topology = Topology::host();
        match std::fs::metadata(&path) {
            Ok(_) => Self::from_file_with(&path, &topology),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Ok(Self::default_with(&topology, sys::total_memory_mib()))
            }
            Err(e) => Err(AllocError::ConfigRead(path, e)),
        }
    }

    /// The default pool of this host: see the module docs.
    pub fn host_default() -> Self {
        Self::default_with(&Topology::host(), sys::total_memory_mib())
    }

    /// The default pool of a host with `topology` and `host_memory_mib` of memory: its
    /// [`Topology::enclave_cores`] and half the memory (at least 64 MiB).
    pub fn default_with(topology: &Topology, host_memory_mib: u64) -> Self {
        Self::from_cores(topology.enclave_cores(), (host_memory_mib / 2).max(64))
    }

    /// Parses an `allocator.yaml` file against the running host's topology.
    pub fn from_file(path: &Path) -> Result<Self, AllocError> {
        Self::from_file_with(path, &Topology::host())
    }

    /// Parses an `allocator.yaml` file against `topology`.
    pub fn from_file_with(path: &Path, topology: &Topology) -> Result<Self, AllocError> {
        use std::io::Read;
        let file = std::fs::File::open(path).map_err(|e| AllocError::ConfigRead(path.into(), e))?;
        let mut text = String::new();
        file.take(MAX_CONFIG_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(|e| AllocError::ConfigRead(path.into(), e))?;
        if text.len() as u64 > MAX_CONFIG_BYTES {
            return Err(AllocError::ConfigInvalid(
                path.into(),
                ConfigError::TooLarge,
            ));
        }
        Self::parse_with(&text, topology).map_err(|m| AllocError::ConfigInvalid(path.into(), m))
    }

    /// Parses the YAML text of an allocator configuration against the running host.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        Self::parse_with(text, &Topology::host())
    }

    /// Parses the YAML text of an allocator configuration against `topology`.
    ///
    /// `cpu_pool` must name online CPUs as whole cores and, where the host keeps it
    /// ([`Topology::reserves_cpu0_core`]), nothing of CPU 0's core; `cpu_count` takes that many
    /// CPUs as whole cores from [`Topology::enclave_cores`].
    pub fn parse_with(text: &str, topology: &Topology) -> Result<Self, ConfigError> {
        let cfg: ConfigFile = serde_yaml_ng::from_str(text).map_err(ConfigError::Yaml)?;
        let cores = match (cfg.cpu_count, cfg.cpu_pool) {
            (Some(_), Some(_)) => return Err(ConfigError::BothCpuSettings),
            (None, None) => return Err(ConfigError::NoCpuSetting),
            (Some(n), None) => count_cores(topology, n)?,
            (None, Some(v)) => {
                let list = match v {
                    serde_yaml_ng::Value::String(s) => s,
                    serde_yaml_ng::Value::Number(n) => n.to_string(),
                    _ => return Err(ConfigError::PoolNotAList),
                };
                let cpus = cpu_list(&list).map_err(|(l, why)| ConfigError::CpuList(l, why))?;
                pool_cores(topology, &cpus)?
            }
        };
        if cfg.memory_mib < 64 {
            return Err(ConfigError::MemoryTooSmall(cfg.memory_mib));
        }
        Ok(Self::from_cores(cores, cfg.memory_mib))
    }
}

/// `cpu_count: n`: the first whole cores of the enclave cores that add up to `n` CPUs.
fn count_cores(topology: &Topology, n: u32) -> Result<Vec<Vec<u32>>, ConfigError> {
    let candidates = topology.enclave_cores();
    let usable: usize = candidates.iter().map(Vec::len).sum();
    let wanted = usize::try_from(n).unwrap_or(usize::MAX);
    if n == 0 || wanted > usable {
        return Err(ConfigError::CountDoesNotFit {
            n,
            usable,
            cpu0_reserved: topology.reserves_cpu0_core(),
        });
    }
    if let Some(threads) = topology.threads_per_core() {
        if n % threads != 0 {
            return Err(ConfigError::CountSplitsCores { n, threads });
        }
    }
    take_whole_cores(candidates.iter(), wanted).ok_or(ConfigError::CountNotWholeCores(n))
}

/// `cpu_pool`: checks that `cpus` are online, whole cores, and (where reserved) not CPU 0's
/// core; returns them grouped into cores.
fn pool_cores(topology: &Topology, cpus: &[u32]) -> Result<Vec<Vec<u32>>, ConfigError> {
    let offline: Vec<u32> = cpus
        .iter()
        .copied()
        .filter(|c| topology.core_of(*c).is_none())
        .collect();
    if !offline.is_empty() {
        return Err(ConfigError::PoolOffline(offline));
    }
    let wanted: BTreeSet<u32> = cpus.iter().copied().collect();
    let mut cores: Vec<Vec<u32>> = Vec::new();
    for core in topology.cores() {
        let held: Vec<u32> = core
            .iter()
            .copied()
            .filter(|c| wanted.contains(c))
            .collect();
        if held.is_empty() {
            continue;
        }
        if held.len() != core.len() {
            let missing: Vec<u32> = core
                .iter()
                .copied()
                .filter(|c| !wanted.contains(c))
                .collect();
            return Err(ConfigError::PoolSplitsCore {
                held,
                missing,
                core: core.clone(),
            });
        }
        if core.contains(&0) && topology.reserves_cpu0_core() {
            return Err(ConfigError::PoolHasCpu0Core(held));
        }
        cores.push(core.clone());
    }
    Ok(cores)
}

/// Picks whole cores, in order, that add up to exactly `n` CPUs (`None` if they cannot).
fn take_whole_cores<'a>(
    cores: impl Iterator<Item = &'a Vec<u32>>,
    n: usize,
) -> Option<Vec<Vec<u32>>> {
    let mut out = Vec::new();
    let mut left = n;
    for core in cores {
        if left == 0 {
            break;
        }
        if core.len() <= left {
            left -= core.len();
            out.push(core.clone());
        }
    }
    (left == 0).then_some(out)
}

/// Parses a Linux CPU list (`"0-3,6,8-9"`) into sorted unique ids.
pub fn parse_cpu_list(text: &str) -> Result<Vec<u32>, AllocError> {
    cpu_list(text).map_err(|(list, why)| AllocError::CpuList(list, why))
}

/// [`parse_cpu_list`]'s parser; an error is (the list's first 64 characters, why).
fn cpu_list(text: &str) -> Result<Vec<u32>, (String, &'static str)> {
    let bad = |why| (text.chars().take(64).collect::<String>(), why);
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
    /// Its host uid and gid, its own among the live enclaves (0 in a state written before
    /// uids were allocated: such an entry holds [`preferred_host_id`] of its CID).
    #[serde(default)]
    pub host_id: u32,
}

impl Allocation {
    /// The host uid this allocation holds.
    pub fn held_host_id(&self) -> u32 {
        if self.host_id == 0 {
            preferred_host_id(self.cid)
        } else {
            self.host_id
        }
    }
}

/// The host uid an enclave of CID `cid` gets when it is free: `UID_BASE + cid` reduced into
/// the range.
pub fn preferred_host_id(cid: u64) -> u32 {
    // The remainder is below UID_SPAN, a u32.
    UID_BASE + u32::try_from(cid % u64::from(UID_SPAN)).unwrap_or(0)
}

/// A host uid that no allocation of `existing` holds: [`preferred_host_id`] of `cid` when free,
/// else the lowest free one.
fn free_host_id(existing: &[Allocation], cid: u64) -> Result<u32, AllocError> {
    let used: BTreeSet<u32> = existing.iter().map(Allocation::held_host_id).collect();
    let preferred = preferred_host_id(cid);
    if !used.contains(&preferred) {
        return Ok(preferred);
    }
    // At most `existing.len() + 1` candidates need to be looked at.
    (UID_BASE..UID_BASE + UID_SPAN)
        .find(|id| !used.contains(id))
        .ok_or(AllocError::HostIdExhausted)
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
        sys::replace_file(&tmp, &path, &bytes).map_err(|e| AllocError::State(path.clone(), e))?;
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

/// Threads per core when every core of `cores` has the same number.
fn uniform_threads(cores: &[Vec<u32>]) -> Option<usize> {
    let first = cores.first()?.len();
    cores.iter().all(|c| c.len() == first).then_some(first)
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
    let cpus = match &req.cpus {
        CpuRequest::Count(0) => {
            return Err(AllocError::BadRequest(
                "CPU count must be at least 1".into(),
            ))
        }
        CpuRequest::Count(n) => {
            let n = *n as usize;
            if let Some(t) = uniform_threads(&pool.cores) {
                if n % t != 0 {
                    return Err(AllocError::BadRequest(format!(
                        "CPU count {n} is not a multiple of the host's {t} threads per core: enclaves take whole cores"
                    )));
                }
            }
            // A core is free only if none of its threads is held.
            let free_cores: Vec<&Vec<u32>> = pool
                .cores
                .iter()
                .filter(|core| core.iter().all(|c| owner_of(*c).is_none()))
                .collect();
            let free: usize = free_cores.iter().map(|c| c.len()).sum();
            let picked =
                take_whole_cores(free_cores.into_iter(), n).ok_or(AllocError::CpusExhausted {
                    requested: n,
                    free,
                    pool: pool.cpus.len(),
                })?;
            let mut cpus: Vec<u32> = picked.into_iter().flatten().collect();
            cpus.sort_unstable();
            cpus
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
            }
            for core in &pool.cores {
                let held: Vec<u32> = core
                    .iter()
                    .copied()
                    .filter(|c| unique.contains(c))
                    .collect();
                if !held.is_empty() && held.len() != core.len() {
                    return Err(AllocError::BadRequest(format!(
                        "CPU ids {} are part of the core {}: enclaves take whole cores, so the \
                         CPU ids must list every thread of each core",
                        format_cpu_list(&held),
                        format_cpu_list(core)
                    )));
                }
            }
            for c in &unique {
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
        host_id: free_host_id(existing, cid)?,
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
        let pool = Pool::single_threaded(&[0, 1, 2], 1024);
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
        let pool = Pool::single_threaded(&[0, 1], 256);
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
    fn host_uids_are_never_shared_by_live_enclaves() {
        let dir = tempfile::tempdir().unwrap();
        let alloc = Allocator::new(dir.path(), Pool::single_threaded(&[0, 1, 2, 3], 1024));
        let all_alive = |_: &str| true;
        // CIDs 5 and 1_000_000_005 map to the same uid by CID alone.
        let a = alloc
            .allocate(&req("a", 5, CpuRequest::Count(1), 64), &all_alive)
            .unwrap();
        assert_eq!(a.host_id, UID_BASE + 5);
        let b = alloc
            .allocate(
                &req("b", 1_000_000_005, CpuRequest::Count(1), 64),
                &all_alive,
            )
            .unwrap();
        assert_ne!(b.host_id, a.host_id);
        assert!((UID_BASE..UID_BASE + UID_SPAN).contains(&b.host_id));
        // An entry written before uids were allocated holds its CID's uid.
        let c = plan(
            &alloc.pool,
            &[Allocation {
                enclave_id: "old".into(),
                cid: 2_000_000_007,
                cpus: vec![3],
                memory_mib: 64,
                host_id: 0,
            }],
            &req("c", 7, CpuRequest::Count(1), 64),
        )
        .unwrap();
        assert_ne!(c.host_id, UID_BASE + 7);
        // Every live enclave's uid is distinct, and the state records them.
        let ids: BTreeSet<u32> = alloc
            .list(&all_alive)
            .unwrap()
            .iter()
            .map(|a| a.host_id)
            .collect();
        assert_eq!(ids.len(), 2);
        // Released with the enclave: "b" gets the freed uid back, "a" is gone.
        alloc.release("a", &all_alive).unwrap();
        alloc.release("b", &all_alive).unwrap();
        let b2 = alloc
            .allocate(
                &req("b", 1_000_000_005, CpuRequest::Count(1), 64),
                &all_alive,
            )
            .unwrap();
        assert_eq!(b2.host_id, UID_BASE + 5);
        // A dead owner's uid is reclaimed too.
        let d = alloc
            .allocate(&req("d", 5, CpuRequest::Count(1), 64), &|id: &str| {
                id != "b"
            })
            .unwrap();
        assert_eq!(d.host_id, UID_BASE + 5);
    }

    #[test]
    fn config_parses_aws_format() {
        let host = Topology::single_threaded(&[0, 1]);
        let parse = |text: &str| Pool::parse_with(text, &host).map_err(|e| e.to_string());
        assert_eq!(
            parse("memory_mib: 512\ncpu_pool: \"0\"\n").unwrap(),
            Pool::single_threaded(&[0], 512)
        );
        assert!(parse("memory_mib: 512\n").is_err());
        assert!(parse("memory_mib: 512\ncpu_count: 1\ncpu_pool: \"0\"\n").is_err());
        assert!(parse("memory_mib: 512\ncpu_count: 1\nbogus: 1\n").is_err());
        assert!(parse("memory_mib: 16\ncpu_count: 1\n").is_err());
        assert!(parse("memory_mib: 512\ncpu_pool: \"4000\"\n")
            .unwrap_err()
            .contains("4000"));
        assert_eq!(
            parse("memory_mib: 512\ncpu_count: 1\n").unwrap().cpus,
            vec![0]
        );
        // The running host's topology reads and its default pool is made of whole cores.
        let real = Topology::host();
        assert!(!real.online().is_empty());
        let default = Pool::default_with(&real, 4096);
        for core in &default.cores {
            assert_eq!(real.core_of(core[0]), Some(core.as_slice()));
        }
    }

    /// Writes a fake sysfs: `online` and each CPU's `thread_siblings_list` (`None`: no file).
    fn fake_sysfs(online: &str, siblings: &[(u32, Option<&str>)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let cpu = dir.path().join("devices/system/cpu");
        std::fs::create_dir_all(&cpu).unwrap();
        std::fs::write(cpu.join("online"), format!("{online}\n")).unwrap();
        for (n, list) in siblings {
            let topo = cpu.join(format!("cpu{n}/topology"));
            std::fs::create_dir_all(&topo).unwrap();
            if let Some(list) = list {
                std::fs::write(topo.join("thread_siblings_list"), format!("{list}\n")).unwrap();
            }
        }
        dir
    }

    /// An 8-CPU host with 2 threads per core, siblings `n` and `n + 4` (as Intel numbers them).
    fn smt_host() -> (tempfile::TempDir, Topology) {
        let sibs: Vec<(u32, String)> = (0..8)
            .map(|n| (n, format!("{},{}", n % 4, n % 4 + 4)))
            .collect();
        let refs: Vec<(u32, Option<&str>)> =
            sibs.iter().map(|(n, s)| (*n, Some(s.as_str()))).collect();
        let dir = fake_sysfs("0-7", &refs);
        let topo = Topology::read(dir.path());
        (dir, topo)
    }

    #[test]
    fn topology_groups_smt_siblings() {
        let (_dir, topo) = smt_host();
        assert_eq!(
            topo.cores(),
            &[vec![0, 4], vec![1, 5], vec![2, 6], vec![3, 7]]
        );
        assert_eq!(topo.threads_per_core(), Some(2));
        assert!(topo.reserves_cpu0_core());
        assert_eq!(topo.core_of(6), Some(&[2, 6][..]));
        // The default pool: every core but CPU 0's.
        let pool = Pool::default_with(&topo, 2048);
        assert_eq!(pool.cpus, vec![1, 2, 3, 5, 6, 7]);
        assert_eq!(pool.cores, vec![vec![1, 5], vec![2, 6], vec![3, 7]]);
        assert_eq!(pool.memory_mib, 1024);

        // Missing siblings files and offline siblings: such a CPU is a core of its own.
        let dir = fake_sysfs("0-2", &[(0, Some("0,3")), (1, None), (2, Some("2"))]);
        let topo = Topology::read(dir.path());
        assert_eq!(topo.cores(), &[vec![0], vec![1], vec![2]]);
        assert!(topo.reserves_cpu0_core());
        // A siblings list that is garbage counts as no list.
        let dir = fake_sysfs("0-1", &[(0, Some("zz")), (1, Some("0-1"))]);
        assert_eq!(Topology::read(dir.path()).cores(), &[vec![0], vec![1]]);
        assert!(Topology::from_cores(vec![vec![0, 1], vec![1]]).is_err());
        assert!(Topology::from_cores(vec![vec![]]).is_err());
    }

    #[test]
    fn cpu_pool_must_be_whole_cores_without_cpu0s() {
        let (_dir, topo) = smt_host();
        let parse = |pool: &str| {
            Pool::parse_with(&format!("memory_mib: 512\ncpu_pool: \"{pool}\"\n"), &topo)
                .map_err(|e| e.to_string())
        };
        assert_eq!(
            parse("1,5,2,6").unwrap().cores,
            vec![vec![1, 5], vec![2, 6]]
        );
        assert_eq!(parse("1-3,5-7").unwrap().cpus, vec![1, 2, 3, 5, 6, 7]);
        let half = parse("1,2").unwrap_err();
        assert!(
            half.contains("CPU(s) 1 but not their sibling(s) 5"),
            "{half}"
        );
        assert!(half.contains("whole cores"), "{half}");
        let cpu0 = parse("0,4").unwrap_err();
        assert!(cpu0.contains("CPU(s) 0,4 of CPU 0's core"), "{cpu0}");
        assert!(parse("0-7").unwrap_err().contains("CPU 0's core"));
        assert!(parse("4,1,5").unwrap_err().contains("CPU(s) 4"));
        assert!(parse("1,5,9")
            .unwrap_err()
            .contains("9, which are not online"));
        // The file path maps to the config error.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("allocator.yaml");
        std::fs::write(&file, "memory_mib: 512\ncpu_pool: \"3\"\n").unwrap();
        assert!(matches!(
            Pool::from_file_with(&file, &topo),
            Err(AllocError::ConfigInvalid(_, m)) if m.to_string().contains("sibling(s) 7")
        ));
    }

    #[test]
    fn cpu_count_config_takes_whole_cores() {
        let (_dir, topo) = smt_host();
        let parse = |n: u32| {
            Pool::parse_with(&format!("memory_mib: 512\ncpu_count: {n}\n"), &topo)
                .map_err(|e| e.to_string())
        };
        assert_eq!(parse(4).unwrap().cores, vec![vec![1, 5], vec![2, 6]]);
        assert!(parse(3)
            .unwrap_err()
            .contains("multiple of the host's 2 threads per core"));
        assert!(parse(8)
            .unwrap_err()
            .contains("CPU 0's core stays with the host"));
        assert!(parse(0).is_err());
    }

    #[test]
    fn requests_take_whole_cores() {
        let (_dir, topo) = smt_host();
        let pool = Pool::default_with(&topo, 4096);
        let a = plan(&pool, &[], &req("a", 0, CpuRequest::Count(2), 64)).unwrap();
        assert_eq!(a.cpus, vec![1, 5]);
        for odd in [1, 3] {
            let e = plan(&pool, &[], &req("b", 0, CpuRequest::Count(odd), 64)).unwrap_err();
            assert!(
                matches!(&e, AllocError::BadRequest(m) if m.contains("multiple of the host's 2 threads per core")),
                "{e}"
            );
        }
        let existing = vec![a];
        let b = plan(&pool, &existing, &req("b", 0, CpuRequest::Count(4), 64)).unwrap();
        assert_eq!(b.cpus, vec![2, 3, 6, 7]);
        assert!(matches!(
            plan(&pool, &existing, &req("b", 0, CpuRequest::Count(6), 64)),
            Err(AllocError::CpusExhausted {
                requested: 6,
                free: 4,
                pool: 6
            })
        ));
        // --cpu-ids: whole cores only, in the pool, free.
        let c = plan(
            &pool,
            &existing,
            &req("c", 0, CpuRequest::Ids(vec![6, 2]), 64),
        )
        .unwrap();
        assert_eq!(c.cpus, vec![2, 6]);
        let half = plan(&pool, &existing, &req("c", 0, CpuRequest::Ids(vec![2]), 64)).unwrap_err();
        assert!(
            matches!(&half, AllocError::BadRequest(m) if m.contains("CPU ids 2 are part of the core 2,6")),
            "{half}"
        );
        assert!(matches!(
            plan(
                &pool,
                &existing,
                &req("c", 0, CpuRequest::Ids(vec![1, 5]), 64)
            ),
            Err(AllocError::CpuBusy(1, _))
        ));
        assert!(matches!(
            plan(
                &pool,
                &existing,
                &req("c", 0, CpuRequest::Ids(vec![0, 4]), 64)
            ),
            Err(AllocError::CpuNotInPool(0, _))
        ));
        // A core of which any thread is held (a state written before the whole-core rule) is
        // not free.
        let stale = vec![Allocation {
            enclave_id: "old".into(),
            cid: 4,
            cpus: vec![5],
            memory_mib: 64,
            host_id: 0,
        }];
        let d = plan(&pool, &stale, &req("d", 0, CpuRequest::Count(2), 64)).unwrap();
        assert_eq!(d.cpus, vec![2, 6]);
    }

    #[test]
    fn small_hosts_keep_cpu0s_core_in_the_pool() {
        // Two CPUs without SMT: no other way to run an enclave.
        let two = Topology::single_threaded(&[0, 1]);
        assert!(!two.reserves_cpu0_core());
        assert_eq!(Pool::default_with(&two, 1024).cpus, vec![0, 1]);
        // One core with two threads: the only core, taken whole.
        let dir = fake_sysfs("0-1", &[(0, Some("0-1")), (1, Some("0-1"))]);
        let one_core = Topology::read(dir.path());
        assert_eq!(one_core.cores(), &[vec![0, 1]]);
        let pool = Pool::default_with(&one_core, 1024);
        assert!(matches!(
            plan(&pool, &[], &req("a", 0, CpuRequest::Count(1), 64)),
            Err(AllocError::BadRequest(_))
        ));
        assert_eq!(
            plan(&pool, &[], &req("a", 0, CpuRequest::Count(2), 64))
                .unwrap()
                .cpus,
            vec![0, 1]
        );
        // Three CPUs without SMT: CPU 0 stays with the host.
        let three = Topology::single_threaded(&[0, 1, 2]);
        assert_eq!(Pool::default_with(&three, 1024).cpus, vec![1, 2]);
        assert!(
            Pool::parse_with("memory_mib: 512\ncpu_pool: \"0-2\"\n", &three)
                .unwrap_err()
                .to_string()
                .contains("CPU 0's core")
        );
    }
}
