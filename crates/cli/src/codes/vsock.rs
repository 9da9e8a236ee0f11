//! Unmodified vsock programs (E9xx): the codes and their explanations.

use super::code::*;

/// Error codes of this area.
pub const CODES: &[ErrorInfo] = &[
    ErrorInfo {
        code: E901,
        exit: ExitKind::System,
        summary: "Cannot run the program under the vsock supervisor",
        explanation: "`cloister exec` could not install the seccomp notification filter \
                      (a kernel without seccomp user notification), start the supervisor, or \
                      start the program (not found, not executable).",
    },
    ErrorInfo {
        code: E902,
        exit: ExitKind::Failure,
        summary: "vsock connection failed",
        explanation: "Nothing listens at that (cid, port), the enclave does not exist, or the \
                      fabric refused the peer. From the host, enclaves are reached by their \
                      cid through <run>/vsock/<cid>.sock.",
    },
    ErrorInfo {
        code: E903,
        exit: ExitKind::Failure,
        summary: "Cannot listen on the vsock port",
        explanation: "The port is in use (a live 3_<port>.sock on the host, or a listener \
                      of the enclave), or the fabric directory failed its checks.",
    },
    ErrorInfo {
        code: E904,
        exit: ExitKind::Failure,
        summary: "vsock stream failed",
        explanation: "Reading or writing the stream or standard input/output failed.",
    },
];
