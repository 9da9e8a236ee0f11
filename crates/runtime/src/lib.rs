//! cloister-runtime (placeholder; see ARCHITECTURE).
