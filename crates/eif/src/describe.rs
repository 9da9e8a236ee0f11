//! nitro-cli's `describe-eif` output, built from an [`Inspection`]: the same field names and
//! the same optional fields, so scripts written for nitro-cli read it unchanged.

use crate::measure::Measurements;
use crate::reader::Inspection;
use crate::signature::CertificateInfo;
use serde::Serialize;

/// `describe-eif` JSON.
#[derive(Debug, Clone, Serialize)]
pub struct DescribeEif {
    /// Format version.
    #[serde(rename = "EifVersion")]
    pub eif_version: u16,
    /// PCRs.
    #[serde(rename = "Measurements")]
    pub measurements: Measurements,
    /// Whether the image has a signature section.
    #[serde(rename = "IsSigned")]
    pub is_signed: bool,
    /// The signing certificate, when signed and parseable.
    #[serde(rename = "SigningCertificate", skip_serializing_if = "Option::is_none")]
    pub signing_certificate: Option<CertificateInfo>,
    /// Whether the stored CRC matches.
    #[serde(rename = "CheckCRC")]
    pub check_crc: bool,
    /// Whether the signature verifies and signs PCR0 (signed images only).
    #[serde(rename = "SignatureCheck", skip_serializing_if = "Option::is_none")]
    pub signature_check: Option<bool>,
    /// Image name from the metadata.
    #[serde(rename = "ImageName", skip_serializing_if = "Option::is_none")]
    pub image_name: Option<String>,
    /// Image version from the metadata.
    #[serde(rename = "ImageVersion", skip_serializing_if = "Option::is_none")]
    pub image_version: Option<String>,
    /// Build metadata, with custom metadata merged in.
    #[serde(rename = "Metadata", skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Value>,
}

impl Inspection {
    /// The `describe-eif` view, plus one line for each thing that could not be reported
    /// (unparseable metadata or signature, a failed check).
    pub fn describe(&self) -> (DescribeEif, Vec<String>) {
        let mut notes = Vec::new();
        if !self.crc.ok() {
            notes.push(format!(
                "CRC mismatch: header says {:#010x}, contents give {:#010x}",
                self.crc.stored, self.crc.computed
            ));
        }
        let meta = match &self.metadata {
            Some(Ok(m)) => Some(m),
            Some(Err(e)) => {
                notes.push(format!("metadata not shown: {e}"));
                None
            }
            None => None,
        };
        let (signing_certificate, signature_check) = match &self.signature {
            Some(s) => {
                if let Err(e) = &s.check {
                    notes.push(format!("signature check failed: {e}"));
                }
                (s.certificate.clone(), Some(s.check.is_ok()))
            }
            None => (None, None),
        };
        let d = DescribeEif {
            eif_version: self.header.version,
            measurements: self.measurements,
            is_signed: self.signature.is_some(),
            signing_certificate,
            check_crc: self.crc.ok(),
            signature_check,
            image_name: meta.map(|m| m.image_name.clone()),
            image_version: meta.map(|m| m.image_version.clone()),
            metadata: meta.map(|m| m.describe_json()),
        };
        (d, notes)
    }
}
