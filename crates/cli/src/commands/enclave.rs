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
    /// Serve run/describe/console/terminate to the members of a group over a Unix socket
    /// (run as root; other users' CLIs use it by themselves).
    Daemon(super::daemon::DaemonArgs),
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
    /// Number of CPUs (this or --cpu-ids is required without --config, as with nitro-cli).
    #[arg(
        long,
        value_name = "N",
        conflicts_with = "cpu_ids",
        required_unless_present_any = ["config", "cpu_ids"]
    )]
    pub cpu_count: Option<u32>,
    /// Exact CPU ids (list or ranges: 2,3 or 2-5).
    #[arg(long, value_name = "IDS", num_args = 1.., value_delimiter = ',')]
    pub cpu_ids: Option<Vec<String>>,
    /// Memory in MiB, or with a suffix: M (MiB), G (GiB), T (TiB), as nitro-cli takes it.
    #[arg(long, value_name = "MiB", required_unless_present = "config", value_parser = parse_memory_mib)]
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
    /// Enclave name (default: the image file's name without `.eif`); a name already in use
    /// gets `_1`, `_2`, ... appended, as with nitro-cli.
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
    /// Disconnect this many seconds after connecting, as nitro-cli does.
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
    ErrorInfo { code: "E320", exit: ExitKind::System, summary: "Cannot reach the enclave daemon", explanation: "Run by a user other than root, the enclave verbs (run-enclave, describe-enclaves, console, terminate-enclave) go through `cloister daemon`'s socket (CLOISTER_DAEMON_SOCKET, default /run/cloister-daemon.sock). The socket could not be reached or the daemon stopped answering: start `cloister daemon` as root, and check that you are in its group (default `ne`) so the socket (root:ne, mode 0660) lets you in." },
    ErrorInfo { code: "E321", exit: ExitKind::Usage, summary: "The enclave daemon refused the request", explanation: "`cloister daemon` serves only members of its group (default `ne`, nitro-cli's), and only run-enclave, describe-enclaves, console and terminate-enclave, with arguments it checks itself; run-enclave must pass the image as an open file. The message says what was refused." },
    ErrorInfo { code: "E322", exit: ExitKind::System, summary: "Cannot start the enclave daemon", explanation: "`cloister daemon` could not find its group (--group, default `ne`: create it with groupadd) or create its socket (--socket, CLOISTER_DAEMON_SOCKET, default /run/cloister-daemon.sock); it must run as root." },
    ErrorInfo { code: "E701", exit: ExitKind::Unavailable, summary: "VM isolation unavailable on this host", explanation: "--isolation vm runs the enclave as a QEMU microVM and needs qemu-system-x86_64 (Debian/Ubuntu: apt-get install qemu-system-x86; CLOISTER_QEMU names another binary). KVM is used where /dev/kvm runs normal guests, TCG emulation otherwise. Install QEMU or use --isolation process." },
    ErrorInfo { code: "E702", exit: ExitKind::System, summary: "Run directory out of QEMU's reach", explanation: "A VM enclave's QEMU runs as the enclave's own unprivileged uid and must reach the enclave's kernel, initrd and sockets inside the run directory, so the run directory and every directory above it must be searchable by other users (the x bit for others; a directory made by `mktemp -d` has mode 0700 and is not). The message names the directory: `chmod o+x DIR` (e.g. mode 0711, which lets others pass through without listing it) or use another run directory (CLOISTER_RUN_DIR, default /run/cloister). The directories cloister creates itself are made searchable." },
];

/// Parses `--memory`: MiB as a number, or a number with an `M`, `G` or `T` suffix (binary
/// units, as nitro-cli reads them: `4G` is 4096 MiB).
pub fn parse_memory_mib(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (digits, factor) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let factor: u64 = match c.to_ascii_uppercase() {
                'M' => 1,
                'G' => 1024,
                'T' => 1024 * 1024,
                _ => return Err(format!("unknown memory unit {c:?} (use M, G or T)")),
            };
            (&t[..i], factor)
        }
        _ => (t, 1),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "{text:?} is not a memory size (e.g. 512, 512M, 4G, 1T)"
        ));
    }
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(factor))
        .ok_or_else(|| format!("{text:?} is too large"))
}

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

/// Runs one subcommand.
pub fn run(command: EnclaveCommand) -> CliResult<()> {
    if !matches!(
        command,
        EnclaveCommand::Daemon(_) | EnclaveCommand::Monitor(_)
    ) {
        if let Some(socket) = super::daemon::client_socket() {
            return run_via_daemon(&socket, command);
        }
    }
    let run_dir = RunDir::from_env();
    match command {
        EnclaveCommand::Daemon(a) => super::daemon::run_daemon(a),
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
                out.push(TerminateOutput::of(rec));
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
            stream_console(
                &run_dir,
                &rec,
                &mut out,
                a.disconnect_timeout.map(Duration::from_secs),
            )
        }
        EnclaveCommand::Monitor(a) => {
            let code = cloister_runtime::monitor_main(&a.enclave_id);
            std::process::exit(code)
        }
    }
}

/// `terminate-enclave`'s JSON, in nitro-cli's key order.
#[derive(Serialize)]
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

/// Runs an enclave verb through the daemon (`cloister daemon`), for a user who is not root.
fn run_via_daemon(socket: &std::path::Path, command: EnclaveCommand) -> CliResult<()> {
    use super::daemon::{call, Request, Target};
    let target = |id: Option<String>, name: Option<String>| match (id, name) {
        (Some(id), _) => Target::Id(id),
        (None, Some(n)) => Target::Name(n),
        (None, None) => Target::All,
    };
    let console = |target: Target, timeout: Option<u64>| -> CliResult<()> {
        let (conn, _) = call(
            socket,
            &Request::Console {
                target,
                disconnect_timeout_s: timeout,
            },
            None,
        )?;
        let mut out = std::io::stdout().lock();
        std::io::copy(&mut &conn, &mut out).code("E315")?;
        Ok(())
    };
    match command {
        EnclaveCommand::RunEnclave(a) => {
            let (opts, attach) = run_options(a)?;
            // Opened with the caller's rights; the daemon gets the open file, never the path.
            let file = std::fs::File::open(&opts.eif_path)
                .map_err(|e| {
                    anyhow::Error::new(e)
                        .context(format!("cannot read {}", opts.eif_path.display()))
                })
                .code("E307")?;
            let fd = std::os::fd::OwnedFd::from(file);
            let (cpu_count, cpu_ids) = match opts.cpus {
                CpuRequest::Count(n) => (Some(n), None),
                CpuRequest::Ids(ids) => (None, Some(ids)),
            };
            let req = Request::RunEnclave {
                name: opts.name,
                image_file_name: opts
                    .eif_path
                    .file_name()
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "enclave".into()),
                cpu_count,
                cpu_ids,
                memory_mib: opts.memory_mib,
                cid: opts.cid,
                debug_mode: opts.debug_mode,
                isolation: opts.isolation.as_str().to_owned(),
            };
            let (_, v) = call(socket, &req, Some(&fd))?;
            print_json(&v)?;
            if attach {
                let id = v["EnclaveID"].as_str().unwrap_or_default().to_owned();
                console(Target::Id(id), None)?;
            }
            Ok(())
        }
        EnclaveCommand::DescribeEnclaves(a) => {
            let (_, v) = call(
                socket,
                &Request::DescribeEnclaves {
                    metadata: a.metadata,
                },
                None,
            )?;
            print_json(&v)
        }
        EnclaveCommand::TerminateEnclave(a) => {
            let t = if a.all {
                Target::All
            } else {
                target(a.enclave_id, a.enclave_name)
            };
            let (_, v) = call(socket, &Request::TerminateEnclave { target: t }, None)?;
            print_json(&v)
        }
        EnclaveCommand::Console(a) => {
            console(target(a.enclave_id, a.enclave_name), a.disconnect_timeout)
        }
        EnclaveCommand::Daemon(_) | EnclaveCommand::Monitor(_) => {
            Err(CliError::msg("E099", "not a daemon verb"))
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
            FailureKind::Image => "E307",
            FailureKind::Signature => "E318",
            FailureKind::UnsafeDir => "E319",
            FailureKind::VmPathClosed => "E702",
            FailureKind::BadRequest => "E301",
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
    let (mut opts, attach) = run_options(a)?;
    // The memory rule is checked here, so a request that breaks it gets its own code (E306)
    // from this check rather than the runtime's general "bad request" class; the runtime
    // checks it again on the file it opens.
    if let Ok(meta) = std::fs::metadata(&opts.eif_path) {
        cloister_runtime::monitor::check_memory(opts.memory_mib, meta.len())
            .map_err(|f| CliError::new("E306", f))?;
    }
    let running: Vec<String> = lifecycle::describe(run_dir)
        .map_err(map_err)?
        .into_iter()
        .map(|r| r.enclave_name)
        .collect();
    opts.name = Some(enclave_name(opts.name.as_deref(), &opts.eif_path, &running));
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
        stream_console(run_dir, &rec, &mut out, None)?;
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
        // Neither --cpu-count nor --cpu-ids: refused by the parser, as nitro-cli does.
        let argv = [
            "cloister",
            "run-enclave",
            "--eif-path",
            "x.eif",
            "--memory",
            "64",
        ];
        assert!(Cli::try_parse_from(argv).is_err());
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
    fn memory_takes_nitro_suffixes() {
        for (text, mib) in [
            ("512", 512),
            ("256M", 256),
            ("256m", 256),
            ("4G", 4096),
            ("1T", 1 << 20),
        ] {
            assert_eq!(parse_memory_mib(text), Ok(mib), "{text}");
        }
        for bad in ["", "G", "4K", "4GB", "-1", "1.5G", "99999999999999999999T"] {
            assert!(parse_memory_mib(bad).is_err(), "{bad}");
        }
        let a = parse(&["--eif-path", "x.eif", "--cpu-count", "2", "--memory", "4G"]);
        assert_eq!(a.memory, Some(4096));
        let bad = [
            "cloister",
            "run-enclave",
            "--eif-path",
            "x",
            "--cpu-count",
            "2",
        ];
        assert!(Cli::try_parse_from(bad.iter().chain(&["--memory", "4X"])).is_err());
    }

    #[test]
    fn names_follow_nitro_rules() {
        let p = std::path::Path::new("/images/hello.eif");
        let running = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(enclave_name(None, p, &[]), "hello");
        assert_eq!(enclave_name(None, p, &running(&["hello"])), "hello_1");
        assert_eq!(
            enclave_name(None, p, &running(&["hello", "hello_1"])),
            "hello_2"
        );
        assert_eq!(enclave_name(Some("n"), p, &running(&["n"])), "n_1");
        let q = std::path::Path::new("/images/app.v2.img");
        assert_eq!(enclave_name(None, q, &[]), "app.v2.img");
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
