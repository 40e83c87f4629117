//! Groups: one partition per group (statics for the group, a row per member), changed by
//! compare-and-set on its version. The change's side effects (conversation states, events to
//! the members' inboxes) are written with it, in the static map `pending`, and applied after
//! it; a node that dies in between leaves them for the next call on the group.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use futures::{StreamExt as _, TryStreamExt as _};
use im_protocol::ids;
use im_protocol::pb::{self, inbox_entry::Body};
use scylla::statement::batch::{Batch, BatchType};
use scylla::value::CqlValue;
use timeline_store::limits::{check_id, check_key, check_pair_key, check_part};
use timeline_store::{Delivery, GroupChange, NewGroup, StoreError, StoreResult};

use crate::entry::{GroupEffects, decode, encode};
use crate::{Inner, backend, big, lwt, unbig};

/// Attempts at one group change before giving up (each failed attempt means another change
/// of the same group won).
const CHANGE_ATTEMPTS: usize = 32;

/// A member row.
#[derive(Clone, Debug)]
struct MemberRow {
    member: pb::GroupMember,
    join_order: u64,
}

/// A group as stored.
#[derive(Clone, Debug)]
struct GroupRecord {
    info: pb::GroupInfo,
    members: BTreeMap<String, MemberRow>,
    version: i64,
    next_join_order: u64,
}

type GroupColumns = (
    Option<String>,
    Option<i32>,
    Option<i64>,
    Option<i64>,
    Option<String>,
    Option<String>,
    Option<bool>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<BTreeMap<i64, Vec<u8>>>,
    Option<bool>,
);

/// What a change writes besides the group's statics.
struct Change {
    info: pb::GroupInfo,
    next_join_order: u64,
    put: Vec<MemberRow>,
    drop: Vec<String>,
    effects: GroupEffects,
}

fn unchanged(info: pb::GroupInfo) -> GroupChange {
    GroupChange {
        group: info,
        changed: Vec::new(),
        deliveries: Vec::new(),
    }
}

fn event(
    info: &pb::GroupInfo,
    kind: pb::GroupEventKind,
    actor: &str,
    members: &[String],
    now_ms: u64,
) -> pb::GroupEvent {
    pb::GroupEvent {
        read_fanout: false,
        conversation_seq: 0,
        group_id: info.group_id.clone(),
        kind: kind as i32,
        actor_user: actor.to_owned(),
        members: members.to_vec(),
        group_name: info.name.clone(),
        server_time_ms: now_ms,
    }
}

fn member_row(user: &str, role: pb::GroupRole, joined_ms: u64, join_order: u64) -> MemberRow {
    MemberRow {
        member: pb::GroupMember {
            user_id: user.to_owned(),
            role: role as i32,
            joined_ms,
        },
        join_order,
    }
}

impl Inner {
    /// The group as stored, with its pending side effects (from a change whose node died)
    /// applied first. `None` if it does not exist.
    async fn load_group(&self, group_id: &str) -> StoreResult<Option<GroupRecord>> {
        let pager = self
            .session
            .execute_iter(self.st.group_get.clone(), (group_id,))
            .await
            .map_err(backend)?;
        let rows: Vec<GroupColumns> = pager
            .rows_stream::<GroupColumns>()
            .map_err(backend)?
            .try_collect()
            .await
            .map_err(backend)?;
        let Some(first) = rows.first() else {
            return Ok(None);
        };
        let Some(version) = first.9 else {
            return Ok(None);
        };
        let info = pb::GroupInfo {
            read_fanout: false,
            group_id: group_id.to_owned(),
            name: first.4.clone().unwrap_or_default(),
            owner: first.5.clone().unwrap_or_default(),
            member_count: u32::try_from(unbig(first.8)).unwrap_or(u32::MAX),
            open: first.6.unwrap_or(false),
            created_ms: unbig(first.7),
            broadcast: first.12.unwrap_or(false),
        };
        let next_join_order = unbig(first.10);
        let pending = first.11.clone().unwrap_or_default();
        let mut members = BTreeMap::new();
        for row in rows {
            if let Some(user) = row.0 {
                let member = pb::GroupMember {
                    user_id: user.clone(),
                    role: row.1.unwrap_or(pb::GroupRole::Member as i32),
                    joined_ms: unbig(row.2),
                };
                members.insert(
                    user,
                    MemberRow {
                        member,
                        join_order: unbig(row.3),
                    },
                );
            }
        }
        for (version, blob) in pending {
            let effects: GroupEffects = decode(&blob, "group change")?;
            self.apply_effects(group_id, version, effects).await?;
        }
        Ok(Some(GroupRecord {
            info,
            members,
            version,
            next_join_order,
        }))
    }

    /// The group, or `NotFound`.
    async fn group_record(&self, group_id: &str) -> StoreResult<GroupRecord> {
        check_key(group_id)?;
        self.load_group(group_id)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("group {group_id}")))
    }

    /// Applies a change's side effects (repeatable: states are set, not incremented; events go
    /// under key `g:<group>:<version>`); returns the events this call appended.
    async fn apply_effects(
        &self,
        group_id: &str,
        version: i64,
        effects: GroupEffects,
    ) -> StoreResult<Vec<Delivery>> {
        let conversation_id = ids::group_conversation_id(group_id);
        if !effects.joined.is_empty() {
            let (head, _) = self.conversation_summary(&conversation_id).await?;
            for user in &effects.joined {
                self.session
                    .execute_unpaged(
                        &self.st.state_join,
                        (
                            pb::ConversationKind::Group as i32,
                            group_id,
                            big(head),
                            0_i64,
                            big(effects.now_ms),
                            user,
                            &conversation_id,
                        ),
                    )
                    .await
                    .map_err(backend)?;
            }
        }
        for user in &effects.dropped {
            self.session
                .execute_unpaged(&self.st.state_drop, (user, &conversation_id))
                .await
                .map_err(backend)?;
        }
        let mut deliveries = Vec::new();
        if let Some(event) = effects.event {
            let key = format!("g:{group_id}:{version}");
            let appends: Vec<_> = effects
                .audience
                .iter()
                .map(|user| {
                    self.append_event(user, &key, Body::GroupEvent(event.clone()), effects.now_ms)
                })
                .collect();
            let appended: Vec<Option<Delivery>> = futures::stream::iter(appends)
                .buffered(crate::FANOUT_CONCURRENCY)
                .try_collect()
                .await?;
            deliveries.extend(appended.into_iter().flatten());
        }
        self.session
            .execute_unpaged(&self.st.group_pending_done, (version, group_id))
            .await
            .map_err(backend)?;
        Ok(deliveries)
    }

    /// Writes a change if the group is still at `expected` (`None`: does not exist yet), then
    /// applies its side effects. `None` when another change won.
    async fn commit_change(
        &self,
        group_id: &str,
        expected: Option<i64>,
        change: Change,
    ) -> StoreResult<Option<Vec<Delivery>>> {
        let version = expected.unwrap_or(0) + 1;
        let info = &change.info;
        let mut batch = Batch::new(BatchType::Unlogged);
        let mut values: Vec<Vec<Option<CqlValue>>> = Vec::new();
        batch.append_statement(self.st.group_cas.clone());
        values.push(vec![
            Some(CqlValue::Text(info.name.clone())),
            Some(CqlValue::Text(info.owner.clone())),
            Some(CqlValue::Boolean(info.open)),
            Some(CqlValue::BigInt(big(info.created_ms))),
            Some(CqlValue::BigInt(i64::from(info.member_count))),
            Some(CqlValue::BigInt(version)),
            Some(CqlValue::BigInt(big(change.next_join_order))),
            Some(CqlValue::BigInt(version)),
            Some(CqlValue::Blob(encode(&change.effects))),
            Some(CqlValue::Boolean(info.broadcast)),
            Some(CqlValue::Text(group_id.to_owned())),
            expected.map(CqlValue::BigInt),
        ]);
        for row in &change.put {
            batch.append_statement(self.st.group_put_member.clone());
            values.push(vec![
                Some(CqlValue::Text(group_id.to_owned())),
                Some(CqlValue::Text(row.member.user_id.clone())),
                Some(CqlValue::Int(row.member.role)),
                Some(CqlValue::BigInt(big(row.member.joined_ms))),
                Some(CqlValue::BigInt(big(row.join_order))),
            ]);
        }
        for user in &change.drop {
            batch.append_statement(self.st.group_drop_member.clone());
            values.push(vec![
                Some(CqlValue::Text(group_id.to_owned())),
                Some(CqlValue::Text(user.clone())),
            ]);
        }
        let outcome = lwt(self.session.batch(&batch, values).await.map_err(backend)?)?;
        if !outcome.applied {
            return Ok(None);
        }
        Ok(Some(
            self.apply_effects(group_id, version, change.effects)
                .await?,
        ))
    }

    /// See [`timeline_store::TimelineStore::create_group`]. Group ids come from a counter in
    /// `meta` (`grp-<n>`); a request id is claimed before the group is written, so a repeat
    /// finds the group, or finishes creating it.
    pub(crate) async fn create_group(&self, new: NewGroup) -> StoreResult<GroupChange> {
        check_part("client request id", &new.client_request_id)?;
        check_id(&new.owner, "owner user id")?;
        for member in &new.members {
            check_id(member, "member user id")?;
        }
        let mut resumed = None;
        if !new.client_request_id.is_empty() {
            let row = self
                .session
                .execute_unpaged(
                    &self.st.group_request_get,
                    (&new.owner, &new.client_request_id),
                )
                .await
                .map_err(backend)?
                .into_rows_result()
                .map_err(backend)?
                .maybe_first_row::<(Option<String>,)>()
                .map_err(backend)?;
            if let Some((Some(group_id),)) = row {
                if let Some(group) = self.load_group(&group_id).await? {
                    return Ok(unchanged(group.info));
                }
                resumed = Some(group_id);
            }
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
        let group_id = match resumed {
            Some(group_id) => group_id,
            None => {
                let group_id = format!("grp-{}", self.reserve("group", 1).await?);
                if !new.client_request_id.is_empty() {
                    let claim = lwt(self
                        .session
                        .execute_unpaged(
                            &self.st.group_request_claim,
                            (&new.owner, &new.client_request_id, &group_id),
                        )
                        .await
                        .map_err(backend)?)?;
                    if !claim.applied {
                        // The same request ran meanwhile: answer with its group.
                        let Some(CqlValue::Text(theirs)) = claim.value("group_id") else {
                            return Err(StoreError::Backend(
                                "a group request names no group".into(),
                            ));
                        };
                        return match self.load_group(theirs).await? {
                            Some(group) => Ok(unchanged(group.info)),
                            None => Err(StoreError::Unavailable(
                                "the same group is being created by another request".into(),
                            )),
                        };
                    }
                }
                group_id
            }
        };
        let info = pb::GroupInfo {
            read_fanout: false,
            group_id: group_id.clone(),
            name: new.name.clone(),
            owner: new.owner.clone(),
            member_count: members.len() as u32,
            open: new.open,
            created_ms: new.now_ms,
            broadcast: new.broadcast,
        };
        let put = members
            .iter()
            .enumerate()
            .map(|(order, user)| {
                let role = if order == 0 {
                    pb::GroupRole::Owner
                } else {
                    pb::GroupRole::Member
                };
                member_row(user, role, new.now_ms, order as u64)
            })
            .collect();
        let change = Change {
            next_join_order: members.len() as u64,
            put,
            drop: Vec::new(),
            effects: GroupEffects {
                event: Some(event(
                    &info,
                    pb::GroupEventKind::Created,
                    &new.owner,
                    &members,
                    new.now_ms,
                )),
                audience: members.clone(),
                joined: members.clone(),
                dropped: Vec::new(),
                now_ms: new.now_ms,
            },
            info: info.clone(),
        };
        match self.commit_change(&group_id, None, change).await? {
            Some(deliveries) => Ok(GroupChange {
                group: info,
                changed: members,
                deliveries,
            }),
            None => Ok(unchanged(self.group_record(&group_id).await?.info)),
        }
    }

    /// Runs `decide` on the current group until its change is written (or it decides there is
    /// nothing to write).
    async fn change_group(
        &self,
        group_id: &str,
        decide: impl Fn(&GroupRecord) -> StoreResult<Result<(Change, Vec<String>), pb::GroupInfo>>,
    ) -> StoreResult<GroupChange> {
        for _ in 0..CHANGE_ATTEMPTS {
            let group = self.group_record(group_id).await?;
            let (change, changed) = match decide(&group)? {
                Ok(change) => change,
                Err(info) => return Ok(unchanged(info)),
            };
            let info = change.info.clone();
            if let Some(deliveries) = self
                .commit_change(group_id, Some(group.version), change)
                .await?
            {
                return Ok(GroupChange {
                    group: info,
                    changed,
                    deliveries,
                });
            }
        }
        Err(StoreError::Unavailable(format!(
            "too much contention on group {group_id}"
        )))
    }

    /// See [`timeline_store::TimelineStore::add_members`].
    pub(crate) async fn add_members(
        &self,
        group_id: &str,
        actor: &str,
        members: &[String],
        max_members: u32,
        now_ms: u64,
    ) -> StoreResult<GroupChange> {
        self.change_group(group_id, |group| {
            check_pair_key(group_id, actor)?;
            if !group.members.contains_key(actor) {
                return Err(StoreError::Forbidden(format!(
                    "{actor} is not a member of group {group_id}"
                )));
            }
            let candidates: BTreeSet<&str> = members.iter().map(String::as_str).collect();
            let mut added = Vec::new();
            for user in candidates {
                check_id(user, "member user id")?;
                check_pair_key(group_id, user)?;
                if !group.members.contains_key(user) {
                    added.push(user.to_owned());
                }
            }
            if added.is_empty() {
                return Ok(Err(group.info.clone()));
            }
            if group.info.member_count as usize + added.len() > max_members as usize {
                return Err(StoreError::GroupFull(max_members));
            }
            let mut info = group.info.clone();
            info.member_count += added.len() as u32;
            let put: Vec<MemberRow> = added
                .iter()
                .enumerate()
                .map(|(i, user)| {
                    member_row(
                        user,
                        pb::GroupRole::Member,
                        now_ms,
                        group.next_join_order + i as u64,
                    )
                })
                .collect();
            let audience: Vec<String> = group
                .members
                .keys()
                .cloned()
                .chain(added.iter().cloned())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            let effects = GroupEffects {
                event: Some(event(
                    &info,
                    pb::GroupEventKind::MembersAdded,
                    actor,
                    &added,
                    now_ms,
                )),
                audience,
                joined: added.clone(),
                dropped: Vec::new(),
                now_ms,
            };
            Ok(Ok((
                Change {
                    next_join_order: group.next_join_order + added.len() as u64,
                    info,
                    put,
                    drop: Vec::new(),
                    effects,
                },
                added,
            )))
        })
        .await
    }

    /// See [`timeline_store::TimelineStore::remove_members`].
    pub(crate) async fn remove_members(
        &self,
        group_id: &str,
        actor: &str,
        members: &[String],
        now_ms: u64,
    ) -> StoreResult<GroupChange> {
        self.change_group(group_id, |group| {
            if group.info.owner != actor {
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
                check_pair_key(group_id, user)?;
                if group.members.contains_key(user) {
                    removed.push(user.to_owned());
                }
            }
            if removed.is_empty() {
                return Ok(Err(group.info.clone()));
            }
            let mut info = group.info.clone();
            info.member_count = info.member_count.saturating_sub(removed.len() as u32);
            let audience: Vec<String> = group.members.keys().cloned().collect();
            let effects = GroupEffects {
                event: Some(event(
                    &info,
                    pb::GroupEventKind::MembersRemoved,
                    actor,
                    &removed,
                    now_ms,
                )),
                audience,
                joined: Vec::new(),
                dropped: removed.clone(),
                now_ms,
            };
            Ok(Ok((
                Change {
                    next_join_order: group.next_join_order,
                    info,
                    put: Vec::new(),
                    drop: removed.clone(),
                    effects,
                },
                removed,
            )))
        })
        .await
    }

    /// See [`timeline_store::TimelineStore::join_group`].
    pub(crate) async fn join_group(
        &self,
        group_id: &str,
        user: &str,
        max_members: u32,
        now_ms: u64,
    ) -> StoreResult<GroupChange> {
        check_id(user, "user id")?;
        self.change_group(group_id, |group| {
            check_pair_key(group_id, user)?;
            if group.members.contains_key(user) {
                return Ok(Err(group.info.clone()));
            }
            if !group.info.open {
                return Err(StoreError::NotOpen);
            }
            if group.info.member_count as usize + 1 > max_members as usize {
                return Err(StoreError::GroupFull(max_members));
            }
            let mut info = group.info.clone();
            info.member_count += 1;
            let joined = vec![user.to_owned()];
            let audience: Vec<String> = group
                .members
                .keys()
                .cloned()
                .chain(joined.iter().cloned())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            let effects = GroupEffects {
                event: Some(event(
                    &info,
                    pb::GroupEventKind::MemberJoined,
                    user,
                    &joined,
                    now_ms,
                )),
                audience,
                joined: joined.clone(),
                dropped: Vec::new(),
                now_ms,
            };
            Ok(Ok((
                Change {
                    next_join_order: group.next_join_order + 1,
                    info,
                    put: vec![member_row(
                        user,
                        pb::GroupRole::Member,
                        now_ms,
                        group.next_join_order,
                    )],
                    drop: Vec::new(),
                    effects,
                },
                joined,
            )))
        })
        .await
    }

    /// See [`timeline_store::TimelineStore::leave_group`].
    pub(crate) async fn leave_group(
        &self,
        group_id: &str,
        user: &str,
        now_ms: u64,
    ) -> StoreResult<GroupChange> {
        self.change_group(group_id, |group| {
            check_pair_key(group_id, user)?;
            if !group.members.contains_key(user) {
                return Err(StoreError::Forbidden(format!(
                    "{user} is not a member of group {group_id}"
                )));
            }
            let mut info = group.info.clone();
            info.member_count = info.member_count.saturating_sub(1);
            let mut put = Vec::new();
            if info.owner == user {
                // The longest-standing member: the lowest join order.
                let successor = group
                    .members
                    .values()
                    .filter(|row| row.member.user_id != user)
                    .min_by_key(|row| row.join_order);
                info.owner = match successor {
                    Some(successor) => {
                        let mut row = successor.clone();
                        row.member.role = pb::GroupRole::Owner as i32;
                        put.push(row);
                        successor.member.user_id.clone()
                    }
                    None => String::new(),
                };
            }
            let left = vec![user.to_owned()];
            let effects = GroupEffects {
                event: Some(event(
                    &info,
                    pb::GroupEventKind::MemberLeft,
                    user,
                    &left,
                    now_ms,
                )),
                audience: group.members.keys().cloned().collect(),
                joined: Vec::new(),
                dropped: left.clone(),
                now_ms,
            };
            Ok(Ok((
                Change {
                    next_join_order: group.next_join_order,
                    info,
                    put,
                    drop: left.clone(),
                    effects,
                },
                left,
            )))
        })
        .await
    }

    /// See [`timeline_store::TimelineStore::group`].
    pub(crate) async fn group(&self, group_id: &str) -> StoreResult<pb::GroupInfo> {
        Ok(self.group_record(group_id).await?.info)
    }

    /// See [`timeline_store::TimelineStore::group_members`].
    pub(crate) async fn group_members(
        &self,
        group_id: &str,
        limit: u32,
        cursor: &str,
    ) -> StoreResult<(Vec<pb::GroupMember>, String)> {
        check_part("group id", group_id)?;
        check_part("member cursor", cursor)?;
        let group = self.group_record(group_id).await?;
        let start = if cursor.is_empty() {
            Bound::Unbounded
        } else {
            Bound::Excluded(cursor)
        };
        let mut after = group
            .members
            .range::<str, _>((start, Bound::Unbounded))
            .map(|(_, row)| row.member.clone());
        let members: Vec<pb::GroupMember> = after.by_ref().take(limit as usize).collect();
        let more = after.next().is_some();
        let next = match (more, members.last()) {
            (true, Some(last)) => last.user_id.clone(),
            _ => String::new(),
        };
        Ok((members, next))
    }

    /// See [`timeline_store::TimelineStore::is_member`].
    pub(crate) async fn is_member(&self, group_id: &str, user: &str) -> StoreResult<bool> {
        let group = self.group_record(group_id).await?;
        check_pair_key(group_id, user)?;
        Ok(group.members.contains_key(user))
    }

    /// See [`timeline_store::TimelineStore::member_ids`].
    pub(crate) async fn member_ids(&self, group_id: &str) -> StoreResult<Vec<String>> {
        Ok(self
            .group_record(group_id)
            .await?
            .members
            .into_keys()
            .collect())
    }
}
