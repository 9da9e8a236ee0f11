//! `cloister demo` (E8xx): the flags, and the codes of the demo's errors. The scenario itself
//! (build the images, start the key service and vsock-proxy, run and attest the enclaves,
//! tear down) is the `cloister-demo` library; this module calls it and gives each
//! [`DemoError`] its stable code.

use crate::codes::{self, Code};
use crate::errors::{CliError, CliResult};
use clap::{Args, Subcommand};
use cloister_demo::{DemoError, DemoOptions, Reporter};
use cloister_runtime::Isolation;
use std::path::PathBuf;
use std::sync::Arc;

pub use crate::codes::demo::CODES;

/// Subcommands of this area.
#[derive(Debug, Subcommand)]
pub enum DemoCommand {
    /// Run the end-to-end demo: build an image, start KMS and vsock-proxy, release a secret to
    /// the attested enclave, and show that a modified image is refused. Needs root.
    Demo(DemoArgs),
}

/// `cloister demo` flags.
#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Memory of each demo enclave, in MiB.
    #[arg(long, value_name = "MiB", default_value_t = 256)]
    pub memory: u64,
    /// Keep the temp directory (images, run dir, KMS data) and print its path.
    #[arg(long)]
    pub keep_temp: bool,
    /// Isolation of the demo enclaves: process or vm (a QEMU microVM; needs a blobs directory
    /// with a kernel). The key policy requires this isolation.
    #[arg(long, value_name = "KIND", default_value = "process")]
    pub isolation: Isolation,
    /// Blobs directory (init, cmdline; for --isolation vm also a kernel and its modules, as
    /// `cloister blobs prepare` makes). Default: CLOISTER_BLOBS, NITRO_CLI_BLOBS,
    /// <executable>/../share/cloister/blobs, /usr/share/cloister/blobs.
    #[arg(long, value_name = "DIR")]
    pub blobs: Option<PathBuf>,
    /// Once the sample enclave runs, wait for Enter before going on (to inspect it with
    /// describe-enclaves; the run directory is printed).
    #[arg(long)]
    pub pause: bool,
}

impl DemoArgs {
    /// The library's options for these flags.
    pub fn options(&self) -> DemoOptions {
        DemoOptions {
            memory: self.memory,
            keep_temp: self.keep_temp,
            isolation: self.isolation,
            blobs: self.blobs.clone(),
            pause: self.pause,
        }
    }
}

/// The stable code of a demo error, from its kind.
pub fn code_of(e: &DemoError) -> Code {
    match e {
        DemoError::Images(_) => codes::E801,
        DemoError::Setup(_) => codes::E802,
        DemoError::KeyService(_) => codes::E803,
        DemoError::Proxy(_) => codes::E804,
        DemoError::KeySetup(_) => codes::E805,
        DemoError::EnclaveStart(_) => codes::E806,
        DemoError::NoAnswer(_) => codes::E807,
        DemoError::NotReleased(_) => codes::E808,
        DemoError::ProofRejected(_) => codes::E809,
        DemoError::NotRefused(_) => codes::E810,
        DemoError::LeftBehind(_) => codes::E811,
        DemoError::Interrupted(_) => codes::E812,
        DemoError::VmNeedsKernel(_) => codes::E813,
        DemoError::SampleAppMissing(_) => codes::E814,
        DemoError::BlobsMissing(_) => codes::E610,
    }
}

/// A demo error as the CLI reports it.
pub fn cli_error(e: DemoError) -> CliError {
    CliError::msg(code_of(&e), e)
}

/// Runs one subcommand.
pub fn run(command: DemoCommand) -> CliResult<()> {
    match command {
        DemoCommand::Demo(args) => {
            // What the demo exits on by itself after SIGINT or SIGTERM is printed as every
            // other error (with its code), whatever the error style.
            let report: Reporter = Arc::new(|e: &DemoError| cli_error(e.clone()).report());
            cloister_demo::run(&args.options(), &report).map_err(cli_error)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_in_range_and_unique() {
        let mut seen = std::collections::BTreeSet::new();
        for c in CODES {
            assert!(c.code.starts_with("E8") && c.code.len() == 4, "{}", c.code);
            assert!(seen.insert(c.code), "duplicate {}", c.code);
        }
    }

    #[test]
    fn demo_errors_get_their_codes() {
        let cases = [
            (DemoError::Images("x".into()), "E801"),
            (DemoError::Setup("x".into()), "E802"),
            (DemoError::KeyService("x".into()), "E803"),
            (DemoError::Proxy("x".into()), "E804"),
            (DemoError::KeySetup("x".into()), "E805"),
            (DemoError::EnclaveStart("x".into()), "E806"),
            (DemoError::NoAnswer("x".into()), "E807"),
            (DemoError::NotReleased("x".into()), "E808"),
            (DemoError::ProofRejected("x".into()), "E809"),
            (DemoError::NotRefused("x".into()), "E810"),
            (DemoError::LeftBehind("x".into()), "E811"),
            (DemoError::Interrupted("x".into()), "E812"),
            (DemoError::VmNeedsKernel("x".into()), "E813"),
            (DemoError::SampleAppMissing("x".into()), "E814"),
            (DemoError::BlobsMissing("x".into()), "E610"),
        ];
        for (e, code) in cases {
            let c = cli_error(e);
            assert_eq!(c.code, code);
            // The message is the library's, unchanged.
            assert_eq!(c.to_string(), format!("[{code}] x"));
            assert!(crate::errors::lookup(code).is_some(), "{code}");
        }
    }

    #[test]
    fn demo_parses() {
        use clap::Parser;
        let cli = crate::Cli::try_parse_from(["cloister", "demo", "--memory", "128"]).unwrap();
        let crate::Command::Demo(DemoCommand::Demo(a)) = cli.command else {
            panic!("wrong command");
        };
        assert_eq!(a.memory, 128);
        assert!(!a.keep_temp);
        assert_eq!(a.isolation, Isolation::Process);
        assert!(!a.pause && a.blobs.is_none());
        let cli = crate::Cli::try_parse_from([
            "cloister",
            "demo",
            "--isolation",
            "vm",
            "--blobs",
            "/b",
            "--pause",
        ])
        .unwrap();
        let crate::Command::Demo(DemoCommand::Demo(a)) = cli.command else {
            panic!("wrong command");
        };
        assert_eq!(a.isolation, Isolation::Vm);
        assert_eq!(a.blobs.as_deref(), Some(std::path::Path::new("/b")));
        assert!(a.pause);
        assert!(crate::Cli::try_parse_from(["cloister", "demo", "--isolation", "tee"]).is_err());
    }
}
