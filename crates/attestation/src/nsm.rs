//! The NSM as a transport-free state machine: a PCR bank, the request handlers and the
//! attestation signer of one enclave. The runtime's monitor feeds it the bytes that arrive on
//! the NSM channel ([`Nsm::process_bytes`]) from any number of threads; the state sits behind a
//! mutex.
//!
//! PCRs: 32 SHA-384 registers. 0-15 are locked at boot: 0, 1, 2 and 8 hold the image's
//! measurements (zeros for 0-2 in debug mode, as on AWS), 3 is `extend(zeros, role ARN)` or zeros,
//! 4 is `extend(zeros, instance id)`, the rest are zeros. 16-31 start at zero and can be extended
//! (`new = SHA-384(old || data)`) and locked. Documents carry every locked PCR.
//!
//! Errors follow AWS's NSM: an index of 32 or more is `InvalidIndex`; extending or locking a
//! locked PCR is `ReadOnlyIndex`; a request over 4096 bytes is `InputTooLarge`; bytes that are
//! not a request for a known operation are `InvalidOperation`; a known operation with malformed
//! or out-of-range arguments is `InvalidArgument`; a failure to sign is `InternalError`.

use crate::pki::{DocumentFields, DocumentSigner};
use aws_lc_rs::digest;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use ciborium::value::Value;
use cloister_nsm_api::{
    Digest, ErrorCode, Request, Response, MAX_NONCE_LEN, MAX_PCRS, MAX_PUBLIC_KEY_LEN,
    MAX_USER_DATA_LEN, NSM_REQUEST_MAX_SIZE, NSM_RESPONSE_MAX_SIZE, PCR_LEN,
};
use serde_bytes::ByteBuf;
use std::collections::BTreeSet;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

/// Number of PCRs locked at boot.
pub const BOOT_LOCKED_PCRS: usize = 16;
/// Largest `user_data` or `nonce` put in a document: requests may carry up to 1024 bytes on the
/// wire, but common verifiers cap these fields at 512, so larger ones are refused with
/// `InvalidArgument` rather than emitted.
pub const MAX_EMITTED_USER_DATA_LEN: usize = 512;
/// See [`MAX_EMITTED_USER_DATA_LEN`].
pub const MAX_EMITTED_NONCE_LEN: usize = 512;
/// Bytes returned by `GetRandom`.
pub const RANDOM_LEN: usize = 256;
/// Longest module id.
pub const MAX_MODULE_ID_LEN: usize = cloister_nsm_api::MAX_MODULE_ID_LEN;
/// NSM version reported by `DescribeNSM`.
pub const VERSION: (u16, u16, u16) = (1, 0, 0);
/// [`MAX_PCRS`] as DescribeNSM reports it.
#[allow(
    clippy::cast_possible_truncation,
    reason = "32 PCRs fit; checked below"
)]
const MAX_PCRS_U16: u16 = MAX_PCRS as u16;
const _: () = assert!(MAX_PCRS <= u16::MAX as usize);

/// A source of wall-clock time in milliseconds since the epoch.
pub trait Clock: Send + Sync {
    /// Now, in milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

/// A PCR value.
pub type Pcr = [u8; PCR_LEN];

/// The image measurements: PCR0 (image), PCR1 (kernel + boot ramdisk), PCR2 (user ramdisks),
/// PCR8 (signing certificate; `None` for unsigned images, which leaves it zero).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImagePcrs {
    /// PCR0.
    pub pcr0: Pcr,
    /// PCR1.
    pub pcr1: Pcr,
    /// PCR2.
    pub pcr2: Pcr,
    /// PCR8, if the image is signed.
    pub pcr8: Option<Pcr>,
}

impl ImagePcrs {
    /// Builds the measurements from byte slices (as an EIF reader reports them); each must be
    /// 48 bytes long.
    pub fn from_slices(
        pcr0: &[u8],
        pcr1: &[u8],
        pcr2: &[u8],
        pcr8: Option<&[u8]>,
    ) -> Result<Self, NsmError> {
        let one = |index: usize, v: &[u8]| -> Result<Pcr, NsmError> {
            Pcr::try_from(v).map_err(|_| NsmError::PcrLength {
                index,
                len: v.len(),
            })
        };
        Ok(Self {
            pcr0: one(0, pcr0)?,
            pcr1: one(1, pcr1)?,
            pcr2: one(2, pcr2)?,
            pcr8: pcr8.map(|v| one(8, v)).transpose()?,
        })
    }
}

/// What an NSM is made from.
pub struct NsmConfig {
    /// The module id (AWS: the enclave id); also in every document.
    pub module_id: String,
    /// The image's measurements.
    pub image_pcrs: ImagePcrs,
    /// The IAM role ARN (or equivalent) measured into PCR3; `None` leaves PCR3 zero.
    pub role_arn: Option<String>,
    /// The instance id measured into PCR4.
    pub instance_id: String,
    /// Debug mode: PCR0-2 read (and are attested) as zeros.
    pub debug_mode: bool,
    /// The enclave's document signer.
    pub signer: DocumentSigner,
    /// The clock that stamps documents.
    pub clock: Arc<dyn Clock>,
}

impl fmt::Debug for NsmConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NsmConfig")
            .field("module_id", &self.module_id)
            .field("image_pcrs", &self.image_pcrs)
            .field("role_arn", &self.role_arn)
            .field("instance_id", &self.instance_id)
            .field("debug_mode", &self.debug_mode)
            .field("signer", &self.signer)
            .finish_non_exhaustive()
    }
}

/// Errors creating an NSM.
#[derive(Debug, thiserror::Error)]
pub enum NsmError {
    /// The module id is empty or too long.
    #[error("module id length {0} is not in 1..={MAX_MODULE_ID_LEN}")]
    ModuleId(usize),
    /// An image PCR is not 48 bytes long.
    #[error("PCR{index} is {len} bytes; expected 48")]
    PcrLength {
        /// The PCR index.
        index: usize,
        /// Its length.
        len: usize,
    },
}

#[derive(Debug, Clone)]
struct PcrBank {
    values: [Pcr; MAX_PCRS],
    locked: [bool; MAX_PCRS],
}

/// `SHA-384(old || data)`.
pub fn extend(old: &Pcr, data: &[u8]) -> Pcr {
    let mut ctx = digest::Context::new(&digest::SHA384);
    ctx.update(old);
    ctx.update(data);
    let mut out = [0u8; PCR_LEN];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// The NSM of one enclave.
pub struct Nsm {
    module_id: String,
    signer: DocumentSigner,
    clock: Arc<dyn Clock>,
    debug_mode: bool,
    bank: Mutex<PcrBank>,
    rng: SystemRandom,
}

impl fmt::Debug for Nsm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Nsm")
            .field("module_id", &self.module_id)
            .field("debug_mode", &self.debug_mode)
            .finish_non_exhaustive()
    }
}

/// Decodes a request; distinguishes unknown operations from bad arguments.
fn decode_request(bytes: &[u8]) -> Result<Request, ErrorCode> {
    if bytes.len() > NSM_REQUEST_MAX_SIZE {
        return Err(ErrorCode::InputTooLarge);
    }
    let mut reader = bytes;
    let value: Value =
        ciborium::de::from_reader(&mut reader).map_err(|_| ErrorCode::InvalidOperation)?;
    if !reader.is_empty() {
        return Err(ErrorCode::InvalidArgument);
    }
    let name = match &value {
        Value::Text(name) => name.as_str(),
        Value::Map(entries) if entries.len() == 1 => match &entries[0].0 {
            Value::Text(name) => name.as_str(),
            _ => return Err(ErrorCode::InvalidOperation),
        },
        _ => return Err(ErrorCode::InvalidOperation),
    };
    if !Request::NAMES.contains(&name) {
        return Err(ErrorCode::InvalidOperation);
    }
    value
        .deserialized::<Request>()
        .map_err(|_| ErrorCode::InvalidArgument)
}

impl Nsm {
    /// Builds the NSM and its boot-time PCRs.
    pub fn new(config: NsmConfig) -> Result<Nsm, NsmError> {
        if config.module_id.is_empty() || config.module_id.len() > MAX_MODULE_ID_LEN {
            return Err(NsmError::ModuleId(config.module_id.len()));
        }
        let zero = [0u8; PCR_LEN];
        let mut values = [zero; MAX_PCRS];
        if !config.debug_mode {
            values[0] = config.image_pcrs.pcr0;
            values[1] = config.image_pcrs.pcr1;
            values[2] = config.image_pcrs.pcr2;
        }
        if let Some(arn) = &config.role_arn {
            values[3] = extend(&zero, arn.as_bytes());
        }
        values[4] = extend(&zero, config.instance_id.as_bytes());
        if let Some(pcr8) = config.image_pcrs.pcr8 {
            values[8] = pcr8;
        }
        let mut locked = [false; MAX_PCRS];
        locked[..BOOT_LOCKED_PCRS].fill(true);
        Ok(Nsm {
            module_id: config.module_id,
            signer: config.signer,
            clock: config.clock,
            debug_mode: config.debug_mode,
            bank: Mutex::new(PcrBank { values, locked }),
            rng: SystemRandom::new(),
        })
    }

    /// The module id.
    pub fn module_id(&self) -> &str {
        &self.module_id
    }

    /// True in debug mode.
    pub fn debug_mode(&self) -> bool {
        self.debug_mode
    }

    /// The document signer.
    pub fn signer(&self) -> &DocumentSigner {
        &self.signer
    }

    fn bank(&self) -> std::sync::MutexGuard<'_, PcrBank> {
        // A panic while holding the lock cannot leave the bank half-written (every update is
        // a single assignment), so a poisoned lock is still usable.
        match self.bank.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Reads PCR `index` and its lock state.
    pub fn pcr(&self, index: usize) -> Option<(Pcr, bool)> {
        let bank = self.bank();
        Some((*bank.values.get(index)?, bank.locked[index]))
    }

    /// Handles one CBOR request and returns the CBOR response; never fails.
    pub fn process_bytes(&self, request: &[u8]) -> Vec<u8> {
        let response = match decode_request(request) {
            Ok(request) => self.process(request),
            Err(code) => Response::Error(code),
        };
        encode_response(&response)
    }

    /// Handles one request.
    pub fn process(&self, request: Request) -> Response {
        match request {
            Request::DescribePCR { index } => {
                let index = usize::from(index);
                let bank = self.bank();
                match bank.values.get(index) {
                    Some(value) => Response::DescribePCR {
                        lock: bank.locked[index],
                        data: value.to_vec(),
                    },
                    None => Response::Error(ErrorCode::InvalidIndex),
                }
            }
            Request::ExtendPCR { index, data } => {
                let index = usize::from(index);
                if index >= MAX_PCRS {
                    return Response::Error(ErrorCode::InvalidIndex);
                }
                if data.len() > cloister_nsm_api::MAX_EXTEND_DATA_LEN {
                    return Response::Error(ErrorCode::InputTooLarge);
                }
                let mut bank = self.bank();
                if bank.locked[index] {
                    return Response::Error(ErrorCode::ReadOnlyIndex);
                }
                let new = extend(&bank.values[index], &data);
                bank.values[index] = new;
                Response::ExtendPCR { data: new.to_vec() }
            }
            Request::LockPCR { index } => {
                let index = usize::from(index);
                if index >= MAX_PCRS {
                    return Response::Error(ErrorCode::InvalidIndex);
                }
                let mut bank = self.bank();
                if bank.locked[index] {
                    return Response::Error(ErrorCode::ReadOnlyIndex);
                }
                bank.locked[index] = true;
                Response::LockPCR
            }
            Request::LockPCRs { range } => {
                let range = usize::from(range);
                if range > MAX_PCRS {
                    return Response::Error(ErrorCode::InvalidIndex);
                }
                let mut bank = self.bank();
                bank.locked[..range].fill(true);
                Response::LockPCRs
            }
            Request::DescribeNSM => {
                let bank = self.bank();
                let locked_pcrs: BTreeSet<u16> = (0..MAX_PCRS)
                    .filter(|&i| bank.locked[i])
                    .filter_map(|i| u16::try_from(i).ok())
                    .collect();
                Response::DescribeNSM {
                    version_major: VERSION.0,
                    version_minor: VERSION.1,
                    version_patch: VERSION.2,
                    module_id: self.module_id.clone(),
                    max_pcrs: MAX_PCRS_U16,
                    locked_pcrs,
                    digest: Digest::SHA384,
                }
            }
            Request::Attestation {
                user_data,
                nonce,
                public_key,
            } => self.attest(user_data, nonce, public_key),
            Request::GetRandom => {
                let mut random = vec![0u8; RANDOM_LEN];
                match self.rng.fill(&mut random) {
                    Ok(()) => Response::GetRandom { random },
                    Err(_) => Response::Error(ErrorCode::InternalError),
                }
            }
        }
    }

    fn attest(
        &self,
        user_data: Option<ByteBuf>,
        nonce: Option<ByteBuf>,
        public_key: Option<ByteBuf>,
    ) -> Response {
        let too_long = |field: &Option<ByteBuf>, wire_max: usize, emit_max: usize| {
            field
                .as_ref()
                .is_some_and(|v| v.len() > wire_max.min(emit_max))
        };
        if too_long(&user_data, MAX_USER_DATA_LEN, MAX_EMITTED_USER_DATA_LEN)
            || too_long(&nonce, MAX_NONCE_LEN, MAX_EMITTED_NONCE_LEN)
            || public_key
                .as_ref()
                .is_some_and(|k| k.is_empty() || k.len() > MAX_PUBLIC_KEY_LEN)
        {
            return Response::Error(ErrorCode::InvalidArgument);
        }
        let pcrs = {
            let bank = self.bank();
            (0..MAX_PCRS)
                .filter(|&i| bank.locked[i])
                .map(|i| (i, bank.values[i].to_vec()))
                .collect()
        };
        let fields = DocumentFields {
            module_id: self.module_id.clone(),
            timestamp_ms: self.clock.now_ms(),
            pcrs,
            public_key: public_key.map(ByteBuf::into_vec),
            user_data: user_data.map(ByteBuf::into_vec),
            nonce: nonce.map(ByteBuf::into_vec),
        };
        match self.signer.sign(fields) {
            Ok(document) => Response::Attestation { document },
            Err(_) => Response::Error(ErrorCode::InternalError),
        }
    }
}

/// Encodes a response, replacing one that would not fit the client's buffer by
/// `BufferTooSmall`.
fn encode_response(response: &Response) -> Vec<u8> {
    match response.to_cbor() {
        Ok(bytes) if bytes.len() <= NSM_RESPONSE_MAX_SIZE => bytes,
        Ok(_) => encode_error(ErrorCode::BufferTooSmall),
        Err(_) => encode_error(ErrorCode::InternalError),
    }
}

/// `{"Error": "<code>"}`, built by hand so it cannot fail.
fn encode_error(code: ErrorCode) -> Vec<u8> {
    let name = code.as_str().as_bytes();
    let mut out = vec![0xa1, 0x65];
    out.extend_from_slice(b"Error");
    // Every code name is shorter than 24 bytes.
    out.push(0x60 | (u8::try_from(name.len()).unwrap_or(u8::MAX) & 0x1f));
    out.extend_from_slice(name);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_error_matches_serde() {
        for code in [
            ErrorCode::Success,
            ErrorCode::BufferTooSmall,
            ErrorCode::InternalError,
            ErrorCode::InvalidOperation,
        ] {
            assert_eq!(encode_error(code), Response::Error(code).to_cbor().unwrap());
        }
    }

    #[test]
    fn decode_request_classifies_errors() {
        assert_eq!(decode_request(&[0xff]), Err(ErrorCode::InvalidOperation));
        assert_eq!(
            decode_request(&[0x66, b'R', b'e', b'b', b'o', b'o', b't']),
            Err(ErrorCode::InvalidOperation)
        );
        // {"DescribePCR": {"index": "x"}}
        let mut bad = vec![0xa1, 0x6b];
        bad.extend_from_slice(b"DescribePCR");
        bad.extend_from_slice(&[0xa1, 0x65]);
        bad.extend_from_slice(b"index");
        bad.extend_from_slice(&[0x61, b'x']);
        assert_eq!(decode_request(&bad), Err(ErrorCode::InvalidArgument));
        assert_eq!(
            decode_request(&vec![0u8; NSM_REQUEST_MAX_SIZE + 1]),
            Err(ErrorCode::InputTooLarge)
        );
    }

    #[test]
    fn image_pcrs_from_slices() {
        let p = ImagePcrs::from_slices(&[1; 48], &[2; 48], &[3; 48], None).unwrap();
        assert_eq!(p.pcr2, [3; 48]);
        assert!(matches!(
            ImagePcrs::from_slices(&[1; 48], &[2; 32], &[3; 48], None),
            Err(NsmError::PcrLength { index: 1, len: 32 })
        ));
        assert!(ImagePcrs::from_slices(&[1; 48], &[2; 48], &[3; 48], Some(&[0; 47])).is_err());
    }

    #[test]
    fn oversized_response_becomes_buffer_too_small() {
        let huge = Response::GetRandom {
            random: vec![0; NSM_RESPONSE_MAX_SIZE],
        };
        assert_eq!(
            Response::from_cbor(&encode_response(&huge)).unwrap(),
            Response::Error(ErrorCode::BufferTooSmall)
        );
    }

    #[test]
    fn extend_is_sha384_of_concatenation() {
        let zero = [0u8; PCR_LEN];
        let got = extend(&zero, b"abc");
        let mut input = zero.to_vec();
        input.extend_from_slice(b"abc");
        assert_eq!(&got[..], digest::digest(&digest::SHA384, &input).as_ref());
    }
}
