//! The real `cloister` binary against AWS's EIF vectors: build-enclave prints the reference
//! PCRs, describe-eif reports them with passing checks, sign-eif and pcr agree, and damaged
//! images fail with their documented codes and exit statuses.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn vectors() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/vectors/eif")
}

fn v(name: &str) -> String {
    vectors().join(name).to_string_lossy().into_owned()
}

fn cloister(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cloister"))
        .args(args)
        .output()
        .expect("run cloister")
}

fn json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "status {:?}, stderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("stdout is JSON")
}

fn expected(kind: &str) -> serde_json::Value {
    let all: serde_json::Value =
        serde_json::from_slice(&std::fs::read(vectors().join("expected-pcrs.json")).unwrap())
            .unwrap();
    let mut e = all[kind].clone();
    e["HashAlgorithm"] = "Sha384 { ... }".into();
    e
}

fn cmdline() -> String {
    std::fs::read_to_string(vectors().join("cmdline.txt")).unwrap()
}

fn build(out: &Path, signed: bool) -> Output {
    let cmd = cmdline();
    let out = out.to_string_lossy().into_owned();
    let (k, r0, r1, c, key) = (
        v("kernel.bin"),
        v("ramdisk0.bin"),
        v("ramdisk1.bin"),
        v("cert.pem"),
        v("key.pem"),
    );
    let mut args = vec![
        "build-enclave",
        "--kernel",
        &k,
        "--cmdline",
        &cmd,
        "--ramdisk",
        &r0,
        "--ramdisk",
        &r1,
        "--output-file",
        &out,
    ];
    if signed {
        args.extend(["--signing-certificate", &c, "--private-key", &key]);
    }
    cloister(&args)
}

fn code_and_status(out: &Output) -> (String, Option<i32>) {
    let err = String::from_utf8_lossy(&out.stderr);
    let code = err
        .split('[')
        .nth(1)
        .and_then(|s| s.split(']').next())
        .unwrap_or("")
        .to_string();
    (code, out.status.code())
}

#[test]
fn build_enclave_prints_the_reference_pcrs() {
    let dir = tempfile::tempdir().unwrap();
    let unsigned = dir.path().join("u.eif");
    assert_eq!(
        json(&build(&unsigned, false))["Measurements"],
        expected("unsigned")
    );
    let signed = dir.path().join("s.eif");
    assert_eq!(
        json(&build(&signed, true))["Measurements"],
        expected("signed")
    );

    // What we built describes like the reference images.
    let d = json(&cloister(&[
        "describe-eif",
        "--eif-path",
        &signed.to_string_lossy(),
    ]));
    assert_eq!(d["Measurements"], expected("signed"));
    assert_eq!(d["CheckCRC"], true);
    assert_eq!(d["SignatureCheck"], true);
    assert_eq!(d["ImageName"], "kernel.bin");
    assert_eq!(d["Metadata"]["BuildTool"], "cloister");
}

#[test]
fn describe_eif_reports_the_reference_images() {
    let u = json(&cloister(&[
        "describe-eif",
        "--eif-path",
        &v("unsigned.eif"),
    ]));
    assert_eq!(u["EifVersion"], 4);
    assert_eq!(u["Measurements"], expected("unsigned"));
    assert_eq!(u["IsSigned"], false);
    assert_eq!(u["CheckCRC"], true);
    assert!(u.get("SignatureCheck").is_none());
    assert!(u.get("SigningCertificate").is_none());
    assert_eq!(u["ImageName"], "kernel.bin");
    assert_eq!(u["ImageVersion"], "1.0");
    assert_eq!(u["Metadata"]["BuildTool"], "eif_build");
    assert_eq!(u["Metadata"]["DockerInfo"], serde_json::Value::Null);

    let s = json(&cloister(&["describe-eif", "--eif-path", &v("signed.eif")]));
    assert_eq!(s["Measurements"], expected("signed"));
    assert_eq!(s["IsSigned"], true);
    assert_eq!(s["CheckCRC"], true);
    assert_eq!(s["SignatureCheck"], true);
    let cert = &s["SigningCertificate"];
    assert_eq!(cert["Algorithm"], "ecdsa-with-SHA384");
    assert_eq!(cert["IssuerName"]["commonName"], "public-signer");
    assert_eq!(cert["NotBefore"], "Nov 21 09:16:35 2026 GMT");
    assert!(cert["Signature"].as_str().unwrap().contains(':'));
}

#[test]
fn describe_eif_reports_a_corrupted_body_as_crc_false() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.eif");
    let mut bytes = std::fs::read(vectors().join("signed.eif")).unwrap();
    bytes[600] ^= 0xff; // inside the kernel
    std::fs::write(&path, &bytes).unwrap();
    let out = cloister(&["describe-eif", "--eif-path", &path.to_string_lossy()]);
    let d = json(&out);
    assert_eq!(d["CheckCRC"], false);
    assert_eq!(d["IsSigned"], true);
    // The kernel changed, so PCR0 changed and the signature no longer matches it.
    assert_eq!(d["SignatureCheck"], false);
    assert_ne!(d["Measurements"]["PCR0"], expected("signed")["PCR0"]);
    assert_eq!(d["Measurements"]["PCR8"], expected("signed")["PCR8"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("CRC mismatch"));
}

#[test]
fn sign_eif_and_pcr_agree_with_the_reference() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("signed.eif");
    let r = json(&cloister(&[
        "sign-eif",
        "--eif-path",
        &v("unsigned.eif"),
        "--signing-certificate",
        &v("cert.pem"),
        "--private-key",
        &v("key.pem"),
        "--output-file",
        &out.to_string_lossy(),
    ]));
    assert_eq!(r["Measurements"], expected("signed"));
    let d = json(&cloister(&[
        "describe-eif",
        "--eif-path",
        &out.to_string_lossy(),
    ]));
    assert_eq!(d["SignatureCheck"], true);
    assert_eq!(d["CheckCRC"], true);

    let p8 = json(&cloister(&["pcr", "--signing-certificate", &v("cert.pem")]));
    assert_eq!(p8["PCR8"], expected("signed")["PCR8"]);
    // --input measures a whole file: a file holding exactly the kernel, cmdline and ramdisk0
    // measures as PCR1.
    let mut boot = std::fs::read(vectors().join("kernel.bin")).unwrap();
    boot.extend_from_slice(cmdline().as_bytes());
    boot.extend(std::fs::read(vectors().join("ramdisk0.bin")).unwrap());
    let f = dir.path().join("boot.bin");
    std::fs::write(&f, boot).unwrap();
    let p = json(&cloister(&["pcr", "--input", &f.to_string_lossy()]));
    assert_eq!(p["PCR"], expected("unsigned")["PCR1"]);
}

#[test]
fn damaged_images_fail_with_their_codes_and_exit_statuses() {
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read(vectors().join("unsigned.eif")).unwrap();
    let cases: Vec<(&str, Vec<u8>, &str, i32)> = vec![
        ("truncated", good[..1000].to_vec(), "E102", 3),
        ("magic", [b"xeif", &good[4..]].concat(), "E103", 3),
        ("empty", Vec::new(), "E102", 3),
    ];
    for (name, bytes, code, status) in cases {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        let out = cloister(&["describe-eif", "--eif-path", &p.to_string_lossy()]);
        assert_eq!(
            code_and_status(&out),
            (code.to_string(), Some(status)),
            "{name}"
        );
    }
    let out = cloister(&["describe-eif", "--eif-path", "/nonexistent/x.eif"]);
    assert_eq!(code_and_status(&out), ("E101".to_string(), Some(6)));

    // Signing a corrupted image is refused (verification failure, exit 4).
    let mut bad = good.clone();
    bad[700] ^= 1;
    let p = dir.path().join("corrupt.eif");
    std::fs::write(&p, &bad).unwrap();
    let out = cloister(&[
        "sign-eif",
        "--eif-path",
        &p.to_string_lossy(),
        "--signing-certificate",
        &v("cert.pem"),
        "--private-key",
        &v("key.pem"),
    ]);
    assert_eq!(code_and_status(&out), ("E117".to_string(), Some(4)));
    assert_eq!(
        std::fs::read(&p).unwrap(),
        bad,
        "refused signing must not touch the file"
    );

    // Missing raw inputs: usage error.
    let out = cloister(&[
        "build-enclave",
        "--output-file",
        &dir.path().join("o").to_string_lossy(),
    ]);
    assert_eq!(code_and_status(&out), ("E130".to_string(), Some(2)));
}

#[test]
fn explain_knows_the_image_codes() {
    let out = cloister(&["explain", "--error-code", "E117"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("CRC"));
}
