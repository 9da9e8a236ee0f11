//! `cloister demo` (E8xx): the whole path on embedded defaults, self-contained.
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

use crate::errors::{CliError, CliResult, ErrorInfo, ExitKind};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use clap::{Args, Subcommand};
use cloister_attestation::{Verifier, VerifyOptions};
use cloister_cpio::CpioWriter;
use cloister_eif::{EifBuilder, Measurements};
use cloister_image_builder::blobs;
use cloister_kms::config::{AttestationConfig, Config, CredentialConfig};
use cloister_proxy::{AllowEntry, Allowlist, ProxyConfig, VsockProxy};
use cloister_runtime::allocator::{format_cpu_list, CpuRequest, Pool};
use cloister_runtime::lifecycle::{self, MonitorCommand, RunOptions};
use cloister_runtime::{EnclaveRecord, Isolation, RunDir};
use cloister_sample_app::{SecretReply, SecretRequest, DEFAULT_PORT};
use cloister_sdk::kms_client::{
    Credentials, Endpoint, KmsClient, KmsClientConfig, Route, DEFAULT_TIMEOUT,
};
use cloister_sdk::{Transport, VsockAddr, VsockStream};
use std::io::BufReader;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant, SystemTime};
use zeroize::Zeroizing;

/// The region the demo's key service answers as.
const REGION: &str = "us-east-1";
/// The demo's account.
const ACCOUNT: &str = "111122223333";
/// The IAM user name of the enclave application's credential.
const APP_USER: &str = "demo-app";
/// The vsock port of the demo's vsock-proxy (inside the demo's private fabric).
const PROXY_PORT: u32 = 8000;
/// The sample app's file name in Cloister's data directory (`share/cloister/`).
pub const SAMPLE_APP_FILE: &str = "cloister-sample-app";
/// How long the enclave's listener may take to come up.
const CONNECT_DEADLINE: Duration = Duration::from_secs(20);
/// How long the enclave may take to answer (attest, KMS round trip, attest again).
const REPLY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the monitors may take to disappear after termination.
const TEARDOWN_DEADLINE: Duration = Duration::from_secs(10);
/// After SIGINT / SIGTERM, how long the demo may take to unwind before the signal thread
/// removes what is left itself.
const INTERRUPT_GRACE: Duration = Duration::from_secs(30);
/// Exit status after SIGINT / SIGTERM (128 + SIGINT, as shells report Ctrl-C).
pub const INTERRUPTED_STATUS: i32 = 130;
/// How often a wait checks whether the demo was interrupted.
const INTERRUPT_POLL: Duration = Duration::from_millis(50);

/// Set once SIGINT or SIGTERM arrived.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Subcommands of this area.
#[derive(Debug, Subcommand)]
pub enum DemoCommand {
    /// Run the end-to-end demo: build an image, start KMS and vsock-proxy, release a secret to
    /// the attested enclave, and show that a modified image is refused. Needs root.
    Demo(DemoArgs),
}

/// `cloister demo` flags.
#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Memory of each demo enclave, in MiB.
    #[arg(long, value_name = "MiB", default_value_t = 256)]
    pub memory: u64,
    /// Keep the temp directory (images, run dir, KMS data) and print its path.
    #[arg(long)]
    pub keep_temp: bool,
    /// Isolation of the demo enclaves: process or vm (a QEMU microVM; needs a blobs directory
    /// with a kernel). The key policy requires this isolation.
    #[arg(long, value_name = "KIND", default_value = "process")]
    pub isolation: Isolation,
    /// Blobs directory (init, cmdline; for --isolation vm also a kernel and its modules, as
    /// `cloister blobs prepare` makes). Default: CLOISTER_BLOBS, NITRO_CLI_BLOBS,
    /// <executable>/../share/cloister/blobs, /usr/share/cloister/blobs.
    #[arg(long, value_name = "DIR")]
    pub blobs: Option<PathBuf>,
    /// Once the sample enclave runs, wait for Enter before going on (to inspect it with
    /// describe-enclaves; the run directory is printed).
    #[arg(long)]
    pub pause: bool,
}

/// Error codes of this area.
pub const CODES: &[ErrorInfo] = &[
    ErrorInfo { code: "E801", exit: ExitKind::Failure, summary: "Cannot build the demo images", explanation: "Reading the blobs (init, cmdline) or the sample app, or writing the images, failed. A `cloister` run from its own source tree (`cargo run -- demo`) with nothing installed builds init and the sample app with cargo first; the message then carries cargo's output." },
    ErrorInfo { code: "E802", exit: ExitKind::System, summary: "Cannot set up the demo environment", explanation: "The temp directory, run directory, PKI or allocator pool of the demo could not be created, or the async runtime could not start." },
    ErrorInfo { code: "E803", exit: ExitKind::System, summary: "Demo key service failed", explanation: "The in-process key service could not open its temp data directory, load the PKI root as its attestation trust anchor, or listen on 127.0.0.1." },
    ErrorInfo { code: "E804", exit: ExitKind::System, summary: "Demo vsock-proxy failed", explanation: "vsock-proxy could not listen on its port in the demo's vsock fabric, or stopped with an error." },
    ErrorInfo { code: "E805", exit: ExitKind::Failure, summary: "Demo key setup failed", explanation: "CreateKey (with the attestation-bound key policy) or Encrypt on the demo key service failed." },
    ErrorInfo { code: "E806", exit: ExitKind::Failure, summary: "Demo enclave failed to start", explanation: "run-enclave failed for a demo image (see the E3xx code quoted in the message): enclaves need root, namespaces and cgroups; `cloister explain` on the quoted code says more." },
    ErrorInfo { code: "E807", exit: ExitKind::Failure, summary: "Demo enclave did not answer", explanation: "The demo could not reach the sample app on its vsock port, or it sent no well-formed answer in time." },
    ErrorInfo { code: "E808", exit: ExitKind::VerificationFailed, summary: "Secret not released to the genuine image", explanation: "The sample enclave, whose PCR0 the key policy names, reported an error instead of the proof that it holds the secret. The message carries the KMS error type." },
    ErrorInfo { code: "E809", exit: ExitKind::VerificationFailed, summary: "Enclave proof rejected", explanation: "The enclave's answer did not verify: its attestation document does not chain to the demo's PKI root, carries another nonce, PCR0 or user data, or its HMAC over the challenge is not the one the secret gives." },
    ErrorInfo { code: "E810", exit: ExitKind::VerificationFailed, summary: "Modified image was not refused", explanation: "The image with a different PCR0 either received the secret or failed with something other than AccessDeniedException: the key policy's attestation condition was not enforced as expected." },
    ErrorInfo { code: "E811", exit: ExitKind::System, summary: "Demo left something behind", explanation: "After terminating the enclaves and stopping the proxy, an enclave record, a live monitor process or a vsock socket was still present in the demo's run directory." },
    ErrorInfo { code: "E812", exit: ExitKind::Failure, summary: "Demo interrupted", explanation: "SIGINT (Ctrl-C) or SIGTERM arrived: the demo terminated its enclaves, stopped the vsock-proxy and the key service, removed its temp directory (unless --keep-temp) and exited with status 130." },
    ErrorInfo { code: "E813", exit: ExitKind::Usage, summary: "VM demo needs a kernel", explanation: "`cloister demo --isolation vm` boots the EIF's kernel in QEMU, so the images need a real one, which Cloister's installed blobs (made for process enclaves) do not have: `cloister blobs prepare --output DIR --kernel-version latest` fetches Debian's cloud kernel and writes a blobs directory with it, its vsock modules and the installed init; pass it with --blobs DIR or CLOISTER_BLOBS." },
    ErrorInfo { code: "E814", exit: ExitKind::Unavailable, summary: "Demo sample app not installed", explanation: "The demo's enclave application (cloister-sample-app) is installed with Cloister, in <dir of the cloister executable>/../share/cloister or /usr/share/cloister; neither has it. Install Cloister's package (cloister_*.deb) or unpack its release tarball; in a source tree, `cargo run --release -- demo` builds it." },
];

/// Runs one subcommand.
pub fn run(command: DemoCommand) -> CliResult<()> {
    match command {
        DemoCommand::Demo(args) => demo(&args),
    }
}

fn err(code: &'static str, e: impl std::fmt::Display) -> CliError {
    CliError::msg(code, e.to_string())
}

fn ms(t: Instant) -> u128 {
    t.elapsed().as_millis()
}

/// Terminates the demo's enclaves on every exit path.
struct Enclaves {
    run: RunDir,
    started: Vec<EnclaveRecord>,
}

impl Enclaves {
    fn terminate_all(&mut self) -> Result<(), String> {
        let mut errors = Vec::new();
        for rec in self.started.drain(..) {
            if let Err(e) = lifecycle::terminate(&self.run, &rec) {
                errors.push(format!("{}: {e}", rec.enclave_id));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }
}

impl Drop for Enclaves {
    fn drop(&mut self) {
        let _ = self.terminate_all();
    }
}

/// Paths of the demo's private environment.
struct Paths {
    images: PathBuf,
    run: PathBuf,
    pki: PathBuf,
    kms_data: PathBuf,
}

fn demo(args: &DemoArgs) -> CliResult<()> {
    let total = Instant::now();
    let inputs = DemoInputs::find(args)?;
    let temp = tempfile::Builder::new()
        .prefix("cloister-demo")
        .tempdir()
        .map_err(|e| err("E802", format!("temp directory: {e}")))?;
    let paths = Paths {
        images: temp.path().join("images"),
        run: temp.path().join("run"),
        pki: temp.path().join("pki"),
        kms_data: temp.path().join("kms-data"),
    };
    for d in [&paths.images, &paths.run, &paths.kms_data] {
        std::fs::create_dir_all(d).map_err(|e| err("E802", format!("{}: {e}", d.display())))?;
    }
    let alloc = temp.path().join("allocator.yaml");
    // The host's default enclave CPUs (whole cores; CPU 0's core stays with the host).
    let cpus = format_cpu_list(&Pool::host_default().cpus);
    std::fs::write(
        &alloc,
        format!(
            "memory_mib: {}\ncpu_pool: \"{cpus}\"\n",
            args.memory.saturating_mul(2).max(256)
        ),
    )
    .map_err(|e| err("E802", format!("{}: {e}", alloc.display())))?;
    // The monitors started below inherit these (and nothing here has spawned a thread yet).
    std::env::set_var(cloister_runtime::state::RUN_DIR_ENV, &paths.run);
    std::env::set_var(cloister_runtime::nsm::PKI_DIR_ENV, &paths.pki);
    std::env::set_var(cloister_runtime::allocator::CONFIG_ENV, &alloc);

    let unwound = watch_signals(paths.run.clone(), temp.path().to_owned(), args.keep_temp)?;

    println!(
        "Cloister demo: attestation-bound key release to a {}-isolated enclave",
        args.isolation.as_str()
    );
    println!("  workspace: {}", temp.path().display());

    let result = demo_steps(args, &paths, &inputs);
    if args.keep_temp {
        let kept = temp.keep();
        println!("  kept temp directory {}", kept.display());
    } else if let Err(e) = temp.close() {
        println!("  warning: removing the temp directory: {e}");
    }
    if INTERRUPTED.load(Ordering::SeqCst) {
        let _ = unwound.send(());
        err(
            "E812",
            "interrupted: enclaves, vsock-proxy, key service and temp directory are gone",
        )
        .report();
        std::process::exit(INTERRUPTED_STATUS);
    }
    result?;
    println!(
        "Demo complete in {} ms: the secret went only to the attested image.",
        ms(total)
    );
    Ok(())
}

fn demo_steps(args: &DemoArgs, paths: &Paths, inputs: &DemoInputs) -> CliResult<()> {
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

    // 2. PKI, key service, vsock-proxy.
    let t = Instant::now();
    println!("[2/6] Start the key service and vsock-proxy");
    let pki = cloister_runtime::nsm::open_pki(&paths.pki, &paths.run)
        .map_err(|e| err("E802", format!("PKI: {e}")))?;
    let root_der = pki.root_der().to_vec();
    let app_credential = CredentialConfig {
        access_key_id: format!("AKIA{}", hex::encode_upper(random::<8>()?)),
        secret_access_key: hex::encode(random::<20>()?),
        principal: APP_USER.into(),
        session_token: None,
    };
    let config = Config {
        region: Some(REGION.into()),
        other_regions: Vec::new(),
        account_id: Some(ACCOUNT.into()),
        master_key_path: None,
        attestation: AttestationConfig {
            trust_anchors: vec![pki.root_cert_path()],
            include_aws_nitro_root: false,
            max_age_seconds: None,
        },
        credentials: vec![app_credential.clone()],
        server: Default::default(),
        store: Default::default(),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| err("E802", format!("async runtime: {e}")))?;
    let (app, admin) = cloister_kms::server::open(&paths.kms_data, &config)
        .map_err(|e| err("E803", format!("key service: {e}")))?;
    let (listener, kms_addr) = rt
        .block_on(cloister_kms::server::bind("127.0.0.1:0"))
        .map_err(|e| err("E803", format!("key service: {e}")))?;
    let (kms_stop, kms_stopped) = tokio::sync::oneshot::channel::<()>();
    let kms_task = rt.spawn(cloister_kms::server::serve(listener, app, None, async {
        let _ = kms_stopped.await;
    }));
    println!("  key service: http://{kms_addr} (region {REGION}, trust anchor: the demo PKI root)");

    let fabric = RunDir::new(&paths.run).vsock_dir();
    std::fs::create_dir_all(&fabric)
        .map_err(|e| err("E802", format!("{}: {e}", fabric.display())))?;
    let mut proxy_config = ProxyConfig::new(
        PROXY_PORT,
        "127.0.0.1",
        kms_addr.port(),
        Allowlist {
            allowlist: vec![AllowEntry {
                address: "127.0.0.1".into(),
                port: kms_addr.port(),
            }],
        },
    );
    proxy_config.transport = Some(Transport::Fabric(fabric.clone()));
    let (proxy_stop, proxy_stopped) = tokio::sync::oneshot::channel::<()>();
    let proxy_task = rt.spawn(VsockProxy::new(proxy_config).run(async {
        let _ = proxy_stopped.await;
    }));
    let proxy_socket = fabric.join(format!("3_{PROXY_PORT}.sock"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !proxy_socket.exists() {
        if INTERRUPTED.load(Ordering::SeqCst) {
            break;
        }
        if proxy_task.is_finished() || Instant::now() > deadline {
            let why = if proxy_task.is_finished() {
                match rt.block_on(proxy_task) {
                    Ok(Err(e)) => format!("{e}: {}", chain(&e)),
                    Ok(Ok(_)) => "stopped".into(),
                    Err(e) => e.to_string(),
                }
            } else {
                "its socket did not appear".into()
            };
            return Err(err(
                "E804",
                format!("vsock-proxy on port {PROXY_PORT}: {why}"),
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    println!("  vsock-proxy: vsock port {PROXY_PORT} -> {kms_addr} (allowlist: only {kms_addr})");
    println!("  step 2: {} ms", ms(t));

    let outcome = with_services(
        args,
        paths,
        &rt,
        kms_addr,
        &admin,
        &app_credential,
        &root_der,
        &images,
    );

    // 6 (second half). Stop the proxy and the key service whatever happened.
    let t = Instant::now();
    let _ = proxy_stop.send(());
    let proxy_summary = rt.block_on(proxy_task);
    let _ = kms_stop.send(());
    let _ = rt.block_on(kms_task);
    rt.shutdown_timeout(Duration::from_secs(2));
    let mut enclaves = outcome?;
    match proxy_summary {
        Ok(Ok(s)) => println!(
            "  vsock-proxy stopped ({} connection(s) relayed)",
            s.accepted
        ),
        Ok(Err(e)) => return Err(err("E804", format!("vsock-proxy: {e}: {}", chain(&e)))),
        Err(e) => return Err(err("E804", format!("vsock-proxy task: {e}"))),
    }
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

/// Steps 3 to 6 (the enclave half of 6); returns the (already terminated) enclave guard.
#[allow(clippy::too_many_arguments)]
fn with_services(
    args: &DemoArgs,
    paths: &Paths,
    rt: &tokio::runtime::Runtime,
    kms_addr: SocketAddr,
    admin: &cloister_kms::store::AdminCredential,
    app_credential: &CredentialConfig,
    root_der: &[u8],
    images: &Images,
) -> CliResult<Enclaves> {
    // 3. Key and ciphertext.
    let t = Instant::now();
    println!("[3/6] Create an attestation-bound key and encrypt a secret");
    let endpoint = format!("http://{kms_addr}");
    let admin_client = KmsClient::new(
        KmsClientConfig {
            region: REGION.into(),
            endpoint: Endpoint::parse(&endpoint).map_err(|e| err("E805", e))?,
            route: Route::Tcp(kms_addr),
            credentials: Credentials {
                access_key_id: admin.access_key_id.clone(),
                secret_access_key: admin.secret_access_key.clone(),
                session_token: None,
            },
            extra_roots: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
        },
        Arc::new(|_: &[u8]| -> Result<Vec<u8>, String> { Err("the host has no NSM".into()) }),
    )
    .map_err(|e| err("E805", e))?;
    let pcr0_hex = images.genuine_pcrs.pcr0_hex();
    let policy = serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "KeyAdministration", "Effect": "Allow",
             "Principal": {"AWS": format!("arn:aws:iam::{ACCOUNT}:root")},
             "Action": ["kms:Encrypt", "kms:DescribeKey", "kms:GetKeyPolicy", "kms:PutKeyPolicy",
                        "kms:EnableKey", "kms:DisableKey", "kms:ScheduleKeyDeletion"],
             "Resource": "*"},
            {"Sid": "DecryptOnlyInTheSampleEnclave", "Effect": "Allow",
             "Principal": {"AWS": format!("arn:aws:iam::{ACCOUNT}:user/{APP_USER}")},
             "Action": "kms:Decrypt", "Resource": "*",
             "Condition": {
                 "StringEqualsIgnoreCase": {"kms:RecipientAttestation:ImageSha384": pcr0_hex},
                 "StringEquals": {"cloister:RecipientAttestation:Isolation": args.isolation.as_str()}}}
        ]
    });
    let created = rt
        .block_on(
            admin_client.call(
                "CreateKey",
                serde_json::json!({"Policy": policy.to_string(), "Description": "cloister demo"})
                    .to_string()
                    .as_bytes(),
            ),
        )
        .map_err(|e| err("E805", format!("CreateKey: {e}")))?;
    let created: serde_json::Value =
        serde_json::from_slice(&created).map_err(|e| err("E805", format!("CreateKey: {e}")))?;
    let key_id = created["KeyMetadata"]["KeyId"]
        .as_str()
        .ok_or_else(|| err("E805", "CreateKey answered without KeyMetadata.KeyId"))?
        .to_owned();
    println!(
        "  key {key_id}: Decrypt only with kms:RecipientAttestation:ImageSha384 = PCR0 of \
         sample.eif and cloister:RecipientAttestation:Isolation = {}",
        args.isolation.as_str()
    );
    let secret = Zeroizing::new(hex::encode(random::<24>()?).into_bytes());
    let encrypted = rt
        .block_on(
            admin_client.call(
                "Encrypt",
                serde_json::json!({"KeyId": key_id, "Plaintext": B64.encode(&secret[..])})
                    .to_string()
                    .as_bytes(),
            ),
        )
        .map_err(|e| err("E805", format!("Encrypt: {e}")))?;
    let encrypted: serde_json::Value =
        serde_json::from_slice(&encrypted).map_err(|e| err("E805", format!("Encrypt: {e}")))?;
    let ciphertext_b64 = encrypted["CiphertextBlob"]
        .as_str()
        .ok_or_else(|| err("E805", "Encrypt answered without CiphertextBlob"))?
        .to_owned();
    println!(
        "  encrypted a fresh {}-byte random secret on the host ({} bytes of ciphertext)",
        secret.len(),
        B64.decode(&ciphertext_b64).map(|b| b.len()).unwrap_or(0)
    );
    println!("  step 3: {} ms", ms(t));
    check_interrupted()?;

    let mut enclaves = Enclaves {
        run: RunDir::new(&paths.run),
        started: Vec::new(),
    };
    let request = |challenge: &[u8]| SecretRequest {
        access_key_id: app_credential.access_key_id.clone(),
        secret_access_key: app_credential.secret_access_key.clone(),
        region: REGION.into(),
        endpoint: endpoint.clone(),
        proxy_port: PROXY_PORT,
        ciphertext_b64: ciphertext_b64.clone(),
        challenge_b64: B64.encode(challenge),
    };

    // 4. The genuine image.
    let t = Instant::now();
    println!("[4/6] Run sample.eif and ask it to prove it can get the secret");
    let rec = start_enclave(
        &mut enclaves,
        &images.genuine,
        "cloister-demo",
        args.memory,
        args.isolation,
    )?;
    println!(
        "  enclave {} (CID {}, {} MiB, {} isolation, monitor PID {}) booted in {} ms",
        rec.enclave_id,
        rec.cid,
        rec.memory_mib,
        args.isolation.as_str(),
        rec.monitor_pid,
        ms(t)
    );
    if args.pause {
        pause(&paths.run)?;
    }
    let challenge = random::<32>()?;
    let asked = Instant::now();
    let reply = exchange(&enclaves.run, &rec, &request(&challenge))?;
    let (mac, document) = match reply {
        SecretReply::Proof {
            hmac_b64,
            document_b64,
        } => (
            B64.decode(hmac_b64)
                .map_err(|e| err("E809", format!("HMAC: {e}")))?,
            B64.decode(document_b64)
                .map_err(|e| err("E809", format!("document: {e}")))?,
        ),
        SecretReply::Error {
            error_type,
            message,
        } => {
            return Err(err(
                "E808",
                format!("the sample enclave reported {error_type}: {message}"),
            ))
        }
    };
    println!(
        "  enclave answered in {} ms: KMS Decrypt with Recipient through vsock-proxy succeeded",
        ms(asked)
    );
    let verifier = Verifier::new(vec![root_der.to_vec()]).map_err(|e| err("E809", e))?;
    let verified = verifier
        .verify(
            &document,
            &VerifyOptions::at(SystemTime::now())
                .with_nonce(challenge.to_vec())
                .with_pcr(0, images.genuine_pcrs.pcr0.to_vec()),
        )
        .map_err(|e| err("E809", format!("attestation document: {e}")))?;
    if verified.user_data() != Some(&mac[..]) {
        return Err(err("E809", "the document's user_data is not the HMAC sent"));
    }
    if !cloister_sample_app::verify_proof(&secret, &challenge, &mac) {
        return Err(err("E809", "HMAC-SHA256(secret, challenge) does not match"));
    }
    println!(
        "  attestation document verified: chains to the demo PKI root, module {}, nonce = challenge",
        verified.module_id()
    );
    println!(
        "  PCR0 in the document = {}",
        hex::encode(verified.pcr(0).unwrap_or_default())
    );
    println!(
        "  HMAC-SHA256(secret, challenge) = {} (matches: the enclave holds the secret)",
        hex::encode(&mac)
    );
    println!("  step 4: {} ms", ms(t));
    check_interrupted()?;

    // 5. The modified image.
    let t = Instant::now();
    println!("[5/6] Run modified.eif (one env line differs, so PCR0 differs) the same way");
    let rec = start_enclave(
        &mut enclaves,
        &images.modified,
        "cloister-demo-modified",
        args.memory,
        args.isolation,
    )?;
    println!(
        "  enclave {} (CID {}) booted in {} ms",
        rec.enclave_id,
        rec.cid,
        ms(t)
    );
    let challenge = random::<32>()?;
    match exchange(&enclaves.run, &rec, &request(&challenge))? {
        SecretReply::Error {
            error_type,
            message,
        } if error_type == "AccessDeniedException" => {
            println!("  KMS refused the modified image: {error_type}: {message}");
        }
        SecretReply::Error {
            error_type,
            message,
        } => {
            return Err(err(
                "E810",
                format!(
                    "expected AccessDeniedException, the enclave reported {error_type}: {message}"
                ),
            ))
        }
        SecretReply::Proof { .. } => {
            return Err(err("E810", "the modified image received the secret"));
        }
    }
    println!("  step 5: {} ms", ms(t));
    check_interrupted()?;

    // 6. Tear down the enclaves.
    let t = Instant::now();
    println!("[6/6] Tear down");
    let monitors: Vec<u32> = enclaves.started.iter().map(|r| r.monitor_pid).collect();
    let count = enclaves.started.len();
    enclaves
        .terminate_all()
        .map_err(|e| err("E811", format!("terminate: {e}")))?;
    let deadline = Instant::now() + TEARDOWN_DEADLINE;
    let mut running = monitors;
    loop {
        running.retain(|pid| !monitor_gone(*pid));
        if running.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            return Err(err(
                "E811",
                format!("enclave monitors still running: {running:?}"),
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    println!(
        "  terminated {count} enclaves in {} ms; their monitors are gone",
        ms(t)
    );
    Ok(enclaves)
}

/// True once a monitor has exited. Monitors are this process's children (run-enclave spawns
/// them), so an exited one is reaped here; otherwise `/proc` says whether it still runs.
fn monitor_gone(pid: u32) -> bool {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    let Ok(raw) = i32::try_from(pid) else {
        return true;
    };
    match waitpid(nix::unistd::Pid::from_raw(raw), Some(WaitPidFlag::WNOHANG)) {
        Ok(WaitStatus::StillAlive) => false,
        Ok(_) => true,
        Err(_) => match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            // The state follows the parenthesised command name; Z is a zombie.
            Ok(stat) => stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
            Err(_) => true,
        },
    }
}

/// Runs one enclave (not in debug mode: its documents carry the real PCRs).
fn start_enclave(
    enclaves: &mut Enclaves,
    eif: &Path,
    name: &str,
    memory_mib: u64,
    isolation: Isolation,
) -> CliResult<EnclaveRecord> {
    check_interrupted()?;
    let program = std::env::current_exe().map_err(|e| err("E806", format!("current exe: {e}")))?;
    let monitor = MonitorCommand {
        program,
        args: vec![
            cloister_runtime::MONITOR_SUBCOMMAND.to_owned(),
            "--enclave-id".to_owned(),
        ],
    };
    // One whole core (a CPU on hosts without SMT).
    let per_core = Pool::host_default().cores.first().map_or(1, Vec::len);
    let opts = RunOptions {
        eif_path: eif.to_owned(),
        cpus: CpuRequest::Count(u32::try_from(per_core).unwrap_or(1)),
        memory_mib,
        cid: 0,
        debug_mode: false,
        name: Some(name.to_owned()),
        isolation,
    };
    let rec = lifecycle::run_enclave(&enclaves.run, &opts, &monitor).map_err(|e| {
        let code = e.kind().map(|k| format!("{k:?}")).unwrap_or_default();
        err("E806", format!("{}: {e} {code}", eif.display()))
    })?;
    enclaves.started.push(rec.clone());
    // A signal that arrived while it booted: the guard terminates it on the way out.
    check_interrupted()?;
    Ok(rec)
}

/// Sends the request to the enclave's sample app and reads its answer.
fn exchange(run: &RunDir, rec: &EnclaveRecord, request: &SecretRequest) -> CliResult<SecretReply> {
    let fabric = run.vsock_dir();
    let cid = u32::try_from(rec.cid).map_err(|_| err("E807", format!("CID {}", rec.cid)))?;
    let deadline = Instant::now() + CONNECT_DEADLINE;
    let stream = loop {
        match VsockStream::connect_fabric(&fabric, VsockAddr::new(cid, DEFAULT_PORT)) {
            Ok(s) => break s,
            Err(e) if Instant::now() > deadline => {
                return Err(err("E807", format!("connect to {cid}:{DEFAULT_PORT}: {e}")))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    };
    stream
        .set_read_timeout(Some(REPLY_TIMEOUT))
        .map_err(|e| err("E807", e))?;
    let mut writer = &stream;
    cloister_sample_app::write_message(&mut writer, request)
        .map_err(|e| err("E807", format!("send: {e}")))?;
    let mut reader = BufReader::new(&stream);
    cloister_sample_app::read_message(&mut reader).map_err(|e| {
        err(
            "E807",
            format!("answer from {cid}:{DEFAULT_PORT}: {e}: {}", chain(&e)),
        )
    })
}

/// What the demo's images are built from.
#[derive(Debug)]
struct DemoInputs {
    /// The blobs directory, or `None` for the source tree's own init (see the module comment).
    blobs_dir: Option<PathBuf>,
    /// The source tree's init, when `blobs_dir` is `None`.
    built_init: Option<PathBuf>,
    /// Where the blobs came from, for the output.
    blobs_note: String,
    /// The static sample app.
    sample_app: PathBuf,
    /// Where it came from, for the output.
    app_note: String,
}

impl DemoInputs {
    /// Finds the blobs and the sample app (see the module comment), failing early: E610 (no
    /// blobs installed), E813 (vm without a kernel), E814 (no sample app installed), E801 (a
    /// source-tree build failed).
    fn find(args: &DemoArgs) -> CliResult<DemoInputs> {
        let exe = std::env::current_exe().ok();
        let source_tree = exe
            .as_deref()
            .and_then(cloister_init::static_build::source_tree_of);
        Self::find_with(
            args,
            blobs::locate(args.blobs.as_deref()),
            &blobs::share_dirs(),
            source_tree,
        )
    }

    fn find_with(
        args: &DemoArgs,
        located: Result<blobs::Located, blobs::BlobsError>,
        share: &[(PathBuf, blobs::BlobsOrigin)],
        source_tree: Option<PathBuf>,
    ) -> CliResult<DemoInputs> {
        let vm = args.isolation == Isolation::Vm;
        let (blobs_dir, built_init, blobs_note) = match located {
            Ok(found) => {
                let loaded = blobs::Blobs::load(&found.dir)
                    .map_err(|e| err(if vm { "E813" } else { "E610" }, e))?;
                if vm {
                    loaded
                        .require_kernel(&found.dir)
                        .map_err(|e| err("E813", e))?;
                }
                let note = format!("{} ({})", found.dir.display(), found.origin);
                (Some(found.dir), None, note)
            }
            Err(e @ blobs::BlobsError::NotInstalled { .. }) => {
                if vm {
                    return Err(err(
                        "E813",
                        format!(
                            "--isolation vm boots a real kernel: give --blobs DIR or \
                             {BLOBS_ENV} (a directory `cloister blobs prepare` made): {e}",
                            BLOBS_ENV = blobs::BLOBS_ENV
                        ),
                    ));
                }
                let Some(tree) = &source_tree else {
                    return Err(err("E610", e));
                };
                let init = cloister_init::build_static_init()
                    .map_err(|e| err("E801", format!("static init: {e}")))?;
                let note = format!(
                    "none installed; init built with cargo in the source tree {} (an installed \
                     cloister never builds anything)",
                    tree.display()
                );
                (None, Some(init), note)
            }
            Err(e) => return Err(err(if vm { "E813" } else { "E610" }, e)),
        };
        // The sample app: Cloister's data directories, then the one holding the blobs.
        let mut dirs: Vec<PathBuf> = share.iter().map(|(d, _)| d.clone()).collect();
        if let Some(parent) = blobs_dir.as_deref().and_then(Path::parent) {
            dirs.push(parent.to_owned());
        }
        let installed = dirs
            .iter()
            .map(|d| d.join(SAMPLE_APP_FILE))
            .find(|p| p.is_file());
        let (sample_app, app_note) = match (installed, &source_tree) {
            (Some(p), _) => {
                let note = p.display().to_string();
                (p, note)
            }
            (None, Some(tree)) => {
                let p = cloister_sample_app::build_static_sample_app()
                    .map_err(|e| err("E801", format!("static sample app: {e}")))?;
                let note = format!(
                    "{} (built with cargo in the source tree {})",
                    p.display(),
                    tree.display()
                );
                (p, note)
            }
            (None, None) => {
                let looked: Vec<String> = dirs
                    .iter()
                    .map(|d| d.join(SAMPLE_APP_FILE).display().to_string())
                    .collect();
                return Err(err(
                    "E814",
                    format!(
                        "{SAMPLE_APP_FILE} is not installed (looked for {}): install Cloister's \
                         package or unpack its release tarball",
                        looked.join(", ")
                    ),
                ));
            }
        };
        Ok(DemoInputs {
            blobs_dir,
            built_init,
            blobs_note,
            sample_app,
            app_note,
        })
    }

    /// The blobs the images are built with.
    fn blobs(&self) -> CliResult<blobs::Blobs> {
        match (&self.blobs_dir, &self.built_init) {
            (Some(dir), _) => blobs::Blobs::load(dir).map_err(|e| err("E610", e)),
            (None, Some(init)) => Ok(blobs::Blobs {
                kernel: None,
                cmdline: blobs::shipped_cmdline(),
                init: init.clone(),
                nsm_ko: None,
                modules: Vec::new(),
            }),
            (None, None) => Err(err("E610", "no blobs")),
        }
    }
}

/// Fails with E812 once SIGINT or SIGTERM arrived.
fn check_interrupted() -> CliResult<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        Err(err("E812", "interrupted"))
    } else {
        Ok(())
    }
}

/// Waits for Enter on stdin (or its end), or for an interrupt.
fn pause(run: &Path) -> CliResult<()> {
    println!(
        "  paused: the enclave runs (CLOISTER_RUN_DIR={} cloister describe-enclaves); press \
         Enter to go on",
        run.display()
    );
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("demo-pause".into())
        .spawn(move || {
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
            let _ = tx.send(());
        })
        .map_err(|e| err("E802", format!("pause thread: {e}")))?;
    loop {
        check_interrupted()?;
        match rx.recv_timeout(INTERRUPT_POLL) {
            Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => return Ok(()),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
    }
}

/// Terminates every enclave recorded in the demo's run directory (booting ones included).
fn terminate_recorded(run: &Path) {
    let run = RunDir::new(run);
    if let Ok(records) = lifecycle::describe(&run) {
        for rec in records {
            let _ = lifecycle::terminate(&run, &rec);
        }
    }
}

/// Catches SIGINT and SIGTERM on a thread of its own. On a signal it marks the demo
/// interrupted and terminates the recorded enclaves, which unblocks whatever the demo waits
/// for (a boot, an answer); the demo then unwinds through its normal teardown and exits with
/// [`INTERRUPTED_STATUS`]. If it has not done so after [`INTERRUPT_GRACE`] (a message on the
/// returned channel), the thread removes what is left itself and exits.
fn watch_signals(run: PathBuf, temp: PathBuf, keep: bool) -> CliResult<mpsc::Sender<()>> {
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    std::thread::Builder::new()
        .name("demo-signals".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return;
                }
            };
            let name = rt.block_on(async {
                use tokio::signal::unix::{signal, SignalKind};
                let (mut int, mut term) = match (
                    signal(SignalKind::interrupt()),
                    signal(SignalKind::terminate()),
                ) {
                    (Ok(i), Ok(t)) => (i, t),
                    (Err(e), _) | (_, Err(e)) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return None;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                tokio::select! {
                    _ = int.recv() => Some("SIGINT"),
                    _ = term.recv() => Some("SIGTERM"),
                }
            });
            let Some(name) = name else { return };
            INTERRUPTED.store(true, Ordering::SeqCst);
            eprintln!("cloister demo: {name}: tearing down");
            terminate_recorded(&run);
            if let Err(mpsc::RecvTimeoutError::Timeout) = done_rx.recv_timeout(INTERRUPT_GRACE) {
                terminate_recorded(&run);
                if !keep {
                    let _ = std::fs::remove_dir_all(&temp);
                }
                err(
                    "E812",
                    "interrupted; the demo did not unwind in time, removed what was left",
                )
                .report();
                std::process::exit(INTERRUPTED_STATUS);
            }
        })
        .map_err(|e| err("E802", format!("signal thread: {e}")))?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(done_tx),
        Ok(Err(e)) => Err(err("E802", format!("signal handlers: {e}"))),
        Err(_) => Err(err("E802", "signal handlers: the thread ended")),
    }
}

/// The demo images.
struct Images {
    genuine: PathBuf,
    modified: PathBuf,
    genuine_pcrs: Measurements,
    modified_pcrs: Measurements,
    kernel_note: String,
}

fn build_images(dir: &Path, blobs: &blobs::Blobs, app: &Path) -> CliResult<Images> {
    let read =
        |p: &Path| std::fs::read(p).map_err(|e| err("E801", format!("{}: {e}", p.display())));
    let app = read(app)?;
    let (kernel, kernel_note) = match &blobs.kernel {
        Some(k) => (
            read(k)?,
            format!(
                "{} with {} module(s) in the bootstrap ramdisk",
                k.display(),
                blobs.modules.len()
            ),
        ),
        None => (
            Vec::new(),
            "empty (the blobs have no kernel; process isolation boots none)".to_owned(),
        ),
    };
    let cmdline = blobs.cmdline.clone();
    let boot = cloister_image_builder::build::write_bootstrap_ramdisk(blobs, 0, Vec::new())
        .map_err(|e| err("E801", format!("bootstrap ramdisk: {e}")))?;
    let build = |name: &str, env: &str| -> CliResult<(PathBuf, Measurements)> {
        let cmd = format!("/sample-app\nserve\n{DEFAULT_PORT}\n");
        let user = ramdisk(|w| {
            w.file("cmd", 0o644, 0, 0, cmd.len() as u64, cmd.as_bytes())?;
            w.file("env", 0o644, 0, 0, env.len() as u64, env.as_bytes())?;
            w.dir("rootfs", 0o755, 0, 0)?;
            w.dir("rootfs/tmp", 0o1777, 0, 0)?;
            w.file("rootfs/sample-app", 0o755, 0, 0, app.len() as u64, &app[..])?;
            Ok(())
        })?;
        let path = dir.join(name);
        let m = EifBuilder::new()
            .kernel_bytes(kernel.clone())
            .cmdline(cmdline.clone())
            .ramdisk_bytes(boot.clone())
            .ramdisk_bytes(user)
            .write_to_path(&path)
            .map_err(|e| err("E801", format!("{}: {e}", path.display())))?;
        Ok((path, m))
    };
    let (genuine, genuine_pcrs) = build("sample.eif", "DEMO_IMAGE=genuine\n")?;
    let (modified, modified_pcrs) = build("modified.eif", "DEMO_IMAGE=modified\n")?;
    Ok(Images {
        genuine,
        modified,
        genuine_pcrs,
        modified_pcrs,
        kernel_note,
    })
}

fn ramdisk(
    fill: impl FnOnce(&mut CpioWriter<Vec<u8>>) -> Result<(), cloister_cpio::WriteError>,
) -> CliResult<Vec<u8>> {
    let mut w = CpioWriter::new(Vec::new());
    fill(&mut w).map_err(|e| err("E801", format!("ramdisk: {e}")))?;
    w.finish().map_err(|e| err("E801", format!("ramdisk: {e}")))
}

fn print_pcrs(name: &str, m: &Measurements) {
    println!("  {name}");
    println!("    PCR0 {}", m.pcr0_hex());
    println!("    PCR1 {}", m.pcr1_hex());
    println!("    PCR2 {}", m.pcr2_hex());
}

fn random<const N: usize>() -> CliResult<[u8; N]> {
    let mut out = [0u8; N];
    aws_lc_rs::rand::fill(&mut out).map_err(|_| err("E802", "no randomness"))?;
    Ok(out)
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut parts = Vec::new();
    let mut source = e.source();
    while let Some(s) = source {
        parts.push(s.to_string());
        source = s.source();
    }
    parts.join(": ")
}

/// Checks that the demo's run directory holds no enclave, live monitor or vsock socket.
fn check_nothing_left(run: &Path, fabric: &Path) -> CliResult<()> {
    let run_dir = RunDir::new(run);
    let left = lifecycle::describe(&run_dir).map_err(|e| err("E811", e))?;
    if !left.is_empty() {
        let ids: Vec<&str> = left.iter().map(|r| r.enclave_id.as_str()).collect();
        return Err(err("E811", format!("enclaves still recorded: {ids:?}")));
    }
    let mut leftovers = Vec::new();
    for dir in [run_dir.enclaves_dir(), fabric.to_owned()] {
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                leftovers.push(e.path().display().to_string());
            }
        }
    }
    if leftovers.is_empty() {
        Ok(())
    } else {
        Err(err(
            "E811",
            format!("left in the run directory: {leftovers:?}"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_in_range_and_unique() {
        let mut seen = std::collections::BTreeSet::new();
        for c in CODES {
            assert!(c.code.starts_with("E8") && c.code.len() == 4, "{}", c.code);
            assert!(seen.insert(c.code), "duplicate {}", c.code);
        }
    }

    #[test]
    fn demo_parses() {
        use clap::Parser;
        let cli = crate::Cli::try_parse_from(["cloister", "demo", "--memory", "128"]).unwrap();
        let crate::Command::Demo(DemoCommand::Demo(a)) = cli.command else {
            panic!("wrong command");
        };
        assert_eq!(a.memory, 128);
        assert!(!a.keep_temp);
        assert_eq!(a.isolation, Isolation::Process);
        assert!(!a.pause && a.blobs.is_none());
        let cli = crate::Cli::try_parse_from([
            "cloister",
            "demo",
            "--isolation",
            "vm",
            "--blobs",
            "/b",
            "--pause",
        ])
        .unwrap();
        let crate::Command::Demo(DemoCommand::Demo(a)) = cli.command else {
            panic!("wrong command");
        };
        assert_eq!(a.isolation, Isolation::Vm);
        assert_eq!(a.blobs.as_deref(), Some(Path::new("/b")));
        assert!(a.pause);
        assert!(crate::Cli::try_parse_from(["cloister", "demo", "--isolation", "tee"]).is_err());
    }

    fn args(isolation: Isolation) -> DemoArgs {
        DemoArgs {
            memory: 256,
            keep_temp: false,
            isolation,
            blobs: None,
            pause: false,
        }
    }

    /// A data directory as the package installs it: `blobs/{init,cmdline}` (no kernel) and
    /// the sample app.
    fn installed(share: &Path) {
        std::fs::create_dir_all(share.join("blobs")).unwrap();
        std::fs::write(share.join("blobs/init"), b"init").unwrap();
        std::fs::write(share.join("blobs/cmdline"), blobs::shipped_cmdline()).unwrap();
        std::fs::write(share.join(SAMPLE_APP_FILE), b"app").unwrap();
    }

    #[test]
    fn vm_isolation_needs_a_blobs_directory_with_a_kernel() {
        let d = tempfile::tempdir().unwrap();
        let share = d.path().join("share/cloister");
        installed(&share);
        let dirs = [(share.clone(), blobs::BlobsOrigin::NextToExecutable)];
        let vm = args(Isolation::Vm);
        let named_missing = blobs::locate_in(
            Some((d.path().join("absent"), blobs::BlobsOrigin::Flag)),
            &dirs,
        );
        let e = DemoInputs::find_with(&vm, named_missing, &dirs, None).unwrap_err();
        assert_eq!(e.code, "E813");
        // The installed blobs have no kernel.
        let e = DemoInputs::find_with(&vm, blobs::locate_in(None, &dirs), &dirs, None).unwrap_err();
        assert_eq!(e.code, "E813");
        assert!(e.to_string().contains("blobs prepare"), "{e}");
        // Process isolation takes them, and the sample app beside them.
        let process = args(Isolation::Process);
        let found =
            DemoInputs::find_with(&process, blobs::locate_in(None, &dirs), &dirs, None).unwrap();
        assert_eq!(found.blobs_dir, Some(share.join("blobs")));
        assert_eq!(found.sample_app, share.join(SAMPLE_APP_FILE));
        let b = found.blobs().unwrap();
        assert_eq!((b.kernel, b.cmdline), (None, blobs::shipped_cmdline()));
    }

    #[test]
    fn nothing_installed_says_how_to_install_and_never_builds() {
        let d = tempfile::tempdir().unwrap();
        let dirs = [(d.path().join("share/cloister"), blobs::BlobsOrigin::System)];
        let process = args(Isolation::Process);
        // No source tree: nothing is built, E610 names the package and the tarball.
        let e = DemoInputs::find_with(&process, blobs::locate_in(None, &dirs), &dirs, None)
            .unwrap_err();
        assert_eq!(e.code, "E610");
        let text = e.to_string();
        assert!(
            text.contains("/usr/share/cloister/blobs") && text.contains(".deb"),
            "{text}"
        );
        // Blobs named elsewhere (a VM blobs directory), but no sample app installed: E814.
        let named = d.path().join("vm-blobs");
        installed(&named.join("x"));
        std::fs::rename(named.join("x/blobs"), named.join("b")).unwrap();
        let e = DemoInputs::find_with(
            &process,
            blobs::locate_in(Some((named.join("b"), blobs::BlobsOrigin::Flag)), &dirs),
            &dirs,
            None,
        )
        .unwrap_err();
        assert_eq!(e.code, "E814");
        // A data directory named through CLOISTER_BLOBS=<prefix>/share/cloister/blobs brings
        // its sample app along.
        let prefix = d.path().join("opt/share/cloister");
        installed(&prefix);
        let found = DemoInputs::find_with(
            &process,
            blobs::locate_in(
                Some((prefix.join("blobs"), blobs::BlobsOrigin::Env("X"))),
                &dirs,
            ),
            &dirs,
            None,
        )
        .unwrap();
        assert_eq!(found.sample_app, prefix.join(SAMPLE_APP_FILE));
    }
}
