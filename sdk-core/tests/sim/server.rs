//! The server of the simulation: the real one, sans IO. Each connection is the gateway's
//! [`Session`] (frame rules, handshake checks, deadlines) registered in the gateway's [`Hub`]
//! (duplicate logins, pushes, pong heads), and every request goes to the real [`Logic`] over the
//! in-memory [`MemoryStore`], on a simulated clock. Only the connection tasks are replaced: the
//! world hands this frames and the time, it answers with [`Out`] values the world turns into
//! network traffic, draining each connection's outbound queue in connection order so a run
//! replays exactly.
//!
//! On top of the real server sit the faults the spec allows a server (held, duplicated, lost
//! and early pushes; a retryable `UNAVAILABLE` instead of executing a send or a sync), so the
//! client is tested against every behaviour a conforming server may show, not only ours.
//!
//! Durable state (the store) survives [`Server::restart`]; the sessions do not.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::FutureExt as _;
use futures::executor::block_on;
use gateway::auth::{Claims, TokenKey};
use gateway::hub::{ConnHandle, Hub, Registration};
use gateway::outbox::{Outbound, Outbox};
use gateway::session::{Announced, Session, SessionConfig, Verdict};
use im_protocol::ids::{self, ConversationRef};
use im_protocol::pb::{self, ErrorCode, Op};
use im_protocol::{Body, ErrorCodeExt as _, Frame};
use logic::{Caller, Clock, Logic, LogicApi as _, LogicConfig};
use rand::Rng as _;
use rand::rngs::StdRng;
use store_memory::MemoryStore;
use timeline_store::{NewGroup, TimelineStore as _};
use tokio_util::sync::CancellationToken;

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
/// Server clock at simulated time zero (Unix ms).
pub const EPOCH_MS: u64 = 1_700_000_000_000;
/// The token secret of the simulated deployment.
const SECRET: &str = "simulation-token-secret-5d2c8e7a1b9f";
/// Bytes a connection's outbound queue may hold: far more than a simulated burst, so the
/// slow-client rule (which closes a connection whose queue is full) never fires by accident.
const QUEUE_BYTES: usize = 64 << 20;

/// A token for `user` that the simulated server accepts (any device, valid for a century of
/// simulated time).
pub fn token(user: &str) -> String {
    TokenKey::new(SECRET).sign(&Claims {
        sub: user.into(),
        dev: None,
        plt: None,
        exp: EPOCH_MS / 1000 + 100 * 365 * 24 * 3600,
        iat: None,
    })
}

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
    /// Per request handled: switch the group between write and read fan-out (§13.12), as a
    /// membership change across the threshold would.
    pub switch_fanout: f64,
}

/// What the server wants done on the network.
#[derive(Debug)]
pub enum Out {
    /// Write this frame to the connection.
    Frame(ConnId, Frame),
    /// Close the connection (after the frames written before).
    Close(ConnId),
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
    pub fanout_switches: u64,
    pub lost_group_pushes: u64,
}

/// The simulated time, read by the business tier.
#[derive(Debug, Default)]
struct SimClock(AtomicU64);

impl Clock for SimClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// One accepted connection.
struct Conn {
    session: Session,
    /// Its id in the hub: grows in accept order, which the duplicate-login rule relies on.
    hub_id: u64,
    outbox: Arc<Outbox>,
    /// Cancelled by the hub when the connection must close (kicked).
    close: CancellationToken,
    caller: Option<Caller>,
    /// Pushes held back by the reorder fault.
    held: Vec<pb::InboxEntry>,
    held_since: Option<Duration>,
}

/// The durable part: what a restart keeps.
struct Durable {
    store: MemoryStore,
    logic: Logic<MemoryStore>,
    group_id: String,
}

/// The simulated server.
pub struct Server {
    durable: Durable,
    clock: Arc<SimClock>,
    hub: Arc<Hub>,
    tokens: TokenKey,
    /// Simulated time zero as an `Instant`, for the session's deadlines.
    base: Instant,
    conns: BTreeMap<ConnId, Conn>,
    /// The members of the one group of the simulation (every user).
    pub group_members: Vec<String>,
    pub faults: ServerFaults,
    /// Things a correct client never makes the server see (bad frames, bad requests).
    pub violations: Vec<String>,
    /// Sends answered with an injected `UNAVAILABLE`: the spec lets later sends overtake them.
    pub unavailable_sends: BTreeSet<(String, String)>,
    pub stats: ServerStats,
}

/// A fresh store holding the group of `members`, with the business tier over it.
fn durable(epoch: u64, members: &[String], clock: Arc<SimClock>) -> Durable {
    let store = MemoryStore::new(epoch);
    let (owner, others) = members.split_first().expect("at least one user");
    let change = block_on(store.create_group(NewGroup {
        name: "team".into(),
        owner: owner.clone(),
        members: others.to_vec(),
        open: false,
        client_request_id: String::new(),
        max_members: 1000,
        read_fanout: false,
        broadcast: false,
        now_ms: EPOCH_MS,
    }))
    .expect("the group is created");
    let config = LogicConfig {
        // Capacity policies are not what the simulation is about.
        fanout_bytes_per_sec: 0,
        ..LogicConfig::default()
    };
    Durable {
        logic: Logic::with_clock(store.clone(), config, clock),
        store,
        group_id: change.group.group_id,
    }
}

impl Server {
    /// A server with empty state and one group of `group_members`.
    pub fn new(group_members: Vec<String>, base: Instant) -> Server {
        let clock = Arc::new(SimClock::default());
        clock.0.store(EPOCH_MS, Ordering::Relaxed);
        Server {
            durable: durable(1, &group_members, clock.clone()),
            clock,
            hub: Hub::new(),
            tokens: TokenKey::new(SECRET),
            base,
            conns: BTreeMap::new(),
            group_members,
            faults: ServerFaults::default(),
            violations: Vec::new(),
            unavailable_sends: BTreeSet::new(),
            stats: ServerStats::default(),
        }
    }

    /// The id of the simulation's group.
    pub fn group_id(&self) -> &str {
        &self.durable.group_id
    }

    /// The inbox epoch (SPEC §10.8): changes when the durable state is replaced.
    pub fn inbox_epoch(&self) -> u64 {
        self.durable.store.inbox_epoch()
    }

    /// The user's inbox head.
    pub fn head(&self, user: &str) -> u64 {
        block_on(self.durable.store.inbox_head(user)).expect("memory store reads")
    }

    /// The user's whole inbox: index `i` holds `inbox_seq` `i + 1`.
    pub fn inbox(&self, user: &str) -> Vec<pb::InboxEntry> {
        let mut entries = Vec::new();
        loop {
            let from = entries.len() as u64 + 1;
            let page = block_on(self.durable.store.read_inbox(user, from, 0, 1000))
                .expect("memory store reads");
            if page.entries.is_empty() {
                return entries;
            }
            entries.extend(page.entries);
        }
    }

    /// Every conversation's storage timeline: index `i` holds `conversation_seq` `i + 1`.
    pub fn timelines(&self) -> BTreeMap<String, Vec<pb::Message>> {
        let mut conversations = vec![ids::group_conversation_id(self.group_id())];
        for a in &self.group_members {
            for b in &self.group_members {
                if a <= b {
                    conversations.push(ids::direct_conversation_id(a, b));
                }
            }
        }
        let mut timelines = BTreeMap::new();
        for conversation_id in conversations {
            let mut messages: Vec<pb::Message> = Vec::new();
            loop {
                let after = messages.len() as u64;
                let page = block_on(self.durable.store.read_history(
                    &conversation_id,
                    after,
                    pb::HistoryDirection::Newer,
                    200,
                ))
                .expect("memory store reads");
                if page.messages.is_empty() {
                    break;
                }
                messages.extend(page.messages);
            }
            if !messages.is_empty() {
                timelines.insert(conversation_id, messages);
            }
        }
        timelines
    }

    /// The committed message with this sender and client msg id, as (conversation, seq).
    pub fn find_send(&self, user: &str, client_msg_id: &str) -> Option<(String, u64)> {
        self.timelines()
            .into_iter()
            .find_map(|(conversation_id, timeline)| {
                timeline
                    .iter()
                    .find(|m| m.sender_user == user && m.client_msg_id == client_msg_id)
                    .map(|m| (conversation_id.clone(), m.conversation_seq))
            })
    }

    /// The message at (conversation, seq).
    pub fn message(&self, conversation_id: &str, seq: u64) -> Option<pb::Message> {
        let page = block_on(self.durable.store.read_history(
            conversation_id,
            seq.checked_sub(1)?,
            pb::HistoryDirection::Newer,
            1,
        ))
        .ok()?;
        page.messages
            .into_iter()
            .next()
            .filter(|m| m.conversation_seq == seq)
    }

    /// Users party to a conversation.
    pub fn participants(&self, conversation_id: &str) -> Vec<String> {
        match ConversationRef::parse(conversation_id) {
            Ok(ConversationRef::Direct { low, high }) if low == high => vec![low.to_owned()],
            Ok(ConversationRef::Direct { low, high }) => vec![low.to_owned(), high.to_owned()],
            Ok(ConversationRef::Group { group_id }) if group_id == self.group_id() => {
                self.group_members.clone()
            }
            _ => Vec::new(),
        }
    }

    /// Whether any push is held back.
    pub fn holds_pushes(&self) -> bool {
        self.conns.values().any(|c| !c.held.is_empty())
    }

    fn at(&self, now: Duration) -> Instant {
        self.base + now
    }

    fn tick(&self, now: Duration) {
        self.clock
            .0
            .store(EPOCH_MS + now.as_millis() as u64, Ordering::Relaxed);
    }

    /// A transport connection was accepted.
    pub fn accept(&mut self, conn: ConnId, now: Duration) {
        let config = SessionConfig {
            handshake_timeout: HANDSHAKE_DEADLINE,
            heartbeat_interval: Duration::from_millis(u64::from(HEARTBEAT_MS)),
            idle_timeout: Duration::from_millis(u64::from(IDLE_TIMEOUT_MS)),
            rate_per_sec: 0,
            rate_burst: 0,
        };
        self.conns.insert(
            conn,
            Conn {
                session: Session::new(config, self.at(now)),
                hub_id: self.hub.next_conn_id(),
                outbox: Arc::new(Outbox::new(1 << 20, QUEUE_BYTES, QUEUE_BYTES)),
                close: CancellationToken::new(),
                caller: None,
                held: Vec::new(),
                held_since: None,
            },
        );
    }

    /// The transport of `conn` closed (seen from the server).
    pub fn on_closed(&mut self, conn: ConnId) {
        self.forget(conn);
    }

    fn forget(&mut self, conn: ConnId) {
        if let Some(c) = self.conns.remove(&conn)
            && let Some(caller) = &c.caller
        {
            self.hub.unregister(&caller.user, c.hub_id);
        }
    }

    /// The process restarts: every session is gone; durable state stays. Returns the
    /// connections that were open.
    pub fn restart(&mut self) -> Vec<ConnId> {
        let conns: Vec<ConnId> = self.conns.keys().copied().collect();
        for conn in &conns {
            self.forget(*conn);
        }
        conns
    }

    /// The durable state is replaced by an empty one, as when a server is restored from a
    /// backup taken before anything was written, or its volume is wiped: every session is
    /// gone and the inbox epoch changes. Returns the connections that were open.
    pub fn restore_empty(&mut self) -> Vec<ConnId> {
        let conns = self.restart();
        let epoch = self.inbox_epoch() + 1;
        self.durable = durable(epoch, &self.group_members, self.clock.clone());
        conns
    }

    /// When [`Server::on_timeout`] should run next.
    pub fn next_timeout(&self) -> Option<Duration> {
        self.conns
            .values()
            .flat_map(|c| {
                let deadline = c.session.deadline().saturating_duration_since(self.base);
                [Some(deadline), c.held_since.map(|t| t + MAX_HOLD)]
            })
            .flatten()
            .min()
    }

    /// Idle timeouts, handshake deadlines, held pushes.
    pub fn on_timeout(&mut self, now: Duration, out: &mut Vec<Out>) {
        self.tick(now);
        let at = self.at(now);
        let ids: Vec<ConnId> = self.conns.keys().copied().collect();
        for conn in ids {
            let c = self.conns.get_mut(&conn).expect("listed above");
            if let Some((code, message)) = c.session.on_timer(at) {
                // A silent client is gone or half-dead: an idle close sends nothing (§8.2); a
                // missed handshake deadline is explained.
                if code == ErrorCode::HandshakeTimeout {
                    out.push(Out::Frame(conn, Frame::error(0, code, message)));
                } else {
                    self.stats.idle_closes += 1;
                }
                self.forget(conn);
                out.push(Out::Close(conn));
                continue;
            }
            if c.held_since.is_some_and(|t| now >= t + MAX_HOLD) {
                let held = std::mem::take(&mut c.held);
                c.held_since = None;
                out.push(Out::Frame(conn, Frame::push(pb::Push { entries: held })));
            }
        }
    }

    fn violation(&mut self, conn: ConnId, what: String) {
        let who = self
            .conns
            .get(&conn)
            .and_then(|c| c.caller.as_ref())
            .map(|c| format!("{}/{}", c.user, c.device));
        self.violations
            .push(format!("conn {conn} ({who:?}): {what}"));
    }

    /// Queues `frame` on `conn`'s outbound queue, behind whatever is queued there.
    fn answer(&self, conn: ConnId, frame: Frame) {
        if let Some(c) = self.conns.get(&conn) {
            let _ = c.outbox.try_push(Outbound::Frame(frame));
        }
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
        self.tick(now);
        let at = self.at(now);
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let rid = frame.request_id;
        match c.session.on_frame(&frame, at) {
            Verdict::Reject {
                code,
                message,
                retry_after_ms,
                close,
                connection_level,
            } => {
                self.violation(conn, format!("{code:?} for op {}: {message}", frame.op));
                let mut error = code.to_error(message);
                error.retry_after_ms = retry_after_ms;
                let rid = if connection_level { 0 } else { rid };
                self.answer(conn, Frame::new(rid, error));
                if close {
                    self.drain(rng, now, out);
                    self.forget(conn);
                    out.push(Out::Close(conn));
                    return;
                }
            }
            Verdict::Handshake => self.handshake(conn, &frame, now, rng),
            Verdict::Ping => {
                let inbox = match &c.caller {
                    Some(caller) => self.hub.inbox_position(&caller.user),
                    None => logic::InboxPosition::UNKNOWN,
                };
                let answer = match c
                    .session
                    .pong(&frame, inbox, EPOCH_MS + now.as_millis() as u64)
                {
                    Ok(pong) => Frame::new(rid, pong),
                    Err(refusal) => {
                        let frame = Frame::error(rid, refusal.code, refusal.message.clone());
                        self.violation(conn, format!("ping refused: {}", refusal.message));
                        frame
                    }
                };
                self.answer(conn, answer);
            }
            Verdict::Goodbye => {
                self.drain(rng, now, out);
                self.forget(conn);
                out.push(Out::Close(conn));
                return;
            }
            Verdict::Request(op) => self.request(conn, op, &frame, rng),
        }
        self.drain(rng, now, out);
    }

    /// The handshake, as the gateway runs it: checks, registration (kicking an older
    /// connection of the same device), the session opened by the business tier, the answer.
    fn handshake(&mut self, conn: ConnId, frame: &Frame, now: Duration, rng: &mut StdRng) {
        let now_ms = EPOCH_MS + now.as_millis() as u64;
        let c = self.conns.get(&conn).expect("checked by the caller");
        let handshake = match c
            .session
            .check_handshake(frame, &self.tokens, now_ms / 1000)
        {
            Ok(handshake) => handshake,
            Err(refusal) => {
                self.violation(conn, format!("handshake refused: {refusal:?}"));
                let close = refusal.close;
                self.answer(
                    conn,
                    Frame::error(frame.request_id, refusal.code, refusal.message),
                );
                if close {
                    self.conns.get(&conn).expect("still open").close.cancel();
                }
                return;
            }
        };
        let registration = self.hub.register(
            &handshake.user,
            ConnHandle {
                id: c.hub_id,
                device: handshake.device.clone(),
                tx: c.outbox.clone(),
                close: c.close.clone(),
                revision: handshake.protocol_version,
            },
        );
        let kick = || {
            Frame::push(pb::Kick {
                reason: pb::KickReason::LoggedInElsewhere as i32,
                ..Default::default()
            })
        };
        match registration {
            Registration::Registered { replaced } => {
                for old in replaced {
                    self.stats.kicks += 1;
                    let _ = old.tx.try_push(Outbound::Frame(kick()));
                    old.close.cancel();
                }
            }
            Registration::Superseded => {
                self.stats.kicks += 1;
                self.answer(conn, kick());
                c.close.cancel();
                return;
            }
            Registration::TooManyConnections { .. } => {
                c.close.cancel();
                self.violation(conn, "too many connections".into());
                return;
            }
        }
        let caller = Caller {
            user: handshake.user.clone(),
            device: handshake.device.clone(),
        };
        let mut info = match block_on(self.durable.logic.open_session(&caller)) {
            Ok(info) => info,
            Err(error) => panic!("the memory store cannot fail: {error:?}"),
        };
        self.hub.note_inbox(&caller.user, info.inbox);
        for group in std::mem::take(&mut info.read_groups) {
            self.hub.follow(&caller.user, &group, true);
        }
        let head = info.inbox.head_seq;
        if head > 0 && rng.random_bool(self.faults.early_push) {
            // Registered for pushes before the answer is written: a push may overtake it.
            self.stats.early_pushes += 1;
            let from = head.saturating_sub(rng.random_range(0..3)).max(1);
            let page = block_on(self.durable.store.read_inbox(&caller.user, from, head, 10))
                .expect("memory store reads");
            self.answer(
                conn,
                Frame::push(pb::Push {
                    entries: page.entries,
                }),
            );
        }
        let c = self.conns.get_mut(&conn).expect("still open");
        let answer = c.session.accept_handshake(
            &handshake,
            info,
            Announced {
                max_frame_bytes: im_protocol::DEFAULT_MAX_BODY,
                compression_threshold: 8192,
            },
            format!("s{conn}"),
            now_ms,
        );
        c.caller = Some(caller);
        let _ = c
            .outbox
            .try_push(Outbound::Frame(Frame::new(frame.request_id, answer)));
    }

    /// A request for the business tier, with the injected storage hiccups.
    fn request(&mut self, conn: ConnId, op: Op, frame: &Frame, rng: &mut StdRng) {
        let rid = frame.request_id;
        let c = &self.conns[&conn];
        let (caller, hub_id) = (c.caller.clone().expect("authenticated"), c.hub_id);
        let body = match frame.decode_body() {
            Ok(body) => body,
            Err(e) => {
                self.violation(conn, format!("undecodable {op:?}: {e}"));
                self.answer(conn, Frame::error(rid, e.code(), e.to_string()));
                return;
            }
        };
        let hiccup = match &body {
            Body::SendReq(_) => self.faults.send_unavailable,
            Body::SyncReq(_) => self.faults.sync_unavailable,
            _ => 0.0,
        };
        if rng.random_bool(hiccup) {
            self.stats.unavailable += 1;
            if let Body::SendReq(send) = &body {
                self.unavailable_sends
                    .insert((caller.user.clone(), send.client_msg_id.clone()));
            }
            let mut error = ErrorCode::Unavailable.to_error("simulated storage hiccup");
            error.retry_after_ms = rng.random_range(0..2000);
            self.answer(conn, Frame::new(rid, error));
            return;
        }
        let logic = &self.durable.logic;
        let (reply, effects, own) = match body {
            Body::SendReq(send) => {
                let (mut replies, effects) = block_on(logic.send_batch(&caller, vec![send]));
                let reply = replies.pop().expect("one reply per send");
                if let Ok(ack) = &reply {
                    if ack.duplicate {
                        self.stats.duplicate_sends += 1;
                    } else {
                        self.stats.committed += 1;
                    }
                }
                (reply.map(|ack| Some(Body::SendAck(ack))), effects, true)
            }
            body => {
                let (reply, effects) = block_on(logic.handle(&caller, body));
                (reply, effects, false)
            }
        };
        match reply {
            Ok(Some(body)) => self.answer(conn, Frame::new(rid, body)),
            Ok(None) => {}
            Err(error) => {
                let code = ErrorCode::try_from(error.code).unwrap_or(ErrorCode::Internal);
                if !matches!(code, ErrorCode::Unavailable | ErrorCode::RateLimited) {
                    self.violation(conn, format!("{op:?} refused: {error:?}"));
                }
                self.answer(conn, Frame::new(rid, error));
            }
        }
        // A sending connection gets its own entry through the ack (§10.1).
        let origin = own.then_some((caller.user.as_str(), hub_id));
        for room in &effects.rooms {
            self.hub.follow(&room.user, &room.group_id, room.follows);
        }
        let sender = own.then_some(caller.user.as_str());
        self.hub.deliver_group(effects.group_messages, sender);
        self.hub.deliver_except(effects.deliveries, origin);
        if let Some(typing) = effects.typing {
            self.hub.relay_typing(&typing.recipients, &typing.event);
        }
        if rng.random_bool(self.faults.switch_fanout) {
            self.switch_fanout();
        }
    }

    /// Switches the group between write and read fan-out, telling the members as a
    /// membership change across the threshold would (§13.12).
    fn switch_fanout(&mut self) {
        let group_id = self.durable.group_id.clone();
        let now_ms = self.clock.now_ms();
        let read = !block_on(self.durable.store.group(&group_id))
            .expect("the group exists")
            .read_fanout;
        let change = block_on(self.durable.store.set_group_fanout(&group_id, read, now_ms))
            .expect("the memory store switches");
        self.stats.fanout_switches += 1;
        for user in &change.changed {
            self.hub.follow(user, &group_id, read);
        }
        self.hub.deliver(
            change
                .deliveries
                .into_iter()
                .map(|d| logic::Delivery {
                    user: d.user,
                    entry: d.entry,
                })
                .collect(),
        );
    }

    /// Moves what the hub and the answers queued into network output, connection by
    /// connection in id order (the hub's own order is a hash map's), with the push faults.
    fn drain(&mut self, rng: &mut StdRng, now: Duration, out: &mut Vec<Out>) {
        let ids: Vec<ConnId> = self.conns.keys().copied().collect();
        for conn in ids {
            let mut queued = VecDeque::new();
            let c = &self.conns[&conn];
            // Everything queued, in one take; nothing queued is "pending", not an error.
            let _ = c.outbox.pop_some(&mut queued, usize::MAX).now_or_never();
            for item in queued {
                let Outbound::Frame(frame) = item else {
                    continue;
                };
                match frame.decode_body() {
                    Ok(Body::Push(push)) if frame.is_push() => {
                        self.push_with_faults(conn, push.entries, rng, now, out)
                    }
                    Ok(Body::GroupPush(_)) if rng.random_bool(self.faults.lose_push) => {
                        // Best effort too: the client pages the timeline at the next gap or
                        // sync.
                        self.stats.lost_group_pushes += 1;
                    }
                    _ => out.push(Out::Frame(conn, frame)),
                }
            }
            if self.conns[&conn].close.is_cancelled() {
                self.forget(conn);
                out.push(Out::Close(conn));
            }
        }
    }

    /// One push to `conn`, as a conforming server may deliver it.
    fn push_with_faults(
        &mut self,
        conn: ConnId,
        entries: Vec<pb::InboxEntry>,
        rng: &mut StdRng,
        now: Duration,
        out: &mut Vec<Out>,
    ) {
        let faults = self.faults.clone();
        if rng.random_bool(faults.lose_push) {
            self.stats.lost_pushes += 1;
            return;
        }
        let c = self.conns.get_mut(&conn).expect("draining an open conn");
        if rng.random_bool(faults.hold_push) {
            self.stats.held_pushes += 1;
            c.held.extend(entries);
            c.held_since.get_or_insert(now);
            return;
        }
        out.push(Out::Frame(
            conn,
            Frame::push(pb::Push {
                entries: entries.clone(),
            }),
        ));
        if !c.held.is_empty() {
            // The held (older) entries follow the newer ones: out of seq order.
            let held = std::mem::take(&mut c.held);
            c.held_since = None;
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
        let user = c.caller.as_ref().map(|c| c.user.clone());
        if first > 1
            && let Some(user) = user
            && rng.random_bool(faults.repush_old)
        {
            self.stats.duplicate_pushes += 1;
            let from = rng.random_range(1..first);
            let to = rng.random_range(from..first);
            let page = block_on(self.durable.store.read_inbox(&user, from, to, 1000))
                .expect("memory store reads");
            out.push(Out::Frame(
                conn,
                Frame::push(pb::Push {
                    entries: page.entries,
                }),
            ));
        }
    }
}
