//! Writing images: [`EifBuilder`] takes a kernel, a command line, ramdisks (paths, bytes or
//! readers), metadata and an optional signer, and writes a version 4 image the way AWS's
//! `eif_build` lays it out (kernel, cmdline, metadata, ramdisks, signature), computing the CRC
//! and the PCRs while it streams the inputs once. Inputs may be of unknown length: section
//! headers are patched after their data is written, which is why the output must be seekable.
//! Customer ramdisk bytes go into both PCR0 and PCR2, so when there are customer ramdisks PCR2 is
//! hashed on a second thread while this one writes, computes the CRC and hashes PCR0.

use crate::error::{EifError, Result};
use crate::format::{
    EifHeader, SectionHeader, SectionKind, CRC_OFFSET, FLAG_AARCH64, HEADER_SIZE, MAX_CMDLINE_SIZE,
    MAX_METADATA_SIZE, MAX_SECTIONS, SECTION_HEADER_SIZE,
};
use crate::measure::{BootPcrs, Measurements, PcrHasher, Role, SectionRoles, STREAM_BUFFER_SIZE};
use crate::metadata::{now_rfc3339, Metadata};
use crate::signature::EifSigner;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;

/// Chunks in flight to the PCR2 thread.
const PCR2_PIPELINE: usize = 4;

/// Where a section's data comes from.
pub enum Input<'a> {
    /// A file, opened when the image is written.
    Path(PathBuf),
    /// Bytes in memory.
    Bytes(Vec<u8>),
    /// Any reader, read to its end.
    Reader(Box<dyn Read + 'a>),
}

impl std::fmt::Debug for Input<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Input::Path(p) => f.debug_tuple("Path").field(p).finish(),
            Input::Bytes(b) => write!(f, "Bytes({} bytes)", b.len()),
            Input::Reader(_) => f.write_str("Reader(..)"),
        }
    }
}

impl<'a> Input<'a> {
    fn open(self) -> Result<Box<dyn Read + 'a>> {
        Ok(match self {
            Input::Path(p) => {
                Box::new(File::open(&p).map_err(EifError::io("cannot open an image input file"))?)
            }
            Input::Bytes(b) => Box::new(io::Cursor::new(b)),
            Input::Reader(r) => r,
        })
    }
}

/// Builds an image. Chain the setters, then call [`EifBuilder::write_to`] or
/// [`EifBuilder::write_to_path`].
#[derive(Debug, Default)]
pub struct EifBuilder<'a> {
    kernel: Option<Input<'a>>,
    kernel_name: Option<String>,
    cmdline: Option<String>,
    ramdisks: Vec<Input<'a>>,
    metadata: Option<Metadata>,
    signer: Option<EifSigner>,
    flags: u16,
}

/// Where customer bytes go for PCR2: hashed inline, or sent to a hashing thread.
enum Pcr2 {
    Inline(PcrHasher),
    Threaded {
        tx: mpsc::SyncSender<Vec<u8>>,
        worker: JoinHandle<PcrHasher>,
    },
}

impl Pcr2 {
    fn new(threaded: bool) -> Self {
        if !threaded {
            return Pcr2::Inline(PcrHasher::new());
        }
        let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(PCR2_PIPELINE);
        let worker = std::thread::spawn(move || {
            let mut h = PcrHasher::new();
            for chunk in rx {
                h.update(&chunk);
            }
            h
        });
        Pcr2::Threaded { tx, worker }
    }

    fn update(&mut self, data: &[u8]) -> Result<()> {
        match self {
            Pcr2::Inline(h) => {
                h.update(data);
                Ok(())
            }
            Pcr2::Threaded { tx, .. } => tx.send(data.to_vec()).map_err(|_| EifError::Internal),
        }
    }

    fn finish(self) -> Result<crate::measure::Pcr> {
        match self {
            Pcr2::Inline(h) => Ok(h.finish()),
            Pcr2::Threaded { tx, worker } => {
                drop(tx);
                Ok(worker.join().map_err(|_| EifError::Internal)?.finish())
            }
        }
    }
}

struct Hashes {
    roles: SectionRoles,
    boot: BootPcrs,
    pcr2: Pcr2,
}

impl Hashes {
    fn update(&mut self, role: Role, data: &[u8]) -> Result<()> {
        self.boot.update(role, data);
        if role == Role::Customer {
            self.pcr2.update(data)?;
        }
        Ok(())
    }
}

impl<'a> EifBuilder<'a> {
    /// An empty builder.
    pub fn new() -> Self {
        Self::default()
    }

    /// The kernel, from a file. Its file name is the default image name.
    pub fn kernel_path(mut self, path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        self.kernel_name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        self.kernel = Some(Input::Path(path));
        self
    }

    /// The kernel, from memory.
    pub fn kernel_bytes(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.kernel = Some(Input::Bytes(bytes.into()));
        self
    }

    /// The kernel, from a reader.
    pub fn kernel_reader(mut self, reader: impl Read + 'a) -> Self {
        self.kernel = Some(Input::Reader(Box::new(reader)));
        self
    }

    /// The kernel command line (stored without a NUL terminator).
    pub fn cmdline(mut self, cmdline: impl Into<String>) -> Self {
        self.cmdline = Some(cmdline.into());
        self
    }

    /// Appends a ramdisk from a file. The first ramdisk is the bootstrap ramdisk (PCR1), the
    /// others are customer ramdisks (PCR2).
    pub fn ramdisk_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.ramdisks.push(Input::Path(path.into()));
        self
    }

    /// Appends a ramdisk from memory.
    pub fn ramdisk_bytes(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.ramdisks.push(Input::Bytes(bytes.into()));
        self
    }

    /// Appends a ramdisk from a reader.
    pub fn ramdisk_reader(mut self, reader: impl Read + 'a) -> Self {
        self.ramdisks.push(Input::Reader(Box::new(reader)));
        self
    }

    /// Appends a ramdisk from any [`Input`].
    pub fn ramdisk(mut self, input: Input<'a>) -> Self {
        self.ramdisks.push(input);
        self
    }

    /// The metadata section. Without it, the builder writes metadata naming the kernel file,
    /// cloister as the build tool and the current time.
    pub fn metadata(mut self, metadata: Metadata) -> Self {
        self.metadata = Some(metadata);
        self
    }

    /// Signs the image (adds PCR8 and a signature section).
    pub fn signer(mut self, signer: EifSigner) -> Self {
        self.signer = Some(signer);
        self
    }

    /// Marks the image as aarch64 (header flag bit 0).
    pub fn aarch64(mut self, yes: bool) -> Self {
        if yes {
            self.flags |= FLAG_AARCH64;
        } else {
            self.flags &= !FLAG_AARCH64;
        }
        self
    }

    /// Writes the image to a new file at `path` (replacing it) and returns its measurements.
    /// The data is written and closed but not forced to stable storage: an image is a build
    /// artifact, rebuilt from its inputs, and (as with compilers and `eif_build`) a caller that
    /// needs durability syncs the file itself.
    pub fn write_to_path(self, path: impl AsRef<Path>) -> Result<Measurements> {
        let file =
            File::create(path.as_ref()).map_err(EifError::io("cannot create the image file"))?;
        let mut out = io::BufWriter::with_capacity(STREAM_BUFFER_SIZE, file);
        let m = self.write_to(&mut out)?;
        out.into_inner().map_err(|e| EifError::Io {
            context: "cannot write the image file",
            source: e.into_error(),
        })?;
        Ok(m)
    }

    /// Writes the image at the start of `out` and returns its measurements.
    pub fn write_to<W: Write + Seek>(self, mut out: W) -> Result<Measurements> {
        let kernel = self.kernel.ok_or_else(|| EifError::InvalidInput {
            reason: "no kernel".into(),
        })?;
        let cmdline = self.cmdline.ok_or_else(|| EifError::InvalidInput {
            reason: "no kernel command line".into(),
        })?;
        if cmdline.len() as u64 > MAX_CMDLINE_SIZE {
            return Err(EifError::SectionTooLarge {
                kind: "cmdline",
                size: cmdline.len() as u64,
                limit: MAX_CMDLINE_SIZE,
            });
        }
        if cmdline.as_bytes().contains(&0) {
            return Err(EifError::InvalidCmdline {
                reason: "it contains a NUL byte",
            });
        }
        if self.ramdisks.is_empty() {
            return Err(EifError::MissingSection { kind: "ramdisk" });
        }
        let count = 3 + self.ramdisks.len() + usize::from(self.signer.is_some());
        if count > MAX_SECTIONS {
            return Err(EifError::TooManySections {
                count,
                max: MAX_SECTIONS,
            });
        }
        let metadata = self.metadata.unwrap_or_else(|| {
            Metadata::new(
                self.kernel_name.as_deref().unwrap_or("enclave"),
                "cloister",
                env!("CARGO_PKG_VERSION"),
                now_rfc3339(),
            )
        });
        let metadata = metadata.to_bytes();
        if metadata.len() as u64 > MAX_METADATA_SIZE {
            return Err(EifError::SectionTooLarge {
                kind: "metadata",
                size: metadata.len() as u64,
                limit: MAX_METADATA_SIZE,
            });
        }

        let werr = EifError::io("cannot write the image");
        out.seek(SeekFrom::Start(0)).map_err(werr)?;
        out.write_all(&[0u8; HEADER_SIZE])
            .map_err(EifError::io("cannot write the image"))?;

        let mut w = SectionWriter {
            out: &mut out,
            header: EifHeader::new(self.flags),
            pos: HEADER_SIZE as u64,
            body_crc: crc32fast::Hasher::new(),
            hashes: Hashes {
                roles: SectionRoles::default(),
                boot: BootPcrs::default(),
                pcr2: Pcr2::new(self.ramdisks.len() > 1),
            },
            buf: vec![0u8; STREAM_BUFFER_SIZE],
        };
        w.section(SectionKind::Kernel, kernel.open()?)?;
        w.section(
            SectionKind::Cmdline,
            Box::new(io::Cursor::new(cmdline.into_bytes())),
        )?;
        w.section(SectionKind::Metadata, Box::new(io::Cursor::new(metadata)))?;
        for ramdisk in self.ramdisks {
            w.section(SectionKind::Ramdisk, ramdisk.open()?)?;
        }
        let (pcr0, pcr1) = std::mem::take(&mut w.hashes.boot).finish();
        let pcr2 =
            std::mem::replace(&mut w.hashes.pcr2, Pcr2::Inline(PcrHasher::new())).finish()?;
        let pcr8 = match &self.signer {
            Some(signer) => {
                let section = signer.signature_section(&pcr0)?;
                w.section(SectionKind::Signature, Box::new(io::Cursor::new(section)))?;
                Some(signer.certificate().pcr8())
            }
            None => None,
        };
        let mut header = w.header;
        let bytes = header.to_bytes();
        let mut crc = crc32fast::Hasher::new();
        crc.update(&bytes[..CRC_OFFSET]);
        crc.combine(&w.body_crc);
        header.crc32 = crc.finalize();
        let end = w.pos;
        out.seek(SeekFrom::Start(0))
            .and_then(|_| out.write_all(&header.to_bytes()))
            .and_then(|_| out.seek(SeekFrom::Start(end)))
            .and_then(|_| out.flush())
            .map_err(EifError::io("cannot write the image"))?;
        Ok(Measurements {
            pcr0,
            pcr1,
            pcr2,
            pcr8,
        })
    }
}

struct SectionWriter<'w, W> {
    out: &'w mut W,
    header: EifHeader,
    pos: u64,
    body_crc: crc32fast::Hasher,
    hashes: Hashes,
    buf: Vec<u8>,
}

impl<W: Write + Seek> SectionWriter<'_, W> {
    fn section(&mut self, kind: SectionKind, mut input: Box<dyn Read + '_>) -> Result<()> {
        let role = self.hashes.roles.next(kind);
        self.hashes.boot.begin(role);
        let werr = "cannot write the image";
        let start = self.pos;
        self.out
            .write_all(&[0u8; SECTION_HEADER_SIZE])
            .map_err(EifError::io(werr))?;
        let mut data_crc = crc32fast::Hasher::new();
        let mut size = 0u64;
        loop {
            let n = match input.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(EifError::Io {
                        context: "cannot read an image input",
                        source,
                    })
                }
            };
            let chunk = &self.buf[..n];
            self.out.write_all(chunk).map_err(EifError::io(werr))?;
            data_crc.update(chunk);
            self.hashes.update(role, chunk)?;
            size += n as u64;
        }
        let sh = SectionHeader {
            section_type: kind.to_u16(),
            flags: 0,
            size,
        }
        .to_bytes();
        let end = start + SECTION_HEADER_SIZE as u64 + size;
        self.out
            .seek(SeekFrom::Start(start))
            .and_then(|_| self.out.write_all(&sh))
            .and_then(|_| self.out.seek(SeekFrom::Start(end)))
            .map_err(EifError::io(werr))?;
        let mut crc = crc32fast::Hasher::new();
        crc.update(&sh);
        crc.combine(&data_crc);
        self.body_crc.combine(&crc);
        let i = usize::from(self.header.num_sections);
        self.header.section_offsets[i] = start;
        self.header.section_sizes[i] = size;
        self.header.num_sections += 1;
        self.pos = end;
        Ok(())
    }
}
