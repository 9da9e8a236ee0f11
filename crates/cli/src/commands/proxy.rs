//! vsock-proxy and forwarders (E5xx): subcommands, handlers and error codes.

use crate::errors::{CliResult, ErrorInfo};
use clap::Subcommand;

/// Subcommands of this area.
#[derive(Debug, Subcommand)]
pub enum ProxyCommand {}

/// Error codes of this area.
pub const CODES: &[ErrorInfo] = &[];

/// Runs one subcommand.
pub fn run(command: ProxyCommand) -> CliResult<()> {
    match command {}
}
