//! cpio "newc" (magic `070701`) archives, the format of Linux initramfs and of the ramdisks in an
//! enclave image (EIF).
//!
//! - [`CpioWriter`] writes archives deterministically: entries come out exactly in the order the
//!   caller gives them (sorting is the caller's job), inode numbers are assigned sequentially from
//!   1, the modification time is a fixed value (0 unless set), owners are as given, device numbers
//!   are 0, and the archive ends with the `TRAILER!!!` entry. File contents are streamed from any
//!   [`std::io::Read`] and never held in memory whole.
//! - [`CpioReader`] reads archives from untrusted bytes: every header field is checked (magic, hex
//!   digits, name size, file size, file type), sizes are capped by [`ReaderLimits`], gzip input is
//!   detected by its magic and decompressed on the fly, and several concatenated archives (plain
//!   or compressed, as the kernel accepts them) are read one after the other. Names are returned
//!   raw: deciding what a path means (and refusing `..`) is the caller's job.
//!
//! The on-disk layout (shared by both halves) lives in [`format`].

#![forbid(unsafe_code)]

pub mod format;
pub mod reader;
pub mod writer;

pub use format::{FileKind, TRAILER_NAME};
pub use reader::{CpioReader, Entry, EntryData, ReadError, ReaderLimits};
pub use writer::{CpioWriter, WriteError};
