//! Process vs. VM isolation through the real `cloister` binary, in one run:
//! 1. boot to heartbeat: wall time of `run-enclave` (it returns once init's heartbeat arrived)
//!    for the same VM-capable EIF with `--isolation process` and `--isolation vm`, alternating,
//!    median of N (`CLOISTER_ISOLATION_BENCH_BOOTS`, default 5);
//! 2. parent <-> enclave vsock throughput: the parent sends `CLOISTER_ISOLATION_BENCH_MIB`
//!    (default 64) MiB to the enclave's echo server over the host fabric and reads it back, so
//!    every byte crosses the boundary both ways.
//!
//! Prints the ratios vm/process. The VM runs under the accelerator the host offers (TCG where
//! /dev/kvm cannot run a normal guest). Run: `cargo bench -p cloister --bench isolation` (root).

#[path = "../tests/enclave_support/mod.rs"]
mod enclave_support;
#[path = "../tests/vm_support/mod.rs"]
mod vm_support;

use enclave_support::Env;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Runs the enclave; returns run-enclave's JSON and its wall time.
fn run(env: &Env, eif: &std::path::Path, isolation: &str) -> (serde_json::Value, Duration) {
    let t0 = Instant::now();
    let out = env
        .cmd()
        .env("CLOISTER_BOOT_TIMEOUT_MS", "300000")
        .args(["run-enclave", "--eif-path"])
        .arg(eif)
        .args([
            "--cpu-count",
            "1",
            "--memory",
            "256",
            "--isolation",
            isolation,
        ])
        .output()
        .expect("cloister run-enclave");
    let t = t0.elapsed();
    assert!(
        out.status.success(),
        "run-enclave --isolation {isolation}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (serde_json::from_slice(&out.stdout).unwrap(), t)
}

fn terminate(env: &Env, id: &str) {
    let out = env.cli(&["terminate-enclave", "--enclave-id", id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// MiB/s of an echo round trip of `bytes` through the enclave's echo server.
fn echo_throughput(env: &Env, cid: u32, bytes: usize) -> f64 {
    let s = env.connect_retry(cid, 5000);
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let mut r = s.try_clone().unwrap();
    // Warm up the path (first connection, page faults) before timing.
    let mut w = s;
    w.write_all(&[1u8; 4096]).unwrap();
    let mut warm = [0u8; 4096];
    r.read_exact(&mut warm).unwrap();
    let t0 = Instant::now();
    let writer = std::thread::spawn(move || {
        let chunk = vec![0xA5u8; 256 * 1024];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(chunk.len());
            w.write_all(&chunk[..n]).unwrap();
            left -= n;
        }
        w
    });
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0;
    while got < bytes {
        let n = r.read(&mut buf).unwrap();
        assert!(n > 0, "echo ended early");
        got += n;
    }
    let secs = t0.elapsed().as_secs_f64();
    drop(writer.join());
    bytes as f64 / secs / (1024.0 * 1024.0)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let Some(kit) = vm_support::VmKit::get() else {
        return;
    };
    let boots = env_usize("CLOISTER_ISOLATION_BENCH_BOOTS", 5).max(1);
    let mib = env_usize("CLOISTER_ISOLATION_BENCH_MIB", 64).max(1);
    let env = Env::new("0-1", 2048);
    let eif = kit.eif(env.dir.path(), "echo", &["echo-server", "5000"]);

    let mut process_times = Vec::new();
    let mut vm_times = Vec::new();
    let mut accel = String::new();
    for _ in 0..boots {
        for isolation in ["process", "vm"] {
            let (out, t) = run(&env, &eif, isolation);
            let id = out["EnclaveID"].as_str().unwrap().to_owned();
            if isolation == "vm" {
                if accel.is_empty() {
                    let list = env.json(&["describe-enclaves"]);
                    accel = list[0]["Accelerator"].as_str().unwrap_or("?").to_owned();
                }
                vm_times.push(t);
            } else {
                process_times.push(t);
            }
            terminate(&env, &id);
        }
    }
    let (p, v) = (median(process_times), median(vm_times));
    println!(
        "run-enclave to heartbeat (median of {boots}, alternating): process {:.1} ms, vm ({accel}) {:.1} ms, ratio vm/process {:.1}x",
        p.as_secs_f64() * 1e3,
        v.as_secs_f64() * 1e3,
        v.as_secs_f64() / p.as_secs_f64()
    );

    let bytes = mib * 1024 * 1024;
    let mut rates = Vec::new();
    for isolation in ["process", "vm"] {
        let (out, _) = run(&env, &eif, isolation);
        let cid = u32::try_from(out["EnclaveCID"].as_u64().unwrap()).unwrap();
        rates.push(echo_throughput(&env, cid, bytes));
        terminate(&env, out["EnclaveID"].as_str().unwrap());
    }
    println!(
        "parent<->enclave vsock echo ({mib} MiB each way): process {:.1} MiB/s, vm ({accel}) {:.1} MiB/s, ratio vm/process {:.3}",
        rates[0],
        rates[1],
        rates[1] / rates[0]
    );
}
