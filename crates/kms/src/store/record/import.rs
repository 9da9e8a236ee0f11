//! The import state of a key of origin `EXTERNAL`, as stored in its record.

use serde::{Deserialize, Serialize};

/// Outstanding import parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PendingImport {
    /// SHA-256 of the import token (hex).
    pub token_digest: String,
    /// The wrapping private key (PKCS#8), sealed under the master key.
    pub wrapping_key: String,
    /// The wrapping algorithm the material must come under.
    pub algorithm: String,
    /// When the parameters expire, seconds since the epoch.
    pub valid_to: f64,
}

/// The import state of an EXTERNAL-origin key.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportRecord {
    /// `KEY_MATERIAL_EXPIRES` or `KEY_MATERIAL_DOES_NOT_EXPIRE`, once material was imported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiration_model: Option<String>,
    /// When imported material expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_to: Option<f64>,
    /// Domain-separated SHA-256 of the first imported material (hex): later imports must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub material_digest: Option<String>,
    /// The latest import parameters not yet used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<PendingImport>,
}
