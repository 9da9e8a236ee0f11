//! Enclave lifecycle (E3xx): `run-enclave`, `describe-enclaves`, `terminate-enclave` and
//! `console`, with nitro-cli's flags and JSON output, plus the hidden monitor entry point that
//! `run-enclave` re-executes this binary with. The work is done by `cloister-runtime`.

use crate::errors::{print_json, CliError, CliResult, Coded, ErrorInfo, ExitKind};
use clap::{Args, Subcommand};
use cloister_runtime::allocator::{parse_cpu_list, CpuRequest};
use cloister_runtime::lifecycle::{self, LifecycleError, MonitorCommand, RunOptions, Selector};
use cloister_runtime::{EnclaveRecord, EnclaveState, FailureKind, Isolation, RunDir};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Duration;

/// Largest `--config` file read.
const MAX_CONFIG_FILE: u64 = 64 * 1024;

/// Subcommands of this area.
#[derive(Debug, Subcommand)]
pub enum EnclaveCommand {
    /// Start an enclave from an image; returns once its init has sent the boot heartbeat.
    RunEnclave(RunEnclaveArgs),
    /// List the running enclaves as JSON.
    DescribeEnclaves(DescribeArgs),
    /// Terminate an enclave (or all of them).
    TerminateEnclave(TerminateArgs),
    /// Stream a debug-mode enclave's console.
    Console(ConsoleArgs),
    /// Internal: the per-enclave monitor started by run-enclave.
    #[command(name = "__enclave-monitor", hide = true)]
    Monitor(MonitorArgs),
}

/// `run-enclave` flags (nitro-cli's, plus `--isolation`).
#[derive(Debug, Clone, Args)]
pub struct RunEnclaveArgs {
    /// Enclave image file.
    #[arg(long, value_name = "FILE", required_unless_present = "config")]
    pub eif_path: Option<PathBuf>,
    /// Number of CPUs.
    #[arg(long, value_name = "N", conflicts_with = "cpu_ids")]
    pub cpu_count: Option<u32>,
    /// Exact CPU ids (list or ranges: 2,3 or 2-5).
    #[arg(long, value_name = "IDS", num_args = 1.., value_delimiter = ',')]
    pub cpu_ids: Option<Vec<String>>,
    /// Memory in MiB.
    #[arg(long, value_name = "MiB", required_unless_present = "config")]
    pub memory: Option<u64>,
    /// Enclave CID (0 or absent: assign one).
    #[arg(long, value_name = "CID")]
    pub enclave_cid: Option<u64>,
    /// Debug mode: console available, PCR0-2 zero in attestation documents.
    #[arg(long)]
    pub debug_mode: bool,
    /// Stream the console after start (implies --debug-mode).
    #[arg(long)]
    pub attach_console: bool,
    /// Enclave name (default: the image file's name).
    #[arg(long, value_name = "NAME")]
    pub enclave_name: Option<String>,
    /// nitro-cli JSON config file (eif_path, enclave_cid, memory_mib, cpu_ids, cpu_count,
    /// debug_mode, attach_console, enclave_name).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["eif_path", "memory", "cpu_count", "cpu_ids"])]
    pub config: Option<PathBuf>,
    /// Isolation backend.
    #[arg(long, value_name = "process|vm", default_value = "process")]
    pub isolation: String,
}

/// nitro-cli's `--config` JSON.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfigFile {
    /// Image.
    pub eif_path: PathBuf,
    /// CID.
    #[serde(default)]
    pub enclave_cid: Option<u64>,
    /// Memory.
    pub memory_mib: u64,
    /// CPU ids.
    #[serde(default)]
    pub cpu_ids: Option<Vec<u32>>,
    /// CPU count.
    #[serde(default)]
    pub cpu_count: Option<u32>,
    /// Debug mode.
    #[serde(default)]
    pub debug_mode: Option<bool>,
    /// Attach console.
    #[serde(default)]
    pub attach_console: Option<bool>,
    /// Name.
    #[serde(default)]
    pub enclave_name: Option<String>,
}

/// `describe-enclaves` flags.
#[derive(Debug, Clone, Args)]
pub struct DescribeArgs {
    /// Include the image metadata (ImageName, ImageVersion, Metadata).
    #[arg(long)]
    pub metadata: bool,
}

/// `terminate-enclave` flags.
#[derive(Debug, Clone, Args)]
#[group(id = "target", required = true, multiple = false)]
pub struct TerminateArgs {
    /// Enclave id.
    #[arg(long, value_name = "ID")]
    pub enclave_id: Option<String>,
    /// Enclave name.
    #[arg(long, value_name = "NAME")]
    pub enclave_name: Option<String>,
    /// Every running enclave.
    #[arg(long)]
    pub all: bool,
}

/// `console` flags.
#[derive(Debug, Clone, Args)]
pub struct ConsoleArgs {
    /// Enclave id.
    #[arg(
        long,
        value_name = "ID",
        conflicts_with = "enclave_name",
        required_unless_present = "enclave_name"
    )]
    pub enclave_id: Option<String>,
    /// Enclave name.
    #[arg(long, value_name = "NAME")]
    pub enclave_name: Option<String>,
    /// Disconnect after this many seconds without console output.
    #[arg(long, value_name = "S")]
    pub disconnect_timeout: Option<u64>,
}

/// Hidden monitor flags.
#[derive(Debug, Clone, Args)]
pub struct MonitorArgs {
    /// The enclave this monitor owns.
    #[arg(long)]
    pub enclave_id: String,
}

/// Error codes of this area (and the VM backend's E701 and E702).
pub const CODES: &[ErrorInfo] = &[
    ErrorInfo { code: "E301", exit: ExitKind::Usage, summary: "Invalid enclave arguments", explanation: "The run-enclave arguments or --config file are inconsistent: a CPU list that does not parse, a duplicate or empty enclave name, zero CPUs, or CPUs that are not whole cores (enclaves take every hyperthread of a core: --cpu-count must be a multiple of the threads per core and --cpu-ids must list whole cores). The message says which." },
    ErrorInfo { code: "E302", exit: ExitKind::Usage, summary: "Invalid enclave CID", explanation: "CIDs 1, 2 and 3 are reserved (3 is the parent) and CIDs must be below 4294967295. Use 0 (or leave --enclave-cid out) to have one assigned from 4 up." },
    ErrorInfo { code: "E303", exit: ExitKind::Unavailable, summary: "Enclave CID already in use", explanation: "Another running enclave has this CID. Pick another one or let cloister assign one." },
    ErrorInfo { code: "E304", exit: ExitKind::Unavailable, summary: "Not enough free CPUs", explanation: "The request does not fit the enclave CPU pool: the CPUs are used by other enclaves or are not in the pool. Terminate an enclave or change allocator.yaml (cpu_count / cpu_pool); describe-enclaves shows what is in use." },
    ErrorInfo { code: "E305", exit: ExitKind::Unavailable, summary: "Not enough free enclave memory", explanation: "The memory asked for does not fit what is left of the pool's memory_mib (allocator.yaml). Terminate an enclave, ask for less, or enlarge the pool." },
    ErrorInfo { code: "E306", exit: ExitKind::InvalidInput, summary: "Enclave memory too small", explanation: "An enclave needs at least 64 MiB and at least 4 times the size of its image file." },
    ErrorInfo { code: "E307", exit: ExitKind::InvalidInput, summary: "Cannot use the enclave image", explanation: "The image file cannot be read or is not a valid EIF (`cloister describe-eif --eif-path FILE` shows what is wrong with it), or, for --isolation vm, its kernel is not a bootable bzImage: build VM-capable images with `cloister blobs prepare` and `build-enclave --blobs`." },
    ErrorInfo { code: "E308", exit: ExitKind::InvalidInput, summary: "Invalid allocator configuration", explanation: "allocator.yaml (CLOISTER_ALLOCATOR_CONFIG or /etc/cloister/allocator.yaml) must hold memory_mib (at least 64) and either cpu_count or cpu_pool (\"2,3,6-9\") naming online CPUs, and nothing else. cpu_pool must hold whole cores (every sibling hyperthread of each core it names), and on hosts with more than two CPUs never CPU 0's core, which stays with the host." },
    ErrorInfo { code: "E309", exit: ExitKind::Timeout, summary: "Enclave boot timed out", explanation: "The enclave's init did not send the boot heartbeat (vsock port 9000) in time. The message quotes the console's last lines. The timeout follows nitro-cli's rule (90 s per started 6 GiB of image plus 90 s per started 100 GiB of memory); CLOISTER_BOOT_TIMEOUT_MS overrides it. Everything started for the enclave was torn down." },
    ErrorInfo { code: "E310", exit: ExitKind::Failure, summary: "Enclave failed to start", explanation: "The enclave's setup failed or it exited before its boot heartbeat (a missing or broken /init in the image, a ramdisk with unsafe paths, a namespace or mount the kernel refused). The message carries the cause and the console's last lines." },
    ErrorInfo { code: "E311", exit: ExitKind::System, summary: "Attestation setup failed", explanation: "The enclave's NSM could not be created: the PKI directory (CLOISTER_PKI_DIR, default /var/lib/cloister/pki) cannot be created or read, or the host CA cannot issue the enclave's signing certificate." },
    ErrorInfo { code: "E312", exit: ExitKind::Unavailable, summary: "No such enclave", explanation: "No running enclave has this id or name. `cloister describe-enclaves` lists the running ones." },
    ErrorInfo { code: "E313", exit: ExitKind::Unavailable, summary: "Console not available", explanation: "The console of an enclave can only be read when it runs in debug mode (--debug-mode or --attach-console), as on AWS." },
    ErrorInfo { code: "E314", exit: ExitKind::System, summary: "Enclave termination failed", explanation: "The enclave's monitor did not finish its teardown in time and was killed; the enclave is gone but its resources may be reclaimed only at the next command." },
    ErrorInfo { code: "E315", exit: ExitKind::System, summary: "Enclave runtime failure", explanation: "The runtime could not start the enclave's monitor, read or write its run directory (CLOISTER_RUN_DIR, default /run/cloister), set up cgroups or the vsock broker. Enclaves need root." },
    ErrorInfo { code: "E316", exit: ExitKind::InvalidInput, summary: "Invalid enclave config file", explanation: "The --config file must be nitro-cli's JSON: eif_path, memory_mib, and cpu_count or cpu_ids; optionally enclave_cid, debug_mode, attach_console, enclave_name; nothing else." },
    ErrorInfo { code: "E317", exit: ExitKind::Failure, summary: "Enclave terminated while booting", explanation: "terminate-enclave (or a SIGTERM, SIGINT or SIGHUP to the enclave's monitor) arrived before the enclave's init sent its boot heartbeat. Everything started for the enclave was torn down; run it again if that was not intended." },
    ErrorInfo { code: "E318", exit: ExitKind::VerificationFailed, summary: "Enclave image signature check failed", explanation: "The image is signed, but its signature does not verify (it was not made with the signing certificate's key, or it signs another PCR0: the image was changed after it was signed), or the signing certificate is expired or not yet valid at the current time. As with nitro-cli, such an image does not run. `cloister describe-eif --eif-path FILE` shows the certificate and the signature check; sign the image again with `cloister sign-eif` and a valid certificate." },
    ErrorInfo { code: "E319", exit: ExitKind::System, summary: "Unsafe run or PKI directory", explanation: "The run directory (CLOISTER_RUN_DIR, default /run/cloister) and the attestation PKI directory (CLOISTER_PKI_DIR, default /var/lib/cloister/pki) hold what the runtime trusts: enclave records and locks, cached image roots and measurements, the vsock fabric, the host CA. Each must be a directory owned by root (or the user running cloister) and not writable by its group or other users. The message names the directory and what is wrong; fix its owner or mode (`chmod go-w DIR`) or use another directory." },
    ErrorInfo { code: "E701", exit: ExitKind::Unavailable, summary: "VM isolation unavailable on this host", explanation: "--isolation vm runs the enclave as a QEMU microVM and needs qemu-system-x86_64 (Debian/Ubuntu: apt-get install qemu-system-x86; CLOISTER_QEMU names another binary). KVM is used where /dev/kvm runs normal guests, TCG emulation otherwise. Install QEMU or use --isolation process." },
    ErrorInfo { code: "E702", exit: ExitKind::System, summary: "Run directory out of QEMU's reach", explanation: "A VM enclave's QEMU runs as the enclave's own unprivileged uid and must reach the enclave's kernel, initrd and sockets inside the run directory, so the run directory and every directory above it must be searchable by other users (the x bit for others; a directory made by `mktemp -d` has mode 0700 and is not). The message names the directory: `chmod o+x DIR` (e.g. mode 0711, which lets others pass through without listing it) or use another run directory (CLOISTER_RUN_DIR, default /run/cloister). The directories cloister creates itself are made searchable." },
];

/// Runs one subcommand.
pub fn run(command: EnclaveCommand) -> CliResult<()> {
    let run_dir = RunDir::from_env();
    match command {
        EnclaveCommand::RunEnclave(a) => run_enclave(&run_dir, a),
        EnclaveCommand::DescribeEnclaves(a) => {
            let recs = lifecycle::describe(&run_dir).map_err(map_err)?;
            let out: Vec<Value> = recs.iter().map(|r| describe_json(r, a.metadata)).collect();
            print_json(&out)
        }
        EnclaveCommand::TerminateEnclave(a) => {
            let sel = if a.all {
                Selector::All
            } else if let Some(id) = a.enclave_id {
                Selector::Id(id)
            } else {
                Selector::Name(a.enclave_name.unwrap_or_default())
            };
            let recs = lifecycle::select(&run_dir, &sel).map_err(map_err)?;
            let mut out = Vec::new();
            for rec in &recs {
                lifecycle::terminate(&run_dir, rec).map_err(map_err)?;
                out.push(TerminateOutput {
                    enclave_name: rec.enclave_name.clone(),
                    enclave_id: rec.enclave_id.clone(),
                    terminated: true,
                });
            }
            if matches!(sel, Selector::All) {
                print_json(&out)
            } else {
                print_json(&out[0])
            }
        }
        EnclaveCommand::Console(a) => {
            let sel = match (a.enclave_id, a.enclave_name) {
                (Some(id), _) => Selector::Id(id),
                (None, Some(n)) => Selector::Name(n),
                (None, None) => {
                    return Err(CliError::msg(
                        "E301",
                        "--enclave-id or --enclave-name is required",
                    ))
                }
            };
            let rec = lifecycle::select(&run_dir, &sel)
                .map_err(map_err)?
                .remove(0);
            let mut out = std::io::stdout().lock();
            lifecycle::console(
                &run_dir,
                &rec,
                &mut out,
                a.disconnect_timeout.map(Duration::from_secs),
            )
            .map_err(map_err)
        }
        EnclaveCommand::Monitor(a) => {
            let code = cloister_runtime::monitor_main(&a.enclave_id);
            std::process::exit(code)
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct TerminateOutput {
    enclave_name: String,
    #[serde(rename = "EnclaveID")]
    enclave_id: String,
    terminated: bool,
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

/// One `describe-enclaves` entry.
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
    v["Isolation"] = json!(rec.isolation);
    v["Accelerator"] = json!(rec.accelerator);
    if metadata {
        v["ImageName"] = json!(rec.metadata.image_name);
        v["ImageVersion"] = json!(rec.metadata.image_version);
        v["Metadata"] = rec.metadata.metadata.clone().unwrap_or(Value::Null);
    }
    v
}

/// Maps a lifecycle error to its code.
fn map_err(e: LifecycleError) -> CliError {
    let code = match &e {
        LifecycleError::Invalid(f) | LifecycleError::Start(f) => match f.kind {
            FailureKind::Image => "E307",
            FailureKind::Signature => "E318",
            FailureKind::UnsafeDir => "E319",
            FailureKind::VmPathClosed => "E702",
            FailureKind::BadRequest => {
                if f.message.contains("too little") {
                    "E306"
                } else {
                    "E301"
                }
            }
            FailureKind::CidInvalid => "E302",
            FailureKind::CidInUse => "E303",
            FailureKind::Cpus => "E304",
            FailureKind::Memory => "E305",
            FailureKind::AllocatorConfig => "E308",
            FailureKind::BootTimeout => "E309",
            FailureKind::Setup => "E310",
            FailureKind::Terminated => "E317",
            FailureKind::Nsm => "E311",
            FailureKind::Unsupported => "E701",
            FailureKind::System => "E315",
        },
        LifecycleError::NotFound(_) => "E312",
        LifecycleError::NotDebug(_) => "E313",
        LifecycleError::TerminateTimeout(..) => "E314",
        LifecycleError::Spawn(_)
        | LifecycleError::MonitorVanished(_)
        | LifecycleError::State(_)
        | LifecycleError::Console(_) => "E315",
    };
    CliError::new(code, e)
}

fn read_config(path: &PathBuf) -> CliResult<RunConfigFile> {
    use std::io::Read;
    let f = std::fs::File::open(path).code("E316")?;
    let mut text = Vec::new();
    f.take(MAX_CONFIG_FILE + 1)
        .read_to_end(&mut text)
        .code("E316")?;
    if text.len() as u64 > MAX_CONFIG_FILE {
        return Err(CliError::msg(
            "E316",
            format!("{} is larger than {MAX_CONFIG_FILE} bytes", path.display()),
        ));
    }
    serde_json::from_slice(&text).map_err(|e| {
        CliError::new(
            "E316",
            anyhow::Error::new(e).context(format!("invalid config {}", path.display())),
        )
    })
}

/// Turns the flags (or the config file) into run options; returns them and whether to attach.
pub fn run_options(a: RunEnclaveArgs) -> CliResult<(RunOptions, bool)> {
    let isolation: Isolation = a
        .isolation
        .parse()
        .map_err(|m: String| CliError::msg("E301", m))?;
    let (eif_path, memory, cpu_count, cpu_ids, cid, debug, attach, name) = match &a.config {
        Some(path) => {
            let c = read_config(path)?;
            (
                c.eif_path,
                c.memory_mib,
                c.cpu_count,
                c.cpu_ids,
                c.enclave_cid.or(a.enclave_cid),
                c.debug_mode.unwrap_or(false) || a.debug_mode,
                c.attach_console.unwrap_or(false) || a.attach_console,
                c.enclave_name.or(a.enclave_name),
            )
        }
        None => {
            let ids = match &a.cpu_ids {
                Some(parts) => {
                    Some(parse_cpu_list(&parts.join(",")).map_err(|e| CliError::new("E301", e))?)
                }
                None => None,
            };
            (
                a.eif_path.clone().unwrap_or_default(),
                a.memory.unwrap_or(0),
                a.cpu_count,
                ids,
                a.enclave_cid,
                a.debug_mode,
                a.attach_console,
                a.enclave_name,
            )
        }
    };
    let cpus = match (cpu_count, cpu_ids) {
        (Some(_), Some(_)) => {
            return Err(CliError::msg(
                "E301",
                "use either cpu_count or cpu_ids, not both",
            ))
        }
        (Some(n), None) => CpuRequest::Count(n),
        (None, Some(ids)) => CpuRequest::Ids(ids),
        (None, None) => {
            return Err(CliError::msg(
                "E301",
                "--cpu-count or --cpu-ids is required",
            ))
        }
    };
    Ok((
        RunOptions {
            eif_path,
            cpus,
            memory_mib: memory,
            cid: cid.unwrap_or(0),
            debug_mode: debug || attach,
            name,
            isolation,
        },
        attach,
    ))
}

fn run_enclave(run_dir: &RunDir, a: RunEnclaveArgs) -> CliResult<()> {
    let (opts, attach) = run_options(a)?;
    let program = std::env::current_exe().code("E315")?;
    let monitor = MonitorCommand {
        program,
        args: vec![
            cloister_runtime::MONITOR_SUBCOMMAND.to_owned(),
            "--enclave-id".to_owned(),
        ],
    };
    // Without --attach-console the CLI exits as soon as the enclave is up.
    let start = if attach {
        lifecycle::run_enclave
    } else {
        lifecycle::run_enclave_then_exit
    };
    let rec = start(run_dir, &opts, &monitor).map_err(map_err)?;
    print_json(&run_json(&rec))?;
    if attach {
        let mut out = std::io::stdout().lock();
        lifecycle::console(run_dir, &rec, &mut out, None).map_err(map_err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Cli;
    use clap::Parser;

    fn parse(args: &[&str]) -> RunEnclaveArgs {
        let mut full = vec!["cloister", "run-enclave"];
        full.extend_from_slice(args);
        match Cli::try_parse_from(full).unwrap().command {
            crate::Command::Enclave(EnclaveCommand::RunEnclave(a)) => a,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn run_flags_map_to_options() {
        let (o, attach) = run_options(parse(&[
            "--eif-path",
            "x.eif",
            "--cpu-ids",
            "1,3-4",
            "--memory",
            "128",
            "--attach-console",
        ]))
        .unwrap();
        assert_eq!(o.cpus, CpuRequest::Ids(vec![1, 3, 4]));
        assert!(attach && o.debug_mode);
        assert_eq!(o.memory_mib, 128);
        let (o, _) = run_options(parse(&[
            "--eif-path",
            "x.eif",
            "--cpu-count",
            "2",
            "--memory",
            "64",
            "--enclave-cid",
            "9",
        ]))
        .unwrap();
        assert_eq!((o.cpus, o.cid), (CpuRequest::Count(2), 9));
        let err = run_options(parse(&["--eif-path", "x.eif", "--memory", "64"])).unwrap_err();
        assert_eq!(err.code, "E301");
        let err = run_options(parse(&[
            "--eif-path",
            "x.eif",
            "--memory",
            "64",
            "--cpu-count",
            "1",
            "--isolation",
            "lxc",
        ]))
        .unwrap_err();
        assert_eq!(err.code, "E301");
    }

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
    fn config_file_is_nitro_format() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.json");
        std::fs::write(&p, r#"{"eif_path":"a.eif","memory_mib":256,"cpu_count":1,"enclave_cid":7,"debug_mode":true,"enclave_name":"n"}"#).unwrap();
        let (o, _) = run_options(parse(&["--config", p.to_str().unwrap()])).unwrap();
        assert_eq!(
            (o.memory_mib, o.cid, o.debug_mode, o.name.as_deref()),
            (256, 7, true, Some("n"))
        );
        std::fs::write(
            &p,
            r#"{"eif_path":"a.eif","memory_mib":256,"cpu_count":1,"bogus":1}"#,
        )
        .unwrap();
        assert_eq!(
            run_options(parse(&["--config", p.to_str().unwrap()]))
                .unwrap_err()
                .code,
            "E316"
        );
    }
}
