//! cloister-sdk (placeholder; see ARCHITECTURE).
