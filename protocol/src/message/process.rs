//! Process messages: ExecuteProcess (§4.7), WaitForProcess (§4.8), SignalProcess (§4.9) and
//! ResizeConsole (§4.10).
//!
//! `ProcessParameters` is the union of what the host sends (`hcsschema.ProcessParameters` plus
//! `OciProcess`, in that field order) and what the guest declares (`OciSpecification`); every field
//! is `omitempty` on both sides.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::negotiate::is_false;
use super::omit::is_zero;
use crate::jsonstr::JsonString;

/// `ExecuteProcess` request body.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ExecuteProcessRequest {
    /// What to run and how to connect its stdio.
    #[serde(rename = "Settings")]
    pub settings: ExecuteProcessSettings,
}

/// `ExecuteProcessSettings`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ExecuteProcessSettings {
    /// The process description, JSON in a string.
    #[serde(rename = "ProcessParameters")]
    pub process_parameters: JsonString<ProcessParameters>,
    /// Windows-only hvsock GUIDs; never sent to Linux, kept opaque.
    #[serde(rename = "StdioRelaySettings", skip_serializing_if = "Option::is_none")]
    pub stdio_relay_settings: Option<serde_json::Value>,
    /// The vsock ports the guest dials for each requested pipe.
    #[serde(rename = "VsockStdioRelaySettings")]
    pub vsock_stdio_relay_settings: VsockStdioRelaySettings,
}

/// `ExecuteProcessVsockStdioRelaySettings`: one vsock port per pipe, 0 (omitted) when not requested.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct VsockStdioRelaySettings {
    /// stdin port.
    #[serde(rename = "StdIn", skip_serializing_if = "is_zero")]
    pub std_in: u32,
    /// stdout port.
    #[serde(rename = "StdOut", skip_serializing_if = "is_zero")]
    pub std_out: u32,
    /// stderr port.
    #[serde(rename = "StdErr", skip_serializing_if = "is_zero")]
    pub std_err: u32,
}

/// The decoded `ProcessParameters`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProcessParameters {
    /// Windows only.
    #[serde(rename = "ApplicationName", skip_serializing_if = "String::is_empty")]
    pub application_name: String,
    /// Command line, split with shell word rules when `CommandArgs` is empty (UVM processes).
    #[serde(rename = "CommandLine", skip_serializing_if = "String::is_empty")]
    pub command_line: String,
    /// Argument vector, preferred over `CommandLine` (UVM processes).
    #[serde(rename = "CommandArgs", skip_serializing_if = "Vec::is_empty")]
    pub command_args: Vec<String>,
    /// Ignored by Linux.
    #[serde(rename = "User", skip_serializing_if = "String::is_empty")]
    pub user: String,
    /// Working directory (UVM processes); empty means the agent's own.
    #[serde(rename = "WorkingDirectory", skip_serializing_if = "String::is_empty")]
    pub working_directory: String,
    /// The exact environment of a UVM process.
    #[serde(rename = "Environment", skip_serializing_if = "BTreeMap::is_empty")]
    pub environment: BTreeMap<String, String>,
    /// Windows only.
    #[serde(rename = "RestrictedToken", skip_serializing_if = "is_false")]
    pub restricted_token: bool,
    /// Allocate a pty for a UVM process.
    #[serde(rename = "EmulateConsole", skip_serializing_if = "is_false")]
    pub emulate_console: bool,
    /// Dial the stdin port.
    #[serde(rename = "CreateStdInPipe", skip_serializing_if = "is_false")]
    pub create_std_in_pipe: bool,
    /// Dial the stdout port.
    #[serde(rename = "CreateStdOutPipe", skip_serializing_if = "is_false")]
    pub create_std_out_pipe: bool,
    /// Dial the stderr port.
    #[serde(rename = "CreateStdErrPipe", skip_serializing_if = "is_false")]
    pub create_std_err_pipe: bool,
    /// `[height, width]`; ignored by Linux. hcsschema types it `[]int32`: decoding it narrower
    /// would fail requests the Go guest accepts.
    #[serde(rename = "ConsoleSize", skip_serializing_if = "Vec::is_empty")]
    pub console_size: Vec<i32>,
    /// Run in the UVM rather than the container (old hosts spelled it `CreateInUtilityVm`; the
    /// decoder matches names case-insensitively).
    #[serde(rename = "CreateInUtilityVM", skip_serializing_if = "is_false")]
    pub create_in_utility_vm: bool,
    /// Windows only.
    #[serde(rename = "UseExistingLogin", skip_serializing_if = "is_false")]
    pub use_existing_login: bool,
    /// Windows only.
    #[serde(rename = "UseLegacyConsole", skip_serializing_if = "is_false")]
    pub use_legacy_console: bool,
    /// Legacy (unused in v4); kept opaque.
    #[serde(rename = "OciSpecification", skip_serializing_if = "Option::is_none")]
    pub oci_specification: Option<serde_json::Value>,
    /// Absent: start the container's init process. Present: exec an extra process.
    #[serde(rename = "OciProcess", skip_serializing_if = "Option::is_none")]
    pub oci_process: Option<oci_spec::runtime::Process>,
}

/// `ExecuteProcess` response body.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ExecuteProcessResponse {
    /// PID in the UVM's root PID namespace.
    #[serde(rename = "ProcessId")]
    pub process_id: u32,
}

/// `WaitForProcess` request body.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct WaitForProcessRequest {
    /// The process to wait for.
    #[serde(rename = "ProcessId")]
    pub process_id: u32,
    /// Timeout in milliseconds; [`WaitForProcessRequest::INFINITE`] waits forever.
    #[serde(rename = "TimeoutInMs")]
    pub timeout_in_ms: u32,
}

impl WaitForProcessRequest {
    /// `TimeoutInMs` value meaning "no timeout" (`0xFFFFFFFF`).
    pub const INFINITE: u32 = u32::MAX;

    /// The timeout, `None` when infinite.
    pub fn timeout(&self) -> Option<std::time::Duration> {
        (self.timeout_in_ms != Self::INFINITE)
            .then(|| std::time::Duration::from_millis(u64::from(self.timeout_in_ms)))
    }
}

/// `WaitForProcess` response body.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct WaitForProcessResponse {
    /// Exit status; 128+signo for signalled container processes, `u32::MAX` for signalled UVM ones.
    #[serde(rename = "ExitCode")]
    pub exit_code: u32,
}

/// `SignalProcess` request body.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SignalProcessRequest {
    /// The process to signal.
    #[serde(rename = "ProcessId")]
    pub process_id: u32,
    /// The signal; absent for the host's `Kill()`.
    #[serde(rename = "Options", skip_serializing_if = "Option::is_none")]
    pub options: Option<SignalProcessOptions>,
}

/// `SIGKILL`, the signal of a SignalProcess without options or with signal 0.
pub const SIGKILL: i32 = 9;

impl SignalProcessRequest {
    /// The signal to deliver: `Options.Signal`, or `SIGKILL` when absent or 0.
    pub fn signal(&self) -> i32 {
        match self.options {
            Some(SignalProcessOptions { signal }) if signal != 0 => signal,
            _ => SIGKILL,
        }
    }
}

/// `SignalProcessOptionsLCOW`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SignalProcessOptions {
    /// Linux signal number; omitted when 0.
    #[serde(rename = "Signal", skip_serializing_if = "is_zero")]
    pub signal: i32,
}

/// `ResizeConsole` request body.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ResizeConsoleRequest {
    /// The process whose pty to resize.
    #[serde(rename = "ProcessId")]
    pub process_id: u32,
    /// Rows.
    #[serde(rename = "Height")]
    pub height: u16,
    /// Columns.
    #[serde(rename = "Width")]
    pub width: u16,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gojson;

    #[test]
    fn signal_defaults_to_sigkill() {
        let s = |json: &str| gojson::from_str::<SignalProcessRequest>(json).unwrap().signal();
        assert_eq!(s(r#"{"ProcessId":1}"#), SIGKILL);
        assert_eq!(s(r#"{"ProcessId":1,"Options":null}"#), SIGKILL);
        assert_eq!(s(r#"{"ProcessId":1,"Options":{}}"#), SIGKILL);
        assert_eq!(s(r#"{"ProcessId":1,"Options":{"Signal":0}}"#), SIGKILL);
        assert_eq!(s(r#"{"ProcessId":1,"Options":{"signal":15}}"#), 15);
    }

    #[test]
    fn wait_timeout() {
        let w = WaitForProcessRequest {
            process_id: 1,
            timeout_in_ms: WaitForProcessRequest::INFINITE,
        };
        assert_eq!(w.timeout(), None);
        let w = WaitForProcessRequest {
            timeout_in_ms: 50,
            ..w
        };
        assert_eq!(w.timeout(), Some(std::time::Duration::from_millis(50)));
    }

    #[test]
    fn old_utility_vm_spelling_decodes() {
        let p: ProcessParameters = gojson::from_str(r#"{"CreateInUtilityVm":true}"#).unwrap();
        assert!(p.create_in_utility_vm);
        assert_eq!(
            serde_json::to_string(&p).unwrap(),
            r#"{"CreateInUtilityVM":true}"#
        );
    }
}
