//! cloister-kms (placeholder; see ARCHITECTURE).
