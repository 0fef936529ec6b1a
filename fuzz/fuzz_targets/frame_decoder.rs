//! Arbitrary bytes, split into arbitrary chunks, through `FrameDecoder`.
//!
//! Input: `[max_lo, max_hi, chunk_seed, stream...]`. Invariants checked:
//! * the decoder never panics;
//! * after draining (`next_frame` until `Ok(None)` or `Err`), fewer than `max` bytes stay buffered,
//!   and none after an error;
//! * every frame is exactly the bytes of the stream at its offset, with `payload.len() == Size - 16`;
//! * the chunking does not matter: the frames and the final error equal those of a one-shot decode.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rgcs_protocol::frame::{Frame, FrameDecoder, FrameError, Header, HEADER_LEN};

fn drain(dec: &mut FrameDecoder, frames: &mut Vec<Frame>) -> Option<FrameError> {
    loop {
        match dec.next_frame() {
            Ok(Some(f)) => frames.push(f),
            Ok(None) => {
                assert!(dec.buffered() < dec.max_frame() as usize, "buffered a whole frame");
                assert!(dec.wanted() >= 1 && dec.wanted() <= dec.max_frame() as usize);
                return None;
            }
            Err(e) => {
                assert_eq!(dec.buffered(), 0, "poisoned decoder still buffers");
                return Some(e);
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let max = 16 + u32::from(u16::from_le_bytes([data[0], data[1]]));
    let mut seed = u32::from(data[2]) | 1;
    let stream = &data[3..];

    // chunked
    let mut dec = FrameDecoder::new(max);
    let mut frames = Vec::new();
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
            error = drain(&mut dec, &mut frames);
        } else {
            assert_eq!(dec.buffered(), 0);
        }
    }

    // one shot
    let mut whole = FrameDecoder::new(max);
    whole.extend(stream);
    let mut whole_frames = Vec::new();
    let whole_error = drain(&mut whole, &mut whole_frames);
    assert_eq!(frames, whole_frames);
    assert_eq!(error, whole_error);

    // every frame is the stream's bytes at its offset
    let mut off = 0usize;
    for f in &frames {
        let mut h = [0u8; HEADER_LEN];
        h.copy_from_slice(&stream[off..off + HEADER_LEN]);
        let header = Header::parse(&h);
        assert!(header.size <= max);
        assert_eq!(f.payload.len(), header.size as usize - HEADER_LEN);
        assert_eq!((f.message, f.id), (header.message, header.id));
        assert_eq!(&f.payload[..], &stream[off + HEADER_LEN..off + header.size as usize]);
        off += header.size as usize;
    }
});
