//! HRESULTs (docs/gcs-reference.md §5): the `Result` field of every response, a **signed** 32-bit number on
//! the wire. Sending an unsigned value above 2³¹ breaks the host's decoder and kills the bridge, so
//! the type stores an `i32` and serialises as one.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An HRESULT as carried in `Result`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct HResult(pub i32);

impl HResult {
    /// `S_OK`.
    pub const S_OK: Self = Self(0);
    /// `0x80004001` HrNotImpl: unknown message type, message before negotiation, second negotiation.
    pub const NOT_IMPL: Self = Self::from_u32(0x8000_4001);
    /// `0x80004005` HrFail: any error without a more specific code.
    pub const FAIL: Self = Self::from_u32(0x8000_4005);
    /// `0x80070490` HrErrNotFound: unknown PID, process already exited (Signal).
    pub const NOT_FOUND: Self = Self::from_u32(0x8007_0490);
    /// `0x80070057` HrErrInvalidArg.
    pub const INVALID_ARG: Self = Self::from_u32(0x8007_0057);
    /// `0xC0370109` HvVmcomputeTimeout: WaitForProcess timeout.
    pub const TIMEOUT: Self = Self::from_u32(0xC037_0109);
    /// `0xC037010B` HrVmcomputeUnknownMessage (defined, unused by the Linux GCS).
    pub const UNKNOWN_MESSAGE: Self = Self::from_u32(0xC037_010B);
    /// `0xC037010C` HrVmcomputeUnsupportedProtocolVersion.
    pub const UNSUPPORTED_PROTOCOL_VERSION: Self = Self::from_u32(0xC037_010C);
    /// `0xC037010D` HrVmcomputeInvalidJSON: any JSON decode failure, schema version < 2.1.
    pub const INVALID_JSON: Self = Self::from_u32(0xC037_010D);
    /// `0xC037010E` HrVmcomputeSystemNotFound: container ID not found.
    pub const SYSTEM_NOT_FOUND: Self = Self::from_u32(0xC037_010E);
    /// `0xC037010F` HrVmcomputeSystemAlreadyExists: Create with an existing ID.
    pub const SYSTEM_ALREADY_EXISTS: Self = Self::from_u32(0xC037_010F);
    /// `0x80370105` HrVmcomputeInvalidState: container not yet initialised.
    pub const INVALID_STATE: Self = Self::from_u32(0x8037_0105);
    /// `0xC0370110` HrVmcomputeSystemAlreadyStopped (defined, unused).
    pub const SYSTEM_ALREADY_STOPPED: Self = Self::from_u32(0xC037_0110);

    /// Every value of §5, for tables and tests.
    pub const ALL: [Self; 13] = [
        Self::S_OK,
        Self::NOT_IMPL,
        Self::FAIL,
        Self::NOT_FOUND,
        Self::INVALID_ARG,
        Self::TIMEOUT,
        Self::UNKNOWN_MESSAGE,
        Self::UNSUPPORTED_PROTOCOL_VERSION,
        Self::INVALID_JSON,
        Self::SYSTEM_NOT_FOUND,
        Self::SYSTEM_ALREADY_EXISTS,
        Self::INVALID_STATE,
        Self::SYSTEM_ALREADY_STOPPED,
    ];

    /// Reinterprets the hex form (`0x8000_4005`) as the signed wire value.
    pub const fn from_u32(v: u32) -> Self {
        Self(v.cast_signed())
    }

    /// The hex form.
    pub const fn as_u32(self) -> u32 {
        self.0.cast_unsigned()
    }

    /// True for `S_OK` and other success codes (the sign bit clear).
    pub const fn is_success(self) -> bool {
        self.0 >= 0
    }

    /// The name used in hcsshim's sources, if the value is one of §5.
    pub fn name(self) -> Option<&'static str> {
        Some(match self {
            Self::S_OK => "S_OK",
            Self::NOT_IMPL => "HrNotImpl",
            Self::FAIL => "HrFail",
            Self::NOT_FOUND => "HrErrNotFound",
            Self::INVALID_ARG => "HrErrInvalidArg",
            Self::TIMEOUT => "HvVmcomputeTimeout",
            Self::UNKNOWN_MESSAGE => "HrVmcomputeUnknownMessage",
            Self::UNSUPPORTED_PROTOCOL_VERSION => "HrVmcomputeUnsupportedProtocolVersion",
            Self::INVALID_JSON => "HrVmcomputeInvalidJSON",
            Self::SYSTEM_NOT_FOUND => "HrVmcomputeSystemNotFound",
            Self::SYSTEM_ALREADY_EXISTS => "HrVmcomputeSystemAlreadyExists",
            Self::INVALID_STATE => "HrVmcomputeInvalidState",
            Self::SYSTEM_ALREADY_STOPPED => "HrVmcomputeSystemAlreadyStopped",
            _ => return None,
        })
    }
}

impl fmt::Debug for HResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => write!(f, "HResult({:#010x} {n})", self.as_u32()),
            None => write!(f, "HResult({:#010x})", self.as_u32()),
        }
    }
}

impl fmt::Display for HResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#010x}", self.as_u32())?;
        if let Some(n) = self.name() {
            write!(f, " ({n})")?;
        }
        Ok(())
    }
}

impl Serialize for HResult {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i32(self.0)
    }
}

impl<'de> Deserialize<'de> for HResult {
    /// Accepts the signed wire form. An unsigned value in `2^31..2^32` is also accepted and
    /// reinterpreted, to be lenient with peers that get the sign wrong (the reverse never happens:
    /// we always send the signed form).
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = i64::deserialize(d)?;
        if let Ok(v) = i32::try_from(v) {
            return Ok(Self(v));
        }
        match u32::try_from(v) {
            Ok(u) => Ok(Self::from_u32(u)),
            Err(_) => Err(serde::de::Error::custom(format!(
                "HRESULT {v} is out of the 32-bit range"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_decimal_values_from_the_spec() {
        let table = [
            (HResult::NOT_IMPL, -2147467263),
            (HResult::FAIL, -2147467259),
            (HResult::NOT_FOUND, -2147023728),
            (HResult::INVALID_ARG, -2147024809),
            (HResult::TIMEOUT, -1070137079),
            (HResult::UNKNOWN_MESSAGE, -1070137077),
            (HResult::UNSUPPORTED_PROTOCOL_VERSION, -1070137076),
            (HResult::INVALID_JSON, -1070137075),
            (HResult::SYSTEM_NOT_FOUND, -1070137074),
            (HResult::SYSTEM_ALREADY_EXISTS, -1070137073),
            (HResult::INVALID_STATE, -2143878907),
            (HResult::SYSTEM_ALREADY_STOPPED, -1070137072),
        ];
        for (hr, dec) in table {
            assert_eq!(hr.0, dec, "{hr:?}");
            assert_eq!(serde_json::to_string(&hr).unwrap(), dec.to_string());
            assert!(!hr.is_success());
            assert!(hr.name().is_some());
        }
        assert!(HResult::S_OK.is_success());
    }

    #[test]
    fn decodes_signed_and_lenient_unsigned() {
        let hr: HResult = serde_json::from_str("-2147467259").unwrap();
        assert_eq!(hr, HResult::FAIL);
        let hr: HResult = serde_json::from_str("2147500037").unwrap();
        assert_eq!(hr, HResult::FAIL);
        assert!(serde_json::from_str::<HResult>("4294967296").is_err());
        assert_eq!(HResult::FAIL.to_string(), "0x80004005 (HrFail)");
    }
}
