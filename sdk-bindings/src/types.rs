//! The records and enums the apps see, one for each of the client core's public types, with
//! conversions from the core's. They mirror the core field for field; only the shapes uniffi
//! cannot carry change (tuple variants become named fields, `Event::State` is `StateChanged`),
//! and a message gains `text`, its content decoded when it is a text message.

use sdk_core as core;

/// The delivery state of a message the user sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, uniffi::Enum)]
pub enum SendState {
    /// In the outbox, not yet acknowledged by the server.
    Sending,
    /// Stored by the server.
    Sent,
    /// Gave up after the attempt limit or a non-retryable error; `retry` puts it back.
    Failed,
}

impl From<core::SendState> for SendState {
    fn from(state: core::SendState) -> SendState {
        match state {
            core::SendState::Sending => SendState::Sending,
            core::SendState::Sent => SendState::Sent,
            core::SendState::Failed => SendState::Failed,
        }
    }
}

/// The content type of a text message (UTF-8 content).
pub const TEXT_CONTENT_TYPE: u32 = 0;

/// A message as the app shows it.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct Message {
    /// Client-side id: the outbox id of own messages, 0 for messages from others.
    pub local_id: u64,
    /// Conversation id (`d:alice:bob` for a direct chat, `g:GROUP` for a group).
    pub conversation_id: String,
    /// Sender user id.
    pub sender: String,
    /// The sender's idempotency key.
    pub client_msg_id: String,
    /// Conversation seq; 0 until the server assigned one.
    pub seq: u64,
    /// Server message id; 0 until known.
    pub server_msg_id: u64,
    /// Server time (Unix ms), or the local creation time until acknowledged.
    pub time_ms: u64,
    /// App-defined content type; 0 is text.
    pub content_type: u32,
    /// The content (empty once recalled).
    pub content: Vec<u8>,
    /// The content as text, for a text message whose content is UTF-8.
    pub text: Option<String>,
    /// Own messages: the delivery state; others' messages: always `Sent`.
    pub state: SendState,
    /// Recalled by its sender.
    pub recalled: bool,
}

impl From<core::LocalMessage> for Message {
    fn from(message: core::LocalMessage) -> Message {
        let text = (message.content_type == TEXT_CONTENT_TYPE && !message.recalled)
            .then(|| String::from_utf8(message.content.clone()).ok())
            .flatten();
        Message {
            local_id: message.local_id,
            conversation_id: message.conversation_id,
            sender: message.sender,
            client_msg_id: message.client_msg_id,
            seq: message.seq,
            server_msg_id: message.server_msg_id,
            time_ms: message.time_ms,
            content_type: message.content_type,
            content: message.content,
            text,
            state: message.state.into(),
            recalled: message.recalled,
        }
    }
}

pub(crate) fn messages(list: Vec<core::LocalMessage>) -> Vec<Message> {
    list.into_iter().map(Message::from).collect()
}

/// Where a message goes.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Enum)]
pub enum Recipient {
    /// A user (a direct conversation).
    User {
        /// The user id.
        user_id: String,
    },
    /// A group.
    Group {
        /// The group id (without the `g:` of its conversation id).
        group_id: String,
    },
}

impl From<Recipient> for core::Recipient {
    fn from(recipient: Recipient) -> core::Recipient {
        match recipient {
            Recipient::User { user_id } => core::Recipient::User(user_id),
            Recipient::Group { group_id } => core::Recipient::Group(group_id),
        }
    }
}

/// A conversation as the app lists it.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct Conversation {
    /// Conversation id.
    pub conversation_id: String,
    /// The other user (direct) or the group id.
    pub peer: String,
    /// The group's name, if known.
    pub title: String,
    /// Highest conversation seq seen.
    pub last_seq: u64,
    /// The newest message, if any.
    pub last_message: Option<Message>,
    /// The user's read marker.
    pub read_seq: u64,
    /// Messages from others above the read marker.
    pub unread_count: u64,
    /// Direct chats: the peer's read marker.
    pub peer_read_seq: u64,
    /// Last change (Unix ms).
    pub updated_ms: u64,
}

impl From<core::LocalConversation> for Conversation {
    fn from(conversation: core::LocalConversation) -> Conversation {
        Conversation {
            conversation_id: conversation.conversation_id,
            peer: conversation.peer,
            title: conversation.title,
            last_seq: conversation.last_seq,
            last_message: conversation.last_message.map(Message::from),
            read_seq: conversation.read_seq,
            unread_count: conversation.unread_count,
            peer_read_seq: conversation.peer_read_seq,
            updated_ms: conversation.updated_ms,
        }
    }
}

pub(crate) fn conversations(list: Vec<core::LocalConversation>) -> Vec<Conversation> {
    list.into_iter().map(Conversation::from).collect()
}

/// Which way a history page goes from its anchor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, uniffi::Enum)]
pub enum HistoryDirection {
    /// Seqs below the anchor, newest first (anchor 0 = from the newest message).
    Older,
    /// Seqs above the anchor, oldest first (anchor 0 = from seq 1).
    Newer,
}

impl From<HistoryDirection> for core::HistoryDirection {
    fn from(direction: HistoryDirection) -> core::HistoryDirection {
        match direction {
            HistoryDirection::Older => core::HistoryDirection::Older,
            HistoryDirection::Newer => core::HistoryDirection::Newer,
        }
    }
}

/// A page of a conversation's history from the server.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct HistoryPage {
    /// The conversation.
    pub conversation_id: String,
    /// The messages, in the requested direction's order.
    pub messages: Vec<Message>,
    /// More messages exist beyond the last one, in that direction.
    pub has_more: bool,
    /// The conversation's highest seq now.
    pub last_seq: u64,
}

impl From<core::HistoryPage> for HistoryPage {
    fn from(page: core::HistoryPage) -> HistoryPage {
        HistoryPage {
            conversation_id: page.conversation_id,
            messages: messages(page.messages),
            has_more: page.has_more,
            last_seq: page.last_seq,
        }
    }
}

/// A page of the conversation list from the server, most recently updated first.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct ConversationPage {
    /// The conversations.
    pub conversations: Vec<Conversation>,
    /// The next page's cursor; empty on the last page.
    pub next_cursor: String,
}

impl From<core::ConversationPage> for ConversationPage {
    fn from(page: core::ConversationPage) -> ConversationPage {
        ConversationPage {
            conversations: conversations(page.conversations),
            next_cursor: page.next_cursor,
        }
    }
}

/// The user's read marker in a conversation after a change.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct ReadMarker {
    /// The conversation.
    pub conversation_id: String,
    /// Read up to this seq (markers only move forward).
    pub read_seq: u64,
    /// Messages from others above it, as the server counts them.
    pub unread_count: u64,
}

impl From<core::ReadMarker> for ReadMarker {
    fn from(marker: core::ReadMarker) -> ReadMarker {
        ReadMarker {
            conversation_id: marker.conversation_id,
            read_seq: marker.read_seq,
            unread_count: marker.unread_count,
        }
    }
}

/// A recalled message.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct Recall {
    /// The conversation.
    pub conversation_id: String,
    /// The message's seq.
    pub seq: u64,
    /// The message's server id.
    pub server_msg_id: u64,
    /// Who recalled it (its sender).
    pub by_user: String,
    /// When (server time, Unix ms).
    pub time_ms: u64,
}

impl From<core::Recall> for Recall {
    fn from(recall: core::Recall) -> Recall {
        Recall {
            conversation_id: recall.conversation_id,
            seq: recall.seq,
            server_msg_id: recall.server_msg_id,
            by_user: recall.by_user,
            time_ms: recall.time_ms,
        }
    }
}

/// A group's description.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
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
    /// A broadcast channel: only the owner posts.
    pub broadcast: bool,
    /// Its messages reach members by read fan-out (the core follows it by conversation seq).
    pub read_fanout: bool,
}

impl From<core::GroupInfo> for GroupInfo {
    fn from(group: core::GroupInfo) -> GroupInfo {
        GroupInfo {
            group_id: group.group_id,
            name: group.name,
            owner: group.owner,
            member_count: group.member_count,
            open: group.open,
            created_ms: group.created_ms,
            broadcast: group.broadcast,
            read_fanout: group.read_fanout,
        }
    }
}

/// A member's role in a group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, uniffi::Enum)]
pub enum GroupRole {
    /// An ordinary member.
    Member,
    /// The owner: may remove members.
    Owner,
}

/// One member of a group.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct GroupMember {
    /// The user.
    pub user_id: String,
    /// Their role.
    pub role: GroupRole,
    /// When they joined (server time, Unix ms).
    pub joined_ms: u64,
}

/// A page of a group's members, ordered by user id.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct GroupMembersPage {
    /// The group as it is now.
    pub group: GroupInfo,
    /// The members on this page.
    pub members: Vec<GroupMember>,
    /// The next page's cursor; empty on the last page.
    pub next_cursor: String,
}

impl From<core::GroupMembersPage> for GroupMembersPage {
    fn from(page: core::GroupMembersPage) -> GroupMembersPage {
        GroupMembersPage {
            group: page.group.into(),
            members: page
                .members
                .into_iter()
                .map(|member| GroupMember {
                    user_id: member.user_id,
                    role: match member.role {
                        core::GroupRole::Member => GroupRole::Member,
                        core::GroupRole::Owner => GroupRole::Owner,
                    },
                    joined_ms: member.joined_ms,
                })
                .collect(),
            next_cursor: page.next_cursor,
        }
    }
}

/// The result of adding or removing group members.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct GroupMembersChange {
    /// The group after the change.
    pub group: GroupInfo,
    /// The users actually added (or removed).
    pub members: Vec<String>,
}

impl From<core::GroupMembersChange> for GroupMembersChange {
    fn from(change: core::GroupMembersChange) -> GroupMembersChange {
        GroupMembersChange {
            group: change.group.into(),
            members: change.members,
        }
    }
}

/// What happened to a group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, uniffi::Enum)]
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
    /// A kind from a newer protocol revision.
    Unknown {
        /// Its number.
        code: i32,
    },
}

/// A change of a group's membership, as every member (and every user removed or leaving)
/// learns it.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
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

impl From<core::GroupEvent> for GroupEvent {
    fn from(event: core::GroupEvent) -> GroupEvent {
        GroupEvent {
            group_id: event.group_id,
            kind: match event.kind {
                core::GroupEventKind::Created => GroupEventKind::Created,
                core::GroupEventKind::MembersAdded => GroupEventKind::MembersAdded,
                core::GroupEventKind::MembersRemoved => GroupEventKind::MembersRemoved,
                core::GroupEventKind::MemberJoined => GroupEventKind::MemberJoined,
                core::GroupEventKind::MemberLeft => GroupEventKind::MemberLeft,
                core::GroupEventKind::Unknown(code) => GroupEventKind::Unknown { code },
            },
            actor: event.actor,
            members: event.members,
            group_name: event.group_name,
            time_ms: event.time_ms,
        }
    }
}

/// Why the client stopped reconnecting by itself.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Enum)]
pub enum StopReason {
    /// The token expired and no fresh one came: call `set_token`.
    TokenExpired,
    /// The server refused the token or the device.
    AuthFailed {
        /// The server's words.
        message: String,
    },
    /// The same device logged in on another connection.
    LoggedInElsewhere,
}

/// The connection as the app shows it.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Enum)]
pub enum ConnectionState {
    /// Not connecting (before the start, or after `shutdown`).
    Offline,
    /// Opening the transport.
    Connecting,
    /// Transport open, handshake sent.
    Authenticating,
    /// Authenticated, pulling what arrived while offline.
    Syncing,
    /// Caught up: messages arrive live.
    Online,
    /// The link failed; reconnecting after a backoff.
    WaitingToReconnect,
    /// Stopped until the app acts.
    Stopped {
        /// Why.
        reason: StopReason,
    },
}

impl From<core::ConnectionState> for ConnectionState {
    fn from(state: core::ConnectionState) -> ConnectionState {
        match state {
            core::ConnectionState::Offline => ConnectionState::Offline,
            core::ConnectionState::Connecting => ConnectionState::Connecting,
            core::ConnectionState::Authenticating => ConnectionState::Authenticating,
            core::ConnectionState::Syncing => ConnectionState::Syncing,
            core::ConnectionState::Online => ConnectionState::Online,
            core::ConnectionState::WaitingToReconnect => ConnectionState::WaitingToReconnect,
            core::ConnectionState::Stopped(reason) => ConnectionState::Stopped {
                reason: match reason {
                    core::StopReason::TokenExpired => StopReason::TokenExpired,
                    core::StopReason::AuthFailed(message) => StopReason::AuthFailed { message },
                    core::StopReason::LoggedInElsewhere => StopReason::LoggedInElsewhere,
                },
            },
        }
    }
}

/// What happened, in the order it happened.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Enum)]
pub enum ClientEvent {
    /// The connection state changed.
    StateChanged {
        /// The new state.
        state: ConnectionState,
    },
    /// Everything the server held at connect time is applied.
    Synced {
        /// The inbox cursor.
        cursor: u64,
    },
    /// An own message entered the outbox (state `Sending`).
    MessageAdded {
        /// The message.
        message: Message,
    },
    /// An own message changed state (`Sent` with its seq, or `Failed`).
    MessageUpdated {
        /// The message.
        message: Message,
    },
    /// A message from someone else (or from another device of this user) arrived.
    MessageReceived {
        /// The message.
        message: Message,
    },
    /// A message was recalled by its sender.
    MessageRecalled {
        /// The conversation.
        conversation_id: String,
        /// The message's seq.
        seq: u64,
    },
    /// Messages were deleted for this user.
    MessagesDeleted {
        /// The conversation.
        conversation_id: String,
        /// Their seqs.
        seqs: Vec<u64>,
    },
    /// A conversation's preview, unread count or read markers changed.
    ConversationUpdated {
        /// The conversation now.
        conversation: Conversation,
    },
    /// A peer read a conversation up to a seq.
    ReadReceipt {
        /// The conversation.
        conversation_id: String,
        /// Who read.
        reader: String,
        /// Up to which seq.
        read_seq: u64,
    },
    /// A group's membership changed.
    GroupChanged {
        /// What changed.
        event: GroupEvent,
    },
    /// Someone started or stopped typing (clear an indicator not refreshed for 10 s).
    Typing {
        /// The conversation.
        conversation_id: String,
        /// Who.
        user_id: String,
        /// `false` = stopped.
        typing: bool,
    },
    /// The local store failed; the client keeps running.
    StoreError {
        /// What failed.
        message: String,
    },
    /// The server's inbox is not the one the local state came from: local messages and
    /// conversations were dropped and the client syncs from the start. Reload what is shown.
    InboxReset {
        /// The server's inbox epoch from now on.
        epoch: u64,
    },
}

impl From<core::Event> for ClientEvent {
    fn from(event: core::Event) -> ClientEvent {
        match event {
            core::Event::State(state) => ClientEvent::StateChanged {
                state: state.into(),
            },
            core::Event::Synced { cursor } => ClientEvent::Synced { cursor },
            core::Event::MessageAdded(message) => ClientEvent::MessageAdded {
                message: message.into(),
            },
            core::Event::MessageUpdated(message) => ClientEvent::MessageUpdated {
                message: message.into(),
            },
            core::Event::MessageReceived(message) => ClientEvent::MessageReceived {
                message: message.into(),
            },
            core::Event::MessageRecalled {
                conversation_id,
                seq,
            } => ClientEvent::MessageRecalled {
                conversation_id,
                seq,
            },
            core::Event::MessagesDeleted {
                conversation_id,
                seqs,
            } => ClientEvent::MessagesDeleted {
                conversation_id,
                seqs,
            },
            core::Event::ConversationUpdated(conversation) => ClientEvent::ConversationUpdated {
                conversation: conversation.into(),
            },
            core::Event::ReadReceipt {
                conversation_id,
                reader,
                read_seq,
            } => ClientEvent::ReadReceipt {
                conversation_id,
                reader,
                read_seq,
            },
            core::Event::GroupChanged(event) => ClientEvent::GroupChanged {
                event: event.into(),
            },
            core::Event::Typing(event) => ClientEvent::Typing {
                conversation_id: event.conversation_id,
                user_id: event.user_id,
                typing: event.typing,
            },
            core::Event::StoreError(message) => ClientEvent::StoreError { message },
            core::Event::InboxReset { epoch } => ClientEvent::InboxReset { epoch },
        }
    }
}

/// The platform reported to the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, uniffi::Enum)]
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

impl From<Platform> for core::Platform {
    fn from(platform: Platform) -> core::Platform {
        match platform {
            Platform::Ios => core::Platform::Ios,
            Platform::Android => core::Platform::Android,
            Platform::Web => core::Platform::Web,
            Platform::Desktop => core::Platform::Desktop,
            Platform::Server => core::Platform::Server,
        }
    }
}

/// The push service a device's token comes from (SPEC §13.11).
#[derive(Clone, Copy, Debug, PartialEq, Eq, uniffi::Enum)]
pub enum PushService {
    /// Apple Push Notification service: the device token, hex.
    Apns,
    /// Firebase Cloud Messaging: the registration token.
    Fcm,
    /// The deployment's own push gateway.
    Webhook,
}

impl From<PushService> for core::PushService {
    fn from(service: PushService) -> core::PushService {
        match service {
            PushService::Apns => core::PushService::Apns,
            PushService::Fcm => core::PushService::Fcm,
            PushService::Webhook => core::PushService::Webhook,
        }
    }
}

/// What a push notification may show on the lock screen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, uniffi::Enum)]
pub enum PushPreview {
    /// "New message" only.
    None,
    /// Who wrote.
    Sender,
    /// Who wrote and the start of the text.
    Full,
}

impl From<PushPreview> for core::PushPreview {
    fn from(preview: PushPreview) -> core::PushPreview {
        match preview {
            PushPreview::None => core::PushPreview::None,
            PushPreview::Sender => core::PushPreview::Sender,
            PushPreview::Full => core::PushPreview::Full,
        }
    }
}
