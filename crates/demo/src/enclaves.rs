//! The demo's enclaves: started through the runtime's lifecycle (this binary is their monitor),
//! asked for their proof over the demo's vsock fabric, terminated on every exit path, and
//! checked to have left nothing behind.

use crate::config::{CONNECT_DEADLINE, REPLY_TIMEOUT, TEARDOWN_DEADLINE};
use crate::error::{chain, err, DemoError, DemoResult};
use crate::interrupt::check_interrupted;
use cloister_runtime::allocator::{CpuRequest, Pool};
use cloister_runtime::lifecycle::{self, MonitorCommand, RunOptions};
use cloister_runtime::{EnclaveRecord, Isolation, RunDir};
use cloister_sample_app::{SecretReply, SecretRequest, DEFAULT_PORT};
use cloister_sdk::{VsockAddr, VsockStream};
use std::io::BufReader;
use std::path::Path;
use std::time::{Duration, Instant};

/// Terminates the demo's enclaves on every exit path.
#[derive(Debug)]
pub(crate) struct Enclaves {
    pub(crate) run: RunDir,
    pub(crate) started: Vec<EnclaveRecord>,
}

/// The enclaves that could not be terminated, each with its error.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.join("; "))]
pub(crate) struct TerminateErrors(Vec<String>);

impl Enclaves {
    /// No enclave started yet, in the run directory `run`.
    pub(crate) fn new(run: &Path) -> Self {
        Self {
            run: RunDir::new(run),
            started: Vec::new(),
        }
    }

    /// Terminates every enclave started (each is tried even when one fails).
    pub(crate) fn terminate_all(&mut self) -> Result<(), TerminateErrors> {
        let mut errors = Vec::new();
        for rec in self.started.drain(..) {
            if let Err(e) = lifecycle::terminate(&self.run, &rec) {
                errors.push(format!("{}: {e}", rec.enclave_id));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(TerminateErrors(errors))
        }
    }
}

impl Drop for Enclaves {
    fn drop(&mut self) {
        let _ = self.terminate_all();
    }
}

/// Step 6, first half: terminates the enclaves and waits until their monitors are gone;
/// returns how many there were.
pub(crate) fn terminate_and_wait(enclaves: &mut Enclaves) -> DemoResult<usize> {
    let monitors: Vec<u32> = enclaves.started.iter().map(|r| r.monitor_pid).collect();
    let count = enclaves.started.len();
    enclaves
        .terminate_all()
        .map_err(|e| err(DemoError::LeftBehind, format!("terminate: {e}")))?;
    let deadline = Instant::now() + TEARDOWN_DEADLINE;
    let mut running = monitors;
    loop {
        running.retain(|pid| !monitor_gone(*pid));
        if running.is_empty() {
            return Ok(count);
        }
        if Instant::now() > deadline {
            return Err(err(
                DemoError::LeftBehind,
                format!("enclave monitors still running: {running:?}"),
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// True once a monitor has exited. Monitors are this process's children (run-enclave spawns
/// them), so an exited one is reaped here; otherwise `/proc` says whether it still runs.
fn monitor_gone(pid: u32) -> bool {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    let Ok(raw) = i32::try_from(pid) else {
        return true;
    };
    match waitpid(nix::unistd::Pid::from_raw(raw), Some(WaitPidFlag::WNOHANG)) {
        Ok(WaitStatus::StillAlive) => false,
        Ok(_) => true,
        Err(_) => match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            // The state follows the parenthesised command name; Z is a zombie.
            Ok(stat) => stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
            Err(_) => true,
        },
    }
}

/// Runs one enclave (not in debug mode: its documents carry the real PCRs).
pub(crate) fn start_enclave(
    enclaves: &mut Enclaves,
    eif: &Path,
    name: &str,
    memory_mib: u64,
    isolation: Isolation,
) -> DemoResult<EnclaveRecord> {
    check_interrupted()?;
    let program = std::env::current_exe()
        .map_err(|e| err(DemoError::EnclaveStart, format!("current exe: {e}")))?;
    let monitor = MonitorCommand {
        program,
        args: vec![
            cloister_runtime::MONITOR_SUBCOMMAND.to_owned(),
            "--enclave-id".to_owned(),
        ],
    };
    // One whole core (a CPU on hosts without SMT).
    let per_core = Pool::host_default().cores.first().map_or(1, Vec::len);
    let opts = RunOptions {
        eif_path: eif.to_owned(),
        cpus: CpuRequest::Count(u32::try_from(per_core).unwrap_or(1)),
        memory_mib,
        cid: 0,
        debug_mode: false,
        name: Some(name.to_owned()),
        isolation,
    };
    let rec = lifecycle::run_enclave(&enclaves.run, &opts, &monitor).map_err(|e| {
        let code = e.kind().map(|k| format!("{k:?}")).unwrap_or_default();
        err(
            DemoError::EnclaveStart,
            format!("{}: {e} {code}", eif.display()),
        )
    })?;
    enclaves.started.push(rec.clone());
    // A signal that arrived while it booted: the guard terminates it on the way out.
    check_interrupted()?;
    Ok(rec)
}

/// Sends the request to the enclave's sample app and reads its answer.
pub(crate) fn exchange(
    run: &RunDir,
    rec: &EnclaveRecord,
    request: &SecretRequest,
) -> DemoResult<SecretReply> {
    let fabric = run.vsock_dir();
    let cid =
        u32::try_from(rec.cid).map_err(|_| err(DemoError::NoAnswer, format!("CID {}", rec.cid)))?;
    let deadline = Instant::now() + CONNECT_DEADLINE;
    let stream = loop {
        match VsockStream::connect_fabric(&fabric, VsockAddr::new(cid, DEFAULT_PORT)) {
            Ok(s) => break s,
            Err(e) if Instant::now() > deadline => {
                return Err(err(
                    DemoError::NoAnswer,
                    format!("connect to {cid}:{DEFAULT_PORT}: {e}"),
                ))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    };
    stream
        .set_read_timeout(Some(REPLY_TIMEOUT))
        .map_err(|e| err(DemoError::NoAnswer, e))?;
    let mut writer = &stream;
    cloister_sample_app::write_message(&mut writer, request)
        .map_err(|e| err(DemoError::NoAnswer, format!("send: {e}")))?;
    let mut reader = BufReader::new(&stream);
    cloister_sample_app::read_message(&mut reader).map_err(|e| {
        err(
            DemoError::NoAnswer,
            format!("answer from {cid}:{DEFAULT_PORT}: {e}: {}", chain(&e)),
        )
    })
}

/// Checks that the demo's run directory holds no enclave, live monitor or vsock socket.
pub(crate) fn check_nothing_left(run: &Path, fabric: &Path) -> DemoResult<()> {
    let run_dir = RunDir::new(run);
    let left = lifecycle::describe(&run_dir).map_err(|e| err(DemoError::LeftBehind, e))?;
    if !left.is_empty() {
        let ids: Vec<&str> = left.iter().map(|r| r.enclave_id.as_str()).collect();
        return Err(err(
            DemoError::LeftBehind,
            format!("enclaves still recorded: {ids:?}"),
        ));
    }
    let mut leftovers = Vec::new();
    for dir in [run_dir.enclaves_dir(), fabric.to_owned()] {
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                leftovers.push(e.path().display().to_string());
            }
        }
    }
    if leftovers.is_empty() {
        Ok(())
    } else {
        Err(err(
            DemoError::LeftBehind,
            format!("left in the run directory: {leftovers:?}"),
        ))
    }
}
