//! `vsock-bench PORT MIB ROUNDS NSM_COUNT [REPS]`: the same work done the way an unmodified Nitro
//! program does it (plain `AF_VSOCK` sockets through libc, AWS's `/dev/nsm` ioctl) and the way
//! a program built against Cloister's SDK does it (the broker protocol on `/dev/vsock.sock`,
//! the NSM channel `(0, 1)` with length-prefixed frames, as `cloister_sdk::nsm::NsmClient`
//! does over the fabric), alternating, in one enclave. The parent serves PORT (a sink: it reads
//! to EOF and answers one byte) and PORT + 1 (an echo of one byte per connection); the results
//! go to PORT + 2 as `name value` lines: each side's median over REPS repetitions (default 9)
//! and the median of the per-repetition ratios.

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
    addr.svm_family = crate::family(libc::AF_VSOCK);
    addr.svm_cid = PARENT_CID;
    addr.svm_port = port;
    // SAFETY: `addr` is a valid sockaddr_vm of the length passed.
    let r = unsafe {
        libc::connect(
            fd,
            (&addr as *const libc::sockaddr_vm).cast(),
            crate::socklen_of::<libc::sockaddr_vm>(),
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

/// The median of `v` (NaN when empty).
fn median(v: &[f64]) -> f64 {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

/// One measurement of each kind, both ways, back to back: (unmodified, SDK) pairs.
#[derive(Default)]
struct Pairs {
    throughput: Vec<(f64, f64)>,
    connect: Vec<(f64, f64)>,
    nsm: Vec<(f64, f64)>,
}

/// Measures `raw` and `sdk` one after the other, the order given by `sdk_first`.
fn pair(sdk_first: bool, raw: impl FnOnce() -> f64, sdk: impl FnOnce() -> f64) -> (f64, f64) {
    if sdk_first {
        let s = sdk();
        (raw(), s)
    } else {
        let r = raw();
        (r, sdk())
    }
}

/// Runs the benchmark and reports to the parent: for each kind, the median of each side and
/// the median of the per-repetition ratios (each ratio taken between two measurements made
/// back to back, so that load from elsewhere weighs on both alike).
pub fn run(port: u32, mib: u32, rounds: u32, nsm_count: u32, reps: u32) -> i32 {
    let mib = mib.max(1) as usize;
    let mut pairs = Pairs::default();
    let raw_throughput = || match raw_connect(port) {
        Ok(s) => {
            let fd = std::os::fd::AsRawFd::as_raw_fd(&s);
            throughput(s, mib, |_| shutdown_write(fd))
        }
        Err(_) => 0.0,
    };
    let sdk_throughput = || match sdk_connect(port) {
        Ok(s) => {
            let fd = std::os::fd::AsRawFd::as_raw_fd(&s);
            throughput(s, mib, |_| shutdown_write(fd))
        }
        Err(_) => 0.0,
    };
    // Alternating the order, so that neither side always runs first.
    for i in 0..reps.max(1) {
        let sdk_first = i % 2 == 1;
        pairs
            .throughput
            .push(pair(sdk_first, raw_throughput, sdk_throughput));
        pairs.connect.push(pair(
            sdk_first,
            || round_trips(rounds, || raw_connect(port + 1)),
            || round_trips(rounds, || sdk_connect(port + 1)),
        ));
        pairs.nsm.push(pair(
            sdk_first,
            || nsm_device(nsm_count),
            || nsm_channel(nsm_count),
        ));
        std::thread::sleep(Duration::from_millis(10));
    }
    let side = |v: &[(f64, f64)], sdk: bool| -> f64 {
        median(
            &v.iter()
                .map(|p| if sdk { p.1 } else { p.0 })
                .collect::<Vec<_>>(),
        )
    };
    let ratio =
        |v: &[(f64, f64)]| -> f64 { median(&v.iter().map(|p| p.0 / p.1).collect::<Vec<_>>()) };
    let report = format!(
        "raw_mib_s {:.1}\nsdk_mib_s {:.1}\nraw_connect_rtt_us {:.1}\nsdk_connect_rtt_us {:.1}\n\
         dev_nsm_req_s {:.1}\nsdk_nsm_req_s {:.1}\nratio_throughput {:.3}\nratio_connect {:.3}\n\
         ratio_nsm {:.3}\nrepetitions {}\n",
        side(&pairs.throughput, false),
        side(&pairs.throughput, true),
        side(&pairs.connect, false),
        side(&pairs.connect, true),
        side(&pairs.nsm, false),
        side(&pairs.nsm, true),
        ratio(&pairs.throughput),
        ratio(&pairs.connect),
        ratio(&pairs.nsm),
        reps.max(1),
    );
    print!("{report}");
    match sdk_connect(port + 2) {
        Ok(mut s) => i32::from(s.write_all(report.as_bytes()).is_err()),
        Err(_) => 1,
    }
}
