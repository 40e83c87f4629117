//! Reads of a conversation: history pages and the conversation list (SPEC §13.2, §13.3).

use im_protocol::{Body, pb};
use timeline_store::TimelineStore;

use crate::errors::{error, store_error};
use crate::pages::fit_in_bytes;
use crate::validate::check_page;
use crate::{Caller, Logic, Reply};

impl<S: TimelineStore> Logic<S> {
    /// Runs a history or conversation-list request.
    pub(crate) async fn read_request(&self, caller: &Caller, body: Body) -> Reply {
        match body {
            Body::HistoryReq(request) => {
                let limit = check_page(
                    request.limit,
                    self.config.history_default,
                    self.config.history_max,
                    "history",
                )?;
                self.authorize(caller, &request.conversation_id).await?;
                let direction =
                    pb::HistoryDirection::try_from(request.direction).map_err(|_| {
                        error(pb::ErrorCode::InvalidArgument, "unknown history direction")
                    })?;
                // Ask for one more than the page to learn whether more exist.
                let page = self
                    .store
                    .read_history_as(
                        &caller.user,
                        &request.conversation_id,
                        request.anchor_seq,
                        direction,
                        limit + 1,
                    )
                    .await
                    .map_err(store_error)?;
                let mut messages = page.messages;
                let mut has_more = messages.len() > limit as usize;
                messages.truncate(limit as usize);
                has_more |= fit_in_bytes(&mut messages, self.config.page_bytes);
                Ok(Some(Body::HistoryResp(pb::HistoryResp {
                    conversation_id: request.conversation_id,
                    messages,
                    has_more,
                    last_seq: page.last_seq,
                })))
            }
            Body::ConversationsReq(request) => {
                let limit = check_page(
                    request.limit,
                    self.config.conversations_default,
                    self.config.conversations_max,
                    "conversations",
                )?;
                let (states, next_cursor) = self
                    .conversation_page(&caller.user, limit, &request.cursor)
                    .await?;
                let mut conversations = Vec::with_capacity(states.len());
                for state in states {
                    conversations.push(self.summary(state).await);
                }
                let mut next_cursor = next_cursor;
                if fit_in_bytes(&mut conversations, self.config.page_bytes) {
                    // Previews of large messages: a shorter page, whose cursor only the store
                    // can name, so ask it again for as many of its own as were kept (the
                    // first page's read-fan-out groups are not the store's to count).
                    let read_groups = if request.cursor.is_empty() {
                        self.store
                            .read_fanout_groups(&caller.user)
                            .await
                            .map_err(store_error)?
                    } else {
                        Vec::new()
                    };
                    let kept = conversations
                        .iter()
                        .filter(|c| {
                            c.kind != pb::ConversationKind::Group as i32
                                || read_groups.binary_search(&c.peer).is_err()
                        })
                        .count() as u32;
                    next_cursor = self
                        .store
                        .conversations(&caller.user, kept, &request.cursor)
                        .await
                        .map_err(store_error)?
                        .1;
                }
                Ok(Some(Body::ConversationsResp(pb::ConversationsResp {
                    conversations,
                    next_cursor,
                })))
            }
            other => Err(error(
                pb::ErrorCode::WrongDirection,
                format!("{:?} is not a read request", other.op()),
            )),
        }
    }
}
