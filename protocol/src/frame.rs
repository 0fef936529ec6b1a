//! Framing (docs/gcs-reference.md §2.1): a 16-byte little-endian header followed by a JSON payload.
//!
//! ```text
//!  0        4        8                16            Size
//!  +--------+--------+----------------+-------------+
//!  | Type   | Size   | ID             | payload ... |
//!  | u32 LE | u32 LE | u64 LE         | UTF-8 JSON  |
//!  +--------+--------+----------------+-------------+
//!  Size = total length, header included (>= 16).
//! ```
//!
//! [`FrameDecoder`] is incremental and pure: bytes in, whole frames out. It validates `Size` against
//! `16..=max` *before* it reserves anything, so a hostile peer cannot make it allocate more than
//! `max` bytes, and it never panics on any input (fuzzed). [`encode_frame`] refuses a frame over the
//! limit the receiving side enforces (64 KiB for guest → host, hcsshim's `MaxMsgSize`).

use crate::msgid::MessageId;

/// Length of the frame header.
pub const HEADER_LEN: usize = 16;

/// [`HEADER_LEN`] as the type of the header's `size` field.
// cast: HEADER_LEN is the constant 16, which fits in u32.
#[allow(clippy::cast_possible_truncation)]
const HEADER_LEN_U32: u32 = HEADER_LEN as u32;

/// The largest frame hcsshim's host accepts from the guest (`0x10000`, header included). A larger
/// one is a fatal bridge error on the host, so the guest must never send one.
pub const MAX_GUEST_TO_HOST: u32 = 0x1_0000;

/// Our default bound on host → guest frames. hcsshim does not bound them (its guest allocates
/// whatever `Size` says); the largest realistic requests are OCI specs and security policy
/// fragments, far below this. Configurable per decoder.
pub const DEFAULT_MAX_HOST_TO_GUEST: u32 = 4 << 20;

/// The largest frame a skipping decoder discards and survives ([`FrameDecoder::skip_oversized`]).
/// A header claiming more is not a request that happens to be big but a broken or hostile peer
/// (a `Size` near 4 GiB would keep the reader discarding bytes that never come): it is fatal.
pub const MAX_SKIPPED_FRAME: u32 = 64 << 20;

/// A decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Message identifier (`Type`).
    pub message: MessageId,
    /// Total frame length including the header.
    pub size: u32,
    /// Request / response correlation ID.
    pub id: u64,
}

impl Header {
    /// Parses a header from exactly 16 bytes. No validation of `size` happens here.
    pub fn parse(bytes: &[u8; HEADER_LEN]) -> Self {
        let [t0, t1, t2, t3, s0, s1, s2, s3, i0, i1, i2, i3, i4, i5, i6, i7] = *bytes;
        Self {
            message: MessageId(u32::from_le_bytes([t0, t1, t2, t3])),
            size: u32::from_le_bytes([s0, s1, s2, s3]),
            id: u64::from_le_bytes([i0, i1, i2, i3, i4, i5, i6, i7]),
        }
    }

    /// Serialises the header.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0..4].copy_from_slice(&self.message.0.to_le_bytes());
        out[4..8].copy_from_slice(&self.size.to_le_bytes());
        out[8..16].copy_from_slice(&self.id.to_le_bytes());
        out
    }

    /// Payload length (`size - 16`), or an error if `size` is outside `16..=max`.
    pub fn payload_len(&self, max: u32) -> Result<usize, FrameError> {
        if self.size < HEADER_LEN_U32 {
            return Err(FrameError::TooSmall { size: self.size });
        }
        if self.size > max {
            return Err(FrameError::TooLarge { size: self.size, max });
        }
        Ok(self.size as usize - HEADER_LEN)
    }
}

/// One whole frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Message identifier.
    pub message: MessageId,
    /// Correlation ID.
    pub id: u64,
    /// JSON payload bytes (`Size - 16` of them).
    pub payload: Vec<u8>,
}

/// Framing errors. Every one of them is fatal for the connection: after a bad `Size` the stream
/// cannot be re-synchronised.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// `Size` is below the header length.
    #[error("frame size {size} is smaller than the 16-byte header")]
    TooSmall {
        /// The `Size` field.
        size: u32,
    },
    /// `Size` is above the configured maximum.
    #[error("frame size {size} exceeds the maximum of {max} bytes")]
    TooLarge {
        /// The `Size` field (or the size the frame would have).
        size: u32,
        /// The limit in force.
        max: u32,
    },
    /// In skipping mode ([`FrameDecoder::skip_oversized`]): a frame over the maximum, whose header
    /// is intact, is being discarded without being buffered; the stream stays usable and the
    /// sender can be answered by `id`.
    #[error("frame {id} of type {message} is {size} bytes, over the maximum of {max}: skipped")]
    Skipped {
        /// The frame's `Type`.
        message: MessageId,
        /// The frame's `ID`.
        id: u64,
        /// Its `Size`.
        size: u32,
        /// The limit in force.
        max: u32,
    },
}

impl FrameError {
    /// Whether the stream can go on after this error (only a skipped oversized frame).
    pub fn is_recoverable(&self) -> bool {
        matches!(self, Self::Skipped { .. })
    }
}

/// Incremental frame decoder.
///
/// Feed bytes with [`FrameDecoder::extend`], then call [`FrameDecoder::next_frame`] until it
/// returns `Ok(None)`. After an error the decoder is poisoned and keeps returning the error.
#[derive(Debug)]
pub struct FrameDecoder {
    max: u32,
    buf: Vec<u8>,
    error: Option<FrameError>,
    /// Frames over `max` and at most this large are skipped; 0 = skipping is off.
    skip_up_to: u32,
    /// Bytes of a skipped frame still to be discarded as they arrive.
    skipping: usize,
}

impl FrameDecoder {
    /// A decoder that accepts frames of at most `max` bytes (header included). `max` below 16 is
    /// raised to 16.
    pub fn new(max: u32) -> Self {
        Self {
            max: max.max(HEADER_LEN_U32),
            buf: Vec::new(),
            error: None,
            skip_up_to: 0,
            skipping: 0,
        }
    }

    /// Skip, rather than fail on, frames over the maximum and at most `up_to` bytes:
    /// `next_frame` returns [`FrameError::Skipped`] once for such a frame, discards its payload as
    /// it arrives (never buffering it) and goes on. `Size < 16` and `Size > up_to` stay fatal
    /// ([`MAX_SKIPPED_FRAME`] is the agent's bound).
    pub fn skip_oversized(mut self, up_to: u32) -> Self {
        self.skip_up_to = up_to;
        self
    }

    /// Whether the decoder is inside a frame: it holds part of one, or is discarding a skipped
    /// one. A reader bounds how long a peer may stall there.
    pub fn in_frame(&self) -> bool {
        !self.buf.is_empty() || self.skipping > 0
    }

    /// The limit in force.
    pub fn max_frame(&self) -> u32 {
        self.max
    }

    /// Number of buffered bytes not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// How many more bytes are needed before the next call to `next_frame` can make progress.
    /// Readers use it to size their reads; it is at most `max`.
    pub fn wanted(&self) -> usize {
        if self.skipping > 0 {
            return self.skipping.min(self.max as usize);
        }
        if self.buf.len() < HEADER_LEN {
            return HEADER_LEN - self.buf.len();
        }
        match self.peek_header().payload_len(self.max) {
            Ok(len) => (HEADER_LEN + len).saturating_sub(self.buf.len()).max(1),
            Err(_) => 1,
        }
    }

    /// Appends received bytes.
    ///
    /// The buffer holds what the caller handed over and not yet returned as frames; once
    /// `next_frame` has returned `Ok(None)` it holds less than one frame (`< max`). A header whose
    /// `Size` is out of bounds poisons the decoder at the next `next_frame`, before any payload is
    /// retained, and a poisoned decoder drops whatever it is given.
    pub fn extend(&mut self, bytes: &[u8]) {
        if self.error.is_some() {
            return;
        }
        let discard = self.skipping.min(bytes.len());
        self.skipping -= discard;
        self.buf.extend_from_slice(&bytes[discard..]);
    }

    fn peek_header(&self) -> Header {
        let mut h = [0u8; HEADER_LEN];
        h.copy_from_slice(&self.buf[..HEADER_LEN]);
        Header::parse(&h)
    }

    /// Returns the next complete frame, `Ok(None)` when more bytes are needed, or the framing error.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        if self.buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let header = self.peek_header();
        let len = match header.payload_len(self.max) {
            Ok(len) => len,
            Err(FrameError::TooLarge { size, max }) if size <= self.skip_up_to => {
                // Discard what is buffered of it now and the rest as it arrives.
                let total = size as usize;
                let have = self.buf.len().min(total);
                self.buf.drain(..have);
                self.skipping = total - have;
                return Err(FrameError::Skipped {
                    message: header.message,
                    id: header.id,
                    size,
                    max,
                });
            }
            Err(e) => {
                self.buf = Vec::new();
                self.error = Some(e.clone());
                return Err(e);
            }
        };
        if self.buf.len() < HEADER_LEN + len {
            return Ok(None);
        }
        let payload = self.buf[HEADER_LEN..HEADER_LEN + len].to_vec();
        self.buf.drain(..HEADER_LEN + len);
        Ok(Some(Frame {
            message: header.message,
            id: header.id,
            payload,
        }))
    }
}

/// Encodes one frame, refusing it if the total size would exceed `max`.
pub fn encode_frame(message: MessageId, id: u64, payload: &[u8], max: u32) -> Result<Vec<u8>, FrameError> {
    let total = HEADER_LEN.saturating_add(payload.len());
    let size = u32::try_from(total).unwrap_or(u32::MAX);
    if size > max || total > u32::MAX as usize {
        return Err(FrameError::TooLarge { size, max });
    }
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&Header { message, size, id }.to_bytes());
    out.extend_from_slice(payload);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame_bytes(message: u32, size: u32, id: u64, payload: &[u8]) -> Vec<u8> {
        let mut v = Header {
            message: MessageId(message),
            size,
            id,
        }
        .to_bytes()
        .to_vec();
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn header_is_little_endian() {
        let h = Header {
            message: MessageId::NEGOTIATE_PROTOCOL,
            size: 0x0102_0304,
            id: 0x1122_3344_5566_7788,
        };
        let b = h.to_bytes();
        assert_eq!(&b[..4], &[0x01, 0x0B, 0x10, 0x10]);
        assert_eq!(&b[4..8], &[0x04, 0x03, 0x02, 0x01]);
        assert_eq!(&b[8..], &[0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11]);
        assert_eq!(Header::parse(&b), h);
    }

    #[test]
    fn decodes_byte_by_byte_and_back_to_back() {
        let mut stream = frame_bytes(0x1010_0B01, 16 + 2, 0, b"{}");
        stream.extend(frame_bytes(0x1010_0201, 16, 7, b""));
        let mut dec = FrameDecoder::new(1024);
        let mut frames = Vec::new();
        for b in &stream {
            dec.extend(std::slice::from_ref(b));
            while let Some(f) = dec.next_frame().unwrap() {
                frames.push(f);
            }
        }
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0].payload, b"{}");
        assert_eq!((frames[1].message, frames[1].id), (MessageId::START, 7));
        assert_eq!(dec.buffered(), 0);
    }

    #[test]
    fn rejects_small_and_large_sizes_before_buffering_payload() {
        let mut dec = FrameDecoder::new(64);
        dec.extend(&frame_bytes(0x1010_0101, 15, 0, b""));
        assert_eq!(dec.next_frame(), Err(FrameError::TooSmall { size: 15 }));
        // poisoned
        assert!(dec.next_frame().is_err());

        let mut dec = FrameDecoder::new(64);
        dec.extend(&frame_bytes(0x1010_0101, u32::MAX, 0, b""));
        assert_eq!(
            dec.next_frame(),
            Err(FrameError::TooLarge {
                size: u32::MAX,
                max: 64
            })
        );
        assert_eq!(dec.buffered(), 0);
        // a poisoned decoder does not keep buffering
        dec.extend(&[0u8; 1000]);
        assert_eq!(dec.buffered(), 0);
    }

    #[test]
    fn skipping_mode_discards_an_oversized_frame_and_goes_on() {
        let mut stream = frame_bytes(0x1010_0A01, 16 + 100, 9, &[b'x'; 100]);
        stream.extend(frame_bytes(0x1010_0201, 16 + 2, 10, b"{}"));
        let mut dec = FrameDecoder::new(64).skip_oversized(MAX_SKIPPED_FRAME);
        let mut out = Vec::new();
        // byte by byte: the oversized payload is never buffered
        for b in &stream {
            dec.extend(std::slice::from_ref(b));
            assert!(dec.buffered() <= 64);
            loop {
                match dec.next_frame() {
                    Ok(Some(f)) => out.push(Ok(f.id)),
                    Ok(None) => break,
                    Err(e) => out.push(Err(e)),
                }
            }
        }
        assert_eq!(
            out,
            vec![
                Err(FrameError::Skipped {
                    message: MessageId(0x1010_0A01),
                    id: 9,
                    size: 116,
                    max: 64
                }),
                Ok(10)
            ]
        );
        // Size < 16 stays fatal in skipping mode
        let mut dec = FrameDecoder::new(64).skip_oversized(MAX_SKIPPED_FRAME);
        dec.extend(&frame_bytes(0x1010_0101, 3, 0, b""));
        assert_eq!(dec.next_frame(), Err(FrameError::TooSmall { size: 3 }));
        // so is a frame beyond the skip bound: a ~4 GiB claim is not skipped (its bytes never come)
        let mut dec = FrameDecoder::new(64).skip_oversized(MAX_SKIPPED_FRAME);
        dec.extend(&frame_bytes(0x1010_0101, 0xFFFF_FFF0, 5, b"{}"));
        assert_eq!(
            dec.next_frame(),
            Err(FrameError::TooLarge {
                size: 0xFFFF_FFF0,
                max: 64
            })
        );
        assert!(!dec.in_frame(), "a poisoned decoder holds nothing");
        assert!(!FrameError::TooSmall { size: 3 }.is_recoverable());
    }

    #[test]
    fn wanted_tracks_progress() {
        let mut dec = FrameDecoder::new(64);
        assert_eq!(dec.wanted(), 16);
        dec.extend(&frame_bytes(0x1010_0101, 20, 0, b"ab"));
        assert_eq!(dec.wanted(), 2);
        dec.extend(b"cd");
        assert!(dec.next_frame().unwrap().is_some());
        assert_eq!(dec.wanted(), 16);
    }

    #[test]
    fn encoder_refuses_oversized_frames() {
        let ok = encode_frame(
            MessageId::CREATE.response(),
            3,
            &[b'x'; 65536 - 16],
            MAX_GUEST_TO_HOST,
        )
        .unwrap();
        assert_eq!(ok.len(), 65536);
        let err = encode_frame(
            MessageId::CREATE.response(),
            3,
            &[b'x'; 65536 - 15],
            MAX_GUEST_TO_HOST,
        );
        assert_eq!(
            err,
            Err(FrameError::TooLarge {
                size: 65537,
                max: MAX_GUEST_TO_HOST
            })
        );
    }
}
