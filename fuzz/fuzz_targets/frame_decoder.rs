//! Arbitrary bytes, split into arbitrary chunks, through `FrameDecoder`, in both modes.
//!
//! Input: `[max_lo, max_hi, mode_and_seed, stream...]`; bit 7 of the third byte selects
//! `skip_oversized`, the rest seeds the chunking. Invariants checked:
//! * the decoder never panics;
//! * after draining (`next_frame` until `Ok(None)` or a fatal `Err`), fewer than `max` bytes stay
//!   buffered, and none after a fatal error; in skipping mode an oversized frame is reported as
//!   `Skipped` (recoverable) and the stream goes on (its payload is discarded as it arrives, so
//!   the `< max` bound holds while waiting for it too);
//! * every frame (and every skipped frame) is exactly the stream's bytes at its offset, with
//!   `payload.len() == Size - 16`;
//! * the chunking does not matter: the events and the final error equal those of a one-shot decode.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rgcs_protocol::frame::{Frame, FrameDecoder, FrameError, Header, HEADER_LEN};

#[derive(Debug, PartialEq)]
enum Event {
    Frame(Frame),
    Skipped { id: u64, size: u32 },
}

fn drain(dec: &mut FrameDecoder, events: &mut Vec<Event>) -> Option<FrameError> {
    loop {
        match dec.next_frame() {
            Ok(Some(f)) => events.push(Event::Frame(f)),
            Ok(None) => {
                assert!(
                    dec.buffered() < dec.max_frame() as usize,
                    "buffered a whole frame"
                );
                assert!(dec.wanted() >= 1 && dec.wanted() <= dec.max_frame() as usize);
                return None;
            }
            Err(FrameError::Skipped { id, size, max, .. }) => {
                assert!(size > max);
                // (what stays buffered now is what followed the skipped frame, checked at Ok(None))
                events.push(Event::Skipped { id, size });
            }
            Err(e) => {
                assert!(!e.is_recoverable());
                assert_eq!(dec.buffered(), 0, "poisoned decoder still buffers");
                return Some(e);
            }
        }
    }
}

fn decoder(max: u32, skip: bool) -> FrameDecoder {
    let d = FrameDecoder::new(max);
    if skip {
        d.skip_oversized(rgcs_protocol::frame::MAX_SKIPPED_FRAME)
    } else {
        d
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let max = 16 + u32::from(u16::from_le_bytes([data[0], data[1]]));
    let skip = data[2] & 0x80 != 0;
    let mut seed = u32::from(data[2] & 0x7f) | 1;
    let stream = &data[3..];

    // chunked
    let mut dec = decoder(max, skip);
    let mut events = Vec::new();
    let mut error = None;
    let mut rest = stream;
    while !rest.is_empty() {
        // xorshift: chunk sizes 0..=64, so empty chunks and byte-by-byte feeding both occur
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        let n = (seed % 65) as usize;
        let (chunk, tail) = rest.split_at(n.min(rest.len()));
        rest = tail;
        dec.extend(chunk);
        if error.is_none() {
            error = drain(&mut dec, &mut events);
        } else {
            assert_eq!(dec.buffered(), 0);
        }
    }

    // one shot
    let mut whole = decoder(max, skip);
    whole.extend(stream);
    let mut whole_events = Vec::new();
    let whole_error = drain(&mut whole, &mut whole_events);
    assert_eq!(events, whole_events);
    assert_eq!(error, whole_error);

    // every event is the stream's bytes at its offset
    let mut off = 0usize;
    for e in &events {
        let mut h = [0u8; HEADER_LEN];
        h.copy_from_slice(&stream[off..off + HEADER_LEN]);
        let header = Header::parse(&h);
        match e {
            Event::Frame(f) => {
                assert!(header.size <= max);
                assert_eq!(f.payload.len(), header.size as usize - HEADER_LEN);
                assert_eq!((f.message, f.id), (header.message, header.id));
                assert_eq!(
                    &f.payload[..],
                    &stream[off + HEADER_LEN..off + header.size as usize]
                );
            }
            Event::Skipped { id, size } => {
                assert!(skip);
                assert_eq!((*id, *size), (header.id, header.size));
            }
        }
        off += header.size as usize;
    }
});
