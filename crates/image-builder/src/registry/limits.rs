//! What a registry may send: the bounds on every read from the network.

/// Largest response head (status line and headers).
pub const MAX_HEAD: usize = 64 * 1024;
/// Largest manifest, index or token document.
pub const MAX_DOCUMENT: u64 = 4 << 20;
/// Most redirects followed for one request.
pub const MAX_REDIRECTS: usize = 5;
/// Most layers in one image.
pub const MAX_LAYERS: usize = 256;
