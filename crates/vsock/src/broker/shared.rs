//! The state one broker's threads share: its limits, the enclave's listeners, the connections
//! being served (so shutdown can end them), counters, the NSM gate that runs at most as many
//! requests at once as the enclave has CPUs, and the helpers every handler uses.

use std::collections::HashMap;
use std::io::{self, Write};
use std::net::Shutdown;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use socket2::Socket;

use super::config::{BrokerLimits, HeartbeatCallback, NsmService};
use crate::hostfs::{FabricDir, HostIdentity};
use crate::ratelimit::RateLimiter;

pub(super) struct Listener {
    pub(super) id: u64,
    pub(super) ctl: Mutex<Socket>,
}

pub(super) struct Shared {
    pub(super) cid: u32,
    pub(super) fabric: FabricDir,
    pub(super) identity: Option<HostIdentity>,
    pub(super) nsm: Arc<dyn NsmService>,
    pub(super) nsm_gate: NsmGate,
    pub(super) nsm_cpus: Vec<u32>,
    pub(super) on_heartbeat: Option<HeartbeatCallback>,
    pub(super) limits: BrokerLimits,
    pub(super) stopping: AtomicBool,
    pub(super) listeners: Mutex<HashMap<u32, Arc<Listener>>>,
    pub(super) live: Mutex<HashMap<u64, Socket>>,
    pub(super) next_id: AtomicU64,
    pub(super) enclave_conns: AtomicUsize,
    pub(super) host_pending: AtomicUsize,
    pub(super) workers: AtomicUsize,
    pub(super) next_port: AtomicU32,
    pub(super) heartbeat_claimed: AtomicBool,
    pub(super) booted: Mutex<bool>,
    pub(super) booted_cv: Condvar,
    pub(super) rejected: AtomicU64,
    pub(super) streams: AtomicU64,
    pub(super) log: RateLimiter,
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// A counting semaphore: at most `n` NSM requests of one enclave are served at once.
pub(super) struct NsmGate {
    free: Mutex<usize>,
    cv: Condvar,
}

/// One NSM request's turn; dropping it lets the next one go.
pub(super) struct NsmTurn<'a>(&'a NsmGate);

impl NsmGate {
    pub(super) fn new(n: usize) -> Self {
        Self {
            free: Mutex::new(n.max(1)),
            cv: Condvar::new(),
        }
    }

    pub(super) fn acquire(&self) -> NsmTurn<'_> {
        let mut free = lock(&self.free);
        while *free == 0 {
            free = match self.cv.wait(free) {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
        }
        *free -= 1;
        NsmTurn(self)
    }
}

impl Drop for NsmTurn<'_> {
    fn drop(&mut self) {
        *lock(&self.0.free) += 1;
        self.0.cv.notify_one();
    }
}

/// How many NSM requests of an enclave with `cpus` run at once.
pub(super) fn nsm_workers(cpus: &[u32], max: usize) -> usize {
    let mut distinct = cpus.to_vec();
    distinct.sort_unstable();
    distinct.dedup();
    distinct.len().clamp(1, max.max(1))
}

/// Pins the calling thread to `cpus` (ids beyond the kernel's set size are ignored).
pub(super) fn pin_current_thread(cpus: &[u32]) -> io::Result<()> {
    // SAFETY: all-zero bytes are an empty `cpu_set_t` (a plain bit array).
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let capacity = 8 * std::mem::size_of::<libc::cpu_set_t>();
    let mut any = false;
    for &cpu in cpus {
        let Ok(cpu) = usize::try_from(cpu) else {
            continue;
        };
        if cpu < capacity {
            // SAFETY: `cpu` is below the set's capacity in bits.
            unsafe { libc::CPU_SET(cpu, &mut set) };
            any = true;
        }
    }
    if !any {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: pid 0 is the calling thread; `set` is a valid cpu_set_t of the given size.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// First ephemeral port handed out (ports below are conventionally reserved).
pub(super) const FIRST_EPHEMERAL_PORT: u32 = 1024;

impl Shared {
    pub(super) fn ephemeral_port(&self) -> u32 {
        self.next_port
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |p| {
                Some(if p >= u32::MAX - 2 {
                    FIRST_EPHEMERAL_PORT
                } else {
                    p + 1
                })
            })
            .unwrap_or(FIRST_EPHEMERAL_PORT)
    }

    pub(super) fn warn(&self, what: &str, detail: &dyn std::fmt::Display) {
        if let Some(suppressed) = self.log.check() {
            tracing::warn!(cid = self.cid, suppressed, detail = %detail, "{what}");
        }
    }

    /// Runs the callback, then wakes the waiters (so a waiter sees the callback's effects).
    pub(super) fn mark_booted(&self) {
        tracing::info!(cid = self.cid, "enclave heartbeat received");
        if let Some(cb) = &self.on_heartbeat {
            cb();
        }
        {
            let mut b = lock(&self.booted);
            *b = true;
        }
        self.booted_cv.notify_all();
    }
}

#[derive(Clone, Copy)]
pub(super) enum Side {
    Host,
    Enclave,
}

/// Releases a worker's slot (and its shutdown registration) when the worker ends.
pub(super) struct Slot {
    pub(super) shared: Arc<Shared>,
    pub(super) side: Side,
    pub(super) id: u64,
}

impl Drop for Slot {
    fn drop(&mut self) {
        lock(&self.shared.live).remove(&self.id);
        match self.side {
            Side::Host => self.shared.host_pending.fetch_sub(1, Ordering::AcqRel),
            Side::Enclave => self.shared.enclave_conns.fetch_sub(1, Ordering::AcqRel),
        };
        self.shared.workers.fetch_sub(1, Ordering::AcqRel);
    }
}

pub(super) fn set_timeouts(sock: &Socket, timeout: Option<Duration>) -> io::Result<()> {
    sock.set_read_timeout(timeout)?;
    sock.set_write_timeout(timeout)
}

pub(super) fn remove_listener(shared: &Shared, port: u32, id: u64) {
    let mut listeners = lock(&shared.listeners);
    if listeners.get(&port).is_some_and(|l| l.id == id) {
        if let Some(l) = listeners.remove(&port) {
            let _ = lock(&l.ctl).shutdown(Shutdown::Both);
        }
    }
}

pub(super) fn reply(shared: &Shared, conn: &Socket, line: &str) -> bool {
    match (&*conn).write_all(line.as_bytes()) {
        Ok(()) => true,
        Err(e) => {
            shared.warn("cannot answer the enclave", &e);
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nsm_workers_count_distinct_cpus_within_the_cap() {
        assert_eq!(nsm_workers(&[], 4), 1);
        assert_eq!(nsm_workers(&[3, 3, 5], 4), 2);
        assert_eq!(nsm_workers(&[0, 1, 2, 3, 4, 5], 4), 4);
        assert_eq!(nsm_workers(&[0, 1], 0), 1, "at least one, whatever the cap");
    }

    #[test]
    fn the_nsm_gate_lets_n_requests_through_at_once() {
        let gate = Arc::new(NsmGate::new(2));
        let a = gate.acquire();
        let _b = gate.acquire();
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = {
            let gate = Arc::clone(&gate);
            std::thread::spawn(move || {
                let _c = gate.acquire();
                tx.send(()).unwrap();
            })
        };
        assert!(
            rx.recv_timeout(Duration::from_millis(100)).is_err(),
            "a third request waits"
        );
        drop(a);
        rx.recv_timeout(Duration::from_secs(5)).unwrap();
        waiter.join().unwrap();
    }
}
