//! What host users plant in the fabric directory cannot redirect an enclave's connections, the
//! broker lends the enclave's host identity (never root's) to them, and one enclave's NSM load
//! is bounded to its own CPUs. These tests run as root, like the broker.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cloister_vsock::nsm_frame::{read_frame, write_frame, NSM_FRAME_HARD_CAP};
use cloister_vsock::{
    Broker, BrokerConfig, BrokerLimits, NsmService, VsockAddr, VsockError, VsockListener,
    VsockStream, NSM_PORT, PARENT_CID, VMADDR_CID_HYPERVISOR,
};
use common::{FakeNsm, Fixture};

/// The host identity given to the brokers of these tests (what `enclave_host_id` yields for
/// an enclave, in the runtime).
const ENCLAVE_ID: u32 = 1_000_000_031;

/// A listener bound outside the fabric directory that must never see a connection.
fn outside_listener(dir: &Path, name: &str) -> UnixListener {
    let path = dir.join(name);
    let l = UnixListener::bind(&path).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
    l.set_nonblocking(true).unwrap();
    l
}

fn assert_untouched(listener: &UnixListener) {
    match listener.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("the socket outside the fabric saw a connection: {other:?}"),
    }
}

fn enclave_connect(fx: &Fixture, port: u32) -> Result<VsockStream, VsockError> {
    VsockStream::connect_enclave(fx.enclave_socket(), VsockAddr::new(PARENT_CID, port))
}

fn assert_refused_by_policy(result: Result<VsockStream, VsockError>) {
    match result {
        Err(VsockError::NotPermitted { .. }) => {}
        other => panic!("expected ERR EACCES, got {other:?}"),
    }
}

#[test]
fn a_planted_symlink_does_not_lead_out_of_the_fabric() {
    let fx = Fixture::new(40);
    let target = outside_listener(fx.dir.path(), "root-only.sock");
    std::os::unix::fs::symlink(
        fx.dir.path().join("root-only.sock"),
        fx.fabric().join("3_5000.sock"),
    )
    .unwrap();
    assert_refused_by_policy(enclave_connect(&fx, 5000));
    std::thread::sleep(Duration::from_millis(50));
    assert_untouched(&target);
    // A dangling one is refused the same way.
    std::os::unix::fs::symlink("/nonexistent.sock", fx.fabric().join("3_5001.sock")).unwrap();
    assert_refused_by_policy(enclave_connect(&fx, 5001));
}

#[test]
fn a_hard_link_to_a_socket_bound_elsewhere_is_refused() {
    let fx = Fixture::new(41);
    let target = outside_listener(fx.dir.path(), "elsewhere.sock");
    std::fs::hard_link(
        fx.dir.path().join("elsewhere.sock"),
        fx.fabric().join("3_5002.sock"),
    )
    .unwrap();
    assert_refused_by_policy(enclave_connect(&fx, 5002));
    std::thread::sleep(Duration::from_millis(50));
    assert_untouched(&target);
}

#[test]
fn a_planted_non_socket_is_refused() {
    let fx = Fixture::new(42);
    std::fs::write(fx.fabric().join("3_5003.sock"), b"not a socket").unwrap();
    assert_refused_by_policy(enclave_connect(&fx, 5003));
    std::fs::create_dir(fx.fabric().join("3_5004.sock")).unwrap();
    assert_refused_by_policy(enclave_connect(&fx, 5004));
    // Nothing there at all is a plain refusal, as before.
    assert!(matches!(
        enclave_connect(&fx, 5005),
        Err(VsockError::Refused { .. })
    ));
}

/// A broker whose enclave has the host identity `id`, in `run`.
fn identity_broker(run: &Path, cid: u32, id: u32) -> Broker {
    let cfg = BrokerConfig::new(
        cid,
        run,
        run.join(format!("enclave-{cid}.sock")),
        Arc::new(FakeNsm::default()),
    )
    .with_enclave_identity(id, id);
    Broker::start(cfg).unwrap()
}

/// A run directory others may traverse (as the real `/run/cloister`) and a broker in it.
fn identity_fixture(cid: u32) -> (tempfile::TempDir, Broker) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let broker = identity_broker(dir.path(), cid, ENCLAVE_ID);
    (dir, broker)
}

#[test]
fn host_listeners_see_the_enclave_identity_not_root() {
    let (dir, broker) = identity_fixture(43);
    let fabric = dir.path().join("vsock");
    let path = fabric.join("3_5006.sock");
    let raw = UnixListener::bind(&path).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
    let enc = VsockStream::connect_enclave(broker.enclave_socket(), VsockAddr::new(3, 5006));
    let mut enc = enc.unwrap();
    let (mut host, _) = raw.accept().unwrap();
    let cred =
        nix::sys::socket::getsockopt(&host, nix::sys::socket::sockopt::PeerCredentials).unwrap();
    assert_eq!((cred.uid(), cred.gid()), (ENCLAVE_ID, ENCLAVE_ID));
    let mut preamble = [0u8; 13];
    host.read_exact(&mut preamble).unwrap();
    assert_eq!(&preamble, b"CONNECT-FROM ");
    enc.write_all(b"x").unwrap();

    // The kernel checks the listener's permissions against that identity: a socket only
    // root may write to is out of the enclave's reach.
    let private = fabric.join("3_5007.sock");
    let _private = UnixListener::bind(&private).unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(matches!(
        VsockStream::connect_enclave(broker.enclave_socket(), VsockAddr::new(3, 5007)),
        Err(VsockError::NotPermitted { .. })
    ));

    // The broker's host socket carries the enclave's group, so fabric listeners believe the
    // enclave's connections: end to end through a `VsockListener`.
    let meta = std::fs::metadata(broker.host_socket()).unwrap();
    assert_eq!(
        std::os::unix::fs::MetadataExt::gid(&meta),
        ENCLAVE_ID,
        "host socket group"
    );
    let listener = VsockListener::bind_fabric(&fabric, 5008).unwrap();
    let mut enc =
        VsockStream::connect_enclave(broker.enclave_socket(), VsockAddr::new(3, 5008)).unwrap();
    let (mut host, peer) = listener.accept().unwrap();
    assert_eq!(peer, VsockAddr::new(43, enc.local_addr().port));
    enc.write_all(b"hi").unwrap();
    let mut buf = [0u8; 2];
    host.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hi");
}

#[test]
fn an_identity_vouches_only_for_its_own_cid() {
    let (dir, broker) = identity_fixture(44);
    let fabric = dir.path().join("vsock");
    let listener = VsockListener::bind_fabric(&fabric, 5009).unwrap();
    listener.set_nonblocking(false).unwrap();
    // A process with the enclave's identity claiming another cid is not believed, even when
    // that cid has a broker (with another identity) ...
    let _other = identity_broker(dir.path(), 45, ENCLAVE_ID + 1);
    let forged = std::thread::spawn({
        let path = fabric.join("3_5009.sock");
        move || {
            // SAFETY: raw syscalls change this thread's credentials only; the thread ends here.
            unsafe {
                assert_eq!(
                    libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<u32>()),
                    0
                );
                assert_eq!(
                    libc::syscall(libc::SYS_setresgid, ENCLAVE_ID, ENCLAVE_ID, ENCLAVE_ID),
                    0
                );
                assert_eq!(
                    libc::syscall(libc::SYS_setresuid, ENCLAVE_ID, ENCLAVE_ID, ENCLAVE_ID),
                    0
                );
            }
            let mut s = UnixStream::connect(path).unwrap();
            s.write_all(b"CONNECT-FROM 45 7\n").unwrap();
            std::thread::sleep(Duration::from_millis(300));
        }
    });
    forged.join().unwrap();
    // ... while its own cid's connections go through.
    let _enc =
        VsockStream::connect_enclave(broker.enclave_socket(), VsockAddr::new(3, 5009)).unwrap();
    let (_host, peer) = listener.accept().unwrap();
    assert_eq!(peer.cid, 44);
}

/// An NSM whose requests take a while, counting how many run at once and where.
struct SlowNsm {
    running: AtomicUsize,
    most: AtomicUsize,
    calls: AtomicUsize,
    allowed: Vec<usize>,
    strayed: AtomicBool,
}

fn thread_cpus() -> Vec<usize> {
    // SAFETY: all-zero bytes are an empty cpu_set_t.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: pid 0 is the calling thread; `set` is a writable cpu_set_t of that size.
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    assert_eq!(rc, 0);
    (0..usize::try_from(libc::CPU_SETSIZE).unwrap())
        // SAFETY: `cpu` is below CPU_SETSIZE.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect()
}

impl NsmService for SlowNsm {
    fn handle(&self, request: &[u8]) -> Vec<u8> {
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
        if !thread_cpus().iter().all(|c| self.allowed.contains(c)) {
            self.strayed.store(true, Ordering::SeqCst);
        }
        std::thread::sleep(Duration::from_millis(5));
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.running.fetch_sub(1, Ordering::SeqCst);
        [b"resp:".as_slice(), request].concat()
    }
}

/// Starts a broker with `nsm` and the enclave CPUs `cpus`, and runs 16 channels of 8 requests
/// each against it; checks every answer and that the broker kept accepting meanwhile.
fn hammer_nsm(cid: u32, nsm: Arc<SlowNsm>, cpus: &[usize]) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = BrokerConfig::new(
        cid,
        dir.path(),
        dir.path().join("enclave.sock"),
        nsm.clone(),
    )
    .with_enclave_cpus(cpus.iter().map(|&c| u32::try_from(c).unwrap()).collect())
    .with_limits(BrokerLimits {
        max_nsm_workers: 4,
        ..BrokerLimits::default()
    });
    let broker = Broker::start(cfg).unwrap();
    let socket = broker.enclave_socket().to_path_buf();

    const CHANNELS: usize = 16;
    const REQUESTS: usize = 8;
    let channels: Vec<_> = (0..CHANNELS)
        .map(|i| {
            let socket = socket.clone();
            std::thread::spawn(move || {
                let mut ch = VsockStream::connect_enclave(
                    &socket,
                    VsockAddr::new(VMADDR_CID_HYPERVISOR, NSM_PORT),
                )
                .unwrap();
                for j in 0..REQUESTS {
                    let req = format!("req {i} {j}");
                    write_frame(&mut ch, req.as_bytes()).unwrap();
                    let resp = read_frame(&mut ch, NSM_FRAME_HARD_CAP).unwrap().unwrap();
                    assert_eq!(resp, format!("resp:{req}").into_bytes());
                }
            })
        })
        .collect();

    // While the NSM is saturated, the broker still accepts and answers other requests.
    std::thread::sleep(Duration::from_millis(20));
    let started = Instant::now();
    let _l = VsockListener::bind_enclave(&socket, 5010).unwrap();
    assert!(started.elapsed() < Duration::from_secs(1));

    for c in channels {
        c.join().unwrap();
    }
    assert_eq!(nsm.calls.load(Ordering::SeqCst), CHANNELS * REQUESTS);
}

fn slow_nsm(allowed: Vec<usize>) -> Arc<SlowNsm> {
    Arc::new(SlowNsm {
        running: AtomicUsize::new(0),
        most: AtomicUsize::new(0),
        calls: AtomicUsize::new(0),
        allowed,
        strayed: AtomicBool::new(false),
    })
}

#[test]
fn nsm_requests_of_one_enclave_are_bounded_to_its_cpus() {
    // The enclave's CPUs: the first two this process may use (one on a one-CPU machine).
    let cpus: Vec<usize> = thread_cpus().into_iter().take(2).collect();
    let nsm = slow_nsm(cpus.clone());
    hammer_nsm(47, nsm.clone(), &cpus);
    let most = nsm.most.load(Ordering::SeqCst);
    assert!(
        most <= cpus.len(),
        "{most} NSM requests ran at once on {} CPUs",
        cpus.len()
    );
    assert!(
        !nsm.strayed.load(Ordering::SeqCst),
        "an NSM request ran off the enclave's CPUs"
    );
}

#[test]
fn a_broker_without_cpus_serves_one_nsm_request_at_a_time() {
    let nsm = slow_nsm(thread_cpus());
    hammer_nsm(48, nsm.clone(), &[]);
    assert_eq!(nsm.most.load(Ordering::SeqCst), 1);
}

#[test]
fn host_clients_and_brokers_do_not_follow_planted_symlinks() {
    let dir = tempfile::tempdir().unwrap();
    let fabric = dir.path().join("vsock");
    cloister_vsock::FabricDir::open(&fabric).unwrap();
    let target = outside_listener(dir.path(), "root-service.sock");
    let planted = fabric.join("49.sock");
    std::os::unix::fs::symlink(dir.path().join("root-service.sock"), &planted).unwrap();

    // A parent dialling cid 49 does not end up at the socket the link points to.
    let err = VsockStream::connect_fabric(&fabric, VsockAddr::new(49, 80)).unwrap_err();
    assert!(matches!(err, VsockError::Fabric(_)), "{err:?}");
    std::thread::sleep(Duration::from_millis(50));
    assert_untouched(&target);

    // A broker for cid 49 neither probes nor replaces the link.
    let cfg = BrokerConfig::new(
        49,
        dir.path(),
        dir.path().join("enclave.sock"),
        Arc::new(FakeNsm::default()),
    );
    assert!(matches!(
        Broker::start(cfg),
        Err(cloister_vsock::BrokerError::CidInUse { cid: 49, .. })
    ));
    assert!(std::fs::symlink_metadata(&planted)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_untouched(&target);
}
