//! The protocol seam: the client core's own types to protobuf bodies and back. Everything the
//! app sees passes through here, so no `pb` type reaches the public API.

use im_protocol::{Body, pb};

use crate::store::{LocalConversation, LocalMessage, SendState};
use crate::types::{
    ConversationPage, GroupEvent, GroupEventKind, GroupInfo, GroupMember, GroupMembersChange,
    GroupMembersPage, GroupRole, HistoryDirection, HistoryPage, Platform, PushPreview, PushService,
    ReadMarker, Recall, Request, RequestError, Response, ServerError, TypingEvent,
};

/// A server message in the app's shape (stored by the server, so `Sent`).
pub(super) fn received_message(message: &pb::Message) -> LocalMessage {
    LocalMessage {
        local_id: 0,
        conversation_id: message.conversation_id.clone(),
        sender: message.sender_user.clone(),
        client_msg_id: message.client_msg_id.clone(),
        seq: message.conversation_seq,
        server_msg_id: message.server_msg_id,
        time_ms: message.server_time_ms,
        content_type: message.content_type,
        content: message.content.clone(),
        state: SendState::Sent,
        recalled: message.recalled,
    }
}

pub(super) fn platform(platform: Platform) -> pb::Platform {
    match platform {
        Platform::Ios => pb::Platform::Ios,
        Platform::Android => pb::Platform::Android,
        Platform::Web => pb::Platform::Web,
        Platform::Desktop => pb::Platform::Desktop,
        Platform::Server => pb::Platform::Server,
    }
}

pub(super) fn server_error(error: pb::Error) -> ServerError {
    ServerError {
        // Codes are non-negative in every revision; a negative one is as unknown as any other.
        code: u32::try_from(error.code).unwrap_or(0),
        message: error.message,
        retryable: error.retryable,
        retry_after_ms: error.retry_after_ms,
    }
}

pub(super) fn typing_event(event: pb::TypingEvent) -> TypingEvent {
    TypingEvent {
        conversation_id: event.conversation_id,
        user_id: event.user_id,
        typing: event.typing,
    }
}

pub(super) fn group_event(event: pb::GroupEvent) -> GroupEvent {
    let kind = match pb::GroupEventKind::try_from(event.kind) {
        Ok(pb::GroupEventKind::Created) => GroupEventKind::Created,
        Ok(pb::GroupEventKind::MembersAdded) => GroupEventKind::MembersAdded,
        Ok(pb::GroupEventKind::MembersRemoved) => GroupEventKind::MembersRemoved,
        Ok(pb::GroupEventKind::MemberJoined) => GroupEventKind::MemberJoined,
        Ok(pb::GroupEventKind::MemberLeft) => GroupEventKind::MemberLeft,
        // FANOUT_CHANGED is the core's business (it follows the group by seq); never shown.
        Ok(pb::GroupEventKind::Unspecified | pb::GroupEventKind::FanoutChanged) | Err(_) => {
            GroupEventKind::Unknown(event.kind)
        }
    };
    GroupEvent {
        group_id: event.group_id,
        kind,
        actor: event.actor_user,
        members: event.members,
        group_name: event.group_name,
        time_ms: event.server_time_ms,
    }
}

/// The request's body on the wire.
pub(super) fn request_body(request: Request) -> Body {
    match request {
        Request::History {
            conversation_id,
            anchor_seq,
            direction,
            limit,
        } => pb::HistoryReq {
            conversation_id,
            anchor_seq,
            direction: match direction {
                HistoryDirection::Older => pb::HistoryDirection::Older,
                HistoryDirection::Newer => pb::HistoryDirection::Newer,
            } as i32,
            limit,
        }
        .into(),
        Request::Conversations { limit, cursor } => pb::ConversationsReq { limit, cursor }.into(),
        Request::MarkRead {
            conversation_id,
            seq,
        } => pb::ReadMarkerReq {
            conversation_id,
            read_seq: seq,
        }
        .into(),
        Request::Recall {
            conversation_id,
            seq,
        } => pb::RecallReq {
            conversation_id,
            conversation_seq: seq,
        }
        .into(),
        Request::DeleteForMe {
            conversation_id,
            seqs,
        } => pb::DeleteReq {
            conversation_id,
            conversation_seqs: seqs,
        }
        .into(),
        Request::CreateGroup {
            name,
            members,
            open,
            client_request_id,
            broadcast,
        } => pb::GroupCreateReq {
            name,
            members,
            open,
            client_request_id,
            broadcast,
        }
        .into(),
        Request::AddGroupMembers { group_id, members } => {
            pb::GroupAddMembersReq { group_id, members }.into()
        }
        Request::RemoveGroupMembers { group_id, members } => {
            pb::GroupRemoveMembersReq { group_id, members }.into()
        }
        Request::JoinGroup { group_id } => pb::GroupJoinReq { group_id }.into(),
        Request::LeaveGroup { group_id } => pb::GroupLeaveReq { group_id }.into(),
        Request::RegisterPushToken {
            service,
            token,
            preview,
        } => pb::PushTokenReq {
            service: match service {
                PushService::Apns => pb::PushService::Apns,
                PushService::Fcm => pb::PushService::Fcm,
                PushService::Webhook => pb::PushService::Webhook,
            } as i32,
            token,
            preview: match preview {
                PushPreview::None => pb::PushPreview::None,
                PushPreview::Sender => pb::PushPreview::Sender,
                PushPreview::Full => pb::PushPreview::Full,
            } as i32,
        }
        .into(),
        Request::UnregisterPushToken => pb::PushTokenReq::default().into(),
        Request::Mute {
            conversation_id,
            muted,
        } => pb::MuteReq {
            conversation_id,
            muted,
        }
        .into(),
        Request::GroupMembers {
            group_id,
            limit,
            cursor,
        } => pb::GroupMembersReq {
            group_id,
            limit,
            cursor,
        }
        .into(),
    }
}

fn group_info(info: Option<pb::GroupInfo>) -> Result<GroupInfo, RequestError> {
    // Every group response carries the group (SPEC §13.8); one without it is a broken answer.
    let info = info.ok_or_else(|| {
        RequestError::UnexpectedResponse("a group response without its group".into())
    })?;
    Ok(GroupInfo {
        group_id: info.group_id,
        name: info.name,
        owner: info.owner,
        member_count: info.member_count,
        open: info.open,
        created_ms: info.created_ms,
        broadcast: info.broadcast,
        read_fanout: info.read_fanout,
    })
}

fn conversation(summary: pb::ConversationSummary) -> LocalConversation {
    LocalConversation {
        last_message: summary.last_message.as_ref().map(received_message),
        conversation_id: summary.conversation_id,
        peer: summary.peer,
        title: summary.title,
        last_seq: summary.last_seq,
        read_seq: summary.read_seq,
        unread_count: summary.unread_count,
        peer_read_seq: summary.peer_read_seq,
        updated_ms: summary.updated_ms,
    }
}

/// A response body in the app's shape.
pub(super) fn response(body: Body) -> Result<Response, RequestError> {
    Ok(match body {
        Body::Error(error) => return Err(RequestError::Server(server_error(error))),
        Body::HistoryResp(page) => Response::History(HistoryPage {
            messages: page.messages.iter().map(received_message).collect(),
            conversation_id: page.conversation_id,
            has_more: page.has_more,
            last_seq: page.last_seq,
        }),
        Body::ConversationsResp(page) => Response::Conversations(ConversationPage {
            conversations: page.conversations.into_iter().map(conversation).collect(),
            next_cursor: page.next_cursor,
        }),
        Body::ReadMarkerResp(marker) => Response::ReadMarker(ReadMarker {
            conversation_id: marker.conversation_id,
            read_seq: marker.read_seq,
            unread_count: marker.unread_count,
        }),
        Body::RecallResp(recall) => {
            let event = recall.event.ok_or_else(|| {
                RequestError::UnexpectedResponse("a recall response without its event".into())
            })?;
            Response::Recalled(Recall {
                conversation_id: event.conversation_id,
                seq: event.conversation_seq,
                server_msg_id: event.server_msg_id,
                by_user: event.by_user,
                time_ms: event.server_time_ms,
            })
        }
        Body::DeleteResp(deleted) => Response::Deleted(deleted.deleted),
        Body::GroupCreateResp(created) => Response::GroupCreated(group_info(created.group)?),
        Body::GroupAddMembersResp(added) => Response::GroupMembersAdded(GroupMembersChange {
            group: group_info(added.group)?,
            members: added.added,
        }),
        Body::GroupRemoveMembersResp(removed) => {
            Response::GroupMembersRemoved(GroupMembersChange {
                group: group_info(removed.group)?,
                members: removed.removed,
            })
        }
        Body::GroupJoinResp(joined) => Response::GroupJoined(group_info(joined.group)?),
        Body::GroupLeaveResp(left) => Response::GroupLeft(left.group_id),
        Body::PushTokenResp(answer) => Response::PushToken(answer.registered),
        Body::MuteResp(answer) => Response::Muted(answer.conversation_id, answer.muted),
        Body::GroupMembersResp(page) => Response::GroupMembers(GroupMembersPage {
            group: group_info(page.group)?,
            members: page
                .members
                .into_iter()
                .map(|member| GroupMember {
                    role: if member.role == pb::GroupRole::Owner as i32 {
                        GroupRole::Owner
                    } else {
                        GroupRole::Member
                    },
                    user_id: member.user_id,
                    joined_ms: member.joined_ms,
                })
                .collect(),
            next_cursor: page.next_cursor,
        }),
        other => {
            return Err(RequestError::UnexpectedResponse(format!(
                "{} is not the answer to a request",
                other.op().as_str_name()
            )));
        }
    })
}
