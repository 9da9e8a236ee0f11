//! cloister-proxy (placeholder; see ARCHITECTURE).
