//! COSE_Sign1 parsing and the whole verifier (payload decoding, certificate parsing, chain and
//! signature checks) on arbitrary bytes, trusting AWS's root at the time of the real AWS
//! document so that inputs derived from it reach the deepest checks.
#![no_main]

use cloister_attestation::cose::CoseSign1;
use cloister_attestation::{Verifier, VerifyOptions};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

static VERIFIER: OnceLock<Verifier> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    if let Ok(cose) = CoseSign1::from_slice(data) {
        let _ = cose.check_es384();
        let _ = cose.sig_structure();
    }
    let verifier = VERIFIER.get_or_init(Verifier::aws);
    let opts = VerifyOptions::at_unix_ms(1_694_102_161_556);
    if let Ok(doc) = verifier.verify(data, &opts) {
        // Only a correctly signed document passes; its accessors must be consistent.
        assert_eq!(doc.timestamp_ms(), doc.document().timestamp);
        assert!(doc.pcrs().len() <= 32);
    }
});
