//! Attestation (E2xx): the codes and their explanations.

use super::code::*;

const fn vf(code: Code, summary: &'static str, explanation: &'static str) -> ErrorInfo {
    ErrorInfo {
        code,
        exit: ExitKind::VerificationFailed,
        summary,
        explanation,
    }
}

/// Error codes of this area. E210-E237 are the verifier's checks (`VerifyError::code`).
pub const CODES: &[ErrorInfo] = &[
    ErrorInfo {
        code: E201,
        exit: ExitKind::InvalidInput,
        summary: "Cannot read the attestation document",
        explanation: "The --document file could not be read, is larger than 64 KiB, or its \
                      base64 text does not decode.",
    },
    ErrorInfo {
        code: E202,
        exit: ExitKind::InvalidInput,
        summary: "Cannot read a root certificate",
        explanation: "A --root file could not be read or is neither PEM nor DER.",
    },
    ErrorInfo {
        code: E203,
        exit: ExitKind::InvalidInput,
        summary: "Unusable root certificate",
        explanation: "A --root certificate does not parse, is not a CA, or its self-signature \
                      does not verify. Roots are P-256 or P-384 ECDSA certificates.",
    },
    ErrorInfo {
        code: E204,
        exit: ExitKind::Usage,
        summary: "Invalid verification argument",
        explanation: "--at must be `now` or milliseconds since the epoch; --nonce must be hex; \
                      --expect-pcr must be N=HEX with N below 32.",
    },
    ErrorInfo {
        code: E205,
        exit: ExitKind::System,
        summary: "Cannot create or load the PKI",
        explanation: "Creating the PKI directory, generating keys or writing certificates \
                      failed, or existing files are inconsistent (e.g. a key without its \
                      certificate, or a key file readable by others). The message says which.",
    },
    vf(E210, "Attestation document too large", "The document is larger than 16 KiB; no valid document is."),
    vf(E211, "Malformed COSE_Sign1 structure", "The document is not a COSE_Sign1: an array of protected header, unprotected header, payload and signature, optionally with tag 18."),
    vf(E212, "Trailing bytes after the attestation document", "Bytes follow the COSE_Sign1 structure; the document was truncated or concatenated."),
    vf(E213, "Unsupported COSE algorithm", "The protected header must name ES384 (-35) and nothing critical."),
    vf(E214, "Malformed attestation document payload", "The payload is not a CBOR map with every mandatory field (module_id, digest, timestamp, pcrs, certificate, cabundle)."),
    vf(E215, "Invalid attestation document field", "A field breaks AWS's syntax rules: digest SHA384, PCR index below 32 and length 32/48/64, certificates 1..1024 bytes, non-empty cabundle, size limits on public_key, user_data and nonce."),
    vf(E216, "Malformed or unsupported certificate", "A certificate of the chain does not parse, uses an algorithm other than ECDSA P-256/P-384 with SHA-256/384, or has an unknown critical extension."),
    vf(E217, "Untrusted root certificate", "The first cabundle certificate is not one of the trusted roots (byte for byte). Pass the operator root with --root for Cloister documents; AWS's root is the default."),
    vf(E218, "Certificate expired", "A certificate of the chain has expired at the verification time (--at). Enclave leaves live about three hours."),
    vf(E219, "Certificate not yet valid", "A certificate of the chain is not yet valid at the verification time (--at)."),
    vf(E220, "Certificate issuer name mismatch", "A certificate's issuer name is not the subject of the certificate above it."),
    vf(E221, "Issuing certificate is not a CA", "A certificate that signs another lacks basicConstraints CA:true."),
    vf(E222, "Path length constraint exceeded", "More intermediate CAs follow a CA than its pathLenConstraint allows."),
    vf(E223, "Certificate key usage missing", "A CA lacks keyCertSign, or the leaf lacks digitalSignature."),
    vf(E224, "Leaf certificate is a CA", "The signing certificate must have basicConstraints CA:false."),
    vf(E225, "Certificate signature invalid", "A certificate's signature does not verify with its issuer's key."),
    vf(E226, "Leaf key is not P-384", "ES384 documents need a P-384 leaf key."),
    vf(E227, "Document signature invalid", "The COSE signature does not verify with the leaf certificate's key: the document was altered or signed by another key."),
    vf(E228, "Malformed isolation attribute", "The leaf's OU=isolation=... attribute names neither process nor vm, or appears twice."),
    vf(E229, "Nonce missing", "A nonce was expected (--nonce) but the document carries none."),
    vf(E230, "Nonce mismatch", "The document's nonce differs from --nonce: it may be a replay."),
    vf(E231, "Timestamp in the future", "The document's timestamp is more than five minutes after the verification time."),
    vf(E232, "Document too old", "The document is older than --max-age seconds at the verification time."),
    vf(E233, "Expected PCR missing", "An --expect-pcr index is not in the document."),
    vf(E234, "PCR mismatch", "A PCR differs from its --expect-pcr value: the enclave runs another image or configuration."),
    vf(E235, "Debug-mode document", "An image PCR (0-2) was expected but the document comes from a debug-mode enclave, whose PCR0-2 are zeros; debug enclaves never match an image."),
    ErrorInfo {
        code: E236,
        exit: ExitKind::Usage,
        summary: "Invalid verification options",
        explanation: "The verification time is before 1970 or an expected PCR index is 32 or more.",
    },
    ErrorInfo {
        code: E237,
        exit: ExitKind::InvalidInput,
        summary: "Invalid trust anchor",
        explanation: "A trusted root does not parse, is not a CA or is not validly self-signed.",
    },
];
