//! The messages between gateways and logic nodes, and how the logic API's types map onto them.
//!
//! The schema is `proto/im/logic/v1/rpc.proto` (built by `build.rs` with protox and
//! prost-build); it imports the client-facing messages (`SendReq`, `SendAck`, `Error`,
//! `InboxEntry`, `TypingEvent`) from protocol-spec's `im.v1`, which map to `im_protocol::pb`.
//!
//! A connection carries frames of a 4-byte big-endian length and one protobuf message
//! (at most [`MAX_FRAME_BYTES`]): requests ([`RpcRequest`]) from the gateway, responses
//! ([`RpcResponse`]) from the node, matched by id and answered in any order. Client request and
//! response bodies travel as the client sent them (`op` number and body bytes, [`ClientBody`]),
//! so the node decodes them with the client protocol's own rules and nothing here needs to
//! change when an operation is added.
//!
//! A ping is answered by the connection's reader at once, ahead of any call in progress: a busy
//! node answers pings, a frozen or dead one does not, and that is how a gateway tells them apart
//! without cutting slow calls short.
//!
//! ```text
//! RpcRequest  { id u64 = 1; deadline_ms u32 = 2; user string = 3; device string = 4;
//!               oneof call { Empty open_session = 5; SendBatch send_batch = 6;
//!                            ClientBody handle = 7; Empty ping = 8; } }
//! RpcResponse { id u64 = 1;
//!               oneof outcome { Session session = 2; im.v1.Error refused = 3;
//!                               SendReplies sends = 4; ClientBody body = 5; Empty none = 6;
//!                               Empty pong = 8; Empty not_taken = 9; }
//!               Effects effects = 7; }
//! ```

use im_protocol::{Body, pb};
use logic_api::{Caller, Delivery as ApiDelivery, InboxPosition, SessionInfo, TypingRelay};

/// The generated types of `rpc.proto`; every item carries the .proto file's comments.
#[allow(clippy::all)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/im.logic.v1.rs"));
}

pub use generated::*;

/// What a request asks ([`RpcRequest::call`]).
pub use generated::rpc_request::Call;
/// What a response answers ([`RpcResponse::outcome`]).
pub use generated::rpc_response::Outcome;
/// One send's outcome ([`SendReply::outcome`]).
pub use generated::send_reply::Outcome as SendOutcome;

/// Largest frame either side accepts: a batch of sends at the client protocol's largest body,
/// with room to spare. A longer length prefix closes the connection.
pub const MAX_FRAME_BYTES: usize = 64 * 1024 * 1024;

impl From<logic_api::Effects> for Effects {
    fn from(effects: logic_api::Effects) -> Effects {
        let (typing_recipients, typing) = match effects.typing {
            Some(relay) => (relay.recipients, Some(relay.event)),
            None => (Vec::new(), None),
        };
        Effects {
            deliveries: effects
                .deliveries
                .into_iter()
                .map(|d| Delivery {
                    user: d.user,
                    entry: Some(d.entry),
                })
                .collect(),
            typing_recipients,
            typing,
        }
    }
}

impl From<Effects> for logic_api::Effects {
    fn from(wire: Effects) -> logic_api::Effects {
        logic_api::Effects {
            deliveries: wire
                .deliveries
                .into_iter()
                .filter_map(|d| {
                    Some(ApiDelivery {
                        user: d.user,
                        entry: d.entry?,
                    })
                })
                .collect(),
            typing: wire.typing.map(|event| TypingRelay {
                recipients: wire.typing_recipients,
                event,
            }),
            // Logic nodes keep every group in write fan-out (read fan-out is built for one
            // process only so far), so no read-fan-out effects cross this wire.
            ..logic_api::Effects::default()
        }
    }
}

impl From<SessionInfo> for Session {
    fn from(info: SessionInfo) -> Session {
        Session {
            head_seq: info.inbox.head_seq,
            epoch: info.inbox.epoch,
            max_message_bytes: info.max_message_bytes,
        }
    }
}

impl From<Session> for SessionInfo {
    fn from(session: Session) -> SessionInfo {
        SessionInfo {
            inbox: InboxPosition {
                head_seq: session.head_seq,
                epoch: session.epoch,
            },
            max_message_bytes: session.max_message_bytes,
            // Logic nodes keep every group in write fan-out (README, "Huge groups").
            read_groups: Vec::new(),
        }
    }
}

impl ClientBody {
    /// A body as the client protocol encodes it.
    pub fn of(body: &Body) -> ClientBody {
        ClientBody {
            op: body.op() as u32,
            body: body.encode_to_vec(),
        }
    }

    /// Decodes it with the client protocol's rules.
    pub fn decode(&self) -> Result<Body, pb::Error> {
        use im_protocol::ErrorCodeExt as _;
        let op = u16::try_from(self.op)
            .ok()
            .and_then(|op| pb::Op::try_from(i32::from(op)).ok())
            .filter(|op| *op != pb::Op::Unspecified)
            .ok_or_else(|| pb::ErrorCode::UnknownOp.to_error(format!("unknown op {}", self.op)))?;
        Body::decode(op, &self.body).map_err(|e| e.code().to_error(e.to_string()))
    }
}

/// The caller of a request.
pub fn caller_of(request: &RpcRequest) -> Caller {
    Caller {
        user: request.user.clone(),
        device: request.device.clone(),
    }
}
