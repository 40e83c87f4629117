//! Read-fan-out groups (SPEC §13.12): their messages do not come through the inbox, so the
//! device follows each one by conversation seq. It keeps a position per group (every message
//! up to it is stored locally), applies `GROUP_PUSH` messages that continue it, and pages the
//! group's timeline (`HISTORY_REQ` newer than the position) whenever it learns of a gap: a
//! push beyond the position, a sync's list of group heads, or the group switching back to
//! write fan-out.

use std::time::Instant;

use im_protocol::{Body, ids, pb};

use super::convert::received_message;
use super::{Client, Event, Pending};
use crate::store::LocalStore;

/// Messages asked for per catch-up page.
const CATCH_UP_PAGE: u32 = 200;

/// Where the device stands in one read-fan-out group.
#[derive(Clone, Debug, Default)]
pub(super) struct ReadGroup {
    /// Every message up to this conversation seq is stored locally.
    pub position: u64,
    /// Page until the position reaches this (0 = nothing known beyond the position).
    pub target: u64,
    /// A catch-up page is in flight on this connection.
    pub fetching: bool,
    /// The group went back to write fan-out at this seq: stop following it once there.
    pub until: Option<u64>,
}

impl<S: LocalStore> Client<S> {
    /// Starts following a group by conversation seq from `position`, unless it is followed
    /// already.
    pub(super) fn follow_read_group(&mut self, conversation_id: &str, position: u64) {
        if self.read_groups.contains_key(conversation_id) {
            return;
        }
        self.read_groups.insert(
            conversation_id.to_owned(),
            ReadGroup {
                position,
                ..ReadGroup::default()
            },
        );
        self.save_read_position(conversation_id);
    }

    fn save_read_position(&mut self, conversation_id: &str) {
        let position = self.read_groups.get(conversation_id).map(|g| g.position);
        if let Err(e) = self
            .store
            .set_read_group_position(conversation_id, position)
        {
            self.events.push_back(Event::StoreError(e.to_string()));
        }
    }

    /// Where to start following a group the device has no position for: after the newest
    /// message it has, or else after `fallback`.
    fn starting_position(&self, conversation_id: &str, fallback: u64) -> u64 {
        match self.store.conversation(conversation_id) {
            Ok(Some(conversation)) if conversation.last_seq > 0 => conversation.last_seq,
            _ => fallback,
        }
    }

    /// A group event from the inbox: joining or leaving a read-fan-out group, or a group
    /// switching modes. Returns whether the app should see it (mode switches are the core's
    /// business only).
    pub(super) fn on_group_event(&mut self, event: &pb::GroupEvent, now: Instant) -> bool {
        let conversation_id = ids::group_conversation_id(&event.group_id);
        let me = &self.config.user_id;
        let kind = pb::GroupEventKind::try_from(event.kind).ok();
        let concerns_me = event.members.iter().any(|m| m == me);
        match kind {
            Some(pb::GroupEventKind::FanoutChanged) => {
                if event.read_fanout {
                    match self.read_groups.get_mut(&conversation_id) {
                        // Still catching up after a switch back to write fan-out: it is read
                        // fan-out again, so keep following it.
                        Some(group) => group.until = None,
                        // Messages up to the event's seq came through the inbox, before it.
                        None => self.follow_read_group(&conversation_id, event.conversation_seq),
                    }
                } else if let Some(group) = self.read_groups.get_mut(&conversation_id) {
                    // Back to the inbox after that seq: fetch what is only in the timeline,
                    // then stop following.
                    if group.position >= event.conversation_seq && !group.fetching {
                        self.read_groups.remove(&conversation_id);
                        self.save_read_position(&conversation_id);
                    } else {
                        group.until = Some(event.conversation_seq);
                        group.target = group.target.max(event.conversation_seq);
                        self.catch_up(&conversation_id, now);
                    }
                }
                false
            }
            Some(
                pb::GroupEventKind::Created
                | pb::GroupEventKind::MembersAdded
                | pb::GroupEventKind::MemberJoined,
            ) if event.read_fanout && concerns_me => {
                self.follow_read_group(&conversation_id, event.conversation_seq);
                true
            }
            Some(pb::GroupEventKind::MembersRemoved | pb::GroupEventKind::MemberLeft)
                if concerns_me =>
            {
                if self.read_groups.remove(&conversation_id).is_some() {
                    self.save_read_position(&conversation_id);
                }
                true
            }
            _ => true,
        }
    }

    /// A message of a followed group arrived through the inbox (the user's own, sent from
    /// another device): it may continue the position.
    pub(super) fn on_inbox_group_message(&mut self, message: &pb::Message, now: Instant) {
        self.note_group_seq(&message.conversation_id, message.conversation_seq, now);
    }

    /// This device's own message was acknowledged at `seq`.
    pub(super) fn note_group_seq(&mut self, conversation_id: &str, seq: u64, now: Instant) {
        let Some(group) = self.read_groups.get_mut(conversation_id) else {
            return;
        };
        if seq == group.position + 1 && !group.fetching {
            group.position = seq;
            self.save_read_position(conversation_id);
        } else if seq > group.position + 1 {
            group.target = group.target.max(seq);
            self.catch_up(conversation_id, now);
        }
    }

    /// `GROUP_PUSH`: messages of read-fan-out groups, without inbox seqs.
    pub(super) fn on_group_push(&mut self, push: pb::GroupPush, now: Instant) {
        for message in push.messages {
            let conversation_id = message.conversation_id.clone();
            if !self.read_groups.contains_key(&conversation_id) {
                // Not followed yet: the inbox event that says from where (a switch, or this
                // user joining) has not been applied. A sync brings it, and its last page the
                // group's head; guessing a position here could skip messages.
                if !self.sync_in_flight && self.connected() {
                    self.start_sync(0, now);
                }
                continue;
            }
            let sync_done = self.sync_done();
            let Some(group) = self.read_groups.get_mut(&conversation_id) else {
                continue;
            };
            let seq = message.conversation_seq;
            if seq <= group.position {
                continue;
            }
            if seq == group.position + 1 && !group.fetching && sync_done {
                group.position = seq;
                self.apply_timeline_message(message);
                self.save_read_position(&conversation_id);
            } else {
                // A gap (a push lost or not yet paged), or a page in flight that will bring
                // this one too.
                group.target = group.target.max(seq);
                self.catch_up(&conversation_id, now);
            }
        }
    }

    /// Whether the inbox is caught up: until then, group messages wait for the sync's list of
    /// heads, so that a mode switch in the inbox is seen before the timeline is followed.
    fn sync_done(&self) -> bool {
        !self.sync_in_flight
    }

    /// The last page of a sync lists every read-fan-out group of the user with its head.
    pub(super) fn on_read_group_heads(&mut self, heads: Vec<pb::ReadGroupHead>, now: Instant) {
        for head in heads {
            if !self.read_groups.contains_key(&head.conversation_id) {
                let start = self.starting_position(&head.conversation_id, head.read_seq);
                self.follow_read_group(&head.conversation_id, start);
            }
            if let Some(group) = self.read_groups.get_mut(&head.conversation_id)
                && head.last_seq > group.position
            {
                group.target = group.target.max(head.last_seq);
                self.catch_up(&head.conversation_id, now);
            }
        }
        // Groups whose catch-up waited for the sync to end.
        let waiting: Vec<String> = self
            .read_groups
            .iter()
            .filter(|(_, g)| g.target > g.position && !g.fetching)
            .map(|(id, _)| id.clone())
            .collect();
        for conversation_id in waiting {
            self.catch_up(&conversation_id, now);
        }
    }

    /// Asks for the next page of a group's timeline after the position, unless one is in
    /// flight, the link is down or the inbox sync has not finished.
    fn catch_up(&mut self, conversation_id: &str, now: Instant) {
        if !self.connected() || self.sync_in_flight {
            return;
        }
        let Some(group) = self.read_groups.get_mut(conversation_id) else {
            return;
        };
        if group.fetching || group.target <= group.position {
            return;
        }
        group.fetching = true;
        let anchor = group.position;
        self.send_frame(
            pb::HistoryReq {
                conversation_id: conversation_id.to_owned(),
                anchor_seq: anchor,
                direction: pb::HistoryDirection::Newer as i32,
                limit: CATCH_UP_PAGE,
            },
            Some(Pending::CatchUp {
                conversation_id: conversation_id.to_owned(),
            }),
            now,
        );
    }

    /// A catch-up page came back.
    pub(super) fn on_catch_up_answer(&mut self, conversation_id: String, body: Body, now: Instant) {
        let Some(group) = self.read_groups.get_mut(&conversation_id) else {
            return;
        };
        group.fetching = false;
        let Body::HistoryResp(page) = body else {
            // Refused (no longer a member, say): the next sync's list says what still holds.
            group.target = group.position;
            return;
        };
        let mut messages = page.messages;
        messages.retain(|m| m.conversation_seq > group.position);
        messages.sort_by_key(|m| m.conversation_seq);
        let mut position = group.position;
        if let Some(last) = messages.last() {
            position = last.conversation_seq;
        }
        if !page.has_more {
            // Nothing more up to the head: seqs in between are ones this user deleted.
            position = position.max(group.target.min(page.last_seq));
        }
        group.position = position;
        let target = group.target;
        let more = page.has_more && position < target;
        let until = group.until;
        for message in messages {
            self.apply_timeline_message(message);
        }
        if until.is_some_and(|until| position >= until) {
            // Switched back to write fan-out and caught up: the inbox carries the rest.
            self.read_groups.remove(&conversation_id);
        }
        self.save_read_position(&conversation_id);
        if more || position < target {
            self.catch_up(&conversation_id, now);
        }
    }

    /// Stores a message from a group's timeline and tells the app, as an inbox message would.
    fn apply_timeline_message(&mut self, message: pb::Message) {
        let own = message.sender_user == self.config.user_id;
        if own {
            match self.store.outbox_acked(
                &message.client_msg_id,
                message.conversation_seq,
                message.server_msg_id,
                message.server_time_ms,
            ) {
                Ok(Some(updated)) => {
                    self.events
                        .push_back(Event::MessageUpdated(updated.clone()));
                    self.touch_conversation(&updated, false);
                    return;
                }
                Ok(None) => {}
                Err(e) => {
                    self.events.push_back(Event::StoreError(e.to_string()));
                    return;
                }
            }
        }
        let local = received_message(&message);
        match self.store.put_message(&local) {
            Ok(true) => {
                self.events.push_back(Event::MessageReceived(local.clone()));
                self.touch_conversation(&local, !own);
            }
            Ok(false) => {}
            Err(e) => self.events.push_back(Event::StoreError(e.to_string())),
        }
    }
}
