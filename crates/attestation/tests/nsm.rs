//! The NSM state machine: every request, every error code it returns, the wire-level limits and
//! concurrent use.

use cloister_attestation::nsm::{extend, RANDOM_LEN};
use cloister_attestation::{
    Clock, HostCa, ImagePcrs, Isolation, Nsm, NsmConfig, Pki, Verifier, VerifyOptions,
};
use cloister_nsm_api::{
    Digest, ErrorCode, Request, Response, NSM_REQUEST_MAX_SIZE, NSM_RESPONSE_MAX_SIZE,
};
use serde_bytes::ByteBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

struct FixedClock(AtomicU64);

impl Clock for FixedClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis()
        .try_into()
        .unwrap()
}

const ROLE: &str = "arn:aws:iam::123456789012:role/enclave";
const INSTANCE: &str = "i-0123456789abcdef0";

struct Fixture {
    _dir: tempfile::TempDir,
    nsm: Nsm,
    verifier: Verifier,
    clock: Arc<FixedClock>,
}

fn image() -> ImagePcrs {
    ImagePcrs {
        pcr0: [0x10; 48],
        pcr1: [0x11; 48],
        pcr2: [0x12; 48],
        pcr8: Some([0x18; 48]),
    }
}

fn fixture(debug_mode: bool) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::init(dir.path()).unwrap();
    let ca = HostCa::load(dir.path()).unwrap();
    let signer = ca
        .issue_enclave_signer(
            "i-0123456789abcdef0-enc0000000000000001",
            Isolation::Process,
            SystemTime::now() + Duration::from_secs(3 * 3600),
        )
        .unwrap();
    let clock = Arc::new(FixedClock(AtomicU64::new(now_ms())));
    let nsm = Nsm::new(NsmConfig {
        module_id: "i-0123456789abcdef0-enc0000000000000001".into(),
        image_pcrs: image(),
        role_arn: Some(ROLE.into()),
        instance_id: INSTANCE.into(),
        debug_mode,
        signer,
        clock: clock.clone(),
    })
    .unwrap();
    Fixture {
        _dir: dir,
        nsm,
        verifier: Verifier::new(vec![pki.root_der().to_vec()]).unwrap(),
        clock,
    }
}

fn describe(nsm: &Nsm, index: u16) -> (bool, Vec<u8>) {
    match nsm.process(Request::DescribePCR { index }) {
        Response::DescribePCR { lock, data } => (lock, data),
        other => panic!("{other:?}"),
    }
}

fn attest(
    nsm: &Nsm,
    user_data: Option<Vec<u8>>,
    nonce: Option<Vec<u8>>,
    pk: Option<Vec<u8>>,
) -> Response {
    nsm.process(Request::Attestation {
        user_data: user_data.map(ByteBuf::from),
        nonce: nonce.map(ByteBuf::from),
        public_key: pk.map(ByteBuf::from),
    })
}

#[test]
fn boot_pcrs() {
    let f = fixture(false);
    let zero = [0u8; 48];
    assert_eq!(describe(&f.nsm, 0), (true, vec![0x10; 48]));
    assert_eq!(describe(&f.nsm, 1), (true, vec![0x11; 48]));
    assert_eq!(describe(&f.nsm, 2), (true, vec![0x12; 48]));
    assert_eq!(
        describe(&f.nsm, 3),
        (true, extend(&zero, ROLE.as_bytes()).to_vec())
    );
    assert_eq!(
        describe(&f.nsm, 4),
        (true, extend(&zero, INSTANCE.as_bytes()).to_vec())
    );
    assert_eq!(describe(&f.nsm, 8), (true, vec![0x18; 48]));
    for i in [5u16, 6, 7, 9, 10, 11, 12, 13, 14, 15] {
        assert_eq!(describe(&f.nsm, i), (true, vec![0; 48]), "PCR{i}");
    }
    for i in 16u16..32 {
        assert_eq!(describe(&f.nsm, i), (false, vec![0; 48]), "PCR{i}");
    }
    assert_eq!(
        f.nsm.process(Request::DescribePCR { index: 32 }),
        Response::Error(ErrorCode::InvalidIndex)
    );
}

#[test]
fn debug_mode_zeroes_image_pcrs_and_documents_say_so() {
    let f = fixture(true);
    for i in 0..3 {
        assert_eq!(describe(&f.nsm, i), (true, vec![0; 48]));
    }
    assert_eq!(describe(&f.nsm, 8), (true, vec![0x18; 48]));
    let Response::Attestation { document } = attest(&f.nsm, None, None, None) else {
        panic!()
    };
    let v = f
        .verifier
        .verify(&document, &VerifyOptions::default())
        .unwrap();
    assert!(v.is_debug());
    assert_eq!(
        f.verifier.verify(
            &document,
            &VerifyOptions::default().with_pcr(0, vec![0x10; 48])
        ),
        Err(cloister_attestation::VerifyError::DebugDocument(0))
    );
}

#[test]
fn extend_and_lock() {
    let f = fixture(false);
    let zero = [0u8; 48];
    let once = extend(&zero, b"first");
    assert_eq!(
        f.nsm.process(Request::ExtendPCR {
            index: 16,
            data: b"first".to_vec()
        }),
        Response::ExtendPCR {
            data: once.to_vec()
        }
    );
    let twice = extend(&once, b"second");
    assert_eq!(
        f.nsm.process(Request::ExtendPCR {
            index: 16,
            data: b"second".to_vec()
        }),
        Response::ExtendPCR {
            data: twice.to_vec()
        }
    );
    assert_eq!(describe(&f.nsm, 16), (false, twice.to_vec()));
    // Boot-locked PCRs are read-only; out-of-range indices are invalid.
    assert_eq!(
        f.nsm.process(Request::ExtendPCR {
            index: 0,
            data: vec![1]
        }),
        Response::Error(ErrorCode::ReadOnlyIndex)
    );
    assert_eq!(
        f.nsm.process(Request::ExtendPCR {
            index: 32,
            data: vec![1]
        }),
        Response::Error(ErrorCode::InvalidIndex)
    );
    // Lock 16: no more extension, no second lock.
    assert_eq!(
        f.nsm.process(Request::LockPCR { index: 16 }),
        Response::LockPCR
    );
    assert_eq!(describe(&f.nsm, 16), (true, twice.to_vec()));
    assert_eq!(
        f.nsm.process(Request::ExtendPCR {
            index: 16,
            data: vec![1]
        }),
        Response::Error(ErrorCode::ReadOnlyIndex)
    );
    assert_eq!(
        f.nsm.process(Request::LockPCR { index: 16 }),
        Response::Error(ErrorCode::ReadOnlyIndex)
    );
    assert_eq!(
        f.nsm.process(Request::LockPCR { index: 3 }),
        Response::Error(ErrorCode::ReadOnlyIndex)
    );
    assert_eq!(
        f.nsm.process(Request::LockPCR { index: 40 }),
        Response::Error(ErrorCode::InvalidIndex)
    );
    // LockPCRs locks [0, range).
    assert_eq!(
        f.nsm.process(Request::LockPCRs { range: 20 }),
        Response::LockPCRs
    );
    for i in 0..20 {
        assert!(describe(&f.nsm, i).0, "PCR{i}");
    }
    assert!(!describe(&f.nsm, 20).0);
    assert_eq!(
        f.nsm.process(Request::LockPCRs { range: 33 }),
        Response::Error(ErrorCode::InvalidIndex)
    );
    assert_eq!(
        f.nsm.process(Request::LockPCRs { range: 32 }),
        Response::LockPCRs
    );
    assert!(describe(&f.nsm, 31).0);
}

#[test]
fn describe_nsm() {
    let f = fixture(false);
    f.nsm.process(Request::LockPCR { index: 17 });
    match f.nsm.process(Request::DescribeNSM) {
        Response::DescribeNSM {
            version_major,
            module_id,
            max_pcrs,
            locked_pcrs,
            digest,
            ..
        } => {
            assert_eq!(version_major, 1);
            assert_eq!(module_id, f.nsm.module_id());
            assert_eq!(max_pcrs, 32);
            assert_eq!(digest, Digest::SHA384);
            let expected: Vec<u16> = (0..16).chain([17]).collect();
            assert_eq!(locked_pcrs.into_iter().collect::<Vec<_>>(), expected);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn get_random() {
    let f = fixture(false);
    let get = || match f.nsm.process(Request::GetRandom) {
        Response::GetRandom { random } => random,
        other => panic!("{other:?}"),
    };
    let (a, b) = (get(), get());
    assert_eq!(a.len(), RANDOM_LEN);
    assert_ne!(a, b);
}

#[test]
fn attestation_documents() {
    let f = fixture(false);
    f.nsm.process(Request::ExtendPCR {
        index: 16,
        data: b"app".to_vec(),
    });
    f.nsm.process(Request::LockPCR { index: 16 });
    let Response::Attestation { document } = attest(
        &f.nsm,
        Some(vec![1; 512]),
        Some(b"nonce".to_vec()),
        Some(vec![0x30; 1024]),
    ) else {
        panic!()
    };
    let v = f
        .verifier
        .verify(
            &document,
            &VerifyOptions::default()
                .with_nonce(b"nonce".to_vec())
                .with_pcr(0, vec![0x10; 48])
                .with_pcr(16, extend(&[0; 48], b"app").to_vec()),
        )
        .unwrap();
    assert_eq!(v.pcrs().len(), 17, "locked PCRs only");
    assert_eq!(v.pcr(17), None);
    assert_eq!(v.timestamp_ms(), f.clock.now_ms());
    assert_eq!(v.user_data().unwrap().len(), 512);
    assert_eq!(v.public_key().unwrap().len(), 1024);
    assert_eq!(v.module_id(), f.nsm.module_id());
    assert_eq!(v.isolation(), Some(Isolation::Process));
    // No optional fields at all.
    assert!(matches!(
        attest(&f.nsm, None, None, None),
        Response::Attestation { .. }
    ));
}

#[test]
fn attestation_argument_limits() {
    let f = fixture(false);
    for (ud, nonce, pk) in [
        (Some(vec![0; 513]), None, None),
        (Some(vec![0; 1025]), None, None),
        (None, Some(vec![0; 513]), None),
        (None, None, Some(vec![])),
        (None, None, Some(vec![0; 1025])),
    ] {
        assert_eq!(
            attest(&f.nsm, ud, nonce, pk),
            Response::Error(ErrorCode::InvalidArgument)
        );
    }
}

#[test]
fn signing_failure_is_an_internal_error() {
    let f = fixture(false);
    // A clock ten days ahead: no leaf the host CA can issue now covers that time.
    f.clock
        .0
        .store(now_ms() + 10 * 24 * 3600 * 1000, Ordering::Relaxed);
    assert_eq!(
        attest(&f.nsm, None, None, None),
        Response::Error(ErrorCode::InternalError)
    );
}

#[test]
fn leaf_is_renewed_near_the_end_of_its_life() {
    let f = fixture(false);
    let first = f.nsm.signer().certificate_der();
    // 2h30 later: less than a third of the 3-hour leaf is left, so a fresh one is issued. Its
    // notBefore is the real now, so the document must still be stamped inside it: keep the
    // real clock, and check the leaf changes only when renewal is due.
    assert!(matches!(
        attest(&f.nsm, None, None, None),
        Response::Attestation { .. }
    ));
    assert_eq!(f.nsm.signer().certificate_der(), first);
    f.clock
        .0
        .store(now_ms() + 150 * 60 * 1000, Ordering::Relaxed);
    assert!(matches!(
        attest(&f.nsm, None, None, None),
        Response::Attestation { .. }
    ));
    assert_ne!(f.nsm.signer().certificate_der(), first);
}

#[test]
fn wire_level_errors() {
    let f = fixture(false);
    let decode = |bytes: &[u8]| Response::from_cbor(&f.nsm.process_bytes(bytes)).unwrap();
    // Too large.
    let big = Request::ExtendPCR {
        index: 16,
        data: vec![0; NSM_REQUEST_MAX_SIZE],
    }
    .to_cbor()
    .unwrap();
    assert_eq!(decode(&big), Response::Error(ErrorCode::InputTooLarge));
    // Not CBOR; unknown operation; known operation with bad arguments; trailing bytes.
    assert_eq!(
        decode(&[0xff, 0x00]),
        Response::Error(ErrorCode::InvalidOperation)
    );
    assert_eq!(
        decode(b"\x66Reboot"),
        Response::Error(ErrorCode::InvalidOperation)
    );
    assert_eq!(
        decode(&[0x01]),
        Response::Error(ErrorCode::InvalidOperation)
    );
    let mut bad_args = vec![0xa1, 0x68];
    bad_args.extend_from_slice(b"LockPCRs");
    bad_args.extend_from_slice(&[0xa1, 0x65]);
    bad_args.extend_from_slice(b"range");
    bad_args.extend_from_slice(&[0x3a, 0, 0, 0, 1]); // -2
    assert_eq!(
        decode(&bad_args),
        Response::Error(ErrorCode::InvalidArgument)
    );
    let mut trailing = Request::GetRandom.to_cbor().unwrap();
    trailing.push(0);
    assert_eq!(
        decode(&trailing),
        Response::Error(ErrorCode::InvalidArgument)
    );
    // Valid bytes in, valid bytes out; the largest document fits the response buffer.
    let req = Request::Attestation {
        user_data: Some(ByteBuf::from(vec![1; 512])),
        nonce: Some(ByteBuf::from(vec![2; 512])),
        public_key: Some(ByteBuf::from(vec![3; 1024])),
    };
    let out = f.nsm.process_bytes(&req.to_cbor().unwrap());
    assert!(out.len() <= NSM_RESPONSE_MAX_SIZE);
    let Response::Attestation { document } = Response::from_cbor(&out).unwrap() else {
        panic!()
    };
    f.verifier
        .verify(&document, &VerifyOptions::default())
        .unwrap();
    assert_eq!(
        decode(&Request::DescribePCR { index: 4 }.to_cbor().unwrap()),
        Response::DescribePCR {
            lock: true,
            data: extend(&[0; 48], INSTANCE.as_bytes()).to_vec()
        }
    );
}

#[test]
fn concurrent_use_from_many_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Nsm>();
    let f = Arc::new(fixture(false));
    let threads: Vec<_> = (0..8u8)
        .map(|t| {
            let f = f.clone();
            std::thread::spawn(move || {
                for _ in 0..4 {
                    f.nsm.process(Request::ExtendPCR {
                        index: 20,
                        data: vec![t],
                    });
                    let Response::Attestation { document } =
                        attest(&f.nsm, None, Some(vec![t]), None)
                    else {
                        panic!()
                    };
                    f.verifier
                        .verify(&document, &VerifyOptions::default().with_nonce(vec![t]))
                        .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    // 32 extensions happened; the value differs from zero and from any single extension.
    let (_, value) = describe(&f.nsm, 20);
    assert_ne!(value, vec![0; 48]);
}
