//! Fuzzes the SDK's CiphertextForRecipient reader (bounded BER parser and CMS structure checks),
//! and opening with a fixed RSA key.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn key() -> &'static Vec<u8> {
    static K: OnceLock<Vec<u8>> = OnceLock::new();
    K.get_or_init(|| {
        use aws_lc_rs::encoding::AsDer;
        let kp = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).expect("rsa");
        let d: aws_lc_rs::encoding::Pkcs8V1Der<'_> = kp.as_der().expect("pkcs8");
        d.as_ref().to_vec()
    })
}

fuzz_target!(|data: &[u8]| {
    if cloister_sdk::recipient::parse(data).is_ok() {
        let _ = cloister_sdk::recipient::open_ciphertext_for_recipient(data, key());
    }
});
