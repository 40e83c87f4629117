//! The client's protocol logic as a sans-IO state machine.
//!
//! It owns every delivery rule (outbox and retransmission, inbox cursor, gap detection and fill,
//! buffering pushes during a sync, heartbeats, dead-link detection, reconnect backoff) and does
//! no IO of its own: the driver feeds it transport events, frames and the current time, and
//! takes from it frames to send ([`Client::poll_transmit`]), actions on the transport
//! ([`Client::poll_action`]), events for the app ([`Client::poll_event`]) and the next time it
//! wants to be woken ([`Client::next_timeout`]). The same code runs under the tokio driver and
//! under the deterministic simulation tests.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use im_protocol::ids::{self, ConversationRef};
use im_protocol::pb::{self, ErrorCode};
use im_protocol::{Body, ErrorCodeExt as _, Frame};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};

use crate::store::{
    LocalConversation, LocalMessage, LocalResult, LocalStore, OutboxItem, Recipient, SendState,
};

/// Settings of the client core.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// The logged-in user (the token's subject).
    pub user_id: String,
    /// This device.
    pub device_id: String,
    /// Platform reported in the handshake.
    pub platform: pb::Platform,
    /// Free text reported in the handshake.
    pub client_version: String,
    /// Inbox entries per sync page.
    pub sync_page: u32,
    /// Transmissions of one message before it becomes `Failed`.
    pub max_send_attempts: u32,
    /// A request unanswered this long means the link is dead.
    pub request_timeout: Duration,
    /// A PING unanswered this long means the link is dead.
    pub pong_timeout: Duration,
    /// First reconnect delay (before jitter).
    pub backoff_base: Duration,
    /// Largest reconnect delay.
    pub backoff_cap: Duration,
    /// Seed of the jitter generator (tests pass a fixed one; apps a random one).
    pub seed: u64,
}

impl ClientConfig {
    /// Defaults for `user_id` on `device_id`.
    pub fn new(user_id: impl Into<String>, device_id: impl Into<String>) -> ClientConfig {
        ClientConfig {
            user_id: user_id.into(),
            device_id: device_id.into(),
            platform: pb::Platform::Desktop,
            client_version: concat!("sdk-core/", env!("CARGO_PKG_VERSION")).into(),
            sync_page: 200,
            max_send_attempts: 10,
            request_timeout: Duration::from_secs(30),
            pong_timeout: Duration::from_secs(10),
            backoff_base: Duration::from_millis(500),
            backoff_cap: Duration::from_secs(30),
            seed: rand::random(),
        }
    }
}

/// The connection as the app sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConnectionState {
    /// The app has not asked to connect (or disconnected on purpose).
    Offline,
    /// Opening the transport.
    Connecting,
    /// Transport open, handshake sent.
    Authenticating,
    /// Authenticated, pulling the inbox.
    Syncing,
    /// Authenticated and caught up: pushes arrive live.
    Online,
    /// The link failed; reconnecting after a backoff.
    WaitingToReconnect,
    /// Stopped until the app acts: token expired or invalid, or kicked by another login.
    Stopped(StopReason),
}

/// Why the client stopped reconnecting by itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The token expired: give a fresh one with [`Client::set_token`].
    TokenExpired,
    /// The server refused the token or device.
    AuthFailed(String),
    /// The same device logged in on another connection.
    LoggedInElsewhere,
}

/// What the driver must do with the transport.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Open a connection, then call [`Client::on_connected`] (or
    /// [`Client::on_disconnected`] if it fails).
    Connect,
    /// Close the current connection. Do not report it back with `on_disconnected`.
    Disconnect,
}

/// A request's failure.
#[derive(Clone, Debug, PartialEq)]
pub enum RequestError {
    /// The server answered with an error.
    Server(pb::Error),
    /// Not connected (requests other than sends are not queued offline).
    NotConnected,
    /// The connection was lost before the answer.
    ConnectionLost,
}

/// Identifies a request made through the client; its answer comes as [`Event::Response`].
pub type RequestHandle = u64;

/// What happened, for the app.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// The connection state changed.
    State(ConnectionState),
    /// Everything up to the server's head at connect time is applied.
    Synced {
        /// The inbox cursor.
        cursor: u64,
    },
    /// An own message entered the outbox (state `Sending`).
    MessageAdded(LocalMessage),
    /// An own message changed state (`Sent` with its seq, or `Failed`).
    MessageUpdated(LocalMessage),
    /// A message from someone else (or from another device of this user) arrived.
    MessageReceived(LocalMessage),
    /// A message was recalled by its sender.
    MessageRecalled {
        /// Conversation.
        conversation_id: String,
        /// Its seq.
        seq: u64,
    },
    /// Messages were deleted for this user.
    MessagesDeleted {
        /// Conversation.
        conversation_id: String,
        /// Their seqs.
        seqs: Vec<u64>,
    },
    /// A conversation's preview, unread count or read markers changed.
    ConversationUpdated(LocalConversation),
    /// A peer read a conversation up to a seq.
    ReadReceipt {
        /// Conversation.
        conversation_id: String,
        /// Who read.
        reader: String,
        /// Up to which seq.
        read_seq: u64,
    },
    /// Group membership or name changed.
    GroupChanged(pb::GroupEvent),
    /// Someone is (or stopped) typing.
    Typing(pb::TypingEvent),
    /// The answer to a request.
    Response {
        /// The handle returned when the request was made.
        handle: RequestHandle,
        /// The response body or the failure.
        result: Result<Body, RequestError>,
    },
    /// The local store failed; the client keeps running but the app should know.
    StoreError(String),
    /// The server's inbox is not the one the local state came from (restored from a backup,
    /// recreated empty; SPEC §10.8): every message and conversation learned from it was
    /// dropped, and the client syncs from the start. The app reloads what it shows.
    InboxReset {
        /// The server's inbox epoch from now on.
        epoch: u64,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Phase {
    Offline,
    Connecting,
    Authenticating,
    Syncing,
    Online,
    Waiting { at: Instant },
    Stopped(StopReason),
}

#[derive(Debug)]
enum Pending {
    Handshake,
    Send { local_id: u64 },
    Sync,
    Request { handle: RequestHandle },
}

#[derive(Debug)]
struct PendingRequest {
    kind: Pending,
    sent_at: Instant,
}

/// Per-connection timing learned from the handshake.
#[derive(Debug, Clone, Copy)]
struct Timing {
    heartbeat: Duration,
    idle_timeout: Duration,
}

/// The client state machine over a local store.
pub struct Client<S> {
    config: ClientConfig,
    store: S,
    token: Option<String>,
    rng: StdRng,
    phase: Phase,
    attempt: u32,
    healthy_since: Option<Instant>,
    background: bool,
    /// Largest content the server accepts (from the handshake; 64 KiB until then).
    max_message_bytes: usize,
    // Per connection.
    next_request_id: u32,
    pending: HashMap<u32, PendingRequest>,
    timing: Timing,
    last_sent: Instant,
    last_received: Instant,
    ping_sent: Option<Instant>,
    /// Outbox items already transmitted on this connection.
    transmitted: HashMap<u64, u32>,
    // Receive side.
    /// The inbox epoch `cursor` belongs to (0 = not known yet).
    inbox_epoch: u64,
    cursor: u64,
    acked_cursor: u64,
    buffered: BTreeMap<u64, pb::InboxEntry>,
    sync_in_flight: bool,
    sync_to: u64,
    // Outputs.
    transmit: VecDeque<Frame>,
    actions: VecDeque<Action>,
    events: VecDeque<Event>,
    next_handle: RequestHandle,
}

/// A server message in the app's shape (stored by the server, so `Sent`).
fn received_message(message: &pb::Message) -> LocalMessage {
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

impl<S: LocalStore> Client<S> {
    /// A client over `store`, offline until [`Client::connect`].
    pub fn new(config: ClientConfig, store: S, now: Instant) -> LocalResult<Client<S>> {
        let cursor = store.cursor()?;
        let inbox_epoch = store.inbox_epoch()?;
        let rng = StdRng::seed_from_u64(config.seed);
        Ok(Client {
            config,
            store,
            token: None,
            rng,
            phase: Phase::Offline,
            attempt: 0,
            healthy_since: None,
            background: false,
            max_message_bytes: 64 * 1024,
            next_request_id: 1,
            pending: HashMap::new(),
            timing: Timing {
                heartbeat: Duration::from_secs(30),
                idle_timeout: Duration::from_secs(90),
            },
            last_sent: now,
            last_received: now,
            ping_sent: None,
            transmitted: HashMap::new(),
            inbox_epoch,
            cursor,
            acked_cursor: cursor,
            buffered: BTreeMap::new(),
            sync_in_flight: false,
            sync_to: 0,
            transmit: VecDeque::new(),
            actions: VecDeque::new(),
            events: VecDeque::new(),
            next_handle: 1,
        })
    }

    /// The local store (read access for the app's queries).
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The configuration.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// The highest inbox seq applied.
    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    /// The connection state.
    pub fn state(&self) -> ConnectionState {
        match &self.phase {
            Phase::Offline => ConnectionState::Offline,
            Phase::Connecting => ConnectionState::Connecting,
            Phase::Authenticating => ConnectionState::Authenticating,
            Phase::Syncing => ConnectionState::Syncing,
            Phase::Online => ConnectionState::Online,
            Phase::Waiting { .. } => ConnectionState::WaitingToReconnect,
            Phase::Stopped(reason) => ConnectionState::Stopped(reason.clone()),
        }
    }

    fn set_phase(&mut self, phase: Phase) {
        if self.phase != phase {
            self.phase = phase;
            self.events.push_back(Event::State(self.state()));
        }
    }

    fn connected(&self) -> bool {
        matches!(self.phase, Phase::Syncing | Phase::Online)
    }

    // ----- outputs -----

    /// The next frame to write.
    pub fn poll_transmit(&mut self) -> Option<Frame> {
        self.transmit.pop_front()
    }

    /// The next transport action.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The next event for the app.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Client::on_timeout`] should be called next.
    pub fn next_timeout(&self) -> Option<Instant> {
        match self.phase {
            Phase::Waiting { at } => Some(at),
            Phase::Authenticating | Phase::Syncing | Phase::Online => {
                let mut t = self.last_received + self.timing.idle_timeout;
                if self.connected() {
                    t = t.min(self.last_sent + self.heartbeat_interval());
                }
                if let Some(ping) = self.ping_sent {
                    t = t.min(ping + self.config.pong_timeout);
                }
                if let Some(oldest) = self.pending.values().map(|p| p.sent_at).min() {
                    t = t.min(oldest + self.config.request_timeout);
                }
                Some(t)
            }
            _ => None,
        }
    }

    fn heartbeat_interval(&self) -> Duration {
        // In the background we ping half as often, still well inside the server's idle timeout
        // (three intervals), to save radio wake-ups.
        if self.background {
            self.timing.heartbeat * 2
        } else {
            self.timing.heartbeat
        }
    }

    // ----- app commands -----

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

    fn start_connect(&mut self, _now: Instant) {
        if self.token.is_none() {
            self.set_phase(Phase::Stopped(StopReason::AuthFailed("no token".into())));
            return;
        }
        self.set_phase(Phase::Connecting);
        self.actions.push_back(Action::Connect);
    }

    fn request_id(&mut self) -> u32 {
        let id = self.next_request_id;
        self.next_request_id = self.next_request_id.checked_add(1).unwrap_or(1);
        id
    }

    fn send_frame(&mut self, body: impl Into<Body>, pending: Option<Pending>, now: Instant) -> u32 {
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

    fn transmit_item(&mut self, item: OutboxItem, now: Instant) {
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

    fn fail_message(&mut self, local_id: u64, attempts: u32) {
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

    /// Sends a request whose answer arrives as [`Event::Response`] with the returned handle.
    /// Fails at once (through the event) when not connected.
    pub fn request(&mut self, body: impl Into<Body>, now: Instant) -> RequestHandle {
        let handle = self.next_handle;
        self.next_handle += 1;
        if self.connected() {
            self.send_frame(body, Some(Pending::Request { handle }), now);
        } else {
            self.events.push_back(Event::Response {
                handle,
                result: Err(RequestError::NotConnected),
            });
        }
        handle
    }

    /// Marks a conversation read up to `seq` (locally at once, then on the server).
    pub fn mark_read(&mut self, conversation_id: &str, seq: u64, now: Instant) -> RequestHandle {
        if let Ok(Some(mut conversation)) = self.store.conversation(conversation_id)
            && seq > conversation.read_seq
        {
            conversation.read_seq = seq.min(conversation.last_seq.max(seq));
            if conversation.read_seq >= conversation.last_seq {
                conversation.unread_count = 0;
            }
            self.save_conversation(conversation);
        }
        self.request(
            pb::ReadMarkerReq {
                conversation_id: conversation_id.into(),
                read_seq: seq,
            },
            now,
        )
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

    // ----- transport events -----

    /// The transport is open: authenticate.
    pub fn on_connected(&mut self, now: Instant) {
        if self.phase != Phase::Connecting {
            return;
        }
        self.reset_connection();
        self.last_received = now;
        self.last_sent = now;
        self.set_phase(Phase::Authenticating);
        let hello = pb::HandshakeReq {
            token: self.token.clone().unwrap_or_default(),
            device_id: self.config.device_id.clone(),
            platform: self.config.platform as i32,
            client_version: self.config.client_version.clone(),
            protocol_version: im_protocol::PROTOCOL_REVISION,
            last_inbox_seq: self.cursor,
            accept_compression: vec![pb::Compression::Zstd as i32],
            app_state: if self.background {
                pb::AppState::Background as i32
            } else {
                pb::AppState::Foreground as i32
            },
        };
        // The handshake is bounded by the idle timeout until the server announces its own.
        self.timing.idle_timeout = self.config.request_timeout;
        self.send_frame(hello, Some(Pending::Handshake), now);
    }

    /// The transport failed or closed (or could not be opened).
    pub fn on_disconnected(&mut self, now: Instant) {
        if matches!(
            self.phase,
            Phase::Offline | Phase::Stopped(_) | Phase::Waiting { .. }
        ) {
            return;
        }
        self.reset_connection();
        self.schedule_reconnect(now, Duration::ZERO);
    }

    /// Drops per-connection state; pending requests fail, unacked sends stay in the outbox.
    fn reset_connection(&mut self) {
        for (_, pending) in self.pending.drain() {
            if let Pending::Request { handle } = pending.kind {
                self.events.push_back(Event::Response {
                    handle,
                    result: Err(RequestError::ConnectionLost),
                });
            }
        }
        self.transmitted.clear();
        self.transmit.clear();
        self.ping_sent = None;
        self.sync_in_flight = false;
        self.sync_to = 0;
        // Buffered pushes are dropped: the next connection syncs from the cursor anyway.
        self.buffered.clear();
    }

    fn schedule_reconnect(&mut self, now: Instant, at_least: Duration) {
        if let Some(since) = self.healthy_since.take()
            && now.saturating_duration_since(since) >= self.timing.heartbeat
        {
            self.attempt = 0;
        }
        // Full jitter: a uniformly random delay up to the exponential bound, so clients cut off
        // together by a server restart come back spread out instead of in one storm.
        let exp = self
            .config
            .backoff_base
            .saturating_mul(1u32 << self.attempt.min(16));
        let bound = exp
            .min(self.config.backoff_cap)
            .max(Duration::from_millis(1));
        let delay = Duration::from_micros(self.rng.random_range(0..=bound.as_micros() as u64))
            .max(at_least);
        self.attempt = self.attempt.saturating_add(1);
        self.set_phase(Phase::Waiting { at: now + delay });
    }

    /// The link is dead or the server broke the protocol: close and reconnect later.
    fn fail_connection(&mut self, now: Instant, at_least: Duration) {
        self.actions.push_back(Action::Disconnect);
        self.reset_connection();
        self.schedule_reconnect(now, at_least);
    }

    /// Time passed: heartbeats, dead-link detection, reconnects.
    pub fn on_timeout(&mut self, now: Instant) {
        match self.phase {
            Phase::Waiting { at } if now >= at => self.start_connect(now),
            Phase::Authenticating | Phase::Syncing | Phase::Online => {
                let dead = now >= self.last_received + self.timing.idle_timeout
                    || self
                        .ping_sent
                        .is_some_and(|t| now >= t + self.config.pong_timeout)
                    || self
                        .pending
                        .values()
                        .any(|p| now >= p.sent_at + self.config.request_timeout);
                if dead {
                    tracing::debug!("link considered dead");
                    self.fail_connection(now, Duration::ZERO);
                } else if self.connected() && now >= self.last_sent + self.heartbeat_interval() {
                    self.send_ping(now);
                }
            }
            _ => {}
        }
    }

    fn send_ping(&mut self, now: Instant) {
        if self.ping_sent.is_none() {
            self.send_frame(pb::Ping::default(), None, now);
            self.ping_sent = Some(now);
        }
    }

    /// A frame arrived.
    pub fn on_frame(&mut self, frame: Frame, now: Instant) {
        if matches!(
            self.phase,
            Phase::Offline | Phase::Stopped(_) | Phase::Waiting { .. } | Phase::Connecting
        ) {
            return;
        }
        self.last_received = now;
        let body = match frame.decode_body() {
            Ok(body) => body,
            Err(e) => {
                // An op from a newer revision: ignore pushes we do not understand.
                tracing::debug!(error = %e, op = frame.op, "ignoring an undecodable frame");
                if !frame.is_push() {
                    self.pending.remove(&frame.request_id);
                }
                return;
            }
        };
        if frame.is_push() || frame.request_id == 0 {
            self.on_push(body, now);
            return;
        }
        let Some(pending) = self.pending.remove(&frame.request_id) else {
            if let Body::Pong(pong) = body {
                self.ping_sent = None;
                // A head above the cursor with no sync running means a push was lost on a
                // link that otherwise works: pull what is missing instead of waiting for the
                // next push or reconnect.
                if pong.inbox_epoch != 0 && pong.inbox_epoch != self.inbox_epoch {
                    // The server's store was replaced under this connection: start over on a
                    // new one, whose handshake resets the local state.
                    self.fail_connection(now, Duration::ZERO);
                    return;
                }
                if pong.inbox_head_seq > self.cursor && !self.sync_in_flight && self.connected() {
                    self.start_sync(0, now);
                }
            }
            return;
        };
        match pending.kind {
            Pending::Handshake => self.on_handshake(body, now),
            Pending::Send { local_id } => self.on_send_answer(local_id, body, now),
            Pending::Sync => self.on_sync_answer(body, now),
            Pending::Request { handle } => {
                let result = match body {
                    Body::Error(e) => Err(RequestError::Server(e)),
                    body => {
                        self.absorb_response(&body);
                        Ok(body)
                    }
                };
                self.events.push_back(Event::Response { handle, result });
            }
        }
    }

    fn on_push(&mut self, body: Body, now: Instant) {
        match body {
            Body::Push(push) => self.on_entries(push.entries, now),
            Body::TypingEvent(event) => self.events.push_back(Event::Typing(event)),
            Body::Kick(kick) => {
                let reason =
                    pb::KickReason::try_from(kick.reason).unwrap_or(pb::KickReason::Unspecified);
                self.actions.push_back(Action::Disconnect);
                self.reset_connection();
                match reason {
                    pb::KickReason::LoggedInElsewhere => {
                        self.set_phase(Phase::Stopped(StopReason::LoggedInElsewhere))
                    }
                    pb::KickReason::TokenRevoked => {
                        self.set_phase(Phase::Stopped(StopReason::AuthFailed(kick.message)))
                    }
                    _ => self.schedule_reconnect(
                        now,
                        Duration::from_millis(u64::from(kick.retry_after_ms)),
                    ),
                }
            }
            Body::Error(error) => {
                // A connection-level error: the server closes next.
                tracing::debug!(code = error.code, message = %error.message, "connection error from the server");
                self.fail_connection(now, Duration::from_millis(u64::from(error.retry_after_ms)));
            }
            _ => {}
        }
    }

    fn on_handshake(&mut self, body: Body, now: Instant) {
        match body {
            Body::HandshakeResp(hello) => {
                if hello.user_id != self.config.user_id {
                    tracing::warn!(token_user = %hello.user_id, configured = %self.config.user_id, "token is for another user");
                }
                if hello.max_message_bytes > 0 {
                    self.max_message_bytes = hello.max_message_bytes as usize;
                }
                self.timing = Timing {
                    heartbeat: Duration::from_millis(u64::from(
                        hello.heartbeat_interval_ms.max(1000),
                    )),
                    idle_timeout: Duration::from_millis(u64::from(hello.idle_timeout_ms.max(3000))),
                };
                self.healthy_since = Some(now);
                self.set_phase(Phase::Syncing);
                self.check_inbox(hello.inbox_epoch, hello.inbox_head_seq);
                self.start_sync(0, now);
                match self.store.outbox_pending() {
                    Ok(items) => {
                        for item in items {
                            self.transmit_item(item, now);
                        }
                    }
                    Err(e) => self.events.push_back(Event::StoreError(e.to_string())),
                }
            }
            Body::Error(error) => {
                let code = ErrorCode::try_from(error.code).unwrap_or(ErrorCode::Unspecified);
                self.actions.push_back(Action::Disconnect);
                self.reset_connection();
                match code {
                    ErrorCode::TokenExpired => {
                        self.set_phase(Phase::Stopped(StopReason::TokenExpired))
                    }
                    ErrorCode::TokenInvalid
                    | ErrorCode::TokenMissing
                    | ErrorCode::DeviceMismatch => {
                        self.set_phase(Phase::Stopped(StopReason::AuthFailed(error.message)))
                    }
                    _ => self.schedule_reconnect(
                        now,
                        Duration::from_millis(u64::from(error.retry_after_ms)),
                    ),
                }
            }
            _ => self.fail_connection(now, Duration::ZERO),
        }
    }

    fn on_send_answer(&mut self, local_id: u64, body: Body, now: Instant) {
        match body {
            Body::SendAck(ack) => {
                self.transmitted.remove(&local_id);
                match self.store.outbox_acked(
                    &ack.client_msg_id,
                    ack.conversation_seq,
                    ack.server_msg_id,
                    ack.server_time_ms,
                ) {
                    Ok(acked) => {
                        if let Some(message) = acked {
                            self.events
                                .push_back(Event::MessageUpdated(message.clone()));
                            self.touch_conversation(&message, false);
                        }
                        // The server does not push our own entry back to this connection: the
                        // ack stands for it (SPEC §10.1). The message is stored now, so the
                        // entry only has to take its place in the cursor's order.
                        if ack.sender_inbox_seq > self.cursor {
                            let placeholder = pb::InboxEntry {
                                inbox_seq: ack.sender_inbox_seq,
                                body: None,
                            };
                            self.on_entries(vec![placeholder], now);
                        }
                    }
                    Err(e) => self.events.push_back(Event::StoreError(e.to_string())),
                }
            }
            Body::Error(error) => {
                let code = ErrorCode::try_from(error.code).unwrap_or(ErrorCode::Unspecified);
                if code.retryable() {
                    // Leave it in the outbox: a reconnect retransmits it. Reconnect soon so a
                    // rate limit or a draining server does not hold the message for long.
                    self.fail_connection(
                        now,
                        Duration::from_millis(u64::from(error.retry_after_ms)),
                    );
                } else {
                    let attempts = self.transmitted.remove(&local_id).unwrap_or(1);
                    self.fail_message(local_id, attempts);
                }
            }
            _ => {}
        }
    }

    // ----- receiving -----

    fn start_sync(&mut self, to_seq: u64, now: Instant) {
        self.sync_in_flight = true;
        self.sync_to = to_seq;
        let request = pb::SyncReq {
            from_seq: self.cursor + 1,
            limit: self.config.sync_page,
            to_seq,
        };
        self.send_frame(request, Some(Pending::Sync), now);
    }

    fn on_entries(&mut self, entries: Vec<pb::InboxEntry>, now: Instant) {
        for entry in entries {
            if entry.inbox_seq > self.cursor {
                self.buffered.insert(entry.inbox_seq, entry);
            }
        }
        // While a sync is running, pushes wait in the buffer: applying them now could move the
        // cursor past entries the sync has not delivered yet.
        if self.sync_in_flight {
            return;
        }
        self.drain_buffer(now);
        if let Some(&first) = self.buffered.keys().next() {
            // A gap below the first buffered entry: fetch exactly what is missing.
            self.start_sync(first - 1, now);
        }
    }

    /// Applies buffered entries that continue the cursor.
    fn drain_buffer(&mut self, now: Instant) {
        while let Some(entry) = self.buffered.remove(&(self.cursor + 1)) {
            self.apply(entry);
            self.cursor += 1;
        }
        let cursor = self.cursor;
        self.buffered.retain(|&seq, _| seq > cursor);
        self.commit_cursor(now);
    }

    /// Compares the server's inbox with the one the local state follows (SPEC §10.8): another
    /// epoch, or a head below the cursor, means the seqs the client holds will never come
    /// again, so it forgets what it learned and syncs from the start instead of waiting.
    fn check_inbox(&mut self, epoch: u64, head_seq: u64) {
        let other_epoch = epoch != 0 && self.inbox_epoch != 0 && epoch != self.inbox_epoch;
        if other_epoch || head_seq < self.cursor {
            tracing::warn!(
                local_epoch = self.inbox_epoch,
                server_epoch = epoch,
                cursor = self.cursor,
                head_seq,
                "the server's inbox was replaced: resetting local state and syncing from the start"
            );
            let epoch = if epoch != 0 { epoch } else { self.inbox_epoch };
            match self.store.reset_inbox(epoch) {
                Ok(()) => {
                    self.inbox_epoch = epoch;
                    self.cursor = 0;
                    self.acked_cursor = 0;
                    self.buffered.clear();
                    self.events.push_back(Event::InboxReset { epoch });
                }
                Err(e) => self.events.push_back(Event::StoreError(e.to_string())),
            }
        } else if epoch != 0 && self.inbox_epoch != epoch {
            // First contact (or a store from before epochs): adopt the server's.
            match self.store.set_inbox_epoch(epoch) {
                Ok(()) => self.inbox_epoch = epoch,
                Err(e) => self.events.push_back(Event::StoreError(e.to_string())),
            }
        }
    }

    fn commit_cursor(&mut self, now: Instant) {
        if self.cursor == self.acked_cursor {
            return;
        }
        match self.store.set_cursor(self.cursor) {
            Ok(()) => {
                self.acked_cursor = self.cursor;
                if self.connected() {
                    self.send_frame(
                        pb::DeliveryAck {
                            up_to_inbox_seq: self.cursor,
                        },
                        None,
                        now,
                    );
                }
            }
            Err(e) => self.events.push_back(Event::StoreError(e.to_string())),
        }
    }

    fn on_sync_answer(&mut self, body: Body, now: Instant) {
        let response = match body {
            Body::SyncResp(response) => response,
            _ => {
                // Retry through a reconnect rather than spin on a failing request.
                self.fail_connection(now, Duration::ZERO);
                return;
            }
        };
        if (response.inbox_epoch != 0 && response.inbox_epoch != self.inbox_epoch)
            || response.head_seq < self.cursor
        {
            // Not the inbox the cursor counts in: reset, and sync again from its start.
            self.check_inbox(response.inbox_epoch, response.head_seq);
            self.sync_in_flight = false;
            self.sync_to = 0;
            self.start_sync(0, now);
            return;
        }
        for range in &response.missing {
            if range.reason == pb::SeqRangeReason::Trimmed as i32
                && range.from_seq <= self.cursor + 1
                && range.to_seq > self.cursor
            {
                // Those entries will never come back: step over them instead of waiting.
                self.cursor = range.to_seq;
            }
        }
        for entry in response.entries {
            if entry.inbox_seq == self.cursor + 1 {
                self.apply(entry);
                self.cursor += 1;
            } else if entry.inbox_seq > self.cursor {
                self.buffered.insert(entry.inbox_seq, entry);
            }
        }
        self.drain_buffer(now);
        let target_reached = self.sync_to != 0 && self.cursor >= self.sync_to;
        if response.has_more && !target_reached && response.next_seq > self.cursor {
            // The server skipped ahead (should not happen with contiguous inboxes): follow it.
            self.cursor = response.next_seq - 1;
        }
        if response.has_more && !target_reached {
            let to = self.sync_to;
            self.start_sync(to, now);
            return;
        }
        self.sync_in_flight = false;
        self.sync_to = 0;
        self.drain_buffer(now);
        if let Some(&first) = self.buffered.keys().next() {
            self.start_sync(first - 1, now);
            return;
        }
        if self.phase == Phase::Syncing {
            self.set_phase(Phase::Online);
            self.events.push_back(Event::Synced {
                cursor: self.cursor,
            });
            // The server's unread counts are authoritative: refresh the local list once.
            let handle = self.next_handle;
            self.next_handle += 1;
            self.send_frame(
                pb::ConversationsReq {
                    limit: 0,
                    cursor: String::new(),
                },
                Some(Pending::Request { handle }),
                now,
            );
        }
    }

    /// Applies one inbox entry to the local store. Idempotent: applying it twice changes
    /// nothing the second time.
    fn apply(&mut self, entry: pb::InboxEntry) {
        let result = match entry.body {
            Some(pb::inbox_entry::Body::Message(message)) => self.apply_message(message),
            Some(pb::inbox_entry::Body::Recall(recall)) => self
                .store
                .recall_message(&recall.conversation_id, recall.conversation_seq)
                .map(|_| {
                    if let Ok(Some(mut conversation)) =
                        self.store.conversation(&recall.conversation_id)
                        && let Some(last) = &mut conversation.last_message
                        && last.seq == recall.conversation_seq
                    {
                        last.recalled = true;
                        last.content.clear();
                        self.save_conversation(conversation);
                    }
                    self.events.push_back(Event::MessageRecalled {
                        conversation_id: recall.conversation_id,
                        seq: recall.conversation_seq,
                    });
                }),
            Some(pb::inbox_entry::Body::ReadReceipt(receipt)) => {
                let mut conversation = self.conversation_or_new(&receipt.conversation_id);
                if receipt.read_seq > conversation.peer_read_seq {
                    conversation.peer_read_seq = receipt.read_seq;
                    self.save_conversation(conversation);
                }
                self.events.push_back(Event::ReadReceipt {
                    conversation_id: receipt.conversation_id,
                    reader: receipt.reader_user,
                    read_seq: receipt.read_seq,
                });
                Ok(())
            }
            Some(pb::inbox_entry::Body::ReadMarker(marker)) => {
                let mut conversation = self.conversation_or_new(&marker.conversation_id);
                if marker.read_seq >= conversation.read_seq {
                    conversation.read_seq = marker.read_seq;
                    conversation.unread_count = marker.unread_count;
                    self.save_conversation(conversation);
                }
                Ok(())
            }
            Some(pb::inbox_entry::Body::GroupEvent(event)) => {
                let conversation_id = ids::group_conversation_id(&event.group_id);
                let mut conversation = self.conversation_or_new(&conversation_id);
                if !event.group_name.is_empty() && conversation.title != event.group_name {
                    conversation.title = event.group_name.clone();
                    self.save_conversation(conversation);
                }
                self.events.push_back(Event::GroupChanged(event));
                Ok(())
            }
            Some(pb::inbox_entry::Body::Delete(delete)) => self
                .store
                .delete_messages(&delete.conversation_id, &delete.conversation_seqs)
                .map(|()| {
                    self.events.push_back(Event::MessagesDeleted {
                        conversation_id: delete.conversation_id,
                        seqs: delete.conversation_seqs,
                    });
                }),
            // An entry of a newer revision: it still takes its place in the seq order.
            None => Ok(()),
        };
        if let Err(e) = result {
            self.events.push_back(Event::StoreError(e.to_string()));
        }
    }

    fn apply_message(&mut self, message: pb::Message) -> LocalResult<()> {
        let own = message.sender_user == self.config.user_id;
        if own {
            // Our own send, seen through the inbox: it may be the ack we never received.
            if let Some(updated) = self.store.outbox_acked(
                &message.client_msg_id,
                message.conversation_seq,
                message.server_msg_id,
                message.server_time_ms,
            )? {
                self.events
                    .push_back(Event::MessageUpdated(updated.clone()));
                self.touch_conversation(&updated, false);
                return Ok(());
            }
        }
        let local = received_message(&message);
        if self.store.put_message(&local)? {
            self.events.push_back(Event::MessageReceived(local.clone()));
            self.touch_conversation(&local, !own);
        }
        Ok(())
    }

    fn conversation_or_new(&self, conversation_id: &str) -> LocalConversation {
        if let Ok(Some(conversation)) = self.store.conversation(conversation_id) {
            return conversation;
        }
        let peer = match ConversationRef::parse(conversation_id) {
            Ok(ConversationRef::Direct { low, high }) => {
                if low == self.config.user_id {
                    high.to_owned()
                } else {
                    low.to_owned()
                }
            }
            Ok(ConversationRef::Group { group_id }) => group_id.to_owned(),
            Err(_) => String::new(),
        };
        LocalConversation {
            conversation_id: conversation_id.to_owned(),
            peer,
            ..LocalConversation::default()
        }
    }

    /// Moves a conversation's preview forward for a newly stored message.
    fn touch_conversation(&mut self, message: &LocalMessage, counts_as_unread: bool) {
        let mut conversation = self.conversation_or_new(&message.conversation_id);
        if message.seq >= conversation.last_seq {
            conversation.last_seq = message.seq;
            conversation.last_message = Some(message.clone());
            conversation.updated_ms = conversation.updated_ms.max(message.time_ms);
        }
        if counts_as_unread && message.seq > conversation.read_seq {
            conversation.unread_count += 1;
        }
        self.save_conversation(conversation);
    }

    fn save_conversation(&mut self, conversation: LocalConversation) {
        match self.store.put_conversation(&conversation) {
            Ok(()) => self
                .events
                .push_back(Event::ConversationUpdated(conversation)),
            Err(e) => self.events.push_back(Event::StoreError(e.to_string())),
        }
    }

    /// Keeps the local store in step with what a response says.
    fn absorb_response(&mut self, body: &Body) {
        match body {
            Body::ConversationsResp(response) => {
                for summary in &response.conversations {
                    let mut conversation = self.conversation_or_new(&summary.conversation_id);
                    conversation.read_seq = summary.read_seq;
                    conversation.unread_count = summary.unread_count;
                    conversation.peer_read_seq =
                        conversation.peer_read_seq.max(summary.peer_read_seq);
                    if !summary.title.is_empty() {
                        conversation.title = summary.title.clone();
                    }
                    conversation.last_seq = conversation.last_seq.max(summary.last_seq);
                    conversation.updated_ms = conversation.updated_ms.max(summary.updated_ms);
                    self.save_conversation(conversation);
                }
            }
            Body::ReadMarkerResp(response) => {
                let mut conversation = self.conversation_or_new(&response.conversation_id);
                if response.read_seq >= conversation.read_seq {
                    conversation.read_seq = response.read_seq;
                    conversation.unread_count = response.unread_count;
                    self.save_conversation(conversation);
                }
            }
            Body::HistoryResp(response) => {
                for message in &response.messages {
                    let local = received_message(message);
                    if let Err(e) = self.store.put_message(&local) {
                        self.events.push_back(Event::StoreError(e.to_string()));
                    }
                }
            }
            _ => {}
        }
    }
}

/// A protocol error body as a readable line.
pub fn describe(error: &pb::Error) -> String {
    let code = ErrorCode::try_from(error.code)
        .map(|c| c.as_str_name())
        .unwrap_or("UNKNOWN");
    format!("{code}: {}", error.message)
}
