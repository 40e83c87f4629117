//! The simulated server: the server side of SPEC.md (handshake, ping, send with dedup and
//! fan-out, sync, delivery acks, read markers, pushes) as plain synchronous code over in-memory
//! state. It is sans-IO like the client: the world hands it frames and the time, it answers with
//! [`Out`] values the world turns into network traffic.
//!
//! Durable state (timelines, inboxes, dedup keys, markers) survives [`Server::restart`]; the
//! sessions (which connection is online for whom) do not.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use im_protocol::ids::{self, ConversationRef};
use im_protocol::pb::{self, ErrorCode};
use im_protocol::{Body, ErrorCodeExt as _, Frame};
use rand::Rng as _;
use rand::rngs::StdRng;

/// A connection's id, chosen by the world when the client starts connecting.
pub type ConnId = u64;

/// `HandshakeResp.heartbeat_interval_ms`.
pub const HEARTBEAT_MS: u32 = 30_000;
/// `HandshakeResp.idle_timeout_ms`; the server also closes connections silent this long.
pub const IDLE_TIMEOUT_MS: u32 = 90_000;
/// The handshake deadline (SPEC §5).
pub const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(5);
/// How long the server may hold back a push (the reorder fault) before flushing it.
pub const MAX_HOLD: Duration = Duration::from_secs(2);
/// The one static group of the simulation; every user is a member.
pub const GROUP: &str = "team";
/// Server clock at simulated time zero (Unix ms).
pub const EPOCH_MS: u64 = 1_700_000_000_000;

/// Server-side faults, each a probability per opportunity. All of them are allowed by the spec.
#[derive(Clone, Debug, Default)]
pub struct ServerFaults {
    /// Hold a push back and send it after a later one (pushes out of inbox-seq order, §10.5).
    pub hold_push: f64,
    /// Push the same entries a second time.
    pub duplicate_push: f64,
    /// Re-push a random range of old entries.
    pub repush_old: f64,
    /// Push the newest entries before the `HandshakeResp` (a push may overtake a response, §9).
    pub early_push: f64,
    /// Answer a `SendReq` with the retryable `UNAVAILABLE` without executing it (§14).
    pub send_unavailable: f64,
    /// Answer a `SyncReq` with `UNAVAILABLE`.
    pub sync_unavailable: f64,
    /// Lose a push on a healthy connection (push is best-effort, §10.5): only the inbox head in
    /// the next `PONG` (§8.1) or a later push tells the client.
    pub lose_push: f64,
}

/// What the server wants done on the network.
#[derive(Debug)]
pub enum Out {
    /// Write this frame to the connection.
    Frame(ConnId, Frame),
    /// Close the connection (after the frames written before).
    Close(ConnId),
}

/// A committed send, for dedup: the original ack and what it was sent with.
struct StoredSend {
    ack: pb::SendAck,
    conversation_id: String,
    content_type: u32,
    content: Vec<u8>,
}

struct Session {
    /// Accept order: "older connection" in the duplicate-login rule means accepted earlier.
    accepted: u64,
    accepted_at: Duration,
    /// (user, device) once the handshake succeeded.
    auth: Option<(String, String)>,
    last_received: Duration,
    /// Pushes held back by the reorder fault.
    held: Vec<pb::InboxEntry>,
    held_since: Option<Duration>,
}

/// Counters for the run summary.
#[derive(Clone, Debug, Default)]
pub struct ServerStats {
    pub committed: u64,
    pub duplicate_sends: u64,
    pub unavailable: u64,
    pub kicks: u64,
    pub idle_closes: u64,
    pub held_pushes: u64,
    pub duplicate_pushes: u64,
    pub early_pushes: u64,
    pub lost_pushes: u64,
}

/// The simulated server.
pub struct Server {
    /// The inbox epoch (SPEC §10.8): changes when the durable state is replaced.
    pub inbox_epoch: u64,
    /// Inbox per user: index `i` holds `inbox_seq` `i + 1`.
    pub inboxes: BTreeMap<String, Vec<pb::InboxEntry>>,
    /// Storage timeline per conversation: index `i` holds `conversation_seq` `i + 1`.
    pub timelines: BTreeMap<String, Vec<pb::Message>>,
    sends: BTreeMap<(String, String), StoredSend>,
    next_server_msg_id: u64,
    /// Delivery cursor per (user, device).
    pub delivery: BTreeMap<(String, String), u64>,
    read_markers: BTreeMap<(String, String), u64>,
    /// Members of [`GROUP`], fixed at setup.
    pub group_members: Vec<String>,
    sessions: BTreeMap<ConnId, Session>,
    accepts: u64,
    pub faults: ServerFaults,
    /// Things a correct client never makes the server see (bad frames, bad requests).
    pub violations: Vec<String>,
    /// Sends answered with an injected `UNAVAILABLE`: the spec lets later sends overtake them.
    pub unavailable_sends: BTreeSet<(String, String)>,
    pub stats: ServerStats,
}

fn error(code: ErrorCode, message: &str, retry_after_ms: u32) -> pb::Error {
    let mut error = code.to_error(message);
    error.retry_after_ms = retry_after_ms;
    error
}

impl Server {
    /// A server with empty state and `group_members` in [`GROUP`].
    pub fn new(group_members: Vec<String>) -> Server {
        Server {
            inbox_epoch: 1,
            inboxes: BTreeMap::new(),
            timelines: BTreeMap::new(),
            sends: BTreeMap::new(),
            next_server_msg_id: 1,
            delivery: BTreeMap::new(),
            read_markers: BTreeMap::new(),
            group_members,
            sessions: BTreeMap::new(),
            accepts: 0,
            faults: ServerFaults::default(),
            violations: Vec::new(),
            unavailable_sends: BTreeSet::new(),
            stats: ServerStats::default(),
        }
    }

    /// The user's inbox head.
    pub fn head(&self, user: &str) -> u64 {
        self.inboxes.get(user).map_or(0, |inbox| inbox.len() as u64)
    }

    /// The committed message with this sender and client msg id, as (conversation, seq).
    pub fn find_send(&self, user: &str, client_msg_id: &str) -> Option<(String, u64)> {
        self.sends
            .get(&(user.to_owned(), client_msg_id.to_owned()))
            .map(|s| (s.conversation_id.clone(), s.ack.conversation_seq))
    }

    /// The message at (conversation, seq).
    pub fn message(&self, conversation_id: &str, seq: u64) -> Option<&pb::Message> {
        let index = usize::try_from(seq.checked_sub(1)?).ok()?;
        self.timelines.get(conversation_id)?.get(index)
    }

    /// Users party to a conversation.
    pub fn participants(&self, conversation_id: &str) -> Vec<String> {
        match ConversationRef::parse(conversation_id) {
            Ok(ConversationRef::Direct { low, high }) if low == high => vec![low.to_owned()],
            Ok(ConversationRef::Direct { low, high }) => vec![low.to_owned(), high.to_owned()],
            Ok(ConversationRef::Group { group_id }) if group_id == GROUP => {
                self.group_members.clone()
            }
            _ => Vec::new(),
        }
    }

    /// Whether any push is held back.
    pub fn holds_pushes(&self) -> bool {
        self.sessions.values().any(|s| !s.held.is_empty())
    }

    /// A transport connection was accepted.
    pub fn accept(&mut self, conn: ConnId, now: Duration) {
        self.accepts += 1;
        self.sessions.insert(
            conn,
            Session {
                accepted: self.accepts,
                accepted_at: now,
                auth: None,
                last_received: now,
                held: Vec::new(),
                held_since: None,
            },
        );
    }

    /// The transport of `conn` closed (seen from the server).
    pub fn on_closed(&mut self, conn: ConnId) {
        self.sessions.remove(&conn);
    }

    /// The process restarts: every session is gone; durable state stays. Returns the
    /// connections that were open.
    pub fn restart(&mut self) -> Vec<ConnId> {
        let conns = self.sessions.keys().copied().collect();
        self.sessions.clear();
        conns
    }

    /// The durable state is replaced by an empty one, as when a server is restored from a
    /// backup taken before anything was written, or its volume is wiped: every session is
    /// gone and the inbox epoch changes. Returns the connections that were open.
    pub fn restore_empty(&mut self) -> Vec<ConnId> {
        let conns = self.restart();
        let members = std::mem::take(&mut self.group_members);
        let epoch = self.inbox_epoch + 1;
        let faults = self.faults.clone();
        let stats = self.stats.clone();
        *self = Server::new(members);
        self.inbox_epoch = epoch;
        self.faults = faults;
        self.stats = stats;
        conns
    }

    /// When [`Server::on_timeout`] should run next.
    pub fn next_timeout(&self) -> Option<Duration> {
        self.sessions
            .values()
            .flat_map(|s| {
                let idle =
                    Some(s.last_received + Duration::from_millis(u64::from(IDLE_TIMEOUT_MS)));
                let deadline = s.auth.is_none().then(|| s.accepted_at + HANDSHAKE_DEADLINE);
                let hold = s.held_since.map(|t| t + MAX_HOLD);
                [idle, deadline, hold]
            })
            .flatten()
            .min()
    }

    /// Idle timeouts, handshake deadlines, held pushes.
    pub fn on_timeout(&mut self, now: Duration, out: &mut Vec<Out>) {
        let conns: Vec<ConnId> = self.sessions.keys().copied().collect();
        for conn in conns {
            let Some(session) = self.sessions.get_mut(&conn) else {
                continue;
            };
            if now >= session.last_received + Duration::from_millis(u64::from(IDLE_TIMEOUT_MS)) {
                // Closed without an error frame (§8.2).
                self.stats.idle_closes += 1;
                self.close(conn, out);
                continue;
            }
            if session.auth.is_none() && now >= session.accepted_at + HANDSHAKE_DEADLINE {
                out.push(Out::Frame(
                    conn,
                    Frame::new(
                        0,
                        error(ErrorCode::HandshakeTimeout, "handshake deadline", 0),
                    ),
                ));
                self.close(conn, out);
                continue;
            }
            if session.held_since.is_some_and(|t| now >= t + MAX_HOLD) {
                let held = std::mem::take(&mut session.held);
                session.held_since = None;
                out.push(Out::Frame(conn, Frame::push(pb::Push { entries: held })));
            }
        }
    }

    fn close(&mut self, conn: ConnId, out: &mut Vec<Out>) {
        self.sessions.remove(&conn);
        out.push(Out::Close(conn));
    }

    fn violation(&mut self, conn: ConnId, what: String) {
        let who = self.sessions.get(&conn).and_then(|s| s.auth.clone());
        self.violations
            .push(format!("conn {conn} ({who:?}): {what}"));
    }

    /// A frame from a client.
    pub fn on_frame(
        &mut self,
        conn: ConnId,
        frame: Frame,
        now: Duration,
        rng: &mut StdRng,
        out: &mut Vec<Out>,
    ) {
        let Some(session) = self.sessions.get_mut(&conn) else {
            return;
        };
        session.last_received = now;
        let auth = session.auth.clone();
        let rid = frame.request_id;
        if frame.is_push() || rid == 0 {
            self.violation(
                conn,
                format!(
                    "BAD_FRAME: op {} flags {:?} request id {rid}",
                    frame.op, frame.flags
                ),
            );
            out.push(Out::Frame(
                conn,
                Frame::error(0, ErrorCode::BadFrame, "push flag or request id 0"),
            ));
            self.close(conn, out);
            return;
        }
        let body = match frame.decode_body() {
            Ok(body) => body,
            Err(e) => {
                self.violation(conn, format!("undecodable frame: {e}"));
                out.push(Out::Frame(conn, Frame::error(rid, e.code(), e.to_string())));
                return;
            }
        };
        let Some((user, device)) = auth else {
            match body {
                Body::HandshakeReq(request) => self.handshake(conn, rid, request, now, rng, out),
                other => {
                    self.violation(conn, format!("{other:?} before the handshake"));
                    out.push(Out::Frame(
                        conn,
                        Frame::error(rid, ErrorCode::NotAuthenticated, "handshake first"),
                    ));
                    self.close(conn, out);
                }
            }
            return;
        };
        match body {
            Body::HandshakeReq(_) => {
                self.violation(conn, "second handshake".into());
                out.push(Out::Frame(
                    conn,
                    Frame::error(rid, ErrorCode::AlreadyAuthenticated, "already"),
                ));
            }
            Body::Ping(ping) => {
                let pong = pb::Pong {
                    client_time_ms: ping.client_time_ms,
                    server_time_ms: EPOCH_MS + now.as_millis() as u64,
                    inbox_head_seq: self.head(&user),
                    inbox_epoch: self.inbox_epoch,
                };
                out.push(Out::Frame(conn, Frame::new(rid, pong)));
            }
            Body::Goodbye(_) => self.close(conn, out),
            Body::SendReq(request) => self.send(conn, rid, &user, &device, request, now, rng, out),
            Body::SyncReq(_) if rng.random_bool(self.faults.sync_unavailable) => {
                self.stats.unavailable += 1;
                let error = error(
                    ErrorCode::Unavailable,
                    "simulated storage hiccup",
                    rng.random_range(0..2000),
                );
                out.push(Out::Frame(conn, Frame::new(rid, error)));
            }
            Body::SyncReq(request) => self.sync(conn, rid, &user, request, out),
            Body::DeliveryAck(ack) => {
                if ack.up_to_inbox_seq > self.head(&user) {
                    self.violation(
                        conn,
                        format!(
                            "delivery ack {} above head {}",
                            ack.up_to_inbox_seq,
                            self.head(&user)
                        ),
                    );
                    out.push(Out::Frame(
                        conn,
                        Frame::error(rid, ErrorCode::InvalidArgument, "above head"),
                    ));
                } else {
                    let cursor = self.delivery.entry((user, device)).or_default();
                    *cursor = (*cursor).max(ack.up_to_inbox_seq);
                }
            }
            Body::ConversationsReq(_) => {
                // The simulation does not model the conversation list: an empty last page.
                out.push(Out::Frame(
                    conn,
                    Frame::new(rid, pb::ConversationsResp::default()),
                ));
            }
            Body::ReadMarkerReq(request) => {
                self.read_marker(conn, rid, &user, request, now, rng, out)
            }
            Body::Typing(_) => {}
            other => {
                out.push(Out::Frame(
                    conn,
                    Frame::error(
                        rid,
                        ErrorCode::UnknownOp,
                        format!("not simulated: {other:?}"),
                    ),
                ));
            }
        }
    }

    fn handshake(
        &mut self,
        conn: ConnId,
        rid: u32,
        request: pb::HandshakeReq,
        now: Duration,
        rng: &mut StdRng,
        out: &mut Vec<Out>,
    ) {
        let Some(user) = request
            .token
            .strip_prefix("user:")
            .filter(|u| ids::validate_id(u, "user").is_ok())
        else {
            self.violation(conn, format!("bad token {:?}", request.token));
            out.push(Out::Frame(
                conn,
                Frame::error(rid, ErrorCode::TokenInvalid, "bad token"),
            ));
            self.close(conn, out);
            return;
        };
        let user = user.to_owned();
        let device = request.device_id.clone();
        if ids::validate_id(&device, "device").is_err() {
            self.violation(conn, format!("bad device id {device:?}"));
            out.push(Out::Frame(
                conn,
                Frame::error(rid, ErrorCode::InvalidArgument, "device id"),
            ));
            return;
        }
        // Duplicate login: the older connection (by accept order) is kicked.
        let accepted = self.sessions[&conn].accepted;
        let same: Vec<(ConnId, u64)> = self
            .sessions
            .iter()
            .filter(|(c, s)| {
                **c != conn && s.auth.as_ref() == Some(&(user.clone(), device.clone()))
            })
            .map(|(c, s)| (*c, s.accepted))
            .collect();
        for (other, other_accepted) in same {
            let victim = if other_accepted < accepted {
                other
            } else {
                conn
            };
            self.stats.kicks += 1;
            let kick = pb::Kick {
                reason: pb::KickReason::LoggedInElsewhere as i32,
                ..Default::default()
            };
            out.push(Out::Frame(victim, Frame::push(kick)));
            self.close(victim, out);
            if victim == conn {
                return;
            }
        }
        let session = self.sessions.get_mut(&conn).expect("checked above");
        session.auth = Some((user.clone(), device.clone()));
        let head = self.head(&user);
        if head > 0 && rng.random_bool(self.faults.early_push) {
            // Registered for pushes before the response is written: a push may overtake it.
            self.stats.early_pushes += 1;
            let from = head.saturating_sub(rng.random_range(0..3)).max(1);
            let entries = self.inboxes[&user][(from - 1) as usize..].to_vec();
            out.push(Out::Frame(conn, Frame::push(pb::Push { entries })));
        }
        let response = pb::HandshakeResp {
            user_id: user,
            device_id: device,
            protocol_version: im_protocol::PROTOCOL_REVISION,
            server_time_ms: EPOCH_MS + now.as_millis() as u64,
            heartbeat_interval_ms: HEARTBEAT_MS,
            idle_timeout_ms: IDLE_TIMEOUT_MS,
            max_frame_bytes: im_protocol::DEFAULT_MAX_BODY as u32,
            max_message_bytes: 65_536,
            inbox_head_seq: head,
            session_id: format!("s{conn}"),
            compression: pb::Compression::None as i32,
            compression_threshold_bytes: 8192,
            inbox_epoch: self.inbox_epoch,
        };
        out.push(Out::Frame(conn, Frame::new(rid, response)));
    }

    fn append(&mut self, user: &str, body: pb::inbox_entry::Body) -> pb::InboxEntry {
        let inbox = self.inboxes.entry(user.to_owned()).or_default();
        let entry = pb::InboxEntry {
            inbox_seq: inbox.len() as u64 + 1,
            body: Some(body),
        };
        inbox.push(entry.clone());
        entry
    }

    #[allow(clippy::too_many_arguments)]
    fn send(
        &mut self,
        conn: ConnId,
        rid: u32,
        user: &str,
        device: &str,
        request: pb::SendReq,
        now: Duration,
        rng: &mut StdRng,
        out: &mut Vec<Out>,
    ) {
        let mut refuse = |server: &mut Server, code: ErrorCode, what: String| {
            server.violation(conn, format!("send refused with {code:?}: {what}"));
            out.push(Out::Frame(conn, Frame::error(rid, code, what)));
        };
        let (conversation_id, participants) = match &request.target {
            Some(pb::send_req::Target::ToUser(peer)) if ids::validate_id(peer, "user").is_ok() => {
                let conversation_id = ids::direct_conversation_id(user, peer);
                let participants = self.participants(&conversation_id);
                (conversation_id, participants)
            }
            Some(pb::send_req::Target::ToGroup(group)) if group == GROUP => {
                if !self.group_members.iter().any(|m| m == user) {
                    return refuse(self, ErrorCode::Forbidden, "not a member".into());
                }
                (
                    ids::group_conversation_id(group),
                    self.group_members.clone(),
                )
            }
            other => {
                return refuse(
                    self,
                    ErrorCode::InvalidArgument,
                    format!("target {other:?}"),
                );
            }
        };
        if request.client_msg_id.is_empty()
            || request.client_msg_id.len() > ids::MAX_CLIENT_MSG_ID_LEN
        {
            return refuse(self, ErrorCode::InvalidArgument, "client_msg_id".into());
        }
        let key = (user.to_owned(), request.client_msg_id.clone());
        if let Some(stored) = self.sends.get(&key) {
            if stored.conversation_id == conversation_id
                && stored.content_type == request.content_type
                && stored.content == request.content
            {
                self.stats.duplicate_sends += 1;
                let ack = pb::SendAck {
                    duplicate: true,
                    ..stored.ack.clone()
                };
                out.push(Out::Frame(conn, Frame::new(rid, ack)));
            } else {
                refuse(
                    self,
                    ErrorCode::ClientMsgIdConflict,
                    request.client_msg_id.clone(),
                );
            }
            return;
        }
        if rng.random_bool(self.faults.send_unavailable) {
            self.stats.unavailable += 1;
            self.unavailable_sends.insert(key);
            let error = error(
                ErrorCode::Unavailable,
                "simulated storage hiccup",
                rng.random_range(0..2000),
            );
            out.push(Out::Frame(conn, Frame::new(rid, error)));
            return;
        }
        // Store, then acknowledge, then push (§10.1).
        let timeline = self.timelines.entry(conversation_id.clone()).or_default();
        let message = pb::Message {
            conversation_id: conversation_id.clone(),
            sender_user: user.to_owned(),
            sender_device: device.to_owned(),
            server_msg_id: self.next_server_msg_id,
            conversation_seq: timeline.len() as u64 + 1,
            server_time_ms: EPOCH_MS + now.as_millis() as u64,
            client_msg_id: request.client_msg_id.clone(),
            content_type: request.content_type,
            content: request.content.clone(),
            recalled: false,
            ..Default::default()
        };
        timeline.push(message.clone());
        self.next_server_msg_id += 1;
        self.stats.committed += 1;
        let mut fanout = Vec::new();
        let mut sender_inbox_seq = 0;
        for participant in &participants {
            let entry = self.append(participant, pb::inbox_entry::Body::Message(message.clone()));
            if participant == user {
                sender_inbox_seq = entry.inbox_seq;
            }
            fanout.push((participant.clone(), entry));
        }
        let ack = pb::SendAck {
            client_msg_id: request.client_msg_id.clone(),
            conversation_id: conversation_id.clone(),
            server_msg_id: message.server_msg_id,
            conversation_seq: message.conversation_seq,
            server_time_ms: message.server_time_ms,
            duplicate: false,
            sender_inbox_seq,
        };
        self.sends.insert(
            key,
            StoredSend {
                ack: ack.clone(),
                conversation_id,
                content_type: request.content_type,
                content: request.content,
            },
        );
        // A push may overtake the ack (§9).
        let ack_first = rng.random_bool(0.5);
        if ack_first {
            out.push(Out::Frame(conn, Frame::new(rid, ack.clone())));
        }
        for (participant, entry) in fanout {
            // The sending connection is not pushed its own entry: the ack stands for it (§10.1).
            let skip = (participant == user).then_some(conn);
            self.push(&participant, vec![entry], skip, now, rng, out);
        }
        if !ack_first {
            out.push(Out::Frame(conn, Frame::new(rid, ack)));
        }
    }

    /// Pushes `entries` to every online connection of `user`, with the push faults.
    fn push(
        &mut self,
        user: &str,
        entries: Vec<pb::InboxEntry>,
        skip: Option<ConnId>,
        now: Duration,
        rng: &mut StdRng,
        out: &mut Vec<Out>,
    ) {
        let conns: Vec<ConnId> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.auth.as_ref().is_some_and(|(u, _)| u == user))
            .map(|(c, _)| *c)
            .filter(|c| Some(*c) != skip)
            .collect();
        for conn in conns {
            let faults = self.faults.clone();
            let session = self.sessions.get_mut(&conn).expect("listed above");
            if rng.random_bool(faults.lose_push) {
                self.stats.lost_pushes += 1;
                continue;
            }
            if rng.random_bool(faults.hold_push) {
                self.stats.held_pushes += 1;
                session.held.extend(entries.iter().cloned());
                session.held_since.get_or_insert(now);
                continue;
            }
            out.push(Out::Frame(
                conn,
                Frame::push(pb::Push {
                    entries: entries.clone(),
                }),
            ));
            if !session.held.is_empty() {
                // The held (older) entries follow the newer ones: out of seq order.
                let held = std::mem::take(&mut session.held);
                session.held_since = None;
                out.push(Out::Frame(conn, Frame::push(pb::Push { entries: held })));
            }
            if rng.random_bool(faults.duplicate_push) {
                self.stats.duplicate_pushes += 1;
                out.push(Out::Frame(
                    conn,
                    Frame::push(pb::Push {
                        entries: entries.clone(),
                    }),
                ));
            }
            let first = entries.first().map_or(1, |e| e.inbox_seq);
            if first > 1 && rng.random_bool(faults.repush_old) {
                self.stats.duplicate_pushes += 1;
                let from = rng.random_range(1..first);
                let to = rng.random_range(from..first);
                let old = self.inboxes[user][(from - 1) as usize..to as usize].to_vec();
                out.push(Out::Frame(conn, Frame::push(pb::Push { entries: old })));
            }
        }
    }

    fn sync(
        &mut self,
        conn: ConnId,
        rid: u32,
        user: &str,
        request: pb::SyncReq,
        out: &mut Vec<Out>,
    ) {
        let head = self.head(user);
        let limit = if request.limit == 0 {
            200
        } else {
            u64::from(request.limit)
        };
        if limit > 1000 {
            self.violation(conn, format!("sync limit {limit}"));
            out.push(Out::Frame(
                conn,
                Frame::error(rid, ErrorCode::PageTooLarge, "limit"),
            ));
            return;
        }
        let from = request.from_seq.max(1);
        let to = request.to_seq;
        if to != 0 && to < from {
            self.violation(conn, format!("sync to {to} < from {from}"));
            out.push(Out::Frame(
                conn,
                Frame::error(rid, ErrorCode::InvalidArgument, "to_seq < from_seq"),
            ));
            return;
        }
        let hi = if to == 0 { head } else { to.min(head) };
        let last = hi.min(from + limit - 1);
        let (entries, has_more, next_seq) = if from <= last {
            let entries = self.inboxes[user][(from - 1) as usize..last as usize].to_vec();
            (entries, last < hi, last + 1)
        } else {
            (Vec::new(), false, from)
        };
        let mut missing = Vec::new();
        if to > head {
            missing.push(pb::SeqRange {
                from_seq: from.max(head + 1),
                to_seq: to,
                reason: pb::SeqRangeReason::NotYet as i32,
            });
        }
        let response = pb::SyncResp {
            entries,
            head_seq: head,
            has_more,
            next_seq,
            missing,
            inbox_epoch: self.inbox_epoch,
        };
        out.push(Out::Frame(conn, Frame::new(rid, response)));
    }

    #[allow(clippy::too_many_arguments)]
    fn read_marker(
        &mut self,
        conn: ConnId,
        rid: u32,
        user: &str,
        request: pb::ReadMarkerReq,
        now: Duration,
        rng: &mut StdRng,
        out: &mut Vec<Out>,
    ) {
        let participants = self.participants(&request.conversation_id);
        if !participants.iter().any(|p| p == user) {
            self.violation(conn, format!("read marker for {}", request.conversation_id));
            out.push(Out::Frame(
                conn,
                Frame::error(rid, ErrorCode::Forbidden, "not a party"),
            ));
            return;
        }
        let conversation_id = request.conversation_id;
        let timeline: &[pb::Message] = self
            .timelines
            .get(&conversation_id)
            .map_or(&[], |t| t.as_slice());
        let read_seq_wanted = request.read_seq.min(timeline.len() as u64);
        let key = (user.to_owned(), conversation_id.clone());
        let current = self.read_markers.get(&key).copied().unwrap_or(0);
        let read_seq = current.max(read_seq_wanted);
        let unread_count = timeline
            .iter()
            .filter(|m| m.sender_user != user && m.conversation_seq > read_seq)
            .count() as u64;
        if read_seq > current {
            self.read_markers.insert(key, read_seq);
            let marker = pb::ReadMarkerSync {
                conversation_id: conversation_id.clone(),
                read_seq,
                unread_count,
            };
            let own = self.append(user, pb::inbox_entry::Body::ReadMarker(marker));
            let peer = ConversationRef::parse(&conversation_id)
                .ok()
                .and_then(|c| c.peer_of(user).map(str::to_owned));
            let receipt = peer.filter(|p| p != user).map(|peer| {
                let receipt = pb::ReadReceipt {
                    conversation_id: conversation_id.clone(),
                    reader_user: user.to_owned(),
                    read_seq,
                    server_time_ms: EPOCH_MS + now.as_millis() as u64,
                };
                let entry = self.append(&peer, pb::inbox_entry::Body::ReadReceipt(receipt));
                (peer, entry)
            });
            out.push(Out::Frame(
                conn,
                Frame::new(
                    rid,
                    pb::ReadMarkerResp {
                        conversation_id,
                        read_seq,
                        unread_count,
                    },
                ),
            ));
            self.push(user, vec![own], None, now, rng, out);
            if let Some((peer, entry)) = receipt {
                self.push(&peer, vec![entry], None, now, rng, out);
            }
        } else {
            out.push(Out::Frame(
                conn,
                Frame::new(
                    rid,
                    pb::ReadMarkerResp {
                        conversation_id,
                        read_seq,
                        unread_count,
                    },
                ),
            ));
        }
    }
}
