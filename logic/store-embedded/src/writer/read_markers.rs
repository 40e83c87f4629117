//! Read markers: moving a user's marker, recomputing the unread count, syncing it and sending
//! the receipt.

use im_protocol::pb::{self, inbox_entry::Body};
use prost::Message as _;
use timeline_store::{ConversationState, Delivery, StoreError, StoreResult};

use super::{WriteCtx, check_id, corrupt};
use crate::keys;

impl WriteCtx<'_> {
    pub(crate) fn mark_read(
        &mut self,
        user: &str,
        conversation_id: &str,
        read_seq: u64,
        receipt_to: Option<&str>,
        now_ms: u64,
    ) -> StoreResult<(ConversationState, Vec<Delivery>)> {
        let Some(mut state) = self.state(user, conversation_id)? else {
            return Err(StoreError::NotFound(format!(
                "conversation {conversation_id} of {user}"
            )));
        };
        // A read-fan-out group's state lags its timeline: the conversation's head counts.
        let head = self.conversation_head(conversation_id)?.max(state.last_seq);
        let target = read_seq.min(head);
        if target <= state.read_seq {
            return Ok((self.public_state(user, state)?, Vec::new()));
        }
        let unread = self.count_from_others(user, conversation_id, target, head)?;
        state.read_seq = target;
        state.last_seq = head;
        state.unread_count = unread;
        state.updated_ms = state.updated_ms.max(now_ms);
        self.put_state(user, &state);

        let mut deliveries = vec![self.append_event(
            user,
            Body::ReadMarker(pb::ReadMarkerSync {
                conversation_id: conversation_id.to_owned(),
                read_seq: target,
                unread_count: unread,
            }),
            now_ms,
        )?];
        if let Some(peer) = receipt_to {
            check_id(peer, "receipt user id")?;
            if let Some(mut peer_state) = self.state(peer, conversation_id)?
                && target > peer_state.peer_read_seq
            {
                peer_state.peer_read_seq = target;
                self.put_state(peer, &peer_state);
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
            )?);
        }
        Ok((self.public_state(user, state)?, deliveries))
    }

    /// Messages not sent by `user` with seq in `(above, up_to]`.
    fn count_from_others(
        &mut self,
        user: &str,
        conversation_id: &str,
        above: u64,
        up_to: u64,
    ) -> StoreResult<u64> {
        if above >= up_to {
            return Ok(0);
        }
        let ks = self.ks;
        let range =
            keys::seq_key(conversation_id, above + 1)..=keys::seq_key(conversation_id, up_to);
        let bounds = (
            std::ops::Bound::Included(range.start().clone()),
            std::ops::Bound::Included(range.end().clone()),
        );
        let items: Vec<_> = self.merged(&ks.timelines, bounds, false).collect();
        let mut count = 0;
        for item in items {
            let (_, value) = item.map_err(|e| self.io(e))?;
            let message =
                pb::Message::decode(&*value).map_err(|e| self.fail_with(corrupt("message", e)))?;
            if message.sender_user != user {
                count += 1;
            }
        }
        Ok(count)
    }
}
