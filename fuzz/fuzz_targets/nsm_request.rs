//! NSM request/response decoding and the NSM state machine on arbitrary request bytes: every
//! input gets a response that decodes and fits the client's 12288-byte buffer.
#![no_main]

use cloister_attestation::{HostCa, ImagePcrs, Isolation, Nsm, NsmConfig, Pki, SystemClock};
use cloister_nsm_api::{Request, Response, NSM_RESPONSE_MAX_SIZE};
use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

static NSM: OnceLock<Nsm> = OnceLock::new();

fn nsm() -> Nsm {
    let dir = std::env::temp_dir().join(format!("cloister-fuzz-nsm-{}", std::process::id()));
    let pki = Pki::init(&dir).expect("pki");
    let ca = HostCa::load(pki.dir()).expect("host ca");
    let signer = ca
        .issue_enclave_signer(
            "fuzz-enclave",
            Isolation::Process,
            SystemTime::now() + Duration::from_secs(3 * 3600),
        )
        .expect("signer");
    Nsm::new(NsmConfig {
        module_id: "fuzz-enclave".into(),
        image_pcrs: ImagePcrs {
            pcr0: [1; 48],
            pcr1: [2; 48],
            pcr2: [3; 48],
            pcr8: None,
        },
        role_arn: Some("arn:aws:iam::123456789012:role/fuzz".into()),
        instance_id: "i-0123456789abcdef0".into(),
        debug_mode: false,
        signer,
        clock: Arc::new(SystemClock),
    })
    .expect("nsm")
}

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = Request::from_cbor(data) {
        let bytes = request.to_cbor().expect("encode");
        assert_eq!(Request::from_cbor(&bytes).expect("re-decode"), request);
    }
    let _ = Response::from_cbor(data);
    let out = NSM.get_or_init(nsm).process_bytes(data);
    assert!(out.len() <= NSM_RESPONSE_MAX_SIZE);
    Response::from_cbor(&out).expect("the NSM's response decodes");
});
