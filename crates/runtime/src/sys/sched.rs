//! Scheduling: CPU affinity, the scheduling policy, thread ids.

use super::error::{SysError, SysResult};

/// The CPUs thread `tid` may run on (`0`: the calling thread), from `sched_getaffinity(2)`.
pub fn cpu_affinity(tid: i32) -> SysResult<Vec<u32>> {
    let set = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(tid))
        .map_err(|e| SysError::new("sched_getaffinity", tid.to_string(), e))?;
    Ok((0..nix::sched::CpuSet::count())
        .filter(|&c| set.is_set(c).unwrap_or(false))
        .filter_map(|c| u32::try_from(c).ok())
        .collect())
}

/// Restricts thread `tid` (`0`: the calling thread) to `cpus` with `sched_setaffinity(2)`.
pub fn set_cpu_affinity(tid: i32, cpus: &[u32]) -> SysResult<()> {
    let mut set = nix::sched::CpuSet::new();
    for &c in cpus {
        set.set(c as usize)
            .map_err(|e| SysError::new("sched_setaffinity", format!("cpu {c}"), e))?;
    }
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(tid), &set)
        .map_err(|e| SysError::new("sched_setaffinity", tid.to_string(), e))
}

/// The calling thread's id.
pub fn gettid() -> i32 {
    // SAFETY: gettid has no preconditions and cannot fail.
    unsafe { libc::gettid() }
}

/// Sets the scheduling policy of thread `tid` (0: the calling thread) to `SCHED_IDLE` (it runs
/// only when a CPU has nothing else to do) or back to `SCHED_OTHER`.
pub fn set_idle_scheduling(tid: i32, idle: bool) -> SysResult<()> {
    let policy = if idle {
        libc::SCHED_IDLE
    } else {
        libc::SCHED_OTHER
    };
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler reads the valid `param` and changes only the thread's policy.
    let ret = unsafe { libc::sched_setscheduler(tid, policy, &param) };
    if ret != 0 {
        return Err(SysError::last(
            "sched_setscheduler",
            format!("tid {tid}, idle {idle}"),
        ));
    }
    Ok(())
}
