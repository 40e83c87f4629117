//! Groups: creation, membership changes and the events that announce them, and reads of
//! groups and members. The checks run in the embedded store's order, so that a request that
//! breaks two rules gets the same error from both stores.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use im_protocol::ids;
use im_protocol::pb::{self, inbox_entry::Body};
use timeline_store::{GroupChange, NewGroup, StoreError, StoreResult};

use crate::limits::{check_id, check_key, check_pair_key, check_part};
use crate::state::{GroupRecord, MemberRecord, State, StateRecord, missing};

/// A group's public info, unchanged: the answer to a request that changes nothing.
fn unchanged(info: pb::GroupInfo) -> GroupChange {
    GroupChange {
        group: info,
        changed: Vec::new(),
        deliveries: Vec::new(),
    }
}

impl State {
    // ----- lookups -----

    /// The group, or `NotFound`.
    fn group_record(&self, group_id: &str) -> StoreResult<&GroupRecord> {
        check_key(group_id)?;
        self.groups
            .get(group_id)
            .ok_or_else(|| StoreError::NotFound(format!("group {group_id}")))
    }

    /// The group, to change it. Callers have found it with [`State::group_record`] first.
    fn group_mut(&mut self, group_id: &str) -> StoreResult<&mut GroupRecord> {
        self.groups
            .get_mut(group_id)
            .ok_or_else(|| missing("a group vanished during a change"))
    }

    /// Whether `user` is a member of an existing group.
    fn is_in(&self, group_id: &str, user: &str) -> StoreResult<bool> {
        check_pair_key(group_id, user)?;
        Ok(self
            .groups
            .get(group_id)
            .is_some_and(|group| group.members.contains_key(user)))
    }

    /// Every member's user id, sorted.
    fn member_list(&self, group_id: &str) -> Vec<String> {
        self.groups
            .get(group_id)
            .map(|group| group.members.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Who hears of a membership change: every member (`everyone`, the changed users
    /// included) in write fan-out, only the changed users in read fan-out (SPEC §13.12).
    fn audience(info: &pb::GroupInfo, everyone: Vec<String>, changed: &[String]) -> Vec<String> {
        if info.read_fanout {
            changed.to_vec()
        } else {
            everyone
        }
    }

    /// Keeps `user`'s list of read-fan-out groups in step with a membership or mode change.
    fn index_read_group(&mut self, user: &str, group_id: &str, listed: bool) {
        if listed {
            self.read_groups
                .entry(user.to_owned())
                .or_default()
                .insert(group_id.to_owned());
        } else if let Some(groups) = self.read_groups.get_mut(user) {
            groups.remove(group_id);
            if groups.is_empty() {
                self.read_groups.remove(user);
            }
        }
    }

    // ----- membership -----

    /// Gives a new member their state of the group conversation: read up to the current last
    /// seq, since the messages before they joined never reached their inbox.
    fn join_state(&mut self, group_id: &str, user: &str, now_ms: u64) {
        let conversation_id = ids::group_conversation_id(group_id);
        let head = self.conversation_head(&conversation_id);
        let mut state = self
            .state(user, &conversation_id)
            .cloned()
            .unwrap_or_else(|| {
                StateRecord::new(&conversation_id, pb::ConversationKind::Group, group_id)
            });
        state.last_seq = head;
        state.read_seq = head;
        state.unread_count = 0;
        state.updated_ms = state.updated_ms.max(now_ms);
        self.put_state(user, state);
    }

    /// Makes `user` a member (the caller checked they are not one and that there is room):
    /// next join order, member record, conversation state, member count.
    fn admit_member(&mut self, group_id: &str, user: &str, now_ms: u64) -> StoreResult<()> {
        let group = self.group_mut(group_id)?;
        let join_order = group.next_join_order;
        group.next_join_order += 1;
        group.members.insert(
            user.to_owned(),
            MemberRecord {
                member: pb::GroupMember {
                    user_id: user.to_owned(),
                    role: pb::GroupRole::Member as i32,
                    joined_ms: now_ms,
                },
                join_order,
            },
        );
        group.info.member_count += 1;
        let read_fanout = group.info.read_fanout;
        self.join_state(group_id, user, now_ms);
        self.index_read_group(user, group_id, read_fanout);
        Ok(())
    }

    /// Appends the `GroupEvent` of a membership change to the inbox of each of `audience` and
    /// returns the change: the event names the changed users and the group as it is now.
    fn announce(
        &mut self,
        audience: &[String],
        kind: pb::GroupEventKind,
        actor: &str,
        changed: Vec<String>,
        group: pb::GroupInfo,
        now_ms: u64,
    ) -> GroupChange {
        let event = pb::GroupEvent {
            group_id: group.group_id.clone(),
            kind: kind as i32,
            actor_user: actor.to_owned(),
            members: changed.clone(),
            group_name: group.name.clone(),
            server_time_ms: now_ms,
            read_fanout: group.read_fanout,
            conversation_seq: self.conversation_head(&ids::group_conversation_id(&group.group_id)),
        };
        let deliveries = audience
            .iter()
            .map(|user| self.append_event(user, Body::GroupEvent(event.clone()), now_ms))
            .collect();
        GroupChange {
            group,
            changed,
            deliveries,
        }
    }

    // ----- changes -----

    /// See [`timeline_store::TimelineStore::create_group`].
    pub(crate) fn create_group(&mut self, new: NewGroup) -> StoreResult<GroupChange> {
        check_part("client request id", &new.client_request_id)?;
        check_id(&new.owner, "owner user id")?;
        for member in &new.members {
            check_id(member, "member user id")?;
        }
        let request_key = (!new.client_request_id.is_empty())
            .then(|| (new.owner.clone(), new.client_request_id.clone()));
        if let Some(group_id) = request_key
            .as_ref()
            .and_then(|key| self.group_requests.get(key))
        {
            return Ok(unchanged(self.group_record(group_id)?.info.clone()));
        }
        let others: BTreeSet<&str> = new
            .members
            .iter()
            .map(String::as_str)
            .filter(|member| *member != new.owner)
            .collect();
        let mut members = Vec::with_capacity(others.len() + 1);
        members.push(new.owner.clone());
        members.extend(others.into_iter().map(str::to_owned));
        if members.len() > new.max_members as usize {
            return Err(StoreError::GroupFull(new.max_members));
        }

        let group_id = format!("grp-{}", self.take_group_number());
        let info = pb::GroupInfo {
            group_id: group_id.clone(),
            name: new.name.clone(),
            owner: new.owner.clone(),
            member_count: members.len() as u32,
            open: new.open,
            created_ms: new.now_ms,
            read_fanout: new.read_fanout,
            broadcast: new.broadcast,
        };
        let mut records = BTreeMap::new();
        for (order, user) in members.iter().enumerate() {
            let role = if order == 0 {
                pb::GroupRole::Owner
            } else {
                pb::GroupRole::Member
            };
            let member = pb::GroupMember {
                user_id: user.clone(),
                role: role as i32,
                joined_ms: new.now_ms,
            };
            let join_order = order as u64;
            records.insert(user.clone(), MemberRecord { member, join_order });
            self.join_state(&group_id, user, new.now_ms);
            self.index_read_group(user, &group_id, new.read_fanout);
        }
        self.groups.insert(
            group_id.clone(),
            GroupRecord {
                info: info.clone(),
                members: records,
                next_join_order: members.len() as u64,
            },
        );
        if let Some(key) = request_key {
            self.group_requests.insert(key, group_id);
        }
        let audience = members.clone();
        Ok(self.announce(
            &audience,
            pb::GroupEventKind::Created,
            &new.owner,
            members,
            info,
            new.now_ms,
        ))
    }

    /// See [`timeline_store::TimelineStore::add_members`].
    pub(crate) fn add_members(
        &mut self,
        group_id: &str,
        actor: &str,
        members: &[String],
        max_members: u32,
        now_ms: u64,
    ) -> StoreResult<GroupChange> {
        let info = self.group_record(group_id)?.info.clone();
        if !self.is_in(group_id, actor)? {
            return Err(StoreError::Forbidden(format!(
                "{actor} is not a member of group {group_id}"
            )));
        }
        let candidates: BTreeSet<&str> = members.iter().map(String::as_str).collect();
        let mut added = Vec::new();
        for user in candidates {
            check_id(user, "member user id")?;
            if !self.is_in(group_id, user)? {
                added.push(user.to_owned());
            }
        }
        if added.is_empty() {
            return Ok(unchanged(info));
        }
        if info.member_count as usize + added.len() > max_members as usize {
            return Err(StoreError::GroupFull(max_members));
        }
        for user in &added {
            self.admit_member(group_id, user, now_ms)?;
        }
        let info = self.group_record(group_id)?.info.clone();
        let everyone = Self::audience(&info, self.member_list(group_id), &added);
        Ok(self.announce(
            &everyone,
            pb::GroupEventKind::MembersAdded,
            actor,
            added,
            info,
            now_ms,
        ))
    }

    /// See [`timeline_store::TimelineStore::remove_members`].
    pub(crate) fn remove_members(
        &mut self,
        group_id: &str,
        actor: &str,
        members: &[String],
        now_ms: u64,
    ) -> StoreResult<GroupChange> {
        let info = self.group_record(group_id)?.info.clone();
        if info.owner != actor {
            return Err(StoreError::Forbidden(format!(
                "only the owner may remove members of group {group_id}"
            )));
        }
        if members.iter().any(|member| member == actor) {
            return Err(StoreError::Forbidden(
                "the owner cannot remove themself; leave the group instead".to_owned(),
            ));
        }
        let candidates: BTreeSet<&str> = members.iter().map(String::as_str).collect();
        let mut removed = Vec::new();
        for user in candidates {
            check_id(user, "member user id")?;
            if self.is_in(group_id, user)? {
                removed.push(user.to_owned());
            }
        }
        if removed.is_empty() {
            return Ok(unchanged(info));
        }
        let group = self.group_mut(group_id)?;
        for user in &removed {
            group.members.remove(user);
        }
        group.info.member_count = group.info.member_count.saturating_sub(removed.len() as u32);
        let info = group.info.clone();
        let conversation_id = ids::group_conversation_id(group_id);
        for user in &removed {
            self.drop_state(user, &conversation_id);
            self.index_read_group(user, group_id, false);
        }
        let audience: BTreeSet<String> = self
            .member_list(group_id)
            .into_iter()
            .chain(removed.iter().cloned())
            .collect();
        let audience = Self::audience(&info, audience.into_iter().collect(), &removed);
        Ok(self.announce(
            &audience,
            pb::GroupEventKind::MembersRemoved,
            actor,
            removed,
            info,
            now_ms,
        ))
    }

    /// See [`timeline_store::TimelineStore::join_group`].
    pub(crate) fn join_group(
        &mut self,
        group_id: &str,
        user: &str,
        max_members: u32,
        now_ms: u64,
    ) -> StoreResult<GroupChange> {
        check_id(user, "user id")?;
        let info = self.group_record(group_id)?.info.clone();
        if self.is_in(group_id, user)? {
            return Ok(unchanged(info));
        }
        if !info.open {
            return Err(StoreError::NotOpen);
        }
        if info.member_count as usize + 1 > max_members as usize {
            return Err(StoreError::GroupFull(max_members));
        }
        self.admit_member(group_id, user, now_ms)?;
        let info = self.group_record(group_id)?.info.clone();
        let everyone = Self::audience(&info, self.member_list(group_id), &[user.to_owned()]);
        Ok(self.announce(
            &everyone,
            pb::GroupEventKind::MemberJoined,
            user,
            vec![user.to_owned()],
            info,
            now_ms,
        ))
    }

    /// See [`timeline_store::TimelineStore::leave_group`].
    pub(crate) fn leave_group(
        &mut self,
        group_id: &str,
        user: &str,
        now_ms: u64,
    ) -> StoreResult<GroupChange> {
        self.group_record(group_id)?;
        if !self.is_in(group_id, user)? {
            return Err(StoreError::Forbidden(format!(
                "{user} is not a member of group {group_id}"
            )));
        }
        let group = self.group_mut(group_id)?;
        group.members.remove(user);
        group.info.member_count = group.info.member_count.saturating_sub(1);
        if group.info.owner == user {
            // The longest-standing member: the lowest join order (join orders are unique).
            let successor = group
                .members
                .values_mut()
                .min_by_key(|record| record.join_order);
            group.info.owner = match successor {
                Some(successor) => {
                    successor.member.role = pb::GroupRole::Owner as i32;
                    successor.member.user_id.clone()
                }
                None => String::new(),
            };
        }
        let info = group.info.clone();
        self.drop_state(user, &ids::group_conversation_id(group_id));
        self.index_read_group(user, group_id, false);
        let mut audience: BTreeSet<String> = self.member_list(group_id).into_iter().collect();
        audience.insert(user.to_owned());
        let audience = Self::audience(&info, audience.into_iter().collect(), &[user.to_owned()]);
        Ok(self.announce(
            &audience,
            pb::GroupEventKind::MemberLeft,
            user,
            vec![user.to_owned()],
            info,
            now_ms,
        ))
    }

    /// See [`timeline_store::TimelineStore::set_group_fanout`].
    pub(crate) fn set_group_fanout(
        &mut self,
        group_id: &str,
        read_fanout: bool,
        now_ms: u64,
    ) -> StoreResult<GroupChange> {
        let info = self.group_record(group_id)?.info.clone();
        if info.read_fanout == read_fanout {
            return Ok(unchanged(info));
        }
        let group = self.group_mut(group_id)?;
        group.info.read_fanout = read_fanout;
        let info = group.info.clone();
        let everyone = self.member_list(group_id);
        for user in &everyone {
            self.index_read_group(user, group_id, read_fanout);
        }
        Ok(self.announce(
            &everyone,
            pb::GroupEventKind::FanoutChanged,
            "",
            everyone.clone(),
            info,
            now_ms,
        ))
    }

    /// See [`timeline_store::TimelineStore::read_fanout_groups`].
    pub(crate) fn read_fanout_groups(&self, user: &str) -> StoreResult<Vec<String>> {
        check_id(user, "user id")?;
        Ok(self
            .read_groups
            .get(user)
            .map(|groups| {
                groups
                    .iter()
                    .take(timeline_store::MAX_READ_FANOUT_GROUPS_LISTED)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default())
    }

    /// The fan-out mode of a group conversation's group: `None` for a direct conversation or
    /// a group that does not exist.
    pub(crate) fn read_fanout_of(&self, conversation_id: &str) -> Option<bool> {
        let group_id = conversation_id.strip_prefix("g:")?;
        self.groups.get(group_id).map(|g| g.info.read_fanout)
    }

    // ----- reads -----

    /// See [`timeline_store::TimelineStore::group`].
    pub(crate) fn group(&self, group_id: &str) -> StoreResult<pb::GroupInfo> {
        Ok(self.group_record(group_id)?.info.clone())
    }

    /// See [`timeline_store::TimelineStore::group_members`].
    pub(crate) fn group_members(
        &self,
        group_id: &str,
        limit: u32,
        cursor: &str,
    ) -> StoreResult<(Vec<pb::GroupMember>, String)> {
        check_part("group id", group_id)?;
        check_part("member cursor", cursor)?;
        let group = self.group_record(group_id)?;
        let start = if cursor.is_empty() {
            Bound::Unbounded
        } else {
            Bound::Excluded(cursor)
        };
        let mut after = group
            .members
            .range::<str, _>((start, Bound::Unbounded))
            .map(|(_, record)| record.member.clone());
        let members: Vec<pb::GroupMember> = after.by_ref().take(limit as usize).collect();
        // A page that ends exactly at the last member has no cursor; limit 0 never has one.
        let more = after.next().is_some();
        let next = match (more, members.last()) {
            (true, Some(last)) => last.user_id.clone(),
            _ => String::new(),
        };
        Ok((members, next))
    }

    /// See [`timeline_store::TimelineStore::is_member`].
    pub(crate) fn is_member(&self, group_id: &str, user: &str) -> StoreResult<bool> {
        self.group_record(group_id)?;
        self.is_in(group_id, user)
    }

    /// See [`timeline_store::TimelineStore::member_ids`].
    pub(crate) fn member_ids(&self, group_id: &str) -> StoreResult<Vec<String>> {
        self.group_record(group_id)?;
        Ok(self.member_list(group_id))
    }
}
