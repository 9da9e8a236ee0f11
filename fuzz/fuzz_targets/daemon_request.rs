//! Fuzzes what `cloister daemon` reads from a client of its socket: one request line, parsed
//! and validated by `parse_request`; a request that is accepted must serialize and parse back
//! to itself.
#![no_main]

use cloister::commands::enclave::daemon::{parse_request, MAX_REQUEST};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = parse_request(data) {
        assert!(data.len() <= MAX_REQUEST);
        let bytes = serde_json::to_vec(&req).expect("a request serializes");
        assert_eq!(
            parse_request(&bytes).expect("re-encoded request parses"),
            req
        );
    }
});
