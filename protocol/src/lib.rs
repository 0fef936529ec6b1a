//! The hcsshim GCS bridge protocol, version 4, as one pure definition shared by the guest agent
//! and the host shim.
//!
//! A frame is a 16-byte little-endian header and a JSON payload:
//!
//! ```text
//!  0        4        8                16            Size
//!  +--------+--------+----------------+-------------+
//!  | Type   | Size   | ID             | payload ... |
//!  +--------+--------+----------------+-------------+
//! ```
//!
//! * [`msgid`] — the `Type` bit layout, every message code, the response rule;
//! * [`frame`] — the header, a bounded incremental decoder and a size-checked encoder;
//! * [`message`] — typed payloads of every request, response and notification;
//! * [`hresult`] — the signed HRESULTs of §5;
//! * [`gojson`] — decoding with Go's `encoding/json` rules (case-insensitive names, null = zero);
//! * [`jsonstr`] — JSON documents carried inside JSON strings;
//! * [`ports`] — the well-known vsock ports;
//! * [`errchain`] — an error and its causes on one line, the same on both sides;
//! * `io` (feature `tokio`): `read_frame` / `write_frame`.
//!
//! The crate does no I/O without the `tokio` feature and contains no `unsafe`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod errchain;
pub mod frame;
pub mod gojson;
pub mod hresult;
#[cfg(feature = "tokio")]
pub mod io;
pub mod jsonstr;
pub mod message;
pub mod msgid;
pub mod ports;

pub use errchain::{error_chain, ErrorChain};
pub use frame::{encode_frame, Frame, FrameDecoder, FrameError, Header, HEADER_LEN};
pub use hresult::HResult;
pub use jsonstr::JsonString;
pub use message::{Request, RequestBase, ResponseBase};
pub use msgid::MessageId;
