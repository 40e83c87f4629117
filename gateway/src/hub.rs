//! The map of online users and their device connections, and pushing to them.
//!
//! Each connection has a bounded outbound queue. A push never waits for a slow connection: if
//! its queue is full, the connection is told to close (the device reconnects and pulls its inbox
//! from its cursor, so nothing is lost), which keeps one stuck phone from holding memory or
//! stalling the senders.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;
use im_protocol::{Frame, pb};
use timeline_store::Delivery;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// What the connection's writer task sends.
#[derive(Debug)]
pub enum Outbound {
    /// A frame to encode and send.
    Frame(Frame),
    /// Compress bodies of at least this many bytes from now on (after the handshake).
    Compress(usize),
}

/// A handle on one live connection.
#[derive(Clone, Debug)]
pub struct ConnHandle {
    /// Unique per process.
    pub id: u64,
    /// The device it belongs to.
    pub device: String,
    /// Its outbound queue.
    pub tx: mpsc::Sender<Outbound>,
    /// Cancelled to make the connection close (kicked or too slow).
    pub close: CancellationToken,
}

/// Online users → their connections.
#[derive(Debug, Default)]
pub struct Hub {
    users: DashMap<String, Vec<ConnHandle>>,
    next_id: AtomicU64,
    connections: AtomicU64,
}

impl Hub {
    /// An empty hub.
    pub fn new() -> Arc<Hub> {
        Arc::new(Hub::default())
    }

    /// A fresh connection id.
    pub fn next_conn_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Number of authenticated connections.
    pub fn connection_count(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// Registers an authenticated connection. Returns the connections of the same user and
    /// device that it replaces: the caller kicks them.
    pub fn register(&self, user: &str, handle: ConnHandle) -> Vec<ConnHandle> {
        let mut entry = self.users.entry(user.to_owned()).or_default();
        let (replaced, kept): (Vec<_>, Vec<_>) =
            entry.drain(..).partition(|c| c.device == handle.device);
        *entry = kept;
        entry.push(handle);
        self.connections.fetch_add(1, Ordering::Relaxed);
        self.connections
            .fetch_sub(replaced.len() as u64, Ordering::Relaxed);
        replaced
    }

    /// Forgets a connection (no-op when it was already replaced).
    pub fn unregister(&self, user: &str, conn_id: u64) {
        let mut removed = false;
        self.users.remove_if_mut(user, |_, conns| {
            let before = conns.len();
            conns.retain(|c| c.id != conn_id);
            removed = conns.len() != before;
            conns.is_empty()
        });
        if !removed {
            if let Some(mut conns) = self.users.get_mut(user) {
                let before = conns.len();
                conns.retain(|c| c.id != conn_id);
                removed = conns.len() != before;
            }
        }
        if removed {
            self.connections.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Pushes inbox entries to the online devices of their users, one `Push` frame per user
    /// with that user's entries in the order given (commit order).
    pub fn deliver(&self, deliveries: Vec<Delivery>) {
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
            let Some(conns) = self.users.get(&user) else {
                continue;
            };
            let push = pb::Push { entries };
            for conn in conns.iter() {
                send_or_close(conn, Frame::push(push.clone()));
            }
        }
    }

    /// Relays a typing indicator to the online devices of `recipients`; dropped where a queue
    /// is full, since it is ephemeral.
    pub fn relay_typing(&self, recipients: &[String], event: &pb::TypingEvent) {
        for user in recipients {
            let Some(conns) = self.users.get(user) else {
                continue;
            };
            for conn in conns.iter() {
                let _ = conn
                    .tx
                    .try_send(Outbound::Frame(Frame::push(event.clone())));
            }
        }
    }

    /// Every connection, for shutdown.
    pub fn all(&self) -> Vec<ConnHandle> {
        self.users.iter().flat_map(|e| e.value().clone()).collect()
    }
}

fn send_or_close(conn: &ConnHandle, frame: Frame) {
    match conn.tx.try_send(Outbound::Frame(frame)) {
        Ok(()) => {}
        Err(mpsc::error::TrySendError::Full(_)) => {
            tracing::debug!(
                conn = conn.id,
                "outbound queue full: closing the slow connection"
            );
            conn.close.cancel();
        }
        Err(mpsc::error::TrySendError::Closed(_)) => {}
    }
}
