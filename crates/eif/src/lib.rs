//! Enclave Image Format (EIF): read, validate, write, measure and sign the images AWS Nitro
//! Enclaves boot, byte-compatible with AWS's tools.
//!
//! - [`format`]: the on-disk header and section structures and the size limits.
//! - [`reader`]: [`EifReader`] validates an image on open and streams it to compute the CRC and
//!   PCRs in one pass ([`EifReader::measure`], [`EifReader::inspect`]).
//! - [`builder`]: [`EifBuilder`] writes an image from a kernel, a command line and ramdisks.
//! - [`signature`]: the COSE_Sign1 signature section: [`EifSigner`] and verification.
//! - [`sign`]: signing an existing image in place.
//! - [`external`]: signing with a key held elsewhere (a KMS key) through [`ExternalSigner`].
//! - [`measure`]: PCR values ([`Measurements`], [`Pcr`]) and streaming measurement.
//! - [`metadata`]: the metadata section's JSON document.
//! - [`describe`]: nitro-cli's `describe-eif` output.
//!
//! No `unsafe`; every length from a file is checked before use, reads of the small sections are
//! capped by the constants in [`format`], and no allocation is sized by an untrusted number.
#![forbid(unsafe_code)]

pub mod algorithm;
pub mod builder;
pub mod describe;
pub mod error;
pub mod external;
pub mod format;
pub mod measure;
pub mod metadata;
pub mod reader;
pub mod sign;
pub mod signature;

pub use builder::{EifBuilder, Input};
pub use describe::DescribeEif;
pub use error::{EifError, Result};
pub use external::{ecdsa_der_to_fixed, ExternalSigner};
pub use format::{EifHeader, Section, SectionKind};
pub use measure::{pcr_hex, pcr_of, pcr_of_reader, BuildOutput, Measurements, Pcr, PcrHasher};
pub use metadata::{BuildMetadata, Metadata};
pub use reader::{CrcCheck, EifReader, Inspection, SignatureStatus};
pub use sign::{sign_file_in_place, sign_path_in_place};
pub use signature::{
    CertificateInfo, CoseAlgorithm, EifSignature, EifSigner, SigningCertificate, VerifiedSignature,
};

use std::io::Read;
use std::path::Path;

/// Reads a whole file of at most `limit` bytes (for PEM files, metadata JSON and the like).
pub fn read_capped(path: &Path, limit: u64, context: &'static str) -> Result<Vec<u8>> {
    let file = std::fs::File::open(path).map_err(EifError::io(context))?;
    let mut data = Vec::new();
    file.take(limit.saturating_add(1))
        .read_to_end(&mut data)
        .map_err(EifError::io(context))?;
    if data.len() as u64 > limit {
        return Err(EifError::InvalidInput {
            reason: format!("{} is larger than {limit} bytes", path.display()),
        });
    }
    Ok(data)
}

/// PCR8 of a PEM certificate file (what `pcr --signing-certificate` prints).
pub fn certificate_pcr(pem: &[u8]) -> Result<Pcr> {
    Ok(SigningCertificate::from_pem(pem)?.pcr8())
}
