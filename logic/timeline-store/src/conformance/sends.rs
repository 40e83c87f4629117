//! Sends: seq and id assignment (under concurrency too), ordering within a call, idempotent
//! resends and client msg id conflicts.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use im_protocol::pb;

use super::helpers::{direct, head, history, message_of, send, seqs, state, to_group, whole_inbox};
use super::{StoreFactory, T0};
use crate::{CommittedMessage, NewGroup, NewMessage, StoreError, TimelineStore};

/// Inbox seqs stay contiguous per user, and conversation seqs follow submission order, when
/// many tasks commit at once into shared inboxes and a shared group.
pub async fn inbox_seqs_are_contiguous_under_concurrent_commits<F: StoreFactory>(factory: &mut F) {
    const TASKS: usize = 8;
    const PER_TASK: usize = 200;
    let store = Arc::new(factory.open_fresh().await);
    let senders: Vec<String> = (0..TASKS).map(|t| format!("sender{t}")).collect();
    let created = store
        .create_group(NewGroup {
            name: "everyone".into(),
            owner: senders[0].clone(),
            members: senders.clone(),
            open: false,
            client_request_id: String::new(),
            max_members: 100,
            read_fanout: false,
            broadcast: false,
            now_ms: T0,
        })
        .await
        .expect("create_group failed");
    let group_id = created.group.group_id.clone();
    let members = store
        .member_ids(&group_id)
        .await
        .expect("member_ids failed");

    let mut tasks = Vec::new();
    for (t, sender) in senders.iter().cloned().enumerate() {
        let store = Arc::clone(&store);
        let group_id = group_id.clone();
        let members = members.clone();
        tasks.push(tokio::spawn(async move {
            let messages: Vec<NewMessage> = (0..PER_TASK)
                .map(|i| {
                    let id = format!("t{t}-m{i}");
                    let now = T0 + i as u64;
                    if i % 4 == 3 {
                        to_group(&sender, &group_id, &members, &id, &id, now)
                    } else {
                        // Peers are shared by every task: their inboxes are contended.
                        direct(&sender, &format!("peer{}", i % 3), &id, &id, now)
                    }
                })
                .collect();
            let mut committed = Vec::with_capacity(PER_TASK);
            let mut rest = messages.as_slice();
            let mut size = 1;
            while !rest.is_empty() {
                let (call, tail) = rest.split_at(size.min(rest.len()));
                rest = tail;
                size = size % 3 + 1;
                let results = store.commit_messages(call.to_vec()).await;
                assert_eq!(results.len(), call.len(), "one result per message");
                for (message, result) in call.iter().zip(results) {
                    let result = result.unwrap_or_else(|e| {
                        panic!("commit of {} failed: {e}", message.client_msg_id)
                    });
                    committed.push((message.clone(), result));
                }
            }
            committed
        }));
    }
    let mut all: Vec<(NewMessage, CommittedMessage)> = Vec::new();
    for task in tasks {
        let committed = task.await.expect("a committing task panicked");
        // Per task and conversation, seqs rise in submission order.
        let mut last: HashMap<String, u64> = HashMap::new();
        for (message, result) in &committed {
            let seq = result.message.conversation_seq;
            let previous = last
                .insert(message.conversation_id.clone(), seq)
                .unwrap_or(0);
            assert!(
                seq > previous,
                "{}: seq {seq} is not above the task's previous seq {previous} in {}",
                message.client_msg_id,
                message.conversation_id
            );
        }
        all.extend(committed);
    }
    assert_eq!(all.len(), TASKS * PER_TASK);

    let mut msg_ids = HashSet::new();
    let mut expected: BTreeMap<String, Vec<pb::InboxEntry>> = BTreeMap::new();
    for delivery in &created.deliveries {
        expected
            .entry(delivery.user.clone())
            .or_default()
            .push(delivery.entry.clone());
    }
    for (message, result) in &all {
        assert!(
            !result.duplicate,
            "{} reported as duplicate",
            message.client_msg_id
        );
        assert!(
            msg_ids.insert(result.message.server_msg_id),
            "server msg id {} handed out twice",
            result.message.server_msg_id
        );
        let users: Vec<&str> = result.deliveries.iter().map(|d| d.user.as_str()).collect();
        let recipients: Vec<&str> = message.recipients.iter().map(String::as_str).collect();
        assert_eq!(
            users, recipients,
            "{}: one delivery per recipient",
            message.client_msg_id
        );
        for delivery in &result.deliveries {
            if delivery.user == message.sender_user {
                assert_eq!(
                    delivery.entry.inbox_seq, result.sender_inbox_seq,
                    "{}: sender_inbox_seq is the sender's delivery",
                    message.client_msg_id
                );
            }
            expected
                .entry(delivery.user.clone())
                .or_default()
                .push(delivery.entry.clone());
        }
    }
    for (user, mut entries) in expected {
        entries.sort_by_key(|e| e.inbox_seq);
        let got_seqs: Vec<u64> = entries.iter().map(|e| e.inbox_seq).collect();
        let want_seqs: Vec<u64> = (1..=entries.len() as u64).collect();
        assert_eq!(
            got_seqs, want_seqs,
            "{user}'s delivered inbox seqs have a hole or a duplicate"
        );
        assert_eq!(
            head(&*store, &user).await,
            entries.len() as u64,
            "{user}'s inbox head"
        );
        let stored = whole_inbox(&*store, &user).await;
        assert!(
            stored == entries,
            "{user}'s stored inbox differs from what was delivered"
        );
    }
    // Each direct conversation belongs to one task: its seqs are exactly 1..=n.
    let mut per_conversation: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for (message, result) in &all {
        per_conversation
            .entry(message.conversation_id.as_str())
            .or_default()
            .push(result.message.conversation_seq);
    }
    for (conversation_id, mut got) in per_conversation {
        got.sort_unstable();
        let want: Vec<u64> = (1..=got.len() as u64).collect();
        assert_eq!(
            got, want,
            "{conversation_id}: conversation seqs are not 1..=n"
        );
        let stored = history(&*store, conversation_id).await;
        assert_eq!(seqs(&stored), want, "{conversation_id}: stored timeline");
    }
}

/// Server msg ids are unique across conversations and calls.
pub async fn server_msg_ids_are_unique<F: StoreFactory>(factory: &mut F) {
    let store = factory.open_fresh().await;
    let mut seen = HashSet::new();
    for i in 0..40u64 {
        let peer = format!("peer{}", i % 5);
        let batch = vec![
            direct("alice", &peer, &format!("a{i}"), "hi", T0 + i),
            direct(&peer, "alice", &format!("b{i}"), "ho", T0 + i),
        ];
        for result in store.commit_messages(batch).await {
            let committed = result.expect("commit failed");
            assert!(
                seen.insert(committed.message.server_msg_id),
                "server msg id {} handed out twice",
                committed.message.server_msg_id
            );
            assert_ne!(
                committed.message.server_msg_id, 0,
                "0 is not a valid server msg id"
            );
        }
    }
}

/// Messages of one call get ascending seqs in their order, and their fields are stored as given.
pub async fn messages_of_one_call_are_stored_in_order<F: StoreFactory>(factory: &mut F) {
    let store = factory.open_fresh().await;
    let batch = vec![
        direct("alice", "bob", "c1", "one", T0),
        direct("alice", "bob", "c2", "two", T0 + 1),
        direct("alice", "bob", "c3", "three", T0 + 2),
    ];
    let results: Vec<CommittedMessage> = store
        .commit_messages(batch.clone())
        .await
        .into_iter()
        .map(|r| r.expect("commit failed"))
        .collect();
    assert_eq!(
        seqs(
            &results
                .iter()
                .map(|r| r.message.clone())
                .collect::<Vec<_>>()
        ),
        vec![1, 2, 3]
    );
    for (sent, result) in batch.iter().zip(&results) {
        let m = &result.message;
        assert_eq!(m.conversation_id, sent.conversation_id);
        assert_eq!(m.kind, pb::ConversationKind::Direct as i32);
        assert_eq!(m.sender_user, "alice");
        assert_eq!(m.sender_device, "alice-phone");
        assert_eq!(m.client_msg_id, sent.client_msg_id);
        assert_eq!(m.content, sent.content);
        assert_eq!(m.server_time_ms, sent.now_ms);
        assert!(!m.recalled);
    }
    let stored = history(&store, "d:alice:bob").await;
    let committed: Vec<pb::Message> = results.iter().map(|r| r.message.clone()).collect();
    assert_eq!(
        stored, committed,
        "the timeline holds exactly the committed messages"
    );
    let bob = whole_inbox(&store, "bob").await;
    let in_inbox: Vec<pb::Message> = bob.iter().filter_map(message_of).cloned().collect();
    assert_eq!(
        in_inbox, committed,
        "bob's inbox holds the messages in order"
    );
}

/// A resend returns the original with `duplicate`, and stores nothing.
pub async fn resend_returns_the_original_as_a_duplicate_and_writes_nothing<F: StoreFactory>(
    factory: &mut F,
) {
    let store = factory.open_fresh().await;
    let original = send(&store, direct("alice", "bob", "c1", "hello", T0)).await;
    let heads = (head(&store, "alice").await, head(&store, "bob").await);
    let bob_before = state(&store, "bob", "d:alice:bob").await;

    let mut resend = direct("alice", "bob", "c1", "hello", T0 + 5_000);
    resend.sender_device = "alice-laptop".into();
    let again = send(&store, resend.clone()).await;
    assert!(again.duplicate, "a resend must be reported as duplicate");
    assert_eq!(
        again.message, original.message,
        "a resend returns the original message"
    );
    assert_eq!(again.sender_inbox_seq, original.sender_inbox_seq);
    assert!(again.deliveries.is_empty(), "a resend delivers nothing");
    assert_eq!(
        (head(&store, "alice").await, head(&store, "bob").await),
        heads,
        "a resend must not append to any inbox"
    );
    assert_eq!(
        history(&store, "d:alice:bob").await.len(),
        1,
        "a resend must not append to the timeline"
    );
    assert_eq!(
        state(&store, "bob", "d:alice:bob").await,
        bob_before,
        "a resend must not touch unread counts"
    );

    // The same id twice in one call: the second is the duplicate of the first.
    let results = store
        .commit_messages(vec![
            direct("alice", "bob", "c2", "x", T0 + 1),
            direct("alice", "bob", "c2", "x", T0 + 2),
            direct("alice", "bob", "c1", "hello", T0 + 3),
        ])
        .await;
    let [first, second, third] = <[_; 3]>::try_from(results).expect("three results");
    let (first, second, third) = (
        first.expect("c2"),
        second.expect("c2 again"),
        third.expect("c1 again"),
    );
    assert!(!first.duplicate && second.duplicate && third.duplicate);
    assert_eq!(second.message, first.message);
    assert_eq!(third.message, original.message);
    assert_eq!(
        head(&store, "bob").await,
        heads.1 + 1,
        "only the new message reached bob"
    );
}

/// A client msg id reused for other content or another conversation is a conflict, which
/// stores nothing and does not fail the other messages of the call.
pub async fn reusing_a_client_msg_id_for_another_message_conflicts<F: StoreFactory>(
    factory: &mut F,
) {
    let store = factory.open_fresh().await;
    send(&store, direct("alice", "bob", "c1", "hello", T0)).await;
    let heads = (
        head(&store, "alice").await,
        head(&store, "bob").await,
        head(&store, "carol").await,
    );
    let results = store
        .commit_messages(vec![
            direct("alice", "bob", "c1", "other content", T0 + 1),
            direct("alice", "carol", "c1", "hello", T0 + 1),
            direct("alice", "bob", "c9", "fine", T0 + 1),
        ])
        .await;
    assert_eq!(results.len(), 3);
    assert!(
        matches!(&results[0], Err(StoreError::ClientMsgIdConflict(id)) if id == "c1"),
        "other content: {:?}",
        results[0]
    );
    assert!(
        matches!(&results[1], Err(StoreError::ClientMsgIdConflict(_))),
        "other conversation: {:?}",
        results[1]
    );
    let fine = results[2]
        .as_ref()
        .expect("an unrelated message of the same call must succeed");
    assert_eq!(fine.message.conversation_seq, 2);
    assert_eq!(
        head(&store, "carol").await,
        heads.2,
        "a conflict stores nothing"
    );
    assert_eq!(
        head(&store, "bob").await,
        heads.1 + 1,
        "only c9 reached bob"
    );
    // Client msg ids are per sender: bob may use "c1" too.
    let bobs = send(&store, direct("bob", "alice", "c1", "hello", T0 + 2)).await;
    assert!(!bobs.duplicate, "another sender's c1 is a new message");
}
