//! An enclave program written for AWS Nitro Enclaves, with nothing of Cloister in it: it opens
//! `/dev/nsm` with AWS's NSM library (`aws-nitro-enclaves-nsm-api`), asks for an attestation
//! document with the nonce and user data given on its command line, and sends it to the
//! parent over a plain AF_VSOCK socket.
//!
//! Usage: `nsm-hostile PORT NONCE_HEX USER_DATA`
//!
//! Before attesting it makes AWS's ioctl itself with hostile arguments (bad pointers, a
//! request over the 4096-byte limit, an absurd length) and reports each errno: a driver must
//! refuse them, never hang or crash.
//!
//! To the parent at (3, PORT) it writes one line, `checks: <name>=<errno> ...`, then the
//! document as a 4-byte big-endian length and its bytes.

use std::io::{self, Write};
use std::os::fd::{FromRawFd, OwnedFd};

use aws_nitro_enclaves_nsm_api::api::{Request, Response};
use aws_nitro_enclaves_nsm_api::driver::{nsm_exit, nsm_init, nsm_process_request};
use serde_bytes::ByteBuf;

/// AWS's ioctl: `_IOWR(0x0A, 0, struct { struct iovec request; struct iovec response; })`.
const NSM_IOCTL: libc::c_ulong = 0xC020_0A00;
const PARENT_CID: u32 = 3;

#[repr(C)]
struct Message {
    request: libc::iovec,
    response: libc::iovec,
}

/// One raw ioctl; the errno, or 0 on success.
fn raw_ioctl(fd: i32, msg: *mut Message) -> i32 {
    // SAFETY: the pointers may be deliberately bad: the driver must check them.
    let rc = unsafe { libc::ioctl(fd, NSM_IOCTL as _, msg) };
    if rc < 0 {
        io::Error::last_os_error().raw_os_error().unwrap_or(-1)
    } else {
        0
    }
}

fn hostile_checks(fd: i32) -> String {
    let request = b"not cbor".to_vec();
    let big = vec![0u8; 4097];
    let mut response = vec![0u8; 256];
    let iov = |p: *const u8, len: usize| libc::iovec {
        iov_base: p as *mut libc::c_void,
        iov_len: len,
    };
    let mut out = Vec::new();
    // The message itself unreadable.
    out.push(("bad_message", raw_ioctl(fd, 16 as *mut Message)));
    // A request over the limit, and an absurd length.
    let mut m = Message {
        request: iov(big.as_ptr(), big.len()),
        response: iov(response.as_mut_ptr(), response.len()),
    };
    out.push(("too_large", raw_ioctl(fd, &mut m)));
    m.request.iov_len = usize::MAX;
    out.push(("huge_length", raw_ioctl(fd, &mut m)));
    // An unreadable request, an unwritable response.
    m.request = iov(16 as *const u8, 64);
    out.push(("bad_request", raw_ioctl(fd, &mut m)));
    m.request = iov(request.as_ptr(), request.len());
    m.response = iov(16 as *const u8, 256);
    out.push(("bad_response", raw_ioctl(fd, &mut m)));
    out.iter()
        .map(|(name, errno)| format!("{name}={errno}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .filter_map(|i| u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok())
        .collect()
}

fn connect_parent(port: u32) -> io::Result<std::fs::File> {
    // SAFETY: plain socket call.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nothing else owns.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: an all-zero sockaddr_vm is valid; the fields are set below.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_cid = PARENT_CID;
    addr.svm_port = port;
    // SAFETY: `addr` is a valid sockaddr_vm of the stated length.
    let rc = unsafe {
        libc::connect(
            fd,
            std::ptr::from_ref(&addr).cast(),
            std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(std::fs::File::from(owned))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(port), Some(nonce), Some(user_data)) = (
        args.get(1).and_then(|p| p.parse::<u32>().ok()),
        args.get(2).map(|n| hex(n)),
        args.get(3),
    ) else {
        eprintln!("usage: nsm-hostile PORT NONCE_HEX USER_DATA");
        std::process::exit(2);
    };
    let fd = nsm_init();
    if fd < 0 {
        eprintln!("nsm-hostile: cannot open /dev/nsm");
        std::process::exit(1);
    }
    let checks = hostile_checks(fd);
    println!("nsm-hostile: {checks}");
    let request = Request::Attestation {
        user_data: Some(ByteBuf::from(user_data.as_bytes().to_vec())),
        nonce: Some(ByteBuf::from(nonce)),
        public_key: None,
    };
    let document = match nsm_process_request(fd, request) {
        Response::Attestation { document } => document,
        other => {
            eprintln!("nsm-hostile: the NSM answered {other:?}");
            std::process::exit(1);
        }
    };
    nsm_exit(fd);
    let mut parent = match connect_parent(port) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("nsm-hostile: connecting to the parent: {e}");
            std::process::exit(1);
        }
    };
    let mut out = format!("checks: {checks}\n").into_bytes();
    out.extend_from_slice(&(document.len() as u32).to_be_bytes());
    out.extend_from_slice(&document);
    if let Err(e) = parent.write_all(&out) {
        eprintln!("nsm-hostile: sending the document: {e}");
        std::process::exit(1);
    }
    println!("nsm-hostile: sent a document of {} bytes", document.len());
}
