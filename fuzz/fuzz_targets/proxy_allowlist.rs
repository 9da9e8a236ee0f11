//! Fuzzes the vsock-proxy allowlist parser (AWS's YAML format): any bytes must give a parsed,
//! validated list or an error, never a panic or an unbounded allocation.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(list) = cloister_proxy::Allowlist::from_yaml(data) {
        assert!(list.allowlist.len() <= cloister_proxy::allowlist::MAX_ENTRIES);
        for entry in &list.allowlist {
            assert!(cloister_proxy::allowlist::is_plausible_host(&entry.address));
        }
    }
});
