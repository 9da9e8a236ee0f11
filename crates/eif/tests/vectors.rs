//! Compatibility with AWS's reference tools: the vectors in `tests/vectors/eif` were made by
//! `eif_build`; reading them must give its PCRs, and building from the same inputs must give
//! the same PCRs and (with the same metadata) the same bytes.

use cloister_eif::format::{HEADER_SIZE, SECTION_HEADER_SIZE};
use cloister_eif::signature::encode_signature_section;
use cloister_eif::{
    sign_path_in_place, EifBuilder, EifError, EifReader, EifSignature, EifSigner, Measurements,
    Metadata, SectionKind,
};
use std::io::Cursor;
use std::path::PathBuf;

fn vectors() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/vectors/eif")
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(vectors().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn expected(kind: &str) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_slice(&read("expected-pcrs.json")).unwrap();
    v[kind].clone()
}

fn assert_pcrs(m: &Measurements, kind: &str) {
    let e = expected(kind);
    assert_eq!(m.pcr0_hex(), e["PCR0"].as_str().unwrap(), "PCR0");
    assert_eq!(m.pcr1_hex(), e["PCR1"].as_str().unwrap(), "PCR1");
    assert_eq!(m.pcr2_hex(), e["PCR2"].as_str().unwrap(), "PCR2");
    assert_eq!(m.pcr8_hex().as_deref(), e["PCR8"].as_str(), "PCR8");
}

fn reference_metadata() -> Metadata {
    let mut m = Metadata::new("kernel.bin", "eif_build", "0.2.1", "2024-01-01T00:00:00Z");
    m.build_metadata.operating_system = "OS".into();
    m.build_metadata.kernel_version = "kernel".into();
    m
}

fn cmdline() -> String {
    String::from_utf8(read("cmdline.txt")).unwrap()
}

fn builder() -> EifBuilder<'static> {
    EifBuilder::new()
        .kernel_path(vectors().join("kernel.bin"))
        .cmdline(cmdline())
        .ramdisk_path(vectors().join("ramdisk0.bin"))
        .ramdisk_path(vectors().join("ramdisk1.bin"))
}

fn signer() -> EifSigner {
    EifSigner::from_pem(&read("cert.pem"), &read("key.pem")).unwrap()
}

#[test]
fn reads_unsigned_vector() {
    let mut r = EifReader::open(vectors().join("unsigned.eif")).unwrap();
    assert_eq!(r.version(), 4);
    let kinds: Vec<_> = r.sections().iter().map(|s| s.kind).collect();
    use SectionKind::*;
    assert_eq!(kinds, [Kernel, Cmdline, Metadata, Ramdisk, Ramdisk]);
    assert_eq!(r.ramdisks(), [3, 4]);
    assert_eq!(r.cmdline().unwrap(), cmdline());
    assert_eq!(r.metadata().unwrap().unwrap(), reference_metadata());
    assert!(r.check_crc().unwrap().ok());
    assert_pcrs(&r.measure().unwrap(), "unsigned");
    assert!(matches!(r.verify_signature(), Err(EifError::NotSigned)));
    // Streaming a ramdisk gives its bytes.
    let mut rd = Vec::new();
    std::io::copy(&mut r.section_reader(4).unwrap(), &mut rd).unwrap();
    assert_eq!(rd, read("ramdisk1.bin"));
}

#[test]
fn reads_and_verifies_signed_vector() {
    let mut r = EifReader::open(vectors().join("signed.eif")).unwrap();
    assert!(r.is_signed());
    assert!(r.check_crc().unwrap().ok());
    assert_pcrs(&r.measure().unwrap(), "signed");
    let v = r.verify_signature().unwrap();
    assert_eq!(v.pcr0(), &r.measure().unwrap().pcr0);
    let i = r.inspect().unwrap();
    let (d, notes) = i.describe();
    assert!(notes.is_empty(), "{notes:?}");
    assert!(d.is_signed && d.check_crc && d.signature_check == Some(true));
    let cert = d.signing_certificate.unwrap();
    assert_eq!(cert.algorithm, "ecdsa-with-SHA384");
    assert_eq!(cert.issuer_name["commonName"], "public-signer");
    assert_eq!(cert.issuer_name["organizationName"], "Test");
    assert_eq!(cert.not_before, "Nov 21 09:16:35 2026 GMT");
    assert_eq!(cert.not_after, "Nov 18 09:16:35 2036 GMT");
}

#[test]
fn building_from_the_same_inputs_reproduces_the_unsigned_vector_byte_for_byte() {
    let mut out = Cursor::new(Vec::new());
    let m = builder()
        .metadata(reference_metadata())
        .write_to(&mut out)
        .unwrap();
    assert_pcrs(&m, "unsigned");
    assert_eq!(out.into_inner(), read("unsigned.eif"));
}

#[test]
fn signed_build_matches_the_vector_except_for_the_ecdsa_signature() {
    let mut out = Cursor::new(Vec::new());
    let m = builder()
        .metadata(reference_metadata())
        .signer(signer())
        .write_to(&mut out)
        .unwrap();
    assert_pcrs(&m, "signed");
    let ours = out.into_inner();
    let theirs = read("signed.eif");
    // Every section before the signature is identical, and so is the section table except the
    // signature's size (ECDSA is randomized, and each signature byte is a CBOR uint of one or
    // two bytes).
    let sig_offset = 109_230;
    assert_eq!(
        ours[HEADER_SIZE..sig_offset],
        theirs[HEADER_SIZE..sig_offset]
    );
    let mut r = EifReader::new(Cursor::new(ours)).unwrap();
    let t = EifReader::open(vectors().join("signed.eif")).unwrap();
    assert_eq!(r.header().section_offsets, t.header().section_offsets);
    assert_eq!(r.header().section_sizes[..5], t.header().section_sizes[..5]);
    assert!(r.check_crc().unwrap().ok());
    r.verify_signature().unwrap();
}

#[test]
fn default_metadata_keeps_the_pcrs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.eif");
    let m = builder().write_to_path(&path).unwrap();
    assert_pcrs(&m, "unsigned");
    let mut r = EifReader::open(&path).unwrap();
    let meta = r.metadata().unwrap().unwrap();
    assert_eq!(meta.image_name, "kernel.bin");
    assert_eq!(meta.build_metadata.build_tool, "cloister");
    assert_eq!(r.measure().unwrap(), m);
}

#[test]
fn signing_an_unsigned_image_in_place_matches_a_signed_build() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("u.eif");
    std::fs::write(&path, read("unsigned.eif")).unwrap();
    let m = sign_path_in_place(&path, &signer()).unwrap();
    assert_pcrs(&m, "signed");
    let mut r = EifReader::open(&path).unwrap();
    assert!(r.check_crc().unwrap().ok());
    r.verify_signature().unwrap();
    assert_pcrs(&r.measure().unwrap(), "signed");
    // Re-signing replaces the signature section instead of adding another one.
    sign_path_in_place(&path, &signer()).unwrap();
    let mut r = EifReader::open(&path).unwrap();
    assert_eq!(r.sections().len(), 6);
    assert!(r.check_crc().unwrap().ok());
    r.verify_signature().unwrap();
}

#[test]
fn signature_section_encoding_matches_the_reference() {
    let theirs = read("signed.eif");
    let section = &theirs[109_230 + SECTION_HEADER_SIZE..];
    let parsed = EifSignature::parse(section).unwrap();
    assert_eq!(parsed.entries, 1);
    assert_eq!(parsed.certificate.pem(), read("cert.pem").as_slice());
    // Our encoder reproduces the reference section byte for byte from its parts.
    let again = encode_signature_section(parsed.certificate.pem(), &parsed.cose_sign1).unwrap();
    assert_eq!(again, section);
    // Our COSE_Sign1 has the same headers and payload; only the 96 signature bytes differ.
    let pcr0 = EifReader::open(vectors().join("signed.eif"))
        .unwrap()
        .measure()
        .unwrap()
        .pcr0;
    let ours = signer().sign_pcr0(&pcr0).unwrap();
    assert_eq!(ours.len(), parsed.cose_sign1.len());
    assert_eq!(
        ours[..ours.len() - 96],
        parsed.cose_sign1[..ours.len() - 96]
    );
    let section = signer().signature_section(&pcr0).unwrap();
    EifSignature::parse(&section)
        .unwrap()
        .verify(&pcr0)
        .unwrap();
}
