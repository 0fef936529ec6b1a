//! The `Settings` objects of ModifySettings (docs/gcs-reference.md §4.14, hcsshim
//! `internal/protocol/guestresource`). Every field is `omitempty`: zero values never appear on the
//! wire and decode from a missing field.

use serde::{Deserialize, Serialize};

use super::negotiate::is_false;
use super::omit::is_zero;

/// `MappedVirtualDisk` (`LCOWMappedVirtualDisk`): a SCSI disk to mount.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MappedVirtualDisk {
    /// Where to mount (or symlink, with `BlockDev`); empty means attach only.
    #[serde(rename = "MountPath", skip_serializing_if = "String::is_empty")]
    pub mount_path: String,
    /// SCSI LUN.
    #[serde(rename = "Lun", skip_serializing_if = "is_zero")]
    pub lun: u8,
    /// SCSI controller index (0-3).
    #[serde(rename = "Controller", skip_serializing_if = "is_zero")]
    pub controller: u8,
    /// Partition number; 0 is the whole disk.
    #[serde(rename = "Partition", skip_serializing_if = "is_zero")]
    pub partition: u64,
    /// Mount read-only.
    #[serde(rename = "ReadOnly", skip_serializing_if = "is_false")]
    pub read_only: bool,
    /// Wrap in dm-crypt with an ephemeral key.
    #[serde(rename = "Encrypted", skip_serializing_if = "is_false")]
    pub encrypted: bool,
    /// Mount options; only propagation flags are applied.
    #[serde(rename = "Options", skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
    /// Symlink `MountPath` to the device instead of mounting it.
    #[serde(rename = "BlockDev", skip_serializing_if = "is_false")]
    pub block_dev: bool,
    /// Deprecated: the guest reads verity metadata itself.
    #[serde(rename = "VerityInfo", skip_serializing_if = "Option::is_none")]
    pub verity_info: Option<DeviceVerityInfo>,
    /// Format with `Filesystem` when the detected type differs.
    #[serde(rename = "EnsureFilesystem", skip_serializing_if = "is_false")]
    pub ensure_filesystem: bool,
    /// Filesystem type, overriding detection.
    #[serde(rename = "Filesystem", skip_serializing_if = "String::is_empty")]
    pub filesystem: String,
}

/// `SCSIDevice`: a SCSI device to unplug (Remove only).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ScsiDevice {
    /// SCSI controller index.
    #[serde(rename = "Controller", skip_serializing_if = "is_zero")]
    pub controller: u8,
    /// SCSI LUN.
    #[serde(rename = "Lun", skip_serializing_if = "is_zero")]
    pub lun: u8,
}

/// `MappedDirectory` (`LCOWMappedDirectory`): a Plan 9 share to mount.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MappedDirectory {
    /// Where to mount.
    #[serde(rename = "MountPath", skip_serializing_if = "String::is_empty")]
    pub mount_path: String,
    /// vsock port of the 9p server (564).
    #[serde(rename = "Port", skip_serializing_if = "is_zero")]
    pub port: i32,
    /// The share's `aname`.
    #[serde(rename = "ShareName", skip_serializing_if = "String::is_empty")]
    pub share_name: String,
    /// Mount read-only.
    #[serde(rename = "ReadOnly", skip_serializing_if = "is_false")]
    pub read_only: bool,
}

/// `VPMemDevice` (`LCOWMappedVPMemDevice`): a read-only layer on `/dev/pmem<N>`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct VpMemDevice {
    /// `N` of `/dev/pmem<N>`.
    #[serde(rename = "DeviceNumber", skip_serializing_if = "is_zero")]
    pub device_number: u32,
    /// Where to mount.
    #[serde(rename = "MountPath", skip_serializing_if = "String::is_empty")]
    pub mount_path: String,
    /// Byte range of this layer when several share one device.
    #[serde(rename = "MappingInfo", skip_serializing_if = "Option::is_none")]
    pub mapping_info: Option<VpMemMappingInfo>,
    /// Deprecated: the guest reads verity metadata itself.
    #[serde(rename = "VerityInfo", skip_serializing_if = "Option::is_none")]
    pub verity_info: Option<DeviceVerityInfo>,
}

/// `LCOWVPMemMappingInfo`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct VpMemMappingInfo {
    /// Offset of the layer in the device.
    #[serde(rename = "DeviceOffsetInBytes", skip_serializing_if = "is_zero")]
    pub device_offset_in_bytes: u64,
    /// Size of the layer.
    #[serde(rename = "DeviceSizeInBytes", skip_serializing_if = "is_zero")]
    pub device_size_in_bytes: u64,
}

/// `DeviceVerityInfo` (deprecated; decoded so old hosts' requests stay valid).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DeviceVerityInfo {
    /// Size of the ext4 filesystem.
    #[serde(rename = "Ext4SizeInBytes", skip_serializing_if = "is_zero")]
    pub ext4_size_in_bytes: i64,
    /// Hash format version.
    #[serde(rename = "Version", skip_serializing_if = "is_zero")]
    pub version: i64,
    /// Hash algorithm.
    #[serde(rename = "Algorithm", skip_serializing_if = "String::is_empty")]
    pub algorithm: String,
    /// A verity superblock is present.
    #[serde(rename = "SuperBlock", skip_serializing_if = "is_false")]
    pub super_block: bool,
    /// Root hash.
    #[serde(rename = "RootDigest", skip_serializing_if = "String::is_empty")]
    pub root_digest: String,
    /// Salt.
    #[serde(rename = "Salt", skip_serializing_if = "String::is_empty")]
    pub salt: String,
    /// Data block size.
    #[serde(rename = "BlockSize", skip_serializing_if = "is_zero")]
    pub block_size: i64,
}

/// `CombinedLayers` (`LCOWCombinedLayers`): an overlay root filesystem.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CombinedLayers {
    /// Container the rootfs is for.
    #[serde(rename = "ContainerID", skip_serializing_if = "String::is_empty")]
    pub container_id: String,
    /// Where the overlay goes (the only field of a Remove).
    #[serde(rename = "ContainerRootPath", skip_serializing_if = "String::is_empty")]
    pub container_root_path: String,
    /// Read-only layers, top-most first; only `Path` is used.
    #[serde(rename = "Layers", skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<Layer>,
    /// Directory holding the overlay `upper` and `work` dirs.
    #[serde(rename = "ScratchPath", skip_serializing_if = "String::is_empty")]
    pub scratch_path: String,
}

/// `hcsschema.Layer`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Layer {
    /// Layer GUID.
    #[serde(rename = "Id", skip_serializing_if = "String::is_empty")]
    pub id: String,
    /// Guest path of the mounted layer.
    #[serde(rename = "Path", skip_serializing_if = "String::is_empty")]
    pub path: String,
    /// `PathType` enum string (a pointer in Go: present even when empty).
    #[serde(rename = "PathType", skip_serializing_if = "Option::is_none")]
    pub path_type: Option<String>,
    /// `CacheMode` enum string (a pointer in Go).
    #[serde(rename = "Cache", skip_serializing_if = "Option::is_none")]
    pub cache: Option<String>,
}

/// `Network` (`LCOWNetworkAdapter`): a NIC to add to or remove from a namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NetworkAdapter {
    /// HNS namespace GUID.
    #[serde(rename = "NamespaceID", skip_serializing_if = "String::is_empty")]
    pub namespace_id: String,
    /// Adapter instance GUID (the VMBus device ID).
    #[serde(rename = "ID", skip_serializing_if = "String::is_empty")]
    pub id: String,
    /// MAC address.
    #[serde(rename = "MacAddress", skip_serializing_if = "String::is_empty")]
    pub mac_address: String,
    /// Comma-separated DNS search list.
    #[serde(rename = "DNSSuffix", skip_serializing_if = "String::is_empty")]
    pub dns_suffix: String,
    /// Comma-separated DNS servers.
    #[serde(rename = "DNSServerList", skip_serializing_if = "String::is_empty")]
    pub dns_server_list: String,
    /// Bytes to subtract from the MTU.
    #[serde(rename = "EncapOverhead", skip_serializing_if = "is_zero")]
    pub encap_overhead: u16,
    /// The NIC is an assigned vPCI device.
    #[serde(rename = "VPCIAssigned", skip_serializing_if = "is_false")]
    pub vpci_assigned: bool,
    /// Static addresses; empty means DHCP.
    #[serde(rename = "IPConfigs", skip_serializing_if = "Vec::is_empty")]
    pub ip_configs: Vec<IpConfig>,
    /// Static routes.
    #[serde(rename = "Routes", skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    /// Use the old policy-based routing.
    #[serde(rename = "PolicyBasedRouting", skip_serializing_if = "is_false")]
    pub policy_based_routing: bool,
    /// Add routes with a low metric (policy-based routing only).
    #[serde(rename = "EnableLowMetric", skip_serializing_if = "is_false")]
    pub enable_low_metric: bool,
    /// Older hosts (hcsshim up to v0.12): the IPv4 address instead of `IPConfigs`.
    #[serde(rename = "IPAddress", skip_serializing_if = "String::is_empty")]
    pub ip_address: String,
    /// Older hosts: its prefix length.
    #[serde(rename = "PrefixLength", skip_serializing_if = "is_zero")]
    pub prefix_length: u8,
    /// Older hosts: the IPv4 gateway (a default route through it).
    #[serde(rename = "GatewayAddress", skip_serializing_if = "String::is_empty")]
    pub gateway_address: String,
    /// Older hosts: the IPv6 address.
    #[serde(rename = "IPv6Address", skip_serializing_if = "String::is_empty")]
    pub ipv6_address: String,
    /// Older hosts: its prefix length.
    #[serde(rename = "IPv6PrefixLength", skip_serializing_if = "is_zero")]
    pub ipv6_prefix_length: u8,
    /// Older hosts: the IPv6 gateway.
    #[serde(rename = "IPv6GatewayAddress", skip_serializing_if = "String::is_empty")]
    pub ipv6_gateway_address: String,
}

/// `LCOWIPConfig`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct IpConfig {
    /// Address.
    #[serde(rename = "IPAddress", skip_serializing_if = "String::is_empty")]
    pub ip_address: String,
    /// Prefix length.
    #[serde(rename = "PrefixLength", skip_serializing_if = "is_zero")]
    pub prefix_length: u8,
}

/// `LCOWRoute`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Route {
    /// Gateway.
    #[serde(rename = "NextHop", skip_serializing_if = "String::is_empty")]
    pub next_hop: String,
    /// Destination.
    #[serde(rename = "DestinationPrefix", skip_serializing_if = "String::is_empty")]
    pub destination_prefix: String,
    /// Metric.
    #[serde(rename = "Metric", skip_serializing_if = "is_zero")]
    pub metric: u16,
}

/// `VPCIDevice` (`LCOWMappedVPCIDevice`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct VpciDevice {
    /// VMBus instance GUID of the device.
    #[serde(rename = "VMBusGUID", skip_serializing_if = "String::is_empty")]
    pub vmbus_guid: String,
}

/// `ContainerConstraints` (`LCOWContainerConstraints`), sent with the container's ID.
///
/// Go's fields are non-pointer structs, so the host always sends both keys (`"Windows":{}`). We
/// encode a `None` as `{}` in Go's order (Windows, then Linux) for the same bytes; a `{}` decodes
/// back as `Some` of the default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ContainerConstraints {
    /// Windows resources; ignored, kept opaque.
    #[serde(rename = "Windows", serialize_with = "none_as_empty_object")]
    pub windows: Option<serde_json::Value>,
    /// The OCI resources for `runc update`.
    #[serde(rename = "Linux", serialize_with = "none_as_empty_object")]
    pub linux: Option<oci_spec::runtime::LinuxResources>,
}

#[allow(clippy::ref_option)] // serde's serialize_with passes a reference to the field
fn none_as_empty_object<T: Serialize, S: serde::Serializer>(v: &Option<T>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => v.serialize(s),
        None => serde::ser::SerializeMap::end(s.serialize_map(Some(0))?),
    }
}

/// `SecurityPolicy` (`ConfidentialOptions`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ConfidentialOptions {
    /// Enforcer name (`rego`, `standard`, ...).
    #[serde(rename = "EnforcerType", skip_serializing_if = "String::is_empty")]
    pub enforcer_type: String,
    /// Base64 policy.
    #[serde(rename = "EncodedSecurityPolicy", skip_serializing_if = "String::is_empty")]
    pub encoded_security_policy: String,
    /// Base64 UVM reference info.
    #[serde(rename = "EncodedUVMReference", skip_serializing_if = "String::is_empty")]
    pub encoded_uvm_reference: String,
    /// Base64 UVM hash envelope reference.
    #[serde(
        rename = "EncodedUVMHashEnvelopeReference",
        skip_serializing_if = "String::is_empty"
    )]
    pub encoded_uvm_hash_envelope_reference: String,
}

/// `SecurityPolicyFragment`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SecurityPolicyFragment {
    /// Base64 COSE_Sign1 blob.
    #[serde(rename = "Fragment", skip_serializing_if = "String::is_empty")]
    pub fragment: String,
    /// Media type of the blob; empty means `application/cose-x509+rego`.
    #[serde(rename = "MediaType", skip_serializing_if = "String::is_empty")]
    pub media_type: String,
}

impl SecurityPolicyFragment {
    /// The media type assumed when `MediaType` is empty.
    pub const DEFAULT_MEDIA_TYPE: &'static str = "application/cose-x509+rego";

    /// `MediaType`, or the default when empty.
    pub fn media_type(&self) -> &str {
        if self.media_type.is_empty() {
            Self::DEFAULT_MEDIA_TYPE
        } else {
            &self.media_type
        }
    }
}
