//! The error the CLI reports: a stable [`Code`] (from [`crate::codes`], the layer below) plus
//! the full chain of causes, and the helpers every command uses to attach a code and print
//! JSON. Commands sit above this module; nothing here knows them.

use std::fmt;

use crate::codes;
pub use crate::codes::{all_codes, lookup, Code, ErrorInfo, ExitKind, GENERAL_CODES};

/// An error as the CLI reports it: a stable code plus the full chain of causes.
pub struct CliError {
    /// The code.
    pub code: Code,
    /// What went wrong, with its causes.
    pub error: anyhow::Error,
}

/// Result of a CLI handler.
pub type CliResult<T> = Result<T, CliError>;

impl CliError {
    /// Builds an error with `code` from any error value.
    pub fn new(code: Code, error: impl Into<anyhow::Error>) -> Self {
        Self {
            code,
            error: error.into(),
        }
    }

    /// Builds an error with `code` from a message.
    pub fn msg(code: Code, message: impl fmt::Display) -> Self {
        Self {
            code,
            error: anyhow::anyhow!("{message}"),
        }
    }

    /// The documented entry for this error's code.
    pub fn info(&self) -> &'static ErrorInfo {
        lookup(&self.code).unwrap_or(&GENERAL_CODES[3])
    }

    /// Exit status for this error.
    pub fn exit_status(&self) -> i32 {
        self.info().exit.status()
    }

    /// Prints `[E123] summary: cause: cause...` and a pointer to `explain` on stderr.
    pub fn report(&self) {
        let info = self.info();
        let mut line = format!("[{}] {}", info.code, self.error);
        for cause in self.error.chain().skip(1) {
            line.push_str(": ");
            line.push_str(&cause.to_string());
        }
        eprintln!("error: {line}");
        eprintln!(
            "  (run `cloister explain --error-code {}` for details)",
            info.code
        );
    }
}

impl fmt::Debug for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}] {:?}", self.code, self.error)
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}] {:#}", self.code, self.error)
    }
}

/// Attaches a code to any `Result` whose error converts into `anyhow::Error`.
pub trait Coded<T> {
    /// Maps the error to a [`CliError`] with `code`.
    fn code(self, code: Code) -> CliResult<T>;
}

impl<T, E: Into<anyhow::Error>> Coded<T> for Result<T, E> {
    fn code(self, code: Code) -> CliResult<T> {
        self.map_err(|e| CliError::new(code, e))
    }
}

/// Ends the process with `status`, for the verbs whose status is another program's (the
/// enclave monitor's, a program run under `cloister exec`), not one of the CLI's classes.
#[allow(
    clippy::exit,
    reason = "the status is the monitor's or the wrapped program's own, which no CliError \
              carries, and nothing is left to unwind"
)]
pub fn exit_with(status: i32) -> ! {
    std::process::exit(status)
}

/// Prints a value as pretty JSON on stdout, as nitro-cli does.
pub fn print_json<T: serde::Serialize>(value: &T) -> CliResult<()> {
    use std::io::Write;
    let text = serde_json::to_string_pretty(value).code(codes::E099)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}").code(codes::E002)
}
