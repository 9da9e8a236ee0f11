//! `/dev/nsm` in a VM enclave, for a program that knows nothing of Cloister: the enclave runs
//! tests/apps/nsm-hostile, built against AWS's `aws-nitro-enclaves-nsm-api` crate from
//! crates.io (statically, with its own lock file, into target/apps). Inside the VM, Cloister's
//! init makes `/dev/nsm` and answers AWS's ioctl from the enclave's own NSM (the guest kernel
//! has no NSM driver). The program first makes the ioctl with hostile arguments (a bad message
//! pointer, a request over 4096 bytes, an absurd length, bad request and response pointers),
//! then attests with a nonce through AWS's library and sends the document to the parent over
//! native AF_VSOCK; `cloister verify-attestation --root --nonce` checks it. A second boot shows
//! what a nitro-cli image (AWS's init and `nsm.ko`) does in a VM without AWS's kernel: E310.
//! Two boots in all (TCG in CI).

mod enclave_support;
mod vm_support;

use enclave_support::Env;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use vm_support::{json_ok, VmKit};

/// Boot timeout for the VM (TCG on a loaded two-core host).
const VM_BOOT_TIMEOUT_MS: &str = "180000";
/// How long the enclave may take from boot to sending its document.
const DOCUMENT_DEADLINE: Duration = Duration::from_secs(240);
/// The parent port the program sends its document to.
const PORT: u32 = 7510;

/// Builds tests/apps/nsm-hostile as a static binary (its own lock file, target/apps).
fn nsm_hostile() -> &'static PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let root = vm_support::workspace_root();
        let target_dir = root.join("target/apps");
        let target = cloister_init::static_build::STATIC_TARGET;
        let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["build", "--locked", "--manifest-path"])
            .arg(root.join("tests/apps/nsm-hostile/Cargo.toml"))
            .args(["--target", target])
            .env("CARGO_TARGET_DIR", &target_dir)
            .env(
                "CARGO_ENCODED_RUSTFLAGS",
                "-Ctarget-feature=+crt-static\x1f-Cstrip=debuginfo",
            )
            .env_remove("RUSTFLAGS")
            .output()
            .expect("run cargo");
        assert!(
            out.status.success(),
            "building nsm-hostile: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        target_dir.join(target).join("debug/nsm-hostile")
    })
}

fn image(kit: &VmKit, dir: &Path, argv: &[&str]) -> PathBuf {
    let rootfs = dir.join("rootfs-nsm");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    std::fs::copy(nsm_hostile(), rootfs.join("bin/nsm-hostile")).unwrap();
    let out = dir.join("nsm.eif");
    let built = Command::new(env!("CARGO_BIN_EXE_cloister"))
        .args(["build-enclave", "--rootfs"])
        .arg(&rootfs)
        .args(["--rootfs-owner", "0:0", "--cmd"])
        .arg(serde_json::to_string(argv).unwrap())
        .arg("--blobs")
        .arg(&kit.blobs)
        .arg("--output-file")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "build-enclave: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    out
}

#[test]
fn aws_nsm_library_attests_through_dev_nsm_in_a_vm_enclave() {
    let Some(kit) = VmKit::get() else { return };
    let _serial = vm_support::serial();
    let env = Env::new("0-1", 2048);
    let nonce = hex::encode(b"nonce from the parent");
    let port = PORT.to_string();
    let eif = image(
        kit,
        env.dir.path(),
        &["/bin/nsm-hostile", &port, &nonce, "unmodified"],
    );
    let listener = env.listen(PORT);
    listener.set_nonblocking(true).unwrap();

    let out = env
        .cmd()
        .env("CLOISTER_BOOT_TIMEOUT_MS", VM_BOOT_TIMEOUT_MS)
        .args(enclave_support::run_enclave_args(
            &eif,
            "256",
            &["--isolation", "vm", "--debug-mode", "--enclave-name", "nsm"],
        ))
        .output()
        .unwrap();
    let run = json_ok(&out, "run-enclave --isolation vm");
    let id = run["EnclaveID"].as_str().unwrap().to_owned();
    let cid = run["EnclaveCID"].as_u64().unwrap();

    // The program's connection: a line of errnos, then the document.
    let deadline = Instant::now() + DOCUMENT_DEADLINE;
    let (stream, peer) = loop {
        match listener.accept() {
            Ok(s) => break s,
            Err(e) if e.is_would_block() && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(e) => panic!("no connection from the enclave ({e}): {}", env.console(&id)),
        }
    };
    assert_eq!(u64::from(peer.cid), cid);
    stream.set_nonblocking(false).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    // Hostile arguments are refused with the errno AWS's driver gives, and init lives on to
    // answer the real request.
    let (efault, emsgsize) = (
        nix::errno::Errno::EFAULT as i32,
        nix::errno::Errno::EMSGSIZE as i32,
    );
    assert_eq!(
        line.trim_end(),
        format!(
            "checks: bad_message={efault} too_large={emsgsize} huge_length={emsgsize} \
             bad_request={efault} bad_response={efault}"
        ),
        "{}",
        env.console(&id)
    );
    let mut len = [0u8; 4];
    reader.read_exact(&mut len).unwrap();
    let mut document = vec![0u8; u32::from_be_bytes(len) as usize];
    reader.read_exact(&mut document).unwrap();

    let doc_path = env.dir.path().join("nsm-vm.cose");
    std::fs::write(&doc_path, &document).unwrap();
    let root = env.pki.join("root-ca.pem");
    let verified = json_ok(
        &env.cli(&[
            "verify-attestation",
            "--document",
            doc_path.to_str().unwrap(),
            "--root",
            root.to_str().unwrap(),
            "--nonce",
            &nonce,
        ]),
        "verify-attestation",
    );
    // Served by this enclave's own NSM.
    assert_eq!(verified["Isolation"], "vm");
    assert_eq!(verified["ModuleId"], run["EnclaveID"]);
    assert_eq!(verified["UserData"], hex::encode(b"unmodified"));
    // The command ran to its end under init.
    let wait_end = Instant::now() + Duration::from_secs(60);
    while !env.console(&id).contains("sent a document") && Instant::now() < wait_end {
        std::thread::sleep(Duration::from_millis(100));
    }
    let console = env.console(&id);
    assert!(
        console.contains("nsm-hostile: sent a document"),
        "{console}"
    );
    env.terminate_all();
}

/// An image laid out by nitro-cli (AWS's `init` and `nsm.ko`) but carrying Debian's kernel in
/// place of AWS's: in VM isolation nothing is replaced, AWS's `nsm.ko` (built for AWS's 4.14
/// kernel) does not load, AWS's init gives up and the guest kernel panics: E310.
#[test]
fn a_nitro_cli_image_without_aws_kernel_fails_in_a_vm_with_e310() {
    let Some(kit) = VmKit::get() else { return };
    let _serial = vm_support::serial();
    let env = Env::new("0-1", 2048);
    let aws = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/vectors/nitro-cli-blobs");
    let blobs = env.dir.path().join("aws-init-debian-kernel");
    std::fs::create_dir_all(&blobs).unwrap();
    for name in ["init", "nsm.ko"] {
        std::fs::copy(aws.join(name), blobs.join(name)).unwrap();
    }
    for name in ["vmlinuz", "bzImage", "cmdline"] {
        if kit.blobs.join(name).exists() {
            std::fs::copy(kit.blobs.join(name), blobs.join(name)).unwrap();
        }
    }
    let rootfs = env.dir.path().join("rootfs-aws");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    std::fs::copy(&kit.testapp, rootfs.join("bin/testapp")).unwrap();
    let eif = env.dir.path().join("aws.eif");
    let built = Command::new(env!("CARGO_BIN_EXE_cloister"))
        .args(["build-enclave", "--rootfs"])
        .arg(&rootfs)
        .args([
            "--rootfs-owner",
            "0:0",
            "--cmd",
            r#"["/bin/testapp","sleep"]"#,
        ])
        .arg("--blobs")
        .arg(&blobs)
        .arg("--output-file")
        .arg(&eif)
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "build-enclave: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    let out = env
        .cmd()
        .env("CLOISTER_BOOT_TIMEOUT_MS", VM_BOOT_TIMEOUT_MS)
        .args(enclave_support::run_enclave_args(
            &eif,
            "256",
            &["--isolation", "vm", "--debug-mode"],
        ))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("E310"), "{err}");
    assert!(err.contains("Kernel panic"), "{err}");
}
