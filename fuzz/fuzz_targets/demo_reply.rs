//! Fuzzes what `cloister demo` reads from the sample enclave: one newline-terminated JSON
//! message (`cloister_sample_app::read_message`, the demo's line protocol) decoded as a
//! `SecretReply`, then the base64 fields of a proof, exactly as the demo decodes them before
//! verifying. Also the enclave side's `SecretRequest`, which the sample app reads from the host.
#![no_main]

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use cloister_sample_app::{read_message, SecretReply, SecretRequest, MAX_MESSAGE_BYTES};
use libfuzzer_sys::fuzz_target;
use std::io::BufReader;

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    // A small buffer makes the line span several reads.
    let capacity = usize::from(first % 32) + 1;
    let mut reader = BufReader::with_capacity(capacity, rest);
    match read_message::<SecretReply>(&mut reader) {
        Ok(SecretReply::Proof {
            hmac_b64,
            document_b64,
        }) => {
            assert!(hmac_b64.len() + document_b64.len() <= MAX_MESSAGE_BYTES);
            let _ = B64.decode(hmac_b64);
            let _ = B64.decode(document_b64);
        }
        Ok(SecretReply::Error { .. }) | Err(_) => {}
    }
    let mut reader = BufReader::with_capacity(capacity, rest);
    let _ = read_message::<SecretRequest>(&mut reader);
});
