//! The client core (sdk-core's tokio driver over its state machine) against the real server
//! process, including a server SIGKILL and restart while clients are sending.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use im_protocol::ids::direct_conversation_id;
use sdk_core::{ConnectionState, Event, LocalMessage, Recipient, SendState};
use support::*;
use tokio::sync::mpsc;

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
