//! Cloister's key service: an AWS-KMS-compatible server that releases keys to attested enclaves.
//!
//! The parts, from the wire inwards:
//! - [`server`]: HTTP/1.1 (and HTTPS with rustls) on hyper, body caps, dispatch.
//! - [`sigv4`]: AWS Signature Version 4 verification with cached signing keys (the
//!   `cloister-sigv4` crate, which the SDK signs with, mapped onto the service's errors).
//! - [`service`]: the KMS operations (CreateKey, Encrypt, Decrypt, GenerateDataKey, ...), one
//!   typed request per operation dispatched by an enum, split by concern; its
//!   [`service::ops`] holds grants, imported key material, Regions and multi-Region keys,
//!   ListKeyRotations, and the request scope (caller, Region, address).
//! - [`policy`]: IAM-style key policies with `kms:RecipientAttestation:*` conditions.
//! - [`recipient`] and [`cms`]: attestation-bound release (`Recipient` ->
//!   `CiphertextForRecipient`, CMS EnvelopedData with RSAES-OAEP and AES-256-CBC).
//! - [`keys`]: key specs, usages and algorithms of asymmetric and HMAC keys, and their material.
//! - [`blob`]: the ciphertext blob format (key id, material version, AES-256-GCM, context AAD).
//! - [`store`]: durable storage, embedded in redb (the default; see its docs for why) or in
//!   PostgreSQL for a fleet of servers (schema, writes and cross-server sync in their own
//!   modules); key material sealed under a master key kept in a separate file. Its
//!   [`store::record`] holds what the operations beyond the core set keep in a key's record
//!   (grants, imported material, Regions), so the store depends on nothing above it.
//! - [`config`]: the YAML/JSON config file.

#![forbid(unsafe_code)]

pub mod blob;
pub mod cms;
pub mod config;
pub mod error;
pub mod keys;
pub mod policy;
pub mod recipient;
pub mod server;
pub mod service;
pub mod sigv4;
pub mod store;

pub use config::Config;
pub use error::{KmsError, KmsResult};
pub use service::Service;
