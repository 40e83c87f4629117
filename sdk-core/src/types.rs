//! The client core's own types for what crosses its public surface: requests and their answers,
//! server errors, group and typing events.
//!
//! They are plain records and enums of strings, integers, vectors and options, so language
//! bindings (uniffi for Kotlin, Swift and Python) can carry them as they are. The protobuf types
//! of `im_protocol` stay behind the state machine, which converts at its protocol seam
//! (`machine/convert.rs`); an app never sees them.

use im_protocol::pb;

use crate::store::{LocalConversation, LocalMessage};

/// The platform the client reports in the handshake (logged by the server).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Platform {
    /// An iPhone or iPad app.
    Ios,
    /// An Android app.
    Android,
    /// A browser.
    Web,
    /// A desktop app or a command-line tool.
    Desktop,
    /// A bot or a load tester.
    Server,
}

/// The stable numeric error codes of the protocol (SPEC §14), for comparing with
/// [`ServerError::code`]. Codes added by a later revision may arrive too: judge those by
/// [`ServerError::retryable`] and their hundreds class.
pub mod error_code {
    use im_protocol::pb::ErrorCode;

    /// Malformed frame header.
    pub const BAD_FRAME: u32 = ErrorCode::BadFrame as u32;
    /// A frame above the body limit.
    pub const FRAME_TOO_LARGE: u32 = ErrorCode::FrameTooLarge as u32;
    /// No protocol revision both sides speak.
    pub const UNSUPPORTED_VERSION: u32 = ErrorCode::UnsupportedVersion as u32;
    /// An op the server does not know.
    pub const UNKNOWN_OP: u32 = ErrorCode::UnknownOp as u32;
    /// A body that does not decode.
    pub const BAD_BODY: u32 = ErrorCode::BadBody as u32;
    /// A request before the handshake.
    pub const NOT_AUTHENTICATED: u32 = ErrorCode::NotAuthenticated as u32;
    /// A second handshake.
    pub const ALREADY_AUTHENTICATED: u32 = ErrorCode::AlreadyAuthenticated as u32;
    /// No handshake in time.
    pub const HANDSHAKE_TIMEOUT: u32 = ErrorCode::HandshakeTimeout as u32;
    /// A compressed body that was not negotiated or does not decode.
    pub const UNSUPPORTED_COMPRESSION: u32 = ErrorCode::UnsupportedCompression as u32;
    /// A server-to-client op sent by the client.
    pub const WRONG_DIRECTION: u32 = ErrorCode::WrongDirection as u32;
    /// No token.
    pub const TOKEN_MISSING: u32 = ErrorCode::TokenMissing as u32;
    /// A token that does not verify.
    pub const TOKEN_INVALID: u32 = ErrorCode::TokenInvalid as u32;
    /// A token past its expiry.
    pub const TOKEN_EXPIRED: u32 = ErrorCode::TokenExpired as u32;
    /// The device differs from the token's.
    pub const DEVICE_MISMATCH: u32 = ErrorCode::DeviceMismatch as u32;
    /// Too many requests; retry after `retry_after_ms`.
    pub const RATE_LIMITED: u32 = ErrorCode::RateLimited as u32;
    /// Message content above the server's limit.
    pub const MESSAGE_TOO_LARGE: u32 = ErrorCode::MessageTooLarge as u32;
    /// A page limit above the server's maximum.
    pub const PAGE_TOO_LARGE: u32 = ErrorCode::PageTooLarge as u32;
    /// The user has the most connections allowed.
    pub const TOO_MANY_CONNECTIONS: u32 = ErrorCode::TooManyConnections as u32;
    /// A field is missing or malformed.
    pub const INVALID_ARGUMENT: u32 = ErrorCode::InvalidArgument as u32;
    /// The user, group, conversation or message does not exist.
    pub const NOT_FOUND: u32 = ErrorCode::NotFound as u32;
    /// Not a party, not a member, or not the owner.
    pub const FORBIDDEN: u32 = ErrorCode::Forbidden as u32;
    /// The message is older than the recall window.
    pub const RECALL_WINDOW_EXPIRED: u32 = ErrorCode::RecallWindowExpired as u32;
    /// Only the sender may recall a message.
    pub const NOT_SENDER: u32 = ErrorCode::NotSender as u32;
    /// The change would exceed the group size limit.
    pub const GROUP_FULL: u32 = ErrorCode::GroupFull as u32;
    /// The client message id was used for another message.
    pub const CLIENT_MSG_ID_CONFLICT: u32 = ErrorCode::ClientMsgIdConflict as u32;
    /// The group is not open for joining.
    pub const NOT_OPEN: u32 = ErrorCode::NotOpen as u32;
    /// The deployment's policy refused the message (its reason code is the error's
    /// `app_reason`).
    pub const REJECTED: u32 = ErrorCode::Rejected as u32;
    /// A server fault.
    pub const INTERNAL: u32 = ErrorCode::Internal as u32;
    /// Storage or a dependency is unavailable.
    pub const UNAVAILABLE: u32 = ErrorCode::Unavailable as u32;
    /// The server is draining.
    pub const SHUTTING_DOWN: u32 = ErrorCode::ShuttingDown as u32;
}

/// The server refused a request (SPEC §14).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", self.name())]
pub struct ServerError {
    /// The stable numeric error code (see [`error_code`]), e.g. 402 for `FORBIDDEN`.
    pub code: u32,
    /// English text for logs and developers; never parse it.
    pub message: String,
    /// The same request may succeed later unchanged.
    pub retryable: bool,
    /// Wait at least this long before retrying (0 = use an own backoff).
    pub retry_after_ms: u32,
}

impl ServerError {
    /// The code's name in the protocol, e.g. `FORBIDDEN` (`UNKNOWN` for a code newer than this
    /// client).
    pub fn name(&self) -> &'static str {
        i32::try_from(self.code)
            .ok()
            .and_then(|code| pb::ErrorCode::try_from(code).ok())
            .map(|code| code.as_str_name())
            .unwrap_or("UNKNOWN")
    }
}

/// Why a request got no answer of its own.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The server answered with an error.
    #[error(transparent)]
    Server(ServerError),
    /// Not connected (requests other than sends are not queued offline).
    #[error("not connected to the server")]
    NotConnected,
    /// The connection was lost before the answer.
    #[error("the connection was lost before the answer")]
    ConnectionLost,
    /// The server answered with something else than this request's response (a server bug,
    /// or a field the protocol requires was missing).
    #[error("unexpected answer from the server: {0}")]
    UnexpectedResponse(String),
}

/// Identifies a request made through the state machine; its answer comes from
/// [`crate::Client::poll_response`] with this handle.
pub type RequestHandle = u64;

/// Which way a history page goes from its anchor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HistoryDirection {
    /// Seqs below the anchor, newest first (anchor 0 = from the newest message).
    Older,
    /// Seqs above the anchor, oldest first (anchor 0 = from seq 1).
    Newer,
}

/// A request to the server that the app may make (SPEC §13). Sends have their own path (the
/// outbox), typing indicators get no answer, and sync belongs to the state machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// A page of a conversation's history from the server (§13.2); the messages are also
    /// stored locally.
    History {
        /// The conversation.
        conversation_id: String,
        /// Exclusive anchor seq (0 = from the newest with `Older`, from seq 1 with `Newer`).
        anchor_seq: u64,
        /// Which way from the anchor.
        direction: HistoryDirection,
        /// Most messages (0 = the server's default).
        limit: u32,
    },
    /// A page of the user's conversation list from the server (§13.3); the local list is
    /// updated from it.
    Conversations {
        /// Most conversations (0 = the server's default).
        limit: u32,
        /// Empty for the first page, then the previous page's `next_cursor`.
        cursor: String,
    },
    /// Marks a conversation read up to a seq, inclusive (§13.4); the local conversation is
    /// updated at once.
    MarkRead {
        /// The conversation.
        conversation_id: String,
        /// Read up to this seq.
        seq: u64,
    },
    /// Recalls one of the user's own messages (§13.6).
    Recall {
        /// The conversation.
        conversation_id: String,
        /// The message's seq.
        seq: u64,
    },
    /// Hides messages for this user on all of their devices (§13.7).
    DeleteForMe {
        /// The conversation.
        conversation_id: String,
        /// The messages' seqs (at most 1,000).
        seqs: Vec<u64>,
    },
    /// Creates a group with the user as owner (§13.8).
    CreateGroup {
        /// The group's name.
        name: String,
        /// The other initial members.
        members: Vec<String>,
        /// Anyone may join.
        open: bool,
        /// Makes the request idempotent when not empty: a retry returns the same group.
        client_request_id: String,
        /// A broadcast channel: only the owner posts and adds members (§13.8).
        broadcast: bool,
    },
    /// Adds members to a group.
    AddGroupMembers {
        /// The group.
        group_id: String,
        /// Users to add.
        members: Vec<String>,
    },
    /// Removes members from a group (owner only).
    RemoveGroupMembers {
        /// The group.
        group_id: String,
        /// Users to remove.
        members: Vec<String>,
    },
    /// Joins an open group.
    JoinGroup {
        /// The group.
        group_id: String,
    },
    /// Leaves a group.
    LeaveGroup {
        /// The group.
        group_id: String,
    },
    /// A page of a group's members, with the group's current info.
    GroupMembers {
        /// The group.
        group_id: String,
        /// Most members (0 = the server's default).
        limit: u32,
        /// Empty for the first page, then the previous page's `next_cursor`.
        cursor: String,
    },
    /// Registers this device's push token, replacing the one it had (§13.11).
    RegisterPushToken {
        /// The push service that issued the token.
        service: PushService,
        /// The token.
        token: String,
        /// What notifications may show.
        preview: PushPreview,
    },
    /// Removes this device's push token (at logout).
    UnregisterPushToken,
    /// Mutes or unmutes a conversation's notifications on all of the user's devices.
    Mute {
        /// The conversation.
        conversation_id: String,
        /// Muted or not.
        muted: bool,
    },
}

/// A push service a device's token belongs to (§13.11).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PushService {
    /// Apple Push Notification service (the device token, hex).
    Apns,
    /// Firebase Cloud Messaging (the registration token).
    Fcm,
    /// The deployment's own push gateway.
    Webhook,
}

/// What a push notification may show on the lock screen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PushPreview {
    /// "New message" only.
    None,
    /// Who wrote.
    Sender,
    /// Who wrote and the start of the text.
    Full,
}

/// The answer to a [`Request`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    /// To [`Request::History`].
    History(HistoryPage),
    /// To [`Request::Conversations`].
    Conversations(ConversationPage),
    /// To [`Request::MarkRead`].
    ReadMarker(ReadMarker),
    /// To [`Request::Recall`].
    Recalled(Recall),
    /// To [`Request::DeleteForMe`]: how many messages were newly hidden.
    Deleted(u64),
    /// To [`Request::CreateGroup`].
    GroupCreated(GroupInfo),
    /// To [`Request::AddGroupMembers`]: the users who were not members before.
    GroupMembersAdded(GroupMembersChange),
    /// To [`Request::RemoveGroupMembers`]: the users who were removed.
    GroupMembersRemoved(GroupMembersChange),
    /// To [`Request::JoinGroup`].
    GroupJoined(GroupInfo),
    /// To [`Request::LeaveGroup`]: the group left.
    GroupLeft(String),
    /// To [`Request::GroupMembers`].
    GroupMembers(GroupMembersPage),
    /// To [`Request::RegisterPushToken`] (true) and [`Request::UnregisterPushToken`] (false).
    PushToken(bool),
    /// To [`Request::Mute`]: the conversation and whether it is muted now.
    Muted(String, bool),
}

impl Response {
    /// The variant's name, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Response::History(_) => "History",
            Response::Conversations(_) => "Conversations",
            Response::ReadMarker(_) => "ReadMarker",
            Response::Recalled(_) => "Recalled",
            Response::Deleted(_) => "Deleted",
            Response::GroupCreated(_) => "GroupCreated",
            Response::GroupMembersAdded(_) => "GroupMembersAdded",
            Response::GroupMembersRemoved(_) => "GroupMembersRemoved",
            Response::GroupJoined(_) => "GroupJoined",
            Response::GroupLeft(_) => "GroupLeft",
            Response::GroupMembers(_) => "GroupMembers",
            Response::PushToken(_) => "PushToken",
            Response::Muted(..) => "Muted",
        }
    }
}

/// A page of a conversation's history from the server.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct HistoryPage {
    /// The conversation.
    pub conversation_id: String,
    /// The messages, in the requested direction's order.
    pub messages: Vec<LocalMessage>,
    /// More messages exist beyond the last one, in that direction.
    pub has_more: bool,
    /// The conversation's highest seq now.
    pub last_seq: u64,
}

/// A page of the conversation list from the server, most recently updated first.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ConversationPage {
    /// The conversations as the server knows them (the last message is the newest one this
    /// user did not delete).
    pub conversations: Vec<LocalConversation>,
    /// The cursor of the next page; empty on the last page.
    pub next_cursor: String,
}

/// The user's read marker in a conversation after a change.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ReadMarker {
    /// The conversation.
    pub conversation_id: String,
    /// Read up to this seq (markers only move forward).
    pub read_seq: u64,
    /// Messages from others above it, as the server counts them.
    pub unread_count: u64,
}

/// A recalled message.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Recall {
    /// The conversation.
    pub conversation_id: String,
    /// The message's seq.
    pub seq: u64,
    /// The message's server id.
    pub server_msg_id: u64,
    /// Who recalled it (its sender).
    pub by_user: String,
    /// When it was recalled (server time, Unix ms).
    pub time_ms: u64,
}

/// A group's description.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct GroupInfo {
    /// The group id (its conversation is `g:<group id>`).
    pub group_id: String,
    /// Its name.
    pub name: String,
    /// The owner's user id.
    pub owner: String,
    /// Members, the owner included.
    pub member_count: u32,
    /// Anyone may join.
    pub open: bool,
    /// When it was created (server time, Unix ms).
    pub created_ms: u64,
    /// A broadcast channel: only the owner posts (§13.8).
    pub broadcast: bool,
    /// Its messages reach members by read fan-out (§13.12); the core follows it by
    /// conversation seq.
    pub read_fanout: bool,
}

/// A member's role in a group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum GroupRole {
    /// An ordinary member.
    #[default]
    Member,
    /// The owner: may remove members.
    Owner,
}

/// One member of a group.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct GroupMember {
    /// The user.
    pub user_id: String,
    /// Their role.
    pub role: GroupRole,
    /// When they joined (server time, Unix ms).
    pub joined_ms: u64,
}

/// A page of a group's members, ordered by user id.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct GroupMembersPage {
    /// The group as it is now.
    pub group: GroupInfo,
    /// The members on this page.
    pub members: Vec<GroupMember>,
    /// The cursor of the next page; empty on the last page.
    pub next_cursor: String,
}

/// The result of adding or removing group members.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct GroupMembersChange {
    /// The group after the change.
    pub group: GroupInfo,
    /// The users actually added (or removed); those already in (or not in) are left out.
    pub members: Vec<String>,
}

/// What happened to a group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GroupEventKind {
    /// The group was created (members: all initial members, the owner first).
    Created,
    /// Members were added.
    MembersAdded,
    /// Members were removed by the owner.
    MembersRemoved,
    /// A user joined an open group.
    MemberJoined,
    /// A member left.
    MemberLeft,
    /// A kind from a newer protocol revision (its number).
    Unknown(i32),
}

/// A change of a group's membership or name, as every member (and every user removed or
/// leaving) learns it through the inbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupEvent {
    /// The group.
    pub group_id: String,
    /// What happened.
    pub kind: GroupEventKind,
    /// Who did it.
    pub actor: String,
    /// Who was added, removed, joined or left.
    pub members: Vec<String>,
    /// The group's name.
    pub group_name: String,
    /// When (server time, Unix ms).
    pub time_ms: u64,
}

/// Someone started or stopped typing in a conversation (never stored; clear an indicator not
/// refreshed for 10 s).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TypingEvent {
    /// The conversation.
    pub conversation_id: String,
    /// Who is typing.
    pub user_id: String,
    /// `false` = stopped.
    pub typing: bool,
}
