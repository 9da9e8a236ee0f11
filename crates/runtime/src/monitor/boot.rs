//! Step 3 of a launch: waiting for init's heartbeat, and the failure that says why none came.
//!
//! [`wait_for_heartbeat`] returns once the heartbeat arrives, or fails with the class of what
//! happened instead: the enclave ended ([`FailureKind::Setup`], with the backend's account of
//! the end where it has one and the console's last lines), a stop signal
//! ([`FailureKind::Terminated`]) or the deadline ([`FailureKind::BootTimeout`], with the
//! console's last lines).

use super::spec::{sys_failure, FailureKind, StartFailure, STOP_SIGNALS};
use crate::backend::Running;
use crate::console;
use crate::sys;
use std::path::Path;
use std::time::{Duration, Instant};

/// How long each look for the heartbeat waits before the other conditions are checked.
const BEAT_POLL: Duration = Duration::from_millis(20);
/// How long an enclave that ended is given to flush its console before its tail is read.
const EXIT_SETTLE: Duration = Duration::from_millis(50);

/// How the monitor learns of the heartbeat.
pub(super) enum Beat<'a> {
    /// The broker reports it.
    Broker(&'a cloister_vsock::Broker),
    /// The backend's device sends on this channel.
    Channel(&'a std::sync::mpsc::Receiver<()>),
}

impl Beat<'_> {
    /// Whether the heartbeat arrived within [`BEAT_POLL`].
    fn arrived(&self) -> bool {
        match self {
            Beat::Broker(broker) => broker.wait_for_heartbeat(BEAT_POLL),
            Beat::Channel(rx) => match rx.recv_timeout(BEAT_POLL) {
                Ok(()) => true,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => false,
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    std::thread::sleep(BEAT_POLL);
                    false
                }
            },
        }
    }
}

/// Waits for the heartbeat, the enclave's end, a stop signal, or `deadline`
/// (`boot_timeout_ms` after the start, for the message).
pub(super) fn wait_for_heartbeat(
    beat: &Beat<'_>,
    running: &mut dyn Running,
    console_path: &Path,
    deadline: Instant,
    boot_timeout_ms: u64,
) -> Result<(), StartFailure> {
    loop {
        if beat.arrived() {
            return Ok(());
        }
        if let Some(status) = running.try_wait().map_err(|e| sys_failure(&e))? {
            std::thread::sleep(EXIT_SETTLE);
            let what = running
                .exit_detail()
                .unwrap_or_else(|| format!("the enclave {status}"));
            return Err(StartFailure::new(
                FailureKind::Setup,
                format!(
                    "{what} before its heartbeat; console:\n{}",
                    console_tail(running, console_path)
                ),
            ));
        }
        if sys::wait_signal(&STOP_SIGNALS, 0)
            .map_err(|e| sys_failure(&e))?
            .is_some()
        {
            return Err(StartFailure::new(
                FailureKind::Terminated,
                "the enclave was terminated while it was booting",
            ));
        }
        if Instant::now() >= deadline {
            return Err(StartFailure::new(
                FailureKind::BootTimeout,
                format!(
                    "no heartbeat from the enclave within {boot_timeout_ms} ms; last console \
                     lines:\n{}",
                    console_tail(running, console_path)
                ),
            ));
        }
    }
}

/// The last `max` bytes of `text` (at a character boundary).
pub(super) fn last_bytes(text: &str, max: u64) -> &str {
    let max = usize::try_from(max).unwrap_or(usize::MAX);
    let mut start = text.len().saturating_sub(max);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// The console's last bytes: the backend's own tail (a VM) or the console file.
pub(super) fn console_tail(running: &dyn Running, console_path: &Path) -> String {
    match running.console_tail() {
        Some(t) => last_bytes(&t, console::TAIL_BYTES).to_owned(),
        None => console::tail(console_path, console::TAIL_BYTES),
    }
}
