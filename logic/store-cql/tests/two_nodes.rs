//! Two logic nodes on one keyspace: the cases a single store cannot show. A send retried on
//! another node while its first attempt is paused mid-way, and then goes on; the same sends
//! raced through two nodes at once. Every inbox stays contiguous and holds each message once.

mod support;

use std::collections::BTreeSet;

use im_protocol::ids::direct_conversation_id;
use im_protocol::pb;
use store_cql::{CqlOptions, CqlStore};
use timeline_store::{CommittedMessage, NewMessage, TimelineStore};

const T0: u64 = 1_700_000_000_000;

/// Two handles on one fresh keyspace: two logic nodes sharing the cluster.
async fn two_nodes(node: &str) -> (CqlStore, CqlStore) {
    let keyspace = support::fresh_keyspace("two_nodes");
    let open = || CqlStore::connect(CqlOptions::single_node(node, keyspace.clone()));
    let first = open().await.expect("first node");
    let second = open().await.expect("second node");
    assert_eq!(
        first.inbox_epoch(),
        second.inbox_epoch(),
        "one keyspace, one epoch"
    );
    (first, second)
}

fn direct(sender: &str, peer: &str, client_msg_id: &str, now_ms: u64) -> NewMessage {
    let mut recipients = vec![sender.to_owned(), peer.to_owned()];
    recipients.sort();
    NewMessage {
        conversation_id: direct_conversation_id(sender, peer),
        kind: pb::ConversationKind::Direct,
        sender_user: sender.into(),
        sender_device: "phone".into(),
        client_msg_id: client_msg_id.into(),
        content_type: 1,
        content: client_msg_id.as_bytes().to_vec(),
        recipients,
        now_ms,
    }
}

async fn commit(store: &CqlStore, message: NewMessage) -> CommittedMessage {
    store
        .commit_messages(vec![message])
        .await
        .pop()
        .expect("one result")
        .expect("committed")
}

/// The server msg ids in `user`'s inbox, after checking that its seqs run 1..=head.
async fn inbox_message_ids(store: &CqlStore, user: &str) -> Vec<u64> {
    let page = store
        .read_inbox(user, 0, 0, 10_000)
        .await
        .expect("read inbox");
    let seqs: Vec<u64> = page.entries.iter().map(|e| e.inbox_seq).collect();
    let expected: Vec<u64> = (1..=page.head_seq).collect();
    assert_eq!(
        seqs, expected,
        "the inbox of {user} is contiguous from 1 to its head"
    );
    page.entries
        .iter()
        .filter_map(|entry| match &entry.body {
            Some(pb::inbox_entry::Body::Message(message)) => Some(message.server_msg_id),
            _ => None,
        })
        .collect()
}

fn assert_each_once(ids: &[u64], user: &str) {
    let unique: BTreeSet<u64> = ids.iter().copied().collect();
    assert_eq!(
        unique.len(),
        ids.len(),
        "no message twice in the inbox of {user}: {ids:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_retried_on_another_node_while_the_first_is_paused_lands_once() {
    let Some(node) = support::cassandra() else {
        return;
    };
    let (paused_node, live_node) = two_nodes(&node).await;

    // The first attempt stops after it has its conversation seq, before any inbox has it.
    let pause = paused_node.pause_next_send();
    let first_attempt = tokio::spawn({
        let store = paused_node.clone();
        async move { commit(&store, direct("alice", "bob", "hello", T0)).await }
    });
    pause.reached().await;

    // Life goes on meanwhile: bob's inbox moves, and the client's retry reaches the other
    // node, which finishes the send with the first attempt's ids.
    commit(&live_node, direct("carol", "bob", "c1", T0 + 1)).await;
    let retry = commit(&live_node, direct("alice", "bob", "hello", T0 + 2)).await;
    assert!(
        !retry.duplicate,
        "the retry finished a send nobody had acknowledged"
    );
    assert_eq!(retry.deliveries.len(), 2, "both inboxes got the message");
    commit(&live_node, direct("carol", "bob", "c2", T0 + 3)).await;

    // The paused node wakes up and goes on where it stopped.
    pause.release();
    let resumed = first_attempt.await.expect("first attempt ran");
    assert_eq!(resumed.message.server_msg_id, retry.message.server_msg_id);
    assert_eq!(
        resumed.message.conversation_seq,
        retry.message.conversation_seq
    );
    assert_eq!(resumed.sender_inbox_seq, retry.sender_inbox_seq);

    for user in ["alice", "bob"] {
        let ids = inbox_message_ids(&live_node, user).await;
        assert_each_once(&ids, user);
        assert_eq!(
            ids.iter()
                .filter(|id| **id == retry.message.server_msg_id)
                .count(),
            1,
            "{user} has the message exactly once"
        );
    }
    assert_eq!(inbox_message_ids(&live_node, "bob").await.len(), 3);
    let again = commit(&paused_node, direct("alice", "bob", "hello", T0 + 4)).await;
    assert!(again.duplicate, "once finished, a resend is a duplicate");
    assert_eq!(again.message.server_msg_id, retry.message.server_msg_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_sends_raced_through_two_nodes_land_once_in_contiguous_inboxes() {
    let Some(node) = support::cassandra() else {
        return;
    };
    let (first, second) = two_nodes(&node).await;
    let senders = ["s1", "s2", "s3", "s4"];
    let mut races = Vec::new();
    for sender in senders {
        for batch in 0..2u64 {
            // A batch of five messages of one conversation (committed together), the same
            // batch through both nodes at once, as a client retry racing its first attempt.
            let messages: Vec<NewMessage> = (0..5)
                .map(|n| direct(sender, "hub", &format!("{sender}-{batch}-{n}"), T0 + n))
                .collect();
            let (a, b) = (first.clone(), second.clone());
            let (m1, m2) = (messages.clone(), messages);
            races.push(tokio::spawn(async move {
                let (one, other) = tokio::join!(a.commit_messages(m1), b.commit_messages(m2));
                let ok = |results: Vec<timeline_store::StoreResult<CommittedMessage>>| {
                    results
                        .into_iter()
                        .map(|r| r.expect("committed"))
                        .collect::<Vec<_>>()
                };
                (ok(one), ok(other))
            }));
        }
    }
    let mut sent = BTreeSet::new();
    for race in races {
        let (one, other) = race.await.expect("race ran");
        for (one, other) in one.iter().zip(&other) {
            assert_eq!(one.message.server_msg_id, other.message.server_msg_id);
            assert_eq!(one.message.conversation_seq, other.message.conversation_seq);
            sent.insert(one.message.server_msg_id);
        }
        let seqs: Vec<u64> = one.iter().map(|c| c.message.conversation_seq).collect();
        assert!(
            seqs.windows(2).all(|w| w[1] == w[0] + 1),
            "a batch keeps its order: {seqs:?}"
        );
    }
    assert_eq!(sent.len(), 40);
    let hub = inbox_message_ids(&first, "hub").await;
    assert_each_once(&hub, "hub");
    assert_eq!(hub.iter().copied().collect::<BTreeSet<_>>(), sent);
    for sender in senders {
        let ids = inbox_message_ids(&second, sender).await;
        assert_each_once(&ids, sender);
        assert_eq!(ids.len(), 10);
        let conversation = direct_conversation_id(sender, "hub");
        let history = second
            .read_history(&conversation, 0, pb::HistoryDirection::Newer, 100)
            .await
            .expect("history");
        let seqs: Vec<u64> = history
            .messages
            .iter()
            .map(|m| m.conversation_seq)
            .collect();
        assert_eq!(
            seqs,
            (1..=10).collect::<Vec<_>>(),
            "{conversation} has seqs 1..=10"
        );
    }
}
