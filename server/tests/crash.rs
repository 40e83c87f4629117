//! kill -9 in the middle of a stream of sends loses no acknowledged message and duplicates none.

mod support;

use std::collections::HashMap;

use im_protocol::{Body, pb};
use support::*;

#[tokio::test]
async fn every_acked_message_survives_sigkill_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start_process(dir.path(), &[]);
    let mut alice = Client::connect(&server, "alice", "phone").await;

    // Pipeline sends (64 in flight) and kill the server while acks are streaming back.
    let mut acked: HashMap<String, pb::SendAck> = HashMap::new();
    let mut in_flight = std::collections::VecDeque::new();
    let mut next = 0u32;
    let kill_after = 400;
    'stream: loop {
        while in_flight.len() < 64 {
            let id = format!("m{next}");
            let request_id = alice
                .send_only(pb::SendReq {
                    target: Some(to_user("bob")),
                    client_msg_id: id.clone(),
                    content_type: 0,
                    content: format!("payload {next}").into_bytes(),
                })
                .await;
            in_flight.push_back((request_id, id));
            next += 1;
        }
        let (request_id, id) = in_flight.pop_front().unwrap();
        match alice.response(request_id).await {
            Body::SendAck(ack) => {
                acked.insert(id, ack);
            }
            other => panic!("{other:?}"),
        }
        if acked.len() == kill_after {
            server.kill9();
            break 'stream;
        }
    }
    drop(alice);

    server.restart();
    let mut bob = Client::connect(&server, "bob", "phone").await;
    let entries = bob.sync_all(1, 500).await;
    let seqs: Vec<u64> = entries.iter().map(|e| e.inbox_seq).collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "inbox seqs are contiguous"
    );
    let stored = messages(&entries);
    let mut seen = HashMap::new();
    for m in &stored {
        assert!(
            seen.insert(m.client_msg_id.clone(), m.clone()).is_none(),
            "{} stored twice",
            m.client_msg_id
        );
    }
    for (id, ack) in &acked {
        let m = seen
            .get(id)
            .unwrap_or_else(|| panic!("acked message {id} lost"));
        assert_eq!(
            (m.server_msg_id, m.conversation_seq),
            (ack.server_msg_id, ack.conversation_seq)
        );
    }

    // Resending everything that was in flight is deduplicated or stored once; seqs continue.
    let mut alice = Client::connect(&server, "alice", "phone").await;
    let last_seq = stored.iter().map(|m| m.conversation_seq).max().unwrap();
    let mut new_seqs = Vec::new();
    for i in 0..next {
        let ack = alice
            .send_text(to_user("bob"), &format!("m{i}"), &format!("payload {i}"))
            .await
            .unwrap();
        if let Some(before) = acked.get(&format!("m{i}")) {
            assert!(ack.duplicate);
            assert_eq!(ack.server_msg_id, before.server_msg_id);
        } else if !ack.duplicate {
            new_seqs.push(ack.conversation_seq);
        }
    }
    let expected: Vec<u64> = (last_seq + 1..=last_seq + new_seqs.len() as u64).collect();
    assert_eq!(
        new_seqs, expected,
        "no conversation seq is reused after the crash"
    );
    let all = bob.sync_all(1, 1000).await;
    assert_eq!(
        messages(&all).len(),
        next as usize,
        "every message exactly once"
    );
}

/// Three senders to one receiver, their sends sharing group commits, and the server killed
/// three times on one data directory: after 1, 150 and 700 acks across the three streams (a
/// kill can land in a drain that mixes conversations). After each restart every acked message
/// is stored exactly once with its acked ids, the receiver's inbox seqs are contiguous and
/// each conversation's seqs run 1, 2, 3… with no hole and no repeat. At the end every message
/// ever sent is sent again: acked ones come back as duplicates, the rest are stored once.
#[tokio::test]
async fn acked_messages_of_mixed_group_commits_survive_repeated_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start_process(dir.path(), &[]);
    let senders = ["alice", "carol", "dave"];
    let mut acked: HashMap<String, pb::SendAck> = HashMap::new();
    let mut sent: Vec<(usize, String)> = Vec::new();
    let mut next = 0u32;
    for kill_after in [1usize, 150, 700] {
        let mut clients = Vec::new();
        for sender in senders {
            clients.push(Client::connect(&server, sender, "phone").await);
        }
        let mut in_flight = vec![std::collections::VecDeque::new(); senders.len()];
        let mut acked_now = 0;
        'stream: loop {
            for (i, client) in clients.iter_mut().enumerate() {
                while in_flight[i].len() < 16 {
                    let id = format!("{}-{next}", senders[i]);
                    next += 1;
                    let request_id = client
                        .send_only(pb::SendReq {
                            target: Some(to_user("bob")),
                            client_msg_id: id.clone(),
                            content_type: 0,
                            content: id.clone().into_bytes(),
                        })
                        .await;
                    in_flight[i].push_back((request_id, id.clone()));
                    sent.push((i, id));
                }
            }
            for (i, client) in clients.iter_mut().enumerate() {
                let (request_id, id) = in_flight[i].pop_front().unwrap();
                match client.response(request_id).await {
                    Body::SendAck(ack) => {
                        acked.insert(id, ack);
                        acked_now += 1;
                    }
                    other => panic!("{other:?}"),
                }
                if acked_now == kill_after {
                    server.kill9();
                    break 'stream;
                }
            }
        }
        drop(clients);
        server.restart();
        let mut bob = Client::connect(&server, "bob", "phone").await;
        let stored = stored_exactly_once(&mut bob).await;
        for (id, ack) in &acked {
            let m = stored.get(id).unwrap_or_else(|| {
                panic!("acked message {id} lost after the kill at {kill_after}")
            });
            assert_eq!(
                (m.server_msg_id, m.conversation_seq),
                (ack.server_msg_id, ack.conversation_seq),
                "{id} changed ids across the kill"
            );
        }
    }

    for (i, sender) in senders.iter().enumerate() {
        let mut client = Client::connect(&server, sender, "phone").await;
        for (_, id) in sent.iter().filter(|(s, _)| *s == i) {
            let ack = client.send_text(to_user("bob"), id, id).await.unwrap();
            if let Some(before) = acked.get(id) {
                assert!(
                    ack.duplicate,
                    "{id} was acked before: a resend is a duplicate"
                );
                assert_eq!(ack.server_msg_id, before.server_msg_id);
            }
        }
    }
    let mut bob = Client::connect(&server, "bob", "phone").await;
    let stored = stored_exactly_once(&mut bob).await;
    assert_eq!(
        stored.len(),
        sent.len(),
        "every message sent is stored exactly once"
    );
}

/// The receiver's whole inbox, checked: inbox seqs contiguous from 1, no message twice, each
/// conversation's seqs contiguous from 1. Returns the messages by client message id.
async fn stored_exactly_once(receiver: &mut Client) -> HashMap<String, pb::Message> {
    let entries = receiver.sync_all(1, 500).await;
    let seqs: Vec<u64> = entries.iter().map(|e| e.inbox_seq).collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "inbox seqs are contiguous"
    );
    let mut by_id = HashMap::new();
    let mut per_conversation: HashMap<String, Vec<u64>> = HashMap::new();
    for m in messages(&entries) {
        per_conversation
            .entry(m.conversation_id.clone())
            .or_default()
            .push(m.conversation_seq);
        let id = m.client_msg_id.clone();
        assert!(by_id.insert(id.clone(), m).is_none(), "{id} stored twice");
    }
    for (conversation, seqs) in per_conversation {
        assert_eq!(
            seqs,
            (1..=seqs.len() as u64).collect::<Vec<_>>(),
            "seqs of {conversation} run without a hole or a repeat"
        );
    }
    by_id
}

#[tokio::test]
async fn sigterm_tells_clients_to_reconnect_and_stops_cleanly_keeping_everything() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start_process(dir.path(), &[]);
    let mut alice = Client::connect(&server, "alice", "phone").await;
    let ack = alice
        .send_text(to_user("bob"), "before", "before the restart")
        .await
        .unwrap();

    let stopped = tokio::task::spawn_blocking(move || {
        let clean = server.terminate();
        (server, clean)
    });
    let kick = loop {
        match alice.next_frame().await {
            Some(frame) if frame.is_push() => {
                if let Ok(Body::Kick(kick)) = frame.decode_body() {
                    break kick;
                }
            }
            Some(_) => {}
            None => panic!("closed without a kick"),
        }
    };
    assert_eq!(kick.reason, pb::KickReason::ServerShutdown as i32);
    assert!(
        kick.retry_after_ms > 0,
        "clients are told to wait before reconnecting"
    );
    let (mut server, clean) = stopped.await.unwrap();
    assert!(clean, "the server exits with success after a SIGTERM");

    server.restart();
    let mut bob = Client::connect(&server, "bob", "phone").await;
    let entries = bob.sync_all(1, 10).await;
    assert_eq!(messages(&entries)[0].server_msg_id, ack.server_msg_id);
}
