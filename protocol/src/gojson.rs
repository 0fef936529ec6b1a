//! Go-compatible JSON decoding (what hcsshim's `encoding/json` accepts).
//!
//! serde_json alone differs from Go's decoder in ways the wire depends on:
//!
//! * **Field names match case-insensitively.** Go prefers an exact match and falls back to a
//!   case-insensitive one (old HCS builds sent `CreateInUtilityVm` for `CreateInUtilityVM`). Here a
//!   struct's key is mapped to the declared field name that equals it ignoring ASCII case. Go folds
//!   a few non-ASCII letters too (the Kelvin sign, the long s); no hcsshim field contains them.
//! * **`null` leaves a field at its zero value.** Go ignores `null` for non-pointer fields and sets
//!   pointers, slices and maps to nil; with `#[serde(default)]` structs both are "the default", so
//!   `null` members of a struct are dropped before the struct is built.
//! * **Missing fields decode as zero values**: every wire struct carries `#[serde(default)]`.
//! * Unknown fields are ignored, and trailing white space (the host's encoder ends every message
//!   with `\n`) is accepted.
//!
//! Decoding goes through [`serde_json::Value`] first. Payloads are bounded by the frame limit, and
//! serde_json's recursion limit (128) bounds the depth, so the extra pass is cheap and safe.
//! When two keys of one object fold to the same field, the later one in document order wins, as in
//! Go (serde_json runs with `preserve_order`, so `Value` objects keep document order).

use serde::de::{
    self, DeserializeOwned, DeserializeSeed, EnumAccess, IntoDeserializer, MapAccess, SeqAccess,
    VariantAccess, Visitor,
};
use serde::forward_to_deserialize_any;
use serde_json::{Map, Value};

/// The error type of the Go-compatible decoder (serde_json's).
pub type Error = serde_json::Error;

/// Decodes `T` from JSON bytes with Go's rules.
pub fn from_slice<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    let value: Value = serde_json::from_slice(bytes)?;
    from_value(value)
}

/// Decodes `T` from a JSON string with Go's rules.
pub fn from_str<T: DeserializeOwned>(s: &str) -> Result<T, Error> {
    from_slice(s.as_bytes())
}

/// Decodes `T` from an already parsed value with Go's rules.
pub fn from_value<T: DeserializeOwned>(value: Value) -> Result<T, Error> {
    T::deserialize(GoValue(value))
}

/// A `Deserializer` over a [`Value`] that applies Go's matching rules at every struct it meets.
struct GoValue(Value);

fn visit_value<'de, V: Visitor<'de>>(value: Value, visitor: V) -> Result<V::Value, Error> {
    match value {
        Value::Null => visitor.visit_unit(),
        Value::Bool(b) => visitor.visit_bool(b),
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                visitor.visit_u64(u)
            } else if let Some(i) = n.as_i64() {
                visitor.visit_i64(i)
            } else {
                match n.as_f64() {
                    Some(f) => visitor.visit_f64(f),
                    None => Err(de::Error::custom("number out of range")),
                }
            }
        }
        Value::String(s) => visitor.visit_string(s),
        Value::Array(items) => visitor.visit_seq(GoSeq {
            items: items.into_iter(),
        }),
        Value::Object(map) => visitor.visit_map(GoMap::new(map, None)),
    }
}

impl<'de> de::Deserializer<'de> for GoValue {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visit_value(self.0, visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            Value::Null => visitor.visit_none(),
            other => visitor.visit_some(GoValue(other)),
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            Value::Null => visitor.visit_unit(),
            other => visit_value(other, visitor),
        }
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        match self.0 {
            Value::Object(map) => visitor.visit_map(GoMap::new(map, Some(fields))),
            // Go never decodes an array into a struct; serde's derive would accept one.
            Value::Array(_) => Err(de::Error::invalid_type(de::Unexpected::Seq, &visitor)),
            other => visit_value(other, visitor),
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        match self.0 {
            Value::String(variant) => visitor.visit_enum(GoEnum { variant, value: None }),
            Value::Object(map) if map.len() == 1 => {
                let mut it = map.into_iter();
                match it.next() {
                    Some((variant, value)) => visitor.visit_enum(GoEnum {
                        variant,
                        value: Some(value),
                    }),
                    None => Err(de::Error::custom("empty enum object")),
                }
            }
            other => visit_value(other, visitor),
        }
    }

    forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf seq tuple tuple_struct map identifier ignored_any
    }
}

struct GoSeq {
    items: std::vec::IntoIter<Value>,
}

impl<'de> SeqAccess<'de> for GoSeq {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, Error> {
        match self.items.next() {
            Some(v) => seed.deserialize(GoValue(v)).map(Some),
            None => Ok(None),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

struct GoMap {
    entries: std::vec::IntoIter<(String, Value)>,
    value: Option<Value>,
}

impl GoMap {
    /// `fields` is `Some` for a struct: keys are mapped to declared names and `null`s dropped.
    fn new(map: Map<String, Value>, fields: Option<&'static [&'static str]>) -> Self {
        let mut entries: Vec<(String, Value)> = Vec::with_capacity(map.len());
        match fields {
            None => entries.extend(map),
            Some(fields) => {
                // Keys that name no declared field are dropped here (the struct would ignore them
                // anyway), so `entries` never holds more than `fields.len()` items and the
                // duplicate check stays linear in the input whatever a peer sends.
                for (key, value) in map {
                    if value.is_null() {
                        continue;
                    }
                    let Some(key) = canonical_field(fields, &key) else {
                        continue;
                    };
                    match entries.iter_mut().find(|(k, _)| *k == key) {
                        Some(slot) => slot.1 = value,
                        None => entries.push((key.to_owned(), value)),
                    }
                }
            }
        }
        Self {
            entries: entries.into_iter(),
            value: None,
        }
    }
}

/// The declared field name `key` stands for: itself if declared, else the declared name equal to it
/// ignoring ASCII case, else `None` (an unknown field, which the struct ignores).
fn canonical_field(fields: &[&'static str], key: &str) -> Option<&'static str> {
    fields
        .iter()
        .find(|f| **f == key)
        .or_else(|| fields.iter().find(|f| f.eq_ignore_ascii_case(key)))
        .copied()
}

impl<'de> MapAccess<'de> for GoMap {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, Error> {
        match self.entries.next() {
            Some((key, value)) => {
                self.value = Some(value);
                seed.deserialize(key.into_deserializer()).map(Some)
            }
            None => Ok(None),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        match self.value.take() {
            Some(v) => seed.deserialize(GoValue(v)),
            None => Err(de::Error::custom("map value requested before its key")),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len())
    }
}

struct GoEnum {
    variant: String,
    value: Option<Value>,
}

impl<'de> EnumAccess<'de> for GoEnum {
    type Error = Error;
    type Variant = GoVariant;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, GoVariant), Error> {
        let variant = seed.deserialize(self.variant.into_deserializer())?;
        Ok((variant, GoVariant(self.value)))
    }
}

struct GoVariant(Option<Value>);

impl<'de> VariantAccess<'de> for GoVariant {
    type Error = Error;

    fn unit_variant(self) -> Result<(), Error> {
        match self.0 {
            None | Some(Value::Null) => Ok(()),
            Some(_) => Err(de::Error::custom("unexpected content for a unit variant")),
        }
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, Error> {
        seed.deserialize(GoValue(self.0.unwrap_or(Value::Null)))
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value, Error> {
        de::Deserializer::deserialize_seq(GoValue(self.0.unwrap_or(Value::Null)), visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        de::Deserializer::deserialize_struct(GoValue(self.0.unwrap_or(Value::Null)), "", fields, visitor)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(default)]
    struct Inner {
        #[serde(rename = "CreateInUtilityVM")]
        create_in_utility_vm: bool,
        #[serde(rename = "Lun")]
        lun: u8,
    }

    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(default)]
    struct Outer {
        #[serde(rename = "ContainerId")]
        container_id: String,
        #[serde(rename = "Inner")]
        inner: Inner,
        #[serde(rename = "List")]
        list: Vec<Inner>,
        #[serde(rename = "Env")]
        env: BTreeMap<String, String>,
        #[serde(rename = "Opt")]
        opt: Option<u32>,
    }

    #[test]
    fn case_insensitive_fields_at_every_depth() {
        let o: Outer = from_str(
            r#"{"containerid":"c1","INNER":{"CreateInUtilityVm":true,"lun":3},"list":[{"LUN":1}],"env":{"Path":"/bin"}}"#,
        )
        .unwrap();
        assert_eq!(o.container_id, "c1");
        assert_eq!(
            o.inner,
            Inner {
                create_in_utility_vm: true,
                lun: 3
            }
        );
        assert_eq!(
            o.list,
            vec![Inner {
                create_in_utility_vm: false,
                lun: 1
            }]
        );
        // map keys are data, not field names: kept as sent
        assert_eq!(o.env.get("Path").map(String::as_str), Some("/bin"));
    }

    #[test]
    fn null_and_missing_are_zero_values() {
        let o: Outer = from_str(r#"{"ContainerId":null,"Inner":null,"List":null,"Opt":null}"#).unwrap();
        assert_eq!(o, Outer::default());
        let o: Outer = from_str("{}\n").unwrap();
        assert_eq!(o, Outer::default());
    }

    #[test]
    fn many_unknown_keys_decode_in_linear_time() {
        let mut doc = String::from("{");
        for i in 0..300_000 {
            doc.push_str(&format!("\"k{i}\":{i},"));
        }
        doc.push_str("\"ContainerId\":\"c\"}");
        let t = std::time::Instant::now();
        let o: Outer = from_str(&doc).unwrap();
        assert_eq!(o.container_id, "c");
        // A complexity guard, not a speed goal: quadratic matching needs minutes for this input,
        // linear matching well under a second even unoptimised; the bound is far from both.
        assert!(
            t.elapsed() < std::time::Duration::from_secs(60),
            "{:?}",
            t.elapsed()
        );
    }

    #[test]
    fn later_spelling_wins_like_go() {
        let o: Outer = from_str(r#"{"containerid":"first","ContainerId":"second"}"#).unwrap();
        assert_eq!(o.container_id, "second");
        let o: Outer = from_str(r#"{"ContainerId":"first","CONTAINERID":"second"}"#).unwrap();
        assert_eq!(o.container_id, "second");
    }

    #[test]
    fn exact_match_wins_and_unknown_fields_are_ignored() {
        let o: Outer = from_str(r#"{"ContainerId":"exact","Whatever":[1,2,{"a":null}]}"#).unwrap();
        assert_eq!(o.container_id, "exact");
    }

    #[test]
    fn type_errors_and_garbage_are_errors() {
        assert!(from_str::<Outer>(r#"{"ContainerId":5}"#).is_err());
        assert!(from_str::<Outer>(r#"{"Inner":{"Lun":256}}"#).is_err());
        assert!(from_str::<Outer>(r#"{"Inner":[1]}"#).is_err());
        assert!(from_str::<Outer>("{} x").is_err());
        assert!(from_str::<Outer>("").is_err());
        assert!(from_str::<Outer>("[]").is_err());
    }

    #[test]
    fn enums_decode_from_strings() {
        #[derive(Debug, Deserialize, PartialEq)]
        enum E {
            Add,
            Remove,
        }
        assert_eq!(from_str::<E>(r#""Remove""#).unwrap(), E::Remove);
        // values (unlike field names) stay case-sensitive, as in Go's string compares
        assert!(from_str::<E>(r#""remove""#).is_err());
    }
}
