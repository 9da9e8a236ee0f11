//! Key service (E4xx): `cloister kms serve`, an AWS-KMS-compatible server (see `cloister-kms`).
//!
//! The handler reads the optional config file, opens the data directory (creating the store,
//! master key and administrator credential on first start), prints one JSON object describing
//! the listening server on stdout, and serves until SIGINT or SIGTERM.

use crate::codes::{self, Code};
use crate::errors::{CliError, CliResult};
use clap::{Args, Subcommand};
use cloister_kms::config::{Config, ConfigError};
use cloister_kms::server::{serve_blocking, ServeOptions, ServerError};
use std::path::PathBuf;

/// Subcommands of this area.
#[derive(Debug, Subcommand)]
pub enum KmsCommand {
    /// AWS-KMS-compatible key service with attestation-bound key release.
    #[command(subcommand)]
    Kms(KmsSubcommand),
}

/// `cloister kms ...`
#[derive(Debug, Subcommand)]
pub enum KmsSubcommand {
    /// Serve the AWS KMS JSON 1.1 protocol (SigV4) over HTTP or HTTPS.
    Serve(ServeArgs),
    /// Seal every key's material under a new master key, in one transaction (servers stopped).
    RotateMasterKey(RotateArgs),
}

/// `cloister kms rotate-master-key` arguments.
#[derive(Debug, Clone, Args)]
pub struct RotateArgs {
    /// Data directory of the embedded store (ignored with --store).
    #[arg(long, value_name = "DIR", required_unless_present = "store")]
    pub data_dir: Option<PathBuf>,
    /// PostgreSQL store (`postgres://user@host:port/db` or `host=/run/postgresql dbname=kms`).
    #[arg(long, value_name = "URL")]
    pub store: Option<String>,
    /// The master key file the records are sealed under now.
    #[arg(long, value_name = "FILE")]
    pub old: PathBuf,
    /// The new master key file (created, mode 0600, when absent).
    #[arg(long, value_name = "FILE")]
    pub new: PathBuf,
    /// Rotate although key servers are connected to the PostgreSQL store.
    #[arg(long)]
    pub force: bool,
}

/// `cloister kms serve` arguments.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free port; the JSON output says which).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8443")]
    pub listen: String,
    /// Data directory: key store, master key (unless the config names one) and
    /// admin-credentials.json. Created if missing.
    #[arg(long, value_name = "DIR")]
    pub data_dir: PathBuf,
    /// PEM certificate chain for HTTPS (needs --tls-key).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for HTTPS (needs --tls-cert).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Config file (YAML or JSON): region, account_id, master_key_path, attestation trust
    /// anchors, extra credentials.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Key store: a PostgreSQL connection string (`postgres://user@host:port/db`, or
    /// `host=/run/postgresql dbname=kms user=kms`) shared by several servers; default: the
    /// embedded store in --data-dir. Every server of a fleet needs the same master key.
    #[arg(long, value_name = "URL")]
    pub store: Option<String>,
}

pub use crate::codes::kms::CODES;

fn code_of(e: &ServerError) -> Code {
    match e {
        ServerError::Config(_) => codes::E401,
        ServerError::Store(_) => codes::E402,
        ServerError::Tls(..) => codes::E403,
        ServerError::Listen(..) => codes::E404,
        ServerError::TrustAnchors(_) => codes::E405,
        ServerError::Admin(_) => codes::E406,
    }
}

/// Runs one subcommand.
pub fn run(command: KmsCommand) -> CliResult<()> {
    match command {
        KmsCommand::Kms(KmsSubcommand::Serve(args)) => serve(args),
        KmsCommand::Kms(KmsSubcommand::RotateMasterKey(args)) => rotate(args),
    }
}

fn rotate(args: RotateArgs) -> CliResult<()> {
    let store = cloister_kms::config::StoreConfig {
        url: args.store,
        ..Default::default()
    };
    let data_dir = args.data_dir.unwrap_or_default();
    let n = cloister_kms::store::Store::rotate_master_key(
        &data_dir, &store, &args.old, &args.new, args.force,
    )
    .map_err(|e| CliError::new(codes::E402, e))?;
    println!("{}", serde_json::json!({ "KeysResealed": n }));
    Ok(())
}

fn serve(args: ServeArgs) -> CliResult<()> {
    let mut config = match &args.config {
        Some(p) => Config::load(p).map_err(|e: ConfigError| CliError::new(codes::E401, e))?,
        None => Config::default(),
    };
    if let Some(url) = args.store {
        config.store.url = Some(url);
        config
            .validate()
            .map_err(|e| CliError::new(codes::E401, e))?;
    }
    let opts = ServeOptions {
        listen: args.listen,
        data_dir: args.data_dir,
        tls: args.tls_cert.zip(args.tls_key),
        config,
    };
    serve_blocking(opts, |started| {
        // One line, flushed, so a supervisor (or a test) can read the chosen port.
        if let Ok(line) = serde_json::to_string(started) {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        }
    })
    .map_err(|e| CliError::new(code_of(&e), e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Cli;
    use clap::Parser;

    #[test]
    fn serve_arguments_parse() {
        let cli = Cli::try_parse_from([
            "cloister",
            "kms",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            "/tmp/x",
            "--config",
            "c.yaml",
        ])
        .unwrap();
        let crate::Command::Kms(KmsCommand::Kms(KmsSubcommand::Serve(a))) = cli.command else {
            panic!("wrong command");
        };
        assert_eq!(a.listen, "127.0.0.1:0");
        assert!(a.tls_cert.is_none());
        assert!(Cli::try_parse_from([
            "cloister",
            "kms",
            "serve",
            "--data-dir",
            "/tmp/x",
            "--tls-cert",
            "c.pem"
        ])
        .is_err());
    }

    #[test]
    fn store_and_rotation_arguments_parse() {
        let cli = Cli::try_parse_from([
            "cloister",
            "kms",
            "serve",
            "--data-dir",
            "/tmp/x",
            "--store",
            "postgres://kms@127.0.0.1/kms",
        ])
        .unwrap();
        let crate::Command::Kms(KmsCommand::Kms(KmsSubcommand::Serve(a))) = cli.command else {
            panic!("wrong command");
        };
        assert_eq!(a.store.as_deref(), Some("postgres://kms@127.0.0.1/kms"));
        let cli = Cli::try_parse_from([
            "cloister",
            "kms",
            "rotate-master-key",
            "--store",
            "host=/run/postgresql dbname=kms",
            "--old",
            "a.key",
            "--new",
            "b.key",
        ])
        .unwrap();
        let crate::Command::Kms(KmsCommand::Kms(KmsSubcommand::RotateMasterKey(r))) = cli.command
        else {
            panic!("wrong command");
        };
        assert!(r.data_dir.is_none() && !r.force);
        // Without a store, the data directory is required.
        assert!(Cli::try_parse_from([
            "cloister",
            "kms",
            "rotate-master-key",
            "--old",
            "a.key",
            "--new",
            "b.key"
        ])
        .is_err());
    }

    #[test]
    fn every_server_error_has_a_code_in_the_table() {
        for code in ["E401", "E402", "E403", "E404", "E405", "E406"] {
            assert!(CODES.iter().any(|c| c.code == code));
        }
    }
}
