//! The bare relay: the least a server speaking our framing can do, to measure what the machine
//! can move at all. A `HandshakeReq` is answered at once (no token check; the user is the JWT's
//! `sub` decoded without verification, or the token text itself); a `SendReq` to a user is
//! pushed to that user's connections as one `InboxEntry` (inbox seq = a per-user counter in
//! memory) and acknowledged; nothing is stored and nothing is synced to disk. `PING` → `PONG`.
//! Groups live in memory: create and add members, and group sends fan out to the members'
//! connections (the sender excepted).
//!
//! One task per connection, and no channel between connections: a connection's task reads
//! what its socket has, answers into its own output buffer, and appends each push straight into
//! the receiver's [`Outbox`] (a byte buffer behind a lock) under that user's lock, so a user's
//! pushes leave in inbox order; the receiver's task is woken once per batch, not per message.
//! A receiver whose outbox holds more than [`OUTBOX_LIMIT`] stops its senders from reading:
//! they keep writing their own output and look again every millisecond, which pushes back on
//! them through TCP instead of growing memory.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use bytes::{Buf as _, BytesMut};
use dashmap::DashMap;
use im_protocol::pb::{self, send_req::Target};
use im_protocol::{Body, Flags, Frame, FrameCodec};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_util::codec::Encoder as _;
use tokio_util::sync::CancellationToken;

use crate::wire;

/// Bytes a connection may have waiting to be written before the connections relaying to it
/// stop reading.
const OUTBOX_LIMIT: usize = 1 << 20;

/// Frames waiting for one connection, appended by whichever task relays to it.
#[derive(Default)]
struct Outbox {
    queue: Mutex<BytesMut>,
    wake: Notify,
}

impl Outbox {
    /// Appends with `write` under the lock; wakes the owner when the queue was empty (it is
    /// woken once per batch, however many frames are appended before it runs). Returns
    /// whether the queue is now over its limit.
    fn append(&self, write: impl FnOnce(&mut BytesMut)) -> bool {
        let (was_empty, len) = {
            let mut queue = self.queue.lock().expect("outbox lock");
            let was_empty = queue.is_empty();
            write(&mut queue);
            (was_empty, queue.len())
        };
        if was_empty {
            self.wake.notify_one();
        }
        len >= OUTBOX_LIMIT
    }

    fn is_full(&self) -> bool {
        self.queue.lock().expect("outbox lock").len() >= OUTBOX_LIMIT
    }
}

/// A user's live connections and inbox counter.
#[derive(Default)]
struct UserSlot {
    seq: u64,
    conns: Vec<(u64, Arc<Outbox>)>,
}

type Slot = Arc<Mutex<UserSlot>>;

#[derive(Default)]
struct State {
    users: DashMap<String, Slot>,
    groups: DashMap<String, Vec<String>>,
    next_id: AtomicU64,
}

impl State {
    fn slot(&self, user: &str) -> Slot {
        if let Some(slot) = self.users.get(user) {
            return slot.clone();
        }
        self.users.entry(user.to_owned()).or_default().clone()
    }
}

/// A running relay.
pub struct RunningRelay {
    /// The bound address.
    pub addr: SocketAddr,
    /// Cancel to stop accepting and close every connection.
    pub shutdown: CancellationToken,
    /// Ends when the accept loop has stopped.
    pub task: tokio::task::JoinHandle<()>,
}

/// Binds `listen` and serves in a background task.
pub async fn start(listen: SocketAddr) -> anyhow::Result<RunningRelay> {
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    let state = Arc::new(State::default());
    let stop = shutdown.clone();
    let task = tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = stop.cancelled() => return,
                a = listener.accept() => a,
            };
            match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(serve_conn(stream, state.clone(), stop.clone()));
                }
                Err(e) => {
                    // Out of files or similar: back off instead of spinning.
                    tracing::debug!(error = %e, "relay accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    });
    Ok(RunningRelay {
        addr,
        shutdown,
        task,
    })
}

/// The user a token names: the JWT's `sub` without verification, or the token text.
fn user_of(token: &str) -> String {
    let mut parts = token.split('.');
    if let (Some(_), Some(payload), Some(_)) = (parts.next(), parts.next(), parts.next())
        && let Ok(json) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload)
        && let Ok(value) = serde_json::from_slice::<serde_json::Value>(&json)
        && let Some(sub) = value.get("sub").and_then(|s| s.as_str())
    {
        return sub.to_string();
    }
    token.to_string()
}

fn direct_id(a: &str, b: &str) -> String {
    if a <= b {
        format!("d:{a}:{b}")
    } else {
        format!("d:{b}:{a}")
    }
}

/// Pushes one entry to the user of `slot`, numbered with the user's next inbox seq: `write`
/// appends the frame for that seq to each connection's outbox, under the user's lock (so the
/// user's pushes leave in inbox order). Returns a connection whose outbox is over its limit.
fn relay_to_user(slot: &Slot, mut write: impl FnMut(&mut BytesMut, u64)) -> Option<Arc<Outbox>> {
    let mut slot = slot.lock().expect("user lock");
    slot.seq += 1;
    let seq = slot.seq;
    let mut full = None;
    for (_, outbox) in &slot.conns {
        if outbox.append(|queue| write(queue, seq)) && full.is_none() {
            full = Some(outbox.clone());
        }
    }
    full
}

/// What a connection knows about itself.
struct Conn {
    id: u64,
    outbox: Arc<Outbox>,
    me: Option<String>,
    /// The last direct conversation this connection sent to: its peer, id and slot.
    conversation: Option<(String, String, Slot)>,
    /// A receiver over its limit: reading waits until it drains.
    blocked_on: Option<Arc<Outbox>>,
    goodbye: bool,
}

async fn serve_conn(stream: TcpStream, state: Arc<State>, stop: CancellationToken) {
    let _ = stream.set_nodelay(true);
    let mut conn = Conn {
        id: state.next_id.fetch_add(1, Ordering::Relaxed),
        outbox: Arc::new(Outbox::default()),
        me: None,
        conversation: None,
        blocked_on: None,
        goodbye: false,
    };
    // Buffers exist only while there is something in them: an idle connection holds none
    // (15,000 idle connections with 128 KiB each would measure the allocator, not the relay).
    let mut input = BytesMut::new();
    let mut out = BytesMut::new();
    let max_body = im_protocol::DEFAULT_MAX_BODY;
    'serve: loop {
        // Take what others relayed here (unless this connection is itself backed up).
        if out.len() < OUTBOX_LIMIT {
            let mut queue = conn.outbox.queue.lock().expect("outbox lock");
            if !queue.is_empty() {
                if out.is_empty() {
                    std::mem::swap(&mut out, &mut *queue);
                } else {
                    out.extend_from_slice(&queue);
                    queue.clear();
                }
            }
        }
        while !out.is_empty() {
            match stream.try_write(&out) {
                Ok(n) => out.advance(n),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => break 'serve,
            }
        }
        if conn.goodbye && out.is_empty() {
            break;
        }
        if out.is_empty() && out.capacity() > 0 {
            out = BytesMut::new();
        }
        if conn.blocked_on.as_ref().is_some_and(|o| !o.is_full()) {
            conn.blocked_on = None;
        }
        let reading = out.len() < OUTBOX_LIMIT && conn.blocked_on.is_none() && !conn.goodbye;
        tokio::select! {
            _ = stop.cancelled() => break,
            ready = stream.readable(), if reading => {
                if ready.is_err() {
                    break;
                }
                if input.capacity() - input.len() < 16 * 1024 {
                    input.reserve(64 * 1024);
                }
                match stream.try_read_buf(&mut input) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        // Readiness is reported until a read finds nothing: that is how every
                        // connection ends up after its last message. It must not keep the
                        // buffer reserved for a read that never came.
                        if input.is_empty() {
                            input = BytesMut::new();
                        }
                        continue;
                    }
                    Err(_) => break,
                }
                // One clock read per batch: every message read together gets its time.
                let now = crate::common::now_ms();
                let used = wire::split_frames(&input, max_body, |header, body| {
                    if !conn.goodbye {
                        handle_frame(&state, &mut conn, header, body, now, &mut out);
                    }
                });
                let used = match used {
                    Ok(used) => used,
                    Err(e) => {
                        reply(
                            &mut out,
                            Frame::error(0, pb::ErrorCode::BadFrame, format!("refused: {e}")),
                        );
                        conn.goodbye = true;
                        continue;
                    }
                };
                input.advance(used);
                if input.is_empty() {
                    input = BytesMut::new();
                }
            }
            ready = stream.writable(), if !out.is_empty() => {
                if ready.is_err() {
                    break;
                }
            }
            _ = conn.outbox.wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(1)), if conn.blocked_on.is_some() => {}
        }
    }
    if let Some(user) = &conn.me {
        let slot = state.slot(user);
        slot.lock()
            .expect("user lock")
            .conns
            .retain(|(id, _)| *id != conn.id);
    }
}

fn reply(out: &mut BytesMut, frame: Frame) {
    // Encoding into a buffer fails only for a body over the limit, which none of ours is.
    let _ = FrameCodec::default().encode(frame, out);
}

/// Handles one frame; answers go to `out`, pushes to the receivers' outboxes.
fn handle_frame(
    state: &State,
    conn: &mut Conn,
    header: &im_protocol::frame::FrameHeader,
    body: &[u8],
    now: u64,
    out: &mut BytesMut,
) {
    let id = header.request_id;
    // The hot path: a message to a user is read in place and relayed without decoding it into
    // structs (what the relay measures is the machine, not prost's allocations).
    if header.op == pb::Op::SendReq as u16
        && let Ok(send) = wire::scan_send(body)
        && let (Some(to), Some(from)) = (send.to_user, conn.me.as_deref())
        && let Ok(to) = std::str::from_utf8(to)
    {
        let msg_id = state.next_id.fetch_add(1, Ordering::Relaxed);
        if conn
            .conversation
            .as_ref()
            .is_none_or(|(peer, _, _)| peer != to)
        {
            conn.conversation = Some((to.to_owned(), direct_id(from, to), state.slot(to)));
        }
        let (_, conversation_id, slot) = conn.conversation.as_ref().expect("just set");
        let full = relay_to_user(slot, |queue, inbox_seq| {
            wire::append_push_frame(
                queue,
                &wire::PushedMessage {
                    inbox_seq,
                    conversation_id: conversation_id.as_bytes(),
                    kind: pb::ConversationKind::Direct as i32,
                    sender_user: from.as_bytes(),
                    server_msg_id: msg_id,
                    server_time_ms: now,
                    client_msg_id: send.client_msg_id,
                    content_type: send.content_type,
                    content: send.content,
                },
            )
        });
        wire::append_send_ack_frame(
            out,
            id,
            send.client_msg_id,
            conversation_id.as_bytes(),
            msg_id,
            now,
        );
        if full.is_some() {
            conn.blocked_on = full;
        }
        return;
    }
    let frame = Frame {
        op: header.op,
        flags: Flags::from_bits(header.flags).unwrap_or_default(),
        request_id: id,
        body: bytes::Bytes::copy_from_slice(body),
    };
    let body = match frame.decode_body() {
        Ok(body) => body,
        Err(e) => {
            reply(out, Frame::error(id, e.code(), e.to_string()));
            return;
        }
    };
    let answer = match body {
        Body::HandshakeReq(req) => {
            let user = user_of(&req.token);
            let head = {
                let slot = state.slot(&user);
                let mut slot = slot.lock().expect("user lock");
                slot.conns.push((conn.id, conn.outbox.clone()));
                slot.seq
            };
            conn.me = Some(user.clone());
            Some(Frame::new(
                id,
                pb::HandshakeResp {
                    user_id: user,
                    device_id: req.device_id,
                    protocol_version: 1,
                    server_time_ms: crate::common::now_ms(),
                    heartbeat_interval_ms: 30_000,
                    idle_timeout_ms: 90_000,
                    max_frame_bytes: im_protocol::DEFAULT_MAX_BODY as u32,
                    max_message_bytes: 64 * 1024,
                    inbox_head_seq: head,
                    session_id: format!("relay-{}", conn.id),
                    ..Default::default()
                },
            ))
        }
        Body::Ping(p) => Some(Frame::new(
            id,
            pb::Pong {
                client_time_ms: p.client_time_ms,
                server_time_ms: crate::common::now_ms(),
                inbox_head_seq: 0,
                inbox_epoch: 0,
            },
        )),
        Body::SendReq(req) => {
            let from = conn.me.clone().unwrap_or_default();
            let msg_id = state.next_id.fetch_add(1, Ordering::Relaxed);
            let (conversation_id, kind, to): (String, pb::ConversationKind, Vec<String>) =
                match &req.target {
                    Some(Target::ToUser(u)) => (
                        direct_id(&from, u),
                        pb::ConversationKind::Direct,
                        vec![u.clone()],
                    ),
                    Some(Target::ToGroup(g)) => {
                        let members = state
                            .groups
                            .get(g)
                            .map(|m| m.iter().filter(|u| **u != from).cloned().collect())
                            .unwrap_or_default();
                        (format!("g:{g}"), pb::ConversationKind::Group, members)
                    }
                    None => (String::new(), pb::ConversationKind::Unspecified, vec![]),
                };
            for user in to {
                let full = relay_to_user(&state.slot(&user), |queue, inbox_seq| {
                    wire::append_push_frame(
                        queue,
                        &wire::PushedMessage {
                            inbox_seq,
                            conversation_id: conversation_id.as_bytes(),
                            kind: kind as i32,
                            sender_user: from.as_bytes(),
                            server_msg_id: msg_id,
                            server_time_ms: now,
                            client_msg_id: req.client_msg_id.as_bytes(),
                            content_type: req.content_type,
                            content: &req.content,
                        },
                    )
                });
                if full.is_some() {
                    conn.blocked_on = full;
                }
            }
            Some(Frame::new(
                id,
                pb::SendAck {
                    client_msg_id: req.client_msg_id,
                    conversation_id,
                    server_msg_id: msg_id,
                    conversation_seq: 0,
                    server_time_ms: now,
                    duplicate: false,
                    sender_inbox_seq: 0,
                    content_rewritten: false,
                },
            ))
        }
        Body::GroupCreateReq(req) => {
            let owner = conn.me.clone().unwrap_or_default();
            let group_id = format!("rg{}", state.next_id.fetch_add(1, Ordering::Relaxed));
            let mut members = vec![owner.clone()];
            members.extend(req.members.into_iter().filter(|m| *m != owner));
            let count = members.len() as u32;
            state.groups.insert(group_id.clone(), members);
            Some(Frame::new(
                id,
                pb::GroupCreateResp {
                    group: Some(pb::GroupInfo {
                        group_id,
                        name: req.name,
                        owner,
                        member_count: count,
                        ..Default::default()
                    }),
                },
            ))
        }
        Body::GroupAddMembersReq(req) => {
            let added = match state.groups.get_mut(&req.group_id) {
                Some(mut members) => {
                    let new: Vec<String> = req
                        .members
                        .into_iter()
                        .filter(|m| !members.contains(m))
                        .collect();
                    members.extend(new.iter().cloned());
                    new
                }
                None => vec![],
            };
            Some(Frame::new(
                id,
                pb::GroupAddMembersResp {
                    group: Some(pb::GroupInfo {
                        group_id: req.group_id,
                        ..Default::default()
                    }),
                    added,
                },
            ))
        }
        Body::SyncReq(req) => {
            let head = conn
                .me
                .as_ref()
                .map(|u| state.slot(u).lock().expect("user lock").seq)
                .unwrap_or(0);
            Some(Frame::new(
                id,
                pb::SyncResp {
                    head_seq: head,
                    next_seq: req.from_seq.max(head + 1),
                    ..Default::default()
                },
            ))
        }
        Body::DeliveryAck(_) | Body::Typing(_) => None,
        Body::Goodbye(_) => {
            conn.goodbye = true;
            None
        }
        _ => Some(Frame::error(
            id,
            pb::ErrorCode::UnknownOp,
            "not supported by the bare relay",
        )),
    };
    if let Some(answer) = answer {
        reply(out, answer);
    }
}
