//! History pages, the conversation list, and delivery cursors.

use im_protocol::pb;
use timeline_store::{ConversationState, HistoryPage, StoreError, StoreResult};

use crate::limits::{check_pair_key, check_part};
use crate::state::State;

impl State {
    // ----- history -----

    /// See [`timeline_store::TimelineStore::read_history_as`]; `viewer: None` is
    /// [`timeline_store::TimelineStore::read_history`].
    pub(crate) fn read_history(
        &self,
        viewer: Option<&str>,
        conversation_id: &str,
        anchor_seq: u64,
        direction: pb::HistoryDirection,
        limit: u32,
    ) -> StoreResult<HistoryPage> {
        check_part("id", conversation_id)?;
        let last_seq = self.conversation_head(conversation_id);
        let (lo, hi) = match direction {
            pb::HistoryDirection::Older => {
                let hi = if anchor_seq == 0 {
                    last_seq
                } else {
                    (anchor_seq - 1).min(last_seq)
                };
                (1, hi)
            }
            pb::HistoryDirection::Newer => (anchor_seq.saturating_add(1), last_seq),
        };
        let messages =
            self.visible_messages(viewer, conversation_id, (lo, hi), direction, limit as usize);
        Ok(HistoryPage { messages, last_seq })
    }

    // ----- conversation list -----

    /// See [`timeline_store::TimelineStore::conversation`].
    pub(crate) fn conversation(
        &self,
        user: &str,
        conversation_id: &str,
    ) -> StoreResult<Option<ConversationState>> {
        check_pair_key(user, conversation_id)?;
        Ok(self
            .state(user, conversation_id)
            .map(|state| self.public_state(user, state)))
    }

    /// See [`timeline_store::TimelineStore::conversations`]. Ordered by update time, newest
    /// first, then by conversation id (the embedded store's key order), which is what makes a
    /// cursor exact among conversations updated in the same millisecond.
    pub(crate) fn conversations(
        &self,
        user: &str,
        limit: u32,
        cursor: &str,
    ) -> StoreResult<(Vec<ConversationState>, String)> {
        check_part("user id", user)?;
        check_part("conversation cursor", cursor)?;
        let after = if cursor.is_empty() {
            None
        } else {
            Some(parse_cursor(cursor).ok_or_else(|| {
                StoreError::InvalidArgument("malformed conversation cursor".into())
            })?)
        };
        let mut listed: Vec<((u64, &str), _)> = self
            .states
            .get(user)
            .into_iter()
            .flat_map(|states| states.values())
            // Groups the user is no longer in stay out, as in the embedded store.
            .filter(|state| {
                state.kind != pb::ConversationKind::Group
                    || self
                        .groups
                        .get(&state.peer)
                        .is_some_and(|group| group.members.contains_key(user))
            })
            .map(|state| ((!state.updated_ms, state.conversation_id.as_str()), state))
            .filter(|(order, _)| {
                after
                    .as_ref()
                    .is_none_or(|(inverted, id)| *order > (*inverted, id.as_str()))
            })
            .collect();
        listed.sort_by(|a, b| a.0.cmp(&b.0));
        let more = listed.len() > limit as usize;
        let states: Vec<ConversationState> = listed
            .into_iter()
            .take(limit as usize)
            .map(|(_, state)| self.public_state(user, state))
            .collect();
        let next = match (more, states.last()) {
            (true, Some(last)) => cursor_of(last.updated_ms, &last.conversation_id),
            _ => String::new(),
        };
        Ok((states, next))
    }

    // ----- delivery cursors -----

    /// See [`timeline_store::TimelineStore::record_delivery`].
    pub(crate) fn record_delivery(
        &mut self,
        user: &str,
        device: &str,
        seq: u64,
    ) -> StoreResult<()> {
        check_pair_key(user, device)?;
        if seq > 0 {
            let cursor = self
                .delivery
                .entry((user.to_owned(), device.to_owned()))
                .or_default();
            *cursor = (*cursor).max(seq);
        }
        Ok(())
    }

    /// See [`timeline_store::TimelineStore::delivery_cursor`].
    pub(crate) fn delivery_cursor(&self, user: &str, device: &str) -> StoreResult<u64> {
        check_pair_key(user, device)?;
        Ok(self
            .delivery
            .get(&(user.to_owned(), device.to_owned()))
            .copied()
            .unwrap_or(0))
    }
}

/// A page cursor of the conversation list, in the embedded store's format: the inverted update
/// time in 16 hex digits, then the conversation id.
fn cursor_of(updated_ms: u64, conversation_id: &str) -> String {
    format!("{:016x}{conversation_id}", !updated_ms)
}

/// Reads a cursor from [`cursor_of`] back: the inverted update time and the conversation id.
fn parse_cursor(cursor: &str) -> Option<(u64, String)> {
    let hex = cursor.get(..16)?;
    let conversation_id = cursor.get(16..)?;
    let inverted = u64::from_str_radix(hex, 16).ok()?;
    Some((inverted, conversation_id.to_owned()))
}
