//! Deterministic simulation of client devices, a network and a server (FoundationDB /
//! TigerBeetle style): one seeded RNG decides everything, time is simulated (an `Instant` base
//! plus an offset; nothing sleeps and no decision reads the real clock), and the same seed
//! replays the same run.
//!
//! - [`server`]: the real server, sans IO (the gateway's session and hub, the business tier
//!   over the in-memory store), with the faults the spec allows a server.
//! - [`World`]: the devices (each a [`Client`] over a [`MemoryStore`]), the driver contract of
//!   `src/driver/` (`driver.rs`), the network with its faults, app behaviour (`app.rs`), the
//!   event loop (`run.rs`) and the invariants (`invariants.rs`).
//! - [`script`]: a hand-driven single client for focused scenarios.

#![allow(dead_code)]

mod app;
mod driver;
mod invariants;
mod run;
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
                switch_fanout: p(rng, 0.05),
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
