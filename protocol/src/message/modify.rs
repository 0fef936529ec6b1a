//! ModifySettings (docs/gcs-reference.md §4.13, §4.14): `{"Request":{"RequestType","ResourceType","Settings"}}`,
//! with `Settings` typed by `ResourceType`.
//!
//! Decoding follows hcsshim's `UnmarshalContainerModifySettings`: an empty `RequestType` is `Add`;
//! `Settings` of a known resource type must decode as that type (a JSON error, `0xC037010D`,
//! otherwise; absent or `null` settings are such an error too, as `json.Unmarshal` of nothing
//! fails in Go); `PodCgroupMemoryLimit` ignores its settings; any other resource type decodes to
//! [`Resource::Unsupported`], which the agent answers with `0x80004005`.

use std::fmt;

use serde::de::{self, DeserializeOwned};
use serde::ser::SerializeStruct;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use super::resources::{
    CombinedLayers, ConfidentialOptions, ContainerConstraints, MappedDirectory, MappedVirtualDisk,
    NetworkAdapter, ScsiDevice, SecurityPolicyFragment, VpMemDevice, VpciDevice,
};
use crate::gojson;

/// `ModifySettings` request body.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ModifySettingsRequest {
    /// The modification (a plain object, not double-encoded).
    #[serde(rename = "Request")]
    pub request: ModificationRequest,
}

/// `guestrequest.ModificationRequest` with its settings decoded.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModificationRequest {
    /// The operation.
    pub request_type: RequestType,
    /// The resource type and its typed settings.
    pub resource: Resource,
}

impl ModificationRequest {
    /// A request of `request_type` for `resource`.
    pub fn new(request_type: RequestType, resource: Resource) -> Self {
        Self {
            request_type,
            resource,
        }
    }
}

/// `RequestType`: never a decode failure; unknown values are kept as sent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub enum RequestType {
    /// `Add`, also what an empty or missing value means.
    #[default]
    Add,
    /// `Remove`.
    Remove,
    /// `Update`.
    Update,
    /// `PreAdd` (Windows networking only).
    PreAdd,
    /// Any other non-empty value.
    Other(String),
}

impl RequestType {
    /// The wire name.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Add => "Add",
            Self::Remove => "Remove",
            Self::Update => "Update",
            Self::PreAdd => "PreAdd",
            Self::Other(s) => s,
        }
    }
}

impl From<&str> for RequestType {
    /// Case-sensitive, as Go compares them; `""` is `Add`.
    fn from(s: &str) -> Self {
        match s {
            "" | "Add" => Self::Add,
            "Remove" => Self::Remove,
            "Update" => Self::Update,
            "PreAdd" => Self::PreAdd,
            other => Self::Other(other.to_owned()),
        }
    }
}

impl fmt::Display for RequestType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for RequestType {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for RequestType {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Self::from(String::deserialize(d)?.as_str()))
    }
}

/// Wire names of the resource types (`ResourceType`).
pub mod resource_type {
    /// `MappedVirtualDisk`.
    pub const MAPPED_VIRTUAL_DISK: &str = "MappedVirtualDisk";
    /// `SCSIDevice`.
    pub const SCSI_DEVICE: &str = "SCSIDevice";
    /// `MappedDirectory`.
    pub const MAPPED_DIRECTORY: &str = "MappedDirectory";
    /// `VPMemDevice`.
    pub const VPMEM_DEVICE: &str = "VPMemDevice";
    /// `CombinedLayers`.
    pub const COMBINED_LAYERS: &str = "CombinedLayers";
    /// `Network`.
    pub const NETWORK: &str = "Network";
    /// `VPCIDevice`.
    pub const VPCI_DEVICE: &str = "VPCIDevice";
    /// `ContainerConstraints`.
    pub const CONTAINER_CONSTRAINTS: &str = "ContainerConstraints";
    /// `SecurityPolicy`.
    pub const SECURITY_POLICY: &str = "SecurityPolicy";
    /// `SecurityPolicyFragment`.
    pub const SECURITY_POLICY_FRAGMENT: &str = "SecurityPolicyFragment";
    /// `PodCgroupMemoryLimit`.
    pub const POD_CGROUP_MEMORY_LIMIT: &str = "PodCgroupMemoryLimit";
    /// Resource types only Windows guests handle; the Linux guest rejects them with `0x80004005`.
    pub const WINDOWS_ONLY: [&str; 5] = [
        "HvSocket",
        "NetworkNamespace",
        "MappedVirtualDiskForContainerScratch",
        "WCOWBlockCims",
        "CWCOWCombinedLayers",
    ];
}

/// A resource type with its typed settings.
#[derive(Debug, Clone, PartialEq)]
pub enum Resource {
    /// `MappedVirtualDisk`.
    MappedVirtualDisk(MappedVirtualDisk),
    /// `SCSIDevice`.
    ScsiDevice(ScsiDevice),
    /// `MappedDirectory`.
    MappedDirectory(MappedDirectory),
    /// `VPMemDevice`.
    VpMemDevice(VpMemDevice),
    /// `CombinedLayers`.
    CombinedLayers(CombinedLayers),
    /// `Network`.
    Network(NetworkAdapter),
    /// `VPCIDevice`.
    VpciDevice(VpciDevice),
    /// `ContainerConstraints`.
    ContainerConstraints(Box<ContainerConstraints>),
    /// `SecurityPolicy`.
    SecurityPolicy(ConfidentialOptions),
    /// `SecurityPolicyFragment`.
    SecurityPolicyFragment(SecurityPolicyFragment),
    /// `PodCgroupMemoryLimit` (settings are ignored and never sent).
    PodCgroupMemoryLimit,
    /// A Windows-only or unknown resource type, kept as sent (settings `Null` when absent).
    Unsupported {
        /// The `ResourceType` as sent (may be empty).
        resource_type: String,
        /// The raw settings.
        settings: Value,
    },
}

impl Default for Resource {
    /// What `"Request":{}` decodes to: an unsupported empty resource type.
    fn default() -> Self {
        Self::Unsupported {
            resource_type: String::new(),
            settings: Value::Null,
        }
    }
}

impl Resource {
    /// The `ResourceType` wire name.
    pub fn resource_type(&self) -> &str {
        use resource_type as rt;
        match self {
            Self::MappedVirtualDisk(_) => rt::MAPPED_VIRTUAL_DISK,
            Self::ScsiDevice(_) => rt::SCSI_DEVICE,
            Self::MappedDirectory(_) => rt::MAPPED_DIRECTORY,
            Self::VpMemDevice(_) => rt::VPMEM_DEVICE,
            Self::CombinedLayers(_) => rt::COMBINED_LAYERS,
            Self::Network(_) => rt::NETWORK,
            Self::VpciDevice(_) => rt::VPCI_DEVICE,
            Self::ContainerConstraints(_) => rt::CONTAINER_CONSTRAINTS,
            Self::SecurityPolicy(_) => rt::SECURITY_POLICY,
            Self::SecurityPolicyFragment(_) => rt::SECURITY_POLICY_FRAGMENT,
            Self::PodCgroupMemoryLimit => rt::POD_CGROUP_MEMORY_LIMIT,
            Self::Unsupported { resource_type, .. } => resource_type,
        }
    }

    /// Decodes `settings` for `resource_type` with Go's rules. `settings` is `None` when the field
    /// was absent or `null`.
    pub fn decode(name: &str, settings: Option<Value>) -> Result<Self, gojson::Error> {
        use self::resource_type as rt;
        fn typed<T: DeserializeOwned>(rtype: &str, v: Option<Value>) -> Result<T, gojson::Error> {
            match v {
                Some(v) => gojson::from_value(v),
                None => Err(de::Error::custom(format!(
                    "ModifySettings {rtype}: Settings is missing"
                ))),
            }
        }
        Ok(match name {
            rt::MAPPED_VIRTUAL_DISK => Self::MappedVirtualDisk(typed(name, settings)?),
            rt::SCSI_DEVICE => Self::ScsiDevice(typed(name, settings)?),
            rt::MAPPED_DIRECTORY => Self::MappedDirectory(typed(name, settings)?),
            rt::VPMEM_DEVICE => Self::VpMemDevice(typed(name, settings)?),
            rt::COMBINED_LAYERS => Self::CombinedLayers(typed(name, settings)?),
            rt::NETWORK => Self::Network(typed(name, settings)?),
            rt::VPCI_DEVICE => Self::VpciDevice(typed(name, settings)?),
            rt::CONTAINER_CONSTRAINTS => Self::ContainerConstraints(Box::new(typed(name, settings)?)),
            rt::SECURITY_POLICY => Self::SecurityPolicy(typed(name, settings)?),
            rt::SECURITY_POLICY_FRAGMENT => Self::SecurityPolicyFragment(typed(name, settings)?),
            rt::POD_CGROUP_MEMORY_LIMIT => Self::PodCgroupMemoryLimit,
            other => Self::Unsupported {
                resource_type: other.to_owned(),
                settings: settings.unwrap_or(Value::Null),
            },
        })
    }
}

/// The wire form, decoded with Go's rules before `Settings` is typed.
#[derive(Deserialize, Default)]
#[serde(default)]
struct WireRequest {
    #[serde(rename = "RequestType")]
    request_type: RequestType,
    #[serde(rename = "ResourceType")]
    resource_type: String,
    #[serde(rename = "Settings")]
    settings: Option<Value>,
}

impl<'de> Deserialize<'de> for ModificationRequest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let wire = WireRequest::deserialize(d)?;
        // `null` (dropped by gojson, kept by plain serde_json) means no settings.
        let settings = wire.settings.filter(|v| !v.is_null());
        let resource = Resource::decode(&wire.resource_type, settings).map_err(de::Error::custom)?;
        Ok(Self {
            request_type: wire.request_type,
            resource,
        })
    }
}

impl Serialize for ModificationRequest {
    /// `RequestType`, `ResourceType`, `Settings`, each omitted when empty (Go's `omitempty` on a
    /// string and a nil interface).
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("ModificationRequest", 3)?;
        let rtype = self.request_type.as_str();
        if rtype.is_empty() {
            st.skip_field("RequestType")?;
        } else {
            st.serialize_field("RequestType", rtype)?;
        }
        let resource_type = self.resource.resource_type();
        if resource_type.is_empty() {
            st.skip_field("ResourceType")?;
        } else {
            st.serialize_field("ResourceType", resource_type)?;
        }
        match &self.resource {
            Resource::MappedVirtualDisk(v) => st.serialize_field("Settings", v)?,
            Resource::ScsiDevice(v) => st.serialize_field("Settings", v)?,
            Resource::MappedDirectory(v) => st.serialize_field("Settings", v)?,
            Resource::VpMemDevice(v) => st.serialize_field("Settings", v)?,
            Resource::CombinedLayers(v) => st.serialize_field("Settings", v)?,
            Resource::Network(v) => st.serialize_field("Settings", v)?,
            Resource::VpciDevice(v) => st.serialize_field("Settings", v)?,
            Resource::ContainerConstraints(v) => st.serialize_field("Settings", v)?,
            Resource::SecurityPolicy(v) => st.serialize_field("Settings", v)?,
            Resource::SecurityPolicyFragment(v) => st.serialize_field("Settings", v)?,
            Resource::PodCgroupMemoryLimit
            | Resource::Unsupported {
                settings: Value::Null,
                ..
            } => st.skip_field("Settings")?,
            Resource::Unsupported { settings, .. } => st.serialize_field("Settings", settings)?,
        }
        st.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(json: &str) -> Result<ModifySettingsRequest, gojson::Error> {
        gojson::from_str(json)
    }

    #[test]
    fn request_type_defaults_and_unknowns() {
        let r = decode(r#"{"Request":{"ResourceType":"SCSIDevice","Settings":{}}}"#).unwrap();
        assert_eq!(r.request.request_type, RequestType::Add);
        assert_eq!(r.request.resource, Resource::ScsiDevice(ScsiDevice::default()));
        let r = decode(r#"{"request":{"requesttype":"Frobnicate","resourcetype":"VPCIDevice","settings":{"vmbusguid":"g"}}}"#)
            .unwrap();
        assert_eq!(r.request.request_type, RequestType::Other("Frobnicate".into()));
        assert_eq!(
            r.request.resource,
            Resource::VpciDevice(VpciDevice {
                vmbus_guid: "g".into()
            })
        );
        assert!(decode(r#"{"Request":{"RequestType":7}}"#).is_err());
    }

    #[test]
    fn unknown_and_windows_types_are_unsupported_not_errors() {
        for t in resource_type::WINDOWS_ONLY.iter().chain(&["Bogus", ""]) {
            let json = format!(r#"{{"Request":{{"ResourceType":"{t}","Settings":{{"x":[1]}}}}}}"#);
            let r = decode(&json).unwrap();
            assert_eq!(r.request.resource.resource_type(), *t);
            assert!(matches!(r.request.resource, Resource::Unsupported { .. }));
        }
        // Go compares resource types case-sensitively
        let r = decode(r#"{"Request":{"ResourceType":"mappedvirtualdisk","Settings":{}}}"#).unwrap();
        assert!(matches!(r.request.resource, Resource::Unsupported { .. }));
    }

    #[test]
    fn bad_or_missing_settings_of_known_types_are_errors() {
        assert!(
            decode(r#"{"Request":{"ResourceType":"MappedVirtualDisk","Settings":{"Lun":256}}}"#).is_err()
        );
        assert!(decode(r#"{"Request":{"ResourceType":"MappedVirtualDisk","Settings":[]}}"#).is_err());
        assert!(decode(r#"{"Request":{"ResourceType":"Network"}}"#).is_err());
        assert!(decode(r#"{"Request":{"ResourceType":"Network","Settings":null}}"#).is_err());
        let r = decode(
            r#"{"Request":{"RequestType":"Update","ResourceType":"PodCgroupMemoryLimit","Settings":"junk"}}"#,
        )
        .unwrap();
        assert_eq!(r.request.resource, Resource::PodCgroupMemoryLimit);
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"Request":{"RequestType":"Update","ResourceType":"PodCgroupMemoryLimit"}}"#
        );
    }

    #[test]
    fn zero_values_are_omitted() {
        let r = ModifySettingsRequest {
            request: ModificationRequest::new(
                RequestType::Remove,
                Resource::MappedVirtualDisk(MappedVirtualDisk {
                    mount_path: "/m".into(),
                    ..MappedVirtualDisk::default()
                }),
            ),
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"Request":{"RequestType":"Remove","ResourceType":"MappedVirtualDisk","Settings":{"MountPath":"/m"}}}"#
        );
        let c = ModificationRequest::new(
            RequestType::Update,
            Resource::ContainerConstraints(Box::default()),
        );
        assert_eq!(
            serde_json::to_string(&c).unwrap(),
            r#"{"RequestType":"Update","ResourceType":"ContainerConstraints","Settings":{"Windows":{},"Linux":{}}}"#
        );
    }
}
