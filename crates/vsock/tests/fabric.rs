//! Host <-> enclave through a real broker: both directions, refusals, CID rules, EADDRINUSE,
//! heartbeat, NSM framing, hostile input and floods.

mod common;

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cloister_vsock::nsm_frame::{read_frame, write_frame, NSM_FRAME_HARD_CAP};
use cloister_vsock::{
    Broker, BrokerConfig, BrokerError, BrokerLimits, VsockAddr, VsockError, VsockListener,
    VsockStream, HEARTBEAT_BYTE, HEARTBEAT_PORT, NSM_PORT, PARENT_CID, VMADDR_CID_HYPERVISOR,
};
use common::{FakeNsm, Fixture};

fn echo_once(stream: &mut VsockStream) {
    let mut buf = [0u8; 64];
    let n = stream.read(&mut buf).unwrap();
    stream.write_all(&buf[..n]).unwrap();
}

/// Retries `f` until it succeeds or two seconds pass (for state the broker updates on its own
/// threads, such as a listener that just closed).
fn eventually<T>(mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "condition not reached in time");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn host_to_enclave_stream() {
    let fx = Fixture::new(16);
    let listener = VsockListener::bind_enclave(fx.enclave_socket(), 5000).unwrap();
    assert_eq!(listener.local_addr().port, 5000);
    let server = std::thread::spawn(move || {
        let (mut s, peer) = listener.accept().unwrap();
        assert_eq!(peer.cid, PARENT_CID);
        echo_once(&mut s);
        peer
    });
    let mut host = VsockStream::connect_fabric(&fx.fabric(), VsockAddr::new(16, 5000)).unwrap();
    assert_eq!(host.peer_addr(), VsockAddr::new(16, 5000));
    host.write_all(b"ping from the parent").unwrap();
    let mut buf = [0u8; 20];
    host.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping from the parent");
    let peer = server.join().unwrap();
    assert_eq!(peer, host.local_addr());
    assert_eq!(fx.broker.stats().streams, 1);
}

#[test]
fn enclave_to_host_stream() {
    let fx = Fixture::new(17);
    let listener = VsockListener::bind_fabric(&fx.fabric(), 6000).unwrap();
    assert_eq!(listener.local_addr(), VsockAddr::new(PARENT_CID, 6000));
    let server = std::thread::spawn(move || {
        let (mut s, peer) = listener.accept().unwrap();
        echo_once(&mut s);
        peer
    });
    let mut enc =
        VsockStream::connect_enclave(fx.enclave_socket(), VsockAddr::new(PARENT_CID, 6000))
            .unwrap();
    enc.write_all(b"hello parent").unwrap();
    let mut buf = [0u8; 12];
    enc.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hello parent");
    let peer = server.join().unwrap();
    assert_eq!(peer, VsockAddr::new(17, enc.local_addr().port));
}

#[test]
fn streams_outlive_the_broker_and_sockets_are_removed() {
    let mut fx = Fixture::new(18);
    let listener = VsockListener::bind_fabric(&fx.fabric(), 6001).unwrap();
    let mut enc =
        VsockStream::connect_enclave(fx.enclave_socket(), VsockAddr::new(PARENT_CID, 6001))
            .unwrap();
    let (mut host, _) = listener.accept().unwrap();
    let host_sock = fx.broker.host_socket().to_path_buf();
    let enclave_sock = fx.broker.enclave_socket().to_path_buf();
    assert!(host_sock.exists() && enclave_sock.exists());
    fx.broker.shutdown();
    assert!(!host_sock.exists());
    assert!(!enclave_sock.exists());
    enc.write_all(b"still here").unwrap();
    let mut buf = [0u8; 10];
    host.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"still here");
    // Idempotent.
    fx.broker.shutdown();
}

#[test]
fn refused_ports_and_missing_enclaves() {
    let fx = Fixture::new(19);
    let err = VsockStream::connect_fabric(&fx.fabric(), VsockAddr::new(19, 4242)).unwrap_err();
    assert!(matches!(err, VsockError::Refused { .. }), "{err:?}");
    let err = VsockStream::connect_fabric(&fx.fabric(), VsockAddr::new(99, 1)).unwrap_err();
    assert!(matches!(err, VsockError::Refused { .. }), "{err:?}");
    let err = VsockStream::connect_enclave(fx.enclave_socket(), VsockAddr::new(PARENT_CID, 4242))
        .unwrap_err();
    assert!(matches!(err, VsockError::Refused { .. }), "{err:?}");
    assert_eq!(
        std::io::Error::from(err).kind(),
        std::io::ErrorKind::ConnectionRefused
    );
    let err = VsockStream::connect_enclave(
        fx.enclave_socket(),
        VsockAddr::new(VMADDR_CID_HYPERVISOR, 2),
    )
    .unwrap_err();
    assert!(matches!(err, VsockError::Refused { .. }), "{err:?}");
}

#[test]
fn cid_rules() {
    let fx = Fixture::new(20);
    // The enclave reaches neither other enclaves nor reserved cids.
    for cid in [1, 2, 4, 20, 21, u32::MAX] {
        let err =
            VsockStream::connect_enclave(fx.enclave_socket(), VsockAddr::new(cid, 80)).unwrap_err();
        assert!(
            matches!(err, VsockError::NotPermitted { .. }),
            "{cid}: {err:?}"
        );
    }
    // Another enclave's broker exists, and still cannot be reached from this one.
    let other = Fixture::new(21);
    let _l = VsockListener::bind_enclave(other.enclave_socket(), 80).unwrap();
    let err =
        VsockStream::connect_enclave(fx.enclave_socket(), VsockAddr::new(21, 80)).unwrap_err();
    assert!(matches!(err, VsockError::NotPermitted { .. }));
    // The host fabric dials enclaves only.
    for cid in [0, 1, 2, 3, u32::MAX] {
        let err = VsockStream::connect_fabric(&fx.fabric(), VsockAddr::new(cid, 80)).unwrap_err();
        assert!(matches!(err, VsockError::InvalidAddress { .. }), "{err:?}");
    }
    // Brokers serve enclave cids only, one each.
    let nsm = Arc::new(FakeNsm::default());
    for cid in [0, 3, u32::MAX] {
        let cfg = BrokerConfig::new(
            cid,
            fx.dir.path(),
            fx.dir.path().join("x.sock"),
            nsm.clone(),
        );
        assert!(matches!(
            Broker::start(cfg),
            Err(BrokerError::InvalidCid(_))
        ));
    }
    let cfg = BrokerConfig::new(20, fx.dir.path(), fx.dir.path().join("y.sock"), nsm);
    assert!(matches!(
        Broker::start(cfg),
        Err(BrokerError::CidInUse { cid: 20, .. })
    ));
}

#[test]
fn address_in_use() {
    let fx = Fixture::new(22);
    let first = VsockListener::bind_enclave(fx.enclave_socket(), 7000).unwrap();
    let err = VsockListener::bind_enclave(fx.enclave_socket(), 7000).unwrap_err();
    assert!(
        matches!(err, VsockError::AddrInUse { port: 7000 }),
        "{err:?}"
    );
    drop(first);
    let _again = eventually(|| VsockListener::bind_enclave(fx.enclave_socket(), 7000).ok());

    let host = VsockListener::bind_fabric(&fx.fabric(), 7001).unwrap();
    let err = VsockListener::bind_fabric(&fx.fabric(), 7001).unwrap_err();
    assert!(
        matches!(err, VsockError::AddrInUse { port: 7001 }),
        "{err:?}"
    );
    drop(host);
    assert!(!fx.fabric().join("3_7001.sock").exists());
    // A stale socket file (its owner died without cleaning up) is replaced.
    let stale = fx.fabric().join("3_7002.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    assert!(stale.exists());
    let _l = VsockListener::bind_fabric(&fx.fabric(), 7002).unwrap();
}

#[test]
fn listener_accepts_many_and_closing_it_refuses() {
    let fx = Fixture::new(23);
    let listener = VsockListener::bind_enclave(fx.enclave_socket(), 7100).unwrap();
    let fabric = fx.fabric();
    let clients: Vec<_> = (0..5)
        .map(|_| VsockStream::connect_fabric(&fabric, VsockAddr::new(23, 7100)).unwrap())
        .collect();
    let mut ports = Vec::new();
    for _ in 0..5 {
        let (_s, peer) = listener.accept().unwrap();
        ports.push(peer.port);
    }
    let mut expected: Vec<u32> = clients.iter().map(|c| c.local_addr().port).collect();
    ports.sort_unstable();
    expected.sort_unstable();
    assert_eq!(ports, expected);
    drop(listener);
    let err = eventually(|| VsockStream::connect_fabric(&fabric, VsockAddr::new(23, 7100)).err());
    assert!(matches!(err, VsockError::Refused { .. }));
}

#[test]
fn heartbeat_is_answered_once_then_goes_to_the_parent() {
    let dir = tempfile::tempdir().unwrap();
    let beats = Arc::new(AtomicUsize::new(0));
    let counter = beats.clone();
    let cfg = BrokerConfig::new(
        24,
        dir.path(),
        dir.path().join("e.sock"),
        Arc::new(FakeNsm::default()),
    )
    .on_heartbeat(move || {
        counter.fetch_add(1, Ordering::SeqCst);
    });
    let broker = Broker::start(cfg).unwrap();
    assert!(!broker.booted());
    assert!(!broker.wait_for_heartbeat(Duration::from_millis(10)));
    let mut hb = VsockStream::connect_enclave(
        broker.enclave_socket(),
        VsockAddr::new(PARENT_CID, HEARTBEAT_PORT),
    )
    .unwrap();
    hb.write_all(&[HEARTBEAT_BYTE]).unwrap();
    let mut b = [0u8; 1];
    hb.read_exact(&mut b).unwrap();
    assert_eq!(b[0], HEARTBEAT_BYTE);
    assert!(broker.wait_for_heartbeat(Duration::from_secs(2)));
    assert!(broker.booted());
    assert_eq!(beats.load(Ordering::SeqCst), 1);

    // Later connections to port 9000 are ordinary: refused without a parent listener...
    let err = VsockStream::connect_enclave(
        broker.enclave_socket(),
        VsockAddr::new(PARENT_CID, HEARTBEAT_PORT),
    )
    .unwrap_err();
    assert!(matches!(err, VsockError::Refused { .. }));
    // ...and delivered to one when it exists.
    let parent = VsockListener::bind_fabric(&dir.path().join("vsock"), HEARTBEAT_PORT).unwrap();
    let mut c = VsockStream::connect_enclave(
        broker.enclave_socket(),
        VsockAddr::new(PARENT_CID, HEARTBEAT_PORT),
    )
    .unwrap();
    c.write_all(b"x").unwrap();
    let (mut s, peer) = parent.accept().unwrap();
    assert_eq!(peer.cid, 24);
    s.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"x");
    assert_eq!(beats.load(Ordering::SeqCst), 1);
}

#[test]
fn wrong_heartbeat_byte_does_not_boot() {
    let fx = Fixture::new(25);
    let mut hb = VsockStream::connect_enclave(
        fx.enclave_socket(),
        VsockAddr::new(PARENT_CID, HEARTBEAT_PORT),
    )
    .unwrap();
    hb.write_all(&[0x00]).unwrap();
    let mut b = [0u8; 1];
    assert_eq!(hb.read(&mut b).unwrap(), 0);
    assert!(!fx.broker.booted());
}

#[test]
fn nsm_framing() {
    let fx = Fixture::new(26);
    let mut nsm = VsockStream::connect_enclave(
        fx.enclave_socket(),
        VsockAddr::new(VMADDR_CID_HYPERVISOR, NSM_PORT),
    )
    .unwrap();
    for req in [b"DescribeNSM".as_slice(), b"", &[0xa1; 4096]] {
        write_frame(&mut nsm, req).unwrap();
        let resp = read_frame(&mut nsm, NSM_FRAME_HARD_CAP).unwrap().unwrap();
        assert_eq!(resp, [b"resp:".as_slice(), req].concat());
    }
    // Over the request limit: the service answers InputTooLarge, the channel stays open.
    write_frame(&mut nsm, &[0u8; 4097]).unwrap();
    let resp = read_frame(&mut nsm, NSM_FRAME_HARD_CAP).unwrap().unwrap();
    assert_eq!(resp, b"InputTooLarge");
    write_frame(&mut nsm, &[1u8; NSM_FRAME_HARD_CAP]).unwrap();
    let resp = read_frame(&mut nsm, NSM_FRAME_HARD_CAP).unwrap().unwrap();
    assert_eq!(resp, b"InputTooLarge");
    let calls = fx.nsm.calls.load(Ordering::SeqCst);
    // Over the hard cap: closed without reading the body or calling the service.
    nsm.write_all(&(u32::try_from(NSM_FRAME_HARD_CAP).unwrap() + 1).to_be_bytes())
        .unwrap();
    let mut b = [0u8; 1];
    assert_eq!(nsm.read(&mut b).unwrap(), 0);
    assert_eq!(fx.nsm.calls.load(Ordering::SeqCst), calls);
}

fn raw_exchange(path: &std::path::Path, send: &[u8]) -> Vec<u8> {
    let mut s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(send);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

#[test]
fn garbage_and_oversized_lines() {
    let fx = Fixture::new(27);
    let enc = fx.enclave_socket().to_path_buf();
    for bad in [
        b"HELLO\n".as_slice(),
        b"CONNECT 3\n",
        b"CONNECT 3 99999999999\n",
        b"CONNECT 03 80\n",
        b"LISTEN -1\n",
        b"CONNECT\x003 80\n",
        b"\n",
    ] {
        assert_eq!(raw_exchange(&enc, bad), b"ERR EINVAL\n", "{bad:?}");
    }
    // No newline within the line limit: closed without an answer.
    assert_eq!(raw_exchange(&enc, &[b'A'; 4096]), b"");
    // Host side: garbage gets no OK.
    let host = fx.broker.host_socket().to_path_buf();
    for bad in [b"CONNECT\n".as_slice(), b"GET / HTTP/1.1\r\n", &[0xff; 200]] {
        assert_eq!(raw_exchange(&host, bad), b"", "{bad:?}");
    }
    // A host listener drops a peer with a bad preamble and goes on accepting.
    let listener = VsockListener::bind_fabric(&fx.fabric(), 7200).unwrap();
    let path = fx.fabric().join("3_7200.sock");
    let mut bad = UnixStream::connect(&path).unwrap();
    bad.write_all(b"CONNECT-FROM 1 x\n").unwrap();
    let mut good = UnixStream::connect(&path).unwrap();
    good.write_all(b"CONNECT-FROM 30 1234\n").unwrap();
    let (_s, peer) = listener.accept().unwrap();
    assert_eq!(peer, VsockAddr::new(30, 1234));
    // The broker still works.
    let _l = VsockListener::bind_enclave(fx.enclave_socket(), 7201).unwrap();
    let _c = VsockStream::connect_fabric(&fx.fabric(), VsockAddr::new(27, 7201)).unwrap();
}

#[test]
fn handshake_timeout_closes_silent_peers() {
    let limits = BrokerLimits {
        handshake_timeout: Duration::from_millis(100),
        ..BrokerLimits::default()
    };
    let fx = Fixture::with_limits(28, limits);
    assert_eq!(raw_exchange(fx.enclave_socket(), b"CONN"), b"");
    assert_eq!(raw_exchange(fx.broker.host_socket(), b""), b"");
}

#[test]
fn connection_and_listener_floods_are_capped() {
    let limits = BrokerLimits {
        max_enclave_connections: 8,
        max_listeners: 3,
        max_host_pending: 4,
        ..BrokerLimits::default()
    };
    let fx = Fixture::with_limits(29, limits);
    let enc = fx.enclave_socket().to_path_buf();
    // Eight silent connections fill the enclave's slots.
    let idle: Vec<UnixStream> = (0..8).map(|_| UnixStream::connect(&enc).unwrap()).collect();
    eventually(|| (fx.broker.stats().enclave_connections == 8).then_some(()));
    let mut extra = UnixStream::connect(&enc).unwrap();
    extra
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut answer = Vec::new();
    extra.read_to_end(&mut answer).unwrap();
    assert_eq!(answer, b"ERR EAGAIN\n");
    assert!(fx.broker.stats().rejected >= 1);
    for s in &idle {
        s.shutdown(Shutdown::Both).unwrap();
    }
    drop(idle);
    eventually(|| (fx.broker.stats().enclave_connections == 0).then_some(()));

    // Listener cap.
    let ls: Vec<_> = (0..3)
        .map(|p| VsockListener::bind_enclave(&enc, 8000 + p).unwrap())
        .collect();
    let err = VsockListener::bind_enclave(&enc, 8100).unwrap_err();
    assert!(
        matches!(err, VsockError::Remote { errno, .. } if errno == libc::ENOBUFS),
        "{err:?}"
    );
    assert_eq!(fx.broker.stats().listeners, 3);

    // Host-side flood of silent clients: capped, and real clients get through once it drains.
    let host = fx.broker.host_socket().to_path_buf();
    let silent: Vec<UnixStream> = (0..16)
        .filter_map(|_| UnixStream::connect(&host).ok())
        .collect();
    eventually(|| (fx.broker.stats().host_pending <= 4).then_some(()));
    drop(silent);
    let c = eventually(|| VsockStream::connect_fabric(&fx.fabric(), VsockAddr::new(29, 8000)).ok());
    let (_s, peer) = ls[0].accept().unwrap();
    assert_eq!(peer, c.local_addr());

    // A burst of real connections within the caps all succeed.
    let fabric = fx.fabric();
    let handles: Vec<_> = (0..32)
        .map(|_| {
            let fabric = fabric.clone();
            std::thread::spawn(move || {
                VsockStream::connect_fabric(&fabric, VsockAddr::new(29, 8001)).map(|_| ())
            })
        })
        .collect();
    let mut ok = 0;
    for h in handles {
        if h.join().unwrap().is_ok() {
            ok += 1;
        }
    }
    for _ in 0..ok {
        ls[1].accept().unwrap();
    }
    assert!(ok > 0);
}

#[test]
fn an_enclave_socket_bound_early_queues_the_heartbeat_until_the_broker_starts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("e.sock");
    let sock = cloister_vsock::EnclaveSocket::bind(&path).unwrap();
    assert_eq!(sock.path(), path);
    // A second bind of a live socket is refused; the first keeps its file.
    assert!(matches!(
        cloister_vsock::EnclaveSocket::bind(&path),
        Err(BrokerError::EnclaveSocketInUse(_))
    ));
    assert!(path.exists());

    // The enclave connects and sends its heartbeat before anything serves the socket.
    let enclave_path = path.clone();
    let enclave = std::thread::spawn(move || {
        let mut hb =
            VsockStream::connect_enclave(&enclave_path, VsockAddr::new(PARENT_CID, HEARTBEAT_PORT))
                .unwrap();
        hb.write_all(&[HEARTBEAT_BYTE]).unwrap();
        let mut b = [0u8; 1];
        hb.read_exact(&mut b).unwrap();
        b[0]
    });
    std::thread::sleep(Duration::from_millis(50));
    let cfg = BrokerConfig::new(
        25,
        dir.path(),
        dir.path().join("unused.sock"),
        Arc::new(FakeNsm::default()),
    );
    let mut broker = Broker::start_bound(cfg, sock).unwrap();
    assert_eq!(broker.enclave_socket(), path);
    assert_eq!(enclave.join().unwrap(), HEARTBEAT_BYTE);
    assert!(broker.wait_for_heartbeat(Duration::from_secs(2)));
    assert!(!dir.path().join("unused.sock").exists());
    broker.shutdown();
    assert!(!path.exists(), "the broker removes the socket it was given");

    // Dropped without a broker, or handed to one that cannot start, the socket is removed.
    drop(cloister_vsock::EnclaveSocket::bind(&path).unwrap());
    assert!(!path.exists());
    let sock = cloister_vsock::EnclaveSocket::bind(&path).unwrap();
    let bad = BrokerConfig::new(2, dir.path(), &path, Arc::new(FakeNsm::default()));
    assert!(matches!(
        Broker::start_bound(bad, sock),
        Err(BrokerError::InvalidCid(2))
    ));
    assert!(!path.exists());
}
