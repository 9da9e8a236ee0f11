//! Signing an existing image in place: measure it, then write (or replace) the signature section
//! at the end of the file and update the header and CRC. The CRC of everything before the
//! signature comes from the same pass that measured PCR0, so the image is read only once.

use crate::error::{EifError, Result};
use crate::format::{SectionHeader, SectionKind, CRC_OFFSET, MAX_SECTIONS, SECTION_HEADER_SIZE};
use crate::measure::Measurements;
use crate::reader::EifReader;
use crate::signature::EifSigner;
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

/// Signs the image in `file` (opened for reading and writing), replacing any signature, and
/// returns its measurements. Refuses an image whose CRC does not match (it would seal the
/// corruption) and one whose existing signature is not the last section.
pub fn sign_file_in_place(file: &mut File, signer: &EifSigner) -> Result<Measurements> {
    let mut reader = EifReader::new(&mut *file)?;
    let scan = reader.scan()?;
    scan.crc.into_result()?;
    let mut header = reader.header().clone();
    let count = reader.sections().len();
    let (offset, index) = match reader.signature_section() {
        Some(s) if s.index + 1 == count => (s.offset, s.index),
        Some(s) => return Err(EifError::SignatureNotLast { index: s.index }),
        None if count >= MAX_SECTIONS => {
            return Err(EifError::TooManySections {
                count: count + 1,
                max: MAX_SECTIONS,
            })
        }
        None => (reader.file_len(), count),
    };
    drop(reader);

    let section = signer.signature_section(&scan.pcr0)?;
    let size = section.len() as u64;
    let sh = SectionHeader {
        section_type: SectionKind::Signature.to_u16(),
        flags: 0,
        size,
    }
    .to_bytes();
    header.version = header.version.max(SectionKind::Signature.min_version());
    header.section_offsets[index] = offset;
    header.section_sizes[index] = size;
    // index <= 31, checked above.
    header.num_sections = u16::try_from(index + 1).map_err(|_| EifError::Internal)?;

    let mut crc = crc32fast::Hasher::new();
    crc.update(&header.to_bytes()[..CRC_OFFSET]);
    crc.combine(&scan.body_crc_before_signature);
    crc.update(&sh);
    crc.update(&section);
    header.crc32 = crc.finalize();

    let werr = EifError::io("cannot write the signed image");
    file.seek(SeekFrom::Start(offset))
        .and_then(|_| file.write_all(&sh))
        .and_then(|_| file.write_all(&section))
        .and_then(|_| file.set_len(offset + SECTION_HEADER_SIZE as u64 + size))
        .and_then(|_| file.seek(SeekFrom::Start(0)))
        .and_then(|_| file.write_all(&header.to_bytes()))
        .and_then(|_| file.sync_all())
        .map_err(werr)?;
    Ok(Measurements {
        pcr0: scan.pcr0,
        pcr1: scan.pcr1,
        pcr2: scan.pcr2,
        pcr8: Some(signer.certificate().pcr8()),
    })
}

/// Signs the image at `path` in place.
pub fn sign_path_in_place(path: impl AsRef<Path>, signer: &EifSigner) -> Result<Measurements> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path.as_ref())
        .map_err(EifError::io("cannot open the image for writing"))?;
    sign_file_in_place(&mut file, signer)
}
