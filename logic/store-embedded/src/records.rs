//! Stored values that no protocol message fits. Everything else is stored as the protocol
//! message itself (`pb::Message` in timelines, `pb::GroupInfo` inside [`GroupRecord`]).

use im_protocol::pb;

/// A user's state of one conversation. The last message is not copied here: it is read from
/// the timeline at `last_seq`, so a recall shows up in the conversation list without touching
/// every member's state, and a group message is not copied once per member.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct StateRecord {
    #[prost(string, tag = "1")]
    pub conversation_id: String,
    #[prost(enumeration = "pb::ConversationKind", tag = "2")]
    pub kind: i32,
    #[prost(string, tag = "3")]
    pub peer: String,
    #[prost(uint64, tag = "4")]
    pub last_seq: u64,
    #[prost(uint64, tag = "5")]
    pub read_seq: u64,
    #[prost(uint64, tag = "6")]
    pub unread_count: u64,
    #[prost(uint64, tag = "7")]
    pub peer_read_seq: u64,
    #[prost(uint64, tag = "8")]
    pub updated_ms: u64,
}

/// One inbox entry. A message entry is a reference into the conversation timeline rather than a
/// copy: fan-out to a group writes a few bytes per member, and a recall erases the content in
/// every inbox at once (the protocol shows `recalled` "in history and sync").
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct InboxRecord {
    /// Set for a message entry: the message's conversation.
    #[prost(string, tag = "1")]
    pub message_conversation_id: String,
    /// Set for a message entry: the message's conversation seq.
    #[prost(uint64, tag = "2")]
    pub message_seq: u64,
    /// Every other entry, stored whole (its `inbox_seq` is the key's).
    #[prost(message, optional, tag = "3")]
    pub entry: Option<pb::InboxEntry>,
    /// Server time of the append (Unix ms), for retention by age. 0 in records written before
    /// retention existed: their age is unknown.
    #[prost(uint64, tag = "4")]
    pub appended_ms: u64,
}

/// What a `(sender, client_msg_id)` was used for. The content digest lets a resend be told
/// from a conflicting reuse even after a recall has erased the stored content.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct DedupRecord {
    #[prost(string, tag = "1")]
    pub conversation_id: String,
    #[prost(uint64, tag = "2")]
    pub conversation_seq: u64,
    #[prost(uint64, tag = "3")]
    pub sender_inbox_seq: u64,
    #[prost(uint32, tag = "4")]
    pub content_type: u32,
    #[prost(uint64, tag = "5")]
    pub content_len: u64,
    #[prost(fixed64, tag = "6")]
    pub content_digest: u64,
}

/// A group: its public info plus the next join order, which ranks members by how long they
/// have been in the group (the owner's successor is the lowest).
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct GroupRecord {
    #[prost(message, optional, tag = "1")]
    pub info: Option<pb::GroupInfo>,
    #[prost(uint64, tag = "2")]
    pub next_join_order: u64,
}

/// A member of a group, with its join order (see [`GroupRecord`]).
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct MemberRecord {
    #[prost(message, optional, tag = "1")]
    pub member: Option<pb::GroupMember>,
    #[prost(uint64, tag = "2")]
    pub join_order: u64,
}

/// FNV-1a, 64 bits: a digest that is stable across Rust versions and platforms (unlike
/// `std`'s `DefaultHasher`), since it is stored. Collisions only let a sender's own conflicting
/// reuse of a client msg id pass as a duplicate after a recall; no security rests on it.
pub(crate) fn content_digest(content: &[u8]) -> u64 {
    content
        .iter()
        .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
            (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
        })
}
