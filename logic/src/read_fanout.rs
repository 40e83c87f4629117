//! Read fan-out (SPEC §13.12): groups too large for an inbox entry per member and message.
//!
//! The store keeps the mode per group and decides at commit who gets an inbox entry; this
//! module decides when a group switches, tells the gateway who follows which group (so online
//! members get `GROUP_PUSH`), and reads what members' states do not hold: a read-fan-out
//! group's head, its last message and the unread count above the member's marker.

use im_protocol::ids;
use im_protocol::pb;
use timeline_store::{ConversationState, GroupChange, TimelineStore};

use crate::errors::store_error;
use crate::{Effects, Logic, RoomChange};

impl<S: TimelineStore> Logic<S> {
    /// Whether groups may switch to read fan-out here.
    pub(crate) fn read_fanout_enabled(&self) -> bool {
        self.config.read_fanout_threshold > 0 && self.store.supports_read_fanout()
    }

    /// Whether a new group of `members` members starts in read fan-out: above the threshold,
    /// or a broadcast channel of any size (SPEC §13.8).
    pub(crate) fn starts_in_read_fanout(&self, members: usize, broadcast: bool) -> bool {
        self.read_fanout_enabled()
            && (broadcast || members > self.config.read_fanout_threshold as usize)
    }

    /// After a membership change: the gateway's follow lists for the changed users, and the
    /// switch of mode if the group crossed the threshold (up) or half of it (down). Returns
    /// the group as it is after all that (the response shows the mode in force).
    pub(crate) async fn after_membership_change(
        &self,
        change: &GroupChange,
        joined: bool,
        now: u64,
        effects: &mut Effects,
    ) -> Result<pb::GroupInfo, pb::Error> {
        if change.group.read_fanout {
            effects
                .rooms
                .extend(change.changed.iter().map(|user| RoomChange {
                    user: user.clone(),
                    group_id: change.group.group_id.clone(),
                    follows: joined,
                }));
        }
        if !self.read_fanout_enabled() || change.changed.is_empty() {
            return Ok(change.group.clone());
        }
        let members = change.group.member_count;
        let threshold = self.config.read_fanout_threshold;
        let switch_to = if !change.group.read_fanout && members > threshold {
            Some(true)
        } else if change.group.read_fanout && !change.group.broadcast && members <= threshold / 2 {
            Some(false)
        } else {
            None
        };
        let Some(read_fanout) = switch_to else {
            return Ok(change.group.clone());
        };
        let switched = self
            .store
            .set_group_fanout(&change.group.group_id, read_fanout, now)
            .await
            .map_err(store_error)?;
        tracing::info!(
            group = %change.group.group_id,
            members,
            read_fanout = switched.group.read_fanout,
            "group switched fan-out mode"
        );
        effects
            .rooms
            .extend(switched.changed.iter().map(|user| RoomChange {
                user: user.clone(),
                group_id: switched.group.group_id.clone(),
                follows: read_fanout,
            }));
        effects
            .deliveries
            .extend(crate::deliveries(switched.deliveries));
        Ok(switched.group)
    }

    /// Every read-fan-out group of `user` with its head and the user's marker: what the last
    /// page of a sync lists.
    pub(crate) async fn read_group_heads(
        &self,
        user: &str,
    ) -> Result<Vec<pb::ReadGroupHead>, pb::Error> {
        if !self.read_fanout_enabled() {
            return Ok(Vec::new());
        }
        let groups = self
            .store
            .read_fanout_groups(user)
            .await
            .map_err(store_error)?;
        let mut heads = Vec::with_capacity(groups.len());
        for group_id in groups {
            let conversation_id = ids::group_conversation_id(&group_id);
            let Some(state) = self
                .store
                .conversation(user, &conversation_id)
                .await
                .map_err(store_error)?
            else {
                continue;
            };
            let last_seq = self
                .store
                .read_history(&conversation_id, 0, pb::HistoryDirection::Older, 1)
                .await
                .map_err(store_error)?
                .last_seq;
            heads.push(pb::ReadGroupHead {
                conversation_id,
                last_seq,
                read_seq: state.read_seq,
            });
        }
        Ok(heads)
    }

    /// `state` of a read-fan-out group brought up to the group's timeline: messages after the
    /// state's `last_seq` are all from others (the user's own update their state), so they
    /// are unread; the last message and time come from the timeline.
    pub(crate) async fn caught_up(
        &self,
        user: &str,
        mut state: ConversationState,
    ) -> Result<ConversationState, pb::Error> {
        let page = self
            .store
            .read_history_as(
                user,
                &state.conversation_id,
                0,
                pb::HistoryDirection::Older,
                1,
            )
            .await
            .map_err(store_error)?;
        if page.last_seq > state.last_seq {
            state.unread_count += page.last_seq - state.last_seq;
            state.last_seq = page.last_seq;
        }
        if let Some(last) = page.messages.into_iter().next() {
            state.updated_ms = state.updated_ms.max(last.server_time_ms);
            if state
                .last_message
                .as_ref()
                .is_none_or(|m| m.conversation_seq < last.conversation_seq)
            {
                state.last_message = Some(last);
            }
        }
        Ok(state)
    }

    /// One page of `user`'s conversation list. Read-fan-out groups' stored states do not move
    /// with their messages, so their place in the order is not the store's: the first page
    /// lists every one of them (brought up to date, in order among the page's others, beyond
    /// `limit` if need be) and later pages leave them out.
    pub(crate) async fn conversation_page(
        &self,
        user: &str,
        limit: u32,
        cursor: &str,
    ) -> Result<(Vec<ConversationState>, String), pb::Error> {
        let (mut states, next_cursor) = self
            .store
            .conversations(user, limit, cursor)
            .await
            .map_err(store_error)?;
        if !self.read_fanout_enabled() {
            return Ok((states, next_cursor));
        }
        let read_groups = self
            .store
            .read_fanout_groups(user)
            .await
            .map_err(store_error)?;
        if read_groups.is_empty() {
            return Ok((states, next_cursor));
        }
        let is_read_group = |state: &ConversationState| {
            state.kind == pb::ConversationKind::Group
                && read_groups.binary_search(&state.peer).is_ok()
        };
        states.retain(|state| !is_read_group(state));
        if cursor.is_empty() {
            for group_id in &read_groups {
                let conversation_id = ids::group_conversation_id(group_id);
                if let Some(state) = self
                    .store
                    .conversation(user, &conversation_id)
                    .await
                    .map_err(store_error)?
                {
                    states.push(self.caught_up(user, state).await?);
                }
            }
            states.sort_by(|a, b| {
                b.updated_ms
                    .cmp(&a.updated_ms)
                    .then_with(|| a.conversation_id.cmp(&b.conversation_id))
            });
        }
        Ok((states, next_cursor))
    }
}
