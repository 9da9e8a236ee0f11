//! Parent <-> enclave stream throughput through a real broker, against a raw Unix socket pair
//! measured in the same run. Prints MiB/s and the ratio (target: >= 0.8).
//!
//! `cargo bench -p cloister-vsock --bench throughput` (env `BENCH_MIB` sets the volume).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cloister_vsock::{Broker, BrokerConfig, NsmService, VsockAddr, VsockListener, VsockStream};

struct NoNsm;
impl NsmService for NoNsm {
    fn handle(&self, _: &[u8]) -> Vec<u8> {
        Vec::new()
    }
}

const CHUNK: usize = 256 * 1024;

/// Sends `total` bytes from `w` to `r` on two threads; returns the elapsed time.
fn pump<W: Write + Send + 'static, R: Read + Send + 'static>(
    mut w: W,
    mut r: R,
    total: usize,
) -> Duration {
    let start = Instant::now();
    let writer = std::thread::spawn(move || {
        let buf = vec![0x5au8; CHUNK];
        let mut sent = 0;
        while sent < total {
            let n = CHUNK.min(total - sent);
            w.write_all(&buf[..n]).expect("write");
            sent += n;
        }
    });
    let mut buf = vec![0u8; CHUNK];
    let mut got = 0;
    while got < total {
        let n = r.read(&mut buf).expect("read");
        assert!(n > 0, "early EOF");
        got += n;
    }
    writer.join().expect("writer");
    start.elapsed()
}

fn best_of<F: FnMut() -> Duration>(runs: usize, mut f: F) -> Duration {
    (0..runs).map(|_| f()).min().unwrap_or_default()
}

fn mibps(total: usize, d: Duration) -> f64 {
    total as f64 / (1024.0 * 1024.0) / d.as_secs_f64()
}

fn main() {
    let mib: usize = std::env::var("BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let total = mib * 1024 * 1024;
    let runs = 3;

    let raw = best_of(runs, || {
        let (a, b) = UnixStream::pair().unwrap();
        pump(a, b, total)
    });

    let dir = tempfile::tempdir().unwrap();
    // A second baseline: a raw Unix connection through a listening socket (what the fabric's
    // passed sockets are).
    let raw_listener = std::os::unix::net::UnixListener::bind(dir.path().join("raw.sock")).unwrap();
    let raw_conn = best_of(runs, || {
        let a = UnixStream::connect(dir.path().join("raw.sock")).unwrap();
        let (b, _) = raw_listener.accept().unwrap();
        pump(a, b, total)
    });
    let broker = Broker::start(BrokerConfig::new(
        7,
        dir.path(),
        dir.path().join("enclave.sock"),
        Arc::new(NoNsm),
    ))
    .unwrap();
    let fabric = dir.path().join("vsock");

    let enclave_listener = VsockListener::bind_enclave(broker.enclave_socket(), 5000).unwrap();
    let to_enclave = best_of(runs, || {
        let host = VsockStream::connect_fabric(&fabric, VsockAddr::new(7, 5000)).unwrap();
        let (enc, _) = enclave_listener.accept().unwrap();
        pump(host, enc, total)
    });

    let host_listener = VsockListener::bind_fabric(&fabric, 6000).unwrap();
    let to_host = best_of(runs, || {
        let enc =
            VsockStream::connect_enclave(broker.enclave_socket(), VsockAddr::new(3, 6000)).unwrap();
        let (host, _) = host_listener.accept().unwrap();
        pump(enc, host, total)
    });

    let base = mibps(total, raw);
    let base_conn = mibps(total, raw_conn);
    let p2e = mibps(total, to_enclave);
    let e2p = mibps(total, to_host);
    println!("volume per run: {mib} MiB, best of {runs}");
    println!("raw unix socket pair : {base:>9.0} MiB/s");
    println!(
        "raw unix connection  : {base_conn:>9.0} MiB/s  ratio {:.2}",
        base_conn / base
    );
    println!(
        "parent -> enclave    : {p2e:>9.0} MiB/s  ratio {:.2}",
        p2e / base
    );
    println!(
        "enclave -> parent    : {e2p:>9.0} MiB/s  ratio {:.2}",
        e2p / base
    );
}
