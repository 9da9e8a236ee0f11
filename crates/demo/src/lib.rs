//! The demo scenario behind `cloister demo`: the whole path on embedded defaults,
//! self-contained. The CLI parses the flags into [`DemoOptions`], calls [`run`] and gives each
//! [`DemoError`] variant its stable code (E8xx).
//!
//! 1. builds the sample enclave image (Cloister's blobs: `init` and `cmdline`, plus the static
//!    `cloister-sample-app`) and a modified copy (one env line differs, so PCR0 differs), and
//!    prints their PCRs;
//! 2. starts the key service in-process (temp data dir; attestation trust anchor = the demo's
//!    own PKI root) and a vsock-proxy whose allowlist holds only the key service's address, in a
//!    temp run directory (`CLOISTER_RUN_DIR`), PKI (`CLOISTER_PKI_DIR`) and allocator pool
//!    (`CLOISTER_ALLOCATOR_CONFIG`), so nothing touches the host's `/run/cloister`;
//! 3. creates a key whose policy allows Decrypt only to an enclave whose image has the sample
//!    image's PCR0 (`kms:RecipientAttestation:ImageSha384`) and that runs with the chosen
//!    isolation (`cloister:RecipientAttestation:Isolation`), and encrypts a fresh random secret;
//! 4. runs the sample enclave (`--isolation process`, the default, or `vm`: a QEMU microVM
//!    booting the kernel of a blobs directory, `--blobs DIR` or `CLOISTER_BLOBS`), sends it the credentials, ciphertext, proxy
//!    port and a fresh challenge, and checks its answer: `HMAC-SHA256(secret, challenge)` and an
//!    attestation document (verified against the PKI root) with that challenge as nonce, the
//!    HMAC as user data and the image's PCR0;
//! 5. runs the modified image the same way and checks that KMS refused it with
//!    `AccessDeniedException`;
//! 6. terminates both enclaves, stops the proxy and the key service, checks that no enclave,
//!    monitor or socket is left, and removes the temp directories.
//!
//! Inputs ([`DemoInputs`]): the blobs are found as `build-enclave` finds them
//! ([`cloister_image_builder::blobs::locate`]: `--blobs`, `CLOISTER_BLOBS`, `NITRO_CLI_BLOBS`,
//! `<executable>/../share/cloister/blobs`, `/usr/share/cloister/blobs`), the sample app in
//! Cloister's data directory (`<executable>/../share/cloister`, `/usr/share/cloister`, or the
//! parent of a blobs directory named `.../share/cloister/blobs`). Process isolation needs no
//! kernel (the images carry an empty kernel section); `--isolation vm` needs blobs with one.
//! Nothing runs cargo, with one exception for developers: a `cloister` that is a cargo build
//! output of its own source tree (`cargo run --release -- demo`) and finds nothing installed
//! builds init and the sample app from that tree
//! ([`cloister_init::static_build::source_tree_of`]); an installed or copied binary reports
//! E610 / E814 instead, saying how to install them.
//!
//! Every step prints its duration in milliseconds. `--pause` waits for Enter once the sample
//! enclave runs, to inspect it. SIGINT or SIGTERM at any point tears down what the demo started
//! (enclaves through terminate, the proxy, the key service, the temp directories) and exits
//! with status 130 (E812).

mod config;
mod enclaves;
mod error;
mod images;
mod inputs;
mod interrupt;
mod services;
mod steps;

pub use config::{DemoOptions, SAMPLE_APP_FILE};
pub use error::{DemoError, DemoResult, Reporter};
pub use interrupt::INTERRUPTED_STATUS;

use cloister_runtime::allocator::{format_cpu_list, Pool};
use config::{ms, Paths};
use enclaves::check_nothing_left;
use error::err;
use images::{build_images, print_pcrs};
use inputs::DemoInputs;
use interrupt::{check_interrupted, exit_if_interrupted, watch_signals};
use services::{report_proxy, Services};
use std::time::Instant;
use steps::with_services;

/// Runs the demo (see the crate comment). `report` prints the error the demo exits on by itself
/// after SIGINT or SIGTERM (status [`INTERRUPTED_STATUS`]).
pub fn run(opts: &DemoOptions, report: &Reporter) -> DemoResult<()> {
    let total = Instant::now();
    let inputs = DemoInputs::find(opts)?;
    let temp = tempfile::Builder::new()
        .prefix("cloister-demo")
        .tempdir()
        .map_err(|e| err(DemoError::Setup, format!("temp directory: {e}")))?;
    let paths = Paths {
        images: temp.path().join("images"),
        run: temp.path().join("run"),
        pki: temp.path().join("pki"),
        kms_data: temp.path().join("kms-data"),
    };
    for d in [&paths.images, &paths.run, &paths.kms_data] {
        std::fs::create_dir_all(d)
            .map_err(|e| err(DemoError::Setup, format!("{}: {e}", d.display())))?;
    }
    let alloc = temp.path().join("allocator.yaml");
    // The host's default enclave CPUs (whole cores; CPU 0's core stays with the host).
    let cpus = format_cpu_list(&Pool::host_default().cpus);
    std::fs::write(
        &alloc,
        format!(
            "memory_mib: {}\ncpu_pool: \"{cpus}\"\n",
            opts.memory.saturating_mul(2).max(256)
        ),
    )
    .map_err(|e| err(DemoError::Setup, format!("{}: {e}", alloc.display())))?;
    // The demo's own directories, for this process's runtime (the allocator, the monitors it
    // launches, which take the configuration from their launch) and its vsock clients.
    cloister_runtime::RuntimeConfig::clone(&cloister_runtime::RuntimeConfig::current())
        .with_run_dir(&paths.run)
        .with_pki_dir(&paths.pki)
        .with_allocator_config(&alloc)
        .install();

    let unwound = watch_signals(
        paths.run.clone(),
        temp.path().to_owned(),
        opts.keep_temp,
        report.clone(),
    )?;

    println!(
        "Cloister demo: attestation-bound key release to a {}-isolated enclave",
        opts.isolation.as_str()
    );
    println!("  workspace: {}", temp.path().display());

    let result = demo_steps(opts, &paths, &inputs);
    if opts.keep_temp {
        let kept = temp.keep();
        println!("  kept temp directory {}", kept.display());
    } else if let Err(e) = temp.close() {
        println!("  warning: removing the temp directory: {e}");
    }
    exit_if_interrupted(&unwound, report);
    result?;
    println!(
        "Demo complete in {} ms: the secret went only to the attested image.",
        ms(total)
    );
    Ok(())
}

fn demo_steps(opts: &DemoOptions, paths: &Paths, inputs: &DemoInputs) -> DemoResult<()> {
    // 1. Images.
    let t = Instant::now();
    println!("[1/6] Build the enclave images");
    let blobs = inputs.blobs()?;
    println!("  blobs: {}", inputs.blobs_note);
    println!("  sample app: {}", inputs.app_note);
    let images = build_images(&paths.images, &blobs, &inputs.sample_app)?;
    println!("  kernel section: {}", images.kernel_note);
    print_pcrs("sample.eif", &images.genuine_pcrs);
    print_pcrs("modified.eif", &images.modified_pcrs);
    println!("  step 1: {} ms", ms(t));
    check_interrupted()?;

    let services = Services::start(paths)?;
    let fabric = services.fabric.clone();

    let outcome = with_services(opts, paths, &services, &images);

    // 6 (second half). Stop the proxy and the key service whatever happened.
    let t = Instant::now();
    let proxy_summary = services.stop();
    let mut enclaves = outcome?;
    report_proxy(proxy_summary)?;
    println!("  key service stopped");
    enclaves.started.clear();
    check_nothing_left(&paths.run, &fabric)?;
    println!("  run directory clean: no enclave record, monitor or vsock socket left");
    println!(
        "  proxy and key service stopped, checks done in {} ms",
        ms(t)
    );
    Ok(())
}
