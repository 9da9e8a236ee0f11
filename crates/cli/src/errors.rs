//! Stable error codes and exit statuses.
//!
//! Every error the CLI reports carries a code (`E` followed by three digits) listed in one of the
//! per-area tables below, and an [`ExitKind`] that fixes the process exit status. Codes and exit
//! statuses never change meaning once released; `cloister explain --error-code E123` prints the
//! explanation. Ranges: E0xx general, E1xx enclave images, E2xx attestation, E3xx enclave
//! runtime, E4xx key service, E5xx proxy and forwarders, E6xx container images, E7xx VM backend.

use std::fmt;

/// Exit statuses, by class of failure. Stable; documented in the README.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitKind {
    /// Any failure without a more specific class.
    Failure,
    /// Bad command-line usage (also what argument parsing returns).
    Usage,
    /// An input file or document is malformed.
    InvalidInput,
    /// A signature, checksum, attestation or policy check failed.
    VerificationFailed,
    /// A resource (CPU, memory, CID, enclave, key) is missing or unavailable.
    Unavailable,
    /// The operating system refused an operation (I/O, permissions, kernel features).
    System,
    /// Something did not happen in time.
    Timeout,
    /// A bug in cloister.
    Internal,
}

impl ExitKind {
    /// The process exit status for this class.
    pub fn status(self) -> i32 {
        match self {
            ExitKind::Failure => 1,
            ExitKind::Usage => 2,
            ExitKind::InvalidInput => 3,
            ExitKind::VerificationFailed => 4,
            ExitKind::Unavailable => 5,
            ExitKind::System => 6,
            ExitKind::Timeout => 7,
            ExitKind::Internal => 8,
        }
    }
}

/// One documented error code.
#[derive(Debug, Clone, Copy)]
pub struct ErrorInfo {
    /// `E` and three digits.
    pub code: &'static str,
    /// Exit class.
    pub exit: ExitKind,
    /// One line: what happened.
    pub summary: &'static str,
    /// What it means and what to do about it.
    pub explanation: &'static str,
}

/// General codes (E0xx).
pub const GENERAL_CODES: &[ErrorInfo] = &[
    ErrorInfo {
        code: "E001",
        exit: ExitKind::Failure,
        summary: "Unknown error code",
        explanation: "`cloister explain` was given a code that cloister does not define. \
                      Codes look like E123; `cloister explain --list` prints them all.",
    },
    ErrorInfo {
        code: "E002",
        exit: ExitKind::System,
        summary: "Cannot write output",
        explanation: "Writing to standard output or an output file failed.",
    },
    ErrorInfo {
        code: "E003",
        exit: ExitKind::Usage,
        summary: "Invalid arguments",
        explanation: "The arguments are well-formed but contradict each other or name \
                      something that cannot be used. The message says which.",
    },
    ErrorInfo {
        code: "E099",
        exit: ExitKind::Internal,
        summary: "Internal error",
        explanation: "Cloister hit a state it should never reach. Please report it with the \
                      command line and the full message.",
    },
];

/// Every code of every area, for `explain` and for the uniqueness test.
pub fn all_codes() -> impl Iterator<Item = &'static ErrorInfo> {
    GENERAL_CODES
        .iter()
        .chain(crate::commands::eif::CODES)
        .chain(crate::commands::attest::CODES)
        .chain(crate::commands::enclave::CODES)
        .chain(crate::commands::kms::CODES)
        .chain(crate::commands::proxy::CODES)
        .chain(crate::commands::image::CODES)
        .chain(crate::commands::demo::CODES)
        .chain(crate::commands::vsock::CODES)
}

/// Looks a code up.
pub fn lookup(code: &str) -> Option<&'static ErrorInfo> {
    all_codes().find(|i| i.code.eq_ignore_ascii_case(code))
}

/// An error as the CLI reports it: a stable code plus the full chain of causes.
pub struct CliError {
    /// The code, which must be in one of the tables.
    pub code: &'static str,
    /// What went wrong, with its causes.
    pub error: anyhow::Error,
}

/// Result of a CLI handler.
pub type CliResult<T> = Result<T, CliError>;

impl CliError {
    /// Builds an error with `code` from any error value.
    pub fn new(code: &'static str, error: impl Into<anyhow::Error>) -> Self {
        Self {
            code,
            error: error.into(),
        }
    }

    /// Builds an error with `code` from a message.
    pub fn msg(code: &'static str, message: impl fmt::Display) -> Self {
        Self {
            code,
            error: anyhow::anyhow!("{message}"),
        }
    }

    /// The documented entry for this error's code.
    pub fn info(&self) -> &'static ErrorInfo {
        lookup(self.code).unwrap_or(&GENERAL_CODES[3])
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
    fn code(self, code: &'static str) -> CliResult<T>;
}

impl<T, E: Into<anyhow::Error>> Coded<T> for Result<T, E> {
    fn code(self, code: &'static str) -> CliResult<T> {
        self.map_err(|e| CliError::new(code, e))
    }
}

/// Prints a value as pretty JSON on stdout, as nitro-cli does.
pub fn print_json<T: serde::Serialize>(value: &T) -> CliResult<()> {
    use std::io::Write;
    let text = serde_json::to_string_pretty(value).code("E099")?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}").code("E002")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn codes_are_unique_well_formed_and_explained() {
        let mut seen = HashSet::new();
        for info in all_codes() {
            assert!(seen.insert(info.code), "duplicate code {}", info.code);
            assert_eq!(info.code.len(), 4, "{}", info.code);
            assert!(info.code.starts_with('E'), "{}", info.code);
            assert!(
                info.code[1..].bytes().all(|b| b.is_ascii_digit()),
                "{}",
                info.code
            );
            assert!(
                !info.summary.is_empty() && !info.explanation.is_empty(),
                "{}",
                info.code
            );
        }
    }

    #[test]
    fn exit_statuses_are_stable() {
        let expected = [
            (ExitKind::Failure, 1),
            (ExitKind::Usage, 2),
            (ExitKind::InvalidInput, 3),
            (ExitKind::VerificationFailed, 4),
            (ExitKind::Unavailable, 5),
            (ExitKind::System, 6),
            (ExitKind::Timeout, 7),
            (ExitKind::Internal, 8),
        ];
        for (kind, status) in expected {
            assert_eq!(kind.status(), status);
        }
    }
}
