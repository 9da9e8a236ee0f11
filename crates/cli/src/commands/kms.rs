//! Key service (E4xx): subcommands, handlers and error codes.

use crate::errors::{CliResult, ErrorInfo};
use clap::Subcommand;

/// Subcommands of this area.
#[derive(Debug, Subcommand)]
pub enum KmsCommand {}

/// Error codes of this area.
pub const CODES: &[ErrorInfo] = &[];

/// Runs one subcommand.
pub fn run(command: KmsCommand) -> CliResult<()> {
    match command {}
}
