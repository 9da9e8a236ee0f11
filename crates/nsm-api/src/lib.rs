//! The Nitro Secure Module (NSM) wire format: requests, responses, error codes and the
//! attestation document payload, encoded in CBOR exactly as AWS's `aws-nitro-enclaves-nsm-api`
//! encodes them (serde's externally tagged enums through ciborium).
//!
//! Encoding rules that follow from that choice, and which the tests pin with hand-built bytes:
//! - unit variants are CBOR text strings (`"DescribeNSM"`, `"GetRandom"`, `"LockPCR"`);
//! - struct variants are one-entry maps from the variant name to a map of fields
//!   (`{"DescribePCR": {"index": 3}}`);
//! - the newtype variant `Response::Error` is a one-entry map to a text string
//!   (`{"Error": "InvalidIndex"}`);
//! - byte fields are CBOR byte strings; `Option::None` is `null`, and a missing optional field
//!   decodes as `None`.
//!
//! The attestation document ([`AttestationDoc`]) is decoded from definite- and
//! indefinite-length maps and encoded as a definite-length map in the field order real
//! documents use. Every decoder here takes untrusted bytes: inputs are capped by the named
//! size constants before decoding, trailing bytes are rejected, and
//! [`AttestationDoc::check_syntax`] enforces the field limits of AWS's verification process.
#![forbid(unsafe_code)]

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// Largest request the NSM accepts, in bytes (larger ones get [`ErrorCode::InputTooLarge`]).
pub const NSM_REQUEST_MAX_SIZE: usize = 0x1000;
/// Size of the response buffer a client provides, in bytes; every response fits in it.
pub const NSM_RESPONSE_MAX_SIZE: usize = 0x3000;
/// Number of PCRs of an NSM.
pub const MAX_PCRS: usize = 32;
/// Length of a SHA-384 PCR, in bytes.
pub const PCR_LEN: usize = 48;
/// Largest `user_data` an attestation request may carry, in bytes.
pub const MAX_USER_DATA_LEN: usize = 1024;
/// Largest `nonce` an attestation request may carry, in bytes.
pub const MAX_NONCE_LEN: usize = 1024;
/// Largest `public_key` an attestation request or document may carry, in bytes.
pub const MAX_PUBLIC_KEY_LEN: usize = 1024;
/// Largest certificate (leaf or cabundle entry) a document may carry, in bytes.
pub const MAX_CERT_LEN: usize = 1024;
/// Most certificates a document's `cabundle` may hold.
pub const MAX_CABUNDLE_LEN: usize = 16;
/// Longest `module_id`, in bytes.
pub const MAX_MODULE_ID_LEN: usize = 256;
/// Largest encoded attestation document payload the decoder accepts, in bytes.
pub const MAX_DOCUMENT_PAYLOAD_LEN: usize = 16 * 1024;
/// Largest `data` an `ExtendPCR` request may carry (bounded anyway by the request size).
pub const MAX_EXTEND_DATA_LEN: usize = NSM_REQUEST_MAX_SIZE;

/// Errors decoding CBOR messages from untrusted bytes.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The input is larger than the limit for this message type.
    #[error("input of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Input length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The bytes are not a valid CBOR encoding of this message type.
    #[error("malformed CBOR: {0}")]
    Cbor(String),
    /// Bytes follow the encoded message.
    #[error("{0} trailing bytes after the message")]
    TrailingBytes(usize),
}

/// Errors encoding a message.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// The CBOR encoder failed (it only fails on I/O, which a `Vec` never reports).
    #[error("CBOR encoding failed: {0}")]
    Cbor(String),
}

/// Decodes one value of type `T` from exactly `bytes` (at most `max` bytes long).
fn decode_exact<T: for<'de> Deserialize<'de>>(bytes: &[u8], max: usize) -> Result<T, DecodeError> {
    if bytes.len() > max {
        return Err(DecodeError::TooLarge {
            len: bytes.len(),
            max,
        });
    }
    let mut reader = bytes;
    let value: T =
        ciborium::de::from_reader(&mut reader).map_err(|e| DecodeError::Cbor(e.to_string()))?;
    if !reader.is_empty() {
        return Err(DecodeError::TrailingBytes(reader.len()));
    }
    Ok(value)
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::with_capacity(256);
    ciborium::ser::into_writer(value, &mut out).map_err(|e| EncodeError::Cbor(e.to_string()))?;
    Ok(out)
}

/// Error codes an NSM returns in [`Response::Error`].
#[allow(clippy::upper_case_acronyms)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorCode {
    /// No error.
    Success,
    /// An argument is invalid.
    InvalidArgument,
    /// The PCR index is out of range.
    InvalidIndex,
    /// The response does not match the request.
    InvalidResponse,
    /// The PCR is locked (read-only) and the operation would modify it.
    ReadOnlyIndex,
    /// The request cannot be fulfilled (unknown or unsupported operation).
    InvalidOperation,
    /// The response does not fit the caller's buffer.
    BufferTooSmall,
    /// The request is too large.
    InputTooLarge,
    /// The NSM failed internally.
    InternalError,
}

impl ErrorCode {
    /// The variant's name, as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Success => "Success",
            ErrorCode::InvalidArgument => "InvalidArgument",
            ErrorCode::InvalidIndex => "InvalidIndex",
            ErrorCode::InvalidResponse => "InvalidResponse",
            ErrorCode::ReadOnlyIndex => "ReadOnlyIndex",
            ErrorCode::InvalidOperation => "InvalidOperation",
            ErrorCode::BufferTooSmall => "BufferTooSmall",
            ErrorCode::InputTooLarge => "InputTooLarge",
            ErrorCode::InternalError => "InternalError",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The digest of a PCR bank.
#[allow(clippy::upper_case_acronyms)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Digest {
    /// SHA-256 (32-byte PCRs).
    SHA256,
    /// SHA-384 (48-byte PCRs); what every Nitro NSM uses.
    SHA384,
    /// SHA-512 (64-byte PCRs).
    SHA512,
}

impl Digest {
    /// Length of one PCR with this digest.
    pub fn pcr_len(self) -> usize {
        match self {
            Digest::SHA256 => 32,
            Digest::SHA384 => 48,
            Digest::SHA512 => 64,
        }
    }

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Digest::SHA256 => "SHA256",
            Digest::SHA384 => "SHA384",
            Digest::SHA512 => "SHA512",
        }
    }
}

/// A request to the NSM.
#[allow(clippy::upper_case_acronyms)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Reads PCR `index`.
    DescribePCR {
        /// PCR index.
        index: u16,
    },
    /// Extends PCR `index` with `data`: new = SHA-384(old || data).
    ExtendPCR {
        /// PCR index.
        index: u16,
        /// Data to extend with.
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// Locks PCR `index` against further extension.
    LockPCR {
        /// PCR index.
        index: u16,
    },
    /// Locks PCRs `[0, range)`.
    LockPCRs {
        /// Number of PCRs to lock, from index 0.
        range: u16,
    },
    /// Describes the NSM (version, module id, PCR count, locked PCRs, digest).
    DescribeNSM,
    /// Asks for a signed attestation document.
    Attestation {
        /// Application data to include.
        user_data: Option<ByteBuf>,
        /// A verifier's nonce to include.
        nonce: Option<ByteBuf>,
        /// A public key to include (DER).
        public_key: Option<ByteBuf>,
    },
    /// Asks for random bytes.
    GetRandom,
}

impl Request {
    /// Decodes a request (at most [`NSM_REQUEST_MAX_SIZE`] bytes, no trailing bytes).
    pub fn from_cbor(bytes: &[u8]) -> Result<Self, DecodeError> {
        decode_exact(bytes, NSM_REQUEST_MAX_SIZE)
    }

    /// Encodes the request.
    pub fn to_cbor(&self) -> Result<Vec<u8>, EncodeError> {
        encode(self)
    }

    /// The operation's name (the variant name on the wire).
    pub fn name(&self) -> &'static str {
        match self {
            Request::DescribePCR { .. } => "DescribePCR",
            Request::ExtendPCR { .. } => "ExtendPCR",
            Request::LockPCR { .. } => "LockPCR",
            Request::LockPCRs { .. } => "LockPCRs",
            Request::DescribeNSM => "DescribeNSM",
            Request::Attestation { .. } => "Attestation",
            Request::GetRandom => "GetRandom",
        }
    }

    /// Every operation name a request may carry.
    pub const NAMES: &'static [&'static str] = &[
        "DescribePCR",
        "ExtendPCR",
        "LockPCR",
        "LockPCRs",
        "DescribeNSM",
        "Attestation",
        "GetRandom",
    ];
}

/// A response from the NSM.
#[allow(clippy::upper_case_acronyms)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// A PCR's value and lock state.
    DescribePCR {
        /// True if the PCR is locked.
        lock: bool,
        /// The PCR value.
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// The new value of an extended PCR.
    ExtendPCR {
        /// The PCR value after extension.
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// The PCR is now locked.
    LockPCR,
    /// The PCRs are now locked.
    LockPCRs,
    /// The NSM's description.
    DescribeNSM {
        /// Major version.
        version_major: u16,
        /// Minor version.
        version_minor: u16,
        /// Patch version.
        version_patch: u16,
        /// The module id (also in attestation documents).
        module_id: String,
        /// Number of PCRs.
        max_pcrs: u16,
        /// Indices of the locked PCRs.
        locked_pcrs: BTreeSet<u16>,
        /// The PCR bank's digest.
        digest: Digest,
    },
    /// A signed attestation document (COSE_Sign1).
    Attestation {
        /// The COSE_Sign1 bytes.
        #[serde(with = "serde_bytes")]
        document: Vec<u8>,
    },
    /// Random bytes.
    GetRandom {
        /// The random bytes.
        #[serde(with = "serde_bytes")]
        random: Vec<u8>,
    },
    /// The request failed.
    Error(ErrorCode),
}

impl Response {
    /// Decodes a response (at most [`NSM_RESPONSE_MAX_SIZE`] bytes, no trailing bytes).
    pub fn from_cbor(bytes: &[u8]) -> Result<Self, DecodeError> {
        decode_exact(bytes, NSM_RESPONSE_MAX_SIZE)
    }

    /// Encodes the response.
    pub fn to_cbor(&self) -> Result<Vec<u8>, EncodeError> {
        encode(self)
    }
}

/// The payload of an attestation document, field for field as AWS defines it.
///
/// The declaration order is the encoding order of real documents; keep it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttestationDoc {
    /// The issuing NSM's id.
    pub module_id: String,
    /// The PCR bank's digest (always SHA384 on Nitro).
    pub digest: Digest,
    /// When the document was made, milliseconds since the Unix epoch (UTC).
    pub timestamp: u64,
    /// PCR index to value.
    pub pcrs: BTreeMap<usize, ByteBuf>,
    /// The signing (leaf) certificate, DER.
    pub certificate: ByteBuf,
    /// The issuing CA certificates, DER, root first.
    pub cabundle: Vec<ByteBuf>,
    /// An optional public key (DER) for the relying party to encrypt to.
    pub public_key: Option<ByteBuf>,
    /// Optional application data.
    pub user_data: Option<ByteBuf>,
    /// Optional verifier nonce.
    pub nonce: Option<ByteBuf>,
}

/// A syntax check of [`AttestationDoc::check_syntax`] that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SyntaxError {
    /// `module_id` is empty or too long.
    #[error("module_id length {0} is not in 1..={MAX_MODULE_ID_LEN}")]
    ModuleId(usize),
    /// The digest is not SHA384.
    #[error("digest is {0:?}, expected SHA384")]
    Digest(Digest),
    /// The timestamp is zero.
    #[error("timestamp is zero")]
    Timestamp,
    /// There are no PCRs, or too many.
    #[error("{0} PCRs; expected 1..={MAX_PCRS}")]
    PcrCount(usize),
    /// A PCR index is out of range.
    #[error("PCR index {0} is not below {MAX_PCRS}")]
    PcrIndex(usize),
    /// A PCR has a length other than 32, 48 or 64 bytes.
    #[error("PCR {index} is {len} bytes; expected 32, 48 or 64")]
    PcrLength {
        /// PCR index.
        index: usize,
        /// Its length.
        len: usize,
    },
    /// The leaf certificate is empty or too large.
    #[error("certificate length {0} is not in 1..={MAX_CERT_LEN}")]
    Certificate(usize),
    /// The cabundle is empty.
    #[error("cabundle is empty")]
    EmptyCabundle,
    /// The cabundle has too many entries.
    #[error("cabundle has {0} entries; at most {MAX_CABUNDLE_LEN} are allowed")]
    CabundleTooLong(usize),
    /// A cabundle entry is empty or too large.
    #[error("cabundle entry {index} is {len} bytes; expected 1..={MAX_CERT_LEN}")]
    CabundleEntry {
        /// Position in the cabundle.
        index: usize,
        /// Its length.
        len: usize,
    },
    /// `public_key` is empty or too large.
    #[error("public_key length {0} is not in 1..={MAX_PUBLIC_KEY_LEN}")]
    PublicKey(usize),
    /// `user_data` is too large.
    #[error("user_data length {0} exceeds {MAX_USER_DATA_LEN}")]
    UserData(usize),
    /// `nonce` is too large.
    #[error("nonce length {0} exceeds {MAX_NONCE_LEN}")]
    Nonce(usize),
}

impl AttestationDoc {
    /// Decodes a payload (definite- or indefinite-length map; at most
    /// [`MAX_DOCUMENT_PAYLOAD_LEN`] bytes; no trailing bytes). It does not check field limits:
    /// call [`AttestationDoc::check_syntax`].
    pub fn from_cbor(bytes: &[u8]) -> Result<Self, DecodeError> {
        decode_exact(bytes, MAX_DOCUMENT_PAYLOAD_LEN)
    }

    /// Encodes the payload as a definite-length map in the order real documents use.
    pub fn to_cbor(&self) -> Result<Vec<u8>, EncodeError> {
        encode(self)
    }

    /// Checks every syntactic rule of AWS's verification process: mandatory fields (enforced by
    /// decoding), digest SHA384, PCR indices below 32 with lengths 32/48/64, certificate and
    /// cabundle entry sizes, a non-empty cabundle, and the optional fields' size limits.
    pub fn check_syntax(&self) -> Result<(), SyntaxError> {
        if self.module_id.is_empty() || self.module_id.len() > MAX_MODULE_ID_LEN {
            return Err(SyntaxError::ModuleId(self.module_id.len()));
        }
        if self.digest != Digest::SHA384 {
            return Err(SyntaxError::Digest(self.digest));
        }
        if self.timestamp == 0 {
            return Err(SyntaxError::Timestamp);
        }
        if self.pcrs.is_empty() || self.pcrs.len() > MAX_PCRS {
            return Err(SyntaxError::PcrCount(self.pcrs.len()));
        }
        for (&index, value) in &self.pcrs {
            if index >= MAX_PCRS {
                return Err(SyntaxError::PcrIndex(index));
            }
            if !matches!(value.len(), 32 | 48 | 64) {
                return Err(SyntaxError::PcrLength {
                    index,
                    len: value.len(),
                });
            }
        }
        if self.certificate.is_empty() || self.certificate.len() > MAX_CERT_LEN {
            return Err(SyntaxError::Certificate(self.certificate.len()));
        }
        if self.cabundle.is_empty() {
            return Err(SyntaxError::EmptyCabundle);
        }
        if self.cabundle.len() > MAX_CABUNDLE_LEN {
            return Err(SyntaxError::CabundleTooLong(self.cabundle.len()));
        }
        for (index, cert) in self.cabundle.iter().enumerate() {
            if cert.is_empty() || cert.len() > MAX_CERT_LEN {
                return Err(SyntaxError::CabundleEntry {
                    index,
                    len: cert.len(),
                });
            }
        }
        if let Some(key) = &self.public_key {
            if key.is_empty() || key.len() > MAX_PUBLIC_KEY_LEN {
                return Err(SyntaxError::PublicKey(key.len()));
            }
        }
        if let Some(data) = &self.user_data {
            if data.len() > MAX_USER_DATA_LEN {
                return Err(SyntaxError::UserData(data.len()));
            }
        }
        if let Some(nonce) = &self.nonce {
            if nonce.len() > MAX_NONCE_LEN {
                return Err(SyntaxError::Nonce(nonce.len()));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CBOR text string header + bytes (short strings only).
    fn text(s: &str) -> Vec<u8> {
        assert!(s.len() < 24);
        let mut v = vec![0x60 | u8::try_from(s.len()).unwrap()];
        v.extend_from_slice(s.as_bytes());
        v
    }

    fn bytes_hdr(len: usize) -> Vec<u8> {
        let [.., hi, lo] = len.to_be_bytes();
        match len {
            0..=23 => vec![0x40 | lo],
            24..=255 => vec![0x58, lo],
            _ => vec![0x59, hi, lo],
        }
    }

    fn cat(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    #[test]
    fn unit_variants_are_text_strings() {
        for (req, name) in [
            (Request::DescribeNSM, "DescribeNSM"),
            (Request::GetRandom, "GetRandom"),
        ] {
            let wire = text(name);
            assert_eq!(req.to_cbor().unwrap(), wire);
            assert_eq!(Request::from_cbor(&wire).unwrap(), req);
        }
        for (resp, name) in [
            (Response::LockPCR, "LockPCR"),
            (Response::LockPCRs, "LockPCRs"),
        ] {
            let wire = text(name);
            assert_eq!(resp.to_cbor().unwrap(), wire);
            assert_eq!(Response::from_cbor(&wire).unwrap(), resp);
        }
    }

    #[test]
    fn struct_variants_are_one_entry_maps() {
        // {"DescribePCR": {"index": 5}}
        let wire = cat(&[
            &[0xa1],
            &text("DescribePCR"),
            &[0xa1],
            &text("index"),
            &[0x05],
        ]);
        let req = Request::DescribePCR { index: 5 };
        assert_eq!(req.to_cbor().unwrap(), wire);
        assert_eq!(Request::from_cbor(&wire).unwrap(), req);

        // {"ExtendPCR": {"index": 16, "data": h'010203'}}
        let wire = cat(&[
            &[0xa1],
            &text("ExtendPCR"),
            &[0xa2],
            &text("index"),
            &[0x10],
            &text("data"),
            &[0x43, 1, 2, 3],
        ]);
        let req = Request::ExtendPCR {
            index: 16,
            data: vec![1, 2, 3],
        };
        assert_eq!(req.to_cbor().unwrap(), wire);
        assert_eq!(Request::from_cbor(&wire).unwrap(), req);

        // {"LockPCRs": {"range": 300}}
        let wire = cat(&[
            &[0xa1],
            &text("LockPCRs"),
            &[0xa1],
            &text("range"),
            &[0x19, 0x01, 0x2c],
        ]);
        let req = Request::LockPCRs { range: 300 };
        assert_eq!(req.to_cbor().unwrap(), wire);
        assert_eq!(Request::from_cbor(&wire).unwrap(), req);

        // {"DescribePCR": {"lock": true, "data": h'00..'}}
        let wire = cat(&[
            &[0xa1],
            &text("DescribePCR"),
            &[0xa2],
            &text("lock"),
            &[0xf5],
            &text("data"),
            &bytes_hdr(48),
            &[0u8; 48],
        ]);
        let resp = Response::DescribePCR {
            lock: true,
            data: vec![0; 48],
        };
        assert_eq!(resp.to_cbor().unwrap(), wire);
        assert_eq!(Response::from_cbor(&wire).unwrap(), resp);
    }

    #[test]
    fn attestation_request_nulls_and_missing_fields() {
        // {"Attestation": {"user_data": h'aa', "nonce": null, "public_key": null}}
        let wire = cat(&[
            &[0xa1],
            &text("Attestation"),
            &[0xa3],
            &text("user_data"),
            &[0x41, 0xaa],
            &text("nonce"),
            &[0xf6],
            &text("public_key"),
            &[0xf6],
        ]);
        let req = Request::Attestation {
            user_data: Some(ByteBuf::from(vec![0xaa])),
            nonce: None,
            public_key: None,
        };
        assert_eq!(req.to_cbor().unwrap(), wire);
        assert_eq!(Request::from_cbor(&wire).unwrap(), req);

        // {"Attestation": {}} : every optional field missing.
        let wire = cat(&[&[0xa1], &text("Attestation"), &[0xa0]]);
        assert_eq!(
            Request::from_cbor(&wire).unwrap(),
            Request::Attestation {
                user_data: None,
                nonce: None,
                public_key: None
            }
        );
    }

    #[test]
    fn error_response_is_a_map_to_a_string() {
        let wire = cat(&[&[0xa1], &text("Error"), &text("InvalidIndex")]);
        let resp = Response::Error(ErrorCode::InvalidIndex);
        assert_eq!(resp.to_cbor().unwrap(), wire);
        assert_eq!(Response::from_cbor(&wire).unwrap(), resp);
        for code in [
            ErrorCode::Success,
            ErrorCode::InvalidArgument,
            ErrorCode::InvalidIndex,
            ErrorCode::InvalidResponse,
            ErrorCode::ReadOnlyIndex,
            ErrorCode::InvalidOperation,
            ErrorCode::BufferTooSmall,
            ErrorCode::InputTooLarge,
            ErrorCode::InternalError,
        ] {
            let wire = cat(&[&[0xa1], &text("Error"), &text(code.as_str())]);
            assert_eq!(Response::Error(code).to_cbor().unwrap(), wire);
        }
    }

    #[test]
    fn describe_nsm_response_layout() {
        let resp = Response::DescribeNSM {
            version_major: 1,
            version_minor: 0,
            version_patch: 0,
            module_id: "m".into(),
            max_pcrs: 32,
            locked_pcrs: [0u16, 1].into_iter().collect(),
            digest: Digest::SHA384,
        };
        let wire = cat(&[
            &[0xa1],
            &text("DescribeNSM"),
            &[0xa7],
            &text("version_major"),
            &[0x01],
            &text("version_minor"),
            &[0x00],
            &text("version_patch"),
            &[0x00],
            &text("module_id"),
            &text("m"),
            &text("max_pcrs"),
            &[0x18, 0x20],
            &text("locked_pcrs"),
            &[0x82, 0x00, 0x01],
            &text("digest"),
            &text("SHA384"),
        ]);
        assert_eq!(resp.to_cbor().unwrap(), wire);
        assert_eq!(Response::from_cbor(&wire).unwrap(), resp);
    }

    #[test]
    fn rejects_trailing_bytes_oversize_and_garbage() {
        let mut wire = text("GetRandom");
        wire.push(0);
        assert!(matches!(
            Request::from_cbor(&wire),
            Err(DecodeError::TrailingBytes(1))
        ));
        let big = vec![0u8; NSM_REQUEST_MAX_SIZE + 1];
        assert!(matches!(
            Request::from_cbor(&big),
            Err(DecodeError::TooLarge { .. })
        ));
        assert!(matches!(
            Request::from_cbor(&text("Reboot")),
            Err(DecodeError::Cbor(_))
        ));
        assert!(matches!(Request::from_cbor(&[]), Err(DecodeError::Cbor(_))));
        // A byte string claiming 2^32 bytes must fail without allocating them.
        assert!(Request::from_cbor(&[0x5a, 0xff, 0xff, 0xff, 0xff, 0]).is_err());
    }

    fn sample_doc() -> AttestationDoc {
        AttestationDoc {
            module_id: "i-0123456789abcdef0-enc0123456789abcdef".into(),
            digest: Digest::SHA384,
            timestamp: 1_700_000_000_000,
            pcrs: (0..16)
                .map(|i| (i, ByteBuf::from(vec![u8::try_from(i).unwrap(); 48])))
                .collect(),
            certificate: ByteBuf::from(vec![0x30; 10]),
            cabundle: vec![ByteBuf::from(vec![0x30; 5])],
            public_key: None,
            user_data: Some(ByteBuf::from(b"hello".to_vec())),
            nonce: None,
        }
    }

    #[test]
    fn document_field_order_and_definite_map() {
        let doc = sample_doc();
        let wire = doc.to_cbor().unwrap();
        assert_eq!(wire[0], 0xa9, "definite-length map of 9 entries");
        let order = [
            "module_id",
            "digest",
            "timestamp",
            "pcrs",
            "certificate",
            "cabundle",
            "public_key",
            "user_data",
            "nonce",
        ];
        let mut last = 0;
        for key in order {
            let needle = text(key);
            let pos = wire
                .windows(needle.len())
                .position(|w| w == needle.as_slice())
                .unwrap();
            assert!(pos > last, "{key} out of order");
            last = pos;
        }
        assert_eq!(AttestationDoc::from_cbor(&wire).unwrap(), doc);
        doc.check_syntax().unwrap();
    }

    #[test]
    fn document_indefinite_length_map_decodes() {
        let doc = sample_doc();
        let wire = doc.to_cbor().unwrap();
        // 0xa9 -> 0xbf ... 0xff: same entries in an indefinite-length map.
        let mut indef = vec![0xbf];
        indef.extend_from_slice(&wire[1..]);
        indef.push(0xff);
        assert_eq!(AttestationDoc::from_cbor(&indef).unwrap(), doc);
        // Missing optional fields decode as None.
        let mut short = doc.clone();
        short.user_data = None;
        let wire = short.to_cbor().unwrap();
        let needle = text("public_key");
        let cut = wire
            .windows(needle.len())
            .position(|w| w == needle.as_slice())
            .unwrap();
        let mut trimmed = vec![0xa6];
        trimmed.extend_from_slice(&wire[1..cut]);
        assert_eq!(AttestationDoc::from_cbor(&trimmed).unwrap(), short);
    }

    #[test]
    fn document_missing_mandatory_field_or_duplicate_is_rejected() {
        let wire = sample_doc().to_cbor().unwrap();
        // Drop module_id (first entry): map of 8 starting at "digest".
        let digest_at = wire
            .windows(7)
            .position(|w| w == text("digest").as_slice())
            .unwrap();
        let mut missing = vec![0xa8];
        missing.extend_from_slice(&wire[digest_at..]);
        assert!(AttestationDoc::from_cbor(&missing).is_err());
        // Duplicate module_id.
        let mut dup = vec![0xaa];
        dup.extend_from_slice(&wire[1..digest_at]);
        dup.extend_from_slice(&wire[1..]);
        assert!(AttestationDoc::from_cbor(&dup).is_err());
    }

    #[test]
    fn syntax_limits() {
        let ok = sample_doc();
        let mut d = ok.clone();
        d.digest = Digest::SHA256;
        assert_eq!(d.check_syntax(), Err(SyntaxError::Digest(Digest::SHA256)));
        let mut d = ok.clone();
        d.pcrs.insert(32, ByteBuf::from(vec![0; 48]));
        assert_eq!(d.check_syntax(), Err(SyntaxError::PcrIndex(32)));
        let mut d = ok.clone();
        d.pcrs.insert(3, ByteBuf::from(vec![0; 47]));
        assert_eq!(
            d.check_syntax(),
            Err(SyntaxError::PcrLength { index: 3, len: 47 })
        );
        let mut d = ok.clone();
        d.cabundle.clear();
        assert_eq!(d.check_syntax(), Err(SyntaxError::EmptyCabundle));
        let mut d = ok.clone();
        d.cabundle.push(ByteBuf::from(vec![0; MAX_CERT_LEN + 1]));
        assert!(matches!(
            d.check_syntax(),
            Err(SyntaxError::CabundleEntry { index: 1, .. })
        ));
        let mut d = ok.clone();
        d.public_key = Some(ByteBuf::new());
        assert_eq!(d.check_syntax(), Err(SyntaxError::PublicKey(0)));
        let mut d = ok.clone();
        d.user_data = Some(ByteBuf::from(vec![0; MAX_USER_DATA_LEN + 1]));
        assert!(matches!(d.check_syntax(), Err(SyntaxError::UserData(_))));
        let mut d = ok.clone();
        d.nonce = Some(ByteBuf::from(vec![0; MAX_NONCE_LEN + 1]));
        assert!(matches!(d.check_syntax(), Err(SyntaxError::Nonce(_))));
        let mut d = ok;
        d.module_id.clear();
        assert_eq!(d.check_syntax(), Err(SyntaxError::ModuleId(0)));
    }

    proptest::proptest! {
        #[test]
        fn request_roundtrip(index in 0u16..64, data in proptest::collection::vec(0u8.., 0..200),
                             ud in proptest::option::of(proptest::collection::vec(0u8.., 0..100))) {
            for req in [
                Request::DescribePCR { index },
                Request::ExtendPCR { index, data: data.clone() },
                Request::LockPCR { index },
                Request::LockPCRs { range: index },
                Request::Attestation { user_data: ud.clone().map(ByteBuf::from), nonce: None,
                                       public_key: Some(ByteBuf::from(data.clone())) },
            ] {
                let wire = req.to_cbor().unwrap();
                proptest::prop_assert_eq!(Request::from_cbor(&wire).unwrap(), req);
            }
        }

        #[test]
        fn request_decoder_never_panics(bytes in proptest::collection::vec(0u8.., 0..300)) {
            let _ = Request::from_cbor(&bytes);
            let _ = Response::from_cbor(&bytes);
            let _ = AttestationDoc::from_cbor(&bytes);
        }
    }
}
