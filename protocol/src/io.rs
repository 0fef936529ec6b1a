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
}

/// Reads the next frame. `Ok(None)` is a clean end of stream between frames.
///
/// Reads are sized by [`FrameDecoder::wanted`], so no more than one frame's worth of bytes is ever
/// buffered and the `Size` check happens before the payload is read.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    decoder: &mut FrameDecoder,
) -> Result<Option<Frame>, IoError> {
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(frame) = decoder.next_frame()? {
            return Ok(Some(frame));
        }
        let want = decoder.wanted().min(chunk.len());
        let n = reader.read(&mut chunk[..want]).await?;
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
