//! End-to-end scenarios against the real server process over real sockets.

mod support;

use im_protocol::Body;
use im_protocol::ids::direct_conversation_id;
use im_protocol::pb;
use support::*;

fn inbox_seqs(entries: &[pb::InboxEntry]) -> Vec<u64> {
    entries.iter().map(|e| e.inbox_seq).collect()
}

#[tokio::test]
async fn two_users_chat() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut alice = Client::connect(&server, "alice", "phone").await;
    let mut bob = Client::connect(&server, "bob", "phone").await;

    let ack = alice
        .send_text(to_user("bob"), "m1", "hi bob")
        .await
        .unwrap();
    assert_eq!(ack.conversation_id, direct_conversation_id("alice", "bob"));
    assert_eq!(ack.conversation_seq, 1);
    assert!(ack.server_msg_id > 0 && ack.server_time_ms > 0 && !ack.duplicate);

    let pushed = bob.pushed_entries(1).await;
    assert_eq!(inbox_seqs(&pushed), vec![1]);
    let message = &messages(&pushed)[0];
    assert_eq!(
        (message.sender_user.as_str(), text(message).as_str()),
        ("alice", "hi bob")
    );
    assert_eq!(message.server_msg_id, ack.server_msg_id);

    let reply = bob
        .send_text(to_user("alice"), "r1", "hi alice")
        .await
        .unwrap();
    assert_eq!(reply.conversation_seq, 2);
    // Alice's inbox: her own message is seq 1 (for her other devices; this connection learnt
    // it from the ack), then bob's reply is pushed as seq 2.
    assert_eq!(ack.sender_inbox_seq, 1);
    let pushed = alice.pushed_entries(1).await;
    assert_eq!(inbox_seqs(&pushed), vec![2]);
    assert_eq!(text(&messages(&pushed)[0]), "hi alice");
    assert_eq!(inbox_seqs(&alice.sync_all(1, 10).await), vec![1, 2]);
}

#[tokio::test]
async fn offline_user_receives_everything_on_reconnect_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut alice = Client::connect(&server, "alice", "phone").await;
    let mut ids = Vec::new();
    for i in 0..300 {
        ids.push(
            alice
                .send_only(pb::SendReq {
                    target: Some(to_user("bob")),
                    client_msg_id: format!("m{i}"),
                    content_type: 0,
                    content: format!("message {i}").into_bytes(),
                })
                .await,
        );
    }
    for id in ids {
        assert!(matches!(alice.response(id).await, Body::SendAck(_)));
    }

    let mut bob = Client::connect(&server, "bob", "phone").await;
    assert_eq!(bob.hello.inbox_head_seq, 300);
    let entries = bob.sync_all(1, 70).await;
    assert_eq!(inbox_seqs(&entries), (1..=300).collect::<Vec<_>>());
    let texts: Vec<String> = messages(&entries).iter().map(text).collect();
    assert_eq!(
        texts,
        (0..300).map(|i| format!("message {i}")).collect::<Vec<_>>()
    );
    let seqs: Vec<u64> = messages(&entries)
        .iter()
        .map(|m| m.conversation_seq)
        .collect();
    assert_eq!(seqs, (1..=300).collect::<Vec<_>>());

    // A range above the head is answered explicitly instead of leaving the client waiting.
    match bob
        .request(pb::SyncReq {
            from_seq: 301,
            limit: 10,
            to_seq: 305,
        })
        .await
    {
        Body::SyncResp(resp) => {
            assert!(resp.entries.is_empty() && !resp.has_more);
            assert_eq!(
                resp.missing,
                vec![pb::SeqRange {
                    from_seq: 301,
                    to_seq: 305,
                    reason: pb::SeqRangeReason::NotYet as i32
                }]
            );
        }
        other => panic!("{other:?}"),
    }
    // Gap fill: any range can be pulled again.
    match bob
        .request(pb::SyncReq {
            from_seq: 120,
            limit: 0,
            to_seq: 122,
        })
        .await
    {
        Body::SyncResp(resp) => assert_eq!(inbox_seqs(&resp.entries), vec![120, 121, 122]),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn two_devices_of_one_user_stay_in_sync() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut phone = Client::connect(&server, "alice", "phone").await;
    let mut laptop = Client::connect(&server, "alice", "laptop").await;
    let mut bob = Client::connect(&server, "bob", "phone").await;

    bob.send_text(to_user("alice"), "b1", "to both devices")
        .await
        .unwrap();
    for device in [&mut phone, &mut laptop] {
        let pushed = device.pushed_entries(1).await;
        assert_eq!(text(&messages(&pushed)[0]), "to both devices");
    }
    let ack = phone
        .send_text(to_user("bob"), "a1", "sent from the phone")
        .await
        .unwrap();
    let on_laptop = laptop.pushed_entries(1).await;
    assert_eq!(on_laptop[0].inbox_seq, ack.sender_inbox_seq);
    assert_eq!(text(&messages(&on_laptop)[0]), "sent from the phone");

    // Each device keeps its own delivery cursor; both see the same inbox.
    phone
        .send_only(pb::DeliveryAck { up_to_inbox_seq: 2 })
        .await;
    assert_eq!(inbox_seqs(&laptop.sync_all(1, 10).await), vec![1, 2]);

    // The same device connecting again replaces the old connection, which is kicked.
    let _phone_again = Client::connect(&server, "alice", "phone").await;
    loop {
        match phone.next_frame().await {
            None => break,
            Some(frame) if frame.is_push() => {
                if let Ok(Body::Kick(kick)) = frame.decode_body() {
                    assert_eq!(kick.reason, pb::KickReason::LoggedInElsewhere as i32);
                }
            }
            Some(_) => {}
        }
    }
}

#[tokio::test]
async fn a_group_of_50_members_receives_every_message() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let users: Vec<String> = (0..50).map(|i| format!("user{i:02}")).collect();
    let mut clients = Vec::new();
    for user in &users {
        clients.push(Client::connect(&server, user, "phone").await);
    }
    let created = match clients[0]
        .request(pb::GroupCreateReq {
            name: "fifty".into(),
            members: users[1..].to_vec(),
            open: false,
            client_request_id: "g1".into(),
            broadcast: false,
        })
        .await
    {
        Body::GroupCreateResp(resp) => resp.group.unwrap(),
        other => panic!("{other:?}"),
    };
    assert_eq!(created.member_count, 50);
    let group = created.group_id.clone();

    for (i, client) in clients.iter_mut().enumerate().take(3) {
        client
            .send_text(
                to_group(&group),
                &format!("g{i}"),
                &format!("hello from {i}"),
            )
            .await
            .unwrap();
    }
    for (i, client) in clients.iter_mut().enumerate() {
        // Created event + the three messages, in the same order for everyone; a sender's own
        // message reaches its connection as the ack, not as a push.
        let own = usize::from(i < 3);
        let entries = client.pushed_entries(4 - own).await;
        let texts: Vec<String> = messages(&entries).iter().map(text).collect();
        let expected: Vec<String> = (0..3)
            .filter(|&s| s != i)
            .map(|s| format!("hello from {s}"))
            .collect();
        assert_eq!(texts, expected);
        let seqs: Vec<u64> = messages(&entries)
            .iter()
            .map(|m| m.conversation_seq)
            .collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    }
    // Only members may post.
    let mut outsider = Client::connect(&server, "outsider", "phone").await;
    let refused = outsider
        .send_text(to_group(&group), "x1", "let me in")
        .await
        .unwrap_err();
    assert_eq!(refused.code, pb::ErrorCode::Forbidden as i32);
    // Members are listed in user-id order.
    match clients[7]
        .request(pb::GroupMembersReq {
            group_id: group.clone(),
            limit: 0,
            cursor: String::new(),
        })
        .await
    {
        Body::GroupMembersResp(resp) => {
            let ids: Vec<String> = resp.members.iter().map(|m| m.user_id.clone()).collect();
            assert_eq!(ids, users);
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_resend_with_the_same_client_msg_id_is_deduplicated() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut alice = Client::connect(&server, "alice", "phone").await;
    let first = alice
        .send_text(to_user("bob"), "same-id", "once")
        .await
        .unwrap();
    let again = alice
        .send_text(to_user("bob"), "same-id", "once")
        .await
        .unwrap();
    assert!(again.duplicate);
    assert_eq!(
        (
            again.server_msg_id,
            again.conversation_seq,
            again.sender_inbox_seq
        ),
        (
            first.server_msg_id,
            first.conversation_seq,
            first.sender_inbox_seq
        )
    );
    let conflict = alice
        .send_text(to_user("bob"), "same-id", "different")
        .await
        .unwrap_err();
    assert_eq!(conflict.code, pb::ErrorCode::ClientMsgIdConflict as i32);

    let mut bob = Client::connect(&server, "bob", "phone").await;
    assert_eq!(messages(&bob.sync_all(1, 100).await).len(), 1);
}

#[tokio::test]
async fn recall_read_markers_and_unread_counts_reach_the_peer() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut alice = Client::connect(&server, "alice", "phone").await;
    let conversation = direct_conversation_id("alice", "bob");
    for i in 0..3 {
        alice
            .send_text(to_user("bob"), &format!("m{i}"), &format!("text {i}"))
            .await
            .unwrap();
    }
    let mut bob = Client::connect(&server, "bob", "phone").await;
    let list = bob.conversations().await;
    assert_eq!(list.len(), 1);
    assert_eq!(
        (
            list[0].unread_count,
            list[0].last_seq,
            list[0].peer.as_str()
        ),
        (3, 3, "alice")
    );
    assert_eq!(text(list[0].last_message.as_ref().unwrap()), "text 2");
    // Alice's own messages are not unread for her.
    assert_eq!(alice.conversations().await[0].unread_count, 0);

    // Bob reads up to seq 2: one unread left; alice gets a receipt.
    match bob
        .request(pb::ReadMarkerReq {
            conversation_id: conversation.clone(),
            read_seq: 2,
        })
        .await
    {
        Body::ReadMarkerResp(resp) => assert_eq!((resp.read_seq, resp.unread_count), (2, 1)),
        other => panic!("{other:?}"),
    }
    let receipt = loop {
        let entries = alice.pushed_entries(1).await;
        if let Some(pb::inbox_entry::Body::ReadReceipt(r)) = &entries[0].body {
            break r.clone();
        }
    };
    assert_eq!((receipt.reader_user.as_str(), receipt.read_seq), ("bob", 2));
    assert_eq!(alice.conversations().await[0].peer_read_seq, 2);
    // Markers never move back.
    match bob
        .request(pb::ReadMarkerReq {
            conversation_id: conversation.clone(),
            read_seq: 1,
        })
        .await
    {
        Body::ReadMarkerResp(resp) => assert_eq!((resp.read_seq, resp.unread_count), (2, 1)),
        other => panic!("{other:?}"),
    }

    // Alice recalls message 3; bob is told and history shows it recalled.
    match alice
        .request(pb::RecallReq {
            conversation_id: conversation.clone(),
            conversation_seq: 3,
        })
        .await
    {
        Body::RecallResp(resp) => assert_eq!(resp.event.unwrap().conversation_seq, 3),
        other => panic!("{other:?}"),
    }
    let recall = loop {
        let entries = bob.pushed_entries(1).await;
        if let Some(pb::inbox_entry::Body::Recall(r)) = &entries[0].body {
            break r.clone();
        }
    };
    assert_eq!(
        (recall.conversation_seq, recall.by_user.as_str()),
        (3, "alice")
    );
    match bob
        .request(pb::HistoryReq {
            conversation_id: conversation.clone(),
            anchor_seq: 0,
            direction: 0,
            limit: 10,
        })
        .await
    {
        Body::HistoryResp(resp) => {
            let seqs: Vec<u64> = resp.messages.iter().map(|m| m.conversation_seq).collect();
            assert_eq!(seqs, vec![3, 2, 1]);
            assert!(resp.messages[0].recalled && resp.messages[0].content.is_empty());
        }
        other => panic!("{other:?}"),
    }
    // Bob cannot recall alice's message.
    match bob
        .request(pb::RecallReq {
            conversation_id: conversation.clone(),
            conversation_seq: 1,
        })
        .await
    {
        Body::Error(e) => assert_eq!(e.code, pb::ErrorCode::NotSender as i32),
        other => panic!("{other:?}"),
    }
    // Reading everything clears the count, also after a restart of bob's connection.
    bob.request(pb::ReadMarkerReq {
        conversation_id: conversation.clone(),
        read_seq: 3,
    })
    .await;
    drop(bob);
    let mut bob = Client::connect(&server, "bob", "laptop").await;
    assert_eq!(bob.conversations().await[0].unread_count, 0);
    // A third party cannot read the conversation.
    let mut eve = Client::connect(&server, "eve", "phone").await;
    match eve
        .request(pb::HistoryReq {
            conversation_id: conversation,
            anchor_seq: 0,
            direction: 0,
            limit: 10,
        })
        .await
    {
        Body::Error(e) => assert_eq!(e.code, pb::ErrorCode::Forbidden as i32),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn typing_is_relayed_to_the_peer() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut alice = Client::connect(&server, "alice", "phone").await;
    let mut bob = Client::connect(&server, "bob", "phone").await;
    alice
        .send_only(pb::Typing {
            conversation_id: direct_conversation_id("alice", "bob"),
            typing: true,
        })
        .await;
    match bob.next_push().await {
        Body::TypingEvent(event) => {
            assert_eq!((event.user_id.as_str(), event.typing), ("alice", true))
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn large_messages_are_synced_in_pages_that_fit_a_frame() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut alice = Client::connect(&server, "alice", "phone").await;
    let big = "x".repeat(60_000);
    for i in 0..40 {
        alice
            .send_text(to_user("bob"), &format!("big{i}"), &big)
            .await
            .unwrap();
    }
    let mut bob = Client::connect(&server, "bob", "phone").await;
    // 40 x 60 KB would be 2.4 MB in one page: the server cuts it by bytes and says so.
    let entries = bob.sync_all(1, 200).await;
    assert_eq!(inbox_seqs(&entries), (1..=40).collect::<Vec<_>>());
    match bob
        .request(pb::HistoryReq {
            conversation_id: direct_conversation_id("alice", "bob"),
            anchor_seq: 0,
            direction: 0,
            limit: 200,
        })
        .await
    {
        Body::HistoryResp(resp) => {
            assert!(resp.has_more && !resp.messages.is_empty() && resp.messages.len() < 40);
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_burst_of_large_messages_is_pushed_in_frames_that_fit() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut alice = Client::connect(&server, "alice", "phone").await;
    let mut bob = Client::connect(&server, "bob", "phone").await;
    let big = vec![b'y'; 60_000];
    let mut ids = Vec::new();
    for i in 0..40 {
        let request = pb::SendReq {
            target: Some(to_user("bob")),
            client_msg_id: format!("burst{i}"),
            content_type: 0,
            content: big.clone(),
        };
        ids.push(alice.send_only(request).await);
    }
    for id in ids {
        assert!(matches!(alice.response(id).await, Body::SendAck(_)));
    }
    // Sent in one batch, the 40 entries (2.4 MB) reach bob as several pushes, all of them.
    let pushed = bob.pushed_entries(40).await;
    assert_eq!(inbox_seqs(&pushed), (1..=40).collect::<Vec<_>>());
}
