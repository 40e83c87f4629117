//! A single client driven by hand, frame by frame, for scenarios that need an exact
//! interleaving (a push during a sync, a gap, a reconnect schedule). The test plays the server.

use std::time::{Duration, Instant};

use im_protocol::{Body, Frame, pb};
use sdk_core::memory::MemoryStore;
use sdk_core::{Action, Client, ClientConfig, ConnectionState};

use super::server::{EPOCH_MS, HEARTBEAT_MS, IDLE_TIMEOUT_MS};

/// A client under a scripted server.
pub struct Scripted {
    pub client: Client<MemoryStore>,
    base: Instant,
    pub now: Duration,
}

impl Scripted {
    /// A client for `user` on `device` whose jitter generator starts from `seed`; it has asked
    /// to connect (its `Action::Connect` is taken).
    pub fn new(user: &str, device: &str, seed: u64) -> Scripted {
        let base = Instant::now();
        let mut config = ClientConfig::new(user, device);
        config.seed = seed;
        let mut client = Client::new(config, MemoryStore::new(), base).expect("memory store");
        client.set_token(format!("user:{user}"), base);
        client.connect(base);
        assert_eq!(client.poll_action(), Some(Action::Connect));
        Scripted {
            client,
            base,
            now: Duration::ZERO,
        }
    }

    /// The simulated instant.
    pub fn at(&self) -> Instant {
        self.base + self.now
    }

    /// Moves the clock forward and fires the machine's timer if it is due.
    pub fn advance(&mut self, by: Duration) {
        self.now += by;
        let now = self.at();
        if self.client.next_timeout().is_some_and(|t| t <= now) {
            self.client.on_timeout(now);
        }
    }

    /// Moves the clock to the machine's next timeout and fires it; returns how far it moved.
    pub fn fire_next_timeout(&mut self) -> Duration {
        let t = self.client.next_timeout().expect("a timer is set");
        let by = t.saturating_duration_since(self.at());
        self.now += by;
        self.client.on_timeout(self.at());
        by
    }

    /// Frames the client wrote, decoded, with their request ids.
    pub fn sent(&mut self) -> Vec<(u32, Body)> {
        let mut frames = Vec::new();
        while let Some(frame) = self.client.poll_transmit() {
            frames.push((
                frame.request_id,
                frame.decode_body().expect("the client writes valid frames"),
            ));
        }
        frames
    }

    /// Transport actions the client asked for.
    pub fn actions(&mut self) -> Vec<Action> {
        let mut actions = Vec::new();
        while let Some(action) = self.client.poll_action() {
            actions.push(action);
        }
        actions
    }

    /// Answers request `request_id` with `body`.
    pub fn reply(&mut self, request_id: u32, body: impl Into<Body>) {
        let now = self.at();
        self.client.on_frame(Frame::new(request_id, body), now);
    }

    /// Pushes `entries`.
    pub fn push(&mut self, entries: Vec<pb::InboxEntry>) {
        let now = self.at();
        self.client.on_frame(Frame::push(pb::Push { entries }), now);
    }

    /// Opens the transport and completes the handshake with the given inbox head; returns what
    /// the client sent after the handshake (its sync request first).
    pub fn handshake(&mut self, head: u64) -> Vec<(u32, Body)> {
        let now = self.at();
        self.client.on_connected(now);
        let sent = self.sent();
        let [(rid, Body::HandshakeReq(hello))] = sent.as_slice() else {
            panic!("expected a handshake, got {sent:?}")
        };
        let response = pb::HandshakeResp {
            user_id: self.client.config().user_id.clone(),
            device_id: hello.device_id.clone(),
            protocol_version: 1,
            heartbeat_interval_ms: HEARTBEAT_MS,
            idle_timeout_ms: IDLE_TIMEOUT_MS,
            inbox_head_seq: head,
            server_time_ms: EPOCH_MS,
            ..Default::default()
        };
        let rid = *rid;
        self.reply(rid, response);
        assert_eq!(self.client.state(), ConnectionState::Syncing);
        self.sent()
    }
}

/// An inbox entry carrying message `conversation_seq` of `conversation_id` from `sender`.
pub fn message_entry(
    inbox_seq: u64,
    conversation_id: &str,
    conversation_seq: u64,
    sender: &str,
) -> pb::InboxEntry {
    pb::InboxEntry {
        inbox_seq,
        body: Some(pb::inbox_entry::Body::Message(pb::Message {
            conversation_id: conversation_id.into(),
            sender_user: sender.into(),
            sender_device: format!("{sender}-phone"),
            server_msg_id: 1000 + inbox_seq,
            conversation_seq,
            server_time_ms: EPOCH_MS + inbox_seq,
            client_msg_id: format!("{sender}-m{conversation_seq}"),
            content: format!("message {conversation_seq}").into_bytes(),
            ..Default::default()
        })),
    }
}

/// A sync response with `entries` and the given head.
pub fn sync_resp(entries: Vec<pb::InboxEntry>, head: u64, has_more: bool) -> pb::SyncResp {
    let next_seq = entries.last().map_or(0, |e| e.inbox_seq + 1);
    pb::SyncResp {
        entries,
        head_seq: head,
        has_more,
        next_seq,
        missing: Vec::new(),
        inbox_epoch: 0,
        read_groups: Vec::new(),
    }
}
