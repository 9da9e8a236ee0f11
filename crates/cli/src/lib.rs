//! The `cloister` command line: nitro-cli's verbs (build-enclave, describe-eif, run-enclave, ...)
//! plus Cloister's own (kms, vsock-proxy, verify-attestation, pki, demo).
//!
//! Argument structs live here, in a library, so they can be unit-tested. Each area of the CLI is
//! one module under [`commands`] that owns its subcommands, its handlers and its error codes;
//! [`errors`] gathers the codes for `cloister explain` and maps them to stable exit statuses.

pub mod commands;
pub mod errors;

use clap::{Parser, Subcommand};
use std::ffi::OsString;

pub use errors::{CliError, CliResult, Coded, ErrorInfo, ExitKind};

/// Cloister: self-hostable AWS Nitro Enclaves.
#[derive(Debug, Parser)]
#[command(name = "cloister", version, about, long_about = None)]
pub struct Cli {
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `cloister_runtime=debug`.
    #[arg(long, global = true, env = "CLOISTER_LOG", default_value = "warn")]
    pub log: String,

    #[command(subcommand)]
    pub command: Command,
}

/// Every subcommand. Each area's subcommands are flattened in from its module.
#[derive(Debug, Subcommand)]
pub enum Command {
    #[command(flatten)]
    Eif(commands::eif::EifCommand),
    #[command(flatten)]
    Attest(commands::attest::AttestCommand),
    #[command(flatten)]
    Enclave(commands::enclave::EnclaveCommand),
    #[command(flatten)]
    Kms(commands::kms::KmsCommand),
    #[command(flatten)]
    Proxy(commands::proxy::ProxyCommand),
    #[command(flatten)]
    Image(commands::image::ImageCommand),
    #[command(flatten)]
    Demo(commands::demo::DemoCommand),
    /// Explain an error code reported by cloister.
    Explain(commands::explain::ExplainArgs),
}

/// Runs the CLI on `args` and returns the process exit status.
pub fn main_with_args<I, T>(args: I) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => 0,
                _ => ExitKind::Usage.status(),
            };
        }
    };
    init_logging(&cli.log);
    match run(cli.command) {
        Ok(()) => 0,
        Err(err) => {
            err.report();
            err.exit_status()
        }
    }
}

fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Dispatches one parsed command.
pub fn run(command: Command) -> CliResult<()> {
    match command {
        Command::Eif(c) => commands::eif::run(c),
        Command::Attest(c) => commands::attest::run(c),
        Command::Enclave(c) => commands::enclave::run(c),
        Command::Kms(c) => commands::kms::run(c),
        Command::Proxy(c) => commands::proxy::run(c),
        Command::Image(c) => commands::image::run(c),
        Command::Demo(c) => commands::demo::run(c),
        Command::Explain(a) => commands::explain::run(a),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
