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

use im_protocol::Frame;
use im_protocol::pb;
use rand::SeedableRng as _;
use rand::rngs::StdRng;

use crate::store::{LocalConversation, LocalMessage, LocalResult, LocalStore};
use crate::types::{GroupEvent, Platform, RequestError, RequestHandle, Response, TypingEvent};

mod commands;
mod convert;
mod outputs;
mod read_groups;
mod receiving;
mod transport;

/// Settings of the client core.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// The logged-in user (the token's subject).
    pub user_id: String,
    /// This device.
    pub device_id: String,
    /// Platform reported in the handshake.
    pub platform: Platform,
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
            platform: Platform::Desktop,
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
    GroupChanged(GroupEvent),
    /// Someone is (or stopped) typing.
    Typing(TypingEvent),
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
    Send {
        local_id: u64,
    },
    Sync,
    Request {
        handle: RequestHandle,
    },
    /// A page of a read-fan-out group's timeline (SPEC §13.12).
    CatchUp {
        conversation_id: String,
    },
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
    /// Read-fan-out groups followed by conversation seq, by conversation id.
    read_groups: BTreeMap<String, read_groups::ReadGroup>,
    // Outputs.
    transmit: VecDeque<Frame>,
    actions: VecDeque<Action>,
    events: VecDeque<Event>,
    responses: VecDeque<(RequestHandle, Result<Response, RequestError>)>,
    next_handle: RequestHandle,
    /// Since when the driver has not been reading frames (the app is behind on events).
    receiving_paused_since: Option<Instant>,
    /// Where the next connection goes, when a draining server named another address
    /// (`Kick.redirect_addr`); the driver takes it once and keeps using it.
    redirect: Option<crate::transport::ServerAddress>,
}

impl<S: LocalStore> Client<S> {
    /// A client over `store`, offline until [`Client::connect`].
    pub fn new(config: ClientConfig, store: S, now: Instant) -> LocalResult<Client<S>> {
        let cursor = store.cursor()?;
        let inbox_epoch = store.inbox_epoch()?;
        let read_groups = store
            .read_group_positions()?
            .into_iter()
            .map(|(id, position)| {
                let group = read_groups::ReadGroup {
                    position,
                    ..read_groups::ReadGroup::default()
                };
                (id, group)
            })
            .collect();
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
            read_groups,
            transmit: VecDeque::new(),
            actions: VecDeque::new(),
            events: VecDeque::new(),
            responses: VecDeque::new(),
            next_handle: 1,
            receiving_paused_since: None,
            redirect: None,
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
}
