//! Sends: committing a message (seqs, fan-out to inboxes, states, dedup) and answering a
//! resend.

use std::collections::BTreeSet;

use im_protocol::pb::{self, inbox_entry::Body};
use timeline_store::{CommittedMessage, Delivery, NewMessage, StoreError, StoreResult};

use crate::inbox::Stored;
use crate::limits::{check_id, check_part, parse_conversation};
use crate::state::{DedupRecord, State, StateRecord, content_digest, missing, peer_of};

impl State {
    /// See [`timeline_store::TimelineStore::commit_messages`]. Each message is committed on
    /// its own: one's refusal does not touch the others.
    pub(crate) fn commit_messages(
        &mut self,
        messages: Vec<NewMessage>,
    ) -> Vec<StoreResult<CommittedMessage>> {
        messages
            .into_iter()
            .map(|message| self.commit_one(message))
            .collect()
    }

    fn commit_one(&mut self, m: NewMessage) -> StoreResult<CommittedMessage> {
        // Every check comes before the first change, so a refused message leaves no trace.
        check_part("client message id", &m.client_msg_id)?;
        let conversation = parse_conversation(&m.conversation_id)?;
        check_id(&m.sender_user, "sender user id")?;
        let mut recipients: BTreeSet<String> = m.recipients.iter().cloned().collect();
        let read_fanout = self.read_fanout_of(&m.conversation_id) == Some(true);
        for user in &recipients {
            check_id(user, "recipient user id")?;
        }
        // The group's mode and members at commit decide who gets an inbox entry, whatever the
        // caller saw: a member added or removed meanwhile is in or out of this message.
        if let Some(read) = self.read_fanout_of(&m.conversation_id) {
            recipients = if read {
                BTreeSet::new()
            } else {
                self.member_ids(&m.conversation_id[2..])?
                    .into_iter()
                    .collect()
            };
            recipients.insert(m.sender_user.clone());
        }
        let dedup_key = (m.sender_user.clone(), m.client_msg_id.clone());
        if let Some(record) = self.dedup.get(&dedup_key) {
            return self.resend(&m, record);
        }

        let seq = self.conversation_head(&m.conversation_id) + 1;
        let message = pb::Message {
            conversation_id: m.conversation_id.clone(),
            kind: m.kind as i32,
            sender_user: m.sender_user.clone(),
            sender_device: m.sender_device.clone(),
            server_msg_id: self.take_server_msg_id(),
            conversation_seq: seq,
            server_time_ms: m.now_ms,
            client_msg_id: m.client_msg_id.clone(),
            content_type: m.content_type,
            content: m.content,
            recalled: false,
            recalled_ms: 0,
        };
        let mut deliveries = Vec::with_capacity(recipients.len());
        let mut sender_inbox_seq = 0;
        for user in recipients.iter().map(String::as_str) {
            let pointer = Stored::Message {
                conversation_id: m.conversation_id.clone(),
                seq,
            };
            let inbox_seq = self.append_inbox(user, pointer, m.now_ms);
            if user == m.sender_user {
                sender_inbox_seq = inbox_seq;
            }
            let mut state = self
                .state(user, &m.conversation_id)
                .cloned()
                .unwrap_or_else(|| {
                    StateRecord::new(
                        &m.conversation_id,
                        conversation.kind(),
                        &peer_of(&conversation, user),
                    )
                });
            // Messages this state skipped (a read-fan-out group's) are others': unread.
            state.unread_count += seq.saturating_sub(state.last_seq + 1);
            state.last_seq = seq;
            state.updated_ms = state.updated_ms.max(m.now_ms);
            if user != m.sender_user {
                state.unread_count += 1;
            }
            self.put_state(user, state);
            deliveries.push(Delivery {
                user: user.to_owned(),
                entry: pb::InboxEntry {
                    inbox_seq,
                    body: Some(Body::Message(message.clone())),
                },
            });
        }
        self.dedup.insert(
            dedup_key,
            DedupRecord {
                conversation_id: m.conversation_id.clone(),
                conversation_seq: seq,
                sender_inbox_seq,
                content_type: message.content_type,
                content_len: message.content.len() as u64,
                content_digest: content_digest(&message.content),
            },
        );
        self.timelines
            .entry(m.conversation_id)
            .or_default()
            .push(message.clone());
        Ok(CommittedMessage {
            message,
            sender_inbox_seq,
            deliveries,
            duplicate: false,
            read_fanout,
        })
    }

    /// A client msg id seen before: the original, or a conflict if this is another message.
    fn resend(&self, m: &NewMessage, record: &DedupRecord) -> StoreResult<CommittedMessage> {
        let conflict = || StoreError::ClientMsgIdConflict(m.client_msg_id.clone());
        if record.conversation_id != m.conversation_id {
            return Err(conflict());
        }
        let original = self
            .message(&record.conversation_id, record.conversation_seq)
            .ok_or_else(|| missing("a dedup record names no message"))?;
        // A recall erased the original content: compare with what was recorded of it.
        let same = if original.recalled {
            record.content_type == m.content_type
                && record.content_len == m.content.len() as u64
                && record.content_digest == content_digest(&m.content)
        } else {
            original.content_type == m.content_type && original.content == m.content
        };
        if !same {
            return Err(conflict());
        }
        Ok(CommittedMessage {
            message: original.clone(),
            sender_inbox_seq: record.sender_inbox_seq,
            deliveries: Vec::new(),
            duplicate: true,
            read_fanout: false,
        })
    }
}
