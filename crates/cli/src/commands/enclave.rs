//! Enclave lifecycle (E3xx): subcommands, handlers and error codes.

use crate::errors::{CliResult, ErrorInfo};
use clap::Subcommand;

/// Subcommands of this area.
#[derive(Debug, Subcommand)]
pub enum EnclaveCommand {}

/// Error codes of this area.
pub const CODES: &[ErrorInfo] = &[];

/// Runs one subcommand.
pub fn run(command: EnclaveCommand) -> CliResult<()> {
    match command {}
}
