//! Measurements: SHA-384 PCR values as Nitro computes them. A PCR here is
//! `SHA384(48 zero bytes || SHA384(data))`, i.e. one extend of a zeroed register with the digest
//! of the measured data. [`PcrHasher`] streams data into such a measurement; [`Measurements`]
//! holds an image's PCR0, PCR1, PCR2 and PCR8 and renders nitro-cli's JSON shape.

use aws_lc_rs::digest::{self, Context, SHA384};
use serde::ser::{Serialize, Serializer};
use std::collections::BTreeMap;
use std::io::Read;

/// A SHA-384 PCR value.
pub type Pcr = [u8; 48];

/// Length of a PCR in bytes.
pub const PCR_LEN: usize = 48;

/// The `HashAlgorithm` string nitro-cli prints next to measurements.
pub const HASH_ALGORITHM: &str = "Sha384 { ... }";

/// Buffer size for streaming reads (1 MiB).
pub const STREAM_BUFFER_SIZE: usize = 1024 * 1024;

/// Extends a zeroed PCR with `digest`: `SHA384(zeros || digest)`.
pub fn extend_zero(digest: &[u8]) -> Pcr {
    let mut ctx = Context::new(&SHA384);
    ctx.update(&[0u8; PCR_LEN]);
    ctx.update(digest);
    to_pcr(ctx.finish())
}

fn to_pcr(d: digest::Digest) -> Pcr {
    let mut pcr = [0u8; PCR_LEN];
    // A SHA-384 digest is always 48 bytes.
    pcr.copy_from_slice(d.as_ref());
    pcr
}

/// Streams data into one PCR measurement.
#[derive(Clone)]
pub struct PcrHasher {
    ctx: Context,
}

impl Default for PcrHasher {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for PcrHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PcrHasher(SHA-384)")
    }
}

impl PcrHasher {
    /// A new, empty measurement.
    pub fn new() -> Self {
        Self {
            ctx: Context::new(&SHA384),
        }
    }

    /// Adds bytes.
    pub fn update(&mut self, data: &[u8]) {
        self.ctx.update(data);
    }

    /// The PCR value of everything added.
    pub fn finish(self) -> Pcr {
        extend_zero(self.ctx.finish().as_ref())
    }
}

/// The PCR of one byte string (e.g. PCR8 of a DER certificate).
pub fn pcr_of(data: &[u8]) -> Pcr {
    let mut h = PcrHasher::new();
    h.update(data);
    h.finish()
}

/// The PCR of everything `reader` yields, streamed with a fixed buffer.
pub fn pcr_of_reader(mut reader: impl Read) -> std::io::Result<Pcr> {
    let mut h = PcrHasher::new();
    let mut buf = vec![0u8; STREAM_BUFFER_SIZE];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        h.update(&buf[..n]);
    }
    Ok(h.finish())
}

/// Lower-case hex of a PCR.
pub fn pcr_hex(pcr: &Pcr) -> String {
    hex::encode(pcr)
}

/// Parses a 96-digit hex PCR.
pub fn parse_pcr_hex(s: &str) -> Option<Pcr> {
    let mut pcr = [0u8; PCR_LEN];
    hex::decode_to_slice(s.trim(), &mut pcr).ok()?;
    Some(pcr)
}

/// An image's measurements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Measurements {
    /// Kernel, cmdline and every ramdisk.
    pub pcr0: Pcr,
    /// Kernel, cmdline and the first (bootstrap) ramdisk.
    pub pcr1: Pcr,
    /// The remaining (customer) ramdisks.
    pub pcr2: Pcr,
    /// The signing certificate (DER), when the image is signed.
    pub pcr8: Option<Pcr>,
}

impl Measurements {
    /// PCR0 as hex.
    pub fn pcr0_hex(&self) -> String {
        pcr_hex(&self.pcr0)
    }

    /// PCR1 as hex.
    pub fn pcr1_hex(&self) -> String {
        pcr_hex(&self.pcr1)
    }

    /// PCR2 as hex.
    pub fn pcr2_hex(&self) -> String {
        pcr_hex(&self.pcr2)
    }

    /// PCR8 as hex, when signed.
    pub fn pcr8_hex(&self) -> Option<String> {
        self.pcr8.as_ref().map(pcr_hex)
    }

    /// nitro-cli's shape: `{"HashAlgorithm": "Sha384 { ... }", "PCR0": .., "PCR1": ..,
    /// "PCR2": .. [, "PCR8": ..]}` (keys sorted, as nitro-cli prints them).
    pub fn to_nitro_map(&self) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        m.insert("HashAlgorithm".to_string(), HASH_ALGORITHM.to_string());
        m.insert("PCR0".to_string(), self.pcr0_hex());
        m.insert("PCR1".to_string(), self.pcr1_hex());
        m.insert("PCR2".to_string(), self.pcr2_hex());
        if let Some(p8) = self.pcr8_hex() {
            m.insert("PCR8".to_string(), p8);
        }
        m
    }

    /// The PCR values by index (0, 1, 2 and 8 when signed).
    pub fn by_index(&self) -> Vec<(u32, Pcr)> {
        let mut v = vec![(0, self.pcr0), (1, self.pcr1), (2, self.pcr2)];
        if let Some(p8) = self.pcr8 {
            v.push((8, p8));
        }
        v
    }
}

impl Serialize for Measurements {
    /// Serializes as [`Measurements::to_nitro_map`].
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_nitro_map().serialize(s)
    }
}

/// `{"Measurements": {...}}`, what `build-enclave` prints.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BuildOutput {
    /// The image's measurements.
    #[serde(rename = "Measurements")]
    pub measurements: Measurements,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pcr_is_extend_of_digest() {
        let data = b"hello";
        let d = digest::digest(&SHA384, data);
        let mut pre = vec![0u8; 48];
        pre.extend_from_slice(d.as_ref());
        let expect = digest::digest(&SHA384, &pre);
        assert_eq!(pcr_of(data).as_slice(), expect.as_ref());
        assert_eq!(pcr_of_reader(&data[..]).unwrap(), pcr_of(data));
    }

    #[test]
    fn hex_round_trip_and_json_shape() {
        let m = Measurements {
            pcr0: [1; 48],
            pcr1: [2; 48],
            pcr2: [3; 48],
            pcr8: None,
        };
        assert_eq!(parse_pcr_hex(&m.pcr0_hex()), Some([1; 48]));
        assert_eq!(parse_pcr_hex("00"), None);
        let v = serde_json::to_value(BuildOutput { measurements: m }).unwrap();
        assert_eq!(v["Measurements"]["HashAlgorithm"], "Sha384 { ... }");
        assert_eq!(v["Measurements"]["PCR2"], "03".repeat(48));
        assert!(v["Measurements"].get("PCR8").is_none());
    }
}
