//! Key service (E4xx): the codes and their explanations.

use super::code::*;

/// Error codes of this area.
pub const CODES: &[ErrorInfo] = &[
    ErrorInfo {
        code: E401,
        exit: ExitKind::InvalidInput,
        summary: "Invalid key service config",
        explanation: "The --config file cannot be read, is not YAML/JSON of the expected shape \
                      (unknown fields are refused), or has a value out of range (account_id \
                      must be 12 digits; access keys 16..128 letters and digits).",
    },
    ErrorInfo {
        code: E402,
        exit: ExitKind::System,
        summary: "Cannot open the key store",
        explanation: "The data directory, its database or the master key cannot be read or \
                      created. A master key file must be exactly 32 bytes with mode 0600; a \
                      store whose records do not open under the master key is refused.",
    },
    ErrorInfo {
        code: E403,
        exit: ExitKind::InvalidInput,
        summary: "Unusable TLS certificate or key",
        explanation: "--tls-cert must be a PEM certificate chain and --tls-key the PEM private \
                      key that belongs to it.",
    },
    ErrorInfo {
        code: E404,
        exit: ExitKind::System,
        summary: "Cannot listen",
        explanation: "Binding the --listen address failed (in use, not local, or not \
                      permitted).",
    },
    ErrorInfo {
        code: E405,
        exit: ExitKind::InvalidInput,
        summary: "Unusable attestation trust anchors",
        explanation: "A certificate listed under attestation.trust_anchors cannot be read or \
                      is not a valid root certificate.",
    },
    ErrorInfo {
        code: E406,
        exit: ExitKind::System,
        summary: "Administrator credential unavailable",
        explanation: "The administrator credential could not be read from or stored in the \
                      key store (or written to admin-credentials.json).",
    },
];
