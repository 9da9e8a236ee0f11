//! Step 2: the attestation PKI, the key service (in-process, on 127.0.0.1, trusting only the
//! demo's PKI root) and a vsock-proxy whose allowlist holds only the key service's address;
//! and, at the end, stopping both.

use crate::config::{ms, random};
use crate::config::{Paths, ACCOUNT, APP_USER, PROXY_PORT, REGION};
use crate::error::{chain, err, DemoError, DemoResult};
use crate::interrupt::INTERRUPTED;
use cloister_kms::config::{AttestationConfig, Config, CredentialConfig};
use cloister_kms::store::AdminCredential;
use cloister_proxy::{AllowEntry, Allowlist, ProxyConfig, ProxyError, RelaySummary, VsockProxy};
use cloister_runtime::RunDir;
use cloister_sdk::Transport;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tokio::task::{JoinError, JoinHandle};

/// The running key service and vsock-proxy, and what the later steps need from them.
pub(crate) struct Services {
    /// The runtime both run on.
    pub(crate) rt: tokio::runtime::Runtime,
    /// The key service's address.
    pub(crate) kms_addr: SocketAddr,
    /// The key service's administrator credential (creates the key, encrypts).
    pub(crate) admin: AdminCredential,
    /// The enclave application's credential.
    pub(crate) app_credential: CredentialConfig,
    /// The PKI root the enclaves' documents chain to (DER).
    pub(crate) root_der: Vec<u8>,
    /// The demo's vsock fabric.
    pub(crate) fabric: PathBuf,
    proxy_stop: oneshot::Sender<()>,
    proxy_task: ProxyTask,
    kms_stop: oneshot::Sender<()>,
    kms_task: JoinHandle<()>,
}

/// The vsock-proxy's task.
type ProxyTask = JoinHandle<Result<RelaySummary, ProxyError>>;

/// How the vsock-proxy ended.
pub(crate) type ProxyOutcome = Result<Result<RelaySummary, ProxyError>, JoinError>;

impl Services {
    /// Step 2: opens the PKI and starts the key service and the vsock-proxy.
    pub(crate) fn start(paths: &Paths) -> DemoResult<Services> {
        let t = Instant::now();
        println!("[2/6] Start the key service and vsock-proxy");
        let pki = cloister_runtime::nsm::open_pki(&paths.pki, &paths.run)
            .map_err(|e| err(DemoError::Setup, format!("PKI: {e}")))?;
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
            .map_err(|e| err(DemoError::Setup, format!("async runtime: {e}")))?;
        let (app, admin) = cloister_kms::server::open(&paths.kms_data, &config)
            .map_err(|e| err(DemoError::KeyService, format!("key service: {e}")))?;
        let (listener, kms_addr) = rt
            .block_on(cloister_kms::server::bind("127.0.0.1:0"))
            .map_err(|e| err(DemoError::KeyService, format!("key service: {e}")))?;
        let (kms_stop, kms_stopped) = oneshot::channel::<()>();
        let kms_task = rt.spawn(cloister_kms::server::serve(listener, app, None, async {
            let _ = kms_stopped.await;
        }));
        println!(
            "  key service: http://{kms_addr} (region {REGION}, trust anchor: the demo PKI root)"
        );

        let fabric = RunDir::new(&paths.run).vsock_dir();
        let (proxy_stop, proxy_task) = start_proxy(&rt, &fabric, kms_addr)?;
        println!(
            "  vsock-proxy: vsock port {PROXY_PORT} -> {kms_addr} (allowlist: only {kms_addr})"
        );
        println!("  step 2: {} ms", ms(t));
        Ok(Services {
            rt,
            kms_addr,
            admin,
            app_credential,
            root_der,
            fabric,
            proxy_stop,
            proxy_task,
            kms_stop,
            kms_task,
        })
    }

    /// Stops the proxy and the key service; returns how the proxy ended.
    pub(crate) fn stop(self) -> ProxyOutcome {
        let _ = self.proxy_stop.send(());
        let proxy_summary = self.rt.block_on(self.proxy_task);
        let _ = self.kms_stop.send(());
        let _ = self.rt.block_on(self.kms_task);
        self.rt.shutdown_timeout(Duration::from_secs(2));
        proxy_summary
    }
}

/// Reports how the proxy ended: its summary, or the error it stopped with.
pub(crate) fn report_proxy(outcome: ProxyOutcome) -> DemoResult<()> {
    match outcome {
        Ok(Ok(s)) => println!(
            "  vsock-proxy stopped ({} connection(s) relayed)",
            s.accepted
        ),
        Ok(Err(e)) => {
            return Err(err(
                DemoError::Proxy,
                format!("vsock-proxy: {e}: {}", chain(&e)),
            ))
        }
        Err(e) => return Err(err(DemoError::Proxy, format!("vsock-proxy task: {e}"))),
    }
    Ok(())
}

/// Starts the vsock-proxy in the demo's fabric and waits for its socket.
fn start_proxy(
    rt: &tokio::runtime::Runtime,
    fabric: &std::path::Path,
    kms_addr: SocketAddr,
) -> DemoResult<(oneshot::Sender<()>, ProxyTask)> {
    std::fs::create_dir_all(fabric)
        .map_err(|e| err(DemoError::Setup, format!("{}: {e}", fabric.display())))?;
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
    proxy_config.transport = Some(Transport::Fabric(fabric.to_owned()));
    let (proxy_stop, proxy_stopped) = oneshot::channel::<()>();
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
                DemoError::Proxy,
                format!("vsock-proxy on port {PROXY_PORT}: {why}"),
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok((proxy_stop, proxy_task))
}
