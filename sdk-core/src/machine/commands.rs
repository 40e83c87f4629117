//! What the app asks of the machine: tokens, connect and disconnect, sends, requests, local
//! reads.

use std::time::Instant;

use im_protocol::{Body, Frame, ids, pb};
use rand::Rng as _;

use super::{Action, Client, Event, Pending, PendingRequest, Phase, StopReason, convert};
use crate::store::{
    LocalConversation, LocalMessage, LocalResult, LocalStore, OutboxItem, Recipient, SendState,
};
use crate::types::{Request, RequestError, RequestHandle};

impl<S: LocalStore> Client<S> {
    /// Sets (or refreshes) the token; resumes connecting if the client stopped for the token.
    pub fn set_token(&mut self, token: impl Into<String>, now: Instant) {
        self.token = Some(token.into());
        if matches!(
            self.phase,
            Phase::Stopped(StopReason::TokenExpired | StopReason::AuthFailed(_))
        ) {
            self.attempt = 0;
            self.start_connect(now);
        }
    }

    /// The app wants to be online.
    pub fn connect(&mut self, now: Instant) {
        if matches!(self.phase, Phase::Offline | Phase::Stopped(_)) {
            self.attempt = 0;
            self.start_connect(now);
        }
    }

    /// The app goes offline on purpose (logout, user switch): no reconnect.
    pub fn disconnect(&mut self) {
        let open = matches!(
            self.phase,
            Phase::Connecting | Phase::Authenticating | Phase::Syncing | Phase::Online
        );
        // Reset first: `reset_connection` clears the transmit queue, and doing it after queueing
        // the goodbye dropped the goodbye (found by the simulation tests'
        // `an_intentional_disconnect_says_goodbye_before_closing`).
        self.reset_connection();
        if open {
            let id = self.request_id();
            self.transmit
                .push_back(Frame::new(id, pb::Goodbye { logout: false }));
            self.actions.push_back(Action::Disconnect);
        }
        self.set_phase(Phase::Offline);
    }

    /// The network changed (new Wi-Fi, cellular back): reconnect now instead of waiting out the
    /// backoff; when connected, probe the link with a ping.
    pub fn network_changed(&mut self, now: Instant) {
        match self.phase {
            Phase::Waiting { .. } => {
                self.attempt = 0;
                self.start_connect(now);
            }
            Phase::Syncing | Phase::Online => self.send_ping(now),
            _ => {}
        }
    }

    /// The app went to the background (true) or foreground (false).
    pub fn set_background(&mut self, background: bool, now: Instant) {
        self.background = background;
        if !background {
            self.network_changed(now);
        }
    }

    pub(super) fn start_connect(&mut self, _now: Instant) {
        if self.token.is_none() {
            self.set_phase(Phase::Stopped(StopReason::AuthFailed("no token".into())));
            return;
        }
        self.set_phase(Phase::Connecting);
        self.actions.push_back(Action::Connect);
    }

    pub(super) fn request_id(&mut self) -> u32 {
        let id = self.next_request_id;
        self.next_request_id = self.next_request_id.checked_add(1).unwrap_or(1);
        id
    }

    pub(super) fn send_frame(
        &mut self,
        body: impl Into<Body>,
        pending: Option<Pending>,
        now: Instant,
    ) -> u32 {
        let id = self.request_id();
        self.transmit.push_back(Frame::new(id, body));
        self.last_sent = now;
        if let Some(kind) = pending {
            self.pending
                .insert(id, PendingRequest { kind, sent_at: now });
        }
        id
    }

    /// Queues a message; it is stored in the outbox and sent (now if online, after the next
    /// connect otherwise) until the server acknowledges it.
    pub fn send(
        &mut self,
        recipient: Recipient,
        content_type: u32,
        content: Vec<u8>,
        now: Instant,
        now_ms: u64,
    ) -> LocalResult<LocalMessage> {
        let conversation_id = match &recipient {
            Recipient::User(user) => ids::direct_conversation_id(&self.config.user_id, user),
            Recipient::Group(group) => ids::group_conversation_id(group),
        };
        let local_id = self.store.next_local_id()?;
        let nonce: u32 = self.rng.random();
        let client_msg_id = format!("{}-{local_id}-{nonce:08x}", self.config.device_id);
        let item = OutboxItem {
            local_id,
            recipient,
            conversation_id: conversation_id.clone(),
            client_msg_id: client_msg_id.clone(),
            content_type,
            content: content.clone(),
            created_ms: now_ms,
            attempts: 0,
            state: SendState::Sending,
        };
        let message = LocalMessage {
            local_id,
            conversation_id,
            sender: self.config.user_id.clone(),
            client_msg_id,
            seq: 0,
            server_msg_id: 0,
            time_ms: now_ms,
            content_type,
            content,
            state: SendState::Sending,
            recalled: false,
        };
        self.store.outbox_push(&item, &message)?;
        self.events.push_back(Event::MessageAdded(message.clone()));
        if self.connected() {
            self.transmit_item(item, now);
        }
        Ok(message)
    }

    /// Puts a `Failed` message back into the outbox.
    pub fn retry(&mut self, local_id: u64, now: Instant) -> LocalResult<bool> {
        let Some(mut item) = self.store.outbox_get(local_id)? else {
            return Ok(false);
        };
        if item.state != SendState::Failed {
            return Ok(false);
        }
        item.attempts = 0;
        item.state = SendState::Sending;
        self.store.outbox_update(local_id, 0, SendState::Sending)?;
        if self.connected() {
            self.transmit_item(item, now);
        }
        Ok(true)
    }

    pub(super) fn transmit_item(&mut self, item: OutboxItem, now: Instant) {
        if self.transmitted.contains_key(&item.local_id) {
            return;
        }
        let attempts = item.attempts + 1;
        // Content the server would refuse (or that would not even fit a frame) fails at once
        // instead of being retransmitted forever.
        if item.attempts >= self.config.max_send_attempts
            || item.content.len() > self.max_message_bytes
        {
            self.fail_message(item.local_id, item.attempts);
            return;
        }
        if let Err(e) = self
            .store
            .outbox_update(item.local_id, attempts, SendState::Sending)
        {
            self.events.push_back(Event::StoreError(e.to_string()));
        }
        let target = match item.recipient {
            Recipient::User(user) => pb::send_req::Target::ToUser(user),
            Recipient::Group(group) => pb::send_req::Target::ToGroup(group),
        };
        let request = pb::SendReq {
            target: Some(target),
            client_msg_id: item.client_msg_id,
            content_type: item.content_type,
            content: item.content,
        };
        self.send_frame(
            request,
            Some(Pending::Send {
                local_id: item.local_id,
            }),
            now,
        );
        self.transmitted.insert(item.local_id, attempts);
    }

    pub(super) fn fail_message(&mut self, local_id: u64, attempts: u32) {
        match self
            .store
            .outbox_update(local_id, attempts, SendState::Failed)
        {
            Ok(()) => {
                if let Ok(Some(item)) = self.store.outbox_get(local_id) {
                    let message = self.outbox_message(&item, SendState::Failed);
                    self.events.push_back(Event::MessageUpdated(message));
                }
            }
            Err(e) => self.events.push_back(Event::StoreError(e.to_string())),
        }
    }

    fn outbox_message(&self, item: &OutboxItem, state: SendState) -> LocalMessage {
        LocalMessage {
            local_id: item.local_id,
            conversation_id: item.conversation_id.clone(),
            sender: self.config.user_id.clone(),
            client_msg_id: item.client_msg_id.clone(),
            seq: 0,
            server_msg_id: 0,
            time_ms: item.created_ms,
            content_type: item.content_type,
            content: item.content.clone(),
            state,
            recalled: false,
        }
    }

    /// Sends a request to the server; its answer comes from [`Client::poll_response`] with the
    /// returned handle. Fails at once (through that same queue) when not connected: only sends
    /// are kept for later.
    pub fn request(&mut self, request: Request, now: Instant) -> RequestHandle {
        if let Request::MarkRead {
            conversation_id,
            seq,
        } = &request
        {
            self.mark_read_locally(conversation_id, *seq);
        }
        let handle = self.next_handle;
        self.next_handle += 1;
        if self.connected() {
            self.send_frame(
                convert::request_body(request),
                Some(Pending::Request { handle }),
                now,
            );
        } else {
            self.responses
                .push_back((handle, Err(RequestError::NotConnected)));
        }
        handle
    }

    /// Marks a conversation read up to `seq` (locally at once, then on the server).
    pub fn mark_read(&mut self, conversation_id: &str, seq: u64, now: Instant) -> RequestHandle {
        let request = Request::MarkRead {
            conversation_id: conversation_id.into(),
            seq,
        };
        self.request(request, now)
    }

    /// The badge drops at once; the server's answer (or its inbox entry) corrects it after.
    fn mark_read_locally(&mut self, conversation_id: &str, seq: u64) {
        if let Ok(Some(mut conversation)) = self.store.conversation(conversation_id)
            && seq > conversation.read_seq
        {
            conversation.read_seq = seq.min(conversation.last_seq.max(seq));
            if conversation.read_seq >= conversation.last_seq {
                conversation.unread_count = 0;
            }
            self.save_conversation(conversation);
        }
    }

    /// Tells the peers this user is (or stopped) typing. Dropped when offline.
    pub fn typing(&mut self, conversation_id: &str, typing: bool, now: Instant) {
        if self.connected() {
            self.send_frame(
                pb::Typing {
                    conversation_id: conversation_id.into(),
                    typing,
                },
                None,
                now,
            );
        }
    }

    /// Messages stored locally, newest first (see [`LocalStore::history`]).
    pub fn local_history(
        &self,
        conversation_id: &str,
        before_seq: u64,
        limit: u32,
    ) -> LocalResult<Vec<LocalMessage>> {
        self.store.history(conversation_id, before_seq, limit)
    }

    /// Conversations stored locally, most recent first.
    pub fn local_conversations(&self) -> LocalResult<Vec<LocalConversation>> {
        self.store.conversations()
    }
}
