//! Enclave images (E1xx): the codes and their explanations.

use super::code::*;

/// Error codes of this area.
pub const CODES: &[ErrorInfo] = &[
    ErrorInfo {
        code: E101,
        exit: ExitKind::System,
        summary: "Image I/O failed",
        explanation: "Reading or writing an image or one of its input files failed. The \
                      message names the operation and the operating system's reason (missing \
                      file, permissions, full disk).",
    },
    ErrorInfo {
        code: E102,
        exit: ExitKind::InvalidInput,
        summary: "Image is truncated",
        explanation: "The file ends before the header or a section the header describes. The \
                      image was cut short (interrupted copy or download); rebuild or copy it \
                      again.",
    },
    ErrorInfo {
        code: E103,
        exit: ExitKind::InvalidInput,
        summary: "Not an enclave image",
        explanation: "The file does not start with the EIF magic `.eif`. Check that the path \
                      names an enclave image file.",
    },
    ErrorInfo {
        code: E104,
        exit: ExitKind::InvalidInput,
        summary: "Unsupported image version",
        explanation: "The header names an EIF version other than 2, 3 or 4. Rebuild the image \
                      with a current builder.",
    },
    ErrorInfo {
        code: E105,
        exit: ExitKind::InvalidInput,
        summary: "Too many sections",
        explanation: "An image holds at most 32 sections (kernel, cmdline, metadata, \
                      ramdisks, signature). The header claims more, or the build was given \
                      too many ramdisks.",
    },
    ErrorInfo {
        code: E106,
        exit: ExitKind::InvalidInput,
        summary: "Section out of bounds",
        explanation: "A section's offset points into the header or its offset plus size \
                      overflows. The image is corrupt or crafted.",
    },
    ErrorInfo {
        code: E107,
        exit: ExitKind::InvalidInput,
        summary: "Bad section layout",
        explanation: "Sections must follow each other directly after the 548-byte header, in \
                      table order. A gap or overlap means a corrupt or crafted image.",
    },
    ErrorInfo {
        code: E108,
        exit: ExitKind::InvalidInput,
        summary: "Trailing data after the last section",
        explanation: "The file continues after the last section the header describes. Images \
                      are not allowed to carry unmeasured extra bytes.",
    },
    ErrorInfo {
        code: E109,
        exit: ExitKind::InvalidInput,
        summary: "Unknown section type",
        explanation: "A section has a type outside 1-5, or a type the image's version does not \
                      define (signature needs version 3, metadata version 4).",
    },
    ErrorInfo {
        code: E110,
        exit: ExitKind::InvalidInput,
        summary: "Section size mismatch",
        explanation: "A section's own 12-byte header and the file header's section table \
                      disagree on its size.",
    },
    ErrorInfo {
        code: E111,
        exit: ExitKind::InvalidInput,
        summary: "Section too large",
        explanation: "The cmdline (64 KiB), metadata (4 MiB) or signature (32 KiB) section \
                      exceeds its limit.",
    },
    ErrorInfo {
        code: E112,
        exit: ExitKind::InvalidInput,
        summary: "Missing section",
        explanation: "An image needs a kernel, a cmdline and at least one ramdisk.",
    },
    ErrorInfo {
        code: E113,
        exit: ExitKind::InvalidInput,
        summary: "Duplicate section",
        explanation: "The kernel, cmdline, metadata and signature sections may each appear \
                      only once.",
    },
    ErrorInfo {
        code: E114,
        exit: ExitKind::InvalidInput,
        summary: "Ramdisk before kernel",
        explanation: "Ramdisk sections must come after the kernel section.",
    },
    ErrorInfo {
        code: E115,
        exit: ExitKind::InvalidInput,
        summary: "Invalid kernel command line",
        explanation: "The command line contains a NUL byte or is not UTF-8.",
    },
    ErrorInfo {
        code: E116,
        exit: ExitKind::InvalidInput,
        summary: "Invalid metadata",
        explanation: "The image's metadata section, or the --metadata file, is not the JSON \
                      document expected.",
    },
    ErrorInfo {
        code: E117,
        exit: ExitKind::VerificationFailed,
        summary: "CRC mismatch",
        explanation: "The CRC-32 in the header does not match the image's contents: the image \
                      was modified or damaged after it was built. Rebuild it or copy it again.",
    },
    ErrorInfo {
        code: E118,
        exit: ExitKind::VerificationFailed,
        summary: "Image is not signed",
        explanation: "A signature was required but the image has no signature section. Sign \
                      it with `cloister sign-eif`.",
    },
    ErrorInfo {
        code: E119,
        exit: ExitKind::InvalidInput,
        summary: "Malformed signature section",
        explanation: "The signature section is not the CBOR array of {signing_certificate, \
                      signature} entries with a COSE_Sign1 that the format defines.",
    },
    ErrorInfo {
        code: E120,
        exit: ExitKind::InvalidInput,
        summary: "Invalid signing certificate",
        explanation: "The signing certificate is not a PEM X.509 certificate with an EC \
                      public key on a named curve.",
    },
    ErrorInfo {
        code: E121,
        exit: ExitKind::InvalidInput,
        summary: "Unsupported algorithm",
        explanation: "Only ECDSA with P-256 (ES256), P-384 (ES384) or P-521 (ES512) is \
                      supported, and the COSE algorithm must match the certificate's curve.",
    },
    ErrorInfo {
        code: E122,
        exit: ExitKind::VerificationFailed,
        summary: "Bad signature",
        explanation: "The image's COSE signature does not verify with the signing \
                      certificate's public key: it was altered or made with another key.",
    },
    ErrorInfo {
        code: E123,
        exit: ExitKind::VerificationFailed,
        summary: "Signature is for another image",
        explanation: "The signature is valid but signs a PCR0 other than the image's: the \
                      kernel, cmdline or ramdisks changed after signing. Sign the image again.",
    },
    ErrorInfo {
        code: E124,
        exit: ExitKind::InvalidInput,
        summary: "Invalid private key",
        explanation: "The private key is not a PEM EC PRIVATE KEY or PKCS#8 PRIVATE KEY on the \
                      certificate's curve.",
    },
    ErrorInfo {
        code: E125,
        exit: ExitKind::InvalidInput,
        summary: "Key does not match certificate",
        explanation: "The private key's public key differs from the one in the signing \
                      certificate. Pass the key the certificate was issued for.",
    },
    ErrorInfo {
        code: E126,
        exit: ExitKind::InvalidInput,
        summary: "Signature section too large",
        explanation: "The signature section would exceed 32 KiB; the certificate is too large.",
    },
    ErrorInfo {
        code: E127,
        exit: ExitKind::InvalidInput,
        summary: "Cannot re-sign in place",
        explanation: "The image's signature section is not its last section, so it cannot be \
                      replaced in place. Rebuild the image.",
    },
    ErrorInfo {
        code: E128,
        exit: ExitKind::InvalidInput,
        summary: "Invalid build input",
        explanation: "The inputs cannot form an image (no kernel, no command line, a \
                      section that does not exist). The message says which.",
    },
    ErrorInfo {
        code: E129,
        exit: ExitKind::Internal,
        summary: "Cryptographic operation failed",
        explanation: "A hash, signature or encoding operation failed unexpectedly, or the \
                      hashing thread stopped. Please report it.",
    },
    ErrorInfo {
        code: E130,
        exit: ExitKind::Usage,
        summary: "Missing build inputs",
        explanation: "build-enclave needs --kernel, --cmdline and at least one --ramdisk.",
    },
    ErrorInfo {
        code: E131,
        exit: ExitKind::Unavailable,
        summary: "Signing with the KMS key failed",
        explanation: "--private-key named a KMS key (arn:aws:kms:REGION:ACCOUNT:key/ID or an \
                      alias ARN) and the key service could not sign: no credentials \
                      (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, with AWS_SESSION_TOKEN for \
                      temporary ones, or the default profile of ~/.aws/credentials), an \
                      endpoint that cannot be reached (AWS_ENDPOINT_URL_KMS, AWS_ENDPOINT_URL, \
                      else kms.REGION.amazonaws.com), a refusal (unknown or disabled key, access \
                      denied: the message quotes the service), or a key that is not an \
                      ECC_NIST_P384 (or P256, P521) SIGN_VERIFY key. No image is written.",
    },
    ErrorInfo {
        code: E132,
        exit: ExitKind::InvalidInput,
        summary: "Certificate does not match the KMS key",
        explanation: "The signing certificate's public key is not the KMS key's (GetPublicKey). \
                      Issue the certificate for that key, or name the key the certificate was \
                      issued for. No image is written.",
    },
];
