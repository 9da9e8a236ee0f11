//! The lower half of the image verbs: where and how an image is written (the output flags and
//! the signer), and the code of each library error. `build-enclave` ([`super`]) and the
//! container-image inputs (`commands::image`) both use it; it uses neither.

use crate::codes::{self, Code};
use crate::errors::{CliError, CliResult};
use crate::kms_signer;
use clap::Args;
use cloister_eif::{EifError, EifSigner};
use std::path::{Path, PathBuf};

/// Where and how to write an image.
#[derive(Debug, Clone, Args)]
pub struct OutputOptions {
    /// Where to write the image.
    #[arg(long, value_name = "FILE")]
    pub output_file: PathBuf,
    /// PEM certificate to sign with (needs --private-key).
    #[arg(long, value_name = "FILE", requires = "private_key")]
    pub signing_certificate: Option<PathBuf>,
    /// PEM private key (ECDSA) of the certificate, or a KMS key ARN
    /// (arn:aws:kms:REGION:ACCOUNT:key/ID or an alias ARN) to sign through KMS (needs
    /// --signing-certificate).
    #[arg(long, value_name = "FILE|KMS_ARN", requires = "signing_certificate")]
    pub private_key: Option<PathBuf>,
    /// Image name for the metadata section (default: the kernel's file name).
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Image version for the metadata section (default: 1.0).
    #[arg(long, value_name = "VERSION")]
    pub version: Option<String>,
    /// JSON file with custom metadata to store in the image.
    #[arg(long, value_name = "FILE")]
    pub metadata: Option<PathBuf>,
    /// Build time to record (RFC 3339; default: now). Fixing it makes builds reproducible.
    #[arg(long, value_name = "TIME")]
    pub build_time: Option<String>,
}

/// The code of each library error.
pub fn code_of(e: &EifError) -> Code {
    match e {
        EifError::Io { .. } => codes::E101,
        EifError::Truncated { .. } => codes::E102,
        EifError::BadMagic { .. } => codes::E103,
        EifError::UnsupportedVersion { .. } => codes::E104,
        EifError::TooManySections { .. } => codes::E105,
        EifError::SectionOutOfBounds { .. } => codes::E106,
        EifError::BadLayout { .. } => codes::E107,
        EifError::TrailingData { .. } => codes::E108,
        EifError::UnknownSectionType { .. } => codes::E109,
        EifError::SectionSizeMismatch { .. } => codes::E110,
        EifError::SectionTooLarge { .. } => codes::E111,
        EifError::MissingSection { .. } => codes::E112,
        EifError::DuplicateSection { .. } => codes::E113,
        EifError::RamdiskBeforeKernel { .. } => codes::E114,
        EifError::InvalidCmdline { .. } => codes::E115,
        EifError::InvalidMetadata(_) => codes::E116,
        EifError::CrcMismatch { .. } => codes::E117,
        EifError::NotSigned => codes::E118,
        EifError::MalformedSignature { .. } => codes::E119,
        EifError::InvalidCertificate { .. } => codes::E120,
        EifError::UnsupportedAlgorithm { .. } => codes::E121,
        EifError::BadSignature => codes::E122,
        EifError::SignaturePcrMismatch { .. } => codes::E123,
        EifError::InvalidPrivateKey { .. } => codes::E124,
        EifError::KeyCertificateMismatch => codes::E125,
        EifError::ExternalSigner { .. } => codes::E131,
        EifError::ExternalKeyMismatch { .. } => codes::E132,
        EifError::SignatureTooLarge { .. } => codes::E126,
        EifError::SignatureNotLast { .. } => codes::E127,
        EifError::InvalidInput { .. } => codes::E128,
        EifError::Crypto { .. } | EifError::Internal => codes::E129,
    }
}

/// Converts a library error into a coded CLI error.
pub fn cli_error(e: EifError) -> CliError {
    CliError::new(code_of(&e), e)
}

/// Removes what a failed build wrote (a signer can fail after the sections are written), unless
/// the failure was creating the file, which may then be someone else's.
pub fn remove_partial_output(path: &Path, e: &EifError) {
    if !matches!(
        e,
        EifError::Io {
            context: "cannot create the image file",
            ..
        }
    ) {
        let _ = std::fs::remove_file(path);
    }
}

/// The signer of `--signing-certificate` and `--private-key`: a PEM key file, or a KMS key when
/// `key` is a KMS key ARN (see [`crate::kms_signer`]).
pub fn load_signer(cert: Option<&Path>, key: Option<&Path>) -> CliResult<Option<EifSigner>> {
    match (cert, key) {
        (Some(cert), Some(key)) => match key.to_str().and_then(kms_signer::parse_kms_arn) {
            Some(arn) => {
                let pem = cloister_eif::read_capped(
                    cert,
                    cloister_eif::signature::MAX_PEM_SIZE,
                    "cannot read the signing certificate",
                )
                .map_err(cli_error)?;
                // A bad certificate is reported before any KMS configuration is looked at.
                cloister_eif::SigningCertificate::from_pem(&pem).map_err(cli_error)?;
                let signer = kms_signer::KmsSigner::from_env(arn)
                    .map_err(|e| CliError::new(codes::E131, e))?;
                EifSigner::external(&pem, Box::new(signer))
                    .map(Some)
                    .map_err(cli_error)
            }
            None => EifSigner::from_files(cert, key)
                .map(Some)
                .map_err(cli_error),
        },
        (None, None) => Ok(None),
        _ => Err(CliError::msg(
            codes::E003,
            "--signing-certificate and --private-key go together",
        )),
    }
}
