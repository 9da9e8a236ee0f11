//! usage: nsm-attest PORT NONCE_HEX [COUNT]
//!
//! Gets an attestation document with the nonce from /dev/nsm through AWS's
//! `aws-nitro-enclaves-nsm-api` driver and writes it to the parent (cid 3) on PORT over an
//! AF_VSOCK stream. With COUNT, asks COUNT times first and writes the rate (requests per
//! second) on a line before the document.

use aws_nitro_enclaves_nsm_api::api::{Request, Response};
use aws_nitro_enclaves_nsm_api::driver::{nsm_exit, nsm_init, nsm_process_request};
use std::io::Write;
use std::os::fd::FromRawFd;

fn hex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .filter_map(|i| u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok())
        .collect()
}

fn attest(fd: i32, nonce: &[u8]) -> Vec<u8> {
    let req = Request::Attestation {
        user_data: Some(serde_bytes::ByteBuf::from(b"unmodified nitro app".to_vec())),
        nonce: Some(serde_bytes::ByteBuf::from(nonce.to_vec())),
        public_key: None,
    };
    match nsm_process_request(fd, req) {
        Response::Attestation { document } => document,
        other => {
            eprintln!("unexpected NSM response: {other:?}");
            std::process::exit(1);
        }
    }
}

fn connect_parent(port: u32) -> std::fs::File {
    // SAFETY: socket takes integers.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    // SAFETY: an all-zero sockaddr_vm is valid; fields are set below.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_cid = 3;
    addr.svm_port = port;
    // SAFETY: `addr` is a valid sockaddr_vm of the length passed.
    let r = unsafe {
        libc::connect(
            fd,
            (&addr as *const libc::sockaddr_vm).cast(),
            std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
        )
    };
    assert!(r == 0, "connect: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` is a new descriptor owned by nothing else.
    unsafe { std::fs::File::from_raw_fd(fd) }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let port: u32 = args.get(1).and_then(|p| p.parse().ok()).expect("PORT");
    let nonce = hex(args.get(2).expect("NONCE_HEX"));
    let count: Option<u32> = args.get(3).and_then(|c| c.parse().ok());
    let fd = nsm_init();
    assert!(fd >= 0, "nsm_init failed");
    let mut out = connect_parent(port);
    if let Some(count) = count {
        let start = std::time::Instant::now();
        for _ in 0..count {
            attest(fd, &nonce);
        }
        let rate = f64::from(count) / start.elapsed().as_secs_f64();
        writeln!(out, "{rate:.1}").expect("write rate");
    }
    let document = attest(fd, &nonce);
    out.write_all(&document).expect("write document");
    nsm_exit(fd);
}
