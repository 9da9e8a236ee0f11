//! Streaming measurement throughput against its baseline, in the same run.
//!
//! Builds a 1 GiB image once (8 MiB kernel, 16 MiB bootstrap ramdisk, the rest one customer
//! ramdisk, pseudo-random bytes) in a temporary directory, then alternates, for several rounds:
//! - measure: `EifReader::open` + `measure()` (CRC, PCR0, PCR1, PCR2 in one pass);
//! - baseline: read the same file with the same buffer size and hash it once with aws-lc-rs
//!   SHA-384.
//!
//! Prints each round and the median ratio measure/baseline (target: >= 0.9). The file is read
//! from the page cache after the first warm-up pass, so both sides measure hashing, not disk.
//! Run with `cargo bench -p cloister-eif --bench measure`; `EIF_BENCH_MIB` and
//! `EIF_BENCH_ROUNDS` override the image size and round count.

use aws_lc_rs::digest::{Context, SHA384};
use cloister_eif::measure::STREAM_BUFFER_SIZE;
use cloister_eif::{EifBuilder, EifReader, Metadata};
use std::io::Read;
use std::time::Instant;

/// Fast deterministic pseudo-random bytes (xorshift64*), so the image is not compressible or
/// sparse and building it does not dominate the run.
struct Noise {
    state: u64,
    left: u64,
}

impl Read for Noise {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = usize::try_from(self.left).map_or(buf.len(), |left| buf.len().min(left));
        for chunk in buf[..n].chunks_mut(8) {
            self.state ^= self.state >> 12;
            self.state ^= self.state << 25;
            self.state ^= self.state >> 27;
            let v = self.state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
        self.left -= n as u64;
        Ok(n)
    }
}

fn noise(seed: u64, len: u64) -> Noise {
    Noise {
        state: seed | 1,
        left: len,
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn baseline(path: &std::path::Path) -> (u64, f64) {
    let start = Instant::now();
    let mut f = std::fs::File::open(path).expect("open image");
    let mut buf = vec![0u8; STREAM_BUFFER_SIZE];
    let mut ctx = Context::new(&SHA384);
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf).expect("read image");
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
        total += n as u64;
    }
    std::hint::black_box(ctx.finish());
    (total, start.elapsed().as_secs_f64())
}

fn measure(path: &std::path::Path) -> f64 {
    let start = Instant::now();
    let mut r = EifReader::open(path).expect("open image");
    std::hint::black_box(r.measure().expect("measure"));
    start.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let mib = env_u64("EIF_BENCH_MIB", 1024).max(32);
    let rounds = env_u64("EIF_BENCH_ROUNDS", 5).max(1);
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("bench.eif");
    let kernel = 8u64 << 20;
    let boot = 16u64 << 20;
    let customer = (mib << 20) - kernel - boot;
    let t = Instant::now();
    let m = EifBuilder::new()
        .kernel_reader(noise(1, kernel))
        .cmdline("console=ttyS0 reboot=k panic=30 pci=off nomodules")
        .metadata(Metadata::new(
            "bench",
            "cloister",
            "bench",
            "2024-01-01T00:00:00Z",
        ))
        .ramdisk_reader(noise(2, boot))
        .ramdisk_reader(noise(3, customer))
        .write_to_path(&path)
        .expect("build image");
    let size = std::fs::metadata(&path).expect("stat").len();
    println!(
        "built {:.1} MiB image in {:.2} s (PCR0 {})",
        size as f64 / 1048576.0,
        t.elapsed().as_secs_f64(),
        &m.pcr0_hex()[..16]
    );
    // Warm the page cache and check that the measurer agrees with the builder.
    baseline(&path);
    assert_eq!(EifReader::open(&path).unwrap().measure().unwrap(), m);

    let mut ratios = Vec::new();
    let mut mt = Vec::new();
    let mut bt = Vec::new();
    for round in 0..rounds {
        // Alternate which side goes first to cancel drift.
        let (b, me) = if round % 2 == 0 {
            let (bytes, b) = baseline(&path);
            assert_eq!(bytes, size);
            (b, measure(&path))
        } else {
            let me = measure(&path);
            (baseline(&path).1, me)
        };
        let mib = size as f64 / 1048576.0;
        let (mt_r, bt_r) = (mib / me, mib / b);
        println!(
            "round {round}: measure {mt_r:8.1} MiB/s  baseline sha384 {bt_r:8.1} MiB/s  ratio {:.3}",
            mt_r / bt_r
        );
        mt.push(mt_r);
        bt.push(bt_r);
        ratios.push(mt_r / bt_r);
    }
    println!(
        "median over {rounds} rounds: measure {:.1} MiB/s, baseline {:.1} MiB/s, ratio {:.3} (target >= 0.9)",
        median(mt),
        median(bt),
        median(ratios)
    );
}
