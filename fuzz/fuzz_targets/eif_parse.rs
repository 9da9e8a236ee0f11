//! Fuzzes everything that reads untrusted image bytes: the header and section table
//! validation, the single-pass measurer (CRC, PCRs), the cmdline, metadata and signature
//! section parsers, and COSE verification. The first byte picks the mode: odd feeds the rest
//! to the signature-section parser alone (to reach deep CBOR paths), even treats it as a file.
#![no_main]

use cloister_eif::{EifReader, EifSignature};
use libfuzzer_sys::fuzz_target;
use std::io::{Cursor, Read};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 1 {
        if let Ok(sig) = EifSignature::parse(rest) {
            let _ = sig.certificate.info();
            let _ = sig.verify(&[0u8; 48]);
        }
        return;
    }
    let Ok(mut reader) = EifReader::new(Cursor::new(rest)) else {
        return;
    };
    let _ = reader.cmdline();
    let _ = reader.metadata();
    let _ = reader.signature();
    for index in reader.ramdisks() {
        if let Ok(mut r) = reader.section_reader(index) {
            let mut sink = Vec::new();
            let _ = r.read_to_end(&mut sink);
        }
    }
    if let Ok(inspection) = reader.inspect() {
        let _ = inspection.describe();
    }
    let _ = reader.measure();
});
