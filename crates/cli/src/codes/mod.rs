//! Stable error codes and exit statuses: the bottom of the CLI, which uses nothing else of it.
//!
//! Every error the CLI reports carries a [`Code`] (`E` followed by three digits), one of the
//! constants below, listed with its explanation in one of the per-area tables; its
//! [`ExitKind`] fixes the process exit status. Codes and exit statuses never change meaning
//! once released; `cloister explain --error-code E123` prints the explanation. Ranges: E0xx
//! general, E1xx enclave images, E2xx attestation, E3xx enclave runtime, E4xx key service, E5xx
//! proxy and forwarders, E6xx container images, E7xx VM backend, E8xx the demo, E9xx
//! unmodified vsock programs.

pub mod attest;
pub mod demo;
pub mod eif;
pub mod enclave;
pub mod image;
pub mod kms;
pub mod proxy;
pub mod vsock;

mod code;

pub use code::*;

/// General codes (E0xx).
pub const GENERAL_CODES: &[ErrorInfo] = &[
    ErrorInfo {
        code: E001,
        exit: ExitKind::Failure,
        summary: "Unknown error code",
        explanation: "`cloister explain` was given a code that cloister does not define. \
                      Codes look like E123; `cloister explain --list` prints them all.",
    },
    ErrorInfo {
        code: E002,
        exit: ExitKind::System,
        summary: "Cannot write output",
        explanation: "Writing to standard output or an output file failed.",
    },
    ErrorInfo {
        code: E003,
        exit: ExitKind::Usage,
        summary: "Invalid arguments",
        explanation: "The arguments are well-formed but contradict each other or name \
                      something that cannot be used. The message says which.",
    },
    ErrorInfo {
        code: E099,
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
        .chain(eif::CODES)
        .chain(attest::CODES)
        .chain(enclave::CODES)
        .chain(kms::CODES)
        .chain(proxy::CODES)
        .chain(image::CODES)
        .chain(demo::CODES)
        .chain(vsock::CODES)
}

/// Looks a code up.
pub fn lookup(code: &str) -> Option<&'static ErrorInfo> {
    all_codes().find(|i| i.code.as_str().eq_ignore_ascii_case(code))
}

impl Code {
    /// The code whose text is `text` (a code another crate reports, such as the attestation
    /// verifier's), or [`E099`] for one no table lists.
    pub fn known(text: &str) -> Code {
        lookup(text).map_or(E099, |i| i.code)
    }
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
