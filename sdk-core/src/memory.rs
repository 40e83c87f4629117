//! An in-memory [`LocalStore`] for tests, deterministic simulations and ephemeral sessions.
//!
//! It follows the same rules as [`crate::sqlite::SqliteStore`] (the shared suite in
//! `tests/local_store.rs` runs every check against both), so a simulation that passes over it
//! says something about the real store. It is `Clone` so a simulation can snapshot it and model
//! an app restart that keeps its disk.

use std::collections::BTreeMap;
use std::ops::Bound;

use crate::store::{
    LocalConversation, LocalMessage, LocalResult, LocalStore, LocalStoreError, OutboxItem,
    SendState,
};

/// A [`LocalStore`] kept in `BTreeMap`s, so every listing has a deterministic order.
#[derive(Clone, Debug, Default)]
pub struct MemoryStore {
    /// The highest inbox seq fully applied.
    cursor: u64,
    /// The epoch the cursor belongs to.
    inbox_epoch: u64,
    /// The last local id handed out (0 = none yet, so the first id is 1).
    last_local_id: u64,
    /// The outbox by local id: iteration order is transmission order.
    outbox: BTreeMap<u64, OutboxItem>,
    /// Messages the server has given a seq, by (conversation, seq).
    messages: BTreeMap<(String, u64), LocalMessage>,
    /// Own messages still at seq 0 (not acked, not yet seen in the inbox), by local id.
    unacked: BTreeMap<u64, LocalMessage>,
    /// Conversations by id.
    conversations: BTreeMap<String, LocalConversation>,
    /// Read-fan-out groups followed by conversation seq: conversation id -> position.
    read_groups: BTreeMap<String, u64>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// The messages of one conversation that have a seq, in seq order.
    fn conversation_messages<'a>(
        &'a self,
        conversation_id: &str,
    ) -> impl DoubleEndedIterator<Item = &'a LocalMessage> + 'a {
        self.messages
            .range((
                Bound::Included((conversation_id.to_owned(), 1)),
                Bound::Included((conversation_id.to_owned(), u64::MAX)),
            ))
            .map(|(_, message)| message)
    }

    /// The key of the lowest-seq message of a conversation that carries `local_id` (an own
    /// message that already left seq 0). Local id 0 marks messages from others, never an own one.
    fn key_of_local_id(&self, conversation_id: &str, local_id: u64) -> Option<(String, u64)> {
        if local_id == 0 {
            return None;
        }
        self.conversation_messages(conversation_id)
            .find(|m| m.local_id == local_id)
            .map(|m| (m.conversation_id.clone(), m.seq))
    }
}

impl LocalStore for MemoryStore {
    fn cursor(&self) -> LocalResult<u64> {
        Ok(self.cursor)
    }

    fn set_cursor(&mut self, seq: u64) -> LocalResult<()> {
        self.cursor = seq;
        Ok(())
    }

    fn inbox_epoch(&self) -> LocalResult<u64> {
        Ok(self.inbox_epoch)
    }

    fn set_inbox_epoch(&mut self, epoch: u64) -> LocalResult<()> {
        self.inbox_epoch = epoch;
        Ok(())
    }

    fn reset_inbox(&mut self, epoch: u64) -> LocalResult<()> {
        self.messages.clear();
        self.conversations.clear();
        self.read_groups.clear();
        self.cursor = 0;
        self.inbox_epoch = epoch;
        Ok(())
    }

    fn next_local_id(&mut self) -> LocalResult<u64> {
        let next = self
            .last_local_id
            .checked_add(1)
            .ok_or_else(|| LocalStoreError::Corrupt("local id space exhausted".into()))?;
        self.last_local_id = next;
        Ok(next)
    }

    fn outbox_push(&mut self, item: &OutboxItem, message: &LocalMessage) -> LocalResult<()> {
        // The item is the source of truth for the message's identity, so the ack (which finds
        // the message through the item) can never miss it.
        let message = LocalMessage {
            local_id: item.local_id,
            conversation_id: item.conversation_id.clone(),
            client_msg_id: item.client_msg_id.clone(),
            seq: 0,
            state: SendState::Sending,
            ..message.clone()
        };
        self.outbox.insert(item.local_id, item.clone());
        self.unacked.insert(item.local_id, message);
        Ok(())
    }

    fn outbox_pending(&self) -> LocalResult<Vec<OutboxItem>> {
        Ok(self
            .outbox
            .values()
            .filter(|item| item.state == SendState::Sending)
            .cloned()
            .collect())
    }

    fn outbox_get(&self, local_id: u64) -> LocalResult<Option<OutboxItem>> {
        Ok(self.outbox.get(&local_id).cloned())
    }

    fn outbox_update(&mut self, local_id: u64, attempts: u32, state: SendState) -> LocalResult<()> {
        if let Some(item) = self.outbox.get_mut(&local_id) {
            item.attempts = attempts;
            item.state = state;
        }
        // Only a message still at seq 0: one the server already stored stays `Sent`.
        if let Some(message) = self.unacked.get_mut(&local_id) {
            message.state = state;
        }
        Ok(())
    }

    fn outbox_acked(
        &mut self,
        client_msg_id: &str,
        seq: u64,
        server_msg_id: u64,
        time_ms: u64,
    ) -> LocalResult<Option<LocalMessage>> {
        let Some(local_id) = self
            .outbox
            .values()
            .find(|item| item.client_msg_id == client_msg_id)
            .map(|item| item.local_id)
        else {
            return Ok(None);
        };
        let Some(item) = self.outbox.remove(&local_id) else {
            return Ok(None);
        };
        let conversation_id = item.conversation_id;

        if let Some(mut own) = self.unacked.remove(&local_id) {
            if seq == 0 {
                // Not a real seq: the message stays addressable by its local id only.
                own.server_msg_id = server_msg_id;
                own.time_ms = time_ms;
                own.state = SendState::Sent;
                self.unacked.insert(local_id, own.clone());
                return Ok(Some(own));
            }
            let key = (conversation_id, seq);
            if let Some(copy) = self.messages.get_mut(&key) {
                // The server's copy is already stored at this seq: adopt it instead of keeping
                // a second row for the same message.
                copy.local_id = local_id;
                copy.server_msg_id = server_msg_id;
                copy.time_ms = time_ms;
                copy.state = SendState::Sent;
                return Ok(Some(copy.clone()));
            }
            own.seq = seq;
            own.server_msg_id = server_msg_id;
            own.time_ms = time_ms;
            own.state = SendState::Sent;
            self.messages.insert(key, own.clone());
            return Ok(Some(own));
        }

        // Already moved to its seq by `put_message` (seen in the inbox first), or deleted
        // locally since, in which case there is nothing left to update.
        let Some(key) = self.key_of_local_id(&conversation_id, local_id) else {
            return Ok(None);
        };
        let Some(message) = self.messages.get_mut(&key) else {
            return Ok(None);
        };
        message.server_msg_id = server_msg_id;
        message.time_ms = time_ms;
        message.state = SendState::Sent;
        Ok(Some(message.clone()))
    }

    fn put_message(&mut self, message: &LocalMessage) -> LocalResult<bool> {
        if message.seq == 0 {
            // Every server message has a seq; seq 0 is reserved for own unacked messages.
            return Ok(false);
        }
        let key = (message.conversation_id.clone(), message.seq);
        if self.messages.contains_key(&key) {
            return Ok(false);
        }
        // Our own message seen in the inbox (or history) before its ack: move the local row to
        // its seq rather than storing the message twice.
        let own = if message.client_msg_id.is_empty() {
            None
        } else {
            self.unacked
                .values()
                .find(|m| {
                    m.conversation_id == message.conversation_id
                        && m.client_msg_id == message.client_msg_id
                        && m.sender == message.sender
                })
                .map(|m| m.local_id)
        };
        let stored = match own.and_then(|local_id| self.unacked.remove(&local_id)) {
            Some(own) => LocalMessage {
                local_id: own.local_id,
                state: SendState::Sent,
                ..message.clone()
            },
            None => message.clone(),
        };
        self.messages.insert(key, stored);
        Ok(true)
    }

    fn recall_message(&mut self, conversation_id: &str, seq: u64) -> LocalResult<bool> {
        if seq == 0 {
            return Ok(false);
        }
        // The preview must not keep what the sender took back.
        if let Some(last) = self
            .conversations
            .get_mut(conversation_id)
            .and_then(|c| c.last_message.as_mut())
            && last.seq == seq
        {
            last.recalled = true;
            last.content.clear();
        }
        match self.messages.get_mut(&(conversation_id.to_owned(), seq)) {
            Some(message) => {
                message.recalled = true;
                message.content.clear();
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn delete_messages(&mut self, conversation_id: &str, seqs: &[u64]) -> LocalResult<()> {
        for &seq in seqs.iter().filter(|&&seq| seq != 0) {
            self.messages.remove(&(conversation_id.to_owned(), seq));
        }
        Ok(())
    }

    fn history(
        &self,
        conversation_id: &str,
        before_seq: u64,
        limit: u32,
    ) -> LocalResult<Vec<LocalMessage>> {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let unacked = self
            .unacked
            .values()
            .rev()
            .filter(|m| m.conversation_id == conversation_id && before_seq == 0);
        let upper = if before_seq == 0 {
            Bound::Included((conversation_id.to_owned(), u64::MAX))
        } else {
            Bound::Excluded((conversation_id.to_owned(), before_seq))
        };
        let acked = self
            .messages
            .range((Bound::Included((conversation_id.to_owned(), 1)), upper))
            .rev()
            .map(|(_, m)| m);
        Ok(unacked.chain(acked).take(limit).cloned().collect())
    }

    fn message(&self, conversation_id: &str, seq: u64) -> LocalResult<Option<LocalMessage>> {
        if seq == 0 {
            return Ok(None);
        }
        Ok(self
            .messages
            .get(&(conversation_id.to_owned(), seq))
            .cloned())
    }

    fn conversation(&self, conversation_id: &str) -> LocalResult<Option<LocalConversation>> {
        Ok(self.conversations.get(conversation_id).cloned())
    }

    fn put_conversation(&mut self, conversation: &LocalConversation) -> LocalResult<()> {
        self.conversations
            .insert(conversation.conversation_id.clone(), conversation.clone());
        Ok(())
    }

    fn conversations(&self) -> LocalResult<Vec<LocalConversation>> {
        let mut all: Vec<LocalConversation> = self.conversations.values().cloned().collect();
        // Stable sort over id order: ties on `updated_ms` come out by id, as in SQLite.
        all.sort_by_key(|c| std::cmp::Reverse(c.updated_ms));
        Ok(all)
    }

    fn read_group_positions(&self) -> LocalResult<Vec<(String, u64)>> {
        Ok(self
            .read_groups
            .iter()
            .map(|(id, position)| (id.clone(), *position))
            .collect())
    }

    fn set_read_group_position(
        &mut self,
        conversation_id: &str,
        position: Option<u64>,
    ) -> LocalResult<()> {
        match position {
            Some(position) => {
                self.read_groups
                    .insert(conversation_id.to_owned(), position);
            }
            None => {
                self.read_groups.remove(conversation_id);
            }
        }
        Ok(())
    }
}
