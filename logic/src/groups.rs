//! Group requests: create, add, remove, join, leave, list members (SPEC §13.8).

use im_protocol::pb;
use im_protocol::{Body, ids};
use timeline_store::{NewGroup, TimelineStore};

use crate::errors::{error, store_error};
use crate::validate::check_page;
use crate::{Caller, Effects, Logic, Reply};

impl<S: TimelineStore> Logic<S> {
    /// Runs one group request; `dispatch` sends every group op here.
    pub(crate) async fn group_request(
        &self,
        caller: &Caller,
        body: Body,
        now: u64,
        effects: &mut Effects,
    ) -> Reply {
        match body {
            Body::GroupCreateReq(request) => {
                let mut members = Vec::with_capacity(request.members.len());
                for member in request.members {
                    ids::validate_id(&member, "member")
                        .map_err(|e| error(pb::ErrorCode::InvalidArgument, e.to_string()))?;
                    members.push(member);
                }
                let mut distinct: Vec<&String> = members.iter().collect();
                distinct.push(&caller.user);
                distinct.sort_unstable();
                distinct.dedup();
                let read_fanout = self.starts_in_read_fanout(distinct.len(), request.broadcast);
                let change = self
                    .store
                    .create_group(NewGroup {
                        name: request.name,
                        owner: caller.user.clone(),
                        members,
                        open: request.open,
                        client_request_id: request.client_request_id,
                        max_members: self.max_members(),
                        read_fanout,
                        broadcast: request.broadcast,
                        now_ms: now,
                    })
                    .await
                    .map_err(store_error)?;
                effects.deliveries = crate::deliveries(change.deliveries.clone());
                let group = if change.group.read_fanout {
                    self.after_membership_change(&change, true, now, effects)
                        .await?
                } else {
                    change.group
                };
                Ok(Some(Body::GroupCreateResp(pb::GroupCreateResp {
                    group: Some(group),
                })))
            }
            Body::GroupAddMembersReq(request) => {
                for member in &request.members {
                    ids::validate_id(member, "member")
                        .map_err(|e| error(pb::ErrorCode::InvalidArgument, e.to_string()))?;
                }
                self.only_the_owner_adds_to_a_channel(&request.group_id, &caller.user)
                    .await?;
                let change = self
                    .store
                    .add_members(
                        &request.group_id,
                        &caller.user,
                        &request.members,
                        self.max_members(),
                        now,
                    )
                    .await
                    .map_err(store_error)?;
                effects.deliveries = crate::deliveries(change.deliveries.clone());
                let group = self
                    .after_membership_change(&change, true, now, effects)
                    .await?;
                Ok(Some(Body::GroupAddMembersResp(pb::GroupAddMembersResp {
                    group: Some(group),
                    added: change.changed,
                })))
            }
            Body::GroupRemoveMembersReq(request) => {
                let change = self
                    .store
                    .remove_members(&request.group_id, &caller.user, &request.members, now)
                    .await
                    .map_err(store_error)?;
                effects.deliveries = crate::deliveries(change.deliveries.clone());
                let group = self
                    .after_membership_change(&change, false, now, effects)
                    .await?;
                Ok(Some(Body::GroupRemoveMembersResp(
                    pb::GroupRemoveMembersResp {
                        group: Some(group),
                        removed: change.changed,
                    },
                )))
            }
            Body::GroupJoinReq(request) => {
                let change = self
                    .store
                    .join_group(&request.group_id, &caller.user, self.max_members(), now)
                    .await
                    .map_err(store_error)?;
                effects.deliveries = crate::deliveries(change.deliveries.clone());
                let group = self
                    .after_membership_change(&change, true, now, effects)
                    .await?;
                Ok(Some(Body::GroupJoinResp(pb::GroupJoinResp {
                    group: Some(group),
                })))
            }
            Body::GroupLeaveReq(request) => {
                let change = self
                    .store
                    .leave_group(&request.group_id, &caller.user, now)
                    .await
                    .map_err(store_error)?;
                effects.deliveries = crate::deliveries(change.deliveries.clone());
                self.after_membership_change(&change, false, now, effects)
                    .await?;
                Ok(Some(Body::GroupLeaveResp(pb::GroupLeaveResp {
                    group_id: request.group_id,
                })))
            }
            Body::GroupMembersReq(request) => {
                let limit = check_page(
                    request.limit,
                    self.config.members_default,
                    self.config.members_max,
                    "members",
                )?;
                if !self
                    .store
                    .is_member(&request.group_id, &caller.user)
                    .await
                    .map_err(store_error)?
                {
                    return Err(error(
                        pb::ErrorCode::Forbidden,
                        "only members may list a group's members",
                    ));
                }
                let group = self
                    .store
                    .group(&request.group_id)
                    .await
                    .map_err(store_error)?;
                let (members, next_cursor) = self
                    .store
                    .group_members(&request.group_id, limit, &request.cursor)
                    .await
                    .map_err(store_error)?;
                Ok(Some(Body::GroupMembersResp(pb::GroupMembersResp {
                    group: Some(group),
                    members,
                    next_cursor,
                })))
            }
            other => Err(error(
                pb::ErrorCode::WrongDirection,
                format!("{:?} is not a group request", other.op()),
            )),
        }
    }

    /// In a broadcast channel only the owner adds members (SPEC §13.8); in other groups any
    /// member may, which the store checks with the add itself.
    async fn only_the_owner_adds_to_a_channel(
        &self,
        group_id: &str,
        caller: &str,
    ) -> Result<(), pb::Error> {
        if ids::validate_id(group_id, "group_id").is_err() {
            return Ok(()); // The add reports the malformed id.
        }
        match self.store.group(group_id).await {
            Ok(group) if group.broadcast && group.owner != caller => Err(error(
                pb::ErrorCode::Forbidden,
                format!("only the owner adds members to broadcast channel {group_id}"),
            )),
            // A missing group or a failed read: the add itself reports it.
            _ => Ok(()),
        }
    }
}
