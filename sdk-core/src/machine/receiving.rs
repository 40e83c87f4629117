//! The receive side: inbox sync and gap fill, applying entries to the local store, and keeping
//! the store in step with responses.

use std::time::{Duration, Instant};

use im_protocol::ids::{self, ConversationRef};
use im_protocol::{Body, pb};

use super::convert::{self, received_message};
use super::{Client, Event, Pending, Phase};
use crate::store::{LocalConversation, LocalMessage, LocalResult, LocalStore};

impl<S: LocalStore> Client<S> {
    pub(super) fn start_sync(&mut self, to_seq: u64, now: Instant) {
        self.sync_in_flight = true;
        self.sync_to = to_seq;
        let request = pb::SyncReq {
            from_seq: self.cursor + 1,
            limit: self.config.sync_page,
            to_seq,
        };
        self.send_frame(request, Some(Pending::Sync), now);
    }

    pub(super) fn on_entries(&mut self, entries: Vec<pb::InboxEntry>, now: Instant) {
        for entry in entries {
            if entry.inbox_seq > self.cursor {
                self.buffered.insert(entry.inbox_seq, entry);
            }
        }
        // While a sync is running, pushes wait in the buffer: applying them now could move the
        // cursor past entries the sync has not delivered yet.
        if self.sync_in_flight {
            return;
        }
        self.drain_buffer(now);
        if let Some(&first) = self.buffered.keys().next() {
            // A gap below the first buffered entry: fetch exactly what is missing.
            self.start_sync(first - 1, now);
        }
    }

    /// Applies buffered entries that continue the cursor.
    fn drain_buffer(&mut self, now: Instant) {
        while let Some(entry) = self.buffered.remove(&(self.cursor + 1)) {
            self.apply(entry, now);
            self.cursor += 1;
        }
        let cursor = self.cursor;
        self.buffered.retain(|&seq, _| seq > cursor);
        self.commit_cursor(now);
    }

    /// Compares the server's inbox with the one the local state follows (SPEC §10.8): another
    /// epoch, or a head below the cursor, means the seqs the client holds will never come
    /// again, so it forgets what it learned and syncs from the start instead of waiting.
    pub(super) fn check_inbox(&mut self, epoch: u64, head_seq: u64) {
        let other_epoch = epoch != 0 && self.inbox_epoch != 0 && epoch != self.inbox_epoch;
        if other_epoch || head_seq < self.cursor {
            tracing::warn!(
                local_epoch = self.inbox_epoch,
                server_epoch = epoch,
                cursor = self.cursor,
                head_seq,
                "the server's inbox was replaced: resetting local state and syncing from the start"
            );
            let epoch = if epoch != 0 { epoch } else { self.inbox_epoch };
            match self.store.reset_inbox(epoch) {
                Ok(()) => {
                    self.inbox_epoch = epoch;
                    self.cursor = 0;
                    self.acked_cursor = 0;
                    self.buffered.clear();
                    self.read_groups.clear();
                    self.events.push_back(Event::InboxReset { epoch });
                }
                Err(e) => self.events.push_back(Event::StoreError(e.to_string())),
            }
        } else if epoch != 0 && self.inbox_epoch != epoch {
            // First contact (or a store from before epochs): adopt the server's.
            match self.store.set_inbox_epoch(epoch) {
                Ok(()) => self.inbox_epoch = epoch,
                Err(e) => self.events.push_back(Event::StoreError(e.to_string())),
            }
        }
    }

    fn commit_cursor(&mut self, now: Instant) {
        if self.cursor == self.acked_cursor {
            return;
        }
        match self.store.set_cursor(self.cursor) {
            Ok(()) => {
                self.acked_cursor = self.cursor;
                if self.connected() {
                    self.send_frame(
                        pb::DeliveryAck {
                            up_to_inbox_seq: self.cursor,
                        },
                        None,
                        now,
                    );
                }
            }
            Err(e) => self.events.push_back(Event::StoreError(e.to_string())),
        }
    }

    pub(super) fn on_sync_answer(&mut self, body: Body, now: Instant) {
        let response = match body {
            Body::SyncResp(response) => response,
            _ => {
                // Retry through a reconnect rather than spin on a failing request.
                self.fail_connection(now, Duration::ZERO);
                return;
            }
        };
        if (response.inbox_epoch != 0 && response.inbox_epoch != self.inbox_epoch)
            || response.head_seq < self.cursor
        {
            // Not the inbox the cursor counts in: reset, and sync again from its start.
            self.check_inbox(response.inbox_epoch, response.head_seq);
            self.sync_in_flight = false;
            self.sync_to = 0;
            self.start_sync(0, now);
            return;
        }
        for range in &response.missing {
            if range.reason == pb::SeqRangeReason::Trimmed as i32
                && range.from_seq <= self.cursor + 1
                && range.to_seq > self.cursor
            {
                // Those entries will never come back: step over them instead of waiting.
                self.cursor = range.to_seq;
            }
        }
        let read_group_heads = response.read_groups;
        for entry in response.entries {
            if entry.inbox_seq == self.cursor + 1 {
                self.apply(entry, now);
                self.cursor += 1;
            } else if entry.inbox_seq > self.cursor {
                self.buffered.insert(entry.inbox_seq, entry);
            }
        }
        self.drain_buffer(now);
        let target_reached = self.sync_to != 0 && self.cursor >= self.sync_to;
        if response.has_more && !target_reached && response.next_seq > self.cursor {
            // The server skipped ahead (should not happen with contiguous inboxes): follow it.
            self.cursor = response.next_seq - 1;
        }
        if response.has_more && !target_reached {
            let to = self.sync_to;
            self.start_sync(to, now);
            return;
        }
        self.sync_in_flight = false;
        self.sync_to = 0;
        self.drain_buffer(now);
        if let Some(&first) = self.buffered.keys().next() {
            self.start_sync(first - 1, now);
            return;
        }
        // The inbox is caught up (mode switches in it seen): now the read-fan-out groups.
        self.on_read_group_heads(read_group_heads, now);
        if self.phase == Phase::Syncing {
            self.set_phase(Phase::Online);
            self.events.push_back(Event::Synced {
                cursor: self.cursor,
            });
            // The server's unread counts are authoritative: refresh the local list once.
            let handle = self.next_handle;
            self.next_handle += 1;
            self.send_frame(
                pb::ConversationsReq {
                    limit: 0,
                    cursor: String::new(),
                },
                Some(Pending::Request { handle }),
                now,
            );
        }
    }

    /// Applies one inbox entry to the local store. Idempotent: applying it twice changes
    /// nothing the second time.
    fn apply(&mut self, entry: pb::InboxEntry, now: Instant) {
        let result = match entry.body {
            Some(pb::inbox_entry::Body::Message(message)) => {
                self.on_inbox_group_message(&message, now);
                self.apply_message(message)
            }
            Some(pb::inbox_entry::Body::Recall(recall)) => self
                .store
                .recall_message(&recall.conversation_id, recall.conversation_seq)
                .map(|_| {
                    if let Ok(Some(mut conversation)) =
                        self.store.conversation(&recall.conversation_id)
                        && let Some(last) = &mut conversation.last_message
                        && last.seq == recall.conversation_seq
                    {
                        last.recalled = true;
                        last.content.clear();
                        self.save_conversation(conversation);
                    }
                    self.events.push_back(Event::MessageRecalled {
                        conversation_id: recall.conversation_id,
                        seq: recall.conversation_seq,
                    });
                }),
            Some(pb::inbox_entry::Body::ReadReceipt(receipt)) => {
                let mut conversation = self.conversation_or_new(&receipt.conversation_id);
                if receipt.read_seq > conversation.peer_read_seq {
                    conversation.peer_read_seq = receipt.read_seq;
                    self.save_conversation(conversation);
                }
                self.events.push_back(Event::ReadReceipt {
                    conversation_id: receipt.conversation_id,
                    reader: receipt.reader_user,
                    read_seq: receipt.read_seq,
                });
                Ok(())
            }
            Some(pb::inbox_entry::Body::ReadMarker(marker)) => {
                let mut conversation = self.conversation_or_new(&marker.conversation_id);
                if marker.read_seq >= conversation.read_seq {
                    conversation.read_seq = marker.read_seq;
                    conversation.unread_count = marker.unread_count;
                    self.save_conversation(conversation);
                }
                Ok(())
            }
            Some(pb::inbox_entry::Body::GroupEvent(event)) => {
                if !self.on_group_event(&event, now) {
                    return;
                }
                let conversation_id = ids::group_conversation_id(&event.group_id);
                let mut conversation = self.conversation_or_new(&conversation_id);
                if !event.group_name.is_empty() && conversation.title != event.group_name {
                    conversation.title = event.group_name.clone();
                    self.save_conversation(conversation);
                }
                self.events
                    .push_back(Event::GroupChanged(convert::group_event(event)));
                Ok(())
            }
            Some(pb::inbox_entry::Body::Delete(delete)) => self
                .store
                .delete_messages(&delete.conversation_id, &delete.conversation_seqs)
                .map(|()| {
                    self.events.push_back(Event::MessagesDeleted {
                        conversation_id: delete.conversation_id,
                        seqs: delete.conversation_seqs,
                    });
                }),
            // An entry of a newer revision: it still takes its place in the seq order.
            None => Ok(()),
        };
        if let Err(e) = result {
            self.events.push_back(Event::StoreError(e.to_string()));
        }
    }

    fn apply_message(&mut self, message: pb::Message) -> LocalResult<()> {
        let own = message.sender_user == self.config.user_id;
        if own {
            // Our own send, seen through the inbox: it may be the ack we never received.
            if let Some(updated) = self.store.outbox_acked(
                &message.client_msg_id,
                message.conversation_seq,
                message.server_msg_id,
                message.server_time_ms,
            )? {
                self.events
                    .push_back(Event::MessageUpdated(updated.clone()));
                self.touch_conversation(&updated, false);
                return Ok(());
            }
        }
        let local = received_message(&message);
        if self.store.put_message(&local)? {
            self.events.push_back(Event::MessageReceived(local.clone()));
            self.touch_conversation(&local, !own);
        }
        Ok(())
    }

    pub(super) fn conversation_or_new(&self, conversation_id: &str) -> LocalConversation {
        if let Ok(Some(conversation)) = self.store.conversation(conversation_id) {
            return conversation;
        }
        let peer = match ConversationRef::parse(conversation_id) {
            Ok(ConversationRef::Direct { low, high }) => {
                if low == self.config.user_id {
                    high.to_owned()
                } else {
                    low.to_owned()
                }
            }
            Ok(ConversationRef::Group { group_id }) => group_id.to_owned(),
            Err(_) => String::new(),
        };
        LocalConversation {
            conversation_id: conversation_id.to_owned(),
            peer,
            ..LocalConversation::default()
        }
    }

    /// Moves a conversation's preview forward for a newly stored message.
    pub(super) fn touch_conversation(&mut self, message: &LocalMessage, counts_as_unread: bool) {
        let mut conversation = self.conversation_or_new(&message.conversation_id);
        if message.seq >= conversation.last_seq {
            conversation.last_seq = message.seq;
            conversation.last_message = Some(message.clone());
            conversation.updated_ms = conversation.updated_ms.max(message.time_ms);
        }
        if counts_as_unread && message.seq > conversation.read_seq {
            conversation.unread_count += 1;
        }
        self.save_conversation(conversation);
    }

    pub(super) fn save_conversation(&mut self, conversation: LocalConversation) {
        match self.store.put_conversation(&conversation) {
            Ok(()) => self
                .events
                .push_back(Event::ConversationUpdated(conversation)),
            Err(e) => self.events.push_back(Event::StoreError(e.to_string())),
        }
    }

    /// Keeps the local store in step with what a response says.
    pub(super) fn absorb_response(&mut self, body: &Body) {
        match body {
            Body::ConversationsResp(response) => {
                for summary in &response.conversations {
                    let mut conversation = self.conversation_or_new(&summary.conversation_id);
                    conversation.read_seq = summary.read_seq;
                    conversation.unread_count = summary.unread_count;
                    conversation.peer_read_seq =
                        conversation.peer_read_seq.max(summary.peer_read_seq);
                    if !summary.title.is_empty() {
                        conversation.title = summary.title.clone();
                    }
                    conversation.last_seq = conversation.last_seq.max(summary.last_seq);
                    conversation.updated_ms = conversation.updated_ms.max(summary.updated_ms);
                    self.save_conversation(conversation);
                }
            }
            Body::ReadMarkerResp(response) => {
                let mut conversation = self.conversation_or_new(&response.conversation_id);
                if response.read_seq >= conversation.read_seq {
                    conversation.read_seq = response.read_seq;
                    conversation.unread_count = response.unread_count;
                    self.save_conversation(conversation);
                }
            }
            Body::HistoryResp(response) => {
                for message in &response.messages {
                    let local = received_message(message);
                    if let Err(e) = self.store.put_message(&local) {
                        self.events.push_back(Event::StoreError(e.to_string()));
                    }
                }
            }
            _ => {}
        }
    }
}
