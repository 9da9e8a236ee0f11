//! Unmodified Nitro programs against SDK programs, in one process enclave and one run: the
//! testapp's `vsock-bench` does the same work both ways, back to back, in
//! `CLOISTER_VSOCK_BENCH_REPS` repetitions (default 9) alternating which side goes first (see
//! `tests/apps/testapp/src/bench.rs`):
//! 1. throughput of one stream to the parent: plain `AF_VSOCK` (served by the supervisor) vs
//!    the SDK's `VsockStream` (the broker protocol), `CLOISTER_VSOCK_BENCH_MIB` MiB (default
//!    512);
//! 2. connect + first round trip (one byte there and back), `CLOISTER_VSOCK_BENCH_ROUNDS`
//!    connections (default 300);
//! 3. attestation requests per second: AWS's `/dev/nsm` ioctl vs the NSM channel the SDK's
//!    client uses, `CLOISTER_VSOCK_BENCH_NSM` requests (default 300).
//!
//! Prints each side's median and the median of the per-repetition ratios unmodified/SDK
//! (targets: throughput >= 0.95, connect time <= 2.0, NSM rate >= 0.9). Run:
//! `cargo bench -p cloister --bench vsock_unmodified` (root).

#[path = "../tests/enclave_support/mod.rs"]
mod enclave_support;

use enclave_support::{build_eif, Env};
use std::io::{Read, Write};
use std::time::Duration;

const PORT: u32 = 7700;

fn env_u32(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let mib = env_u32("CLOISTER_VSOCK_BENCH_MIB", 512);
    let rounds = env_u32("CLOISTER_VSOCK_BENCH_ROUNDS", 300);
    let nsm = env_u32("CLOISTER_VSOCK_BENCH_NSM", 300);
    let reps = env_u32("CLOISTER_VSOCK_BENCH_REPS", 9).max(1);
    let env = Env::new("0-1", 1024);
    // The parent's sink and echo servers.
    let sink = env.listen(PORT);
    std::thread::spawn(move || loop {
        let Ok((mut s, _)) = sink.accept() else {
            return;
        };
        let mut buf = vec![0u8; 256 * 1024];
        while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
        let _ = s.write_all(b"k");
    });
    let echo = env.listen(PORT + 1);
    std::thread::spawn(move || loop {
        let Ok((mut s, _)) = echo.accept() else {
            return;
        };
        let mut b = [0u8; 1];
        if s.read_exact(&mut b).is_ok() {
            let _ = s.write_all(&b);
        }
    });
    let report = env.listen(PORT + 2);
    let args = [
        "vsock-bench".to_owned(),
        PORT.to_string(),
        mib.to_string(),
        rounds.to_string(),
        nsm.to_string(),
        reps.to_string(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let eif = build_eif(env.dir.path(), "bench", &args);
    env.json(&[
        "run-enclave",
        "--eif-path",
        eif.to_str().unwrap(),
        "--cpu-count",
        "1",
        "--memory",
        "512",
        "--enclave-name",
        "bench",
    ]);
    report.set_nonblocking(false).unwrap();
    let (mut s, _) = report.accept().expect("report");
    s.set_read_timeout(Some(Duration::from_secs(600))).unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
    };
    let (raw_t, sdk_t) = (value("raw_mib_s"), value("sdk_mib_s"));
    let (raw_c, sdk_c) = (value("raw_connect_rtt_us"), value("sdk_connect_rtt_us"));
    let (dev_n, sdk_n) = (value("dev_nsm_req_s"), value("sdk_nsm_req_s"));
    println!("medians of {reps} repetitions (each side's, and of the per-repetition ratios):");
    println!("stream throughput: AF_VSOCK {raw_t:.1} MiB/s, SDK {sdk_t:.1} MiB/s");
    println!("connect + first round trip: AF_VSOCK {raw_c:.1} us, SDK {sdk_c:.1} us");
    println!("attestation: /dev/nsm {dev_n:.1} req/s, SDK {sdk_n:.1} req/s");
    println!(
        "ratios (unmodified/SDK): throughput {:.3} (>= 0.95), connect+rtt {:.3} (<= 2.0), \
         nsm {:.3} (>= 0.9)",
        value("ratio_throughput"),
        value("ratio_connect"),
        value("ratio_nsm"),
    );
    env.terminate_all();
}
