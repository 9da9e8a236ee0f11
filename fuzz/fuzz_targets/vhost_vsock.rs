//! Fuzzes what a guest can send the vhost-user vsock device: the virtio-vsock packet header
//! (`cloister_vm::packet::Header::parse`) and the connection state machine
//! (`cloister_vm::muxer::Muxer`), with a live parent listener so connections get established
//! and data, credit and shutdown paths run. The input is a script: each step either delivers a
//! guest packet (44 header bytes + payload) or drains the device's RX side with a buffer of a
//! fuzzer-chosen size.
#![no_main]

use std::io::Read;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use cloister_vm::muxer::{Heartbeat, Limits, Muxer, MuxerConfig, MAX_PKT_DATA};
use cloister_vm::packet::{Header, HEADER_LEN};
use libfuzzer_sys::fuzz_target;

const CID: u32 = 42;

struct Nsm;
impl cloister_vsock::NsmService for Nsm {
    fn handle(&self, request: &[u8]) -> Vec<u8> {
        request.iter().rev().copied().collect()
    }
}

/// A parent listening on port 5000 in a private fabric directory. No threads (a thread still
/// running at exit shows up as a leak): [`drain`] accepts and reads everything pending.
struct Parent {
    dir: PathBuf,
    listener: UnixListener,
    conns: Vec<UnixStream>,
}

fn parent() -> &'static Mutex<Parent> {
    static PARENT: OnceLock<Mutex<Parent>> = OnceLock::new();
    PARENT.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("vhost-vsock-fuzz-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let _ = std::fs::remove_file(dir.join("3_5000.sock"));
        let listener = UnixListener::bind(dir.join("3_5000.sock")).expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        Mutex::new(Parent {
            dir,
            listener,
            conns: Vec::new(),
        })
    })
}

/// Accepts pending connections and reads what they sent; drops the closed ones.
fn drain() {
    let mut p = parent().lock().unwrap_or_else(|e| e.into_inner());
    while let Ok((c, _)) = p.listener.accept() {
        if c.set_nonblocking(true).is_ok() {
            p.conns.push(c);
        }
    }
    let mut sink = [0u8; 4096];
    p.conns.retain_mut(|c| loop {
        match c.read(&mut sink) {
            Ok(0) => break false,
            Ok(_) => {}
            Err(e) => break e.kind() == std::io::ErrorKind::WouldBlock,
        }
    });
}

fuzz_target!(|data: &[u8]| {
    let _ = Header::parse(data);
    let Ok(mut muxer) = Muxer::new(MuxerConfig {
        cid: CID,
        fabric_dir: parent()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .dir
            .clone(),
        nsm: Arc::new(Nsm),
        heartbeat: Arc::new(Heartbeat::new(None)),
        limits: Limits {
            max_connections: 8,
            max_host_pending: 4,
            max_control_queue: 64,
            handshake_timeout: std::time::Duration::from_millis(50),
        },
        bind_host_socket: false,
        enclave_identity: None,
    }) else {
        return;
    };
    let mut rx = vec![0u8; MAX_PKT_DATA];
    let mut rest = data;
    while let Some((&step, tail)) = rest.split_first() {
        rest = tail;
        if step < 0xC0 {
            let Some(raw) = rest.get(..HEADER_LEN) else {
                break;
            };
            rest = &rest[HEADER_LEN..];
            let Ok(mut h) = Header::parse(raw) else {
                break;
            };
            if step & 1 == 0 {
                h.src_cid = u64::from(CID);
            }
            if step & 2 == 0 {
                h.dst_cid = 3;
                h.dst_port = if step & 4 == 0 { 5000 } else { h.dst_port % 4 };
            }
            let len = (h.len as usize).min(rest.len()).min(MAX_PKT_DATA);
            if step & 8 == 0 {
                h.len = len as u32;
            }
            let payload = &rest[..len];
            rest = &rest[len..];
            muxer.on_guest_packet(&h, payload);
        } else {
            let size = usize::from(step & 0x3F) * 1024;
            drain();
            muxer.process_host_events();
            for _ in 0..4 {
                if muxer.next_rx(&mut rx[..size.min(MAX_PKT_DATA)]).is_none() {
                    break;
                }
            }
        }
        let stats = muxer.stats();
        assert!(stats.connections <= 8);
        assert!(stats.control_queued <= 64);
    }
    drop(muxer);
    drain();
});
