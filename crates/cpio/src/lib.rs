//! cloister-cpio (placeholder; see ARCHITECTURE).
