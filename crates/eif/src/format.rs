//! The on-disk structures of the Enclave Image Format: the 548-byte file header, the 12-byte
//! section headers, section types, and the size limits this crate enforces. All integers are
//! big-endian. Parsing here only decodes fixed-size byte arrays; checks that need the file
//! (bounds, layout, section order) live in [`crate::reader`].

use crate::error::{EifError, Result};

/// Magic number at offset 0: `.eif`.
pub const EIF_MAGIC: [u8; 4] = *b".eif";
/// Version written by this crate.
pub const CURRENT_VERSION: u16 = 4;
/// Oldest version this crate reads (version 2 introduced the CRC).
pub const MIN_VERSION: u16 = 2;
/// Size of the file header.
pub const HEADER_SIZE: usize = 548;
/// Offset of the CRC-32 in the header; the CRC covers the header bytes before it.
pub const CRC_OFFSET: usize = 544;
/// Size of a section header.
pub const SECTION_HEADER_SIZE: usize = 12;
/// Most sections an image may have.
pub const MAX_SECTIONS: usize = 32;
/// Header flag: the image is for aarch64.
pub const FLAG_AARCH64: u16 = 0x1;
/// Default enclave memory written into new headers (ignored at run time).
pub const DEFAULT_MEMORY: u64 = 1 << 30;
/// Default CPU count written into new headers (ignored at run time).
pub const DEFAULT_CPUS: u64 = 2;
/// Largest kernel command line accepted.
pub const MAX_CMDLINE_SIZE: u64 = 64 * 1024;
/// Largest metadata section accepted.
pub const MAX_METADATA_SIZE: u64 = 4 * 1024 * 1024;
/// Largest signature section accepted (the format's limit).
pub const MAX_SIGNATURE_SIZE: u64 = 32 * 1024;

const SECTION_OFFSETS_AT: usize = 28;
const SECTION_SIZES_AT: usize = SECTION_OFFSETS_AT + 8 * MAX_SECTIONS;

/// Section types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SectionKind {
    /// The kernel (bzImage or Image).
    Kernel,
    /// The kernel command line, without a NUL terminator.
    Cmdline,
    /// A ramdisk (cpio, possibly compressed).
    Ramdisk,
    /// The signature over PCR0 (version 3 and later).
    Signature,
    /// JSON metadata (version 4 and later).
    Metadata,
}

impl SectionKind {
    /// Decodes a raw type value (0 and 6+ are invalid).
    pub fn from_u16(value: u16) -> Option<Self> {
        match value {
            1 => Some(Self::Kernel),
            2 => Some(Self::Cmdline),
            3 => Some(Self::Ramdisk),
            4 => Some(Self::Signature),
            5 => Some(Self::Metadata),
            _ => None,
        }
    }

    /// The raw type value.
    pub fn to_u16(self) -> u16 {
        match self {
            Self::Kernel => 1,
            Self::Cmdline => 2,
            Self::Ramdisk => 3,
            Self::Signature => 4,
            Self::Metadata => 5,
        }
    }

    /// Lower-case name, for messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::Kernel => "kernel",
            Self::Cmdline => "cmdline",
            Self::Ramdisk => "ramdisk",
            Self::Signature => "signature",
            Self::Metadata => "metadata",
        }
    }

    /// First format version that defines this section type.
    pub fn min_version(self) -> u16 {
        match self {
            Self::Kernel | Self::Cmdline | Self::Ramdisk => 1,
            Self::Signature => 3,
            Self::Metadata => 4,
        }
    }

    /// The size limit this crate enforces for the kind, if any.
    pub fn size_limit(self) -> Option<u64> {
        match self {
            Self::Cmdline => Some(MAX_CMDLINE_SIZE),
            Self::Metadata => Some(MAX_METADATA_SIZE),
            Self::Signature => Some(MAX_SIGNATURE_SIZE),
            Self::Kernel | Self::Ramdisk => None,
        }
    }
}

/// The decoded file header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EifHeader {
    /// Format version.
    pub version: u16,
    /// Flags (bit 0: aarch64).
    pub flags: u16,
    /// Default memory in bytes (informational).
    pub default_memory: u64,
    /// Default CPU count (informational).
    pub default_cpus: u64,
    /// Reserved, written as 0.
    pub reserved: u16,
    /// Number of sections in use.
    pub num_sections: u16,
    /// Offset of each section's header.
    pub section_offsets: [u64; MAX_SECTIONS],
    /// Data size of each section.
    pub section_sizes: [u64; MAX_SECTIONS],
    /// Unused, written as 0.
    pub unused: u32,
    /// CRC-32 over the header before this field and every section after it.
    pub crc32: u32,
}

fn be_u16(b: &[u8; HEADER_SIZE], at: usize) -> u16 {
    let mut x = [0u8; 2];
    x.copy_from_slice(&b[at..at + 2]);
    u16::from_be_bytes(x)
}

fn be_u32(b: &[u8; HEADER_SIZE], at: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_be_bytes(x)
}

fn be_u64(b: &[u8; HEADER_SIZE], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(x)
}

impl EifHeader {
    /// A header for a new image: current version, defaults, no sections yet.
    pub fn new(flags: u16) -> Self {
        Self {
            version: CURRENT_VERSION,
            flags,
            default_memory: DEFAULT_MEMORY,
            default_cpus: DEFAULT_CPUS,
            reserved: 0,
            num_sections: 0,
            section_offsets: [0; MAX_SECTIONS],
            section_sizes: [0; MAX_SECTIONS],
            unused: 0,
            crc32: 0,
        }
    }

    /// Decodes a header, checking the magic number and the version.
    pub fn parse(bytes: &[u8; HEADER_SIZE]) -> Result<Self> {
        let mut magic = [0u8; 4];
        magic.copy_from_slice(&bytes[0..4]);
        if magic != EIF_MAGIC {
            return Err(EifError::BadMagic { found: magic });
        }
        let version = be_u16(bytes, 4);
        if !(MIN_VERSION..=CURRENT_VERSION).contains(&version) {
            return Err(EifError::UnsupportedVersion { version });
        }
        let mut section_offsets = [0u64; MAX_SECTIONS];
        let mut section_sizes = [0u64; MAX_SECTIONS];
        for i in 0..MAX_SECTIONS {
            section_offsets[i] = be_u64(bytes, SECTION_OFFSETS_AT + 8 * i);
            section_sizes[i] = be_u64(bytes, SECTION_SIZES_AT + 8 * i);
        }
        Ok(Self {
            version,
            flags: be_u16(bytes, 6),
            default_memory: be_u64(bytes, 8),
            default_cpus: be_u64(bytes, 16),
            reserved: be_u16(bytes, 24),
            num_sections: be_u16(bytes, 26),
            section_offsets,
            section_sizes,
            unused: be_u32(bytes, 540),
            crc32: be_u32(bytes, CRC_OFFSET),
        })
    }

    /// Encodes the header.
    pub fn to_bytes(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0..4].copy_from_slice(&EIF_MAGIC);
        b[4..6].copy_from_slice(&self.version.to_be_bytes());
        b[6..8].copy_from_slice(&self.flags.to_be_bytes());
        b[8..16].copy_from_slice(&self.default_memory.to_be_bytes());
        b[16..24].copy_from_slice(&self.default_cpus.to_be_bytes());
        b[24..26].copy_from_slice(&self.reserved.to_be_bytes());
        b[26..28].copy_from_slice(&self.num_sections.to_be_bytes());
        for i in 0..MAX_SECTIONS {
            let o = SECTION_OFFSETS_AT + 8 * i;
            b[o..o + 8].copy_from_slice(&self.section_offsets[i].to_be_bytes());
            let s = SECTION_SIZES_AT + 8 * i;
            b[s..s + 8].copy_from_slice(&self.section_sizes[i].to_be_bytes());
        }
        b[540..544].copy_from_slice(&self.unused.to_be_bytes());
        b[CRC_OFFSET..HEADER_SIZE].copy_from_slice(&self.crc32.to_be_bytes());
        b
    }

    /// True when the aarch64 flag is set.
    pub fn is_aarch64(&self) -> bool {
        self.flags & FLAG_AARCH64 != 0
    }
}

/// A decoded 12-byte section header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SectionHeader {
    /// Raw section type.
    pub section_type: u16,
    /// Flags (written as 0).
    pub flags: u16,
    /// Data size.
    pub size: u64,
}

impl SectionHeader {
    /// Decodes a section header.
    pub fn parse(b: &[u8; SECTION_HEADER_SIZE]) -> Self {
        let mut size = [0u8; 8];
        size.copy_from_slice(&b[4..12]);
        Self {
            section_type: u16::from_be_bytes([b[0], b[1]]),
            flags: u16::from_be_bytes([b[2], b[3]]),
            size: u64::from_be_bytes(size),
        }
    }

    /// Encodes a section header.
    pub fn to_bytes(&self) -> [u8; SECTION_HEADER_SIZE] {
        let mut b = [0u8; SECTION_HEADER_SIZE];
        b[0..2].copy_from_slice(&self.section_type.to_be_bytes());
        b[2..4].copy_from_slice(&self.flags.to_be_bytes());
        b[4..12].copy_from_slice(&self.size.to_be_bytes());
        b
    }
}

/// One validated section of an image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Section {
    /// Position in the section table (and in the file).
    pub index: usize,
    /// Type.
    pub kind: SectionKind,
    /// Offset of the section header in the file.
    pub offset: u64,
    /// Data size.
    pub size: u64,
    /// Flags from the section header.
    pub flags: u16,
}

impl Section {
    /// Offset of the first data byte.
    pub fn data_offset(&self) -> u64 {
        // Cannot overflow: the reader checked offset + 12 + size fits in u64.
        self.offset + SECTION_HEADER_SIZE as u64
    }

    /// Offset just past the data.
    pub fn end(&self) -> u64 {
        self.data_offset() + self.size
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips() {
        let mut h = EifHeader::new(FLAG_AARCH64);
        h.num_sections = 3;
        h.section_offsets[0] = 548;
        h.section_sizes[31] = u64::MAX;
        h.crc32 = 0xdead_beef;
        let b = h.to_bytes();
        assert_eq!(&b[0..4], b".eif");
        assert_eq!(EifHeader::parse(&b).unwrap(), h);
        assert!(h.is_aarch64());
    }

    #[test]
    fn header_rejects_magic_and_versions() {
        let mut b = EifHeader::new(0).to_bytes();
        b[0] = b'x';
        assert!(matches!(
            EifHeader::parse(&b),
            Err(EifError::BadMagic { .. })
        ));
        for v in [0u16, 1, 5, 0xffff] {
            let mut h = EifHeader::new(0);
            h.version = v;
            assert!(matches!(
                EifHeader::parse(&h.to_bytes()),
                Err(EifError::UnsupportedVersion { version }) if version == v
            ));
        }
    }

    #[test]
    fn section_header_round_trips_and_kinds() {
        let s = SectionHeader {
            section_type: 3,
            flags: 0,
            size: 0x0102_0304_0506_0708,
        };
        assert_eq!(SectionHeader::parse(&s.to_bytes()), s);
        for v in 0..10u16 {
            match SectionKind::from_u16(v) {
                Some(k) => assert_eq!(k.to_u16(), v),
                None => assert!(v == 0 || v >= 6),
            }
        }
    }
}
