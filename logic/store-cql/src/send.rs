//! Sends: the idempotency record, the conversation seq, the fan-out to inboxes.
//!
//! A send runs as a sequence of steps, each repeatable (DESIGN.md): claim `(sender,
//! client_msg_id)` in `sends` with a fresh server msg id; claim the conversation's next seq for
//! that server msg id; record the sender's own message (for unread counts); append the message
//! to every recipient's inbox under key `m:<server msg id>`; mark the send done. A resend of a
//! send that is done is a duplicate; a resend of one that is not (its first attempt died, or
//! is paused somewhere) runs the remaining steps with the first attempt's ids and answers as
//! the first attempt would have.

use std::collections::{BTreeMap, BTreeSet};

use futures::future::join_all;
use im_protocol::ids::ConversationRef;
use im_protocol::pb;
use scylla::value::CqlValue;
use timeline_store::limits::{check_id, check_part, content_digest, parse_conversation};
use timeline_store::{CommittedMessage, Delivery, NewMessage, StoreError, StoreResult};

use crate::entry::StoredEntry;
use crate::{Inner, as_i64, backend, big, lwt, unbig};

/// The inbox key of a message.
pub(crate) fn message_key(server_msg_id: u64) -> String {
    format!("m:{server_msg_id}")
}

/// The peer of `user` in a conversation: the other user (direct) or the group id.
pub(crate) fn peer_of(conversation: &ConversationRef<'_>, user: &str) -> String {
    match conversation {
        ConversationRef::Direct { .. } => conversation.peer_of(user).unwrap_or_default().to_owned(),
        ConversationRef::Group { group_id } => (*group_id).to_owned(),
    }
}

impl Inner {
    /// See [`timeline_store::TimelineStore::commit_messages`]. Messages of different
    /// conversations are committed concurrently; those of one conversation in order.
    pub(crate) async fn commit_messages(
        &self,
        messages: Vec<NewMessage>,
    ) -> Vec<StoreResult<CommittedMessage>> {
        let count = messages.len();
        let mut by_conversation: BTreeMap<String, Vec<(usize, NewMessage)>> = BTreeMap::new();
        for (index, message) in messages.into_iter().enumerate() {
            by_conversation
                .entry(message.conversation_id.clone())
                .or_default()
                .push((index, message));
        }
        let runs = by_conversation.into_values().map(|run| async move {
            let mut out = Vec::with_capacity(run.len());
            for (index, message) in run {
                out.push((index, self.commit_one(message).await));
            }
            out
        });
        let mut results: Vec<Option<StoreResult<CommittedMessage>>> =
            (0..count).map(|_| None).collect();
        for (index, result) in join_all(runs).await.into_iter().flatten() {
            results[index] = Some(result);
        }
        results
            .into_iter()
            .map(|result| {
                result.unwrap_or_else(|| Err(StoreError::Backend("a send was not run".into())))
            })
            .collect()
    }

    async fn commit_one(&self, m: NewMessage) -> StoreResult<CommittedMessage> {
        check_part("client message id", &m.client_msg_id)?;
        let conversation = parse_conversation(&m.conversation_id)?;
        check_id(&m.sender_user, "sender user id")?;
        let recipients: BTreeSet<&str> = m.recipients.iter().map(String::as_str).collect();
        for user in &recipients {
            check_id(user, "recipient user id")?;
        }
        let digest = content_digest(&m.content);
        let fresh_id = self.next_server_msg_id().await?;
        let claim = lwt(self
            .session
            .execute_unpaged(
                &self.st.send_claim,
                (
                    &m.sender_user,
                    &m.client_msg_id,
                    &m.conversation_id,
                    big(fresh_id),
                    i64::from(m.content_type),
                    big(m.content.len() as u64),
                    digest as i64,
                ),
            )
            .await
            .map_err(backend)?)?;
        let server_msg_id = if claim.applied {
            fresh_id
        } else {
            let text = |column: &str| match claim.value(column) {
                Some(CqlValue::Text(text)) => text.clone(),
                _ => String::new(),
            };
            let number = |column: &str| claim.value(column).and_then(as_i64);
            let same = text("conversation_id") == m.conversation_id
                && number("content_type") == Some(i64::from(m.content_type))
                && number("content_len") == Some(big(m.content.len() as u64))
                && number("content_digest") == Some(digest as i64);
            if !same {
                return Err(StoreError::ClientMsgIdConflict(m.client_msg_id.clone()));
            }
            let original_id = unbig(number("server_msg_id"));
            if matches!(claim.value("done"), Some(CqlValue::Boolean(true))) {
                let seq = unbig(number("conversation_seq"));
                self.settle_conversation(&m.conversation_id).await?;
                let message = self
                    .message(&m.conversation_id, seq)
                    .await?
                    .ok_or_else(|| {
                        StoreError::Backend("a finished send names no message".into())
                    })?;
                return Ok(CommittedMessage {
                    message,
                    sender_inbox_seq: unbig(number("sender_inbox_seq")),
                    deliveries: Vec::new(),
                    duplicate: true,
                });
            }
            // The first attempt did not finish: finish it, with its ids.
            original_id
        };

        let (message, _) = self
            .claim_message(&m.conversation_id, server_msg_id, m.now_ms, |seq| {
                pb::Message {
                    conversation_id: m.conversation_id.clone(),
                    kind: m.kind as i32,
                    sender_user: m.sender_user.clone(),
                    sender_device: m.sender_device.clone(),
                    server_msg_id,
                    conversation_seq: seq,
                    server_time_ms: m.now_ms,
                    client_msg_id: m.client_msg_id.clone(),
                    content_type: m.content_type,
                    content: m.content.clone(),
                    recalled: false,
                    recalled_ms: 0,
                }
            })
            .await?;
        let seq = message.conversation_seq;
        #[cfg(feature = "testing")]
        {
            let pause = self.pause.lock().ok().and_then(|mut slot| slot.take());
            if let Some(pause) = pause {
                pause.wait().await;
            }
        }
        self.session
            .execute_unpaged(
                &self.st.own_put,
                (&m.sender_user, &m.conversation_id, big(seq)),
            )
            .await
            .map_err(backend)?;

        let key = message_key(server_msg_id);
        let stored = StoredEntry {
            appended_ms: m.now_ms,
            conversation_id: m.conversation_id.clone(),
            conversation_seq: seq,
            event: None,
        };
        let kind = conversation.kind() as i32;
        let fan_out = recipients.iter().map(|user| {
            let (key, stored, conversation) = (&key, &stored, &conversation);
            let (conversation_id, message) = (&m.conversation_id, &message);
            async move {
                self.session
                    .execute_unpaged(
                        &self.st.state_touch,
                        (kind, peer_of(conversation, user), *user, conversation_id),
                    )
                    .await
                    .map_err(backend)?;
                let (inbox_seq, _) = self.append(user, key, stored).await?;
                Ok::<_, StoreError>(Delivery {
                    user: (*user).to_owned(),
                    entry: pb::InboxEntry {
                        inbox_seq,
                        body: Some(pb::inbox_entry::Body::Message(message.clone())),
                    },
                })
            }
        });
        let deliveries = join_all(fan_out)
            .await
            .into_iter()
            .collect::<StoreResult<Vec<Delivery>>>()?;
        let sender_inbox_seq = deliveries
            .iter()
            .find(|delivery| delivery.user == m.sender_user)
            .map_or(0, |delivery| delivery.entry.inbox_seq);
        self.session
            .execute_unpaged(
                &self.st.send_done,
                (
                    big(seq),
                    big(sender_inbox_seq),
                    &m.sender_user,
                    &m.client_msg_id,
                ),
            )
            .await
            .map_err(backend)?;
        Ok(CommittedMessage {
            message,
            sender_inbox_seq,
            deliveries,
            duplicate: false,
        })
    }
}
