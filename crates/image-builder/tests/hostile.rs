//! Hostile images: traversal, symlink escapes, digest and size mismatches, bombs, malformed
//! documents, too many layers. Every one is a clear error and the host is untouched.

#![allow(clippy::field_reassign_with_default)] // limits are tweaked one field at a time

mod common;
use cloister_image_builder::{prepare, BuildError, BuildRequest, ImageInput, Limits};
use common::*;
use serde_json::json;
use std::path::Path;

fn try_layers(layers: Vec<Layer>, limits: Limits) -> Result<(), BuildError> {
    let t = tempfile::tempdir().unwrap();
    let cfg = config(&layers, json!({"Cmd": ["/x"], "Env": []}));
    oci_layout(&t.path().join("oci"), &layers, &cfg, "t");
    let blobs = blobs_dir(&t.path().join("blobs"), true);
    let mut req = BuildRequest::new(
        ImageInput::OciLayout {
            dir: t.path().join("oci"),
            tag: None,
        },
        blobs,
        t.path().join("o.eif"),
    );
    req.limits = limits;
    req.temp_dir = Some(t.path().to_path_buf());
    prepare(&req).map(|_| ())
}

fn err(layers: Vec<Layer>) -> String {
    let e = try_layers(layers, Limits::default()).unwrap_err();
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

#[test]
fn dot_dot_paths_are_refused_and_nothing_is_written() {
    let marker = format!("cloister-pwned-{}", std::process::id());
    let evil = format!("../../../../../../tmp/{marker}");
    let msg = err(vec![gz_layer(&[E::File(&evil, 0o644, 0, 0, b"pwned")])]);
    assert!(msg.contains("\"..\""), "{msg}");
    assert!(!Path::new("/tmp").join(&marker).exists());
}

#[test]
fn absolute_paths_stay_inside_the_image() {
    // "/etc/x" in a layer means the image's /etc/x, as container runtimes treat it.
    try_layers(
        vec![gz_layer(&[E::File("/etc/cloister-abs", 0o644, 0, 0, b"x")])],
        Limits::default(),
    )
    .unwrap();
    assert!(!Path::new("/etc/cloister-abs").exists());
}

#[test]
fn writing_through_an_escaping_symlink_is_refused() {
    let msg = err(vec![
        gz_layer(&[E::Symlink("escape", "../../../../etc")]),
        gz_layer(&[E::File("escape/cloister-evil", 0o644, 0, 0, b"x")]),
    ]);
    assert!(msg.contains("outside the image root"), "{msg}");
    assert!(!Path::new("/etc/cloister-evil").exists());
    let msg = err(vec![gz_layer(&[
        E::Symlink("a", "b"),
        E::Symlink("b", "a"),
        E::File("a/x", 0o644, 0, 0, b""),
    ])]);
    assert!(msg.contains("symbolic links"), "{msg}");
}

#[test]
fn tampered_blob_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let layers = vec![gz_layer(&[E::File("x", 0o644, 0, 0, b"original")])];
    let cfg = config(&layers, json!({"Cmd": ["/x"], "Env": []}));
    let oci = t.path().join("oci");
    oci_layout(&oci, &layers, &cfg, "t");
    // Swap the layer's bytes for a different (valid) layer of the same size: digest mismatch.
    let blob = oci.join("blobs/sha256").join(sha256_hex(&layers[0].blob));
    let mut bytes = std::fs::read(&blob).unwrap();
    let n = bytes.len();
    bytes[n - 5] ^= 0x55; // inside the gzip trailer's size field: decompression still works or fails, either way refused
    std::fs::write(&blob, &bytes).unwrap();
    let blobs = blobs_dir(&t.path().join("blobs"), true);
    let e = prepare(&BuildRequest::new(
        ImageInput::OciLayout {
            dir: oci.clone(),
            tag: None,
        },
        blobs.clone(),
        t.path().join("o.eif"),
    ))
    .unwrap_err();
    assert!(matches!(e, BuildError::Layer(_)), "{e}");
    // A config that does not match its digest.
    let cfg_blob = oci.join("blobs/sha256").join(sha256_hex(&cfg));
    std::fs::write(&cfg_blob, b"{\"config\":{}}").unwrap();
    let e = prepare(&BuildRequest::new(
        ImageInput::OciLayout {
            dir: oci,
            tag: None,
        },
        blobs,
        t.path().join("o.eif"),
    ))
    .unwrap_err();
    assert!(
        e.to_string().contains("digest") || e.to_string().contains("size"),
        "{e}"
    );
}

#[test]
fn decompression_bomb_and_size_limits() {
    let zeros = vec![0u8; 8 << 20];
    let layers = vec![gz_layer(&[E::File("bomb", 0o644, 0, 0, &zeros)])];
    let mut limits = Limits::default();
    limits.layer.ratio_floor = 1 << 20;
    limits.layer.max_ratio = 50;
    let e = try_layers(layers, limits).unwrap_err();
    assert!(e.to_string().contains("decompresses more than"), "{e}");

    let layers = vec![gz_layer(&[E::File("big", 0o644, 0, 0, &zeros)])];
    let mut limits = Limits::default();
    limits.max_uncompressed = 1 << 20;
    let e = try_layers(layers, limits).unwrap_err();
    assert!(e.to_string().contains("larger than"), "{e}");

    let layers = (0..5)
        .map(|i| {
            gz_layer(&[E::File(
                if i % 2 == 0 { "a" } else { "b" },
                0o644,
                0,
                0,
                b"",
            )])
        })
        .collect();
    let mut limits = Limits::default();
    limits.max_layers = 4;
    assert!(matches!(
        try_layers(layers, limits),
        Err(BuildError::TooManyLayers { count: 5, max: 4 })
    ));

    let layers = vec![gz_layer(&[
        E::File("a", 0o644, 0, 0, b""),
        E::File("b", 0o644, 0, 0, b""),
        E::File("c", 0o644, 0, 0, b""),
    ])];
    let mut limits = Limits::default();
    limits.tree.max_entries = 2;
    let e = try_layers(layers, limits).unwrap_err();
    let chain = format!(
        "{e}: {}",
        std::error::Error::source(&e)
            .map(|s| s.to_string())
            .unwrap_or_default()
    );
    assert!(chain.contains("more than 2 files"), "{chain}");
}

#[test]
fn truncated_and_garbage_layers() {
    let mut l = gz_layer(&[E::File("x", 0o644, 0, 0, &[7u8; 10_000])]);
    l.blob.truncate(l.blob.len() / 2);
    assert!(try_layers(vec![l], Limits::default()).is_err());
    let l = Layer {
        blob: b"BZh91AY&SY not supported".to_vec(),
        media_type: "application/vnd.oci.image.layer.v1.tar",
        tar: vec![],
    };
    let msg = err(vec![l]);
    assert!(msg.contains("bzip2"), "{msg}");
    let l = Layer {
        blob: vec![0x1f, 0x8b, 1, 2, 3],
        media_type: "application/vnd.oci.image.layer.v1.tar",
        tar: vec![],
    };
    let msg = err(vec![l]);
    assert!(msg.contains("media type"), "{msg}");
}

#[test]
fn malformed_documents() {
    let t = tempfile::tempdir().unwrap();
    let blobs = blobs_dir(&t.path().join("blobs"), true);
    let oci = t.path().join("oci");
    std::fs::create_dir_all(&oci).unwrap();
    let run = |oci: &Path| {
        prepare(&BuildRequest::new(
            ImageInput::OciLayout {
                dir: oci.to_path_buf(),
                tag: None,
            },
            blobs.clone(),
            t.path().join("o.eif"),
        ))
        .unwrap_err()
        .to_string()
    };
    assert!(run(&oci).contains("index.json"));
    std::fs::write(oci.join("index.json"), b"{not json").unwrap();
    assert!(run(&oci).contains("index.json is not valid"));
    std::fs::write(
        oci.join("index.json"),
        br#"{"manifests":[{"digest":"md5:00","size":1}]}"#,
    )
    .unwrap();
    assert!(run(&oci).contains("digest"));
    std::fs::write(oci.join("index.json"), vec![b' '; 5 << 20]).unwrap();
    assert!(run(&oci).contains("larger than"));
    // docker save with a path escaping the archive.
    let tarball = t.path().join("evil.tar");
    let mut b = tar::Builder::new(Vec::new());
    let data = br#"[{"Config":"../../etc/passwd","RepoTags":[],"Layers":[]}]"#;
    let mut h = tar::Header::new_ustar();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    b.append_data(&mut h, "manifest.json", &data[..]).unwrap();
    std::fs::write(&tarball, b.into_inner().unwrap()).unwrap();
    let e = prepare(&BuildRequest::new(
        ImageInput::DockerArchive {
            file: tarball,
            tag: None,
        },
        blobs.clone(),
        t.path().join("o.eif"),
    ))
    .unwrap_err();
    assert!(e.to_string().contains("not a plain relative path"), "{e}");
}
