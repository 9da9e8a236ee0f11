//! A started enclave and what the monitor holds for it, until the teardown.
//!
//! [`Live::supervise`] waits for a stop signal or the enclave's end; [`Live::teardown`] then
//! undoes everything in order: the record says TERMINATING, the enclave is killed, the broker
//! stopped, the console closed with a summary line (the exit status, the backend's account of
//! the end, out-of-memory kills), the history log appended, the backend's host objects
//! (cgroups) removed, the resources returned, the enclave's directory (and any leftover the
//! record names) removed.

use super::spec::STOP_SIGNALS;
use crate::allocator::Allocator;
use crate::backend::Running;
use crate::state::{EnclaveRecord, EnclaveState, RunDir};
use crate::sys;
use std::io::Write;
use std::path::PathBuf;

/// Size of the history log (`<run>/history.log`) before it is rotated.
const HISTORY_CAP: u64 = 256 * 1024;

/// A started enclave and everything the monitor holds for it.
pub(super) struct Live {
    pub(super) record: EnclaveRecord,
    pub(super) running: Box<dyn Running>,
    pub(super) broker: Option<cloister_vsock::Broker>,
    pub(super) allocator: Allocator,
    pub(super) console: Option<std::thread::JoinHandle<()>>,
    pub(super) console_path: PathBuf,
    pub(super) nsm: std::sync::Arc<crate::nsm::EnclaveNsm>,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live")
            .field("enclave_id", &self.record.enclave_id)
            .field("pid", &self.running.pid())
            .finish_non_exhaustive()
    }
}

impl Live {
    /// Waits until the enclave ends or a stop signal arrives.
    pub(super) fn supervise(&mut self) {
        loop {
            match sys::wait_signal(&STOP_SIGNALS, 100) {
                Ok(Some(sig)) => {
                    tracing::info!(signal = sig, "terminating on request");
                    return;
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(error = %e, "waiting for signals failed");
                    return;
                }
            }
            match self.running.try_wait() {
                Ok(Some(status)) => {
                    tracing::info!(%status, "enclave ended");
                    return;
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(error = %e, "waiting for the enclave failed");
                    return;
                }
            }
        }
    }

    pub(super) fn teardown(&mut self, run: &RunDir) {
        let mut rec = self.record.clone();
        rec.state = EnclaveState::Terminating;
        let _ = run.write_record(&rec);
        let status = self.running.kill();
        let ooms = self.running.oom_kills();
        let detail = self
            .running
            .exit_detail()
            .map(|d| format!(" ({d})"))
            .unwrap_or_default();
        let summary = match &status {
            Ok(s) => format!(
                "enclave {} {s}{detail}; out-of-memory kills: {ooms}",
                rec.enclave_id
            ),
            Err(e) => format!(
                "enclave {}: {e}; out-of-memory kills: {ooms}",
                rec.enclave_id
            ),
        };
        if let Some(mut b) = self.broker.take() {
            b.shutdown();
        }
        if let Some(t) = self.console.take() {
            let _ = t.join();
        }
        if let Ok(mut log) = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.console_path)
        {
            let _ = writeln!(log, "[cloister] {summary}");
        }
        append_history(run, &summary);
        if let Err(e) = self.running.cleanup() {
            tracing::warn!(error = %e, "cgroup cleanup failed");
        }
        let _ = self
            .allocator
            .release(&rec.enclave_id, &|id| run.is_alive(id));
        run.remove_enclave(&rec.enclave_id);
    }
}

/// Appends one line to `<run>/history.log` (rotated at [`HISTORY_CAP`]).
fn append_history(run: &RunDir, line: &str) {
    let path = run.root().join("history.log");
    if std::fs::metadata(&path).is_ok_and(|m| m.len() > HISTORY_CAP) {
        let _ = std::fs::rename(&path, run.root().join("history.log.1"));
    }
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
    {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let _ = writeln!(f, "{now} {line}");
    }
}
