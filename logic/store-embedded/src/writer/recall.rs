//! Recall: marking a message recalled and telling every recipient.

use std::collections::BTreeSet;

use im_protocol::pb::{self, inbox_entry::Body};
use prost::Message as _;
use timeline_store::{Delivery, StoreError, StoreResult};

use super::{WriteCtx, check_id};
use crate::keys;

impl WriteCtx<'_> {
    pub(crate) fn recall(
        &mut self,
        conversation_id: &str,
        seq: u64,
        by_user: &str,
        recipients: &[String],
        window_ms: u64,
        now_ms: u64,
    ) -> StoreResult<(pb::RecallEvent, Vec<Delivery>)> {
        let ks = self.ks;
        let key = keys::seq_key(conversation_id, seq);
        let Some(mut message) = self.get_decoded::<pb::Message>(&ks.timelines, &key, "message")?
        else {
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
        message.recalled = true;
        message.recalled_ms = now_ms;
        message.content = Vec::new();
        self.put(&ks.timelines, key, message.encode_to_vec());
        let mut deliveries = Vec::with_capacity(recipients.len());
        for user in recipients {
            deliveries.push(self.append_event(user, Body::Recall(event.clone()), now_ms)?);
        }
        Ok((event, deliveries))
    }
}
