//! The newc header: a 6-byte magic and 13 fields of 8 ASCII hex digits (110 bytes), followed by
//! the NUL-terminated name, padding to a multiple of 4, the data, and padding to a multiple of 4.
//!
//! Field order: ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor, rdevmajor,
//! rdevminor, namesize (including the NUL), check (always 0 in newc).

/// Magic of the newc format ("new ASCII", no checksum).
pub const NEWC_MAGIC: &[u8; 6] = b"070701";
/// Magic of the "crc" variant, which this crate recognises but does not read.
pub const CRC_MAGIC: &[u8; 6] = b"070702";
/// Magic of the old portable ASCII format, recognised only to name it in errors.
pub const ODC_MAGIC: &[u8; 6] = b"070707";
/// Size of a header in bytes.
pub const HEADER_LEN: usize = 110;
/// Number of 8-digit fields after the magic.
pub const FIELD_COUNT: usize = 13;
/// Name of the entry that ends an archive.
pub const TRAILER_NAME: &str = "TRAILER!!!";

/// File-type bits of `st_mode`.
pub const S_IFMT: u32 = 0o170_000;
/// Socket.
pub const S_IFSOCK: u32 = 0o140_000;
/// Symbolic link.
pub const S_IFLNK: u32 = 0o120_000;
/// Regular file.
pub const S_IFREG: u32 = 0o100_000;
/// Block device.
pub const S_IFBLK: u32 = 0o060_000;
/// Directory.
pub const S_IFDIR: u32 = 0o040_000;
/// Character device.
pub const S_IFCHR: u32 = 0o020_000;
/// FIFO.
pub const S_IFIFO: u32 = 0o010_000;
/// Permission bits including setuid, setgid and sticky.
pub const PERM_MASK: u32 = 0o7777;

/// The type of an entry, from the file-type bits of its mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileKind {
    /// Regular file (data follows the header).
    File,
    /// Directory.
    Dir,
    /// Symbolic link (the data is the target).
    Symlink,
    /// Character device.
    CharDevice,
    /// Block device.
    BlockDevice,
    /// Named pipe.
    Fifo,
    /// Unix socket.
    Socket,
}

impl FileKind {
    /// The kind encoded in `mode`, or `None` for unknown type bits.
    pub fn from_mode(mode: u32) -> Option<Self> {
        Some(match mode & S_IFMT {
            S_IFREG => FileKind::File,
            S_IFDIR => FileKind::Dir,
            S_IFLNK => FileKind::Symlink,
            S_IFCHR => FileKind::CharDevice,
            S_IFBLK => FileKind::BlockDevice,
            S_IFIFO => FileKind::Fifo,
            S_IFSOCK => FileKind::Socket,
            _ => return None,
        })
    }

    /// The file-type bits of this kind.
    pub fn type_bits(self) -> u32 {
        match self {
            FileKind::File => S_IFREG,
            FileKind::Dir => S_IFDIR,
            FileKind::Symlink => S_IFLNK,
            FileKind::CharDevice => S_IFCHR,
            FileKind::BlockDevice => S_IFBLK,
            FileKind::Fifo => S_IFIFO,
            FileKind::Socket => S_IFSOCK,
        }
    }
}

/// The numeric fields of one header, in on-disk order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RawHeader {
    /// Inode number.
    pub ino: u32,
    /// Type and permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Link count.
    pub nlink: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: u32,
    /// Size of the data in bytes.
    pub filesize: u32,
    /// Major number of the device holding the file.
    pub devmajor: u32,
    /// Minor number of the device holding the file.
    pub devminor: u32,
    /// Major number of a device node.
    pub rdevmajor: u32,
    /// Minor number of a device node.
    pub rdevminor: u32,
    /// Length of the name including its terminating NUL.
    pub namesize: u32,
    /// Checksum (0 in newc).
    pub check: u32,
}

/// Names of the fields, for error messages.
pub const FIELD_NAMES: [&str; FIELD_COUNT] = [
    "ino",
    "mode",
    "uid",
    "gid",
    "nlink",
    "mtime",
    "filesize",
    "devmajor",
    "devminor",
    "rdevmajor",
    "rdevminor",
    "namesize",
    "check",
];

impl RawHeader {
    fn fields(&self) -> [u32; FIELD_COUNT] {
        [
            self.ino,
            self.mode,
            self.uid,
            self.gid,
            self.nlink,
            self.mtime,
            self.filesize,
            self.devmajor,
            self.devminor,
            self.rdevmajor,
            self.rdevminor,
            self.namesize,
            self.check,
        ]
    }

    /// Encodes the header (magic included) as 110 ASCII bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        const HEX: &[u8; 16] = b"0123456789ABCDEF";
        let mut out = [0u8; HEADER_LEN];
        out[..6].copy_from_slice(NEWC_MAGIC);
        for (i, value) in self.fields().iter().enumerate() {
            let start = 6 + i * 8;
            for digit in 0..8 {
                let shift = (7 - digit) * 4;
                out[start + digit] = HEX[((value >> shift) & 0xf) as usize];
            }
        }
        out
    }

    /// Decodes the 13 fields that follow the magic. Returns the index of the first field that is
    /// not exactly 8 hex digits on failure.
    pub fn decode_fields(bytes: &[u8; HEADER_LEN - 6]) -> Result<Self, usize> {
        let mut values = [0u32; FIELD_COUNT];
        for (i, value) in values.iter_mut().enumerate() {
            let chunk = &bytes[i * 8..i * 8 + 8];
            let mut v: u32 = 0;
            for &c in chunk {
                let d = match c {
                    b'0'..=b'9' => c - b'0',
                    b'a'..=b'f' => c - b'a' + 10,
                    b'A'..=b'F' => c - b'A' + 10,
                    _ => return Err(i),
                };
                v = (v << 4) | u32::from(d);
            }
            *value = v;
        }
        let [ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor, rdevmajor, rdevminor, namesize, check] =
            values;
        Ok(Self {
            ino,
            mode,
            uid,
            gid,
            nlink,
            mtime,
            filesize,
            devmajor,
            devminor,
            rdevmajor,
            rdevminor,
            namesize,
            check,
        })
    }
}

/// Bytes of padding that bring `len` to a multiple of 4.
pub fn pad4(len: u64) -> u64 {
    (4 - (len % 4)) % 4
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_decode_round_trip() {
        let h = RawHeader {
            ino: 1,
            mode: S_IFREG | 0o4755,
            uid: 1000,
            gid: 0xFFFF_FFFF,
            nlink: 1,
            mtime: 0x5F5E_1000,
            filesize: 12,
            devmajor: 0,
            devminor: 0,
            rdevmajor: 0,
            rdevminor: 0,
            namesize: 6,
            check: 0,
        };
        let bytes = h.encode();
        assert_eq!(&bytes[..6], NEWC_MAGIC);
        assert_eq!(&bytes[6..14], b"00000001");
        assert_eq!(&bytes[14..22], b"000089ED");
        let tail: &[u8; HEADER_LEN - 6] = bytes[6..].try_into().unwrap();
        assert_eq!(RawHeader::decode_fields(tail), Ok(h));
    }

    #[test]
    fn decode_rejects_non_hex_and_names_field() {
        let mut bytes = RawHeader::default().encode();
        bytes[6 + 6 * 8 + 3] = b'g'; // filesize
        let tail: &[u8; HEADER_LEN - 6] = bytes[6..].try_into().unwrap();
        assert_eq!(RawHeader::decode_fields(tail), Err(6));
        bytes[6 + 6 * 8 + 3] = b' ';
        let tail: &[u8; HEADER_LEN - 6] = bytes[6..].try_into().unwrap();
        assert_eq!(RawHeader::decode_fields(tail), Err(6));
    }

    #[test]
    fn lowercase_hex_accepted() {
        let mut bytes = RawHeader::default().encode();
        bytes[6..14].copy_from_slice(b"0000abcd");
        let tail: &[u8; HEADER_LEN - 6] = bytes[6..].try_into().unwrap();
        assert_eq!(RawHeader::decode_fields(tail).unwrap().ino, 0xabcd);
    }

    #[test]
    fn kinds_round_trip() {
        for k in [
            FileKind::File,
            FileKind::Dir,
            FileKind::Symlink,
            FileKind::CharDevice,
            FileKind::BlockDevice,
            FileKind::Fifo,
            FileKind::Socket,
        ] {
            assert_eq!(FileKind::from_mode(k.type_bits() | 0o644), Some(k));
        }
        assert_eq!(FileKind::from_mode(0o644), None);
        assert_eq!(FileKind::from_mode(0o170_000), None);
    }

    #[test]
    fn padding() {
        assert_eq!(pad4(0), 0);
        assert_eq!(pad4(1), 3);
        assert_eq!(pad4(2), 2);
        assert_eq!(pad4(3), 1);
        assert_eq!(pad4(4), 0);
        assert_eq!(pad4(110 + 6), 0);
    }
}
