//! The messages between gateways and logic nodes, and how the logic API's types map onto them.
//!
//! A connection carries frames of a 4-byte big-endian length and a protobuf message: requests
//! ([`RpcRequest`]) from the gateway, responses ([`RpcResponse`]) from the node, matched by id
//! and answered in any order. Client request and response bodies travel as the client sent
//! them (`op` number and body bytes), so the node decodes them with the client protocol's own
//! rules and nothing here needs to change when an operation is added.
//!
//! A ping is answered by the connection's reader at once, ahead of any call in progress: a busy
//! node answers pings, a frozen or dead one does not, and that is how a gateway tells them apart
//! without cutting slow calls short.
//!
//! ```text
//! RpcRequest  { id u64 = 1; deadline_ms u32 = 2; user string = 3; device string = 4;
//!               oneof call { OpenSession open_session = 5; SendBatch send_batch = 6;
//!                            ClientBody handle = 7; Empty ping = 8; } }
//! RpcResponse { id u64 = 1;
//!               oneof outcome { Session session = 2; im.v1.Error refused = 3;
//!                               SendReplies sends = 4; ClientBody body = 5; Empty none = 6;
//!                               Empty pong = 8; }
//!               Effects effects = 7; }
//! ```

use im_protocol::{Body, pb};
use logic_api::{Caller, Delivery, Effects, InboxPosition, SessionInfo, TypingRelay};

/// Largest frame either side accepts: a batch of sends at the client protocol's largest body,
/// with room to spare.
pub const MAX_FRAME_BYTES: usize = 64 * 1024 * 1024;

/// A call from a gateway.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RpcRequest {
    /// Chosen by the gateway, unique among its calls in flight on the connection.
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// How long the gateway waits for the answer; the node gives up on the call after it.
    #[prost(uint32, tag = "2")]
    pub deadline_ms: u32,
    /// The caller's user.
    #[prost(string, tag = "3")]
    pub user: String,
    /// The caller's device.
    #[prost(string, tag = "4")]
    pub device: String,
    /// What is asked.
    #[prost(oneof = "Call", tags = "5, 6, 7, 8")]
    pub call: Option<Call>,
}

/// The three calls of the logic API.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Call {
    /// `LogicApi::open_session`.
    #[prost(message, tag = "5")]
    OpenSession(OpenSession),
    /// `LogicApi::send_batch`.
    #[prost(message, tag = "6")]
    SendBatch(SendBatch),
    /// `LogicApi::handle`.
    #[prost(message, tag = "7")]
    Handle(ClientBody),
    /// Is the node alive? Answered with [`Outcome::Pong`] by the connection itself.
    #[prost(message, tag = "8")]
    Ping(OpenSession),
}

/// No arguments.
#[derive(Clone, PartialEq, prost::Message)]
pub struct OpenSession {}

/// Consecutive sends of one connection.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SendBatch {
    /// In the connection's order.
    #[prost(message, repeated, tag = "1")]
    pub requests: Vec<pb::SendReq>,
}

/// A client protocol body: its op number and encoding.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ClientBody {
    /// The frame type (`im.v1.Op`).
    #[prost(uint32, tag = "1")]
    pub op: u32,
    /// The body, as the client protocol encodes it.
    #[prost(bytes = "vec", tag = "2")]
    pub body: Vec<u8>,
}

/// The answer to one call.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RpcResponse {
    /// The request's id.
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// The answer.
    #[prost(oneof = "Outcome", tags = "2, 3, 4, 5, 6, 8")]
    pub outcome: Option<Outcome>,
    /// What the call changed for other connections.
    #[prost(message, optional, tag = "7")]
    pub effects: Option<WireEffects>,
}

/// What a call answered.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Outcome {
    /// `open_session` succeeded.
    #[prost(message, tag = "2")]
    Session(Session),
    /// The logic tier refused: a protocol error for the client, never retried.
    #[prost(message, tag = "3")]
    Refused(pb::Error),
    /// One reply per send.
    #[prost(message, tag = "4")]
    Sends(SendReplies),
    /// A response body.
    #[prost(message, tag = "5")]
    Body(ClientBody),
    /// No response body (`DELIVERY_ACK`, `TYPING`).
    #[prost(message, tag = "6")]
    None(OpenSession),
    /// The answer to a ping.
    #[prost(message, tag = "8")]
    Pong(OpenSession),
}

/// [`SessionInfo`] on the wire.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Session {
    /// Inbox head.
    #[prost(uint64, tag = "1")]
    pub head_seq: u64,
    /// Inbox epoch.
    #[prost(uint64, tag = "2")]
    pub epoch: u64,
    /// Largest message content.
    #[prost(uint32, tag = "3")]
    pub max_message_bytes: u32,
}

/// The replies of a send batch.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SendReplies {
    /// In request order.
    #[prost(message, repeated, tag = "1")]
    pub replies: Vec<SendReply>,
}

/// One send's reply.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SendReply {
    /// Acknowledged, or refused.
    #[prost(oneof = "SendOutcome", tags = "1, 2")]
    pub outcome: Option<SendOutcome>,
}

/// A send's outcome.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum SendOutcome {
    /// Stored.
    #[prost(message, tag = "1")]
    Ack(pb::SendAck),
    /// Refused.
    #[prost(message, tag = "2")]
    Error(pb::Error),
}

/// [`Effects`] on the wire.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WireEffects {
    /// Inbox entries to push, in commit order.
    #[prost(message, repeated, tag = "1")]
    pub deliveries: Vec<WireDelivery>,
    /// Users whose devices get the typing event.
    #[prost(string, repeated, tag = "2")]
    pub typing_recipients: Vec<String>,
    /// The typing event, if any.
    #[prost(message, optional, tag = "3")]
    pub typing: Option<pb::TypingEvent>,
}

/// One inbox entry to push.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WireDelivery {
    /// Whose inbox.
    #[prost(string, tag = "1")]
    pub user: String,
    /// The entry.
    #[prost(message, optional, tag = "2")]
    pub entry: Option<pb::InboxEntry>,
}

impl From<Effects> for WireEffects {
    fn from(effects: Effects) -> WireEffects {
        let (typing_recipients, typing) = match effects.typing {
            Some(relay) => (relay.recipients, Some(relay.event)),
            None => (Vec::new(), None),
        };
        WireEffects {
            deliveries: effects
                .deliveries
                .into_iter()
                .map(|d| WireDelivery {
                    user: d.user,
                    entry: Some(d.entry),
                })
                .collect(),
            typing_recipients,
            typing,
        }
    }
}

impl From<WireEffects> for Effects {
    fn from(wire: WireEffects) -> Effects {
        Effects {
            deliveries: wire
                .deliveries
                .into_iter()
                .filter_map(|d| {
                    Some(Delivery {
                        user: d.user,
                        entry: d.entry?,
                    })
                })
                .collect(),
            typing: wire.typing.map(|event| TypingRelay {
                recipients: wire.typing_recipients,
                event,
            }),
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
