//! Boot-path timing: one debug-level event per step of `run-enclave` (CLI, monitor and the
//! enclave's setup child), each carrying the milliseconds since this process's first step.
//!
//! Enable with `CLOISTER_LOG=cloister_runtime::boottrace=debug`; the monitor inherits the
//! filter and writes to `<run>/enclaves/<id>/monitor.log`, the CLI to its stderr. The wall-clock
//! timestamps of the log lines line the processes up.

use std::sync::OnceLock;
use std::time::Instant;

static FIRST: OnceLock<Instant> = OnceLock::new();

/// Records that `step` has been reached.
pub fn mark(step: &'static str) {
    let first = *FIRST.get_or_init(Instant::now);
    tracing::debug!(
        target: "cloister_runtime::boottrace",
        step,
        ms = format_args!("{:.3}", first.elapsed().as_secs_f64() * 1e3),
        "boot step"
    );
}
