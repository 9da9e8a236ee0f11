//! SIGINT and SIGTERM: a thread of its own catches them, marks the demo interrupted and
//! terminates its enclaves, so whatever the demo waits for returns and it unwinds through its
//! normal teardown; the steps check [`check_interrupted`] between them.

use crate::error::{err, DemoError, DemoResult, Reporter};
use cloister_runtime::{lifecycle, RunDir};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

/// After SIGINT / SIGTERM, how long the demo may take to unwind before the signal thread
/// removes what is left itself.
pub(crate) const INTERRUPT_GRACE: Duration = Duration::from_secs(30);
/// Exit status after SIGINT / SIGTERM (128 + SIGINT, as shells report Ctrl-C).
pub const INTERRUPTED_STATUS: i32 = 130;
/// How often a wait checks whether the demo was interrupted.
pub(crate) const INTERRUPT_POLL: Duration = Duration::from_millis(50);

/// Set once SIGINT or SIGTERM arrived.
pub(crate) static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Fails with E812 once SIGINT or SIGTERM arrived.
pub(crate) fn check_interrupted() -> DemoResult<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        Err(err(DemoError::Interrupted, "interrupted"))
    } else {
        Ok(())
    }
}

/// Waits for Enter on stdin (or its end), or for an interrupt.
pub(crate) fn pause(run: &Path) -> DemoResult<()> {
    println!(
        "  paused: the enclave runs (CLOISTER_RUN_DIR={} cloister describe-enclaves); press \
         Enter to go on",
        run.display()
    );
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("demo-pause".into())
        .spawn(move || {
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
            let _ = tx.send(());
        })
        .map_err(|e| err(DemoError::Setup, format!("pause thread: {e}")))?;
    loop {
        check_interrupted()?;
        match rx.recv_timeout(INTERRUPT_POLL) {
            Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => return Ok(()),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
    }
}

/// Terminates every enclave recorded in the demo's run directory (booting ones included).
pub(crate) fn terminate_recorded(run: &Path) {
    let run = RunDir::new(run);
    if let Ok(records) = lifecycle::describe(&run) {
        for rec in records {
            let _ = lifecycle::terminate(&run, &rec);
        }
    }
}

/// Why the signal thread could not install its handlers.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct SignalSetup(std::io::Error);

/// Catches SIGINT and SIGTERM on a thread of its own. On a signal it marks the demo
/// interrupted and terminates the recorded enclaves, which unblocks whatever the demo waits
/// for (a boot, an answer); the demo then unwinds through its normal teardown and exits with
/// [`INTERRUPTED_STATUS`]. If it has not done so after [`INTERRUPT_GRACE`] (a message on the
/// returned channel), the thread removes what is left itself and exits.
pub(crate) fn watch_signals(
    run: PathBuf,
    temp: PathBuf,
    keep: bool,
    report: Reporter,
) -> DemoResult<mpsc::Sender<()>> {
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), SignalSetup>>();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    std::thread::Builder::new()
        .name("demo-signals".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(SignalSetup(e)));
                    return;
                }
            };
            let name = rt.block_on(async {
                use tokio::signal::unix::{signal, SignalKind};
                let (mut int, mut term) = match (
                    signal(SignalKind::interrupt()),
                    signal(SignalKind::terminate()),
                ) {
                    (Ok(i), Ok(t)) => (i, t),
                    (Err(e), _) | (_, Err(e)) => {
                        let _ = ready_tx.send(Err(SignalSetup(e)));
                        return None;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                tokio::select! {
                    _ = int.recv() => Some("SIGINT"),
                    _ = term.recv() => Some("SIGTERM"),
                }
            });
            let Some(name) = name else { return };
            INTERRUPTED.store(true, Ordering::SeqCst);
            eprintln!("cloister demo: {name}: tearing down");
            terminate_recorded(&run);
            if let Err(mpsc::RecvTimeoutError::Timeout) = done_rx.recv_timeout(INTERRUPT_GRACE) {
                terminate_recorded(&run);
                if !keep {
                    let _ = std::fs::remove_dir_all(&temp);
                }
                report(&err(
                    DemoError::Interrupted,
                    "interrupted; the demo did not unwind in time, removed what was left",
                ));
                exit_interrupted();
            }
        })
        .map_err(|e| err(DemoError::Setup, format!("signal thread: {e}")))?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(done_tx),
        Ok(Err(e)) => Err(err(DemoError::Setup, format!("signal handlers: {e}"))),
        Err(_) => Err(err(DemoError::Setup, "signal handlers: the thread ended")),
    }
}

/// Once the demo has unwound after a signal: tells the signal thread so (it stops waiting),
/// reports E812 through `report` and exits with [`INTERRUPTED_STATUS`]. Returns if no signal
/// arrived.
pub(crate) fn exit_if_interrupted(unwound: &mpsc::Sender<()>, report: &Reporter) {
    if INTERRUPTED.load(Ordering::SeqCst) {
        let _ = unwound.send(());
        report(&err(
            DemoError::Interrupted,
            "interrupted: enclaves, vsock-proxy, key service and temp directory are gone",
        ));
        exit_interrupted();
    }
}

/// Ends the process with [`INTERRUPTED_STATUS`].
#[allow(
    clippy::exit,
    reason = "after SIGINT or SIGTERM the demo ends with the shell's status for Ctrl-C (130), \
              which no error class has; it has already torn down and reported"
)]
fn exit_interrupted() -> ! {
    std::process::exit(INTERRUPTED_STATUS)
}
