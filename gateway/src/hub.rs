//! The map of online users and their device connections, and pushing to them.
//!
//! Each connection has a bounded outbound queue. A push never waits for a slow connection: if
//! its queue is full, the connection is told to close (the device reconnects and pulls its inbox
//! from its cursor, so nothing is lost), which keeps one stuck phone from holding memory or
//! stalling the senders.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::outbox::{Outbound, Outbox, PushError};
use dashmap::DashMap;
use im_protocol::{Frame, pb};
use logic_api::{Delivery, InboxPosition};
use tokio_util::sync::CancellationToken;

/// The outcome of [`Hub::register`].
#[derive(Debug)]
pub enum Registration {
    /// Registered; these older connections of the same device must be kicked.
    Registered {
        /// The replaced connections.
        replaced: Vec<ConnHandle>,
    },
    /// A connection of the same device accepted later is already registered: this one must be
    /// kicked instead.
    Superseded,
    /// The user already has the most connections allowed (of other devices): this one is
    /// refused and nothing was registered.
    TooManyConnections {
        /// The limit in force.
        limit: usize,
    },
}

/// A handle on one live connection.
#[derive(Clone, Debug)]
pub struct ConnHandle {
    /// Unique per process.
    pub id: u64,
    /// The device it belongs to.
    pub device: String,
    /// Its outbound queue.
    pub tx: Arc<Outbox>,
    /// Cancelled to make the connection close (kicked or too slow).
    pub close: CancellationToken,
    /// The protocol revision negotiated: `GROUP_PUSH` goes only to revision 2 and later.
    pub revision: u32,
}

/// One online user on this hub.
#[derive(Debug, Default)]
struct OnlineUser {
    conns: Vec<ConnHandle>,
    /// The highest inbox seq seen for the user: the head their session opened with, raised by
    /// every delivery pushed here. Pongs report it, so a ping costs no store read.
    inbox_head: u64,
    /// The inbox epoch, once a session of the user opened.
    inbox_epoch: Option<u64>,
    /// The read-fan-out groups the user follows here (SPEC §13.12), to leave their rooms
    /// when the user's last connection goes.
    rooms: Vec<String>,
}

/// Online users → their connections.
#[derive(Debug)]
pub struct Hub {
    users: DashMap<String, OnlineUser>,
    next_id: AtomicU64,
    connections: AtomicU64,
    /// Most entry bytes in one `Push` frame.
    push_bytes: usize,
    /// Most live connections of one user (one per device): a single token must not be able
    /// to open connections without bound under invented device ids.
    max_connections_per_user: usize,
    /// `im_pushes_total`, looked up once.
    pushes: metrics::Counter,
    /// Told about entries for users with no connection here, when this hub is the only one
    /// (in a cluster, the cluster's router knows who is offline everywhere).
    offline: std::sync::OnceLock<Arc<dyn crate::router::OfflineSink>>,
    /// Read-fan-out group id -> the users online here who follow it: who gets `GROUP_PUSH`.
    rooms: DashMap<String, std::collections::HashSet<String>>,
    /// Group messages waiting for the next flush, when pushes are coalesced
    /// ([`Hub::coalesce_group_pushes`]).
    group_batches: std::sync::Mutex<GroupBatches>,
}

/// Coalescing of `GROUP_PUSH`: a busy group's messages leave at most once per `interval`, in
/// one frame per follower, instead of one frame (and one socket write) per message and
/// follower. An idle group's message leaves at once.
#[derive(Debug, Default)]
struct GroupBatches {
    /// Zero: every message is pushed at once (no flusher runs).
    interval: std::time::Duration,
    /// Group id -> when it was last pushed, and what waits (with each message's sender).
    groups: HashMap<String, GroupBatch>,
}

#[derive(Debug)]
struct GroupBatch {
    last_push: std::time::Instant,
    waiting: Vec<Sent>,
}

/// A group message and its sender, whose own connections are not pushed it.
type Sent = (pb::Message, Option<String>);

/// How often a busy read-fan-out group's messages are pushed ([`Hub::coalesce_group_pushes`]):
/// at most 20 ms late, and at a hundred messages a second two or three to a frame.
pub const GROUP_PUSH_INTERVAL: std::time::Duration = std::time::Duration::from_millis(20);

/// Default for [`Hub::with_limits`]'s per-user connection limit.
pub const DEFAULT_MAX_CONNECTIONS_PER_USER: usize = 16;

impl Default for Hub {
    fn default() -> Self {
        Hub {
            users: DashMap::new(),
            next_id: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            push_bytes: im_protocol::page_budget(im_protocol::DEFAULT_MAX_BODY),
            max_connections_per_user: DEFAULT_MAX_CONNECTIONS_PER_USER,
            pushes: metrics::counter!(crate::metrics::PUSHES),
            offline: std::sync::OnceLock::new(),
            rooms: DashMap::new(),
            group_batches: std::sync::Mutex::new(GroupBatches::default()),
        }
    }
}

impl Hub {
    /// An empty hub for frames of the default size.
    pub fn new() -> Arc<Hub> {
        Arc::new(Hub::default())
    }

    /// An empty hub whose pushes stay within half of `max_frame_bytes`.
    pub fn with_frame_limit(max_frame_bytes: usize) -> Arc<Hub> {
        Hub::with_limits(max_frame_bytes, DEFAULT_MAX_CONNECTIONS_PER_USER)
    }

    /// An empty hub whose pushes stay within half of `max_frame_bytes` and which registers at
    /// most `max_connections_per_user` connections per user (at least 1).
    pub fn with_limits(max_frame_bytes: usize, max_connections_per_user: usize) -> Arc<Hub> {
        Arc::new(Hub {
            push_bytes: im_protocol::page_budget(max_frame_bytes),
            max_connections_per_user: max_connections_per_user.max(1),
            ..Hub::default()
        })
    }

    /// Sends entries for users with no connection here to `sink` (once; later calls are
    /// ignored). Only for a hub that is the whole router: one gateway holds every connection.
    pub fn set_offline_sink(&self, sink: Arc<dyn crate::router::OfflineSink>) {
        let _ = self.offline.set(sink);
    }

    /// A fresh connection id.
    pub fn next_conn_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Number of authenticated connections.
    pub fn connection_count(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// Registers an authenticated connection. Of two connections of the same user and device
    /// the one accepted later wins (connection ids grow in accept order), whatever order their
    /// handshakes finish in: a late handshake on a connection the device already abandoned
    /// must not kick the device's new connection. Returns the connections the caller kicks:
    /// the older ones it replaced, or `handle` itself when a newer one is already registered.
    /// A new device beyond the per-user limit is refused; a reconnecting device (replacing its
    /// own older connection) never is.
    pub fn register(&self, user: &str, handle: ConnHandle) -> Registration {
        let mut online = self.users.entry(user.to_owned()).or_default();
        let entry = &mut online.conns;
        if entry
            .iter()
            .any(|c| c.device == handle.device && c.id > handle.id)
        {
            return Registration::Superseded;
        }
        let others = entry.iter().filter(|c| c.device != handle.device).count();
        if others >= self.max_connections_per_user {
            return Registration::TooManyConnections {
                limit: self.max_connections_per_user,
            };
        }
        let (replaced, kept): (Vec<_>, Vec<_>) =
            entry.drain(..).partition(|c| c.device == handle.device);
        *entry = kept;
        entry.push(handle);
        self.connections.fetch_add(1, Ordering::Relaxed);
        self.connections
            .fetch_sub(replaced.len() as u64, Ordering::Relaxed);
        Registration::Registered { replaced }
    }

    /// Forgets a connection (no-op when it was already replaced). Returns the connection's
    /// device when this was that device's last connection here: the device went offline on
    /// this hub (a cluster's presence registry forgets it then, and not when a newer
    /// connection of the device replaced this one).
    pub fn unregister(&self, user: &str, conn_id: u64) -> Option<String> {
        // (device, whether another connection of it is left)
        let take = |online: &mut OnlineUser| -> Option<(String, bool)> {
            let index = online.conns.iter().position(|c| c.id == conn_id)?;
            let gone = online.conns.remove(index);
            let left = online.conns.iter().any(|c| c.device == gone.device);
            Some((gone.device, left))
        };
        let mut removed = None;
        let mut rooms_left = Vec::new();
        self.users.remove_if_mut(user, |_, online| {
            removed = take(online);
            let gone = online.conns.is_empty();
            if gone {
                rooms_left = std::mem::take(&mut online.rooms);
            }
            gone
        });
        for group in rooms_left {
            self.rooms.remove_if_mut(&group, |_, members| {
                members.remove(user);
                members.is_empty()
            });
        }
        if removed.is_none()
            && let Some(mut online) = self.users.get_mut(user)
        {
            removed = take(&mut online);
        }
        let (device, left) = removed?;
        self.connections.fetch_sub(1, Ordering::Relaxed);
        (!left).then_some(device)
    }

    /// Closes the connections of one device of `user`, sending each `kick` first: the device
    /// logged in on another gateway of the cluster.
    pub fn kick_device(&self, user: &str, device: &str, kick: &Frame) {
        let kicked: Vec<ConnHandle> = match self.users.get(user) {
            Some(online) => online
                .conns
                .iter()
                .filter(|c| c.device == device)
                .cloned()
                .collect(),
            None => return,
        };
        for conn in kicked {
            let _ = conn.tx.try_push(Outbound::Frame(kick.clone()));
            conn.close.cancel();
        }
    }

    /// The devices of `user` with a connection here, sorted.
    pub fn devices_of(&self, user: &str) -> Vec<String> {
        let mut devices: Vec<String> = match self.users.get(user) {
            Some(online) => online.conns.iter().map(|c| c.device.clone()).collect(),
            None => Vec::new(),
        };
        devices.sort();
        devices.dedup();
        devices
    }

    /// Closes the connections of `user` here (of one device, or all), sending each `kick`
    /// first. Returns how many were closed.
    pub fn kick_user(&self, user: &str, device: Option<&str>, kick: &Frame) -> usize {
        let kicked: Vec<ConnHandle> = match self.users.get(user) {
            Some(online) => online
                .conns
                .iter()
                .filter(|c| device.is_none_or(|d| c.device == d))
                .cloned()
                .collect(),
            None => return 0,
        };
        for conn in &kicked {
            let _ = conn.tx.try_push(Outbound::Frame(kick.clone()));
            conn.close.cancel();
        }
        kicked.len()
    }

    /// Bytes queued for all connections here, and the most queued for one: what the
    /// `im_push_queue_bytes` gauges report, computed when they are read.
    pub fn queued_bytes(&self) -> (u64, u64) {
        let (mut total, mut most) = (0u64, 0u64);
        for online in self.users.iter() {
            for conn in &online.conns {
                let queued = conn.tx.queued_bytes() as u64;
                total += queued;
                most = most.max(queued);
            }
        }
        (total, most)
    }

    /// Every (user, device) with a connection here.
    pub fn online_devices(&self) -> Vec<(String, String)> {
        let mut devices: Vec<(String, String)> = self
            .users
            .iter()
            .flat_map(|e| {
                let user = e.key().clone();
                e.value()
                    .conns
                    .iter()
                    .map(move |c| (user.clone(), c.device.clone()))
                    .collect::<Vec<_>>()
            })
            .collect();
        devices.sort();
        devices.dedup();
        devices
    }

    /// Pushes inbox entries to the online devices of their users, one `Push` frame per user
    /// with that user's entries in the order given (commit order).
    pub fn deliver(&self, deliveries: Vec<Delivery>) {
        self.deliver_except(deliveries, None);
    }

    /// Like [`Hub::deliver`], but `except` (a user and one of their connections) is not pushed
    /// that user's entries: a sending connection gets its own message's entry through the
    /// `SEND_ACK` (its `sender_inbox_seq`), so pushing it too would only double the traffic.
    pub fn deliver_except(&self, deliveries: Vec<Delivery>, except: Option<(&str, u64)>) {
        if deliveries.is_empty() {
            return;
        }
        let mut by_user: HashMap<String, Vec<pb::InboxEntry>> = HashMap::new();
        for delivery in deliveries {
            by_user
                .entry(delivery.user)
                .or_default()
                .push(delivery.entry);
        }
        for (user, entries) in by_user {
            let Some(mut online) = self.users.get_mut(&user) else {
                if let Some(sink) = self.offline.get() {
                    sink.offline(&user, &entries);
                }
                continue;
            };
            let newest = entries.iter().map(|e| e.inbox_seq).max().unwrap_or(0);
            online.inbox_head = online.inbox_head.max(newest);
            let skip = except.filter(|(u, _)| *u == user).map(|(_, id)| id);
            for push in push_frames(entries, self.push_bytes) {
                for conn in online.conns.iter().filter(|c| Some(c.id) != skip) {
                    self.pushes.increment(1);
                    send_or_close(conn, push.clone());
                }
            }
        }
    }

    /// `user`, if online here, starts (`follows`) or stops following a read-fan-out group's
    /// pushes. Idempotent.
    pub fn follow(&self, user: &str, group_id: &str, follows: bool) {
        // The user's entry and the room are never locked together (pushes lock a room, then
        // users), so the two maps cannot deadlock each other.
        {
            let Some(mut online) = self.users.get_mut(user) else {
                return;
            };
            let listed = online.rooms.iter().position(|g| g == group_id);
            match (follows, listed) {
                (true, None) => online.rooms.push(group_id.to_owned()),
                (false, Some(index)) => {
                    online.rooms.swap_remove(index);
                }
                _ => {}
            }
        }
        if follows {
            self.rooms
                .entry(group_id.to_owned())
                .or_default()
                .insert(user.to_owned());
        } else {
            self.rooms.remove_if_mut(group_id, |_, members| {
                members.remove(user);
                members.is_empty()
            });
        }
    }

    /// How many users online here follow a read-fan-out group.
    pub fn room_size(&self, group_id: &str) -> usize {
        self.rooms.get(group_id).map_or(0, |members| members.len())
    }

    /// Coalesces `GROUP_PUSH`es from now on: a group's messages leave at most once per
    /// `interval` (an idle group's first message at once), flushed by a task on the current
    /// tokio runtime until `stop`. At a hundred messages a second to a thousand followers this
    /// halves the socket writes, which are most of the cost.
    pub fn coalesce_group_pushes(
        self: &Arc<Self>,
        interval: std::time::Duration,
        stop: CancellationToken,
    ) {
        if interval.is_zero() {
            return;
        }
        if let Ok(mut batches) = self.group_batches.lock() {
            batches.interval = interval;
        }
        let hub = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let Some(hub) = hub.upgrade() else { return };
                hub.flush_group_batches(false);
            }
        });
    }

    /// Pushes what waited for at least the interval (`all`: everything).
    fn flush_group_batches(&self, all: bool) {
        let due: Vec<(String, Vec<Sent>)> = {
            let Ok(mut batches) = self.group_batches.lock() else {
                return;
            };
            let interval = batches.interval;
            let now = std::time::Instant::now();
            let mut due = Vec::new();
            batches.groups.retain(|group, batch| {
                if !batch.waiting.is_empty()
                    && (all || now.duration_since(batch.last_push) >= interval)
                {
                    batch.last_push = now;
                    due.push((group.clone(), std::mem::take(&mut batch.waiting)));
                    true
                } else {
                    // Forget groups idle for a while, so the map holds only busy ones.
                    now.duration_since(batch.last_push) < interval * 4
                }
            });
            due
        };
        for (group, messages) in due {
            self.push_group(&group, messages);
        }
    }

    /// Pushes messages of read-fan-out groups (`GROUP_PUSH`) to the connections here that
    /// follow their groups, except those of each message's sender (`except_user`: its inbox
    /// has the message). A full queue closes the connection, as for inbox pushes: the device
    /// pages the group's timeline when it is back. With coalescing on, a busy group's
    /// messages wait for the next flush.
    pub fn deliver_group(&self, messages: Vec<pb::Message>, except_user: Option<&str>) {
        if messages.is_empty() {
            return;
        }
        let mut by_group: Vec<(String, Vec<Sent>)> = Vec::new();
        for message in messages {
            let group = message
                .conversation_id
                .strip_prefix("g:")
                .unwrap_or_default()
                .to_owned();
            let entry = (message, except_user.map(str::to_owned));
            match by_group.iter_mut().find(|(g, _)| *g == group) {
                Some((_, list)) => list.push(entry),
                None => by_group.push((group, vec![entry])),
            }
        }
        for (group, messages) in by_group {
            let now_or_later = {
                let Ok(mut batches) = self.group_batches.lock() else {
                    return;
                };
                let interval = batches.interval;
                if interval.is_zero() {
                    Some(messages)
                } else {
                    let now = std::time::Instant::now();
                    match batches.groups.get_mut(&group) {
                        // Busy: wait for the flusher.
                        Some(batch)
                            if !batch.waiting.is_empty()
                                || now.duration_since(batch.last_push) < interval =>
                        {
                            batch.waiting.extend(messages);
                            None
                        }
                        Some(batch) => {
                            batch.last_push = now;
                            Some(messages)
                        }
                        None => {
                            batches.groups.insert(
                                group.clone(),
                                GroupBatch {
                                    last_push: now,
                                    waiting: Vec::new(),
                                },
                            );
                            Some(messages)
                        }
                    }
                }
            };
            if let Some(messages) = now_or_later {
                self.push_group(&group, messages);
            }
        }
    }

    /// One group's messages to its followers here: one set of frames for everyone, and for
    /// each sender among the messages one without theirs.
    fn push_group(&self, group: &str, messages: Vec<Sent>) {
        // A snapshot, so no room lock is held while users are looked up.
        let followers: Vec<String> = match self.rooms.get(group) {
            Some(members) => members.iter().cloned().collect(),
            None => return,
        };
        let senders: std::collections::BTreeSet<&str> =
            messages.iter().filter_map(|(_, s)| s.as_deref()).collect();
        let frames_without = |sender: Option<&str>| -> Vec<Frame> {
            let kept: Vec<pb::Message> = messages
                .iter()
                .filter(|(_, s)| sender.is_none() || s.as_deref() != sender)
                .map(|(m, _)| m.clone())
                .collect();
            if kept.is_empty() {
                Vec::new()
            } else {
                group_push_frames(kept, self.push_bytes)
            }
        };
        let everyone = frames_without(None);
        let own: HashMap<&str, Vec<Frame>> = senders
            .iter()
            .map(|sender| (*sender, frames_without(Some(sender))))
            .collect();
        for user in followers {
            let Some(online) = self.users.get(&user) else {
                continue;
            };
            let frames = own.get(user.as_str()).unwrap_or(&everyone);
            for frame in frames {
                for conn in online.conns.iter().filter(|c| c.revision >= 2) {
                    self.pushes.increment(1);
                    send_or_close(conn, frame.clone());
                }
            }
        }
    }

    /// Relays a typing indicator to the online devices of `recipients`; dropped where a queue
    /// is full, since it is ephemeral.
    pub fn relay_typing(&self, recipients: &[String], event: &pb::TypingEvent) {
        for user in recipients {
            let Some(online) = self.users.get(user) else {
                continue;
            };
            for conn in online.conns.iter() {
                let _ = conn
                    .tx
                    .try_push(Outbound::Frame(Frame::push(event.clone())));
            }
        }
    }

    /// Every connection, for shutdown.
    pub fn all(&self) -> Vec<ConnHandle> {
        self.users
            .iter()
            .flat_map(|e| e.value().conns.clone())
            .collect()
    }

    /// Whether `user` has a connection on this hub.
    pub fn is_online(&self, user: &str) -> bool {
        self.users.contains_key(user)
    }

    /// Records where `user`'s inbox stood when one of their sessions opened (the head only
    /// ever rises: a delivery pushed meanwhile may already have raised it). No-op when the user
    /// has no connection here.
    pub fn note_inbox(&self, user: &str, position: InboxPosition) {
        if let Some(mut online) = self.users.get_mut(user) {
            online.inbox_head = online.inbox_head.max(position.head_seq);
            online.inbox_epoch = Some(position.epoch);
        }
    }

    /// Where `user`'s inbox stands as far as this hub knows: the head their session opened
    /// with or the newest entry pushed here since, whichever is higher. Unknown when no
    /// session of the user is open here.
    pub fn inbox_position(&self, user: &str) -> InboxPosition {
        match self.users.get(user) {
            Some(online) => match online.inbox_epoch {
                Some(epoch) => InboxPosition {
                    head_seq: online.inbox_head,
                    epoch,
                },
                None => InboxPosition::UNKNOWN,
            },
            None => InboxPosition::UNKNOWN,
        }
    }
}

/// `Push` frames for `entries`, in order, each holding entries of at most about `budget` bytes
/// (at least one): a batch of large messages to one user must not make a frame the writer
/// cannot send.
fn push_frames(entries: Vec<pb::InboxEntry>, budget: usize) -> Vec<Frame> {
    cut_into_frames(entries, budget, |entries| Frame::push(pb::Push { entries }))
}

/// `GroupPush` frames for one group's messages, cut like [`push_frames`].
fn group_push_frames(messages: Vec<pb::Message>, budget: usize) -> Vec<Frame> {
    cut_into_frames(messages, budget, |messages| {
        Frame::push(pb::GroupPush { messages })
    })
}

/// `items` in order, in frames made by `frame` of at most about `budget` encoded bytes each
/// (at least one item per frame).
fn cut_into_frames<T: im_protocol::ProstMessage>(
    items: Vec<T>,
    budget: usize,
    frame: impl Fn(Vec<T>) -> Frame,
) -> Vec<Frame> {
    let mut frames = Vec::new();
    let mut current = Vec::new();
    let mut used = 0;
    for item in items {
        let size = item.encoded_len() + 6;
        if used + size > budget && !current.is_empty() {
            frames.push(frame(std::mem::take(&mut current)));
            used = 0;
        }
        used += size;
        current.push(item);
    }
    if !current.is_empty() {
        frames.push(frame(current));
    }
    frames
}

fn send_or_close(conn: &ConnHandle, frame: Frame) {
    match conn.tx.try_push(Outbound::Frame(frame)) {
        Ok(()) => {}
        Err(PushError::Full) => {
            metrics::counter!(crate::metrics::PUSH_DROPS).increment(1);
            tracing::debug!(
                conn = conn.id,
                "outbound queue full: closing the slow connection"
            );
            conn.close.cancel();
        }
        Err(PushError::Closed) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handle(id: u64, device: &str) -> (ConnHandle, ()) {
        let (tx, rx) = (Arc::new(Outbox::new(4, 1 << 20, 1 << 20)), ());
        (
            ConnHandle {
                id,
                device: device.into(),
                tx,
                close: CancellationToken::new(),
                revision: im_protocol::PROTOCOL_REVISION,
            },
            rx,
        )
    }

    #[test]
    fn large_batches_are_split_into_pushes_that_fit_a_frame() {
        let entry = |seq| pb::InboxEntry {
            inbox_seq: seq,
            body: Some(pb::inbox_entry::Body::Message(pb::Message {
                content: vec![1; 60_000],
                ..Default::default()
            })),
        };
        let frames = push_frames((1..=40).map(entry).collect(), 512 * 1024);
        assert_eq!(frames.len(), 5);
        let seqs: Vec<u64> = frames
            .iter()
            .flat_map(|f| match f.decode_body() {
                Ok(im_protocol::Body::Push(p)) => p
                    .entries
                    .into_iter()
                    .map(|e| e.inbox_seq)
                    .collect::<Vec<_>>(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(seqs, (1..=40).collect::<Vec<_>>());
        assert!(frames.iter().all(|f| f.body.len() <= 512 * 1024 + 70_000));
        assert_eq!(push_frames(vec![entry(1)], 10).len(), 1);
    }

    #[test]
    fn a_newer_connection_of_a_device_replaces_the_older_one() {
        let hub = Hub::new();
        let (old, _r1) = handle(1, "phone");
        let (new, _r2) = handle(2, "phone");
        let (laptop, _r3) = handle(3, "laptop");
        assert!(
            matches!(hub.register("alice", old), Registration::Registered { replaced } if replaced.is_empty())
        );
        assert!(
            matches!(hub.register("alice", laptop), Registration::Registered { replaced } if replaced.is_empty())
        );
        match hub.register("alice", new) {
            Registration::Registered { replaced } => {
                assert_eq!(replaced.iter().map(|c| c.id).collect::<Vec<_>>(), vec![1])
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(hub.connection_count(), 2);
    }

    #[test]
    fn a_late_handshake_on_an_older_connection_does_not_kick_the_newer_one() {
        let hub = Hub::new();
        let (new, _r1) = handle(5, "phone");
        let (old, _r2) = handle(4, "phone");
        assert!(matches!(
            hub.register("alice", new),
            Registration::Registered { .. }
        ));
        assert!(matches!(
            hub.register("alice", old),
            Registration::Superseded
        ));
        assert_eq!(hub.all().iter().map(|c| c.id).collect::<Vec<_>>(), vec![5]);
        hub.unregister("alice", 4);
        assert_eq!(hub.connection_count(), 1);
    }

    #[test]
    fn a_user_gets_at_most_the_limit_of_devices_but_a_device_may_always_reconnect() {
        let hub = Hub::with_limits(1 << 20, 2);
        let (phone, _) = handle(1, "phone");
        let (laptop, _) = handle(2, "laptop");
        let (tablet, _) = handle(3, "tablet");
        let (phone_again, _) = handle(4, "phone");
        assert!(matches!(
            hub.register("alice", phone),
            Registration::Registered { .. }
        ));
        assert!(matches!(
            hub.register("alice", laptop),
            Registration::Registered { .. }
        ));
        assert!(matches!(
            hub.register("alice", tablet),
            Registration::TooManyConnections { limit: 2 }
        ));
        assert!(matches!(
            hub.register("alice", phone_again),
            Registration::Registered { replaced } if replaced.len() == 1
        ));
        // Other users are not affected by alice's limit.
        let (bob, _) = handle(5, "phone");
        assert!(matches!(
            hub.register("bob", bob),
            Registration::Registered { .. }
        ));
        assert_eq!(hub.connection_count(), 3);
    }

    #[test]
    fn the_inbox_head_of_an_online_user_follows_the_session_and_the_pushes() {
        let hub = Hub::new();
        let (phone, _) = handle(1, "phone");
        assert_eq!(hub.inbox_position("alice"), InboxPosition::UNKNOWN);
        hub.register("alice", phone);
        // A push that lands between registration and the session's head read counts too.
        let entry = |seq| Delivery {
            user: "alice".into(),
            entry: pb::InboxEntry {
                inbox_seq: seq,
                body: None,
            },
        };
        hub.deliver(vec![entry(8)]);
        assert_eq!(hub.inbox_position("alice"), InboxPosition::UNKNOWN);
        hub.note_inbox(
            "alice",
            InboxPosition {
                head_seq: 7,
                epoch: 3,
            },
        );
        assert_eq!(
            hub.inbox_position("alice"),
            InboxPosition {
                head_seq: 8,
                epoch: 3
            }
        );
        hub.deliver(vec![entry(9), entry(10)]);
        assert_eq!(hub.inbox_position("alice").head_seq, 10);
        hub.unregister("alice", 1);
        assert_eq!(hub.inbox_position("alice"), InboxPosition::UNKNOWN);
    }
}
