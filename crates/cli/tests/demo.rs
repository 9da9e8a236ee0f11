//! `cloister demo` end to end: the real binary builds the sample images, starts the key service
//! and vsock-proxy, releases the secret to the attested enclave, sees the modified image refused
//! with AccessDeniedException, and tears everything down. Needs root (enclaves).

use std::process::Command;

#[test]
fn demo_releases_the_secret_only_to_the_attested_image() {
    // Build the static binaries first (cargo, cached in target/static) so the demo's own
    // timings are those of a warm run.
    cloister_init::build_static_init().expect("static init");
    cloister_sample_app::build_static_sample_app().expect("static sample app");

    let out = Command::new(env!("CARGO_BIN_EXE_cloister"))
        .arg("demo")
        .env_remove("CLOISTER_RUN_DIR")
        .env_remove("CLOISTER_PKI_DIR")
        .env_remove("CLOISTER_ALLOCATOR_CONFIG")
        .output()
        .expect("run cloister demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "cloister demo failed ({:?})\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    for line in [
        "[1/6] Build the enclave images",
        "sample.eif",
        "modified.eif",
        "[2/6] Start the key service and vsock-proxy",
        "[3/6] Create an attestation-bound key and encrypt a secret",
        "[4/6] Run sample.eif",
        "attestation document verified",
        "(matches: the enclave holds the secret)",
        "[5/6] Run modified.eif",
        "KMS refused the modified image: AccessDeniedException",
        "[6/6] Tear down",
        "terminated 2 enclaves",
        "run directory clean",
        "Demo complete",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }

    // The two images were measured differently, and the document carried the genuine PCR0.
    let pcr0s: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.trim().strip_prefix("PCR0 "))
        .filter(|v| v.len() == 96 && v.bytes().all(|b| b.is_ascii_hexdigit()))
        .collect();
    assert_eq!(pcr0s.len(), 2, "{stdout}");
    assert_ne!(pcr0s[0], pcr0s[1]);
    let in_document = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("PCR0 in the document = "))
        .expect("document PCR0 line");
    assert_eq!(in_document, pcr0s[0]);

    // The workspace (run dir, KMS data, images) is gone.
    let workspace = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("workspace: "))
        .expect("workspace line");
    assert!(
        !std::path::Path::new(workspace).exists(),
        "{workspace} left behind"
    );
}

#[test]
fn demo_error_codes_are_explained() {
    let out = Command::new(env!("CARGO_BIN_EXE_cloister"))
        .args(["explain", "--error-code", "E810"])
        .output()
        .expect("run cloister explain");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("Modified image was not refused"));
}
