//! Changes to messages already sent: read markers, recall and delete for me.

use std::collections::BTreeSet;

use im_protocol::pb::{self, inbox_entry::Body};
use timeline_store::{ConversationState, Delivery, StoreError, StoreResult};

use crate::limits::{check_id, check_pair_key, check_seq_key, parse_conversation};
use crate::state::State;

impl State {
    /// See [`timeline_store::TimelineStore::mark_read`].
    pub(crate) fn mark_read(
        &mut self,
        user: &str,
        conversation_id: &str,
        read_seq: u64,
        receipt_to: Option<&str>,
        now_ms: u64,
    ) -> StoreResult<(ConversationState, Vec<Delivery>)> {
        check_pair_key(user, conversation_id)?;
        let Some(mut state) = self.state(user, conversation_id).cloned() else {
            return Err(StoreError::NotFound(format!(
                "conversation {conversation_id} of {user}"
            )));
        };
        // A read-fan-out group's state lags its timeline: the conversation's head counts.
        let head = self.conversation_head(conversation_id).max(state.last_seq);
        let target = read_seq.min(head);
        if target <= state.read_seq {
            return Ok((self.public_state(user, &state), Vec::new()));
        }
        state.read_seq = target;
        state.last_seq = head;
        state.unread_count = self.count_from_others(user, conversation_id, target, head);
        state.updated_ms = state.updated_ms.max(now_ms);
        self.put_state(user, state.clone());

        let mut deliveries = vec![self.append_event(
            user,
            Body::ReadMarker(pb::ReadMarkerSync {
                conversation_id: conversation_id.to_owned(),
                read_seq: target,
                unread_count: state.unread_count,
            }),
            now_ms,
        )];
        if let Some(peer) = receipt_to {
            // Checked this late to answer as the embedded store does: a malformed receipt_to
            // fails the call, yet the reader's marker has moved and its sync is appended. The
            // logic tier never passes one (it is the other user of a parsed direct id).
            check_id(peer, "receipt user id")?;
            if let Some(peer_state) = self.state(peer, conversation_id)
                && target > peer_state.peer_read_seq
            {
                let mut peer_state = peer_state.clone();
                peer_state.peer_read_seq = target;
                self.put_state(peer, peer_state);
            }
            deliveries.push(self.append_event(
                peer,
                Body::ReadReceipt(pb::ReadReceipt {
                    conversation_id: conversation_id.to_owned(),
                    reader_user: user.to_owned(),
                    read_seq: target,
                    server_time_ms: now_ms,
                }),
                now_ms,
            ));
        }
        Ok((self.public_state(user, &state), deliveries))
    }

    /// Messages not sent by `user` with seq in `(above, up_to]`. Recalled messages and those
    /// `user` deleted for themself count too: unread counts follow the seqs.
    fn count_from_others(&self, user: &str, conversation_id: &str, above: u64, up_to: u64) -> u64 {
        let Some(timeline) = self.timelines.get(conversation_id) else {
            return 0;
        };
        let start = usize::try_from(above).unwrap_or(usize::MAX);
        let end = usize::try_from(up_to)
            .unwrap_or(usize::MAX)
            .min(timeline.len());
        timeline
            .get(start..end)
            .unwrap_or_default()
            .iter()
            .filter(|message| message.sender_user != user)
            .count() as u64
    }

    /// See [`timeline_store::TimelineStore::recall`].
    pub(crate) fn recall(
        &mut self,
        conversation_id: &str,
        seq: u64,
        by_user: &str,
        recipients: &[String],
        window_ms: u64,
        now_ms: u64,
    ) -> StoreResult<(pb::RecallEvent, Vec<Delivery>)> {
        check_seq_key(conversation_id)?;
        let Some(message) = self.message(conversation_id, seq) else {
            return Err(StoreError::NotFound(format!(
                "message {seq} of {conversation_id}"
            )));
        };
        if message.sender_user != by_user {
            return Err(StoreError::NotSender);
        }
        let mut event = pb::RecallEvent {
            conversation_id: conversation_id.to_owned(),
            conversation_seq: seq,
            server_msg_id: message.server_msg_id,
            by_user: by_user.to_owned(),
            server_time_ms: now_ms,
        };
        if message.recalled {
            // The original event: the same time as every inbox got (SPEC §13.6).
            event.server_time_ms = message.recalled_ms;
            return Ok((event, Vec::new()));
        }
        if now_ms.saturating_sub(message.server_time_ms) > window_ms {
            return Err(StoreError::RecallWindowExpired);
        }
        let recipients: BTreeSet<&str> = recipients.iter().map(String::as_str).collect();
        for user in &recipients {
            check_id(user, "recipient user id")?;
        }
        let index = usize::try_from(seq - 1).unwrap_or(usize::MAX);
        if let Some(message) = self
            .timelines
            .get_mut(conversation_id)
            .and_then(|timeline| timeline.get_mut(index))
        {
            message.recalled = true;
            message.recalled_ms = now_ms;
            message.content = Vec::new();
        }
        let deliveries = recipients
            .into_iter()
            .map(|user| self.append_event(user, Body::Recall(event.clone()), now_ms))
            .collect();
        Ok((event, deliveries))
    }

    /// See [`timeline_store::TimelineStore::delete_messages`].
    pub(crate) fn delete_messages(
        &mut self,
        user: &str,
        conversation_id: &str,
        seqs: &[u64],
        now_ms: u64,
    ) -> StoreResult<(u64, Vec<Delivery>)> {
        check_id(user, "user id")?;
        parse_conversation(conversation_id)?;
        let head = self.conversation_head(conversation_id);
        let wanted: BTreeSet<u64> = seqs
            .iter()
            .copied()
            .filter(|seq| (1..=head).contains(seq))
            .collect();
        let hidden = self
            .hidden
            .entry((user.to_owned(), conversation_id.to_owned()))
            .or_default();
        let newly_hidden: Vec<u64> = wanted
            .into_iter()
            .filter(|seq| hidden.insert(*seq))
            .collect();
        if hidden.is_empty() {
            // Nothing was ever hidden here: leave no empty set behind.
            self.hidden
                .remove(&(user.to_owned(), conversation_id.to_owned()));
        }
        if newly_hidden.is_empty() {
            return Ok((0, Vec::new()));
        }
        let count = newly_hidden.len() as u64;
        let delivery = self.append_event(
            user,
            Body::Delete(pb::DeleteEvent {
                conversation_id: conversation_id.to_owned(),
                conversation_seqs: newly_hidden,
            }),
            now_ms,
        );
        Ok((count, vec![delivery]))
    }
}
