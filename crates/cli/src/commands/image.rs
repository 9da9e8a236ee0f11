//! Container images and bootstrap blobs (E6xx): subcommands, handlers and error codes.

use crate::errors::{CliResult, ErrorInfo};
use clap::Subcommand;

/// Subcommands of this area.
#[derive(Debug, Subcommand)]
pub enum ImageCommand {}

/// Error codes of this area.
pub const CODES: &[ErrorInfo] = &[];

/// Runs one subcommand.
pub fn run(command: ImageCommand) -> CliResult<()> {
    match command {}
}
