//! GetProperties (docs/gcs-reference.md §4.12): the double-encoded `Query` and `Properties`.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::metrics::Metrics;
use crate::jsonstr::JsonString;

/// `GetProperties` request body.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GetPropertiesRequest {
    /// What to report, JSON in a string. An empty string means the default query, as in the Go
    /// guest, which decodes `Query` only when it is non-empty.
    #[serde(rename = "Query", deserialize_with = "empty_query_is_default")]
    pub query: JsonString<PropertyQuery>,
}

fn empty_query_is_default<'de, D: Deserializer<'de>>(d: D) -> Result<JsonString<PropertyQuery>, D::Error> {
    let text = String::deserialize(d)?;
    if text.is_empty() {
        return Ok(JsonString::default());
    }
    crate::gojson::from_str(&text)
        .map(JsonString)
        .map_err(serde::de::Error::custom)
}

/// The decoded `Query` (schema1 `PropertyQuery`, or the V2 one with `Queries`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PropertyQuery {
    /// Requested property types; unknown names are kept, not rejected.
    #[serde(rename = "PropertyTypes", skip_serializing_if = "Vec::is_empty")]
    pub property_types: Vec<PropertyType>,
    /// V2 per-type queries; ignored by the Linux guest, kept opaque.
    #[serde(rename = "Queries", skip_serializing_if = "Option::is_none")]
    pub queries: Option<serde_json::Value>,
}

/// A property type name. Only `ProcessList` and `Statistics` do anything in the Linux guest.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PropertyType {
    /// `Memory` (ignored).
    Memory,
    /// `CpuGroup` (ignored).
    CpuGroup,
    /// `Statistics`: cgroup metrics as `LCOWMetrics`.
    Statistics,
    /// `ProcessList`: every PID of the container.
    ProcessList,
    /// `PendingUpdates` (ignored).
    PendingUpdates,
    /// `TerminateOnLastHandleClosed` (ignored).
    TerminateOnLastHandleClosed,
    /// `MappedDirectory` (ignored).
    MappedDirectory,
    /// `SystemGUID` (ignored).
    SystemGuid,
    /// `Network` (ignored).
    Network,
    /// `MappedPipe` (ignored).
    MappedPipe,
    /// `MappedVirtualDisk` (ignored).
    MappedVirtualDisk,
    /// Any other name, kept as sent (never a decode failure).
    Other(String),
}

const PROPERTY_TYPES: [(PropertyType, &str); 11] = [
    (PropertyType::Memory, "Memory"),
    (PropertyType::CpuGroup, "CpuGroup"),
    (PropertyType::Statistics, "Statistics"),
    (PropertyType::ProcessList, "ProcessList"),
    (PropertyType::PendingUpdates, "PendingUpdates"),
    (
        PropertyType::TerminateOnLastHandleClosed,
        "TerminateOnLastHandleClosed",
    ),
    (PropertyType::MappedDirectory, "MappedDirectory"),
    (PropertyType::SystemGuid, "SystemGUID"),
    (PropertyType::Network, "Network"),
    (PropertyType::MappedPipe, "MappedPipe"),
    (PropertyType::MappedVirtualDisk, "MappedVirtualDisk"),
];

impl PropertyType {
    /// The wire name.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Other(name) => name,
            known => PROPERTY_TYPES
                .iter()
                .find(|(t, _)| t == known)
                .map_or("", |(_, name)| name),
        }
    }
}

impl From<&str> for PropertyType {
    /// Known names (compared case-sensitively, as Go does) map to their variant, anything else to
    /// [`PropertyType::Other`].
    fn from(name: &str) -> Self {
        PROPERTY_TYPES
            .iter()
            .find(|(_, n)| *n == name)
            .map_or_else(|| Self::Other(name.to_owned()), |(t, _)| t.clone())
    }
}

impl fmt::Display for PropertyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for PropertyType {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for PropertyType {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        Ok(Self::from(name.as_str()))
    }
}

/// `GetProperties` response body.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GetPropertiesResponse {
    /// The result, JSON in a string (`"{}"` when nothing matched).
    #[serde(rename = "Properties")]
    pub properties: JsonString<Properties>,
}

/// The decoded `Properties` (the guest's `PropertiesV2`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Properties {
    /// Every process of the container.
    #[serde(rename = "ProcessList", skip_serializing_if = "Vec::is_empty")]
    pub process_list: Vec<ProcessDetails>,
    /// Cgroup statistics in containerd's cgroup-v1 `Metrics` JSON.
    #[serde(rename = "LCOWMetrics", skip_serializing_if = "Option::is_none")]
    pub lcow_metrics: Option<Metrics>,
}

/// One `ProcessList` entry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProcessDetails {
    /// PID in the UVM's root PID namespace.
    #[serde(rename = "ProcessId")]
    pub process_id: u32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gojson;

    #[test]
    fn empty_query_is_the_default_query() {
        let r: GetPropertiesRequest = crate::gojson::from_str(r#"{"Query":""}"#).unwrap();
        assert_eq!(r.query.0, PropertyQuery::default());
        assert!(crate::gojson::from_str::<GetPropertiesRequest>(r#"{"Query":"{"}"#).is_err());
    }

    #[test]
    fn unknown_property_types_are_kept() {
        let q: PropertyQuery =
            gojson::from_str(r#"{"propertytypes":["ProcessList","Basic","statistics"],"Queries":{"a":1}}"#)
                .unwrap();
        assert_eq!(
            q.property_types,
            vec![
                PropertyType::ProcessList,
                PropertyType::Other("Basic".into()),
                PropertyType::Other("statistics".into()),
            ]
        );
        assert_eq!(
            serde_json::to_string(&q).unwrap(),
            r#"{"PropertyTypes":["ProcessList","Basic","statistics"],"Queries":{"a":1}}"#
        );
        assert!(gojson::from_str::<PropertyQuery>(r#"{"PropertyTypes":[1]}"#).is_err());
        for (t, name) in PROPERTY_TYPES {
            assert_eq!(PropertyType::from(name), t);
            assert_eq!(t.to_string(), name);
        }
    }

    #[test]
    fn empty_properties_are_an_empty_object() {
        let r = GetPropertiesResponse::default();
        assert_eq!(serde_json::to_string(&r).unwrap(), r#"{"Properties":"{}"}"#);
    }
}
