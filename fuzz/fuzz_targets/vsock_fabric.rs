//! Fuzzes the vsock fabric's parsers of untrusted bytes: the bounded line reader, every
//! handshake line parser, and NSM frame reading. None may panic, read past a line's newline,
//! or allocate more than the hard cap.
#![no_main]

use cloister_vsock::nsm_frame::{read_frame, NSM_FRAME_HARD_CAP};
use cloister_vsock::proto::{self, LineBuf, MAX_LINE_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Line-oriented: read lines one after another as the broker and clients do.
    let mut reader = data;
    let mut line = LineBuf::new();
    while !reader.is_empty() {
        let before = reader.len();
        match proto::read_line(&mut reader, &mut line) {
            Ok(()) => {
                let l = line.line();
                assert!(l.len() < MAX_LINE_LEN);
                let _ = proto::parse_host_connect(l);
                let _ = proto::parse_connect_from(l);
                let _ = proto::parse_enclave_request(l);
                if let Ok(reply) = proto::parse_reply(l) {
                    // Formatting what was parsed gives back the same line.
                    let text = match reply {
                        proto::BrokerReply::Ok(p) => proto::ok_line(p),
                        proto::BrokerReply::Err(e) => proto::err_line(e),
                        proto::BrokerReply::Accept(a) => proto::accept_line(a),
                    };
                    assert_eq!(text.as_bytes(), [l, b"\n"].concat().as_slice());
                }
                if let Ok(req) = proto::parse_enclave_request(l) {
                    let text = match req {
                        proto::EnclaveRequest::Connect(a) => proto::enclave_connect_line(a),
                        proto::EnclaveRequest::Listen(p) => proto::listen_line(p),
                    };
                    assert_eq!(text.as_bytes(), [l, b"\n"].concat().as_slice());
                }
                // Never consumed past the newline.
                assert_eq!(before - reader.len(), l.len() + 1);
            }
            Err(_) => break,
        }
    }
    // Frames: a sequence of NSM frames under the hard cap.
    let mut frames = data;
    while let Ok(Some(frame)) = read_frame(&mut frames, NSM_FRAME_HARD_CAP) {
        assert!(frame.len() <= NSM_FRAME_HARD_CAP);
    }
    // Parsers on the raw input too (no newline framing).
    let _ = proto::parse_enclave_request(data);
    let _ = proto::parse_reply(data);
});
