//! Everything the store holds, and the primitives its operations share: heads, id counters,
//! conversation states and what a user sees of a timeline.
//!
//! Every collection is ordered (`BTreeMap`, `BTreeSet`, `Vec`), never hashed: iteration order
//! must not depend on a random hash seed, or two runs of one simulation could differ.

use std::collections::{BTreeMap, BTreeSet};

use im_protocol::ids::ConversationRef;
use im_protocol::pb;
use timeline_store::{ConversationState, InboxRetention, StoreError};

use crate::inbox::Inbox;

/// A user's state of one conversation. Like the embedded store, it keeps the last seq rather
/// than a copy of the last message: that is read from the timeline, so a recall or a delete
/// shows up without touching the state.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct StateRecord {
    pub conversation_id: String,
    pub kind: pb::ConversationKind,
    pub peer: String,
    pub last_seq: u64,
    pub read_seq: u64,
    pub unread_count: u64,
    pub peer_read_seq: u64,
    pub updated_ms: u64,
}

impl StateRecord {
    /// A user's empty state of `conversation_id`.
    pub fn new(conversation_id: &str, kind: pb::ConversationKind, peer: &str) -> StateRecord {
        StateRecord {
            conversation_id: conversation_id.to_owned(),
            kind,
            peer: peer.to_owned(),
            last_seq: 0,
            read_seq: 0,
            unread_count: 0,
            peer_read_seq: 0,
            updated_ms: 0,
        }
    }
}

/// What a `(sender, client_msg_id)` was used for. As in the embedded store, the content is
/// kept as a length and a digest, so a resend can be told from a conflicting reuse even after a
/// recall has erased the stored content.
#[derive(Clone, Debug)]
pub(crate) struct DedupRecord {
    pub conversation_id: String,
    pub conversation_seq: u64,
    pub sender_inbox_seq: u64,
    pub content_type: u32,
    pub content_len: u64,
    pub content_digest: u64,
}

/// A member of a group and their join order, which ranks members by how long they have been
/// in the group (the owner's successor is the lowest).
#[derive(Clone, Debug)]
pub(crate) struct MemberRecord {
    pub member: pb::GroupMember,
    pub join_order: u64,
}

/// A group: its public info, its members by user id, and the next join order.
#[derive(Clone, Debug)]
pub(crate) struct GroupRecord {
    pub info: pb::GroupInfo,
    pub members: BTreeMap<String, MemberRecord>,
    pub next_join_order: u64,
}

/// The whole store.
#[derive(Debug)]
pub(crate) struct State {
    /// Enforced on every append and by sweeps.
    pub retention: InboxRetention,
    /// The next server msg id (ids start at 1: 0 means none).
    pub next_server_msg_id: u64,
    /// The number in the next group id `grp-<n>`.
    pub next_group_number: u64,
    /// Conversation id -> its messages; the message with seq `s` is at index `s - 1`, since a
    /// conversation's seqs have no holes.
    pub timelines: BTreeMap<String, Vec<pb::Message>>,
    /// User -> inbox.
    pub inboxes: BTreeMap<String, Inbox>,
    /// `(sender, client_msg_id)` -> what it was used for.
    pub dedup: BTreeMap<(String, String), DedupRecord>,
    /// User -> conversation id -> state.
    pub states: BTreeMap<String, BTreeMap<String, StateRecord>>,
    /// Group id -> group.
    pub groups: BTreeMap<String, GroupRecord>,
    /// `(owner, client_request_id)` -> the group that request created.
    pub group_requests: BTreeMap<(String, String), String>,
    /// `(user, device)` -> delivery cursor.
    pub delivery: BTreeMap<(String, String), u64>,
    /// (user, setting name) -> value.
    pub settings: BTreeMap<(String, String), Vec<u8>>,
    /// `(user, conversation id)` -> the seqs that user deleted for themself.
    pub hidden: BTreeMap<(String, String), BTreeSet<u64>>,
    /// User -> the read-fan-out groups they are a member of.
    pub read_groups: BTreeMap<String, BTreeSet<String>>,
}

impl State {
    /// An empty store.
    pub fn new(retention: InboxRetention) -> State {
        State {
            retention,
            next_server_msg_id: 1,
            next_group_number: 1,
            timelines: BTreeMap::new(),
            inboxes: BTreeMap::new(),
            dedup: BTreeMap::new(),
            states: BTreeMap::new(),
            groups: BTreeMap::new(),
            group_requests: BTreeMap::new(),
            delivery: BTreeMap::new(),
            settings: BTreeMap::new(),
            hidden: BTreeMap::new(),
            read_groups: BTreeMap::new(),
        }
    }

    // ----- heads and counters -----

    /// The highest seq of a conversation (0 = no message yet).
    pub fn conversation_head(&self, conversation_id: &str) -> u64 {
        self.timelines
            .get(conversation_id)
            .map_or(0, |timeline| timeline.len() as u64)
    }

    /// Message `seq` of a conversation, if it exists.
    pub fn message(&self, conversation_id: &str, seq: u64) -> Option<&pb::Message> {
        let index = usize::try_from(seq.checked_sub(1)?).ok()?;
        self.timelines.get(conversation_id)?.get(index)
    }

    /// Hands out the next server msg id.
    pub fn take_server_msg_id(&mut self) -> u64 {
        let id = self.next_server_msg_id;
        self.next_server_msg_id += 1;
        id
    }

    /// Hands out the number of the next group id.
    pub fn take_group_number(&mut self) -> u64 {
        let number = self.next_group_number;
        self.next_group_number += 1;
        number
    }

    // ----- conversation states -----

    /// `user`'s state of a conversation, if any.
    pub fn state(&self, user: &str, conversation_id: &str) -> Option<&StateRecord> {
        self.states.get(user)?.get(conversation_id)
    }

    /// Stores `user`'s state.
    pub fn put_state(&mut self, user: &str, state: StateRecord) {
        self.states
            .entry(user.to_owned())
            .or_default()
            .insert(state.conversation_id.clone(), state);
    }

    /// Forgets a user's state of a conversation: a group they left or were removed from
    /// leaves their conversation list (SPEC §13.3).
    pub fn drop_state(&mut self, user: &str, conversation_id: &str) {
        if let Some(states) = self.states.get_mut(user) {
            states.remove(conversation_id);
            if states.is_empty() {
                self.states.remove(user);
            }
        }
    }

    /// The public view of `user`'s state, with its last message read from the timeline (the
    /// newest one `user` has not deleted for themself).
    pub fn public_state(&self, user: &str, state: &StateRecord) -> ConversationState {
        let last_message = self
            .visible_messages(
                Some(user),
                &state.conversation_id,
                (1, state.last_seq),
                pb::HistoryDirection::Older,
                1,
            )
            .pop();
        ConversationState {
            conversation_id: state.conversation_id.clone(),
            kind: state.kind,
            peer: state.peer.clone(),
            last_message,
            last_seq: state.last_seq,
            read_seq: state.read_seq,
            unread_count: state.unread_count,
            peer_read_seq: state.peer_read_seq,
            updated_ms: state.updated_ms,
        }
    }

    // ----- what a user sees -----

    /// Whether `user` deleted message `seq` of a conversation for themself.
    pub fn is_hidden(&self, user: &str, conversation_id: &str, seq: u64) -> bool {
        self.hidden
            .get(&(user.to_owned(), conversation_id.to_owned()))
            .is_some_and(|seqs| seqs.contains(&seq))
    }

    /// Messages of `conversation_id` with seqs in `lo..=hi`, in `direction`'s order (`Older`:
    /// newest first), at most `limit`, leaving out those `viewer` deleted for themself.
    pub fn visible_messages(
        &self,
        viewer: Option<&str>,
        conversation_id: &str,
        (lo, hi): (u64, u64),
        direction: pb::HistoryDirection,
        limit: usize,
    ) -> Vec<pb::Message> {
        let mut messages = Vec::new();
        let hi = hi.min(self.conversation_head(conversation_id));
        let lo = lo.max(1);
        if lo > hi || limit == 0 {
            return messages;
        }
        let hidden = viewer.and_then(|viewer| {
            self.hidden
                .get(&(viewer.to_owned(), conversation_id.to_owned()))
        });
        let seqs: Box<dyn Iterator<Item = u64>> = match direction {
            pb::HistoryDirection::Older => Box::new((lo..=hi).rev()),
            pb::HistoryDirection::Newer => Box::new(lo..=hi),
        };
        for seq in seqs {
            if hidden.is_some_and(|hidden| hidden.contains(&seq)) {
                continue;
            }
            if let Some(message) = self.message(conversation_id, seq) {
                messages.push(message.clone());
            }
            if messages.len() == limit {
                break;
            }
        }
        messages
    }
}

/// The peer of `user` in a conversation: the other user (direct) or the group id.
pub(crate) fn peer_of(conversation: &ConversationRef<'_>, user: &str) -> String {
    match conversation {
        ConversationRef::Direct { .. } => conversation.peer_of(user).unwrap_or_default().to_owned(),
        ConversationRef::Group { group_id } => (*group_id).to_owned(),
    }
}

/// A record the store's own invariants say exists is missing: a bug, reported rather than
/// panicked on (a panic would poison the store for every later call).
pub(crate) fn missing(what: &str) -> StoreError {
    StoreError::Backend(format!("inconsistent memory store: {what}"))
}

pub(crate) use timeline_store::limits::content_digest;
