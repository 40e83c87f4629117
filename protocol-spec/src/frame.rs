//! The frame: a 12-byte big-endian header followed by a protobuf body.
//!
//! ```text
//!  0               4       5       6               8                              12
//!  +---------------+-------+-------+---------------+-------------------------------+
//!  | body_len u32  | ver u8| flg u8|    op u16     |        request_id u32         |  body ...
//!  +---------------+-------+-------+---------------+-------------------------------+
//! ```
//! `body_len` counts the body bytes as sent (compressed, when `COMPRESSED` is set).

use bytes::{Buf, BufMut, Bytes};

use crate::{Body, BodyError, pb};

/// Length of the fixed frame header in bytes.
pub const HEADER_LEN: usize = 12;

/// The header's flag byte.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Flags(u8);

impl Flags {
    /// The body is zstd-compressed (only after both sides negotiated it in the handshake).
    pub const COMPRESSED: Flags = Flags(0x01);
    /// Server-initiated frame (not a response); its request id is 0.
    pub const PUSH: Flags = Flags(0x02);
    /// Bits that revision 1 does not define; a receiver rejects a frame with any of them set.
    pub const RESERVED_MASK: u8 = !0x03;

    /// No flag set.
    pub const fn empty() -> Flags {
        Flags(0)
    }
    /// The raw byte.
    pub const fn bits(self) -> u8 {
        self.0
    }
    /// Flags from a raw byte, or `None` when a reserved bit is set.
    pub const fn from_bits(bits: u8) -> Option<Flags> {
        if bits & Self::RESERVED_MASK != 0 {
            None
        } else {
            Some(Flags(bits))
        }
    }
    /// Whether every bit of `other` is set.
    pub const fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }
    /// `self` with the bits of `other` set.
    pub const fn with(self, other: Flags) -> Flags {
        Flags(self.0 | other.0)
    }
    /// `self` with the bits of `other` cleared.
    pub const fn without(self, other: Flags) -> Flags {
        Flags(self.0 & !other.0)
    }
}

/// The decoded fixed header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// Body bytes following the header, as sent.
    pub body_len: u32,
    /// Frame layout version ([`crate::WIRE_VERSION`]).
    pub version: u8,
    /// Raw flag byte (may hold reserved bits; [`Flags::from_bits`] checks).
    pub flags: u8,
    /// Raw frame type; see [`pb::Op`].
    pub op: u16,
    /// Correlates a response with its request; 0 on pushes.
    pub request_id: u32,
}

impl FrameHeader {
    /// Reads a header from the first [`HEADER_LEN`] bytes of `bytes`, or `None` if too short.
    pub fn parse(mut bytes: &[u8]) -> Option<FrameHeader> {
        if bytes.len() < HEADER_LEN {
            return None;
        }
        Some(FrameHeader {
            body_len: bytes.get_u32(),
            version: bytes.get_u8(),
            flags: bytes.get_u8(),
            op: bytes.get_u16(),
            request_id: bytes.get_u32(),
        })
    }

    /// Appends the header's 12 bytes to `dst`.
    pub fn write(&self, dst: &mut impl BufMut) {
        dst.put_u32(self.body_len);
        dst.put_u8(self.version);
        dst.put_u8(self.flags);
        dst.put_u16(self.op);
        dst.put_u32(self.request_id);
    }
}

/// A frame with its body in plain (uncompressed) protobuf form. Compression is the codec's
/// business: frames handed to and returned by [`crate::FrameCodec`] never carry `COMPRESSED`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// Raw frame type. Unknown numbers are kept so the receiver can answer `UNKNOWN_OP`.
    pub op: u16,
    /// Flags other than `COMPRESSED`.
    pub flags: Flags,
    /// Correlation id: chosen by the client for requests, echoed in responses, 0 on pushes.
    pub request_id: u32,
    /// Protobuf-encoded body.
    pub body: Bytes,
}

impl Frame {
    /// A request or response frame carrying `body`.
    pub fn new(request_id: u32, body: impl Into<Body>) -> Frame {
        let body = body.into();
        Frame {
            op: body.op() as u16,
            flags: Flags::empty(),
            request_id,
            body: Bytes::from(body.encode_to_vec()),
        }
    }

    /// A server push carrying `body` (flag `PUSH`, request id 0).
    pub fn push(body: impl Into<Body>) -> Frame {
        let mut frame = Frame::new(0, body);
        frame.flags = Flags::PUSH;
        frame
    }

    /// An `OP_ERROR` frame answering `request_id`.
    pub fn error(request_id: u32, code: pb::ErrorCode, message: impl Into<String>) -> Frame {
        use crate::ErrorCodeExt as _;
        Frame::new(request_id, code.to_error(message))
    }

    /// The op as a known frame type, if it is one.
    pub fn known_op(&self) -> Option<pb::Op> {
        pb::Op::try_from(i32::from(self.op))
            .ok()
            .filter(|op| *op != pb::Op::Unspecified)
    }

    /// Decodes the body as the message of this frame's op.
    pub fn decode_body(&self) -> Result<Body, BodyError> {
        let op = self.known_op().ok_or(BodyError::UnknownOp(self.op))?;
        Body::decode(op, &self.body)
    }

    /// Whether this is a server push.
    pub fn is_push(&self) -> bool {
        self.flags.contains(Flags::PUSH)
    }
}
