//! Enclave images (E1xx): `build-enclave`, `describe-eif`, `sign-eif` and `pcr`, with nitro-cli's
//! flags and JSON output. The work is done by `cloister-eif`; handlers here parse arguments,
//! read small input files, print JSON and map each [`EifError`] to its stable code.

use crate::errors::{print_json, CliError, CliResult, ErrorInfo, ExitKind};
use crate::kms_signer;
use clap::{Args, Subcommand};
use cloister_eif::{
    measure::pcr_hex, metadata::now_rfc3339, sign_path_in_place, BuildOutput, EifBuilder, EifError,
    EifReader, EifSigner, Measurements, Metadata,
};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Largest `--metadata` JSON file accepted.
pub const MAX_CUSTOM_METADATA_FILE: u64 = 1024 * 1024;

/// Subcommands of this area.
#[derive(Debug, Subcommand)]
pub enum EifCommand {
    /// Build an enclave image file (EIF) from a kernel, a command line and ramdisks.
    BuildEnclave(Box<BuildEnclaveArgs>),
    /// Describe an enclave image: version, PCRs, CRC and signature checks, metadata.
    DescribeEif(DescribeEifArgs),
    /// Sign an enclave image (in place, or into --output-file).
    SignEif(SignEifArgs),
    /// Compute a PCR value of a file, or PCR8 of a signing certificate.
    Pcr(PcrArgs),
}

/// Raw image inputs, as AWS's `eif_build` takes them. Optional at the parser level so that
/// other input kinds can join this verb; [`build_enclave`] checks that they are complete.
#[derive(Debug, Clone, Default, Args)]
#[group(id = "raw_inputs", multiple = true, required = false)]
pub struct RawInputs {
    /// Kernel image (bzImage or Image).
    #[arg(long, value_name = "FILE")]
    pub kernel: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, value_name = "STRING")]
    pub cmdline: Option<String>,
    /// Ramdisk (cpio, optionally gzip-compressed); repeat in boot order. The first is the
    /// bootstrap ramdisk (PCR1), the rest are customer ramdisks (PCR2).
    #[arg(long = "ramdisk", value_name = "FILE")]
    pub ramdisks: Vec<PathBuf>,
}

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

/// `build-enclave` arguments.
#[derive(Debug, Clone, Args)]
pub struct BuildEnclaveArgs {
    /// Raw inputs.
    #[command(flatten)]
    pub raw: RawInputs,
    /// Container-image inputs (see `commands::image`).
    #[command(flatten)]
    pub container: crate::commands::image::ContainerInputs,
    /// Output options.
    #[command(flatten)]
    pub output: OutputOptions,
}

/// `describe-eif` arguments.
#[derive(Debug, Clone, Args)]
pub struct DescribeEifArgs {
    /// The image to describe.
    #[arg(long, value_name = "FILE")]
    pub eif_path: PathBuf,
}

/// `sign-eif` arguments.
#[derive(Debug, Clone, Args)]
pub struct SignEifArgs {
    /// The image to sign.
    #[arg(long, value_name = "FILE")]
    pub eif_path: PathBuf,
    /// PEM certificate to sign with.
    #[arg(long, value_name = "FILE")]
    pub signing_certificate: PathBuf,
    /// PEM private key (ECDSA) of the certificate, or a KMS key ARN to sign through KMS.
    #[arg(long, value_name = "FILE|KMS_ARN")]
    pub private_key: PathBuf,
    /// Write the signed image here instead of signing in place.
    #[arg(long, value_name = "FILE")]
    pub output_file: Option<PathBuf>,
}

/// `pcr` arguments.
#[derive(Debug, Clone, Args)]
#[group(id = "pcr_source", required = true, multiple = false)]
pub struct PcrArgs {
    /// File to measure as one PCR (prints `{"PCR": ...}`).
    #[arg(long, value_name = "FILE", group = "pcr_source")]
    pub input: Option<PathBuf>,
    /// PEM certificate to measure as PCR8 (prints `{"PCR8": ...}`).
    #[arg(long, value_name = "FILE", group = "pcr_source")]
    pub signing_certificate: Option<PathBuf>,
}

/// Error codes of this area.
pub const CODES: &[ErrorInfo] = &[
    ErrorInfo {
        code: "E101",
        exit: ExitKind::System,
        summary: "Image I/O failed",
        explanation: "Reading or writing an image or one of its input files failed. The \
                      message names the operation and the operating system's reason (missing \
                      file, permissions, full disk).",
    },
    ErrorInfo {
        code: "E102",
        exit: ExitKind::InvalidInput,
        summary: "Image is truncated",
        explanation: "The file ends before the header or a section the header describes. The \
                      image was cut short (interrupted copy or download); rebuild or copy it \
                      again.",
    },
    ErrorInfo {
        code: "E103",
        exit: ExitKind::InvalidInput,
        summary: "Not an enclave image",
        explanation: "The file does not start with the EIF magic `.eif`. Check that the path \
                      names an enclave image file.",
    },
    ErrorInfo {
        code: "E104",
        exit: ExitKind::InvalidInput,
        summary: "Unsupported image version",
        explanation: "The header names an EIF version other than 2, 3 or 4. Rebuild the image \
                      with a current builder.",
    },
    ErrorInfo {
        code: "E105",
        exit: ExitKind::InvalidInput,
        summary: "Too many sections",
        explanation: "An image holds at most 32 sections (kernel, cmdline, metadata, \
                      ramdisks, signature). The header claims more, or the build was given \
                      too many ramdisks.",
    },
    ErrorInfo {
        code: "E106",
        exit: ExitKind::InvalidInput,
        summary: "Section out of bounds",
        explanation: "A section's offset points into the header or its offset plus size \
                      overflows. The image is corrupt or crafted.",
    },
    ErrorInfo {
        code: "E107",
        exit: ExitKind::InvalidInput,
        summary: "Bad section layout",
        explanation: "Sections must follow each other directly after the 548-byte header, in \
                      table order. A gap or overlap means a corrupt or crafted image.",
    },
    ErrorInfo {
        code: "E108",
        exit: ExitKind::InvalidInput,
        summary: "Trailing data after the last section",
        explanation: "The file continues after the last section the header describes. Images \
                      are not allowed to carry unmeasured extra bytes.",
    },
    ErrorInfo {
        code: "E109",
        exit: ExitKind::InvalidInput,
        summary: "Unknown section type",
        explanation: "A section has a type outside 1-5, or a type the image's version does not \
                      define (signature needs version 3, metadata version 4).",
    },
    ErrorInfo {
        code: "E110",
        exit: ExitKind::InvalidInput,
        summary: "Section size mismatch",
        explanation: "A section's own 12-byte header and the file header's section table \
                      disagree on its size.",
    },
    ErrorInfo {
        code: "E111",
        exit: ExitKind::InvalidInput,
        summary: "Section too large",
        explanation: "The cmdline (64 KiB), metadata (4 MiB) or signature (32 KiB) section \
                      exceeds its limit.",
    },
    ErrorInfo {
        code: "E112",
        exit: ExitKind::InvalidInput,
        summary: "Missing section",
        explanation: "An image needs a kernel, a cmdline and at least one ramdisk.",
    },
    ErrorInfo {
        code: "E113",
        exit: ExitKind::InvalidInput,
        summary: "Duplicate section",
        explanation: "The kernel, cmdline, metadata and signature sections may each appear \
                      only once.",
    },
    ErrorInfo {
        code: "E114",
        exit: ExitKind::InvalidInput,
        summary: "Ramdisk before kernel",
        explanation: "Ramdisk sections must come after the kernel section.",
    },
    ErrorInfo {
        code: "E115",
        exit: ExitKind::InvalidInput,
        summary: "Invalid kernel command line",
        explanation: "The command line contains a NUL byte or is not UTF-8.",
    },
    ErrorInfo {
        code: "E116",
        exit: ExitKind::InvalidInput,
        summary: "Invalid metadata",
        explanation: "The image's metadata section, or the --metadata file, is not the JSON \
                      document expected.",
    },
    ErrorInfo {
        code: "E117",
        exit: ExitKind::VerificationFailed,
        summary: "CRC mismatch",
        explanation: "The CRC-32 in the header does not match the image's contents: the image \
                      was modified or damaged after it was built. Rebuild it or copy it again.",
    },
    ErrorInfo {
        code: "E118",
        exit: ExitKind::VerificationFailed,
        summary: "Image is not signed",
        explanation: "A signature was required but the image has no signature section. Sign \
                      it with `cloister sign-eif`.",
    },
    ErrorInfo {
        code: "E119",
        exit: ExitKind::InvalidInput,
        summary: "Malformed signature section",
        explanation: "The signature section is not the CBOR array of {signing_certificate, \
                      signature} entries with a COSE_Sign1 that the format defines.",
    },
    ErrorInfo {
        code: "E120",
        exit: ExitKind::InvalidInput,
        summary: "Invalid signing certificate",
        explanation: "The signing certificate is not a PEM X.509 certificate with an EC \
                      public key on a named curve.",
    },
    ErrorInfo {
        code: "E121",
        exit: ExitKind::InvalidInput,
        summary: "Unsupported algorithm",
        explanation: "Only ECDSA with P-256 (ES256), P-384 (ES384) or P-521 (ES512) is \
                      supported, and the COSE algorithm must match the certificate's curve.",
    },
    ErrorInfo {
        code: "E122",
        exit: ExitKind::VerificationFailed,
        summary: "Bad signature",
        explanation: "The image's COSE signature does not verify with the signing \
                      certificate's public key: it was altered or made with another key.",
    },
    ErrorInfo {
        code: "E123",
        exit: ExitKind::VerificationFailed,
        summary: "Signature is for another image",
        explanation: "The signature is valid but signs a PCR0 other than the image's: the \
                      kernel, cmdline or ramdisks changed after signing. Sign the image again.",
    },
    ErrorInfo {
        code: "E124",
        exit: ExitKind::InvalidInput,
        summary: "Invalid private key",
        explanation: "The private key is not a PEM EC PRIVATE KEY or PKCS#8 PRIVATE KEY on the \
                      certificate's curve.",
    },
    ErrorInfo {
        code: "E125",
        exit: ExitKind::InvalidInput,
        summary: "Key does not match certificate",
        explanation: "The private key's public key differs from the one in the signing \
                      certificate. Pass the key the certificate was issued for.",
    },
    ErrorInfo {
        code: "E126",
        exit: ExitKind::InvalidInput,
        summary: "Signature section too large",
        explanation: "The signature section would exceed 32 KiB; the certificate is too large.",
    },
    ErrorInfo {
        code: "E127",
        exit: ExitKind::InvalidInput,
        summary: "Cannot re-sign in place",
        explanation: "The image's signature section is not its last section, so it cannot be \
                      replaced in place. Rebuild the image.",
    },
    ErrorInfo {
        code: "E128",
        exit: ExitKind::InvalidInput,
        summary: "Invalid build input",
        explanation: "The inputs cannot form an image (no kernel, no command line, a \
                      section that does not exist). The message says which.",
    },
    ErrorInfo {
        code: "E129",
        exit: ExitKind::Internal,
        summary: "Cryptographic operation failed",
        explanation: "A hash, signature or encoding operation failed unexpectedly, or the \
                      hashing thread stopped. Please report it.",
    },
    ErrorInfo {
        code: "E130",
        exit: ExitKind::Usage,
        summary: "Missing build inputs",
        explanation: "build-enclave needs --kernel, --cmdline and at least one --ramdisk.",
    },
    ErrorInfo {
        code: "E131",
        exit: ExitKind::Unavailable,
        summary: "Signing with the KMS key failed",
        explanation: "--private-key named a KMS key (arn:aws:kms:REGION:ACCOUNT:key/ID or an \
                      alias ARN) and the key service could not sign: no credentials \
                      (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, with AWS_SESSION_TOKEN for \
                      temporary ones, or the default profile of ~/.aws/credentials), an \
                      endpoint that cannot be reached (AWS_ENDPOINT_URL_KMS, AWS_ENDPOINT_URL, \
                      else kms.REGION.amazonaws.com), a refusal (unknown or disabled key, access \
                      denied: the message quotes the service), or a key that is not an \
                      ECC_NIST_P384 (or P256, P521) SIGN_VERIFY key. No image is written.",
    },
    ErrorInfo {
        code: "E132",
        exit: ExitKind::InvalidInput,
        summary: "Certificate does not match the KMS key",
        explanation: "The signing certificate's public key is not the KMS key's (GetPublicKey). \
                      Issue the certificate for that key, or name the key the certificate was \
                      issued for. No image is written.",
    },
];

/// The code of each library error.
pub fn code_of(e: &EifError) -> &'static str {
    match e {
        EifError::Io { .. } => "E101",
        EifError::Truncated { .. } => "E102",
        EifError::BadMagic { .. } => "E103",
        EifError::UnsupportedVersion { .. } => "E104",
        EifError::TooManySections { .. } => "E105",
        EifError::SectionOutOfBounds { .. } => "E106",
        EifError::BadLayout { .. } => "E107",
        EifError::TrailingData { .. } => "E108",
        EifError::UnknownSectionType { .. } => "E109",
        EifError::SectionSizeMismatch { .. } => "E110",
        EifError::SectionTooLarge { .. } => "E111",
        EifError::MissingSection { .. } => "E112",
        EifError::DuplicateSection { .. } => "E113",
        EifError::RamdiskBeforeKernel { .. } => "E114",
        EifError::InvalidCmdline { .. } => "E115",
        EifError::InvalidMetadata(_) => "E116",
        EifError::CrcMismatch { .. } => "E117",
        EifError::NotSigned => "E118",
        EifError::MalformedSignature { .. } => "E119",
        EifError::InvalidCertificate { .. } => "E120",
        EifError::UnsupportedAlgorithm { .. } => "E121",
        EifError::BadSignature => "E122",
        EifError::SignaturePcrMismatch { .. } => "E123",
        EifError::InvalidPrivateKey { .. } => "E124",
        EifError::KeyCertificateMismatch => "E125",
        EifError::ExternalSigner { .. } => "E131",
        EifError::ExternalKeyMismatch { .. } => "E132",
        EifError::SignatureTooLarge { .. } => "E126",
        EifError::SignatureNotLast { .. } => "E127",
        EifError::InvalidInput { .. } => "E128",
        EifError::Crypto { .. } | EifError::Internal => "E129",
    }
}

/// Converts a library error into a coded CLI error.
pub fn cli_error(e: EifError) -> CliError {
    CliError::new(code_of(&e), e)
}

/// Runs one subcommand.
pub fn run(command: EifCommand) -> CliResult<()> {
    match command {
        EifCommand::BuildEnclave(a) => build_enclave(&a),
        EifCommand::DescribeEif(a) => describe_eif(&a),
        EifCommand::SignEif(a) => sign_eif(&a),
        EifCommand::Pcr(a) => pcr(&a),
    }
}

/// `build-enclave` from raw inputs: checks they are complete, builds, prints the measurements.
pub fn build_enclave(args: &BuildEnclaveArgs) -> CliResult<()> {
    if let Some(measurements) =
        crate::commands::image::build_from_container(&args.container, &args.output)?
    {
        return print_json(&BuildOutput { measurements });
    }
    let raw = &args.raw;
    let (Some(kernel), Some(cmdline)) = (&raw.kernel, &raw.cmdline) else {
        return Err(CliError::msg(
            "E130",
            "build-enclave needs --kernel, --cmdline and at least one --ramdisk",
        ));
    };
    if raw.ramdisks.is_empty() {
        return Err(CliError::msg(
            "E130",
            "build-enclave needs at least one --ramdisk",
        ));
    }
    let measurements = build_image(kernel, cmdline, &raw.ramdisks, &args.output)?;
    print_json(&BuildOutput { measurements })
}

/// Builds an image from a kernel, a command line and ramdisk files into `output`, signing it
/// when a certificate and key are given; the building block of every `build-enclave` input.
pub fn build_image(
    kernel: &Path,
    cmdline: &str,
    ramdisks: &[PathBuf],
    output: &OutputOptions,
) -> CliResult<Measurements> {
    let default_name = kernel
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "enclave".to_string());
    let mut metadata = Metadata::new(
        output.name.clone().unwrap_or(default_name),
        "cloister",
        env!("CARGO_PKG_VERSION"),
        output.build_time.clone().unwrap_or_else(now_rfc3339),
    );
    if let Some(version) = &output.version {
        metadata.image_version = version.clone();
    }
    if let Some(path) = &output.metadata {
        metadata.custom_metadata = read_custom_metadata(path)?;
    }
    let mut builder = EifBuilder::new()
        .kernel_path(kernel)
        .cmdline(cmdline)
        .metadata(metadata);
    for r in ramdisks {
        builder = builder.ramdisk_path(r);
    }
    if let Some(signer) = load_signer(
        output.signing_certificate.as_deref(),
        output.private_key.as_deref(),
    )? {
        builder = builder.signer(signer);
    }
    builder.write_to_path(&output.output_file).map_err(|e| {
        remove_partial_output(&output.output_file, &e);
        cli_error(e)
    })
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

fn read_custom_metadata(path: &Path) -> CliResult<serde_json::Value> {
    let bytes = cloister_eif::read_capped(
        path,
        MAX_CUSTOM_METADATA_FILE,
        "cannot read the metadata file",
    )
    .map_err(cli_error)?;
    serde_json::from_slice(&bytes).map_err(|e| {
        CliError::new(
            "E116",
            anyhow::Error::new(e).context("--metadata is not JSON"),
        )
    })
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
                let signer =
                    kms_signer::KmsSigner::from_env(arn).map_err(|e| CliError::new("E131", e))?;
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
            "E003",
            "--signing-certificate and --private-key go together",
        )),
    }
}

/// `describe-eif`: prints nitro-cli's JSON; what cannot be reported is noted on stderr.
pub fn describe_eif(args: &DescribeEifArgs) -> CliResult<()> {
    let mut reader = EifReader::open(&args.eif_path).map_err(cli_error)?;
    let inspection = reader.inspect().map_err(cli_error)?;
    let (describe, notes) = inspection.describe();
    for note in notes {
        eprintln!("warning: {note}");
    }
    print_json(&describe)
}

/// `sign-eif`: signs in place, or copies to `--output-file` and signs the copy.
pub fn sign_eif(args: &SignEifArgs) -> CliResult<()> {
    let signer = load_signer(Some(&args.signing_certificate), Some(&args.private_key))?
        .ok_or_else(|| CliError::msg("E099", "no signer"))?;
    let target = match &args.output_file {
        Some(out) => {
            // Validate before copying so a bad input leaves no output behind.
            EifReader::open(&args.eif_path).map_err(cli_error)?;
            std::fs::copy(&args.eif_path, out).map_err(|e| {
                cli_error(EifError::Io {
                    context: "cannot copy the image to the output file",
                    source: e,
                })
            })?;
            out
        }
        None => &args.eif_path,
    };
    let measurements = sign_path_in_place(target, &signer).map_err(|e| {
        // A copy that could not be signed is not left behind as if it were the output.
        if let Some(out) = &args.output_file {
            let _ = std::fs::remove_file(out);
        }
        cli_error(e)
    })?;
    print_json(&BuildOutput { measurements })
}

/// `pcr`: `{"PCR": hex}` for a file measured as one PCR, `{"PCR8": hex}` for a certificate.
pub fn pcr(args: &PcrArgs) -> CliResult<()> {
    let mut out = BTreeMap::new();
    if let Some(input) = &args.input {
        let file = std::fs::File::open(input).map_err(|e| {
            cli_error(EifError::Io {
                context: "cannot open the input file",
                source: e,
            })
        })?;
        let value = cloister_eif::pcr_of_reader(file).map_err(|e| {
            cli_error(EifError::Io {
                context: "cannot read the input file",
                source: e,
            })
        })?;
        out.insert("PCR", pcr_hex(&value));
    } else if let Some(cert) = &args.signing_certificate {
        let pem = cloister_eif::read_capped(
            cert,
            cloister_eif::signature::MAX_PEM_SIZE,
            "cannot read the signing certificate",
        )
        .map_err(cli_error)?;
        let value = cloister_eif::certificate_pcr(&pem).map_err(cli_error)?;
        out.insert("PCR8", pcr_hex(&value));
    } else {
        return Err(CliError::msg(
            "E003",
            "pass --input or --signing-certificate",
        ));
    }
    print_json(&out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Cli;
    use clap::Parser;

    #[test]
    fn every_code_of_a_library_error_is_in_the_table() {
        let samples = [
            EifError::NotSigned,
            EifError::BadSignature,
            EifError::Internal,
            EifError::KeyCertificateMismatch,
        ];
        for e in samples {
            let code = code_of(&e);
            assert!(CODES.iter().any(|i| i.code == code), "{code}");
        }
        for info in CODES {
            assert!(info.code.starts_with("E1"), "{}", info.code);
        }
    }

    #[test]
    fn raw_inputs_are_optional_for_the_parser_and_checked_by_the_handler() {
        let cli =
            Cli::try_parse_from(["cloister", "build-enclave", "--output-file", "x.eif"]).unwrap();
        let crate::Command::Eif(EifCommand::BuildEnclave(args)) = cli.command else {
            panic!("wrong command");
        };
        let err = build_enclave(&args).unwrap_err();
        assert_eq!(err.code, "E130");
    }

    #[test]
    fn signing_flags_require_each_other_and_pcr_takes_one_source() {
        assert!(Cli::try_parse_from([
            "cloister",
            "build-enclave",
            "--output-file",
            "x",
            "--signing-certificate",
            "c"
        ])
        .is_err());
        assert!(Cli::try_parse_from(["cloister", "pcr"]).is_err());
        assert!(Cli::try_parse_from([
            "cloister",
            "pcr",
            "--input",
            "a",
            "--signing-certificate",
            "b"
        ])
        .is_err());
        assert!(Cli::try_parse_from(["cloister", "pcr", "--input", "a"]).is_ok());
    }
}
