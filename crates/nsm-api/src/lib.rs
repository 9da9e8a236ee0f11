//! cloister-nsm-api (placeholder; see ARCHITECTURE).
