//! The metadata section (version 4): a JSON document naming the image and how it was built.
//! It is not measured, so two images with different metadata can have the same PCRs.

use serde::{Deserialize, Serialize};

/// How an image was built.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildMetadata {
    /// RFC 3339 build time.
    #[serde(rename = "BuildTime")]
    pub build_time: String,
    /// Name of the tool that built the image.
    #[serde(rename = "BuildTool")]
    pub build_tool: String,
    /// Its version.
    #[serde(rename = "BuildToolVersion")]
    pub build_tool_version: String,
    /// Operating system of the enclave.
    #[serde(rename = "OperatingSystem")]
    pub operating_system: String,
    /// Kernel version of the enclave.
    #[serde(rename = "KernelVersion")]
    pub kernel_version: String,
}

/// The metadata section's document.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Metadata {
    /// Image name.
    #[serde(rename = "ImageName")]
    pub image_name: String,
    /// Image version.
    #[serde(rename = "ImageVersion")]
    pub image_version: String,
    /// Build information.
    #[serde(rename = "BuildMetadata")]
    pub build_metadata: BuildMetadata,
    /// `docker image inspect` output of the source image, or null.
    #[serde(rename = "DockerInfo", default)]
    pub docker_info: serde_json::Value,
    /// User-supplied JSON, or null.
    #[serde(rename = "CustomMetadata", default)]
    pub custom_metadata: serde_json::Value,
}

impl Metadata {
    /// Metadata for an image built by `build_tool` at `build_time` (RFC 3339), with AWS's
    /// defaults for the other fields (version "1.0", "Generic Linux", unknown kernel version).
    pub fn new(
        image_name: impl Into<String>,
        build_tool: &str,
        build_tool_version: &str,
        build_time: impl Into<String>,
    ) -> Self {
        Self {
            image_name: image_name.into(),
            image_version: "1.0".to_string(),
            build_metadata: BuildMetadata {
                build_time: build_time.into(),
                build_tool: build_tool.to_string(),
                build_tool_version: build_tool_version.to_string(),
                operating_system: "Generic Linux".to_string(),
                kernel_version: "Unknown version".to_string(),
            },
            docker_info: serde_json::Value::Null,
            custom_metadata: serde_json::Value::Null,
        }
    }

    /// The section bytes: compact JSON, fields in the format's order.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Serializing strings and JSON values into a Vec cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// nitro-cli's `Metadata` object in `describe-eif`: the build fields and `DockerInfo`, with
    /// the keys of an object `CustomMetadata` merged in (nitro-cli flattens it).
    pub fn describe_json(&self) -> serde_json::Value {
        let b = &self.build_metadata;
        let mut m = serde_json::Map::new();
        m.insert("BuildTime".into(), b.build_time.clone().into());
        m.insert("BuildTool".into(), b.build_tool.clone().into());
        m.insert(
            "BuildToolVersion".into(),
            b.build_tool_version.clone().into(),
        );
        m.insert("OperatingSystem".into(), b.operating_system.clone().into());
        m.insert("KernelVersion".into(), b.kernel_version.clone().into());
        m.insert("DockerInfo".into(), self.docker_info.clone());
        match &self.custom_metadata {
            serde_json::Value::Null => {}
            serde_json::Value::Object(custom) => {
                for (k, v) in custom {
                    m.insert(k.clone(), v.clone());
                }
            }
            other => {
                m.insert("CustomMetadata".into(), other.clone());
            }
        }
        serde_json::Value::Object(m)
    }
}

/// Current UTC time as RFC 3339 (`2024-01-01T00:00:00Z`).
pub fn now_rfc3339() -> String {
    match der::DateTime::from_system_time(std::time::SystemTime::now()) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            t.year(),
            t.month(),
            t.day(),
            t.hour(),
            t.minutes(),
            t.seconds()
        ),
        Err(_) => "1970-01-01T00:00:00Z".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serializes_like_the_reference_builder() {
        let mut m = Metadata::new("kernel.bin", "eif_build", "0.2.1", "2024-01-01T00:00:00Z");
        m.build_metadata.operating_system = "OS".into();
        m.build_metadata.kernel_version = "kernel".into();
        let expect = br#"{"ImageName":"kernel.bin","ImageVersion":"1.0","BuildMetadata":{"BuildTime":"2024-01-01T00:00:00Z","BuildTool":"eif_build","BuildToolVersion":"0.2.1","OperatingSystem":"OS","KernelVersion":"kernel"},"DockerInfo":null,"CustomMetadata":null}"#;
        assert_eq!(m.to_bytes(), expect.to_vec());
        let back: Metadata = serde_json::from_slice(expect).unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn describe_flattens_custom_objects() {
        let mut m = Metadata::new("n", "t", "v", "now");
        m.custom_metadata = serde_json::json!({"team": "x"});
        let d = m.describe_json();
        assert_eq!(d["team"], "x");
        assert!(d.get("CustomMetadata").is_none());
        m.custom_metadata = serde_json::json!([1]);
        assert_eq!(m.describe_json()["CustomMetadata"], serde_json::json!([1]));
        assert!(now_rfc3339().ends_with('Z'));
    }
}
