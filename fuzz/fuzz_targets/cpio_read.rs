//! Fuzz target: the cpio newc reader (plain, gzip, concatenated) on arbitrary bytes, with small
//! limits so that bombs hit a limit quickly. Any panic, hang or huge allocation is a bug.
#![no_main]

use cloister_cpio::{CpioReader, ReaderLimits};
use libfuzzer_sys::fuzz_target;
use std::io::Read;

fuzz_target!(|data: &[u8]| {
    let limits = ReaderLimits {
        max_total_bytes: 4 << 20,
        max_entries: 10_000,
        ..ReaderLimits::default()
    };
    let mut reader = CpioReader::with_limits(data, limits);
    let mut buf = [0u8; 4096];
    while let Ok(Some(entry)) = reader.next_entry() {
        let _ = entry.name_str();
        // Read the data of every other entry; let the reader skip the rest.
        if entry.ino % 2 == 0 {
            let mut data = reader.data();
            while let Ok(n) = data.read(&mut buf) {
                if n == 0 {
                    break;
                }
            }
        }
    }
});
