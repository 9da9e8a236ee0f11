//! An image laid out as `nitro-cli build-enclave` lays it out, with AWS's own boot blobs
//! (tests/vectors/nitro-cli-blobs: AWS's `init` and `nsm.ko`; no kernel, which a process
//! enclave never boots), runs in a process enclave: the runtime runs Cloister's init in place
//! of AWS's (found through `CLOISTER_BLOBS`), uses the customer ramdisk as it is, and says so
//! in `describe-enclaves` (`InitReplaced`) and in the leaf certificate of the enclave's
//! attestation documents (OU `init=replaced`), whose PCR0/1/2 are still the image's.

mod enclave_support;

use enclave_support::{static_bins, Env};
use serde_json::Value;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// AWS's boot blobs.
fn aws_blobs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/vectors/nitro-cli-blobs")
}

/// A blobs directory as nitro-cli installs it (`init`, `nsm.ko`, `cmdline`; the kernel is not
/// needed for process enclaves) and one with Cloister's init for the runtime.
fn blob_dirs(dir: &Path) -> (PathBuf, PathBuf) {
    let aws = dir.join("aws-blobs");
    std::fs::create_dir_all(&aws).unwrap();
    for name in ["init", "nsm.ko", "cmdline"] {
        std::fs::copy(aws_blobs().join(name), aws.join(name)).unwrap();
    }
    let ours = dir.join("cloister-blobs");
    std::fs::create_dir_all(&ours).unwrap();
    std::fs::copy(&static_bins().0, ours.join("init")).unwrap();
    (aws, ours)
}

/// Builds an image with AWS's blobs around the testapp running `argv`.
fn build(env: &Env, aws: &Path, name: &str, argv: &[&str]) -> PathBuf {
    let rootfs = env.dir.path().join(format!("rootfs-{name}"));
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    std::fs::copy(&static_bins().1, rootfs.join("bin/testapp")).unwrap();
    let eif = env.dir.path().join(format!("{name}.eif"));
    let mut cmd = vec!["/bin/testapp"];
    cmd.extend_from_slice(argv);
    let out = env
        .cmd()
        .env_remove("CLOISTER_BLOBS")
        .args(["build-enclave", "--rootfs"])
        .arg(&rootfs)
        .args(["--rootfs-owner", "0:0", "--cmd"])
        .arg(serde_json::to_string(&cmd).unwrap())
        .arg("--blobs")
        .arg(aws)
        .arg("--output-file")
        .arg(&eif)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "build-enclave: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    eif
}

/// The bootstrap ramdisk's entries (name, data) of `eif`.
fn bootstrap_entries(eif: &Path) -> Vec<(String, Vec<u8>)> {
    let mut r = cloister_eif::EifReader::new(std::fs::File::open(eif).unwrap()).unwrap();
    let first = r.ramdisks()[0];
    let mut cpio = cloister_cpio::CpioReader::new(r.section_reader(first).unwrap());
    let mut out = Vec::new();
    while let Some(e) = cpio.next_entry().unwrap() {
        let mut data = Vec::new();
        cpio.data().read_to_end(&mut data).unwrap();
        out.push((String::from_utf8_lossy(&e.name).into_owned(), data));
    }
    out
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut v = u32::try_from(payload.len()).unwrap().to_be_bytes().to_vec();
    v.extend_from_slice(payload);
    v
}

#[test]
#[allow(
    clippy::too_many_lines,
    reason = "one end-to-end scenario, read top to bottom; its steps share the running enclave"
)]
fn a_nitro_cli_image_with_aws_init_runs_in_a_process_enclave() {
    let env = Env::new("0-1", 1024);
    let (aws, ours) = blob_dirs(env.dir.path());
    let relay = build(&env, &aws, "relay", &["nsm-relay", "7520"]);
    // nitro-cli's layout: AWS's init and nsm.ko in the bootstrap ramdisk.
    let boot = bootstrap_entries(&relay);
    let names: Vec<&str> = boot.iter().map(|(n, _)| n.as_str()).collect();
    assert!(
        names.contains(&"nsm.ko") && names.contains(&"dev"),
        "{names:?}"
    );
    let aws_init = std::fs::read(aws_blobs().join("init")).unwrap();
    assert!(boot.iter().any(|(n, d)| n == "init" && *d == aws_init));

    let run = |eif: &Path, extra: &[&str]| -> Value {
        let out = env
            .cmd()
            .env("CLOISTER_BLOBS", &ours)
            .args(enclave_support::run_enclave_args(eif, "128", extra))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "run-enclave: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };

    // The command's output (debug mode: the console is readable).
    let hello = build(&env, &aws, "hello", &["write-file", "/tmp/hello"]);
    let h = run(&hello, &["--debug-mode", "--enclave-name", "hello"]);
    let hid = h["EnclaveID"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !env.console(&hid).contains("wrote /tmp/hello") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        env.console(&hid).contains("wrote /tmp/hello"),
        "{}",
        env.console(&hid)
    );

    // Attestation (not in debug mode: the documents carry the image's PCRs).
    let listener = env.listen(7520);
    let r = run(&relay, &["--enclave-name", "relay"]);
    let id = r["EnclaveID"].as_str().unwrap().to_owned();
    let list = env.json(&["describe-enclaves"]);
    let entry = list
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["EnclaveID"] == id.as_str())
        .unwrap()
        .clone();
    assert_eq!(entry["InitReplaced"], true);
    assert_eq!(entry["Isolation"], "process");
    let image = env.json(&["describe-eif", "--eif-path", relay.to_str().unwrap()]);
    for pcr in ["PCR0", "PCR1", "PCR2"] {
        assert_eq!(
            entry["Measurements"][pcr], image["Measurements"][pcr],
            "{pcr}"
        );
    }

    listener.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut s, _) = loop {
        match listener.accept() {
            Ok(s) => break s,
            Err(e) if e.is_would_block() && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => panic!("accept: {e}"),
        }
    };
    s.set_nonblocking(false).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let req = cloister_nsm_api::Request::Attestation {
        user_data: None,
        nonce: Some(serde_bytes::ByteBuf::from(b"nitro-cli image".to_vec())),
        public_key: None,
    };
    s.write_all(&frame(&req.to_cbor().unwrap())).unwrap();
    let mut len = [0u8; 4];
    s.read_exact(&mut len).unwrap();
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).unwrap();
    let document = match cloister_nsm_api::Response::from_cbor(&body).unwrap() {
        cloister_nsm_api::Response::Attestation { document } => document,
        other => panic!("unexpected NSM response {other:?}"),
    };
    let doc_path = env.dir.path().join("nitro-cli.cose");
    std::fs::write(&doc_path, &document).unwrap();
    let root = env.pki.join("root-ca.pem");
    let verified = env.json(&[
        "verify-attestation",
        "--document",
        doc_path.to_str().unwrap(),
        "--root",
        root.to_str().unwrap(),
        "--nonce",
        &hex::encode(b"nitro-cli image"),
    ]);
    assert_eq!(verified["Isolation"], "process");
    assert_eq!(verified["ModuleId"], id.as_str());
    for (i, pcr) in ["PCR0", "PCR1", "PCR2"].iter().enumerate() {
        assert_eq!(
            verified["PCRs"][i.to_string()],
            image["Measurements"][*pcr],
            "{pcr}"
        );
    }
    // The leaf says that Cloister's init ran in place of the image's.
    let ou = b"init=replaced";
    assert!(document.windows(ou.len()).any(|w| w == ou));
    env.terminate_all();
}
