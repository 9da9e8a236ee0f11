//! Build benchmark: a ~200 MiB image (OCI layout, a few gzip layers of many small files and some
//! large ones) built into an EIF, timing extraction, ramdisk writing and EIF writing/measuring
//! separately; in the same run the baseline "read and decompress the layers and SHA-384 the
//! output bytes". Prints the times and the ratio (target: at most 1.5x).
//!
//! Run: `cargo bench -p cloister-image-builder --bench build` (set `BENCH_MIB` to resize).

use aws_lc_rs::digest::{Context, SHA256, SHA384};
use cloister_image_builder::{prepare, write_eif, BuildRequest, ImageInput};
use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

fn sha256_hex(b: &[u8]) -> String {
    let mut c = Context::new(&SHA256);
    c.update(b);
    hex::encode(c.finish().as_ref())
}

/// Text-like bytes (compress about 2:1 with gzip, like binaries and text in real images).
fn fill(seed: &mut u64, out: &mut Vec<u8>, n: usize) {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789 _-./\n{}()=;:ABCDEFGHIJKLMNOP";
    for _ in 0..n {
        *seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        out.push(ALPHABET[((*seed >> 33) % ALPHABET.len() as u64) as usize]);
    }
}

fn layer(seed: u64, small_files: usize, large_files: usize, large_size: usize) -> Vec<u8> {
    let mut s = seed;
    let mut b = tar::Builder::new(Vec::new());
    let mut data = Vec::new();
    for i in 0..small_files {
        data.clear();
        let size = 512 + ((s >> 40) as usize % 7680);
        fill(&mut s, &mut data, size);
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(
            &mut h,
            format!("usr/share/l{seed}/d{}/f{i}", i % 64),
            &data[..],
        )
        .unwrap();
    }
    for i in 0..large_files {
        data.clear();
        fill(&mut s, &mut data, large_size);
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o755);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, format!("opt/l{seed}/big{i}"), &data[..])
            .unwrap();
    }
    b.into_inner().unwrap()
}

fn make_image(dir: &Path, total_mib: usize) -> Vec<(std::path::PathBuf, usize)> {
    std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    let per_layer = total_mib / 4;
    let mut layers = Vec::new();
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    for l in 0..4u64 {
        // Half the bytes in ~4.3 KiB files, half in 4 large files.
        let small = per_layer * 1024 * 1024 / 2 / 4350;
        let tar = layer(l + 1, small, 4, per_layer * 1024 * 1024 / 8);
        diff_ids.push(format!("sha256:{}", sha256_hex(&tar)));
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        let blob = gz.finish().unwrap();
        let h = sha256_hex(&blob);
        let p = dir.join("blobs/sha256").join(&h);
        std::fs::write(&p, &blob).unwrap();
        descs.push(serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": format!("sha256:{h}"), "size": blob.len()}));
        layers.push((p, tar.len()));
    }
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/opt/l1/big0"], "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap();
    let ch = sha256_hex(&config);
    std::fs::write(dir.join("blobs/sha256").join(&ch), &config).unwrap();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": format!("sha256:{ch}"), "size": config.len()},
        "layers": descs,
    }))
    .unwrap();
    let mh = sha256_hex(&manifest);
    std::fs::write(dir.join("blobs/sha256").join(&mh), &manifest).unwrap();
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": format!("sha256:{mh}"), "size": manifest.len()}]})).unwrap(),
    )
    .unwrap();
    layers
}

fn baseline(layers: &[(std::path::PathBuf, usize)]) -> Duration {
    let t = Instant::now();
    let mut h = Context::new(&SHA384);
    let mut buf = vec![0u8; 1 << 20];
    for (p, _) in layers {
        let f = std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(p).unwrap());
        let mut d = flate2::read::MultiGzDecoder::new(f);
        loop {
            let n = d.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
    }
    std::hint::black_box(h.finish());
    t.elapsed()
}

fn main() {
    let mib: usize = std::env::var("BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let t = tempfile::tempdir().unwrap();
    let oci = t.path().join("oci");
    let layers = make_image(&oci, mib);
    let blobs = t.path().join("blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::write(blobs.join("bzImage"), vec![0x55u8; 8 << 20]).unwrap();
    std::fs::write(blobs.join("init"), vec![0x7fu8; 1 << 20]).unwrap();
    std::fs::write(blobs.join("nsm.ko"), vec![1u8; 64 << 10]).unwrap();
    std::fs::write(blobs.join("cmdline"), b"console=ttyS0\n").unwrap();
    let uncompressed: usize = layers.iter().map(|l| l.1).sum();
    let compressed: u64 = layers
        .iter()
        .map(|l| std::fs::metadata(&l.0).unwrap().len())
        .sum();
    println!(
        "image: {} layers, {:.1} MiB uncompressed, {:.1} MiB gzip",
        layers.len(),
        uncompressed as f64 / 1048576.0,
        compressed as f64 / 1048576.0
    );

    let runs = 3;
    let mut best: Option<(Duration, Duration, Duration, Duration)> = None;
    let mut best_base = Duration::MAX;
    for _ in 0..runs {
        // Warm the page cache equally for both.
        best_base = best_base.min(baseline(&layers));
        let req = BuildRequest::new(
            ImageInput::OciLayout {
                dir: oci.clone(),
                tag: None,
            },
            blobs.clone(),
            t.path().join("out.eif"),
        );
        let p = prepare(&req).unwrap();
        let te = Instant::now();
        write_eif(&p, &req.output, None).unwrap();
        let eif = te.elapsed();
        let total = p.timings.extract + p.timings.ramdisks + eif;
        if best.is_none_or(|b| total < b.3) {
            best = Some((p.timings.extract, p.timings.ramdisks, eif, total));
        }
    }
    let (extract, ramdisks, eif, total) = best.unwrap();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "extraction (verify + gunzip + tar -> tree): {:8.1} ms",
        ms(extract)
    );
    println!(
        "ramdisk writing (cpio):                     {:8.1} ms",
        ms(ramdisks)
    );
    println!(
        "EIF writing + measuring (PCR0/1/2, CRC):    {:8.1} ms",
        ms(eif)
    );
    println!(
        "total build:                                {:8.1} ms",
        ms(total)
    );
    println!(
        "baseline (read + gunzip + SHA-384):         {:8.1} ms",
        ms(best_base)
    );
    println!(
        "ratio build/baseline: {:.2}x (target <= 1.5x; best of {runs})",
        total.as_secs_f64() / best_base.as_secs_f64()
    );
}
