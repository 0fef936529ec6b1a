//! Create (docs/gcs-reference.md §4.5): `ContainerCreate`, its double-encoded `ContainerConfig`, and the
//! response.
//!
//! hcsshim's guest declares the request as `ContainerConfig string` plus the legacy
//! `SupportedVersions`; the host's `ContainerConfig` is an `AnyInString` holding its
//! `linuxHostedSystem {SchemaVersion, OciBundlePath, OciSpecification, ScratchDirPath}` with no
//! `omitempty` at all. We encode the bundle and scratch paths always (as the host does) and the spec
//! only when present (the guest's tag; the host always sets it).

use serde::{Deserialize, Deserializer, Serialize};

use super::negotiate::SchemaVersion;
use crate::jsonstr::JsonString;

/// `Create` request body.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ContainerCreate {
    /// The container's configuration, JSON in a string. `None` when the field is absent or the
    /// empty string: the agent must answer that with `0xC037010D` (Go fails to decode `""`), see
    /// [`ContainerCreate::config`].
    #[serde(
        rename = "ContainerConfig",
        skip_serializing_if = "Option::is_none",
        deserialize_with = "empty_string_is_none"
    )]
    pub container_config: Option<JsonString<ContainerConfig>>,
    /// Legacy protocol-v3 version range; the current host never sends it.
    #[serde(rename = "SupportedVersions", skip_serializing_if = "Option::is_none")]
    pub supported_versions: Option<ProtocolSupport>,
}

fn empty_string_is_none<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<JsonString<ContainerConfig>>, D::Error> {
    let text = String::deserialize(d)?;
    if text.is_empty() {
        return Ok(None);
    }
    crate::gojson::from_str(&text)
        .map(|c| Some(JsonString(c)))
        .map_err(serde::de::Error::custom)
}

/// Why a `Create` request's configuration is unusable (all map to `0xC037010D`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// `ContainerConfig` was absent or empty.
    #[error("ContainerConfig is missing")]
    Missing,
    /// `SchemaVersion` is below 2.1 (this includes the legacy v1 `VMHostedContainerSettings`,
    /// which carries no schema version).
    #[error("unsupported ContainerConfig schema version {major}.{minor} (need 2.1 or later)")]
    UnsupportedSchema {
        /// Major version sent.
        major: u32,
        /// Minor version sent.
        minor: u32,
    },
}

impl ContainerCreate {
    /// The configuration, checked as the Go guest checks it: present and schema ≥ 2.1.
    pub fn config(&self) -> Result<&ContainerConfig, ConfigError> {
        let config = self.container_config.as_deref().ok_or(ConfigError::Missing)?;
        config.check_schema()?;
        Ok(config)
    }
}

/// `SupportedVersions` (legacy `ProtocolSupport`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProtocolSupport {
    /// Lowest schema version string.
    #[serde(rename = "MinimumVersion", skip_serializing_if = "String::is_empty")]
    pub minimum_version: String,
    /// Highest schema version string.
    #[serde(rename = "MaximumVersion", skip_serializing_if = "String::is_empty")]
    pub maximum_version: String,
    /// Lowest protocol version.
    #[serde(rename = "MinimumProtocolVersion")]
    pub minimum_protocol_version: u32,
    /// Highest protocol version.
    #[serde(rename = "MaximumProtocolVersion")]
    pub maximum_protocol_version: u32,
}

/// The decoded `ContainerConfig` (`VMHostedContainerSettingsV2`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ContainerConfig {
    /// Must be at least 2.1.
    #[serde(rename = "SchemaVersion")]
    pub schema_version: SchemaVersion,
    /// Bundle directory in the guest (`/run/gcs/c/<cid>`).
    #[serde(rename = "OciBundlePath")]
    pub oci_bundle_path: String,
    /// The full OCI runtime spec, already rewritten for the guest by the host.
    #[serde(rename = "OciSpecification", skip_serializing_if = "Option::is_none")]
    pub oci_specification: Option<oci_spec::runtime::Spec>,
    /// Guest path of the container's scratch directory.
    #[serde(rename = "ScratchDirPath")]
    pub scratch_dir_path: String,
}

impl ContainerConfig {
    /// The schema check of §4.5: `SchemaVersion` must be ≥ 2.1.
    pub fn check_schema(&self) -> Result<(), ConfigError> {
        if self.schema_version >= SchemaVersion::V2_1 {
            Ok(())
        } else {
            Err(ConfigError::UnsupportedSchema {
                major: self.schema_version.major,
                minor: self.schema_version.minor,
            })
        }
    }
}

/// `Create` response body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ContainerCreateResponse {
    /// Legacy v3 selected schema version; omitted when empty (always, in v4).
    #[serde(rename = "SelectedVersion", skip_serializing_if = "String::is_empty")]
    pub selected_version: String,
    /// Legacy v3 selected protocol version; always present, the guest sends 0.
    #[serde(rename = "SelectedProtocolVersion")]
    pub selected_protocol_version: u32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gojson;

    #[test]
    fn config_checks_presence_and_schema() {
        let c: ContainerCreate = gojson::from_str(r#"{"ContainerConfig":""}"#).unwrap();
        assert_eq!(c.config(), Err(ConfigError::Missing));
        let c: ContainerCreate = gojson::from_str("{}").unwrap();
        assert_eq!(c.config(), Err(ConfigError::Missing));
        let c: ContainerCreate =
            gojson::from_str(r#"{"ContainerConfig":"{\"SchemaVersion\":{\"Major\":2}}"}"#).unwrap();
        assert_eq!(
            c.config(),
            Err(ConfigError::UnsupportedSchema { major: 2, minor: 0 })
        );
        // the legacy v1 shape has no SchemaVersion: rejected the same way
        let c: ContainerCreate = gojson::from_str(
            r#"{"ContainerConfig":"{\"Layers\":[{\"Path\":\"x\"}],\"SandboxDataPath\":\"1\"}"}"#,
        )
        .unwrap();
        assert!(matches!(c.config(), Err(ConfigError::UnsupportedSchema { .. })));
        let c: ContainerCreate = gojson::from_str(
            r#"{"ContainerConfig":"{\"SchemaVersion\":{\"Major\":3,\"Minor\":0},\"OciBundlePath\":\"/b\"}"}"#,
        )
        .unwrap();
        assert_eq!(c.config().unwrap().oci_bundle_path, "/b");
        assert!(gojson::from_str::<ContainerCreate>(r#"{"ContainerConfig":"{"}"#).is_err());
        assert!(gojson::from_str::<ContainerCreate>(r#"{"ContainerConfig":5}"#).is_err());
    }

    #[test]
    fn response_shape() {
        let r = ContainerCreateResponse::default();
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"SelectedProtocolVersion":0}"#
        );
    }
}
