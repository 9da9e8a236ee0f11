//! The monitor: one process per enclave that owns it for its whole life.
//!
//! `run-enclave` creates the enclave's directory (holding its lock), writes the launch
//! description ([`MonitorSpec`], `spec.json`, with the caller's [`crate::config::RuntimeConfig`]), and starts
//! the monitor detached (`setsid`) with the ready pipe as fd 3 and the locked `monitor.lock` as
//! fd 4 ([`crate::lifecycle`]). The monitor ([`monitor_main`]) installs the launch's
//! configuration, then runs one launch through its backend ([`crate::backend::Backend`], the
//! same steps for every isolation; what differs is said by the backend):
//! 1. (`launch.rs`) checks that the run and PKI directories are writable by nobody else, asks
//!    the backend to check the host, opens the image once ([`crate::imagecache::OpenImage`]:
//!    the measurement, the signature check and the backend's root or boot files all read that
//!    open file, never the path again), reads it (measurements, metadata; the measurements come
//!    from [`crate::imagecache`] when this version of the file was measured before), refuses a
//!    signed image whose signature does not verify or whose certificate is not valid now, asks
//!    the backend to check the image, and reserves CPUs, memory, a CID and a host uid of the
//!    enclave's own ([`crate::allocator`]);
//! 2. (`launch.rs`) creates the enclave with its backend while still single-threaded (the process backend
//!    clones), then blocks SIGTERM/SIGINT/SIGHUP, starts the console pump, sets up the NSM
//!    ([`crate::nsm`]: the host CA is loaded now, the leaf certificate is issued once the
//!    enclave has booted or at its first NSM request, off the boot path), starts the vsock
//!    broker (a backend reaching the host through its own device, the VM's, needs none) and
//!    lets the enclave run;
//! 3. (`boot.rs`) waits for init's heartbeat (the broker or the backend's device reports it) up
//!    to the boot timeout, then writes the record (RUNNING) and a [`MonitorMessage::Ready`]
//!    line on the ready pipe; on any failure it writes [`MonitorMessage::Failed`] (with the
//!    console's last lines for a timeout or an early end, and the backend's account of the end:
//!    a VM's guest kernel panic is named), tears everything down and exits;
//! 4. (`live.rs`) supervises: SIGTERM (from `terminate-enclave`) or the enclave's end both lead
//!    to the same teardown: kill the enclave (its PID 1, whose PID namespace dies with it, or
//!    QEMU), stop the broker, remove the cgroup, return the resources, remove the directory.
//!
//! The launch's vocabulary (the description, the answer, the failure classes) is in
//! `spec.rs`; `tests.rs` runs the logic over a fake backend, without root.
//!
//! If the monitor itself is killed, the enclave's init gets SIGKILL (parent-death signal) and
//! the next `describe-enclaves` prunes the directory (its lock is free).

mod boot;
mod launch;
mod live;
mod spec;
#[cfg(test)]
mod tests;

use crate::state::RunDir;
use crate::sys;
use std::io::Write;
use std::os::fd::{FromRawFd, OwnedFd};

pub use crate::config::TEST_HOOK_AFTER_MEASURING_ENV;
pub use launch::check_memory;
pub use spec::{
    FailureKind, MonitorMessage, MonitorSpec, StartFailure, LOCK_FD, MEMORY_PER_EIF_FACTOR,
    MIN_MEMORY_MIB, MONITOR_SUBCOMMAND, READY_FD,
};

/// Entry point of the hidden monitor subcommand. Takes the ready pipe and the lock from fds
/// [`READY_FD`] and [`LOCK_FD`]. Returns the process exit status.
///
/// The run directory is the configuration's (an exec'd monitor gets it in its environment).
pub fn monitor_main(enclave_id: &str) -> i32 {
    monitor_main_with(&RunDir::from_env(), enclave_id, None)
}

/// [`monitor_main`] in the run directory `run`, for a monitor forked (without exec) by the
/// run-enclave process `caller` where given, which only prints the answer and exits once it has
/// it (see [`wake_off_enclave_cpus`]).
pub(crate) fn monitor_main_with(run: &RunDir, enclave_id: &str, caller: Option<i32>) -> i32 {
    // SAFETY: by contract with `lifecycle::spawn_monitor`, fds 3 and 4 are open in this process
    // and owned by nothing else (they were dup2'ed there just before exec).
    let (ready, lock) = unsafe {
        (
            OwnedFd::from_raw_fd(READY_FD),
            OwnedFd::from_raw_fd(LOCK_FD),
        )
    };
    crate::boottrace::mark("monitor: start");
    let mut ready = std::fs::File::from(ready);
    if !crate::ids::is_enclave_id(enclave_id) {
        let msg =
            MonitorMessage::Failed(StartFailure::new(FailureKind::System, "invalid enclave id"));
        let _ = send(&mut ready, &msg);
        return 1;
    }
    let span = tracing::info_span!("enclave", id = %enclave_id);
    let _enter = span.enter();
    let mut live = match launch::start(run, enclave_id) {
        Ok(live) => live,
        Err(failure) => {
            tracing::warn!(error = %failure.message, "enclave failed to start");
            // The entry goes before the answer, so a caller that has the answer finds nothing
            // left (the lock stays held until then, so nobody else prunes it meanwhile).
            run.remove_enclave(enclave_id);
            let _ = send(&mut ready, &MonitorMessage::Failed(failure));
            drop(lock);
            return 1;
        }
    };
    if let Some(pid) = caller {
        wake_off_enclave_cpus(pid, &live.record.cpu_ids);
    }
    let _ = send(
        &mut ready,
        &MonitorMessage::Ready(Box::new(live.record.clone())),
    );
    drop(ready);
    crate::boottrace::mark("monitor: ready sent");
    // The leaf certificate is issued now, off the boot path and at idle CPU priority, unless
    // a request comes first.
    live.nsm.prepare_in_background();
    live.supervise();
    live.teardown(run);
    drop(lock);
    0
}

/// Moves the waiting run-enclave process `caller` off the enclave's CPUs (where the host has
/// others) before the answer wakes it. The scheduler wakes a task on the CPU it last ran on
/// when it can, which may be one of the enclave's; the enclave's init is busy there right after
/// its heartbeat (it installs its seccomp filter and starts the application), and the caller,
/// which only prints the answer and exits, would wait behind it for about a millisecond. The
/// caller is asleep, so this only changes where it wakes. Best effort.
fn wake_off_enclave_cpus(caller: i32, enclave: &[u32]) {
    let Ok(now) = sys::cpu_affinity(caller) else {
        return;
    };
    let rest: Vec<u32> = now.into_iter().filter(|c| !enclave.contains(c)).collect();
    if !rest.is_empty() {
        if let Err(e) = sys::set_cpu_affinity(caller, &rest) {
            tracing::debug!(error = %e, "cannot move the caller off the enclave's CPUs");
        }
    }
}

fn send(out: &mut std::fs::File, msg: &MonitorMessage) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(msg).map_err(std::io::Error::other)?;
    line.push(b'\n');
    out.write_all(&line)
}
