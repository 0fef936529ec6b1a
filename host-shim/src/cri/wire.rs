//! Just enough protobuf for the CRI messages rgcs sends and reads: a builder that writes fields
//! by number and a reader that indexes a message's fields by number. Unknown fields are skipped,
//! as protobuf requires.

use std::collections::HashMap;

/// A message being written.
#[derive(Debug, Default, Clone)]
pub struct Msg(Vec<u8>);

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(u8::try_from(v & 0x7f).unwrap_or(0) | 0x80);
        v >>= 7;
    }
    out.push(u8::try_from(v).unwrap_or(0));
}

impl Msg {
    /// An empty message.
    pub fn new() -> Self {
        Self::default()
    }

    fn key(&mut self, field: u32, wire: u8) {
        varint(&mut self.0, (u64::from(field) << 3) | u64::from(wire));
    }

    /// A length-delimited field (string, bytes).
    pub fn bytes(mut self, field: u32, b: &[u8]) -> Self {
        self.key(field, 2);
        varint(&mut self.0, b.len() as u64);
        self.0.extend_from_slice(b);
        self
    }

    /// A string field (left out when empty, as proto3 does).
    pub fn str(self, field: u32, s: &str) -> Self {
        if s.is_empty() {
            self
        } else {
            self.bytes(field, s.as_bytes())
        }
    }

    /// A repeated string field.
    pub fn strs<S: AsRef<str>>(mut self, field: u32, v: &[S]) -> Self {
        for s in v {
            self = self.bytes(field, s.as_ref().as_bytes());
        }
        self
    }

    /// A varint field (uint, int64, bool; left out when zero).
    pub fn uint(mut self, field: u32, v: u64) -> Self {
        if v != 0 {
            self.key(field, 0);
            varint(&mut self.0, v);
        }
        self
    }

    /// A sub-message.
    pub fn msg(self, field: u32, m: &Msg) -> Self {
        self.bytes(field, &m.0)
    }

    /// A `map<string, string>` entry.
    pub fn map_entry(self, field: u32, k: &str, v: &str) -> Self {
        self.msg(field, &Msg::new().str(1, k).str(2, v))
    }

    /// The encoded bytes.
    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }
}

/// A field's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// Varint (and fixed-width numbers, widened).
    Int(u64),
    /// Length-delimited.
    Bytes(Vec<u8>),
}

/// A decoded message: every field's values by number, in order.
#[derive(Debug, Default, Clone)]
pub struct Fields(HashMap<u32, Vec<Value>>);

/// A message that is not valid protobuf.
#[derive(Debug, Clone, thiserror::Error)]
#[error("malformed protobuf message: {0}")]
pub struct Malformed(&'static str);

fn read_varint(b: &[u8], pos: &mut usize) -> Result<u64, Malformed> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*pos).ok_or(Malformed("truncated varint"))?;
        *pos += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(Malformed("varint too long"))
}

fn take<'a>(b: &'a [u8], pos: &mut usize, n: usize) -> Result<&'a [u8], Malformed> {
    let end = pos
        .checked_add(n)
        .filter(|e| *e <= b.len())
        .ok_or(Malformed("truncated field"))?;
    let s = &b[*pos..end];
    *pos = end;
    Ok(s)
}

impl Fields {
    /// Decodes `b`.
    pub fn parse(b: &[u8]) -> Result<Self, Malformed> {
        let mut f: HashMap<u32, Vec<Value>> = HashMap::new();
        let mut pos = 0;
        while pos < b.len() {
            let key = read_varint(b, &mut pos)?;
            let field = u32::try_from(key >> 3).map_err(|_| Malformed("field number"))?;
            let v = match key & 7 {
                0 => Value::Int(read_varint(b, &mut pos)?),
                1 => Value::Int(u64::from_le_bytes(
                    take(b, &mut pos, 8)?
                        .try_into()
                        .map_err(|_| Malformed("fixed64"))?,
                )),
                2 => {
                    let n = usize::try_from(read_varint(b, &mut pos)?).map_err(|_| Malformed("length"))?;
                    Value::Bytes(take(b, &mut pos, n)?.to_vec())
                }
                5 => Value::Int(u64::from(u32::from_le_bytes(
                    take(b, &mut pos, 4)?
                        .try_into()
                        .map_err(|_| Malformed("fixed32"))?,
                ))),
                _ => return Err(Malformed("unsupported wire type")),
            };
            f.entry(field).or_default().push(v);
        }
        Ok(Self(f))
    }

    fn last(&self, field: u32) -> Option<&Value> {
        self.0.get(&field).and_then(|v| v.last())
    }

    /// A string or bytes field ("" when absent).
    pub fn bytes(&self, field: u32) -> Vec<u8> {
        match self.last(field) {
            Some(Value::Bytes(b)) => b.clone(),
            _ => Vec::new(),
        }
    }

    /// A string field.
    pub fn str(&self, field: u32) -> String {
        String::from_utf8_lossy(&self.bytes(field)).into_owned()
    }

    /// A varint field (0 when absent).
    pub fn int(&self, field: u32) -> u64 {
        match self.last(field) {
            Some(Value::Int(v)) => *v,
            _ => 0,
        }
    }

    /// A sub-message (empty when absent).
    pub fn msg(&self, field: u32) -> Result<Fields, Malformed> {
        Fields::parse(&self.bytes(field))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn messages_round_trip() {
        let inner = Msg::new().str(1, "pod").uint(4, 2);
        let m = Msg::new()
            .msg(1, &inner)
            .strs(3, &["a", "bc"])
            .uint(2, 300)
            .str(9, "");
        let f = Fields::parse(&m.into_bytes()).unwrap();
        assert_eq!(f.int(2), 300);
        assert_eq!(f.msg(1).unwrap().str(1), "pod");
        assert_eq!(f.msg(1).unwrap().int(4), 2);
        assert_eq!(f.str(3), "bc");
        assert_eq!(f.str(9), "");
        for bad in [&[0x0a, 0x05, 1][..], &[0x80], &[0x0b]] {
            assert!(Fields::parse(bad).is_err(), "{bad:?}");
        }
    }
}
