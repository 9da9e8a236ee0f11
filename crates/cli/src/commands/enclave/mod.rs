//! Enclave lifecycle (E3xx): `run-enclave`, `describe-enclaves`, `terminate-enclave` and
//! `console`, with nitro-cli's flags and JSON output, plus the hidden monitor entry point that
//! `run-enclave` re-executes this binary with. The work is done by `cloister-runtime`.

pub mod daemon;
mod records;

pub use records::{
    describe_json, enclave_name, map_err, run_json, stream_console, TerminateOutput,
};

use crate::codes;
use crate::errors::{print_json, CliError, CliResult, Coded};
use clap::{Args, Subcommand};
use cloister_runtime::allocator::{parse_cpu_list, CpuRequest};
use cloister_runtime::lifecycle::{self, MonitorCommand, RunOptions, Selector};
use cloister_runtime::{Isolation, RunDir};
use serde::Deserialize;
use serde_json::Value;
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
    Daemon(daemon::DaemonArgs),
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

pub use crate::codes::enclave::CODES;

/// Why a `--memory` value does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MemoryParseError {
    /// A suffix other than M, G or T.
    #[error("unknown memory unit {0:?} (use M, G or T)")]
    Unit(char),
    /// Not digits with an optional suffix.
    #[error("{0:?} is not a memory size (e.g. 512, 512M, 4G, 1T)")]
    NotASize(String),
    /// More MiB than a u64 holds.
    #[error("{0:?} is too large")]
    TooLarge(String),
}

/// Parses `--memory`: MiB as a number, or a number with an `M`, `G` or `T` suffix (binary
/// units, as nitro-cli reads them: `4G` is 4096 MiB).
pub fn parse_memory_mib(text: &str) -> Result<u64, MemoryParseError> {
    let t = text.trim();
    let (digits, factor) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let factor: u64 = match c.to_ascii_uppercase() {
                'M' => 1,
                'G' => 1024,
                'T' => 1024 * 1024,
                _ => return Err(MemoryParseError::Unit(c)),
            };
            (&t[..i], factor)
        }
        _ => (t, 1),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(MemoryParseError::NotASize(text.to_owned()));
    }
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(factor))
        .ok_or_else(|| MemoryParseError::TooLarge(text.to_owned()))
}

/// Runs one subcommand.
pub fn run(command: EnclaveCommand) -> CliResult<()> {
    if !matches!(
        command,
        EnclaveCommand::Daemon(_) | EnclaveCommand::Monitor(_)
    ) {
        if let Some(socket) = daemon::client_socket() {
            return run_via_daemon(&socket, command);
        }
    }
    let run_dir = RunDir::from_env();
    match command {
        EnclaveCommand::Daemon(a) => daemon::run_daemon(a),
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
                        codes::E301,
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
            crate::errors::exit_with(code)
        }
    }
}

/// Runs an enclave verb through the daemon (`cloister daemon`), for a user who is not root.
fn run_via_daemon(socket: &std::path::Path, command: EnclaveCommand) -> CliResult<()> {
    use daemon::{call, Request, Target};
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
        std::io::copy(&mut &conn, &mut out).code(codes::E315)?;
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
                .code(codes::E307)?;
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
            Err(CliError::msg(codes::E099, "not a daemon verb"))
        }
    }
}

fn read_config(path: &PathBuf) -> CliResult<RunConfigFile> {
    use std::io::Read;
    let f = std::fs::File::open(path).code(codes::E316)?;
    let mut text = Vec::new();
    f.take(MAX_CONFIG_FILE + 1)
        .read_to_end(&mut text)
        .code(codes::E316)?;
    if text.len() as u64 > MAX_CONFIG_FILE {
        return Err(CliError::msg(
            codes::E316,
            format!("{} is larger than {MAX_CONFIG_FILE} bytes", path.display()),
        ));
    }
    serde_json::from_slice(&text).map_err(|e| {
        CliError::new(
            codes::E316,
            anyhow::Error::new(e).context(format!("invalid config {}", path.display())),
        )
    })
}

/// Turns the flags (or the config file) into run options; returns them and whether to attach.
pub fn run_options(a: RunEnclaveArgs) -> CliResult<(RunOptions, bool)> {
    let isolation: Isolation = a
        .isolation
        .parse()
        .map_err(|m| CliError::msg(codes::E301, m))?;
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
                Some(parts) => Some(
                    parse_cpu_list(&parts.join(",")).map_err(|e| CliError::new(codes::E301, e))?,
                ),
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
                codes::E301,
                "use either cpu_count or cpu_ids, not both",
            ))
        }
        (Some(n), None) => CpuRequest::Count(n),
        (None, Some(ids)) => CpuRequest::Ids(ids),
        (None, None) => {
            return Err(CliError::msg(
                codes::E301,
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
            .map_err(|f| CliError::new(codes::E306, f))?;
    }
    let running: Vec<String> = lifecycle::describe(run_dir)
        .map_err(map_err)?
        .into_iter()
        .map(|r| r.enclave_name)
        .collect();
    opts.name = Some(enclave_name(opts.name.as_deref(), &opts.eif_path, &running));
    let program = std::env::current_exe().code(codes::E315)?;
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
