//! Enclave images (E1xx): `build-enclave`, `describe-eif`, `sign-eif` and `pcr`, with nitro-cli's
//! flags and JSON output. The work is done by `cloister-eif`; handlers here parse arguments,
//! read small input files, print JSON and map each [`EifError`] to its stable code.

pub mod output;

pub use output::{cli_error, code_of, load_signer, remove_partial_output, OutputOptions};

use crate::codes;
use crate::errors::{print_json, CliError, CliResult};
use clap::{Args, Subcommand};
use cloister_eif::{
    measure::pcr_hex, metadata::now_rfc3339, sign_path_in_place, BuildOutput, EifBuilder, EifError,
    EifReader, Measurements, Metadata,
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

pub use crate::codes::eif::CODES;

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
            codes::E130,
            "build-enclave needs --kernel, --cmdline and at least one --ramdisk",
        ));
    };
    if raw.ramdisks.is_empty() {
        return Err(CliError::msg(
            codes::E130,
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

fn read_custom_metadata(path: &Path) -> CliResult<serde_json::Value> {
    let bytes = cloister_eif::read_capped(
        path,
        MAX_CUSTOM_METADATA_FILE,
        "cannot read the metadata file",
    )
    .map_err(cli_error)?;
    serde_json::from_slice(&bytes).map_err(|e| {
        CliError::new(
            codes::E116,
            anyhow::Error::new(e).context("--metadata is not JSON"),
        )
    })
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
        .ok_or_else(|| CliError::msg(codes::E099, "no signer"))?;
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
            codes::E003,
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
