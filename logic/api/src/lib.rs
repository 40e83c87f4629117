//! The seam between the access layer (the gateway) and the business tier (logic): the
//! [`LogicApi`] trait and the types that cross it.
//!
//! The gateway knows only this crate. In one process the implementation is `logic::Logic` over
//! the embedded store, called directly; in a cluster it will be a client of remote logic nodes.
//! Requests go in as protobuf bodies (they are what the client sent, already framed and
//! checked for direction and authentication by the gateway); what they changed for other
//! connections comes back as [`Effects`], which the gateway hands to its push router.

use std::future::Future;

use im_protocol::{Body, pb};

/// The authenticated user and device a request comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// User id from the verified token.
    pub user: String,
    /// Device id from the handshake.
    pub device: String,
}

/// One inbox entry appended for a user: pushed to that user's online devices.
#[derive(Clone, Debug, PartialEq)]
pub struct Delivery {
    /// Whose inbox.
    pub user: String,
    /// The entry, with its inbox seq.
    pub entry: pb::InboxEntry,
}

/// A typing indicator to relay to the online devices of `recipients`; never stored.
#[derive(Clone, Debug, PartialEq)]
pub struct TypingRelay {
    /// Users whose online devices get the event (the typist excluded).
    pub recipients: Vec<String>,
    /// The event.
    pub event: pb::TypingEvent,
}

/// A user starts or stops following a read-fan-out group on their online connections
/// (SPEC §13.12): the gateway pushes the group's messages to the connections that follow it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomChange {
    /// The member.
    pub user: String,
    /// The group.
    pub group_id: String,
    /// Follows from now on (`true`) or no longer (`false`).
    pub follows: bool,
}

/// What a request changed that other connections must hear about.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Effects {
    /// Inbox entries to push to the users' online devices, in commit order.
    pub deliveries: Vec<Delivery>,
    /// A typing indicator to relay.
    pub typing: Option<TypingRelay>,
    /// Messages of read-fan-out groups, in commit order: pushed (`GROUP_PUSH`) to the online
    /// connections following the group, except the sender's (whose inbox has the message).
    pub group_messages: Vec<pb::Message>,
    /// Who starts or stops following which read-fan-out group. Applied before
    /// `group_messages` and `deliveries` are pushed.
    pub rooms: Vec<RoomChange>,
}

/// The answer to one request: a response body (`None` for requests that have none, such as
/// `DELIVERY_ACK` and `TYPING`), or a protocol error.
pub type Reply = Result<Option<Body>, pb::Error>;

/// The answer to one `SEND_REQ`.
pub type SendReply = Result<pb::SendAck, pb::Error>;

/// Where a user's inbox stands (SPEC §7, §8.2, §10.8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InboxPosition {
    /// The highest inbox seq (0 = empty inbox).
    pub head_seq: u64,
    /// The epoch the inbox's seqs belong to.
    pub epoch: u64,
}

impl InboxPosition {
    /// "Not reported": what a pong carries when the head is not known (SPEC §8.2).
    pub const UNKNOWN: InboxPosition = InboxPosition {
        head_seq: 0,
        epoch: 0,
    };
}

/// What the handshake tells a new session, as far as the business tier decides it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionInfo {
    /// The user's inbox at the moment the session opened.
    pub inbox: InboxPosition,
    /// Largest `SendReq.content` the business tier accepts.
    pub max_message_bytes: u32,
    /// The read-fan-out groups the user is a member of (SPEC §13.12), read with the inbox head
    /// after the connection was registered, so a change committed meanwhile reaches it as a
    /// [`RoomChange`]. Empty where the business tier does no read fan-out.
    pub read_groups: Vec<String>,
}

/// The business tier as the gateway sees it.
///
/// Implementations are shared by every connection task (`Send + Sync`) and must answer
/// concurrent calls; the order of one connection's calls is the order it awaits them in.
pub trait LogicApi: Send + Sync + 'static {
    /// A connection of `caller` authenticated. Returns what its handshake answer needs. The
    /// gateway registers the connection for pushes *before* calling this, so an entry
    /// committed meanwhile is either pushed or at or below the returned head, never neither.
    /// An error is sent to the client as the handshake's answer (with its retry hint) and the
    /// connection closes.
    fn open_session(
        &self,
        caller: &Caller,
    ) -> impl Future<Output = Result<SessionInfo, pb::Error>> + Send;

    /// Handles consecutive `SEND_REQ`s of one connection together, so they keep their order and
    /// share one durable commit. Returns one reply per request, in order.
    fn send_batch(
        &self,
        caller: &Caller,
        requests: Vec<pb::SendReq>,
    ) -> impl Future<Output = (Vec<SendReply>, Effects)> + Send;

    /// Handles any other request (everything but the connection-level frames the gateway
    /// answers itself: handshake, ping, goodbye).
    fn handle(&self, caller: &Caller, body: Body) -> impl Future<Output = (Reply, Effects)> + Send;
}

impl<T: LogicApi> LogicApi for std::sync::Arc<T> {
    fn open_session(
        &self,
        caller: &Caller,
    ) -> impl Future<Output = Result<SessionInfo, pb::Error>> + Send {
        (**self).open_session(caller)
    }

    fn send_batch(
        &self,
        caller: &Caller,
        requests: Vec<pb::SendReq>,
    ) -> impl Future<Output = (Vec<SendReply>, Effects)> + Send {
        (**self).send_batch(caller, requests)
    }

    fn handle(&self, caller: &Caller, body: Body) -> impl Future<Output = (Reply, Effects)> + Send {
        (**self).handle(caller, body)
    }
}
