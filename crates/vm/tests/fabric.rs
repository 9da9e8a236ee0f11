//! The vsock device's side of the host fabric, without booting a guest: what the muxer dials
//! for a guest `REQUEST` to the parent (only singly linked sockets bound in the fabric
//! directory, never through a symlink, as the enclave's host identity) and how it binds its
//! `<cid>.sock` (replacing only its own stale socket, with the enclave's gid as group so that
//! parent listeners believe its `CONNECT-FROM` preambles). Tests that act as another user need
//! root and return early without it.

use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use cloister_vm::muxer::{Heartbeat, Limits, Muxer, MuxerConfig, MuxerError};
use cloister_vm::packet::{Header, OP_REQUEST, OP_RESPONSE, OP_RST, TYPE_STREAM};
use cloister_vm::HostIdentity;
use cloister_vsock::{VsockAddr, VsockListener};

const CID: u32 = 9;
/// An unprivileged host identity no process runs as.
const ENCLAVE: HostIdentity = HostIdentity {
    uid: 4_100_009,
    gid: 4_100_019,
};

struct NoNsm;
impl cloister_vsock::NsmService for NoNsm {
    fn handle(&self, _request: &[u8]) -> Vec<u8> {
        Vec::new()
    }
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn muxer(fabric: &Path, identity: Option<HostIdentity>) -> Result<Muxer, MuxerError> {
    Muxer::new(MuxerConfig {
        cid: CID,
        fabric_dir: fabric.to_path_buf(),
        nsm: Arc::new(NoNsm),
        heartbeat: Arc::new(Heartbeat::new(None)),
        limits: Limits::default(),
        bind_host_socket: true,
        enclave_identity: identity,
    })
}

fn request(src_port: u32, dst_port: u32) -> Header {
    Header {
        src_cid: u64::from(CID),
        dst_cid: 3,
        src_port,
        dst_port,
        len: 0,
        type_: TYPE_STREAM,
        op: OP_REQUEST,
        flags: 0,
        buf_alloc: 65536,
        fwd_cnt: 0,
    }
}

/// The muxer's answer to a guest `REQUEST` from `src_port` to `(3, dst_port)`.
fn answer(m: &mut Muxer, src_port: u32, dst_port: u32) -> u16 {
    m.on_guest_packet(&request(src_port, dst_port), &[]);
    let mut buf = [0u8; 256];
    for _ in 0..200 {
        m.process_host_events();
        if let Some((h, _)) = m.next_rx(&mut buf) {
            assert_eq!((h.src_port, h.dst_port), (dst_port, src_port));
            return h.op;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("no answer for the guest");
}

/// True when `listener` has a connection waiting.
fn has_pending(listener: &UnixListener) -> bool {
    listener.set_nonblocking(true).unwrap();
    listener.accept().is_ok()
}

fn setup() -> (tempfile::TempDir, PathBuf) {
    let base = tempfile::tempdir().unwrap();
    let fabric = base.path().join("vsock");
    (base, fabric)
}

#[test]
fn planted_fabric_entries_are_refused_like_a_closed_port() {
    let (base, fabric) = setup();
    let mut m = muxer(&fabric, None).unwrap();
    // A real listener outside the fabric, and one inside it.
    let outside = base.path().join("private.sock");
    let outside_l = UnixListener::bind(&outside).unwrap();
    let inside_l = UnixListener::bind(fabric.join("3_6000.sock")).unwrap();
    // Symlinks to either are refused, and neither listener sees a connection.
    std::os::unix::fs::symlink(&outside, fabric.join("3_5000.sock")).unwrap();
    std::os::unix::fs::symlink(fabric.join("3_6000.sock"), fabric.join("3_5001.sock")).unwrap();
    assert_eq!(answer(&mut m, 1025, 5000), OP_RST);
    assert_eq!(answer(&mut m, 1026, 5001), OP_RST);
    assert!(!has_pending(&outside_l), "connected through a symlink");
    assert!(!has_pending(&inside_l), "connected through a symlink");
    // A hard link to a socket bound elsewhere (two links), and a file that is no socket.
    std::fs::hard_link(&outside, fabric.join("3_5002.sock")).unwrap();
    assert_eq!(answer(&mut m, 1027, 5002), OP_RST);
    assert!(!has_pending(&outside_l), "connected through a hard link");
    std::fs::write(fabric.join("3_5003.sock"), b"not a socket").unwrap();
    assert_eq!(answer(&mut m, 1028, 5003), OP_RST);
    // Nothing there, and a stale socket: refused as before.
    assert_eq!(answer(&mut m, 1029, 5004), OP_RST);
    drop(UnixListener::bind(fabric.join("3_5005.sock")).unwrap());
    assert_eq!(answer(&mut m, 1030, 5005), OP_RST);
    // The genuine listener is reached.
    assert_eq!(answer(&mut m, 1031, 6000), OP_RESPONSE);
    inside_l.set_nonblocking(false).unwrap();
    let (mut s, _) = inside_l.accept().unwrap();
    let mut line = vec![0u8; "CONNECT-FROM 9 1031\n".len()];
    s.read_exact(&mut line).unwrap();
    assert_eq!(line, b"CONNECT-FROM 9 1031\n");
    assert_eq!(m.stats().connections, 1);
}

#[test]
fn parent_listeners_see_the_enclave_identity_and_believe_its_preamble() {
    if !is_root() {
        eprintln!("skipped: needs root to connect as another user");
        return;
    }
    let (_base, fabric) = setup();
    let mut m = muxer(&fabric, Some(ENCLAVE)).unwrap();
    // `<cid>.sock`: root's, the enclave's group, open to every host user.
    let meta = std::fs::symlink_metadata(fabric.join(format!("{CID}.sock"))).unwrap();
    assert!(std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()));
    assert_eq!((meta.uid(), meta.gid()), (0, ENCLAVE.gid));
    assert_eq!(meta.permissions().mode() & 0o777, 0o666);

    // A plain listener (mode 0666) sees the enclave's uid and gid, not root's.
    let plain = UnixListener::bind(fabric.join("3_7000.sock")).unwrap();
    std::fs::set_permissions(
        fabric.join("3_7000.sock"),
        std::fs::Permissions::from_mode(0o666),
    )
    .unwrap();
    assert_eq!(answer(&mut m, 1025, 7000), OP_RESPONSE);
    let (mut s, _) = plain.accept().unwrap();
    let cred = nix::sys::socket::getsockopt(&s.as_fd(), nix::sys::socket::sockopt::PeerCredentials)
        .unwrap();
    assert_eq!((cred.uid(), cred.gid()), (ENCLAVE.uid, ENCLAVE.gid));
    let mut line = vec![0u8; "CONNECT-FROM 9 1025\n".len()];
    s.read_exact(&mut line).unwrap();
    assert_eq!(line, b"CONNECT-FROM 9 1025\n");

    // The kernel checks the socket's permissions against the enclave's ids: a listener only
    // root may connect to is out of reach.
    let closed = UnixListener::bind(fabric.join("3_7001.sock")).unwrap();
    std::fs::set_permissions(
        fabric.join("3_7001.sock"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    assert_eq!(answer(&mut m, 1026, 7001), OP_RST);
    assert!(!has_pending(&closed));

    // A fabric listener believes the `CONNECT-FROM 9` of a non-root peer because `9.sock`
    // vouches for the enclave's gid.
    let listener = VsockListener::bind_fabric(&fabric, 7002).unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(listener.accept().map(|(s, peer)| (peer, s)));
    });
    assert_eq!(answer(&mut m, 1027, 7002), OP_RESPONSE);
    for _ in 0..100 {
        m.process_host_events();
        std::thread::sleep(Duration::from_millis(5));
    }
    let (peer, s) = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the listener did not accept the enclave's connection")
        .unwrap();
    assert_eq!(peer, VsockAddr::new(CID, 1027));
    let cred = nix::sys::socket::getsockopt(&s.as_fd(), nix::sys::socket::sockopt::PeerCredentials)
        .unwrap();
    assert_eq!(cred.uid(), ENCLAVE.uid);
}

#[test]
fn the_host_socket_replaces_only_its_own_stale_socket() {
    let (base, fabric) = setup();
    let path = fabric.join(format!("{CID}.sock"));
    // A stale socket of ours is replaced, and the file goes with the muxer.
    std::fs::create_dir_all(&fabric).unwrap();
    std::fs::set_permissions(&fabric, std::fs::Permissions::from_mode(0o1777)).unwrap();
    drop(UnixListener::bind(&path).unwrap());
    let m = muxer(&fabric, None).unwrap();
    assert_eq!(m.host_socket(), Some(path.as_path()));
    UnixStream::connect(&path).unwrap();
    // A live one (this muxer's) is not.
    assert!(matches!(
        muxer(&fabric, None),
        Err(MuxerError::CidInUse { cid: CID, .. })
    ));
    drop(m);
    assert!(std::fs::symlink_metadata(&path).is_err());
    // Neither is a regular file, nor a symlink (whose target is not created), and both stay.
    std::fs::write(&path, b"keep").unwrap();
    assert!(matches!(
        muxer(&fabric, None),
        Err(MuxerError::CidInUse { .. })
    ));
    assert_eq!(std::fs::read(&path).unwrap(), b"keep");
    std::fs::remove_file(&path).unwrap();
    let target = base.path().join("elsewhere.sock");
    std::os::unix::fs::symlink(&target, &path).unwrap();
    assert!(matches!(
        muxer(&fabric, None),
        Err(MuxerError::CidInUse { .. })
    ));
    assert!(std::fs::symlink_metadata(&path)
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(std::fs::symlink_metadata(&target).is_err());
}

#[test]
fn a_stale_socket_of_another_user_is_left_alone() {
    if !is_root() {
        eprintln!("skipped: needs root to own a file as another user");
        return;
    }
    let (_base, fabric) = setup();
    let path = fabric.join(format!("{CID}.sock"));
    drop(muxer(&fabric, None).unwrap()); // creates the fabric directory (1777)
    drop(UnixListener::bind(&path).unwrap());
    std::os::unix::fs::chown(&path, Some(ENCLAVE.uid), Some(ENCLAVE.gid)).unwrap();
    assert!(matches!(
        muxer(&fabric, None),
        Err(MuxerError::CidInUse { .. })
    ));
    assert_eq!(std::fs::symlink_metadata(&path).unwrap().uid(), ENCLAVE.uid);
}

#[test]
fn an_unsafe_fabric_directory_is_refused() {
    let (base, fabric) = setup();
    // World-writable without the sticky bit: anyone could replace anyone's socket.
    std::fs::create_dir(&fabric).unwrap();
    std::fs::set_permissions(&fabric, std::fs::Permissions::from_mode(0o777)).unwrap();
    assert!(matches!(muxer(&fabric, None), Err(MuxerError::Fabric(_))));
    assert!(std::fs::read_dir(&fabric).unwrap().next().is_none());
    // A symlink to a good directory.
    let real = base.path().join("real");
    drop(muxer(&real, None).unwrap());
    let link = base.path().join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    assert!(matches!(muxer(&link, None), Err(MuxerError::Fabric(_))));
}
