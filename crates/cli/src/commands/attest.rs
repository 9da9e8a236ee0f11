//! Attestation (E2xx): `verify-attestation` and `pki init`, and their error codes.
//!
//! `verify-attestation` runs every check of `cloister_attestation::Verifier` on a document and
//! prints a JSON summary; a failed check exits with its own code (E210-E237, exit status 4 for
//! verification failures). Without `--root` it trusts AWS's Nitro root (G1) only, so a Cloister
//! document needs `--root <operator root>`. `pki init` creates the operator root and host CA.

use crate::codes::{self, Code};
use crate::errors::{print_json, CliError, CliResult, Coded};
use clap::{Args, Subcommand};
use cloister_attestation::pki::fingerprint_sha256;
use cloister_attestation::{Pki, Verifier, VerifyOptions, AWS_NITRO_ROOT_G1};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Largest document or root file read, in bytes.
const MAX_INPUT_FILE: u64 = 64 * 1024;

/// Subcommands of this area.
#[derive(Debug, Subcommand)]
pub enum AttestCommand {
    /// Verify an attestation document (COSE_Sign1, raw or base64) and print its contents.
    VerifyAttestation(VerifyArgs),
    /// Manage the attestation PKI (operator root CA and host CA).
    Pki {
        #[command(subcommand)]
        command: PkiCommand,
    },
}

/// `cloister pki` subcommands.
#[derive(Debug, Subcommand)]
pub enum PkiCommand {
    /// Create the root CA and host CA in a directory (kept if they exist); print paths and
    /// fingerprints.
    Init {
        /// The PKI directory (created with mode 0700).
        #[arg(long)]
        dir: PathBuf,
    },
}

/// Arguments of `verify-attestation`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The document file: raw COSE_Sign1 bytes or their base64 text.
    #[arg(long)]
    pub document: PathBuf,
    /// A trusted root certificate (PEM or DER); repeatable. Default: AWS's Nitro root G1.
    #[arg(long = "root")]
    pub roots: Vec<PathBuf>,
    /// Verification time: milliseconds since the Unix epoch, or `now`.
    #[arg(long, default_value = "now")]
    pub at: String,
    /// The nonce the document must carry, hex.
    #[arg(long)]
    pub nonce: Option<String>,
    /// Maximum age of the document, in seconds.
    #[arg(long)]
    pub max_age: Option<u64>,
    /// An expected PCR value, `N=HEX`; repeatable.
    #[arg(long = "expect-pcr")]
    pub expect_pcr: Vec<String>,
}

pub use crate::codes::attest::CODES;

/// Runs one subcommand.
pub fn run(command: AttestCommand) -> CliResult<()> {
    match command {
        AttestCommand::VerifyAttestation(args) => verify(args),
        AttestCommand::Pki {
            command: PkiCommand::Init { dir },
        } => pki_init(&dir),
    }
}

/// Reads at most [`MAX_INPUT_FILE`] bytes.
fn read_small(path: &Path) -> std::io::Result<Vec<u8>> {
    let file = std::fs::File::open(path)?;
    let mut out = Vec::new();
    file.take(MAX_INPUT_FILE + 1).read_to_end(&mut out)?;
    if out.len() as u64 > MAX_INPUT_FILE {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "file larger than 64 KiB",
        ));
    }
    Ok(out)
}

/// The document bytes: raw COSE, or base64 text (a COSE_Sign1 never starts with ASCII).
fn read_document(path: &Path) -> CliResult<Vec<u8>> {
    use base64::Engine;
    let bytes = read_small(path)
        .map_err(|e| CliError::msg(codes::E201, format!("{}: {e}", path.display())))?;
    let is_text = !bytes.is_empty()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"+/=\r\n\t ".contains(b));
    if !is_text {
        return Ok(bytes);
    }
    let compact: Vec<u8> = bytes
        .into_iter()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(&compact)
        .map_err(|e| {
            CliError::msg(
                codes::E201,
                format!("{}: invalid base64: {e}", path.display()),
            )
        })
}

/// A root certificate file: PEM (first CERTIFICATE block) or DER.
fn read_root(path: &Path) -> CliResult<Vec<u8>> {
    use base64::Engine;
    let bytes = read_small(path)
        .map_err(|e| CliError::msg(codes::E202, format!("{}: {e}", path.display())))?;
    if bytes.first() == Some(&0x30) {
        return Ok(bytes);
    }
    let text = String::from_utf8(bytes).map_err(|_| {
        CliError::msg(
            codes::E202,
            format!("{}: neither PEM nor DER", path.display()),
        )
    })?;
    let begin = "-----BEGIN CERTIFICATE-----";
    let end = "-----END CERTIFICATE-----";
    let start = text.find(begin).ok_or_else(|| {
        CliError::msg(
            codes::E202,
            format!("{}: no PEM certificate", path.display()),
        )
    })?;
    let rest = &text[start + begin.len()..];
    let stop = rest.find(end).ok_or_else(|| {
        CliError::msg(codes::E202, format!("{}: unterminated PEM", path.display()))
    })?;
    let body: String = rest[..stop]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .map_err(|e| {
            CliError::msg(
                codes::E202,
                format!("{}: bad PEM base64: {e}", path.display()),
            )
        })
}

/// Parses `N=HEX`.
fn parse_expect_pcr(spec: &str) -> CliResult<(usize, Vec<u8>)> {
    let (index, value) = spec.split_once('=').ok_or_else(|| {
        CliError::msg(
            codes::E204,
            format!("--expect-pcr {spec:?}: expected N=HEX"),
        )
    })?;
    let index: usize = index
        .trim()
        .parse()
        .map_err(|_| CliError::msg(codes::E204, format!("--expect-pcr {spec:?}: bad index")))?;
    if index >= 32 {
        return Err(CliError::msg(
            codes::E204,
            format!("--expect-pcr {spec:?}: index must be below 32"),
        ));
    }
    let value = hex::decode(value.trim())
        .map_err(|e| CliError::msg(codes::E204, format!("--expect-pcr {spec:?}: {e}")))?;
    Ok((index, value))
}

/// Builds the verification options from the arguments.
fn options(args: &VerifyArgs) -> CliResult<VerifyOptions> {
    let mut opts = if args.at == "now" {
        VerifyOptions::default()
    } else {
        let ms: u64 = args.at.parse().map_err(|_| {
            CliError::msg(
                codes::E204,
                format!("--at {:?}: expected `now` or milliseconds", args.at),
            )
        })?;
        VerifyOptions::at_unix_ms(ms)
    };
    if let Some(nonce) = &args.nonce {
        opts.expected_nonce = Some(
            hex::decode(nonce).map_err(|e| CliError::msg(codes::E204, format!("--nonce: {e}")))?,
        );
    }
    opts.max_age = args.max_age.map(Duration::from_secs);
    for spec in &args.expect_pcr {
        opts.expected_pcrs.push(parse_expect_pcr(spec)?);
    }
    Ok(opts)
}

/// The JSON summary of a verified document.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct Summary {
    module_id: String,
    timestamp: u64,
    digest: &'static str,
    #[serde(rename = "PCRs")]
    pcrs: BTreeMap<usize, String>,
    user_data: Option<String>,
    nonce: Option<String>,
    public_key: Option<String>,
    debug: bool,
    isolation: Option<&'static str>,
    chain_subjects: Vec<String>,
    leaf_not_after: u64,
}

fn verify(args: VerifyArgs) -> CliResult<()> {
    let opts = options(&args)?;
    let document = read_document(&args.document)?;
    let roots = if args.roots.is_empty() {
        vec![AWS_NITRO_ROOT_G1.to_vec()]
    } else {
        args.roots
            .iter()
            .map(|p| read_root(p))
            .collect::<CliResult<Vec<_>>>()?
    };
    let verifier = Verifier::new(roots).map_err(|e| CliError::new(codes::E203, e))?;
    let verified = verifier
        .verify(&document, &opts)
        .map_err(|e| CliError::new(Code::known(e.code()), e))?;
    let summary = Summary {
        module_id: verified.module_id().to_string(),
        timestamp: verified.timestamp_ms(),
        digest: verified.document().digest.as_str(),
        pcrs: verified
            .pcrs()
            .into_iter()
            .map(|(i, v)| (i, hex::encode(v)))
            .collect(),
        user_data: verified.user_data().map(hex::encode),
        nonce: verified.nonce().map(hex::encode),
        public_key: verified.public_key().map(hex::encode),
        debug: verified.is_debug(),
        isolation: verified.isolation().map(|i| i.as_str()),
        chain_subjects: verified.chain_subjects().to_vec(),
        leaf_not_after: verified.leaf_not_after_secs(),
    };
    print_json(&summary)
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct PkiSummary {
    dir: PathBuf,
    root_certificate: PathBuf,
    root_key: PathBuf,
    root_fingerprint_sha256: String,
    host_ca_certificate: PathBuf,
    host_ca_key: PathBuf,
    host_ca_fingerprint_sha256: String,
}

fn pki_init(dir: &Path) -> CliResult<()> {
    let pki = Pki::init(dir).code(codes::E205)?;
    print_json(&PkiSummary {
        dir: pki.dir().to_path_buf(),
        root_certificate: pki.root_cert_path(),
        root_key: pki.root_key_path(),
        root_fingerprint_sha256: fingerprint_sha256(pki.root_der()),
        host_ca_certificate: pki.host_cert_path(),
        host_ca_key: pki.host_key_path(),
        host_ca_fingerprint_sha256: fingerprint_sha256(pki.host_ca_der()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use cloister_attestation::VERIFY_ERROR_CODES;

    #[test]
    fn every_verifier_code_is_documented() {
        for (code, _) in VERIFY_ERROR_CODES {
            assert!(
                CODES.iter().any(|c| c.code == *code),
                "{code} missing from CODES"
            );
        }
    }

    const AWS_DOC: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../attestation/testdata/aws-debug-2023-09-07.cose"
    );

    fn status(args: &[&str]) -> i32 {
        let mut argv = vec!["cloister", "verify-attestation", "--document", AWS_DOC];
        argv.extend_from_slice(args);
        crate::main_with_args(argv)
    }

    #[test]
    fn verify_attestation_exit_statuses() {
        assert_eq!(status(&["--at", "1694102161556"]), 0);
        // Expired today; debug document against an image PCR; bad arguments.
        assert_eq!(status(&[]), 4);
        let zeros = "00".repeat(48);
        let pcr0 = format!("0={zeros}");
        assert_eq!(status(&["--at", "1694102161556", "--expect-pcr", &pcr0]), 4);
        assert_eq!(status(&["--at", "yesterday"]), 2);
        assert_eq!(status(&["--at", "1694102161556", "--nonce", "zz"]), 2);
        // A root other than AWS's: untrusted, exit class verification failed.
        let dir = tempfile::tempdir().unwrap();
        let pki = cloister_attestation::Pki::init(dir.path()).unwrap();
        let root = pki.root_cert_path();
        let root = root.to_str().unwrap();
        assert_eq!(status(&["--at", "1694102161556", "--root", root]), 4);
        assert_eq!(
            crate::main_with_args([
                "cloister",
                "pki",
                "init",
                "--dir",
                dir.path().to_str().unwrap()
            ]),
            0
        );
    }

    #[test]
    fn expect_pcr_parsing() {
        assert_eq!(parse_expect_pcr("3=00ff").unwrap(), (3, vec![0, 0xff]));
        assert!(parse_expect_pcr("32=00").is_err());
        assert!(parse_expect_pcr("x=00").is_err());
        assert!(parse_expect_pcr("3=zz").is_err());
        assert!(parse_expect_pcr("3").is_err());
    }
}
