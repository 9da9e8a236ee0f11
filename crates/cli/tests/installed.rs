//! `cloister` as installed, without cargo: a copy of the binary in a prefix laid out like the
//! release tarball (`bin/cloister`, `share/cloister/blobs/{init,cmdline}` without a kernel,
//! `share/cloister/cloister-sample-app`), run with a PATH that has no cargo and no Cargo
//! environment. It finds its blobs and sample app next to itself; `build-enclave --rootfs`
//! works with those blobs alone (an empty kernel section); a copy with nothing installed beside
//! it fails with E610 saying how to install, and never builds anything. (scripts/package-test.sh
//! does the same with the real .deb.) Needs root for the demo's enclaves.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A prefix with the binary, the shipped blobs (no kernel) and the sample app.
fn install(prefix: &Path, with_data: bool) -> PathBuf {
    let bin = prefix.join("bin/cloister");
    std::fs::create_dir_all(bin.parent().unwrap()).unwrap();
    std::fs::copy(env!("CARGO_BIN_EXE_cloister"), &bin).unwrap();
    if with_data {
        let share = prefix.join("share/cloister");
        std::fs::create_dir_all(share.join("blobs")).unwrap();
        let init = cloister_init::build_static_init().expect("static init");
        let app = cloister_sample_app::build_static_sample_app().expect("static sample app");
        std::fs::copy(init, share.join("blobs/init")).unwrap();
        std::fs::write(
            share.join("blobs/cmdline"),
            cloister_image_builder::blobs::shipped_cmdline() + "\n",
        )
        .unwrap();
        std::fs::copy(app, share.join("cloister-sample-app")).unwrap();
    }
    bin
}

/// The binary with no cargo on the PATH and no Cargo or Cloister environment, run from `cwd`.
fn installed_command(bin: &Path, cwd: &Path) -> Command {
    let mut c = Command::new(bin);
    c.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("HOME", cwd)
        .current_dir(cwd);
    c
}

#[test]
fn the_demo_runs_from_an_installed_prefix_without_cargo() {
    let d = tempfile::tempdir().unwrap();
    let bin = install(&d.path().join("prefix"), true);
    let out = installed_command(&bin, d.path())
        .arg("demo")
        .output()
        .expect("run the installed cloister");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let share = std::fs::canonicalize(d.path().join("prefix/share/cloister")).unwrap();
    assert!(
        stdout.contains(&format!(
            "blobs: {} (next to the executable)",
            share.join("blobs").display()
        )),
        "{stdout}"
    );
    assert!(stdout.contains("kernel section: empty"), "{stdout}");
    assert!(!stdout.contains("cargo"), "{stdout}");
    assert!(stdout.contains("Demo complete"), "{stdout}");
}

#[test]
fn process_images_build_from_the_installed_blobs_alone() {
    let d = tempfile::tempdir().unwrap();
    let bin = install(&d.path().join("prefix"), true);
    let rootfs = d.path().join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    std::fs::write(rootfs.join("bin/app"), b"#!/bin/sh\necho hi\n").unwrap();
    let eif = d.path().join("app.eif");
    let out = installed_command(&bin, d.path())
        .args(["build-enclave", "--rootfs"])
        .arg(&rootfs)
        .args(["--cmd", "/bin/app", "--output-file"])
        .arg(&eif)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(m["Measurements"]["PCR1"].is_string(), "{m}");
    // An empty kernel section, and a small image: 4 times it fits the 64 MiB minimum.
    let bytes = std::fs::read(&eif).unwrap();
    let mut reader = cloister_eif::EifReader::new(std::io::Cursor::new(&bytes[..])).unwrap();
    let kernel = reader.kernel();
    let mut section = Vec::new();
    std::io::Read::read_to_end(&mut reader.section_reader(kernel).unwrap(), &mut section).unwrap();
    assert!(section.is_empty(), "{} kernel bytes", section.len());
    assert!(
        (bytes.len() as u64) * 4 <= 64 << 20,
        "{} bytes",
        bytes.len()
    );
}

#[test]
fn a_copy_with_nothing_installed_says_how_to_install() {
    if Path::new("/usr/share/cloister/blobs").exists() {
        eprintln!("skipped: Cloister is installed on this host");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let bin = install(&d.path().join("prefix"), false);
    for args in [
        &["demo"][..],
        &["build-enclave", "--rootfs", "/", "--output-file", "x.eif"],
    ] {
        let out = installed_command(&bin, d.path())
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(stderr.contains("E610"), "{args:?}: {stderr}");
        assert!(stderr.contains("/usr/share/cloister/blobs"), "{stderr}");
        assert!(stderr.contains(".deb"), "{stderr}");
    }
    assert!(!d.path().join("x.eif").exists());
}
