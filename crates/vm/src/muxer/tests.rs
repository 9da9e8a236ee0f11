//! The muxer's routing, driven end to end: guest packets in, host sockets on a temporary
//! fabric, packets for the guest out.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use cloister_vsock::broker::NsmService;
use cloister_vsock::proto::{self, LineBuf};
use cloister_vsock::{VsockAddr, HEARTBEAT_BYTE, HEARTBEAT_PORT, NSM_PORT};

use super::{Heartbeat, Limits, Muxer, MuxerConfig, BUF_ALLOC, MAX_PKT_DATA};
use crate::packet::{
    Header, OP_CREDIT_REQUEST, OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE, OP_RST, OP_RW,
    OP_SHUTDOWN, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM,
};

const CID: u32 = 9;

struct Echo;
impl NsmService for Echo {
    fn handle(&self, request: &[u8]) -> Vec<u8> {
        [b"nsm:".as_slice(), request].concat()
    }
}

fn muxer(dir: &Path) -> (Muxer, Arc<Heartbeat>) {
    let hb = Arc::new(Heartbeat::new(None));
    let m = Muxer::new(MuxerConfig {
        cid: CID,
        fabric_dir: dir.join("vsock"),
        nsm: Arc::new(Echo),
        heartbeat: hb.clone(),
        limits: Limits::default(),
        bind_host_socket: true,
        enclave_identity: None,
    })
    .unwrap();
    (m, hb)
}

fn guest(op: u16, src_port: u32, dst_cid: u64, dst_port: u32, len: usize) -> Header {
    Header {
        src_cid: u64::from(CID),
        dst_cid,
        src_port,
        dst_port,
        len: u32::try_from(len).unwrap(),
        type_: TYPE_STREAM,
        op,
        flags: 0,
        buf_alloc: 65536,
        fwd_cnt: 0,
    }
}

/// Pumps host events until the muxer has a packet for the guest.
fn next(m: &mut Muxer, buf: &mut [u8]) -> (Header, Vec<u8>) {
    for _ in 0..500 {
        m.process_host_events();
        if let Some((h, n)) = m.next_rx(buf) {
            return (h, buf[..n].to_vec());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("nothing for the guest");
}

#[test]
fn refused_ports_and_other_cids_get_rst() {
    let dir = tempfile::tempdir().unwrap();
    let (mut m, _) = muxer(dir.path());
    let mut buf = [0u8; 4096];
    m.on_guest_packet(&guest(OP_REQUEST, 1025, 3, 4444, 0), &[]);
    let (h, _) = next(&mut m, &mut buf);
    assert_eq!(
        (h.op, h.src_cid, h.src_port, h.dst_port),
        (OP_RST, 3, 4444, 1025)
    );
    assert_eq!(h.dst_cid, u64::from(CID));
    // Another enclave (cid 10) is unreachable; so is the host cid 2.
    for cid in [10u64, 2, u64::MAX] {
        m.on_guest_packet(&guest(OP_REQUEST, 1026, cid, 5000, 0), &[]);
        assert_eq!(next(&mut m, &mut buf).0.op, OP_RST);
    }
    // Data on a connection that does not exist.
    m.on_guest_packet(&guest(OP_RW, 1027, 3, 5000, 3), b"abc");
    assert_eq!(next(&mut m, &mut buf).0.op, OP_RST);
    // A packet claiming another source cid is dropped without an answer.
    let mut h = guest(OP_REQUEST, 1028, 3, 5000, 0);
    h.src_cid = 77;
    m.on_guest_packet(&h, &[]);
    assert!(!m.has_rx());
    assert_eq!(m.stats().dropped, 1);
    // Not a stream.
    let mut h = guest(OP_REQUEST, 1029, 3, 5000, 0);
    h.type_ = 2;
    m.on_guest_packet(&h, &[]);
    assert_eq!(next(&mut m, &mut buf).0.op, OP_RST);
    // An RST never gets an RST back.
    m.on_guest_packet(&guest(OP_RST, 1030, 3, 5000, 0), &[]);
    assert!(!m.has_rx());
}

#[test]
fn guest_to_parent_stream_with_credit() {
    let dir = tempfile::tempdir().unwrap();
    let (mut m, _) = muxer(dir.path());
    let listener =
        cloister_vsock::VsockListener::bind_fabric(&dir.path().join("vsock"), 5000).unwrap();
    let mut buf = vec![0u8; MAX_PKT_DATA];
    m.on_guest_packet(&guest(OP_REQUEST, 1025, 3, 5000, 0), &[]);
    let (h, _) = next(&mut m, &mut buf);
    assert_eq!(h.op, OP_RESPONSE);
    assert_eq!(h.buf_alloc, BUF_ALLOC);
    let (mut host, peer) = listener.accept().unwrap();
    assert_eq!(peer, VsockAddr::new(CID, 1025));
    m.on_guest_packet(&guest(OP_RW, 1025, 3, 5000, 5), b"hello");
    let mut got = [0u8; 5];
    host.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"hello");
    // Host to guest, limited by the guest's credit (buf_alloc 65536, nothing consumed).
    let big = vec![0x5au8; 100_000];
    host.write_all(&big).unwrap();
    let mut received = 0usize;
    while received < 65536 {
        let (h, data) = next(&mut m, &mut buf);
        assert_eq!(h.op, OP_RW);
        received += data.len();
    }
    assert_eq!(received, 65536);
    m.process_host_events();
    assert!(
        m.next_rx(&mut buf).is_none(),
        "sent beyond the guest's credit"
    );
    // The guest consumes everything: the rest flows.
    let mut upd = guest(OP_CREDIT_UPDATE, 1025, 3, 5000, 0);
    upd.fwd_cnt = 65536;
    m.on_guest_packet(&upd, &[]);
    while received < big.len() {
        received += next(&mut m, &mut buf).1.len();
    }
    // The guest exceeds the credit we gave it: reset.
    let flood = vec![1u8; MAX_PKT_DATA];
    let mut reset = false;
    for _ in 0..(BUF_ALLOC as usize / MAX_PKT_DATA + 8) {
        // The host does not read, so our buffer fills.
        m.on_guest_packet(&guest(OP_RW, 1025, 3, 5000, flood.len()), &flood);
        if m.stats().connections == 0 {
            reset = true;
            break;
        }
    }
    assert!(reset, "credit overrun not detected");
}

#[test]
fn half_close_keeps_the_other_direction() {
    let dir = tempfile::tempdir().unwrap();
    let (mut m, _) = muxer(dir.path());
    let listener =
        cloister_vsock::VsockListener::bind_fabric(&dir.path().join("vsock"), 5001).unwrap();
    let mut buf = vec![0u8; 4096];
    m.on_guest_packet(&guest(OP_REQUEST, 2000, 3, 5001, 0), &[]);
    assert_eq!(next(&mut m, &mut buf).0.op, OP_RESPONSE);
    let (host, _) = listener.accept().unwrap();
    host.shutdown(Shutdown::Write).unwrap();
    let (h, _) = next(&mut m, &mut buf);
    assert_eq!((h.op, h.flags), (OP_SHUTDOWN, SHUTDOWN_SEND));
    m.on_guest_packet(&guest(OP_RW, 2000, 3, 5001, 4), b"late");
    let mut got = [0u8; 4];
    (&host).read_exact(&mut got).unwrap();
    assert_eq!(&got, b"late");
    // The guest closes: RST, and the host sees the end of the stream.
    let mut close = guest(OP_SHUTDOWN, 2000, 3, 5001, 0);
    close.flags = SHUTDOWN_SEND | SHUTDOWN_RCV;
    m.on_guest_packet(&close, &[]);
    assert_eq!(next(&mut m, &mut buf).0.op, OP_RST);
    assert_eq!(m.stats().connections, 0);
    let mut rest = Vec::new();
    (&host).read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
}

#[test]
fn parent_to_guest_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let (mut m, _) = muxer(dir.path());
    let mut buf = vec![0u8; 4096];
    let path = dir.path().join(format!("vsock/{CID}.sock"));
    let mut host = UnixStream::connect(&path).unwrap();
    host.write_all(b"CONNECT 5005\n").unwrap();
    let (h, _) = next(&mut m, &mut buf);
    assert_eq!((h.op, h.src_cid, h.dst_port), (OP_REQUEST, 3, 5005));
    let host_port = h.src_port;
    m.on_guest_packet(&guest(OP_RESPONSE, 5005, 3, host_port, 0), &[]);
    let mut line = LineBuf::new();
    proto::read_line(&mut host, &mut line).unwrap();
    assert_eq!(line.line(), format!("OK {host_port}").as_bytes());
    m.on_guest_packet(&guest(OP_RW, 5005, 3, host_port, 3), b"xyz");
    let mut got = [0u8; 3];
    host.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"xyz");
    // Refused by the guest: closed without an answer.
    let mut host2 = UnixStream::connect(&path).unwrap();
    host2.write_all(b"CONNECT 6006\n").unwrap();
    let (h, _) = next(&mut m, &mut buf);
    m.on_guest_packet(&guest(OP_RST, 6006, 3, h.src_port, 0), &[]);
    let mut rest = Vec::new();
    host2.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    // A malformed line: closed, nothing sent to the guest.
    let mut host3 = UnixStream::connect(&path).unwrap();
    host3.write_all(b"HELLO\n").unwrap();
    host3
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    for _ in 0..50 {
        m.process_host_events();
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(!m.has_rx());
    let mut rest = Vec::new();
    host3.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
}

#[test]
fn heartbeat_and_nsm_services() {
    let dir = tempfile::tempdir().unwrap();
    let (mut m, hb) = muxer(dir.path());
    let mut buf = vec![0u8; 4096];
    m.on_guest_packet(&guest(OP_REQUEST, 1025, 3, HEARTBEAT_PORT, 0), &[]);
    assert_eq!(next(&mut m, &mut buf).0.op, OP_RESPONSE);
    m.on_guest_packet(&guest(OP_RW, 1025, 3, HEARTBEAT_PORT, 1), &[HEARTBEAT_BYTE]);
    let (h, data) = next(&mut m, &mut buf);
    assert_eq!((h.op, data.as_slice()), (OP_RW, &[HEARTBEAT_BYTE][..]));
    assert!(hb.wait(Duration::from_secs(5)));
    // A second connection to 9000 goes to the parent (nobody listens here: RST).
    m.on_guest_packet(&guest(OP_REQUEST, 1026, 3, HEARTBEAT_PORT, 0), &[]);
    assert_eq!(next(&mut m, &mut buf).0.op, OP_RST);
    // NSM on (0, 1).
    m.on_guest_packet(&guest(OP_REQUEST, 1027, 0, NSM_PORT, 0), &[]);
    assert_eq!(next(&mut m, &mut buf).0.op, OP_RESPONSE);
    let frame = [&3u32.to_be_bytes()[..], b"abc"].concat();
    m.on_guest_packet(&guest(OP_RW, 1027, 0, NSM_PORT, frame.len()), &frame);
    let mut answer = Vec::new();
    while answer.len() < 11 {
        answer.extend(next(&mut m, &mut buf).1);
    }
    assert_eq!(answer, [&7u32.to_be_bytes()[..], b"nsm:abc"].concat());
    // Other hypervisor ports are refused.
    m.on_guest_packet(&guest(OP_REQUEST, 1028, 0, 2, 0), &[]);
    assert_eq!(next(&mut m, &mut buf).0.op, OP_RST);
}

#[test]
fn floods_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let (mut m, _) = muxer(dir.path());
    // RSTs for refused ports pile up while the guest gives no RX buffers.
    for port in 0..10_000u32 {
        m.on_guest_packet(&guest(OP_REQUEST, port, 3, 4444, 0), &[]);
    }
    assert_eq!(
        m.stats().control_queued,
        Limits::default().max_control_queue
    );
    // Connections are capped.
    let _l = UnixListener::bind(dir.path().join("vsock/3_5000.sock")).unwrap();
    let mut buf = [0u8; 64];
    while m.next_rx(&mut buf).is_some() {}
    for port in 0..1000u32 {
        m.on_guest_packet(&guest(OP_REQUEST, port, 3, 5000, 0), &[]);
        while m.next_rx(&mut buf).is_some() {}
    }
    assert!(m.stats().connections <= Limits::default().max_connections);
}

#[test]
fn credit_request_gets_one_update_with_our_counters() {
    let dir = tempfile::tempdir().unwrap();
    let (mut m, _) = muxer(dir.path());
    let listener =
        cloister_vsock::VsockListener::bind_fabric(&dir.path().join("vsock"), 5002).unwrap();
    let mut buf = vec![0u8; 4096];
    m.on_guest_packet(&guest(OP_REQUEST, 3000, 3, 5002, 0), &[]);
    assert_eq!(next(&mut m, &mut buf).0.op, OP_RESPONSE);
    let (mut host, _) = listener.accept().unwrap();
    m.on_guest_packet(&guest(OP_RW, 3000, 3, 5002, 4), b"data");
    let mut got = [0u8; 4];
    host.read_exact(&mut got).unwrap();
    // Two requests before the guest takes an RX buffer: one update, carrying fwd_cnt.
    m.on_guest_packet(&guest(OP_CREDIT_REQUEST, 3000, 3, 5002, 0), &[]);
    m.on_guest_packet(&guest(OP_CREDIT_REQUEST, 3000, 3, 5002, 0), &[]);
    assert_eq!(m.stats().control_queued, 1);
    let (h, _) = next(&mut m, &mut buf);
    assert_eq!(
        (h.op, h.buf_alloc, h.fwd_cnt),
        (OP_CREDIT_UPDATE, BUF_ALLOC, 4)
    );
    assert!(!m.has_rx());
    // Answered, a new request gets a new update.
    m.on_guest_packet(&guest(OP_CREDIT_REQUEST, 3000, 3, 5002, 0), &[]);
    assert_eq!(next(&mut m, &mut buf).0.op, OP_CREDIT_UPDATE);
}

#[test]
fn an_unknown_op_resets_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    let (mut m, _) = muxer(dir.path());
    let _listener =
        cloister_vsock::VsockListener::bind_fabric(&dir.path().join("vsock"), 5003).unwrap();
    let mut buf = vec![0u8; 4096];
    m.on_guest_packet(&guest(OP_REQUEST, 3001, 3, 5003, 0), &[]);
    assert_eq!(next(&mut m, &mut buf).0.op, OP_RESPONSE);
    assert_eq!(m.stats().connections, 1);
    m.on_guest_packet(&guest(99, 3001, 3, 5003, 0), &[]);
    assert_eq!(next(&mut m, &mut buf).0.op, OP_RST);
    assert_eq!((m.stats().connections, m.stats().resets), (0, 1));
    // A RESPONSE to a connection the guest opened itself is out of turn: reset too.
    m.on_guest_packet(&guest(OP_REQUEST, 3002, 3, 5003, 0), &[]);
    assert_eq!(next(&mut m, &mut buf).0.op, OP_RESPONSE);
    m.on_guest_packet(&guest(OP_RESPONSE, 3002, 3, 5003, 0), &[]);
    assert_eq!(next(&mut m, &mut buf).0.op, OP_RST);
    assert_eq!(m.stats().connections, 0);
}
