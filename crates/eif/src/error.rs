//! The one error type of this crate: every way reading, writing, measuring or signing an image
//! can fail, split by who is at fault (a malformed image, a failed check, the caller's inputs, or
//! the operating system). Each variant carries the context needed to find the problem.

use std::io;

/// Every failure of this crate.
#[derive(Debug, thiserror::Error)]
pub enum EifError {
    /// An I/O operation failed.
    #[error("{context}")]
    Io {
        /// What was being done.
        context: &'static str,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },

    /// The file ends before a structure that must be there.
    #[error("image is truncated: {what} needs {needed} bytes but the file has {available}")]
    Truncated {
        /// What was being read.
        what: String,
        /// File size needed to hold it.
        needed: u64,
        /// Actual file size.
        available: u64,
    },

    /// The first four bytes are not `.eif`.
    #[error("not an enclave image: bad magic {found:02x?} (expected \".eif\")")]
    BadMagic {
        /// The bytes found.
        found: [u8; 4],
    },

    /// The header names a format version this crate does not read.
    #[error("unsupported EIF version {version} (supported: 2 to 4)")]
    UnsupportedVersion {
        /// Version in the header.
        version: u16,
    },

    /// The header claims more sections than the format allows.
    #[error("header declares {count} sections; at most {max} are allowed")]
    TooManySections {
        /// Declared or requested count.
        count: usize,
        /// The format's limit.
        max: usize,
    },

    /// A section's offset or size cannot be right: it points into the header or overflows.
    #[error("section {index}: offset {offset} with size {size} is out of bounds")]
    SectionOutOfBounds {
        /// Section index.
        index: usize,
        /// Offset of its header in the file.
        offset: u64,
        /// Declared data size.
        size: u64,
    },

    /// Sections are not laid out back to back right after the header.
    #[error("section {index} starts at offset {found}; expected {expected} (sections must follow each other)")]
    BadLayout {
        /// Section index.
        index: usize,
        /// Where it had to start.
        expected: u64,
        /// Where the table says it starts.
        found: u64,
    },

    /// Bytes follow the last section.
    #[error("{extra} unexpected bytes after the last section (which ends at offset {end})")]
    TrailingData {
        /// End of the last section.
        end: u64,
        /// Number of bytes after it.
        extra: u64,
    },

    /// A section type this format version does not define.
    #[error(
        "section {index} has type {section_type}, which EIF version {version} does not define"
    )]
    UnknownSectionType {
        /// Section index.
        index: usize,
        /// Raw type value.
        section_type: u16,
        /// Image version.
        version: u16,
    },

    /// The section header and the header's section table disagree on the size.
    #[error(
        "section {index}: its header says {in_section} bytes, the section table says {in_table}"
    )]
    SectionSizeMismatch {
        /// Section index.
        index: usize,
        /// Size in the 12-byte section header.
        in_section: u64,
        /// Size in the file header's table.
        in_table: u64,
    },

    /// A section exceeds the size this crate accepts for its kind.
    #[error("{kind} section is {size} bytes; at most {limit} are allowed")]
    SectionTooLarge {
        /// Section kind.
        kind: &'static str,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },

    /// A required section is missing.
    #[error("image has no {kind} section")]
    MissingSection {
        /// Section kind.
        kind: &'static str,
    },

    /// A section that may appear once appears twice.
    #[error("section {index} is a second {kind} section")]
    DuplicateSection {
        /// Section kind.
        kind: &'static str,
        /// Index of the second one.
        index: usize,
    },

    /// A ramdisk comes before the kernel.
    #[error("ramdisk section {index} comes before the kernel")]
    RamdiskBeforeKernel {
        /// Index of the ramdisk.
        index: usize,
    },

    /// The kernel command line is not usable.
    #[error("invalid kernel command line: {reason}")]
    InvalidCmdline {
        /// Why.
        reason: &'static str,
    },

    /// The metadata section is not the JSON document the format defines.
    #[error("invalid metadata section")]
    InvalidMetadata(#[source] serde_json::Error),

    /// The stored CRC does not match the image's contents.
    #[error("CRC mismatch: header says {stored:#010x}, contents give {computed:#010x}")]
    CrcMismatch {
        /// CRC in the header.
        stored: u32,
        /// CRC computed over the file.
        computed: u32,
    },

    /// The image has no signature section.
    #[error("image is not signed")]
    NotSigned,

    /// The signature section is not the CBOR structure the format defines.
    #[error("malformed signature section: {reason}")]
    MalformedSignature {
        /// What is wrong.
        reason: String,
    },

    /// The signing certificate cannot be parsed or used.
    #[error("invalid signing certificate: {reason}")]
    InvalidCertificate {
        /// What is wrong.
        reason: String,
    },

    /// The key or signature algorithm is not one this crate supports.
    #[error("unsupported algorithm: {what}")]
    UnsupportedAlgorithm {
        /// Which algorithm.
        what: String,
    },

    /// The COSE signature does not verify with the certificate's key.
    #[error("signature does not verify with the signing certificate's key")]
    BadSignature,

    /// The signature is valid but signs a different PCR0 than the image's.
    #[error("signature is for PCR0 {signed}, but the image measures {measured}")]
    SignaturePcrMismatch {
        /// PCR0 in the signed payload (hex), or what was signed instead.
        signed: String,
        /// PCR0 of the image (hex).
        measured: String,
    },

    /// The private key cannot be parsed.
    #[error("invalid private key: {reason}")]
    InvalidPrivateKey {
        /// What is wrong.
        reason: &'static str,
    },

    /// The private key does not belong to the certificate.
    #[error("the private key does not match the signing certificate's public key")]
    KeyCertificateMismatch,

    /// An external signer (a key service holding the private key) failed or gave an unusable
    /// answer.
    #[error("signing with {signer} failed")]
    ExternalSigner {
        /// The signer, e.g. a KMS key ARN.
        signer: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// The external signer's public key is not the one in the signing certificate.
    #[error("the signing certificate's public key is not the public key of {signer}")]
    ExternalKeyMismatch {
        /// The signer, e.g. a KMS key ARN.
        signer: String,
    },

    /// The signature section would exceed the format's limit.
    #[error("signature section would be {size} bytes; at most {limit} are allowed")]
    SignatureTooLarge {
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },

    /// An image cannot be re-signed in place because its signature is not the last section.
    #[error("cannot re-sign in place: the signature section ({index}) is not the last section")]
    SignatureNotLast {
        /// Index of the signature section.
        index: usize,
    },

    /// The builder was given inputs that cannot make an image.
    #[error("invalid image input: {reason}")]
    InvalidInput {
        /// What is wrong.
        reason: String,
    },

    /// A cryptographic primitive failed unexpectedly.
    #[error("cryptographic operation failed: {what}")]
    Crypto {
        /// Which operation.
        what: &'static str,
    },

    /// A helper thread of the measurer stopped unexpectedly.
    #[error("internal error: the hashing thread stopped unexpectedly")]
    Internal,
}

impl EifError {
    /// Wraps an I/O error with what was being done.
    pub fn io(context: &'static str) -> impl FnOnce(io::Error) -> EifError {
        move |source| EifError::Io { context, source }
    }
}

/// Result of this crate's operations.
pub type Result<T, E = EifError> = std::result::Result<T, E>;
