//! Reading images: [`EifReader`] parses and validates the header and section table when it is
//! opened, then answers questions about the image by streaming it.
//!
//! Validation on open: magic, version 2-4, at most 32 sections, every section offset and size
//! checked with overflow-safe arithmetic, sections laid out back to back from the end of the
//! header with nothing after the last, each section header agreeing with the table, types known
//! to the image's version, size caps for the cmdline, metadata and signature sections, exactly one
//! kernel and cmdline, at least one ramdisk, no ramdisk before the kernel, at most one metadata
//! and signature section.
//!
//! Everything that needs the section data ([`EifReader::measure`], [`EifReader::check_crc`],
//! [`EifReader::verify_signature`], [`EifReader::inspect`]) goes through one streaming pass that
//! computes the CRC and all PCRs at once with fixed 1 MiB buffers. PCR0 and PCR1 share their
//! common prefix (kernel, cmdline, bootstrap ramdisk) by cloning the hash state; when the
//! customer ramdisks are large, PCR2 is hashed on a second thread while the reading thread
//! computes the CRC and PCR0, so a multi-GiB image is hashed at close to the speed of a single
//! SHA-384 pass.

use crate::error::{EifError, Result};
use crate::format::{
    EifHeader, Section, SectionHeader, SectionKind, CRC_OFFSET, HEADER_SIZE, MAX_SECTIONS,
    SECTION_HEADER_SIZE,
};
use crate::measure::{
    BootPcrs, Measurements, Pcr, PcrHasher, Role, SectionRoles, STREAM_BUFFER_SIZE,
};
use crate::metadata::Metadata;
use crate::signature::{CertificateInfo, EifSignature, VerifiedSignature};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::mpsc;

/// Customer ramdisks at least this large are hashed on a second thread.
pub const PARALLEL_THRESHOLD: u64 = 8 * 1024 * 1024;
/// Buffers in flight between the reading and the hashing thread.
const PIPELINE_BUFFERS: usize = 4;

/// Result of comparing the stored CRC with the contents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CrcCheck {
    /// CRC in the header.
    pub stored: u32,
    /// CRC of the contents.
    pub computed: u32,
}

impl CrcCheck {
    /// True when they match.
    pub fn ok(&self) -> bool {
        self.stored == self.computed
    }

    /// `Ok(())` when they match, [`EifError::CrcMismatch`] otherwise.
    pub fn into_result(self) -> Result<()> {
        if self.ok() {
            Ok(())
        } else {
            Err(EifError::CrcMismatch {
                stored: self.stored,
                computed: self.computed,
            })
        }
    }
}

/// What one pass over the image found.
#[derive(Debug)]
pub(crate) struct Scan {
    pub pcr0: Pcr,
    pub pcr1: Pcr,
    pub pcr2: Pcr,
    pub crc: CrcCheck,
    /// CRC state over the section headers and data before the signature section (or all of
    /// them when unsigned), without the file header.
    pub body_crc_before_signature: crc32fast::Hasher,
    pub cmdline: Vec<u8>,
    pub metadata: Option<Vec<u8>>,
    pub signature: Option<Vec<u8>>,
}

/// The signature part of an [`Inspection`].
#[derive(Debug)]
pub struct SignatureStatus {
    /// The certificate, when the section could be parsed.
    pub certificate: Option<CertificateInfo>,
    /// The outcome of checking the signature against PCR0.
    pub check: Result<VerifiedSignature>,
}

/// Everything `describe-eif` reports, from one pass over the image.
#[derive(Debug)]
pub struct Inspection {
    /// The file header.
    pub header: EifHeader,
    /// The sections.
    pub sections: Vec<Section>,
    /// PCR0, 1, 2 and (when the certificate parses) 8.
    pub measurements: Measurements,
    /// The CRC comparison.
    pub crc: CrcCheck,
    /// The kernel command line bytes.
    pub cmdline: Vec<u8>,
    /// The metadata, when the image has a metadata section.
    pub metadata: Option<Result<Metadata>>,
    /// The signature, when the image has a signature section.
    pub signature: Option<SignatureStatus>,
}

/// A validated image over any `Read + Seek`.
#[derive(Debug)]
pub struct EifReader<R> {
    inner: R,
    header: EifHeader,
    sections: Vec<Section>,
    file_len: u64,
}

impl EifReader<File> {
    /// Opens and validates the image at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let file = File::open(path.as_ref()).map_err(EifError::io("cannot open the image"))?;
        Self::new(file)
    }
}

fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match r.read(&mut buf[done..]) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// The PCR2 hasher: inline, or on a helper thread fed through a small buffer pipeline.
enum Pcr2 {
    Inline(PcrHasher),
    Threaded {
        tx: mpsc::SyncSender<Vec<u8>>,
        back: mpsc::Receiver<Vec<u8>>,
        allocated: usize,
    },
}

impl Pcr2 {
    fn buffer(&mut self, spare: &mut Vec<u8>) -> Result<Vec<u8>> {
        match self {
            Pcr2::Inline(_) => Ok(std::mem::take(spare)),
            Pcr2::Threaded {
                back, allocated, ..
            } => {
                if let Ok(b) = back.try_recv() {
                    return Ok(b);
                }
                if *allocated < PIPELINE_BUFFERS {
                    *allocated += 1;
                    return Ok(vec![0u8; STREAM_BUFFER_SIZE]);
                }
                back.recv().map_err(|_| EifError::Internal)
            }
        }
    }

    fn consume(&mut self, buf: Vec<u8>, spare: &mut Vec<u8>) -> Result<()> {
        match self {
            Pcr2::Inline(h) => {
                h.update(&buf);
                *spare = buf;
                Ok(())
            }
            Pcr2::Threaded { tx, .. } => tx.send(buf).map_err(|_| EifError::Internal),
        }
    }
}

struct ScanState {
    crc_body: crc32fast::Hasher,
    before_signature: Option<crc32fast::Hasher>,
    /// PCR0 and PCR1.
    boot: BootPcrs,
    cmdline: Vec<u8>,
    metadata: Option<Vec<u8>>,
    signature: Option<Vec<u8>>,
    /// Stored and computed CRC, once the pass is done.
    crc_pair: (u32, u32),
}

impl<R: Read + Seek> EifReader<R> {
    /// Parses and validates the header and the section table of the image in `inner`.
    pub fn new(mut inner: R) -> Result<Self> {
        let file_len = inner
            .seek(SeekFrom::End(0))
            .map_err(EifError::io("cannot find the image size"))?;
        if file_len < HEADER_SIZE as u64 {
            return Err(EifError::Truncated {
                what: "the header".into(),
                needed: HEADER_SIZE as u64,
                available: file_len,
            });
        }
        inner
            .seek(SeekFrom::Start(0))
            .map_err(EifError::io("cannot seek in the image"))?;
        let mut raw = [0u8; HEADER_SIZE];
        inner
            .read_exact(&mut raw)
            .map_err(EifError::io("cannot read the image header"))?;
        let header = EifHeader::parse(&raw)?;
        let count = usize::from(header.num_sections);
        if count > MAX_SECTIONS {
            return Err(EifError::TooManySections {
                count,
                max: MAX_SECTIONS,
            });
        }
        let mut sections = Vec::with_capacity(count);
        let mut expected = HEADER_SIZE as u64;
        for index in 0..count {
            let section = read_section_entry(&mut inner, &header, index, expected, file_len)?;
            expected = section.end();
            sections.push(section);
        }
        if expected != file_len {
            return Err(EifError::TrailingData {
                end: expected,
                extra: file_len - expected,
            });
        }
        check_section_order(&sections)?;
        Ok(Self {
            inner,
            header,
            sections,
            file_len,
        })
    }

    /// The file header.
    pub fn header(&self) -> &EifHeader {
        &self.header
    }

    /// Format version.
    pub fn version(&self) -> u16 {
        self.header.version
    }

    /// Every section, in file order.
    pub fn sections(&self) -> &[Section] {
        &self.sections
    }

    /// Size of the image file.
    pub fn file_len(&self) -> u64 {
        self.file_len
    }

    /// Indices of the ramdisk sections, in order (the first is the bootstrap ramdisk).
    pub fn ramdisks(&self) -> Vec<usize> {
        self.indices(SectionKind::Ramdisk)
    }

    /// Index of the kernel section.
    pub fn kernel(&self) -> usize {
        // Validation guarantees exactly one kernel.
        self.indices(SectionKind::Kernel)
            .first()
            .copied()
            .unwrap_or(0)
    }

    /// The signature section, if any.
    pub fn signature_section(&self) -> Option<&Section> {
        self.sections
            .iter()
            .find(|s| s.kind == SectionKind::Signature)
    }

    /// True when the image has a signature section.
    pub fn is_signed(&self) -> bool {
        self.signature_section().is_some()
    }

    fn indices(&self, kind: SectionKind) -> Vec<usize> {
        self.sections
            .iter()
            .filter(|s| s.kind == kind)
            .map(|s| s.index)
            .collect()
    }

    fn section(&self, index: usize) -> Result<Section> {
        self.sections
            .get(index)
            .copied()
            .ok_or_else(|| EifError::InvalidInput {
                reason: format!("the image has no section {index}"),
            })
    }

    /// A reader over the data of section `index`, bounded to its size, for streaming (e.g.
    /// unpacking a ramdisk).
    pub fn section_reader(&mut self, index: usize) -> Result<io::Take<&mut R>> {
        let s = self.section(index)?;
        self.inner
            .seek(SeekFrom::Start(s.data_offset()))
            .map_err(EifError::io("cannot seek in the image"))?;
        Ok((&mut self.inner).take(s.size))
    }

    /// Reads a section whose size validation capped (cmdline, metadata, signature).
    fn read_small(&mut self, s: Section) -> Result<Vec<u8>> {
        let limit = s.kind.size_limit().ok_or_else(|| EifError::InvalidInput {
            reason: format!("section {} is not a small section", s.index),
        })?;
        let len = s.size.min(limit);
        // `len` is capped by the section's size limit; the capacity is only a hint.
        let mut data = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
        self.section_reader(s.index)?
            .take(len)
            .read_to_end(&mut data)
            .map_err(EifError::io("cannot read a section"))?;
        if data.len() as u64 != s.size {
            return Err(EifError::Truncated {
                what: format!("section {}", s.index),
                needed: s.end(),
                available: s.data_offset() + data.len() as u64,
            });
        }
        Ok(data)
    }

    /// The kernel command line.
    pub fn cmdline(&mut self) -> Result<String> {
        let s = self.section(
            self.indices(SectionKind::Cmdline)
                .first()
                .copied()
                .unwrap_or(0),
        )?;
        let bytes = self.read_small(s)?;
        cmdline_string(bytes)
    }

    /// The metadata, if the image has a metadata section.
    pub fn metadata(&mut self) -> Result<Option<Metadata>> {
        let Some(&index) = self.indices(SectionKind::Metadata).first() else {
            return Ok(None);
        };
        let s = self.section(index)?;
        let bytes = self.read_small(s)?;
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(EifError::InvalidMetadata)
    }

    /// The parsed signature section, if the image is signed (not verified).
    pub fn signature(&mut self) -> Result<Option<EifSignature>> {
        let Some(s) = self.signature_section().copied() else {
            return Ok(None);
        };
        let bytes = self.read_small(s)?;
        EifSignature::parse(&bytes).map(Some)
    }

    /// PCR0, PCR1, PCR2 and, when signed, PCR8, in one streaming pass.
    pub fn measure(&mut self) -> Result<Measurements> {
        let scan = self.scan()?;
        let pcr8 = match &scan.signature {
            Some(bytes) => Some(EifSignature::parse(bytes)?.certificate.pcr8()),
            None => None,
        };
        Ok(Measurements {
            pcr0: scan.pcr0,
            pcr1: scan.pcr1,
            pcr2: scan.pcr2,
            pcr8,
        })
    }

    /// Compares the stored CRC with the contents (one streaming pass).
    pub fn check_crc(&mut self) -> Result<CrcCheck> {
        Ok(self.scan()?.crc)
    }

    /// Verifies the signature: it must verify with the certificate's key and sign this image's
    /// PCR0. Fails with [`EifError::NotSigned`] on an unsigned image.
    pub fn verify_signature(&mut self) -> Result<VerifiedSignature> {
        if !self.is_signed() {
            return Err(EifError::NotSigned);
        }
        let scan = self.scan()?;
        let bytes = scan.signature.ok_or(EifError::NotSigned)?;
        EifSignature::parse(&bytes)?.verify(&scan.pcr0)
    }

    /// Everything `describe-eif` needs, in one pass. Fails only when the image cannot be read;
    /// a bad CRC, metadata or signature is reported inside the result.
    pub fn inspect(&mut self) -> Result<Inspection> {
        let scan = self.scan()?;
        let metadata = scan.metadata.as_ref().map(|bytes| {
            serde_json::from_slice::<Metadata>(bytes).map_err(EifError::InvalidMetadata)
        });
        let mut pcr8 = None;
        let signature = scan
            .signature
            .as_ref()
            .map(|bytes| match EifSignature::parse(bytes) {
                Ok(sig) => {
                    pcr8 = Some(sig.certificate.pcr8());
                    SignatureStatus {
                        certificate: Some(sig.certificate.info()),
                        check: sig.verify(&scan.pcr0),
                    }
                }
                Err(e) => SignatureStatus {
                    certificate: None,
                    check: Err(e),
                },
            });
        Ok(Inspection {
            header: self.header.clone(),
            sections: self.sections.clone(),
            measurements: Measurements {
                pcr0: scan.pcr0,
                pcr1: scan.pcr1,
                pcr2: scan.pcr2,
                pcr8,
            },
            crc: scan.crc,
            cmdline: scan.cmdline,
            metadata,
            signature,
        })
    }

    /// Gives back the underlying reader.
    pub fn into_inner(self) -> R {
        self.inner
    }

    /// One pass over the whole file: CRC, PCR0-2, and the small sections' bytes.
    pub(crate) fn scan(&mut self) -> Result<Scan> {
        let customer: u64 = self
            .ramdisks()
            .iter()
            .skip(1)
            .filter_map(|&i| self.sections.get(i))
            .map(|s| s.size)
            .sum();
        if customer < PARALLEL_THRESHOLD {
            let mut pcr2 = Pcr2::Inline(PcrHasher::new());
            let state = self.scan_with(&mut pcr2)?;
            let Pcr2::Inline(h) = pcr2 else {
                return Err(EifError::Internal);
            };
            return Ok(state.finish(h.finish()));
        }
        std::thread::scope(|scope| {
            let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(PIPELINE_BUFFERS);
            let (back_tx, back) = mpsc::sync_channel::<Vec<u8>>(PIPELINE_BUFFERS);
            let worker = scope.spawn(move || {
                let mut h = PcrHasher::new();
                for buf in rx {
                    h.update(&buf);
                    // The reader may already be gone after an error; nothing to do then.
                    let _ = back_tx.send(buf);
                }
                h
            });
            let mut pcr2 = Pcr2::Threaded {
                tx,
                back,
                allocated: 0,
            };
            let state = self.scan_with(&mut pcr2);
            drop(pcr2);
            let h = worker.join().map_err(|_| EifError::Internal)?;
            Ok(state?.finish(h.finish()))
        })
    }

    fn scan_with(&mut self, pcr2: &mut Pcr2) -> Result<ScanState> {
        let mut raw = [0u8; HEADER_SIZE];
        self.inner
            .seek(SeekFrom::Start(0))
            .and_then(|_| self.inner.read_exact(&mut raw))
            .map_err(EifError::io("cannot read the image header"))?;
        let stored = EifHeader::parse(&raw)?.crc32;
        let mut header_crc = crc32fast::Hasher::new();
        header_crc.update(&raw[..CRC_OFFSET]);

        let mut st = ScanState {
            crc_body: crc32fast::Hasher::new(),
            before_signature: None,
            boot: BootPcrs::default(),
            cmdline: Vec::new(),
            metadata: None,
            signature: None,
            crc_pair: (0, 0),
        };
        let mut spare = vec![0u8; STREAM_BUFFER_SIZE];
        let mut own = vec![0u8; STREAM_BUFFER_SIZE];
        let mut roles = SectionRoles::default();
        let sections = self.sections.clone();
        for s in &sections {
            let mut sh = [0u8; SECTION_HEADER_SIZE];
            self.inner
                .seek(SeekFrom::Start(s.offset))
                .and_then(|_| self.inner.read_exact(&mut sh))
                .map_err(EifError::io("cannot read a section header"))?;
            if s.kind == SectionKind::Signature && st.before_signature.is_none() {
                st.before_signature = Some(st.crc_body.clone());
            }
            st.crc_body.update(&sh);
            let role = roles.next(s.kind);
            st.boot.begin(role);
            if role == Role::Unmeasured || s.kind == SectionKind::Cmdline {
                let data = self.read_small(*s)?;
                st.crc_body.update(&data);
                match s.kind {
                    SectionKind::Cmdline => {
                        st.boot.update(role, &data);
                        st.cmdline = data;
                    }
                    SectionKind::Metadata => st.metadata = Some(data),
                    _ => st.signature = Some(data),
                }
                continue;
            }
            let mut remaining = s.size;
            while remaining > 0 {
                let want = usize::try_from(remaining)
                    .map_or(STREAM_BUFFER_SIZE, |r| r.min(STREAM_BUFFER_SIZE));
                let mut buf = if role == Role::Customer {
                    pcr2.buffer(&mut spare)?
                } else {
                    std::mem::take(&mut own)
                };
                buf.resize(want, 0);
                let got = read_full(&mut self.inner, &mut buf)
                    .map_err(EifError::io("cannot read section data"))?;
                if got < want {
                    return Err(EifError::Truncated {
                        what: format!("section {} (the file shrank while reading)", s.index),
                        needed: s.end(),
                        available: s.end() - remaining + got as u64,
                    });
                }
                st.crc_body.update(&buf);
                st.boot.update(role, &buf);
                if role == Role::Customer {
                    pcr2.consume(buf, &mut spare)?;
                } else {
                    own = buf;
                }
                remaining -= want as u64;
            }
        }
        let mut crc = header_crc;
        crc.combine(&st.crc_body);
        if st.before_signature.is_none() {
            st.before_signature = Some(st.crc_body.clone());
        }
        st.crc_pair = (stored, crc.finalize());
        Ok(st)
    }
}

impl ScanState {
    fn finish(self, pcr2: Pcr) -> Scan {
        let (pcr0, pcr1) = self.boot.finish();
        Scan {
            pcr0,
            pcr1,
            pcr2,
            crc: CrcCheck {
                stored: self.crc_pair.0,
                computed: self.crc_pair.1,
            },
            body_crc_before_signature: self.before_signature.unwrap_or_default(),
            cmdline: self.cmdline,
            metadata: self.metadata,
            signature: self.signature,
        }
    }
}

/// Validates entry `index` of the section table against the file (bounds, layout, its own
/// section header, type and size cap) and returns it. `expected` is where the previous section
/// ended: sections lie back to back.
fn read_section_entry<R: Read + Seek>(
    inner: &mut R,
    header: &EifHeader,
    index: usize,
    expected: u64,
    file_len: u64,
) -> Result<Section> {
    let offset = header.section_offsets[index];
    let size = header.section_sizes[index];
    let end = offset
        .checked_add(SECTION_HEADER_SIZE as u64)
        .and_then(|x| x.checked_add(size));
    let end = match end {
        Some(end) if offset >= HEADER_SIZE as u64 => end,
        _ => {
            return Err(EifError::SectionOutOfBounds {
                index,
                offset,
                size,
            })
        }
    };
    if offset != expected {
        return Err(EifError::BadLayout {
            index,
            expected,
            found: offset,
        });
    }
    if end > file_len {
        return Err(EifError::Truncated {
            what: format!("section {index}"),
            needed: end,
            available: file_len,
        });
    }
    let mut sh = [0u8; SECTION_HEADER_SIZE];
    inner
        .seek(SeekFrom::Start(offset))
        .and_then(|_| inner.read_exact(&mut sh))
        .map_err(EifError::io("cannot read a section header"))?;
    let sh = SectionHeader::parse(&sh);
    let kind = SectionKind::from_u16(sh.section_type)
        .filter(|k| k.min_version() <= header.version)
        .ok_or(EifError::UnknownSectionType {
            index,
            section_type: sh.section_type,
            version: header.version,
        })?;
    if sh.size != size {
        return Err(EifError::SectionSizeMismatch {
            index,
            in_section: sh.size,
            in_table: size,
        });
    }
    if let Some(limit) = kind.size_limit() {
        if size > limit {
            return Err(EifError::SectionTooLarge {
                kind: kind.name(),
                size,
                limit,
            });
        }
    }
    Ok(Section {
        index,
        kind,
        offset,
        size,
        flags: sh.flags,
    })
}

fn check_section_order(sections: &[Section]) -> Result<()> {
    let mut seen = [0usize; 6];
    for s in sections {
        let k = usize::from(s.kind.to_u16());
        if s.kind == SectionKind::Ramdisk && seen[usize::from(SectionKind::Kernel.to_u16())] == 0 {
            return Err(EifError::RamdiskBeforeKernel { index: s.index });
        }
        if s.kind != SectionKind::Ramdisk && seen[k] > 0 {
            return Err(EifError::DuplicateSection {
                kind: s.kind.name(),
                index: s.index,
            });
        }
        seen[k] += 1;
    }
    for kind in [
        SectionKind::Kernel,
        SectionKind::Cmdline,
        SectionKind::Ramdisk,
    ] {
        if seen[usize::from(kind.to_u16())] == 0 {
            return Err(EifError::MissingSection { kind: kind.name() });
        }
    }
    Ok(())
}

/// Checks and converts command-line bytes.
pub(crate) fn cmdline_string(bytes: Vec<u8>) -> Result<String> {
    if bytes.contains(&0) {
        return Err(EifError::InvalidCmdline {
            reason: "it contains a NUL byte",
        });
    }
    String::from_utf8(bytes).map_err(|_| EifError::InvalidCmdline {
        reason: "it is not UTF-8",
    })
}
