//! Helpers shared by the integration tests: layer tars (including hostile ones written with raw
//! headers), OCI layouts, docker-save archives and synthetic blobs directories.
#![allow(dead_code)]

use aws_lc_rs::digest::{digest, SHA256};
use serde_json::json;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// One tar entry.
pub enum E<'a> {
    File(&'a str, u32, u32, u32, &'a [u8]),
    Dir(&'a str, u32),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
    Fifo(&'a str),
}

pub fn sha256_hex(b: &[u8]) -> String {
    hex::encode(digest(&SHA256, b).as_ref())
}

fn raw_header(
    path: &str,
    kind: tar::EntryType,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    {
        let name = &mut h.as_old_mut().name;
        let bytes = path.as_bytes();
        assert!(bytes.len() < 100, "test paths stay short");
        name[..bytes.len()].copy_from_slice(bytes);
    }
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(uid as u64);
    h.set_gid(gid as u64);
    h.set_size(size);
    h.set_mtime(1_234_567_890);
    h
}

fn set_link(h: &mut tar::Header, target: &str) {
    let l = &mut h.as_old_mut().linkname;
    l[..target.len()].copy_from_slice(target.as_bytes());
}

/// A tar with exactly these entries (names written raw: `..` and `/` are kept as given).
pub fn tar(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        match e {
            E::File(p, mode, uid, gid, data) => {
                let mut h = raw_header(
                    p,
                    tar::EntryType::Regular,
                    *mode,
                    *uid,
                    *gid,
                    data.len() as u64,
                );
                h.set_cksum();
                b.append(&h, *data).unwrap();
            }
            E::Dir(p, mode) => {
                let mut h = raw_header(p, tar::EntryType::Directory, *mode, 0, 0, 0);
                h.set_cksum();
                b.append(&h, &[][..]).unwrap();
            }
            E::Symlink(p, t) => {
                let mut h = raw_header(p, tar::EntryType::Symlink, 0o777, 0, 0, 0);
                set_link(&mut h, t);
                h.set_cksum();
                b.append(&h, &[][..]).unwrap();
            }
            E::Hardlink(p, t) => {
                let mut h = raw_header(p, tar::EntryType::Link, 0o644, 0, 0, 0);
                set_link(&mut h, t);
                h.set_cksum();
                b.append(&h, &[][..]).unwrap();
            }
            E::Fifo(p) => {
                let mut h = raw_header(p, tar::EntryType::Fifo, 0o644, 0, 0, 0);
                h.set_cksum();
                b.append(&h, &[][..]).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

pub fn gzip(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

pub fn zstd(b: &[u8]) -> Vec<u8> {
    zstd::stream::encode_all(b, 3).unwrap()
}

/// A layer: the blob as stored, its media type, and the uncompressed tar.
pub struct Layer {
    pub blob: Vec<u8>,
    pub media_type: &'static str,
    pub tar: Vec<u8>,
}

pub fn gz_layer(entries: &[E]) -> Layer {
    let t = tar(entries);
    Layer {
        blob: gzip(&t),
        media_type: "application/vnd.oci.image.layer.v1.tar+gzip",
        tar: t,
    }
}

pub fn zstd_layer(entries: &[E]) -> Layer {
    let t = tar(entries);
    Layer {
        blob: zstd(&t),
        media_type: "application/vnd.oci.image.layer.v1.tar+zstd",
        tar: t,
    }
}

pub fn plain_layer(entries: &[E]) -> Layer {
    let t = tar(entries);
    Layer {
        blob: t.clone(),
        media_type: "application/vnd.oci.image.layer.v1.tar",
        tar: t,
    }
}

pub fn config(layers: &[Layer], container: serde_json::Value) -> Vec<u8> {
    let diff_ids: Vec<String> = layers
        .iter()
        .map(|l| format!("sha256:{}", sha256_hex(&l.tar)))
        .collect();
    serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "created": "2024-05-01T12:00:00Z",
        "config": container,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap()
}

fn put_blob(dir: &Path, b: &[u8]) -> String {
    let h = sha256_hex(b);
    std::fs::write(dir.join("blobs/sha256").join(&h), b).unwrap();
    format!("sha256:{h}")
}

/// Writes an OCI image layout with one image tagged `tag`.
pub fn oci_layout(dir: &Path, layers: &[Layer], config_bytes: &[u8], tag: &str) {
    std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    let cfg = put_blob(dir, config_bytes);
    let mut ls = Vec::new();
    for l in layers {
        let d = put_blob(dir, &l.blob);
        ls.push(json!({"mediaType": l.media_type, "digest": d, "size": l.blob.len()}));
    }
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cfg, "size": config_bytes.len()},
        "layers": ls,
    }))
    .unwrap();
    let md = put_blob(dir, &manifest);
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": md, "size": manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }],
    });
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
}

/// Writes an old-style `docker save` archive (`<id>/layer.tar`, `<config hex>.json`).
pub fn docker_archive_old(path: &Path, layers: &[Layer], config_bytes: &[u8], tag: &str) {
    let mut b = tar::Builder::new(Vec::new());
    let add = |b: &mut tar::Builder<Vec<u8>>, name: &str, data: &[u8]| {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, data).unwrap();
    };
    let cfg_name = format!("{}.json", sha256_hex(config_bytes));
    let mut names = Vec::new();
    for (i, l) in layers.iter().enumerate() {
        let n = format!("layer{i}/layer.tar");
        add(&mut b, &n, &l.tar);
        names.push(n);
    }
    add(&mut b, &cfg_name, config_bytes);
    let manifest = json!([{"Config": cfg_name, "RepoTags": [tag], "Layers": names}]);
    add(
        &mut b,
        "manifest.json",
        &serde_json::to_vec(&manifest).unwrap(),
    );
    std::fs::write(path, b.into_inner().unwrap()).unwrap();
}

/// Writes an OCI-style `docker save` archive (docker 25+): blobs/sha256 + manifest.json.
pub fn docker_archive_oci(path: &Path, layers: &[Layer], config_bytes: &[u8], tag: &str) {
    let mut b = tar::Builder::new(Vec::new());
    let add = |b: &mut tar::Builder<Vec<u8>>, name: &str, data: &[u8]| {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, data).unwrap();
    };
    let cfg_name = format!("blobs/sha256/{}", sha256_hex(config_bytes));
    add(&mut b, &cfg_name, config_bytes);
    let mut names = Vec::new();
    for l in layers {
        let n = format!("blobs/sha256/{}", sha256_hex(&l.tar));
        add(&mut b, &n, &l.tar);
        names.push(n);
    }
    let manifest = json!([{"Config": cfg_name, "RepoTags": [tag], "Layers": names}]);
    add(
        &mut b,
        "manifest.json",
        &serde_json::to_vec(&manifest).unwrap(),
    );
    add(
        &mut b,
        "index.json",
        br#"{"schemaVersion":2,"manifests":[]}"#,
    );
    std::fs::write(path, b.into_inner().unwrap()).unwrap();
}

/// A synthetic blobs directory (fake kernel bytes are fine for layout tests).
pub fn blobs_dir(dir: &Path, aws: bool) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("bzImage"), vec![0xAB; 4096]).unwrap();
    std::fs::write(dir.join("init"), b"\x7fELF fake init").unwrap();
    std::fs::write(dir.join("cmdline"), b"console=ttyS0 reboot=k\n").unwrap();
    if aws {
        std::fs::write(dir.join("nsm.ko"), b"fake nsm module").unwrap();
    } else {
        std::fs::create_dir_all(dir.join("modules")).unwrap();
        std::fs::write(dir.join("modules/vsock.ko"), b"vsock").unwrap();
        std::fs::write(dir.join("modules/vmw_vsock_virtio_transport.ko"), b"vvt").unwrap();
    }
    dir.to_path_buf()
}

/// Every entry of a (plain) cpio archive: name -> (mode, uid, gid, nlink, ino, data or target).
/// (name, mode, uid, gid, nlink, ino, data or target).
pub type CpioEntry = (String, u32, u32, u32, u32, u32, Vec<u8>);

pub fn read_cpio(path: &Path) -> Vec<CpioEntry> {
    let f = std::fs::File::open(path).unwrap();
    let mut r = cloister_cpio::CpioReader::new(std::io::BufReader::new(f));
    let mut out = Vec::new();
    while let Some(e) = r.next_entry().unwrap() {
        let mut data = Vec::new();
        r.data().read_to_end(&mut data).unwrap();
        if let Some(t) = &e.symlink_target {
            data = t.clone();
        }
        out.push((
            e.name_str().unwrap().to_owned(),
            e.mode,
            e.uid,
            e.gid,
            e.nlink,
            e.ino,
            data,
        ));
    }
    out
}
