//! Per-enclave control groups: CPU pinning (cpuset), a memory cap with swap off, and a process
//! count limit.
//!
//! Two layouts are supported and detected from `/proc/self/mounts`:
//! - cgroup v2 (unified) mounted at `/sys/fs/cgroup`: one directory
//!   `/sys/fs/cgroup/cloister/<enclave>` with `cpuset.cpus`, `memory.max`, `memory.swap.max = 0`
//!   and `pids.max`, the controllers enabled in `cloister/cgroup.subtree_control`;
//! - cgroup v1 / hybrid: one directory per controller hierarchy
//!   (`<cpuset>/cloister/<enclave>`, `<memory>/...`, `<pids>/...`) with `cpuset.cpus`/`mems`,
//!   `memory.limit_in_bytes` (and `memory.memsw.limit_in_bytes` equal to it, so no swap) and
//!   `pids.max`. A cgroup2 mount elsewhere (e.g. `/sys/fs/cgroup/unified` without
//!   controllers) is ignored.
//!
//! [`EnclaveCgroup::remove`] kills what is left and removes the directories.

use std::path::{Path, PathBuf};

/// Name of the parent cgroup under each hierarchy.
pub const PARENT: &str = "cloister";
/// Default limit on the number of processes in an enclave.
pub const DEFAULT_PIDS_MAX: u32 = 1024;

/// Cgroup errors.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// No usable cgroup hierarchy was found.
    #[error("no usable cgroup hierarchy with the {0} controller")]
    NoController(&'static str),
    /// Writing a control file failed.
    #[error("cannot write {value:?} to {path}")]
    Write {
        /// The control file.
        path: PathBuf,
        /// What was written.
        value: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Creating or removing a cgroup directory failed.
    #[error("cannot create or remove cgroup {0}")]
    Dir(PathBuf, #[source] std::io::Error),
}

/// The value of counter `key` in a flat-keyed control file (`memory.events`,
/// `memory.oom_control`: one `key value` pair a line); 0 when absent or unreadable. The key
/// must match a line's first word exactly: v1's `memory.oom_control` lists `oom_kill_disable`
/// before `oom_kill`.
pub fn counter(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some(key)).then(|| words.next().and_then(|v| v.parse().ok()))
        })
        .flatten()
        .unwrap_or(0)
}

/// Which layout the host uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// Unified hierarchy at this mount point.
    V2(PathBuf),
    /// v1 hierarchies: cpuset, memory, pids mount points.
    V1 {
        /// The cpuset hierarchy.
        cpuset: PathBuf,
        /// The memory hierarchy.
        memory: PathBuf,
        /// The pids hierarchy.
        pids: PathBuf,
    },
}

impl Layout {
    /// Detects the layout from `/proc/self/mounts`.
    pub fn detect() -> Result<Self, CgroupError> {
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        Self::from_mounts(&mounts, |p| p.join("cgroup.controllers").exists())
    }

    /// Detects the layout from the text of a mounts table; `has_controllers` says whether a
    /// cgroup2 mount point offers controllers (it reads `cgroup.controllers`).
    pub fn from_mounts(
        mounts: &str,
        has_controllers: impl Fn(&Path) -> bool,
    ) -> Result<Self, CgroupError> {
        let mut v1 = std::collections::HashMap::new();
        let mut v2 = None;
        for line in mounts.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            let [_, target, fstype, opts, ..] = f[..] else {
                continue;
            };
            match fstype {
                "cgroup2" if v2.is_none() => v2 = Some(PathBuf::from(target)),
                "cgroup" => {
                    for ctrl in ["cpuset", "memory", "pids"] {
                        if opts.split(',').any(|o| o == ctrl) {
                            v1.entry(ctrl).or_insert_with(|| PathBuf::from(target));
                        }
                    }
                }
                _ => {}
            }
        }
        let mut take = |c: &'static str| v1.remove(c).ok_or(CgroupError::NoController(c));
        if let (Ok(cpuset), Ok(memory), Ok(pids)) = (take("cpuset"), take("memory"), take("pids")) {
            return Ok(Layout::V1 {
                cpuset,
                memory,
                pids,
            });
        }
        match v2 {
            Some(p) if has_controllers(&p) => Ok(Layout::V2(p)),
            _ => Err(CgroupError::NoController("cpuset/memory/pids")),
        }
    }
}

/// Limits applied to an enclave's cgroup.
#[derive(Debug, Clone)]
pub struct Limits {
    /// CPUs the enclave may run on.
    pub cpus: Vec<u32>,
    /// Memory cap in bytes (swap is disabled).
    pub memory_bytes: u64,
    /// Maximum number of tasks.
    pub pids_max: u32,
}

/// One enclave's cgroup (a directory per hierarchy).
#[derive(Debug, Clone)]
pub struct EnclaveCgroup {
    layout: Layout,
    dirs: Vec<PathBuf>,
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    std::fs::write(path, value).map_err(|source| CgroupError::Write {
        path: path.to_owned(),
        value: value.to_owned(),
        source,
    })
}

fn mkdir(path: &Path) -> Result<(), CgroupError> {
    match std::fs::create_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(CgroupError::Dir(path.to_owned(), e)),
    }
}

impl EnclaveCgroup {
    /// The cgroup of `enclave_id` under `layout` (not created yet).
    pub fn new(layout: Layout, enclave_id: &str) -> Self {
        let dirs = match &layout {
            Layout::V2(root) => vec![root.join(PARENT).join(enclave_id)],
            Layout::V1 {
                cpuset,
                memory,
                pids,
            } => {
                let mut d: Vec<PathBuf> = [cpuset, memory, pids]
                    .iter()
                    .map(|r| r.join(PARENT).join(enclave_id))
                    .collect();
                d.dedup();
                d
            }
        };
        Self { layout, dirs }
    }

    /// The directories of this cgroup.
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// Creates the cgroup and applies `limits`.
    pub fn create(&self, limits: &Limits) -> Result<(), CgroupError> {
        let cpus = crate::allocator::format_cpu_list(&limits.cpus);
        match &self.layout {
            Layout::V2(root) => {
                let parent = root.join(PARENT);
                mkdir(&parent)?;
                // Controllers must be enabled top-down; the root usually has them already.
                for dir in [root.as_path(), parent.as_path()] {
                    for c in ["+cpuset", "+memory", "+pids"] {
                        let _ = std::fs::write(dir.join("cgroup.subtree_control"), c);
                    }
                }
                let dir = &self.dirs[0];
                mkdir(dir)?;
                write(&dir.join("cpuset.cpus"), &cpus)?;
                write(&dir.join("memory.max"), &limits.memory_bytes.to_string())?;
                if dir.join("memory.swap.max").exists() {
                    write(&dir.join("memory.swap.max"), "0")?;
                }
                write(&dir.join("pids.max"), &limits.pids_max.to_string())?;
            }
            Layout::V1 {
                cpuset,
                memory,
                pids,
            } => {
                let parent = cpuset.join(PARENT);
                mkdir(&parent)?;
                for f in ["cpuset.cpus", "cpuset.mems"] {
                    let current = std::fs::read_to_string(parent.join(f)).unwrap_or_default();
                    if current.trim().is_empty() {
                        let from_root = std::fs::read_to_string(cpuset.join(f)).unwrap_or_default();
                        write(&parent.join(f), from_root.trim())?;
                    }
                }
                let dir = parent.join(self.enclave_name());
                mkdir(&dir)?;
                write(&dir.join("cpuset.cpus"), &cpus)?;
                let mems = std::fs::read_to_string(parent.join("cpuset.mems")).unwrap_or_default();
                write(&dir.join("cpuset.mems"), mems.trim())?;

                let mparent = memory.join(PARENT);
                mkdir(&mparent)?;
                let _ = std::fs::write(mparent.join("memory.use_hierarchy"), "1");
                let mdir = mparent.join(self.enclave_name());
                mkdir(&mdir)?;
                let bytes = limits.memory_bytes.to_string();
                write(&mdir.join("memory.limit_in_bytes"), &bytes)?;
                if mdir.join("memory.memsw.limit_in_bytes").exists() {
                    write(&mdir.join("memory.memsw.limit_in_bytes"), &bytes)?;
                }
                let _ = std::fs::write(mdir.join("memory.swappiness"), "0");

                let pparent = pids.join(PARENT);
                mkdir(&pparent)?;
                let pdir = pparent.join(self.enclave_name());
                mkdir(&pdir)?;
                write(&pdir.join("pids.max"), &limits.pids_max.to_string())?;
            }
        }
        Ok(())
    }

    fn enclave_name(&self) -> &std::ffi::OsStr {
        self.dirs[0].file_name().unwrap_or_default()
    }

    /// True when a process can move itself in with [`EnclaveCgroup::join_self`] (v1).
    pub fn can_join_self(&self) -> bool {
        matches!(self.layout, Layout::V1 { .. })
    }

    /// Moves the calling thread (all of a single-threaded process) into the cgroup by writing
    /// `0` to each v1 hierarchy's `tasks`. A thread moving itself skips the kernel's global
    /// thread-group lock, whose write side waits for an RCU grace period (about 10 ms) on every
    /// move through `cgroup.procs`. Fails on v2, where a thread cannot leave its domain that
    /// way; use [`EnclaveCgroup::add`] there.
    pub fn join_self(&self) -> Result<(), CgroupError> {
        if !self.can_join_self() {
            return Err(CgroupError::NoController("v1 tasks"));
        }
        for dir in &self.dirs {
            write(&dir.join("tasks"), "0")?;
        }
        Ok(())
    }

    /// Moves process `pid` (and its future children) into the cgroup.
    pub fn add(&self, pid: i32) -> Result<(), CgroupError> {
        for dir in &self.dirs {
            write(&dir.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// Number of OOM kills recorded for this cgroup.
    pub fn oom_kills(&self) -> u64 {
        let (file, key) = match &self.layout {
            Layout::V2(_) => (self.dirs[0].join("memory.events"), "oom_kill"),
            Layout::V1 { .. } => (
                self.dirs
                    .iter()
                    .find(|d| d.join("memory.oom_control").exists())
                    .map(|d| d.join("memory.oom_control"))
                    .unwrap_or_default(),
                "oom_kill",
            ),
        };
        counter(&std::fs::read_to_string(file).unwrap_or_default(), key)
    }

    /// Kills every process left in the cgroup and removes its directories. Idempotent.
    pub fn remove(&self) -> Result<(), CgroupError> {
        for dir in &self.dirs {
            if !dir.exists() {
                continue;
            }
            let mut last = None;
            for _ in 0..100 {
                let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
                for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                    let _ = crate::sys::kill(pid, nix::sys::signal::Signal::SIGKILL);
                }
                match std::fs::remove_dir(dir) {
                    Ok(()) => {
                        last = None;
                        break;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        last = None;
                        break;
                    }
                    Err(e) => last = Some(e),
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            if let Some(e) = last {
                return Err(CgroupError::Dir(dir.clone(), e));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpuset cgroup rw,relatime,cpuset 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0
cgroup /sys/fs/cgroup/pids cgroup rw,relatime,pids 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
";

    #[test]
    fn detects_hybrid_and_unified_layouts() {
        let l = Layout::from_mounts(HYBRID, |_| false).unwrap();
        assert_eq!(
            l,
            Layout::V1 {
                cpuset: "/sys/fs/cgroup/cpuset".into(),
                memory: "/sys/fs/cgroup/memory".into(),
                pids: "/sys/fs/cgroup/pids".into()
            }
        );
        let v2 = "cgroup2 /sys/fs/cgroup cgroup2 rw,nsdelegate 0 0\n";
        assert_eq!(
            Layout::from_mounts(v2, |_| true).unwrap(),
            Layout::V2("/sys/fs/cgroup".into())
        );
        assert!(Layout::from_mounts(v2, |_| false).is_err());
        assert!(Layout::from_mounts("", |_| true).is_err());
    }

    #[test]
    fn oom_kill_counter_matches_its_exact_key() {
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
        assert_eq!(counter(v1, "oom_kill"), 3);
        assert_eq!(counter(v1, "oom_kill_disable"), 0);
        let v2 = "low 0\nhigh 0\nmax 12\noom 5\noom_kill 4\noom_group_kill 0\n";
        assert_eq!(counter(v2, "oom_kill"), 4);
        assert_eq!(counter(v2, "oom"), 5);
        assert_eq!(counter("oom_kill_disable 1\n", "oom_kill"), 0);
        assert_eq!(counter("oom_kill x\n", "oom_kill"), 0);
        assert_eq!(counter("", "oom_kill"), 0);
    }

    fn read(path: &Path) -> String {
        std::fs::read_to_string(path).unwrap()
    }

    fn limits() -> Limits {
        Limits {
            cpus: vec![5, 1, 2],
            memory_bytes: 256 << 20,
            pids_max: 512,
        }
    }

    #[test]
    fn a_v2_cgroup_gets_its_limits_with_swap_off() {
        let root = tempfile::tempdir().unwrap();
        let cg = EnclaveCgroup::new(Layout::V2(root.path().into()), "i-x-enc1");
        let dir = root.path().join("cloister/i-x-enc1");
        assert_eq!(cg.dirs(), std::slice::from_ref(&dir));
        // The kernel makes memory.swap.max where swap accounting is on.
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("memory.swap.max"), "max").unwrap();
        cg.create(&limits()).unwrap();
        assert_eq!(read(&dir.join("cpuset.cpus")), "1-2,5");
        assert_eq!(read(&dir.join("memory.max")), "268435456");
        assert_eq!(read(&dir.join("memory.swap.max")), "0");
        assert_eq!(read(&dir.join("pids.max")), "512");
        // Controllers enabled top-down (each write is one controller; the last stays here).
        for d in [root.path(), &root.path().join("cloister")] {
            assert_eq!(read(&d.join("cgroup.subtree_control")), "+pids");
        }
        // On v2 the monitor moves the child in; a thread cannot join by itself.
        assert!(!cg.can_join_self());
        assert!(cg.join_self().is_err());
        cg.add(4242).unwrap();
        assert_eq!(read(&dir.join("cgroup.procs")), "4242");
    }

    #[test]
    fn a_v1_cgroup_inherits_cpuset_and_caps_memory_and_swap() {
        let root = tempfile::tempdir().unwrap();
        let h = |name: &str| {
            let p = root.path().join(name);
            std::fs::create_dir(&p).unwrap();
            p
        };
        let (cpuset, memory, pids) = (h("cpuset"), h("memory"), h("pids"));
        // The hierarchy's root offers every CPU and memory node; the new parent has none yet.
        std::fs::write(cpuset.join("cpuset.cpus"), "0-7\n").unwrap();
        std::fs::write(cpuset.join("cpuset.mems"), "0\n").unwrap();
        let layout = Layout::V1 {
            cpuset: cpuset.clone(),
            memory: memory.clone(),
            pids: pids.clone(),
        };
        let cg = EnclaveCgroup::new(layout, "i-x-enc2");
        let mdir = memory.join("cloister/i-x-enc2");
        std::fs::create_dir_all(&mdir).unwrap();
        std::fs::write(mdir.join("memory.memsw.limit_in_bytes"), "max").unwrap();
        cg.create(&limits()).unwrap();
        assert_eq!(read(&cpuset.join("cloister/cpuset.cpus")), "0-7");
        assert_eq!(read(&cpuset.join("cloister/cpuset.mems")), "0");
        let dir = cpuset.join("cloister/i-x-enc2");
        assert_eq!(read(&dir.join("cpuset.cpus")), "1-2,5");
        assert_eq!(read(&dir.join("cpuset.mems")), "0");
        assert_eq!(read(&mdir.join("memory.limit_in_bytes")), "268435456");
        assert_eq!(read(&mdir.join("memory.memsw.limit_in_bytes")), "268435456");
        assert_eq!(read(&mdir.join("memory.swappiness")), "0");
        assert_eq!(read(&pids.join("cloister/i-x-enc2/pids.max")), "512");
        // On v1 the child moves itself in: `0` into every hierarchy's tasks.
        assert!(cg.can_join_self());
        cg.join_self().unwrap();
        for d in cg.dirs() {
            assert_eq!(read(&d.join("tasks")), "0");
        }
    }

    #[test]
    fn cgroup_dirs_are_per_enclave() {
        let l = Layout::from_mounts(HYBRID, |_| false).unwrap();
        let cg = EnclaveCgroup::new(l, "i-x-enc1");
        assert_eq!(cg.dirs().len(), 3);
        assert!(cg.dirs()[1].ends_with("memory/cloister/i-x-enc1"));
    }
}
