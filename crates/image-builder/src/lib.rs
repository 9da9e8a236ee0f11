//! cloister-image-builder (placeholder; see ARCHITECTURE).
