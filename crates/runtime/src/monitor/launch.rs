//! One launch, from the launch description to a booted enclave: the same steps for every
//! backend (see the [module docs](super)).
//!
//! [`start`] reads the launch description, makes its configuration the process's, checks and
//! allocates ([`Launcher::prepare`]), then hands over to [`Launcher::launch`], which creates the
//! enclave through the backend, makes the NSM, connects the enclave to the host (the broker,
//! unless the backend's device does it) and waits for the boot ([`super::boot`]). Whatever was
//! taken is held by [`Partial`] and released in reverse if a step fails.

use super::boot::{self, Beat};
use super::live::Live;
use super::spec::{
    alloc_kind, backend_failure, sys_failure, FailureKind, MonitorSpec, StartFailure,
    MEMORY_PER_EIF_FACTOR, MIN_MEMORY_MIB, STOP_SIGNALS,
};
use crate::allocator::{Allocation, Allocator, Pool, Request};
use crate::backend::{Backend, HostLink, LaunchSpec, NsmCell, Running};
use crate::config::RuntimeConfig;
use crate::console::ConsoleLog;
use crate::imagecache::OpenImage;
use crate::initswap::InitChoice;
use crate::nsm::EnclaveNsm;
use crate::state::{EnclaveRecord, EnclaveState, ImageMetadata, Measurements, RunDir};
use crate::sys;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Longest wait of [`crate::config::TEST_HOOK_AFTER_MEASURING_ENV`].
const TEST_HOOK_WAIT: Duration = Duration::from_secs(60);

/// Reads the launch description of enclave `id` in `run`.
fn read_spec(run: &RunDir, id: &str) -> Result<MonitorSpec, StartFailure> {
    let path = run.enclave_dir(id).join("spec.json");
    let bytes = std::fs::read(&path)
        .map_err(|e| StartFailure::new(FailureKind::System, format!("{}: {e}", path.display())))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| StartFailure::new(FailureKind::System, format!("{}: {e}", path.display())))
}

/// Starts enclave `id` as its launch description says, with the backend of its isolation.
pub(super) fn start(run: &RunDir, id: &str) -> Result<Live, StartFailure> {
    let spec = read_spec(run, id)?;
    // The caller's configuration is this monitor's, whatever its own environment says.
    let config = spec.config.clone().install();
    let backend = crate::backends::backend_for(spec.isolation, &config);
    let launcher = Launcher {
        run,
        id,
        spec: &spec,
        config: &config,
        backend: backend.as_ref(),
    };
    let prepared = launcher.prepare()?;
    let allocator = prepared.allocator.clone();
    let mut partial = Partial {
        run,
        id,
        allocator: Some(allocator.clone()),
        netns: prepared.netns,
        running: None,
        broker: None,
    };
    match launcher.launch(prepared.launch, &mut partial) {
        Ok((record, console, nsm)) => {
            let running = partial
                .running
                .take()
                .ok_or_else(|| StartFailure::new(FailureKind::System, "lost the enclave"))?;
            Ok(Live {
                record,
                running,
                broker: partial.broker.take(),
                allocator,
                console,
                console_path: run.console_path(id),
                nsm,
            })
        }
        Err(f) => {
            partial.unwind();
            Err(f)
        }
    }
}

/// What [`Launcher::prepare`] checked and took.
struct Prepared {
    launch: Checked,
    allocator: Allocator,
    netns: Option<sys::NetnsHelper>,
}

/// The checked image and the resources allocated for it.
pub(super) struct Checked {
    pub(super) alloc: Allocation,
    pub(super) image: OpenImage,
    pub(super) measured: cloister_eif::Measurements,
    pub(super) metadata: Option<cloister_eif::Metadata>,
    pub(super) init: InitChoice,
}

/// One launch: the enclave, its description and configuration, and its backend.
pub(super) struct Launcher<'a> {
    pub(super) run: &'a RunDir,
    pub(super) id: &'a str,
    pub(super) spec: &'a MonitorSpec,
    pub(super) config: &'a RuntimeConfig,
    pub(super) backend: &'a dyn Backend,
}

/// What [`Launcher::launch`] hands back: the record, the console pump (where the monitor pumps
/// the console) and the NSM.
pub(super) type Launched = (
    EnclaveRecord,
    Option<std::thread::JoinHandle<()>>,
    Arc<EnclaveNsm>,
);

impl Launcher<'_> {
    /// Step 1: every check that needs nothing allocated, then the allocation.
    fn prepare(&self) -> Result<Prepared, StartFailure> {
        let (run, id, spec) = (self.run, self.id, self.spec);
        // What the runtime trusts must be writable by nobody else (the CLI checked it too;
        // this is the monitor's own look, one `stat` each).
        run.prepare()
            .map_err(|e| StartFailure::chain(FailureKind::UnsafeDir, &e))?;
        crate::nsm::check_pki_dir(&self.config.pki_dir)
            .map_err(|e| StartFailure::chain(FailureKind::UnsafeDir, &e))?;
        // What the backend needs of the host, checked before anything is allocated.
        self.backend
            .check_host(run.root(), &run.enclave_dir(id))
            .map_err(|e| backend_failure(&e))?;
        // A network namespace made by a helper meanwhile (see `sys::NetnsHelper`); without
        // one, the clone makes it.
        let netns = if self.backend.needs_netns() {
            sys::NetnsHelper::spawn()
                .inspect_err(
                    |e| tracing::warn!(error = %e, "cannot make a network namespace ahead"),
                )
                .ok()
        } else {
            None
        };
        let checked = self.check_image()?;
        let pool = Pool::load().map_err(|e| StartFailure::chain(alloc_kind(&e), &e))?;
        let allocator = Allocator::new(run.root(), pool);
        let alive = |other: &str| run.is_alive(other);
        let alloc = allocator
            .allocate(
                &Request {
                    enclave_id: id.to_owned(),
                    cid: spec.cid,
                    cpus: spec.cpus.clone(),
                    memory_mib: spec.memory_mib,
                },
                &alive,
            )
            .map_err(|e| StartFailure::chain(alloc_kind(&e), &e))?;
        crate::boottrace::mark("monitor: resources allocated");
        Ok(Prepared {
            launch: Checked { alloc, ..checked },
            allocator,
            netns,
        })
    }

    /// Opens, measures and checks the image (the allocation is filled in by the caller).
    fn check_image(&self) -> Result<Checked, StartFailure> {
        let spec = self.spec;
        // The image, opened once: everything below (measurements, signature, the backend's
        // root or boot files) reads this open file, never the path again.
        let image = OpenImage::open(&spec.eif_path).map_err(|e| {
            StartFailure::new(
                FailureKind::Image,
                format!("cannot open the image {}: {e}", spec.eif_path.display()),
            )
        })?;
        let measured_image = crate::imagecache::measure_image(self.run, &image)
            .map_err(|e| StartFailure::chain(FailureKind::Image, &e))?;
        crate::boottrace::mark(if measured_image.cached {
            "monitor: image measurements from the cache"
        } else {
            "monitor: image measured"
        });
        let (measured, metadata) = (measured_image.measurements, measured_image.metadata);
        // A signed image must verify, with a certificate valid now (nitro-cli's E59).
        crate::imagecache::check_signature(&image, &measured, unix_now())
            .map_err(|e| StartFailure::chain(FailureKind::Signature, &e))?;
        check_memory(spec.memory_mib, measured_image.len)?;
        self.backend
            .check_image(&image)
            .map_err(|e| backend_failure(&e))?;
        // A process enclave runs Cloister's init in place of AWS's (images built by
        // nitro-cli).
        let init = if self.backend.replaces_init() {
            crate::initswap::choose(&image)
                .map_err(|e| StartFailure::chain(FailureKind::Image, &e))?
        } else {
            InitChoice::Image
        };
        test_hook_after_measuring(self.config.test_hook_after_measuring.as_deref());
        Ok(Checked {
            alloc: Allocation {
                enclave_id: self.id.to_owned(),
                cid: 0,
                cpus: Vec::new(),
                memory_mib: 0,
                host_id: 0,
            },
            image,
            measured,
            metadata,
            init,
        })
    }

    /// The launch as the backend sees it.
    fn launch_spec(
        &self,
        c: &Checked,
        replacement_init: Option<Arc<OwnedFd>>,
        netns: Option<crate::sys::NetnsHandle>,
        on_heartbeat: crate::backend::HeartbeatFn,
    ) -> LaunchSpec {
        let dir = self.run.enclave_dir(self.id);
        // The enclave's own host uid/gid, allocated with its other resources: no other live
        // enclave has it.
        let host_id = c.alloc.host_id;
        LaunchSpec {
            enclave_id: self.id.to_owned(),
            image: c.image.clone(),
            root_mount: dir.join("root"),
            enclave_socket: dir.join("vsock.sock"),
            enclave_dir: dir,
            run_dir: self.run.root().to_owned(),
            cid: c.alloc.cid,
            memory_mib: c.alloc.memory_mib,
            cpus: c.alloc.cpus.clone(),
            debug: self.spec.debug_mode,
            console_path: self.run.console_path(self.id),
            boot_timeout: Duration::from_millis(self.spec.boot_timeout_ms),
            host_uid: host_id,
            host_gid: host_id,
            pids_max: crate::cgroup::DEFAULT_PIDS_MAX,
            netns,
            replacement_init,
            nsm: NsmCell::default(),
            on_heartbeat,
        }
    }

    /// The NSM (host CA loaded, leaf deferred).
    fn make_nsm(&self, c: &Checked, init_replaced: bool) -> Result<Arc<EnclaveNsm>, StartFailure> {
        let instance = crate::ids::instance_id();
        let pki = crate::nsm::open_pki(&self.config.pki_dir, self.run.root())
            .map_err(|e| StartFailure::chain(FailureKind::Nsm, &e))?;
        crate::boottrace::mark("monitor: PKI opened");
        let nsm = crate::nsm::enclave_nsm(
            &pki,
            self.id,
            self.spec.isolation,
            init_replaced,
            &c.measured,
            self.spec.debug_mode,
            &instance,
        )
        .map_err(|e| StartFailure::chain(FailureKind::Nsm, &e))?;
        crate::boottrace::mark("monitor: NSM set up (leaf deferred)");
        Ok(nsm)
    }

    /// Steps 2 and 3: creates the enclave (while still single-threaded: the process backend
    /// clones) and lets it go on at once, then blocks the stop signals, starts the console
    /// pump, sets up the NSM and the broker (where the enclave reaches the host through it)
    /// while the enclave finishes its setup, starts it, writes the record and waits for the
    /// heartbeat. What it takes goes into `partial`.
    pub(super) fn launch(
        &self,
        mut c: Checked,
        partial: &mut Partial<'_>,
    ) -> Result<Launched, StartFailure> {
        let link = self.backend.host_link();
        // The fabric's and the VM's addresses are 32 bits wide.
        let cid = u32::try_from(c.alloc.cid)
            .map_err(|_| StartFailure::new(FailureKind::CidInvalid, "CID out of range"))?;
        let replacement_init = match std::mem::replace(&mut c.init, InitChoice::Image) {
            InitChoice::Replace { file, .. } => Some(Arc::new(file)),
            InitChoice::Image => None,
        };
        let init_replaced = replacement_init.is_some();
        let (tx, rx) = std::sync::mpsc::channel();
        let tx = std::sync::Mutex::new(tx);
        let on_heartbeat: crate::backend::HeartbeatFn = Arc::new(move || {
            if let Ok(tx) = tx.lock() {
                let _ = tx.send(());
            }
        });
        let netns = partial.netns.as_ref().and_then(sys::NetnsHelper::handle);
        let launch = self.launch_spec(&c, replacement_init, netns, on_heartbeat);
        // The broker's side of the host: the enclave's root mount point and its socket.
        let enclave_sock = match link {
            HostLink::Broker => {
                std::fs::create_dir_all(&launch.root_mount).map_err(|e| sys_failure(&e))?;
                Some(bind_enclave_socket(&launch)?)
            }
            HostLink::Device => None,
        };
        let (console_r, console_w) = sys::pipe().map_err(|e| sys_failure(&e))?;
        // Still single-threaded here: the process backend clones.
        let mut pending = self
            .backend
            .create(&launch, console_w)
            .map_err(|e| backend_failure(&e))?;
        // The child has its copies of the network namespace helper's pipes; ours go.
        if let Some(helper) = partial.netns.as_mut() {
            helper.release();
        }
        // Dropping the pending enclave on a failure from here on kills and reaps the child and
        // removes its cgroup.
        pending.release().map_err(|e| backend_failure(&e))?;
        // Blocked before any thread starts, so every thread inherits the mask and the stop
        // signals stay pending for `wait_signal` (QEMU gets a clean mask from exec).
        sys::block_signals(&STOP_SIGNALS).map_err(|e| sys_failure(&e))?;
        let console_thread = match link {
            HostLink::Broker => Some(pump_console(&launch.console_path, console_r)?),
            HostLink::Device => None,
        };
        let nsm = self.make_nsm(&c, init_replaced)?;
        let _ = launch.nsm.set(nsm.clone());
        if let Some(sock) = enclave_sock {
            partial.broker = Some(start_broker(&launch, cid, sock, nsm.clone())?);
        }
        let mut running = pending.start().map_err(|e| backend_failure(&e))?;
        // Init runs, in the namespace: the helper has let go of it (or is stopped now).
        drop(partial.netns.take());
        let listener = running.take_notify_listener();
        let pid = running.pid();
        let accelerator = running.accelerator().map(str::to_owned);
        let leftovers = running.leftovers();
        partial.running = Some(running);
        if let Some(listener) = listener {
            start_supervisor(&launch, cid, listener, nsm.clone())?;
        }
        crate::boottrace::mark("monitor: enclave started");
        let mut record = self.record(&c, pid, init_replaced, accelerator, leftovers);
        self.run
            .write_record(&record)
            .map_err(|e| sys_failure(&e))?;
        let beat = match &partial.broker {
            Some(broker) => Beat::Broker(broker),
            None => Beat::Channel(&rx),
        };
        let running = partial
            .running
            .as_deref_mut()
            .ok_or_else(|| StartFailure::new(FailureKind::System, "lost the enclave"))?;
        let deadline = Instant::now() + launch.boot_timeout;
        boot::wait_for_heartbeat(
            &beat,
            running,
            &launch.console_path,
            deadline,
            self.spec.boot_timeout_ms,
        )?;
        crate::boottrace::mark("monitor: heartbeat received");
        record.state = EnclaveState::Running;
        self.run
            .write_record(&record)
            .map_err(|e| sys_failure(&e))?;
        Ok((record, console_thread, nsm))
    }

    /// The enclave's record, BOOTING.
    fn record(
        &self,
        c: &Checked,
        pid: i32,
        init_replaced: bool,
        accelerator: Option<String>,
        cgroup_dirs: Vec<PathBuf>,
    ) -> EnclaveRecord {
        let (image_name, image_version, meta_json) = match &c.metadata {
            Some(m) => (
                Some(m.image_name.clone()),
                Some(m.image_version.clone()),
                Some(m.describe_json()),
            ),
            None => (None, None, None),
        };
        EnclaveRecord {
            enclave_id: self.id.to_owned(),
            enclave_name: self.spec.enclave_name.clone(),
            monitor_pid: std::process::id(),
            init_pid: u32::try_from(pid).ok(),
            cid: c.alloc.cid,
            cpu_ids: c.alloc.cpus.clone(),
            memory_mib: c.alloc.memory_mib,
            debug_mode: self.spec.debug_mode,
            isolation: self.spec.isolation.as_str().to_owned(),
            init_replaced,
            accelerator,
            state: EnclaveState::Booting,
            host_uid: Some(c.alloc.host_id),
            measurements: Measurements {
                pcr0: c.measured.pcr0_hex(),
                pcr1: c.measured.pcr1_hex(),
                pcr2: c.measured.pcr2_hex(),
                pcr8: c.measured.pcr8_hex(),
            },
            metadata: ImageMetadata {
                image_name,
                image_version,
                metadata: meta_json,
            },
            eif_path: self.spec.eif_path.clone(),
            cgroup_dirs,
            started_at: unix_now(),
        }
    }
}

/// Binds the enclave's socket for the broker and gives it to the enclave's uid, before the
/// enclave is created, so the child can bind-mount it and init can connect while the broker is
/// still being set up.
fn bind_enclave_socket(launch: &LaunchSpec) -> Result<cloister_vsock::EnclaveSocket, StartFailure> {
    let sock =
        cloister_vsock::EnclaveSocket::bind(&launch.enclave_socket).map_err(|e| sys_failure(&e))?;
    let name = launch
        .enclave_socket
        .file_name()
        .map(Path::new)
        .ok_or_else(|| StartFailure::new(FailureKind::System, "enclave socket has no name"))?;
    sys::lchown_at(
        sys::open_dir(&launch.enclave_dir)
            .map_err(|e| sys_failure(&e))?
            .as_fd(),
        name,
        launch.host_uid,
        launch.host_gid,
    )
    .map_err(|e| sys_failure(&e))?;
    Ok(sock)
}

/// Starts the thread copying the enclave's console pipe into its console file.
fn pump_console(
    console_path: &Path,
    console_r: OwnedFd,
) -> Result<std::thread::JoinHandle<()>, StartFailure> {
    let mut log = ConsoleLog::create(console_path).map_err(|e| sys_failure(&e))?;
    std::thread::Builder::new()
        .name("console".into())
        .spawn(move || {
            let _ = log.pump(std::fs::File::from(console_r));
        })
        .map_err(|e| sys_failure(&e))
}

/// Starts the broker behind the enclave's socket.
fn start_broker(
    launch: &LaunchSpec,
    cid: u32,
    sock: cloister_vsock::EnclaveSocket,
    nsm: Arc<EnclaveNsm>,
) -> Result<cloister_vsock::Broker, StartFailure> {
    let broker = cloister_vsock::Broker::start_bound(
        // The enclave's connections to host listeners carry its host identity, never root's,
        // and its NSM requests run on its own CPUs.
        cloister_vsock::BrokerConfig::new(cid, &launch.run_dir, &launch.enclave_socket, nsm)
            .with_enclave_identity(launch.host_uid, launch.host_gid)
            .with_enclave_cpus(launch.cpus.clone()),
        sock,
    )
    .map_err(|e| sys_failure(&e))?;
    crate::boottrace::mark("monitor: broker started");
    Ok(broker)
}

/// Starts the supervisor of the enclave's `AF_VSOCK` sockets and `/dev/nsm`: it dials the
/// broker as the enclave does, answers `/dev/nsm` from the enclave's own NSM, runs on the
/// enclave's CPUs, and ends when the enclave's last process is gone.
fn start_supervisor(
    launch: &LaunchSpec,
    cid: u32,
    listener: OwnedFd,
    nsm: Arc<EnclaveNsm>,
) -> Result<(), StartFailure> {
    let fabric = Arc::new(
        cloister_supervisor::EnclaveFabric::new(launch.enclave_socket.clone(), cid)
            .with_nsm(nsm)
            .with_cpus(launch.cpus.clone()),
    );
    cloister_supervisor::Supervisor::spawn(listener, fabric)
        .map_err(|e| sys_failure(&e))?
        .detach();
    crate::boottrace::mark("monitor: supervisor started");
    Ok(())
}

/// Seconds since the Unix epoch.
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Resources taken so far, released in reverse on failure.
pub(super) struct Partial<'a> {
    pub(super) run: &'a RunDir,
    pub(super) id: &'a str,
    pub(super) allocator: Option<Allocator>,
    /// The helper making a process enclave's network namespace, until it is used.
    pub(super) netns: Option<sys::NetnsHelper>,
    pub(super) running: Option<Box<dyn Running>>,
    pub(super) broker: Option<cloister_vsock::Broker>,
}

impl Partial<'_> {
    /// Kills the enclave and removes what its backend made, stops the broker, returns the
    /// resources.
    pub(super) fn unwind(mut self) {
        if let Some(r) = self.running.as_mut() {
            let _ = r.kill();
            let _ = r.cleanup();
        }
        if let Some(mut b) = self.broker.take() {
            b.shutdown();
        }
        if let Some(a) = &self.allocator {
            let run = self.run.clone();
            let _ = a.release(self.id, &|id| run.is_alive(id));
        }
    }
}

/// See [`crate::config::TEST_HOOK_AFTER_MEASURING_ENV`]; does nothing when `path` is `None`.
fn test_hook_after_measuring(path: Option<&Path>) {
    let Some(path) = path else {
        return;
    };
    if std::fs::write(path, b"measured\n").is_err() {
        return;
    }
    let deadline = Instant::now() + TEST_HOOK_WAIT;
    while path.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Memory rules: at least [`MIN_MEMORY_MIB`] and [`MEMORY_PER_EIF_FACTOR`] times the image.
pub fn check_memory(memory_mib: u64, eif_len: u64) -> Result<(), StartFailure> {
    let need = eif_len
        .saturating_mul(MEMORY_PER_EIF_FACTOR)
        .div_ceil(1024 * 1024)
        .max(MIN_MEMORY_MIB);
    if memory_mib < need {
        return Err(StartFailure::new(
            FailureKind::BadRequest,
            format!(
                "{memory_mib} MiB of memory is too little: the enclave needs at least {need} MiB \
                 (64 MiB and 4 times the image size)"
            ),
        ));
    }
    Ok(())
}
