//! cloister-attestation (placeholder; see ARCHITECTURE).
