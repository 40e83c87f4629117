//! What the store keeps as blobs: inbox entries (a message by reference, or an event whole),
//! messages, and the side effects of a group change still to be applied.

use im_protocol::pb;
use prost::Message as _;
use timeline_store::{StoreError, StoreResult};

/// One inbox entry as stored.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct StoredEntry {
    /// Server time of the append, for retention by age.
    #[prost(uint64, tag = "1")]
    pub appended_ms: u64,
    /// A message entry: its conversation (empty for an event).
    #[prost(string, tag = "2")]
    pub conversation_id: String,
    /// A message entry: its conversation seq. A read shows the message as it is now (recalled,
    /// or hidden from a user who deleted it), so a recall rewrites no inbox.
    #[prost(uint64, tag = "3")]
    pub conversation_seq: u64,
    /// An event entry, whole (its `inbox_seq` is not used).
    #[prost(message, optional, tag = "4")]
    pub event: Option<pb::InboxEntry>,
}

/// The side effects of a group change, written in the same transaction as the change and
/// applied after it: if the node dies in between, the next change or read of the group
/// applies them.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct GroupEffects {
    /// The event to append to the audience's inboxes.
    #[prost(message, optional, tag = "1")]
    pub event: Option<pb::GroupEvent>,
    /// Who gets the event, sorted.
    #[prost(string, repeated, tag = "2")]
    pub audience: Vec<String>,
    /// Users who joined: they get a conversation state.
    #[prost(string, repeated, tag = "3")]
    pub joined: Vec<String>,
    /// Users who left or were removed: their conversation state goes.
    #[prost(string, repeated, tag = "4")]
    pub dropped: Vec<String>,
    /// Server time of the change.
    #[prost(uint64, tag = "5")]
    pub now_ms: u64,
}

/// Decodes a blob the store wrote.
pub(crate) fn decode<M: prost::Message + Default>(bytes: &[u8], what: &str) -> StoreResult<M> {
    M::decode(bytes)
        .map_err(|e| StoreError::Backend(format!("a stored {what} does not decode: {e}")))
}

/// Encodes a blob.
pub(crate) fn encode<M: prost::Message>(message: &M) -> Vec<u8> {
    message.encode_to_vec()
}

/// Decodes a stored message.
pub(crate) fn decode_message(bytes: &[u8]) -> StoreResult<pb::Message> {
    pb::Message::decode(bytes)
        .map_err(|e| StoreError::Backend(format!("a stored message does not decode: {e}")))
}
