//! The monitor's logic over a fake backend: no root, no clone, no QEMU.
//!
//! [`FakeBackend`] hands out a [`FakePending`] and a [`FakeRunning`] that do what a test
//! scripts (heartbeat or not, exit or not, an exit detail, a console tail) and record every
//! call the monitor makes on them, so the order of a launch and of a teardown is checked.

use super::boot::{self, Beat};
use super::launch::{Checked, Launcher, Partial};
use super::live::Live;
use super::spec::{backend_failure, FailureKind, MonitorSpec, StartFailure};
use crate::allocator::{Allocation, Allocator, CpuRequest, Pool};
use crate::backend::{Backend, BackendError, HostLink, Isolation, LaunchSpec, Pending, Running};
use crate::config::RuntimeConfig;
use crate::imagecache::OpenImage;
use crate::initswap::InitChoice;
use crate::state::EnclaveState;
use crate::state::{EnclaveRecord, RunDir};
use crate::sys::ExitStatus;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const ID: &str = "i-0123456789abcdef0-enc0123456789abcdef";
const PID: i32 = 4242;

/// What the fake enclave does and what was done to it.
#[derive(Debug, Default)]
struct Script {
    /// Send the heartbeat when started.
    beat: bool,
    /// `try_wait` answers this from its `exit_after`th call on (1: at once).
    exit: Option<ExitStatus>,
    exit_after: usize,
    detail: Option<String>,
    tail: Option<String>,
    leftovers: Vec<PathBuf>,
    fail_create: Option<fn() -> BackendError>,
    /// Every call, in order.
    calls: Vec<String>,
    try_waits: usize,
}

type Shared = Arc<Mutex<Script>>;

fn note(s: &Shared, call: &str) {
    s.lock().unwrap().calls.push(call.to_owned());
}

struct FakeBackend(Shared);

impl Backend for FakeBackend {
    fn isolation(&self) -> Isolation {
        Isolation::Vm
    }

    fn host_link(&self) -> HostLink {
        HostLink::Device
    }

    fn create(
        &self,
        spec: &LaunchSpec,
        _console: OwnedFd,
    ) -> Result<Box<dyn Pending>, BackendError> {
        note(&self.0, "create");
        if let Some(fail) = self.0.lock().unwrap().fail_create {
            return Err(fail());
        }
        Ok(Box::new(FakePending {
            spec: spec.clone(),
            script: self.0.clone(),
        }))
    }
}

struct FakePending {
    spec: LaunchSpec,
    script: Shared,
}

impl Pending for FakePending {
    fn pid(&self) -> i32 {
        PID
    }

    fn release(&mut self) -> Result<(), BackendError> {
        note(&self.script, "release");
        Ok(())
    }

    fn start(self: Box<Self>) -> Result<Box<dyn Running>, BackendError> {
        // The monitor sets the NSM before it lets the enclave start.
        let nsm = if self.spec.nsm.get().is_some() {
            "start (NSM set)"
        } else {
            "start (no NSM)"
        };
        note(&self.script, nsm);
        if self.script.lock().unwrap().beat {
            (self.spec.on_heartbeat)();
        }
        Ok(Box::new(FakeRunning(self.script)))
    }
}

struct FakeRunning(Shared);

impl Running for FakeRunning {
    fn pid(&self) -> i32 {
        PID
    }

    fn try_wait(&mut self) -> Result<Option<ExitStatus>, BackendError> {
        let mut s = self.0.lock().unwrap();
        s.try_waits += 1;
        Ok(s.exit.filter(|_| s.try_waits >= s.exit_after))
    }

    fn kill(&mut self) -> Result<ExitStatus, BackendError> {
        note(&self.0, "kill");
        Ok(self
            .0
            .lock()
            .unwrap()
            .exit
            .unwrap_or(ExitStatus::Signaled(9)))
    }

    fn cleanup(&mut self) -> Result<(), BackendError> {
        note(&self.0, "cleanup");
        Ok(())
    }

    fn oom_kills(&self) -> u64 {
        2
    }

    fn leftovers(&self) -> Vec<PathBuf> {
        self.0.lock().unwrap().leftovers.clone()
    }

    fn exit_detail(&self) -> Option<String> {
        self.0.lock().unwrap().detail.clone()
    }

    fn console_tail(&self) -> Option<String> {
        self.0.lock().unwrap().tail.clone()
    }

    fn accelerator(&self) -> Option<&'static str> {
        Some("tcg")
    }
}

/// A run directory, a PKI and an image in a temporary directory.
struct World {
    dir: tempfile::TempDir,
    run: RunDir,
    config: RuntimeConfig,
    _lock: std::fs::File,
}

impl World {
    fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path().join("run"));
        run.prepare().unwrap();
        let lock = run.create_enclave_dir(ID).unwrap();
        let config = RuntimeConfig::default()
            .with_run_dir(run.root())
            .with_pki_dir(dir.path().join("pki"));
        World {
            dir,
            run,
            config,
            _lock: lock,
        }
    }

    fn spec(&self) -> MonitorSpec {
        MonitorSpec {
            enclave_id: ID.to_owned(),
            enclave_name: "fake".to_owned(),
            eif_path: self.dir.path().join("x.eif"),
            cpus: CpuRequest::Count(1),
            memory_mib: 128,
            cid: 0,
            debug_mode: true,
            isolation: Isolation::Vm,
            boot_timeout_ms: 2_000,
            config: self.config.clone(),
        }
    }

    fn checked(&self) -> Checked {
        let path = self.dir.path().join("x.eif");
        cloister_eif::EifBuilder::new()
            .kernel_bytes(b"kernel".to_vec())
            .cmdline("console=ttyS0")
            .ramdisk_bytes(b"ramdisk".to_vec())
            .write_to_path(&path)
            .unwrap();
        let image = OpenImage::open(&path).unwrap();
        let measured = image.reader().unwrap().measure().unwrap();
        Checked {
            alloc: Allocation {
                enclave_id: ID.to_owned(),
                cid: 16,
                cpus: vec![0],
                memory_mib: 128,
                host_id: 1_000_016,
            },
            image,
            measured,
            metadata: None,
            init: InitChoice::Image,
        }
    }

    fn allocator(&self) -> Allocator {
        Allocator::new(self.run.root(), Pool::single_threaded(&[0, 1], 1024))
    }

    fn nsm(&self) -> Arc<crate::nsm::EnclaveNsm> {
        let pki = crate::nsm::open_pki(&self.config.pki_dir, self.run.root()).unwrap();
        let measured = self.checked().measured;
        crate::nsm::enclave_nsm(
            &pki,
            ID,
            Isolation::Vm,
            false,
            &measured,
            true,
            "i-0123456789abcdef0",
        )
        .unwrap()
    }

    /// Runs [`Launcher::launch`] with a fake backend following `script`.
    fn launch(
        &self,
        script: &Shared,
    ) -> (Result<super::launch::Launched, StartFailure>, Partial<'_>) {
        let spec = self.spec();
        let backend = FakeBackend(script.clone());
        let launcher = Launcher {
            run: &self.run,
            id: ID,
            spec: &spec,
            config: &self.config,
            backend: &backend,
        };
        let mut partial = Partial {
            run: &self.run,
            id: ID,
            allocator: Some(self.allocator()),
            netns: None,
            running: None,
            broker: None,
        };
        let result = launcher.launch(self.checked(), &mut partial);
        (result, partial)
    }
}

fn script(s: Script) -> Shared {
    Arc::new(Mutex::new(s))
}

fn calls(s: &Shared) -> Vec<String> {
    s.lock().unwrap().calls.clone()
}

#[test]
fn every_backend_error_has_its_failure_class() {
    let sys = crate::sys::SysError {
        call: "clone3",
        context: String::new(),
        errno: nix::errno::Errno::EPERM,
    };
    let cases: Vec<(BackendError, FailureKind)> = vec![
        (BackendError::Unsupported("x"), FailureKind::Unsupported),
        (
            BackendError::VmUnavailable("no QEMU".into()),
            FailureKind::Unsupported,
        ),
        (BackendError::Setup("mount".into()), FailureKind::Setup),
        (
            BackendError::Vm(cloister_vm::VmError::Config("cid".into())),
            FailureKind::Setup,
        ),
        (BackendError::Image("no kernel".into()), FailureKind::Image),
        (
            BackendError::VmPathClosed {
                dir: "/r".into(),
                mode: 0o700,
                run: "/r".into(),
            },
            FailureKind::VmPathClosed,
        ),
        (
            BackendError::CidOutOfRange(1 << 40),
            FailureKind::CidInvalid,
        ),
        (BackendError::Sys(sys), FailureKind::System),
        (
            BackendError::Cgroup(crate::cgroup::CgroupError::NoController("cpuset")),
            FailureKind::System,
        ),
    ];
    for (e, kind) in cases {
        let f = backend_failure(&e);
        assert_eq!(f.kind, kind, "{e}");
        // The message is the whole chain, starting with the error's own.
        assert!(f.message.starts_with(&e.to_string()), "{}", f.message);
    }
}

#[test]
fn a_launch_creates_sets_the_nsm_starts_and_records_a_running_enclave() {
    let w = World::new();
    let s = script(Script {
        beat: true,
        leftovers: vec![w.dir.path().join("cgroup")],
        ..Script::default()
    });
    let (result, partial) = w.launch(&s);
    let (record, console, _nsm) = result.unwrap();
    assert_eq!(calls(&s), ["create", "release", "start (NSM set)"]);
    // A backend with a device of its own: no broker, no console pump.
    assert!(partial.broker.is_none() && console.is_none());
    assert!(partial.running.is_some());
    assert_eq!(record.state, EnclaveState::Running);
    assert_eq!(record.init_pid, Some(4242));
    assert_eq!(record.cid, 16);
    assert_eq!(record.host_uid, Some(1_000_016));
    assert_eq!(record.accelerator.as_deref(), Some("tcg"));
    assert_eq!(record.cgroup_dirs, [w.dir.path().join("cgroup")]);
    assert!(!record.init_replaced);
    let stored = w.run.read_record(ID).unwrap().unwrap();
    assert_eq!(stored.state, EnclaveState::Running);
}

#[test]
fn an_enclave_that_ends_before_its_heartbeat_fails_with_the_backends_account() {
    let w = World::new();
    let s = script(Script {
        exit: Some(ExitStatus::Exited(1)),
        exit_after: 1,
        detail: Some("the guest kernel panicked".into()),
        tail: Some("Kernel panic - not syncing: VFS".into()),
        ..Script::default()
    });
    let (result, partial) = w.launch(&s);
    let f = result.unwrap_err();
    assert_eq!(f.kind, FailureKind::Setup);
    assert!(
        f.message
            .starts_with("the guest kernel panicked before its heartbeat; console:\n"),
        "{}",
        f.message
    );
    assert!(
        f.message.ends_with("Kernel panic - not syncing: VFS"),
        "{}",
        f.message
    );
    // What was taken is given back: the enclave killed, then its host objects removed.
    partial.unwind();
    assert_eq!(
        calls(&s),
        ["create", "release", "start (NSM set)", "kill", "cleanup"]
    );
}

#[test]
fn without_an_account_the_exit_status_and_the_console_file_are_reported() {
    let w = World::new();
    std::fs::write(w.run.console_path(ID), b"init: cannot mount /proc\n").unwrap();
    let mut running = FakeRunning(script(Script {
        exit: Some(ExitStatus::Signaled(9)),
        exit_after: 1,
        ..Script::default()
    }));
    let (_tx, rx) = std::sync::mpsc::channel();
    let f = boot::wait_for_heartbeat(
        &Beat::Channel(&rx),
        &mut running,
        &w.run.console_path(ID),
        Instant::now() + Duration::from_secs(5),
        5_000,
    )
    .unwrap_err();
    assert_eq!(f.kind, FailureKind::Setup);
    assert_eq!(
        f.message,
        "the enclave killed by signal 9 before its heartbeat; console:\ninit: cannot mount /proc\n"
    );
}

#[test]
fn no_heartbeat_by_the_deadline_is_a_boot_timeout_with_the_console_tail() {
    let w = World::new();
    let tail = format!(
        "{}end",
        "x".repeat(usize::try_from(crate::console::TAIL_BYTES).unwrap())
    );
    let s = script(Script {
        tail: Some(tail),
        ..Script::default()
    });
    let mut running = FakeRunning(s.clone());
    let (_tx, rx) = std::sync::mpsc::channel();
    let t = Instant::now();
    let f = boot::wait_for_heartbeat(
        &Beat::Channel(&rx),
        &mut running,
        &w.run.console_path(ID),
        t + Duration::from_millis(100),
        100,
    )
    .unwrap_err();
    assert!(t.elapsed() >= Duration::from_millis(100));
    assert_eq!(f.kind, FailureKind::BootTimeout);
    let head = "no heartbeat from the enclave within 100 ms; last console lines:\n";
    assert!(f.message.starts_with(head), "{}", f.message);
    // The backend's own tail, cut to the console's tail size.
    let got = &f.message[head.len()..];
    assert!(got.ends_with("end"));
    assert_eq!(got.len() as u64, crate::console::TAIL_BYTES);
    assert!(s.lock().unwrap().try_waits > 1);
}

#[test]
fn a_heartbeat_ends_the_wait_at_once() {
    let w = World::new();
    let mut running = FakeRunning(script(Script::default()));
    let (tx, rx) = std::sync::mpsc::channel();
    tx.send(()).unwrap();
    boot::wait_for_heartbeat(
        &Beat::Channel(&rx),
        &mut running,
        &w.run.console_path(ID),
        Instant::now(),
        0,
    )
    .unwrap();
}

#[test]
fn a_create_failure_keeps_its_class_and_starts_nothing() {
    let w = World::new();
    let s = script(Script {
        fail_create: Some(|| {
            BackendError::Image("the image's kernel is not a bootable bzImage".into())
        }),
        ..Script::default()
    });
    let (result, partial) = w.launch(&s);
    let f = result.unwrap_err();
    assert_eq!(f.kind, FailureKind::Image);
    assert_eq!(f.message, "the image's kernel is not a bootable bzImage");
    assert!(partial.running.is_none());
    assert_eq!(calls(&s), ["create"]);
}

/// A live enclave over the fake, with its allocation taken and its record written.
fn live(w: &World, s: &Shared) -> Live {
    let allocator = w.allocator();
    let alloc = allocator
        .allocate(
            &crate::allocator::Request {
                enclave_id: ID.to_owned(),
                cid: 0,
                cpus: CpuRequest::Count(1),
                memory_mib: 128,
            },
            &|_| true,
        )
        .unwrap();
    let leftover = w.dir.path().join("cgroup-leftover");
    std::fs::create_dir(&leftover).unwrap();
    s.lock().unwrap().leftovers = vec![leftover.clone()];
    let record = EnclaveRecord {
        enclave_id: ID.to_owned(),
        enclave_name: "fake".into(),
        monitor_pid: std::process::id(),
        init_pid: Some(4242),
        cid: alloc.cid,
        cpu_ids: alloc.cpus.clone(),
        memory_mib: alloc.memory_mib,
        debug_mode: true,
        isolation: "vm".into(),
        init_replaced: false,
        accelerator: None,
        state: EnclaveState::Running,
        host_uid: Some(alloc.host_id),
        measurements: crate::state::Measurements {
            pcr0: String::new(),
            pcr1: String::new(),
            pcr2: String::new(),
            pcr8: None,
        },
        metadata: crate::state::ImageMetadata {
            image_name: None,
            image_version: None,
            metadata: None,
        },
        eif_path: w.dir.path().join("x.eif"),
        cgroup_dirs: vec![leftover],
        started_at: 0,
    };
    w.run.write_record(&record).unwrap();
    Live {
        record,
        running: Box::new(FakeRunning(s.clone())),
        broker: None,
        allocator,
        console: None,
        console_path: w.run.console_path(ID),
        nsm: w.nsm(),
    }
}

#[test]
fn supervising_ends_when_the_enclave_does() {
    let w = World::new();
    let s = script(Script {
        exit: Some(ExitStatus::Exited(0)),
        exit_after: 3,
        ..Script::default()
    });
    let mut live = live(&w, &s);
    live.supervise();
    assert_eq!(s.lock().unwrap().try_waits, 3);
}

#[test]
fn teardown_kills_cleans_up_returns_the_resources_and_removes_everything() {
    let w = World::new();
    let s = script(Script {
        exit: Some(ExitStatus::Exited(0)),
        detail: Some("powered off".into()),
        ..Script::default()
    });
    let mut live = live(&w, &s);
    let leftover = s.lock().unwrap().leftovers[0].clone();
    std::fs::write(w.run.console_path(ID), b"bye\n").unwrap();
    let console = std::fs::File::open(w.run.console_path(ID)).unwrap();
    live.teardown(&w.run);
    // Killed before its host objects are removed.
    assert_eq!(calls(&s), ["kill", "cleanup"]);
    // The summary went into the console (read through a descriptor opened before the
    // directory was removed) and the history.
    let text = std::io::read_to_string(console).unwrap();
    let summary =
        format!("enclave {ID} exited with status 0 (powered off); out-of-memory kills: 2");
    assert_eq!(text, format!("bye\n[cloister] {summary}\n"));
    let history = std::fs::read_to_string(w.run.root().join("history.log")).unwrap();
    assert!(history.trim_end().ends_with(&summary), "{history}");
    // The resources are free, the directory and the leftovers the record named are gone.
    assert!(w.allocator().list(&|_| true).unwrap().is_empty());
    assert!(!w.run.enclave_dir(ID).exists());
    assert!(!leftover.exists());
}

#[test]
fn a_tail_is_cut_at_a_character_boundary() {
    assert_eq!(boot::last_bytes("abcdef", 3), "def");
    assert_eq!(boot::last_bytes("ab", 10), "ab");
    // "é" is two bytes: a cut inside it moves forward.
    assert_eq!(boot::last_bytes("xé", 1), "");
    assert_eq!(boot::last_bytes("xé", 2), "é");
}

#[test]
fn the_launch_description_carries_the_callers_configuration() {
    let w = World::new();
    let mut spec = w.spec();
    spec.config.boot_timeout_ms = Some(1234);
    spec.config.vm.accel = Some(cloister_vm::Accel::Tcg);
    let json = serde_json::to_vec(&spec).unwrap();
    let back: MonitorSpec = serde_json::from_slice(&json).unwrap();
    assert_eq!(back.config, spec.config);
    // A description naming a field the monitor does not know is refused.
    let mut value: serde_json::Value = serde_json::from_slice(&json).unwrap();
    value["extra"] = serde_json::json!(1);
    assert!(serde_json::from_value::<MonitorSpec>(value).is_err());
}
