//! What the enclave verbs print and how their failures are coded: nitro-cli's JSON for
//! run-enclave, describe-enclaves and terminate-enclave, enclave names, the lifecycle error
//! codes and console streaming. Both the direct verbs ([`super`]) and the daemon
//! (`daemon`) use it; it uses neither.

use crate::codes;
use crate::errors::{CliError, CliResult};
use cloister_runtime::lifecycle::{self, LifecycleError};
use cloister_runtime::{EnclaveRecord, EnclaveState, FailureKind, RunDir};
use serde::Serialize;
use serde_json::{json, Value};
use std::time::Duration;

/// The name nitro-cli gives an enclave: `requested` or the image file's name without its
/// `.eif` extension, with `_1`, `_2`, ... appended while that name is taken by `running`.
pub fn enclave_name(
    requested: Option<&str>,
    eif_path: &std::path::Path,
    running: &[String],
) -> String {
    let base = match requested {
        Some(n) => n.to_owned(),
        None => {
            let file = eif_path
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default();
            match file.strip_suffix(".eif") {
                Some(stem) => stem.to_owned(),
                None => file,
            }
        }
    };
    let mut name = base.clone();
    let mut idx = 0u64;
    while running.contains(&name) {
        idx += 1;
        name = format!("{base}_{idx}");
    }
    name
}

/// Writes through to `inner` until `deadline`, then fails with [`ConsoleDeadline`], so a
/// console that keeps printing still ends on time.
struct DeadlineWriter<'a> {
    inner: &'a mut dyn std::io::Write,
    deadline: std::time::Instant,
}

/// The error [`DeadlineWriter`] returns once its deadline has passed.
#[derive(Debug, thiserror::Error)]
#[error("console disconnect timeout reached")]
struct ConsoleDeadline;

impl std::io::Write for DeadlineWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if std::time::Instant::now() >= self.deadline {
            return Err(std::io::Error::other(ConsoleDeadline));
        }
        self.inner.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Streams the console of `rec` to `out`: until the enclave ends, or, with `timeout`, until
/// that long after connecting (nitro-cli's `--disconnect-timeout`, not an idle timeout).
pub fn stream_console(
    run_dir: &RunDir,
    rec: &EnclaveRecord,
    out: &mut dyn std::io::Write,
    timeout: Option<Duration>,
) -> CliResult<()> {
    let Some(timeout) = timeout else {
        return lifecycle::console(run_dir, rec, out, None).map_err(map_err);
    };
    if !rec.debug_mode {
        return Err(map_err(LifecycleError::NotDebug(rec.enclave_id.clone())));
    }
    let deadline = std::time::Instant::now() + timeout;
    let mut writer = DeadlineWriter {
        inner: out,
        deadline,
    };
    let path = run_dir.console_path(&rec.enclave_id);
    let id = rec.enclave_id.clone();
    let stop = || !run_dir.is_alive(&id) || std::time::Instant::now() >= deadline;
    match cloister_runtime::console::follow(&path, &mut writer, &stop, None) {
        Ok(()) => Ok(()),
        Err(e) if e.get_ref().is_some_and(|r| r.is::<ConsoleDeadline>()) => Ok(()),
        Err(e) => Err(map_err(LifecycleError::Console(e))),
    }
}

/// `terminate-enclave`'s JSON, in nitro-cli's key order.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct TerminateOutput {
    enclave_name: String,
    #[serde(rename = "EnclaveID")]
    enclave_id: String,
    terminated: bool,
}

impl TerminateOutput {
    /// The answer for a terminated `rec`.
    pub fn of(rec: &EnclaveRecord) -> Self {
        Self {
            enclave_name: rec.enclave_name.clone(),
            enclave_id: rec.enclave_id.clone(),
            terminated: true,
        }
    }
}

/// `run-enclave`'s JSON.
pub fn run_json(rec: &EnclaveRecord) -> Value {
    json!({
        "EnclaveName": rec.enclave_name,
        "EnclaveID": rec.enclave_id,
        "ProcessID": rec.monitor_pid,
        "EnclaveCID": rec.cid,
        "NumberOfCPUs": rec.cpu_ids.len(),
        "CPUIDs": rec.cpu_ids,
        "MemoryMiB": rec.memory_mib,
    })
}

/// One `describe-enclaves` entry, in nitro-cli's key order (serde_json keeps insertion order).
pub fn describe_json(rec: &EnclaveRecord, metadata: bool) -> Value {
    let mut v = run_json(rec);
    let state = match rec.state {
        EnclaveState::Terminating => "TERMINATING",
        EnclaveState::Running | EnclaveState::Booting => "RUNNING",
    };
    let mut measurements = json!({
        "HashAlgorithm": "Sha384 { ... }",
        "PCR0": rec.measurements.pcr0,
        "PCR1": rec.measurements.pcr1,
        "PCR2": rec.measurements.pcr2,
    });
    if let Some(p8) = &rec.measurements.pcr8 {
        measurements["PCR8"] = json!(p8);
    }
    v["State"] = json!(state);
    v["Flags"] = json!(if rec.debug_mode { "DEBUG_MODE" } else { "NONE" });
    v["Measurements"] = measurements;
    if metadata {
        v["ImageName"] = json!(rec.metadata.image_name);
        v["ImageVersion"] = json!(rec.metadata.image_version);
        v["Metadata"] = rec.metadata.metadata.clone().unwrap_or(Value::Null);
    }
    // Cloister's own fields come after nitro-cli's, which keep nitro-cli's order.
    v["Isolation"] = json!(rec.isolation);
    v["Accelerator"] = json!(rec.accelerator);
    // Cloister's init runs in place of the image's (an image built by nitro-cli).
    v["InitReplaced"] = json!(rec.init_replaced);
    v
}

/// Maps a lifecycle error to its code.
pub fn map_err(e: LifecycleError) -> CliError {
    let code = match &e {
        LifecycleError::Invalid(f) | LifecycleError::Start(f) => match f.kind {
            FailureKind::Image => codes::E307,
            FailureKind::Signature => codes::E318,
            FailureKind::UnsafeDir => codes::E319,
            FailureKind::VmPathClosed => codes::E702,
            FailureKind::BadRequest => codes::E301,
            FailureKind::CidInvalid => codes::E302,
            FailureKind::CidInUse => codes::E303,
            FailureKind::Cpus => codes::E304,
            FailureKind::Memory => codes::E305,
            FailureKind::AllocatorConfig => codes::E308,
            FailureKind::BootTimeout => codes::E309,
            FailureKind::Setup => codes::E310,
            FailureKind::Terminated => codes::E317,
            FailureKind::Nsm => codes::E311,
            FailureKind::Unsupported => codes::E701,
            FailureKind::System => codes::E315,
        },
        LifecycleError::NotFound(_) => codes::E312,
        LifecycleError::NotDebug(_) => codes::E313,
        LifecycleError::TerminateTimeout(..) => codes::E314,
        LifecycleError::Spawn(_)
        | LifecycleError::MonitorVanished(_)
        | LifecycleError::State(_)
        | LifecycleError::Console(_) => codes::E315,
    };
    CliError::new(code, e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codes::enclave::CODES;

    #[test]
    fn start_failures_map_to_their_codes() {
        let code = |kind, message: &str| {
            map_err(LifecycleError::Start(
                cloister_runtime::monitor::StartFailure {
                    kind,
                    message: message.into(),
                },
            ))
            .code
        };
        assert_eq!(
            code(FailureKind::Terminated, "terminated while booting"),
            "E317"
        );
        assert_eq!(code(FailureKind::Setup, "init missing"), "E310");
        assert_eq!(code(FailureKind::BootTimeout, "no heartbeat"), "E309");
        assert_eq!(code(FailureKind::System, "broker"), "E315");
        assert_eq!(code(FailureKind::Unsupported, "no qemu"), "E701");
        assert_eq!(code(FailureKind::Image, "not a bzImage"), "E307");
        assert!(CODES.iter().any(|c| c.code == "E317"));
        assert_eq!(code(FailureKind::Signature, "bad signature"), "E318");
        assert_eq!(code(FailureKind::UnsafeDir, "writable"), "E319");
        assert_eq!(code(FailureKind::VmPathClosed, "mode 0700"), "E702");
        let exit = |c: &str| crate::errors::lookup(c).unwrap().exit.status();
        assert_eq!(exit("E318"), 4, "a failed signature check exits with 4");
        assert_eq!(exit("E319"), 6);
        assert_eq!(exit("E702"), 6);
    }

    #[test]
    fn console_deadline_writer_stops_a_busy_stream() {
        let mut sink = Vec::new();
        let mut w = DeadlineWriter {
            inner: &mut sink,
            deadline: std::time::Instant::now() + Duration::from_secs(3600),
        };
        std::io::Write::write_all(&mut w, b"abc").unwrap();
        w.deadline = std::time::Instant::now();
        let err = std::io::Write::write_all(&mut w, b"def").unwrap_err();
        assert!(err.get_ref().is_some_and(|r| r.is::<ConsoleDeadline>()));
        assert_eq!(sink, b"abc");
    }
}
