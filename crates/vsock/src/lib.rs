//! cloister-vsock (placeholder; see ARCHITECTURE).
