//! Attestation throughput on one core: documents issued per second and verified per second,
//! beside raw aws-lc-rs ECDSA P-384 sign and verify measured in the same run. Prints the cost of
//! issuing in sign-ops (target <= 1.5) and of verifying in verify-ops (target <= 6; the chain
//! root -> host CA -> leaf plus the COSE signature is 3 verifies).
//!
//! Run: `cargo bench -p cloister-attestation --bench attestation` (BENCH_SECS sets the time
//! per measurement, default 2).

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    EcdsaKeyPair, KeyPair, UnparsedPublicKey, ECDSA_P384_SHA384_FIXED,
    ECDSA_P384_SHA384_FIXED_SIGNING,
};
use cloister_attestation::{
    DocumentFields, DocumentSigner, HostCa, ImagePcrs, Isolation, Nsm, NsmConfig, Pki, SystemClock,
    Verifier, VerifyOptions,
};
use cloister_nsm_api::Request;
use serde_bytes::ByteBuf;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Runs `f` repeatedly for about `secs` seconds; returns operations per second.
fn rate(name: &str, secs: f64, mut f: impl FnMut()) -> f64 {
    for _ in 0..20 {
        f();
    }
    let start = Instant::now();
    let mut n: u64 = 0;
    while start.elapsed().as_secs_f64() < secs {
        for _ in 0..16 {
            f();
        }
        n += 16;
    }
    let r = n as f64 / start.elapsed().as_secs_f64();
    println!("{name:<44} {r:>10.0} ops/s  ({:>8.1} us/op)", 1e6 / r);
    r
}

fn main() {
    let secs: f64 = std::env::var("BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    let dir = tempfile::tempdir().expect("temp dir");
    let pki = Pki::init(dir.path()).expect("pki");
    let ca = HostCa::load(dir.path()).expect("host ca");
    let signer = ca
        .issue_enclave_signer(
            "i-0123456789abcdef0-enc0123456789abcdef",
            Isolation::Process,
            SystemTime::now() + Duration::from_secs(3 * 3600),
        )
        .expect("signer");
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis()
        .try_into()
        .expect("milliseconds fit u64");
    let fields = DocumentFields {
        module_id: "i-0123456789abcdef0-enc0123456789abcdef".into(),
        timestamp_ms: now_ms,
        pcrs: (0..16)
            .map(|i| (i, vec![u8::try_from(i).unwrap() + 1; 48]))
            .collect(),
        public_key: Some(vec![0x30; 91]),
        user_data: Some(vec![1; 64]),
        nonce: Some(vec![2; 32]),
    };
    let document = signer.sign(fields.clone()).expect("sign");
    let verifier = Verifier::new(vec![pki.root_der().to_vec()]).expect("verifier");
    let opts = VerifyOptions::default()
        .with_nonce(vec![2; 32])
        .with_max_age(Duration::from_secs(3600))
        .with_pcr(0, vec![1; 48]);
    verifier.verify(&document, &opts).expect("verify");

    // Baselines: raw P-384 over a message the size of a document's Sig_structure.
    let message = vec![0x5a; document.len()];
    let rng = SystemRandom::new();
    let key = EcdsaKeyPair::generate(&ECDSA_P384_SHA384_FIXED_SIGNING).expect("key");
    let sig = key.sign(&rng, &message).expect("sign");
    let public =
        UnparsedPublicKey::new(&ECDSA_P384_SHA384_FIXED, key.public_key().as_ref().to_vec());

    println!("document size: {} bytes; one thread", document.len());
    let sign_rate = rate("aws-lc-rs P-384 sign (baseline)", secs, || {
        black_box(key.sign(&rng, black_box(&message)).expect("sign"));
    });
    let verify_rate = rate("aws-lc-rs P-384 verify (baseline)", secs, || {
        public
            .verify(black_box(&message), black_box(sig.as_ref()))
            .expect("verify");
    });
    let issue_rate = rate("documents issued (DocumentSigner::sign)", secs, || {
        black_box(signer.sign(fields.clone()).expect("sign"));
    });
    let verified_rate = rate("documents verified (Verifier::verify)", secs, || {
        black_box(
            verifier
                .verify(black_box(&document), &opts)
                .expect("verify"),
        );
    });

    let nsm_rate = nsm_rate(signer, secs);

    report(sign_rate, verify_rate, issue_rate, verified_rate, nsm_rate);
}

/// NSM Attestation requests per second, through `Nsm::process_bytes`.
fn nsm_rate(signer: DocumentSigner, secs: f64) -> f64 {
    let nsm = Nsm::new(NsmConfig {
        module_id: "i-0123456789abcdef0-enc0123456789abcdef".into(),
        image_pcrs: ImagePcrs {
            pcr0: [1; 48],
            pcr1: [2; 48],
            pcr2: [3; 48],
            pcr8: None,
        },
        role_arn: None,
        instance_id: "i-0123456789abcdef0".into(),
        debug_mode: false,
        signer,
        clock: Arc::new(SystemClock),
    })
    .expect("nsm");
    let request = Request::Attestation {
        user_data: Some(ByteBuf::from(vec![1; 64])),
        nonce: Some(ByteBuf::from(vec![2; 32])),
        public_key: None,
    }
    .to_cbor()
    .expect("encode");
    rate("NSM Attestation requests (process_bytes)", secs, || {
        black_box(nsm.process_bytes(black_box(&request)));
    })
}

/// Prints the costs against their targets.
fn report(sign_rate: f64, verify_rate: f64, issue_rate: f64, verified_rate: f64, nsm_rate: f64) {
    let issue_cost = sign_rate / issue_rate;
    let verify_cost = verify_rate / verified_rate;
    println!();
    println!(
        "issuing cost:   {issue_cost:.2} P-384 sign-ops per document (target <= 1.5) {}",
        if issue_cost <= 1.5 {
            "OK"
        } else {
            "ABOVE TARGET"
        }
    );
    println!(
        "verifying cost: {verify_cost:.2} P-384 verify-ops per document (target <= 6) {}",
        if verify_cost <= 6.0 {
            "OK"
        } else {
            "ABOVE TARGET"
        }
    );
    println!(
        "NSM request cost: {:.2} sign-ops per Attestation request",
        sign_rate / nsm_rate
    );
}
