//! Instance and enclave identifiers in AWS's formats.
//!
//! The instance id is `i-` and 17 lowercase hex digits derived from `/etc/machine-id` (stable per
//! host, like an EC2 instance id); an enclave id is `<instance id>-enc<16 lowercase hex>` with a
//! random suffix.

use std::io::Read;

/// Length of the hex part of an instance id.
const INSTANCE_HEX: usize = 17;

/// The host's instance id (`i-` + 17 hex), derived from the machine id.
pub fn instance_id() -> String {
    let seed = std::fs::read_to_string("/etc/machine-id")
        .or_else(|_| std::fs::read_to_string("/var/lib/dbus/machine-id"))
        .unwrap_or_else(|_| "cloister-no-machine-id".to_owned());
    let digest = fnv_hex(seed.trim().as_bytes());
    format!("i-{}", &digest[..INSTANCE_HEX])
}

/// A fresh enclave id for this host.
pub fn new_enclave_id() -> String {
    let mut bytes = [0u8; 8];
    let ok = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .is_ok();
    if !ok {
        // Fall back to time and pid: unique enough for a local id, never used as a secret.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| {
                #[allow(
                    clippy::cast_possible_truncation,
                    reason = "the low 64 bits of the time in nanoseconds are the part that varies"
                )]
                let low = d.as_nanos() as u64;
                low
            });
        bytes = (t ^ u64::from(std::process::id()).rotate_left(32)).to_be_bytes();
    }
    format!("{}-enc{}", instance_id(), hex::encode(bytes))
}

/// True when `id` has the shape of an enclave id (safe to use as a directory name).
pub fn is_enclave_id(id: &str) -> bool {
    let Some((inst, suffix)) = id.rsplit_once("-enc") else {
        return false;
    };
    let hex_ok = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    inst.strip_prefix("i-")
        .is_some_and(|h| hex_ok(h, INSTANCE_HEX))
        && hex_ok(suffix, 16)
}

/// Two rounds of 64-bit FNV-1a with different offsets, as 32 hex digits (not a secret; only a
/// stable spread of the machine id).
fn fnv_hex(data: &[u8]) -> String {
    let round = |offset: u64| {
        data.iter().fold(offset, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
        })
    };
    format!(
        "{:016x}{:016x}",
        round(0xcbf2_9ce4_8422_2325),
        round(0x84222325_cbf29ce4)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_aws_shape() {
        let inst = instance_id();
        assert_eq!(inst.len(), 2 + INSTANCE_HEX);
        assert_eq!(inst, instance_id(), "stable per host");
        let id = new_enclave_id();
        assert!(is_enclave_id(&id), "{id}");
        assert_ne!(id, new_enclave_id());
        assert!(!is_enclave_id("../etc"));
        assert!(!is_enclave_id("i-0123456789abcdef0-encXYZ"));
    }
}
