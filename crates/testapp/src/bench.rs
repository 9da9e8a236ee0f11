//! `vsock-bench PORT MIB ROUNDS NSM_COUNT`: the same work done the way an unmodified Nitro
//! program does it (plain `AF_VSOCK` sockets through libc, AWS's `/dev/nsm` ioctl) and the way
//! a program built against Cloister's SDK does it (the broker protocol on `/dev/vsock.sock`,
//! the NSM channel `(0, 1)` with length-prefixed frames, as `cloister_sdk::nsm::NsmClient`
//! does over the fabric), alternating, in one enclave. The parent serves PORT (a sink: it reads
//! to EOF and answers one byte) and PORT + 1 (an echo of one byte per connection); the results
//! go to PORT + 2 as `name value` lines.

use cloister_vsock::nsm_frame::{read_frame, write_frame, NSM_FRAME_HARD_CAP};
use cloister_vsock::{VsockAddr, VsockStream, PARENT_CID};
use std::io::{Read, Write};
use std::os::fd::FromRawFd;
use std::time::{Duration, Instant};

/// CBOR of `{"Attestation": {"user_data": null, "nonce": null, "public_key": null}}`.
const ATTESTATION_REQUEST: &[u8] =
    b"\xa1\x6bAttestation\xa3\x69user_data\xf6\x65nonce\xf6\x6apublic_key\xf6";

const NSM_IOCTL_RAW: libc::c_ulong = 0xC020_0A00;

fn raw_connect(port: u32) -> std::io::Result<std::fs::File> {
    // SAFETY: socket takes integers.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor owned by nothing else.
    let file = unsafe { std::fs::File::from_raw_fd(fd) };
    // SAFETY: an all-zero sockaddr_vm is valid; fields are set below.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_cid = PARENT_CID;
    addr.svm_port = port;
    // SAFETY: `addr` is a valid sockaddr_vm of the length passed.
    let r = unsafe {
        libc::connect(
            fd,
            (&addr as *const libc::sockaddr_vm).cast(),
            std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(file)
}

fn sdk_connect(port: u32) -> std::io::Result<VsockStream> {
    VsockStream::connect(VsockAddr::new(PARENT_CID, port)).map_err(std::io::Error::from)
}

/// Sends `mib` MiB and waits for the sink's one-byte answer; MiB/s.
fn throughput(mut s: impl Read + Write, mib: usize, shut: impl FnOnce(&mut dyn Write)) -> f64 {
    let chunk = vec![0x5au8; 256 * 1024];
    let start = Instant::now();
    for _ in 0..mib * 4 {
        if s.write_all(&chunk).is_err() {
            return 0.0;
        }
    }
    shut(&mut s);
    let mut ack = [0u8; 1];
    if s.read_exact(&mut ack).is_err() {
        return 0.0;
    }
    mib as f64 / start.elapsed().as_secs_f64()
}

fn shutdown_write(fd: i32) {
    // SAFETY: integer arguments only.
    unsafe { libc::shutdown(fd, libc::SHUT_WR) };
}

/// Connect, one byte there and back, close: microseconds per round.
fn round_trips<S: Read + Write>(
    rounds: u32,
    mut connect: impl FnMut() -> std::io::Result<S>,
) -> f64 {
    let start = Instant::now();
    for _ in 0..rounds {
        let Ok(mut s) = connect() else {
            return f64::INFINITY;
        };
        let mut b = [7u8; 1];
        if s.write_all(&b).is_err() || s.read_exact(&mut b).is_err() {
            return f64::INFINITY;
        }
    }
    start.elapsed().as_secs_f64() * 1e6 / f64::from(rounds.max(1))
}

#[repr(C)]
struct NsmRaw {
    request: libc::iovec,
    response: libc::iovec,
}

/// Attestation requests per second through `/dev/nsm`'s ioctl.
fn nsm_device(count: u32) -> f64 {
    let Ok(dev) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/nsm")
    else {
        return 0.0;
    };
    let fd = std::os::fd::AsRawFd::as_raw_fd(&dev);
    let mut resp = vec![0u8; 16 * 1024];
    let start = Instant::now();
    for _ in 0..count {
        let mut raw = NsmRaw {
            request: libc::iovec {
                iov_base: ATTESTATION_REQUEST.as_ptr().cast_mut().cast(),
                iov_len: ATTESTATION_REQUEST.len(),
            },
            response: libc::iovec {
                iov_base: resp.as_mut_ptr().cast(),
                iov_len: resp.len(),
            },
        };
        // SAFETY: `raw` points at the request and the response buffer, both live.
        let r = unsafe { libc::ioctl(fd, NSM_IOCTL_RAW as _, &mut raw as *mut NsmRaw) };
        if r != 0 || raw.response.iov_len < 100 || resp[0] != 0xa1 {
            return 0.0;
        }
    }
    f64::from(count) / start.elapsed().as_secs_f64()
}

/// Attestation requests per second over the NSM channel (what the SDK's client does).
fn nsm_channel(count: u32) -> f64 {
    let Ok(mut chan) = VsockStream::connect(VsockAddr::new(0, 1)) else {
        return 0.0;
    };
    let start = Instant::now();
    for _ in 0..count {
        if write_frame(&mut chan, ATTESTATION_REQUEST).is_err() {
            return 0.0;
        }
        match read_frame(&mut chan, NSM_FRAME_HARD_CAP) {
            Ok(Some(r)) if r.len() >= 100 && r[0] == 0xa1 => {}
            _ => return 0.0,
        }
    }
    f64::from(count) / start.elapsed().as_secs_f64()
}

fn best(v: &[f64]) -> f64 {
    v.iter().copied().fold(0.0, f64::max)
}

fn least(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

/// Runs the benchmark and reports to the parent.
pub fn run(port: u32, mib: u32, rounds: u32, nsm_count: u32) -> i32 {
    let mib = mib.max(1) as usize;
    let (mut raw_t, mut sdk_t, mut raw_c, mut sdk_c, mut dev_n, mut sdk_n) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    // Alternating, and in either order, so that neither side always runs first.
    for i in 0..6 {
        for side in [i % 2, 1 - i % 2] {
            if side == 0 {
                if let Ok(s) = raw_connect(port) {
                    let fd = std::os::fd::AsRawFd::as_raw_fd(&s);
                    raw_t.push(throughput(s, mib, |_| shutdown_write(fd)));
                }
                raw_c.push(round_trips(rounds, || raw_connect(port + 1)));
                dev_n.push(nsm_device(nsm_count));
            } else {
                if let Ok(s) = sdk_connect(port) {
                    let fd = std::os::fd::AsRawFd::as_raw_fd(&s);
                    sdk_t.push(throughput(s, mib, |_| shutdown_write(fd)));
                }
                sdk_c.push(round_trips(rounds, || sdk_connect(port + 1)));
                sdk_n.push(nsm_channel(nsm_count));
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let report = format!(
        "raw_mib_s {:.1}\nsdk_mib_s {:.1}\nraw_connect_rtt_us {:.1}\nsdk_connect_rtt_us {:.1}\n\
         dev_nsm_req_s {:.1}\nsdk_nsm_req_s {:.1}\n",
        best(&raw_t),
        best(&sdk_t),
        least(&raw_c),
        least(&sdk_c),
        best(&dev_n),
        best(&sdk_n),
    );
    print!("{report}");
    match sdk_connect(port + 2) {
        Ok(mut s) => i32::from(s.write_all(report.as_bytes()).is_err()),
        Err(_) => 1,
    }
}
