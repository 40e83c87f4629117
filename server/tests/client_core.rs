//! The client core (sdk-core's tokio driver over its state machine) against the real server
//! process: a server SIGKILL and restart while clients are sending, an app that stops reading
//! its events, token refresh, and every app request answered in the core's own types.

mod support;

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures::future::BoxFuture;
use im_protocol::ids::{direct_conversation_id, group_conversation_id};
use im_protocol::{FrameCodec, pb};
use sdk_core::driver::{self, DriverError, DriverOptions, TokenRefresher};
use sdk_core::memory::MemoryStore;
use sdk_core::{
    ByteStream, ConnectionState, Connector, Event, GroupEventKind, GroupRole, HistoryDirection,
    LocalMessage, Recipient, RequestError, SendState, ServerAddress, StopReason, TypingEvent,
    error_code,
};
use support::*;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tokio_util::codec::Decoder as _;

#[tokio::test]
async fn two_client_cores_chat_through_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let (alice, mut alice_events) = start_client(&server, "alice", "phone");
    let (_bob, mut bob_events) = start_client(&server, "bob", "phone");
    wait_for(&mut alice_events, "alice synced", |e| {
        matches!(e, Event::Synced { .. }).then_some(())
    })
    .await;
    wait_for(&mut bob_events, "bob synced", |e| {
        matches!(e, Event::Synced { .. }).then_some(())
    })
    .await;

    let sent = alice
        .send_text(Recipient::User("bob".into()), "hello from the core")
        .await
        .unwrap();
    assert_eq!(sent.state, SendState::Sending);
    let acked = wait_for(&mut alice_events, "the ack", |e| match e {
        Event::MessageUpdated(m) if m.local_id == sent.local_id && m.state == SendState::Sent => {
            Some(m.clone())
        }
        _ => None,
    })
    .await;
    assert_eq!(acked.seq, 1);
    let received = wait_for(&mut bob_events, "the message", |e| match e {
        Event::MessageReceived(m) => Some(m.clone()),
        _ => None,
    })
    .await;
    assert_eq!(
        (received.sender.as_str(), received.content.as_slice()),
        ("alice", b"hello from the core".as_slice())
    );
    let unread = wait_for(&mut bob_events, "the conversation update", |e| match e {
        Event::ConversationUpdated(c) if c.last_seq == 1 => Some(c.unread_count),
        _ => None,
    })
    .await;
    assert_eq!(unread, 1);
}

#[tokio::test]
async fn messages_queued_offline_are_delivered_once_after_connecting() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let (alice, mut alice_events) = start_client(&server, "alice", "phone");
    for i in 0..50 {
        alice
            .send_text(Recipient::User("bob".into()), &format!("queued {i}"))
            .await
            .unwrap();
    }
    wait_for(&mut alice_events, "alice synced", |e| {
        matches!(e, Event::Synced { .. }).then_some(())
    })
    .await;
    // Bob connects later and pulls everything in order.
    let mut sent = 0;
    while sent < 50 {
        wait_for(&mut alice_events, "acks", |e| match e {
            Event::MessageUpdated(m) if m.state == SendState::Sent => Some(()),
            _ => None,
        })
        .await;
        sent += 1;
    }
    let (bob, mut bob_events) = start_client(&server, "bob", "phone");
    wait_for(&mut bob_events, "bob synced", |e| {
        matches!(e, Event::Synced { cursor: 50 }).then_some(())
    })
    .await;
    let history = bob
        .local_history(&direct_conversation_id("alice", "bob"), 0, 100)
        .await
        .unwrap();
    let texts: Vec<String> = history
        .iter()
        .rev()
        .map(|m| String::from_utf8_lossy(&m.content).into_owned())
        .collect();
    assert_eq!(
        texts,
        (0..50).map(|i| format!("queued {i}")).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn clients_keep_sending_through_a_server_sigkill_and_restart_without_loss_or_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start_process(dir.path(), &[]);
    let (alice, mut alice_events) = start_client(&server, "alice", "phone");
    let (bob, mut bob_events) = start_client(&server, "bob", "laptop");
    wait_for(&mut alice_events, "alice synced", |e| {
        matches!(e, Event::Synced { .. }).then_some(())
    })
    .await;
    wait_for(&mut bob_events, "bob synced", |e| {
        matches!(e, Event::Synced { .. }).then_some(())
    })
    .await;

    // Collect every event in the background.
    let (alice_seen_tx, mut alice_seen) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(e) = alice_events.recv().await {
            let _ = alice_seen_tx.send(e);
        }
    });
    let (bob_seen_tx, mut bob_seen) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(e) = bob_events.recv().await {
            let _ = bob_seen_tx.send(e);
        }
    });

    let total = 300;
    let mut local_ids = Vec::new();
    for i in 0..total {
        let m = alice
            .send_text(Recipient::User("bob".into()), &format!("n{i}"))
            .await
            .unwrap();
        local_ids.push(m.local_id);
        if i == total / 3 {
            server.kill9();
        }
        if i == total / 2 {
            server.restart();
        }
        if i % 10 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    // Every message is acknowledged exactly once, with increasing seqs in send order.
    let mut acked: HashMap<u64, LocalMessage> = HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while acked.len() < total {
        let event = tokio::time::timeout_at(deadline, alice_seen.recv())
            .await
            .expect("all acks in time")
            .unwrap();
        if let Event::MessageUpdated(m) = event {
            assert_ne!(m.state, SendState::Failed, "message {} failed", m.local_id);
            if m.state == SendState::Sent {
                assert!(acked.insert(m.local_id, m).is_none(), "acked twice");
            }
        }
    }
    let seqs: Vec<u64> = local_ids.iter().map(|id| acked[id].seq).collect();
    assert_eq!(
        seqs,
        (1..=total as u64).collect::<Vec<_>>(),
        "conversation order is send order, no seq lost or reused"
    );

    // Bob receives each exactly once, in order.
    let mut received = Vec::new();
    while received.len() < total {
        let event = tokio::time::timeout_at(deadline, bob_seen.recv())
            .await
            .expect("all messages in time")
            .unwrap();
        if let Event::MessageReceived(m) = event {
            received.push(m);
        }
    }
    let texts: Vec<String> = received
        .iter()
        .map(|m| String::from_utf8_lossy(&m.content).into_owned())
        .collect();
    assert_eq!(
        texts,
        (0..total).map(|i| format!("n{i}")).collect::<Vec<_>>()
    );
    let (state, cursor) = bob.state().await.unwrap();
    assert_eq!(state, ConnectionState::Online);
    assert_eq!(cursor, total as u64);
}

#[tokio::test]
async fn an_oversized_message_fails_at_once_and_does_not_block_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let (alice, mut events) = start_client(&server, "alice", "phone");
    wait_for(&mut events, "alice synced", |e| {
        matches!(e, Event::Synced { .. }).then_some(())
    })
    .await;
    let too_big = alice
        .send(Recipient::User("bob".into()), 0, vec![0; 2 << 20])
        .await
        .unwrap();
    let failed = wait_for(&mut events, "the failure", |e| match e {
        Event::MessageUpdated(m) if m.local_id == too_big.local_id => Some(m.state),
        _ => None,
    })
    .await;
    assert_eq!(failed, SendState::Failed);
    let fine = alice
        .send_text(Recipient::User("bob".into()), "small")
        .await
        .unwrap();
    let state = wait_for(&mut events, "the small one", |e| match e {
        Event::MessageUpdated(m) if m.local_id == fine.local_id => Some(m.state),
        _ => None,
    })
    .await;
    assert_eq!(state, SendState::Sent);
}

/// What a [`RecordingConnector`] saw on the client's connections.
#[derive(Default)]
struct Recording {
    connects: AtomicUsize,
    bytes_read: AtomicU64,
    /// When the client wrote each PING.
    pings: Mutex<Vec<Instant>>,
}

impl Recording {
    fn pings_since(&self, since: Instant) -> usize {
        self.pings
            .lock()
            .unwrap()
            .iter()
            .filter(|&&t| t > since)
            .count()
    }
}

/// Records what passes over another connector (TCP, or the in-memory transport): a connector
/// plugged in from outside the client core.
struct RecordingConnector(Arc<Recording>, Arc<dyn Connector>);

impl Connector for RecordingConnector {
    fn connect(
        &self,
        server: &ServerAddress,
    ) -> BoxFuture<'static, io::Result<Box<dyn ByteStream>>> {
        let recording = self.0.clone();
        let connecting = self.1.connect(server);
        Box::pin(async move {
            let inner = connecting.await?;
            recording.connects.fetch_add(1, Ordering::SeqCst);
            Ok(Box::new(Recorded {
                inner,
                recording,
                codec: FrameCodec::default(),
                written: BytesMut::new(),
            }) as Box<dyn ByteStream>)
        })
    }
}

struct Recorded {
    inner: Box<dyn ByteStream>,
    recording: Arc<Recording>,
    codec: FrameCodec,
    /// Written bytes not yet decoded into whole frames.
    written: BytesMut,
}

impl AsyncRead for Recorded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = (buf.filled().len() - before) as u64;
        self.recording.bytes_read.fetch_add(read, Ordering::SeqCst);
        result
    }
}

impl AsyncWrite for Recorded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = result {
            let this = &mut *self;
            this.written.extend_from_slice(&buf[..n]);
            while let Ok(Some(frame)) = this.codec.decode(&mut this.written) {
                if frame.op == pb::Op::Ping as u16 {
                    this.recording.pings.lock().unwrap().push(Instant::now());
                }
            }
        }
        result
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[tokio::test]
async fn an_app_that_stops_reading_events_holds_the_server_back_without_losing_the_link_or_a_message()
 {
    let dir = tempfile::tempdir().unwrap();
    // A 1 s heartbeat: the server closes a connection it has heard nothing from for 3 s.
    let server = Server::start(dir.path(), &["--heartbeat-secs", "1"]);
    let recording = Arc::new(Recording::default());
    let mut bob_config = config("bob", "phone");
    // Far shorter than the pause: were the unread pongs held against the link, it would drop.
    bob_config.pong_timeout = Duration::from_secs(2);
    let options = DriverOptions {
        connector: Arc::new(RecordingConnector(recording.clone(), server.connector())),
        event_capacity: 8,
        ..DriverOptions::default()
    };
    let (bob, mut bob_events) = start_client_with(&server, "bob", "phone", bob_config, options);
    wait_for(&mut bob_events, "bob synced", |e| {
        matches!(e, Event::Synced { .. }).then_some(())
    })
    .await;
    let mut alice = Client::connect(&server, "alice", "phone").await;

    // Bob's app takes no events for about 6 s (six heartbeats, two idle timeouts, within the
    // server's 15 s limit for unread data) while alice sends a message every 100 ms. Bob's
    // queue of 8 is full after a few messages.
    let total = 60;
    let mut held_since = None;
    for i in 0..total {
        alice
            .send_text(to_user("bob"), &format!("m{i}"), &format!("message {i}"))
            .await
            .unwrap();
        if i == 15 {
            held_since = Some((Instant::now(), recording.bytes_read.load(Ordering::SeqCst)));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (held_since, read_then) = held_since.unwrap();

    // Meanwhile the driver read nothing more from the server, kept its heartbeats going and
    // still answered the app.
    assert_eq!(
        recording.bytes_read.load(Ordering::SeqCst),
        read_then,
        "the driver stopped reading while the app was behind"
    );
    let pings = recording.pings_since(held_since);
    assert!(
        pings >= 3,
        "heartbeats went on: {pings} pings in {:?}",
        held_since.elapsed()
    );
    let (state, _) = tokio::time::timeout(Duration::from_secs(1), bob.state())
        .await
        .expect("commands are handled while the server is held back")
        .unwrap();
    assert_eq!(state, ConnectionState::Online);

    // The app reads again: every message, once, in order, on the same connection.
    let mut texts = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while texts.len() < total {
        let event = tokio::time::timeout_at(deadline, bob_events.recv())
            .await
            .expect("every message in time")
            .expect("the client runs");
        match event {
            Event::MessageReceived(m) => {
                texts.push(String::from_utf8_lossy(&m.content).into_owned())
            }
            Event::State(state) => panic!("the connection changed state: {state:?}"),
            _ => {}
        }
    }
    assert_eq!(
        texts,
        (0..total)
            .map(|i| format!("message {i}"))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        recording.connects.load(Ordering::SeqCst),
        1,
        "neither side dropped the connection"
    );
    assert_eq!(
        bob.state().await.unwrap(),
        (ConnectionState::Online, total as u64)
    );
}

#[tokio::test]
async fn an_app_that_awaits_an_answer_while_behind_on_events_still_gets_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let options = DriverOptions {
        connector: server.connector(),
        event_capacity: 2,
        ..DriverOptions::default()
    };
    let (bob, mut bob_events) =
        start_client_with(&server, "bob", "phone", config("bob", "phone"), options);
    wait_for(&mut bob_events, "bob synced", |e| {
        matches!(e, Event::Synced { .. }).then_some(())
    })
    .await;
    let mut alice = Client::connect(&server, "alice", "phone").await;
    for i in 0..20 {
        alice
            .send_text(to_user("bob"), &format!("m{i}"), &format!("message {i}"))
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The answer is behind the pushes the driver holds back; an app awaiting it before it
    // reads on must not wait forever.
    let page = tokio::time::timeout(Duration::from_secs(10), bob.fetch_conversations(0, ""))
        .await
        .expect("the answer arrives although the app is behind")
        .unwrap();
    let [conversation] = page.conversations.as_slice() else {
        panic!("one conversation: {page:?}")
    };
    assert_eq!((conversation.last_seq, conversation.unread_count), (20, 20));

    let mut received = Vec::new();
    while received.len() < 20 {
        let m = wait_for(&mut bob_events, "the messages", |e| match e {
            Event::MessageReceived(m) => Some(m.seq),
            _ => None,
        })
        .await;
        received.push(m);
    }
    assert_eq!(received, (1..=20).collect::<Vec<_>>());
}

/// The app's token source: hands out one fresh token.
struct FreshToken(String);

impl TokenRefresher for FreshToken {
    fn refresh(&self) -> Option<String> {
        Some(self.0.clone())
    }
}

#[tokio::test]
async fn an_expired_token_is_replaced_through_the_apps_refresher() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let expired = token_with("alice", Some("phone"), now_secs() - 60);
    let options = DriverOptions {
        token_refresher: Some(Arc::new(FreshToken(server.token("alice", "phone")))),
        connector: server.connector(),
        ..DriverOptions::default()
    };
    let (_alice, mut events) = driver::start(
        server.addr.into(),
        expired,
        config("alice", "phone"),
        MemoryStore::new(),
        options,
        &tokio::runtime::Handle::current(),
    )
    .unwrap();
    wait_for(&mut events, "the expiry", |e| {
        matches!(
            e,
            Event::State(ConnectionState::Stopped(StopReason::TokenExpired))
        )
        .then_some(())
    })
    .await;
    wait_for(&mut events, "synced with the fresh token", |e| {
        matches!(e, Event::Synced { .. }).then_some(())
    })
    .await;
}

#[tokio::test]
async fn app_requests_are_answered_in_the_cores_own_types() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let (alice, mut alice_events) = start_client(&server, "alice", "phone");
    let (bob, mut bob_events) = start_client(&server, "bob", "phone");
    for events in [&mut alice_events, &mut bob_events] {
        wait_for(events, "synced", |e| {
            matches!(e, Event::Synced { .. }).then_some(())
        })
        .await;
    }

    // Groups.
    let group = alice
        .create_group("friends", vec!["bob".into()], false, "create-1")
        .await
        .unwrap();
    assert_eq!(
        (
            group.name.as_str(),
            group.owner.as_str(),
            group.member_count,
            group.open
        ),
        ("friends", "alice", 2, false)
    );
    let created = wait_for(&mut bob_events, "the group event", |e| match e {
        Event::GroupChanged(g) => Some(g.clone()),
        _ => None,
    })
    .await;
    assert_eq!(
        (
            created.kind,
            created.actor.as_str(),
            created.group_id.as_str()
        ),
        (GroupEventKind::Created, "alice", group.group_id.as_str())
    );
    let added = alice
        .add_group_members(&group.group_id, vec!["carol".into(), "bob".into()])
        .await
        .unwrap();
    assert_eq!(
        (added.members, added.group.member_count),
        (vec!["carol".to_string()], 3)
    );
    let page = alice.group_members(&group.group_id, 0, "").await.unwrap();
    let members: Vec<(&str, GroupRole)> = page
        .members
        .iter()
        .map(|m| (m.user_id.as_str(), m.role))
        .collect();
    assert_eq!(
        members,
        [
            ("alice", GroupRole::Owner),
            ("bob", GroupRole::Member),
            ("carol", GroupRole::Member)
        ]
    );
    assert_eq!(bob.group_info(&group.group_id).await.unwrap(), page.group);
    let removed = alice
        .remove_group_members(&group.group_id, vec!["carol".into()])
        .await
        .unwrap();
    assert_eq!(removed.members, ["carol"]);
    // A refusal carries the protocol's stable code.
    match bob
        .remove_group_members(&group.group_id, vec!["alice".into()])
        .await
    {
        Err(DriverError::Request(RequestError::Server(e))) => {
            assert_eq!((e.code, e.name()), (error_code::FORBIDDEN, "FORBIDDEN"))
        }
        other => panic!("a non-owner removing the owner: {other:?}"),
    }
    // A broadcast channel: in read fan-out at any size; only its owner adds members (and
    // posts).
    let channel = alice
        .create_channel("news", vec!["bob".into()], true, "channel-1")
        .await
        .unwrap();
    assert!(channel.broadcast && channel.read_fanout, "{channel:?}");
    assert!(!group.broadcast);
    match bob
        .add_group_members(&channel.group_id, vec!["dave".into()])
        .await
    {
        Err(DriverError::Request(RequestError::Server(e))) => {
            assert_eq!(e.code, error_code::FORBIDDEN)
        }
        other => panic!("a subscriber adding to a channel: {other:?}"),
    }

    // Messages: typing, recall, server history, delete for me, read marker.
    let conversation = group_conversation_id(&group.group_id);
    alice.typing(&conversation, true).await.unwrap();
    let typing = wait_for(&mut bob_events, "alice typing", |e| match e {
        Event::Typing(t) => Some(t.clone()),
        _ => None,
    })
    .await;
    assert_eq!(
        typing,
        TypingEvent {
            conversation_id: conversation.clone(),
            user_id: "alice".into(),
            typing: true
        }
    );
    let sent = alice
        .send_text(Recipient::Group(group.group_id.clone()), "hello group")
        .await
        .unwrap();
    let seq = wait_for(&mut alice_events, "the ack", |e| match e {
        Event::MessageUpdated(m) if m.local_id == sent.local_id && m.state == SendState::Sent => {
            Some(m.seq)
        }
        _ => None,
    })
    .await;
    wait_for(&mut bob_events, "the message", |e| {
        matches!(e, Event::MessageReceived(m) if m.seq == seq).then_some(())
    })
    .await;
    let marker = bob.mark_read(&conversation, seq).await.unwrap();
    assert_eq!((marker.read_seq, marker.unread_count), (seq, 0));
    let recall = alice.recall(&conversation, seq).await.unwrap();
    assert_eq!((recall.seq, recall.by_user.as_str()), (seq, "alice"));
    wait_for(&mut bob_events, "the recall", |e| {
        matches!(e, Event::MessageRecalled { seq: s, .. } if *s == seq).then_some(())
    })
    .await;
    let history = bob
        .fetch_history(&conversation, 0, HistoryDirection::Older, 10)
        .await
        .unwrap();
    assert_eq!(
        history
            .messages
            .iter()
            .map(|m| (m.seq, m.recalled))
            .collect::<Vec<_>>(),
        [(seq, true)]
    );
    assert_eq!(
        bob.delete_for_me(&conversation, vec![seq]).await.unwrap(),
        1
    );
    let conversations = bob.fetch_conversations(0, "").await.unwrap();
    assert!(
        conversations
            .conversations
            .iter()
            .any(|c| c.conversation_id == conversation && c.title == "friends"),
        "{conversations:?}"
    );

    // Leaving, and a group that is not open.
    bob.leave_group(&group.group_id).await.unwrap();
    match bob.join_group(&group.group_id).await {
        Err(DriverError::Request(RequestError::Server(e))) => {
            assert_eq!(e.code, error_code::NOT_OPEN)
        }
        other => panic!("joining a closed group: {other:?}"),
    }
}
