//! Groups: creation, membership changes and the events that announce them.

use std::collections::BTreeSet;

use im_protocol::ids;
use im_protocol::pb::{self, inbox_entry::Body};
use prost::Message as _;
use timeline_store::{GroupChange, NewGroup, StoreError, StoreResult};

use super::primitives::prefix_bounds;
use super::{WriteCtx, check_id, corrupt};
use crate::keys;
use crate::records::{GroupRecord, MemberRecord, StateRecord};

impl WriteCtx<'_> {
    pub(crate) fn group_record(&mut self, group_id: &str) -> StoreResult<GroupRecord> {
        let ks = self.ks;
        self.get_decoded::<GroupRecord>(&ks.groups, group_id.as_bytes(), "group")?
            .filter(|record| record.info.is_some())
            .ok_or_else(|| StoreError::NotFound(format!("group {group_id}")))
    }

    fn put_group(&mut self, record: &GroupRecord) {
        let ks = self.ks;
        let group_id = record
            .info
            .as_ref()
            .map(|info| info.group_id.clone())
            .unwrap_or_default();
        self.caches.groups.remove(&group_id);
        self.put(&ks.groups, group_id.into_bytes(), record.encode_to_vec());
    }

    fn member(&mut self, group_id: &str, user: &str) -> StoreResult<Option<MemberRecord>> {
        let ks = self.ks;
        self.get_decoded(&ks.members, &keys::pair_key(group_id, user), "member")
    }

    /// Every member record of a group, ordered by user id.
    fn members(&mut self, group_id: &str) -> StoreResult<Vec<MemberRecord>> {
        let ks = self.ks;
        let items: Vec<_> = self
            .merged(&ks.members, prefix_bounds(keys::prefix(group_id)), false)
            .collect();
        let mut members = Vec::with_capacity(items.len());
        for item in items {
            let (_, value) = item.map_err(|e| self.io(e))?;
            members.push(
                MemberRecord::decode(&*value).map_err(|e| self.fail_with(corrupt("member", e)))?,
            );
        }
        Ok(members)
    }

    /// A group's fan-out mode and members as a message committed now sees them (`None`: no
    /// such group).
    pub(crate) fn group_audience(
        &mut self,
        group_id: &str,
    ) -> StoreResult<Option<super::GroupAudience>> {
        if let Some(audience) = self.caches.groups.get(group_id) {
            return Ok(Some(audience.clone()));
        }
        let Ok(record) = self.group_record(group_id) else {
            return Ok(None);
        };
        let read_fanout = record.info.is_some_and(|info| info.read_fanout);
        let members = if read_fanout {
            Vec::new()
        } else {
            self.member_ids(group_id)?
        };
        let audience = std::sync::Arc::new((read_fanout, members));
        self.caches
            .groups
            .insert(group_id.to_owned(), audience.clone());
        Ok(Some(audience))
    }

    pub(crate) fn member_ids(&mut self, group_id: &str) -> StoreResult<Vec<String>> {
        Ok(self
            .members(group_id)?
            .into_iter()
            .filter_map(|record| record.member.map(|m| m.user_id))
            .collect())
    }

    fn put_member(&mut self, group_id: &str, record: &MemberRecord) {
        let ks = self.ks;
        let user = record
            .member
            .as_ref()
            .map(|m| m.user_id.as_str())
            .unwrap_or_default();
        self.put(
            &ks.members,
            keys::pair_key(group_id, user),
            record.encode_to_vec(),
        );
    }

    /// Makes `user` a member (the caller checked they are not one and that there is room):
    /// next join order, member record, conversation state, member count.
    fn admit_member(
        &mut self,
        record: &mut GroupRecord,
        group_id: &str,
        user: &str,
        now_ms: u64,
    ) -> StoreResult<()> {
        let order = record.next_join_order;
        record.next_join_order += 1;
        self.put_member(
            group_id,
            &MemberRecord {
                member: Some(pb::GroupMember {
                    user_id: user.to_owned(),
                    role: pb::GroupRole::Member as i32,
                    joined_ms: now_ms,
                }),
                join_order: order,
            },
        );
        self.join_state(group_id, user, now_ms)?;
        let info = record.info.get_or_insert_with(Default::default);
        info.member_count += 1;
        let read_fanout = info.read_fanout;
        self.index_read_group(user, group_id, read_fanout);
        Ok(())
    }

    /// Keeps `user`'s list of read-fan-out groups in step with a membership or mode change.
    fn index_read_group(&mut self, user: &str, group_id: &str, listed: bool) {
        let ks = self.ks;
        let key = keys::pair_key(user, group_id);
        if listed {
            self.put(&ks.read_groups, key, Vec::new());
        } else {
            self.delete(&ks.read_groups, key);
        }
    }

    /// Who hears of a membership change: every member (and `also`, the users who left) in
    /// write fan-out, only the changed users in read fan-out (SPEC §13.12), where listing the
    /// members would make every change cost as much as the group is large.
    fn audience(
        &mut self,
        info: &pb::GroupInfo,
        also: &[String],
        changed: &[String],
    ) -> StoreResult<Vec<String>> {
        if info.read_fanout {
            return Ok(changed.to_vec());
        }
        let mut everyone: BTreeSet<String> = self.member_ids(&info.group_id)?.into_iter().collect();
        everyone.extend(also.iter().cloned());
        Ok(everyone.into_iter().collect())
    }

    pub(crate) fn set_group_fanout(
        &mut self,
        group_id: &str,
        read_fanout: bool,
        now_ms: u64,
    ) -> StoreResult<GroupChange> {
        let mut record = self.group_record(group_id)?;
        if record
            .info
            .as_ref()
            .is_some_and(|i| i.read_fanout == read_fanout)
        {
            return Ok(Self::unchanged(record));
        }
        record.info.get_or_insert_with(Default::default).read_fanout = read_fanout;
        let info = record.info.clone().unwrap_or_default();
        self.put_group(&record);
        let everyone = self.member_ids(group_id)?;
        for user in &everyone {
            self.index_read_group(user, group_id, read_fanout);
        }
        self.announce(
            &everyone,
            group_id,
            pb::GroupEventKind::FanoutChanged,
            "",
            everyone.clone(),
            info,
            now_ms,
        )
    }

    /// Gives a new member their state of the group conversation: read up to the current last
    /// seq, since the messages before they joined never reached their inbox.
    fn join_state(&mut self, group_id: &str, user: &str, now_ms: u64) -> StoreResult<()> {
        let conversation_id = ids::group_conversation_id(group_id);
        let head = self.conversation_head(&conversation_id)?;
        let previous = self.state(user, &conversation_id)?;
        let mut state = previous.unwrap_or_else(|| StateRecord {
            conversation_id: conversation_id.clone(),
            kind: pb::ConversationKind::Group as i32,
            peer: group_id.to_owned(),
            ..StateRecord::default()
        });
        state.last_seq = head;
        state.read_seq = head;
        state.unread_count = 0;
        state.updated_ms = state.updated_ms.max(now_ms);
        self.put_state(user, &state);
        Ok(())
    }

    /// Writes the `GroupEvent` of a membership change to every inbox of `audience` and returns
    /// the change: the event names the changed users and the group as it is now.
    #[allow(clippy::too_many_arguments)]
    fn announce(
        &mut self,
        audience: &[String],
        group_id: &str,
        kind: pb::GroupEventKind,
        actor: &str,
        changed: Vec<String>,
        group: pb::GroupInfo,
        now_ms: u64,
    ) -> StoreResult<GroupChange> {
        let event = pb::GroupEvent {
            group_id: group_id.to_owned(),
            kind: kind as i32,
            actor_user: actor.to_owned(),
            members: changed.clone(),
            group_name: group.name.clone(),
            server_time_ms: now_ms,
            read_fanout: group.read_fanout,
            conversation_seq: self.conversation_head(&ids::group_conversation_id(group_id))?,
        };
        let mut deliveries = Vec::with_capacity(audience.len());
        for user in audience {
            deliveries.push(self.append_event(user, Body::GroupEvent(event.clone()), now_ms)?);
        }
        Ok(GroupChange {
            group,
            changed,
            deliveries,
        })
    }

    fn unchanged(record: GroupRecord) -> GroupChange {
        GroupChange {
            group: record.info.unwrap_or_default(),
            changed: Vec::new(),
            deliveries: Vec::new(),
        }
    }

    pub(crate) fn create_group(&mut self, new: NewGroup) -> StoreResult<GroupChange> {
        keys::check_part("client request id", &new.client_request_id)?;
        check_id(&new.owner, "owner user id")?;
        for member in &new.members {
            check_id(member, "member user id")?;
        }
        let ks = self.ks;
        let request_key = (!new.client_request_id.is_empty())
            .then(|| keys::pair_key(&new.owner, &new.client_request_id));
        if let Some(key) = &request_key
            && let Some(group_id) = self.get(&ks.group_requests, key)?
        {
            let group_id = String::from_utf8(group_id.to_vec())
                .map_err(|e| self.fail_with(corrupt("group request", e)))?;
            let record = self.group_record(&group_id)?;
            return Ok(Self::unchanged(record));
        }
        let others: BTreeSet<&str> = new
            .members
            .iter()
            .map(String::as_str)
            .filter(|m| *m != new.owner)
            .collect();
        let mut members = Vec::with_capacity(others.len() + 1);
        members.push(new.owner.clone());
        members.extend(others.into_iter().map(str::to_owned));
        if members.len() > new.max_members as usize {
            return Err(StoreError::GroupFull(new.max_members));
        }

        let group_id = format!("grp-{}", self.next_group_number()?);
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
        for (order, user) in members.iter().enumerate() {
            let role = if order == 0 {
                pb::GroupRole::Owner
            } else {
                pb::GroupRole::Member
            };
            self.put_member(
                &group_id,
                &MemberRecord {
                    member: Some(pb::GroupMember {
                        user_id: user.clone(),
                        role: role as i32,
                        joined_ms: new.now_ms,
                    }),
                    join_order: order as u64,
                },
            );
            self.join_state(&group_id, user, new.now_ms)?;
            self.index_read_group(user, &group_id, new.read_fanout);
        }
        let record = GroupRecord {
            info: Some(info.clone()),
            next_join_order: members.len() as u64,
        };
        self.put_group(&record);
        if let Some(key) = request_key {
            self.put(&ks.group_requests, key, group_id.clone().into_bytes());
        }
        let audience = members.clone();
        self.announce(
            &audience,
            &group_id,
            pb::GroupEventKind::Created,
            &new.owner,
            members,
            info,
            new.now_ms,
        )
    }

    pub(crate) fn add_members(
        &mut self,
        group_id: &str,
        actor: &str,
        members: &[String],
        max_members: u32,
        now_ms: u64,
    ) -> StoreResult<GroupChange> {
        let mut record = self.group_record(group_id)?;
        if self.member(group_id, actor)?.is_none() {
            return Err(StoreError::Forbidden(format!(
                "{actor} is not a member of group {group_id}"
            )));
        }
        let candidates: BTreeSet<&str> = members.iter().map(String::as_str).collect();
        let mut added = Vec::new();
        for user in candidates {
            check_id(user, "member user id")?;
            if self.member(group_id, user)?.is_none() {
                added.push(user.to_owned());
            }
        }
        if added.is_empty() {
            return Ok(Self::unchanged(record));
        }
        let count = record.info.as_ref().map_or(0, |i| i.member_count) as usize;
        if count + added.len() > max_members as usize {
            return Err(StoreError::GroupFull(max_members));
        }
        for user in &added {
            self.admit_member(&mut record, group_id, user, now_ms)?;
        }
        let info = record.info.clone().unwrap_or_default();
        self.put_group(&record);
        let everyone = self.audience(&info, &[], &added)?;
        self.announce(
            &everyone,
            group_id,
            pb::GroupEventKind::MembersAdded,
            actor,
            added,
            info,
            now_ms,
        )
    }

    pub(crate) fn remove_members(
        &mut self,
        group_id: &str,
        actor: &str,
        members: &[String],
        now_ms: u64,
    ) -> StoreResult<GroupChange> {
        let mut record = self.group_record(group_id)?;
        let owner = record
            .info
            .as_ref()
            .map(|i| i.owner.clone())
            .unwrap_or_default();
        if owner != actor {
            return Err(StoreError::Forbidden(format!(
                "only the owner may remove members of group {group_id}"
            )));
        }
        if members.iter().any(|m| m == actor) {
            return Err(StoreError::Forbidden(
                "the owner cannot remove themself; leave the group instead".to_owned(),
            ));
        }
        let candidates: BTreeSet<&str> = members.iter().map(String::as_str).collect();
        let mut removed = Vec::new();
        for user in candidates {
            check_id(user, "member user id")?;
            if self.member(group_id, user)?.is_some() {
                removed.push(user.to_owned());
            }
        }
        if removed.is_empty() {
            return Ok(Self::unchanged(record));
        }
        let ks = self.ks;
        for user in &removed {
            self.delete(&ks.members, keys::pair_key(group_id, user));
            self.drop_state(user, &ids::group_conversation_id(group_id));
            self.index_read_group(user, group_id, false);
        }
        let info = record.info.get_or_insert_with(Default::default);
        info.member_count = info.member_count.saturating_sub(removed.len() as u32);
        let info = info.clone();
        self.put_group(&record);
        let audience = self.audience(&info, &removed, &removed)?;
        self.announce(
            &audience,
            group_id,
            pb::GroupEventKind::MembersRemoved,
            actor,
            removed,
            info,
            now_ms,
        )
    }

    pub(crate) fn join_group(
        &mut self,
        group_id: &str,
        user: &str,
        max_members: u32,
        now_ms: u64,
    ) -> StoreResult<GroupChange> {
        check_id(user, "user id")?;
        let mut record = self.group_record(group_id)?;
        if self.member(group_id, user)?.is_some() {
            return Ok(Self::unchanged(record));
        }
        let info = record.info.clone().unwrap_or_default();
        if !info.open {
            return Err(StoreError::NotOpen);
        }
        if info.member_count as usize + 1 > max_members as usize {
            return Err(StoreError::GroupFull(max_members));
        }
        self.admit_member(&mut record, group_id, user, now_ms)?;
        let info = record.info.clone().unwrap_or_default();
        self.put_group(&record);
        let everyone = self.audience(&info, &[], &[user.to_owned()])?;
        self.announce(
            &everyone,
            group_id,
            pb::GroupEventKind::MemberJoined,
            user,
            vec![user.to_owned()],
            info,
            now_ms,
        )
    }

    pub(crate) fn leave_group(
        &mut self,
        group_id: &str,
        user: &str,
        now_ms: u64,
    ) -> StoreResult<GroupChange> {
        let mut record = self.group_record(group_id)?;
        if self.member(group_id, user)?.is_none() {
            return Err(StoreError::Forbidden(format!(
                "{user} is not a member of group {group_id}"
            )));
        }
        let ks = self.ks;
        self.delete(&ks.members, keys::pair_key(group_id, user));
        self.drop_state(user, &ids::group_conversation_id(group_id));
        self.index_read_group(user, group_id, false);
        let info = record.info.get_or_insert_with(Default::default);
        info.member_count = info.member_count.saturating_sub(1);
        if info.owner == user {
            // The longest-standing member: the lowest join order (user id breaks no tie, as
            // join orders are unique). Only an owner leaving reads every member.
            let successor = self
                .members(group_id)?
                .into_iter()
                .min_by_key(|r| r.join_order);
            let info = record.info.get_or_insert_with(Default::default);
            info.owner = match successor {
                Some(mut successor) => {
                    let member = successor.member.get_or_insert_with(Default::default);
                    member.role = pb::GroupRole::Owner as i32;
                    let owner = member.user_id.clone();
                    self.put_member(group_id, &successor);
                    owner
                }
                None => String::new(),
            };
        }
        let info = record.info.clone().unwrap_or_default();
        self.put_group(&record);
        let audience = self.audience(&info, &[user.to_owned()], &[user.to_owned()])?;
        self.announce(
            &audience,
            group_id,
            pb::GroupEventKind::MemberLeft,
            user,
            vec![user.to_owned()],
            info,
            now_ms,
        )
    }
}
