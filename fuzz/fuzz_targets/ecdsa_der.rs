//! Fuzzes what an image's signing reads from a key service: the ECDSA signature that KMS `Sign`
//! returns (DER `ECDSA-Sig-Value`, or raw `r || s`), converted to COSE's fixed size for each
//! curve. Any input gives a signature of exactly twice the curve's size, or an error.
#![no_main]

use cloister_eif::{ecdsa_der_to_fixed, CoseAlgorithm};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for algorithm in [
        CoseAlgorithm::Es256,
        CoseAlgorithm::Es384,
        CoseAlgorithm::Es512,
    ] {
        if let Ok(fixed) = ecdsa_der_to_fixed(data, algorithm) {
            assert_eq!(fixed.len(), 2 * algorithm.scalar_len());
        }
    }
});
