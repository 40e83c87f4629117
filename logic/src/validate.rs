//! Checks of request fields that need no store: lengths and forms of ids, cursors and names,
//! and page limits.

use im_protocol::Body;
use im_protocol::ids::{self, ConversationRef};
use im_protocol::pb;

use crate::errors::error;

/// Longest `client_request_id` (the same bound as a `client_msg_id`).
pub const MAX_CLIENT_REQUEST_ID_LEN: usize = ids::MAX_CLIENT_MSG_ID_LEN;
/// Longest page cursor a client may send back; the cursors this server hands out are shorter.
pub const MAX_CURSOR_LEN: usize = 256;
/// Longest conversation id: `d:` + two ids + `:`.
pub const MAX_CONVERSATION_ID_LEN: usize = 2 * ids::MAX_ID_LEN + 3;
/// Longest group name.
pub const MAX_GROUP_NAME_LEN: usize = 256;
/// Most seqs one `DeleteReq` may list (SPEC §13.7): each costs a lookup on the store's single
/// writer, and one request should not hold it for long.
pub const MAX_DELETE_SEQS: usize = 1000;

/// Checks the length (and, for ids, the form) of every string field of a request before any
/// of it reaches the store, where ids and cursors become keys. A request that fails here gets
/// `INVALID_ARGUMENT` and touches nothing.
pub(crate) fn check_request_fields(body: &Body) -> Result<(), pb::Error> {
    let invalid = |m: String| error(pb::ErrorCode::InvalidArgument, m);
    let id = |value: &str, what: &'static str| {
        ids::validate_id(value, what).map_err(|e| invalid(e.to_string()))
    };
    let conversation = |value: &str| {
        if value.len() > MAX_CONVERSATION_ID_LEN {
            Err(invalid(format!(
                "conversation_id is above {MAX_CONVERSATION_ID_LEN} bytes"
            )))
        } else {
            ConversationRef::parse(value)
                .map(|_| ())
                .map_err(|e| invalid(e.to_string()))
        }
    };
    let cursor = |value: &str| {
        if value.len() > MAX_CURSOR_LEN {
            Err(invalid(format!(
                "cursor is above {MAX_CURSOR_LEN} bytes: not one this server handed out"
            )))
        } else {
            Ok(())
        }
    };
    let members = |values: &[String]| values.iter().try_for_each(|m| id(m, "member"));
    match body {
        Body::Typing(r) => conversation(&r.conversation_id),
        Body::HistoryReq(r) => conversation(&r.conversation_id),
        Body::ReadMarkerReq(r) => conversation(&r.conversation_id),
        Body::RecallReq(r) => conversation(&r.conversation_id),
        Body::DeleteReq(r) => conversation(&r.conversation_id),
        Body::ConversationsReq(r) => cursor(&r.cursor),
        Body::GroupCreateReq(r) => {
            members(&r.members)?;
            if r.name.len() > MAX_GROUP_NAME_LEN {
                return Err(invalid(format!(
                    "group name is above {MAX_GROUP_NAME_LEN} bytes"
                )));
            }
            if r.client_request_id.len() > MAX_CLIENT_REQUEST_ID_LEN {
                return Err(invalid(format!(
                    "client_request_id is above {MAX_CLIENT_REQUEST_ID_LEN} bytes"
                )));
            }
            Ok(())
        }
        Body::GroupAddMembersReq(r) => {
            id(&r.group_id, "group_id")?;
            members(&r.members)
        }
        Body::GroupRemoveMembersReq(r) => {
            id(&r.group_id, "group_id")?;
            members(&r.members)
        }
        Body::GroupJoinReq(r) => id(&r.group_id, "group_id"),
        Body::GroupLeaveReq(r) => id(&r.group_id, "group_id"),
        Body::GroupMembersReq(r) => {
            id(&r.group_id, "group_id")?;
            cursor(&r.cursor)
        }
        _ => Ok(()),
    }
}

pub(crate) fn check_page(limit: u32, default: u32, max: u32, what: &str) -> Result<u32, pb::Error> {
    match limit {
        0 => Ok(default),
        n if n > max => Err(error(
            pb::ErrorCode::PageTooLarge,
            format!("{what} limit {n} is above the maximum of {max}"),
        )),
        n => Ok(n),
    }
}
