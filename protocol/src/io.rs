//! Async frame I/O over tokio streams (feature `tokio`). Nothing else in the crate does I/O.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::frame::{Frame, FrameDecoder, FrameError};

/// Errors of [`read_frame`] and [`write_frame`].
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    /// The stream failed.
    #[error("bridge i/o failed")]
    Io(#[from] std::io::Error),
    /// The peer sent a frame that violates the framing rules.
    #[error("bad frame from the peer")]
    Frame(#[from] FrameError),
    /// The stream ended inside a frame.
    #[error("the stream ended inside a frame ({buffered} bytes buffered)")]
    Truncated {
        /// Bytes of the partial frame.
        buffered: usize,
    },
    /// The peer stopped sending in the middle of a frame for longer than the bound.
    #[error("no byte arrived for {0:?} in the middle of a frame")]
    Stalled(std::time::Duration),
}

/// Reads the next frame. `Ok(None)` is a clean end of stream between frames.
///
/// Reads are sized by [`FrameDecoder::wanted`], so no more than one frame's worth of bytes is ever
/// buffered and the `Size` check happens before the payload is read.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    decoder: &mut FrameDecoder,
) -> Result<Option<Frame>, IoError> {
    read(reader, decoder, None).await
}

/// Like [`read_frame`], but once a frame has begun (or a skipped one is being discarded) the
/// peer must keep sending: a gap longer than `stall` ends the read with [`IoError::Stalled`].
/// Waiting *between* frames is unbounded (an idle bridge is normal).
pub async fn read_frame_bounded<R: AsyncRead + Unpin>(
    reader: &mut R,
    decoder: &mut FrameDecoder,
    stall: std::time::Duration,
) -> Result<Option<Frame>, IoError> {
    read(reader, decoder, Some(stall)).await
}

async fn read<R: AsyncRead + Unpin>(
    reader: &mut R,
    decoder: &mut FrameDecoder,
    stall: Option<std::time::Duration>,
) -> Result<Option<Frame>, IoError> {
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(frame) = decoder.next_frame()? {
            return Ok(Some(frame));
        }
        let want = decoder.wanted().min(chunk.len());
        let read = reader.read(&mut chunk[..want]);
        let n = match stall {
            Some(stall) if decoder.in_frame() => tokio::time::timeout(stall, read)
                .await
                .map_err(|_| IoError::Stalled(stall))??,
            _ => read.await?,
        };
        if n == 0 {
            return match decoder.buffered() {
                0 => Ok(None),
                buffered => Err(IoError::Truncated { buffered }),
            };
        }
        decoder.extend(&chunk[..n]);
    }
}

/// Writes one already encoded frame and flushes.
pub async fn write_frame<W: AsyncWrite + Unpin>(writer: &mut W, frame: &[u8]) -> Result<(), IoError> {
    writer.write_all(frame).await?;
    writer.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{encode_frame, MAX_GUEST_TO_HOST};
    use crate::msgid::MessageId;

    #[tokio::test(start_paused = true)]
    async fn a_stall_inside_a_frame_ends_the_read_but_idling_between_frames_does_not() {
        use std::time::Duration;
        let bytes = encode_frame(MessageId::START, 1, b"{}\n", MAX_GUEST_TO_HOST).unwrap();
        let (mut tx, mut rx) = tokio::io::duplex(1024);
        // Between frames: an idle peer is fine, the read just waits.
        let mut dec = FrameDecoder::new(1024);
        let idle = tokio::time::timeout(
            Duration::from_secs(60),
            read_frame_bounded(&mut rx, &mut dec, Duration::from_secs(1)),
        )
        .await;
        assert!(idle.is_err(), "an idle bridge is not a stall");
        // Half a header, then silence: stalled.
        tokio::io::AsyncWriteExt::write_all(&mut tx, &bytes[..8])
            .await
            .unwrap();
        let mut dec = FrameDecoder::new(1024);
        let r = read_frame_bounded(&mut rx, &mut dec, Duration::from_secs(1)).await;
        assert!(matches!(r, Err(IoError::Stalled(_))), "{r:?}");
    }

    #[tokio::test]
    async fn reads_frames_then_clean_eof() {
        let mut bytes = encode_frame(MessageId::START, 1, b"{}\n", MAX_GUEST_TO_HOST).unwrap();
        bytes.extend(encode_frame(MessageId::START, 2, b"{}\n", MAX_GUEST_TO_HOST).unwrap());
        let mut r = &bytes[..];
        let mut dec = FrameDecoder::new(1024);
        assert_eq!(read_frame(&mut r, &mut dec).await.unwrap().unwrap().id, 1);
        assert_eq!(read_frame(&mut r, &mut dec).await.unwrap().unwrap().id, 2);
        assert!(read_frame(&mut r, &mut dec).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn truncated_and_oversized_are_errors() {
        let bytes = encode_frame(MessageId::START, 1, b"{}\n", MAX_GUEST_TO_HOST).unwrap();
        let mut r = &bytes[..bytes.len() - 1];
        let mut dec = FrameDecoder::new(1024);
        assert!(matches!(
            read_frame(&mut r, &mut dec).await,
            Err(IoError::Truncated { buffered: 18 })
        ));
        let mut r = &bytes[..];
        let mut dec = FrameDecoder::new(17);
        assert!(matches!(
            read_frame(&mut r, &mut dec).await,
            Err(IoError::Frame(FrameError::TooLarge { .. }))
        ));
    }
}
