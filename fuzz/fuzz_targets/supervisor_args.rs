//! The supervisor's readers of a supervised program's memory: a `sockaddr_vm` (16 bytes from
//! `connect`/`bind`) and the NSM ioctl's two iovecs (32 bytes). Any bytes must parse without a
//! panic, and a sockaddr of another family must be refused.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut addr = [0u8; 16];
    let n = data.len().min(16);
    addr[..n].copy_from_slice(&data[..n]);
    let parsed = cloister_supervisor::serve::parse_sockaddr_vm(&addr);
    if u16::from_ne_bytes([addr[0], addr[1]]) != 40 {
        assert!(parsed.is_none());
    }
    let mut iovecs = [0u8; 32];
    let m = data.len().min(32);
    iovecs[..m].copy_from_slice(&data[..m]);
    let _ = cloister_supervisor::serve::parse_nsm_iovecs(&iovecs);
});
