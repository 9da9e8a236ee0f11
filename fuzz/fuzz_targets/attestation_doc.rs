//! Attestation document payload decoding, syntax checks and certificate parsing on arbitrary
//! bytes; a payload that decodes must re-encode to something that decodes to the same value.
#![no_main]

use cloister_attestation::cert::ParsedCert;
use cloister_nsm_api::AttestationDoc;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = ParsedCert::parse(data);
    if let Ok(doc) = AttestationDoc::from_cbor(data) {
        let syntax_ok = doc.check_syntax().is_ok();
        if let Ok(bytes) = doc.to_cbor() {
            let again = AttestationDoc::from_cbor(&bytes).expect("re-encoded document decodes");
            assert_eq!(again, doc);
        }
        if syntax_ok {
            let _ = ParsedCert::parse(&doc.certificate);
            for cert in &doc.cabundle {
                let _ = ParsedCert::parse(cert);
            }
        }
    }
});
