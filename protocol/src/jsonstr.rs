//! Double-encoded fields (docs/gcs-reference.md §4.3): a JSON document carried as a JSON *string*
//! (`ContainerConfig`, `ProcessParameters`, `Query`, `Properties`). [`JsonString`] hides the
//! second encoding so callers see typed values; the inner document is decoded with Go's rules.

use std::ops::{Deref, DerefMut};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::gojson;

/// A value that travels as a JSON string holding its JSON encoding.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JsonString<T>(pub T);

impl<T> JsonString<T> {
    /// Unwraps the inner value.
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> Deref for JsonString<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T> DerefMut for JsonString<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.0
    }
}

impl<T: Serialize> Serialize for JsonString<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let inner = serde_json::to_string(&self.0).map_err(serde::ser::Error::custom)?;
        s.serialize_str(&inner)
    }
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for JsonString<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        gojson::from_str(&text)
            .map(JsonString)
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    use super::*;

    #[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
    #[serde(default)]
    struct Q {
        #[serde(rename = "PropertyTypes")]
        property_types: Vec<String>,
    }

    #[test]
    fn round_trips_as_a_string() {
        let v = JsonString(Q {
            property_types: vec!["ProcessList".into()],
        });
        let s = serde_json::to_string(&v).unwrap();
        assert_eq!(s, r#""{\"PropertyTypes\":[\"ProcessList\"]}""#);
        let back: JsonString<Q> = serde_json::from_str(&s).unwrap();
        assert_eq!(back, v);
        // the inner document follows Go's rules too
        let back: JsonString<Q> = serde_json::from_str(r#""{\"propertytypes\":null}\n""#).unwrap();
        assert_eq!(back.0, Q::default());
        assert!(serde_json::from_str::<JsonString<Q>>(r#""not json""#).is_err());
        assert!(serde_json::from_str::<JsonString<Q>>(r#"{"PropertyTypes":[]}"#).is_err());
    }
}
