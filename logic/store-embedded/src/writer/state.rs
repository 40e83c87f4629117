//! Each user's conversation state (read marker, unread count, last seq), cached for the drain.

use std::ops::Bound;

use timeline_store::{ConversationState, StoreResult};

use super::WriteCtx;
use crate::keys;
use crate::read;
use crate::records::StateRecord;

impl WriteCtx<'_> {
    pub(super) fn state(
        &mut self,
        user: &str,
        conversation_id: &str,
    ) -> StoreResult<Option<StateRecord>> {
        let key = keys::pair_key(user, conversation_id);
        if let Some(state) = self.caches.states.get(&key) {
            return Ok(Some(state.clone()));
        }
        let ks = self.ks;
        let state: Option<StateRecord> =
            self.get_decoded(&ks.states, &key, "conversation state")?;
        if let Some(state) = &state {
            self.caches.states.insert(key, state.clone());
        }
        Ok(state)
    }

    /// Stores `state`. The conversation list is ordered at read time (a user has few
    /// conversations), so no recency index is maintained here: that index cost four writes per
    /// 1:1 message.
    pub(super) fn put_state(&mut self, user: &str, state: &StateRecord) {
        let key = keys::pair_key(user, &state.conversation_id);
        self.caches.dirty_states.insert(key.clone());
        self.caches.states.insert(key, state.clone());
    }

    /// Forgets a user's state of a conversation: a group they left or were removed from
    /// leaves their conversation list (SPEC §13.3).
    pub(super) fn drop_state(&mut self, user: &str, conversation_id: &str) {
        let key = keys::pair_key(user, conversation_id);
        self.caches.states.remove(&key);
        self.caches.dirty_states.remove(&key);
        let ks = self.ks;
        self.delete(&ks.states, key);
    }

    /// The public view of `user`'s state, with its last message read from the timeline (the
    /// newest one `user` has not deleted for themself).
    pub(super) fn public_state(
        &mut self,
        user: &str,
        state: StateRecord,
    ) -> StoreResult<ConversationState> {
        let ks = self.ks;
        let conversation_id = &state.conversation_id;
        let timeline = (
            Bound::Included(keys::seq_key(conversation_id, 1)),
            Bound::Included(keys::seq_key(conversation_id, state.last_seq)),
        );
        let hidden = (
            Bound::Included(keys::hidden_key(user, conversation_id, 1)),
            Bound::Included(keys::hidden_key(user, conversation_id, state.last_seq)),
        );
        let last_message = if state.last_seq == 0 {
            Ok(Vec::new())
        } else {
            read::pick_visible(
                self.merged(&ks.timelines, timeline, true),
                self.merged(&ks.hidden, hidden, true)
                    .map(|item| item.map(|(key, _)| key)),
                conversation_id,
                true,
                1,
            )
        }
        .map_err(|e| self.fail_with(e))?
        .pop();
        Ok(read::public_state(state, last_message))
    }
}
