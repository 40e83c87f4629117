//! The app's handle on a running client: one typed method per thing an app asks of the client
//! core, each a command to the driver task answered in the core's own types.

use tokio::sync::{mpsc, oneshot};

use super::{Command, DriverError};
use crate::machine::ConnectionState;
use crate::store::{LocalConversation, LocalMessage, Recipient};
use crate::types::{
    ConversationPage, GroupInfo, GroupMembersChange, GroupMembersPage, HistoryDirection,
    HistoryPage, PushPreview, PushService, ReadMarker, Recall, Request, RequestError, Response,
};

/// The app's handle on a running client. Cheap to clone; the client stops when the last clone
/// is dropped (or on [`ClientHandle::shutdown`]).
#[derive(Clone)]
pub struct ClientHandle {
    pub(super) commands: mpsc::Sender<Command>,
}

/// The answer was of another kind than the request's (the machine matches them by request id,
/// so only a misbehaving server gets here).
fn unexpected(response: Response) -> DriverError {
    DriverError::Request(RequestError::UnexpectedResponse(format!(
        "{} answer",
        response.kind()
    )))
}

impl ClientHandle {
    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, DriverError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| DriverError::Closed)?;
        rx.await.map_err(|_| DriverError::Closed)
    }

    async fn tell(&self, command: Command) -> Result<(), DriverError> {
        self.commands
            .send(command)
            .await
            .map_err(|_| DriverError::Closed)
    }

    async fn request(&self, request: Request) -> Result<Response, DriverError> {
        Ok(self
            .call(|reply| Command::Request { request, reply })
            .await??)
    }

    /// Queues a message; returns at once with the message in state `Sending`.
    pub async fn send(
        &self,
        recipient: Recipient,
        content_type: u32,
        content: Vec<u8>,
    ) -> Result<LocalMessage, DriverError> {
        Ok(self
            .call(|reply| Command::Send {
                recipient,
                content_type,
                content,
                reply,
            })
            .await??)
    }

    /// Sends a text message.
    pub async fn send_text(
        &self,
        recipient: Recipient,
        text: &str,
    ) -> Result<LocalMessage, DriverError> {
        self.send(recipient, 0, text.as_bytes().to_vec()).await
    }

    /// Puts a failed message back into the outbox.
    pub async fn retry(&self, local_id: u64) -> Result<bool, DriverError> {
        Ok(self
            .call(|reply| Command::Retry { local_id, reply })
            .await??)
    }

    /// Marks a conversation read up to `seq` (locally at once, then on the server); the
    /// server's effective marker and unread count.
    pub async fn mark_read(
        &self,
        conversation_id: &str,
        seq: u64,
    ) -> Result<ReadMarker, DriverError> {
        let request = Request::MarkRead {
            conversation_id: conversation_id.to_owned(),
            seq,
        };
        match self.request(request).await? {
            Response::ReadMarker(marker) => Ok(marker),
            other => Err(unexpected(other)),
        }
    }

    /// Typing indicator (dropped when offline).
    pub async fn typing(&self, conversation_id: &str, typing: bool) -> Result<(), DriverError> {
        self.tell(Command::Typing {
            conversation_id: conversation_id.to_owned(),
            typing,
        })
        .await
    }

    /// Recalls one of the user's own messages; every participant's copy becomes a "recalled"
    /// placeholder.
    pub async fn recall(&self, conversation_id: &str, seq: u64) -> Result<Recall, DriverError> {
        let request = Request::Recall {
            conversation_id: conversation_id.to_owned(),
            seq,
        };
        match self.request(request).await? {
            Response::Recalled(recall) => Ok(recall),
            other => Err(unexpected(other)),
        }
    }

    /// Hides messages for this user on all of their devices; how many were newly hidden.
    pub async fn delete_for_me(
        &self,
        conversation_id: &str,
        seqs: Vec<u64>,
    ) -> Result<u64, DriverError> {
        let request = Request::DeleteForMe {
            conversation_id: conversation_id.to_owned(),
            seqs,
        };
        match self.request(request).await? {
            Response::Deleted(count) => Ok(count),
            other => Err(unexpected(other)),
        }
    }

    /// Locally stored messages, newest first.
    pub async fn local_history(
        &self,
        conversation_id: &str,
        before_seq: u64,
        limit: u32,
    ) -> Result<Vec<LocalMessage>, DriverError> {
        let conversation_id = conversation_id.to_owned();
        Ok(self
            .call(|reply| Command::History {
                conversation_id,
                before_seq,
                limit,
                reply,
            })
            .await??)
    }

    /// History: local first; when fewer than `limit` are stored locally, pages the server and
    /// stores what it returns.
    pub async fn history(
        &self,
        conversation_id: &str,
        before_seq: u64,
        limit: u32,
    ) -> Result<Vec<LocalMessage>, DriverError> {
        let local = self
            .local_history(conversation_id, before_seq, limit)
            .await?;
        let contiguous = local
            .windows(2)
            .all(|w| w[0].seq == 0 || w[0].seq == w[1].seq + 1);
        let reaches_start = local.last().is_some_and(|m| m.seq == 1);
        if (local.len() >= limit as usize || reaches_start) && contiguous {
            return Ok(local);
        }
        match self
            .fetch_history(conversation_id, before_seq, HistoryDirection::Older, limit)
            .await
        {
            // The machine stored the page; read it back in the local shape.
            Ok(_) | Err(DriverError::Request(RequestError::NotConnected)) => {
                self.local_history(conversation_id, before_seq, limit).await
            }
            Err(e) => Err(e),
        }
    }

    /// One page of a conversation's history straight from the server (the messages are also
    /// stored locally).
    pub async fn fetch_history(
        &self,
        conversation_id: &str,
        anchor_seq: u64,
        direction: HistoryDirection,
        limit: u32,
    ) -> Result<HistoryPage, DriverError> {
        let request = Request::History {
            conversation_id: conversation_id.to_owned(),
            anchor_seq,
            direction,
            limit,
        };
        match self.request(request).await? {
            Response::History(page) => Ok(page),
            other => Err(unexpected(other)),
        }
    }

    /// Locally stored conversations, most recent first.
    pub async fn conversations(&self) -> Result<Vec<LocalConversation>, DriverError> {
        Ok(self
            .call(|reply| Command::Conversations { reply })
            .await??)
    }

    /// One page of the conversation list straight from the server (the local list is updated
    /// from it). `cursor` is empty for the first page, then the previous page's `next_cursor`.
    pub async fn fetch_conversations(
        &self,
        limit: u32,
        cursor: &str,
    ) -> Result<ConversationPage, DriverError> {
        let request = Request::Conversations {
            limit,
            cursor: cursor.to_owned(),
        };
        match self.request(request).await? {
            Response::Conversations(page) => Ok(page),
            other => Err(unexpected(other)),
        }
    }

    /// Creates a group with this user as owner and `members` as the other initial members.
    /// A non-empty `client_request_id` makes it safe to retry: the server returns the same
    /// group.
    pub async fn create_group(
        &self,
        name: &str,
        members: Vec<String>,
        open: bool,
        client_request_id: &str,
    ) -> Result<GroupInfo, DriverError> {
        self.create(name, members, open, client_request_id, false)
            .await
    }

    /// Creates a broadcast channel with this user as owner: only the owner posts and adds
    /// members; with `open`, anyone may join (SPEC §13.8). Retried safely as `create_group`.
    pub async fn create_channel(
        &self,
        name: &str,
        members: Vec<String>,
        open: bool,
        client_request_id: &str,
    ) -> Result<GroupInfo, DriverError> {
        self.create(name, members, open, client_request_id, true)
            .await
    }

    async fn create(
        &self,
        name: &str,
        members: Vec<String>,
        open: bool,
        client_request_id: &str,
        broadcast: bool,
    ) -> Result<GroupInfo, DriverError> {
        let request = Request::CreateGroup {
            name: name.to_owned(),
            members,
            open,
            client_request_id: client_request_id.to_owned(),
            broadcast,
        };
        match self.request(request).await? {
            Response::GroupCreated(group) => Ok(group),
            other => Err(unexpected(other)),
        }
    }

    /// Adds members to a group; the change lists those who were not members before.
    pub async fn add_group_members(
        &self,
        group_id: &str,
        members: Vec<String>,
    ) -> Result<GroupMembersChange, DriverError> {
        let request = Request::AddGroupMembers {
            group_id: group_id.to_owned(),
            members,
        };
        match self.request(request).await? {
            Response::GroupMembersAdded(change) => Ok(change),
            other => Err(unexpected(other)),
        }
    }

    /// Removes members from a group (owner only); the change lists those removed.
    pub async fn remove_group_members(
        &self,
        group_id: &str,
        members: Vec<String>,
    ) -> Result<GroupMembersChange, DriverError> {
        let request = Request::RemoveGroupMembers {
            group_id: group_id.to_owned(),
            members,
        };
        match self.request(request).await? {
            Response::GroupMembersRemoved(change) => Ok(change),
            other => Err(unexpected(other)),
        }
    }

    /// Registers this device's push token (replacing the one it had), so the server can wake
    /// the app through `service` when messages arrive while it has no connection.
    pub async fn register_push_token(
        &self,
        service: PushService,
        token: &str,
        preview: PushPreview,
    ) -> Result<(), DriverError> {
        let request = Request::RegisterPushToken {
            service,
            token: token.to_owned(),
            preview,
        };
        match self.request(request).await? {
            Response::PushToken(_) => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Removes this device's push token (at logout).
    pub async fn unregister_push_token(&self) -> Result<(), DriverError> {
        match self.request(Request::UnregisterPushToken).await? {
            Response::PushToken(_) => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Mutes (or unmutes) a conversation's push notifications on all of the user's devices.
    pub async fn mute(&self, conversation_id: &str, muted: bool) -> Result<(), DriverError> {
        let request = Request::Mute {
            conversation_id: conversation_id.to_owned(),
            muted,
        };
        match self.request(request).await? {
            Response::Muted(..) => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Joins an open group.
    pub async fn join_group(&self, group_id: &str) -> Result<GroupInfo, DriverError> {
        let request = Request::JoinGroup {
            group_id: group_id.to_owned(),
        };
        match self.request(request).await? {
            Response::GroupJoined(group) => Ok(group),
            other => Err(unexpected(other)),
        }
    }

    /// Leaves a group.
    pub async fn leave_group(&self, group_id: &str) -> Result<(), DriverError> {
        let request = Request::LeaveGroup {
            group_id: group_id.to_owned(),
        };
        match self.request(request).await? {
            Response::GroupLeft(_) => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// One page of a group's members, ordered by user id, with the group's info. `limit` 0 =
    /// the server's default; `cursor` is empty for the first page.
    pub async fn group_members(
        &self,
        group_id: &str,
        limit: u32,
        cursor: &str,
    ) -> Result<GroupMembersPage, DriverError> {
        let request = Request::GroupMembers {
            group_id: group_id.to_owned(),
            limit,
            cursor: cursor.to_owned(),
        };
        match self.request(request).await? {
            Response::GroupMembers(page) => Ok(page),
            other => Err(unexpected(other)),
        }
    }

    /// A group's current info (members only). The protocol has no request of its own for it:
    /// this asks for a one-member page of the member list, which carries the info.
    pub async fn group_info(&self, group_id: &str) -> Result<GroupInfo, DriverError> {
        Ok(self.group_members(group_id, 1, "").await?.group)
    }

    /// The connection state and the inbox cursor.
    pub async fn state(&self) -> Result<(ConnectionState, u64), DriverError> {
        self.call(|reply| Command::State { reply }).await
    }

    /// Replaces the token (e.g. after the app refreshed it).
    pub async fn set_token(&self, token: String) -> Result<(), DriverError> {
        self.tell(Command::SetToken(token)).await
    }

    /// The device's network changed: reconnect now if waiting.
    pub async fn network_changed(&self) -> Result<(), DriverError> {
        self.tell(Command::NetworkChanged).await
    }

    /// The app moved to the background (true) or foreground (false).
    pub async fn set_background(&self, background: bool) -> Result<(), DriverError> {
        self.tell(Command::Background(background)).await
    }

    /// Says goodbye to the server and stops the client task (and its own runtime, if it has
    /// one).
    pub async fn shutdown(&self) -> Result<(), DriverError> {
        self.call(|reply| Command::Shutdown { reply }).await
    }
}
