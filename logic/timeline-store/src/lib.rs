//! The storage interface of the logic tier: conversation timelines (history), per-user inboxes
//! (sync timelines with contiguous seqs), idempotency records, per-user conversation state
//! (read markers, unread counts) and groups.
//!
//! Every backend (the embedded one, the in-memory one, ScyllaDB later) implements
//! [`TimelineStore`] and must pass the suite in the `conformance` module, built with the crate
//! feature of that name (backends enable it in their `[dev-dependencies]`). The logic tier holds
//! no state of its own: every rule that needs atomicity across several records (assigning seqs,
//! fanning a message out to inboxes, deduplicating a resend, moving unread counts) is an
//! operation of this interface, so each backend can make it atomic and durable in its own way.
//!
//! Durability contract: when a mutating method returns `Ok`, its effects are durable (on disk,
//! or acknowledged by a storage quorum) and visible to every reader. Readers never observe an
//! effect that is not yet durable: a seq handed to a reader is never handed out again.

use std::future::Future;

use im_protocol::pb;

#[cfg(feature = "conformance")]
pub mod conformance;
pub mod limits;

/// A user and one of their inbox entries, as appended by a mutation: the logic tier pushes these
/// to the user's online devices.
#[derive(Clone, Debug, PartialEq)]
pub struct Delivery {
    /// Whose inbox.
    pub user: String,
    /// The entry, with its inbox seq.
    pub entry: pb::InboxEntry,
}

/// A message to store: the logic tier has checked permissions, sizes and ids.
#[derive(Clone, Debug, PartialEq)]
pub struct NewMessage {
    /// Canonical conversation id (`d:a:b` or `g:group`).
    pub conversation_id: String,
    /// Direct or group.
    pub kind: pb::ConversationKind,
    /// Sending user.
    pub sender_user: String,
    /// Sending device.
    pub sender_device: String,
    /// The sender's idempotency key (unique per sender user).
    pub client_msg_id: String,
    /// App-defined content type.
    pub content_type: u32,
    /// App-defined content.
    pub content: Vec<u8>,
    /// Users whose inbox gets the message: every member of the conversation, the sender
    /// included (for their other devices). Sorted, without duplicates. For a group on a store
    /// that supports read fan-out the store decides at commit (see
    /// [`TimelineStore::commit_messages`]); the logic tier then passes only the sender.
    pub recipients: Vec<String>,
    /// The server's clock, Unix ms.
    pub now_ms: u64,
}

/// A message after [`TimelineStore::commit_messages`].
#[derive(Clone, Debug, PartialEq)]
pub struct CommittedMessage {
    /// The stored message with its server msg id, conversation seq and time.
    pub message: pb::Message,
    /// The sender's inbox seq for this message.
    pub sender_inbox_seq: u64,
    /// The inbox entries appended, one per recipient (the sender's included). Empty when
    /// `duplicate` is true: nothing was stored again.
    pub deliveries: Vec<Delivery>,
    /// `(sender_user, client_msg_id)` was committed before; `message` is the original.
    pub duplicate: bool,
    /// The group was in read fan-out at commit: only the sender's inbox got the message
    /// (false for a duplicate).
    pub read_fanout: bool,
}

/// A user's view of one conversation.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct ConversationState {
    /// Canonical conversation id.
    pub conversation_id: String,
    /// Direct or group.
    pub kind: pb::ConversationKind,
    /// The other user (direct) or the group id (group).
    pub peer: String,
    /// The newest message the user has not deleted for themself (recalled ones included, with
    /// `recalled` set); `None` when there is none.
    pub last_message: Option<pb::Message>,
    /// Highest conversation seq.
    pub last_seq: u64,
    /// This user's read marker (conversation seq, inclusive).
    pub read_seq: u64,
    /// Messages from other users with seq above `read_seq`.
    pub unread_count: u64,
    /// Direct only: the peer's read marker.
    pub peer_read_seq: u64,
    /// When the conversation last changed for this user (Unix ms): new message or read marker.
    pub updated_ms: u64,
}

/// How long inbox entries are kept (SPEC §10.2, §10.4). Retention removes only the oldest
/// entries of an inbox, never its newest one (which carries the head seq); removed seqs are
/// reported as `TRIMMED` by sync. A limit of 0 means no limit of that kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InboxRetention {
    /// Most entries kept per inbox: an append beyond it removes the oldest.
    pub max_entries: u64,
    /// Entries older than this (by the server time they were appended at) are removed by
    /// [`TimelineStore::sweep_inbox_retention`].
    pub max_age_ms: u64,
}

impl InboxRetention {
    /// Keeps everything.
    pub const UNLIMITED: InboxRetention = InboxRetention {
        max_entries: 0,
        max_age_ms: 0,
    };
}

/// A page of a user's inbox.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct InboxPage {
    /// Ascending, contiguous entries.
    pub entries: Vec<pb::InboxEntry>,
    /// The user's highest durable inbox seq (0 = empty inbox).
    pub head_seq: u64,
    /// The lowest seq still retained (1 unless trimmed; head + 1 for an empty, trimmed inbox).
    pub oldest_seq: u64,
}

/// A page of a conversation timeline.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct HistoryPage {
    /// In the requested direction's order.
    pub messages: Vec<pb::Message>,
    /// The conversation's highest durable seq.
    pub last_seq: u64,
}

/// A group to create.
#[derive(Clone, Debug, PartialEq)]
pub struct NewGroup {
    /// Group name.
    pub name: String,
    /// The creator, who becomes owner and member.
    pub owner: String,
    /// Other initial members (may repeat or include the owner; the store deduplicates).
    pub members: Vec<String>,
    /// Anyone may join.
    pub open: bool,
    /// Idempotency key of the creator; empty = none. A repeat returns the same group.
    pub client_request_id: String,
    /// Limit on the member count, owner included.
    pub max_members: u32,
    /// Create it in read fan-out (SPEC §13.12): too large for an inbox entry per member and
    /// message, or a broadcast channel.
    pub read_fanout: bool,
    /// A broadcast channel (SPEC §13.8): only the owner posts. Stored with the group, never
    /// changed.
    pub broadcast: bool,
    /// Server clock, Unix ms.
    pub now_ms: u64,
}

/// Most read-fan-out groups [`TimelineStore::read_fanout_groups`] lists for one user.
pub const MAX_READ_FANOUT_GROUPS_LISTED: usize = 1000;

/// The result of a group mutation.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupChange {
    /// The group after the change.
    pub group: pb::GroupInfo,
    /// Users actually added or removed (empty when nothing changed).
    pub changed: Vec<String>,
    /// `GroupEvent` entries appended to the inboxes of the members (and of removed/leaving
    /// users, for their own removal). Empty when nothing changed.
    pub deliveries: Vec<Delivery>,
}

/// Why a store operation failed. Every variant maps to one protocol error code.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The client msg id was used before for another conversation or another content.
    #[error("client message id {0:?} was already used for a different message")]
    ClientMsgIdConflict(String),
    /// The conversation, message, group or member does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// The user may not do this (not a member, not the owner).
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// Only the sender may recall a message.
    #[error("only the sender may recall a message")]
    NotSender,
    /// The message is older than the recall window.
    #[error("the message is older than the recall window")]
    RecallWindowExpired,
    /// The group would exceed its size limit.
    #[error("the group would exceed {0} members")]
    GroupFull(u32),
    /// The group is not open for joining.
    #[error("the group is not open for joining")]
    NotOpen,
    /// The storage engine failed; the operation had no effect or may be retried.
    #[error("storage failure: {0}")]
    Backend(String),
    /// The store is shutting down.
    #[error("the store is closed")]
    Closed,
    /// The disk is full, or nearly: writes are refused until there is room again. Reads
    /// still work.
    #[error("the server's storage is full")]
    Full,
    /// The store cannot take writes for a moment (it is recovering from a failed write).
    #[error("storage temporarily unavailable: {0}")]
    Unavailable(String),
    /// An argument the store cannot interpret (a malformed page cursor or conversation id). The
    /// logic tier validates what it can; this covers what only the store can check, such as
    /// the cursors it hands out.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

impl StoreError {
    /// The protocol error code to answer with.
    pub fn code(&self) -> pb::ErrorCode {
        match self {
            StoreError::ClientMsgIdConflict(_) => pb::ErrorCode::ClientMsgIdConflict,
            StoreError::NotFound(_) => pb::ErrorCode::NotFound,
            StoreError::Forbidden(_) => pb::ErrorCode::Forbidden,
            StoreError::NotSender => pb::ErrorCode::NotSender,
            StoreError::RecallWindowExpired => pb::ErrorCode::RecallWindowExpired,
            StoreError::GroupFull(_) => pb::ErrorCode::GroupFull,
            StoreError::NotOpen => pb::ErrorCode::NotOpen,
            StoreError::Backend(_) => pb::ErrorCode::Unavailable,
            StoreError::Closed => pb::ErrorCode::ShuttingDown,
            StoreError::Full | StoreError::Unavailable(_) => pb::ErrorCode::Unavailable,
            StoreError::InvalidArgument(_) => pb::ErrorCode::InvalidArgument,
        }
    }
}

/// Result alias of the store.
pub type StoreResult<T> = Result<T, StoreError>;

/// Longest key of a user setting ([`TimelineStore::put_user_setting`]).
pub const MAX_SETTING_KEY_BYTES: usize = 256;
/// Largest value of a user setting.
pub const MAX_SETTING_BYTES: usize = 8 * 1024;
/// Most settings one [`TimelineStore::user_settings`] call returns.
pub const MAX_SETTINGS_LISTED: usize = 1000;

/// Checks a setting's key and value against the limits every store keeps.
pub fn check_setting(key: &str, value: Option<&[u8]>) -> StoreResult<()> {
    if key.is_empty() || key.len() > MAX_SETTING_KEY_BYTES || key.contains('\0') {
        return Err(StoreError::InvalidArgument(format!(
            "a setting's name is 1 to {MAX_SETTING_KEY_BYTES} bytes without NUL"
        )));
    }
    if value.is_some_and(|v| v.len() > MAX_SETTING_BYTES) {
        return Err(StoreError::InvalidArgument(format!(
            "a setting holds at most {MAX_SETTING_BYTES} bytes"
        )));
    }
    Ok(())
}

/// The timeline store. Methods take `&self` and may be called concurrently from many tasks; a
/// backend batches concurrent mutations into group commits.
pub trait TimelineStore: Send + Sync + 'static {
    /// Stores messages, in order. For each one, atomically and durably:
    /// - if `(sender_user, client_msg_id)` was committed before: nothing is written; returns the
    ///   original message with `duplicate: true` (or `ClientMsgIdConflict` when the conversation
    ///   or content differ);
    /// - otherwise assigns the next server msg id (unique, never reused), the conversation's next
    ///   seq (1, 2, 3...), and for each recipient that user's next inbox seq (contiguous per
    ///   user); appends the message to the conversation timeline and an `InboxEntry::Message` to
    ///   each recipient's inbox; records the idempotency key; and updates each recipient's
    ///   [`ConversationState`] (last message and seq, `updated_ms`; `unread_count + 1` for every
    ///   recipient except the sender, whose read marker and unread count stay as they are).
    ///
    /// Messages earlier in `messages` get lower seqs than later ones in the same conversation.
    /// One element's failure does not fail the others.
    ///
    /// A store that supports read fan-out sends a group message to the group's members *at
    /// commit* (SPEC §13.8, §13.12), whatever the caller saw when it listed `recipients`: in
    /// write fan-out every current member's inbox (and the sender's) gets it, in read fan-out
    /// only the sender's. So a member added or removed meanwhile is in or out of the message,
    /// and a message is in every member's inbox or in none but the sender's, never in between.
    /// (A store without read fan-out writes to `recipients`.)
    ///
    /// Unread counts stay exact when states skip messages (a read-fan-out group's members'
    /// states are not touched by others' messages): a recipient whose state's `last_seq` is
    /// below `seq - 1` also counts the messages in between as unread (they are from others:
    /// the user's own messages always update their state).
    fn commit_messages(
        &self,
        messages: Vec<NewMessage>,
    ) -> impl Future<Output = Vec<StoreResult<CommittedMessage>>> + Send;

    /// Moves `user`'s read marker in `conversation_id` forward to `read_seq` (clamped to the
    /// conversation's last seq; a lower value leaves it unchanged), brings the state's
    /// `last_seq` up to the conversation's last seq, and recomputes the unread count exactly
    /// (messages from others above the marker). When it moved, atomically appends a
    /// `ReadMarkerSync` to `user`'s inbox and, if `receipt_to` is given, a `ReadReceipt` to that
    /// user's inbox, and sets that user's `peer_read_seq`. `NotFound` if `user` has no state for
    /// the conversation.
    fn mark_read(
        &self,
        user: &str,
        conversation_id: &str,
        read_seq: u64,
        receipt_to: Option<&str>,
        now_ms: u64,
    ) -> impl Future<Output = StoreResult<(ConversationState, Vec<Delivery>)>> + Send;

    /// Recalls message `seq` of `conversation_id` on behalf of `by_user`: `NotFound`, `NotSender`
    /// or `RecallWindowExpired` (when `now_ms - server_time_ms > window_ms`) otherwise marks it
    /// recalled and erases its content in the timeline and in the inbox entries that carry it
    /// (the protocol promises `recalled` "in history and sync": a later `read_inbox` returns the
    /// message recalled and empty), and appends a `RecallEvent` to the inbox of every user in
    /// `recipients`. Recalling twice succeeds and appends nothing the second time. The checks
    /// run in that order: a second recall by the sender succeeds even after the window.
    fn recall(
        &self,
        conversation_id: &str,
        seq: u64,
        by_user: &str,
        recipients: &[String],
        window_ms: u64,
        now_ms: u64,
    ) -> impl Future<Output = StoreResult<(pb::RecallEvent, Vec<Delivery>)>> + Send;

    /// Reads `user`'s inbox from `from_seq` (inclusive, 0 = 1) up to `to_seq` (inclusive,
    /// 0 = head), at most `limit` entries. Only durable entries are returned. The entry of a
    /// message `user` deleted for themself is returned with no body, so seqs stay contiguous.
    fn read_inbox(
        &self,
        user: &str,
        from_seq: u64,
        to_seq: u64,
        limit: u32,
    ) -> impl Future<Output = StoreResult<InboxPage>> + Send;

    /// Reads a conversation timeline: `Older` = seqs below `anchor_seq` (0 = from the newest),
    /// newest first; `Newer` = seqs above `anchor_seq`, oldest first. At most `limit`.
    fn read_history(
        &self,
        conversation_id: &str,
        anchor_seq: u64,
        direction: pb::HistoryDirection,
        limit: u32,
    ) -> impl Future<Output = StoreResult<HistoryPage>> + Send;

    /// Like [`TimelineStore::read_history`], as `viewer` sees it: messages `viewer` deleted for
    /// themself ([`TimelineStore::delete_messages`]) are left out, and a page still holds up to
    /// `limit` of the others.
    fn read_history_as(
        &self,
        viewer: &str,
        conversation_id: &str,
        anchor_seq: u64,
        direction: pb::HistoryDirection,
        limit: u32,
    ) -> impl Future<Output = StoreResult<HistoryPage>> + Send;

    /// Deletes messages of `conversation_id` for `user` only (SPEC §13.7): each seq in `seqs`
    /// that exists (1..= the conversation's last seq) and that `user` has not deleted yet is
    /// hidden from then on in `user`'s history ([`TimelineStore::read_history_as`]), in the
    /// message entries of `user`'s inbox (returned with no body) and as the last message of
    /// `user`'s conversation state. If any seq was newly hidden, atomically appends one
    /// `DeleteEvent` listing exactly those seqs, ascending, to `user`'s inbox. Returns how many
    /// were newly hidden and the delivery of that event (none when 0). Unread counts, seqs and
    /// other users are not affected.
    fn delete_messages(
        &self,
        user: &str,
        conversation_id: &str,
        seqs: &[u64],
        now_ms: u64,
    ) -> impl Future<Output = StoreResult<(u64, Vec<Delivery>)>> + Send;

    /// `user`'s conversations, most recently updated first, `limit` per page; `cursor` is empty
    /// for the first page, else the previous page's returned cursor (empty = no more).
    fn conversations(
        &self,
        user: &str,
        limit: u32,
        cursor: &str,
    ) -> impl Future<Output = StoreResult<(Vec<ConversationState>, String)>> + Send;

    /// One conversation of `user`, if they have state for it.
    fn conversation(
        &self,
        user: &str,
        conversation_id: &str,
    ) -> impl Future<Output = StoreResult<Option<ConversationState>>> + Send;

    /// Enforces the store's [`InboxRetention`] on every inbox: removes the entries appended
    /// more than `max_age_ms` before `now_ms`, and the oldest entries beyond `max_entries` (which
    /// appends enforce already; this catches inboxes that were over the limit when it was
    /// set). Never removes an inbox's newest entry. Works in bounded steps: a very long backlog
    /// may take several sweeps. Returns how many entries were removed.
    fn sweep_inbox_retention(&self, now_ms: u64) -> impl Future<Output = StoreResult<u64>> + Send;

    /// `user`'s highest durable inbox seq (0 = none).
    fn inbox_head(&self, user: &str) -> impl Future<Output = StoreResult<u64>> + Send;

    /// The inbox epoch: a non-zero number, below 2^53, chosen when this store's data was
    /// created and kept for its lifetime. Inbox seqs are only comparable within one epoch: a
    /// store restored from an older backup or recreated empty has another one, so clients
    /// holding a cursor of the old numbering know to start over (SPEC §10.8).
    fn inbox_epoch(&self) -> u64;

    /// Records that `device` of `user` has applied its inbox up to `seq` (kept as a maximum).
    fn record_delivery(
        &self,
        user: &str,
        device: &str,
        seq: u64,
    ) -> impl Future<Output = StoreResult<()>> + Send;

    /// The delivery cursor of a device (0 = none).
    fn delivery_cursor(
        &self,
        user: &str,
        device: &str,
    ) -> impl Future<Output = StoreResult<u64>> + Send;

    /// Sets (`Some`) or removes (`None`) one of `user`'s settings: small records of the user's
    /// own, such as a device's push registration or a muted conversation, named by `key`
    /// (1..=[`MAX_SETTING_KEY_BYTES`] bytes, no NUL; values at most [`MAX_SETTING_BYTES`]).
    fn put_user_setting(
        &self,
        user: &str,
        key: &str,
        value: Option<Vec<u8>>,
    ) -> impl Future<Output = StoreResult<()>> + Send;

    /// `user`'s settings whose key starts with `prefix`, in key order, at most
    /// [`MAX_SETTINGS_LISTED`].
    fn user_settings(
        &self,
        user: &str,
        prefix: &str,
    ) -> impl Future<Output = StoreResult<Vec<(String, Vec<u8>)>>> + Send;

    /// Creates a group (id assigned by the store, unique, valid per `im_protocol::ids`), owner
    /// first; appends a `GroupEvent::Created` (members = all members) to every member's inbox and
    /// gives every member a [`ConversationState`] for `g:<id>`. `GroupFull` above `max_members`.
    ///
    /// Group events carry the group's mode (`read_fanout`) and its last conversation seq. In a
    /// read-fan-out group, membership changes are announced only to the users they change
    /// (added, removed, joined, left), not to every member; [`TimelineStore::read_fanout_groups`]
    /// lists the group for each member.
    fn create_group(
        &self,
        group: NewGroup,
    ) -> impl Future<Output = StoreResult<GroupChange>> + Send;

    /// Adds members (any member may): `Forbidden` for a non-member actor, `GroupFull` above
    /// `max_members`. Event `MembersAdded` to all members after the change. Each added user
    /// gets a [`ConversationState`] for `g:<id>` with the read marker at the conversation's
    /// current last seq (messages from before they joined are not unread for them).
    fn add_members(
        &self,
        group_id: &str,
        actor: &str,
        members: &[String],
        max_members: u32,
        now_ms: u64,
    ) -> impl Future<Output = StoreResult<GroupChange>> + Send;

    /// Removes members (only the owner, who cannot remove themself this way: `Forbidden`).
    /// Event `MembersRemoved` to the remaining members and the removed ones.
    fn remove_members(
        &self,
        group_id: &str,
        actor: &str,
        members: &[String],
        now_ms: u64,
    ) -> impl Future<Output = StoreResult<GroupChange>> + Send;

    /// `user` joins an open group (`NotOpen` otherwise; `GroupFull`); joining twice changes
    /// nothing (not even `NotOpen`). Event `MemberJoined` to all members. The joiner gets a
    /// [`ConversationState`] as in [`TimelineStore::add_members`].
    fn join_group(
        &self,
        group_id: &str,
        user: &str,
        max_members: u32,
        now_ms: u64,
    ) -> impl Future<Output = StoreResult<GroupChange>> + Send;

    /// `user` leaves (`Forbidden` if not a member). If the owner leaves, the longest-standing
    /// member becomes owner; the last member leaving leaves an empty group. Event `MemberLeft`
    /// to the remaining members and the leaver.
    fn leave_group(
        &self,
        group_id: &str,
        user: &str,
        now_ms: u64,
    ) -> impl Future<Output = StoreResult<GroupChange>> + Send;

    /// The group's info, or `NotFound`.
    fn group(&self, group_id: &str) -> impl Future<Output = StoreResult<pb::GroupInfo>> + Send;

    /// Members ordered by user id, after `cursor` (exclusive; empty = from the start), at most
    /// `limit`; the returned cursor is empty when there are no more.
    fn group_members(
        &self,
        group_id: &str,
        limit: u32,
        cursor: &str,
    ) -> impl Future<Output = StoreResult<(Vec<pb::GroupMember>, String)>> + Send;

    /// Whether `user` is a member of the group (`NotFound` if the group does not exist).
    fn is_member(
        &self,
        group_id: &str,
        user: &str,
    ) -> impl Future<Output = StoreResult<bool>> + Send;

    /// Every member's user id, sorted: the fan-out list for a group message.
    fn member_ids(&self, group_id: &str) -> impl Future<Output = StoreResult<Vec<String>>> + Send;

    /// Whether this store implements read fan-out ([`TimelineStore::set_group_fanout`],
    /// [`TimelineStore::read_fanout_groups`] and read-fan-out groups in the other methods).
    /// The logic tier keeps every group in write fan-out on a store that does not.
    fn supports_read_fanout(&self) -> bool {
        true
    }

    /// Switches a group between write fan-out (`read_fanout` false) and read fan-out (SPEC
    /// §13.12), atomically with respect to sends: appends a `GroupEvent::FanoutChanged` (with
    /// the new mode and the conversation's last seq, `changed` = every member) to every
    /// member's inbox, and adds the group to (or removes it from) every member's
    /// [`TimelineStore::read_fanout_groups`]. Nothing changes when it is in that mode already.
    fn set_group_fanout(
        &self,
        group_id: &str,
        read_fanout: bool,
        now_ms: u64,
    ) -> impl Future<Output = StoreResult<GroupChange>> + Send;

    /// The read-fan-out groups `user` is a member of, sorted by id, at most
    /// [`MAX_READ_FANOUT_GROUPS_LISTED`].
    fn read_fanout_groups(
        &self,
        user: &str,
    ) -> impl Future<Output = StoreResult<Vec<String>>> + Send;

    /// What opening a session reads: [`TimelineStore::inbox_head`] and, when `read_fanout` is
    /// true, [`TimelineStore::read_fanout_groups`] (empty otherwise, and on a store without
    /// read fan-out). A backend may answer both from one read; every login pays for it.
    fn session_start(
        &self,
        user: &str,
        read_fanout: bool,
    ) -> impl Future<Output = StoreResult<SessionStart>> + Send {
        async move {
            let inbox_head = self.inbox_head(user).await?;
            let read_groups = if read_fanout && self.supports_read_fanout() {
                self.read_fanout_groups(user).await?
            } else {
                Vec::new()
            };
            Ok(SessionStart {
                inbox_head,
                read_groups,
            })
        }
    }
}

/// What [`TimelineStore::session_start`] reads.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionStart {
    /// The user's inbox head.
    pub inbox_head: u64,
    /// The read-fan-out groups the user is a member of.
    pub read_groups: Vec<String>,
}
