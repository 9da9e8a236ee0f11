//! The NSM client, mirroring AWS's `aws-nitro-enclaves-nsm-api` driver functions
//! (`nsm_init`, `nsm_process_request`, `nsm_exit`) over two transports:
//! - `/dev/nsm` when it exists (AWS, VM enclaves): ioctl `0xC0200A00` with a request and a
//!   response buffer;
//! - otherwise the vsock fabric's NSM channel (cid 0, port 1): u32 big-endian length + CBOR
//!   each way.
//!
//! [`NsmClient`] adds typed calls on top.

use std::fs::OpenOptions;
use std::io;
use std::mem::ManuallyDrop;
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub use cloister_nsm_api::{Digest, ErrorCode, Request, Response};
use cloister_nsm_api::{NSM_REQUEST_MAX_SIZE, NSM_RESPONSE_MAX_SIZE};
use cloister_vsock::nsm_frame::{read_frame, write_frame, NSM_FRAME_HARD_CAP};
use cloister_vsock::{Transport, VsockAddr, VsockStream, NSM_PORT, VMADDR_CID_HYPERVISOR};
use serde_bytes::ByteBuf;

/// The NSM device on AWS and in VM enclaves.
pub const NSM_DEVICE: &str = "/dev/nsm";
/// `_IOWR(0x0A, 0, struct { iovec request; iovec response; })`.
pub const NSM_IOCTL_REQUEST: libc::c_ulong = 0xC020_0A00;

/// Errors of the NSM client.
#[derive(Debug, thiserror::Error)]
pub enum NsmError {
    /// Neither `/dev/nsm` nor the fabric's NSM channel could be opened.
    #[error("opening the NSM")]
    Open(#[source] io::Error),
    /// The request does not fit the NSM's request limit.
    #[error("request of {0} bytes exceeds the NSM limit of {NSM_REQUEST_MAX_SIZE} bytes")]
    RequestTooLarge(usize),
    /// The request could not be encoded.
    #[error("encoding the request")]
    Encode(#[source] cloister_nsm_api::EncodeError),
    /// The response could not be decoded.
    #[error("decoding the response")]
    Decode(#[source] cloister_nsm_api::DecodeError),
    /// The transport failed.
    #[error("talking to the NSM")]
    Transport(#[source] io::Error),
    /// The NSM answered with an error code.
    #[error("the NSM answered {0}")]
    Nsm(ErrorCode),
    /// The NSM answered with a response of the wrong kind.
    #[error("unexpected NSM response to {0}")]
    UnexpectedResponse(&'static str),
}

impl NsmError {
    /// The error code `nsm_process_request` reports for this failure.
    pub fn code(&self) -> ErrorCode {
        match self {
            NsmError::Nsm(code) => *code,
            NsmError::RequestTooLarge(_) => ErrorCode::InputTooLarge,
            NsmError::Encode(_) => ErrorCode::InvalidArgument,
            NsmError::Decode(_) | NsmError::UnexpectedResponse(_) => ErrorCode::InvalidResponse,
            NsmError::Open(_) | NsmError::Transport(_) => ErrorCode::InternalError,
        }
    }
}

/// Serialises exchanges on fabric channels (a stream carries one exchange at a time; the
/// ioctl needs no lock).
static FABRIC_LOCK: Mutex<()> = Mutex::new(());

/// Opens the NSM: `/dev/nsm` if present, else the fabric channel.
fn open_default() -> Result<OwnedFd, NsmError> {
    if Path::new(NSM_DEVICE).exists() {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(NSM_DEVICE)
            .map_err(NsmError::Open)?;
        return Ok(file.into());
    }
    open_fabric(&Transport::detect())
}

fn open_fabric(transport: &Transport) -> Result<OwnedFd, NsmError> {
    let stream =
        VsockStream::connect_with(transport, VsockAddr::new(VMADDR_CID_HYPERVISOR, NSM_PORT))
            .map_err(|e| NsmError::Open(e.into()))?;
    Ok(stream.into())
}

#[repr(C)]
struct NsmMessage {
    request: libc::iovec,
    response: libc::iovec,
}

fn exchange_ioctl(fd: RawFd, request: &[u8]) -> Result<Vec<u8>, NsmError> {
    let mut response = vec![0u8; NSM_RESPONSE_MAX_SIZE];
    let mut msg = NsmMessage {
        request: libc::iovec {
            iov_base: request.as_ptr().cast_mut().cast(),
            iov_len: request.len(),
        },
        response: libc::iovec {
            iov_base: response.as_mut_ptr().cast(),
            iov_len: response.len(),
        },
    };
    // SAFETY: `msg` points at `request` (read by the driver) and `response` (written by it, at
    // most its length); both outlive the call. The driver writes back the response length.
    let rc = unsafe { libc::ioctl(fd, NSM_IOCTL_REQUEST as _, std::ptr::from_mut(&mut msg)) };
    if rc < 0 {
        return Err(NsmError::Transport(io::Error::last_os_error()));
    }
    let len = msg.response.iov_len.min(NSM_RESPONSE_MAX_SIZE);
    response.truncate(len);
    Ok(response)
}

fn exchange_stream(fd: RawFd, request: &[u8]) -> Result<Vec<u8>, NsmError> {
    let _guard = match FABRIC_LOCK.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    };
    // SAFETY: `fd` is an open socket owned by the caller (from `nsm_init`); ManuallyDrop keeps
    // this temporary wrapper from closing it.
    let stream = ManuallyDrop::new(unsafe { UnixStream::from_raw_fd(fd) });
    write_frame(&mut &*stream, request).map_err(|e| NsmError::Transport(io::Error::other(e)))?;
    match read_frame(&mut &*stream, NSM_FRAME_HARD_CAP) {
        Ok(Some(r)) => Ok(r),
        Ok(None) => Err(NsmError::Transport(io::ErrorKind::UnexpectedEof.into())),
        Err(e) => Err(NsmError::Transport(io::Error::other(e))),
    }
}

/// One request/response exchange on a descriptor from [`nsm_init`].
fn transact(fd: RawFd, request: &Request) -> Result<Response, NsmError> {
    let bytes = request.to_cbor().map_err(NsmError::Encode)?;
    if bytes.len() > NSM_REQUEST_MAX_SIZE {
        return Err(NsmError::RequestTooLarge(bytes.len()));
    }
    // SAFETY: fstat on a caller-provided descriptor into a zeroed stat buffer.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above; `st` is a valid, writable stat structure.
    if unsafe { libc::fstat(fd, &mut st) } < 0 {
        return Err(NsmError::Transport(io::Error::last_os_error()));
    }
    let raw = if st.st_mode & libc::S_IFMT == libc::S_IFCHR {
        exchange_ioctl(fd, &bytes)?
    } else {
        exchange_stream(fd, &bytes)?
    };
    Response::from_cbor(&raw).map_err(NsmError::Decode)
}

/// Opens the NSM; returns a descriptor, or -1 on failure (AWS's driver API).
pub fn nsm_init() -> i32 {
    match open_default() {
        Ok(fd) => fd.into_raw_fd(),
        Err(_) => -1,
    }
}

/// Sends `request` and returns the NSM's response; failures are `Response::Error` (AWS's
/// driver API).
pub fn nsm_process_request(fd: i32, request: Request) -> Response {
    if fd < 0 {
        return Response::Error(ErrorCode::InvalidArgument);
    }
    match transact(fd, &request) {
        Ok(r) => r,
        Err(e) => Response::Error(e.code()),
    }
}

/// Closes a descriptor from [`nsm_init`].
pub fn nsm_exit(fd: i32) {
    if fd >= 0 {
        // SAFETY: per the API contract `fd` came from `nsm_init` and is not used afterwards;
        // taking ownership closes it exactly once.
        drop(unsafe { OwnedFd::from_raw_fd(fd) });
    }
}

/// A PCR's value and lock state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcrValue {
    /// Locked (no longer extendable).
    pub locked: bool,
    /// The value.
    pub data: Vec<u8>,
}

/// What `DescribeNSM` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NsmDescription {
    /// (major, minor, patch).
    pub version: (u16, u16, u16),
    /// The module id.
    pub module_id: String,
    /// Number of PCRs.
    pub max_pcrs: u16,
    /// Locked PCR indices.
    pub locked_pcrs: Vec<u16>,
    /// PCR digest.
    pub digest: Digest,
}

/// A typed NSM client. Closes its descriptor on drop.
#[derive(Debug)]
pub struct NsmClient {
    fd: OwnedFd,
}

fn opt(bytes: Option<&[u8]>) -> Option<ByteBuf> {
    bytes.map(|b| ByteBuf::from(b.to_vec()))
}

impl NsmClient {
    /// Opens the NSM (`/dev/nsm`, else the fabric channel).
    pub fn open() -> Result<Self, NsmError> {
        Ok(Self {
            fd: open_default()?,
        })
    }

    /// Opens the fabric NSM channel through a broker socket (for tests and tools).
    pub fn open_enclave_socket(socket: impl Into<PathBuf>) -> Result<Self, NsmError> {
        Ok(Self {
            fd: open_fabric(&Transport::Enclave(socket.into()))?,
        })
    }

    /// One raw exchange; NSM error codes become [`NsmError::Nsm`].
    pub fn request(&self, request: &Request) -> Result<Response, NsmError> {
        use std::os::fd::AsRawFd;
        match transact(self.fd.as_raw_fd(), request)? {
            Response::Error(code) => Err(NsmError::Nsm(code)),
            r => Ok(r),
        }
    }

    /// `DescribeNSM`.
    pub fn describe_nsm(&self) -> Result<NsmDescription, NsmError> {
        match self.request(&Request::DescribeNSM)? {
            Response::DescribeNSM {
                version_major,
                version_minor,
                version_patch,
                module_id,
                max_pcrs,
                locked_pcrs,
                digest,
            } => Ok(NsmDescription {
                version: (version_major, version_minor, version_patch),
                module_id,
                max_pcrs,
                locked_pcrs: locked_pcrs.into_iter().collect(),
                digest,
            }),
            _ => Err(NsmError::UnexpectedResponse("DescribeNSM")),
        }
    }

    /// `DescribePCR`.
    pub fn describe_pcr(&self, index: u16) -> Result<PcrValue, NsmError> {
        match self.request(&Request::DescribePCR { index })? {
            Response::DescribePCR { lock, data } => Ok(PcrValue { locked: lock, data }),
            _ => Err(NsmError::UnexpectedResponse("DescribePCR")),
        }
    }

    /// `ExtendPCR`; returns the new value.
    pub fn extend_pcr(&self, index: u16, data: &[u8]) -> Result<Vec<u8>, NsmError> {
        match self.request(&Request::ExtendPCR {
            index,
            data: data.to_vec(),
        })? {
            Response::ExtendPCR { data } => Ok(data),
            _ => Err(NsmError::UnexpectedResponse("ExtendPCR")),
        }
    }

    /// `LockPCR`.
    pub fn lock_pcr(&self, index: u16) -> Result<(), NsmError> {
        match self.request(&Request::LockPCR { index })? {
            Response::LockPCR => Ok(()),
            _ => Err(NsmError::UnexpectedResponse("LockPCR")),
        }
    }

    /// `LockPCRs` (locks `[0, range)`).
    pub fn lock_pcrs(&self, range: u16) -> Result<(), NsmError> {
        match self.request(&Request::LockPCRs { range })? {
            Response::LockPCRs => Ok(()),
            _ => Err(NsmError::UnexpectedResponse("LockPCRs")),
        }
    }

    /// `GetRandom`.
    pub fn get_random(&self) -> Result<Vec<u8>, NsmError> {
        match self.request(&Request::GetRandom)? {
            Response::GetRandom { random } => Ok(random),
            _ => Err(NsmError::UnexpectedResponse("GetRandom")),
        }
    }

    /// `Attestation`: a signed attestation document (COSE_Sign1 bytes).
    pub fn attestation(
        &self,
        user_data: Option<&[u8]>,
        nonce: Option<&[u8]>,
        public_key: Option<&[u8]>,
    ) -> Result<Vec<u8>, NsmError> {
        match self.request(&Request::Attestation {
            user_data: opt(user_data),
            nonce: opt(nonce),
            public_key: opt(public_key),
        })? {
            Response::Attestation { document } => Ok(document),
            _ => Err(NsmError::UnexpectedResponse("Attestation")),
        }
    }

    /// Same as [`NsmClient::attestation`] (the name the runtime design uses).
    pub fn attest(
        &self,
        user_data: Option<&[u8]>,
        nonce: Option<&[u8]>,
        public_key: Option<&[u8]>,
    ) -> Result<Vec<u8>, NsmError> {
        self.attestation(user_data, nonce, public_key)
    }
}

/// True when `path` is a character device (as `/dev/nsm` is).
pub fn is_char_device(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.file_type().is_char_device())
}
