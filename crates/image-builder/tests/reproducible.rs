//! Reproducibility: the same image built twice under different conditions (umask, working
//! directory, TZ, temp directory, input file mtimes and atimes) gives byte-identical ramdisks,
//! byte-identical EIFs and the same PCRs. One test in its own binary, since umask, cwd and TZ are
//! process-wide.

mod common;
use cloister_image_builder::{build, prepare, BuildRequest, CommandOverrides, ImageInput};
use common::*;
use serde_json::json;
use std::time::{Duration, SystemTime};

fn set_umask(mask: u32) {
    // SAFETY: umask only changes this process's file-creation mask; it cannot fail.
    unsafe {
        libc::umask(mask as libc::mode_t);
    }
}

fn touch_all(dir: &std::path::Path, t: SystemTime) {
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            touch_all(&e.path(), t);
        } else {
            let f = std::fs::File::options().write(true).open(e.path()).unwrap();
            f.set_times(std::fs::FileTimes::new().set_accessed(t).set_modified(t))
                .unwrap();
        }
    }
}

fn make_inputs(
    root: &std::path::Path,
    mtime: SystemTime,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let layers = vec![
        gz_layer(&[
            E::Dir("etc/", 0o755),
            E::File("etc/passwd", 0o644, 0, 0, b"root:x:0:0::/root:/bin/sh\n"),
            E::File("bin/tool", 0o4711, 0, 0, &[9u8; 70_000]),
            E::Symlink("sbin", "bin"),
        ]),
        zstd_layer(&[
            E::File("home/u/f", 0o600, 1000, 1000, b"u"),
            E::Hardlink("home/u/g", "home/u/f"),
        ]),
    ];
    let cfg = config(&layers, json!({"Cmd": ["/bin/tool"], "Env": ["X=1"]}));
    let oci = root.join("oci");
    oci_layout(&oci, &layers, &cfg, "r");
    let blobs = blobs_dir(&root.join("blobs"), true);
    let rootfs = root.join("rootfs");
    std::fs::create_dir_all(rootfs.join("app")).unwrap();
    std::fs::write(rootfs.join("app/run"), b"#!/bin/sh\necho hi\n").unwrap();
    std::fs::write(rootfs.join("app/data"), vec![1u8; 5000]).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            rootfs.join("app/run"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        std::fs::set_permissions(
            rootfs.join("app/data"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        std::fs::set_permissions(rootfs.join("app"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        std::fs::set_permissions(&rootfs, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    touch_all(root, mtime);
    (oci, blobs, rootfs)
}

struct Outcome {
    bootstrap: Vec<u8>,
    customer: Vec<u8>,
    eif: Vec<u8>,
    pcrs: (Vec<u8>, Vec<u8>, Vec<u8>),
}

fn build_in(work: &std::path::Path, input: ImageInput, blobs: std::path::PathBuf) -> Outcome {
    let tmp = work.join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let mut req = BuildRequest::new(input, blobs, work.join("out.eif"));
    req.temp_dir = Some(tmp);
    if matches!(req.input, ImageInput::Rootfs { .. }) {
        req.overrides = CommandOverrides {
            cmd: Some(vec!["/app/run".into()]),
            ..Default::default()
        };
    }
    let p = prepare(&req).unwrap();
    let bootstrap = std::fs::read(p.bootstrap.path()).unwrap();
    let customer = std::fs::read(p.customer.path()).unwrap();
    drop(p);
    let r = build(req).unwrap();
    let m = r.measurements;
    Outcome {
        bootstrap,
        customer,
        eif: std::fs::read(work.join("out.eif")).unwrap(),
        pcrs: (m.pcr0.to_vec(), m.pcr1.to_vec(), m.pcr2.to_vec()),
    }
}

#[test]
fn same_bytes_under_different_conditions() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::Builder::new()
        .prefix("other-place")
        .tempdir()
        .unwrap();

    // Run 1: umask 022, TZ=UTC, cwd = a, inputs dated 2001.
    set_umask(0o022);
    std::env::set_var("TZ", "UTC");
    std::env::set_current_dir(a.path()).unwrap();
    let (oci1, blobs1, rootfs1) = make_inputs(
        &a.path().join("in"),
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000),
    );
    let r1 = build_in(
        &a.path().join("w"),
        ImageInput::OciLayout {
            dir: oci1,
            tag: None,
        },
        blobs1.clone(),
    );
    let f1 = build_in(
        &a.path().join("w2"),
        ImageInput::Rootfs {
            dir: rootfs1,
            owner: Some((0, 0)),
        },
        blobs1,
    );

    // Run 2: umask 077, TZ far away, another cwd and temp dir, inputs dated now.
    set_umask(0o077);
    std::env::set_var("TZ", "Pacific/Kiritimati");
    std::env::set_current_dir(b.path()).unwrap();
    let (oci2, blobs2, rootfs2) = make_inputs(&b.path().join("deeper/in"), SystemTime::now());
    let r2 = build_in(
        &b.path().join("x/y"),
        ImageInput::OciLayout {
            dir: oci2,
            tag: Some("r".into()),
        },
        blobs2.clone(),
    );
    let f2 = build_in(
        &b.path().join("z"),
        ImageInput::Rootfs {
            dir: rootfs2,
            owner: Some((0, 0)),
        },
        blobs2,
    );
    set_umask(0o022);

    assert_eq!(r1.bootstrap, r2.bootstrap);
    assert_eq!(r1.customer, r2.customer, "customer ramdisk differs");
    assert_eq!(r1.pcrs, r2.pcrs);
    assert_eq!(r1.eif, r2.eif, "EIF differs");
    assert_eq!(f1.customer, f2.customer, "rootfs-dir ramdisk differs");
    assert_eq!(f1.pcrs, f2.pcrs);
    assert_eq!(f1.eif, f2.eif);
    assert_ne!(r1.pcrs.2, f1.pcrs.2);
}
