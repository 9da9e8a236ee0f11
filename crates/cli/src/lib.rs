//! The `cloister` command line: nitro-cli's verbs (build-enclave, describe-eif, run-enclave, ...)
//! plus Cloister's own (kms, vsock-proxy, verify-attestation, pki, demo).
//!
//! Argument structs live here, in a library, so they can be unit-tested. The modules are
//! layered, each using only those below it: [`codes`] (every stable error code as a constant,
//! with its explanation and exit class) at the bottom; [`errors`] (the coded error the CLI
//! reports) and [`nitro`] (nitro-cli's error contract) above it; [`commands`], one module per
//! area owning its subcommands and handlers, above those; and the dispatch in this file on top.
//! The demo scenario is the `cloister-demo` library, which knows nothing of the CLI.

pub mod codes;
pub mod commands;
pub mod docker_engine;
pub mod errors;
pub mod kms_signer;
pub mod nitro;

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
    #[command(flatten)]
    Vsock(commands::vsock::VsockCommand),
    /// Explain an error code reported by cloister.
    Explain(commands::explain::ExplainArgs),
}

/// Runs the CLI on `args` and returns the process exit status.
pub fn main_with_args<I, T>(args: I) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    // The name the binary runs as picks the command line and the error contract (nitro.rs).
    let personality = args
        .first()
        .map(|a| nitro::Personality::from_argv0(a))
        .unwrap_or(nitro::Personality::Cloister);
    let style_env = std::env::var(nitro::ERROR_STYLE_ENV).ok();
    nitro::set_style(personality.error_style(style_env.as_deref()));
    nitro::apply_nitro_env();
    let args = nitro::rewrite_argv(personality, args);
    if let Some(verb) = args.get(1) {
        nitro::set_verb(&verb.to_string_lossy());
    }
    // `run-enclave` is on the boot path: parse it against its own small command tree instead
    // of building every area's. Anything that does not parse there (help, a typo, another
    // verb) goes through the full tree, which gives the canonical output.
    if args.get(1).is_some_and(|a| a == "run-enclave") {
        if let Ok(fast) = RunEnclaveCli::try_parse_from(&args) {
            init_logging(&fast.log);
            let RunEnclaveOnly::RunEnclave(a) = fast.command;
            return exit_status(commands::enclave::run(
                commands::enclave::EnclaveCommand::RunEnclave(a),
            ));
        }
    }
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
    exit_status(run(cli.command))
}

/// The exit status for a command's result (reporting the error, if any).
fn exit_status(result: CliResult<()>) -> i32 {
    match (result, nitro::style()) {
        (Ok(()), nitro::ErrorStyle::Cloister) => 0,
        (Ok(()), nitro::ErrorStyle::Nitro) => {
            nitro::log_line("ok");
            0
        }
        (Err(err), nitro::ErrorStyle::Cloister) => {
            err.report();
            err.exit_status()
        }
        (Err(err), nitro::ErrorStyle::Nitro) => nitro::report_nitro(&err),
    }
}

/// `run-enclave` alone, with the same global flag: what [`main_with_args`] parses first for
/// that verb (see there).
#[derive(Debug, Parser)]
#[command(name = "cloister", version)]
struct RunEnclaveCli {
    #[arg(long, global = true, env = "CLOISTER_LOG", default_value = "warn")]
    log: String,
    #[command(subcommand)]
    command: RunEnclaveOnly,
}

#[derive(Debug, Subcommand)]
enum RunEnclaveOnly {
    RunEnclave(commands::enclave::RunEnclaveArgs),
}

/// Log level of the default filter; it needs no directive parsing.
const DEFAULT_LOG: &str = "warn";

fn init_logging(filter: &str) {
    let builder = tracing_subscriber::fmt().with_writer(std::io::stderr);
    let _ = if filter == DEFAULT_LOG {
        builder
            .with_max_level(tracing::level_filters::LevelFilter::WARN)
            .try_init()
    } else {
        let filter = tracing_subscriber::EnvFilter::try_new(filter)
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG));
        builder.with_env_filter(filter).try_init()
    };
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
        Command::Vsock(c) => commands::vsock::run(c),
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
        RunEnclaveCli::command().debug_assert();
    }

    #[test]
    fn run_enclave_fast_parse_matches_the_full_tree() {
        let argv = [
            "cloister",
            "run-enclave",
            "--eif-path",
            "/x.eif",
            "--cpu-ids",
            "2,3",
            "--memory",
            "512",
            "--enclave-cid",
            "17",
            "--debug-mode",
            "--enclave-name",
            "n",
            "--log",
            "info",
        ];
        let fast = RunEnclaveCli::try_parse_from(argv).unwrap();
        let full = Cli::try_parse_from(argv).unwrap();
        assert_eq!(fast.log, full.log);
        let RunEnclaveOnly::RunEnclave(a) = fast.command;
        let Command::Enclave(commands::enclave::EnclaveCommand::RunEnclave(b)) = full.command
        else {
            panic!("full tree parsed another command");
        };
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
        // What the small tree rejects (help, a missing flag, a conflict) the full tree handles.
        for bad in [
            &["cloister", "run-enclave", "--help"][..],
            &["cloister", "run-enclave", "--memory", "64"][..],
            &[
                "cloister",
                "run-enclave",
                "--config",
                "c.json",
                "--memory",
                "64",
            ][..],
        ] {
            assert!(RunEnclaveCli::try_parse_from(bad).is_err(), "{bad:?}");
            assert!(Cli::try_parse_from(bad).is_err(), "{bad:?}");
        }
        assert!(RunEnclaveCli::try_parse_from(["cloister", "describe-enclaves"]).is_err());
    }

    #[test]
    fn main_reports_usage_errors_of_run_enclave_through_the_full_tree() {
        assert_eq!(
            main_with_args(["cloister", "run-enclave", "--memory", "64"]),
            ExitKind::Usage.status()
        );
        assert_eq!(main_with_args(["cloister", "run-enclave", "--help"]), 0);
    }
}
