//! cloister-image-builder: container images to enclave images, reproducibly and without a
//! container engine.
//!
//! Inputs ([`ImageInput`]): an OCI image layout directory (`DIR[:TAG]`), a `docker save`
//! archive (old or OCI-style), a Docker engine's API (`GET /images/<name>/get` over its Unix
//! socket), or a plain root filesystem directory. Layers are verified (SHA-256 of every blob, or
//! of the uncompressed tar where the blob is not content-addressed), decompressed (gzip, zstd or
//! none, by magic) and applied in order into an in-memory [`tree::Tree`] whose file contents
//! spill to an anonymous temporary file; nothing from the image touches the host's filesystem,
//! so path traversal cannot write outside, and hostile paths are still reported as errors.
//! The tree then becomes the customer ramdisk (`rootfs/`, `cmd`, `env`) and the blobs directory
//! ([`blobs::Blobs`]) the bootstrap ramdisk, both deterministic cpio archives, and
//! [`cloister_eif::EifBuilder`] writes and measures the EIF.
//!
//! Modules: [`source`] (inputs), [`registry`] (pulls over the OCI distribution API),
//! [`dockerfile`] (Dockerfile builds), [`digest`] (verification), [`layer`] (tar application),
//! [`tree`] (the filesystem), [`config`] (`cmd`/`env` from the image config), [`blobs`]
//! (kernel, init, modules; `blobs prepare`), [`build`] (the pipeline and its timings); `http`
//! is the one HTTP/1.1 client (hyper's) that the registry and Docker engine inputs share.

pub mod blobs;
pub mod build;
pub mod config;
pub mod digest;
pub mod dockerfile;
pub mod http;
pub mod layer;
pub mod registry;
pub mod source;
pub mod tree;

pub use blobs::{Blobs, BlobsError, PrepareOptions, PrepareReport, DEFAULT_BLOBS_DIR};
pub use build::{
    build, prepare, write_eif, BuildError, BuildReport, BuildRequest, ImageInput, Limits, Prepared,
    Timings,
};
pub use config::{CommandEnv, CommandOverrides, CommandStyle};
