//! The tokio-util codec for frames.
//!
//! The decoder is written for hostile input: it checks the header before it reserves any memory,
//! never reserves more than the configured body limit, bounds zstd output by the same limit,
//! and returns errors instead of panicking. Every [`FrameError`] is fatal for the connection
//! (the stream can no longer be framed reliably); the peer should get an `OP_ERROR` carrying
//! [`FrameError::code`] before the close.

use std::io::{self, Read as _};

use bytes::{Buf as _, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use crate::frame::{Flags, Frame, FrameHeader, HEADER_LEN};
use crate::{ABSOLUTE_MAX_BODY, DEFAULT_MAX_BODY, WIRE_VERSION, pb};

/// zstd level used for outgoing bodies: level 1 compresses sync pages well at a small CPU cost.
const ZSTD_LEVEL: i32 = 1;

/// Why the byte stream cannot be decoded into frames. Each maps to a stable error code.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The header declares a body longer than the limit (`FRAME_TOO_LARGE`).
    #[error("frame body of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Declared (or decompressed) length.
        len: u64,
        /// The limit in force.
        max: usize,
    },
    /// The header's version byte is not [`WIRE_VERSION`] (`UNSUPPORTED_VERSION`).
    #[error("unsupported wire version {0}")]
    UnsupportedVersion(u8),
    /// A reserved flag bit is set (`BAD_FRAME`).
    #[error("reserved flag bits set: {0:#04x}")]
    ReservedFlags(u8),
    /// A compressed body arrived although compression was not negotiated, or it does not
    /// decompress (`UNSUPPORTED_COMPRESSION`).
    #[error("compressed body rejected: {0}")]
    Compression(String),
    /// The transport failed.
    #[error("transport error: {0}")]
    Io(#[from] io::Error),
}

impl FrameError {
    /// The protocol error code to send before closing.
    pub fn code(&self) -> pb::ErrorCode {
        match self {
            FrameError::TooLarge { .. } => pb::ErrorCode::FrameTooLarge,
            FrameError::UnsupportedVersion(_) => pb::ErrorCode::UnsupportedVersion,
            FrameError::ReservedFlags(_) => pb::ErrorCode::BadFrame,
            FrameError::Compression(_) => pb::ErrorCode::UnsupportedCompression,
            FrameError::Io(_) => pb::ErrorCode::Internal,
        }
    }
}

/// Length-prefixed frame codec. One per connection; its settings change after the handshake
/// (negotiated limit and compression) through the setters.
#[derive(Clone, Debug)]
pub struct FrameCodec {
    max_body: usize,
    /// Accept `COMPRESSED` frames from the peer.
    accept_compressed: bool,
    /// Compress outgoing bodies of at least this many bytes.
    compress_threshold: Option<usize>,
}

impl Default for FrameCodec {
    fn default() -> Self {
        FrameCodec::new(DEFAULT_MAX_BODY)
    }
}

impl FrameCodec {
    /// A codec with the given body limit (clamped to [`ABSOLUTE_MAX_BODY`]) and no compression.
    pub fn new(max_body: usize) -> FrameCodec {
        FrameCodec {
            max_body: max_body.min(ABSOLUTE_MAX_BODY),
            accept_compressed: false,
            compress_threshold: None,
        }
    }

    /// The body limit in force.
    pub fn max_body(&self) -> usize {
        self.max_body
    }

    /// Changes the body limit (clamped to [`ABSOLUTE_MAX_BODY`]): servers use a small limit
    /// until the handshake succeeds, then the negotiated one.
    pub fn set_max_body(&mut self, max_body: usize) {
        self.max_body = max_body.min(ABSOLUTE_MAX_BODY);
    }

    /// Allows the peer to send zstd-compressed bodies (negotiated in the handshake).
    pub fn accept_compressed(&mut self, yes: bool) {
        self.accept_compressed = yes;
    }

    /// Compresses outgoing bodies of at least `threshold` bytes (`None` = never).
    pub fn compress_above(&mut self, threshold: Option<usize>) {
        self.compress_threshold = threshold;
    }

    fn decompress(&self, compressed: &[u8]) -> Result<Bytes, FrameError> {
        // Read at most max_body + 1 bytes so an oversized output is detected without being
        // held; the output buffer only grows as real output arrives.
        let mut decoder = zstd::stream::read::Decoder::with_buffer(compressed)
            .map_err(|e| FrameError::Compression(e.to_string()))?;
        // A zstd frame may ask for a window of up to 2 GiB; refuse windows larger than the
        // body limit so a hostile frame cannot make the decoder allocate one.
        let window_log =
            (usize::BITS - self.max_body.next_power_of_two().leading_zeros() - 1).clamp(10, 24);
        decoder
            .window_log_max(window_log)
            .map_err(|e| FrameError::Compression(e.to_string()))?;
        let mut out = Vec::new();
        decoder
            .take(self.max_body as u64 + 1)
            .read_to_end(&mut out)
            .map_err(|e| FrameError::Compression(e.to_string()))?;
        if out.len() > self.max_body {
            return Err(FrameError::TooLarge {
                len: out.len() as u64,
                max: self.max_body,
            });
        }
        Ok(Bytes::from(out))
    }
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        let Some(header) = FrameHeader::parse(src) else {
            src.reserve(HEADER_LEN);
            return Ok(None);
        };
        if header.version != WIRE_VERSION {
            return Err(FrameError::UnsupportedVersion(header.version));
        }
        let flags =
            Flags::from_bits(header.flags).ok_or(FrameError::ReservedFlags(header.flags))?;
        let body_len = header.body_len as usize;
        if body_len > self.max_body {
            return Err(FrameError::TooLarge {
                len: u64::from(header.body_len),
                max: self.max_body,
            });
        }
        if flags.contains(Flags::COMPRESSED) && !self.accept_compressed {
            return Err(FrameError::Compression(
                "compression was not negotiated".into(),
            ));
        }
        let frame_len = HEADER_LEN + body_len;
        if src.len() < frame_len {
            // Bounded by max_body + HEADER_LEN thanks to the check above.
            src.reserve(frame_len - src.len());
            return Ok(None);
        }
        src.advance(HEADER_LEN);
        let raw = src.split_to(body_len).freeze();
        let body = if flags.contains(Flags::COMPRESSED) {
            self.decompress(&raw)?
        } else {
            raw
        };
        Ok(Some(Frame {
            op: header.op,
            flags: flags.without(Flags::COMPRESSED),
            request_id: header.request_id,
            body,
        }))
    }
}

impl Encoder<Frame> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), FrameError> {
        self.encode(&frame, dst)
    }
}

impl Encoder<&Frame> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, frame: &Frame, dst: &mut BytesMut) -> Result<(), FrameError> {
        if frame.body.len() > self.max_body {
            return Err(FrameError::TooLarge {
                len: frame.body.len() as u64,
                max: self.max_body,
            });
        }
        let mut flags = frame.flags.without(Flags::COMPRESSED);
        let compressed = match self.compress_threshold {
            Some(threshold) if frame.body.len() >= threshold => {
                zstd::bulk::compress(&frame.body, ZSTD_LEVEL)
                    .ok()
                    .filter(|c| c.len() < frame.body.len())
            }
            _ => None,
        };
        let body: &[u8] = match &compressed {
            Some(c) => {
                flags = flags.with(Flags::COMPRESSED);
                c
            }
            None => &frame.body,
        };
        dst.reserve(HEADER_LEN + body.len());
        FrameHeader {
            body_len: body.len() as u32,
            version: WIRE_VERSION,
            flags: flags.bits(),
            op: frame.op,
            request_id: frame.request_id,
        }
        .write(dst);
        dst.extend_from_slice(body);
        Ok(())
    }
}
