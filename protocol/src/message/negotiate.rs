//! NegotiateProtocol and capabilities (docs/gcs-reference.md §3, §4.4).

use serde::{Deserialize, Serialize};

/// The only protocol version hcsshim's guest (and rgcs) speaks.
pub const PROTOCOL_VERSION: u32 = 4;

/// `NegotiateProtocol` request body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NegotiateProtocolRequest {
    /// Lowest version the host accepts.
    #[serde(rename = "MinimumVersion")]
    pub minimum_version: u32,
    /// Highest version the host accepts.
    #[serde(rename = "MaximumVersion")]
    pub maximum_version: u32,
}

impl NegotiateProtocolRequest {
    /// The version the guest picks, or `None` if the range excludes 4 (→ `0xC037010C`).
    pub fn choose(&self) -> Option<u32> {
        if self.maximum_version < PROTOCOL_VERSION || self.minimum_version > PROTOCOL_VERSION {
            None
        } else {
            Some(PROTOCOL_VERSION.min(self.maximum_version))
        }
    }
}

/// `NegotiateProtocol` response body.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NegotiateProtocolResponse {
    /// The chosen version (the host fails the connection unless it is 4).
    #[serde(rename = "Version")]
    pub version: u32,
    /// What the guest supports.
    #[serde(rename = "Capabilities")]
    pub capabilities: GcsCapabilities,
}

/// A schema version `{Major, Minor}`; both `omitempty` in hcsshim (guest `prot.SchemaVersion`,
/// host `hcsschema.Version`), so 2.0 is `{"Major":2}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(default)]
pub struct SchemaVersion {
    /// Major version.
    #[serde(rename = "Major", skip_serializing_if = "super::omit::is_zero")]
    pub major: u32,
    /// Minor version.
    #[serde(rename = "Minor", skip_serializing_if = "super::omit::is_zero")]
    pub minor: u32,
}

impl SchemaVersion {
    /// Schema 2.1, the minimum `ContainerConfig` schema the v4 guest accepts.
    pub const V2_1: Self = Self { major: 2, minor: 1 };
}

/// The `Capabilities` object (§3.2).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GcsCapabilities {
    /// Host sends Create for the UVM on cold start. False for Linux.
    #[serde(rename = "SendHostCreateMessage", skip_serializing_if = "is_false")]
    pub send_host_create_message: bool,
    /// Host sends Start for the UVM after that Create. False for Linux.
    #[serde(rename = "SendHostStartMessage", skip_serializing_if = "is_false")]
    pub send_host_start_message: bool,
    /// Windows-only HvSocket configuration. False for Linux.
    #[serde(rename = "HvSocketConfigOnStartup", skip_serializing_if = "is_false")]
    pub hv_socket_config_on_startup: bool,
    /// Parsed by the host, unused.
    #[serde(rename = "SendLifecycleNotifications", skip_serializing_if = "is_false")]
    pub send_lifecycle_notifications: bool,
    /// Informational: `[{"Major":2,"Minor":1}]`.
    #[serde(rename = "SupportedSchemaVersions", skip_serializing_if = "Vec::is_empty")]
    pub supported_schema_versions: Vec<SchemaVersion>,
    /// `"Linux"`; an empty value means Windows to the host.
    #[serde(rename = "RuntimeOsType", skip_serializing_if = "String::is_empty")]
    pub runtime_os_type: String,
    /// LCOW guest-defined capabilities.
    #[serde(rename = "GuestDefinedCapabilities")]
    pub guest_defined_capabilities: GuestDefinedCapabilities,
    /// Windows log forwarding; not sent by Linux.
    #[serde(rename = "ModifyServiceSettingsSupported", skip_serializing_if = "is_false")]
    pub modify_service_settings_supported: bool,
}

impl GcsCapabilities {
    /// What a Linux GCS announces (§3.1 sample).
    pub fn linux() -> Self {
        Self {
            supported_schema_versions: vec![SchemaVersion::V2_1],
            runtime_os_type: "Linux".to_owned(),
            guest_defined_capabilities: GuestDefinedCapabilities {
                namespace_add_request_supported: true,
                signal_process_supported: true,
                dump_stacks_supported: true,
                delete_container_state_supported: true,
            },
            ..Self::default()
        }
    }
}

/// `GuestDefinedCapabilities` for LCOW.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct GuestDefinedCapabilities {
    /// Host may send `Network` Add/Remove.
    #[serde(rename = "NamespaceAddRequestSupported", skip_serializing_if = "is_false")]
    pub namespace_add_request_supported: bool,
    /// Host may send arbitrary signals.
    #[serde(rename = "SignalProcessSupported", skip_serializing_if = "is_false")]
    pub signal_process_supported: bool,
    /// DumpStacks is available.
    #[serde(rename = "DumpStacksSupported", skip_serializing_if = "is_false")]
    pub dump_stacks_supported: bool,
    /// DeleteContainerState is available.
    #[serde(rename = "DeleteContainerStateSupported", skip_serializing_if = "is_false")]
    pub delete_container_state_supported: bool,
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference
pub(crate) fn is_false(b: &bool) -> bool {
    !*b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choose_follows_the_spec() {
        let r = |min, max| {
            NegotiateProtocolRequest {
                minimum_version: min,
                maximum_version: max,
            }
            .choose()
        };
        assert_eq!(r(4, 4), Some(4));
        assert_eq!(r(1, 9), Some(4));
        assert_eq!(r(1, 3), None);
        assert_eq!(r(5, 9), None);
    }

    #[test]
    fn linux_capabilities_match_the_sample() {
        let resp = NegotiateProtocolResponse {
            version: 4,
            capabilities: GcsCapabilities::linux(),
        };
        assert_eq!(
            serde_json::to_string(&resp).unwrap(),
            r#"{"Version":4,"Capabilities":{"SupportedSchemaVersions":[{"Major":2,"Minor":1}],"RuntimeOsType":"Linux","GuestDefinedCapabilities":{"NamespaceAddRequestSupported":true,"SignalProcessSupported":true,"DumpStacksSupported":true,"DeleteContainerStateSupported":true}}}"#
        );
    }
}
