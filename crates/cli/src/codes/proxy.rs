//! Proxy and forwarders (E5xx): the codes and their explanations.

use super::code::*;

/// Error codes of this area.
pub const CODES: &[ErrorInfo] = &[
    ErrorInfo {
        code: E501,
        exit: ExitKind::InvalidInput,
        summary: "Cannot load the allowlist",
        explanation: "The vsock-proxy allowlist file (--config, default \
                      /etc/nitro_enclaves/vsock-proxy.yaml) is missing, unreadable, too large, \
                      or not of the form `allowlist: [{address: HOST, port: PORT}, ...]`.",
    },
    ErrorInfo {
        code: E502,
        exit: ExitKind::VerificationFailed,
        summary: "Destination not on the allowlist",
        explanation: "vsock-proxy refuses to start: no allowlist entry has the remote port and \
                      either names the remote host or resolves to the address the remote host \
                      resolves to. Add the destination to the allowlist or fix the arguments.",
    },
    ErrorInfo {
        code: E503,
        exit: ExitKind::Unavailable,
        summary: "Cannot resolve the remote host",
        explanation: "The remote host name did not resolve to an address of the allowed family \
                      (-4/-6). Check the name, the DNS configuration (/etc/resolv.conf) and the \
                      address family flags.",
    },
    ErrorInfo {
        code: E504,
        exit: ExitKind::System,
        summary: "Cannot listen",
        explanation: "The vsock port or TCP address cannot be listened on: it is in use, the \
                      fabric directory (CLOISTER_RUN_DIR/vsock) is not writable, or the \
                      address is not local.",
    },
    ErrorInfo {
        code: E505,
        exit: ExitKind::Usage,
        summary: "Invalid proxy option",
        explanation: "A limit is out of range: --buffer-size must be between 1 KiB and 16 MiB, \
                      --max-connections and --num_workers at least 1.",
    },
    ErrorInfo {
        code: E510,
        exit: ExitKind::Usage,
        summary: "Invalid kms-client argument",
        explanation: "An argument of `cloister kms-client` is malformed: the ciphertext is not \
                      base64, the endpoint is not http(s)://host[:port], the region or key spec \
                      is unknown, or the CA bundle cannot be read.",
    },
    ErrorInfo {
        code: E511,
        exit: ExitKind::System,
        summary: "Cannot get an attestation document",
        explanation: "The NSM did not answer (no /dev/nsm and no Cloister enclave socket): \
                      kms-client must run inside an enclave.",
    },
    ErrorInfo {
        code: E512,
        exit: ExitKind::Unavailable,
        summary: "Cannot reach KMS",
        explanation: "The connection through the parent's vsock-proxy (--proxy-cid, \
                      --proxy-port) failed, TLS with the endpoint failed, the answer was not \
                      well-formed HTTP, or it did not come in time. Check that vsock-proxy runs \
                      and allows the endpoint.",
    },
    ErrorInfo {
        code: E513,
        exit: ExitKind::Failure,
        summary: "KMS refused the request",
        explanation: "KMS answered with an error (the message names its type, e.g. \
                      AccessDeniedException when the key policy's attestation conditions do \
                      not match this enclave's PCRs, or InvalidSignatureException for bad \
                      credentials).",
    },
    ErrorInfo {
        code: E514,
        exit: ExitKind::VerificationFailed,
        summary: "Cannot open the KMS answer",
        explanation: "CiphertextForRecipient was missing or could not be decrypted with this \
                      call's private key.",
    },
    ErrorInfo {
        code: E506,
        exit: ExitKind::System,
        summary: "Cannot start the I/O runtime",
        explanation: "The async runtime or the signal handlers could not be set up (out of \
                      threads or file descriptors).",
    },
];
