//! Measurements: SHA-384 PCR values as Nitro computes them. A PCR here is
//! `SHA384(48 zero bytes || SHA384(data))`, i.e. one extend of a zeroed register with the digest
//! of the measured data. [`PcrHasher`] streams data into such a measurement; [`Measurements`]
//! holds an image's PCR0, PCR1, PCR2 and PCR8 and renders nitro-cli's JSON shape.
//!
//! Which sections feed which PCR is written once, here, for the builder and the reader alike:
//! [`SectionRoles`] gives each section in image order its [`Role`], and [`BootPcrs`] keeps PCR0
//! and PCR1, which share their common prefix (kernel, cmdline, bootstrap ramdisk) by cloning the
//! hash state where the customer ramdisks begin. PCR2 (the customer ramdisks) is left to the
//! caller, which may hash it on another thread.

use crate::format::SectionKind;
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

/// Which PCRs a section's bytes go into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    /// PCR0 and PCR1: kernel, cmdline, bootstrap ramdisk.
    Boot,
    /// PCR0 and PCR2: the customer ramdisks.
    Customer,
    /// Not measured: metadata, signature.
    Unmeasured,
}

/// The roles of an image's sections, given in image order: the kernel and the cmdline are boot
/// sections, the first ramdisk is the bootstrap ramdisk (boot), every later one a customer
/// ramdisk, metadata and signature are not measured.
#[derive(Debug, Default)]
pub(crate) struct SectionRoles {
    ramdisks_seen: usize,
}

impl SectionRoles {
    /// The role of the next section, of `kind`.
    pub(crate) fn next(&mut self, kind: SectionKind) -> Role {
        match kind {
            SectionKind::Kernel | SectionKind::Cmdline => Role::Boot,
            SectionKind::Ramdisk => {
                self.ramdisks_seen += 1;
                if self.ramdisks_seen == 1 {
                    Role::Boot
                } else {
                    Role::Customer
                }
            }
            SectionKind::Metadata | SectionKind::Signature => Role::Unmeasured,
        }
    }
}

/// PCR0 and PCR1 of an image streamed section by section. PCR1 shares PCR0's state until the
/// first customer section begins ([`BootPcrs::begin`]), then keeps its own.
#[derive(Debug, Default)]
pub(crate) struct BootPcrs {
    pcr0: PcrHasher,
    /// PCR1's own state, once the PCR0 stream has diverged from it.
    pcr1: Option<PcrHasher>,
}

impl BootPcrs {
    /// Called when a section of `role` begins: the first customer section forks PCR1 off.
    pub(crate) fn begin(&mut self, role: Role) {
        if role == Role::Customer && self.pcr1.is_none() {
            self.pcr1 = Some(self.pcr0.clone());
        }
    }

    /// Adds bytes of a section of `role` (PCR0 and PCR1 for boot sections, PCR0 alone for
    /// customer sections, whose PCR2 the caller keeps; nothing for unmeasured ones).
    pub(crate) fn update(&mut self, role: Role, data: &[u8]) {
        match role {
            Role::Boot => {
                self.pcr0.update(data);
                if let Some(p1) = self.pcr1.as_mut() {
                    p1.update(data);
                }
            }
            Role::Customer => {
                self.begin(role);
                self.pcr0.update(data);
            }
            Role::Unmeasured => {}
        }
    }

    /// PCR0 and PCR1.
    pub(crate) fn finish(self) -> (Pcr, Pcr) {
        let pcr1 = self.pcr1.unwrap_or_else(|| self.pcr0.clone()).finish();
        (self.pcr0.finish(), pcr1)
    }
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
    fn section_roles_follow_image_order() {
        let mut roles = SectionRoles::default();
        let got: Vec<Role> = [
            SectionKind::Kernel,
            SectionKind::Cmdline,
            SectionKind::Metadata,
            SectionKind::Ramdisk,
            SectionKind::Ramdisk,
            SectionKind::Ramdisk,
            SectionKind::Signature,
        ]
        .into_iter()
        .map(|k| roles.next(k))
        .collect();
        use Role::{Boot, Customer, Unmeasured};
        assert_eq!(
            got,
            [Boot, Boot, Unmeasured, Boot, Customer, Customer, Unmeasured]
        );
    }

    #[test]
    fn pcr1_is_the_boot_prefix_of_pcr0() {
        let mut p = BootPcrs::default();
        p.update(Role::Boot, b"kernel");
        p.update(Role::Unmeasured, b"metadata");
        p.begin(Role::Customer);
        p.update(Role::Customer, b"customer");
        let (pcr0, pcr1) = p.finish();
        assert_eq!(pcr0, pcr_of(b"kernelcustomer"));
        assert_eq!(pcr1, pcr_of(b"kernel"));

        let mut only_boot = BootPcrs::default();
        only_boot.update(Role::Boot, b"kernel");
        assert_eq!(only_boot.finish(), (pcr_of(b"kernel"), pcr_of(b"kernel")));
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
