//! The bare relay: the least a server speaking our framing can do, to measure what the machine
//! can move at all. A `HandshakeReq` is answered at once (no token check; the user is the JWT's
//! `sub` decoded without verification, or the token text itself); a `SendReq` to a user is
//! pushed to that user's connections as one `InboxEntry` (inbox seq = a per-user counter in
//! memory) and acknowledged; nothing is stored and nothing is synced to disk. `PING` → `PONG`.
//! Groups live in memory: create and add members, and group sends fan out to the members'
//! connections (the sender excepted).
//!
//! Each connection has a reader loop and a writer task fed by a bounded queue (1,024 frames):
//! when a receiver's queue is full the relaying reader waits, which pushes back on the sender
//! through TCP instead of growing memory.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine as _;
use dashmap::DashMap;
use futures::{SinkExt as _, StreamExt as _};
use im_protocol::pb::{self, send_req::Target};
use im_protocol::{Body, Flags, Frame, FrameCodec};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;

use crate::wire;

/// A user's live connections and inbox counter.
#[derive(Default)]
struct UserSlot {
    seq: u64,
    conns: Vec<(u64, mpsc::Sender<Frame>)>,
}

#[derive(Default)]
struct State {
    users: DashMap<String, UserSlot>,
    groups: DashMap<String, Vec<String>>,
    next_id: AtomicU64,
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

/// Pushes one entry to `user`'s connections, numbered with the user's next inbox seq; `body`
/// makes the push body for that seq. Frames go to connections with room at once, under the
/// user's lock; a full queue is waited on after the lock is released.
async fn relay_to_user(state: &State, user: &str, body: impl FnOnce(u64) -> bytes::Bytes) {
    let mut waiting = Vec::new();
    {
        let mut slot = match state.users.get_mut(user) {
            Some(slot) => slot,
            None => state.users.entry(user.to_owned()).or_default(),
        };
        slot.seq += 1;
        if slot.conns.is_empty() {
            return;
        }
        let push = Frame {
            op: pb::Op::Push as u16,
            flags: Flags::PUSH,
            request_id: 0,
            body: body(slot.seq),
        };
        for (_, conn) in &slot.conns {
            match conn.try_send(push.clone()) {
                Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
                Err(mpsc::error::TrySendError::Full(push)) => waiting.push((conn.clone(), push)),
            }
        }
    }
    for (conn, push) in waiting {
        let _ = conn.send(push).await;
    }
}

async fn serve_conn(stream: TcpStream, state: Arc<State>, stop: CancellationToken) {
    let _ = stream.set_nodelay(true);
    let (r, w) = stream.into_split();
    let mut reader = FramedRead::new(r, FrameCodec::default());
    let (tx, mut rx) = mpsc::channel::<Frame>(1024);
    // Writer: feed whatever is queued, flush when the queue is empty.
    let writer = tokio::spawn(async move {
        let mut writer = FramedWrite::new(w, FrameCodec::default());
        while let Some(frame) = rx.recv().await {
            if writer.feed(frame).await.is_err() {
                return;
            }
            while let Ok(frame) = rx.try_recv() {
                if writer.feed(frame).await.is_err() {
                    return;
                }
            }
            if futures::SinkExt::<Frame>::flush(&mut writer).await.is_err() {
                return;
            }
        }
    });
    let conn_id = state.next_id.fetch_add(1, Ordering::Relaxed);
    let mut me: Option<String> = None;
    // The last direct conversation this connection sent to: its peer and id.
    let mut conversation: Option<(String, String)> = None;
    loop {
        let frame = tokio::select! {
            _ = stop.cancelled() => break,
            f = reader.next() => match f { Some(Ok(f)) => f, _ => break },
        };
        let id = frame.request_id;
        // The hot path: a message to a user is read in place and relayed without decoding it
        // into structs (what the relay measures is the machine, not prost's allocations).
        if frame.op == pb::Op::SendReq as u16
            && let Ok(send) = wire::scan_send(&frame.body)
            && let (Some(to), Some(from)) = (send.to_user, me.as_deref())
            && let Ok(to) = std::str::from_utf8(to)
        {
            let msg_id = state.next_id.fetch_add(1, Ordering::Relaxed);
            let now = crate::common::now_ms();
            if conversation.as_ref().is_none_or(|(peer, _)| peer != to) {
                conversation = Some((to.to_owned(), direct_id(from, to)));
            }
            let conversation_id = &conversation.as_ref().expect("just set").1;
            relay_to_user(&state, to, |inbox_seq| {
                wire::push_body(&wire::PushedMessage {
                    inbox_seq,
                    conversation_id: conversation_id.as_bytes(),
                    kind: pb::ConversationKind::Direct as i32,
                    sender_user: from.as_bytes(),
                    server_msg_id: msg_id,
                    server_time_ms: now,
                    client_msg_id: send.client_msg_id,
                    content_type: send.content_type,
                    content: send.content,
                })
            })
            .await;
            let ack = Frame {
                op: pb::Op::SendAck as u16,
                flags: Flags::empty(),
                request_id: id,
                body: wire::send_ack_body(
                    send.client_msg_id,
                    conversation_id.as_bytes(),
                    msg_id,
                    now,
                ),
            };
            if tx.send(ack).await.is_err() {
                break;
            }
            continue;
        }
        let body = match frame.decode_body() {
            Ok(body) => body,
            Err(e) => {
                let _ = tx.send(Frame::error(id, e.code(), e.to_string())).await;
                continue;
            }
        };
        let reply = match body {
            Body::HandshakeReq(req) => {
                let user = user_of(&req.token);
                let head = {
                    let mut slot = state.users.entry(user.clone()).or_default();
                    slot.conns.push((conn_id, tx.clone()));
                    slot.seq
                };
                me = Some(user.clone());
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
                        session_id: format!("relay-{conn_id}"),
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
                let from = me.clone().unwrap_or_default();
                let msg_id = state.next_id.fetch_add(1, Ordering::Relaxed);
                let (conversation_id, kind, to): (String, pb::ConversationKind, Vec<String>) =
                    match req.target {
                        Some(Target::ToUser(u)) => {
                            (direct_id(&from, &u), pb::ConversationKind::Direct, vec![u])
                        }
                        Some(Target::ToGroup(g)) => {
                            let members = state
                                .groups
                                .get(&g)
                                .map(|m| m.iter().filter(|u| **u != from).cloned().collect())
                                .unwrap_or_default();
                            (format!("g:{g}"), pb::ConversationKind::Group, members)
                        }
                        None => (String::new(), pb::ConversationKind::Unspecified, vec![]),
                    };
                let now = crate::common::now_ms();
                let message = pb::Message {
                    conversation_id: conversation_id.clone(),
                    kind: kind as i32,
                    sender_user: from.clone(),
                    sender_device: String::new(),
                    server_msg_id: msg_id,
                    conversation_seq: 0,
                    server_time_ms: now,
                    client_msg_id: req.client_msg_id.clone(),
                    content_type: req.content_type,
                    content: req.content,
                    recalled: false,
                    recalled_ms: 0,
                };
                for user in to {
                    let (seq, conns) = {
                        let mut slot = state.users.entry(user).or_default();
                        slot.seq += 1;
                        let conns: Vec<mpsc::Sender<Frame>> =
                            slot.conns.iter().map(|(_, c)| c.clone()).collect();
                        (slot.seq, conns)
                    };
                    if conns.is_empty() {
                        continue;
                    }
                    let push = Frame::push(pb::Push {
                        entries: vec![pb::InboxEntry {
                            inbox_seq: seq,
                            body: Some(pb::inbox_entry::Body::Message(message.clone())),
                        }],
                    });
                    for c in conns {
                        let _ = c.send(push.clone()).await;
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
                    },
                ))
            }
            Body::GroupCreateReq(req) => {
                let owner = me.clone().unwrap_or_default();
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
                let head = me
                    .as_ref()
                    .and_then(|u| state.users.get(u).map(|s| s.seq))
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
            Body::Goodbye(_) => break,
            _ => Some(Frame::error(
                id,
                pb::ErrorCode::UnknownOp,
                "not supported by the bare relay",
            )),
        };
        if let Some(reply) = reply
            && tx.send(reply).await.is_err()
        {
            break;
        }
    }
    if let Some(user) = me
        && let Some(mut slot) = state.users.get_mut(&user)
    {
        slot.conns.retain(|(id, _)| *id != conn_id);
    }
    drop(tx);
    let _ = writer.await;
}
