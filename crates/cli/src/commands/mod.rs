//! One module per area of the CLI. Each owns its subcommand enum (flattened into
//! [`crate::Command`]), its handlers and its table of error codes.

pub mod attest;
pub mod daemon;
pub mod demo;
pub mod eif;
pub mod enclave;
pub mod explain;
pub mod image;
pub mod kms;
pub mod proxy;
pub mod vsock;
