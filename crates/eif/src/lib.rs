//! cloister-eif (placeholder; see ARCHITECTURE).
