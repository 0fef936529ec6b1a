//! ContainerNotification, guest → host, type `0x30100101`, header ID 0 (docs/gcs-reference.md §4.17).

use serde::{Deserialize, Serialize};

use crate::hresult::HResult;

/// Why the container's init exited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum NotificationType {
    /// The default: nobody asked it to stop.
    #[default]
    UnexpectedExit,
    /// A SIGTERM was sent to init through Shutdown or Signal.
    GracefulExit,
    /// A SIGKILL was sent to init.
    ForcedExit,
    /// Defined, unused.
    None,
    /// Defined, unused.
    Reboot,
    /// Defined, unused.
    Constructed,
    /// Defined, unused.
    Started,
    /// Defined, unused.
    Paused,
    /// Defined, unused.
    Unknown,
}

/// The operation field; the Linux guest always sends `"None"`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ActiveOperation {
    /// Always used.
    #[default]
    None,
    /// Defined, unused.
    Construct,
    /// Defined, unused.
    Start,
    /// Defined, unused.
    Pause,
    /// Defined, unused.
    Resume,
    /// Defined, unused.
    Shutdown,
    /// Defined, unused.
    Terminate,
}

/// The notification payload.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ContainerNotification {
    /// Container whose init exited.
    #[serde(rename = "ContainerId")]
    pub container_id: String,
    /// The `ActivityId` of the Create request.
    #[serde(rename = "ActivityId", skip_serializing_if = "String::is_empty")]
    pub activity_id: String,
    /// Exit kind.
    #[serde(rename = "Type")]
    pub notification_type: NotificationType,
    /// Always `None`.
    #[serde(rename = "Operation")]
    pub operation: ActiveOperation,
    /// Always 0.
    #[serde(rename = "Result")]
    pub result: HResult,
    /// JSON in a string on the host side; never set by the Linux guest.
    #[serde(rename = "ResultInfo", skip_serializing_if = "String::is_empty")]
    pub result_info: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_appendix_a_sample() {
        let n = ContainerNotification {
            container_id: "c1".into(),
            activity_id: crate::message::NULL_ACTIVITY_ID.into(),
            notification_type: NotificationType::GracefulExit,
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_string(&n).unwrap(),
            r#"{"ContainerId":"c1","ActivityId":"00000000-0000-0000-0000-000000000000","Type":"GracefulExit","Operation":"None","Result":0}"#
        );
    }
}
