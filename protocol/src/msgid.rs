//! Message identifiers: the 32-bit `Type` field of the frame header (docs/gcs-reference.md §2.3, §2.4).
//!
//! ```text
//!  31..28   27..20      19..8        7..0
//!  [Type ]  [Category]  [Message Id]  [Version]
//! ```
//!
//! This module owns the bit layout, every code of §2.4 and the response-type rule. It does not know
//! payloads (see [`crate::message`]).

use std::fmt;

/// The 4-bit message kind in bits 31..28.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `0x1`: host → guest request.
    Request,
    /// `0x2`: guest → host response.
    Response,
    /// `0x3`: guest → host notification.
    Notification,
    /// Any other value (not produced by hcsshim).
    Other(u8),
}

/// The 8-bit category in bits 27..20.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Category {
    /// `0x01`: ComputeSystem, every LCOW message.
    ComputeSystem,
    /// `0x02`: ComputeService, only the Windows sidecar's ModifyServiceSettings.
    ComputeService,
    /// Any other value.
    Other(u8),
}

/// A message identifier as carried in the header's `Type` field.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(pub u32);

const KIND_SHIFT: u32 = 28;
const CATEGORY_SHIFT: u32 = 20;
const ID_SHIFT: u32 = 8;
const KIND_MASK: u32 = 0xF000_0000;
const RESPONSE_BITS: u32 = 0x2000_0000;
const NOTIFICATION_BITS: u32 = 0x3000_0000;

impl MessageId {
    /// `Create` request.
    pub const CREATE: Self = Self(0x1010_0101);
    /// `Start` request (a no-op in the Linux GCS).
    pub const START: Self = Self(0x1010_0201);
    /// `ShutdownGraceful` request.
    pub const SHUTDOWN_GRACEFUL: Self = Self(0x1010_0301);
    /// `ShutdownForced` request.
    pub const SHUTDOWN_FORCED: Self = Self(0x1010_0401);
    /// `ExecuteProcess` request.
    pub const EXECUTE_PROCESS: Self = Self(0x1010_0501);
    /// `WaitForProcess` request.
    pub const WAIT_FOR_PROCESS: Self = Self(0x1010_0601);
    /// `SignalProcess` request.
    pub const SIGNAL_PROCESS: Self = Self(0x1010_0701);
    /// `ResizeConsole` request.
    pub const RESIZE_CONSOLE: Self = Self(0x1010_0801);
    /// `GetProperties` request.
    pub const GET_PROPERTIES: Self = Self(0x1010_0901);
    /// `ModifySettings` request.
    pub const MODIFY_SETTINGS: Self = Self(0x1010_0A01);
    /// `NegotiateProtocol` request.
    pub const NEGOTIATE_PROTOCOL: Self = Self(0x1010_0B01);
    /// `DumpStacks` request.
    pub const DUMP_STACKS: Self = Self(0x1010_0C01);
    /// `DeleteContainerState` request.
    pub const DELETE_CONTAINER_STATE: Self = Self(0x1010_0D01);
    /// `UpdateContainer` request (not implemented by the Linux GCS).
    pub const UPDATE_CONTAINER: Self = Self(0x1010_0E01);
    /// `LifecycleNotification` request (not implemented by the Linux GCS).
    pub const LIFECYCLE_NOTIFICATION: Self = Self(0x1010_0F01);
    /// `ModifyServiceSettings` request (ComputeService category, Windows only).
    pub const MODIFY_SERVICE_SETTINGS: Self = Self(0x1020_0101);
    /// `ContainerNotification` (ComputeSystemNotificationV1), guest → host, header ID 0.
    pub const CONTAINER_NOTIFICATION: Self = Self(0x3010_0101);

    /// Every request identifier of §2.4, in table order.
    pub const ALL_REQUESTS: [Self; 16] = [
        Self::CREATE,
        Self::START,
        Self::SHUTDOWN_GRACEFUL,
        Self::SHUTDOWN_FORCED,
        Self::EXECUTE_PROCESS,
        Self::WAIT_FOR_PROCESS,
        Self::SIGNAL_PROCESS,
        Self::RESIZE_CONSOLE,
        Self::GET_PROPERTIES,
        Self::MODIFY_SETTINGS,
        Self::NEGOTIATE_PROTOCOL,
        Self::DUMP_STACKS,
        Self::DELETE_CONTAINER_STATE,
        Self::UPDATE_CONTAINER,
        Self::LIFECYCLE_NOTIFICATION,
        Self::MODIFY_SERVICE_SETTINGS,
    ];

    /// Builds an identifier from its four fields. `id` is truncated to 12 bits.
    pub const fn from_parts(kind: u8, category: u8, id: u16, version: u8) -> Self {
        Self(
            ((kind as u32 & 0xF) << KIND_SHIFT)
                | ((category as u32) << CATEGORY_SHIFT)
                | ((id as u32 & 0xFFF) << ID_SHIFT)
                | version as u32,
        )
    }

    /// The kind nibble (bits 31..28).
    pub const fn kind(self) -> Kind {
        match (self.0 >> KIND_SHIFT) as u8 {
            1 => Kind::Request,
            2 => Kind::Response,
            3 => Kind::Notification,
            other => Kind::Other(other),
        }
    }

    /// The category byte (bits 27..20).
    pub const fn category(self) -> Category {
        match ((self.0 >> CATEGORY_SHIFT) & 0xFF) as u8 {
            1 => Category::ComputeSystem,
            2 => Category::ComputeService,
            other => Category::Other(other),
        }
    }

    /// The 12-bit message id (bits 19..8).
    pub const fn id(self) -> u16 {
        ((self.0 >> ID_SHIFT) & 0xFFF) as u16
    }

    /// The version byte (bits 7..0); always 1 in hcsshim.
    pub const fn version(self) -> u8 {
        (self.0 & 0xFF) as u8
    }

    /// The response identifier for a request: `0x20000000 | (request & 0x0FFFFFFF)`.
    ///
    /// hcsshim applies this to every request type, known or not, and so do we.
    pub const fn response(self) -> Self {
        Self(RESPONSE_BITS | (self.0 & !KIND_MASK))
    }

    /// The notification identifier with the same category, id and version.
    pub const fn notification(self) -> Self {
        Self(NOTIFICATION_BITS | (self.0 & !KIND_MASK))
    }

    /// The request identifier this response answers (inverse of [`MessageId::response`]).
    pub const fn request(self) -> Self {
        Self((1 << KIND_SHIFT) | (self.0 & !KIND_MASK))
    }

    /// The name of a known message (for logs), or `None`.
    pub fn name(self) -> Option<&'static str> {
        let name = match self.request() {
            Self::CREATE => "Create",
            Self::START => "Start",
            Self::SHUTDOWN_GRACEFUL => "ShutdownGraceful",
            Self::SHUTDOWN_FORCED => "ShutdownForced",
            Self::EXECUTE_PROCESS => "ExecuteProcess",
            Self::WAIT_FOR_PROCESS => "WaitForProcess",
            Self::SIGNAL_PROCESS => "SignalProcess",
            Self::RESIZE_CONSOLE => "ResizeConsole",
            Self::GET_PROPERTIES => "GetProperties",
            Self::MODIFY_SETTINGS => "ModifySettings",
            Self::NEGOTIATE_PROTOCOL => "NegotiateProtocol",
            Self::DUMP_STACKS => "DumpStacks",
            Self::DELETE_CONTAINER_STATE => "DeleteContainerState",
            Self::UPDATE_CONTAINER => "UpdateContainer",
            Self::LIFECYCLE_NOTIFICATION => "LifecycleNotification",
            Self::MODIFY_SERVICE_SETTINGS => "ModifyServiceSettings",
            _ => return None,
        };
        Some(name)
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({:#010x}", self.0)?;
        if let Some(name) = self.name() {
            let kind = match self.kind() {
                Kind::Request => "",
                Kind::Response => " response",
                Kind::Notification => " notification",
                Kind::Other(_) => " ?",
            };
            write!(f, " {name}{kind}")?;
        }
        f.write_str(")")
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#010x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_codes_match_the_bit_layout() {
        for (i, req) in MessageId::ALL_REQUESTS.iter().take(15).enumerate() {
            assert_eq!(req.kind(), Kind::Request);
            assert_eq!(req.category(), Category::ComputeSystem);
            assert_eq!(usize::from(req.id()), i + 1);
            assert_eq!(req.version(), 1);
            assert_eq!(
                *req,
                MessageId::from_parts(1, 1, u16::try_from(i + 1).unwrap(), 1)
            );
        }
        let mss = MessageId::MODIFY_SERVICE_SETTINGS;
        assert_eq!((mss.category(), mss.id()), (Category::ComputeService, 1));
    }

    #[test]
    fn response_rule() {
        assert_eq!(MessageId::CREATE.response(), MessageId(0x2010_0101));
        assert_eq!(MessageId::MODIFY_SETTINGS.response(), MessageId(0x2010_0A01));
        assert_eq!(MessageId::NEGOTIATE_PROTOCOL.response(), MessageId(0x2010_0B01));
        assert_eq!(
            MessageId::MODIFY_SERVICE_SETTINGS.response(),
            MessageId(0x2020_0101)
        );
        // unknown types get the rule applied too
        assert_eq!(MessageId(0x1234_5678).response(), MessageId(0x2234_5678));
        assert_eq!(
            MessageId::CREATE.notification(),
            MessageId::CONTAINER_NOTIFICATION
        );
        assert_eq!(MessageId(0x2010_0601).request(), MessageId::WAIT_FOR_PROCESS);
    }

    #[test]
    fn names_and_debug() {
        assert_eq!(MessageId::DUMP_STACKS.name(), Some("DumpStacks"));
        assert_eq!(MessageId(0x1010_1001).name(), None);
        assert_eq!(
            format!("{:?}", MessageId::START.response()),
            "MessageId(0x20100201 Start response)"
        );
    }
}
