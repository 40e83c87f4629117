//! The IM wire protocol: the generated protobuf types (`pb`), the frame layout and its
//! tokio-util codec (`codec`), the typed frame bodies (`Body`), error codes, and identifiers.
//!
//! `SPEC.md` beside this crate is the specification; the `.proto` files under `proto/` are the
//! single source of truth for messages, frame types and error codes.

/// Generated protobuf types of package `im.v1`.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/im.v1.rs"));
}

/// The `prost::Message` trait, re-exported so users of the generated types need no direct
/// prost dependency.
pub use prost::Message as ProstMessage;
pub mod codec;
mod errors;
pub mod frame;
pub mod ids;

pub use codec::{FrameCodec, FrameError};
pub use errors::ErrorCodeExt;
pub use frame::{Flags, Frame, HEADER_LEN};

/// The encoded `FileDescriptorSet` of the protocol (with imports), for reflection-based tools:
/// JSON rendering of golden vectors, debuggers, other-language code generators.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/im_descriptor.bin"));

/// The frame layout version carried in every header. Changing the header layout bumps it.
pub const WIRE_VERSION: u8 = 1;

/// The protocol revision this crate implements; negotiated in the handshake
/// (`HandshakeReq.protocol_version` / `HandshakeResp.protocol_version`).
pub const PROTOCOL_REVISION: u32 = 2;

/// Default and recommended maximum body length (after decompression): 1 MiB.
pub const DEFAULT_MAX_BODY: usize = 1 << 20;

/// No deployment may configure a larger body limit than this: 16 MiB.
pub const ABSOLUTE_MAX_BODY: usize = 16 << 20;

/// The bytes of entries or messages one response may carry when bodies are limited to
/// `max_body`: half of it, leaving room for the response's other fields and protobuf framing.
/// Sync and history pages and pushes are cut to it, so a response always fits in a frame.
pub const fn page_budget(max_body: usize) -> usize {
    max_body / 2
}

/// The current time as Unix milliseconds (0 if the clock is before 1970): the time base of
/// every `*_ms` field of the protocol.
pub fn unix_time_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Who may send a frame type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Only clients send it; a server receiving it from a client is fine.
    ClientToServer,
    /// Only servers send it; a client sending it is a protocol violation (`WRONG_DIRECTION`).
    ServerToClient,
    /// Either side.
    Both,
}

/// One row of the frame-type table, generated from `enum Op` in `frame.proto`.
#[derive(Clone, Copy, Debug)]
pub struct OpInfo {
    /// The frame type.
    pub op: pb::Op,
    /// Its name in the .proto file, e.g. `OP_SEND_REQ`.
    pub proto_name: &'static str,
    /// The number carried in the frame header.
    pub number: i32,
    /// The name of the protobuf message carried as body.
    pub body: &'static str,
    /// Who sends it.
    pub direction: Direction,
}

impl OpInfo {
    /// Looks up the table row of a raw op number.
    pub fn of(number: u16) -> Option<&'static OpInfo> {
        OP_TABLE
            .iter()
            .find(|info| info.number == i32::from(number))
    }
}

/// Why a frame's body could not be turned into a [`Body`].
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The op number is not in this revision's table (`UNKNOWN_OP`; the connection stays open).
    #[error("unknown op {0}")]
    UnknownOp(u16),
    /// The body bytes are not a valid encoding of the op's message (`BAD_BODY`).
    #[error("body does not decode: {0}")]
    Decode(#[from] prost::DecodeError),
}

impl BodyError {
    /// The protocol error code to answer with.
    pub fn code(&self) -> pb::ErrorCode {
        match self {
            BodyError::UnknownOp(_) => pb::ErrorCode::UnknownOp,
            BodyError::Decode(_) => pb::ErrorCode::BadBody,
        }
    }
}

include!(concat!(env!("OUT_DIR"), "/ops.rs"));
