//! A server whose store is replaced (restored from an older backup, a wiped volume) numbers
//! inboxes from 1 again. A client holding a cursor of the old numbering must notice (the inbox
//! epoch differs) and start over, instead of waiting forever for seqs above its old cursor.

mod support;

use std::time::Duration;

use sdk_core::Event;
use support::*;

#[tokio::test]
async fn a_client_follows_a_server_whose_store_was_replaced() {
    let d1 = tempfile::tempdir().unwrap();
    let d2 = tempfile::tempdir().unwrap();
    let mut server = Server::start_process(d1.path(), &[]);

    let (bob, mut bob_events) = start_client(&server, "bob", "phone");
    let mut alice = Client::connect(&server, "alice", "phone").await;
    for i in 0..3 {
        alice
            .send_text(to_user("bob"), &format!("old-{i}"), &format!("old {i}"))
            .await
            .unwrap();
    }
    for _ in 0..3 {
        wait_for(&mut bob_events, "an old message", |e| {
            matches!(e, Event::MessageReceived(_)).then_some(())
        })
        .await;
    }
    assert_eq!(bob.state().await.unwrap().1, 3, "bob's cursor");

    // The server comes back on an empty store with the same secret and address.
    drop(alice);
    server.kill9();
    server.restart_on(d2.path());
    let mut alice = Client::connect(&server, "alice", "phone").await;
    alice
        .send_text(to_user("bob"), "new-0", "after the restore")
        .await
        .unwrap();

    wait_for(&mut bob_events, "the reset", |e| {
        matches!(e, Event::InboxReset { .. }).then_some(())
    })
    .await;
    let received = wait_for(&mut bob_events, "the new message", |e| match e {
        Event::MessageReceived(m) => Some(m.clone()),
        _ => None,
    })
    .await;
    assert_eq!(received.content, b"after the restore");
    assert_eq!(received.seq, 1);

    // The conversation list is the new server's, not a mix with the old local state.
    let synced = async {
        loop {
            let conversations = bob.conversations().await.unwrap();
            if let [only] = conversations.as_slice()
                && only.last_seq == 1
                && only.unread_count == 1
            {
                return only.clone();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let conversation = tokio::time::timeout(Duration::from_secs(10), synced)
        .await
        .expect("bob's conversation list shows only the new server's state");
    assert_eq!(
        conversation.last_message.map(|m| m.content),
        Some(b"after the restore".to_vec())
    );
    let history = bob.local_history("d:alice:bob", 0, 100).await.unwrap();
    assert_eq!(
        history.len(),
        1,
        "nothing of the old server is left: {history:?}"
    );
}

/// An operator restored a store from a backup and renewed its epoch: clients start over from
/// the restored state (here the same messages), instead of trusting seqs from before.
#[tokio::test]
async fn renewing_the_epoch_after_a_restore_makes_clients_resync() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start_process(dir.path(), &[]);
    let (bob, mut bob_events) = start_client(&server, "bob", "phone");
    let mut alice = Client::connect(&server, "alice", "phone").await;
    for i in 0..3 {
        alice
            .send_text(to_user("bob"), &format!("m{i}"), &format!("message {i}"))
            .await
            .unwrap();
    }
    for _ in 0..3 {
        wait_for(&mut bob_events, "a message", |e| {
            matches!(e, Event::MessageReceived(_)).then_some(())
        })
        .await;
    }
    drop(alice);
    assert!(server.terminate());
    let renewed = std::process::Command::new(env!("CARGO_BIN_EXE_im-server"))
        .arg("renew-inbox-epoch")
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(renewed.status.success(), "{renewed:?}");
    server.restart();
    wait_for(&mut bob_events, "the reset", |e| {
        matches!(e, Event::InboxReset { .. }).then_some(())
    })
    .await;
    for _ in 0..3 {
        wait_for(&mut bob_events, "a message again", |e| {
            matches!(e, Event::MessageReceived(_)).then_some(())
        })
        .await;
    }
    let history = bob.local_history("d:alice:bob", 0, 100).await.unwrap();
    assert_eq!(history.len(), 3, "{history:?}");
}
