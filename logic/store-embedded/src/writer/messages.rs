//! Messages: committing a send (seqs, fan-out to inboxes, states, dedup) and answering a resend.

use std::collections::BTreeSet;

use im_protocol::pb::{self, inbox_entry::Body};
use prost::Message as _;
use timeline_store::{CommittedMessage, Delivery, NewMessage, StoreError, StoreResult};

use super::{WriteCtx, check_id, corrupt, parse_conversation, peer_of};
use crate::keys;
use crate::records::{DedupRecord, InboxRecord, StateRecord, content_digest};

/// A committed message as the writer thread leaves it: the stored message once and each
/// recipient's inbox seq. [`Staged::into_committed`] makes the per-recipient copies on the
/// caller's task, so the one writer thread does not spend its time copying messages.
pub(crate) struct Staged {
    message: pb::Message,
    sender_inbox_seq: u64,
    inbox_seqs: Vec<(String, u64)>,
    duplicate: bool,
    read_fanout: bool,
}

impl Staged {
    pub(crate) fn into_committed(self) -> CommittedMessage {
        let Staged {
            message,
            sender_inbox_seq,
            inbox_seqs,
            duplicate,
            read_fanout,
        } = self;
        let deliveries = inbox_seqs
            .into_iter()
            .map(|(user, inbox_seq)| Delivery {
                user,
                entry: pb::InboxEntry {
                    inbox_seq,
                    body: Some(Body::Message(message.clone())),
                },
            })
            .collect();
        CommittedMessage {
            message,
            sender_inbox_seq,
            deliveries,
            duplicate,
            read_fanout,
        }
    }
}

impl WriteCtx<'_> {
    /// Commits each message; borrowed, because a job may run again (see [`super::Job`]).
    pub(crate) fn commit_messages(&mut self, messages: &[NewMessage]) -> Vec<StoreResult<Staged>> {
        messages
            .iter()
            .map(|message| self.commit_one(message))
            .collect()
    }

    fn commit_one(&mut self, m: &NewMessage) -> StoreResult<Staged> {
        keys::check_part("client message id", &m.client_msg_id)?;
        let conversation = parse_conversation(&m.conversation_id)?;
        check_id(&m.sender_user, "sender user id")?;
        let mut recipients: BTreeSet<String> = m.recipients.iter().cloned().collect();
        for user in &recipients {
            check_id(user, "recipient user id")?;
        }
        let ks = self.ks;
        let dedup_key = keys::pair_key(&m.sender_user, &m.client_msg_id);
        if let Some(record) = self.get_decoded::<DedupRecord>(&ks.dedup, &dedup_key, "dedup")? {
            return self.resend(m, record);
        }
        // The group's mode and members at commit decide who gets an inbox entry, whatever the
        // caller saw: a member added or removed meanwhile is in or out of this message.
        let mut read_fanout = false;
        if let im_protocol::ids::ConversationRef::Group { group_id } = conversation
            && let Some(audience) = self.group_audience(group_id)?
        {
            let (read, members) = &*audience;
            read_fanout = *read;
            recipients = if read_fanout {
                BTreeSet::new()
            } else {
                members.iter().cloned().collect()
            };
            recipients.insert(m.sender_user.clone());
        }
        let seq = self.conversation_head(&m.conversation_id)? + 1;
        let message = pb::Message {
            conversation_id: m.conversation_id.clone(),
            kind: m.kind as i32,
            sender_user: m.sender_user.clone(),
            sender_device: m.sender_device.clone(),
            server_msg_id: self.next_server_msg_id()?,
            conversation_seq: seq,
            server_time_ms: m.now_ms,
            client_msg_id: m.client_msg_id.clone(),
            content_type: m.content_type,
            content: m.content.clone(),
            recalled: false,
            recalled_ms: 0,
        };
        let pointer = InboxRecord {
            message_conversation_id: m.conversation_id.clone(),
            message_seq: seq,
            entry: None,
            appended_ms: m.now_ms,
        };
        let mut inbox_seqs = Vec::with_capacity(recipients.len());
        let mut sender_inbox_seq = 0;
        for user in recipients.iter().map(String::as_str) {
            let inbox_seq = self.append_inbox(user, &pointer)?;
            if user == m.sender_user {
                sender_inbox_seq = inbox_seq;
            }
            let previous = self.state(user, &m.conversation_id)?;
            let mut state = previous.unwrap_or_else(|| StateRecord {
                conversation_id: m.conversation_id.clone(),
                kind: conversation.kind() as i32,
                peer: peer_of(&conversation, user),
                ..StateRecord::default()
            });
            // Messages this state skipped (a read-fan-out group's) are others': unread.
            state.unread_count += seq.saturating_sub(state.last_seq + 1);
            state.last_seq = seq;
            state.updated_ms = state.updated_ms.max(m.now_ms);
            if user != m.sender_user {
                state.unread_count += 1;
            }
            self.put_state(user, &state);
            inbox_seqs.push((user.to_owned(), inbox_seq));
        }
        let dedup = DedupRecord {
            conversation_id: m.conversation_id.clone(),
            conversation_seq: seq,
            sender_inbox_seq,
            content_type: message.content_type,
            content_len: message.content.len() as u64,
            content_digest: content_digest(&message.content),
        };
        self.put(&ks.dedup, dedup_key, dedup.encode_to_vec());
        self.put(
            &ks.timelines,
            keys::seq_key(&m.conversation_id, seq),
            message.encode_to_vec(),
        );
        self.caches
            .conversation_heads
            .insert(m.conversation_id.clone(), seq);
        Ok(Staged {
            message,
            sender_inbox_seq,
            inbox_seqs,
            duplicate: false,
            read_fanout,
        })
    }

    /// A client msg id seen before: the original, or a conflict if this is another message.
    fn resend(&mut self, m: &NewMessage, record: DedupRecord) -> StoreResult<Staged> {
        let conflict = || StoreError::ClientMsgIdConflict(m.client_msg_id.clone());
        if record.conversation_id != m.conversation_id {
            return Err(conflict());
        }
        let ks = self.ks;
        let key = keys::seq_key(&record.conversation_id, record.conversation_seq);
        let original: pb::Message = self
            .get_decoded(&ks.timelines, &key, "message")?
            .ok_or_else(|| corrupt("dedup", "it names a message that does not exist"))?;
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
        Ok(Staged {
            message: original,
            sender_inbox_seq: record.sender_inbox_seq,
            inbox_seqs: Vec::new(),
            duplicate: true,
            read_fanout: false,
        })
    }
}
