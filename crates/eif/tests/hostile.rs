//! Hostile and damaged images: every one fails with its own error (never a panic, a hang or an
//! allocation sized by the file), and what can still be reported is reported.

use cloister_eif::format::{
    EifHeader, SectionHeader, CRC_OFFSET, HEADER_SIZE, MAX_SIGNATURE_SIZE, SECTION_HEADER_SIZE,
};
use cloister_eif::signature::encode_signature_section;
use cloister_eif::{EifBuilder, EifError, EifReader, EifSignature, EifSigner, Metadata};
use std::io::Cursor;
use std::path::PathBuf;

fn vectors() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/vectors/eif")
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(vectors().join(name)).unwrap()
}

/// A small valid image: kernel, cmdline, metadata, two ramdisks.
fn small() -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    EifBuilder::new()
        .kernel_bytes(vec![7u8; 100])
        .cmdline("console=ttyS0")
        .metadata(Metadata::new("k", "t", "1", "2024-01-01T00:00:00Z"))
        .ramdisk_bytes(vec![1u8; 40])
        .ramdisk_bytes(vec![2u8; 30])
        .write_to(&mut out)
        .unwrap();
    out.into_inner()
}

/// Assembles an image from raw (type, data) sections with a correct table and CRC.
fn assemble(version: u16, sections: &[(u16, &[u8])]) -> Vec<u8> {
    let mut header = EifHeader::new(0);
    header.version = version;
    header.num_sections = u16::try_from(sections.len()).expect("at most 32 sections");
    let mut body = Vec::new();
    for (i, (t, data)) in sections.iter().enumerate() {
        header.section_offsets[i] = (HEADER_SIZE + body.len()) as u64;
        header.section_sizes[i] = data.len() as u64;
        let sh = SectionHeader {
            section_type: *t,
            flags: 0,
            size: data.len() as u64,
        };
        body.extend_from_slice(&sh.to_bytes());
        body.extend_from_slice(data);
    }
    let mut out = header.to_bytes().to_vec();
    out.extend_from_slice(&body);
    fix_crc(&mut out);
    out
}

fn fix_crc(image: &mut [u8]) {
    let mut h = crc32fast::Hasher::new();
    h.update(&image[..CRC_OFFSET]);
    h.update(&image[HEADER_SIZE..]);
    let crc = h.finalize();
    image[CRC_OFFSET..HEADER_SIZE].copy_from_slice(&crc.to_be_bytes());
}

fn open(bytes: Vec<u8>) -> Result<EifReader<Cursor<Vec<u8>>>, EifError> {
    EifReader::new(Cursor::new(bytes))
}

fn set_u64(image: &mut [u8], at: usize, v: u64) {
    image[at..at + 8].copy_from_slice(&v.to_be_bytes());
}

const OFFSETS: usize = 28;
const SIZES: usize = 28 + 256;

#[test]
fn every_truncation_is_reported_as_truncated() {
    let image = small();
    assert!(open(image.clone()).is_ok());
    for len in 0..image.len() {
        match open(image[..len].to_vec()) {
            Err(EifError::Truncated { .. }) => {}
            other => panic!("length {len}: {other:?}"),
        }
    }
}

#[test]
fn bad_magic_and_versions() {
    let mut image = small();
    image[0] = b'E';
    assert!(matches!(open(image), Err(EifError::BadMagic { .. })));
    let mut image = small();
    image[5] = 9;
    assert!(matches!(
        open(image),
        Err(EifError::UnsupportedVersion { version: 9 })
    ));
}

#[test]
fn bad_crc_is_detected_but_the_image_still_reads() {
    let mut image = small();
    let last = image.len() - 1;
    image[last] ^= 0x55;
    let mut r = open(image).unwrap();
    let crc = r.check_crc().unwrap();
    assert!(!crc.ok());
    assert!(matches!(
        crc.into_result(),
        Err(EifError::CrcMismatch { .. })
    ));
    let i = r.inspect().unwrap();
    let (d, notes) = i.describe();
    assert!(!d.check_crc);
    assert_eq!(d.image_name.as_deref(), Some("k"));
    assert!(notes.iter().any(|n| n.contains("CRC")));

    let mut image = small();
    image[CRC_OFFSET] ^= 1;
    assert!(!open(image).unwrap().check_crc().unwrap().ok());
}

#[test]
fn more_than_32_sections() {
    let mut image = small();
    image[26..28].copy_from_slice(&33u16.to_be_bytes());
    assert!(matches!(
        open(image),
        Err(EifError::TooManySections { count: 33, max: 32 })
    ));
}

#[test]
fn offsets_and_sizes_out_of_bounds_or_overflowing() {
    let base = small();
    // Size so large that offset + 12 + size overflows.
    let mut image = base.clone();
    set_u64(&mut image, SIZES + 8 * 4, u64::MAX - 3);
    assert!(matches!(
        open(image),
        Err(EifError::SectionOutOfBounds { index: 4, .. })
    ));
    // Offset near u64::MAX.
    let mut image = base.clone();
    set_u64(&mut image, OFFSETS + 8 * 2, u64::MAX - 4);
    assert!(matches!(
        open(image),
        Err(EifError::SectionOutOfBounds { index: 2, .. })
    ));
    // Offset pointing into the header.
    let mut image = base.clone();
    set_u64(&mut image, OFFSETS, 100);
    assert!(matches!(
        open(image),
        Err(EifError::SectionOutOfBounds { index: 0, .. })
    ));
    // Offset past the end of the file.
    let mut image = base.clone();
    set_u64(&mut image, OFFSETS + 8 * 4, 1 << 40);
    assert!(matches!(
        open(image),
        Err(EifError::BadLayout { index: 4, .. })
    ));
    // Last section's size (table and section header) past the end.
    let mut image = base.clone();
    let r = open(base.clone()).unwrap();
    let last = r.sections()[4];
    set_u64(&mut image, SIZES + 8 * 4, last.size + 1);
    set_u64(
        &mut image,
        usize::try_from(last.offset).unwrap() + 4,
        last.size + 1,
    );
    assert!(matches!(open(image), Err(EifError::Truncated { .. })));
    // Table and section header disagree.
    let mut image = base.clone();
    set_u64(&mut image, SIZES + 8 * 4, last.size - 1);
    assert!(matches!(
        open(image),
        Err(EifError::SectionSizeMismatch { index: 4, .. })
    ));
    // Trailing bytes.
    let mut image = base;
    image.extend_from_slice(b"extra");
    assert!(matches!(
        open(image),
        Err(EifError::TrailingData { extra: 5, .. })
    ));
}

#[test]
fn unknown_section_types_and_types_the_version_lacks() {
    for t in [0u16, 6, 0xffff] {
        let image = assemble(4, &[(1, b"k"), (2, b"c"), (t, b"x"), (3, b"r")]);
        assert!(matches!(
            open(image),
            Err(EifError::UnknownSectionType { index: 2, section_type, .. }) if section_type == t
        ));
    }
    let image = assemble(3, &[(1, b"k"), (2, b"c"), (5, b"{}"), (3, b"r")]);
    assert!(matches!(
        open(image),
        Err(EifError::UnknownSectionType { version: 3, .. })
    ));
    let image = assemble(2, &[(1, b"k"), (2, b"c"), (3, b"r"), (4, b"s")]);
    assert!(matches!(
        open(image),
        Err(EifError::UnknownSectionType { version: 2, .. })
    ));
}

#[test]
fn section_order_and_multiplicity() {
    let image = assemble(4, &[(3, b"r"), (1, b"k"), (2, b"c")]);
    assert!(matches!(
        open(image),
        Err(EifError::RamdiskBeforeKernel { index: 0 })
    ));
    let image = assemble(4, &[(1, b"k"), (1, b"k"), (2, b"c"), (3, b"r")]);
    assert!(matches!(
        open(image),
        Err(EifError::DuplicateSection {
            kind: "kernel",
            index: 1
        })
    ));
    let image = assemble(4, &[(1, b"k"), (2, b"c")]);
    assert!(matches!(
        open(image),
        Err(EifError::MissingSection { kind: "ramdisk" })
    ));
    let image = assemble(4, &[(1, b"k"), (3, b"r")]);
    assert!(matches!(
        open(image),
        Err(EifError::MissingSection { kind: "cmdline" })
    ));
    let image = assemble(4, &[]);
    assert!(matches!(
        open(image),
        Err(EifError::MissingSection { kind: "kernel" })
    ));
}

#[test]
fn oversized_small_sections_are_refused_before_reading_them() {
    let big = vec![0u8; usize::try_from(MAX_SIGNATURE_SIZE).unwrap() + 1];
    let image = assemble(4, &[(1, b"k"), (2, b"c"), (3, b"r"), (4, &big)]);
    assert!(matches!(
        open(image),
        Err(EifError::SectionTooLarge {
            kind: "signature",
            ..
        })
    ));
    // A huge declared metadata size is refused from the table alone (the file is not that big,
    // so nothing is allocated for it).
    let mut image = assemble(4, &[(1, b"k"), (2, b"c"), (5, b"{}"), (3, b"r")]);
    let meta_at = HEADER_SIZE + 2 * SECTION_HEADER_SIZE + 2;
    set_u64(&mut image, SIZES + 16, 1 << 40);
    set_u64(&mut image, meta_at + 4, 1 << 40);
    assert!(matches!(
        open(image),
        Err(EifError::BadLayout { .. }) | Err(EifError::Truncated { .. })
    ));
}

#[test]
fn bad_cmdline_and_metadata_are_errors_of_their_own() {
    let image = assemble(4, &[(1, b"k"), (2, b"a\0b"), (5, b"not json"), (3, b"r")]);
    let mut r = open(image).unwrap();
    assert!(matches!(r.cmdline(), Err(EifError::InvalidCmdline { .. })));
    assert!(matches!(r.metadata(), Err(EifError::InvalidMetadata(_))));
    // describe still reports the rest.
    let (d, notes) = r.inspect().unwrap().describe();
    assert!(d.check_crc);
    assert!(d.metadata.is_none());
    assert!(notes.iter().any(|n| n.contains("metadata")));
}

fn signed_parts() -> (Vec<u8>, usize) {
    let image = read("signed.eif");
    (image, 109_230)
}

#[test]
fn a_signature_for_another_pcr0_is_refused() {
    let (mut image, _) = signed_parts();
    image[80_000] ^= 1; // inside ramdisk1: changes PCR0
    fix_crc(&mut image);
    let mut r = open(image).unwrap();
    assert!(r.check_crc().unwrap().ok());
    assert!(matches!(
        r.verify_signature(),
        Err(EifError::SignaturePcrMismatch { .. })
    ));
    let (d, _) = r.inspect().unwrap().describe();
    assert_eq!(d.signature_check, Some(false));
    assert!(d.signing_certificate.is_some());
}

#[test]
fn a_forged_signature_is_refused() {
    let (image, sig_offset) = signed_parts();
    let section = &image[sig_offset + SECTION_HEADER_SIZE..];
    let parsed = EifSignature::parse(section).unwrap();
    let mut cose = parsed.cose_sign1.clone();
    let last = cose.len() - 1;
    cose[last] ^= 1;
    let forged = encode_signature_section(parsed.certificate.pem(), &cose).unwrap();
    let mut image = image[..sig_offset].to_vec();
    image.extend_from_slice(
        &SectionHeader {
            section_type: 4,
            flags: 0,
            size: forged.len() as u64,
        }
        .to_bytes(),
    );
    image.extend_from_slice(&forged);
    set_u64(&mut image, SIZES + 8 * 5, forged.len() as u64);
    fix_crc(&mut image);
    let mut r = open(image).unwrap();
    assert!(matches!(r.verify_signature(), Err(EifError::BadSignature)));
}

#[test]
fn malformed_signature_sections_and_certificates() {
    for bad in [
        &b"\xff\xff"[..],
        b"\x80",
        b"\xa0",
        b"\x81\xa0",
        b"\x81\xa1\x69signature\x41\x00",
    ] {
        assert!(
            matches!(
                EifSignature::parse(bad),
                Err(EifError::MalformedSignature { .. })
            ),
            "{bad:?}"
        );
    }
    let section = encode_signature_section(
        b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        b"x",
    )
    .unwrap();
    assert!(matches!(
        EifSignature::parse(&section),
        Err(EifError::InvalidCertificate { .. })
    ));
    // An image whose signature section is garbage is still described.
    let image = assemble(4, &[(1, b"k"), (2, b"c"), (3, b"r"), (4, b"\x01\x02")]);
    let mut r = open(image).unwrap();
    assert!(matches!(
        r.verify_signature(),
        Err(EifError::MalformedSignature { .. })
    ));
    let (d, _) = r.inspect().unwrap().describe();
    assert!(d.is_signed);
    assert_eq!(d.signature_check, Some(false));
    assert!(d.measurements.pcr8.is_none());
}

#[test]
fn signer_refuses_a_key_of_another_certificate() {
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{EcdsaKeyPair, ECDSA_P384_SHA384_FIXED_SIGNING};
    let pkcs8 =
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, &SystemRandom::new())
            .unwrap();
    let pem =
        der::pem::encode_string("PRIVATE KEY", der::pem::LineEnding::LF, pkcs8.as_ref()).unwrap();
    assert!(matches!(
        EifSigner::from_pem(&read("cert.pem"), pem.as_bytes()),
        Err(EifError::KeyCertificateMismatch)
    ));
    assert!(matches!(
        EifSigner::from_pem(&read("cert.pem"), b"nothing"),
        Err(EifError::InvalidPrivateKey { .. })
    ));
    // The real key in PKCS#8 form works too, and its Debug output hides it.
    let signer = EifSigner::from_pem(&read("cert.pem"), &read("key.pem")).unwrap();
    assert!(format!("{signer:?}").contains("<redacted>"));
}

#[test]
fn older_versions_are_readable_and_measure_the_same() {
    let k = vec![9u8; 64];
    let v2 = assemble(2, &[(1, &k), (2, b"c"), (3, b"r0"), (3, b"r1")]);
    let mut r = open(v2).unwrap();
    assert_eq!(r.version(), 2);
    assert!(r.check_crc().unwrap().ok());
    let m = r.measure().unwrap();
    let mut out = Cursor::new(Vec::new());
    let built = EifBuilder::new()
        .kernel_bytes(k)
        .cmdline("c")
        .ramdisk_bytes(b"r0".to_vec())
        .ramdisk_bytes(b"r1".to_vec())
        .write_to(&mut out)
        .unwrap();
    assert_eq!(m, built);
    assert!(r.metadata().unwrap().is_none());
}

#[test]
fn builder_refuses_bad_inputs() {
    let b = || EifBuilder::new().kernel_bytes(vec![1]).cmdline("c");
    let mut out = Cursor::new(Vec::new());
    assert!(matches!(
        b().write_to(&mut out),
        Err(EifError::MissingSection { kind: "ramdisk" })
    ));
    assert!(matches!(
        EifBuilder::new()
            .kernel_bytes(vec![1])
            .cmdline("a\0")
            .ramdisk_bytes(vec![1])
            .write_to(&mut out),
        Err(EifError::InvalidCmdline { .. })
    ));
    let mut many = b();
    for _ in 0..30 {
        many = many.ramdisk_bytes(vec![1]);
    }
    assert!(matches!(
        many.write_to(&mut out),
        Err(EifError::TooManySections { count: 33, .. })
    ));
    assert!(matches!(
        EifBuilder::new()
            .cmdline("c")
            .ramdisk_bytes(vec![1])
            .write_to(&mut out),
        Err(EifError::InvalidInput { .. })
    ));
}
