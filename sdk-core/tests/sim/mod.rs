//! Deterministic simulation of client devices, a network and a server (FoundationDB /
//! TigerBeetle style): one seeded RNG decides everything, time is simulated (an `Instant` base
//! plus an offset; nothing sleeps and no decision reads the real clock), and the same seed
//! replays the same run.
//!
//! - [`server`]: the server side of the protocol.
//! - [`World`]: the devices (each a [`Client`] over a [`MemoryStore`]), the driver contract of
//!   `src/driver.rs`, the network with its faults, app behaviour, and the invariants.
//! - [`script`]: a hand-driven single client for focused scenarios.

#![allow(dead_code)]

pub mod script;
pub mod server;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use im_protocol::{Body, Frame, pb};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use sdk_core::memory::MemoryStore;
use sdk_core::{
    Action, Client, ClientConfig, ConnectionState, Event, LocalStore as _, Recipient, SendState,
};

use server::{ConnId, EPOCH_MS, Out, Server, ServerFaults};

/// The driver's connect timeout (`CONNECT_TIMEOUT` in `src/driver.rs`).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Network and app faults; probabilities per opportunity.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Per frame: the frame is lost and the link goes half-dead from then on (both directions
    /// lose everything, neither side sees a close; timeouts must notice).
    pub drop_frame: f64,
    /// Per frame: a long delay (1–20 s, rarely up to 40 s); TCP order is kept, so everything
    /// behind it in that direction waits too.
    pub delay_frame: f64,
    /// Per connect while the server is up: refused.
    pub refuse_connect: f64,
    /// Per connect: the attempt hangs until the driver's connect timeout.
    pub blackhole_connect: f64,
    /// Mean time between chaos events (cuts, app restarts, server restarts, network changes,
    /// background switches). `None` = no chaos.
    pub chaos_every: Option<Duration>,
    /// Relative weights of the chaos events: cut, app restart, server restart, network change,
    /// background switch.
    pub chaos_weights: [u32; 5],
    /// Server-side faults.
    pub server: ServerFaults,
}

impl Faults {
    /// No faults at all.
    pub fn none() -> Faults {
        Faults::default()
    }

    /// A random fault mix: some seeds are gentle, some brutal.
    pub fn random(rng: &mut StdRng) -> Faults {
        let intensity: f64 = rng.random_range(0.0..1.0);
        let p = |rng: &mut StdRng, max: f64| rng.random_range(0.0..max) * intensity;
        Faults {
            drop_frame: p(rng, 0.02),
            delay_frame: p(rng, 0.03),
            refuse_connect: p(rng, 0.5),
            blackhole_connect: p(rng, 0.1),
            chaos_every: Some(Duration::from_millis(rng.random_range(1_000..20_000))),
            chaos_weights: [
                rng.random_range(0..6),
                rng.random_range(0..4),
                rng.random_range(0..2),
                rng.random_range(0..3),
                rng.random_range(0..3),
            ],
            server: ServerFaults {
                hold_push: p(rng, 0.3),
                duplicate_push: p(rng, 0.2),
                repush_old: p(rng, 0.1),
                early_push: p(rng, 0.5),
                send_unavailable: p(rng, 0.05),
                sync_unavailable: p(rng, 0.05),
                lose_push: p(rng, 0.1),
            },
        }
    }
}

/// One `send` call the app made: what the oracle expects to find everywhere at the end.
#[derive(Clone, Debug)]
pub struct SentRecord {
    pub device: usize,
    pub user: String,
    pub conversation_id: String,
    pub client_msg_id: String,
    pub local_id: u64,
    pub content: Vec<u8>,
    /// The message went `Failed` and the app retried it: later sends may overtake it (§12).
    pub retried: bool,
}

/// Counters for the summary line.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub sends: u64,
    pub connects: u64,
    pub dropped_links: u64,
    pub cuts: u64,
    pub app_restarts: u64,
    pub server_restarts: u64,
    pub failed_then_retried: u64,
    pub frames: u64,
    pub steps: u64,
    pub quiet_time: Duration,
    /// Hash of the step trace (with [`Trace::Hash`]).
    pub hash: u64,
}

impl Stats {
    pub fn add(&mut self, other: &Stats) {
        self.sends += other.sends;
        self.connects += other.connects;
        self.dropped_links += other.dropped_links;
        self.cuts += other.cuts;
        self.app_restarts += other.app_restarts;
        self.server_restarts += other.server_restarts;
        self.failed_then_retried += other.failed_then_retried;
        self.frames += other.frames;
        self.steps += other.steps;
        self.quiet_time = self.quiet_time.max(other.quiet_time);
    }
}

/// One transport connection between a device and the server.
struct Conn {
    device: usize,
    /// The driver still holds it (as its link or its pending connect).
    client_open: bool,
    /// The server has a session for it.
    server_open: bool,
    /// Frames (and closes) towards the server vanish.
    lost_to_server: bool,
    /// Frames (and closes) towards the client vanish.
    lost_to_client: bool,
    /// Arrival time of the last frame scheduled in each direction (TCP keeps order).
    last_to_server: Duration,
    last_to_client: Duration,
}

/// A device: the app process (its [`Client`], when running), its disk, and the driver state.
pub struct Device {
    pub user: String,
    pub name: String,
    pub client: Option<Client<MemoryStore>>,
    /// The store while the app is not running.
    disk: MemoryStore,
    /// The driver's established connection.
    link: Option<ConnId>,
    /// The driver's pending connect.
    connecting: Option<ConnId>,
    incarnation: u64,
    background: bool,
    /// Highest cursor ever seen (the cursor never moves back).
    cursor_seen: u64,
    /// The inbox epoch the device's state followed at the last check.
    epoch_seen: u64,
    /// Inbox entries up to here were checked to be applied in the store.
    verified_to: u64,
    /// (conversation, seq) of every `MessageReceived` event, across app restarts.
    received: BTreeSet<(String, u64)>,
    pub connects: u64,
    /// Consecutive `on_timeout` calls at one instant (a busy loop guard).
    same_instant_timeouts: u32,
    /// `inbox_head_seq` of the last `HandshakeResp` the client read.
    handshake_head: u64,
}

impl Device {
    /// The device's store, running or not.
    pub fn store(&self) -> &MemoryStore {
        match &self.client {
            Some(client) => client.store(),
            None => &self.disk,
        }
    }
}

#[derive(Debug)]
enum Ev {
    ToServer { conn: ConnId, frame: Frame },
    ToClient { conn: ConnId, frame: Frame },
    ServerAccept { conn: ConnId },
    ConnectResult { conn: ConnId, ok: bool },
    ClientSeesClose { conn: ConnId, forced: bool },
    ServerSeesClose { conn: ConnId, forced: bool },
    AppSend { device: usize, recipient: Recipient },
    AppMarkRead { device: usize },
    AppRetry { device: usize, local_id: u64 },
    AppStart { device: usize },
    Chaos,
    ServerStart,
}

/// How much of the run to record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trace {
    Off,
    /// Print every step.
    Print,
    /// Fold every step into a hash (to prove replays are identical).
    Hash,
}

/// The simulated world.
pub struct World {
    pub seed: u64,
    rng: StdRng,
    base: Instant,
    pub now: Duration,
    queue: BTreeMap<(Duration, u64), Ev>,
    next_event: u64,
    pub server: Server,
    pub server_up: bool,
    conns: BTreeMap<ConnId, Conn>,
    next_conn: ConnId,
    pub devices: Vec<Device>,
    pub faults: Faults,
    /// Faults apply only while this is set (the fault phase).
    pub faults_on: bool,
    chaos_until: Duration,
    sync_page: u32,
    trace: Trace,
    pub hash: u64,
    pub sent: Vec<SentRecord>,
    pub stats: Stats,
}

fn describe(frame: &Frame) -> String {
    match frame.decode_body() {
        Ok(Body::Push(push)) => {
            format!(
                "PUSH {:?}",
                push.entries.iter().map(|e| e.inbox_seq).collect::<Vec<_>>()
            )
        }
        Ok(Body::SyncResp(r)) => format!(
            "#{} SYNC_RESP {:?} head {} more {} next {}",
            frame.request_id,
            r.entries.iter().map(|e| e.inbox_seq).collect::<Vec<_>>(),
            r.head_seq,
            r.has_more,
            r.next_seq
        ),
        Ok(Body::SendReq(r)) => format!(
            "#{} SEND_REQ {} {:?}",
            frame.request_id, r.client_msg_id, r.target
        ),
        Ok(Body::SendAck(a)) => format!(
            "#{} SEND_ACK {} {}#{} dup {}",
            frame.request_id, a.client_msg_id, a.conversation_id, a.conversation_seq, a.duplicate
        ),
        Ok(body) => {
            let text = format!("{body:?}");
            format!(
                "#{} {}",
                frame.request_id,
                text.chars().take(140).collect::<String>()
            )
        }
        Err(e) => format!("undecodable op {}: {e}", frame.op),
    }
}

impl World {
    /// `users` users with `devices_per_user` devices each, all members of one group.
    pub fn new(
        seed: u64,
        users: usize,
        devices_per_user: usize,
        faults: Faults,
        trace: Trace,
    ) -> World {
        let mut rng = StdRng::seed_from_u64(seed);
        let user_ids: Vec<String> = (0..users).map(|u| format!("u{u}")).collect();
        let sync_page = [1, 2, 3, 7, 200][rng.random_range(0..5)];
        let mut devices = Vec::new();
        for user in &user_ids {
            for d in 0..devices_per_user {
                devices.push(Device {
                    user: user.clone(),
                    name: format!("{user}-d{d}"),
                    client: None,
                    disk: MemoryStore::new(),
                    link: None,
                    connecting: None,
                    incarnation: 0,
                    background: false,
                    cursor_seen: 0,
                    epoch_seen: 0,
                    verified_to: 0,
                    received: BTreeSet::new(),
                    connects: 0,
                    same_instant_timeouts: 0,
                    handshake_head: 0,
                });
            }
        }
        let base = Instant::now();
        let mut server = Server::new(user_ids, base);
        server.faults = faults.server.clone();
        World {
            seed,
            rng,
            base,
            now: Duration::ZERO,
            queue: BTreeMap::new(),
            next_event: 0,
            server,
            server_up: true,
            conns: BTreeMap::new(),
            next_conn: 1,
            devices,
            faults,
            faults_on: true,
            chaos_until: Duration::ZERO,
            sync_page,
            trace,
            hash: 0xcbf2_9ce4_8422_2325,
            sent: Vec::new(),
            stats: Stats::default(),
        }
    }

    /// The simulated instant.
    pub fn at(&self) -> Instant {
        self.base + self.now
    }

    fn now_ms(&self) -> u64 {
        EPOCH_MS + self.now.as_millis() as u64
    }

    fn note(&mut self, line: impl FnOnce() -> String) {
        match self.trace {
            Trace::Off => {}
            Trace::Print => println!("[{:>10.3}s] {}", self.now.as_secs_f64(), line()),
            Trace::Hash => {
                for b in format!("{:?} {}", self.now, line()).bytes() {
                    self.hash ^= u64::from(b);
                    self.hash = self.hash.wrapping_mul(0x100_0000_01b3);
                }
            }
        }
    }

    fn schedule(&mut self, at: Duration, ev: Ev) {
        self.next_event += 1;
        self.queue.insert((at, self.next_event), ev);
    }

    fn latency(&mut self) -> Duration {
        if self.faults_on && self.rng.random_bool(self.faults.delay_frame) {
            if self.rng.random_bool(0.1) {
                Duration::from_millis(self.rng.random_range(20_000..40_000))
            } else {
                Duration::from_millis(self.rng.random_range(1_000..20_000))
            }
        } else {
            Duration::from_micros(self.rng.random_range(1_000..30_000))
        }
    }

    fn short_latency(&mut self) -> Duration {
        Duration::from_micros(self.rng.random_range(1_000..30_000))
    }

    fn client_config(&mut self, device: usize) -> ClientConfig {
        let d = &self.devices[device];
        let mut config = ClientConfig::new(d.user.clone(), d.name.clone());
        config.sync_page = self.sync_page;
        config.seed = self.rng.random();
        config
    }

    // ----- setup -----

    /// Starts the app on every device at a random moment of the first second.
    pub fn start_all(&mut self) {
        for device in 0..self.devices.len() {
            let at = Duration::from_millis(self.rng.random_range(0..1000));
            self.schedule(at, Ev::AppStart { device });
        }
    }

    /// Plans the app's behaviour over `[0, until)`: each device sends 0..=max_sends messages to
    /// random peers, itself or the group, and sometimes marks a conversation read.
    pub fn plan_app(&mut self, until: Duration, max_sends: u32) {
        let users: Vec<String> = self.server.group_members.clone();
        for device in 0..self.devices.len() {
            let n = self.rng.random_range(0..=max_sends);
            for _ in 0..n {
                let at = Duration::from_millis(self.rng.random_range(0..until.as_millis() as u64));
                let roll = self.rng.random_range(0..10);
                let recipient = if roll < 3 {
                    Recipient::Group(self.server.group_id().to_owned())
                } else if roll == 3 {
                    Recipient::User(self.devices[device].user.clone())
                } else {
                    let mut peer = users[self.rng.random_range(0..users.len())].clone();
                    if peer == self.devices[device].user {
                        peer = users[(users.iter().position(|u| *u == peer).unwrap_or(0) + 1)
                            % users.len()]
                        .clone();
                    }
                    Recipient::User(peer)
                };
                self.schedule(at, Ev::AppSend { device, recipient });
            }
            for _ in 0..self.rng.random_range(0..4) {
                let at = Duration::from_millis(self.rng.random_range(0..until.as_millis() as u64));
                self.schedule(at, Ev::AppMarkRead { device });
            }
        }
    }

    /// Chaos events (see [`Faults::chaos_every`]) until `until`.
    pub fn plan_chaos(&mut self, until: Duration) {
        self.chaos_until = until;
        if let Some(every) = self.faults.chaos_every {
            let at = Duration::from_millis(self.rng.random_range(0..every.as_millis() as u64 * 2));
            self.schedule(at, Ev::Chaos);
        }
    }

    /// Ends the fault phase: no new faults from now on (links already dead stay dead until
    /// their ends notice).
    pub fn quiet(&mut self) {
        self.faults_on = false;
        self.server.faults = ServerFaults::default();
        self.chaos_until = Duration::ZERO;
        self.note(|| "=== quiet phase ===".into());
    }

    // ----- the driver contract (src/driver.rs) -----

    /// Carries out a device's actions, writes its frames, handles its events; as the tokio
    /// driver's loop does.
    fn pump(&mut self, device: usize) -> Result<(), String> {
        loop {
            let Some(client) = self.devices[device].client.as_mut() else {
                return Ok(());
            };
            let mut actions = Vec::new();
            while let Some(action) = client.poll_action() {
                actions.push(action);
            }
            let mut progressed = !actions.is_empty();
            for action in actions {
                let name = self.devices[device].name.clone();
                self.note(|| format!("{name} action {action:?}"));
                match action {
                    Action::Connect => {
                        if let Some(old) = self.devices[device].link.take() {
                            self.client_drops(old);
                        }
                        if let Some(pending) = self.devices[device].connecting.take() {
                            self.client_drops(pending);
                        }
                        self.start_connect(device);
                    }
                    Action::Disconnect => {
                        if let Some(old) = self.devices[device].link.take() {
                            // Flush what is queued (a goodbye) before closing.
                            let client = self.devices[device].client.as_mut().expect("running");
                            let mut frames = Vec::new();
                            while let Some(frame) = client.poll_transmit() {
                                frames.push(frame);
                            }
                            for frame in frames {
                                self.send_to_server(old, frame);
                            }
                            self.client_drops(old);
                        }
                        if let Some(pending) = self.devices[device].connecting.take() {
                            self.client_drops(pending);
                        }
                    }
                }
            }
            let client = self.devices[device].client.as_mut().expect("running");
            let mut frames = Vec::new();
            while let Some(frame) = client.poll_transmit() {
                frames.push(frame);
            }
            let mut events = Vec::new();
            while let Some(event) = client.poll_event() {
                events.push(event);
            }
            while client.poll_response().is_some() {}
            progressed |= !frames.is_empty() || !events.is_empty();
            // Frames for a connection that no longer exists are void.
            if let Some(link) = self.devices[device].link {
                for frame in frames {
                    self.send_to_server(link, frame);
                }
            }
            for event in events {
                self.on_event(device, event)?;
            }
            if !progressed {
                return Ok(());
            }
        }
    }

    fn start_connect(&mut self, device: usize) {
        let conn = self.next_conn;
        self.next_conn += 1;
        self.stats.connects += 1;
        self.devices[device].connects += 1;
        self.devices[device].connecting = Some(conn);
        self.conns.insert(
            conn,
            Conn {
                device,
                client_open: true,
                server_open: false,
                lost_to_server: false,
                lost_to_client: false,
                last_to_server: self.now,
                last_to_client: self.now,
            },
        );
        let latency = self.short_latency();
        if !self.server_up || (self.faults_on && self.rng.random_bool(self.faults.refuse_connect)) {
            self.schedule(self.now + latency, Ev::ConnectResult { conn, ok: false });
        } else if self.faults_on && self.rng.random_bool(self.faults.blackhole_connect) {
            self.schedule(
                self.now + CONNECT_TIMEOUT,
                Ev::ConnectResult { conn, ok: false },
            );
        } else {
            self.schedule(self.now + latency, Ev::ServerAccept { conn });
        }
    }

    /// The driver lets go of a connection (closed, replaced or the process died): the server
    /// sees the close after the data already sent, unless that direction is dead.
    fn client_drops(&mut self, conn: ConnId) {
        let latency = self.short_latency();
        let now = self.now;
        let c = self.conns.get_mut(&conn).expect("known conn");
        c.client_open = false;
        if c.server_open && !c.lost_to_server {
            let at = (now + latency).max(c.last_to_server);
            self.schedule(
                at,
                Ev::ServerSeesClose {
                    conn,
                    forced: false,
                },
            );
        }
    }

    /// The server closes a connection: the client sees it after the data already sent.
    fn server_drops(&mut self, conn: ConnId) {
        let latency = self.short_latency();
        let now = self.now;
        let c = self.conns.get_mut(&conn).expect("known conn");
        c.server_open = false;
        if c.client_open && !c.lost_to_client {
            let at = (now + latency).max(c.last_to_client);
            self.schedule(
                at,
                Ev::ClientSeesClose {
                    conn,
                    forced: false,
                },
            );
        }
    }

    fn maybe_drop_link(&mut self, conn: ConnId) -> bool {
        if self.faults_on && self.rng.random_bool(self.faults.drop_frame) {
            let c = self.conns.get_mut(&conn).expect("known conn");
            c.lost_to_server = true;
            c.lost_to_client = true;
            self.stats.dropped_links += 1;
            self.note(|| format!("conn {conn} goes half-dead"));
            return true;
        }
        false
    }

    fn send_to_server(&mut self, conn: ConnId, frame: Frame) {
        self.stats.frames += 1;
        if self.conns[&conn].lost_to_server || self.maybe_drop_link(conn) {
            return;
        }
        let latency = self.latency();
        let now = self.now;
        let c = self.conns.get_mut(&conn).expect("known conn");
        let at = (now + latency).max(c.last_to_server);
        c.last_to_server = at;
        self.schedule(at, Ev::ToServer { conn, frame });
    }

    fn send_to_client(&mut self, conn: ConnId, frame: Frame) {
        self.stats.frames += 1;
        if self.conns[&conn].lost_to_client || self.maybe_drop_link(conn) {
            return;
        }
        let latency = self.latency();
        let now = self.now;
        let c = self.conns.get_mut(&conn).expect("known conn");
        let at = (now + latency).max(c.last_to_client);
        c.last_to_client = at;
        self.schedule(at, Ev::ToClient { conn, frame });
    }

    fn server_outputs(&mut self, out: Vec<Out>) {
        for o in out {
            match o {
                Out::Frame(conn, frame) => self.send_to_client(conn, frame),
                Out::Close(conn) => self.server_drops(conn),
            }
        }
    }

    // ----- app behaviour -----

    fn on_event(&mut self, device: usize, event: Event) -> Result<(), String> {
        let name = self.devices[device].name.clone();
        match &event {
            Event::MessageReceived(m) => {
                let Some(server_copy) = self.server.message(&m.conversation_id, m.seq) else {
                    return Err(format!(
                        "{name} received {}#{} which the server never stored",
                        m.conversation_id, m.seq
                    ));
                };
                if server_copy.client_msg_id != m.client_msg_id || server_copy.content != m.content
                {
                    return Err(format!(
                        "{name} received {}#{} with the wrong content",
                        m.conversation_id, m.seq
                    ));
                }
                if !self.devices[device]
                    .received
                    .insert((m.conversation_id.clone(), m.seq))
                {
                    return Err(format!(
                        "{name} received {}#{} twice",
                        m.conversation_id, m.seq
                    ));
                }
            }
            Event::MessageUpdated(m) if m.state == SendState::Sent => {
                let server_seq = self
                    .server
                    .find_send(&self.devices[device].user, &m.client_msg_id);
                if server_seq != Some((m.conversation_id.clone(), m.seq)) {
                    return Err(format!(
                        "{name}: {} marked Sent at {}#{} but the server has {server_seq:?}",
                        m.client_msg_id, m.conversation_id, m.seq
                    ));
                }
            }
            Event::MessageUpdated(m) if m.state == SendState::Failed => {
                // The app retries failed messages after a moment (they failed after the
                // attempt limit); the retried one may be overtaken by later sends (§12).
                self.stats.failed_then_retried += 1;
                if let Some(record) = self
                    .sent
                    .iter_mut()
                    .find(|r| r.device == device && r.local_id == m.local_id)
                {
                    record.retried = true;
                }
                let at = self.now + Duration::from_secs(1);
                self.schedule(
                    at,
                    Ev::AppRetry {
                        device,
                        local_id: m.local_id,
                    },
                );
            }
            Event::Synced { cursor } => {
                // "Synced" means everything up to the head announced at connect is applied.
                let head = self.devices[device].handshake_head;
                if *cursor < head {
                    return Err(format!(
                        "{name} reported Synced at cursor {cursor} below the handshake head {head}"
                    ));
                }
            }
            Event::StoreError(e) => return Err(format!("{name}: store error {e}")),
            Event::State(ConnectionState::Stopped(reason)) => {
                return Err(format!("{name} stopped: {reason:?}"));
            }
            _ => {}
        }
        // Answers to requests come from `poll_response`, not as events (the pump drops them:
        // nothing here depends on them, and a lost connection's come out in `HashMap` order).
        if self.trace != Trace::Off {
            let text = match &event {
                Event::ConversationUpdated(c) => format!(
                    "ConversationUpdated({} last {})",
                    c.conversation_id, c.last_seq
                ),
                Event::MessageReceived(m) | Event::MessageUpdated(m) | Event::MessageAdded(m) => {
                    format!(
                        "{} {}#{} {} {:?}",
                        match &event {
                            Event::MessageReceived(_) => "MessageReceived",
                            Event::MessageUpdated(_) => "MessageUpdated",
                            _ => "MessageAdded",
                        },
                        m.conversation_id,
                        m.seq,
                        m.client_msg_id,
                        m.state
                    )
                }
                other => format!("{other:?}"),
            };
            self.note(|| format!("{name} event {text}"));
        }
        Ok(())
    }

    /// The app on `device` sends a message now.
    pub fn send_now(&mut self, device: usize, recipient: Recipient) -> Result<(), String> {
        self.app_send(device, recipient)
    }

    fn app_send(&mut self, device: usize, recipient: Recipient) -> Result<(), String> {
        let now = self.at();
        let now_ms = self.now_ms();
        if self.devices[device].client.is_none() {
            // The app is not running: the user sends once it is back.
            let at = self.now + Duration::from_millis(500);
            self.schedule(at, Ev::AppSend { device, recipient });
            return Ok(());
        }
        let n = self.sent.iter().filter(|r| r.device == device).count();
        let d = &mut self.devices[device];
        let content = format!("{} says #{n}", d.name).into_bytes();
        let client = d.client.as_mut().expect("checked above");
        let message = client
            .send(recipient.clone(), 0, content.clone(), now, now_ms)
            .map_err(|e| format!("{}: send failed locally: {e}", d.name))?;
        self.stats.sends += 1;
        let record = SentRecord {
            device,
            user: d.user.clone(),
            conversation_id: message.conversation_id.clone(),
            client_msg_id: message.client_msg_id.clone(),
            local_id: message.local_id,
            content,
            retried: false,
        };
        let name = d.name.clone();
        self.note(|| format!("{name} app send {} to {recipient:?}", record.client_msg_id));
        self.sent.push(record);
        self.pump(device)
    }

    fn app_mark_read(&mut self, device: usize) -> Result<(), String> {
        let now = self.at();
        let d = &mut self.devices[device];
        let Some(client) = d.client.as_mut() else {
            return Ok(());
        };
        let conversations = client.local_conversations().map_err(|e| e.to_string())?;
        let candidates: Vec<_> = conversations
            .into_iter()
            .filter(|c| c.last_seq > 0)
            .collect();
        if candidates.is_empty() {
            return Ok(());
        }
        let pick = &candidates[self.rng.random_range(0..candidates.len())];
        let seq = self.rng.random_range(1..=pick.last_seq);
        let conversation_id = pick.conversation_id.clone();
        self.devices[device]
            .client
            .as_mut()
            .expect("running")
            .mark_read(&conversation_id, seq, now);
        self.pump(device)
    }

    fn app_start(&mut self, device: usize) -> Result<(), String> {
        let config = self.client_config(device);
        let now = self.at();
        let d = &mut self.devices[device];
        if d.client.is_some() {
            return Ok(());
        }
        d.incarnation += 1;
        d.background = false;
        let token = server::token(&d.user);
        let mut client =
            Client::new(config, d.disk.clone(), now).map_err(|e| format!("{}: {e}", d.name))?;
        client.set_token(token, now);
        client.connect(now);
        d.client = Some(client);
        let name = d.name.clone();
        self.note(|| format!("{name} app starts"));
        self.pump(device)
    }

    /// The app process dies and its disk stays: the store is snapshotted as it is now (every
    /// store call is atomic, as a SQLite transaction would be) and the client dropped.
    pub fn app_crash(&mut self, device: usize, downtime: Duration) {
        let d = &mut self.devices[device];
        let Some(client) = d.client.take() else {
            return;
        };
        d.disk = client.store().clone();
        drop(client);
        let name = d.name.clone();
        self.stats.app_restarts += 1;
        self.note(|| format!("{name} app crashes"));
        if let Some(link) = self.devices[device].link.take() {
            self.client_drops(link);
        }
        if let Some(pending) = self.devices[device].connecting.take() {
            self.client_drops(pending);
        }
        self.schedule(self.now + downtime, Ev::AppStart { device });
    }

    /// The server process restarts: every session is gone, clients see the close (or, for
    /// `silent_share` of them, nothing at all), connects are refused for `downtime`.
    pub fn server_crash(&mut self, downtime: Duration, silent_share: f64) {
        self.stats.server_restarts += 1;
        self.note(|| "server crashes".into());
        self.server_up = false;
        let graceful = self.rng.random_bool(0.3);
        let conns = self.server.restart();
        for conn in conns {
            if graceful && !self.conns[&conn].lost_to_client {
                // A draining server kicks every connection first (§5).
                let retry_after_ms = self.rng.random_range(0..3000);
                let kick = pb::Kick {
                    reason: pb::KickReason::ServerShutdown as i32,
                    retry_after_ms,
                    ..Default::default()
                };
                self.send_to_client(conn, Frame::push(kick));
                self.server_drops(conn);
                self.conns
                    .get_mut(&conn)
                    .expect("known conn")
                    .lost_to_server = true;
                continue;
            }
            let silent = self.rng.random_bool(silent_share);
            let latency = self.short_latency();
            let c = self.conns.get_mut(&conn).expect("known conn");
            c.server_open = false;
            c.lost_to_server = true;
            if silent {
                c.lost_to_client = true;
            } else if c.client_open {
                self.schedule(
                    self.now + latency,
                    Ev::ClientSeesClose { conn, forced: true },
                );
            }
        }
        self.schedule(self.now + downtime, Ev::ServerStart);
    }

    /// The server comes back with its store replaced by an empty one (a restore from a backup
    /// taken before anything was written, a wiped volume): every connection sees the close,
    /// connects are refused for `downtime`, and the messages acknowledged so far are gone from
    /// the server, so the world stops expecting them (those still in an outbox are sent again).
    pub fn server_restore_empty(&mut self, downtime: Duration) {
        self.stats.server_restarts += 1;
        self.note(|| "server restored from an empty backup".into());
        self.server_up = false;
        let conns = self.server.restore_empty();
        for conn in conns {
            let latency = self.short_latency();
            let c = self.conns.get_mut(&conn).expect("known conn");
            c.server_open = false;
            c.lost_to_server = true;
            if c.client_open && !c.lost_to_client {
                self.schedule(
                    self.now + latency,
                    Ev::ClientSeesClose { conn, forced: true },
                );
            }
        }
        let devices = &self.devices;
        self.sent.retain(|r| {
            devices[r.device]
                .store()
                .outbox_get(r.local_id)
                .is_ok_and(|item| item.is_some())
        });
        self.schedule(self.now + downtime, Ev::ServerStart);
    }

    /// Cuts a device's link. `kind`: 0 both ends see a reset, 1 only the client, 2 only the
    /// server, 3 silently (half-dead both ways), 4 only server→client traffic dies, 5 only
    /// client→server traffic dies.
    pub fn cut(&mut self, device: usize, kind: u32) {
        let Some(conn) = self.devices[device].link else {
            return;
        };
        self.stats.cuts += 1;
        self.note(|| format!("cut conn {conn} kind {kind}"));
        let l1 = self.short_latency();
        let l2 = self.short_latency();
        let c = self.conns.get_mut(&conn).expect("known conn");
        match kind {
            4 => c.lost_to_client = true,
            5 => c.lost_to_server = true,
            _ => {
                c.lost_to_client = true;
                c.lost_to_server = true;
            }
        }
        if kind == 0 || kind == 1 {
            self.schedule(self.now + l1, Ev::ClientSeesClose { conn, forced: true });
        }
        if kind == 0 || kind == 2 {
            self.schedule(self.now + l2, Ev::ServerSeesClose { conn, forced: true });
        }
    }

    fn chaos(&mut self) -> Result<(), String> {
        if self.now >= self.chaos_until {
            return Ok(());
        }
        let weights = self.faults.chaos_weights;
        let total: u32 = weights.iter().sum();
        if total > 0 {
            let mut roll = self.rng.random_range(0..total);
            let mut kind = 0;
            while roll >= weights[kind] {
                roll -= weights[kind];
                kind += 1;
            }
            let device = self.rng.random_range(0..self.devices.len());
            match kind {
                0 => {
                    let how = self.rng.random_range(0..6);
                    self.cut(device, how);
                }
                1 => {
                    let downtime = Duration::from_millis(self.rng.random_range(100..8_000));
                    self.app_crash(device, downtime);
                }
                2 if self.server_up => {
                    let downtime = Duration::from_millis(self.rng.random_range(500..20_000));
                    let silent = self.rng.random_range(0.0..0.5);
                    self.server_crash(downtime, silent);
                }
                3 => {
                    let now = self.at();
                    if let Some(client) = self.devices[device].client.as_mut() {
                        client.network_changed(now);
                        self.pump(device)?;
                    }
                }
                4 => {
                    let now = self.at();
                    let background = !self.devices[device].background;
                    if let Some(client) = self.devices[device].client.as_mut() {
                        client.set_background(background, now);
                        self.devices[device].background = background;
                        self.pump(device)?;
                    }
                }
                _ => {}
            }
        }
        if let Some(every) = self.faults.chaos_every {
            let gap = Duration::from_millis(self.rng.random_range(0..every.as_millis() as u64 * 2));
            self.schedule(self.now + gap, Ev::Chaos);
        }
        Ok(())
    }

    // ----- the loop -----

    /// When the next thing happens: (time, which) with 0 = queued event, 1 = a client timer,
    /// 2 = the server's timer.
    fn next(&self) -> Option<(Duration, usize, usize)> {
        let mut best: Option<(Duration, usize, usize)> =
            self.queue.keys().next().map(|(t, _)| (*t, 0, 0));
        for (i, d) in self.devices.iter().enumerate() {
            if let Some(t) = d.client.as_ref().and_then(|c| c.next_timeout()) {
                let t = t.saturating_duration_since(self.base);
                if best.is_none_or(|(b, _, _)| t < b) {
                    best = Some((t, 1, i));
                }
            }
        }
        if let Some(t) = self.server.next_timeout()
            && best.is_none_or(|(b, _, _)| t < b)
        {
            best = Some((t, 2, 0));
        }
        best
    }

    /// One step; `Ok(false)` when nothing is left to happen.
    pub fn step(&mut self) -> Result<bool, String> {
        let Some((t, which, device)) = self.next() else {
            return Ok(false);
        };
        let t = t.max(self.now);
        self.now = t;
        self.stats.steps += 1;
        match which {
            0 => {
                let (_, ev) = self.queue.pop_first().expect("peeked");
                self.handle(ev)?;
            }
            1 => {
                let now = self.at();
                let d = &mut self.devices[device];
                d.same_instant_timeouts += 1;
                if d.same_instant_timeouts > 3 {
                    return Err(format!(
                        "{} busy-loops: next_timeout stays at {:?} after on_timeout (state {:?})",
                        d.name,
                        self.now,
                        d.client.as_ref().map(|c| c.state())
                    ));
                }
                let name = d.name.clone();
                self.note(|| format!("{name} timeout"));
                self.devices[device]
                    .client
                    .as_mut()
                    .expect("has a timer")
                    .on_timeout(now);
                self.pump(device)?;
            }
            _ => {
                let mut out = Vec::new();
                self.server.on_timeout(self.now, &mut out);
                self.server_outputs(out);
            }
        }
        for d in &mut self.devices {
            let due = d
                .client
                .as_ref()
                .and_then(|c| c.next_timeout())
                .is_some_and(|t| t <= self.base + self.now);
            if !due {
                d.same_instant_timeouts = 0;
            }
        }
        self.check_step()?;
        Ok(true)
    }

    fn handle(&mut self, ev: Ev) -> Result<(), String> {
        match ev {
            Ev::ToServer { conn, frame } => {
                let c = &self.conns[&conn];
                if c.lost_to_server || !c.server_open {
                    return Ok(());
                }
                self.note(|| format!("server <- conn {conn}: {}", describe(&frame)));
                let mut out = Vec::new();
                self.server
                    .on_frame(conn, frame, self.now, &mut self.rng, &mut out);
                self.server_outputs(out);
            }
            Ev::ToClient { conn, frame } => {
                let c = &self.conns[&conn];
                let device = c.device;
                // Only the driver's current link is read; a dead connection's frames never
                // reach the machine.
                if c.lost_to_client || !c.client_open || self.devices[device].link != Some(conn) {
                    return Ok(());
                }
                let name = self.devices[device].name.clone();
                self.note(|| format!("{name} <- conn {conn}: {}", describe(&frame)));
                if let Ok(Body::HandshakeResp(hello)) = frame.decode_body() {
                    self.devices[device].handshake_head = hello.inbox_head_seq;
                }
                let now = self.at();
                self.devices[device]
                    .client
                    .as_mut()
                    .expect("a link implies a running app")
                    .on_frame(frame, now);
                self.pump(device)?;
            }
            Ev::ServerAccept { conn } => {
                if !self.conns[&conn].client_open {
                    return Ok(());
                }
                if !self.server_up {
                    let latency = self.short_latency();
                    self.schedule(self.now + latency, Ev::ConnectResult { conn, ok: false });
                    return Ok(());
                }
                self.note(|| format!("server accepts conn {conn}"));
                self.server.accept(conn, self.now);
                self.conns.get_mut(&conn).expect("known").server_open = true;
                let latency = self.short_latency();
                self.schedule(self.now + latency, Ev::ConnectResult { conn, ok: true });
            }
            Ev::ConnectResult { conn, ok } => {
                let device = self.conns[&conn].device;
                if self.devices[device].connecting != Some(conn) {
                    // Abandoned attempt: `client_drops` already closed it.
                    return Ok(());
                }
                self.devices[device].connecting = None;
                let name = self.devices[device].name.clone();
                self.note(|| {
                    format!(
                        "{name} conn {conn} connect {}",
                        if ok { "ok" } else { "failed" }
                    )
                });
                let now = self.at();
                if ok {
                    self.devices[device].link = Some(conn);
                    self.devices[device]
                        .client
                        .as_mut()
                        .expect("connecting implies running")
                        .on_connected(now);
                } else {
                    self.conns.get_mut(&conn).expect("known").client_open = false;
                    self.devices[device]
                        .client
                        .as_mut()
                        .expect("connecting implies running")
                        .on_disconnected(now);
                }
                self.pump(device)?;
            }
            Ev::ClientSeesClose { conn, forced } => {
                let c = self.conns.get_mut(&conn).expect("known");
                if !forced && c.lost_to_client {
                    return Ok(());
                }
                let device = c.device;
                c.client_open = false;
                if self.devices[device].link == Some(conn) {
                    self.devices[device].link = None;
                    let name = self.devices[device].name.clone();
                    self.note(|| format!("{name} sees conn {conn} close"));
                    let now = self.at();
                    self.devices[device]
                        .client
                        .as_mut()
                        .expect("running")
                        .on_disconnected(now);
                    self.pump(device)?;
                }
            }
            Ev::ServerSeesClose { conn, forced } => {
                let c = self.conns.get_mut(&conn).expect("known");
                if (!forced && c.lost_to_server) || !c.server_open {
                    return Ok(());
                }
                c.server_open = false;
                self.note(|| format!("server sees conn {conn} close"));
                self.server.on_closed(conn);
            }
            Ev::AppSend { device, recipient } => self.app_send(device, recipient)?,
            Ev::AppMarkRead { device } => self.app_mark_read(device)?,
            Ev::AppRetry { device, local_id } => {
                let now = self.at();
                match self.devices[device].client.as_mut() {
                    Some(client) => {
                        client.retry(local_id, now).map_err(|e| e.to_string())?;
                        self.pump(device)?;
                    }
                    None => self.schedule(
                        self.now + Duration::from_secs(1),
                        Ev::AppRetry { device, local_id },
                    ),
                }
            }
            Ev::AppStart { device } => self.app_start(device)?,
            Ev::Chaos => self.chaos()?,
            Ev::ServerStart => {
                self.note(|| "server up".into());
                self.server_up = true;
            }
        }
        Ok(())
    }

    /// Runs until simulated time `until` (or nothing is left to do).
    pub fn run_until(&mut self, until: Duration) -> Result<(), String> {
        while self.next().is_some_and(|(t, _, _)| t <= until) {
            self.step()?;
        }
        self.now = self.now.max(until);
        Ok(())
    }

    /// Runs until `done` holds (checked after every step) or `limit` passes.
    pub fn run_until_true(
        &mut self,
        limit: Duration,
        done: impl Fn(&World) -> bool,
    ) -> Result<bool, String> {
        loop {
            if done(self) {
                return Ok(true);
            }
            match self.next() {
                Some((t, _, _)) if t <= limit => {
                    self.step()?;
                }
                _ => {
                    self.now = self.now.max(limit);
                    return Ok(done(self));
                }
            }
        }
    }

    // ----- invariants -----

    /// Cheap checks after every step.
    fn check_step(&mut self) -> Result<(), String> {
        if let Some(v) = self.server.violations.first() {
            return Err(format!("the server saw a protocol violation: {v}"));
        }
        for i in 0..self.devices.len() {
            let Some(epoch) = self.devices[i]
                .client
                .as_ref()
                .map(|c| c.store().inbox_epoch())
            else {
                continue;
            };
            let epoch = epoch.map_err(|e| e.to_string())?;
            if epoch != self.devices[i].epoch_seen {
                // The device moved to another inbox numbering (a restored server): its cursor
                // starts over, and the entries it verified belonged to the old one.
                let d = &mut self.devices[i];
                d.epoch_seen = epoch;
                d.cursor_seen = 0;
                d.verified_to = 0;
            }
            let d = &self.devices[i];
            let Some(client) = d.client.as_ref() else {
                continue;
            };
            let cursor = client.cursor();
            let head = self.server.head(&d.user);
            if epoch != 0 && epoch != self.server.inbox_epoch() {
                // Still following the replaced server's numbering until it reconnects: its
                // cursor counts in another inbox.
                continue;
            }
            if cursor < d.cursor_seen {
                return Err(format!(
                    "{}: cursor went back from {} to {cursor}",
                    d.name, d.cursor_seen
                ));
            }
            if cursor > head {
                return Err(format!(
                    "{}: cursor {cursor} above the inbox head {head}",
                    d.name
                ));
            }
            // The cursor never moves past an entry that was not applied (§10.3): every message
            // entry up to the cursor is in the store (each entry is checked once per device).
            if cursor > d.verified_to {
                let inbox = self.server.inbox(&d.user);
                for entry in &inbox[d.verified_to as usize..cursor as usize] {
                    if let Some(pb::inbox_entry::Body::Message(m)) = &entry.body {
                        let stored = client
                            .store()
                            .message(&m.conversation_id, m.conversation_seq)
                            .map_err(|e| e.to_string())?;
                        if stored
                            .as_ref()
                            .is_none_or(|s| s.client_msg_id != m.client_msg_id)
                        {
                            return Err(format!(
                                "{}: cursor at {cursor} but inbox entry {} ({}#{}) is not in the store: {stored:?}",
                                d.name, entry.inbox_seq, m.conversation_id, m.conversation_seq
                            ));
                        }
                    }
                }
            }
            let d = &mut self.devices[i];
            d.cursor_seen = cursor;
            d.verified_to = d.verified_to.max(cursor);
        }
        Ok(())
    }

    /// Everything has arrived everywhere: every app running and online, every cursor at its
    /// user's head, every outbox empty.
    pub fn settled(&self) -> bool {
        self.devices.iter().enumerate().all(|(i, d)| {
            let Some(client) = d.client.as_ref() else {
                return false;
            };
            // A link that died silently, or still carries a frame delayed during the faults,
            // must be dealt with first.
            let in_flight_limit = self.now + Duration::from_secs(1);
            let healthy = d.link.and_then(|l| self.conns.get(&l)).is_some_and(|c| {
                c.client_open
                    && c.server_open
                    && !c.lost_to_client
                    && !c.lost_to_server
                    && c.last_to_client <= in_flight_limit
                    && c.last_to_server <= in_flight_limit
            });
            healthy
                && client.state() == ConnectionState::Online
                && client.cursor() == self.server.head(&d.user)
                && self.sent.iter().filter(|r| r.device == i).all(|r| {
                    client
                        .store()
                        .outbox_get(r.local_id)
                        .is_ok_and(|item| item.is_none())
                })
        })
    }

    /// A description of where each device stands (for stall reports).
    pub fn dump(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "server up {} holds pushes {}",
            self.server_up,
            self.server.holds_pushes()
        );
        for (i, d) in self.devices.iter().enumerate() {
            let pending = d.store().outbox_pending().map(|p| p.len()).unwrap_or(0);
            let unacked = self
                .sent
                .iter()
                .filter(|r| r.device == i)
                .filter(|r| !matches!(d.store().outbox_get(r.local_id), Ok(None)))
                .count();
            let _ = writeln!(
                s,
                "  {}: state {:?} cursor {} head {} outbox pending {pending} unacked {unacked} link {:?} connecting {:?} next timeout {:?}",
                d.name,
                d.client.as_ref().map(|c| c.state()),
                d.client
                    .as_ref()
                    .map(|c| c.cursor())
                    .unwrap_or(d.cursor_seen),
                self.server.head(&d.user),
                d.link,
                d.connecting,
                d.client
                    .as_ref()
                    .and_then(|c| c.next_timeout())
                    .map(|t| t.saturating_duration_since(self.base)),
            );
        }
        s
    }

    /// The end-of-run invariants.
    pub fn check_final(&self) -> Result<(), String> {
        // Every send call was stored exactly once and is Sent on its device at the server's seq.
        let mut by_key: BTreeMap<(String, String), usize> = BTreeMap::new();
        let timelines = self.server.timelines();
        for timeline in timelines.values() {
            for m in timeline {
                *by_key
                    .entry((m.sender_user.clone(), m.client_msg_id.clone()))
                    .or_default() += 1;
            }
        }
        for r in &self.sent {
            let key = (r.user.clone(), r.client_msg_id.clone());
            let count = by_key.get(&key).copied().unwrap_or(0);
            if count != 1 {
                return Err(format!(
                    "{} ({}) is stored {count} times on the server",
                    r.client_msg_id, r.conversation_id
                ));
            }
            let Some((conversation_id, seq)) = self.server.find_send(&r.user, &r.client_msg_id)
            else {
                return Err(format!("{} has no dedup record", r.client_msg_id));
            };
            if conversation_id != r.conversation_id {
                return Err(format!(
                    "{} went to {conversation_id}, not {}",
                    r.client_msg_id, r.conversation_id
                ));
            }
            let d = &self.devices[r.device];
            let history = d
                .store()
                .history(&r.conversation_id, 0, u32::MAX)
                .map_err(|e| e.to_string())?;
            let copies: Vec<_> = history
                .iter()
                .filter(|m| m.client_msg_id == r.client_msg_id)
                .collect();
            match copies.as_slice() {
                [m] if m.state == SendState::Sent
                    && m.seq == seq
                    && m.local_id == r.local_id
                    && m.content == r.content => {}
                other => {
                    return Err(format!(
                        "{}: own message {} should be Sent once at seq {seq}, found {other:?}",
                        d.name, r.client_msg_id
                    ));
                }
            }
        }
        if by_key.len() != self.sent.len() {
            return Err(format!(
                "the server stored {} messages, the apps sent {}",
                by_key.len(),
                self.sent.len()
            ));
        }
        // Every device of every participant has every message of its conversations exactly
        // once, in seq order with no gaps, and nothing else.
        for d in &self.devices {
            for (conversation_id, timeline) in &timelines {
                let party = self.server.participants(conversation_id).contains(&d.user);
                let history = d
                    .store()
                    .history(conversation_id, 0, u32::MAX)
                    .map_err(|e| e.to_string())?;
                if !party {
                    if !history.is_empty() {
                        return Err(format!(
                            "{} holds messages of {conversation_id}, which is not its user's",
                            d.name
                        ));
                    }
                    continue;
                }
                let seqs: Vec<u64> = history.iter().rev().map(|m| m.seq).collect();
                let expected: Vec<u64> = (1..=timeline.len() as u64).collect();
                if seqs != expected {
                    return Err(format!(
                        "{}: {conversation_id} holds seqs {seqs:?}, the server {expected:?}",
                        d.name
                    ));
                }
                for (local, server) in history.iter().rev().zip(timeline) {
                    if local.client_msg_id != server.client_msg_id
                        || local.sender != server.sender_user
                        || local.content != server.content
                        || local.state != SendState::Sent
                    {
                        return Err(format!(
                            "{}: {conversation_id}#{} differs from the server's: {local:?}",
                            d.name, local.seq
                        ));
                    }
                }
            }
            // The cursor equals the user's inbox head, in memory and on disk.
            let head = self.server.head(&d.user);
            let cursor = d.client.as_ref().map(|c| c.cursor());
            let stored = d.store().cursor().map_err(|e| e.to_string())?;
            if cursor != Some(head) || stored != head {
                return Err(format!(
                    "{}: cursor {cursor:?} (stored {stored}) but head {head}",
                    d.name
                ));
            }
            let state = d.client.as_ref().map(|c| c.state());
            if state != Some(ConnectionState::Online) {
                return Err(format!("{} is stuck in {state:?}", d.name));
            }
        }
        // Messages one device sent to one conversation got increasing seqs in send order;
        // except that a send answered with a retryable error, or failed and retried, may be
        // overtaken by the sends after it (§12).
        let mut last: BTreeMap<(usize, String), (u64, String)> = BTreeMap::new();
        for r in &self.sent {
            let exempt = r.retried
                || self
                    .server
                    .unavailable_sends
                    .contains(&(r.user.clone(), r.client_msg_id.clone()));
            if exempt {
                continue;
            }
            let (_, seq) = self
                .server
                .find_send(&r.user, &r.client_msg_id)
                .expect("checked above");
            let key = (r.device, r.conversation_id.clone());
            if let Some((previous, previous_id)) = last.get(&key)
                && seq <= *previous
            {
                return Err(format!(
                    "{}: {} was sent after {previous_id} in {} but got seq {seq} <= {previous}",
                    self.devices[r.device].name, r.client_msg_id, r.conversation_id
                ));
            }
            last.insert(key, (seq, r.client_msg_id.clone()));
        }
        Ok(())
    }
}

/// Reads `SIM_TRACE`.
pub fn trace_from_env() -> Trace {
    match std::env::var("SIM_TRACE").as_deref() {
        Ok("1") | Ok("true") => Trace::Print,
        _ => Trace::Off,
    }
}

/// The standard randomized run for `seed`: 3 users × 2 devices, a fault phase, a quiet phase
/// that must settle within 10 simulated minutes, then 3 calm minutes that must stay calm, then
/// the final invariants.
pub fn random_run(seed: u64, trace: Trace) -> Result<Stats, String> {
    let mut planner = StdRng::seed_from_u64(seed ^ 0x5eed_5eed_5eed_5eed);
    let faults = Faults::random(&mut planner);
    let fault_phase = Duration::from_secs(planner.random_range(30..180));
    let mut world = World::new(seed, 3, 2, faults.clone(), trace);
    if trace == Trace::Print {
        println!(
            "seed {seed}: fault phase {fault_phase:?}, sync page {}, faults {faults:#?}",
            world.sync_page
        );
    }
    world.start_all();
    world.plan_app(fault_phase, 20);
    world.plan_chaos(fault_phase);
    world.run_until(fault_phase)?;
    world.quiet();
    let quiet_start = world.now;
    let limit = quiet_start + Duration::from_secs(600);
    if !world.run_until_true(limit, World::settled)? {
        return Err(format!(
            "stall: not settled 10 simulated minutes after the faults stopped\n{}",
            world.dump()
        ));
    }
    world.stats.quiet_time = world.now - quiet_start;
    // A healthy network must not make anyone reconnect.
    let connects: Vec<u64> = world.devices.iter().map(|d| d.connects).collect();
    let calm_end = world.now + Duration::from_secs(180);
    world.run_until(calm_end)?;
    for (d, before) in world.devices.iter().zip(connects) {
        if d.connects != before {
            return Err(format!(
                "{} reconnected {} times on a healthy network\n{}",
                d.name,
                d.connects - before,
                world.dump()
            ));
        }
    }
    world.check_final()?;
    world.stats.hash = world.hash;
    Ok(world.stats.clone())
}
