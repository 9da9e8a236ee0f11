//! One module per area of the CLI. Each owns its subcommand enum (flattened into
//! [`crate::Command`]) and its handlers; the codes they report are constants of
//! [`crate::codes`], the layer below, and the dispatch in `lib.rs` is the layer above.

pub mod attest;
pub mod demo;
pub mod eif;
pub mod enclave;
pub mod explain;
pub mod image;
pub mod kms;
pub mod proxy;
pub mod vsock;
