//! nitro-cli compatibility: the error contract a script written for nitro-cli relies on, the
//! names the binary answers to, and nitro-cli's environment variables.
//!
//! Cloister's own codes (`E` and three digits, [`crate::errors`]) stay the source of truth.
//! Each maps, by a fixed table ([`nitro_code_for`]), to one of nitro-cli's codes `E00`-`E60`
//! ([`NITRO_CODES`]). Which contract a run follows is its [`ErrorStyle`]:
//!
//! - [`ErrorStyle::Cloister`] (the binary run as `cloister`): `error: [E306] ...` and the exit
//!   status of the code's class (1-8, documented in the README).
//! - [`ErrorStyle::Nitro`] (run as `nitro-cli`, or with `CLOISTER_ERROR_STYLE=nitro-cli`):
//!   `[ E26 ] <nitro-cli's message>`, Cloister's code and detail on the next line, nitro-cli's
//!   help link, the path of an `err<time>.log` file under `NITRO_CLI_LOGS_PATH` (default
//!   `/var/log/nitro_enclaves`), and the nitro-cli code's number as the exit status.
//!
//! Run as `vsock-proxy`, the binary is `cloister vsock-proxy` with nitro-cli's vsock-proxy
//! argument list ([`rewrite_argv`]).

use crate::codes;
use crate::errors::{CliError, ErrorInfo, ExitKind};
use std::io::Write;
use std::path::PathBuf;
use std::sync::OnceLock;

/// Selects the error contract regardless of the program name: `nitro-cli` or `cloister`.
pub const ERROR_STYLE_ENV: &str = "CLOISTER_ERROR_STYLE";
/// nitro-cli's log directory variable.
pub const LOGS_PATH_ENV: &str = "NITRO_CLI_LOGS_PATH";
/// nitro-cli's default log directory.
pub const DEFAULT_LOGS_PATH: &str = "/var/log/nitro_enclaves";
/// nitro-cli's regular log file, inside the log directory.
pub const LOG_FILE_NAME: &str = "nitro_enclaves.log";
/// nitro-cli's variable that adds the failure's trace to the error message when `1`.
pub const BACKTRACE_ENV: &str = "BACKTRACE";
/// nitro-cli's blobs directory variable (Cloister's is `CLOISTER_BLOBS`).
pub const NITRO_BLOBS_ENV: &str = "NITRO_CLI_BLOBS";
/// nitro-cli's sockets directory variable; Cloister's run directory plays its part.
pub const NITRO_SOCKETS_ENV: &str = "NITRO_CLI_SOCKETS_PATH";
/// nitro-cli's build artifacts directory variable.
pub const NITRO_ARTIFACTS_ENV: &str = "NITRO_CLI_ARTIFACTS";
/// Where nitro-cli's help link points; the code is appended as the fragment.
pub const HELP_LINK_BASE: &str =
    "https://docs.aws.amazon.com/enclaves/latest/user/cli-errors.html#";
/// Largest regular log file kept: past it, the file is started again.
const MAX_LOG_FILE: u64 = 4 << 20;

/// Which error contract a run follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorStyle {
    /// Cloister's: its own codes, exit statuses by class (1-8).
    Cloister,
    /// nitro-cli's: `[ Exx ]`, help link, error log file, the code's number as exit status.
    Nitro,
}

/// What the binary was invoked as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Personality {
    /// `cloister` (or any other name).
    Cloister,
    /// `nitro-cli`.
    NitroCli,
    /// `vsock-proxy`.
    VsockProxy,
}

impl Personality {
    /// From `argv[0]`: its file name decides.
    pub fn from_argv0(argv0: &std::ffi::OsStr) -> Self {
        let name = std::path::Path::new(argv0)
            .file_name()
            .unwrap_or_default()
            .to_string_lossy();
        match name.as_ref() {
            "nitro-cli" => Personality::NitroCli,
            "vsock-proxy" => Personality::VsockProxy,
            _ => Personality::Cloister,
        }
    }

    /// The error style for this personality, unless [`ERROR_STYLE_ENV`] chooses one.
    pub fn error_style(self, env: Option<&str>) -> ErrorStyle {
        match env {
            Some("nitro-cli") | Some("nitro") => ErrorStyle::Nitro,
            Some("cloister") => ErrorStyle::Cloister,
            _ if self == Personality::NitroCli => ErrorStyle::Nitro,
            _ => ErrorStyle::Cloister,
        }
    }
}

static STYLE: OnceLock<ErrorStyle> = OnceLock::new();
static VERB: OnceLock<String> = OnceLock::new();

/// Fixes the error style of this process (first call wins).
pub fn set_style(style: ErrorStyle) {
    let _ = STYLE.set(style);
}

/// The error style of this process ([`ErrorStyle::Cloister`] until set).
pub fn style() -> ErrorStyle {
    STYLE.get().copied().unwrap_or(ErrorStyle::Cloister)
}

/// Records the subcommand, for the log files.
pub fn set_verb(verb: &str) {
    let _ = VERB.set(verb.to_owned());
}

/// Rewrites the command line for the binary's personality: `vsock-proxy ARGS` becomes
/// `cloister vsock-proxy ARGS`, `nitro-cli ARGS` becomes `cloister ARGS`.
pub fn rewrite_argv(
    personality: Personality,
    args: Vec<std::ffi::OsString>,
) -> Vec<std::ffi::OsString> {
    let mut out: Vec<std::ffi::OsString> = vec!["cloister".into()];
    if personality == Personality::VsockProxy {
        out.push("vsock-proxy".into());
    }
    out.extend(args.into_iter().skip(1));
    out
}

/// Installs the runtime's configuration from the environment, where nitro-cli's variables
/// fill in for Cloister's that are not set: `NITRO_CLI_BLOBS` for `CLOISTER_BLOBS`,
/// `NITRO_CLI_SOCKETS_PATH` for `CLOISTER_RUN_DIR` ([`cloister_runtime::RuntimeConfig`]).
pub fn apply_nitro_env() {
    cloister_runtime::RuntimeConfig::from_env().install();
}

/// One of nitro-cli's error codes.
#[derive(Debug, Clone, Copy)]
pub struct NitroCode {
    /// `E` and two digits; the number is also the exit status.
    pub code: &'static str,
    /// The message's first sentence, as nitro-cli prints it after `[ Exx ]`.
    pub message: &'static str,
    /// What it means.
    pub explanation: &'static str,
}

impl NitroCode {
    /// The exit status nitro-cli uses for this code: its number.
    pub fn status(&self) -> i32 {
        self.code[1..].parse().unwrap_or(1)
    }
}

macro_rules! nitro_codes {
    ($( $code:literal, $msg:literal, $expl:literal; )*) => {
        /// nitro-cli's codes, E00-E60, in order.
        pub const NITRO_CODES: &[NitroCode] = &[
            $( NitroCode { code: $code, message: $msg, explanation: $expl }, )*
        ];
    };
}

nitro_codes! {
    "E00", "Unspecified error.", "A failure without a more specific code.";
    "E01", "Missing mandatory argument.", "A required argument was not given.";
    "E02", "Conflicting arguments.", "Two arguments that exclude each other were both given (for instance --cpu-count and --cpu-ids).";
    "E03", "Invalid argument provided.", "An argument has the wrong type or a value out of range (a CID, a memory size, a CPU list).";
    "E04", "Socket pair creation failure.", "The channel between the CLI and an enclave's process could not be created.";
    "E05", "Process spawn failure.", "The process that owns a new enclave could not be started.";
    "E06", "Daemonize process failure.", "The new enclave's process could not be detached from the CLI.";
    "E07", "Read from disk failure.", "The directory that holds the running enclaves' sockets (the run directory) could not be read.";
    "E08", "Unusable connection error.", "A connection to an enclave that no longer exists was used.";
    "E09", "Socket close error.", "A communication channel could not be closed.";
    "E10", "Socket connect set timeout error.", "A timeout could not be set on a socket (for instance the console's).";
    "E11", "Socket error.", "Any other socket operation failed.";
    "E12", "Epoll error.", "Waiting for events on an enclave's descriptor failed.";
    "E13", "Inotify error.", "Watching a socket directory failed.";
    "E14", "Invalid command.", "An unknown command or argument reached an enclave's process.";
    "E15", "Lock acquire failure.", "A lock on shared enclave state could not be taken.";
    "E16", "Thread join failure.", "A worker thread did not finish cleanly.";
    "E17", "Serde error.", "A command, a reply or a configuration document could not be encoded or decoded.";
    "E18", "File permissions error.", "A file or directory has an owner or mode that is not allowed (a log file, the run directory, the PKI directory).";
    "E19", "File operation failure.", "Opening, reading or writing a file failed.";
    "E20", "Invalid CPU configuration.", "The CPU list or the CPU pool configuration is inconsistent (duplicates, partial cores).";
    "E21", "No such CPU available in the pool.", "A requested CPU is not in the enclave CPU pool.";
    "E22", "Insufficient CPUs available in the pool.", "More CPUs were requested than the pool has free.";
    "E23", "Malformed CPU ID error.", "The host's list of online CPUs could not be parsed.";
    "E24", "CPU error.", "A CPU range is invalid (for instance 0-3-7).";
    "E25", "No such hugepage flag error.", "An unknown huge page size was used for enclave memory.";
    "E26", "Insufficient memory requested.", "The memory asked for is below the minimum for the image (64 MiB and 4 times the image file's size).";
    "E27", "Insufficient memory available.", "The memory asked for is more than the enclave memory pool has free.";
    "E28", "Invalid enclave descriptor.", "The enclave could not be created.";
    "E29", "Ioctl failure.", "A request to the enclave device failed.";
    "E30", "Ioctl image get load info failure.", "The image's load information could not be obtained.";
    "E31", "Ioctl set memory region failure.", "A memory region could not be given to the enclave.";
    "E32", "Ioctl add vCPU failure.", "A CPU could not be given to the enclave.";
    "E33", "Ioctl start enclave failure.", "The enclave could not be started.";
    "E34", "Memory overflow.", "The image does not fit the enclave's memory regions.";
    "E35", "EIF file parsing error.", "The enclave image file cannot be read or is not a valid EIF.";
    "E36", "Enclave boot failure.", "The enclave did not signal that it booted (the boot heartbeat did not arrive in time).";
    "E37", "Enclave event wait error.", "Watching an enclave for events failed.";
    "E38", "Enclave process command not executed error.", "An enclave's process did not execute a command.";
    "E39", "Enclave process connection failure.", "The enclave's process failed or could not be reached: the enclave did not start, or could not be described or terminated.";
    "E40", "Socket path not found.", "No running enclave has the given enclave ID.";
    "E41", "Enclave process send reply failure.", "An enclave's process could not send its reply.";
    "E42", "Enclave mmap error.", "Enclave memory could not be allocated.";
    "E43", "Enclave munmap error.", "Enclave memory could not be released.";
    "E44", "Enclave console connection failure.", "The enclave's console could not be reached (it is only available for enclaves started in debug mode).";
    "E45", "Enclave console read error.", "Reading the enclave's console failed.";
    "E46", "Enclave console write output error.", "Writing the console's output failed.";
    "E47", "Integer parsing error.", "A number could not be parsed.";
    "E48", "EIF building error.", "Building the enclave image failed.";
    "E49", "Docker image build error.", "Building the container image from a Dockerfile failed.";
    "E50", "Docker image pull error.", "The container image could not be pulled or found.";
    "E51", "Artifacts path environment variable not set.", "The build artifacts directory (NITRO_CLI_ARTIFACTS) is not set and cannot be derived, or cannot be created.";
    "E52", "Blobs path environment variable not set.", "The directory holding the kernel, init and command line blobs (NITRO_CLI_BLOBS, CLOISTER_BLOBS or --blobs) is missing or incomplete.";
    "E53", "Clock skew error.", "Measuring time while reading the console failed.";
    "E54", "Signal masking error.", "Signals could not be masked before starting an enclave's process.";
    "E55", "Signal unmasking error.", "Signals could not be unmasked after starting an enclave's process.";
    "E56", "Logger error.", "The logging system could not be set up.";
    "E57", "Hasher error.", "Computing a measurement failed.";
    "E58", "Naming error.", "An enclave name is invalid or already taken.";
    "E59", "EIF signature checker error.", "The image's signature does not verify or its signing certificate is not valid (expired, not yet valid, or unusable).";
    "E60", "Signing error.", "The image could not be signed: a wrong key or certificate, or a key service that refused.";
}

/// Looks a nitro-cli code up (`E26`, case-insensitive).
pub fn lookup_nitro(code: &str) -> Option<&'static NitroCode> {
    NITRO_CODES
        .iter()
        .find(|c| c.code.eq_ignore_ascii_case(code))
}

/// The nitro-cli code a script sees for Cloister's `info`: an explicit table for the codes of
/// nitro-cli's verbs, the code's exit class for the rest (Cloister's own verbs).
pub fn nitro_code_for(info: &ErrorInfo) -> &'static str {
    match info.code {
        // General.
        codes::E001 | codes::E003 => "E03",
        codes::E002 => "E19",
        codes::E099 => "E00",
        // Enclave images: reading and parsing.
        codes::E101
        | codes::E102
        | codes::E103
        | codes::E104
        | codes::E105
        | codes::E106
        | codes::E107
        | codes::E108
        | codes::E109
        | codes::E110
        | codes::E111
        | codes::E112
        | codes::E113
        | codes::E114
        | codes::E115
        | codes::E116
        | codes::E117 => "E35",
        // Signatures and certificates.
        codes::E118 | codes::E119 | codes::E120 | codes::E121 | codes::E122 | codes::E123 => "E59",
        // Signing.
        codes::E124 | codes::E125 | codes::E126 | codes::E127 | codes::E131 | codes::E132 => "E60",
        codes::E128 | codes::E129 => "E48",
        codes::E130 => "E01",
        // Enclaves.
        codes::E301 | codes::E302 => "E03",
        codes::E303 => "E39",
        codes::E304 => "E22",
        codes::E305 => "E27",
        codes::E306 => "E26",
        codes::E307 => "E35",
        codes::E308 => "E20",
        codes::E309 => "E36",
        codes::E310 | codes::E311 | codes::E314 | codes::E315 | codes::E317 | codes::E701 => "E39",
        codes::E312 => "E40",
        codes::E313 => "E44",
        codes::E316 => "E17",
        codes::E318 => "E59",
        codes::E319 | codes::E702 | codes::E321 => "E18",
        codes::E320 => "E39",
        // Container images.
        codes::E603 | codes::E604 | codes::E605 => "E50",
        codes::E612 => "E49",
        codes::E610 => "E52",
        codes::E614 => "E02",
        c if c.starts_with("E6") => "E48",
        _ => match info.exit {
            ExitKind::Failure | ExitKind::Internal => "E00",
            ExitKind::Usage => "E03",
            ExitKind::InvalidInput => "E17",
            ExitKind::VerificationFailed => "E59",
            ExitKind::Unavailable => "E39",
            ExitKind::System => "E19",
            ExitKind::Timeout => "E36",
        },
    }
}

/// The nitro-cli entry for a Cloister error.
pub fn nitro_for(info: &ErrorInfo) -> &'static NitroCode {
    lookup_nitro(nitro_code_for(info)).unwrap_or(&NITRO_CODES[0])
}

/// The log directory (`NITRO_CLI_LOGS_PATH` or `/var/log/nitro_enclaves`).
pub fn logs_dir() -> PathBuf {
    std::env::var_os(LOGS_PATH_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_LOGS_PATH))
}

/// RFC 3339 UTC time with nanoseconds, as in nitro-cli's error log names.
fn rfc3339_now() -> String {
    rfc3339(time::OffsetDateTime::now_utc())
}

/// `t` (in UTC) as `YYYY-MM-DDTHH:MM:SS.NNNNNNNNN+00:00`.
fn rfc3339(t: time::OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:09}+00:00",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.nanosecond()
    )
}

/// The failure's trace: the verb, Cloister's code and every cause.
fn trace(err: &CliError) -> String {
    let mut s = format!(
        "  Action: {}\n  Code: {}\n  Causes:",
        VERB.get().map(String::as_str).unwrap_or("-"),
        err.info().code
    );
    for cause in err.error.chain() {
        s.push_str("\n    ");
        s.push_str(&cause.to_string());
    }
    s.push_str(&format!("\n  Version: {}", env!("CARGO_PKG_VERSION")));
    s
}

/// Writes `err<time>.log` with the trace; returns its path.
fn write_error_log(trace: &str) -> Option<PathBuf> {
    let dir = logs_dir();
    std::fs::create_dir_all(&dir).ok()?;
    let path = dir.join(format!("err{}.log", rfc3339_now()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .ok()?;
    f.write_all(trace.as_bytes()).ok()?;
    f.write_all(b"\n").ok()?;
    Some(path)
}

/// Appends one line to the regular log file (best effort, as logging must not fail a command).
pub fn log_line(line: &str) {
    let dir = logs_dir();
    if std::fs::create_dir_all(&dir).is_err() {
        return;
    }
    let path = dir.join(LOG_FILE_NAME);
    if std::fs::metadata(&path).is_ok_and(|m| m.len() > MAX_LOG_FILE) {
        let _ = std::fs::rename(&path, dir.join(format!("{LOG_FILE_NAME}.1")));
    }
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&path)
    {
        let _ = writeln!(
            f,
            "[{} pid {}] {}: {line}",
            rfc3339_now(),
            std::process::id(),
            VERB.get().map(String::as_str).unwrap_or("-"),
        );
    }
}

/// Cloister's line for an error: `[E306] message: cause: cause`.
pub fn cloister_line(err: &CliError) -> String {
    let mut line = format!("[{}] {}", err.info().code, err.error);
    for cause in err.error.chain().skip(1) {
        line.push_str(": ");
        line.push_str(&cause.to_string());
    }
    line
}

/// The whole message nitro-cli's contract prints for `err`, given the error log's path.
pub fn nitro_message(
    err: &CliError,
    log_path: Option<&std::path::Path>,
    backtrace: bool,
) -> String {
    let nitro = nitro_for(err.info());
    let mut s = format!(
        "[ {} ] {}\n{}\n\nFor more details, please visit {HELP_LINK_BASE}{}",
        nitro.code,
        nitro.message,
        cloister_line(err),
        nitro.code
    );
    if backtrace {
        s.push_str("\n\nBacktrace:\n");
        s.push_str(&trace(err));
    }
    if let Some(p) = log_path {
        s.push_str(&format!(
            "\n\nIf you open a support ticket, please provide the error log found at \"{}\"",
            p.display()
        ));
    }
    s
}

/// Reports `err` on stderr in nitro-cli's format, writes the log files, and returns the exit
/// status (the nitro-cli code's number).
pub fn report_nitro(err: &CliError) -> i32 {
    let trace = trace(err);
    let log_path = write_error_log(&trace);
    log_line(&format!("error: {}", cloister_line(err)));
    let backtrace = std::env::var(BACKTRACE_ENV).is_ok_and(|v| v == "1");
    eprintln!("{}", nitro_message(err, log_path.as_deref(), backtrace));
    nitro_for(err.info()).status()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nitro_codes_are_e00_to_e60_in_order() {
        assert_eq!(NITRO_CODES.len(), 61);
        for (i, c) in NITRO_CODES.iter().enumerate() {
            assert_eq!(c.code, format!("E{i:02}"));
            assert_eq!(c.status(), i32::try_from(i).unwrap());
            assert!(c.message.ends_with('.') && !c.explanation.is_empty());
        }
    }

    #[test]
    fn every_cloister_code_maps_to_a_nitro_code() {
        for info in crate::errors::all_codes() {
            assert!(
                lookup_nitro(nitro_code_for(info)).is_some(),
                "{}",
                info.code
            );
        }
        let map = |c: &str| nitro_code_for(crate::errors::lookup(c).unwrap());
        assert_eq!(map("E318"), "E59");
        assert_eq!(map("E306"), "E26");
        assert_eq!(map("E307"), "E35");
        assert_eq!(map("E101"), "E35");
        assert_eq!(map("E310"), "E39");
    }

    #[test]
    fn personality_and_style() {
        let p = |s: &str| Personality::from_argv0(std::ffi::OsStr::new(s));
        assert_eq!(p("/usr/bin/nitro-cli"), Personality::NitroCli);
        assert_eq!(p("vsock-proxy"), Personality::VsockProxy);
        assert_eq!(p("/x/cloister"), Personality::Cloister);
        assert_eq!(Personality::NitroCli.error_style(None), ErrorStyle::Nitro);
        assert_eq!(
            Personality::Cloister.error_style(None),
            ErrorStyle::Cloister
        );
        assert_eq!(
            Personality::Cloister.error_style(Some("nitro-cli")),
            ErrorStyle::Nitro
        );
        assert_eq!(
            Personality::NitroCli.error_style(Some("cloister")),
            ErrorStyle::Cloister
        );
        let argv = |v: &[&str]| v.iter().map(std::ffi::OsString::from).collect::<Vec<_>>();
        assert_eq!(
            rewrite_argv(
                Personality::VsockProxy,
                argv(&["/usr/bin/vsock-proxy", "8000"])
            ),
            argv(&["cloister", "vsock-proxy", "8000"])
        );
        assert_eq!(
            rewrite_argv(
                Personality::NitroCli,
                argv(&["nitro-cli", "describe-enclaves"])
            ),
            argv(&["cloister", "describe-enclaves"])
        );
    }

    #[test]
    fn message_has_nitro_line_then_cloister_line() {
        let err = CliError::msg(crate::codes::E318, "certificate expired");
        let m = nitro_message(&err, Some(std::path::Path::new("/l/err1.log")), false);
        let lines: Vec<&str> = m.lines().collect();
        assert_eq!(lines[0], "[ E59 ] EIF signature checker error.");
        assert_eq!(lines[1], "[E318] certificate expired");
        assert_eq!(
            lines[3],
            "For more details, please visit https://docs.aws.amazon.com/enclaves/latest/user/cli-errors.html#E59"
        );
        assert!(lines[5].ends_with("\"/l/err1.log\""));
        assert!(nitro_message(&err, None, true).contains("Backtrace:\n  Action:"));
    }

    #[test]
    fn civil_dates() {
        let day = |days: i64, nanos: u32| {
            let t = time::OffsetDateTime::from_unix_timestamp(days * 86_400 + 3_723).unwrap();
            rfc3339(t.replace_nanosecond(nanos).unwrap())
        };
        assert_eq!(day(0, 5), "1970-01-01T01:02:03.000000005+00:00");
        assert_eq!(day(19_723, 0), "2024-01-01T01:02:03.000000000+00:00");
        assert_eq!(
            day(11_016, 999_999_999),
            "2000-02-29T01:02:03.999999999+00:00"
        );
    }
}
